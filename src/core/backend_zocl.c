/* zocl backend: buffer objects from the zocl DRM driver (PYNQ >= 2.7 images and
 * Vitis embedded platforms), driven through its ioctls on the render node, no
 * libxrt. Small requests share pooled BOs (TLSF); large ones get a BO each. */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64 /* DRM fake mmap offsets exceed 2 GiB on 32-bit ARM */
#include "pa.h"
#include "pool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- kernel interface ----------------------------------------------------
 * Our own definitions of the structs the kernel reads, with explicit padding so
 * the layout is the same on AArch64 and 32-bit ARM (EABI aligns u64 to 8).
 * DRM core: include/uapi/drm/drm.h. zocl: Xilinx/XRT
 * src/runtime_src/core/edge/include/zynq_ioctl.h; the command numbers below are
 * those of XRT >= 2019.1 (GET_HOST_BO was inserted before MAP_BO then), which
 * covers every PYNQ image that ships zocl. */

struct pa_zocl_drm_version { /* DRM_IOCTL_VERSION: native size_t and pointers */
    int major;
    int minor;
    int patchlevel;
    size_t name_len;
    char *name;
    size_t date_len;
    char *date;
    size_t desc_len;
    char *desc;
};

struct pa_zocl_gem_close {
    uint32_t handle;
    uint32_t pad;
};

struct pa_zocl_create_bo {
    uint64_t size;
    uint32_t handle; /* out */
    uint32_t flags;  /* memory bank in bits 0-15, slot 16-23, PA_ZOCL_CACHEABLE */
};

struct pa_zocl_map_bo {
    uint32_t handle;
    uint32_t pad;
    uint64_t offset; /* out: fake offset for mmap on the render node */
};

struct pa_zocl_sync_bo {
    uint32_t handle;
    uint32_t dir; /* an enum in the kernel: 4 bytes on both ARM ABIs */
    uint64_t offset;
    uint64_t size;
};

struct pa_zocl_info_bo {
    uint32_t handle;
    uint32_t flags; /* out since XRT 2021.1 (padding before) */
    uint64_t size;  /* out */
    uint64_t paddr; /* out */
};

_Static_assert(sizeof(struct pa_zocl_drm_version) == (sizeof(void *) == 8 ? 64 : 36),
               "struct drm_version layout");
_Static_assert(offsetof(struct pa_zocl_drm_version, name_len) == (sizeof(void *) == 8 ? 16 : 12),
               "struct drm_version layout");
_Static_assert(offsetof(struct pa_zocl_drm_version, desc) == (sizeof(void *) == 8 ? 56 : 32),
               "struct drm_version layout");
_Static_assert(sizeof(struct pa_zocl_gem_close) == 8, "struct drm_gem_close layout");
_Static_assert(sizeof(struct pa_zocl_create_bo) == 16, "struct drm_zocl_create_bo layout");
_Static_assert(offsetof(struct pa_zocl_create_bo, flags) == 12, "struct drm_zocl_create_bo");
_Static_assert(sizeof(struct pa_zocl_map_bo) == 16, "struct drm_zocl_map_bo layout");
_Static_assert(offsetof(struct pa_zocl_map_bo, offset) == 8, "struct drm_zocl_map_bo layout");
_Static_assert(sizeof(struct pa_zocl_sync_bo) == 24, "struct drm_zocl_sync_bo layout");
_Static_assert(offsetof(struct pa_zocl_sync_bo, offset) == 8, "struct drm_zocl_sync_bo layout");
_Static_assert(offsetof(struct pa_zocl_sync_bo, size) == 16, "struct drm_zocl_sync_bo layout");
_Static_assert(sizeof(struct pa_zocl_info_bo) == 24, "struct drm_zocl_info_bo layout");
_Static_assert(offsetof(struct pa_zocl_info_bo, size) == 8, "struct drm_zocl_info_bo layout");
_Static_assert(offsetof(struct pa_zocl_info_bo, paddr) == 16, "struct drm_zocl_info_bo layout");

#define PA_ZOCL_DRM 'd'
#define PA_ZOCL_CMD 0x40 /* DRM_COMMAND_BASE */
#define PA_ZOCL_IOC_VERSION _IOWR(PA_ZOCL_DRM, 0x00, struct pa_zocl_drm_version)
#define PA_ZOCL_IOC_GEM_CLOSE _IOW(PA_ZOCL_DRM, 0x09, struct pa_zocl_gem_close)
#define PA_ZOCL_IOC_CREATE_BO _IOWR(PA_ZOCL_DRM, PA_ZOCL_CMD + 0, struct pa_zocl_create_bo)
#define PA_ZOCL_IOC_MAP_BO _IOWR(PA_ZOCL_DRM, PA_ZOCL_CMD + 3, struct pa_zocl_map_bo)
#define PA_ZOCL_IOC_SYNC_BO _IOWR(PA_ZOCL_DRM, PA_ZOCL_CMD + 4, struct pa_zocl_sync_bo)
#define PA_ZOCL_IOC_INFO_BO _IOWR(PA_ZOCL_DRM, PA_ZOCL_CMD + 5, struct pa_zocl_info_bo)

_Static_assert(sizeof(off_t) == 8, "mmap offsets from MAP_BO need a 64-bit off_t");
_Static_assert(PA_ZOCL_IOC_GEM_CLOSE == 0x40086409u, "DRM_IOCTL_GEM_CLOSE");
_Static_assert(PA_ZOCL_IOC_CREATE_BO == 0xC0106440u, "DRM_IOCTL_ZOCL_CREATE_BO");
_Static_assert(PA_ZOCL_IOC_MAP_BO == 0xC0106443u, "DRM_IOCTL_ZOCL_MAP_BO");
_Static_assert(PA_ZOCL_IOC_SYNC_BO == 0xC0186444u, "DRM_IOCTL_ZOCL_SYNC_BO");
_Static_assert(PA_ZOCL_IOC_INFO_BO == 0xC0186445u, "DRM_IOCTL_ZOCL_INFO_BO");

/* XCL_BO_FLAGS_CACHEABLE: zocl keeps only this, EXECBUF and the bank bits of the
 * user flags (zocl_convert_bo_uflags); CMA comes from the bank (PYNQ's PSDDR is
 * bank 0) or is the fallback for an unused bank. */
#define PA_ZOCL_CACHEABLE (1u << 24)
#define PA_ZOCL_SYNC_TO_DEVICE 0u
#define PA_ZOCL_SYNC_FROM_DEVICE 1u

#define PA_ZOCL_FIRST 128 /* render minors: /dev/dri/renderD128 .. renderD191 */
#define PA_ZOCL_LAST 191
#define PA_ZOCL_POOL_MAX ((size_t)64 << 10)
#define PA_ZOCL_POOL_CHUNK ((size_t)1 << 20)

#define PA_ZOCL_HINT_MISSING                                                                       \
    "load zocl: is the board image PYNQ >= 2.7 / a Vitis platform (zocl node in the device "       \
    "tree)? Check with ls /dev/dri and lsmod | grep zocl"
#define PA_ZOCL_HINT_PERM                                                                          \
    "add the user to the render/video group (sudo usermod -aG render,video $USER, then log in "    \
    "again) or run as root"
#define PA_ZOCL_HINT_CMA                                                                           \
    "CMA is exhausted: increase cma= on the kernel command line (e.g. cma=512M in the boot "       \
    "arguments), or free buffers that are no longer needed"

/* One buffer object, mapped whole: pc.cpu is the mapping, pc.len the BO's
 * size as the driver reports it, pc.device its physical address. In a pool
 * (pc.tlsf != NULL) small blocks share it. */
typedef struct pa_zocl_bo {
    pa_pool_chunk pc;
    uint32_t handle;
    bool cacheable; /* asked for (the pool it belongs to) */
    bool pl_ddr;    /* in PL-DDR: zocl dropped CACHEABLE, the mapping is write-combine */
} pa_zocl_bo;

#define PA_ZOCL_MAX_RESERVED 16

typedef struct pa_zocl {
    int fd;
    char node[64];  /* /dev/dri/renderDN, as the user would write it */
    int version[3]; /* driver version from DRM_IOCTL_VERSION */
    bool cacheable; /* default for allocations that don't say */
    uint32_t bank;
    size_t pool_max;   /* requests up to this size share pooled BOs; 0: never */
    size_t pool_chunk; /* size of a pool BO */
    size_t page;
    pa_pool pools[2];     /* [cacheable] */
    uint64_t bo_bytes;    /* bytes in live BOs */
    /* the device tree's static reserved-memory regions [base, end): zocl manages
     * a memory bank that is one of them as PL-DDR (range allocator), not CMA */
    uint64_t reserved[PA_ZOCL_MAX_RESERVED][2];
    size_t nreserved;
} pa_zocl;

static int pa_zocl_ioctl(int fd, unsigned long req, void *arg)
{
    int rc;
    do {
        rc = ioctl(fd, req, arg);
    } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    return rc < 0 ? -errno : 0;
}

/* Opens node (a /dev path) and checks that its DRM driver is zocl. On success
 * *fd is open (when fd != NULL) and version[] filled; on failure the message
 * says what was wrong with this node. -ENOENT: no such node. */
static int pa_zocl_open_node(const char *node, int *fd, int version[3], pa_err *err)
{
    char path[4096], name[64] = "";
    struct pa_zocl_drm_version v;
    if (pa_path(path, sizeof(path), node) < 0) {
        return pa_seterr(err, ENAMETOOLONG, "%s: path too long; check PYNQ_ALLOC_SYSROOT", node);
    }
    int f = open(path, O_RDWR | O_CLOEXEC);
    if (f < 0) {
        int e = errno;
        if (e == EACCES || e == EPERM) {
            return pa_seterr(err, e, "cannot open %s: %s; %s", node, strerror(e),
                             PA_ZOCL_HINT_PERM);
        }
        if (e == ENOENT || e == ENXIO || e == ENODEV) {
            return pa_seterr(err, ENOENT, "%s does not exist (%s); %s", node, strerror(e),
                             PA_ZOCL_HINT_MISSING);
        }
        return pa_seterr(err, e, "cannot open %s: %s", node, strerror(e));
    }
    memset(&v, 0, sizeof(v));
    v.name = name;
    v.name_len = sizeof(name) - 1;
    int rc = pa_zocl_ioctl(f, PA_ZOCL_IOC_VERSION, &v);
    if (rc < 0) {
        rc = pa_seterr(err, ENODEV,
                       "%s is not a DRM device (DRM_IOCTL_VERSION failed: %s); pass "
                       "zocl:/dev/dri/renderDN naming the zocl render node",
                       node, strerror(-rc));
        goto close_fd;
    }
    name[v.name_len < sizeof(name) - 1 ? v.name_len : sizeof(name) - 1] = '\0';
    if (strcmp(name, "zocl") != 0) {
        rc = pa_seterr(err, ENODEV,
                       "%s belongs to the DRM driver '%s', not zocl; pass "
                       "zocl:/dev/dri/renderDN naming the zocl render node, or %s",
                       node, name, PA_ZOCL_HINT_MISSING);
        goto close_fd;
    }
    version[0] = v.major;
    version[1] = v.minor;
    version[2] = v.patchlevel;
    if (fd != NULL) {
        *fd = f;
        return 0;
    }
    rc = 0;
close_fd:
    close(f);
    return rc;
}

/* appends s to the string in buf[cap], truncating */
static void pa_zocl_append(char *buf, size_t cap, const char *s)
{
    size_t used = strlen(buf), n = strlen(s);
    if (n > cap - 1 - used) {
        n = cap - 1 - used;
    }
    memcpy(buf + used, s, n);
    buf[used + n] = '\0';
}

/* Finds the zocl render node: arg names it, or scan renderD128..191. */
static int pa_zocl_find(const char *arg, int *fd, char *node, size_t nodelen, int version[3],
                        pa_err *err)
{
    char cand[64], why[PA_ERR_LEN] = "";
    pa_err one;
    int worst = -ENOENT, refused = 0;
    if (arg != NULL && arg[0] != '\0') {
        if (strncmp(arg, "/dev/", 5) != 0 || strlen(arg) >= nodelen) {
            return pa_seterr(err, EINVAL,
                             "zocl:%s: name the render node as a path, e.g. "
                             "zocl:/dev/dri/renderD128",
                             arg);
        }
        snprintf(node, nodelen, "%s", arg);
        return pa_zocl_open_node(node, fd, version, err);
    }
    for (int i = PA_ZOCL_FIRST; i <= PA_ZOCL_LAST; i++) {
        snprintf(cand, sizeof(cand), "/dev/dri/renderD%d", i);
        int rc = pa_zocl_open_node(cand, fd, version, &one);
        if (rc == 0) {
            snprintf(node, nodelen, "%s", cand);
            return 0;
        }
        if (rc == -ENOENT) {
            continue;
        }
        /* remember why each existing node was refused; permission problems win */
        if (worst == -ENOENT || rc == -EACCES || rc == -EPERM) {
            worst = rc;
        }
        refused++;
        pa_zocl_append(why, sizeof(why), why[0] != '\0' ? "; " : "");
        pa_zocl_append(why, sizeof(why), one.msg);
    }
    if (worst == -ENOENT) {
        return pa_seterr(err, ENOENT, "no DRM render node (/dev/dri/renderD%d..%d) exists; %s",
                         PA_ZOCL_FIRST, PA_ZOCL_LAST, PA_ZOCL_HINT_MISSING);
    }
    if (refused == 1) {
        return pa_seterr(err, -worst, "%s", why);
    }
    return pa_seterr(err, -worst, "no zocl render node among %d: %s", refused, why);
}

/* ---- buffer objects ------------------------------------------------------ */

static void pa_zocl_gem_close(pa_zocl *z, uint32_t handle)
{
    struct pa_zocl_gem_close c = {.handle = handle};
    (void)pa_zocl_ioctl(z->fd, PA_ZOCL_IOC_GEM_CLOSE, &c);
}

static void pa_zocl_bo_destroy(pa_zocl *z, pa_zocl_bo *bo)
{
    pa_retire(bo->pc.cpu, bo->pc.len); /* arrays may still point here: see pa_retire */
    pa_zocl_gem_close(z, bo->handle);
    z->bo_bytes -= bo->pc.len;
    free(bo);
}

static void pa_zocl_pool_release(void *ctx, pa_pool_chunk *c)
{
    pa_zocl_bo_destroy(ctx, (pa_zocl_bo *)c);
}

/* up to cap bytes of a device-tree property under the sysroot; -1 if absent */
static ssize_t pa_zocl_read_prop(const char *path, unsigned char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = read(fd, buf, cap);
    close(fd);
    return n;
}

static uint64_t pa_zocl_cells(const unsigned char *p, uint32_t ncells)
{
    uint64_t v = 0;
    for (uint32_t i = 0; i < ncells * 4; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

/* XRT's zocl_init_mem: a memory bank whose base and size are a reserved-memory
 * region of the device tree is PL-DDR (or LPDDR), managed by a range allocator;
 * zocl_create_bo_ioctl drops CACHEABLE there ("Cache is not supported and
 * turned off for PL-DDR or LPDDR"), maps it write-combine, and its SYNC_BO
 * does nothing. Reusable regions are CMA pools, not banks. */
static void pa_zocl_read_reserved(pa_zocl *z)
{
    char dir[512], path[1024];
    unsigned char buf[256];
    if (pa_path(dir, sizeof(dir), "/proc/device-tree/reserved-memory") < 0) {
        return;
    }
    uint32_t ac = 2, sc = 1; /* the devicetree specification's defaults */
    snprintf(path, sizeof(path), "%s/#address-cells", dir);
    if (pa_zocl_read_prop(path, buf, 4) == 4) {
        ac = (uint32_t)pa_zocl_cells(buf, 1);
    }
    snprintf(path, sizeof(path), "%s/#size-cells", dir);
    if (pa_zocl_read_prop(path, buf, 4) == 4) {
        sc = (uint32_t)pa_zocl_cells(buf, 1);
    }
    if (ac < 1 || ac > 2 || sc < 1 || sc > 2) {
        return;
    }
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL && z->nreserved < PA_ZOCL_MAX_RESERVED) {
        if (de->d_name[0] == '.') {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s/reusable", dir, de->d_name);
        if (access(path, F_OK) == 0) {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s/reg", dir, de->d_name);
        ssize_t n = pa_zocl_read_prop(path, buf, sizeof(buf));
        size_t tuple = (size_t)(ac + sc) * 4;
        for (size_t at = 0; n > 0 && at + tuple <= (size_t)n && z->nreserved < PA_ZOCL_MAX_RESERVED;
             at += tuple) {
            uint64_t base = pa_zocl_cells(buf + at, ac), size = pa_zocl_cells(buf + at + ac * 4, sc);
            if (size > 0 && base <= UINT64_MAX - size) {
                z->reserved[z->nreserved][0] = base;
                z->reserved[z->nreserved][1] = base + size;
                z->nreserved++;
            }
        }
    }
    closedir(d);
}

static bool pa_zocl_in_pl_ddr(const pa_zocl *z, uint64_t paddr, uint64_t len)
{
    for (size_t i = 0; i < z->nreserved; i++) {
        if (paddr >= z->reserved[i][0] && len <= z->reserved[i][1] - paddr &&
            paddr < z->reserved[i][1]) {
            return true;
        }
    }
    return false;
}

/* A new BO of at least size bytes, mapped. request (bytes) is for messages.
 * *cma_short tells whether CREATE_BO itself ran out of memory. */
static int pa_zocl_bo_new(pa_zocl *z, size_t size, bool cacheable, size_t request,
                          pa_zocl_bo **out, bool *cma_short, pa_err *err)
{
    struct pa_zocl_create_bo c = {.size = size, .flags = z->bank};
    struct pa_zocl_info_bo info;
    struct pa_zocl_map_bo map;
    int rc;
    *cma_short = false;
    if (cacheable) {
        c.flags |= PA_ZOCL_CACHEABLE;
    }
    pa_zocl_bo *bo = calloc(1, sizeof(*bo));
    if (bo == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    rc = pa_zocl_ioctl(z->fd, PA_ZOCL_IOC_CREATE_BO, &c);
    *cma_short = rc == -ENOMEM;
    if (rc == -ENOMEM) {
        rc = pa_seterr(err, ENOMEM,
                       "cannot allocate %zu bytes with zocl: DRM_IOCTL_ZOCL_CREATE_BO of a "
                       "%zu-byte %s buffer object on %s failed: %s; %s",
                       request, size, cacheable ? "cacheable" : "non-cacheable", z->node,
                       strerror(-rc), PA_ZOCL_HINT_CMA);
        goto free_bo;
    }
    if (rc < 0) {
        rc = pa_seterr(err, -rc,
                       "cannot allocate %zu bytes with zocl: DRM_IOCTL_ZOCL_CREATE_BO of a "
                       "%zu-byte buffer object in memory bank %u on %s failed: %s%s",
                       request, size, (unsigned)(z->bank & 0xFFFF), z->node, strerror(-rc),
                       rc == -EINVAL ? "; check the bank option against the loaded xclbin's "
                                       "memory topology (bank=0 is PYNQ's PS DDR)"
                                     : "");
        goto free_bo;
    }
    bo->handle = c.handle;
    bo->cacheable = cacheable;
    memset(&info, 0, sizeof(info));
    info.handle = c.handle;
    rc = pa_zocl_ioctl(z->fd, PA_ZOCL_IOC_INFO_BO, &info);
    if (rc < 0) {
        rc = pa_seterr(err, -rc, "DRM_IOCTL_ZOCL_INFO_BO on %s failed: %s", z->node,
                       strerror(-rc));
        goto close_bo;
    }
    /* A driver with the pre-2019 ioctl numbering answers this number as another
     * ioctl and leaves the size at zero: refuse rather than guess. */
    if (info.size < size || info.size > SIZE_MAX) {
        rc = pa_seterr(err, ENOTSUP,
                       "DRM_IOCTL_ZOCL_INFO_BO reported %llu bytes for a %zu-byte buffer object: "
                       "this zocl driver (version %d.%d.%d) predates XRT 2019.1, whose ioctl "
                       "numbers pynq_alloc uses; update XRT/zocl or use another backend",
                       (unsigned long long)info.size, size, z->version[0], z->version[1],
                       z->version[2]);
        goto close_bo;
    }
    bo->pc.len = (size_t)info.size;
    bo->pc.device = info.paddr;
    bo->pl_ddr = pa_zocl_in_pl_ddr(z, info.paddr, info.size);
    memset(&map, 0, sizeof(map));
    map.handle = c.handle;
    rc = pa_zocl_ioctl(z->fd, PA_ZOCL_IOC_MAP_BO, &map);
    if (rc < 0) {
        rc = pa_seterr(err, -rc, "DRM_IOCTL_ZOCL_MAP_BO on %s failed: %s", z->node,
                       strerror(-rc));
        goto close_bo;
    }
    if (map.offset == 0 || map.offset % z->page != 0 || map.offset > (uint64_t)INT64_MAX) {
        rc = pa_seterr(err, EIO, "DRM_IOCTL_ZOCL_MAP_BO on %s returned the unusable offset 0x%llx",
                       z->node, (unsigned long long)map.offset);
        goto close_bo;
    }
    void *p = mmap(NULL, bo->pc.len, PROT_READ | PROT_WRITE, MAP_SHARED, z->fd, (off_t)map.offset);
    if (p == MAP_FAILED) {
        int e = errno;
        rc = pa_seterr(err, e, "mmap of a %zu-byte zocl buffer object on %s failed: %s", bo->pc.len,
                       z->node, strerror(e));
        goto close_bo;
    }
    bo->pc.cpu = p;
    z->bo_bytes += bo->pc.len;
    *out = bo;
    return 0;

close_bo:
    pa_zocl_gem_close(z, c.handle);
free_bo:
    free(bo);
    return rc;
}

/* unmaps and closes every empty pool BO; true if there was one */
static bool pa_zocl_drop_empty(pa_zocl *z)
{
    bool a = pa_pool_drop_empty(&z->pools[0], NULL), b = pa_pool_drop_empty(&z->pools[1], NULL);
    return a || b;
}

/* SYNC_BO over bytes [off, off+len) of bo: the kernel cleans (to device) or
 * invalidates (from device) the CPU cache lines covering them */
static int pa_zocl_sync_range(pa_zocl *z, const pa_zocl_bo *bo, size_t off, size_t len,
                              uint32_t dir, pa_err *err)
{
    struct pa_zocl_sync_bo s = {.handle = bo->handle, .dir = dir, .offset = off, .size = len};
    int rc = pa_zocl_ioctl(z->fd, PA_ZOCL_IOC_SYNC_BO, &s);
    if (rc < 0) {
        return pa_seterr(err, -rc,
                         "DRM_IOCTL_ZOCL_SYNC_BO (%s, bytes %zu..%zu of buffer object %u) on %s "
                         "failed: %s",
                         dir == PA_ZOCL_SYNC_TO_DEVICE ? "to device" : "from device", off,
                         off + len, (unsigned)bo->handle, z->node, strerror(-rc));
    }
    return 0;
}

/* ---- ops ------------------------------------------------------------------ */

static int pa_zocl_size_opt(const pa_option *opts, size_t nopts, const char *key, size_t dflt,
                            size_t *out, pa_err *err)
{
    uint64_t v;
    int rc = pa_opt_u64(opts, nopts, key, dflt, &v, err);
    if (rc < 0) {
        return rc;
    }
    if (v > SIZE_MAX / 4) {
        return pa_seterr(err, EINVAL, "zocl option %s=%llu is too large", key,
                         (unsigned long long)v);
    }
    *out = (size_t)v;
    return 0;
}

static int pa_zocl_open(pa_backend *be, const char *arg, const pa_option *opts, size_t nopts,
                        pa_err *err)
{
    static const char *const known[] = {"cacheable", "bank", "pool_max", "pool_chunk", NULL};
    uint64_t bank = 0;
    /* PYNQ allocates non-cacheable by default on zocl (_xrt_allocate
     * cacheable=0); open_backend(..., cacheable=True) is applied by pa.c and
     * is listed here only so the option list names it */
    const bool cacheable = false;
    size_t pool_max = 0, pool_chunk = 0;
    long page = sysconf(_SC_PAGESIZE);
    int rc = pa_opt_check(opts, nopts, known, "zocl", err);
    if (rc == 0) {
        rc = pa_opt_u64(opts, nopts, "bank", 0, &bank, err);
    }
    if (rc == 0) {
        rc = pa_zocl_size_opt(opts, nopts, "pool_max", PA_ZOCL_POOL_MAX, &pool_max, err);
    }
    if (rc == 0) {
        rc = pa_zocl_size_opt(opts, nopts, "pool_chunk", PA_ZOCL_POOL_CHUNK, &pool_chunk, err);
    }
    if (rc < 0) {
        return rc;
    }
    if (bank > 0xFFFF) {
        return pa_seterr(err, EINVAL,
                         "zocl option bank=%llu: a memory bank index is 0..65535 (the index in "
                         "the xclbin's memory topology; 0 is PYNQ's PS DDR)",
                         (unsigned long long)bank);
    }
    if (page <= 0) {
        page = 4096;
    }
    if (pool_max > 0 && (pool_chunk < pool_max || pool_chunk % (size_t)page != 0)) {
        return pa_seterr(err, EINVAL,
                         "zocl option pool_chunk=%zu must be a multiple of the %ld-byte page and "
                         "at least pool_max=%zu (pool_max=0 gives every buffer its own BO)",
                         pool_chunk, page, pool_max);
    }
    pa_zocl *z = calloc(1, sizeof(*z));
    if (z == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    z->cacheable = cacheable;
    z->bank = (uint32_t)bank;
    z->pool_max = pool_max;
    z->pool_chunk = pool_chunk;
    pa_pool_init(&z->pools[0], pa_zocl_pool_release, z);
    pa_pool_init(&z->pools[1], pa_zocl_pool_release, z);
    z->page = (size_t)page;
    pa_zocl_read_reserved(z);
    rc = pa_zocl_find(arg, &z->fd, z->node, sizeof(z->node), z->version, err);
    if (rc < 0) {
        free(z);
        return rc;
    }
    be->priv = z;
    be->coherent = !cacheable; /* non-cacheable BOs are write-combine mappings */
    be->cached_coherent = false;
    be->low_hint = "zocl's buffer objects come from the kernel's default CMA area; place it "
                   "below the limit (cma=SIZE@0-LIMIT on the kernel command line, or a "
                   "linux,cma reserved-memory node with alloc-ranges below it)";
    return 0;
}

static int pa_zocl_alloc(pa_backend *be, size_t size, size_t align, unsigned flags, pa_block *blk,
                         pa_err *err)
{
    pa_zocl *z = be->priv;
    pa_zocl_bo *bo = NULL;
    pa_tlsf_block *tb = NULL;
    size_t off = 0, got = size, dirty;
    bool cacheable = (flags & PA_CACHED) ? true : (flags & PA_UNCACHED) ? false : z->cacheable;
    bool cma_short = false;
    int rc;

    if (size <= z->pool_max && align <= z->page) {
        pa_pool *pool = &z->pools[cacheable];
        pa_pool_chunk *pc;
        if (pa_pool_alloc(pool, size, align, &pc, &off, &got, &tb) == 0) {
            bo = (pa_zocl_bo *)pc;
            goto pooled;
        }
        rc = pa_zocl_bo_new(z, z->pool_chunk, cacheable, size, &bo, &cma_short, err);
        if (cma_short && pa_zocl_drop_empty(z)) {
            rc = pa_zocl_bo_new(z, z->pool_chunk, cacheable, size, &bo, &cma_short, err);
        }
        if (rc == 0) {
            /* a fresh BO comes zeroed (and clean) from the driver */
            rc = pa_pool_adopt(pool, &bo->pc, true, size, align, &off, &got, &tb);
            if (rc == 0) {
                goto pooled;
            }
            unsigned long long at = (unsigned long long)bo->pc.device;
            pa_zocl_bo_destroy(z, bo);
            if (rc == -ENOMEM) {
                return pa_seterr(err, ENOMEM, "out of memory for a pool's allocator");
            }
            return pa_seterr(err, EIO,
                             "zocl returned a %zu-byte buffer object at 0x%llx that cannot hold "
                             "%zu bytes aligned to %zu",
                             z->pool_chunk, at, size, align);
        }
        if (!cma_short) {
            return rc;
        }
        /* no room in CMA for a pool BO; there may be for one of just this size */
    }

    rc = pa_zocl_bo_new(z, size, cacheable, size, &bo, &cma_short, err);
    if (cma_short && pa_zocl_drop_empty(z)) {
        rc = pa_zocl_bo_new(z, size, cacheable, size, &bo, &cma_short, err);
    }
    if (rc < 0) {
        return rc;
    }
    if (bo->pc.device % align != 0) {
        /* CMA aligns a BO to its size's order only up to CONFIG_CMA_ALIGNMENT:
         * allocate align bytes more and start at the first aligned byte */
        size_t bigger;
        pa_zocl_bo_destroy(z, bo);
        if (__builtin_add_overflow(size, align, &bigger)) {
            return pa_seterr(err, ENOMEM, "cannot allocate %zu bytes aligned to %zu: overflow",
                             size, align);
        }
        rc = pa_zocl_bo_new(z, bigger, cacheable, size, &bo, &cma_short, err);
        if (rc < 0) {
            return rc;
        }
        off = (size_t)((align - bo->pc.device % align) % align);
    }
    blk->cpu = bo->pc.cpu + off;
    blk->device_address = bo->pc.device + off;
    blk->size = size;
    blk->span = (bo->pc.len + z->page - 1) & ~(z->page - 1); /* the BO: whole pages */
    blk->coherent = !cacheable || bo->pl_ddr;
    blk->handle = NULL;
    blk->aux = (uint64_t)(uintptr_t)bo;
    return 0;

pooled:
    /* only ranges handed out before need zeroing, and cleaning when cached */
    dirty = pa_pool_zero_reused(&bo->pc, off, got);
    if (dirty > 0 && cacheable && !bo->pl_ddr) {
        rc = pa_zocl_sync_range(z, bo, off, dirty, PA_ZOCL_SYNC_TO_DEVICE, err);
        if (rc < 0) {
            pa_pool_free(&z->pools[cacheable], &bo->pc, tb);
            return rc;
        }
    }
    blk->cpu = bo->pc.cpu + off;
    blk->device_address = bo->pc.device + off;
    blk->size = got;
    blk->span = pa_tlsf_size(tb); /* with its alignment padding (pool.h) */
    blk->coherent = !cacheable || bo->pl_ddr;
    blk->handle = tb;
    blk->aux = (uint64_t)(uintptr_t)bo;
    return 0;
}

static void pa_zocl_free(pa_backend *be, pa_block *blk)
{
    pa_zocl *z = be->priv;
    pa_zocl_bo *bo = (pa_zocl_bo *)(uintptr_t)blk->aux;
    if (bo->pc.tlsf == NULL) {
        pa_zocl_bo_destroy(z, bo);
        return;
    }
    /* keeps the most recently emptied pool BO for the next small alloc */
    pa_pool_free(&z->pools[bo->cacheable], &bo->pc, blk->handle);
}

static int pa_zocl_sync(pa_backend *be, const pa_block *blk, size_t off, size_t len,
                        pa_sync_dir dir, pa_err *err)
{
    pa_zocl *z = be->priv;
    const pa_zocl_bo *bo = (const pa_zocl_bo *)(uintptr_t)blk->aux;
    if (blk->coherent) {
        return 0; /* write-combine mapping: nothing is cached */
    }
    if (dir != PA_TO_DEVICE && dir != PA_FROM_DEVICE) {
        return pa_seterr(err, EINVAL, "unknown sync direction %d", (int)dir);
    }
    /* whole cache lines; blocks start on a line and never share one */
    size_t base = (size_t)((const char *)blk->cpu - bo->pc.cpu);
    size_t lo = (base + off) & ~((size_t)PA_LINE - 1);
    size_t hi = (base + off + len + PA_LINE - 1) & ~((size_t)PA_LINE - 1);
    if (hi > base + blk->size) {
        hi = base + blk->size;
    }
    return pa_zocl_sync_range(z, bo, lo, hi - lo,
                              dir == PA_TO_DEVICE ? PA_ZOCL_SYNC_TO_DEVICE
                                                  : PA_ZOCL_SYNC_FROM_DEVICE,
                              err);
}

static void pa_zocl_info(pa_backend *be, pa_info *info)
{
    pa_zocl *z = be->priv;
    uint64_t cma_total, cma_free, pool_free = 0, largest = 0;
    pa_cma_meminfo(&cma_total, &cma_free);
    pa_pool_stats(&z->pools[0], &pool_free, &largest);
    pa_pool_stats(&z->pools[1], &pool_free, &largest);
    /* CMA is shared with the rest of the system; its free space may be fragmented */
    info->total = cma_total > z->bo_bytes ? cma_total : z->bo_bytes;
    info->free = cma_free + pool_free;
    info->largest_free = cma_free > largest ? cma_free : largest;
    info->coherent = be->coherent;
    info->line_size = PA_LINE;
}

static void pa_zocl_close(pa_backend *be)
{
    pa_zocl *z = be->priv;
    if (z == NULL) {
        return;
    }
    pa_pool_close(&z->pools[0]);
    pa_pool_close(&z->pools[1]);
    close(z->fd); /* the driver releases any BO still open on this fd */
    free(z);
    be->priv = NULL;
}

static int pa_zocl_probe(const char *arg, pa_err *why)
{
    char node[64];
    int version[3];
    int rc = pa_zocl_find(arg, NULL, node, sizeof(node), version, why);
    if (rc < 0) {
        return rc;
    }
    pa_seterr(why, 0, "usable: zocl %d.%d.%d on %s", version[0], version[1], version[2], node);
    return 0;
}

const pa_ops pa_zocl_ops = {
    .name = "zocl",
    .board = true,
    .open = pa_zocl_open,
    .alloc = pa_zocl_alloc,
    .free = pa_zocl_free,
    .sync = pa_zocl_sync,
    .info = pa_zocl_info,
    .close = pa_zocl_close,
    .probe = pa_zocl_probe,
};
