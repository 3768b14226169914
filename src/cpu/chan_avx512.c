/*
 * chan_avx512.c - channel keys' score kernel: 64 tokens in four registers, each code
 * built from its bit-planes with masked adds, query heads four at a time kept in
 * registers across the channels. Same fused multiply-adds in the same order as the
 * scalar reference.
 */
#include <string.h>
#include <immintrin.h>

#include "cpu/cache_kernels.h"

/* The 16 lanes folded in halves: 8, 4, 2, 1 (the reference's order). */
static float fold16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    __m128 d = _mm_add_ss(c, _mm_shuffle_ps(c, c, 1));
    return _mm_cvtss_f32(d);
}

/* Fields of a channel's 64 codes (cache_kernels.h), as four registers of 16 int32. */
static inline __attribute__((always_inline)) void field4(const uint8_t *g, __m512i v[4]) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)g);
    __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
    v[0] = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(lo));
    v[1] = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(lo, 1));
    v[2] = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(hi));
    v[3] = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(hi, 1));
}

static inline __attribute__((always_inline)) void field2(const uint8_t *g, __m512i v[4]) {
    const __m128i m2 = _mm_set1_epi8(3);
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)g);
    v[0] = _mm512_cvtepu8_epi32(_mm_and_si128(x, m2));
    v[1] = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(x, 2), m2));
    v[2] = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(x, 4), m2));
    v[3] = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(x, 6), m2));
}

static inline __attribute__((always_inline)) void field1(const uint8_t *g, __m512i v[4]) {
    uint64_t x;
    memcpy(&x, g, 8);
    const __m512i one = _mm512_set1_epi32(1);
    for (int i = 0; i < 4; i++) v[i] = _mm512_maskz_mov_epi32((__mmask16)(x >> (16 * i)), one);
}

/* u += 2^s at the tokens whose bit is set: a 1-bit field above lower ones */
static inline __attribute__((always_inline)) void add1(const uint8_t *g, __m512i u[4], int s) {
    uint64_t x;
    memcpy(&x, g, 8);
    const __m512i p = _mm512_set1_epi32(1 << s);
    for (int i = 0; i < 4; i++) u[i] = _mm512_mask_add_epi32(u[i], (__mmask16)(x >> (16 * i)), u[i], p);
}

/* u |= v << s */
static inline __attribute__((always_inline)) void put(__m512i u[4], const __m512i v[4], int s) {
    for (int i = 0; i < 4; i++) u[i] = _mm512_or_si512(u[i], _mm512_slli_epi32(v[i], (unsigned)s));
}

/* A channel's 64 codes of one group, each width's fields unpacked in line. */
static inline __attribute__((always_inline)) void decode64(const uint8_t *g, uint32_t bits, __m512i u[4]) {
    __m512i v[4];
    switch (bits) {
    case 1: field1(g, u); break;
    case 2: field2(g, u); break;
    case 3: field2(g, u), add1(g + 16, u, 2); break;
    case 4: field4(g, u); break;
    case 5: field4(g, u), add1(g + 32, u, 4); break;
    case 6: field4(g, u), field2(g + 32, v), put(u, v, 4); break;
    case 7: field4(g, u), field2(g + 32, v), put(u, v, 4), add1(g + 48, u, 6); break;
    default: field4(g, u), field4(g + 32, v), put(u, v, 4); break;
    }
}

/* GH query heads (1..4) kept in registers across the channels: sixteen named
 * accumulators, the unused ones removed by the compiler for each GH. Tokens: the whole
 * group of 64 (lane t = token t of the group). */
#define CHAN_FMA(h)                                                                                 \
    if (gh > h) {                                                                                   \
        __m512 wj = _mm512_set1_ps(w[(size_t)h * dim + j]);                                         \
        a##h##0 = _mm512_fmadd_ps(wj, f0, a##h##0);                                                 \
        a##h##1 = _mm512_fmadd_ps(wj, f1, a##h##1);                                                 \
        a##h##2 = _mm512_fmadd_ps(wj, f2, a##h##2);                                                 \
        a##h##3 = _mm512_fmadd_ps(wj, f3, a##h##3);                                                 \
    }
#define CHAN_LOAD(h)                                                                                \
    __m512 a##h##0 = _mm512_setzero_ps(), a##h##1 = a##h##0, a##h##2 = a##h##0, a##h##3 = a##h##0;  \
    if (gh > h) a##h##0 = a##h##1 = a##h##2 = a##h##3 = _mm512_set1_ps(bias[h]);
#define CHAN_STORE(h)                                                                               \
    if (gh > h) {                                                                                   \
        _mm512_storeu_ps(out + h * 64, a##h##0);                                                    \
        _mm512_storeu_ps(out + h * 64 + 16, a##h##1);                                               \
        _mm512_storeu_ps(out + h * 64 + 32, a##h##2);                                               \
        _mm512_storeu_ps(out + h * 64 + 48, a##h##3);                                               \
    }
#define CHAN_HEADS(GH)                                                                                  \
    static void heads_##GH(const uint8_t *block, size_t C, const uint8_t *bits, uint32_t dim,            \
                           size_t group, const float *w, const float *bias, float *out) {               \
        const unsigned gh = GH;                                                                         \
        CHAN_LOAD(0) CHAN_LOAD(1) CHAN_LOAD(2) CHAN_LOAD(3)                                             \
        size_t at = (size_t)4 * dim; /* channel j's codes: after the ranges and channels < j */         \
        for (uint32_t j = 0; j < dim; at += C * bits[j] / 8, j++) {                                     \
            uint32_t b = bits[j];                                                                       \
            if (b == 0) continue;                                                                       \
            __m512i u[4];                                                                               \
            decode64(block + at + group * 8 * b, b, u);                                                 \
            __m512 f0 = _mm512_cvtepi32_ps(u[0]), f1 = _mm512_cvtepi32_ps(u[1]);                        \
            __m512 f2 = _mm512_cvtepi32_ps(u[2]), f3 = _mm512_cvtepi32_ps(u[3]);                        \
            CHAN_FMA(0) CHAN_FMA(1) CHAN_FMA(2) CHAN_FMA(3)                                             \
        }                                                                                               \
        CHAN_STORE(0) CHAN_STORE(1) CHAN_STORE(2) CHAN_STORE(3)                                         \
    }
CHAN_HEADS(1)
CHAN_HEADS(2)
CHAN_HEADS(3)
CHAN_HEADS(4)

void kvqi_chan_score_avx512(const uint8_t *block, const uint8_t *bits, uint32_t dim,
                            size_t C, const float *q, uint32_t G, size_t in, size_t n, float *scores,
                            size_t ld, float *w) {
    float *lo = w + (size_t)G * dim, *step = lo + dim;
    for (uint32_t j = 0; j < 2 * dim; j += 16)
        _mm512_storeu_ps(lo + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(block + 2 * (size_t)j))));
    for (uint32_t h0 = 0; h0 < G; h0 += 4) {
        uint32_t gh = G - h0 < 4 ? G - h0 : 4;
        float bias[4], tmp[4 * 64];
        for (uint32_t h = 0; h < gh; h++) {
            const float *qh = q + (size_t)(h0 + h) * dim;
            __m512 part = _mm512_setzero_ps();
            for (uint32_t j = 0; j < dim; j += 16) {
                __m512 qv = _mm512_loadu_ps(qh + j);
                part = _mm512_fmadd_ps(qv, _mm512_loadu_ps(lo + j), part);
                _mm512_storeu_ps(w + (size_t)(h0 + h) * dim + j, _mm512_mul_ps(qv, _mm512_loadu_ps(step + j)));
            }
            bias[h] = fold16(part);
        }
        /* the whole group straight into the rows when it is asked for whole */
        size_t l0 = in % 64;
        int whole = l0 == 0 && n == 64;
        float *out = whole ? scores + h0 * ld : tmp;
        const float *wh = w + (size_t)h0 * dim;
        if (whole && ld != 64) out = tmp;
        switch (gh) {
        case 1: heads_1(block, C, bits, dim, in / 64, wh, bias, out); break;
        case 2: heads_2(block, C, bits, dim, in / 64, wh, bias, out); break;
        case 3: heads_3(block, C, bits, dim, in / 64, wh, bias, out); break;
        default: heads_4(block, C, bits, dim, in / 64, wh, bias, out); break;
        }
        if (out == tmp)
            for (uint32_t h = 0; h < gh; h++) memcpy(scores + (h0 + h) * ld, tmp + h * 64 + l0, n * sizeof(float));
    }
}
