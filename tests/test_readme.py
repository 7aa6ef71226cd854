"""The README's off-board round trip runs as printed, and its set-up claims hold."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pynq_alloc

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# where the pynq_alloc under test lives (the checkout, or an installed wheel)
PKG_PATH = str(Path(pynq_alloc.__file__).resolve().parent.parent)


def section(title):
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start:end if end != -1 else None]


def test_round_trip_example_runs_as_printed(tmp_path):
    code = re.search(r"```python\n(.*?)```", section("## A complete round trip"), re.S).group(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNQ_ALLOC_")}
    env["PYTHONPATH"] = PKG_PATH + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[0, 3, 6, 9, 12, 15, 18, 21]",
                                     "[1, 4, 7, 10, 13, 16, 19, 22]"]
    assert r.stderr == ""  # an explicit backend: no fallback warning


def test_off_board_demo_starts_with_the_warning_the_readme_shows(tmp_path):
    shown = re.search(r"UserWarning: (pynq_alloc: no DMA hardware found.*)",
                      section("## Set up")).group(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNQ_ALLOC_")}
    env["PYTHONPATH"] = PKG_PATH + os.pathsep + env.get("PYTHONPATH", "")
    env["PYNQ_ALLOC_SYSROOT"] = str(tmp_path)  # no /proc/device-tree: off-board
    r = subprocess.run([sys.executable, "-m", "pynq_alloc", "demo"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.endswith("UserWarning: " + shown), first
    assert re.search(r"pynq_alloc/__main__\.py:\d+: UserWarning", first)


def test_sections_in_the_order_a_new_user_needs_them():
    heads = [h for h in re.findall(r"^## (.+)$", README, re.M)]
    order = ["Set up", "A complete round trip, off-board", "Usage", "Lifetime", "Backends",
             "From PYNQ", "pytest plugin", "Development"]
    assert [h for h in heads if h in order] == order
    assert section("## Lifetime").split("\n", 3)[2].startswith("`del` and `with` are always safe")
