"""Views keep their device address; anything that does not share memory has none."""
import pickle

import numpy as np
import pytest

from pynq_alloc import Buffer


def check_view(view, base):
    assert isinstance(view, Buffer)
    assert view.device_address - base.device_address == view.virtual_address - base.virtual_address
    assert view.offset == view.virtual_address - base.virtual_address


def test_slice_addresses(sim):
    buf = sim.allocate(1024, "u4")
    v = buf[10:20]
    check_view(v, buf)
    assert v.device_address == buf.device_address + 40
    check_view(v[3:], buf)
    assert v[3:].device_address == buf.device_address + 52


def test_2d_slices_and_transpose(sim):
    buf = sim.allocate((16, 32), "u2")
    for v in (buf[3], buf[2:5, 4:9], buf[:, 7], buf.T, buf.T[5:], buf.reshape(32, 16)[1:],
              buf.ravel(), buf[::-1, ::-2], buf[5:2:-1]):
        check_view(v, buf)
    assert buf[2:5, 4:9].device_address == buf.device_address + (2 * 32 + 4) * 2
    assert buf[::-1].device_address == buf.device_address + 15 * 32 * 2


def test_view_dtype_and_asanyarray(sim):
    buf = sim.allocate(64, "u4")
    v = buf.view("u1")
    check_view(v, buf)
    assert v.shape == (256,)
    check_view(buf[4:].view("u2"), buf)
    a = np.asanyarray(buf)
    assert a is buf
    check_view(np.asanyarray(buf[5:]), buf)


def test_views_share_memory(sim):
    buf = sim.allocate(8, "u4")
    buf[2:4][:] = 9
    assert buf.tolist() == [0, 0, 9, 9, 0, 0, 0, 0]


def test_copies_have_no_device_address(sim):
    buf = sim.allocate(8, "u4")
    assert type(np.array(buf)) is np.ndarray
    forced = (buf.copy(), buf.astype("f4"), np.array(buf, subok=True), buf[[1, 2]], buf.flatten(),
              buf[buf > 0], np.copy(buf, subok=True))
    for derived in forced:
        assert isinstance(derived, Buffer)
        assert derived.device_address is None and derived.physical_address is None
        assert derived.offset is None
        with pytest.raises(ValueError, match="not backed by device memory"):
            derived.flush()
        with pytest.raises(ValueError, match="not backed by device memory"):
            derived.invalidate()


def test_ufunc_and_reduction_results_are_plain(sim):
    buf = sim.allocate(8, "u4")
    buf[:] = np.arange(8)
    for res in (buf + 1, np.sqrt(buf), buf * buf, buf.sum(axis=0, keepdims=True), -buf,
                np.add.outer(buf, buf)):
        assert type(res) is np.ndarray
    plain = np.arange(8, dtype="u4")
    assert buf.sum() == 28 and type(buf.sum()) is type(plain.sum())  # uint64, or uint32 on ILP32
    assert type(buf.max()) is np.uint32


def test_in_place_ufunc_keeps_buffer(sim):
    buf = sim.allocate(8, "u4")
    view = buf[2:]
    out = np.add(view, 5, out=view)
    assert out is view and isinstance(out, Buffer) and out.device_address is not None
    buf += 1
    assert type(buf) is Buffer and buf.tolist() == [1, 1, 6, 6, 6, 6, 6, 6]


def test_pickle_gives_plain_ndarray(sim):
    buf = sim.allocate((3, 2), "i2")
    buf[:] = [[1, 2], [3, 4], [5, 6]]
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(buf, protocol=proto))
        assert type(back) is np.ndarray and back.tolist() == buf.tolist()
        back = pickle.loads(pickle.dumps(buf[::-1], protocol=proto))
        assert type(back) is np.ndarray and back.tolist() == buf[::-1].tolist()


def test_memoryview_and_frombuffer_see_the_memory(sim):
    buf = sim.allocate(4, "u4")
    m = memoryview(buf)
    np.frombuffer(m, "u4")[:] = 3
    assert buf.tolist() == [3, 3, 3, 3]


def test_coherent_view_attributes(sim):
    buf = sim.allocate(8, cacheable=False)
    assert buf[2:].coherent is True and buf[2:].backend is sim


def test_buffer_type_gives_array_finalize_as_the_descriptor_does(sim):
    # Buffer's metatype answers NumPy's per-view lookup of __array_finalize__
    # itself: the same object the descriptor gives, and only for Buffer
    descr = Buffer.__dict__["__array_finalize__"]
    assert Buffer.__array_finalize__ is descr.__get__(None, Buffer)
    assert type(Buffer).__name__ == "_BufferType" and isinstance(Buffer, type)

    calls = []

    class Sub(Buffer):
        def __array_finalize__(self, obj):
            calls.append(type(obj).__name__)
            self._array_finalize(obj)  # super().__array_finalize__ needs NumPy 2

    assert Sub.__array_finalize__ is Sub.__dict__["__array_finalize__"]
    buf = sim.allocate(16, 'u1')
    view = buf.view(Sub)[4:]
    assert type(view) is Sub and calls
    assert view.device_address == buf.device_address + 4
    assert pickle.loads(pickle.dumps(Buffer)) is Buffer
