/*
 * vecinfer_avx2.c - VecInfer product-VQ kernels (arXiv 2510.06175) with AVX2: eight
 * centroids (nearest, lut_build) or eight keys (lut_score8, gathers from the table) per
 * register; each lane repeats the scalar reference's operations, so results are equal.
 */
#include <immintrin.h>
#include <string.h>

#include "cpu/vecinfer_kernels.h"

static uint32_t nearest_avx2(const float *x, uint32_t sub_dim, const float *cb_t, uint32_t k) {
    float d[256];
    uint32_t best = 0;
    float best_d = 0.0f;
    for (uint32_t c0 = 0; c0 < k; c0 += 256) {
        uint32_t m = k - c0 < 256 ? k - c0 : 256;
        for (uint32_t c = 0; c < m; c += 8) {
            __m256 acc = _mm256_setzero_ps();
            for (uint32_t t = 0; t < sub_dim; t++) {
                __m256 e = _mm256_sub_ps(_mm256_set1_ps(x[t]),
                                         _mm256_loadu_ps(cb_t + (size_t)t * k + c0 + c));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(e, e));
            }
            _mm256_storeu_ps(d + c, acc);
        }
        for (uint32_t c = 0; c < m; c++)
            if ((c0 == 0 && c == 0) || d[c] < best_d) {
                best_d = d[c];
                best = c0 + c;
            }
    }
    return best;
}

static void lut_build_avx2(const float *q, uint32_t n_sub, uint32_t sub_dim, const float *cb_t,
                           uint32_t k, float *lut) {
    for (uint32_t s = 0; s < n_sub; s++) {
        const float *qs = q + (size_t)s * sub_dim;
        float *row = lut + (size_t)s * k;
        for (uint32_t c = 0; c < k; c += 8) {
            __m256 acc = _mm256_setzero_ps();
            for (uint32_t t = 0; t < sub_dim; t++)
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(qs[t]),
                                                       _mm256_loadu_ps(cb_t + (size_t)t * k + c)));
            _mm256_storeu_ps(row + c, acc);
        }
    }
}

static void lut_score8_avx2(const float *lut, uint32_t n_sub, uint32_t k, const uint8_t *codes,
                            size_t stride, size_t n, float *scores) {
    const int st = (int)stride;
    const __m256i offs = _mm256_setr_epi32(0, st, 2 * st, 3 * st, 4 * st, 5 * st, 6 * st, 7 * st);
    const __m256i lo8 = _mm256_set1_epi32(0xff);
    size_t i = 0;
    for (; i + 8 <= n && stride <= (1u << 27); i += 8) {
        const uint8_t *base = codes + i * stride;
        __m256 acc = _mm256_setzero_ps();
        uint32_t s = 0;
        for (; s + 4 <= n_sub; s += 4) {
            __m256i w = _mm256_i32gather_epi32((const int *)(const void *)(base + s), offs, 1);
            for (int j = 0; j < 4; j++) {
                __m256i idx = _mm256_and_si256(_mm256_srli_epi32(w, 8 * j), lo8);
                acc = _mm256_add_ps(acc, _mm256_i32gather_ps(lut + (size_t)(s + j) * k, idx, 4));
            }
        }
        for (; s < n_sub; s++) {
            __m256i idx = _mm256_setr_epi32(base[s], base[st + s], base[2 * st + s],
                                            base[3 * st + s], base[4 * st + s], base[5 * st + s],
                                            base[6 * st + s], base[7 * st + s]);
            acc = _mm256_add_ps(acc, _mm256_i32gather_ps(lut + (size_t)s * k, idx, 4));
        }
        _mm256_storeu_ps(scores + i, acc);
    }
    if (i < n) kvqi_vecinfer_scalar.lut_score8(lut, n_sub, k, codes + i * stride, stride, n - i,
                                               scores + i);
}

const kvqi_vecinfer_kernels kvqi_vecinfer_avx2 = {
    .isa = KVQ_ISA_AVX2,
    .nearest = nearest_avx2,
    .lut_build = lut_build_avx2,
    .lut_score8 = lut_score8_avx2,
};
