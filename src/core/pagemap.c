/* Virtual-to-physical translation through /proc/self/pagemap: one
 * little-endian u64 per base page, bit 63 present, bits 0-54 frame number. */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64 /* pagemap offsets exceed 2 GiB on 64-bit kernels */
#include "pagemap.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define PA_PAGEMAP_PRESENT (UINT64_C(1) << 63)
#define PA_PAGEMAP_PFN_MASK ((UINT64_C(1) << 55) - 1)
#define PA_PAGEMAP_BATCH 512 /* entries per pread when sampling base pages */

static size_t pa_pagemap_pagesize(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? (size_t)ps : 4096;
}

static int pa_pagemap_open(pa_err *err)
{
    char path[512];
    if (pa_path(path, sizeof(path), "/proc/self/pagemap") < 0) {
        return pa_seterr(err, ENAMETOOLONG,
                         "the path of /proc/self/pagemap is too long; check PYNQ_ALLOC_SYSROOT");
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == EPERM || e == EACCES) {
            /* Linux 4.0 and 4.1 refused the open itself without CAP_SYS_ADMIN */
            return pa_seterr(err, EPERM,
                             "open(%s) failed: %s; physical addresses need root or "
                             "CAP_SYS_ADMIN: run as root (sudo) or with CAP_SYS_ADMIN",
                             path, strerror(e));
        }
        return pa_seterr(err, e,
                         "open(%s) failed: %s; physical addresses are read from "
                         "/proc/self/pagemap (a kernel with CONFIG_PROC_PAGE_MONITOR)",
                         path, strerror(e));
    }
    return fd;
}

/* count consecutive entries starting at page index `index` */
static int pa_pagemap_pread(int fd, uint64_t *out, size_t count, uint64_t index, pa_err *err)
{
    size_t bytes;
    uint64_t off;
    if (__builtin_mul_overflow(count, sizeof(uint64_t), &bytes) ||
        __builtin_mul_overflow(index, (uint64_t)sizeof(uint64_t), &off) || off > INT64_MAX) {
        return pa_seterr(err, EOVERFLOW, "pagemap range of %zu entries at page %llu overflows",
                         count, (unsigned long long)index);
    }
    char *p = (char *)out;
    while (bytes > 0) {
        ssize_t n = pread(fd, p, bytes, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            int e = errno;
            return pa_seterr(err, e,
                             "pread(/proc/self/pagemap) at page %llu failed: %s; the kernel "
                             "refused to report physical addresses",
                             (unsigned long long)index, strerror(e));
        }
        if (n == 0) {
            return pa_seterr(err, EIO,
                             "short read from /proc/self/pagemap at page %llu: the address is "
                             "outside the process's address space",
                             (unsigned long long)index);
        }
        p += n;
        off += (uint64_t)n;
        bytes -= (size_t)n;
    }
    return 0;
}

static int pa_pagemap_decode(uint64_t entry, uintptr_t va, size_t pgsz, uint64_t *phys, pa_err *err)
{
    if ((entry & PA_PAGEMAP_PRESENT) == 0) {
        return pa_seterr(err, EFAULT,
                         "the page at virtual address %p is not present in memory; map it "
                         "with MAP_POPULATE or touch it before asking for its physical address",
                         (void *)va);
    }
    uint64_t pfn = entry & PA_PAGEMAP_PFN_MASK;
    if (pfn == 0) {
        return pa_seterr(err, EPERM,
                         "/proc/self/pagemap reports page frame 0: physical addresses need root "
                         "or CAP_SYS_ADMIN (Linux >= 4.2 hides page frame numbers from other "
                         "users); run as root / CAP_SYS_ADMIN (e.g. with sudo)");
    }
    *phys = pfn * (uint64_t)pgsz + (uint64_t)(va % pgsz);
    return 0;
}

/* out[i] = physical address of base + (first + i) * step, for i < count;
 * the caller has checked that these addresses don't wrap. */
static int pa_pagemap_samples(int fd, uintptr_t base, size_t step, size_t first, size_t count,
                              uint64_t *out, pa_err *err)
{
    size_t pgsz = pa_pagemap_pagesize();
    int rc;
    if (step == pgsz) {
        /* consecutive base pages: one pread for all of them */
        rc = pa_pagemap_pread(fd, out, count, (base + first * step) / pgsz, err);
        if (rc < 0) {
            return rc;
        }
    } else {
        for (size_t i = 0; i < count; i++) {
            rc = pa_pagemap_pread(fd, &out[i], 1, (base + (first + i) * step) / pgsz, err);
            if (rc < 0) {
                return rc;
            }
        }
    }
    for (size_t i = 0; i < count; i++) {
        rc = pa_pagemap_decode(out[i], base + (first + i) * step, pgsz, &out[i], err);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

int pa_pagemap_frames(const void *va, size_t step, size_t n, uint64_t *phys, pa_err *err)
{
    uintptr_t base = (uintptr_t)va;
    size_t span;
    if (n == 0) {
        return 0;
    }
    if ((step == 0 && n > 1) || __builtin_mul_overflow(n - 1, step, &span) ||
        span > UINTPTR_MAX - base) {
        return pa_seterr(err, EINVAL, "pagemap: %zu samples %zu bytes apart from %p wrap around",
                         n, step, va);
    }
    int fd = pa_pagemap_open(err);
    if (fd < 0) {
        return fd;
    }
    int rc = pa_pagemap_samples(fd, base, step, 0, n, phys, err);
    close(fd);
    return rc;
}

int pa_pagemap_phys(const void *va, uint64_t *phys, pa_err *err)
{
    return pa_pagemap_frames(va, 0, 1, phys, err);
}

int pa_pagemap_contiguous(const void *va, size_t len, size_t step, uint64_t *phys, pa_err *err)
{
    size_t pgsz = pa_pagemap_pagesize();
    uintptr_t base = (uintptr_t)va;
    uint64_t buf[PA_PAGEMAP_BATCH];
    uint64_t p0 = 0;
    int rc = 0;

    if (step < pgsz) {
        step = pgsz;
    }
    if (len == 0) {
        len = 1;
    }
    if (len - 1 > UINTPTR_MAX - base) {
        return pa_seterr(err, EINVAL, "pagemap: range of %zu bytes at %p wraps around", len, va);
    }
    size_t n = (len - 1) / step + 1; /* samples at i * step < len */
    int fd = pa_pagemap_open(err);
    if (fd < 0) {
        return fd;
    }
    for (size_t done = 0; done < n;) {
        size_t cnt = n - done < PA_PAGEMAP_BATCH ? n - done : PA_PAGEMAP_BATCH;
        rc = pa_pagemap_samples(fd, base, step, done, cnt, buf, err);
        if (rc < 0) {
            goto out;
        }
        if (done == 0) {
            p0 = buf[0];
            *phys = p0;
        }
        for (size_t j = 0; j < cnt; j++) {
            uint64_t off = (uint64_t)(done + j) * step;
            if (buf[j] != p0 + off) {
                rc = 1;
                pa_seterr(err, EFAULT,
                          "memory at %p is not physically contiguous: byte %llu is at physical "
                          "0x%llx, not 0x%llx",
                          va, (unsigned long long)off, (unsigned long long)buf[j],
                          (unsigned long long)(p0 + off));
                goto out;
            }
        }
        done += cnt;
    }
    if ((len - 1) % step != 0) {
        /* the last byte may sit in a unit no sample reached */
        rc = pa_pagemap_samples(fd, base + (len - 1), pgsz, 0, 1, buf, err);
        if (rc < 0) {
            goto out;
        }
        if (buf[0] != p0 + (len - 1)) {
            rc = 1;
            pa_seterr(err, EFAULT,
                      "memory at %p is not physically contiguous: byte %zu is at physical 0x%llx, "
                      "not 0x%llx",
                      va, len - 1, (unsigned long long)buf[0],
                      (unsigned long long)(p0 + (len - 1)));
        }
    }
out:
    close(fd);
    return rc;
}
