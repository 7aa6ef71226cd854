/* The target's python3.11 under qemu-user, as a host program: the ARM lanes
 * (.ci/arm_lanes.sh) put it next to the sysroot's python3.11 and start the
 * tests with it, so sys.executable names it and the tests' subprocesses
 * (sys.executable -c ...) run emulated too, with no binfmt_misc needed.
 * It is static, as qemu-*-static is: a host dynamic loader never sees the
 * target LD_PRELOAD shims the emulated-backend tests pass to their children;
 * the guest's loader does. QEMU, SYSROOT, PYTHON and CPU are compiled in. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    static char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        perror("arm_python: /proc/self/exe");
        return 127;
    }
    self[n] = '\0';
    char **av = calloc((size_t)argc + 10, sizeof *av);
    if (av == NULL) {
        return 127;
    }
    int i = 0;
    av[i++] = QEMU;
    av[i++] = "-L";
    av[i++] = SYSROOT;
    av[i++] = "-cpu";
    av[i++] = getenv("QEMU_CPU") ? getenv("QEMU_CPU") : CPU;
    av[i++] = "-0";
    av[i++] = self; /* the guest's argv[0]: sys.executable is this wrapper */
    av[i++] = PYTHON;
    for (int k = 1; k < argc; k++) {
        av[i++] = argv[k];
    }
    av[i] = NULL;
    execv(QEMU, av);
    perror("arm_python: " QEMU);
    return 127;
}
