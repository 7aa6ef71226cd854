"""pynq_alloc benchmark: every figure against a baseline measured in the same run.

    python bench/run.py            # full run (about a minute)
    python bench/run.py --quick    # tiny setting: checks the script runs end to end
    python bench/run.py --only "first use,allocate(64)"   # only rows naming these

Each figure is timed in interleaved repeats (baseline, then ours) and reported
as min/median/max nanoseconds per operation plus the median of the per-repeat
ratios, so drift on a shared machine hits both sides alike."""
import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pynq_like import PynqLikeBuffer  # noqa: E402

import pynq_alloc  # noqa: E402

ROWS = []
ONLY = None  # --only: run only the figures whose names contain one of these


def want(*names):
    """Whether any of these figure names (or name fragments) is to be run."""
    return ONLY is None or any(o in n for o in ONLY for n in names)


def per_op(stmt, number, glb):
    return timeit.timeit(stmt, globals=glb, number=number) / number * 1e9


def figure(name, ours, base, glb, number, repeats, goal, base_name, pynq=None):
    """Times `ours` and `base` (and a PYNQ-design equivalent) in interleaved repeats."""
    if not want(name):
        return None
    t_ours, t_base, t_pynq, ratios = [], [], [], []
    for _ in range(repeats):
        b = per_op(base, number, glb)
        o = per_op(ours, number, glb)
        t_base.append(b)
        t_ours.append(o)
        ratios.append(o / b)
        if pynq is not None:
            t_pynq.append(per_op(pynq, number, glb))
    row = dict(name=name, baseline=base_name, ours=t_ours, base=t_base, ratio=statistics.median(ratios),
               goal=goal, pynq=(statistics.median(t_pynq) / statistics.median(t_base)) if t_pynq else None,
               unit="ns")
    ROWS.append(row)
    return row


def timed_once(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e9)
    return out


def big_figure(name, ours_fn, base_fn, prepare, repeats, goal, base_name, pause=0.0, note=None):
    """One call of each per repeat, interleaved; `pause` seconds of sleep
    before every timed call (both sides alike) leave the machine idle, e.g.
    for work a backend does in the background after a free."""
    if not want(name):
        return
    t_ours, t_base, ratios = [], [], []
    for _ in range(repeats):
        prepare()
        time.sleep(pause)
        b = timed_once(base_fn, 1)[0]
        prepare()
        time.sleep(pause)
        o = timed_once(ours_fn, 1)[0]
        t_ours.append(o)
        t_base.append(b)
        ratios.append(o / b)
    ROWS.append(dict(name=name, baseline=base_name, ours=t_ours, base=t_base,
                     ratio=statistics.median(ratios), goal=goal, pynq=None, unit="ns"))
    if note is not None:
        ROWS[-1]["note"] = note() if callable(note) else note


def process_figure(repeats):
    """import + first allocation in a fresh interpreter vs `import numpy`."""
    # VmHWM: this process's own peak RSS in kB (ru_maxrss would include the
    # forked parent's RSS, which exec does not reset)
    rss = ("print([l.split()[1] for l in open('/proc/self/status') "
           "if l.startswith('VmHWM:')][0])")
    base = f"import numpy; {rss}"
    ours = f"import pynq_alloc; pynq_alloc.allocate(1024, 'u4', target='sim'); {rss}"
    env = dict(os.environ)
    env.pop("PYNQ_ALLOC_BACKEND", None)
    t_ours, t_base, r_ours, r_base, ratios = [], [], [], [], []
    for _ in range(repeats):
        for code, times, rsses in ((base, t_base, r_base), (ours, t_ours, r_ours)):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True, env=env, cwd="/")
            times.append((time.perf_counter() - t0) * 1e9)
            rsses.append(int(out.stdout.split()[-1]))
        ratios.append(t_ours[-1] / t_base[-1])
    ROWS.append(dict(name="import + first allocate (sim), whole process",
                     baseline='python -c "import numpy"', ours=t_ours, base=t_base,
                     ratio=statistics.median(ratios), goal=1.3, pynq=None, unit="ns"))
    drss = (statistics.median(r_ours) - statistics.median(r_base)) / 1024
    ROWS.append(dict(name="  peak RSS of that process (VmHWM)", baseline="same", ours=[statistics.median(r_ours) * 1024],
                     base=[statistics.median(r_base) * 1024], ratio=None, goal=None, pynq=None,
                     unit="B", note=f"+{drss:.1f} MiB (goal: within 5 MiB)", ok=drss <= 5))


def fmt_ns(v, unit):
    if unit == "iter/s":
        return f"{v / 1e6:.2f} M/s"
    if unit == "B":
        return f"{v / 2**20:.1f} MiB"
    if unit == "B/buf":
        return f"{v:.0f} B"
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if v >= 1e3:
        return f"{v / 1e3:.2f} us"
    return f"{v:.0f} ns"


def report(meta):
    lines = [
        f"pynq_alloc {pynq_alloc.__version__} · Python {platform.python_version()} · NumPy "
        f"{np.__version__} · {platform.machine()} · {os.cpu_count()} CPUs · {meta}",
        "",
        "| figure | baseline | ours (min / median / max) | baseline median | ratio | goal | PYNQ design |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ROWS:
        ours = " / ".join(fmt_ns(f(r["ours"]), r["unit"]) for f in (min, statistics.median, max))
        if r["ratio"] is None:
            verdict = r.get("note", "")
            ratio = "—"
            goal = "— (measured)" if r.get("measured") else "ok" if r.get("ok") else "MISSED"
        elif r["goal"] is None:
            ratio = f"{r['ratio']:.2f}x"
            goal = "— (measured)"
            verdict = ""
        else:
            ratio = f"{r['ratio']:.2f}x"
            goal = f"<= {r['goal']}x {'ok' if r['ratio'] <= r['goal'] else 'MISSED'}"
            verdict = f"({r['note']})" if r.get("note") else ""
        pynq = f"{r['pynq']:.2f}x" if r["pynq"] else ""
        lines.append(f"| {r['name']} | {r['baseline']} | {ours} | "
                     f"{fmt_ns(statistics.median(r['base']), r['unit'])} | {ratio} {verdict} | {goal} | {pynq} |")
    return "\n".join(lines)


def beside_thread(op, step, n_calls, repeats, gap):
    """op()'s median time on this thread while another thread calls step() in
    a loop, vs the same with that thread not started; medians of interleaved
    repeats. The calls are spaced out by `gap` seconds of sleep, like an
    application's: back-to-back ones would keep the GIL (and a lock) between
    the other thread's steps and hide the wait."""
    import threading

    def median_op():
        out = []
        for _ in range(n_calls):
            time.sleep(gap)
            t0 = time.perf_counter()
            op()
            out.append((time.perf_counter() - t0) * 1e9)
        return statistics.median(out)

    t_busy, t_idle, ratios = [], [], []
    for _ in range(repeats):
        idle = median_op()
        stop = threading.Event()
        started = threading.Event()

        def loop():
            started.set()
            while not stop.is_set():
                step()
        t = threading.Thread(target=loop)
        t.start()
        started.wait()
        busy = median_op()
        stop.set()
        t.join()
        t_idle.append(idle)
        t_busy.append(busy)
        ratios.append(busy / idle)
    return t_busy, t_idle, statistics.median(ratios)


def latency_under_flush(be, flusher_buf, n_alloc, repeats):
    """allocate() latency on this thread while another thread flushes flusher_buf
    in a loop, vs the same with that thread idle."""
    def flush_step():
        flusher_buf[0] = 1
        flusher_buf.flush()
    return beside_thread(lambda: be.allocate(1024, "u4"), flush_step, n_alloc, repeats, 0.0005)


def beside_busy_thread(op, n_calls, repeats):
    """op()'s median time while another Python thread computes (pure-Python
    steps: it holds the GIL whenever it can) vs with that thread asleep. A
    call that lets go of the GIL waits for the busy thread's switch interval
    (5 ms) to get it back."""
    def compute_step():
        x = 0
        for i in range(100):
            x += i
    return beside_thread(op, compute_step, n_calls, repeats, 0.002)


class BestFit:
    """Best-fit over one region (smallest free block that fits, lowest address
    on a tie; neighbours coalesce on free): the reference for the churn figure."""

    def __init__(self, size):
        self.free = [(0, size)]  # sorted by offset, never adjacent
        self.used = {}

    def alloc(self, size):
        best = None
        for i, (off, n) in enumerate(self.free):
            if n >= size and (best is None or n < self.free[best][1]):
                best = i
        if best is None:
            return None
        off, n = self.free[best]
        if n == size:
            del self.free[best]
        else:
            self.free[best] = (off + size, n - size)
        self.used[off] = size
        return off

    def release(self, off):
        import bisect
        size = self.used.pop(off)
        i = bisect.bisect(self.free, (off, 0))
        if i < len(self.free) and off + size == self.free[i][0]:
            size += self.free[i][1]
            del self.free[i]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == off:
            off, size = self.free[i - 1][0], self.free[i - 1][1] + size
            del self.free[i - 1]
            i -= 1
        self.free.insert(i, (off, size))

    def largest(self):
        return max((n for _, n in self.free), default=0)


def churn_figure(q):
    """Largest allocatable block after a random churn of allocations (64 B -
    4 MiB, log-uniform, 64 B granules) and frees on sim, against best-fit
    replaying the same trace. An allocation that fails in either is dropped
    from both, so both see the same live set throughout."""
    import random
    rng = random.Random(13)
    region = (64 << 20) if q else (256 << 20)
    ops = 2000 if q else 20_000
    be = pynq_alloc.open_backend("sim", size=region)
    bf = BestFit(region)
    live, live_bytes = [], 0
    for _ in range(ops):
        if live and (rng.random() < 0.5 or live_bytes > region // 2):
            buf, off = live.pop(rng.randrange(len(live)))
            live_bytes -= buf.nbytes
            del buf
            bf.release(off)
            continue
        size = -(-int(2 ** rng.uniform(6, 22)) // 64) * 64
        off = bf.alloc(size)
        try:
            buf = be.allocate(size, "u1", align=64)
        except MemoryError:
            if off is not None:
                bf.release(off)
            continue
        if off is None:
            del buf
            continue
        live.append((buf, off))
        live_bytes += size
    lo, hi = 0, region // 64  # largest allocatable size in granules: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            probe = be.allocate(mid * 64, "u1", align=64)
        except MemoryError:
            hi = mid - 1
        else:
            del probe
            lo = mid
    ours, ref = lo * 64, bf.largest()
    ratio = ours / ref if ref else float("inf")
    ROWS.append(dict(name=f"largest allocatable block after a {ops}-operation churn (64 B - "
                     f"4 MiB, {len(live)} left live) in {region >> 20} MiB, sim",
                     baseline="best-fit on the same trace", ours=[ours], base=[ref],
                     ratio=None, goal=None, pynq=None, unit="B", ok=ratio >= 1.0,
                     note=f"{ratio:.2f}x (goal >= 1.0x)"))
    del live
    be.close()


# one measurement of bytes per live buffer, in a fresh interpreter: N buffers
# of 64 B made (and each written, so its memory is really touched) after a
# warm-up; process memory growth (USS: private pages, /proc/self/smaps_rollup)
# per buffer, the growth of mappings at least as large as sim's region (its
# CPU/device views; for hugepage, regions that large) per buffer, info()'s
# used and requested per buffer, and, with tracemalloc on (a
# separate run: it adds its own memory), the Python-allocated bytes per buffer
_BPB_CHILD = r"""
import gc, sys, numpy as np, pynq_alloc
kind, n, align, trace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
align = align or None
def uss():
    d = {}
    for line in open("/proc/self/smaps_rollup"):
        p = line.split()
        if len(p) >= 2 and p[0].endswith(":") and p[1].isdigit():
            d[p[0][:-1]] = int(p[1]) * 1024
    # hugetlb pages (hugepage backend) are not in Rss/Private_*: add them
    return (d["Private_Clean"] + d["Private_Dirty"] + d.get("Private_Hugetlb", 0)
            + d.get("Shared_Hugetlb", 0))
def views(minsize):
    out, cur = {}, None
    for line in open("/proc/self/smaps"):
        p = line.split()
        if "-" in p[0] and not p[0].endswith(":"):
            a, b = (int(x, 16) for x in p[0].split("-"))
            cur = (a, b) if b - a >= minsize else None
        elif cur is not None and p[0] in ("Rss:", "Private_Hugetlb:", "Shared_Hugetlb:"):
            out[cur] = out.get(cur, 0) + int(p[1]) * 1024
    return out
size = 1 << max(28, (n * max(align or 4096, 64) * 2 - 1).bit_length())
be = None
if kind == "numpy":
    mk = lambda: np.empty(64, "u1")
elif kind == "sim":
    be = pynq_alloc.open_backend("sim", size=size)
elif kind == "floor":
    # the two arrays the lifetime contract needs per buffer (a Buffer, and the
    # plain ndarray that is its base) and 64 B of memory, with no per-block
    # state at all: Buffer views of one big sim block, each with a plain view
    fbe = pynq_alloc.open_backend("sim", size=size)
    big = fbe.allocate((n + 1000) * 64, "u1", align=64)
    plain, pos = [None] * (n + 1000), [0]
    def mk():
        i = pos[0]
        pos[0] = i + 1
        v = big[i * 64:(i + 1) * 64]
        plain[i] = np.asarray(v)
        return v
else:
    be = pynq_alloc.open_backend("hugepage")
if be is not None:
    mk = lambda: be.allocate(64, "u1", align=align)
warm = [mk() for _ in range(1000)]
del warm
live = [None] * n
gc.collect()
if trace:
    import tracemalloc
    tracemalloc.start()
t0 = tracemalloc.get_traced_memory()[0] if trace else 0
v0, u0 = views(size), uss()
for i in range(n):
    live[i] = b = mk()
    b[:] = 1
u1, v1 = uss(), views(size)
t1 = tracemalloc.get_traced_memory()[0] if trace else 0
info = be.info() if be is not None else {"used": 0, "requested": 0}
print((u1 - u0) / n, (t1 - t0) / n, sum(v1[k] - v0.get(k, 0) for k in v1) / n,
      info["used"] / n, info["requested"] / n)
"""


def bytes_per_buffer(q, huge, repeats):
    """Bytes per live 64 B buffer (sim, hugepage) vs numpy.empty(64, 'u1'):
    process memory growth over N live buffers, each in a fresh interpreter,
    interleaved with numpy's. N is large (100 000 on sim) so that the 2 MiB
    transparent huge pages sim's views get amortise (the first small buffer in a
    fresh 2 MiB range costs 2 MiB of RSS)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pynq_alloc.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYNQ_ALLOC_BACKEND", None)

    def child(kind, n, align, trace=False):
        out = subprocess.run([sys.executable, "-c", _BPB_CHILD, kind, str(n), str(align or 0),
                              "1" if trace else "0"], capture_output=True, text=True, env=env,
                             cwd="/")
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
        return [float(x) for x in out.stdout.split()]

    n = 5000 if q else 100_000
    cases = [("sim", n, 64, 2.0), ("floor", n, 64, None), ("sim", n, None, None)]
    if huge is not None:
        # 20 000 at align=4096 take 40 of the machine's shared 2 MiB pages
        cases += [("hugepage", n, 64, 2.0), ("hugepage", min(n, 20_000), None, None)]
    for kind, cnt, align, goal in cases:
        try:
            ours, base, ratios = [], [], []
            for _ in range(max(1, repeats // 3)):
                b = child("numpy", cnt, 64)
                o = child(kind, cnt, align)
                base.append(b[0])
                ours.append(o[0])
                ratios.append(o[0] / b[0])
            t_ours = child(kind, cnt, align, True)[1]
            t_base = child("numpy", cnt, 64, True)[1]
        except RuntimeError as exc:
            print(f"(bytes per buffer on {kind} skipped: {exc})")
            continue
        ratio = statistics.median(ratios)
        if kind == "floor":
            ROWS.append(dict(name="  floor: a Buffer and its plain base per 64 B, no per-block "
                             "state (views of one sim block; one more list slot)",
                             baseline="numpy.empty(64, 'u1')", ours=ours, base=base, ratio=None,
                             goal=None, pynq=None, unit="B/buf", measured=True,
                             note=f"{ratio:.2f}x; Python objects {t_ours:.0f} B; sim's mappings "
                             f"{o[2]:.0f} B; 2x numpy leaves {2 * statistics.median(base) - statistics.median(ours):.0f} B "
                             "per buffer for the allocator's node and all per-block state"))
            continue
        note = (f"{ratio:.2f}x; Python objects {t_ours:.0f} B vs numpy {t_base:.0f} B; "
                f"{kind}'s mappings {o[2]:.0f} B; info(): used {o[3]:.0f} B, requested "
                f"{o[4]:.0f} B per buffer")
        ROWS.append(dict(name=f"bytes per live 64 B buffer ({cnt} live, each written), {kind}, "
                     f"align={align or '4096 (default)'}", baseline="numpy.empty(64, 'u1')",
                     ours=ours, base=base, ratio=None, goal=None, pynq=None, unit="B/buf",
                     ok=goal is None or ratio <= goal,
                     note=note + (f" (goal <= {goal}x)" if goal else " (measured)")))


def huge_pool(pages, gigantic):
    """As root, makes sure `pages` 2 MiB huge pages (and `gigantic` 1 GiB ones)
    are free for this run on top of those in use, and returns a function
    that gives them back. The 2 MiB pool is put back to its old size (never
    below 96) keeping the free pages with the longest physically contiguous
    runs, so a run never leaves a more fragmented pool than it found."""
    import atexit
    import ctypes
    import mmap
    import struct
    sysfs = "/sys/kernel/mm/hugepages/hugepages-{}kB/{}"

    def read(kb, attr):
        with open(sysfs.format(kb, attr)) as f:
            return int(f.read())

    def write(kb, n):
        with open(sysfs.format(kb, "nr_hugepages"), "w") as f:
            f.write(str(n))

    if os.geteuid() != 0:
        print("(huge pages: not root, so the bench cannot reserve any; it uses the "
              f"{read(2048, 'free_hugepages')} free ones; rows that need more are skipped)")
        return lambda: None
    old = {2048: read(2048, "nr_hugepages")}
    want = {2048: max(old[2048], 96, old[2048] - read(2048, "free_hugepages") + pages)}
    if gigantic and os.path.exists(sysfs.format(1 << 20, "nr_hugepages")):
        old[1 << 20] = read(1 << 20, "nr_hugepages")
        want[1 << 20] = old[1 << 20] - read(1 << 20, "free_hugepages") + gigantic
    for kb, n in want.items():
        if n > old[kb]:
            with open("/proc/sys/vm/compact_memory", "w") as f:
                f.write("1")
            write(kb, n)
        got = read(kb, "nr_hugepages")
        print(f"(huge pages of {kb >> 10} MiB: {old[kb]} reserved before the run, {got} now"
              + (f", {n} wanted: the kernel found no more; rows that need them are skipped)"
                 if got < n else ")"))

    def keep_longest_runs(n):
        # hold every free 2 MiB page, give back those outside the longest
        # physical runs, shrink the pool to n (frees only pages not held),
        # then release the held ones into it
        free = read(2048, "free_hugepages")
        # pages in use elsewhere stay in the pool: keep that many fewer free ones
        n_free = max(0, n - (read(2048, "nr_hugepages") - free))
        fd = os.memfd_create("bench", os.MFD_HUGETLB)
        try:
            os.ftruncate(fd, free << 21)
            m = mmap.mmap(fd, free << 21, flags=mmap.MAP_SHARED)
            base = ctypes.addressof(ctypes.c_char.from_buffer(m))
            for i in range(free):
                m[i << 21] = 0
            pm = os.open("/proc/self/pagemap", os.O_RDONLY)
            frames = []
            for i in range(free):
                e, = struct.unpack("Q", os.pread(pm, 8, ((base + (i << 21)) >> 12) * 8))
                frames.append((e & ((1 << 55) - 1), i))
            os.close(pm)
            frames.sort()
            runs, cur = [], [frames[0]]
            for a, b in zip(frames, frames[1:]):
                if b[0] == a[0] + 512:
                    cur.append(b)
                else:
                    runs.append(cur)
                    cur = [b]
            runs.append(cur)
            keep = set()
            for run in sorted(runs, key=len, reverse=True):
                keep.update(i for _, i in run[: max(0, n_free - len(keep))])
            libc = ctypes.CDLL(None, use_errno=True)
            libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
            for i in range(free):
                if i not in keep:
                    libc.fallocate(fd, 3, i << 21, 1 << 21)  # PUNCH_HOLE | KEEP_SIZE
            write(2048, n)
            del base
            m.close()
        finally:
            os.close(fd)

    done = []

    def restore():
        if done:
            return
        done.append(True)
        gc.collect()
        for kb, n in old.items():
            if read(kb, "nr_hugepages") == n:
                continue
            if kb == 2048:
                try:
                    keep_longest_runs(max(n, 96))
                except (OSError, ValueError, IndexError) as exc:
                    print(f"(huge pages: keeping the longest runs failed ({exc}); pool set back "
                          "as the kernel chooses)")
                write(kb, max(n, 96))
            else:
                write(kb, n)
            print(f"(huge pages of {kb >> 10} MiB: {read(kb, 'nr_hugepages')} reserved again)")
    atexit.register(restore)
    return restore


def huge_big(n, **opts):
    """A hugepage backend (open_backend options opts) that can hold one
    n-byte block: 2 MiB pages if the pool has n/2 MiB physically contiguous
    ones, else 1 GiB pages; (backend, page size) or (None, why)."""
    why = ""
    for ps in ("2M", "1G"):
        try:
            be = pynq_alloc.open_backend("hugepage", page_size=ps, **opts)
            be.allocate(n, "u1")
        except (MemoryError, OSError, ValueError) as exc:
            why += f"{ps}: {exc}; "
            continue
        gc.collect()
        return be, ps
    return None, why


def floor_row(label, rows, repeats):
    """The hardware's floor for the ROI row just above: the same lines in a
    plain C loop (bench/floor.c, built here with $CC or cc), no pynq_alloc
    code: sim's flush copies each line to the device side, hugepage's cleans it
    from the CPU cache."""
    import shlex
    import shutil
    import tempfile
    mode = "copy" if label == "sim" else "clean"
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "floor")
        try:
            built = subprocess.run(cc + ["-std=c11", "-O2", "-Wall", "-Wextra", "-o", exe, src], capture_output=True,
                                   text=True)
        except OSError as exc:
            print(f"(floor for the ROI flush on {label} not measured: no C compiler: {exc})")
            return
        if built.returncode != 0:
            print(f"(floor for the ROI flush on {label} not measured: {' '.join(cc)} failed: "
                  f"{built.stderr.strip()[-200:]})")
            return
        out = subprocess.run([exe, mode, str(rows), "1024", str(repeats)], capture_output=True,
                             text=True)
    if out.returncode != 0:
        print(f"(floor for the ROI flush on {label} not measured: {out.stdout.strip()}"
              f"{out.stderr.strip()})")
        return
    ratio, t_rows, t_contig = (float(x) for x in out.stdout.split())
    what = ("copy of one 64 B line per row (faster of memcpy per line and streaming stores)"
            if mode == "copy" else "cache clean of one line per row")
    ROWS.append(dict(name=f"  floor: {what}, plain C (bench/floor.c), {label}",
                     baseline=f"the same {rows} lines contiguous" +
                     (" (memcpy)" if mode == "copy" else ""),
                     ours=[t_rows], base=[t_contig], ratio=ratio, goal=None, pynq=None,
                     unit="ns"))


def latency_rows(q, big, repeats):
    """allocate() latency on one thread while another flushes `big` bytes."""
    sim2 = pynq_alloc.open_backend("sim", size=128 << 20)
    fbuf = sim2.allocate(big, "u1", cacheable=True)
    busy, idle, ratio = latency_under_flush(sim2, fbuf, 50 if q else 300, repeats)
    ROWS.append(dict(name=f"sim allocate(1024, 'u4') latency while another thread flushes "
                     f"{big >> 20} MiB", baseline="the same, other thread idle", ours=busy,
                     base=idle, ratio=ratio, goal=2.0, pynq=None, unit="ns"))

    class NumpyCopy:
        """the other thread's loop without pynq_alloc: a GIL-free numpy copy
        of as many bytes, i.e. the same competition for cores, caches and
        memory bandwidth with no lock or GIL of ours involved"""
        def __init__(self, n):
            self.src, self.dst = np.ones(n, "u1"), np.empty(n, "u1")

        def __setitem__(self, i, v):
            self.src[i] = v

        def flush(self):
            np.copyto(self.dst, self.src)
    busy, idle, ratio = latency_under_flush(sim2, NumpyCopy(big), 50 if q else 300, repeats)
    ROWS.append(dict(name=f"  reference: the same latency while another thread copies {big >> 20} "
                     "MiB with numpy", baseline="the same, other thread idle", ours=busy,
                     base=idle, ratio=ratio, goal=None, pynq=None, unit="ns"))
    del fbuf
    sim2.close()


def busy_thread_rows(q, repeats):
    """Calls next to a computing Python thread: short work keeps the GIL
    (pa.h PA_WORK_GIL_BYTES), so it does not wait out the other thread's
    switch interval; numpy's own copy of the same bytes for reference."""
    sim4 = pynq_alloc.open_backend("sim", size=64 << 20, cacheable=True)
    fb = sim4.allocate(1 << 20, "u1")
    src, dst = np.ones(1 << 20, "u1"), np.empty(1 << 20, "u1")

    def flush_1m():
        fb[0] = 1
        fb.flush()

    def alloc_8m():
        sim4.allocate(8 << 20, "u1")
    calls = 5 if q else 40
    for label, op in (("sim flush() of 1 MiB (non-coherent)", flush_1m),
                      ("sim allocate(8 MiB) + free", alloc_8m),
                      ("  reference: numpy.copyto of 1 MiB", lambda: np.copyto(dst, src))):
        busy, idle, ratio = beside_busy_thread(op, calls, max(1, repeats // 3))
        ROWS.append(dict(name=f"{label} while another Python thread computes",
                         baseline="the same, other thread asleep", ours=busy, base=idle,
                         ratio=ratio, goal=None, pynq=None, unit="ns"))
    del fb
    sim4.close()

# sleep before each timed call of the hugepage first-use goal row (both sides)
FIRST_USE_PAUSE = 0.25


def round_two(q, repeats, huge, glb, number):
    """Issue 13's figures (big buffers, many buffers, busy threads)."""
    n_live = 500 if q else 100_000
    # 1. hugepage allocate(64) (default align=4096) with many live buffers vs none
    if huge is not None and want("hugepage allocate(64)"):
        try:
            hfull = pynq_alloc.open_backend("hugepage")
            hempty = pynq_alloc.open_backend("hugepage")
            live = [hfull.allocate(64, "u1") for _ in range(n_live)]
        except (MemoryError, OSError) as exc:
            print(f"(hugepage many-buffers figure skipped: {exc})")
        else:
            glb.update(hfull=hfull, hempty=hempty)
            figure(f"hugepage allocate(64) with {len(live)} live buffers (align=4096)",
                   "hfull.allocate(64, 'u1')", "hempty.allocate(64, 'u1')", glb, number // 8,
                   repeats, 1.2, "with none alive")
            del live
            hfull.close()
            hempty.close()

    # 2. ROI flush of a 64 MiB image with 1 KiB rows vs a contiguous flush of
    # as many lines (65 536 lines of 64 B either way)
    rows = 1024 if q else 65536
    backends = [("sim", lambda: pynq_alloc.open_backend("sim", size=128 << 20, cacheable=True))]
    if huge is not None:
        def huge_nc():
            be, why = huge_big(rows * 1024, coherent=False)
            if be is None:
                raise MemoryError(why)
            return be
        backends.append(("hugepage non-coherent", huge_nc))
    for label, opener in backends if want("ROI flush") else []:
        try:
            be = opener()
            img = be.allocate((rows, 1024), "u1")
        except (MemoryError, OSError) as exc:
            print(f"(ROI flush figure on {label} skipped: {exc})")
            continue
        roi = img[:, :64]
        contig = img.reshape(-1)[: rows * 64]

        def dirty():
            img[:] = 7
        big_figure(f"ROI flush img[:, :64] of a {rows >> 10} MiB image (1 KiB rows), {label}",
                   roi.flush, contig.flush, dirty, repeats, 1.5,
                   f"contiguous flush of the same {rows} lines")
        del roi, contig, img
        be.close()
        floor_row(label, rows, 3 if q else 21)

    # 3. allocate() latency on one thread while another flushes 64 MiB
    big = (1 << 20) if q else (64 << 20)
    if want("latency"):
        latency_rows(q, big, repeats)
    if want("computes"):
        busy_thread_rows(q, repeats)

    # 3b. allocate + write every byte on sim vs numpy.zeros + write, 1 / 16 / 256
    # MiB; one warm-up each, so freed memory is reused as an application's loop
    # would (sim keeps freed blocks under 64 MiB mapped, numpy's malloc its heap)
    for n in ((1 << 20, 2 << 20) if q else (1 << 20, 16 << 20, 256 << 20)):
        if not want("allocate + write every byte"):
            break
        simw = pynq_alloc.open_backend("sim", size=max(2 * n, 64 << 20))

        def write_ours(n=n, simw=simw):
            a = simw.allocate(n, "u1")
            a[:] = 1
            del a

        def write_numpy(n=n):
            a = np.zeros(n, "u1")
            a[:] = 1
            del a
        write_ours()
        write_numpy()
        big_figure(f"allocate + write every byte, {n >> 20} MiB, sim", write_ours, write_numpy,
                   lambda: None, repeats, 1.2, "numpy.zeros + write")
        simw.close()
        # the same on hugepage: memory the kernel zeroed is not zeroed again;
        # reused memory is, with non-temporal stores and without the GIL
        if huge is None:
            continue
        hw, ps = huge_big(n)
        if hw is None:
            print(f"(hugepage allocate + write {n >> 20} MiB skipped: {ps})")
            continue

        def write_huge(n=n, hw=hw):
            a = hw.allocate(n, "u1")
            a[:] = 1
            del a
        def settled(hw=hw):
            # the worker zeroing the block freed last would compete with
            # whichever side runs next for memory bandwidth: let it finish
            # first (untimed), so neither side is measured beside it
            deadline = time.monotonic() + 5
            while hw._zeroing()["pending"] and time.monotonic() < deadline:
                time.sleep(0.001)
        write_huge()
        big_figure(f"allocate + write every byte, {n >> 20} MiB, hugepage ({ps} pages)",
                   write_huge, write_numpy, settled, repeats, 1.2, "numpy.zeros + write",
                   note="before each timed call (both sides) the background zeroing of the "
                   "block freed last has finished")
        hw.close()

    if want("largest allocatable block"):
        churn_figure(q)

    # 4. time to first use of a 256 MiB buffer (allocate + a[0] = 1) vs numpy.zeros,
    # and how much a pure-Python thread keeps running during that allocate
    n = (16 << 20) if q else (256 << 20)
    sim3 = pynq_alloc.open_backend("sim", size=2 * n)

    def first_use_ours():
        a = sim3.allocate(n, "u1")
        a[0] = 1
        del a

    def first_use_numpy():
        a = np.zeros(n, "u1")
        a[0] = 1
        del a
    big_figure(f"time to first use of {n >> 20} MiB (allocate + a[0] = 1), sim", first_use_ours,
               first_use_numpy, lambda: None, repeats, 2.0, "numpy.zeros + a[0] = 1")
    hfu, hps = (huge_big(n) if huge is not None and want("time to first use", "share of a")
                else (None, "no hugepage backend" if huge is None else "not asked for (--only)"))
    if hfu is None:
        print(f"(hugepage time to first use skipped: {hps})")
    else:
        def first_use_huge():
            a = hfu.allocate(n, "u1")
            a[0] = 1
            del a
        first_use_huge()
        # The goal row: a buffer's first use as a program meets it, some time
        # after the previous one was freed. The hugepage backend zeroes freed
        # memory in the background at idle priority (bgzero.c, ~13 ms for
        # 256 MiB); FIRST_USE_PAUSE of sleep before every timed call, numpy's
        # too, leaves it the idle CPU for that. The note says how much
        # allocate() still had to zero itself over the repeats.
        sync0 = hfu._zeroing()["sync"]
        big_figure(f"time to first use of {n >> 20} MiB (allocate + a[0] = 1), hugepage "
                   f"({hps} pages), {FIRST_USE_PAUSE * 1e3:.0f} ms after the last free",
                   first_use_huge, first_use_numpy, lambda: None, repeats, 2.0,
                   "numpy.zeros + a[0] = 1, same pause", pause=FIRST_USE_PAUSE,
                   note=lambda: f"allocate zeroed {(hfu._zeroing()['sync'] - sync0) >> 20} MiB "
                   f"itself over {repeats} repeats (the rest was zeroed in the background)")
        # The tight loop: allocate right after freeing the same memory, which
        # must then be zeroed before it is handed out (the background job is
        # cancelled at once): a memory-bandwidth figure, no goal.
        big_figure(f"  time to first use of {n >> 20} MiB right after freeing the same memory "
                   f"(tight loop: allocate zeroes it), hugepage ({hps} pages)", first_use_huge,
                   first_use_numpy,
                   lambda: None, repeats, None, "numpy.zeros + a[0] = 1")

    import threading

    def python_thread_share(work):
        """(iterations per second of a pure-Python thread while work() runs
        on this thread, work's duration in seconds)"""
        count = [0]
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                count[0] += 1
        t = threading.Thread(target=spin)
        t.start()
        time.sleep(0.01)
        c0, t0 = count[0], time.perf_counter()
        work()
        c1, t1 = count[0], time.perf_counter()
        stop.set()
        t.join()
        return (c1 - c0) / (t1 - t0), t1 - t0

    def share_row(label, work):
        # Share over the call's own duration when the call does real work
        # (1 ms or more alone: zeroing, page tables). A lazy call is shorter
        # than the interpreter's switch interval, so no other thread can even
        # be scheduled inside it and a share "during" it measures only
        # timing luck; then the row reports the call's whole duration alone,
        # the longest it can keep the GIL from another thread, as a fraction
        # of one switch interval.
        alone = statistics.median(timed_once(work, repeats)) / 1e9
        if alone < 1e-3:
            kept = 1 - alone / sys.getswitchinterval()
            ROWS.append(dict(name=f"share of a pure-Python thread's time kept during {label}",
                             baseline="lazy call: its whole duration alone vs one switch interval "
                             f"({sys.getswitchinterval() * 1e3:.0f} ms)",
                             ours=[alone * 1e9], base=[sys.getswitchinterval() * 1e9],
                             ratio=None, goal=None, pynq=None, unit="ns", ok=kept >= 0.9,
                             note=f"{kept:.3f} (goal >= 0.9)"))
            return
        # Baselines: this thread asleep (the literal reading; on a loaded
        # 2-core machine it also counts the other processes competing for the
        # core the Python thread is left with), and this thread running a
        # numpy call that releases the GIL for as long (fill of n bytes): the
        # same contention for cores and memory bandwidth, no GIL held. The
        # goal is judged on the latter, which isolates what the allocate does
        # to other Python threads; both are reported.
        z = np.ones(n, "u1")
        shares, asleep, d_ours, d_base = [], [], [], []
        for _ in range(repeats):
            idle, _ = python_thread_share(lambda: time.sleep(0.05))
            free_gil, _ = python_thread_share(lambda: z.fill(0))
            busy, _ = python_thread_share(work)
            d_ours.append(busy)
            d_base.append(free_gil)
            if free_gil > 0 and idle > 0:  # else the thread never got a core: no figure
                shares.append(busy / free_gil)
                asleep.append(busy / idle)
        del z
        if not shares:
            shares = asleep = [float("nan")]
        ROWS.append(dict(name=f"share of a pure-Python thread's speed kept during {label} "
                         f"({alone * 1e3:.1f} ms alone)",
                         baseline=f"numpy fill of {n >> 20} MiB (GIL released) on this thread",
                         ours=d_ours, base=d_base, ratio=None, goal=None, pynq=None,
                         unit="iter/s", ok=statistics.median(shares) >= 0.9,
                         note=f"{statistics.median(shares):.2f} (goal >= 0.9); "
                         f"{statistics.median(asleep):.2f} vs this thread asleep; "
                         f"{len(shares)} of {repeats} repeats"))

    if want("share of a"):
        share_row(f"a {n >> 20} MiB sim allocate + a[0] = 1 + release", first_use_ours)
    sim3.close()
    # the same during a hugepage allocate that zeroes reused (touched) memory
    if hfu is not None and want("share of a"):
        # Two in a row: the second allocate comes right after the first's
        # release, so it zeroes the reused memory itself (the background job
        # has had no time); a single call after the pauses of this row's
        # baselines would find the memory zeroed in the background already
        # and be lazy, which is not what the row is about.
        def reuse():
            for _ in range(2):
                a = hfu.allocate(n, "u1")
                a[0] = 1
                del a
        share_row(f"two {n >> 20} MiB hugepage allocate + a[0] = 1 + release in a row, the "
                  f"second zeroing the reused memory ({hps} pages)", reuse)
    if hfu is not None:
        hfu.close()

    if want("bytes per live"):
        bytes_per_buffer(q, huge, repeats)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny setting, to check the script runs")
    ap.add_argument("--only", metavar="TEXT[,TEXT...]",
                    help="run only the figures whose names contain one of these (e.g. "
                    "'first use,allocate(64)'); sections whose figures are all left out are "
                    "skipped with their set-up")
    args = ap.parse_args()
    global ONLY
    ONLY = [o for o in args.only.split(",") if o] if args.only else None
    q = args.quick
    number, repeats = (200, 3) if q else (20000, 9)
    big = (1 << 20) if q else (64 << 20)

    sim = pynq_alloc.open_backend("sim")
    sim_coh = pynq_alloc.open_backend("sim", coherent=True)
    buf = sim.allocate(1024, "u4")  # PYNQ's default: non-cacheable, coherent
    arr = np.empty(1024, "u4")
    view = buf[10:20]
    plain_mem = np.zeros(4096, "u1")
    pbuf = PynqLikeBuffer((1024,), "u4", buffer=plain_mem, device_address=0x4000_0000)
    pview = pbuf[10:20]
    coh = sim_coh.allocate(1024, "u4")
    glb = dict(globals(), buf=buf, arr=arr, view=view, pbuf=pbuf, pview=pview, coh=coh, sim=sim,
               np=np, plain_mem=plain_mem, PynqLikeBuffer=PynqLikeBuffer)

    figure("buf[10:20]", "buf[10:20]", "arr[10:20]", glb, number, repeats, 1.3,
           "ndarray slice", pynq="pbuf[10:20]")
    figure("view.device_address", "view.device_address", "arr.ndim", glb, number, repeats, 1.5,
           "ndarray.ndim", pynq="pview.device_address")
    figure("allocate(1024, 'u4') + release, sim", "sim.allocate(1024, 'u4')",
           "np.empty(1024, 'u4')", glb, number // 4, repeats, 2.0, "np.empty(1024, 'u4')",
           pynq="PynqLikeBuffer((1024,), 'u4', buffer=plain_mem)")
    figure("allocate(16, 'u4', align=64) + release, sim", "sim.allocate(16, 'u4', align=64)",
           "np.empty(16, 'u4')", glb, number // 4, repeats, 2.0, "np.empty(16, 'u4')")
    try:
        huge = pynq_alloc.open_backend("hugepage")
    except (OSError, MemoryError, NotImplementedError) as exc:
        huge = None
        print(f"(hugepage figures skipped: {exc})")
    restore_pool = lambda: None  # noqa: E731
    if huge is not None and not q:
        # 4 KiB per live 64 B buffer at the default align: 100 000 take 200 pages
        # of 2 MiB; a 64 or 256 MiB block needs 32 or 128 physically contiguous
        # ones, or one 1 GiB page where the pool is too fragmented for that
        # (huge_big). --quick (run by the tests) leaves the pool alone.
        restore_pool = huge_pool(100_000 * 4096 // (2 << 20) + 48, 1)
    if huge is not None:
        glb["huge"] = huge
        figure("allocate(1024, 'u4') + release, hugepage", "huge.allocate(1024, 'u4')",
               "np.empty(1024, 'u4')", glb, number // 4, repeats, 3.0, "np.empty(1024, 'u4')")
    figure("flush() on a coherent buffer", "coh.flush()", "arr.nbytes", glb, number, repeats, 2.0,
           "ndarray.nbytes")

    # the price of cacheable=True: flush() of 4 KiB that the CPU just wrote, on a
    # cacheable buffer against PYNQ's default non-cacheable one (a no-op)
    glb.update(cbuf=sim.allocate(1024, "u4", cacheable=True), ncbuf=sim.allocate(1024, "u4"))
    figure("flush() of 4 KiB, cacheable (sim: copy to the device side)",
           "cbuf[0] = 1; cbuf.flush()", "ncbuf[0] = 1; ncbuf.flush()", glb, number // 4, repeats,
           None, "the same, non-cacheable")
    if huge is not None:
        try:
            hnc = pynq_alloc.open_backend("hugepage", coherent=False)
            glb.update(hcbuf=hnc.allocate(1024, "u4"), hncbuf=huge.allocate(1024, "u4"))
        except (MemoryError, OSError) as exc:
            print(f"(hugepage flush figure skipped: {exc})")
        else:
            method = pynq_alloc._pynq_alloc.cache_info()["method"]
            figure(f"flush() of 4 KiB, cacheable (hugepage non-coherent: {method})",
                   "hcbuf[0] = 1; hcbuf.flush()", "hncbuf[0] = 1; hncbuf.flush()", glb,
                   number // 4, repeats, None, "the same, coherent (no-op)")

    # O(1) allocator: the same allocation with 100 000 other buffers alive
    empty = pynq_alloc.open_backend("sim")
    full = pynq_alloc.open_backend("sim")
    live = [full.allocate(16, "u4", align=64)
            for _ in range((1000 if q else 100_000) if want("live buffers") else 0)]
    glb.update(empty=empty, full=full)
    figure(f"allocate with {len(live)} live buffers", "full.allocate(16, 'u4', align=64)",
           "empty.allocate(16, 'u4', align=64)", glb, number // 4, repeats, 1.2, "with none alive")
    del live

    src = np.ones(big, "u1")
    dst = np.empty(big, "u1")
    if huge is not None:
        nc, nps = huge_big(big, coherent=False)
        hbuf = nc.allocate(big, "u1") if nc is not None else None
        if hbuf is None:
            print(f"(cache maintenance figure skipped: {nps})")
        else:
            def dirty():
                hbuf[:] = 3
            big_figure(f"CPU cache clean (flush, {pynq_alloc._pynq_alloc.cache_info()['method']}) of {big >> 20} MiB, "
                       "hugepage non-coherent", hbuf.flush, lambda: np.copyto(dst, src), dirty,
                       repeats, 1.0, f"memcpy of {big >> 20} MiB")
            big_figure(f"CPU cache clean+invalidate (invalidate) of {big >> 20} MiB, hugepage "
                       "non-coherent", hbuf.invalidate, lambda: np.copyto(dst, src), dirty, repeats, 1.0,
                       f"memcpy of {big >> 20} MiB")
            del hbuf
        if nc is not None:
            nc.close()  # its pages (maybe the one 1 GiB page) are for later rows
    sbuf = sim.allocate(big, "u1", cacheable=True)

    def sdirty():
        sbuf[:] = 5
    big_figure(f"sim non-coherent flush() of {big >> 20} MiB", sbuf.flush, lambda: np.copyto(dst, src),
               sdirty, repeats, 1.2, f"memcpy of {big >> 20} MiB")
    del sbuf
    round_two(q, repeats, huge, glb, number)
    restore_pool()
    if want("import + first allocate", "peak RSS"):
        process_figure(3 if q else 10)
    gc.collect()
    print(report(time.strftime("%Y-%m-%d")))


if __name__ == "__main__":
    main()
