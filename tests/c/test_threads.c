/* Plain-C thread-safety test of the core: 8 threads allocate, write, sync,
 * simulate DMA and free on one shared backend at once. Run under
 * ThreadSanitizer (EXTRA_CFLAGS=-fsanitize=thread) it pins down that the
 * core's shared state is locked; without it, it still checks the data. */
#define _GNU_SOURCE
#include "pa.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 8
#define ROUNDS 2000

static int passed, failed;

static void check(int ok, const char *name, const char *detail)
{
    if (ok) {
        passed++;
        printf("ok   %s\n", name);
    } else {
        failed++;
        printf("FAIL %s: %s\n", name, detail);
    }
}

typedef struct worker {
    pa_backend *be;
    unsigned seed;
    int errors;
    char msg[PA_ERR_LEN + 32];
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    pa_block live[16];
    memset(live, 0, sizeof(live));
    for (int r = 0; r < ROUNDS; r++) {
        pa_block *b = &live[rand_r(&w->seed) % 16];
        pa_err err;
        if (b->cpu != NULL) {
            pa_free(w->be, b);
            continue;
        }
        size_t size = 64 + (size_t)(rand_r(&w->seed) % 8192);
        size_t align = (size_t)64 << (rand_r(&w->seed) % 7);
        if (pa_alloc(w->be, size, align, 0, b, &err) < 0) {
            w->errors++;
            snprintf(w->msg, sizeof(w->msg), "alloc: %s", err.msg);
            continue;
        }
        unsigned char tag = (unsigned char)(w->seed & 0xff);
        memset(b->cpu, tag, size);
        if (pa_sync(w->be, b, 0, size, PA_TO_DEVICE, &err) < 0) {
            w->errors++;
            snprintf(w->msg, sizeof(w->msg), "flush: %s", err.msg);
        }
        if (w->be->ops->device_access != NULL) {
            unsigned char back[64];
            if (pa_sim_device_access(w->be, b->device_address, back, sizeof(back), false, &err) !=
                    0 ||
                back[0] != tag || back[63] != tag) {
                w->errors++;
                snprintf(w->msg, sizeof(w->msg), "device saw %u, not %u", back[0], tag);
            }
        }
        if (pa_sync(w->be, b, 0, size, PA_FROM_DEVICE, &err) < 0) {
            w->errors++;
            snprintf(w->msg, sizeof(w->msg), "invalidate: %s", err.msg);
        }
        pa_info info;
        pa_get_info(w->be, &info);
    }
    for (int i = 0; i < 16; i++) {
        if (live[i].cpu != NULL) {
            pa_free(w->be, &live[i]);
        }
    }
    return NULL;
}

static void run(const char *spec, const pa_option *opts, size_t nopts)
{
    pa_backend *be;
    pa_err err;
    char name[128];
    if (pa_open(spec, opts, nopts, &be, &err) < 0) {
        printf("SKIP %s: %s\n", spec, err.msg);
        return;
    }
    worker w[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.be = be, .seed = 12345u + (unsigned)i * 7919u};
        pthread_create(&t[i], NULL, work, &w[i]);
    }
    int errors = 0;
    const char *msg = "";
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        if (w[i].errors) {
            errors += w[i].errors;
            msg = w[i].msg;
        }
    }
    snprintf(name, sizeof(name), "%s: %d threads x %d rounds, data and syncs right", spec, THREADS,
             ROUNDS);
    check(errors == 0, name, msg);
    pa_info info;
    pa_get_info(be, &info);
    snprintf(name, sizeof(name), "%s: accounting back to zero", spec);
    check(info.used == 0 && info.buffers == 0, name, "used or buffers left over");
    pa_close(be);
}

int main(void)
{
    const pa_option small[] = {{"size", "67108864"}};
    run("sim", small, 1);
    const pa_option coherent[] = {{"size", "67108864"}, {"coherent", "1"}};
    run("sim", coherent, 2);
    const pa_option noncoh[] = {{"coherent", "0"}};
    run("hugepage", noncoh, 1);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
