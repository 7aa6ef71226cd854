/* Chunk pools: small blocks carved (TLSF) out of larger device buffers that a
 * backend makes (zocl BOs, dma-bufs, libcma chunks). The pool keeps the list
 * of chunks, finds room, zeroes reused ranges and gives chunks back when they
 * empty; making and releasing a chunk is the backend's business. */
#ifndef PA_POOL_H
#define PA_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tlsf.h"

/* The first member of a backend's chunk type. The backend sets cpu, device and
 * len; the pool owns the rest. */
typedef struct pa_pool_chunk {
    char *cpu;       /* the chunk's CPU mapping */
    uint64_t device; /* device address of cpu[0] */
    size_t len;
    pa_tlsf *tlsf;   /* offsets [0, len); NULL while the chunk is only listed */
    size_t live;     /* blocks handed out */
    size_t touched;  /* offsets at or above this were never handed out */
    struct pa_pool_chunk *prev, *next;
} pa_pool_chunk;

/* gives a chunk back to whatever the backend made it from, and frees it */
typedef void (*pa_pool_release_fn)(void *ctx, pa_pool_chunk *c);

typedef struct pa_pool {
    pa_pool_chunk *head;
    pa_pool_release_fn release;
    void *ctx;
} pa_pool;

void pa_pool_init(pa_pool *p, pa_pool_release_fn release, void *ctx);

/* Room for size bytes (align <= each chunk's device alignment) in a chunk of
 * the pool: 0 with the chunk, the offset, the size rounded to lines and the
 * TLSF handle (the block also takes its alignment padding, up to a page:
 * pa_padded_size; pa_tlsf_size(handle) is its span); -ENOMEM when no chunk
 * has room; other -errno for bad arguments. */
int pa_pool_alloc(pa_pool *p, size_t size, size_t align, pa_pool_chunk **c, size_t *off,
                  size_t *got, pa_tlsf_block **tb);

/* Takes a chunk the backend just made into the pool, empty: 0 or -ENOMEM (no
 * memory for its allocator; the chunk is then not in the pool). zeroed: the
 * chunk's memory is known to be zero (fresh from the driver), so only ranges
 * handed out before need zeroing later. */
int pa_pool_add(pa_pool *p, pa_pool_chunk *c, bool zeroed);

/* pa_pool_add, then carves the request from the new chunk (as pa_pool_alloc):
 * 0, -ENOMEM (no memory for the allocator) or -ENOSPC (the chunk cannot hold
 * the request at that alignment); on failure the chunk is not in the pool. */
int pa_pool_adopt(pa_pool *p, pa_pool_chunk *c, bool zeroed, size_t size, size_t align,
                  size_t *off, size_t *got, pa_tlsf_block **tb);

/* Zeroes what an earlier block left in [off, off+got) of c; returns how many
 * bytes from off it zeroed (0: none), for the caller to clean if cached. */
size_t pa_pool_zero_reused(pa_pool_chunk *c, size_t off, size_t got);

/* Returns a block. When its chunk empties it stays for the next request and
 * any other empty chunk is given back. */
void pa_pool_free(pa_pool *p, pa_pool_chunk *c, pa_tlsf_block *tb);

/* Gives back every empty chunk except keep (NULL: all); true if there was one. */
bool pa_pool_drop_empty(pa_pool *p, const pa_pool_chunk *keep);

/* Adds free bytes to *free and raises *largest to the largest free block. */
void pa_pool_stats(const pa_pool *p, uint64_t *free, uint64_t *largest);

/* A plain list of chunks the backend made, for blocks that have one of their
 * own: released by pa_pool_close like the rest. */
void pa_pool_link(pa_pool *p, pa_pool_chunk *c);
void pa_pool_unlink(pa_pool *p, pa_pool_chunk *c);

/* Gives back every chunk, empty or not. */
void pa_pool_close(pa_pool *p);

#endif
