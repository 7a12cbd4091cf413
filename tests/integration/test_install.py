"""The system install, end to end: scripts/install.sh as root, then a job from an ordinary user who
set nothing (a login shell: no GPUQ_HOME, default PATH), then scripts/uninstall.sh keeping and then
removing the data.

It runs for real, in a private mount namespace whose /etc, /opt, /usr/local/bin and /var/lib are
overlays of this machine's: the install writes the real paths (/opt/gpuq/venv, /usr/local/bin/gpuq,
/etc/gpuq/config.toml, /var/lib/gpuq), starting from a machine without gpuq, and nothing outside
the namespace changes.  GPUs are SIMULATED (--simulate-gpus).  systemd does not run here, so the
daemon is started as the install's message says."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

SCENARIO = r"""
set -euo pipefail
REPO=$1; T=$2; ALICE=$3
for d in /etc /opt /usr/local/bin /var/lib; do
  n=$(echo "$d" | tr / _); mkdir -p "$T/u$n" "$T/w$n"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$T/u$n,workdir=$T/w$n" "$d"
done
rm -rf /opt/gpuq /usr/local/bin/gpuq /etc/gpuq /var/lib/gpuq /etc/systemd/system/gpuq.service  # a machine without gpuq

bash "$REPO/scripts/install.sh" --simulate-gpus 2x8GiB
echo "MARK installed"
test -L /usr/local/bin/gpuq && test -x /opt/gpuq/venv/bin/gpuq && test -d /var/lib/gpuq
grep -q '^simulate_gpus = "2x8GiB"' /etc/gpuq/config.toml
test -e /etc/systemd/system/gpuq.service
/opt/gpuq/venv/bin/python -c 'import gpuq.paths as p; print("system config read:", p.SYSTEM_CONFIG.exists())'

nohup /usr/local/bin/gpuq daemon > "$T/daemon.log" 2>&1 &
DPID=$!
trap 'kill -TERM $DPID 2>/dev/null || true; wait $DPID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [ -S /var/lib/gpuq/gpuq.sock ] && break; sleep 0.1; done
W="$T/work"; mkdir -p "$W"; chown "$ALICE" "$W"
su - "$ALICE" -c "cd $W && echo \"MARK env: \$(env | grep -c '^GPUQ' || true) GPUQ variables, PATH=\$PATH\"
  id=\$(gpuq submit --gpus 0 -q -- sh -c 'id -un > who.txt') && gpuq wait \$id && gpuq status --all"
echo "MARK job ran as: $(cat "$W/who.txt")"
su - "$ALICE" -c "timeout 20 gpuq daemon --simulate-gpus 1x8GiB" 2>&1 | sed 's/^/MARK personal: /' || true

bash "$REPO/scripts/uninstall.sh"
test ! -e /usr/local/bin/gpuq && test ! -e /opt/gpuq/venv && test ! -e /etc/systemd/system/gpuq.service
test -d /var/lib/gpuq/logs && test -e /etc/gpuq/config.toml
echo "MARK kept data"
bash "$REPO/scripts/uninstall.sh" --purge
test ! -e /var/lib/gpuq && test ! -e /etc/gpuq
echo "MARK purged"
"""


def test_install_for_everyone_then_uninstall(test_users):
    alice, _ = test_users
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to sandbox the system install")
    t = Path(tempfile.mkdtemp(prefix="gpuq-install-", dir="/tmp"))
    t.chmod(0o755)
    try:
        p = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", SCENARIO, "scenario",
                            str(REPO), str(t), alice], capture_output=True, text=True, timeout=600)
        out = p.stdout + p.stderr
        daemon_log = (t / "daemon.log").read_text() if (t / "daemon.log").exists() else ""
        assert p.returncode == 0, out + "\n--- daemon log ---\n" + daemon_log[-3000:]
        assert "MARK installed" in out and "systemd is not running here" in out, out
        assert "MARK env: 0 GPUQ variables, PATH=/usr/local/bin:" in out, out
        assert f"MARK job ran as: {alice}" in out, out
        assert "completed" in out, out
        assert "MARK personal: gpuq: " in out and "--personal" in out, out  # a user's own daemon only when asked
        assert "MARK kept data" in out and "MARK purged" in out, out
    finally:
        subprocess.run(["rm", "-rf", str(t)], check=False)
        assert not Path("/etc/gpuq").exists() and not Path("/usr/local/bin/gpuq").exists()  # the host is untouched
