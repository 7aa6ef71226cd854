"""pytest plugin for code that uses pynq_alloc (registered as ``pynq_alloc.pytest_plugin``).

Options (command line, or the ini keys of the same name with ``_`` for ``-``):

``--pynq-alloc-backend=SPEC``
    the backend the fixtures use, e.g. ``sim`` or ``hugepage``, opened when the
    session starts; it is also the default backend (``allocate()`` with no
    target) for the session. Without it the fixtures use
    :func:`pynq_alloc.default_backend` (so ``PYNQ_ALLOC_BACKEND`` still decides).
``--pynq-alloc-option=KEY=VALUE``
    (repeatable) a backend option for ``open_backend(SPEC, KEY=VALUE)``, e.g.
    ``check=raise``; needs ``--pynq-alloc-backend``.

A backend that cannot be opened (unknown spec, bad option, nothing usable here)
is one ``pytest.UsageError`` when the session starts.

Fixtures:

``pynq_alloc_backend``
    the session's backend.
``dma_buffer``
    a factory: ``dma_buffer(shape, dtype='u4', cacheable=None, align=None, address_bits=None)``
    allocates a :class:`pynq_alloc.Buffer` from that backend.

Every test that uses either fixture is checked for leaks: a buffer of the
session's backend still alive when the test and its function-scoped fixtures
are done makes the test error at teardown with a short report naming each
leaked buffer's shape, dtype, device address and the file:line of the
``dma_buffer(...)`` call (buffers allocated otherwise are named by shape, dtype
and device address). Leaks are attributed to the test that made them, whatever
earlier tests did: the backend's live blocks are compared as a set. Mark a test
``@pytest.mark.pynq_alloc_no_leak_check`` to leave it unchecked.

Marker ``@pytest.mark.require_hardware``: skip the test when the session's
backend is the simulated ``sim``.
"""
from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generator, Iterator, List, Optional, Tuple

import pytest

import pynq_alloc

__all__ = ["BufferLeakError", "pynq_alloc_backend", "dma_buffer"]


class BufferLeakError(AssertionError):
    """A test left buffers alive on the pynq_alloc fixtures' backend."""


@dataclass
class _Record:
    """One dma_buffer() allocation: what, and where it was made."""

    shape: Tuple[int, ...]
    dtype: str
    nbytes: int
    device_address: Optional[int]
    filename: str
    lineno: int
    function: str

    def describe(self, rootdir: str) -> str:
        path = self.filename
        try:
            rel = os.path.relpath(path, rootdir)
            if not rel.startswith(".."):
                path = rel
        except ValueError:
            pass
        addr = ""
        if self.device_address is not None:
            addr = f" at device address 0x{self.device_address:x}"
        return (
            f"shape {self.shape} dtype {self.dtype} ({self.nbytes} bytes{addr}), "
            f"allocated at {path}:{self.lineno} in {self.function}()"
        )


class _Session:
    """Per-config state: the backend (an explicit one opened at session start)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.spec: Optional[str] = config.getoption("pynq_alloc_backend") or config.getini(
            "pynq_alloc_backend"
        ) or None
        self.options: Dict[str, str] = {}
        raw = list(config.getoption("pynq_alloc_option") or []) + list(
            config.getini("pynq_alloc_option") or []
        )
        for item in raw:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise pytest.UsageError(
                    f"--pynq-alloc-option takes KEY=VALUE (e.g. check=raise), got {item!r}"
                )
            self.options[key.strip()] = value.strip()
        if self.options and self.spec is None:
            raise pytest.UsageError("--pynq-alloc-option needs --pynq-alloc-backend=SPEC")
        self.backend: Optional[pynq_alloc.Backend] = None
        self.owned = False  # we opened it (and made it the default): undo at the end

    def get(self) -> pynq_alloc.Backend:
        if self.backend is None:
            if self.spec is None:
                self.backend = pynq_alloc.default_backend()
            else:
                opts = dict(self.options)
                check = os.environ.get("PYNQ_ALLOC_SIM_CHECK")
                if check and "check" not in opts and self.spec.split(":", 1)[0] == "sim":
                    opts["check"] = check  # as the default backend would honour it
                self.backend = pynq_alloc.open_backend(self.spec, **opts)
                self.owned = True
                pynq_alloc.set_default_backend(self.backend)
        return self.backend

    def close(self) -> None:
        if self.owned and self.backend is not None:
            pynq_alloc.set_default_backend(None)
            self.backend.close()  # stays valid until its last buffer is gone
        self.backend = None


_session_key = pytest.StashKey[_Session]()
_records_key = pytest.StashKey[List[_Record]]()
_reports_key = pytest.StashKey[Dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pynq_alloc", "pynq_alloc DMA buffers")
    group.addoption(
        "--pynq-alloc-backend",
        dest="pynq_alloc_backend",
        metavar="SPEC",
        default=None,
        help="backend for the pynq_alloc_backend/dma_buffer fixtures and the session's "
        "default backend ('sim', 'hugepage', ...); default: pynq_alloc.default_backend() "
        "(PYNQ_ALLOC_BACKEND, else the board's backend, else sim off-board)",
    )
    group.addoption(
        "--pynq-alloc-option",
        dest="pynq_alloc_option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="backend option for --pynq-alloc-backend, e.g. check=raise (repeatable)",
    )
    parser.addini("pynq_alloc_backend", "default for --pynq-alloc-backend", default="")
    parser.addini(
        "pynq_alloc_option", "defaults for --pynq-alloc-option (KEY=VALUE lines)", type="linelist"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "require_hardware: skip the test when the pynq_alloc backend is the simulated 'sim'",
    )
    config.addinivalue_line(
        "markers",
        "pynq_alloc_no_leak_check: do not fail the test for pynq_alloc buffers it leaves alive",
    )
    config.stash[_session_key] = _Session(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    # An explicit backend is opened now, so that it is the default backend for
    # the whole session; one that cannot be opened (unknown spec, bad option,
    # nothing usable here) stops the session once, before any test runs.
    state = session.config.stash[_session_key]
    if state.spec is not None:
        try:
            state.get()
        except Exception as exc:
            opts = "".join(f" --pynq-alloc-option={k}={v}" for k, v in state.options.items())
            raise pytest.UsageError(
                f"pynq_alloc: --pynq-alloc-backend={state.spec}{opts} could not be opened: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_session_key, None)
    if session is not None:
        session.close()


def pytest_report_header(config: pytest.Config) -> str:
    session = config.stash[_session_key]
    if session.spec is None:
        return "pynq_alloc: fixtures use the default backend"
    opts = "".join(f", {k}={v}" for k, v in session.options.items())
    return f"pynq_alloc: fixtures use backend {session.spec!r}{opts}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("require_hardware") is not None:
        backend = item.config.stash[_session_key].get()
        if backend.name == "sim":
            pytest.skip(
                f"require_hardware: the pynq_alloc backend is the simulated {backend.spec!r} "
                "(choose one with --pynq-alloc-backend=SPEC or PYNQ_ALLOC_BACKEND)"
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    item.stash.setdefault(_reports_key, {})[report.when] = report
    if call.excinfo is not None and call.excinfo.errisinstance(BufferLeakError):
        # the leak check's own frames (the fixture's source) say nothing about the leak
        report.longrepr = f"BufferLeakError: {call.excinfo.value}"


@pytest.fixture(scope="session")
def pynq_alloc_backend(pytestconfig: pytest.Config) -> pynq_alloc.Backend:
    """The session's pynq_alloc backend (from --pynq-alloc-backend, else the default)."""
    return pytestconfig.stash[_session_key].get()


@pytest.fixture
def dma_buffer(
    request: pytest.FixtureRequest, pynq_alloc_backend: pynq_alloc.Backend
) -> Callable[..., pynq_alloc.Buffer]:
    """A factory: ``dma_buffer(shape, dtype='u4', *, cacheable=None, align=None, address_bits=None)``."""
    records = request.node.stash.setdefault(_records_key, [])

    def dma_buffer(shape: Any, dtype: Any = "u4", **kwargs: Any) -> pynq_alloc.Buffer:
        buf = pynq_alloc_backend.allocate(shape, dtype, **kwargs)
        frame = sys._getframe(1)
        records.append(
            _Record(
                shape=buf.shape,
                dtype=str(buf.dtype),
                nbytes=buf.nbytes,
                device_address=buf.device_address,
                filename=frame.f_code.co_filename,
                lineno=frame.f_lineno,
                function=frame.f_code.co_name,
            )
        )
        return buf

    return dma_buffer


@pytest.fixture(autouse=True)
def _pynq_alloc_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves buffers alive on the fixtures' backend.

    Autouse fixtures are set up first and torn down last, so this sees the
    buffers after the test and all its function-scoped fixtures are gone.
    The backend's live blocks are compared as a set (``Backend._live()``, each
    block by its serial number) before and after the test, so a leak is
    attributed to the test that made it whatever earlier tests did, and an
    earlier test's buffer that dies meanwhile cannot hide it.
    """
    if (
        "pynq_alloc_backend" not in request.fixturenames
        or request.node.get_closest_marker("pynq_alloc_no_leak_check") is not None
    ):
        yield
        return
    backend: pynq_alloc.Backend = request.getfixturevalue("pynq_alloc_backend")
    before = {row[0] for row in backend._live()}
    yield
    reports = request.node.stash.get(_reports_key, {})
    if any(r.failed for r in reports.values()):
        return  # the failure's traceback keeps its frames, and their buffers, alive

    def new_blocks() -> List[Tuple[int, int, int, Any, Any]]:
        return [row for row in backend._live() if row[0] not in before]

    rows = new_blocks()
    if rows:
        # Only the test item's own references are left to drop: every other
        # function-scoped fixture is finalized by now (this one is torn down
        # last), but pytest clears item.funcargs only after teardown. Then
        # reference cycles (buffers themselves go by refcount).
        funcargs = getattr(request.node, "funcargs", None)
        if isinstance(funcargs, dict):
            funcargs.clear()
        gc.collect()
        rows = new_blocks()
    if not rows:
        return
    rootdir = str(request.config.rootpath)
    made_here = {r.device_address: r for r in request.node.stash.get(_records_key, [])}
    lines = [
        f"pynq_alloc leak check: {request.node.nodeid} left {len(rows)} buffer(s) alive on "
        f"backend {backend.spec!r}:"
    ]
    for _serial, address, nbytes, shape, dtype in reversed(rows):  # oldest first
        record = made_here.get(address)
        if record is not None:
            lines.append(f"  {record.describe(rootdir)}")
        elif shape is not None:
            lines.append(
                f"  shape {shape} dtype {dtype} ({nbytes}-byte block at device address "
                f"0x{address:x}), allocated without dma_buffer()"
            )
        else:
            lines.append(
                f"  a {nbytes}-byte block at device address 0x{address:x} (held by views "
                "of a buffer allocated without dma_buffer())"
            )
    lines.append(
        "Drop every reference (del buf, and its views), call buf.freebuffer(), or use "
        "`with dma_buffer(...) as buf:`; mark the test pynq_alloc_no_leak_check if intended."
    )
    raise BufferLeakError("\n".join(lines))
