"""One part of a stand-in job across nodes: records the environment gpuq gave it in
``OUT/rank<RANK>.json`` (and its pid), waits until the test creates ``OUT/go`` (or, when the
test wrote ``OUT/gate<RANK>``, that file's content), then exits with ``OUT/exit<RANK>`` (a
number) if the test wrote one, else 0.  With ``OUT/ignore_term`` it ignores SIGTERM (a part
that takes the whole grace period to stop)."""

import json
import os
import signal
import sys
import time

out = sys.argv[1]
rank = os.environ.get("RANK", "?")
if os.path.exists(os.path.join(out, "ignore_term")):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
gate_file = os.path.join(out, f"gate{rank}")
gate = open(gate_file).read().strip() if os.path.exists(gate_file) else "go"
rec = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "TF_CONFIG", "MASTER_ADDR", "MASTER_PORT",
                                      "WORLD_SIZE", "RANK", "LOCAL_RANK", "GPUQ_JOB_ID", "GPUQ_NODE_RANK")}
rec.update(pid=os.getpid(), uid=os.getuid(), start=time.time())
tmp = os.path.join(out, f".rank{rank}.json")
with open(tmp, "w") as f:
    json.dump(rec, f)
os.rename(tmp, os.path.join(out, f"rank{rank}.json"))
print(f"rank {rank} of {rec['WORLD_SIZE']} sees CUDA_VISIBLE_DEVICES={rec['CUDA_VISIBLE_DEVICES']}", flush=True)
while not os.path.exists(os.path.join(out, gate)):
    time.sleep(0.05)
code_file = os.path.join(out, f"exit{rank}")
sys.exit(int(open(code_file).read()) if os.path.exists(code_file) else 0)
