"""GPU check of the memory contract with PyTorch (TensorFlow is not installed on the GPU machine).

Run it as a job would be run: with the environment gpuq's worker gives a job submitted with
``--fraction F`` (``GPUQ_GPU_MEM_FRACTION=F`` and ``PYTORCH_ALLOC_CONF=per_process_memory_fraction:F``),
for example::

    CUDA_VISIBLE_DEVICES=0 GPUQ_GPU_MEM_FRACTION=0.25 \
        PYTORCH_ALLOC_CONF=per_process_memory_fraction:0.25 python tests/gpu/tf_contract_torch.py

It allocates well inside the share (must succeed), then beyond it (must be refused), in two ways:

1. ``env``: relying on ``PYTORCH_ALLOC_CONF`` alone, as an unmodified script would;
2. ``explicit``: after ``torch.cuda.set_per_process_memory_fraction(GPUQ_GPU_MEM_FRACTION)``,
   what a script does to honour the share itself.

It prints one JSON line with the results.  Exit status: 0 when the share held (by the
environment alone, or with ``--allow-explicit`` by either way), 1 when an allocation beyond the
share succeeded, 2 when the check could not run (no CUDA, no share in the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def share_from_env() -> float | None:
    text = os.environ.get("GPUQ_GPU_MEM_FRACTION", "").strip()
    if not text:
        conf = os.environ.get("PYTORCH_ALLOC_CONF", "")
        for item in conf.split(","):
            key, _, value = item.partition(":")
            if key.strip() == "per_process_memory_fraction":
                text = value.strip()
    try:
        fraction = float(text)
    except ValueError:
        return None
    return fraction if 0 < fraction < 1 else None


def try_alloc(torch, n_bytes: int) -> bool:
    """True if ``n_bytes`` could be allocated on the current GPU (and frees it again)."""
    try:
        block = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return False
    del block
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return True


def check(torch, total_bytes: int, fraction: float) -> dict[str, bool]:
    return {
        "inside_share_ok": try_alloc(torch, int(total_bytes * fraction * 0.5)),
        "beyond_share_refused": not try_alloc(torch, int(total_bytes * min(fraction * 1.5 + 0.05, 0.95))),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allow-explicit", action="store_true",
                   help="also pass when only the explicit set_per_process_memory_fraction held")
    args = p.parse_args()
    fraction = share_from_env()
    if fraction is None:
        print(json.dumps({"ok": False, "why": "no share below 1 in GPUQ_GPU_MEM_FRACTION / PYTORCH_ALLOC_CONF"}))
        return 2
    try:
        import torch
    except ImportError:
        print(json.dumps({"ok": False, "why": "PyTorch is not installed"}))
        return 2
    if not torch.cuda.is_available():
        print(json.dumps({"ok": False, "why": "no CUDA device visible"}))
        return 2
    total_bytes = torch.cuda.get_device_properties(0).total_memory
    result: dict[str, object] = {
        "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "total_mib": total_bytes >> 20,
        "fraction": fraction, "PYTORCH_ALLOC_CONF": os.environ.get("PYTORCH_ALLOC_CONF"),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    env_result = check(torch, total_bytes, fraction)
    result["env"] = env_result
    env_held = all(env_result.values())
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    explicit_result = check(torch, total_bytes, fraction)
    result["explicit"] = explicit_result
    explicit_held = all(explicit_result.values())
    held = env_held or (args.allow_explicit and explicit_held)
    result["ok"] = held
    result["summary"] = (
        f"share {fraction:.4f} of {total_bytes >> 20} MiB: "
        f"environment alone {'held' if env_held else 'did NOT hold'}, "
        f"explicit set_per_process_memory_fraction {'held' if explicit_held else 'did NOT hold'}"
    )
    print(json.dumps(result))
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
