/* udmabuf backend: blocks carved (TLSF) out of one ikwzm u-dma-buf region
 * (/dev/udmabufN, /sys/class/u-dma-buf/NAME), kept coherent through the
 * driver's own sync interface. An exclusive flock on the device node keeps two
 * processes from carving the same region (the driver has no such guard). */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include "cache.h"
#include "pa.h"
#include "tlsf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* The driver's ioctl interface (u-dma-buf >= 4.7, u-dma-buf-ioctl.h). The
 * SET_SYNC_FOR_* argument is the same 64-bit word as the sysfs one-shot value:
 * offset << 32 | size (bits 4..31) | direction << 2 | 1. */
typedef struct pa_udmabuf_drv_info {
    uint64_t flags; /* bits 0..7: ioctl version */
    char version[16];
} pa_udmabuf_drv_info;

typedef struct pa_udmabuf_sync_args {
    uint64_t flags; /* bits 0..1: command (1 for cpu, 3 for device), 2..3: direction */
    uint64_t size;
    uint64_t offset;
} pa_udmabuf_sync_args;

_Static_assert(sizeof(pa_udmabuf_drv_info) == 24 && offsetof(pa_udmabuf_drv_info, version) == 8,
               "u_dma_buf_ioctl_drv_info layout");
_Static_assert(sizeof(pa_udmabuf_sync_args) == 24 && offsetof(pa_udmabuf_sync_args, offset) == 16,
               "u_dma_buf_ioctl_sync_args layout");

#define PA_UDMABUF_GET_DRV_INFO _IOR('U', 1, pa_udmabuf_drv_info)
#define PA_UDMABUF_SET_SYNC_FOR_CPU _IOW('U', 5, uint64_t)
#define PA_UDMABUF_SET_SYNC_FOR_DEVICE _IOW('U', 6, uint64_t)
#define PA_UDMABUF_GET_SYNC _IOR('U', 8, pa_udmabuf_sync_args)
#define PA_UDMABUF_SET_SYNC _IOW('U', 9, pa_udmabuf_sync_args)

#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) || defined(__arm__)
/* asm-generic ioctl encoding: the numbers the driver was built with */
_Static_assert(PA_UDMABUF_GET_DRV_INFO == 0x80185501u, "GET_DRV_INFO number");
_Static_assert(PA_UDMABUF_SET_SYNC_FOR_CPU == 0x40085505u, "SET_SYNC_FOR_CPU number");
_Static_assert(PA_UDMABUF_SET_SYNC_FOR_DEVICE == 0x40085506u, "SET_SYNC_FOR_DEVICE number");
_Static_assert(PA_UDMABUF_SET_SYNC == 0x40185509u, "SET_SYNC number");
_Static_assert(PA_UDMABUF_GET_SYNC == 0x80185508u, "GET_SYNC number");
#endif

#define PA_UDMABUF_CMD_CPU 1u
#define PA_UDMABUF_CMD_DEVICE 3u
#define PA_UDMABUF_DIR_TO_DEVICE 1   /* DMA_TO_DEVICE in the driver */
#define PA_UDMABUF_DIR_FROM_DEVICE 2 /* DMA_FROM_DEVICE */
/* sync_mode values (u-dma-buf.c): 1 non-cached (Device memory on ARM: never),
 * 2 write-combine, 3 "dma coherent" (write-combine on arm64); bit 2 applies the
 * mode to every mapping, not only to O_SYNC ones */
#define PA_UDMABUF_MODE_NONCACHED 1
#define PA_UDMABUF_MODE_WC 2
#define PA_UDMABUF_MODE_MASK 3
#define PA_UDMABUF_MODE_ALWAYS 4
/* one-shot values carry a 32-bit offset and a size in bits 4..31 */
#define PA_UDMABUF_CHUNK ((uint64_t)1 << 31)

#define PA_UDMABUF_HINT_LOAD                                                                       \
    "load the module (modprobe u-dma-buf udmabuf0=0x1000000 for a 16 MiB buffer) or add a "      \
    "device-tree node (udmabuf0 { compatible = \"ikwzm,u-dma-buf\"; device-name = "                \
    "\"udmabuf0\"; size = <0x1000000>; };)"
#define PA_UDMABUF_HINT_PERM                                                                       \
    "run as root or add a udev rule (/etc/udev/rules.d/99-u-dma-buf.rules: "                       \
    "SUBSYSTEM==\"u-dma-buf\", GROUP=\"udmabuf\", MODE=\"0660\", plus group write access to "      \
    "the sysfs sync_* attributes) and join that group"

static const char *const pa_udmabuf_classes[] = {"/sys/class/u-dma-buf", "/sys/class/udmabuf",
                                                 NULL};

typedef enum pa_udmabuf_how {
    PA_UDMABUF_IOCTL,   /* SET_SYNC_FOR_DEVICE / SET_SYNC_FOR_CPU ioctls (>= 4.7) */
    PA_UDMABUF_ONESHOT, /* encoded value written to sync_for_device / sync_for_cpu (>= 1.4) */
    PA_UDMABUF_RANGE,   /* sync_offset / sync_size / sync_direction, then 1 to sync_for_* */
    PA_UDMABUF_USER,    /* no driver sync at all: user-space cache maintenance */
} pa_udmabuf_how;

/* sysfs attributes kept open for the backend's lifetime */
enum {
    PA_ATTR_FOR_DEVICE,
    PA_ATTR_FOR_CPU,
    PA_ATTR_OFFSET,
    PA_ATTR_SIZE,
    PA_ATTR_DIRECTION,
    PA_NATTR
};
static const char *const pa_udmabuf_attr_names[PA_NATTR] = {
    "sync_for_device", "sync_for_cpu", "sync_offset", "sync_size", "sync_direction"};

/* how each page of the region is mapped into our single virtual range */
enum { PA_PAGE_NONE = 0, PA_PAGE_CACHED = 1, PA_PAGE_WC = 2 };

/* A device as found in sysfs (paths already carry PYNQ_ALLOC_SYSROOT). */
typedef struct pa_udmabuf_dev {
    char name[NAME_MAX + 1];
    char sysdir[PATH_MAX];
    char node[PATH_MAX];
    uint64_t phys, size;
    int dma_coherent; /* -1: the driver does not say */
    char version[64]; /* "" when driver_version is missing (old drivers) */
} pa_udmabuf_dev;

typedef struct pa_udmabuf {
    pa_udmabuf_dev dev;
    int fd;    /* cached mapping; holds the flock */
    int wc_fd; /* O_SYNC with sync_mode 2: write-combine pages; -1 until needed */
    int attr[PA_NATTR];
    pa_udmabuf_how how;
    char *cpu;      /* the whole region, one virtual range */
    size_t map_len; /* region size rounded up to pages */
    size_t page;
    uint8_t *pages; /* PA_PAGE_* per page */
    pa_tlsf *tlsf;
    int sync_mode;          /* as found at open; -1 when the attribute is missing */
    bool sync_mode_written; /* restore sync_mode at close */
    uint64_t saved_range[3]; /* stored sync_offset/size/direction found at open */
    bool range_saved, range_written;
    pthread_mutex_t range_lock; /* the stored-range attributes are one shared triple */
} pa_udmabuf;

/* ------------------------------------------------------------------ sysfs */

static int pa_udmabuf_read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    ssize_t n;
    do {
        n = read(fd, buf, len - 1);
    } while (n < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    if (n < 0) {
        return -e;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

static int pa_udmabuf_attr_path(char *out, size_t len, const char *sysdir, const char *attr)
{
    int n = snprintf(out, len, "%s/%s", sysdir, attr);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int pa_udmabuf_read_attr(const char *sysdir, const char *attr, char *buf, size_t len)
{
    char path[PATH_MAX + 64];
    int rc = pa_udmabuf_attr_path(path, sizeof(path), sysdir, attr);
    return rc < 0 ? rc : pa_udmabuf_read_file(path, buf, len);
}

/* base 16 for phys_addr ("0x"-prefixed, zero padded), 10 for size, 0 (like
 * the driver's kstrtoull) for the attributes we wrote ourselves */
static int pa_udmabuf_parse(const char *s, int base, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno != 0 || end == s || *end != '\0' || strchr(s, '-') != NULL) {
        return -EINVAL;
    }
    *out = (uint64_t)v;
    return 0;
}

static int pa_udmabuf_read_u64(const char *sysdir, const char *attr, int base, uint64_t *out,
                               pa_err *err)
{
    char buf[64];
    int rc = pa_udmabuf_read_attr(sysdir, attr, buf, sizeof(buf));
    if (rc < 0) {
        return pa_seterr(err, -rc, "reading %s/%s failed: %s; is this a u-dma-buf device?",
                         sysdir, attr, strerror(-rc));
    }
    if (pa_udmabuf_parse(buf, base, out) < 0) {
        return pa_seterr(err, EIO, "%s/%s holds '%s', not a number", sysdir, attr, buf);
    }
    return 0;
}

/* phys_addr, size, dma_coherent and driver_version of the device in sysdir */
static int pa_udmabuf_describe(pa_udmabuf_dev *d, pa_err *err)
{
    char buf[64];
    uint64_t v;
    int rc = pa_udmabuf_read_u64(d->sysdir, "phys_addr", 16, &d->phys, err);
    if (rc == 0) {
        rc = pa_udmabuf_read_u64(d->sysdir, "size", 10, &d->size, err);
    }
    if (rc < 0) {
        return rc;
    }
    if (d->size < PA_LINE) {
        return pa_seterr(err, ENOMEM, "u-dma-buf device %s has a %llu-byte buffer; give it a size "
                         "(udmabuf0=0x1000000 or size = <0x1000000> in the device tree)",
                         d->name, (unsigned long long)d->size);
    }
    if (d->phys > UINT64_MAX - d->size) {
        return pa_seterr(err, EIO, "u-dma-buf device %s: phys_addr 0x%llx + size %llu overflows",
                         d->name, (unsigned long long)d->phys, (unsigned long long)d->size);
    }
    d->dma_coherent = -1;
    if (pa_udmabuf_read_attr(d->sysdir, "dma_coherent", buf, sizeof(buf)) == 0 &&
        pa_udmabuf_parse(buf, 10, &v) == 0) {
        d->dma_coherent = v != 0;
    }
    d->version[0] = '\0';
    if (pa_udmabuf_read_attr(d->sysdir, "driver_version", buf, sizeof(buf)) == 0) {
        snprintf(d->version, sizeof(d->version), "%s", buf);
    }
    return 0;
}

/* the sysfs directory of device NAME, in the new class or the old one */
static bool pa_udmabuf_find_class(pa_udmabuf_dev *d, const char *name)
{
    char rel[PATH_MAX];
    struct stat st;
    for (size_t i = 0; pa_udmabuf_classes[i] != NULL; i++) {
        int n = snprintf(rel, sizeof(rel), "%s/%s", pa_udmabuf_classes[i], name);
        if (n < 0 || (size_t)n >= sizeof(rel) || pa_path(d->sysdir, sizeof(d->sysdir), rel) < 0) {
            continue;
        }
        if (stat(d->sysdir, &st) == 0 && S_ISDIR(st.st_mode)) {
            snprintf(d->name, sizeof(d->name), "%s", name);
            return true;
        }
    }
    return false;
}

/* the sysfs entry whose "dev" attribute is this character device's number */
static bool pa_udmabuf_find_rdev(pa_udmabuf_dev *d, dev_t rdev)
{
    char want[32], base[PATH_MAX], buf[32];
    snprintf(want, sizeof(want), "%u:%u", major(rdev), minor(rdev));
    for (size_t i = 0; pa_udmabuf_classes[i] != NULL; i++) {
        if (pa_path(base, sizeof(base), pa_udmabuf_classes[i]) < 0) {
            continue;
        }
        DIR *dir = opendir(base);
        if (dir == NULL) {
            continue;
        }
        struct dirent *de;
        bool found = false;
        while (!found && (de = readdir(dir)) != NULL) {
            int n = snprintf(d->sysdir, sizeof(d->sysdir), "%s/%s", base, de->d_name);
            if (de->d_name[0] == '.' || n < 0 || (size_t)n >= sizeof(d->sysdir)) {
                continue;
            }
            if (pa_udmabuf_read_attr(d->sysdir, "dev", buf, sizeof(buf)) == 0 &&
                strcmp(buf, want) == 0) {
                snprintf(d->name, sizeof(d->name), "%s", de->d_name);
                found = true;
            }
        }
        closedir(dir);
        if (found) {
            return true;
        }
    }
    return false;
}

/* Devices a spec names: all of them in order (arg NULL or ""), one by node
 * path ("/dev/udmabuf0") or one by name ("udmabuf0"). *out is malloc'ed. */
static int pa_udmabuf_candidates(const char *arg, pa_udmabuf_dev **out, size_t *n, pa_err *err)
{
    char rel[PATH_MAX];
    *out = NULL;
    *n = 0;
    if (arg == NULL || arg[0] == '\0') {
        pa_udmabuf_dev *list = NULL;
        size_t cnt = 0;
        for (size_t i = 0; pa_udmabuf_classes[i] != NULL; i++) {
            char base[PATH_MAX];
            struct dirent **names;
            if (pa_path(base, sizeof(base), pa_udmabuf_classes[i]) < 0) {
                continue;
            }
            int k = scandir(base, &names, NULL, versionsort); /* udmabuf2 before udmabuf10 */
            for (int j = 0; j < k; j++) {
                pa_udmabuf_dev *grown = NULL;
                if (names[j]->d_name[0] != '.') {
                    grown = realloc(list, (cnt + 1) * sizeof(*list));
                }
                if (grown != NULL) {
                    list = grown;
                    pa_udmabuf_dev *d = &list[cnt];
                    memset(d, 0, sizeof(*d));
                    snprintf(d->name, sizeof(d->name), "%s", names[j]->d_name);
                    int m = snprintf(d->sysdir, sizeof(d->sysdir), "%s/%s", base, d->name);
                    int p = snprintf(rel, sizeof(rel), "/dev/%s", d->name);
                    if (m > 0 && (size_t)m < sizeof(d->sysdir) && p > 0 &&
                        (size_t)p < sizeof(rel) && pa_path(d->node, sizeof(d->node), rel) == 0) {
                        cnt++;
                    }
                }
                free(names[j]);
            }
            if (k >= 0) {
                free(names);
            }
        }
        if (cnt == 0) {
            free(list);
            return pa_seterr(err, ENOENT,
                             "no u-dma-buf device (nothing in /sys/class/u-dma-buf or "
                             "/sys/class/udmabuf): %s",
                             PA_UDMABUF_HINT_LOAD);
        }
        *out = list;
        *n = cnt;
        return 0;
    }
    pa_udmabuf_dev *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory opening udmabuf:%s", arg);
    }
    int rc;
    if (arg[0] == '/') {
        const char *base = strrchr(arg, '/') + 1;
        struct stat st;
        if (base[0] == '\0' || base[0] == '.') {
            rc = pa_seterr(err, EINVAL, "udmabuf:%s does not name a device node", arg);
            goto fail;
        }
        if (pa_path(d->node, sizeof(d->node), arg) < 0) {
            rc = pa_seterr(err, ENAMETOOLONG, "udmabuf:%s: path too long", arg);
            goto fail;
        }
        if (!pa_udmabuf_find_class(d, base) &&
            !(stat(d->node, &st) == 0 && S_ISCHR(st.st_mode) &&
              pa_udmabuf_find_rdev(d, st.st_rdev))) {
            if (access(d->node, F_OK) != 0) {
                rc = pa_seterr(err, ENOENT, "no u-dma-buf device %s: %s", arg,
                               PA_UDMABUF_HINT_LOAD);
            } else {
                rc = pa_seterr(err, ENODEV,
                               "%s is not a u-dma-buf device (no /sys/class/u-dma-buf/%s)%s", arg,
                               base,
                               strcmp(base, "udmabuf") == 0
                                   ? "; /dev/udmabuf without a number is Linux's own "
                                     "memfd-to-dma-buf driver, not ikwzm's u-dma-buf"
                                   : "");
            }
            goto fail;
        }
    } else {
        if (strchr(arg, '/') != NULL || arg[0] == '.' || !pa_udmabuf_find_class(d, arg)) {
            rc = pa_seterr(err, ENOENT,
                           "no u-dma-buf device named '%s' (no /sys/class/u-dma-buf/%s); "
                           "use udmabuf, udmabuf:NAME or udmabuf:/dev/udmabufN; %s",
                           arg, arg, PA_UDMABUF_HINT_LOAD);
            goto fail;
        }
        int p = snprintf(rel, sizeof(rel), "/dev/%s", arg);
        if (p < 0 || (size_t)p >= sizeof(rel) || pa_path(d->node, sizeof(d->node), rel) < 0) {
            rc = pa_seterr(err, ENAMETOOLONG, "udmabuf:%s: name too long", arg);
            goto fail;
        }
    }
    *out = d;
    *n = 1;
    return 0;
fail:
    free(d);
    return rc;
}

/* ------------------------------------------------------------ lock holder */

/* pid holding a flock on (dev, ino) according to /proc/locks; 0 if unknown */
static long pa_udmabuf_lock_holder(dev_t dev, ino_t ino)
{
    FILE *f = fopen("/proc/locks", "re");
    char line[256];
    long pid = 0, ino_only = 0;
    if (f == NULL) {
        return 0;
    }
    while (pid == 0 && fgets(line, sizeof(line), f) != NULL) {
        char kind[16];
        long p;
        unsigned maj, mnr;
        unsigned long long i;
        /* "3: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (device numbers in
         * hex); a waiter's line reads "3: -> FLOCK ..." and is skipped */
        if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", kind, &p, &maj, &mnr, &i) != 5 ||
            strcmp(kind, "FLOCK") != 0 || i != (unsigned long long)ino) {
            continue;
        }
        if (maj == major(dev) && mnr == minor(dev)) {
            pid = p;
        } else if (ino_only == 0) {
            ino_only = p; /* stacked file systems may report another device */
        }
    }
    fclose(f);
    return pid != 0 ? pid : ino_only;
}

static int pa_udmabuf_busy(const pa_udmabuf_dev *d, int fd, pa_err *err)
{
    struct stat st;
    long pid = fstat(fd, &st) == 0 ? pa_udmabuf_lock_holder(st.st_dev, st.st_ino) : 0;
    if (pid == (long)getpid()) {
        return pa_seterr(err, EBUSY,
                         "u-dma-buf device %s is already in use by this process (pid %ld) through "
                         "another backend object; use that one or close it first",
                         d->node, pid);
    }
    if (pid > 0) {
        return pa_seterr(err, EBUSY,
                         "u-dma-buf device %s is in use by process %ld (it holds an exclusive "
                         "flock: two processes carving one region would overwrite each other's "
                         "buffers); stop that process or use another device (udmabuf:NAME)",
                         d->node, pid);
    }
    return pa_seterr(err, EBUSY,
                     "u-dma-buf device %s is in use by another process (it holds an exclusive "
                     "flock; its pid is not visible here); stop it or use another device",
                     d->node);
}

/* ------------------------------------------------------------------- sync */

static int pa_udmabuf_pwrite(pa_udmabuf *u, int which, const char *text, pa_err *err)
{
    size_t len = strlen(text);
    ssize_t n;
    do {
        n = pwrite(u->attr[which], text, len, 0);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)len) {
        int e = n < 0 ? errno : EIO;
        return pa_seterr(err, e, "writing '%.*s' to %s/%s failed: %s", (int)strcspn(text, "\n"),
                         text, u->dev.sysdir, pa_udmabuf_attr_names[which], strerror(e));
    }
    return 0;
}

/* sync_offset/sync_size/sync_direction, then 1 to sync_for_device/cpu */
static int pa_udmabuf_sync_stored(pa_udmabuf *u, uint64_t off, uint64_t len, bool for_device,
                                  int dir, pa_err *err)
{
    char offs[32], size[32], dirs[8];
    if (u->attr[PA_ATTR_OFFSET] < 0) {
        return pa_seterr(err, ERANGE,
                         "cannot sync at offset 0x%llx of %s: the driver's one-shot sync value "
                         "holds 32-bit offsets and sync_offset is not writable",
                         (unsigned long long)off, u->dev.node);
    }
    /* plain decimal: drivers before 1.4 parse these base 10, later ones base 0 */
    snprintf(offs, sizeof(offs), "%llu\n", (unsigned long long)off);
    snprintf(size, sizeof(size), "%llu\n", (unsigned long long)len);
    snprintf(dirs, sizeof(dirs), "%d\n", dir);
    pthread_mutex_lock(&u->range_lock);
    u->range_written = true;
    int rc = pa_udmabuf_pwrite(u, PA_ATTR_OFFSET, offs, err);
    if (rc == 0) {
        rc = pa_udmabuf_pwrite(u, PA_ATTR_SIZE, size, err);
    }
    if (rc == 0) {
        rc = pa_udmabuf_pwrite(u, PA_ATTR_DIRECTION, dirs, err);
    }
    if (rc == 0) {
        rc = pa_udmabuf_pwrite(u, for_device ? PA_ATTR_FOR_DEVICE : PA_ATTR_FOR_CPU, "1\n", err);
    }
    pthread_mutex_unlock(&u->range_lock);
    return rc;
}

/* region bytes [off, off+len), multiples of PA_LINE: the kernel does the
 * cache maintenance by physical address (so it works on 32-bit ARM too) */
static int pa_udmabuf_sync_region(pa_udmabuf *u, uint64_t off, uint64_t len, bool for_device,
                                  pa_err *err)
{
    int dir = for_device ? PA_UDMABUF_DIR_TO_DEVICE : PA_UDMABUF_DIR_FROM_DEVICE;
    if (u->how == PA_UDMABUF_USER) {
        char *p = u->cpu + off;
        int rc = for_device ? pa_cache_clean(p, (size_t)len)
                            : pa_cache_clean_invalidate(p, (size_t)len);
        if (rc < 0) {
            return pa_seterr(err, -rc, "cache maintenance (%s) on %s failed: %s",
                             pa_cache_method(), u->dev.node, strerror(-rc));
        }
        return 0;
    }
    while (len > 0) {
        uint64_t chunk = len < PA_UDMABUF_CHUNK ? len : PA_UDMABUF_CHUNK;
        uint64_t word = off << 32 | chunk | (uint64_t)dir << 2 | 1u;
        bool short_off = off <= UINT32_MAX;
        int rc = 0;
        if (u->how == PA_UDMABUF_IOCTL) {
            int r;
            if (short_off) {
                r = ioctl(u->fd, for_device ? PA_UDMABUF_SET_SYNC_FOR_DEVICE
                                            : PA_UDMABUF_SET_SYNC_FOR_CPU, &word);
            } else {
                pa_udmabuf_sync_args a = {
                    .flags = (for_device ? PA_UDMABUF_CMD_DEVICE : PA_UDMABUF_CMD_CPU) |
                             (uint64_t)dir << 2,
                    .size = chunk,
                    .offset = off,
                };
                /* the driver stores offset, size and direction as its sync range
                 * (shared device state, as the sysfs attributes): put back at close */
                pthread_mutex_lock(&u->range_lock);
                u->range_written = true;
                r = ioctl(u->fd, PA_UDMABUF_SET_SYNC, &a);
                pthread_mutex_unlock(&u->range_lock);
            }
            if (r < 0) {
                int e = errno;
                rc = pa_seterr(err, e, "u-dma-buf sync ioctl (%s, offset 0x%llx, %llu bytes) on %s "
                               "failed: %s",
                               for_device ? "for device" : "for cpu", (unsigned long long)off,
                               (unsigned long long)chunk, u->dev.node, strerror(e));
            }
        } else if (u->how == PA_UDMABUF_ONESHOT && short_off) {
            /* hex like the driver's documentation; it parses base 0 since 1.4 */
            char text[32];
            snprintf(text, sizeof(text), "0x%016llx\n", (unsigned long long)word);
            rc = pa_udmabuf_pwrite(u, for_device ? PA_ATTR_FOR_DEVICE : PA_ATTR_FOR_CPU, text,
                                   err);
        } else {
            rc = pa_udmabuf_sync_stored(u, off, chunk, for_device, dir, err);
        }
        if (rc < 0) {
            return rc;
        }
        off += chunk;
        len -= chunk;
    }
    return 0;
}

/* --------------------------------------------------------- page mappings */

static int pa_udmabuf_set_sync_mode(pa_udmabuf *u, int mode, pa_err *err)
{
    char path[PATH_MAX + 64], text[8];
    snprintf(text, sizeof(text), "%d\n", mode);
    int rc = pa_udmabuf_attr_path(path, sizeof(path), u->dev.sysdir, "sync_mode");
    int fd = rc < 0 ? -1 : open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = rc < 0 ? -rc : errno;
        return pa_seterr(err, e, "opening %s failed: %s; write-combine (cacheable=False) buffers "
                         "need it writable: %s",
                         path, strerror(e), PA_UDMABUF_HINT_PERM);
    }
    ssize_t n = write(fd, text, strlen(text));
    int e = n < 0 ? errno : EIO;
    close(fd);
    if (n != (ssize_t)strlen(text)) {
        return pa_seterr(err, e, "writing %d to %s failed: %s", mode, path, strerror(e));
    }
    u->sync_mode_written = true;
    return 0;
}

/* Makes pages [first, last] mapped `state`. A page is mapped either cached
 * (plain fd) or write-combine (O_SYNC fd), never both: ARM gives no coherence
 * guarantee between aliases with mismatched attributes, so a cached alias of
 * a write-combine block could later evict stale dirty lines over the data the
 * CPU wrote write-combined (or the device wrote). Going cached -> WC, the
 * driver first cleans and invalidates the pages' lines; going WC -> cached
 * needs nothing, since every block is zeroed through its new mapping and then
 * cleaned. Pages keep their mapping after free, so reusing them is cheap. */
static int pa_udmabuf_map_pages(pa_udmabuf *u, size_t first, size_t last, int state, pa_err *err)
{
    size_t i = first;
    while (i <= last) {
        if (u->pages[i] == state) {
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j <= last && u->pages[j] != state) {
            j++;
        }
        size_t off = i * u->page, len = (j - i) * u->page;
        int fd = u->fd;
        if (state == PA_PAGE_WC) {
            /* sync_mode is read by the driver at mmap time */
            int rc = pa_udmabuf_set_sync_mode(u, PA_UDMABUF_MODE_WC, err);
            if (rc < 0) {
                return rc;
            }
            if (u->wc_fd < 0) {
                u->wc_fd = open(u->dev.node, O_RDWR | O_SYNC | O_CLOEXEC);
                if (u->wc_fd < 0) {
                    int e = errno;
                    return pa_seterr(err, e, "open(%s, O_SYNC) for write-combine buffers failed: "
                                     "%s",
                                     u->dev.node, strerror(e));
                }
            }
            fd = u->wc_fd;
            /* write back and drop the lines the cached use left: the driver
             * works by physical address, so unmapped pages are covered too */
            size_t usable = (size_t)u->dev.size & ~((size_t)PA_LINE - 1);
            size_t end = off + len < usable ? off + len : usable;
            if (u->how != PA_UDMABUF_USER) {
                rc = pa_udmabuf_sync_region(u, off, end - off, true, err);
                if (rc == 0) {
                    rc = pa_udmabuf_sync_region(u, off, end - off, false, err);
                }
                if (rc < 0) {
                    return rc;
                }
            } else {
                for (size_t k = i; k < j; k++) {
                    if (u->pages[k] == PA_PAGE_CACHED) {
                        pa_cache_clean_invalidate(u->cpu + k * u->page, u->page);
                    }
                }
            }
        }
        void *p = mmap(u->cpu + off, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
                       (off_t)off);
        if (p == MAP_FAILED) {
            int e = errno;
            /* MAP_FIXED may have removed the old pages: map them again next time */
            memset(u->pages + i, PA_PAGE_NONE, j - i);
            return pa_seterr(err, e, "mmap of %zu %s bytes of %s failed: %s; check ulimit -v and "
                             "vm.max_map_count",
                             len, state == PA_PAGE_WC ? "write-combine" : "cached", u->dev.node,
                             strerror(e));
        }
        memset(u->pages + i, state, j - i);
        i = j;
    }
    return 0;
}

/* --------------------------------------------------------------- backend */

static int pa_udmabuf_open_attr(pa_udmabuf *u, int which, int flags, pa_err *err)
{
    char path[PATH_MAX + 64];
    int rc = pa_udmabuf_attr_path(path, sizeof(path), u->dev.sysdir, pa_udmabuf_attr_names[which]);
    if (rc == 0) {
        u->attr[which] = open(path, flags | O_CLOEXEC);
        rc = u->attr[which] < 0 ? -errno : 0;
    }
    if (rc < 0 && err != NULL) {
        return pa_seterr(err, -rc, "open(%s) failed: %s; %s", path, strerror(-rc),
                         rc == -EACCES || rc == -EPERM ? PA_UDMABUF_HINT_PERM
                                                       : "is this a u-dma-buf device?");
    }
    return rc;
}

/* the stored range as found, to be put back at close */
static void pa_udmabuf_save_range(pa_udmabuf *u)
{
    static const char *const names[3] = {"sync_offset", "sync_size", "sync_direction"};
    char buf[64];
    for (int i = 0; i < 3; i++) {
        if (pa_udmabuf_read_attr(u->dev.sysdir, names[i], buf, sizeof(buf)) < 0 ||
            pa_udmabuf_parse(buf, 0, &u->saved_range[i]) < 0) { /* sync_offset reads "0x..." */
            return;
        }
    }
    u->range_saved = true;
}

/* which sync interface this driver has; opens the attributes it needs */
static int pa_udmabuf_pick_sync(pa_udmabuf *u, pa_err *err)
{
    pa_udmabuf_drv_info info;
    memset(&info, 0, sizeof(info));
    if (ioctl(u->fd, PA_UDMABUF_GET_DRV_INFO, &info) == 0 && (info.flags & 0xff) >= 1) {
        u->how = PA_UDMABUF_IOCTL;
        /* offsets past 4 GiB go through SET_SYNC, which overwrites the stored range */
        pa_udmabuf_sync_args a;
        memset(&a, 0, sizeof(a));
        if (u->dev.size > (uint64_t)UINT32_MAX + 1 && ioctl(u->fd, PA_UDMABUF_GET_SYNC, &a) == 0) {
            u->saved_range[0] = a.offset;
            u->saved_range[1] = a.size;
            u->saved_range[2] = (a.flags >> 2) & 3;
            u->range_saved = true;
        }
        return 0;
    }
    unsigned major = 0, minor = 0;
    bool oneshot = sscanf(u->dev.version, "%u.%u", &major, &minor) == 2 &&
                   (major > 1 || (major == 1 && minor >= 4));
    int rc = pa_udmabuf_open_attr(u, PA_ATTR_FOR_DEVICE, O_WRONLY, err);
    if (rc == 0) {
        rc = pa_udmabuf_open_attr(u, PA_ATTR_FOR_CPU, O_WRONLY, err);
    }
    if (rc == -ENOENT) {
        /* a driver older than its sync attributes */
        if (pa_cache_user_maintenance()) {
            u->how = PA_UDMABUF_USER;
            return 0;
        }
        return pa_seterr(err, ENOTSUP,
                         "this u-dma-buf driver (%s) has no sync_for_device attribute and this "
                         "CPU cannot clean its caches from user space; update u-dma-buf "
                         "(>= 1.4), or set it to sync-always write-combine (write 6 to "
                         "%s/sync_mode)",
                         u->dev.version[0] ? u->dev.version : "version unknown", u->dev.sysdir);
    }
    if (rc < 0) {
        return rc;
    }
    u->how = oneshot ? PA_UDMABUF_ONESHOT : PA_UDMABUF_RANGE;
    if (oneshot && u->dev.size <= (uint64_t)UINT32_MAX + 1) {
        return 0; /* every offset fits the one-shot value */
    }
    for (int i = PA_ATTR_OFFSET; i <= PA_ATTR_DIRECTION; i++) {
        rc = pa_udmabuf_open_attr(u, i, O_WRONLY, oneshot ? NULL : err);
        if (rc < 0 && !oneshot) {
            return rc;
        }
    }
    pa_udmabuf_save_range(u);
    return 0;
}

static void pa_udmabuf_release(pa_udmabuf *u)
{
    if (u->cpu != NULL) {
        pa_retire(u->cpu, u->map_len); /* arrays may still point here: see pa_retire */
    }
    if (u->wc_fd >= 0) {
        close(u->wc_fd);
    }
    /* put back what we changed while we still hold the device */
    if (u->sync_mode_written && u->sync_mode >= 0) {
        pa_udmabuf_set_sync_mode(u, u->sync_mode, NULL);
    }
    if (u->range_written && u->range_saved && u->how == PA_UDMABUF_IOCTL) {
        /* command 0: store the range, sync nothing. A size of 0 is "keep" to
         * SET_SYNC, so it goes back through the attribute when there is one */
        pa_udmabuf_sync_args a = {
            .flags = (u->saved_range[2] & 3) << 2,
            .size = u->saved_range[1],
            .offset = u->saved_range[0],
        };
        (void)ioctl(u->fd, PA_UDMABUF_SET_SYNC, &a);
        if (u->saved_range[1] == 0 &&
            (u->attr[PA_ATTR_SIZE] >= 0 || pa_udmabuf_open_attr(u, PA_ATTR_SIZE, O_WRONLY, NULL) == 0)) {
            pa_udmabuf_pwrite(u, PA_ATTR_SIZE, "0\n", NULL);
        }
    } else if (u->range_written && u->range_saved) {
        char text[32];
        static const int which[3] = {PA_ATTR_OFFSET, PA_ATTR_SIZE, PA_ATTR_DIRECTION};
        for (int i = 0; i < 3; i++) {
            snprintf(text, sizeof(text), "%llu\n", (unsigned long long)u->saved_range[i]);
            pa_udmabuf_pwrite(u, which[i], text, NULL);
        }
    }
    for (int i = 0; i < PA_NATTR; i++) {
        if (u->attr[i] >= 0) {
            close(u->attr[i]);
        }
    }
    if (u->fd >= 0) {
        close(u->fd); /* releases the flock */
    }
    if (u->tlsf != NULL) {
        pa_tlsf_destroy(u->tlsf);
    }
    free(u->pages);
    pthread_mutex_destroy(&u->range_lock);
    free(u);
}

/* Opens one device: flock, sync interface, mapping, allocator. */
static int pa_udmabuf_open_dev(pa_backend *be, const pa_udmabuf_dev *d, pa_err *err)
{
    pa_udmabuf *u = calloc(1, sizeof(*u));
    char buf[32];
    uint64_t mode;
    int rc;
    if (u == NULL) {
        return pa_seterr(err, ENOMEM, "out of memory opening %s", d->node);
    }
    u->dev = *d;
    u->fd = u->wc_fd = -1;
    for (int i = 0; i < PA_NATTR; i++) {
        u->attr[i] = -1;
    }
    pthread_mutex_init(&u->range_lock, NULL);
    u->page = (size_t)sysconf(_SC_PAGESIZE);

    rc = pa_udmabuf_describe(&u->dev, err);
    if (rc < 0) {
        goto fail;
    }
    if (u->dev.size > SIZE_MAX - u->page) {
        rc = pa_seterr(err, ENOMEM, "the %llu-byte buffer of %s does not fit this process's "
                       "address space",
                       (unsigned long long)u->dev.size, d->node);
        goto fail;
    }
    u->fd = open(d->node, O_RDWR | O_CLOEXEC); /* no O_SYNC: a cached mapping */
    if (u->fd < 0) {
        int e = errno;
        rc = pa_seterr(err, e, "open(%s) failed: %s; %s", d->node, strerror(e),
                       e == EACCES || e == EPERM ? PA_UDMABUF_HINT_PERM
                       : e == ENOENT ? "the sysfs entry exists but not the device node: is udev "
                                       "(or mdev) running?"
                                     : "check the u-dma-buf driver (dmesg)");
        goto fail;
    }
    if (flock(u->fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        rc = e == EWOULDBLOCK ? pa_udmabuf_busy(&u->dev, u->fd, err)
                              : pa_seterr(err, e, "flock(%s) failed: %s", d->node, strerror(e));
        goto fail;
    }

    u->sync_mode = -1;
    if (pa_udmabuf_read_attr(u->dev.sysdir, "sync_mode", buf, sizeof(buf)) == 0 &&
        pa_udmabuf_parse(buf, 0, &mode) == 0 && mode <= 7) {
        u->sync_mode = (int)mode;
    }
    bool always = u->sync_mode >= 0 && (u->sync_mode & PA_UDMABUF_MODE_ALWAYS) &&
                  (u->sync_mode & PA_UDMABUF_MODE_MASK) != 0;
    if (always && (u->sync_mode & PA_UDMABUF_MODE_MASK) == PA_UDMABUF_MODE_NONCACHED) {
        rc = pa_seterr(err, EINVAL,
                       "%s is set to sync-always with sync-mode 1 (sync_mode=%d): every mapping "
                       "is Device memory, where memset and unaligned access fault; write 6 "
                       "(write-combine always) or 2 to %s/sync_mode, or use sync-mode = <2> in "
                       "the device tree",
                       d->node, u->sync_mode, u->dev.sysdir);
        goto fail;
    }
    /* sync-always write-combine: every mapping is already uncached */
    be->cached_coherent = u->dev.dma_coherent == 1 || always;
    /* cacheable=None: write-combine where the driver can map it (sync_mode) */
    be->coherent = be->cached_coherent || u->sync_mode >= 0;
    if (!be->cached_coherent) {
        rc = pa_udmabuf_pick_sync(u, err);
        if (rc < 0) {
            goto fail;
        }
    }

    u->map_len = ((size_t)u->dev.size + u->page - 1) & ~(u->page - 1);
    void *p = mmap(NULL, u->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, u->fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        rc = pa_seterr(err, e, "mmap of the %llu-byte buffer of %s failed: %s",
                       (unsigned long long)u->dev.size, d->node, strerror(e));
        goto fail;
    }
    u->cpu = p;
    u->pages = malloc(u->map_len / u->page);
    u->tlsf = pa_tlsf_create((size_t)u->dev.size, PA_LINE);
    if (u->pages == NULL || u->tlsf == NULL) {
        rc = pa_seterr(err, ENOMEM, "out of memory for the allocator of %s", d->node);
        goto fail;
    }
    memset(u->pages, PA_PAGE_CACHED, u->map_len / u->page);
    be->priv = u;
    be->low_hint = "u-dma-buf's memory is one buffer the driver reserved at load time: give it "
                   "a reserved-memory node below the limit (memory-region = <&...>)";
    return 0;

fail:
    pa_udmabuf_release(u);
    return rc;
}

static int pa_udmabuf_open(pa_backend *be, const char *arg, const pa_option *opts, size_t nopts,
                           pa_err *err)
{
    static const char *const known[] = {NULL};
    pa_udmabuf_dev *list = NULL;
    size_t n = 0;
    int rc = pa_opt_check(opts, nopts, known, "udmabuf", err);
    if (rc == 0) {
        rc = pa_udmabuf_candidates(arg, &list, &n, err);
    }
    if (rc < 0) {
        return rc;
    }
    /* the first device that opens; else the first one's reason */
    pa_err later;
    for (size_t i = 0; i < n; i++) {
        rc = pa_udmabuf_open_dev(be, &list[i], i == 0 ? err : &later);
        if (rc == 0) {
            break;
        }
    }
    free(list);
    return rc;
}

static int pa_udmabuf_alloc(pa_backend *be, size_t size, size_t align, unsigned flags,
                            pa_block *blk, pa_err *err)
{
    pa_udmabuf *u = be->priv;
    pa_tlsf_block *tb;
    size_t off, got;
    bool wc = (flags & PA_CACHED) == 0 && !be->cached_coherent;
    int rc;
    if (wc && u->sync_mode < 0 && (flags & PA_UNCACHED) == 0) {
        wc = false; /* cacheable=None: cached where write-combine is not possible */
    }
    if (wc) {
        if (u->sync_mode < 0) {
            return pa_seterr(err, ENOTSUP,
                             "this u-dma-buf driver (%s) has no sync_mode attribute, so it cannot "
                             "map write-combine (cacheable=False); update u-dma-buf, or allocate "
                             "cacheable and call flush()/invalidate()",
                             u->dev.version[0] ? u->dev.version : "version unknown");
        }
        /* write-combine blocks own whole pages: one page, one mapping */
        if (size > SIZE_MAX - u->page) {
            return pa_seterr(err, ENOMEM, "cannot allocate %zu bytes: size overflows", size);
        }
        size = (size + u->page - 1) & ~(u->page - 1);
        if (align < u->page) {
            align = u->page;
        }
    }
    size_t lim = pa_region_limit(be, u->dev.phys, (size_t)u->dev.size);
    /* the block's span: its alignment padding is its own (pa_padded_size) */
    size_t want = pa_padded_size(size, align);
    rc = lim == 0 || want == 0 ? -ENOMEM
                               : pa_tlsf_alloc_below(u->tlsf, want, align, lim, &off, &got, &tb);
    if (rc < 0 && lim < (size_t)u->dev.size) {
        return pa_seterr(err, ENOMEM,
                         "u-dma-buf %s (device addresses 0x%llx-0x%llx) has no %zu free bytes "
                         "below 0x%llx (address_bits); free buffers there, or give u-dma-buf a "
                         "buffer in low memory (a reserved-memory node below the limit, "
                         "memory-region = <&...> in the udmabuf node)",
                         u->dev.node, (unsigned long long)u->dev.phys,
                         (unsigned long long)(u->dev.phys + u->dev.size - 1), size,
                         (unsigned long long)be->alloc_max + 1);
    }
    if (rc < 0) {
        /* pa.c appends info()'s figures (used, requested, free, largest free) */
        return pa_seterr(err, -rc,
                         "u-dma-buf %s cannot allocate %zu bytes aligned to %zu: no free block "
                         "holds them with their alignment padding; free buffers or give the "
                         "device a larger buffer (udmabuf0=SIZE when loading the module, or "
                         "size = <...> in the device tree)",
                         u->dev.node, size, align);
    }
    got = size; /* the padding after it is never handed out */
    if (!be->cached_coherent) {
        rc = pa_udmabuf_map_pages(u, off / u->page, (off + got - 1) / u->page,
                                  wc ? PA_PAGE_WC : PA_PAGE_CACHED, err);
        if (rc < 0) {
            goto free_block;
        }
    }
    memset(u->cpu + off, 0, got);
    if (!be->cached_coherent && !wc) {
        rc = pa_udmabuf_sync_region(u, off, got, true, err); /* a fresh block is clean */
        if (rc < 0) {
            goto free_block;
        }
    }
    blk->cpu = u->cpu + off;
    blk->device_address = u->dev.phys + off;
    blk->size = got;
    blk->span = pa_tlsf_size(tb);
    blk->coherent = be->cached_coherent || wc;
    blk->handle = tb;
    blk->aux = off;
    return 0;

free_block:
    pa_tlsf_free(u->tlsf, tb);
    return rc;
}

static void pa_udmabuf_free(pa_backend *be, pa_block *blk)
{
    pa_udmabuf *u = be->priv;
    pa_tlsf_free(u->tlsf, blk->handle);
}

static int pa_udmabuf_sync(pa_backend *be, const pa_block *blk, size_t off, size_t len,
                           pa_sync_dir dir, pa_err *err)
{
    pa_udmabuf *u = be->priv;
    if (blk->coherent || len == 0) {
        return 0;
    }
    if (dir != PA_TO_DEVICE && dir != PA_FROM_DEVICE) {
        return pa_seterr(err, EINVAL, "unknown sync direction %d", (int)dir);
    }
    /* whole lines: blocks are line-aligned and a whole number of lines long,
     * so the rounded range stays inside the block (pa_sync checked the rest) */
    size_t lo = off & ~((size_t)PA_LINE - 1);
    size_t hi = (off + len + PA_LINE - 1) & ~((size_t)PA_LINE - 1);
    return pa_udmabuf_sync_region(u, blk->aux + lo, hi - lo, dir == PA_TO_DEVICE, err);
}

static void pa_udmabuf_info(pa_backend *be, pa_info *info)
{
    pa_udmabuf *u = be->priv;
    pa_tlsf_stats st;
    pa_tlsf_get_stats(u->tlsf, &st);
    info->total = st.total;
    info->free = st.free;
    info->largest_free = st.largest_free;
    info->coherent = be->coherent;
    info->line_size = pa_cache_line_size();
    info->lowest = u->dev.phys;
    info->highest = u->dev.phys + st.total - 1;
}

static void pa_udmabuf_close(pa_backend *be)
{
    if (be->priv != NULL) {
        pa_udmabuf_release(be->priv);
        be->priv = NULL;
    }
}

/* Cheap: sysfs reads, access() and /proc/locks; opens and locks nothing. */
static int pa_udmabuf_probe_dev(pa_udmabuf_dev *d, pa_err *why)
{
    struct stat st;
    int rc = pa_udmabuf_describe(d, why);
    if (rc < 0) {
        return rc;
    }
    if (access(d->node, F_OK) != 0) {
        return pa_seterr(why, ENOENT,
                         "%s is in sysfs but %s is missing: is udev (or mdev) running?", d->name,
                         d->node);
    }
    if (access(d->node, R_OK | W_OK) != 0) {
        int e = errno;
        return pa_seterr(why, e, "%s: %s; %s", d->node, strerror(e), PA_UDMABUF_HINT_PERM);
    }
    if (stat(d->node, &st) == 0) {
        long pid = pa_udmabuf_lock_holder(st.st_dev, st.st_ino);
        if (pid > 0) {
            return pa_seterr(why, EBUSY, "%s is in use by process %ld (exclusive flock)", d->node,
                             pid);
        }
    }
    pa_seterr(why, 0, "usable: %s, %llu bytes at 0x%llx, u-dma-buf %s, %s", d->node,
              (unsigned long long)d->size, (unsigned long long)d->phys,
              d->version[0] ? d->version : "(version unknown)",
              d->dma_coherent == 1 ? "coherent" : "not coherent (synced by the driver)");
    return 0;
}

static int pa_udmabuf_probe(const char *arg, pa_err *why)
{
    pa_udmabuf_dev *list = NULL;
    size_t n = 0;
    int rc = pa_udmabuf_candidates(arg, &list, &n, why);
    if (rc < 0) {
        return rc;
    }
    pa_err later;
    for (size_t i = 0; i < n; i++) {
        rc = pa_udmabuf_probe_dev(&list[i], i == 0 ? why : &later);
        if (rc == 0) {
            if (i > 0) {
                memcpy(why, &later, sizeof(later));
            }
            break;
        }
    }
    free(list);
    return rc;
}

const pa_ops pa_udmabuf_ops = {
    .name = "udmabuf",
    .board = true,
    .open = pa_udmabuf_open,
    .alloc = pa_udmabuf_alloc,
    .free = pa_udmabuf_free,
    .sync = pa_udmabuf_sync,
    .info = pa_udmabuf_info,
    .close = pa_udmabuf_close,
    .probe = pa_udmabuf_probe,
};
