"""The hugepage backend: real, physically contiguous memory; addresses checked against pagemap."""
import ctypes
import os
import struct

import numpy as np
import pytest

import pynq_alloc

PAGE = 4096


def phys(va):
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(va // PAGE * 8)
        entry = struct.unpack("<Q", f.read(8))[0]
    assert entry >> 63, "page not present"
    return (entry & ((1 << 55) - 1)) * PAGE + va % PAGE


def assert_contiguous(buf):
    va, pa = buf.virtual_address, buf.device_address
    for off in range(0, buf.nbytes, PAGE):
        assert phys(va + off) == pa + off
    assert phys(va + buf.nbytes - 1) == pa + buf.nbytes - 1


@pytest.mark.parametrize("nbytes", [64, 4096, 100_000, 3 << 20, 5 << 20])
def test_physical_addresses_match_pagemap(huge, nbytes):
    buf = huge.allocate(nbytes, "u1")
    assert_contiguous(buf)
    assert not buf.any()
    v = buf[nbytes // 3:]
    assert v.device_address == phys(v.virtual_address)


def test_many_small_buffers_share_pages_without_overlap(huge):
    bufs = [huge.allocate(100, "u1", align=64) for _ in range(200)]
    spans = sorted((b.device_address, b.device_address + b.nbytes) for b in bufs)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    for i, b in enumerate(bufs):
        b[:] = i % 251
    for i, b in enumerate(bufs):
        assert (b == i % 251).all()
        assert_contiguous(b)


def test_coherent_on_x86_and_sync_is_noop(huge):
    buf = huge.allocate(16)
    if os.uname().machine in ("x86_64", "i686"):
        assert buf.coherent and huge.info()["coherent"]
    buf[:] = 1
    buf.flush()
    buf.invalidate()
    assert buf.tolist() == [1] * 16


def test_non_coherent_mode_runs_cache_maintenance(huge):
    be = pynq_alloc.open_backend("hugepage", coherent=False)
    buf = be.allocate(1 << 20, "u1")
    assert not buf.coherent
    buf[:] = 7
    buf.flush()
    buf.invalidate()
    assert (buf == 7).all()
    del buf
    be.close()


def test_memory_returns(huge):
    before = huge.info()["used"]
    b = huge.allocate(3 << 20, "u1")
    assert huge.info()["used"] >= before + (3 << 20)
    del b
    assert huge.info()["used"] == before
    for _ in range(2000):
        huge.allocate(1024, "u4")
    assert huge.info()["used"] == before


def test_request_beyond_free_pages_is_a_clear_memory_error(huge):
    free_pages = int(open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read())
    with pytest.raises(MemoryError, match="huge"):
        huge.allocate((free_pages + 8) * (2 << 20), "u1")
    assert huge.info()["buffers"] == 0


def test_too_big_a_request_computes_how_many_pages_to_reserve(huge):
    """The advice is a number: at least N more pages, and M = what is reserved + N
    to write to nr_hugepages (never a number smaller than what is reserved)."""
    import re

    with pytest.raises(MemoryError) as info:
        huge.allocate(1 << 40, "u1")  # 524288 pages of 2 MiB
    reserved = int(open("/proc/sys/vm/nr_hugepages").read())
    m = re.search(r"it needs (\d+) 2M huge pages, (\d+) are free; reserve at least (\d+) more "
                  r"huge pages \(echo (\d+) > /proc/sys/vm/nr_hugepages", str(info.value))
    assert m, str(info.value)
    need, free, more, echo = map(int, m.groups())
    assert need == 1 << 19 and more == need - free
    assert echo == reserved + more and echo >= reserved


def test_no_reserved_pages_advice_uses_the_reserved_count(tmp_path, monkeypatch):
    """A faked sysfs (PYNQ_ALLOC_SYSROOT) with 2M pages all in use: reserve 1 more."""
    d = tmp_path / "sys/kernel/mm/hugepages/hugepages-2048kB"
    d.mkdir(parents=True)
    for name, value in [("nr_hugepages", 96), ("free_hugepages", 0), ("resv_hugepages", 0),
                        ("nr_overcommit_hugepages", 0), ("surplus_hugepages", 0)]:
        (d / name).write_text(f"{value}\n")
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(MemoryError, match=r"all 96 reserved 2M huge pages are in use, none is "
                                          r"free; reserve at least 1 more huge page \(echo 97 > "
                                          r"/proc/sys/vm/nr_hugepages"):
        pynq_alloc.open_backend("hugepage", page_size="2M")
    (d / "nr_hugepages").write_text("0\n")
    with pytest.raises(MemoryError, match=r"no 2M huge pages are reserved; reserve at least 1 "
                                          r"more huge page \(echo 1 >"):
        pynq_alloc.open_backend("hugepage", page_size="2M")
