"""pynq_alloc.wrap(): a Buffer over memory another owner provides, with the same views,
address arithmetic and lifetime rules as allocate()'s; the owner lives until the last
view is gone; on_free runs once; freebuffer() never frees the owner's memory."""
import gc
import mmap
import sys
import weakref

import numpy as np
import pytest

import pynq_alloc
from pynq_alloc import Buffer, _pynq_alloc

USER_CACHE = _pynq_alloc.cache_info()["user_space"]


class Frame:
    """A foreign owner with __array_interface__ only (like a DRM frame object)."""

    def __init__(self, n):
        self.mem = np.arange(n, dtype="u2")
        self.__array_interface__ = self.mem.__array_interface__


def test_mmap_views_and_addresses():
    m = mmap.mmap(-1, 4096)
    buf = pynq_alloc.wrap(m, 0x3000_0000)
    assert type(buf) is Buffer and buf.shape == (4096,) and buf.dtype == np.uint8
    assert buf.device_address == buf.physical_address == 0x3000_0000
    assert buf.coherent is True and buf.backend.name == "wrap"
    v = buf[100:200:2]
    assert v.device_address == 0x3000_0000 + 100 and v.offset == 100
    r = buf.view("u4").reshape(64, 16)
    assert r[3, 4].device_address if isinstance(r[3, 4], Buffer) else True
    assert r[3:].device_address == 0x3000_0000 + 3 * 64
    buf[:4] = [1, 2, 3, 4]
    assert m[:4] == b"\x01\x02\x03\x04"  # the same memory, both ways
    m[8:10] = b"\x09\x0a"
    assert buf[8:10].tolist() == [9, 10]
    copy = buf + 1
    assert type(copy) is not Buffer or copy.device_address is None  # a copy has no address
    del v, r, copy, buf
    m.close()


def test_array_interface_owner_is_kept_alive_until_the_last_view():
    frame = Frame(32)
    ref = weakref.ref(frame)
    buf = pynq_alloc.wrap(frame, 0x1000)
    assert buf.dtype == np.uint16 and buf.tolist() == list(range(32))
    view = buf[4:]
    del frame, buf
    gc.collect()
    assert ref() is not None and view.device_address == 0x1000 + 8
    assert view[0] == 4
    del view
    gc.collect()
    assert ref() is None


def test_on_free_runs_once_on_freebuffer():
    m = mmap.mmap(-1, 256)
    calls = []
    buf = pynq_alloc.wrap(m, 0x2000, on_free=calls.append)
    buf[:] = 7
    buf.freebuffer()
    assert calls == [m]  # the wrapped object, to recycle
    assert buf.shape == (0,) and buf.device_address is None
    buf.freebuffer()  # again: nothing more
    del buf
    gc.collect()
    assert calls == [m]
    # the owner's memory is untouched and theirs again (no export is left)
    assert m[:] == bytes([7]) * 256
    m.close()


def test_on_free_runs_when_the_last_view_goes():
    calls = []
    frame = Frame(8)
    buf = pynq_alloc.wrap(frame, 0x4000, on_free=calls.append)
    view = buf[2:]
    del buf
    gc.collect()
    assert calls == []
    del view
    gc.collect()
    assert calls == [frame]


def test_freebuffer_follows_the_usual_rules():
    buf = pynq_alloc.wrap(bytearray(128), 0x5000)
    view = buf[1:]
    with pytest.raises(BufferError, match="view"):
        buf.freebuffer()
    with pytest.raises(BufferError, match="not on a view"):
        view.freebuffer()
    del view
    buf.freebuffer()


def test_the_owner_cannot_close_its_memory_while_wrapped():
    m = mmap.mmap(-1, 4096)
    buf = pynq_alloc.wrap(m, 0x6000)
    with pytest.raises(BufferError):
        m.close()  # exported to the wrap
    buf.freebuffer()
    m.close()


def test_with_statement_frees_the_wrap_not_the_memory():
    data = bytearray(64)
    calls = []
    with pynq_alloc.wrap(data, 0x7000, on_free=calls.append) as buf:
        buf[:] = 3
    assert calls == [data] and data == bytearray([3]) * 64
    data.extend(b"x")  # no export left: the bytearray may resize again


def test_backend_is_reported(sim):
    buf = pynq_alloc.wrap(bytearray(64), 0x8000, backend=sim)
    assert buf.backend is sim
    del buf
    assert sim.info()["buffers"] == 0  # the wrap is not sim's memory


def test_wrap_of_a_pynq_alloc_buffer_syncs_through_its_backend(sim):
    """PYNQ's frame recycling wraps a buffer of the backend: flush()/invalidate() of
    the wrap must reach the (simulated) device, and the buffer can't be freed under it."""
    mem = sim.allocate(64, "u4")
    assert not mem.coherent
    calls = []
    frame = pynq_alloc.wrap(mem, mem.device_address, coherent=False, backend=sim,
                            on_free=calls.append)
    assert frame.backend is sim and not frame.coherent
    frame[:] = 11
    assert sim.device_read(mem.device_address, 256) == bytes(256)
    frame[8:].flush()
    assert sim.device_read(mem.device_address + 32, 224) == np.full(56, 11, "u4").tobytes()
    sim.device_write(mem.device_address, np.full(64, 5, "u4").tobytes())
    frame.invalidate()
    assert frame.tolist() == [5] * 64 and mem.tolist() == [5] * 64
    with pytest.raises(BufferError, match="export"):
        mem.freebuffer()  # the wrap still uses its memory
    frame.freebuffer()
    assert calls == [mem]
    mem.freebuffer()
    assert sim.info()["buffers"] == 0


def test_wrap_of_a_sub_view_of_a_buffer(sim):
    mem = sim.allocate((8, 16), "u1")
    part = mem[2:4]
    frame = pynq_alloc.wrap(part, part.device_address)
    assert frame.device_address == mem.device_address + 32 and frame.shape == (2, 16)
    frame[:] = 9
    frame.flush()
    assert sim.device_read(mem.device_address + 32, 32) == bytes([9]) * 32
    del frame, part, mem


def test_wrap_of_a_buffer_refuses_inconsistent_arguments(sim, sim_default):
    mem = sim.allocate(16, "u4")
    with pytest.raises(ValueError, match="device address is 0x"):
        pynq_alloc.wrap(mem, mem.device_address + 64)
    with pytest.raises(ValueError, match="coherent=True over a non-coherent"):
        pynq_alloc.wrap(mem, mem.device_address, coherent=True)
    with pytest.raises(ValueError, match="comes from backend"):
        pynq_alloc.wrap(mem, mem.device_address, backend=sim_default)
    mem.freebuffer()  # nothing of the failed wraps holds it


@pytest.mark.skipif(not USER_CACHE, reason="this CPU has no user-space cache maintenance")
def test_non_coherent_foreign_memory_uses_the_cpus_cache_maintenance():
    data = np.arange(1024, dtype="u4")
    buf = pynq_alloc.wrap(data, 0x9000, coherent=False)
    assert not buf.coherent and buf.cacheable
    buf[100:300].flush()
    buf.invalidate()
    buf[::7].invalidate()
    assert buf.tolist() == list(range(1024))  # clean+invalidate keeps the CPU's data


@pytest.mark.skipif(USER_CACHE, reason="this CPU can maintain its cache from user space")
def test_non_coherent_foreign_memory_without_user_cache_maintenance_is_a_clear_error():
    buf = pynq_alloc.wrap(bytearray(64), 0x9000, coherent=False)
    with pytest.raises(NotImplementedError, match="32-bit ARM"):
        buf.flush()


def test_on_free_errors_are_reported_not_raised(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)

    def boom(_):
        raise RuntimeError("recycling failed")

    buf = pynq_alloc.wrap(bytearray(16), 0x100, on_free=boom)
    buf.freebuffer()
    assert len(seen) == 1 and isinstance(seen[0].exc_value, RuntimeError)


@pytest.mark.parametrize("obj, addr, kw, exc, match", [
    ([1, 2, 3], 0, {}, TypeError, "provides no memory"),
    (object(), 0, {}, TypeError, "provides no memory"),
    (np.array([None]), 0, {}, TypeError, "Python objects"),
    (bytearray(4), "0", {}, TypeError, "device_address must be an int"),
    (bytearray(4), True, {}, TypeError, "device_address must be an int"),
    (bytearray(4), -1, {}, ValueError, "between 0 and 2"),
    (bytearray(4), 2**64, {}, ValueError, "between 0 and 2"),
    (bytearray(4), 0, {"coherent": 1}, TypeError, "coherent must be"),
    (bytearray(4), 0, {"backend": "sim"}, TypeError, "backend must be"),
    (bytearray(4), 0, {"on_free": 3}, TypeError, "on_free must be callable"),
    (bytearray(4), 0, {"cacheable": True}, TypeError, "unexpected keyword argument 'cacheable'"),
])
def test_bad_arguments(obj, addr, kw, exc, match):
    calls = []
    with pytest.raises(exc, match=match):
        pynq_alloc.wrap(obj, addr, **kw)
    if isinstance(obj, bytearray):
        obj.extend(b"x")  # no export was left behind
    assert calls == []


def test_a_failed_wrap_never_calls_on_free():
    calls = []
    with pytest.raises(TypeError):
        pynq_alloc.wrap([1], 0, on_free=calls.append)
    with pytest.raises(TypeError):
        pynq_alloc.wrap(bytearray(2), "x", on_free=calls.append)
    gc.collect()
    assert calls == []


def test_read_only_memory_gives_a_read_only_buffer():
    buf = pynq_alloc.wrap(b"\x01\x02\x03\x04", 0x10)
    assert not buf.flags.writeable and buf.tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        buf[0] = 5
