#!/usr/bin/env bash
# The kernel lane: the board backends against REAL kernel drivers, in an
# emulated arm64 board (qemu-system-aarch64 -M virt, TCG) on this x86-64 machine.
#
#   bash .ci/kernel_lane.sh
#   KERNEL_LANE_UDMABUF_SRC=/path/to/udmabuf KERNEL_LANE_ZOCL_SRC=/path/to/XRT/src/runtime_src/core/edge/drm/zocl \
#       bash .ci/kernel_lane.sh
#   KERNEL_LANE_PYTEST_ARGS="-x .ci/kernel/test_guest_devices.py" bash .ci/kernel_lane.sh
#
# (a) host tools from apt (qemu-system-arm, the aarch64 cross compiler, dtc,
#     Debian's linux-source-6.1, kbuild's needs); (b) the ARM lane's Debian
#     arm64 sysroot and the extension cross-built against it (.ci/arm_lanes.sh
#     with ARM_PREPARE_ONLY=1); (c) one small arm64 kernel built from
#     linux-source-6.1 (allnoconfig + .ci/kernel/guest.config: Debian's kernels
#     have no DMA-BUF heaps), and against that tree the out-of-tree modules
#     u-dma-buf and zocl when their sources are named (never part of this
#     repository; u-dma-buf twice: with and without its ioctls); (d) Debian's
#     arm64 gcc as a layer over the sysroot (the tests build their emulation
#     shims) and a busybox initramfs with .ci/kernel/init; (e) qemu's virt
#     device tree plus our nodes (.ci/kernel/dt_nodes.sh: two u-dma-buf regions,
#     one dma-coherent, and a zocl node); (f) the guest boots with cma= and
#     hugepages=, chroots into the sysroot (9p) and runs
#     .ci/kernel/guest_run.sh: `python -m pynq_alloc info`, pytest on the real
#     devices (.ci/kernel/test_guest_devices.py) and the ARM lane's subset, then
#     the u-dma-buf tests again with the ioctl-less build swapped in.
# The guest's pytest summary is printed here; the lane fails when the guest
# run fails, times out or never starts. Everything built is cached under
# $KERNEL_LANE_CACHE, keyed by versions and by the hash of our inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

KCACHE=${KERNEL_LANE_CACHE:-/var/cache/pynq_alloc-kernel}
ARM_CACHE=${ARM_CACHE:-/var/cache/pynq_alloc-arm}
OUT=${KERNEL_LANE_OUT:-$ROOT/build/kernel}
TIMEOUT=${KERNEL_LANE_TIMEOUT:-1500}     # seconds for the whole guest run
JOBS=${KERNEL_LANE_JOBS:-2}
MEM=2048 SMP=2 CPU=cortex-a53
CMA_MB=256 HUGEPAGES=64
UDMABUF_SRC=${KERNEL_LANE_UDMABUF_SRC:-}
ZOCL_SRC=${KERNEL_LANE_ZOCL_SRC:-}
CROSS=aarch64-linux-gnu-
# The guest's pytest run: the real devices first, then the ARM lane's subset
# (with the hugepage backend and the DMA-BUF heap emulation, which qemu-user
# must skip; the emulations' shims compiled in the guest by Debian's gcc).
GUEST_PYTEST_DEFAULT=".ci/kernel/test_guest_devices.py tests/test_api.py tests/test_sync.py
 tests/test_views.py tests/test_lifetime.py tests/test_errors.py tests/test_checker.py
 tests/test_threads.py tests/test_default_backend.py tests/test_backend_udmabuf.py
 tests/test_backend_xlnk.py tests/test_backend_zocl.py tests/test_backend_dmaheap.py
 tests/test_hugepage.py tests/test_32bit.py"
mkdir -p "$OUT"
t_start=$SECONDS
log() { echo "[kernel $(date +%T) +$((SECONDS - t_start))s] $*"; }
die() { echo "kernel lane: FAIL: $*" >&2; exit 1; }

# -------------------------------------------------------------- (a) host tools
need=()
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
command -v ${CROSS}gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v dtc >/dev/null || need+=(device-tree-compiler)
for t in flex bison bc cpio; do command -v $t >/dev/null || need+=($t); done
[ -e /usr/include/libelf.h ] || need+=(libelf-dev)
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
ls /usr/src/linux-source-6.1.tar.* >/dev/null 2>&1 || need+=(linux-source-6.1)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq || log "apt-get update partly failed; going on with the lists there are"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
KSRC_TAR=$(ls /usr/src/linux-source-6.1.tar.* | head -1)
KVER=$(dpkg-query -W -f='${Version}' linux-source-6.1)
GCCVER=$(${CROSS}gcc -dumpversion)

# ------------------------------------------------ (b) sysroot and the extension
log "ARM sysroot and the aarch64 extension (.ci/arm_lanes.sh, ARM_PREPARE_ONLY=1)"
ARM_OUT=$OUT/arm ARM_LANES=aarch64 ARM_PREPARE_ONLY=1 ARM_CACHE=$ARM_CACHE bash .ci/arm_lanes.sh >"$OUT.arm.log" 2>&1 ||
    { cat "$OUT.arm.log"; die "the aarch64 extension or sysroot could not be built"; }
SYSROOT=$ARM_CACHE/arm64/sysroot
# Debian ships no .pyc: compile once on the host (same CPython 3.11 bytecode),
# or `import numpy` alone takes 7-11 s under TCG.
if [ "$(python3 -c 'import sys; print(sys.version_info[:2] == (3, 11))')" = True ] &&
    [ ! -f "$SYSROOT/.kernel-lane-pyc" ]; then
    log "byte-compiling the sysroot's Python packages"
    nice python3 -m compileall -q -j "$JOBS" -d / "$SYSROOT/usr/lib/python3.11" "$SYSROOT/usr/lib/python3/dist-packages" \
        >/dev/null 2>&1 || true
    touch "$SYSROOT/.kernel-lane-pyc"
fi

# A C compiler for the guest (the tests build their emulation shims): Debian's
# arm64 gcc, unpacked into a layer of its own that the guest lays over the sysroot.
GCC_LAYER=$KCACHE/gcc-layer
if [ ! -f "$GCC_LAYER/.complete" ]; then
    log "fetching gcc (arm64) from Debian for the guest"
    c=$ARM_CACHE/arm64
    rm -rf "$GCC_LAYER" "$KCACHE/gcc-debs" && mkdir -p "$GCC_LAYER" "$KCACHE/gcc-debs/partial"
    apt-get -q -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64" \
        -o "Dir::State=$c/apt/state" -o "Dir::State::status=$c/apt/state/status" \
        -o "Dir::Cache::archives=$KCACHE/gcc-debs" -o Debug::NoLocking=1 -o APT::Install-Recommends=0 \
        install -y --download-only gcc libc6-dev >"$KCACHE/gcc-debs.log" 2>&1 ||
        { cat "$KCACHE/gcc-debs.log"; die "cannot download gcc for arm64"; }
    for deb in "$KCACHE"/gcc-debs/*.deb; do dpkg -x "$deb" "$GCC_LAYER"; done
    ln -sf gcc "$GCC_LAYER/usr/bin/cc"
    rm -rf "$KCACHE/gcc-debs"
    touch "$GCC_LAYER/.complete"
fi

# ------------------------------------------------------------------ (c) kernel
fragment=.ci/kernel/guest.config
kkey=$(printf '%s\n' "$KVER" "$GCCVER" "$(sha256sum "$fragment")" | sha256sum | cut -c1-12)
KDIR=$KCACHE/linux-$KVER-$kkey
if [ ! -f "$KDIR/.built" ]; then
    log "building the guest kernel from linux-source-6.1 $KVER (cache miss: $KDIR)"
    t0=$SECONDS
    rm -rf "$KDIR" "$KDIR.tmp" && mkdir -p "$KDIR.tmp"
    nice tar -xf "$KSRC_TAR" -C "$KDIR.tmp"
    mv "$KDIR.tmp"/linux-source-6.1 "$KDIR" && rmdir "$KDIR.tmp"
    K=(-C "$KDIR" ARCH=arm64 CROSS_COMPILE=$CROSS)
    # (merge_config's "override changes choice state" notes go to the log)
    { make -s "${K[@]}" allnoconfig &&
        (cd "$KDIR" && scripts/kconfig/merge_config.sh -m .config "$ROOT/$fragment") &&
        make -s "${K[@]}" olddefconfig; } >"$KDIR.config.log" 2>&1 ||
        { cat "$KDIR.config.log"; die "kernel configuration failed"; }
    # every line of the fragment must have survived the dependency resolution
    bad=""
    while IFS= read -r line; do
        case $line in
            CONFIG_*=*) grep -qx "$line" "$KDIR/.config" || bad="$bad $line" ;;
            "# CONFIG_"*" is not set") k=${line#\# }; k=${k%% *}; grep -q "^$k=" "$KDIR/.config" && bad="$bad $k=n" ;;
        esac
    done <"$fragment"
    [ -z "$bad" ] || die "kernel config: not taken by Kconfig:$bad"
    nice make "${K[@]}" -j"$JOBS" Image modules >"$KDIR.build.log" 2>&1 ||
        { tail -40 "$KDIR.build.log"; die "the guest kernel does not build"; }
    touch "$KDIR/.built"
    log "guest kernel built in $((SECONDS - t0)) s"
    # older builds of other versions are not needed any more
    for d in "$KCACHE"/linux-*; do
        [ -d "$d" ] && [ "$d" != "$KDIR" ] && rm -rf "$d" "$d.build.log" "$d.config.log" "$d"-modules
    done
fi
IMAGE=$KDIR/arch/arm64/boot/Image
MODDIR=$KDIR-modules
mkdir -p "$MODDIR"

# build_module NAME SRC_DIR SUBDIR KO [make args...]: an out-of-tree module
# in SRC_DIR/SUBDIR built in a copy of SRC_DIR (never written to), cached by
# the hash of the source files and of our make arguments and compat header.
build_module() {
    local name=$1 src=$2 sub=$3 ko=$4
    shift 4
    [ -d "$src/$sub" ] || die "$name: $src/$sub is not a directory"
    local h
    h=$( (cd "$src" && find . -type f \( -name '*.[ch]' -o -name Makefile -o -name Kbuild \) -print0 |
        sort -z | xargs -0 sha256sum; echo "$*"; cat "$ROOT"/.ci/kernel/*compat* 2>/dev/null) | sha256sum | cut -c1-12)
    local b=$MODDIR/$name-$h
    if [ ! -f "$b/.built" ]; then
        log "$name: building the module from $src/$sub"
        local t0=$SECONDS
        rm -rf "$b" && mkdir -p "$b" && cp -a "$src"/. "$b"/
        nice make -C "$KDIR" ARCH=arm64 CROSS_COMPILE=$CROSS M="$b/$sub" -j"$JOBS" "$@" modules >"$b.log" 2>&1 ||
            { tail -60 "$b.log"; die "$name does not build against the guest kernel (log: $b.log)"; }
        touch "$b/.built"
        log "$name: built in $((SECONDS - t0)) s"
    fi
    case $name in
        *-sysfs) mkdir -p "$INITRD_DIR/modules/alt" && cp "$b/$sub/$ko" "$INITRD_DIR/modules/alt/$ko" ;;
        *) cp "$b/$sub/$ko" "$INITRD_DIR/modules/" ;;
    esac
}

# --------------------------------------------------------------- (d) initramfs
INITRD_DIR=$OUT/initramfs
rm -rf "$INITRD_DIR" && mkdir -p "$INITRD_DIR/bin" "$INITRD_DIR/modules"
BB=$KCACHE/busybox
if [ ! -x "$BB/bin/busybox" ]; then
    log "fetching busybox-static (arm64) from Debian"
    c=$ARM_CACHE/arm64
    rm -rf "$BB" && mkdir -p "$BB/deb"
    (cd "$BB/deb" && apt-get -q -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64" \
        -o "Dir::State=$c/apt/state" -o "Dir::State::status=$c/apt/state/status" \
        -o "Dir::Cache=$c/apt/cache" -o Debug::NoLocking=1 download busybox-static >/dev/null 2>&1) ||
        die "cannot download busybox-static for arm64"
    dpkg -x "$BB"/deb/busybox-static_*.deb "$BB"
fi
cp "$BB/bin/busybox" "$INITRD_DIR/bin/busybox"
cp .ci/kernel/init "$INITRD_DIR/init" && chmod +x "$INITRD_DIR/init"

EXPECT="dmaheap cma hugepage"
if [ -n "$UDMABUF_SRC" ]; then
    # kbuild directly, with the options u-dma-buf's own Makefile sets for an
    # out-of-tree build (quirk mmap, in-kernel functions, ioctls, dma-buf export)
    build_module udmabuf "$UDMABUF_SRC" . u-dma-buf.ko CONFIG_U_DMA_BUF=m U_DMA_BUF_CONFIG=1 \
        U_DMA_BUF_QUIRK_MMAP=1 U_DMA_BUF_IN_KERNEL_FUNCTIONS=1 U_DMA_BUF_IOCTL=2 U_DMA_BUF_EXPORT=1
    # and once more without ioctls, as drivers before 4.7 are: the guest swaps
    # it in for a second run of the u-dma-buf tests, so the backend's sysfs
    # one-shot sync path meets the real driver's parser too
    build_module udmabuf-sysfs "$UDMABUF_SRC" . u-dma-buf.ko CONFIG_U_DMA_BUF=m U_DMA_BUF_CONFIG=1 \
        U_DMA_BUF_QUIRK_MMAP=1 U_DMA_BUF_IN_KERNEL_FUNCTIONS=1 U_DMA_BUF_IOCTL=0 U_DMA_BUF_EXPORT=1
    EXPECT="$EXPECT udmabuf"
fi
if [ -n "$ZOCL_SRC" ]; then
    # zocl is written for linux-xlnx: what mainline 6.1 lacks comes from our
    # own compat header, forced in from the kbuild command line (zocl's files
    # are not modified).
    # zocl's Makefile takes XRT's common/drv and headers from ../../.. (core/):
    # copy the parts of the XRT tree it needs, not only its own directory.
    core=$(cd "$ZOCL_SRC/../../.." && pwd)
    [ -d "$core/common/drv" ] || die "KERNEL_LANE_ZOCL_SRC must be XRT's src/runtime_src/core/edge/drm/zocl inside an XRT checkout (no $core/common/drv)"
    ZCOPY=$KCACHE/zocl-src
    rm -rf "$ZCOPY" && mkdir -p "$ZCOPY/edge/drm" "$ZCOPY/common"
    cp -a "$core/edge/drm/zocl" "$ZCOPY/edge/drm/" && cp -a "$core/edge/include" "$ZCOPY/edge/"
    cp -a "$core/include" "$ZCOPY/" && cp -a "$core/common/drv" "$ZCOPY/common/"
    zver=$(sed -n 's/^XRT_DRIVER_VERSION ?= *\([0-9]*\)\.\([0-9]*\)\.\([0-9]*\).*/\1 \2 \3/p' "$ZCOPY/edge/drm/zocl/Makefile")
    read -r zmaj zmin zpatch <<<"${zver:-0 0 0}"
    build_module zocl "$ZCOPY" edge/drm/zocl zocl.ko "KCFLAGS=-include $ROOT/.ci/kernel/zocl_compat.h \
-DPA_ZOCL_VERSION_MAJOR=$zmaj -DPA_ZOCL_VERSION_MINOR=$zmin -DPA_ZOCL_VERSION_PATCH=$zpatch"
    EXPECT="$EXPECT zocl"
fi
(cd "$INITRD_DIR" && find . | cpio -o -H newc --quiet | gzip -1 >"$OUT/initramfs.cpio.gz")

# ------------------------------------------------------------ (e) device tree
QEMU=(qemu-system-aarch64 -M virt -cpu $CPU -smp $SMP -m $MEM -nographic -no-reboot)
"${QEMU[@]}" -M virt,dumpdtb="$OUT/virt.dtb" >/dev/null 2>&1
dtc -q -I dtb -O dts "$OUT/virt.dtb" >"$OUT/guest.dts"
bash .ci/kernel/dt_nodes.sh >>"$OUT/guest.dts"
dtc -q -I dts -O dtb -o "$OUT/guest.dtb" "$OUT/guest.dts"

# -------------------------------------------------------------- (f) the guest
rm -rf "$OUT/results" && mkdir -p "$OUT/results"
pytest_args=${KERNEL_LANE_PYTEST_ARGS:-}
if [ -z "$pytest_args" ]; then
    for f in $GUEST_PYTEST_DEFAULT; do [ -e "$f" ] && pytest_args="$pytest_args $f"; done
fi
cat >"$OUT/results/config.sh" <<EOF
GUEST_PKG=/project/${OUT#"$ROOT"/}/arm/aarch64/pkg
GUEST_PYTEST_ARGS="$pytest_args"
KERNEL_LANE_EXPECT="$EXPECT"
KERNEL_LANE_ZOCL_VERSION="${zmaj:-}.${zmin:-}.${zpatch:-}"
EOF
case $OUT in "$ROOT"/*) ;; *) die "KERNEL_LANE_OUT must be inside the project ($ROOT)" ;; esac
[ -n "$UDMABUF_SRC" ] || echo "kernel lane: u-dma-buf NOT tested in this run (set KERNEL_LANE_UDMABUF_SRC to a checkout of github.com/ikwzm/udmabuf)"
[ -n "$ZOCL_SRC" ] || echo "kernel lane: zocl NOT tested in this run (set KERNEL_LANE_ZOCL_SRC to XRT's src/runtime_src/core/edge/drm/zocl)"
log "booting the guest (qemu -M virt -cpu $CPU -smp $SMP -m $MEM, cma=${CMA_MB}M hugepages=$HUGEPAGES; expecting: $EXPECT; timeout $TIMEOUT s)"
t0=$SECONDS
# 9p shares on virtio-mmio (-virtfs would make virtio-9p-pci; the kernel has no PCI)
share() {
    echo "-fsdev local,id=$2,path=$1,security_model=none,readonly=$3,multidevs=remap"
    echo "-device virtio-9p-device,fsdev=$2,mount_tag=$2"
}
set +e
# shellcheck disable=SC2046 # share prints separate arguments
timeout --foreground -k 10 "$TIMEOUT" "${QEMU[@]}" -kernel "$IMAGE" -initrd "$OUT/initramfs.cpio.gz" \
    -dtb "$OUT/guest.dtb" -append "console=ttyAMA0 quiet cma=${CMA_MB}M hugepages=$HUGEPAGES panic=-1" \
    $(share "$SYSROOT" sysroot on) $(share "$GCC_LAYER" gcc on) $(share "$ROOT" project on) $(share "$OUT/results" results off) \
    </dev/null 2>&1 | tee "$OUT/console.log" | sed -u 's/^/  guest| /'
qrc=${PIPESTATUS[0]}
set -e
guest_s=$((SECONDS - t0))
echo
# one summary line per pytest run in the guest (the second: u-dma-buf without ioctls)
summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|deselected)|^=+ .*(passed|failed|error).* in ' \
    "$OUT/results/pytest.log" 2>/dev/null || true)
if [ -n "$summary" ]; then
    echo "$summary" | sed 's/^/kernel lane: guest pytest: /'
else
    echo "kernel lane: guest pytest: no summary line (the tests in the guest did not run to the end)"
fi
echo "kernel lane: tested against real kernel drivers: $EXPECT; guest run $guest_s s, lane $((SECONDS - t_start)) s"
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    die "the guest did not finish within $TIMEOUT s"
fi
[ -f "$OUT/results/rc" ] || die "the guest did not start or did not finish (qemu exit status $qrc; console: $OUT/console.log)"
rc=$(cat "$OUT/results/rc")
[ "$rc" = 0 ] || die "the guest run failed (status $rc)"
echo "kernel lane: ok"
