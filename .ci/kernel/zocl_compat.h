/* Forced into every zocl source file by the kernel lane (.ci/kernel_lane.sh
 * passes KCFLAGS="-include .../zocl_compat.h"), so that XRT's zocl builds
 * against mainline Linux 6.1 without changing its files. Written for this
 * project; no zocl or linux-xlnx code is copied here.
 *
 * zocl expects linux-xlnx's FPGA manager (extra fields `flags` and `dmabuf` in
 * struct fpga_manager, the FPGA_MGR_CONFIG_DMA_BUF flag). The guest has no
 * programmable logic and its kernel no FPGA framework, so this header takes
 * the place of <linux/fpga/fpga-mgr.h> with the few declarations zocl uses:
 * no FPGA manager is ever found (of_fpga_mgr_get fails), which is zocl's own
 * path for a platform without one. Bitstream loading is outside what the
 * kernel lane tests (buffer objects only).
 */
#ifndef PYNQ_ALLOC_ZOCL_COMPAT_H
#define PYNQ_ALLOC_ZOCL_COMPAT_H

#define _LINUX_FPGA_MGR_H /* the include guard of <linux/fpga/fpga-mgr.h> */

/* zocl_aie.h then declares its own stubs for the AI Engine driver (no AIE here) */
#define __NONE_PETALINUX__ 1

/* what zocl's Makefile passes from `git` when it drives the build itself; the
 * lane passes the version its Makefile states as three numbers (zocl parses
 * XRT_DRIVER_VERSION into the DRM driver version that DRM_IOCTL_VERSION reports) */
#include <linux/stringify.h>
#define XRT_DRIVER_VERSION                                                                   \
    __stringify(PA_ZOCL_VERSION_MAJOR) "." __stringify(PA_ZOCL_VERSION_MINOR) "." __stringify( \
        PA_ZOCL_VERSION_PATCH)
#define XRT_HASH "unknown (built by the pynq_alloc kernel lane)"
#define XRT_HASH_DATE ""
#define XRT_BRANCH ""
#define XRT_MODIFIED_FILES ""
#define XRT_DATE ""

#include <linux/err.h>
#include <linux/types.h>

struct device;
struct device_node;
struct dma_buf;

#define FPGA_MGR_PARTIAL_RECONFIG (1U << 0)
#define FPGA_MGR_CONFIG_DMA_BUF (1U << 31)

struct fpga_manager {
    u32 flags;
    struct dma_buf *dmabuf;
};

struct fpga_image_info {
    u32 flags;
    const char *buf;
    size_t count;
};

static inline struct fpga_manager *of_fpga_mgr_get(struct device_node *node)
{
    (void)node;
    return ERR_PTR(-ENODEV);
}

static inline void fpga_mgr_put(struct fpga_manager *mgr) { (void)mgr; }

static inline struct fpga_image_info *fpga_image_info_alloc(struct device *dev)
{
    (void)dev;
    return NULL;
}

static inline void fpga_image_info_free(struct fpga_image_info *info) { (void)info; }

static inline int fpga_mgr_load(struct fpga_manager *mgr, struct fpga_image_info *info)
{
    (void)mgr;
    (void)info;
    return -ENODEV;
}

/* Two AI Engine calls zocl_aie.h has no stub for: no AIE partition ever exists
 * here (aie_partition_request() is stubbed to fail), so these are not reached. */
static inline int aie_partition_get_freq(struct device *dev, u64 *freq)
{
    (void)dev;
    (void)freq;
    return -ENODEV;
}

static inline int aie_partition_set_freq_req(struct device *dev, u64 freq)
{
    (void)dev;
    (void)freq;
    return -ENODEV;
}

#endif
