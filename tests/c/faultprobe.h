/* The plain-C tests' probe for "is this lock free when that memory is first
 * written?": the memory is made read-only, fn(arg) runs, and the first store
 * into it faults; the handler notes whether the lock could be taken at that
 * moment, makes the memory writable again and lets the store run again. A
 * fault anywhere else crashes as usual. lo and len: whole pages (huge pages
 * for a hugetlb mapping). */
#ifndef PA_FAULTPROBE_H
#define PA_FAULTPROBE_H

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

typedef struct fault_probe {
    int mprotect_rc; /* of making the memory read-only */
    int faults;      /* stores that faulted (1: the first one reopened it) */
    int lock_free;   /* the lock could be taken at the first fault */
} fault_probe;

static pthread_mutex_t *fp_lock;
static char *fp_lo;
static size_t fp_len;
static volatile sig_atomic_t fp_faults, fp_lock_free;

static void fp_on_fault(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    char *a = si->si_addr;
    if (a < fp_lo || a >= fp_lo + fp_len) {
        signal(SIGSEGV, SIG_DFL); /* not ours: crash as usual */
        return;
    }
    fp_faults++;
    if (pthread_mutex_trylock(fp_lock) == 0) {
        fp_lock_free = 1;
        pthread_mutex_unlock(fp_lock);
    }
    mprotect(fp_lo, fp_len, PROT_READ | PROT_WRITE); /* the store runs again */
}

static fault_probe probe_first_store(pthread_mutex_t *lock, void *lo, size_t len,
                                     void (*fn)(void *), void *arg)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = fp_on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old);
    fp_lock = lock;
    fp_lo = lo;
    fp_len = len;
    fp_faults = 0;
    fp_lock_free = 0;
    fault_probe out = {mprotect(lo, len, PROT_READ), 0, 0};
    fn(arg);
    mprotect(lo, len, PROT_READ | PROT_WRITE);
    sigaction(SIGSEGV, &old, NULL);
    out.faults = fp_faults;
    out.lock_free = fp_lock_free;
    return out;
}

#endif
