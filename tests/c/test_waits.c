/* Plain-C test of how the core waits (issue 13): a blocked pa_alloc/pa_free/
 * pa_get_info goes through the waiter hook (the binding's releases the GIL),
 * a sim flush/invalidate never takes the backend lock, and overlapping syncs
 * exclude each other per range while disjoint ones do not wait, and a new
 * block's zeroing runs after the backend lock is let go. Deadlocks
 * show as a join that does not finish within 60 s (a hang detector, not a
 * timing measurement). */
#define _GNU_SOURCE
#include "ctest.h"
#include "faultprobe.h"
#include "pa.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

static atomic_int waits;   /* calls of the waiter */
static atomic_int waiting; /* a thread is inside the waiter right now */

static void waiter(void (*block)(void *), void *arg)
{
    atomic_fetch_add(&waits, 1);
    atomic_store(&waiting, 1);
    block(arg);
    atomic_store(&waiting, 0);
}

static int join_within(pthread_t t, int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    return pthread_timedjoin_np(t, NULL, &ts);
}

typedef struct job {
    pa_backend *be;
    pa_block *blk;
    int rc;
    pa_err err;
    pa_range range;
    size_t lo, hi;
} job;

static void *do_flush(void *arg)
{
    job *j = arg;
    j->rc = pa_sync(j->be, j->blk, 0, j->blk->size, PA_TO_DEVICE, &j->err);
    return NULL;
}

static void *do_range(void *arg)
{
    job *j = arg;
    pa_range_acquire(j->be, &j->range, j->lo, j->hi);
    pa_range_release(j->be, &j->range);
    return NULL;
}

/* holds the backend lock until someone waits for it (through the waiter) */
static void *hold_lock(void *arg)
{
    pa_backend *be = arg;
    pthread_mutex_lock(&be->lock);
    atomic_store(&waiting, 2); /* "locked" */
    while (atomic_load(&waiting) != 1) {
        sched_yield();
    }
    pthread_mutex_unlock(&be->lock);
    return NULL;
}

/* 4.: the zeroing of a reused block's memory, caught by its first store into
 * a read-only page (faultprobe.h): was the backend lock free at that moment? */
typedef struct realloc_job {
    pa_backend *be;
    pa_block blk;
    int rc;
    pa_err err;
} realloc_job;

static void do_realloc(void *arg)
{
    realloc_job *j = arg;
    j->rc = pa_alloc(j->be, 1 << 20, 4096, PA_CACHED, &j->blk, &j->err);
}

static void zeroing_outside_lock(pa_backend *be)
{
    pa_err err;
    pa_block a;
    if (pa_alloc(be, 1 << 20, 4096, PA_CACHED, &a, &err) < 0) {
        check(0, "alloc for the zeroing check", "%s", err.msg);
        return;
    }
    memset(a.cpu, 0xa5, a.size); /* dirty: reusing it means zeroing it */
    void *cpu = a.cpu;
    pa_free(be, &a);
    realloc_job j = {.be = be};
    fault_probe fp = probe_first_store(&be->lock, cpu, 1 << 20, do_realloc, &j);
    size_t nonzero = 0;
    for (size_t i = 0; j.rc == 0 && i < j.blk.size; i++) {
        nonzero += ((unsigned char *)j.blk.cpu)[i] != 0;
    }
    check(fp.mprotect_rc == 0 && j.rc == 0 && j.blk.cpu == cpu && fp.faults >= 1 &&
              fp.lock_free && nonzero == 0,
          "a reused block is zeroed after the backend lock is let go (other threads' "
          "allocations do not wait behind the stores)",
          "rc %d, same memory %d, faults %d, lock free %d, nonzero bytes %zu", j.rc,
          j.blk.cpu == cpu, fp.faults, fp.lock_free, nonzero);
    if (j.rc == 0) {
        pa_free(be, &j.blk);
    }
}

int main(void)
{
    pa_set_waiter(waiter);
    pa_backend *be;
    pa_err err;
    const pa_option opts[] = {{"size", "16777216"}};
    if (pa_open("sim", opts, 1, &be, &err) < 0) {
        printf("FAIL open: %s\n", err.msg);
        return 1;
    }
    pa_block blk;
    if (pa_alloc(be, 1 << 20, 64, PA_CACHED, &blk, &err) < 0) {
        printf("FAIL alloc: %s\n", err.msg);
        return 1;
    }
    memset(blk.cpu, 0x5a, blk.size);

    /* 1. a flush while another thread holds the backend lock completes: the
     * sim backend's copy needs no backend lock */
    pthread_mutex_lock(&be->lock);
    job fj = {.be = be, .blk = &blk};
    pthread_t t;
    pthread_create(&t, NULL, do_flush, &fj);
    int jr = join_within(t, 60);
    pthread_mutex_unlock(&be->lock);
    if (jr != 0) {
        pthread_join(t, NULL);
    }
    unsigned char back[64];
    int ar = pa_sim_device_access(be, blk.device_address + blk.size - 64, back, 64, false, &err);
    check(jr == 0 && fj.rc == 0 && ar == 0 && back[0] == 0x5a && back[63] == 0x5a,
          "sim flush completes while the backend lock is held elsewhere, data reaches the device",
          "join %d, flush rc %d, access rc %d, byte 0x%02x", jr, fj.rc, ar, back[0]);

    /* 2. pa_get_info and pa_alloc go through the waiter when the lock is taken */
    atomic_store(&waits, 0);
    atomic_store(&waiting, 0);
    pthread_create(&t, NULL, hold_lock, be);
    while (atomic_load(&waiting) != 2) {
        sched_yield();
    }
    pa_info info;
    pa_get_info(be, &info);
    pthread_join(t, NULL);
    check(atomic_load(&waits) == 1 && info.buffers == 1 && info.used == blk.size,
          "pa_get_info waits for a held backend lock through the waiter", "waits %d, buffers %llu",
          atomic_load(&waits), (unsigned long long)info.buffers);
    atomic_store(&waits, 0);
    pa_block b2;
    int rc = pa_alloc(be, 4096, 64, 0, &b2, &err);
    check(rc == 0 && atomic_load(&waits) == 0, "an uncontended pa_alloc does not call the waiter",
          "rc %d, waits %d", rc, atomic_load(&waits));
    if (rc == 0) {
        atomic_store(&waiting, 0);
        pthread_create(&t, NULL, hold_lock, be);
        while (atomic_load(&waiting) != 2) {
            sched_yield();
        }
        pa_free(be, &b2);
        pthread_join(t, NULL);
        check(atomic_load(&waits) == 1, "pa_free waits for a held backend lock through the waiter",
              "waits %d", atomic_load(&waits));
    }

    /* 3. per-range exclusion: an overlapping range waits (through the
     * waiter) until the holder releases; a disjoint one does not wait */
    pa_range mine;
    pa_range_acquire(be, &mine, 0, 128);
    atomic_store(&waits, 0);
    job dj = {.be = be, .lo = 128, .hi = 256};
    pthread_create(&t, NULL, do_range, &dj);
    jr = join_within(t, 60);
    check(jr == 0 && atomic_load(&waits) == 0, "a disjoint range does not wait",
          "join %d, waits %d", jr, atomic_load(&waits));
    if (jr != 0) {
        pa_range_release(be, &mine);
        pthread_join(t, NULL);
        pa_range_acquire(be, &mine, 0, 128);
    }
    atomic_store(&waiting, 0);
    job oj = {.be = be, .lo = 64, .hi = 192};
    pthread_create(&t, NULL, do_range, &oj);
    while (atomic_load(&waiting) != 1) {
        sched_yield();
    }
    int still = join_within(t, 0) == ETIMEDOUT || atomic_load(&waiting) == 1;
    pa_range_release(be, &mine);
    jr = join_within(t, 60);
    check(still && jr == 0 && atomic_load(&waits) == 1,
          "an overlapping range waits through the waiter until the holder releases",
          "still %d, join %d, waits %d", still, jr, atomic_load(&waits));
    if (jr != 0) {
        pthread_join(t, NULL);
    }
    check(be->ranges == NULL, "no range left linked", "ranges %p", (void *)be->ranges);

    /* 4. zeroing without the backend lock */
    zeroing_outside_lock(be);

    pa_free(be, &blk);
    pa_close(be);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
