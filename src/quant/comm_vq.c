/*
 * comm_vq.c - CommVQ (arXiv 2506.18879): additive VQ of keys BEFORE RoPE with codewords
 * that commute with RoPE. A head vector is dim/2 RoPE pairs; on each pair a codeword acts
 * as a scaled rotation [[a, -b], [b, a]] (the complex number a + ib), which commutes with
 * every RoPE rotation, so RoPE_p(sum of codewords) = sum of RoPE_p(codeword): decode can
 * apply RoPE at the stored position, and a score can rotate the query instead of the key.
 * Training: residual k-means to start, then EM - E: greedy residual assignment; M: per
 * codeword and pair, the operator W mapping the position phasor u = (cos phi, sin phi) to
 * the RoPE'd residual t, over seeded random positions: the moments sum t u^T are projected
 * onto the commuting set (P(A) = [[a, -b], [b, a]], a = (A00 + A11)/2, b = (A10 - A01)/2)
 * before solving, which is the least squares constrained to that set. The unconstrained
 * 2x2 solution is not used: with few points or slow pairs (phi ~ 0 for every position)
 * its normal equations are singular.
 * Code: n_codebooks indices of `bits` bits (LSB-first), then the int32 position.
 * 4 one-byte codes at dim 128: 4 bytes of codes (64x below fp16) + 4 of position (32x
 * counted whole). Shared: the codebooks, n_codebooks x 2^bits x dim floats.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu/vecinfer_kernels.h"
#include "quant/calib.h"
#include "quant/quant.h"

#define CV_FIT_MAX_ROWS 4096u
#define CV_KMEANS_ITERS 8u
#define CV_EM_ITERS 3u
#define CV_TRAIN_POSITIONS 8192u /* positions drawn for the M-step's phasors */

typedef struct cv_state {
    uint32_t n_pairs, m, k;
    uint32_t *pair_a, *pair_b; /* coordinates of pair j */
    double *freq;              /* base^(-2j/dim) */
    float *cw;                 /* m x k x dim, pre-RoPE, key layout */
    float *cw_t;               /* m x dim x k: each codebook transposed for the search kernel */
    const kvqi_vecinfer_kernels *kern; /* nearest codeword (shared with vecinfer) */
} cv_state;

static kvq_status cv_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits < 1 || c->bits > 8) {
        kvqi_set_msg(why, n, "bits %u outside 1..8 (2^bits codewords per codebook)", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->dim < 2 || c->dim % 2) {
        kvqi_set_msg(why, n, "dim %u: RoPE needs an even dim", c->dim);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->n_codebooks < 1 || c->n_codebooks > 16) {
        kvqi_set_msg(why, n, "n_codebooks %u outside 1..16", c->n_codebooks);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->rope_pairing > KVQ_ROPE_NEOX || !(c->rope_base > 1.0f) || !isfinite(c->rope_base)) {
        kvqi_set_msg(why, n, "rope pairing %u / base %g not usable", c->rope_pairing,
                     (double)c->rope_base);
        return KVQ_ERR_UNSUPPORTED;
    }
    return kvqi_artifact_check(c, why, n);
}

static void pair_coords(uint32_t dim, uint32_t pairing, uint32_t j, uint32_t *a, uint32_t *b) {
    if (pairing == KVQ_ROPE_NEOX) {
        *a = j;
        *b = j + dim / 2;
    } else {
        *a = 2 * j;
        *b = 2 * j + 1;
    }
}

void kvqi_rope_apply(float *x, uint32_t dim, uint32_t pairing, float base, int64_t pos) {
    for (uint32_t j = 0; j < dim / 2; j++) {
        uint32_t a, b;
        pair_coords(dim, pairing, j, &a, &b);
        double phi = (double)pos * pow((double)base, -2.0 * j / dim);
        double c = cos(phi), s = sin(phi), xa = x[a], xb = x[b];
        x[a] = (float)(xa * c - xb * s);
        x[b] = (float)(xa * s + xb * c);
    }
}

static void cv_destroy(kvq_quantizer *q) {
    cv_state *s = q->state;
    if (!s) return;
    kvqi_free(s->pair_a);
    kvqi_free(s->pair_b);
    kvqi_free(s->freq);
    kvqi_free(s->cw);
    kvqi_free(s->cw_t);
    free(s);
    q->state = NULL;
}

static kvq_status cv_load(kvq_quantizer *q, const kvqi_st_file *f);

static kvq_status cv_init(kvq_quantizer *q) {
    kvqi_st_file *art = NULL;
    q->fitted = 0; /* learned state: kvq_quantizer_fit or an artifact sets it */
    if (q->cfg.artifact[0]) {
        kvq_status st = kvqi_artifact_open(&q->cfg, &art, &q->cfg.seed);
        if (st != KVQ_OK) return st;
    }
    cv_state *s = calloc(1, sizeof *s);
    if (!s) {
        kvqi_st_free(art);
        return KVQ_ERR_NOMEM;
    }
    q->state = s;
    const uint32_t d = q->cfg.dim;
    s->n_pairs = d / 2;
    s->m = q->cfg.n_codebooks;
    s->k = 1u << q->cfg.bits;
    s->pair_a = kvqi_alloc_array(s->n_pairs, sizeof(uint32_t));
    s->pair_b = kvqi_alloc_array(s->n_pairs, sizeof(uint32_t));
    s->freq = kvqi_alloc_array(s->n_pairs, sizeof(double));
    s->cw = kvqi_calloc_array((size_t)s->m * s->k, (size_t)d * sizeof(float));
    s->cw_t = kvqi_calloc_array((size_t)s->m * s->k, (size_t)d * sizeof(float));
    s->kern = kvqi_vecinfer_kernels_for(s->k % 16 == 0 ? q->isa : KVQ_ISA_SCALAR);
    kvq_status st = (s->pair_a && s->pair_b && s->freq && s->cw && s->cw_t) ? KVQ_OK : KVQ_ERR_NOMEM;
    for (uint32_t j = 0; st == KVQ_OK && j < s->n_pairs; j++) {
        pair_coords(d, q->cfg.rope_pairing, j, &s->pair_a[j], &s->pair_b[j]);
        s->freq[j] = pow((double)q->cfg.rope_base, -2.0 * j / d);
    }
    if (st == KVQ_OK && art) st = cv_load(q, art);
    kvqi_st_free(art);
    if (st != KVQ_OK) cv_destroy(q);
    return st;
}

static size_t cv_packed(const kvq_quantizer *q) {
    return kvqi_packed_size(q->cfg.n_codebooks, q->cfg.bits);
}

static size_t cv_code_size(const kvq_quantizer *q) { return cv_packed(q) + 4; }

static size_t cv_shared_size(const kvq_quantizer *q) {
    const cv_state *s = q->state;
    return (size_t)s->m * s->k * q->cfg.dim * sizeof(float);
}

static const float *codeword(const cv_state *s, uint32_t dim, uint32_t m, uint32_t c) {
    return s->cw + ((size_t)m * s->k + c) * dim;
}

static void cv_transpose(cv_state *s, uint32_t d) {
    for (uint32_t m = 0; m < s->m; m++)
        for (uint32_t c = 0; c < s->k; c++)
            for (uint32_t j = 0; j < d; j++)
                s->cw_t[((size_t)m * d + j) * s->k + c] = s->cw[((size_t)m * s->k + c) * d + j];
}

/* Greedy residual assignment: codebook by codebook, the codeword nearest the residual
 * (squared distances summed in coordinate order on every ISA: the same codes). */
static void cv_assign(const cv_state *s, uint32_t d, const float *x, uint8_t *idx, float *r) {
    memcpy(r, x, d * sizeof(float));
    for (uint32_t m = 0; m < s->m; m++) {
        uint32_t best = s->kern->nearest(r, d, s->cw_t + (size_t)m * d * s->k, s->k);
        idx[m] = (uint8_t)best;
        const float *w = codeword(s, d, m, best);
        for (uint32_t j = 0; j < d; j++) r[j] -= w[j];
    }
}

static void cv_sum(const cv_state *s, uint32_t d, const uint8_t *idx, float *x) {
    memset(x, 0, d * sizeof(float));
    for (uint32_t m = 0; m < s->m; m++) {
        const float *w = codeword(s, d, m, idx[m]);
        for (uint32_t j = 0; j < d; j++) x[j] += w[j];
    }
}

static void rope_with(const cv_state *s, float *x, int64_t pos) {
    for (uint32_t j = 0; j < s->n_pairs; j++) {
        double phi = (double)pos * s->freq[j], c = cos(phi), sn = sin(phi);
        double xa = x[s->pair_a[j]], xb = x[s->pair_b[j]];
        x[s->pair_a[j]] = (float)(xa * c - xb * sn);
        x[s->pair_b[j]] = (float)(xa * sn + xb * c);
    }
}

static kvq_status cv_fit(kvq_quantizer *q, const float *x, size_t n) {
    cv_state *s = q->state;
    const uint32_t d = q->cfg.dim, M = s->m, K = s->k;
    size_t rows = KVQI_MIN(n, (size_t)CV_FIT_MAX_ROWS);
    if (rows < K) return KVQ_ERR_INVALID_ARG; /* fewer rows than codewords */
    for (size_t i = 0; i < n * d; i++)
        if (!isfinite(x[i])) return KVQ_ERR_INVALID_ARG;
    float *data = kvqi_alloc_array(rows, (size_t)d * sizeof(float));
    float *res = kvqi_alloc_array(rows, (size_t)d * sizeof(float));
    uint8_t *codes = kvqi_alloc_array(rows, M);
    uint32_t *assign = kvqi_alloc_array(rows, sizeof(uint32_t));
    int32_t *pos = kvqi_alloc_array(rows, sizeof(int32_t));
    /* per codeword and pair: sum t u^T (4) and sum |u|^2 */
    size_t acc_n = (size_t)K * s->n_pairs * 5;
    double *acc = kvqi_alloc_array(acc_n, sizeof(double));
    uint32_t *count = kvqi_alloc_array(K, sizeof(uint32_t));
    kvq_status st = (data && res && codes && assign && pos && acc && count) ? KVQ_OK : KVQ_ERR_NOMEM;
    kvqi_rng rng;
    kvqi_rng_seed(&rng, kvqi_seed_mix(q->cfg.seed, 0x434f4d4du));
    for (size_t r = 0; st == KVQ_OK && r < rows; r++) {
        size_t i = rows == n ? r : (size_t)(((double)r + kvqi_rng_uniform(&rng)) * (double)n / (double)rows);
        memcpy(data + r * d, x + KVQI_MIN(i, n - 1) * d, d * sizeof(float));
    }
    /* start: residual k-means, one codebook per stage */
    if (st == KVQ_OK) memcpy(res, data, rows * d * sizeof(float));
    for (uint32_t m = 0; st == KVQ_OK && m < M; m++) {
        float *cb = s->cw + (size_t)m * K * d;
        st = kvqi_kmeans(res, rows, d, K, CV_KMEANS_ITERS, kvqi_seed_mix(q->cfg.seed, 0x4b4d00u + m),
                         cb, assign);
        for (size_t r = 0; st == KVQ_OK && r < rows; r++)
            for (uint32_t j = 0; j < d; j++) res[r * d + j] -= cb[(size_t)assign[r] * d + j];
    }
    for (uint32_t it = 0; st == KVQ_OK && it < CV_EM_ITERS; it++) {
        cv_transpose(s, d);
        /* E-step */
        for (size_t r = 0; r < rows; r++) cv_assign(s, d, data + r * d, codes + r * M, res + r * d);
        for (size_t r = 0; r < rows; r++) pos[r] = (int32_t)kvqi_rng_below(&rng, CV_TRAIN_POSITIONS);
        /* M-step, codebook by codebook against what the others leave */
        for (uint32_t m = 0; m < M; m++) {
            memset(acc, 0, acc_n * sizeof(double));
            memset(count, 0, K * sizeof(uint32_t));
            for (size_t r = 0; r < rows; r++) {
                const uint8_t *cr = codes + r * M;
                float *t = res + r * d; /* target: x minus the other codebooks' codewords */
                memcpy(t, data + r * d, d * sizeof(float));
                for (uint32_t o = 0; o < M; o++) {
                    if (o == m) continue;
                    const float *w = codeword(s, d, o, cr[o]);
                    for (uint32_t j = 0; j < d; j++) t[j] -= w[j];
                }
                uint32_t c = cr[m];
                count[c]++;
                double *a = acc + (size_t)c * s->n_pairs * 5;
                for (uint32_t j = 0; j < s->n_pairs; j++, a += 5) {
                    double phi = (double)pos[r] * s->freq[j], u0 = cos(phi), u1 = sin(phi);
                    double ra = t[s->pair_a[j]], rb = t[s->pair_b[j]];
                    double t0 = ra * u0 - rb * u1, t1 = ra * u1 + rb * u0; /* RoPE'd target */
                    a[0] += t0 * u0;
                    a[1] += t0 * u1;
                    a[2] += t1 * u0;
                    a[3] += t1 * u1;
                    a[4] += u0 * u0 + u1 * u1;
                }
            }
            for (uint32_t c = 0; c < K; c++) {
                if (!count[c]) continue; /* unused codeword: keep it */
                float *w = s->cw + ((size_t)m * K + c) * d;
                const double *a = acc + (size_t)c * s->n_pairs * 5;
                for (uint32_t j = 0; j < s->n_pairs; j++, a += 5) {
                    /* least squares over W = [[a, -b], [b, a]]: sum |u|^2 (a, b) = 2 P(sum t u^T),
                     * P the projection of a 2x2 matrix onto the commuting set */
                    w[s->pair_a[j]] = (float)((a[0] + a[3]) / a[4]);
                    w[s->pair_b[j]] = (float)((a[2] - a[1]) / a[4]);
                }
            }
        }
    }
    cv_transpose(s, d);
    kvqi_free(data);
    kvqi_free(res);
    kvqi_free(codes);
    kvqi_free(assign);
    kvqi_free(pos);
    kvqi_free(acc);
    kvqi_free(count);
    if (st == KVQ_OK) q->fitted = 1;
    return st;
}

static kvq_status cv_encode_at(const kvq_quantizer *q, const float *x, const int32_t *pos,
                               size_t n, uint8_t *codes) {
    const cv_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim;
    float r[KVQI_QUANT_MAX_DIM];
    uint8_t idx[16];
    size_t packed = cv_packed(q);
    for (size_t i = 0; i < n; i++) {
        uint8_t *c = codes + i * q->code_size;
        cv_assign(s, d, x + i * d, idx, r);
        kvqi_pack_bits(idx, s->m, q->cfg.bits, c);
        uint32_t p = (uint32_t)(pos ? pos[i] : 0);
        for (int b = 0; b < 4; b++) c[packed + b] = (uint8_t)(p >> (8 * b));
    }
    return KVQ_OK;
}

static kvq_status cv_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    return cv_encode_at(q, x, NULL, n, codes);
}

static int32_t stored_pos(const kvq_quantizer *q, const uint8_t *c) {
    size_t o = cv_packed(q);
    return (int32_t)((uint32_t)c[o] | (uint32_t)c[o + 1] << 8 | (uint32_t)c[o + 2] << 16 |
                     (uint32_t)c[o + 3] << 24);
}

static kvq_status cv_decode_at(const kvq_quantizer *q, const uint8_t *codes, const int32_t *pos,
                               size_t n, float *x) {
    const cv_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim;
    uint8_t idx[16];
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        kvqi_unpack_bits(c, s->m, q->cfg.bits, idx);
        cv_sum(s, d, idx, x + i * d);
        rope_with(s, x + i * d, pos ? pos[i] : stored_pos(q, c));
    }
    return KVQ_OK;
}

static kvq_status cv_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    return cv_decode_at(q, codes, NULL, n, x);
}

/* <query, RoPE_p(k)> = <RoPE_-p(query), k>: the codewords stay as trained. Keys of a cache
 * come in runs of consecutive positions, so the phases advance by one step's rotation
 * (angle addition in double; recomputed from scratch every 256 positions and whenever a
 * run breaks) instead of d/2 sines and cosines per key. */
#define CV_PHASE_REFRESH 256
static kvq_status cv_score_at(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                              const int32_t *pos, size_t n, float *scores) {
    const cv_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim, P = s->n_pairs;
    float k[KVQI_QUANT_MAX_DIM], qr[KVQI_QUANT_MAX_DIM];
    double c[KVQI_QUANT_MAX_DIM / 2], sn[KVQI_QUANT_MAX_DIM / 2];
    double c1[KVQI_QUANT_MAX_DIM / 2], s1[KVQI_QUANT_MAX_DIM / 2];
    uint8_t idx[16];
    int have = 0, have_step = 0;
    int64_t last = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *code = codes + i * q->code_size;
        int64_t p = pos ? pos[i] : stored_pos(q, code);
        if (have && p == last + 1 && p % CV_PHASE_REFRESH != 0) {
            if (!have_step) {
                for (uint32_t j = 0; j < P; j++) {
                    c1[j] = cos(s->freq[j]);
                    s1[j] = sin(s->freq[j]);
                }
                have_step = 1;
            }
            for (uint32_t j = 0; j < P; j++) {
                double cj = c[j] * c1[j] - sn[j] * s1[j];
                sn[j] = sn[j] * c1[j] + c[j] * s1[j];
                c[j] = cj;
            }
        } else if (!have || p != last) {
            for (uint32_t j = 0; j < P; j++) {
                double phi = (double)p * s->freq[j];
                c[j] = cos(phi);
                sn[j] = sin(phi);
            }
        }
        have = 1;
        last = p;
        for (uint32_t j = 0; j < P; j++) { /* rotate the query by -phi */
            double a = query[s->pair_a[j]], b = query[s->pair_b[j]];
            qr[s->pair_a[j]] = (float)(a * c[j] + b * sn[j]);
            qr[s->pair_b[j]] = (float)(b * c[j] - a * sn[j]);
        }
        kvqi_unpack_bits(code, s->m, q->cfg.bits, idx);
        cv_sum(s, d, idx, k);
        scores[i] = q->base->dot(qr, k, d);
    }
    return KVQ_OK;
}

static kvq_status cv_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                           size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    return cv_score_at(q, query, codes, NULL, n, scores);
}

static size_t cv_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    const cv_state *s = q->state;
    if (!q->fitted || cap < 1) return 0;
    t[0] = kvqi_tensor_f32("comm_vq.codewords", s->cw, (uint64_t)s->m * s->k, q->cfg.dim);
    t[0].ndim = 3;
    t[0].shape[0] = s->m;
    t[0].shape[1] = s->k;
    t[0].shape[2] = q->cfg.dim;
    return 1;
}

static kvq_status cv_load(kvq_quantizer *q, const kvqi_st_file *f) {
    cv_state *s = q->state;
    const kvqi_st_tensor *t = kvqi_st_find(f, "comm_vq.codewords");
    size_t n = (size_t)s->m * s->k * q->cfg.dim;
    if (!t || t->dtype != KVQI_F32 || t->ndim != 3 || t->shape[0] != s->m || t->shape[1] != s->k ||
        t->shape[2] != q->cfg.dim || t->nbytes != n * sizeof(float))
        return KVQ_ERR_FORMAT;
    memcpy(s->cw, t->data, t->nbytes);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(s->cw[i])) return KVQ_ERR_FORMAT;
    cv_transpose(s, q->cfg.dim);
    q->fitted = 1;
    return KVQ_OK;
}

const kvqi_method kvqi_method_comm_vq = {
    .method = KVQ_METHOD_COMM_VQ,
    .name = "comm_vq",
    .validate = cv_validate,
    .init = cv_init,
    .destroy = cv_destroy,
    .code_size = cv_code_size,
    .shared_size = cv_shared_size,
    .encode = cv_encode,
    .decode = cv_decode,
    .score = cv_score,
    .fit = cv_fit,
    .save_tensors = cv_save,
    .load_tensors = cv_load,
    .encode_at = cv_encode_at,
    .decode_at = cv_decode_at,
    .score_at = cv_score_at,
};
