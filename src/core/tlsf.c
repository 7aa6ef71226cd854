/* Two-level segregated fit allocator over offsets [0, total). Block
 * descriptors live in malloc'd node chunks, never in the managed memory, so a
 * region may be uncached, device-only or not mapped at all. */
#include "tlsf.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#define PA_TLSF_SL_LOG2 5
#define PA_TLSF_SL_COUNT (1u << PA_TLSF_SL_LOG2)
#define PA_TLSF_FL_COUNT 64 /* enough for any size_t count of granules */
#define PA_TLSF_CHUNK 256   /* nodes per malloc'd chunk */

/* Blocks examined by the fallback of one allocation. Bounds its cost whatever
 * the number of blocks; the fallback only exists for requests the guaranteed
 * search cannot serve (whole-region and tightly aligned requests). */
#define PA_TLSF_SCAN_BUDGET 32

enum { PA_TLSF_SPARE, PA_TLSF_FREE, PA_TLSF_USED };

struct pa_tlsf_block {
    size_t offset, size; /* bytes, multiples of the granule */
    int state;
    pa_tlsf_block *prev_phys, *next_phys; /* address-order neighbours */
    pa_tlsf_block *prev_free, *next_free; /* size-class list; next_free also links spares */
};

typedef struct pa_tlsf_chunk {
    struct pa_tlsf_chunk *next;
    pa_tlsf_block nodes[PA_TLSF_CHUNK];
} pa_tlsf_chunk;

struct pa_tlsf {
    size_t total, granule, used, blocks;
    unsigned shift; /* log2(granule) */
    uint64_t fl_map;
    uint32_t sl_map[PA_TLSF_FL_COUNT];
    pa_tlsf_block *heads[PA_TLSF_FL_COUNT][PA_TLSF_SL_COUNT];
    pa_tlsf_block *spare; /* unused descriptors */
    size_t nspare;
    pa_tlsf_chunk *chunks;
    uint64_t steps;
    pa_tlsf_block *first; /* the block at offset 0: its descriptor never changes */
};

/* index of the highest set bit; x != 0 */
static unsigned pa_tlsf_fls(uint64_t x)
{
    return 63u - (unsigned)__builtin_clzll((unsigned long long)x);
}

static unsigned pa_tlsf_ffs(uint64_t x)
{
    return (unsigned)__builtin_ctzll((unsigned long long)x);
}

/* The class holding blocks of u granules: below SL_COUNT granules one class
 * per size, above it fl = floor(log2(u)) (shifted down) split SL_COUNT ways. */
static void pa_tlsf_mapping(size_t u, unsigned *fl, unsigned *sl)
{
    if (u < PA_TLSF_SL_COUNT) {
        *fl = 0;
        *sl = (unsigned)u;
        return;
    }
    unsigned f = pa_tlsf_fls(u);
    *sl = (unsigned)(u >> (f - PA_TLSF_SL_LOG2)) ^ PA_TLSF_SL_COUNT;
    *fl = f - PA_TLSF_SL_LOG2 + 1;
}

/* The lowest class whose every block holds u granules: round u up to the next
 * class boundary. False when that overflows (no such class can be non-empty). */
static bool pa_tlsf_mapping_search(size_t u, unsigned *fl, unsigned *sl)
{
    if (u >= PA_TLSF_SL_COUNT) {
        size_t round = ((size_t)1 << (pa_tlsf_fls(u) - PA_TLSF_SL_LOG2)) - 1;
        if (__builtin_add_overflow(u, round, &u)) {
            return false;
        }
    }
    pa_tlsf_mapping(u, fl, sl);
    return true;
}

/* First non-empty class at or above (fl, sl), through the bitmaps. */
static pa_tlsf_block *pa_tlsf_find(pa_tlsf *t, unsigned *fl, unsigned *sl)
{
    t->steps++;
    uint32_t sbits = t->sl_map[*fl] & (~(uint32_t)0 << *sl);
    if (sbits == 0) {
        if (*fl + 1 >= PA_TLSF_FL_COUNT) {
            return NULL;
        }
        uint64_t fbits = t->fl_map & (~(uint64_t)0 << (*fl + 1));
        if (fbits == 0) {
            return NULL;
        }
        *fl = pa_tlsf_ffs(fbits);
        sbits = t->sl_map[*fl];
    }
    *sl = pa_tlsf_ffs(sbits);
    return t->heads[*fl][*sl];
}

static void pa_tlsf_insert_free(pa_tlsf *t, pa_tlsf_block *b)
{
    unsigned fl, sl;
    pa_tlsf_mapping(b->size >> t->shift, &fl, &sl);
    b->state = PA_TLSF_FREE;
    b->prev_free = NULL;
    b->next_free = t->heads[fl][sl];
    if (b->next_free != NULL) {
        b->next_free->prev_free = b;
    }
    t->heads[fl][sl] = b;
    t->sl_map[fl] |= (uint32_t)1 << sl;
    t->fl_map |= (uint64_t)1 << fl;
}

static void pa_tlsf_remove_free(pa_tlsf *t, pa_tlsf_block *b)
{
    unsigned fl, sl;
    pa_tlsf_mapping(b->size >> t->shift, &fl, &sl);
    if (b->prev_free != NULL) {
        b->prev_free->next_free = b->next_free;
    } else {
        t->heads[fl][sl] = b->next_free;
    }
    if (b->next_free != NULL) {
        b->next_free->prev_free = b->prev_free;
    }
    if (t->heads[fl][sl] == NULL) {
        t->sl_map[fl] &= ~((uint32_t)1 << sl);
        if (t->sl_map[fl] == 0) {
            t->fl_map &= ~((uint64_t)1 << fl);
        }
    }
    b->prev_free = b->next_free = NULL;
}

/* Makes sure n descriptors are at hand, so an allocation never fails halfway
 * through a split. */
static int pa_tlsf_reserve(pa_tlsf *t, size_t n)
{
    if (t->nspare >= n) {
        return 0;
    }
    pa_tlsf_chunk *c = malloc(sizeof(*c));
    if (c == NULL) {
        return -ENOMEM;
    }
    c->next = t->chunks;
    t->chunks = c;
    for (size_t i = 0; i < PA_TLSF_CHUNK; i++) {
        c->nodes[i].state = PA_TLSF_SPARE;
        c->nodes[i].next_free = t->spare;
        t->spare = &c->nodes[i];
    }
    t->nspare += PA_TLSF_CHUNK;
    return 0;
}

static pa_tlsf_block *pa_tlsf_node_get(pa_tlsf *t)
{
    pa_tlsf_block *b = t->spare;
    t->spare = b->next_free;
    t->nspare--;
    b->prev_phys = b->next_phys = b->prev_free = b->next_free = NULL;
    return b;
}

static void pa_tlsf_node_put(pa_tlsf *t, pa_tlsf_block *b)
{
    b->state = PA_TLSF_SPARE;
    b->next_free = t->spare;
    t->spare = b;
    t->nspare++;
}

/* New block for the tail of b starting at byte `at` inside it. */
static pa_tlsf_block *pa_tlsf_split(pa_tlsf *t, pa_tlsf_block *b, size_t at)
{
    pa_tlsf_block *n = pa_tlsf_node_get(t);
    n->offset = b->offset + at;
    n->size = b->size - at;
    n->prev_phys = b;
    n->next_phys = b->next_phys;
    if (n->next_phys != NULL) {
        n->next_phys->prev_phys = n;
    }
    b->next_phys = n;
    b->size = at;
    return n;
}

/* Start of the first align-aligned stretch of size bytes inside b, or false. */
static bool pa_tlsf_fits(const pa_tlsf_block *b, size_t size, size_t align, size_t *start)
{
    size_t end;
    if (__builtin_add_overflow(b->offset, align - 1, &end)) {
        return false;
    }
    size_t s = end & ~(align - 1);
    size_t gap = s - b->offset;
    if (gap > b->size || b->size - gap < size) {
        return false;
    }
    *start = s;
    return true;
}

/* Walks a bounded number of free blocks, from the class of size upward, for
 * one that holds an aligned stretch. Catches what rounding the request up a
 * class misses: a block of exactly the region's size, or a block whose
 * alignment gap happens to be small. */
static pa_tlsf_block *pa_tlsf_scan(pa_tlsf *t, size_t size, size_t align, size_t *start)
{
    unsigned fl, sl;
    unsigned budget = PA_TLSF_SCAN_BUDGET;
    pa_tlsf_mapping(size >> t->shift, &fl, &sl);
    for (;;) {
        pa_tlsf_block *b = pa_tlsf_find(t, &fl, &sl);
        if (b == NULL) {
            return NULL;
        }
        for (; b != NULL; b = b->next_free) {
            if (budget == 0) {
                return NULL;
            }
            budget--;
            t->steps++;
            if (pa_tlsf_fits(b, size, align, start)) {
                return b;
            }
        }
        if (++sl == PA_TLSF_SL_COUNT) {
            sl = 0;
            if (++fl == PA_TLSF_FL_COUNT) {
                return NULL;
            }
        }
    }
}

pa_tlsf *pa_tlsf_create(size_t size, size_t granule)
{
    if (granule == 0 || (granule & (granule - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    pa_tlsf *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->granule = granule;
    t->shift = pa_tlsf_ffs(granule);
    t->total = size & ~(granule - 1);
    if (t->total > 0) {
        if (pa_tlsf_reserve(t, 1) < 0) {
            free(t);
            return NULL;
        }
        pa_tlsf_block *b = pa_tlsf_node_get(t);
        b->offset = 0;
        b->size = t->total;
        pa_tlsf_insert_free(t, b);
        t->first = b;
    }
    return t;
}

void pa_tlsf_destroy(pa_tlsf *t)
{
    if (t == NULL) {
        return;
    }
    while (t->chunks != NULL) {
        pa_tlsf_chunk *c = t->chunks;
        t->chunks = c->next;
        free(c);
    }
    free(t);
}

/* Carves [start, start + size) out of the free block b. */
static int pa_tlsf_take(pa_tlsf *t, pa_tlsf_block *b, size_t start, size_t size, size_t *offset,
                        size_t *got, pa_tlsf_block **handle)
{
    pa_tlsf_remove_free(t, b);
    /* The neighbours of a free block are never free, so neither piece split
     * off here has anything to coalesce with. */
    if (start > b->offset) {
        pa_tlsf_block *lead = b;
        b = pa_tlsf_split(t, lead, start - lead->offset);
        pa_tlsf_insert_free(t, lead);
    }
    if (b->size > size) {
        pa_tlsf_insert_free(t, pa_tlsf_split(t, b, size));
    }
    b->state = PA_TLSF_USED;
    t->used += b->size;
    t->blocks++;
    *offset = b->offset;
    *got = b->size;
    *handle = b;
    return 0;
}

int pa_tlsf_alloc(pa_tlsf *t, size_t size, size_t align, size_t *offset, size_t *got,
                  pa_tlsf_block **handle)
{
    if (t == NULL || offset == NULL || got == NULL || handle == NULL || size == 0) {
        return -EINVAL;
    }
    if ((align & (align - 1)) != 0) {
        return -EINVAL;
    }
    if (align < t->granule) {
        align = t->granule;
    }
    if (size > t->total) {
        return -ENOMEM;
    }
    /* cannot overflow: total is a multiple of the granule and size <= total */
    size = (size + t->granule - 1) & ~(t->granule - 1);
    if (pa_tlsf_reserve(t, 2) < 0) {
        return -ENOMEM;
    }

    pa_tlsf_block *b = NULL;
    size_t start = 0, need;
    unsigned fl, sl;
    /* Any block of size + align - granule bytes holds an aligned stretch of
     * size bytes, since offsets are granule multiples. */
    if (!__builtin_add_overflow(size, align - t->granule, &need) && need <= t->total &&
        pa_tlsf_mapping_search(need >> t->shift, &fl, &sl)) {
        b = pa_tlsf_find(t, &fl, &sl);
        if (b != NULL) {
            pa_tlsf_fits(b, size, align, &start);
        }
    }
    if (b == NULL) {
        b = pa_tlsf_scan(t, size, align, &start);
        if (b == NULL) {
            return -ENOMEM;
        }
    }

    return pa_tlsf_take(t, b, start, size, offset, got, handle);
}

int pa_tlsf_alloc_below(pa_tlsf *t, size_t size, size_t align, size_t limit, size_t *offset,
                        size_t *got, pa_tlsf_block **handle)
{
    if (t == NULL || limit >= t->total) {
        return pa_tlsf_alloc(t, size, align, offset, got, handle);
    }
    if (offset == NULL || got == NULL || handle == NULL || size == 0 ||
        (align & (align - 1)) != 0) {
        return -EINVAL;
    }
    if (align < t->granule) {
        align = t->granule;
    }
    if (size > limit) {
        return -ENOMEM;
    }
    size = (size + t->granule - 1) & ~(t->granule - 1);
    if (pa_tlsf_reserve(t, 2) < 0) {
        return -ENOMEM;
    }
    /* first fit in address order: the lowest free stretch that ends by limit.
     * Linear in the blocks below limit; the size classes know nothing of
     * addresses, and low-memory requests are rare. */
    for (pa_tlsf_block *b = t->first; b != NULL && b->offset < limit; b = b->next_phys) {
        size_t start;
        t->steps++;
        if (b->state == PA_TLSF_FREE && pa_tlsf_fits(b, size, align, &start) &&
            start <= limit - size) {
            return pa_tlsf_take(t, b, start, size, offset, got, handle);
        }
    }
    return -ENOMEM;
}

void pa_tlsf_free(pa_tlsf *t, pa_tlsf_block *b)
{
    if (t == NULL || b == NULL || b->state != PA_TLSF_USED) {
        return;
    }
    t->used -= b->size;
    t->blocks--;
    pa_tlsf_block *p = b->prev_phys;
    if (p != NULL && p->state == PA_TLSF_FREE) {
        pa_tlsf_remove_free(t, p);
        p->size += b->size;
        p->next_phys = b->next_phys;
        if (p->next_phys != NULL) {
            p->next_phys->prev_phys = p;
        }
        pa_tlsf_node_put(t, b);
        b = p;
    }
    pa_tlsf_block *n = b->next_phys;
    if (n != NULL && n->state == PA_TLSF_FREE) {
        pa_tlsf_remove_free(t, n);
        b->size += n->size;
        b->next_phys = n->next_phys;
        if (b->next_phys != NULL) {
            b->next_phys->prev_phys = b;
        }
        pa_tlsf_node_put(t, n);
    }
    pa_tlsf_insert_free(t, b);
}

size_t pa_tlsf_offset(const pa_tlsf_block *handle)
{
    return handle->offset;
}

size_t pa_tlsf_size(const pa_tlsf_block *handle)
{
    return handle->size;
}

void pa_tlsf_get_stats(const pa_tlsf *t, pa_tlsf_stats *s)
{
    s->total = t->total;
    s->used = t->used;
    s->free = t->total - t->used;
    s->blocks = t->blocks;
    s->largest_free = 0;
    if (t->fl_map == 0) {
        return;
    }
    /* classes are ordered, so the largest block is in the highest non-empty one */
    unsigned fl = pa_tlsf_fls(t->fl_map);
    unsigned sl = pa_tlsf_fls(t->sl_map[fl]);
    for (const pa_tlsf_block *b = t->heads[fl][sl]; b != NULL; b = b->next_free) {
        if (b->size > s->largest_free) {
            s->largest_free = b->size;
        }
    }
}

uint64_t pa_tlsf_steps(const pa_tlsf *t)
{
    return t->steps;
}

unsigned pa_tlsf_top_key(const pa_tlsf *t)
{
    if (t->fl_map == 0) {
        return 0;
    }
    unsigned fl = pa_tlsf_fls(t->fl_map);
    return fl * PA_TLSF_SL_COUNT + pa_tlsf_fls(t->sl_map[fl]) + 1;
}

unsigned pa_tlsf_search_key(size_t granule, size_t size, size_t align)
{
    size_t need;
    unsigned fl, sl;
    if (granule == 0 || (granule & (granule - 1)) != 0 || size == 0) {
        return PA_TLSF_NO_KEY;
    }
    if (align < granule) {
        align = granule;
    }
    if (__builtin_add_overflow(size, granule - 1, &size)) {
        return PA_TLSF_NO_KEY;
    }
    size &= ~(granule - 1);
    if (__builtin_add_overflow(size, align - granule, &need) ||
        !pa_tlsf_mapping_search(need >> pa_tlsf_ffs(granule), &fl, &sl)) {
        return PA_TLSF_NO_KEY;
    }
    return fl * PA_TLSF_SL_COUNT + sl + 1;
}
