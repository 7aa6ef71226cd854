"""32-bit safety (run natively and in the armhf lane under qemu): sizes near and
beyond 2-4 GiB fail cleanly instead of wrapping around size_t, and device
addresses above 4 GiB stay exact Python ints on a 32-bit build."""
import platform
import struct

import numpy as np
import pytest

import pynq_alloc

BITS = struct.calcsize("P") * 8


@pytest.mark.parametrize("shape, dtype", [
    ((2**31,), "u2"),            # 4 GiB: exactly 2**32 bytes, 0 after wrapping on 32-bit
    ((2**31 - 1,), "u1"),        # just under 2 GiB
    ((2**30 + 1,), "u4"),        # 4 GiB + 4 bytes: wraps to 4 on 32-bit
    ((2**16, 2**16), "u1"),      # the product of the shape is 2**32
    ((2**16, 2**16, 2), "u8"),   # the product times itemsize is 2**36
])
def test_huge_sizes_fail_cleanly(sim, shape, dtype):
    with pytest.raises((MemoryError, ValueError, OverflowError)) as info:
        pynq_alloc.allocate(shape, dtype, target=sim)
    assert str(info.value), "the error says why"
    assert sim.allocate((16,), "u1").nbytes == 16, "the backend still works"


def test_shape_overflowing_intp_is_refused(sim):
    big = 2**(BITS - 1)
    with pytest.raises((ValueError, OverflowError, MemoryError)):
        pynq_alloc.allocate((big,), "u1", target=sim)
    with pytest.raises((ValueError, OverflowError, MemoryError)):
        pynq_alloc.allocate((2**(BITS // 2), 2**(BITS // 2)), "u2", target=sim)


def test_device_addresses_above_4gib_stay_exact():
    base = 0x8_0000_0000  # 32 GiB: beyond any 32-bit pointer
    be = pynq_alloc.open_backend("sim", size=1 << 20, base_address=base)
    try:
        buf = pynq_alloc.allocate((1024,), "u4", target=be)
        addr = buf.device_address
        assert isinstance(addr, int) and base <= addr < base + (1 << 20)
        view = buf[100:]
        assert view.device_address == addr + 400
        buf[:] = np.arange(1024, dtype="u4")
        buf.flush()
        assert bytes(be.device_read(addr + 400, 8)) == np.arange(100, 102, dtype="u4").tobytes()
        del view
        buf.freebuffer()
    finally:
        be.close()


def test_pointer_size_matches_the_platform():
    machine = platform.machine()
    if machine in ("armv7l", "armv6l", "i686"):
        assert BITS == 32
    elif machine in ("x86_64", "aarch64"):
        assert BITS == 64
