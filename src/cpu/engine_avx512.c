/*
 * engine_avx512.c - the GGUF engine's int8 tile product with AVX-512 VNNI: unpacked weight
 * rows times quantized activations, 4 rows x 4 tokens per pass so each loaded block feeds
 * four vpdpbusd, as llama.cpp's "llamafile sgemm" tiles its quantized products. 256-bit
 * vectors: Zen 4 splits 512-bit ones in two anyway, and the lanes then match the
 * reference's. Bit-identical to the scalar reference in engine/dequant.c (tests compare).
 */
#include <immintrin.h>

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

void kvqi_engine_kernels_avx512(kvqi_engine_kernels *k) {
    kvqi_engine_kernels_avx2(k);
    k->isa = KVQ_ISA_AVX512;
    k->gemm_q8 = gemm_q8_avx512;
}
