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

const kvqi_quant_kernels kvqi_quant_neon = {
    KVQ_ISA_NEON,       quantize_pack_neon, sign_pack_neon,    lut_decode_neon,
    lut_dot_neon,       masked_sum_neon,    and_popcount_neon, fp16_from_f32_neon,
    fp16_to_f32_neon,   fp16_dot_neon,      hadamard_sign_batch_neon,
};
