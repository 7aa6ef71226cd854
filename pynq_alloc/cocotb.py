"""Co-simulation: HDL AXI masters read and write pynq_alloc buffers under cocotb.

The ``sim`` backend's device side becomes the memory behind cocotbext-axi slaves
(:class:`AxiRam`, :class:`AxiLiteRam`), so a simulated design's DMA sees exactly what
a non-coherent SoC's DMA would see, and the coherency checker (``check='raise'``)
reports a missing ``flush()``/``invalidate()`` in the driver. :class:`MMIO` and
:func:`run_driver` let a synchronous PYNQ-style driver run unchanged inside the
simulation. Needs the ``cocotb`` extra: ``pip install 'pynq_alloc[cocotb]'``.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from typing import Any, Callable, List, Optional, Union

try:
    import cocotb
    from cocotb.task import bridge, resume
    from cocotb.triggers import Timer
    from cocotbext.axi import AxiResp, Region
    from cocotbext.axi.axi_slave import AxiSlaveRead, AxiSlaveWrite
    from cocotbext.axi.axil_slave import AxiLiteSlaveRead, AxiLiteSlaveWrite
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "pynq_alloc.cocotb needs cocotb >= 2.0 and cocotbext-axi: "
        "pip install 'pynq_alloc[cocotb]' (or pip install 'cocotb>=2.0' cocotbext-axi); "
        f"import failed with: {_exc}"
    ) from _exc

import pynq_alloc

__all__ = [
    "AccessStats",
    "AxiLiteRam",
    "AxiRam",
    "MMIO",
    "SimMemory",
    "raise_deferred",
    "run_driver",
]

ON_ERROR = ("defer", "fail", "slverr")


class AccessStats:
    """Device accesses made through a :class:`SimMemory` (reads, writes, bytes, errors)."""

    __slots__ = ("reads", "writes", "bytes_read", "bytes_written", "errors")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.reads = 0
        self.writes = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.errors = 0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return "AccessStats(" + ", ".join(f"{k}={getattr(self, k)}" for k in self.__slots__) + ")"


# device_read(addr, n, check=False) peeks without the coherency checker on
# pynq_alloc versions that have it; None until the first peek finds out.
_peek_has_check_kw: Optional[bool] = None


def _peek(backend: Any, address: int, length: int) -> Optional[bytes]:
    """What the device side holds, without tripping the checker; None if it cannot tell."""
    global _peek_has_check_kw
    if _peek_has_check_kw is not False:
        try:
            data = backend.device_read(address, length, check=False)
            _peek_has_check_kw = True
            return data
        except TypeError as exc:
            if "keyword" not in str(exc):
                raise
            _peek_has_check_kw = False
    # older pynq_alloc: a checked read; a warning is silenced, an error means "unknown"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pynq_alloc.CoherencyWarning)
        try:
            return backend.device_read(address, length)
        except pynq_alloc.CoherencyError:
            return None


def _require_sim(backend: Any) -> Any:
    if backend is None:
        backend = pynq_alloc.default_backend()
    if getattr(backend, "name", None) != "sim":
        raise ValueError(
            f"pynq_alloc.cocotb needs the 'sim' backend (its device side is the simulated "
            f"memory), got {backend!r}: open_backend('sim', check='raise')"
        )
    return backend


class SimMemory(Region):
    """A cocotbext-axi ``Region`` over a ``sim`` backend's device memory.

    Region offset ``o`` is device address ``base + o`` (kept in :attr:`device_base`). By default ``base`` is 0 and the
    region spans the whole 64-bit space, so offsets are device addresses; give
    ``base``/``size`` (e.g. the backend's ``base_address`` and ``size``) for a window
    to register in an ``AddressSpace``. Accesses go through the backend's
    ``device_read``/``device_write``, so the coherency checker sees them; addresses
    outside a live buffer raise ``ValueError``. :attr:`stats` counts them.
    """

    def __init__(self, backend: Any = None, base: int = 0, size: Optional[int] = None,
                 **kwargs: Any) -> None:
        self.backend = _require_sim(backend)
        if size is None:
            size = 2**64 - base
        super().__init__(size, base=base, **kwargs)
        # AddressSpace.register_region() rebinds .base to where the region sits in
        # that space; offsets map to device addresses through this, whatever happens
        self.device_base = base
        self.stats = AccessStats()
        # bound methods: the per-beat path is one C call
        self._dev_read = self.backend.device_read
        self._dev_write = self.backend.device_write

    # --- synchronous device-address access (the slaves' fast path) ---
    def device_read(self, address: int, length: int) -> bytes:
        """Read ``length`` bytes at device address ``address`` as the device would."""
        st = self.stats
        try:
            data = self._dev_read(address, length)
        except Exception:
            st.errors += 1
            raise
        st.reads += 1
        st.bytes_read += length
        return data

    def device_write(self, address: int, data: Any) -> None:
        """Write ``data`` at device address ``address`` as the device would."""
        st = self.stats
        try:
            self._dev_write(address, data)
        except Exception:
            st.errors += 1
            raise
        st.writes += 1
        st.bytes_written += len(data)

    # --- cocotbext-axi MemoryInterface (region offsets) ---
    async def _read(self, address: int, length: int, **kwargs: Any) -> bytes:
        return self.device_read(self.device_base + address, length)

    async def _write(self, address: int, data: Any, **kwargs: Any) -> None:
        self.device_write(self.device_base + address, bytes(data))

    # --- inspection without side effects ---
    def peek(self, address: int, length: int) -> Optional[bytes]:
        """Device-side bytes at a device address, not checked and not counted.

        ``None`` when this pynq_alloc has no check-free ``device_read`` and the
        checked read refused (the range holds lines the CPU has not flushed).
        """
        return _peek(self.backend, address, length)

    def hexdump_lines(self, address: int, length: int, prefix: str = "") -> List[str]:
        """Hex dump lines of the device side at device addresses [address, address+length)."""
        lines = []
        data = self.peek(address, length)
        for off in range(0, length, 16):
            n = min(16, length - off)
            if data is not None:
                chunk: Optional[bytes] = data[off:off + n]
            else:  # per line, so one unreadable line does not hide the rest
                chunk = self.peek(address + off, n)
            if chunk is None:
                lines.append(f"{prefix}{address + off:08x}: (not flushed: the device side "
                             "cannot be shown without device_read(check=False))")
                continue
            hexs = " ".join(f"{b:02x}" for b in chunk)
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            lines.append(f"{prefix}{address + off:08x}: {hexs:<47}  {text}")
        return lines

    def hexdump_str(self, address: int, length: int, prefix: str = "") -> str:
        return "\n".join(self.hexdump_lines(address, length, prefix))

    def hexdump(self, address: int, length: int, prefix: str = "") -> None:
        """Print what the device sees at device addresses [address, address+length)."""
        print(self.hexdump_str(address, length, prefix))


# --- device-error policy shared by the slaves ---

_pending = weakref.WeakSet()  # type: weakref.WeakSet[_Port]


class _Port:
    """The memory side of a slave: device accesses plus what to do when one fails."""

    def __init__(self, memory: SimMemory, on_error: str, offset: int, owner: str) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.memory = memory
        self.on_error = on_error
        self.offset = offset
        self.owner = owner
        self.errors: List[BaseException] = []  # every failed device access, in order
        self.deferred: List[Any] = []  # (test, error) not yet raised in the driver
        self._read = memory.device_read
        self._write = memory.device_write

    def read(self, address: int, length: int) -> bytes:
        try:
            return self._read(address + self.offset, length)
        except Exception as exc:
            return self._failed(exc, address + self.offset, length)

    def write(self, address: int, data: bytes) -> None:
        try:
            self._write(address + self.offset, data)
        except Exception as exc:
            self._failed(exc, address + self.offset, None)

    def _failed(self, exc: Exception, address: int, length: Optional[int]) -> bytes:
        self.errors.append(exc)
        if self.on_error == "slverr":
            raise exc  # cocotbext-axi answers SLVERR (and logs a warning)
        self.deferred.append((_test_token(), exc))
        _pending.add(self)
        if self.on_error == "fail":
            cocotb.start_soon(_fail_test(self))
        if length is None:
            return b""
        # the transfer carries on as on hardware: with the (stale) data the device holds
        data = None
        if isinstance(exc, pynq_alloc.CoherencyError):
            data = _peek(self.memory.backend, address, length)
        return data if data is not None else bytes(length)

    def take(self) -> Optional[BaseException]:
        """The first deferred error of the running test (others' are dropped), or None."""
        token = _test_token()
        mine = [exc for tok, exc in self.deferred if tok is token]
        self.deferred.clear()
        _pending.discard(self)
        if not mine:
            return None
        first = mine[0]
        if len(mine) > 1 and hasattr(first, "add_note"):
            first.add_note(f"{self.owner}: {len(mine) - 1} more failed device access(es) "
                           "after this one; all of them are in .errors")
        return first


def _test_token() -> Any:
    """The running cocotb test, so that one test's deferred errors never reach the next."""
    manager = getattr(cocotb, "_test_manager", None)
    return getattr(manager, "_current_test", None)


async def _fail_test(port: _Port) -> None:
    exc = port.take()
    if exc is not None:
        raise exc  # an unawaited task that raises ends the cocotb test with this error


def _take_deferred() -> Optional[BaseException]:
    for port in list(_pending):
        exc = port.take()
        if exc is not None:
            return exc
    return None


def raise_deferred() -> None:
    """Raise the first device access error deferred by an ``on_error='defer'`` slave.

    :class:`MMIO` calls it before every register access and :func:`run_driver` when the
    driver returns; call it yourself in a test that drives registers another way.
    """
    exc = _take_deferred()
    if exc is not None:
        raise exc


class _SlaveBase:
    def _init_memory(self, backend: Any, memory: Optional[SimMemory], on_error: str,
                     offset: int) -> None:
        if memory is None:
            memory = SimMemory(backend)
        elif backend is not None and memory.backend is not backend:
            raise ValueError("memory= belongs to another backend than backend=")
        self.memory = memory
        self.backend = memory.backend
        self._port = _Port(memory, on_error, offset, type(self).__name__)

    @property
    def on_error(self) -> str:
        return self._port.on_error

    @property
    def errors(self) -> List[BaseException]:
        """Every device access error this slave met, in order (whatever ``on_error`` is)."""
        return self._port.errors

    @property
    def stats(self) -> AccessStats:
        return self.memory.stats

    def raise_deferred(self) -> None:
        """Raise this slave's first deferred device error, if any."""
        exc = self._port.take()
        if exc is not None:
            raise exc

    def hexdump(self, address: int, length: int, prefix: str = "") -> None:
        self.memory.hexdump(address + self._port.offset, length, prefix)


class _WriteToPort:
    """The write half of a slave whose storage is a _Port (mixed into cocotbext-axi's)."""

    def __init__(self, bus: Any, clock: Any, reset: Any, reset_active_level: bool,
                 port: _Port) -> None:
        self._port_write = port.write
        super().__init__(bus, clock, reset, None, reset_active_level)

    async def _write(self, address: int, data: bytes) -> None:
        self._port_write(address, data)


class _ReadFromPort:
    """The read half of a slave whose storage is a _Port (mixed into cocotbext-axi's)."""

    def __init__(self, bus: Any, clock: Any, reset: Any, reset_active_level: bool,
                 port: _Port) -> None:
        self._port_read = port.read
        super().__init__(bus, clock, reset, None, reset_active_level)

    async def _read(self, address: int, length: int) -> bytes:
        return self._port_read(address, length)


class _AxiWrite(_WriteToPort, AxiSlaveWrite):
    pass


class _AxiRead(_ReadFromPort, AxiSlaveRead):
    pass


class _AxiLiteWrite(_WriteToPort, AxiLiteSlaveWrite):
    pass


class _AxiLiteRead(_ReadFromPort, AxiLiteSlaveRead):
    pass


class AxiRam(_SlaveBase):
    """An AXI4 slave (for an HDL master) whose storage is a ``sim`` backend's device memory.

    Bus address ``a`` is device address ``a + offset``: with ``offset=0`` the design
    uses ``buf.device_address`` as is. ``on_error`` decides what a failed device
    access (a :class:`pynq_alloc.CoherencyError` from ``check='raise'``, or an
    address outside every live buffer) does:

    ``'defer'`` (default)
        the burst completes with OKAY and the data the device side holds, as on
        hardware; the error is raised in the driver at its next :class:`MMIO`
        access, or when :func:`run_driver` returns.
    ``'fail'``
        the same, and the cocotb test ends with the error at once.
    ``'slverr'``
        the beat is answered with SLVERR, like a bus error (the design sees it).
    """

    def __init__(self, bus: Any, clock: Any, reset: Any = None, backend: Any = None, *,
                 on_error: str = "defer", reset_active_level: bool = True,
                 memory: Optional[SimMemory] = None, offset: int = 0) -> None:
        self._init_memory(backend, memory, on_error, offset)
        self.write_if = _AxiWrite(bus.write, clock, reset, reset_active_level, self._port)
        self.read_if = _AxiRead(bus.read, clock, reset, reset_active_level, self._port)


class AxiLiteRam(_SlaveBase):
    """An AXI-Lite slave over a ``sim`` backend's device memory; see :class:`AxiRam`."""

    def __init__(self, bus: Any, clock: Any, reset: Any = None, backend: Any = None, *,
                 on_error: str = "defer", reset_active_level: bool = True,
                 memory: Optional[SimMemory] = None, offset: int = 0) -> None:
        self._init_memory(backend, memory, on_error, offset)
        self.write_if = _AxiLiteWrite(bus.write, clock, reset, reset_active_level, self._port)
        self.read_if = _AxiLiteRead(bus.read, clock, reset, reset_active_level, self._port)


class MMIO:
    """PYNQ's ``MMIO`` (``read(offset)``, ``write(offset, value)``) over an ``AxiLiteMaster``.

    ``read``/``write`` block, so call them from synchronous driver code run with
    :func:`run_driver` (``await mmio.aread(...)``/``mmio.awrite(...)`` from a coroutine).
    Each access first raises any device error an ``on_error='defer'`` slave recorded.
    A read of the register the previous access also read (a poll) waits ``poll_gap``
    (in ``poll_gap_unit``, default 1 us of simulated time) first: every blocking
    access costs a thread switch, so polls spaced out keep the simulation fast.
    ``poll_gap=0`` polls back to back.
    """

    def __init__(self, master: Any, base: int = 0, length: Optional[int] = None, *,
                 poll_gap: float = 1, poll_gap_unit: str = "us") -> None:
        self.master = master
        self.base_addr = base
        self.length = length
        self.poll_gap = poll_gap
        self.poll_gap_unit = poll_gap_unit
        self._last_read: Optional[int] = None
        self._sync_read = resume(self.aread)
        self._sync_write = resume(self.awrite)

    def _check(self, offset: int, length: int) -> int:
        if offset < 0 or offset % 4 != 0:
            raise ValueError(f"MMIO offset must be a non-negative multiple of 4, got {offset}")
        if self.length is not None and offset + length > self.length:
            raise ValueError(f"MMIO access at offset {offset:#x} ({length} bytes) is outside "
                             f"the {self.length:#x}-byte window")
        return self.base_addr + offset

    async def aread(self, offset: int = 0, length: int = 4, word_order: str = "little") -> int:
        """Coroutine form of :meth:`read`."""
        if length not in (1, 2, 4, 8):
            raise ValueError(f"MMIO read length must be 1, 2, 4 or 8 bytes, got {length}")
        if word_order not in ("little", "big"):
            raise ValueError(f"word_order must be 'little' or 'big', got {word_order!r}")
        addr = self._check(offset, length)
        raise_deferred()
        if self._last_read == addr and self.poll_gap:
            await Timer(self.poll_gap, unit=self.poll_gap_unit)
            raise_deferred()
        self._last_read = addr
        resp = await self.master.read(addr, max(length, 4))
        if resp.resp != AxiResp.OKAY:
            raise OSError(f"MMIO read at {addr:#x}: the slave answered {resp.resp.name}")
        data = bytes(resp.data)
        if length == 8 and word_order == "big":
            data = data[4:8] + data[0:4]
        return int.from_bytes(data[:length], "little")

    async def awrite(self, offset: int, data: Union[int, bytes, bytearray]) -> None:
        """Coroutine form of :meth:`write`."""
        if isinstance(data, int):
            if not -(1 << 31) <= data < (1 << 32):
                raise ValueError(f"MMIO.write of an int takes a 32-bit value, got {data:#x}")
            payload = (data & 0xFFFFFFFF).to_bytes(4, "little")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            payload = bytes(data)
            if len(payload) % 4 != 0:
                raise ValueError(f"MMIO.write of bytes takes a multiple of 4 bytes, got {len(payload)}")
        else:
            raise TypeError(f"MMIO.write takes an int or bytes, got {type(data).__name__}")
        addr = self._check(offset, len(payload))
        raise_deferred()
        self._last_read = None
        resp = await self.master.write(addr, payload)
        if resp.resp != AxiResp.OKAY:
            raise OSError(f"MMIO write at {addr:#x}: the slave answered {resp.resp.name}")

    def read(self, offset: int = 0, length: int = 4, word_order: str = "little") -> int:
        """Read a register (blocks until the AXI-Lite read completes in the simulation)."""
        _require_driver_thread("MMIO.read")
        return self._sync_read(offset, length, word_order)

    def write(self, offset: int, data: Union[int, bytes, bytearray]) -> None:
        """Write a register: an int (32 bits) or bytes (a multiple of 4)."""
        _require_driver_thread("MMIO.write")
        self._sync_write(offset, data)


_driver_threads: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


def _require_driver_thread(what: str) -> None:
    if threading.current_thread() not in _driver_threads:
        raise RuntimeError(
            f"{what}() blocks until the simulation answers, so it must run in a driver "
            "started with `await pynq_alloc.cocotb.run_driver(fn, ...)`; from a coroutine "
            f"use `await mmio.a{what.split('.')[1]}(...)`"
        )


async def run_driver(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a synchronous (PYNQ-style) driver ``fn(*args, **kwargs)`` inside the simulation.

    Its :class:`MMIO` accesses advance the simulation. Returns what ``fn`` returns;
    raises what it raises, and when it returns, the first device access error an
    ``on_error='defer'`` slave recorded and the driver did not see yet (if the driver
    itself failed, a pending device error is raised with the driver's error as its cause).
    """
    def driver() -> Any:
        _driver_threads.add(threading.current_thread())
        return fn(*args, **kwargs)

    try:
        result = await bridge(driver)()
    except Exception as exc:
        pending = _take_deferred()
        if pending is not None:
            raise pending from exc
        raise
    raise_deferred()
    return result
