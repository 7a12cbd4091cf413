"""A stand-in training job for the integration tests: records what it saw, optionally makes
memory appear in use on its SIMULATED GPUs, sleeps, and records when it ended."""

import json
import os
import sys
import time

out, hold_s = sys.argv[1], float(sys.argv[2])
mib = int(sys.argv[3]) if len(sys.argv) > 3 else 0
rec = {
    "job": os.environ.get("GPUQ_JOB_ID"),
    "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "order": os.environ.get("CUDA_DEVICE_ORDER"),
    "mem_mib": os.environ.get("GPUQ_GPU_MEM_MIB"),
    "allow_growth": os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"),
    "ckpt": os.environ.get("GPUQ_CHECKPOINT_DIR"),
    "uid": os.getuid(),
    "cwd": os.getcwd(),
    "start": time.time(),
}
print(f"job {rec['job']} sees CUDA_VISIBLE_DEVICES={rec['cvd']}", flush=True)
gate = os.environ.get("JOB_GATE")  # wait until the test creates this file (no timing races)
while gate and not os.path.exists(gate):
    time.sleep(0.05)
if mib:
    from gpuq.workers.simgpu import Claim, write_claim

    for uuid in filter(None, rec["cvd"].split(",")):
        write_claim(os.environ["GPUQ_SIMULATED_GPU_DIR"], Claim(uuid=uuid, mem_mib=mib, util_pct=50, pid=os.getpid()))
time.sleep(hold_s)
rec["end"] = time.time()
with open(out, "w") as f:
    json.dump(rec, f)
print("done", flush=True)
