"""Fuzzing allocate()'s argument surface with hypothesis.

Every call either returns a correct Buffer -- the shape and dtype numpy.empty
gives for the same arguments, zeroed, a device address aligned as asked, the
backend charged exactly the block -- or raises one of the documented exceptions
(TypeError, ValueError, MemoryError, OverflowError, or what a user object such as
an ``__index__``/``__bool__``/``allocate`` raised). Where numpy.empty fails for the
same shape/dtype, allocate must fail with the same exception type. Afterwards
(results deleted) the backend has nothing allocated. It all runs in-process, so
a crash fails the run.

The expected exception is computed per argument: each invalid argument adds the
type it must raise, and allocate may raise any of them (the order in which it
checks arguments is its own business) but nothing else.
"""
import math
import operator
import warnings

import numpy as np
import pytest
from hypothesis import event, example, given, note
from hypothesis import strategies as st

import pynq_alloc
from pynq_alloc import Buffer
from strategies import FUZZ_EXAMPLES, PLAIN_DTYPES, PROFILE, hsettings, round_block, span_block

DOCUMENTED = (TypeError, ValueError, MemoryError, OverflowError)
SIM_SIZE = 4 << 20
MAX_ALIGN = 1 << 30  # documented: a power of two; beyond 1 GiB is "absurdly large"

SETTINGS = hsettings(max_examples=FUZZ_EXAMPLES[PROFILE])
NUMPY1 = np.lib.NumpyVersion(np.__version__) < "2.0.0"

MANY_DIMS = (30, 70)  # around NPY_MAXDIMS: 32 on NumPy 1.x, 64 on 2.x


class Boom(Exception):
    """Raised by user objects: allocate must let it through unchanged."""


class Index:
    """An int-like object (operator.index works)."""

    def __init__(self, v):
        self.v = v

    def __index__(self):
        return self.v

    def __repr__(self):
        return f"Index({self.v})"


class BadIndex:
    def __index__(self):
        raise Boom("__index__")

    def __repr__(self):
        return "BadIndex()"


class BadBool:
    def __bool__(self):
        raise Boom("__bool__")

    def __repr__(self):
        return "BadBool()"


class Junk:
    def __repr__(self):
        return "Junk()"


def kind(exc_type):
    """The documented class an exception belongs to (numpy raises subclasses,
    e.g. _ArrayMemoryError), else its own type."""
    for base in DOCUMENTED:
        if issubclass(exc_type, base):
            return base
    return exc_type


def outcome(fn):
    """(result, exception type or None, warning categories)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res, exc = fn(), None
        except Exception as e:  # noqa: BLE001 - compared by the caller
            res, exc = None, type(e)
    return res, exc, {w.category for w in caught}


# ------------------------------------------------------------------ strategies

big_ints = st.sampled_from([
    -(2**70), -(2**63), -(2**31), -1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64,
    2**70])
np_ints = st.builds(lambda t, v: t(v), st.sampled_from(
    [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64, np.uint64, np.intp]),
    st.integers(0, 100))
shape_atoms = st.one_of(
    st.integers(0, 40), st.integers(-3, 3), big_ints, np_ints,
    st.sampled_from([True, False, np.True_, 3.0, np.float64(2.0), math.nan, math.inf, 1j,
                     "3", "", "abc", b"3", None, np.array(3), np.array(2.5),
                     np.array([2, 3])]),
    st.builds(Index, st.integers(-2, 20)), st.just(BadIndex()), st.just(Junk()),
)
valid_shapes = st.one_of(
    st.integers(0, 300),
    st.lists(st.integers(0, 12), max_size=4).map(tuple),
    st.lists(st.integers(0, 6), max_size=3),
    st.lists(st.builds(lambda t, v: t(v), st.sampled_from([np.int8, np.uint16, np.int64]),
                       st.integers(0, 19)), max_size=3).map(tuple),
)


def mostly(valid, other):
    """Three in four draws valid, so each kind of error also shows alone."""
    return st.one_of(valid, valid, valid, other)


shapes = st.one_of(
    shape_atoms,
    st.lists(st.integers(0, 12), max_size=4).map(tuple),
    st.lists(shape_atoms, max_size=4).map(tuple),
    st.lists(shape_atoms, max_size=4),
    st.lists(st.lists(st.integers(0, 4), max_size=2), min_size=1, max_size=2),  # nested
    st.lists(st.integers(0, 2**20), min_size=2, max_size=3).map(tuple),  # big products
    st.integers(*MANY_DIMS).map(lambda n: (1,) * n),  # around NPY_MAXDIMS (32 or 64)
    st.lists(st.integers(0, 3), max_size=3).map(np.array),
)

dtypes = st.one_of(
    st.sampled_from(PLAIN_DTYPES),
    st.sampled_from([
        # unsized and odd but valid
        "U", "S", "V", "U0", "S0", "V0", str, bytes, "M8", "m8", "M8[D]", "g", "F", "b1", "a3",
        "i8,f4", "(2,3)i4", ("V", 0), ("u1", ()), ("u1", 0), ("u1", (0, 2)), ("f8", (2**31,)),
        {"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 9], "itemsize": 24},
        [("nested", [("x", "u1"), ("y", ("i2", 2))])], np.dtype("u4").newbyteorder(),
        int, float, complex, bool, np.void, None,
        # objects: refused
        object, "O", np.object_, [("a", "O")], [("a", "u4"), ("b", "O", (2,))], ("O", (2,)),
        {"names": ["a", "b"], "formats": ["u1", "O"]}, [("n", [("o", "O")])],
        # invalid
        "u3", "i0", "foo", "", "<>i4", "i4,,", "(2,-1)i4", ("u1", -1), ("u1", "x"), 3, 3.5,
        [], {}, [("a",)], [("a", "u1", "x")], Junk(), np.ndarray, np.array([1]),
    ]),
    st.text(max_size=4),
)

aligns = st.one_of(
    st.none(),
    st.integers(0, 40).map(lambda k: 1 << k),
    st.integers(-70, 70).map(lambda k: (1 << abs(k)) * (1 if k >= 0 else -1)),
    st.integers(-100, 5000), big_ints,
    st.sampled_from([True, False, 1.0, 64.0, math.nan, "64", b"64", [64], np.int64(64),
                     np.uint16(256), np.float64(64), np.True_, Junk(), BadIndex()]),
    st.builds(Index, st.sampled_from([64, 3, 0, -64, 2**40])),
)

cacheables = st.one_of(
    st.sampled_from([None, True, False, 0, 1, np.True_, np.False_, "", "no", [], [0],
                     np.array([1, 2]), np.array([]), Junk(), BadBool()]),
    st.integers(),
)


class Foreign:
    """A PYNQ-style target: allocate(shape, dtype, **kwargs)."""

    def __init__(self, mode):
        self.mode = mode
        self.calls = []
        self.result = object()

    def allocate(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.mode == "raise":
            raise Boom("target.allocate")
        return self.result

    def __repr__(self):
        return f"Foreign({self.mode!r})"


class NotCallable:
    allocate = 5

    def __repr__(self):
        return "NotCallable()"


targets = st.one_of(
    st.just("fresh"), st.just("fresh"), st.just("fresh"), st.just("fresh"),
    st.sampled_from(["method", None, "sim", "sim:x", "nosuch", "", "Sim", 42, 3.5, b"sim",
                     Junk(), NotCallable()]),
    st.sampled_from(["raise", "return"]).map(Foreign),
)

MISSING = object()  # argument not passed


# ------------------------------------------------------------------- oracles


def numpy_verdicts(shape, dtype):
    """What numpy.empty and numpy.ndarray do for the same shape and dtype: a list of
    (reference array or None, exception type or None, warning categories), and
    whether the dtype holds objects. They differ in corners (a zero-sized subarray
    dtype: ('u1', 0)); allocate may follow either. Object dtypes are tried with a
    same-sized plain stand-in: numpy would fill them with None, touching all the
    memory."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = np.dtype(dtype)
    except Exception:  # noqa: BLE001 - numpy.empty reports it (after the shape)
        d = None
    has_object = d is not None and d.hasobject
    if has_object:
        if d.subdtype is not None:
            dtype = np.dtype((np.dtype((np.void, d.subdtype[0].itemsize)), d.subdtype[1]))
        else:
            dtype = np.dtype((np.void, d.itemsize))
    return [outcome(lambda: np.empty(shape, dtype)),
            outcome(lambda: np.ndarray(shape, dtype))], has_object


def align_verdict(align):
    if align is MISSING or align is None:
        return None, None
    if isinstance(align, bool):
        return TypeError, None
    try:
        v = operator.index(align)
    except Boom:
        return Boom, None
    except TypeError:
        return TypeError, None
    if v <= 0 or v & (v - 1) or v > MAX_ALIGN:
        return ValueError, None
    return None, v


def cacheable_verdict(cacheable):
    """Only None, bool, 0 and 1: a truth test would make cacheable='no' mean True."""
    if cacheable is MISSING or cacheable is None:
        return None, None
    if isinstance(cacheable, bool):
        return None, cacheable
    if isinstance(cacheable, int):
        return (None, bool(cacheable)) if cacheable in (0, 1) else (ValueError, None)
    return TypeError, None


# ---------------------------------------------------------------------- test

_shared = {}


def shared_sim():
    """The backend the spec string 'sim' names (one per process, opened on first use)."""
    if "sim" not in _shared:
        probe = pynq_alloc.allocate(0, "u1", target="sim")
        _shared["sim"] = probe.backend
        del probe
    return _shared["sim"]


@SETTINGS
@given(shape=mostly(valid_shapes, shapes),
       dtype=st.one_of(st.just(MISSING), mostly(st.sampled_from(PLAIN_DTYPES), dtypes)),
       align=st.one_of(st.just(MISSING), mostly(st.none() | st.integers(0, 20).map(
           lambda k: 1 << k), aligns)),
       cacheable=st.one_of(st.just(MISSING), mostly(st.sampled_from([None, True, False]),
                                                     cacheables)),
       target=mostly(st.just("fresh"), targets), keywords=st.booleans(),
       junk_kwarg=st.integers(0, 15).map(lambda i: i == 0))
@example(shape=(2**40, 2**40), dtype="u8", align=MISSING, cacheable=MISSING, target="fresh",
         keywords=False, junk_kwarg=False)
@example(shape=-1, dtype=[("a", "O")], align=3, cacheable=BadBool(), target="fresh",
         keywords=True, junk_kwarg=False)
@example(shape=(3,), dtype="V", align=1 << 30, cacheable=False, target="fresh",
         keywords=True, junk_kwarg=False)
@example(shape=None, dtype=MISSING, align=MISSING, cacheable=MISSING, target="fresh",
         keywords=False, junk_kwarg=False)
@example(shape=(2, 3), dtype=MISSING, align=MISSING, cacheable=MISSING, target="sim",
         keywords=False, junk_kwarg=False)
def test_allocate_fuzz(shape, dtype, align, cacheable, target, keywords, junk_kwarg):
    be = pynq_alloc.open_backend("sim", size=SIM_SIZE)
    dirty(be)
    try:
        run_one(be, shape, dtype, align, cacheable, target, keywords, junk_kwarg and keywords)
    finally:
        be.close()


def dirty(be):
    """Leave garbage on both sides of the memory new buffers will get, so that
    "zeroed" is tested on reused memory (blocks under 256 KiB are not handed back
    to the kernel)."""
    bufs = [be.allocate(96 << 10, "u1", align=64) for _ in range(4)]
    for b in bufs:
        b[:] = 0xA5
        b.flush()
        be.device_write(b.device_address, b"\x5a" * 64)
    del b, bufs


def run_one(be, shape, dtype, align, cacheable, target, keywords, junk_kwarg):
    kwargs = {}
    if align is not MISSING:
        kwargs["align"] = align
    if cacheable is not MISSING:
        kwargs["cacheable"] = cacheable
    if junk_kwarg:
        kwargs["alignment"] = 64
    args = [shape]
    if dtype is not MISSING:
        if keywords:
            kwargs["dtype"] = dtype
        else:
            args.append(dtype)

    # the backend allocate() must land on (None: not one of ours)
    is_str = isinstance(target, str)
    if is_str and target == "method":
        ours = be
        call = lambda: be.allocate(*args, **kwargs)  # noqa: E731
    else:
        if is_str and target == "fresh":
            target = be
        ours = (be if target is be else pynq_alloc.default_backend() if target is None
                else shared_sim() if is_str and target == "sim" else None)
        if keywords or dtype is MISSING:
            kwargs["target"] = target
        else:
            args.append(target)
        call = lambda: pynq_alloc.allocate(*args, **kwargs)  # noqa: E731
    note(f"call: args={args!r} kwargs={kwargs!r}")
    before = ours.info() if ours is not None else None

    res, exc, _ = outcome(call)
    note(f"-> {type(res).__name__ if exc is None else exc.__name__}")
    event(f"allocate -> {type(res).__name__ if exc is None else exc.__name__}")

    if junk_kwarg and not isinstance(target, Foreign):
        # an unknown keyword is a TypeError for our backends; resolving the target
        # comes first (a junk spec string is a ValueError, as without the keyword)
        want = {TypeError, ValueError} if ours is None and is_str else {TypeError}
        assert exc in want, exc
        return check_clean(be)

    # ---- foreign targets: the call is handed over untouched (PYNQ's contract)
    if isinstance(target, Foreign):
        assert len(target.calls) == 1
        got_args, got_kwargs = target.calls[0]
        assert len(got_args) == 2 and got_args[0] is shape
        if dtype is MISSING:
            assert got_args[1] == "u4"
        else:
            assert got_args[1] is dtype
        # PYNQ's contract: keywords we do not know go to the target unchanged
        want_kwargs = {k: v for k, v in kwargs.items()
                       if k in ("cacheable", "align") and v is not None or k == "alignment"}
        assert got_kwargs.keys() == want_kwargs.keys()
        assert all(got_kwargs[k] is want_kwargs[k] for k in want_kwargs)
        if target.mode == "raise":
            assert exc is Boom
        else:
            assert exc is None and res is target.result
        return check_clean(be)
    if ours is None:
        # junk: strings name no backend (ValueError), other objects are no target
        want = ValueError if is_str else TypeError
        assert exc is want, (target, exc)
        return check_clean(be)

    # ---- one of our backends: what must happen
    verdicts, has_object = numpy_verdicts(shape, "u4" if dtype is MISSING else dtype)
    np_ok = [(ref, w) for ref, e, w in verdicts if e is None]
    np_failed = {kind(e) for _, e, _ in verdicts if e is not None}
    if np_ok and np_failed:
        event("numpy.empty and numpy.ndarray disagree")
    align_exc, align_v = align_verdict(align)
    cache_exc, cache_v = cacheable_verdict(cacheable)
    arg_errors = {e for e in (align_exc, cache_exc) if e is not None}
    if has_object:
        arg_errors.add(TypeError)

    if exc is not None:
        # numpy's own types (np.dtype('i4,,') raises SyntaxError), documented ones,
        # and Boom from user objects: nothing else may come out
        if kind(exc) not in arg_errors | np_failed:
            # everything valid: only running out of memory may fail
            assert np_ok and not arg_errors, (
                f"raised {exc.__name__}, expected one of {arg_errors | np_failed}")
            ref = np_ok[0][0]
            need = span_block(ref.nbytes, align_v) + ((align_v or 4096) if ours is not be else 0)
            assert kind(exc) is MemoryError and need > before["largest_free"], (
                f"{exc.__name__} for valid arguments; numpy gives {ref.shape} {ref.dtype}")
        after = ours.info()
        assert (after["used"], after["buffers"]) == (before["used"], before["buffers"])
        return check_clean(be)

    # ---- success: it must have been allowed, and be a correct Buffer
    buf = res
    del res
    assert not arg_errors, f"succeeded although {arg_errors} expected"
    assert np_ok, f"succeeded ({buf.shape} {buf.dtype}) where numpy raises {np_failed}"
    match = [(ref, w) for ref, w in np_ok if buf.shape == ref.shape and buf.dtype == ref.dtype]
    assert match, f"{buf.shape} {buf.dtype}; numpy: {[(r.shape, r.dtype) for r, _ in np_ok]}"
    ref = match[0][0]  # (warnings are not compared: numpy warns once per dtype string)
    assert type(buf) is Buffer and buf.backend is ours
    assert buf.nbytes == ref.nbytes and buf.itemsize == ref.itemsize
    assert buf.flags.c_contiguous and buf.flags.writeable and buf.offset == 0
    dev = buf.device_address
    assert type(dev) is int and buf.physical_address == dev
    assert dev % max(align_v or 4096, 64) == 0
    # PYNQ's default: cacheable=None is the backend's (coherent on sim); True is cached
    coherent = before["coherent"] if cache_v is None else cache_v is False
    assert buf.coherent is coherent and buf.cacheable is (not coherent)
    block = round_block(ref.nbytes)
    if ref.nbytes:
        assert not buf.reshape(-1).view(np.uint8).any(), "not zeroed"
    if ours.name == "sim":
        assert ours.device_read(dev, block) == bytes(block), "device side not zeroed/clean"
    after = ours.info()
    assert after["used"] == before["used"] + span_block(ref.nbytes, align_v)
    assert after["requested"] == before["requested"] + ref.nbytes
    assert after["buffers"] == before["buffers"] + 1
    del buf
    after = ours.info()
    assert (after["used"], after["buffers"]) == (before["used"], before["buffers"])
    check_clean(be)


def check_clean(be):
    info = be.info()
    assert info["used"] == 0 and info["buffers"] == 0, info


# --------------------------------------------- allocate() keyword handling


@hsettings(max_examples=max(FUZZ_EXAMPLES[PROFILE] // 5, 50))
@given(names=st.lists(st.sampled_from(
    ["shape", "dtype", "target", "cacheable", "align", "address_bits", "size", "Shape", "",
     "kwargs"]),
    max_size=6), npos=st.integers(0, 5))
def test_argument_parsing_fuzz(names, npos):
    """Positional/keyword mixes: TypeError exactly when Python's own rules for
    allocate(shape, dtype='u4', target=None, *, cacheable=None, align=None, address_bits=None)
    would raise it (the **kwargs that go to a foreign target are a TypeError for ours)."""
    be = pynq_alloc.open_backend("sim", size=SIM_SIZE)
    values = {"shape": 4, "dtype": "u1", "target": be, "cacheable": None, "align": 64,
              "address_bits": 64}
    pos = [values.get(n, 1) for n in ("shape", "dtype", "target", "x", "y")[:npos]]
    kw = {n: values.get(n, 1) for n in names}

    def reference(shape, dtype="u4", target=None, *, cacheable=None, align=None,
                  address_bits=None):
        return shape

    _, want, _ = outcome(lambda: reference(*pos, **kw))
    res, exc, _ = outcome(lambda: pynq_alloc.allocate(*pos, **kw))
    note(f"allocate(*{pos!r}, **{kw!r}) -> {exc}")
    try:
        if want is not None:
            assert exc is TypeError
        elif "target" in kw or npos >= 3:
            assert exc is None and type(res) is Buffer
    finally:
        del res
        # without target= the default backend was used: nothing of ours to check
        check_clean(be)
        be.close()


# ------------------------------------------------------ findings, pinned


def test_too_many_dimensions_fail_like_numpy(sim):
    # Found by the fuzzer on NumPy 1.x: the fast shape path accepted 33..64
    # dimensions (the NumPy 2 headers' NPY_MAXDIMS) where NumPy 1.x refuses >32.
    cases = [((1,) * n, "u3") for n in (33, 40, 64, 65)] + [((1,) * 40, "u1")]
    if NUMPY1:
        cases.append(((2,) * 40, "u1"))  # 1 TiB: numpy 2 cannot allocate it either
    for shape, dt in cases:
        _, np_exc, _ = outcome(lambda: np.empty(shape, dt))
        _, exc, _ = outcome(lambda: sim.allocate(shape, dt))
        got = kind(exc) if exc else None
        want = kind(np_exc) if np_exc else None
        assert got is want, f"{len(shape)} dims, {dt}: allocate {got}, numpy {want}"
    assert sim.info()["used"] == 0
