/* pynq_alloc core: the table of contents of the C core (no Python here).
 * A backend hands out physically contiguous, device-visible blocks; the
 * generic layer (pa.c) adds locking, accounting and spec parsing. Helpers the
 * backends share: tlsf.h (O(1) offset allocator), pool.h (small blocks carved
 * from pooled device buffers), cache.h (cache-line maintenance), pagemap.h
 * (physical addresses). */
#ifndef PA_H
#define PA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "runs.h"

#define PA_ERR_LEN 512
#define PA_LINE 64 /* allocation granule: no two blocks share a cache line */
/* Where a backend sub-allocates a region (sim, hugepage, pools), a block aligned
 * to A takes its size rounded up to a multiple of min(A, PA_PAD_MAX) from
 * the region (pa_padded_size; the block's span): the padding up to the next
 * A boundary, which the next block of the same alignment could not use, is
 * the block's, so info()'s used and free say what is really taken and what
 * can still be had at that alignment. Above one page, the lead gap before an
 * aligned block stays free (a page-aligned block can use it) and only the
 * tail is rounded, to a page. */
#define PA_PAD_MAX 4096

/* Error text for the binding: what failed, errno text, what to do. */
typedef struct pa_err {
    char msg[PA_ERR_LEN];
} pa_err;

/* Fills err->msg and returns -code (code is a positive errno value). */
int pa_seterr(pa_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef struct pa_option {
    const char *key;
    const char *value;
} pa_option;

typedef enum pa_sync_dir {
    PA_TO_DEVICE = 1,   /* clean: CPU writes become visible to the device */
    PA_FROM_DEVICE = 2, /* clean+invalidate: device writes become visible to the CPU */
} pa_sync_dir;

/* allocation flags; neither means cacheable=None: PYNQ's default, a
 * non-cacheable (write-combine, never Device memory) coherent block where the
 * backend can map one safely, else a cached block (reported non-coherent) */
#define PA_CACHED 1u   /* cacheable=True: cached, exact-extent maintenance */
#define PA_UNCACHED 2u /* cacheable=False: coherent (write-combine) mapping, or an error */

typedef struct pa_block {
    void *cpu;               /* CPU address of byte 0 */
    uint64_t device_address; /* what the device uses for byte 0 */
    size_t size;             /* usable bytes, a multiple of PA_LINE */
    bool coherent;           /* no cache maintenance needed */
    bool foreign;            /* memory another owner provides (pa_adopt): never freed here;
                              * synced with the CPU's own cache maintenance */
    uint32_t slack;          /* size minus the bytes asked for (pa.c; saturates) */
    size_t span;             /* bytes the block takes from the backend's memory: size plus
                              * what no other block can use (sim: lines skipped to align
                              * on an unaligned base); 0 from a backend means size (pa.c) */
    void *handle;            /* backend private (allocator node, BO ...) */
    uint64_t aux;            /* backend private */
} pa_block;

typedef struct pa_info {
    /* used: bytes live blocks occupy (their spans: line rounding, alignment
     * padding, skipped lines); requested: bytes asked for (allocate()'s
     * nbytes, 0 for an empty array); free: total - used where the backend
     * sub-allocates one region (sim, hugepage), else what its source has */
    uint64_t total, used, free, largest_free, buffers, requested;
    bool coherent;  /* a block allocated with cacheable=None is coherent */
    bool cacheable; /* the backend's default: open_backend(..., cacheable=True) */
    size_t line_size;
    /* lowest and highest device address a block can have (highest: of its
     * last byte); 0, 0 when the backend cannot tell before allocating */
    uint64_t lowest, highest;
    uint64_t base_address; /* simulated devices: the device address of the region's byte 0 */
    /* hugepage's zeroing of reused memory (bgzero.h): bytes the background
     * worker still has to zero, has zeroed so far, and bytes allocate()
     * zeroed itself; 0 elsewhere */
    uint64_t zero_pending, zero_background, zero_sync;
} pa_info;

typedef struct pa_backend pa_backend;

/* sync_run_lines (below) of CPU cache maintenance by address (hugepage, and
 * wrapped memory): measured on x86 (bench/crossover.py), a run of one line
 * costs two lines of a contiguous clwb (the hardware pairs neighbouring
 * lines), longer runs about their lines */
#define PA_CPU_RUN_LINES 1

/* A range of cache lines one thread is working on (pa_range_acquire):
 * kept on that thread's stack while it works. */
typedef struct pa_range {
    size_t lo, hi; /* [lo, hi), backend-defined units (sim: byte offsets, line-aligned) */
    struct pa_range *next;
} pa_range;

typedef struct pa_ops {
    const char *name;
    bool board; /* probed for the default backend (sim and hugepage are not) */
    /* A sparse strided view is synchronised run by run (sync_runs) when
     * runs * (lines per run + sync_run_lines) <= the lines of its extent,
     * else its whole extent in one call (the binding's buffer_sync).
     * sync_run_lines is what one more run costs, in lines of a contiguous
     * sync, measured by bench/crossover.py; 0: always the whole extent (a
     * system call per run costs far more than the lines it saves). */
    unsigned sync_run_lines;
    /* alloc and free put their long work (zeroing, cache cleaning, faulting
     * in memory) through pa_prep / pa_wait themselves, which let go of the
     * GIL only for pa_work_gil_bytes() and more: the binding calls them with
     * the GIL held. Without it (kernel allocators: the work is the kernel's,
     * inside one call) the binding lets go of the GIL around the whole call
     * for blocks of pa_work_gil_bytes() and more. */
    bool own_gil_work;
    /* arg: what followed "name:" in the spec, or NULL */
    int (*open)(pa_backend *be, const char *arg, const pa_option *opts, size_t nopts, pa_err *err);
    /* size > 0, a multiple of PA_LINE; align a power of two >= PA_LINE.
     * The block must come back zeroed and, when not coherent, clean. */
    int (*alloc)(pa_backend *be, size_t size, size_t align, unsigned flags, pa_block *blk, pa_err *err);
    void (*free)(pa_backend *be, pa_block *blk);
    /* [off, off+len) inside the block; the backend rounds to cache lines. */
    int (*sync)(pa_backend *be, const pa_block *blk, size_t off, size_t len, pa_sync_dir dir,
                pa_err *err);
    /* optional: every run of r (inside the block, pa_sync_runs checked) in
     * one go: a sparse view's runs. Without it pa_sync_runs calls sync for
     * each range of lines. Returns like sync (the first report). */
    int (*sync_runs)(pa_backend *be, const pa_block *blk, const pa_runs *r, pa_sync_dir dir,
                     pa_err *err);
    void (*info)(pa_backend *be, pa_info *info); /* total, free, largest_free */
    void (*close)(pa_backend *be);
    /* cheap and side-effect free: 0 if open() would find something usable */
    int (*probe)(const char *arg, pa_err *why);
    /* optional, simulated devices only: device-side access by device address */
    int (*device_access)(pa_backend *be, uint64_t addr, void *buf, size_t len, bool write,
                         pa_err *err);
} pa_ops;

/* Work on a new block that ops->alloc leaves for pa_alloc to do after it lets
 * go of the backend lock: by then the block is the caller's alone (not yet
 * handed out), so zeroing it and cleaning it from the caches need no lock, and
 * other threads' allocations do not wait behind megabytes of stores. Backends
 * add to it with pa_prep_zero/pa_prep_clean while they hold the lock. */
#define PA_PREP_ZERO 2
typedef struct pa_prep {
    struct {
        void *p;
        size_t n;
        bool discard; /* may zero whole pages by handing them back to the kernel
                       * (MADV_DONTNEED): only where the block's physical pages
                       * don't matter (sim) */
    } zero[PA_PREP_ZERO];
    int nzero;
    void *clean; /* then cleaned from the CPU caches (non-coherent blocks) */
    size_t clean_len;
} pa_prep;

struct pa_backend {
    const pa_ops *ops;
    void *priv;
    pthread_mutex_t lock; /* taken by pa_alloc/pa_free/pa_info: bookkeeping only (pa_lock) */
    pthread_mutex_t range_lock; /* guards ranges; held only to scan/link the list */
    pthread_cond_t range_cv;    /* signalled when a range is released */
    pa_range *ranges;           /* ranges being synchronised right now (pa_range_acquire) */
    bool coherent;        /* blocks allocated with cacheable=None are coherent; set by open */
    bool cached_coherent; /* cacheable=True blocks are coherent too (the device snoops the
                           * CPU's caches); set by open */
    bool cacheable;       /* open option cacheable=1: None means True; set by pa_open */
    uint64_t alloc_max;   /* during ops->alloc (under lock): the highest device address the
                           * block may reach (address_bits); UINT64_MAX for no limit.
                           * Sub-allocators place the block below it; pa.c checks all. */
    pa_prep *prep;        /* during ops->alloc (under lock): pa_alloc's work list */
    const char *low_hint; /* set by open: where this backend's memory comes from and how
                           * to get memory below an address limit (for the error) */
    uint64_t used;        /* bytes live blocks occupy: sum of spans (maintained by pa.c) */
    uint64_t requested;   /* bytes asked for by live blocks (pa.c) */
    uint64_t buffers;     /* live blocks */
    unsigned long gen;    /* fork generation it was opened in (pa.c) */
    pa_backend *next, *prev; /* every open backend, for the fork handler (pa.c) */
};

/* generic layer (pa.c) */

/* Work on at least this many bytes (zeroing, copying, cache maintenance,
 * kernel calls that do them) runs with the GIL released; smaller work keeps
 * it. Letting go of the GIL is not free: while another Python thread is
 * busy, taking it back waits for that thread's switch interval (5 ms), so a
 * 1 MiB sim flush (55 us) took 5.3 ms with a spinning thread beside it when
 * the GIL was released from 256 KiB. The threshold is work of about 1 ms,
 * after the memory bandwidth of the targets: ~25 GB/s on the x86-64 bench
 * machine (zero 27, clean 25, sim copy 14 GB/s), a few GB/s on ZynqMP/Versal
 * (AArch64), about 1 GB/s on Zynq-7000. Holding the GIL for 1 ms is well
 * inside what CPython lets one thread run between switches. */
#if defined(__x86_64__)
#define PA_WORK_GIL_BYTES ((size_t)32 << 20)
#elif defined(__aarch64__)
#define PA_WORK_GIL_BYTES ((size_t)8 << 20)
#else
#define PA_WORK_GIL_BYTES ((size_t)2 << 20)
#endif

/* the threshold in use: PA_WORK_GIL_BYTES unless set (tests set it low to run
 * the GIL-free paths with small buffers); returns the one before */
size_t pa_work_gil_bytes(void);
size_t pa_set_work_gil_bytes(size_t bytes);

/* From ops->alloc: zero [p, p+n) / clean [p, p+n) from the CPU caches once
 * the backend lock is let go (pa_prep above), in the order added: zeroing
 * first, then cleaning */
void pa_prep_zero(pa_backend *be, void *p, size_t n, bool discard);
void pa_prep_clean(pa_backend *be, void *p, size_t n);

/* Blocking waits. The core never calls Python, but the binding calls it with
 * the GIL held: a thread that waited for a lock with the GIL held would stop
 * every Python thread for as long as the lock's holder works. So every wait
 * goes through one hook: pa_lock tries the lock first and only when it is
 * taken calls waiter(block, arg), which (in the binding) releases the GIL if
 * this thread holds it, runs block(arg) and takes the GIL back. Set once,
 * before any backend is opened; NULL: just block. */
typedef void (*pa_waiter_fn)(void (*block)(void *), void *arg);
void pa_set_waiter(pa_waiter_fn waiter);
/* block(arg) through the waiter: for every wait of the core (pa_lock, the
 * range locks, the background zeroer's chunk in flight), and for long work a
 * backend does while the binding holds the GIL (own_gil_work above) */
void pa_wait(void (*block)(void *), void *arg);
void pa_lock(pthread_mutex_t *m);
/* Per-range exclusion for work on a block's memory that needs no backend
 * lock (sim: flush/invalidate copies and the line states): waits (through
 * the waiter) until no other thread holds a range overlapping [lo, hi), then
 * links r. Non-overlapping ranges proceed in parallel. */
void pa_range_acquire(pa_backend *be, pa_range *r, size_t lo, size_t hi);
void pa_range_release(pa_backend *be, pa_range *r);
const pa_ops *pa_find_ops(const char *name, size_t len);
const char *pa_known_backends(void); /* "sim, hugepage, ..." */
extern const pa_ops *const pa_all_ops[]; /* NULL-terminated, in probe order */
int pa_open(const char *spec, const pa_option *opts, size_t nopts, pa_backend **out, pa_err *err);
int pa_alloc(pa_backend *be, size_t size, size_t align, unsigned flags, pa_block *blk, pa_err *err);
/* a block's span in a sub-allocated region: size (at least 1) rounded up to
 * PA_LINE and then to min(align, PA_PAD_MAX); 0 when that overflows */
static inline size_t pa_padded_size(size_t size, size_t align)
{
    size_t to = align < PA_LINE ? PA_LINE : align < PA_PAD_MAX ? align : PA_PAD_MAX;
    size_t r;
    if (size == 0) {
        size = 1;
    }
    if ((to & (to - 1)) != 0 || __builtin_add_overflow(size, to - 1, &r)) {
        return 0;
    }
    return r & ~(to - 1);
}
/* every byte of the block at a device address <= max_addr (address_bits=N: 2**N - 1) */
int pa_alloc_below(pa_backend *be, size_t size, size_t align, unsigned flags, uint64_t max_addr,
                   pa_block *blk, pa_err *err);
void pa_free(pa_backend *be, pa_block *blk);
/* describe memory another owner provides as a block (wrap()): no backend
 * involved; pa_sync cleans/invalidates it with the CPU's own maintenance
 * (x86, AArch64; ENOTSUP elsewhere) and pa_free never frees it */
void pa_adopt(void *cpu, uint64_t device_address, size_t size, bool coherent, pa_block *blk);
/* be may be NULL for a foreign block */
int pa_sync(pa_backend *be, const pa_block *blk, size_t off, size_t len, pa_sync_dir dir,
            pa_err *err);
/* pa_sync of every run of r (a sparse view's runs, see runs.h), in one call:
 * one range lock (sim) or one barrier (CPU cache maintenance) for all of
 * them; EINVAL when a run leaves the block; the first report wins */
int pa_sync_runs(pa_backend *be, const pa_block *blk, const pa_runs *r, pa_sync_dir dir,
                 pa_err *err);
void pa_get_info(pa_backend *be, pa_info *info);
/* whether a block allocated with cacheable=None is coherent */
bool pa_default_coherent(const pa_backend *be);
void pa_close(pa_backend *be);

/* After fork(), in the child: be was opened by an ancestor. Its blocks and
 * kernel objects (mappings, fds, GEM handles, flocks, libcma state) belong to
 * that ancestor: pa_alloc refuses, pa_free and pa_close only forget them. */
bool pa_inherited(const pa_backend *be);

/* Where a backend unmaps memory a Python array may still point at (a
 * freebuffer() racing a NumPy call in another thread): replace the whole
 * pages [p, p+len) with inert private zero pages, kept mapped within an
 * address-space budget, so a stray access hits harmless memory instead of a
 * hole or a later, unrelated mapping. pa_retire replaces a live mapping;
 * pa_retire_hole fills a range just unmapped by someone else (libcma) when
 * nothing took it meanwhile. */
void pa_retire(void *p, size_t len);
void pa_retire_hole(void *p, size_t len);

/* option helpers for backends: unknown keys are an error naming the known ones */
int pa_opt_check(const pa_option *opts, size_t nopts, const char *const *known, const char *backend,
                 pa_err *err);
const char *pa_opt_get(const pa_option *opts, size_t nopts, const char *key);
int pa_opt_u64(const pa_option *opts, size_t nopts, const char *key, uint64_t dflt, uint64_t *out,
               pa_err *err);
int pa_opt_bool(const pa_option *opts, size_t nopts, const char *key, bool dflt, bool *out,
                pa_err *err);

/* the offset limit (exclusive end) inside a region at device address base of
 * size bytes that keeps blocks at or below be->alloc_max: size for none, 0
 * when the whole region lies above it */
size_t pa_region_limit(const pa_backend *be, uint64_t base, size_t size);

/* system-wide CMA (CmaTotal/CmaFree of /proc/meminfo) in bytes; 0 when absent */
void pa_cma_meminfo(uint64_t *total, uint64_t *freeb);

/* PYNQ_ALLOC_SYSROOT (a test hook) in front of /dev, /sys and /proc/device-tree paths */
int pa_path(char *out, size_t outlen, const char *path);

/* backends */
extern const pa_ops pa_sim_ops;
extern const pa_ops pa_huge_ops;
extern const pa_ops pa_dmaheap_ops;
extern const pa_ops pa_zocl_ops;
extern const pa_ops pa_udmabuf_ops;
extern const pa_ops pa_xlnk_ops;

/* simulated device (sim backend only) */
int pa_sim_device_access(pa_backend *be, uint64_t addr, void *buf, size_t len, bool write,
                         pa_err *err);

#endif
