"""Memory goes back when the last thing that can reach it is gone; freebuffer()'s contract."""
import gc

import numpy as np
import pytest

from pynq_alloc import allocate, open_backend


def used(be):
    return be.info()["used"]


def test_del_frees_at_once(sim):
    buf = sim.allocate(1000)
    assert used(sim) > 0
    del buf
    assert used(sim) == 0 and sim.info()["buffers"] == 0


def test_views_keep_memory_alive(sim):
    buf = sim.allocate(100)
    buf[:] = 42
    view = buf[10:20]
    del buf
    gc.collect()
    assert used(sim) > 0 and view.tolist() == [42] * 10
    del view
    assert used(sim) == 0


def test_plain_views_and_memoryviews_keep_memory_alive(sim):
    buf = sim.allocate(100)
    plain = np.asarray(buf)
    mv = memoryview(buf[5:])
    del buf
    assert used(sim) > 0
    plain[:] = 1
    del plain
    assert used(sim) > 0
    assert bytes(mv)[:8] == b"\x01\x00\x00\x00" * 2
    mv.release()
    del mv
    assert used(sim) == 0


def test_no_leak_over_100k_cycles(sim):
    for i in range(100_000):
        b = sim.allocate(16 + i % 300, "u1", align=64)
        b[0] = 1
        del b
    assert used(sim) == 0 and sim.info()["buffers"] == 0
    assert sim.info()["largest_free"] == sim.info()["total"]  # fully coalesced


def test_freebuffer_releases_at_once(sim):
    buf = sim.allocate(1000)
    buf.freebuffer()
    assert used(sim) == 0
    assert buf.size == 0 and not buf.flags.writeable
    assert buf.device_address is None and buf.physical_address is None
    buf.freebuffer()  # a second call is a no-op
    with pytest.raises(IndexError):
        buf[0]
    with pytest.raises(ValueError, match="freebuffer"):
        buf.flush()
    assert buf.sum() == 0 and buf.tolist() == []


def test_freebuffer_on_0d_buffer(sim):
    buf = sim.allocate((), "f8")
    buf[()] = 2.5
    buf.freebuffer()
    assert buf.shape == (0,) and used(sim) == 0


def test_freebuffer_refuses_while_views_exist(sim):
    buf = sim.allocate(64)
    view = buf[3:9]
    with pytest.raises(BufferError, match="1 view"):
        buf.freebuffer()
    assert view.device_address is not None and used(sim) > 0
    del view
    buf.freebuffer()
    assert used(sim) == 0


def test_freebuffer_refuses_while_exports_exist(sim):
    buf = sim.allocate(64)
    mv = memoryview(buf)
    with pytest.raises(BufferError, match="1 buffer export"):
        buf.freebuffer()
    mv.release()
    buf.freebuffer()
    assert used(sim) == 0


def test_freebuffer_refuses_while_plain_ndarray_views_exist(sim):
    # np.asarray(buf) is a plain ndarray over the same memory: counted exactly
    buf = sim.allocate(64)
    plain = np.asarray(buf)
    assert type(plain) is np.ndarray
    with pytest.raises(BufferError, match="1 plain ndarray view"):
        buf.freebuffer()
    other = buf.view(np.ndarray)[2:]
    with pytest.raises(BufferError, match="2 plain ndarray view"):
        buf.freebuffer()
    del plain, other
    buf.freebuffer()
    assert used(sim) == 0


def test_plain_view_of_a_view_counts_as_that_view(sim):
    buf = sim.allocate(64)
    plain = np.asarray(buf[4:])
    with pytest.raises(BufferError):
        buf.freebuffer()
    del plain
    buf.freebuffer()


def test_extra_references_do_not_block_freebuffer(sim):
    # Jupyter's Out[] history holds references to the buffer itself
    buf = sim.allocate(64)
    history = {1: buf, 2: buf}
    also = [buf, buf]
    buf.freebuffer()
    assert used(sim) == 0 and history[1].size == 0 and also[0].device_address is None


REC = np.dtype([("a", "<u4"), ("b", "<f4")])


@pytest.mark.parametrize("make", [
    pytest.param(lambda b: b.view(np.recarray), id="view(np.recarray)"),
    pytest.param(lambda b: b.view(type=np.recarray), id="view(type=recarray)"),
    pytest.param(lambda b: b.view("<u4", np.recarray), id="view(dtype, recarray)"),
    pytest.param(lambda b: np.rec.array(b, copy=False), id="np.rec.array(copy=False)"),
    pytest.param(lambda b: b[1], id="structured scalar"),
    pytest.param(lambda b: b[()] if b.ndim == 0 else list(b), id="iteration"),
    pytest.param(lambda b: b.flat, id="flat iterator"),
    pytest.param(lambda b: b.view("<u4").view(np.ndarray), id="plain view of a view"),
])
def test_objects_numpy_makes_from_the_buffer_are_counted(sim, make):
    # They point into the memory; freebuffer() must refuse while they live, so
    # they can never reach memory that another buffer got.
    buf = sim.allocate(4, REC, align=64)
    buf["a"] = [10, 11, 12, 13]
    holder = make(buf)
    with pytest.raises(BufferError, match="cannot free this buffer"):
        buf.freebuffer()
    assert used(sim) > 0 and buf["a"].tolist() == [10, 11, 12, 13]
    del holder
    buf.freebuffer()
    assert used(sim) == 0


def test_documented_workaround_for_what_c_code_builds(sim):
    # np.ma and np.nditer take the buffer object itself from C, which cannot be
    # counted (README, "Lifetime"); made from np.asarray(buf) they are counted.
    buf = sim.allocate(8, "u4")
    masked = np.ma.masked_array(np.asarray(buf))
    it = np.nditer(np.asarray(buf), op_flags=["readwrite"])
    for x in it:
        x[...] = 1
    masked[0] = 5
    assert buf.tolist() == [5] + [1] * 7
    with pytest.raises(BufferError, match="2 plain ndarray view"):
        buf.freebuffer()
    del masked, it, x
    buf.freebuffer()
    assert used(sim) == 0


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_matrix_of_the_buffer_is_counted(sim):
    buf = sim.allocate((2, 2), "f4")
    m = np.asmatrix(buf)
    assert type(m) is np.matrix
    m[0, 1] = 2.5
    assert buf[0, 1] == 2.5
    with pytest.raises(BufferError, match="1 plain ndarray view"):
        buf.freebuffer()
    del m
    buf.freebuffer()
    assert used(sim) == 0


def test_recarray_view_cannot_write_into_a_new_buffer(sim):
    # the reproduction from the issue: before the fix freebuffer() succeeded and
    # v[...] = 7 wrote into o
    r = sim.allocate(16, "u1", align=64)
    v = r.view(np.recarray)
    with pytest.raises(BufferError):
        r.freebuffer()
    v[...] = 7
    assert np.asarray(r).tolist() == [7] * 16
    del v
    r.freebuffer()
    o = sim.allocate(16, "u1", align=64)
    assert o.tolist() == [0] * 16


def test_flat_iterator_of_a_large_buffer_keeps_it():
    # before the fix: freebuffer() succeeded and it[-1] crashed the interpreter
    be = open_backend("sim", size=256 << 20)
    r = be.allocate(200 << 20, "u1")
    r[-1] = 5
    it = r.flat
    with pytest.raises(BufferError):
        r.freebuffer()
    assert it[(200 << 20) - 1] == 5
    it[(200 << 20) - 2] = 6
    assert r[-2] == 6
    del it
    r.freebuffer()
    assert be.info()["used"] == 0
    be.close()


def test_structured_scalar_writes_through_and_is_counted(sim):
    buf = sim.allocate(3, REC)
    rec = buf[2]
    rec["a"] = 99  # a structured scalar is a view of one element
    assert buf["a"][2] == 99
    with pytest.raises(BufferError):
        buf.freebuffer()
    del rec
    buf.freebuffer()


def test_flat_and_view_still_behave_like_numpy(sim):
    buf = sim.allocate((2, 3), "u2")
    buf.flat = [1, 2, 3, 4, 5, 6]
    assert buf.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert list(buf.flat) == [1, 2, 3, 4, 5, 6] and buf.flat[4] == 5
    assert buf.T.flat[1] == 4  # flat of a view walks the view
    v = buf.view("u1")
    assert type(v) is type(buf) and v.device_address == buf.device_address and v.shape == (2, 6)
    assert type(buf.view(np.ndarray)) is np.ndarray
    assert type(buf.view(dtype="i2", type=np.ndarray)) is np.ndarray
    with pytest.raises(TypeError):
        buf.view("u1", np.ndarray, 3)
    with pytest.raises(TypeError):
        buf.view(bogus=1)
    with pytest.raises(ValueError):
        buf.view("u4")  # 6 bytes per row do not divide into u4


def test_freebuffer_on_a_view_is_refused(sim):
    buf = sim.allocate(64)
    view = buf[1:]
    with pytest.raises(BufferError, match="allocate\\(\\) returned"):
        view.freebuffer()
    del buf
    with pytest.raises(BufferError):
        view.freebuffer()
    del view
    assert used(sim) == 0


def test_copy_freebuffer_is_harmless(sim):
    c = sim.allocate(8).copy()
    c.freebuffer()
    assert c.shape == (8,)


def test_context_manager_frees(sim):
    with sim.allocate(128) as buf:
        buf[:] = 3
        assert used(sim) > 0
    assert used(sim) == 0 and buf.size == 0


def test_close_is_freebuffer(sim):
    buf = sim.allocate(128)
    buf.close()
    assert used(sim) == 0


def test_base_anchor_is_not_a_loophole(sim):
    buf = sim.allocate(16)
    base = buf.base  # a plain ndarray over the memory
    with pytest.raises(BufferError):
        buf.freebuffer()
    del base
    buf.freebuffer()
    assert buf.base.size == 0  # the anchor was emptied too


def test_backend_close_with_live_buffers_is_deferred(sim):
    buf = sim.allocate(16)
    buf[:] = 5
    sim.close()
    with pytest.raises(ValueError, match="closed"):
        sim.allocate(4)
    assert buf.tolist() == [5] * 16  # memory still valid
    buf.flush()
    del buf  # the last buffer closes the backend for real
    assert sim.info()["closed"] is True


def test_dropping_backend_object_is_safe():
    import pynq_alloc

    be = pynq_alloc.open_backend("sim", size=1 << 20)
    buf = be.allocate(10)
    del be
    buf[:] = 3
    buf.flush()
    assert buf.backend.info()["used"] > 0
    assert buf.tolist() == [3] * 10


def test_default_target_buffers_are_released():
    import pynq_alloc

    be = pynq_alloc.default_backend()
    before = be.info()["used"]
    buf = allocate(1 << 16, "u1")
    assert be.info()["used"] > before
    del buf
    assert be.info()["used"] == before


def test_backend_lists_its_live_blocks_by_identity(sim):
    """Backend._live() (the pytest plugin's leak check): each block the backend
    handed out and has not got back, with the root Buffer's shape and dtype while
    it lives; a view keeps its block listed, freebuffer() and del take it off."""
    other = open_backend("sim", size=1 << 20)
    a = sim.allocate((4, 4), "u2")
    b = sim.allocate(10, "f8")
    c = other.allocate(3)
    rows = {r[0]: r for r in sim._live()}
    assert len(rows) == 2 and [r[0] for r in other._live()] != []
    sa, sb = sorted(rows)
    assert rows[sa][1:] == (a.device_address, 64, (4, 4), "uint16")
    assert rows[sb][1:] == (b.device_address, 128, (10,), "float64")
    v = b[2:]
    del b
    assert {r[0] for r in sim._live()} == {sa, sb}  # the view keeps b's block
    a.freebuffer()
    assert [r[0] for r in sim._live()] == [sb]
    del v
    assert sim._live() == []
    d = sim.allocate(1)
    assert [r[0] for r in sim._live()][0] > sb  # serials are never reused
    plain = np.asarray(d)
    del d
    assert sim._live()[0][3:] == (None, None)  # only a plain view holds it now
    del plain, c
    assert sim._live() == [] and other._live() == []
    other.close()
