"""pynq_alloc: physically contiguous, device-visible memory as numpy arrays.

``allocate(shape, dtype)`` returns a :class:`Buffer` (a ``numpy.ndarray``
subclass) with ``device_address``, ``flush()`` and ``invalidate()``, as
``pynq.allocate`` does, without the PYNQ stack.
"""
from pkgutil import extend_path

# Run from a source checkout (python -m pynq_alloc in the repository), this
# directory shadows the installed package; let the compiled part come from
# the installed copy then.
__path__ = extend_path(__path__, __name__)

from ._pynq_alloc import (  # noqa: E402
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

__version__ = "0.1.0"

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
