"""``--notify CMD``: a shell command run as the job's owner when the job ends.

Called once wherever a job reaches an end state: the supervisor when the process ended, the
daemon's API when a waiting job is cancelled, the scheduler loop when a dependency can never be
satisfied.  The command runs detached (its own session), as the owner (uid, gid, supplementary
groups), in the job's directory entered only after dropping to the owner, with the environment the
job was submitted with plus:

=========================  ==========================================================
``GPUQ_JOB_ID``            the job's id
``GPUQ_JOB_NAME``          its name as ``gpuq status`` shows it
``GPUQ_JOB_STATE``         completed, failed, cancelled or timeout
``GPUQ_JOB_EXIT_STATUS``   the exit status ("" when the job never ran or was killed)
``GPUQ_JOB_END_REASON``    why it ended, in words
``GPUQ_ARRAY_ID/INDEX``    for array jobs
=========================  ==========================================================

It gets ``NOTIFY_TIMEOUT_S`` to finish, then SIGKILL.  A notifier that cannot start is logged,
never raised: a notification must not change how a job ended.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import threading

from gpuq.jobs.model import Job

log = logging.getLogger("gpuq.notify")
NOTIFY_TIMEOUT_S = 60.0
#: Enters the job's directory as the owner (after the privilege drop), then runs the command.
_SHELL = 'cd -- "$1" 2>/dev/null || cd /; exec /bin/sh -c "$2"'


def notify_env(job: Job) -> dict[str, str]:
    env = dict(job.spec.env)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(GPUQ_JOB_ID=str(job.id), GPUQ_JOB_NAME=job.display_name, GPUQ_JOB_STATE=job.state.value,
               GPUQ_JOB_EXIT_STATUS="" if job.exit_code is None else str(job.exit_code),
               GPUQ_JOB_END_REASON=job.end_reason)
    if job.spec.array is not None:
        env.update(GPUQ_ARRAY_ID=str(job.spec.array.array_id), GPUQ_ARRAY_INDEX=str(job.spec.array.index))
    return env


def notify_job_end(job: Job | None) -> None:
    """Start the job's notifier if it has one and has ended (no-op otherwise)."""
    if job is None or not job.spec.notify or not job.state.terminal:
        return
    kwargs: dict = {}
    if os.geteuid() == 0:
        if job.owner.uid == 0:
            pass
        else:
            try:
                pwd.getpwuid(job.owner.uid)
            except KeyError:
                log.warning("job %s: not running its notifier: its owner uid %s no longer exists", job.id, job.owner.uid)
                return
            kwargs.update(user=job.owner.uid, group=job.owner.gid, extra_groups=list(job.owner.groups))
    elif os.geteuid() != job.owner.uid:
        return  # a personal daemon runs only its own user's commands
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", _SHELL, "gpuq-notify", job.spec.cwd, job.spec.notify],
                                cwd="/", env=notify_env(job), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True, **kwargs)
    except OSError as e:
        log.warning("job %s: its notifier could not start (%s)", job.id, e)
        return
    threading.Thread(target=_reap, args=(proc, job.id), name=f"gpuq-notify-{job.id}", daemon=True).start()


def _reap(proc: subprocess.Popen, job_id: int) -> None:
    """Wait for the notifier (no zombie left in a long-lived daemon); kill it past the timeout."""
    try:
        rc = proc.wait(NOTIFY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        rc = proc.wait()
    if rc:
        log.info("job %s: its notifier exited %s", job_id, rc)
