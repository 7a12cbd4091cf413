"""A job's log, written by its supervisor from the job's output pipe, capped in size.

When the log grows past its cap, the oldest part is dropped (the newest half is kept) and a
note says how much went.  A write that fails (disk full) drops that output with one note and
tries again on the next write, so a full disk never stops the job or its supervisor.
"""

from __future__ import annotations

import os
from pathlib import Path


class CappedLog:
    def __init__(self, path: Path, cap_bytes: int):
        self.path = path
        self.cap = max(cap_bytes, 4096)
        self.dropped_since_error = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        self.size = os.fstat(self.fd).st_size

    def note(self, text: str) -> None:
        self.write(f"gpuq: {text}\n".encode(errors="replace"))

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.cap:
            self._drop_oldest(len(data))
        try:
            if self.dropped_since_error:
                msg = f"gpuq: {self.dropped_since_error} bytes of output were lost (the disk was full)\n".encode()
                os.write(self.fd, msg)
                self.size += len(msg)
                self.dropped_since_error = 0
            os.write(self.fd, data)
            self.size += len(data)
        except OSError:
            self.dropped_since_error += len(data)

    def _drop_oldest(self, incoming: int) -> None:
        """Keep the newest half of the cap: copy it to a new file with a note, rename over the log."""
        keep = max(self.cap // 2 - incoming, 0)
        st = os.fstat(self.fd)
        drop = max(st.st_size - keep, 0)
        tmp = self.path.with_name(self.path.name + ".cap-tmp")
        try:
            with open(self.path, "rb") as src, open(tmp, "wb") as dst:
                src.seek(drop)
                dst.write(f"gpuq: the log reached its cap of {self.cap} bytes; the oldest {drop} bytes were "
                          "dropped\n".encode())
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    dst.write(chunk)
            os.chmod(tmp, st.st_mode & 0o777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, self.path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            os.ftruncate(self.fd, 0)  # no room even for the newest half: start again, with the note
            os.write(self.fd, f"gpuq: the log reached its cap; {st.st_size} bytes were dropped\n".encode())
            self.size = os.fstat(self.fd).st_size
            return
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        self.size = os.fstat(self.fd).st_size

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
