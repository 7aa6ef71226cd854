"""pytest plugin for the ARM lanes (.ci/arm_lanes.sh loads it with -p): under
qemu-user (PYNQ_ALLOC_EMULATED=1) the tests that need real physical memory are
skipped, with the reason. qemu-user does not emulate MAP_HUGETLB mappings, and
a guest's virtual addresses are the host's minus guest_base, so
/proc/self/pagemap frames mean nothing to the guest: the hugepage backend and
the DMA-BUF heap emulation (built on huge pages + pagemap) cannot be checked.
"""
import os

import pytest

REASON = ("emulated CPU (qemu-user, PYNQ_ALLOC_EMULATED=1): no huge-page mappings and "
          "/proc/self/pagemap sees host, not guest, addresses")
NEEDS_PHYSICAL = {"test_hugepage.py", "test_backend_dmaheap.py"}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYNQ_ALLOC_EMULATED", "0") in ("", "0"):
        return
    skip = pytest.mark.skip(reason=REASON)
    for item in items:
        # per-backend tests elsewhere (test_fork.py) are named for their backend
        if (item.path.name in NEEDS_PHYSICAL or "huge" in getattr(item, "fixturenames", ())
                or "[huge" in item.nodeid
                or item.name.startswith(("test_hugepage", "test_dmaheap"))):
            item.add_marker(skip)
