"""The job's process is named at fork: never, even for an instant, does it look like its supervisor."""

from __future__ import annotations

import os
from pathlib import Path

from gpuq.workers import jobexec
from gpuq.workers.jobexec import Launch


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_fork_named_child_has_its_name_before_it_runs_and_the_parent_keeps_its_own():
    before = _comm(os.getpid())
    r, w = os.pipe()
    pid = jobexec.fork_named("gpuq-start-7")
    if pid == 0:  # the child waits, unscheduled work aside, until the parent has looked
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    try:
        os.close(r)
        assert _comm(pid) == "gpuq-start-7"  # before the child ran a single line of its own
        assert _comm(os.getpid()) == before
    finally:
        os.close(w)
        os.waitpid(pid, 0)


def test_prepared_child_is_named_as_the_launch_says_and_exits_when_aborted(tmp_path):
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        child = jobexec.prepare(Launch(argv=("/bin/true",), env={"PATH": "/usr/bin:/bin"}, cwd=str(tmp_path),
                                       user="me", name="gpuq-start-42", drop_to=None, join_files=(),
                                       stdout_fd=out))
    finally:
        os.close(out)
    assert _comm(child.pid) == "gpuq-start-42"
    assert not _comm(os.getpid()).startswith("gpuq-start")
    child.abort()
    assert child.returncode is not None and child.returncode != 0
