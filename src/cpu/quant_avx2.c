/*
 * quant_avx2.c - AVX2/FMA/F16C quantizer kernels. Codes come out bit for bit as
 * quant_scalar.c's (threshold counts, canonical 16-lane sums, the scalar butterfly order).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"

extern const kvqi_base_kernels kvqi_base_avx2;

static inline float hsum8(__m256 v) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
}

static void pack_idx(const uint8_t *idx, uint32_t n, unsigned bits, uint8_t *out) {
    if (bits == 8) {
        memcpy(out, idx, n);
        return;
    }
    memset(out, 0, ((size_t)n * bits + 7) / 8);
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
        for (uint32_t i = 0; i < n; i++) idx[i] = (uint8_t)((p[i >> 1] >> ((i & 1) * 4)) & 15);
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

static void quantize_pack_avx2(const float *x, uint32_t n, float scale, const float *thr,
                               unsigned bits, uint8_t *out) {
    unsigned n_thr = (1u << bits) - 1u;
    const __m256 s = _mm256_set1_ps(scale);
    uint8_t idx[4096 + 8];
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), s);
        __m256i cnt = _mm256_setzero_si256();
        for (unsigned k = 0; k < n_thr; k++)
            cnt = _mm256_sub_epi32(cnt, _mm256_castps_si256(
                                            _mm256_cmp_ps(v, _mm256_set1_ps(thr[k]), _CMP_GT_OQ)));
        __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(cnt), _mm256_extracti128_si256(cnt, 1));
        _mm_storel_epi64((__m128i *)(idx + i), _mm_packus_epi16(w, w));
    }
    for (; i < n; i++) {
        float v = x[i] * scale;
        unsigned c = 0;
        for (unsigned k = 0; k < n_thr; k++) c += v > thr[k];
        idx[i] = (uint8_t)c;
    }
    pack_idx(idx, n, bits, out);
}

static void sign_pack_avx2(const float *x, uint32_t n, uint8_t *out) {
    memset(out, 0, ((size_t)n + 7) / 8);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        out[i / 8] = (uint8_t)_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_loadu_ps(x + i), _mm256_setzero_ps(), _CMP_GT_OQ));
    for (; i < n; i++)
        if (x[i] > 0.0f) out[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static void lut_decode_avx2(const uint8_t *packed, uint32_t n, unsigned bits, const float *cb,
                            float scale, float *out) {
    uint8_t idx[4096 + 8];
    unpack_idx(packed, n, bits, idx);
    const __m256 s = _mm256_set1_ps(scale);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i i32 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + i)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_i32gather_ps(cb, i32, 4), s));
    }
    for (; i < n; i++) out[i] = cb[idx[i]] * scale;
}

static float lut_dot_avx2(const float *q, const uint8_t *packed, uint32_t n, unsigned bits,
                          const float *cb) {
    uint8_t idx[4096 + 8];
    unpack_idx(packed, n, bits, idx);
    __m256 acc = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i i32 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + i)));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_i32gather_ps(cb, i32, 4), acc);
    }
    float r = hsum8(acc);
    for (; i < n; i++) r += q[i] * cb[idx[i]];
    return r;
}

static float masked_sum_avx2(const float *z, const uint8_t *bits, uint32_t n) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 acc = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i b = _mm256_and_si256(_mm256_set1_epi32(bits[i / 8]), sel);
        __m256 m = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, sel));
        acc = _mm256_add_ps(acc, _mm256_and_ps(m, _mm256_loadu_ps(z + i)));
    }
    float r = hsum8(acc);
    for (; i < n; i++)
        if ((bits[i >> 3] >> (i & 7)) & 1) r += z[i];
    return r;
}

static uint32_t and_popcount_avx2(const uint8_t *a, const uint8_t *b, size_t nbytes) {
    uint64_t c = 0;
    size_t i = 0;
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        c += (uint64_t)__builtin_popcountll(x & y);
    }
    for (; i < nbytes; i++) c += (uint64_t)__builtin_popcount((unsigned)(a[i] & b[i]));
    return (uint32_t)c;
}

static uint32_t popcount_planes_avx2(const uint8_t *code, const uint8_t *planes,
                                     size_t plane_stride, unsigned n_planes, size_t nbytes,
                                     uint32_t *pop_code) {
    uint32_t acc = 0;
    for (unsigned j = 0; j < n_planes; j++)
        acc += and_popcount_avx2(code, planes + j * plane_stride, nbytes) << j;
    *pop_code = and_popcount_avx2(code, code, nbytes);
    return acc;
}

static void fp16_from_f32_avx2(const float *x, size_t n, uint16_t *out) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) out[i] = kvqi_fp32_to_fp16(x[i]);
}

static void fp16_to_f32_avx2(const uint16_t *h, size_t n, float *out) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) out[i] = kvqi_fp16_to_fp32(h[i]);
}

static float fp16_dot_avx2(const float *q, const uint16_t *h, size_t n) {
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i),
                              _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))), acc);
    float r = hsum8(acc);
    for (; i < n; i++) r += q[i] * kvqi_fp16_to_fp32(h[i]);
    return r;
}

static void hadamard_sign_batch_avx2(const float *x, size_t rows, uint32_t dim, const float *sign,
                                     uint8_t *bits_out, size_t bits_stride, float *norm_out,
                                     float *abs_sum_out) {
    if (dim < 16) {
        kvqi_quant_scalar.hadamard_sign_batch(x, rows, dim, sign, bits_out, bits_stride, norm_out,
                                              abs_sum_out);
        return;
    }
    float y[1024];
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        norm_out[r] = sqrtf(kvqi_base_avx2.dot(xr, xr, dim));
        for (uint32_t i = 0; i < dim; i += 8)
            _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(sign + i)));
        kvqi_base_avx2.fwht(y, dim);
        sign_pack_avx2(y, dim, bits_out + r * bits_stride);
        if (abs_sum_out) {
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (uint32_t i = 0; i < dim; i += 16) {
                a0 = _mm256_add_ps(a0, _mm256_and_ps(_mm256_loadu_ps(y + i), absmask));
                a1 = _mm256_add_ps(a1, _mm256_and_ps(_mm256_loadu_ps(y + i + 8), absmask));
            }
            abs_sum_out[r] = hsum8(_mm256_add_ps(a0, a1));
        }
    }
}

/* ------------------------------------------------- llama.cpp q8_0 / q4_0 */

static inline float load_half(const uint8_t *p) { return _cvtsh_ss((unsigned short)(p[0] | p[1] << 8)); }

static void q8_0_decode_avx2(const uint8_t *in, uint32_t nb, float *out) {
    for (uint32_t b = 0; b < nb; b++, in += 34, out += 32) {
        const __m256 d = _mm256_set1_ps(load_half(in));
        for (int k = 0; k < 4; k++) {
            __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(in + 2 + 8 * k)));
            _mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
        }
    }
}

static float q8_0_dot_avx2(const float *q, const uint8_t *in, uint32_t nb) {
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t b = 0; b < nb; b++, in += 34, q += 32) {
        __m256 s = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(in + 2 + 8 * k)));
            s = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * k), _mm256_cvtepi32_ps(v), s);
        }
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(load_half(in)), acc);
    }
    return hsum8(acc);
}

static inline void q4_values8(const uint8_t *in, int k, __m256 *lo, __m256 *hi) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(in + 2 + 8 * k)));
    const __m256i eight = _mm256_set1_epi32(8), mask = _mm256_set1_epi32(15);
    *lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, mask), eight));
    *hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v, 4), eight));
}

static void q4_0_decode_avx2(const uint8_t *in, uint32_t nb, float *out) {
    for (uint32_t b = 0; b < nb; b++, in += 18, out += 32) {
        const __m256 d = _mm256_set1_ps(load_half(in));
        for (int k = 0; k < 2; k++) {
            __m256 lo, hi;
            q4_values8(in, k, &lo, &hi);
            _mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(lo, d));
            _mm256_storeu_ps(out + 16 + 8 * k, _mm256_mul_ps(hi, d));
        }
    }
}

static float q4_0_dot_avx2(const float *q, const uint8_t *in, uint32_t nb) {
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t b = 0; b < nb; b++, in += 18, q += 32) {
        __m256 s = _mm256_setzero_ps();
        for (int k = 0; k < 2; k++) {
            __m256 lo, hi;
            q4_values8(in, k, &lo, &hi);
            s = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * k), lo, s);
            s = _mm256_fmadd_ps(_mm256_loadu_ps(q + 16 + 8 * k), hi, s);
        }
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(load_half(in)), acc);
    }
    return hsum8(acc);
}

const kvqi_quant_kernels kvqi_quant_avx2 = {
    KVQ_ISA_AVX2,       quantize_pack_avx2, sign_pack_avx2,    lut_decode_avx2,
    lut_dot_avx2,       masked_sum_avx2,    and_popcount_avx2, popcount_planes_avx2,
    fp16_from_f32_avx2,
    fp16_to_f32_avx2,   fp16_dot_avx2,      hadamard_sign_batch_avx2,
    kvqi_rvq1_batch_scalar, kvqi_hadamard_pow2_scalar, kvqi_q8_0_encode_scalar, q8_0_decode_avx2, q8_0_dot_avx2,
    kvqi_q4_0_encode_scalar, q4_0_decode_avx2,   q4_0_dot_avx2,
};
