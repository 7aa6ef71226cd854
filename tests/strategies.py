"""Shared hypothesis settings and strategies for test_stateful.py and test_fuzz.py.

Profiles, chosen with PYNQ_ALLOC_HYPOTHESIS (default ``ci``):

* ``ci``: what CI runs -- 200 examples of up to 50 steps per state machine,
  1000 examples per fuzz test.
* ``dev``: a quick local run (30 examples x 20 steps, 200 fuzz examples).
* ``long``: a soak run (2000 examples x 100 steps, 20000 fuzz examples); run it
  after touching the core.

The settings are built explicitly (``hsettings()``) rather than loaded as the
global profile, so they do not change other test modules' hypothesis settings.
"""
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE = os.environ.get("PYNQ_ALLOC_HYPOTHESIS", "ci")

_COMMON = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
PROFILES = {
    "ci": dict(max_examples=200, stateful_step_count=50, **_COMMON),
    "dev": dict(max_examples=30, stateful_step_count=20, **_COMMON),
    "long": dict(max_examples=2000, stateful_step_count=100, **_COMMON),
}
# fuzz tests are cheap per example (about 1 ms): run more of them
FUZZ_EXAMPLES = {"ci": 1000, "dev": 200, "long": 20000}

if PROFILE not in PROFILES:
    raise RuntimeError(
        f"PYNQ_ALLOC_HYPOTHESIS={PROFILE!r}: use one of {', '.join(sorted(PROFILES))}")

for _name, _kw in PROFILES.items():
    settings.register_profile(f"pynq_alloc-{_name}", **_kw)


def hsettings(**overrides):
    """The settings of the selected profile, with overrides."""
    return settings(settings.get_profile(f"pynq_alloc-{PROFILE}"), **overrides)


LINE = 64


def round_block(nbytes):
    """What a backend charges for nbytes: at least one line, rounded up to lines."""
    return max(-(-max(nbytes, 1) // LINE) * LINE, LINE)


def span_block(nbytes, align):
    """What a block takes from sim's or hugepage's region (info()'s used): its
    lines rounded up to its alignment (None: the default 4096), at most a page."""
    to = min(max(align or 4096, LINE), 4096)
    return -(-round_block(nbytes) // to) * to


# dtypes a device buffer can hold, in the spellings users write
PLAIN_DTYPES = [
    "u1", "i1", "<i2", ">u2", "u4", ">i4", "<u8", "f2", "f4", ">f8", "c8", "<c16", "?",
    "V5", "S3", "U2", "M8[ms]", "m8[us]",
    np.float32, np.uint8, np.dtype("i2"),
    [("a", "u1"), ("b", ">i2")],
    np.dtype([("x", "<f4"), ("y", "u1")], align=True),
    ("u2", (2, 3)),
    [("p", "u1"), ("q", ("<i4", (2,)))],
]

plain_dtypes = st.sampled_from(PLAIN_DTYPES)
