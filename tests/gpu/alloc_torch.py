"""A GPU job for the device check: allocate a known amount of memory with PyTorch and hold it.

    python alloc_torch.py MIB SECONDS OUT.json
It records what it saw (CUDA_VISIBLE_DEVICES, the device name) into OUT.json.
"""

import json
import os
import sys
import time

mib, hold_s, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
import torch  # noqa: E402  (after reading arguments: a bad call fails fast)

rec = {"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "job": os.environ.get("GPUQ_JOB_ID"),
       "cuda": torch.cuda.is_available(), "start": time.time()}
if rec["cuda"]:
    rec["device"] = torch.cuda.get_device_name(0)
    block = torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda")
    block.fill_(1)
    torch.cuda.synchronize()
    rec["allocated_mib"] = torch.cuda.memory_allocated() // 2**20
print(json.dumps(rec), flush=True)
time.sleep(hold_s)
rec["end"] = time.time()
with open(out, "w") as f:
    json.dump(rec, f)
