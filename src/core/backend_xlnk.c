/* xlnk backend: CMA memory on PYNQ <= 2.6 images through libcma, the user-space
 * library of the xlnk driver, loaded at run time (no build-time dependency).
 * Small requests are carved out of pooled CMA chunks, large ones get their own:
 * each cma_alloc is an ioctl plus mmap, takes whole pages and one of the 4096
 * slots of the driver's system-wide buffer table. */
#define _GNU_SOURCE
#include "cache.h"
#include "pa.h"
#include "pool.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef ENOTSUP
#define ENOTSUP EOPNOTSUPP
#endif

#define PA_XLNK_LIBRARY "/usr/lib/libcma.so"
#define PA_XLNK_ENV "PYNQ_ALLOC_LIBCMA"
#define PA_XLNK_NODE "/dev/xlnk"
#define PA_XLNK_POOL_CHUNK ((size_t)1 << 20)
#define PA_XLNK_POOL_MAX ((size_t)64 << 10)
#define PA_XLNK_ADVICE                                                                             \
    "xlnk is for PYNQ <= 2.6 images; on newer images use zocl (or udmabuf, dmaheap)"

#if defined(__x86_64__)
#define PA_XLNK_EM EM_X86_64
#elif defined(__i386__)
#define PA_XLNK_EM EM_386
#elif defined(__aarch64__)
#define PA_XLNK_EM EM_AARCH64
#elif defined(__arm__)
#define PA_XLNK_EM EM_ARM
#endif

/* libcma's ABI, as PYNQ's pynq/xlnk.py declares it */
typedef void *(*pa_xlnk_alloc_fn)(uint32_t len, uint32_t cacheable);
typedef unsigned long (*pa_xlnk_phys_fn)(void *buf);
typedef void (*pa_xlnk_free_fn)(void *buf);
typedef uint32_t (*pa_xlnk_pages_fn)(void);
typedef void (*pa_xlnk_sync_fn)(void *buf, unsigned int phys_addr, int size);

typedef enum pa_xlnk_sync_mode {
    PA_XLNK_SYNC_CPU,    /* our own DC CVAC/CIVAC (AArch64) or CLWB/CLFLUSHOPT (x86) */
    PA_XLNK_SYNC_LIBCMA, /* cma_flush_cache / cma_invalidate_cache (the xlnk driver) */
    PA_XLNK_SYNC_NONE,   /* no way to sync: every block is non-cacheable */
} pa_xlnk_sync_mode;

/* One cma_alloc: a pool chunk (pc.tlsf != NULL) or one block of its own.
 * pc.cpu is what cma_alloc returned (the only pointer libcma knows), pc.device
 * cma_get_phy_addr(cpu), pc.len the bytes asked of cma_alloc. */
typedef struct pa_xlnk_cma {
    pa_pool_chunk pc;
    bool cached; /* cma_alloc(len, 1) */
} pa_xlnk_cma;

typedef struct pa_xlnk {
    void *dl;
    pa_xlnk_alloc_fn cma_alloc;
    pa_xlnk_phys_fn cma_get_phy_addr;
    pa_xlnk_free_fn cma_free;
    pa_xlnk_pages_fn cma_pages_available; /* optional */
    pa_xlnk_sync_fn cma_flush_cache;      /* optional unless sync=libcma */
    pa_xlnk_sync_fn cma_invalidate_cache; /* optional unless sync=libcma */
    pa_xlnk_sync_mode sync;
    size_t page;
    size_t pool_chunk, pool_max; /* pool_max 0: no pooling */
    pa_pool pools[2];            /* by cached */
    pa_pool own;                 /* blocks with a cma_alloc of their own (a plain list) */
    uint64_t held;               /* bytes asked of cma_alloc and not yet freed */
    char library[PATH_MAX];
} pa_xlnk;

/* libcma keeps process-wide tables without locking; backends opened twice
 * share it, so every call that touches those tables goes through this lock. */
static pthread_mutex_t pa_xlnk_cma_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *pa_xlnk_library(const pa_option *opts, size_t nopts)
{
    const char *lib = opts != NULL ? pa_opt_get(opts, nopts, "library") : NULL;
    if (lib == NULL || lib[0] == '\0') {
        lib = getenv(PA_XLNK_ENV);
    }
    return lib != NULL && lib[0] != '\0' ? lib : PA_XLNK_LIBRARY;
}

#ifdef PA_XLNK_EM
static const char *pa_xlnk_machine(unsigned m)
{
    switch (m) {
    case EM_X86_64:
        return "x86-64";
    case EM_386:
        return "x86";
    case EM_AARCH64:
        return "AArch64";
    case EM_ARM:
        return "32-bit ARM";
    default:
        return "another CPU";
    }
}
#endif

/* The library file is there, readable and an ELF for this process: what
 * dlopen would otherwise report less clearly (or after running its code). */
static int pa_xlnk_check_library(const char *lib, pa_err *err)
{
    unsigned char h[EI_NIDENT + 4];
    int fd = open(lib, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR) {
            return pa_seterr(err, ENOENT,
                             "libcma not found at %s (%s): " PA_XLNK_ADVICE
                             "; if libcma is elsewhere, pass library=PATH or set " PA_XLNK_ENV,
                             lib, strerror(e));
        }
        if (e == EACCES || e == EPERM) {
            return pa_seterr(err, e,
                             "cannot read libcma at %s: %s; run as root or fix its "
                             "permissions",
                             lib, strerror(e));
        }
        return pa_seterr(err, e, "open(%s) failed: %s", lib, strerror(e));
    }
    ssize_t n;
    do {
        n = read(fd, h, sizeof(h));
    } while (n < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    if (n < 0) {
        return pa_seterr(err, e, "read(%s) failed: %s", lib, strerror(e));
    }
    if ((size_t)n < sizeof(h) || memcmp(h, ELFMAG, SELFMAG) != 0) {
        return pa_seterr(err, ENOEXEC,
                         "%s is not an ELF shared library; point library= (or " PA_XLNK_ENV
                         ") at libcma.so",
                         lib);
    }
    int bits = h[EI_CLASS] == ELFCLASS64 ? 64 : h[EI_CLASS] == ELFCLASS32 ? 32 : 0;
    if (bits != (int)(sizeof(void *) * 8)) {
        return pa_seterr(err, ENOEXEC,
                         "%s is a %d-bit library but this process is %d-bit; install the libcma "
                         "built for this CPU",
                         lib, bits, (int)(sizeof(void *) * 8));
    }
#ifdef PA_XLNK_EM
    unsigned m =
        h[EI_DATA] == ELFDATA2MSB ? (unsigned)h[18] << 8 | h[19] : (unsigned)h[19] << 8 | h[18];
    if (m != PA_XLNK_EM) {
        return pa_seterr(err, ENOEXEC,
                         "%s is built for %s (ELF machine %u) but this process runs on %s; "
                         "install the libcma built for this CPU",
                         lib, pa_xlnk_machine(m), m, pa_xlnk_machine(PA_XLNK_EM));
    }
#endif
    return 0;
}

/* /dev/xlnk must exist before libcma is loaded: some builds of libcma open it
 * from a constructor and exit() the whole process when they can't. */
static int pa_xlnk_check_node(pa_err *err)
{
    char path[PATH_MAX];
    if (pa_path(path, sizeof(path), PA_XLNK_NODE) < 0) {
        return pa_seterr(err, ENAMETOOLONG,
                         "the path of " PA_XLNK_NODE " is too long; check "
                         "PYNQ_ALLOC_SYSROOT");
    }
    if (access(path, F_OK) != 0) {
        int e = errno;
        return pa_seterr(err, e == ENOTDIR ? ENOENT : e,
                         "%s: %s; this kernel has no xlnk driver (PYNQ 2.7 and later images "
                         "don't), and libcma is not loaded without it because some builds exit "
                         "the process when they can't open it; " PA_XLNK_ADVICE,
                         path, strerror(e));
    }
    if (faccessat(AT_FDCWD, path, R_OK | W_OK, AT_EACCESS) != 0) {
        int e = errno;
        return pa_seterr(err, e,
                         "cannot open %s read-write: %s; run as root (PYNQ images run as root) "
                         "or give your user access to the node with a udev rule",
                         path, strerror(e));
    }
    return 0;
}

static const char *pa_xlnk_sync_name(pa_xlnk_sync_mode m)
{
    switch (m) {
    case PA_XLNK_SYNC_CPU:
        return "own cache maintenance";
    case PA_XLNK_SYNC_LIBCMA:
        return "libcma cma_flush_cache/cma_invalidate_cache";
    default:
        return "none (every buffer non-cacheable)";
    }
}

/* CMA bytes libcma says are free; false when it can't tell */
static bool pa_xlnk_free_cma(pa_xlnk *x, uint64_t *bytes)
{
    if (x->cma_pages_available == NULL) {
        return false;
    }
    pthread_mutex_lock(&pa_xlnk_cma_lock);
    uint32_t pages = x->cma_pages_available();
    pthread_mutex_unlock(&pa_xlnk_cma_lock);
    /* PYNQ's libcma returns (uint32_t)-1 when /proc/vmstat can't be read */
    if (pages == UINT32_MAX) {
        return false;
    }
    *bytes = (uint64_t)pages * x->page;
    return true;
}

static int pa_xlnk_nomem(pa_xlnk *x, size_t request, size_t len, bool cached, pa_err *err)
{
    char avail[96];
    uint64_t bytes;
    if (pa_xlnk_free_cma(x, &bytes)) {
        snprintf(avail, sizeof(avail), "%llu bytes of CMA are free", (unsigned long long)bytes);
    } else {
        snprintf(avail, sizeof(avail), "the free CMA is unknown (libcma can't tell)");
    }
    return pa_seterr(err, ENOMEM,
                     "cannot allocate %zu bytes: libcma cma_alloc(%zu, cacheable=%d) failed and "
                     "%s; free buffers (del or freebuffer()), or increase CMA with the cma= "
                     "kernel parameter (e.g. cma=512M in bootargs)",
                     request, len, cached ? 1 : 0, avail);
}

/* one cma_alloc of len bytes, with its physical address; request is for messages */
static int pa_xlnk_cma_new(pa_xlnk *x, size_t len, bool cached, size_t request, pa_xlnk_cma **out,
                           pa_err *err)
{
    if (len > UINT32_MAX) {
        return pa_seterr(err, ENOMEM,
                         "cannot allocate %zu bytes: libcma takes 32-bit lengths (at most "
                         "4 GiB - 1 per buffer)",
                         request);
    }
    pa_xlnk_cma *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&pa_xlnk_cma_lock);
    void *p = x->cma_alloc((uint32_t)len, cached ? 1u : 0u);
    unsigned long phys = p != NULL ? x->cma_get_phy_addr(p) : 0;
    if (p != NULL && phys == 0) {
        x->cma_free(p);
    }
    pthread_mutex_unlock(&pa_xlnk_cma_lock);
    int rc;
    if (p == NULL) {
        rc = pa_xlnk_nomem(x, request, len, cached, err);
        goto free_c;
    }
    if (phys == 0) {
        rc = pa_seterr(err, EIO,
                       "libcma cma_get_phy_addr gave no physical address for a new %zu-byte "
                       "buffer; the libcma at %s does not match the xlnk driver",
                       len, x->library);
        goto free_c;
    }
    c->pc.cpu = p;
    c->pc.device = (uint64_t)phys;
    c->pc.len = len;
    c->cached = cached;
    x->held += len;
    *out = c;
    return 0;

free_c:
    free(c);
    return rc;
}

static void pa_xlnk_cma_release(pa_xlnk *x, pa_xlnk_cma *c)
{
    pthread_mutex_lock(&pa_xlnk_cma_lock);
    x->cma_free(c->pc.cpu);
    /* libcma unmapped it; arrays may still point here: see pa_retire */
    pa_retire_hole(c->pc.cpu, c->pc.len);
    pthread_mutex_unlock(&pa_xlnk_cma_lock);
    x->held -= c->pc.len;
    free(c);
}

static void pa_xlnk_pool_release(void *ctx, pa_pool_chunk *c)
{
    pa_xlnk_cma_release(ctx, (pa_xlnk_cma *)c);
}

/* [off, off+len) of c: clean (TO_DEVICE) or clean+invalidate (FROM_DEVICE) */
static int pa_xlnk_sync_cma(pa_xlnk *x, const pa_xlnk_cma *c, size_t off, size_t len,
                            pa_sync_dir dir, pa_err *err)
{
    if (dir != PA_TO_DEVICE && dir != PA_FROM_DEVICE) {
        return pa_seterr(err, EINVAL, "unknown sync direction %d", (int)dir);
    }
    if (len == 0) {
        return 0;
    }
    if (x->sync == PA_XLNK_SYNC_CPU) {
        int rc = dir == PA_TO_DEVICE ? pa_cache_clean(c->pc.cpu + off, len)
                                     : pa_cache_clean_invalidate(c->pc.cpu + off, len);
        if (rc < 0) {
            return pa_seterr(err, -rc, "cache maintenance (%s) failed: %s", pa_cache_method(),
                             strerror(-rc));
        }
        return 0;
    }
    if (x->sync != PA_XLNK_SYNC_LIBCMA) {
        return pa_seterr(err, ENOTSUP, "internal error: a cacheable xlnk block with no sync");
    }
    uint64_t phys = c->pc.device;
    /* The xlnk driver's cache-control ioctl maintains the L1 from the START of
     * the CMA buffer that holds phys_addr, for size bytes, and the L2 over
     * [phys_addr, phys_addr + size): a block at offset off in a pooled chunk
     * is covered only by a call from the chunk's start through off + len.
     * libcma takes the physical address as unsigned int and the size as int. */
    if (phys > UINT_MAX || c->pc.len - 1 > UINT_MAX - phys) {
        return pa_seterr(err, ERANGE,
                         "physical range 0x%llx + %zu does not fit libcma's 32-bit phys_addr "
                         "argument; use sync=cpu (AArch64) instead of sync=libcma",
                         (unsigned long long)phys, c->pc.len);
    }
    if (off + len > (size_t)INT_MAX) {
        return pa_seterr(err, ERANGE,
                         "a %zu-byte sync at offset %zu of a CMA buffer exceeds libcma's int "
                         "size argument; allocate buffers under 2 GiB",
                         len, off);
    }
    pa_xlnk_sync_fn fn = dir == PA_TO_DEVICE ? x->cma_flush_cache : x->cma_invalidate_cache;
    fn(c->pc.cpu, (unsigned int)phys, (int)(off + len));
    return 0;
}

/* a pool chunk of this kind with room for size, else a new one */
static int pa_xlnk_pool_alloc(pa_xlnk *x, size_t size, size_t align, bool cached, pa_xlnk_cma **out,
                              size_t *off, pa_tlsf_block **tb, pa_err *err)
{
    size_t got;
    pa_pool_chunk *pc;
    pa_xlnk_cma *c = NULL;
    int rc = pa_pool_alloc(&x->pools[cached], size, align, &pc, off, &got, tb);
    if (rc == 0) {
        *out = (pa_xlnk_cma *)pc;
        return 0;
    }
    if (rc != -ENOMEM) {
        return pa_seterr(err, -rc, "cannot allocate %zu bytes aligned to %zu: %s", size, align,
                         strerror(-rc));
    }
    rc = pa_xlnk_cma_new(x, x->pool_chunk, cached, size, &c, err);
    if (rc < 0) {
        return rc;
    }
    /* tlsf aligns offsets; they are physical alignments only from a page boundary */
    if (c->pc.device % x->page != 0) {
        rc = pa_seterr(err, EIO,
                       "libcma returned physical address 0x%llx, not page aligned; the libcma "
                       "at %s does not match the xlnk driver (pool_max=0 avoids pooling)",
                       (unsigned long long)c->pc.device, x->library);
        goto release;
    }
    /* libcma makes no promise about the contents: every block is zeroed */
    rc = pa_pool_adopt(&x->pools[cached], &c->pc, false, size, align, off, &got, tb);
    if (rc < 0) {
        rc = rc == -ENOMEM
                 ? pa_seterr(err, ENOMEM, "out of memory creating the allocator of a CMA chunk")
                 : pa_seterr(err, EIO,
                             "internal error: a fresh %zu-byte CMA chunk refused %zu bytes",
                             c->pc.len, size);
        goto release;
    }
    *out = c;
    return 0;

release:
    pa_xlnk_cma_release(x, c);
    return rc;
}

/* a cma_alloc of its own, padded so that the device address is aligned */
static int pa_xlnk_own_alloc(pa_xlnk *x, size_t size, size_t align, bool cached, pa_xlnk_cma **out,
                             size_t *off, pa_err *err)
{
    /* CMA buffers start on a page: only larger alignments need padding */
    size_t pad = align > x->page ? align - x->page : 0;
    for (;;) {
        size_t len;
        pa_xlnk_cma *c = NULL;
        if (__builtin_add_overflow(size, pad, &len)) {
            return pa_seterr(err, ENOMEM,
                             "cannot allocate %zu bytes aligned to %zu: size "
                             "overflows",
                             size, align);
        }
        int rc = pa_xlnk_cma_new(x, len, cached, size, &c, err);
        if (rc < 0) {
            return rc;
        }
        size_t o = (size_t)(-c->pc.device & (uint64_t)(align - 1));
        if (o <= pad) {
            pa_pool_link(&x->own, &c->pc);
            *out = c;
            *off = o;
            return 0;
        }
        /* not page aligned after all: pad by a whole alignment, which always fits */
        pa_xlnk_cma_release(x, c);
        pad = align - 1;
    }
}

/* Zero Device/strongly-ordered memory: glibc's memset may use DC ZVA or
 * unaligned stores, which fault there; aligned word stores do not. Blocks
 * start on a PA_LINE boundary and are a multiple of PA_LINE long. */
static void pa_xlnk_zero_device(void *p, size_t len)
{
    volatile uint32_t *w = p;
    for (size_t i = 0; i < len / sizeof(*w); i++) {
        w[i] = 0;
    }
}

static int pa_xlnk_alloc(pa_backend *be, size_t size, size_t align, unsigned flags, pa_block *blk,
                         pa_err *err)
{
    pa_xlnk *x = be->priv;
    bool cached = x->sync != PA_XLNK_SYNC_NONE;
    pa_xlnk_cma *c = NULL;
    pa_tlsf_block *tb = NULL;
    size_t off = 0;
    int rc;

    if (flags & PA_UNCACHED) {
        /* cma_alloc(len, 0): the xlnk driver maps it pgprot_noncached (Device
         * memory on arm64, strongly-ordered on arm32), not write-combine */
        cached = false;
    } else if ((flags & PA_CACHED) && !cached) {
        return pa_seterr(err, ENOTSUP,
                         "cacheable buffers can't be synced here: the libcma at %s has no "
                         "cma_flush_cache/cma_invalidate_cache and this CPU can't maintain its "
                         "cache from user space; use cacheable=False (the default here)",
                         x->library);
    }
    if (size <= x->pool_max && align <= x->page) {
        rc = pa_xlnk_pool_alloc(x, size, align, cached, &c, &off, &tb, err);
        if (rc == -ENOMEM) {
            /* CMA may still hold size bytes where a whole chunk no longer fits */
            tb = NULL;
            rc = pa_xlnk_own_alloc(x, size, align, cached, &c, &off, err);
        }
    } else {
        rc = pa_xlnk_own_alloc(x, size, align, cached, &c, &off, err);
    }
    if (rc < 0) {
        return rc;
    }
    /* libcma makes no promise about the contents; a cacheable block must also
     * leave no dirty lines that could later overwrite what the device wrote */
    if (cached) {
        memset(c->pc.cpu + off, 0, size);
    } else {
        pa_xlnk_zero_device(c->pc.cpu + off, size);
    }
    if (cached) {
        rc = pa_xlnk_sync_cma(x, c, off, size, PA_TO_DEVICE, err);
        if (rc < 0) {
            if (tb != NULL) {
                pa_pool_free(&x->pools[cached], &c->pc, tb);
            } else {
                pa_pool_unlink(&x->own, &c->pc);
                pa_xlnk_cma_release(x, c);
            }
            return rc;
        }
    }
    blk->cpu = c->pc.cpu + off;
    blk->device_address = c->pc.device + off;
    blk->size = size;
    /* pooled: with its alignment padding (pool.h); its own: whole pages */
    blk->span = tb != NULL ? pa_tlsf_size(tb) : (c->pc.len + x->page - 1) & ~(x->page - 1);
    blk->coherent = !cached;
    blk->handle = c;
    blk->aux = (uint64_t)(uintptr_t)tb;
    return 0;
}

static void pa_xlnk_free(pa_backend *be, pa_block *blk)
{
    pa_xlnk *x = be->priv;
    pa_xlnk_cma *c = blk->handle;
    pa_tlsf_block *tb = (pa_tlsf_block *)(uintptr_t)blk->aux;
    if (tb == NULL) {
        pa_pool_unlink(&x->own, &c->pc);
        pa_xlnk_cma_release(x, c);
        return;
    }
    /* keeps this chunk for the next small request; gives back any other empty one */
    pa_pool_free(&x->pools[c->cached], &c->pc, tb);
}

static int pa_xlnk_sync(pa_backend *be, const pa_block *blk, size_t off, size_t len,
                        pa_sync_dir dir, pa_err *err)
{
    pa_xlnk *x = be->priv;
    const pa_xlnk_cma *c = blk->handle;
    size_t base = (size_t)((char *)blk->cpu - c->pc.cpu);
    if (x->sync == PA_XLNK_SYNC_LIBCMA) {
        /* whole lines, never past the block (its size is a multiple of PA_LINE) */
        size_t end = (off + len + PA_LINE - 1) & ~((size_t)PA_LINE - 1);
        off &= ~((size_t)PA_LINE - 1);
        len = end - off;
    }
    return pa_xlnk_sync_cma(x, c, base + off, len, dir, err);
}

static void pa_xlnk_info(pa_backend *be, pa_info *info)
{
    pa_xlnk *x = be->priv;
    uint64_t avail = 0, largest = 0;
    if (!pa_xlnk_free_cma(x, &avail)) {
        avail = 0;
    }
    uint64_t pooled = 0; /* already counted as held */
    pa_pool_stats(&x->pools[0], &pooled, &largest);
    pa_pool_stats(&x->pools[1], &pooled, &largest);
    /* free CMA may be fragmented: its size is an upper bound on one buffer */
    if (avail > largest) {
        largest = avail;
    }
    info->total = x->held + avail;
    info->free = info->total > be->used ? info->total - be->used : 0;
    info->largest_free = largest;
    info->line_size = pa_cache_line_size();
}

static void pa_xlnk_close(pa_backend *be)
{
    pa_xlnk *x = be->priv;
    if (x == NULL) {
        return;
    }
    pa_pool_close(&x->pools[0]);
    pa_pool_close(&x->pools[1]);
    pa_pool_close(&x->own);
    dlclose(x->dl);
    free(x);
    be->priv = NULL;
}

static int pa_xlnk_parse_sync(const char *v, pa_xlnk_sync_mode *mode, bool *forced, pa_err *err)
{
    *forced = v != NULL && strcmp(v, "auto") != 0;
    if (v == NULL || strcmp(v, "auto") == 0) {
        *mode = pa_cache_user_maintenance() ? PA_XLNK_SYNC_CPU : PA_XLNK_SYNC_LIBCMA;
    } else if (strcmp(v, "cpu") == 0) {
        if (!pa_cache_user_maintenance()) {
            return pa_seterr(err, ENOTSUP,
                             "sync=cpu: this CPU can't clean or invalidate its data cache from "
                             "user space (32-bit ARM); use sync=libcma (the default here)");
        }
        *mode = PA_XLNK_SYNC_CPU;
    } else if (strcmp(v, "libcma") == 0) {
        *mode = PA_XLNK_SYNC_LIBCMA;
    } else {
        return pa_seterr(err, EINVAL, "xlnk option sync='%s': use 'auto', 'cpu' or 'libcma'", v);
    }
    return 0;
}

static int pa_xlnk_parse_sizes(pa_xlnk *x, const pa_option *opts, size_t nopts, pa_err *err)
{
    uint64_t chunk = 0, max = 0;
    int rc = pa_opt_u64(opts, nopts, "pool_chunk", PA_XLNK_POOL_CHUNK, &chunk, err);
    if (rc == 0) {
        rc = pa_opt_u64(opts, nopts, "pool_max", PA_XLNK_POOL_MAX, &max, err);
    }
    if (rc < 0) {
        return rc;
    }
    if (max != 0 && (chunk == 0 || chunk % x->page != 0 || chunk > UINT32_MAX)) {
        return pa_seterr(err, EINVAL,
                         "xlnk option pool_chunk=%llu must be a multiple of the %zu-byte page "
                         "below 4 GiB",
                         (unsigned long long)chunk, x->page);
    }
    if (max > chunk) {
        return pa_seterr(err, EINVAL,
                         "xlnk option pool_max=%llu is larger than pool_chunk=%llu; pool_max=0 "
                         "turns pooling off",
                         (unsigned long long)max, (unsigned long long)chunk);
    }
    x->pool_chunk = (size_t)chunk;
    x->pool_max = (size_t)max;
    return 0;
}

/* dlsym that tells a missing symbol from one that is NULL */
static void *pa_xlnk_sym(void *dl, const char *name, bool required, const char *lib, pa_err *err,
                         int *rc)
{
    dlerror();
    void *p = dlsym(dl, name);
    if (p == NULL && required && *rc == 0) {
        const char *why = dlerror();
        *rc = pa_seterr(err, ENOSYS,
                        "the library at %s has no %s (%s); it is not PYNQ's libcma: point "
                        "library= (or " PA_XLNK_ENV ") at /usr/lib/libcma.so of a PYNQ <= 2.6 "
                        "image",
                        lib, name, why != NULL ? why : "symbol is NULL");
    }
    return p;
}

static int pa_xlnk_open(pa_backend *be, const char *arg, const pa_option *opts, size_t nopts,
                        pa_err *err)
{
    static const char *const known[] = {"library", "sync", "pool_chunk", "pool_max", NULL};
    pa_xlnk_sync_mode mode = PA_XLNK_SYNC_CPU;
    bool forced = false;
    int rc = pa_opt_check(opts, nopts, known, "xlnk", err);
    if (rc < 0) {
        return rc;
    }
    if (arg != NULL && arg[0] != '\0') {
        return pa_seterr(err, EINVAL,
                         "the xlnk backend takes no argument (got 'xlnk:%s'); choose libcma with "
                         "the library option or " PA_XLNK_ENV,
                         arg);
    }
    rc = pa_xlnk_parse_sync(pa_opt_get(opts, nopts, "sync"), &mode, &forced, err);
    if (rc < 0) {
        return rc;
    }
    pa_xlnk *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    long page = sysconf(_SC_PAGESIZE);
    x->page = page > 0 ? (size_t)page : 4096;
    x->sync = mode;
    pa_pool_init(&x->pools[0], pa_xlnk_pool_release, x);
    pa_pool_init(&x->pools[1], pa_xlnk_pool_release, x);
    pa_pool_init(&x->own, pa_xlnk_pool_release, x);
    rc = pa_xlnk_parse_sizes(x, opts, nopts, err);
    if (rc < 0) {
        goto free_x;
    }
    const char *lib = pa_xlnk_library(opts, nopts);
    if (strlen(lib) >= sizeof(x->library)) {
        rc = pa_seterr(err, ENAMETOOLONG, "library path %.64s... is too long", lib);
        goto free_x;
    }
    memcpy(x->library, lib, strlen(lib) + 1);
    rc = pa_xlnk_check_library(lib, err);
    if (rc == 0) {
        rc = pa_xlnk_check_node(err);
    }
    if (rc < 0) {
        goto free_x;
    }
    x->dl = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (x->dl == NULL) {
        const char *why = dlerror();
        rc = pa_seterr(err, ENOEXEC,
                       "dlopen(%s) failed: %s; libcma of PYNQ <= 2.6 needs the libraries it was "
                       "built with (e.g. libsds_lib.so on 32-bit images)",
                       lib, why != NULL ? why : "unknown error");
        goto free_x;
    }
    x->cma_alloc = (pa_xlnk_alloc_fn)pa_xlnk_sym(x->dl, "cma_alloc", true, lib, err, &rc);
    x->cma_get_phy_addr =
        (pa_xlnk_phys_fn)pa_xlnk_sym(x->dl, "cma_get_phy_addr", true, lib, err, &rc);
    x->cma_free = (pa_xlnk_free_fn)pa_xlnk_sym(x->dl, "cma_free", true, lib, err, &rc);
    x->cma_pages_available =
        (pa_xlnk_pages_fn)pa_xlnk_sym(x->dl, "cma_pages_available", false, lib, err, &rc);
    bool need_sync = mode == PA_XLNK_SYNC_LIBCMA && forced;
    x->cma_flush_cache =
        (pa_xlnk_sync_fn)pa_xlnk_sym(x->dl, "cma_flush_cache", need_sync, lib, err, &rc);
    x->cma_invalidate_cache =
        (pa_xlnk_sync_fn)pa_xlnk_sym(x->dl, "cma_invalidate_cache", need_sync, lib, err, &rc);
    if (rc < 0) {
        goto close_dl;
    }
#if defined(RTLD_NODELETE) && defined(RTLD_NOLOAD)
    /* A usable libcma stays loaded for the life of the process, as in PYNQ: its
     * constructors open /dev/xlnk and may reset the driver's buffers, which
     * must not happen again on every open. The reference from this second
     * dlopen is dropped at once; only the flag sticks. */
    void *keep = dlopen(lib, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD | RTLD_NODELETE);
    if (keep != NULL) {
        dlclose(keep);
    }
#endif
    if (x->sync == PA_XLNK_SYNC_LIBCMA &&
        (x->cma_flush_cache == NULL || x->cma_invalidate_cache == NULL)) {
        /* 32-bit ARM with a libcma that can't sync: hand out non-cacheable memory only */
        x->sync = PA_XLNK_SYNC_NONE;
    }
    be->priv = x;
    /* cacheable=None stays cached here (unlike PYNQ): xlnk's non-cacheable
     * mapping is Device memory, where numpy's vector loops and memset can
     * fault on unaligned or DC ZVA accesses; only where nothing can sync a
     * cached block is None non-cacheable (README, "Backends") */
    be->coherent = x->sync == PA_XLNK_SYNC_NONE;
    be->cached_coherent = false;
    be->low_hint = "libcma's buffers come from the kernel's default CMA area; place it below "
                   "the limit (cma=SIZE@0-LIMIT on the kernel command line, or a linux,cma "
                   "reserved-memory node with alloc-ranges below it)";
    return 0;

close_dl:
    dlclose(x->dl);
free_x:
    free(x);
    return rc;
}

static int pa_xlnk_probe(const char *arg, pa_err *why)
{
    if (arg != NULL && arg[0] != '\0') {
        return pa_seterr(why, EINVAL, "the xlnk backend takes no argument (got 'xlnk:%s')", arg);
    }
    /* no dlopen: loading libcma runs its constructors, which open /dev/xlnk and
     * may reset the driver's buffers */
    const char *lib = pa_xlnk_library(NULL, 0);
    int rc = pa_xlnk_check_library(lib, why);
    if (rc == 0) {
        rc = pa_xlnk_check_node(why);
    }
    if (rc < 0) {
        return rc;
    }
    pa_xlnk_sync_mode mode = PA_XLNK_SYNC_CPU;
    bool forced = false;
    pa_xlnk_parse_sync(NULL, &mode, &forced, NULL);
    if (mode == PA_XLNK_SYNC_CPU) {
        pa_seterr(why, 0,
                  "usable: libcma at %s with " PA_XLNK_NODE "; cacheable buffers synced "
                  "by %s (%s)",
                  lib, pa_xlnk_sync_name(mode), pa_cache_method());
    } else {
        pa_seterr(why, 0,
                  "usable: libcma at %s with " PA_XLNK_NODE "; cacheable buffers synced "
                  "by %s",
                  lib, pa_xlnk_sync_name(mode));
    }
    return 0;
}

const pa_ops pa_xlnk_ops = {
    .name = "xlnk",
    .board = true,
    .open = pa_xlnk_open,
    .alloc = pa_xlnk_alloc,
    .free = pa_xlnk_free,
    .sync = pa_xlnk_sync,
    .info = pa_xlnk_info,
    .close = pa_xlnk_close,
    .probe = pa_xlnk_probe,
};
