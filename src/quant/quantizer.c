/*
 * quantizer.c - the public kvq_quantizer entry points: argument checks, ISA resolution,
 * dispatch to the method table (registry.c), and save/load as safetensors with the
 * config spec in the metadata and every tensor checked on load.
 */
#include <stdio.h>
#include <stdlib.h>

#include "quant/quant.h"

#define KVQI_QUANT_FORMAT "kvq.quantizer"
#define KVQI_QUANT_FORMAT_VERSION "1"

kvqi_st_tensor kvqi_tensor_f32(const char *name, const float *data, uint64_t a, uint64_t b) {
    kvqi_st_tensor t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "%s", name);
    t.dtype = KVQI_F32;
    t.ndim = b ? 2 : 1;
    t.shape[0] = a;
    t.shape[1] = b;
    t.data = data;
    t.nbytes = (size_t)(a * (b ? b : 1) * sizeof(float));
    return t;
}

int kvqi_tensor_equals_f32(const kvqi_st_file *f, const char *name, const float *data,
                           uint64_t a, uint64_t b) {
    const kvqi_st_tensor *t = kvqi_st_find(f, name);
    if (!t || t->dtype != KVQI_F32 || t->ndim != (b ? 2u : 1u) || t->shape[0] != a ||
        (b && t->shape[1] != b))
        return 0;
    size_t bytes = (size_t)(a * (b ? b : 1) * sizeof(float));
    return t->nbytes == bytes && t->data && memcmp(t->data, data, bytes) == 0;
}

KVQ_API kvq_status kvq_quantizer_create(const kvq_config *cfg, kvq_quantizer **out) {
    if (!cfg || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    kvq_config c = *cfg;
    kvqi_config_resolve(&c);
    kvq_status st = kvq_config_validate(&c, NULL, 0);
    if (st != KVQ_OK) return st;
    kvq_isa isa;
    st = kvqi_isa_resolve(c.isa, &isa);
    if (st != KVQ_OK) return st;
    kvq_quantizer *q = calloc(1, sizeof *q);
    if (!q) return KVQ_ERR_NOMEM;
    q->cfg = c;
    q->m = kvqi_method_find(c.method);
    q->isa = isa;
    q->k = kvqi_quant_kernels_for(isa);
    q->base = kvqi_base_kernels_for(isa);
    st = kvqi_rotation_init(&q->rot, c.rotate, c.dim, c.seed);
    if (st != KVQ_OK) {
        free(q);
        return st;
    }
    q->fitted = q->m->fit == NULL; /* methods that learn start unfitted; init may load state */
    st = q->m->init(q);
    if (st != KVQ_OK) {
        kvqi_rotation_free(&q->rot);
        free(q);
        return st;
    }
    q->code_size = q->m->code_size(q);
    *out = q;
    return KVQ_OK;
}

KVQ_API void kvq_quantizer_free(kvq_quantizer *q) {
    if (!q) return;
    if (q->m && q->m->destroy) q->m->destroy(q);
    kvqi_rotation_free(&q->rot);
    free(q);
}

KVQ_API kvq_status kvq_quantizer_fit(kvq_quantizer *q, const float *x, size_t n) {
    if (!q || !x || n == 0) return KVQ_ERR_INVALID_ARG;
    if (!q->m->fit) return KVQ_OK; /* data-oblivious: nothing to learn */
    return q->m->fit(q, x, n);
}

KVQ_API kvq_status kvq_quantizer_config(const kvq_quantizer *q, kvq_config *out) {
    if (!q || !out) return KVQ_ERR_INVALID_ARG;
    *out = q->cfg;
    return KVQ_OK;
}

KVQ_API size_t kvq_code_size(const kvq_quantizer *q) { return q ? q->code_size : 0; }

KVQ_API size_t kvq_shared_size(const kvq_quantizer *q) {
    if (!q) return 0;
    return kvqi_rotation_shared_size(&q->rot) + (q->m->shared_size ? q->m->shared_size(q) : 0);
}

/* n rows of dim floats and of code_size bytes must be addressable: a count whose byte
 * size wraps would have the kernels walk past the caller's buffers. */
static int rows_overflow(const kvq_quantizer *q, size_t n) {
    size_t row = (size_t)q->cfg.dim * sizeof(float);
    if (row && n > SIZE_MAX / row) return 1;
    return q->code_size && n > SIZE_MAX / q->code_size;
}

KVQ_API kvq_status kvq_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    if (!q || !x || !codes || n == 0) return KVQ_ERR_INVALID_ARG;
    if (rows_overflow(q, n)) return KVQ_ERR_OVERFLOW;
    return q->m->encode(q, x, n, codes);
}

KVQ_API kvq_status kvq_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    if (!q || !x || !codes || n == 0) return KVQ_ERR_INVALID_ARG;
    if (rows_overflow(q, n)) return KVQ_ERR_OVERFLOW;
    return q->m->decode(q, codes, n, x);
}

KVQ_API kvq_status kvq_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                             size_t n, float *scores) {
    if (!q || !query || !codes || !scores || n == 0) return KVQ_ERR_INVALID_ARG;
    if (rows_overflow(q, n) || n > SIZE_MAX / sizeof(float)) return KVQ_ERR_OVERFLOW;
    return q->m->score(q, query, codes, n, scores, NULL);
}

KVQ_API kvq_status kvq_score_bound(const kvq_quantizer *q, const float *query,
                                   const uint8_t *codes, size_t n, float *scores, float *err) {
    if (!q || !query || !codes || !scores || !err || n == 0) return KVQ_ERR_INVALID_ARG;
    if (!q->m->has_bound) return KVQ_ERR_UNSUPPORTED;
    if (rows_overflow(q, n) || n > SIZE_MAX / sizeof(float)) return KVQ_ERR_OVERFLOW;
    return q->m->score(q, query, codes, n, scores, err);
}

/* -------------------------------------------------------------- save/load */

KVQ_API kvq_status kvq_quantizer_save(const kvq_quantizer *q, const char *path) {
    if (!q || !path || !*path) return KVQ_ERR_INVALID_ARG;
    if (!q->fitted) return KVQ_ERR_STATE;
    kvqi_st_tensor t[KVQI_QUANT_MAX_TENSORS];
    size_t n = kvqi_rotation_tensors(&q->rot, t, KVQI_QUANT_MAX_TENSORS);
    if (q->m->save_tensors) n += q->m->save_tensors(q, t + n, KVQI_QUANT_MAX_TENSORS - n);
    char spec[1200], dim[32], bits[32], seed[32], code[32];
    kvq_config c = q->cfg;
    c.isa = KVQ_ISA_AUTO; /* an ISA pin is a property of this process, not of the codes */
    c.artifact[0] = 0;    /* the saved file holds the learned state itself */
    kvq_status st = kvq_config_format(&c, spec, sizeof spec);
    if (st != KVQ_OK) return st;
    snprintf(dim, sizeof dim, "%u", q->cfg.dim);
    snprintf(bits, sizeof bits, "%u", q->cfg.bits);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)q->cfg.seed);
    snprintf(code, sizeof code, "%zu", q->code_size);
    const kvqi_st_meta meta[] = {
        {"format", KVQI_QUANT_FORMAT},
        {"version", KVQI_QUANT_FORMAT_VERSION},
        {"method", q->m->name},
        {"dim", dim},
        {"bits", bits},
        {"seed", seed},
        {"code_size", code},
        {"spec", spec},
    };
    return kvqi_st_write(path, t, n, meta, sizeof meta / sizeof meta[0]);
}

static int meta_is(const kvqi_st_file *f, const char *key, const char *want) {
    const char *v = kvqi_st_meta_get(f, key);
    return v && strcmp(v, want) == 0;
}

static kvq_status load_from(const kvqi_st_file *f, kvq_quantizer **out) {
    if (!meta_is(f, "format", KVQI_QUANT_FORMAT) || !meta_is(f, "version", KVQI_QUANT_FORMAT_VERSION))
        return KVQ_ERR_FORMAT;
    const char *spec = kvqi_st_meta_get(f, "spec"), *dim_s = kvqi_st_meta_get(f, "dim");
    if (!spec || !dim_s) return KVQ_ERR_FORMAT;
    char *end;
    unsigned long dim = strtoul(dim_s, &end, 10);
    if (*end || dim == 0 || dim > KVQI_QUANT_MAX_DIM) return KVQ_ERR_FORMAT;
    kvq_config c;
    if (kvq_config_parse(spec, (uint32_t)dim, &c, NULL, 0) != KVQ_OK) return KVQ_ERR_FORMAT;
    char num[32];
    snprintf(num, sizeof num, "%u", c.bits);
    if (!meta_is(f, "bits", num) || !meta_is(f, "method", kvq_method_name(c.method)))
        return KVQ_ERR_FORMAT;
    snprintf(num, sizeof num, "%llu", (unsigned long long)c.seed);
    if (!meta_is(f, "seed", num)) return KVQ_ERR_FORMAT;
    kvq_quantizer *q;
    kvq_status st = kvq_quantizer_create(&c, &q);
    if (st != KVQ_OK) return st == KVQ_ERR_NOMEM ? st : KVQ_ERR_FORMAT;
    st = kvqi_rotation_check(&q->rot, f);
    if (st == KVQ_OK && q->m->load_tensors) st = q->m->load_tensors(q, f);
    snprintf(num, sizeof num, "%zu", q->code_size);
    if (st == KVQ_OK && !meta_is(f, "code_size", num)) st = KVQ_ERR_FORMAT;
    if (st != KVQ_OK) {
        kvq_quantizer_free(q);
        return st;
    }
    *out = q;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_quantizer_load(const char *path, kvq_quantizer **out) {
    if (!path || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    kvqi_st_file *f;
    kvq_status st = kvqi_st_read(path, &f);
    if (st != KVQ_OK) return st;
    st = load_from(f, out);
    kvqi_st_free(f);
    return st;
}
