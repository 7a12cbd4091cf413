"""What the daemon's API does, independent of HTTP: validate, authorise, write to the store.

The caller's identity always comes from the socket's peer credentials (see ``api``);
a request body never says who is asking.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from gpuq.config import DaemonConfig
from gpuq.errors import GpuqError, InvalidInput, PermissionDenied, WouldNeverFit
from gpuq.gpus import snapshot_to_dict
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Resources, StopKind, StopRequest
from gpuq.scheduler.placement import never_fits
from gpuq.store import Store
from gpuq.units import parse_duration_s, parse_fraction, parse_size_mib

MAX_ARGV_BYTES = 128 * 1024
LOG_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
    pid: int
    user: str
    groups: tuple[int, ...]

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @classmethod
    def from_peer(cls, pid: int, uid: int, gid: int) -> "Caller":
        try:
            pw = pwd.getpwuid(uid)
            name = pw.pw_name
            groups = tuple(sorted(set(os.getgrouplist(name, pw.pw_gid))))
        except KeyError:
            name, groups = str(uid), (gid,)
        return cls(uid=uid, gid=gid, pid=pid, user=name, groups=groups)

    def owner(self) -> Owner:
        return Owner(uid=self.uid, gid=self.gid, user=self.user, groups=self.groups)


def resolve_command(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> tuple[str, ...]:
    """The command to execute.  ``*.py`` runs with the first ``python3`` on the submitting
    shell's PATH (so an activated venv or conda env is used; ``GPUQ_PYTHON`` overrides);
    anything else runs as given, looked up on that PATH."""
    if not argv or not argv[0]:
        raise InvalidInput("nothing to run: give a script or a command, like `gpuq submit train.py`.")
    first = argv[0]
    path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    if first.endswith(".py"):
        script = os.path.normpath(os.path.join(cwd, first))
        if not os.path.isfile(script):
            raise InvalidInput(f"script {first} does not exist in {cwd}: check the name and the directory you submit from.")
        python = env.get("GPUQ_PYTHON") or shutil.which("python3", path=path) or shutil.which("python", path=path)
        if not python:
            raise InvalidInput("no python3 on your PATH to run the script: activate your environment or set GPUQ_PYTHON.")
        return (python, script, *argv[1:])
    if "/" in first:
        exe = os.path.normpath(os.path.join(cwd, first))
        if not os.path.isfile(exe):
            raise InvalidInput(f"{first} does not exist in {cwd}: check the name and the directory you submit from.")
        if not os.access(exe, os.X_OK):
            raise InvalidInput(f"{first} is not executable: run `chmod +x {first}` or submit it as `-- bash {first}`.")
        return (exe, *argv[1:])
    exe = shutil.which(first, path=path)
    if exe is None:
        raise InvalidInput(f"command {first!r} is not on your PATH and is not a file in {cwd}: check the name.")
    return (exe, *argv[1:])


def _opt_int(body: Mapping[str, Any], key: str, default: int) -> int:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidInput(f"{key} must be a whole number, not {v!r}.")
    return v


def parse_submission(body: Mapping[str, Any]) -> tuple[list[str], str, dict[str, str], dict[str, Any]]:
    """Check a submit request's shape; returns argv, cwd, env and the options."""
    argv = body.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidInput("nothing to run: give a script or a command, like `gpuq submit train.py`.")
    if sum(len(a) for a in argv) > MAX_ARGV_BYTES:
        raise InvalidInput("the command line is too long; put the arguments in a file.")
    cwd = body.get("cwd")
    if not isinstance(cwd, str) or not os.path.isabs(cwd):
        raise InvalidInput("the working directory must be an absolute path.")
    if not os.path.isdir(cwd):
        raise InvalidInput(f"working directory {cwd} does not exist.")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise InvalidInput("env must map names to strings.")
    return argv, cwd, env, body


def build_resources(body: Mapping[str, Any]) -> Resources:
    gpus = _opt_int(body, "gpus", 1)
    if gpus < 0:
        raise InvalidInput(f"--gpus {gpus} is negative: give 0 for a CPU-only job or a positive count.")
    mem = body.get("gpu_mem")
    frac = body.get("fraction")
    return Resources(
        gpus=gpus,
        mem_mib=None if mem in (None, "") else parse_size_mib(str(mem), what="--gpu-mem"),
        fraction=None if frac in (None, "") else parse_fraction(frac),
        exclusive=bool(body.get("exclusive", False)),
    )


class Service:
    def __init__(self, store: Store, cfg: DaemonConfig, clock: Callable[[], float],
                 submit_limits: Callable[[str, int], None] | None = None):
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.submit_limits = submit_limits
        self.daemon_uid = os.geteuid()

    # ---- authorisation ------------------------------------------------------------------------

    def _may_submit(self, caller: Caller) -> None:
        if self.daemon_uid != 0 and caller.uid != self.daemon_uid:
            me = pwd.getpwuid(self.daemon_uid).pw_name
            raise PermissionDenied(
                f"this gpuq daemon runs as {me} (a single-user install) and accepts only {me}'s jobs; "
                "ask an administrator to run it as root for a shared install."
            )

    def _may_change(self, caller: Caller, job: Job, verb: str) -> None:
        if not caller.is_root and caller.uid != job.owner.uid:
            raise PermissionDenied(f"job {job.id} belongs to {job.owner.user}: only its owner or root may {verb} it.")

    # ---- submit -------------------------------------------------------------------------------

    def submit(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        self._may_submit(caller)
        argv, cwd, env, opts = parse_submission(body)
        resources = build_resources(opts)
        time_limit = opts.get("time_limit")
        after_raw = opts.get("after") or []
        if not isinstance(after_raw, list):
            after_raw = [after_raw]
        try:
            after = tuple(int(a) for a in after_raw)
        except (TypeError, ValueError):
            raise InvalidInput(f"--after takes job ids, not {after_raw!r}.") from None
        priority = _opt_int(opts, "priority", 0)
        if not -1000 <= priority <= 1000:
            raise InvalidInput(f"--priority {priority} is out of range: give a whole number from -1000 to 1000.")
        if priority > 0 and not caller.is_root:
            raise PermissionDenied(f"--priority {priority}: only root may raise a job's priority (it orders jobs "
                                   "across users); give 0 or a negative priority to let your other jobs go first.")
        name = str(opts.get("name") or "")
        if len(name) > 200:
            raise InvalidInput("--name is longer than 200 characters: give a shorter name.")
        spec = JobSpec(
            argv=resolve_command(argv, cwd, env), cwd=cwd, env=env, name=name, priority=priority, after=after,
            time_limit_s=None if time_limit in (None, "") else parse_duration_s(str(time_limit), what="--time-limit"),
            checkpointable=bool(opts.get("checkpointable", False)), resources=resources,
        )
        for dep in after:
            self.store.get(dep)  # raises JobNotFound with a clear sentence
        why = never_fits(resources, self.store.nodes())
        if why is not None:
            raise WouldNeverFit(f"this job could never run: {why}; ask for less.")
        if self.submit_limits is not None:
            mine = sum(1 for j in self.store.active_jobs()
                       if j.owner.uid == caller.uid and j.state in (JobState.PENDING, JobState.HELD))
            self.submit_limits(caller.user, mine)
        now = self.clock()
        job = self.store.submit(
            lambda job_id: Job(id=job_id, spec=spec, owner=caller.owner(), state=JobState.PENDING, submitted_at=now),
            now,
        )
        return {"id": job.id, "job": self._public(job, caller, now)}

    # ---- read ---------------------------------------------------------------------------------

    def _public(self, job: Job, caller: Caller, now: float, reasons: Mapping[int, str] | None = None,
                with_env: bool = True) -> dict[str, Any]:
        d = job.to_dict(with_env=with_env and (caller.is_root or caller.uid == job.owner.uid))
        d["display_name"] = job.display_name
        if job.state is JobState.RUNNING and job.started_at is not None:
            d["elapsed_s"] = now - job.started_at
        elif job.state.terminal and job.ended_at is not None and job.last_run_s:
            d["elapsed_s"] = job.last_run_s
        if reasons is not None and job.id in reasons:
            d["reason"] = reasons[job.id]
        elif job.state is JobState.HELD:
            d["reason"] = "held"
        elif job.state is JobState.RUNNING and job.started_at is None:
            d["reason"] = "starting"
        return d

    def status(self, caller: Caller, include_finished: bool = False) -> dict[str, Any]:
        now = self.clock()
        jobs = self.store.active_jobs()
        if include_finished:
            jobs = sorted(jobs + self.store.finished_jobs(), key=lambda j: j.id)
        reasons = self.store.reasons()
        nodes = self.store.nodes()
        running = [j for j in jobs if j.state is JobState.RUNNING and j.placement]
        node_dicts = []
        for n in nodes:
            d = snapshot_to_dict(n)
            for g in d["gpus"]:
                on = [j for j in running if g["uuid"] in j.placement.gpu_uuids]
                g["reserved_mib"] = sum(j.placement.reserved_mib[j.placement.gpu_uuids.index(g["uuid"])] for j in on)
                g["jobs"] = [{"id": j.id, "user": j.owner.user} for j in on]
                g["outside_gpuq_mib"] = sum((p["used_mib"] or 0) for p in g["processes"] if p["job_id"] is None)
            node_dicts.append(d)
        return {
            "now": now,
            "jobs": [self._public(j, caller, now, reasons, with_env=False) for j in jobs],  # env: GET /v1/jobs/ID
            "nodes": node_dicts,
            "leader": self.store.leader(),
        }

    def job(self, caller: Caller, job_id: int) -> dict[str, Any]:
        now = self.clock()
        job = self.store.get(job_id)
        d = self._public(job, caller, now, self.store.reasons())
        d["events"] = self.store.events(job_id)
        d["log_path"] = str(self.cfg.paths.job_log(job_id))
        return d

    def log(self, caller: Caller, job_id: int, offset: int) -> tuple[bytes, int, Job]:
        job = self.store.get(job_id)
        if not caller.is_root and caller.uid != job.owner.uid:
            raise PermissionDenied(f"job {job_id} belongs to {job.owner.user}: only its owner or root may read its log.")
        path = self.cfg.paths.job_log(job_id)
        try:
            with open(path, "rb") as f:
                f.seek(max(0, offset))
                data = f.read(LOG_CHUNK_BYTES)
        except FileNotFoundError:
            data = b""
        return data, max(0, offset) + len(data), job

    # ---- change -------------------------------------------------------------------------------

    def _act(self, caller: Caller, ids: Sequence[int], verb: str,
             change: Callable[[Job], Job | None]) -> list[dict[str, Any]]:
        out = []
        for job_id in ids:
            try:
                job = self.store.get(int(job_id))
                self._may_change(caller, job, verb)
                new = self.store.update(job.id, change, self.clock(), event=f"{verb} by {caller.user}")
                final = new or self.store.get(job.id)
                out.append({"id": job.id, "ok": True, "state": final.state.value,
                            "stopping": final.stop_request is not None})
            except GpuqError as e:
                out.append({"id": job_id, "ok": False, "error": str(e), "status": e.http_status})
        return out

    def cancel(self, caller: Caller, ids: Sequence[int]) -> list[dict[str, Any]]:
        now = self.clock()

        def change(j: Job) -> Job | None:
            if j.state in (JobState.PENDING, JobState.HELD) or (j.state is JobState.RUNNING and j.started_at is None):
                return j.transition(JobState.CANCELLED, ended_at=now, end_reason=f"cancelled by {caller.user}")
            if j.state is JobState.RUNNING:
                if j.stop_request is not None and j.stop_request.kind is StopKind.CANCEL:
                    return None
                return j.with_changes(stop_request=StopRequest(StopKind.CANCEL, now, caller.user))
            raise InvalidInput(f"job {j.id} has already ended ({j.state.value}); there is nothing to cancel.")

        return self._act(caller, ids, "cancel", change)

    def hold(self, caller: Caller, ids: Sequence[int]) -> list[dict[str, Any]]:
        def change(j: Job) -> Job | None:
            if j.state is JobState.HELD:
                return None
            if j.state is not JobState.PENDING:
                raise InvalidInput(f"job {j.id} is {j.state.value}; only a pending job can be held.")
            return j.transition(JobState.HELD)

        return self._act(caller, ids, "hold", change)

    def release(self, caller: Caller, ids: Sequence[int]) -> list[dict[str, Any]]:
        def change(j: Job) -> Job | None:
            if j.state is JobState.PENDING:
                return None
            if j.state is not JobState.HELD:
                raise InvalidInput(f"job {j.id} is {j.state.value}; only a held job can be released.")
            return j.transition(JobState.PENDING)

        return self._act(caller, ids, "release", change)

    def requeue(self, caller: Caller, ids: Sequence[int]) -> list[dict[str, Any]]:
        now = self.clock()

        def change(j: Job) -> Job | None:
            if j.state is not JobState.RUNNING:
                raise InvalidInput(f"job {j.id} is {j.state.value}; only a running job can be requeued.")
            if not j.spec.checkpointable:
                raise InvalidInput(f"job {j.id} was not submitted with --checkpointable, so a requeue would lose "
                                   "its progress; cancel and resubmit it instead.")
            if j.started_at is None:
                return j.transition(JobState.PENDING, end_reason=f"requeued by {caller.user} before it started")
            if j.stop_request is not None:
                return None
            return j.with_changes(stop_request=StopRequest(StopKind.REQUEUE, now, caller.user))

        return self._act(caller, ids, "requeue", change)

    def usage(self, caller: Caller) -> dict[str, Any]:
        from gpuq.scheduler import fairshare

        now = self.clock()
        jobs = self.store.active_jobs()
        pending = [j for j in jobs if j.state in (JobState.PENDING, JobState.HELD)]
        running = [j for j in jobs if j.state is JobState.RUNNING]
        rows = fairshare.usage_report(self.store.usage_records(), pending, running, self.cfg.policy, now)
        return {"now": now, "users": rows}
