/*
 * qjl.c - QJL, the quantized Johnson-Lindenstrauss transform (arXiv 2406.03482): keep
 * sign(Sx) for a Gaussian S (m x d, from the seed) and ||x||; <q, x> is estimated without
 * bias by ||x|| sqrt(pi/2)/m <Sq, sign(Sx)>. Decode returns the unbiased but noisy
 * reconstruction ||x|| sqrt(pi/2)/m S^T sign(Sx) (an approximation: QJL is meant for
 * scores). Code: [0,2) fp16 ||x||, [2, 2+ceil(m/8)) sign bits, bit i = (Sx)_i > 0.
 */
#include <math.h>
#include <stdlib.h>

#include "quant/quant.h"

kvq_status kvqi_qjl_init(kvqi_qjl *j, uint32_t m, uint32_t d, uint64_t seed) {
    j->m = m;
    j->d = d;
    j->S = kvqi_alloc_array((size_t)m * d, sizeof(float));
    if (!j->S) return KVQ_ERR_NOMEM;
    kvqi_rng r;
    kvqi_rng_seed(&r, kvqi_seed_mix(seed, 0x514a4cu)); /* "QJL" */
    for (size_t i = 0; i < (size_t)m * d; i++) j->S[i] = (float)kvqi_rng_normal(&r);
    return KVQ_OK;
}

void kvqi_qjl_free(kvqi_qjl *j) {
    kvqi_free(j->S);
    j->S = NULL;
}

void kvqi_qjl_signs(const kvq_quantizer *q, const kvqi_qjl *j, const float *x, uint8_t *bits) {
    float z[KVQI_QUANT_MAX_DIM];
    for (uint32_t i = 0; i < j->m; i++) z[i] = q->base->dot(j->S + (size_t)i * j->d, x, j->d);
    q->k->sign_pack(z, j->m, bits);
}

void kvqi_qjl_project(const kvq_quantizer *q, const kvqi_qjl *j, const float *x, float *z) {
    for (uint32_t i = 0; i < j->m; i++) z[i] = q->base->dot(j->S + (size_t)i * j->d, x, j->d);
}

void kvqi_qjl_reconstruct(const kvqi_qjl *j, const uint8_t *bits, float scale, float *out) {
    for (uint32_t i = 0; i < j->m; i++) {
        float s = (bits[i >> 3] >> (i & 7)) & 1 ? scale : -scale;
        const float *row = j->S + (size_t)i * j->d;
        for (uint32_t k = 0; k < j->d; k++) out[k] += s * row[k];
    }
}

/* ------------------------------------------------------------------ method */

#define QJL_MAX_M KVQI_QUANT_MAX_DIM

static kvq_status qjl_validate(const kvq_config *c, char *why, size_t n) {
    uint32_t m = c->proj_dim ? c->proj_dim : c->dim;
    if (m > QJL_MAX_M) {
        kvqi_set_msg(why, n, "proj_dim %u above %u", m, QJL_MAX_M);
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

static kvq_status qjl_init(kvq_quantizer *q) {
    kvqi_qjl *j = calloc(1, sizeof *j);
    if (!j) return KVQ_ERR_NOMEM;
    if (!q->cfg.proj_dim) q->cfg.proj_dim = q->cfg.dim;
    kvq_status st = kvqi_qjl_init(j, q->cfg.proj_dim, q->cfg.dim, q->cfg.seed);
    if (st != KVQ_OK) {
        free(j);
        return st;
    }
    q->state = j;
    return KVQ_OK;
}

static void qjl_destroy(kvq_quantizer *q) {
    if (q->state) kvqi_qjl_free(q->state);
    free(q->state);
    q->state = NULL;
}

static size_t qjl_code_size(const kvq_quantizer *q) { return 2 + ((size_t)q->cfg.proj_dim + 7) / 8; }

static size_t qjl_shared_size(const kvq_quantizer *q) {
    return (size_t)q->cfg.proj_dim * q->cfg.dim * sizeof(float);
}

static kvq_status qjl_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const kvqi_qjl *j = q->state;
    uint32_t d = q->cfg.dim;
    for (size_t i = 0; i < n; i++) {
        uint8_t *c = codes + i * q->code_size;
        kvqi_wr16(c, kvqi_fp32_to_fp16(kvqi_quant_norm(q, x + i * d, d)));
        kvqi_qjl_signs(q, j, x + i * d, c + 2);
    }
    return KVQ_OK;
}

static kvq_status qjl_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    const kvqi_qjl *j = q->state;
    uint32_t d = q->cfg.dim;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float *xi = x + i * d;
        memset(xi, 0, d * sizeof(float));
        kvqi_qjl_reconstruct(j, c + 2, kvqi_rd_half(c) * KVQI_SQRT_HALF_PI / (float)j->m, xi);
    }
    return KVQ_OK;
}

static kvq_status qjl_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                            size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    const kvqi_qjl *j = q->state;
    float z[QJL_MAX_M], zsum = 0.0f;
    kvqi_qjl_project(q, j, query, z);
    for (uint32_t i = 0; i < j->m; i++) zsum += z[i];
    const float c0 = KVQI_SQRT_HALF_PI / (float)j->m;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        scores[i] = kvqi_rd_half(c) * c0 * kvqi_qjl_signed_dot(q, z, zsum, c + 2, j->m);
    }
    return KVQ_OK;
}

static size_t qjl_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    const kvqi_qjl *j = q->state;
    if (cap < 1) return 0;
    t[0] = kvqi_tensor_f32("qjl.projection", j->S, j->m, j->d);
    return 1;
}

static kvq_status qjl_load(kvq_quantizer *q, const kvqi_st_file *f) {
    const kvqi_qjl *j = q->state;
    return kvqi_tensor_equals_f32(f, "qjl.projection", j->S, j->m, j->d) ? KVQ_OK : KVQ_ERR_FORMAT;
}

const kvqi_method kvqi_method_qjl = {
    .method = KVQ_METHOD_QJL,
    .name = "qjl",
    .validate = qjl_validate,
    .init = qjl_init,
    .destroy = qjl_destroy,
    .code_size = qjl_code_size,
    .shared_size = qjl_shared_size,
    .encode = qjl_encode,
    .decode = qjl_decode,
    .score = qjl_score,
    .save_tensors = qjl_save,
    .load_tensors = qjl_load,
};
