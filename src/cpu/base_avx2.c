/* base_avx2.c - FWHT and canonical-order dot product with AVX2. Each butterfly is the
 * same a+b / a-b as the scalar reference, so the results are bit-identical. */
#include <immintrin.h>

#include "cpu/cpu.h"

/* Lanes in the lower half of each pair get v+s (a+b), the upper half s-v (a-b). A macro:
 * the blend mask must be an integer constant expression, which clang enforces. */
#define bfly(v, s, mask) _mm256_blend_ps(_mm256_add_ps(v, s), _mm256_sub_ps(s, v), mask)

static void fwht_avx2(float *x, uint32_t n) {
    if (n < 8) {
        kvqi_fwht_scalar(x, n);
        return;
    }
    for (uint32_t i = 0; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        v = bfly(v, _mm256_permute_ps(v, 0xB1), 0xAA);
        v = bfly(v, _mm256_permute_ps(v, 0x4E), 0xCC);
        v = bfly(v, _mm256_permute2f128_ps(v, v, 1), 0xF0);
        _mm256_storeu_ps(x + i, v);
    }
    for (uint32_t h = 8; h < n; h <<= 1) {
        for (uint32_t i = 0; i < n; i += h << 1) {
            for (uint32_t j = i; j < i + h; j += 8) {
                __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
                _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
            }
        }
    }
}

static float dot_avx2(const float *a, const float *b, size_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
        acc1 = _mm256_add_ps(acc1,
                             _mm256_mul_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8)));
    }
    if (i < n) {
        float ta[16] = {0}, tb[16] = {0};
        for (size_t j = 0; i + j < n; j++) {
            ta[j] = a[i + j];
            tb[j] = b[i + j];
        }
        acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(_mm256_loadu_ps(ta), _mm256_loadu_ps(tb)));
        acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(_mm256_loadu_ps(ta + 8), _mm256_loadu_ps(tb + 8)));
    }
    __m256 s8 = _mm256_add_ps(acc0, acc1);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
}

const kvqi_base_kernels kvqi_base_avx2 = {KVQ_ISA_AVX2, fwht_avx2, dot_avx2};
