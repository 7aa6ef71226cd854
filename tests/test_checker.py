"""The sim backend's coherency checker names missing flush()/invalidate() mistakes."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pynq_alloc
from pynq_alloc import CoherencyError, CoherencyWarning


def test_correct_round_trip_reports_nothing():
    be = pynq_alloc.open_backend("sim", size=1 << 20, check="raise")
    src = be.allocate(64, "u4")
    dst = be.allocate(64, "u4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src[:] = np.arange(64)
        src.flush()
        data = np.frombuffer(be.device_read(src.device_address, src.nbytes), "u4")
        be.device_write(dst.device_address, (data + 1).astype("u4").tobytes())
        dst.invalidate()
        assert dst.tolist() == list(range(1, 65))
        # the CPU reads and writes again after invalidating, then flushes: still fine
        dst[:] += 1
        dst.flush()
        assert be.device_read(dst.device_address, 4) == (2).to_bytes(4, "little")


def test_missing_flush_before_device_read(checked):
    buf = checked.allocate(256, "u1")
    buf[70] = 1
    with pytest.raises(CoherencyError) as exc:
        checked.device_read(buf.device_address, 256)
    msg = str(exc.value)
    assert "never flushed" in msg and "flush()" in msg
    assert f"0x{buf.device_address + 64:x}-0x{buf.device_address + 127:x}" in msg
    assert "(1 cache line)" in msg
    buf.flush()
    assert checked.device_read(buf.device_address, 256)[70] == 1


def test_invalidate_over_dirty_lines(checked):
    buf = checked.allocate(64, "u4")
    checked.device_write(buf.device_address, np.full(64, 9, "u4").tobytes())
    buf[0] = 5  # the CPU writes while the device owns the buffer
    with pytest.raises(CoherencyError, match="invalidate\\(\\) over cache lines the CPU changed"):
        buf.invalidate()
    # as on hardware: the dirty line was written back over the device's data
    assert buf[:16].tolist() == [5] + [0] * 15 and buf[16:].tolist() == [9] * 48


def test_device_write_over_unflushed_lines(checked):
    buf = checked.allocate(32, "u4")
    buf[:] = 1
    with pytest.raises(CoherencyError, match="device wrote cache lines the CPU changed"):
        checked.device_write(buf.device_address + 64, b"\x02" * 64)


def test_warn_mode_warns_and_carries_on():
    be = pynq_alloc.open_backend("sim", size=1 << 20, check="warn")
    buf = be.allocate(16, "u4", cacheable=True)
    buf[:] = 3
    with pytest.warns(CoherencyWarning, match="never flushed"):
        data = be.device_read(buf.device_address, 64)
    assert data == bytes(64)  # the device saw memory, not the CPU's cache
    assert issubclass(CoherencyWarning, UserWarning)


def test_check_off_by_default_reports_nothing(sim):
    buf = sim.allocate(16)
    buf[:] = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sim.device_read(buf.device_address, 64) == bytes(64)
    assert sim.info()["check"] == "off"


def test_env_sets_check_for_the_default_backend():
    code = (
        "import pynq_alloc, numpy as np\n"
        "b = pynq_alloc.allocate(16)\n"
        "b[:] = 1\n"
        "print(pynq_alloc.default_backend().info()['check'])\n"
        "try:\n"
        "    pynq_alloc.default_backend().device_read(b.device_address, 64)\n"
        "except pynq_alloc.CoherencyError as e:\n"
        "    print('raised')\n"
    )
    # PYNQ_ALLOC_CACHEABLE=1: the default backend's buffers are cacheable, so checked
    env = dict(os.environ, PYNQ_ALLOC_BACKEND="sim", PYNQ_ALLOC_SIM_CHECK="raise",
               PYNQ_ALLOC_CACHEABLE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["raise", "raised"]


def test_coherent_buffers_are_never_reported(checked):
    buf = checked.allocate(16, cacheable=False)
    buf[:] = 2
    assert checked.device_read(buf.device_address, 64) == np.full(16, 2, "u4").tobytes()


# ---------------------------------------------- (4) flush() where invalidate() was meant

def test_flush_over_device_written_lines_is_reported(checked):
    """PYNQ's scatter-gather DMA bug: descriptors the device updated are read back after
    flush() where invalidate() was meant."""
    buf = checked.allocate(64, "u4")  # 256 bytes: 4 cache lines
    buf.flush()
    checked.device_write(buf.device_address + 64, np.full(16, 7, "u4").tobytes())
    with pytest.raises(CoherencyError) as info:
        buf.flush()
    msg = str(info.value)
    assert "flush() over cache lines the device wrote" in msg
    assert "bytes 64-127 of the buffer" in msg and "invalidate()" in msg
    a = buf.device_address + 64
    assert f"0x{a:x}-0x{a + 63:x}" in msg and "1 cache line)" in msg
    # the CPU's copy was clean: the device's data survived, and invalidate() gets it
    assert buf[16:32].tolist() == [0] * 16
    buf.invalidate()
    assert buf[16:32].tolist() == [7] * 16
    buf.flush()  # nothing device-written since the invalidate: no report


def test_flush_report_when_the_cpu_overwrote_the_device_data(checked):
    buf = checked.allocate(32, "u4")
    checked.device_write(buf.device_address, np.full(32, 5, "u4").tobytes())
    buf[:] = 1  # the CPU writes while the device owns the buffer...
    with pytest.raises(CoherencyError, match="stale copy of some of them now overwrote"):
        buf.flush()  # ...and flushes: its copy wins, as on hardware
    assert checked.device_read(buf.device_address, 128) == np.full(32, 1, "u4").tobytes()


def test_flush_of_only_cpu_written_lines_is_not_reported(checked):
    buf = checked.allocate(32, "u4")
    checked.device_write(buf.device_address + 64, bytes(64))
    buf[:16] = 3
    buf[:16].flush()  # line 0 only: the device wrote line 1
    assert checked.device_read(buf.device_address, 64) == np.full(16, 3, "u4").tobytes()


def test_flush_report_in_warn_mode():
    with pynq_alloc.open_backend("sim", size=1 << 20, check="warn", cacheable=True) as be:
        buf = be.allocate(16, "u4")
        be.device_write(buf.device_address, np.full(16, 2, "u4").tobytes())
        with pytest.warns(CoherencyWarning, match=r"Call invalidate\(\) after the device writes"):
            buf.flush()
        buf.invalidate()
        assert buf.tolist() == [2] * 16
        del buf


def test_device_read_check_false_peeks_without_a_report(checked):
    buf = checked.allocate(16, "u4")
    buf[:] = 3  # not flushed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checked.device_read(buf.device_address, 64, check=False) == bytes(64)
    with pytest.raises(CoherencyError, match="never flushed"):
        checked.device_read(buf.device_address, 64)
    with pytest.raises(TypeError):
        checked.device_read(buf.device_address, 64, False)  # keyword only


def test_info_has_base_address():
    with pynq_alloc.open_backend("sim", size=1 << 20, base_address=0x8000_0000) as be:
        assert be.info()["base_address"] == 0x8000_0000
        assert be.allocate(4).device_address == 0x8000_0000
