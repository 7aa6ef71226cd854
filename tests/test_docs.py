"""The documentation: the example notebook executes, and Sphinx builds it with -W.

Both need the docs tools (pip install '.[docs]'); without them these tests skip,
unless PYNQ_ALLOC_REQUIRE_TOOLS=1 (CI), which makes a missing tool a failure.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOK = DOCS / "examples" / "dma_round_trip.ipynb"


def need(module):
    """Import a tool or skip (fail when PYNQ_ALLOC_REQUIRE_TOOLS=1)."""
    try:
        return pytest.importorskip(module, reason=f"{module} not installed (pip install '.[docs]')")
    except pytest.skip.Exception:
        if os.environ.get("PYNQ_ALLOC_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{module} is required (PYNQ_ALLOC_REQUIRE_TOOLS=1) but not installed")
        raise


def outputs(cell, kind):
    return [o for o in cell.get("outputs", []) if o["output_type"] == kind]


def stream_text(nb):
    cells = [c for c in nb.cells if c.cell_type == "code"]
    return ["".join(o["text"] for o in outputs(c, "stream")) for c in cells]


@pytest.fixture(scope="module")
def executed():
    """The notebook, executed in a fresh kernel that imports this checkout's pynq_alloc."""
    nbformat = need("nbformat")
    nbclient = need("nbclient")
    need("ipykernel")
    stored = nbformat.read(NOTEBOOK, as_version=4)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        # the kernel's working directory: `import pynq_alloc` finds this checkout's
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()  # CellExecutionError on any error outside cells tagged raises-exception
    return stored, nb


def test_notebook_round_trip(executed):
    _, nb = executed
    text = "".join(stream_text(nb))
    assert "CPU before invalidate(): [0, 10, 20, 30, 40, 50, 60, 70]  <- stale" in text
    assert "CPU after invalidate():  [1, 11, 21, 31, 41, 51, 61, 71]" in text
    assert "live buffers on the backend: 0" in text


def test_notebook_shows_missing_flush_as_coherency_error(executed):
    _, nb = executed
    tagged = [c for c in nb.cells if "raises-exception" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    (error,) = outputs(tagged[0], "error")
    assert error["ename"] == "CoherencyError"
    assert "never flushed" in error["evalue"] and "flush()" in error["evalue"]


def test_notebook_rich_display(executed):
    _, nb = executed
    html = [
        o["data"]["text/html"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in outputs(c, "execute_result") + outputs(c, "display_data")
        if "text/html" in o.get("data", {})
    ]
    assert html, "no cell showed a Buffer's _repr_html_"
    assert re.search(r"device_address 0x[0-9a-f]+", html[0]) and "backend sim" in html[0]


def test_stored_outputs_are_current(executed):
    """What readers see in the stored notebook is what it prints today."""
    stored, nb = executed
    assert stream_text(stored) == stream_text(nb), (
        "docs/examples/dma_round_trip.ipynb has stale outputs; refresh them with "
        "`jupyter execute --inplace docs/examples/dma_round_trip.ipynb`"
    )


def test_sphinx_build_is_warning_free(tmp_path):
    need("sphinx")
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout}{proc.stderr}"
    api = (out / "api.html").read_text()
    # autodoc really imported the extension: signatures and C docstrings are there
    for needle in ("allocate", "cacheable", "device_address", "Make the CPU", "CoherencyError",
                   "BufferLeakError", "open_backend"):
        assert needle in api, f"{needle!r} missing from the built API page"
    for page in ("migration.html", "backends.html", "examples.html"):
        assert (out / page).exists()
    assert (out / "_downloads").exists(), "the notebook is not offered for download"
