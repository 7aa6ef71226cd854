"""PYNQ's own driver code, obtained at test time (never copied into this repository).

PYNQ is on PyPI as an sdist only (``pynq`` 4.0.0). ``pynq_source()`` finds an
extracted copy, in this order:

1. ``PYNQ_ALLOC_PYNQ_SRC``: a directory holding PYNQ's ``pynq/`` package (an
   extracted sdist or a PYNQ checkout), or the path of the sdist tarball itself;
2. the cache, ``$PYNQ_ALLOC_CACHE`` or ``$XDG_CACHE_HOME/pynq_alloc`` (default
   ``~/.cache/pynq_alloc``): ``pynq-4.0.0/`` there, extracted from
   ``pynq-4.0.0.tar.gz``, which is fetched once with
   ``pip download --no-deps --no-binary :all: pynq==4.0.0`` and checked against
   the sha256 PyPI published for it.

``load_pynq()`` imports PYNQ's modules from that copy *unmodified*: the driver
modules (``pynq/lib/dma.py``, ``pynq/lib/video/dma.py``, ``pynq/lib/video/common.py``)
and what they build on (``pynq/overlay.py`` for ``DefaultIP`` and the HLS argument
packing, ``pynq/mmio.py``, ``pynq/registers.py``, ``pynq/ps.py``,
``pynq/pl_server/device.py``, ...). Only the
package ``__init__`` files are not run (they pull in the board runtime: XRT,
pydantic, the PL server). What is stubbed, and why:

* ``pynq`` itself is a bare package whose ``allocate`` IS ``pynq_alloc.allocate``,
  so PYNQ's drivers allocate pynq_alloc Buffers (``from pynq import allocate``);
  ``DefaultIP``/``UnsupportedConfiguration``/``MMIO`` are PYNQ's own classes.
* ``pynqutils`` and ``pynqmetadata`` (separate PyPI projects that parse overlay
  metadata): only names that ``overlay.py``/``dma.py`` import; the overlay parsing
  that would use them is never called. ``ReprDict`` is a plain ``dict`` subclass.
* ``pynq.interrupt``: ``Interrupt`` needs the PL server and UIO devices; the stub
  records the interrupt's path and fails loudly if a driver ever waits on it (the
  register models set status bits before the drivers poll, so none do).
* ``pynq.ps.ON_TARGET`` is forced to False (off-board).

PYNQ's own ``Device`` (``pynq/pl_server/device.py``) and its test double
``MockIPDevice`` (the sdist's ``tests/mock_devices.py``) are loaded too: register
access goes through MockIPDevice to our register models, and ``Device.allocate``
(``self.default_memory.allocate(shape, dtype, **kwargs)``) is what PYNQ's SG DMA
calls for its descriptors.

After loading, ``sys.modules`` is restored: the stub ``pynq`` is not left behind
for other tests.
"""
import hashlib
import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
import warnings
from pathlib import Path

import pytest

import pynq_alloc

PYNQ_VERSION = "4.0.0"
SDIST = f"pynq-{PYNQ_VERSION}.tar.gz"
# sha256 of pynq-4.0.0.tar.gz as published on PyPI (pip verifies it on
# download; we check it again for a cached tarball or one PYNQ_ALLOC_PYNQ_SRC names;
# a directory there is taken as it is, e.g. a PYNQ checkout)
SDIST_SHA256 = "1f974f73b2ec473ab8ddcd2f91c7df975b239c3fd62d62bf21d46d1f91cf3f95"

# the files the tests import: a directory missing one is not a PYNQ source tree
NEEDED = (
    "pynq/lib/dma.py",
    "pynq/lib/video/dma.py",
    "pynq/lib/video/common.py",
    "pynq/overlay.py",
    "pynq/mmio.py",
    "pynq/_3rdparty/tinynumpy.py",
    "pynq/pl_server/device.py",
    "tests/mock_devices.py",
)


class Unavailable(Exception):
    """PYNQ's source could not be obtained; the message says why and what to do."""


def cache_dir() -> Path:
    env = os.environ.get("PYNQ_ALLOC_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pynq_alloc"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_source(root: Path) -> bool:
    return all((root / p).is_file() for p in NEEDED)


def _download(dest: Path) -> Path:
    """pip download the sdist into dest (a fresh directory); return the tarball."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
           "-d", str(dest), f"pynq=={PYNQ_VERSION}"]
    # not under a sanitizer's preloaded runtime (the ASan lane runs the suite so)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"`{' '.join(cmd)}` did not run: {exc}") from None
    tarball = dest / SDIST
    if r.returncode != 0 or not tarball.is_file():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-4:])
        raise Unavailable(f"`pip download ... pynq=={PYNQ_VERSION}` failed "
                          f"(exit {r.returncode}): {tail}")
    return tarball


def _extract(tarball: Path, into: Path) -> Path:
    """Extract the sdist's pynq-4.0.0/ tree into `into` (atomically); return it."""
    final = into / f"pynq-{PYNQ_VERSION}"
    if _is_source(final):
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=into))
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            prefix = f"pynq-{PYNQ_VERSION}/"
            members = []
            for m in tf.getmembers():
                name = m.name
                # only the sdist's own tree, only files and directories, no escapes
                if (not name.startswith(prefix) or name.startswith("/") or ".." in Path(name).parts
                        or not (m.isfile() or m.isdir())):
                    continue
                members.append(m)
            # the "data" filter where Python has it (3.12 warns without a filter)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp, members=members, **extra)
        try:
            os.rename(tmp / f"pynq-{PYNQ_VERSION}", final)
        except OSError:
            if not _is_source(final):  # not a concurrent run that got there first
                raise
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    if not _is_source(final):
        raise Unavailable(f"{tarball} does not hold PYNQ's driver sources ({', '.join(NEEDED)})")
    return final


def pynq_source() -> Path:
    """The root of an extracted PYNQ 4.0.0 source tree (the directory holding pynq/)."""
    env = os.environ.get("PYNQ_ALLOC_PYNQ_SRC")
    if env:
        p = Path(env)
        if p.is_file():
            digest = _sha256(p)
            if digest != SDIST_SHA256:
                raise Unavailable(f"PYNQ_ALLOC_PYNQ_SRC={env} has sha256 {digest}, not that of "
                                  f"PyPI's {SDIST} ({SDIST_SHA256})")
            into = cache_dir()
            into.mkdir(parents=True, exist_ok=True)
            return _extract(p, into)
        for root in (p, p / f"pynq-{PYNQ_VERSION}"):
            if _is_source(root):
                return root
        raise Unavailable(f"PYNQ_ALLOC_PYNQ_SRC={env} is neither PYNQ's sdist nor a directory "
                          f"holding its sources ({', '.join(NEEDED)})")
    cache = cache_dir()
    if _is_source(cache / f"pynq-{PYNQ_VERSION}"):
        return cache / f"pynq-{PYNQ_VERSION}"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Unavailable(f"cannot create the cache directory {cache}: {exc} "
                          "(set PYNQ_ALLOC_CACHE to a writable directory)") from None
    tarball = cache / SDIST
    if not tarball.is_file() or _sha256(tarball) != SDIST_SHA256:
        dl = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        try:
            got = _download(dl)
            digest = _sha256(got)
            if digest != SDIST_SHA256:
                raise Unavailable(f"downloaded {SDIST} has sha256 {digest}, expected "
                                  f"{SDIST_SHA256} (PyPI's published digest)")
            os.replace(got, tarball)
        finally:
            subprocess.run(["rm", "-rf", str(dl)], check=False)
    return _extract(tarball, cache)


# ---------------------------------------------------------------- stubs


class _ReprDict(dict):
    """Stand-in for pynqutils.runtime.repr_dict.ReprDict (a dict that pretty-prints)."""


def _not_off_board(what):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"{what} is stubbed in pynq_alloc's tests (needs a board)")
    return fail


class _StubInterrupt:
    """pynq.interrupt.Interrupt off-board: remembers its pin, must never be waited on."""

    def __init__(self, pinname):
        self.pinname = pinname

    async def wait(self):
        raise AssertionError(
            f"PYNQ driver waited on interrupt {self.pinname}: the register model should "
            "have set the status bit before the driver polled it")


def _module(name, path=None, **attrs):
    m = types.ModuleType(name)
    if path is not None:
        m.__path__ = [str(path)]
    m.__dict__.update(attrs)
    return m


_PREFIXES = ("pynq", "pynqutils", "pynqmetadata", "pynq_sdist_tests")


def _ours(name):
    return any(name == p or name.startswith(p + ".") for p in _PREFIXES)


def _stubs(pkg: Path):
    stubs = {
        "pynq": _module("pynq", pkg, allocate=pynq_alloc.allocate, __version__=PYNQ_VERSION),
        "pynq.lib": _module("pynq.lib", pkg / "lib"),
        "pynq.lib.video": _module("pynq.lib.video", pkg / "lib" / "video"),
        "pynq._3rdparty": _module("pynq._3rdparty", pkg / "_3rdparty"),
        "pynq.pl_server": _module("pynq.pl_server", pkg / "pl_server"),
        "pynq_sdist_tests": _module("pynq_sdist_tests", pkg.parent / "tests"),
        "pynq.interrupt": _module("pynq.interrupt", Interrupt=_StubInterrupt),
        "pynqutils": _module("pynqutils", Path("/nonexistent")),
        "pynqutils.runtime": _module("pynqutils.runtime", Path("/nonexistent"),
                                     ReprDict=_ReprDict),
        "pynqutils.runtime.repr_dict": _module("pynqutils.runtime.repr_dict", ReprDict=_ReprDict),
        "pynqmetadata": _module("pynqmetadata", Path("/nonexistent")),
        "pynqmetadata.frontends": _module("pynqmetadata.frontends",
                                          Metadata=_not_off_board("pynqmetadata.Metadata")),
        "pynqmetadata.views": _module("pynqmetadata.views", Path("/nonexistent")),
        "pynqmetadata.views.runtime": _module("pynqmetadata.views.runtime", Path("/nonexistent")),
        "pynqmetadata.views.runtime.append_drivers_pass": _module(
            "pynqmetadata.views.runtime.append_drivers_pass",
            bind_drivers_to_metadata=_not_off_board("bind_drivers_to_metadata")),
        # the MicroBlaze package's __init__ and compile.py need the BSPs and mb-gcc;
        # rpc.py only takes two names from them
        "pynq.lib.pynqmicroblaze": _module(
            "pynq.lib.pynqmicroblaze", pkg / "lib" / "pynqmicroblaze",
            MicroblazeProgram=type("MicroblazeProgram", (), {
                "__init__": _not_off_board("MicroblazeProgram")})),
        "pynq.lib.pynqmicroblaze.compile": _module(
            "pynq.lib.pynqmicroblaze.compile", preprocess=_not_off_board("preprocess")),
    }
    stubs["pynqutils"].runtime = stubs["pynqutils.runtime"]
    return stubs


def _with_stubs(pkg: Path, fn):
    """Run fn(stubs) with the stub modules in sys.modules, then restore sys.modules."""
    stubs = _stubs(pkg)
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stubs)
    importlib.invalidate_caches()
    try:
        with warnings.catch_warnings():
            # pynq/gpio.py warns at import on a CPU that is not a Zynq's
            warnings.filterwarnings("ignore", "Pynq does not support the CPU Architecture",
                                    ResourceWarning)
            return fn(stubs)
    finally:
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


def _load(src: Path):
    pkg = src / "pynq"
    return _with_stubs(pkg, lambda stubs: _import_all(pkg, stubs))


def _import_all(pkg, stubs):
    ps = importlib.import_module("pynq.ps")
    ps.ON_TARGET = False
    mmio = importlib.import_module("pynq.mmio")
    registers = importlib.import_module("pynq.registers")
    overlay = importlib.import_module("pynq.overlay")
    top = stubs["pynq"]
    top.MMIO = mmio.MMIO
    top.DefaultIP = overlay.DefaultIP
    top.UnsupportedConfiguration = overlay.UnsupportedConfiguration
    top.Register = registers.Register
    device = importlib.import_module("pynq.pl_server.device")
    top.Device = device.Device
    # PYNQ's own test double for register access (its tests/mock_devices.py)
    mock_devices = importlib.import_module("pynq_sdist_tests.mock_devices")
    dma = importlib.import_module("pynq.lib.dma")
    vdma = importlib.import_module("pynq.lib.video.dma")
    common = importlib.import_module("pynq.lib.video.common")
    for mod in (ps, mmio, registers, overlay, device, mock_devices, dma, vdma, common):
        f = Path(mod.__file__).resolve()
        assert f.is_relative_to(pkg.parent.resolve()), f"{mod.__name__} came from {f}"
    return types.SimpleNamespace(src=pkg.parent, ps=ps, mmio=mmio, registers=registers,
                                 overlay=overlay, device=device, mock_devices=mock_devices,
                                 dma=dma, vdma=vdma, video_common=common)


_loaded = None


def load_pynq():
    """PYNQ's modules (see the module docstring), or skip/fail saying why not.

    Skips when PYNQ's sdist cannot be obtained; with PYNQ_ALLOC_REQUIRE_TOOLS=1
    (CI) that is a failure instead, since PyPI provides it.
    """
    global _loaded
    if _loaded is None:
        try:
            _loaded = _load(pynq_source())
        except Unavailable as exc:
            _loaded = exc  # once per session: no second download attempt
    if isinstance(_loaded, Unavailable):
        msg = (f"PYNQ {PYNQ_VERSION}'s sdist is not available: {_loaded}. Set "
               "PYNQ_ALLOC_PYNQ_SRC to an extracted sdist or its tarball to run these "
               "tests offline.")
        if os.environ.get("PYNQ_ALLOC_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{msg} (PYNQ_ALLOC_REQUIRE_TOOLS=1)", pytrace=False)
        pytest.skip(msg)
    return _loaded


_rpc = None


def load_microblaze_rpc():
    """PYNQ's MicroBlaze RPC module (``pynq/lib/pynqmicroblaze/rpc.py``, unmodified),
    which packs ``physical_address`` of buffers passed as ``void*``. Needs pycparser
    (a PYNQ dependency): skipped without it, a failure under PYNQ_ALLOC_REQUIRE_TOOLS=1."""
    global _rpc
    src = load_pynq().src
    if _rpc is None:
        try:
            import pycparser  # noqa: F401
        except ImportError:
            msg = "pycparser is not installed (pip install pycparser); PYNQ's rpc.py needs it"
            if os.environ.get("PYNQ_ALLOC_REQUIRE_TOOLS") == "1":
                pytest.fail(f"{msg} (PYNQ_ALLOC_REQUIRE_TOOLS=1)", pytrace=False)
            pytest.skip(msg)
        pkg = src / "pynq"

        def imp(stubs):
            importlib.import_module("pynq.ps").ON_TARGET = False
            rpc = importlib.import_module("pynq.lib.pynqmicroblaze.rpc")
            assert Path(rpc.__file__).resolve().is_relative_to(pkg.resolve())
            return rpc

        _rpc = _with_stubs(pkg, imp)
    return _rpc
