/* LD_PRELOAD shim for the ingest benchmark: dcmtk's storescp made as durable as the listener.
 *
 * storescp writes each received instance with stdio and answers once fclose() returns; nothing is
 * fsynced. Preloaded, this fclose() first flushes and fsyncs a regular file opened for writing, then
 * fsyncs the folder that holds it, so that the file and its name are on disk before storescp sends
 * Success: the listener's rule, less its database commit. It changes nothing else in storescp.
 *
 * FSYNC_ON_CLOSE_LOG=<file>, when set, gets one line per file made durable (the benchmark's test
 * reads it to know the shim was in effect).
 *
 * Built by ops/bench/fsync_shim.py:  cc -shared -fPIC -O2 -o fsync_on_close.so fsync_on_close.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int (*real_fclose)(FILE *);

static void log_durable(const char *path) {
    const char *log = getenv("FSYNC_ON_CLOSE_LOG");
    if (log == NULL || *log == '\0') return;
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    size_t length = strlen(path);
    char line[PATH_MAX + 1];
    memcpy(line, path, length);
    line[length] = '\n';
    (void)!write(fd, line, length + 1);
    close(fd);
}

static void make_durable(FILE *stream) {
    int fd = fileno(stream);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY)
        return;
    fflush(stream);
    fsync(fd);
    char link[64], path[PATH_MAX], folder[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, path, sizeof path - 1);
    if (length <= 0) return;
    path[length] = '\0';
    memcpy(folder, path, (size_t)length + 1);
    int dir = open(dirname(folder), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        fsync(dir);
        close(dir);
    }
    log_durable(path);
}

int fclose(FILE *stream) {
    if (real_fclose == NULL) real_fclose = (int (*)(FILE *))dlsym(RTLD_NEXT, "fclose");
    if (stream != NULL) make_durable(stream);
    return real_fclose(stream);
}
