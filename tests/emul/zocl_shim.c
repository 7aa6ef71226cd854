/* LD_PRELOAD emulation of a zocl DRM render node for the zocl backend's tests.
 * open() of the node (a regular file under PYNQ_ALLOC_SYSROOT) yields an fd on
 * which ioctl() answers the DRM/zocl requests by their real numbers, with
 * memfd-backed buffer objects at made-up but consistent physical addresses, and
 * mmap() at a MAP_BO offset maps that BO's memfd. Written from the uapi
 * (linux include/uapi/drm/drm.h, XRT zynq_ioctl.h, zocl_bo.c's behaviour), not
 * from the backend, so a wrong number or layout there shows up as a failure.
 *
 * Environment (read when the library loads):
 *   ZOCL_SHIM_NODE        emulated node (default $PYNQ_ALLOC_SYSROOT/dev/dri/renderD128)
 *   ZOCL_SHIM_DRIVER      driver name DRM_IOCTL_VERSION reports (default "zocl")
 *   ZOCL_SHIM_LOG         every BO request is appended here, one line each
 *   ZOCL_SHIM_CMA         bytes of CMA (default 256 MiB); CREATE_BO fails with ENOMEM
 *                         beyond it (0: always)
 *   ZOCL_SHIM_ALIGN       largest physical alignment of a BO (default 1 MiB, the kernel's
 *                         CONFIG_CMA_ALIGNMENT=8 with 4 KiB pages)
 *   ZOCL_SHIM_OPEN_ERRNO  open() of the node fails with this errno
 *   ZOCL_SHIM_PLDDR       "BANK:BASE:SIZE": memory bank BANK is PL-DDR, a device-tree
 *                         reserved-memory region [BASE, BASE+SIZE) that zocl manages with
 *                         its range allocator: BOs there come from that range, CACHEABLE
 *                         is dropped (zocl_create_bo_ioctl: "Cache is not supported and
 *                         turned off for PL-DDR"), and SYNC_BO does nothing (coherent,
 *                         not CMA). INFO_BO still reports the flags the user asked for.
 *   ZOCL_SHIM_FAIL        "info", "map" or "mmap": that step fails; "oldinfo": INFO_BO
 *                         succeeds without filling anything in (a pre-2019 driver)
 * Test hooks (call through ctypes.CDLL(None)):
 *   int zocl_shim_live(void)       live BOs
 *   int zocl_shim_device_rw(uint64_t paddr, void *buf, size_t len, int write)
 *                                  the device's view of memory: 0, or -1 outside every BO */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include "emul_log.h"

#define EXPORT __attribute__((visibility("default")))
#define SHIM_MAXFD 4096

/* DRM_IOWR('d', nr, struct) etc., spelled out */
#define SHIM_IOC_VERSION (sizeof(void *) == 8 ? 0xC0406400UL : 0xC0246400UL)
#define SHIM_IOC_GEM_CLOSE 0x40086409UL
#define SHIM_IOC_CREATE_BO 0xC0106440UL /* DRM_COMMAND_BASE + 0 */
#define SHIM_IOC_MAP_BO 0xC0106443UL    /* + 3 */
#define SHIM_IOC_SYNC_BO 0xC0186444UL   /* + 4 */
#define SHIM_IOC_INFO_BO 0xC0186445UL   /* + 5 */

struct shim_version {
    int major, minor, patchlevel;
    size_t name_len;
    char *name;
    size_t date_len;
    char *date;
    size_t desc_len;
    char *desc;
};
struct shim_gem_close {
    uint32_t handle, pad;
};
struct shim_create_bo {
    uint64_t size;
    uint32_t handle, flags;
};
struct shim_map_bo {
    uint32_t handle, pad;
    uint64_t offset;
};
struct shim_sync_bo {
    uint32_t handle, dir;
    uint64_t offset, size;
};
struct shim_info_bo {
    uint32_t handle, flags;
    uint64_t size, paddr;
};

typedef struct shim_bo {
    int live;
    int owner; /* the fd it was created on: DRM handles are per open file */
    uint32_t handle, flags;
    int memfd;
    uint64_t size, paddr, offset;
    int pl_ddr; /* in the PL-DDR bank: coherent, no cache maintenance */
} shim_bo;

static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;
static char shim_node[4096];
static char shim_driver[64] = "zocl";
static char shim_logpath[4096];
static char shim_fail[32];
static int shim_open_errno;
static uint64_t shim_cma = 256u << 20, shim_align = 1u << 20, shim_used;
static uint64_t shim_next_phys = 0x70000000u, shim_next_off;
static size_t shim_page = 4096;
static long shim_plddr_bank = -1;
static uint64_t shim_plddr_base, shim_plddr_size, shim_plddr_next;
static unsigned char shim_fds[SHIM_MAXFD];
static pid_t shim_fd_pid[SHIM_MAXFD]; /* who opened it: a forked copy's close releases nothing */
static shim_bo *shim_bos;
static size_t shim_nbos;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_open_2)(const char *, int);
static int (*real_open64_2)(const char *, int);
static int (*real_openat_2)(int, const char *, int);
static int (*real_openat64_2)(int, const char *, int);
static int (*real_close)(int);
static int (*real_ioctl)(int, unsigned long, ...);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static void *(*real_mmap64)(void *, size_t, int, int, int, off64_t);

static void shim_resolve(void)
{
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real_open_2 = dlsym(RTLD_NEXT, "__open_2");
    real_open64_2 = dlsym(RTLD_NEXT, "__open64_2");
    real_openat_2 = dlsym(RTLD_NEXT, "__openat_2");
    real_openat64_2 = dlsym(RTLD_NEXT, "__openat64_2");
    real_close = dlsym(RTLD_NEXT, "close");
    real_ioctl = dlsym(RTLD_NEXT, "ioctl");
    real_mmap = dlsym(RTLD_NEXT, "mmap");
    real_mmap64 = dlsym(RTLD_NEXT, "mmap64");
}

static pthread_once_t shim_once = PTHREAD_ONCE_INIT;

static uint64_t shim_env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? strtoull(v, NULL, 0) : dflt;
}

static void shim_init(void)
{
    shim_resolve();
    const char *node = getenv("ZOCL_SHIM_NODE"), *root = getenv("PYNQ_ALLOC_SYSROOT");
    if (node != NULL && node[0] != '\0') {
        snprintf(shim_node, sizeof(shim_node), "%s", node);
    } else {
        snprintf(shim_node, sizeof(shim_node), "%s/dev/dri/renderD128", root ? root : "");
    }
    const char *drv = getenv("ZOCL_SHIM_DRIVER");
    if (drv != NULL) {
        snprintf(shim_driver, sizeof(shim_driver), "%s", drv);
    }
    const char *log = getenv("ZOCL_SHIM_LOG");
    if (log != NULL) {
        snprintf(shim_logpath, sizeof(shim_logpath), "%s", log);
    }
    const char *fail = getenv("ZOCL_SHIM_FAIL");
    if (fail != NULL) {
        snprintf(shim_fail, sizeof(shim_fail), "%s", fail);
    }
    shim_open_errno = (int)shim_env_u64("ZOCL_SHIM_OPEN_ERRNO", 0);
    shim_cma = shim_env_u64("ZOCL_SHIM_CMA", shim_cma);
    shim_align = shim_env_u64("ZOCL_SHIM_ALIGN", shim_align);
    const char *pl = getenv("ZOCL_SHIM_PLDDR");
    unsigned long long b, base, size;
    if (pl != NULL && sscanf(pl, "%llu:%lli:%lli", &b, &base, &size) == 3) {
        shim_plddr_bank = (long)b;
        shim_plddr_base = shim_plddr_next = base;
        shim_plddr_size = size;
    }
    long pg = sysconf(_SC_PAGESIZE);
    shim_page = pg > 0 ? (size_t)pg : 4096;
    /* DRM_FILE_PAGE_OFFSET_START on 64-bit: 0x100000 pages */
    shim_next_off = (uint64_t)0x100000 * shim_page;
}

static void shim_ready(void)
{
    pthread_once(&shim_once, shim_init);
}

__attribute__((constructor)) static void shim_ctor(void)
{
    shim_ready();
}

static void shim_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emul_vlog(shim_logpath, real_open, real_close, fmt, ap);
    va_end(ap);
}

static int shim_is_node(const char *path)
{
    return path != NULL && shim_node[0] != '\0' && strcmp(path, shim_node) == 0;
}

/* after the real open: register the fd, or fail it as configured */
static int shim_opened(const char *path, int fd)
{
    if (fd < 0 || !shim_is_node(path)) {
        return fd;
    }
    if (shim_open_errno != 0) {
        real_close(fd);
        errno = shim_open_errno;
        return -1;
    }
    if (fd < SHIM_MAXFD) {
        pthread_mutex_lock(&shim_lock);
        shim_fds[fd] = 1;
        shim_fd_pid[fd] = getpid();
        pthread_mutex_unlock(&shim_lock);
        shim_log("OPEN fd=%d path=%s", fd, path);
    }
    return fd;
}

static int shim_is_fd(int fd)
{
    return fd >= 0 && fd < SHIM_MAXFD && shim_fds[fd];
}

static mode_t shim_mode(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

EXPORT int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = shim_mode(flags, ap);
    va_end(ap);
    shim_ready();
    return shim_opened(path, real_open(path, flags, mode));
}

EXPORT int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = shim_mode(flags, ap);
    va_end(ap);
    shim_ready();
    return shim_opened(path, real_open64(path, flags, mode));
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = shim_mode(flags, ap);
    va_end(ap);
    shim_ready();
    return shim_opened(path, real_openat(dirfd, path, flags, mode));
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = shim_mode(flags, ap);
    va_end(ap);
    shim_ready();
    return shim_opened(path, real_openat64(dirfd, path, flags, mode));
}

EXPORT int __open_2(const char *path, int flags)
{
    shim_ready();
    return shim_opened(path, real_open_2(path, flags));
}

EXPORT int __open64_2(const char *path, int flags)
{
    shim_ready();
    return shim_opened(path, real_open64_2(path, flags));
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
    shim_ready();
    return shim_opened(path, real_openat_2(dirfd, path, flags));
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
    shim_ready();
    return shim_opened(path, real_openat64_2(dirfd, path, flags));
}

/* ---- buffer objects (caller holds shim_lock) ---- */

static shim_bo *shim_find(int owner, uint32_t handle)
{
    for (size_t i = 0; i < shim_nbos; i++) {
        if (shim_bos[i].live && shim_bos[i].owner == owner && shim_bos[i].handle == handle) {
            return &shim_bos[i];
        }
    }
    return NULL;
}

static void shim_release(shim_bo *bo, const char *why)
{
    real_close(bo->memfd);
    if (!bo->pl_ddr) {
        shim_used -= bo->size; /* CMA accounting */
    }
    bo->live = 0;
    shim_log("%s handle=%u", why, bo->handle);
}

static int shim_create(int fd, struct shim_create_bo *c)
{
    if (c->size == 0) {
        return EINVAL;
    }
    /* zocl_create_cma_mem: one page becomes two, anything else whole pages */
    uint64_t size = c->size <= shim_page ? 2 * shim_page
                                         : (c->size + shim_page - 1) / shim_page * shim_page;
    if (shim_used + size > shim_cma || size > SIZE_MAX) {
        shim_log("CREATE size=%llu flags=0x%x ENOMEM", (unsigned long long)c->size, c->flags);
        return ENOMEM;
    }
    uint32_t handle = 1;
    while (shim_find(fd, handle) != NULL) {
        handle++;
    }
    int memfd = memfd_create("zocl-bo", MFD_CLOEXEC);
    if (memfd < 0) {
        return errno;
    }
    if (ftruncate(memfd, (off_t)size) < 0) {
        int e = errno;
        real_close(memfd);
        return e;
    }
    uint64_t align = shim_page;
    while (align < size && align < shim_align) {
        align *= 2;
    }
    uint64_t paddr;
    int pl_ddr = shim_plddr_bank >= 0 && (long)(c->flags & 0xFFFF) == shim_plddr_bank;
    if (pl_ddr) {
        /* drm_mm_insert_node_in_range(..., PAGE_SIZE alignment, [base, base+size)) */
        if (shim_plddr_next + size > shim_plddr_base + shim_plddr_size) {
            real_close(memfd);
            shim_log("CREATE size=%llu flags=0x%x ENOMEM", (unsigned long long)c->size,
                     c->flags);
            return ENOMEM;
        }
        paddr = shim_plddr_next;
        shim_plddr_next += size;
    } else {
        paddr = (shim_next_phys + align - 1) / align * align;
        shim_next_phys = paddr + size;
    }
    shim_bo *slot = NULL;
    for (size_t i = 0; i < shim_nbos; i++) {
        if (!shim_bos[i].live) {
            slot = &shim_bos[i];
            break;
        }
    }
    if (slot == NULL) {
        shim_bo *grown = realloc(shim_bos, (shim_nbos + 1) * sizeof(*grown));
        if (grown == NULL) {
            real_close(memfd);
            return ENOMEM;
        }
        shim_bos = grown;
        slot = &shim_bos[shim_nbos++];
    }
    *slot = (shim_bo){.live = 1, .owner = fd, .handle = handle, .flags = c->flags,
                      .memfd = memfd, .size = size, .paddr = paddr, .offset = shim_next_off,
                      .pl_ddr = pl_ddr};
    shim_next_off += size;
    if (!pl_ddr) {
        shim_used += size;
    }
    c->handle = handle;
    shim_log("CREATE handle=%u size=%llu flags=0x%x bo_size=%llu paddr=0x%llx%s", handle,
             (unsigned long long)c->size, c->flags, (unsigned long long)size,
             (unsigned long long)paddr, pl_ddr ? " plddr=1" : "");
    return 0;
}

static void shim_copy_field(size_t *len, char *buf, const char *value)
{
    size_t n = strlen(value);
    size_t copy = n < *len ? n : *len;
    *len = n;
    if (copy > 0 && buf != NULL) {
        memcpy(buf, value, copy);
    }
}

static int shim_do_ioctl(int fd, unsigned long req, void *arg)
{
    shim_bo *bo;
    if (req == SHIM_IOC_VERSION) {
        struct shim_version *v = arg;
        v->major = 2;
        v->minor = 14;
        v->patchlevel = 354;
        shim_copy_field(&v->name_len, v->name, shim_driver);
        shim_copy_field(&v->date_len, v->date, "20221010");
        shim_copy_field(&v->desc_len, v->desc, "Zynq BO manager");
        shim_log("VERSION fd=%d", fd);
        return 0;
    }
    if (req == SHIM_IOC_CREATE_BO) {
        return shim_create(fd, arg);
    }
    if (req == SHIM_IOC_INFO_BO) {
        struct shim_info_bo *i = arg;
        if ((bo = shim_find(fd, i->handle)) == NULL) {
            return EINVAL;
        }
        shim_log("INFO handle=%u", i->handle);
        if (strcmp(shim_fail, "info") == 0) {
            return EIO;
        }
        if (strcmp(shim_fail, "oldinfo") != 0) {
            i->flags = bo->flags;
            i->size = bo->size;
            i->paddr = bo->paddr;
        }
        return 0;
    }
    if (req == SHIM_IOC_MAP_BO) {
        struct shim_map_bo *m = arg;
        if ((bo = shim_find(fd, m->handle)) == NULL) {
            return EINVAL;
        }
        shim_log("MAP handle=%u", m->handle);
        if (strcmp(shim_fail, "map") == 0) {
            return EPERM;
        }
        m->offset = bo->offset;
        return 0;
    }
    if (req == SHIM_IOC_SYNC_BO) {
        struct shim_sync_bo *s = arg;
        if ((bo = shim_find(fd, s->handle)) == NULL || s->dir > 1 || s->offset > bo->size ||
            s->size > bo->size || s->offset + s->size > bo->size) {
            shim_log("SYNC handle=%u dir=%u offset=%llu size=%llu EINVAL", s->handle, s->dir,
                     (unsigned long long)s->offset, (unsigned long long)s->size);
            return EINVAL;
        }
        /* zocl_sync_bo_ioctl: a coherent BO outside CMA returns at once */
        shim_log("SYNC handle=%u dir=%u offset=%llu size=%llu%s", s->handle, s->dir,
                 (unsigned long long)s->offset, (unsigned long long)s->size,
                 bo->pl_ddr ? " noop=1" : "");
        return 0;
    }
    if (req == SHIM_IOC_GEM_CLOSE) {
        struct shim_gem_close *c = arg;
        if ((bo = shim_find(fd, c->handle)) == NULL) {
            shim_log("CLOSE handle=%u EINVAL", c->handle);
            return EINVAL;
        }
        shim_release(bo, "CLOSE");
        return 0;
    }
    shim_log("UNKNOWN fd=%d req=0x%lx", fd, req);
    return EINVAL;
}

EXPORT int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    shim_ready();
    if (!shim_is_fd(fd)) {
        return real_ioctl(fd, req, arg);
    }
    pthread_mutex_lock(&shim_lock);
    int e = shim_do_ioctl(fd, req, arg);
    pthread_mutex_unlock(&shim_lock);
    if (e != 0) {
        errno = e;
        return -1;
    }
    return 0;
}

EXPORT int close(int fd)
{
    shim_ready();
    if (shim_is_fd(fd) && shim_fd_pid[fd] != getpid()) {
        /* a copy inherited through fork(): the DRM file stays open in the
         * opener (the kernel counts references), its handles with it */
        shim_fds[fd] = 0;
        shim_log("CLOSECOPY fd=%d", fd);
    } else if (shim_is_fd(fd)) {
        /* closing the DRM file releases every handle still open on it */
        pthread_mutex_lock(&shim_lock);
        for (size_t i = 0; i < shim_nbos; i++) {
            if (shim_bos[i].live && shim_bos[i].owner == fd) {
                shim_release(&shim_bos[i], "RELEASE");
            }
        }
        shim_fds[fd] = 0;
        pthread_mutex_unlock(&shim_lock);
        shim_log("CLOSEFD fd=%d", fd);
    }
    return real_close(fd);
}

/* mmap on the node at a MAP_BO offset: the BO's memfd (drm_gem_mmap's checks) */
static void *shim_mmap(void *addr, size_t len, int prot, int flags, int fd, uint64_t off)
{
    shim_bo *bo = NULL;
    int memfd = -1;
    pthread_mutex_lock(&shim_lock);
    for (size_t i = 0; i < shim_nbos; i++) {
        if (shim_bos[i].live && shim_bos[i].owner == fd && shim_bos[i].offset == off) {
            bo = &shim_bos[i];
            break;
        }
    }
    int bad = bo == NULL || len > bo->size || !(flags & MAP_SHARED);
    if (!bad) {
        memfd = bo->memfd;
        shim_log("MMAP handle=%u len=%zu", bo->handle, len);
    } else {
        shim_log("MMAP offset=0x%llx len=%zu EINVAL", (unsigned long long)off, len);
    }
    pthread_mutex_unlock(&shim_lock);
    if (bad) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    if (strcmp(shim_fail, "mmap") == 0) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    return real_mmap(addr, len, prot, flags, memfd, 0);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    shim_ready();
    if (!shim_is_fd(fd)) {
        return real_mmap(addr, len, prot, flags, fd, off);
    }
    return shim_mmap(addr, len, prot, flags, fd, (uint64_t)off);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
    shim_ready();
    if (!shim_is_fd(fd)) {
        return real_mmap64(addr, len, prot, flags, fd, off);
    }
    return shim_mmap(addr, len, prot, flags, fd, (uint64_t)off);
}

EXPORT int zocl_shim_live(void)
{
    int n = 0;
    pthread_mutex_lock(&shim_lock);
    for (size_t i = 0; i < shim_nbos; i++) {
        n += shim_bos[i].live;
    }
    pthread_mutex_unlock(&shim_lock);
    return n;
}

EXPORT int zocl_shim_device_rw(uint64_t paddr, void *buf, size_t len, int write)
{
    int rc = -1;
    pthread_mutex_lock(&shim_lock);
    for (size_t i = 0; i < shim_nbos; i++) {
        shim_bo *bo = &shim_bos[i];
        if (bo->live && paddr >= bo->paddr && paddr - bo->paddr <= bo->size &&
            len <= bo->size - (paddr - bo->paddr)) {
            off_t at = (off_t)(paddr - bo->paddr);
            ssize_t n = write ? pwrite(bo->memfd, buf, len, at) : pread(bo->memfd, buf, len, at);
            rc = n == (ssize_t)len ? 0 : -1;
            break;
        }
    }
    pthread_mutex_unlock(&shim_lock);
    return rc;
}
