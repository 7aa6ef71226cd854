"""Allocate, view, flush and free from 8 threads at once on one shared backend.

flush()/invalidate() of large ranges run without the GIL, so the core's own
locking is what keeps the backend's state consistent here."""
import threading
import time

import numpy as np
import pytest

import pynq_alloc

THREADS = 8


@pytest.fixture(autouse=True)
def gil_free_from_256k():
    """Syncs and allocations from 256 KiB run without the GIL here (the
    default threshold, 32 MiB on x86-64, would serialise these threads on
    the GIL and leave the core's locking untested)."""
    old = pynq_alloc._pynq_alloc._work_gil_bytes(256 << 10)
    yield
    pynq_alloc._pynq_alloc._work_gil_bytes(old)


def hammer(be, rounds, big, errors):
    rng = np.random.default_rng(threading.get_ident() % 2**32)
    try:
        for i in range(rounds):
            n = int(rng.integers(1, big))
            buf = be.allocate(n, "u1", align=int(2 ** rng.integers(0, 13)))
            tag = int(rng.integers(1, 255))
            buf[:] = tag
            view = buf[:: int(rng.integers(1, 4))]
            view.flush()
            buf.flush()
            if be.name == "sim":
                seen = be.device_read(buf.device_address, n)
                assert seen[0] == tag and seen[-1] == tag
                be.device_write(buf.device_address, bytes([tag ^ 0xFF]) * n)
            buf.invalidate()
            if be.name == "sim" and not buf.coherent:
                assert buf[0] == tag ^ 0xFF and buf[-1] == tag ^ 0xFF
            del view
            if i % 2:
                buf.freebuffer()
                assert buf.size == 0
            del buf
    except Exception as exc:  # reported to the main thread
        errors.append(exc)


@pytest.mark.parametrize("backend", ["sim", "sim_coherent", "huge"])
def test_eight_threads_share_a_backend(backend, request):
    be = request.getfixturevalue(backend)
    errors = []
    threads = [threading.Thread(target=hammer, args=(be, 300, 1 << 19, errors))
               for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    info = be.info()
    assert info["used"] == 0 and info["buffers"] == 0


def test_freebuffer_from_another_thread_while_flushing():
    # a flush of 64 MiB runs without the GIL (from 32 MiB on x86-64, less on
    # ARM: PA_WORK_GIL_BYTES); a concurrent freebuffer must be refused, not crash
    sim = pynq_alloc.open_backend("sim", size=128 << 20, cacheable=True)
    buf = sim.allocate(64 << 20, "u1")
    buf[:] = 1
    outcomes = []

    def free_it():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                buf.freebuffer()
                outcomes.append("freed")
                return
            except BufferError as exc:
                assert "a sync is running" in str(exc)
                outcomes.append("busy")
                time.sleep(0.0005)

    def flush_it():
        for _ in range(20):
            try:
                buf.flush()
            except ValueError:  # freed meanwhile: flush() says so instead of touching it
                outcomes.append("flush refused")
                return

    flusher = threading.Thread(target=flush_it)
    flusher.start()
    free_it()
    flusher.join()
    assert "freed" in outcomes and sim.info()["used"] == 0
