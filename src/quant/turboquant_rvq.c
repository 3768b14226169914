/*
 * turboquant_rvq.c - residual scalar quantization after a rotation (the seed's
 * "TurboQuant RVQ"; rotation and Lloyd-Max as in TurboQuant, arXiv 2504.19874): stage 1
 * quantizes y = Pi x * sqrt(d)/||x|| (coordinates ~ N(0,1)) with the b-bit Gaussian
 * Lloyd-Max codebook; each later stage quantizes the remaining residual, divided by its
 * RMS spread s_k, with the b-bit unit-variance Laplacian codebook (residuals are peaked).
 * Code: [0,2) fp16 ||x||, [2, 2R) fp16 s_2..s_R, then R blocks of ceil(d*b/8) bytes of
 * b-bit indices (stage 1 first). d=128, b=1, R=2: 36 bytes.
 */
#include <math.h>
#include <stdlib.h>

#include "quant/quant.h"

typedef struct rvq_state {
    size_t idx_bytes;
    float gauss_c[16], gauss_t[15];
    float lap_c[16], lap_t[15];
} rvq_state;

static kvq_status rvq_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits < 1 || c->bits > 4) {
        kvqi_set_msg(why, n, "bits %u outside 1..4 per pass", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->residuals < 1 || c->residuals > 4) {
        kvqi_set_msg(why, n, "residuals %u outside 1..4", c->residuals);
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

static kvq_status rvq_init(kvq_quantizer *q) {
    rvq_state *s = calloc(1, sizeof *s);
    if (!s) return KVQ_ERR_NOMEM;
    s->idx_bytes = kvqi_packed_size(q->cfg.dim, q->cfg.bits);
    double mse;
    kvq_status st = kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0.0, q->cfg.bits, s->gauss_c, s->gauss_t, &mse);
    if (st == KVQ_OK) st = kvqi_lloyd_max(KVQI_DIST_LAPLACE, 0.0, q->cfg.bits, s->lap_c, s->lap_t, &mse);
    if (st != KVQ_OK) {
        free(s);
        return st;
    }
    q->state = s;
    return KVQ_OK;
}

static void rvq_destroy(kvq_quantizer *q) {
    free(q->state);
    q->state = NULL;
}

static size_t rvq_code_size(const kvq_quantizer *q) {
    const rvq_state *s = q->state;
    return 2 * (size_t)q->cfg.residuals + q->cfg.residuals * s->idx_bytes;
}

static size_t rvq_shared_size(const kvq_quantizer *q) {
    return 2 * ((2u << q->cfg.bits) - 1u) * sizeof(float);
}

static inline const uint8_t *stage_idx(const kvq_quantizer *q, const uint8_t *c, unsigned k) {
    const rvq_state *s = q->state;
    return c + 2 * (size_t)q->cfg.residuals + k * s->idx_bytes;
}

static int is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

static kvq_status rvq_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const rvq_state *s = q->state;
    uint32_t d = q->cfg.dim, b = q->cfg.bits, R = q->cfg.residuals;
    /* 1 bit per pass, Hadamard, power-of-two dim: the fused kernel, same arithmetic */
    if (b == 1 && q->rot.kind == KVQI_ROT_HADAMARD && is_pow2(d) && d >= 8 && d <= 1024) {
        q->k->rvq1_batch(x, n, &q->rot.had, s->gauss_c, s->gauss_t, s->lap_c, s->lap_t, R, codes,
                         q->code_size);
        return KVQ_OK;
    }
    float y[KVQI_QUANT_MAX_DIM], rec[KVQI_QUANT_MAX_DIM];
    const float sqrt_d = sqrtf((float)d);
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        uint8_t *c = codes + i * q->code_size;
        float norm = kvqi_quant_norm(q, xi, d);
        kvqi_wr16(c, kvqi_fp32_to_fp16(norm));
        float a = norm > 0.0f ? sqrt_d / norm : 0.0f;
        kvqi_rotation_apply(&q->rot, xi, y, q->isa);
        uint8_t *idx = (uint8_t *)stage_idx(q, c, 0);
        q->k->quantize_pack(y, d, a, s->gauss_t, b, idx);
        q->k->lut_decode(idx, d, b, s->gauss_c, 1.0f, rec);
        for (uint32_t k = 0; k < d; k++) y[k] = y[k] * a - rec[k]; /* residual, unit scale */
        for (unsigned st = 1; st < R; st++) {
            float spread = sqrtf(q->base->dot(y, y, d) / (float)d);
            float sh = kvqi_wr_half(c + 2 * st, spread);
            idx = (uint8_t *)stage_idx(q, c, st);
            q->k->quantize_pack(y, d, sh > 0.0f ? 1.0f / sh : 0.0f, s->lap_t, b, idx);
            q->k->lut_decode(idx, d, b, s->lap_c, sh, rec);
            for (uint32_t k = 0; k < d; k++) y[k] = y[k] - rec[k];
        }
    }
    return KVQ_OK;
}

static kvq_status rvq_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    const rvq_state *s = q->state;
    uint32_t d = q->cfg.dim, b = q->cfg.bits, R = q->cfg.residuals;
    float part[KVQI_QUANT_MAX_DIM];
    const float inv_sqrt_d = 1.0f / sqrtf((float)d);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float *xi = x + i * d;
        q->k->lut_decode(stage_idx(q, c, 0), d, b, s->gauss_c, 1.0f, xi);
        for (unsigned st = 1; st < R; st++) {
            q->k->lut_decode(stage_idx(q, c, st), d, b, s->lap_c, kvqi_rd_half(c + 2 * st), part);
            for (uint32_t k = 0; k < d; k++) xi[k] += part[k];
        }
        float scale = kvqi_rd_half(c) * inv_sqrt_d;
        for (uint32_t k = 0; k < d; k++) xi[k] *= scale;
        kvqi_rotation_inverse(&q->rot, xi, xi, q->isa);
    }
    return KVQ_OK;
}

static kvq_status rvq_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                            size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    const rvq_state *s = q->state;
    uint32_t d = q->cfg.dim, b = q->cfg.bits, R = q->cfg.residuals;
    float qr[KVQI_QUANT_MAX_DIM];
    kvqi_rotation_apply(&q->rot, query, qr, q->isa);
    const float inv_sqrt_d = 1.0f / sqrtf((float)d);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float acc = q->k->lut_dot(qr, stage_idx(q, c, 0), d, b, s->gauss_c);
        for (unsigned st = 1; st < R; st++)
            acc += kvqi_rd_half(c + 2 * st) * q->k->lut_dot(qr, stage_idx(q, c, st), d, b, s->lap_c);
        scores[i] = acc * kvqi_rd_half(c) * inv_sqrt_d;
    }
    return KVQ_OK;
}

static size_t rvq_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    const rvq_state *s = q->state;
    if (cap < 4) return 0;
    uint32_t k = 1u << q->cfg.bits;
    t[0] = kvqi_tensor_f32("codebook.gaussian.centroids", s->gauss_c, k, 0);
    t[1] = kvqi_tensor_f32("codebook.gaussian.thresholds", s->gauss_t, k - 1, 0);
    t[2] = kvqi_tensor_f32("codebook.laplace.centroids", s->lap_c, k, 0);
    t[3] = kvqi_tensor_f32("codebook.laplace.thresholds", s->lap_t, k - 1, 0);
    return 4;
}

static kvq_status rvq_load(kvq_quantizer *q, const kvqi_st_file *f) {
    const rvq_state *s = q->state;
    uint32_t k = 1u << q->cfg.bits;
    if (!kvqi_tensor_equals_f32(f, "codebook.gaussian.centroids", s->gauss_c, k, 0) ||
        !kvqi_tensor_equals_f32(f, "codebook.gaussian.thresholds", s->gauss_t, k - 1, 0) ||
        !kvqi_tensor_equals_f32(f, "codebook.laplace.centroids", s->lap_c, k, 0) ||
        !kvqi_tensor_equals_f32(f, "codebook.laplace.thresholds", s->lap_t, k - 1, 0))
        return KVQ_ERR_FORMAT;
    return KVQ_OK;
}

const kvqi_method kvqi_method_turboquant_rvq = {
    .method = KVQ_METHOD_TURBOQUANT_RVQ,
    .name = "turboquant_rvq",
    .validate = rvq_validate,
    .init = rvq_init,
    .destroy = rvq_destroy,
    .code_size = rvq_code_size,
    .shared_size = rvq_shared_size,
    .encode = rvq_encode,
    .decode = rvq_decode,
    .score = rvq_score,
    .save_tensors = rvq_save,
    .load_tensors = rvq_load,
};
