/*
 * chan_avx512.c - channel keys' weights and dot kernels (cache_kernels.h): the reference's
 * weights with 16 lanes (the same operations lane for lane), then 64 tokens in four registers of
 * 16 int32 sums per query head, heads four at a time: each group of four planes gives 16
 * tokens' planes as bytes from one load, shift and mask (a whole group: its two or three
 * plane groups' bytes shifted and ORed into the four channels' codes), and two vpdpwssd
 * add their products with the slot group's int16 weights (slots 0 and 2 from the low
 * bytes of a token's words, 1 and 3 from the high). CPUs without VNNI take the AVX2 kernel.
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

/* kvqi_chan_weights_ref, lane for lane: the channels' weights in channel order, then
 * permuted into the planes' pair order 32 at a time and shifted. */
static void weights(const uint8_t *block, const kvqi_chan_layout *L, const float *q, int16_t *W, float *scale,
                    float *bias, float *wf) {
    uint32_t dim = L->dim, P = L->n_padded;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    __m512 part = _mm512_setzero_ps(), vmx = _mm512_setzero_ps();
    for (uint32_t j = 0; j < dim; j += 16) {
        __m512 qv = _mm512_loadu_ps(q + j);
        __m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(block + 2 * (size_t)j)));
        __m512 st = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(block + 2 * ((size_t)dim + j))));
        part = _mm512_fmadd_ps(qv, lo, part);
        __m512 wv = _mm512_mul_ps(qv, st);
        _mm512_storeu_ps(wf + j, wv);
        vmx = _mm512_max_ps(vmx, _mm512_mul_ps(_mm512_and_ps(wv, absmask), _mm512_loadu_ps(L->top + j)));
    }
    float mx = _mm512_reduce_max_ps(vmx);
    float inv = mx > 0.0f ? L->wmax / mx : 0.0f;
    /* the channels' weights as int16 over their floats (each block read before written) */
    int16_t *wc = (int16_t *)(void *)wf;
    __m512 iv = _mm512_set1_ps(inv);
    for (uint32_t j = 0; j < dim; j += 16) {
        __m256i k = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(wf + j), iv)));
        _mm256_storeu_si256((__m256i *)(void *)(wc + j), k);
    }
    for (uint32_t p = 0; p < P; p += 32) {
        __m512i idx = _mm512_loadu_si512((const void *)(L->pair_chan + p));
        __m512i r = _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)wc), idx,
                                              _mm512_loadu_si512((const void *)(wc + 32)));
        for (uint32_t k = 1; 64 * k < dim; k++) {
            __mmask32 m = _mm512_cmpeq_epi16_mask(_mm512_srli_epi16(idx, 6), _mm512_set1_epi16((short)k));
            r = _mm512_mask_mov_epi16(r, m, _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)(wc + 64 * k)), idx,
                                                                      _mm512_loadu_si512((const void *)(wc + 64 * k + 32))));
        }
        r = _mm512_sllv_epi16(r, _mm512_loadu_si512((const void *)(L->pair_shift + p)));
        if (P - p >= 32) _mm512_storeu_si512((void *)(W + p), r);
        else _mm256_storeu_si256((__m256i *)(void *)(W + p), _mm512_castsi512_si256(r));
    }
    *scale = mx / L->wmax;
    *bias = fold16(part);
}

/* weights() for gh heads at once where dim <= 256: the same operations per head, the
 * minima, steps, plane indices and masks shared, the heads' chains interleaved; one
 * function per gh, so that the loops over heads unroll and their vectors stay in
 * registers. */
static inline __attribute__((always_inline)) void
weights_heads(const uint8_t *block, const kvqi_chan_layout *L, const float *q, const uint32_t gh, int16_t *W,
              float *scale, float *bias, const int packed) {
    uint32_t dim = L->dim, P = L->n_padded;
    float wf[4][256];
    int16_t wc[4][256 + 64];
    const __m512 zero = _mm512_setzero_ps();
    __m512 part[4] = {zero, zero, zero, zero}, vmx[4] = {zero, zero, zero, zero};
    for (uint32_t j = 0; j < dim; j += 16) {
        __m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(block + 2 * (size_t)j)));
        __m512 st = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(block + 2 * ((size_t)dim + j))));
        __m512 top = _mm512_loadu_ps(L->top + j);
#pragma GCC unroll 4
        for (uint32_t h = 0; h < gh; h++) {
            __m512 qv = _mm512_loadu_ps(q + (size_t)h * dim + j);
            part[h] = _mm512_fmadd_ps(qv, lo, part[h]);
            __m512 wv = _mm512_mul_ps(qv, st);
            _mm512_storeu_ps(wf[h] + j, wv);
            /* the larger magnitude, sign cleared: max(vmx, |w| top) (top >= 0) */
            vmx[h] = _mm512_range_ps(vmx[h], _mm512_mul_ps(wv, top), 0x0b);
        }
    }
#pragma GCC unroll 4
    for (uint32_t h = 0; h < gh; h++) {
        float mx = _mm512_reduce_max_ps(vmx[h]);
        __m512 iv = _mm512_set1_ps(mx > 0.0f ? L->wmax / mx : 0.0f);
        if (packed) /* 32 channels a step, in vpackssdw's lane order (undone by the index) */
            for (uint32_t j = 0; j < dim; j += 32)
                _mm512_storeu_si512((void *)(wc[h] + j),
                                    _mm512_packs_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(wf[h] + j), iv)),
                                                       _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(wf[h] + j + 16), iv))));
        else
            for (uint32_t j = 0; j < dim; j += 16)
                _mm256_storeu_si256((__m256i *)(void *)(wc[h] + j),
                                    _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(wf[h] + j), iv))));
        scale[h] = mx / L->wmax;
        bias[h] = fold16(part[h]);
    }
    for (uint32_t p = 0; p < P; p += 32) {
        __m512i idx = _mm512_loadu_si512((const void *)(L->pair_chan + p));
        __m512i sh = _mm512_loadu_si512((const void *)(L->pair_shift + p));
        /* packed: channel 32 m + r sits at 32 m + 8 ((r / 4) % 4) + 4 (r / 16) + r % 4 */
        __m512i pidx = packed ? _mm512_or_si512(_mm512_or_si512(_mm512_andnot_si512(_mm512_set1_epi16(28), idx),
                                                                _mm512_slli_epi16(_mm512_and_si512(idx, _mm512_set1_epi16(12)), 1)),
                                                _mm512_srli_epi16(_mm512_and_si512(idx, _mm512_set1_epi16(16)), 2))
                              : idx;
        __mmask32 m[4];
        for (uint32_t k = 1; 64 * k < dim; k++)
            m[k] = _mm512_cmpeq_epi16_mask(_mm512_srli_epi16(idx, 6), _mm512_set1_epi16((short)k));
#pragma GCC unroll 4
        for (uint32_t h = 0; h < gh; h++) {
            const int16_t *c = wc[h];
            __m512i r = _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)c), pidx,
                                                  _mm512_loadu_si512((const void *)(c + 32)));
            for (uint32_t k = 1; 64 * k < dim; k++)
                r = _mm512_mask_mov_epi16(r, m[k], _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)(c + 64 * k)), pidx,
                                                                             _mm512_loadu_si512((const void *)(c + 64 * k + 32))));
            r = _mm512_sllv_epi16(r, sh);
            int16_t *Wh = W + (size_t)h * P;
            if (P - p >= 32) _mm512_storeu_si512((void *)(Wh + p), r);
            else _mm256_storeu_si256((__m256i *)(void *)(Wh + p), _mm512_castsi512_si256(r));
        }
    }
}

#define CHAN_WEIGHTS(GH)                                                                            \
    static void weights_heads_##GH(const uint8_t *block, const kvqi_chan_layout *L, const float *q, int16_t *W, \
                                   float *scale, float *bias) {                                     \
        weights_heads(block, L, q, GH, W, scale, bias, L->dim % 32 == 0);                           \
    }
CHAN_WEIGHTS(1)
CHAN_WEIGHTS(2)
CHAN_WEIGHTS(3)
CHAN_WEIGHTS(4)

#define CHAN_ACC(h) __m512i a##h##0 = z, a##h##1 = z, a##h##2 = z, a##h##3 = z;
/* subblock k (tokens 16k .. 16k + 15) of the group: v holds each token's four planes as
 * bytes; planes 0 and 2 are the low bytes of its two words, 1 and 3 the high bytes */
#define CHAN_DOT(h, k)                                                                              \
    if (gh > h) {                                                                                   \
        int32_t x2[2];                                                                              \
        memcpy(x2, wp + (size_t)h * P, 8);                                                          \
        a##h##k = _mm512_dpwssd_epi32(a##h##k, ev, _mm512_set1_epi32(x2[0]));                       \
        a##h##k = _mm512_dpwssd_epi32(a##h##k, od, _mm512_set1_epi32(x2[1]));                       \
    }
#define CHAN_SUB(k, v)                                                                              \
    {                                                                                               \
        __m512i vv = (v), ev = _mm512_and_si512(vv, lo8), od = _mm512_srli_epi16(vv, 8);            \
        CHAN_DOT(0, k) CHAN_DOT(1, k) CHAN_DOT(2, k) CHAN_DOT(3, k)                                 \
    }
#define CHAN_OUT(h)                                                                                 \
    if (gh > h) {                                                                                   \
        __m512 sv = _mm512_set1_ps(scale[h]), bv = _mm512_set1_ps(bias[h]);                         \
        _mm512_storeu_ps(out + h * 64, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a##h##0), sv, bv));       \
        _mm512_storeu_ps(out + h * 64 + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a##h##1), sv, bv));  \
        _mm512_storeu_ps(out + h * 64 + 32, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a##h##2), sv, bv));  \
        _mm512_storeu_ps(out + h * 64 + 48, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a##h##3), sv, bv));  \
    }

/* A plane group's 16-token subblock k as bytes 4 t + i: 4 bits (x##0, x##1: the group's
 * two 64-byte halves), 2 bits (x), 1 bit (x: the 32 bytes, then the same shifted by one,
 * so that tokens 8-15 of each 16 (the next bit) sit in the high half). */
#define LOAD4(x, p)                                                                                 \
    __m512i x##0 = _mm512_loadu_si512((const void *)(p)), x##1 = _mm512_loadu_si512((const void *)((p) + 64));
#define LOAD2(x, p) __m512i x = _mm512_loadu_si512((const void *)(p));
#define LOAD1(x, p)                                                                                 \
    __m512i x;                                                                                      \
    {                                                                                               \
        __m256i y_ = _mm256_loadu_si256((const __m256i *)(const void *)(p));                       \
        x = _mm512_inserti64x4(_mm512_castsi256_si512(y_), _mm256_srli_epi16(y_, 1), 1);           \
    }
#define V4(x, k) _mm512_and_si512((k) % 2 ? _mm512_srli_epi16((k) < 2 ? x##0 : x##1, 4) : ((k) < 2 ? x##0 : x##1), m4)
#define V2(x, k) _mm512_and_si512(_mm512_srli_epi16(x, 2 * (k)), m2)
#define V1(x, k) _mm512_and_si512(_mm512_srli_epi16(x, 2 * (k)), m1)
#define OR3(a, b, c) _mm512_or_si512(_mm512_or_si512(a, b), c)

/* gh (1..4) heads' scores of the unit's 64 tokens into out[h * 64 + l]; W: the first
 * head's weights, P apart. */
static inline __attribute__((always_inline, target("avx512vnni"))) void
heads(const uint8_t *unit, const kvqi_chan_layout *L, const int16_t *W, uint32_t P, const float *scale,
      const float *bias, float *out, const unsigned gh) {
    const __m512i z = _mm512_setzero_si512(), lo8 = _mm512_set1_epi16(255);
    const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(3), m1 = _mm512_set1_epi8(1);
    CHAN_ACC(0) CHAN_ACC(1) CHAN_ACC(2) CHAN_ACC(3)
    const int16_t *wp = W;
    const uint8_t *g4 = unit, *g2 = unit + 128 * (size_t)L->n4, *g1 = g2 + 64 * (size_t)L->n2;
    uint32_t w4, w2, w1;
    kvqi_chan_whole_groups(L, &w4, &w2, &w1);
    /* whole groups: each channel's code from its planes, as bytes */
    for (uint32_t i = 0; i < L->nc[8]; i++, g4 += 256, wp += 4) {
        LOAD4(a, g4) LOAD4(b, g4 + 128)
        CHAN_SUB(0, _mm512_or_si512(V4(a, 0), _mm512_slli_epi16(V4(b, 0), 4)))
        CHAN_SUB(1, _mm512_or_si512(V4(a, 1), _mm512_slli_epi16(V4(b, 1), 4)))
        CHAN_SUB(2, _mm512_or_si512(V4(a, 2), _mm512_slli_epi16(V4(b, 2), 4)))
        CHAN_SUB(3, _mm512_or_si512(V4(a, 3), _mm512_slli_epi16(V4(b, 3), 4)))
    }
    for (uint32_t i = 0; i < L->nc[7]; i++, g4 += 128, g2 += 64, g1 += 32, wp += 4) {
        LOAD4(a, g4) LOAD2(b, g2) LOAD1(c, g1)
        CHAN_SUB(0, OR3(_mm512_slli_epi16(V4(a, 0), 3), _mm512_slli_epi16(V2(b, 0), 1), V1(c, 0)))
        CHAN_SUB(1, OR3(_mm512_slli_epi16(V4(a, 1), 3), _mm512_slli_epi16(V2(b, 1), 1), V1(c, 1)))
        CHAN_SUB(2, OR3(_mm512_slli_epi16(V4(a, 2), 3), _mm512_slli_epi16(V2(b, 2), 1), V1(c, 2)))
        CHAN_SUB(3, OR3(_mm512_slli_epi16(V4(a, 3), 3), _mm512_slli_epi16(V2(b, 3), 1), V1(c, 3)))
    }
    for (uint32_t i = 0; i < L->nc[6]; i++, g4 += 128, g2 += 64, wp += 4) {
        LOAD4(a, g4) LOAD2(b, g2)
        CHAN_SUB(0, _mm512_or_si512(_mm512_slli_epi16(V4(a, 0), 2), V2(b, 0)))
        CHAN_SUB(1, _mm512_or_si512(_mm512_slli_epi16(V4(a, 1), 2), V2(b, 1)))
        CHAN_SUB(2, _mm512_or_si512(_mm512_slli_epi16(V4(a, 2), 2), V2(b, 2)))
        CHAN_SUB(3, _mm512_or_si512(_mm512_slli_epi16(V4(a, 3), 2), V2(b, 3)))
    }
    for (uint32_t i = 0; i < L->nc[5]; i++, g4 += 128, g1 += 32, wp += 4) {
        LOAD4(a, g4) LOAD1(c, g1)
        CHAN_SUB(0, _mm512_or_si512(_mm512_slli_epi16(V4(a, 0), 1), V1(c, 0)))
        CHAN_SUB(1, _mm512_or_si512(_mm512_slli_epi16(V4(a, 1), 1), V1(c, 1)))
        CHAN_SUB(2, _mm512_or_si512(_mm512_slli_epi16(V4(a, 2), 1), V1(c, 2)))
        CHAN_SUB(3, _mm512_or_si512(_mm512_slli_epi16(V4(a, 3), 1), V1(c, 3)))
    }
    for (uint32_t i = 0; i < L->nc[3]; i++, g2 += 64, g1 += 32, wp += 4) {
        LOAD2(b, g2) LOAD1(c, g1)
        CHAN_SUB(0, _mm512_or_si512(_mm512_slli_epi16(V2(b, 0), 1), V1(c, 0)))
        CHAN_SUB(1, _mm512_or_si512(_mm512_slli_epi16(V2(b, 1), 1), V1(c, 1)))
        CHAN_SUB(2, _mm512_or_si512(_mm512_slli_epi16(V2(b, 2), 1), V1(c, 2)))
        CHAN_SUB(3, _mm512_or_si512(_mm512_slli_epi16(V2(b, 3), 1), V1(c, 3)))
    }
    /* the other planes, one group at a time */
    for (uint32_t i = w4; i < L->n4; i++, g4 += 128, wp += 4) {
        LOAD4(a, g4)
        CHAN_SUB(0, V4(a, 0)) CHAN_SUB(1, V4(a, 1)) CHAN_SUB(2, V4(a, 2)) CHAN_SUB(3, V4(a, 3))
    }
    for (uint32_t i = w2; i < L->n2; i++, g2 += 64, wp += 4) {
        LOAD2(b, g2)
        CHAN_SUB(0, V2(b, 0)) CHAN_SUB(1, V2(b, 1)) CHAN_SUB(2, V2(b, 2)) CHAN_SUB(3, V2(b, 3))
    }
    for (uint32_t i = w1; i < L->n1; i++, g1 += 32, wp += 4) {
        LOAD1(c, g1)
        CHAN_SUB(0, V1(c, 0)) CHAN_SUB(1, V1(c, 1)) CHAN_SUB(2, V1(c, 2)) CHAN_SUB(3, V1(c, 3))
    }
    CHAN_OUT(0) CHAN_OUT(1) CHAN_OUT(2) CHAN_OUT(3)
}

#define CHAN_HEADS(GH)                                                                              \
    __attribute__((target("avx512vnni"))) static void heads_##GH(                                   \
        const uint8_t *unit, const kvqi_chan_layout *L, const int16_t *W, uint32_t P, const float *scale, \
        const float *bias, float *out) {                                                            \
        heads(unit, L, W, P, scale, bias, out, GH);                                                 \
    }
CHAN_HEADS(1)
CHAN_HEADS(2)
CHAN_HEADS(3)
CHAN_HEADS(4)

void kvqi_chan_weights_avx512(const uint8_t *block, const kvqi_chan_layout *L, const float *q, uint32_t G,
                              int16_t *W, float *scale, float *bias, float *wf) {
    uint32_t P = L->n_padded;
    for (uint32_t h0 = 0; h0 < G; h0 += 4) {
        uint32_t gh = G - h0 < 4 ? G - h0 : 4;
        if (L->dim <= 256) {
            const float *qg = q + (size_t)h0 * L->dim;
            int16_t *Wg = W + (size_t)h0 * P;
            switch (gh) {
            case 1: weights_heads_1(block, L, qg, Wg, scale + h0, bias + h0); break;
            case 2: weights_heads_2(block, L, qg, Wg, scale + h0, bias + h0); break;
            case 3: weights_heads_3(block, L, qg, Wg, scale + h0, bias + h0); break;
            default: weights_heads_4(block, L, qg, Wg, scale + h0, bias + h0); break;
            }
        } else
            for (uint32_t h = h0; h < h0 + gh; h++)
                weights(block, L, q + (size_t)h * L->dim, W + (size_t)h * P, &scale[h], &bias[h], wf);
    }
}

void kvqi_chan_dot_avx512(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                          const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld) {
    if (!__builtin_cpu_supports("avx512vnni")) {
        kvqi_chan_dot_avx2(block, L, W, scale, bias, G, in, n, scores, ld);
        return;
    }
    uint32_t P = L->n_padded;
    const uint8_t *unit = block + 4 * (size_t)L->dim + (in / 64) * L->unit_bytes;
    size_t l0 = in % 64;
    /* what follows the unit (the next unit, or the next chunk's block when a chunk is one
     * unit: a block head and a unit further on), fetched while this one is scored */
    for (size_t o = 0; o < 4 * (size_t)L->dim + L->unit_bytes; o += 64)
        _mm_prefetch((const char *)(unit + L->unit_bytes + o), _MM_HINT_T0);
    /* the whole unit straight into the rows when it is asked for whole */
    int whole = l0 == 0 && n == 64 && ld == 64;
    float tmp[4 * 64];
    for (uint32_t h0 = 0; h0 < G; h0 += 4) {
        uint32_t gh = G - h0 < 4 ? G - h0 : 4;
        const int16_t *Wg = W + (size_t)h0 * P;
        float *out = whole ? scores + h0 * ld : tmp;
        switch (gh) {
        case 1: heads_1(unit, L, Wg, P, scale + h0, bias + h0, out); break;
        case 2: heads_2(unit, L, Wg, P, scale + h0, bias + h0, out); break;
        case 3: heads_3(unit, L, Wg, P, scale + h0, bias + h0, out); break;
        default: heads_4(unit, L, Wg, P, scale + h0, bias + h0, out); break;
        }
        if (!whole)
            for (uint32_t h = 0; h < gh; h++) memcpy(scores + (h0 + h) * ld, tmp + h * 64 + l0, n * sizeof(float));
    }
}

/* kvqi_chan_code, 16 channels at a time: the same division and round to nearest even,
 * clamped by max and min (v <= 0 gives 0, v >= top gives top), 0 where step <= 0. */
static inline __m512 codes16(const float *x, const float *lo, const float *step, const float *top) {
    __m512 st = _mm512_loadu_ps(step);
    __m512 v = _mm512_div_ps(_mm512_sub_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(lo)), st);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_loadu_ps(top));
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(st, _mm512_setzero_ps(), _CMP_GT_OQ), v);
}

void kvqi_chan_codes_avx512(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                            uint8_t *codes) {
    for (uint32_t j = 0; j < dim; j += 16)
        _mm_storeu_si128((__m128i *)(void *)(codes + j),
                         _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(codes16(x + j, lo + j, step + j, top + j))));
}

void kvqi_chan_fit_sums_avx512(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                               float *acc) {
    for (uint32_t j = 0; j < dim; j += 16) {
        __m512 k = codes16(x + j, lo + j, step + j, top + j), xv = _mm512_loadu_ps(x + j);
        float *a = acc + j;
        _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), k));
        _mm512_storeu_ps(a + dim, _mm512_add_ps(_mm512_loadu_ps(a + dim), _mm512_mul_ps(k, k)));
        _mm512_storeu_ps(a + 2 * (size_t)dim, _mm512_add_ps(_mm512_loadu_ps(a + 2 * (size_t)dim), xv));
        _mm512_storeu_ps(a + 3 * (size_t)dim, _mm512_add_ps(_mm512_loadu_ps(a + 3 * (size_t)dim), _mm512_mul_ps(xv, k)));
    }
}

/* ------------------------------------------------------- keys before RoPE */

/* chan_prerope_scores (cache_kernels.h), 16 tokens a pass in the lanes: each plane's 16
 * values by a shift and mask of its group's load, made float and multiply-added into its
 * channel's key (kf, in L1), then per RoPE pair the two keys turned by the offsets' angles
 * and dotted with four heads at a time (their sums in registers); the reference's
 * operations lane for lane. Heads past G in the last four read a zero query. */
#define PRE_MAX_DIM 256
static const float pre_zero[PRE_MAX_DIM];

static inline void pre_pairs4(const __m512 *kf, const float *q0, const float *q1, const float *q2, const float *q3,
                              uint32_t dim, int neox, const float *cs0, const float *sn0, size_t C, __m512 *acc) {
    uint32_t half = dim / 2;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (uint32_t i = 0; i < half; i++) {
        uint32_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        __m512 xa = kf[a], xb = kf[b];
        __m512 c = _mm512_loadu_ps(cs0 + i * C), s = _mm512_loadu_ps(sn0 + i * C);
        __m512 ka = _mm512_fmsub_ps(xa, c, _mm512_mul_ps(xb, s));
        __m512 kb = _mm512_fmadd_ps(xa, s, _mm512_mul_ps(xb, c));
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[a]), ka, a0);
        b0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[b]), kb, b0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[a]), ka, a1);
        b1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[b]), kb, b1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[a]), ka, a2);
        b2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[b]), kb, b2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[a]), ka, a3);
        b3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[b]), kb, b3);
    }
    acc[0] = _mm512_add_ps(a0, b0);
    acc[1] = _mm512_add_ps(a1, b1);
    acc[2] = _mm512_add_ps(a2, b2);
    acc[3] = _mm512_add_ps(a3, b3);
}

void kvqi_chan_prerope_scores_avx512(const uint8_t *block, const kvqi_chan_layout *L, const float *qt, uint32_t G,
                                     const float *cs, const float *sn, size_t C, size_t u0, int neox, size_t in,
                                     size_t n, float *scores, size_t ld) {
    uint32_t dim = L->dim, l0 = (uint32_t)(in % 64);
    /* the offsets' table is read 16 at a time from u0 + 16 k: within the chunk */
    if (dim > PRE_MAX_DIM || dim % 16 != 0 || C % 16 != 0 || u0 % 64 != 0) {
        kvqi_chan_prerope_scores_scalar(block, L, qt, G, cs, sn, C, u0, neox, in, n, scores, ld);
        return;
    }
    float lo[PRE_MAX_DIM], step[PRE_MAX_DIM]; /* the block's fp16 minima and steps (exact) */
    for (uint32_t j = 0; j < dim; j += 16) {
        _mm512_storeu_ps(lo + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(block + 2 * (size_t)j))));
        _mm512_storeu_ps(step + j, _mm512_cvtph_ps(_mm256_loadu_si256(
                                       (const __m256i *)(const void *)(block + 2 * ((size_t)dim + j)))));
    }
    const uint8_t *unit = block + 4 * (size_t)dim + (in / 64) * L->unit_bytes;
    kvqi_pre_op ops[3 * PRE_MAX_DIM];
    uint16_t bare[PRE_MAX_DIM];
    uint32_t nbare = 0, nops = kvqi_chan_pre_ops(L, step, ops, bare, &nbare);
    __m512 kf[PRE_MAX_DIM];
    __m512i V[3 * PRE_MAX_DIM / 4];
    const __m512i ff = _mm512_set1_epi32(0xff);
    const uint32_t ng = L->n4 + L->n2 + L->n1;
    for (uint32_t k = l0 / 16; 16 * k < l0 + n; k++) {
        for (uint32_t gi = 0; gi < ng; gi++) { /* token 16 k + lane's four planes as bytes */
            if (gi < L->n4) {
                __m512i x = _mm512_loadu_si512(unit + 128 * (size_t)gi + 64 * (k / 2));
                V[gi] = _mm512_and_si512(_mm512_srli_epi16(x, 4 * (k % 2)), _mm512_set1_epi8(15));
            } else if (gi < L->n4 + L->n2) {
                __m512i x = _mm512_loadu_si512(unit + 128 * (size_t)L->n4 + 64 * (size_t)(gi - L->n4));
                V[gi] = _mm512_and_si512(_mm512_srl_epi16(x, _mm_cvtsi32_si128((int)(2 * k))), _mm512_set1_epi8(3));
            } else { /* tokens 0-7 of the 16 from bit 2 k, 8-15 from bit 2 k + 1 */
                __m256i A = _mm256_loadu_si256((const __m256i *)(const void *)(unit + 128 * (size_t)L->n4 +
                                                                              64 * (size_t)L->n2 +
                                                                              32 * (size_t)(gi - L->n4 - L->n2)));
                __m512i A2 = _mm512_inserti64x4(_mm512_castsi256_si512(A), A, 1);
                __m512i sh = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * k)), _mm256_set1_epi16((short)(2 * k + 1)), 1);
                V[gi] = _mm512_and_si512(_mm512_srlv_epi16(A2, sh), _mm512_set1_epi8(1));
            }
        }
        for (uint32_t i = 0; i < nbare; i++) kf[bare[i]] = _mm512_set1_ps(lo[bare[i]]);
        for (uint32_t o = 0; o < nops; o++) {
            const kvqi_pre_op *op = &ops[o];
            __m512 v = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(V[op->grp], 8 * op->lane), ff));
            __m512 base = op->first ? _mm512_set1_ps(lo[op->chan]) : kf[op->chan];
            kf[op->chan] = _mm512_fmadd_ps(v, _mm512_set1_ps(op->sc), base);
        }
        /* tokens 16 k + lane within [l0, l0 + n) to scores[h][16 k + lane - l0] */
        uint32_t first = 16 * k, lo_t = first < l0 ? l0 : first;
        uint32_t hi_t = first + 16 < l0 + n ? first + 16 : l0 + (uint32_t)n;
        __mmask16 m = (__mmask16)((1u << (hi_t - first)) - 1u);
        const float *cs0 = cs + u0 + first, *sn0 = sn + u0 + first;
        for (uint32_t h0 = 0; h0 < G; h0 += 4) {
            __m512 acc[4];
            uint32_t gh = G - h0 < 4 ? G - h0 : 4;
            const float *q = qt + (size_t)h0 * dim;
            pre_pairs4(kf, q, gh > 1 ? q + dim : pre_zero, gh > 2 ? q + 2 * dim : pre_zero,
                       gh > 3 ? q + 3 * dim : pre_zero, dim, neox, cs0, sn0, C, acc);
            for (uint32_t h = 0; h < gh; h++) {
                float *row = scores + (size_t)(h0 + h) * ld;
                if (first >= l0) {
                    _mm512_mask_storeu_ps(row + (first - l0), m, acc[h]);
                } else { /* the call starts inside these 16 */
                    _Alignas(64) float tmp[16];
                    _mm512_store_ps(tmp, acc[h]);
                    for (uint32_t t = lo_t; t < hi_t; t++) row[t - l0] = tmp[t - first];
                }
            }
        }
    }
}
