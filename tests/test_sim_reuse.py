"""sim keeps freed memory mapped and reuses it: a reused block reads as zero on
both sides, carries no flag of the block that was there before, and freed
memory is no longer device-accessible (the per-page flags are cleared)."""
import warnings

import numpy as np
import pytest

import pynq_alloc


def _zeros(be, buf):
    assert not buf.any()
    assert be.device_read(buf.device_address, buf.nbytes, check=False) == bytes(buf.nbytes)


@pytest.mark.parametrize("size", [64, 4096 * 3 + 64, 1 << 20, 64 << 20])
def test_reused_block_is_zero_and_clean(size):
    be = pynq_alloc.open_backend("sim", size=256 << 20, check="raise")
    old = be.allocate(size, "u1", cacheable=True)
    addr = old.device_address
    old[:] = 0xAB
    old.flush()
    # the device writes every line: flags SIM_DEVWROTE on all of them, never invalidated
    be.device_write(addr, b"\x5a" * size)
    del old
    new = be.allocate(size, "u1", cacheable=True)
    assert new.device_address == addr  # the same memory, reused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _zeros(be, new)
        new.invalidate()  # no stale device write to bring in, nothing reported
        assert not new.any()
        assert be.device_read(addr, size) == bytes(size)
        new[:] = 3
        new.flush()
        assert be.device_read(addr, size) == b"\x03" * size
    be.close()


def test_coherent_block_then_non_coherent_reuse_sees_zero_device_side():
    be = pynq_alloc.open_backend("sim", size=64 << 20, check="raise")
    c = be.allocate(1 << 20, "u1")  # coherent: its device side is never zeroed
    addr = c.device_address
    c[:] = 9
    c.flush()
    be.device_write(addr, b"\x07" * 4096)
    assert be.device_read(addr, 4096) == b"\x07" * 4096
    del c
    n = be.allocate(1 << 20, "u1", cacheable=True)
    assert n.device_address == addr
    _zeros(be, n)
    n.invalidate()
    assert not n.any()
    be.close()


def test_freed_memory_is_not_device_accessible():
    be = pynq_alloc.open_backend("sim", size=256 << 20)
    for size in (4096 * 5, 64 << 20):
        a = be.allocate(size, "u1")
        addr = a.device_address
        be.device_write(addr + size - 64, b"\x01" * 64)
        assert a[-64:].tolist() == [1] * 64
        del a
        for off in (0, 4096, size - 64):
            with pytest.raises(ValueError, match="not inside a live buffer"):
                be.device_read(addr + off, 64)
    be.close()


def test_blocks_sharing_a_page_keep_their_own_flags():
    be = pynq_alloc.open_backend("sim", size=1 << 20, check="raise")
    a = be.allocate(64 * 3, "u1", align=64)  # coherent
    b = be.allocate(4096 * 2, "u1", align=64, cacheable=True)  # edge lines and a whole page
    assert b.device_address == a.device_address + 64 * 3
    a[:] = 1  # coherent: the device sees it without a flush
    assert be.device_read(a.device_address, a.nbytes) == b"\x01" * a.nbytes
    b[:] = 2
    with pytest.raises(pynq_alloc.CoherencyError):
        be.device_read(b.device_address + 4096, 64)  # a line of b's whole page, not flushed
    b.flush()
    assert be.device_read(b.device_address, b.nbytes) == b"\x02" * b.nbytes
    del a
    with pytest.raises(ValueError, match="not inside a live buffer"):
        be.device_read(b.device_address - 64, 64)
    assert be.device_read(b.device_address, 64) == b"\x02" * 64
    be.close()


def test_big_block_returned_to_the_kernel_reads_zero_again():
    be = pynq_alloc.open_backend("sim", size=256 << 20, cacheable=True)
    a = be.allocate(128 << 20, "u1")
    addr = a.device_address
    a[::4096] = 5
    a.flush()
    del a  # 64 MiB or more: handed back to the kernel
    small = be.allocate(1 << 20, "u1")  # inside the returned range
    assert addr <= small.device_address < addr + (128 << 20)
    _zeros(be, small)
    big = be.allocate(200 << 20, "u1")
    assert not big[::4096].any()
    assert be.device_read(big.device_address, 1 << 20, check=False) == bytes(1 << 20)
    be.close()
