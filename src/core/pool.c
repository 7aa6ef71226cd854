/* Chunk pools (pool.h). */
#include "pool.h"

#include <errno.h>
#include <string.h>

#include "pa.h"

void pa_pool_init(pa_pool *p, pa_pool_release_fn release, void *ctx)
{
    p->head = NULL;
    p->release = release;
    p->ctx = ctx;
}

void pa_pool_link(pa_pool *p, pa_pool_chunk *c)
{
    c->prev = NULL;
    c->next = p->head;
    if (p->head != NULL) {
        p->head->prev = c;
    }
    p->head = c;
}

void pa_pool_unlink(pa_pool *p, pa_pool_chunk *c)
{
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        p->head = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    c->prev = c->next = NULL;
}

static void pa_pool_release(pa_pool *p, pa_pool_chunk *c)
{
    pa_pool_unlink(p, c);
    if (c->tlsf != NULL) {
        pa_tlsf_destroy(c->tlsf);
        c->tlsf = NULL;
    }
    p->release(p->ctx, c);
}

/* the block takes its alignment padding from the chunk (pa_padded_size: it
 * is the block's span, pa_tlsf_size(*tb)); *got is what it hands out. A
 * request that fits only without the padding gets none (a chunk barely
 * larger than the request). */
static int pa_pool_take(pa_tlsf *t, size_t size, size_t align, size_t *off, size_t *got,
                        pa_tlsf_block **tb)
{
    size_t want = pa_padded_size(size, align);
    int rc = want == 0 ? -ENOMEM : pa_tlsf_alloc(t, want, align, off, got, tb);
    if (rc == -ENOMEM && want != size) {
        rc = pa_tlsf_alloc(t, size, align, off, got, tb);
    }
    if (rc == 0 && *got > size) {
        *got = (size + PA_LINE - 1) & ~((size_t)PA_LINE - 1);
    }
    return rc;
}

int pa_pool_alloc(pa_pool *p, size_t size, size_t align, pa_pool_chunk **c, size_t *off,
                  size_t *got, pa_tlsf_block **tb)
{
    for (pa_pool_chunk *k = p->head; k != NULL; k = k->next) {
        if (k->tlsf == NULL || k->device % align != 0) {
            continue;
        }
        int rc = pa_pool_take(k->tlsf, size, align, off, got, tb);
        if (rc == 0) {
            k->live++;
            *c = k;
            return 0;
        }
        if (rc != -ENOMEM) {
            return rc;
        }
    }
    return -ENOMEM;
}

int pa_pool_add(pa_pool *p, pa_pool_chunk *c, bool zeroed)
{
    c->tlsf = pa_tlsf_create(c->len, PA_LINE);
    if (c->tlsf == NULL) {
        return -ENOMEM;
    }
    c->live = 0;
    c->touched = zeroed ? 0 : c->len;
    pa_pool_link(p, c);
    return 0;
}

int pa_pool_adopt(pa_pool *p, pa_pool_chunk *c, bool zeroed, size_t size, size_t align,
                  size_t *off, size_t *got, pa_tlsf_block **tb)
{
    if (c->device % align != 0) {
        return -ENOSPC;
    }
    int rc = pa_pool_add(p, c, zeroed);
    if (rc < 0) {
        return rc;
    }
    if (pa_pool_take(c->tlsf, size, align, off, got, tb) < 0) {
        pa_pool_unlink(p, c);
        pa_tlsf_destroy(c->tlsf);
        c->tlsf = NULL;
        return -ENOSPC;
    }
    c->live = 1;
    return 0;
}

size_t pa_pool_zero_reused(pa_pool_chunk *c, size_t off, size_t got)
{
    size_t n = 0;
    if (off < c->touched) {
        n = (off + got < c->touched ? off + got : c->touched) - off;
        memset(c->cpu + off, 0, n);
    }
    if (off + got > c->touched) {
        c->touched = off + got;
    }
    return n;
}

bool pa_pool_drop_empty(pa_pool *p, const pa_pool_chunk *keep)
{
    bool dropped = false;
    for (pa_pool_chunk *c = p->head, *next; c != NULL; c = next) {
        next = c->next;
        if (c->tlsf != NULL && c->live == 0 && c != keep) {
            pa_pool_release(p, c);
            dropped = true;
        }
    }
    return dropped;
}

void pa_pool_free(pa_pool *p, pa_pool_chunk *c, pa_tlsf_block *tb)
{
    pa_tlsf_free(c->tlsf, tb);
    if (--c->live == 0) {
        pa_pool_drop_empty(p, c);
    }
}

void pa_pool_stats(const pa_pool *p, uint64_t *free, uint64_t *largest)
{
    for (const pa_pool_chunk *c = p->head; c != NULL; c = c->next) {
        if (c->tlsf == NULL) {
            continue;
        }
        pa_tlsf_stats s;
        pa_tlsf_get_stats(c->tlsf, &s);
        *free += s.free;
        if (s.largest_free > *largest) {
            *largest = s.largest_free;
        }
    }
}

void pa_pool_close(pa_pool *p)
{
    while (p->head != NULL) {
        pa_pool_release(p, p->head);
    }
}
