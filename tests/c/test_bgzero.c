/* Plain-C tests of the background zeroer (src/core/bgzero.c) on ordinary
 * memory: a submitted range reads zero once the worker is done; a block
 * claimed while the worker runs (its chunk in flight overlapping the block
 * or not) keeps every byte written into it afterwards, and the claim's hi
 * is true (zero at and above it); a cancelled job writes nothing more; the
 * last unref leaves no thread behind; a fork child has no worker and can
 * start its own. No timing thresholds: waits for the worker are bounded
 * only as a guard against a hang. */
#define _GNU_SOURCE
#include "bgzero.h"
#include "pa.h"
#include "zero.h"

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctest.h"

#define MiB ((size_t)1 << 20)
#define AREA (24 * MiB) /* twelve chunks */

static unsigned char *area;

static int threads(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    if (d == NULL) {
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        n += de->d_name[0] != '.';
    }
    closedir(d);
    return n;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* threads() once it is want, or after 10 s: a joined thread leaves
 * /proc/self/task a moment after pthread_join returns (the kernel clears the
 * thread id glibc waits on before the task is gone; under qemu-user the gap
 * is long enough to see) */
static int threads_settled(int want)
{
    for (int i = 0; i < 10000 && threads() != want; i++) {
        sleep_ms(1);
    }
    return threads();
}

/* waits until the worker has nothing left of job: false after 120 s (a hang) */
static bool drain(pa_bgzero_job *job)
{
    for (int i = 0; i < 120000; i++) {
        uint64_t pending, zeroed;
        pa_bgzero_status(job, &pending, &zeroed);
        if (pending == 0) {
            return true;
        }
        sleep_ms(1);
    }
    return false;
}

/* first offset in [lo, hi) whose byte is not v, or SIZE_MAX */
static size_t first_not(size_t lo, size_t hi, unsigned char v)
{
    static unsigned char ref[64 * 1024];
    memset(ref, v, sizeof(ref));
    /* memcmp over whole units first (fast, also under the sanitizers) */
    while (hi - lo >= sizeof(ref) && memcmp(area + lo, ref, sizeof(ref)) == 0) {
        lo += sizeof(ref);
    }
    for (size_t i = lo; i < hi; i++) {
        if (area[i] != v) {
            return i;
        }
    }
    return SIZE_MAX;
}

static void test_drain(void)
{
    pa_bgzero_job job;
    memset(&job, 0, sizeof(job));
    memset(area, 0xA5, AREA);
    check(pa_bgzero_submit(&job, (char *)area, AREA), "submit starts the worker", "failed");
    check(pa_bgzero_running(), "the worker runs after a submit", "not running");
    bool ok = drain(&job);
    check(ok, "the worker finishes a 24 MiB job", "still pending after 120 s");
    size_t bad = first_not(0, AREA, 0);
    check(bad == SIZE_MAX, "every byte of the job reads zero", "byte %zu is 0x%02x", bad,
          bad == SIZE_MAX ? 0 : area[bad]);
    uint64_t pending, zeroed;
    pa_bgzero_status(&job, &pending, &zeroed);
    check(zeroed == AREA && pending == 0, "status: zeroed 24 MiB, none pending",
          "zeroed %llu pending %llu", (unsigned long long)zeroed, (unsigned long long)pending);
    bool done = false;
    size_t hi = pa_bgzero_claim(&job, 0, 64, &done);
    check(done && hi == 0 && !job.active, "a claim after the job ended: hi 0, done, inactive",
          "done %d hi %zu active %d", done, hi, job.active);
}

/* a job of PA_ZERO_NT_BYTES takes the streaming-store path (job.nt) */
static void test_drain_streaming(void)
{
    size_t n = PA_ZERO_NT_BYTES;
    unsigned char *big = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED) {
        check(0, "mmap of the streaming-store job", "failed");
        return;
    }
    pa_bgzero_job job;
    memset(&job, 0, sizeof(job));
    memset(big, 0xA5, n);
    pa_bgzero_submit(&job, (char *)big, n);
    check(job.nt, "a 96 MiB job uses streaming stores", "nt false");
    check(drain(&job), "the streaming-store job ends", "still pending after 120 s");
    unsigned char *save = area;
    area = big;
    size_t bad = first_not(0, n, 0);
    area = save;
    check(bad == SIZE_MAX, "every byte of the streaming-store job reads zero", "byte %zu", bad);
    bool done;
    pa_bgzero_claim(&job, 0, n, &done);
    munmap(big, n);
}

/* claim [off, end) at some moment of the job, write 0x5A there, let the
 * worker finish: the block holds 0x5A, above it zero */
static void one_claim(size_t off, size_t end, long delay_us, unsigned seed)
{
    pa_bgzero_job job;
    memset(&job, 0, sizeof(job));
    memset(area, 0xA5, AREA);
    pa_bgzero_submit(&job, (char *)area, AREA);
    if (delay_us > 0) {
        struct timespec ts = {0, delay_us * 1000L};
        nanosleep(&ts, NULL);
    } else if (delay_us < 0) {
        sched_yield();
    }
    bool done = false;
    size_t hi = pa_bgzero_claim(&job, off, end, &done);
    char name[160];
    /* zero at and above hi now (and for good: the worker writes only zeros) */
    size_t bad = first_not(hi < AREA ? hi : AREA, AREA, 0);
    snprintf(name, sizeof(name), "claim [%zu, %zu) seed %u: zero at and above hi %zu", off, end,
             seed, hi);
    check(bad == SIZE_MAX, name, "byte %zu is 0x%02x", bad, bad == SIZE_MAX ? 0 : area[bad]);
    memset(area + off, 0x5A, end - off);
    if (!done) {
        check(drain(&job), "the job ends after a claim", "still pending after 120 s");
        hi = pa_bgzero_claim(&job, off, end, &done);
    }
    snprintf(name, sizeof(name), "claim [%zu, %zu) seed %u: block keeps what was written", off,
             end, seed);
    bad = first_not(off, end, 0x5A);
    check(bad == SIZE_MAX, name, "byte %zu is 0x%02x", bad, bad == SIZE_MAX ? 0 : area[bad]);
    snprintf(name, sizeof(name), "claim [%zu, %zu) seed %u: above the block reads zero", off, end,
             seed);
    bad = first_not(end, AREA, 0);
    check(bad == SIZE_MAX, name, "byte %zu is 0x%02x", bad, bad == SIZE_MAX ? 0 : area[bad]);
    check(done && !job.active && hi <= end, "the job is over and its hi is at most the block's end",
          "done %d active %d hi %zu end %zu", done, job.active, hi, end);
    /* below the block: only 0xA5 (not reached) or 0 (zeroed) */
    bad = SIZE_MAX;
    for (size_t i = 0; i < off && bad == SIZE_MAX; i++) {
        if (area[i] != 0 && area[i] != 0xA5) {
            bad = i;
        }
    }
    snprintf(name, sizeof(name), "claim [%zu, %zu) seed %u: below it only old bytes or zeros", off,
             end, seed);
    check(bad == SIZE_MAX, name, "byte %zu is 0x%02x", bad, bad == SIZE_MAX ? 0 : area[bad]);
}

static void test_claims(void)
{
    /* fixed cases: the whole area, the top chunk (in flight first), a block
     * straddling a chunk boundary, a small block low, one line at the top */
    one_claim(0, AREA, 0, 0);
    one_claim(AREA - 2 * MiB, AREA, -1, 0);
    one_claim(AREA - 3 * MiB - 4096, AREA - MiB + 64, -1, 0);
    one_claim(0, 4096, 0, 0);
    one_claim(AREA - 64, AREA, 200, 0);
    one_claim(10 * MiB, 14 * MiB, 500, 0);
    srand(13);
    for (unsigned seed = 1; seed <= 40; seed++) {
        size_t lines = AREA / 64;
        size_t a = (size_t)rand() % lines, b = (size_t)rand() % lines;
        if (a > b) {
            size_t t = a;
            a = b;
            b = t;
        }
        long delay = (long)(rand() % 3000) - 500; /* < 0: no sleep, just a yield */
        one_claim(a * 64, (b + 1) * 64, delay, seed);
    }
}

static void test_cancel(void)
{
    for (int round = 0; round < 10; round++) {
        pa_bgzero_job job;
        memset(&job, 0, sizeof(job));
        memset(area, 0xA5, AREA);
        pa_bgzero_submit(&job, (char *)area, AREA);
        struct timespec ts = {0, round * 300000L};
        nanosleep(&ts, NULL);
        size_t hi = pa_bgzero_cancel(&job);
        size_t bad = first_not(hi, AREA, 0);
        check(bad == SIZE_MAX && !job.active, "cancel: zero at and above hi, job inactive",
              "round %d hi %zu byte %zu", round, hi, bad);
        memset(area, 0x3C, AREA);
        sleep_ms(5); /* a worker that still wrote would show now */
        bad = first_not(0, AREA, 0x3C);
        check(bad == SIZE_MAX, "cancel: the worker writes nothing after it", "round %d byte %zu",
              round, bad);
    }
}

/* widening: a job claimed low (lo raised) and then resubmitted (the region
 * emptied again) zeroes down to 0 */
static void test_resubmit(void)
{
    pa_bgzero_job job;
    memset(&job, 0, sizeof(job));
    memset(area, 0xA5, AREA);
    pa_bgzero_submit(&job, (char *)area, AREA);
    bool done;
    pa_bgzero_claim(&job, 0, 4096, &done);
    memset(area, 0x77, 4096); /* the user writes the block, then frees it */
    pa_bgzero_submit(&job, (char *)area, AREA);
    check(drain(&job), "a resubmitted job ends", "still pending after 120 s");
    size_t bad = first_not(0, AREA, 0);
    check(bad == SIZE_MAX, "a resubmitted job zeroes down to 0, the freed block too",
          "byte %zu is 0x%02x", bad, bad == SIZE_MAX ? 0 : area[bad]);
    size_t hi = pa_bgzero_claim(&job, 0, AREA, &done);
    check(done && hi == 0, "and its claim says all is zero", "done %d hi %zu", done, hi);
}

static int worker_policy(int main_tid)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    int policy = -1;
    while (d != NULL && (de = readdir(d)) != NULL) {
        int tid = atoi(de->d_name);
        if (tid > 0 && tid != main_tid) {
            policy = sched_getscheduler(tid);
        }
    }
    if (d != NULL) {
        closedir(d);
    }
    return policy;
}

static void test_idle_priority_and_threads(void)
{
    int before = threads();
    pa_bgzero_ref();
    pa_bgzero_job job;
    memset(&job, 0, sizeof(job));
    memset(area, 0xA5, 4 * MiB);
    pa_bgzero_submit(&job, (char *)area, 4 * MiB);
    check(drain(&job), "a 4 MiB job ends", "still pending");
    check(threads() == before + 1, "one worker thread while referenced", "%d threads, %d before",
          threads(), before);
#ifdef SCHED_IDLE
    int policy = worker_policy(getpid());
    check(policy == SCHED_IDLE, "the worker runs at SCHED_IDLE", "policy %d", policy);
#endif
    bool done;
    pa_bgzero_claim(&job, 0, 4 * MiB, &done);
    pa_bgzero_unref();
    int after = threads_settled(before);
    check(after == before && !pa_bgzero_running(), "the last unref joins the worker",
          "%d threads, %d before", after, before);
    /* and a later user gets a new one */
    pa_bgzero_ref();
    memset(area, 0xA5, 4 * MiB);
    pa_bgzero_submit(&job, (char *)area, 4 * MiB);
    check(drain(&job) && first_not(0, 4 * MiB, 0) == SIZE_MAX, "a new worker after a restart",
          "not zeroed");
    pa_bgzero_claim(&job, 0, 4 * MiB, &done);
    pa_bgzero_unref();
    after = threads_settled(before);
    check(after == before, "no thread left after the second unref", "%d threads, %d before",
          after, before);
}

/* through pa.c's fork handler (registered by pa_open): the child has no
 * worker, never waits for the parent's, and can start its own */
#if defined(__SANITIZE_THREAD__)
#define PA_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PA_TEST_TSAN 1
#endif
#endif

static void test_fork(void)
{
#ifdef PA_TEST_TSAN
    /* TSan cannot start threads in a child of a multi-threaded process; the
     * plain and ASan lanes run this case */
    printf("skip fork child (ThreadSanitizer: no threads after a multi-threaded fork)\n");
    return;
#endif
    pa_backend *be;
    pa_err err;
    pa_option opt = {"size", "1048576"};
    if (pa_open("sim", &opt, 1, &be, &err) < 0) {
        check(0, "open sim for the fork handler", "%s", err.msg);
        return;
    }
    pa_bgzero_ref();
    pa_bgzero_job job;
    memset(&job, 0, sizeof(job));
    memset(area, 0xA5, AREA);
    pa_bgzero_submit(&job, (char *)area, AREA);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        /* the parent's job is not the child's: no worker, nothing to wait for */
        int rc = pa_bgzero_running() ? 10 : 0;
        unsigned char *mine = mmap(NULL, 4 * MiB, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mine == MAP_FAILED) {
            _exit(11);
        }
        pa_bgzero_ref();
        pa_bgzero_job cj;
        memset(&cj, 0, sizeof(cj));
        memset(mine, 0xA5, 4 * MiB);
        pa_bgzero_submit(&cj, (char *)mine, 4 * MiB);
        unsigned char *save = area;
        area = mine;
        if (!drain(&cj) || first_not(0, 4 * MiB, 0) != SIZE_MAX) {
            rc = rc ? rc : 12;
        }
        area = save;
        bool done;
        pa_bgzero_claim(&cj, 0, 4 * MiB, &done);
        pa_bgzero_unref(); /* joins the child's own worker only */
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "fork child: no inherited worker, its own worker zeroes its memory",
          "child status %d (10: worker inherited, 12: child job not zeroed)", status);
    check(drain(&job) && first_not(0, AREA, 0) == SIZE_MAX,
          "the parent's job finishes across the fork", "not zeroed");
    bool done;
    pa_bgzero_claim(&job, 0, AREA, &done);
    pa_bgzero_unref();
    pa_close(be);
}

/* The hugepage backend with its worker, from two threads at once: every
 * block reads zero when handed out, whatever the worker was doing, and keeps
 * what its thread wrote until freed. Skipped without huge pages (not root). */
typedef struct huge_ctx {
    pa_backend *be;
    unsigned seed;
    int bad; /* -1: an allocation failed */
} huge_ctx;

static void *huge_thread(void *arg)
{
    huge_ctx *c = arg;
    for (int i = 0; i < 60 && c->bad == 0; i++) {
        size_t size = (size_t)(1 + rand_r(&c->seed) % 96) * 64 * 1024; /* 64 KiB - 6 MiB */
        pa_block b;
        pa_err err;
        if (pa_alloc(c->be, size, 64, 0, &b, &err) < 0) {
            c->bad = -1;
            break;
        }
        static const unsigned char zeros[64 * 1024];
        unsigned char *p = b.cpu;
        for (size_t j = 0; j < size; j += sizeof(zeros)) {
            if (memcmp(p + j, zeros, sizeof(zeros)) != 0) { /* size: whole 64 KiB units */
                c->bad = 1;
                break;
            }
        }
        unsigned char v = (unsigned char)(1 + c->seed % 250);
        memset(p, v, size);
        sched_yield(); /* let the worker run while the block is live */
        for (size_t j = 0; j < size && c->bad == 0; j += 4096) {
            if (p[j] != v) {
                c->bad = 2;
            }
        }
        pa_free(c->be, &b);
    }
    return NULL;
}

static void test_hugepage_threads(void)
{
    pa_backend *be;
    pa_err err;
    if (pa_open("hugepage", NULL, 0, &be, &err) < 0) {
        printf("skip hugepage with two threads: %s\n", err.msg);
        return;
    }
    huge_ctx c[2] = {{be, 1, 0}, {be, 2, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        pthread_create(&t[i], NULL, huge_thread, &c[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    if (c[0].bad == -1 || c[1].bad == -1) {
        printf("skip hugepage with two threads: an allocation failed (huge pages in use)\n");
    } else {
        check(c[0].bad == 0 && c[1].bad == 0,
              "hugepage, two threads: every block reads zero and keeps what was written",
              "thread results %d %d (1: not zero, 2: changed while live)", c[0].bad, c[1].bad);
    }
    pa_close(be);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    area = mmap(NULL, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) {
        printf("mmap failed\n0 passed, 1 failed\n");
        return 1;
    }
    pa_bgzero_ref();
    test_drain();
    test_drain_streaming();
    test_claims();
    test_cancel();
    test_resubmit();
    pa_bgzero_unref();
    test_idle_priority_and_threads();
    test_hugepage_threads();
    test_fork();
    munmap(area, AREA);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
