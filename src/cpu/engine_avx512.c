/*
 * engine_avx512.c - the GGUF engine's int8 tile product with AVX-512 VNNI: unpacked weight
 * rows times quantized activations, 4 rows x 4 tokens per pass so each loaded block feeds
 * four vpdpbusd, as llama.cpp's "llamafile sgemm" tiles its quantized products. 256-bit
 * vectors: Zen 4 splits 512-bit ones in two anyway, and the lanes then match the
 * reference's. Bit-identical to the scalar reference in engine/dequant.c (tests compare).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "engine/engine.h"

/* (i + i+4), then (j + j+2), then 0 + 1: the reference's order */
static inline float hsum8_ordered(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* vpdpbusd multiplies unsigned by signed bytes: q + 128 (q xor 0x80) against w gives
 * sum(q w) + 128 sum(w), and the accumulator starts at -128 sum(w), once per row block. */
static inline __attribute__((always_inline)) void tile_vnni(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t t0,
                                                             const int TT, float *y, size_t y_stride) {
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    size_t n = tl->n, nb = n / 32, nl = n / 4;
    __m256 acc[4][4];
    __m128 off[4];
    _Pragma("GCC unroll 4")
    for (int r = 0; r < 4; r++)
        _Pragma("GCC unroll 4")
        for (int t = 0; t < TT; t++) acc[r][t] = _mm256_setzero_ps();
    _Pragma("GCC unroll 4")
    for (int t = 0; t < TT; t++) off[t] = _mm_setzero_ps();
    const int8_t *q[4];
    const float *d[4], *s[4];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < TT; t++) {
        q[t] = a->q + (t0 + t) * a->q_stride;
        d[t] = a->d + (t0 + t) * a->ds_stride;
        s[t] = a->s + (t0 + t) * a->ds_stride;
    }
    for (size_t b = 0; b < nb; b++) {
        __m256i qv[4];
        __m256 dv[4];
        _Pragma("GCC unroll 4")
        for (int t = 0; t < TT; t++) {
            qv[t] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q[t] + 32 * b)), bias);
            dv[t] = _mm256_set1_ps(d[t][b]);
        }
        _Pragma("GCC unroll 4")
        for (int r = 0; r < 4; r++) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(tl->w + r * n + 32 * b));
            __m256i corr = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), bias, w));
            __m256 lv = _mm256_loadu_ps(tl->wl + r * nl + 8 * b);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < TT; t++) {
                __m256 f = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(corr, qv[t], w));
                acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(lv, dv[t]), f, acc[r][t]);
            }
        }
        if (tl->wo) {
            __m128 wo = _mm_loadu_ps(tl->wo + 4 * b);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < TT; t++) off[t] = _mm_fmadd_ps(wo, _mm_set1_ps(s[t][b]), off[t]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < TT; t++) {
        float o[4];
        _mm_storeu_ps(o, off[t]);
        for (size_t r = 0; r < tl->n_rows; r++) {
            float v = hsum8_ordered(acc[r][t]);
            if (tl->wo) v += o[r];
            y[(t0 + t) * y_stride + r] = v;
        }
    }
}

static void gemm_q8_avx512(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t n_tok, float *y, size_t y_stride) {
    size_t t = 0;
    for (; t + 4 <= n_tok; t += 4) tile_vnni(tl, a, t, 4, y, y_stride);
    for (; t + 2 <= n_tok; t += 2) tile_vnni(tl, a, t, 2, y, y_stride);
    for (; t < n_tok; t++) tile_vnni(tl, a, t, 1, y, y_stride);
}

/* ------------------------------------------------ one token, from the blocks */

static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static inline __m256i q4_nibbles(const uint8_t *qs) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m128i mask = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), mask), _mm_and_si128(q, mask));
}

static inline __m256i bits_to_0x10(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                          3, 3, 3, 3, 3, 3, 3);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* The numbers of block b of a row as signed bytes, its scale and (Q4_1) its minimum:
 * exactly what the unpack functions store. */
#define BLOCK_Q4_0(p, w, sc, mn) do { w = _mm256_sub_epi8(q4_nibbles((p) + 2), _mm256_set1_epi8(8)); sc = h2f(p); } while (0)
#define BLOCK_Q4_1(p, w, sc, mn) do { w = q4_nibbles((p) + 4); sc = h2f(p); mn = h2f((p) + 2); } while (0)
#define BLOCK_Q5_0(p, w, sc, mn)                                                                   \
    do {                                                                                           \
        uint32_t qh_;                                                                              \
        memcpy(&qh_, (p) + 2, 4);                                                                  \
        w = _mm256_sub_epi8(_mm256_or_si256(q4_nibbles((p) + 6), bits_to_0x10(qh_)), _mm256_set1_epi8(16)); \
        sc = h2f(p);                                                                               \
    } while (0)
#define BLOCK_Q8_0(p, w, sc, mn) do { w = _mm256_loadu_si256((const __m256i *)((p) + 2)); sc = h2f(p); } while (0)

/* 4 rows x 1 token: the tile product's sums in the same order (acc per lane over the
 * blocks, then the 8-lane tree, then the row's offset chain) */
#define GEMV_Q8(NAME, BSIZE, BLOCK, HAS_MIN)                                                          \
    static void NAME(const void *row, size_t row_bytes, size_t n_rows, size_t n, const kvqi_q8_acts *a, float *y) { \
        const __m256i bias = _mm256_set1_epi8((char)0x80);                                           \
        const uint8_t *base = row;                                                                    \
        const uint8_t *rp[4];                                                                         \
        for (size_t r = 0; r < 4; r++) rp[r] = base + (r < n_rows ? r : 0) * row_bytes;               \
        __m256 acc[4];                                                                                \
        float off[4] = {0, 0, 0, 0};                                                                  \
        for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();                                    \
        for (size_t b = 0; b < n / 32; b++) {                                                         \
            __m256i xu = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(a->q + 32 * b)), bias); \
            float dx = a->d[b];                                                                       \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                                    \
                const uint8_t *p = rp[r] + b * (BSIZE);                                               \
                /* 24 rows ahead: four interleaved row streams defeat the hardware prefetcher */ \
                _mm_prefetch((const char *)(p + 24 * row_bytes), _MM_HINT_T0);                          \
                __m256i w;                                                                            \
                float sc, mn = 0;                                                                     \
                BLOCK(p, w, sc, mn);                                                                  \
                (void)mn;                                                                             \
                __m256i corr = _mm256_sub_epi32(_mm256_setzero_si256(),                              \
                                                _mm256_dpbusd_epi32(_mm256_setzero_si256(), bias, w)); \
                __m256 f = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(corr, xu, w));                     \
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(sc * dx), f, acc[r]);                         \
                if (HAS_MIN) off[r] = fmaf(mn, a->s[b], off[r]);                                      \
            }                                                                                         \
        }                                                                                             \
        for (size_t r = 0; r < n_rows; r++) {                                                         \
            float v = hsum8_ordered(acc[r]);                                                          \
            if (HAS_MIN) v += off[r];                                                                 \
            y[r] = v;                                                                                 \
        }                                                                                             \
    }

GEMV_Q8(gemv_q4_0, 18, BLOCK_Q4_0, 0)
GEMV_Q8(gemv_q4_1, 20, BLOCK_Q4_1, 1)
GEMV_Q8(gemv_q5_0, 22, BLOCK_Q5_0, 0)
GEMV_Q8(gemv_q8_0, 34, BLOCK_Q8_0, 0)

void kvqi_engine_kernels_avx512(kvqi_engine_kernels *k) {
    kvqi_engine_kernels_avx2(k);
    k->isa = KVQ_ISA_AVX512;
    k->gemm_q8 = gemm_q8_avx512;
    k->gemv_q8[KVQI_T_Q4_0] = gemv_q4_0;
    k->gemv_q8[KVQI_T_Q4_1] = gemv_q4_1;
    k->gemv_q8[KVQI_T_Q5_0] = gemv_q5_0;
    k->gemv_q8[KVQI_T_Q8_0] = gemv_q8_0;
}
