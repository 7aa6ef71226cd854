"""Sphinx configuration: plain Sphinx + autodoc; `sphinx-build -W -b html docs OUT` is clean."""
import os
import sys

# Document this checkout's package (its compiled part is found as `import
# pynq_alloc` finds it: built in place, or from the installed copy).
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
# Importing must never probe hardware or warn while building the docs.
os.environ.setdefault("PYNQ_ALLOC_BACKEND", "sim")

import pynq_alloc  # noqa: E402

project = "pynq_alloc"
author = "pynq_alloc contributors"
copyright = "pynq_alloc contributors"
release = version = pynq_alloc.__version__

# autodoc only: no extension that needs the network or a notebook renderer
extensions = ["sphinx.ext.autodoc"]

root_doc = "index"
exclude_patterns = ["_build", "examples/*.ipynb", "**/.ipynb_checkpoints"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_title = f"pynq_alloc {release}"

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the C functions carry text signatures, not annotations
autodoc_default_options = {"undoc-members": False}


# The compiled module's docstrings are plain text, one statement per line
# ("target: ...", "align: ..."): keep their line breaks and show `*` literally.
def _plain_c_docstring(app, what, name, obj, options, lines):
    if not name.startswith("pynq_alloc.") or name.startswith("pynq_alloc.pytest_plugin"):
        return
    text = []
    for line in lines:
        line = line.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`")
        text.append(line)
        if line.strip():
            text.append("")
    lines[:] = text


# Signatures: Buffer is made by allocate(), not by ndarray's constructor; and
# the C methods' text signatures have no "$self", so autodoc would drop their
# first real parameter as if it were self: use the text signature as it is.
def _c_signature(app, what, name, obj, options, signature, return_annotation):
    if name == "pynq_alloc.Buffer":
        return "", None
    text = getattr(obj, "__text_signature__", None)
    if what == "method" and name.startswith("pynq_alloc.") and text and not text.startswith("($"):
        return text, return_annotation
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _plain_c_docstring)
    app.connect("autodoc-process-signature", _c_signature)
