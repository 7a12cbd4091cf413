#!/usr/bin/env bash
# Set up everything the tests need and run them all (unit, integration, slow TensorFlow).
#   scripts/test.sh [PYTEST ARGS]
# As root (CI), it installs redis-server and python3-venv with apt-get if missing, and creates the
# test users; the environment goes to /opt/gpuq/venv so that those users can run it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash scripts/setup.sh tf,test,sim | tail -n 1)"
exec "$VENV/bin/python" -m pytest "$@"
