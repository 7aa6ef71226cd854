"""Shared fixtures: fresh backends per test, so accounting starts at zero."""
import os

import pytest

# Tests that use the default backend get the simulator without the fallback
# warning; the fallback itself is tested in a subprocess (test_default_backend.py).
os.environ.setdefault("PYNQ_ALLOC_BACKEND", "sim")

import pynq_alloc  # noqa: E402

LINE = 64


# `sim` and `checked` test cache semantics, so their buffers are cacheable
# (non-coherent) by default; PYNQ's own default (non-cacheable, coherent) is
# what `sim_default` gives and what test_cacheable_default.py pins down.
@pytest.fixture
def sim():
    be = pynq_alloc.open_backend("sim", size=16 << 20, cacheable=True)
    yield be
    be.close()


@pytest.fixture
def sim_coherent():
    be = pynq_alloc.open_backend("sim", size=16 << 20, coherent=True)
    yield be
    be.close()


@pytest.fixture
def sim_default():
    be = pynq_alloc.open_backend("sim", size=16 << 20)
    yield be
    be.close()


@pytest.fixture
def checked():
    be = pynq_alloc.open_backend("sim", size=16 << 20, check="raise", cacheable=True)
    yield be
    be.close()


def hugepage_or_skip():
    """The hugepage backend, or a skip saying why; PYNQ_ALLOC_REQUIRE_HUGEPAGE=1 (CI) fails instead."""
    try:
        return pynq_alloc.open_backend("hugepage")
    except (OSError, MemoryError, NotImplementedError) as exc:
        if os.environ.get("PYNQ_ALLOC_REQUIRE_HUGEPAGE"):
            pytest.fail(f"hugepage backend required but not usable: {exc}")
        pytest.skip(f"hugepage backend not usable here: {exc}")


@pytest.fixture
def huge():
    be = hugepage_or_skip()
    yield be
    be.close()
