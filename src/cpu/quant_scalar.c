/*
 * quant_scalar.c - plain C reference kernels of the quantizers (quant_kernels.h): the
 * definition of the codes every SIMD table must reproduce bit for bit.
 */
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"

static inline unsigned get_index(const uint8_t *p, uint32_t i, unsigned bits) {
    size_t bit = (size_t)i * bits;
    size_t byte = bit >> 3;
    unsigned shift = (unsigned)(bit & 7);
    unsigned v = p[byte] >> shift;
    if (shift + bits > 8) v |= (unsigned)p[byte + 1] << (8 - shift);
    return v & ((1u << bits) - 1u);
}

static void quantize_pack_scalar(const float *x, uint32_t n, float scale, const float *thr,
                                 unsigned bits, uint8_t *out) {
    unsigned n_thr = (1u << bits) - 1u;
    memset(out, 0, ((size_t)n * bits + 7) / 8);
    for (uint32_t i = 0; i < n; i++) {
        float v = x[i] * scale;
        unsigned idx = 0;
        for (unsigned k = 0; k < n_thr; k++) idx += v > thr[k];
        size_t bit = (size_t)i * bits;
        size_t byte = bit >> 3;
        unsigned shift = (unsigned)(bit & 7);
        out[byte] |= (uint8_t)(idx << shift);
        if (shift + bits > 8) out[byte + 1] |= (uint8_t)(idx >> (8 - shift));
    }
}

static void sign_pack_scalar(const float *x, uint32_t n, uint8_t *out) {
    memset(out, 0, ((size_t)n + 7) / 8);
    for (uint32_t i = 0; i < n; i++)
        if (x[i] > 0.0f) out[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static void lut_decode_scalar(const uint8_t *packed, uint32_t n, unsigned bits,
                              const float *cb, float scale, float *out) {
    for (uint32_t i = 0; i < n; i++) out[i] = cb[get_index(packed, i, bits)] * scale;
}

static float lut_dot_scalar(const float *q, const uint8_t *packed, uint32_t n,
                            unsigned bits, const float *cb) {
    float acc = 0.0f;
    for (uint32_t i = 0; i < n; i++) acc += q[i] * cb[get_index(packed, i, bits)];
    return acc;
}

static float masked_sum_scalar(const float *z, const uint8_t *bits, uint32_t n) {
    float acc = 0.0f;
    for (uint32_t i = 0; i < n; i++)
        if ((bits[i >> 3] >> (i & 7)) & 1) acc += z[i];
    return acc;
}

static uint32_t and_popcount_scalar(const uint8_t *a, const uint8_t *b, size_t nbytes) {
    uint32_t c = 0;
    for (size_t i = 0; i < nbytes; i++) c += (uint32_t)__builtin_popcount((unsigned)(a[i] & b[i]));
    return c;
}

static uint32_t popcount_planes_scalar(const uint8_t *code, const uint8_t *planes,
                                       size_t plane_stride, unsigned n_planes, size_t nbytes,
                                       uint32_t *pop_code) {
    uint32_t acc = 0;
    for (unsigned j = 0; j < n_planes; j++)
        acc += and_popcount_scalar(code, planes + j * plane_stride, nbytes) << j;
    *pop_code = and_popcount_scalar(code, code, nbytes);
    return acc;
}

static void fp16_from_f32_scalar(const float *x, size_t n, uint16_t *out) {
    for (size_t i = 0; i < n; i++) out[i] = kvqi_fp32_to_fp16(x[i]);
}

static void fp16_to_f32_scalar(const uint16_t *h, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) out[i] = kvqi_fp16_to_fp32(h[i]);
}

static float fp16_dot_scalar(const float *q, const uint16_t *h, size_t n) {
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) acc += q[i] * kvqi_fp16_to_fp32(h[i]);
    return acc;
}

/* The canonical 16-lane sum of |y| (same order as kvqi_dot_scalar against ones). */
static float abs_sum_canonical(const float *y, uint32_t n) {
    float acc[KVQI_DOT_LANES] = {0};
    for (uint32_t i = 0; i < n; i++) acc[i % KVQI_DOT_LANES] += fabsf(y[i]);
    for (int w = KVQI_DOT_LANES / 2; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) acc[j] = acc[j] + acc[j + w];
    return acc[0];
}

static void hadamard_sign_batch_scalar(const float *x, size_t rows, uint32_t dim,
                                       const float *sign, uint8_t *bits_out,
                                       size_t bits_stride, float *norm_out,
                                       float *abs_sum_out) {
    float y[1024];
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        norm_out[r] = sqrtf(kvqi_dot_scalar(xr, xr, dim));
        for (uint32_t i = 0; i < dim; i++) y[i] = xr[i] * sign[i];
        kvqi_fwht_scalar(y, dim);
        sign_pack_scalar(y, dim, bits_out + r * bits_stride);
        if (abs_sum_out) abs_sum_out[r] = abs_sum_canonical(y, dim);
    }
}

void kvqi_rvq1_batch_scalar(const float *x, size_t rows, const kvqi_hadamard *had,
                            const float *cb_g, const float *thr_g, const float *cb_l,
                            const float *thr_l, unsigned residuals, uint8_t *codes,
                            size_t code_size) {
    const uint32_t d = had->dim, plane = d / 8;
    const float sqrt_d = sqrtf((float)d);
    float y[4096];
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        uint8_t *c = codes + r * code_size, *bits = c + 2 * residuals;
        float norm = sqrtf(kvqi_dot_scalar(xr, xr, d));
        uint16_t h = kvqi_fp32_to_fp16(norm);
        c[0] = (uint8_t)h;
        c[1] = (uint8_t)(h >> 8);
        float a = norm > 0.0f ? sqrt_d / norm : 0.0f;
        memcpy(y, xr, d * sizeof(float));
        kvqi_hadamard_apply(had, y, KVQ_ISA_SCALAR);
        memset(bits, 0, (size_t)residuals * plane);
        for (uint32_t i = 0; i < d; i++) {
            float v = y[i] * a;
            unsigned b = v > thr_g[0];
            bits[i >> 3] |= (uint8_t)(b << (i & 7));
            y[i] = v - cb_g[b];
        }
        for (unsigned st = 1; st < residuals; st++) {
            float spread = sqrtf(kvqi_dot_scalar(y, y, d) / (float)d);
            h = kvqi_fp32_to_fp16(spread);
            c[2 * st] = (uint8_t)h;
            c[2 * st + 1] = (uint8_t)(h >> 8);
            float sh = kvqi_fp16_to_fp32(h), inv = sh > 0.0f ? 1.0f / sh : 0.0f;
            uint8_t *pb = bits + st * plane;
            for (uint32_t i = 0; i < d; i++) {
                unsigned b = y[i] * inv > thr_l[0];
                pb[i >> 3] |= (uint8_t)(b << (i & 7));
                y[i] = y[i] - cb_l[b] * sh;
            }
        }
    }
}

void kvqi_hadamard_pow2_scalar(const kvqi_hadamard *had, const float *in, float *out, int inverse) {
    if (out != in) memcpy(out, in, had->dim * sizeof(float));
    if (inverse) kvqi_hadamard_inverse(had, out, KVQ_ISA_SCALAR);
    else kvqi_hadamard_apply(had, out, KVQ_ISA_SCALAR);
}

/* ------------------------------------------------- llama.cpp q8_0 / q4_0 */

void kvqi_q8_0_encode_scalar(const float *x, uint32_t nb, uint8_t *out) {
    for (uint32_t b = 0; b < nb; b++, x += 32, out += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = fabsf(x[j]);
            if (v > amax) amax = v;
        }
        const float d = amax / ((1 << 7) - 1);
        const float id = kvqi_block_inv(d);
        const uint16_t h = kvqi_fp32_to_fp16(d);
        out[0] = (uint8_t)h;
        out[1] = (uint8_t)(h >> 8);
        for (int j = 0; j < 32; j++) {
            const float r = roundf(x[j] * id);
            out[2 + j] = (uint8_t)(int8_t)(r == r ? r : 0.0f); /* NaN -> 0, as the SIMD convert */
        }
    }
}

static void q8_0_decode_scalar(const uint8_t *in, uint32_t nb, float *out) {
    for (uint32_t b = 0; b < nb; b++, in += 34, out += 32) {
        const float d = kvqi_fp16_to_fp32((uint16_t)(in[0] | in[1] << 8));
        for (int j = 0; j < 32; j++) out[j] = (float)(int8_t)in[2 + j] * d;
    }
}

static float q8_0_dot_scalar(const float *q, const uint8_t *in, uint32_t nb) {
    float acc = 0.0f;
    for (uint32_t b = 0; b < nb; b++, in += 34, q += 32) {
        float s = 0.0f;
        for (int j = 0; j < 32; j++) s += q[j] * (float)(int8_t)in[2 + j];
        acc += s * kvqi_fp16_to_fp32((uint16_t)(in[0] | in[1] << 8));
    }
    return acc;
}

void kvqi_q4_0_encode_scalar(const float *x, uint32_t nb, uint8_t *out) {
    for (uint32_t b = 0; b < nb; b++, x += 32, out += 18) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = x[j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -8;
        const float id = kvqi_block_inv(d);
        const uint16_t h = kvqi_fp32_to_fp16(d);
        out[0] = (uint8_t)h;
        out[1] = (uint8_t)(h >> 8);
        for (int j = 0; j < 16; j++) {
            const float x0 = x[j] * id, x1 = x[16 + j] * id;
            const float f0 = x0 + 8.5f, f1 = x1 + 8.5f; /* NaN -> 0, as the SIMD convert */
            const int v0 = f0 == f0 ? (int8_t)f0 : 0, v1 = f1 == f1 ? (int8_t)f1 : 0;
            const uint8_t xi0 = (uint8_t)(v0 < 15 ? v0 : 15), xi1 = (uint8_t)(v1 < 15 ? v1 : 15);
            out[2 + j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

static void q4_0_decode_scalar(const uint8_t *in, uint32_t nb, float *out) {
    for (uint32_t b = 0; b < nb; b++, in += 18, out += 32) {
        const float d = kvqi_fp16_to_fp32((uint16_t)(in[0] | in[1] << 8));
        for (int j = 0; j < 16; j++) {
            out[j] = (float)((in[2 + j] & 0x0F) - 8) * d;
            out[j + 16] = (float)((in[2 + j] >> 4) - 8) * d;
        }
    }
}

static float q4_0_dot_scalar(const float *q, const uint8_t *in, uint32_t nb) {
    float acc = 0.0f;
    for (uint32_t b = 0; b < nb; b++, in += 18, q += 32) {
        float s = 0.0f;
        for (int j = 0; j < 16; j++)
            s += q[j] * (float)((in[2 + j] & 0x0F) - 8) + q[j + 16] * (float)((in[2 + j] >> 4) - 8);
        acc += s * kvqi_fp16_to_fp32((uint16_t)(in[0] | in[1] << 8));
    }
    return acc;
}

const kvqi_quant_kernels kvqi_quant_scalar = {
    KVQ_ISA_SCALAR,       quantize_pack_scalar, sign_pack_scalar,     lut_decode_scalar,
    lut_dot_scalar,       masked_sum_scalar,    and_popcount_scalar,  popcount_planes_scalar,
    fp16_from_f32_scalar,
    fp16_to_f32_scalar,   fp16_dot_scalar,      hadamard_sign_batch_scalar,
    kvqi_rvq1_batch_scalar, kvqi_hadamard_pow2_scalar, kvqi_q8_0_encode_scalar,  q8_0_decode_scalar,   q8_0_dot_scalar,
    kvqi_q4_0_encode_scalar, q4_0_decode_scalar,  q4_0_dot_scalar,
};

#if defined(KVQ_HAVE_X86_SIMD)
extern const kvqi_quant_kernels kvqi_quant_avx2, kvqi_quant_avx512;
#endif
#if defined(KVQ_HAVE_NEON)
extern const kvqi_quant_kernels kvqi_quant_neon;
#endif

const kvqi_quant_kernels *kvqi_quant_kernels_for(kvq_isa resolved) {
    switch (resolved) {
#if defined(KVQ_HAVE_X86_SIMD)
    case KVQ_ISA_AVX2: return &kvqi_quant_avx2;
    case KVQ_ISA_AVX512: return &kvqi_quant_avx512;
#endif
#if defined(KVQ_HAVE_NEON)
    case KVQ_ISA_NEON: return &kvqi_quant_neon;
#endif
    default: return &kvqi_quant_scalar;
    }
}
