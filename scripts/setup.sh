#!/usr/bin/env bash
# Create (or update) gpuq's virtual environment and install gpuq into it.
#   scripts/setup.sh [EXTRAS]      e.g. scripts/setup.sh tf,test,sim
# The environment lives in $GPUQ_VENV; default /opt/gpuq/venv as root (other users must be able
# to run the interpreter: the multi-user tests and shared installs run jobs as them), else ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ "$(id -u)" = 0 ]; then default_venv=/opt/gpuq/venv; else default_venv="$PWD/.venv"; fi
VENV="${GPUQ_VENV:-$default_venv}"
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "gpuq setup: please install ${need_apt[*]} (sudo apt-get install ${need_apt[*]})" >&2; exit 1
  fi
fi
# Debian's interpreter lives in /usr, readable by every user (a per-user pyenv in /root is not).
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  chmod -R a+rX "$(dirname "$VENV")"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"$VENV/bin/python" -m pip install -q "$spec" 2>&1 | grep -v "is ignored" || true
# gpuq itself from this checkout, always (same version number, new code)
"$VENV/bin/python" -m pip install -q --no-deps --force-reinstall . 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import gpuq" || { echo "gpuq setup: install failed" >&2; exit 1; }
chmod -R a+rX "$VENV"
echo "$VENV"
