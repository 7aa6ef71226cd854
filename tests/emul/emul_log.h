/* The emulations' call logs: one line appended per call to a file the test
 * reads back. The file is opened per line, so no descriptor outlives the
 * call; shims that intercept open()/close() pass the real ones. */
#ifndef EMUL_LOG_H
#define EMUL_LOG_H

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

typedef int (*emul_open_fn)(const char *, int, ...);
typedef int (*emul_close_fn)(int);

static void emul_vlog(const char *path, emul_open_fn openf, emul_close_fn closef, const char *fmt,
                      va_list ap)
{
    char line[1024];
    if (path == NULL || path[0] == '\0') {
        return;
    }
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n > sizeof(line) - 2) {
        n = (int)sizeof(line) - 2;
    }
    line[n++] = '\n';
    int fd = openf(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, line, (size_t)n);
        (void)w;
        closef(fd);
    }
}

#endif
