"""The daemon's own short-lived children, kept apart from the supervisors it adopts.

The daemon is a child subreaper: supervisors that the RQ workers double-fork are re-parented to it,
and :func:`reap_adopted` reaps them when they exit.  The daemon also forks children that it waits
for itself (the path checks that run with a caller's rights, :mod:`gpuq.daemon.usercheck`).  Reaping
those would steal their exit status (``waitpid`` then fails with ECHILD), so they are forked with
:func:`fork_own`, which registers the pid under the same lock that :func:`reap_adopted` holds: the
reaper can never see such a child before it is registered.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_own: set[int] = set()


def fork_own() -> int:
    """``os.fork()`` for a child this process waits for itself; call :func:`waited` after its waitpid."""
    with _lock:
        pid = os.fork()
        if pid:
            _own.add(pid)
        return pid


def waited(pid: int) -> None:
    """The caller has reaped (or given up on) a child from :func:`fork_own`."""
    with _lock:
        _own.discard(pid)


def reap_adopted(keep: set[int]) -> None:
    """Reap exited processes re-parented to us (supervisors); never a child in ``keep`` (our own
    Popen children: RQ workers, the embedded Redis) nor one from :func:`fork_own`."""
    with _lock:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in keep or info.si_pid in _own:
                return
            try:
                os.waitpid(info.si_pid, os.WNOHANG)
            except ChildProcessError:
                return
