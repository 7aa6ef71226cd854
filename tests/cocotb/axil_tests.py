"""cocotb tests run inside the simulator (Icarus) on hdl/axil_sum.v: the design's
AXI-Lite master reads and writes pynq_alloc buffers through pynq_alloc.cocotb.AxiLiteRam.
Started by test_cocotb.py (not collected by pytest).
"""
import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

import pynq_alloc
from pynq_alloc.cocotb import MMIO, AxiLiteRam, run_driver

CTRL, STATUS, SRC, DST, COUNT = 0x00, 0x04, 0x08, 0x0C, 0x10
DONE, ERROR = 2, 4


def summer(mmio, src, dst, flush=True):
    """PYNQ-style driver: the design sums src and writes [sum, count] to dst."""
    if flush:
        src.flush()
    mmio.write(SRC, src.device_address)
    mmio.write(DST, dst.device_address)
    mmio.write(COUNT, src.size)
    mmio.write(CTRL, 1)
    while not (status := mmio.read(STATUS)) & DONE:
        pass
    dst.invalidate()
    return status


async def setup(dut, check="raise", on_error="defer"):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    backend = pynq_alloc.open_backend("sim", size=1 << 20, check=check)
    ram = AxiLiteRam(AxiLiteBus.from_prefix(dut, "m_axil"), dut.clk, dut.rst, backend=backend,
                     on_error=on_error)
    mmio = MMIO(AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst),
                poll_gap=100, poll_gap_unit="ns")
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return backend, ram, mmio


@cocotb.test()
async def lite_round_trip(dut):
    backend, ram, mmio = await setup(dut)
    src = pynq_alloc.allocate(37, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(2, "u4", target=backend, cacheable=True)
    src[:] = np.random.default_rng(5).integers(0, 2**32, 37, dtype=np.uint32)
    status = await run_driver(summer, mmio, src, dst)
    assert status & ERROR == 0
    assert int(dst[0]) == int(src.astype(np.uint64).sum()) & 0xFFFFFFFF
    assert int(dst[1]) == 37
    assert (ram.stats.reads, ram.stats.writes) == (37, 2)
    assert (ram.stats.bytes_read, ram.stats.bytes_written) == (37 * 4, 8)


@cocotb.test()
async def lite_missing_flush(dut):
    backend, ram, mmio = await setup(dut)
    src = pynq_alloc.allocate(16, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(2, "u4", target=backend, cacheable=True)
    src[:] = 3
    try:
        await run_driver(summer, mmio, src, dst, flush=False)
    except pynq_alloc.CoherencyError as exc:
        assert f"0x{src.device_address:x}" in str(exc) and "never flushed" in str(exc)
    else:
        raise AssertionError("the missing flush() was not reported")


@cocotb.test()
async def lite_slverr(dut):
    backend, ram, mmio = await setup(dut, on_error="slverr")
    src = pynq_alloc.allocate(4, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(2, "u4", target=backend, cacheable=True)
    src[:] = 3
    status = await run_driver(summer, mmio, src, dst, flush=False)
    assert status & ERROR, f"status {status:#x}: no SLVERR seen by the design"
    assert len(ram.errors) == 4  # one per word read
    status = await run_driver(summer, mmio, src, dst)
    assert status & ERROR == 0 and dst.tolist() == [12, 4]
