"""Every Redis key gpuq uses, in one place."""

from __future__ import annotations

PREFIX = "gpuq:"

NEXT_JOB_ID = PREFIX + "next_job_id"  # INCR counter
ACTIVE = PREFIX + "jobs:active"  # set of ids: pending, held, running
FINISHED = PREFIX + "jobs:finished"  # zset id -> ended_at
NODES = PREFIX + "nodes"  # set of node names that ever reported
USAGE = PREFIX + "usage"  # hash user -> JSON usage record
USAGE_SET_ASIDE = PREFIX + "usage:set-aside"  # where a usage key that is not a hash is moved, as evidence
REASONS = PREFIX + "reasons"  # hash job id -> why it waits (rewritten each cycle)
WAKE = PREFIX + "wake"  # list; LPUSH to wake the scheduler at once
LEADER = PREFIX + "leader"  # node name of the scheduler leader (expiring)
CONFIG = PREFIX + "config"  # JSON of the leader's scheduling config
QUARANTINE = PREFIX + "quarantine"  # hash job id -> JSON {raw, error, at}: records that could not be read
INDEX_VERSION = PREFIX + "index_version"  # which secondary indexes exist (rebuilt when missing)
ACCOUNTING_USERS = PREFIX + "accounting:users"  # set of users with aggregate accounting
STORE_ID = PREFIX + "store_id"  # random id of this store, set once: names what belongs to it outside Redis (cgroups)


def job(job_id: int) -> str:
    return f"{PREFIX}job:{job_id}"


def job_env(job_id: int) -> str:
    """A job's environment (JSON), apart from its record: lists of jobs never read it."""
    return f"{PREFIX}job:{job_id}:env"


def job_events(job_id: int) -> str:
    return f"{PREFIX}job:{job_id}:events"


def job_heartbeat(job_id: int) -> str:
    """Written by a running job's supervisor every few seconds, with a TTL: {pid, node, token, at}."""
    return f"{PREFIX}job:{job_id}:heartbeat"


OVERUSE = PREFIX + "overuse"  # hash job id -> JSON {since, used_mib, reserved_mib, gpu}: GPU memory over-use


def user_queued(uid: int) -> str:
    """Set of ids of one user's pending and held jobs (the per-user pending limit counts it)."""
    return f"{PREFIX}user:{uid}:queued"


def accounting(user: str) -> str:
    """Hash: aggregate accounting of one user's jobs whose records were deleted after retention."""
    return f"{PREFIX}accounting:{user}"


def node(name: str) -> str:
    """Latest GPU snapshot of a node (expires when the node stops reporting)."""
    return f"{PREFIX}node:{name}"


def node_running(name: str) -> str:
    """Set of ids of the jobs placed on a node (maintained with every job update)."""
    return f"{PREFIX}node:{name}:running"


def rq_queue_name(node_name: str) -> str:
    """The RQ queue that a node's workers serve."""
    return f"gpuq-node-{node_name}"


#: Who held which GPU (the dashboard's 24-hour timeline): hash "<job id>:<run start>" -> JSON
#: {job, user, node, gpus, start, end}; and a zset of the same members by their last-seen end,
#: for pruning what is older than a day.
GPU_HOLDS = PREFIX + "gpu_holds"
GPU_HOLDS_BY_END = PREFIX + "gpu_holds:by_end"
