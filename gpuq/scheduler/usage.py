"""The fair-share half-life as the leader published it, for supervisors recording a run's usage.

Usage records are small JSON dicts kept per user in the store (``{"gpu_s", "at"}``); the maths
lives in :mod:`gpuq.scheduler.fairshare`.
"""

from __future__ import annotations

from typing import Any, Mapping

DEFAULT_HALF_LIFE_S = 7 * 86400.0


def half_life_from_config(config: Mapping[str, Any]) -> float:
    """The half-life in the config the leader published (``keys.CONFIG``); the default when it
    is missing or not a positive number."""
    value = config.get("half_life_s", DEFAULT_HALF_LIFE_S)
    try:
        half_life_s = float(value)
    except (TypeError, ValueError):
        return DEFAULT_HALF_LIFE_S
    return half_life_s if half_life_s > 0 else DEFAULT_HALF_LIFE_S
