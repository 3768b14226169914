/*
 * chan_avx512.c - channel keys' score kernel: 64 tokens in four registers, each code
 * built from its bit-planes with masked adds, query heads four at a time kept in
 * registers across the channels. Same fused multiply-adds in the same order as the
 * scalar reference.
 */
#include <immintrin.h>

#include "cpu/cache_kernels.h"

/* GH query heads (1..4) kept in registers across the channels. */
#define CHAN_HEADS(GH)                                                                                  \
    static void heads_##GH(const uint8_t *block, const uint32_t *off, const uint8_t *bits, uint32_t dim, \
                           size_t C, const float *w, size_t in, size_t n, float *scores, size_t ld) {    \
        __m512 acc[GH][4];                                                                              \
        for (int h = 0; h < GH; h++)                                                                    \
            for (int i = 0; i < 4; i++) acc[h][i] = _mm512_loadu_ps(scores + h * ld + 16 * i);          \
        for (uint32_t j = 0; j < dim; j++) {                                                            \
            uint32_t b = bits[j];                                                                       \
            if (b == 0) continue;                                                                       \
            __m512i u0 = _mm512_setzero_si512(), u1 = u0, u2 = u0, u3 = u0;                             \
            const uint8_t *pl = block + off[j];                                                         \
            for (uint32_t p = 0; p < b; p++, pl += C / 8) {                                             \
                uint64_t v = kvqi_chan_plane_bits(pl, C, in, n);                                        \
                __m512i pw = _mm512_set1_epi32(1 << p);                                                 \
                u0 = _mm512_mask_or_epi32(u0, (__mmask16)v, u0, pw);                                    \
                u1 = _mm512_mask_or_epi32(u1, (__mmask16)(v >> 16), u1, pw);                            \
                u2 = _mm512_mask_or_epi32(u2, (__mmask16)(v >> 32), u2, pw);                            \
                u3 = _mm512_mask_or_epi32(u3, (__mmask16)(v >> 48), u3, pw);                            \
            }                                                                                           \
            __m512 f0 = _mm512_cvtepi32_ps(u0), f1 = _mm512_cvtepi32_ps(u1);                            \
            __m512 f2 = _mm512_cvtepi32_ps(u2), f3 = _mm512_cvtepi32_ps(u3);                            \
            for (int h = 0; h < GH; h++) {                                                              \
                __m512 wj = _mm512_set1_ps(w[(size_t)h * dim + j]);                                     \
                acc[h][0] = _mm512_fmadd_ps(wj, f0, acc[h][0]);                                         \
                acc[h][1] = _mm512_fmadd_ps(wj, f1, acc[h][1]);                                         \
                acc[h][2] = _mm512_fmadd_ps(wj, f2, acc[h][2]);                                         \
                acc[h][3] = _mm512_fmadd_ps(wj, f3, acc[h][3]);                                         \
            }                                                                                           \
        }                                                                                               \
        for (int h = 0; h < GH; h++)                                                                    \
            for (int i = 0; i < 4; i++) _mm512_storeu_ps(scores + h * ld + 16 * i, acc[h][i]);          \
    }
CHAN_HEADS(1)
CHAN_HEADS(2)
CHAN_HEADS(3)
CHAN_HEADS(4)

/* The 16 lanes folded in halves: 8, 4, 2, 1 (the reference's order). */
static float fold16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    __m128 d = _mm_add_ss(c, _mm_shuffle_ps(c, c, 1));
    return _mm_cvtss_f32(d);
}

void kvqi_chan_score_avx512(const uint8_t *block, const uint32_t *off, const uint8_t *bits, uint32_t dim,
                            size_t C, const float *q, uint32_t G, size_t in, size_t n, float *scores,
                            size_t ld, float *w) {
    float *lo = w + (size_t)G * dim, *step = lo + dim;
    for (uint32_t j = 0; j < 2 * dim; j += 16)
        _mm512_storeu_ps(lo + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(block + 2 * (size_t)j))));
    for (uint32_t h = 0; h < G; h++) {
        const float *qh = q + (size_t)h * dim;
        __m512 part = _mm512_setzero_ps();
        for (uint32_t j = 0; j < dim; j += 16) {
            __m512 qv = _mm512_loadu_ps(qh + j);
            part = _mm512_fmadd_ps(qv, _mm512_loadu_ps(lo + j), part);
            _mm512_storeu_ps(w + (size_t)h * dim + j, _mm512_mul_ps(qv, _mm512_loadu_ps(step + j)));
        }
        __m512 bias = _mm512_set1_ps(fold16(part));
        for (int i = 0; i < 4; i++) _mm512_storeu_ps(scores + h * ld + 16 * i, bias);
    }
    /* lanes past n compute on the bias and are ignored: a row has ld >= 64 floats */
    for (uint32_t h0 = 0; h0 < G; h0 += 4) {
        const float *wh = w + (size_t)h0 * dim;
        float *sc = scores + h0 * ld;
        switch (G - h0 < 4 ? G - h0 : 4) {
        case 1: heads_1(block, off, bits, dim, C, wh, in, n, sc, ld); break;
        case 2: heads_2(block, off, bits, dim, C, wh, in, n, sc, ld); break;
        case 3: heads_3(block, off, bits, dim, C, wh, in, n, sc, ld); break;
        default: heads_4(block, off, bits, dim, C, wh, in, n, sc, ld); break;
        }
    }
}
