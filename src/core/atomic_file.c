/* atomic_file.c - crash-safe replacement of a file: write a temp file PATH.tmp.XXXXXX
 * beside it, fsync, rename over PATH, fsync the directory. The writer holds an flock on
 * its temp file until the rename, so a temp that nobody holds locked belongs to a run
 * that died (kill -9, power loss): the next write of the same PATH removes it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"

#define TMP_SUFFIX ".tmp."
#define TMP_RANDOM 6 /* mkstemp's XXXXXX */

/* "dir/" part of path (with its slash) as an allocated string, "." when there is none;
 * *base points at the file name inside path. */
static char *dir_of(const char *path, const char **base) {
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    return slash ? strndup(path, (size_t)(slash - path) + 1) : strdup(".");
}

static int is_stale_name(const char *name, const char *base, size_t base_len) {
    if (strncmp(name, base, base_len) != 0 || strncmp(name + base_len, TMP_SUFFIX, 5) != 0) return 0;
    const char *r = name + base_len + 5;
    size_t n = 0;
    for (; r[n]; n++) {
        char c = r[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) return 0;
    }
    return n == TMP_RANDOM;
}

void kvqi_atomic_remove_stale(const char *path) {
    const char *base;
    char *dir = dir_of(path, &base);
    size_t base_len = strlen(base);
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d || base_len == 0) {
        if (d) closedir(d);
        free(dir);
        return;
    }
    int dfd = dirfd(d);
    for (struct dirent *e; (e = readdir(d));) {
        if (!is_stale_name(e->d_name, base, base_len)) continue;
        int fd = openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) continue;
        struct stat sb;
        /* unlocked: its writer is gone (a live writer holds the lock until it renames) */
        if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0)
            (void)unlinkat(dfd, e->d_name, 0);
        close(fd);
    }
    closedir(d);
    free(dir);
}

kvq_status kvqi_atomic_begin(const char *path, kvqi_atomic_file *af) {
    if (!path || !af || !*path) return KVQ_ERR_INVALID_ARG;
    memset(af, 0, sizeof af[0]);
    kvqi_atomic_remove_stale(path);
    size_t plen = strlen(path);
    af->tmp = malloc(plen + sizeof TMP_SUFFIX + TMP_RANDOM);
    af->path = strdup(path);
    if (!af->tmp || !af->path) {
        kvqi_atomic_abort(af);
        return KVQ_ERR_NOMEM;
    }
    for (int attempt = 0; attempt < 8; attempt++) {
        memcpy(af->tmp, path, plen);
        memcpy(af->tmp + plen, TMP_SUFFIX "XXXXXX", sizeof TMP_SUFFIX + TMP_RANDOM);
        int fd = mkstemp(af->tmp);
        if (fd < 0) break;
        /* between mkstemp and flock another writer's cleanup may have taken this temp
         * for a stale one: once locked, it must still be the file at that name */
        struct stat a, b;
        if (flock(fd, LOCK_EX) != 0 || fstat(fd, &a) != 0 || stat(af->tmp, &b) != 0 || a.st_ino != b.st_ino ||
            a.st_dev != b.st_dev) {
            close(fd);
            continue;
        }
        (void)fchmod(fd, 0644);
        af->f = fdopen(fd, "wb");
        if (!af->f) {
            close(fd);
            unlink(af->tmp);
            break;
        }
        return KVQ_OK;
    }
    kvqi_atomic_abort(af);
    return KVQ_ERR_IO;
}

kvq_status kvqi_atomic_commit(kvqi_atomic_file *af, int write_ok) {
    if (!af || !af->f) return KVQ_ERR_INVALID_ARG;
    int ok = write_ok && fflush(af->f) == 0 && fsync(fileno(af->f)) == 0;
    /* the rename happens while the lock is held: no cleanup can take the temp first */
    ok = ok && rename(af->tmp, af->path) == 0;
    if (!ok) unlink(af->tmp);
    ok = (fclose(af->f) == 0) && ok;
    af->f = NULL;
    if (ok) {
        /* make the rename itself durable: fsync the directory (best effort) */
        const char *base;
        char *dir = dir_of(af->path, &base);
        int dfd = dir ? open(dir, O_RDONLY | O_CLOEXEC) : -1;
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    kvqi_atomic_abort(af);
    return ok ? KVQ_OK : KVQ_ERR_IO;
}

void kvqi_atomic_abort(kvqi_atomic_file *af) {
    if (!af) return;
    if (af->f) {
        fclose(af->f);
        unlink(af->tmp);
    }
    free(af->tmp);
    free(af->path);
    memset(af, 0, sizeof af[0]);
}
