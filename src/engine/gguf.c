/*
 * gguf.c - GGUF v2/v3 reader (ggml's model container): header, typed metadata,
 * tensor infos and the aligned data section. Every count, length, offset and size is
 * checked against the bytes that remain before it is used; the file is mmapped read-only.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_KEY 65536u    /* longer keys and names are not real files */

typedef struct reader {
    const uint8_t *p;
    size_t size;
    size_t pos;
    char *msg;
    size_t msg_size;
} reader;

static kvq_status fail(reader *r, const char *what) {
    kvqi_set_msg(r->msg, r->msg_size, "gguf: %s (at byte %zu of %zu)", what, r->pos, r->size);
    return KVQ_ERR_FORMAT;
}

static size_t remaining(const reader *r) { return r->size - r->pos; }

static kvq_status need(reader *r, uint64_t n, const char *what) {
    if (n > remaining(r)) return fail(r, what);
    return KVQ_OK;
}

static uint64_t rd_le(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static kvq_status read_u32(reader *r, uint32_t *v, const char *what) {
    kvq_status st = need(r, 4, what);
    if (st) return st;
    *v = (uint32_t)rd_le(r->p + r->pos, 4);
    r->pos += 4;
    return KVQ_OK;
}

static kvq_status read_u64(reader *r, uint64_t *v, const char *what) {
    kvq_status st = need(r, 8, what);
    if (st) return st;
    *v = rd_le(r->p + r->pos, 8);
    r->pos += 8;
    return KVQ_OK;
}

/* A string: u64 length then bytes. */
static kvq_status read_str(reader *r, const char **s, uint64_t *len, const char *what) {
    kvq_status st = read_u64(r, len, what);
    if (st) return st;
    if ((st = need(r, *len, what))) return st;
    *s = (const char *)(r->p + r->pos);
    r->pos += (size_t)*len;
    return KVQ_OK;
}

static char *dup_name(const char *s, uint64_t len) {
    char *d = malloc((size_t)len + 1);
    if (!d) return NULL;
    memcpy(d, s, (size_t)len);
    d[len] = 0;
    return d;
}

static unsigned scalar_size(uint32_t type) {
    switch (type) {
    case KVQI_GGUF_U8: case KVQI_GGUF_I8: case KVQI_GGUF_BOOL: return 1;
    case KVQI_GGUF_U16: case KVQI_GGUF_I16: return 2;
    case KVQI_GGUF_U32: case KVQI_GGUF_I32: case KVQI_GGUF_F32: return 4;
    case KVQI_GGUF_U64: case KVQI_GGUF_I64: case KVQI_GGUF_F64: return 8;
    default: return 0;
    }
}

static void decode_scalar(uint32_t type, const uint8_t *p, uint64_t *u, double *f) {
    uint64_t raw = rd_le(p, scalar_size(type));
    union {
        uint32_t u;
        float f;
    } c32;
    union {
        uint64_t u;
        double f;
    } c64;
    switch (type) {
    case KVQI_GGUF_I8: *u = (uint64_t)(int64_t)(int8_t)raw; *f = (double)(int8_t)raw; break;
    case KVQI_GGUF_I16: *u = (uint64_t)(int64_t)(int16_t)raw; *f = (double)(int16_t)raw; break;
    case KVQI_GGUF_I32: *u = (uint64_t)(int64_t)(int32_t)raw; *f = (double)(int32_t)raw; break;
    case KVQI_GGUF_I64: *u = raw; *f = (double)(int64_t)raw; break;
    case KVQI_GGUF_F32: c32.u = (uint32_t)raw; *f = c32.f; *u = 0; break;
    case KVQI_GGUF_F64: c64.u = raw; *f = c64.f; *u = 0; break;
    default: *u = raw; *f = (double)raw; break;
    }
}

static kvq_status read_kv(reader *r, kvqi_gguf_kv *kv) {
    const char *key;
    uint64_t key_len;
    kvq_status st = read_str(r, &key, &key_len, "metadata key runs past the end");
    if (st) return st;
    if (key_len == 0 || key_len > GGUF_MAX_KEY) return fail(r, "metadata key length out of range");
    if (!(kv->key = dup_name(key, key_len))) return KVQ_ERR_NOMEM;
    if ((st = read_u32(r, &kv->type, "metadata type runs past the end"))) return st;
    if (kv->type >= KVQI_GGUF_TYPE_COUNT) return fail(r, "unknown metadata value type");
    if (kv->type == KVQI_GGUF_STRING)
        return read_str(r, &kv->str, &kv->str_len, "metadata string runs past the end");
    if (kv->type != KVQI_GGUF_ARRAY) {
        unsigned sz = scalar_size(kv->type);
        if ((st = need(r, sz, "metadata value runs past the end"))) return st;
        decode_scalar(kv->type, r->p + r->pos, &kv->u, &kv->f);
        r->pos += sz;
        return KVQ_OK;
    }
    if ((st = read_u32(r, &kv->arr_type, "array type runs past the end"))) return st;
    if ((st = read_u64(r, &kv->arr_n, "array length runs past the end"))) return st;
    if (kv->arr_type >= KVQI_GGUF_TYPE_COUNT || kv->arr_type == KVQI_GGUF_ARRAY)
        return fail(r, "bad array element type");
    kv->arr = r->p + r->pos;
    if (kv->arr_type == KVQI_GGUF_STRING) {
        /* each string takes at least its 8-byte length */
        if (kv->arr_n > remaining(r) / 8) return fail(r, "array of strings longer than the file");
        for (uint64_t i = 0; i < kv->arr_n; i++) {
            const char *s;
            uint64_t len;
            if ((st = read_str(r, &s, &len, "array string runs past the end"))) return st;
        }
        return KVQ_OK;
    }
    unsigned sz = scalar_size(kv->arr_type);
    if (kv->arr_n > remaining(r) / sz) return fail(r, "array longer than the file");
    r->pos += (size_t)(kv->arr_n * sz);
    return KVQ_OK;
}

static kvq_status read_tensor_info(reader *r, kvqi_gguf_tensor *t) {
    const char *name;
    uint64_t name_len;
    kvq_status st = read_str(r, &name, &name_len, "tensor name runs past the end");
    if (st) return st;
    if (name_len == 0 || name_len > GGUF_MAX_KEY) return fail(r, "tensor name length out of range");
    if (!(t->name = dup_name(name, name_len))) return KVQ_ERR_NOMEM;
    if ((st = read_u32(r, &t->n_dims, "tensor dims run past the end"))) return st;
    if (t->n_dims == 0 || t->n_dims > KVQI_GGUF_MAX_DIMS) return fail(r, "tensor has 0 or more than 4 dims");
    uint64_t n = 1;
    for (uint32_t d = 0; d < KVQI_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if ((st = read_u64(r, &t->ne[d], "tensor dims run past the end"))) return st;
        if (t->ne[d] == 0) return fail(r, "tensor has a zero dim");
        if (t->ne[d] > INT64_MAX / n) return fail(r, "tensor element count overflows");
        n *= t->ne[d];
    }
    t->n_elems = n;
    t->n_rows = n / t->ne[0];
    if ((st = read_u32(r, &t->type, "tensor type runs past the end"))) return st;
    if ((st = read_u64(r, &t->offset, "tensor offset runs past the end"))) return st;
    const kvqi_type_traits *tt = kvqi_type(t->type);
    if (!tt->name) return fail(r, "unknown tensor type");
    if (t->ne[0] % tt->block) return fail(r, "tensor row length is not a multiple of its type's block");
    uint64_t blocks = t->ne[0] / tt->block;
    if (blocks > UINT64_MAX / tt->size) return fail(r, "tensor size overflows");
    t->row_bytes = blocks * tt->size;
    if (t->n_rows && t->row_bytes > UINT64_MAX / t->n_rows) return fail(r, "tensor size overflows");
    t->nbytes = t->row_bytes * t->n_rows;
    return KVQ_OK;
}

static void free_contents(kvqi_gguf *g) {
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) free(g->kv[i].key);
    if (g->tensors)
        for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
}

void kvqi_gguf_close(kvqi_gguf *g) {
    if (!g) return;
    free_contents(g);
    if (g->mapped && g->base) munmap((void *)g->base, g->size);
    free(g);
}

static kvq_status parse(kvqi_gguf *g, char *msg, size_t msg_size) {
    reader r = {g->base, g->size, 0, msg, msg_size};
    uint32_t magic;
    kvq_status st;
    if ((st = read_u32(&r, &magic, "file shorter than the GGUF header"))) return st;
    if (magic != GGUF_MAGIC) return fail(&r, "not a GGUF file (bad magic)");
    if ((st = read_u32(&r, &g->version, "file shorter than the GGUF header"))) return st;
    if (g->version < 2 || g->version > 3) {
        kvqi_set_msg(msg, msg_size, "gguf: version %u not supported (2 and 3 are)", g->version);
        return KVQ_ERR_FORMAT;
    }
    if ((st = read_u64(&r, &g->n_tensors, "file shorter than the GGUF header"))) return st;
    if ((st = read_u64(&r, &g->n_kv, "file shorter than the GGUF header"))) return st;
    /* each entry takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
     * at least 8 + 4 + 8 + 4 + 8 */
    if (g->n_kv > remaining(&r) / 13) return fail(&r, "metadata count larger than the file");
    if (g->n_tensors > remaining(&r) / 32) return fail(&r, "tensor count larger than the file");
    g->kv = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return KVQ_ERR_NOMEM;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if ((st = read_kv(&r, &g->kv[i]))) return st;
    for (uint64_t i = 0; i < g->n_kv; i++)
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(g->kv[i].key, g->kv[j].key)) return fail(&r, "duplicate metadata key");
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const kvqi_gguf_kv *al = kvqi_gguf_find(g, "general.alignment");
    if (al) {
        if (al->type != KVQI_GGUF_U32 && al->type != KVQI_GGUF_U64) return fail(&r, "general.alignment is not an unsigned integer");
        if (al->u == 0 || (al->u & (al->u - 1)) || al->u > 65536) return fail(&r, "general.alignment is not a power of two");
        g->alignment = al->u;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if ((st = read_tensor_info(&r, &g->tensors[i]))) return st;
    /* the data section starts at the next multiple of the alignment */
    uint64_t data = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (g->n_tensors && data > g->size) return fail(&r, "data section starts past the end");
    g->data_offset = data;
    uint64_t avail = g->size > data ? g->size - data : 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        kvqi_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment) {
            kvqi_set_msg(msg, msg_size, "gguf: tensor '%s' data offset %" PRIu64 " is not aligned to %" PRIu64,
                         t->name, t->offset, g->alignment);
            return KVQ_ERR_FORMAT;
        }
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            kvqi_set_msg(msg, msg_size, "gguf: tensor '%s' data (%" PRIu64 " bytes at %" PRIu64 ") runs past the end of the file",
                         t->name, t->nbytes, t->offset);
            return KVQ_ERR_FORMAT;
        }
        t->data = g->base + data + t->offset;
        for (uint64_t j = 0; j < i; j++) {
            const kvqi_gguf_tensor *u = &g->tensors[j];
            if (!strcmp(t->name, u->name)) {
                kvqi_set_msg(msg, msg_size, "gguf: duplicate tensor name '%s'", t->name);
                return KVQ_ERR_FORMAT;
            }
            /* two tensors sharing bytes (a type changed without moving its neighbours) */
            if (t->nbytes && u->nbytes && t->offset < u->offset + u->nbytes && u->offset < t->offset + t->nbytes) {
                kvqi_set_msg(msg, msg_size, "gguf: tensor '%s' data overlaps tensor '%s'", t->name, u->name);
                return KVQ_ERR_FORMAT;
            }
        }
    }
    return KVQ_OK;
}

kvq_status kvqi_gguf_open_mem(const void *buf, size_t size, kvqi_gguf **out, char *msg,
                              size_t msg_size) {
    if (!out || (!buf && size)) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    kvqi_gguf *g = calloc(1, sizeof *g);
    if (!g) return KVQ_ERR_NOMEM;
    g->base = buf;
    g->size = size;
    kvq_status st = parse(g, msg, msg_size);
    if (st) {
        kvqi_gguf_close(g);
        return st;
    }
    *out = g;
    return KVQ_OK;
}

kvq_status kvqi_gguf_open(const char *path, kvqi_gguf **out, char *msg, size_t msg_size) {
    if (!path || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        kvqi_set_msg(msg, msg_size, "cannot open %s", path);
        return KVQ_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        kvqi_set_msg(msg, msg_size, "%s is not a regular file", path);
        return KVQ_ERR_IO;
    }
    if (sb.st_size < 24) {
        close(fd);
        kvqi_set_msg(msg, msg_size, "gguf: %s is too short to be a GGUF file", path);
        return KVQ_ERR_FORMAT;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return KVQ_ERR_OVERFLOW;
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        kvqi_set_msg(msg, msg_size, "cannot map %s", path);
        return KVQ_ERR_IO;
    }
    kvqi_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        munmap(map, (size_t)sb.st_size);
        return KVQ_ERR_NOMEM;
    }
    g->base = map;
    g->size = (size_t)sb.st_size;
    g->mapped = 1;
    kvq_status st = parse(g, msg, msg_size);
    if (st) {
        kvqi_gguf_close(g);
        return st;
    }
    *out = g;
    return KVQ_OK;
}

const kvqi_gguf_kv *kvqi_gguf_find(const kvqi_gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && !strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const kvqi_gguf_tensor *kvqi_gguf_find_tensor(const kvqi_gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name && !strcmp(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

static int is_int(uint32_t t) {
    return t == KVQI_GGUF_U8 || t == KVQI_GGUF_I8 || t == KVQI_GGUF_U16 || t == KVQI_GGUF_I16 ||
           t == KVQI_GGUF_U32 || t == KVQI_GGUF_I32 || t == KVQI_GGUF_U64 || t == KVQI_GGUF_I64;
}
static int is_signed(uint32_t t) {
    return t == KVQI_GGUF_I8 || t == KVQI_GGUF_I16 || t == KVQI_GGUF_I32 || t == KVQI_GGUF_I64;
}

kvq_status kvqi_gguf_get_u32(const kvqi_gguf *g, const char *key, uint32_t *out) {
    const kvqi_gguf_kv *kv = kvqi_gguf_find(g, key);
    if (!kv || !is_int(kv->type)) return KVQ_ERR_FORMAT;
    if (is_signed(kv->type) && (int64_t)kv->u < 0) return KVQ_ERR_FORMAT;
    if (kv->u > UINT32_MAX) return KVQ_ERR_FORMAT;
    *out = (uint32_t)kv->u;
    return KVQ_OK;
}

kvq_status kvqi_gguf_get_f32(const kvqi_gguf *g, const char *key, float *out) {
    const kvqi_gguf_kv *kv = kvqi_gguf_find(g, key);
    if (!kv || !(kv->type == KVQI_GGUF_F32 || kv->type == KVQI_GGUF_F64 || is_int(kv->type)))
        return KVQ_ERR_FORMAT;
    *out = (float)kv->f;
    return KVQ_OK;
}

kvq_status kvqi_gguf_get_bool(const kvqi_gguf *g, const char *key, int *out) {
    const kvqi_gguf_kv *kv = kvqi_gguf_find(g, key);
    if (!kv || !(kv->type == KVQI_GGUF_BOOL || is_int(kv->type))) return KVQ_ERR_FORMAT;
    *out = kv->u != 0;
    return KVQ_OK;
}

kvq_status kvqi_gguf_get_str(const kvqi_gguf *g, const char *key, char *buf, size_t size) {
    const kvqi_gguf_kv *kv = kvqi_gguf_find(g, key);
    if (!kv || kv->type != KVQI_GGUF_STRING || size == 0) return KVQ_ERR_FORMAT;
    size_t n = kv->str_len < size - 1 ? (size_t)kv->str_len : size - 1;
    memcpy(buf, kv->str, n);
    buf[n] = 0;
    return KVQ_OK;
}

kvq_status kvqi_gguf_string_array(const kvqi_gguf_kv *kv, const char **ptrs, uint32_t *lens) {
    if (kv->type != KVQI_GGUF_ARRAY || kv->arr_type != KVQI_GGUF_STRING) return KVQ_ERR_FORMAT;
    const uint8_t *p = kv->arr; /* bounds were checked by the parser */
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        uint64_t len = rd_le(p, 8);
        if (len > UINT32_MAX) return KVQ_ERR_FORMAT;
        ptrs[i] = (const char *)(p + 8);
        lens[i] = (uint32_t)len;
        p += 8 + len;
    }
    return KVQ_OK;
}

const char *kvqi_gguf_type_name(uint32_t type) {
    static const char *const names[KVQI_GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64"};
    return type < KVQI_GGUF_TYPE_COUNT ? names[type] : "?";
}

static void append(char *buf, size_t size, size_t *pos, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

#include <stdarg.h>
static void append(char *buf, size_t size, size_t *pos, const char *fmt, ...) {
    if (*pos >= size) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *pos, size - *pos, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    *pos = (size_t)n >= size - *pos ? size : *pos + (size_t)n;
}

/* printable copy: control bytes become '.' so a metadata string cannot drive a terminal */
static void append_str(char *buf, size_t size, size_t *pos, const char *s, uint64_t len, size_t max) {
    append(buf, size, pos, "\"");
    for (uint64_t i = 0; i < len && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        append(buf, size, pos, "%c", c < 0x20 || c == 0x7f ? '.' : (char)c);
    }
    append(buf, size, pos, len > max ? "...\"" : "\"");
}

static void append_scalar(char *buf, size_t size, size_t *pos, uint32_t type, uint64_t u, double f) {
    if (type == KVQI_GGUF_F32 || type == KVQI_GGUF_F64) append(buf, size, pos, "%g", f);
    else if (type == KVQI_GGUF_BOOL) append(buf, size, pos, "%s", u ? "true" : "false");
    else if (is_signed(type)) append(buf, size, pos, "%" PRId64, (int64_t)u);
    else append(buf, size, pos, "%" PRIu64, u);
}

void kvqi_gguf_format_value(const kvqi_gguf_kv *kv, char *buf, size_t size) {
    size_t pos = 0;
    if (!size) return;
    buf[0] = 0;
    if (kv->type == KVQI_GGUF_STRING) {
        append_str(buf, size, &pos, kv->str, kv->str_len, 60);
        return;
    }
    if (kv->type != KVQI_GGUF_ARRAY) {
        append_scalar(buf, size, &pos, kv->type, kv->u, kv->f);
        return;
    }
    append(buf, size, &pos, "[%s x %" PRIu64 "]", kvqi_gguf_type_name(kv->arr_type), kv->arr_n);
    const uint8_t *p = kv->arr;
    for (uint64_t i = 0; i < kv->arr_n && i < 4; i++) {
        append(buf, size, &pos, i ? ", " : " ");
        if (kv->arr_type == KVQI_GGUF_STRING) {
            uint64_t len = rd_le(p, 8);
            append_str(buf, size, &pos, (const char *)p + 8, len, 20);
            p += 8 + len;
        } else {
            uint64_t u;
            double f;
            decode_scalar(kv->arr_type, p, &u, &f);
            append_scalar(buf, size, &pos, kv->arr_type, u, f);
            p += scalar_size(kv->arr_type);
        }
    }
    if (kv->arr_n > 4) append(buf, size, &pos, ", ...");
}
