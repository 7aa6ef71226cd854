"""Acceptance tests against REAL kernel drivers, run inside the kernel lane's
guest (.ci/kernel_lane.sh boots it; .ci/kernel/guest_run.sh runs pytest).

Each board backend is checked against what the kernel itself says, never
against our own emulation:
  * physical addresses: /proc/self/pagemap for every page of the buffer, and the
    driver's own report (u-dma-buf's sysfs phys_addr);
  * CPU -> device: data written and flushed is read back through a second,
    uncached path to the same physical memory (/dev/mem opened with O_SYNC, and
    u-dma-buf's own read());
  * device -> CPU: data written through /dev/mem is seen after invalidate();
  * write-combine (cacheable=False) buffers, alignment, several sizes;
  * flock contention between two processes (u-dma-buf);
  * everything freed: pages allocated from CMA, dma-bufs and huge pages in use
    back to where they were (the kernel's exact counts), no file
    descriptor or mapping of the device left, sysfs attributes put back.
qemu models no caches, so these tests cannot catch a missing cache
maintenance operation (the sim checker and the ordering tests do that); they
catch wrong addresses, wrong offsets, wrong ioctls and leaks.

KERNEL_LANE_EXPECT (set by the lane) lists the drivers that must be present:
a missing one fails instead of skipping. Outside the guest this file is not
collected by the suite (it lives in .ci/kernel/).
"""
import glob
import mmap
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pynq_alloc

PAGE = os.sysconf("SC_PAGE_SIZE")
EXPECT = set(os.environ.get("KERNEL_LANE_EXPECT", "").split())
SIZES = (64, 4096, 12345, 1 << 20, (3 << 20) + 100)
ALIGNS = (None, 4096, 1 << 16)


def need(what, present, why):
    if present:
        return
    if what in EXPECT:
        pytest.fail(f"{what} expected in this guest but {why}")
    pytest.skip(f"{what} not in this guest: {why}")


def meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def pagemap(va):
    """Physical address of virtual address va in this process (the kernel's word)."""
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(va // PAGE * 8)
        entry = int.from_bytes(f.read(8), "little")
    assert entry >> 63, f"page at 0x{va:x} not present"
    pfn = entry & ((1 << 55) - 1)
    assert pfn, "pagemap hides frame numbers (not root?)"
    return pfn * PAGE + va % PAGE


def vma_flags(va):
    """VmFlags of the mapping holding va (/proc/self/smaps)."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= va < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise LookupError(hex(va))


def check_addresses(buf):
    """buf's pages are at physical_address + their offset, in the kernel's own word
    (/proc/self/pagemap) where it gives one, and by the data in any case: a marker
    written at each page through the buffer is found at that physical address
    through /dev/mem."""
    va, pa, n = buf.virtual_address, buf.physical_address, buf.nbytes
    flat = np.asarray(buf).reshape(-1).view("u1")
    offsets = [0] + [p - va for p in range((va // PAGE + 1) * PAGE, va + n, PAGE)]
    # remap_pfn_range mappings (u-dma-buf, zocl: VM_PFNMAP) are holes to pagemap
    if "pf" not in vma_flags(va):
        for off in offsets:
            assert pagemap(va + off) == pa + off, f"+0x{off:x}: pagemap 0x{pagemap(va + off):x}, reported 0x{pa + off:x}"
    markers = np.random.default_rng(pa).integers(1, 256, len(offsets), dtype="u1")
    flat[offsets] = markers
    buf.flush()
    dev = DevMem(pa, n)
    try:
        seen = np.frombuffer(dev.read(), dtype="u1")[offsets]
    finally:
        dev.close()
    assert np.array_equal(seen, markers), "the data is not at the reported physical address"


def dmabuf_total():
    """(objects, bytes) of every live dma-buf, as the kernel counts them."""
    with open("/sys/kernel/debug/dma_buf/bufinfo") as f:
        for line in f:
            if line.startswith("Total") and "objects" in line:
                words = line.split()
                return int(words[1]), int(words[3])
    raise LookupError("no Total line in dma_buf/bufinfo")


class DevMem:
    """The device's view: physical memory through /dev/mem, opened O_SYNC (uncached)."""

    def __init__(self, phys, n):
        self.base = phys // PAGE * PAGE
        self.off = phys - self.base
        self.fd = os.open("/dev/mem", os.O_RDWR | os.O_SYNC)
        self.m = mmap.mmap(self.fd, self.off + n, offset=self.base)
        self.n = n

    def read(self):
        return bytes(self.m[self.off:self.off + self.n])

    def write(self, data):
        self.m[self.off:self.off + len(data)] = data

    def close(self):
        self.m.close()
        os.close(self.fd)


def own_fds_and_maps(words):
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if any(w in target for w in words):
            fds.append(target)
    with open("/proc/self/maps") as f:
        maps = [line.strip() for line in f if any(w in line for w in words)]
    return fds, maps


# ------------------------------------------------------------------ backends
def udmabuf_devices():
    return sorted(os.path.basename(p) for p in glob.glob("/sys/class/u-dma-buf/*"))


BACKENDS = {
    # spec: (lane name, how to tell it is there, the words naming its fds/mappings)
    "dmaheap": ("dmaheap", lambda: os.path.exists("/dev/dma_heap/reserved"), ["dma_heap", "dmabuf"]),
    "hugepage": ("hugepage", lambda: meminfo("HugePages_Total") > 0, ["hugepage", "memfd:pynq"]),
    "udmabuf:udmabuf0": ("udmabuf", lambda: "udmabuf0" in udmabuf_devices(), ["udmabuf0"]),
    "udmabuf:udmabuf1": ("udmabuf", lambda: "udmabuf1" in udmabuf_devices(), ["udmabuf1"]),
    "zocl": ("zocl", lambda: os.path.exists("/dev/dri/renderD128"), ["renderD128", "/dev/dri"]),
}


@pytest.fixture(params=list(BACKENDS))
def spec(request):
    what, present, _ = BACKENDS[request.param]
    need(what, present(), f"its device is missing ({request.param})")
    return request.param


@pytest.fixture
def be(spec):
    b = pynq_alloc.open_backend(spec)
    yield b
    b.close()


def cma_used():
    """Pages allocated from the CMA areas (CONFIG_CMA_DEBUGFS): exact, unlike
    CmaFree, which also moves with the movable pages the kernel lends out of CMA."""
    total = 0
    for p in glob.glob("/sys/kernel/debug/cma/*/used"):
        with open(p) as f:
            total += int(f.read())
    return total


def in_use(spec):
    """What the kernel counts as in use for this backend's memory."""
    if spec == "hugepage":
        return meminfo("HugePages_Total") - meminfo("HugePages_Free")
    if spec == "dmaheap":
        return dmabuf_total(), cma_used()
    # zocl's buffer objects and u-dma-buf's regions (allocated once, at probe) come from CMA
    return cma_used()


# which backends can map write-combine memory (cacheable=False)
WRITE_COMBINE = ("udmabuf", "zocl")


def cacheable_choices(spec):
    return (True, False) if spec.startswith(WRITE_COMBINE) else (True,)


# ------------------------------------------------------------------- tests
def test_the_expected_drivers_are_there():
    """The guest really has what the lane says it tests."""
    missing = [what for spec, (what, present, _) in BACKENDS.items() if what in EXPECT and not present()]
    assert not missing, f"expected but absent: {missing}"
    assert {"dmaheap", "cma", "hugepage"} <= EXPECT or not EXPECT
    assert meminfo("CmaTotal") >= 128 << 10  # cma= on the kernel command line (kB)
    heaps = sorted(os.listdir("/dev/dma_heap"))
    assert "reserved" in heaps and "system" in heaps, heaps


@pytest.mark.parametrize("align", ALIGNS)
def test_physical_addresses_are_the_kernels(be, spec, align):
    bufs = [be.allocate(n, "u1", align=align) for n in SIZES]
    for b in bufs:
        assert b.physical_address is not None
        if align:
            assert b.physical_address % align == 0 and b.virtual_address % min(align, PAGE) == 0
        check_addresses(b)
        # qemu's virt machine has no IOMMU in front of these devices
        assert b.device_address == b.physical_address
    spans = sorted((b.physical_address, b.physical_address + b.nbytes) for b in bufs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, "two live buffers overlap"
    if spec.startswith("udmabuf"):
        name = spec.split(":")[1]
        with open(f"/sys/class/u-dma-buf/{name}/phys_addr") as f:
            region = int(f.read(), 16)
        with open(f"/sys/class/u-dma-buf/{name}/size") as f:
            size = int(f.read())
        for b in bufs:
            assert region <= b.physical_address and b.physical_address + b.nbytes <= region + size


@pytest.mark.parametrize("cacheable", [True, False])
def test_cpu_writes_reach_memory_and_device_writes_reach_the_cpu(be, spec, cacheable):
    rng = np.random.default_rng(12)
    if cacheable not in cacheable_choices(spec):
        with pytest.raises(NotImplementedError, match="write-combine"):
            be.allocate(4096, "u1", cacheable=cacheable)
        return
    for n in (100, 5000, (1 << 20) + 64):
        b = be.allocate(n, "u1", cacheable=cacheable)
        if not cacheable:
            assert b.cacheable is False and b.coherent is True
        data = rng.integers(0, 256, n, dtype="u1")
        b[:] = data
        b.flush()
        dev = DevMem(b.physical_address, n)
        try:
            assert dev.read() == data.tobytes()
            # a sub-range through a view, then the device answers
            lo, hi = n // 3, n // 3 + min(77, n // 2)
            v = b[lo:hi]
            v[:] = 0xA5
            v.flush()
            assert dev.read()[lo:hi] == b"\xa5" * (hi - lo)
            del v
            answer = rng.integers(0, 256, n, dtype="u1")
            dev.write(answer.tobytes())
            b.invalidate()
            assert np.array_equal(b, answer)
        finally:
            dev.close()
        b.freebuffer()


def test_everything_is_freed(spec):
    what, _, words = BACKENDS[spec]
    assert glob.glob("/sys/kernel/debug/cma/*/used"), "no CMA accounting in debugfs"
    before = in_use(spec)
    fds0, maps0 = own_fds_and_maps(words)
    for _ in range(2):
        be = pynq_alloc.open_backend(spec)
        bufs = [be.allocate(n, "u1", cacheable=c) for n in SIZES for c in cacheable_choices(spec)]
        bufs.append(be.allocate(3000, "u1", align=1 << 16))
        for b in bufs:
            b[:] = 7
            b.flush()
        if not spec.startswith("udmabuf"):
            assert in_use(spec) != before, "buffers live but the kernel counts nothing in use"
        mid = own_fds_and_maps(words)
        assert mid[0] or mid[1], f"no fd or mapping named by {words}: the check would mean nothing"
        del bufs, b
        be.close()
        assert in_use(spec) == before
        assert own_fds_and_maps(words) == (fds0, maps0)


# ----------------------------------------------------------------- u-dma-buf
SYNC_ATTRS = ("sync_mode", "sync_offset", "sync_size", "sync_direction", "sync_owner")


def udmabuf_attrs(name):
    out = {}
    for a in SYNC_ATTRS:
        p = f"/sys/class/u-dma-buf/{name}/{a}"
        if os.path.exists(p):
            with open(p) as f:
                out[a] = f.read().strip()
    return out


@pytest.fixture(params=["udmabuf0", "udmabuf1"])
def udmabuf_name(request):
    need("udmabuf", request.param in udmabuf_devices(), f"no /sys/class/u-dma-buf/{request.param}")
    return request.param


def test_udmabuf_read_sees_flushed_data_and_sysfs_is_put_back(udmabuf_name):
    before = udmabuf_attrs(udmabuf_name)
    # cacheable=True: be.coherent then says whether cached blocks are (the port's
    # dma_coherent); PYNQ's default (write-combine) is coherent on both regions
    be = pynq_alloc.open_backend(f"udmabuf:{udmabuf_name}", cacheable=True)
    with open(f"/sys/class/u-dma-buf/{udmabuf_name}/dma_coherent") as f:
        dma_coherent = int(f.read()) == 1
    assert dma_coherent == (udmabuf_name == "udmabuf1")  # as the device tree says
    assert be.coherent == dma_coherent
    bufs = [be.allocate(n, "u1", cacheable=c) for n, c in ((4096, True), (70000, False), (12345, True))]
    with open(f"/sys/class/u-dma-buf/{udmabuf_name}/phys_addr") as f:
        region = int(f.read(), 16)
    if udmabuf_name == "udmabuf1":  # its memory-region: the reserved-memory pool of dt_nodes.sh
        assert 0x7000_0000 <= region and region + (16 << 20) <= 0x7100_0000, hex(region)
    fd = os.open(f"/dev/{udmabuf_name}", os.O_RDONLY)
    try:
        for i, b in enumerate(bufs):
            b[:] = np.arange(b.nbytes, dtype="u4").astype("u1") ^ (i + 1)
            b.flush()
            got = os.pread(fd, b.nbytes, b.physical_address - region)  # the driver's own read()
            assert got == b.tobytes()
    finally:
        os.close(fd)
    del bufs, b
    be.close()
    assert udmabuf_attrs(udmabuf_name) == before


def test_udmabuf_default_is_pynq_non_cacheable(udmabuf_name):
    """PYNQ's default on the real driver: write-combine (the driver has sync_mode),
    coherent, so data reaches the driver's read() with no flush()."""
    with pynq_alloc.open_backend(f"udmabuf:{udmabuf_name}") as be:
        assert be.coherent is True and be.info()["cacheable"] is False
        with open(f"/sys/class/u-dma-buf/{udmabuf_name}/phys_addr") as f:
            region = int(f.read(), 16)
        b = be.allocate(8192, "u1")
        assert b.coherent is True and b.cacheable is False
        b[:] = np.arange(8192, dtype="u4").astype("u1") ^ 0xA5
        fd = os.open(f"/dev/{udmabuf_name}", os.O_RDONLY)
        try:
            assert os.pread(fd, b.nbytes, b.physical_address - region) == b.tobytes()
        finally:
            os.close(fd)
        b.freebuffer()


UDMABUF_IOC_GET_SIZE = (2 << 30) | (8 << 16) | (ord("U") << 8) | 2  # _IOR('U', 2, uint64_t)


def udmabuf_has_ioctls(name):
    import fcntl
    fd = os.open(f"/dev/{name}", os.O_RDONLY)
    try:
        out = bytearray(8)
        fcntl.ioctl(fd, UDMABUF_IOC_GET_SIZE, out)
        with open(f"/sys/class/u-dma-buf/{name}/size") as f:
            assert int.from_bytes(out, "little") == int(f.read())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_udmabuf_syncs_reach_the_driver():
    """The driver ran each sync: sync_owner reads 1 after flush() (for device), 0 after
    invalidate() (for CPU), and the one-shot value was consumed (reads back 0).
    Run twice by the lane: with the driver's ioctls, and with a build without them
    (KERNEL_LANE_UDMABUF_SYNC=sysfs), where the backend writes one-shot values."""
    need("udmabuf", "udmabuf0" in udmabuf_devices(), "no /sys/class/u-dma-buf/udmabuf0")
    sysfs = os.environ.get("KERNEL_LANE_UDMABUF_SYNC") == "sysfs"
    assert udmabuf_has_ioctls("udmabuf0") is not sysfs
    d = "/sys/class/u-dma-buf/udmabuf0"

    def attr(a):
        with open(f"{d}/{a}") as f:
            return f.read().strip()

    with pynq_alloc.open_backend("udmabuf:udmabuf0", cacheable=True) as be:
        assert be.coherent is False
        for n in (64, 4096 + 64, (1 << 20) + 4096):
            b = be.allocate(n, "u1")
            b[:] = 3
            b.flush()
            assert attr("sync_owner") == "1" and attr("sync_for_device") == "0"
            b[10:20].invalidate()
            assert attr("sync_owner") == "0" and attr("sync_for_cpu") == "0"
            b[n - 64:].flush()
            assert attr("sync_owner") == "1"
            b.invalidate()
            assert attr("sync_owner") == "0"
            b.freebuffer()


LOCK_HOLDER = """
import sys, time, pynq_alloc
be = pynq_alloc.open_backend("udmabuf:udmabuf0")
print("held", flush=True)
sys.stdin.readline()
be.close()
"""


def test_udmabuf_second_process_is_refused_and_told_who_holds_it():
    need("udmabuf", "udmabuf0" in udmabuf_devices(), "no /sys/class/u-dma-buf/udmabuf0")
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOCK_HOLDER)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(OSError) as exc:
            pynq_alloc.open_backend("udmabuf:udmabuf0")
        assert str(p.pid) in str(exc.value)
        # the other region is free, and the default spec moves on to it
        with pynq_alloc.open_backend("udmabuf") as other:
            with open("/sys/class/u-dma-buf/udmabuf1/phys_addr") as f:
                region1 = int(f.read(), 16)
            b = other.allocate(64, "u1")
            assert region1 <= b.physical_address < region1 + (16 << 20)
            del b
    finally:
        p.stdin.write("\n")
        p.stdin.close()
        assert p.wait(timeout=120) == 0
    with pynq_alloc.open_backend("udmabuf:udmabuf0") as again:  # released with the process
        assert again.allocate(64, "u1").physical_address is not None


# ----------------------------------------------------------- DMA-BUF heaps
def test_dmaheap_uses_the_cma_heap_and_refuses_the_system_heap():
    need("dmaheap", os.path.exists("/dev/dma_heap/reserved"), "no /dev/dma_heap/reserved")
    probe = {name: reason for name, usable, board, reason in pynq_alloc._pynq_alloc._probe()}
    assert "'reserved'" in probe["dmaheap"], probe["dmaheap"]
    with pytest.raises((OSError, ValueError, NotImplementedError)) as exc:
        with pynq_alloc.open_backend("dmaheap:system") as sysheap:
            sysheap.allocate(4 << 20, "u1")
    assert "contiguous" in str(exc.value)


# ------------------------------------------------------------------ the CLI
def test_info_reports_every_real_backend_usable():
    import json
    r = subprocess.run([sys.executable, "-m", "pynq_alloc", "info", "--json"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {row["backend"]: row for row in json.loads(r.stdout)}
    for what in ("dmaheap", "hugepage", "udmabuf", "zocl"):
        if what in EXPECT:
            assert rows[what]["usable"], rows[what]
            assert rows[what]["total"] > 0 and rows[what]["coherent"] in (True, False), rows[what]


def test_zocl_reports_the_driver_version():
    """DRM_IOCTL_VERSION read right: zocl's version is the one its Makefile states."""
    need("zocl", os.path.exists("/dev/dri/renderD128"), "no /dev/dri/renderD128")
    version = os.environ.get("KERNEL_LANE_ZOCL_VERSION", "")
    probe = {name: reason for name, usable, board, reason in pynq_alloc._pynq_alloc._probe()}
    assert f"zocl {version} on /dev/dri/renderD128" in probe["zocl"], probe["zocl"]


# ------------------------------------------------- zocl's ioctls, used directly
# What tests/emul/zocl_shim.c assumes about the driver, checked against zocl
# itself: buffer-object sizes, INFO_BO's flags, which mmap offsets and lengths
# work, and SYNC_BO's range and direction checks.
def _iowr(nr, size, write_only=False):
    return ((1 if write_only else 3) << 30) | (size << 16) | (ord("d") << 8) | nr


ZOCL_CREATE_BO, ZOCL_MAP_BO, ZOCL_SYNC_BO, ZOCL_INFO_BO = (
    _iowr(0x40, 16), _iowr(0x43, 16), _iowr(0x44, 24), _iowr(0x45, 24))
DRM_GEM_CLOSE = _iowr(0x09, 8, write_only=True)
ZOCL_CACHEABLE = 1 << 24


class ZoclNode:
    def __init__(self):
        self.fd = os.open("/dev/dri/renderD128", os.O_RDWR)

    def ioctl(self, req, fmt, *fields):
        import fcntl
        import struct
        buf = bytearray(struct.pack(fmt, *fields))
        fcntl.ioctl(self.fd, req, buf)
        return struct.unpack(fmt, buf)

    def create(self, size, flags=0):
        return self.ioctl(ZOCL_CREATE_BO, "=QII", size, 0, flags)[1]

    def info(self, handle):
        _, flags, size, paddr = self.ioctl(ZOCL_INFO_BO, "=IIQQ", handle, 0, 0, 0)
        return flags, size, paddr

    def map_offset(self, handle):
        return self.ioctl(ZOCL_MAP_BO, "=IIQ", handle, 0, 0)[2]

    def sync(self, handle, direction, offset, size):
        self.ioctl(ZOCL_SYNC_BO, "=IIQQ", handle, direction, offset, size)

    def close_bo(self, handle):
        self.ioctl(DRM_GEM_CLOSE, "=II", handle, 0)

    def close(self):
        os.close(self.fd)


@pytest.fixture
def zocl_node():
    need("zocl", os.path.exists("/dev/dri/renderD128"), "no /dev/dri/renderD128")
    node = ZoclNode()
    yield node
    node.close()


def shim_bo_size(size):
    """tests/emul/zocl_shim.c's rule for a buffer object's size"""
    return 2 * PAGE if size <= PAGE else -(-size // PAGE) * PAGE


@pytest.mark.parametrize("flags", [0, ZOCL_CACHEABLE])
@pytest.mark.parametrize("size", [64, PAGE, 5000, 1 << 20])
def test_zocl_buffer_objects_as_the_emulation_assumes(zocl_node, size, flags):
    import errno
    used0 = cma_used()
    h = zocl_node.create(size, flags)
    try:
        got_flags, bo_size, paddr = zocl_node.info(h)
        assert got_flags == flags  # INFO_BO returns the flags CREATE_BO was given
        assert bo_size == shim_bo_size(size), (size, bo_size)
        assert paddr % PAGE == 0
        assert cma_used() - used0 >= bo_size // PAGE
        off = zocl_node.map_offset(h)
        # the whole BO, or its first part, maps at the offset MAP_BO gave ...
        for length in (bo_size, PAGE):
            m = mmap.mmap(zocl_node.fd, length, offset=off)
            m[:8] = b"zocl-bo!"
            dev = DevMem(paddr, 8)
            try:
                assert dev.read() == b"zocl-bo!"
            finally:
                dev.close()
            m.close()
        # ... but not from an offset inside it, nor longer than it
        for length, where in ((PAGE, off + PAGE), (bo_size + PAGE, off)):
            if where != off and bo_size <= PAGE:
                continue
            with pytest.raises(OSError) as exc:
                mmap.mmap(zocl_node.fd, length, offset=where)
            assert exc.value.errno in (errno.EINVAL, errno.EACCES), exc.value
        # SYNC_BO: in-range syncs work both ways; a range past the end is refused
        zocl_node.sync(h, 0, 0, bo_size)
        zocl_node.sync(h, 1, PAGE // 2, PAGE // 2)
        with pytest.raises(OSError) as exc:
            zocl_node.sync(h, 0, bo_size - 64, 128)
        assert exc.value.errno == errno.EINVAL
    finally:
        zocl_node.close_bo(h)
    assert cma_used() == used0
    with pytest.raises(OSError):
        zocl_node.info(h)  # the handle is gone
