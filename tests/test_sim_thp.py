"""sim's big blocks (64 MiB and more) fault their first 2 MiB in 4 KiB pages and
the rest in transparent huge pages, like a fresh big numpy array: the mapping's
flags say so while the block lives and go back to THP when it is freed, and
the head changes nothing the user or the checker sees."""
import os
import re
import warnings

import pytest

import pynq_alloc

BIG = 64 << 20
HEAD = 2 << 20


def _vmflags(addr):
    """VmFlags of the mapping holding addr, from /proc/self/smaps."""
    cur = None
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                cur = int(m.group(1), 16) <= addr < int(m.group(2), 16)
            elif cur and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


thp = pytest.mark.skipif(
    not os.path.exists("/sys/kernel/mm/transparent_hugepage"),
    reason="this kernel has no transparent huge pages (CONFIG_TRANSPARENT_HUGEPAGE)")


@thp
@pytest.mark.parametrize("offset", [0, 4096 + 64])
def test_head_of_a_big_block_uses_small_pages_while_it_lives(offset):
    be = pynq_alloc.open_backend("sim", size=256 << 20)
    pad = be.allocate(offset, "u1", align=64) if offset else None
    a = be.allocate(BIG, "u1")
    start = a.ctypes.data
    assert "nh" in _vmflags(start)  # no THP for the first 2 MiB
    assert "nh" in _vmflags(start + HEAD - 4096 - offset % 4096)
    assert "hg" in _vmflags(start + HEAD + 4096)  # THP for the rest
    assert "hg" in _vmflags(start + BIG - 1)
    del a
    flags = _vmflags(start)
    assert "hg" in flags and "nh" not in flags  # given back to THP on free
    del pad
    be.close()


@thp
def test_small_blocks_keep_thp():
    be = pynq_alloc.open_backend("sim", size=256 << 20)
    a = be.allocate(BIG - 4096, "u1")
    flags = _vmflags(a.ctypes.data)
    assert "hg" in flags and "nh" not in flags
    del a
    be.close()


def test_big_block_with_small_page_head_reads_zero_and_syncs_exactly():
    be = pynq_alloc.open_backend("sim", size=256 << 20, check="raise")
    for _ in range(2):  # fresh, then the same memory reused after free
        a = be.allocate(BIG, "u1", cacheable=True)
        addr = a.device_address
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not a[: 2 * HEAD].any() and not a[-4096:].any()
            assert be.device_read(addr, 2 * HEAD) == bytes(2 * HEAD)
            a[0] = 1  # the first touch: a 4 KiB fault in the head
            a[HEAD - 1] = 2
            a[HEAD] = 3  # the first byte past the head
            with pytest.raises(pynq_alloc.CoherencyError):
                be.device_read(addr, 64)  # written by the CPU, not flushed
            a[: 2 * HEAD].flush()
            got = be.device_read(addr, 2 * HEAD)
            assert got[0] == 1 and got[HEAD - 1] == 2 and got[HEAD] == 3
            assert got.count(0) == 2 * HEAD - 3
            be.device_write(addr + 64, b"\x09" * 64)
            a[:128].invalidate()
            assert a[64:128].tolist() == [9] * 64 and a[0] == 1
        del a
    be.close()
