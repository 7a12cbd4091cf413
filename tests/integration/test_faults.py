"""Fault injection, CI form: 100 random faults (daemon SIGKILL/SIGTERM, embedded Redis, job
supervisors, RQ workers) under a mixed workload of several users, invariants checked after each.
The engine and the long form (1,000 faults) are bench/bench_faults.py; figures in
docs/reliability.md."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import GPUQ

pytestmark = pytest.mark.integration
FAULTS = int(os.environ.get("GPUQ_TEST_FAULTS", "100"))


def _engine():
    path = Path(__file__).parents[2] / "bench" / "bench_faults.py"
    spec = importlib.util.spec_from_file_location("bench_faults", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_invariants_hold_under_random_faults(test_users):
    res = _engine().run(FAULTS, seed=int(os.environ.get("GPUQ_TEST_FAULTS_SEED", "8")), gpuq=GPUQ)
    assert res["faults"] >= FAULTS
    assert set(res["by_kind"]) == {"daemon_kill", "daemon_term", "redis_kill", "supervisor_kill", "worker_kill"} \
        or FAULTS < 20
    assert res["jobs"] > FAULTS // 2 and res["cancels"] > 0
    assert res["violations"] == [], "\n".join(res["violations"])
