/*
 * attend.c - fused decode attention over the compressed cache: per block of tokens,
 * scores for every query head of a KV group, an online numerically-stable softmax
 * (FlashAttention's running max and sum), and the weighted sum of decoded values.
 * Rotated codes are scored and summed in the rotated domain: <q, R^T u> = <R q, u> and
 * sum_i p_i R^T u_i = R^T sum_i p_i u_i, so the rotation runs once per query head.
 * With fewer tasks than threads the context is split into token ranges whose softmax
 * states are merged afterwards (split-K, as FlashDecoding does on GPUs).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_internal.h"
#include "quant/quant.h"

/* Below this many multiply-adds an attend runs on the calling thread. */
#define KVQI_ATTEND_SERIAL_MACS ((size_t)1 << 20)

typedef struct attend_ctx {
    kvq_cache *c;
    const float *q;
    float *out;
    uint32_t n_q_heads, G;
    size_t n_queries;
    uint32_t qb;      /* queries per task: they share every decoded code */
    uint32_t n_split; /* split-K: token ranges per (KV head, query block); 1 = none */
    size_t split_tokens; /* tokens per range (a multiple of the attend block) */
    size_t t_lo;      /* sliding window: no query sees a token below this one */
    float **bufs;     /* per-thread scratch (the pool's, or the cache's own without one) */
    float *partials;  /* split-K states (the pool's) */
    float scale;
    atomic_int status; /* first failure of a quantizer call in any task */
} attend_ctx;

/* The decode buffer: a block of decoded values on the generic value path; else room for
 * the query's preparation (a copy, the int8 path's natural order, the sign keys' z). */
static size_t vdec_floats(const kvq_cache *c) {
    size_t d = c->dim;
    size_t need = 2 * d + (c->key.path == KVQI_PATH_SIGNS ? c->key.signs.m : 0);
    if (c->value.path == KVQI_PATH_GENERIC) need = KVQI_MAX(need, (size_t)KVQI_ATTEND_BLOCK * d);
    return (need + 15) & ~(size_t)15;
}

/* kspan: the generic key path's scores of a whole chunk span; channel keys' weights of the
 * current chunk (kvqi_chan_weighed) */
static size_t span_floats(const kvq_cache *c, uint32_t G) {
    if (c->key.path == KVQI_PATH_GENERIC) return (size_t)G * c->cfg.chunk_tokens;
    if (c->key.path == KVQI_PATH_CHAN) return (kvqi_chan_scratch_floats(c->dim, G) + 15) & ~(size_t)15;
    return 0;
}

static size_t scratch_floats(const kvq_cache *c, uint32_t G) {
    size_t d = c->dim, B = KVQI_ATTEND_BLOCK;
    /* the generic key path scores a whole chunk span per kvq_score call */
    size_t span = span_floats(c, G);
    /* integer key path: G x d int8 (q8_0 keys: int16) query, its scales and sums */
    size_t i8 = (size_t)G * d / 2 + 2 * G + 16;
    /* sign keys: one table of m/8 x 256 sums per query head, and the sums of z */
    size_t signs = c->key.path == KVQI_PATH_SIGNS ? (size_t)G * (c->key.signs.m / 8) * 256 + G + 16 : 0;
    /* channel keys before RoPE: the turned query [G][dim], the start angles (dim doubles) */
    signs += c->pre_freq ? (size_t)G * d + 2 * d + 32 : 0;
    return 5 * G * d + G * c->n_out + G * B + vdec_floats(c) + 3 * G + d + 32 + span + i8 + signs;
}

/* The integer key path applies: 2- to 4-bit one-pass rotated keys and a CPU with a fast
 * kernel for that width. */
static int use_i8(const kvq_cache *c) {
    return c->key.path == KVQI_PATH_ROT && c->key.rot.has_u8 && c->kern->score_rot_i8 &&
           (c->kern->rot_i8_bits >> c->key.rot.bits & 1u) && c->dim % 128 == 0;
}

/* The integer path of 1-bit keys (any number of passes: turboquant_rvq at 1 bit). */
static int use_i8_b1(const kvq_cache *c) {
    return c->key.path == KVQI_PATH_ROT && c->key.rot.bits == 1 && c->kern->score_rot1_i8 &&
           c->dim % 128 == 0;
}

/* The integer path of sign keys: the projection as wide as the head (m == dim). */
static int use_signs_i8(const kvq_cache *c) {
    return c->key.path == KVQI_PATH_SIGNS && c->kern->score_signs_i8 && c->key.signs.m == c->dim &&
           c->dim % 128 == 0;
}

/* The integer value path applies: 2- to 4-bit one-pass rotated values and a CPU with a
 * fast kernel for that width; the accumulator is then in kvqi_rot_v16_coordinate order. */
static int use_v16(const kvq_cache *c) {
    return c->value.path == KVQI_PATH_ROT && c->value.rot.has_u8 && c->kern->accum_rot_i16 &&
           (c->kern->rot_v16_bits >> c->value.rot.bits & 1u) && c->dim % 128 == 0;
}
/* ... and with 8-bit weights where the ISA has that kernel (half the multiply-adds) */
static int use_v8(const kvq_cache *c) {
    return use_v16(c) && c->kern->accum_rot_u8 && (c->kern->rot_v8_bits >> c->value.rot.bits & 1u);
}

/* q8_0 / q4_0 keys in integers: QBLK_I8, an int8 query against the blocks' bytes (q4_0);
 * QBLK_I16, an int16 query (q8_0: an int8 query adds more error than the near-lossless
 * type's own rounding, SmolLM2 8 x 512: KL from fp16 0.0049 -> 0.0056, top-1 96.1 ->
 * 94.6 %, docs/METHODS.md; 16 bits add 2^-16 of max |q|: KL 0.00494 -> 0.00491 at 24 x
 * 512); 0: float kernels. */
enum { QBLK_FLOAT = 0, QBLK_I8 = 1, QBLK_I16 = 2 };
static int qblk_int(const kvq_cache *c) {
    if (c->dim % 64 || c->dim > KVQI_QBLK_I8_MAX_DIM) return QBLK_FLOAT;
    if (c->key.path == KVQI_PATH_Q8_0) return c->kern->score_q8_0_i16 ? QBLK_I16 : QBLK_FLOAT;
    if (c->key.path == KVQI_PATH_Q4_0) return c->kern->score_q4_0_i8 ? QBLK_I8 : QBLK_FLOAT;
    return QBLK_FLOAT;
}

/* The int16 query of q8_0 keys lives where the int8 one would (room for 2 bytes each). */
static int16_t *query_q16(const kvqi_attend_scratch *s) { return (int16_t *)(void *)s->q8; }

/* Integer query of q8_0 / q4_0 keys: symmetric scale max|q| / (127 or 32767), natural order */
static void quantize_query_qblk(const kvq_cache *c, kvqi_attend_scratch *s, uint32_t h,
                                const float *qk) {
    uint32_t d = c->dim;
    int wide = qblk_int(c) == QBLK_I16;
    float top = wide ? 32767.0f : 127.0f;
    float qmax = 0.0f;
    for (uint32_t j = 0; j < d; j++) qmax = fmaxf(qmax, fabsf(qk[j]));
    float qs = qmax > 0.0f ? qmax / top : 1.0f;
    int8_t *q8 = s->q8 + (size_t)h * d;
    int16_t *q16 = query_q16(s) + (size_t)h * d;
    for (uint32_t j = 0; j < d; j++) {
        float v = rintf(qk[j] / qs);
        v = v > top ? top : v < -top ? -top : v;
        if (wide)
            q16[j] = (int16_t)v;
        else
            q8[j] = (int8_t)v;
    }
    s->q8_scale[h] = qs;
}

/* int8 query for the integer path: symmetric scale max|q|/127, in code-byte order */
static void quantize_query(const kvq_cache *c, kvqi_attend_scratch *s, uint32_t h,
                           const float *q_lanes) {
    uint32_t d = c->dim;
    float *nat = s->vdec + d; /* natural order; vdec is free until the first block */
    for (uint32_t p = 0; p < d; p++) nat[kvqi_rot_lane_coordinate(c->key.rot.bits, p)] = q_lanes[p];
    float qmax = 0.0f;
    for (uint32_t j = 0; j < d; j++) qmax = fmaxf(qmax, fabsf(nat[j]));
    float qs = qmax > 0.0f ? qmax / 127.0f : 1.0f;
    int32_t sum = 0;
    int8_t *q8 = s->q8 + (size_t)h * d;
    for (uint32_t b = 0; b < d; b++) {
        int v = (int)lrintf(nat[kvqi_rot_i8_coordinate(c->key.rot.bits, b)] / qs);
        q8[b] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        sum += q8[b];
    }
    s->q8_scale[h] = c->key.rot.has_u8 ? qs * c->key.rot.cent_scale : qs;
    s->q8_sum[h] = 128 * sum;
}

/* Grows the cache's own scratch (attend without a pool: one thread) the first time a
 * larger group size is seen; steady-state decoding never allocates. With a pool the
 * scratch is the pool's, shared by every cache attended on it. */
static kvq_status ensure_scratch(kvq_cache *c, uint32_t G) {
    size_t need = scratch_floats(c, G) * sizeof(float);
    unsigned n_threads = 1;
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
    s->scores = s->vdec + vdec_floats(c);
    s->q_out = s->scores + G * B;
    s->m = s->q_out + G * c->n_out;
    s->l = s->m + G;
    s->kspan = s->l + G;
    s->q8_scale = s->kspan + span_floats(c, G);
    s->q8_sum = (int32_t *)(void *)(s->q8_scale + G);
    s->q8 = (int8_t *)(void *)(s->q8_sum + G);
    /* past the int8 (or int16) query, on a 16-byte boundary (the pads of scratch_floats
     * cover it) */
    s->zsum = (float *)(void *)(s->q8 + ((2 * G * d + 15) & ~(size_t)15));
    s->kbias = s->zsum + G;
    s->lut = s->kbias + ((G + 15) & ~(size_t)15);
    s->pre_ci = s->pre_qci = SIZE_MAX;
    s->pre_q = c->pre_freq ? s->lut : NULL; /* (the sign keys' table: another path) */
    s->pre_cs = c->pre_freq ? (double *)(void *)(s->lut + (((size_t)G * d + 15) & ~(size_t)15)) : NULL;
}

/* <q, mean> back on the scores of centered keys. */
static void add_bias(kvqi_attend_scratch *s, uint32_t G, size_t nb) {
    size_t B = KVQI_ATTEND_BLOCK;
    for (uint32_t h = 0; h < G; h++) {
        float *sc = s->scores + h * B, b = s->kbias[h];
        for (size_t t = 0; t < nb; t++) sc[t] += b;
    }
}

/* Channel keys: the weights of head g's block of a chunk for the G query heads, the
 * query's <q, mean> folded into their bias. */
static void chan_weigh(const kvq_cache *c, kvqi_attend_scratch *s, uint32_t G, uint32_t g, size_t ci) {
    kvqi_chan_weighed w;
    kvqi_chan_scratch(s->kspan, c->dim, G, &w);
    kvqi_chan_weigh(c, s->q, G, g, kvqi_chunk_keys(c, ci, g), &w);
    for (uint32_t h = 0; h < G; h++) w.bias[h] += s->kbias[h];
}

/* Scores of one block of coded tokens (the query carries the scale), outlier channels
 * added. */
static void score_coded(const kvq_cache *c, kvqi_attend_scratch *s, uint32_t G,
                        uint32_t g, size_t ci, size_t in, size_t nb) {
    size_t C = c->cfg.chunk_tokens, B = KVQI_ATTEND_BLOCK;
    const kvqi_side *K = &c->key;
    const uint8_t *codes = kvqi_chunk_keys(c, ci, g) + in * K->code_size;
    switch (K->path) {
    case KVQI_PATH_F16:
        c->kern->score_f16(s->q, G, c->dim, codes, K->code_size, nb, s->scores, B);
        break;
    case KVQI_PATH_Q8_0:
        if (qblk_int(c) == QBLK_I16)
            c->kern->score_q8_0_i16(query_q16(s), s->q8_scale, G, c->dim, codes, K->code_size, nb,
                                    s->scores, B);
        else
            c->kern->score_q8_0(s->q, G, c->dim, codes, K->code_size, nb, s->scores, B);
        break;
    case KVQI_PATH_Q4_0:
        if (qblk_int(c) == QBLK_I8)
            c->kern->score_q4_0_i8(s->q8, s->q8_scale, G, c->dim, codes, K->code_size, nb, s->scores, B);
        else
            c->kern->score_q4_0(s->q, G, c->dim, codes, K->code_size, nb, s->scores, B);
        break;
    case KVQI_PATH_ROT:
        if (use_i8(c))
            c->kern->score_rot_i8(&K->rot, s->q8, s->q8_scale, s->q8_sum, G, codes, nb,
                                  s->scores, B);
        else if (use_i8_b1(c))
            c->kern->score_rot1_i8(&K->rot, s->q8, s->q8_scale, s->q8_sum, G, codes, nb,
                                   s->scores, B);
        else
            c->kern->score_rot(&K->rot, s->q, G, codes, nb, s->scores, B);
        break;
    case KVQI_PATH_CHAN: { /* weighed at the chunk's first block, <q, mean> in the bias */
        if (c->pre_freq) { /* keys before RoPE: the query turned back to the chunk's start,
                            * each key turned by its offset in the chunk (cache/positions.c) */
            uint32_t d = c->dim, half = d / 2;
            double *cs2 = s->pre_cs;
            if (s->pre_ci != ci) { /* the start angles (one turn from the chunk before) */
                kvqi_pre_angles(c, ci, s->pre_ci, cs2);
                s->pre_ci = ci;
            }
            if (s->pre_qci != ci) { /* each head turned back by the start angle */
                s->pre_qci = ci;
                for (uint32_t h = 0; h < G; h++) {
                    const float *qh = s->q + (size_t)h * d;
                    float *o = s->pre_q + (size_t)h * d;
                    for (uint32_t j = 0; j < half; j++) {
                        uint32_t a = c->pre_neox ? j : 2 * j, b = c->pre_neox ? j + half : 2 * j + 1;
                        double qa = qh[a], qb = qh[b], cc = cs2[2 * j], ss = cs2[2 * j + 1];
                        o[a] = (float)(qa * cc + qb * ss);
                        o[b] = (float)(qb * cc - qa * ss);
                    }
                }
            }
            kvqi_chan_pre_scores(c, g, kvqi_chunk_keys(c, ci, g), in, nb, s->pre_q, G, s->scores, B);
            return;
        }
        kvqi_chan_weighed w;
        kvqi_chan_scratch(s->kspan, c->dim, G, &w);
        kvqi_chan_dot(c, G, g, kvqi_chunk_keys(c, ci, g), in, nb, &w, s->scores, B);
        return;
    }
    case KVQI_PATH_SIGNS:
        /* turboquant_prod: the mse part first, the residual's signs added */
        if (K->signs_mse) c->kern->score_rot(&K->rot, s->q, G, codes, nb, s->scores, B);
        if (use_signs_i8(c))
            c->kern->score_signs_i8(&K->signs, s->q8, s->q8_scale, s->q8_sum, G, codes, nb,
                                    K->signs_mse, s->scores, B);
        else
            c->kern->score_signs(&K->signs, s->lut, s->zsum, G, codes, nb, K->signs_mse, s->scores, B);
        break;
    default: /* scored ahead by score_span */
        for (uint32_t h = 0; h < G; h++)
            memcpy(s->scores + h * B, s->kspan + h * C + in, nb * sizeof(float));
        break;
    }
    if (c->key_mean) add_bias(s, G, nb);
    if (c->n_out)
        c->kern->outlier_add((const uint16_t *)(void *)(kvqi_chunk_outliers(c, ci, g) + in * 2), C, s->q_out, G,
                             c->n_out, nb, s->scores, B);
}

/* Generic keys: kvq_score over tokens [in, in + n) of a chunk for every head at once,
 * so a method's per-call query preparation is paid once per chunk, not per block. */
static void score_span(const kvq_cache *c, const kvqi_attend_scratch *s, uint32_t G,
                       uint32_t g, size_t ci, size_t in, size_t n,
                       atomic_int *status) {
    size_t C = c->cfg.chunk_tokens;
    const uint8_t *codes = kvqi_chunk_keys(c, ci, g) + in * c->key.code_size;
    for (uint32_t h = 0; h < G; h++) {
        kvq_status st =
            kvq_score(c->key.quant, s->q + (size_t)h * c->dim, codes, n, s->kspan + h * C + in);
        if (st != KVQ_OK) {
            int ok = KVQ_OK;
            atomic_compare_exchange_strong(status, &ok, (int)st);
            memset(s->kspan + h * C + in, 0, n * sizeof(float));
        }
    }
}

/* Online softmax step: scores -> weights relative to the new running max; both
 * accumulators and sums rescaled when the max moves. */
static void softmax_block(const kvq_cache *c, kvqi_attend_scratch *s, uint32_t G, size_t nb) {
    size_t B = KVQI_ATTEND_BLOCK, d = c->dim;
    for (uint32_t h = 0; h < G; h++) {
        float *sc = s->scores + h * B;
        float bm = c->kern->max_of(sc, nb);
        float m_new = bm > s->m[h] ? bm : s->m[h];
        if (m_new == -INFINITY) { /* every token so far is past this query: no weight */
            for (size_t t = 0; t < nb; t++) sc[t] = 0.0f;
            continue;
        }
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
                        size_t ci, size_t in, size_t nb, atomic_int *status) {
    size_t B = KVQI_ATTEND_BLOCK;
    const kvqi_side *V = &c->value;
    const uint8_t *codes = kvqi_chunk_values(c, ci, g) + in * V->code_size;
    switch (V->path) {
    case KVQI_PATH_F16:
        c->kern->accum_f16(s->scores, B, G, c->dim, codes, V->code_size, nb, s->acc);
        break;
    case KVQI_PATH_Q8_0:
        c->kern->accum_q8_0(s->scores, B, G, c->dim, codes, V->code_size, nb, s->acc);
        break;
    case KVQI_PATH_Q4_0: /* in integers where the ISA has it (16-bit weights) */
        (c->kern->accum_q4_0_i16 ? c->kern->accum_q4_0_i16 : c->kern->accum_q4_0)(s->scores, B, G, c->dim, codes,
                                                                                 V->code_size, nb, s->acc);
        break;
    case KVQI_PATH_ROT:
        if (use_v8(c))
            c->kern->accum_rot_u8(&V->rot, s->scores, B, G, codes, nb, s->acc);
        else if (use_v16(c))
            c->kern->accum_rot_i16(&V->rot, s->scores, B, G, codes, nb, s->acc);
        else
            c->kern->accum_rot(&V->rot, s->scores, B, G, codes, nb, s->acc);
        break;
    case KVQI_PATH_VQ:
        V->vq_accum(V->vq_cent, c->dim, s->scores, B, G, codes, V->code_size, nb, s->acc);
        break;
    default: {
        kvq_status st = kvq_decode(V->quant, codes, nb, s->vdec);
        if (st != KVQ_OK) {
            int ok = KVQ_OK;
            atomic_compare_exchange_strong(status, &ok, (int)st);
            memset(s->vdec, 0, nb * c->dim * sizeof(float));
        }
        c->kern->accum_f32(s->scores, B, G, c->dim, (const uint8_t *)s->vdec,
                           c->dim * sizeof(float), nb, s->acc);
        break;
    }
    }
}

/* Scores of tokens a query of the block may not see yet (causal), or no longer (sliding
 * window), become -inf. */
static void mask_block(const attend_ctx *A, kvqi_attend_scratch *s, size_t first_visible_end,
                       uint32_t nqb, size_t t0, size_t nb) {
    size_t B = KVQI_ATTEND_BLOCK, SW = A->c->cfg.sliding_window;
    if (SW && first_visible_end + nqb - 1 > SW && t0 < first_visible_end + nqb - 1 - SW) {
        for (uint32_t qi = 0; qi < nqb; qi++) {
            size_t vis = first_visible_end + qi; /* query qi sees tokens < vis */
            if (vis <= SW) continue;
            size_t lo = vis - SW;                /* ... and >= lo */
            for (uint32_t h = 0; h < A->G; h++) {
                float *sc = s->scores + ((size_t)qi * A->G + h) * B;
                for (size_t t = 0; t < nb && t0 + t < lo; t++) sc[t] = -INFINITY;
            }
        }
    }
    if (t0 + nb <= first_visible_end) return;
    for (uint32_t qi = 0; qi < nqb; qi++) {
        size_t lim = first_visible_end + qi; /* query qi sees tokens < lim */
        for (uint32_t h = 0; h < A->G; h++) {
            float *sc = s->scores + ((size_t)qi * A->G + h) * B;
            for (size_t t = lim > t0 ? lim - t0 : 0; t < nb; t++) sc[t] = -INFINITY;
        }
    }
}

/* Where a task's queries stand: KV head g, first query i0, nqb queries (G heads of the
 * group each: Gt = G * nqb rows of state), the tokens the first and the last one see. */
typedef struct task_view {
    uint32_t g, nqb, Gt;
    size_t i0, first_visible, visible;
} task_view;

static task_view view_of(const attend_ctx *A, size_t group_task) {
    const kvq_cache *c = A->c;
    task_view t;
    t.g = (uint32_t)(group_task % c->n_kv);
    t.i0 = (group_task / c->n_kv) * A->qb;
    t.nqb = (uint32_t)KVQI_MIN((size_t)A->qb, A->n_queries - t.i0);
    t.Gt = A->G * t.nqb;
    t.first_visible = c->n_tokens - A->n_queries + t.i0 + 1;
    t.visible = t.first_visible + t.nqb - 1;
    return t;
}

/* Floats of one range's softmax state: m, l, acc, acc_x for Gt rows. */
static size_t partial_floats(const kvq_cache *c, uint32_t Gt) {
    return (size_t)Gt * (2 + 2 * (size_t)c->dim);
}

/* The queries of the task, scaled, split off their outlier channels and rotated as the
 * key kernels want them; the running state emptied. */
static void prepare_queries(const attend_ctx *A, const task_view *T, kvqi_attend_scratch *s) {
    kvq_cache *c = A->c;
    uint32_t d = c->dim;
    s->pre_ci = s->pre_qci = SIZE_MAX; /* (keys before RoPE: a new query to turn) */
    for (uint32_t v = 0; v < T->Gt; v++) {
        /* the softmax scale rides on the query: every score comes out scaled */
        size_t qi = v / A->G, h = v % A->G;
        const float *qh = A->q + ((T->i0 + qi) * A->n_q_heads + (size_t)T->g * A->G + h) * d;
        float *qk = s->q + (size_t)v * d, *qr = s->q_raw + (size_t)v * d;
        for (uint32_t j = 0; j < d; j++) qr[j] = qh[j] * A->scale;
        float *tmp = s->vdec; /* free until the first block */
        memcpy(tmp, qr, d * sizeof(float));
        if (c->key_mean && c->coded) {
            const float *mu = c->key_mean + (size_t)T->g * d;
            float b = 0.0f;
            for (uint32_t j = 0; j < d; j++) b += qr[j] * mu[j];
            s->kbias[v] = b;
        }
        if (c->n_out && c->coded) {
            const uint16_t *idx = c->outlier_idx + (size_t)T->g * c->n_out;
            for (uint32_t o = 0; o < c->n_out; o++) {
                s->q_out[(size_t)v * c->n_out + o] = qr[idx[o]];
                tmp[idx[o]] = 0.0f;
            }
        }
        if (c->key.path == KVQI_PATH_ROT) {
            /* the rotated query: coordinate r = <row r of R, x>, then in lane order */
            float *nat = tmp + d; /* vdec holds at least 2 d floats */
            if (c->key.had)
                kvqi_rotation_apply(c->key.had, tmp, nat, c->kern->isa);
            else if (c->key.rotation_h)
                c->kern->score_f16(tmp, 1, d, (const uint8_t *)c->key.rotation_h, d * sizeof(uint16_t), d, nat, d);
            else
                c->kern->score_f32(tmp, 1, d, (const uint8_t *)c->key.rotation, d * sizeof(float), d, nat, d);
            for (uint32_t p = 0; p < d; p++) qk[p] = nat[c->key.lane[p]];
            if (use_i8(c) || use_i8_b1(c)) quantize_query(c, s, v, qk);
        } else if (c->key.path == KVQI_PATH_SIGNS) {
            /* z = P x, its sum and its table; the mse part's rotated query */
            const kvqi_side *K = &c->key;
            uint32_t m = K->signs.m;
            float *z = tmp + d; /* vdec holds B * d >= d + m floats */
            c->kern->score_f32(tmp, 1, d, (const uint8_t *)K->proj, d * sizeof(float), m, z, m);
            float zs = 0.0f;
            for (uint32_t i = 0; i < m; i++) zs += z[i];
            s->zsum[v] = zs;
            if (use_signs_i8(c)) { /* z in int8, symmetric scale max|z|/127 */
                float zmax = 0.0f;
                for (uint32_t i = 0; i < m; i++) zmax = fmaxf(zmax, fabsf(z[i]));
                float zsc = zmax > 0.0f ? zmax / 127.0f : 1.0f;
                int8_t *z8 = s->q8 + (size_t)v * d;
                int32_t sum = 0;
                for (uint32_t i = 0; i < m; i++) {
                    int q8 = (int)lrintf(z[i] / zsc);
                    z8[i] = (int8_t)(q8 > 127 ? 127 : q8 < -127 ? -127 : q8);
                    sum += z8[i];
                }
                s->q8_scale[v] = zsc;
                s->q8_sum[v] = sum;
            } else {
                kvqi_cache_sign_lut(z, m, s->lut + (size_t)v * (m / 8) * 256);
            }
            if (K->signs_mse)
                c->kern->score_f32(tmp, 1, d, (const uint8_t *)K->rotation, d * sizeof(float), d, qk, d);
            else
                memset(qk, 0, d * sizeof(float));
        } else {
            memcpy(qk, tmp, d * sizeof(float));
            if (qblk_int(c)) quantize_query_qblk(c, s, v, qk);
        }
        s->m[v] = -INFINITY;
        s->l[v] = 0.0f;
        memset(s->acc + (size_t)v * d, 0, d * sizeof(float));
        memset(s->acc_x + (size_t)v * d, 0, d * sizeof(float));
    }
}

/* One block of exact rows (fp16 or fp32, one token's heads apart) into the state. */
static void exact_block(attend_ctx *A, const task_view *T, kvqi_attend_scratch *s, const void *k,
                        const void *v, int fp16, size_t t0, size_t nb) {
    const kvq_cache *c = A->c;
    uint32_t d = c->dim, G = T->Gt;
    size_t B = KVQI_ATTEND_BLOCK, stride = (size_t)c->n_kv * d * (fp16 ? sizeof(uint16_t) : sizeof(float));
    (fp16 ? c->kern->score_f16 : c->kern->score_f32)(s->q_raw, G, d, k, stride, nb, s->scores, B);
    mask_block(A, s, T->first_visible, T->nqb, t0, nb);
    softmax_block(c, s, G, nb);
    (fp16 ? c->kern->accum_f16 : c->kern->accum_f32)(s->scores, B, G, d, v, stride, nb, s->acc_x);
}

/* One block of ring rows in q8_0 (channel keys' ring) into the exact state; centered:
 * the keys are stored minus the head's mean key. */
static void ring_q8_block(attend_ctx *A, const task_view *T, kvqi_attend_scratch *s, const uint8_t *k,
                          const uint8_t *v, size_t t0, size_t nb, int centered) {
    const kvq_cache *c = A->c;
    uint32_t d = c->dim, G = T->Gt;
    size_t B = KVQI_ATTEND_BLOCK, stride = (size_t)c->n_kv * c->ring_head;
    c->kern->score_q8_0(s->q_raw, G, d, k, stride, nb, s->scores, B);
    if (centered) add_bias(s, G, nb); /* <q, mean> back, as for coded keys */
    mask_block(A, s, T->first_visible, T->nqb, t0, nb);
    softmax_block(c, s, G, nb);
    c->kern->accum_q8_0(s->scores, B, G, d, v, stride, nb, s->acc_x);
}

/* Tokens [t_begin, t_end) of the task's visible context, coded ones then exact ones,
 * folded into the running state. */
static void attend_range(attend_ctx *A, const task_view *T, kvqi_attend_scratch *s,
                         size_t t_begin, size_t t_end) {
    kvq_cache *c = A->c;
    uint32_t d = c->dim, g = T->g, G = T->Gt;
    size_t B = KVQI_ATTEND_BLOCK, C = c->cfg.chunk_tokens, row = (size_t)c->n_kv * d;
    /* before the probe is full every token is staged (fp32); then tokens below n_coded
     * are coded and the rest sit in the fp16 window ring */
    size_t coded_end = c->coded ? KVQI_MIN(T->visible, c->n_coded) : 0;
    /* attention sinks: the first tokens from their exact copies (not where the window
     * has them already) */
    size_t sink_end = c->coded ? KVQI_MIN((size_t)c->cfg.n_sink, T->visible) : 0;
    for (size_t t0 = t_begin; t0 < KVQI_MIN(sink_end, t_end);) {
        size_t nb = KVQI_MIN(B, KVQI_MIN(sink_end, t_end) - t0);
        exact_block(A, T, s, c->sink_k + t0 * row + (size_t)g * d, c->sink_v + t0 * row + (size_t)g * d,
                    1, t0, nb);
        t0 += nb;
    }
    size_t coded_stop = KVQI_MIN(coded_end, t_end), coded_start = KVQI_MAX(t_begin, sink_end);
    for (size_t t0 = coded_start; t0 < coded_stop;) {
        size_t in = t0 % C, nb = KVQI_MIN(B, KVQI_MIN(coded_stop - t0, C - in));
        if (c->key.path == KVQI_PATH_CHAN) nb = KVQI_MIN(nb, 64 - in % 64); /* one code group */
        size_t ci = t0 / C;
        /* no software prefetch: a slab keeps a head's codes contiguous and the hardware
         * prefetcher follows them; asking for the next block ahead measured slower for
         * fp16, q8_0 and channel keys (bench/RESULTS.md, "CPU attention: software prefetch") */
        if (c->key.path == KVQI_PATH_GENERIC && (in == 0 || t0 == coded_start))
            score_span(c, s, G, g, ci, in, KVQI_MIN(coded_stop - t0, C - in), &A->status);
        if (c->key.path == KVQI_PATH_CHAN && !c->pre_freq && (in == 0 || t0 == coded_start)) chan_weigh(c, s, G, g, ci);
        if (use_v16(c)) {
            /* the integer rotated-value kernel reads every row's norm before any sum, the
             * rows' first touch with nothing to hide it: the rows are asked for before the
             * keys are scored (32k step, CPU ms in one process, both orders: mse4/mse4
             * 1.05-1.06x, q4 1.05-1.14x, q2 1.13-1.24x; q4_0 values, which gather their
             * scales by permutes first, 0.99-1.01x: not asked) */
            const char *vr = (const char *)kvqi_chunk_values(c, ci, g) + in * c->value.code_size;
            for (size_t o = 0; o < nb * c->value.code_size; o += 64) __builtin_prefetch(vr + o, 0, 3);
        }
        score_coded(c, s, G, g, ci, in, nb);
        mask_block(A, s, T->first_visible, T->nqb, t0, nb);
        softmax_block(c, s, G, nb);
        accum_coded(c, s, G, g, ci, in, nb, &A->status);
        t0 += nb;
    }
    size_t exact_stop = KVQI_MIN(T->visible, t_end), R = c->ring;
    for (size_t t0 = KVQI_MAX(KVQI_MAX(coded_end, sink_end), t_begin); t0 < exact_stop;) {
        size_t nb = KVQI_MIN(B, exact_stop - t0);
        if (!c->coded) { /* staged, fp32 */
            exact_block(A, T, s, c->stage_k + t0 * row + (size_t)g * d, c->stage_v + t0 * row + (size_t)g * d,
                        0, t0, nb);
        } else { /* the ring: fp16, or q8_0 rows with channel keys */
            size_t slot = t0 % R, off = (slot * c->n_kv + g) * c->ring_head;
            nb = KVQI_MIN(nb, R - slot);
            if (c->ring_q) {
                /* keys past the probe sit there minus the mean: the probe's apart */
                if (t0 < KVQI_OUTLIER_PROBE_TOKENS) nb = KVQI_MIN(nb, KVQI_OUTLIER_PROBE_TOKENS - t0);
                ring_q8_block(A, T, s, c->win_k + off, c->win_v + off, t0, nb,
                              c->key_mean && t0 >= KVQI_OUTLIER_PROBE_TOKENS);
            }
            else
                exact_block(A, T, s, c->win_k + off, c->win_v + off, 1, t0, nb);
        }
        t0 += nb;
    }
}

/* out = (R^T acc + acc_x) / l for every row of the task. */
static void finish_task(const attend_ctx *A, const task_view *T, kvqi_attend_scratch *s) {
    const kvq_cache *c = A->c;
    uint32_t d = c->dim;
    for (uint32_t v = 0; v < T->Gt; v++) {
        size_t qi = v / A->G, h = v % A->G;
        float *o = A->out + ((T->i0 + qi) * A->n_q_heads + (size_t)T->g * A->G + h) * d;
        float *ax = s->acc_x + (size_t)v * d;
        if (c->value.path == KVQI_PATH_ROT) {
            /* R^T acc = sum_r acc_r (row r of R), acc taken out of lane order first */
            float *nat = s->vdec;
            const float *acc = s->acc + (size_t)v * d;
            if (use_v8(c))
                for (uint32_t p = 0; p < d; p++) nat[kvqi_rot_v8_coordinate(c->value.rot.bits, p)] = acc[p];
            else if (use_v16(c))
                for (uint32_t p = 0; p < d; p++) nat[kvqi_rot_v16_coordinate(c->value.rot.bits, p)] = acc[p];
            else
                for (uint32_t p = 0; p < d; p++) nat[c->value.lane[p]] = acc[p];
            if (c->value.had) {
                kvqi_rotation_inverse(c->value.had, nat, nat, c->kern->isa);
                for (uint32_t j = 0; j < d; j++) ax[j] += nat[j];
            } else if (c->value.rotation_h)
                for (uint32_t r0 = 0; r0 < d; r0 += KVQI_MAX_BLOCK_TOKENS)
                    c->kern->accum_f16(nat + r0, d, 1, d, (const uint8_t *)(c->value.rotation_h + (size_t)r0 * d),
                                       d * sizeof(uint16_t), KVQI_MIN((size_t)KVQI_MAX_BLOCK_TOKENS, (size_t)(d - r0)),
                                       ax);
            else
                c->kern->axpy_rows(c->value.rotation, nat, d, d, ax);
        } else if (c->value.path == KVQI_PATH_VQ) {
            float *nat = s->vdec; /* R^T acc: the rotated sum in natural order */
            kvqi_rotation_inverse(c->value.had, s->acc + (size_t)v * d, nat, c->kern->isa);
            for (uint32_t j = 0; j < d; j++) ax[j] += nat[j];
        } else
            for (uint32_t j = 0; j < d; j++) ax[j] += s->acc[(size_t)v * d + j];
        float inv = s->l[v] > 0.0f ? 1.0f / s->l[v] : 0.0f;
        for (uint32_t j = 0; j < d; j++) o[j] = ax[j] * inv;
    }
}

/* One KV head and a block of up to qb queries: the block's query heads act as G * qb
 * heads of one group, so each code is decoded once for all of them. */
/* The first token any query of the task can see (sliding window; else 0). */
static size_t task_low(const attend_ctx *A, const task_view *T) {
    size_t SW = A->c->cfg.sliding_window;
    return SW && T->first_visible > SW ? T->first_visible - SW : 0;
}

static void attend_task(void *vctx, size_t task, unsigned thread) {
    attend_ctx *A = vctx;
    kvq_cache *c = A->c;
    task_view T = view_of(A, task);
    kvqi_attend_scratch sc, *s = &sc;
    s->q = A->bufs[thread];
    carve(s, c, T.Gt);
    prepare_queries(A, &T, s);
    attend_range(A, &T, s, task_low(A, &T), T.visible);
    finish_task(A, &T, s);
}

/* Split-K, first pass: one token range of one task; its state is parked for the merge. */
static void attend_split_task(void *vctx, size_t task, unsigned thread) {
    attend_ctx *A = vctx;
    kvq_cache *c = A->c;
    size_t group_task = task / A->n_split, part = task % A->n_split;
    task_view T = view_of(A, group_task);
    kvqi_attend_scratch sc, *s = &sc;
    s->q = A->bufs[thread];
    carve(s, c, T.Gt);
    prepare_queries(A, &T, s);
    size_t b = A->t_lo + part * A->split_tokens;
    size_t e = part + 1 == A->n_split ? T.visible : KVQI_MIN(T.visible, b + A->split_tokens);
    b = KVQI_MAX(b, task_low(A, &T));
    if (b < e) attend_range(A, &T, s, b, e);
    size_t Gt = T.Gt, d = c->dim;
    float *p = A->partials + task * partial_floats(c, A->G * A->qb);
    memcpy(p, s->m, Gt * sizeof(float));
    memcpy(p + Gt, s->l, Gt * sizeof(float));
    memcpy(p + 2 * Gt, s->acc, Gt * d * sizeof(float));
    memcpy(p + 2 * Gt + Gt * d, s->acc_x, Gt * d * sizeof(float));
}

/* Split-K, second pass: the ranges' states merged (each rescaled to the common max, as
 * the online softmax does between blocks), then finished as one task. */
static void attend_merge_task(void *vctx, size_t group_task, unsigned thread) {
    attend_ctx *A = vctx;
    kvq_cache *c = A->c;
    task_view T = view_of(A, group_task);
    kvqi_attend_scratch sc, *s = &sc;
    s->q = A->bufs[thread];
    carve(s, c, T.Gt);
    size_t Gt = T.Gt, d = c->dim, stride = partial_floats(c, A->G * A->qb);
    const float *base = A->partials + group_task * A->n_split * stride;
    for (size_t v = 0; v < Gt; v++) {
        float m = -INFINITY;
        for (uint32_t p = 0; p < A->n_split; p++) m = fmaxf(m, base[p * stride + v]);
        float l = 0.0f, *acc = s->acc + v * d, *ax = s->acc_x + v * d;
        memset(acc, 0, d * sizeof(float));
        memset(ax, 0, d * sizeof(float));
        for (uint32_t p = 0; p < A->n_split && m != -INFINITY; p++) {
            const float *P = base + p * stride;
            if (P[v] == -INFINITY) continue; /* a range this query sees none of */
            float w = kvqi_exp_neg(P[v] - m);
            l += w * P[Gt + v];
            const float *pa = P + 2 * Gt + v * d, *px = P + 2 * Gt + Gt * d + v * d;
            for (size_t j = 0; j < d; j++) {
                acc[j] += w * pa[j];
                ax[j] += w * px[j];
            }
        }
        s->m[v] = m;
        s->l[v] = l;
    }
    finish_task(A, &T, s);
}

/* Token ranges per task so that n_tasks * ranges fills the threads evenly: the fewest
 * rounds of work per thread, a small price per extra range (its merge and query
 * preparation), ranges of at least two attend blocks. Only with fewer than two tasks per
 * thread (3 KV heads on 2 threads: 1.5 rounds of work instead of 2). */
static uint32_t choose_splits(size_t n_tasks, unsigned n_threads, size_t tokens) {
    if (n_threads <= 1 || n_tasks >= 2 * (size_t)n_threads) return 1;
    size_t max_s = tokens / (2 * KVQI_ATTEND_BLOCK);
    if (max_s > 64) max_s = 64;
    uint32_t best = 1;
    double best_cost = (double)((n_tasks + n_threads - 1) / n_threads);
    for (size_t S = 2; S <= max_s; S++) {
        size_t rounds = (n_tasks * S + n_threads - 1) / n_threads;
        double cost = (double)rounds / (double)S + 0.02 * (double)S;
        if (cost < best_cost - 1e-9) {
            best_cost = cost;
            best = (uint32_t)S;
        }
    }
    return best;
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
    /* short attention (few tokens) is not worth a pool barrier: it runs on the calling
     * thread, in the pool's buffers all the same (one scratch for every cache on a pool) */
    kvq_threadpool *run = pool;
    size_t macs = n_queries * (c->n_tokens + 1) * (size_t)n_q_heads * c->dim * 2;
    if (macs < KVQI_ATTEND_SERIAL_MACS) run = NULL;
    unsigned n_threads = run ? kvq_threadpool_size(run) : 1;
    /* prefill: blocks of up to 4 queries share the decoding of every code, as long as
     * that leaves two tasks per thread; the grouping does not change any result */
    uint32_t qb = n_queries >= 4 ? 4 : (uint32_t)n_queries;
    while (qb > 1 && c->n_kv * ((n_queries + qb - 1) / qb) < 2 * (size_t)n_threads) qb /= 2;
    n_tasks = c->n_kv * ((n_queries + qb - 1) / qb);
    attend_ctx A = {.c = c, .q = q, .out = out, .n_q_heads = n_q_heads, .G = G,
                    .n_queries = n_queries, .qb = qb, .n_split = 1, .scale = scale};
    atomic_init(&A.status, KVQ_OK);
    /* split-K when there are fewer (KV head, query block) tasks than threads: decode of
     * a model with few KV heads */
    size_t first_visible = c->n_tokens - n_queries + 1;
    size_t SW = c->cfg.sliding_window;
    A.t_lo = SW && first_visible > SW ? first_visible - SW : 0;
    A.n_split = run ? choose_splits(n_tasks, n_threads, first_visible - A.t_lo) : 1;
    size_t partial_bytes = 0;
    if (A.n_split > 1) {
        size_t per = (first_visible - A.t_lo + A.n_split - 1) / A.n_split;
        A.split_tokens = (per + KVQI_ATTEND_BLOCK - 1) / KVQI_ATTEND_BLOCK * KVQI_ATTEND_BLOCK;
        if (kvqi_mul_size(n_tasks * A.n_split, partial_floats(c, G * qb), &partial_bytes) != KVQ_OK ||
            kvqi_mul_size(partial_bytes, sizeof(float), &partial_bytes) != KVQ_OK)
            return KVQ_ERR_OVERFLOW;
    }
    float *own = NULL;
    if (pool) {
        kvq_status st = kvqi_threadpool_buffers(pool, scratch_floats(c, G * qb) * sizeof(float),
                                                partial_bytes, &A.bufs, &A.partials);
        if (st != KVQ_OK) return st;
    } else {
        kvq_status st = ensure_scratch(c, G * qb);
        if (st != KVQ_OK) return st;
        own = c->scratch[0].q;
        A.bufs = &own;
    }
    if (A.n_split > 1) {
        kvqi_parallel_for(run, n_tasks * A.n_split, attend_split_task, &A);
        kvqi_parallel_for(run, n_tasks, attend_merge_task, &A);
    } else {
        kvqi_parallel_for(run, n_tasks, attend_task, &A);
    }
    return (kvq_status)atomic_load(&A.status);
}
