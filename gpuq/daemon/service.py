"""What the daemon's API does, independent of HTTP: validate, authorise, write to the store.

The caller's identity always comes from the socket's peer credentials (see ``api``);
a request body never says who is asking.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from gpuq.config import DaemonConfig
from gpuq.daemon.history import history as finished_history
from gpuq.daemon.logtail import tail_offset
from gpuq.daemon.arrays import (PLACEHOLDER, array_commands, array_size, expand_ids, member_ref, notify_command,
                                parse_array, resolved_per_element, substitute)
from gpuq.errors import GpuqError, InvalidInput, PermissionDenied, WouldNeverFit
from gpuq.gpus import snapshot_to_dict
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Resources, StopKind, StopRequest
from gpuq.scheduler.policy import never_fits
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
    if os.path.isfile(os.path.join(cwd, first)):  # `gpuq submit run.sh` runs ./run.sh, as sbatch does
        return resolve_command((f"./{first}", *argv[1:]), cwd, env)
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
        after, after_any, after_notok = (self._dependencies(opts, k) for k in ("after", "after_any", "after_notok"))
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
            argv=tuple(argv) if resolved_per_element(opts, argv) else resolve_command(argv, cwd, env),
            cwd=cwd, env=env, name=name, priority=priority, after=after,
            time_limit_s=None if time_limit in (None, "") else parse_duration_s(str(time_limit), what="--time-limit"),
            checkpointable=bool(opts.get("checkpointable", False)), resources=resources,
            after_any=after_any, after_notok=after_notok, notify=notify_command(opts),
        )
        why = never_fits(resources, self.store.nodes())
        if why is not None:
            raise WouldNeverFit(f"this job could never run: {why}; ask for less.")
        if self.submit_limits is not None:
            mine = sum(1 for j in self.store.active_jobs()
                       if j.owner.uid == caller.uid and j.state in (JobState.PENDING, JobState.HELD))
            self.submit_limits(caller.user, mine + array_size(opts) - 1)
        now = self.clock()
        if opts.get("array") not in (None, "") or opts.get("commands") is not None:
            return self._submit_array(caller, spec, opts, now)
        job = self.store.submit(
            lambda job_id: Job(id=job_id, spec=spec, owner=caller.owner(), state=JobState.PENDING, submitted_at=now),
            now,
        )
        return {"id": job.id, "job": self._public(job, caller, now)}

    def _dependencies(self, opts: Mapping[str, Any], key: str) -> tuple[int, ...]:
        """The job ids of one kind of dependency; an array id stands for all of its jobs."""
        raw = opts.get(key) or []
        if not isinstance(raw, list):
            raw = [raw]
        if len(raw) > 1000:
            raise InvalidInput(f"--{key.replace('_', '-')} names more than 1000 jobs: give an array id instead.")
        return tuple(expand_ids(raw, self.store.get, self.store.get_many, f"--{key.replace('_', '-')}"))

    def _submit_array(self, caller: Caller, spec: JobSpec, opts: Mapping[str, Any], now: float) -> dict[str, Any]:
        """One request, many jobs: ``--array`` over one command, or ``--from FILE`` (one per line)."""
        commands = array_commands(opts)
        indices, limit = parse_array(str(opts.get("array") or ""), len(commands) if commands is not None else None)
        argvs: list[tuple[str, ...]] = []
        for i in indices:
            if commands is not None:
                argvs.append(resolve_command(commands[i], spec.cwd, spec.env))
            elif PLACEHOLDER in spec.argv[0]:
                argvs.append(resolve_command(substitute(opts["argv"], i), spec.cwd, spec.env))
            else:
                argvs.append(tuple(substitute(spec.argv, i)))
        owner = caller.owner()

        def build(first: int) -> list[Job]:
            return [Job(id=first + n, owner=owner, state=JobState.PENDING, submitted_at=now,
                        spec=dataclasses.replace(spec, argv=argv, array=member_ref(first, i, len(indices), limit)))
                    for n, (i, argv) in enumerate(zip(indices, argvs))]

        jobs = self.store.submit_many(len(indices), build, now)
        return {"id": jobs[0].id, "array_id": jobs[0].id, "ids": [j.id for j in jobs],
                "limit": limit, "indices": indices}

    # ---- read ---------------------------------------------------------------------------------

    def _public(self, job: Job, caller: Caller, now: float, reasons: Mapping[int, str] | None = None,
                with_env: bool = True) -> dict[str, Any]:
        d = job.to_dict(with_env=with_env and (caller.is_root or caller.uid == job.owner.uid))
        d["display_name"] = job.display_name
        if job.state is JobState.RUNNING and job.started_at is not None:
            d["elapsed_s"] = job.total_run_s + (now - job.started_at)  # every run, this one included
        elif job.total_run_s:
            d["elapsed_s"] = job.total_run_s
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

    def lookup(self, caller: Caller, ids: Sequence[Any]) -> list[dict[str, Any]]:
        """The jobs that job ids, array ids and ``ARRAY_INDEX`` name (no environments)."""
        now = self.clock()
        reasons = self.store.reasons()
        wanted = expand_ids(ids, self.store.get, self.store.get_many, "job ids")
        return [self._public(j, caller, now, reasons, with_env=False) for j in self.store.get_many(wanted)]

    def log_tail_offset(self, caller: Caller, job_id: int, lines: int) -> int:
        """Where the last ``lines`` lines of the job's log begin (`gpuq logs --tail N`)."""
        job = self.store.get(job_id)
        if not caller.is_root and caller.uid != job.owner.uid:
            raise PermissionDenied(f"job {job_id} belongs to {job.owner.user}: only its owner or root may read its log.")
        return tail_offset(self.cfg.paths.job_log(job_id), lines)

    def history(self, caller: Caller, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        return {"jobs": finished_history(self.store, query)}

    # ---- change -------------------------------------------------------------------------------

    def _act(self, caller: Caller, ids: Sequence[Any], verb: str,
             change: Callable[[Job], Job | None]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for raw in ids:
            try:
                targets = expand_ids([raw], self.store.get, self.store.get_many, verb)  # an array id: all its jobs
            except GpuqError as e:
                out.append({"id": raw, "ok": False, "error": str(e), "status": e.http_status})
                continue
            for job_id in targets:
                out.append(self._act_one(caller, job_id, verb, change))
        return out

    def _act_one(self, caller: Caller, job_id: int, verb: str, change: Callable[[Job], Job | None]) -> dict[str, Any]:
        try:
            job = self.store.get(int(job_id))
            self._may_change(caller, job, verb)
            new = self.store.update(job.id, change, self.clock(), event=f"{verb} by {caller.user}")
            final = new or self.store.get(job.id)
            return {"id": job.id, "ok": True, "state": final.state.value, "changed": new is not None,
                    "stopping": final.stop_request is not None,
                    "stop_kind": final.stop_request.kind.value if final.stop_request is not None else None}
        except GpuqError as e:
            return {"id": job_id, "ok": False, "error": str(e), "status": e.http_status}

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
