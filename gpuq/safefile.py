"""Reading files that another (possibly hostile) user controls, from a privileged process.

The daemon runs as root and reads files in directories that jobs' users can write (progress
reports, SIMULATED GPU claims).  Such a file may be a FIFO (a plain open blocks for ever), a
symlink to /dev/zero or a huge file (a plain read exhausts memory).  ``read_small`` opens it
without following a symlink and without blocking, accepts only a regular file, and reads a
bounded amount.
"""

from __future__ import annotations

import os
import stat

MAX_BYTES = 64 * 1024


def read_small(path: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> bytes | None:
    """The file's bytes, or None when it is missing, not a regular file, or larger than ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        data = os.read(fd, max_bytes + 1)
        return None if len(data) > max_bytes else data
    except OSError:
        return None
    finally:
        os.close(fd)
