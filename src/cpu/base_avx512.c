/* base_avx512.c - FWHT and canonical-order dot product with AVX-512, bit-identical to
 * the scalar reference (same butterflies, same 16-lane reduction). */
#include <immintrin.h>

#include "cpu/cpu.h"

static inline __m512 bfly(__m512 v, __m512 s, __mmask16 upper) {
    return _mm512_mask_blend_ps(upper, _mm512_add_ps(v, s), _mm512_sub_ps(s, v));
}

static void fwht_avx512(float *x, uint32_t n) {
    if (n < 16) {
        kvqi_fwht_scalar(x, n);
        return;
    }
    for (uint32_t i = 0; i < n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        v = bfly(v, _mm512_permute_ps(v, 0xB1), 0xAAAA);
        v = bfly(v, _mm512_permute_ps(v, 0x4E), 0xCCCC);
        v = bfly(v, _mm512_shuffle_f32x4(v, v, 0xB1), 0xF0F0);
        v = bfly(v, _mm512_shuffle_f32x4(v, v, 0x4E), 0xFF00);
        _mm512_storeu_ps(x + i, v);
    }
    for (uint32_t h = 16; h < n; h <<= 1) {
        for (uint32_t i = 0; i < n; i += h << 1) {
            for (uint32_t j = i; j < i + h; j += 16) {
                __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(x + j + h);
                _mm512_storeu_ps(x + j, _mm512_add_ps(a, b));
                _mm512_storeu_ps(x + j + h, _mm512_sub_ps(a, b));
            }
        }
    }
}

static float dot_avx512(const float *a, const float *b, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + i),
                                               _mm512_maskz_loadu_ps(m, b + i)));
    }
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
}

const kvqi_base_kernels kvqi_base_avx512 = {KVQ_ISA_AVX512, fwht_avx512, dot_avx512};
