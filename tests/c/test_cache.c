/* Plain-C tests of user-space cache maintenance (src/core/cache.c): the line
 * size is sane, clean and clean+invalidate over odd ranges return 0 and leave
 * the data intact, and they never touch a line outside the range (a guard
 * page would fault). On CPUs without user-space maintenance they must say
 * -ENOTSUP instead. */
#define _GNU_SOURCE
#include "cache.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ctest.h"

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 131u + 7u);
}

static void fill(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = pattern(i);
    }
}

static int intact(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != pattern(i)) {
            return 0;
        }
    }
    return 1;
}

static void test_info(void)
{
    size_t line = pa_cache_line_size();
    check(line >= 16 && (line & (line - 1)) == 0 && line <= 4096,
          "line size is a power of two >= 16", "%zu", line);
    const char *m = pa_cache_method();
    check(m != NULL && m[0] != '\0', "method is named", "empty");
    printf("# line %zu, method %s, user maintenance %s\n", line, m,
           pa_cache_user_maintenance() ? "yes" : "no");
#if defined(__aarch64__)
    /* the DC CVAC / DC CIVAC path, its line size read from CTR_EL0.DminLine
     * (log2 of 4-byte words): read it here independently */
    uint64_t ctr;
    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    check(line == ((size_t)4 << ((ctr >> 16) & 0xf)), "AArch64 line size is CTR_EL0.DminLine",
          "%zu, CTR_EL0 0x%llx", line, (unsigned long long)ctr);
    check(strcmp(m, "dc cvac/dc civac") == 0, "AArch64 maintains caches with DC CVAC / DC CIVAC",
          "%s", m);
#endif
#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__)
    check(pa_cache_user_maintenance(), "x86/AArch64 maintain caches from user space", "false");
#else
#if defined(__arm__)
    /* 32-bit ARM (Zynq-7000): the kernel-assisted path, never a user-space guess */
    check(strstr(m, "kernel") != NULL, "32-bit ARM names the kernel sync as its method", "%s", m);
#endif
    check(!pa_cache_user_maintenance(), "this CPU needs the kernel for cache maintenance",
          "true");
#endif
}

static void test_ranges(void)
{
    const size_t n = 3 * 4096 + 123;
    unsigned char *buf = malloc(n);
    if (buf == NULL) {
        check(0, "malloc", "out of memory");
        return;
    }
    fill(buf, n);
    bool user = pa_cache_user_maintenance();
    int want = user ? 0 : -ENOTSUP;
    /* odd starts and lengths: inside one line, across two, across pages */
    static const size_t spans[][2] = {{3, 1}, {1, 62}, {63, 2}, {5, 777}, {17, 3 * 4096 + 100},
                                      {0, 3 * 4096 + 123}};
    int ok_clean = 1, ok_inval = 1;
    for (size_t i = 0; i < sizeof(spans) / sizeof(spans[0]); i++) {
        int rc = pa_cache_clean(buf + spans[i][0], spans[i][1]);
        if (rc != want) {
            ok_clean = 0;
            printf("# clean +%zu len %zu: %d\n", spans[i][0], spans[i][1], rc);
        }
        rc = pa_cache_clean_invalidate(buf + spans[i][0], spans[i][1]);
        if (rc != want) {
            ok_inval = 0;
            printf("# clean_invalidate +%zu len %zu: %d\n", spans[i][0], spans[i][1], rc);
        }
    }
    check(ok_clean, user ? "clean over odd ranges returns 0" : "clean says -ENOTSUP",
          "see above");
    check(ok_inval,
          user ? "clean_invalidate over odd ranges returns 0" : "clean_invalidate says -ENOTSUP",
          "see above");
    check(intact(buf, n), "data is intact after clean and clean_invalidate", "changed");

    /* a write right before the maintenance must survive it */
    buf[4000] = (unsigned char)~pattern(4000);
    pa_cache_clean_invalidate(buf + 3999, 3);
    int kept = buf[4000] == (unsigned char)~pattern(4000);
    buf[4000] = pattern(4000);
    pa_cache_clean(buf + 4000, 1);
    check(kept && intact(buf, n), "stores just before maintenance are kept", "lost");

    check(pa_cache_clean(buf + 7, 0) == 0 && pa_cache_clean_invalidate(buf + 7, 0) == 0 &&
              pa_cache_clean(NULL, 0) == 0 && pa_cache_clean_invalidate(NULL, 0) == 0,
          "len 0 is a no-op returning 0", "nonzero");
    free(buf);
}

/* The range is rounded out to lines, never to pages: maintenance up to the
 * last byte before a PROT_NONE page must not fault. */
static void test_guard_page(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *map =
        mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
        check(0, "mmap", "%s", strerror(errno));
        return;
    }
    mprotect(map, page, PROT_NONE);
    mprotect(map + 2 * page, page, PROT_NONE);
    unsigned char *p = map + page;
    fill(p, page);
    int want = pa_cache_user_maintenance() ? 0 : -ENOTSUP;
    int rc1 = pa_cache_clean(p, page);
    int rc2 = pa_cache_clean_invalidate(p + page - 1, 1);
    int rc3 = pa_cache_clean_invalidate(p, 1);
    int rc4 = pa_cache_clean(p + 1, page - 1);
    check(rc1 == want && rc2 == want && rc3 == want && rc4 == want && intact(p, page),
          "ranges between guard pages stay inside them", "%d %d %d %d", rc1, rc2, rc3, rc4);
    munmap(map, 3 * page);
}

int main(void)
{
    test_info();
    test_ranges();
    test_guard_page();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
