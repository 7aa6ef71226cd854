"""Command line: ``python -m pynq_alloc demo`` and ``python -m pynq_alloc info [--json]``."""
import argparse
import json
import sys

import numpy as np

from . import _pynq_alloc, allocate, default_backend, open_backend


def demo(args):
    """Allocate, write, flush, let the device read and write, invalidate, read back.

    The buffer is cacheable (PYNQ's default is non-cacheable, where flush() and
    invalidate() are no-ops): the round trip shows what they are for."""
    try:
        backend = default_backend() if args.backend is None else open_backend(args.backend)
        buf = allocate(shape=(8,), dtype="u4", target=backend, cacheable=True)
    except (ValueError, TypeError, OSError, MemoryError, NotImplementedError,
            RuntimeError) as exc:
        print(f"python -m pynq_alloc demo: {exc}", file=sys.stderr)
        return 2
    print(f"backend: {backend.name} ({backend.spec}), default buffers coherent: "
          f"{backend.coherent}")
    print(f"allocated {buf.nbytes} bytes at device_address 0x{buf.device_address:x} "
          f"(cacheable=True, coherent: {buf.coherent})")
    buf[:] = np.arange(8, dtype="u4") * 3
    buf.flush()
    print(f"CPU wrote {buf.tolist()} and flushed")
    if not hasattr(backend, "device_read") or backend.name != "sim":
        print("(the simulated device round trip needs the sim backend; done)")
        buf.freebuffer()
        return 0
    seen = np.frombuffer(backend.device_read(buf.device_address, buf.nbytes), dtype="u4")
    print(f"device read  {seen.tolist()}")
    backend.device_write(buf.device_address, (seen + 1).astype("u4").tobytes())
    print("device wrote each value + 1")
    before = buf.tolist()
    buf.invalidate()
    after = buf.tolist()
    if not buf.coherent:
        print(f"CPU before invalidate(): {before}  (stale: the cache still holds the old data)")
    print(f"CPU after invalidate():  {after}")
    ok = seen.tolist() == (np.arange(8) * 3).tolist() and after == (np.arange(8) * 3 + 1).tolist()
    used = backend.info()["used"]
    buf.freebuffer()
    print(f"freed; backend used bytes {used} -> {backend.info()['used']}")
    print("round trip OK" if ok else "round trip FAILED")
    return 0 if ok else 1


def info(args):
    """Report every backend: usable or not, and why."""
    rows = []
    for name, usable, board, reason in _pynq_alloc._probe():
        row = {"backend": name, "usable": usable, "board": board, "reason": reason}
        if usable:
            try:
                with open_backend(name) as be:
                    row.update({k: v for k, v in be.info().items() if k not in ("name",)})
            except Exception as exc:  # report, don't fail: this is a diagnosis tool
                row.update(usable=False, reason=f"{type(exc).__name__}: {exc}")
        rows.append(row)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for row in rows:
        reason = row["reason"]
        if row["usable"] and not reason.startswith("usable"):
            reason = f"usable: {reason}"
        elif not row["usable"]:
            reason = f"not usable: {reason}"
        print(f"{row['backend']:10s} {reason}")
        if "total" in row:
            print(
                f"{'':10s} total {row['total']} B, free {row['free']} B, largest free "
                f"{row['largest_free']} B, coherent {row['coherent']}, cacheable by "
                f"default {row['cacheable']}, cache line {row['cache_line_size']} B"
            )
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynq_alloc")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="allocate, flush, simulated DMA round trip")
    p.add_argument("--backend", help="backend spec (default: the default backend)")
    p.set_defaults(func=demo)
    p = sub.add_parser("info", help="which backends are usable here, and why not")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
