/* layer_set.c - a set of per-layer artifacts (kvq calibrate --per-layer) made one unit:
 * a manifest, written atomically after the last layer's file, holds each file's size
 * and 64-bit FNV-1a checksum; a set whose files differ from it (a run killed half way
 * leaves new layers beside old ones) is refused before anything is loaded.
 * Manifest text: "kvq.layer_set 1\nlayers N\n" then "L SIZE CHECKSUM NAME\n" per layer. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"

#define MANIFEST_MAX_BYTES (1u << 20)

static kvq_status file_digest(const char *path, uint64_t *size, uint64_t *hash, char *msg, size_t msg_size) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        kvqi_set_msg(msg, msg_size, "%s: %s", path, strerror(errno));
        return KVQ_ERR_IO;
    }
    if (!S_ISREG(sb.st_mode)) {
        kvqi_set_msg(msg, msg_size, "%s: not a regular file", path);
        return KVQ_ERR_IO;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        kvqi_set_msg(msg, msg_size, "%s: %s", path, strerror(errno));
        return KVQ_ERR_IO;
    }
    uint64_t h = 0xcbf29ce484222325ull, n = 0;
    unsigned char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < got; i++) h = (h ^ buf[i]) * 0x100000001b3ull;
        n += got;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        kvqi_set_msg(msg, msg_size, "%s: read error", path);
        return KVQ_ERR_IO;
    }
    *size = n;
    *hash = h;
    return KVQ_OK;
}

/* One line without its '\n' into buf; 0 at the end of the file, on a line too long or
 * without its newline, or on a NUL byte. */
static int read_line(FILE *f, char *buf, size_t size) {
    if (!fgets(buf, (int)size, f)) return 0;
    size_t n = strlen(buf);
    if (n == 0 || buf[n - 1] != '\n') return 0;
    buf[n - 1] = 0;
    return 1;
}

/* Decimal digits (at least one, no sign or space, no leading zero as sealing never
 * writes one, no overflow): the end, or NULL. */
static const char *parse_dec(const char *p, uint64_t *v) {
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9')) return NULL;
    uint64_t x = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (x > (UINT64_MAX - d) / 10) return NULL;
        x = x * 10 + d;
    }
    *v = x;
    return p;
}

/* Exactly 16 lowercase hex digits: the end, or NULL. */
static const char *parse_hex16(const char *p, uint64_t *v) {
    uint64_t x = 0;
    for (int i = 0; i < 16; i++, p++) {
        int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
        if (d < 0) return NULL;
        x = x << 4 | (uint64_t)d;
    }
    *v = x;
    return p;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

KVQ_API kvq_status kvq_layer_set_seal(const char *manifest, const char *const *paths, uint32_t n_layers,
                                      char *msg, size_t msg_size) {
    if (msg && msg_size) msg[0] = 0;
    if (!manifest || !paths || n_layers == 0) return KVQ_ERR_INVALID_ARG;
    for (uint32_t l = 0; l < n_layers; l++)
        if (!paths[l] || strchr(base_name(paths[l]), '\n')) return KVQ_ERR_INVALID_ARG;
    kvqi_atomic_file af;
    kvq_status st = kvqi_atomic_begin(manifest, &af);
    if (st != KVQ_OK) {
        kvqi_set_msg(msg, msg_size, "%s: cannot create a file beside it", manifest);
        return st;
    }
    int ok = fprintf(af.f, "kvq.layer_set 1\nlayers %" PRIu32 "\n", n_layers) > 0;
    for (uint32_t l = 0; ok && l < n_layers; l++) {
        uint64_t size, hash;
        if ((st = file_digest(paths[l], &size, &hash, msg, msg_size)) != KVQ_OK) {
            kvqi_atomic_abort(&af);
            return st;
        }
        ok = fprintf(af.f, "%" PRIu32 " %" PRIu64 " %016" PRIx64 " %s\n", l, size, hash, base_name(paths[l])) > 0;
    }
    st = kvqi_atomic_commit(&af, ok);
    if (st != KVQ_OK) kvqi_set_msg(msg, msg_size, "%s: write failed", manifest);
    return st;
}

KVQ_API kvq_status kvq_layer_set_check(const char *manifest, const char *const *paths, uint32_t n_layers,
                                       char *msg, size_t msg_size) {
    if (msg && msg_size) msg[0] = 0;
    if (!manifest || !paths || n_layers == 0) return KVQ_ERR_INVALID_ARG;
    struct stat sb;
    if (stat(manifest, &sb) != 0) {
        kvqi_set_msg(msg, msg_size, "%s: %s", manifest, strerror(errno));
        return KVQ_ERR_IO;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size > MANIFEST_MAX_BYTES) {
        kvqi_set_msg(msg, msg_size, "%s: not a regular file of at most 1 MiB", manifest);
        return KVQ_ERR_IO;
    }
    FILE *f = fopen(manifest, "r");
    if (!f) {
        kvqi_set_msg(msg, msg_size, "%s: %s", manifest, strerror(errno));
        return KVQ_ERR_IO;
    }
    kvq_status st = KVQ_OK;
    char line[4200];
    uint64_t n = 0;
    const char *p;
    if (!read_line(f, line, sizeof line) || strcmp(line, "kvq.layer_set 1") != 0 || !read_line(f, line, sizeof line) ||
        strncmp(line, "layers ", 7) != 0 || !(p = parse_dec(line + 7, &n)) || *p) {
        kvqi_set_msg(msg, msg_size, "%s: not a kvq layer set manifest (version 1)", manifest);
        st = KVQ_ERR_FORMAT;
    } else if (n != n_layers) {
        kvqi_set_msg(msg, msg_size, "%s: the set has %" PRIu64 " layers, the model %" PRIu32, manifest, n, n_layers);
        st = KVQ_ERR_MISMATCH;
    }
    for (uint32_t l = 0; st == KVQ_OK && l < n_layers; l++) {
        uint64_t idx = 0, want_size = 0, want_hash = 0, size, hash;
        /* "L SIZE CHECKSUM NAME": decimal, decimal, 16 hex digits, a name */
        p = read_line(f, line, sizeof line) ? parse_dec(line, &idx) : NULL;
        p = p && *p == ' ' ? parse_dec(p + 1, &want_size) : NULL;
        p = p && *p == ' ' ? parse_hex16(p + 1, &want_hash) : NULL;
        if (!p || *p != ' ' || !p[1] || idx != l) {
            kvqi_set_msg(msg, msg_size, "%s: line of layer %" PRIu32 " missing or corrupt", manifest, l);
            st = KVQ_ERR_FORMAT;
        } else if ((st = file_digest(paths[l], &size, &hash, msg, msg_size)) != KVQ_OK) {
            /* msg names the file */
        } else if (size != want_size || hash != want_hash) {
            kvqi_set_msg(msg, msg_size,
                         "layer %" PRIu32 " (%s) is not the file %s lists: the set is mixed or partial "
                         "(a calibrate run stopped half way?); run kvq calibrate --per-layer again",
                         l, paths[l], manifest);
            st = KVQ_ERR_MISMATCH;
        }
    }
    if (st == KVQ_OK && fgetc(f) != EOF) {
        kvqi_set_msg(msg, msg_size, "%s: more lines than layers", manifest);
        st = KVQ_ERR_FORMAT;
    }
    fclose(f);
    return st;
}
