"""The CLI never imports redis, rq or tensorflow (it starts fast and holds no store credentials)."""

import subprocess
import sys

HEAVY = ("redis", "rq", "tensorflow", "keras", "numpy", "pynvml", "pydantic")

PROBE = """
import atexit, sys
def report():
    sys.stderr.write("LOADED " + ",".join(sorted(m for m in {heavy!r} if m in sys.modules)) + "\\n")
atexit.register(report)
sys.argv = ["gpuq"] + {args!r}
from gpuq.cli.app import main
main()
"""


def loaded_by(args, tmp_path):
    code = PROBE.format(heavy=HEAVY, args=args)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"GPUQ_HOME": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"})
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("LOADED")]
    assert line, p.stderr
    return line[0].removeprefix("LOADED ").split(",") if line[0] != "LOADED " else []


def test_status_and_submit_import_nothing_heavy(tmp_path):
    assert loaded_by(["status"], tmp_path) == []
    (tmp_path / "t.py").write_text("")
    assert loaded_by(["submit", str(tmp_path / "t.py")], tmp_path) == []
    assert loaded_by(["--help"], tmp_path) == []
