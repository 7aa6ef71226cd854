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
exit "$(cat /tmp/pytest.rc 2>/dev/null || echo 126)"
