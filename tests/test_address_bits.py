"""address_bits=N: every byte of a buffer has a device address below 2**N (Linux's DMA
mask convention). Sub-allocating backends place blocks there; backends whose memory
comes from the kernel check and refuse with where it came from and how to get low
memory (udmabuf and dmaheap: in their own test files)."""
import numpy as np
import pytest

import pynq_alloc

MB = 1 << 20
G4 = 1 << 32


@pytest.fixture
def straddling():
    """sim memory from 4 GiB - 1 MiB to 4 GiB + 1 MiB."""
    be = pynq_alloc.open_backend("sim", size=2 * MB, base_address=G4 - MB)
    yield be
    be.close()


def test_info_reports_the_address_range(straddling):
    info = straddling.info()
    assert info["lowest_address"] == G4 - MB and info["highest_address"] == G4 + MB - 1
    assert info["base_address"] == G4 - MB


def test_blocks_are_placed_below_the_limit(straddling):
    filler = straddling.allocate(MB // 2, "u1")  # first fit takes the low end...
    low = straddling.allocate(MB // 4, "u1", address_bits=32)
    assert filler.device_address == G4 - MB
    assert G4 - MB <= low.device_address and low.device_address + low.nbytes <= G4
    low[:] = 7
    assert bytes(straddling.device_read(low.device_address, 16)) == bytes([7]) * 16
    # no room left below 4 GiB for 512 KiB, although 1 MiB is free above
    with pytest.raises(MemoryError, match="below device address 0x100000000"):
        straddling.allocate(MB // 2, "u1", address_bits=32)
    high = straddling.allocate(MB // 2, "u1")  # without a limit: anywhere, here across it
    assert high.device_address + high.nbytes > G4
    assert straddling.info()["buffers"] == 3
    del filler, low, high
    assert straddling.info()["used"] == 0


def test_a_buffer_may_end_exactly_at_the_limit(straddling):
    bufs = [straddling.allocate(MB // 4, "u1", address_bits=32) for _ in range(4)]
    assert max(b.device_address + b.nbytes for b in bufs) == G4
    with pytest.raises(MemoryError):
        straddling.allocate(64, "u1", address_bits=32)
    del bufs


def test_memory_entirely_above_the_limit_says_how_to_fix_it():
    with pynq_alloc.open_backend("sim", size=MB, base_address=1 << 33) as be:
        with pytest.raises(MemoryError, match="starts at device address 0x200000000.*base_address"):
            be.allocate(16, address_bits=32)
        assert be.allocate(16, address_bits=34).device_address == 1 << 33
        assert be.info()["buffers"] == 0


@pytest.mark.parametrize("bits, exc", [(True, TypeError), ("32", TypeError), (3.0, TypeError),
                                       (11, ValueError), (65, ValueError), (-1, ValueError),
                                       (2**70, ValueError)])
def test_bad_address_bits(sim, bits, exc):
    with pytest.raises(exc, match="address_bits"):
        sim.allocate(4, address_bits=bits)
    with pytest.raises(exc, match="address_bits"):
        pynq_alloc.allocate(4, target=sim, address_bits=bits)
    assert sim.info()["buffers"] == 0


@pytest.mark.parametrize("bits", [None, 64, 31])
def test_limits_that_hold_anyway(sim, bits):
    """sim's default memory (1 GiB..1.25 GiB) is below 2**31 and 2**64."""
    buf = pynq_alloc.allocate((4, 4), "u2", target=sim, address_bits=bits)
    assert buf.device_address + buf.nbytes <= 1 << 31
    assert buf.shape == (4, 4) and not np.any(buf)


def test_foreign_targets_get_address_bits_and_unknown_keywords_unchanged():
    calls = []

    class Memory:
        def allocate(self, shape, dtype, **kwargs):
            calls.append((shape, dtype, kwargs))
            return "theirs"

    marker = object()
    got = pynq_alloc.allocate((2, 3), "u1", target=Memory(), cacheable=False, pointer=marker,
                              cache=None, address_bits=32)
    assert got == "theirs"
    assert calls == [((2, 3), "u1", {"cacheable": False, "pointer": marker, "cache": None,
                                     "address_bits": 32})]
    assert calls[0][2]["pointer"] is marker


def test_our_backends_refuse_unknown_keywords_by_name(sim):
    with pytest.raises(TypeError, match=r"'pointer' \(it takes shape, dtype, target, cacheable, "
                                        r"align, address_bits;"):
        pynq_alloc.allocate(4, target=sim, pointer=1)
    with pytest.raises(TypeError, match=r"'cache' \(it takes shape, dtype, cacheable, align, "
                                        r"address_bits\)"):
        sim.allocate(4, cache=None)
    assert sim.info()["buffers"] == 0


def test_hugepage_memory_is_checked(huge):
    """Huge pages lie where the kernel found them: a limit they miss is a MemoryError
    naming the pool and what to use instead; nothing stays allocated."""
    before = huge.info()["buffers"]
    with pytest.raises(MemoryError, match=r"(?s)hugepage backend got 100 bytes at device "
                                          r"addresses 0x.*above the limit 0xfff.*huge page pool"
                                          r".*CMA"):
        huge.allocate(100, "u1", address_bits=12)
    assert huge.info()["buffers"] == before
    buf = huge.allocate(100, "u1", address_bits=64)
    assert buf.device_address > 0
    info = huge.info()
    assert info["lowest_address"] is None and info["highest_address"] is None
