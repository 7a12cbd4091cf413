#!/usr/bin/env bash
# gpuq's main job, end to end, on the default embedded setup with a SIMULATED 2-GPU inventory:
# start the daemon, queue real TensorFlow training scripts and stand-in jobs, watch them wait for
# GPU memory, requeue a training job mid-run and see it resume from its checkpoint, then stop.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash scripts/setup.sh tf | tail -n 1)"
export PATH="$VENV/bin:$PATH"
DEMO="$(mktemp -d /tmp/gpuq-demo.XXXXXX)"
chmod 755 "$DEMO"
export GPUQ_HOME="$DEMO/home"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "gpuq daemon --simulate-gpus 2x24GiB   (embedded Redis, state in $GPUQ_HOME)"
gpuq daemon --simulate-gpus 2x24GiB --grace 20s > "$DEMO/daemon.log" 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 100); do gpuq status >/dev/null 2>&1 && break; sleep 0.1; done
cat "$DEMO/daemon.log"

cd examples
step "submit: a stand-in job holding a whole GPU, three TF trainings with memory shares, a 2-GPU job"
hog=$(gpuq submit -q --name gpu-hog -- python3 -m gpuq.workers.simgpu hold --mib 20000 --seconds 8)
digits=$(gpuq submit -q --gpu-mem 4GiB --checkpointable --name digits digits_classic.py --step-sleep 0.003)
loss=$(gpuq submit -q --fraction 0.5 --name custom-loss custom_loss.py --steps 3000)
wide=$(gpuq submit -q --gpus 2 --name two-gpus -- python3 -m gpuq.workers.simgpu hold --mib 1000 --seconds 2)
legacy=$(gpuq submit -q --gpu-mem 2GiB --after "$digits" --name tf1-legacy tf1_compat.py --steps 1000)
echo "jobs: hog=$hog digits=$digits custom-loss=$loss two-gpus=$wide tf1-legacy=$legacy"
sleep 4
step "gpuq status"
gpuq status

step "gpuq requeue $digits   (checkpointable: SIGTERM -> checkpoint -> back to the queue -> resume)"
for _ in $(seq 100); do gpuq status "$digits" --json | grep -q '"step"' && break; sleep 0.3; done
gpuq requeue "$digits"
sleep 3
gpuq status

step "gpuq logs -f $digits"
gpuq logs -f "$digits"

step "waiting for the rest"
for j in $hog $loss $wide $legacy; do
  while gpuq status "$j" --json | grep -qE '"state": "(pending|running)"'; do sleep 1; done
done
step "gpuq status --all"
gpuq status --all
step "gpuq status $digits"
gpuq status "$digits"
step "stopping the daemon (SIGTERM)"
