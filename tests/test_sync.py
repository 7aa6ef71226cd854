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


def byte_lines(base, make):
    """The cache lines of base that the bytes of make(base) touch, and the lines of its extent."""
    addr = np.arange(base.size, dtype=np.int64).reshape(base.shape) * base.itemsize
    offs = make(addr).ravel()
    lines = np.unique((offs[:, None] + np.arange(base.itemsize)) // LINE)
    return set(lines.tolist()), set(range(int(lines[0]), int(lines[-1]) + 1))


def per_run(view, k=2):
    """The documented rule (README, "flush() and invalidate()"): the runs are the
    stretches the trailing contiguous dimensions form; per run when
    runs * (lines per run + k) <= the lines of the extent (k = 2 on sim), lines
    per run exact when every outer stride is whole lines, else the most a run
    can touch."""
    dims = [(n, s) for n, s in zip(view.shape, view.strides) if n != 1]
    run = view.itemsize
    while dims and dims[-1][1] == run:
        run *= dims.pop()[0]
    if not dims:
        return False
    runs = int(np.prod([n for n, _ in dims]))
    first = view.__array_interface__["data"][0]
    lo = first + sum(s * (n - 1) for n, s in dims if s < 0)
    hi = first + sum(s * (n - 1) for n, s in dims if s > 0) + run
    if all(s % LINE == 0 for _, s in dims):
        each = (first % LINE + run + LINE - 1) // LINE
    else:
        each = (run + 2 * LINE - 2) // LINE
    return runs * (each + k) <= (lo % LINE + hi - lo + LINE - 1) // LINE


# name: (view of an (8, 16, 256) u4 buffer, synced per run by the rule)
STRIDED = {
    "3-D ROI": (lambda b: b[:, :, :16], True),
    "reversed outer": (lambda b: b[::-1, ::2, 3:7], True),
    "one element per run": (lambda b: b[:, ::3, 100], True),
    "outer dims out of memory order": (lambda b: b.transpose(1, 0, 2)[:, :, 40:48], True),
    "every 64th element": (lambda b: b[:, 1:, ::64], True),
    "two elements backwards, one line": (lambda b: b[:, :, 3:1:-1], True),
    "many elements backwards": (lambda b: b[2:5, :, 200:180:-1], False),
    "13 of every 16 lines": (lambda b: b[:, :, :200], True),
    "15 of every 16 lines": (lambda b: b[:, :, :232], False),
    "dense (every 3rd element of 100)": (lambda b: b[:, :, :100:3], False),
}


@pytest.mark.filterwarnings("ignore::pynq_alloc.CoherencyWarning")  # the 0xff fill, check="warn"
@pytest.mark.parametrize("check", ["off", "warn"])
@pytest.mark.parametrize("op", ["flush", "invalidate"])
@pytest.mark.parametrize("name", sorted(STRIDED))
def test_strided_view_syncs_exactly_the_lines_of_the_rule(name, op, check):
    # 1 KiB rows, 16 rows a plane; the device gets exactly the lines the
    # elements touch (sparse) or every line of the extent (dense), with the
    # fast path (check off) and the checking path alike
    import pynq_alloc

    be = pynq_alloc.open_backend("sim", size=1 << 20, check=check)
    try:
        buf = be.allocate((8, 16, 256), "u4", cacheable=True)
        make, sparse = STRIDED[name]
        touched, extent = byte_lines(buf, make)
        assert per_run(make(buf)) == sparse
        assert touched != extent
        assert changed_lines(be, buf, make(buf), op) == (touched if sparse else extent)
    finally:
        be.close()


@pytest.mark.filterwarnings("ignore::pynq_alloc.CoherencyWarning")
@pytest.mark.parametrize("check", ["off", "warn"])
def test_runs_sharing_a_line_are_synced_exactly(check):
    # 16-byte rows of 4 u4: the 4 runs of buf[::64, :, 0] in one plane share a
    # line (merged into one range); planes are 4 KiB apart (sparse)
    import pynq_alloc

    be = pynq_alloc.open_backend("sim", size=1 << 20, check=check)
    try:
        buf = be.allocate((1024, 4, 4), "u4", cacheable=True)

        def make(b):
            return b[::64, :, 0]

        assert per_run(make(buf))
        touched, _ = byte_lines(buf, make)
        assert touched == {64 * p for p in range(16)}
        assert changed_lines(be, buf, make(buf)) == touched
    finally:
        be.close()


def test_sparse_flush_keeps_device_data_on_lines_the_cpu_did_not_change(sim):
    # the device wrote rows 0..7 after the CPU's last flush; the CPU changed
    # only rows 4..15. A sparse flush of column line 0 writes back the CPU's
    # lines except those the device wrote and the CPU left clean (rows 0..3):
    # those keep the device's data, as on hardware
    buf = sim.allocate((16, 256), "u4")  # 1 KiB rows
    buf[:] = 1
    buf.flush()
    sim.device_write(buf.device_address, b"\x02" * 8 * 1024)
    buf[4:] = 3
    buf[:, :16].flush()
    got = dev(sim, buf)
    assert (got[:4, :16] == 0x02020202).all()  # device's, CPU clean
    assert (got[4:, :16] == 3).all()  # CPU dirty: written back (device data lost on 4..7)
    assert (got[:8, 16:] == 0x02020202).all()  # outside the view: untouched
    assert (got[8:, 16:] == 1).all()
    # invalidate of the next line of every row: the device's lines come in
    # where the CPU had not changed them, the CPU's (4..15) are written back
    buf[:, 16:32].invalidate()
    assert (buf[:4, 16:32] == 0x02020202).all()
    assert (buf[4:, 16:32] == 3).all()
    assert (dev(sim, buf)[4:, 16:32] == 3).all()
