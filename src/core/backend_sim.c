/* The sim backend: a software device for development machines and CI.
 * The CPU side is a real mapping (standing in for the CPU's caches); a second
 * mapping is what the device sees. When non-coherent, data crosses only on
 * flush()/invalidate(), as on a non-coherent ARM SoC. A line is dirty when the
 * CPU changed it since CPU and memory last agreed on it: for lines the device
 * has not written since, that agreed content is the device side itself; for
 * lines it has, a third mapping ("agreed") keeps a copy taken when the device
 * first wrote them. Checking mode only adds reports: results never depend on it. */
#define _GNU_SOURCE
#include "pa.h"
#include "tlsf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

enum { SIM_ALLOC = 1, SIM_COHERENT = 2, SIM_DEVWROTE = 4 };
enum { SIM_CHECK_OFF = 0, SIM_CHECK_WARN = 1, SIM_CHECK_RAISE = 2 };

/* Freed blocks stay mapped and are zeroed on reuse (memset: glibc switches to
 * non-temporal stores for large ones), so a buffer allocated again does not
 * fault its pages in again. Blocks of SIM_KEEP bytes or more are the high-water
 * mark: they go back to the kernel on free (MADV_DONTNEED), and a block that
 * large is zeroed by the kernel on allocate rather than memset. Memory above
 * `touched` (never handed out) is still the kernel's zero pages: no zeroing. */
#define SIM_KEEP ((size_t)64 << 20)
#define SIM_PG ((size_t)4096 / PA_LINE) /* lines per flag page */

typedef struct pa_sim {
    uint8_t *cpu;   /* CPU view: cache contents as the CPU sees them */
    uint8_t *dev;   /* memory as the device sees it */
    uint8_t *agreed; /* lines with SIM_DEVWROTE: what CPU and memory last agreed on */
    uint8_t *lines; /* per cache line: SIM_* flags */
    /* per page of SIM_PG lines lying wholly inside one live block: that
     * block's SIM_ALLOC | SIM_COHERENT (the lines' own bytes then hold only
     * SIM_DEVWROTE), so allocate/free of a big block write a byte per page */
    uint8_t *pg;
    uint8_t *pgdirty; /* per page: lines[] may hold nonzero bytes there */
    size_t size;
    uint64_t base;
    int check;
    size_t touched; /* offsets at and above it were never handed out: still zero */
    pa_tlsf *tlsf;
} pa_sim;

static const char *const pa_sim_options[] = {"size", "base_address", "coherent", "check", NULL};

static void *pa_sim_map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    /* transparent huge pages where the kernel allows them: 2 MiB per fault
     * instead of 4 KiB (best effort: a refusal changes nothing else) */
    (void)madvise(p, size, MADV_HUGEPAGE);
#endif
    return p;
}

/* The CPU side is aligned like the device side (to the largest power of two
 * up to 1 GiB that fits the region), so align= holds for virtual addresses too. */
static size_t pa_sim_cpu_align(size_t size)
{
    size_t a = (size_t)1 << 30;
    while (a > 4096 && a > size) {
        a >>= 1;
    }
    return a;
}

static void *pa_sim_map_aligned(size_t size, size_t align)
{
    size_t span;
    if (__builtin_add_overflow(size, align, &span)) {
        errno = ENOMEM;
        return NULL;
    }
    uint8_t *p = pa_sim_map(span);
    if (p == NULL) {
        return NULL;
    }
    uint8_t *start = (uint8_t *)(((uintptr_t)p + align - 1) & ~((uintptr_t)align - 1));
    if (start > p) {
        munmap(p, (size_t)(start - p));
    }
    if (p + span > start + size) {
        munmap(start + size, (size_t)(p + span - (start + size)));
    }
    return start;
}

static void pa_sim_unmap(void *p, size_t size)
{
    if (p != NULL) {
        munmap(p, size);
    }
}

static size_t pa_sim_npages(const pa_sim *s)
{
    return (s->size / PA_LINE + SIM_PG - 1) / SIM_PG;
}

/* a line's SIM_* flags: its own, and its page's when the page is uniform */
static uint8_t pa_sim_flags(const pa_sim *s, size_t line)
{
    return (uint8_t)(s->lines[line] | s->pg[line / SIM_PG]);
}

static void pa_sim_release(pa_sim *s)
{
    pa_sim_unmap(s->cpu, s->size);
    pa_sim_unmap(s->dev, s->size);
    pa_sim_unmap(s->agreed, s->size);
    pa_sim_unmap(s->lines, s->size / PA_LINE);
    pa_sim_unmap(s->pg, pa_sim_npages(s));
    pa_sim_unmap(s->pgdirty, pa_sim_npages(s));
    if (s->tlsf != NULL) {
        pa_tlsf_destroy(s->tlsf);
    }
    free(s);
}

static int pa_sim_parse_check(const char *v, int *out, pa_err *err)
{
    if (v == NULL || !strcmp(v, "off") || !strcmp(v, "0") || !strcmp(v, "") ||
        !strcmp(v, "false")) {
        *out = SIM_CHECK_OFF;
    } else if (!strcmp(v, "warn")) {
        *out = SIM_CHECK_WARN;
    } else if (!strcmp(v, "raise")) {
        *out = SIM_CHECK_RAISE;
    } else {
        return pa_seterr(err, EINVAL, "sim option check='%s': use 'off', 'warn' or 'raise'", v);
    }
    return 0;
}

static int pa_sim_open(pa_backend *be, const char *arg, const pa_option *opts, size_t nopts,
                       pa_err *err)
{
    uint64_t size = 0, base = 0;
    bool coherent = false;
    int check = SIM_CHECK_OFF;
    int rc = pa_opt_check(opts, nopts, pa_sim_options, "sim", err);
    if (rc == 0) {
        rc = pa_opt_u64(opts, nopts, "size", 256u << 20, &size, err);
    }
    if (rc == 0) {
        rc = pa_opt_u64(opts, nopts, "base_address", 0x40000000u, &base, err);
    }
    if (rc == 0) {
        rc = pa_opt_bool(opts, nopts, "coherent", false, &coherent, err);
    }
    if (rc == 0) {
        rc = pa_sim_parse_check(pa_opt_get(opts, nopts, "check"), &check, err);
    }
    if (rc < 0) {
        return rc;
    }
    if (arg != NULL && arg[0] != '\0') {
        return pa_seterr(err, EINVAL, "the sim backend takes no argument after 'sim:' (got '%s')",
                         arg);
    }
    if (size < PA_LINE || size > (uint64_t)SIZE_MAX / 2 || size % PA_LINE != 0) {
        return pa_seterr(err, EINVAL,
                         "sim option size=%llu must be a multiple of %d bytes between %d and %zu",
                         (unsigned long long)size, PA_LINE, PA_LINE, (size_t)SIZE_MAX / 2);
    }
    /* the last byte may be 2**64 - 1 */
    if (base % PA_LINE != 0 || size - 1 > UINT64_MAX - base) {
        return pa_seterr(err, EINVAL,
                         "sim option base_address=0x%llx must be %d-byte aligned and leave room "
                         "for size=%llu bytes below 2**64",
                         (unsigned long long)base, PA_LINE, (unsigned long long)size);
    }
    pa_sim *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory opening the sim backend");
    }
    s->size = (size_t)size;
    s->base = base;
    s->check = check;
    s->cpu = pa_sim_map_aligned(s->size, pa_sim_cpu_align(s->size));
    s->lines = pa_sim_map(s->size / PA_LINE);
    s->pg = pa_sim_map(pa_sim_npages(s));
    s->pgdirty = pa_sim_map(pa_sim_npages(s));
    if (s->cpu == NULL || s->lines == NULL || s->pg == NULL || s->pgdirty == NULL) {
        goto fail_map;
    }
    if (!coherent) {
        s->dev = pa_sim_map(s->size);
        if (s->dev == NULL) {
            goto fail_map;
        }
        s->agreed = pa_sim_map(s->size);
        if (s->agreed == NULL) {
            goto fail_map;
        }
    }
    s->tlsf = pa_tlsf_create(s->size, PA_LINE);
    if (s->tlsf == NULL) {
        pa_sim_release(s);
        return pa_seterr(err, ENOMEM, "out of memory for the sim backend's allocator");
    }
    be->priv = s;
    /* PYNQ's default: coherent unless allocated cacheable; coherent= is the
     * port (a coherent port makes cacheable blocks coherent too) */
    be->coherent = true;
    be->cached_coherent = coherent;
    return 0;

fail_map:
    rc = errno;
    pa_sim_release(s);
    return pa_seterr(err, rc,
                     "sim backend: mmap of %llu bytes of address space failed: %s; "
                     "open it with a smaller size= option",
                     (unsigned long long)size, strerror(rc));
}

/* page-aligned part of [off, off+len), or lo == hi */
static void pa_sim_pages(size_t off, size_t len, size_t *lo, size_t *hi)
{
    size_t page = 4096;
    *lo = (off + page - 1) & ~(page - 1);
    *hi = (off + len) & ~(page - 1);
    if (*lo > *hi) {
        *hi = *lo;
    }
}

/* zero [off, off+len) of one mapping once pa_alloc lets go of the lock: only
 * below s->touched (above it the kernel's pages are still zero); blocks of
 * SIM_KEEP or more were handed back to the kernel on free, so it zeroes them
 * (discard: MADV_DONTNEED), the rest is memset */
static void pa_sim_zero(pa_backend *be, const pa_sim *s, uint8_t *map, size_t off, size_t len)
{
    if (map == NULL || off >= s->touched) {
        return;
    }
    if (off + len > s->touched) {
        len = s->touched - off;
    }
    pa_prep_zero(be, map + off, len, len >= SIM_KEEP);
}

/* The first 2 MiB of a block of SIM_KEEP bytes or more (memory the kernel
 * zeroes: never handed out, or handed back on free) fault in 4 KiB pages
 * while the block lives; the rest in transparent huge pages. A fresh big
 * numpy array starts the same way (its mmap'd chunk begins off a 2 MiB
 * boundary): the first touch, often a header or a[0], costs a 4 KiB fault
 * rather than the kernel clearing a whole 2 MiB page, and a bulk write loses
 * nothing measurable (512 small faults of 65 536 pages in 256 MiB).
 * small_pages false (on free) gives the range back to THP. Best effort. */
#define SIM_HEAD ((size_t)2 << 20)
static void pa_sim_head(const pa_sim *s, size_t off, bool small_pages)
{
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
    size_t lo = off & ~(size_t)4095; /* s->cpu is page-aligned; the block is >= SIM_KEEP */
    (void)madvise(s->cpu + lo, SIM_HEAD, small_pages ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
#else
    (void)s;
    (void)off;
    (void)small_pages;
#endif
}

/* sets lines [a, b) to f (all within one block) */
static void pa_sim_set_lines(pa_sim *s, size_t a, size_t b, uint8_t f)
{
    if (a < b) {
        memset(s->lines + a, f, b - a);
        if (f != 0) {
            memset(s->pgdirty + a / SIM_PG, 1, (b - 1) / SIM_PG - a / SIM_PG + 1);
        }
    }
}

/* the pages wholly inside lines [l0, l1): [*p0, *p1), empty when p0 >= p1 */
static void pa_sim_whole_pages(size_t l0, size_t l1, size_t *p0, size_t *p1)
{
    *p0 = (l0 + SIM_PG - 1) / SIM_PG;
    *p1 = l1 / SIM_PG;
}

/* marks lines [l0, l1) with f: edge lines one by one, whole pages by their
 * page byte; f == 0 clears them, SIM_DEVWROTE included */
static void pa_sim_mark(pa_sim *s, size_t l0, size_t l1, uint8_t f)
{
    size_t p0, p1;
    pa_sim_whole_pages(l0, l1, &p0, &p1);
    if (p0 >= p1) {
        pa_sim_set_lines(s, l0, l1, f);
        return;
    }
    pa_sim_set_lines(s, l0, p0 * SIM_PG, f);
    pa_sim_set_lines(s, p1 * SIM_PG, l1, f);
    if (f == 0) {
        /* whole pages: only those whose lines hold something (SIM_DEVWROTE) */
        size_t p = p0;
        while (p < p1) {
            uint64_t w;
            if ((p & 7) == 0 && p + 8 <= p1 && (memcpy(&w, s->pgdirty + p, 8), w == 0)) {
                p += 8;
                continue;
            }
            if (s->pgdirty[p]) {
                memset(s->lines + p * SIM_PG, 0, SIM_PG);
                s->pgdirty[p] = 0;
            }
            p++;
        }
    }
    memset(s->pg + p0, f, p1 - p0);
}

static int pa_sim_alloc(pa_backend *be, size_t size, size_t align, unsigned flags, pa_block *blk,
                        pa_err *err)
{
    pa_sim *s = be->priv;
    size_t off, got, skip = 0;
    pa_tlsf_block *h;
    size_t lim = pa_region_limit(be, s->base, s->size);
    if (lim == 0) {
        return pa_seterr(err, ENOMEM,
                         "the sim backend's memory starts at device address 0x%llx, above the "
                         "address limit 0x%llx (address_bits); open it with a lower "
                         "base_address= option",
                         (unsigned long long)s->base, (unsigned long long)be->alloc_max);
    }
    int rc;
    /* the block's span: its alignment padding is its own (pa_padded_size) */
    size_t want = pa_padded_size(size, align);
    if (want == 0) {
        return pa_seterr(err, ENOMEM, "sim backend cannot allocate %zu bytes (align %zu)", size,
                         align);
    }
    if ((s->base & (align - 1)) == 0) {
        rc = pa_tlsf_alloc_below(s->tlsf, want, align, lim, &off, &got, &h);
    } else {
        /* base_address is not aligned to align, so aligned offsets would not
         * give aligned device addresses: take a block with room to skip to
         * the first aligned device address (the device's alignment is what
         * counts; the CPU address then has the base's misalignment) */
        size_t span;
        if (__builtin_add_overflow(want, align - PA_LINE, &span)) {
            return pa_seterr(err, ENOMEM, "sim backend cannot allocate %zu bytes (align %zu)",
                             size, align);
        }
        rc = pa_tlsf_alloc_below(s->tlsf, span, PA_LINE, lim, &off, &got, &h);
        if (rc == 0) {
            skip = (size_t)((align - ((s->base + off) & (align - 1))) & (align - 1));
        }
    }
    if (rc < 0 && lim < s->size) {
        return pa_seterr(err, -rc,
                         "sim backend cannot allocate %zu bytes (align %zu) below device address "
                         "0x%llx (address_bits): not enough free memory below it; free buffers "
                         "there or open the sim backend with a lower base_address=",
                         size, align, (unsigned long long)be->alloc_max + 1);
    }
    if (rc < 0) {
        /* pa.c appends info()'s figures (used, requested, free, largest free) */
        return pa_seterr(err, -rc,
                         "sim backend cannot allocate %zu bytes (align %zu): no free block "
                         "holds them with their alignment padding; free buffers or open the sim "
                         "backend with a larger size= option",
                         size, align);
    }
    bool coherent = (flags & PA_CACHED) == 0 || be->cached_coherent;
    off += skip; /* the skipped lines stay unallocated for the device */
    got = size;  /* so does the padding after the block (the TLSF block's rest) */
    pa_sim_zero(be, s, s->cpu, off, got);
    if (!coherent) {
        /* a coherent block's lines live in CPU memory: the device side is
         * never read for them (zeroed when a non-coherent block reuses it) */
        pa_sim_zero(be, s, s->dev, off, got);
    }
    if (off + got > s->touched) {
        s->touched = off + got;
    }
    if (got >= SIM_KEEP) {
        pa_sim_head(s, off, true);
    }
    pa_sim_mark(s, off / PA_LINE, (off + got) / PA_LINE,
                (uint8_t)(SIM_ALLOC | (coherent ? SIM_COHERENT : 0)));
    blk->cpu = s->cpu + off;
    blk->device_address = s->base + off;
    blk->size = got;
    blk->coherent = coherent;
    blk->handle = h;
    blk->span = pa_tlsf_size(h); /* with the lines skipped to align */
    blk->aux = off; /* the TLSF block may start before it (skip above) */
    return 0;
}

static void pa_sim_free(pa_backend *be, pa_block *blk)
{
    pa_sim *s = be->priv;
    size_t off = (size_t)blk->aux;
    pa_sim_mark(s, off / PA_LINE, (off + blk->size) / PA_LINE, 0);
    if (blk->size >= SIM_KEEP) {
        /* past the high-water mark: hand the pages back so RSS follows the
         * live buffers */
        size_t lo, hi;
        pa_sim_pages(off, blk->size, &lo, &hi);
        if (lo < hi) {
            int rc = madvise(s->cpu + lo, hi - lo, MADV_DONTNEED);
            if (rc == 0 && s->dev != NULL) {
                rc = madvise(s->dev + lo, hi - lo, MADV_DONTNEED);
            }
            if (s->agreed != NULL) {
                madvise(s->agreed + lo, hi - lo, MADV_DONTNEED);
            }
            /* the block was the top of what was ever handed out: what lies
             * above lo is zero again, so a new block there needs no zeroing */
            if (rc == 0 && off + blk->size >= s->touched && off == lo && hi == off + blk->size) {
                s->touched = lo;
            }
        }
        pa_sim_head(s, off, false);
    }
    pa_tlsf_free(s->tlsf, blk->handle);
}

/* the CPU changed the line since CPU and memory last agreed on it */
static bool pa_sim_line_dirty(const pa_sim *s, size_t off)
{
    const uint8_t *agreed = (s->lines[off / PA_LINE] & SIM_DEVWROTE) ? s->agreed : s->dev;
    return memcmp(s->cpu + off, agreed + off, PA_LINE) != 0;
}

/* Formats one report; returns the positive report level for the binding. */
static int pa_sim_report(const pa_sim *s, pa_err *err, size_t first, size_t last, size_t count,
                         const char *what, const char *fix)
{
    pa_seterr(err, 0, "%s: device addresses 0x%llx-0x%llx (%zu cache line%s). %s", what,
              (unsigned long long)(s->base + first),
              (unsigned long long)(s->base + last + PA_LINE - 1), count, count == 1 ? "" : "s",
              fix);
    return s->check;
}

/* scans lines [lo, hi) for CPU-dirty ones (checking mode) */
static size_t pa_sim_scan_dirty(const pa_sim *s, size_t lo, size_t hi, size_t *first, size_t *last)
{
    size_t n = 0;
    for (size_t off = lo; off < hi; off += PA_LINE) {
        if ((pa_sim_flags(s, off / PA_LINE) & SIM_COHERENT) == 0 && pa_sim_line_dirty(s, off)) {
            if (n++ == 0) {
                *first = off;
            }
            *last = off;
        }
    }
    return n;
}

/* first line in [line, end) the device wrote since the CPU last synced it, or
 * end; eight flag bytes at a time, so a 64 MiB flush scans at memory speed */
static size_t pa_sim_next_devwrote(const pa_sim *s, size_t line, size_t end)
{
    const uint64_t mask = 0x0101010101010101ull * SIM_DEVWROTE;
    while (line < end && (line & 7) != 0) {
        if (s->lines[line] & SIM_DEVWROTE) {
            return line;
        }
        line++;
    }
    while (line + 8 <= end) {
        uint64_t w;
        memcpy(&w, s->lines + line, sizeof(w));
        if (w & mask) {
            break;
        }
        line += 8;
    }
    while (line < end && (s->lines[line] & SIM_DEVWROTE) == 0) {
        line++;
    }
    return line;
}

/* Cleans [lo, hi): writes the CPU's lines back to the device side. A line
 * the device wrote since is written back only if the CPU dirtied it (then the
 * device's data is lost, as on hardware); a clean one stays the device's. */
static void pa_sim_writeback(pa_sim *s, size_t lo, size_t hi)
{
    size_t line = lo / PA_LINE, end = hi / PA_LINE;
    while (line < end) {
        size_t stop = pa_sim_next_devwrote(s, line, end);
        if (stop > line) {
            memcpy(s->dev + line * PA_LINE, s->cpu + line * PA_LINE, (stop - line) * PA_LINE);
        }
        if (stop < end && pa_sim_line_dirty(s, stop * PA_LINE)) {
            memcpy(s->dev + stop * PA_LINE, s->cpu + stop * PA_LINE, PA_LINE);
            s->lines[stop] &= (uint8_t)~SIM_DEVWROTE;
        }
        line = stop + 1;
    }
}

/* Checking mode, case 4: flush() over lines the device wrote since the CPU
 * last invalidated them. A clean CPU copy is stale: on hardware the next
 * eviction of a line the CPU then writes (or a dirty one now) puts it over
 * the device's data, and the caller most likely meant invalidate(). */
static int pa_sim_check_flush(const pa_sim *s, const pa_block *blk, size_t lo, size_t hi,
                              pa_err *err)
{
    size_t n = 0, dirty = 0, first = 0, last = 0;
    for (size_t line = pa_sim_next_devwrote(s, lo / PA_LINE, hi / PA_LINE); line < hi / PA_LINE;
         line = pa_sim_next_devwrote(s, line + 1, hi / PA_LINE)) {
        if (n++ == 0) {
            first = line * PA_LINE;
        }
        last = line * PA_LINE;
        dirty += pa_sim_line_dirty(s, line * PA_LINE);
    }
    if (n == 0) {
        return 0;
    }
    size_t base = (size_t)blk->aux;
    pa_seterr(err, 0,
              "flush() over cache lines the device wrote since the CPU last invalidated them: "
              "bytes %zu-%zu of the buffer at 0x%llx (device addresses 0x%llx-0x%llx, %zu cache "
              "line%s). %s Call invalidate() after the device writes and before the CPU reads; "
              "flush() is for data the CPU wrote for the device.",
              first - base, last + PA_LINE - 1 - base, (unsigned long long)blk->device_address,
              (unsigned long long)(s->base + first),
              (unsigned long long)(s->base + last + PA_LINE - 1), n, n == 1 ? "" : "s",
              dirty > 0 ? "The CPU's stale copy of some of them now overwrote the device's data."
                        : "The CPU's copy is stale: written back later, it overwrites the "
                          "device's data.");
    return s->check;
}

/* syncs lines [lo, hi) (offsets in the region, line-aligned) of blk; the
 * caller holds a range over them */
static int pa_sim_sync_range(pa_sim *s, const pa_block *blk, size_t lo, size_t hi, pa_sync_dir dir,
                             pa_err *err)
{
    int report = 0;

    if (dir == PA_TO_DEVICE) {
        if (s->check != SIM_CHECK_OFF) {
            report = pa_sim_check_flush(s, blk, lo, hi, err);
        }
        pa_sim_writeback(s, lo, hi);
        return report;
    }
    if (s->check != SIM_CHECK_OFF) {
        size_t first = 0, last = 0;
        size_t n = pa_sim_scan_dirty(s, lo, hi, &first, &last);
        if (n > 0) {
            report = pa_sim_report(
                s, err, first, last, n,
                "invalidate() over cache lines the CPU changed since the last flush(); on a "
                "non-coherent SoC clean+invalidate writes them back over what the device wrote",
                "Flush after the CPU writes and before the device runs, and do not write the "
                "buffer while the device owns it.");
        }
    }
    /* clean+invalidate: dirty lines are written back, then the lines the
     * device wrote (and the CPU did not dirty) are reloaded */
    pa_sim_writeback(s, lo, hi);
    size_t line = lo / PA_LINE, end = hi / PA_LINE;
    while ((line = pa_sim_next_devwrote(s, line, end)) < end) {
        size_t run = line;
        while (line < end && (s->lines[line] & SIM_DEVWROTE) != 0) {
            s->lines[line] &= (uint8_t)~SIM_DEVWROTE;
            line++;
        }
        memcpy(s->cpu + run * PA_LINE, s->dev + run * PA_LINE, (line - run) * PA_LINE);
    }
    return report;
}

/* A sync touches only its own lines (their flags, CPU, device and agreed
 * bytes), all inside a live block that pa_alloc/pa_free leave alone while it
 * lives: per-range exclusion against overlapping syncs and device accesses is
 * enough, so no backend lock is held during the copy and allocate()/free() on
 * other threads go on meanwhile. */
static int pa_sim_sync(pa_backend *be, const pa_block *blk, size_t off, size_t len,
                       pa_sync_dir dir, pa_err *err)
{
    size_t start = (size_t)blk->aux + off;
    size_t lo = start & ~((size_t)PA_LINE - 1);
    size_t hi = (start + len + PA_LINE - 1) & ~((size_t)PA_LINE - 1);
    pa_range r;
    pa_range_acquire(be, &r, lo, hi);
    int rc = pa_sim_sync_range(be->priv, blk, lo, hi, dir, err);
    pa_range_release(be, &r);
    return rc;
}

/* A sparse view's runs are short (a few lines each) and scattered: their
 * write-back is bound by memory latency, not by the copy. Runs of up to
 * SIM_FAST_LINES lines the device did not write are copied with streaming
 * stores (no read of the device side's lines first) as the walk reaches
 * them; anything else, and everything in checking mode, takes
 * pa_sim_sync_range, so the results and reports are the same either way. */
#define SIM_FAST_LINES 8
#define SIM_AHEAD 16 /* runs */

#if defined(__SSE2__)
/* one line, both sides line-aligned (the mappings are page-aligned) */
static inline void pa_sim_stream_line(uint8_t *dst, const uint8_t *src)
{
    const __m128i *s = (const __m128i *)(const void *)src;
    __m128i *d = (__m128i *)(void *)dst;
    __m128i a = _mm_load_si128(s), b = _mm_load_si128(s + 1);
    __m128i c = _mm_load_si128(s + 2), e = _mm_load_si128(s + 3);
    _mm_stream_si128(d, a);
    _mm_stream_si128(d + 1, b);
    _mm_stream_si128(d + 2, c);
    _mm_stream_si128(d + 3, e);
}

/* streamed stores are weakly ordered: fenced before the range is released */
static inline void pa_sim_stream_fence(void)
{
    _mm_sfence();
}
#else
static inline void pa_sim_stream_line(uint8_t *dst, const uint8_t *src)
{
    memcpy(dst, src, PA_LINE);
}

static inline void pa_sim_stream_fence(void)
{
}
#endif

/* writes back lines [l0, l1) when the device wrote none of them (then the
 * write-back is a plain copy, for either direction: an invalidate reloads
 * only lines the device wrote); false, nothing done, otherwise */
static inline bool pa_sim_stream_lines(pa_sim *s, size_t l0, size_t l1)
{
    for (size_t l = l0; l < l1; l++) {
        if (s->lines[l] & SIM_DEVWROTE) {
            return false;
        }
    }
    for (size_t l = l0; l < l1; l++) {
        pa_sim_stream_line(s->dev + l * PA_LINE, s->cpu + l * PA_LINE);
    }
    return true;
}

/* a sparse view's runs: one range lock over all of them, then each range of
 * lines the walk gives (neighbours sharing a line merged) */
static int pa_sim_sync_runs(pa_backend *be, const pa_block *blk, const pa_runs *r, pa_sync_dir dir,
                            pa_err *err)
{
    pa_sim *s = be->priv;
    size_t base = (size_t)blk->aux, first = 0, last = 0, count = 0, lo, hi;
    pa_runs_extent(r, &first, &last, &count); /* pa_sync_runs checked it */
    pa_range rg;
    pa_range_acquire(be, &rg, (base + first) & ~((size_t)PA_LINE - 1),
                     (base + last + PA_LINE - 1) & ~((size_t)PA_LINE - 1));
    bool fast = s->check == SIM_CHECK_OFF && s->dev != NULL, streamed = false;
    int report = 0;
    pa_err tmp;
    pa_runs_it it;
    pa_runs_start(&it, r, count, base, PA_LINE);
    /* the CPU side of the run SIM_AHEAD runs on, read ahead while this one
     * is copied (while it lies in the same row of the last dimension) */
    size_t ahead = r->ndim > 0 ? (size_t)r->strides[r->ndim - 1] * SIM_AHEAD : 0;
    while (pa_runs_next(&it, &lo, &hi)) {
        if (fast && it.inner > SIM_AHEAD) {
            __builtin_prefetch((const void *)((uintptr_t)s->cpu + base + it.pos + ahead));
        }
        if (fast && hi - lo <= SIM_FAST_LINES * PA_LINE &&
            pa_sim_stream_lines(s, lo / PA_LINE, hi / PA_LINE)) {
            streamed = true;
            continue;
        }
        int rc = pa_sim_sync_range(s, blk, lo, hi, dir, &tmp);
        if (rc > 0 && report == 0) {
            report = rc;
            *err = tmp;
        }
    }
    if (streamed) {
        pa_sim_stream_fence();
    }
    pa_range_release(be, &rg);
    return report;
}

int pa_sim_device_access(pa_backend *be, uint64_t addr, void *buf, size_t len, bool write,
                         pa_err *err)
{
    if (be->ops != &pa_sim_ops) {
        return pa_seterr(err, ENOTSUP,
                         "device_read/device_write exist only on the sim backend (this is '%s')",
                         be->ops->name);
    }
    pa_sim *s = be->priv;
    if (len == 0) {
        return 0;
    }
    if (addr < s->base || addr - s->base > s->size || len > s->size - (addr - s->base)) {
        return pa_seterr(err, EFAULT,
                         "device %s of %zu bytes at 0x%llx is outside the simulated memory "
                         "0x%llx-0x%llx",
                         write ? "write" : "read", len, (unsigned long long)addr,
                         (unsigned long long)s->base, (unsigned long long)(s->base + s->size - 1));
    }
    size_t start = (size_t)(addr - s->base);
    size_t lo = start & ~((size_t)PA_LINE - 1);
    size_t hi = (start + len + PA_LINE - 1) & ~((size_t)PA_LINE - 1);
    int report = 0;

    /* the range keeps syncs of these lines out; the backend lock keeps
     * pa_alloc/pa_free from changing which of them are allocated */
    pa_range r;
    pa_range_acquire(be, &r, lo, hi);
    pa_lock(&be->lock);
    for (size_t o = lo; o < hi; o += PA_LINE) {
        if ((pa_sim_flags(s, o / PA_LINE) & SIM_ALLOC) == 0) {
            pthread_mutex_unlock(&be->lock);
            pa_range_release(be, &r);
            return pa_seterr(err, EFAULT,
                             "device %s at 0x%llx touches 0x%llx, which is not inside a live "
                             "buffer (freed or never allocated): on hardware this DMA would "
                             "corrupt memory",
                             write ? "write" : "read", (unsigned long long)addr,
                             (unsigned long long)(s->base + o));
        }
    }
    if (s->check != SIM_CHECK_OFF && s->dev != NULL) {
        size_t first = 0, last = 0;
        size_t n = pa_sim_scan_dirty(s, lo, hi, &first, &last);
        if (n > 0 && !write) {
            report = pa_sim_report(s, err, first, last, n,
                                   "the device read bytes the CPU changed but never flushed",
                                   "Call buf.flush() (sync_to_device) after writing the buffer "
                                   "and before the device reads it.");
        } else if (n > 0) {
            report = pa_sim_report(
                s, err, first, last, n,
                "the device wrote cache lines the CPU changed and never flushed; a cache "
                "eviction or invalidate() would write the CPU's copy over the device's data",
                "Flush the buffer before handing it to the device, and do not write it while "
                "the device owns it.");
        }
    }
    /* coherent lines live in CPU memory; the others on the device side */
    uint8_t *p = buf;
    for (size_t o = start; o < start + len;) {
        size_t line = o / PA_LINE;
        bool coh = (pa_sim_flags(s, line) & SIM_COHERENT) != 0 || s->dev == NULL;
        size_t end = o;
        while (end < start + len && (((pa_sim_flags(s, end / PA_LINE) & SIM_COHERENT) != 0 ||
                                      s->dev == NULL) == coh)) {
            end = (end / PA_LINE + 1) * PA_LINE;
        }
        if (end > start + len) {
            end = start + len;
        }
        uint8_t *mem = (coh ? s->cpu : s->dev) + o;
        if (write) {
            /* before the device first changes a line, remember what CPU and
             * memory agreed on (the device side): dirtiness is measured from it */
            for (size_t l = o / PA_LINE; !coh && l * PA_LINE < end; l++) {
                if ((s->lines[l] & SIM_DEVWROTE) == 0) {
                    memcpy(s->agreed + l * PA_LINE, s->dev + l * PA_LINE, PA_LINE);
                    s->lines[l] |= SIM_DEVWROTE;
                    s->pgdirty[l / SIM_PG] = 1;
                }
            }
            /* the source may be a Buffer over this very memory */
            memmove(mem, p + (o - start), end - o);
        } else {
            memmove(p + (o - start), mem, end - o);
        }
        o = end;
    }
    pthread_mutex_unlock(&be->lock);
    pa_range_release(be, &r);
    return report;
}

static void pa_sim_info(pa_backend *be, pa_info *info)
{
    pa_sim *s = be->priv;
    pa_tlsf_stats st;
    pa_tlsf_get_stats(s->tlsf, &st);
    info->total = st.total;
    info->free = st.free;
    info->largest_free = st.largest_free;
    info->line_size = PA_LINE;
    info->lowest = s->base;
    info->highest = s->base + s->size - 1;
    info->base_address = s->base;
}

static void pa_sim_close(pa_backend *be)
{
    pa_sim *s = be->priv;
    pa_retire(s->cpu, s->size); /* arrays may still point here: see pa_retire */
    s->cpu = NULL;
    pa_sim_release(s);
    be->priv = NULL;
}

static int pa_sim_probe(const char *arg, pa_err *why)
{
    (void)arg;
    pa_seterr(why, 0, "usable: simulated device for development and CI (the default only where "
                      "there is no /proc/device-tree)");
    return 0;
}

const pa_ops pa_sim_ops = {
    .name = "sim",
    .open = pa_sim_open,
    .own_gil_work = true, /* zeroing via pa_prep; free hands pages back (madvise) */
    .alloc = pa_sim_alloc,
    .free = pa_sim_free,
    .sync = pa_sim_sync,
    .sync_runs = pa_sim_sync_runs,
    /* a run's copy costs its lines plus about 2 more (bench/crossover.py:
     * medians 0.8-2.7 on this machine; the scattered lines miss the cache
     * on both sides, where the contiguous copy streams) */
    .sync_run_lines = 2,
    .info = pa_sim_info,
    .close = pa_sim_close,
    .probe = pa_sim_probe,
    .device_access = pa_sim_device_access,
};
