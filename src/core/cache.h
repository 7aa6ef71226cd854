/* CPU data-cache maintenance for non-coherent DMA, done from user space where
 * the architecture allows it (AArch64, x86); 32-bit ARM needs the kernel. */
#ifndef PA_CACHE_H
#define PA_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "runs.h"

size_t pa_cache_line_size(void);
/* true when this CPU can clean/invalidate to the point of coherency from user space */
bool pa_cache_user_maintenance(void);
/* clean (write back) the lines covering [p, p+len): before the device reads */
int pa_cache_clean(void *p, size_t len);
/* clean+invalidate the lines covering [p, p+len): after the device wrote */
int pa_cache_clean_invalidate(void *p, size_t len);
/* the lines covering each run of r (offsets from base), one barrier at the
 * end (a sparse view's runs): clean, or clean+invalidate; -EINVAL when the
 * runs overflow or wrap the address space */
int pa_cache_runs(char *base, const pa_runs *r, bool invalidate);
const char *pa_cache_method(void); /* e.g. "clflushopt", "dc civac", "none" */

#endif
