/* Index of TLSF allocators by their largest free class (see regidx.h). */
#include "regidx.h"

#include <errno.h>
#include <string.h>

void pa_regidx_init(pa_regidx *x, size_t granule)
{
    memset(x, 0, sizeof(*x));
    x->granule = granule;
}

static void pa_regidx_link(pa_regidx *x, pa_regidx_node *n)
{
    n->key = pa_tlsf_top_key(n->tlsf);
    n->prev = NULL;
    n->next = x->heads[n->key];
    if (n->next != NULL) {
        n->next->prev = n;
    }
    x->heads[n->key] = n;
    x->map[n->key / 64] |= (uint64_t)1 << (n->key % 64);
}

static void pa_regidx_unlink(pa_regidx *x, pa_regidx_node *n)
{
    if (n->prev != NULL) {
        n->prev->next = n->next;
    } else {
        x->heads[n->key] = n->next;
        if (n->next == NULL) {
            x->map[n->key / 64] &= ~((uint64_t)1 << (n->key % 64));
        }
    }
    if (n->next != NULL) {
        n->next->prev = n->prev;
    }
    n->prev = n->next = NULL;
}

void pa_regidx_add(pa_regidx *x, pa_regidx_node *n, pa_tlsf *t)
{
    n->tlsf = t;
    pa_regidx_link(x, n);
}

void pa_regidx_remove(pa_regidx *x, pa_regidx_node *n)
{
    pa_regidx_unlink(x, n);
}

void pa_regidx_update(pa_regidx *x, pa_regidx_node *n)
{
    if (pa_tlsf_top_key(n->tlsf) != n->key) {
        pa_regidx_unlink(x, n);
        pa_regidx_link(x, n);
    }
}

/* lowest key >= k with a non-empty list, or PA_TLSF_KEYS */
static unsigned pa_regidx_at_or_above(pa_regidx *x, unsigned k)
{
    for (unsigned w = k / 64; w < PA_REGIDX_WORDS; w++) {
        x->steps++;
        uint64_t bits = x->map[w];
        if (w == k / 64) {
            bits &= ~(uint64_t)0 << (k % 64);
        }
        if (bits != 0) {
            return w * 64 + (unsigned)__builtin_ctzll(bits);
        }
    }
    return PA_TLSF_KEYS;
}

/* highest key < k (k >= 1) with a non-empty list and key >= 1, or 0 */
static unsigned pa_regidx_below(pa_regidx *x, unsigned k)
{
    unsigned top = k - 1; /* highest candidate */
    for (unsigned w = top / 64 + 1; w-- > 0;) {
        x->steps++;
        uint64_t bits = x->map[w];
        if (w == top / 64 && top % 64 != 63) {
            bits &= ((uint64_t)1 << (top % 64 + 1)) - 1;
        }
        if (w == 0) {
            bits &= ~(uint64_t)1; /* key 0: allocators without a free block */
        }
        if (bits != 0) {
            return w * 64 + 63u - (unsigned)__builtin_clzll(bits);
        }
    }
    return 0;
}

static int pa_regidx_try(pa_regidx *x, pa_regidx_node *n, size_t size, size_t align,
                         size_t *offset, size_t *got, pa_tlsf_block **handle)
{
    x->steps++;
    int rc = pa_tlsf_alloc(n->tlsf, size, align, offset, got, handle);
    if (rc == 0) {
        pa_regidx_update(x, n);
    }
    return rc;
}

pa_regidx_node *pa_regidx_alloc(pa_regidx *x, size_t size, size_t align, size_t *offset,
                                size_t *got, pa_tlsf_block **handle, int *rc)
{
    unsigned k = pa_tlsf_search_key(x->granule, size, align);
    *rc = -ENOMEM;
    if (k != PA_TLSF_NO_KEY) {
        unsigned at = pa_regidx_at_or_above(x, k);
        if (at < PA_TLSF_KEYS) {
            pa_regidx_node *n = x->heads[at];
            *rc = pa_regidx_try(x, n, size, align, offset, got, handle);
            if (*rc == 0) {
                return n;
            }
            if (*rc != -ENOMEM) {
                return NULL;
            }
        }
    } else {
        k = PA_TLSF_KEYS;
    }
    /* nothing surely holds it: a few of the largest regions below that class */
    unsigned tries = PA_REGIDX_FALLBACK;
    for (unsigned b = pa_regidx_below(x, k); b != 0 && tries > 0; b = pa_regidx_below(x, b)) {
        for (pa_regidx_node *n = x->heads[b]; n != NULL && tries > 0; n = n->next) {
            tries--;
            *rc = pa_regidx_try(x, n, size, align, offset, got, handle);
            if (*rc == 0) {
                return n;
            }
            if (*rc != -ENOMEM) {
                return NULL;
            }
        }
    }
    *rc = -ENOMEM;
    return NULL;
}
