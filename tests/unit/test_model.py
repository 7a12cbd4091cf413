import json
from pathlib import Path

import pytest

from gpuq.errors import IllegalTransition, InvalidInput
from gpuq.jobs.model import (TRANSITIONS, Job, JobSpec, JobState, Owner, Placement, Resources, StopKind,
                             StopRequest)

DATA = Path(__file__).parent.parent / "data"
OWNER = Owner(uid=1000, gid=1000, user="alice", groups=(1000,))


def job(state=JobState.PENDING, **kw) -> Job:
    return Job(id=1, spec=JobSpec(argv=("/usr/bin/python3", "train.py"), cwd="/tmp"), owner=OWNER, state=state,
               submitted_at=100.0, **kw)


def test_checked_in_old_records_keep_loading():
    running = Job.from_dict(json.loads((DATA / "job_v1_running.json").read_text()))
    assert running.state is JobState.RUNNING
    assert running.placement.gpu_indices == (2,) and running.spec.resources.mem_mib == 10240
    assert running.spec.after == (12,) and running.progress.step == 120 and running.requeues == 1
    minimal = Job.from_dict(json.loads((DATA / "job_v1_minimal.json").read_text()))
    assert minimal.spec.resources == Resources() and minimal.owner.user == "?"


def test_json_round_trip_and_env_privacy():
    j = job(JobState.RUNNING, placement=Placement(node="n", gpu_uuids=("GPU-a",), gpu_indices=(0,),
                                                  reserved_mib=(100,), limit_mib=(None,), gpu_total_mib=(1000,)),
            placed_at=101.0, stop_request=StopRequest(StopKind.CANCEL, 102.0, "root"))
    j = j.with_changes(spec=JobSpec(argv=("x",), cwd="/", env={"TOKEN": "s"}))
    assert Job.from_dict(json.loads(json.dumps(j.to_dict()))) == j
    assert "env" not in j.to_dict(with_env=False)["spec"]


def test_newer_records_are_refused_not_misread():
    d = job().to_dict()
    d["v"] = 99
    with pytest.raises(ValueError):
        Job.from_dict(d)


def test_transitions_follow_the_table():
    for src, dests in TRANSITIONS.items():
        for dst in JobState:
            kw = {}
            if src is JobState.RUNNING:
                base = job(src, placement=Placement(node="n"), placed_at=1.0)
            else:
                base = job(src, **({"ended_at": 1.0} if src.terminal else {}))
            if dst is JobState.RUNNING:
                kw = {"placement": Placement(node="n"), "placed_at": 2.0}
            if dst.terminal:
                kw = {"ended_at": 3.0}
            if dst in dests:
                assert base.transition(dst, **kw).state is dst
            else:
                with pytest.raises(IllegalTransition):
                    base.transition(dst, **kw)


def test_a_state_carries_only_its_fields():
    with pytest.raises(ValueError):
        job(JobState.RUNNING)  # no placement
    with pytest.raises(ValueError):
        job(JobState.PENDING, pid=5)
    with pytest.raises(ValueError):
        job(JobState.COMPLETED)  # no ended_at
    r = job(JobState.RUNNING, placement=Placement(node="n"), placed_at=1.0, pid=7)
    back = r.transition(JobState.PENDING)
    assert back.pid is None and back.placement is None


def test_resources():
    assert Resources(gpus=2).whole_gpus
    assert Resources(gpus=1, mem_mib=512).request_mib(24576) == 512
    assert Resources(gpus=1, fraction=0.25).request_mib(24576) == 6144
    assert Resources(gpus=1, mem_mib=512, exclusive=True).request_mib(24576) == 24576
    assert Resources(gpus=1, mem_mib=512, exclusive=True).limit_mib(24576) == 512
    for bad in (dict(gpus=-1), dict(gpus=1, mem_mib=5, fraction=0.5), dict(gpus=0, mem_mib=5),
                dict(gpus=1, fraction=2.0)):
        with pytest.raises(InvalidInput):
            Resources(**bad)


def test_display_name():
    assert job().display_name == "train.py"
    assert job().with_changes(spec=JobSpec(argv=("/bin/sleep", "5"), cwd="/", name="nap")).display_name == "nap"
