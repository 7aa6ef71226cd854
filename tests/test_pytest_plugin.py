"""The pytest plugin (pynq_alloc.pytest_plugin), run inside pytester sessions.

The plugin is loaded with -p so these pass whether or not the pytest11 entry
point is installed.
"""
import os
from pathlib import Path

import pytest

import pynq_alloc

pytest_plugins = ["pytester"]

PLUGIN = ("-p", "pynq_alloc.pytest_plugin")
# plugins the inner runs do not need (absent ones are ignored); hypothesis's costs ~1 s a run
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")


@pytest.fixture
def run(pytester, monkeypatch):
    """runpytest with the plugin, on sim unless a test says otherwise."""
    monkeypatch.setenv("PYNQ_ALLOC_BACKEND", "sim")
    monkeypatch.delenv("PYNQ_ALLOC_SIM_CHECK", raising=False)
    # in-process runs share pynq_alloc's module state: start each from automatic
    # selection and give the outer session its default backend back afterwards
    saved = pynq_alloc.default_backend()

    def run(*args):
        pynq_alloc.set_default_backend(None)
        try:
            return pytester.runpytest(*PLUGIN, *QUIET, *args)
        finally:
            pynq_alloc.set_default_backend(saved)

    return run


def test_passing_test_with_dma_buffer(pytester, run):
    pytester.makepyfile(
        """
        import numpy as np
        import pynq_alloc

        def test_round_trip(dma_buffer, pynq_alloc_backend):
            buf = dma_buffer((16,), "u2")
            assert isinstance(buf, pynq_alloc.Buffer)
            assert buf.backend is pynq_alloc_backend
            assert buf.dtype == np.uint16 and buf.shape == (16,)
            buf[:] = np.arange(16)
            buf.flush()
            seen = pynq_alloc_backend.device_read(buf.device_address, buf.nbytes)
            assert np.frombuffer(seen, "u2").tolist() == list(range(16))

        def test_default_dtype_and_kwargs(dma_buffer):
            buf = dma_buffer(8, align=1 << 16, cacheable=False)
            assert buf.dtype == np.uint32
            assert buf.device_address % (1 << 16) == 0
            view = buf[::2]          # views die with the test too
            with dma_buffer((2, 3), "f8") as other:
                other[:] = 1.5
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["pynq_alloc: fixtures use the default backend"])


def test_leaking_test_is_reported_with_shape_and_site(pytester, run):
    pytester.makepyfile(
        test_leaky="""
        import pytest

        KEEP = []

        def test_leaks(dma_buffer):
            fine = dma_buffer(4)
            KEEP.append(dma_buffer((3, 5), "i2"))

        def test_leaks_a_plain_view(dma_buffer):
            import numpy as np
            KEEP.append(np.asarray(dma_buffer(7, "f4")))

        def test_freed_is_fine(dma_buffer):
            buf = dma_buffer(4)
            KEEP.append(buf)
            buf.freebuffer()

        @pytest.fixture
        def held(dma_buffer):
            buf = dma_buffer(9, "u1")
            yield buf          # released after the test: not a leak

        def test_fixture_buffers_are_fine(held):
            assert held.size == 9

        @pytest.mark.pynq_alloc_no_leak_check
        def test_opted_out(dma_buffer):
            KEEP.append(dma_buffer(11))

        def test_direct_allocation_counts(pynq_alloc_backend):
            KEEP.append(pynq_alloc_backend.allocate(5))

        def test_failing_test_reports_only_its_failure(dma_buffer):
            buf = dma_buffer(6)
            assert False, "the real failure"
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=6, failed=1, errors=3)
    out = result.stdout.str()
    # error at teardown of each leaking test, naming shape, dtype and file:line
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "*BufferLeakError: pynq_alloc leak check: test_leaky.py::test_leaks left 1 "
            "buffer(s) alive on backend 'sim':",
            "*shape (3, 5) dtype int16 (30 bytes at device address 0x*), allocated at "
            "test_leaky.py:7 in test_leaks()",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*shape (7,) dtype float32 (28 bytes*), allocated at test_leaky.py:11 in "
         "test_leaks_a_plain_view()"]
    )
    result.stdout.fnmatch_lines(
        ["*shape (5,) dtype uint32 (64-byte block at device address 0x*), allocated "
         "without dma_buffer()"]
    )
    assert "shape (4,)" not in out  # the freed and the dropped ones are not named
    assert "shape (9,)" not in out
    assert "shape (11,)" not in out
    assert "shape (6,)" not in out  # a failing test is not also blamed for a leak
    assert "the real failure" in out


def test_require_hardware_skips_on_sim(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.require_hardware
        def test_board():
            raise AssertionError("must not run on sim")

        def test_anywhere():
            pass
        """
    )
    result = run("-rs", "--strict-markers")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*require_hardware: the pynq_alloc backend is the simulated 'sim'*"]
    )


def test_require_hardware_runs_on_a_real_backend(pytester, run):
    """Any backend that is not sim counts as hardware: hugepage where it is usable."""
    try:
        pynq_alloc.open_backend("hugepage").close()
    except (OSError, MemoryError, NotImplementedError) as exc:
        pytest.skip(f"hugepage backend not usable here: {exc}")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.require_hardware
        def test_board(dma_buffer, pynq_alloc_backend):
            assert pynq_alloc_backend.name == "hugepage"
            dma_buffer(4)
        """
    )
    run("--pynq-alloc-backend=hugepage").assert_outcomes(passed=1)


def test_markers_are_registered(pytester, run):
    result = run("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.require_hardware:*", "@pytest.mark.pynq_alloc_no_leak_check:*"]
    )


def test_option_chooses_the_backend(pytester, run, monkeypatch):
    pytester.makepyfile(
        """
        import pynq_alloc

        def test_default_from_the_start():
            # before any test used the fixtures, the option's backend is the default
            assert pynq_alloc.default_backend().info()["total"] == 1048576

        def test_backend(pynq_alloc_backend, dma_buffer):
            info = pynq_alloc_backend.info()
            print("BACKEND", pynq_alloc_backend.spec, info["total"], info["check"],
                  info["coherent"])
            # the option's backend is also the session's default backend
            assert pynq_alloc.default_backend() is pynq_alloc_backend
            assert pynq_alloc.allocate(4).backend is pynq_alloc_backend
        """
    )
    # a backend spec that PYNQ_ALLOC_BACKEND cannot open: the option must win
    monkeypatch.setenv("PYNQ_ALLOC_BACKEND", "no-such-backend")
    result = run(
        "-s",
        "--pynq-alloc-backend=sim",
        "--pynq-alloc-option=size=1048576",
        "--pynq-alloc-option",
        "check=raise",
        "--pynq-alloc-option=coherent=1",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["pynq_alloc: fixtures use backend 'sim', size=1048576, check=raise, coherent=1",
         "*BACKEND sim 1048576 raise True*"]
    )


def test_ini_chooses_the_backend(pytester, run):
    pytester.makeini(
        """
        [pytest]
        pynq_alloc_backend = sim
        pynq_alloc_option =
            size=2097152
        """
    )
    pytester.makepyfile(
        """
        def test_backend(pynq_alloc_backend):
            assert pynq_alloc_backend.info()["total"] == 2097152
        """
    )
    run().assert_outcomes(passed=1)


def test_without_option_the_env_var_decides(pytester, run, monkeypatch):
    pytester.makepyfile(
        """
        import pynq_alloc

        def test_backend(pynq_alloc_backend):
            assert pynq_alloc_backend is pynq_alloc.default_backend()
            assert pynq_alloc_backend.name == "sim"
        """
    )
    run().assert_outcomes(passed=1)


def test_bad_option_is_a_usage_error(pytester, run):
    pytester.makepyfile("def test_x(): pass")
    result = run("--pynq-alloc-option=check")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--pynq-alloc-option takes KEY=VALUE*"])
    result = run("--pynq-alloc-option=check=raise")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--pynq-alloc-option needs --pynq-alloc-backend=SPEC*"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pynq-alloc-backend=no-such-backend"],
         "*--pynq-alloc-backend=no-such-backend could not be opened: ValueError: "
         "unknown backend 'no-such-backend'*"),
        (["--pynq-alloc-backend=sim", "--pynq-alloc-option=check=bogus"],
         "*--pynq-alloc-backend=sim --pynq-alloc-option=check=bogus could not be opened: "
         "ValueError: sim option check='bogus'*"),
        (["--pynq-alloc-backend=sim", "--pynq-alloc-option=frobnicate=1"],
         "*ValueError: the sim backend has no option 'frobnicate'*"),
    ],
)
def test_bad_backend_or_option_is_one_usage_error_at_start(pytester, run, args, message):
    pytester.makepyfile(
        """
        def test_needs(dma_buffer):
            pass

        def test_does_not():
            pass
        """
    )
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    err = result.stderr.str()
    assert err.count("could not be opened") == 1
    assert "test_needs" not in result.stdout.str() + err  # nothing ran, nothing collected


def test_leak_after_a_failing_test_is_reported(pytester, monkeypatch):
    """The failed test's buffers die while the next test runs; that must not hide its leak.

    In a subprocess: an in-process pytester run records every hook call, and so
    keeps the failed test's traceback (and its buffers) alive to the end.
    """
    monkeypatch.setenv("PYNQ_ALLOC_BACKEND", "sim")
    monkeypatch.delenv("PYNQ_ALLOC_SIM_CHECK", raising=False)
    root = str(Path(pynq_alloc.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pytester.makepyfile(
        test_after_failure="""
        import pynq_alloc

        KEEP = []

        def test_fails_holding_buffers(dma_buffer):
            mine = dma_buffer(64)
            plain = pynq_alloc.allocate(32)
            assert False, "the real failure"

        def test_leaks_without_dma_buffer(pynq_alloc_backend):
            KEEP.append(pynq_alloc.allocate((2, 2), "u1"))

        def test_leaks_with_dma_buffer(dma_buffer):
            KEEP.append(dma_buffer(3, "u2"))

        def test_clean_after_the_leaks(dma_buffer):
            dma_buffer(5)
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN, *QUIET, "-v")
    result.assert_outcomes(failed=1, passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_without_dma_buffer*",
            "*shape (2, 2) dtype uint8 (64-byte block at device address 0x*), allocated "
            "without dma_buffer()",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_with_dma_buffer*",
            "*shape (3,) dtype uint16 (6 bytes at device address 0x*), allocated at "
            "test_after_failure.py:14 in test_leaks_with_dma_buffer()",
        ]
    )
    out = result.stdout.str()
    assert "test_clean_after_the_leaks PASSED" in out
    assert "shape (64,)" not in out and "shape (5,)" not in out


def test_leak_report_is_short(pytester, run):
    """Only what leaked and where: no fixture source, no plugin frames."""
    pytester.makepyfile(
        test_short="""
        KEEP = []

        def test_leaks(dma_buffer):
            KEEP.append(dma_buffer((4, 4), "f8"))
        """
    )
    result = run()
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    section = out[out.index("ERROR at teardown of test_leaks"):out.index("short test summary")]
    body = [line for line in section.splitlines()[1:] if line.strip() and "====" not in line]
    assert body[0].startswith("BufferLeakError: pynq_alloc leak check: test_short.py::test_leaks")
    assert "shape (4, 4) dtype float64 (128 bytes at device address 0x" in body[1]
    assert body[1].rstrip().endswith("allocated at test_short.py:4 in test_leaks()")
    assert body[2].startswith("Drop every reference")
    assert len(body) == 3, section
    assert "def _pynq_alloc_leak_check" not in out and "pytest_plugin.py" not in out
