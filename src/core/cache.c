/* Data-cache clean and clean+invalidate by virtual address from user space:
 * CLWB/CLFLUSHOPT/CLFLUSH on x86, DC CVAC/CIVAC on AArch64. Elsewhere (32-bit
 * ARM) only the kernel can reach the point of coherency, so we say so. */
#include "cache.h"

#include <errno.h>
#include <stdint.h>

#ifndef ENOTSUP
#define ENOTSUP EOPNOTSUPP
#endif

#if defined(__x86_64__) || defined(__i386__)

#include <cpuid.h>

enum { PA_CACHE_CLFLUSH = 1, PA_CACHE_CLFLUSHOPT = 2, PA_CACHE_CLWB = 3 };

/* line size in the low 16 bits, method above; 0 until first probed. Probing
 * twice from two threads stores the same word, so the race is benign. */
static unsigned pa_cache_word;

static unsigned pa_cache_probe(void)
{
    unsigned w = __atomic_load_n(&pa_cache_word, __ATOMIC_RELAXED);
    if (w != 0) {
        return w;
    }
    unsigned a, b, c, d;
    unsigned line = 0, method = PA_CACHE_CLFLUSH;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        line = ((b >> 8) & 0xff) * 8;
    }
    if (line < 16 || (line & (line - 1)) != 0) {
        line = 64;
    }
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        if (b & (1u << 23)) {
            method = PA_CACHE_CLFLUSHOPT;
            if (b & (1u << 24)) {
                method = PA_CACHE_CLWB;
            }
        }
    }
    w = line | (method << 16);
    __atomic_store_n(&pa_cache_word, w, __ATOMIC_RELAXED);
    return w;
}

size_t pa_cache_line_size(void)
{
    return pa_cache_probe() & 0xffff;
}

bool pa_cache_user_maintenance(void)
{
    return true;
}

const char *pa_cache_method(void)
{
    switch (pa_cache_probe() >> 16) {
    case PA_CACHE_CLWB:
        return "clwb/clflushopt";
    case PA_CACHE_CLFLUSHOPT:
        return "clflushopt";
    default:
        return "clflush";
    }
}

/* CLWB and CLFLUSHOPT are spelled as bytes with the address in (e/r)ax, so
 * neither the compiler nor the assembler needs to know them (no -m flags):
 * 66 0F AE /6 and 66 0F AE /7 with ModRM 0x30 / 0x38 = [eax]/[rax]. The
 * "memory" clobber keeps earlier stores to the line before the flush. */
#define PA_CACHE_CLWB_LINE(a) __asm__ volatile(".byte 0x66, 0x0f, 0xae, 0x30" : : "a"(a) : "memory")
#define PA_CACHE_CLFLUSHOPT_LINE(a)                                                                \
    __asm__ volatile(".byte 0x66, 0x0f, 0xae, 0x38" : : "a"(a) : "memory")
#define PA_CACHE_CLFLUSH_LINE(a) __asm__ volatile("clflush (%0)" : : "r"(a) : "memory")

/* the architecture's part of pa_cache_runs: the line size and method, and
 * the barrier after the last line */
typedef struct pa_cache_how {
    size_t line;
    unsigned method;
} pa_cache_how;

static pa_cache_how pa_cache_setup(void)
{
    unsigned w = pa_cache_probe();
    pa_cache_how h = {w & 0xffff, w >> 16};
    return h;
}

static void pa_cache_fence(pa_cache_how h, bool invalidate)
{
    if (h.method == PA_CACHE_CLWB && !invalidate) {
        __asm__ volatile("sfence" : : : "memory"); /* orders CLWB's write-backs */
    } else {
        __asm__ volatile("mfence" : : : "memory");
    }
}

#elif defined(__aarch64__)

size_t pa_cache_line_size(void)
{
    uint64_t ctr;
    /* CTR_EL0 is readable at EL0 under Linux; DminLine is log2(words) */
    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    return (size_t)4 << ((ctr >> 16) & 0xf);
}

bool pa_cache_user_maintenance(void)
{
    return true;
}

const char *pa_cache_method(void)
{
    return "dc cvac/dc civac";
}

typedef struct pa_cache_how {
    size_t line;
} pa_cache_how;

static pa_cache_how pa_cache_setup(void)
{
    pa_cache_how h = {pa_cache_line_size()};
    return h;
}

#define PA_CACHE_CVAC_LINE(a) __asm__ volatile("dc cvac, %0" : : "r"(a) : "memory")
#define PA_CACHE_CIVAC_LINE(a) __asm__ volatile("dc civac, %0" : : "r"(a) : "memory")

static void pa_cache_fence(pa_cache_how h, bool invalidate)
{
    (void)h;
    (void)invalidate;
    __asm__ volatile("dsb sy" : : : "memory");
}

#endif

#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__)

/* every line of every range the walk gives, with op(a) per line: the loop
 * is instantiated per instruction, so a single-line run costs the
 * instruction and a few compares */
#define PA_CACHE_WALK(it, op)                                                                      \
    do {                                                                                           \
        size_t lo_, hi_;                                                                           \
        while (pa_runs_next(&(it), &lo_, &hi_)) {                                                  \
            /* counted, not compared: hi_ is 0 after the top line */                               \
            uintptr_t a_ = lo_;                                                                    \
            for (size_t n_ = (hi_ - lo_) >> shift; n_ > 0; n_--, a_ += h.line) {                   \
                op(a_);                                                                            \
            }                                                                                      \
        }                                                                                          \
    } while (0)

int pa_cache_runs(char *base, const pa_runs *r, bool invalidate)
{
    size_t lo, hi, count;
    uintptr_t last;
    if (!pa_runs_extent(r, &lo, &hi, &count) ||
        __builtin_add_overflow((uintptr_t)base, hi - 1, &last)) {
        return -EINVAL;
    }
    pa_cache_how h = pa_cache_setup();
    int shift = __builtin_ctzll(h.line); /* a power of two */
    pa_runs_it it;
    pa_runs_start(&it, r, count, (size_t)(uintptr_t)base, h.line);
#if defined(__aarch64__)
    if (invalidate) {
        PA_CACHE_WALK(it, PA_CACHE_CIVAC_LINE);
    } else {
        PA_CACHE_WALK(it, PA_CACHE_CVAC_LINE);
    }
#else
    if (h.method == PA_CACHE_CLWB && !invalidate) {
        PA_CACHE_WALK(it, PA_CACHE_CLWB_LINE);
    } else if (h.method >= PA_CACHE_CLFLUSHOPT) {
        PA_CACHE_WALK(it, PA_CACHE_CLFLUSHOPT_LINE);
    } else {
        PA_CACHE_WALK(it, PA_CACHE_CLFLUSH_LINE);
    }
#endif
    pa_cache_fence(h, invalidate);
    return 0;
}

int pa_cache_clean(void *p, size_t len)
{
    pa_runs r = {.off = 0, .len = len, .ndim = 0};
    return len == 0 ? 0 : pa_cache_runs(p, &r, false);
}

int pa_cache_clean_invalidate(void *p, size_t len)
{
    pa_runs r = {.off = 0, .len = len, .ndim = 0};
    return len == 0 ? 0 : pa_cache_runs(p, &r, true);
}

#else

size_t pa_cache_line_size(void)
{
#if defined(__ARM_ARCH) && __ARM_ARCH == 7
    return 32; /* Cortex-A9 (Zynq-7000) */
#else
    return 64;
#endif
}

bool pa_cache_user_maintenance(void)
{
    return false;
}

const char *pa_cache_method(void)
{
    return "none (kernel sync needed)";
}

int pa_cache_clean(void *p, size_t len)
{
    (void)p;
    return len == 0 ? 0 : -ENOTSUP;
}

int pa_cache_clean_invalidate(void *p, size_t len)
{
    (void)p;
    return len == 0 ? 0 : -ENOTSUP;
}

int pa_cache_runs(char *base, const pa_runs *r, bool invalidate)
{
    (void)base;
    (void)invalidate;
    return r->len == 0 ? 0 : -ENOTSUP;
}

#endif
