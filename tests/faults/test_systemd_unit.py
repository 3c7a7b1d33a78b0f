"""The shipped systemd unit is one systemd accepts, pointing at this checkout's virtualenv."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, "contrib", "systemd", "pycilium.service")


def test_unit_file_verifies(tmp_path):
    venv = os.path.dirname(os.path.dirname(sys.executable))
    with open(UNIT) as f:
        text = f.read()
    assert "Before=docker.service" in text
    unit = tmp_path / "pycilium.service"
    unit.write_text(text.replace("/opt/pycilium/.venv", venv))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
