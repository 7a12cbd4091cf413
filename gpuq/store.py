"""The store: Redis is the one source of truth for jobs, nodes, GPU snapshots and usage.

Every state change is atomic: ``update`` reads a job under WATCH and writes it in
MULTI/EXEC, retrying when another writer got there first.  Connection failures
become :class:`gpuq.errors.StoreUnavailable`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from gpuq import keys
from gpuq.errors import JobNotFound, RecordSetAside, StoreUnavailable, SubmitLimitExceeded
from gpuq.gpus import NodeSnapshot, snapshot_from_dict, snapshot_to_dict
from gpuq.jobs.model import BadRecord, Job, JobState

log = logging.getLogger("gpuq.store")

EVENTS_KEPT = 200
#: The secondary indexes this version keeps; a store without them (older gpuq) gets them rebuilt.
INDEX_VERSION = "2"
#: Evidence kept of a record set aside (its raw text, cut to this many characters).
SET_ASIDE_RAW_CHARS = 65536
QUEUED_STATES = (JobState.PENDING, JobState.HELD)
#: Decoded records kept, keyed by their exact stored bytes (a Job is immutable, so an unchanged
#: record is never decoded twice: status and the scheduler's load stay cheap on a long queue).
DECODED_CACHE_MAX = 20000

# KEYS: the lease, the wake-up list.  The leader renews (or takes) the lease and takes the
# wake-ups queued so far in the same call: the cycle that follows sees every change they announce.
_LEAD_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return 0
end
redis.call('DEL', KEYS[2])
return 1
"""


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def connect(url: str) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs (no I/O until first use)."""
    try:
        # one immediate retry (a pooled connection to a restarted server reconnects), no back-off:
        # redis-py 8's default (3 retries, exponential back-off) stalls every call ~4 s while the
        # server is down; gpuq's callers retry at their own pace (supervisors, the agent's ticks)
        return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30,
                                    retry=Retry(NoBackoff(), 1))
    except ValueError as e:
        raise StoreUnavailable(f"Redis URL {redacted(url)!r} is not valid ({e}): use redis://HOST:PORT/DB or unix:///path/to/redis.sock.") from e


@contextmanager
def _wrap(what: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise StoreUnavailable(f"Redis is unreachable while {what} ({e}); check that the server is running.") from e
    except redis.ResponseError as e:
        raise StoreUnavailable(f"Redis refused a command while {what} ({e}).") from e


def job_not_found(job_id: int) -> JobNotFound:
    return JobNotFound(f"there is no job {job_id}; `gpuq status --all` lists the jobs.")


def _load(raw: bytes | str | None, env_raw: bytes | str | None = None) -> Job | None:
    """The job in a stored record (with its environment when ``env_raw`` is given);
    :class:`BadRecord` when it cannot be read."""
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        env = None if env_raw is None else json.loads(env_raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRecord(f"not valid JSON ({e})") from None
    if env is not None and isinstance(d, dict) and isinstance(d.get("spec"), dict):
        d["spec"]["env"] = env
    return Job.from_dict(d)


def _ids(members: Any) -> list[int]:
    """Job ids from a set; a member that is not a number (garbage in Redis) is skipped."""
    out = []
    for m in members:
        try:
            out.append(int(m))
        except (TypeError, ValueError):
            log.warning("ignoring %r in a job index: it is not a job id", m)
    return sorted(out)


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _dump(job: Job) -> str:
    """The job's record without its environment: that is kept under ``keys.job_env`` (see
    :func:`_dump_env`), so listing thousands of jobs does not read thousands of environments."""
    return json.dumps(job.to_dict(with_env=False), separators=(",", ":"))


def _dump_env(job: Job) -> str:
    return json.dumps(dict(job.spec.env), separators=(",", ":"))


def _json_dict(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored JSON object, or None (missing, or garbage: a record started afresh)."""
    if not raw:
        return None
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) else None


@dataclass(frozen=True)
class UsageCharge:
    """What the end of a run adds to ``user``'s fair-share record, in the transaction that records
    the end: ``charge(job as changed, the user's record or None, the leader's published config)``
    returns the new record, or None to leave it alone (a part of a job across nodes that is not
    the last to end)."""
    user: str
    charge: Callable[[Job, dict[str, Any] | None, dict[str, Any]], dict[str, Any] | None]


def _hold_ok(d: Mapping[str, Any]) -> bool:
    """A GPU-hold record as the dashboard sampler writes it (anything else is skipped)."""
    num = (int, float)
    return (isinstance(d.get("job"), int) and isinstance(d.get("user"), str) and isinstance(d.get("node"), str)
            and isinstance(d.get("start"), num) and isinstance(d.get("end"), num)
            and isinstance(d.get("gpus"), list) and all(isinstance(g, int) for g in d["gpus"]))


class Store:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._decoded: dict[bytes | str, Job] = {}
        self._lead = self.r.register_script(_LEAD_LUA)

    @classmethod
    def from_url(cls, url: str) -> "Store":
        return cls(connect(url))

    def ping(self) -> None:
        with _wrap("connecting"):
            self.r.ping()

    def store_id(self) -> str:
        """This store's random id, created by the first daemon that asks.  Job ids are unique only
        within one store, so whatever names a job outside Redis (its cgroup) carries this id too."""
        with _wrap("reading the store id"):
            self.r.set(keys.STORE_ID, secrets.token_hex(4), nx=True)
            raw = self.r.get(keys.STORE_ID)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    # ---- jobs ---------------------------------------------------------------------------------

    def submit(self, build: Callable[[int], Job], now: float, uid: int, max_queued: int | None = None) -> Job:
        """Allocate an id, build the job with it and store it, atomically.  With ``max_queued``, the
        job is refused (:class:`SubmitLimitExceeded`) when user ``uid`` already has that many pending
        or held jobs; the count and the insert are one WATCH/MULTI transaction, so concurrent
        submits cannot overshoot the limit."""
        queued = keys.user_queued(uid)
        with _wrap("submitting a job"):
            job_id = int(self.r.incr(keys.NEXT_JOB_ID))
            job = build(job_id)
            with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(queued)
                        have = int(pipe.scard(queued))
                        if max_queued is not None and have >= max_queued:
                            pipe.unwatch()
                            raise SubmitLimitExceeded(
                                f"you already have {have} jobs waiting and the limit is {max_queued}: "
                                "wait for some to start, or cancel some.")
                        pipe.multi()
                        pipe.set(keys.job(job.id), _dump(job))
                        pipe.set(keys.job_env(job.id), _dump_env(job))
                        pipe.sadd(keys.ACTIVE, job.id)
                        pipe.sadd(queued, job.id)
                        self._event(pipe, job.id, now, f"submitted by {job.owner.user}")
                        pipe.lpush(keys.WAKE, "submit")
                        pipe.execute()
                        return job
                    except redis.WatchError:
                        continue

    def queued_count(self, uid: int) -> int:
        with _wrap("counting waiting jobs"):
            return int(self.r.scard(keys.user_queued(uid)))

    def submit_many(self, count: int, build: Callable[[int], list[Job]], now: float, uid: int,
                    max_queued: int | None = None) -> list[Job]:
        """Allocate ``count`` consecutive ids (the first is passed to ``build``, which returns the
        jobs) and store them all in one transaction: a job array is one request, one fsync.  The
        per-user limit on waiting jobs applies to the whole batch, atomically as in :meth:`submit`."""
        queued = keys.user_queued(uid)
        with _wrap("submitting jobs"):
            first = int(self.r.incrby(keys.NEXT_JOB_ID, count)) - count + 1
            jobs = build(first)
            ids = [j.id for j in jobs]
            with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(queued)
                        have = int(pipe.scard(queued))
                        if max_queued is not None and have + count > max_queued:
                            pipe.unwatch()
                            raise SubmitLimitExceeded(
                                f"you have {have} jobs waiting; {count} more would pass the limit of {max_queued}: "
                                "submit a smaller array, or wait for some to start.")
                        pipe.multi()
                        pipe.mset({keys.job(j.id): _dump(j) for j in jobs})
                        pipe.mset({keys.job_env(j.id): _dump_env(j) for j in jobs})
                        pipe.sadd(keys.ACTIVE, *ids)
                        pipe.sadd(queued, *ids)
                        for j in jobs:
                            self._event(pipe, j.id, now, f"submitted by {j.owner.user}")
                        pipe.lpush(keys.WAKE, "submit")
                        pipe.execute()
                        return jobs
                    except redis.WatchError:
                        continue

    def get(self, job_id: int) -> Job:
        """One job in full, its environment included."""
        with _wrap("reading a job"):
            raw, env_raw = self.r.mget([keys.job(job_id), keys.job_env(job_id)])
        job = self._load_or_set_aside(job_id, raw, env_raw)
        if job is None:
            raise job_not_found(job_id)
        return job

    def get_many(self, ids: Sequence[int]) -> list[Job]:
        """The readable jobs among ``ids``, without their environments (:meth:`get` has it); an
        unreadable record is set aside, never raised."""
        if not ids:
            return []
        with _wrap("reading jobs"):
            raws = self.r.mget([keys.job(i) for i in ids])
        out = []
        for job_id, raw in zip(ids, raws):
            try:
                job = self._load_or_set_aside(job_id, raw)
            except RecordSetAside:
                continue
            if job is not None:
                out.append(job)
        return out

    def active_jobs(self) -> list[Job]:
        with _wrap("reading the queue"):
            ids = _ids(self.r.smembers(keys.ACTIVE))
        return self.get_many(ids)

    def running_on(self, node: str) -> list[Job]:
        """The jobs placed on ``node`` (read from a per-node index, not the whole queue)."""
        with _wrap("reading the node's jobs"):
            ids = _ids(self.r.smembers(keys.node_running(node)))
        return [j for j in self.get_many(ids) if j.placement is not None and node in j.placement.nodes]

    def finished_jobs(self, limit: int = 200) -> list[Job]:
        with _wrap("reading finished jobs"):
            ids = _ids(self.r.zrevrange(keys.FINISHED, 0, limit - 1))
        return sorted(self.get_many(ids), key=lambda j: -j.id)

    # ---- retention ---------------------------------------------------------------------------

    def purge_finished(self, ended_before: float, batch: int = 500) -> int:
        """Delete up to ``batch`` finished jobs that ended before ``ended_before`` (records and
        events), adding each to its user's aggregate accounting in the same transaction.
        Returns how many were deleted (call again while it returns ``batch``)."""
        with _wrap("deleting old finished jobs"):
            ids = _ids(self.r.zrangebyscore(keys.FINISHED, "-inf", ended_before, start=0, num=batch))
            if not ids:
                return 0
            jobs = self.get_many(ids)  # an unreadable one is set aside (out of FINISHED) instead
            with self.r.pipeline(transaction=True) as pipe:
                for job in jobs:
                    acct = keys.accounting(job.owner.user)
                    pipe.sadd(keys.ACCOUNTING_USERS, job.owner.user)
                    pipe.hincrby(acct, "jobs", 1)
                    pipe.hincrby(acct, f"jobs_{job.state.value}", 1)
                    pipe.hincrbyfloat(acct, "gpu_s", job.attained_gpu_s)
                    pipe.hincrbyfloat(acct, "last_run_s", job.last_run_s)
                    pipe.hincrby(acct, "requeues", job.requeues)
                    pipe.delete(keys.job(job.id), keys.job_env(job.id), keys.job_events(job.id))
                    pipe.zrem(keys.FINISHED, job.id)
                pipe.execute()
        return len(ids)

    def accounting(self) -> dict[str, dict[str, float]]:
        """Per user: the aggregate of the finished jobs deleted after retention."""
        with _wrap("reading accounting"):
            users = sorted(_text(u) for u in self.r.smembers(keys.ACCOUNTING_USERS))
            with self.r.pipeline(transaction=False) as pipe:
                for u in users:
                    pipe.hgetall(keys.accounting(u))
                rows = pipe.execute()
        out = {}
        for u, row in zip(users, rows):
            vals = {}
            for k, v in row.items():
                try:
                    vals[_text(k)] = float(v)
                except ValueError:
                    continue
            out[u] = vals
        return out

    # ---- records that cannot be read -----------------------------------------------------------

    def _load_or_set_aside(self, job_id: int, raw: bytes | str | None,
                           env_raw: bytes | str | None = None) -> Job | None:
        if env_raw is None and raw is not None:
            cached = self._decoded.get(raw)
            if cached is not None and cached.id == job_id:
                return cached
        try:
            job = _load(raw, env_raw)
        except BadRecord as e:
            assert raw is not None
            self.set_aside(job_id, raw, str(e))
            raise RecordSetAside(f"job {job_id}'s stored record could not be read ({e}), so it was set aside "
                                 "with its evidence; an administrator can inspect it with "
                                 "`gpuq status --json` as root.") from None
        if job is not None and job.id != job_id:
            self.set_aside(job_id, raw or "", f"the record under id {job_id} says it is job {job.id}")
            raise RecordSetAside(f"job {job_id}'s stored record names another job, so it was set aside.")
        if env_raw is None and raw is not None and job is not None:
            if len(self._decoded) >= DECODED_CACHE_MAX:
                self._decoded.clear()  # simple bound; the next reads refill it
            self._decoded[raw] = job
        return job

    def set_aside(self, job_id: int, raw: bytes | str, error: str, now: float | None = None) -> None:
        """Move an unreadable record out of every index, keeping its raw text and the error as
        evidence under ``gpuq:quarantine``.  A record that changed meanwhile is left alone."""
        import time

        key = keys.job(job_id)
        at = time.time() if now is None else now
        log.error("job %s: stored record cannot be read (%s); setting it aside: %.2000s", job_id, error, _text(raw))
        with _wrap("setting aside a bad record"):
            queued = list(self.r.scan_iter(match=keys.user_queued(0).replace(":0:", ":*:"), count=1000))
            with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        if pipe.get(key) != (raw.encode() if isinstance(raw, str) else raw):
                            pipe.unwatch()
                            return
                        nodes = pipe.smembers(keys.NODES)
                        pipe.multi()
                        pipe.hset(keys.QUARANTINE, str(job_id), json.dumps(
                            {"raw": _text(raw)[:SET_ASIDE_RAW_CHARS], "error": error[:1000], "at": at}))
                        pipe.delete(key, keys.job_env(job_id))
                        pipe.srem(keys.ACTIVE, job_id)
                        pipe.zrem(keys.FINISHED, job_id)
                        pipe.hdel(keys.REASONS, job_id)
                        for n in nodes:
                            pipe.srem(keys.node_running(_text(n)), job_id)
                        for q in queued:
                            pipe.srem(q, job_id)
                        self._event(pipe, job_id, at, f"record set aside: {error[:300]}")
                        pipe.execute()
                        return
                    except redis.WatchError:
                        continue

    def set_aside_records(self) -> list[dict[str, Any]]:
        """Records set aside: id, error, when, and the raw text (for root)."""
        with _wrap("reading set-aside records"):
            raw = self.r.hgetall(keys.QUARANTINE)
        out = []
        for k, v in raw.items():
            try:
                d = json.loads(v)
                out.append({"id": _text(k), "error": str(d.get("error", "")), "at": d.get("at"),
                            "raw": str(d.get("raw", ""))})
            except (ValueError, AttributeError):
                out.append({"id": _text(k), "error": "the evidence itself cannot be read", "at": None, "raw": _text(v)})
        return sorted(out, key=lambda d: d["id"])

    # ---- indexes -------------------------------------------------------------------------------

    def ensure_indexes(self) -> None:
        """Build the secondary indexes a store written by an older gpuq lacks (once)."""
        with _wrap("building indexes"):
            if _text(self.r.get(keys.INDEX_VERSION) or b"") == INDEX_VERSION:
                return
            queued: dict[int, list[int]] = {}
            for job in self.active_jobs():
                if job.state in QUEUED_STATES:
                    queued.setdefault(job.owner.uid, []).append(job.id)
            with self.r.pipeline(transaction=True) as pipe:
                for uid, ids in queued.items():
                    pipe.sadd(keys.user_queued(uid), *ids)
                pipe.set(keys.INDEX_VERSION, INDEX_VERSION)
                pipe.execute()

    def record_gpu_holds(self, holds: Sequence[Mapping[str, Any]], keep_after: float) -> None:
        """The dashboard's timeline: each running job's GPUs as last seen (``holds``: dicts with
        job, start, end, ...), one member per run; holds that ended before ``keep_after`` go."""
        with _wrap("recording GPU holds"):
            with self.r.pipeline(transaction=True) as pipe:
                for h in holds:
                    # one member per run (and per node: a job across nodes holds GPUs on each)
                    member = f"{h['job']}:{h['start']!r}" + (f":{h['node']}" if "part" in h else "")
                    pipe.hset(keys.GPU_HOLDS, member, json.dumps(dict(h)))
                    pipe.zadd(keys.GPU_HOLDS_BY_END, {member: h["end"]})
                old = self.r.zrangebyscore(keys.GPU_HOLDS_BY_END, "-inf", f"({keep_after}")
                if old:
                    pipe.hdel(keys.GPU_HOLDS, *old)
                    pipe.zrem(keys.GPU_HOLDS_BY_END, *old)
                pipe.execute()

    def gpu_holds(self) -> list[dict[str, Any]]:
        """Every recorded GPU hold (readable ones; a malformed entry is skipped)."""
        with _wrap("reading GPU holds"):
            raw = self.r.hvals(keys.GPU_HOLDS)
        out = []
        for v in raw:
            try:
                d = json.loads(v)
            except ValueError:
                continue
            if isinstance(d, dict) and _hold_ok(d):
                out.append(d)
        return out

    def finished_ids(self, since: float | None, until: float | None, offset: int, count: int) -> list[int]:
        """Ids of jobs that ended in [since, until), newest first (for `gpuq history`)."""
        hi = f"({until}" if until is not None else "+inf"
        lo = since if since is not None else "-inf"
        with _wrap("reading the history"):
            return [int(i) for i in self.r.zrevrangebyscore(keys.FINISHED, hi, lo, start=offset, num=count)]

    def states_of(self, ids: Sequence[int]) -> dict[int, JobState]:
        return {j.id: j.state for j in self.get_many(list(ids))}

    def update(
        self,
        job_id: int,
        change: Callable[[Job], Job | None],
        now: float,
        event: str | Callable[[Job], str] | None = None,
        also: Callable[[Pipeline, Job], None] | None = None,
        wake: bool = True,
        fence: tuple[str, str] | None = None,
        usage: UsageCharge | None = None,
    ) -> Job | None:
        """Apply ``change`` to the stored job atomically; returns the new job, or None when
        ``change`` returned None (nothing to do).  ``also`` adds commands to the same
        transaction (used to enqueue the RQ job together with the placement).  ``wake=False``
        does not wake the scheduler (for the scheduler's own changes).  ``fence=(key, value)`` applies
        the change only while ``key`` holds ``value`` (the scheduler's lease), checked atomically.
        ``usage`` charges a user's fair-share record in the same transaction (the end of a run:
        the scheduler, woken by it, never sees the end without its usage)."""
        key = keys.job(job_id)
        fenced = [fence[0]] if fence else []
        with _wrap("updating a job"):
            with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(key, *fenced, *([keys.USAGE, keys.CONFIG] if usage else []))
                        # the environment is written once at submit: read with the record, not watched
                        raw, env_raw, *rest = pipe.mget([key, keys.job_env(job_id), *fenced,
                                                         *([keys.CONFIG] if usage else [])])
                        if fence is not None:
                            holder = rest.pop(0)
                            if (holder.decode() if isinstance(holder, bytes) else holder) != fence[1]:
                                pipe.unwatch()
                                return None  # we lost the lease: another leader decides now
                        try:
                            old = _load(raw, env_raw)
                        except BadRecord:
                            pipe.unwatch()
                            self._load_or_set_aside(job_id, raw, env_raw)  # raises RecordSetAside
                            raise
                        if old is None:
                            raise job_not_found(job_id)
                        new = change(old)
                        if new is None:
                            pipe.unwatch()
                            return None
                        charged = None
                        if usage is not None:
                            try:
                                record = _json_dict(pipe.hget(keys.USAGE, usage.user))
                            except redis.ResponseError:  # garbage: the usage key is not a hash
                                log.error("the usage records (%s) are not a hash; the end of job %d is recorded "
                                          "without its usage (the scheduler sets them aside)", keys.USAGE, job_id)
                            else:
                                charged = usage.charge(new, record, _json_dict(rest[0]) or {})
                        pipe.multi()
                        pipe.set(key, _dump(new))
                        if env_raw is None and new.spec.env:  # a record from before environments had their key
                            pipe.set(keys.job_env(job_id), _dump_env(new))
                        if new.state.terminal and not old.state.terminal:
                            pipe.srem(keys.ACTIVE, job_id)
                            pipe.zadd(keys.FINISHED, {str(job_id): new.ended_at or now})
                            pipe.hdel(keys.REASONS, job_id)
                        was_queued, is_queued = old.state in QUEUED_STATES, new.state in QUEUED_STATES
                        if was_queued and not is_queued:
                            pipe.srem(keys.user_queued(old.owner.uid), job_id)
                        elif is_queued and not was_queued:
                            pipe.sadd(keys.user_queued(new.owner.uid), job_id)
                        old_nodes = set(old.placement.nodes) if old.placement is not None else set()
                        new_nodes = set(new.placement.nodes) if new.placement is not None else set()
                        for gone in old_nodes - new_nodes:  # a job across nodes is in each node's index
                            pipe.srem(keys.node_running(gone), job_id)
                        for came in new_nodes - old_nodes:
                            pipe.sadd(keys.node_running(came), job_id)
                        if charged is not None:
                            assert usage is not None
                            pipe.hset(keys.USAGE, usage.user, json.dumps(charged))
                        text = event(new) if callable(event) else event
                        if text:
                            self._event(pipe, job_id, now, text)
                        if also is not None:
                            also(pipe, new)
                        if wake and (new.state is not old.state or new.stop_request != old.stop_request):
                            pipe.lpush(keys.WAKE, "update")
                        pipe.execute()
                        return new
                    except redis.WatchError:
                        continue

    # ---- events (evidence kept per job) -------------------------------------------------------

    def _event(self, pipe: Pipeline, job_id: int, now: float, text: str) -> None:
        pipe.rpush(keys.job_events(job_id), json.dumps({"at": now, "text": text}))
        pipe.ltrim(keys.job_events(job_id), -EVENTS_KEPT, -1)

    def events(self, job_id: int) -> list[dict[str, Any]]:
        with _wrap("reading events"):
            raws = self.r.lrange(keys.job_events(job_id), 0, -1)
        out = []
        for e in raws:
            try:
                d = json.loads(e)
                out.append({"at": float(d["at"]), "text": str(d["text"])})
            except (ValueError, TypeError, KeyError):
                out.append({"at": None, "text": f"(unreadable event: {_text(e)[:200]})"})
        return out

    # ---- nodes --------------------------------------------------------------------------------

    def put_node(self, snap: NodeSnapshot, ttl_s: float) -> None:
        with _wrap("publishing the GPU snapshot"):
            with self.r.pipeline(transaction=True) as pipe:
                pipe.set(keys.node(snap.node), json.dumps(snapshot_to_dict(snap)), px=int(ttl_s * 1000))
                pipe.sadd(keys.NODES, snap.node)
                pipe.execute()

    def nodes(self) -> list[NodeSnapshot]:
        """Snapshots of the nodes that are alive (their snapshot has not expired)."""
        with _wrap("reading nodes"):
            names = sorted(n.decode() if isinstance(n, bytes) else n for n in self.r.smembers(keys.NODES))
            raws = self.r.mget([keys.node(n) for n in names]) if names else []
        out = []
        for name, r in zip(names, raws):
            if r is None:
                continue
            try:
                out.append(snapshot_from_dict(json.loads(r)))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                log.error("node %s: its GPU snapshot cannot be read (%s); ignoring it until it reports again", name, e)
        return out

    def drop_node(self, name: str) -> None:
        with _wrap("removing a node"):
            self.r.delete(keys.node(name))

    # ---- usage and reasons --------------------------------------------------------------------

    def usage_records(self) -> dict[str, dict[str, Any]]:
        with _wrap("reading usage"):
            try:
                raw = self.r.hgetall(keys.USAGE)
            except redis.ResponseError:  # garbage: the key is not a hash; set it aside, start afresh
                self.r.rename(keys.USAGE, keys.USAGE_SET_ASIDE)
                log.error("the usage records (%s) are not a hash and cannot be read: moved to %s; every user's "
                          "usage starts afresh", keys.USAGE, keys.USAGE_SET_ASIDE)
                return {}
        out = {}
        for k, v in raw.items():
            try:
                rec = json.loads(v)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                out[_text(k)] = rec
            else:
                log.error("usage record of %s cannot be read; counting it as no usage", _text(k))
        return out

    def set_reasons(self, reasons: Mapping[int, str]) -> None:
        with _wrap("publishing pending reasons"):
            with self.r.pipeline(transaction=True) as pipe:
                pipe.delete(keys.REASONS)
                if reasons:
                    pipe.hset(keys.REASONS, mapping={str(k): v for k, v in reasons.items()})
                pipe.execute()

    def publish_config(self, config: Mapping[str, Any]) -> None:
        """The leader's settings that workers need (the fair-share half-life)."""
        with _wrap("publishing the scheduler config"):
            self.r.set(keys.CONFIG, json.dumps(dict(config)))

    def overuse_warnings(self) -> dict[int, str]:
        """Running jobs that use more GPU memory than they reserved (written by the node agents)."""
        with _wrap("reading GPU memory over-use"):
            raw = self.r.hgetall(keys.OVERUSE)
        out = {}
        for k, v in raw.items():
            try:
                out[int(k)] = str(json.loads(v)["warning"])
            except (ValueError, KeyError, TypeError):
                continue  # a half-written or foreign entry: nothing to show
        return out

    def reasons(self) -> dict[int, str]:
        with _wrap("reading pending reasons"):
            raw = self.r.hgetall(keys.REASONS)
        return {i: _text(raw[k]) for k in raw for i in _ids([k])}

    # ---- scheduler coordination ---------------------------------------------------------------

    def wake(self, why: str = "wake") -> None:
        with _wrap("waking the scheduler"):
            self.r.lpush(keys.WAKE, why)

    def wait_wake(self, timeout_s: float) -> bool:
        """Block until something wakes the scheduler or ``timeout_s`` passes (the wake-ups left
        queued are taken by the next :meth:`lead_cycle`)."""
        with _wrap("waiting for work"):
            return self.r.blpop([keys.WAKE], timeout=max(timeout_s, 0.01)) is not None

    def lead_cycle(self, node: str, ttl_s: float) -> bool:
        """Before a scheduling cycle: renew (or take) the leader's lease for ``node`` and take the
        wake-ups queued so far, in one call.  False: another node leads (nothing is taken)."""
        with _wrap("electing the scheduler leader"):
            return bool(self._lead(keys=[keys.LEADER, keys.WAKE], args=[node, int(ttl_s * 1000)]))

    def leader(self) -> str | None:
        with _wrap("reading the leader"):
            v = self.r.get(keys.LEADER)
        return v.decode() if v else None

