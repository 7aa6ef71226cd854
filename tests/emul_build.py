"""Builds the board emulations in tests/emul (LD_PRELOAD shims, the fake
libcma) with this machine's C compiler ($CC, cc, gcc or clang); the tests that
need one skip when there is none."""
import os
import shutil
import subprocess

import pytest


def build_shared(out, source, *flags, what):
    """Compiles source into the shared object out; flags go last (libraries)."""
    cc = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)),
              None)
    if cc is None:
        pytest.skip(f"no C compiler (cc, gcc or clang) to build {what}")
    r = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(out), str(source),
                        *flags], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(out)
