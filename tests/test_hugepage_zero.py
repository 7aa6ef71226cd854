"""hugepage zeroing: memory the kernel zeroed is not zeroed again, memory handed
out before is zeroed when it is handed out again (memset, or streaming stores
from 96 MiB), and a block straddling the two reads zero throughout. Freed
regions are zeroed in the background (the second half of this file): a block
handed out while that runs keeps what is written into it, and the worker
thread leaves with the last backend, survives nothing into a fork child and
does no harm at exit."""
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


# ------------------------------------------------ zeroing in the background
# A region that empties with >= 2 MiB handed out before is zeroed by a worker
# thread (src/core/bgzero.c); Backend._zeroing() says what it has left
# ('pending'), what it has zeroed ('background') and what allocate() zeroed
# itself ('sync'). Waits for the worker are bounded only against a hang.

import os
import subprocess
import sys
import textwrap
import time

import numpy as np

REGION = 24 * MiB  # twelve 2 MiB pages, twelve of the worker's chunks


def _drain(be, limit=120.0):
    end = time.monotonic() + limit
    while be._zeroing()["pending"]:
        assert time.monotonic() < end, f"background zeroing still pending: {be._zeroing()}"
        time.sleep(0.002)


def _dirty_region(be):
    """A 24 MiB region written all over and freed: its background job starts."""
    try:
        a = be.allocate(REGION, "u1")
    except MemoryError as exc:
        pytest.skip(f"no 12 physically contiguous free 2 MiB pages here: {exc}")
    base = a.device_address
    a[:] = 0xA5
    del a
    return base


def test_freed_region_is_zeroed_in_the_background_then_allocate_zeroes_nothing():
    be = hugepage_or_skip()
    base = _dirty_region(be)
    _drain(be)
    z = be._zeroing()
    assert z["pending"] == 0 and z["background"] >= REGION
    b = be.allocate(REGION, "u1")
    assert b.device_address == base  # the same memory, handed out again
    assert be._zeroing()["sync"] == z["sync"]  # nothing left for allocate() to zero
    assert not b.any()
    del b
    be.close()


# (offset of the block in the region, its size): a filler block in front of
# it puts it where the worker's chunk in flight is likely to be (it starts at
# the top), across chunk boundaries, or low where it is not
CLAIMS = [
    (0, REGION),
    (REGION - 2 * MiB, 2 * MiB),
    (REGION - 5 * MiB - 4096, 3 * MiB + 64),
    (0, 64),
    (10 * MiB, 4 * MiB),
    (4096, REGION - 4096),
    (REGION - 4096, 4096),
]


@pytest.mark.parametrize("off,size", CLAIMS)
def test_block_taken_while_the_worker_runs_keeps_what_is_written(off, size):
    """Reallocated at once (the job in flight), written at once: once the
    worker is done, every byte written holds the second pattern and every
    other byte of the block (and of the rest of the region) reads 0."""
    be = hugepage_or_skip()
    for _ in range(3):  # the worker is at a different point each time
        base = _dirty_region(be)
        filler = be.allocate(off, "u1", align=64) if off else None
        b = be.allocate(size, "u1", align=64)
        assert b.device_address == base + off
        b[::2] = 0x5A  # every other byte: the rest must read 0
        rest = be.allocate(REGION - off - size, "u1", align=64) if off + size < REGION else None
        _drain(be)
        assert (b[::2] == 0x5A).all()
        assert not b[1::2].any()
        if rest is not None:
            assert not rest.any()
        del filler, b, rest
    _drain(be)
    again = be.allocate(REGION, "u1")
    assert not again.any()
    del again
    be.close()


def test_small_allocations_during_a_job_and_many_reuses():
    """allocate(64) in a region being zeroed leaves the job running above it;
    freed again, the region is zeroed down to 0; nothing is lost or left."""
    be = hugepage_or_skip()
    _dirty_region(be)
    for i in range(200):
        s = be.allocate(64, "u1")
        assert not s.any()
        s[:] = i % 255 + 1
        del s
    _drain(be)
    b = be.allocate(REGION, "u1")
    assert not b.any()
    del b
    be.close()


def _run(code, timeout=300):
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(here), here, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


PRELUDE = """
    import os, sys, time
    import pynq_alloc
    def threads():
        return len(os.listdir("/proc/self/task"))
    def threads_settled(want):
        # a joined thread leaves /proc/self/task a moment after the join returns
        end = time.monotonic() + 10
        while threads() != want and time.monotonic() < end:
            time.sleep(0.001)
        return threads()
    def drain(be):
        end = time.monotonic() + 120
        while be._zeroing()["pending"]:
            assert time.monotonic() < end, be._zeroing()
            time.sleep(0.002)
    try:
        be = pynq_alloc.open_backend("hugepage")
        a = be.allocate(24 << 20, "u1")
    except (OSError, MemoryError, NotImplementedError) as exc:
        print(f"hugepage backend not usable here: {exc}")
        sys.exit(77)
"""


def test_close_leaves_no_thread_behind():
    """The worker starts on the first background job and the last hugepage
    backend's close() joins it (threads counted in /proc/self/task)."""
    hugepage_or_skip().close()
    out = _run(PRELUDE + """
    before = threads()
    a[:] = 1
    del a                    # the worker starts
    during = threads()
    b = be.allocate(24 << 20, "u1")  # cancels the job in flight
    del b
    be2 = pynq_alloc.open_backend("hugepage")
    be.close()               # be2 still open: the worker stays
    kept = threads()
    be2.close()              # the last one: joined
    print(before, during, kept, threads_settled(before))
    """)
    before, during, kept, after = map(int, out.split())
    assert during == before + 1 and kept == before + 1 and after == before


def test_exit_while_the_worker_runs_is_harmless():
    """The process exits with a job in flight and the backend still open."""
    hugepage_or_skip().close()
    out = _run(PRELUDE + """
    for _ in range(5):
        a[:] = 7
        del a
        a = be.allocate(24 << 20, "u1")
        assert not a.any()
    del a
    print("exiting", be._zeroing()["pending"] > 0 or "drained already")
    """)
    assert out.startswith("exiting")


def test_fork_child_neither_waits_for_nor_disturbs_the_worker():
    """fork() while the parent's worker zeroes: the child closes the inherited
    backend (forgets it: no wait, no join), opens its own and gets its own
    worker; the parent's memory and job are untouched by the child."""
    out = _run(PRELUDE + """
    import numpy as np
    a[:] = 0xA5
    del a                     # the parent's job is in flight at the fork
    keep = be.allocate(4096, "u1", align=4096)
    keep[:] = 0x33
    pid = os.fork()
    if pid == 0:
        try:
            assert keep[0] == 0x33
            be.close()            # inherited: forgets, never waits for a worker
            mine = pynq_alloc.open_backend("hugepage")
            c = mine.allocate(4 << 20, "u1")
            c[:] = 9
            del c
            drain(mine)           # the child's own worker zeroed it
            c = mine.allocate(4 << 20, "u1")
            ok = not c.any()
            del c
            mine.close()
            os._exit(0 if ok else 3)
        except BaseException as exc:
            print("child:", repr(exc), flush=True)
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert (keep == 0x33).all()
    drain(be)
    b = be.allocate(8 << 20, "u1")
    assert not b.any()
    del b, keep
    be.close()
    print("ok")
    """)
    assert out.strip().endswith("ok")
