"""Register models of the IP that PYNQ's drivers talk to, written for pynq_alloc's tests.

Each model is a block of 32-bit registers with PYNQ's test-IP interface
(``lo_address``, ``hi_address``, ``read(offset, length)``, ``write(offset, data)``),
so PYNQ's own ``MockIPDevice`` routes its ``MMIO`` accesses to it. The models move data the way the hardware does: by device
address, through the sim backend's ``device_read`` / ``device_write``, so the sim
checker sees every access the real DMA engine would make.

Register layouts follow the Xilinx product guides (our reading of them, not
their code): AXI DMA v7.1 (PG021), AXI VDMA v6.3 (PG020), Vitis HLS AXI4-Lite
block-level control (UG1399). Only what PYNQ's drivers use is modelled; any
other access is an error, so a driver change shows up as a test failure rather
than as silently ignored writes.
"""
import collections
import struct

import pynq_alloc

# a driver polling a status bit that can never change would spin forever:
# fail instead, after this many reads with nothing happening
MAX_IDLE_POLLS = 10_000


class ModelError(AssertionError):
    """The driver did something the hardware would not accept (or would hang on)."""


class RegisterModel:
    """32-bit little-endian registers at [base, base + size)."""

    def __init__(self, backend, base_address, address_range):
        self.backend = backend
        self.lo_address = base_address
        self.hi_address = base_address + address_range
        self.log = []  # (op, offset, value)

    # PYNQ's MMIO gives byte strings of whole words
    def read(self, offset, length):
        if offset % 4 or length % 4:
            raise ModelError(f"unaligned register read at {offset:#x}, {length} bytes")
        return b"".join(struct.pack("<I", self.read_register(offset + i) & 0xFFFFFFFF)
                        for i in range(0, length, 4))

    def write(self, offset, data):
        data = bytes(data)
        if offset % 4 or len(data) % 4:
            raise ModelError(f"unaligned register write at {offset:#x}, {len(data)} bytes")
        for i in range(0, len(data), 4):
            (value,) = struct.unpack_from("<I", data, i)
            self.log.append(("w", offset + i, value))
            self.write_register(offset + i, value)

    def read_register(self, offset):
        raise NotImplementedError

    def write_register(self, offset, value):
        raise NotImplementedError

    # the IP's master port: memory by device address
    def mem_read(self, addr, n):
        return self.backend.device_read(addr, n)

    def mem_write(self, addr, data):
        self.backend.device_write(addr, bytes(data))


class DeviceMemory:
    """A device's default memory bank, as PYNQ's ``Device.allocate`` uses it
    (``self.default_memory.allocate(shape, dtype, **kwargs)``): served by
    ``pynq_alloc.allocate`` on the backend, with the keywords passed on as given.
    PYNQ's SG DMA allocates its descriptors this way (``target=self.device``)."""

    def __init__(self, backend):
        self.backend = backend
        self.calls = []

    def allocate(self, shape, dtype, **kwargs):
        self.calls.append((shape, dtype, dict(kwargs)))
        return pynq_alloc.allocate(shape, dtype, target=self.backend, **kwargs)


# ------------------------------------------------------------------ AXI DMA


class _DmaChannel:
    def __init__(self, name):
        self.name = name
        self.dmacr = 0
        self.halted = True
        self.idle = False
        self.err = 0  # DMASR bits 4-6, 8-10
        self.ioc = False
        self.addr = 0  # SA / DA (simple mode)
        self.length = 0  # LENGTH (S2MM: bytes received once done)
        self.curdesc = 0
        self.taildesc = 0
        self.pending = None  # S2MM: ("simple", addr, length) or ("sg",) waiting for data
        self.polls = 0


class AxiDmaModel(RegisterModel):
    """AXI DMA (PG021) in simple or scatter-gather mode, MM2S looped back to S2MM.

    MM2S reads memory and sends it as one packet (TLAST at the end of a simple
    transfer, or at the descriptor with TXEOF) into ``stream``; S2MM takes the next
    packet from ``stream`` and writes it to memory. ``transform`` (bytes -> bytes)
    is applied on the way, so a copy that bypasses the IP cannot pass a test.
    """

    MM2S, S2MM = 0x00, 0x30

    def __init__(self, backend, base_address, sg=False, transform=None):
        super().__init__(backend, base_address, 0x10000)
        self.sg = sg
        self.transform = transform or (lambda b: b)
        self.ch = {self.MM2S: _DmaChannel("MM2S"), self.S2MM: _DmaChannel("S2MM")}
        self.stream = collections.deque()
        self.tx_packet = bytearray()
        self.descriptors_done = []  # (channel, descriptor address, status word)

    def description(self, device, data_width=32, sg_length_width=None, interrupts=False):
        """The ip_dict entry PYNQ builds from a .hwh for this IP."""
        params = {
            "c_include_sg": "1" if self.sg else "0",
            "c_micro_dma": "0",
            "c_include_mm2s": "1",
            "c_include_s2mm": "1",
            "c_include_mm2s_dre": "0",
            "c_include_s2mm_dre": "0",
            "c_m_axi_mm2s_data_width": str(data_width),
            "c_m_axi_s2mm_data_width": str(data_width),
        }
        if sg_length_width is not None:
            params["c_sg_length_width"] = str(sg_length_width)
        return {
            "device": device,
            "phys_addr": self.lo_address,
            "addr_range": self.hi_address - self.lo_address,
            "parameters": params,
            "interrupts": ({"mm2s_introut": {"fullpath": "axi_dma/mm2s_introut"},
                            "s2mm_introut": {"fullpath": "axi_dma/s2mm_introut"}}
                           if interrupts else {}),
            "gpio": {},
            "type": "xilinx.com:ip:axi_dma:7.1",
        }

    def _chan(self, offset):
        base = self.S2MM if offset >= self.S2MM else self.MM2S
        return base, self.ch[base], offset - base

    def read_register(self, offset):
        base, c, reg = self._chan(offset)
        if reg == 0x00:
            return c.dmacr
        if reg == 0x04:
            busy = not c.halted and not c.idle
            c.polls = c.polls + 1 if busy else 0
            if c.polls > MAX_IDLE_POLLS:
                raise ModelError(f"{c.name} busy forever: the driver waits for a transfer "
                                 f"that cannot complete (pending={c.pending}, "
                                 f"packets queued={len(self.stream)})")
            return (int(c.halted) | int(c.idle) << 1 | int(self.sg) << 3 | c.err
                    | int(c.ioc) << 12)
        if reg in (0x08, 0x0C, 0x10, 0x14) and self.sg:
            v = {0x08: c.curdesc, 0x10: c.taildesc}[reg & ~4]
            return (v >> 32) if reg & 4 else v & 0xFFFFFFFF
        if reg == 0x28 and not self.sg:
            return c.length
        if reg in (0x18, 0x1C) and not self.sg:
            return (c.addr >> 32) if reg == 0x1C else c.addr & 0xFFFFFFFF
        raise ModelError(f"{c.name}: read of unmodelled register {reg:#x}")

    def write_register(self, offset, value):
        base, c, reg = self._chan(offset)
        if reg == 0x00:
            if value & 0x4:  # soft reset: both channels back to halted
                for ch in self.ch.values():
                    ch.__init__(ch.name)
                self.stream.clear()
                self.tx_packet.clear()
                return
            c.dmacr = value & ~0x4
            if value & 1:
                if c.halted:
                    c.halted, c.idle = False, False
            else:
                c.halted, c.idle, c.pending = True, False, None
            return
        if reg == 0x04:  # W1C interrupt bits
            if value & 0x1000:
                c.ioc = False
            return
        if self.sg and reg in (0x08, 0x0C, 0x10, 0x14):
            if reg in (0x08, 0x0C):
                if not c.halted:
                    raise ModelError(f"{c.name}: CURDESC written while running (PG021: "
                                     "only while halted)")
                c.curdesc = _set_half(c.curdesc, value, reg == 0x0C)
                return
            c.taildesc = _set_half(c.taildesc, value, reg == 0x14)
            if reg == 0x14:  # PYNQ writes LSB then MSB: the MSB write starts the fetch
                if c.halted:
                    raise ModelError(f"{c.name}: TAILDESC written while halted")
                self._run_sg(base, c)
            return
        if not self.sg and reg in (0x18, 0x1C):
            c.addr = _set_half(c.addr, value, reg == 0x1C)
            return
        if not self.sg and reg == 0x28:
            if c.halted:
                raise ModelError(f"{c.name}: LENGTH written while halted")
            if value == 0:
                c.err |= 0x10  # DMAIntErr
                return
            c.length = value
            c.idle = False
            if base == self.MM2S:
                self.stream.append(self.transform(self.mem_read(c.addr, value)))
                c.idle, c.ioc = True, True
            else:
                c.pending = ("simple", c.addr, value)
            self._serve_s2mm()
            return
        raise ModelError(f"{c.name}: write of {value:#x} to unmodelled register {reg:#x}")

    # -- scatter-gather
    def _descriptors(self, c):
        """The chain from CURDESC to TAILDESC: [(address, words)]."""
        chain, addr = [], c.curdesc
        for _ in range(4096):
            words = struct.unpack("<16I", self.mem_read(addr, 64))
            chain.append((addr, list(words)))
            if addr == c.taildesc:
                return chain
            addr = words[0] | words[1] << 32
        raise ModelError(f"{c.name}: descriptor chain from {c.curdesc:#x} never reaches "
                         f"TAILDESC {c.taildesc:#x}")

    def _complete(self, c, addr, status):
        self.mem_write(addr + 0x1C, struct.pack("<I", status))
        self.descriptors_done.append((c.name, addr, status))

    def _run_sg(self, base, c):
        if base == self.MM2S:
            for addr, w in self._descriptors(c):
                ctrl = w[6]
                n = ctrl & 0x03FFFFFF
                self.tx_packet += self.mem_read(w[2] | w[3] << 32, n)
                self._complete(c, addr, 0x80000000 | n)
                if ctrl & (1 << 26):  # TXEOF: end of packet
                    self.stream.append(self.transform(bytes(self.tx_packet)))
                    self.tx_packet.clear()
            c.curdesc = c.taildesc
            c.idle, c.ioc = True, True
        else:
            c.pending = ("sg",)
            c.idle = False
        self._serve_s2mm()

    def _serve_s2mm(self):
        c = self.ch[self.S2MM]
        if c.pending is None or not self.stream:
            return
        packet = self.stream.popleft()
        if c.pending[0] == "simple":
            _, addr, room = c.pending
            if len(packet) > room:
                c.err |= 0x10  # DMAIntErr: packet longer than the buffer
                self.mem_write(addr, packet[:room])
                c.length = room
            else:
                self.mem_write(addr, packet)
                c.length = len(packet)
        else:
            chain, pos = self._descriptors(c), 0
            for i, (addr, w) in enumerate(chain):
                room = w[6] & 0x03FFFFFF
                chunk = packet[pos:pos + room]
                self.mem_write(w[2] | w[3] << 32, chunk)
                pos += len(chunk)
                status = 0x80000000 | len(chunk) | (1 << 27 if i == 0 else 0)
                if pos == len(packet):
                    self._complete(c, addr, status | 1 << 26)  # RXEOF
                    break
                self._complete(c, addr, status)
            else:
                raise ModelError(f"S2MM: {len(packet)}-byte packet does not fit the "
                                 f"{sum(w[6] & 0x03FFFFFF for _, w in chain)} bytes of "
                                 "the descriptor chain")
            if addr != c.taildesc:
                raise ModelError("S2MM: packet ended before TAILDESC; the engine would "
                                 "not go idle and PYNQ's wait() would spin")
            c.curdesc = c.taildesc
        c.pending = None
        c.idle, c.ioc = True, True


def _set_half(old, value, upper):
    if upper:
        return (old & 0xFFFFFFFF) | (value & 0xFFFFFFFF) << 32
    return (old & ~0xFFFFFFFF) | (value & 0xFFFFFFFF)


# ------------------------------------------------------------------ HLS


class HlsVaddModel(RegisterModel):
    """A Vitis HLS kernel ``void vadd(const int *a, const int *b, int *out, unsigned n)``
    with ap_ctrl_hs on AXI4-Lite, 64-bit pointers: the register layout UG1399 gives
    (CTRL 0x00, a 0x10, b 0x1C, out 0x28, n 0x34; 4 bytes of padding after each
    pointer). On ap_start it reads a and b by device address, writes a + b to out
    and sets ap_done and ap_idle."""

    REGMAP = {
        "CTRL": {"address_offset": 0x00, "type": "unsigned int", "size": 32},
        "a": {"address_offset": 0x10, "type": "int*", "size": 64},
        "b": {"address_offset": 0x1C, "type": "int*", "size": 64},
        "out": {"address_offset": 0x28, "type": "int*", "size": 64},
        "n": {"address_offset": 0x34, "type": "unsigned int", "size": 32},
    }

    def __init__(self, backend, base_address):
        super().__init__(backend, base_address, 0x10000)
        self.regs = {o: 0 for o in (0x10, 0x14, 0x1C, 0x20, 0x28, 0x2C, 0x34)}
        self.ctrl = 0x4  # ap_idle
        self.runs = []

    def description(self, device):
        """The ip_dict entry, with the "registers" PYNQ reads from a .hwh."""
        bit = lambda off, access: {"bit_offset": off, "bit_width": 1, "access": access,  # noqa
                                   "description": ""}
        registers = {k: {"address_offset": v["address_offset"], "size": v["size"],
                         "access": "read-write", "description": k}
                     for k, v in self.REGMAP.items()}
        registers["CTRL"]["fields"] = {"AP_START": bit(0, "read-write"),
                                       "AP_DONE": bit(1, "read-only"),
                                       "AP_IDLE": bit(2, "read-only")}
        return {"device": device, "phys_addr": self.lo_address,
                "addr_range": self.hi_address - self.lo_address, "interrupts": {},
                "gpio": {}, "type": "xilinx.com:hls:vadd:1.0",
                "registers": registers, "fullpath": "vadd_0"}

    def read_register(self, offset):
        if offset == 0x00:
            return self.ctrl
        if offset in self.regs:
            return self.regs[offset]
        # padding words the packed struct covers read as zero
        if offset < 0x38:
            return 0
        raise ModelError(f"vadd: read of unmodelled register {offset:#x}")

    def write_register(self, offset, value):
        if offset == 0x00:
            if value & 1:
                self._run()
            return
        if offset in self.regs:
            self.regs[offset] = value
            return
        if offset < 0x38:  # padding inside the packed argument struct
            if value:
                raise ModelError(f"vadd: nonzero write {value:#x} to padding at {offset:#x}")
            return
        raise ModelError(f"vadd: write to unmodelled register {offset:#x}")

    def pointer(self, offset):
        return self.regs[offset] | self.regs[offset + 4] << 32

    def _run(self):
        a, b, out, n = self.pointer(0x10), self.pointer(0x1C), self.pointer(0x28), self.regs[0x34]
        self.runs.append((a, b, out, n))
        va = struct.unpack(f"<{n}i", self.mem_read(a, 4 * n))
        vb = struct.unpack(f"<{n}i", self.mem_read(b, 4 * n))
        res = [((x + y + 2**31) % 2**32) - 2**31 for x, y in zip(va, vb)]
        self.mem_write(out, struct.pack(f"<{n}i", *res))
        self.ctrl = 0x2 | 0x4  # ap_done | ap_idle


# ------------------------------------------------------------------ AXI VDMA


class AxiVdmaModel(RegisterModel):
    """AXI VDMA (PG020) with both channels, ``framecount`` frame stores, circular mode.

    ``capture(frame)`` plays the video input: the S2MM channel writes one frame
    (``vsize`` lines of ``hsize`` bytes, ``stride`` apart) to the frame store it is
    on, raises the frame-count interrupt bit and moves to the next store.
    ``scanout()`` plays the video output: the MM2S channel reads the frame store
    the park pointer names and returns its bytes.
    """

    def __init__(self, backend, base_address, framecount=4):
        super().__init__(backend, base_address, 0x10000)
        self.n = framecount
        self.r = collections.defaultdict(int)  # plain read/write registers
        self.s2mm_sr = 0x1  # halted
        self.mm2s_sr = 0x1
        self.s2mm_cur = 0  # WrFrmStore
        self.mm2s_cur = 0  # RdFrmStore
        self.written = {}  # device address of a frame store -> the bytes captured there

    def description(self, device):
        return {
            "device": device, "phys_addr": self.lo_address,
            "addr_range": self.hi_address - self.lo_address,
            "parameters": {"C_INCLUDE_S2MM": "1", "C_INCLUDE_MM2S": "1",
                           "C_NUM_FSTORES": str(self.n), "C_M_AXI_S2MM_ADDR_WIDTH": "32",
                           "C_M_AXI_MM2S_ADDR_WIDTH": "32"},
            "interrupts": {"s2mm_introut": {"fullpath": "axi_vdma/s2mm_introut"},
                           "mm2s_introut": {"fullpath": "axi_vdma/mm2s_introut"}},
            "gpio": {}, "type": "xilinx.com:ip:axi_vdma:6.3",
        }

    STORES = {0x5C: "mm2s", 0xAC: "s2mm"}

    def _store_reg(self, offset):
        for base in self.STORES:
            if base <= offset < base + 4 * self.n:
                return base, (offset - base) // 4
        return None

    def read_register(self, offset):
        if offset == 0x04:
            return self.mm2s_sr
        if offset == 0x34:
            return self.s2mm_sr
        if offset == 0x28:  # PARK_PTR: refs as written, current stores read-only
            return (self.r[0x28] & 0x1F1F) | self.mm2s_cur << 16 | self.s2mm_cur << 24
        if offset in (0x00, 0x30):
            return self.r[offset] & ~0x4  # reset self-clears
        if offset in (0x50, 0x54, 0x58, 0xA0, 0xA4, 0xA8) or self._store_reg(offset):
            return self.r[offset]
        raise ModelError(f"VDMA: read of unmodelled register {offset:#x}")

    def write_register(self, offset, value):
        if offset in (0x00, 0x30):
            self.r[offset] = value
            running = bool(value & 1) and not value & 0x4
            if offset == 0x00:
                self.mm2s_sr = (self.mm2s_sr & ~1) | (not running)
                if running:
                    self.mm2s_sr |= 0x1000  # ready for a frame
            else:
                self.s2mm_sr = (self.s2mm_sr & ~1) | (not running)
            return
        if offset in (0x04, 0x34):  # W1C: interrupt and error bits
            if offset == 0x04:
                self.mm2s_sr &= ~(value & 0xDFF0)
            else:
                self.s2mm_sr &= ~(value & 0xDFF0)
            return
        if offset == 0x28 or offset in (0x50, 0x54, 0x58, 0xA0, 0xA4, 0xA8) \
                or self._store_reg(offset):
            self.r[offset] = value
            return
        raise ModelError(f"VDMA: write of {value:#x} to unmodelled register {offset:#x}")

    def store_address(self, channel, index):
        base = 0xAC if channel == "s2mm" else 0x5C
        return self.r[base + 4 * index]

    def capture(self, frame: bytes):
        if self.s2mm_sr & 1:
            raise ModelError("VDMA S2MM: video arrives while the channel is halted")
        if not self.r[0x30] & 0x2:
            raise ModelError("VDMA S2MM: parked; this model only runs circular mode")
        hsize, stride, vsize = self.r[0xA4], self.r[0xA8] & 0xFFFF, self.r[0xA0]
        if len(frame) != hsize * vsize:
            raise ModelError(f"VDMA S2MM: frame of {len(frame)} bytes for a "
                             f"{hsize}x{vsize} mode")
        addr = self.store_address("s2mm", self.s2mm_cur)
        if addr == 0:
            raise ModelError(f"VDMA S2MM: frame store {self.s2mm_cur} has no address")
        for y in range(vsize):
            self.mem_write(addr + y * stride, frame[y * hsize:(y + 1) * hsize])
        self.written[addr] = bytes(frame)
        self.s2mm_sr |= 0x1000  # frame count interrupt
        self.s2mm_cur = (self.s2mm_cur + 1) % self.n

    def scanout(self):
        if self.mm2s_sr & 1:
            raise ModelError("VDMA MM2S: scanout while the channel is halted")
        index = self.r[0x28] & 0x1F  # parked on RdFrmPtrRef
        self.mm2s_cur = index
        hsize, stride, vsize = self.r[0x54], self.r[0x58] & 0xFFFF, self.r[0x50]
        addr = self.store_address("mm2s", index)
        lines = [self.mem_read(addr + y * stride, hsize) for y in range(vsize)]
        self.mm2s_sr |= 0x1000  # frame done: ready for the next writeframe
        return addr, b"".join(lines)


class FrameMemory:
    """A memory bank as PYNQ's video frame cache sees it (``XrtMemory``'s contract):
    ``allocate(shape, dtype, cacheable=0, pointer=None, cache=None)``.

    A fresh frame's memory is a pynq_alloc Buffer from the backend (honouring
    ``cacheable``); what PYNQ calls the *pointer* is that Buffer. With a ``cache``,
    the frame handed out is ``pynq_alloc.wrap()`` of the pointer whose ``on_free``
    returns the pointer to the cache, as PYNQ's ``PynqBuffer.freebuffer`` does; a
    recycled frame is a new wrap of a pointer the cache hands back.
    """

    def __init__(self, backend, address_bits=None):
        self.backend = backend
        self.address_bits = address_bits  # e.g. 32 for a bank serving 32-bit engines
        self.calls = []  # the keyword arguments each allocate() got
        self.fresh = 0

    def allocate(self, shape, dtype, cacheable=0, pointer=None, cache=None):
        self.calls.append({"cacheable": cacheable, "pointer": pointer, "cache": cache})
        if pointer is None:
            self.fresh += 1
            limit = {} if self.address_bits is None else {"address_bits": self.address_bits}
            pointer = pynq_alloc.allocate(shape, dtype, target=self.backend,
                                          cacheable=bool(cacheable), **limit)
        if cache is None:
            return pointer
        mem = pointer

        def give_back(_buffer):
            cache.return_pointer(mem)

        return pynq_alloc.wrap(mem, mem.device_address, coherent=mem.coherent,
                               backend=self.backend, on_free=give_back)


# ------------------------------------------------------------------ MicroBlaze RPC


class MicroblazeVaddModel:
    """The stream of a PYNQ MicroBlaze running the RPC server PYNQ's rpc.py generates
    for ``int vadd(void *a, void *b, void *out, unsigned int n)`` (function index 0).

    ``write()`` gets what ``_function_wrapper`` sends: the function index (int), each
    ``void*`` as the unsigned int the generated C reads (it ORs in ``ptr_offset``,
    rpc.PTR_OFFSET, the window through which the MicroBlaze sees the PS's memory),
    then ``n``. The model adds a and b into out by device address and queues the
    reply the generated C writes: return command 0, then the int result (n).
    """

    def __init__(self, backend, ptr_offset=0):
        self.backend = backend
        self.ptr_offset = ptr_offset
        self.reply = bytearray()
        self.calls = []

    def _device_address(self, value):
        return (value | self.ptr_offset) - self.ptr_offset

    def write(self, data):
        index, a, b, out, n = struct.unpack("<iIIII", bytes(data))
        if index != 0:
            raise ModelError(f"MicroBlaze: no function with index {index}")
        a, b, out = (self._device_address(v) for v in (a, b, out))
        self.calls.append((a, b, out, n))
        va = struct.unpack(f"<{n}i", self.backend.device_read(a, 4 * n))
        vb = struct.unpack(f"<{n}i", self.backend.device_read(b, 4 * n))
        res = [((x + y + 2**31) % 2**32) - 2**31 for x, y in zip(va, vb)]
        self.backend.device_write(out, struct.pack(f"<{n}i", *res))
        self.reply += bytes([0]) + struct.pack("<i", n)

    def read(self, n):
        if len(self.reply) < n:
            raise ModelError(f"MicroBlaze: {n} bytes read, {len(self.reply)} available "
                             "(the driver would block forever)")
        data = bytes(self.reply[:n])
        del self.reply[:n]
        return data
