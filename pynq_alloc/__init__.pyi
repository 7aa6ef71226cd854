from types import TracebackType
from typing import (
    Any,
    Callable,
    Literal,
    Optional,
    Sequence,
    SupportsIndex,
    Union,
    final,
    overload,
)

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = [
    "Backend",
    "Buffer",
    "CoherencyError",
    "CoherencyWarning",
    "allocate",
    "default_backend",
    "open_backend",
    "set_default_backend",
    "wrap",
]

_Shape = Union[SupportsIndex, Sequence[SupportsIndex]]
# None (PYNQ's default: non-cacheable where the backend can map it), True/1, False/0
_Cacheable = Union[None, bool, Literal[0, 1]]

class CoherencyWarning(UserWarning): ...
class CoherencyError(RuntimeError): ...

@final
class Backend:
    @property
    def name(self) -> str: ...
    @property
    def coherent(self) -> Optional[bool]: ...
    spec: str
    def allocate(
        self,
        shape: _Shape,
        dtype: npt.DTypeLike = "u4",
        *,
        cacheable: _Cacheable = None,
        align: Optional[int] = None,
        address_bits: Optional[int] = None,
    ) -> Buffer: ...
    def info(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def device_read(self, device_address: int, nbytes: int, *, check: bool = True) -> bytes: ...
    def device_write(self, device_address: int, data: Any) -> None: ...
    def _live(
        self,
    ) -> list[tuple[int, int, int, Optional[tuple[int, ...]], Optional[str]]]: ...
    # private: hugepage's zeroing of reused memory ('pending', 'background', 'sync' bytes)
    def _zeroing(self) -> dict[str, int]: ...
    def __enter__(self) -> Backend: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...

class Buffer(np.ndarray[Any, np.dtype[Any]]):
    @property
    def device_address(self) -> Optional[int]: ...
    @property
    def physical_address(self) -> Optional[int]: ...
    @property
    def virtual_address(self) -> Optional[int]: ...
    @property
    def offset(self) -> Optional[int]: ...
    @property
    def coherent(self) -> Optional[bool]: ...
    @property
    def cacheable(self) -> Optional[bool]: ...
    @property
    def backend(self) -> Optional[Backend]: ...
    def flush(self) -> None: ...
    def invalidate(self) -> None: ...
    def sync_to_device(self) -> None: ...
    def sync_from_device(self) -> None: ...
    def freebuffer(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Buffer: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...
    def _repr_html_(self) -> str: ...
    # Indexing gives a scalar for an element, a Buffer view for a slice, and a
    # Buffer copy (device_address None) for fancy indexing.
    def __getitem__(self, key: Any, /) -> Any: ...
    # Views of device memory stay Buffers; where NumPy copies, the result is
    # a Buffer without a device address.
    def reshape(self, *shape: Any, order: Any = ..., copy: Optional[bool] = ...) -> Buffer: ...
    def transpose(self, *axes: Any) -> Buffer: ...
    @property
    def T(self) -> Buffer: ...
    def ravel(self, order: Any = ...) -> Buffer: ...
    def copy(self, order: Any = ...) -> Buffer: ...

@overload
def allocate(
    shape: _Shape,
    dtype: npt.DTypeLike = "u4",
    target: Union[None, str, Backend] = None,
    *,
    cacheable: _Cacheable = None,
    align: Optional[int] = None,
    address_bits: Optional[int] = None,
) -> Buffer: ...
@overload
def allocate(
    shape: Any,
    dtype: Any = "u4",
    target: Any = None,
    *,
    cacheable: Any = None,
    align: Any = None,
    address_bits: Any = None,
    **kwargs: Any,  # a foreign target's own keywords (PYNQ's pointer=, cache=), unchanged
) -> Any: ...  # what the foreign target's allocate() returns
def wrap(
    obj: Any,
    device_address: int,
    *,
    coherent: Optional[bool] = True,
    backend: Optional[Backend] = None,
    on_free: Optional[Callable[[Any], object]] = None,
) -> Buffer: ...
def open_backend(spec: str, **options: Union[None, str, int, bool]) -> Backend: ...
def default_backend() -> Backend: ...
def set_default_backend(spec_or_backend: Union[None, str, Backend]) -> None: ...
