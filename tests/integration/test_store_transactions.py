"""Store transactions that carry more than one change (real redis-server): the end of a run with
its user's usage and the scheduler's wake-up; the leader's lease with the wake-ups it takes."""

from __future__ import annotations

import json

import pytest

from gpuq import keys
from gpuq.jobs.model import Job, JobSpec, JobState, Owner, Placement, Resources
from gpuq.store import Store, UsageCharge

pytestmark = pytest.mark.integration

OWNER = Owner(uid=1000, gid=1000, user="alice", groups=(1000,))
PLACED = Placement(node="n", gpu_uuids=("GPU-a",), gpu_indices=(0,), reserved_mib=(0,), limit_mib=(None,),
                   gpu_total_mib=(1000,))


def _running(store: Store) -> Job:
    job = store.submit(lambda i: Job(id=i, spec=JobSpec(argv=("true",), cwd="/", resources=Resources(gpus=1)),
                                     owner=OWNER, state=JobState.PENDING, submitted_at=100.0), 100.0, OWNER.uid)
    return store.update(job.id, lambda j: j.transition(JobState.RUNNING, placement=PLACED, placed_at=101.0,
                                                        started_at=102.0), 102.0, wake=False)


def _charge_seen(calls: list):
    def charge(j: Job, record: dict | None, config: dict) -> dict | None:
        calls.append((j.state, record, config))
        if j.state is JobState.RUNNING:
            return None
        return {"gpu_s": (record or {}).get("gpu_s", 0.0) + 10.0, "at": 110.0}
    return charge


def test_the_end_of_a_run_records_usage_and_wakes_the_scheduler_in_its_transaction(redis_server):
    store = Store.from_url(redis_server)
    job = _running(store)
    store.r.delete(keys.WAKE)
    store.r.hset(keys.USAGE, "alice", json.dumps({"gpu_s": 5.0, "at": 90.0}))
    store.r.set(keys.CONFIG, json.dumps({"half_life_s": 3600}))
    calls: list = []

    done = store.update(job.id, lambda j: j.transition(JobState.COMPLETED, ended_at=110.0), 110.0,
                        usage=UsageCharge("alice", _charge_seen(calls)))

    assert done is not None and done.state is JobState.COMPLETED
    assert calls == [(JobState.COMPLETED, {"gpu_s": 5.0, "at": 90.0}, {"half_life_s": 3600})]
    assert json.loads(store.r.hget(keys.USAGE, "alice")) == {"gpu_s": 15.0, "at": 110.0}
    assert store.r.llen(keys.WAKE) == 1


def test_garbage_in_the_usage_record_or_config_starts_afresh_and_loses_no_end(redis_server):
    store = Store.from_url(redis_server)
    job = _running(store)
    store.r.hset(keys.USAGE, "alice", b"\xff{not json")
    store.r.set(keys.CONFIG, "[1, 2]")
    calls: list = []

    done = store.update(job.id, lambda j: j.transition(JobState.FAILED, ended_at=110.0, exit_code=1), 110.0,
                        usage=UsageCharge("alice", _charge_seen(calls)))

    assert done is not None and done.state is JobState.FAILED
    assert calls == [(JobState.FAILED, None, {})]
    assert json.loads(store.r.hget(keys.USAGE, "alice")) == {"gpu_s": 10.0, "at": 110.0}


def test_a_usage_change_between_read_and_write_is_retried_never_lost(redis_server):
    """The usage hash is watched: another run's usage written between this transaction's read and
    its EXEC makes it start again, so both charges count."""
    store = Store.from_url(redis_server)
    job = _running(store)
    other = Store.from_url(redis_server)
    calls: list = []
    charge = _charge_seen(calls)

    def racing(j: Job, record: dict | None, config: dict) -> dict | None:
        if len(calls) == 0:  # first attempt: another supervisor records its run meanwhile
            other.r.hset(keys.USAGE, "alice", json.dumps({"gpu_s": 100.0, "at": 105.0}))
        return charge(j, record, config)

    store.update(job.id, lambda j: j.transition(JobState.COMPLETED, ended_at=110.0), 110.0,
                 usage=UsageCharge("alice", racing))

    assert len(calls) == 2 and calls[1][1] == {"gpu_s": 100.0, "at": 105.0}
    assert json.loads(store.r.hget(keys.USAGE, "alice"))["gpu_s"] == 110.0


def test_a_part_that_is_not_the_last_charges_nothing(redis_server):
    store = Store.from_url(redis_server)
    job = _running(store)
    calls: list = []

    store.update(job.id, lambda j: j.with_changes(progress=None), 110.0, usage=UsageCharge("alice", _charge_seen(calls)))

    assert calls and calls[0][0] is JobState.RUNNING
    assert store.r.hget(keys.USAGE, "alice") is None


def test_the_leader_takes_the_queued_wake_ups_and_a_follower_leaves_them(redis_server):
    store = Store.from_url(redis_server)
    store.r.delete(keys.WAKE)
    store.r.lpush(keys.WAKE, "submit", "update")

    assert store.lead_cycle("node-a", 5.0) is True
    assert store.r.llen(keys.WAKE) == 0  # the cycle that follows sees what they announced

    store.r.lpush(keys.WAKE, "update")
    assert store.lead_cycle("node-b", 5.0) is False
    assert store.r.llen(keys.WAKE) == 1  # never taken by a node that does not schedule
    assert store.leader() == "node-a"
    assert store.wait_wake(0.01) is True


def test_a_usage_key_that_is_not_a_hash_never_blocks_an_end_and_is_set_aside(redis_server):
    store = Store.from_url(redis_server)
    job = _running(store)
    store.r.set(keys.USAGE, "garbage")
    calls: list = []

    done = store.update(job.id, lambda j: j.transition(JobState.COMPLETED, ended_at=110.0), 110.0,
                        usage=UsageCharge("alice", _charge_seen(calls)))

    assert done is not None and done.state is JobState.COMPLETED  # recorded, without its usage
    assert calls == [] and store.get(job.id).state is JobState.COMPLETED
    assert store.usage_records() == {}  # the scheduler's read sets the garbage aside, as evidence
    assert store.r.get(keys.USAGE_SET_ASIDE) == b"garbage" and not store.r.exists(keys.USAGE)

    second = _running(store)
    store.update(second.id, lambda j: j.transition(JobState.COMPLETED, ended_at=120.0), 120.0,
                 usage=UsageCharge("alice", _charge_seen(calls)))
    assert json.loads(store.r.hget(keys.USAGE, "alice")) == {"gpu_s": 10.0, "at": 110.0}
