"""What `gpuq status`, `logs`, `wait` and the change commands do with the daemon's answers."""

from __future__ import annotations

import json
import os
import pwd
import sys
import time
from typing import Any, NamedTuple, Sequence

import typer

from gpuq.cli import queue_view
from gpuq.cli.client import Client
from gpuq.errors import InvalidInput

TERMINAL = queue_view.FINISHED


class Filters(NamedTuple):
    users: set[str] | None
    states: set[str] | None
    finished: bool

    @classmethod
    def from_options(cls, me: bool, users: Sequence[str] | None, state: str | None, all_: bool) -> "Filters":
        who = set(users or [])
        if me:
            who.add(pwd.getpwuid(os.getuid()).pw_name)
        try:
            states = queue_view.parse_states(state)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        return cls(who or None, states, all_ or bool(states and states & TERMINAL))


#: Another user's waiting jobs listed one by one in the default view; more are one summary line.
OTHERS_LISTED = 10


def _status(client: Client, f: Filters, brief: bool = False) -> dict[str, Any]:
    """The daemon's status.  ``brief`` (plain `gpuq status`, no filter): the bounded view, in which
    the waiting jobs of another user who has more than OTHERS_LISTED are one summary line."""
    if brief and f == Filters(None, None, False):
        return client.call("GET", f"/v1/status?others={OTHERS_LISTED}")
    st = client.call("GET", "/v1/status" + ("?all=1" if f.finished else ""))
    st["jobs"] = queue_view.select(st["jobs"], f.users, f.states)
    return st


def queue_json(client: Client, f: Filters) -> dict[str, Any]:
    return _status(client, f)


def queue_text(client: Client, f: Filters, expand: bool) -> str:
    from gpuq.cli.render import gpus_table, notices

    st = _status(client, f, brief=True)
    text = queue_view.jobs_table(st["jobs"], multi_node=len(st["nodes"]) > 1, expand=expand,
                                 others_waiting=st.get("others_waiting") or ()) + "\n\n" + gpus_table(st["nodes"])
    return text + ("\n\n" + notices(st) if notices(st) else "")


def lookup(client: Client, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The jobs these ids name (an array id: all its jobs; ``17_3``: one element)."""
    return client.call("POST", "/v1/jobs/lookup", {"ids": list(ids)})["jobs"]


def show_one(client: Client, job_id: str, as_json: bool) -> None:
    from gpuq.cli.render import job_detail

    if "_" in job_id:
        job_id = str(lookup(client, [job_id])[0]["id"])
    job = client.call("GET", f"/v1/jobs/{job_id}")
    arr = job["spec"].get("array")
    if arr is not None and arr["array_id"] == job["id"]:
        members = lookup(client, [job_id])
        if as_json:
            typer.echo(json.dumps({"array_id": job["id"], "jobs": members}, indent=2, sort_keys=True))
            return
        limit = f", at most {arr['limit']} at once" if arr.get("limit") else ""
        typer.echo(f"Array {job['id']}: {len(members)} jobs{limit} (element 0 is job {job['id']}; "
                   f"`gpuq status {job['id']}_INDEX` shows one)")
        typer.echo(queue_view.jobs_table(members, expand=True))
        return
    typer.echo(json.dumps(job, indent=2, sort_keys=True) if as_json else job_detail(job))


def print_log(client: Client, job_id: str, follow: bool, tail: int | None) -> None:
    if "_" in job_id:
        job_id = str(lookup(client, [job_id])[0]["id"])
    jid = int(job_id)
    if tail is not None and tail < 0:
        raise InvalidInput("--tail takes a number of lines, 0 or more.")
    offset = 0
    if tail is not None:
        offset = int(client.call("GET", f"/v1/jobs/{jid}/log-tail?lines={tail}")["offset"])
    out = sys.stdout.buffer
    while True:
        data, offset, state = client.log_chunk(jid, offset)
        if data:
            out.write(data)
            out.flush()
            continue
        if not follow or state in TERMINAL:
            return
        time.sleep(0.3)


def exit_status(job: dict[str, Any]) -> int:
    """What `gpuq wait` exits with for one job: 0 completed, the exit code for failed (1 if it was
    killed by a signal), 124 timeout (as timeout(1)), 125 cancelled."""
    state = job["state"]
    if state == "completed":
        return 0
    if state == "timeout":
        return 124
    if state == "cancelled":
        return 125
    code = job.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def wait_for(client: Client, ids: Sequence[str], timeout: str | None, quiet: bool, poll_s: float = 0.5) -> int:
    from gpuq.units import parse_duration_s

    deadline = None if timeout is None else time.monotonic() + parse_duration_s(timeout, what="--timeout")
    jobs = lookup(client, ids)
    order = [j["id"] for j in jobs]
    ended: dict[int, dict[str, Any]] = {}
    while True:
        for j in jobs:
            if j["state"] in TERMINAL and j["id"] not in ended:
                ended[j["id"]] = j
                if not quiet:
                    code = f" (exit {j['exit_code']})" if j.get("exit_code") is not None else ""
                    typer.echo(f"job {j['id']}: {j['state']}{code}")
        left = [i for i in order if i not in ended]
        if not left:
            break
        if deadline is not None and time.monotonic() > deadline:
            if not quiet:
                typer.echo(f"gpuq wait: gave up after {timeout}; {len(left)} job(s) still active.", err=True)
            return 124
        time.sleep(poll_s)
        jobs = lookup(client, [str(i) for i in left])
    for i in order:
        code = exit_status(ended[i])
        if code:
            return code
    return 0


def change_message(r: dict[str, Any], verb: str) -> str:
    """What a change did, in terms of the state the job is in now (or will end in)."""
    state = r["state"]
    if r.get("stopping"):
        kind = r.get("stop_kind")
        if kind == "cancel":
            return "stopping (SIGTERM, then SIGKILL after the grace period); it will end cancelled"
        if kind == "requeue":
            return "stopping gracefully; it will be pending again and resume from its checkpoint"
        return f"stopping ({kind}); still running"
    if not r.get("changed", True):
        return f"already {state}"
    if verb == "release":
        return "pending (released)"
    if verb == "requeue":
        return f"{state} (requeued before it started)"
    return state


def report_changes(results: Sequence[dict[str, Any]], verb: str) -> bool:
    """Print one line per job, or one per run of consecutive jobs with the same outcome (arrays)."""
    ok = True
    runs: list[tuple[int, int, str]] = []
    for r in results:
        if not r["ok"]:
            ok = False
            typer.echo(f"gpuq: {r['error']}", err=True)
            continue
        msg = change_message(r, verb)
        if runs and runs[-1][2] == msg and runs[-1][1] + 1 == r["id"]:
            runs[-1] = (runs[-1][0], r["id"], msg)
        else:
            runs.append((r["id"], r["id"], msg))
    for lo, hi, msg in runs:
        typer.echo(f"job {lo}: {msg}" if lo == hi else f"jobs {lo}-{hi}: {msg}")
    return ok
