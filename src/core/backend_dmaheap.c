/* dmaheap backend: physically contiguous dma-bufs from a DMA-BUF heap
 * (/dev/dma_heap/<name>, mainline Linux >= 5.6, CMA or reserved-memory pools).
 * The heap uapi reports no physical address, so it is read from
 * /proc/self/pagemap (root or CAP_SYS_ADMIN) and contiguity is verified.
 *
 * Heap choice (spec "dmaheap"): default_cma_region, reserved, linux,cma,
 * default-pool, then any other heap in name order, except "system*" heaps
 * (page-by-page, never contiguous: system, system-uncached, system_cc_shared,
 * vendor,system...) and "*uncached*" heaps (write-combine mappings, kept for
 * cacheable=False and 32-bit ARM); an "*uncached*" heap is the main heap only
 * when nothing else is there. "dmaheap:NAME" picks a heap by name.
 *
 * Pooling: a request of at most pool_max bytes (64 KiB) with at most page
 * alignment is carved (TLSF) out of a pooled pool_chunk-sized dma-buf (1 MiB),
 * so small buffers don't cost a dma-buf, an fd, a mapping and a CMA
 * allocation each; larger requests get a dma-buf of their own. One empty
 * chunk per heap is kept for reuse, others are released when they empty.
 *
 * Cache maintenance: each sync is one DMA_BUF_IOCTL_SYNC bracket,
 * START|dir ... END|dir (dir WRITE for flush, READ for invalidate), with the
 * user-space clean (flush) or clean+invalidate (invalidate) over exactly the
 * range inside it. The bracket is what the dma-buf protocol asks for; the CMA
 * heap does CPU maintenance only for attached devices, and our dma-bufs are
 * never attached (the FPGA only gets an address), so the range-exact
 * user-space maintenance is what makes the data right. Where user space can't
 * do that (32-bit ARM) buffers come from a write-combine heap and are
 * coherent, or the backend refuses to open. */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include "cache.h"
#include "pa.h"
#include "pagemap.h"
#include "pool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* uapi structs, from include/uapi/linux/dma-heap.h and dma-buf.h; defined
 * here so the backend builds against old kernel headers too */
typedef struct pa_dmaheap_alloc_data {
    uint64_t len;
    uint32_t fd; /* out: the dma-buf; must be 0 on input */
    uint32_t fd_flags;
    uint64_t heap_flags;
} pa_dmaheap_alloc_data;

typedef struct pa_dmaheap_sync_data {
    uint64_t flags;
} pa_dmaheap_sync_data;

_Static_assert(sizeof(pa_dmaheap_alloc_data) == 24, "dma_heap_allocation_data is 24 bytes");
_Static_assert(offsetof(pa_dmaheap_alloc_data, fd) == 8, "dma_heap_allocation_data.fd");
_Static_assert(offsetof(pa_dmaheap_alloc_data, fd_flags) == 12,
               "dma_heap_allocation_data.fd_flags");
_Static_assert(offsetof(pa_dmaheap_alloc_data, heap_flags) == 16,
               "dma_heap_allocation_data.heap_flags");
_Static_assert(sizeof(pa_dmaheap_sync_data) == 8, "dma_buf_sync is 8 bytes");

#define PA_DMAHEAP_IOCTL_ALLOC _IOWR('H', 0, pa_dmaheap_alloc_data)
#define PA_DMABUF_IOCTL_SYNC _IOW('b', 0, pa_dmaheap_sync_data)
_Static_assert(PA_DMAHEAP_IOCTL_ALLOC == 0xC0184800u, "DMA_HEAP_IOCTL_ALLOC number");
_Static_assert(PA_DMABUF_IOCTL_SYNC == 0x40086200u, "DMA_BUF_IOCTL_SYNC number");

#define PA_DMABUF_SYNC_READ 1u
#define PA_DMABUF_SYNC_WRITE 2u
#define PA_DMABUF_SYNC_START 0u
#define PA_DMABUF_SYNC_END 4u

/* cross-check against the kernel's headers where the toolchain has them */
#if defined(__has_include) && !defined(__CPPCHECK__)
#if __has_include(<linux/dma-heap.h>) && __has_include(<linux/dma-buf.h>)
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
_Static_assert(PA_DMAHEAP_IOCTL_ALLOC == DMA_HEAP_IOCTL_ALLOC, "matches the kernel header");
_Static_assert(PA_DMABUF_IOCTL_SYNC == DMA_BUF_IOCTL_SYNC, "matches the kernel header");
_Static_assert(PA_DMABUF_SYNC_END == DMA_BUF_SYNC_END && PA_DMABUF_SYNC_READ == DMA_BUF_SYNC_READ &&
                   PA_DMABUF_SYNC_WRITE == DMA_BUF_SYNC_WRITE,
               "sync flags match the kernel header");
#endif
#endif

/* Whether device DMA snoops the CPU caches by default (x86: yes; Zynq and
 * ZynqMP HP ports: no). */
#if defined(__x86_64__) || defined(__i386__)
#define PA_DMAHEAP_SNOOPED true
#else
#define PA_DMAHEAP_SNOOPED false
#endif

#define PA_DMAHEAP_DIR "/dev/dma_heap"
#define PA_DMAHEAP_CAP_SYS_ADMIN 21
#define PA_DMAHEAP_CHUNK ((uint64_t)1 << 20)
#define PA_DMAHEAP_POOL_MAX ((uint64_t)64 << 10)
#define PA_DMAHEAP_CMA_HINT                                                                        \
    "add a CMA region (cma=256M on the kernel command line, or a reusable shared-dma-pool "        \
    "reserved-memory node in the device tree) on a kernel with CONFIG_DMABUF_HEAPS_CMA"

/* the names the default CMA area's heap had (Linux >= 6.17 first), in probe order */
static const char *const pa_dmaheap_preferred[] = {"default_cma_region", "reserved", "linux,cma",
                                                   "default-pool", NULL};

/* One dma-buf, mapped, verified physically contiguous. */
typedef struct pa_dmaheap_dmabuf {
    int fd;
    char *cpu;
    size_t len;    /* mapped bytes, whole pages */
    uint64_t phys; /* physical address of cpu[0] */
} pa_dmaheap_dmabuf;

/* A pooled dma-buf that small blocks are carved out of. */
typedef struct pa_dmaheap_heap pa_dmaheap_heap;

typedef struct pa_dmaheap_chunk {
    pa_pool_chunk pc; /* over buf's mapping */
    pa_dmaheap_dmabuf buf;
    pa_dmaheap_heap *heap; /* whose pool holds it */
} pa_dmaheap_chunk;

struct pa_dmaheap_heap {
    char name[NAME_MAX + 1];
    char path[PATH_MAX];
    int fd;  /* the heap node, open for the backend's lifetime */
    bool wc; /* it maps write-combine: coherent with no maintenance */
    pa_pool pool; /* pooled dma-bufs */
};

typedef struct pa_dmaheap {
    pa_dmaheap_heap main;
    pa_dmaheap_heap extra; /* the write-combine heap, when it is not main */
    pa_dmaheap_heap *wc;   /* &main, &extra or NULL */
    pa_dmaheap_heap *dflt; /* the heap default allocations come from */
    bool coherent;         /* cacheable memory from main is coherent (snooped) */
    size_t page, chunk, pool_max;
} pa_dmaheap;

/* the heaps in /dev/dma_heap, sorted by name */
typedef struct pa_dmaheap_list {
    char **names;
    size_t n;
    char dir[PATH_MAX];
} pa_dmaheap_list;

static size_t pa_dmaheap_pagesize(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? (size_t)ps : 4096;
}

/* "system", "system-uncached", "system_cc_shared", "vendor,system": heaps made
 * of separately allocated pages */
static bool pa_dmaheap_is_system(const char *name)
{
    const char *comma = strrchr(name, ',');
    const char *base = comma != NULL ? comma + 1 : name;
    return strncmp(base, "system", 6) == 0;
}

static bool pa_dmaheap_is_uncached(const char *name)
{
    return strstr(name, "uncached") != NULL;
}

static void pa_dmaheap_list_free(pa_dmaheap_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->names[i]);
    }
    free(l->names);
    l->names = NULL;
    l->n = 0;
}

static int pa_dmaheap_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int pa_dmaheap_list_read(pa_dmaheap_list *l, pa_err *err)
{
    size_t cap = 0;
    memset(l, 0, sizeof(*l));
    if (pa_path(l->dir, sizeof(l->dir), PA_DMAHEAP_DIR) < 0) {
        return pa_seterr(err, ENAMETOOLONG,
                         "the path of " PA_DMAHEAP_DIR " is too long; check PYNQ_ALLOC_SYSROOT");
    }
    DIR *d = opendir(l->dir);
    if (d == NULL) {
        int e = errno;
        if (e == ENOENT) {
            return pa_seterr(err, ENOENT,
                             "no %s: this kernel has no DMA-BUF heaps (it needs "
                             "CONFIG_DMABUF_HEAPS and CONFIG_DMABUF_HEAPS_CMA, Linux >= 5.6; "
                             "Debian 12's kernels do not enable them); use udmabuf, zocl or a "
                             "kernel with DMA-BUF heaps",
                             l->dir);
        }
        return pa_seterr(err, e, "opendir(%s) failed: %s", l->dir, strerror(e));
    }
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') {
            continue;
        }
        if (l->n == cap) {
            size_t ncap = cap ? 2 * cap : 8;
            char **grown = realloc(l->names, ncap * sizeof(*grown));
            if (grown == NULL) {
                rc = pa_seterr(err, ENOMEM, "out of memory listing %s", l->dir);
                break;
            }
            l->names = grown;
            cap = ncap;
        }
        l->names[l->n] = strdup(de->d_name);
        if (l->names[l->n] == NULL) {
            rc = pa_seterr(err, ENOMEM, "out of memory listing %s", l->dir);
            break;
        }
        l->n++;
    }
    closedir(d);
    if (rc < 0) {
        pa_dmaheap_list_free(l);
        return rc;
    }
    if (l->n > 1) {
        qsort(l->names, l->n, sizeof(*l->names), pa_dmaheap_cmp);
    }
    return 0;
}

static bool pa_dmaheap_list_has(const pa_dmaheap_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->names[i], name) == 0) {
            return true;
        }
    }
    return false;
}

/* "a, b, c" */
static void pa_dmaheap_list_text(const pa_dmaheap_list *l, char *out, size_t outlen)
{
    out[0] = '\0';
    for (size_t i = 0; i < l->n; i++) {
        size_t used = strlen(out);
        snprintf(out + used, outlen - used, "%s%s", i ? ", " : "", l->names[i]);
    }
}

/* The heap "dmaheap" means: see the rule at the top of this file. */
static const char *pa_dmaheap_pick_main(const pa_dmaheap_list *l)
{
    for (size_t k = 0; pa_dmaheap_preferred[k] != NULL; k++) {
        if (pa_dmaheap_list_has(l, pa_dmaheap_preferred[k])) {
            return pa_dmaheap_preferred[k];
        }
    }
    for (size_t i = 0; i < l->n; i++) {
        if (!pa_dmaheap_is_system(l->names[i]) && !pa_dmaheap_is_uncached(l->names[i])) {
            return l->names[i];
        }
    }
    for (size_t i = 0; i < l->n; i++) {
        if (!pa_dmaheap_is_system(l->names[i])) {
            return l->names[i];
        }
    }
    return NULL;
}

/* the write-combine companion of a cached heap: "<main>-uncached", else the
 * first contiguous "*uncached*" heap */
static const char *pa_dmaheap_pick_wc(const pa_dmaheap_list *l, const char *main_name)
{
    char want[NAME_MAX + 16];
    snprintf(want, sizeof(want), "%s-uncached", main_name);
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->names[i], want) == 0) {
            return l->names[i];
        }
    }
    for (size_t i = 0; i < l->n; i++) {
        if (!pa_dmaheap_is_system(l->names[i]) && pa_dmaheap_is_uncached(l->names[i])) {
            return l->names[i];
        }
    }
    return NULL;
}

/* why there is no heap to use, for probe and open */
static int pa_dmaheap_no_heap(const pa_dmaheap_list *l, pa_err *err)
{
    char names[256];
    if (l->n == 0) {
        return pa_seterr(err, ENOENT, "%s has no heaps: %s", l->dir, PA_DMAHEAP_CMA_HINT);
    }
    pa_dmaheap_list_text(l, names, sizeof(names));
    return pa_seterr(err, ENOENT, "%s has only %s, which %s not physically contiguous: %s", l->dir,
                     names, l->n == 1 ? "is" : "are", PA_DMAHEAP_CMA_HINT);
}

/* "NAME" or "/dev/dma_heap/NAME" -> NAME */
static int pa_dmaheap_arg_name(const char *arg, const char **name, pa_err *err)
{
    const char *n = arg;
    size_t dl = strlen(PA_DMAHEAP_DIR "/");
    if (strncmp(arg, PA_DMAHEAP_DIR "/", dl) == 0) {
        n = arg + dl;
    }
    if (n[0] == '\0' || strchr(n, '/') != NULL || strcmp(n, ".") == 0 || strcmp(n, "..") == 0 ||
        strlen(n) > NAME_MAX) {
        return pa_seterr(err, EINVAL,
                         "'dmaheap:%s' does not name a heap; use dmaheap:NAME or "
                         "dmaheap:" PA_DMAHEAP_DIR "/NAME",
                         arg);
    }
    *name = n;
    return 0;
}

static int pa_dmaheap_refuse_system(const char *name, pa_err *err)
{
    return pa_seterr(err, EINVAL,
                     "the '%s' heap is not physically contiguous (it hands out separate pages), "
                     "so the FPGA could not use its buffers; pick a CMA heap (dmaheap:NAME with "
                     "NAME from " PA_DMAHEAP_DIR ") or %s",
                     name, PA_DMAHEAP_CMA_HINT);
}

/* The heaps a spec resolves to: *main and (when one is needed or exists) *wc. */
static int pa_dmaheap_resolve(const pa_dmaheap_list *l, const char *arg, const char *wc_opt,
                              const char **main_name, const char **wc, pa_err *err)
{
    char names[256];
    const char *want = NULL;
    *wc = NULL;
    if (arg != NULL && arg[0] != '\0') {
        int rc = pa_dmaheap_arg_name(arg, &want, err);
        if (rc < 0) {
            return rc;
        }
        if (pa_dmaheap_is_system(want)) {
            return pa_dmaheap_refuse_system(want, err);
        }
        if (!pa_dmaheap_list_has(l, want)) {
            pa_dmaheap_list_text(l, names, sizeof(names));
            return pa_seterr(err, ENOENT,
                             "no DMA-BUF heap '%s' in %s (heaps there: %s); pick one of those, "
                             "or add a reusable shared-dma-pool reserved-memory node named '%s' "
                             "to the device tree",
                             want, l->dir, names[0] ? names : "none", want);
        }
        *main_name = want;
    } else {
        *main_name = pa_dmaheap_pick_main(l);
        if (*main_name == NULL) {
            return pa_dmaheap_no_heap(l, err);
        }
    }
    if (pa_dmaheap_is_uncached(*main_name)) {
        return 0; /* main is write-combine itself */
    }
    if (wc_opt != NULL && wc_opt[0] != '\0') {
        if (pa_dmaheap_is_system(wc_opt)) {
            return pa_dmaheap_refuse_system(wc_opt, err);
        }
        if (!pa_dmaheap_list_has(l, wc_opt)) {
            pa_dmaheap_list_text(l, names, sizeof(names));
            return pa_seterr(err, ENOENT,
                             "option uncached_heap=%s: no such heap in %s (heaps "
                             "there: %s)",
                             wc_opt, l->dir, names[0] ? names : "none");
        }
        *wc = wc_opt;
    } else {
        *wc = pa_dmaheap_pick_wc(l, *main_name);
    }
    return 0;
}

/* CAP_SYS_ADMIN in the effective set: what pagemap checks, not the uid (root
 * in a container may lack it) */
static bool pa_dmaheap_privileged(void)
{
    char line[256];
    bool yes = geteuid() == 0; /* if /proc/self/status can't tell */
    FILE *f = fopen("/proc/self/status", "re");
    if (f == NULL) {
        return yes;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long long caps;
        if (sscanf(line, "CapEff: %llx", &caps) == 1) {
            yes = (caps >> PA_DMAHEAP_CAP_SYS_ADMIN) & 1;
            break;
        }
    }
    fclose(f);
    return yes;
}

/* open errors of a heap node, with what to do */
static int pa_dmaheap_open_error(const char *path, int e, pa_err *err)
{
    if (e == EACCES || e == EPERM) {
        return pa_seterr(err, e,
                         "cannot open %s: %s; run as root, or let your user open it (a udev "
                         "rule such as SUBSYSTEM==\"dma_heap\", GROUP=\"video\", MODE=\"0660\"; "
                         "reading physical addresses still needs root or CAP_SYS_ADMIN)",
                         path, strerror(e));
    }
    return pa_seterr(err, e, "cannot open %s: %s", path, strerror(e));
}

static int pa_dmaheap_heap_open(pa_dmaheap_heap *hp, const pa_dmaheap_list *l, const char *name,
                                pa_err *err)
{
    snprintf(hp->name, sizeof(hp->name), "%s", name);
    int n = snprintf(hp->path, sizeof(hp->path), "%s/%s", l->dir, name);
    if (n < 0 || (size_t)n >= sizeof(hp->path)) {
        return pa_seterr(err, ENAMETOOLONG, "the path of heap '%s' is too long", name);
    }
    hp->wc = pa_dmaheap_is_uncached(name);
    /* the heap ioctl needs no write access: Android ships its heaps 0444 */
    hp->fd = open(hp->path, O_RDONLY | O_CLOEXEC);
    if (hp->fd < 0) {
        return pa_dmaheap_open_error(hp->path, errno, err);
    }
    return 0;
}

/* A new dma-buf of len bytes (whole pages) from the heap, mapped and verified
 * contiguous. request is the caller's size, for messages. */
static int pa_dmaheap_dmabuf_new(pa_dmaheap_heap *hp, size_t len, size_t request,
                                 pa_dmaheap_dmabuf *out, pa_err *err)
{
    pa_dmaheap_alloc_data data = {
        .len = len,
        .fd = 0,
        .fd_flags = O_RDWR | O_CLOEXEC,
        .heap_flags = 0,
    };
    int rc;
    if (ioctl(hp->fd, PA_DMAHEAP_IOCTL_ALLOC, &data) < 0) {
        int e = errno;
        if (e == ENOMEM) {
            return pa_seterr(err, ENOMEM,
                             "DMA_HEAP_IOCTL_ALLOC of %zu bytes (for a %zu-byte buffer) from heap "
                             "'%s' failed: %s; its memory is used up or too fragmented for one "
                             "contiguous piece: free other buffers, allocate smaller ones, or "
                             "enlarge the area (cma=256M on the kernel command line, or a larger "
                             "reserved-memory region)",
                             len, request, hp->name, strerror(e));
        }
        if (e == ENOTTY) {
            return pa_seterr(err, ENOTTY,
                             "%s does not answer DMA_HEAP_IOCTL_ALLOC (%s): it is not a DMA-BUF "
                             "heap node",
                             hp->path, strerror(e));
        }
        return pa_seterr(err, e, "DMA_HEAP_IOCTL_ALLOC of %zu bytes from heap '%s' failed: %s", len,
                         hp->name, strerror(e));
    }
    out->fd = (int)data.fd;
    out->len = len;
    out->cpu = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, out->fd, 0);
    if (out->cpu == MAP_FAILED) {
        int e = errno;
        rc = pa_seterr(err, e, "mmap of a %zu-byte dma-buf from heap '%s' failed: %s%s", len,
                       hp->name, strerror(e),
                       e == ENOMEM ? "; check ulimit -v"
                                   : "; this heap's buffers can't be "
                                     "mapped by the CPU (a secure heap?)");
        goto close_fd;
    }
    rc = pa_pagemap_contiguous(out->cpu, len, 0, &out->phys, err);
    if (rc < 0) {
        char why[PA_ERR_LEN];
        snprintf(why, sizeof(why), "%s", err != NULL ? err->msg : "");
        if (rc == -EPERM) {
            rc = pa_seterr(err, EPERM,
                           "a dma-buf from heap '%s' has no readable physical address: "
                           "/proc/self/pagemap gives no page frame numbers without CAP_SYS_ADMIN "
                           "(DMA-BUF heaps have no other way to tell it); run as root (sudo) or "
                           "give the process CAP_SYS_ADMIN (%s)",
                           hp->name, why);
        } else {
            rc = pa_seterr(err, -rc,
                           "reading the physical address of a dma-buf from heap '%s' "
                           "failed: %s",
                           hp->name, why);
        }
        goto unmap;
    }
    if (rc > 0) {
        char why[PA_ERR_LEN];
        snprintf(why, sizeof(why), "%s", err != NULL ? err->msg : "");
        rc = pa_seterr(err, EIO,
                       "heap '%s' gave a %zu-byte dma-buf that is not physically contiguous "
                       "(%s), so the FPGA could not use it; it is not a CMA heap: pick a CMA heap "
                       "with dmaheap:NAME, or %s",
                       hp->name, len, why, PA_DMAHEAP_CMA_HINT);
        goto unmap;
    }
    return 0;

unmap:
    munmap(out->cpu, len);
close_fd:
    close(out->fd);
    out->fd = -1;
    return rc;
}

static void pa_dmaheap_dmabuf_release(pa_dmaheap_dmabuf *b)
{
    pa_retire(b->cpu, b->len); /* arrays may still point here: see pa_retire */
    close(b->fd);
    b->fd = -1;
}

static void pa_dmaheap_chunk_release(void *ctx, pa_pool_chunk *pc)
{
    (void)ctx;
    pa_dmaheap_chunk *c = (pa_dmaheap_chunk *)pc;
    pa_dmaheap_dmabuf_release(&c->buf);
    free(c);
}

/* a new pooled dma-buf of h->chunk bytes, already in hp's pool */
static int pa_dmaheap_chunk_new(pa_dmaheap *h, pa_dmaheap_heap *hp, pa_dmaheap_chunk **out,
                                pa_err *err)
{
    pa_dmaheap_chunk *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    int rc = pa_dmaheap_dmabuf_new(hp, h->chunk, h->chunk, &c->buf, err);
    if (rc < 0) {
        free(c);
        return rc;
    }
    c->pc.cpu = c->buf.cpu;
    c->pc.device = c->buf.phys;
    c->pc.len = h->chunk;
    c->heap = hp;
    /* the heap zeroes new dma-bufs */
    if (pa_pool_add(&hp->pool, &c->pc, true) < 0) {
        pa_dmaheap_chunk_release(NULL, &c->pc);
        return pa_seterr(err, ENOMEM, "out of memory creating the allocator of a %zu-byte pool",
                         h->chunk);
    }
    *out = c;
    return 0;
}

static void pa_dmaheap_heap_close(pa_dmaheap_heap *hp)
{
    pa_pool_close(&hp->pool);
    if (hp->fd >= 0) {
        close(hp->fd);
        hp->fd = -1;
    }
}

static void pa_dmaheap_close(pa_backend *be)
{
    pa_dmaheap *h = be->priv;
    if (h == NULL) {
        return;
    }
    pa_dmaheap_heap_close(&h->main);
    pa_dmaheap_heap_close(&h->extra);
    free(h);
    be->priv = NULL;
}

static int pa_dmaheap_parse_sizes(pa_dmaheap *h, const pa_option *opts, size_t nopts, pa_err *err)
{
    uint64_t chunk, pool_max;
    int rc = pa_opt_u64(opts, nopts, "pool_chunk", PA_DMAHEAP_CHUNK, &chunk, err);
    if (rc == 0) {
        /* by default at most 64 KiB, and never more than a pool holds */
        uint64_t dflt = chunk != 0 && chunk < PA_DMAHEAP_POOL_MAX ? chunk : PA_DMAHEAP_POOL_MAX;
        rc = pa_opt_u64(opts, nopts, "pool_max", dflt, &pool_max, err);
    }
    if (rc < 0) {
        return rc;
    }
    if (chunk % h->page != 0 || chunk > SIZE_MAX / 4) {
        return pa_seterr(err, EINVAL,
                         "option pool_chunk=%llu is not a multiple of the %zu-byte page (0 turns "
                         "pooling off)",
                         (unsigned long long)chunk, h->page);
    }
    if (chunk != 0 && (pool_max == 0 || pool_max > chunk)) {
        return pa_seterr(err, EINVAL,
                         "option pool_max=%llu must be between 1 and pool_chunk=%llu (the "
                         "largest request served from a pooled dma-buf)",
                         (unsigned long long)pool_max, (unsigned long long)chunk);
    }
    h->chunk = (size_t)chunk;
    h->pool_max = chunk != 0 ? (size_t)pool_max : 0;
    return 0;
}

static int pa_dmaheap_open(pa_backend *be, const char *arg, const pa_option *opts, size_t nopts,
                           pa_err *err)
{
    static const char *const known[] = {"coherent", "pool_chunk", "pool_max", "uncached_heap",
                                        NULL};
    pa_dmaheap_list l;
    const char *main_name, *wc_name;
    int rc = pa_opt_check(opts, nopts, known, "dmaheap", err);
    if (rc < 0) {
        return rc;
    }
    pa_dmaheap *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    h->main.fd = h->extra.fd = -1;
    pa_pool_init(&h->main.pool, pa_dmaheap_chunk_release, NULL);
    pa_pool_init(&h->extra.pool, pa_dmaheap_chunk_release, NULL);
    h->page = pa_dmaheap_pagesize();
    rc = pa_opt_bool(opts, nopts, "coherent", PA_DMAHEAP_SNOOPED, &h->coherent, err);
    if (rc == 0) {
        rc = pa_dmaheap_parse_sizes(h, opts, nopts, err);
    }
    if (rc < 0) {
        goto free_h;
    }
    rc = pa_dmaheap_list_read(&l, err);
    if (rc < 0) {
        goto free_h;
    }
    rc = pa_dmaheap_resolve(&l, arg, pa_opt_get(opts, nopts, "uncached_heap"), &main_name, &wc_name,
                            err);
    if (rc < 0) {
        goto free_list;
    }
    rc = pa_dmaheap_heap_open(&h->main, &l, main_name, err);
    if (rc < 0) {
        goto close_heaps;
    }
    if (h->main.wc) {
        h->wc = &h->main;
    } else if (wc_name != NULL) {
        rc = pa_dmaheap_heap_open(&h->extra, &l, wc_name, err);
        if (rc < 0) {
            goto close_heaps;
        }
        h->extra.wc = true;
        h->wc = &h->extra;
    }
    /* cacheable=None: write-combine (PYNQ's non-cacheable) where a heap maps
     * it, else the cached main heap, reported non-coherent */
    h->dflt = h->wc != NULL ? h->wc : &h->main;
    if (!h->coherent && !h->main.wc && !pa_cache_user_maintenance()) {
        /* 32-bit ARM: no user-space clean/invalidate, and the CMA heap does no
         * CPU maintenance for a dma-buf with no attached device */
        if (h->wc == NULL) {
            rc = pa_seterr(err, ENOTSUP,
                           "heap '%s' maps cacheable memory, and on this CPU (32-bit ARM) user "
                           "space cannot clean or invalidate the data cache while the kernel "
                           "does no cache maintenance for a dma-buf no driver has attached, so "
                           "its buffers could not be synced; use udmabuf, zocl or xlnk, a "
                           "write-combine heap (a vendor 'cma-uncached' heap, or "
                           "uncached_heap=NAME), or coherent=1 if the FPGA port is "
                           "cache-coherent (ACP)",
                           h->main.name);
            goto close_heaps;
        }
        h->dflt = h->wc;
    }
    be->priv = h;
    be->coherent = h->dflt->wc || h->coherent;
    be->cached_coherent = h->coherent;
    be->low_hint = "DMA-BUF heap memory comes from the heap's CMA area or reserved-memory "
                   "region; place one below the limit (a reserved-memory node with "
                   "compatible = \"shared-dma-pool\", reusable and alloc-ranges below it, "
                   "then dmaheap:NAME, or cma=SIZE@0-LIMIT on the kernel command line)";
    /* allocate a first pool now: proves the heap and pagemap work (root, real
     * frame numbers, contiguous memory) and serves the first small requests */
    if (h->chunk != 0) {
        pa_dmaheap_chunk *c;
        rc = pa_dmaheap_chunk_new(h, h->dflt, &c, err);
    } else {
        pa_dmaheap_dmabuf b;
        rc = pa_dmaheap_dmabuf_new(h->dflt, h->page, 0, &b, err);
        if (rc == 0) {
            pa_dmaheap_dmabuf_release(&b);
        }
    }
    if (rc < 0) {
        be->priv = NULL;
        goto close_heaps;
    }
    pa_dmaheap_list_free(&l);
    return 0;

close_heaps:
    pa_dmaheap_heap_close(&h->extra);
    pa_dmaheap_heap_close(&h->main);
free_list:
    pa_dmaheap_list_free(&l);
free_h:
    free(h);
    return rc;
}

/* the heap a request goes to and whether its blocks are coherent */
static int pa_dmaheap_route(pa_dmaheap *h, unsigned flags, pa_dmaheap_heap **hp, bool *coherent,
                            pa_err *err)
{
    if (flags & PA_CACHED) {
        if (h->main.wc) {
            return pa_seterr(err, ENOTSUP,
                             "heap '%s' maps write-combine memory, so it cannot give "
                             "cacheable=True buffers; pick a cached heap with dmaheap:NAME",
                             h->main.name);
        }
        if (!h->coherent && !pa_cache_user_maintenance()) {
            return pa_seterr(err, ENOTSUP,
                             "cacheable=True: on this CPU (32-bit ARM) user space cannot clean "
                             "or invalidate the data cache, and the kernel does no maintenance "
                             "for heap '%s''s dma-bufs, so cacheable buffers could not be "
                             "synced; use the default (write-combine, from heap '%s'), "
                             "coherent=1 if the FPGA port is cache-coherent, or udmabuf/zocl/xlnk",
                             h->main.name, h->dflt->name);
        }
        *hp = &h->main;
    } else if (flags & PA_UNCACHED) {
        if (h->wc != NULL) {
            *hp = h->wc;
        } else if (h->coherent) {
            *hp = &h->main; /* the device snoops the caches: cached memory is coherent */
        } else {
            return pa_seterr(err, ENOTSUP,
                             "cacheable=False: heap '%s' maps cacheable memory (DMA-BUF heaps "
                             "have no flag asking for write-combine) and there is no "
                             "write-combine heap (a vendor '*uncached*' heap; option "
                             "uncached_heap=NAME); allocate cacheable and call "
                             "flush()/invalidate(), or use udmabuf/zocl for write-combine buffers",
                             h->main.name);
        }
    } else {
        *hp = h->dflt;
    }
    *coherent = (*hp)->wc || h->coherent;
    return 0;
}

static int pa_dmaheap_alloc_pooled(pa_dmaheap *h, pa_dmaheap_heap *hp, size_t size, size_t align,
                                   pa_block *blk, pa_err *err)
{
    pa_pool_chunk *pc = NULL;
    pa_dmaheap_chunk *c = NULL;
    pa_tlsf_block *tb = NULL;
    size_t off = 0, got = 0;
    int rc = pa_pool_alloc(&hp->pool, size, align, &pc, &off, &got, &tb);
    if (rc == -ENOMEM) {
        rc = pa_dmaheap_chunk_new(h, hp, &c, err);
        if (rc < 0) {
            return rc;
        }
        rc = pa_pool_alloc(&hp->pool, size, align, &pc, &off, &got, &tb);
        if (rc < 0) {
            return pa_seterr(err, -rc, "internal error: a fresh %zu-byte pool refused %zu bytes",
                             h->chunk, size);
        }
    } else if (rc < 0) {
        return pa_seterr(err, -rc, "cannot allocate %zu bytes aligned to %zu: %s", size, align,
                         strerror(-rc));
    }
    c = (pa_dmaheap_chunk *)pc;
    pa_pool_zero_reused(pc, off, got);
    blk->cpu = pc->cpu + off;
    blk->device_address = pc->device + off;
    blk->size = got;
    blk->span = pa_tlsf_size(tb); /* with its alignment padding (pool.h) */
    blk->handle = tb;
    blk->aux = (uint64_t)(uintptr_t)c;
    return 0;
}

static int pa_dmaheap_alloc_own(pa_dmaheap *h, pa_dmaheap_heap *hp, size_t size, size_t align,
                                pa_block *blk, pa_err *err)
{
    size_t len, extra = align > h->page ? align - h->page : 0;
    /* whole pages, plus room to align the device address when the heap's
     * own alignment (CMA: the allocation's order, capped) may fall short */
    if (__builtin_add_overflow(size, h->page - 1, &len) ||
        __builtin_add_overflow(len & ~(h->page - 1), extra, &len)) {
        return pa_seterr(err, ENOMEM, "cannot allocate %zu bytes aligned to %zu: size overflows",
                         size, align);
    }
    pa_dmaheap_dmabuf *b = malloc(sizeof(*b));
    if (b == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    int rc = pa_dmaheap_dmabuf_new(hp, len, size, b, err);
    if (rc < 0) {
        free(b);
        return rc;
    }
    size_t off = (size_t)(-b->phys & (uint64_t)(align - 1));
    blk->cpu = b->cpu + off;
    blk->device_address = b->phys + off;
    blk->size = size;
    blk->span = len; /* the dma-buf: whole pages (and the room to align) */
    blk->handle = b;
    blk->aux = 0;
    return 0;
}

static int pa_dmaheap_alloc(pa_backend *be, size_t size, size_t align, unsigned flags,
                            pa_block *blk, pa_err *err)
{
    pa_dmaheap *h = be->priv;
    pa_dmaheap_heap *hp = NULL;
    bool coherent = false;
    int rc = pa_dmaheap_route(h, flags, &hp, &coherent, err);
    if (rc < 0) {
        return rc;
    }
    if (size <= h->pool_max && align <= h->page) {
        rc = pa_dmaheap_alloc_pooled(h, hp, size, align, blk, err);
    } else {
        rc = pa_dmaheap_alloc_own(h, hp, size, align, blk, err);
    }
    if (rc < 0) {
        return rc;
    }
    blk->coherent = coherent;
    if (!coherent) {
        /* the heap zeroed the memory through the kernel's cacheable mapping */
        rc = pa_cache_clean(blk->cpu, blk->size);
        if (rc < 0) {
            be->ops->free(be, blk);
            return pa_seterr(err, -rc, "cleaning the cache over a new block failed (%s): %s",
                             pa_cache_method(), strerror(-rc));
        }
    }
    return 0;
}

static void pa_dmaheap_free(pa_backend *be, pa_block *blk)
{
    (void)be;
    if (blk->aux == 0) {
        pa_dmaheap_dmabuf *b = blk->handle;
        pa_dmaheap_dmabuf_release(b);
        free(b);
        return;
    }
    pa_dmaheap_chunk *c = (pa_dmaheap_chunk *)(uintptr_t)blk->aux;
    /* keeps the most recently emptied pool for the next request; releases the
     * other empty ones */
    pa_pool_free(&c->heap->pool, &c->pc, blk->handle);
}

static int pa_dmaheap_sync_ioctl(int fd, uint64_t flags, pa_err *err)
{
    pa_dmaheap_sync_data s = {.flags = flags};
    int rc;
    do {
        rc = ioctl(fd, PA_DMABUF_IOCTL_SYNC, &s);
    } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    if (rc < 0) {
        int e = errno;
        return pa_seterr(err, e, "DMA_BUF_IOCTL_SYNC(%s|%s) failed: %s",
                         (flags & PA_DMABUF_SYNC_END) ? "END" : "START",
                         (flags & PA_DMABUF_SYNC_WRITE) ? "WRITE" : "READ", strerror(e));
    }
    return 0;
}

static int pa_dmaheap_sync(pa_backend *be, const pa_block *blk, size_t off, size_t len,
                           pa_sync_dir dir, pa_err *err)
{
    (void)be;
    uint64_t access;
    int fd, rc;
    if (blk->coherent) {
        return 0;
    }
    if (dir == PA_TO_DEVICE) {
        access = PA_DMABUF_SYNC_WRITE; /* the CPU wrote: END hands it to the device */
    } else if (dir == PA_FROM_DEVICE) {
        access = PA_DMABUF_SYNC_READ; /* the CPU will read: START takes it back */
    } else {
        return pa_seterr(err, EINVAL, "unknown sync direction %d", (int)dir);
    }
    if (!pa_cache_user_maintenance()) {
        /* open() and alloc() hand out no such block; refuse rather than lie */
        return pa_seterr(err, ENOTSUP,
                         "this CPU cannot clean or invalidate its data cache from user space "
                         "and the DMA-BUF heap does no maintenance for unattached buffers");
    }
    if (blk->aux == 0) {
        fd = ((const pa_dmaheap_dmabuf *)blk->handle)->fd;
    } else {
        fd = ((const pa_dmaheap_chunk *)(uintptr_t)blk->aux)->buf.fd;
    }
    rc = pa_dmaheap_sync_ioctl(fd, PA_DMABUF_SYNC_START | access, err);
    if (rc < 0) {
        return rc;
    }
    char *p = (char *)blk->cpu + off;
    rc = dir == PA_TO_DEVICE ? pa_cache_clean(p, len) : pa_cache_clean_invalidate(p, len);
    if (rc < 0) {
        rc = pa_seterr(err, -rc, "cache maintenance (%s) failed: %s", pa_cache_method(),
                       strerror(-rc));
    }
    /* close the bracket even when the maintenance failed */
    int rc2 = pa_dmaheap_sync_ioctl(fd, PA_DMABUF_SYNC_END | access, rc < 0 ? NULL : err);
    return rc < 0 ? rc : rc2;
}

static void pa_dmaheap_info(pa_backend *be, pa_info *info)
{
    pa_dmaheap *h = be->priv;
    uint64_t cma_total, cma_free, pooled_free = 0, largest = 0;
    pa_cma_meminfo(&cma_total, &cma_free);
    pa_pool_stats(&h->main.pool, &pooled_free, &largest);
    pa_pool_stats(&h->extra.pool, &pooled_free, &largest);
    /* free CMA as the kernel counts it (all CMA areas; an upper bound for
     * one piece) plus what our pools have left */
    info->free = cma_free + pooled_free;
    info->total = info->free + be->used;
    info->largest_free = cma_free > largest ? cma_free : largest;
    info->coherent = be->coherent;
    info->line_size = pa_cache_line_size();
    (void)cma_total;
}

static int pa_dmaheap_probe(const char *arg, pa_err *why)
{
    pa_dmaheap_list l;
    const char *main_name, *wc_name;
    char path[PATH_MAX];
    int rc = pa_dmaheap_list_read(&l, why);
    if (rc < 0) {
        return rc;
    }
    rc = pa_dmaheap_resolve(&l, arg, NULL, &main_name, &wc_name, why);
    if (rc < 0) {
        goto out;
    }
    const char *use = main_name;
    if (!PA_DMAHEAP_SNOOPED && !pa_cache_user_maintenance() && !pa_dmaheap_is_uncached(main_name)) {
        if (wc_name == NULL) {
            rc = pa_seterr(why, ENOTSUP,
                           "heap '%s' maps cacheable memory, which 32-bit ARM user space cannot "
                           "sync (no write-combine '*uncached*' heap here); use udmabuf, zocl or "
                           "xlnk, or open dmaheap with coherent=1 if the FPGA port is coherent",
                           main_name);
            goto out;
        }
        use = wc_name;
    }
    int n = snprintf(path, sizeof(path), "%s/%s", l.dir, use);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        rc = pa_seterr(why, ENAMETOOLONG, "the path of heap '%s' is too long", use);
        goto out;
    }
    if (access(path, R_OK) < 0) {
        rc = pa_dmaheap_open_error(path, errno, why);
        goto out;
    }
    if (!pa_dmaheap_privileged()) {
        rc = pa_seterr(why, EPERM,
                       "heap '%s' is there, but physical addresses need CAP_SYS_ADMIN "
                       "(/proc/self/pagemap hides page frame numbers otherwise); run as root "
                       "(sudo) or give the process CAP_SYS_ADMIN",
                       use);
        goto out;
    }
    pa_seterr(why, 0, "usable: heap '%s' (%s)%s%s%s", main_name, path,
              wc_name != NULL ? ", write-combine heap '" : "", wc_name != NULL ? wc_name : "",
              wc_name != NULL ? "'" : "");
    rc = 0;
out:
    pa_dmaheap_list_free(&l);
    return rc;
}

const pa_ops pa_dmaheap_ops = {
    .name = "dmaheap",
    .board = true,
    .open = pa_dmaheap_open,
    .alloc = pa_dmaheap_alloc,
    .free = pa_dmaheap_free,
    .sync = pa_dmaheap_sync,
    .info = pa_dmaheap_info,
    .close = pa_dmaheap_close,
    .probe = pa_dmaheap_probe,
};
