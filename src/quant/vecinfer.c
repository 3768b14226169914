/*
 * vecinfer.c - VecInfer (arXiv 2510.06175): outlier-suppressed product VQ of keys.
 * Per-channel smoothing lambda_j = sqrt(max_i |K_ij|) from calibration keys, then a
 * randomized Hadamard rotation, K' = H(K / lambda); K' is cut into sub-vectors of sub_dim
 * coordinates, each coded by the index of its nearest centroid in ONE k-means codebook of
 * 2^bits centroids shared by every sub-space (after the rotation they are alike). The
 * inverse transform is folded into the query, q' = H(q * lambda), so <q, k> = <q', k'> and
 * a score is a sum of table look-ups: LUT[s][c] = <q'_s, centroid_c>.
 * Code: n_sub indices of `bits` bits, LSB-first (bits = 8, sub_dim = 8: one byte per 8
 * coordinates = 1 bit per element, 16x below fp16). Shared, not counted per vector:
 * lambda (dim floats), the codebook (2^bits x sub_dim floats) and the Hadamard signs.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu/vecinfer_kernels.h"
#include "quant/quant.h"

/* Sub-vectors k-means sees at most (a seeded subsample beyond that) and its iterations. */
#define VI_FIT_MAX_POINTS 32768u
#define VI_FIT_ITERS 12u
/* The look-up table lives on the stack: at most this many floats per pass of sub-spaces. */
#define VI_LUT_MAX 16384u

typedef struct vi_state {
    uint32_t n_sub, k;
    kvqi_hadamard had;
    float *lambda; /* dim */
    float *cb;     /* k x sub_dim */
    float *cb_t;   /* sub_dim x k */
    const kvqi_vecinfer_kernels *kern;
} vi_state;

static kvq_status vi_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits < 1 || c->bits > 8) {
        kvqi_set_msg(why, n, "bits %u outside 1..8 (codebook of 2^bits centroids)", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->sub_dim < 1 || c->sub_dim > 64 || c->dim % c->sub_dim != 0) {
        kvqi_set_msg(why, n, "sub_dim %u must be 1..64 and divide dim %u", c->sub_dim, c->dim);
        return KVQ_ERR_UNSUPPORTED;
    }
    return kvqi_artifact_check(c, why, n);
}

static void vi_destroy(kvq_quantizer *q) {
    vi_state *s = q->state;
    if (!s) return;
    kvqi_hadamard_free(&s->had);
    kvqi_free(s->lambda);
    kvqi_free(s->cb);
    kvqi_free(s->cb_t);
    free(s);
    q->state = NULL;
}

static kvq_status vi_load(kvq_quantizer *q, const kvqi_st_file *f);

static kvq_status vi_init(kvq_quantizer *q) {
    kvqi_st_file *art = NULL;
    q->fitted = 0; /* learned state: kvq_quantizer_fit or an artifact sets it */
    if (q->cfg.artifact[0]) {
        kvq_status st = kvqi_artifact_open(&q->cfg, &art, &q->cfg.seed);
        if (st != KVQ_OK) return st;
    }
    vi_state *s = calloc(1, sizeof *s);
    if (!s) {
        kvqi_st_free(art);
        return KVQ_ERR_NOMEM;
    }
    q->state = s;
    s->n_sub = q->cfg.dim / q->cfg.sub_dim;
    s->k = 1u << q->cfg.bits;
    /* the SIMD kernels take the centroids 16 at a time */
    s->kern = kvqi_vecinfer_kernels_for(s->k % 16 == 0 ? q->isa : KVQ_ISA_SCALAR);
    kvq_status st = kvqi_hadamard_init(&s->had, q->cfg.dim, kvqi_seed_mix(q->cfg.seed, 0x56454349u));
    s->lambda = kvqi_alloc_array(q->cfg.dim, sizeof(float));
    s->cb = kvqi_alloc_array((size_t)s->k * q->cfg.sub_dim, sizeof(float));
    s->cb_t = kvqi_alloc_array((size_t)s->k * q->cfg.sub_dim, sizeof(float));
    if (st == KVQ_OK && (!s->lambda || !s->cb || !s->cb_t)) st = KVQ_ERR_NOMEM;
    if (st == KVQ_OK && art) st = vi_load(q, art);
    kvqi_st_free(art);
    if (st != KVQ_OK) vi_destroy(q);
    return st;
}

static size_t vi_code_size(const kvq_quantizer *q) {
    return kvqi_packed_size(q->cfg.dim / q->cfg.sub_dim, q->cfg.bits);
}

static size_t vi_shared_size(const kvq_quantizer *q) {
    const vi_state *s = q->state;
    return ((size_t)q->cfg.dim * (s->had.two_pass ? 3 : 2) + (size_t)s->k * q->cfg.sub_dim) *
           sizeof(float);
}

static void vi_set_codebook(vi_state *s, uint32_t sub_dim) {
    for (uint32_t c = 0; c < s->k; c++)
        for (uint32_t t = 0; t < sub_dim; t++)
            s->cb_t[(size_t)t * s->k + c] = s->cb[(size_t)c * sub_dim + t];
}

/* k' = H(k / lambda) */
static void vi_forward(const kvq_quantizer *q, const float *x, float *y) {
    const vi_state *s = q->state;
    for (uint32_t j = 0; j < q->cfg.dim; j++) y[j] = x[j] / s->lambda[j];
    kvqi_hadamard_apply(&s->had, y, q->isa);
}

static kvq_status vi_fit(kvq_quantizer *q, const float *x, size_t n) {
    vi_state *s = q->state;
    const uint32_t d = q->cfg.dim, sd = q->cfg.sub_dim;
    size_t total;
    if (kvqi_mul_size(n, s->n_sub, &total) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    if (total < s->k) return KVQ_ERR_INVALID_ARG; /* fewer sub-vectors than centroids */
    for (uint32_t j = 0; j < d; j++) {
        float m = 0.0f;
        for (size_t i = 0; i < n; i++) {
            float a = fabsf(x[i * d + j]);
            if (!(a <= 3.0e38f)) return KVQ_ERR_INVALID_ARG; /* NaN or inf */
            if (a > m) m = a;
        }
        /* a channel that never moves keeps scale 1; tiny ones are floored so 1/lambda stays finite */
        s->lambda[j] = m > 0.0f ? KVQI_MAX(sqrtf(m), 1e-6f) : 1.0f;
    }
    /* rows to take: all, or a seeded subsample of whole rows */
    size_t rows = n, max_rows = KVQI_MAX((size_t)1, VI_FIT_MAX_POINTS / s->n_sub);
    if (rows > max_rows) rows = max_rows;
    if (rows * s->n_sub < s->k) rows = (s->k + s->n_sub - 1) / s->n_sub;
    float *pts = kvqi_alloc_array(rows * s->n_sub, (size_t)sd * sizeof(float));
    if (!pts) return KVQ_ERR_NOMEM;
    kvqi_rng rng;
    kvqi_rng_seed(&rng, kvqi_seed_mix(q->cfg.seed, 0x53414d50u));
    for (size_t r = 0; r < rows; r++) {
        /* rows == n: every row once; else evenly spaced rows with a seeded offset */
        size_t i = rows == n ? r : (size_t)(((double)r + kvqi_rng_uniform(&rng)) * (double)n / (double)rows);
        if (i >= n) i = n - 1;
        vi_forward(q, x + i * d, pts + r * d);
    }
    kvq_status st = kvqi_kmeans(pts, rows * s->n_sub, sd, s->k, VI_FIT_ITERS,
                                kvqi_seed_mix(q->cfg.seed, 0x4b4d4e53u), s->cb, NULL);
    kvqi_free(pts);
    if (st != KVQ_OK) return st;
    vi_set_codebook(s, sd);
    q->fitted = 1;
    return KVQ_OK;
}

static kvq_status vi_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const vi_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim, sd = q->cfg.sub_dim;
    float y[KVQI_QUANT_MAX_DIM];
    uint8_t idx[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        vi_forward(q, x + i * d, y);
        for (uint32_t t = 0; t < s->n_sub; t++)
            idx[t] = (uint8_t)s->kern->nearest(y + (size_t)t * sd, sd, s->cb_t, s->k);
        kvqi_pack_bits(idx, s->n_sub, q->cfg.bits, codes + i * q->code_size);
    }
    return KVQ_OK;
}

static kvq_status vi_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    const vi_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim, sd = q->cfg.sub_dim;
    uint8_t idx[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        float *xi = x + i * d;
        kvqi_unpack_bits(codes + i * q->code_size, s->n_sub, q->cfg.bits, idx);
        for (uint32_t t = 0; t < s->n_sub; t++)
            memcpy(xi + (size_t)t * sd, s->cb + (size_t)idx[t] * sd, sd * sizeof(float));
        kvqi_hadamard_inverse(&s->had, xi, q->isa);
        for (uint32_t j = 0; j < d; j++) xi[j] *= s->lambda[j];
    }
    return KVQ_OK;
}

/* <q, lambda * H^T c> = <H(q * lambda), c>: transform the query once, then look-ups. */
static kvq_status vi_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                           size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    const vi_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim, sd = q->cfg.sub_dim, k = s->k;
    float qp[KVQI_QUANT_MAX_DIM], lut[VI_LUT_MAX], part[64];
    uint8_t idx[KVQI_QUANT_MAX_DIM];
    for (uint32_t j = 0; j < d; j++) qp[j] = query[j] * s->lambda[j];
    kvqi_hadamard_apply(&s->had, qp, q->isa);
    const uint32_t per_pass = VI_LUT_MAX / k; /* sub-spaces per table (>= 64) */
    for (uint32_t s0 = 0; s0 < s->n_sub; s0 += per_pass) {
        uint32_t ns = KVQI_MIN(per_pass, s->n_sub - s0);
        s->kern->lut_build(qp + (size_t)s0 * sd, ns, sd, s->cb_t, k, lut);
        if (q->cfg.bits == 8) {
            if (s0 == 0) {
                s->kern->lut_score8(lut, ns, k, codes, q->code_size, n, scores);
                continue;
            }
            for (size_t i = 0; i < n; i += 64) {
                size_t m = KVQI_MIN((size_t)64, n - i);
                s->kern->lut_score8(lut, ns, k, codes + i * q->code_size + s0, q->code_size, m, part);
                for (size_t r = 0; r < m; r++) scores[i + r] += part[r];
            }
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            kvqi_unpack_bits(codes + i * q->code_size, s->n_sub, q->cfg.bits, idx);
            float acc = 0.0f;
            for (uint32_t t = 0; t < ns; t++) acc += lut[(size_t)t * k + idx[s0 + t]];
            scores[i] = s0 == 0 ? acc : scores[i] + acc;
        }
    }
    return KVQ_OK;
}

static size_t vi_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    const vi_state *s = q->state;
    if (!q->fitted || cap < 4) return 0;
    size_t n = 0;
    t[n++] = kvqi_tensor_f32("vecinfer.lambda", s->lambda, q->cfg.dim, 0);
    t[n++] = kvqi_tensor_f32("vecinfer.codebook", s->cb, s->k, q->cfg.sub_dim);
    t[n++] = kvqi_tensor_f32("vecinfer.hadamard_sign1", s->had.sign1, q->cfg.dim, 0);
    if (s->had.two_pass) t[n++] = kvqi_tensor_f32("vecinfer.hadamard_sign2", s->had.sign2, q->cfg.dim, 0);
    return n;
}

/* Take a float tensor of exactly this shape whose values are all finite. */
static int take_f32(const kvqi_st_file *f, const char *name, uint64_t a, uint64_t b, float *out) {
    const kvqi_st_tensor *t = kvqi_st_find(f, name);
    if (!t || t->dtype != KVQI_F32 || t->ndim != (b ? 2u : 1u) || t->shape[0] != a ||
        (b && t->shape[1] != b) || t->nbytes != (size_t)(a * (b ? b : 1) * sizeof(float)))
        return 0;
    memcpy(out, t->data, t->nbytes);
    for (size_t i = 0; i < t->nbytes / sizeof(float); i++)
        if (!isfinite(out[i])) return 0;
    return 1;
}

static kvq_status vi_load(kvq_quantizer *q, const kvqi_st_file *f) {
    vi_state *s = q->state;
    const uint32_t d = q->cfg.dim;
    if (!take_f32(f, "vecinfer.lambda", d, 0, s->lambda) ||
        !take_f32(f, "vecinfer.codebook", s->k, q->cfg.sub_dim, s->cb) ||
        !kvqi_tensor_equals_f32(f, "vecinfer.hadamard_sign1", s->had.sign1, d, 0) ||
        (s->had.two_pass && !kvqi_tensor_equals_f32(f, "vecinfer.hadamard_sign2", s->had.sign2, d, 0)))
        return KVQ_ERR_FORMAT;
    for (uint32_t j = 0; j < d; j++)
        if (!(s->lambda[j] > 0.0f)) return KVQ_ERR_FORMAT;
    vi_set_codebook(s, q->cfg.sub_dim);
    q->fitted = 1;
    return KVQ_OK;
}

const kvqi_method kvqi_method_vecinfer = {
    .method = KVQ_METHOD_VECINFER,
    .name = "vecinfer",
    .validate = vi_validate,
    .init = vi_init,
    .destroy = vi_destroy,
    .code_size = vi_code_size,
    .shared_size = vi_shared_size,
    .encode = vi_encode,
    .decode = vi_decode,
    .score = vi_score,
    .fit = vi_fit,
    .save_tensors = vi_save,
    .load_tensors = vi_load,
};
