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

const kvqi_quant_kernels kvqi_quant_scalar = {
    KVQ_ISA_SCALAR,       quantize_pack_scalar, sign_pack_scalar,     lut_decode_scalar,
    lut_dot_scalar,       masked_sum_scalar,    and_popcount_scalar,  fp16_from_f32_scalar,
    fp16_to_f32_scalar,   fp16_dot_scalar,      hadamard_sign_batch_scalar,
};

#if defined(KVQ_HAVE_X86_SIMD)
extern const kvqi_quant_kernels kvqi_quant_avx2, kvqi_quant_avx512;
#endif

const kvqi_quant_kernels *kvqi_quant_kernels_for(kvq_isa resolved) {
    switch (resolved) {
#if defined(KVQ_HAVE_X86_SIMD)
    case KVQ_ISA_AVX2: return &kvqi_quant_avx2;
    case KVQ_ISA_AVX512: return &kvqi_quant_avx512;
#endif
    default: return &kvqi_quant_scalar;
    }
}
