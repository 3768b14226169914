/*
 * chan_avx2.c - channel keys' dot kernel, eight tokens a register (the weights are the
 * reference's, kvqi_chan_weights_scalar): each group's four planes of 8 tokens as bytes from
 * one load, shift and mask, their 16-bit halves (planes 0 and 2, 1 and 3 of a token)
 * multiplied with the int16 weight pairs by vpmaddwd; the same final multiply-add.
 */
#include <immintrin.h>

#include "cpu/cache_kernels.h"

void kvqi_chan_dot_avx2(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                        const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld) {
    uint32_t P = L->n_padded;
    const uint8_t *unit = block + 4 * (size_t)L->dim + (in / 64) * L->unit_bytes;
    const uint8_t *u2 = unit + 128 * (size_t)L->n4, *u1 = u2 + 64 * (size_t)L->n2;
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    const __m256i lo8 = _mm256_set1_epi16(255);
    size_t l0 = in % 64;
    float tmp[4 * 64];
    for (uint32_t h0 = 0; h0 < G; h0 += 4) {
        uint32_t gh = G - h0 < 4 ? G - h0 : 4;
        const int16_t *Wg = W + (size_t)h0 * P;
        for (uint32_t m = (uint32_t)(l0 / 8); m * 8 < l0 + n; m++) { /* tokens 8m .. 8m + 7 */
            __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                              _mm256_setzero_si256()};
            const int16_t *wp = Wg;
#define CHAN_DOT(v)                                                                                     \
    {                                                                                                   \
        __m256i ev = _mm256_and_si256(v, lo8), od = _mm256_srli_epi16(v, 8);                           \
        for (uint32_t h = 0; h < gh; h++) {                                                             \
            int32_t we, wo;                                                                             \
            memcpy(&we, wp + (size_t)h * P, 4);                                                         \
            memcpy(&wo, wp + (size_t)h * P + 2, 4);                                                     \
            acc[h] = _mm256_add_epi32(acc[h], _mm256_add_epi32(_mm256_madd_epi16(ev, _mm256_set1_epi32(we)), \
                                                               _mm256_madd_epi16(od, _mm256_set1_epi32(wo)))); \
        }                                                                                               \
        wp += 4;                                                                                        \
    }
            __m128i s4 = _mm_cvtsi32_si128((int)(4 * ((m / 2) % 2))), s2 = _mm_cvtsi32_si128((int)(2 * (m / 2)));
            __m128i s1 = _mm_cvtsi32_si128((int)m);
            for (uint32_t g = 0; g < L->n4; g++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(unit + 128 * (size_t)g + 64 * (m / 4) +
                                                                                 32 * (m % 2)));
                __m256i v = _mm256_and_si256(_mm256_srl_epi16(x, s4), m4);
                CHAN_DOT(v)
            }
            for (uint32_t g = 0; g < L->n2; g++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(u2 + 64 * (size_t)g + 32 * (m % 2)));
                __m256i v = _mm256_and_si256(_mm256_srl_epi16(x, s2), m2);
                CHAN_DOT(v)
            }
            for (uint32_t g = 0; g < L->n1; g++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(u1 + 32 * (size_t)g));
                __m256i v = _mm256_and_si256(_mm256_srl_epi16(x, s1), m1);
                CHAN_DOT(v)
            }
#undef CHAN_DOT
            for (uint32_t h = 0; h < gh; h++)
                _mm256_storeu_ps(tmp + h * 64 + 8 * m, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[h]), _mm256_set1_ps(scale[h0 + h]),
                                                                       _mm256_set1_ps(bias[h0 + h])));
        }
        for (uint32_t h = 0; h < gh; h++) memcpy(scores + (h0 + h) * ld, tmp + h * 64 + l0, n * sizeof(float));
    }
}
