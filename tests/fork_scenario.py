"""One fork scenario, run as a script by tests/test_fork.py (a file, so that
multiprocessing's spawn start method can import it in its children).

Environment: FORK_SPEC, FORK_OPTS (JSON options for open_backend), FORK_MODE
(os.fork, mp-fork, mp-spawn), FORK_REAL=1 when device addresses are real
memory (their ranges must never overlap across processes), FORK_CHILD_NEW
(ok: the child opens its own backend; refused: opening one must fail, the
parent holds the device; skip), FORK_LOG and FORK_FORBID: an emulation's call
log and the calls that release kernel objects, which the child must not make.

The documented semantics (README, "fork()"): inherited buffers stay usable
(shared memory the parent owns); the inherited backend refuses to allocate;
freeing or closing in the child only forgets; the module's own default and
spec backends are replaced by new ones in the child.
"""
import json
import multiprocessing as mp
import os

import numpy as np

import pynq_alloc

SPEC = os.environ["FORK_SPEC"]
OPTS = json.loads(os.environ.get("FORK_OPTS", "{}"))
MODE = os.environ.get("FORK_MODE", "os.fork")
REAL = os.environ.get("FORK_REAL") == "1"
CHILD_NEW = os.environ.get("FORK_CHILD_NEW", "ok")
LOG = os.environ.get("FORK_LOG")
FORBID = [w for w in os.environ.get("FORK_FORBID", "").split(",") if w]
N = 4096  # u4 elements: 16 KiB
G = {}  # the parent's objects, inherited by forked children


def span(buf):
    return [buf.device_address, buf.device_address + buf.nbytes]


def overlap(a, b):
    return a[0] < b[1] and b[0] < a[1]


def log_lines():
    if not LOG or not os.path.exists(LOG):
        return []
    with open(LOG) as f:
        return f.read().splitlines()


def own_buffers(out):
    """a backend of the child's own (and the module's shared one for SPEC)"""
    try:
        nb = pynq_alloc.open_backend(SPEC, **OPTS)
    except Exception as exc:  # refused: reported to the parent
        out["new"] = f"{type(exc).__name__}: {exc}"
        return []
    y = nb.allocate(N, "u4")
    z = pynq_alloc.allocate(N, "u4", target=SPEC)
    out["zero"] = not y.any() and not z.any()
    y[:] = 0x22222222
    z[:] = 0x22222222
    y.flush()
    z.flush()
    out["new"] = [span(y), span(z)]
    return [y, z]


def child_forked(conn):
    """in a forked child: everything in G was inherited"""
    x, be = G["x"], G["be"]
    out = {"data": bool((x == 0x11111111).all() and (G["keep"] == 0x33333333).all()),
           "addr": x.device_address == G["x_addr"]}
    try:
        be.allocate(16, "u4")
        out["refused"] = "allocated"
    except RuntimeError as exc:
        out["refused"] = str(exc)
    x.flush()  # the parent's sync interface works on inherited buffers
    x.invalidate()
    out["after_sync"] = bool((x == 0x11111111).all())
    x.freebuffer()  # forgets: the parent's block is not returned anywhere
    del G["keep"]
    be.close()
    mine = own_buffers(out) if CHILD_NEW != "skip" else []
    conn.send(out)
    conn.recv()  # the parent allocates meanwhile
    conn.send(all(bool((b == 0x22222222).all()) for b in mine))
    conn.close()


def child_spawned(conn, data):
    """in a spawned child: nothing inherited; a Buffer argument arrives as a copy"""
    out = {"type": type(data).__name__, "data": bool((data == 0x11111111).all())}
    data[:] = 0  # a copy: the parent's buffer does not change
    mine = own_buffers(out) if CHILD_NEW != "skip" else []
    conn.send(out)
    conn.recv()
    conn.send(all(bool((b == 0x22222222).all()) for b in mine))
    conn.close()


def main():
    be = pynq_alloc.open_backend(SPEC, **OPTS)
    x = be.allocate(N, "u4")
    keep = be.allocate(N, "u4")
    x[:] = 0x11111111
    keep[:] = 0x33333333
    x.flush()
    keep.flush()
    if CHILD_NEW == "ok":
        pynq_alloc.allocate(4, "u4", target=SPEC)  # the shared SPEC backend exists before fork
    G.update(be=be, x=x, keep=keep, x_addr=x.device_address)
    info0 = be.info()
    nlog = len(log_lines())

    pc, cc = mp.Pipe()
    if MODE == "os.fork":
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child_forked(cc)
                code = 0
            finally:
                os._exit(code)
        proc = None
    else:
        ctx = mp.get_context("fork" if MODE == "mp-fork" else "spawn")
        target, args = (child_forked, (cc,)) if MODE == "mp-fork" else (child_spawned, (cc, x))
        proc = ctx.Process(target=target, args=args)
        proc.start()
    out = pc.recv()

    # while the child holds buffers of its own, the parent allocates
    n = be.allocate(N, "u4")
    n[:] = 0x44444444
    n.flush()
    if CHILD_NEW == "ok":
        assert isinstance(out["new"], list), out["new"]
        assert out["zero"], "the child's new buffers were not zeroed"
        if REAL:  # real memory: never the same bytes in two processes
            for theirs in out["new"]:
                for ours in (span(n), span(x), span(keep)):
                    assert not overlap(theirs, ours), (theirs, ours)
    elif CHILD_NEW == "refused":
        assert "busy" in out["new"] or "in use" in out["new"], out["new"]
    pc.send("go")
    assert pc.recv(), "the child's own buffers changed under it"
    if proc is None:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
    else:
        proc.join()
        assert proc.exitcode == 0, proc.exitcode

    if MODE != "mp-spawn":
        assert out["data"] and out["addr"] and out["after_sync"], out
        assert "fork()" in out["refused"] and "open_backend" in out["refused"], out["refused"]
    else:
        assert out["type"] == "ndarray" and out["data"], out
    for line in log_lines()[nlog:]:
        assert line.split()[0] not in FORBID, f"the child released a parent's object: {line}"

    # the parent's data and accounting are as they were
    assert (x == 0x11111111).all() and (keep == 0x33333333).all() and (n == 0x44444444).all()
    assert x.device_address == G["x_addr"]
    info = be.info()
    assert info["buffers"] == info0["buffers"] + 1, (info, info0)
    del n
    info = be.info()
    assert (info["used"], info["buffers"]) == (info0["used"], info0["buffers"]), (info, info0)
    x.freebuffer()
    del keep, G["keep"]
    assert be.info()["buffers"] == info0["buffers"] - 2
    y = be.allocate(N, "u4")  # the parent still allocates, zeroed
    assert not y.any()
    print("ok")


if __name__ == "__main__":
    main()
