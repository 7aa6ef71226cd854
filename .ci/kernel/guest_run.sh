#!/bin/sh
# Runs inside the kernel lane's guest, chrooted into the Debian arm64 sysroot
# (see .ci/kernel/init). The host wrote /results/config.sh; results go to
# /results, the exit status is pytest's.
set -u
. /results/config.sh
cd /project
export PYTHONPATH=$GUEST_PKG PYTHONPYCACHEPREFIX=/tmp/pycache PYTHONSAFEPATH=1
export PYNQ_ALLOC_REQUIRE_HUGEPAGE=1 KERNEL_LANE_EXPECT KERNEL_LANE_ZOCL_VERSION
echo "guest: $(uname -r) $(uname -m), $(nproc) CPUs"
grep -E 'MemTotal|CmaTotal|CmaFree|HugePages_Total|Hugepagesize' /proc/meminfo
ls /dev/dma_heap /dev/udmabuf* /dev/dri 2>/dev/null
echo "guest: python3 -m pynq_alloc info"
python3 -m pynq_alloc info 2>&1 | tee /results/info.txt
echo "guest: pytest $GUEST_PYTEST_ARGS"
# shellcheck disable=SC2086 # a list of paths and options
{ python3 -m pytest -p no:cacheprovider -q -rs $GUEST_PYTEST_ARGS; echo $? >/tmp/pytest.rc; } 2>&1 |
    tee /results/pytest.log
rc=$(cat /tmp/pytest.rc 2>/dev/null || echo 126)
# u-dma-buf again, built without ioctls (as before 4.7): the backend must then
# sync through the sysfs one-shot values, parsed by the real driver
if [ -f /lane-modules/u-dma-buf.ko ]; then
    echo "guest: u-dma-buf without ioctls: rmmod u-dma-buf; insmod /lane-modules/u-dma-buf.ko"
    if rmmod u-dma-buf && insmod /lane-modules/u-dma-buf.ko; then
        { KERNEL_LANE_UDMABUF_SYNC=sysfs python3 -m pytest -p no:cacheprovider -q -rs \
            .ci/kernel/test_guest_devices.py -k udmabuf; echo $? >/tmp/pytest2.rc; } 2>&1 |
            tee -a /results/pytest.log
        rc2=$(cat /tmp/pytest2.rc 2>/dev/null || echo 126)
    else
        echo "guest: could not swap the u-dma-buf module"
        rc2=125
    fi
    [ "$rc" != 0 ] || rc=$rc2
fi
exit "$rc"
