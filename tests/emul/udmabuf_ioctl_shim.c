/* LD_PRELOAD emulation of the u-dma-buf driver's ioctl interface (driver >=
 * 4.7, u-dma-buf-ioctl.h) on a regular file standing in for /dev/udmabufN.
 * Only ioctls on that file are answered; every other ioctl goes to libc.
 *
 *   UDMABUF_EMUL_DEV   the stand-in file (matched by device and inode number)
 *   UDMABUF_EMUL_SIZE  region size in bytes     UDMABUF_EMUL_PHYS  its phys_addr
 *   UDMABUF_EMUL_LOG   one line per sync call:  "<device|cpu> OFFSET SIZE DIR <how>"
 *                      how: "word" (SET_SYNC_FOR_*), "args" (SET_SYNC)
 *   UDMABUF_EMUL_FAIL  errno value every sync call fails with (optional)
 *   UDMABUF_EMUL_SYSDIR the fake's sysfs directory: GET_SYNC reads and SET_SYNC
 *                      stores the driver's sync range there (sync_offset,
 *                      sync_size, sync_direction), as the driver keeps one
 *                      range for both interfaces (optional). Writes to the attribute
 *                      files there are the driver's stores (u-dma-buf.c DEF_ATTR_SET):
 *                      kstrtoull (base 10 before driver 1.4, base 0 since), range
 *                      checks (sync_mode 0..7, sync_direction 0..2), EINVAL without
 *                      storing on a bad value, the value re-shown in the driver's
 *                      format; a write to sync_for_cpu/sync_for_device syncs at once
 *                      (the one-shot value, or the stored range when only bit 0 is
 *                      set), fails with EINVAL when offset + size passes the end
 *                      (the value then stays), else resets itself to 0 and sets
 *                      sync_owner. Logged as "how" = "sysfs-word" / "sysfs-stored".
 *   UDMABUF_EMUL_NO_IOCTL a driver without the ioctl interface (< 4.7): every ioctl
 *                      on the device fails with ENOTTY
 *
 * The checks are the driver's: a one-shot word carries offset << 32 | size
 * (bits 4..31) | direction << 2 | 1; offset + size must lie inside the buffer. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    uint64_t flags;
    char version[16];
} emul_drv_info;

typedef struct {
    uint64_t flags, size, offset;
} emul_sync_args;

#define EMUL_GET_DRV_INFO _IOR('U', 1, emul_drv_info)
#define EMUL_GET_SIZE _IOR('U', 2, uint64_t)
#define EMUL_GET_DMA_ADDR _IOR('U', 3, uint64_t)
#define EMUL_SET_SYNC_FOR_CPU _IOW('U', 5, uint64_t)
#define EMUL_SET_SYNC_FOR_DEVICE _IOW('U', 6, uint64_t)
#define EMUL_GET_SYNC _IOR('U', 8, emul_sync_args)
#define EMUL_SET_SYNC _IOW('U', 9, emul_sync_args)

/* one of the driver's stored-range attributes in UDMABUF_EMUL_SYSDIR */
static int attr_rw(const char *name, uint64_t *value, int write_it)
{
    const char *dir = getenv("UDMABUF_EMUL_SYSDIR");
    char path[4096], text[64];
    if (dir == NULL) {
        return -1;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, write_it ? "we" : "re");
    if (f == NULL) {
        return -1;
    }
    int ok;
    if (write_it) {
        /* as the driver shows them: sync_offset "0x%llx", the others "%llu" */
        ok = fprintf(f, strcmp(name, "sync_offset") == 0 ? "0x%llx\n" : "%llu\n",
                     (unsigned long long)*value) > 0;
    } else {
        ok = fgets(text, sizeof(text), f) != NULL;
        if (ok) {
            *value = strtoull(text, NULL, 0);
        }
    }
    fclose(f);
    return ok ? 0 : -1;
}

static uint64_t env_u64(const char *name)
{
    const char *v = getenv(name);
    return v != NULL ? strtoull(v, NULL, 0) : 0;
}

static int is_device(int fd)
{
    const char *path = getenv("UDMABUF_EMUL_DEV");
    struct stat a, b;
    return path != NULL && fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

static void log_sync(const char *who, uint64_t off, uint64_t size, int dir, const char *how)
{
    const char *path = getenv("UDMABUF_EMUL_LOG");
    if (path == NULL) {
        return;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        return;
    }
    char line[128];
    int n = snprintf(line, sizeof(line), "%s %llu %llu %d %s\n", who, (unsigned long long)off,
                     (unsigned long long)size, dir, how);
    if (write(fd, line, (size_t)n) < 0) {
        /* nothing to do: the test will miss the line and say so */
    }
    close(fd);
}

/* the driver's udmabuf_sync_command_argments() checks */
static int do_sync(const char *who, uint64_t off, uint64_t size, int dir, const char *how)
{
    uint64_t region = env_u64("UDMABUF_EMUL_SIZE");
    int fail = (int)env_u64("UDMABUF_EMUL_FAIL");
    if (fail != 0) {
        errno = fail;
        return -1;
    }
    if (off > region || size > region - off) {
        errno = EINVAL;
        return -1;
    }
    log_sync(who, off, size, dir, how);
    return 0;
}

static int emulate(unsigned long req, void *arg)
{
    if (env_u64("UDMABUF_EMUL_NO_IOCTL") != 0) {
        errno = ENOTTY;
        return -1;
    }
    switch (req) {
    case EMUL_GET_DRV_INFO: {
        emul_drv_info info;
        memset(&info, 0, sizeof(info));
        info.flags = 2; /* ioctl version 2 */
        strcpy(info.version, "5.5.0");
        memcpy(arg, &info, sizeof(info));
        return 0;
    }
    case EMUL_GET_SIZE: {
        uint64_t v = env_u64("UDMABUF_EMUL_SIZE");
        memcpy(arg, &v, sizeof(v));
        return 0;
    }
    case EMUL_GET_DMA_ADDR: {
        uint64_t v = env_u64("UDMABUF_EMUL_PHYS");
        memcpy(arg, &v, sizeof(v));
        return 0;
    }
    case EMUL_SET_SYNC_FOR_CPU:
    case EMUL_SET_SYNC_FOR_DEVICE: {
        uint64_t w;
        memcpy(&w, arg, sizeof(w));
        const char *who = req == EMUL_SET_SYNC_FOR_DEVICE ? "device" : "cpu";
        if (w == 0) {
            return 0; /* nothing to do, as in the driver */
        }
        if ((w & ~(uint64_t)1) == 0) {
            return do_sync(who, 0, 0, -1, "stored"); /* the stored range: not emulated */
        }
        return do_sync(who, w >> 32, w & 0xFFFFFFF0u, (int)((w >> 2) & 3), "word");
    }
    case EMUL_GET_SYNC: {
        emul_sync_args a;
        uint64_t dir = 0;
        memset(&a, 0, sizeof(a));
        if (attr_rw("sync_offset", &a.offset, 0) < 0 || attr_rw("sync_size", &a.size, 0) < 0 ||
            attr_rw("sync_direction", &dir, 0) < 0) {
            errno = EIO;
            return -1;
        }
        a.flags = (dir & 3) << 2;
        memcpy(arg, &a, sizeof(a));
        return 0;
    }
    case EMUL_SET_SYNC: {
        emul_sync_args a;
        memcpy(&a, arg, sizeof(a));
        unsigned cmd = (unsigned)(a.flags & 3);
        int dir = (int)((a.flags >> 2) & 3);
        /* the driver stores the range first: direction 0..2, the offset always,
         * the size unless 0 */
        uint64_t d = (uint64_t)dir;
        if (dir <= 2) {
            attr_rw("sync_direction", &d, 1);
        }
        attr_rw("sync_offset", &a.offset, 1);
        if (a.size > 0) {
            attr_rw("sync_size", &a.size, 1);
        }
        if (cmd == 3) {
            return do_sync("device", a.offset, a.size, dir, "args");
        }
        if (cmd == 1) {
            return do_sync("cpu", a.offset, a.size, dir, "args");
        }
        return 0;
    }
    default:
        errno = ENOTTY;
        return -1;
    }
}

int ioctl(int fd, unsigned long req, ...)
{
    static int (*real)(int, unsigned long, ...);
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (((req >> 8) & 0xff) == 'U' && is_device(fd)) {
        return emulate(req, arg);
    }
    if (real == NULL) {
        real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    }
    return real(fd, req, arg);
}

/* ------------------------------------------------------------ sysfs stores */

static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_write)(int, const void *, size_t);

/* the attribute name when fd is a file in UDMABUF_EMUL_SYSDIR, else NULL */
static const char *sysfs_attr(int fd, char *name, size_t cap)
{
    const char *dir = getenv("UDMABUF_EMUL_SYSDIR");
    char link[64], path[4096], real_dir[4096];
    if (dir == NULL || realpath(dir, real_dir) == NULL) {
        return NULL;
    }
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0) {
        return NULL;
    }
    path[n] = '\0';
    size_t len = strlen(real_dir);
    if (strncmp(path, real_dir, len) != 0 || path[len] != '/' || strchr(path + len + 1, '/')) {
        return NULL;
    }
    snprintf(name, cap, "%s", path + len + 1);
    return name;
}

/* kstrtoull: digits in base (0: 0x hex, 0 octal, else decimal), one trailing \n */
static int kstrtoull(const char *text, size_t len, int base, uint64_t *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof(buf)) {
        return -1;
    }
    memcpy(buf, text, len);
    buf[len] = '\0';
    if (buf[len - 1] == '\n') {
        buf[--len] = '\0';
    }
    if (len == 0 || buf[0] == '-' || buf[0] == '+' || buf[0] == ' ') {
        return -1;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, base);
    if (errno != 0 || *end != '\0') {
        return -1;
    }
    *out = v;
    return 0;
}

/* the driver version's major.minor from the fake's driver_version, 0 if none */
static unsigned driver_version(void)
{
    char text[64] = "";
    const char *dir = getenv("UDMABUF_EMUL_SYSDIR");
    char path[4096];
    unsigned major = 0, minor = 0;
    snprintf(path, sizeof(path), "%s/driver_version", dir != NULL ? dir : "");
    FILE *f = fopen(path, "re");
    if (f != NULL) {
        if (fgets(text, sizeof(text), f) != NULL && sscanf(text, "%u.%u", &major, &minor) == 2) {
            fclose(f);
            return major * 1000 + minor;
        }
        fclose(f);
    }
    return 0;
}

/* the attribute shows value in the driver's format (the file as sysfs would read) */
static void show(int fd, const char *name, uint64_t value)
{
    char text[40];
    int n = snprintf(text, sizeof(text), strcmp(name, "sync_offset") == 0 ? "0x%llx\n" : "%llu\n",
                     (unsigned long long)value);
    if (ftruncate(fd, 0) == 0) {
        (void)real_pwrite(fd, text, (size_t)n, 0);
    }
}

/* udmabuf_sync_for_cpu/_for_device through udmabuf_sync_command_argments */
static int sysfs_sync(const char *name, uint64_t command)
{
    int for_device = strcmp(name, "sync_for_device") == 0;
    uint64_t off, size, dir;
    const char *how;
    if ((command & ~(uint64_t)1) != 0) {
        off = command >> 32;
        size = command & 0xFFFFFFF0u;
        dir = (command >> 2) & 3;
        how = "sysfs-word";
    } else {
        if (attr_rw("sync_offset", &off, 0) < 0 || attr_rw("sync_size", &size, 0) < 0 ||
            attr_rw("sync_direction", &dir, 0) < 0) {
            return -EIO;
        }
        how = "sysfs-stored";
    }
    uint64_t region = env_u64("UDMABUF_EMUL_SIZE");
    if (off > region || size > region - off) {
        return -EINVAL;
    }
    log_sync(for_device ? "device" : "cpu", off, size, (int)dir, how);
    uint64_t owner = for_device ? 1 : 0;
    attr_rw("sync_owner", &owner, 1);
    return 0;
}

static ssize_t sysfs_store(int fd, const char *name, const void *buf, size_t count)
{
    static const struct {
        const char *name;
        uint64_t max;
    } attrs[] = {{"sync_mode", 7},           {"sync_offset", UINT64_MAX},
                 {"sync_size", UINT64_MAX},  {"sync_direction", 2},
                 {"sync_for_cpu", UINT64_MAX}, {"sync_for_device", UINT64_MAX}};
    size_t i = 0;
    while (i < sizeof(attrs) / sizeof(attrs[0]) && strcmp(attrs[i].name, name) != 0) {
        i++;
    }
    if (i == sizeof(attrs) / sizeof(attrs[0])) {
        errno = EACCES; /* read-only attributes (0444) */
        return -1;
    }
    uint64_t value;
    unsigned version = driver_version();
    int base = version != 0 && version < 1004 ? 10 : 0;
    if (kstrtoull(buf, count, base, &value) < 0 || value > attrs[i].max) {
        errno = EINVAL;
        return -1;
    }
    show(fd, name, value);
    if (value != 0 && (strcmp(name, "sync_for_cpu") == 0 || strcmp(name, "sync_for_device") == 0)) {
        int rc = sysfs_sync(name, value);
        if (rc < 0) {
            errno = -rc; /* the value stays, as in the driver */
            return -1;
        }
        show(fd, name, 0);
    }
    return (ssize_t)count;
}

static void resolve_writes(void)
{
    if (real_pwrite == NULL) {
        real_pwrite = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
        real_pwrite64 =
            (ssize_t(*)(int, const void *, size_t, off64_t))dlsym(RTLD_NEXT, "pwrite64");
        real_write = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    }
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
    char name[256];
    resolve_writes();
    if (sysfs_attr(fd, name, sizeof(name)) != NULL) {
        return sysfs_store(fd, name, buf, count); /* sysfs ignores the offset of a store */
    }
    return real_pwrite(fd, buf, count, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t off)
{
    char name[256];
    resolve_writes();
    if (sysfs_attr(fd, name, sizeof(name)) != NULL) {
        return sysfs_store(fd, name, buf, count);
    }
    return real_pwrite64(fd, buf, count, off);
}

ssize_t write(int fd, const void *buf, size_t count)
{
    char name[256];
    resolve_writes();
    if (sysfs_attr(fd, name, sizeof(name)) != NULL) {
        return sysfs_store(fd, name, buf, count);
    }
    return real_write(fd, buf, count);
}
