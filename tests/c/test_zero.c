/* Plain-C tests of pa_zero (src/core/zero.c): every byte of the range reads
 * zero afterwards and no byte outside it changes, for small and large sizes
 * (memset and non-temporal paths), aligned and unaligned starts and ends. */
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

static void one(unsigned char *base, size_t total, size_t off, size_t n)
{
    for (size_t i = 0; i < total; i++) {
        base[i] = pattern(i);
    }
    pa_zero(base + off, n);
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
    snprintf(name, sizeof(name), "pa_zero(off %zu, %zu bytes) zeroes exactly its range", off, n);
    check(bad_in == SIZE_MAX && bad_out == SIZE_MAX, name,
          "first nonzero byte inside at %zd, first changed byte outside at %zd",
          bad_in == SIZE_MAX ? (ssize_t)-1 : (ssize_t)bad_in,
          bad_out == SIZE_MAX ? (ssize_t)-1 : (ssize_t)bad_out);
}

int main(void)
{
    const size_t big = PA_ZERO_NT_BYTES * 3;
    size_t total = big + 2 * GUARD;
    unsigned char *base =
        mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        check(0, "mmap", "%s", strerror(errno));
    } else {
        one(base, total, GUARD, 64);                             /* small, aligned */
        one(base, total, GUARD + 3, 61);                         /* small, unaligned */
        one(base, total, GUARD, PA_ZERO_NT_BYTES);               /* NT threshold exactly */
        one(base, total, GUARD, big);                            /* NT, several MiB */
        one(base, total, GUARD + 64, PA_ZERO_NT_BYTES * 2 + 64); /* NT, line-aligned offset */
        one(base, total, GUARD + 1, PA_ZERO_NT_BYTES * 2);       /* unaligned start: memset */
        one(base, total, GUARD, PA_ZERO_NT_BYTES * 2 + 5);       /* unaligned end: memset */
        one(base, total, GUARD, PA_ZERO_NT_BYTES - 64);          /* just under the threshold */
        munmap(base, total);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
