"""A cocotb test can use the pytest plugin's backend: with cocotb's pytest plugin
(experimental, cocotb >= 2.1) cocotb tests run under pytest inside the simulator with
the outer command line, so --pynq-alloc-backend/--pynq-alloc-option, the
pynq_alloc_backend and dma_buffer fixtures and the leak check all work there.

On Verilator only: with Icarus 11 the simulator crashes at exit (-11) after any
cocotbext-axi traffic under that plugin, with or without pynq_alloc (a cocotb/Icarus
problem). One C++ build (-O0), ~15 s.
"""
import importlib
import os
from pathlib import Path

import pytest

import simrun

pytest_plugins = ["pytester"]

INNER = '''
import numpy as np
import pytest
import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster
from pynq_alloc.cocotb import MMIO, AxiRam, run_driver

KEEP = []


@pytest.fixture(name="copy_design")
def copy_design_fixture(hdl):
    hdl.toplevel = "axi_copy"
    hdl.sources = (HDL,)
    hdl.build_args = ["-Wno-fatal", "-Wno-WIDTH", "-CFLAGS", "-O0"]
    hdl.build()
    return hdl


@pytest.mark.cocotb_runner
def test_copy_engine(copy_design):
    copy_design.test()


async def start(dut, backend):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, backend=backend)
    mmio = MMIO(AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst))
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    return mmio


def copy(mmio, dst, src):
    src.flush()
    mmio.write(0x08, src.device_address)
    mmio.write(0x10, dst.device_address)
    mmio.write(0x18, src.nbytes)
    mmio.write(0x00, 1)
    while not mmio.read(0x04) & 2:
        pass
    dst.invalidate()


async def test_round_trip_on_the_plugin_backend(dut, pynq_alloc_backend, dma_buffer):
    info = pynq_alloc_backend.info()
    assert (info["check"], info["total"]) == ("raise", 1 << 20)  # the outer options
    mmio = await start(dut, pynq_alloc_backend)
    src = dma_buffer(256, cacheable=True)
    dst = dma_buffer(256, cacheable=True)
    src[:] = np.arange(256) * 5
    await run_driver(copy, mmio, dst, src)
    assert np.array_equal(dst, src)


async def test_leaks_in_the_simulator(dut, dma_buffer):
    KEEP.append(dma_buffer((3, 7), "u2"))
'''


def test_cocotb_test_uses_the_plugin_backend(pytester, monkeypatch):
    simrun.require_tools(pytest)
    try:
        importlib.import_module("cocotb_tools._pytest.plugin")
    except ImportError as exc:
        pytest.skip(f"this cocotb has no pytest plugin (experimental since 2.1): {exc}")
    found = simrun.find_verilator()
    if isinstance(found, str):
        if os.environ.get("PYNQ_ALLOC_REQUIRE_TOOLS") == "1":
            pytest.fail(f"Verilator required (PYNQ_ALLOC_REQUIRE_TOOLS=1): {found}")
        pytest.skip(found)
    bindir, root = found
    import pynq_alloc

    pkg_root = str(Path(pynq_alloc.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", pkg_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
    if root is not None:
        monkeypatch.setenv("VERILATOR_ROOT", str(root))
    monkeypatch.delenv("PYNQ_ALLOC_SIM_CHECK", raising=False)
    pytester.makepyfile(test_inner=f"HDL = {str(simrun.HDL / 'axi_copy.v')!r}\n" + INNER)
    result = pytester.runpytest_subprocess(
        "-p", "cocotb_tools._pytest.plugin", "-p", "pynq_alloc.pytest_plugin",
        "-p", "no:cacheprovider", "--cocotb-simulator=verilator",
        "--pynq-alloc-backend=sim", "--pynq-alloc-option=check=raise",
        "--pynq-alloc-option=size=1048576", "-rA",
        timeout=900,
    )
    out = result.stdout.str()
    # the round trip passed on the plugin's backend; the leak was caught in the simulator
    result.stdout.fnmatch_lines(["*PASSED*test_round_trip_on_the_plugin_backend*"])
    assert "BufferLeakError: pynq_alloc leak check:" in out, out[-6000:]
    assert "shape (3, 7) dtype uint16" in out, out[-6000:]
    assert "test_leaks_in_the_simulator" in out
