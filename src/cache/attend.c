/*
 * attend.c - fused decode attention over the compressed cache: per block of tokens,
 * scores for every query head of a KV group, an online numerically-stable softmax
 * (FlashAttention's running max and sum), and the weighted sum of decoded values.
 * Rotated codes are scored and summed in the rotated domain: <q, R^T u> = <R q, u> and
 * sum_i p_i R^T u_i = R^T sum_i p_i u_i, so the rotation runs once per query head.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_internal.h"

typedef struct attend_ctx {
    kvq_cache *c;
    const float *q;
    float *out;
    uint32_t n_q_heads, G;
    size_t n_queries;
    float scale;
} attend_ctx;

static size_t scratch_floats(const kvq_cache *c, uint32_t G) {
    size_t d = c->dim, B = KVQI_ATTEND_BLOCK;
    return 5 * G * d + G * c->n_out + G * B + B * d + 2 * G + d + 16;
}

/* Grows the per-thread scratch the first time a larger pool or group size is seen;
 * steady-state decoding never allocates. */
static kvq_status ensure_scratch(kvq_cache *c, uint32_t G, unsigned n_threads) {
    size_t need = scratch_floats(c, G) * sizeof(float);
    if (c->n_scratch >= n_threads && c->scratch_bytes_each >= need) return KVQ_OK;
    unsigned n = KVQI_MAX(n_threads, c->n_scratch);
    size_t bytes = KVQI_MAX(need, c->scratch_bytes_each);
    kvqi_attend_scratch *s = kvqi_calloc_array(n, sizeof *s);
    if (!s) return KVQ_ERR_NOMEM;
    for (unsigned i = 0; i < n; i++) {
        float *p = kvqi_alloc_array(bytes, 1);
        if (!p) {
            for (unsigned j = 0; j < i; j++) kvqi_free(s[j].q);
            kvqi_free(s);
            return KVQ_ERR_NOMEM;
        }
        s[i].q = p;
    }
    if (c->scratch) {
        for (unsigned i = 0; i < c->n_scratch; i++) kvqi_free(c->scratch[i].q);
        kvqi_free(c->scratch);
    }
    c->scratch = s;
    c->n_scratch = n;
    c->scratch_bytes_each = bytes;
    return KVQ_OK;
}

static void carve(kvqi_attend_scratch *s, const kvq_cache *c, uint32_t G) {
    size_t d = c->dim, B = KVQI_ATTEND_BLOCK;
    float *p = s->q;
    /* blocks of 16 floats keep every array 64-byte aligned for dim % 16 == 0 */
    s->q_raw = p + G * d;
    s->acc = s->q_raw + G * d;
    s->acc_x = s->acc + G * d;
    s->vdec = s->acc_x + G * d;
    s->scores = s->vdec + B * d;
    s->q_out = s->scores + G * B;
    s->m = s->q_out + G * c->n_out;
    s->l = s->m + G;
}

/* Scores of one block of coded tokens, scaled, outlier channels added. */
static void score_coded(const kvq_cache *c, const kvqi_attend_scratch *s, uint32_t G,
                        uint32_t g, const uint8_t *chunk, size_t in, size_t nb, float scale) {
    size_t C = c->cfg.chunk_tokens, B = KVQI_ATTEND_BLOCK;
    const kvqi_side *K = &c->key;
    const uint8_t *codes = chunk + ((size_t)g * C + in) * K->code_size;
    switch (K->path) {
    case KVQI_PATH_F16:
        c->kern->score_f16(s->q, G, c->dim, codes, K->code_size, nb, s->scores, B);
        break;
    case KVQI_PATH_Q8_0:
        c->kern->score_q8_0(s->q, G, c->dim, codes, K->code_size, nb, s->scores, B);
        break;
    case KVQI_PATH_Q4_0:
        c->kern->score_q4_0(s->q, G, c->dim, codes, K->code_size, nb, s->scores, B);
        break;
    case KVQI_PATH_ROT:
        c->kern->score_rot(&K->rot, s->q, G, codes, nb, s->scores, B);
        break;
    default:
        for (uint32_t h = 0; h < G; h++)
            if (kvq_score(K->quant, s->q + (size_t)h * c->dim, codes, nb, s->scores + h * B) !=
                KVQ_OK)
                for (size_t t = 0; t < nb; t++) s->scores[h * B + t] = 0.0f;
        break;
    }
    if (c->n_out) {
        const uint16_t *ov =
            (const uint16_t *)(chunk + c->off_outliers + ((size_t)g * C + in) * c->n_out * 2);
        for (size_t t = 0; t < nb; t++) {
            float kx[64];
            const uint16_t *row = ov + t * c->n_out;
            for (uint32_t o0 = 0; o0 < c->n_out; o0 += 64) {
                uint32_t no = KVQI_MIN(64u, c->n_out - o0);
                for (uint32_t o = 0; o < no; o++) kx[o] = kvqi_fp16_to_fp32(row[o0 + o]);
                for (uint32_t h = 0; h < G; h++) {
                    const float *qo = s->q_out + (size_t)h * c->n_out + o0;
                    float sum = 0.0f;
                    for (uint32_t o = 0; o < no; o++) sum += qo[o] * kx[o];
                    s->scores[h * B + t] += sum;
                }
            }
        }
    }
    for (uint32_t h = 0; h < G; h++)
        for (size_t t = 0; t < nb; t++) s->scores[h * B + t] *= scale;
}

/* Online softmax step: scores -> weights relative to the new running max; both
 * accumulators and sums rescaled when the max moves. */
static void softmax_block(const kvq_cache *c, kvqi_attend_scratch *s, uint32_t G, size_t nb) {
    size_t B = KVQI_ATTEND_BLOCK, d = c->dim;
    for (uint32_t h = 0; h < G; h++) {
        float *sc = s->scores + h * B;
        float bm = sc[0];
        for (size_t t = 1; t < nb; t++) bm = sc[t] > bm ? sc[t] : bm;
        float m_new = bm > s->m[h] ? bm : s->m[h];
        if (m_new > s->m[h]) {
            float alpha = s->m[h] == -INFINITY ? 0.0f : kvqi_exp_neg(s->m[h] - m_new);
            s->l[h] *= alpha;
            float *a = s->acc + h * d, *ax = s->acc_x + h * d;
            for (size_t j = 0; j < d; j++) {
                a[j] *= alpha;
                ax[j] *= alpha;
            }
            s->m[h] = m_new;
        }
        s->l[h] += c->kern->exp_sum(sc, nb, m_new);
    }
}

static void accum_coded(const kvq_cache *c, kvqi_attend_scratch *s, uint32_t G, uint32_t g,
                        const uint8_t *chunk, size_t in, size_t nb) {
    size_t C = c->cfg.chunk_tokens, B = KVQI_ATTEND_BLOCK;
    const kvqi_side *V = &c->value;
    const uint8_t *codes = chunk + c->off_value + ((size_t)g * C + in) * V->code_size;
    switch (V->path) {
    case KVQI_PATH_F16:
        c->kern->accum_f16(s->scores, B, G, c->dim, codes, V->code_size, nb, s->acc);
        break;
    case KVQI_PATH_Q8_0:
        c->kern->accum_q8_0(s->scores, B, G, c->dim, codes, V->code_size, nb, s->acc);
        break;
    case KVQI_PATH_Q4_0:
        c->kern->accum_q4_0(s->scores, B, G, c->dim, codes, V->code_size, nb, s->acc);
        break;
    case KVQI_PATH_ROT:
        c->kern->accum_rot(&V->rot, s->scores, B, G, codes, nb, s->acc);
        break;
    default:
        if (kvq_decode(V->quant, codes, nb, s->vdec) != KVQ_OK)
            memset(s->vdec, 0, nb * c->dim * sizeof(float));
        c->kern->accum_f32(s->scores, B, G, c->dim, (const uint8_t *)s->vdec,
                           c->dim * sizeof(float), nb, s->acc);
        break;
    }
}

static void attend_task(void *vctx, size_t task, unsigned thread) {
    const attend_ctx *A = vctx;
    kvq_cache *c = A->c;
    uint32_t G = A->G, d = c->dim, g = (uint32_t)(task % c->n_kv);
    size_t i = task / c->n_kv, B = KVQI_ATTEND_BLOCK, C = c->cfg.chunk_tokens;
    size_t row = (size_t)c->n_kv * d;
    size_t visible = c->n_tokens - A->n_queries + i + 1;
    kvqi_attend_scratch *s = &c->scratch[thread];
    carve(s, c, G);

    for (uint32_t h = 0; h < G; h++) {
        const float *qh = A->q + (i * A->n_q_heads + (size_t)g * G + h) * d;
        float *qk = s->q + (size_t)h * d;
        memcpy(s->q_raw + (size_t)h * d, qh, d * sizeof(float));
        float *tmp = s->vdec; /* free until the first block */
        memcpy(tmp, qh, d * sizeof(float));
        if (c->n_out && c->coded) {
            const uint16_t *idx = c->outlier_idx + (size_t)g * c->n_out;
            for (uint32_t o = 0; o < c->n_out; o++) {
                s->q_out[(size_t)h * c->n_out + o] = qh[idx[o]];
                tmp[idx[o]] = 0.0f;
            }
        }
        if (c->key.path == KVQI_PATH_ROT) {
            /* the rotated query in lane order: sum_j x_j (column j of R) */
            memset(qk, 0, d * sizeof(float));
            c->kern->axpy_rows(c->key.rotation_t, tmp, d, d, qk);
        } else {
            memcpy(qk, tmp, d * sizeof(float));
        }
        s->m[h] = -INFINITY;
        s->l[h] = 0.0f;
        memset(s->acc + (size_t)h * d, 0, d * sizeof(float));
        memset(s->acc_x + (size_t)h * d, 0, d * sizeof(float));
    }

    size_t coded_end = 0, exact_begin = 0, ring = 0;
    const float *ek = c->stage_k, *ev = c->stage_v;
    if (c->coded) {
        size_t W = c->cfg.window;
        exact_begin = (W && c->n_tokens > W) ? c->n_tokens - W : (W ? 0 : c->n_tokens);
        coded_end = KVQI_MIN(visible, exact_begin);
        ek = c->win_k;
        ev = c->win_v;
        ring = W;
    }
    for (size_t t0 = 0; t0 < coded_end;) {
        size_t in = t0 % C, nb = KVQI_MIN(B, KVQI_MIN(coded_end - t0, C - in));
        const uint8_t *chunk = c->chunks[t0 / C];
        score_coded(c, s, G, g, chunk, in, nb, A->scale);
        softmax_block(c, s, G, nb);
        accum_coded(c, s, G, g, chunk, in, nb);
        t0 += nb;
    }
    for (size_t t0 = exact_begin; t0 < visible;) {
        size_t slot = ring ? t0 % ring : t0;
        size_t nb = KVQI_MIN(B, visible - t0);
        if (ring) nb = KVQI_MIN(nb, ring - slot);
        const uint8_t *kr = (const uint8_t *)(ek + slot * row + (size_t)g * d);
        const uint8_t *vr = (const uint8_t *)(ev + slot * row + (size_t)g * d);
        c->kern->score_f32(s->q_raw, G, d, kr, row * sizeof(float), nb, s->scores, B);
        for (uint32_t h = 0; h < G; h++)
            for (size_t t = 0; t < nb; t++) s->scores[h * B + t] *= A->scale;
        softmax_block(c, s, G, nb);
        c->kern->accum_f32(s->scores, B, G, d, vr, row * sizeof(float), nb, s->acc_x);
        t0 += nb;
    }

    for (uint32_t h = 0; h < G; h++) {
        float *o = A->out + (i * A->n_q_heads + (size_t)g * G + h) * d;
        float *ax = s->acc_x + (size_t)h * d;
        if (c->value.path == KVQI_PATH_ROT) /* R^T acc = sum_p acc_p (row p of R) */
            c->kern->axpy_rows(c->value.rotation, s->acc + (size_t)h * d, d, d, ax);
        else
            for (uint32_t j = 0; j < d; j++) ax[j] += s->acc[(size_t)h * d + j];
        float inv = s->l[h] > 0.0f ? 1.0f / s->l[h] : 0.0f;
        for (uint32_t j = 0; j < d; j++) o[j] = ax[j] * inv;
    }
}

kvq_status kvqi_cache_attend_impl(kvq_cache *c, const float *q, uint32_t n_q_heads,
                                  size_t n_queries, float scale, kvq_threadpool *pool,
                                  float *out) {
    uint32_t G = n_q_heads / c->n_kv;
    size_t n_tasks;
    if (kvqi_mul_size(n_queries, c->n_kv, &n_tasks) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    size_t check;
    if (kvqi_mul_size(n_queries * c->n_kv, (size_t)G * c->dim, &check) != KVQ_OK)
        return KVQ_ERR_OVERFLOW;
    unsigned n_threads = pool ? kvq_threadpool_size(pool) : 1;
    kvq_status st = ensure_scratch(c, G, n_threads);
    if (st != KVQ_OK) return st;
    attend_ctx A = {c, q, out, n_q_heads, G, n_queries, scale};
    kvqi_parallel_for(pool, n_tasks, attend_task, &A);
    return KVQ_OK;
}
