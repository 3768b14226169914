/*
 * engine_neon.c - AArch64 Advanced SIMD row kernels of the GGUF engine, the counterpart of
 * engine_avx2.c: a quantized weight row (Q4_0, Q4_1, Q8_0, F16, F32) times a float vector
 * with each block unpacked in registers, four-row products, and llama.cpp-style int8
 * activations (round half to even) against Q4_0/Q4_1/Q8_0 rows in integer multiply-adds.
 * The scalar references are in engine/dequant.c; tests compare the two.
 */
#include <arm_neon.h>
#include <string.h>

#include "engine/engine.h"

static inline float h2f(const uint8_t *p) { return kvqi_eng_h2f(kvqi_eng_rd16(p)); }

static float dot_f32_neon(const float *a, const float *b, size_t n) {
    float32x4_t s0 = vdupq_n_f32(0), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static float row_dot_f32_neon(const void *row, const float *x, size_t n) { return dot_f32_neon(row, x, n); }

static inline float32x4_t f16x4(const uint8_t *p) {
    uint16x4_t h;
    memcpy(&h, p, 8);
    return vcvt_f32_f16(vreinterpret_f16_u16(h));
}

static float row_dot_f16_neon(const void *row, const float *x, size_t n) {
    const uint8_t *p = row;
    float32x4_t s0 = vdupq_n_f32(0), s1 = s0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, f16x4(p + 2 * i), vld1q_f32(x + i));
        s1 = vfmaq_f32(s1, f16x4(p + 2 * i + 8), vld1q_f32(x + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) sum += h2f(p + 2 * i) * x[i];
    return sum;
}

/* The 32 values of a block as floats: v[0..3] from 16 low bytes, v[4..7] from 16 high. */
static inline void widen_u8x16(uint8x16_t b, float32x4_t *v) {
    uint16x8_t lo = vmovl_u8(vget_low_u8(b)), hi = vmovl_u8(vget_high_u8(b));
    v[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
    v[1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)));
    v[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
    v[3] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)));
}

static inline void widen_s8x16(int8x16_t b, float32x4_t *v) {
    int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
    v[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    v[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
    v[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    v[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
}

/* nibbles of a Q4 block in element order: low nibbles are 0..15, high nibbles 16..31 */
static inline void q4_values(const uint8_t *qs, float32x4_t *v) {
    uint8x16_t b = vld1q_u8(qs);
    widen_u8x16(vandq_u8(b, vdupq_n_u8(0x0f)), v);
    widen_u8x16(vshrq_n_u8(b, 4), v + 4);
}

/* sum(q * x) over a block, and the block's sum of x */
static inline float32x4_t q4_block(const uint8_t *qs, const float *x, float32x4_t *xs) {
    float32x4_t v[8], acc = vdupq_n_f32(0), sx = vdupq_n_f32(0);
    q4_values(qs, v);
    for (int k = 0; k < 8; k++) {
        float32x4_t xv = vld1q_f32(x + 4 * k);
        acc = vfmaq_f32(acc, v[k], xv);
        sx = vaddq_f32(sx, xv);
    }
    *xs = sx;
    return acc;
}

static float row_dot_q4_0_neon(const void *row, const float *x, size_t n) {
    const uint8_t *b = row;
    float32x4_t acc = vdupq_n_f32(0);
    for (size_t i = 0; i < n / 32; i++, b += 18, x += 32) {
        float32x4_t xs, qx = q4_block(b + 2, x, &xs);
        /* (q - 8) * d . x = d * (q . x - 8 * sum x) */
        acc = vfmaq_f32(acc, vdupq_n_f32(h2f(b)), vfmsq_f32(qx, vdupq_n_f32(8.0f), xs));
    }
    return vaddvq_f32(acc);
}

static float row_dot_q4_1_neon(const void *row, const float *x, size_t n) {
    const uint8_t *b = row;
    float32x4_t acc = vdupq_n_f32(0);
    for (size_t i = 0; i < n / 32; i++, b += 20, x += 32) {
        float32x4_t xs, qx = q4_block(b + 4, x, &xs);
        acc = vfmaq_f32(acc, vdupq_n_f32(h2f(b)), qx);
        acc = vfmaq_f32(acc, vdupq_n_f32(h2f(b + 2)), xs);
    }
    return vaddvq_f32(acc);
}

static float row_dot_q8_0_neon(const void *row, const float *x, size_t n) {
    const uint8_t *b = row;
    float32x4_t acc = vdupq_n_f32(0);
    for (size_t i = 0; i < n / 32; i++, b += 34, x += 32) {
        float32x4_t v[8], s = vdupq_n_f32(0);
        widen_s8x16(vld1q_s8((const int8_t *)(b + 2)), v);
        widen_s8x16(vld1q_s8((const int8_t *)(b + 18)), v + 4);
        for (int k = 0; k < 8; k++) s = vfmaq_f32(s, v[k], vld1q_f32(x + 4 * k));
        acc = vfmaq_f32(acc, vdupq_n_f32(h2f(b)), s);
    }
    return vaddvq_f32(acc);
}

/* Dequantization: one multiply (and for Q4_1 one add) per value, as the reference. */
static void q4_0_to_float_neon(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 18, out += 32) {
        float32x4_t v[8], d = vdupq_n_f32(h2f(b)), eight = vdupq_n_f32(8.0f);
        q4_values(b + 2, v);
        for (int k = 0; k < 8; k++) vst1q_f32(out + 4 * k, vmulq_f32(vsubq_f32(v[k], eight), d));
    }
}

static void q4_1_to_float_neon(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 20, out += 32) {
        float32x4_t v[8], d = vdupq_n_f32(h2f(b)), m = vdupq_n_f32(h2f(b + 2));
        q4_values(b + 4, v);
        for (int k = 0; k < 8; k++) vst1q_f32(out + 4 * k, vaddq_f32(vmulq_f32(v[k], d), m));
    }
}

static void q8_0_to_float_neon(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 34, out += 32) {
        float32x4_t v[8], d = vdupq_n_f32(h2f(b));
        widen_s8x16(vld1q_s8((const int8_t *)(b + 2)), v);
        widen_s8x16(vld1q_s8((const int8_t *)(b + 18)), v + 4);
        for (int k = 0; k < 8; k++) vst1q_f32(out + 4 * k, vmulq_f32(v[k], d));
    }
}

static void f16_to_float_neon(const void *row, float *out, size_t n) {
    const uint8_t *p = row;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(out + i, f16x4(p + 2 * i));
    for (; i < n; i++) out[i] = h2f(p + 2 * i);
}

/* Four rows against n_tok vectors, two tokens at a time so each weight load serves two. */
static void gemm4_f32_neon(const float *w, size_t n, const float *x, size_t n_tok, float *y, size_t y_stride) {
    size_t n4 = n & ~(size_t)3;
    size_t t = 0;
    for (; t + 2 <= n_tok; t += 2) {
        const float *x0 = x + t * n, *x1 = x0 + n;
        float32x4_t a[4][2];
        for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = vdupq_n_f32(0);
        for (size_t i = 0; i < n4; i += 4) {
            float32x4_t v0 = vld1q_f32(x0 + i), v1 = vld1q_f32(x1 + i);
            for (int r = 0; r < 4; r++) {
                float32x4_t wr = vld1q_f32(w + (size_t)r * n + i);
                a[r][0] = vfmaq_f32(a[r][0], wr, v0);
                a[r][1] = vfmaq_f32(a[r][1], wr, v1);
            }
        }
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 2; c++) {
                float s = vaddvq_f32(a[r][c]);
                for (size_t i = n4; i < n; i++) s += w[(size_t)r * n + i] * x[(t + c) * n + i];
                y[(t + c) * y_stride + r] = s;
            }
    }
    for (; t < n_tok; t++)
        for (int r = 0; r < 4; r++) y[t * y_stride + r] = dot_f32_neon(w + (size_t)r * n, x + t * n, n);
}

static void axpy_f32_neon(float *y, const float *x, float a, size_t n) {
    float32x4_t va = vdupq_n_f32(a);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

/* ---------------------------------------------------- int8 activations */

/* The reference's codes exactly: max |x| (exact), the same scale and inverse, and FCVTN's
 * round-half-to-even, which is nearbyintf in the default rounding mode. */
static void quantize_q8_neon(const float *x, size_t n, int8_t *q, float *d, float *s) {
    for (size_t b = 0; b < n / 32; b++, x += 32, q += 32) {
        float32x4_t v[8], m = vdupq_n_f32(0);
        for (int k = 0; k < 8; k++) {
            v[k] = vld1q_f32(x + 4 * k);
            m = vmaxnmq_f32(m, vabsq_f32(v[k])); /* fmaxf skips NaN; so does FMAXNM */
        }
        float amax = vmaxnmvq_f32(m);
        float scale = amax / 127.0f, inv = kvqi_q8_act_inv(amax);
        float32x4_t vi = vdupq_n_f32(inv);
        int32x4_t sum = vdupq_n_s32(0);
        int16x8_t h[4];
        for (int k = 0; k < 8; k += 2) {
            int32x4_t i0 = vcvtnq_s32_f32(vmulq_f32(v[k], vi));
            int32x4_t i1 = vcvtnq_s32_f32(vmulq_f32(v[k + 1], vi));
            sum = vaddq_s32(sum, vaddq_s32(i0, i1));
            h[k / 2] = vcombine_s16(vmovn_s32(i0), vmovn_s32(i1));
        }
        vst1q_s8(q, vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])));
        vst1q_s8(q + 16, vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3])));
        d[b] = scale;
        s[b] = scale * (float)vaddvq_s32(sum);
    }
}

/* sum of u8 * s8 products of 16 bytes, widened through 16-bit products */
static inline int32x4_t dot_u8_s8(uint8x16_t u, int8x16_t q, int32x4_t acc) {
    int16x8_t us_lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(u)));
    int16x8_t us_hi = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(u)));
    int16x8_t p_lo = vmulq_s16(us_lo, vmovl_s8(vget_low_s8(q)));
    int16x8_t p_hi = vmulq_s16(us_hi, vmovl_s8(vget_high_s8(q)));
    return vpadalq_s16(vpadalq_s16(acc, p_lo), p_hi);
}

static inline int32x4_t dot_s8_s8(int8x16_t a, int8x16_t b, int32x4_t acc) {
    int16x8_t p_lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    int16x8_t p_hi = vmull_s8(vget_high_s8(a), vget_high_s8(b));
    return vpadalq_s16(vpadalq_s16(acc, p_lo), p_hi);
}

static inline int q4_int_dot(const uint8_t *qs, const int8_t *q) {
    uint8x16_t b = vld1q_u8(qs);
    int32x4_t acc = dot_u8_s8(vandq_u8(b, vdupq_n_u8(0x0f)), vld1q_s8(q), vdupq_n_s32(0));
    acc = dot_u8_s8(vshrq_n_u8(b, 4), vld1q_s8(q + 16), acc);
    return vaddvq_s32(acc);
}

static float dot_q8_q4_0_neon(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    float acc = 0;
    for (size_t i = 0; i < n / 32; i++, b += 18, q += 32) {
        int sum = q4_int_dot(b + 2, q);
        acc += h2f(b) * (d[i] * (float)sum - 8.0f * s[i]);
    }
    return acc;
}

static float dot_q8_q4_1_neon(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    float acc = 0;
    for (size_t i = 0; i < n / 32; i++, b += 20, q += 32) {
        int sum = q4_int_dot(b + 4, q);
        acc += h2f(b) * d[i] * (float)sum + h2f(b + 2) * s[i];
    }
    return acc;
}

static float dot_q8_q8_0_neon(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    float acc = 0;
    (void)s;
    for (size_t i = 0; i < n / 32; i++, b += 34, q += 32) {
        int32x4_t a = dot_s8_s8(vld1q_s8((const int8_t *)(b + 2)), vld1q_s8(q), vdupq_n_s32(0));
        a = dot_s8_s8(vld1q_s8((const int8_t *)(b + 18)), vld1q_s8(q + 16), a);
        acc += h2f(b) * d[i] * (float)vaddvq_s32(a);
    }
    return acc;
}

/* Overrides the scalar table's entries that have a NEON version (the engine fills the
 * scalar table first, then this). */
void kvqi_engine_kernels_neon(kvqi_engine_kernels *k) {
    k->isa = KVQ_ISA_NEON;
    k->dot_f32 = dot_f32_neon;
    k->axpy_f32 = axpy_f32_neon;
    k->gemm4_f32 = gemm4_f32_neon;
    k->quantize_q8 = quantize_q8_neon;
    k->dot_q8[KVQI_T_Q4_0] = dot_q8_q4_0_neon;
    k->dot_q8[KVQI_T_Q4_1] = dot_q8_q4_1_neon;
    k->dot_q8[KVQI_T_Q8_0] = dot_q8_q8_0_neon;
    k->to_float[KVQI_T_F16] = f16_to_float_neon;
    k->to_float[KVQI_T_Q4_0] = q4_0_to_float_neon;
    k->to_float[KVQI_T_Q4_1] = q4_1_to_float_neon;
    k->to_float[KVQI_T_Q8_0] = q8_0_to_float_neon;
    k->row_dot[KVQI_T_F32] = row_dot_f32_neon;
    k->row_dot[KVQI_T_F16] = row_dot_f16_neon;
    k->row_dot[KVQI_T_Q4_0] = row_dot_q4_0_neon;
    k->row_dot[KVQI_T_Q4_1] = row_dot_q4_1_neon;
    k->row_dot[KVQI_T_Q8_0] = row_dot_q8_0_neon;
}
