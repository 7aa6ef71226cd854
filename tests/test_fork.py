"""fork() semantics on every backend (README, "fork()"), with os.fork() and
multiprocessing's fork and spawn start methods: the child can use what it
inherited, cannot allocate from the parent's backend, frees and closes only
by forgetting, and gets new backends of its own; the parent's data and
accounting are untouched. tests/fork_scenario.py is the scenario; the board
backends run it against their emulations (tests/emul)."""
import json
import os
import subprocess
import sys

import pytest

import pynq_alloc
from conftest import hugepage_or_skip
from emul_build import build_shared

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.join(HERE, "fork_scenario.py")
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pynq_alloc.__file__)))
MODES = ["os.fork", "mp-fork", "mp-spawn"]


def scenario(env, cwd, **cfg):
    e = {k: v for k, v in env.items() if not k.startswith("FORK_")}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (PKG_PARENT, e.get("PYTHONPATH")) if p)
    e.update({f"FORK_{k.upper()}": (json.dumps(v) if isinstance(v, dict) else str(v))
              for k, v in cfg.items()})
    r = subprocess.run([sys.executable, SCENARIO], env=e, cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stdout.rstrip().endswith("ok"), r.stdout + r.stderr


def base_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("PYNQ_ALLOC_")}


@pytest.mark.parametrize("mode", MODES)
def test_sim(mode, tmp_path):
    # sim memory is private to each process: the child's copies are its own
    scenario(base_env(), tmp_path, spec="sim", opts={"size": 16 << 20}, mode=mode, real=0)


@pytest.mark.parametrize("mode", MODES)
def test_hugepage(mode, tmp_path):
    hugepage_or_skip().close()
    # real physical memory: the child's blocks never overlap the parent's
    scenario(base_env(), tmp_path, spec="hugepage", mode=mode, real=1)


# ------------------------------------------------------- emulated board backends

@pytest.fixture(scope="module")
def shims(tmp_path_factory):
    out = tmp_path_factory.mktemp("fork_shims")
    src = os.path.join(HERE, "emul")
    return {
        "zocl": build_shared(out / "zocl.so", os.path.join(src, "zocl_shim.c"), "-O2", "-ldl",
                             what="the zocl emulation"),
        "dmaheap": build_shared(out / "dmaheap.so", os.path.join(src, "dmaheap_shim.c"), "-ldl",
                                "-lpthread", what="the DMA-BUF heap emulation"),
        "libcma": build_shared(out / "libcma.so", os.path.join(src, "xlnk_fake_libcma.c"),
                               "-lpthread", what="the fake libcma"),
    }


def preload(shim):
    # after what is preloaded already (a sanitizer runtime must stay first)
    return ":".join(filter(None, [os.environ.get("LD_PRELOAD"), shim]))


@pytest.mark.parametrize("mode", MODES)
def test_zocl(mode, tmp_path, shims):
    root = tmp_path / "root"
    (root / "dev" / "dri").mkdir(parents=True)
    (root / "dev" / "dri" / "renderD128").touch()
    log = tmp_path / "zocl.log"
    env = dict(base_env(), LD_PRELOAD=preload(shims["zocl"]), PYNQ_ALLOC_SYSROOT=str(root),
               ZOCL_SHIM_LOG=str(log))
    # GEM handles live in the DRM file the child shares: closing one there
    # would close the parent's
    scenario(env, tmp_path, spec="zocl", mode=mode, child_new="skip", log=log,
             forbid="CLOSE,CLOSEFD")


@pytest.mark.parametrize("mode", MODES)
def test_dmaheap(mode, tmp_path, shims):
    from test_backend_dmaheap import cap_sys_admin, free_huge_pages
    if free_huge_pages() < 16 or not cap_sys_admin():
        if os.environ.get("PYNQ_ALLOC_REQUIRE_HUGEPAGE"):
            pytest.fail("the dmaheap emulation needs 16 free huge pages and CAP_SYS_ADMIN")
        pytest.skip("the dmaheap emulation needs 16 free huge pages and CAP_SYS_ADMIN")
    root = tmp_path / "root"
    (root / "dev" / "dma_heap").mkdir(parents=True)
    (root / "dev" / "dma_heap" / "linux,cma").write_bytes(b"")
    log = tmp_path / "shim.log"
    env = dict(base_env(), LD_PRELOAD=preload(shims["dmaheap"]), PYNQ_ALLOC_SYSROOT=str(root),
               DMAHEAP_SHIM_LOG=str(log))
    scenario(env, tmp_path, spec="dmaheap", mode=mode, child_new="skip", log=log,
             forbid="close,munmap,release")


@pytest.mark.parametrize("mode", MODES)
def test_xlnk(mode, tmp_path, shims):
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "xlnk").write_bytes(b"")
    log = tmp_path / "libcma.log"
    env = dict(base_env(), PYNQ_ALLOC_SYSROOT=str(root), FAKE_LIBCMA_LOG=str(log))
    # libcma's state is per process: a cma_free in the child frees the parent's buffer
    scenario(env, tmp_path, spec="xlnk", opts={"library": shims["libcma"]}, mode=mode,
             child_new="skip", log=log, forbid="free,fini")


@pytest.mark.parametrize("mode", MODES)
def test_udmabuf(mode, tmp_path):
    from test_backend_udmabuf import FakeUdmabuf
    fake = FakeUdmabuf(tmp_path, size=4 << 20)
    env = dict(base_env(), PYNQ_ALLOC_SYSROOT=str(fake.root))
    # the parent's flock is shared with the child, and keeps holding the device:
    # a backend of the child's own is refused
    scenario(env, tmp_path, spec="udmabuf", mode=mode, child_new="refused")
