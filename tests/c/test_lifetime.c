/* The core's lifetime rules without Python: after fork() an inherited backend
 * refuses to allocate and only forgets what the child frees or closes; memory
 * a backend releases becomes inert zero pages (pa_retire), never a hole. */
#define _GNU_SOURCE
#include "ctest.h"
#include "pa.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static pa_backend *open_sim(void)
{
    pa_option opts[] = {{"size", "1048576"}};
    pa_backend *be = NULL;
    pa_err err;
    int rc = pa_open("sim", opts, 1, &be, &err);
    check(rc == 0, "open sim", "%s", err.msg);
    return be;
}

/* [p, p + len) is mapped readable and writable, per /proc/self/maps */
static int mapped_rw(const void *p, size_t len)
{
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512];
    int yes = 0;
    uintptr_t lo = (uintptr_t)p, hi = lo + len;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        unsigned long a, b;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) == 3 && a <= lo && hi <= b &&
            perms[0] == 'r' && perms[1] == 'w') {
            yes = 1;
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    return yes;
}

static void test_fork_child_only_forgets(void)
{
    pa_backend *be = open_sim();
    pa_block a, b;
    pa_err err;
    if (be == NULL || pa_alloc(be, 4096, 4096, 0, &a, &err) < 0 ||
        pa_alloc(be, 4096, 4096, 0, &b, &err) < 0) {
        check(0, "fork: setup", "%s", err.msg);
        return;
    }
    memset(a.cpu, 0x11, a.size);
    uint64_t a_dev = a.device_address;
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        pa_block c;
        /* refused with the advice; inherited blocks readable; free and close forget */
        if (!pa_inherited(be) || pa_alloc(be, 64, 64, 0, &c, &err) != -ECHILD ||
            strstr(err.msg, "open a new backend") == NULL) {
            bad |= 1;
        }
        if (((unsigned char *)a.cpu)[a.size - 1] != 0x11) {
            bad |= 2;
        }
        pa_free(be, &a);
        pa_close(be);
        _exit(bad);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork: the child is refused and forgets",
          "child status 0x%x", status);
    check(!pa_inherited(be), "fork: the parent's backend is its own", "inherited in the parent");
    pa_info info;
    pa_get_info(be, &info);
    check(info.buffers == 2 && ((unsigned char *)a.cpu)[0] == 0x11 && a.device_address == a_dev,
          "fork: the parent's accounting and data are untouched", "%llu buffers",
          (unsigned long long)info.buffers);
    /* the block the child "freed" is still the parent's: a new one is elsewhere */
    pa_block d;
    int rc = pa_alloc(be, 4096, 4096, 0, &d, &err);
    check(rc == 0 && (d.device_address + d.size <= a_dev || d.device_address >= a_dev + a.size),
          "fork: the parent's next block does not reuse a block the child freed", "0x%llx",
          (unsigned long long)d.device_address);
    if (rc == 0) {
        pa_free(be, &d);
    }
    pa_free(be, &a);
    pa_free(be, &b);
    pa_close(be);
}

static void test_retired_range_is_inert(void)
{
    size_t len = 1 << 20;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        check(0, "retire: setup", "mmap failed");
        return;
    }
    memset(p, 0x5A, len);
    pa_retire(p, len);
    /* still mapped: a stray write lands, a stray read sees zeroes, not the old data */
    int rw = mapped_rw(p, len);
    check(rw, "retire: the range stays mapped", "not mapped rw");
    if (rw) {
        p[12345] = 1;
        check(p[0] == 0 && p[len - 1] == 0 && p[12345] == 1, "retire: inert private zero pages",
              "0x%x 0x%x", p[0], p[len - 1]);
    }
    /* a new mapping is never placed over it */
    void *q = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    check(q != MAP_FAILED && ((unsigned char *)q + len <= p || (unsigned char *)q >= p + len),
          "retire: later mappings go elsewhere", "%p over %p", q, (void *)p);
    if (q != MAP_FAILED) {
        munmap(q, len);
    }
    /* a hole someone else left is filled when nothing took it */
    unsigned char *h = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (h != MAP_FAILED) {
        munmap(h, len);
        pa_retire_hole(h, len);
        check(mapped_rw(h, len), "retire: a hole is filled", "still a hole");
    }
}

static void test_closed_sim_region_is_inert(void)
{
    pa_backend *be = open_sim();
    pa_block a;
    pa_err err;
    if (be == NULL || pa_alloc(be, 4096, 4096, 0, &a, &err) < 0) {
        check(0, "close: setup", "%s", err.msg);
        return;
    }
    unsigned char *cpu = a.cpu;
    size_t size = a.size;
    memset(cpu, 0x77, size);
    pa_free(be, &a);
    pa_close(be);
    int rw = mapped_rw(cpu, size);
    check(rw, "close: a closed sim region stays mapped", "unmapped");
    if (rw) {
        cpu[0] = 1; /* what a racing NumPy call would do */
        check(cpu[size - 1] == 0, "close: as zero pages", "0x%x", cpu[size - 1]);
    }
}

/* The inert ranges are bounded: at most 1024 of them, and on 32-bit targets at
 * most 128 MiB of address space; beyond that the oldest is unmapped for good.
 * Everything is mapped first, so no new mapping can land in an evicted range. */
static void test_retired_ranges_are_bounded(void)
{
    enum { N = 1100 };
    static unsigned char *r[N];
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < N; i++) {
        r[i] = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r[i] == MAP_FAILED) {
            check(0, "retire: bounded setup", "mmap %d failed", i);
            return;
        }
    }
    for (int i = 0; i < N; i++) {
        pa_retire(r[i], page);
    }
    int first_gone = !mapped_rw(r[0], page), last_kept = mapped_rw(r[N - 1], page);
    check(first_gone && last_kept, "retire: at most 1024 ranges, the oldest unmapped first",
          "first gone %d, last kept %d", first_gone, last_kept);
    /* the kept ones stay: unmapping them here would leave stale entries that a
     * later eviction would unmap under whatever is mapped there by then */
    if (sizeof(void *) < 8) {
        size_t big = (size_t)48 << 20; /* three of them pass the 128 MiB budget */
        unsigned char *b[3];
        for (int i = 0; i < 3; i++) {
            b[i] = mmap(NULL, big, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (b[i] == MAP_FAILED) {
                check(0, "retire: 32-bit budget setup", "mmap failed");
                return;
            }
        }
        for (int i = 0; i < 3; i++) {
            pa_retire(b[i], big);
        }
        check(!mapped_rw(b[0], big) && mapped_rw(b[1], big) && mapped_rw(b[2], big),
              "retire: 32-bit targets keep at most 128 MiB inert", "budget not applied");
    }
}

int main(void)
{
    test_fork_child_only_forgets();
    test_retired_range_is_inert();
    test_closed_sim_region_is_inert();
    test_retired_ranges_are_bounded();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
