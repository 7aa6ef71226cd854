"""The benchmark script runs end to end on its tiny setting (no timing is asserted)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_runs_and_reports_every_figure(tmp_path):
    script = os.path.join(ROOT, "bench", "run.py")
    r = subprocess.run([sys.executable, script, "--quick"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    for figure in ("buf[10:20]", "view.device_address", "allocate(1024, 'u4') + release, sim",
                   "allocate(16, 'u4', align=64)", "flush() on a coherent buffer",
                   "live buffers", "sim non-coherent flush()", "import + first allocate",
                   "peak RSS", "flush() of 4 KiB, cacheable (sim",
                   "floor: copy of one 64 B line per row",
                   "floor: a Buffer and its plain base per 64 B"):
        assert figure in r.stdout, figure
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "x " in line]
    assert len(rows) >= 8


def test_crossover_quick_reports_the_extra_lines_per_run(tmp_path):
    script = os.path.join(ROOT, "bench", "crossover.py")
    r = subprocess.run([sys.executable, script, "--quick"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines() if line.startswith("| sim | ")]
    # 4 run lengths x 2 row widths, then the summary
    assert [(row[2].strip(), row[3].strip()) for row in rows[:8]] == [
        (str(run), str(width)) for run in (64, 128, 256, 512) for width in (2048, 4096)]
    for row in rows[:8]:
        float(row[4])
    assert "median" in rows[8][4] and "max" in rows[8][4]
