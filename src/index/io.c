/* io.c - the index file: "KVQINDEX", format version, config, PCA basis, centroids,
 * ids, reorder store and every list's codes and factors, then a CRC-32 of all of it
 * and an end marker. Written to a temp file, fsynced and renamed into place; read
 * whole and validated field by field before use (little-endian hosts). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "index/index_internal.h"

#define MAGIC "KVQINDEX"
#define END_MAGIC "KVQIEND!"
/* 2: extended codes packed at b bits per coordinate; every array starts at a multiple
 * of 64 bytes (zero padding) and a list's factor arrays cover its whole 32-vector blocks
 * (zeros past its size), so that a mapped file serves the search in place. 1 (a byte per
 * coordinate, no padding) still loads: its codes are packed on the way in.
 * 3: the same layout; under cosine the lists keep ||r||^2 in f_add and are estimated as
 * l2 between unit vectors (2 kept 0 there and still loads, estimated as ip; such an
 * index is saved as 2 again). */
#define FORMAT_VERSION 3u
#define ALIGN 64u

uint32_t kvqi_crc32(uint32_t crc, const void *buf, size_t n) {
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    const uint8_t *p = buf;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static int little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* ------------------------------------------------------------------ write */

typedef struct writer {
    FILE *f;
    uint32_t crc;
    int failed;
    uint64_t off;
} writer;

static void put(writer *w, const void *p, size_t n) {
    if (w->failed || n == 0) return;
    if (fwrite(p, 1, n, w->f) != n) w->failed = 1;
    w->crc = kvqi_crc32(w->crc, p, n);
    w->off += n;
}
/* zeros up to the next multiple of ALIGN */
static void put_pad(writer *w) {
    static const uint8_t zero[ALIGN];
    put(w, zero, (size_t)((ALIGN - w->off % ALIGN) % ALIGN));
}
/* an array section: aligned start */
static void put_sec(writer *w, const void *p, size_t n) {
    put_pad(w);
    put(w, p, n);
}
static void put_u32(writer *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(writer *w, uint64_t v) { put(w, &v, 8); }

static void put_config(writer *w, const kvq_index_config *c) {
    put_u32(w, c->dim);
    put_u32(w, (uint32_t)c->metric);
    put_u32(w, c->nlist);
    put_u32(w, c->bits);
    put_u32(w, c->split);
    put_u32(w, c->query_bits);
    put_u32(w, (uint32_t)c->rotation);
    put_u32(w, c->pca_dim);
    put_u32(w, (uint32_t)c->reorder);
    put_u32(w, c->train_iters);
    put_u32(w, c->max_train_points);
    put_u64(w, c->seed);
    put_u32(w, c->ip_assign); /* format 2 */
}

static void put_body(writer *w, const kvq_index *ix) {
    put(w, MAGIC, 8);
    put_u32(w, ix->cfg.metric == KVQ_METRIC_COSINE && !ix->cos_l2 ? 2u : FORMAT_VERSION);
    put_config(w, &ix->cfg);
    put_u32(w, (uint32_t)ix->trained);
    put_u64(w, ix->n);
    /* a dense rotation is stored, not rebuilt: loading costs no O(d^3) work, and its
     * size is backed by the file's own bytes */
    if (ix->rot_dense) put_sec(w, ix->rot_dense, (size_t)ix->d * ix->d * 4);
    if (!ix->trained) return;
    if (ix->cfg.pca_dim) {
        put_sec(w, ix->pca_mean, (size_t)ix->dim * 4);
        put_sec(w, ix->pca_proj, (size_t)ix->d * ix->dim * 4);
    }
    put_sec(w, ix->centroids, (size_t)ix->nlist * ix->d * 4);
    put_sec(w, ix->ids, (size_t)ix->n * 8);
    if (ix->reorder_f32) put_sec(w, ix->reorder_f32, (size_t)ix->n * ix->dim * 4);
    if (ix->reorder_f16) put_sec(w, ix->reorder_f16, (size_t)ix->n * ix->dim * 2);
    for (uint32_t c = 0; c < ix->nlist; c++) {
        const kvqi_ivf_list *l = &ix->lists[c];
        size_t blocks = (l->n + KVQI_FS_BLOCK - 1) / KVQI_FS_BLOCK, slots = blocks * KVQI_FS_BLOCK;
        put_u32(w, l->n);
        if (!l->n) continue;
        put_sec(w, l->rows, (size_t)l->n * 4);
        put_sec(w, l->codes, blocks * ix->n_groups * 16);
        put_sec(w, l->f_add, slots * 4); /* zeros past n: the lists keep them so */
        put_sec(w, l->f_rescale, slots * 4);
        put_sec(w, l->f_err, slots * 4);
        put_sec(w, l->f_pop, slots * 4);
        if (ix->cfg.bits > 1) {
            put_sec(w, l->ex_codes, (size_t)l->n * ix->ex_row);
            put_sec(w, l->ex_rescale, (size_t)l->n * 4);
            put_sec(w, l->ex_err, (size_t)l->n * 4);
        }
    }
}

KVQ_API kvq_status kvq_index_save(const kvq_index *ix, const char *path) {
    if (!ix || !path || !*path) return KVQ_ERR_INVALID_ARG;
    if (!little_endian()) return KVQ_ERR_UNSUPPORTED;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) return KVQ_ERR_NOMEM;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        free(tmp);
        return KVQ_ERR_IO;
    }
    (void)fchmod(fd, 0644); /* mkstemp makes 0600; an index is a data file like any other */
    writer w = {fdopen(fd, "wb"), 0, 0, 0};
    if (!w.f) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return KVQ_ERR_IO;
    }
    put_body(&w, ix);
    uint32_t crc = w.crc;
    put_u32(&w, crc);
    put(&w, END_MAGIC, 8);
    int bad = w.failed || fflush(w.f) != 0 || fsync(fileno(w.f)) != 0;
    bad |= fclose(w.f) != 0;
    if (!bad && rename(tmp, path) != 0) bad = 1;
    if (bad) unlink(tmp);
    free(tmp);
    return bad ? KVQ_ERR_IO : KVQ_OK;
}

/* ------------------------------------------------------------------- read */

typedef struct reader {
    const uint8_t *p;
    size_t left;
    const uint8_t *start;
    uint32_t version;
    int map; /* borrow the big arrays from the buffer instead of copying them */
} reader;

static int get(reader *r, void *dst, size_t n) {
    if (n > r->left) return 0;
    if (n) memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
    return 1;
}
static int get_u32(reader *r, uint32_t *v) { return get(r, v, 4); }
static int get_u64(reader *r, uint64_t *v) { return get(r, v, 8); }
/* n floats read from a file, all finite (a NaN would poison every comparison) */
static int finite_f32(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}
static int finite_f16(const uint16_t *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((x[i] & 0x7c00u) == 0x7c00u) return 0;
    return 1;
}

static int has_bytes(const reader *r, size_t count, size_t size) {
    size_t bytes;
    return kvqi_mul_size(count, size, &bytes) == KVQ_OK && bytes <= r->left;
}

static int get_config(reader *r, kvq_index_config *c) {
    uint32_t v[11];
    for (int i = 0; i < 11; i++)
        if (!get_u32(r, &v[i])) return 0;
    memset(c, 0, sizeof *c);
    c->dim = v[0];
    c->metric = (kvq_metric)v[1];
    c->nlist = v[2];
    c->bits = v[3];
    c->split = v[4];
    c->query_bits = v[5];
    c->rotation = (kvq_index_rotation)v[6];
    c->pca_dim = v[7];
    c->reorder = (kvq_index_reorder)v[8];
    c->train_iters = v[9];
    c->max_train_points = v[10];
    if (v[1] > 2 || v[6] > 1 || v[8] > 2) return 0;
    if (!get_u64(r, &c->seed)) return 0;
    return r->version < 2 || get_u32(r, &c->ip_assign); /* format 1 assigned by l2 */
}

/* Version 2 pads to ALIGN before each array: the padding must be zeros. */
static int skip_pad(reader *r) {
    if (r->version < 2) return 1;
    size_t off = (size_t)(r->p - r->start), pad = (ALIGN - off % ALIGN) % ALIGN;
    if (pad > r->left) return 0;
    for (size_t i = 0; i < pad; i++)
        if (r->p[i]) return 0;
    r->p += pad;
    r->left -= pad;
    return 1;
}

/* The next array section, count * size bytes: its address in the buffer (NULL if the
 * buffer ends first). */
static const uint8_t *sec(reader *r, size_t count, size_t size) {
    size_t bytes;
    if (!skip_pad(r) || kvqi_mul_size(count, size, &bytes) != KVQ_OK || bytes > r->left) return NULL;
    const uint8_t *p = r->p;
    r->p += bytes;
    r->left -= bytes;
    return p;
}

/* A section into *dst: borrowed from the buffer in map mode, else copied into *dst
 * (allocated here when *dst is NULL). 0 on a short buffer, -1 out of memory. */
static int take(reader *r, void **dst, size_t count, size_t size) {
    const uint8_t *p = sec(r, count, size);
    if (!p) return 0;
    if (r->map) {
        *dst = (void *)(uintptr_t)p; /* read-only mapping: never written (ix->mapped) */
        return 1;
    }
    if (!*dst && !(*dst = kvqi_alloc_array(count ? count : 1, size ? size : 1))) return -1;
    if (count && size) memcpy(*dst, p, count * size);
    return 1;
}

static kvq_status load_body(reader *r, kvq_index **out) {
    char magic[8];
    uint32_t version, trained;
    uint64_t n;
    kvq_index_config cfg;
    if (!get(r, magic, 8) || memcmp(magic, MAGIC, 8) != 0) return KVQ_ERR_FORMAT;
    if (!get_u32(r, &version) || version < 1 || version > FORMAT_VERSION) return KVQ_ERR_FORMAT;
    if (r->map && version < 2) return KVQ_ERR_UNSUPPORTED; /* unaligned: load and save again */
    r->version = version;
    if (!get_config(r, &cfg) || !get_u32(r, &trained) || !get_u64(r, &n)) return KVQ_ERR_FORMAT;
    if (kvqi_index_validate_config(&cfg) != KVQ_OK || trained > 1 || cfg.train_iters == 0 ||
        cfg.max_train_points == 0)
        return KVQ_ERR_FORMAT;
    if (n > UINT32_MAX || (!trained && n)) return KVQ_ERR_FORMAT;
    const size_t d = cfg.pca_dim ? cfg.pca_dim : cfg.dim;
    if (cfg.rotation == KVQ_ROTATION_DENSE && !has_bytes(r, d * d, 4)) return KVQ_ERR_FORMAT;
    if (trained && !has_bytes(r, cfg.nlist, d * 4)) return KVQ_ERR_FORMAT;
    kvq_index *ix = NULL;
    kvq_status st = kvqi_index_new(&cfg, 0, &ix);
    if (st != KVQ_OK) return st == KVQ_ERR_NOMEM ? st : KVQ_ERR_FORMAT;
    ix->cfg = cfg;
    ix->cos_l2 = version >= 3;
    ix->mapped = r->map; /* from here on kvq_index_free leaves borrowed arrays alone */
    st = KVQ_ERR_FORMAT;
    int t;
    const uint8_t *p;
    /* small arrays are always copied: the rotation, PCA and centroids */
    if (cfg.rotation == KVQ_ROTATION_DENSE) {
        if (!(p = sec(r, d * d, 4))) goto fail;
        if (!(ix->rot_dense = kvqi_alloc_array(d * d, sizeof(float)))) goto nomem;
        memcpy(ix->rot_dense, p, d * d * 4);
        if (!finite_f32(ix->rot_dense, d * d)) goto fail;
    }
    if (!trained) {
        if (r->left) goto fail;
        *out = ix;
        return KVQ_OK;
    }
    if (cfg.pca_dim) {
        if (!has_bytes(r, ix->d, (size_t)ix->dim * 4)) goto fail;
        ix->pca_mean = kvqi_alloc_array(ix->dim, sizeof(float));
        ix->pca_proj = kvqi_alloc_array((size_t)ix->d * ix->dim, sizeof(float));
        if (!ix->pca_mean || !ix->pca_proj) goto nomem;
        if (!(p = sec(r, ix->dim, 4))) goto fail;
        memcpy(ix->pca_mean, p, (size_t)ix->dim * 4);
        if (!(p = sec(r, (size_t)ix->d * ix->dim, 4))) goto fail;
        memcpy(ix->pca_proj, p, (size_t)ix->d * ix->dim * 4);
        if (!finite_f32(ix->pca_mean, ix->dim) || !finite_f32(ix->pca_proj, (size_t)ix->d * ix->dim))
            goto fail;
    }
    if (kvqi_index_alloc_trained(ix) != KVQ_OK) goto nomem;
    if (!(p = sec(r, (size_t)ix->nlist * ix->d, 4))) goto fail;
    memcpy(ix->centroids, p, (size_t)ix->nlist * ix->d * 4);
    if (!finite_f32(ix->centroids, (size_t)ix->nlist * ix->d)) goto fail;
    kvqi_index_finish_centroids(ix);
    ix->trained = 1;
    if (n) {
        size_t row_bytes = cfg.reorder == KVQ_REORDER_FP32 ? 4 : (cfg.reorder == KVQ_REORDER_FP16 ? 2 : 0);
        if (!has_bytes(r, (size_t)n, 8 + (size_t)ix->dim * row_bytes)) goto fail;
        if ((t = take(r, (void **)&ix->ids, (size_t)n, 8)) <= 0) goto fail_take;
        for (uint64_t i = 0; i < n; i++) /* -1 means "no result": stored ids are >= 0 */
            if (ix->ids[i] < 0) goto fail;
        if (row_bytes) {
            void *re = NULL;
            if (!r->map && !(re = kvqi_index_alloc_rows((size_t)n, (size_t)ix->dim * row_bytes)))
                goto nomem;
            if (row_bytes == 4) ix->reorder_f32 = re;
            else ix->reorder_f16 = re;
            if ((t = take(r, &re, (size_t)n, (size_t)ix->dim * row_bytes)) <= 0) goto fail_take;
            if (row_bytes == 4) ix->reorder_f32 = re;
            else ix->reorder_f16 = re;
            size_t cells = (size_t)n * ix->dim;
            if (row_bytes == 4 ? !finite_f32(re, cells) : !finite_f16(re, cells)) goto fail;
        }
        ix->cap_rows = n;
    }
    uint64_t seen = 0;
    for (uint32_t c = 0; c < ix->nlist; c++) {
        kvqi_ivf_list *l = &ix->lists[c];
        uint32_t ln;
        if (!get_u32(r, &ln)) goto fail;
        if (ln > n - seen) goto fail;
        seen += ln;
        if (!ln) continue;
        const size_t blocks = (ln + KVQI_FS_BLOCK - 1) / KVQI_FS_BLOCK;
        /* factors per list in the file: whole blocks (2) or exactly ln (1) */
        const size_t nf = version == 1 ? ln : blocks * KVQI_FS_BLOCK;
        const size_t ex_in = version == 1 ? ix->d_pad : ix->ex_row; /* bytes per code in the file */
        size_t per = 4 + 16 + (cfg.bits > 1 ? ex_in + 8 : 0);
        if (!has_bytes(r, ln, per)) goto fail;
        if (!r->map) {
            if ((st = kvqi_list_reserve(ix, l, ln)) != KVQ_OK) goto fail_st;
            st = KVQ_ERR_FORMAT;
        } else {
            l->cap = (uint32_t)(blocks * KVQI_FS_BLOCK);
        }
        l->n = ln;
        if ((t = take(r, (void **)&l->rows, ln, 4)) <= 0 ||
            (t = take(r, (void **)&l->codes, blocks, (size_t)ix->n_groups * 16)) <= 0 ||
            (t = take(r, (void **)&l->f_add, nf, 4)) <= 0 || (t = take(r, (void **)&l->f_rescale, nf, 4)) <= 0 ||
            (t = take(r, (void **)&l->f_err, nf, 4)) <= 0 || (t = take(r, (void **)&l->f_pop, nf, 4)) <= 0)
            goto fail_take;
        if (!finite_f32(l->f_add, nf) || !finite_f32(l->f_rescale, nf) || !finite_f32(l->f_err, nf) ||
            !finite_f32(l->f_pop, nf))
            goto fail;
        if (cfg.bits > 1) {
            if (version == 1) { /* a byte per coordinate: check each value fits, pack */
                if (!has_bytes(r, ln, ix->d_pad)) goto fail;
                const uint8_t lim = (uint8_t)((1u << cfg.bits) - 1u);
                for (size_t i = 0; i < (size_t)ln * ix->d_pad; i++)
                    if (r->p[i] > lim) goto fail;
                for (uint32_t i = 0; i < ln; i++)
                    kvqi_ex_pack(r->p + (size_t)i * ix->d_pad, ix->d_pad, cfg.bits,
                                 l->ex_codes + (size_t)i * ix->ex_row);
                r->p += (size_t)ln * ix->d_pad;
                r->left -= (size_t)ln * ix->d_pad;
            } else if ((t = take(r, (void **)&l->ex_codes, ln, ix->ex_row)) <= 0) {
                goto fail_take;
            }
            if ((t = take(r, (void **)&l->ex_rescale, ln, 4)) <= 0 ||
                (t = take(r, (void **)&l->ex_err, ln, 4)) <= 0)
                goto fail_take;
            if (!finite_f32(l->ex_rescale, ln) || !finite_f32(l->ex_err, ln)) goto fail;
        }
        for (uint32_t i = 0; i < ln; i++)
            if (l->rows[i] >= n) goto fail;
    }
    if (seen != n || r->left) goto fail;
    ix->n = n;
    *out = ix;
    return KVQ_OK;
fail_take:
    if (t < 0) goto nomem;
    goto fail;
nomem:
    st = KVQ_ERR_NOMEM;
fail_st:
fail:
    kvq_index_free(ix);
    return st;
}

/* Magic, end marker and CRC of a whole file image; then the body. */
static kvq_status load_image(const uint8_t *p, size_t size, int map, kvq_index **out) {
    if (size < 8 + 4 + 12 || memcmp(p, MAGIC, 8) != 0) return KVQ_ERR_FORMAT;
    if (memcmp(p + size - 8, END_MAGIC, 8) != 0) return KVQ_ERR_FORMAT;
    uint32_t stored;
    memcpy(&stored, p + size - 12, 4);
    if (kvqi_crc32(0, p, size - 12) != stored) return KVQ_ERR_FORMAT;
    reader r = {p, size - 12, p, 0, map};
    return load_body(&r, out);
}

KVQ_API kvq_status kvq_index_load_buffer(const void *buf, size_t size, kvq_index **out) {
    if (!out || (!buf && size)) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    if (!little_endian()) return KVQ_ERR_UNSUPPORTED;
    return load_image(buf, size, 0, out);
}

KVQ_API kvq_status kvq_index_load(const char *path, kvq_index **out) {
    if (!path || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return KVQ_ERR_IO;
    struct stat sb;
    /* a directory or device has no meaningful size: refuse it before sizing a buffer */
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return KVQ_ERR_IO;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > (uint64_t)SIZE_MAX / 2) {
        close(fd);
        return KVQ_ERR_FORMAT;
    }
    const size_t size = (size_t)sb.st_size;
    kvq_status st = KVQ_OK;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) st = KVQ_ERR_NOMEM;
    for (size_t got = 0; st == KVQ_OK && got < size;) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) st = KVQ_ERR_IO; /* error, or the file shrank under us */
        else got += (size_t)r;
    }
    close(fd);
    if (st == KVQ_OK) st = kvq_index_load_buffer(buf, size, out);
    free(buf);
    return st;
}

KVQ_API kvq_status kvq_index_map(const char *path, kvq_index **out) {
    if (!path || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    if (!little_endian()) return KVQ_ERR_UNSUPPORTED;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return KVQ_ERR_IO;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return KVQ_ERR_IO;
    }
    if (sb.st_size < 24 || (uint64_t)sb.st_size > (uint64_t)SIZE_MAX / 2) {
        close(fd);
        return KVQ_ERR_FORMAT;
    }
    const size_t size = (size_t)sb.st_size;
    void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd); /* the mapping keeps the file */
    if (m == MAP_FAILED) return KVQ_ERR_IO;
    kvq_status st = load_image(m, size, 1, out);
    if (st != KVQ_OK) {
        munmap(m, size);
        return st;
    }
    (*out)->map_base = m;
    (*out)->map_size = size;
    return KVQ_OK;
}
