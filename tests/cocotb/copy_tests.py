"""cocotb tests run inside the simulator (Icarus) on hdl/axi_copy.v: the design's AXI4
master reads and writes pynq_alloc buffers through pynq_alloc.cocotb.AxiRam, driven by
a synchronous PYNQ-style driver. Started by test_cocotb.py (not collected by pytest).
"""
import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster

import pynq_alloc
from pynq_alloc.cocotb import MMIO, AxiRam, run_driver

CTRL, STATUS, SRC_LO, SRC_HI, DST_LO, DST_HI, LEN, INFO = range(0, 0x20, 4)
BUSY, DONE, ERROR = 1, 2, 4


class CopyEngine:
    """The driver, as it would run on a board with pynq.MMIO and pynq.allocate."""

    def __init__(self, mmio):
        self.mmio = mmio

    def start(self, dst, src, nbytes=None):
        nbytes = src.nbytes if nbytes is None else nbytes
        self.mmio.write(SRC_LO, src.device_address & 0xFFFFFFFF)
        self.mmio.write(SRC_HI, src.device_address >> 32)
        self.mmio.write(DST_LO, dst.device_address & 0xFFFFFFFF)
        self.mmio.write(DST_HI, dst.device_address >> 32)
        self.mmio.write(LEN, nbytes)
        self.mmio.write(CTRL, 1)

    def wait(self):
        while True:
            status = self.mmio.read(STATUS)
            if status & DONE:
                return status

    def copy(self, dst, src, *, flush=True, invalidate=True):
        if flush:
            src.flush()
        self.start(dst, src)
        status = self.wait()
        if invalidate:
            dst.invalidate()
        return status


async def setup(dut, check="raise", on_error="defer", size=4 << 20):
    """Clock, reset, a fresh sim backend, the memory slave and the register master."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    backend = pynq_alloc.open_backend("sim", size=size, check=check)
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, backend=backend,
                 on_error=on_error)
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return backend, ram, CopyEngine(MMIO(master))


def bus_bytes(dut):
    return len(dut.m_axi_wdata) // 8


@cocotb.test()
async def round_trip(dut):
    """Flush, copy several bursts, invalidate: the destination holds the source's data."""
    backend, ram, engine = await setup(dut)
    width = bus_bytes(dut)
    info = await engine.mmio.aread(INFO)
    assert info & 0xFFFF == width * 8
    burst = (info >> 16) * width
    rng = np.random.default_rng(width)
    n = 3 * burst + 3 * width  # several bursts and a partial one
    src = pynq_alloc.allocate(n // 4, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(n // 4, "u4", target=backend, cacheable=True)
    src[:] = rng.integers(0, 2**32, src.shape, dtype=np.uint32)
    status = await run_driver(engine.copy, dst, src)
    assert status & (ERROR | BUSY) == 0
    np.testing.assert_array_equal(dst, src)
    # the device saw every byte once each way, in whole bus words
    assert ram.stats.bytes_read == n and ram.stats.bytes_written == n
    assert ram.stats.errors == 0 and ram.errors == []
    # a second copy into the same destination, the other way round, sees fresh data
    src2 = pynq_alloc.allocate(n, "u1", target=backend, cacheable=True)
    src2[:] = rng.integers(0, 256, n, dtype=np.uint8)
    await run_driver(engine.copy, dst, src2)
    np.testing.assert_array_equal(dst.view(np.uint8), src2)


@cocotb.test()
async def unaligned_and_narrow(dut):
    """Any source/destination byte offset and length: exactly those bytes change."""
    backend, ram, engine = await setup(dut)
    width = bus_bytes(dut)
    burst = (await engine.mmio.aread(INFO) >> 16) * width
    size = 2 * burst + 4 * width
    src = pynq_alloc.allocate(size, "u1", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(size, "u1", target=backend, cacheable=True)
    src[:] = np.arange(size) * 7 + 3
    src.flush()
    cases = []
    for so in sorted({0, 1, 3, width - 1, width + 2}):
        for do in sorted({0, 2, width - 3, width + 1}):
            for n in sorted({1, 2, width - 1, width + 1, 2 * width + 5, burst + width + 3}):
                if so + n <= size and do + n <= size:
                    cases.append((so, do, n))

    def run_all():
        for so, do, n in cases:
            dst[:] = 0xA5
            dst.flush()
            engine.start(dst[do:do + n], src[so:so + n])
            status = engine.wait()
            assert status & ERROR == 0
            dst.invalidate()
            expect = np.full(size, 0xA5, np.uint8)
            expect[do:do + n] = src[so:so + n]
            got = np.asarray(dst)
            if not np.array_equal(got, expect):
                bad = np.flatnonzero(got != expect)
                raise AssertionError(f"src+{so} -> dst+{do}, {n} bytes: wrong bytes at "
                                     f"dst offsets {bad[:8].tolist()}")

    await run_driver(run_all)
    assert ram.errors == []
    dut._log.info("%d unaligned/narrow copies checked at %d-bit", len(cases), width * 8)


@cocotb.test()
async def missing_flush_of_source(dut):
    """The driver forgets src.flush(): the checker names the source's device range."""
    backend, ram, engine = await setup(dut, check="raise")
    src = pynq_alloc.allocate(256, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(256, "u4", target=backend, cacheable=True)
    src[:] = np.arange(256)
    try:
        await run_driver(engine.copy, dst, src, flush=False)
    except pynq_alloc.CoherencyError as exc:
        msg = str(exc)
    else:
        raise AssertionError("the missing flush() was not reported")
    assert "never flushed" in msg, msg
    assert f"0x{src.device_address:x}" in msg, msg
    assert ram.errors and isinstance(ram.errors[0], pynq_alloc.CoherencyError)


@cocotb.test()
async def cpu_dirty_destination(dut):
    """The driver writes the destination after flushing it: the device's write is reported."""
    backend, ram, engine = await setup(dut, check="raise")
    src = pynq_alloc.allocate(256, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(256, "u4", target=backend, cacheable=True)
    src[:] = np.arange(256)

    def driver():
        src.flush()
        dst[:16] = 0xFFFFFFFF  # CPU-dirty lines in what the device is about to write
        engine.start(dst, src)
        engine.wait()

    try:
        await run_driver(driver)
    except pynq_alloc.CoherencyError as exc:
        msg = str(exc)
    else:
        raise AssertionError("the device write over CPU-dirty lines was not reported")
    assert "device wrote" in msg, msg
    assert f"0x{dst.device_address:x}" in msg, msg


@cocotb.test()
async def check_off_gives_silent_wrong_result(dut):
    """Control: the same missing flush with check='off' copies stale data without a word."""
    backend, ram, engine = await setup(dut, check="off")
    src = pynq_alloc.allocate(256, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(256, "u4", target=backend, cacheable=True)
    src[:] = np.arange(1, 257)
    status = await run_driver(engine.copy, dst, src, flush=False)
    assert status & ERROR == 0 and ram.errors == []
    # the device read the source's memory as it was (zeros), not what the CPU wrote
    assert not np.array_equal(dst, src)
    np.testing.assert_array_equal(dst, np.zeros(256, np.uint32))


@cocotb.test()
async def on_error_slverr(dut):
    """on_error='slverr': the design gets SLVERR (its error bit) and the driver sees it."""
    backend, ram, engine = await setup(dut, check="raise", on_error="slverr")
    src = pynq_alloc.allocate(64, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(64, "u4", target=backend, cacheable=True)
    src[:] = 5
    status = await run_driver(engine.copy, dst, src, flush=False)
    assert status & ERROR, f"status {status:#x}: no SLVERR seen by the design"
    assert ram.errors and isinstance(ram.errors[0], pynq_alloc.CoherencyError)
    # flushed, the same copy is clean
    status = await run_driver(engine.copy, dst, src)
    assert status & ERROR == 0
    np.testing.assert_array_equal(dst, src)


@cocotb.test(expect_error=pynq_alloc.CoherencyError)
async def on_error_fail_ends_test(dut):
    """on_error='fail': the test ends with the CoherencyError while the design still runs."""
    backend, ram, engine = await setup(dut, check="raise", on_error="fail")
    src = pynq_alloc.allocate(1024, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(1024, "u4", target=backend, cacheable=True)
    src[:] = 9
    await engine.mmio.awrite(SRC_LO, src.device_address)
    await engine.mmio.awrite(DST_LO, dst.device_address)
    await engine.mmio.awrite(LEN, src.nbytes)
    await engine.mmio.awrite(CTRL, 1)
    # no register access that could raise a deferred error: only 'fail' can end this
    await ClockCycles(dut.clk, 100000)
    raise AssertionError("on_error='fail' did not end the test")


@cocotb.test()
async def deferred_error_at_next_register_access(dut):
    """'defer': the error surfaces in the driver, at its next MMIO access."""
    backend, ram, engine = await setup(dut, check="raise")
    src = pynq_alloc.allocate(64, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(64, "u4", target=backend, cacheable=True)
    src[:] = 1

    def driver():
        seen = []
        engine.start(dst, src)
        while True:
            try:
                if engine.mmio.read(STATUS) & DONE:
                    return seen
            except pynq_alloc.CoherencyError as exc:
                seen.append(exc)  # raised by a register read, inside the driver

    seen = await run_driver(driver)  # nothing left over to raise at the end
    assert seen, "no CoherencyError reached the driver"
    assert all(isinstance(e, pynq_alloc.CoherencyError) for e in seen)
    assert f"0x{src.device_address:x}" in str(seen[0])
    assert len(ram.errors) >= len(seen)
