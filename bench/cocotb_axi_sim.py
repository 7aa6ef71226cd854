"""Runs inside the simulator for bench/cocotb_axi.py: the same copy on the same design
(tests/cocotb/hdl/axi_copy.v) with pynq_alloc.cocotb.AxiRam on sim buffers ("ours",
checker on) and with cocotbext-axi's own AxiRam ("theirs"), alternating; each run's
CPU time (this whole simulator process: Icarus + Python) goes to a JSON lines file.
"""
import json
import os
import time

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster
from cocotbext.axi import AxiRam as TheirAxiRam

import pynq_alloc
from pynq_alloc.cocotb import MMIO, AxiRam

NBYTES = int(os.environ["BENCH_NBYTES"])
REPEATS = int(os.environ["BENCH_REPEATS"])
OUT = os.environ["BENCH_OUT"]
SRC_LO, DST_LO, LEN, CTRL, STATUS = 0x08, 0x10, 0x18, 0x00, 0x04


async def copy(mmio, src, dst):
    await mmio.awrite(SRC_LO, src)
    await mmio.awrite(DST_LO, dst)
    await mmio.awrite(LEN, NBYTES)
    await mmio.awrite(CTRL, 1)
    while not (await mmio.aread(STATUS)) & 2:
        pass


@cocotb.test()
@cocotb.parametrize(run=[f"{kind}{i}" for i in range(REPEATS) for kind in ("ours", "theirs")])
async def bench(dut, run):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    data = np.random.default_rng(1).integers(0, 256, NBYTES, dtype=np.uint8)
    if run.startswith("ours"):
        backend = pynq_alloc.open_backend("sim", size=4 * NBYTES + (1 << 20), check="raise")
        src = pynq_alloc.allocate(NBYTES, "u1", target=backend, cacheable=True)
        dst = pynq_alloc.allocate(NBYTES, "u1", target=backend, cacheable=True)
        ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, backend=backend)
        src[:] = data
        src.flush()
        src_addr, dst_addr = src.device_address, dst.device_address
    else:
        ram = TheirAxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=2**32)
        src_addr, dst_addr = 0x4000_0000, 0x4000_0000 + 2 * NBYTES
        ram.write(src_addr, data.tobytes())
    mmio = MMIO(AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst))
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    t0 = time.process_time()
    await copy(mmio, src_addr, dst_addr)
    cpu = time.process_time() - t0
    if run.startswith("ours"):
        dst.invalidate()
        assert np.array_equal(dst, data)
        ram.raise_deferred()
    else:
        assert ram.read(dst_addr, NBYTES) == data.tobytes()
    with open(OUT, "a") as f:
        f.write(json.dumps({"kind": run.rstrip("0123456789"), "cpu": cpu}) + "\n")
