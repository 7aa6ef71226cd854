/* Plain-C tests of the chunk pool (src/core/pool.c) that zocl, dmaheap and
 * xlnk carve small blocks from, with chunks a fake backend makes from malloc:
 * which chunk a request lands in, reuse zeroing, when chunks go back, stats,
 * alignment refusals and the plain-list use. */
#define _GNU_SOURCE
#include "pool.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctest.h"

#define CHUNK ((size_t)64 << 10)

typedef struct fake_chunk {
    pa_pool_chunk pc;
    int id;
} fake_chunk;

static int released[64], nreleased, made;

static void fake_release(void *ctx, pa_pool_chunk *c)
{
    (void)ctx;
    fake_chunk *f = (fake_chunk *)c;
    released[nreleased++] = f->id;
    free(f->pc.cpu);
    free(f);
}

/* a chunk of CHUNK bytes at device address dev, filled with fill */
static fake_chunk *fake_new(uint64_t dev, int fill)
{
    fake_chunk *f = calloc(1, sizeof(*f));
    f->pc.cpu = malloc(CHUNK);
    memset(f->pc.cpu, fill, CHUNK);
    f->pc.device = dev;
    f->pc.len = CHUNK;
    f->id = ++made;
    return f;
}

static int all_zero(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) {
            return 0;
        }
    }
    return 1;
}

static void test_requests_fill_chunks_in_turn(void)
{
    pa_pool p;
    pa_pool_init(&p, fake_release, NULL);
    pa_pool_chunk *c;
    size_t off, got;
    pa_tlsf_block *tb, *tbs[4];
    check(pa_pool_alloc(&p, 100, 64, &c, &off, &got, &tb) == -ENOMEM, "empty pool: -ENOMEM",
          "a pool with no chunk found room");

    fake_chunk *a = fake_new(0x10000000, 0);
    check(pa_pool_adopt(&p, &a->pc, true, 40 << 10, 4096, &off, &got, &tbs[0]) == 0 &&
              off == 0 && got == 40 << 10 && a->pc.live == 1,
          "adopt carves the first request", "off %zu got %zu live %zu", off, got, a->pc.live);
    check(pa_pool_alloc(&p, 20 << 10, 64, &c, &off, &got, &tbs[1]) == 0 && c == &a->pc &&
              off == 40 << 10 && a->pc.live == 2,
          "a request that fits goes to the existing chunk", "off %zu", off);
    check(pa_pool_alloc(&p, 8 << 10, 64, &c, &off, &got, &tb) == -ENOMEM,
          "no chunk has room: -ENOMEM for the backend to make one", "found room");
    fake_chunk *b = fake_new(0x20000000, 0);
    check(pa_pool_adopt(&p, &b->pc, true, 8 << 10, 64, &off, &got, &tbs[2]) == 0 && off == 0,
          "a second chunk is adopted", "off %zu", off);

    uint64_t free_bytes = 0, largest = 0;
    pa_pool_stats(&p, &free_bytes, &largest);
    check(free_bytes == (4 << 10) + CHUNK - (8 << 10) && largest == CHUNK - (8 << 10),
          "stats: free bytes and largest free block over the chunks", "free %llu largest %llu",
          (unsigned long long)free_bytes, (unsigned long long)largest);

    /* a emptied: kept for the next request while b is in use */
    pa_pool_free(&p, &a->pc, tbs[0]);
    pa_pool_free(&p, &a->pc, tbs[1]);
    check(nreleased == 0 && a->pc.live == 0, "the chunk that just emptied is kept",
          "released %d", nreleased);
    /* b empties: a (empty, not the one just emptied) goes back */
    int a_id = a->id;
    pa_pool_free(&p, &b->pc, tbs[2]);
    check(nreleased == 1 && released[0] == a_id, "another empty chunk is given back",
          "released %d (first id %d)", nreleased, nreleased ? released[0] : 0);
    check(pa_pool_drop_empty(&p, NULL) && nreleased == 2 && p.head == NULL,
          "drop_empty(NULL) gives back every empty chunk", "released %d", nreleased);
    check(!pa_pool_drop_empty(&p, NULL), "nothing left to drop", "dropped again");
    pa_pool_close(&p);
}

static void test_reused_ranges_are_zeroed(void)
{
    pa_pool p;
    pa_pool_init(&p, fake_release, NULL);
    pa_pool_chunk *c;
    size_t off, got, off2, got2;
    pa_tlsf_block *tb, *tb2;

    /* a zeroed chunk: only what was handed out before is zeroed again */
    fake_chunk *z = fake_new(0x30000000, 0);
    pa_pool_adopt(&p, &z->pc, true, 1000, 64, &off, &got, &tb);
    check(pa_pool_zero_reused(&z->pc, off, got) == 0, "fresh zeroed chunk: nothing to zero",
          "zeroed something");
    memset(z->pc.cpu + off, 0xAB, got);
    pa_pool_alloc(&p, 64, 64, &c, &off2, &got2, &tb2); /* keeps the chunk from emptying */
    pa_pool_free(&p, &z->pc, tb);
    pa_pool_alloc(&p, 512, 64, &c, &off, &got, &tb);
    size_t n = pa_pool_zero_reused(c, off, got);
    check(c == &z->pc && off == 0 && n == 512 && all_zero(c->cpu, 512) &&
              (unsigned char)c->cpu[512] == 0xAB,
          "a reused range is zeroed, and nothing beyond the block", "off %zu n %zu", off, n);
    pa_pool_free(&p, c, tb);
    pa_pool_free(&p, c, tb2);

    /* a chunk of unknown contents (libcma): every block is zeroed */
    fake_chunk *u = fake_new(0x40000000, 0x5A);
    pa_pool_adopt(&p, &u->pc, false, 512, 64, &off, &got, &tb);
    n = pa_pool_zero_reused(&u->pc, off, got);
    check(n == got && all_zero(u->pc.cpu + off, got) && (unsigned char)u->pc.cpu[got] == 0x5A,
          "unknown contents: the block, and only the block, is zeroed", "n %zu", n);
    pa_pool_free(&p, &u->pc, tb);
    pa_pool_close(&p);
    check(p.head == NULL, "close gives back every chunk", "a chunk is left");
}

static void test_alignment(void)
{
    pa_pool p;
    pa_pool_init(&p, fake_release, NULL);
    pa_pool_chunk *c;
    size_t off, got;
    pa_tlsf_block *tb;
    int before = nreleased;
    /* a chunk whose device address is only 64-byte aligned */
    fake_chunk *odd = fake_new(0x50000040, 0);
    check(pa_pool_adopt(&p, &odd->pc, true, 64, 4096, &off, &got, &tb) == -ENOSPC &&
              p.head == NULL,
          "adopt refuses a chunk that cannot give the alignment, and keeps it out",
          "head %p", (void *)p.head);
    check(pa_pool_adopt(&p, &odd->pc, true, 64, 64, &off, &got, &tb) == 0,
          "the same chunk serves a 64-byte alignment", "refused");
    check(pa_pool_alloc(&p, 64, 4096, &c, &off, &got, &tb) == -ENOMEM,
          "alloc skips chunks whose device address is less aligned than asked", "found room");
    fake_chunk *big = fake_new(0x60000000, 0);
    check(pa_pool_adopt(&p, &big->pc, true, CHUNK + 64, 64, &off, &got, &tb) == -ENOSPC &&
              p.head == &odd->pc,
          "adopt refuses a request larger than the chunk", "adopted");
    fake_release(NULL, &big->pc);
    pa_pool_close(&p);
    check(nreleased == before + 2, "close released the adopted chunk", "released %d",
          nreleased - before);
}

/* A block takes its alignment padding (up to a page) from its chunk: 64 B at
 * align 4096 hands out 64 bytes but its span is a page, so a 64 KiB chunk
 * holds 16 of them and stats count the spans; a request that fits only
 * without the padding still gets in. */
static void test_alignment_padding_is_the_blocks(void)
{
    pa_pool p;
    pa_pool_init(&p, fake_release, NULL);
    pa_pool_chunk *c;
    size_t off, got, n = 0;
    pa_tlsf_block *tb, *tbs[32];
    fake_chunk *f = fake_new(0x90000000, 0);
    int ok = pa_pool_adopt(&p, &f->pc, true, 64, 4096, &off, &got, &tb) == 0 && got == 64 &&
             pa_tlsf_size(tb) == 4096 && off == 0;
    tbs[n++] = tb;
    while (ok && pa_pool_alloc(&p, 64, 4096, &c, &off, &got, &tb) == 0) {
        ok = got == 64 && pa_tlsf_size(tb) == 4096 && off % 4096 == 0 && n < 32;
        tbs[n++] = tb;
    }
    check(ok && n == CHUNK / 4096, "64 B at align 4096 takes a page of the chunk each",
          "%zu blocks, got %zu", n, got);
    uint64_t free_bytes = 0, largest = 0; /* pa_pool_stats adds to them */
    pa_pool_stats(&p, &free_bytes, &largest);
    check(free_bytes == 0 && largest == 0, "the chunk counts as full: no free padding",
          "free %llu largest %llu", (unsigned long long)free_bytes, (unsigned long long)largest);
    check(pa_pool_alloc(&p, 64, 64, &c, &off, &got, &tb) == -ENOMEM,
          "not even a 64-aligned block fits in the padding", "off %zu", off);
    while (n > 0) {
        pa_pool_free(&p, &f->pc, tbs[--n]);
    }
    pa_pool_close(&p);
    /* a chunk of CHUNK - 64 bytes: CHUNK - 128 bytes at align 4096, padded to
     * CHUNK, would not fit; without the padding they do */
    pa_pool_init(&p, fake_release, NULL);
    fake_chunk *g = fake_new(0xa0000000, 0);
    g->pc.len = CHUNK - 64;
    check(pa_pool_adopt(&p, &g->pc, true, CHUNK - 128, 4096, &off, &got, &tb) == 0 &&
              got == CHUNK - 128 && pa_tlsf_size(tb) == CHUNK - 128,
          "a request that fits only without its padding gets none", "got %zu", got);
    pa_pool_free(&p, &g->pc, tb);
    pa_pool_close(&p);
}

static void test_plain_list(void)
{
    pa_pool own;
    pa_pool_init(&own, fake_release, NULL);
    fake_chunk *a = fake_new(0x70000000, 0), *b = fake_new(0x80000000, 0);
    pa_pool_link(&own, &a->pc);
    pa_pool_link(&own, &b->pc);
    uint64_t free_bytes = 0, largest = 0;
    pa_pool_stats(&own, &free_bytes, &largest);
    check(free_bytes == 0 && largest == 0 && !pa_pool_drop_empty(&own, NULL),
          "listed chunks (no allocator) are neither counted nor dropped", "free %llu",
          (unsigned long long)free_bytes);
    pa_pool_unlink(&own, &a->pc);
    fake_release(NULL, &a->pc);
    int before = nreleased, b_id = b->id;
    pa_pool_close(&own);
    check(nreleased == before + 1 && released[nreleased - 1] == b_id && own.head == NULL,
          "close releases what is still listed", "released %d", nreleased - before);
}

int main(void)
{
    test_requests_fill_chunks_in_turn();
    test_reused_ranges_are_zeroed();
    test_alignment();
    test_alignment_padding_is_the_blocks();
    test_plain_list();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
