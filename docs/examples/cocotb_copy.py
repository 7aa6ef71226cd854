"""A PYNQ-style driver runs unchanged against an HDL design under cocotb + Icarus.

The design (tests/cocotb/hdl/axi_copy.v) is an AXI4 copy engine; its memory is the
sim backend's device side, so the coherency checker sees every DMA access.
Run from a checkout:  python docs/examples/cocotb_copy.py
"""
import sys
import tempfile
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster

import pynq_alloc
from pynq_alloc.cocotb import MMIO, AxiRam, run_driver

CTRL, STATUS, SRC_LO, DST_LO, LEN = 0x00, 0x04, 0x08, 0x10, 0x18


def copy(mmio, dst, src, flush=True):
    """The driver: on a board, mmio is a pynq.MMIO and the buffers come from pynq.allocate."""
    if flush:
        src.flush()
    mmio.write(SRC_LO, src.device_address)
    mmio.write(DST_LO, dst.device_address)
    mmio.write(LEN, src.nbytes)
    mmio.write(CTRL, 1)
    while not mmio.read(STATUS) & 2:  # DONE
        pass
    dst.invalidate()


async def start(dut):
    """Clock, reset, a checked sim backend as the design's memory, the register bus."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    backend = pynq_alloc.open_backend("sim", check="raise")
    AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, backend=backend)
    mmio = MMIO(AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst))
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    return backend, mmio


@cocotb.test()
async def copy_round_trip(dut):
    backend, mmio = await start(dut)
    # cacheable=True: non-coherent memory, where flush()/invalidate() matter
    src = pynq_alloc.allocate(1024, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(1024, "u4", target=backend, cacheable=True)
    src[:] = np.arange(1024) * 3
    await run_driver(copy, mmio, dst, src)
    assert np.array_equal(dst, src)
    dut._log.warning("copied %d bytes: dst[:4] = %s", dst.nbytes, dst[:4])


@cocotb.test()
async def missing_flush_is_caught(dut):
    backend, mmio = await start(dut)
    src = pynq_alloc.allocate(1024, "u4", target=backend, cacheable=True)
    dst = pynq_alloc.allocate(1024, "u4", target=backend, cacheable=True)
    src[:] = 7
    try:
        await run_driver(copy, mmio, dst, src, flush=False)
    except pynq_alloc.CoherencyError as exc:
        dut._log.warning("caught: %s", str(exc).splitlines()[0])
    else:
        raise AssertionError("the missing flush() went unnoticed")


if __name__ == "__main__":
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    hdl = Path(__file__).resolve().parents[2] / "tests" / "cocotb" / "hdl" / "axi_copy.v"
    build_dir = Path(tempfile.gettempdir()) / "pynq_alloc-cocotb-example"
    runner = get_runner("icarus")
    runner.build(sources=[hdl], hdl_toplevel="axi_copy", parameters={"DATA_WIDTH": 64},
                 build_dir=build_dir, timescale=("1ns", "1ps"))
    results = runner.test(hdl_toplevel="axi_copy", test_module=Path(__file__).stem,
                          build_dir=build_dir)
    tests, failed = get_results(results)
    print(f"{tests - failed} of {tests} cocotb tests passed")
    sys.exit(1 if failed else 0)
