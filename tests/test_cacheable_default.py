"""PYNQ's default: cacheable=None is non-cacheable (coherent) memory; cacheable=True
is cached with exact-extent maintenance; per-backend (open_backend(..., cacheable=True))
and process-wide (PYNQ_ALLOC_CACHEABLE=1, default backend only) defaults.
udmabuf/dmaheap/zocl/xlnk defaults are pinned down in their own test files."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pynq_alloc
from pynq_alloc import CoherencyError

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("PYNQ_ALLOC_")}
    full["PYTHONPATH"] = PKG_ROOT + os.pathsep + full.get("PYTHONPATH", "")
    full.update({k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True)


def test_sim_default_is_coherent_like_pynq(sim_default):
    buf = sim_default.allocate(16, "u4")
    assert buf.coherent is True and buf.cacheable is False
    buf[:] = np.arange(16)
    # no flush(): the device sees the CPU's data at once, as with PYNQ's non-cacheable memory
    assert sim_default.device_read(buf.device_address, 64) == np.arange(16, dtype="u4").tobytes()
    sim_default.device_write(buf.device_address, np.full(16, 7, "u4").tobytes())
    assert buf.tolist() == [7] * 16  # and the CPU sees the device's data without invalidate()
    info = sim_default.info()
    assert info["coherent"] is True and info["cacheable"] is False
    assert sim_default.coherent is True


def test_sim_cacheable_true_per_buffer_needs_maintenance(sim_default):
    buf = sim_default.allocate(16, "u4", cacheable=True)
    assert buf.coherent is False and buf.cacheable is True
    buf[:] = 5
    assert sim_default.device_read(buf.device_address, 64) == bytes(64)  # still in the cache
    buf.flush()
    assert sim_default.device_read(buf.device_address, 64) == np.full(16, 5, "u4").tobytes()
    sim_default.device_write(buf.device_address, np.full(16, 9, "u4").tobytes())
    assert buf.tolist() == [5] * 16  # stale until invalidate()
    buf.invalidate()
    assert buf.tolist() == [9] * 16


@pytest.mark.parametrize("value", [True, 1])
def test_backend_default_cacheable(value):
    with pynq_alloc.open_backend("sim", size=1 << 20, cacheable=value) as be:
        assert be.info()["cacheable"] is True and be.info()["coherent"] is False
        assert be.coherent is False
        a = be.allocate(8)
        b = be.allocate(8, cacheable=False)  # the per-buffer choice still wins
        assert (a.coherent, b.coherent) == (False, True)
        del a, b


@pytest.mark.parametrize("value", [None, False, 0])
def test_backend_default_not_cacheable(value):
    with pynq_alloc.open_backend("sim", size=1 << 20, cacheable=value) as be:
        assert be.info()["cacheable"] is False and be.info()["coherent"] is True
        a = be.allocate(8)
        b = be.allocate(8, cacheable=True)
        assert (a.coherent, b.coherent) == (True, False)
        del a, b


def test_coherent_port_makes_cacheable_buffers_coherent(sim_coherent):
    buf = sim_coherent.allocate(8, cacheable=True)
    assert buf.coherent is True
    with pynq_alloc.open_backend("sim", size=1 << 20, coherent=True, cacheable=True) as be:
        assert be.info()["coherent"] is True and be.info()["cacheable"] is True
        assert be.allocate(8).coherent is True


@pytest.mark.parametrize("bad, exc", [("no", TypeError), ("", TypeError), (2, ValueError),
                                      (-1, ValueError), (1.0, TypeError), ([1], TypeError),
                                      (np.True_, TypeError)])
def test_cacheable_accepts_only_none_bool_0_1(sim_default, bad, exc):
    with pytest.raises(exc, match="cacheable must be None"):
        sim_default.allocate(4, cacheable=bad)
    with pytest.raises(exc, match="cacheable must be None"):
        pynq_alloc.allocate(4, target=sim_default, cacheable=bad)
    with pytest.raises(exc, match="cacheable must be None"):
        pynq_alloc.open_backend("sim", size=1 << 20, cacheable=bad)
    assert sim_default.info()["buffers"] == 0
    assert sim_default.allocate(4, cacheable=0).coherent is True
    assert sim_default.allocate(4, cacheable=1).coherent is False


def test_checker_ignores_default_buffers_and_checks_cacheable_ones():
    with pynq_alloc.open_backend("sim", size=1 << 20, check="raise") as be:
        plain = be.allocate(16, "u1")
        plain[:] = 1
        assert be.device_read(plain.device_address, 16) == bytes([1]) * 16
        cached = be.allocate(16, "u1", cacheable=True)
        cached[:] = 1
        with pytest.raises(CoherencyError, match="never flushed"):
            be.device_read(cached.device_address, 16)
        del plain, cached


CODE = ("import pynq_alloc as p\nb = p.allocate(16, 'u1')\nbe = p.default_backend()\n"
        "o = p.open_backend('sim').allocate(16, 'u1')\n"
        "print(b.coherent, be.info()['cacheable'], be.coherent, o.coherent)\n")


def test_env_cacheable_sets_the_default_backend_only():
    r = run(CODE, PYNQ_ALLOC_BACKEND="sim", PYNQ_ALLOC_CACHEABLE="1")
    assert r.returncode == 0, r.stderr
    # the default backend is cacheable; a backend named by spec keeps PYNQ's default
    assert r.stdout.split() == ["False", "True", "False", "True"]


@pytest.mark.parametrize("value", ["", "0"])
def test_env_cacheable_unset_or_0_is_pynqs_default(value):
    r = run(CODE, PYNQ_ALLOC_BACKEND="sim", PYNQ_ALLOC_CACHEABLE=value)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "True", "True"]


def test_env_cacheable_bad_value_is_named():
    r = run(CODE, PYNQ_ALLOC_BACKEND="sim", PYNQ_ALLOC_CACHEABLE="maybe")
    assert r.returncode != 0
    assert "PYNQ_ALLOC_CACHEABLE=maybe" in r.stderr and "Traceback" in r.stderr


def test_env_cacheable_applies_to_the_sim_fallback():
    r = run("import warnings; warnings.simplefilter('ignore')\n" + CODE,
            PYNQ_ALLOC_CACHEABLE="1", PYNQ_ALLOC_SYSROOT="/nonexistent-sysroot")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == ["False", "True"]


def test_hugepage_default(huge):
    """hugetlb pages map cached only: on x86 the device snoops, so coherent either way;
    elsewhere None gives cached memory, reported non-coherent."""
    buf = huge.allocate(100, "u1")
    cached = huge.allocate(100, "u1", cacheable=True)
    x86 = os.uname().machine in ("x86_64", "i686")
    assert buf.coherent is x86 and huge.info()["coherent"] is x86
    assert cached.coherent is x86
    buf[:] = 3
    buf.flush()
    assert bytes(buf) == bytes([3]) * 100
