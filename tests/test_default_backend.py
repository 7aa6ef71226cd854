"""Default backend selection, run in fresh interpreters so the environment is theirs."""
import json
import os
import subprocess
import sys

import pytest


def run(code, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("PYNQ_ALLOC_")}
    e.update(env)
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=e,
                          capture_output=True, text=True)


def test_off_board_falls_back_to_sim_with_one_warning(tmp_path):
    code = "import pynq_alloc as p; a = p.allocate(4); b = p.allocate(4); print(a.backend.name)"
    r = run(code, PYNQ_ALLOC_SYSROOT=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sim"
    assert r.stderr.count("no DMA hardware found") == 1 and "UserWarning" in r.stderr


def test_fallback_warning_points_at_the_callers_line(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text("import pynq_alloc\n\n\ndef work():\n"
                      "    return pynq_alloc.allocate(4)  # line 5\n\n\nwork()\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith("PYNQ_ALLOC_")}
    e["PYNQ_ALLOC_SYSROOT"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-W", "always", str(script)], env=e, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert f"{script}:5: UserWarning: pynq_alloc: no DMA hardware found" in r.stderr
    # at module level too (stacklevel 2 named "sys:1" there)
    r = run("import pynq_alloc\n\npynq_alloc.default_backend()", PYNQ_ALLOC_SYSROOT=str(tmp_path))
    assert "<string>:3: UserWarning" in r.stderr, r.stderr


def test_on_a_board_never_falls_back_silently(tmp_path):
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    r = run("import pynq_alloc as p; p.allocate(4)", PYNQ_ALLOC_SYSROOT=str(tmp_path))
    assert r.returncode != 0
    assert "RuntimeError: no usable DMA memory backend on this board" in r.stderr
    assert "PYNQ_ALLOC_BACKEND" in r.stderr


def test_env_variable_wins(tmp_path):
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    r = run("import pynq_alloc as p; print(p.allocate(4).backend.spec)",
            PYNQ_ALLOC_SYSROOT=str(tmp_path), PYNQ_ALLOC_BACKEND="sim")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sim" and "Warning" not in r.stderr


def test_env_variable_with_unknown_backend(tmp_path):
    r = run("import pynq_alloc as p; p.allocate(4)", PYNQ_ALLOC_BACKEND="bogus")
    assert "ValueError: unknown backend 'bogus'" in r.stderr


def test_demo_runs_on_a_machine_without_fpga(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("PYNQ_ALLOC_")}
    e["PYNQ_ALLOC_SYSROOT"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "pynq_alloc", "demo"], env=e, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "round trip OK" in r.stdout
    assert "device read  [0, 3, 6, 9, 12, 15, 18, 21]" in r.stdout
    assert "CPU after invalidate():  [1, 4, 7, 10, 13, 16, 19, 22]" in r.stdout
    # the demo's buffer is cacheable, so the stale read before invalidate() shows
    assert "CPU before invalidate(): [0, 3, 6, 9, 12, 15, 18, 21]  (stale" in r.stdout
    assert "__main__.py" in r.stderr and "no DMA hardware found" in r.stderr


@pytest.mark.parametrize("spec, words", [("nonsense", "unknown backend 'nonsense'"),
                                         ("sim:x", "takes no argument"),
                                         ("udmabuf:/nonexistent", "udmabuf")])
def test_demo_with_a_bad_backend_prints_one_line(spec, words):
    r = subprocess.run([sys.executable, "-m", "pynq_alloc", "demo", "--backend", spec],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m pynq_alloc demo: "), r.stderr
    assert words in lines[0] and "Traceback" not in r.stderr and r.stdout == ""


def test_info_json():
    r = subprocess.run([sys.executable, "-m", "pynq_alloc", "info", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = {row["backend"]: row for row in json.loads(r.stdout)}
    assert rows["sim"]["usable"] is True and rows["sim"]["total"] == 256 << 20
    assert "hugepage" in rows and isinstance(rows["hugepage"]["reason"], str)
