/* Plain-C test of the region index (regidx.c), which makes the hugepage
 * backend's allocation O(1) whatever the number of regions (issue 13): the
 * work per allocation (regions tried plus bitmap words read) is counted as
 * test_tlsf.c counts TLSF steps, with 8 and with 1000 regions, and must not
 * grow; blocks never overlap; a refusal happens only when no region's largest
 * free class guarantees the request. */
#define _GNU_SOURCE
#include "ctest.h"
#include "regidx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define REGION ((size_t)2 << 20)
#define GRANULE 64

typedef struct live {
    pa_regidx_node *n;
    pa_tlsf_block *b;
    size_t off, got;
} live;

/* fills nreg regions with 64-byte, 4096-aligned blocks (the hugepage case of
 * the issue), then measures the worst and total work of allocate+free */
static void steps_with(unsigned nreg, uint64_t *worst, uint64_t *sum, unsigned *rounds)
{
    pa_regidx x;
    pa_regidx_init(&x, GRANULE);
    pa_regidx_node *nodes = calloc(nreg, sizeof(*nodes));
    for (unsigned i = 0; i < nreg; i++) {
        pa_regidx_add(&x, &nodes[i], pa_tlsf_create(REGION, GRANULE));
    }
    size_t per = REGION / 4096, cap = (size_t)nreg * per;
    live *l = calloc(cap, sizeof(*l));
    size_t nl = 0;
    int rc = 0;
    /* leave the last page of each region free-ish by filling 90% */
    while (nl < cap * 9 / 10) {
        l[nl].n = pa_regidx_alloc(&x, 64, 4096, &l[nl].off, &l[nl].got, &l[nl].b, &rc);
        if (l[nl].n == NULL) {
            break;
        }
        nl++;
    }
    *worst = 0;
    *sum = 0;
    *rounds = 0;
    unsigned seed = 7;
    for (int r = 0; r < 20000 && nl > 0; r++) {
        size_t victim = (size_t)rand_r(&seed) % nl;
        pa_tlsf_free(l[victim].n->tlsf, l[victim].b);
        pa_regidx_update(&x, l[victim].n);
        uint64_t before = x.steps;
        l[victim].n = pa_regidx_alloc(&x, 64, 4096, &l[victim].off, &l[victim].got, &l[victim].b,
                                      &rc);
        uint64_t d = x.steps - before;
        *sum += d;
        if (d > *worst) {
            *worst = d;
        }
        (*rounds)++;
        if (l[victim].n == NULL) {
            l[victim] = l[--nl];
        }
    }
    for (size_t i = 0; i < nl; i++) {
        pa_tlsf_free(l[i].n->tlsf, l[i].b);
    }
    for (unsigned i = 0; i < nreg; i++) {
        pa_tlsf_destroy(nodes[i].tlsf);
    }
    free(l);
    free(nodes);
}

static int cmp_start(const void *a, const void *b)
{
    const live *x = a, *y = b;
    if (x->n != y->n) {
        return x->n < y->n ? -1 : 1;
    }
    return x->off < y->off ? -1 : x->off > y->off;
}

int main(void)
{
    uint64_t w8, s8, w1000, s1000;
    unsigned r8, r1000;
    steps_with(8, &w8, &s8, &r8);
    steps_with(1000, &w1000, &s1000, &r1000);
    printf("# worst steps per alloc: %llu with 8 regions, %llu with 1000; mean %.2f vs %.2f\n",
           (unsigned long long)w8, (unsigned long long)w1000, (double)s8 / r8,
           (double)s1000 / r1000);
    check(r8 > 0 && r1000 > 0 && w1000 <= w8 && w1000 <= 2 * PA_REGIDX_WORDS + 4,
          "o(1): work per alloc does not grow with the number of regions",
          "worst %llu with 8 regions, %llu with 1000", (unsigned long long)w8,
          (unsigned long long)w1000);

    /* random churn over 64 regions of mixed sizes: no overlap, and a refusal
     * only when no region's largest class guarantees the request */
    enum { NREG = 64, OPS = 40000, MAXLIVE = 4000 };
    pa_regidx x;
    pa_regidx_init(&x, GRANULE);
    static pa_regidx_node nodes[NREG];
    for (unsigned i = 0; i < NREG; i++) {
        pa_regidx_add(&x, &nodes[i], pa_tlsf_create(REGION * (1 + i % 3), GRANULE));
    }
    static live l[MAXLIVE];
    size_t nl = 0, refusals = 0, bad_refusals = 0, allocs = 0;
    unsigned seed = 99;
    for (int op = 0; op < OPS; op++) {
        if (nl == MAXLIVE || (nl > 0 && rand_r(&seed) % 3 == 0)) {
            size_t v = (size_t)rand_r(&seed) % nl;
            pa_tlsf_free(l[v].n->tlsf, l[v].b);
            pa_regidx_update(&x, l[v].n);
            l[v] = l[--nl];
            continue;
        }
        size_t size = 64 + (size_t)rand_r(&seed) % (rand_r(&seed) % 8 == 0 ? 3u << 20 : 65536u);
        size_t align = (size_t)64 << (rand_r(&seed) % 8);
        int rc;
        l[nl].n = pa_regidx_alloc(&x, size, align, &l[nl].off, &l[nl].got, &l[nl].b, &rc);
        if (l[nl].n == NULL) {
            refusals++;
            unsigned k = pa_tlsf_search_key(GRANULE, size, align);
            for (unsigned i = 0; i < NREG; i++) {
                if (k != PA_TLSF_NO_KEY && pa_tlsf_top_key(nodes[i].tlsf) >= k) {
                    bad_refusals++;
                    break;
                }
            }
            continue;
        }
        allocs++;
        if (l[nl].off % align != 0 || l[nl].got < size) {
            bad_refusals += 1000000; /* reported below */
        }
        nl++;
    }
    qsort(l, nl, sizeof(*l), cmp_start);
    size_t overlaps = 0;
    for (size_t i = 1; i < nl; i++) {
        overlaps += l[i].n == l[i - 1].n && l[i - 1].off + l[i - 1].got > l[i].off;
    }
    printf("# churn: %zu allocations, %zu refusals, %zu live at the end\n", allocs, refusals, nl);
    check(allocs > 1000 && overlaps == 0 && bad_refusals == 0,
          "churn over 64 regions: aligned, no overlap, refusals only when nothing is guaranteed",
          "%zu allocs, %zu overlaps, %zu bad refusals", allocs, overlaps, bad_refusals);
    for (size_t i = 0; i < nl; i++) {
        pa_tlsf_free(l[i].n->tlsf, l[i].b);
        pa_regidx_update(&x, l[i].n);
    }
    int all_free = 1;
    for (unsigned i = 0; i < NREG; i++) {
        pa_tlsf_stats st;
        pa_tlsf_get_stats(nodes[i].tlsf, &st);
        all_free &= st.used == 0 && pa_tlsf_top_key(nodes[i].tlsf) == nodes[i].key;
        pa_tlsf_destroy(nodes[i].tlsf);
    }
    check(all_free, "every region free again and indexed under its current class", "no");
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
