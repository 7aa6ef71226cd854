"""What one more run costs when a sparse strided view is synchronised run by run.

    python bench/crossover.py            # sim, and hugepage non-coherent when available
    python bench/crossover.py --quick    # a small setting: checks the script runs

A backend's `sync_run_lines` (src/core/pa.h) is the cost of one run beyond the
lines it touches, in lines of a contiguous sync: flush()/invalidate() of a
sparse view goes run by run when runs * (lines per run + sync_run_lines) <=
the lines of its extent, else its whole extent (README, "flush() and
invalidate()"). This script measures it: for views `img[:, :run]` of images
with rows far apart (so the rule picks runs), it times the view's flush
against a flush of the contiguous extent of the same image (cost per line
`c`), in interleaved repeats after dirtying every byte, and reports
`flush(view) / (runs * c) - lines per run`: the extra lines a run costs.
hugepage declares 1 (PA_CPU_RUN_LINES in src/core/pa.h, also used for
wrapped memory: the short runs' figure, where a line on its own costs about two
of a contiguous clwb), sim 2 (src/core/backend_sim.c: its medians moved
between 0.8 and 2.7 from run to run on this shared machine)."""
import argparse
import statistics
import time

import pynq_alloc

LINE = 64


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(be, rows, row_bytes, run_bytes, repeats):
    img = be.allocate((rows, row_bytes), "u1")
    try:
        view = img[:, :run_bytes]
        extent = img.reshape(-1)[: (rows - 1) * row_bytes + run_bytes]
        extras = []
        for _ in range(repeats):
            img[:] = 1
            t_ext = timed(extent.flush)
            img[:] = 2
            t_runs = timed(view.flush)
            per_line = t_ext / (extent.nbytes / LINE)
            lines = -(-run_bytes // LINE)
            extras.append(t_runs / (rows * per_line) - lines)
        return statistics.median(extras)
    finally:
        del view, extent
        img.freebuffer()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 15)
    rows = 512 if args.quick else 16384
    backends = [("sim", lambda: pynq_alloc.open_backend("sim", size=128 << 20, cacheable=True))]
    try:
        pynq_alloc.open_backend("hugepage").close()
    except (OSError, ValueError, NotImplementedError):
        print("(hugepage not available: skipped)")
    else:
        backends.append(("hugepage non-coherent",
                         lambda: pynq_alloc.open_backend("hugepage", coherent=False)))
    print("| backend | run bytes | row bytes | extra lines per run (median) |")
    print("| --- | --- | --- | --- |")
    for label, opener in backends:
        be = opener()
        try:
            found = []
            for run in (64, 128, 256, 512):
                for row in (2048, 4096):
                    try:
                        extra = measure(be, rows, row, run, repeats)
                    except MemoryError as exc:
                        print(f"({label}: {run}/{row} skipped: {exc})")
                        continue
                    found.append(extra)
                    print(f"| {label} | {run} | {row} | {extra:.2f} |")
            if found:
                print(f"| {label} | all | | median {statistics.median(found):.2f}, "
                      f"max {max(found):.2f} |")
        finally:
            be.close()


if __name__ == "__main__":
    main()
