"""Parsing and formatting of sizes and durations (pure, no I/O)."""

from __future__ import annotations

import math
import re

from gpuq.errors import InvalidInput

_SIZE_UNITS_MIB = {
    "k": 1 / 1024, "kb": 1000 / 1024 / 1024, "kib": 1 / 1024,
    "m": 1, "mb": 1000 * 1000 / 1024 / 1024, "mib": 1,
    "g": 1024, "gb": 1000**3 / 1024**2, "gib": 1024,
    "t": 1024**2, "tb": 1000**4 / 1024**2, "tib": 1024**2,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
#: Larger sizes and durations are refused as absurd (a 400-digit value is not a request).
MAX_SIZE_MIB = 1024**3  # 1 PiB
MAX_DURATION_S = 366 * 86400.0
_MAX_TEXT = 64


def _shown(text: str) -> str:
    t = str(text)
    return repr(t if len(t) <= 40 else t[:40] + "…")


def parse_size_mib(text: str, what: str = "size") -> int:
    """Parse ``10GiB``, ``512MiB``, ``1.5G`` or ``24GB`` into whole MiB (rounded up).

    A unit is required: a bare ``10`` could mean MiB or GiB, so it is refused with the two
    readings spelled out.  Zero and negative sizes are refused.
    """
    if len(str(text)) > _MAX_TEXT:
        raise InvalidInput(f"{what} {_shown(text)} is too long to be a size: give one like 10GiB or 512MiB.")
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).lower() if m else ""
    if m and not unit:
        n = m.group(1)
        raise InvalidInput(f"{what} {_shown(text)} has no unit: write {n}GiB or {n}MiB.")
    if not m or unit not in _SIZE_UNITS_MIB:
        raise InvalidInput(
            f"{what} {_shown(text)} is not a size: write a number with a unit, like 10GiB or 512MiB."
        )
    value = float(m.group(1)) * _SIZE_UNITS_MIB[unit]
    if not value <= MAX_SIZE_MIB:
        raise InvalidInput(f"{what} {_shown(text)} is larger than any GPU or disk: give a size like 10GiB.")
    mib = math.ceil(value - 1e-9)
    if mib <= 0:
        raise InvalidInput(f"{what} {text!r} must be larger than zero, like 512MiB or 10GiB.")
    return mib


def parse_size_bytes(text: str, what: str = "size") -> int:
    """Like :func:`parse_size_mib` (``64KiB``, ``1MiB``; a bare number means bytes here), in whole bytes."""
    t = str(text).strip()
    if t.isdigit() and len(t) <= 15:
        n = int(t)
        if n <= 0:
            raise InvalidInput(f"{what} {_shown(text)} must be larger than zero, like 64KiB.")
        return n
    m = _SIZE_RE.match(t) if len(t) <= _MAX_TEXT else None
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS_MIB:
        raise InvalidInput(f"{what} {_shown(text)} is not a size: write a number with a unit, like 64KiB or 1MiB.")
    value = float(m.group(1)) * _SIZE_UNITS_MIB[unit]
    if not 0 < value <= MAX_SIZE_MIB:
        raise InvalidInput(f"{what} {_shown(text)} is out of range: give a size like 64KiB or 1MiB.")
    return math.ceil(value * 1024 * 1024 - 1e-6)


_DUR_UNITS_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DUR_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|min|m|sec|s)?", re.I)


def parse_duration_s(text: str, what: str = "duration") -> float:
    """Parse ``2h``, ``90m``, ``1h30m``, ``45s``, ``1d`` or ``HH:MM:SS`` into seconds (> 0)."""
    t = str(text).strip().lower()
    seconds: float | None = None
    if len(t) > _MAX_TEXT:
        raise InvalidInput(f"{what} {_shown(text)} is too long to be a duration: give one like 2h, 90m or 3d.")
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", t):
        parts = [int(p) for p in t.split(":")]
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60 + p
    elif t and re.fullmatch(r"(\s*\d+(\.\d+)?\s*(d|h|min|m|sec|s)?)+", t):
        seconds = 0.0
        for num, unit in _DUR_PART.findall(t):
            seconds += float(num) * _DUR_UNITS_S[(unit or "s").lower()]
    if seconds is None:
        raise InvalidInput(f"{what} {_shown(text)} is not a duration: write it like 2h, 90m, 1h30m or 01:30:00.")
    if not seconds <= MAX_DURATION_S:
        raise InvalidInput(f"{what} {_shown(text)} is longer than a year: give a duration like 2h or 3d.")
    if seconds <= 0:
        raise InvalidInput(f"{what} {_shown(text)} must be longer than zero, like 30m or 2h.")
    return seconds


def _bounded_float(text: str | float) -> float:
    """``float(text)`` for text of sane length (ValueError otherwise: no 400-digit numbers)."""
    if len(str(text)) > _MAX_TEXT:
        raise ValueError("too long")
    return float(text)


def parse_fraction(text: str | float) -> float:
    try:
        f = _bounded_float(text)
    except (TypeError, ValueError):
        raise InvalidInput(f"fraction {_shown(text)} is not a number: give a share of one GPU between 0 and 1, like 0.25.") from None
    if not (0 < f <= 1) or math.isnan(f):
        raise InvalidInput(f"fraction {_shown(text)} is out of range: give a share of one GPU above 0 and at most 1, like 0.25.")
    return f


def parse_cpus(text: str | float, lo: float, hi: float) -> float:
    """``--cpus``: a number of CPUs, fractions allowed (``0.5``, ``2``, ``1.5``), from ``lo`` to ``hi``."""
    try:
        n = _bounded_float(text)
    except (TypeError, ValueError):
        raise InvalidInput(f"--cpus {_shown(text)} is not a number: give a number of CPUs like 4 or 0.5.") from None
    if not lo <= n <= hi:  # NaN fails this too
        raise InvalidInput(f"--cpus {_shown(text)} is out of range: give a number of CPUs from {lo:g} to {hi:g}, "
                           "like 4 or 0.5.")
    return n


def format_mib(mib: float | None) -> str:
    if mib is None:
        return "-"
    if mib >= 1024:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib:.0f} MiB"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}:{m:02d}:{s:02d}"
    return f"{m}:{s:02d}"
