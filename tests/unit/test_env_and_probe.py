import os
import time

import pytest

from gpuq.daemon.usercheck import resolve_command
from gpuq.errors import InvalidInput
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement
from gpuq.workers.env import build_job_env
from gpuq.workers.probe import SimulatedProbe, parse_simulated_spec, simulated_uuid
from gpuq.workers.simgpu import Claim, write_claim


def running(placement: Placement, env=None) -> Job:
    return Job(id=9, spec=JobSpec(argv=("x",), cwd="/", env=env or {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0"}),
               owner=Owner(0, 0, "root"), state=JobState.RUNNING, submitted_at=0, placement=placement, placed_at=1)


def test_env_for_a_memory_share():
    p = Placement(node="n", gpu_uuids=("GPU-a", "GPU-b"), gpu_indices=(0, 1), reserved_mib=(6144, 6144),
                  limit_mib=(6144, 6144), gpu_total_mib=(24576, 24576))
    env = build_job_env(running(p), "/ck", "/pr")
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["GPUQ_GPU_MEM_MIB"] == "6144" and env["GPUQ_GPU_MEM_FRACTION"] == "0.2500"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.2500" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert env["PYTORCH_ALLOC_CONF"] == "per_process_memory_fraction:0.2500"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["GPUQ_JOB_ID"] == "9" and env["GPUQ_CHECKPOINT_DIR"] == "/ck" and env["PATH"] == "/bin"


def test_env_for_whole_gpus_and_cpu_only_never_keeps_the_submitters_devices():
    whole = build_job_env(running(Placement(node="n", gpu_uuids=("GPU-a",), gpu_indices=(0,), reserved_mib=(24576,),
                                            limit_mib=(None,), gpu_total_mib=(24576,))), "/c", "/p")
    assert whole["CUDA_VISIBLE_DEVICES"] == "GPU-a" and "GPUQ_GPU_MEM_MIB" not in whole
    assert "PYTORCH_ALLOC_CONF" not in whole
    cpu = build_job_env(running(Placement(node="n")), "/c", "/p")
    assert cpu["CUDA_VISIBLE_DEVICES"] == ""
    assert "GPUQ_SIMULATED_GPU_DIR" not in cpu
    assert os.environ.get("GPUQ_JOB_ID") is None  # built for the child only


def test_simulated_spec():
    assert parse_simulated_spec("4x24GiB") == [24576] * 4
    assert parse_simulated_spec("1x80GiB, 2x16GiB") == [81920, 16384, 16384]
    for bad in ("4xlots", "", "0x8GiB", "x"):
        with pytest.raises(InvalidInput):
            parse_simulated_spec(bad)


def test_simulated_probe_counts_live_claims_only(tmp_path):
    probe = SimulatedProbe([8192, 8192], str(tmp_path), "n")
    uuid0 = simulated_uuid("n", 0)
    write_claim(str(tmp_path), Claim(uuid=uuid0, mem_mib=1000, util_pct=40, pid=os.getpid()))
    ext = write_claim(str(tmp_path), Claim(uuid=uuid0, mem_mib=500, label="notebook"))
    write_claim(str(tmp_path), Claim(uuid=simulated_uuid("n", 1), mem_mib=700, pid=2**22 + 12345))  # no such pid
    (tmp_path / "junk.json").write_text("{half")
    snap = probe.snapshot("n", time.time(), {os.getsid(0): (5, "root")})
    g0, g1 = snap.gpus
    assert snap.simulated and g0.simulated and "SIMULATED" in g0.name
    assert g0.mem_used_mib == 1500 and g0.util_pct == 40
    assert {p.job_id for p in g0.processes} == {5, None}
    assert g1.mem_used_mib == 0  # the dead process's claim no longer counts
    ext.unlink()
    assert probe.snapshot("n", time.time(), {}).gpus[0].mem_used_mib == 1000


def test_resolve_command(tmp_path):
    (tmp_path / "train.py").write_text("")
    tool = tmp_path / "run.sh"
    tool.write_text("#!/bin/sh\n")
    env = {"PATH": "/usr/bin:/bin"}
    argv = resolve_command(["train.py", "--lr", "0.1"], str(tmp_path), env)
    assert argv[0].endswith("python3") and argv[1:] == (str(tmp_path / "train.py"), "--lr", "0.1")
    assert resolve_command(["train.py"], str(tmp_path), {**env, "GPUQ_PYTHON": "/opt/py"})[0] == "/opt/py"
    assert resolve_command(["sleep", "1"], str(tmp_path), env)[0].endswith("/sleep")
    with pytest.raises(InvalidInput, match="not executable"):
        resolve_command(["./run.sh"], str(tmp_path), env)
    tool.chmod(0o755)
    assert resolve_command(["./run.sh"], str(tmp_path), env) == (str(tool),)
    with pytest.raises(InvalidInput, match="does not exist"):
        resolve_command(["nope.py"], str(tmp_path), env)


def test_hostile_claim_files_are_ignored(tmp_path):
    probe = SimulatedProbe([8192], str(tmp_path), "n")
    uuid0 = simulated_uuid("n", 0)
    (tmp_path / "a.json").write_text('{"uuid": "%s", "mem_mib": 1, "pid": "abc"}' % uuid0)
    (tmp_path / "b.json").write_text('{"uuid": "%s", "mem_mib": 1, "pid": 1099511627776}' % uuid0)
    (tmp_path / "c.json").write_text("[1, 2]")
    os.mkfifo(tmp_path / "d.json")  # a plain open() would block the daemon for ever
    (tmp_path / "e.json").symlink_to("/dev/zero")  # a plain read would never end
    (tmp_path / "f.json").write_text('{"uuid": "%s", "mem_mib": 300}' % uuid0 + " " * 70000)  # too large
    write_claim(str(tmp_path), Claim(uuid=uuid0, mem_mib=700, label="real"))
    snap = probe.snapshot("n", time.time(), {})
    assert snap.gpus[0].mem_used_mib == 700


def test_progress_file_that_is_a_fifo_does_not_block(tmp_path):
    from gpuq.safefile import read_small

    os.mkfifo(tmp_path / "p")
    assert read_small(tmp_path / "p") is None
    (tmp_path / "ok").write_text('{"step": 3}')
    assert read_small(tmp_path / "ok") == b'{"step": 3}'
    assert read_small(tmp_path / "missing") is None
