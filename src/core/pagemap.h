/* Physical addresses of this process's memory through /proc/self/pagemap, for
 * backends whose kernel interface reports no device address (hugepage,
 * dmaheap). Reading frame numbers needs CAP_SYS_ADMIN since Linux 4.2. */
#ifndef PA_PAGEMAP_H
#define PA_PAGEMAP_H

#include <stddef.h>
#include <stdint.h>

#include "pa.h"

/* Physical address of the byte at va; its page must be present (MAP_POPULATE
 * or touched). -EPERM when the kernel hides frame numbers, -EFAULT when the
 * page is not present, other negative errno values when pagemap can't be read. */
int pa_pagemap_phys(const void *va, uint64_t *phys, pa_err *err);

/* phys[i] = physical address of va + i * step for i < n, with one open of
 * pagemap; errors as pa_pagemap_phys. */
int pa_pagemap_frames(const void *va, size_t step, size_t n, uint64_t *phys, pa_err *err);

/* Whether [va, va + len) is physically contiguous. step is the size of the
 * unit already known to be contiguous (the huge page size for hugetlb memory,
 * 0 for base pages); the range is sampled every step bytes and at its last
 * byte. Returns 0 when contiguous (*phys = physical address of va), 1 when not
 * (err->msg says where it breaks; *phys is still set), a negative errno value
 * when pagemap can't be read (errors as pa_pagemap_phys). */
int pa_pagemap_contiguous(const void *va, size_t len, size_t step, uint64_t *phys, pa_err *err);

#endif
