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
