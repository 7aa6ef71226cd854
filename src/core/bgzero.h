/* Background zeroing of freed memory (no Python here): one worker thread per
 * process, created on first use, zeroes the dirty range of a job from the top
 * down in chunks, at idle priority, so that the next allocation finds the
 * memory already zero. A job describes [lo, hi) of a region the caller owns;
 * hi falls as chunks finish: offsets at or above hi are zero.
 *
 * Every job call is made under the owner's lock (the backend lock), which
 * also guards the `active` flag; the job's other fields are the worker's
 * (guarded by the zeroer's own lock). The worker never takes the owner's
 * lock, so the owner may wait for it while holding its lock. */
#ifndef PA_BGZERO_H
#define PA_BGZERO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The worker zeroes this much between two looks at its queue: the longest an
 * allocation waits for it (one chunk in flight). 2 MiB of streaming stores
 * take about 0.1 ms at this machine's 20 GB/s. */
#define PA_BGZERO_CHUNK ((size_t)2 << 20)

typedef struct pa_bgzero_job {
    /* the owner's (under its lock) */
    bool active; /* submitted and not yet claimed to an end by pa_bgzero_claim/cancel */
    /* the worker's (under the zeroer lock); lo is written only by the
     * calls below, under the owner's lock too, so the owner may read it
     * without the zeroer lock: a block ending at or below lo is never
     * written by the worker (no claim needed; it is all dirty) */
    char *base;
    size_t lo, hi;         /* still dirty: [lo, hi); zero at and above hi (hi >= lo) */
    size_t busy_lo;        /* while busy: the chunk [busy_lo, hi) being zeroed */
    bool queued, busy;
    bool nt;               /* streaming stores (a dirty part of PA_ZERO_NT_BYTES or more) */
    uint64_t zeroed;       /* bytes this job's worker zeroed, ever (statistics) */
    struct pa_bgzero_job *next;
} pa_bgzero_job;

/* Hands [0, dirty) of base to the worker (dirty and base multiples of 64).
 * If job is already active (its region emptied again), widens it back down
 * to 0. false if no worker could be started: then nothing was handed over
 * and the memory is still the caller's to zero. */
bool pa_bgzero_submit(pa_bgzero_job *job, char *base, size_t dirty);

/* Before [off, end) of an active job's memory is handed out: waits until
 * the worker writes nowhere in it (at most the chunk in flight), and keeps
 * the worker above end from now on. Returns the job's hi at that moment
 * (offsets at and above it are zero, up to the job's former top); sets
 * *done when the job has ended (nothing left for the worker), then the
 * caller owns the memory again and job->active is false. */
size_t pa_bgzero_claim(pa_bgzero_job *job, size_t off, size_t end, bool *done);

/* Ends an active job: waits for the chunk in flight, dequeues it. Returns hi
 * (zero at and above it). Before the memory is unmapped or handed out whole. */
size_t pa_bgzero_cancel(pa_bgzero_job *job);

/* What the worker still has to zero for this job, and has zeroed so far. */
void pa_bgzero_status(pa_bgzero_job *job, uint64_t *pending, uint64_t *zeroed);

/* One per user of the zeroer (an open hugepage backend); the last unref
 * stops and joins the worker (all its jobs must have been cancelled). */
void pa_bgzero_ref(void);
void pa_bgzero_unref(void);

/* Whether the worker thread exists now (for tests). */
bool pa_bgzero_running(void);

/* In a fork() child (pa.c's handler): the worker does not exist there; the
 * parent's jobs are forgotten (their backends are inherited: nothing in the
 * child claims, cancels or unmaps them) and the lock is fresh. */
void pa_bgzero_fork_child(void);

#endif
