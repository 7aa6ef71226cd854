"""pynq_alloc.cocotb outside a simulator: SimMemory as a cocotbext-axi Region (alone and
in an AddressSpace), its statistics and hexdump, argument checks, and the ImportError
without the cocotb extra. Needs cocotb and cocotbext-axi, not a simulator.
"""
import asyncio
import subprocess
import sys

import numpy as np
import pytest

import pynq_alloc
import simrun


@pytest.fixture
def pac():
    """pynq_alloc.cocotb, or a skip (a failure under PYNQ_ALLOC_REQUIRE_TOOLS=1)."""
    simrun.require_tools(pytest)
    import pynq_alloc.cocotb as pac

    return pac


@pytest.fixture
def checked():
    be = pynq_alloc.open_backend("sim", size=1 << 20, check="raise")
    yield be
    be.close()


def test_region_reads_and_writes_device_side_by_device_address(pac, checked):
    mem = pac.SimMemory(checked)
    buf = pynq_alloc.allocate(64, "u1", target=checked, cacheable=True)
    buf[:] = np.arange(64)
    buf.flush()
    addr = buf.device_address
    got = asyncio.run(mem.read(addr + 8, 8))  # offsets are device addresses by default
    assert bytes(got) == bytes(range(8, 16))
    asyncio.run(mem.write(addr + 60, b"\xfe\xff"))
    buf.invalidate()
    assert buf[58:64].tolist() == [58, 59, 0xFE, 0xFF, 62, 63]
    assert mem.stats.as_dict() == {
        "reads": 1, "writes": 1, "bytes_read": 8, "bytes_written": 2, "errors": 0}


def test_region_in_an_address_space_maps_to_device_addresses(pac, checked):
    from cocotbext.axi import AddressSpace

    buf = pynq_alloc.allocate(4096, "u1", target=checked, cacheable=True)
    buf[:] = 0x11
    buf[100:104] = [1, 2, 3, 4]
    buf.flush()
    # a window over this buffer's device range, placed at 0x1000 in a bus address space
    mem = pac.SimMemory(checked, base=buf.device_address, size=4096)
    space = AddressSpace(2**32)
    space.register_region(mem, 0x1000)
    assert bytes(asyncio.run(space.read(0x1000 + 100, 4))) == b"\x01\x02\x03\x04"
    asyncio.run(space.write(0x1000 + 200, b"\xaa\xbb"))
    buf.invalidate()
    assert buf[199:203].tolist() == [0x11, 0xAA, 0xBB, 0x11]
    assert mem.device_base == buf.device_address


def test_checker_errors_pass_through_the_region_and_are_counted(pac, checked):
    mem = pac.SimMemory(checked)
    buf = pynq_alloc.allocate(64, "u1", target=checked, cacheable=True)
    buf[:] = 7  # not flushed
    with pytest.raises(pynq_alloc.CoherencyError, match=f"0x{buf.device_address:x}"):
        asyncio.run(mem.read(buf.device_address, 16))
    with pytest.raises(ValueError, match="not inside a live buffer"):
        mem.device_read(buf.device_address + 4096, 4)
    assert mem.stats.errors == 2 and mem.stats.reads == 0


def _has_check_free_read(backend, addr):
    try:
        backend.device_read(addr, 1, check=False)
        return True
    except TypeError:
        return False


def test_hexdump_shows_the_device_side_without_tripping_the_checker(pac, checked, capsys):
    mem = pac.SimMemory(checked)
    buf = pynq_alloc.allocate(128, "u1", target=checked, cacheable=True)
    buf[:64] = np.frombuffer(b"pynq_alloc sees" + bytes(49), np.uint8)
    buf.flush()
    buf[64:] = 0x41  # CPU-written, not flushed: the device side still holds zeros
    addr = buf.device_address
    lines = mem.hexdump_lines(addr, 80)
    assert len(lines) == 5
    assert lines[0] == (f"{addr:08x}: 70 79 6e 71 5f 61 6c 6c 6f 63 20 73 65 65 73 00"
                        "  pynq_alloc sees.")
    if _has_check_free_read(checked, addr):
        assert lines[4] == f"{addr + 64:08x}: " + " ".join(["00"] * 16) + "  " + "." * 16
    else:  # this pynq_alloc has no device_read(check=False): the stale line is marked
        assert lines[4].startswith(f"{addr + 64:08x}: (not flushed")
    assert mem.stats.as_dict()["reads"] == 0 and mem.stats.errors == 0
    mem.hexdump(addr, 16, prefix="> ")
    assert capsys.readouterr().out == "> " + lines[0] + "\n"


def test_bad_arguments(pac, checked):
    class NotSim:
        name = "udmabuf"

    with pytest.raises(ValueError, match="needs the 'sim' backend"):
        pac.SimMemory(NotSim())
    with pytest.raises(ValueError, match="on_error must be one of"):
        pac.AxiRam(None, None, backend=checked, on_error="ignore")
    other = pynq_alloc.open_backend("sim", size=1 << 20)
    with pytest.raises(ValueError, match="another backend"):
        pac.AxiRam(None, None, backend=other, memory=pac.SimMemory(checked))
    other.close()


def test_mmio_blocking_calls_outside_a_driver_say_how(pac):
    mmio = pac.MMIO(master=object())
    with pytest.raises(RuntimeError, match="run_driver"):
        mmio.read(0)
    with pytest.raises(RuntimeError, match="awrite"):
        mmio.write(0, 1)


def test_import_without_the_extra_says_what_to_install(tmp_path):
    # a process where cocotb cannot be imported, whether or not it is installed
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('cocotb', 'cocotbext'):\n"
        "            raise ImportError('No module named ' + repr(name))\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import pynq_alloc.cocotb\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=str(simrun.HERE.parent.parent), timeout=120)
    assert "ImportError: pynq_alloc.cocotb needs cocotb >= 2.0 and cocotbext-axi" in out.stdout
    assert "pip install 'pynq_alloc[cocotb]'" in out.stdout, out.stdout + out.stderr


class _FakeSim:
    """A sim-like backend whose device side is a bytearray: a line the 'CPU' has not
    flushed makes a checked read raise, as check='raise' does."""

    name = "sim"

    def __init__(self, with_check_kw):
        self.mem = bytearray(range(64)) * 2
        self.stale = range(64, 128)
        self.with_check_kw = with_check_kw
        self.calls = []

    def device_read(self, addr, n, *args, **kwargs):
        if kwargs and not self.with_check_kw:
            raise TypeError("Backend.device_read() takes no keyword arguments")
        check = kwargs.get("check", True)
        self.calls.append(check)
        if check and any(a in self.stale for a in range(addr, addr + n)):
            raise pynq_alloc.CoherencyError("the device read bytes the CPU changed")
        return bytes(self.mem[addr:addr + n])

    def device_write(self, addr, data):
        self.mem[addr:addr + len(data)] = data


@pytest.mark.parametrize("with_check_kw", [True, False])
def test_peek_uses_check_false_when_the_binding_has_it(pac, monkeypatch, with_check_kw):
    monkeypatch.setattr(pac, "_peek_has_check_kw", None)
    fake = _FakeSim(with_check_kw)
    mem = pac.SimMemory(fake)
    lines = mem.hexdump_lines(48, 32)
    assert lines[0].startswith("00000030: 30 31 32")
    if with_check_kw:  # one unchecked read shows the stale line's device bytes
        assert lines[1].startswith("00000040: 00 01 02 03")
        assert fake.calls == [False]
    else:  # checked reads; the refused line is marked, the rest shown
        assert lines[1].startswith("00000040: (not flushed")
        assert fake.calls == [True, True, True]
    assert mem.stats.reads == 0  # peeks are not device accesses
