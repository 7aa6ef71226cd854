/* CPU data-cache maintenance for non-coherent DMA, done from user space where
 * the architecture allows it (AArch64, x86); 32-bit ARM needs the kernel. */
#ifndef PA_CACHE_H
#define PA_CACHE_H

#include <stdbool.h>
#include <stddef.h>

size_t pa_cache_line_size(void);
/* true when this CPU can clean/invalidate to the point of coherency from user space */
bool pa_cache_user_maintenance(void);
/* clean (write back) the lines covering [p, p+len): before the device reads */
int pa_cache_clean(void *p, size_t len);
/* clean+invalidate the lines covering [p, p+len): after the device wrote */
int pa_cache_clean_invalidate(void *p, size_t len);
/* the lines covering each [base + pairs[2i], + pairs[2i+1]) for i < n, one
 * barrier at the end (a sparse view's runs): clean, or clean+invalidate */
int pa_cache_ranges(char *base, const size_t *pairs, size_t n, bool invalidate);
const char *pa_cache_method(void); /* e.g. "clflushopt", "dc civac", "none" */

#endif
