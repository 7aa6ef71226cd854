"""bench/cocotb_axi.py runs end to end on its tiny setting (no timing is asserted)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import simrun

ROOT = simrun.HERE.parent.parent


def test_cocotb_bench_quick_runs_and_reports_its_figure(tmp_path):
    simrun.require_tools(pytest)
    import pynq_alloc

    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    root = str(Path(pynq_alloc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "cocotb_axi.py"), "--quick"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| AXI4 copy 4 KiB")]
    assert len(rows) == 1, r.stdout
    assert "cocotbext-axi AxiRam" in rows[0] and "MB/CPU-s" in rows[0]
