/* hugepage backend: physically contiguous blocks carved (TLSF) out of regions
 * of hugetlb pages whose physical addresses come from /proc/self/pagemap.
 * Works on any Linux with reserved huge pages, as root or with CAP_SYS_ADMIN. */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64 /* memfd offsets exceed 2 GiB with 1 GiB pages */
#include "bgzero.h"
#include "cache.h"
#include "pa.h"
#include "pagemap.h"
#include "regidx.h"
#include "tlsf.h"
#include "zero.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

/* Whether device DMA snoops the CPU caches by default: true on x86; on ARM
 * (Zynq, ZynqMP HP ports) it does not, so blocks need cache maintenance. */
#if defined(__x86_64__) || defined(__i386__)
#define PA_HUGE_SNOOPED true
#else
#define PA_HUGE_SNOOPED false
#endif

#define PA_HUGE_SYSFS "/sys/kernel/mm/hugepages"
#define PA_HUGE_DEFAULT_PAGE ((size_t)2 << 20)
#define PA_HUGE_CAP_SYS_ADMIN 21

/* One mapping of k huge pages, verified physically contiguous. */
typedef struct pa_huge_region {
    pa_regidx_node node; /* first: the index hands back &node */
    size_t slot;         /* index in pa_huge.regions */
    char *cpu;
    size_t len;     /* whole huge pages */
    uint64_t phys;  /* physical address of cpu[0] */
    pa_tlsf *tlsf;  /* offsets [0, len) */
    size_t live;    /* blocks handed out */
    size_t touched; /* offsets at or above this were never handed out, or were zeroed
                     * since: still zero. While zjob is active its hi says it. */
    pa_bgzero_job zjob; /* zeroing of the dirty part in the background (bgzero.h) */
} pa_huge_region;

/* A region that empties with at least this much handed out before (dirty) is
 * zeroed in the background; below it, the next allocate zeroes what it reuses
 * (at most ~0.1 ms), about what handing it over costs when the memory is
 * reused at once (a wake-up, then a wait for the chunk in flight). */
#define PA_HUGE_BG_MIN ((size_t)2 << 20)

typedef struct pa_huge {
    size_t page;     /* huge page size */
    unsigned shift;  /* log2(page) */
    char name[24];   /* page size for messages: "2M", "1G" */
    pa_huge_region **regions;
    size_t nregions, cap;
    pa_huge_region *empty; /* the one empty region kept for the next alloc, or NULL */
    pa_regidx idx;         /* regions by largest free class: O(1) alloc (regidx.h) */
    uint64_t zeroed_sync;  /* bytes allocate() zeroed itself (statistics) */
    uint64_t zeroed_gone;  /* bytes the worker zeroed in regions since unmapped */
} pa_huge;

/* a page of the memfd being searched for a contiguous run */
typedef struct pa_huge_frame {
    uint64_t phys;
    size_t index; /* page index in the memfd */
} pa_huge_frame;

static void pa_huge_fmt_size(char *out, size_t outlen, uint64_t size)
{
    static const char units[] = "KMGT";
    int u = -1;
    while (size >= 1024 && size % 1024 == 0 && u < 3) {
        size /= 1024;
        u++;
    }
    if (u < 0) {
        snprintf(out, outlen, "%lluB", (unsigned long long)size);
    } else {
        snprintf(out, outlen, "%llu%c", (unsigned long long)size, units[u]);
    }
}

/* "2M, 1G" from the directories in /sys/kernel/mm/hugepages; smallest in *min */
static void pa_huge_sizes(char *out, size_t outlen, size_t *min)
{
    char path[512];
    out[0] = '\0';
    if (min != NULL) {
        *min = 0;
    }
    if (pa_path(path, sizeof(path), PA_HUGE_SYSFS) < 0) {
        return;
    }
    DIR *d = opendir(path);
    if (d == NULL) {
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned long long kb;
        char name[24];
        if (sscanf(de->d_name, "hugepages-%llukB", &kb) != 1 || kb == 0 || kb > SIZE_MAX / 1024) {
            continue;
        }
        size_t sz = (size_t)kb * 1024;
        if (min != NULL && (*min == 0 || sz < *min)) {
            *min = sz;
        }
        pa_huge_fmt_size(name, sizeof(name), sz);
        size_t used = strlen(out);
        snprintf(out + used, outlen - used, "%s%s", used ? ", " : "", name);
    }
    closedir(d);
}

static int pa_huge_read_u64(size_t page, const char *attr, uint64_t *out, pa_err *err)
{
    char rel[128], path[512], buf[64];
    snprintf(rel, sizeof(rel), PA_HUGE_SYSFS "/hugepages-%zukB/%s", page / 1024, attr);
    if (pa_path(path, sizeof(path), rel) < 0) {
        return pa_seterr(err, ENAMETOOLONG, "the path of %s is too long; check PYNQ_ALLOC_SYSROOT",
                         rel);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return pa_seterr(err, e, "open(%s) failed: %s; is hugetlbfs support in this kernel?", path,
                         strerror(e));
    }
    ssize_t n;
    do {
        n = read(fd, buf, sizeof(buf) - 1);
    } while (n < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    if (n < 0) {
        return pa_seterr(err, e, "read(%s) failed: %s", path, strerror(e));
    }
    buf[n] = '\0';
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno != 0 || end == buf) {
        return pa_seterr(err, EINVAL, "%s holds '%s', not a number", path, buf);
    }
    *out = (uint64_t)v;
    return 0;
}

/* what to tell the user when `more` huge pages of this size are missing: the
 * count to write is computed from what is reserved now, so it never shrinks it */
static void pa_huge_hint(char *out, size_t outlen, size_t page, uint64_t more)
{
    char name[24];
    uint64_t reserved = 0;
    pa_huge_fmt_size(name, sizeof(name), page);
    if (pa_huge_read_u64(page, "nr_hugepages", &reserved, NULL) < 0) {
        reserved = 0;
    }
    unsigned long long m = (unsigned long long)(reserved + more);
    if (page == PA_HUGE_DEFAULT_PAGE) {
        snprintf(out, outlen,
                 "reserve at least %llu more huge page%s (echo %llu > /proc/sys/vm/nr_hugepages, "
                 "as root), or hugepages=%llu on the kernel command line",
                 (unsigned long long)more, more == 1 ? "" : "s", m, m);
    } else {
        snprintf(out, outlen,
                 "reserve at least %llu more %s huge page%s (echo %llu > " PA_HUGE_SYSFS
                 "/hugepages-%zukB/nr_hugepages as root; may fail once memory is fragmented), "
                 "or hugepagesz=%s hugepages=%llu on the kernel command line",
                 (unsigned long long)more, name, more == 1 ? "" : "s", m, page / 1024, name, m);
    }
}

/* huge pages of this size another mapping could get now: free minus those
 * reserved by other processes' mappings, plus what overcommit still allows */
static int pa_huge_available(size_t page, uint64_t *avail, uint64_t *nr, pa_err *err)
{
    uint64_t total, freep, resv, over = 0, surplus = 0;
    int rc = pa_huge_read_u64(page, "nr_hugepages", &total, err);
    if (rc == 0) {
        rc = pa_huge_read_u64(page, "free_hugepages", &freep, err);
    }
    if (rc == 0) {
        rc = pa_huge_read_u64(page, "resv_hugepages", &resv, err);
    }
    if (rc < 0) {
        return rc;
    }
    /* absent for gigantic pages on some kernels: no overcommit then */
    if (pa_huge_read_u64(page, "nr_overcommit_hugepages", &over, NULL) < 0 ||
        pa_huge_read_u64(page, "surplus_hugepages", &surplus, NULL) < 0) {
        over = surplus = 0;
    }
    *avail = (freep > resv ? freep - resv : 0) + (over > surplus ? over - surplus : 0);
    if (nr != NULL) {
        *nr = total + over;
    }
    return 0;
}

/* "2M", "2MiB", "1G", "2048k", "0x200000" */
static int pa_huge_parse_size(const char *v, size_t *out, pa_err *err)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 0);
    if (errno != 0 || end == v || strchr(v, '-') != NULL) {
        goto bad;
    }
    static const char units[] = "kmg";
    unsigned shift = 0;
    const char *u = *end != '\0' ? strchr(units, tolower((unsigned char)*end)) : NULL;
    if (u != NULL) {
        shift = 10 * (unsigned)(u - units + 1);
        end++;
    }
    if (shift != 0 && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0)) {
        end += strlen(end);
    }
    if (*end != '\0' || x == 0 || x > (unsigned long long)(SIZE_MAX >> shift)) {
        goto bad;
    }
    x <<= shift;
    if ((x & (x - 1)) != 0) {
        goto bad;
    }
    *out = (size_t)x;
    return 0;
bad:
    return pa_seterr(err, EINVAL,
                     "option page_size=%s is not a huge page size (a power of two such as 2M "
                     "or 1G)",
                     v);
}

static bool pa_huge_privileged(void)
{
    if (geteuid() == 0) {
        return true;
    }
    char path[512], line[256];
    bool yes = false;
    if (pa_path(path, sizeof(path), "/proc/self/status") < 0) {
        return false;
    }
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        return false;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long long caps;
        if (sscanf(line, "CapEff: %llx", &caps) == 1) {
            yes = (caps >> PA_HUGE_CAP_SYS_ADMIN) & 1;
            break;
        }
    }
    fclose(f);
    return yes;
}

/* the page size to use when none is asked for: 2M if the kernel has it,
 * else its smallest huge page size */
static int pa_huge_default_page(size_t *page, pa_err *err)
{
    char rel[128], path[512], sizes[128];
    snprintf(rel, sizeof(rel), PA_HUGE_SYSFS "/hugepages-%zukB", PA_HUGE_DEFAULT_PAGE / 1024);
    if (pa_path(path, sizeof(path), rel) == 0 && access(path, F_OK) == 0) {
        *page = PA_HUGE_DEFAULT_PAGE;
        return 0;
    }
    pa_huge_sizes(sizes, sizeof(sizes), page);
    if (*page == 0) {
        return pa_seterr(err, ENOTSUP,
                         "this kernel has no huge page support (" PA_HUGE_SYSFS " is missing); "
                         "the hugepage backend needs CONFIG_HUGETLBFS");
    }
    return 0;
}

/* the pool is usable: huge pages of this size exist and some are free */
static int pa_huge_check_pool(size_t page, pa_err *err)
{
    char name[24], hint[384], sizes[128];
    uint64_t avail, nr;
    pa_huge_fmt_size(name, sizeof(name), page);
    int rc = pa_huge_available(page, &avail, &nr, err);
    if (rc == -ENOENT) {
        pa_huge_sizes(sizes, sizeof(sizes), NULL);
        return pa_seterr(err, ENOTSUP,
                         "this kernel has no %s huge pages (sizes it has: %s); choose one with the "
                         "page_size option",
                         name, sizes[0] ? sizes : "none");
    }
    if (rc < 0) {
        return rc;
    }
    pa_huge_hint(hint, sizeof(hint), page, 1);
    if (nr == 0) {
        return pa_seterr(err, ENOMEM, "no %s huge pages are reserved; %s", name, hint);
    }
    if (avail == 0) {
        return pa_seterr(err, ENOMEM, "all %llu reserved %s huge pages are in use, none is free; %s",
                         (unsigned long long)nr, name, hint);
    }
    return 0;
}

static int pa_huge_frame_cmp(const void *a, const void *b)
{
    const pa_huge_frame *x = a, *y = b;
    return x->phys < y->phys ? -1 : x->phys > y->phys;
}

/* sorts frames by physical address; true with *start when k of them are consecutive */
static bool pa_huge_find_run(pa_huge_frame *frames, size_t n, size_t k, size_t page, size_t *start)
{
    qsort(frames, n, sizeof(*frames), pa_huge_frame_cmp);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        run = (i > 0 && frames[i].phys == frames[i - 1].phys + page) ? run + 1 : 1;
        if (run == k) {
            *start = i + 1 - k;
            return true;
        }
    }
    return false;
}

/* Adds pages [have, want) to the memfd and records their physical addresses
 * in frames[have, want). -ENOSPC when the pool can't supply them. */
static int pa_huge_grow(pa_huge *h, int fd, size_t have, size_t want, pa_huge_frame *frames,
                        pa_err *err)
{
    size_t n = want - have;
    size_t bytes = n * h->page; /* the caller bounds want * page */
    off_t off = (off_t)have * (off_t)h->page;
    uint64_t *phys = malloc(n * sizeof(*phys));
    int rc;
    if (phys == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory reading %zu huge page addresses", n);
    }
    if (fallocate(fd, 0, off, (off_t)bytes) < 0) {
        int e = errno;
        /* hugetlbfs keeps the pages it got before failing: give them back */
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)bytes);
        if (e == ENOSPC || e == ENOMEM) {
            rc = pa_seterr(err, ENOSPC, "fallocate of %zu %s huge pages failed: %s", n, h->name,
                           strerror(e));
        } else {
            rc = pa_seterr(err, e,
                           "fallocate of %zu %s huge pages in a hugetlb memfd failed: %s; the "
                           "hugepage backend needs hugetlbfs with fallocate (Linux >= 4.14)",
                           n, h->name, strerror(e));
        }
        goto free_phys;
    }
    void *p = mmap(NULL, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, off);
    if (p == MAP_FAILED) {
        int e = errno;
        rc = pa_seterr(err, e, "mmap of %zu %s huge pages failed: %s; check ulimit -v", n, h->name,
                       strerror(e));
        goto free_phys;
    }
    rc = pa_pagemap_frames(p, h->page, n, phys, err);
    munmap(p, bytes);
    if (rc < 0) {
        goto free_phys;
    }
    for (size_t i = 0; i < n; i++) {
        frames[have + i].phys = phys[i];
        frames[have + i].index = have + i;
    }
free_phys:
    free(phys);
    return rc;
}

/* Maps frames[0, k) (consecutive physical pages, in physical order) at one
 * huge-page-aligned virtual range. */
static int pa_huge_map_run(pa_huge *h, int fd, const pa_huge_frame *run, size_t k, char **out,
                           pa_err *err)
{
    size_t len = k * h->page, span;
    if (__builtin_add_overflow(len, h->page, &span)) {
        return pa_seterr(err, ENOMEM, "%zu huge pages of %s don't fit the address space", k,
                         h->name);
    }
    /* reserve address space with room to align it to the huge page size */
    char *raw = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) {
        int e = errno;
        return pa_seterr(err, e, "mmap reserving %zu bytes of address space failed: %s; check "
                         "ulimit -v", span, strerror(e));
    }
    uintptr_t a = ((uintptr_t)raw + h->page - 1) & ~(uintptr_t)(h->page - 1);
    char *base = (char *)a;
    if (base > raw) {
        munmap(raw, (size_t)(base - raw));
    }
    if (raw + span > base + len) {
        munmap(base + len, (size_t)(raw + span - (base + len)));
    }
    /* the kernel hands out free huge pages in no particular order: place each
     * stretch of consecutive memfd pages where its physical address belongs */
    for (size_t i = 0; i < k;) {
        size_t j = i + 1;
        while (j < k && run[j].index == run[j - 1].index + 1) {
            j++;
        }
        void *p = mmap(base + i * h->page, (j - i) * h->page, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd,
                       (off_t)run[i].index * (off_t)h->page);
        if (p == MAP_FAILED) {
            int e = errno;
            munmap(base, len);
            return pa_seterr(err, e, "mmap of %zu %s huge pages (MAP_FIXED) failed: %s", j - i,
                             h->name, strerror(e));
        }
        i = j;
    }
    *out = base;
    return 0;
}

static void pa_huge_region_destroy(pa_huge_region *r)
{
    if (r->zjob.active) {
        pa_bgzero_cancel(&r->zjob); /* the worker must be out before the unmap */
    }
    pa_tlsf_destroy(r->tlsf);
    pa_retire(r->cpu, r->len); /* arrays may still point here: see pa_retire */
    free(r);
}

/* A region of k huge pages, physically contiguous. request (bytes) is for messages. */
static int pa_huge_region_new(pa_huge *h, size_t k, size_t request, pa_huge_region **out,
                              pa_err *err)
{
    char hint[384];
    pa_huge_frame *frames = NULL;
    size_t have = 0, want = k, start = 0, len;
    uint64_t avail;
    int rc;

    pa_huge_hint(hint, sizeof(hint), h->page, k);
    /* the search may map up to twice the request at once: keep that within size_t */
    if (__builtin_mul_overflow(k, h->page, &len) || len > SIZE_MAX / 4) {
        return pa_seterr(err, ENOMEM, "cannot allocate %zu bytes: %zu huge pages of %s don't fit "
                         "the address space", request, k, h->name);
    }
    rc = pa_huge_available(h->page, &avail, NULL, err);
    if (rc < 0) {
        return rc;
    }
    if (avail < k) {
        pa_huge_hint(hint, sizeof(hint), h->page, (uint64_t)k - avail);
        return pa_seterr(err, ENOMEM,
                         "cannot allocate %zu bytes: it needs %zu %s huge pages, %llu are free; %s",
                         request, k, h->name, (unsigned long long)avail, hint);
    }
    pa_huge_region *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    int fd = memfd_create("pynq_alloc", MFD_CLOEXEC | MFD_HUGETLB | (h->shift << MFD_HUGE_SHIFT));
    if (fd < 0) {
        int e = errno;
        rc = pa_seterr(err, e,
                       "memfd_create(MFD_HUGETLB, %s) failed: %s; the hugepage backend needs "
                       "Linux >= 4.14 with hugetlbfs",
                       h->name, strerror(e));
        goto free_region;
    }
    /* Consecutive huge pages are often not physically consecutive. Take k pages;
     * if no k of them form a run, take more (doubling, up to all free pages),
     * then keep one run and give the rest back. */
    for (;;) {
        pa_huge_frame *grown = realloc(frames, want * sizeof(*frames));
        if (grown == NULL) {
            rc = pa_seterr(err, ENOMEM, "out of memory");
            goto close_fd;
        }
        frames = grown;
        rc = pa_huge_grow(h, fd, have, want, frames, err);
        if (rc == 0) {
            have = want;
            if (pa_huge_find_run(frames, have, k, h->page, &start)) {
                break;
            }
            rc = pa_huge_available(h->page, &avail, NULL, err);
            if (rc < 0) {
                goto close_fd;
            }
            /* the next probe maps up to `have` pages at once: keep that within size_t */
            size_t limit = SIZE_MAX / 2 / h->page;
            size_t more = have < avail ? have : (size_t)avail;
            if (more > 0 && have < limit) {
                want = have + (more < limit - have ? more : limit - have);
                continue;
            }
        } else if (rc != -ENOSPC) {
            goto close_fd;
        } else if (have == 0) {
            rc = pa_seterr(err, ENOMEM,
                           "cannot allocate %zu bytes: %zu %s huge pages are not free (another "
                           "process took them); %s",
                           request, k, h->name, hint);
            goto close_fd;
        }
        rc = pa_seterr(err, ENOMEM,
                       "cannot allocate %zu bytes: no %zu physically contiguous %s huge pages "
                       "among the %zu free ones (the free huge pages are fragmented); reserve "
                       "huge pages at boot (hugepages=N on the kernel command line), use 1 GiB "
                       "pages (page_size=1G), or allocate smaller buffers",
                       request, k, h->name, have);
        goto close_fd;
    }
    rc = pa_huge_map_run(h, fd, frames + start, k, &r->cpu, err);
    if (rc < 0) {
        goto close_fd;
    }
    r->len = len;
    /* give back the pages outside the run; the mapping keeps the memfd alive */
    for (size_t i = 0; i < have; i++) {
        if (i >= start && i < start + k) {
            continue;
        }
        off_t off = (off_t)frames[i].index * (off_t)h->page;
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)h->page) < 0) {
            int e = errno;
            rc = pa_seterr(err, e, "fallocate(PUNCH_HOLE) returning a huge page failed: %s",
                           strerror(e));
            goto unmap;
        }
    }
    rc = pa_pagemap_contiguous(r->cpu, r->len, h->page, &r->phys, err);
    if (rc != 0) {
        if (rc > 0) {
            char why[PA_ERR_LEN];
            snprintf(why, sizeof(why), "%s", err != NULL ? err->msg : "");
            rc = pa_seterr(err, EIO, "huge pages moved while being mapped (%s); try again", why);
        }
        goto unmap;
    }
    r->tlsf = pa_tlsf_create(r->len, PA_LINE);
    if (r->tlsf == NULL) {
        rc = pa_seterr(err, ENOMEM, "out of memory creating the allocator of a %zu-byte region",
                       r->len);
        goto unmap;
    }
    close(fd);
    free(frames);
    *out = r;
    return 0;

unmap:
    munmap(r->cpu, r->len);
close_fd:
    close(fd);
    free(frames);
free_region:
    free(r);
    return rc;
}

static int pa_huge_add_region(pa_huge *h, pa_huge_region *r, pa_err *err)
{
    if (h->nregions == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 8;
        pa_huge_region **grown = realloc(h->regions, cap * sizeof(*grown));
        if (grown == NULL) {
            return pa_seterr(err, ENOMEM, "out of memory");
        }
        h->regions = grown;
        h->cap = cap;
    }
    r->slot = h->nregions;
    h->regions[h->nregions++] = r;
    pa_regidx_add(&h->idx, &r->node, r->tlsf);
    return 0;
}

static void pa_huge_remove_region(pa_huge *h, size_t i)
{
    pa_huge_region *r = h->regions[i];
    pa_regidx_remove(&h->idx, &r->node);
    uint64_t pending, zeroed;
    if (r->zjob.active) {
        pa_bgzero_cancel(&r->zjob);
    }
    pa_bgzero_status(&r->zjob, &pending, &zeroed);
    h->zeroed_gone += zeroed; /* info()'s total keeps what this region had */
    h->regions[i] = h->regions[--h->nregions];
    h->regions[i]->slot = i;
    if (h->empty == r) {
        h->empty = NULL;
    }
    pa_huge_region_destroy(r);
}

/* unmaps the kept empty region unless it is keep; true if there was one */
static bool pa_huge_drop_empty(pa_huge *h, const pa_huge_region *keep)
{
    if (h->empty == NULL || h->empty == keep) {
        return false;
    }
    pa_huge_remove_region(h, h->empty->slot);
    return true;
}

/* r has no live block left: keep it as the empty region, unmapping the one
 * kept before (at most one empty region stays mapped) */
static void pa_huge_emptied(pa_huge *h, pa_huge_region *r)
{
    pa_huge_drop_empty(h, r);
    h->empty = r;
    /* zero what was handed out in the background, off the user's thread; if
     * no worker can be started the next allocate zeroes it as before */
    if (r->zjob.active ? r->zjob.lo >= PA_HUGE_BG_MIN : r->touched >= PA_HUGE_BG_MIN) {
        pa_bgzero_submit(&r->zjob, r->cpu, r->touched); /* active: widens it down to 0 */
    }
}

static int pa_huge_open(pa_backend *be, const char *arg, const pa_option *opts, size_t nopts,
                        pa_err *err)
{
    static const char *const known[] = {"coherent", "page_size", NULL};
    bool coherent;
    size_t page;
    pa_huge_region *r;
    int rc = pa_opt_check(opts, nopts, known, "hugepage", err);
    if (rc < 0) {
        return rc;
    }
    if (arg != NULL && arg[0] != '\0') {
        return pa_seterr(err, EINVAL,
                         "the hugepage backend takes no argument (got 'hugepage:%s'); choose the "
                         "page size with the page_size option",
                         arg);
    }
    rc = pa_opt_bool(opts, nopts, "coherent", PA_HUGE_SNOOPED, &coherent, err);
    if (rc < 0) {
        return rc;
    }
    const char *ps = pa_opt_get(opts, nopts, "page_size");
    rc = ps != NULL ? pa_huge_parse_size(ps, &page, err) : pa_huge_default_page(&page, err);
    if (rc < 0) {
        return rc;
    }
    if (!coherent && !pa_cache_user_maintenance()) {
        return pa_seterr(err, ENOTSUP,
                         "this CPU cannot clean or invalidate its data cache from user space, so "
                         "non-coherent hugepage memory can't be synced; use a backend with a "
                         "kernel sync call (udmabuf, zocl, xlnk), or coherent=1 if the device "
                         "snoops the caches");
    }
    rc = pa_huge_check_pool(page, err);
    if (rc < 0) {
        return rc;
    }
    pa_huge *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory");
    }
    h->page = page;
    pa_regidx_init(&h->idx, PA_LINE);
    h->shift = (unsigned)__builtin_ctzll((unsigned long long)page);
    pa_huge_fmt_size(h->name, sizeof(h->name), page);
    /* map one page now: proves the pool and pagemap work (root, real frame
     * numbers) and serves as the cached empty region */
    rc = pa_huge_region_new(h, 1, 0, &r, err);
    if (rc < 0) {
        goto free_h;
    }
    rc = pa_huge_add_region(h, r, err);
    if (rc < 0) {
        goto destroy_region;
    }
    h->empty = r;
    be->priv = h;
    pa_bgzero_ref();
    /* hugetlb pages map cached only: cacheable=None gives them, coherent on
     * x86 (snooped), non-coherent elsewhere */
    be->coherent = coherent;
    be->cached_coherent = coherent;
    be->low_hint = "huge pages come from the kernel's huge page pool, wherever it found free "
                   "pages; it cannot ask for low memory. For a DMA engine with a narrow "
                   "address range use a CMA area below the limit (udmabuf, dmaheap, zocl)";
    return 0;

destroy_region:
    pa_huge_region_destroy(r);
free_h:
    free(h);
    return rc;
}

typedef struct pa_huge_new_call {
    pa_huge *h;
    size_t k, request;
    pa_huge_region **out;
    pa_err *err;
    int rc;
} pa_huge_new_call;

static void pa_huge_new_cb(void *arg)
{
    pa_huge_new_call *c = arg;
    c->rc = pa_huge_region_new(c->h, c->k, c->request, c->out, c->err);
}

/* pa_huge_region_new through pa_wait when its pages are many: the kernel
 * zeroes each huge page as it maps it, which is long work (pa.h) */
static int pa_huge_region_new_gil(pa_huge *h, size_t k, size_t request, pa_huge_region **out,
                                  pa_err *err)
{
    size_t t = pa_work_gil_bytes(), pages = t / h->page + (t % h->page != 0);
    if (k < pages) { /* k * page < t, without the overflow */
        return pa_huge_region_new(h, k, request, out, err);
    }
    pa_huge_new_call c = {h, k, request, out, err, 0};
    pa_wait(pa_huge_new_cb, &c);
    return c.rc;
}

static int pa_huge_alloc(pa_backend *be, size_t size, size_t align, unsigned flags, pa_block *blk,
                         pa_err *err)
{
    pa_huge *h = be->priv;
    pa_huge_region *r = NULL;
    pa_tlsf_block *tb = NULL;
    size_t off = 0, got = 0;
    bool coherent = be->coherent;
    int rc;

    if (flags & PA_UNCACHED) {
        if (PA_HUGE_SNOOPED) {
            coherent = true; /* x86 DMA snoops the caches: cached memory is coherent */
        } else if (!coherent) {
            return pa_seterr(err, ENOTSUP,
                             "hugepage cannot map write-combine (cacheable=False) memory; use "
                             "udmabuf/dmaheap/zocl, or allocate cacheable and call "
                             "flush()/invalidate()");
        }
    }
    if (align > h->page) {
        return pa_seterr(err, EINVAL,
                         "alignment %zu is larger than the %s huge page; use page_size with a "
                         "larger page",
                         align, h->name);
    }
    /* the block's span: its alignment padding is its own (pa_padded_size) */
    size_t want = pa_padded_size(size, align);
    if (want == 0) {
        return pa_seterr(err, ENOMEM, "cannot allocate %zu bytes aligned to %zu", size, align);
    }
    /* O(1) whatever the number of regions: the index picks the region */
    pa_regidx_node *n = pa_regidx_alloc(&h->idx, want, align, &off, &got, &tb, &rc);
    if (n != NULL) {
        r = (pa_huge_region *)n;
        goto found;
    }
    if (rc != -ENOMEM) {
        return pa_seterr(err, -rc, "cannot allocate %zu bytes aligned to %zu: %s", size, align,
                         strerror(-rc));
    }
    size_t k = size / h->page + (size % h->page != 0);
    rc = pa_huge_region_new_gil(h, k, size, &r, err);
    if (rc == -ENOMEM && pa_huge_drop_empty(h, NULL)) {
        /* the cached empty region held pages this request needs */
        rc = pa_huge_region_new_gil(h, k, size, &r, err);
    }
    if (rc < 0) {
        return rc;
    }
    rc = pa_huge_add_region(h, r, err);
    if (rc < 0) {
        pa_huge_region_destroy(r);
        return rc;
    }
    rc = pa_tlsf_alloc(r->tlsf, want, align, &off, &got, &tb);
    if (rc < 0) {
        /* a fresh region of ceil(size / page) pages always fits */
        pa_huge_emptied(h, r);
        return pa_seterr(err, -rc, "internal error: a fresh %zu-byte region refused %zu bytes",
                         r->len, size);
    }
    pa_regidx_update(&h->idx, &r->node);
found:;
    size_t span = got;
    got = size; /* the padding past the block is never handed out: left as it is */
    if (h->empty == r) {
        h->empty = NULL; /* it gets a live block below (or is emptied again) */
    }
    /* hugetlb pages come zeroed from the kernel; only reused ranges need it,
     * large ones with non-temporal stores (zero.h). With a background job on
     * the region, the worker first gets out of the block (waiting at most for
     * its chunk in flight) and says how far down it has zeroed. */
    size_t touched = r->touched;
    if (r->zjob.active && off + got <= r->zjob.lo) {
        touched = off + got; /* below the worker's floor: all of it to zero here */
    } else if (r->zjob.active) {
        bool done;
        touched = pa_bgzero_claim(&r->zjob, off, off + got, &done);
        if (done) {
            r->touched = touched;
        }
    }
    if (off < touched) {
        /* done by pa_alloc once the lock is let go (pa_prep): the block is
         * the caller's alone, and the worker keeps out of it (claimed above) */
        size_t end = off + got < touched ? off + got : touched;
        pa_prep_zero(be, r->cpu + off, end - off, false);
        h->zeroed_sync += end - off;
    }
    /* while the job runs its hi (>= the block's end) stands for touched */
    if (!r->zjob.active && off + got > r->touched) {
        r->touched = off + got;
    }
    if (!coherent) {
        pa_prep_clean(be, r->cpu + off, got); /* after the zeroing, also unlocked */
    }
    r->live++;
    blk->cpu = r->cpu + off;
    blk->device_address = r->phys + off;
    blk->size = got;
    blk->span = span;
    blk->coherent = coherent;
    blk->handle = tb;
    blk->aux = (uint64_t)(uintptr_t)r;
    return 0;
}

static void pa_huge_free(pa_backend *be, pa_block *blk)
{
    pa_huge *h = be->priv;
    pa_huge_region *r = (pa_huge_region *)(uintptr_t)blk->aux;
    pa_tlsf_free(r->tlsf, blk->handle);
    pa_regidx_update(&h->idx, &r->node);
    /* keep the most recently emptied region for the next alloc; unmap any other */
    if (--r->live == 0) {
        pa_huge_emptied(h, r);
    }
}

static int pa_huge_sync(pa_backend *be, const pa_block *blk, size_t off, size_t len,
                        pa_sync_dir dir, pa_err *err)
{
    (void)be;
    int rc;
    if (blk->coherent) {
        return 0;
    }
    if (!pa_cache_user_maintenance()) {
        return pa_seterr(err, ENOTSUP,
                         "this CPU cannot clean or invalidate its data cache from user space "
                         "(32-bit ARM needs a kernel sync backend such as udmabuf)");
    }
    char *p = (char *)blk->cpu + off;
    if (dir == PA_TO_DEVICE) {
        rc = pa_cache_clean(p, len);
    } else if (dir == PA_FROM_DEVICE) {
        rc = pa_cache_clean_invalidate(p, len);
    } else {
        return pa_seterr(err, EINVAL, "unknown sync direction %d", (int)dir);
    }
    if (rc < 0) {
        return pa_seterr(err, -rc, "cache maintenance (%s) failed: %s", pa_cache_method(),
                         strerror(-rc));
    }
    return 0;
}

/* a sparse view's runs: the lines of each, one barrier at the end */
static int pa_huge_sync_runs(pa_backend *be, const pa_block *blk, const pa_runs *r, pa_sync_dir dir,
                             pa_err *err)
{
    (void)be;
    if (!pa_cache_user_maintenance()) {
        return pa_seterr(err, ENOTSUP,
                         "this CPU cannot clean or invalidate its data cache from user space "
                         "(32-bit ARM needs a kernel sync backend such as udmabuf)");
    }
    int rc = pa_cache_runs(blk->cpu, r, dir == PA_FROM_DEVICE);
    if (rc < 0) {
        return pa_seterr(err, -rc, "cache maintenance (%s) failed: %s", pa_cache_method(),
                         strerror(-rc));
    }
    return 0;
}

static void pa_huge_info(pa_backend *be, pa_info *info)
{
    pa_huge *h = be->priv;
    uint64_t mapped = 0, used = 0, largest = 0, avail = 0;
    for (size_t i = 0; i < h->nregions; i++) {
        pa_tlsf_stats s;
        pa_tlsf_get_stats(h->regions[i]->tlsf, &s);
        mapped += h->regions[i]->len;
        used += s.used;
        if (s.largest_free > largest) {
            largest = s.largest_free;
        }
    }
    if (pa_huge_available(h->page, &avail, NULL, NULL) < 0) {
        avail = 0;
    }
    /* free system pages are not known to be contiguous with each other */
    if (avail > 0 && h->page > largest) {
        largest = h->page;
    }
    info->total = mapped + avail * h->page;
    info->free = info->total - used;
    info->largest_free = largest;
    info->coherent = be->coherent;
    info->line_size = pa_cache_line_size();
    info->zero_sync = h->zeroed_sync;
    info->zero_background = h->zeroed_gone;
    for (size_t i = 0; i < h->nregions; i++) {
        uint64_t pending, zeroed;
        pa_bgzero_status(&h->regions[i]->zjob, &pending, &zeroed);
        info->zero_pending += pending;
        info->zero_background += zeroed;
    }
}

static void pa_huge_close(pa_backend *be)
{
    pa_huge *h = be->priv;
    if (h == NULL) {
        return;
    }
    while (h->nregions > 0) {
        pa_huge_remove_region(h, h->nregions - 1);
    }
    free(h->regions);
    free(h);
    be->priv = NULL;
    pa_bgzero_unref(); /* the last backend stops the worker: no thread is left behind */
}

static int pa_huge_probe(const char *arg, pa_err *why)
{
    size_t page;
    if (arg != NULL && arg[0] != '\0') {
        return pa_seterr(why, EINVAL, "the hugepage backend takes no argument (got 'hugepage:%s')",
                         arg);
    }
    int rc = pa_huge_default_page(&page, why);
    if (rc == 0) {
        rc = pa_huge_check_pool(page, why);
    }
    if (rc < 0) {
        return rc;
    }
    if (!pa_huge_privileged()) {
        return pa_seterr(why, EPERM,
                         "physical addresses need root or CAP_SYS_ADMIN (Linux >= 4.2 hides page "
                         "frame numbers); run as root");
    }
    pa_seterr(why, 0, "usable: huge pages of %zu KiB reserved, physical addresses readable "
                      "(never chosen automatically: open it by name)",
              page >> 10);
    return 0;
}

const pa_ops pa_huge_ops = {
    .name = "hugepage",
    .open = pa_huge_open,
    .own_gil_work = true, /* zeroing/cleaning via pa_prep, new regions via pa_wait */
    .alloc = pa_huge_alloc,
    .free = pa_huge_free,
    .sync = pa_huge_sync,
    .sync_runs = pa_huge_sync_runs,
    .sync_run_lines = PA_CPU_RUN_LINES,
    .info = pa_huge_info,
    .close = pa_huge_close,
    .probe = pa_huge_probe,
};
