/* The plain-C tests' reporting: one "ok"/"FAIL" line per check, and the
 * counts each test prints last as "N passed, M failed" (read by run.sh and CI). */
#ifndef PA_CTEST_H
#define PA_CTEST_H

#include <stdarg.h>
#include <stdio.h>

static int passed, failed;

__attribute__((format(printf, 3, 4))) static void check(int ok, const char *name,
                                                        const char *fmt, ...)
{
    if (ok) {
        passed++;
        printf("ok   %s\n", name);
        return;
    }
    failed++;
    printf("FAIL %s: ", name);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

#endif
