"""The udmabuf backend against an emulated u-dma-buf device.

PYNQ_ALLOC_SYSROOT points the backend at a temporary tree holding a regular
file as /dev/udmabufN (mmap of a file works like mmap of the device) and
sysfs attribute files under sys/class/u-dma-buf/NAME/. The backend's real code
runs; the tests read back what it wrote to the attribute files (sync_for_device,
sync_for_cpu, sync_offset, sync_size, sync_direction, sync_mode) and what landed
in the "device" file. Which sync interface the backend picks is chosen by the
fake: driver_version >= 1.4 gives the one-shot sysfs value, older versions the
stored-range attributes, and an LD_PRELOAD shim (tests/emul/udmabuf_ioctl_shim.c,
built here) answers the driver's ioctls (>= 4.7) on the device file and logs
every sync call."""
import errno
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import pynq_alloc
from emul_build import build_shared
from pynq_alloc import _pynq_alloc

HERE = Path(__file__).resolve().parent
SHIM_SOURCE = HERE / "emul" / "udmabuf_ioctl_shim.c"
PKG_ROOT = str(Path(pynq_alloc.__file__).resolve().parent.parent)
PHYS = 0x7000_0000
PAGE = os.sysconf("SC_PAGE_SIZE")
KB, MB, GB = 1 << 10, 1 << 20, 1 << 30


class FakeUdmabuf:
    """One emulated u-dma-buf device under a sysroot."""

    def __init__(self, root, name="udmabuf0", size=MB, phys=PHYS, version="5.5.0", coherent=0,
                 cls="u-dma-buf", sync_mode=1, sync_attrs=True, fill=None, node=True):
        self.root, self.name, self.size, self.phys = Path(root), name, size, phys
        self.dev = self.root / "dev" / name
        self.sys = self.root / "sys" / "class" / cls / name
        self.sys.mkdir(parents=True)
        if node:
            self.dev.parent.mkdir(exist_ok=True)
            with open(self.dev, "wb") as f:
                if fill is None:
                    f.truncate(size)  # sparse: a 4 GiB region costs nothing
                else:
                    f.write(bytes([fill]) * size)
        # formats of u-dma-buf.c's show functions: "%pad" (0x, zero padded), "%zu"
        self.put("phys_addr", f"0x{phys:016x}")
        self.put("size", str(size))
        self.put("sync_owner", "0")
        if version is not None:
            self.put("driver_version", version)
        if coherent is not None:
            self.put("dma_coherent", str(coherent))
        if sync_mode is not None:
            self.put("sync_mode", str(sync_mode))
        if sync_attrs:
            # the real driver starts with the whole region as the stored range
            for attr, value in [("sync_offset", "0x0"), ("sync_size", str(size)),
                                ("sync_direction", "0"), ("sync_for_cpu", "0"),
                                ("sync_for_device", "0")]:
                self.put(attr, value)

    def put(self, attr, text):
        (self.sys / attr).write_text(text + "\n")

    def attr(self, attr):
        # The backend keeps attributes open and writes each value at offset 0, as
        # sysfs wants; a regular file keeps the tail of a longer earlier value after
        # the newline, so the first line is what the driver would have parsed.
        return (self.sys / attr).read_text().split("\n")[0].strip()

    def num(self, attr):
        return int(self.attr(attr), 0)  # base 0, like the driver's kstrtoull

    def word(self, attr):
        """The one-shot value in sync_for_device/sync_for_cpu: (offset, size, direction),
        checked as u-dma-buf.c checks it (the driver refuses the write otherwise)."""
        w = self.num(attr)
        assert w & 1, f"{attr} holds {w:#x}, not a one-shot sync value"
        off, size, direction = w >> 32, w & 0xFFFF_FFF0, (w >> 2) & 3
        assert off + size <= self.size, f"{attr}: range beyond the region (EINVAL from the driver)"
        return off, size, direction

    def stored(self):
        off, size, direction = (self.num("sync_offset"), self.num("sync_size"),
                                self.num("sync_direction"))
        assert direction <= 2, "sync_direction above 2 (EINVAL from the driver)"
        return off, size, direction

    def read(self, offset, n):
        with open(self.dev, "rb") as f:
            f.seek(offset)
            return f.read(n)

    def write(self, offset, data):
        with open(self.dev, "r+b") as f:
            f.seek(offset)
            f.write(data)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("PYNQ_ALLOC_SYSROOT", str(tmp_path))
    return tmp_path


@pytest.fixture
def fake(root):
    return FakeUdmabuf(root)


@pytest.fixture
def be(fake):
    b = pynq_alloc.open_backend("udmabuf", cacheable=True)
    yield b
    b.close()


@pytest.fixture(scope="session")
def shim(tmp_path_factory):
    out = tmp_path_factory.mktemp("udmabuf_shim") / "udmabuf_ioctl_shim.so"
    return build_shared(out, SHIM_SOURCE, "-Werror", "-ldl", what="the u-dma-buf ioctl shim")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNQ_ALLOC_")}
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(code, cwd, **env):
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=clean_env(**env),
                          cwd=cwd, capture_output=True, text=True)


def run_ioctl(code, fake, shim, cwd, **env):
    """code under the ioctl shim; returns (process, [(who, offset, size, dir, how), ...])."""
    log = Path(cwd) / "sync.log"
    if log.exists():
        log.unlink()
    # after what is preloaded already (a sanitizer runtime must stay first)
    emul = dict(LD_PRELOAD=":".join(filter(None, [os.environ.get("LD_PRELOAD"), shim])),
                UDMABUF_EMUL_DEV=fake.dev, UDMABUF_EMUL_SIZE=fake.size, UDMABUF_EMUL_PHYS=fake.phys,
                UDMABUF_EMUL_LOG=log, PYNQ_ALLOC_SYSROOT=fake.root, UDMABUF_EMUL_SYSDIR=fake.sys)
    emul.update(env)
    r = run(code, cwd, **emul)
    lines = log.read_text().splitlines() if log.exists() else []
    rows = [(w[0], int(w[1]), int(w[2]), int(w[3]), w[4]) for w in map(str.split, lines)]
    return r, rows


# views of a (16, 256) uint8 buffer and the line-rounded byte range each one syncs
VIEWS = {
    "whole": (lambda b: b, 0, 4096),
    "2-D slice": (lambda b: b[2:4, 8:24], 512, 320),  # bytes [520, 792) -> [512, 832)
    "column": (lambda b: b[:, 5], 0, 3904),  # [5, 3846) -> [0, 3904)
    "strided": (lambda b: b.reshape(-1)[100:2000:300], 64, 1856),  # [100, 1901) -> [64, 1920)
    "reversed": (lambda b: b[::-1, ::-2], 0, 4096),  # [1, 4096) -> [0, 4096)
    "u4 rows": (lambda b: b.view("u4")[1:3], 256, 512),  # [256, 768)
    "one byte": (lambda b: b[15, 255:], 4032, 64),  # [4095, 4096) -> [4032, 4096)
}


# ------------------------------------------------------------ allocation, data

def test_addresses_data_and_zeroing(root):
    fake = FakeUdmabuf(root, fill=0xAA)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        a = be.allocate(1000, "u1")
        b = be.allocate((4, 4), "u4")
        for buf in (a, b):
            off = buf.device_address - PHYS
            assert 0 <= off < fake.size and off % PAGE == 0  # the default align is a page
            assert buf.physical_address == buf.device_address
            assert not buf.any(), "a fresh buffer is zeroed"
            assert fake.read(off, buf.nbytes) == bytes(buf.nbytes)
        a_off, b_off = a.device_address - PHYS, b.device_address - PHYS
        assert a_off + 1000 <= b_off or b_off + 64 <= a_off
        a[:] = np.arange(1000) % 251
        b[:] = np.arange(16).reshape(4, 4) * 0x01010101
        assert fake.read(a_off, 1000) == (np.arange(1000) % 251).astype("u1").tobytes()
        assert fake.read(b_off, 64) == b.tobytes()
        v = a[10:]
        assert v.device_address == a.device_address + 10
        info = be.info()
        assert info["total"] == MB and info["buffers"] == 2
        assert info["free"] == MB - info["used"] and info["coherent"] is False
        assert be.name == "udmabuf" and not be.coherent


def test_data_written_into_the_device_shows_in_the_buffer(be, fake):
    buf = be.allocate(64, "u1")
    fake.write(buf.device_address - PHYS, bytes(range(64)))  # "DMA" into the buffer
    buf.invalidate()
    assert buf.tolist() == list(range(64))


def test_region_full_is_a_memory_error(be, fake):
    big = be.allocate(MB, "u1")
    with pytest.raises(MemoryError, match=r"(?s)u-dma-buf .*udmabuf0 cannot allocate.*larger"):
        be.allocate(64, "u1")
    del big
    assert be.info()["used"] == 0
    be.allocate(MB - 64, "u1", align=64)


def test_region_size_need_not_be_a_page_multiple(root):
    FakeUdmabuf(root, size=10_000)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        assert be.info()["total"] == 10_000 // 64 * 64
        buf = be.allocate(9_000, "u1", align=64)
        buf[:] = 3
        buf.flush()


# --------------------------------------------------------- one-shot sysfs path

def test_fresh_buffer_is_cleaned_with_a_one_shot_value(be, fake):
    buf = be.allocate(1000, "u1")
    off = buf.device_address - PHYS
    assert fake.word("sync_for_device") == (off, 1024, 1)
    assert fake.attr("sync_for_cpu") == "0"
    # the one-shot value leaves the stored range alone
    assert fake.stored() == (0, fake.size, 0)


@pytest.mark.parametrize("view", VIEWS)
def test_one_shot_ranges_of_views(be, fake, view):
    make, rel, size = VIEWS[view]
    buf = be.allocate((16, 256), "u1")
    base = buf.device_address - PHYS
    v = make(buf)
    v.flush()
    assert fake.word("sync_for_device") == (base + rel, size, 1)
    v.invalidate()
    assert fake.word("sync_for_cpu") == (base + rel, size, 2)
    assert fake.stored() == (0, fake.size, 0)


def test_one_shot_value_is_what_the_driver_parses(be, fake):
    """Hex with 0x (the driver parses base 0 since 1.4): leading zeros stay harmless."""
    buf = be.allocate(128, "u1", align=64)
    buf[64:].flush()
    text = fake.attr("sync_for_device")
    assert text.startswith("0x") and len(text) == 18
    off = buf.device_address - PHYS + 64
    assert int(text, 16) == off << 32 | 64 | 1 << 2 | 1


# ------------------------------------------------------- stored-range sysfs path

@pytest.mark.parametrize("version", ["1.3.1", None])
@pytest.mark.parametrize("view", ["whole", "2-D slice", "strided", "one byte"])
def test_stored_range_for_old_drivers(root, version, view):
    fake = FakeUdmabuf(root, version=version, cls="udmabuf")  # the old module's class
    make, rel, size = VIEWS[view]
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        buf = be.allocate((16, 256), "u1")
        base = buf.device_address - PHYS
        assert fake.stored() == (base, 4096, 1) and fake.attr("sync_for_device") == "1"
        fake.put("sync_for_device", "0")
        v = make(buf)
        v.flush()
        assert fake.stored() == (base + rel, size, 1)
        # plain decimal: drivers before 1.4 parse these attributes base 10
        assert (fake.attr("sync_offset"), fake.attr("sync_size")) == (str(base + rel), str(size))
        assert fake.attr("sync_for_device") == "1" and fake.attr("sync_for_cpu") == "0"
        v.invalidate()
        assert fake.stored() == (base + rel, size, 2)
        assert fake.attr("sync_for_cpu") == "1"


def test_stored_range_is_put_back_at_close(root):
    """The stored range is shared device state: it is read at open (sync_offset reads
    as hex, as the driver shows it) and restored at close."""
    fake = FakeUdmabuf(root, version="1.3.1")
    fake.put("sync_offset", "0x1f000")
    fake.put("sync_size", "8192")
    fake.put("sync_direction", "2")
    be = pynq_alloc.open_backend("udmabuf", cacheable=True)
    buf = be.allocate(64, "u1")
    buf.flush()
    assert fake.stored() == (buf.device_address - PHYS, 64, 1)
    del buf
    be.close()
    assert fake.stored() == (0x1F000, 8192, 2)
    assert fake.attr("sync_offset") == str(0x1F000)


@pytest.mark.skipif(sys.maxsize < 2**32, reason="a 4 GiB region cannot be mapped by a 32-bit process")
def test_offsets_beyond_4_gib_use_the_stored_range(root):
    """The one-shot value holds a 32-bit offset: a block at 4 GiB falls back to
    sync_offset/sync_size/sync_direction (sparse 4 GiB region, 1 GiB alignment)."""
    fake = FakeUdmabuf(root, size=4 * GB + MB)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        bufs = [be.allocate(64, "u1", align=GB) for _ in range(5)]
        offs = [b.device_address - PHYS for b in bufs]
        assert offs == [0, GB, 2 * GB, 3 * GB, 4 * GB]
        assert fake.stored() == (4 * GB, 64, 1)  # the clean of the fresh block
        bufs[4][:] = 9
        assert fake.read(4 * GB, 64) == bytes([9]) * 64
        bufs[3][32:].flush()
        assert fake.word("sync_for_device") == (3 * GB, 64, 1)
        bufs[4][32:].invalidate()
        assert fake.stored() == (4 * GB, 64, 2) and fake.attr("sync_for_cpu") == "1"
        del bufs  # the backend closes when its last buffer is gone
    assert fake.stored() == (0, fake.size, 0)  # put back at close


# ------------------------------------------------------------------ ioctl path

IOCTL_CODE = """
import json, pynq_alloc
be = pynq_alloc.open_backend('udmabuf', cacheable=True)
buf = be.allocate((16, 256), 'u1')
views = {views}
base = buf.device_address - {phys}
for name in views:
    v = eval(views[name])
    v.flush()
    v.invalidate()
print(json.dumps(base))
"""


def test_ioctl_sync_ranges_of_views(fake, shim, tmp_path):
    exprs = {"whole": "buf", "2-D slice": "buf[2:4, 8:24]", "column": "buf[:, 5]",
             "strided": "buf.reshape(-1)[100:2000:300]", "reversed": "buf[::-1, ::-2]",
             "u4 rows": "buf.view('u4')[1:3]", "one byte": "buf[15, 255:]"}
    r, log = run_ioctl(IOCTL_CODE.format(views=repr(exprs), phys=PHYS), fake, shim, tmp_path)
    assert r.returncode == 0, r.stderr
    base = json.loads(r.stdout)
    want = [("device", base, 4096, 1, "word")]  # the fresh buffer is cleaned
    for name in exprs:
        _, rel, size = VIEWS[name]
        want += [("device", base + rel, size, 1, "word"), ("cpu", base + rel, size, 2, "word")]
    assert log == want
    # the sysfs sync attributes are not used when the driver has ioctls
    assert fake.attr("sync_for_device") == "0" and fake.stored() == (0, fake.size, 0)


@pytest.mark.skipif(sys.maxsize < 2**32, reason="a 4 GiB region cannot be mapped by a 32-bit process")
def test_ioctl_beyond_4_gib_uses_set_sync(root, shim, tmp_path):
    fake = FakeUdmabuf(root, size=4 * GB + MB)
    code = """
import pynq_alloc
be = pynq_alloc.open_backend('udmabuf', cacheable=True)
bufs = [be.allocate(64, 'u1', align=1 << 30) for _ in range(5)]
bufs[4].flush()
bufs[4][1:2].invalidate()
"""
    r, log = run_ioctl(code, fake, shim, tmp_path)
    assert r.returncode == 0, r.stderr
    assert log[-3:] == [("device", 4 * GB, 64, 1, "args"), ("device", 4 * GB, 64, 1, "args"),
                        ("cpu", 4 * GB, 64, 2, "args")]
    assert all(row[4] == "word" for row in log[:-3])


@pytest.mark.skipif(sys.maxsize < 2**32, reason="a 4 GiB region cannot be mapped by a 32-bit process")
def test_ioctl_set_sync_range_is_put_back_at_close(root, shim, tmp_path):
    """SET_SYNC stores its offset, size and direction as the driver's sync range
    (u-dma-buf.c: the same state the sysfs attributes show); what was there at
    open is put back at close, as for the sysfs path."""
    fake = FakeUdmabuf(root, size=4 * GB + MB)
    fake.put("sync_offset", "0x1f000")
    fake.put("sync_size", "8192")
    fake.put("sync_direction", "2")
    code = f"""
import pynq_alloc
be = pynq_alloc.open_backend('udmabuf', cacheable=True)
bufs = [be.allocate(64, 'u1', align=1 << 30) for _ in range(5)]
bufs[4].invalidate()
with open({str(fake.sys / "sync_offset")!r}) as f:
    print('during', int(f.read(), 0))
del bufs
be.close()
"""
    r, log = run_ioctl(code, fake, shim, tmp_path)
    assert r.returncode == 0, r.stderr
    assert log[-1] == ("cpu", 4 * GB, 64, 2, "args")
    assert f"during {4 * GB}" in r.stdout  # the driver's range was overwritten meanwhile
    assert fake.stored() == (0x1F000, 8192, 2)


# ------------------------------------------- sysfs attributes as the driver treats them
# Under the shim with UDMABUF_EMUL_NO_IOCTL (a driver without the ioctl interface),
# writes to the fake's attributes are the driver's stores: parsed, range-checked,
# syncing at once and resetting the sync_for_* value to 0 (see the shim's header).

SYSFS_CODE = """
import pynq_alloc
be = pynq_alloc.open_backend('udmabuf', cacheable=True)
buf = be.allocate((16, 256), 'u1')
print('base', buf.device_address)
buf[2:4, 8:24].flush()
buf[::-1, ::-2].invalidate()
del buf
be.close()
"""


def test_sysfs_one_shot_writes_are_parsed_and_reset_by_the_driver(root, shim, tmp_path):
    fake = FakeUdmabuf(root, version="3.2.4")
    r, log = run_ioctl(SYSFS_CODE, fake, shim, tmp_path, UDMABUF_EMUL_NO_IOCTL=1)
    assert r.returncode == 0, r.stderr
    base = int(r.stdout.split()[1]) - PHYS
    assert log == [("device", base, 4096, 1, "sysfs-word"), ("device", base + 512, 320, 1, "sysfs-word"),
                   ("cpu", base, 4096, 2, "sysfs-word")]
    # what the driver shows afterwards: done, reset to 0; the stored range untouched
    assert fake.attr("sync_for_device") == "0" and fake.attr("sync_for_cpu") == "0"
    assert fake.attr("sync_owner") == "0" and fake.stored() == (0, fake.size, 0)


def test_sysfs_stored_range_of_an_old_driver(root, shim, tmp_path):
    # 1.3.1 parses base 10 and has no one-shot value: offset, size, direction, then 1
    fake = FakeUdmabuf(root, version="1.3.1", cls="udmabuf")
    fake.put("sync_offset", "0x1f000")
    r, log = run_ioctl(SYSFS_CODE, fake, shim, tmp_path, UDMABUF_EMUL_NO_IOCTL=1)
    assert r.returncode == 0, r.stderr
    base = int(r.stdout.split()[1]) - PHYS
    assert log == [("device", base, 4096, 1, "sysfs-stored"),
                   ("device", base + 512, 320, 1, "sysfs-stored"),
                   ("cpu", base, 4096, 2, "sysfs-stored")]
    assert fake.attr("sync_for_cpu") == "0" and fake.attr("sync_for_device") == "0"
    assert fake.stored() == (0x1F000, fake.size, 0)  # put back at close, as shown by the driver
    assert fake.attr("sync_offset") == "0x1f000"


def test_sysfs_stores_check_what_they_are_given(root, shim, tmp_path):
    """The emulation refuses what the driver refuses (so a wrong value from the
    backend would fail its tests), and a failed sync leaves its value set."""
    fake = FakeUdmabuf(root, version="3.2.4")
    code = f"""
import errno, os
d = {str(fake.sys)!r}
def put(attr, text):
    fd = os.open(os.path.join(d, attr), os.O_WRONLY)
    try:
        os.pwrite(fd, text.encode(), 0)
        return 0
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)
print(put('sync_direction', '3\\n'), put('sync_mode', '8'), put('sync_size', 'abc'),
      put('sync_offset', '-1'), put('size', '5'),
      put('sync_for_device', hex(({MB} - 64) << 32 | 128 | 1 << 2 | 1)),
      put('sync_direction', '2\\n'), put('sync_size', '0x40'))
"""
    r, log = run_ioctl(code, fake, shim, tmp_path, UDMABUF_EMUL_NO_IOCTL=1)
    assert r.returncode == 0, r.stderr
    E = errno.EINVAL
    assert [int(x) for x in r.stdout.split()] == [E, E, E, E, errno.EACCES, E, 0, 0]
    assert log == []
    assert int(fake.attr("sync_for_device"), 0) != 0  # the failed value stays
    assert (fake.attr("sync_direction"), fake.attr("sync_size")) == ("2", "64")


def test_sysfs_sync_refused_by_the_driver_is_a_clear_error(root, shim, tmp_path):
    fake = FakeUdmabuf(root, version="3.2.4")
    code = """
import pynq_alloc
be = pynq_alloc.open_backend('udmabuf')
try:
    be.allocate(8192, 'u1')  # its first clean passes the end the driver knows
except Exception as exc:
    print(type(exc).__name__, exc)
print('buffers', be.info()['buffers'])
"""
    r, log = run_ioctl(code, fake, shim, tmp_path, UDMABUF_EMUL_NO_IOCTL=1,
                       UDMABUF_EMUL_SIZE=4096)  # the driver thinks the region is one page
    assert r.returncode == 0, r.stderr
    assert "Invalid argument" in r.stdout and "sync_for_device" in r.stdout, r.stdout
    assert "buffers 0" in r.stdout and log == []


def test_ioctl_failure_is_reported_and_nothing_leaks(fake, shim, tmp_path):
    code = """
import pynq_alloc
be = pynq_alloc.open_backend('udmabuf', cacheable=True)
try:
    be.allocate(64)
except OSError as e:
    print(e.errno, e)
print(be.info()['buffers'], be.info()['used'])
"""
    r, log = run_ioctl(code, fake, shim, tmp_path, UDMABUF_EMUL_FAIL=5)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.startswith("5 ") and "sync ioctl (for device" in first
    assert second == "0 0" and log == []


def test_ioctl_write_combine_purges_the_cached_lines_first(fake, shim, tmp_path):
    code = """
import pynq_alloc
be = pynq_alloc.open_backend('udmabuf', cacheable=True)
a = be.allocate(100, 'u1', align=64)
b = be.allocate(100, 'u1', cacheable=False)
print(a.device_address - {phys}, b.device_address - {phys})
b.flush()
""".format(phys=PHYS)
    r, log = run_ioctl(code, fake, shim, tmp_path)
    assert r.returncode == 0, r.stderr
    a_off, b_off = map(int, r.stdout.split())
    assert log == [("device", a_off, 128, 1, "word"),
                   ("device", b_off, PAGE, 1, "word"), ("cpu", b_off, PAGE, 2, "word")]


# ---------------------------------------------------------------- coherency

def test_dma_coherent_device_needs_no_sync(root):
    fake = FakeUdmabuf(root, coherent=1)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        assert be.coherent and be.info()["coherent"]
        buf = be.allocate((16, 256), "u1")
        wc = be.allocate(100, "u1", cacheable=False)
        assert buf.coherent and wc.coherent
        buf[:] = 1
        buf.flush()
        buf[2:4].invalidate()
        wc.flush()
    for attr in ("sync_for_device", "sync_for_cpu"):
        assert fake.attr(attr) == "0"
    assert fake.attr("sync_mode") == "1"  # served from the cached (coherent) mapping


def test_sync_always_write_combine_makes_every_buffer_coherent(root):
    fake = FakeUdmabuf(root, sync_mode=6)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        buf = be.allocate(64)
        assert buf.coherent and be.coherent
        buf.flush()
    assert fake.attr("sync_for_device") == "0" and fake.attr("sync_mode") == "6"


def test_sync_always_device_memory_is_refused(root):
    FakeUdmabuf(root, sync_mode=5)
    with pytest.raises(ValueError, match=r"(?s)sync-always.*Device memory.*write 6"):
        pynq_alloc.open_backend("udmabuf", cacheable=True)


def fd_flags(path):
    """flags of this process's open descriptions of path (from /proc/self/fdinfo)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    found.append(int(f.read().split("flags:")[1].split()[0], 8))
        except OSError:
            pass
    return found


def maps_of(path):
    rows = []
    with open("/proc/self/maps") as f:
        for line in f:
            words = line.split()
            if len(words) >= 6 and words[5] == str(path):
                lo, hi = (int(x, 16) for x in words[0].split("-"))
                rows.append((lo, hi, int(words[2], 16)))
    return rows


def test_cacheable_false_is_write_combine_and_coherent(be, fake):
    cached = be.allocate(100, "u1", align=64)
    assert fake.attr("sync_mode") == "1"
    wc = be.allocate(100, "u1", cacheable=False)
    off = wc.device_address - PHYS
    assert wc.coherent and wc.cacheable is False and cached.cacheable is True
    assert off % PAGE == 0
    # the driver reads sync_mode at mmap time: 2 (write-combine), never 1 (Device memory)
    assert fake.attr("sync_mode") == "2"
    # the page was cleaned and invalidated before its write-combine mapping replaced it
    assert fake.word("sync_for_device") == (off, PAGE, 1)
    assert fake.word("sync_for_cpu") == (off, PAGE, 2)
    # one cached and one O_SYNC description of the device are open
    flags = fd_flags(fake.dev)
    assert len(flags) == 2 and sum(bool(f & os.O_SYNC) for f in flags) == 1
    # the block's page is its own mapping, at the block's offset in the device
    va = wc.virtual_address
    assert (va, va + PAGE, off) in maps_of(fake.dev)
    wc[:] = 5
    assert fake.read(off, 100) == bytes([5]) * 100
    before = fake.attr("sync_for_device")
    wc.flush()
    wc.invalidate()
    assert fake.attr("sync_for_device") == before
    cached[:] = 1
    assert fake.read(cached.device_address - PHYS, 100) == bytes([1]) * 100


def test_write_combine_pages_return_to_cached_use(be, fake):
    wc = be.allocate(PAGE, "u1", cacheable=False)
    off, va = wc.device_address - PHYS, wc.virtual_address
    wc[:] = 0x55
    del wc
    # the same pages serve a cached block again: zeroed and cleaned through the cached mapping
    c = be.allocate(PAGE, "u1")
    assert c.device_address - PHYS == off and c.virtual_address == va
    assert not c.any() and fake.read(off, PAGE) == bytes(PAGE)
    assert fake.word("sync_for_device") == (off, PAGE, 1)
    c[:] = 2
    c.flush()
    assert fake.read(off, PAGE) == bytes([2]) * PAGE
    wc2 = be.allocate(PAGE, "u1", cacheable=False)  # and back again
    wc2[:] = 3
    assert fake.read(wc2.device_address - PHYS, PAGE) == bytes([3]) * PAGE


def test_sync_mode_is_put_back_at_close(root):
    fake = FakeUdmabuf(root, sync_mode=3)
    be = pynq_alloc.open_backend("udmabuf", cacheable=True)
    buf = be.allocate(10, cacheable=False)
    assert fake.attr("sync_mode") == "2"
    del buf
    be.close()
    assert fake.attr("sync_mode") == "3"
    assert fd_flags(fake.dev) == []


def test_write_combine_needs_sync_mode(root):
    FakeUdmabuf(root, sync_mode=None)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        with pytest.raises(NotImplementedError, match="no sync_mode attribute"):
            be.allocate(10, cacheable=False)
        assert be.info()["buffers"] == 0
        be.allocate(10)


def test_default_is_write_combine_where_the_driver_can_map_it(root):
    """cacheable=None is PYNQ's non-cacheable: write-combine pages (sync_mode), coherent,
    never synced; without sync_mode it falls back to cached memory and says so."""
    fake = FakeUdmabuf(root)
    with pynq_alloc.open_backend("udmabuf") as be:
        assert be.info()["coherent"] is True and be.info()["cacheable"] is False
        buf = be.allocate(100, "u1")
        assert buf.coherent and not buf.cacheable
        assert buf.device_address % PAGE == 0  # write-combine blocks own whole pages
        marks = fake.attr("sync_for_device"), fake.attr("sync_for_cpu")
        buf[:] = 6
        buf.flush()
        buf.invalidate()
        assert (fake.attr("sync_for_device"), fake.attr("sync_for_cpu")) == marks  # no sync
        assert fake.read(buf.device_address - PHYS, 100) == bytes([6]) * 100
        cached = be.allocate(100, "u1", cacheable=True)
        assert not cached.coherent
        del buf, cached
    FakeUdmabuf(root, name="udmabuf1", sync_mode=None)
    with pynq_alloc.open_backend("udmabuf:udmabuf1") as be:
        assert be.info()["coherent"] is False  # truthful: cached memory
        assert not be.allocate(10).coherent


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                    reason="user-space cache maintenance exists only on x86 and AArch64")
def test_driver_without_sync_attributes_uses_user_space_maintenance(root):
    fake = FakeUdmabuf(root, version=None, coherent=None, sync_attrs=False, sync_mode=None)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        buf = be.allocate(256, "u1")
        assert not buf.coherent
        buf[:] = 4
        buf.flush()
        buf.invalidate()
        assert fake.read(buf.device_address - PHYS, 256) == bytes([4]) * 256
    assert not (fake.sys / "sync_for_device").exists()


def test_rejected_sync_write_is_an_error(root):
    """The driver refuses a value (here: the attribute is /dev/full, writes fail with ENOSPC)."""
    fake = FakeUdmabuf(root)
    (fake.sys / "sync_for_device").unlink()
    (fake.sys / "sync_for_device").symlink_to("/dev/full")
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        with pytest.raises(OSError, match=r"writing '0x[0-9a-f]{16}' to .*sync_for_device failed"):
            be.allocate(64)
        assert be.info()["buffers"] == 0 and be.info()["used"] == 0


# ------------------------------------------------------------------ spec forms

@pytest.mark.parametrize("spec", ["udmabuf", "udmabuf:/dev/udmabuf1", "udmabuf:udmabuf1"])
def test_spec_forms(root, spec):
    FakeUdmabuf(root, name="udmabuf0", phys=0x1000_0000)
    FakeUdmabuf(root, name="udmabuf1", phys=0x2000_0000)
    FakeUdmabuf(root, name="udmabuf10", phys=0x3000_0000)
    with pynq_alloc.open_backend(spec) as be:
        want = 0x1000_0000 if spec == "udmabuf" else 0x2000_0000
        assert be.allocate(4).device_address == want
        assert be.spec == spec


def test_named_device_from_the_device_tree(root):
    FakeUdmabuf(root, name="video-frames", phys=0x3800_0000)
    with pynq_alloc.open_backend("udmabuf:video-frames") as be:
        assert be.allocate(4).device_address == 0x3800_0000
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        assert be.allocate(4).device_address == 0x3800_0000


def test_devices_are_tried_in_natural_order(root):
    FakeUdmabuf(root, name="udmabuf10", phys=0x3000_0000)
    FakeUdmabuf(root, name="udmabuf2", phys=0x2000_0000)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        assert be.allocate(4).device_address == 0x2000_0000


# ------------------------------------------------------------------ error paths

def test_no_device(root):
    with pytest.raises(FileNotFoundError, match=r"no u-dma-buf device.*modprobe u-dma-buf "
                       r"udmabuf0=0x1000000.*device-tree node"):
        pynq_alloc.open_backend("udmabuf", cacheable=True)
    rows = {r[0]: r for r in _pynq_alloc._probe()}
    assert rows["udmabuf"][1] is False and rows["udmabuf"][2] is True
    assert "modprobe u-dma-buf" in rows["udmabuf"][3]


def test_unknown_names(root):
    FakeUdmabuf(root)
    with pytest.raises(FileNotFoundError, match="no u-dma-buf device named 'udmabuf7'"):
        pynq_alloc.open_backend("udmabuf:udmabuf7")
    with pytest.raises(FileNotFoundError, match="no u-dma-buf device /dev/udmabuf7"):
        pynq_alloc.open_backend("udmabuf:/dev/udmabuf7")
    (root / "dev" / "udmabuf").write_bytes(b"")  # Linux's own udmabuf driver
    with pytest.raises(OSError, match="memfd-to-dma-buf driver, not ikwzm's u-dma-buf"):
        pynq_alloc.open_backend("udmabuf:/dev/udmabuf")
    with pytest.raises(FileNotFoundError):
        pynq_alloc.open_backend("udmabuf:..")


def test_sysfs_entry_without_device_node(root):
    FakeUdmabuf(root, node=False)
    with pytest.raises(FileNotFoundError, match="udev"):
        pynq_alloc.open_backend("udmabuf", cacheable=True)
    reason = {r[0]: r[3] for r in _pynq_alloc._probe()}["udmabuf"]
    assert "is in sysfs but" in reason and "udev" in reason


def test_garbage_in_sysfs(root):
    fake = FakeUdmabuf(root)
    fake.put("phys_addr", "zzz")
    with pytest.raises(OSError, match=r"phys_addr holds 'zzz', not a number"):
        pynq_alloc.open_backend("udmabuf", cacheable=True)


def test_options_are_refused(fake):
    with pytest.raises(ValueError, match="the udmabuf backend has no option 'size'"):
        pynq_alloc.open_backend("udmabuf", size=4096)


def hold_lock(path):
    """Another process holding an exclusive flock on path, until its stdin closes."""
    code = ("import fcntl, sys\nf = open(sys.argv[1], 'rb')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\nsys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def release(p):
    p.stdin.close()
    p.wait()
    p.stdout.close()


def test_busy_device_names_the_other_process(fake):
    p = hold_lock(fake.dev)
    try:
        with pytest.raises(BlockingIOError, match=rf"in use by process {p.pid} .*flock"):
            pynq_alloc.open_backend("udmabuf", cacheable=True)
        reason = {r[0]: r for r in _pynq_alloc._probe()}["udmabuf"]
        assert reason[1] is False and f"process {p.pid}" in reason[3]
    finally:
        release(p)
    with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
        be.allocate(4)


def test_busy_first_device_moves_on_to_the_next(root):
    first = FakeUdmabuf(root, name="udmabuf0", phys=0x1000_0000)
    FakeUdmabuf(root, name="udmabuf1", phys=0x2000_0000)
    p = hold_lock(first.dev)
    try:
        with pynq_alloc.open_backend("udmabuf", cacheable=True) as be:
            assert be.allocate(4).device_address == 0x2000_0000
            with pytest.raises(BlockingIOError, match=rf"process {p.pid}"):
                pynq_alloc.open_backend("udmabuf:udmabuf0")
            # both busy now: the first device's reason is reported
            with pytest.raises(BlockingIOError, match=rf"udmabuf0 is in use by process {p.pid}"):
                pynq_alloc.open_backend("udmabuf", cacheable=True)
    finally:
        release(p)


def test_second_backend_in_the_same_process(be):
    pid = os.getpid()
    with pytest.raises(BlockingIOError, match=rf"already in use by this process \(pid {pid}\)"):
        pynq_alloc.open_backend("udmabuf:udmabuf0")
    be.allocate(4)


def test_lock_is_released_at_close(fake):
    be = pynq_alloc.open_backend("udmabuf", cacheable=True)
    be.close()
    p = hold_lock(fake.dev)  # would block if the flock were still held
    release(p)


PERM_CODE = """
import os, pynq_alloc
from pynq_alloc import _pynq_alloc
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
try:
    pynq_alloc.open_backend('udmabuf', cacheable=True)
except PermissionError as e:
    print('PermissionError', e)
print({r[0]: r[3] for r in _pynq_alloc._probe()}['udmabuf'])
"""


@pytest.mark.parametrize("what", ["device node", "sysfs attribute"])
def test_permission_denied(what):
    """As root every open succeeds, so the check runs as user nobody in a subprocess
    (as a normal user it simply runs with the file modes)."""
    top = Path(tempfile.mkdtemp(prefix="pa-udmabuf-perm-"))
    try:
        top.chmod(0o755)
        fake = FakeUdmabuf(top)
        if what == "device node":
            fake.dev.chmod(0o600)
        else:
            fake.dev.chmod(0o666)
            (fake.sys / "sync_for_device").chmod(0o644)
        if os.geteuid() == 0:
            r = run(PERM_CODE, top, PYNQ_ALLOC_SYSROOT=top)
        else:
            r = run(PERM_CODE.replace("os.set", "# os.set"), top, PYNQ_ALLOC_SYSROOT=top)
        assert r.returncode == 0, r.stderr
        err, reason = r.stdout.splitlines()
        assert err.startswith("PermissionError") and "Permission denied" in err
        assert "run as root or add a udev rule" in err and 'SUBSYSTEM=="u-dma-buf"' in err
        if what == "device node":
            assert "open(" in err and "udmabuf0) failed" in err
            assert "Permission denied" in reason and "udev rule" in reason
        else:
            assert "sync_for_device) failed" in err
    finally:
        shutil.rmtree(top)


# ------------------------------------------------- selection and diagnostics

def test_selected_by_environment(root, tmp_path):
    FakeUdmabuf(root, name="udmabuf0", phys=0x1000_0000)
    FakeUdmabuf(root, name="udmabuf1", phys=0x2000_0000)
    code = ("import pynq_alloc as p\nb = p.allocate(16, 'u1')\n"
            "print(p.default_backend().spec, hex(b.device_address))")
    for spec, want in [("udmabuf", "0x10000000"), ("udmabuf:udmabuf1", "0x20000000")]:
        r = run(code, tmp_path, PYNQ_ALLOC_SYSROOT=root, PYNQ_ALLOC_BACKEND=spec)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [spec, want]


def test_default_backend_on_a_board_with_u_dma_buf(root, tmp_path):
    (root / "proc" / "device-tree").mkdir(parents=True)
    FakeUdmabuf(root)
    code = ("import pynq_alloc as p\nb = p.allocate(16, 'u1')\n"
            "print(p.default_backend().name, hex(b.device_address), b.coherent)")
    r = run(code, tmp_path, PYNQ_ALLOC_SYSROOT=root)
    assert r.returncode == 0, r.stderr
    # PYNQ's default: non-cacheable (write-combine), so coherent
    assert r.stdout.split() == ["udmabuf", hex(PHYS), "True"]
    assert "Warning" not in r.stderr
    # PYNQ_ALLOC_CACHEABLE=1: the default backend hands out cached buffers
    r = run(code, tmp_path, PYNQ_ALLOC_SYSROOT=root, PYNQ_ALLOC_CACHEABLE=1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["udmabuf", hex(PHYS), "False"]


def test_board_without_device_reports_why(root, tmp_path):
    (root / "proc" / "device-tree").mkdir(parents=True)
    r = run("import pynq_alloc as p; p.allocate(4)", tmp_path, PYNQ_ALLOC_SYSROOT=root)
    assert r.returncode != 0
    assert "udmabuf: no u-dma-buf device" in r.stderr and "modprobe u-dma-buf" in r.stderr


def test_info_reports_the_device(root, tmp_path):
    FakeUdmabuf(root, size=4 * MB, phys=0x3C00_0000)
    r = subprocess.run([sys.executable, "-m", "pynq_alloc", "info", "--json"],
                       env=clean_env(PYNQ_ALLOC_SYSROOT=root), cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    row = {x["backend"]: x for x in json.loads(r.stdout)}["udmabuf"]
    assert row["usable"] is True and row["board"] is True
    assert row["reason"].startswith("usable: ") and "0x3c000000" in row["reason"]
    assert "5.5.0" in row["reason"] and "not coherent" in row["reason"]
    assert row["total"] == 4 * MB and row["free"] == 4 * MB
    # default buffers are write-combine (coherent); the backend's default is not cacheable
    assert row["coherent"] is True and row["cacheable"] is False


# ------------------------------------------------------------ nothing leaks

def sysroot_fds(root):
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(root))
        except OSError:
            pass
    return n


def sysroot_maps(root):
    with open("/proc/self/maps") as f:
        return sum(str(root) in line for line in f)


def test_every_fd_and_mapping_is_released(root):
    fake = FakeUdmabuf(root, version="1.3.1")  # stored range: five attribute fds
    FakeUdmabuf(root, name="udmabuf1")
    fds = len(os.listdir("/proc/self/fd"))
    assert sysroot_fds(root) == 0 and sysroot_maps(root) == 0
    for _ in range(3):
        be = pynq_alloc.open_backend("udmabuf", cacheable=True)
        assert sysroot_fds(root) == 1 + 5 and sysroot_maps(root) == 1
        bufs = [be.allocate(1000, "u1"), be.allocate(100, "u1", cacheable=False),
                be.allocate((8, 8), "u4", cacheable=False), be.allocate(3 * PAGE, "u1")]
        assert sysroot_fds(root) == 1 + 5 + 1  # the write-combine description
        for b in bufs:
            b[:] = 1
            b.flush()
            b[1:3].invalidate()
        bufs[1].freebuffer()
        del b, bufs
        assert be.info()["buffers"] == 0
        be.close()
        assert sysroot_fds(root) == 0 and sysroot_maps(root) == 0
        assert len(os.listdir("/proc/self/fd")) == fds
    # error paths release what they took, too
    p = hold_lock(fake.dev)
    try:
        with pytest.raises(BlockingIOError):
            pynq_alloc.open_backend("udmabuf:udmabuf0")
        with pytest.raises(FileNotFoundError):
            pynq_alloc.open_backend("udmabuf:udmabuf9")
        FakeUdmabuf(root, name="bad", sync_mode=5)
        with pytest.raises(ValueError):
            pynq_alloc.open_backend("udmabuf:bad")
    finally:
        release(p)
    assert sysroot_fds(root) == 0 and sysroot_maps(root) == 0
    assert len(os.listdir("/proc/self/fd")) == fds


# ------------------------------------------------------------ address_bits

def test_address_bits_places_blocks_below_the_limit(root):
    """A region straddling 4 GiB: address_bits=32 blocks land below it, others anywhere."""
    FakeUdmabuf(root, size=2 * MB, phys=(1 << 32) - MB)
    with pynq_alloc.open_backend("udmabuf") as be:
        info = be.info()
        assert (info["lowest_address"], info["highest_address"]) == ((1 << 32) - MB,
                                                                      (1 << 32) + MB - 1)
        high = be.allocate(512 * KB, "u1")  # the first fit: the low end
        low = be.allocate(256 * KB, "u1", address_bits=32)
        assert low.device_address + low.nbytes <= 1 << 32
        with pytest.raises(MemoryError, match=r"(?s)no \d+ free bytes below 0x100000000.*"
                                               r"reserved-memory"):
            be.allocate(512 * KB, "u1", address_bits=32)
        anywhere = be.allocate(512 * KB, "u1")  # no limit: here across 4 GiB
        assert anywhere.device_address + anywhere.nbytes > 1 << 32
        assert be.info()["buffers"] == 3
        del high, low, anywhere
