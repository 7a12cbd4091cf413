"""The fair-share half-life as the leader published it, for workers that record usage.

Usage records are small JSON dicts kept per user in the store (``{"gpu_s", "at"}``); the maths
lives in :mod:`gpuq.scheduler.fairshare`.
"""

from __future__ import annotations

import json
from typing import Any

from gpuq import keys

DEFAULT_HALF_LIFE_S = 7 * 86400.0


def half_life_from_store(store: Any) -> float:
    try:
        raw = store.r.get(keys.CONFIG)
        if raw:
            return float(json.loads(raw).get("half_life_s", DEFAULT_HALF_LIFE_S))
    except (ValueError, TypeError):
        pass
    return DEFAULT_HALF_LIFE_S
