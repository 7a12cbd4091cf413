"""Per-job host memory and CPU limits (``--mem``, ``--cpus``) and GPU device filtering under cgroup v2,
with real users, the real daemon (as root), the real CLI and the real kernel's cgroups.  GPUs are
SIMULATED: SIMULATED GPU i stands for the device node char 195:i (made here with mknod)."""

from __future__ import annotations

import glob
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuq.workers import devfilter
from tests.integration.doorkit import api_as

pytestmark = pytest.mark.integration

ALICE = "gpuqtest-alice"
HOG = ("import time\nblocks = []\nfor i in range(64):\n    blocks.append(b'\\x01' * (16 * 2**20))  # written: charged\n"
       "    open('hog.progress', 'w').write(str(i))\ntime.sleep(1)\n")


def _config(dir_: Path, daemon: str) -> Path:
    p = dir_ / "config.toml"
    p.write_text(f"[daemon]\n{daemon}\n")
    return p


def _user_dir(base: Path, user: str) -> Path:
    import pwd

    pw = pwd.getpwnam(user)
    d = base / user
    d.mkdir()
    os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


def _cgroup_file(controller_dir: str, node: str, job_id: int, name: str, timeout: float = 30) -> str:
    """A file of the job's cgroup (``<hierarchy>/gpuq/<node>.<store id>/job-<id>/<name>``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = glob.glob(f"{controller_dir}/gpuq/{node}.*/job-{job_id}/{name}")
        if found:
            return Path(found[0]).read_text().strip()
        assert time.monotonic() < deadline, f"no cgroup file {name} for job {job_id} under {controller_dir}"
        time.sleep(0.05)


def test_a_job_over_its_mem_is_oom_killed_and_fails_with_that_reason(make_daemon, open_tmp, test_users):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "memlim")
    assert "memory" in d.cli("status", "--json").json()["nodes"][0]["containment"]
    home = _user_dir(open_tmp, ALICE)
    (home / "hog.py").write_text(HOG)
    hog = d.submit("--gpus", "0", "--mem", "128MiB", "--", "python3", "hog.py", user=ALICE, cwd=home)
    assert _cgroup_file("/sys/fs/cgroup/memory", "memlim", hog, "memory.limit_in_bytes") == str(128 * 2**20)
    job = d.wait_state(hog, {"failed", "completed"}, timeout=60)
    assert job["state"] == "failed", job
    assert "out of memory" in job["end_reason"] and "--mem 128 MiB" in job["end_reason"], job["end_reason"]
    assert job["spec"]["resources"]["host_mem_mib"] == 128
    assert "host memory limit 128 MiB" in d.cli("status", str(hog), user=ALICE).out
    assert int((home / "hog.progress").read_text()) < 10  # stopped near 128 MiB, not at 1 GiB
    log = d.cli("logs", str(hog), user=ALICE).out
    assert "OOM killer" in log
    # the same program with room enough completes: the reason above was the limit, not the program
    ok = d.submit("--gpus", "0", "--mem", "2GiB", "--", "python3", "hog.py", user=ALICE, cwd=home)
    assert d.wait_state(ok, {"failed", "completed"}, timeout=60)["state"] == "completed"
    # a plain non-zero exit is not mistaken for an OOM kill
    plain = d.submit("--gpus", "0", "--mem", "1GiB", "--", "sh", "-c", "exit 3", user=ALICE, cwd=home)
    job = d.wait_state(plain, {"failed", "completed"}, timeout=60)
    assert job["end_reason"] == "exited 3", job


def test_cpus_becomes_the_cgroups_cpu_quota(make_daemon, open_tmp, test_users):
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "cpulim")
    home = _user_dir(open_tmp, ALICE)
    j = d.submit("--gpus", "0", "--cpus", "0.5", "--", "sleep", "600", user=ALICE, cwd=home)
    assert _cgroup_file("/sys/fs/cgroup/cpu", "cpulim", j, "cpu.cfs_period_us") == "100000"
    assert _cgroup_file("/sys/fs/cgroup/cpu", "cpulim", j, "cpu.cfs_quota_us") == "50000"
    pid = d.wait_pid(j)
    assert f"/gpuq/cpulim." in Path(f"/proc/{pid}/cgroup").read_text()
    assert d.job(j, user=ALICE)["spec"]["resources"]["cpus"] == 0.5
    assert "CPU limit 0.5" in d.cli("status", str(j), user=ALICE).out
    two = d.submit("--gpus", "1", "--cpus", "1.5", "--", "sleep", "600", user=ALICE, cwd=home)  # a GPU job too
    assert _cgroup_file("/sys/fs/cgroup/cpu", "cpulim", two, "cpu.cfs_quota_us") == "150000"
    # without --cpus the quota stays unlimited (one CPU-only job at a time per user here: 2 cores)
    assert d.cli("cancel", str(j), user=ALICE).rc == 0
    d.wait_state(j, "cancelled", timeout=30)
    free = d.submit("--gpus", "0", "--", "sleep", "600", user=ALICE, cwd=home)
    d.wait_pid(free)
    assert _cgroup_file("/sys/fs/cgroup/cpu", "cpulim", free, "cpu.cfs_quota_us") == "-1"


ABSURD = [
    (["--mem", "10"], "has no unit"),
    (["--mem", "1KiB"], "too little"),
    (["--mem", "9" * 400], "too long"),
    (["--mem", "2000TiB"], "larger than"),
    (["--cpus", "0"], "out of range"),
    (["--cpus", "-1"], "out of range"),
    (["--cpus", "nan"], "out of range"),
    (["--cpus", "inf"], "out of range"),
    (["--cpus", "1e9"], "out of range"),
    (["--cpus", "two"], "not a number"),
]


def test_absurd_mem_and_cpus_are_refused_with_one_sentence(daemon, open_tmp, test_users):
    home = _user_dir(open_tmp, ALICE)
    for args, words in ABSURD:
        r = daemon.cli("submit", "--gpus", "0", *args, "--", "true", user=ALICE, cwd=home)
        assert r.rc != 0 and words in r.err, (args, r)
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert daemon.cli("status", "--json").json()["jobs"] == []  # nothing was written


def test_the_api_refuses_bad_limits_that_skip_the_client(daemon, test_users):
    for value, field in ((5, "mem"), ("0.001", "cpus"), (True, "cpus"), ("1e400", "cpus")):
        r = api_as(ALICE, daemon.home / "gpuq.sock", "POST", "/v1/jobs",
                   {"argv": ["true"], "cwd": "/", "gpus": 0, field: value})
        assert r["status"] == 400, r
        assert "--" + field in json.loads(r["body"])["error"], r


def test_v2_device_program_lets_a_job_open_only_its_own_gpu(make_daemon, open_tmp, test_users):
    """cgroup v2: gpuq's eBPF device program on the job's cgroup.  No skip: where the kernel refuses
    the program, the assertions on the containment and on EPERM fail."""
    devdir = open_tmp / "dev"
    devdir.mkdir()
    for i in (0, 1):
        os.mknod(devdir / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(195, i))
    os.mknod(devdir / "nvidiactl", 0o666 | stat.S_IFCHR, os.makedev(195, 255))
    for node in devdir.iterdir():
        node.chmod(0o666)  # as /dev/nvidia* are: the file mode lets every user in, the cgroup decides
    cfg = _config(open_tmp, 'cgroups = "v2"')
    d = make_daemon("--simulate-gpus", "2x24GiB", "--node", "bpfdev", "--config", str(cfg))
    containment = d.cli("status", "--json").json()["nodes"][0]["containment"]
    assert "cgroup v2" in containment and "eBPF devices" in containment, containment
    assert "GPU device isolation" not in containment, containment
    home = _user_dir(open_tmp, ALICE)
    probe = (f"import errno,os,json\nr={{}}\nfor n in ('nvidia0','nvidia1','nvidiactl'):\n"
             f"    try: os.close(os.open('{devdir}/'+n, os.O_RDWR)); r[n]='opened'\n"
             "    except OSError as e: r[n]=errno.errorcode[e.errno]\n"
             "open('devs.json','w').write(json.dumps(r))\n")
    seen = {}
    for _ in range(2):  # one job on each GPU: each sees only its own
        j = d.submit("--gpus", "1", "--", "python3", "-c", probe, user=ALICE, cwd=home)
        job = d.wait_state(j, {"completed", "failed"}, timeout=30)
        assert job["state"] == "completed", job
        mine = int(next(e["text"] for e in job["events"] if e["text"].startswith("placed on")).rsplit(" ", 1)[-1])
        r = json.loads((home / "devs.json").read_text())
        assert r[f"nvidia{1 - mine}"] == "EPERM", r  # the program refuses the other GPU
        assert r[f"nvidia{mine}"] == "ENXIO", r  # its own passes the cgroup (no driver here: ENXIO)
        assert r["nvidiactl"] == "ENXIO", r  # the control device is not a GPU
        seen[mine] = r
        blocker = d.submit("--gpus", "1", "--", "sleep", "600", user=ALICE, cwd=home)  # next job: other GPU
        d.wait_pid(blocker)
    assert set(seen) == {0, 1}
    # a CPU-only job may open no GPU
    j = d.submit("--gpus", "0", "--", "python3", "-c", probe, user=ALICE, cwd=home)
    assert d.wait_state(j, {"completed", "failed"}, timeout=30)["state"] == "completed"
    r = json.loads((home / "devs.json").read_text())
    assert r["nvidia0"] == r["nvidia1"] == "EPERM", r


def test_v2_limits_are_enforced_or_reported_as_not_enforced(make_daemon, open_tmp, test_users):
    """Under cgroups = "v2", --mem becomes memory.max where the cgroup2 hierarchy has the memory
    controller; where it does not (this machine: a hybrid one, memory and cpu bound to v1), status
    and the job's log say --mem and --cpus are not enforced."""
    cfg = _config(open_tmp, 'cgroups = "v2"')
    d = make_daemon("--simulate-gpus", "1x24GiB", "--node", "v2lim", "--config", str(cfg))
    mount = Path(d.cli("status", "--json").json()["nodes"][0]["containment"].split(" under ")[1].split(" (")[0])
    controllers = set((mount / "cgroup.controllers").read_text().split())
    home = _user_dir(open_tmp, ALICE)
    j = d.submit("--gpus", "0", "--mem", "1GiB", "--cpus", "0.5", "--", "sleep", "600", user=ALICE, cwd=home)
    d.wait_pid(j)
    status = d.cli("status").out
    log = d.cli("logs", str(j), user=ALICE).out
    if "memory" in controllers:
        assert _cgroup_file(str(mount), "v2lim", j, "memory.max") == str(2**30)
    else:
        assert "not enforced here: --mem (no memory controller)" in status, status
        assert "--mem is not enforced" in log, log
    if "cpu" in controllers:
        assert _cgroup_file(str(mount), "v2lim", j, "cpu.max") == "50000 100000"
    else:
        assert "--cpus (no cpu controller)" in status, status
        assert "--cpus is not enforced" in log, log


def test_a_second_device_program_on_one_cgroup_replaces_the_first(open_tmp):
    """A requeued job whose old cgroup could not be removed gets a new program for its new GPUs: it
    must replace the old one, not add to it (the kernel wants every program to agree)."""
    for i in (0, 1):
        os.mknod(open_tmp / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(195, i))
    cg = Path(f"/sys/fs/cgroup/unified/gpuq-test-replace-{os.getpid()}")
    cg.mkdir()
    try:
        devfilter.attach(str(cg), (0,))
        devfilter.attach(str(cg), (1,))
        code = (f"import errno, os\nfor i in (0, 1):\n    try: os.close(os.open('{open_tmp}/nvidia%d' % i, os.O_RDWR))"
                "; print('opened')\n    except OSError as e: print(errno.errorcode[e.errno])\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             preexec_fn=lambda: (cg / "cgroup.procs").write_text(str(os.getpid()))).stdout.split()
        assert out == ["EPERM", "ENXIO"], out  # only the second program's GPU (no driver here: ENXIO)
    finally:
        cg.rmdir()
