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
