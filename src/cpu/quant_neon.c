/*
 * quant_neon.c - AArch64 Advanced SIMD quantizer kernels (quant_kernels.h). Codes come out
 * bit for bit as quant_scalar.c's: indices are threshold counts after one multiply, signs
 * are comparisons, norms and |y| sums use the canonical 16-lane order, the Hadamard
 * butterflies are the scalar order (base_neon.c). Scores may differ by float rounding.
 */
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"
#include "quant/quant.h"

/* Kernels take at most one vector of the quantizers' largest dim per call. */
#define KVQI_QUANT_NEON_MAX_N KVQI_QUANT_MAX_DIM

extern const kvqi_base_kernels kvqi_base_neon;

/* Pack n one-byte indices of `bits` bits LSB-first (the whole stream's bytes). */
static void pack_idx(const uint8_t *idx, uint32_t n, unsigned bits, uint8_t *out) {
    if (bits == 8) {
        memcpy(out, idx, n);
        return;
    }
    memset(out, 0, ((size_t)n * bits + 7) / 8);
    if (bits == 4) {
        for (uint32_t i = 0; i < n; i += 2)
            out[i >> 1] = (uint8_t)(idx[i] | (i + 1 < n ? idx[i + 1] << 4 : 0));
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        size_t bit = (size_t)i * bits;
        unsigned shift = (unsigned)(bit & 7);
        out[bit >> 3] |= (uint8_t)(idx[i] << shift);
        if (shift + bits > 8) out[(bit >> 3) + 1] |= (uint8_t)(idx[i] >> (8 - shift));
    }
}

static void unpack_idx(const uint8_t *p, uint32_t n, unsigned bits, uint8_t *idx) {
    if (bits == 8) {
        memcpy(idx, p, n);
        return;
    }
    if (bits == 4) {
        uint32_t i = 0;
        const uint8x16_t low = vdupq_n_u8(0x0F);
        for (; i + 32 <= n; i += 32) {
            uint8x16_t b = vld1q_u8(p + i / 2);
            uint8x16x2_t z = vzipq_u8(vandq_u8(b, low), vshrq_n_u8(b, 4));
            vst1q_u8(idx + i, z.val[0]);
            vst1q_u8(idx + i + 16, z.val[1]);
        }
        for (; i < n; i++) idx[i] = (uint8_t)((p[i >> 1] >> ((i & 1) * 4)) & 15);
        return;
    }
    const unsigned mask = (1u << bits) - 1u;
    for (uint32_t i = 0; i < n; i++) {
        size_t bit = (size_t)i * bits;
        unsigned shift = (unsigned)(bit & 7);
        unsigned v = p[bit >> 3] >> shift;
        if (shift + bits > 8) v |= (unsigned)p[(bit >> 3) + 1] << (8 - shift);
        idx[i] = (uint8_t)(v & mask);
    }
}

/* counts #{k : v > thr[k]} for 4 lanes; a true comparison is all ones (-1), so subtract */
static inline uint32x4_t count_above(float32x4_t v, const float *thr, unsigned n_thr) {
    uint32x4_t cnt = vdupq_n_u32(0);
    for (unsigned k = 0; k < n_thr; k++) cnt = vsubq_u32(cnt, vcgtq_f32(v, vdupq_n_f32(thr[k])));
    return cnt;
}

static void quantize_pack_neon(const float *x, uint32_t n, float scale, const float *thr,
                               unsigned bits, uint8_t *out) {
    const unsigned n_thr = (1u << bits) - 1u;
    const float32x4_t s = vdupq_n_f32(scale);
    uint8_t idx[KVQI_QUANT_NEON_MAX_N + 8];
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint32x4_t c0 = count_above(vmulq_f32(vld1q_f32(x + i), s), thr, n_thr);
        uint32x4_t c1 = count_above(vmulq_f32(vld1q_f32(x + i + 4), s), thr, n_thr);
        uint16x8_t w = vcombine_u16(vmovn_u32(c0), vmovn_u32(c1));
        vst1_u8(idx + i, vmovn_u16(w));
    }
    for (; i < n; i++) {
        float v = x[i] * scale;
        unsigned c = 0;
        for (unsigned k = 0; k < n_thr; k++) c += v > thr[k];
        idx[i] = (uint8_t)c;
    }
    pack_idx(idx, n, bits, out);
}

/* 8 comparison masks -> one byte, lane j at bit j */
static inline uint8_t mask_byte(uint32x4_t lo, uint32x4_t hi) {
    static const uint32_t w_lo[4] = {1, 2, 4, 8}, w_hi[4] = {16, 32, 64, 128};
    uint32x4_t b = vorrq_u32(vandq_u32(lo, vld1q_u32(w_lo)), vandq_u32(hi, vld1q_u32(w_hi)));
    return (uint8_t)vaddvq_u32(b);
}

static void sign_pack_neon(const float *x, uint32_t n, uint8_t *out) {
    memset(out, 0, ((size_t)n + 7) / 8);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        out[i / 8] = mask_byte(vcgtq_f32(vld1q_f32(x + i), zero),
                               vcgtq_f32(vld1q_f32(x + i + 4), zero));
    for (; i < n; i++)
        if (x[i] > 0.0f) out[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static void lut_decode_neon(const uint8_t *packed, uint32_t n, unsigned bits, const float *cb,
                            float scale, float *out) {
    uint8_t idx[KVQI_QUANT_NEON_MAX_N + 8];
    unpack_idx(packed, n, bits, idx);
    const float32x4_t s = vdupq_n_f32(scale);
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float g[4] = {cb[idx[i]], cb[idx[i + 1]], cb[idx[i + 2]], cb[idx[i + 3]]};
        vst1q_f32(out + i, vmulq_f32(vld1q_f32(g), s));
    }
    for (; i < n; i++) out[i] = cb[idx[i]] * scale;
}

static float lut_dot_neon(const float *q, const uint8_t *packed, uint32_t n, unsigned bits,
                          const float *cb) {
    uint8_t idx[KVQI_QUANT_NEON_MAX_N + 8];
    unpack_idx(packed, n, bits, idx);
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float g[8];
        for (int j = 0; j < 8; j++) g[j] = cb[idx[i + j]];
        a0 = vfmaq_f32(a0, vld1q_f32(q + i), vld1q_f32(g));
        a1 = vfmaq_f32(a1, vld1q_f32(q + i + 4), vld1q_f32(g + 4));
    }
    float r = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; i++) r += q[i] * cb[idx[i]];
    return r;
}

static float masked_sum_neon(const float *z, const uint8_t *bits, uint32_t n) {
    static const uint32_t sel_lo[4] = {1, 2, 4, 8}, sel_hi[4] = {16, 32, 64, 128};
    const uint32x4_t lo = vld1q_u32(sel_lo), hi = vld1q_u32(sel_hi);
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint32x4_t b = vdupq_n_u32(bits[i / 8]);
        uint32x4_t m0 = vtstq_u32(b, lo), m1 = vtstq_u32(b, hi);
        a0 = vaddq_f32(a0, vreinterpretq_f32_u32(vandq_u32(m0, vreinterpretq_u32_f32(vld1q_f32(z + i)))));
        a1 = vaddq_f32(a1,
                       vreinterpretq_f32_u32(vandq_u32(m1, vreinterpretq_u32_f32(vld1q_f32(z + i + 4)))));
    }
    float r = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; i++)
        if ((bits[i >> 3] >> (i & 7)) & 1) r += z[i];
    return r;
}

static uint32_t and_popcount_neon(const uint8_t *a, const uint8_t *b, size_t nbytes) {
    uint64_t c = 0;
    size_t i = 0;
    while (i + 16 <= nbytes) {
        /* a u16 lane gains at most 16 per block: 4096 blocks stay below 65536 */
        uint16x8_t acc = vdupq_n_u16(0);
        for (size_t blocks = 0; blocks < 4096 && i + 16 <= nbytes; blocks++, i += 16)
            acc = vpadalq_u8(acc, vcntq_u8(vandq_u8(vld1q_u8(a + i), vld1q_u8(b + i))));
        c += vaddlvq_u16(acc);
    }
    for (; i < nbytes; i++) c += (uint64_t)__builtin_popcount((unsigned)(a[i] & b[i]));
    return (uint32_t)c;
}

static uint32_t popcount_planes_neon(const uint8_t *code, const uint8_t *planes, size_t plane_stride,
                                     unsigned n_planes, size_t nbytes, uint32_t *pop_code) {
    uint32_t acc = 0;
    for (unsigned j = 0; j < n_planes; j++)
        acc += and_popcount_neon(code, planes + j * plane_stride, nbytes) << j;
    *pop_code = and_popcount_neon(code, code, nbytes);
    return acc;
}

/* FCVT rounds to nearest even (FPCR's default mode) and keeps subnormals (FZ off by
 * default on Linux), which is what kvqi_fp32_to_fp16 computes in integers. */
static void fp16_from_f32_neon(const float *x, size_t n, uint16_t *out) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1_u16(out + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) out[i] = kvqi_fp32_to_fp16(x[i]);
}

static void fp16_to_f32_neon(const uint16_t *h, size_t n, float *out) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
    for (; i < n; i++) out[i] = kvqi_fp16_to_fp32(h[i]);
}

static float fp16_dot_neon(const float *q, const uint16_t *h, size_t n) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 = vfmaq_f32(a0, vld1q_f32(q + i), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
        a1 = vfmaq_f32(a1, vld1q_f32(q + i + 4),
                       vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i + 4))));
    }
    float r = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; i++) r += q[i] * kvqi_fp16_to_fp32(h[i]);
    return r;
}

static void hadamard_sign_batch_neon(const float *x, size_t rows, uint32_t dim, const float *sign,
                                     uint8_t *bits_out, size_t bits_stride, float *norm_out,
                                     float *abs_sum_out) {
    if (dim < KVQI_DOT_LANES) {
        kvqi_quant_scalar.hadamard_sign_batch(x, rows, dim, sign, bits_out, bits_stride, norm_out,
                                              abs_sum_out);
        return;
    }
    float y[1024];
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        norm_out[r] = sqrtf(kvqi_base_neon.dot(xr, xr, dim));
        for (uint32_t i = 0; i < dim; i += 4)
            vst1q_f32(y + i, vmulq_f32(vld1q_f32(xr + i), vld1q_f32(sign + i)));
        kvqi_base_neon.fwht(y, dim);
        sign_pack_neon(y, dim, bits_out + r * bits_stride);
        if (abs_sum_out) {
            /* lanes 0-3, 4-7, 8-11, 12-15 of the canonical 16-lane accumulator */
            float32x4_t a[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
            for (uint32_t i = 0; i < dim; i += 16)
                for (int k = 0; k < 4; k++) a[k] = vaddq_f32(a[k], vabsq_f32(vld1q_f32(y + i + 4 * k)));
            /* fold j += j+8, then j += j+4, then the last four lanes in the scalar order */
            float32x4_t f = vaddq_f32(vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]));
            float l[4];
            vst1q_f32(l, f);
            l[0] = l[0] + l[2];
            l[1] = l[1] + l[3];
            abs_sum_out[r] = l[0] + l[1];
        }
    }
}

/* The 1-bit RVQ encoder, operation for operation as kvqi_rvq1_batch_scalar: the norm and
 * stage spreads in the canonical dot order, the rotation through the bit-identical NEON
 * FWHT, and every per-coordinate step (scale, compare, subtract) is one IEEE operation. */
static void rvq1_batch_neon(const float *x, size_t rows, const kvqi_hadamard *had,
                            const float *cb_g, const float *thr_g, const float *cb_l,
                            const float *thr_l, unsigned residuals, uint8_t *codes,
                            size_t code_size) {
    const uint32_t d = had->dim, plane = d / 8;
    if (d % 8) {
        kvqi_rvq1_batch_scalar(x, rows, had, cb_g, thr_g, cb_l, thr_l, residuals, codes, code_size);
        return;
    }
    const float sqrt_d = sqrtf((float)d);
    float y[KVQI_QUANT_NEON_MAX_N];
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        uint8_t *c = codes + r * code_size, *bits = c + 2 * residuals;
        float norm = sqrtf(kvqi_base_neon.dot(xr, xr, d));
        uint16_t h = kvqi_fp32_to_fp16(norm);
        c[0] = (uint8_t)h;
        c[1] = (uint8_t)(h >> 8);
        float a = norm > 0.0f ? sqrt_d / norm : 0.0f;
        memcpy(y, xr, d * sizeof(float));
        kvqi_hadamard_apply(had, y, KVQ_ISA_NEON);
        memset(bits, 0, (size_t)residuals * plane);
        {
            const float32x4_t av = vdupq_n_f32(a), t = vdupq_n_f32(thr_g[0]);
            const float32x4_t c0 = vdupq_n_f32(cb_g[0]), c1 = vdupq_n_f32(cb_g[1]);
            for (uint32_t i = 0; i < d; i += 8) {
                float32x4_t v0 = vmulq_f32(vld1q_f32(y + i), av);
                float32x4_t v1 = vmulq_f32(vld1q_f32(y + i + 4), av);
                uint32x4_t m0 = vcgtq_f32(v0, t), m1 = vcgtq_f32(v1, t);
                bits[i >> 3] = mask_byte(m0, m1);
                vst1q_f32(y + i, vsubq_f32(v0, vbslq_f32(m0, c1, c0)));
                vst1q_f32(y + i + 4, vsubq_f32(v1, vbslq_f32(m1, c1, c0)));
            }
        }
        for (unsigned st = 1; st < residuals; st++) {
            float spread = sqrtf(kvqi_base_neon.dot(y, y, d) / (float)d);
            h = kvqi_fp32_to_fp16(spread);
            c[2 * st] = (uint8_t)h;
            c[2 * st + 1] = (uint8_t)(h >> 8);
            float sh = kvqi_fp16_to_fp32(h), inv = sh > 0.0f ? 1.0f / sh : 0.0f;
            uint8_t *pb = bits + st * plane;
            const float32x4_t iv = vdupq_n_f32(inv), t = vdupq_n_f32(thr_l[0]), shv = vdupq_n_f32(sh);
            /* cb_l[b] * sh first, as the reference rounds it, then the subtraction */
            const float32x4_t s0 = vmulq_f32(vdupq_n_f32(cb_l[0]), shv), s1 = vmulq_f32(vdupq_n_f32(cb_l[1]), shv);
            for (uint32_t i = 0; i < d; i += 8) {
                float32x4_t y0 = vld1q_f32(y + i), y1 = vld1q_f32(y + i + 4);
                uint32x4_t m0 = vcgtq_f32(vmulq_f32(y0, iv), t), m1 = vcgtq_f32(vmulq_f32(y1, iv), t);
                pb[i >> 3] = mask_byte(m0, m1);
                vst1q_f32(y + i, vsubq_f32(y0, vbslq_f32(m0, s1, s0)));
                vst1q_f32(y + i + 4, vsubq_f32(y1, vbslq_f32(m1, s1, s0)));
            }
        }
    }
}

/* core's transform through the NEON butterflies, which are the scalar ones bit for bit */
static void hadamard_pow2_neon(const kvqi_hadamard *had, const float *in, float *out, int inverse) {
    if (out != in) memcpy(out, in, had->dim * sizeof(float));
    if (inverse) kvqi_hadamard_inverse(had, out, KVQ_ISA_NEON);
    else kvqi_hadamard_apply(had, out, KVQ_ISA_NEON);
}

/* ------------------------------------------------- llama.cpp q8_0 / q4_0 */

static inline float load_half(const uint8_t *p) { return kvqi_fp16_to_fp32((uint16_t)(p[0] | p[1] << 8)); }

/* max |x| over a block; vmaxnm skips NaN as the reference's `v > amax` does */
static inline float block_amax(const float *x) {
    float32x4_t m = vabsq_f32(vld1q_f32(x));
    for (int k = 1; k < 8; k++) m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(x + 4 * k)));
    return vmaxnmvq_f32(m);
}

static void q8_0_encode_neon(const float *x, uint32_t nb, uint8_t *out) {
    for (uint32_t b = 0; b < nb; b++, x += 32, out += 34) {
        float amax = block_amax(x);
        if (!(amax == amax)) amax = 0.0f; /* every value NaN: the reference keeps 0 */
        const float d = amax / ((1 << 7) - 1);
        const float id = kvqi_block_inv(d);
        const uint16_t h = kvqi_fp32_to_fp16(d);
        out[0] = (uint8_t)h;
        out[1] = (uint8_t)(h >> 8);
        const float32x4_t idv = vdupq_n_f32(id);
        for (int k = 0; k < 8; k += 2) {
            /* vcvta: round to nearest, ties away from zero, as roundf */
            int32x4_t i0 = vcvtaq_s32_f32(vmulq_f32(vld1q_f32(x + 4 * k), idv));
            int32x4_t i1 = vcvtaq_s32_f32(vmulq_f32(vld1q_f32(x + 4 * k + 4), idv));
            int16x8_t w = vcombine_s16(vmovn_s32(i0), vmovn_s32(i1));
            vst1_s8((int8_t *)(out + 2 + 4 * k), vmovn_s16(w));
        }
    }
}

static void q8_0_decode_neon(const uint8_t *in, uint32_t nb, float *out) {
    for (uint32_t b = 0; b < nb; b++, in += 34, out += 32) {
        const float32x4_t d = vdupq_n_f32(load_half(in));
        for (int k = 0; k < 2; k++) {
            int8x16_t v = vld1q_s8((const int8_t *)(in + 2 + 16 * k));
            int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_s8(vget_high_s8(v));
            float *o = out + 16 * k;
            vst1q_f32(o, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d));
            vst1q_f32(o + 4, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))), d));
            vst1q_f32(o + 8, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d));
            vst1q_f32(o + 12, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))), d));
        }
    }
}

static float q8_0_dot_neon(const float *q, const uint8_t *in, uint32_t nb) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (uint32_t b = 0; b < nb; b++, in += 34, q += 32) {
        float32x4_t s = vdupq_n_f32(0.0f);
        for (int k = 0; k < 2; k++) {
            int8x16_t v = vld1q_s8((const int8_t *)(in + 2 + 16 * k));
            int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_s8(vget_high_s8(v));
            const float *qq = q + 16 * k;
            s = vfmaq_f32(s, vld1q_f32(qq), vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))));
            s = vfmaq_f32(s, vld1q_f32(qq + 4), vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))));
            s = vfmaq_f32(s, vld1q_f32(qq + 8), vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))));
            s = vfmaq_f32(s, vld1q_f32(qq + 12), vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))));
        }
        acc = vfmaq_f32(acc, s, vdupq_n_f32(load_half(in)));
    }
    return vaddvq_f32(acc);
}

static void q4_0_encode_neon(const float *x, uint32_t nb, uint8_t *out) {
    for (uint32_t b = 0; b < nb; b++, x += 32, out += 18) {
        /* the signed value of the first largest |x|, as the reference's strict `<` scan */
        const float amax = block_amax(x);
        float max = 0.0f;
        if (amax > 0.0f)
            for (int j = 0; j < 32; j++)
                if (fabsf(x[j]) == amax) {
                    max = x[j];
                    break;
                }
        const float d = max / -8;
        const float id = kvqi_block_inv(d);
        const uint16_t h = kvqi_fp32_to_fp16(d);
        out[0] = (uint8_t)h;
        out[1] = (uint8_t)(h >> 8);
        const float32x4_t idv = vdupq_n_f32(id), half8 = vdupq_n_f32(8.5f);
        const int32x4_t fifteen = vdupq_n_s32(15);
        for (int k = 0; k < 4; k++) {
            /* (int8_t)(x * id + 8.5f): truncation toward zero, then at most 15 */
            int32x4_t v0 = vcvtq_s32_f32(vaddq_f32(vmulq_f32(vld1q_f32(x + 4 * k), idv), half8));
            int32x4_t v1 = vcvtq_s32_f32(vaddq_f32(vmulq_f32(vld1q_f32(x + 16 + 4 * k), idv), half8));
            v0 = vminq_s32(v0, fifteen);
            v1 = vminq_s32(v1, fifteen);
            int32x4_t packed = vorrq_s32(vandq_s32(v0, fifteen), vshlq_n_s32(vandq_s32(v1, fifteen), 4));
            uint8_t tmp[16];
            vst1q_u8(tmp, vreinterpretq_u8_s32(packed));
            for (int j = 0; j < 4; j++) out[2 + 4 * k + j] = tmp[4 * j];
        }
    }
}

static inline void q4_values(const uint8_t *in, float32x4_t *v) {
    uint8x16_t b = vld1q_u8(in + 2);
    int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15))), vdupq_n_s8(8));
    int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), vdupq_n_s8(8));
    int8x16_t parts[2] = {lo, hi};
    for (int p = 0; p < 2; p++) {
        int16x8_t a = vmovl_s8(vget_low_s8(parts[p])), c = vmovl_s8(vget_high_s8(parts[p]));
        v[4 * p] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a)));
        v[4 * p + 1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(a)));
        v[4 * p + 2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(c)));
        v[4 * p + 3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(c)));
    }
}

static void q4_0_decode_neon(const uint8_t *in, uint32_t nb, float *out) {
    for (uint32_t b = 0; b < nb; b++, in += 18, out += 32) {
        const float32x4_t d = vdupq_n_f32(load_half(in));
        float32x4_t v[8];
        q4_values(in, v);
        for (int k = 0; k < 8; k++) vst1q_f32(out + 4 * k, vmulq_f32(v[k], d));
    }
}

static float q4_0_dot_neon(const float *q, const uint8_t *in, uint32_t nb) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (uint32_t b = 0; b < nb; b++, in += 18, q += 32) {
        float32x4_t v[8], s = vdupq_n_f32(0.0f);
        q4_values(in, v);
        for (int k = 0; k < 8; k++) s = vfmaq_f32(s, vld1q_f32(q + 4 * k), v[k]);
        acc = vfmaq_f32(acc, s, vdupq_n_f32(load_half(in)));
    }
    return vaddvq_f32(acc);
}

const kvqi_quant_kernels kvqi_quant_neon = {
    .isa = KVQ_ISA_NEON,
    .quantize_pack = quantize_pack_neon,
    .sign_pack = sign_pack_neon,
    .lut_decode = lut_decode_neon,
    .lut_dot = lut_dot_neon,
    .masked_sum = masked_sum_neon,
    .and_popcount = and_popcount_neon,
    .popcount_planes = popcount_planes_neon,
    .fp16_from_f32 = fp16_from_f32_neon,
    .fp16_to_f32 = fp16_to_f32_neon,
    .fp16_dot = fp16_dot_neon,
    .hadamard_sign_batch = hadamard_sign_batch_neon,
    .rvq1_batch = rvq1_batch_neon,
    .hadamard_pow2 = hadamard_pow2_neon,
    .q8_0_encode = q8_0_encode_neon,
    .q8_0_decode = q8_0_decode_neon,
    .q8_0_dot = q8_0_dot_neon,
    .q4_0_encode = q4_0_encode_neon,
    .q4_0_decode = q4_0_decode_neon,
    .q4_0_dot = q4_0_dot_neon,
};
