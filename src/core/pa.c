/* pynq_alloc core, generic layer: spec parsing, option helpers, locking and
 * accounting around the backends' ops tables. */
#define _GNU_SOURCE
#include "pa.h"
#include "bgzero.h"
#include "cache.h"
#include "zero.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

/* probe order for the default backend; sim and hugepage are never chosen by probing */
const pa_ops *const pa_all_ops[] = {
    &pa_zocl_ops, &pa_udmabuf_ops, &pa_dmaheap_ops, &pa_xlnk_ops, &pa_sim_ops, &pa_huge_ops, NULL};

int pa_seterr(pa_err *err, int code, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return -code;
}

const pa_ops *pa_find_ops(const char *name, size_t len)
{
    for (size_t i = 0; pa_all_ops[i] != NULL; i++) {
        const char *n = pa_all_ops[i]->name;
        if (strlen(n) == len && memcmp(n, name, len) == 0) {
            return pa_all_ops[i];
        }
    }
    return NULL;
}

static char pa_names[256];
static pthread_once_t pa_names_once = PTHREAD_ONCE_INIT;

static void pa_build_names(void)
{
    for (size_t i = 0; pa_all_ops[i] != NULL; i++) {
        size_t used = strlen(pa_names);
        snprintf(pa_names + used, sizeof(pa_names) - used, "%s%s", i ? ", " : "",
                 pa_all_ops[i]->name);
    }
}

const char *pa_known_backends(void)
{
    pthread_once(&pa_names_once, pa_build_names);
    return pa_names;
}

/* ------------------------------------------------------------------ fork
 * A child of fork() inherits every mapping and fd, but the blocks, kernel
 * objects and allocator state behind them stay the parent's. The child
 * handler bumps a generation counter (a backend opened in an older
 * generation is inherited) and re-initialises the backends' locks, which a
 * thread that does not exist in the child may have held at fork time. */
static pthread_mutex_t pa_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pa_retire_lock = PTHREAD_MUTEX_INITIALIZER; /* the retired ranges */
static pa_backend *pa_reg_head;
static unsigned long pa_fork_gen;
static pthread_once_t pa_fork_once = PTHREAD_ONCE_INIT;

static void pa_fork_prepare(void)
{
    pthread_mutex_lock(&pa_reg_lock);
}

static void pa_fork_parent(void)
{
    pthread_mutex_unlock(&pa_reg_lock);
}

static void pa_fork_child(void)
{
    pa_fork_gen++;
    for (pa_backend *be = pa_reg_head; be != NULL; be = be->next) {
        pthread_mutex_init(&be->lock, NULL);
        /* the threads syncing ranges do not exist in the child */
        pthread_mutex_init(&be->range_lock, NULL);
        pthread_cond_init(&be->range_cv, NULL);
        be->ranges = NULL;
    }
    pthread_mutex_init(&pa_reg_lock, NULL);
    pthread_mutex_init(&pa_retire_lock, NULL);
    /* nor does the background zeroer's worker (bgzero.h) */
    pa_bgzero_fork_child();
}

static void pa_fork_register(void)
{
    pthread_atfork(pa_fork_prepare, pa_fork_parent, pa_fork_child);
}

/* ------------------------------------------------------------ waiting */
static _Atomic(pa_waiter_fn) pa_waiter;

void pa_set_waiter(pa_waiter_fn waiter)
{
    pa_waiter = waiter;
}

void pa_wait(void (*block)(void *), void *arg)
{
    pa_waiter_fn w = pa_waiter;
    if (w != NULL) {
        w(block, arg);
    } else {
        block(arg);
    }
}

static _Atomic size_t pa_gil_bytes = PA_WORK_GIL_BYTES;

size_t pa_work_gil_bytes(void)
{
    return pa_gil_bytes;
}

size_t pa_set_work_gil_bytes(size_t bytes)
{
    return atomic_exchange(&pa_gil_bytes, bytes);
}

static void pa_lock_block(void *m)
{
    pthread_mutex_lock(m);
}

void pa_lock(pthread_mutex_t *m)
{
    if (pthread_mutex_trylock(m) != 0) {
        pa_wait(pa_lock_block, m);
    }
}

static bool pa_range_busy(const pa_backend *be, const pa_range *r)
{
    for (const pa_range *o = be->ranges; o != NULL; o = o->next) {
        if (o->lo < r->hi && r->lo < o->hi) {
            return true;
        }
    }
    return false;
}

typedef struct pa_range_wait {
    pa_backend *be;
    pa_range *r;
} pa_range_wait;

static void pa_range_block(void *arg)
{
    pa_range_wait *w = arg;
    pthread_mutex_lock(&w->be->range_lock);
    while (pa_range_busy(w->be, w->r)) {
        pthread_cond_wait(&w->be->range_cv, &w->be->range_lock);
    }
    w->r->next = w->be->ranges;
    w->be->ranges = w->r;
    pthread_mutex_unlock(&w->be->range_lock);
}

void pa_range_acquire(pa_backend *be, pa_range *r, size_t lo, size_t hi)
{
    r->lo = lo;
    r->hi = hi;
    if (pthread_mutex_trylock(&be->range_lock) == 0) {
        if (!pa_range_busy(be, r)) {
            r->next = be->ranges;
            be->ranges = r;
            pthread_mutex_unlock(&be->range_lock);
            return;
        }
        pthread_mutex_unlock(&be->range_lock);
    }
    pa_range_wait w = {be, r};
    pa_wait(pa_range_block, &w);
}

void pa_range_release(pa_backend *be, pa_range *r)
{
    pthread_mutex_lock(&be->range_lock); /* held by others only to scan the list */
    for (pa_range **pp = &be->ranges; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    pthread_cond_broadcast(&be->range_cv);
    pthread_mutex_unlock(&be->range_lock);
}

bool pa_inherited(const pa_backend *be)
{
    return be->gen != pa_fork_gen;
}

static void pa_reg_add(pa_backend *be)
{
    pthread_mutex_lock(&pa_reg_lock);
    be->gen = pa_fork_gen;
    be->prev = NULL;
    be->next = pa_reg_head;
    if (pa_reg_head != NULL) {
        pa_reg_head->prev = be;
    }
    pa_reg_head = be;
    pthread_mutex_unlock(&pa_reg_lock);
}

static void pa_reg_remove(pa_backend *be)
{
    pthread_mutex_lock(&pa_reg_lock);
    if (be->prev != NULL) {
        be->prev->next = be->next;
    } else {
        pa_reg_head = be->next;
    }
    if (be->next != NULL) {
        be->next->prev = be->prev;
    }
    pthread_mutex_unlock(&pa_reg_lock);
}

/* -------------------------------------------------------- retired ranges
 * 64-bit: up to 64 GiB of address space (and 1024 ranges) stays inert; 32-bit,
 * where a 3 GiB address space is scarce: 128 MiB. Beyond that the oldest
 * range is unmapped for good. Inert pages cost no memory until touched. */
#define PA_RETIRE_SLOTS 1024
#define PA_RETIRE_BUDGET (sizeof(void *) >= 8 ? ((uint64_t)64 << 30) : ((uint64_t)128 << 20))

static struct {
    void *p;
    size_t len;
} pa_retired[PA_RETIRE_SLOTS];
static size_t pa_retired_first, pa_retired_count;
static uint64_t pa_retired_bytes;

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static size_t pa_page_round(size_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return len + (page - len % page) % page;
}

static void pa_retire_keep(void *p, size_t len)
{
    pthread_mutex_lock(&pa_retire_lock);
    while (pa_retired_count > 0 &&
           (pa_retired_count == PA_RETIRE_SLOTS || pa_retired_bytes + len > PA_RETIRE_BUDGET)) {
        size_t i = pa_retired_first;
        munmap(pa_retired[i].p, pa_retired[i].len);
        pa_retired_bytes -= pa_retired[i].len;
        pa_retired_first = (i + 1) % PA_RETIRE_SLOTS;
        pa_retired_count--;
    }
    if (len > PA_RETIRE_BUDGET) {
        munmap(p, len);
    } else {
        size_t i = (pa_retired_first + pa_retired_count) % PA_RETIRE_SLOTS;
        pa_retired[i].p = p;
        pa_retired[i].len = len;
        pa_retired_bytes += len;
        pa_retired_count++;
    }
    pthread_mutex_unlock(&pa_retire_lock);
}

void pa_retire(void *p, size_t len)
{
    if (p == NULL || len == 0) {
        return;
    }
    len = pa_page_round(len);
    /* one call replaces the old mapping: no moment without a mapping there */
    void *q = mmap(p, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (q == MAP_FAILED) {
        munmap(p, len);
        return;
    }
    pa_retire_keep(p, len);
}

void pa_retire_hole(void *p, size_t len)
{
    if (p == NULL || len == 0) {
        return;
    }
    len = pa_page_round(len);
    /* NOREPLACE: if another mapping took (part of) the range meanwhile, leave it */
    void *q = mmap(p, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (q == MAP_FAILED) {
        return;
    }
    if (q != p) { /* a kernel older than 4.17 took the flag as a hint */
        munmap(q, len);
        return;
    }
    pa_retire_keep(p, len);
}

int pa_open(const char *spec, const pa_option *opts, size_t nopts, pa_backend **out, pa_err *err)
{
    const char *colon = strchr(spec, ':');
    size_t len = colon != NULL ? (size_t)(colon - spec) : strlen(spec);
    const pa_ops *ops = pa_find_ops(spec, len);
    if (ops == NULL) {
        return pa_seterr(err, EINVAL, "unknown backend '%s'; known backends: %s", spec,
                         pa_known_backends());
    }
    pa_backend *be = calloc(1, sizeof(*be));
    if (be == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory opening backend '%s'", spec);
    }
    be->ops = ops;
    be->alloc_max = UINT64_MAX;
    /* cacheable= is every backend's option (the default for cacheable=None):
     * taken here, the others go to the backend */
    pa_option *rest = calloc(nopts + 1, sizeof(*rest));
    size_t nrest = 0;
    if (rest == NULL) {
        free(be);
        return pa_seterr(err, ENOMEM, "out of memory opening backend '%s'", spec);
    }
    for (size_t i = 0; i < nopts; i++) {
        if (strcmp(opts[i].key, "cacheable") != 0) {
            rest[nrest++] = opts[i];
        }
    }
    int rc = pa_opt_bool(opts, nopts, "cacheable", false, &be->cacheable, err);
    if (rc < 0) {
        free(rest);
        free(be);
        return rc;
    }
    pthread_once(&pa_fork_once, pa_fork_register);
    rc = pthread_mutex_init(&be->lock, NULL);
    if (rc == 0) {
        rc = pthread_mutex_init(&be->range_lock, NULL);
        if (rc != 0) {
            pthread_mutex_destroy(&be->lock);
        }
    }
    if (rc == 0) {
        rc = pthread_cond_init(&be->range_cv, NULL);
        if (rc != 0) {
            pthread_mutex_destroy(&be->range_lock);
            pthread_mutex_destroy(&be->lock);
        }
    }
    if (rc != 0) {
        free(rest);
        free(be);
        return pa_seterr(err, rc, "pthread_mutex_init/pthread_cond_init failed: %s", strerror(rc));
    }
    be->ranges = NULL;
    rc = ops->open(be, colon != NULL ? colon + 1 : NULL, rest, nrest, err);
    free(rest);
    if (rc < 0) {
        pthread_cond_destroy(&be->range_cv);
        pthread_mutex_destroy(&be->range_lock);
        pthread_mutex_destroy(&be->lock);
        free(be);
        return rc;
    }
    pa_reg_add(be);
    *out = be;
    return 0;
}

int pa_alloc(pa_backend *be, size_t size, size_t align, unsigned flags, pa_block *blk, pa_err *err)
{
    return pa_alloc_below(be, size, align, flags, UINT64_MAX, blk, err);
}

/* An out-of-memory message from the backend gets info()'s figures, taken
 * under the same lock hold, so that what it quotes is what info() says. */
static void pa_explain_full(pa_backend *be, pa_err *err)
{
    pa_info i;
    memset(&i, 0, sizeof(i));
    be->ops->info(be, &i);
    size_t len = strlen(err->msg);
    snprintf(err->msg + len, sizeof(err->msg) - len,
             "; info(): used %llu of %llu bytes by %llu buffer(s) (%llu requested), free %llu, "
             "largest_free %llu",
             (unsigned long long)be->used, (unsigned long long)i.total,
             (unsigned long long)be->buffers, (unsigned long long)be->requested,
             (unsigned long long)i.free, (unsigned long long)i.largest_free);
}

/* be->prep is set by pa_alloc_below around ops->alloc, their only caller */
void pa_prep_zero(pa_backend *be, void *p, size_t n, bool discard)
{
    pa_prep *w = be->prep;
    if (n == 0) {
        return;
    }
    if (w->nzero == PA_PREP_ZERO) {
        pa_zero(p, n); /* a full list (no backend zeroes more than two ranges): at once */
        return;
    }
    w->zero[w->nzero].p = p;
    w->zero[w->nzero].n = n;
    w->zero[w->nzero].discard = discard;
    w->nzero++;
}

void pa_prep_clean(pa_backend *be, void *p, size_t n)
{
    pa_prep *w = be->prep;
    if (n == 0) {
        return;
    }
    if (w->clean_len != 0) {
        /* a second range: clean both, and what lies between (lines of the same block) */
        char *lo = (char *)w->clean < (char *)p ? (char *)w->clean : (char *)p;
        char *a = (char *)w->clean + w->clean_len, *b = (char *)p + n;
        w->clean = lo;
        w->clean_len = (size_t)((a > b ? a : b) - lo);
        return;
    }
    w->clean = p;
    w->clean_len = n;
}

/* zeroes [p, p+n) by handing its whole pages back to the kernel (they read as
 * zero and fault in again on use: no stores over megabytes) and memset of the
 * partial pages at its ends; all memset if the kernel refuses */
static void pa_zero_discard(void *p, size_t n)
{
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t pg = ps > 0 ? (uintptr_t)ps : 4096, a = (uintptr_t)p;
    uintptr_t lo = (a + pg - 1) & ~(pg - 1), hi = (a + n) & ~(pg - 1);
    if (lo < hi && madvise((void *)lo, hi - lo, MADV_DONTNEED) == 0) {
        memset(p, 0, lo - a);
        memset((void *)hi, 0, a + n - hi);
        return;
    }
    pa_zero(p, n);
}

typedef struct pa_prep_call {
    const pa_prep *w;
    pa_err *err;
    int rc;
} pa_prep_call;

static int pa_prep_do(const pa_prep *w, pa_err *err)
{
    for (int i = 0; i < w->nzero; i++) {
        if (w->zero[i].discard) {
            pa_zero_discard(w->zero[i].p, w->zero[i].n);
        } else {
            pa_zero(w->zero[i].p, w->zero[i].n);
        }
    }
    if (w->clean_len != 0) {
        int rc = pa_cache_clean(w->clean, w->clean_len);
        if (rc < 0) {
            return pa_seterr(err, -rc, "cleaning the cache over a new block failed (%s): %s",
                             pa_cache_method(), strerror(-rc));
        }
    }
    return 0;
}

static void pa_prep_cb(void *arg)
{
    pa_prep_call *c = arg;
    c->rc = pa_prep_do(c->w, c->err);
}

/* the work without the GIL when it is long: stores and cleaning count in full,
 * pages handed back to the kernel an eighth (page-table work, no stores) */
static int pa_prep_run(const pa_prep *w, pa_err *err)
{
    size_t bytes = w->clean_len;
    for (int i = 0; i < w->nzero; i++) {
        bytes += w->zero[i].discard ? w->zero[i].n / 8 : w->zero[i].n;
    }
    if (bytes == 0) {
        return 0;
    }
    if (bytes < pa_work_gil_bytes()) {
        return pa_prep_do(w, err);
    }
    pa_prep_call c = {w, err, 0};
    pa_wait(pa_prep_cb, &c);
    return c.rc;
}

int pa_alloc_below(pa_backend *be, size_t size, size_t align, unsigned flags, uint64_t max_addr,
                   pa_block *blk, pa_err *err)
{
    pa_prep prep;
    size_t asked = size == 0 ? 1 : size, nbytes = size;
    size_t rounded;
    if (size == 0) {
        size = 1; /* zero-size arrays still get a real, unique device address */
    }
    if (__builtin_add_overflow(size, (size_t)PA_LINE - 1, &rounded)) {
        return pa_seterr(err, ENOMEM, "cannot allocate %zu bytes: size overflows", size);
    }
    rounded &= ~((size_t)PA_LINE - 1);
    if (align < PA_LINE) {
        align = PA_LINE;
    }
    if ((align & (align - 1)) != 0) {
        return pa_seterr(err, EINVAL, "align must be a power of two, got %zu", align);
    }
    if ((flags & (PA_CACHED | PA_UNCACHED)) == 0 && be->cacheable) {
        flags |= PA_CACHED; /* the backend's default, open_backend(..., cacheable=True) */
    }
    memset(blk, 0, sizeof(*blk));
    if (pa_inherited(be)) {
        return pa_seterr(err, ECHILD,
                         "this %s backend was opened before fork(): its memory and kernel "
                         "objects belong to the parent process, so this (child) process cannot "
                         "allocate from it; open a new backend here with "
                         "pynq_alloc.open_backend(...) (buffers inherited from the parent stay "
                         "usable)",
                         be->ops->name);
    }
    memset(&prep, 0, sizeof(prep));
    pa_lock(&be->lock);
    be->alloc_max = max_addr;
    be->prep = &prep;
    int rc = be->ops->alloc(be, rounded, align, flags, blk, err);
    be->prep = NULL;
    be->alloc_max = UINT64_MAX;
    if (rc == -ENOMEM) {
        pa_explain_full(be, err);
    }
    if (rc == 0 && (blk->device_address > max_addr || asked - 1 > max_addr - blk->device_address)) {
        /* memory from the kernel lands where the kernel puts it: check it */
        unsigned long long lo = blk->device_address, hi = lo + asked - 1;
        be->ops->free(be, blk);
        memset(blk, 0, sizeof(*blk));
        rc = pa_seterr(err, ENOMEM,
                       "the %s backend got %zu bytes at device addresses 0x%llx-0x%llx, above "
                       "the limit 0x%llx (address_bits); %s",
                       be->ops->name, asked, lo, hi, (unsigned long long)max_addr,
                       be->low_hint != NULL ? be->low_hint
                                            : "this backend cannot choose where its memory lies");
    }
    if (rc == 0) {
        if (blk->span < blk->size) {
            blk->span = blk->size;
        }
        size_t slack = blk->size - (nbytes < blk->size ? nbytes : blk->size);
        blk->slack = slack > UINT32_MAX ? UINT32_MAX : (uint32_t)slack;
        be->used += blk->span;
        be->requested += blk->size - blk->slack;
        be->buffers++;
    }
    pthread_mutex_unlock(&be->lock);
    if (rc == 0) {
        /* the block is ours alone until we return it: no lock for its stores */
        rc = pa_prep_run(&prep, err);
        if (rc < 0) {
            pa_free(be, blk);
        }
    }
    return rc;
}

void pa_adopt(void *cpu, uint64_t device_address, size_t size, bool coherent, pa_block *blk)
{
    memset(blk, 0, sizeof(*blk));
    blk->cpu = cpu;
    blk->device_address = device_address;
    blk->size = size;
    blk->coherent = coherent;
    blk->foreign = true;
}

static int pa_foreign_sync(const pa_block *blk, size_t off, size_t len, pa_sync_dir dir,
                           pa_err *err)
{
    if (!pa_cache_user_maintenance()) {
        return pa_seterr(err, ENOTSUP,
                         "flush()/invalidate() of wrapped memory use the CPU's own cache "
                         "maintenance, which this CPU cannot do from user space (32-bit ARM "
                         "needs the kernel); sync through the driver that owns the memory, or "
                         "wrap a non-cacheable mapping with coherent=True");
    }
    char *p = (char *)blk->cpu + off;
    int rc = dir == PA_TO_DEVICE ? pa_cache_clean(p, len) : pa_cache_clean_invalidate(p, len);
    if (rc < 0) {
        return pa_seterr(err, -rc, "cache maintenance (%s) over wrapped memory failed: %s",
                         pa_cache_method(), strerror(-rc));
    }
    return 0;
}

void pa_free(pa_backend *be, pa_block *blk)
{
    if (blk->foreign) {
        memset(blk, 0, sizeof(*blk)); /* the owner frees it */
        return;
    }
    pa_lock(&be->lock);
    be->used -= blk->span;
    be->requested -= blk->size - blk->slack;
    be->buffers--;
    /* an inherited block is the parent's: the child only forgets it */
    if (!pa_inherited(be)) {
        be->ops->free(be, blk);
    }
    pthread_mutex_unlock(&be->lock);
    memset(blk, 0, sizeof(*blk));
}

int pa_sync(pa_backend *be, const pa_block *blk, size_t off, size_t len, pa_sync_dir dir,
            pa_err *err)
{
    if (blk->coherent || len == 0) {
        return 0;
    }
    if (off > blk->size || len > blk->size - off) {
        return pa_seterr(err, EINVAL, "sync range [%zu, %zu) is outside the %zu-byte block", off,
                         off + len, blk->size);
    }
    if (blk->foreign) {
        return pa_foreign_sync(blk, off, len, dir, err);
    }
    return be->ops->sync(be, blk, off, len, dir, err);
}

int pa_sync_runs(pa_backend *be, const pa_block *blk, const pa_runs *r, pa_sync_dir dir,
                 pa_err *err)
{
    size_t lo, hi, count;
    if (blk->coherent) {
        return 0;
    }
    if (!pa_runs_extent(r, &lo, &hi, &count) || hi > blk->size) {
        return pa_seterr(err, EINVAL,
                         "the runs of a strided view (%zu bytes each from byte %zu) leave the "
                         "%zu-byte block",
                         r->len, r->off, blk->size);
    }
    if (blk->foreign && pa_cache_user_maintenance()) {
        int rc = pa_cache_runs(blk->cpu, r, dir == PA_FROM_DEVICE);
        return rc < 0 ? pa_seterr(err, -rc,
                                  "cache maintenance (%s) over wrapped memory failed: "
                                  "%s",
                                  pa_cache_method(), strerror(-rc))
                      : 0;
    }
    if (!blk->foreign && be->ops->sync_runs != NULL) {
        return be->ops->sync_runs(be, blk, r, dir, err);
    }
    /* range by range: whole lines from the block's start (its lines' own
     * alignment is the backend's business), the last one clamped to it */
    int report = 0;
    pa_err tmp;
    pa_runs_it it;
    pa_runs_start(&it, r, count, 0, PA_LINE);
    while (pa_runs_next(&it, &lo, &hi)) {
        hi = hi > blk->size ? blk->size : hi;
        int rc = pa_sync(be, blk, lo, hi - lo, dir, &tmp);
        if (rc < 0 || (rc > 0 && report == 0)) {
            *err = tmp;
        }
        if (rc < 0) {
            return rc;
        }
        if (rc > 0 && report == 0) {
            report = rc;
        }
    }
    return report;
}

void pa_get_info(pa_backend *be, pa_info *info)
{
    memset(info, 0, sizeof(*info));
    pa_lock(&be->lock);
    be->ops->info(be, info);
    info->used = be->used;
    info->requested = be->requested;
    info->buffers = be->buffers;
    pthread_mutex_unlock(&be->lock);
    info->coherent = pa_default_coherent(be);
    info->cacheable = be->cacheable;
}

bool pa_default_coherent(const pa_backend *be)
{
    return be->cacheable ? be->cached_coherent : be->coherent;
}

void pa_close(pa_backend *be)
{
    if (be == NULL) {
        return;
    }
    pa_reg_remove(be);
    /* in a child the mappings and fds stay until it exits or execs: closing
     * them could release the parent's GEM handles, flock or libcma buffers */
    if (!pa_inherited(be)) {
        be->ops->close(be);
    }
    pthread_cond_destroy(&be->range_cv);
    pthread_mutex_destroy(&be->range_lock);
    pthread_mutex_destroy(&be->lock);
    free(be);
}

int pa_opt_check(const pa_option *opts, size_t nopts, const char *const *known, const char *backend,
                 pa_err *err)
{
    for (size_t i = 0; i < nopts; i++) {
        bool ok = false;
        for (size_t k = 0; known[k] != NULL; k++) {
            if (strcmp(opts[i].key, known[k]) == 0) {
                ok = true;
                break;
            }
        }
        if (!ok) {
            char list[256] = "";
            for (size_t k = 0; known[k] != NULL; k++) {
                size_t used = strlen(list);
                snprintf(list + used, sizeof(list) - used, "%s%s", k ? ", " : "", known[k]);
            }
            return pa_seterr(err, EINVAL, "the %s backend has no option '%s' (options: %s)",
                             backend, opts[i].key, list[0] ? list : "none");
        }
    }
    return 0;
}

const char *pa_opt_get(const pa_option *opts, size_t nopts, const char *key)
{
    for (size_t i = nopts; i-- > 0;) {
        if (strcmp(opts[i].key, key) == 0) {
            return opts[i].value;
        }
    }
    return NULL;
}

int pa_opt_u64(const pa_option *opts, size_t nopts, const char *key, uint64_t dflt, uint64_t *out,
               pa_err *err)
{
    const char *v = pa_opt_get(opts, nopts, key);
    if (v == NULL) {
        *out = dflt;
        return 0;
    }
    char *end;
    errno = 0;
    /* base 0 so 0x4000_0000-style hex works; a leading '-' is refused below */
    unsigned long long x = strtoull(v, &end, 0);
    if (errno != 0 || end == v || *end != '\0' || strchr(v, '-') != NULL) {
        return pa_seterr(err, EINVAL, "option %s=%s is not a non-negative integer", key, v);
    }
    *out = (uint64_t)x;
    return 0;
}

int pa_opt_bool(const pa_option *opts, size_t nopts, const char *key, bool dflt, bool *out,
                pa_err *err)
{
    const char *v = pa_opt_get(opts, nopts, key);
    if (v == NULL) {
        *out = dflt;
    } else if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes")) {
        *out = true;
    } else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no")) {
        *out = false;
    } else {
        return pa_seterr(err, EINVAL, "option %s=%s is not a boolean (true/false/1/0)", key, v);
    }
    return 0;
}

size_t pa_region_limit(const pa_backend *be, uint64_t base, size_t size)
{
    if (be->alloc_max < base) {
        return 0;
    }
    if (be->alloc_max - base >= (uint64_t)size) {
        return size;
    }
    return (size_t)(be->alloc_max - base + 1);
}

void pa_cma_meminfo(uint64_t *total, uint64_t *freeb)
{
    char line[256];
    *total = *freeb = 0;
    /* the kernel's own file: not under the test sysroot */
    FILE *f = fopen("/proc/meminfo", "re");
    if (f == NULL) {
        return;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long long kb;
        if (sscanf(line, "CmaTotal: %llu kB", &kb) == 1) {
            *total = (uint64_t)kb * 1024;
        } else if (sscanf(line, "CmaFree: %llu kB", &kb) == 1) {
            *freeb = (uint64_t)kb * 1024;
        }
    }
    fclose(f);
}

int pa_path(char *out, size_t outlen, const char *path)
{
    /* only device nodes and kernel-published files; never /proc/self */
    const char *root = getenv("PYNQ_ALLOC_SYSROOT");
    if (strncmp(path, "/dev/", 5) != 0 && strncmp(path, "/sys/", 5) != 0 &&
        strncmp(path, "/proc/device-tree", 17) != 0) {
        root = NULL;
    }
    int n = snprintf(out, outlen, "%s%s", root != NULL ? root : "", path);
    if (n < 0 || (size_t)n >= outlen) {
        return -ENAMETOOLONG;
    }
    return 0;
}
