/*
 * turboquant_mse.c - TurboQuant's MSE quantizer (arXiv 2504.19874, Alg. 1): rotate,
 * quantize each coordinate of u = Pi(x/||x||) with the b-bit Lloyd-Max codebook of the
 * Beta marginal of a coordinate of a random unit vector in d dims, keep ||x|| in fp16.
 * Code: [0,2) fp16 ||x||, [2, 2+ceil(d*b/8)) b-bit indices, LSB-first.
 */
#include <math.h>
#include <stdlib.h>

#include "quant/quant.h"

typedef struct mse_state {
    float centroids[256];
    float thresholds[255];
    double mse; /* expected per-coordinate error of the unit vector (times d: ~ table) */
} mse_state;

static int is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

static kvq_status mse_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits < 1 || c->bits > 8) {
        kvqi_set_msg(why, n, "bits %u outside 1..8", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->dim < 2) {
        kvqi_set_msg(why, n, "dim %u: needs at least 2 coordinates", c->dim);
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

static kvq_status mse_init(kvq_quantizer *q) {
    mse_state *s = calloc(1, sizeof *s);
    if (!s) return KVQ_ERR_NOMEM;
    kvq_status st = kvqi_lloyd_max(KVQI_DIST_BETA, (double)q->cfg.dim, q->cfg.bits,
                                   s->centroids, s->thresholds, &s->mse);
    if (st != KVQ_OK) {
        free(s);
        return st;
    }
    q->state = s;
    return KVQ_OK;
}

static void mse_destroy(kvq_quantizer *q) {
    free(q->state);
    q->state = NULL;
}

static size_t mse_code_size(const kvq_quantizer *q) {
    return 2 + kvqi_packed_size(q->cfg.dim, q->cfg.bits);
}

static size_t mse_shared_size(const kvq_quantizer *q) {
    return ((2u << q->cfg.bits) - 1u) * sizeof(float);
}

/* The 1-bit code is the sign of H D x: the fused kernel gives it without normalising. */
static int mse_fused_signs(const kvq_quantizer *q) {
    return q->cfg.bits == 1 && q->rot.kind == KVQI_ROT_HADAMARD && is_pow2(q->cfg.dim) &&
           q->cfg.dim >= 16 && q->cfg.dim <= 1024;
}

#define FUSED_BATCH 64

static kvq_status mse_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const mse_state *s = q->state;
    uint32_t d = q->cfg.dim;
    size_t cs = q->code_size;
    if (mse_fused_signs(q)) {
        uint8_t bits[FUSED_BATCH * 128];
        float norms[FUSED_BATCH];
        uint16_t half[FUSED_BATCH];
        size_t stride = d / 8;
        for (size_t i = 0; i < n; i += FUSED_BATCH) {
            size_t rows = KVQI_MIN((size_t)FUSED_BATCH, n - i);
            q->k->hadamard_sign_batch(x + i * d, rows, d, q->rot.had.sign1, bits, stride, norms,
                                      NULL);
            q->k->fp16_from_f32(norms, rows, half);
            for (size_t r = 0; r < rows; r++) {
                uint8_t *c = codes + (i + r) * cs;
                kvqi_wr16(c, half[r]);
                memcpy(c + 2, bits + r * stride, stride);
            }
        }
        return KVQ_OK;
    }
    float u[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        uint8_t *c = codes + i * cs;
        float norm = kvqi_quant_norm(q, xi, d);
        kvqi_wr16(c, kvqi_fp32_to_fp16(norm));
        kvqi_rotation_apply(&q->rot, xi, u, q->isa);
        float inv = norm > 0.0f ? 1.0f / norm : 0.0f;
        q->k->quantize_pack(u, d, inv, s->thresholds, q->cfg.bits, c + 2);
    }
    return KVQ_OK;
}

static kvq_status mse_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    const mse_state *s = q->state;
    uint32_t d = q->cfg.dim;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float *xi = x + i * d;
        q->k->lut_decode(c + 2, d, q->cfg.bits, s->centroids, kvqi_rd_half(c), xi);
        kvqi_rotation_inverse(&q->rot, xi, xi, q->isa);
    }
    return KVQ_OK;
}

/* <q, x^> = ||x|| <Pi q, u^>: rotate the query once, then a table look-up per code. */
static kvq_status mse_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                            size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    const mse_state *s = q->state;
    uint32_t d = q->cfg.dim;
    float qr[KVQI_QUANT_MAX_DIM];
    kvqi_rotation_apply(&q->rot, query, qr, q->isa);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        scores[i] = kvqi_rd_half(c) * q->k->lut_dot(qr, c + 2, d, q->cfg.bits, s->centroids);
    }
    return KVQ_OK;
}

static size_t mse_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    const mse_state *s = q->state;
    if (cap < 2) return 0;
    uint32_t k = 1u << q->cfg.bits;
    t[0] = kvqi_tensor_f32("codebook.centroids", s->centroids, k, 0);
    t[1] = kvqi_tensor_f32("codebook.thresholds", s->thresholds, k - 1, 0);
    return 2;
}

static kvq_status mse_load(kvq_quantizer *q, const kvqi_st_file *f) {
    const mse_state *s = q->state;
    uint32_t k = 1u << q->cfg.bits;
    if (!kvqi_tensor_equals_f32(f, "codebook.centroids", s->centroids, k, 0) ||
        !kvqi_tensor_equals_f32(f, "codebook.thresholds", s->thresholds, k - 1, 0))
        return KVQ_ERR_FORMAT;
    return KVQ_OK;
}

const kvqi_method kvqi_method_turboquant_mse = {
    .method = KVQ_METHOD_TURBOQUANT_MSE,
    .name = "turboquant_mse",
    .validate = mse_validate,
    .init = mse_init,
    .destroy = mse_destroy,
    .code_size = mse_code_size,
    .shared_size = mse_shared_size,
    .encode = mse_encode,
    .decode = mse_decode,
    .score = mse_score,
    .save_tensors = mse_save,
    .load_tensors = mse_load,
};
