"""flush()/invalidate() move exactly the bytes a view spans, rounded to cache lines.

Observed through the sim backend: its device side sees CPU data only after a flush
and the CPU sees device data only after an invalidate."""
import numpy as np
import pytest

LINE = 64


def dev(be, buf):
    return np.frombuffer(be.device_read(buf.device_address, buf.nbytes), buf.dtype).reshape(buf.shape)


def dev_bytes(be, base):
    return np.frombuffer(be.device_read(base.device_address, base.nbytes), "u1")


def flushed_range(be, base, view):
    """Fill base with 0xff on the CPU, flush view, return the device byte range that changed."""
    base.view("u1")[:] = 0xFF
    view.flush()
    changed = np.flatnonzero(dev_bytes(be, base))
    return (int(changed[0]), int(changed[-1]) + 1) if changed.size else None


def expected(lo, hi):
    return (lo // LINE * LINE, -(-hi // LINE) * LINE)


def test_no_flush_no_data(sim):
    buf = sim.allocate(16, "u4")
    buf[:] = 5
    assert dev(sim, buf).tolist() == [0] * 16
    buf.flush()
    assert dev(sim, buf).tolist() == [5] * 16


def test_strided_view_flushes_its_whole_extent(sim):
    # PYNQ flushes nbytes (2048) from the start of buf[::2]; it spans 4092 bytes
    buf = sim.allocate(1024, "u4")
    assert flushed_range(sim, buf, buf[::2]) == (0, 4096)
    buf2 = sim.allocate(1024, "u4")
    assert flushed_range(sim, buf2, buf2[100:900:7]) == expected(400, 4 * (100 + 7 * 114) + 4)


def test_reversed_view_flushes_from_its_lowest_byte(sim):
    buf = sim.allocate(1024, "u4")
    assert flushed_range(sim, buf, buf[::-1]) == (0, 4096)
    buf2 = sim.allocate(1024, "u4")
    assert flushed_range(sim, buf2, buf2[600:200:-3]) == expected(4 * (600 - 3 * 133), 4 * 600 + 4)


def test_2d_view_extent(sim):
    buf = sim.allocate((64, 64), "u4")  # rows of 256 bytes
    assert flushed_range(sim, buf, buf[10:12, 5:9]) == expected(10 * 256 + 20, 11 * 256 + 36)
    buf2 = sim.allocate((64, 64), "u4")
    assert flushed_range(sim, buf2, buf2[:, 3]) == expected(12, 63 * 256 + 16)
    buf3 = sim.allocate((64, 64), "u4")
    assert flushed_range(sim, buf3, buf3.T[2:4]) == expected(8, 63 * 256 + 16)


def test_small_view_flushes_one_line(sim):
    buf = sim.allocate(1024, "u1")
    assert flushed_range(sim, buf, buf[130:131]) == (128, 192)


def test_empty_view_flushes_nothing(sim):
    buf = sim.allocate(1024, "u1")
    assert flushed_range(sim, buf, buf[5:5]) is None


def test_invalidate_brings_device_data(sim):
    buf = sim.allocate(32, "u4")
    sim.device_write(buf.device_address, np.arange(32, dtype="u4").tobytes())
    assert buf.tolist() == [0] * 32  # stale until invalidated
    buf[4:8].invalidate()  # bytes 16-32: the whole first 64-byte line is reloaded
    assert buf[:16].tolist() == list(range(16)) and buf[16:].tolist() == [0] * 16
    buf.invalidate()
    assert buf.tolist() == list(range(32))


def test_flush_does_not_clobber_device_writes_to_clean_lines(sim):
    # flush before invalidate ("belt and braces") must not destroy DMA results
    buf = sim.allocate(16, "u4")
    sim.device_write(buf.device_address, np.full(16, 3, "u4").tobytes())
    buf.flush()
    buf.invalidate()
    assert buf.tolist() == [3] * 16


def test_round_trip(sim):
    src = sim.allocate(256, "u4")
    dst = sim.allocate(256, "u4")
    src[:] = np.arange(256)
    src.flush()
    data = np.frombuffer(sim.device_read(src.device_address, src.nbytes), "u4")
    sim.device_write(dst.device_address, (data * 2).astype("u4").tobytes())
    dst.invalidate()
    assert dst.tolist() == list(range(0, 512, 2))


def test_coherent_backend_needs_no_sync(sim_coherent):
    buf = sim_coherent.allocate(8)
    assert buf.coherent
    buf[:] = 4
    assert dev(sim_coherent, buf).tolist() == [4] * 8
    sim_coherent.device_write(buf.device_address, np.full(8, 6, "u4").tobytes())
    assert buf.tolist() == [6] * 8
    buf.flush()
    buf.invalidate()  # no-ops
    assert buf.tolist() == [6] * 8


def test_large_flush_releases_gil_and_is_correct(sim):
    buf = sim.allocate(4 << 20, "u1")
    buf[:] = 1
    buf.flush()
    assert dev_bytes(sim, buf).sum() == 4 << 20


def test_device_access_outside_live_buffers_is_refused(sim):
    buf = sim.allocate(16)
    addr = buf.device_address
    with pytest.raises(ValueError, match="not inside a live buffer"):
        sim.device_read(addr + 8192, 4)
    del buf
    with pytest.raises(ValueError, match="not inside a live buffer"):
        sim.device_write(addr, b"1234")
    with pytest.raises(ValueError, match="outside the simulated memory"):
        sim.device_read(0, 4)


def test_device_read_on_hugepage_is_refused(huge):
    with pytest.raises(NotImplementedError, match="only on the sim"):
        huge.device_read(0, 4)


def changed_lines(be, base, view, op="flush"):
    """Fill base with 0xff on the CPU, sync view, return the cache lines of base the device got."""
    base.view("u1")[:] = 0xFF
    getattr(view, op)()
    return set(np.flatnonzero(dev_bytes(be, base).reshape(-1, LINE).any(axis=1)).tolist())


def touched_lines(base, key):
    """Cache lines of base that the elements of base[key] touch (elements within one line)."""
    mask = np.zeros(base.shape, bool)
    mask[key] = True
    return set((np.flatnonzero(mask.ravel()) * base.itemsize // LINE).tolist())


def test_sparse_roi_flushes_only_the_lines_its_rows_touch(sim):
    # rows of 1 KiB (16 lines); the ROI is the first line of every row
    buf = sim.allocate((64, 256), "u4")
    key = (slice(None), slice(None, 16))
    got = changed_lines(sim, buf, buf[key])
    assert got == touched_lines(buf, key) == {16 * r for r in range(64)}
    # unaligned ROI: columns 10..30 touch lines 0 and 1 of every row
    buf2 = sim.allocate((64, 256), "u4")
    key2 = (slice(3, 60, 2), slice(10, 30))
    assert changed_lines(sim, buf2, buf2[key2]) == touched_lines(buf2, key2)
    # a column: one element per row, one line per row; reversed too
    buf3 = sim.allocate((64, 256), "u4")
    key3 = (slice(None, None, -1), 100)
    assert changed_lines(sim, buf3, buf3[key3]) == touched_lines(buf3, key3)


def test_dense_strided_view_flushes_its_whole_extent(sim):
    # rows of 256 bytes (4 lines); columns 0..39 touch 3 of them: dense, so
    # the whole extent goes in one call, the 4th line of every row included
    buf = sim.allocate((64, 64), "u4")
    view = buf[:, :40]
    lines = touched_lines(buf, (slice(None), slice(None, 40)))
    got = changed_lines(sim, buf, view)
    assert got == set(range(min(lines), max(lines) + 1))
    assert len(got) > len(lines)


def test_sparse_roi_invalidate_brings_only_its_lines(sim):
    buf = sim.allocate((32, 256), "u4")  # 1 KiB rows
    sim.device_write(buf.device_address, b"\x07" * buf.nbytes)
    view = buf[:, 16:32]  # line 1 of every row
    view.invalidate()
    cpu_lines = np.flatnonzero(buf.view("u1").reshape(-1, LINE).any(axis=1))
    assert set(cpu_lines.tolist()) == touched_lines(buf, (slice(None), slice(16, 32)))
    assert (view == 0x07070707).all()


def test_sparse_roi_flush_reports_once_under_the_checker():
    import pynq_alloc

    be = pynq_alloc.open_backend("sim", size=1 << 20, check="raise")
    try:
        buf = be.allocate((16, 256), "u4", cacheable=True)
        buf[:] = 1
        buf.flush()
        be.device_write(buf.device_address, b"\x02" * buf.nbytes)
        # flush over lines the device wrote: the checker reports (case 4)
        with pytest.raises(pynq_alloc.CoherencyError):
            buf[:, :16].flush()
        buf[:, :16].invalidate()
        assert (buf[:, :16] == 0x02020202).all()
        assert (buf[:, 16:] == 1).all()
    finally:
        be.close()
