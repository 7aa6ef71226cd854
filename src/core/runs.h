/* A strided view's runs, described rather than listed: the contiguous
 * stretches of its elements, synchronised one by one (pa_sync_runs) when
 * they are sparse. Walking them is inline so the per-run cost stays a few
 * additions and compares (a sparse view may have millions of runs). */
#ifndef PA_RUNS_H
#define PA_RUNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* the walk is the inner loop of a sparse view's sync: always inlined */
#define PA_RUNS_INLINE static inline __attribute__((always_inline))

/* a view with more non-trivial outer dimensions is synchronised whole */
#define PA_RUNS_MAXDIM 32

/* prod(dims) runs of len bytes; the run at index (i0, ..., i(ndim-1)) starts
 * at off + sum(i_d * strides[d]) bytes from the block's start, the last
 * dimension fastest */
typedef struct pa_runs {
    size_t off;                        /* the first run's first byte */
    size_t len;                        /* bytes per run, > 0 */
    int ndim;                          /* 0 (a single run) .. PA_RUNS_MAXDIM */
    size_t dims[PA_RUNS_MAXDIM];       /* each >= 1 */
    ptrdiff_t strides[PA_RUNS_MAXDIM]; /* bytes, any sign */
} pa_runs;

/* [*lo, *hi): from the lowest byte any run touches to one past the highest;
 * false when the runs count or an offset overflows or goes below 0 */
static inline bool pa_runs_extent(const pa_runs *r, size_t *lo, size_t *hi, size_t *count)
{
    size_t down = 0, up = r->len, n = 1;
    if (r->len == 0 || r->ndim < 0 || r->ndim > PA_RUNS_MAXDIM) {
        return false;
    }
    for (int d = 0; d < r->ndim; d++) {
        size_t span, mag;
        if (r->dims[d] == 0 || __builtin_mul_overflow(n, r->dims[d], &n)) {
            return false;
        }
        mag = r->strides[d] < 0 ? (size_t)0 - (size_t)r->strides[d] : (size_t)r->strides[d];
        if (__builtin_mul_overflow(mag, r->dims[d] - 1, &span) ||
            __builtin_add_overflow(r->strides[d] < 0 ? down : up, span,
                                   r->strides[d] < 0 ? &down : &up)) {
            return false;
        }
    }
    if (down > r->off || __builtin_add_overflow(r->off, up, hi)) {
        return false;
    }
    *lo = r->off - down;
    *count = n;
    return true;
}

/* walks the runs in order, as whole lines (offsets plus base, rounded out to
 * line, a power of two); consecutive runs whose lines overlap or touch come
 * out as one range */
typedef struct pa_runs_it {
    const pa_runs *r;
    size_t base, mask; /* mask: line - 1 */
    size_t left;       /* runs not yet visited */
    size_t pos;        /* the next run's offset */
    size_t inner;      /* runs left in the last dimension's current row */
    size_t idx[PA_RUNS_MAXDIM];
} pa_runs_it;

/* count: from pa_runs_extent */
static inline void pa_runs_start(pa_runs_it *it, const pa_runs *r, size_t count, size_t base,
                                 size_t line)
{
    it->r = r;
    it->base = base;
    it->mask = line - 1;
    it->left = count;
    it->pos = r->off;
    it->inner = r->ndim > 0 ? r->dims[r->ndim - 1] : 1;
    for (int d = 0; d < r->ndim; d++) {
        it->idx[d] = 0;
    }
}

/* moves pos to the next run (the last dimension's step inline; the odometer
 * over the others once per row). Offsets wrap modulo 2**N like the view's
 * own pointer arithmetic; pa_runs_extent bounded them. */
PA_RUNS_INLINE void pa_runs_step(pa_runs_it *it)
{
    const pa_runs *r = it->r;
    int d = r->ndim - 1;
    if (d < 0) {
        return;
    }
    if (--it->inner > 0) {
        it->pos += (size_t)r->strides[d];
        return;
    }
    it->inner = r->dims[d];
    it->pos -= (size_t)r->strides[d] * (r->dims[d] - 1);
    for (d--; d >= 0; d--) {
        it->pos += (size_t)r->strides[d];
        if (++it->idx[d] < r->dims[d]) {
            return;
        }
        it->pos -= (size_t)r->strides[d] * r->dims[d];
        it->idx[d] = 0;
    }
}

/* the next range [*lo, *hi) of whole lines, base added; false when done */
PA_RUNS_INLINE bool pa_runs_next(pa_runs_it *it, size_t *lo, size_t *hi)
{
    if (it->left == 0) {
        return false;
    }
    size_t a = it->base + it->pos;
    size_t l = a & ~it->mask, h = (a + it->r->len + it->mask) & ~it->mask;
    it->left--;
    pa_runs_step(it);
    while (it->left > 0) {
        a = it->base + it->pos;
        size_t nl = a & ~it->mask;
        if (nl < l || nl > h) {
            break;
        }
        size_t nh = (a + it->r->len + it->mask) & ~it->mask;
        h = nh > h ? nh : h;
        it->left--;
        pa_runs_step(it);
    }
    *lo = l;
    *hi = h;
    return true;
}

#endif
