/*
 * turboquant_prod.c - TurboQuant's inner-product quantizer (arXiv 2504.19874, Alg. 2):
 * a (b-1)-bit turboquant_mse code, then 1-bit QJL on the residual r = Pi x - x^_mse (in
 * the rotated frame: S Pi is as Gaussian as S) with ||r|| kept, so
 * <q, x> ~ ||x|| <Pi q, u^> + ||r|| sqrt(pi/2)/m <S Pi q, sign(S r)> is unbiased.
 * Code: [0,2) fp16 ||x||, [2,2+P) (b-1)-bit indices (P = ceil(d(b-1)/8)),
 * [2+P,4+P) fp16 ||r||, [4+P, 4+P+ceil(m/8)) QJL sign bits.
 */
#include <math.h>
#include <stdlib.h>

#include "quant/quant.h"

typedef struct prod_state {
    unsigned mse_bits;
    size_t idx_bytes;
    float centroids[256];
    float thresholds[255];
    kvqi_qjl qjl;
} prod_state;

static kvq_status prod_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits < 2 || c->bits > 9) {
        kvqi_set_msg(why, n, "bits %u outside 2..9 (b-1 mse bits + 1 QJL bit)", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->dim < 2) {
        kvqi_set_msg(why, n, "dim %u: needs at least 2 coordinates", c->dim);
        return KVQ_ERR_UNSUPPORTED;
    }
    uint32_t m = c->proj_dim ? c->proj_dim : c->dim;
    if (m > KVQI_QUANT_MAX_DIM) {
        kvqi_set_msg(why, n, "proj_dim %u above %u", m, KVQI_QUANT_MAX_DIM);
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

static kvq_status prod_init(kvq_quantizer *q) {
    prod_state *s = calloc(1, sizeof *s);
    if (!s) return KVQ_ERR_NOMEM;
    s->mse_bits = q->cfg.bits - 1;
    s->idx_bytes = kvqi_packed_size(q->cfg.dim, s->mse_bits);
    double mse;
    kvq_status st = kvqi_lloyd_max(KVQI_DIST_BETA, (double)q->cfg.dim, s->mse_bits, s->centroids,
                                   s->thresholds, &mse);
    if (st == KVQ_OK) st = kvqi_qjl_init(&s->qjl, q->cfg.proj_dim, q->cfg.dim, q->cfg.seed);
    if (st != KVQ_OK) {
        kvqi_qjl_free(&s->qjl);
        free(s);
        return st;
    }
    q->state = s;
    return KVQ_OK;
}

static void prod_destroy(kvq_quantizer *q) {
    prod_state *s = q->state;
    if (s) kvqi_qjl_free(&s->qjl);
    free(s);
    q->state = NULL;
}

static size_t prod_code_size(const kvq_quantizer *q) {
    const prod_state *s = q->state;
    return 4 + s->idx_bytes + ((size_t)q->cfg.proj_dim + 7) / 8;
}

static size_t prod_shared_size(const kvq_quantizer *q) {
    const prod_state *s = q->state;
    return ((2u << s->mse_bits) - 1u) * sizeof(float) +
           (size_t)q->cfg.proj_dim * q->cfg.dim * sizeof(float);
}

static kvq_status prod_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const prod_state *s = q->state;
    uint32_t d = q->cfg.dim;
    float u[KVQI_QUANT_MAX_DIM], r[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        uint8_t *c = codes + i * q->code_size;
        float norm = kvqi_wr_half(c, kvqi_quant_norm(q, xi, d));
        kvqi_rotation_apply(&q->rot, xi, u, q->isa);
        float exact = kvqi_quant_norm(q, xi, d);
        float inv = exact > 0.0f ? 1.0f / exact : 0.0f;
        q->k->quantize_pack(u, d, inv, s->thresholds, s->mse_bits, c + 2);
        /* the residual against what a decoder rebuilds (fp16 norm included) */
        q->k->lut_decode(c + 2, d, s->mse_bits, s->centroids, norm, r);
        for (uint32_t k = 0; k < d; k++) r[k] = u[k] - r[k];
        kvqi_wr_half(c + 2 + s->idx_bytes, kvqi_quant_norm(q, r, d));
        kvqi_qjl_signs(q, &s->qjl, r, c + 4 + s->idx_bytes);
    }
    return KVQ_OK;
}

static kvq_status prod_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    const prod_state *s = q->state;
    uint32_t d = q->cfg.dim;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float *xi = x + i * d;
        q->k->lut_decode(c + 2, d, s->mse_bits, s->centroids, kvqi_rd_half(c), xi);
        float rn = kvqi_rd_half(c + 2 + s->idx_bytes);
        kvqi_qjl_reconstruct(&s->qjl, c + 4 + s->idx_bytes,
                             rn * KVQI_SQRT_HALF_PI / (float)s->qjl.m, xi);
        kvqi_rotation_inverse(&q->rot, xi, xi, q->isa);
    }
    return KVQ_OK;
}

static kvq_status prod_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                             size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    const prod_state *s = q->state;
    uint32_t d = q->cfg.dim, m = s->qjl.m;
    float qr[KVQI_QUANT_MAX_DIM], z[KVQI_QUANT_MAX_DIM], zsum = 0.0f;
    kvqi_rotation_apply(&q->rot, query, qr, q->isa);
    kvqi_qjl_project(q, &s->qjl, qr, z);
    for (uint32_t i = 0; i < m; i++) zsum += z[i];
    const float c0 = KVQI_SQRT_HALF_PI / (float)m;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float mse = kvqi_rd_half(c) * q->k->lut_dot(qr, c + 2, d, s->mse_bits, s->centroids);
        float res = kvqi_rd_half(c + 2 + s->idx_bytes) * c0 *
                    kvqi_qjl_signed_dot(q, z, zsum, c + 4 + s->idx_bytes, m);
        scores[i] = mse + res;
    }
    return KVQ_OK;
}

static size_t prod_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    const prod_state *s = q->state;
    if (cap < 3) return 0;
    uint32_t k = 1u << s->mse_bits;
    t[0] = kvqi_tensor_f32("codebook.centroids", s->centroids, k, 0);
    t[1] = kvqi_tensor_f32("codebook.thresholds", s->thresholds, k - 1, 0);
    t[2] = kvqi_tensor_f32("qjl.projection", s->qjl.S, s->qjl.m, s->qjl.d);
    return 3;
}

static kvq_status prod_load(kvq_quantizer *q, const kvqi_st_file *f) {
    const prod_state *s = q->state;
    uint32_t k = 1u << s->mse_bits;
    if (!kvqi_tensor_equals_f32(f, "codebook.centroids", s->centroids, k, 0) ||
        !kvqi_tensor_equals_f32(f, "codebook.thresholds", s->thresholds, k - 1, 0) ||
        !kvqi_tensor_equals_f32(f, "qjl.projection", s->qjl.S, s->qjl.m, s->qjl.d))
        return KVQ_ERR_FORMAT;
    return KVQ_OK;
}

const kvqi_method kvqi_method_turboquant_prod = {
    .method = KVQ_METHOD_TURBOQUANT_PROD,
    .name = "turboquant_prod",
    .validate = prod_validate,
    .init = prod_init,
    .destroy = prod_destroy,
    .code_size = prod_code_size,
    .shared_size = prod_shared_size,
    .encode = prod_encode,
    .decode = prod_decode,
    .score = prod_score,
    .save_tensors = prod_save,
    .load_tensors = prod_load,
};
