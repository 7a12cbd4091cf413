"""What the daemon's API does, independent of HTTP: validate, authorise, write to the store.

The caller's identity always comes from the socket's peer credentials (see ``api``);
a request body never says who is asking.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from gpuq.config import DaemonConfig
from gpuq.daemon import brief
from gpuq.daemon.arrays import PLACEHOLDER, expand_ids, member_ref, parse_array, substitute
from gpuq.daemon.history import history as finished_history
from gpuq.daemon.logtail import tail_offset
from gpuq.daemon.schema import HistoryQuery, JobRef, SubmitRequest
from gpuq.daemon.usercheck import resolve_as
from gpuq.errors import GpuqError, InvalidInput, PermissionDenied, StateDirectoryFull, WouldNeverFit
from gpuq.gpus import snapshot_to_dict
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Resources, StopKind, StopRequest
from gpuq.scheduler.placement import never_fits
from gpuq.store import Store
from gpuq.workers.notify import notify_job_end


LOG_CHUNK_BYTES = 256 * 1024
#: The jobs of an array that each verb acts on when given the array's id (the others are left alone).
ARRAY_VERB_STATES = {
    "cancel": (JobState.PENDING, JobState.HELD, JobState.RUNNING),
    "hold": (JobState.PENDING,),
    "release": (JobState.HELD,),
    "requeue": (JobState.RUNNING,),
}
#: Pending and held jobs one user may have when ``[scheduler] max_pending`` does not say.
DEFAULT_MAX_PENDING = 1000
#: Finished jobs ``gpuq status --all`` shows (the newest); older ones stay in the store until retention.
STATUS_FINISHED_SHOWN = 200


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


class Service:
    def __init__(self, store: Store, cfg: DaemonConfig, clock: Callable[[], float]):
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.daemon_uid = os.geteuid()
        store.ensure_indexes()

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

    def max_pending(self, user: str) -> int:
        limit = self.cfg.policy.limits_for(user).max_pending
        return DEFAULT_MAX_PENDING if limit is None else limit

    def _check_free_space(self) -> None:
        """Refuse new work while the state directory (logs, the store's files) is nearly full."""
        try:
            st = os.statvfs(self.cfg.home)
        except OSError:
            return
        free_mib = st.f_bavail * st.f_frsize // (1024 * 1024)
        if free_mib < self.cfg.min_free_mib:
            raise StateDirectoryFull(
                f"the gpuq state directory {self.cfg.home} has only {free_mib} MiB free (less than the "
                f"{self.cfg.min_free_mib} MiB it keeps in reserve), so new jobs are refused until space is "
                "freed; running jobs go on, and submissions work again by themselves once there is room.")

    # ---- submit -------------------------------------------------------------------------------

    def submit(self, caller: Caller, req: SubmitRequest) -> dict[str, Any]:
        """``req`` was parsed and bounded by :mod:`gpuq.daemon.schema`."""
        self._may_submit(caller)
        if req.priority > 0 and not caller.is_root:
            raise PermissionDenied(f"--priority {req.priority}: only root may raise a job's priority (it orders jobs "
                                   "across users); give 0 or a negative priority to let your other jobs go first.")
        resources = Resources(gpus=req.gpus * req.nodes, mem_mib=req.gpu_mem_mib, fraction=req.fraction,
                              exclusive=req.exclusive, host_mem_mib=req.host_mem_mib, cpus=req.cpus,
                              nodes=req.nodes)  # gpus: in all, over every node
        self._check_free_space()
        per_element = req.commands is not None or (req.array is not None and PLACEHOLDER in req.argv[0])
        argv = req.argv if per_element else resolve_as(caller.uid, caller.gid, caller.groups, req.argv, req.cwd,
                                                       req.env)
        spec = JobSpec(argv=argv, cwd=req.cwd, env=dict(req.env), name=req.name, priority=req.priority,
                       after=self._dependencies(req.after, "--after"), time_limit_s=req.time_limit_s,
                       checkpointable=req.checkpointable, resources=resources,
                       after_any=self._dependencies(req.after_any, "--after-any"),
                       after_notok=self._dependencies(req.after_notok, "--after-notok"), notify=req.notify)
        why = never_fits(resources, self.store.nodes())
        if why is not None:
            raise WouldNeverFit(f"this job could never run: {why}; ask for less.")
        now = self.clock()
        if req.array is not None or req.commands is not None:
            return self._submit_array(caller, req, spec, now)
        job = self.store.submit(
            lambda job_id: Job(id=job_id, spec=spec, owner=caller.owner(), state=JobState.PENDING, submitted_at=now),
            now, uid=caller.uid, max_queued=self.max_pending(caller.user),
        )
        return {"id": job.id, "job": self._public(job, caller, now), "notes": list(req.notes)}

    def _dependencies(self, refs: Sequence[JobRef], what: str) -> tuple[int, ...]:
        """The job ids of one kind of dependency (each must exist); an array id stands for all its jobs."""
        return tuple(expand_ids(refs, self.store.get, self.store.get_many, what))

    def _submit_array(self, caller: Caller, req: SubmitRequest, spec: JobSpec, now: float) -> dict[str, Any]:
        """One request, many jobs: ``--array`` over one command, or ``--from FILE`` (one per line)."""
        indices, limit = parse_array(req.array or "", len(req.commands) if req.commands is not None else None)
        programs: dict[str, tuple[str, ...]] = {}  # how each program resolves depends only on its name

        def resolved(argv: Sequence[str]) -> tuple[str, ...]:
            if argv[0] not in programs:  # checked with the caller's rights, once per program
                programs[argv[0]] = resolve_as(caller.uid, caller.gid, caller.groups, argv[:1], req.cwd, req.env)
            return programs[argv[0]] + tuple(argv[1:])

        argvs: list[tuple[str, ...]] = []
        for i in indices:
            if req.commands is not None:
                argvs.append(resolved(req.commands[i]))
            elif spec.argv is req.argv and PLACEHOLDER in req.argv[0]:
                argvs.append(resolved(substitute(req.argv, i)))
            else:
                argvs.append(tuple(substitute(spec.argv, i)))
        owner = caller.owner()

        def build(first: int) -> list[Job]:
            return [Job(id=first + n, owner=owner, state=JobState.PENDING, submitted_at=now,
                        spec=dataclasses.replace(spec, argv=argv, array=member_ref(first, i, len(indices), limit)))
                    for n, (i, argv) in enumerate(zip(indices, argvs))]

        jobs = self.store.submit_many(len(indices), build, now, uid=caller.uid,
                                      max_queued=self.max_pending(caller.user))
        return {"id": jobs[0].id, "array_id": jobs[0].id, "ids": [j.id for j in jobs], "limit": limit,
                "indices": indices, "notes": list(req.notes)}

    # ---- read ---------------------------------------------------------------------------------

    def _public(self, job: Job, caller: Caller, now: float, reasons: Mapping[int, str] | None = None,
                with_env: bool = True) -> dict[str, Any]:
        mine = caller.is_root or caller.uid == job.owner.uid
        d = job.to_dict(with_env=with_env and mine)
        d["display_name"] = job.display_name
        if not mine and not self.cfg.show_others_commands:  # [daemon] show_others_commands = false
            d["spec"]["argv"], d["spec"]["cwd"] = [], ""
            d["display_name"] = job.spec.name or "(hidden)"
            d["hidden"] = True
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

    def status(self, caller: Caller, include_finished: bool = False, others_per_user: int | None = None
               ) -> dict[str, Any]:
        """The queue and the nodes.  ``others_per_user``: the bounded view (:mod:`gpuq.daemon.brief`)."""
        now = self.clock()
        jobs = self.store.active_jobs()
        summaries: list[brief.WaitingSummary] = []
        if others_per_user is not None:
            jobs, summaries = brief.brief(jobs, caller.uid, others_per_user)
        if include_finished:
            jobs = sorted(jobs + self.store.finished_jobs(STATUS_FINISHED_SHOWN), key=lambda j: j.id)
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
        public = [self._public(j, caller, now, reasons, with_env=False) for j in jobs]  # env: GET /v1/jobs/ID
        warnings = self.store.overuse_warnings() if running else {}
        for d in public:
            if d["id"] in warnings and d["state"] == "running":
                d["warning"] = warnings[d["id"]]  # GPU memory over-use (gpuq/workers/overuse.py)
        return {
            "now": now,
            "jobs": public,
            **({"others_waiting": [s.to_dict() for s in summaries]} if others_per_user is not None else {}),
            "nodes": node_dicts,
            "leader": self.store.leader(),
            "set_aside": self._set_aside(caller),
        }

    def _set_aside(self, caller: Caller) -> list[dict[str, Any]]:
        """Stored records that could not be read (evidence kept); the raw text only for root."""
        records = self.store.set_aside_records()
        if not caller.is_root:
            return [{k: r[k] for k in ("id", "at")} for r in records]
        return records

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

    def lookup(self, caller: Caller, refs: Sequence[JobRef]) -> list[dict[str, Any]]:
        """The jobs that job ids, array ids and ``ARRAY_INDEX`` name (no environments)."""
        now = self.clock()
        reasons = self.store.reasons()
        wanted = expand_ids(refs, self.store.get, self.store.get_many, "job ids")
        return [self._public(j, caller, now, reasons, with_env=False) for j in self.store.get_many(wanted)]

    def log_tail_offset(self, caller: Caller, job_id: int, lines: int) -> int:
        """Where the last ``lines`` lines of the job's log begin (`gpuq logs --tail N`)."""
        job = self.store.get(job_id)
        if not caller.is_root and caller.uid != job.owner.uid:
            raise PermissionDenied(f"job {job_id} belongs to {job.owner.user}: only its owner or root may read its log.")
        return tail_offset(self.cfg.paths.job_log(job_id), lines)

    def history(self, caller: Caller, query: HistoryQuery) -> dict[str, Any]:
        """Finished jobs, newest first (`gpuq history`); commands hidden as status hides them."""
        rows = finished_history(self.store, query)
        if not self.cfg.show_others_commands and not caller.is_root:
            for r in rows:
                if r["user"] != caller.user:
                    r["name"] = r["given_name"] or "(hidden)"
        for r in rows:
            r.pop("given_name", None)
        return {"jobs": rows}

    # ---- change -------------------------------------------------------------------------------

    def _act(self, caller: Caller, refs: Sequence[JobRef], verb: str,
             change: Callable[[Job], Job | None]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ref in refs:
            try:
                targets = expand_ids([ref], self.store.get, self.store.get_many, verb)  # an array id: all its jobs
            except GpuqError as e:
                out.append({"id": ref, "ok": False, "error": str(e), "status": e.http_status})
                continue
            if len(targets) > 1:  # a whole array: act on the jobs the verb applies to, as scancel/scontrol do
                jobs = [j for j in self.store.get_many(targets) if j.state in ARRAY_VERB_STATES[verb]]
                if not jobs:
                    out.append({"id": ref, "ok": False, "status": 409, "error": f"array {ref} has no "
                                f"{' or '.join(s.value for s in ARRAY_VERB_STATES[verb])} jobs to {verb}."})
                    continue
                targets = [j.id for j in jobs]
            for job_id in targets:
                out.append(self._act_one(caller, job_id, verb, change))
        return out

    def _act_one(self, caller: Caller, job_id: int, verb: str, change: Callable[[Job], Job | None]) -> dict[str, Any]:
        try:
            job = self.store.get(job_id)
            self._may_change(caller, job, verb)
            new = self.store.update(job.id, change, self.clock(), event=f"{verb} by {caller.user}")
            notify_job_end(new)  # a waiting job cancelled here ends here
            final = new or self.store.get(job.id)
            return {"id": job.id, "ok": True, "state": final.state.value, "changed": new is not None,
                    "stopping": final.stop_request is not None,
                    "stop_kind": final.stop_request.kind.value if final.stop_request is not None else None}
        except GpuqError as e:
            return {"id": job_id, "ok": False, "error": str(e), "status": e.http_status}

    def cancel(self, caller: Caller, ids: Sequence[JobRef]) -> list[dict[str, Any]]:
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

    def hold(self, caller: Caller, ids: Sequence[JobRef]) -> list[dict[str, Any]]:
        def change(j: Job) -> Job | None:
            if j.state is JobState.HELD:
                return None
            if j.state is not JobState.PENDING:
                raise InvalidInput(f"job {j.id} is {j.state.value}; only a pending job can be held.")
            return j.transition(JobState.HELD)

        return self._act(caller, ids, "hold", change)

    def release(self, caller: Caller, ids: Sequence[JobRef]) -> list[dict[str, Any]]:
        def change(j: Job) -> Job | None:
            if j.state is JobState.PENDING:
                return None
            if j.state is not JobState.HELD:
                raise InvalidInput(f"job {j.id} is {j.state.value}; only a held job can be released.")
            return j.transition(JobState.PENDING)

        return self._act(caller, ids, "release", change)

    def requeue(self, caller: Caller, ids: Sequence[JobRef]) -> list[dict[str, Any]]:
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

    def housekeep(self) -> int:
        """Delete finished jobs older than the retention; returns how many went."""
        cutoff = self.clock() - self.cfg.retention_s
        total = 0
        while True:
            n = self.store.purge_finished(cutoff)
            total += n
            if n < 500:
                return total

    def usage(self, caller: Caller) -> dict[str, Any]:
        from gpuq.scheduler import fairshare

        now = self.clock()
        jobs = self.store.active_jobs()
        pending = [j for j in jobs if j.state in (JobState.PENDING, JobState.HELD)]
        running = [j for j in jobs if j.state is JobState.RUNNING]
        rows = fairshare.usage_report(self.store.usage_records(), pending, running, self.cfg.policy, now)
        return {"now": now, "users": rows, "accounting": self.store.accounting()}
