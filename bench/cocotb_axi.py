"""Co-simulation throughput: bytes copied per CPU-second by our AXI4 copy engine
(tests/cocotb/hdl/axi_copy.v, Icarus) with its memory being pynq_alloc.cocotb.AxiRam on
sim buffers (coherency checker on) versus cocotbext-axi's own AxiRam, in the same
simulator run, alternating. Goal: ours/theirs >= 1.0x.

    python bench/cocotb_axi.py [--quick] [--width 64] [--kib 64] [--repeats 5]
Needs iverilog and the cocotb extra (pip install '.[cocotb]').
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "cocotb"))
import simrun  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny setting, to check the script runs")
    ap.add_argument("--width", type=int, default=64, help="DATA_WIDTH of the design")
    ap.add_argument("--kib", type=int, default=64, help="bytes copied per run, KiB")
    ap.add_argument("--repeats", type=int, default=5, help="runs of each, alternating")
    args = ap.parse_args()
    if args.quick:
        args.kib, args.repeats = 4, 1
    why = simrun.missing_tools()
    if why:
        sys.exit(f"cannot run: {why}")
    nbytes = args.kib * 1024
    with tempfile.TemporaryDirectory(prefix="pynq_alloc-cocotb-bench-") as tmp:
        build_dir = Path(tmp) / "build"
        out = Path(tmp) / "runs.jsonl"
        runner = simrun.build("axi_copy", simrun.HDL / "axi_copy.v", build_dir,
                              {"DATA_WIDTH": args.width})
        results = simrun.run(runner, "axi_copy", "cocotb_axi_sim", build_dir, extra_path=[HERE],
                             extra_env={"BENCH_NBYTES": str(nbytes),
                                        "BENCH_REPEATS": str(args.repeats),
                                        "BENCH_OUT": str(out)})
        bad = {k: v for k, v in results.items() if v[0] != "passed"}
        if bad:
            sys.exit(f"benchmark runs failed: {bad}")
        runs = [json.loads(line) for line in out.read_text().splitlines()]
    cpu = {kind: [r["cpu"] for r in runs if r["kind"] == kind] for kind in ("ours", "theirs")}
    rate = {k: nbytes / statistics.median(v) for k, v in cpu.items()}
    ratio = rate["ours"] / rate["theirs"]
    def fmt(v):
        return f"{min(v) * 1e3:.0f} / {statistics.median(v) * 1e3:.0f} / {max(v) * 1e3:.0f} ms"
    print(f"copy of {args.kib} KiB through axi_copy ({args.width}-bit), Icarus, "
          f"{args.repeats} runs each, CPU time of the simulator process")
    print("| figure | baseline | ours CPU (min / median / max) | baseline CPU | ours | baseline | ratio | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| AXI4 copy {args.kib} KiB, {args.width}-bit, pynq_alloc.cocotb.AxiRam (check='raise') "
          f"| cocotbext-axi AxiRam | {fmt(cpu['ours'])} | {fmt(cpu['theirs'])} "
          f"| {rate['ours'] / 1e6:.3f} MB/CPU-s | {rate['theirs'] / 1e6:.3f} MB/CPU-s "
          f"| {ratio:.2f}x | >= 1.0x {'ok' if ratio >= 1.0 else 'MISSED'} |")


if __name__ == "__main__":
    main()
