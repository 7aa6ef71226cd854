/* Plain-C tests of pa_zero and pa_zero_nt (src/core/zero.c): every byte of
 * the range reads zero afterwards and no byte outside it changes, on both
 * paths, with aligned and unaligned starts and ends. */
#define _GNU_SOURCE
#include "zero.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "ctest.h"

#define GUARD 4096

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 131u + 7u) | 1u; /* never 0 */
}

static void one(void (*zero)(void *, size_t), const char *fn, unsigned char *base, size_t total,
                size_t off, size_t n)
{
    for (size_t i = 0; i < total; i++) {
        base[i] = pattern(i);
    }
    zero(base + off, n);
    size_t bad_in = SIZE_MAX, bad_out = SIZE_MAX;
    for (size_t i = 0; i < total; i++) {
        bool in = i >= off && i < off + n;
        if (in && base[i] != 0 && bad_in == SIZE_MAX) {
            bad_in = i;
        }
        if (!in && base[i] != pattern(i) && bad_out == SIZE_MAX) {
            bad_out = i;
        }
    }
    char name[96];
    snprintf(name, sizeof(name), "%s(off %zu, %zu bytes) zeroes exactly its range", fn, off, n);
    check(bad_in == SIZE_MAX && bad_out == SIZE_MAX, name,
          "first nonzero byte inside at %zd, first changed byte outside at %zd",
          bad_in == SIZE_MAX ? (ssize_t)-1 : (ssize_t)bad_in,
          bad_out == SIZE_MAX ? (ssize_t)-1 : (ssize_t)bad_out);
}

int main(void)
{
    const size_t small = (size_t)3 << 20;
    size_t total = PA_ZERO_NT_BYTES + 2 * GUARD;
    unsigned char *base =
        mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        check(0, "mmap", "%s", strerror(errno));
    } else {
        size_t t = small + 2 * GUARD; /* the small cases look at this much */
        one(pa_zero, "pa_zero", base, t, GUARD, 64);              /* small, aligned */
        one(pa_zero, "pa_zero", base, t, GUARD + 3, 61);          /* small, unaligned */
        one(pa_zero, "pa_zero", base, t, GUARD + 1, small);       /* unaligned start */
        one(pa_zero, "pa_zero", base, t, GUARD, small + 5);       /* unaligned end */
        one(pa_zero_nt, "pa_zero_nt", base, t, GUARD, 64);        /* one line */
        one(pa_zero_nt, "pa_zero_nt", base, t, GUARD + 64, small); /* line-aligned offset */
        /* the dispatch: a block at the threshold takes the streaming path */
        one(pa_zero, "pa_zero", base, total, GUARD, PA_ZERO_NT_BYTES);
        munmap(base, total);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
