/* safetensors.c - the safetensors format (Hugging Face): 8-byte little-endian header
 * length, a JSON header {"name": {"dtype", "shape", "data_offsets"}, "__metadata__":
 * {str: str}}, then the tensor bytes. The writer is crash-safe (atomic_file.c: temp file
 * in the same directory, fsync, rename; stale temps of killed runs removed); the reader trusts nothing: a strict JSON subset parser and
 * full checks of every size and offset, any violation is KVQ_ERR_FORMAT.
 * Data offsets are contiguous and unpadded as the format requires. The reader places the
 * data area 64-byte aligned in memory and the writer lays tensors out by element size,
 * largest first, so every tensor of a file written here is aligned to its element size;
 * a foreign file may hold misaligned tensors (read those with memcpy). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"

#define KVQI_ST_MAX_HEADER (100u * 1024u * 1024u)

static const struct {
    const char *name;
    size_t size;
} k_dtypes[KVQI_DTYPE_COUNT] = {
    [KVQI_F32] = {"F32", 4}, [KVQI_F16] = {"F16", 2}, [KVQI_BF16] = {"BF16", 2},
    [KVQI_F64] = {"F64", 8}, [KVQI_I32] = {"I32", 4}, [KVQI_I64] = {"I64", 8},
    [KVQI_U8] = {"U8", 1},   [KVQI_I8] = {"I8", 1},   [KVQI_U32] = {"U32", 4},
    [KVQI_U16] = {"U16", 2},
};

size_t kvqi_dtype_size(kvqi_dtype t) {
    return (unsigned)t < KVQI_DTYPE_COUNT ? k_dtypes[t].size : 0;
}

struct kvqi_st_file {
    uint8_t *mem;       /* owned allocation */
    const uint8_t *buf; /* the file's first byte, inside mem */
    size_t size;
    kvqi_st_tensor *tensors;
    size_t n_tensors, cap_tensors;
    const kvqi_st_tensor **by_name; /* sorted by name, for kvqi_st_find */
    char **meta_keys, **meta_values;
    size_t n_meta, cap_meta;
};

/* ------------------------------------------------------------------ writer */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (n > SIZE_MAX - b->len - 1) {
        b->failed = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) {
                b->failed = 1;
                return;
            }
            cap *= 2;
        }
        char *q = realloc(b->p, cap);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_u64(strbuf *b, uint64_t v) {
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_put(b, tmp, (size_t)n);
}
static void sb_json_string(strbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"') sb_put(b, "\\\"", 2);
        else if (*c == '\\') sb_put(b, "\\\\", 2);
        else if (*c < 0x20) {
            char tmp[8];
            snprintf(tmp, sizeof tmp, "\\u%04x", *c);
            sb_put(b, tmp, 6);
        } else sb_put(b, (const char *)c, 1);
    }
    sb_put(b, "\"", 1);
}

static kvq_status check_tensor_arg(const kvqi_st_tensor *t) {
    size_t len = strnlen(t->name, KVQI_ST_MAX_NAME);
    if (len == 0 || len >= KVQI_ST_MAX_NAME || strcmp(t->name, "__metadata__") == 0)
        return KVQ_ERR_INVALID_ARG;
    if ((unsigned)t->dtype >= KVQI_DTYPE_COUNT || t->ndim > KVQI_ST_MAX_DIMS)
        return KVQ_ERR_INVALID_ARG;
    size_t elems = 1;
    for (uint32_t i = 0; i < t->ndim; i++) {
        if (t->shape[i] > SIZE_MAX) return KVQ_ERR_OVERFLOW;
        if (kvqi_mul_size(elems, (size_t)t->shape[i], &elems) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    }
    size_t bytes;
    if (kvqi_mul_size(elems, k_dtypes[t->dtype].size, &bytes) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    if (bytes != t->nbytes || (bytes && !t->data)) return KVQ_ERR_INVALID_ARG;
    return KVQ_OK;
}

static int write_all(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n; }

kvq_status kvqi_st_write(const char *path, const kvqi_st_tensor *tensors, size_t n_tensors,
                         const kvqi_st_meta *meta, size_t n_meta) {
    if (!path || (n_tensors && !tensors) || (n_meta && !meta)) return KVQ_ERR_INVALID_ARG;
    for (size_t i = 0; i < n_tensors; i++) {
        kvq_status s = check_tensor_arg(&tensors[i]);
        if (s != KVQ_OK) return s;
        for (size_t j = 0; j < i; j++)
            if (strcmp(tensors[i].name, tensors[j].name) == 0) return KVQ_ERR_INVALID_ARG;
    }
    for (size_t i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value) return KVQ_ERR_INVALID_ARG;
        for (size_t j = 0; j < i; j++)
            if (strcmp(meta[i].key, meta[j].key) == 0) return KVQ_ERR_INVALID_ARG;
    }

    strbuf h = {0};
    sb_str(&h, "{");
    int first = 1;
    if (n_meta) {
        sb_str(&h, "\"__metadata__\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i) sb_str(&h, ",");
            sb_json_string(&h, meta[i].key);
            sb_str(&h, ":");
            sb_json_string(&h, meta[i].value);
        }
        sb_str(&h, "}");
        first = 0;
    }
    /* Header in the caller's order; data laid out by element size, largest first (as the
     * reference writer does), so every tensor starts aligned to its element size. */
    uint64_t *begin = n_tensors ? malloc(n_tensors * sizeof *begin) : NULL;
    if (n_tensors && !begin) {
        free(h.p);
        return KVQ_ERR_NOMEM;
    }
    uint64_t data_size = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (size_t i = 0; i < n_tensors; i++) {
            if (k_dtypes[tensors[i].dtype].size != size) continue;
            if (tensors[i].nbytes > UINT64_MAX - data_size) {
                free(begin);
                free(h.p);
                return KVQ_ERR_OVERFLOW;
            }
            begin[i] = data_size;
            data_size += tensors[i].nbytes;
        }
    for (size_t i = 0; i < n_tensors; i++) {
        const kvqi_st_tensor *t = &tensors[i];
        if (!first) sb_str(&h, ",");
        first = 0;
        sb_json_string(&h, t->name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, k_dtypes[t->dtype].name);
        sb_str(&h, "\",\"shape\":[");
        for (uint32_t d = 0; d < t->ndim; d++) {
            if (d) sb_str(&h, ",");
            sb_u64(&h, t->shape[d]);
        }
        sb_str(&h, "],\"data_offsets\":[");
        sb_u64(&h, begin[i]);
        sb_str(&h, ",");
        sb_u64(&h, begin[i] + t->nbytes);
        sb_str(&h, "]}");
    }
    sb_str(&h, "}");
    free(begin);
    while (!h.failed && (8 + h.len) % 8 != 0) sb_str(&h, " ");
    if (h.failed) {
        free(h.p);
        return KVQ_ERR_NOMEM;
    }

    kvqi_atomic_file af;
    kvq_status st = kvqi_atomic_begin(path, &af);
    if (st != KVQ_OK) {
        free(h.p);
        return st;
    }
    FILE *f = af.f;
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
    int ok = write_all(f, len_le, 8) && write_all(f, h.p, h.len);
    for (size_t size = 8; size >= 1; size /= 2)
        for (size_t i = 0; ok && i < n_tensors; i++)
            if (k_dtypes[tensors[i].dtype].size == size)
                ok = write_all(f, tensors[i].data, tensors[i].nbytes);
    free(h.p);
    return kvqi_atomic_commit(&af, ok);
}

/* ------------------------------------------------------------------ reader */

typedef struct json {
    const char *p, *end;
    kvq_status err; /* first error */
} json;

static void ws(json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}
static int fail(json *j, kvq_status s) {
    if (j->err == KVQ_OK) j->err = s;
    return 0;
}
static int expect(json *j, char c) {
    ws(j);
    if (j->p >= j->end || *j->p != c) return fail(j, KVQ_ERR_FORMAT);
    j->p++;
    return 1;
}
static int peek(json *j, char c) {
    ws(j);
    return j->p < j->end && *j->p == c;
}

static int hex4(json *j, unsigned *out) {
    if (j->end - j->p < 4) return fail(j, KVQ_ERR_FORMAT);
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = *j->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return fail(j, KVQ_ERR_FORMAT);
    }
    *out = v;
    return 1;
}

/* A JSON string, escapes decoded to UTF-8, NUL-terminated in a new allocation. */
static char *json_string(json *j, size_t *len_out) {
    if (!expect(j, '"')) return NULL;
    /* the decoded form is never longer than the raw form */
    const char *q = j->p;
    while (q < j->end && *q != '"') q += (*q == '\\' && q + 1 < j->end) ? 2 : 1;
    if (q >= j->end) {
        fail(j, KVQ_ERR_FORMAT);
        return NULL;
    }
    char *out = malloc((size_t)(q - j->p) + 1);
    if (!out) {
        fail(j, KVQ_ERR_NOMEM);
        return NULL;
    }
    size_t n = 0;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p++;
        if (c < 0x20) goto bad;
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        if (j->p >= j->end) goto bad;
        char e = *j->p++;
        switch (e) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (!hex4(j, &cp)) goto bad;
            if (cp >= 0xD800 && cp < 0xDC00) { /* high surrogate: a low one must follow */
                unsigned lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') goto bad;
                j->p += 2;
                if (!hex4(j, &lo) || lo < 0xDC00 || lo >= 0xE000) goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) goto bad;
            if (cp == 0) goto bad; /* names and values are C strings */
            /* 6 raw chars (12 for a pair) always cover the <= 4 UTF-8 bytes */
            if (cp < 0x80) out[n++] = (char)cp;
            else if (cp < 0x800) {
                out[n++] = (char)(0xC0 | (cp >> 6));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out[n++] = (char)(0xE0 | (cp >> 12));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[n++] = (char)(0xF0 | (cp >> 18));
                out[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: goto bad;
        }
    }
    j->p++; /* closing quote (found above) */
    out[n] = 0;
    if (len_out) *len_out = n;
    return out;
bad:
    free(out);
    fail(j, KVQ_ERR_FORMAT);
    return NULL;
}

static int json_u64(json *j, uint64_t *out) {
    ws(j);
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return fail(j, KVQ_ERR_FORMAT);
    if (*j->p == '0' && j->p + 1 < j->end && j->p[1] >= '0' && j->p[1] <= '9')
        return fail(j, KVQ_ERR_FORMAT); /* leading zero */
    uint64_t v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        unsigned d = (unsigned)(*j->p++ - '0');
        if (v > (UINT64_MAX - d) / 10) return fail(j, KVQ_ERR_FORMAT);
        v = v * 10 + d;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return fail(j, KVQ_ERR_FORMAT);
    *out = v;
    return 1;
}

/* [u64, u64, ...] with at most max entries */
static int json_u64_array(json *j, uint64_t *vals, uint32_t max, uint32_t *count) {
    if (!expect(j, '[')) return 0;
    uint32_t n = 0;
    if (peek(j, ']')) {
        j->p++;
        *count = 0;
        return 1;
    }
    for (;;) {
        if (n >= max) return fail(j, KVQ_ERR_FORMAT);
        if (!json_u64(j, &vals[n++])) return 0;
        if (peek(j, ',')) {
            j->p++;
            continue;
        }
        if (!expect(j, ']')) return 0;
        break;
    }
    *count = n;
    return 1;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem, json *j) {
    if (need <= *cap) return 1;
    size_t cap2 = *cap ? *cap * 2 : 16, bytes;
    if (cap2 < need) cap2 = need;
    if (kvqi_mul_size(cap2, elem, &bytes) != KVQ_OK) return fail(j, KVQ_ERR_NOMEM);
    void *q = realloc(*arr, bytes);
    if (!q) return fail(j, KVQ_ERR_NOMEM);
    *arr = q;
    *cap = cap2;
    return 1;
}

static int parse_metadata(json *j, kvqi_st_file *f) {
    if (!expect(j, '{')) return 0;
    if (peek(j, '}')) {
        j->p++;
        return 1;
    }
    for (;;) {
        char *key = json_string(j, NULL);
        if (!key) return 0;
        char *value = NULL;
        if (!expect(j, ':') || !(value = json_string(j, NULL))) {
            free(key);
            return 0;
        }
        for (size_t i = 0; i < f->n_meta; i++)
            if (strcmp(f->meta_keys[i], key) == 0) {
                free(key);
                free(value);
                return fail(j, KVQ_ERR_FORMAT);
            }
        size_t cap_v = f->cap_meta;
        if (!grow((void **)&f->meta_keys, &f->cap_meta, f->n_meta + 1, sizeof(char *), j) ||
            !grow((void **)&f->meta_values, &cap_v, f->cap_meta, sizeof(char *), j)) {
            free(key);
            free(value);
            return 0;
        }
        f->meta_keys[f->n_meta] = key;
        f->meta_values[f->n_meta] = value;
        f->n_meta++;
        if (peek(j, ',')) {
            j->p++;
            continue;
        }
        return expect(j, '}');
    }
}

static int parse_tensor(json *j, kvqi_st_tensor *t, uint64_t *begin, uint64_t *end) {
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    if (!expect(j, '{')) return 0;
    if (peek(j, '}')) return fail(j, KVQ_ERR_FORMAT);
    for (;;) {
        char *key = json_string(j, NULL);
        if (!key) return 0;
        if (!expect(j, ':')) {
            free(key);
            return 0;
        }
        if (strcmp(key, "dtype") == 0 && !have_dtype) {
            free(key);
            char *dt = json_string(j, NULL);
            if (!dt) return 0;
            int found = 0;
            for (int d = 0; d < KVQI_DTYPE_COUNT; d++)
                if (strcmp(dt, k_dtypes[d].name) == 0) {
                    t->dtype = (kvqi_dtype)d;
                    found = 1;
                }
            free(dt);
            if (!found) return fail(j, KVQ_ERR_FORMAT);
            have_dtype = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            free(key);
            if (!json_u64_array(j, t->shape, KVQI_ST_MAX_DIMS, &t->ndim)) return 0;
            have_shape = 1;
        } else if (strcmp(key, "data_offsets") == 0 && !have_offsets) {
            free(key);
            uint64_t off[2];
            uint32_t n;
            if (!json_u64_array(j, off, 2, &n)) return 0;
            if (n != 2) return fail(j, KVQ_ERR_FORMAT);
            *begin = off[0];
            *end = off[1];
            have_offsets = 1;
        } else { /* unknown or repeated key */
            free(key);
            return fail(j, KVQ_ERR_FORMAT);
        }
        if (peek(j, ',')) {
            j->p++;
            continue;
        }
        if (!expect(j, '}')) return 0;
        break;
    }
    if (!have_dtype || !have_shape || !have_offsets) return fail(j, KVQ_ERR_FORMAT);
    return 1;
}

typedef struct span {
    uint64_t begin, end;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}
static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const kvqi_st_tensor *const *)a)->name, (*(const kvqi_st_tensor *const *)b)->name);
}
static int cmp_key_tensor(const void *key, const void *elem) {
    return strcmp((const char *)key, (*(const kvqi_st_tensor *const *)elem)->name);
}

void kvqi_st_free(kvqi_st_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->tensors);
    free(f->by_name);
    free(f->mem);
    free(f);
}

/* Parses and validates the file in f->buf[0..size). */
static kvq_status st_parse(kvqi_st_file *f) {
    const uint8_t *buf = f->buf;
    const size_t size = f->size;
    if (size < 8) return KVQ_ERR_FORMAT;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)buf[i] << (8 * i);
    if (hlen > size - 8 || hlen > KVQI_ST_MAX_HEADER || hlen < 2) return KVQ_ERR_FORMAT;
    const size_t data_start = 8 + (size_t)hlen;
    const uint64_t data_size = size - data_start;

    json j = {(const char *)buf + 8, (const char *)buf + data_start, KVQ_OK};
    span *spans = NULL;
    size_t cap_spans = 0;
    int have_meta = 0;
    if (!expect(&j, '{')) goto out;
    if (peek(&j, '}')) j.p++;
    else
        for (;;) {
            char *name = json_string(&j, NULL);
            if (!name) goto out;
            if (!expect(&j, ':')) {
                free(name);
                goto out;
            }
            if (strcmp(name, "__metadata__") == 0) {
                free(name);
                if (have_meta) {
                    fail(&j, KVQ_ERR_FORMAT);
                    goto out;
                }
                have_meta = 1;
                if (!parse_metadata(&j, f)) goto out;
            } else {
                size_t name_len = strlen(name);
                size_t cap_s = cap_spans;
                if (name_len == 0 || name_len >= KVQI_ST_MAX_NAME) {
                    free(name);
                    fail(&j, KVQ_ERR_FORMAT);
                    goto out;
                }
                if (!grow((void **)&f->tensors, &f->cap_tensors, f->n_tensors + 1,
                          sizeof(kvqi_st_tensor), &j) ||
                    !grow((void **)&spans, &cap_s, f->cap_tensors, sizeof(span), &j)) {
                    free(name);
                    goto out;
                }
                cap_spans = cap_s;
                kvqi_st_tensor *t = &f->tensors[f->n_tensors];
                memset(t, 0, sizeof *t);
                memcpy(t->name, name, name_len + 1);
                free(name);
                span *s = &spans[f->n_tensors];
                if (!parse_tensor(&j, t, &s->begin, &s->end)) goto out;
                /* size checks: prod(shape) * dtype size == end - begin, inside the data */
                if (s->begin > s->end || s->end > data_size) {
                    fail(&j, KVQ_ERR_FORMAT);
                    goto out;
                }
                size_t elems = 1, bytes;
                for (uint32_t d = 0; d < t->ndim; d++)
                    if (t->shape[d] > SIZE_MAX ||
                        kvqi_mul_size(elems, (size_t)t->shape[d], &elems) != KVQ_OK) {
                        fail(&j, KVQ_ERR_FORMAT);
                        goto out;
                    }
                if (kvqi_mul_size(elems, k_dtypes[t->dtype].size, &bytes) != KVQ_OK ||
                    (uint64_t)bytes != s->end - s->begin) {
                    fail(&j, KVQ_ERR_FORMAT);
                    goto out;
                }
                t->nbytes = bytes;
                t->data = buf + data_start + s->begin;
                f->n_tensors++;
            }
            if (peek(&j, ',')) {
                j.p++;
                continue;
            }
            if (!expect(&j, '}')) goto out;
            break;
        }
    ws(&j);
    if (j.p != j.end) {
        fail(&j, KVQ_ERR_FORMAT); /* only padding may follow the object */
        goto out;
    }
    if (f->n_tensors) {
        qsort(spans, f->n_tensors, sizeof(span), cmp_span);
        for (size_t i = 1; i < f->n_tensors; i++)
            if (spans[i].begin < spans[i - 1].end) {
                fail(&j, KVQ_ERR_FORMAT);
                goto out;
            }
        f->by_name = malloc(f->n_tensors * sizeof *f->by_name);
        if (!f->by_name) {
            fail(&j, KVQ_ERR_NOMEM);
            goto out;
        }
        for (size_t i = 0; i < f->n_tensors; i++) f->by_name[i] = &f->tensors[i];
        qsort(f->by_name, f->n_tensors, sizeof *f->by_name, cmp_tensor_name);
        for (size_t i = 1; i < f->n_tensors; i++)
            if (strcmp(f->by_name[i]->name, f->by_name[i - 1]->name) == 0) {
                fail(&j, KVQ_ERR_FORMAT);
                goto out;
            }
    }
out:
    free(spans);
    return j.err;
}

/* Takes the file bytes at mem + pad; the data area lands 64-byte aligned when pad was
 * chosen from the header length. */
static kvq_status st_finish(uint8_t *mem, size_t pad, size_t size, kvqi_st_file **out) {
    kvqi_st_file *f = calloc(1, sizeof *f);
    if (!f) {
        free(mem);
        return KVQ_ERR_NOMEM;
    }
    f->mem = mem;
    f->buf = mem + pad;
    f->size = size;
    kvq_status s = st_parse(f);
    if (s != KVQ_OK) {
        kvqi_st_free(f);
        return s;
    }
    *out = f;
    return KVQ_OK;
}

static size_t pad_for(const uint8_t *first8, size_t size) {
    if (size < 8) return 0;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)first8[i] << (8 * i);
    if (hlen > KVQI_ST_MAX_HEADER) return 0;
    return (size_t)((64 - (8 + hlen) % 64) % 64);
}

kvq_status kvqi_st_read_mem(const void *buf, size_t size, kvqi_st_file **out) {
    if (!out || (!buf && size)) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    size_t pad = pad_for(buf, size), total;
    if (kvqi_add_size(size, pad, &total) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    uint8_t *mem = kvqi_alloc_array(total ? total : 1, 1);
    if (!mem) return KVQ_ERR_NOMEM;
    if (size) memcpy(mem + pad, buf, size);
    return st_finish(mem, pad, size, out);
}

kvq_status kvqi_st_read(const char *path, kvqi_st_file **out) {
    if (!path || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return KVQ_ERR_IO;
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
        (uint64_t)st.st_size > SIZE_MAX - 64) {
        fclose(fp);
        return KVQ_ERR_IO;
    }
    const size_t size = (size_t)st.st_size;
    uint8_t first8[8] = {0};
    size_t got8 = fread(first8, 1, size < 8 ? size : 8, fp);
    const size_t pad = pad_for(first8, got8 == 8 ? size : 0);
    uint8_t *mem = kvqi_alloc_array(size + pad ? size + pad : 1, 1);
    if (!mem) {
        fclose(fp);
        return KVQ_ERR_NOMEM;
    }
    memcpy(mem + pad, first8, got8);
    size_t got = got8 + (size > got8 ? fread(mem + pad + got8, 1, size - got8, fp) : 0);
    const int read_err = ferror(fp);
    fclose(fp);
    if (read_err || got != size) {
        kvqi_free(mem);
        return read_err ? KVQ_ERR_IO : KVQ_ERR_FORMAT;
    }
    return st_finish(mem, pad, size, out);
}

const char *kvqi_st_read_why(const char *path, kvq_status st) {
    struct stat sb;
    if (st == KVQ_ERR_IO && path) {
        if (stat(path, &sb) != 0) return strerror(errno);
        if (S_ISDIR(sb.st_mode)) return "is a directory, not a file";
        if (!S_ISREG(sb.st_mode)) return "is not a regular file";
    }
    return kvq_strerror(st);
}

size_t kvqi_st_count(const kvqi_st_file *f) { return f ? f->n_tensors : 0; }

const kvqi_st_tensor *kvqi_st_at(const kvqi_st_file *f, size_t i) {
    return f && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const kvqi_st_tensor *kvqi_st_find(const kvqi_st_file *f, const char *name) {
    if (!f || !name || !f->n_tensors) return NULL;
    const kvqi_st_tensor *const *hit =
        bsearch(name, f->by_name, f->n_tensors, sizeof *f->by_name, cmp_key_tensor);
    return hit ? *hit : NULL;
}

const char *kvqi_st_meta_get(const kvqi_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}
