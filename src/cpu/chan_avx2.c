/*
 * chan_avx2.c - channel keys' score kernel, eight tokens a register: each code built
 * from its bit-planes by a variable shift of the plane's byte, then the same fused
 * multiply-adds in the same order as the scalar reference.
 */
#include <immintrin.h>

#include "cpu/cache_kernels.h"

void kvqi_chan_score_avx2(const uint8_t *block, const uint32_t *off, const uint8_t *bits, uint32_t dim,
                          size_t C, const float *q, uint32_t G, size_t in, size_t n, float *scores,
                          size_t ld, float *w) {
    float *lo = w + (size_t)G * dim, *step = lo + dim;
    for (uint32_t j = 0; j < 2 * dim; j += 8)
        _mm256_storeu_ps(lo + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(block + 2 * (size_t)j))));
    for (uint32_t h = 0; h < G; h++) {
        const float *qh = q + (size_t)h * dim;
        /* 16 lanes as two registers: lanes 0-7 and 8-15 */
        __m256 p0 = _mm256_setzero_ps(), p1 = _mm256_setzero_ps();
        for (uint32_t j = 0; j < dim; j += 16) {
            __m256 q0 = _mm256_loadu_ps(qh + j), q1 = _mm256_loadu_ps(qh + j + 8);
            p0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(lo + j), p0);
            p1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(lo + j + 8), p1);
            _mm256_storeu_ps(w + (size_t)h * dim + j, _mm256_mul_ps(q0, _mm256_loadu_ps(step + j)));
            _mm256_storeu_ps(w + (size_t)h * dim + j + 8, _mm256_mul_ps(q1, _mm256_loadu_ps(step + j + 8)));
        }
        __m256 a = _mm256_add_ps(p0, p1); /* lanes i + 8 */
        __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        __m128 d = _mm_add_ss(c, _mm_shuffle_ps(c, c, 1));
        __m256 bias = _mm256_set1_ps(_mm_cvtss_f32(d));
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(scores + h * ld + 8 * i, bias);
    }
    /* rows have ld >= 64 floats (the attend block): lanes past n are computed and ignored */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
    for (uint32_t j = 0; j < dim; j++) {
        uint32_t b = bits[j];
        if (b == 0) continue;
        __m256i u[8];
        for (int i = 0; i < 8; i++) u[i] = _mm256_setzero_si256();
        for (uint32_t p = 0; p < b; p++) {
            uint64_t v = kvqi_chan_plane_bits(block + off[j] + (size_t)p * (C / 8), C, in, n);
            __m128i cnt = _mm_cvtsi32_si128((int)p);
            for (int i = 0; i < 8; i++) {
                __m256i byte = _mm256_set1_epi32((int)((v >> (8 * i)) & 0xff));
                __m256i bit = _mm256_and_si256(_mm256_srlv_epi32(byte, lane), one);
                u[i] = _mm256_or_si256(u[i], _mm256_sll_epi32(bit, cnt));
            }
        }
        __m256 f[8];
        for (int i = 0; i < 8; i++) f[i] = _mm256_cvtepi32_ps(u[i]);
        for (uint32_t h = 0; h < G; h++) {
            __m256 wj = _mm256_set1_ps(w[(size_t)h * dim + j]);
            float *sc = scores + h * ld;
            for (int i = 0; i < 8; i++)
                _mm256_storeu_ps(sc + 8 * i, _mm256_fmadd_ps(wj, f[i], _mm256_loadu_ps(sc + 8 * i)));
        }
    }
}
