/* An index of TLSF allocators (one per region) by the size class of their
 * largest free block, so that a backend with many regions allocates in O(1)
 * whatever the number of regions and live blocks: the request goes to a
 * region whose largest class is the smallest one that surely holds it (one
 * search), or, when none does, to a bounded number of regions just below
 * that class (the TLSF's own fallback may still fit there), else nowhere. */
#ifndef PA_REGIDX_H
#define PA_REGIDX_H

#include "tlsf.h"

#include <stdint.h>

/* tries of regions below the guaranteed class before giving up */
#define PA_REGIDX_FALLBACK 2

typedef struct pa_regidx_node {
    pa_tlsf *tlsf;
    unsigned key; /* pa_tlsf_top_key when last indexed */
    struct pa_regidx_node *prev, *next;
} pa_regidx_node;

#define PA_REGIDX_WORDS ((PA_TLSF_KEYS + 63u) / 64u)

typedef struct pa_regidx {
    uint64_t map[PA_REGIDX_WORDS]; /* bit k: heads[k] is not empty */
    pa_regidx_node *heads[PA_TLSF_KEYS];
    size_t granule; /* shared by every indexed allocator */
    uint64_t steps; /* test hook: allocators tried plus bitmap words read */
} pa_regidx;

void pa_regidx_init(pa_regidx *x, size_t granule);
void pa_regidx_add(pa_regidx *x, pa_regidx_node *n, pa_tlsf *t);
void pa_regidx_remove(pa_regidx *x, pa_regidx_node *n);
/* after a free in n's allocator (pa_regidx_alloc updates its own) */
void pa_regidx_update(pa_regidx *x, pa_regidx_node *n);
/* As pa_tlsf_alloc over all indexed allocators: the node it came from, or
 * NULL (*rc: -ENOMEM when nothing fits, else the TLSF's error). */
pa_regidx_node *pa_regidx_alloc(pa_regidx *x, size_t size, size_t align, size_t *offset,
                                size_t *got, pa_tlsf_block **handle, int *rc);

#endif
