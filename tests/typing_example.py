"""Uses every public name of pynq_alloc; checked with `mypy --strict` (tests/test_typing.py).

It also runs (on sim), so the stubs cannot drift from what the module does.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

import pynq_alloc
from pynq_alloc import (
    Backend,
    Buffer,
    CoherencyError,
    CoherencyWarning,
    allocate,
    default_backend,
    open_backend,
    set_default_backend,
    wrap,
)

version: str = pynq_alloc.__version__
names: list[str] = pynq_alloc.__all__


def round_trip(backend: Backend) -> list[int]:
    buf: Buffer = allocate(shape=(8,), dtype="u4", target=backend, cacheable=True)
    buf[:] = np.arange(8, dtype=np.uint32)
    buf.flush()
    addr: Optional[int] = buf.device_address
    assert addr is not None
    seen: bytes = backend.device_read(addr, buf.nbytes)
    backend.device_write(addr, np.frombuffer(seen, dtype=np.uint32) + 1)
    buf.invalidate()
    result: list[int] = buf.tolist()
    buf.freebuffer()
    return result


def members(backend: Backend) -> None:
    name: str = backend.name
    spec: str = backend.spec
    coherent: Optional[bool] = backend.coherent
    info: dict[str, Any] = backend.info()
    used: int = info["used"]
    assert name and spec and used >= 0 and coherent in (True, False, None)

    with backend.allocate((4, 4), np.float32, cacheable=False, align=4096) as buf:
        view: Buffer = buf[1:, ::2]
        as_array: npt.NDArray[Any] = np.asarray(view)
        attrs: tuple[Optional[int], Optional[int], Optional[int], Optional[int]] = (
            view.device_address,
            view.physical_address,
            view.virtual_address,
            view.offset,
        )
        flags: tuple[Optional[bool], Optional[bool]] = (view.coherent, view.cacheable)
        owner: Optional[Backend] = view.backend
        view.sync_to_device()
        view.sync_from_device()
        html: str = buf._repr_html_()
        total: Any = buf.sum()
        assert attrs[2] is not None and owner is backend and "<" in html and flags
        assert as_array.shape == (3, 2) and total == 0
        del view, as_array
    other = allocate([2, 3], target="sim")
    other.close()
    allocate(np.int64(5), np.dtype("i2")).freebuffer()


def checker() -> None:
    backend = open_backend("sim", size=1 << 20, coherent=False, check="raise")
    with backend:
        buf = allocate(16, "u1", backend, cacheable=True)
        buf[:] = 1
        try:
            backend.device_read(buf.device_address or 0, 16)  # no flush() first
        except CoherencyError as exc:
            message: str = str(exc)
            assert "flush" in message
        else:
            raise AssertionError("the checker missed a read of unflushed data")
        del buf
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoherencyWarning)
        category: type[Warning] = CoherencyWarning
        assert issubclass(category, UserWarning)


class _Memory:
    """A foreign target (PYNQ's memory contract)."""

    def allocate(self, shape: Any, dtype: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
        return shape, dtype, kwargs


def foreign_and_wrapped(backend: Backend) -> None:
    got: Any = allocate(4, "u1", _Memory(), pointer=None, cache=None)
    assert got[2] == {"pointer": None, "cache": None}
    low: Buffer = backend.allocate(16, "u1", address_bits=32, cacheable=0)
    peek: bytes = backend.device_read(low.device_address or 0, 16, check=False)
    freed: list[object] = []
    data = bytearray(64)
    frame: Buffer = wrap(data, 0x1000, coherent=True, backend=backend, on_free=freed.append)
    frame[:] = 1
    frame.freebuffer()
    assert freed == [data] and data[0] == 1 and peek == bytes(16)
    info: dict[str, Any] = backend.info()
    assert info["base_address"] is not None
    low.freebuffer()


def main() -> int:
    set_default_backend("sim")
    backend: Backend = default_backend()
    assert round_trip(backend) == [1, 2, 3, 4, 5, 6, 7, 8]
    members(backend)
    checker()
    foreign_and_wrapped(open_backend("sim", size=1 << 20))
    set_default_backend(open_backend("sim"))
    set_default_backend(None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
