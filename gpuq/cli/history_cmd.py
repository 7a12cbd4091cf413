"""`gpuq history`: finished jobs, the sacct of gpuq (table, --json or --csv)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import pwd
import time
from typing import Any, Sequence
from urllib.parse import urlencode

import typer

from gpuq.cli.client import Client
from gpuq.cli.queue_view import FINISHED
from gpuq.cli.render import safe, table
from gpuq.errors import InvalidInput
from gpuq.units import format_duration, parse_duration_s

COLUMNS = ("id", "name", "user", "state", "exit_code", "submitted_at", "ended_at", "wait_s", "run_s", "gpu_hours",
           "gpus")


def parse_when(text: str | None, what: str, now: float) -> float | None:
    """``2h``/``3d`` (that long ago), or a local date/time ``2026-11-20``, ``2026-11-20T14:00``."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        pass
    try:
        return now - parse_duration_s(text, what=what)
    except InvalidInput:
        raise InvalidInput(f"{what} {text!r} is neither a time ago (2h, 3d) nor a date (2026-11-20 or "
                           "2026-11-20T14:00).") from None


def run(client: Client, me: bool, users: Sequence[str] | None, state: str | None, since: str | None,
        until: str | None, limit: int, as_json: bool, as_csv: bool) -> None:
    now = time.time()
    who = list(users or [])
    if me:
        who.append(pwd.getpwuid(os.getuid()).pw_name)
    states = [s.strip() for s in (state or "").split(",") if s.strip()]
    bad = [s for s in states if s not in FINISHED]
    if bad:
        raise InvalidInput(f"--state {','.join(bad)} is not an end state: give {', '.join(sorted(FINISHED))}.")
    if limit < 1:
        raise InvalidInput("--limit must be 1 or more.")
    query: list[tuple[str, str]] = [("user", u) for u in who] + [("state", s) for s in states] + [("limit", str(limit))]
    for key, text in (("since", since), ("until", until)):
        t = parse_when(text, f"--{key}", now)
        if t is not None:
            query.append((key, repr(t)))
    rows = client.call("GET", "/v1/history?" + urlencode(query))["jobs"]
    if as_json:
        typer.echo(json.dumps(rows, indent=2, sort_keys=True))
    elif as_csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in COLUMNS])
        typer.echo(buf.getvalue(), nl=False)
    else:
        typer.echo(render(rows))


def _ts(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t).strftime("%m-%d %H:%M")


def render(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "No finished jobs match."
    body = [[str(r["id"]), safe(r["name"])[:24], safe(r["user"]), r["state"],
             "-" if r.get("exit_code") is None else str(r["exit_code"]), _ts(r["submitted_at"]), _ts(r["ended_at"]),
             format_duration(r["wait_s"]), format_duration(r["run_s"]), f"{r['gpu_hours']:.2f}"] for r in rows]
    return table(["ID", "NAME", "USER", "STATE", "EXIT", "SUBMITTED", "ENDED", "WAIT", "RUN", "GPU-H"], body)
