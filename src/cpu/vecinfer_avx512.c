/*
 * vecinfer_avx512.c - VecInfer product-VQ kernels (arXiv 2510.06175) with AVX-512:
 * sixteen centroids (nearest, lut_build) or sixteen keys (lut_score8, gathers from the
 * table) per register; each lane repeats the scalar reference's operations exactly.
 */
#include <immintrin.h>
#include <string.h>

#include "cpu/vecinfer_kernels.h"

static uint32_t nearest_avx512(const float *x, uint32_t sub_dim, const float *cb_t, uint32_t k) {
    float d[256];
    uint32_t best = 0;
    float best_d = 0.0f;
    for (uint32_t c0 = 0; c0 < k; c0 += 256) {
        uint32_t m = k - c0 < 256 ? k - c0 : 256;
        for (uint32_t c = 0; c < m; c += 16) {
            __m512 acc = _mm512_setzero_ps();
            for (uint32_t t = 0; t < sub_dim; t++) {
                __m512 e = _mm512_sub_ps(_mm512_set1_ps(x[t]),
                                         _mm512_loadu_ps(cb_t + (size_t)t * k + c0 + c));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(e, e));
            }
            _mm512_storeu_ps(d + c, acc);
        }
        for (uint32_t c = 0; c < m; c++)
            if ((c0 == 0 && c == 0) || d[c] < best_d) {
                best_d = d[c];
                best = c0 + c;
            }
    }
    return best;
}

static void lut_build_avx512(const float *q, uint32_t n_sub, uint32_t sub_dim, const float *cb_t,
                             uint32_t k, float *lut) {
    for (uint32_t s = 0; s < n_sub; s++) {
        const float *qs = q + (size_t)s * sub_dim;
        float *row = lut + (size_t)s * k;
        for (uint32_t c = 0; c < k; c += 16) {
            __m512 acc = _mm512_setzero_ps();
            for (uint32_t t = 0; t < sub_dim; t++)
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(qs[t]),
                                                       _mm512_loadu_ps(cb_t + (size_t)t * k + c)));
            _mm512_storeu_ps(row + c, acc);
        }
    }
}

static void lut_score8_avx512(const float *lut, uint32_t n_sub, uint32_t k, const uint8_t *codes,
                              size_t stride, size_t n, float *scores) {
    const int st = (int)stride;
    const __m512i offs = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(st));
    const __m512i lo8 = _mm512_set1_epi32(0xff);
    size_t i = 0;
    for (; i + 16 <= n && stride <= (1u << 26); i += 16) {
        const uint8_t *base = codes + i * stride;
        __m512 acc = _mm512_setzero_ps();
        uint32_t s = 0;
        for (; s + 4 <= n_sub; s += 4) {
            __m512i w = _mm512_i32gather_epi32(offs, (const void *)(base + s), 1);
            for (int j = 0; j < 4; j++) {
                __m512i idx = _mm512_and_si512(_mm512_srli_epi32(w, 8 * j), lo8);
                acc = _mm512_add_ps(acc, _mm512_i32gather_ps(idx, lut + (size_t)(s + j) * k, 4));
            }
        }
        for (; s < n_sub; s++) {
            int v[16];
            for (int j = 0; j < 16; j++) v[j] = base[(size_t)j * stride + s];
            __m512i idx = _mm512_loadu_si512((const void *)v);
            acc = _mm512_add_ps(acc, _mm512_i32gather_ps(idx, lut + (size_t)s * k, 4));
        }
        _mm512_storeu_ps(scores + i, acc);
    }
    if (i < n) kvqi_vecinfer_scalar.lut_score8(lut, n_sub, k, codes + i * stride, stride, n - i,
                                               scores + i);
}

const kvqi_vecinfer_kernels kvqi_vecinfer_avx512 = {
    .isa = KVQ_ISA_AVX512,
    .nearest = nearest_avx512,
    .lut_build = lut_build_avx512,
    .lut_score8 = lut_score8_avx512,
};
