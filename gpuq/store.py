"""The store: Redis is the one source of truth for jobs, nodes, GPU snapshots and usage.

Every state change is atomic: ``update`` reads a job under WATCH and writes it in
MULTI/EXEC, retrying when another writer got there first.  Connection failures
become :class:`gpuq.errors.StoreUnavailable`.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import redis
from redis.client import Pipeline

from gpuq import keys
from gpuq.errors import JobNotFound, StoreUnavailable
from gpuq.gpus import NodeSnapshot, snapshot_from_dict, snapshot_to_dict
from gpuq.jobs.model import Job, JobState

EVENTS_KEPT = 200

_LEADER_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def connect(url: str) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs (no I/O until first use)."""
    try:
        return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)
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


def _load(raw: bytes | str | None) -> Job | None:
    if raw is None:
        return None
    return Job.from_dict(json.loads(raw))


def _dump(job: Job) -> str:
    return json.dumps(job.to_dict(), separators=(",", ":"))


class Store:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._leader = self.r.register_script(_LEADER_LUA)

    @classmethod
    def from_url(cls, url: str) -> "Store":
        return cls(connect(url))

    def ping(self) -> None:
        with _wrap("connecting"):
            self.r.ping()

    # ---- jobs ---------------------------------------------------------------------------------

    def submit(self, build: Callable[[int], Job], now: float) -> Job:
        """Allocate an id, build the job with it and store it, atomically."""
        with _wrap("submitting a job"):
            job_id = int(self.r.incr(keys.NEXT_JOB_ID))
            job = build(job_id)
            with self.r.pipeline(transaction=True) as pipe:
                pipe.set(keys.job(job.id), _dump(job))
                pipe.sadd(keys.ACTIVE, job.id)
                self._event(pipe, job.id, now, f"submitted by {job.owner.user}")
                pipe.lpush(keys.WAKE, "submit")
                pipe.execute()
        return job

    def submit_many(self, count: int, build: Callable[[int], list[Job]], now: float) -> list[Job]:
        """Allocate ``count`` consecutive ids (the first is passed to ``build``, which returns the
        jobs) and store them all in one transaction: a job array is one request, one fsync."""
        with _wrap("submitting jobs"):
            first = int(self.r.incrby(keys.NEXT_JOB_ID, count)) - count + 1
            jobs = build(first)
            with self.r.pipeline(transaction=True) as pipe:
                pipe.mset({keys.job(j.id): _dump(j) for j in jobs})
                pipe.sadd(keys.ACTIVE, *[j.id for j in jobs])
                for j in jobs:
                    self._event(pipe, j.id, now, f"submitted by {j.owner.user}")
                pipe.lpush(keys.WAKE, "submit")
                pipe.execute()
        return jobs

    def get(self, job_id: int) -> Job:
        with _wrap("reading a job"):
            job = _load(self.r.get(keys.job(job_id)))
        if job is None:
            raise job_not_found(job_id)
        return job

    def get_many(self, ids: Sequence[int]) -> list[Job]:
        if not ids:
            return []
        with _wrap("reading jobs"):
            raws = self.r.mget([keys.job(i) for i in ids])
        return [j for j in (_load(r) for r in raws) if j is not None]

    def active_jobs(self) -> list[Job]:
        with _wrap("reading the queue"):
            ids = sorted(int(i) for i in self.r.smembers(keys.ACTIVE))
        return self.get_many(ids)

    def running_on(self, node: str) -> list[Job]:
        """The jobs placed on ``node`` (read from a per-node index, not the whole queue)."""
        with _wrap("reading the node's jobs"):
            ids = sorted(int(i) for i in self.r.smembers(keys.node_running(node)))
        return [j for j in self.get_many(ids) if j.placement is not None and j.placement.node == node]

    def finished_jobs(self, limit: int = 200) -> list[Job]:
        with _wrap("reading finished jobs"):
            ids = [int(i) for i in self.r.zrevrange(keys.FINISHED, 0, limit - 1)]
        return self.get_many(ids)

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
    ) -> Job | None:
        """Apply ``change`` to the stored job atomically; returns the new job, or None when
        ``change`` returned None (nothing to do).  ``also`` adds commands to the same
        transaction (used to enqueue the RQ job together with the placement).  ``wake=False``
        does not wake the scheduler (for the scheduler's own changes).  ``fence=(key, value)`` applies
        the change only while ``key`` holds ``value`` (the scheduler's lease), checked atomically."""
        key = keys.job(job_id)
        with _wrap("updating a job"):
            with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(key, *([fence[0]] if fence else []))
                        if fence is not None:
                            holder = pipe.get(fence[0])
                            if (holder.decode() if isinstance(holder, bytes) else holder) != fence[1]:
                                pipe.unwatch()
                                return None  # we lost the lease: another leader decides now
                        old = _load(pipe.get(key))
                        if old is None:
                            raise job_not_found(job_id)
                        new = change(old)
                        if new is None:
                            pipe.unwatch()
                            return None
                        pipe.multi()
                        pipe.set(key, _dump(new))
                        if new.state.terminal and not old.state.terminal:
                            pipe.srem(keys.ACTIVE, job_id)
                            pipe.zadd(keys.FINISHED, {str(job_id): new.ended_at or now})
                            pipe.hdel(keys.REASONS, job_id)
                        old_node = old.placement.node if old.placement is not None else None
                        new_node = new.placement.node if new.placement is not None else None
                        if old_node != new_node:
                            if old_node is not None:
                                pipe.srem(keys.node_running(old_node), job_id)
                            if new_node is not None:
                                pipe.sadd(keys.node_running(new_node), job_id)
                        if wake and (new.state is not old.state or new.stop_request != old.stop_request):
                            pipe.lpush(keys.WAKE, "update")
                        text = event(new) if callable(event) else event
                        if text:
                            self._event(pipe, job_id, now, text)
                        if also is not None:
                            also(pipe, new)
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
            return [json.loads(e) for e in self.r.lrange(keys.job_events(job_id), 0, -1)]

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
        return [snapshot_from_dict(json.loads(r)) for r in raws if r is not None]

    def drop_node(self, name: str) -> None:
        with _wrap("removing a node"):
            self.r.delete(keys.node(name))

    # ---- usage and reasons --------------------------------------------------------------------

    def usage_records(self) -> dict[str, dict[str, Any]]:
        with _wrap("reading usage"):
            raw = self.r.hgetall(keys.USAGE)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def update_usage(self, user: str, change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> None:
        with _wrap("recording usage"):
            with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(keys.USAGE)
                        raw = pipe.hget(keys.USAGE, user)
                        new = change(json.loads(raw) if raw else None)
                        pipe.multi()
                        pipe.hset(keys.USAGE, user, json.dumps(new))
                        pipe.execute()
                        return
                    except redis.WatchError:
                        continue

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

    def published_config(self) -> dict[str, Any]:
        with _wrap("reading the scheduler config"):
            raw = self.r.get(keys.CONFIG)
        try:
            d = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return d if isinstance(d, dict) else {}

    def reasons(self) -> dict[int, str]:
        with _wrap("reading pending reasons"):
            return {int(k): v.decode() for k, v in self.r.hgetall(keys.REASONS).items()}

    # ---- scheduler coordination ---------------------------------------------------------------

    def wake(self, why: str = "wake") -> None:
        with _wrap("waking the scheduler"):
            self.r.lpush(keys.WAKE, why)

    def wait_wake(self, timeout_s: float) -> bool:
        """Block until something wakes the scheduler or ``timeout_s`` passes; drains the list."""
        with _wrap("waiting for work"):
            got = self.r.blpop([keys.WAKE], timeout=max(timeout_s, 0.01))
            if got is not None:
                self.r.delete(keys.WAKE)
        return got is not None

    def hold_leadership(self, node: str, ttl_s: float) -> bool:
        with _wrap("electing the scheduler leader"):
            return bool(self._leader(keys=[keys.LEADER], args=[node, int(ttl_s * 1000)]))

    def leader(self) -> str | None:
        with _wrap("reading the leader"):
            v = self.r.get(keys.LEADER)
        return v.decode() if v else None

