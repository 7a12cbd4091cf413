#!/usr/bin/env bash
# Install gpuq for every user of this machine (run as root, once):
#   sudo bash scripts/install.sh [--simulate-gpus 4x24GiB] [--no-start]
# - the environment in /opt/gpuq/venv (scripts/setup.sh), `gpuq` on every user's PATH
#   (/usr/local/bin/gpuq), the administrator's /etc/gpuq/config.toml (an existing one is kept),
#   the state in /var/lib/gpuq, where users' gpuq finds the daemon's socket with nothing set;
# - the systemd unit, enabled and started where systemd runs; elsewhere it says how to start it.
# --simulate-gpus SPEC  a machine without GPUs: the daemon uses a SIMULATED inventory (demos, CI).
# --no-start            install and enable, but do not start the daemon now.
# Run it again to update gpuq from this checkout; scripts/uninstall.sh removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=/opt/gpuq
VENV=$PREFIX/venv
BIN=/usr/local/bin/gpuq
ETC=/etc/gpuq
STATE=/var/lib/gpuq
UNIT=/etc/systemd/system/gpuq.service
simulate=""
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --simulate-gpus) simulate="${2:?--simulate-gpus needs an inventory like 4x24GiB}"; shift 2 ;;
    --simulate-gpus=*) simulate="${1#*=}"; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpuq install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "gpuq install: run it as root, once for everyone: sudo bash scripts/install.sh" >&2
  exit 1
fi

echo "gpuq install: environment in $VENV"
GPUQ_VENV="$VENV" bash scripts/setup.sh >/dev/null
"$VENV/bin/gpuq" --version >/dev/null

echo "gpuq install: $BIN (on every user's PATH)"
ln -sfn "$VENV/bin/gpuq" "$BIN"

install -d -m 0755 "$ETC" "$STATE"
if [ -e "$ETC/config.toml" ]; then
  echo "gpuq install: keeping $ETC/config.toml"
else
  echo "gpuq install: $ETC/config.toml"
  sed "1s|.*|# /etc/gpuq/config.toml: the shared gpuq daemon's settings (restart it after a change)|" \
    deploy/config.toml > "$ETC/config.toml.new"
  if [ -n "$simulate" ]; then
    sed -i "s|^# simulate_gpus = .*|simulate_gpus = \"$simulate\"         # a SIMULATED inventory (no NVML)|" \
      "$ETC/config.toml.new"
  fi
  chmod 0644 "$ETC/config.toml.new"
  mv "$ETC/config.toml.new" "$ETC/config.toml"
fi
"$VENV/bin/python" -c "from gpuq.config import load_config; load_config()" \
  || { echo "gpuq install: $ETC/config.toml is not valid; fix it and run the install again" >&2; exit 1; }

install -d -m 0755 "$(dirname "$UNIT")"
install -m 0644 deploy/gpuq.service "$UNIT"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "$start" = 1 ]; then
    systemctl enable gpuq >/dev/null 2>&1
    systemctl restart gpuq
    echo "gpuq install: the gpuq service is enabled and running (systemctl status gpuq; journalctl -u gpuq)"
  else
    systemctl enable gpuq >/dev/null 2>&1
    echo "gpuq install: the gpuq service is enabled; start it with: systemctl start gpuq"
  fi
else
  cat <<MSG
gpuq install: systemd is not running here, so nothing starts the daemon by itself.  Start it as root
  from your init system or a root shell (it keeps running jobs across its own restarts):
    nohup $BIN daemon >> /var/log/gpuq.log 2>&1 &
  and stop it with SIGTERM (running jobs go back to the queue).  The unit file is in $UNIT
  for when systemd runs.
MSG
fi
echo "gpuq install: done.  Every user can now run: gpuq submit train.py; gpuq status"
