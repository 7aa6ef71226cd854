/* A strided view's runs (runs.h): their extent, the walk that syncs them
 * (order, line rounding, merging of neighbours that share or touch a line),
 * pa_cache_runs over them and pa_sync_runs's bounds check. */
#define _GNU_SOURCE
#include "cache.h"
#include "ctest.h"
#include "pa.h"
#include "runs.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAXR 64

/* every range the walk gives, as [lo, hi) pairs; the count */
static size_t walk(const pa_runs *r, size_t base, size_t line, size_t out[][2])
{
    size_t lo, hi, count, n = 0;
    if (!pa_runs_extent(r, &lo, &hi, &count)) {
        return SIZE_MAX;
    }
    pa_runs_it it;
    pa_runs_start(&it, r, count, base, line);
    while (n < MAXR && pa_runs_next(&it, &lo, &hi)) {
        out[n][0] = lo;
        out[n][1] = hi;
        n++;
    }
    return n;
}

static int same(size_t got[][2], size_t n, const size_t want[][2], size_t m)
{
    if (n != m) {
        printf("# %zu ranges, want %zu\n", n, m);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (got[i][0] != want[i][0] || got[i][1] != want[i][1]) {
            printf("# range %zu: [%zu, %zu), want [%zu, %zu)\n", i, got[i][0], got[i][1],
                   want[i][0], want[i][1]);
            return 0;
        }
    }
    return 1;
}

static void test_extent(void)
{
    size_t lo = 0, hi = 0, n = 0;
    /* rows of 1 KiB read backwards, 16 B of each from byte 8 of the last row */
    pa_runs r = {.off = 3 * 1024 + 8, .len = 16, .ndim = 1};
    r.dims[0] = 4;
    r.strides[0] = -1024;
    check(pa_runs_extent(&r, &lo, &hi, &n) && lo == 8 && hi == 3 * 1024 + 24 && n == 4,
          "extent of reversed rows: lowest byte to one past the highest", "[%zu, %zu) %zu", lo, hi,
          n);
    r.off = 3 * 1024 - 1;
    check(!pa_runs_extent(&r, &lo, &hi, &n), "a run below byte 0 is refused", "accepted");
    pa_runs z = {.off = 0, .len = 0, .ndim = 0};
    check(!pa_runs_extent(&z, &lo, &hi, &n), "runs of 0 bytes are refused", "accepted");
    pa_runs d = {.off = 0, .len = 4, .ndim = 2};
    d.dims[0] = 3;
    d.dims[1] = 0;
    d.strides[0] = d.strides[1] = 64;
    check(!pa_runs_extent(&d, &lo, &hi, &n), "a dimension of 0 is refused", "accepted");
    pa_runs big = {.off = 0, .len = 1, .ndim = 2};
    big.dims[0] = big.dims[1] = (size_t)1 << (sizeof(size_t) * 4);
    big.strides[0] = big.strides[1] = 0;
    check(!pa_runs_extent(&big, &lo, &hi, &n), "a run count that overflows is refused", "accepted");
    pa_runs far = {.off = 0, .len = 1, .ndim = 1};
    far.dims[0] = 4;
    far.strides[0] = PTRDIFF_MAX;
    check(!pa_runs_extent(&far, &lo, &hi, &n), "an extent that overflows is refused", "accepted");
}

static void test_walk(void)
{
    size_t got[MAXR][2];
    /* 2 planes of 3 rows, rows 1 KiB apart, planes 4 KiB: 64 B from byte 32
     * of each row spans two lines; base 4096 is added */
    pa_runs r = {.off = 32, .len = 64, .ndim = 2};
    r.dims[0] = 2;
    r.dims[1] = 3;
    r.strides[0] = 4096;
    r.strides[1] = 1024;
    static const size_t w1[][2] = {{4096, 4224}, {5120, 5248}, {6144, 6272},
                                   {8192, 8320}, {9216, 9344}, {10240, 10368}};
    check(same(got, walk(&r, 4096, 64, got), w1, 6),
          "2-D runs come out in order, each rounded out to its lines", "see above");

    /* 16 B runs 16 B apart: 8 of them fill two lines and merge into one
     * range; the next row's start 1 KiB on does not touch it */
    pa_runs m = {.off = 0, .len = 16, .ndim = 2};
    m.dims[0] = 2;
    m.dims[1] = 8;
    m.strides[0] = 1024;
    m.strides[1] = 16;
    static const size_t w2[][2] = {{0, 128}, {1024, 1152}};
    check(same(got, walk(&m, 0, 64, got), w2, 2),
          "runs that share or touch a line merge into one range", "see above");

    /* backwards within a row: a run below the range so far is a new range
     * (no merging backwards), so each line comes out once per visit */
    pa_runs b = {.off = 200, .len = 8, .ndim = 1};
    b.dims[0] = 3;
    b.strides[0] = -100;
    static const size_t w3[][2] = {{192, 256}, {64, 128}, {0, 64}};
    check(same(got, walk(&b, 0, 64, got), w3, 3), "backward runs come out one by one", "see above");

    /* the odometer: a zero stride repeats a run; the 3rd dimension wraps */
    pa_runs o = {.off = 0, .len = 1, .ndim = 3};
    o.dims[0] = 2;
    o.dims[1] = 2;
    o.dims[2] = 2;
    o.strides[0] = 1000;
    o.strides[1] = 0;
    o.strides[2] = 300;
    static const size_t w4[][2] = {{0, 64},     {256, 320},   {0, 64},     {256, 320},
                                   {960, 1024}, {1280, 1344}, {960, 1024}, {1280, 1344}};
    check(same(got, walk(&o, 0, 64, got), w4, 8), "3-D odometer, zero stride included",
          "see above");

    pa_runs one = {.off = 70, .len = 100, .ndim = 0};
    static const size_t w5[][2] = {{64, 192}};
    check(same(got, walk(&one, 0, 64, got), w5, 1), "ndim 0 is one run", "see above");
}

/* clean/invalidate the runs of a buffer whose last run ends at a guard page:
 * data intact, no fault; wrapping the address space is refused */
static void test_cache_runs(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *map =
        mmap(NULL, 5 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
        check(0, "mmap", "%s", strerror(errno));
        return;
    }
    mprotect(map + 4 * page, page, PROT_NONE);
    for (size_t i = 0; i < 4 * page; i++) {
        map[i] = (unsigned char)(i * 7);
    }
    pa_runs r = {.off = page - 8, .len = 8, .ndim = 1};
    r.dims[0] = 4;
    r.strides[0] = (ptrdiff_t)page;
    int want = pa_cache_user_maintenance() ? 0 : -ENOTSUP;
    int rc1 = pa_cache_runs((char *)map, &r, false);
    int rc2 = pa_cache_runs((char *)map, &r, true);
    int ok = 1;
    for (size_t i = 0; i < 4 * page; i++) {
        ok &= map[i] == (unsigned char)(i * 7);
    }
    check(rc1 == want && rc2 == want && ok, "runs up to a guard page: maintained, data intact",
          "%d %d %d", rc1, rc2, ok);
    munmap(map, 5 * page);

    pa_runs top = {.off = 0, .len = 256, .ndim = 1};
    top.dims[0] = 2;
    top.strides[0] = 128;
    int rc = pa_cache_runs((char *)(UINTPTR_MAX - 300), &top, false);
    check(rc == (pa_cache_user_maintenance() ? -EINVAL : -ENOTSUP),
          "runs past the top of the address space are refused before any line", "%d", rc);
}

static void test_sync_runs_bounds(void)
{
    pa_backend *be;
    pa_err err;
    pa_block blk;
    pa_option o = {"size", "1048576"};
    if (pa_open("sim", &o, 1, &be, &err) < 0 || pa_alloc(be, 8192, 64, PA_CACHED, &blk, &err) < 0) {
        check(0, "sim", "%s", err.msg);
        return;
    }
    pa_runs r = {.off = 0, .len = 64, .ndim = 1};
    r.dims[0] = 8;
    r.strides[0] = 1024;
    int in = pa_sync_runs(be, &blk, &r, PA_TO_DEVICE, &err);
    r.off = 1024 + 1; /* the last run ends at byte 8257 */
    int out = pa_sync_runs(be, &blk, &r, PA_TO_DEVICE, &err);
    check(in == 0 && out == -EINVAL && strstr(err.msg, "leave the 8192-byte block") != NULL,
          "pa_sync_runs refuses runs that leave the block, with a message", "%d %d %s", in, out,
          err.msg);
    pa_free(be, &blk);
    pa_close(be);
}

int main(void)
{
    test_extent();
    test_walk();
    test_cache_runs();
    test_sync_runs_bounds();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
