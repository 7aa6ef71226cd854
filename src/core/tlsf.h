/* O(1) offset allocator (two-level segregated fit) for backends that carve
 * blocks out of one region. It keeps its bookkeeping outside the region and
 * never touches the memory it manages, so it works on uncached mappings. */
#ifndef PA_TLSF_H
#define PA_TLSF_H

#include <stddef.h>
#include <stdint.h>

typedef struct pa_tlsf pa_tlsf;
typedef struct pa_tlsf_block pa_tlsf_block; /* opaque handle of a live block */

typedef struct pa_tlsf_stats {
    size_t total, used, free, largest_free, blocks;
} pa_tlsf_stats;

/* Manages offsets [0, size); granule is a power of two; size is rounded down
 * to a multiple of granule. Returns NULL on out of memory. */
pa_tlsf *pa_tlsf_create(size_t size, size_t granule);
void pa_tlsf_destroy(pa_tlsf *t);

/* size > 0, rounded up to the granule; align a power of two (values below the
 * granule mean the granule). 0 on success with *offset, *handle and *got (the
 * rounded size); -ENOMEM when no free block fits; -EINVAL on bad arguments. */
int pa_tlsf_alloc(pa_tlsf *t, size_t size, size_t align, size_t *offset, size_t *got,
                  pa_tlsf_block **handle);
/* As pa_tlsf_alloc, but the block ends at or below offset limit (every byte
 * below it): the lowest such stretch, found in address order. limit >= the
 * region's size is no constraint (pa_tlsf_alloc, O(1)). */
int pa_tlsf_alloc_below(pa_tlsf *t, size_t size, size_t align, size_t limit, size_t *offset,
                        size_t *got, pa_tlsf_block **handle);
void pa_tlsf_free(pa_tlsf *t, pa_tlsf_block *handle);
size_t pa_tlsf_offset(const pa_tlsf_block *handle);
size_t pa_tlsf_size(const pa_tlsf_block *handle);
void pa_tlsf_get_stats(const pa_tlsf *t, pa_tlsf_stats *s);
/* Size-class keys, for indexes over several allocators (regidx.h): keys are
 * ordered like the classes, 0 means "no free block". top_key: the highest
 * class holding a free block. search_key: the class pa_tlsf_alloc's
 * guaranteed search starts at for (size, align) with this granule; an
 * allocator whose top_key is at least that serves the request in one search.
 * PA_TLSF_NO_KEY: no class can guarantee it (the fallback scan may still fit). */
#define PA_TLSF_NO_KEY 0xffffffffu
#define PA_TLSF_KEYS (64u * 32u + 1u)
unsigned pa_tlsf_top_key(const pa_tlsf *t);
unsigned pa_tlsf_search_key(size_t granule, size_t size, size_t align);
/* Test hook: size classes and free blocks examined by pa_tlsf_alloc so far;
 * bounded by a constant per call, however many blocks there are. */
uint64_t pa_tlsf_steps(const pa_tlsf *t);

#endif
