/* Zeroing large blocks with the fastest store the CPU has (no Python here). */
#ifndef PA_ZERO_H
#define PA_ZERO_H

#include <stddef.h>

/* Blocks at least this large are zeroed with non-temporal stores: they don't
 * fit the caches, so writing around them halves the memory traffic (no read
 * for ownership) and leaves the caches to the user's data. Smaller ones use
 * memset, which leaves them in the cache for the user's first write. */
#define PA_ZERO_NT_BYTES ((size_t)1 << 20)

/* Sets n bytes at p to zero. p and n multiples of 64 use the non-temporal
 * path when n >= PA_ZERO_NT_BYTES (x86-64: SSE2 streaming stores and an
 * SFENCE, so the zeros are ordered before any later store); any other p/n,
 * and other CPUs, use memset (glibc's arm64 memset zeroes with DC ZVA). */
void pa_zero(void *p, size_t n);

#endif
