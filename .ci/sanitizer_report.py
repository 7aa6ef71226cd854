"""Reads ASan/UBSan/LSan logs and valgrind XML files; fails on any memory error,
and on any leak whose stack passes through pynq_alloc's own code.

Python and NumPy keep some memory until exit by design; only leaks allocated
from our frames (src/core, src/python, _pynq_alloc*.so) are ours to fix."""
import glob
import re
import sys
import xml.etree.ElementTree as ET

OURS = re.compile(r"src/(core|python)/|_pynq_alloc")


def asan(paths):
    errors, ours, others = [], [], 0
    for path in paths:
        text = open(path, errors="replace").read()
        for m in re.finditer(r"ERROR: AddressSanitizer.*|runtime error:.*", text):
            errors.append(f"{path}: {m.group(0)}")
        for block in re.split(r"\n(?=(?:Direct|Indirect) leak of)", text)[1:]:
            stack = block.split("\n\n")[0]
            if OURS.search(stack):
                ours.append(f"{path}:\n{stack}")
            else:
                others += 1
    return errors, ours, others


def valgrind(paths):
    errors, ours, others = [], [], 0
    found = []
    for path in paths:
        # a fork()ed child writes its own XML header into its parent's file before it
        # execs, so read the complete <error> elements rather than whole documents
        text = open(path, errors="replace").read()
        for m in re.finditer(r"<error>.*?</error>", text, re.S):
            try:
                found.append((path, ET.fromstring(m.group(0))))
            except ET.ParseError as exc:
                errors.append(f"{path}: unreadable valgrind error record ({exc})")
    for path, err in found:
        kind = err.findtext("kind")
        frames = " ".join(
            f"{f.findtext('obj') or ''} {f.findtext('dir') or ''}/{f.findtext('file') or ''} "
            f"{f.findtext('fn') or ''}"
            for f in err.iter("frame")
        )
        mine = bool(OURS.search(frames))
        if mine:
            (ours if kind.startswith("Leak_") else errors).append(f"{path}: {kind}: {frames[:400]}")
        else:
            others += 1
    return errors, ours, others


def main():
    kind, pattern = sys.argv[1], sys.argv[2]
    paths = sorted(glob.glob(pattern))
    errors, ours, others = (asan if kind == "asan" else valgrind)(paths)
    print(f"{kind}: {len(paths)} log files, {len(errors)} errors, {len(ours)} leaks from our code, "
          f"{others} reports outside our code (Python/NumPy) ignored")
    for line in errors + ours:
        print(line)
    return 1 if errors or ours else 0


if __name__ == "__main__":
    sys.exit(main())
