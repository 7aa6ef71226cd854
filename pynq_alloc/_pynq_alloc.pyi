# The compiled module; pynq_alloc re-exports its public names (see __init__.pyi).
from typing import Any

from . import (
    Backend as Backend,
    Buffer as Buffer,
    CoherencyError as CoherencyError,
    CoherencyWarning as CoherencyWarning,
    allocate as allocate,
    default_backend as default_backend,
    open_backend as open_backend,
    set_default_backend as set_default_backend,
    wrap as wrap,
)

known_backends: str

def _probe() -> list[tuple[str, bool, bool, str]]: ...
def _work_gil_bytes(n: int = ..., /) -> int: ...

# private helpers of the compiled module that have no stub yet
def __getattr__(name: str) -> Any: ...
