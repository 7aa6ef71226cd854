#!/usr/bin/env bash
# The ARM lanes: AArch64 (Zynq UltraScale+, Versal) and 32-bit ARMv7 armhf
# (Zynq-7000), cross-built on this x86-64 machine and run under qemu-user.
#
#   bash .ci/arm_lanes.sh                 # both lanes, CI subset of the Python suite
#   ARM_LANES=aarch64 bash .ci/arm_lanes.sh
#   ARM_PYTEST_FULL=1 bash .ci/arm_lanes.sh   # the whole Python suite
#   ARM_PYTEST_ARGS="tests/test_sync.py -x" bash .ci/arm_lanes.sh
#   ARM_PREPARE_ONLY=1 bash .ci/arm_lanes.sh  # sysroot + extension only (the kernel lane's guest uses them)
#
# Per lane: (a) a target sysroot assembled from Debian 12's packages (apt with
# its own state directory, so the host's dpkg is not touched: no
# --add-architecture; cached in $ARM_CACHE/<arch>), the cross compiler and
# qemu-user-static; (b) the C core's tests cross-built with -Wall -Wextra
# -Werror and run under qemu (tests/c/run.sh with CC and RUNNER), plus a check
# that AArch64 cache maintenance really executed DC CVAC / DC CIVAC / DSB SY
# and read CTR_EL0; (c) the extension cross-built with -Wall -Wextra -Werror
# against the target's Python 3.11 and NumPy 1.24 headers; (d) the Python test
# suite under qemu with the target's python3.11 (PYNQ_ALLOC_EMULATED=1 lets
# tests that need real physical memory skip); (e) a summary, non-zero exit on
# any failure. Installs what it needs; quick when everything is cached.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ARM_CACHE=${ARM_CACHE:-/var/cache/pynq_alloc-arm}
ARM_LANES=${ARM_LANES:-"aarch64 armhf"}
OUT=${ARM_OUT:-$ROOT/build/arm}
HYPOTHESIS_VERSION=${HYPOTHESIS_VERSION:-6.155.2}
# The target packages: Python, its headers, NumPy and pytest from Debian 12;
# apt resolves their dependency closure against an empty dpkg status.
TARGET_PACKAGES="python3.11 libpython3.11-dev python3-numpy python3-pytest"
# The CI subset of the Python suite (ARM_PYTEST_FULL=1 runs everything): the
# sim-backed API tests and the emulated board backends. The rest (docs, typing,
# fuzz/stateful property tests, hugepage) is architecture-independent Python,
# needs real physical memory, or is too slow under emulation.
PYTEST_SUBSET="tests/test_api.py tests/test_sync.py tests/test_views.py tests/test_lifetime.py
 tests/test_errors.py tests/test_checker.py tests/test_threads.py tests/test_default_backend.py
 tests/test_backend_udmabuf.py tests/test_backend_xlnk.py tests/test_backend_zocl.py
 tests/test_backend_dmaheap.py tests/test_hugepage.py tests/test_32bit.py
 tests/test_wrap.py tests/test_address_bits.py tests/test_cacheable_default.py"

log() { echo "[arm $(date +%T)] $*"; }

# ---------------------------------------------------------------- host tools
need_pkgs=()
for lane in $ARM_LANES; do
    case $lane in
        aarch64) command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu) ;;
        armhf) command -v arm-linux-gnueabihf-gcc >/dev/null || need_pkgs+=(gcc-arm-linux-gnueabihf) ;;
        *) echo "unknown lane $lane (aarch64, armhf)" >&2; exit 2 ;;
    esac
done
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need_pkgs+=(libc6-dev)
QEMU_DIR=$ARM_CACHE/qemu
if [ ! -x "$QEMU_DIR/usr/bin/qemu-aarch64-static" ]; then
    need_qemu=1
else
    need_qemu=0
fi
if [ ${#need_pkgs[@]} -gt 0 ] || [ $need_qemu = 1 ]; then
    log "apt-get update"
    apt-get update -qq || log "apt-get update partly failed; going on with the lists there are"
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if [ $need_qemu = 1 ]; then
    # qemu-user-static's binaries, unpacked: no binfmt_misc needed (containers
    # rarely have it) and no conflict with a qemu-user-binfmt already installed.
    log "fetching qemu-user-static"
    rm -rf "$QEMU_DIR" && mkdir -p "$QEMU_DIR/deb"
    (cd "$QEMU_DIR/deb" && apt-get download -qq qemu-user-static 2>/dev/null)
    dpkg -x "$QEMU_DIR"/deb/qemu-user-static_*.deb "$QEMU_DIR"
fi

# ------------------------------------------------------------------ sysroots
# build_sysroot DEBARCH TRIPLET: $ARM_CACHE/DEBARCH/sysroot, reused while the
# package list is unchanged.
build_sysroot() {
    local debarch=$1 triplet=$2
    local c=$ARM_CACHE/$debarch
    local stamp="$TARGET_PACKAGES hypothesis==$HYPOTHESIS_VERSION v2"
    if [ -f "$c/sysroot/.complete" ] && [ "$(cat "$c/sysroot/.complete")" = "$stamp" ]; then
        return 0
    fi
    log "$debarch: assembling the sysroot from Debian packages"
    mkdir -p "$c/apt/state/lists/partial" "$c/apt/cache/archives/partial"
    : >"$c/apt/state/status"
    local apt=(apt-get -q -o "APT::Architecture=$debarch" -o "APT::Architectures::=$debarch"
        -o "Dir::State=$c/apt/state" -o "Dir::State::status=$c/apt/state/status"
        -o "Dir::Cache=$c/apt/cache" -o Debug::NoLocking=1 -o Acquire::Languages=none
        -o APT::Install-Recommends=0 -o Acquire::Retries=3)
    # a security-mirror index caught mid-sync must not stop us: main has all we need
    "${apt[@]}" update >"$c/apt-update.log" 2>&1 ||
        log "$debarch: apt-get update partly failed (see $c/apt-update.log); going on"
    # shellcheck disable=SC2086 # the package list is split on purpose
    "${apt[@]}" install -y --download-only $TARGET_PACKAGES >"$c/apt-install.log" 2>&1 ||
        { cat "$c/apt-install.log"; return 1; }
    rm -rf "$c/sysroot" "$c/pycache"
    mkdir -p "$c/sysroot"
    for deb in "$c"/apt/cache/archives/*.deb; do
        dpkg -x "$deb" "$c/sysroot"
    done
    # update-alternatives would make these links on a real system
    (cd "$c/sysroot/usr/lib/$triplet" &&
        ln -sf blas/libblas.so.3 libblas.so.3 && ln -sf lapack/liblapack.so.3 liblapack.so.3)
    # hypothesis (pure Python) from PyPI; Debian 12's is too old for the tests
    python3 -m pip install -q --disable-pip-version-check --target "$c/sysroot/usr/lib/python3/dist-packages" \
        --no-deps "hypothesis==$HYPOTHESIS_VERSION" sortedcontainers attrs
    echo "$stamp" >"$c/sysroot/.complete"
}

# ---------------------------------------------------------------------- lanes
declare -A RESULT TIME
overall=0

run_lane() {
    local lane=$1 debarch triplet qemu cpu
    case $lane in
        aarch64) debarch=arm64 triplet=aarch64-linux-gnu qemu=qemu-aarch64-static cpu=cortex-a53 ;;
        armhf) debarch=armhf triplet=arm-linux-gnueabihf qemu=qemu-arm-static cpu=cortex-a9 ;;
    esac
    local t0=$SECONDS
    local c=$ARM_CACHE/$debarch sysroot=$ARM_CACHE/$debarch/sysroot
    local q=$QEMU_DIR/usr/bin/$qemu
    local out=$OUT/$lane
    local cc=$triplet-gcc
    local status=ok
    build_sysroot "$debarch" "$triplet"
    rm -rf "$out" && mkdir -p "$out/obj" "$out/pkg/pynq_alloc" "$out/c"

    # (b) the C core's tests
    if [ "${ARM_PREPARE_ONLY:-0}" != 1 ]; then
    log "$lane: C core tests ($cc -Wall -Wextra -Werror, qemu -cpu $cpu)"
    if ! CC=$cc RUNNER="$q -L $sysroot -cpu $cpu" PYNQ_ALLOC_C_BIN=$out/c PYNQ_ALLOC_REQUIRE_HUGEPAGE=0 \
        bash tests/c/run.sh; then
        status=FAIL
    fi
    if [ "$lane" = aarch64 ]; then
        # proof that the user-space maintenance path ran: qemu logs each guest
        # instruction it translates; the cache tests must have executed these.
        "$q" -L "$sysroot" -cpu "$cpu" -d in_asm -D "$out/c/test_cache.in_asm" "$out/c/test_cache" >/dev/null
        local insn missing=""
        for insn in 'mrs +x[0-9]+, ctr_el0' 'dc +cvac, x[0-9]+' 'dc +civac, x[0-9]+' 'dsb +sy'; do
            grep -Eq "$insn" "$out/c/test_cache.in_asm" || missing="$missing '$insn'"
        done
        if [ -n "$missing" ]; then
            echo "FAIL cache maintenance: qemu never executed$missing"
            status=FAIL
        else
            echo "ok   cache maintenance executed: mrs ctr_el0, dc cvac, dc civac, dsb sy (qemu -d in_asm)"
        fi
    fi
    fi

    # (c) the extension, cross-compiled against the target's headers
    log "$lane: extension ($cc -Wall -Wextra -Werror, Python 3.11 + NumPy 1.24 headers of the target)"
    local cflags=(-std=c11 -Wall -Wextra -Werror -O2 -g -fPIC -fvisibility=hidden
        -I"$sysroot/usr/include/python3.11" -idirafter "$sysroot/usr/include"
        -I"$sysroot/usr/lib/python3/dist-packages/numpy/core/include" -Isrc/core -Isrc/python)
    local src ok=1
    for src in src/python/*.c src/core/*.c; do
        "$cc" "${cflags[@]}" -c "$src" -o "$out/obj/$(basename "$src" .c).o" || ok=0
    done
    local so=$out/pkg/pynq_alloc/_pynq_alloc.cpython-311-$triplet.so
    if [ $ok = 1 ] && "$cc" -shared -o "$so" "$out"/obj/*.o -pthread -ldl; then
        echo "ok   built $(basename "$so")"
    else
        echo "FAIL the extension does not build for $lane"
        RESULT[$lane]=FAIL TIME[$lane]=$((SECONDS - t0))
        return 1
    fi
    cp pynq_alloc/*.py pynq_alloc/*.pyi pynq_alloc/py.typed "$out/pkg/pynq_alloc/"
    # the pytest11 entry point an installed package would have
    mkdir -p "$out/pkg/pynq_alloc-0.dist-info"
    printf 'Metadata-Version: 2.1\nName: pynq_alloc\nVersion: 0\n' >"$out/pkg/pynq_alloc-0.dist-info/METADATA"
    printf '[pytest11]\npynq_alloc.pytest_plugin = pynq_alloc.pytest_plugin\n' \
        >"$out/pkg/pynq_alloc-0.dist-info/entry_points.txt"
    if [ "${ARM_PREPARE_ONLY:-0}" = 1 ]; then
        RESULT[$lane]=$status TIME[$lane]=$((SECONDS - t0))
        [ "$status" = ok ]
        return
    fi

    # (d) the Python suite under qemu: python3-qemu is a static host program
    # that runs the sysroot's python3.11 under qemu, so sys.executable and the
    # tests' subprocesses are emulated too (no binfmt_misc needed).
    local py=$sysroot/usr/bin/python3-qemu
    gcc -static -O1 -Wall -Wextra -Werror -DQEMU="\"$q\"" -DSYSROOT="\"$sysroot\"" \
        -DPYTHON="\"$sysroot/usr/bin/python3.11\"" -DCPU="\"$cpu\"" -o "$py" .ci/arm_python.c
    local args
    if [ -n "${ARM_PYTEST_ARGS:-}" ]; then
        args=$ARM_PYTEST_ARGS
    elif [ "${ARM_PYTEST_FULL:-0}" = 1 ]; then
        args=tests
    else
        args=""
        for f in $PYTEST_SUBSET; do [ -e "$f" ] && args="$args $f"; done
    fi
    log "$lane: Python tests under qemu ($("$py" -c 'import platform, numpy, sys; print(platform.machine(), "Python", sys.version.split()[0], "NumPy", numpy.__version__)'))"
    # shellcheck disable=SC2086 # args is a list of paths / options
    if ! env -u PYTHONDONTWRITEBYTECODE -u PYNQ_ALLOC_REQUIRE_TOOLS PYTHONSAFEPATH=1 PYTHONPATH="$out/pkg:$ROOT/.ci" \
        PYTHONPYCACHEPREFIX="$c/pycache" PYNQ_ALLOC_EMULATED=1 PYNQ_ALLOC_REQUIRE_HUGEPAGE= \
        CC="$cc" PYNQ_ALLOC_HYPOTHESIS="${PYNQ_ALLOC_HYPOTHESIS:-}" \
        "$py" -m pytest -p no:cacheprovider -p arm_emulated_plugin -q -rs $args; then
        status=FAIL
    fi
    RESULT[$lane]=$status
    TIME[$lane]=$((SECONDS - t0))
    [ "$status" = ok ]
}

for lane in $ARM_LANES; do
    echo
    echo "=== ARM lane $lane"
    run_lane "$lane" || overall=1
done

echo
echo "=== ARM lanes summary"
for lane in $ARM_LANES; do
    printf '%-8s %-4s %4d s\n' "$lane" "${RESULT[$lane]:-FAIL}" "${TIME[$lane]:-0}"
done
exit $overall
