/*
 * cache_neon.c - AArch64 Advanced SIMD versions of the cache's fused attention kernels
 * (references in cache_scalar.c; same shape as cache_avx2.c): four query heads per pass
 * over 16-coordinate slices held as four 4-lane vectors, so one decode of a code serves
 * every head of the group. exp uses the reference's reduction and polynomial unfused, so
 * each weight equals the scalar one; sums differ from the scalar order by rounding only.
 */
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cache_kernels.h"

#define HG 4

static inline float fp16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return kvqi_fp16_to_fp32(h);
}

/* ---------------------------------------------------------- row decoders */
/* coordinates [16g, 16g+16) of a row into x[0..3] */

static inline void dec_f32(const uint8_t *row, uint32_t g, float32x4_t *x) {
    const float *r = (const float *)(const void *)row + 16 * g;
    for (int i = 0; i < 4; i++) x[i] = vld1q_f32(r + 4 * i);
}

static inline void dec_f16(const uint8_t *row, uint32_t g, float32x4_t *x) {
    const uint8_t *r = row + 32 * g;
    for (int i = 0; i < 2; i++) {
        uint16x8_t h;
        memcpy(&h, r + 16 * i, 16);
        x[2 * i] = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
        x[2 * i + 1] = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
    }
}

static inline void widen_s8(int8x16_t v, float32x4_t d, float32x4_t *x) {
    int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_s8(vget_high_s8(v));
    x[0] = vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d);
    x[1] = vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))), d);
    x[2] = vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d);
    x[3] = vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))), d);
}

static inline void dec_q8_0(const uint8_t *row, uint32_t g, float32x4_t *x) {
    const uint8_t *blk = row + 34 * (g / 2);
    widen_s8(vld1q_s8((const int8_t *)(blk + 2 + 16 * (g % 2))), vdupq_n_f32(fp16_at(blk)), x);
}

/* a q4_0 block's first 16 coordinates are the low nibbles, the next 16 the high ones */
static inline void dec_q4_0(const uint8_t *row, uint32_t g, float32x4_t *x) {
    const uint8_t *blk = row + 18 * (g / 2);
    uint8x16_t b = vld1q_u8(blk + 2);
    uint8x16_t nib = (g % 2) ? vshrq_n_u8(b, 4) : vandq_u8(b, vdupq_n_u8(15));
    int8x16_t v = vsubq_s8(vreinterpretq_s8_u8(nib), vdupq_n_s8(8));
    widen_s8(v, vdupq_n_f32(fp16_at(blk)), x);
}

static inline float32x4_t sum4(const float32x4_t *a) {
    return vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
}

#define DEFINE_ROW_KERNELS(NAME, DEC, SCALAR_SCORE, SCALAR_ACCUM)                             \
    static void score_##NAME(const float *q, uint32_t G, uint32_t dim, const uint8_t *k,     \
                             size_t stride, size_t n, float *scores, size_t ld) {            \
        if (dim % 32) {                                                                      \
            kvqi_cache_kernels_scalar.SCALAR_SCORE(q, G, dim, k, stride, n, scores, ld);     \
            return;                                                                          \
        }                                                                                    \
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                            \
            const float *qh[HG];                                                             \
            for (uint32_t h = 0; h < HG; h++)                                                \
                qh[h] = q + (size_t)(h0 + h < G ? h0 + h : h0) * dim;                        \
            for (size_t t = 0; t < n; t++) {                                                 \
                const uint8_t *row = k + t * stride;                                         \
                float32x4_t a[HG][4];                                                        \
                for (int h = 0; h < HG; h++)                                                 \
                    for (int i = 0; i < 4; i++) a[h][i] = vdupq_n_f32(0.0f);                 \
                for (uint32_t g = 0; g < dim / 16; g++) {                                    \
                    float32x4_t x[4];                                                        \
                    DEC(row, g, x);                                                          \
                    for (int h = 0; h < HG; h++)                                             \
                        for (int i = 0; i < 4; i++)                                          \
                            a[h][i] = vfmaq_f32(a[h][i], vld1q_f32(qh[h] + 16 * g + 4 * i), x[i]); \
                }                                                                            \
                for (uint32_t h = 0; h < HG && h0 + h < G; h++)                              \
                    scores[(h0 + h) * ld + t] = vaddvq_f32(sum4(a[h]));                      \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    static void accum_##NAME(const float *w, size_t ld, uint32_t G, uint32_t dim,            \
                             const uint8_t *v, size_t stride, size_t n, float *acc) {        \
        if (dim % 32) {                                                                      \
            kvqi_cache_kernels_scalar.SCALAR_ACCUM(w, ld, G, dim, v, stride, n, acc);        \
            return;                                                                          \
        }                                                                                    \
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                            \
            uint32_t nh = G - h0 < HG ? G - h0 : HG;                                         \
            for (uint32_t g = 0; g < dim / 16; g++) {                                        \
                float32x4_t r[HG][4];                                                        \
                for (int h = 0; h < HG; h++)                                                 \
                    for (int i = 0; i < 4; i++) r[h][i] = vdupq_n_f32(0.0f);                 \
                for (size_t t = 0; t < n; t++) {                                             \
                    float32x4_t x[4];                                                        \
                    DEC(v + t * stride, g, x);                                               \
                    for (uint32_t h = 0; h < nh; h++) {                                      \
                        float32x4_t wv = vdupq_n_f32(w[(h0 + h) * ld + t]);                  \
                        for (int i = 0; i < 4; i++) r[h][i] = vfmaq_f32(r[h][i], wv, x[i]);  \
                    }                                                                        \
                }                                                                            \
                for (uint32_t h = 0; h < nh; h++) {                                          \
                    float *p = acc + (size_t)(h0 + h) * dim + 16 * g;                        \
                    for (int i = 0; i < 4; i++)                                              \
                        vst1q_f32(p + 4 * i, vaddq_f32(vld1q_f32(p + 4 * i), r[h][i]));      \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_ROW_KERNELS(f32, dec_f32, score_f32, accum_f32)
DEFINE_ROW_KERNELS(f16, dec_f16, score_f16, accum_f16)
DEFINE_ROW_KERNELS(q8_0, dec_q8_0, score_q8_0, accum_q8_0)
DEFINE_ROW_KERNELS(q4_0, dec_q4_0, score_q4_0, accum_q4_0)

/* ------------------------------------------------------- rotated codes */

/* The 16 indices of lanes [16g, 16g+16) of one pass, in the kernels' lane order: 2- and
 * 4-bit codes take one shift of 16 consecutive bytes (kvqi_rot_lane_coordinate), 1-, 3-
 * and 8-bit codes are in the natural order. */
static inline void pass_indices(uint32_t bits, const uint8_t *idx, uint32_t g, uint8_t *out) {
    switch (bits) {
    case 4: {
        uint8x16_t b = vld1q_u8(idx + 16 * (g / 2));
        vst1q_u8(out, (g % 2) ? vshrq_n_u8(b, 4) : vandq_u8(b, vdupq_n_u8(15)));
        break;
    }
    case 2: {
        uint8x16_t b = vld1q_u8(idx + 16 * (g / 4));
        int8x16_t shift = vdupq_n_s8((int8_t)(-2 * (int)(g % 4)));
        vst1q_u8(out, vandq_u8(vshlq_u8(b, shift), vdupq_n_u8(3)));
        break;
    }
    case 3: {
        /* 16 indices in 6 bytes, natural order */
        uint64_t v = 0;
        for (int k = 5; k >= 0; k--) v = (v << 8) | idx[6 * g + (uint32_t)k];
        for (int j = 0; j < 16; j++) out[j] = (uint8_t)((v >> (3 * j)) & 7u);
        break;
    }
    case 1: {
        static const uint8_t sel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
        uint8x16_t b = vcombine_u8(vdup_n_u8(idx[2 * g]), vdup_n_u8(idx[2 * g + 1]));
        vst1q_u8(out, vandq_u8(vtstq_u8(b, vld1q_u8(sel)), vdupq_n_u8(1)));
        break;
    }
    default: vst1q_u8(out, vld1q_u8(idx + 16 * g)); break;
    }
}

static inline void dec_rot(const kvqi_rot_layout *L, const uint8_t *code, const float *sp,
                           uint32_t g, float32x4_t *x) {
    uint8_t ix[16];
    float c[16];
    pass_indices(L->bits, code + L->index_offset[0], g, ix);
    for (int j = 0; j < 16; j++) c[j] = KVQI_ROT_CENT(L, 0)[ix[j]];
    for (int i = 0; i < 4; i++) x[i] = vld1q_f32(c + 4 * i);
    for (uint32_t p = 1; p < L->n_pass; p++) {
        pass_indices(L->bits, code + L->index_offset[p], g, ix);
        for (int j = 0; j < 16; j++) c[j] = KVQI_ROT_CENT(L, p)[ix[j]];
        float32x4_t s = vdupq_n_f32(sp[p]);
        for (int i = 0; i < 4; i++) x[i] = vfmaq_f32(x[i], s, vld1q_f32(c + 4 * i));
    }
}

static inline void pass_scales(const kvqi_rot_layout *L, const uint8_t *code, float *sp) {
    for (uint32_t p = 1; p < L->n_pass; p++) sp[p] = fp16_at(code + L->scale_offset[p]);
}

static void score_rot(const kvqi_rot_layout *L, const float *q, uint32_t G, const uint8_t *k,
                      size_t n, float *scores, size_t ld) {
    uint32_t dim = L->dim;
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        const float *qh[HG];
        for (uint32_t h = 0; h < HG; h++) qh[h] = q + (size_t)(h0 + h < G ? h0 + h : h0) * dim;
        for (size_t t = 0; t < n; t++) {
            const uint8_t *code = k + t * L->code_size;
            float sp[KVQI_ROT_MAX_PASSES];
            pass_scales(L, code, sp);
            float32x4_t a[HG][4];
            for (int h = 0; h < HG; h++)
                for (int i = 0; i < 4; i++) a[h][i] = vdupq_n_f32(0.0f);
            for (uint32_t g = 0; g < dim / 16; g++) {
                float32x4_t x[4];
                dec_rot(L, code, sp, g, x);
                for (int h = 0; h < HG; h++)
                    for (int i = 0; i < 4; i++)
                        a[h][i] = vfmaq_f32(a[h][i], vld1q_f32(qh[h] + 16 * g + 4 * i), x[i]);
            }
            float norm = fp16_at(code + L->norm_offset);
            for (uint32_t h = 0; h < HG && h0 + h < G; h++)
                scores[(h0 + h) * ld + t] = vaddvq_f32(sum4(a[h])) * norm;
        }
    }
}

static void accum_rot(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                      const uint8_t *v, size_t n, float *acc) {
    uint32_t dim = L->dim;
    float norms[KVQI_MAX_BLOCK_TOKENS];
    for (size_t t = 0; t < n; t++) norms[t] = fp16_at(v + t * L->code_size + L->norm_offset);
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        uint32_t nh = G - h0 < HG ? G - h0 : HG;
        float wn[HG][KVQI_MAX_BLOCK_TOKENS];
        for (uint32_t h = 0; h < nh; h++)
            for (size_t t = 0; t < n; t++) wn[h][t] = w[(h0 + h) * ld + t] * norms[t];
        for (uint32_t g = 0; g < dim / 16; g++) {
            float32x4_t r[HG][4];
            for (int h = 0; h < HG; h++)
                for (int i = 0; i < 4; i++) r[h][i] = vdupq_n_f32(0.0f);
            for (size_t t = 0; t < n; t++) {
                const uint8_t *code = v + t * L->code_size;
                float sp[KVQI_ROT_MAX_PASSES];
                float32x4_t x[4];
                pass_scales(L, code, sp);
                dec_rot(L, code, sp, g, x);
                for (uint32_t h = 0; h < nh; h++) {
                    float32x4_t wv = vdupq_n_f32(wn[h][t]);
                    for (int i = 0; i < 4; i++) r[h][i] = vfmaq_f32(r[h][i], wv, x[i]);
                }
            }
            for (uint32_t h = 0; h < nh; h++) {
                float *p = acc + (size_t)(h0 + h) * dim + 16 * g;
                for (int i = 0; i < 4; i++) vst1q_f32(p + 4 * i, vaddq_f32(vld1q_f32(p + 4 * i), r[h][i]));
            }
        }
    }
}

/* ------------------------------------------- outliers and rotations */

static void outlier_add(const uint16_t *vals, size_t stride, const float *q_out, uint32_t G,
                        uint32_t n_out, size_t n, float *scores, size_t ld) {
    size_t nv = n - n % 4;
    for (uint32_t o = 0; o < n_out; o++) {
        const uint16_t *v = vals + o * stride;
        for (size_t t = 0; t < nv; t += 4) {
            float32x4_t x = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(v + t)));
            for (uint32_t h = 0; h < G; h++) {
                float *s = scores + h * ld + t;
                vst1q_f32(s, vfmaq_f32(vld1q_f32(s), vdupq_n_f32(q_out[(size_t)h * n_out + o]), x));
            }
        }
        for (size_t t = nv; t < n; t++) {
            float x = kvqi_fp16_to_fp32(v[t]);
            for (uint32_t h = 0; h < G; h++) scores[h * ld + t] += q_out[(size_t)h * n_out + o] * x;
        }
    }
}

static void axpy_rows(const float *M, const float *x, uint32_t rows, uint32_t dim, float *y) {
    if (dim % 4) {
        kvqi_cache_kernels_scalar.axpy_rows(M, x, rows, dim, y);
        return;
    }
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *m0 = M + (size_t)r * dim;
        float32x4_t x0 = vdupq_n_f32(x[r]), x1 = vdupq_n_f32(x[r + 1]);
        float32x4_t x2 = vdupq_n_f32(x[r + 2]), x3 = vdupq_n_f32(x[r + 3]);
        for (uint32_t j = 0; j < dim; j += 4) {
            float32x4_t a = vld1q_f32(y + j);
            a = vfmaq_f32(a, x0, vld1q_f32(m0 + j));
            a = vfmaq_f32(a, x1, vld1q_f32(m0 + dim + j));
            a = vfmaq_f32(a, x2, vld1q_f32(m0 + 2 * (size_t)dim + j));
            a = vfmaq_f32(a, x3, vld1q_f32(m0 + 3 * (size_t)dim + j));
            vst1q_f32(y + j, a);
        }
    }
    for (; r < rows; r++) {
        const float *row = M + (size_t)r * dim;
        float32x4_t xr = vdupq_n_f32(x[r]);
        for (uint32_t j = 0; j < dim; j += 4) vst1q_f32(y + j, vfmaq_f32(vld1q_f32(y + j), xr, vld1q_f32(row + j)));
    }
}

/* ----------------------------------------------------------------- exp */

/* kvqi_exp_neg on 4 lanes, operation for operation (no fused multiply-add), so every
 * weight is bit-identical to the scalar reference's. */
static inline float32x4_t exp_neg4(float32x4_t x) {
    uint32x4_t live = vcgeq_f32(x, vdupq_n_f32(-87.0f));
    float32x4_t u = vsubq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)), vdupq_n_f32(0.5f));
    int32x4_t fi_i = vcvtq_s32_f32(u); /* truncation; u <= 0 on live lanes: ceil */
    float32x4_t fi = vcvtq_f32_s32(fi_i);
    float32x4_t r = vsubq_f32(x, vmulq_f32(fi, vdupq_n_f32(KVQI_EXP_LN2_HI)));
    r = vsubq_f32(r, vmulq_f32(fi, vdupq_n_f32(KVQI_EXP_LN2_LO)));
    float32x4_t p = vdupq_n_f32(KVQI_EXP_C6);
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(KVQI_EXP_C5));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(KVQI_EXP_C4));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(KVQI_EXP_C3));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(KVQI_EXP_C2));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(1.0f));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(1.0f));
    /* dead lanes may hold any fi: clamp the exponent before shifting, then mask */
    int32x4_t e = vaddq_s32(vmaxq_s32(fi_i, vdupq_n_s32(-126)), vdupq_n_s32(127));
    float32x4_t scale = vreinterpretq_f32_s32(vshlq_n_s32(e, 23));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(vmulq_f32(p, scale)), live));
}

/* Token t always lands in lane t % 4 and the tail goes through the same lanes padded
 * with -inf (weight exactly 0): the sum of a row does not depend on where n ends, so a
 * query scored alone or in a block with later queries (whose extra, masked tokens add
 * zeros) gets the same bits. */
static float exp_sum(float *s, size_t n, float m) {
    float32x4_t mv = vdupq_n_f32(m), sum = vdupq_n_f32(0.0f);
    size_t t = 0;
    for (; t + 4 <= n; t += 4) {
        float32x4_t e = exp_neg4(vsubq_f32(vld1q_f32(s + t), mv));
        vst1q_f32(s + t, e);
        sum = vaddq_f32(sum, e);
    }
    if (t < n) {
        float pad[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, e4[4];
        memcpy(pad, s + t, (n - t) * sizeof(float));
        float32x4_t e = exp_neg4(vsubq_f32(vld1q_f32(pad), mv));
        vst1q_f32(e4, e);
        memcpy(s + t, e4, (n - t) * sizeof(float));
        sum = vaddq_f32(sum, e);
    }
    return vaddvq_f32(sum);
}

void kvqi_cache_kernels_fill_neon(kvqi_cache_kernels *k) {
    k->score_f32 = score_f32;
    k->score_f16 = score_f16;
    k->score_q8_0 = score_q8_0;
    k->score_q4_0 = score_q4_0;
    k->score_rot = score_rot;
    k->accum_f32 = accum_f32;
    k->accum_f16 = accum_f16;
    k->accum_q8_0 = accum_q8_0;
    k->accum_q4_0 = accum_q4_0;
    k->accum_rot = accum_rot;
    k->outlier_add = outlier_add;
    k->axpy_rows = axpy_rows;
    k->exp_sum = exp_sum;
}
