"""Submit-time checks of a user's paths, done with that user's rights.

A root daemon that looked at paths itself would tell any user whether a file exists in another
user's private directory ("does not exist" versus "not executable").  So the checks run in a
short-lived child that first drops to the caller's uid, gid and supplementary groups, and every
"cannot see it" answer reads the same whether the path is missing or merely forbidden.

The child is forked from the threaded daemon, so it does nothing but system calls and plain Python
(no logging, no locks, no Redis), sends one JSON line back over a pipe and leaves with ``_exit``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
from typing import Mapping, Sequence

from gpuq.daemon import children
from gpuq.errors import GpuqError, InvalidInput

#: A check that takes longer (a hung network file system) fails with a clear message.
CHECK_TIMEOUT_S = 10.0
_REPLY_MAX = 1024 * 1024


def resolve_command(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> tuple[str, ...]:
    """The command to execute, checked with the rights of whoever calls this.  ``*.py`` runs with
    the first ``python3`` on the submitting shell's PATH (so an activated venv or conda env is used;
    ``GPUQ_PYTHON`` overrides); anything else runs as given, looked up on that PATH."""
    if not argv or not argv[0]:
        raise InvalidInput("nothing to run: give a script or a command, like `gpuq submit train.py`.")
    if not (os.path.isdir(cwd) and os.access(cwd, os.X_OK)):
        raise InvalidInput(f"working directory {cwd} does not exist or you may not enter it.")
    first = argv[0]
    path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    if first.endswith(".py"):
        script = os.path.normpath(os.path.join(cwd, first))
        if not (os.path.isfile(script) and os.access(script, os.R_OK)):
            raise InvalidInput(f"script {first} does not exist in {cwd} or you may not read it: check the name "
                               "and the directory you submit from.")
        python = env.get("GPUQ_PYTHON") or shutil.which("python3", path=path) or shutil.which("python", path=path)
        if not python:
            raise InvalidInput("no python3 on your PATH to run the script: activate your environment or set GPUQ_PYTHON.")
        return (python, script, *argv[1:])
    if "/" in first:
        exe = os.path.normpath(os.path.join(cwd, first))
        if not os.path.isfile(exe):
            raise InvalidInput(f"{first} does not exist in {cwd} or you may not read it: check the name and the "
                               "directory you submit from.")
        if not os.access(exe, os.X_OK):
            raise InvalidInput(f"{first} is not executable: run `chmod +x {first}` or submit it as `-- bash {first}`.")
        return (exe, *argv[1:])
    if os.path.isfile(os.path.join(cwd, first)):  # `gpuq submit run.sh` runs ./run.sh, as sbatch does
        return resolve_command((f"./{first}", *argv[1:]), cwd, env)
    exe = shutil.which(first, path=path)
    if exe is None:
        raise InvalidInput(f"command {first!r} is not on your PATH and is not a file in {cwd}: check the name.")
    return (exe, *argv[1:])


def resolve_as(uid: int, gid: int, groups: Sequence[int], argv: Sequence[str], cwd: str,
               env: Mapping[str, str]) -> tuple[str, ...]:
    """:func:`resolve_command` run with the rights of ``uid``/``gid``/``groups``.  In-process when
    this process already has exactly those rights (a single-user daemon, or root asking as root)."""
    if os.geteuid() == uid and (uid != 0 or gid == os.getegid()):
        return resolve_command(argv, cwd, env)
    if os.geteuid() != 0:
        raise GpuqError("this gpuq daemon cannot check paths for another user: run it as root for a shared install.")
    read_fd, write_fd = os.pipe()
    pid = children.fork_own()
    if pid == 0:  # the child: drop, check, answer, leave
        code = 0
        try:
            os.close(read_fd)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                reply = {"argv": list(resolve_command(argv, cwd, env))}
            except InvalidInput as e:
                reply = {"error": str(e)}
            os.write(write_fd, json.dumps(reply).encode()[:_REPLY_MAX])
        except BaseException:  # the child must never return into the daemon's code
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        data = _read_all(read_fd, CHECK_TIMEOUT_S)
    finally:
        os.close(read_fd)
        _reap(pid)
    if data is None:
        raise InvalidInput(f"checking {argv[0]} in {cwd} took longer than {CHECK_TIMEOUT_S:g} s "
                           "(a slow file system?): try again, or submit from a local directory.")
    try:
        reply = json.loads(data)
    except ValueError:
        raise GpuqError("the daemon could not check your command's paths; see its log.") from None
    if "error" in reply:
        raise InvalidInput(reply["error"])
    return tuple(reply["argv"])


def _read_all(fd: int, timeout_s: float) -> bytes | None:
    """Everything until EOF, or None when the child did not finish in time (it is then killed)."""
    import time

    deadline = time.monotonic() + timeout_s
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid: int) -> None:
    """Collect the child (killing it if it still runs).  It is registered as the daemon's own
    (``children.fork_own``), so the reaper of adopted supervisors leaves it to us; should it be
    gone anyway, that is fine."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    finally:
        children.waited(pid)
