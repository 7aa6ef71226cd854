"""The public API, PYNQ-compatible surface and allocate()'s argument forms."""
import numpy as np
import pytest

import pynq_alloc
from pynq_alloc import Buffer, allocate


def test_pynq_docs_example_verbatim():
    # from PYNQ's "Allocate" page, with the import changed
    input_buffer = allocate(shape=(5,), dtype="u4")
    assert isinstance(input_buffer.device_address, int)
    input_buffer[:] = range(5)
    input_buffer.flush()
    assert input_buffer.tolist() == [0, 1, 2, 3, 4]
    assert input_buffer.physical_address == input_buffer.device_address
    input_buffer.sync_to_device()
    input_buffer.invalidate()
    input_buffer.sync_from_device()


def test_buffer_is_ndarray_subclass_defined_in_c():
    buf = allocate(4)
    assert isinstance(buf, np.ndarray) and type(buf) is Buffer
    assert Buffer.__mro__[1] is np.ndarray
    assert Buffer.flush.__class__.__name__ == "method_descriptor"  # C, not Python


def test_default_dtype_is_u4_and_contents_zeroed(sim):
    buf = sim.allocate(1000)
    assert buf.dtype == np.dtype("u4") and buf.shape == (1000,)
    assert not buf.any()


@pytest.mark.parametrize(
    "shape, expect",
    [(5, (5,)), ((5,), (5,)), ([2, 3], (2, 3)), ((), ()), (np.int64(7), (7,)), ((0, 4), (0, 4)),
     ((np.int32(2), 3), (2, 3))],
)
def test_shape_forms_match_numpy(sim, shape, expect):
    buf = sim.allocate(shape, "f8")
    assert buf.shape == expect == np.empty(shape, "f8").shape


@pytest.mark.parametrize(
    "dtype", ["u1", "i2", np.float32, "c16", ">u4", "S3", "U2", "V8", "(2,3)i4",
              [("a", "u2"), ("b", "f8")], np.dtype("M8[ns]"), "?"],
)
def test_dtype_forms_match_numpy(sim, dtype):
    buf = sim.allocate((3, 2), dtype)
    ref = np.empty((3, 2), dtype)
    assert buf.dtype == ref.dtype and buf.shape == ref.shape and buf.nbytes == ref.nbytes


def test_unsized_flexible_dtypes_follow_numpy(sim):
    for code in ("S", "U", "V"):
        assert sim.allocate(3, code).dtype == np.empty(3, code).dtype


def test_attributes(sim):
    buf = sim.allocate((4, 4), "u2")
    assert buf.virtual_address == buf.__array_interface__["data"][0]
    assert buf.offset == 0
    assert buf.coherent is False and buf.cacheable is True
    assert buf.backend is sim
    assert buf.device_address == 0x4000_0000  # the first block of a fresh sim


def test_cacheable_false_gives_coherent_buffer(sim):
    buf = sim.allocate(16, cacheable=False)
    assert buf.coherent is True and buf.cacheable is False
    buf[:] = 7
    # coherent: the device sees CPU writes without a flush
    assert np.frombuffer(sim.device_read(buf.device_address, buf.nbytes), "u4").tolist() == [7] * 16


def test_align(sim):
    for align in (64, 4096, 1 << 16, 1 << 20):
        a = sim.allocate(3, "u1", align=align)
        assert a.device_address % align == 0 and a.virtual_address % align == 0


def test_default_align_is_page(sim):
    bufs = [sim.allocate(3, "u1") for _ in range(4)]
    assert all(b.device_address % 4096 == 0 for b in bufs)


def test_target_forms(sim):
    assert allocate(4, target=sim).backend is sim
    a = allocate(4, target="sim")
    b = allocate(4, target="sim")
    assert a.backend is b.backend  # a spec string names one shared backend
    assert allocate(4).backend is pynq_alloc.default_backend()


def test_foreign_target_is_called_like_pynq():
    calls = []

    class Memory:
        def allocate(self, shape, dtype, **kwargs):
            calls.append((shape, dtype, kwargs))
            return np.zeros(shape, dtype)

    out = allocate((2, 2), "i2", target=Memory(), cacheable=False)
    assert calls == [((2, 2), "i2", {"cacheable": False})]
    assert out.shape == (2, 2)
    allocate(3, target=Memory())
    assert calls[-1] == (3, "u4", {})


def test_backend_info_keys_and_accounting(sim):
    info = sim.info()
    for key in ("name", "total", "used", "free", "largest_free", "buffers", "coherent"):
        assert key in info
    assert info["name"] == "sim" and info["total"] == 16 << 20
    assert info["used"] == 0 and info["buffers"] == 0 and info["free"] == info["total"]
    buf = sim.allocate(1000, "u4", align=64)
    info = sim.info()
    assert info["used"] == 4032 and info["buffers"] == 1  # rounded up to 64-byte lines
    assert info["free"] == info["total"] - 4032
    del buf
    assert sim.info()["used"] == 0


def test_set_default_backend(sim):
    old = pynq_alloc.default_backend()
    try:
        pynq_alloc.set_default_backend(sim)
        assert pynq_alloc.default_backend() is sim
        assert allocate(3).backend is sim
        pynq_alloc.set_default_backend("sim")
        assert pynq_alloc.default_backend() is not sim
    finally:
        pynq_alloc.set_default_backend(old)


def test_backend_repr_and_name(sim):
    assert sim.name == "sim" and "sim" in repr(sim)


def test_repr_is_numpys_and_html_shows_address(sim):
    buf = sim.allocate(3)
    assert repr(buf) == "Buffer([0, 0, 0], dtype=uint32)"
    html = buf._repr_html_()
    assert f"0x{buf.device_address:x}" in html and "sim" in html
    assert "copy" in buf.copy()._repr_html_()
