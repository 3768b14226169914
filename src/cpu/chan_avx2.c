/*
 * chan_avx2.c - channel keys' score kernel, eight tokens a register: codes unpacked
 * by the reference's routine, then the same fused multiply-adds in the same order as
 * the scalar reference.
 */
#include <immintrin.h>

#include "cpu/cache_kernels.h"

void kvqi_chan_score_avx2(const uint8_t *block, const uint8_t *bits, uint32_t dim,
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
    /* codes of the group's 64 tokens as floats (the lanes past n ignored: ld >= 64) */
    size_t l0 = in % 64;
    float u[64 + 8];
    size_t at = (size_t)4 * dim; /* channel j's codes: after the ranges and channels < j */
    for (uint32_t j = 0; j < dim; at += C * bits[j] / 8, j++) {
        uint32_t b = bits[j];
        if (b == 0) continue;
        const uint8_t *g = block + at + (in / 64) * 8 * (size_t)b;
        for (size_t t = 0; t < n; t++) u[t] = (float)kvqi_chan_code_at(g, b, (uint32_t)(l0 + t));
        for (size_t t = n; t < 64; t++) u[t] = 0.0f;
        for (uint32_t h = 0; h < G; h++) {
            __m256 wj = _mm256_set1_ps(w[(size_t)h * dim + j]);
            float *sc = scores + h * ld;
            for (int i = 0; i < 8; i++)
                _mm256_storeu_ps(sc + 8 * i, _mm256_fmadd_ps(wj, _mm256_loadu_ps(u + 8 * i), _mm256_loadu_ps(sc + 8 * i)));
        }
    }
}
