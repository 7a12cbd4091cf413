#!/usr/bin/env bash
# Remove gpuq's system install (run as root):
#   sudo bash scripts/uninstall.sh           # the program goes; the queue's data is kept
#   sudo bash scripts/uninstall.sh --purge   # also delete /var/lib/gpuq (jobs, logs, checkpoints)
#                                            # and /etc/gpuq (the configuration)
# The daemon is stopped first: its running jobs get SIGTERM (SIGKILL after the grace period).
set -euo pipefail
VENV=/opt/gpuq/venv
BIN=/usr/local/bin/gpuq
ETC=/etc/gpuq
STATE=/var/lib/gpuq
UNIT=/etc/systemd/system/gpuq.service
purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "gpuq uninstall: unknown option $1 (give --purge or nothing)" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "gpuq uninstall: run it as root: sudo bash scripts/uninstall.sh" >&2
  exit 1
fi

if [ -d /run/systemd/system ] && [ -e "$UNIT" ]; then
  systemctl disable --now gpuq >/dev/null 2>&1 || true
fi
# A daemon started by hand: ask it over its socket for its pid, then SIGTERM it and wait.
if [ -S "$STATE/gpuq.sock" ] && [ -x "$VENV/bin/python" ]; then
  pid=$("$VENV/bin/python" - "$STATE/gpuq.sock" <<'PY' || true
import json, sys
from pathlib import Path
from gpuq.cli.client import Client
try:
    print(Client(Path(sys.argv[1]), timeout_s=5).call("GET", "/v1/health")["pid"])
except Exception:
    pass
PY
)
  if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
    echo "gpuq uninstall: stopping the daemon (pid $pid)"
    for _ in $(seq 1 240); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
fi
rm -f "$UNIT"
[ -d /run/systemd/system ] && systemctl daemon-reload || true
if [ -L "$BIN" ] || [ -e "$BIN" ]; then rm -f "$BIN"; fi
rm -rf "$VENV"
rmdir /opt/gpuq 2>/dev/null || true
if [ "$purge" = 1 ]; then
  rm -rf "$STATE" "$ETC"
  echo "gpuq uninstall: removed gpuq, its data ($STATE) and its configuration ($ETC)"
else
  echo "gpuq uninstall: removed gpuq; kept its data in $STATE and its configuration in $ETC" \
       "(scripts/uninstall.sh --purge deletes them; a new install picks them up)"
fi
