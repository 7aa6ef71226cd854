/* Plain-C tests of the TLSF offset allocator (src/core/tlsf.c) against a
 * model: a map of which granules are live. They pin down no overlap,
 * alignment, coalescing, exact stats, error codes, overflow safety and a
 * constant bound on the work per call (counted, never timed). */
#define _GNU_SOURCE
#include "tlsf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define G ((size_t)64)
#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

#include "ctest.h"

/* xorshift64*: the same sequence on every machine and libc */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static size_t rng_below(size_t n)
{
    return (size_t)(rng() % n);
}

/* The model: one byte per granule of the region, 1 where a live block is. */
typedef struct model_block {
    pa_tlsf_block *h;
    size_t off, size;
} model_block;

typedef struct model {
    size_t total, used;
    unsigned char *map;
    model_block *live;
    size_t nlive, cap;
} model;

static void model_init(model *m, size_t total, size_t cap)
{
    m->total = total;
    m->used = 0;
    m->map = calloc(total / G, 1);
    m->live = calloc(cap, sizeof(*m->live));
    m->nlive = 0;
    m->cap = cap;
    if (m->map == NULL || m->live == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
}

static void model_fini(model *m)
{
    free(m->map);
    free(m->live);
}

/* Records a new block; false if it leaves the region or overlaps a live one. */
static int model_add(model *m, pa_tlsf_block *h, size_t off, size_t size)
{
    if (off % G != 0 || size % G != 0 || off > m->total || size > m->total - off ||
        m->nlive == m->cap) {
        return 0;
    }
    for (size_t i = off / G; i < (off + size) / G; i++) {
        if (m->map[i]) {
            return 0;
        }
    }
    memset(m->map + off / G, 1, size / G);
    m->live[m->nlive++] = (model_block){h, off, size};
    m->used += size;
    return 1;
}

static model_block model_take(model *m, size_t i)
{
    model_block b = m->live[i];
    m->live[i] = m->live[--m->nlive];
    memset(m->map + b.off / G, 0, b.size / G);
    m->used -= b.size;
    return b;
}

/* Longest run of free granules: what a perfectly coalescing allocator has
 * as its largest free block. */
static size_t model_largest_free(const model *m)
{
    size_t best = 0, run = 0;
    for (size_t i = 0; i < m->total / G; i++) {
        run = m->map[i] ? 0 : run + 1;
        if (run > best) {
            best = run;
        }
    }
    return best * G;
}

static int stats_match(pa_tlsf *t, const model *m, int with_largest, char *why, size_t whylen)
{
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    size_t lf = with_largest ? model_largest_free(m) : st.largest_free;
    snprintf(why, whylen,
             "tlsf total %zu used %zu free %zu blocks %zu largest %zu; model %zu %zu %zu %zu %zu",
             st.total, st.used, st.free, st.blocks, st.largest_free, m->total, m->used,
             m->total - m->used, m->nlive, lf);
    return st.total == m->total && st.used == m->used && st.free == m->total - m->used &&
           st.blocks == m->nlive && st.largest_free == lf;
}

static void test_create(void)
{
    pa_tlsf *t = pa_tlsf_create(MiB, G);
    if (t == NULL) {
        check(0, "create", "out of memory");
        return;
    }
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    check(st.total == MiB && st.free == MiB && st.used == 0 && st.blocks == 0 &&
              st.largest_free == MiB,
          "create: an empty region is one free block", "total %zu free %zu largest %zu", st.total,
          st.free, st.largest_free);
    pa_tlsf_destroy(t);

    t = pa_tlsf_create(1000, G);
    pa_tlsf_get_stats(t, &st);
    check(st.total == 960 && st.largest_free == 960, "create: size rounds down to the granule",
          "total %zu", st.total);
    pa_tlsf_destroy(t);

    t = pa_tlsf_create(10, G);
    size_t off, got;
    pa_tlsf_block *h;
    int rc = pa_tlsf_alloc(t, 1, 0, &off, &got, &h);
    check(t != NULL && rc == -ENOMEM, "create: a region below one granule holds nothing",
          "rc %d", rc);
    pa_tlsf_destroy(t);

    check(pa_tlsf_create(MiB, 0) == NULL && pa_tlsf_create(MiB, 48) == NULL,
          "create: a granule that is not a power of two is refused", "accepted");
    pa_tlsf_destroy(NULL);
}

static void test_einval(void)
{
    pa_tlsf *t = pa_tlsf_create(MiB, G);
    size_t off = 7, got = 7;
    pa_tlsf_block *h = NULL;
    int rc = pa_tlsf_alloc(t, 0, G, &off, &got, &h);
    check(rc == -EINVAL, "alloc: size 0 is -EINVAL", "rc %d", rc);
    static const size_t bad[] = {3, 48, 65, 96, 1000, 3 * MiB};
    int ok = 1;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rc = pa_tlsf_alloc(t, G, bad[i], &off, &got, &h);
        if (rc != -EINVAL) {
            ok = 0;
            printf("# align %zu gave %d\n", bad[i], rc);
        }
    }
    rc = pa_tlsf_alloc(t, G, SIZE_MAX, &off, &got, &h);
    ok = ok && rc == -EINVAL;
    check(ok, "alloc: an alignment that is not a power of two is -EINVAL", "see above");
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    check(st.used == 0 && st.blocks == 0 && st.largest_free == MiB,
          "alloc: refused requests change nothing", "used %zu blocks %zu", st.used, st.blocks);

    rc = pa_tlsf_alloc(t, 1, 1, &off, &got, &h);
    check(rc == 0 && got == G && off % G == 0 && pa_tlsf_size(h) == G && pa_tlsf_offset(h) == off,
          "alloc: sizes and alignments round up to the granule", "rc %d got %zu off %zu", rc, got,
          off);
    pa_tlsf_free(t, h);
    pa_tlsf_free(t, NULL);
    pa_tlsf_destroy(t);
}

/* Every power-of-two alignment from 64 to 1 MiB, on a region made ragged
 * first so that aligned offsets are not simply the next free offset. */
static void test_alignment(void)
{
    const size_t total = 256 * MiB + 5 * G;
    pa_tlsf *t = pa_tlsf_create(total, G);
    model m;
    model_init(&m, total, 4096);
    int ok = 1;
    char why[256] = "";
    for (int round = 0; round < 4 && ok; round++) {
        for (size_t align = G; align <= MiB && ok; align <<= 1) {
            for (int k = 0; k < 6 && ok; k++) {
                size_t off, got;
                pa_tlsf_block *h;
                size_t pad = G * (1 + rng_below(7)); /* odd filler moves the next free offset */
                if (pa_tlsf_alloc(t, pad, G, &off, &got, &h) != 0 || !model_add(&m, h, off, got)) {
                    ok = 0;
                    snprintf(why, sizeof(why), "filler failed");
                    break;
                }
                size_t size = 1 + rng_below(align * 2);
                int rc = pa_tlsf_alloc(t, size, align, &off, &got, &h);
                if (rc != 0 || off % align != 0 || got < size || got % G != 0 ||
                    !model_add(&m, h, off, got)) {
                    ok = 0;
                    snprintf(why, sizeof(why), "align %zu size %zu: rc %d off %zu got %zu", align,
                             size, rc, off, got);
                }
            }
        }
        /* free a random half so later rounds land in gaps */
        for (size_t i = 0; i < m.nlive / 2; i++) {
            model_block b = model_take(&m, rng_below(m.nlive));
            pa_tlsf_free(t, b.h);
        }
    }
    check(ok, "alloc: offsets honour every alignment 64..1MiB, blocks never overlap", "%s", why);
    ok = stats_match(t, &m, 1, why, sizeof(why));
    check(ok, "alloc: alignment gaps stay free and counted", "%s", why);
    while (m.nlive > 0) {
        pa_tlsf_free(t, model_take(&m, rng_below(m.nlive)).h);
    }
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    check(st.largest_free == total && st.used == 0 && st.blocks == 0,
          "free: alignment gaps coalesce back into one block", "largest %zu of %zu",
          st.largest_free, total);

    model_fini(&m);
    pa_tlsf_destroy(t);

    /* Requests that fit a free region only at its start: size + align -
     * granule exceeds the region, or the size is not a size-class boundary
     * (a fresh hugepage region of 65 2 MiB pages). */
    static const size_t fit[][2] = {
        {32 * MiB, 32 * MiB}, {130 * MiB, 2 * MiB}, {130 * MiB, G}, {130 * MiB - G, 64 * MiB}};
    int ok2 = 1;
    for (size_t i = 0; i < sizeof(fit) / sizeof(fit[0]); i++) {
        size_t region = fit[i][0] > 32 * MiB ? 130 * MiB : fit[i][0];
        pa_tlsf *r = pa_tlsf_create(region, G);
        size_t off, got;
        pa_tlsf_block *h;
        int rc = pa_tlsf_alloc(r, fit[i][0], fit[i][1], &off, &got, &h);
        if (rc != 0 || off != 0 || got != fit[i][0]) {
            ok2 = 0;
            printf("# %zu aligned %zu in %zu: rc %d off %zu\n", fit[i][0], fit[i][1], region,
                   rc, off);
        }
        pa_tlsf_destroy(r);
    }
    check(ok2, "alloc: the whole of a free region, however aligned", "see above");
}

/* Fill the region with small blocks, free them in random order: all of it
 * must come back as one block. The size is deliberately not a class boundary. */
static void test_coalesce(void)
{
    const size_t total = 4 * MiB + 7 * G;
    pa_tlsf *t = pa_tlsf_create(total, G);
    model m;
    model_init(&m, total, total / G);
    size_t off, got;
    pa_tlsf_block *h;
    int ok = 1;
    while (pa_tlsf_alloc(t, G * (1 + rng_below(16)), G, &off, &got, &h) == 0) {
        ok = ok && model_add(&m, h, off, got);
    }
    while (pa_tlsf_alloc(t, G, G, &off, &got, &h) == 0) {
        ok = ok && model_add(&m, h, off, got);
    }
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    check(ok && st.free == 0 && st.used == total && st.largest_free == 0 && st.blocks == m.nlive,
          "alloc: small blocks fill the region exactly", "free %zu used %zu blocks %zu/%zu",
          st.free, st.used, st.blocks, m.nlive);

    int rc = pa_tlsf_alloc(t, G, G, &off, &got, &h);
    pa_tlsf_stats st2;
    pa_tlsf_get_stats(t, &st2);
    check(rc == -ENOMEM && st2.used == st.used && st2.blocks == st.blocks,
          "alloc: a full region gives -ENOMEM and stays as it was", "rc %d", rc);

    size_t n = m.nlive;
    while (m.nlive > 0) {
        pa_tlsf_free(t, model_take(&m, rng_below(m.nlive)).h);
    }
    pa_tlsf_get_stats(t, &st);
    check(st.free == total && st.largest_free == total && st.blocks == 0,
          "free: random-order frees coalesce into one block", "%zu blocks freed, largest %zu",
          n, st.largest_free);
    rc = pa_tlsf_alloc(t, total, G, &off, &got, &h);
    check(rc == 0 && off == 0 && got == total, "alloc: then the whole region is one allocation",
          "rc %d off %zu got %zu", rc, off, got);
    model_fini(&m);
    pa_tlsf_destroy(t);
}

/* 200000 random operations with up to ~5000 live blocks, checked op by op
 * against the model; largest_free is checked every 500 ops (it needs a scan
 * of the model). */
static void test_random(void)
{
    const size_t total = 64 * MiB;
    const size_t ops = 200000;
    pa_tlsf *t = pa_tlsf_create(total, G);
    model m;
    model_init(&m, total, 8192);
    int ok_overlap = 1, ok_stats = 1, ok_align = 1, ok_fit = 1, ok_handle = 1;
    char why[256] = "", why_fit[256] = "";
    size_t nomem = 0, allocs = 0, peak = 0;
    for (size_t op = 0; op < ops; op++) {
        /* the target live count sweeps 0..5000 and back, so both the filling
         * and the draining side are exercised */
        size_t phase = op % 50000;
        size_t target = phase < 25000 ? phase / 5 : (50000 - phase) / 5;
        size_t bias = m.nlive < target ? 70 : 30;
        int do_alloc = m.nlive == 0 || (m.nlive < 5000 && rng_below(100) < bias);
        if (do_alloc) {
            size_t r = rng_below(100), size, align = G;
            if (r < 70) {
                size = 1 + rng_below(4 * KiB);
            } else if (r < 95) {
                size = 1 + rng_below(64 * KiB);
            } else {
                size = 1 + rng_below(256 * KiB);
            }
            if (rng_below(5) == 0) {
                align = (size_t)128 << rng_below(10); /* 128 .. 64 KiB */
            }
            size_t off, got;
            pa_tlsf_block *h;
            pa_tlsf_stats before;
            pa_tlsf_get_stats(t, &before);
            int rc = pa_tlsf_alloc(t, size, align, &off, &got, &h);
            allocs++;
            if (rc == 0) {
                if (off % align != 0) {
                    ok_align = 0;
                }
                if (pa_tlsf_offset(h) != off || pa_tlsf_size(h) != got ||
                    got != (size + G - 1) / G * G) {
                    ok_handle = 0;
                }
                if (!model_add(&m, h, off, got)) {
                    ok_overlap = 0;
                    snprintf(why, sizeof(why), "op %zu: [%zu, +%zu) overlaps a live block", op,
                             off, got);
                }
            } else {
                nomem++;
                /* a good fit: refusing is only allowed when no free block is
                 * as large as the request plus its alignment slack rounded up
                 * by one size class (at most 1/32 more) */
                size_t need = (size + G - 1) / G * G + align - G;
                if (rc != -ENOMEM || before.largest_free >= need + need / 32 + G) {
                    ok_fit = 0;
                    snprintf(why_fit, sizeof(why_fit),
                             "op %zu: rc %d for %zu align %zu with largest free %zu", op, rc,
                             size, align, before.largest_free);
                }
            }
        } else {
            model_block b = model_take(&m, rng_below(m.nlive));
            pa_tlsf_free(t, b.h);
        }
        if (m.nlive > peak) {
            peak = m.nlive;
        }
        if (ok_stats && !stats_match(t, &m, op % 500 == 0, why, sizeof(why))) {
            ok_stats = 0;
            printf("# op %zu: %s\n", op, why);
        }
    }
    printf("# %zu ops, %zu allocs, %zu ENOMEM, peak %zu live blocks\n", ops, allocs, nomem, peak);
    check(ok_overlap, "random: live blocks never overlap (model)", "%s", why);
    check(ok_align, "random: every aligned allocation is aligned", "misaligned");
    check(ok_handle, "random: handle offset/size match what alloc returned", "mismatch");
    check(ok_stats, "random: used/free/blocks/largest_free exactly match the model",
          "see above");
    check(ok_fit, "random: -ENOMEM only when no free block fits the request", "%s", why_fit);
    check(peak >= 4000, "random: the workload reached thousands of live blocks", "peak %zu", peak);
    while (m.nlive > 0) {
        pa_tlsf_free(t, model_take(&m, rng_below(m.nlive)).h);
    }
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    check(st.largest_free == total && st.blocks == 0, "random: everything coalesces at the end",
          "largest %zu", st.largest_free);
    model_fini(&m);
    pa_tlsf_destroy(t);
}

/* Sizes at the top of size_t must be refused or served, never wrap. */
static void test_overflow(void)
{
    size_t off, got;
    pa_tlsf_block *h;
    pa_tlsf *t = pa_tlsf_create(MiB, G);
    static const size_t sizes[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - G + 2, SIZE_MAX / 2 + 1,
                                   MiB + 1};
    int ok = 1;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        int rc = pa_tlsf_alloc(t, sizes[i], G, &off, &got, &h);
        if (rc != -ENOMEM) {
            ok = 0;
            printf("# size %zu gave %d\n", sizes[i], rc);
        }
    }
    check(ok, "overflow: sizes near SIZE_MAX give -ENOMEM", "see above");
    const size_t top_align = SIZE_MAX / 2 + 1; /* the largest power of two */
    int rc1 = pa_tlsf_alloc(t, G, top_align, &off, &got, &h);
    size_t off1 = off;
    int rc2 = pa_tlsf_alloc(t, G, top_align, &off, &got, &h);
    check(rc1 == 0 && off1 == 0 && rc2 == -ENOMEM,
          "overflow: the largest alignment fits only at offset 0", "rc %d off %zu then rc %d", rc1,
          off1, rc2);
    pa_tlsf_destroy(t);

    /* a region spanning nearly all of size_t: offsets and sizes at the top */
    const size_t huge = SIZE_MAX - 3 * G;
    t = pa_tlsf_create(huge, G);
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    size_t total = st.total;
    int rc = pa_tlsf_alloc(t, SIZE_MAX - G + 2, G, &off, &got, &h);
    check(total == (huge & ~(G - 1)) && rc == -ENOMEM, "overflow: a size_t-sized region",
          "total %zu rc %d", total, rc);
    /* top/2 aligned to top, then the pieces around it: every block's
     * size + align - granule overflows or exceeds the region */
    pa_tlsf_block *hb[4];
    const size_t want_off[4] = {0, top_align, G, top_align + top_align / 2};
    const size_t want_size[4] = {G, top_align / 2, top_align - G, total - top_align - top_align / 2};
    const size_t want_align[4] = {G, top_align, G, G};
    int ok2 = 1;
    for (int i = 0; i < 4; i++) {
        rc = pa_tlsf_alloc(t, want_size[i], want_align[i], &off, &got, &hb[i]);
        if (rc != 0 || off != want_off[i] || got != want_size[i]) {
            ok2 = 0;
            printf("# block %d: rc %d off %zu got %zu\n", i, rc, off, got);
        }
    }
    check(ok2, "overflow: aligned blocks at the top of size_t", "see above");
    pa_tlsf_get_stats(t, &st);
    check(st.used == total && st.free == 0 && st.largest_free == 0 && st.blocks == 4,
          "overflow: a full size_t-sized region", "used %zu free %zu", st.used, st.free);
    pa_tlsf_free(t, hb[1]);
    pa_tlsf_free(t, hb[3]);
    pa_tlsf_free(t, hb[0]);
    pa_tlsf_free(t, hb[2]);
    pa_tlsf_get_stats(t, &st);
    rc = pa_tlsf_alloc(t, total, top_align, &off, &got, &h);
    check(st.largest_free == total && rc == 0 && off == 0 && got == total,
          "overflow: it coalesces and serves all of itself", "largest %zu rc %d", st.largest_free,
          rc);
    pa_tlsf_destroy(t);
}

/* The work per call is bounded by a constant: the same bound with 100 and
 * with 20000 blocks, including the worst case for the fallback scan (a size
 * class full of blocks that are all misaligned for the request). */
static uint64_t worst_steps(size_t nblocks)
{
    const size_t total = nblocks * 2 * G;
    pa_tlsf *t = pa_tlsf_create(total, G);
    pa_tlsf_block **hs = calloc(nblocks, sizeof(*hs));
    size_t off, got;
    uint64_t worst = 0, s;
    for (size_t i = 0; i < nblocks; i++) {
        s = pa_tlsf_steps(t);
        if (pa_tlsf_alloc(t, 2 * G, G, &off, &got, &hs[i]) != 0) {
            worst = UINT64_MAX;
        }
        worst = pa_tlsf_steps(t) - s > worst ? pa_tlsf_steps(t) - s : worst;
    }
    /* free the odd blocks: free 128-byte blocks at offsets 128 mod 256 */
    for (size_t i = 1; i < nblocks; i += 2) {
        pa_tlsf_free(t, hs[i]);
    }
    for (int k = 0; k < 100; k++) {
        pa_tlsf_block *h;
        s = pa_tlsf_steps(t);
        int rc = pa_tlsf_alloc(t, 2 * G, 4 * G, &off, &got, &h);
        if (rc != -ENOMEM) {
            worst = UINT64_MAX;
        }
        worst = pa_tlsf_steps(t) - s > worst ? pa_tlsf_steps(t) - s : worst;
        s = pa_tlsf_steps(t);
        rc = pa_tlsf_alloc(t, 2 * G, G, &off, &got, &h);
        worst = pa_tlsf_steps(t) - s > worst ? pa_tlsf_steps(t) - s : worst;
        if (rc == 0) {
            pa_tlsf_free(t, h);
        }
    }
    for (size_t i = 0; i < nblocks; i += 2) {
        pa_tlsf_free(t, hs[i]);
    }
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    if (st.largest_free != total) {
        worst = UINT64_MAX;
    }
    free(hs);
    pa_tlsf_destroy(t);
    return worst;
}

static void test_constant_work(void)
{
    uint64_t small = worst_steps(100), big = worst_steps(20000);
    printf("# worst steps per alloc: %llu with 100 blocks, %llu with 20000\n",
           (unsigned long long)small, (unsigned long long)big);
    check(big <= 40 && small <= 40, "o(1): work per alloc is bounded whatever the block count",
          "%llu / %llu steps", (unsigned long long)small, (unsigned long long)big);
}

/* address_bits: blocks that must end by a limit are placed below it, the
 * lowest fitting stretch first, and refused (-ENOMEM, nothing changed) when
 * nothing below fits, even with room above. */
static void test_below_limit(void)
{
    const size_t total = 64 * KiB;
    pa_tlsf *t = pa_tlsf_create(total, G);
    model m;
    model_init(&m, total, total / G);
    size_t off, got;
    pa_tlsf_block *h, *hs[8];
    int ok = 1;
    /* fill [0, 16K) with 4K blocks, then free the second one */
    for (int i = 0; i < 4; i++) {
        ok = ok && pa_tlsf_alloc_below(t, 4 * KiB, G, 16 * KiB, &off, &got, &hs[i]) == 0 &&
             off == (size_t)i * 4 * KiB && got == 4 * KiB;
    }
    check(ok, "below: first fit in address order fills the low end", "off %zu", off);
    pa_tlsf_free(t, hs[1]);
    int rc = pa_tlsf_alloc_below(t, 2 * KiB, 1 * KiB, 16 * KiB, &off, &got, &h);
    check(rc == 0 && off == 4 * KiB && off + got <= 16 * KiB,
          "below: the freed hole under the limit is reused", "rc %d off %zu", rc, off);
    pa_tlsf_free(t, h);
    rc = pa_tlsf_alloc_below(t, 8 * KiB, G, 16 * KiB, &off, &got, &h);
    pa_tlsf_stats st;
    pa_tlsf_get_stats(t, &st);
    check(rc == -ENOMEM && st.used == 12 * KiB && st.blocks == 3,
          "below: no room under the limit is -ENOMEM although 48K are free above",
          "rc %d used %zu", rc, st.used);
    rc = pa_tlsf_alloc_below(t, 4 * KiB, 4 * KiB, 16 * KiB, &off, &got, &h);
    check(rc == 0 && off == 4 * KiB && off + got <= 16 * KiB,
          "below: a block may end exactly at the limit's stretch", "rc %d off %zu", rc, off);
    pa_tlsf_free(t, h);
    rc = pa_tlsf_alloc_below(t, 4 * KiB, G, 10 * KiB, &off, &got, &h);
    check(rc == 0 && off == 4 * KiB && off + got <= 10 * KiB,
          "below: a limit that is not a block boundary", "rc %d off %zu", rc, off);
    pa_tlsf_free(t, h);
    rc = pa_tlsf_alloc_below(t, 4 * KiB, G, 6 * KiB, &off, &got, &h);
    check(rc == -ENOMEM, "below: the limit cuts the hole short: -ENOMEM", "rc %d", rc);
    rc = pa_tlsf_alloc_below(t, 4 * KiB, G, SIZE_MAX, &off, &got, &h);
    check(rc == 0 && got == 4 * KiB, "below: a limit beyond the region is no limit",
          "rc %d", rc);
    pa_tlsf_free(t, h);
    /* random sizes and limits against the model: never past the limit, no overlap */
    for (int i = 0; i < 4; i++) {
        pa_tlsf_free(t, hs[i]);
    }
    for (int i = 0; i < 2000 && ok; i++) {
        size_t lim = G * (1 + rng_below(total / G));
        size_t size = G * (1 + rng_below(32));
        rc = pa_tlsf_alloc_below(t, size, G << rng_below(4), lim, &off, &got, &h);
        if (rc == 0) {
            ok = off + got <= lim && model_add(&m, h, off, got);
        } else {
            ok = rc == -ENOMEM;
        }
        if (m.nlive > 0 && rng_below(3) == 0) {
            pa_tlsf_free(t, model_take(&m, rng_below(m.nlive)).h);
        }
    }
    check(ok, "below: 2000 random limits, never a byte past one, no overlap", "at off %zu", off);
    while (m.nlive > 0) {
        pa_tlsf_free(t, model_take(&m, 0).h);
    }
    pa_tlsf_get_stats(t, &st);
    check(st.free == total && st.blocks == 0, "below: everything coalesces back", "free %zu",
          st.free);
    model_fini(&m);
    pa_tlsf_destroy(t);
}

int main(void)
{
    test_create();
    test_einval();
    test_alignment();
    test_coalesce();
    test_random();
    test_overflow();
    test_below_limit();
    test_constant_work();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
