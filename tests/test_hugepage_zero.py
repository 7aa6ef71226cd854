"""hugepage zeroing: memory the kernel zeroed is not zeroed again, memory handed
out before is zeroed when it is handed out again (memset, or streaming stores
from 96 MiB), and a block straddling the two reads zero throughout."""
import pytest

from conftest import hugepage_or_skip

MiB = 1 << 20


def _reuse(be, size, fill):
    try:
        a = be.allocate(size, "u1")
    except MemoryError as exc:
        pytest.skip(f"no {size // (2 * MiB)} physically contiguous free 2 MiB pages here: {exc}")
    addr = a.device_address
    a[:] = fill
    assert a[0] == fill and a[-1] == fill
    del a
    b = be.allocate(size, "u1")
    assert b.device_address == addr  # the same memory, handed out again
    return b


@pytest.mark.parametrize("size", [64, 4096, 3 * MiB, 100 * MiB])
def test_reused_memory_reads_zero(size):
    """100 MiB takes the streaming-store path (pa_zero, >= 96 MiB)."""
    be = hugepage_or_skip()
    b = _reuse(be, size, 0xA5)
    assert not b.any()
    b[:] = 7  # still ordinary memory afterwards
    assert b.min() == 7 and b.max() == 7
    del b
    be.close()


def test_block_straddling_memory_handed_out_before_reads_zero():
    """The first MiB was handed out and written; the rest never was (still the
    kernel's zeroes): only the first MiB is zeroed, the whole block reads 0."""
    be = hugepage_or_skip()
    small = be.allocate(1 * MiB, "u1")
    addr = small.device_address
    small[:] = 0xFF
    del small
    big = be.allocate(2 * MiB - 4096, "u1")  # the same region, from its start
    assert big.device_address == addr
    assert not big.any()
    big[:] = 1
    del big
    again = be.allocate(2 * MiB - 4096, "u1")
    assert again.device_address == addr and not again.any()
    del again
    be.close()
