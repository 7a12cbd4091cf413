"""The ``gpuq`` command line.  It talks only to the daemon's socket; it never imports
redis, rq or tensorflow, so it starts fast.

Options come before the script: ``gpuq submit --gpus 2 train.py --lr 0.1`` (everything after the
script is the script's).  An unknown option is an error that names the closest one.
"""
# No `from __future__ import annotations` here: typer would compile and eval each annotation string
# of the command it builds, at every start.

import gc

# Importing click and typer makes some hundred thousand objects that live as long as the process
# and no garbage; the collector's passes over them were ~4% of a `gpuq status`.  So it is off while
# they are made, they are frozen (never scanned again), and it is on before any command runs
# (`gpuq daemon` runs for months in this process).
gc.disable()

import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, List, Optional  # noqa: E402

import click  # noqa: E402
import typer  # noqa: E402

from gpuq import __version__  # noqa: E402
from gpuq.cli import sim_cmd  # noqa: E402
from gpuq.cli.client import Client  # noqa: E402
from gpuq.errors import GpuqError, InvalidInput  # noqa: E402
from gpuq.paths import Paths, client_home  # noqa: E402
from gpuq.units import parse_size_mib  # noqa: E402

gc.freeze()
gc.enable()

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="gpuq: a GPU job queue for shared lab servers.  It talks to the machine's shared daemon "
         "(/var/lib/gpuq/gpuq.sock); GPUQ_HOME selects another daemon's state directory.",
)
TERMINAL = ("completed", "failed", "cancelled", "timeout")


def _client() -> Client:
    return Client(Paths(client_home()).socket)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True))


def _check_ids(ids: List[str]) -> list[str]:
    """Job ids as typed: ``17`` (a job, or a whole array) or ``17_3`` (element 3 of array 17)."""
    for i in ids:
        arr, sep, idx = i.partition("_")
        if not arr.isdigit() or (sep and not idx.isdigit()):
            raise InvalidInput(f"{i!r} is not a job id: give a number like 17, or 17_3 for element 3 of array 17 "
                               "(see `gpuq status`).")
    return ids


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpuq {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="print gpuq's version and exit.")) -> None:
    """gpuq: a GPU job queue for shared lab servers."""


# ---- submit ------------------------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    command: List[str] = typer.Argument(None, metavar="SCRIPT_OR_COMMAND [ARGS]...", show_default=False,
                                        help="train.py runs with the first python3 on your PATH; run.sh in this "
                                             "directory runs as ./run.sh; anything else runs as given."),
    gpus: int = typer.Option(1, "--gpus", "-g", help="GPUs on one node (0 = CPU only); with --nodes, on each node."),
    nodes: int = typer.Option(1, "--nodes", "-N", help="run across this many nodes, --gpus whole GPUs on each "
                              "(one process per node, with TF_CONFIG and MASTER_ADDR/RANK/WORLD_SIZE set)."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", "-m", help="memory per GPU, with a unit: 10GiB, 512MiB."),
    fraction: Optional[str] = typer.Option(None, "--fraction", help="share of each GPU, like 0.25 (instead of --gpu-mem)."),
    exclusive: bool = typer.Option(False, "--exclusive", help="no other job on its GPUs."),
    mem: Optional[str] = typer.Option(None, "--mem", metavar="SIZE",
                                      help="host memory limit, with a unit: 16GiB (over it the job is OOM-killed)."),
    cpus: Optional[str] = typer.Option(None, "--cpus", metavar="N",
                                       help="CPU limit, fractions allowed: 4, 0.5 (a quota, not pinned cores)."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="a name shown in status (default: the script's)."),
    priority: int = typer.Option(0, "--priority", "-p",
                                 help="order among your own jobs: negative lets others of yours go first "
                                      "(only root may raise it)."),
    after: Optional[List[str]] = typer.Option(None, "--after", metavar="ID[,ID]",
                                              help="start once these jobs (or arrays) completed successfully."),
    after_any: Optional[List[str]] = typer.Option(None, "--after-any", metavar="ID[,ID]",
                                                  help="start once these jobs ended, however they ended."),
    after_notok: Optional[List[str]] = typer.Option(None, "--after-notok", metavar="ID[,ID]",
                                                    help="start once these jobs failed, were cancelled or timed out."),
    array: Optional[str] = typer.Option(None, "--array", "-a", metavar="0-99[%N]",
                                        help="a job array: one job per index, {} in the arguments becomes the "
                                             "index (also GPUQ_ARRAY_INDEX); %N: at most N run at once."),
    from_file: Optional[Path] = typer.Option(None, "--from", metavar="FILE",
                                             help="one job per line of FILE (an array; --array %N throttles it)."),
    notify: Optional[str] = typer.Option(None, "--notify", metavar="CMD",
                                         help="shell command run as you when the job ends, with GPUQ_JOB_ID, "
                                              "GPUQ_JOB_STATE and GPUQ_JOB_EXIT_STATUS set ('' for none)."),
    time_limit: Optional[str] = typer.Option(None, "--time-limit", "-t", help="like 2h, 90m, 01:30:00."),
    checkpointable: bool = typer.Option(False, "--checkpointable",
                                        help="the job resumes from its checkpoints: it may be requeued/preempted."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the job id."),
    as_json: bool = typer.Option(False, "--json", help="print the submitted job as JSON."),
) -> None:
    """Queue a script or command; prints the job id and returns at once.

    Options come first; everything after SCRIPT_OR_COMMAND is its own arguments.  train.py runs
    with the first python3 on your PATH, run.sh in this directory as ./run.sh, anything else as given
    (put -- before a command that has options of its own)."""
    from gpuq.cli import submit_parts

    command = list(command or [])
    commands = submit_parts.read_commands(from_file) if from_file is not None else None
    if commands is None and not command:
        raise InvalidInput("nothing to run: give a script or a command, like `gpuq submit train.py`, "
                           "or --from FILE.")
    if commands is not None and command:
        raise InvalidInput("--from FILE gives the commands: leave the command off the line.")
    for size, what in ((gpu_mem, "--gpu-mem"), (mem, "--mem")):
        if size:
            parse_size_mib(size, what=what)  # a mistake is reported before anything is sent
    body = {
        "argv": command or commands[0], "cwd": os.getcwd(), "env": dict(os.environ), "gpus": gpus, "nodes": nodes,
        "gpu_mem": gpu_mem, "fraction": fraction, "exclusive": exclusive, "name": name, "priority": priority,
        "after": submit_parts.id_list(after), "after_any": submit_parts.id_list(after_any),
        "after_notok": submit_parts.id_list(after_notok), "time_limit": time_limit,
        "checkpointable": checkpointable, "notify": submit_parts.notify_command(notify),
    }
    if mem is not None:
        body["mem"] = mem
    if cpus is not None:
        body["cpus"] = cpus
    if array is not None:
        body["array"] = array
    if commands is not None:
        body["commands"] = commands
    res = _client().call("POST", "/v1/jobs", body)
    for note in res.get("notes", []):
        typer.echo(f"gpuq: note: {note}", err=True)
    if as_json:
        _print_json(res.get("job") or res)
    elif quiet:
        typer.echo(res["id"])
    elif "array_id" in res:
        limit = f", at most {res['limit']} at once" if res.get("limit") else ""
        typer.echo(f"Submitted array {res['array_id']}: {len(res['ids'])} jobs "
                   f"({res['ids'][0]}-{res['ids'][-1]}){limit}")
    else:
        typer.echo(f"Submitted job {res['id']}")


# ---- views -------------------------------------------------------------------------------------


@app.command()
def status(
    job_id: Optional[str] = typer.Argument(None, help="show one job (or one array) in full."),
    all_: bool = typer.Option(False, "--all", help="include recently finished jobs."),
    me: bool = typer.Option(False, "--me", help="only your jobs."),
    user: Optional[List[str]] = typer.Option(None, "--user", "-u", help="only this user's jobs (repeatable)."),
    state: Optional[str] = typer.Option(None, "--state", "-s", help="only jobs in these states, like running,pending."),
    expand: bool = typer.Option(False, "--expand", "-r", help="one line per job of each array."),
    watch: bool = typer.Option(False, "--watch", "-w", help="refresh in place until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", "-n", help="seconds between refreshes with --watch."),
    as_json: bool = typer.Option(False, "--json", help="print JSON."),
) -> None:
    """Show the queue and the GPUs, or one job or array in full.

    JOBID: a job (17), a whole array (its id) or one element of an array (17_3)."""
    from gpuq.cli import status_cmd

    client = _client()
    if job_id is not None:
        status_cmd.show_one(client, _check_ids([job_id])[0], as_json)
        return
    filters = status_cmd.Filters.from_options(me, user, state, all_)
    if watch:
        from gpuq.cli.watch import watch_screen

        watch_screen(lambda: status_cmd.queue_text(client, filters, expand), interval, "gpuq status")
        return
    if as_json:
        _print_json(status_cmd.queue_json(client, filters))
        return
    typer.echo(status_cmd.queue_text(client, filters, expand))


@app.command()
def logs(
    job_id: str = typer.Argument(..., help="the job (17, or 17_3 for an array element)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="follow a running job's log until it ends."),
    tail: Optional[int] = typer.Option(None, "--tail", "-n", metavar="N", help="only the last N lines."),
) -> None:
    """Print a job's log (stdout and stderr).

    JOBID: a job (17) or one element of an array (17_3)."""
    from gpuq.cli import status_cmd

    status_cmd.print_log(_client(), _check_ids([job_id])[0], follow, tail)


@app.command()
def history(
    me: bool = typer.Option(False, "--me", help="only your jobs."),
    user: Optional[List[str]] = typer.Option(None, "--user", "-u", help="only this user's jobs (repeatable)."),
    state: Optional[str] = typer.Option(None, "--state", "-s", help="only these end states, like failed,timeout."),
    since: Optional[str] = typer.Option(None, "--since", "-S",
                                        help="ended at or after: 2h / 3d (ago), 2026-11-20, 2026-11-20T14:00."),
    until: Optional[str] = typer.Option(None, "--until", "-E", help="ended before (same forms as --since)."),
    limit: int = typer.Option(100, "--limit", "-l", help="at most this many jobs, newest first."),
    as_json: bool = typer.Option(False, "--json", help="print JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="print CSV."),
) -> None:
    """Finished jobs with wait time, run time, GPU-hours and exit status (like sacct)."""
    from gpuq.cli import history_cmd

    history_cmd.run(_client(), me, user, state, since, until, limit, as_json, as_csv)


@app.command()
def wait(
    job_ids: List[str] = typer.Argument(..., metavar="JOBID...", help="jobs or arrays to wait for."),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="give up after this long (like 2h); exit 124."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing."),
) -> None:
    """Block until the jobs end; exit 0 if all completed, else the first unsuccessful job's status
    (its exit code; 124 timed out, 125 cancelled).

    JOBID: a job (17), a whole array (its id) or one element of an array (17_3)."""
    from gpuq.cli import status_cmd

    raise typer.Exit(status_cmd.wait_for(_client(), _check_ids(job_ids), timeout, quiet))


# ---- changes -----------------------------------------------------------------------------------


def _act(verb: str, ids: List[str]) -> None:
    from gpuq.cli.status_cmd import report_changes

    res = _client().call("POST", f"/v1/jobs/{verb}", {"ids": _check_ids(ids)})
    if not report_changes(res["results"], verb):
        raise typer.Exit(1)


@app.command()
def cancel(job_ids: List[str] = typer.Argument(..., metavar="JOBID...", help="jobs or arrays.")) -> None:
    """Cancel jobs: a pending job is removed; a running one gets SIGTERM, then SIGKILL after the grace period.

    JOBID: a job (17), a whole array (its id) or one element of an array (17_3)."""
    _act("cancel", job_ids)


@app.command()
def hold(job_ids: List[str] = typer.Argument(..., metavar="JOBID...", help="jobs or arrays.")) -> None:
    """Keep pending jobs from starting until released.

    JOBID: a job (17), a whole array (its id) or one element of an array (17_3)."""
    _act("hold", job_ids)


@app.command()
def release(job_ids: List[str] = typer.Argument(..., metavar="JOBID...", help="jobs or arrays.")) -> None:
    """Let held jobs start again.

    JOBID: a job (17), a whole array (its id) or one element of an array (17_3)."""
    _act("release", job_ids)


@app.command()
def requeue(job_ids: List[str] = typer.Argument(..., metavar="JOBID...", help="jobs or arrays.")) -> None:
    """Stop running checkpointable jobs gracefully and put them back in the queue.

    JOBID: a job (17), a whole array (its id) or one element of an array (17_3)."""
    _act("requeue", job_ids)


@app.command()
def usage(as_json: bool = typer.Option(False, "--json", help="print JSON.")) -> None:
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
    config: Optional[Path] = typer.Option(None, "--config",
                                          help="config file (default /etc/gpuq/config.toml for the system daemon, "
                                               "else $GPUQ_HOME/config.toml)."),
    node: Optional[str] = typer.Option(None, "--node", help="this node's name (default: host name)."),
    address: Optional[str] = typer.Option(None, "--address", help="where the parts of a job across nodes reach "
                                          "this node (default: host name)."),
    grace: Optional[str] = typer.Option(None, "--grace", help="SIGTERM -> SIGKILL grace for stopping jobs (30s)."),
    drain: bool = typer.Option(False, "--drain", help="on SIGTERM stop this node's jobs (back to the queue) "
                               "instead of leaving them running for the next daemon to adopt."),
    personal: bool = typer.Option(False, "--personal",
                                  help="run your own queue in ~/.local/state/gpuq (not the machine's shared one)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log debug messages."),
) -> None:
    """Run the daemon for this machine: store, scheduler, GPU probe, RQ workers."""
    import logging

    from gpuq.config import load_config
    from gpuq.daemon.main import Daemon
    from gpuq.units import parse_duration_s

    if os.geteuid() != 0 and not os.environ.get("GPUQ_HOME") and not personal:
        raise InvalidInput("the machine's shared gpuq daemon runs as root (an administrator installs it with "
                           "`sudo bash scripts/install.sh`); to run a queue of your own, give --personal.")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides: dict[str, Any] = {"simulate_gpus": simulate_gpus, "redis_url": redis_url, "node": node, "address": address,
                                 "drain": True if drain else None}
    if grace is not None:
        overrides["grace_s"] = 0.0 if grace.strip() in ("0", "0s") else parse_duration_s(grace, what="--grace")
    cfg = load_config(config_file=config, overrides=overrides)
    raise typer.Exit(Daemon(cfg).run())


app.command("sim")(sim_cmd.sim)


def _usage_error(e: click.UsageError) -> str:
    """One sentence for a command-line mistake, naming the closest option when one was mistyped."""
    cmd = e.ctx.command_path if e.ctx is not None else "gpuq"
    if isinstance(e, click.NoSuchOption):
        import difflib

        close = difflib.get_close_matches(e.option_name, sorted(e.possibilities or []), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else f"; see `{cmd} --help`."
        return f"{cmd}: no such option {e.option_name}{hint}"
    sentences: list[str] = []  # click and typer each add "Did you mean 'status'?" to an unknown command
    for s in e.format_message().replace(". ", ".\n").replace("? ", "?\n").splitlines():
        if s not in sentences:
            sentences.append(s)
    where = "" if cmd == "gpuq" else f"{cmd}: "  # main() already says "gpuq: "
    return f"{where}{' '.join(sentences)} (see `{cmd} --help`)."


def _command_for(args: list[str]) -> click.Command:
    """The click command for this invocation.  typer turns every registered function into click
    objects, reading each signature, before it parses anything; building only the subcommand named
    first saves most of that (a few ms of every `gpuq status`).  Top-level help, ``--version`` and an
    unknown command (whose error names the closest one) get the whole app."""
    first = args[0] if args else ""
    chosen = [c for c in app.registered_commands
              if (c.name or typer.main.get_command_name(c.callback.__name__)) == first]  # type: ignore[union-attr]
    if len(chosen) != 1:
        return typer.main.get_command(app)
    one = copy.copy(app)
    one.registered_commands = chosen
    return typer.main.get_command(one)


def main() -> None:
    try:
        args = sys.argv[1:]
        gc.disable()  # building the command: many objects for the whole run, no garbage (see the imports)
        command = _command_for(args)
        gc.freeze()
        gc.enable()
        rc = command.main(args=args, prog_name="gpuq", standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except click.exceptions.NoArgsIsHelpError as e:  # `gpuq` alone, or a group without its command: the help
        typer.echo(e.format_message(), err=True)
        sys.exit(2)
    except click.UsageError as e:
        typer.echo(f"gpuq: {_usage_error(e)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        typer.echo(f"gpuq: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
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
