/* Zeroing large blocks with the fastest store the CPU has (no Python here). */
#ifndef PA_ZERO_H
#define PA_ZERO_H

#include <stddef.h>

/* Blocks at least this large are zeroed with non-temporal stores on x86-64:
 * they write around the caches (no read for ownership), which pays only when
 * the block does not fit the part of the cache this process gets. Below it
 * memset is faster, also for the user's next write, which then hits the
 * cache; over cache-resident dirty lines streaming stores are slower still.
 * Measured crossover (zero, then write every byte, on the bench machine):
 * memset wins at 64 MiB (11.3 vs 15.6 ms), streaming at 96 MiB (16.3 vs
 * 25.4 ms) and 256 MiB (43 vs 61 ms). glibc's own threshold derives from the
 * last-level cache size, which a VM reports for the whole host (480 MiB). */
#define PA_ZERO_NT_BYTES ((size_t)96 << 20)

/* Sets n bytes at p to zero: non-temporal when n >= PA_ZERO_NT_BYTES and p,
 * n are multiples of 64 (x86-64), memset otherwise (glibc's arm64 memset
 * zeroes with DC ZVA). */
void pa_zero(void *p, size_t n);

/* The non-temporal path alone, whatever n (p and n multiples of 64; x86-64
 * SSE2 streaming stores and an SFENCE, so the zeros are ordered before any
 * later store; memset elsewhere). For tests. */
void pa_zero_nt(void *p, size_t n);

#endif
