/* The hardware's floor for a region-of-interest flush, measured without any
 * pynq_alloc code: bench/run.py builds and runs this next to its ROI rows, so
 * the ROI figures can be read against what a plain C loop does on the same
 * machine in the same run.
 *
 *   floor clean ROWS ROW_BYTES REPEATS   CPU cache clean (CLWB/CLFLUSHOPT,
 *                                        DC CVAC): one line per row vs as many
 *                                        contiguous lines
 *   floor copy  ROWS ROW_BYTES REPEATS   copy one 64-byte line per row to a
 *                                        second mapping (what sim's flush does)
 *                                        vs memcpy of as many contiguous bytes;
 *                                        the faster of a memcpy per line and
 *                                        streaming stores with read-ahead
 *
 * Each repeat dirties the whole image, times the contiguous case, dirties it
 * again and times the per-row case, as bench/run.py's big_figure does. Prints
 * "median-ratio median-rows-ns median-contiguous-ns"; exit 77 where the CPU
 * has no user-space cache maintenance. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <emmintrin.h>
#endif

#define LINE 64

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return v[n / 2];
}

/* 0: none, 1: CLFLUSHOPT, 2: CLWB (x86); 3: DC CVAC (AArch64) */
static int clean_method(void)
{
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 23))) {
        return (b & (1u << 24)) ? 2 : 1;
    }
    return 0;
#elif defined(__aarch64__)
    return 3;
#else
    return 0;
#endif
}

static void clean_lines(int method, char *p, size_t count, size_t stride)
{
    for (size_t i = 0; i < count; i++) {
        char *a = p + i * stride;
#if defined(__x86_64__)
        if (method == 2) {
            __asm__ volatile(".byte 0x66, 0x0f, 0xae, 0x30" : : "a"(a) : "memory");
        } else {
            __asm__ volatile(".byte 0x66, 0x0f, 0xae, 0x38" : : "a"(a) : "memory");
        }
#elif defined(__aarch64__)
        (void)method;
        __asm__ volatile("dc cvac, %0" : : "r"(a) : "memory");
#else
        (void)method;
        (void)a;
#endif
    }
#if defined(__x86_64__)
    __asm__ volatile("sfence" : : : "memory");
#elif defined(__aarch64__)
    __asm__ volatile("dsb sy" : : : "memory");
#endif
}

static void copy_lines_memcpy(char *dst, const char *src, size_t count, size_t stride)
{
    for (size_t i = 0; i < count; i++) {
        memcpy(dst + i * stride, src + i * stride, LINE);
    }
}

static void copy_lines_stream(char *dst, const char *src, size_t count, size_t stride)
{
#if defined(__x86_64__)
    for (size_t i = 0; i < count; i++) {
        __builtin_prefetch(src + (i + 16) * stride);
        const __m128i *s = (const __m128i *)(const void *)(src + i * stride);
        __m128i *d = (__m128i *)(void *)(dst + i * stride);
        __m128i a = _mm_load_si128(s), b = _mm_load_si128(s + 1);
        __m128i c = _mm_load_si128(s + 2), e = _mm_load_si128(s + 3);
        _mm_stream_si128(d, a);
        _mm_stream_si128(d + 1, b);
        _mm_stream_si128(d + 2, c);
        _mm_stream_si128(d + 3, e);
    }
    _mm_sfence();
#else
    copy_lines_memcpy(dst, src, count, stride);
#endif
}

static char *map(size_t n)
{
    char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("floor: mmap");
        exit(1);
    }
    madvise(p, n, MADV_HUGEPAGE); /* the backends' memory is in 2 MiB pages too */
    memset(p, 1, n);
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: floor clean|copy ROWS ROW_BYTES REPEATS\n");
        return 2;
    }
    int copy = strcmp(argv[1], "copy") == 0;
    size_t rows = strtoul(argv[2], NULL, 0), row = strtoul(argv[3], NULL, 0);
    int repeats = atoi(argv[4]);
    if ((!copy && strcmp(argv[1], "clean") != 0) || rows == 0 || row < LINE || row % LINE ||
        repeats < 1 || repeats > 1000) {
        fprintf(stderr, "floor: bad arguments\n");
        return 2;
    }
    int method = clean_method();
    if (!copy && method == 0) {
        printf("no user-space cache clean on this CPU\n");
        return 77;
    }
    size_t size = rows * row;
    char *img = map(size), *dev = copy ? map(size) : NULL;
    double *ratio = malloc(3 * (size_t)repeats * sizeof(double));
    if (ratio == NULL) {
        return 1;
    }
    double *t_rows = ratio + repeats, *t_contig = t_rows + repeats;
    for (int r = 0; r < repeats; r++) {
        memset(img, 7, size);
        double t0 = now_ns();
        if (copy) {
            memcpy(dev, img, rows * LINE);
        } else {
            clean_lines(method, img, rows, LINE);
        }
        double t1 = now_ns();
        memset(img, 7, size);
        double best;
        if (copy) {
            double a = now_ns();
            copy_lines_memcpy(dev, img, rows, row);
            double b = now_ns();
            memset(img, 7, size);
            double c = now_ns();
            copy_lines_stream(dev, img, rows, row);
            double e = now_ns();
            best = (b - a) < (e - c) ? (b - a) : (e - c);
        } else {
            double a = now_ns();
            clean_lines(method, img, rows, row);
            best = now_ns() - a;
        }
        t_contig[r] = t1 - t0;
        t_rows[r] = best;
        ratio[r] = best / (t1 - t0);
    }
    printf("%.4f %.0f %.0f\n", median(ratio, repeats), median(t_rows, repeats),
           median(t_contig, repeats));
    free(ratio);
    return 0;
}
