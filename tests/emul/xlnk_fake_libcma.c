/* A fake libcma.so for the xlnk backend's tests: PYNQ's libcma ABI over
 * anonymous shared memory with made-up physical addresses. Every call is
 * appended to the file named by FAKE_LIBCMA_LOG, one line each, with the
 * number of live buffers; arguments that real libcma would choke on are
 * logged with a leading "BAD" so the tests can refuse them.
 *
 * Environment (read at each call):
 *   FAKE_LIBCMA_LOG       log file (no log when unset)
 *   FAKE_LIBCMA_CAPACITY  bytes of "CMA" (default 64 MiB); cma_alloc fails beyond it
 *   FAKE_LIBCMA_PHYS      first physical address handed out whenever no buffer is
 *                         live (default 0x10000000)
 *   PYNQ_ALLOC_SYSROOT    where the constructor looks for dev/xlnk
 * Build flags: -DFAKE_NO_PHYS, -DFAKE_NO_PAGES, -DFAKE_NO_SYNC leave those symbols out.
 *
 * Like one of PYNQ's libcma builds, loading it opens /dev/xlnk and exits the
 * process when that fails; unloading it closes the node again. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emul_log.h"

#define FAKE_PAGE 4096u
#define EXPORT __attribute__((visibility("default")))

typedef struct fake_buf {
    char *virt;
    unsigned long phys;
    size_t maplen; /* page-rounded */
    uint32_t cacheable;
} fake_buf;

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static fake_buf *fake_bufs;
static size_t fake_n, fake_cap;
static size_t fake_used; /* page-rounded bytes live */
static unsigned long fake_next_phys;
static int fake_xlnk_fd = -1;

static void fake_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emul_vlog(getenv("FAKE_LIBCMA_LOG"), open, close, fmt, ap);
    va_end(ap);
}

static unsigned long long fake_env(const char *name, unsigned long long dflt)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? strtoull(v, NULL, 0) : dflt;
}

__attribute__((constructor)) static void fake_init(void)
{
    char path[4096];
    const char *root = getenv("PYNQ_ALLOC_SYSROOT");
    snprintf(path, sizeof(path), "%s/dev/xlnk", root != NULL ? root : "");
    fake_xlnk_fd = open(path, O_RDWR | O_CLOEXEC);
    if (fake_xlnk_fd < 0) {
        fake_log("init cannot open %s: exiting", path);
        exit(-1);
    }
    fake_log("init");
}

__attribute__((destructor)) static void fake_fini(void)
{
    fake_log("fini live=%zu", fake_n);
    if (fake_xlnk_fd >= 0) {
        close(fake_xlnk_fd);
    }
}

/* the live buffer containing [p, p+len), or NULL */
__attribute__((unused)) static fake_buf *fake_find(const void *p, size_t len)
{
    const char *c = p;
    for (size_t i = 0; i < fake_n; i++) {
        fake_buf *b = &fake_bufs[i];
        if (c >= b->virt && c < b->virt + b->maplen && len <= (size_t)(b->virt + b->maplen - c)) {
            return b;
        }
    }
    return NULL;
}

EXPORT void *cma_alloc(uint32_t len, uint32_t cacheable)
{
    pthread_mutex_lock(&fake_lock);
    size_t cap = (size_t)fake_env("FAKE_LIBCMA_CAPACITY", 64u << 20);
    size_t maplen = ((size_t)len + FAKE_PAGE - 1) / FAKE_PAGE * FAKE_PAGE;
    void *p = NULL;
    if (fake_n == 0) {
        /* CMA is empty: start again at its base */
        fake_next_phys = (unsigned long)fake_env("FAKE_LIBCMA_PHYS", 0x10000000u);
    }
    if (len == 0 || fake_used > cap || maplen > cap - fake_used) {
        goto fail;
    }
    if (fake_n == fake_cap) {
        size_t ncap = fake_cap ? 2 * fake_cap : 64;
        fake_buf *g = realloc(fake_bufs, ncap * sizeof(*g));
        if (g == NULL) {
            goto fail;
        }
        fake_bufs = g;
        fake_cap = ncap;
    }
    p = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        p = NULL;
        goto fail;
    }
    /* CMA is reused memory: hand it out dirty so missing zeroing shows */
    memset(p, 0xa5, maplen);
    fake_bufs[fake_n++] = (fake_buf){p, fake_next_phys, maplen, cacheable};
    fake_used += maplen;
    fake_log("alloc len=%u cacheable=%u buf=%p phys=0x%lx live=%zu", len, cacheable, p,
             fake_next_phys, fake_n);
    fake_next_phys += maplen;
    pthread_mutex_unlock(&fake_lock);
    return p;
fail:
    fake_log("alloc len=%u cacheable=%u buf=NULL free=%zu live=%zu", len, cacheable,
             cap > fake_used ? cap - fake_used : 0, fake_n);
    pthread_mutex_unlock(&fake_lock);
    return NULL;
}

#ifndef FAKE_NO_PHYS
EXPORT unsigned long cma_get_phy_addr(void *buf)
{
    pthread_mutex_lock(&fake_lock);
    unsigned long phys = 0;
    for (size_t i = 0; i < fake_n; i++) {
        /* like PYNQ's libcma: only the pointer cma_alloc returned is known */
        if (fake_bufs[i].virt == buf) {
            phys = fake_bufs[i].phys;
        }
    }
    fake_log("%sgetphys buf=%p phys=0x%lx", phys == 0 ? "BAD " : "", buf, phys);
    pthread_mutex_unlock(&fake_lock);
    return phys;
}
#endif

EXPORT void cma_free(void *buf)
{
    pthread_mutex_lock(&fake_lock);
    for (size_t i = 0; i < fake_n; i++) {
        if (fake_bufs[i].virt == buf) {
            munmap(buf, fake_bufs[i].maplen);
            fake_used -= fake_bufs[i].maplen;
            fake_bufs[i] = fake_bufs[--fake_n];
            fake_log("free buf=%p live=%zu", buf, fake_n);
            pthread_mutex_unlock(&fake_lock);
            return;
        }
    }
    fake_log("BAD free buf=%p live=%zu", buf, fake_n);
    pthread_mutex_unlock(&fake_lock);
}

#ifndef FAKE_NO_PAGES
EXPORT uint32_t cma_pages_available(void)
{
    pthread_mutex_lock(&fake_lock);
    size_t cap = (size_t)fake_env("FAKE_LIBCMA_CAPACITY", 64u << 20);
    uint32_t pages = (uint32_t)((cap > fake_used ? cap - fake_used : 0) / FAKE_PAGE);
    fake_log("pages %u", pages);
    pthread_mutex_unlock(&fake_lock);
    return pages;
}
#endif

#ifndef FAKE_NO_SYNC
/* What the xlnk driver's cache-control ioctl does with (phys_addr, size):
 * it finds the CMA buffer that contains phys_addr (xlnk_buf_find_by_phys_addr;
 * none: -EINVAL), then maintains the L1 from the START of that buffer's
 * kernel mapping for size bytes, and the L2 (outer cache) over
 * [phys_addr, phys_addr + size). buf is not passed to the driver. Logged: the
 * byte ranges, as offsets in the buffer, each level really maintained. */
static void fake_sync(const char *what, void *buf, unsigned int phys_addr, int size)
{
    pthread_mutex_lock(&fake_lock);
    fake_buf *b = NULL;
    for (size_t i = 0; i < fake_n; i++) {
        if (fake_bufs[i].phys <= phys_addr && phys_addr < fake_bufs[i].phys + fake_bufs[i].maplen) {
            b = &fake_bufs[i];
        }
    }
    size_t l2 = b != NULL ? phys_addr - b->phys : 0;
    /* past the buffer's end the driver maintains whatever memory follows it */
    int ok = b != NULL && size > 0 && (size_t)size <= b->maplen && l2 + (size_t)size <= b->maplen;
    fake_log("%s%s buf=%p phys=0x%x size=%d cacheable=%u l1lo=0 l1hi=%d l2lo=%zu l2hi=%zu",
             ok ? "" : "BAD ", what, buf, phys_addr, size, b != NULL ? b->cacheable : 0u, size, l2,
             l2 + (size_t)(size > 0 ? size : 0));
    pthread_mutex_unlock(&fake_lock);
}

EXPORT void cma_flush_cache(void *buf, unsigned int phys_addr, int size)
{
    fake_sync("flush", buf, phys_addr, size);
}

EXPORT void cma_invalidate_cache(void *buf, unsigned int phys_addr, int size)
{
    fake_sync("invalidate", buf, phys_addr, size);
}
#endif
