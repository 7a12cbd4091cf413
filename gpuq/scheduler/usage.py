"""Glue between the store and the fair-share accounting (``gpuq.scheduler.fairshare``).

Usage records are small JSON dicts kept per user in the store; the maths lives in
``fairshare``; this module only reads the half-life the leader published.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gpuq import keys

DEFAULT_HALF_LIFE_S = 7 * 86400.0


def _fairshare():
    try:
        from gpuq.scheduler import fairshare
    except ImportError:  # pragma: no cover - fairshare ships with gpuq
        return None
    return fairshare


def add(record: dict[str, Any] | None, gpu_s: float, now: float, half_life_s: float) -> dict[str, Any]:
    fs = _fairshare()
    if fs is not None and hasattr(fs, "add_usage"):
        return fs.add_usage(record, gpu_s, now, half_life_s)
    return {"gpu_s": decayed(record, now, half_life_s) + gpu_s, "at": now}


def decayed(record: dict[str, Any] | None, now: float, half_life_s: float) -> float:
    fs = _fairshare()
    if fs is not None and hasattr(fs, "decayed_usage"):
        return fs.decayed_usage(record, now, half_life_s)
    if not record:
        return 0.0
    age = max(0.0, now - float(record.get("at", now)))
    return float(record.get("gpu_s", 0.0)) * math.pow(0.5, age / half_life_s)


def half_life_from_store(store: Any) -> float:
    try:
        raw = store.r.get(keys.CONFIG)
        if raw:
            return float(json.loads(raw).get("half_life_s", DEFAULT_HALF_LIFE_S))
    except (ValueError, TypeError):
        pass
    return DEFAULT_HALF_LIFE_S
