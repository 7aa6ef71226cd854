"""The type stubs: `mypy --strict` passes on an example using every public name.

tests/typing_example.py uses every name in pynq_alloc.__all__ (and runs, so the
stubs cannot promise what the module does not do); the pytest plugin is checked
too. Without mypy the check skips, unless PYNQ_ALLOC_REQUIRE_TOOLS=1 (CI).
"""
import os
import runpy
import tempfile
from pathlib import Path

import pytest

import pynq_alloc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "typing_example.py"
PLUGIN = ROOT / "pynq_alloc" / "pytest_plugin.py"


def test_example_uses_every_public_name():
    text = EXAMPLE.read_text()
    missing = [name for name in pynq_alloc.__all__ if name not in text]
    assert not missing, f"tests/typing_example.py does not use {missing}"


def test_example_runs():
    saved = pynq_alloc.default_backend()  # main() changes the default: give it back
    try:
        namespace = runpy.run_path(str(EXAMPLE))
        assert namespace["main"]() == 0
    finally:
        pynq_alloc.set_default_backend(saved)


def test_mypy_strict_passes():
    try:
        api = pytest.importorskip("mypy.api", reason="mypy not installed (pip install '.[test]')")
    except pytest.skip.Exception:
        if os.environ.get("PYNQ_ALLOC_REQUIRE_TOOLS") == "1":
            pytest.fail("mypy is required (PYNQ_ALLOC_REQUIRE_TOOLS=1) but not installed")
        raise
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypy finds pynq_alloc/__init__.pyi of this checkout
    try:
        stdout, stderr, status = api.run(
            [
                "--strict",
                # outside the work tree; kept between runs (numpy's stubs take ~15 s cold)
                "--cache-dir",
                os.path.join(tempfile.gettempdir(), "pynq_alloc-mypy-cache"),
                str(EXAMPLE.relative_to(ROOT)),
                str(PLUGIN.relative_to(ROOT)),
            ]
        )
    finally:
        os.chdir(cwd)
    assert status == 0, f"mypy --strict failed:\n{stdout}{stderr}"
    assert "Success" in stdout
