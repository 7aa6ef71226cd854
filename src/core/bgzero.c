/* pa_bgzero: the background zeroer (see bgzero.h). One worker thread, one
 * lock and two condition variables for the whole process. */
#define _GNU_SOURCE
#include "bgzero.h"
#include "pa.h"
#include "zero.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>

static pthread_mutex_t pa_bgz_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pa_bgz_work = PTHREAD_COND_INITIALIZER; /* a job was queued, or stop */
static pthread_cond_t pa_bgz_done = PTHREAD_COND_INITIALIZER; /* a chunk finished */
static pa_bgzero_job *pa_bgz_head;
static pthread_t pa_bgz_tid;
static bool pa_bgz_running; /* pa_bgz_tid is a live worker of generation pa_bgz_gen */
static unsigned long pa_bgz_gen;
static bool pa_bgz_boosted; /* a waiter raised the worker to SCHED_OTHER */
static unsigned long pa_bgz_refs;

static void pa_bgz_dequeue(pa_bgzero_job *job)
{
    for (pa_bgzero_job **pp = &pa_bgz_head; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == job) {
            *pp = job->next;
            break;
        }
    }
    job->next = NULL;
    job->queued = false;
}

/* under the lock: job goes last in the queue */
static void pa_bgz_enqueue(pa_bgzero_job *job)
{
    pa_bgzero_job **pp = &pa_bgz_head;
    while (*pp != NULL) {
        pp = &(*pp)->next;
    }
    job->next = NULL;
    *pp = job;
    job->queued = true;
}

/* SCHED_IDLE: the worker runs only on a CPU nothing else wants, so it never
 * slows the user's threads or another process (nice 19 still takes about
 * 1.5% of a busy CPU). Lowering one's own policy needs no privilege. */
static void pa_bgz_idle_self(void)
{
#ifdef SCHED_IDLE
    struct sched_param p = {0};
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &p);
#endif
}

static void *pa_bgz_main(void *arg)
{
    unsigned long gen = (unsigned long)(uintptr_t)arg;
    pa_bgz_idle_self();
    pthread_mutex_lock(&pa_bgz_lock);
    for (;;) {
        while (pa_bgz_gen == gen && pa_bgz_head == NULL) {
            pthread_cond_wait(&pa_bgz_work, &pa_bgz_lock);
        }
        if (pa_bgz_gen != gen) {
            break;
        }
        pa_bgzero_job *job = pa_bgz_head;
        if (job->hi <= job->lo) {
            pa_bgz_dequeue(job);
            pthread_cond_broadcast(&pa_bgz_done);
            continue;
        }
        /* top down, on chunk boundaries: allocations land low in a region
         * first (TLSF), so the zeros they need soonest come last */
        size_t lo = (job->hi - 1) & ~(PA_BGZERO_CHUNK - 1);
        if (lo < job->lo) {
            lo = job->lo;
        }
        job->busy_lo = lo;
        job->busy = true;
        size_t hi = job->hi;
        char *p = job->base + lo;
        bool nt = job->nt;
        if (pa_bgz_boosted) {
            pa_bgz_boosted = false;
            pa_bgz_idle_self();
        }
        pthread_mutex_unlock(&pa_bgz_lock);
        /* the store allocate() would have used for the whole range (zero.h):
         * below PA_ZERO_NT_BYTES the zeros are left in the cache, where the
         * user's first writes find them (streaming stores measured 1.5x
         * slower for a 16 MiB allocate + write loop); from it, streaming
         * stores (their SFENCE orders them before the unlock below) */
        if (nt) {
            pa_zero_nt(p, hi - lo);
        } else {
            memset(p, 0, hi - lo);
        }
        pthread_mutex_lock(&pa_bgz_lock);
        job->busy = false;
        job->hi = lo;
        job->zeroed += hi - lo;
        if (job->hi <= job->lo) {
            pa_bgz_dequeue(job);
        } else if (job->next != NULL) {
            /* one chunk per job in turn: no region waits behind a big one */
            pa_bgz_dequeue(job);
            pa_bgz_enqueue(job);
        }
        pthread_cond_broadcast(&pa_bgz_done);
    }
    pthread_mutex_unlock(&pa_bgz_lock);
    return NULL;
}

/* under the lock: a worker exists (started now if needed) */
static bool pa_bgz_start(void)
{
    if (pa_bgz_running) {
        return true;
    }
    /* the worker takes no signal: they stay with the threads that handle them */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    unsigned long gen = ++pa_bgz_gen;
    int rc = pthread_create(&pa_bgz_tid, NULL, pa_bgz_main, (void *)(uintptr_t)gen);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        return false;
    }
    pa_bgz_running = true;
    pa_bgz_boosted = false;
    return true;
}

bool pa_bgzero_submit(pa_bgzero_job *job, char *base, size_t dirty)
{
    pthread_mutex_lock(&pa_bgz_lock);
    if (!pa_bgz_start()) {
        pthread_mutex_unlock(&pa_bgz_lock);
        return false;
    }
    if (!job->active) {
        job->base = base;
        job->hi = dirty;
        job->nt = dirty >= PA_ZERO_NT_BYTES;
        job->busy = false;
        job->queued = false;
        job->next = NULL;
        job->active = true;
    }
    job->lo = 0; /* the whole region is free again: all of it may be zeroed */
    if (!job->queued && job->hi > job->lo) {
        pa_bgz_enqueue(job);
        pthread_cond_signal(&pa_bgz_work);
    }
    pthread_mutex_unlock(&pa_bgz_lock);
    return true;
}

/* Waits (the GIL released, through pa_wait) for the worker to finish its
 * chunk of job. A waiting thread raises the worker to SCHED_OTHER if it is
 * allowed to (root, CAP_SYS_NICE or RLIMIT_NICE; the hugepage backend runs as
 * root): else a busy machine could starve an idle-priority worker in the
 * middle of a chunk someone waits for. The worker drops back to SCHED_IDLE
 * before its next chunk. */
static void pa_bgz_wait_block(void *arg)
{
    pa_bgzero_job *job = arg;
    pthread_mutex_lock(&pa_bgz_lock);
    while (job->busy) {
#ifdef SCHED_IDLE
        if (!pa_bgz_boosted && pa_bgz_running) {
            struct sched_param p = {0};
            pa_bgz_boosted = pthread_setschedparam(pa_bgz_tid, SCHED_OTHER, &p) == 0;
        }
#endif
        pthread_cond_wait(&pa_bgz_done, &pa_bgz_lock);
    }
    pthread_mutex_unlock(&pa_bgz_lock);
}

/* under the lock; unlocks to wait (the waiter may take the GIL back, which
 * must never happen with the zeroer lock held) */
static void pa_bgz_wait_chunk(pa_bgzero_job *job)
{
    pthread_mutex_unlock(&pa_bgz_lock);
    pa_wait(pa_bgz_wait_block, job);
    pthread_mutex_lock(&pa_bgz_lock);
}

size_t pa_bgzero_claim(pa_bgzero_job *job, size_t off, size_t end, bool *done)
{
    pthread_mutex_lock(&pa_bgz_lock);
    /* from now on the worker's chunks stay at or above end */
    if (job->lo < end) {
        job->lo = end;
    }
    /* the chunk in flight may have started below end: wait for it; wait too
     * when the job ends, so that the worker never touches it again */
    while (job->busy && ((job->busy_lo < end && off < job->hi) || job->hi <= job->lo)) {
        pa_bgz_wait_chunk(job);
    }
    size_t hi = job->hi;
    *done = hi <= job->lo;
    if (*done) {
        if (job->queued) {
            pa_bgz_dequeue(job);
        }
        job->active = false;
    }
    pthread_mutex_unlock(&pa_bgz_lock);
    return hi;
}

size_t pa_bgzero_cancel(pa_bgzero_job *job)
{
    pthread_mutex_lock(&pa_bgz_lock);
    job->lo = job->hi; /* no new chunk */
    while (job->busy) {
        pa_bgz_wait_chunk(job);
    }
    size_t hi = job->hi;
    if (job->queued) {
        pa_bgz_dequeue(job);
    }
    job->active = false;
    pthread_mutex_unlock(&pa_bgz_lock);
    return hi;
}

void pa_bgzero_status(pa_bgzero_job *job, uint64_t *pending, uint64_t *zeroed)
{
    pthread_mutex_lock(&pa_bgz_lock);
    *pending = job->active && job->hi > job->lo ? job->hi - job->lo : 0;
    *zeroed = job->zeroed;
    pthread_mutex_unlock(&pa_bgz_lock);
}

void pa_bgzero_ref(void)
{
    pthread_mutex_lock(&pa_bgz_lock);
    pa_bgz_refs++;
    pthread_mutex_unlock(&pa_bgz_lock);
}

void pa_bgzero_unref(void)
{
    pthread_mutex_lock(&pa_bgz_lock);
    bool stop = --pa_bgz_refs == 0 && pa_bgz_running;
    pthread_t tid = pa_bgz_tid;
    if (stop) {
        /* a later submit starts a worker of the next generation */
        pa_bgz_gen++;
        pa_bgz_running = false;
        pthread_cond_broadcast(&pa_bgz_work);
    }
    pthread_mutex_unlock(&pa_bgz_lock);
    if (stop) {
        /* it is between chunks (every job was cancelled): it exits at once */
        pthread_join(tid, NULL);
    }
}

bool pa_bgzero_running(void)
{
    pthread_mutex_lock(&pa_bgz_lock);
    bool r = pa_bgz_running;
    pthread_mutex_unlock(&pa_bgz_lock);
    return r;
}

void pa_bgzero_fork_child(void)
{
    pthread_mutex_init(&pa_bgz_lock, NULL);
    pthread_cond_init(&pa_bgz_work, NULL);
    pthread_cond_init(&pa_bgz_done, NULL);
    pa_bgz_head = NULL;
    pa_bgz_running = false;
    pa_bgz_boosted = false;
    pa_bgz_refs = 0;
    pa_bgz_gen++;
}
