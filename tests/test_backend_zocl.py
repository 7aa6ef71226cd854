"""The zocl backend, run against an emulated zocl render node.

tests/emul/zocl_shim.c (compiled here) is LD_PRELOADed into a fresh interpreter:
it turns $PYNQ_ALLOC_SYSROOT/dev/dri/renderD128, a regular file, into a zocl DRM
node that answers the real ioctl numbers with memfd-backed buffer objects at
made-up physical addresses, logs every request, and lets the test read and write
memory the way the device would (by physical address). The backend does not know.
"""
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

import pynq_alloc
from emul_build import build_shared

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_SRC = os.path.join(HERE, "emul", "zocl_shim.c")
# where the pynq_alloc under test lives, for the child interpreters (cwd is a temp dir)
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pynq_alloc.__file__)))
LINE = 64
CACHEABLE = 1 << 24  # XCL_BO_FLAGS_CACHEABLE
CHUNK = 1 << 20  # default pool BO size
TO_DEVICE, FROM_DEVICE = 0, 1

PRELUDE = """\
import ctypes, json, os
import numpy as np
import pynq_alloc as pa
_shim = ctypes.CDLL(None)
_shim.zocl_shim_device_rw.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t,
                                      ctypes.c_int]
def dev_read(addr, n):
    b = ctypes.create_string_buffer(n)
    assert _shim.zocl_shim_device_rw(addr, b, n, 0) == 0, hex(addr)
    return b.raw
def dev_write(addr, data):
    b = ctypes.create_string_buffer(bytes(data), len(data))
    assert _shim.zocl_shim_device_rw(addr, b, len(data), 1) == 0, hex(addr)
def live():
    return _shim.zocl_shim_live()
def emit(**kw):
    print(json.dumps(kw))
"""


def expected(lo, hi):
    """[lo, hi) rounded out to cache lines, as (offset, size)."""
    start = lo // LINE * LINE
    return start, -(-hi // LINE) * LINE - start


@pytest.fixture(scope="session")
def shim(tmp_path_factory):
    out = tmp_path_factory.mktemp("zocl_shim") / "zocl_shim.so"
    return build_shared(out, SHIM_SRC, "-O2", "-ldl", what="the zocl emulation")


class Board:
    """A sysroot with one emulated zocl node, and a way to run code on it."""

    def __init__(self, tmp_path, shim):
        self.tmp = tmp_path
        self.shim = shim
        self.root = tmp_path / "root"
        (self.root / "dev" / "dri").mkdir(parents=True)
        self.node = self.root / "dev" / "dri" / "renderD128"
        self.node.touch()
        self.log = tmp_path / "zocl.log"

    def env(self, **env):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYNQ_ALLOC_", "ZOCL_SHIM_"))}
        # after what is preloaded already (a sanitizer runtime must stay first)
        e["LD_PRELOAD"] = ":".join(filter(None, [os.environ.get("LD_PRELOAD"), self.shim]))
        e["PYNQ_ALLOC_SYSROOT"] = str(self.root)
        e["ZOCL_SHIM_LOG"] = str(self.log)
        e["PYTHONPATH"] = os.pathsep.join(p for p in (PKG_PARENT, e.get("PYTHONPATH")) if p)
        e.update({k: str(v) for k, v in env.items()})
        return e

    def run(self, code, *, args=None, check=True, **env):
        argv = args if args is not None else ["-c", PRELUDE + textwrap.dedent(code)]
        r = subprocess.run([sys.executable, "-W", "always", *argv], env=self.env(**env),
                           cwd=self.tmp, capture_output=True, text=True)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def out(self, code, **env):
        """Runs code; returns what its last emit() printed."""
        r = self.run(code, **env)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def events(self, op=None):
        """The shim's log as dicts: {'op': 'SYNC', 'handle': 1, 'dir': 0, ...}."""
        rows = []
        if not self.log.exists():
            return rows
        for line in self.log.read_text().splitlines():
            kind, *fields = line.split()
            row = {"op": kind}
            for f in fields:
                if "=" in f:
                    k, v = f.split("=", 1)
                    try:
                        row[k] = int(v, 0)
                    except ValueError:
                        row[k] = v
                else:
                    row["error"] = f
            rows.append(row)
        return [r for r in rows if op is None or r["op"] == op]

    def syncs(self):
        return [(e["handle"], e["dir"], e["offset"], e["size"]) for e in self.events("SYNC")]


@pytest.fixture
def board(tmp_path, shim):
    return Board(tmp_path, shim)


# ---------------------------------------------------------------- allocation


def test_addresses_come_from_info_bo_and_data_round_trips(board):
    got = board.out("""
        be = pa.open_backend("zocl")
        a = be.allocate(1000, "u4")           # pooled: shares a 1 MiB BO
        b = be.allocate((10, 10), "u1")       # pooled too
        big = be.allocate((1 << 20) + 5, "u1")  # its own BO
        a[:] = np.arange(1000, dtype="u4")
        b[:] = 7
        assert dev_read(a.device_address, a.nbytes) == a.tobytes()
        assert dev_read(b.device_address, b.nbytes) == b.tobytes()
        dev_write(big.device_address + 4096, range(256))
        assert bytes(big[4096:4352]) == bytes(range(256))
        dev_write(a.device_address + 40, np.array([0xDEADBEEF], "u4").tobytes())
        assert a[10] == 0xDEADBEEF
        assert a.physical_address == a.device_address
        emit(a=a.device_address, b=b.device_address, big=big.device_address,
             coherent=[a.coherent, b.coherent, big.coherent], name=be.name)
    """)
    pool, own = board.events("CREATE")
    assert got["name"] == "zocl"
    assert (pool["size"], pool["flags"]) == (CHUNK, 0)
    assert (own["size"], own["flags"]) == ((1 << 20) + LINE, 0)  # the request, in whole lines
    assert got["a"] == pool["paddr"]
    assert got["big"] == own["paddr"]
    assert pool["paddr"] < got["b"] < pool["paddr"] + CHUNK and got["b"] % LINE == 0
    assert got["b"] >= got["a"] + 4000 or got["b"] + 100 <= got["a"]
    assert got["coherent"] == [True, True, True]  # PYNQ's default: non-cacheable
    assert len(board.events("MMAP")) == 2 and not board.events("UNKNOWN")


def test_aligned_requests(board):
    # BOs only page-aligned: a 64 KiB alignment needs a bigger BO and an offset into it
    got = board.out("""
        be = pa.open_backend("zocl")
        s = be.allocate(70000, "u1")
        x = be.allocate(100000, "u1", align=1 << 16)
        y = be.allocate(100, "u1", align=4096)
        x[:] = 3
        assert dev_read(x.device_address, x.nbytes) == x.tobytes()
        emit(x=x.device_address, y=y.device_address)
    """, ZOCL_SHIM_ALIGN=4096)
    assert got["x"] % (1 << 16) == 0 and got["y"] % 4096 == 0
    creates = board.events("CREATE")
    assert [c["size"] for c in creates] == [70016, 100032, 100032 + (1 << 16), CHUNK]
    assert creates[1]["paddr"] % (1 << 16) != 0  # misaligned, so given back at once:
    ops = [(e["op"], e.get("handle")) for e in board.events() if e["op"] in ("CREATE", "CLOSE")]
    assert ops[1:4] == [("CREATE", creates[1]["handle"]), ("CLOSE", creates[1]["handle"]),
                        ("CREATE", creates[2]["handle"])]
    assert creates[2]["paddr"] <= got["x"] < creates[2]["paddr"] + (1 << 16)


def test_info_accounting(board):
    got = board.out("""
        be = pa.open_backend("zocl")
        bufs = [be.allocate(1000, "u1"), be.allocate(200000, "u1")]
        emit(info=be.info())
    """)
    info = got["info"]
    assert info["name"] == "zocl" and info["buffers"] == 2
    # occupied: the pooled 1000 B at the default align=4096 takes a page of its
    # pool BO, the 200000 B BO whole pages; requested: the nbytes
    assert info["used"] == 4096 + 200704 and info["requested"] == 201000
    assert info["total"] >= CHUNK + 200704 and info["coherent"] is True
    assert info["cache_line_size"] == LINE


# ---------------------------------------------------------------- cacheability and sync


def test_cacheable_flag_and_exact_sync_ranges(board):
    got = board.out("""
        be = pa.open_backend("zocl", cacheable=True, pool_max=0)  # a BO per buffer: offset 0
        buf = be.allocate(1024, "u4")
        buf.flush(); buf.invalidate()
        buf[10:20].flush()
        buf[::2].invalidate()
        buf[600:200:-3].flush()
        m = be.allocate((64, 64), "u4")          # rows of 256 bytes
        m[10:12, 5:9].flush()
        m[:, 3].invalidate()
        m.T[2:4].flush()
        emit(coherent=[buf.coherent, m.coherent], cacheable=[buf.cacheable, m.cacheable],
             be_coherent=be.coherent)
    """)
    c1, c2 = board.events("CREATE")
    assert c1["flags"] == c2["flags"] == CACHEABLE
    assert got == {"coherent": [False, False], "cacheable": [True, True], "be_coherent": False}
    h1, h2 = c1["handle"], c2["handle"]
    assert board.syncs() == [
        (h1, TO_DEVICE, 0, 4096),
        (h1, FROM_DEVICE, 0, 4096),
        (h1, TO_DEVICE, *expected(40, 80)),
        (h1, FROM_DEVICE, 0, 4096),  # a strided view: its whole extent
        (h1, TO_DEVICE, *expected(4 * (600 - 3 * 133), 4 * 600 + 4)),
        (h2, TO_DEVICE, *expected(10 * 256 + 20, 11 * 256 + 36)),
        (h2, FROM_DEVICE, *expected(12, 63 * 256 + 16)),
        (h2, TO_DEVICE, *expected(8, 63 * 256 + 16)),
    ]


def test_pooled_sync_offsets_are_offsets_in_the_bo(board):
    got = board.out("""
        be = pa.open_backend("zocl", cacheable=True)
        x = be.allocate(100, "u4")
        y = be.allocate(300, "u4")
        y[50:60].flush()
        y.invalidate()
        x[-1:].flush()
        emit(x=x.device_address, y=y.device_address)
    """)
    (pool,) = board.events("CREATE")
    assert pool["flags"] == CACHEABLE
    h, xo, yo = pool["handle"], got["x"] - pool["paddr"], got["y"] - pool["paddr"]
    assert board.syncs() == [
        (h, TO_DEVICE, yo + 192, 64),
        (h, FROM_DEVICE, yo, 1216),
        (h, TO_DEVICE, xo + 384, 64),
    ]


def test_non_cacheable_is_never_synced(board):
    got = board.out("""
        be = pa.open_backend("zocl")                    # PYNQ's default
        a = be.allocate(4096, "u1")
        b = be.allocate(1 << 20, "u1")
        a.flush(); a.invalidate(); b[10:].flush(); b.invalidate()
        c = be.allocate(64, "u1", cacheable=True)      # asked for explicitly
        cb = pa.open_backend("zocl", cacheable=True)
        d = cb.allocate(1 << 20, "u1", cacheable=False)
        d.flush(); d.invalidate()
        emit(coherent=[a.coherent, b.coherent, c.coherent, d.coherent],
             cacheable=[a.cacheable, b.cacheable, c.cacheable, d.cacheable],
             backends=[be.coherent, cb.coherent])
    """)
    assert [c["flags"] for c in board.events("CREATE")] == [0, 0, CACHEABLE, 0]
    assert got["coherent"] == [True, True, False, True]
    assert got["cacheable"] == [False, False, True, False]
    assert got["backends"] == [True, False]
    assert board.syncs() == []


def test_reused_pool_range_comes_back_zeroed_and_clean(board):
    got = board.out("""
        be = pa.open_backend("zocl", cacheable=True)
        a = be.allocate(256, "u1")
        a[:] = 0xFF
        a.flush()
        first = a.device_address
        del a
        b = be.allocate(256, "u1")
        assert not b.any() and dev_read(b.device_address, 256) == bytes(256)
        emit(first=first, second=b.device_address)
    """)
    (pool,) = board.events("CREATE")
    assert got["first"] == got["second"]
    off = got["first"] - pool["paddr"]
    # the flush, then the cleaning of the zeroes written over the reused range
    assert board.syncs() == [(pool["handle"], TO_DEVICE, off, 256)] * 2


def test_bank_option_goes_into_the_flags(board):
    board.run("""
        pa.open_backend("zocl", bank=3).allocate(10)
        pa.open_backend("zocl", bank=2, cacheable=True).allocate(10)
    """)
    assert [c["flags"] for c in board.events("CREATE")] == [3, CACHEABLE | 2]
    r = board.run("pa.open_backend('zocl', bank=70000)", check=False)
    assert "ValueError: zocl option bank=70000" in r.stderr


PLDDR_BASE, PLDDR_SIZE = 0x4_0000_0000, 64 << 20


def reserved_memory(root, regions, cells=(2, 2)):
    """/proc/device-tree/reserved-memory under the sysroot: (name, base, size, reusable)"""
    top = root / "proc" / "device-tree" / "reserved-memory"
    top.mkdir(parents=True)
    (top / "#address-cells").write_bytes(cells[0].to_bytes(4, "big"))
    (top / "#size-cells").write_bytes(cells[1].to_bytes(4, "big"))
    for name, base, size, reusable in regions:
        node = top / name
        node.mkdir()
        (node / "reg").write_bytes(base.to_bytes(4 * cells[0], "big") +
                                   size.to_bytes(4 * cells[1], "big"))
        if reusable:
            (node / "reusable").write_bytes(b"")


def test_pl_ddr_banks_are_coherent_whatever_was_asked(board):
    """XRT's zocl manages a bank that is a device-tree reserved-memory region as
    PL-DDR: it drops CACHEABLE there (write-combine mapping) and its SYNC_BO does
    nothing, so such blocks are coherent, and reported so."""
    reserved_memory(board.root, [("buffer@400000000", PLDDR_BASE, PLDDR_SIZE, False),
                                 ("linux,cma", 0x7000_0000, 256 << 20, True)])
    got = board.out(f"""
        pl = pa.open_backend("zocl", bank=1, cacheable=True)
        ps = pa.open_backend("zocl", bank=0, cacheable=True)
        out = {{}}
        for name, be in (("pl", pl), ("ps", ps)):
            small, big = be.allocate(100, "u4"), be.allocate(200000, "u1")
            small[:] = 7
            big[:] = 9
            small.flush(); big.flush(); small.invalidate()
            out[name] = [small.coherent, big.coherent, hex(small.device_address),
                         list(dev_read(small.device_address, 8)), dev_read(big.device_address, 1)[0]]
        emit(**out)
    """, ZOCL_SHIM_PLDDR=f"1:{PLDDR_BASE:#x}:{PLDDR_SIZE:#x}")
    assert got["pl"][:2] == [True, True], got  # zocl dropped CACHEABLE: coherent
    assert PLDDR_BASE <= int(got["pl"][2], 16) < PLDDR_BASE + PLDDR_SIZE
    assert got["pl"][3] == [7, 0, 0, 0, 7, 0, 0, 0] and got["pl"][4] == 9  # WC: no flush needed
    assert got["ps"][:2] == [False, False], got  # CMA bank: cacheable as asked
    creates = board.events("CREATE")
    assert all(c["flags"] & CACHEABLE for c in creates)  # what was asked, both banks
    pl_handles = {c["handle"] for c in creates if c.get("plddr") == 1}
    assert pl_handles and not [s for s in board.events("SYNC") if s.get("noop") == 1]


def test_reusable_reserved_memory_is_not_pl_ddr(board):
    # a CMA pool declared in the device tree is where CMA BOs come from: still cacheable
    reserved_memory(board.root, [("linux,cma", 0x7000_0000, 256 << 20, True)], cells=(1, 1))
    got = board.out("""
        b = pa.open_backend("zocl", cacheable=True).allocate(100)
        emit(coherent=b.coherent, addr=b.device_address)
    """)
    assert got["coherent"] is False and 0x7000_0000 <= got["addr"] < 0x8000_0000


# ---------------------------------------------------------------- lifetime and leaks


def test_free_closes_every_bo(board):
    got = board.out("""
        be = pa.open_backend("zocl")
        after_each = []
        for i in range(200):
            x = be.allocate(70000 + i, "u1", cacheable=bool(i % 2))   # a BO each
            del x
            after_each.append(live())
        # page-aligned by default (as in PYNQ): 256 of them share a 1 MiB pool BO
        small = [be.allocate(64, "u1") for _ in range(1000)]
        during = live()
        del small
        kept = live()            # the emptied pool BO is kept for the next small request
        be.close()
        emit(after_each=sorted(set(after_each)), during=during, kept=kept, final=live())
    """)
    assert got == {"after_each": [0], "during": 4, "kept": 1, "final": 0}
    creates, closes = board.events("CREATE"), board.events("CLOSE")
    assert len(creates) == 204 and len(closes) == 204
    assert not board.events("RELEASE")  # nothing left for close(fd) to clean up
    assert [e["op"] for e in board.events()][-2:] == ["CLOSE", "CLOSEFD"]


LEAK_CHECK = """
    def fds():
        out = []
        for f in os.listdir("/proc/self/fd"):
            try:
                out.append(os.readlink("/proc/self/fd/" + f))
            except FileNotFoundError:  # the directory's own fd, closed by now
                pass
        return sorted(out)
    def maps():
        # Private anonymous mappings are left out: a released BO's range stays
        # mapped as inert zero pages (pa_retire), and the C allocator maps its
        # own regions lazily, whatever the backend does.
        with open("/proc/self/maps") as f:
            return [l for l in f.read().splitlines()
                    if not (len(l.split()) == 5 and l.split()[1].endswith("p"))]
    def ours(lines, what=("zocl-bo", "renderD")):
        return [l for l in lines if any(w in l for w in what)]
"""


def test_every_fd_and_mapping_is_released(board):
    got = board.out(LEAK_CHECK + """
    def cycle():
        be = pa.open_backend("zocl")
        bufs = [be.allocate(n, "u1", cacheable=c)
                for n in (64, 5000, 70000, 1 << 20) for c in (False, True)]
        bufs.append(be.allocate(3000, "u1", align=1 << 16))
        for b in bufs:
            b[:] = 1; b.flush(); b.invalidate()
        mid = (len(ours(fds(), ["renderD"])), len(ours(maps(), ["zocl-bo"])))
        del bufs, b
        be.close()
        return mid
    cycle()                               # warm up the interpreter's own allocations
    f0, m0 = fds(), maps()
    mid = cycle()
    f1, m1 = fds(), maps()
    emit(f=[len(f0), len(f1)], m=[len(m0), len(m1)], mid=mid, left=ours(f1) + ours(m1),
         live=live())
    """)
    assert got["f"][0] == got["f"][1] and got["m"][0] == got["m"][1]
    assert got["left"] == [] and got["live"] == 0
    # the check means something: while buffers lived there were BO mappings and the node fd
    assert got["mid"][0] == 1 and got["mid"][1] == 7  # 2 pool BOs, 5 BOs of their own


@pytest.mark.parametrize("fail, exc, text", [
    ("info", "OSError", "DRM_IOCTL_ZOCL_INFO_BO on /dev/dri/renderD128 failed: Input/output error"),
    ("map", "PermissionError", "DRM_IOCTL_ZOCL_MAP_BO on /dev/dri/renderD128 failed"),
    ("mmap", "MemoryError", "mmap of a 1048576-byte zocl buffer object on /dev/dri/renderD128"),
    ("oldinfo", "NotImplementedError", "predates XRT 2019.1"),
])
def test_failures_after_create_bo_unwind(board, fail, exc, text):
    got = board.out(LEAK_CHECK + """
    be = pa.open_backend("zocl")
    def attempt():
        errors = []
        for n in (100, 1 << 20):
            try:
                be.allocate(n, "u1")
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
        return errors
    attempt()                             # warm up the interpreter's own allocations
    f0, m0 = fds(), maps()
    errors = attempt()
    emit(errors=errors, live=live(), same=[fds() == f0, len(maps()) == len(m0)],
         left=ours(fds(), ["zocl-bo"]) + ours(maps(), ["zocl-bo"]))
    """, ZOCL_SHIM_FAIL=fail)
    assert len(got["errors"]) == 2 and all(e.startswith(exc + ": ") for e in got["errors"])
    assert text in got["errors"][0]
    assert got["live"] == 0 and got["same"] == [True, True] and got["left"] == []
    creates, closes = board.events("CREATE"), board.events("CLOSE")
    assert len(creates) == 4 and [c["handle"] for c in creates] == [c["handle"] for c in closes]


# ---------------------------------------------------------------- errors with advice


def test_cma_exhausted_is_a_memory_error_with_advice(board):
    r = board.run("pa.open_backend('zocl').allocate(1 << 20, 'u1')", check=False,
                  ZOCL_SHIM_CMA=0)
    assert "MemoryError: cannot allocate 1048576 bytes with zocl" in r.stderr
    assert "CMA is exhausted: increase cma= on the kernel command line" in r.stderr


def test_small_request_falls_back_to_its_own_bo_when_cma_is_short(board):
    got = board.out("""
        be = pa.open_backend("zocl")
        small = be.allocate(16, "u4")            # a 1 MiB pool BO does not fit in 512 KiB
        try:
            be.allocate(600 << 10, "u1")
        except MemoryError as e:
            err = str(e)
        x = be.allocate(300 << 10, "u1")
        emit(small=small.device_address, err=err)
    """, ZOCL_SHIM_CMA=512 << 10)
    assert "cannot allocate 614400 bytes with zocl" in got["err"]
    assert "increase cma=" in got["err"]
    sizes = [(c["size"], c.get("error")) for c in board.events("CREATE")]
    assert sizes == [(CHUNK, "ENOMEM"), (64, None), (600 << 10, "ENOMEM"), (300 << 10, None)]


def test_wrong_driver_is_refused(board):
    got = board.out("""
        try:
            pa.open_backend("zocl")
        except OSError as e:
            emit(errno=e.errno, msg=str(e), probe=[r for r in pa._pynq_alloc._probe()
                                                   if r[0] == "zocl"][0])
    """, ZOCL_SHIM_DRIVER="v3d")
    assert got["errno"] == errno.ENODEV
    assert "/dev/dri/renderD128 belongs to the DRM driver 'v3d', not zocl" in got["msg"]
    assert got["probe"][1] is False and "'v3d', not zocl" in got["probe"][3]
    assert not board.events("CREATE")


def test_permission_denied_says_what_to_do(board):
    r = board.run("pa.open_backend('zocl')", check=False, ZOCL_SHIM_OPEN_ERRNO=errno.EACCES)
    assert "PermissionError" in r.stderr and "cannot open /dev/dri/renderD128" in r.stderr
    assert "add the user to the render/video group" in r.stderr and "run as root" in r.stderr


def test_missing_node(tmp_path, monkeypatch):
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        pynq_alloc.open_backend("zocl")
    assert "no DRM render node (/dev/dri/renderD128..191) exists" in str(e.value)
    assert "PYNQ >= 2.7" in str(e.value) and "ls /dev/dri" in str(e.value)
    with pytest.raises(FileNotFoundError, match="/dev/dri/renderD130 does not exist"):
        pynq_alloc.open_backend("zocl:/dev/dri/renderD130")
    row = [r for r in pynq_alloc._pynq_alloc._probe() if r[0] == "zocl"][0]
    assert row[1] is False and row[2] is True and "load zocl" in row[3]


def test_a_node_that_is_not_drm_is_refused(tmp_path, monkeypatch):
    (tmp_path / "dev" / "dri").mkdir(parents=True)
    (tmp_path / "dev" / "dri" / "renderD128").touch()  # a regular file: VERSION fails
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    with pytest.raises(OSError, match="renderD128 is not a DRM device") as e:
        pynq_alloc.open_backend("zocl")
    assert e.value.errno == errno.ENODEV


# ---------------------------------------------------------------- spec forms and selection


def test_spec_forms(board):
    got = board.out("""
        be = pa.open_backend("zocl:/dev/dri/renderD128")
        errs = {}
        for spec, opts in [("zocl:renderD128", {}), ("zocl", {"pool": 1})]:
            try:
                pa.open_backend(spec, **opts)
            except ValueError as e:
                errs[spec] = str(e)
        emit(spec=be.spec, addr=be.allocate(10).device_address, errs=errs)
    """)
    assert got["spec"] == "zocl:/dev/dri/renderD128"
    assert got["addr"] == board.events("CREATE")[0]["paddr"]
    assert "name the render node as a path, e.g. zocl:/dev/dri/renderD128" in \
        got["errs"]["zocl:renderD128"]
    assert "the zocl backend has no option 'pool'" in got["errs"]["zocl"]


def test_scan_skips_nodes_of_other_devices(board):
    # renderD128 stays a plain file (not DRM); the emulated zocl node is renderD129
    d129 = board.root / "dev" / "dri" / "renderD129"
    d129.touch()
    got = board.out("""
        be = pa.open_backend("zocl")
        be.allocate(10)
        emit(probe=[r for r in pa._pynq_alloc._probe() if r[0] == "zocl"][0])
    """, ZOCL_SHIM_NODE=d129)
    assert got["probe"][1] is True
    assert got["probe"][3] == "usable: zocl 2.14.354 on /dev/dri/renderD129"
    assert {e["path"] for e in board.events("OPEN")} == {str(d129)}
    assert len(board.events("CREATE")) == 1


def test_selected_by_environment_variable(board):
    r = board.run("b = pa.allocate(10); print(b.backend.name, b.device_address)",
                  PYNQ_ALLOC_BACKEND="zocl")
    name, addr = r.stdout.split()
    assert name == "zocl" and int(addr) == board.events("CREATE")[0]["paddr"]
    assert "Warning" not in r.stderr


def test_probed_by_default_on_a_board(board):
    (board.root / "proc" / "device-tree").mkdir(parents=True)
    r = board.run("b = pa.allocate(10); print(b.backend.name)")
    assert r.stdout.strip() == "zocl" and "Warning" not in r.stderr
    r = board.run(None, args=["-m", "pynq_alloc", "info", "--json"])
    row = {x["backend"]: x for x in json.loads(r.stdout)}["zocl"]
    assert row["usable"] is True and row["board"] is True
    assert row["reason"] == "usable: zocl 2.14.354 on /dev/dri/renderD128"


def test_probe_failure_is_reported_on_a_board(board):
    (board.root / "proc" / "device-tree").mkdir(parents=True)
    r = board.run("pa.allocate(10)", check=False, ZOCL_SHIM_DRIVER="xlnx")
    assert "RuntimeError: no usable DMA memory backend on this board" in r.stderr
    assert "zocl: /dev/dri/renderD128 belongs to the DRM driver 'xlnx', not zocl" in r.stderr


def test_address_bits_checks_the_cma_address(board):
    """zocl's BOs lie where CMA put them: a limit they miss is a MemoryError naming the
    CMA area; the BO is given back (pooled or not)."""
    got = board.out("""
        be = pa.open_backend("zocl")
        msgs = []
        for n in (100, 1 << 20):
            try:
                be.allocate(n, "u1", address_bits=12)
            except MemoryError as e:
                msgs.append(str(e))
        ok = be.allocate(100, "u1", address_bits=64)
        emit(msgs=msgs, buffers=be.info()["buffers"], ok=ok.device_address)
    """)
    assert len(got["msgs"]) == 2
    for m in got["msgs"]:
        assert "zocl backend got" in m and "above the limit 0xfff" in m
        assert "default CMA area" in m and "cma=SIZE@0-LIMIT" in m
    assert got["buffers"] == 1 and got["ok"] > 0xFFF
