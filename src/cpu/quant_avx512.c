/*
 * quant_avx512.c - AVX-512 (F/BW/VL/DQ/VPOPCNTDQ) quantizer kernels. Codes come out bit
 * for bit as quant_scalar.c's: indices are threshold counts, norms and |y| sums use the
 * canonical 16-lane order, the Hadamard butterflies are the scalar order.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"

/* indices (one byte each) of 16 values: #{k : v > thr[k]} */
static inline __m512i count_above(__m512 v, const float *thr, unsigned n_thr) {
    __m512i idx = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi32(1);
    for (unsigned k = 0; k < n_thr; k++) {
        __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(thr[k]), _CMP_GT_OQ);
        idx = _mm512_mask_add_epi32(idx, m, idx, one);
    }
    return idx;
}

/* Pack n one-byte indices of `bits` bits LSB-first (bytes for the whole stream). */
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
    if (bits == 2) {
        for (uint32_t i = 0; i < n; i++) out[i >> 2] |= (uint8_t)(idx[i] << ((i & 3) * 2));
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
        for (; i + 32 <= n; i += 32) {
            __m128i b = _mm_loadu_si128((const __m128i *)(p + i / 2));
            __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F));
            __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
            _mm_storeu_si128((__m128i *)(idx + i), _mm_unpacklo_epi8(lo, hi));
            _mm_storeu_si128((__m128i *)(idx + i + 16), _mm_unpackhi_epi8(lo, hi));
        }
        for (; i < n; i++) idx[i] = (uint8_t)((p[i >> 1] >> ((i & 1) * 4)) & 15);
        return;
    }
    if (bits == 1) {
        uint32_t i = 0;
        for (; i + 64 <= n; i += 64) {
            __mmask64 m;
            memcpy(&m, p + i / 8, 8);
            _mm512_storeu_si512((void *)(idx + i), _mm512_maskz_mov_epi8(m, _mm512_set1_epi8(1)));
        }
        for (; i < n; i++) idx[i] = (uint8_t)((p[i >> 3] >> (i & 7)) & 1);
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

static void quantize_pack_avx512(const float *x, uint32_t n, float scale, const float *thr,
                                 unsigned bits, uint8_t *out) {
    unsigned n_thr = (1u << bits) - 1u;
    const __m512 s = _mm512_set1_ps(scale);
    if (bits == 1) {
        memset(out, 0, ((size_t)n + 7) / 8);
        const __m512 t = _mm512_set1_ps(thr[0]);
        uint32_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __mmask16 m = _mm512_cmp_ps_mask(_mm512_mul_ps(_mm512_loadu_ps(x + i), s), t, _CMP_GT_OQ);
            out[i / 8] = (uint8_t)m;
            out[i / 8 + 1] = (uint8_t)(m >> 8);
        }
        for (; i < n; i++)
            if (x[i] * scale > thr[0]) out[i >> 3] |= (uint8_t)(1u << (i & 7));
        return;
    }
    uint8_t idx[4096 + 16];
    uint32_t i = 0;
    for (; i < n; i += 16) {
        __mmask16 lm = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(lm, x + i), s);
        _mm512_mask_cvtepi32_storeu_epi8(idx + i, lm, count_above(v, thr, n_thr));
    }
    pack_idx(idx, n, bits, out);
}

static void sign_pack_avx512(const float *x, uint32_t n, uint8_t *out) {
    memset(out, 0, ((size_t)n + 7) / 8);
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_setzero_ps(), _CMP_GT_OQ);
        out[i / 8] = (uint8_t)m;
        out[i / 8 + 1] = (uint8_t)(m >> 8);
    }
    for (; i < n; i++)
        if (x[i] > 0.0f) out[i >> 3] |= (uint8_t)(1u << (i & 7));
}

/* 16 table entries from 16 byte indices */
static inline __m512 lut16(const uint8_t *idx, const float *cb, unsigned bits, __m512 table) {
    __m512i i32 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)idx));
    if (bits <= 4) return _mm512_permutexvar_ps(i32, table);
    return _mm512_i32gather_ps(i32, cb, 4);
}

static void lut_decode_avx512(const uint8_t *packed, uint32_t n, unsigned bits, const float *cb,
                              float scale, float *out) {
    uint8_t idx[4096 + 16];
    unpack_idx(packed, n, bits, idx);
    memset(idx + n, 0, 16);
    float tab[16] = {0};
    memcpy(tab, cb, sizeof(float) * (bits <= 4 ? (1u << bits) : 16u));
    const __m512 table = _mm512_loadu_ps(tab), s = _mm512_set1_ps(scale);
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_mul_ps(lut16(idx + i, cb, bits, table), s));
    for (; i < n; i++) out[i] = cb[idx[i]] * scale;
}

static float lut_dot_avx512(const float *q, const uint8_t *packed, uint32_t n, unsigned bits,
                            const float *cb) {
    uint8_t idx[4096 + 16];
    unpack_idx(packed, n, bits, idx);
    memset(idx + n, 0, 16);
    float tab[16] = {0};
    memcpy(tab, cb, sizeof(float) * (bits <= 4 ? (1u << bits) : 16u));
    const __m512 table = _mm512_loadu_ps(tab);
    __m512 acc = _mm512_setzero_ps();
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), lut16(idx + i, cb, bits, table), acc);
    float r = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) r += q[i] * cb[idx[i]];
    return r;
}

static float masked_sum_avx512(const float *z, const uint8_t *bits, uint32_t n) {
    __m512 acc = _mm512_setzero_ps();
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __mmask16 m = (__mmask16)(bits[i / 8] | (bits[i / 8 + 1] << 8));
        acc = _mm512_mask_add_ps(acc, m, acc, _mm512_loadu_ps(z + i));
    }
    float r = _mm512_reduce_add_ps(acc);
    for (; i < n; i++)
        if ((bits[i >> 3] >> (i & 7)) & 1) r += z[i];
    return r;
}

static uint32_t and_popcount_avx512(const uint8_t *a, const uint8_t *b, size_t nbytes) {
    __m512i acc = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 64 <= nbytes; i += 64)
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(
                                        _mm512_loadu_si512((const void *)(a + i)),
                                        _mm512_loadu_si512((const void *)(b + i)))));
    if (i < nbytes) {
        __mmask64 m = nbytes - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (nbytes - i)) - 1);
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(
                                        _mm512_maskz_loadu_epi8(m, a + i),
                                        _mm512_maskz_loadu_epi8(m, b + i))));
    }
    return (uint32_t)_mm512_reduce_add_epi64(acc);
}

static void fp16_from_f32_avx512(const float *x, size_t n, uint16_t *out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) out[i] = kvqi_fp32_to_fp16(x[i]);
}

static void fp16_to_f32_avx512(const uint16_t *h, size_t n, float *out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; i++) out[i] = kvqi_fp16_to_fp32(h[i]);
}

static float fp16_dot_avx512(const float *q, const uint16_t *h, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i),
                              _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))), acc);
    float r = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) r += q[i] * kvqi_fp16_to_fp32(h[i]);
    return r;
}

/* Canonical fold of 16 lanes: j += j+8, j += j+4, j += j+2, j += j+1. */
static inline float fold16(__m512 acc) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
}

static inline __m512 bfly(__m512 v, __m512 s, __mmask16 upper) {
    return _mm512_mask_blend_ps(upper, _mm512_add_ps(v, s), _mm512_sub_ps(s, v));
}

/* The four in-register butterfly stages (h = 1, 2, 4, 8), as kvqi_fwht_scalar does them. */
static inline __m512 fwht16(__m512 v) {
    v = bfly(v, _mm512_permute_ps(v, 0xB1), 0xAAAA);
    v = bfly(v, _mm512_permute_ps(v, 0x4E), 0xCCCC);
    v = bfly(v, _mm512_shuffle_f32x4(v, v, 0xB1), 0xF0F0);
    v = bfly(v, _mm512_shuffle_f32x4(v, v, 0x4E), 0xFF00);
    return v;
}

/* Whole rows in registers: up to 64 zmm-wide chunks (dim <= 1024). */
static void hadamard_sign_batch_avx512(const float *x, size_t rows, uint32_t dim,
                                       const float *sign, uint8_t *bits_out, size_t bits_stride,
                                       float *norm_out, float *abs_sum_out) {
    if (dim < 16) {
        kvqi_quant_scalar.hadamard_sign_batch(x, rows, dim, sign, bits_out, bits_stride, norm_out,
                                              abs_sum_out);
        return;
    }
    const uint32_t nv = dim / 16;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    __m512 v[64];
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        __m512 nacc = _mm512_setzero_ps();
        for (uint32_t j = 0; j < nv; j++) {
            __m512 a = _mm512_loadu_ps(xr + 16 * j);
            nacc = _mm512_add_ps(nacc, _mm512_mul_ps(a, a));
            v[j] = fwht16(_mm512_mul_ps(a, _mm512_loadu_ps(sign + 16 * j)));
        }
        norm_out[r] = sqrtf(fold16(nacc));
        for (uint32_t h = 1; h < nv; h <<= 1)
            for (uint32_t i = 0; i < nv; i += h << 1)
                for (uint32_t j = i; j < i + h; j++) {
                    __m512 a = v[j], b = v[j + h];
                    v[j] = _mm512_add_ps(a, b);
                    v[j + h] = _mm512_sub_ps(a, b);
                }
        uint8_t *out = bits_out + r * bits_stride;
        __m512 sacc = _mm512_setzero_ps();
        for (uint32_t j = 0; j < nv; j++) {
            __mmask16 m = _mm512_cmp_ps_mask(v[j], _mm512_setzero_ps(), _CMP_GT_OQ);
            memcpy(out + 2 * j, &m, 2);
            sacc = _mm512_add_ps(sacc, _mm512_and_ps(v[j], absmask));
        }
        if (abs_sum_out) abs_sum_out[r] = fold16(sacc);
    }
}

const kvqi_quant_kernels kvqi_quant_avx512 = {
    KVQ_ISA_AVX512,       quantize_pack_avx512, sign_pack_avx512,     lut_decode_avx512,
    lut_dot_avx512,       masked_sum_avx512,    and_popcount_avx512,  fp16_from_f32_avx512,
    fp16_to_f32_avx512,   fp16_dot_avx512,      hadamard_sign_batch_avx512,
};
