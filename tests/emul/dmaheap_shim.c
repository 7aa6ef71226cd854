/* LD_PRELOAD emulation of DMA-BUF heaps for the dmaheap backend's tests.
 *
 * Regular files under $PYNQ_ALLOC_SYSROOT/dev/dma_heap/ stand in for heap
 * nodes. This shim answers the real ioctls on them the way the kernel does
 * (include/uapi/linux/dma-heap.h, dma-buf.h, drivers/dma-buf/dma-heap.c):
 *   DMA_HEAP_IOCTL_ALLOC  on a heap fd: checks the struct like the kernel
 *                         (fd 0 on input, fd_flags within O_CLOEXEC|O_ACCMODE,
 *                         heap_flags 0, len rounded to pages) and returns a
 *                         memfd standing in for the dma-buf;
 *   DMA_BUF_IOCTL_SYNC    on such a dma-buf fd: checks the flags like the
 *                         kernel and logs them with the buffer.
 * mmap/munmap of a dma-buf fd behave like a CMA heap's (MAP_SHARED only,
 * bounded by the buffer's size, page granular).
 *
 * The memory is real and so are its physical addresses: buffers are hugetlb
 * memfds (one huge page is physically contiguous; pagemap answers truthfully
 * for root). Heaps named in DMAHEAP_SHIM_SCATTER give buffers of 4 KiB shmem
 * pages checked NOT to be physically contiguous, like the system heap.
 *
 * Environment (read at each call):
 *   PYNQ_ALLOC_SYSROOT    where dev/dma_heap/ is
 *   DMAHEAP_SHIM_LOG      log file, one event per line (key=value words)
 *   DMAHEAP_SHIM_FAIL     "ENOMEM" (or an errno number): every ALLOC fails so
 *   DMAHEAP_SHIM_SCATTER  heap names with scattered buffers, ':'-separated (heap
 *                         names may hold commas, as in linux,cma)
 * Log lines: open, alloc, alloc-fail, mmap, sync, munmap, close, release;
 * misuse a real kernel would refuse is logged as "BAD ..." and refused. */
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
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__has_include) && !defined(__CPPCHECK__)
#if __has_include(<linux/dma-heap.h>) && __has_include(<linux/dma-buf.h>)
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>

#include "emul_log.h"
#define SHIM_KERNEL_HEADERS 1
#endif
#endif
#ifndef SHIM_KERNEL_HEADERS
struct dma_heap_allocation_data {
    uint64_t len;
    uint32_t fd;
    uint32_t fd_flags;
    uint64_t heap_flags;
};
struct dma_buf_sync {
    uint64_t flags;
};
#define DMA_HEAP_IOCTL_ALLOC 0xC0184800u
#define DMA_BUF_IOCTL_SYNC 0x40086200u
#define DMA_BUF_SYNC_READ 1u
#define DMA_BUF_SYNC_WRITE 2u
#define DMA_BUF_SYNC_RW 3u
#define DMA_BUF_SYNC_END 4u
#define DMA_BUF_SYNC_VALID_FLAGS_MASK 7u
#define DMA_HEAP_VALID_FD_FLAGS (O_CLOEXEC | O_ACCMODE)
#define DMA_HEAP_VALID_HEAP_FLAGS 0u
#endif

#define EXPORT __attribute__((visibility("default")))
/* open(2) reads a mode argument only for these */
#define SHIM_NEEDS_MODE(flags) (((flags) & O_CREAT) != 0 || ((flags) & O_TMPFILE) == O_TMPFILE)
#define SHIM_PAGE 4096u
#define SHIM_MAX 4096

typedef struct shim_buf {
    int id; /* 0: free slot */
    char heap[256];
    size_t size;  /* the dma-buf's size (whole pages) */
    size_t unit;  /* mapping granule: the huge page size, or 4 KiB */
    int writable; /* fd_flags allowed PROT_WRITE */
    int fds, maps;
} shim_buf;

typedef struct shim_fd {
    int used;
    int fd;
    pid_t pid; /* the process that opened it: a forked copy's close releases nothing */
    int buf; /* index into bufs, or -1 for a heap node */
    char heap[256];
} shim_fd;

typedef struct shim_map {
    void *addr; /* NULL: free slot */
    size_t len, real_len;
    int buf;
} shim_map;

static pthread_mutex_t shim_lock = PTHREAD_MUTEX_INITIALIZER;
static shim_buf shim_bufs[SHIM_MAX];
static shim_fd shim_fds[SHIM_MAX];
static shim_map shim_maps[SHIM_MAX];
static int shim_next_id = 1;

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_ioctl)(int, unsigned long, ...);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static void *(*real_mmap64)(void *, size_t, int, int, int, off64_t);
static int (*real_munmap)(void *, size_t);

/* Resolves the next definitions; called by every wrapper, since another
 * preloaded runtime (a sanitizer) may call them before our constructor runs. */
static void shim_resolve(void)
{
    if (real_munmap != NULL) {
        return;
    }
    real_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    real_openat = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat");
    real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
    real_ioctl = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    real_mmap = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
    real_mmap64 = (void *(*)(void *, size_t, int, int, int, off64_t))dlsym(RTLD_NEXT, "mmap64");
    real_munmap = (int (*)(void *, size_t))dlsym(RTLD_NEXT, "munmap");
}

__attribute__((constructor)) static void shim_init(void)
{
    shim_resolve();
}

static void shim_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emul_vlog(getenv("DMAHEAP_SHIM_LOG"), real_open, real_close, fmt, ap);
    va_end(ap);
}

/* the heap name when path is $PYNQ_ALLOC_SYSROOT/dev/dma_heap/NAME */
static const char *shim_heap_name(const char *path)
{
    const char *root = getenv("PYNQ_ALLOC_SYSROOT");
    char dir[4096];
    if (root == NULL || path == NULL) {
        return NULL;
    }
    int n = snprintf(dir, sizeof(dir), "%s/dev/dma_heap/", root);
    if (n < 0 || (size_t)n >= sizeof(dir) || strncmp(path, dir, (size_t)n) != 0) {
        return NULL;
    }
    const char *name = path + n;
    return name[0] != '\0' && strchr(name, '/') == NULL ? name : NULL;
}

static shim_fd *shim_fd_find(int fd)
{
    for (int i = 0; i < SHIM_MAX; i++) {
        if (shim_fds[i].used && shim_fds[i].fd == fd) {
            return &shim_fds[i];
        }
    }
    return NULL;
}

static shim_fd *shim_fd_add(int fd, int buf, const char *heap)
{
    for (int i = 0; i < SHIM_MAX; i++) {
        if (!shim_fds[i].used) {
            shim_fds[i].used = 1;
            shim_fds[i].pid = getpid();
            shim_fds[i].fd = fd;
            shim_fds[i].buf = buf;
            snprintf(shim_fds[i].heap, sizeof(shim_fds[i].heap), "%s", heap);
            return &shim_fds[i];
        }
    }
    return NULL;
}

static void shim_buf_maybe_release(int b)
{
    if (shim_bufs[b].fds == 0 && shim_bufs[b].maps == 0) {
        shim_log("release buf=%d heap=%s", shim_bufs[b].id, shim_bufs[b].heap);
        shim_bufs[b].id = 0;
    }
}

static int shim_after_open(int fd, const char *path)
{
    const char *name = shim_heap_name(path);
    if (fd < 0 || name == NULL) {
        return fd;
    }
    pthread_mutex_lock(&shim_lock);
    if (shim_fd_add(fd, -1, name) != NULL) {
        shim_log("open heap=%s fd=%d", name, fd);
    }
    pthread_mutex_unlock(&shim_lock);
    return fd;
}

EXPORT int open(const char *path, int flags, ...)
{
    shim_resolve();
    mode_t mode = 0;
    if (SHIM_NEEDS_MODE(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    return shim_after_open(real_open(path, flags, mode), path);
}

EXPORT int open64(const char *path, int flags, ...)
{
    shim_resolve();
    mode_t mode = 0;
    if (SHIM_NEEDS_MODE(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    return shim_after_open(real_open(path, flags, mode), path);
}

EXPORT int __open_2(const char *path, int flags)
{
    shim_resolve();
    return shim_after_open(real_open(path, flags), path);
}

EXPORT int __open64_2(const char *path, int flags)
{
    shim_resolve();
    return shim_after_open(real_open(path, flags), path);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    shim_resolve();
    mode_t mode = 0;
    if (SHIM_NEEDS_MODE(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    return shim_after_open(real_openat(dirfd, path, flags, mode), path);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    shim_resolve();
    mode_t mode = 0;
    if (SHIM_NEEDS_MODE(flags)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    return shim_after_open(real_openat(dirfd, path, flags, mode), path);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
    shim_resolve();
    return shim_after_open(real_openat(dirfd, path, flags), path);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
    shim_resolve();
    return shim_after_open(real_openat(dirfd, path, flags), path);
}

EXPORT int close(int fd)
{
    shim_resolve();
    pthread_mutex_lock(&shim_lock);
    shim_fd *f = shim_fd_find(fd);
    if (f != NULL && f->pid != getpid()) {
        /* a copy inherited through fork(): the file stays open in the opener,
         * as the kernel's reference count keeps it */
        shim_log("closecopy fd=%d", fd);
    } else if (f != NULL) {
        if (f->buf < 0) {
            shim_log("close heap=%s fd=%d", f->heap, fd);
        } else {
            shim_log("close buf=%d fd=%d", shim_bufs[f->buf].id, fd);
            shim_bufs[f->buf].fds--;
            shim_buf_maybe_release(f->buf);
        }
        f->used = 0;
    }
    pthread_mutex_unlock(&shim_lock);
    return real_close(fd);
}

static size_t shim_huge_page(void)
{
    char line[256];
    size_t kb = 2048;
    FILE *f = fopen("/proc/meminfo", "re");
    if (f == NULL) {
        return kb * 1024;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "Hugepagesize: %zu kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb * 1024;
}

static int shim_in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p != NULL && *p != '\0';) {
        const char *end = strchr(p, ':');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0) {
            return 1;
        }
        p = end != NULL ? end + 1 : NULL;
    }
    return 0;
}

static int shim_errno_value(const char *v)
{
    if (strcmp(v, "ENOMEM") == 0) {
        return ENOMEM;
    }
    if (strcmp(v, "EINVAL") == 0) {
        return EINVAL;
    }
    int e = atoi(v);
    return e > 0 ? e : ENOMEM;
}

/* whether the pages of [p, p + len) are physically adjacent in order */
static int shim_contiguous(const char *p, size_t len)
{
    int fd = real_open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    uint64_t prev = 0;
    int yes = 1;
    if (fd < 0) {
        return -1;
    }
    for (size_t off = 0; off < len; off += SHIM_PAGE) {
        uint64_t e;
        uintptr_t va = (uintptr_t)p + off;
        if (pread(fd, &e, 8, (off_t)(va / SHIM_PAGE * 8)) != 8) {
            yes = -1;
            break;
        }
        uint64_t pfn = e & ((UINT64_C(1) << 55) - 1);
        if (off > 0 && pfn != prev + 1) {
            yes = 0;
            break;
        }
        prev = pfn;
    }
    real_close(fd);
    return yes;
}

/* A memfd of `size` bytes of 4 KiB pages that are not physically contiguous
 * (checked through pagemap; retried a few times in the unlikely event they are). */
static int shim_scattered_memfd(size_t size, unsigned mfd_flags)
{
    int keep[8], nkeep = 0, fd = -1;
    for (int attempt = 0; attempt < 8; attempt++) {
        fd = memfd_create("dmaheap-scatter", mfd_flags);
        if (fd < 0) {
            break;
        }
        if (ftruncate(fd, (off_t)size) < 0) {
            real_close(fd);
            fd = -1;
            break;
        }
        char *p = real_mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            real_close(fd);
            fd = -1;
            break;
        }
        /* fault the pages in backwards: the page allocator then rarely hands
         * them out in ascending physical order */
        for (size_t off = size; off > 0; off -= SHIM_PAGE) {
            p[off - SHIM_PAGE] = 0;
        }
        int c = shim_contiguous(p, size);
        real_munmap(p, size);
        if (c == 0 || size <= SHIM_PAGE) {
            break;
        }
        keep[nkeep++] = fd; /* hold these pages so the next try gets others */
        fd = -1;
    }
    for (int i = 0; i < nkeep; i++) {
        real_close(keep[i]);
    }
    if (fd < 0 && errno == 0) {
        errno = EIO;
    }
    return fd;
}

static int shim_alloc(shim_fd *heap, struct dma_heap_allocation_data *d)
{
    const char *fail = getenv("DMAHEAP_SHIM_FAIL");
    if (d->fd != 0) {
        shim_log("BAD alloc heap=%s fd=%u on input (the kernel wants 0)", heap->heap, d->fd);
        return -EINVAL;
    }
    if ((d->fd_flags & ~(uint32_t)DMA_HEAP_VALID_FD_FLAGS) != 0 ||
        (d->heap_flags & ~(uint64_t)DMA_HEAP_VALID_HEAP_FLAGS) != 0) {
        shim_log("BAD alloc heap=%s fd_flags=0x%x heap_flags=0x%llx", heap->heap, d->fd_flags,
                 (unsigned long long)d->heap_flags);
        return -EINVAL;
    }
    uint64_t len = (d->len + SHIM_PAGE - 1) & ~(uint64_t)(SHIM_PAGE - 1);
    if (len == 0 || len < d->len) {
        shim_log("BAD alloc heap=%s len=%llu", heap->heap, (unsigned long long)d->len);
        return -EINVAL;
    }
    if (fail != NULL && fail[0] != '\0') {
        int e = shim_errno_value(fail);
        shim_log("alloc-fail heap=%s len=%llu errno=%d", heap->heap, (unsigned long long)d->len, e);
        return -e;
    }
    int b = -1;
    for (int i = 0; i < SHIM_MAX; i++) {
        if (shim_bufs[i].id == 0) {
            b = i;
            break;
        }
    }
    if (b < 0) {
        return -ENFILE;
    }
    unsigned mfd = (d->fd_flags & O_CLOEXEC) ? MFD_CLOEXEC : 0;
    size_t unit;
    int fd;
    errno = 0;
    if (shim_in_list(getenv("DMAHEAP_SHIM_SCATTER"), heap->heap)) {
        unit = SHIM_PAGE;
        fd = shim_scattered_memfd((size_t)len, mfd);
    } else {
        unit = shim_huge_page();
        size_t size = ((size_t)len + unit - 1) / unit * unit;
        fd = memfd_create("dmaheap-buf", mfd | MFD_HUGETLB);
        if (fd >= 0 && (ftruncate(fd, (off_t)size) < 0 || fallocate(fd, 0, 0, (off_t)size) < 0)) {
            int e = errno;
            real_close(fd);
            fd = -1;
            errno = (e == ENOSPC || e == ENOMEM) ? ENOMEM : e;
        }
    }
    if (fd < 0) {
        int e = errno ? errno : EIO;
        shim_log("alloc-fail heap=%s len=%llu errno=%d", heap->heap, (unsigned long long)d->len, e);
        return -e;
    }
    shim_buf *sb = &shim_bufs[b];
    sb->id = shim_next_id++;
    snprintf(sb->heap, sizeof(sb->heap), "%s", heap->heap);
    sb->size = (size_t)len;
    sb->unit = unit;
    sb->writable = (d->fd_flags & O_ACCMODE) != O_RDONLY;
    sb->fds = 1;
    sb->maps = 0;
    shim_fd_add(fd, b, sb->heap);
    d->fd = (uint32_t)fd;
    shim_log("alloc heap=%s len=%llu fd_flags=0x%x heap_flags=0x%llx buf=%d fd=%d size=%zu "
             "unit=%zu",
             heap->heap, (unsigned long long)d->len, d->fd_flags, (unsigned long long)d->heap_flags,
             sb->id, fd, sb->size, unit);
    return 0;
}

static int shim_sync(shim_fd *f, const struct dma_buf_sync *s)
{
    shim_buf *sb = &shim_bufs[f->buf];
    if ((s->flags & ~(uint64_t)DMA_BUF_SYNC_VALID_FLAGS_MASK) != 0 ||
        (s->flags & DMA_BUF_SYNC_RW) == 0) {
        shim_log("BAD sync buf=%d fd=%d flags=%llu", sb->id, f->fd, (unsigned long long)s->flags);
        return -EINVAL;
    }
    shim_log("sync buf=%d fd=%d flags=%llu", sb->id, f->fd, (unsigned long long)s->flags);
    return 0;
}

EXPORT int ioctl(int fd, unsigned long req, ...)
{
    shim_resolve();
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    pthread_mutex_lock(&shim_lock);
    shim_fd *f = shim_fd_find(fd);
    if (f == NULL) {
        pthread_mutex_unlock(&shim_lock);
        return real_ioctl(fd, req, arg);
    }
    int rc;
    if (f->buf < 0) {
        /* dma_heap_ioctl: unknown numbers are EINVAL */
        rc = (unsigned)req == (unsigned)DMA_HEAP_IOCTL_ALLOC ? shim_alloc(f, arg) : -EINVAL;
    } else {
        rc = (unsigned)req == (unsigned)DMA_BUF_IOCTL_SYNC ? shim_sync(f, arg) : -ENOTTY;
    }
    pthread_mutex_unlock(&shim_lock);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return rc;
}

/* is64: called as mmap64 (off64_t offsets on 32-bit targets) */
/* A MAP_FIXED mapping replaces what was there, as munmap would: the kernel
 * drops those dma-buf mappings (and their references on the buffer). */
static void shim_fixed_replaced(void *addr, size_t len)
{
    uintptr_t lo = (uintptr_t)addr, hi = lo + (len + SHIM_PAGE - 1) / SHIM_PAGE * SHIM_PAGE;
    for (int i = 0; i < SHIM_MAX; i++) {
        shim_map *m = &shim_maps[i];
        uintptr_t mlo = (uintptr_t)m->addr, mhi = mlo + m->real_len;
        if (m->addr == NULL || mhi <= lo || mlo >= hi) {
            continue;
        }
        shim_buf *sb = &shim_bufs[m->buf];
        if (mlo < lo || mhi > hi) {
            shim_log("BAD mmap MAP_FIXED over part of buf=%d's mapping addr=0x%lx", sb->id,
                     (unsigned long)mlo);
            continue;
        }
        shim_log("munmap buf=%d addr=0x%lx len=%zu (replaced by MAP_FIXED)", sb->id,
                 (unsigned long)mlo, m->len);
        m->addr = NULL;
        sb->maps--;
        shim_buf_maybe_release(m->buf);
    }
}

static void *shim_mmap(void *addr, size_t len, int prot, int flags, int fd, off64_t off, int is64)
{
    shim_resolve();
    pthread_mutex_lock(&shim_lock);
    shim_fd *f = fd >= 0 ? shim_fd_find(fd) : NULL;
    if (f == NULL || f->buf < 0) {
        void *p = is64 ? real_mmap64(addr, len, prot, flags, fd, off)
                       : real_mmap(addr, len, prot, flags, fd, (off_t)off);
        if (p != MAP_FAILED && (flags & MAP_FIXED) != 0) {
            shim_fixed_replaced(p, len);
        }
        pthread_mutex_unlock(&shim_lock);
        return p;
    }
    shim_buf *sb = &shim_bufs[f->buf];
    int e = 0;
    size_t pages = (len + SHIM_PAGE - 1) / SHIM_PAGE;
    if ((flags & MAP_SHARED) == 0) {
        shim_log("BAD mmap buf=%d without MAP_SHARED (the CMA heap refuses it)", sb->id);
        e = EINVAL;
    } else if (off < 0 || (size_t)off % sb->unit != 0 || len == 0 ||
               (size_t)off / SHIM_PAGE + pages > sb->size / SHIM_PAGE) {
        shim_log("BAD mmap buf=%d off=%lld len=%zu size=%zu", sb->id, (long long)off, len,
                 sb->size);
        e = EINVAL;
    } else if ((prot & PROT_WRITE) && !sb->writable) {
        e = EACCES;
    }
    void *p = MAP_FAILED;
    size_t real_len = (len + sb->unit - 1) / sb->unit * sb->unit;
    if (e == 0) {
        p = is64 ? real_mmap64(addr, real_len, prot, flags, fd, off)
                 : real_mmap(addr, real_len, prot, flags, fd, (off_t)off);
        e = p == MAP_FAILED ? errno : 0;
    }
    if (p != MAP_FAILED) {
        int slot = -1;
        for (int i = 0; i < SHIM_MAX; i++) {
            if (shim_maps[i].addr == NULL) {
                slot = i;
                break;
            }
        }
        if (slot >= 0) {
            shim_maps[slot].addr = p;
            shim_maps[slot].len = len;
            shim_maps[slot].real_len = real_len;
            shim_maps[slot].buf = f->buf;
            sb->maps++;
        }
        shim_log("mmap buf=%d addr=0x%lx len=%zu off=%lld", sb->id, (unsigned long)(uintptr_t)p,
                 len, (long long)off);
    }
    pthread_mutex_unlock(&shim_lock);
    if (p == MAP_FAILED) {
        errno = e;
    }
    return p;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return shim_mmap(addr, len, prot, flags, fd, off, 0);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
    return shim_mmap(addr, len, prot, flags, fd, off, 1);
}

EXPORT int munmap(void *addr, size_t len)
{
    shim_resolve();
    pthread_mutex_lock(&shim_lock);
    for (int i = 0; i < SHIM_MAX; i++) {
        shim_map *m = &shim_maps[i];
        if (m->addr == NULL || m->addr != addr) {
            continue;
        }
        shim_buf *sb = &shim_bufs[m->buf];
        if ((len + SHIM_PAGE - 1) / SHIM_PAGE != (m->len + SHIM_PAGE - 1) / SHIM_PAGE) {
            shim_log("BAD munmap buf=%d addr=0x%lx len=%zu of a %zu-byte mapping", sb->id,
                     (unsigned long)(uintptr_t)addr, len, m->len);
        }
        int rc = real_munmap(addr, m->real_len);
        shim_log("munmap buf=%d addr=0x%lx len=%zu", sb->id, (unsigned long)(uintptr_t)addr, len);
        m->addr = NULL;
        sb->maps--;
        shim_buf_maybe_release(m->buf);
        pthread_mutex_unlock(&shim_lock);
        return rc;
    }
    pthread_mutex_unlock(&shim_lock);
    return real_munmap(addr, len);
}
