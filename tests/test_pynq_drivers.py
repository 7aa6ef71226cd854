"""PYNQ's own drivers, unmodified, on pynq_alloc buffers (issue 10, "proof with PYNQ's code").

PYNQ 4.0.0's sdist is fetched at test time (tests/pynq_sdist.py; skipped when it
cannot be, a failure under PYNQ_ALLOC_REQUIRE_TOOLS=1). Its ``AxiDMA``, HLS argument
packing and video DMA frame cache run against our register models
(tests/pynq_models.py), reached through PYNQ's own MMIO and test ``MockIPDevice``,
which move data by device address with the sim backend's
``device_read``/``device_write``. The backend checks coherency (``check='raise'``,
and CoherencyWarning is an error here) and buffers come from the DEFAULT
allocation, as a PYNQ user's ``pynq.allocate(shape, dtype)`` would make them.
"""
import asyncio
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

import pynq_alloc
from pynq_models import (AxiDmaModel, AxiVdmaModel, DeviceMemory, FrameMemory, HlsVaddModel,
                         MicroblazeVaddModel)
from pynq_sdist import load_microblaze_rpc, load_pynq

DMA_BASE = 0x4040_0000
HLS_BASE = 0x43C0_0000
VDMA_BASE = 0x4300_0000


@pytest.fixture(scope="module")
def pq():
    return load_pynq()


def _checked(**options):
    be = pynq_alloc.open_backend("sim", size=32 << 20, check="raise", **options)
    pynq_alloc.set_default_backend(be)
    return be


@pytest.fixture
def be():
    """The default backend for the test: sim, checked, default options."""
    backend = _checked()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pynq_alloc.CoherencyWarning)
        yield backend
    pynq_alloc.set_default_backend(None)
    backend.close()


@pytest.fixture
def be_cached():
    """As `be`, but the backend's default is cacheable (open_backend(cacheable=True))."""
    backend = _checked(cacheable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pynq_alloc.CoherencyWarning)
        yield backend
    pynq_alloc.set_default_backend(None)
    backend.close()


def xor5a(data):
    """The DMA model's stream transform: a copy that bypassed the IP would not match."""
    return (np.frombuffer(data, np.uint8) ^ 0x5A).tobytes()


def make_device(pq, model, memory):
    """PYNQ's own MockIPDevice (the sdist's tests/mock_devices.py) routing register
    access to our model; its Device.allocate goes to `memory`."""
    device = pq.mock_devices.MockIPDevice([model], "pynq_alloc_test")
    device.default_memory = memory
    return device


def make_dma(pq, backend, sg, sg_length_width=None, interrupts=False):
    model = AxiDmaModel(backend, DMA_BASE, sg=sg, transform=xor5a)
    memory = DeviceMemory(backend)
    device = make_device(pq, model, memory)
    dma = pq.dma.DMA(model.description(device, sg_length_width=sg_length_width,
                                       interrupts=interrupts))
    return model, memory, dma


def run_loopback(dma, inp, out):
    """What a PYNQ notebook does: start the receive side, send, wait for both."""
    dma.recvchannel.transfer(out)
    dma.sendchannel.transfer(inp)
    dma.sendchannel.wait()
    dma.recvchannel.wait()


def test_sdist_modules_are_pynqs(pq):
    """The drivers under test are PYNQ's files from the sdist, and allocate is ours."""
    assert pq.dma.allocate is pynq_alloc.allocate
    assert pq.vdma.allocate is pynq_alloc.allocate
    assert issubclass(pq.dma.DMA, pq.overlay.DefaultIP)
    for mod in (pq.dma, pq.vdma, pq.overlay, pq.mmio, pq.device, pq.mock_devices):
        assert mod.__file__.startswith(str(pq.src))
    assert issubclass(pq.mock_devices.MockIPDevice, pq.device.Device)
    assert pq.ps.ON_TARGET is False


# ------------------------------------------------------------------ AXI DMA


@pytest.mark.parametrize("sg,sg_length_width", [(False, None), (True, None), (True, 10)],
                         ids=["simple", "sg-2-descriptors", "sg-many-descriptors"])
def test_axidma_loopback(pq, be, sg, sg_length_width):
    model, memory, dma = make_dma(pq, be, sg, sg_length_width)
    assert type(dma.sendchannel).__name__ == ("_SGDMAChannel" if sg else "_SDMAChannel")
    inp = pynq_alloc.allocate((1024,), np.uint32)  # the default allocation, as in PYNQ
    out = pynq_alloc.allocate((1024,), np.uint32)
    assert inp.backend is be and out.backend is be
    inp[:] = np.arange(1024, dtype=np.uint32) * 0x01010101

    run_loopback(dma, inp, out)

    assert np.array_equal(out, inp ^ np.uint32(0x5A5A5A5A))
    assert dma.sendchannel.transferred == inp.nbytes == 4096
    assert dma.recvchannel.transferred == out.nbytes == 4096
    if sg:
        # the descriptors PYNQ built were walked by the model, by device address
        tx = [d for d in model.descriptors_done if d[0] == "MM2S"]
        rx = [d for d in model.descriptors_done if d[0] == "S2MM"]
        assert sum(s & 0x03FFFFFF for _, _, s in tx) == 4096
        assert sum(s & 0x03FFFFFF for _, _, s in rx) == 4096
        expected = 2 if sg_length_width is None else -(-4096 // 1020)  # blk = 1023 - 1023 % 4
        assert len(tx) == len(rx) == expected
        # PYNQ allocated them through its Device.allocate, with no extra keywords
        assert memory.calls == [((expected, 16), np.uint32, {})] * 2
    # a second round on the same driver objects works too
    inp[:] = 7
    run_loopback(dma, inp, out)
    assert np.array_equal(out, np.full(1024, 7 ^ 0x5A5A5A5A, np.uint32))


@pytest.mark.parametrize("sg", [False, True], ids=["simple", "sg"])
def test_axidma_dirtied_receive_buffer_not_corrupted(pq, be, sg):
    """PYNQ's receive channel never flushes before the transfer: on PYNQ's
    (non-cacheable) memory a buffer the CPU wrote just before is fine."""
    model, memory, dma = make_dma(pq, be, sg)
    inp = pynq_alloc.allocate(2048, "u4")
    out = pynq_alloc.allocate(2048, "u4")
    inp[:] = np.arange(2048, dtype=np.uint32)
    out[:] = 0xDEADBEEF  # the CPU dirties the receive buffer, no flush()

    run_loopback(dma, inp, out)

    assert np.array_equal(out, inp ^ np.uint32(0x5A5A5A5A))
    assert dma.recvchannel.transferred == out.nbytes
    # what the device wrote is what the CPU reads (no stale line written back)
    assert be.device_read(out.device_address, out.nbytes) == out.tobytes()


def test_axidma_receive_into_views(pq, be):
    """Transfers into and out of slices: PYNQ uses physical_address of the view."""
    model, memory, dma = make_dma(pq, be, sg=False)
    big_in = pynq_alloc.allocate(4096, "u1")
    big_out = pynq_alloc.allocate(4096, "u1")
    big_in[:] = np.arange(4096) % 251
    src, dst = big_in[1024:3072], big_out[512:2560]
    assert src.physical_address == big_in.physical_address + 1024
    run_loopback(dma, src, dst)
    assert np.array_equal(big_out[512:2560], (np.arange(1024, 3072) % 251) ^ 0x5A)
    assert not big_out[:512].any() and not big_out[2560:].any()
    assert dma.recvchannel.transferred == 2048


@pytest.mark.parametrize("sg", [False, True], ids=["simple", "sg"])
def test_axidma_wait_async(pq, be, sg):
    """The interrupt-driven path: PYNQ's wait_async() clears the IOC bit, then
    invalidates and reads the length as wait() does."""
    model, memory, dma = make_dma(pq, be, sg, interrupts=True)
    assert dma.sendchannel._interrupt is not None
    inp = pynq_alloc.allocate(512, "u4")
    out = pynq_alloc.allocate(512, "u4")
    inp[:] = np.arange(512, dtype=np.uint32) + 1000
    dma.recvchannel.transfer(out)
    dma.sendchannel.transfer(inp)

    async def both():
        await dma.sendchannel.wait_async()
        await dma.recvchannel.wait_async()

    asyncio.run(both())
    assert np.array_equal(out, inp ^ np.uint32(0x5A5A5A5A))
    assert dma.recvchannel.transferred == dma.sendchannel.transferred == 2048
    assert not model.ch[model.MM2S].ioc and not model.ch[model.S2MM].ioc  # cleared (W1C)


@pytest.mark.parametrize("sg", [False, True], ids=["simple", "sg"])
def test_axidma_start_and_nbytes(pq, be, sg):
    """transfer(array, start, nbytes): PYNQ adds start to physical_address."""
    model, memory, dma = make_dma(pq, be, sg)
    inp = pynq_alloc.allocate(4096, "u1")
    out = pynq_alloc.allocate(4096, "u1")
    inp[:] = np.arange(4096) % 253
    dma.recvchannel.transfer(out, start=256, nbytes=1024)
    dma.sendchannel.transfer(inp, start=2048, nbytes=1024)
    dma.sendchannel.wait()
    dma.recvchannel.wait()
    assert np.array_equal(out[256:1280], (np.arange(2048, 3072) % 253) ^ 0x5A)
    assert not out[:256].any() and not out[1280:].any()
    assert dma.recvchannel.transferred == 1024


def test_axidma_cacheable_receive_needs_flush_checker_says_so(pq, be):
    """The contrast: with cacheable=True (our documented opt-in), PYNQ's receive
    path (no flush before the transfer) over a dirtied buffer is exactly the
    mistake the checker names; the device write is refused with the fix."""
    model, memory, dma = make_dma(pq, be, sg=False)
    inp = pynq_alloc.allocate(1024, "u4", cacheable=True)
    out = pynq_alloc.allocate(1024, "u4", cacheable=True)
    assert not out.coherent
    inp[:] = 1
    out[:] = 2
    dma.recvchannel.transfer(out)
    with pytest.raises(pynq_alloc.CoherencyError) as err:
        dma.sendchannel.transfer(inp)
    assert f"{out.device_address:#x}" in str(err.value).lower()


def test_axidma_sg_on_cacheable_memory_unchecked_reads_stale_status(pq):
    """Why PYNQ's default matters: on cacheable memory (opt-in here), PYNQ's SG
    wait() reads the descriptors' status words after flush() instead of
    invalidate(), i.e. from the CPU's stale copy: the data arrives but
    `transferred` stays 0. (Unchecked backend: this is what a board does.)"""
    backend = pynq_alloc.open_backend("sim", size=8 << 20, cacheable=True)
    try:
        model, memory, dma = make_dma(pq, backend, sg=True)
        inp = pynq_alloc.allocate(1024, "u4", target=backend)
        out = pynq_alloc.allocate(1024, "u4", target=backend)
        assert not inp.coherent and not out.coherent
        inp[:] = np.arange(1024, dtype=np.uint32)
        inp.flush()
        out.flush()
        run_loopback(dma, inp, out)
        assert np.array_equal(out, inp ^ np.uint32(0x5A5A5A5A))  # wait() invalidated out
        assert len(model.descriptors_done) == 4  # the device did complete them...
        assert dma.sendchannel.transferred == 0  # ...but the CPU read stale status
        assert dma.recvchannel.transferred == 0
        del inp, out
    finally:
        backend.close()


def test_axidma_sg_on_cacheable_memory_checker_reports_flush_for_invalidate(pq, be_cached):
    """PYNQ's SG wait() reads descriptor status after flush() where invalidate()
    was meant (harmless on PYNQ's non-cacheable memory). On a backend whose
    default is cacheable, the checker reports it at that flush()."""
    model, memory, dma = make_dma(pq, be_cached, sg=True)
    inp = pynq_alloc.allocate(1024, "u4")
    out = pynq_alloc.allocate(1024, "u4")
    assert not inp.coherent  # the backend's default is cacheable
    inp[:] = 3
    inp.flush()
    out.flush()
    dma.sendchannel.transfer(inp)
    with pytest.raises(pynq_alloc.CoherencyError, match="invalidate") as err:
        dma.sendchannel.wait()
    # at PYNQ's `self._descr.flush()` in wait(), over the descriptors' status words
    assert err.traceback[-1].frame.code.path == Path(pq.dma.__file__)
    assert f"{dma.sendchannel._descr.device_address:#x}" in str(err.value)


# ------------------------------------------------------------------ HLS


def hls_ip(pq, backend):
    model = HlsVaddModel(backend, HLS_BASE)
    ip = pq.overlay.DefaultIP(model.description(make_device(pq, model, DeviceMemory(backend))))
    return model, ip


def hls_start(pq, ip, *args):
    """PYNQ's HLS call path: _create_call's struct string and pointer list from the
    register map; pointers are passed as the buffers' device_address (PYNQ 3's
    DefaultIP._start_sw did exactly this packing and wrote it at offset 0)."""
    signature, struct_string, ptr_list, _ = pq.overlay._create_call(HlsVaddModel.REGMAP)
    assert list(signature.parameters) == ["a", "b", "out", "n"]
    assert ptr_list == [True, True, True, False]
    values = [a.device_address if ptr else a for a, ptr in zip(args, ptr_list)]
    packed = struct.pack(struct_string, 0, *values)
    # the arguments (everything after CTRL) in one write, then ap_start
    ip.write(4, packed[4:])
    ip.write(0, 1)
    return pq.overlay.WaitHandle(ip)


def test_hls_argument_packing_buffers_and_views(pq, be):
    model, ip = hls_ip(pq, be)
    a = pynq_alloc.allocate(256, "i4")
    b = pynq_alloc.allocate((16, 16), "i4")
    out = pynq_alloc.allocate(512, "i4")
    a[:] = np.arange(256) - 100
    b[:] = np.arange(256).reshape(16, 16) * 3
    # views: a tail of a, a row block of b, the second half of out
    va, vb, vout = a[64:], b[4:], out[256 + 64:]
    n = 192
    assert va.device_address == a.device_address + 256
    assert vb.device_address == b.device_address + 4 * 16 * 4
    assert vout.device_address == out.device_address + 320 * 4

    hls_start(pq, ip, va, vb, vout, n).wait()

    assert model.runs == [(va.device_address, vb.device_address, vout.device_address, n)]
    assert np.array_equal(out[320:], va[:n] + vb.reshape(-1)[:n])
    assert not out[:320].any()
    # the packed pointers are 64-bit: the upper words are what the addresses say
    assert model.regs[0x14] == va.device_address >> 32


def test_hls_register_map_pointers(pq, be):
    """The notebook way: PYNQ's RegisterMap (from the .hwh's registers) takes the
    64-bit device_address of a buffer or a view; AP_START runs the kernel."""
    model, ip = hls_ip(pq, be)
    a = pynq_alloc.allocate(128, "i4")
    b = pynq_alloc.allocate(128, "i4")
    out = pynq_alloc.allocate(128, "i4")
    a[:] = np.arange(128)
    b[:] = -2 * np.arange(128)
    rm = ip.register_map
    rm.a = a[32:].device_address
    rm.b = b[:96].device_address
    rm.out = out[32:].device_address
    rm.n = 96
    rm.CTRL.AP_START = 1
    assert rm.CTRL.AP_DONE == 1 and rm.CTRL.AP_IDLE == 1
    assert model.runs == [(a.device_address + 128, b.device_address,
                           out.device_address + 128, 96)]
    assert np.array_equal(out[32:], np.arange(32, 128) - 2 * np.arange(96))
    assert not out[:32].any()


def test_hls_argument_packing_cacheable_with_sync(pq, be):
    """The same IP on cacheable buffers, with the maintenance PYNQ users write."""
    model, ip = hls_ip(pq, be)
    a = pynq_alloc.allocate(64, "i4", cacheable=True)
    b = pynq_alloc.allocate(64, "i4", cacheable=True)
    out = pynq_alloc.allocate(64, "i4", cacheable=True)
    a[:] = 5
    b[:] = np.arange(64)
    a.flush()
    b.flush()
    hls_start(pq, ip, a, b, out, 64).wait()
    out.invalidate()
    assert np.array_equal(out, 5 + np.arange(64))


# ------------------------------------------------------------------ MicroBlaze RPC


def microblaze_vadd(rpc):
    """PYNQ's own parse of the C declaration into its argument adapters."""
    import pycparser

    tree = pycparser.CParser().parse(
        "int vadd(void *a, void *b, void *out, unsigned int n);", filename="<stdin>")
    visitor = rpc.FuncDefVisitor()
    visitor.visit(tree)
    adapter = visitor.functions["vadd"]
    assert [type(i).__name__ for i in adapter.arg_interfaces] == [
        "VoidPointerWrapper", "VoidPointerWrapper", "VoidPointerWrapper", "PrimitiveWrapper"]
    return adapter


def test_microblaze_rpc_void_pointers(pq, be):
    """PYNQ's MicroBlaze RPC call path (_function_wrapper, FuncAdapter.pack_args,
    VoidPointerWrapper) passes buffers and views as their physical_address."""
    rpc = load_microblaze_rpc()
    adapter = microblaze_vadd(rpc)
    mb = MicroblazeVaddModel(be, ptr_offset=int(rpc.PTR_OFFSET, 0))
    a = pynq_alloc.allocate(100, "i4")
    b = pynq_alloc.allocate(100, "i4")
    out = pynq_alloc.allocate(100, "i4")
    a[:] = np.arange(100)
    b[:] = 1000
    ret = rpc._function_wrapper(mb, 0, adapter, None, a[10:], b, out[50:], 50)
    assert ret == 50
    assert mb.calls == [(a.device_address + 40, b.device_address, out.device_address + 200, 50)]
    assert np.array_equal(out[50:], np.arange(10, 60) + 1000)
    assert not out[:50].any()


def test_microblaze_rpc_pointer_is_32_bits(pq, be_straddling):
    """The MicroBlaze takes a void* as 32 bits: a buffer above 4 GiB cannot be
    passed (PYNQ's struct packing refuses it); address_bits=32 keeps it below."""
    rpc = load_microblaze_rpc()
    adapter = microblaze_vadd(rpc)
    filler = be_straddling.allocate(2 << 20, "u1")  # all memory below 4 GiB
    high = be_straddling.allocate(16, "i4")
    assert high.device_address >= 1 << 32
    with pytest.raises(struct.error):
        adapter.pack_args(high, high, high, 16)
    del filler
    low = be_straddling.allocate(16, "i4", address_bits=32)
    assert low.device_address + low.nbytes <= 1 << 32
    assert adapter.pack_args(low, low, low, 16)[:4] == struct.pack("I", low.physical_address)


# ------------------------------------------------------------------ video DMA


def make_vdma(pq, backend, framecount=4, address_bits=None):
    model = AxiVdmaModel(backend, VDMA_BASE, framecount)
    memory = FrameMemory(backend, address_bits=address_bits)
    vdma = pq.vdma.AxiVDMA(model.description(make_device(pq, model, memory)))
    return model, memory, vdma


def frame_bytes(k, mode):
    h, w = mode.height, mode.width * mode.bytes_per_pixel
    return ((np.arange(h * w, dtype=np.uint32) * 7 + k * 31) % 256).astype(np.uint8).tobytes()


@pytest.mark.parametrize("cacheable_frames", [True, False], ids=["cacheable", "non-cacheable"])
def test_vdma_readframe_foreign_target_and_recycling(pq, be, cacheable_frames):
    model, memory, vdma = make_vdma(pq, be)
    mode = pq.video_common.VideoMode(64, 16, 24)
    ch = vdma.readchannel
    assert ch.cacheable_frames is True  # PYNQ's default for video frames
    ch.cacheable_frames = cacheable_frames
    ch.mode = mode
    ch.start()
    try:
        # the frame cache allocated its frames from the foreign target, passing
        # PYNQ's own keywords through pynq_alloc.allocate unchanged
        assert memory.fresh == 4
        assert all(c["cache"] is ch._cache and c["pointer"] is None
                   and c["cacheable"] is cacheable_frames for c in memory.calls)
        for k in range(4):
            model.capture(frame_bytes(k, mode))
        frame = ch.readframe()  # PYNQ invalidates it before handing it over
        assert isinstance(frame, pynq_alloc.Buffer)
        assert frame.coherent is (not cacheable_frames)
        assert frame.shape == mode.shape
        # PYNQ returns the frame two stores behind the one being written
        assert model.written[frame.device_address] == frame_bytes(2, mode)
        assert frame.tobytes() == frame_bytes(2, mode)
        addr = frame.device_address

        # freeing the frame hands its memory back to PYNQ's cache (wrap's on_free)
        frame.freebuffer()
        assert len(ch._cache._cache) == 1
        model.capture(frame_bytes(4, mode))
        frame2 = ch.readframe()
        # readframe took the recycled memory for the store it replaced
        recycled = memory.calls[-1]
        assert recycled["pointer"] is not None and recycled["pointer"].device_address == addr
        assert recycled["pointer"] is not frame  # a new wrap over the same memory
        assert memory.fresh == 5  # only the first readframe needed a fresh frame
        assert addr in [ch._frames[i].device_address for i in range(4)
                        if ch._frames[i] is not None]
        assert frame2.tobytes() == model.written[frame2.device_address]
        del frame2
    finally:
        ch.stop()


def test_vdma_writeframe(pq, be):
    model, memory, vdma = make_vdma(pq, be)
    mode = pq.video_common.VideoMode(32, 8, 8)
    ch = vdma.writechannel
    ch.mode = mode
    ch.start()
    try:
        for k in range(3):
            frame = ch.newframe()
            assert frame.coherent is False  # PYNQ asks for cacheable frames: flush() matters
            frame[:] = np.frombuffer(frame_bytes(k, mode), np.uint8).reshape(mode.shape)
            ch.writeframe(frame)  # PYNQ flushes, then points the next store at it
            addr, shown = model.scanout()
            assert addr == frame.device_address
            assert shown == frame_bytes(k, mode)
    finally:
        ch.stop()


@pytest.fixture
def be_straddling():
    """A checked sim whose memory straddles 4 GiB: 2 MiB below, 14 MiB above."""
    backend = pynq_alloc.open_backend("sim", size=16 << 20, base_address=0xFFE0_0000,
                                      check="raise")
    yield backend
    backend.close()


def test_vdma_32bit_engine_frames_below_4gib(pq, be_straddling):
    """Xilinx/PYNQ#1500: a 32-bit DMA engine on a board with memory above 4 GiB.
    A frame memory that allocates with address_bits=32 gives PYNQ's VDMA (which
    refuses 64-bit address widths) frames it can address."""
    model, memory, vdma = make_vdma(pq, be_straddling, address_bits=32)
    mode = pq.video_common.VideoMode(64, 16, 24)
    ch = vdma.readchannel
    ch.mode = mode
    ch.start()
    try:
        for i in range(4):
            assert ch._frames[i].device_address + ch._frames[i].nbytes <= 1 << 32
        for k in range(4):
            model.capture(frame_bytes(k, mode))
        frame = ch.readframe()
        assert frame.tobytes() == frame_bytes(2, mode)
        del frame
    finally:
        ch.stop()


def test_vdma_32bit_engine_low_memory_taken(pq, be_straddling):
    """The same with the memory below 4 GiB already taken: without a limit the
    frames land above 4 GiB and PYNQ's own MMIO write of the 32-bit frame-store
    register refuses the address; with address_bits=32 allocation fails first,
    with a MemoryError that names the limit."""
    filler = be_straddling.allocate(2 << 20, "u1")
    assert filler.device_address == 0xFFE0_0000  # everything below 4 GiB
    model, memory, vdma = make_vdma(pq, be_straddling)
    vdma.readchannel.mode = pq.video_common.VideoMode(64, 16, 24)
    with pytest.raises(struct.error):
        vdma.readchannel.start()
    assert memory.calls and all(c["pointer"] is None for c in memory.calls)
    vdma.readchannel.stop()

    model, memory, vdma = make_vdma(pq, be_straddling, address_bits=32)
    vdma.readchannel.mode = pq.video_common.VideoMode(64, 16, 24)
    with pytest.raises(MemoryError, match="address_bits"):
        vdma.readchannel.start()
    del filler
