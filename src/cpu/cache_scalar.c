/*
 * cache_scalar.c - scalar reference of the cache's fused attention kernels (every SIMD
 * version is tested against these), the lane order of rotated codes, and dispatch.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cache_kernels.h"
#include "cpu/cpu.h"

/* Rotated codes of b = 2 or 4 bits are unpacked 16 bytes at a time into 16 lanes, one
 * shift per index in a byte: in a block of 16 * (8 / b) coordinates, lane 16 s + i holds
 * coordinate (8 / b) i + s. 1-, 3- and 8-bit codes keep the natural order. */
uint32_t kvqi_rot_lane_coordinate(uint32_t bits, uint32_t p) {
    if (bits != 2 && bits != 4) return p;
    uint32_t per = 8 / bits, block = 16 * per;
    uint32_t base = p - p % block, in = p % block;
    return base + (in % 16) * per + in / 16;
}

static inline uint32_t rot_index(const uint8_t *idx, uint32_t bits, uint32_t coord) {
    size_t bit = (size_t)coord * bits;
    uint32_t v = idx[bit / 8];
    if (bit % 8 + bits > 8) v |= (uint32_t)idx[bit / 8 + 1] << 8; /* 3 bits straddle bytes */
    return (v >> (bit % 8)) & ((1u << bits) - 1u);
}

static inline float fp16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return kvqi_fp16_to_fp32(h);
}

/* Values of one code in its natural order, for the block layouts. */
static void decode_row(int kind, uint32_t dim, const uint8_t *code, float *x) {
    if (kind == 16) {
        for (uint32_t j = 0; j < dim; j++) x[j] = fp16_at(code + 2 * j);
    } else if (kind == 8) {
        for (uint32_t b = 0; b < dim / 32; b++) {
            const uint8_t *blk = code + 34 * b;
            float d = fp16_at(blk);
            for (uint32_t j = 0; j < 32; j++) x[32 * b + j] = d * (float)(int8_t)blk[2 + j];
        }
    } else {
        for (uint32_t b = 0; b < dim / 32; b++) {
            const uint8_t *blk = code + 18 * b;
            float d = fp16_at(blk);
            for (uint32_t j = 0; j < 16; j++) {
                x[32 * b + j] = d * (float)((int)(blk[2 + j] & 15) - 8);
                x[32 * b + j + 16] = d * (float)((int)(blk[2 + j] >> 4) - 8);
            }
        }
    }
}

static void score_rows(int kind, const float *q, uint32_t G, uint32_t dim, const uint8_t *k,
                       size_t stride, size_t n, float *scores, size_t ld) {
    float x[4096];
    for (size_t t = 0; t < n; t++) {
        const uint8_t *code = k + t * stride;
        const float *row = (const float *)(const void *)code;
        if (kind != 32) {
            decode_row(kind, dim, code, x);
            row = x;
        }
        for (uint32_t h = 0; h < G; h++) {
            const float *qh = q + (size_t)h * dim;
            float s = 0.0f;
            for (uint32_t j = 0; j < dim; j++) s += qh[j] * row[j];
            scores[h * ld + t] = s;
        }
    }
}

static void accum_rows(int kind, const float *w, size_t ld, uint32_t G, uint32_t dim,
                       const uint8_t *v, size_t stride, size_t n, float *acc) {
    float x[4096];
    for (size_t t = 0; t < n; t++) {
        const uint8_t *code = v + t * stride;
        const float *row = (const float *)(const void *)code;
        if (kind != 32) {
            decode_row(kind, dim, code, x);
            row = x;
        }
        for (uint32_t h = 0; h < G; h++) {
            float wt = w[h * ld + t], *a = acc + (size_t)h * dim;
            for (uint32_t j = 0; j < dim; j++) a[j] += wt * row[j];
        }
    }
}

static void score_f32(const float *q, uint32_t G, uint32_t dim, const uint8_t *k, size_t stride,
                      size_t n, float *scores, size_t ld) {
    score_rows(32, q, G, dim, k, stride, n, scores, ld);
}
static void score_f16(const float *q, uint32_t G, uint32_t dim, const uint8_t *k, size_t stride,
                      size_t n, float *scores, size_t ld) {
    score_rows(16, q, G, dim, k, stride, n, scores, ld);
}
static void score_q8_0(const float *q, uint32_t G, uint32_t dim, const uint8_t *k,
                       size_t stride, size_t n, float *scores, size_t ld) {
    score_rows(8, q, G, dim, k, stride, n, scores, ld);
}
static void score_q4_0(const float *q, uint32_t G, uint32_t dim, const uint8_t *k,
                       size_t stride, size_t n, float *scores, size_t ld) {
    score_rows(4, q, G, dim, k, stride, n, scores, ld);
}
static void accum_f32(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                      size_t stride, size_t n, float *acc) {
    accum_rows(32, w, ld, G, dim, v, stride, n, acc);
}
static void accum_f16(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                      size_t stride, size_t n, float *acc) {
    accum_rows(16, w, ld, G, dim, v, stride, n, acc);
}
static void accum_q8_0(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                       size_t stride, size_t n, float *acc) {
    accum_rows(8, w, ld, G, dim, v, stride, n, acc);
}
static void accum_q4_0(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                       size_t stride, size_t n, float *acc) {
    accum_rows(4, w, ld, G, dim, v, stride, n, acc);
}

/* u[p] for every lane p of one code (lane order), s_p folded in */
static void rot_lanes(const kvqi_rot_layout *L, const uint8_t *code, float *u) {
    for (uint32_t p = 0; p < L->dim; p++) {
        uint32_t r = kvqi_rot_lane_coordinate(L->bits, p);
        float x = KVQI_ROT_CENT(L, 0)[rot_index(code + L->index_offset[0], L->bits, r)];
        for (uint32_t k = 1; k < L->n_pass; k++)
            x += fp16_at(code + L->scale_offset[k]) *
                 KVQI_ROT_CENT(L, k)[rot_index(code + L->index_offset[k], L->bits, r)];
        u[p] = x;
    }
}

/* q and acc are in the lane order: lane p pairs with coordinate kvqi_rot_lane_coordinate */
static void score_rot(const kvqi_rot_layout *L, const float *q, uint32_t G, const uint8_t *k,
                      size_t n, float *scores, size_t ld) {
    float u[4096];
    for (size_t t = 0; t < n; t++) {
        const uint8_t *code = k + t * L->code_size;
        rot_lanes(L, code, u);
        float norm = fp16_at(code + L->norm_offset);
        for (uint32_t h = 0; h < G; h++) {
            const float *qh = q + (size_t)h * L->dim;
            float s = 0.0f;
            for (uint32_t p = 0; p < L->dim; p++) s += qh[p] * u[p];
            scores[h * ld + t] = s * norm;
        }
    }
}

static void accum_rot(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                      const uint8_t *v, size_t n, float *acc) {
    float u[4096];
    for (size_t t = 0; t < n; t++) {
        const uint8_t *code = v + t * L->code_size;
        rot_lanes(L, code, u);
        float norm = fp16_at(code + L->norm_offset);
        for (uint32_t h = 0; h < G; h++) {
            float wt = w[h * ld + t] * norm, *a = acc + (size_t)h * L->dim;
            for (uint32_t p = 0; p < L->dim; p++) a[p] += wt * u[p];
        }
    }
}

static void outlier_add(const uint16_t *vals, size_t stride, const float *q_out, uint32_t G,
                        uint32_t n_out, size_t n, float *scores, size_t ld) {
    for (uint32_t o = 0; o < n_out; o++)
        for (size_t t = 0; t < n; t++) {
            float x = kvqi_fp16_to_fp32(vals[o * stride + t]);
            for (uint32_t h = 0; h < G; h++) scores[h * ld + t] += q_out[(size_t)h * n_out + o] * x;
        }
}

static void axpy_rows(const float *M, const float *x, uint32_t rows, uint32_t dim, float *y) {
    for (uint32_t r = 0; r < rows; r++) {
        const float *row = M + (size_t)r * dim;
        float xr = x[r];
        for (uint32_t j = 0; j < dim; j++) y[j] += xr * row[j];
    }
}

void kvqi_cache_score_rot_i8_ref(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,
                                 const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n,
                                 float *scores, size_t ld) {
    for (size_t t = 0; t < n; t++) {
        const uint8_t *code = k + t * L->code_size, *idx = code + L->index_offset[0];
        float norm = fp16_at(code + L->norm_offset);
        for (uint32_t h = 0; h < G; h++) {
            int32_t sum = 0;
            for (uint32_t b = 0; b < L->dim; b++) {
                uint32_t j = kvqi_rot_i8_coordinate(L->bits, b);
                sum += (int32_t)L->cent_u8[rot_index(idx, L->bits, j)] * q8[(size_t)h * L->dim + b];
            }
            scores[h * ld + t] = (float)(sum - qsum[h]) * qscale[h] * norm;
        }
    }
}

void kvqi_cache_score_q4_0_i8_ref(const int8_t *q8, const float *qscale, uint32_t G, uint32_t dim,
                                  const uint8_t *k, size_t stride, size_t n, float *scores, size_t ld) {
    for (size_t t = 0; t < n; t++) {
        const uint8_t *row = k + t * stride;
        for (uint32_t h = 0; h < G; h++) {
            const int8_t *qh = q8 + (size_t)h * dim;
            float acc[4] = {0};
            for (uint32_t b = 0; b < dim / 32; b++) {
                const uint8_t *blk = row + 18 * (size_t)b;
                int32_t P = 0;
                for (uint32_t i = 0; i < 16; i++)
                    P += ((int)(blk[2 + i] & 15) - 8) * qh[32 * b + i] + ((int)(blk[2 + i] >> 4) - 8) * qh[32 * b + 16 + i];
                acc[b % 4] = fmaf((float)P, fp16_at(blk), acc[b % 4]);
            }
            scores[h * ld + t] = ((acc[0] + acc[2]) + (acc[1] + acc[3])) * qscale[h];
        }
    }
}

void kvqi_cache_score_q8_0_i16_ref(const int16_t *q16, const float *qscale, uint32_t G, uint32_t dim,
                                   const uint8_t *k, size_t stride, size_t n, float *scores, size_t ld) {
    for (size_t t = 0; t < n; t++) {
        const uint8_t *row = k + t * stride;
        for (uint32_t h = 0; h < G; h++) {
            const int16_t *qh = q16 + (size_t)h * dim;
            float acc[16] = {0};
            for (uint32_t c = 0; c < dim / 64; c++) {
                for (uint32_t j = 0; j < 16; j++) {
                    uint32_t b = 2 * c + j / 8;
                    const uint8_t *blk = row + 34 * (size_t)b;
                    int32_t P = 0;
                    for (uint32_t i = 0; i < 4; i++) {
                        uint32_t e = 16 * (i / 2) + 2 * (j % 8) + i % 2;
                        int kv = (int)(int8_t)blk[2 + e];
                        P += kv * qh[32 * b + e];
                    }
                    acc[j] = fmaf((float)P, fp16_at(blk), acc[j]);
                }
            }
            float s8[8];
            for (uint32_t j = 0; j < 8; j++) s8[j] = acc[j] + acc[j + 8];
            float sum = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
            scores[h * ld + t] = sum * qscale[h];
        }
    }
}

void kvqi_cache_score_signs_i8_ref(const kvqi_sign_layout *L, const int8_t *z8, const float *zscale,
                                   const int32_t *zsum8, uint32_t G, const uint8_t *k, size_t n,
                                   int accumulate, float *scores, size_t ld) {
    for (size_t t = 0; t < n; t++) {
        const uint8_t *c = k + t * L->code_size, *bits = c + L->bits_offset;
        float f = fp16_at(c + L->num_offset);
        if (L->den_offset != KVQI_SIGN_NO_DEN) f = f / fp16_at(c + L->den_offset);
        f = f * L->c0;
        for (uint32_t h = 0; h < G; h++) {
            int32_t S = 0;
            for (uint32_t i = 0; i < L->m; i++)
                if (bits[i / 8] >> (i % 8) & 1) S += z8[(size_t)h * L->m + i];
            float v = f * (zscale[h] * (float)(2 * S - zsum8[h]));
            scores[h * ld + t] = accumulate ? scores[h * ld + t] + v : v;
        }
    }
}

void kvqi_cache_score_rot1_i8_ref(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,
                                  const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n,
                                  float *scores, size_t ld) {
    for (size_t t = 0; t < n; t++) {
        const uint8_t *code = k + t * L->code_size;
        float norm = fp16_at(code + L->norm_offset);
        for (uint32_t h = 0; h < G; h++) {
            float acc = 0.0f, qf = (float)(qsum[h] / 128);
            for (uint32_t p = 0; p < L->n_pass; p++) {
                const uint8_t *bits = code + L->index_offset[p];
                int32_t S = 0;
                for (uint32_t r = 0; r < L->dim; r++)
                    if (bits[r / 8] >> (r % 8) & 1) S += q8[(size_t)h * L->dim + r];
                float sp = p ? fp16_at(code + L->scale_offset[p]) : 1.0f;
                float d = KVQI_ROT_CENT(L, p)[1] - KVQI_ROT_CENT(L, p)[0];
                float v = KVQI_ROT_CENT(L, p)[0] * qf + d * (float)S;
                acc = acc + sp * v;
            }
            scores[h * ld + t] = acc * qscale[h] * norm;
        }
    }
}

/* One head's weights of a block rounded against its largest |w norm| to +-top. */
static float rot_weights(const kvqi_rot_layout *L, const float *w, const uint8_t *v, size_t n, float top,
                         int16_t *wq) {
    float wn[KVQI_MAX_BLOCK_TOKENS], mx = 0.0f;
    for (size_t t = 0; t < n; t++) {
        wn[t] = w[t] * fp16_at(v + t * L->code_size + L->norm_offset);
        mx = fabsf(wn[t]) > mx ? fabsf(wn[t]) : mx;
    }
    if (!(mx > 0.0f) || !(mx <= 3.0e38f)) { /* no weight, or not a finite one */
        memset(wq, 0, n * sizeof *wq);
        return 0.0f;
    }
    float inv = top / mx;
    for (size_t t = 0; t < n; t++) wq[t] = (int16_t)lrintf(wn[t] * inv);
    return mx * (1.0f / top) * L->cent_scale;
}

float kvqi_cache_rot_weights_i16(const kvqi_rot_layout *L, const float *w, const uint8_t *v,
                                 size_t n, int16_t *wq) {
    return rot_weights(L, w, v, n, 32767.0f, wq);
}

void kvqi_cache_accum_rot_i16_ref(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                                  const uint8_t *v, size_t n, float *acc) {
    int16_t wq[KVQI_MAX_BLOCK_TOKENS];
    const uint8_t *idx = v + L->index_offset[0];
    for (uint32_t h = 0; h < G; h++) {
        float scale = kvqi_cache_rot_weights_i16(L, w + h * ld, v, n, wq);
        if (scale == 0.0f) continue;
        for (uint32_t p = 0; p < L->dim; p++) {
            uint32_t r = kvqi_rot_v16_coordinate(L->bits, p);
            int32_t sum = 0;
            for (size_t t = 0; t < n; t++)
                sum += (int32_t)wq[t] * ((int32_t)L->cent_u8[rot_index(idx + t * L->code_size, L->bits, r)] - 128);
            acc[(size_t)h * L->dim + p] += (float)sum * scale;
        }
    }
}

float kvqi_cache_rot_weights_u8(const kvqi_rot_layout *L, const float *w, const uint8_t *v, size_t n,
                                int16_t *wq) {
    return rot_weights(L, w, v, n, 255.0f, wq);
}

void kvqi_cache_accum_rot_u8_head(const kvqi_rot_layout *L, const int16_t *wq, float scale, const uint8_t *v,
                                  size_t n, float *acc) {
    const uint8_t *idx = v + L->index_offset[0];
    for (uint32_t p = 0; p < L->dim; p++) {
        uint32_t r = kvqi_rot_v8_coordinate(L->bits, p);
        int32_t sum = 0;
        for (size_t t = 0; t < n; t++)
            sum += (int32_t)wq[t] * ((int32_t)L->cent_u8[rot_index(idx + t * L->code_size, L->bits, r)] - 128);
        acc[p] += (float)sum * scale;
    }
}

void kvqi_cache_accum_rot_u8_ref(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                                 const uint8_t *v, size_t n, float *acc) {
    int16_t wq[KVQI_MAX_BLOCK_TOKENS];
    for (uint32_t h = 0; h < G; h++) {
        float scale = kvqi_cache_rot_weights_u8(L, w + h * ld, v, n, wq);
        if (scale != 0.0f) kvqi_cache_accum_rot_u8_head(L, wq, scale, v, n, acc + (size_t)h * L->dim);
    }
}

void kvqi_cache_accum_q4_0_i16_ref(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                                   size_t stride, size_t n, float *acc) {
    float wn[KVQI_MAX_BLOCK_TOKENS];
    int16_t wq[KVQI_MAX_BLOCK_TOKENS];
    for (uint32_t b = 0; b < dim / 32; b++) {
        const uint8_t *blk = v + 18 * (size_t)b;
        for (uint32_t h = 0; h < G; h++) {
            float mx = 0.0f;
            for (size_t t = 0; t < n; t++) {
                wn[t] = w[h * ld + t] * fp16_at(blk + t * stride);
                mx = fabsf(wn[t]) > mx ? fabsf(wn[t]) : mx;
            }
            if (!(mx > 0.0f) || !(mx <= 3.0e38f)) continue; /* no weight, or not a finite one */
            float inv = 32767.0f / mx, scale = mx * (1.0f / 32767.0f);
            int32_t wsum = 0;
            for (size_t t = 0; t < n; t++) {
                wq[t] = (int16_t)lrintf(wn[t] * inv);
                wsum += wq[t];
            }
            for (uint32_t j = 0; j < 32; j++) {
                int32_t sum = -8 * wsum;
                for (size_t t = 0; t < n; t++) {
                    uint8_t x = blk[t * stride + 2 + j % 16];
                    sum += (int32_t)wq[t] * (int32_t)(j < 16 ? x & 15 : x >> 4);
                }
                acc[(size_t)h * dim + 32 * b + j] += (float)sum * scale;
            }
        }
    }
}

static float exp_sum(float *s, size_t n, float m) {
    float sum = 0.0f;
    for (size_t t = 0; t < n; t++) {
        s[t] = kvqi_exp_neg(s[t] - m);
        sum += s[t];
    }
    return sum;
}

static float max_of(const float *s, size_t n) {
    float m = s[0];
    for (size_t t = 1; t < n; t++) m = s[t] > m ? s[t] : m;
    return m;
}

void kvqi_cache_sign_lut(const float *z, uint32_t m, float *lut) {
    for (uint32_t j = 0; j < m / 8; j++) {
        float *L = lut + (size_t)j * 256;
        L[0] = 0.0f;
        /* each entry: the entry without its lowest set bit, plus that bit's z */
        for (uint32_t b = 1; b < 256; b++)
            L[b] = L[b & (b - 1)] + z[8 * j + (uint32_t)__builtin_ctz(b)];
    }
}

static void score_signs(const kvqi_sign_layout *L, const float *lut, const float *zsum, uint32_t G,
                        const uint8_t *k, size_t n, int accumulate, float *scores, size_t ld) {
    uint32_t nb = L->m / 8;
    for (size_t t = 0; t < n; t++) {
        const uint8_t *c = k + t * L->code_size, *bits = c + L->bits_offset;
        float f = fp16_at(c + L->num_offset);
        if (L->den_offset != KVQI_SIGN_NO_DEN) f = f / fp16_at(c + L->den_offset);
        f = f * L->c0;
        for (uint32_t h = 0; h < G; h++) {
            const float *lh = lut + (size_t)h * nb * 256;
            float s = 0.0f;
            for (uint32_t j = 0; j < nb; j++) s += lh[(size_t)j * 256 + bits[j]];
            float v = f * (2.0f * s - zsum[h]);
            scores[h * ld + t] = accumulate ? scores[h * ld + t] + v : v;
        }
    }
}

const kvqi_cache_kernels kvqi_cache_kernels_scalar = {
    KVQ_ISA_SCALAR, score_f32,  score_f16,  score_q8_0, score_q4_0, score_rot,
    accum_f32,      accum_f16,  accum_q8_0, accum_q4_0, accum_rot,  NULL, 0, NULL, NULL, NULL, 0, outlier_add, axpy_rows, exp_sum,
    max_of,         score_signs, kvqi_chan_weights_scalar, kvqi_chan_dot_scalar, NULL, NULL, NULL,
    kvqi_chan_codes_scalar, kvqi_chan_fit_sums_scalar, NULL, 0, kvqi_chan_prerope_scores_scalar,
};

static kvqi_cache_kernels g_avx2, g_avx2vnni, g_avx512, g_neon;
static int g_vnni; /* g_avx2vnni filled: what the AVX2 entry (and AVX-512's fallbacks) take */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void build_tables(void) {
    g_avx2 = kvqi_cache_kernels_scalar;
    g_avx512 = kvqi_cache_kernels_scalar;
#if defined(KVQ_HAVE_X86_SIMD)
    /* the fill functions are compiled for their ISA: run them only where it exists */
    if (kvq_isa_available(KVQ_ISA_AVX2)) {
        g_avx2.isa = KVQ_ISA_AVX2;
        kvqi_cache_kernels_fill_avx2(&g_avx2);
#if defined(KVQ_HAVE_AVXVNNI)
        if (kvqi_cpu()->avxvnni) {
            g_avx2vnni = g_avx2;
            kvqi_cache_kernels_fill_avxvnni(&g_avx2vnni);
            g_vnni = 1;
        }
#endif
    }
    if (kvq_isa_available(KVQ_ISA_AVX512)) {
        g_avx512 = g_vnni ? g_avx2vnni : g_avx2;
        g_avx512.isa = KVQ_ISA_AVX512;
        kvqi_cache_kernels_fill_avx512(&g_avx512);
        g_avx512.chan_weights = kvqi_chan_weights_avx512;
        g_avx512.chan_dot = kvqi_chan_dot_avx512;
        g_avx512.chan_codes = kvqi_chan_codes_avx512;
        g_avx512.chan_fit_sums = kvqi_chan_fit_sums_avx512;
        g_avx512.chan_prerope_scores = kvqi_chan_prerope_scores_avx512;
    }
#endif
    g_neon = kvqi_cache_kernels_scalar;
#if defined(KVQ_HAVE_NEON)
    g_neon.isa = KVQ_ISA_NEON;
    kvqi_cache_kernels_fill_neon(&g_neon);
#endif
}

const kvqi_cache_kernels *kvqi_cache_kernels_for(kvq_isa resolved) {
    pthread_once(&g_once, build_tables);
#if defined(KVQ_HAVE_X86_SIMD)
    if (resolved == KVQ_ISA_AVX512) return &g_avx512;
    if (resolved == KVQ_ISA_AVX2) return g_vnni ? &g_avx2vnni : &g_avx2;
#endif
#if defined(KVQ_HAVE_NEON)
    if (resolved == KVQ_ISA_NEON) return &g_neon;
#endif
    return &kvqi_cache_kernels_scalar;
}

size_t kvqi_cache_kernel_sets(const kvqi_cache_kernels **out, size_t max) {
    const kvqi_cache_kernels *all[5];
    size_t n = 0;
    pthread_once(&g_once, build_tables);
    all[n++] = &kvqi_cache_kernels_scalar;
    for (int isa = KVQ_ISA_AVX2; isa <= KVQ_ISA_NEON; isa++)
        if (kvq_isa_available((kvq_isa)isa)) all[n++] = kvqi_cache_kernels_for((kvq_isa)isa);
#if defined(KVQ_HAVE_X86_SIMD)
    if (g_vnni && kvq_isa_available(KVQ_ISA_AVX2)) all[n++] = &g_avx2;
#endif
    for (size_t i = 0; i < n && i < max; i++) out[i] = all[i];
    return n;
}
