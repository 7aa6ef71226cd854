"""The xlnk backend against a fake libcma.so (tests/emul/xlnk_fake_libcma.c) with
libcma's ABI, built here with the C compiler. The fake maps anonymous memory,
hands out physical addresses from 0x10000000 up, and logs every call; the
tests read that log to check what the backend asked of libcma."""
import ctypes
import errno
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pynq_alloc
from emul_build import build_shared

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "emul" / "xlnk_fake_libcma.c"
PHYS = 0x1000_0000
ARM32 = platform.machine() in ("armv7l", "armv6l")  # no user-space cache maintenance
KB, MB = 1 << 10, 1 << 20
# a plain package import path for the subprocesses, wherever pynq_alloc lives
PKG_ROOT = str(Path(pynq_alloc.__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def fake(tmp_path_factory):
    """Paths of the fake library and of variants that lack some symbols."""
    out = tmp_path_factory.mktemp("fake_libcma")
    return {name: build_shared(out / f"libcma_{name}.so", SOURCE, "-lpthread", *flags,
                               what="the fake libcma")
            for name, flags in [("full", []), ("no_phys", ["-DFAKE_NO_PHYS"]),
                                ("no_pages", ["-DFAKE_NO_PAGES"]), ("no_sync", ["-DFAKE_NO_SYNC"])]}


class Log:
    """The fake's call log: one dict per line, with 'call' and 'bad' keys."""

    def __init__(self, path):
        self.path = path

    def entries(self, call=None):
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            words = line.split()
            bad = words[0] == "BAD"
            if bad:
                words = words[1:]
            row = {"call": words[0], "bad": bad}
            for w in words[1:]:
                if "=" in w:
                    k, v = w.split("=", 1)
                    row[k] = v if v == "NULL" or k == "path" else int(v, 0)
            rows.append(row)
        return [r for r in rows if call is None or r["call"] == call]

    def allocs(self):
        return [r for r in self.entries("alloc") if r["buf"] != "NULL"]

    def syncs(self):
        return [(r["call"], r["buf"], r["phys"], r["size"])
                for r in self.entries() if r["call"] in ("flush", "invalidate")]

    def live(self):
        rows = [r for r in self.entries() if "live" in r]
        return rows[-1]["live"] if rows else 0

    def bad(self):
        return [r for r in self.entries() if r["bad"]]

    def clear(self):
        if self.path.exists():
            self.path.unlink()


class Xlnk:
    """A sysroot with /dev/xlnk and the fake library's environment."""

    def __init__(self, tmp_path, monkeypatch, fake):
        self.root = tmp_path / "root"
        (self.root / "dev").mkdir(parents=True)
        (self.root / "dev" / "xlnk").write_bytes(b"")
        self.log = Log(tmp_path / "libcma.log")
        self.fake = fake
        self.opened = []
        monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(self.root))
        monkeypatch.setenv("FAKE_LIBCMA_LOG", str(self.log.path))
        for var in ("FAKE_LIBCMA_CAPACITY", "FAKE_LIBCMA_PHYS", "PYNQ_ALLOC_LIBCMA"):
            monkeypatch.delenv(var, raising=False)

    def open(self, lib="full", **options):
        options.setdefault("library", self.fake.get(lib, lib))
        be = pynq_alloc.open_backend("xlnk", **options)
        self.opened.append(be)
        return be

    def alloc_of(self, buf):
        """The logged cma_alloc that holds buf: (buf, phys, len) of that call."""
        va = buf.virtual_address
        for r in reversed(self.log.allocs()):  # the newest: freed addresses get reused
            if r["buf"] <= va < r["buf"] + r["len"]:
                return r
        raise AssertionError(f"0x{va:x} is in no buffer libcma handed out")


@pytest.fixture
def xlnk(tmp_path, monkeypatch, fake):
    env = Xlnk(tmp_path, monkeypatch, fake)
    yield env
    for be in env.opened:
        be.close()
    # every test ends with all CMA given back (so the next one starts at PHYS)
    assert env.log.live() == 0
    assert env.log.bad() == []


def clean_env(**extra):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("PYNQ_ALLOC_", "FAKE_LIBCMA_"))}
    e["PYTHONPATH"] = PKG_ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def run(code, cwd, preexec_fn=None, **env):
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=clean_env(**env),
                          cwd=cwd, capture_output=True, text=True, preexec_fn=preexec_fn)


# --- addresses, data, pooling ---------------------------------------------------------------

def test_small_buffers_are_pooled_in_one_cma_chunk(xlnk):
    be = xlnk.open()
    bufs = [be.allocate(100, "u1") for _ in range(10)]
    allocs = xlnk.log.allocs()
    assert len(allocs) == 1 and allocs[0]["len"] == MB and allocs[0]["cacheable"] == 1
    chunk = allocs[0]
    assert chunk["phys"] == PHYS
    spans = []
    for b in bufs:
        off = b.device_address - chunk["phys"]
        assert 0 <= off < MB and off % 64 == 0
        # the CPU address is libcma's mapping at the same offset
        assert b.virtual_address == chunk["buf"] + off
        spans.append((off, off + 128))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # libcma is only ever asked about the pointer it returned
    assert [r["buf"] for r in xlnk.log.entries("getphys")] == [chunk["buf"]]
    assert xlnk.log.bad() == []


def test_large_buffers_get_their_own_cma_alloc(xlnk):
    be = xlnk.open()
    a = be.allocate(100 * KB, "u1")
    b = be.allocate((300, 300), "u4")
    allocs = xlnk.log.allocs()
    assert [r["len"] for r in allocs] == [100 * KB, 360000]
    assert a.device_address == allocs[0]["phys"] == PHYS
    assert b.device_address == allocs[1]["phys"]
    assert a.virtual_address == allocs[0]["buf"] and b.virtual_address == allocs[1]["buf"]


def test_data_round_trip_lives_in_libcma_memory(xlnk):
    be = xlnk.open()
    for shape in [(1000,), (512, 300)]:
        buf = be.allocate(shape, "u4")
        assert not buf.any(), "the fake hands out 0xa5 bytes: the backend must zero them"
        buf[:] = np.arange(buf.size, dtype="u4").reshape(shape)
        raw = ctypes.string_at(buf.virtual_address, buf.nbytes)
        assert np.array_equal(np.frombuffer(raw, "u4").reshape(shape), buf)
        assert np.array_equal(buf, np.arange(buf.size, dtype="u4").reshape(shape))


def test_reused_pool_space_is_zeroed(xlnk):
    be = xlnk.open()
    a = be.allocate(1000, "u1")
    addr = a.device_address
    a[:] = 0xFF
    del a
    b = be.allocate(1000, "u1")
    assert b.device_address == addr and not b.any()


@pytest.mark.skipif(sys.maxsize < 2**32, reason=(
    "libcma's cma_get_phy_addr returns unsigned long: 32 bits on ARMv7, so it cannot "
    "express physical addresses above 4 GiB there"))
def test_64_bit_physical_addresses(xlnk, monkeypatch):
    monkeypatch.setenv("FAKE_LIBCMA_PHYS", str(0x8_0000_0000))
    be = xlnk.open()
    small, big = be.allocate(10), be.allocate(MB, "u1")
    assert small.device_address >= 0x8_0000_0000
    assert big.device_address == xlnk.alloc_of(big)["phys"] > 1 << 32


@pytest.mark.parametrize("align", [4096, 64 * KB, MB])
def test_alignment_of_device_addresses(xlnk, align):
    be = xlnk.open(pool_max=0)
    first = be.allocate(4096, "u1")  # the next CMA buffer starts one page past PHYS
    offsets = []
    for nbytes in (100, 200 * KB):
        buf = be.allocate(nbytes, "u1", align=align)
        assert buf.device_address % align == 0
        r = xlnk.alloc_of(buf)
        offsets.append(buf.device_address - r["phys"])
        assert offsets[-1] == buf.virtual_address - r["buf"]
    pad = align - 4096  # the most a page-aligned CMA start can need
    assert [r["len"] for r in xlnk.log.allocs()[1:]] == [128 + pad, 200 * KB + pad]
    assert offsets[0] == pad and first.device_address == PHYS


# --- cacheable flag -------------------------------------------------------------------------

@pytest.mark.parametrize("cacheable,flag", [(None, 1), (True, 1), (False, 0)])
def test_cacheable_flag_reaches_cma_alloc(xlnk, cacheable, flag):
    be = xlnk.open(pool_max=0)
    buf = be.allocate(5000, "u1", cacheable=cacheable)
    (r,) = xlnk.log.allocs()
    assert (r["len"], r["cacheable"]) == (5056, flag)
    assert buf.coherent is (flag == 0) and buf.cacheable is (flag == 1)


def test_cacheable_and_uncached_small_buffers_use_separate_chunks(xlnk):
    be = xlnk.open()
    c, u = be.allocate(10, cacheable=True), be.allocate(10, cacheable=False)
    assert sorted(r["cacheable"] for r in xlnk.log.allocs()) == [0, 1]
    assert xlnk.alloc_of(c)["cacheable"] == 1 and xlnk.alloc_of(u)["cacheable"] == 0
    assert not c.coherent and u.coherent
    assert be.info()["coherent"] is False


# --- freeing --------------------------------------------------------------------------------

def test_every_cma_alloc_is_freed(xlnk):
    be = xlnk.open()
    big = [be.allocate(200 * KB, "u1") for _ in range(3)]
    small = [be.allocate(100, "u1", cacheable=c) for c in (None, False) for _ in range(5)]
    assert xlnk.log.live() == 5  # 3 own + a cacheable and an uncached chunk
    del big
    assert xlnk.log.live() == 2
    del small
    # an empty chunk of each kind is kept for the next small request ...
    assert xlnk.log.live() == 2
    be.allocate(100, "u1")
    assert len(xlnk.log.allocs()) == 5
    be.close()
    # ... and returned on close
    allocs = {r["buf"] for r in xlnk.log.allocs()}
    freed = [r["buf"] for r in xlnk.log.entries("free")]
    assert sorted(freed) == sorted(allocs) and xlnk.log.live() == 0
    assert xlnk.log.entries()[-1]["call"] == "free"  # libcma itself stays loaded
    assert xlnk.log.bad() == []


def test_libcma_is_loaded_once_per_process(fake, tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "xlnk").write_bytes(b"")
    log = Log(tmp_path / "libcma.log")
    code = ("import pynq_alloc as p\n"
            "for i in range(3):\n"
            "    be = p.open_backend('xlnk')\n"
            "    b = be.allocate(100 << 10)\n"
            "    del b\n"
            "    be.close()\n"
            "print('done')")
    r = run(code, cwd=tmp_path, PYNQ_ALLOC_SYSROOT=str(tmp_path), PYNQ_ALLOC_LIBCMA=fake["full"],
            FAKE_LIBCMA_LOG=str(log.path))
    assert r.returncode == 0 and r.stdout == "done\n", r.stderr
    calls = [e["call"] for e in log.entries()]
    # its constructor (which opens /dev/xlnk, and in some builds resets the
    # driver) runs once; its destructor at exit, with nothing left allocated.
    # On 32-bit ARM the zeroed block is cleaned through libcma (the CPU cannot
    # clean its cache from user space there); elsewhere by our own maintenance.
    per_buffer = ["alloc", "getphys"] + (["flush"] if ARM32 else []) + ["free"]
    assert calls == ["init"] + per_buffer * 3 + ["fini"]
    assert log.entries()[-1]["live"] == 0


def test_a_second_empty_chunk_is_returned_at_once(xlnk):
    be = xlnk.open(pool_chunk=64 * KB, pool_max=32 * KB)
    a = [be.allocate(32 * KB, "u1") for _ in range(4)]  # two chunks of two
    assert xlnk.log.live() == 2
    del a
    assert xlnk.log.live() == 1


# --- sync -----------------------------------------------------------------------------------

# The xlnk driver maintains the L1 from the start of the CMA buffer that holds
# phys_addr, for size bytes (and the L2 from phys_addr): every libcma call is
# (buffer start, its phys, end of the line-rounded range as an offset in it).

def test_libcma_sync_gets_exact_line_rounded_arguments(xlnk):
    be = xlnk.open(sync="libcma", pool_max=0)
    a = be.allocate(1000, "u1")
    r = xlnk.alloc_of(a)
    B, P = r["buf"], r["phys"]
    # zeroed memory is cleaned before the buffer is handed out
    assert xlnk.log.syncs() == [("flush", B, P, 1024)]
    xlnk.log.clear()
    a[100:200].flush()
    a[3:5].invalidate()
    a.flush()
    a[999:].invalidate()
    assert xlnk.log.syncs() == [("flush", B, P, 256), ("invalidate", B, P, 64),
                                ("flush", B, P, 1024), ("invalidate", B, P, 1024)]
    assert not a.coherent and xlnk.log.bad() == []


def test_libcma_sync_of_2d_and_strided_views(xlnk):
    be = xlnk.open(sync="libcma", pool_max=0)
    m = be.allocate((16, 16), "u4")
    r = xlnk.alloc_of(m)
    B, P = r["buf"], r["phys"]
    xlnk.log.clear()
    m[2:5, 3:7].flush()        # bytes [140, 284)
    m[::4, ::2].invalidate()   # bytes [0, 828)
    m[5].flush()               # bytes [320, 384)
    assert xlnk.log.syncs() == [("flush", B, P, 320), ("invalidate", B, P, 832),
                                ("flush", B, P, 384)]


def test_libcma_sync_of_pooled_blocks_covers_them_in_l1_and_l2(xlnk):
    be = xlnk.open(sync="libcma")
    x = be.allocate(100, "u1")
    y = be.allocate(300, "u1")
    chunk = xlnk.alloc_of(y)
    assert xlnk.alloc_of(x) == chunk
    off = y.device_address - chunk["phys"]
    assert off > 0
    xlnk.log.clear()
    y[10:20].invalidate()
    assert xlnk.log.syncs() == [("invalidate", chunk["buf"], chunk["phys"], off + 64)]
    # what the driver maintained, per cache level, as offsets in the chunk
    row = xlnk.log.entries("invalidate")[0]
    assert row["l1lo"] <= off and off + 64 <= row["l1hi"], row
    assert row["l2lo"] <= off and off + 64 <= row["l2hi"], row
    assert xlnk.log.bad() == []


def test_uncached_blocks_are_never_synced(xlnk):
    be = xlnk.open(sync="libcma")
    u = be.allocate(1000, "u1", cacheable=False)
    u[:] = 3
    u.flush()
    u.invalidate()
    assert xlnk.log.syncs() == [] and (u == 3).all()


@pytest.mark.skipif(sys.maxsize < 2**32, reason=(
    "libcma's cma_get_phy_addr returns unsigned long: 32 bits on ARMv7, so it cannot "
    "express physical addresses above 4 GiB there"))
def test_libcma_sync_refuses_physical_addresses_above_4g(xlnk, monkeypatch):
    monkeypatch.setenv("FAKE_LIBCMA_PHYS", str(0x8_0000_0000))
    be = xlnk.open(sync="libcma", pool_max=0)
    with pytest.raises(ValueError, match="32-bit phys_addr.*sync=cpu"):
        be.allocate(100)
    assert xlnk.log.live() == 0  # the block that could not be cleaned went back


@pytest.mark.skipif(ARM32, reason="32-bit ARM syncs through libcma by default")
def test_default_sync_is_own_cache_maintenance(xlnk, monkeypatch):
    # AArch64 and x86: our own line-exact maintenance, not libcma's calls
    be = xlnk.open()
    a = be.allocate(1000, "u1")
    assert not a.coherent
    a[:] = 9
    a.flush()
    a[10:20].invalidate()
    assert xlnk.log.syncs() == [] and (a == 9).all()
    monkeypatch.setenv("PYNQ_ALLOC_LIBCMA", xlnk.fake["full"])
    reason = {row[0]: row[3] for row in pynq_alloc._pynq_alloc._probe()}["xlnk"]
    assert reason.startswith("usable:") and "synced by own cache maintenance (" in reason


# --- info and exhaustion --------------------------------------------------------------------

def test_info_counts_cma(xlnk, monkeypatch):
    monkeypatch.setenv("FAKE_LIBCMA_CAPACITY", str(8 * MB))
    be = xlnk.open()
    big = be.allocate(MB, "u1")
    small = be.allocate(100, "u1")
    info = be.info()
    assert info["total"] == 8 * MB
    # the pooled 100 B at the default align=4096 takes a page of its chunk
    assert info["used"] == MB + 4096 and info["free"] == 7 * MB - 4096
    assert info["requested"] == MB + 100
    assert info["largest_free"] == 6 * MB and info["buffers"] == 2
    del big, small


def test_exhaustion_names_request_and_free_cma(xlnk, monkeypatch):
    monkeypatch.setenv("FAKE_LIBCMA_CAPACITY", str(MB))
    be = xlnk.open(pool_max=0)
    a = be.allocate(768 * KB, "u1")
    with pytest.raises(MemoryError) as exc:
        be.allocate(512 * KB, "u1")
    msg = str(exc.value)
    assert "cannot allocate 524288 bytes" in msg and "262144 bytes of CMA are free" in msg
    assert "free buffers" in msg and "cma=" in msg
    del a
    be.allocate(512 * KB, "u1")
    assert xlnk.log.bad() == []


def test_small_request_falls_back_when_no_chunk_fits(xlnk, monkeypatch):
    monkeypatch.setenv("FAKE_LIBCMA_CAPACITY", str(512 * KB))
    be = xlnk.open()
    buf = be.allocate(100, "u1")
    calls = [(r["len"], r["buf"]) for r in xlnk.log.entries("alloc")]
    assert calls[0] == (MB, "NULL") and calls[1][0] == 128
    assert buf.device_address == PHYS


def test_exhaustion_without_cma_pages_available(xlnk, monkeypatch):
    monkeypatch.setenv("FAKE_LIBCMA_CAPACITY", str(MB))
    be = xlnk.open("no_pages", pool_max=0)
    with pytest.raises(MemoryError, match="free CMA is unknown"):
        be.allocate(2 * MB, "u1")
    a = be.allocate(4096, "u1")
    assert be.info()["total"] == 4096  # only what we hold is known
    del a


# --- errors ---------------------------------------------------------------------------------

def test_missing_library_says_xlnk_is_for_old_images(xlnk, tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        xlnk.open(library=str(tmp_path / "nope" / "libcma.so"))
    assert exc.value.errno == errno.ENOENT
    assert "PYNQ <= 2.6" in str(exc.value) and "zocl" in str(exc.value)


def test_library_from_environment_and_option_precedence(xlnk, monkeypatch, tmp_path):
    monkeypatch.setenv("PYNQ_ALLOC_LIBCMA", xlnk.fake["full"])
    be = pynq_alloc.open_backend("xlnk")
    be.allocate(10)
    be.close()
    monkeypatch.setenv("PYNQ_ALLOC_LIBCMA", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="missing.so"):
        pynq_alloc.open_backend("xlnk")
    xlnk.open()  # the option wins over the environment


def test_not_a_library(xlnk, tmp_path):
    text = tmp_path / "libcma.so"
    text.write_text("not an ELF file at all\n")
    with pytest.raises(OSError, match="not an ELF shared library"):
        xlnk.open(library=str(text))


def test_library_for_another_cpu(xlnk, tmp_path):
    host64 = sys.maxsize > 2**32
    other_machine = 62 if platform.machine() in ("aarch64", "arm64") else 183  # x86-64 / AArch64
    header = bytearray(64)
    header[:7] = b"\x7fELF" + bytes([2 if host64 else 1, 1, 1])
    header[16:20] = (3).to_bytes(2, "little") + other_machine.to_bytes(2, "little")
    lib = tmp_path / "libcma_other.so"
    lib.write_bytes(bytes(header))
    with pytest.raises(OSError, match="built for .* but this process runs on"):
        xlnk.open(library=str(lib))
    header[4] = 1 if host64 else 2
    lib.write_bytes(bytes(header))
    with pytest.raises(OSError, match="-bit library but this process is"):
        xlnk.open(library=str(lib))


def test_missing_symbol_is_named_and_library_unloaded(xlnk):
    with pytest.raises(OSError) as exc:
        xlnk.open("no_phys")
    assert exc.value.errno == errno.ENOSYS
    assert "has no cma_get_phy_addr" in str(exc.value) and "not PYNQ's libcma" in str(exc.value)
    assert [r["call"] for r in xlnk.log.entries()] == ["init", "fini"]


def test_missing_sync_symbols(xlnk):
    with pytest.raises(OSError, match="has no cma_flush_cache"):
        xlnk.open("no_sync", sync="libcma")
    if not ARM32:
        # optional where we maintain the cache ourselves
        be = xlnk.open("no_sync")
        assert not be.allocate(10).coherent


def test_spec_and_option_errors(xlnk):
    with pytest.raises(ValueError, match="takes no argument"):
        pynq_alloc.open_backend("xlnk:/dev/xlnk", library=xlnk.fake["full"])
    with pytest.raises(ValueError, match=r"no option 'size' \(options: library, sync"):
        xlnk.open(size=10)
    with pytest.raises(ValueError, match="sync='fast'"):
        xlnk.open(sync="fast")
    with pytest.raises(ValueError, match="pool_max=.*larger than pool_chunk"):
        xlnk.open(pool_chunk=64 * KB, pool_max=128 * KB)
    with pytest.raises(ValueError, match="pool_chunk=1000 must be a multiple"):
        xlnk.open(pool_chunk=1000)
    assert xlnk.open(pool_max=0).name == "xlnk"
    assert xlnk.open().spec == "xlnk"
    assert xlnk.log.live() == 0


def test_missing_dev_xlnk_refuses_before_loading_libcma(fake, tmp_path):
    # the fake, like one build of PYNQ's libcma, exits the process when loaded without /dev/xlnk
    r = run(f"import ctypes; ctypes.CDLL({fake['full']!r}); print('survived')", cwd=tmp_path,
            PYNQ_ALLOC_SYSROOT=str(tmp_path))
    assert r.returncode == 255 and "survived" not in r.stdout
    code = ("import pynq_alloc as p\n"
            f"try: p.open_backend('xlnk', library={fake['full']!r})\n"
            "except FileNotFoundError as e: print('refused:', e)\n"
            "print('survived')")
    r = run(code, cwd=tmp_path, PYNQ_ALLOC_SYSROOT=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"refused: [Errno 2] {tmp_path}/dev/xlnk: No such file or directory" in r.stdout
    assert "no xlnk driver" in r.stdout and "survived" in r.stdout


def drop_dac_capabilities():
    """preexec_fn for root: the child loses CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH on exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_denied_on_dev_xlnk(fake, tmp_path):
    (tmp_path / "dev").mkdir()
    node = tmp_path / "dev" / "xlnk"
    node.write_bytes(b"")
    node.chmod(0o000)
    code = ("import pynq_alloc as p\n"
            f"try: p.open_backend('xlnk', library={fake['full']!r})\n"
            "except PermissionError as e: print('refused:', e)\n"
            "print([r[3] for r in p._pynq_alloc._probe() if r[0] == 'xlnk'][0])")
    pre = drop_dac_capabilities if os.geteuid() == 0 else None
    r = run(code, cwd=tmp_path, preexec_fn=pre, PYNQ_ALLOC_SYSROOT=str(tmp_path),
            PYNQ_ALLOC_LIBCMA=fake["full"])
    if "prctl(PR_CAPBSET_DROP)" in r.stderr:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here, so root can open any file")
    assert r.returncode == 0, r.stderr
    refused, probe = r.stdout.splitlines()
    assert refused.startswith("refused: [Errno 13] cannot open")
    assert "Permission denied; run as root" in refused
    assert probe.startswith("cannot open") and "run as root" in probe


# --- selection ------------------------------------------------------------------------------

def board_root(tmp_path, xlnk_node=True):
    root = tmp_path / "board"
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "dev").mkdir()
    if xlnk_node:
        (root / "dev" / "xlnk").write_bytes(b"")
    return root


def test_backend_env_variable_selects_xlnk(fake, tmp_path):
    root = board_root(tmp_path)
    code = ("import pynq_alloc as p; b = p.allocate(4); "
            "print(b.backend.name, hex(b.device_address))")
    r = run(code, cwd=tmp_path, PYNQ_ALLOC_BACKEND="xlnk", PYNQ_ALLOC_SYSROOT=str(root),
            PYNQ_ALLOC_LIBCMA=fake["full"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["xlnk", hex(PHYS)]


def test_default_backend_probes_xlnk_on_an_old_pynq_board(fake, tmp_path):
    root = board_root(tmp_path)
    code = "import pynq_alloc as p; print(p.allocate(4).backend.name)"
    r = run(code, cwd=tmp_path, PYNQ_ALLOC_SYSROOT=str(root), PYNQ_ALLOC_LIBCMA=fake["full"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "xlnk" and "Warning" not in r.stderr

    r = subprocess.run([sys.executable, "-m", "pynq_alloc", "info", "--json"], cwd=tmp_path,
                       env=clean_env(PYNQ_ALLOC_SYSROOT=str(root),
                                     PYNQ_ALLOC_LIBCMA=fake["full"]),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    row = {row["backend"]: row for row in json.loads(r.stdout)}["xlnk"]
    assert row["usable"] is True and row["board"] is True
    assert row["reason"].startswith(f"usable: libcma at {fake['full']} with /dev/xlnk")


def test_default_backend_reports_why_xlnk_is_unusable(fake, tmp_path):
    root = board_root(tmp_path, xlnk_node=False)
    r = run("import pynq_alloc as p; p.allocate(4)", cwd=tmp_path,
            PYNQ_ALLOC_SYSROOT=str(root), PYNQ_ALLOC_LIBCMA=fake["full"])
    assert r.returncode != 0
    assert "no usable DMA memory backend on this board" in r.stderr
    assert "/dev/xlnk: No such file or directory" in r.stderr


@pytest.mark.skipif(Path("/usr/lib/libcma.so").exists(), reason="this machine has libcma")
def test_default_library_path_is_usr_lib_libcma(fake, tmp_path):
    r = run("import pynq_alloc as p; p.allocate(4)", cwd=tmp_path,
            PYNQ_ALLOC_SYSROOT=str(board_root(tmp_path)))
    assert r.returncode != 0
    assert "libcma not found at /usr/lib/libcma.so" in r.stderr and "PYNQ <= 2.6" in r.stderr


# --- leaks ----------------------------------------------------------------------------------

def inert(line):
    """A private anonymous mapping: what a released buffer's range becomes
    (pa_retire: inert zero pages, so a stray pointer hits harmless memory);
    the C allocator's own arenas look the same."""
    f = line.split()
    return len(f) == 5 and f[1].endswith("p")


def counts():
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    return len(os.listdir("/proc/self/fd")), [m for m in maps if not inert(m)], maps


def exercise(xlnk):
    for opts in ({}, {"sync": "libcma", "pool_max": 0}):
        be = xlnk.open(**opts)
        bufs = [be.allocate(n, "u1", cacheable=c)
                for n in (100, 5000, 300 * KB) for c in (None, False)]
        for b in bufs:
            b[:] = 1
            b.flush()
            b.invalidate()
        del bufs
        be.close()
        xlnk.opened.remove(be)
    for bad in ({"sync": "libcma", "lib": "no_sync"}, {"lib": "no_phys"}):
        with pytest.raises(OSError):
            xlnk.open(**bad)
    be = xlnk.open(pool_max=0)
    with pytest.raises(MemoryError):
        be.allocate(128 * MB, "u1")
    be.close()
    xlnk.opened.remove(be)


def test_no_fd_or_mapping_leaks(xlnk):
    exercise(xlnk)  # warm-up: first loads of the library, Python's own caches
    fds, maps, _ = counts()
    xlnk.log.clear()
    for _ in range(3):
        exercise(xlnk)
    fds2, maps2, everything = counts()
    assert fds2 == fds
    assert len(maps2) == len(maps), set(maps2) ^ set(maps)
    # none of libcma's buffers stays mapped; their ranges hold inert zero pages
    spans = [(r["buf"], r["buf"] + r["len"]) for r in xlnk.log.allocs()]
    assert len(spans) == 3 * 10
    for line in maps2:
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        assert not any(lo < e and s < hi for s, e in spans), line
    ranges = [tuple(int(x, 16) for x in m.split()[0].split("-")) for m in everything if inert(m)]
    for s, e in spans:
        assert any(lo <= s and e <= hi for lo, hi in ranges), hex(s)
    # the usable libcma stayed loaded (no second constructor run); a library
    # refused for a missing symbol was unloaded each time
    calls = [e["call"] for e in xlnk.log.entries()]
    assert calls.count("init") == calls.count("fini") >= 3
    assert any(xlnk.fake["full"] in line for line in maps2)
    assert not any(xlnk.fake["no_phys"] in line for line in maps2)
    assert xlnk.log.live() == 0 and xlnk.log.bad() == []


def test_address_bits_checks_the_cma_address(xlnk):
    """libcma's buffers lie where CMA put them: checked, refused with where to get low memory."""
    be = xlnk.open()
    with pytest.raises(MemoryError, match=r"(?s)xlnk backend got 5000 bytes at device addresses "
                                          r"0x.*above the limit 0xfff.*default CMA area"):
        be.allocate(5000, "u1", address_bits=12)
    assert be.info()["buffers"] == 0
    buf = be.allocate(5000, "u1", address_bits=64)
    assert buf.device_address > 0xFFF
