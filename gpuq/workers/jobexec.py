"""Start a job's process in two steps: :func:`prepare` forks it early, :meth:`PreparedJob.go` execs it.

Why two steps: moving a process into a cgroup (writing ``cgroup.procs``) makes the kernel wait
for an RCU grace period whenever no other migration happened just before (the write side of
``cgroup_threadgroup_rwsem``).  That is 6 ms on an idle machine and 10-20 ms on a loaded one,
and it was the largest single cost of starting a job.  So the supervisor forks the job's process
first; the child joins the cgroup, drops to the user and enters the working directory while the
supervisor, in parallel, prepares the job's files and checks that no stop was acknowledged
meanwhile.  Only then does it let the child exec the job (or tells it to exit unexecuted).

The child, between fork and exec, runs as root until it drops:

1. its own session (the job's process group is the session; ``kill -- -pid`` reaches it),
2. joins every cgroup file given (the job's cgroups under v1 or v2),
3. drops to the user's groups, gid and uid (all three ids, so it cannot regain root),
4. only then enters the working directory, as the user,
5. waits for the supervisor's go byte, resets signal handling, and execs with the job's
   environment (``PATH`` of that environment finds the program, as a login shell would).

A failure in any step is sent back as one sentence (or an errno for a failed exec) on a
close-on-exec pipe: :meth:`PreparedJob.go` raises it, and an empty pipe at EOF means the exec
happened.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import signal
from dataclasses import dataclass

from gpuq.errors import GpuqError

_GO = b"g"
_EXEC_FAILED = "exec "  # prefix of an errno report: "exec <errno> <filename>"
_CHILD_FAILED_RC = 127
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_SET_CHILD_SUBREAPER = 36
_COMM_LEN = 16  # TASK_COMM_LEN: a process name is at most 15 bytes and a NUL


_libc: ctypes.CDLL | None = None


def prctl(option: int, arg: int | bytes | ctypes.Array) -> None:
    """prctl(2), best effort (names and the subreaper flag are conveniences, not guarantees)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)  # opened once: a start names processes four times
        _libc.prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def process_name() -> bytes:
    """This process's name (what ``ps -o comm`` shows)."""
    buf = ctypes.create_string_buffer(_COMM_LEN)
    prctl(PR_GET_NAME, buf)
    return buf.value


def fork_named(name: str) -> int:
    """``os.fork()``, with the child already called ``name`` when it first exists: the caller
    wears the name for the instant of the fork.  A child that named itself after the fork would
    carry its parent's name until it ran, and a supervisor's unexec'd child would look like a
    second supervisor of the same job to anyone listing processes (ps, pkill, the fault harness)."""
    own = process_name()
    prctl(PR_SET_NAME, name.encode()[:_COMM_LEN - 1])
    try:
        pid = os.fork()
    except OSError:
        prctl(PR_SET_NAME, own)
        raise
    if pid:
        prctl(PR_SET_NAME, own)
    return pid


class StartFailed(GpuqError):
    """The job's process could not be started (the message says why)."""


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    user: str  # for messages
    name: str  # the child's process name until it execs (it must not look like its supervisor)
    drop_to: Credentials | None  # None: run with the supervisor's own ids (a per-user daemon)
    join_files: tuple[str, ...]  # cgroup.procs files to write the child's pid to
    stdout_fd: int  # the job's stdout and stderr


class PreparedJob:
    """A forked child waiting to exec the job (see the module docstring)."""

    def __init__(self, pid: int, go_w: int, err_r: int) -> None:
        self.pid = pid
        self._go_w: int | None = go_w
        self._err_r: int | None = err_r
        self.returncode: int | None = None

    def go(self) -> None:
        """Let the child exec; returns once it has, or raises :class:`StartFailed` / ``OSError``."""
        assert self._go_w is not None and self._err_r is not None
        try:
            os.write(self._go_w, _GO)
        except BrokenPipeError:
            pass  # the child already failed: its reason is on the error pipe
        os.close(self._go_w)
        self._go_w = None
        report = _read_all(self._err_r)
        os.close(self._err_r)
        self._err_r = None
        if not report:
            return
        self.wait()
        text = report.decode(errors="replace")
        if text.startswith(_EXEC_FAILED):
            code, _, filename = text[len(_EXEC_FAILED):].partition(" ")
            try:
                num = int(code)
            except ValueError:
                raise StartFailed(text) from None
            raise OSError(num, os.strerror(num), filename)
        raise StartFailed(text)

    def abort(self) -> None:
        """Tell the child to exit without running the job, and reap it."""
        for fd in (self._go_w, self._err_r):
            if fd is not None:
                os.close(fd)
        self._go_w = self._err_r = None
        self.wait()

    def wait(self) -> int:
        """The exit status as :class:`subprocess.Popen` gives it (negative: killed by that signal)."""
        if self.returncode is None:
            while True:
                try:
                    _, status = os.waitpid(self.pid, 0)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:  # reaped elsewhere (an orphan sweep): status unknown
                    self.returncode = -signal.SIGKILL
                    return self.returncode
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def check(argv: tuple[str, ...], env: dict[str, str]) -> None:
    """Refuse, with one sentence, what exec could not take (checked before forking)."""
    if not argv or not argv[0]:
        raise StartFailed("the job has no command to run")
    for a in argv:
        if "\0" in a:
            raise StartFailed("an argument of the command contains a NUL byte")
    for k, v in env.items():
        if not k or "=" in k or "\0" in k:
            raise StartFailed(f"the environment variable name {k!r} is not valid")
        if "\0" in v:
            raise StartFailed(f"the environment variable {k} contains a NUL byte")


def prepare(launch: Launch) -> PreparedJob:
    """Fork the job's process; it prepares itself and waits for :meth:`PreparedJob.go`."""
    check(launch.argv, launch.env)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = fork_named(launch.name)
    except OSError:
        for fd in (go_r, go_w, err_r, err_w):
            os.close(fd)
        raise
    if pid == 0:  # pragma: no cover - the child (covered by the integration tests)
        code = _CHILD_FAILED_RC
        try:
            os.close(go_w)
            os.close(err_r)
            _child(launch, go_r, err_w)
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(err_w)
    return PreparedJob(pid, go_w, err_r)


def _child(launch: Launch, go_r: int, err_w: int) -> None:  # pragma: no cover - runs in the child
    """Steps 1-5 of the module docstring; returns only on failure (after reporting it)."""
    try:
        os.setsid()
        for path in launch.join_files:
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            except OSError as e:
                _report(err_w, f"could not join the job's cgroup ({e.strerror})")
                return
        if launch.drop_to is not None:
            c = launch.drop_to
            os.setgroups(list(c.groups))
            os.setresgid(c.gid, c.gid, c.gid)
            os.setresuid(c.uid, c.uid, c.uid)
        try:
            os.chdir(launch.cwd)
        except OSError as e:
            _report(err_w, f"cannot enter the working directory {launch.cwd} as {launch.user} ({e.strerror}): "
                           f"submit from a directory {launch.user} may enter")
            return
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(launch.stdout_fd, 1)
        os.dup2(launch.stdout_fd, 2)
        if os.read(go_r, 1) != _GO:
            return  # the supervisor aborted the start
        for sig in range(1, signal.NSIG):
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.closerange(3, err_w)
        os.closerange(err_w + 1, 1 << 20)
        try:
            os.execvpe(launch.argv[0], list(launch.argv), launch.env)
        except OSError as e:
            _report(err_w, f"{_EXEC_FAILED}{e.errno or errno_mod.ENOEXEC} {launch.argv[0]}")
    except BaseException as e:
        _report(err_w, f"{type(e).__name__}: {e}")


def _report(fd: int, text: str) -> None:  # pragma: no cover - runs in the child
    try:
        os.write(fd, text.encode(errors="replace")[:4096])
    except OSError:
        pass


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not data:
            return b"".join(chunks)
        chunks.append(data)
