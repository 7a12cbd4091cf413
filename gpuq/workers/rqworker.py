"""One RQ worker process serving this node's queue (started and supervised by the daemon).

    GPUQ_WORKER_REDIS_URL=... python -m gpuq.workers.rqworker QUEUE_NAME

The Redis URL comes through the environment, never the command line: a URL may hold the shared
server's password, and every local user can read command lines (only the owner can read environ).

It runs with the JSON serializer.  Each RQ job is :func:`gpuq.workers.launcher.run_job`: claim
a placement and fork the job's detached supervisor (milliseconds), so a few workers serve any
number of running jobs.  It runs in the worker process itself (RQ's ``SimpleWorker``): a work
horse forked per launch would only add a fork and RQ's horse monitoring to every start.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """If the daemon dies, this worker gets SIGTERM (a warm shutdown: a running job is finished first)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        sys.exit(0)


def main(argv: list[str]) -> int:
    url = os.environ.get("GPUQ_WORKER_REDIS_URL")
    if len(argv) != 1 or not url:
        print("usage: GPUQ_WORKER_REDIS_URL=URL python -m gpuq.workers.rqworker QUEUE_NAME", file=sys.stderr)
        return 2
    _die_with_parent()
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    import gpuq.workers.launcher  # noqa: F401  (imported once here; each supervisor forked from us inherits it)
    import gpuq.workers.supervisor  # noqa: F401
    from gpuq.store import connect

    (queue_name,) = argv
    conn = connect(url)
    queue = Queue(queue_name, connection=conn, serializer=JSONSerializer)
    name = f"{os.environ.get('GPUQ_NODE', 'node')}.{os.getpid()}"
    worker = SimpleWorker([queue], connection=conn, serializer=JSONSerializer, name=name)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    gpuq.workers.launcher.keep_spare(gpuq.workers.launcher.WorkerContext.from_env())
    worker.work(logging_level="WARNING", with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
