"""The ``gpuq`` command line.  It talks only to the daemon's socket; it never imports
redis, rq or tensorflow, so it starts fast."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from gpuq.cli.client import Client
from gpuq.errors import GpuqError
from gpuq.paths import Paths, default_home

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="gpuq: a GPU job queue for shared lab servers.  GPUQ_HOME selects the daemon's state directory.",
)


def _client() -> Client:
    return Client(Paths(default_home()).socket)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True))


def _ids(ids: List[str]) -> list[int]:
    out = []
    for i in ids:
        try:
            out.append(int(i))
        except ValueError:
            raise GpuqError(f"{i!r} is not a job id: job ids are whole numbers (see `gpuq status`).") from None
    return out


def _report(results: list[dict[str, Any]], verb: str) -> None:
    failed = False
    for r in results:
        if r["ok"]:
            extra = " (stopping: SIGTERM, then SIGKILL after the grace period)" if r.get("stopping") else ""
            typer.echo(f"job {r['id']}: {verb} -> {r['state']}{extra}")
        else:
            failed = True
            typer.echo(f"gpuq: {r['error']}", err=True)
    if failed:
        raise typer.Exit(1)


# ---- submit ------------------------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def submit(
    command: List[str] = typer.Argument(..., metavar="SCRIPT_OR_COMMAND [ARGS]...",
                                        help="train.py runs with the first python3 on your PATH; anything else "
                                             "runs as given (use -- before a command with options)."),
    gpus: int = typer.Option(1, "--gpus", "-g", help="GPUs on one node (0 = CPU only)."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", "-m", help="memory per GPU, like 10GiB or 512MiB."),
    fraction: Optional[str] = typer.Option(None, "--fraction", help="share of each GPU, like 0.25."),
    exclusive: bool = typer.Option(False, "--exclusive", help="no other job on its GPUs."),
    name: Optional[str] = typer.Option(None, "--name", "-n"),
    priority: int = typer.Option(0, "--priority", "-p"),
    after: Optional[List[str]] = typer.Option(None, "--after", help="start once this job completed successfully."),
    time_limit: Optional[str] = typer.Option(None, "--time-limit", "-t", help="like 2h, 90m, 01:30:00."),
    checkpointable: bool = typer.Option(False, "--checkpointable",
                                        help="the job resumes from its checkpoints: it may be requeued/preempted."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the job id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Queue a script or command; prints the job id and returns at once."""
    if command and command[0] == "--":
        command = command[1:]
    body = {
        "argv": command, "cwd": os.getcwd(), "env": dict(os.environ), "gpus": gpus, "gpu_mem": gpu_mem,
        "fraction": fraction, "exclusive": exclusive, "name": name, "priority": priority,
        "after": _ids(after or []), "time_limit": time_limit, "checkpointable": checkpointable,
    }
    res = _client().call("POST", "/v1/jobs", body)
    for note in res.get("notes", []):
        typer.echo(f"gpuq: note: {note}", err=True)
    if as_json:
        _print_json(res["job"])
    elif quiet:
        typer.echo(res["id"])
    else:
        typer.echo(f"Submitted job {res['id']}")


# ---- status ------------------------------------------------------------------------------------


@app.command()
def status(
    job_id: Optional[str] = typer.Argument(None, help="show one job in full"),
    all_: bool = typer.Option(False, "--all", "-a", help="include finished jobs."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the queue and the GPUs (or one job in full)."""
    from gpuq.cli import render

    client = _client()
    if job_id is not None:
        (jid,) = _ids([job_id])
        job = client.call("GET", f"/v1/jobs/{jid}")
        typer.echo(json.dumps(job, indent=2, sort_keys=True) if as_json else render.job_detail(job))
        return
    st = client.call("GET", "/v1/status" + ("?all=1" if all_ else ""))
    if as_json:
        _print_json(st)
        return
    typer.echo(render.jobs_table(st["jobs"], multi_node=len(st["nodes"]) > 1))
    typer.echo("")
    typer.echo(render.gpus_table(st["nodes"]))
    if render.notices(st):
        typer.echo("\n" + render.notices(st))


@app.command()
def logs(
    job_id: str = typer.Argument(...),
    follow: bool = typer.Option(False, "--follow", "-f", help="follow a running job's log until it ends."),
) -> None:
    """Print a job's log (stdout and stderr)."""
    (jid,) = _ids([job_id])
    client = _client()
    offset = 0
    out = sys.stdout.buffer
    while True:
        data, offset, state = client.log_chunk(jid, offset)
        if data:
            out.write(data)
            out.flush()
            continue
        if not follow or state in ("completed", "failed", "cancelled", "timeout"):
            return
        time.sleep(0.3)


# ---- changes -----------------------------------------------------------------------------------


def _act(verb: str, ids: List[str]) -> None:
    res = _client().call("POST", f"/v1/jobs/{verb}", {"ids": _ids(ids)})
    _report(res["results"], verb)


@app.command()
def cancel(job_ids: List[str] = typer.Argument(..., metavar="JOBID...")) -> None:
    """Cancel jobs: a pending job is removed; a running one gets SIGTERM, then SIGKILL after the grace period."""
    _act("cancel", job_ids)


@app.command()
def hold(job_ids: List[str] = typer.Argument(..., metavar="JOBID...")) -> None:
    """Keep pending jobs from starting until released."""
    _act("hold", job_ids)


@app.command()
def release(job_ids: List[str] = typer.Argument(..., metavar="JOBID...")) -> None:
    """Let held jobs start again."""
    _act("release", job_ids)


@app.command()
def requeue(job_ids: List[str] = typer.Argument(..., metavar="JOBID...")) -> None:
    """Stop running checkpointable jobs gracefully and put them back in the queue."""
    _act("requeue", job_ids)


@app.command()
def usage(as_json: bool = typer.Option(False, "--json")) -> None:
    """Fair share: each user's share, decayed usage and the parts of their priority."""
    res = _client().call("GET", "/v1/usage")
    if as_json:
        _print_json(res)
        return
    from gpuq.cli.usage_render import render_usage

    typer.echo(render_usage(res["users"]))


# ---- the daemon --------------------------------------------------------------------------------


@app.command()
def daemon(
    simulate_gpus: Optional[str] = typer.Option(None, "--simulate-gpus",
                                                help="use a SIMULATED inventory instead of NVML, like 4x24GiB."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url",
                                            help="use this Redis (redis://, unix://) instead of the embedded one."),
    config: Optional[Path] = typer.Option(None, "--config", help="config file (default $GPUQ_HOME/config.toml)."),
    node: Optional[str] = typer.Option(None, "--node", help="this node's name (default: host name)."),
    grace: Optional[str] = typer.Option(None, "--grace", help="SIGTERM -> SIGKILL grace for stopping jobs (30s)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the daemon for this machine: store, scheduler, GPU probe, RQ workers."""
    import logging

    from gpuq.config import load_config
    from gpuq.daemon.main import Daemon
    from gpuq.units import parse_duration_s

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides: dict[str, Any] = {"simulate_gpus": simulate_gpus, "redis_url": redis_url, "node": node}
    if grace is not None:
        overrides["grace_s"] = 0.0 if grace.strip() in ("0", "0s") else parse_duration_s(grace, what="--grace")
    cfg = load_config(config_file=config, overrides=overrides)
    raise typer.Exit(Daemon(cfg).run())


def _register_optional() -> None:
    try:
        from gpuq.cli import sim_cmd
    except ImportError:
        return
    app.command("sim")(sim_cmd.sim)


_register_optional()


def main() -> None:
    try:
        app()
    except GpuqError as e:
        typer.echo(f"gpuq: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `gpuq logs 5 | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except PermissionError as e:
        typer.echo(f"gpuq: permission denied on {e.filename}: run as a user who may use it, or set GPUQ_HOME "
                   "to a directory you own.", err=True)
        sys.exit(1)
    except OSError as e:
        typer.echo(f"gpuq: {e.strerror or e} ({e.filename or 'no file'}); check the path and try again.", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
