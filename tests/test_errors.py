"""Bad input: a clear Python exception, nothing allocated."""
import re

import numpy as np
import pytest

import pynq_alloc
from pynq_alloc import allocate


def nothing_used(be):
    info = be.info()
    return info["used"] == 0 and info["buffers"] == 0


@pytest.mark.parametrize("shape", [-1, (3, -2), (-5,)])
def test_negative_dimensions(sim, shape):
    with pytest.raises(ValueError, match="negative dimensions"):
        sim.allocate(shape)
    assert nothing_used(sim)


@pytest.mark.parametrize("shape", [(2**40, 2**40), (2**62, 4), (2**31, 2**31, 2**31)])
def test_overflowing_shapes(sim, shape):
    # NumPy's own dimension check comes first where intp is 32 bits
    with pytest.raises(ValueError, match="too big|Maximum allowed dimension exceeded"):
        sim.allocate(shape, "u8")
    assert nothing_used(sim)


@pytest.mark.parametrize("shape", [3.0, "3", [[1, 2]], object()])
def test_bad_shape_types(sim, shape):
    with pytest.raises(TypeError):
        sim.allocate(shape)
    assert nothing_used(sim)


@pytest.mark.parametrize("dtype", [object, "O", [("a", "O")], [("a", "u4"), ("b", "O", (2,))]])
def test_object_dtypes_refused(sim, dtype):
    with pytest.raises(TypeError, match="Python objects"):
        sim.allocate(4, dtype)
    assert nothing_used(sim)


def test_none_shape_follows_numpy(sim):
    # NumPy 1.x took None as () with a DeprecationWarning; NumPy 2 refuses it
    try:
        ref = np.empty(None)
    except TypeError:
        with pytest.raises(TypeError):
            sim.allocate(None)
    else:
        with pytest.warns(DeprecationWarning):
            assert sim.allocate(None, "f8").shape == ref.shape
    assert nothing_used(sim)


def test_bad_dtype(sim):
    with pytest.raises(TypeError):
        sim.allocate(4, "not a dtype")
    assert nothing_used(sim)


@pytest.mark.parametrize("align", [0, 3, 48, -64, 2**31, 2**40])
def test_bad_align(sim, align):
    with pytest.raises(ValueError, match="power of two"):
        sim.allocate(4, align=align)
    assert nothing_used(sim)


@pytest.mark.parametrize("align", [1.0, "64", True])
def test_align_type(sim, align):
    with pytest.raises(TypeError):
        sim.allocate(4, align=align)


def test_too_large_request_says_what_is_free(sim):
    keep = sim.allocate(1 << 20, "u1")
    with pytest.raises(MemoryError) as exc:
        sim.allocate(32 << 20, "u1")
    msg = str(exc.value)
    info = sim.info()
    assert "33554432" in msg and info_figures(msg) == figures_of(info), (msg, info)
    assert info["buffers"] == 1
    del keep
    assert nothing_used(sim)


def info_figures(msg):
    """The figures an out-of-memory message quotes from info()."""
    m = re.search(r"info\(\): used (\d+) of (\d+) bytes by (\d+) buffer\(s\) \((\d+) requested\), "
                  r"free (\d+), largest_free (\d+)", msg)
    assert m is not None, msg
    return tuple(int(g) for g in m.groups())


def figures_of(info):
    return tuple(info[k] for k in ("used", "total", "buffers", "requested", "free", "largest_free"))


def test_65537th_page_aligned_tiny_buffer_fails_with_info_figures():
    """At the default align=4096 a 64-byte buffer occupies a whole page of sim's
    region: 65 536 of them fill 256 MiB, info() says so (used == total, free 0,
    4 MiB requested), and the 65 537th fails with a message quoting those figures."""
    be = pynq_alloc.open_backend("sim", size=256 << 20)
    try:
        bufs = [be.allocate(64, "u1") for _ in range(65536)]
        info = be.info()
        assert info["buffers"] == 65536 and info["requested"] == 65536 * 64
        assert info["used"] == info["total"] == 256 << 20 and info["free"] == 0
        assert info["largest_free"] == 0
        assert len({b.device_address >> 12 for b in bufs}) == 65536  # a page each
        with pytest.raises(MemoryError) as exc:
            be.allocate(64, "u1")
        assert info_figures(str(exc.value)) == figures_of(be.info()) == figures_of(info)
        # a 64-aligned buffer does not fit either: the padding is occupied, not free
        with pytest.raises(MemoryError):
            be.allocate(64, "u1", align=64)
        del bufs[0]
        info = be.info()
        assert (info["used"], info["free"], info["requested"]) == (
            (256 << 20) - 4096, 4096, 65535 * 64)
        bufs.append(be.allocate(64, "u1"))
        del bufs
        info = be.info()
        assert (info["used"], info["requested"], info["free"]) == (0, 0, 256 << 20)
    finally:
        be.close()


def test_requested_and_used_at_each_alignment(sim):
    """used counts the block's lines and its alignment padding (up to a page);
    requested counts nbytes."""
    cases = [(1000, 64, 1024), (1000, None, 4096), (5000, None, 8192), (64, 256, 256),
             (100, 1 << 16, 4096), (0, None, 4096), (4097, 8192, 8192)]
    for nbytes, align, used in cases:
        buf = sim.allocate(nbytes, "u1", align=align)
        info = sim.info()
        assert (info["used"], info["requested"]) == (used, nbytes), (nbytes, align, info)
        assert info["free"] == info["total"] - used
        del buf
    assert nothing_used(sim) and sim.info()["requested"] == 0


def test_unknown_backend_lists_known():
    with pytest.raises(ValueError, match="known backends: zocl, udmabuf, dmaheap, xlnk, sim, hugepage"):
        pynq_alloc.open_backend("nosuch")
    with pytest.raises(ValueError, match="known backends"):
        allocate(4, target="nosuch")


def test_unknown_backend_option():
    with pytest.raises(ValueError, match="no option 'sise'.*size"):
        pynq_alloc.open_backend("sim", sise=4096)


@pytest.mark.parametrize("opts", [dict(size=-5), dict(size=100), dict(size="big"),
                                  dict(coherent="maybe"), dict(check="loud"),
                                  dict(base_address=2**64 - 4096)])
def test_bad_sim_options(opts):
    with pytest.raises(ValueError):
        pynq_alloc.open_backend("sim", **opts)


def test_bad_option_value_type():
    with pytest.raises(TypeError):
        pynq_alloc.open_backend("sim", size=1.5)


def test_bad_target_type(sim):
    with pytest.raises(TypeError, match="target must be"):
        allocate(4, target=42)


def test_allocate_argument_errors():
    with pytest.raises(TypeError):
        allocate()
    with pytest.raises(TypeError):
        allocate(4, "u4", None, 5)
    with pytest.raises(TypeError):
        allocate(4, colour="red")
    with pytest.raises(TypeError):
        allocate(4, shape=4)


def test_zero_size_is_allowed(sim):
    buf = sim.allocate((0, 5))
    assert buf.size == 0 and buf.device_address is not None
    buf.flush()
    del buf
    assert nothing_used(sim)


def test_closed_backend_refuses(sim):
    sim.close()
    with pytest.raises(ValueError, match="closed"):
        sim.allocate(4)
    with pytest.raises(ValueError, match="closed"):
        sim.device_read(0x4000_0000, 4)


def test_non_bool_cacheable_is_truthiness(sim):
    assert sim.allocate(4, cacheable=0).coherent is True
    assert np.all(sim.allocate(4, cacheable=1) == 0)


def test_unaligned_base_counts_the_lines_skipped_to_align():
    """sim with a base_address off the alignment: the block takes room to skip
    to the first aligned device address, and used counts all of it (free is
    what is left), while requested stays nbytes."""
    be = pynq_alloc.open_backend("sim", size=1 << 20, base_address=0x4000_0040)
    try:
        buf = be.allocate(64, "u1", align=4096)
        assert buf.device_address % 4096 == 0
        info = be.info()
        # the 64 B span padded to 4096, plus align - 64 bytes of room to skip
        assert info["used"] == 4096 + 4096 - 64 and info["requested"] == 64
        assert info["free"] == info["total"] - info["used"]
        del buf
        assert nothing_used(be) and be.info()["requested"] == 0
    finally:
        be.close()
