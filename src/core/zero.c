/* pa_zero: see zero.h */
#include "zero.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

void pa_zero_nt(void *p, size_t n)
{
#if defined(__x86_64__)
    __m128i z = _mm_setzero_si128();
    char *c = p;
    for (size_t i = 0; i < n; i += 64) {
        _mm_stream_si128((__m128i *)(void *)(c + i), z);
        _mm_stream_si128((__m128i *)(void *)(c + i + 16), z);
        _mm_stream_si128((__m128i *)(void *)(c + i + 32), z);
        _mm_stream_si128((__m128i *)(void *)(c + i + 48), z);
    }
    _mm_sfence(); /* streaming stores are weakly ordered */
#else
    memset(p, 0, n);
#endif
}

void pa_zero(void *p, size_t n)
{
    if (n >= PA_ZERO_NT_BYTES && ((uintptr_t)p | n) % 64 == 0) {
        pa_zero_nt(p, n);
        return;
    }
    memset(p, 0, n);
}
