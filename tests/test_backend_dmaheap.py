"""The dmaheap backend against an emulated DMA-BUF heap (tests/emul/dmaheap_shim.c),
an LD_PRELOAD shim built here with the C compiler. Regular files under
$PYNQ_ALLOC_SYSROOT/dev/dma_heap/ stand in for heap nodes; the shim answers
DMA_HEAP_IOCTL_ALLOC on them with hugetlb memfds (real memory, so
/proc/self/pagemap gives true physical addresses and the backend's contiguity
check really runs) and logs DMA_BUF_IOCTL_SYNC calls. The backend does not
know. Emulated runs happen in subprocesses (LD_PRELOAD), each printing one
RESULT line of JSON for the test to check; most assertions run in the child.

Checks that need no emulation (spec errors, probe reasons, a regular file that
is not a heap node) run in this process."""
import errno
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import pynq_alloc
from emul_build import build_shared

HERE = Path(__file__).resolve().parent
SHIM_SOURCE = HERE / "emul" / "dmaheap_shim.c"
PKG_ROOT = str(Path(pynq_alloc.__file__).resolve().parent.parent)
KB, MB = 1 << 10, 1 << 20
SNOOPED = platform.machine() in ("x86_64", "AMD64", "i386", "i686")
START_WRITE, END_WRITE, START_READ, END_READ = 2, 6, 1, 5
CAP_SYS_ADMIN = 21
PR_CAPBSET_DROP = 24


def cap_sys_admin():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return os.geteuid() == 0


def free_huge_pages():
    try:
        return int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read_text())
    except OSError:
        return 0


@pytest.fixture(scope="session")
def shim(tmp_path_factory):
    out = tmp_path_factory.mktemp("dmaheap_shim") / "dmaheap_shim.so"
    return build_shared(out, SHIM_SOURCE, "-ldl", "-lpthread", what="the DMA-BUF heap emulation")


def skip_or_fail(why):
    if os.environ.get("PYNQ_ALLOC_REQUIRE_HUGEPAGE"):
        pytest.fail(f"dmaheap emulation required but not possible: {why}")
    pytest.skip(why)


@pytest.fixture
def huge_pages():
    """The emulated heap's memory: hugetlb pages (.ci/run reserves 64)."""
    if free_huge_pages() < 16:
        skip_or_fail("the emulated heap needs 16 free 2 MiB huge pages "
                     "(echo 64 > /proc/sys/vm/nr_hugepages)")


@pytest.fixture
def real_memory(huge_pages):
    """What truthful emulation needs: free huge pages, CAP_SYS_ADMIN for pagemap."""
    if not cap_sys_admin():
        skip_or_fail("physical addresses from /proc/self/pagemap need root / CAP_SYS_ADMIN")


# Helpers for the child processes: pagemap, fd/mapping counts, the shim's log.
PRELUDE = r'''
import ctypes, errno, json, os, struct, sys
import numpy as np
import pynq_alloc

PAGE = 4096
LOG = os.environ["DMAHEAP_SHIM_LOG"]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def phys(va):
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(va // PAGE * 8)
        e = struct.unpack("<Q", f.read(8))[0]
    assert e >> 63, "page not present"
    return (e & ((1 << 55) - 1)) * PAGE + va % PAGE


def check_contiguous(buf):
    """device address == pagemap's physical address for every page and the last byte"""
    va, pa = buf.virtual_address, buf.device_address
    for off in list(range(0, buf.nbytes, PAGE)) + [buf.nbytes - 1]:
        assert phys(va + off) == pa + off, (hex(va + off), hex(phys(va + off)), hex(pa + off))


def counts():
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    # Anonymous mappings are left out: the C allocator (ASan's in the
    # sanitizer lane) maps its own regions lazily, whatever the backend does.
    return {"fds": len(os.listdir("/proc/self/fd")),
            "maps": sum(len(m.split()) >= 6 for m in maps),
            "dmabuf_maps": sum("dmaheap-" in m for m in maps)}


def log():
    rows = []
    if not os.path.exists(LOG):
        return rows
    with open(LOG) as f:
        text = f.read()
    for line in text.splitlines():
        w = line.split()
        row = {"ev": w[0], "text": line}
        for x in w[1:]:
            if "=" in x:
                k, v = x.split("=", 1)
                row[k] = int(v, 0) if v[:1].isdigit() else v
        rows.append(row)
    return rows


def events(ev, since=0):
    return [r for r in log()[since:] if r["ev"] == ev]


def dmabuf_of(buf):
    """The shim's alloc record of the dma-buf that holds buf, with the mapping's address."""
    va = buf.virtual_address
    for m in reversed(events("mmap")):
        if m["addr"] <= va < m["addr"] + m["len"]:
            alloc = [a for a in events("alloc") if a["buf"] == m["buf"]][-1]
            return dict(alloc, addr=m["addr"], maplen=m["len"])
    raise AssertionError(f"0x{va:x} is in no dma-buf the heap handed out")


def syncs(since):
    return [(r["buf"], r["fd"], r["flags"]) for r in events("sync", since)]


def peer_view(rec):
    """A second CPU mapping of the dma-buf through its fd, as the device's stand-in."""
    p = libc.mmap(None, rec["maplen"], 3, 0x8001, rec["fd"], 0)  # RW, SHARED|POPULATE
    assert p is not None and p != ctypes.c_void_p(-1).value, ctypes.get_errno()
    return p


def result(**kw):
    print("RESULT " + json.dumps(kw))
'''


class Emul:
    """A sysroot with /dev/dma_heap/<heaps> and the shim's environment."""

    def __init__(self, tmp_path, shim):
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.heapdir = self.root / "dev" / "dma_heap"
        self.log = tmp_path / "shim.log"
        self.shim = shim

    def heaps(self, *names):
        self.heapdir.mkdir(parents=True, exist_ok=True)
        for n in names:
            (self.heapdir / n).write_bytes(b"")
        return self

    def board(self):
        (self.root / "proc" / "device-tree").mkdir(parents=True, exist_ok=True)
        return self

    def env(self, **extra):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYNQ_ALLOC_", "DMAHEAP_SHIM_"))}
        e["PYTHONPATH"] = PKG_ROOT + os.pathsep + e.get("PYTHONPATH", "")
        e.update(PYNQ_ALLOC_SYSROOT=str(self.root), DMAHEAP_SHIM_LOG=str(self.log),
                 # after what is preloaded already (a sanitizer runtime must stay first)
                 LD_PRELOAD=":".join(filter(None, [os.environ.get("LD_PRELOAD"), self.shim])))
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def run(self, code, args=("-c",), preexec_fn=None, **env):
        self.log.unlink(missing_ok=True)
        cmd = [sys.executable, "-W", "always", *args]
        if args == ("-c",):
            cmd.append(PRELUDE + code)
        r = subprocess.run(cmd, env=self.env(**env), cwd=self.tmp, capture_output=True,
                           text=True, preexec_fn=preexec_fn)
        self.proc = r
        return r

    def result(self, code, **env):
        r = self.run(code, **env)
        assert r.returncode == 0, r.stderr
        rows = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
        assert rows, r.stdout
        return json.loads(rows[-1][len("RESULT "):])

    def lines(self):
        return self.log.read_text().splitlines() if self.log.exists() else []

    def released_everything(self):
        """every dma-buf the shim handed out was unmapped and closed; nothing refused"""
        lines = self.lines()
        allocs = {w.split("=")[1] for line in lines if line.startswith("alloc ")
                  for w in line.split() if w.startswith("buf=")}
        released = {w.split("=")[1] for line in lines if line.startswith("release ")
                    for w in line.split() if w.startswith("buf=")}
        assert allocs == released, (allocs - released, lines)
        assert not [line for line in lines if line.startswith("BAD")]
        opened = sum(line.startswith("open heap=") for line in lines)
        closed = sum(line.startswith("close heap=") for line in lines)
        assert opened == closed
        return len(allocs)


@pytest.fixture
def emul(tmp_path, shim):
    return Emul(tmp_path, shim)


# --------------------------------------------------------------------------------------
# allocation, addresses, data


def test_addresses_are_pagemap_physical_addresses_and_data_round_trips(emul, real_memory):
    emul.heaps("linux,cma", "system")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap", coherent=False)
out = []
for nbytes in (64, 4096, 100_000, 1 << 20, (2 << 20) - 4096, 2 << 20):
    buf = be.allocate(nbytes, "u1")
    check_contiguous(buf)
    assert not buf.any()
    rec = dmabuf_of(buf)
    off = buf.virtual_address - rec["addr"]
    peer = peer_view(rec)
    # the peer mapping is the same physical memory
    assert phys(peer + off) == buf.device_address
    data = (np.arange(nbytes) * 7 % 251).astype("u1")
    buf[:] = data
    buf.flush()
    assert ctypes.string_at(peer + off, nbytes) == data.tobytes()
    back = (np.arange(nbytes) * 3 % 253).astype("u1")
    ctypes.memmove(peer + off, back.tobytes(), nbytes)
    buf.invalidate()
    assert (buf == back).all()
    v = buf[nbytes // 3:]
    assert v.device_address == phys(v.virtual_address)
    libc.munmap(peer, rec["maplen"])
    out.append([nbytes, rec["heap"], rec["len"], buf.device_address % PAGE])
    del buf, v
be.close()
result(out=out)
''')
    heaps = {h for _, h, _, _ in res["out"]}
    assert heaps == {"linux,cma"}
    lens = {n: ln for n, _, ln, _ in res["out"]}
    # small requests come from the 1 MiB pool, large ones get a dma-buf of their size
    assert lens[64] == lens[4096] == MB
    assert lens[100_000] == 100_000 + (-100_000 % 4096)
    assert lens[2 << 20] == 2 << 20
    assert all(a == 0 for *_, a in res["out"])  # default align is a page
    assert emul.released_everything() >= 4


def test_alloc_ioctl_arguments_are_the_kernels(emul, real_memory):
    emul.heaps("linux,cma")
    emul.result(r'''
be = pynq_alloc.open_backend("dmaheap", pool_chunk=0)
b = be.allocate(5000, "u1")
be.close()
result()
''')
    allocs = [line.split() for line in emul.lines() if line.startswith("alloc ")]
    # the open() check (one page), then the 5000-byte buffer rounded to pages
    fields = [dict(w.split("=", 1) for w in a[1:]) for a in allocs]
    assert [f["len"] for f in fields] == ["4096", "8192"]
    for f in fields:
        assert int(f["fd_flags"], 0) == os.O_RDWR | os.O_CLOEXEC
        assert int(f["heap_flags"], 0) == 0
    emul.released_everything()


def test_alignment_beyond_a_page(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap")
out = []
for align in (1 << 14, 1 << 16, 1 << 20):
    buf = be.allocate(3000, "u1", align=align)
    check_contiguous(buf)
    out.append(buf.device_address % align)
    buf[:] = 9
    assert (buf == 9).all()
    del buf
be.close()
result(out=out)
''')
    assert res["out"] == [0, 0, 0]
    emul.released_everything()


# --------------------------------------------------------------------------------------
# pooling


def test_small_buffers_share_one_pooled_dmabuf(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap")
bufs = [be.allocate(100, "u1", align=64) for _ in range(40)]
recs = [dmabuf_of(b) for b in bufs]
spans = sorted((b.device_address, b.device_address + b.nbytes) for b in bufs)
assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "overlap"
for i, b in enumerate(bufs):
    check_contiguous(b)
    b[:] = i
for i, b in enumerate(bufs):
    assert (b == i).all()
big = be.allocate(256 << 10, "u1")
big_rec = dmabuf_of(big)
info = be.info()
result(pools=sorted({r["buf"] for r in recs}),
       distinct=len({b.device_address for b in bufs}), big=big_rec["buf"],
       big_len=big_rec["len"], buffers=info["buffers"],
       allocs=len(events("alloc")))
''')
    assert len(res["pools"]) == 1          # all 40 in one dma-buf
    assert res["distinct"] == 40
    assert res["big"] not in res["pools"]  # above pool_max: a dma-buf of its own
    assert res["big_len"] == 256 << 10
    assert res["allocs"] == 2 and res["buffers"] == 41
    emul.released_everything()


def test_pools_grow_and_empty_ones_are_released(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap", pool_chunk=64 << 10, pool_max=16 << 10)
# 64 KiB pools of 16 KiB blocks: four per pool, so 10 blocks need 3 pools
bufs = [be.allocate(16 << 10, "u1") for _ in range(10)]
pools = sorted({dmabuf_of(b)["buf"] for b in bufs})
live_after_alloc = len(events("alloc")) - len(events("release"))
del bufs
# one empty pool is kept for the next request, the others are released
live_after_free = len(events("alloc")) - len(events("release"))
again = be.allocate(100, "u1")
reused = dmabuf_of(again)["buf"] in pools
del again
be.close()
result(pools=len(pools), live_after_alloc=live_after_alloc,
       live_after_free=live_after_free, reused=reused)
''')
    assert res == {"pools": 3, "live_after_alloc": 3, "live_after_free": 1, "reused": True}
    emul.released_everything()


def test_pooling_can_be_turned_off(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap", pool_chunk=0)
bufs = [be.allocate(64, "u1") for _ in range(5)]
ids = {dmabuf_of(b)["buf"] for b in bufs}
lens = {dmabuf_of(b)["len"] for b in bufs}
del bufs
be.close()
# a pool smaller than the default pool_max: pool_max follows it
be = pynq_alloc.open_backend("dmaheap", pool_chunk=16384)
small = [dmabuf_of(be.allocate(n, "u1")) for n in (100, 16384, 16385)]
result(ids=len(ids), lens=sorted(lens), small=[r["len"] for r in small])
''')
    assert res == {"ids": 5, "lens": [4096], "small": [16384, 16384, 20480]}
    emul.released_everything()


# --------------------------------------------------------------------------------------
# sync


def test_flush_and_invalidate_bracket_the_buffers_own_dmabuf(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap", coherent=False)
a = be.allocate(300 << 10, "u1")
b = be.allocate(300 << 10, "u1")
small = be.allocate(256, "u1")
assert not a.coherent and not small.coherent
ra, rb, rs = dmabuf_of(a), dmabuf_of(b), dmabuf_of(small)
seen = {}
for name, buf in (("a", a), ("b", b), ("small", small)):
    mark = len(log())
    buf[:] = 1
    buf.flush()
    seen[name + "_flush"] = syncs(mark)
    mark = len(log())
    buf.invalidate()
    seen[name + "_invalidate"] = syncs(mark)
mark = len(log())
b[1000:2000].flush()          # a part still syncs b's dma-buf, and only b's
seen["b_part"] = syncs(mark)
result(seen=seen, fds={"a": [ra["buf"], ra["fd"]], "b": [rb["buf"], rb["fd"]],
                       "small": [rs["buf"], rs["fd"]]})
''')
    seen, fds = res["seen"], res["fds"]
    for name in ("a", "b", "small"):
        buf_id, fd = fds[name]
        assert seen[name + "_flush"] == [[buf_id, fd, START_WRITE], [buf_id, fd, END_WRITE]]
        assert seen[name + "_invalidate"] == [[buf_id, fd, START_READ], [buf_id, fd, END_READ]]
    assert fds["a"] != fds["b"] and fds["small"] not in (fds["a"], fds["b"])
    assert seen["b_part"] == [[*fds["b"], START_WRITE], [*fds["b"], END_WRITE]]


def test_default_coherency_follows_the_cpu(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap")
buf = be.allocate(1000, "u4")
mark = len(log())
buf[:] = 3
buf.flush()
buf.invalidate()
result(coherent=buf.coherent, backend=be.coherent, info=be.info()["coherent"], syncs=syncs(mark))
''')
    if SNOOPED:
        # x86 DMA snoops the caches: nothing to do, and nothing is asked of the kernel
        assert res == {"coherent": True, "backend": True, "info": True, "syncs": []}
    else:
        assert not res["coherent"] and [s[2] for s in res["syncs"]] == [
            START_WRITE, END_WRITE, START_READ, END_READ]


def test_cacheable_false_uses_a_write_combine_heap(emul, real_memory):
    emul.heaps("linux,cma", "cma-uncached", "system")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap", coherent=False)
wc = be.allocate(5000, "u1", cacheable=False)
cached = be.allocate(5000, "u1", cacheable=True)
dflt = be.allocate(5000, "u1")
check_contiguous(wc)
mark = len(log())
wc[:] = 4
wc.flush()
wc.invalidate()
result(wc_heap=dmabuf_of(wc)["heap"], wc_coherent=wc.coherent, syncs=syncs(mark),
       cached_heap=dmabuf_of(cached)["heap"], cached_coherent=cached.coherent,
       dflt=[dmabuf_of(dflt)["heap"], dflt.coherent, be.coherent, be.info()["coherent"]])
''')
    # cacheable=None is PYNQ's non-cacheable: the write-combine heap, coherent
    assert res == {"wc_heap": "cma-uncached", "wc_coherent": True, "syncs": [],
                   "cached_heap": "linux,cma", "cached_coherent": False,
                   "dflt": ["cma-uncached", True, True, True]}
    emul.released_everything()


def test_cacheable_false_without_a_write_combine_heap(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap", coherent=False)
try:
    be.allocate(100, cacheable=False)
    refused = None
except NotImplementedError as e:
    refused = str(e)
snooped = pynq_alloc.open_backend("dmaheap", coherent=True).allocate(100, cacheable=False)
dflt = be.allocate(100)
result(refused=refused, snooped=[snooped.coherent, dmabuf_of(snooped)["heap"]],
       dflt=[dflt.coherent, dmabuf_of(dflt)["heap"], be.coherent, be.info()["coherent"]])
''')
    # cacheable=None where no heap maps write-combine: cached memory, and it says so
    assert res["dflt"] == [False, "linux,cma", False, False]
    # a non-snooping device and no write-combine heap: say so rather than hand out cached memory
    assert "cacheable=False" in res["refused"] and "write-combine" in res["refused"]
    assert "uncached_heap" in res["refused"]
    # a snooping device (coherent=True, x86's default): cached memory is coherent
    assert res["snooped"] == [True, "linux,cma"]


def test_write_combine_heap_refuses_cacheable_true(emul, real_memory):
    emul.heaps("cma-uncached")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap")
buf = be.allocate(100)
try:
    be.allocate(100, cacheable=True)
    msg = None
except NotImplementedError as e:
    msg = str(e)
result(coherent=buf.coherent, heap=dmabuf_of(buf)["heap"], msg=msg)
''')
    assert res["coherent"] and res["heap"] == "cma-uncached"
    assert "write-combine" in res["msg"] and "cacheable=True" in res["msg"]


# --------------------------------------------------------------------------------------
# heap choice and specs


@pytest.mark.parametrize("heaps, chosen", [
    (["system", "linux,cma", "reserved", "default_cma_region"], "default_cma_region"),
    (["default-pool", "linux,cma", "reserved", "system"], "reserved"),
    (["default-pool", "linux,cma", "system"], "linux,cma"),
    (["my-pool", "default-pool", "system"], "default-pool"),
    # device-tree pools (named after their node), in name order
    (["system", "zz-pool", "fpga-pool@38000000"], "fpga-pool@38000000"),
    # non-contiguous or write-combine heaps are not the default
    (["system", "system-uncached", "system_cc_shared", "cma-uncached", "qcom,system",
      "video"], "video"),
    # a write-combine heap when it's all there is
    (["system", "cma-uncached"], "cma-uncached"),
])
def test_heap_selection_order(emul, real_memory, heaps, chosen):
    emul.heaps(*heaps)
    res = emul.result(r'''
rows = {r[0]: r for r in pynq_alloc._pynq_alloc._probe()}
be = pynq_alloc.open_backend("dmaheap")
try:
    buf = be.allocate(100, cacheable=True)  # the main heap (cacheable=None prefers a wc one)
except NotImplementedError:
    buf = be.allocate(100)  # the main heap is write-combine: all there is
result(heap=dmabuf_of(buf)["heap"], probe=rows["dmaheap"][3], usable=rows["dmaheap"][1])
''')
    assert res["heap"] == chosen
    assert res["usable"] and res["probe"].startswith(f"usable: heap '{chosen}'")
    opened = [line.split()[1] for line in emul.lines() if line.startswith("open heap=")]
    assert opened[0] == f"heap={chosen}"


@pytest.mark.parametrize("spec", ["dmaheap:fpga-pool", "dmaheap:/dev/dma_heap/fpga-pool"])
def test_spec_names_a_heap(emul, real_memory, spec):
    emul.heaps("linux,cma", "fpga-pool", "system")
    res = emul.result(f'''
be = pynq_alloc.open_backend({spec!r})
a = be.allocate(100)
b = pynq_alloc.allocate(100, target={spec!r})
result(spec=be.spec, a=dmabuf_of(a)["heap"], b=dmabuf_of(b)["heap"])
''')
    assert res == {"spec": spec, "a": "fpga-pool", "b": "fpga-pool"}


@pytest.mark.parametrize("spec", ["dmaheap:system", "dmaheap:system-uncached",
                                  "dmaheap:system_cc_shared", "dmaheap:/dev/dma_heap/system"])
def test_system_heaps_are_refused(tmp_path, monkeypatch, spec):
    heaps = tmp_path / "dev" / "dma_heap"
    heaps.mkdir(parents=True)
    for n in ("system", "system-uncached", "system_cc_shared", "linux,cma"):
        (heaps / n).write_bytes(b"")
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(ValueError, match="not physically contiguous") as e:
        pynq_alloc.open_backend(spec)
    assert "dmaheap:NAME" in str(e.value) and "cma=" in str(e.value)


def test_only_the_system_heap(tmp_path, monkeypatch):
    (tmp_path / "dev" / "dma_heap").mkdir(parents=True)
    (tmp_path / "dev" / "dma_heap" / "system").write_bytes(b"")
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has only system, which is not physically "
                                                "contiguous") as e:
        pynq_alloc.open_backend("dmaheap")
    assert "cma=256M" in str(e.value) and "shared-dma-pool" in str(e.value)


def test_missing_heap_says_what_is_there(tmp_path, monkeypatch):
    (tmp_path / "dev" / "dma_heap").mkdir(parents=True)
    for n in ("linux,cma", "system"):
        (tmp_path / "dev" / "dma_heap" / n).write_bytes(b"")
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no DMA-BUF heap 'fpga'") as e:
        pynq_alloc.open_backend("dmaheap:fpga")
    assert e.value.errno == errno.ENOENT
    assert "heaps there: linux,cma, system" in str(e.value)
    assert "shared-dma-pool" in str(e.value)


def test_no_dma_heap_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="CONFIG_DMABUF_HEAPS") as e:
        pynq_alloc.open_backend("dmaheap")
    assert "Debian 12" in str(e.value)


@pytest.mark.parametrize("spec", ["dmaheap:a/b", "dmaheap:..", "dmaheap:/dev/dma_heap/"])
def test_bad_heap_names(tmp_path, monkeypatch, spec):
    (tmp_path / "dev" / "dma_heap").mkdir(parents=True)
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(ValueError, match="does not name a heap"):
        pynq_alloc.open_backend(spec)


@pytest.mark.parametrize("options, text", [
    ({"bogus": 1}, "has no option 'bogus'"),
    ({"pool_chunk": 5000}, "not a multiple of the 4096-byte page"),
    ({"pool_chunk": 65536, "pool_max": 1 << 20}, "pool_max=1048576 must be between"),
    ({"coherent": "maybe"}, "not a boolean"),
])
def test_option_errors(tmp_path, monkeypatch, options, text):
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(ValueError, match=text):
        pynq_alloc.open_backend("dmaheap", **options)


def test_a_regular_file_is_not_a_heap_node(tmp_path, monkeypatch):
    """Without the emulation the backend meets the plain file and says so."""
    (tmp_path / "dev" / "dma_heap").mkdir(parents=True)
    (tmp_path / "dev" / "dma_heap" / "linux,cma").write_bytes(b"")
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(OSError, match="not a DMA-BUF heap node") as e:
        pynq_alloc.open_backend("dmaheap")
    assert e.value.errno == errno.ENOTTY


# --------------------------------------------------------------------------------------
# probing and selection


def probe_row(tmp_path, monkeypatch):
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    return {r[0]: r for r in pynq_alloc._pynq_alloc._probe()}["dmaheap"]


def test_probe_reasons(tmp_path, monkeypatch):
    _, usable, board, why = probe_row(tmp_path, monkeypatch)
    assert board and not usable
    assert "no " in why and "/dev/dma_heap" in why and "CONFIG_DMABUF_HEAPS" in why
    assert "Debian 12" in why
    heaps = tmp_path / "dev" / "dma_heap"
    heaps.mkdir(parents=True)
    _, usable, _, why = probe_row(tmp_path, monkeypatch)
    assert not usable and "has no heaps" in why and "cma=256M" in why
    (heaps / "system").write_bytes(b"")
    _, usable, _, why = probe_row(tmp_path, monkeypatch)
    assert not usable and "only system, which is not physically contiguous" in why
    assert "cma=256M" in why
    (heaps / "linux,cma").write_bytes(b"")
    _, usable, _, why = probe_row(tmp_path, monkeypatch)
    if cap_sys_admin():
        assert usable and why.startswith("usable: heap 'linux,cma'")
    else:
        assert not usable and "CAP_SYS_ADMIN" in why


def test_probe_allocates_nothing(emul):
    emul.heaps("linux,cma")
    res = emul.result(r'''
before = counts()
rows = [r for r in pynq_alloc._pynq_alloc._probe() if r[0] == "dmaheap"]
result(before=before, after=counts())
''')
    assert res["before"] == res["after"]
    assert not [line for line in emul.lines() if not line.startswith(("open", "close"))]
    assert not any(line.startswith("open heap") for line in emul.lines())


@pytest.mark.parametrize("spec, heap", [("dmaheap", "linux,cma"),
                                        ("dmaheap:fpga-pool", "fpga-pool")])
def test_env_variable_selects_dmaheap(emul, real_memory, spec, heap):
    emul.heaps("linux,cma", "fpga-pool").board()
    res = emul.result("b = pynq_alloc.allocate(100); "
                      "result(spec=b.backend.spec, heap=dmabuf_of(b)['heap'])",
                      PYNQ_ALLOC_BACKEND=spec)
    assert res == {"spec": spec, "heap": heap}


def test_probing_picks_dmaheap_on_a_board(emul, real_memory):
    emul.heaps("system", "default-pool").board()
    res = emul.result(r'''
b = pynq_alloc.allocate(100)
check_contiguous(b)
result(name=b.backend.name, heap=dmabuf_of(b)["heap"])
''')
    assert res == {"name": "dmaheap", "heap": "default-pool"}
    assert "Warning" not in emul.proc.stderr


def test_board_with_only_the_system_heap_refuses(emul):
    emul.heaps("system").board()
    r = emul.run("pynq_alloc.allocate(4)")
    assert r.returncode != 0
    assert "no usable DMA memory backend on this board" in r.stderr
    assert "dmaheap: " in r.stderr and "only system, which is not physically contiguous" in r.stderr


def test_info_command_reports_dmaheap(emul, real_memory):
    emul.heaps("linux,cma")
    r = emul.run(None, args=("-m", "pynq_alloc", "info", "--json"))
    assert r.returncode == 0, r.stderr
    row = {x["backend"]: x for x in json.loads(r.stdout)}["dmaheap"]
    assert row["usable"] and row["reason"].startswith("usable: heap 'linux,cma'")
    assert row["coherent"] == SNOOPED and row["cache_line_size"] >= 32
    assert row["total"] >= MB and row["used"] == 0
    emul.released_everything()


# --------------------------------------------------------------------------------------
# failures: memory, privilege, contiguity; nothing leaks


def test_enomem_from_the_heap(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap")
keep = be.allocate(100)
before = counts()
os.environ["DMAHEAP_SHIM_FAIL"] = "ENOMEM"
msgs = []
for n in (1 << 20, 100_000):
    try:
        be.allocate(n, "u1")
    except MemoryError as e:
        msgs.append(str(e))
small = be.allocate(100)   # still served by the existing pool
after = counts()
del os.environ["DMAHEAP_SHIM_FAIL"]
try:
    os.environ["DMAHEAP_SHIM_FAIL"] = "ENOMEM"
    pynq_alloc.open_backend("dmaheap")
    at_open = None
except MemoryError as e:
    at_open = str(e)
result(msgs=msgs, at_open=at_open, before=before, after=after)
''')
    assert len(res["msgs"]) == 2
    for m in res["msgs"] + [res["at_open"]]:
        assert "DMA_HEAP_IOCTL_ALLOC" in m and "'linux,cma'" in m
        assert "cma=256M" in m and "free other buffers" in m
    assert res["before"] == res["after"]


def test_without_cap_sys_admin_the_error_says_so(emul, huge_pages):
    emul.heaps("linux,cma")

    def drop_cap_sys_admin():
        if not cap_sys_admin():
            return  # not root: the child lacks it already
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        # out of the bounding set, so the exec'd interpreter never gets it back
        if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    res = emul.result(r'''
before = counts()
rows = {r[0]: r for r in pynq_alloc._pynq_alloc._probe()}
try:
    pynq_alloc.open_backend("dmaheap")
    err = None
except PermissionError as e:
    err = str(e)
result(err=err, probe=rows["dmaheap"][1:], before=before, after=counts(),
       cap=[ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("CapEff")][0])
''', preexec_fn=drop_cap_sys_admin)
    assert not int(res["cap"], 16) >> CAP_SYS_ADMIN & 1
    assert res["err"] is not None and "CAP_SYS_ADMIN" in res["err"]
    assert "pagemap gives no page frame numbers" in res["err"] and "run as root" in res["err"]
    usable, _, why = res["probe"]
    assert not usable and "CAP_SYS_ADMIN" in why
    assert res["before"] == res["after"]
    emul.released_everything()


def test_discontiguous_memory_is_refused(emul, real_memory):
    # 'scattered' hands out 4 KiB pages that are not physically adjacent (the
    # shim checks), as a misconfigured or vendor heap might
    emul.heaps("linux,cma", "scattered")
    res = emul.result(r'''
before = counts()
try:
    pynq_alloc.open_backend("dmaheap:scattered")
    at_open = None
except OSError as e:
    at_open = [e.errno, str(e)]
be = pynq_alloc.open_backend("dmaheap:scattered", pool_chunk=0)
one_page = be.allocate(64, "u1")       # a single page is contiguous: fine
check_contiguous(one_page)
try:
    be.allocate(256 << 10, "u1")
    big = None
except OSError as e:
    big = [e.errno, str(e)]
del one_page
be.close()
result(at_open=at_open, big=big, before=before, after=counts())
''', DMAHEAP_SHIM_SCATTER="scattered")
    for errno_, msg in (res["at_open"], res["big"]):
        assert errno_ == errno.EIO
        assert "heap 'scattered'" in msg and "not physically contiguous" in msg
        assert "dmaheap:NAME" in msg
    assert res["before"] == res["after"]
    emul.released_everything()


def test_large_buffer_is_contiguous_or_refused(emul, real_memory):
    """Above one huge page the emulated heap gives whatever huge pages the kernel
    has: the backend either verifies them contiguous or refuses them."""
    emul.heaps("linux,cma")
    res = emul.result(r'''
before = counts()
be = pynq_alloc.open_backend("dmaheap")
outcome = []
for _ in range(4):
    try:
        buf = be.allocate(4 << 20, "u1")
    except OSError as e:
        assert "not physically contiguous" in str(e), e
        outcome.append("refused")
        continue
    check_contiguous(buf)
    buf.fill(1)
    assert buf.min() == buf.max() == 1  # no 4 MiB temporary: glibc would map one
    outcome.append("contiguous")
    del buf
be.close()
result(outcome=outcome, before=before, after=counts())
''')
    assert len(res["outcome"]) == 4
    assert res["before"] == res["after"]
    emul.released_everything()


def test_every_fd_and_mapping_is_released(emul, real_memory):
    emul.heaps("linux,cma", "cma-uncached")
    res = emul.result(r'''
def workload():
    be = pynq_alloc.open_backend("dmaheap", coherent=False)
    bufs = [be.allocate(n, "u1") for n in (64, 1000, 70_000, 1 << 20, 2 << 20)]
    bufs += [be.allocate(200, "u1", cacheable=False) for _ in range(3)]
    bufs += [be.allocate(300_000, "u1", cacheable=False)]
    bufs += [be.allocate(100, "u1", align=1 << 16)]
    for b in bufs:
        b[:] = 5
        b.flush()
        b.invalidate()
    mid = counts()
    os.environ["DMAHEAP_SHIM_FAIL"] = "ENOMEM"
    for n in (64 << 10, 2 << 20):
        try:
            be.allocate(n, "u1", cacheable=False)
        except MemoryError:
            pass
    del os.environ["DMAHEAP_SHIM_FAIL"]
    del bufs[::2]
    be.close()     # with buffers alive: the backend closes when the last goes
    del bufs
    return mid

workload()         # warm up whatever Python itself maps on first use
before = counts()
mid = workload()
result(before=before, mid=mid, after=counts())
''')
    before, mid, after = res["before"], res["mid"], res["after"]
    assert mid["fds"] > before["fds"] and mid["dmabuf_maps"] > 0
    assert after == before
    assert after["dmabuf_maps"] == 0
    emul.released_everything()


# --------------------------------------------------------------------------------------
# address_bits: the heap's memory lies where the kernel put it: checked, never handed out


def test_address_bits_checks_heap_memory(emul, real_memory):
    emul.heaps("linux,cma")
    res = emul.result(r'''
be = pynq_alloc.open_backend("dmaheap")
try:
    be.allocate(100, address_bits=12)
    msg = None
except MemoryError as e:
    msg = str(e)
ok = be.allocate(100, address_bits=64)
info = be.info()
result(msg=msg, buffers=info["buffers"], ok=ok.device_address > 0,
       range=[info["lowest_address"], info["highest_address"]])
''')
    assert res["msg"] is not None and "dmaheap backend got 400 bytes" in res["msg"]
    assert "above the limit 0xfff" in res["msg"] and "shared-dma-pool" in res["msg"]
    assert res["buffers"] == 1 and res["ok"]
    assert res["range"] == [None, None]  # the kernel decides, per allocation
    emul.released_everything()
