"""Adversarial use: threads racing close(), NumPy's back doors (__setstate__,
DLPack, Buffer(...), subok=True helpers), shared dtypes, odd arguments.

Every reproducer runs in a fresh interpreter, so a crash (a segfault, an
abort from a sanitizer) fails its test instead of taking the run with it.
In the sanitizer lane the children inherit LD_PRELOAD and ASAN_OPTIONS, so
they run under ASan+UBSan too. Each child asserts what must hold and prints
"ok" last."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pynq_alloc

# where the pynq_alloc under test lives (the sanitizer lane builds a copy elsewhere)
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pynq_alloc.__file__)))
NUMPY2 = int(np.__version__.split(".")[0]) >= 2

PRELUDE = """\
import gc, os, sys, threading
import numpy as np
import pynq_alloc
from pynq_alloc import allocate, open_backend
"""


def run(code, **env):
    """Runs code in a child interpreter; returns its stdout. A crash fails."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (PKG_PARENT, e.get("PYTHONPATH")) if p)
    e.setdefault("PYNQ_ALLOC_BACKEND", "sim")
    e.update({k: str(v) for k, v in env.items()})
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=e,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stdout.rstrip().endswith("ok"), r.stdout + r.stderr
    return r.stdout


# ------------------------------------------------ 1. backend freed under a call

def test_close_and_last_free_while_device_read_runs():
    run("""
        for _ in range(3):
            b = open_backend('sim', size=1 << 16)
            x = allocate(16, 'u4', target=b, cacheable=True)
            x[:] = 7
            x.flush()
            a = x.device_address
            seen = []
            def reader():
                for _ in range(200):
                    try:
                        seen.append(b.device_read(a, 64))
                    except ValueError as exc:
                        seen.append(str(exc))
            t = threading.Thread(target=reader)
            t.start()
            b.close()
            del x
            t.join()
            assert len(seen) == 200
            for s in seen:
                # live: the flushed data; freed or closed: the documented error
                assert (s == np.full(16, 7, 'u4').tobytes() or 'closed' in s
                        or 'not inside a live buffer' in s), s
            assert b.info()['closed'] is True and b.info()['buffers'] == 0
        print('ok')
        """)


def test_closed_backend_serves_its_live_buffers():
    run("""
        b = open_backend('sim', size=1 << 16)
        x = allocate(16, 'u4', target=b, cacheable=True)
        x[:] = np.arange(16)
        x.flush()
        b.close()
        assert bytes(b.device_read(x.device_address, 64)) == np.arange(16, dtype='u4').tobytes()
        b.device_write(x.device_address, np.full(16, 9, 'u4').tobytes())
        x.invalidate()
        assert (x == 9).all()
        try:
            allocate(4, target=b)
        except ValueError as exc:
            assert 'closed' in str(exc)
        else:
            raise AssertionError('a closed backend allocated')
        addr = x.device_address
        del x
        try:
            b.device_read(addr, 4)
        except ValueError as exc:
            assert 'closed' in str(exc) and 'last buffer' in str(exc), exc
        else:
            raise AssertionError('read after the last buffer went')
        print('ok')
        """)


def test_freebuffer_and_close_under_a_running_copy_hit_inert_memory():
    # A data race by design (README: freebuffer() while another thread's NumPy
    # call uses the array is like free() in C): the process must survive, and
    # the stray writes must land in inert memory, not in a later mapping.
    run("""
        n = 32 << 20
        src = np.full(n, 0xAB, 'u1')
        for rnd in range(3):
            b = open_backend('sim', size=64 << 20)
            buf = allocate(n, 'u1', target=b)
            lo = buf.virtual_address
            started = threading.Event()
            def writer():
                try:
                    while True:
                        np.copyto(buf, src)
                        started.set()
                except ValueError:
                    pass  # buf is empty after freebuffer()
                started.set()
            t = threading.Thread(target=writer)
            t.start()
            started.wait()
            buf.freebuffer()
            b.close()
            # a new backend cannot be placed over the released range: it stays inert
            b2 = open_backend('sim', size=64 << 20)
            y = allocate(n, 'u1', target=b2)
            t.join()
            assert not (lo <= y.virtual_address < lo + n), 'reused the released range'
            assert not y.any(), 'stray writes reached a new buffer'
            assert buf.size == 0
            del y
            b2.close()
        print('ok')
        """)


# ------------------------------------------------------------- 3. __setstate__

def test_setstate_is_refused_on_buffers_and_views():
    run("""
        b = open_backend('sim', size=1 << 20)
        x = allocate(16, 'u4', target=b)
        x[:] = np.arange(16)
        addr = x.device_address
        state = (1, (16,), np.dtype('u4'), False, bytes(64))
        targets = [x, x[2:], x.view('u1')]
        for target in targets:
            try:
                target.__setstate__(state)
            except TypeError as exc:
                assert 'allocate()' in str(exc)
            else:
                raise AssertionError('__setstate__ accepted')
        del targets, target
        assert x.device_address == addr and (x == np.arange(16)).all()
        x.freebuffer()
        assert b.info()['buffers'] == 0
        print('ok')
        """)


def test_data_cannot_be_reassigned():
    # NumPy 1.x lets `arr.data = obj` replace an array's memory and drop its
    # base (the anchor that counts plain views); NumPy 2 refuses it everywhere
    run("""
        import warnings
        warnings.simplefilter('error')
        b = open_backend('sim', size=1 << 20)
        x = allocate(16, 'u4', target=b)
        x[:] = np.arange(16)
        addr, base = x.device_address, x.base
        other = bytearray(64)
        for target in (x, x[2:], x.view('u1')):
            try:
                target.data = other
            except AttributeError as exc:
                assert "'data' is read-only" in str(exc), exc
            else:
                raise AssertionError('data assignment accepted')
        del target
        assert x.base is base and x.device_address == addr
        assert bytes(x.data) == np.arange(16, dtype='u4').tobytes()
        del base
        x.freebuffer()
        assert b.info()['buffers'] == 0
        print('ok')
        """)


def test_device_address_of_views_and_after_free():
    # device_address is made once per Buffer and kept: it must be right for
    # every view and gone (None) once the memory is released
    run("""
        b = open_backend('sim', size=1 << 20)
        x = allocate((8, 16), 'u4', target=b)
        a = x.device_address
        assert x.device_address == a and x.physical_address == a
        assert x[1].device_address == a + 64 and x[1:, 3:].device_address == a + 64 + 12
        assert x[::-1].device_address == a + 7 * 64 and x.T.device_address == a
        v = x[2]
        assert v.device_address == a + 128 and v.device_address == a + 128
        del v
        x.freebuffer()
        assert x.device_address is None and x.physical_address is None
        print('ok')
        """)


def test_setstate_on_the_anchor_cannot_free_memory_in_use():
    run("""
        b = open_backend('sim', size=1 << 20)
        x = allocate(16, 'u4', target=b)
        x[:] = 0x11111111
        plain = np.asarray(x)        # holds the anchor
        span = (x.device_address, x.device_address + x.nbytes)
        x.base.__setstate__((1, (16,), np.dtype('u4'), False, bytes(64)))
        try:
            x.freebuffer()
        except BufferError as exc:
            assert '__setstate__' in str(exc)
        else:
            raise AssertionError('freebuffer() freed memory a plain view uses')
        del x
        gc.collect()
        # the block is kept: new buffers never alias what `plain` still uses
        news = [allocate(16, 'u4', target=b) for _ in range(8)]
        for y in news:
            assert not (span[0] <= y.device_address < span[1])
            y[:] = 0x22222222
        assert (plain == 0x11111111).all()
        print('ok')
        """)


# -------------------------------------------------------- 4. uncounted exports

def test_dlpack_exports_are_counted():
    run("""
        b = open_backend('sim', size=1 << 20)
        x = allocate(16, 'u4', target=b)
        x[:] = 5
        d = np.from_dlpack(x)
        assert d.ctypes.data == x.virtual_address
        try:
            x.freebuffer()
        except BufferError as exc:
            assert 'plain ndarray view' in str(exc)
        else:
            raise AssertionError('freed under a DLPack import')
        cap = x.__dlpack__()
        del d
        try:
            x.freebuffer()
        except BufferError:
            pass
        else:
            raise AssertionError('freed under a DLPack capsule')
        del cap
        v = x[4:8]
        d = np.from_dlpack(v)      # from a view: the capsule holds the (counted) view
        del v
        try:
            x.freebuffer()
        except BufferError:
            pass
        else:
            raise AssertionError('freed under a DLPack import of a view')
        del d
        x.freebuffer()
        assert b.info()['buffers'] == 0
        print('ok')
        """)


def test_buffer_cannot_be_constructed_directly():
    run("""
        x = allocate(16, 'u4')
        for make in (lambda: pynq_alloc.Buffer((16,), 'u4', buffer=x),
                     lambda: pynq_alloc.Buffer((4,)),
                     lambda: np.ndarray.__new__(pynq_alloc.Buffer, (16,), 'u4', buffer=x)):
            try:
                make()
            except TypeError as exc:
                assert 'allocate' in str(exc) or 'not safe' in str(exc), exc
            else:
                raise AssertionError('a Buffer was built over foreign memory')
        class Sub(pynq_alloc.Buffer):
            pass
        try:
            Sub((4,))
        except TypeError:
            pass
        else:
            raise AssertionError('a subclass was built directly')
        s = x.view(Sub)          # views as a subclass still work and are counted
        assert s.device_address == x.device_address
        try:
            x.freebuffer()
        except BufferError:
            pass
        else:
            raise AssertionError('freed under a subclass view')
        del s
        x.freebuffer()
        print('ok')
        """)


def test_export_taken_before_linking_is_counted_once():
    run("""
        from numpy.lib.stride_tricks import as_strided
        x = allocate(16, 'u4')
        u = as_strided(x, x.shape, x.strides)    # plain, not linked
        w = u.view(pynq_alloc.Buffer)            # a Buffer NumPy could not link
        assert w.device_address is None
        m = memoryview(w)
        w._array_finalize(x)                     # linked now, with its export
        assert w.device_address == x.device_address
        del u
        try:
            x.freebuffer()
        except BufferError as exc:
            assert '1 buffer export' in str(exc), exc
        else:
            raise AssertionError('freed under an export')
        m.release()
        del m
        try:
            x.freebuffer()
        except BufferError as exc:
            assert '0 buffer export' in str(exc) and '1 view' in str(exc), exc
        else:
            raise AssertionError('freed under a view')
        del w
        x.freebuffer()
        print('ok')
        """)


# ---------------------------------------------------------- 5. subok helpers

@pytest.mark.skipif(not NUMPY2, reason="NumPy 1.x looks __array_finalize__ up per instance: "
                                       "see test_subok_helpers_on_numpy1")
def test_subok_helpers_give_counted_buffers():
    run("""
        from numpy.lib.stride_tricks import as_strided, sliding_window_view
        x = allocate(64, 'u4')
        x[:] = np.arange(64)
        makers = [lambda: np.broadcast_to(x, (2, 64), subok=True),
                  lambda: sliding_window_view(x, 8, subok=True),
                  lambda: as_strided(x, (8, 8), (32, 4), subok=True)]
        for make in makers:
            r = make()
            assert type(r) is pynq_alloc.Buffer
            assert r.device_address == x.device_address
            assert int(r.reshape(-1)[1]) == 1
            try:
                x.freebuffer()
            except BufferError as exc:
                assert 'view' in str(exc)
            else:
                raise AssertionError('freed under a subok view')
            del r
        x.freebuffer()
        print('ok')
        """)


@pytest.mark.skipif(NUMPY2, reason="NumPy 2 behaviour: test_subok_helpers_give_counted_buffers")
def test_subok_helpers_on_numpy1():
    # NumPy 1.x fetches __array_finalize__ from the instance for every view, so
    # it stays the C capsule there; its subok=True helpers then fail cleanly
    run("""
        x = allocate(64, 'u4')
        try:
            np.broadcast_to(x, (2, 64), subok=True)
        except TypeError:
            pass
        x.freebuffer()
        print('ok')
        """)


def test_python_subclass_can_call_super_array_finalize():
    run("""
        seen = []
        class Tagged(pynq_alloc.Buffer):
            def __array_finalize__(self, obj):
                (super().__array_finalize__ if NUMPY2 else self._array_finalize)(obj)
                seen.append(type(obj).__name__)
        NUMPY2 = int(np.__version__.split('.')[0]) >= 2
        x = allocate(16, 'u4')
        t = x.view(Tagged)
        v = t[2:6]
        assert v.device_address == x.device_address + 8 and seen
        del t, v
        x.freebuffer()
        print('ok')
        """)


# -------------------------------------------------------------- 6. dtypes

def test_structured_dtypes_are_not_shared():
    run("""
        x = allocate(4, 'u4,u4')
        y = allocate(4, 'u4,u4')
        dt = np.dtype([('a', 'u4'), ('b', 'u2')])
        z = allocate(4, dt)
        w = allocate(4, dt)
        x.dtype.names = ('addr', 'len')
        z.dtype.names = ('p', 'q')
        assert y.dtype.names == ('f0', 'f1'), y.dtype
        assert allocate(4, 'u4,u4').dtype.names == ('f0', 'f1')
        assert w.dtype.names == ('a', 'b') and dt.names == ('a', 'b')
        x['addr'] = 3
        assert (x['addr'] == 3).all() and (y['f0'] == 0).all()
        print('ok')
        """)


# ----------------------------------------------------- 7. sim device alignment

def test_sim_aligns_device_addresses_with_an_unaligned_base():
    run("""
        b = open_backend('sim', size=4 << 20, base_address=0x40000040)
        bufs = []
        for align in (64, 128, 4096, 65536, 1 << 20):
            for n in (1, 100, 5000):
                x = allocate(n, 'u1', target=b, align=align, cacheable=True)
                assert x.device_address % align == 0, (align, hex(x.device_address))
                x[:] = align % 251
                x.flush()
                assert b.device_read(x.device_address, n) == bytes([align % 251]) * n
                bufs.append(x)
        spans = sorted((x.device_address, x.device_address + x.nbytes) for x in bufs)
        assert all(a[1] <= b_[0] for a, b_ in zip(spans, spans[1:])), 'overlap'
        del bufs, x
        info = b.info()
        assert info['used'] == 0 and info['free'] == info['total']
        print('ok')
        """)


# ------------------------------------------------- 8. closed shared backends

def test_closed_shared_backends_are_replaced():
    # at most two 256 MiB sim backends live at a time: a 32-bit process has room
    # for little more
    run("""
        x = allocate(4, target='sim')
        old = x.backend
        old.close()
        y = allocate(4, target='sim')       # a new shared 'sim'
        assert y.backend is not old and not y.backend.info()['closed']
        assert (x == 0).all() and x.device_address is not None   # old buffers live on
        y.backend.close()                   # freed with y (the module keeps a closed handle)
        del x, old, y
        pynq_alloc.set_default_backend(None)
        d = pynq_alloc.default_backend()
        d.close()
        z = allocate(4)                     # the automatic default is re-resolved
        assert z.backend is not d and not z.backend.info()['closed']
        del z, d
        pynq_alloc.set_default_backend('sim')
        pynq_alloc.default_backend().close()
        assert not allocate(4).backend.info()['closed']
        mine = open_backend('sim', size=1 << 16)
        pynq_alloc.set_default_backend(mine)
        mine.close()                        # the user's own backend: closed means closed
        try:
            allocate(4)
        except ValueError as exc:
            assert 'closed' in str(exc)
        else:
            raise AssertionError('allocated from a closed backend')
        print('ok')
        """)


# ------------------------------------------------------------------ 9. smaller

def test_device_write_from_overlapping_memory():
    run("""
        b = open_backend('sim', size=1 << 20, coherent=True)
        x = allocate(1024, 'u1', target=b)
        x[:] = np.arange(1024) % 251
        before = x.copy()
        b.device_write(x.device_address + 1, x[:-1])     # source overlaps destination
        assert (x[1:] == before[:-1]).all() and x[0] == before[0]
        b.device_write(x.device_address, x[1:])          # and the other way
        assert (x[:-1] == before[:-1]).all()
        print('ok')
        """)


def test_embedded_nul_is_refused():
    run("""
        cases = [lambda: open_backend('sim\\x00<img src=x onerror=alert(1)>'),
                 lambda: open_backend('sim', check='warn\\x00x'),
                 lambda: open_backend('sim', **{'size\\x00x': 4096}),
                 lambda: allocate(4, target='sim\\x00x'),
                 lambda: pynq_alloc.set_default_backend('sim\\x00x')]
        for make in cases:
            try:
                make()
            except ValueError as exc:
                assert 'NUL' in str(exc), exc
            else:
                raise AssertionError('NUL accepted')
        print('ok')
        """)


def test_repr_html_escapes_everything():
    run("""
        x = allocate(2, [('<b>"q"&\\'', 'u4')])
        html = x._repr_html_()
        shown = html.split('<small>')[0][len('<pre>'):-len('</pre>')]
        assert not set('<>"' + chr(39)) & set(shown), html
        assert '&lt;b&gt;&quot;q&quot;&amp;' in shown, html
        print('ok')
        """)


def test_align_and_base_address_limits():
    run("""
        try:
            allocate(4, align=2**63)
        except ValueError as exc:
            assert str(2**63) in str(exc), exc
        else:
            raise AssertionError('align=2**63 accepted')
        b = open_backend('sim', base_address=2**64 - 64, size=64)
        x = allocate(16, 'u4', target=b, cacheable=True, align=64)
        assert x.device_address == 2**64 - 64
        x[:] = 3
        x.flush()
        assert b.device_read(2**64 - 64, 64) == np.full(16, 3, 'u4').tobytes()
        try:
            open_backend('sim', base_address=2**64 - 64, size=128)
        except ValueError:
            pass
        else:
            raise AssertionError('a region past 2**64 was accepted')
        print('ok')
        """)
