"""Where the last lines of a log file begin, read backwards in blocks (a log may be huge)."""

from __future__ import annotations

import os
from pathlib import Path

BLOCK = 64 * 1024
MAX_BACK = 64 * 1024 * 1024  # never scan more than this far back for newlines


def tail_offset(path: Path, lines: int) -> int:
    """Byte offset of the start of the last ``lines`` lines (a final line without a newline counts)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if lines <= 0:
            return size
        pos = size
        newlines = 0
        last_byte_checked = False
        while pos > 0 and size - pos < MAX_BACK:
            start = max(0, pos - BLOCK)
            block = os.pread(fd, pos - start, start)
            if not last_byte_checked:
                last_byte_checked = True
                if block.endswith(b"\n"):
                    newlines -= 1  # the newline that ends the last line does not start a new one
            for i in range(len(block) - 1, -1, -1):
                if block[i] == 0x0A:
                    newlines += 1
                    if newlines == lines:
                        return start + i + 1
            pos = start
        return max(0, pos)
    finally:
        os.close(fd)
