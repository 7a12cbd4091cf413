"""Pieces of `gpuq submit` that read the user's files: ``--from FILE`` and the per-user
default ``--notify`` in ``~/.config/gpuq/config.toml``.  Read with the user's own rights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from gpuq.errors import InvalidInput

MAX_FROM_BYTES = 4 * 1024 * 1024


def user_config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpuq" / "config.toml"


def read_commands(path: Path) -> list[list[str]]:
    """One command per line (split like a shell does, without running one); blank lines and
    lines starting with # are skipped."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FROM_BYTES + 1)
    except FileNotFoundError:
        raise InvalidInput(f"--from {path}: no such file; give a file with one command per line.") from None
    if len(data) > MAX_FROM_BYTES:
        raise InvalidInput(f"--from {path} is larger than {MAX_FROM_BYTES // 1024 // 1024} MiB: split it.")
    import shlex

    commands: list[list[str]] = []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            commands.append(shlex.split(line))
        except ValueError as e:
            raise InvalidInput(f"--from {path}, line {n}: {e}; fix the quoting.") from None
    if not commands:
        raise InvalidInput(f"--from {path} has no commands: write one command per line.")
    return commands


def id_list(values: Sequence[str] | None) -> list[str]:
    """``--after 3,4 --after 7`` -> ["3", "4", "7"] (each a job id, array id or ARRAY_INDEX)."""
    out: list[str] = []
    for v in values or []:
        for part in v.split(","):
            part = part.strip()
            arr, sep, idx = part.partition("_")
            if not arr.isdigit() or (sep and not idx.isdigit()):
                raise InvalidInput(f"{part!r} is not a job id: give ids like 17 or 17,18 (17_3: one array element).")
            out.append(part)
    return out


def notify_command(given: str | None) -> str:
    """``--notify CMD`` when given (``''`` turns it off), else the user's default: ``notify`` in
    the ``[submit]`` table of ``~/.config/gpuq/config.toml``."""
    if given is not None:
        return given
    path = user_config_file()
    if not path.is_file():
        return ""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"{path} cannot be read ({e}); fix it or move it away.") from None
    value = data.get("submit", {}).get("notify", "")
    if not isinstance(value, str):
        raise InvalidInput(f"{path}: [submit] notify must be a string (a shell command).")
    return value
