/*
 * engine_avx512.c - the GGUF engine's int8 tile product with AVX-512 VNNI: unpacked weight
 * rows times quantized activations, 4 rows x 4 tokens per pass so each loaded block feeds
 * four vpdpbusd, as llama.cpp's "llamafile sgemm" tiles its quantized products. A 256-bit
 * vector holds a block's 8 lanes as the reference sums them; two tokens share a 512-bit
 * one (tile_vnni512, the weights broadcast to both halves), so each lane's operations
 * stay the reference's while a core with 512-bit units does half the instructions
 * (Zen 5: prompts 1.32-1.40x, batched decoding 1.16-1.25x; one token keeps 256 bits).
 * Bit-identical to the scalar reference in engine/dequant.c (tests compare).
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

static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

#define KVQI_DPBUSD256(acc, u, w) _mm256_dpbusd_epi32((acc), (u), (w))
#include "cpu/engine_tile_vnni.h"

/* tile_vnni with two tokens a 512-bit vector (lanes 0-7 token t, 8-15 token t + 1, the
 * weights and lane scales broadcast to both halves): every lane runs the same operations
 * in the same order as in tile_vnni, so the same bits, with half the instructions on a
 * core whose vector units are 512 bits wide. NP: token pairs (1 or 2). */
static inline __attribute__((always_inline)) void tile_vnni512(const kvqi_q8_tile *tl, const kvqi_q8_acts *a,
                                                                size_t t0, const int NP, const __m256i *corr_rb,
                                                                float *y, size_t y_stride) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    size_t n = tl->n, nb = n / 32, nl = n / 4;
    __m512 acc[4][2];
    __m128 off[4];
    _Pragma("GCC unroll 4")
    for (int r = 0; r < 4; r++)
        _Pragma("GCC unroll 2")
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_ps();
    _Pragma("GCC unroll 4")
    for (int t = 0; t < 2 * NP; t++) off[t] = _mm_setzero_ps();
    const int8_t *q[4];
    const float *d[4], *s[4];
    kvqi_q8_acts_rows(a, t0, 2 * NP, q, d, s);
    for (size_t b = 0; b < nb; b++) {
        __m512i qv[2];
        __m512 dv[2];
        _Pragma("GCC unroll 2")
        for (int p = 0; p < NP; p++) {
            __m512i q2 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(q[2 * p] + 32 * b))),
                                            _mm256_loadu_si256((const __m256i *)(q[2 * p + 1] + 32 * b)), 1);
            qv[p] = _mm512_xor_si512(q2, bias);
            dv[p] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(d[2 * p][b])),
                                       _mm256_set1_ps(d[2 * p + 1][b]), 1);
        }
        _Pragma("GCC unroll 4")
        for (int r = 0; r < 4; r++) {
            __m512i w = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(tl->w + r * n + 32 * b)));
            __m512i corr = corr_rb ? _mm512_broadcast_i64x4(_mm256_loadu_si256(corr_rb + r * nb + b))
                                   : _mm512_sub_epi32(_mm512_setzero_si512(),
                                                      _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, w));
            __m512 lv = _mm512_broadcast_f32x8(_mm256_loadu_ps(tl->wl + r * nl + 8 * b));
            _Pragma("GCC unroll 2")
            for (int p = 0; p < NP; p++) {
                __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, qv[p], w));
                acc[r][p] = _mm512_fmadd_ps(_mm512_mul_ps(lv, dv[p]), f, acc[r][p]);
            }
        }
        if (tl->wo) {
            __m128 wo = _mm_loadu_ps(tl->wo + 4 * b);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < 2 * NP; t++) off[t] = _mm_fmadd_ps(wo, _mm_set1_ps(s[t][b]), off[t]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < 2 * NP; t++) {
        float o[4];
        _mm_storeu_ps(o, off[t]);
        for (size_t r = 0; r < tl->n_rows; r++) {
            __m512 v2 = acc[r][t / 2];
            float v = hsum8_ordered(t % 2 ? _mm512_extractf32x8_ps(v2, 1) : _mm512_castps512_ps256(v2));
            if (tl->wo) v += o[r];
            y[(t0 + t) * y_stride + r] = v;
        }
    }
}

static void gemm_q8_avx512(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t n_tok, float *y, size_t y_stride) {
    size_t t = 0;
    __m256i corr[4 * (TILE_CORR_MAX / 32)];
    const __m256i *cp = tile_corrections(tl, n_tok, corr);
    for (; t + 4 <= n_tok; t += 4) tile_vnni512(tl, a, t, 2, cp, y, y_stride);
    for (; t + 2 <= n_tok; t += 2) tile_vnni512(tl, a, t, 1, cp, y, y_stride);
    for (; t < n_tok; t++) tile_vnni(tl, a, t, 1, cp, y, y_stride);
}

void kvqi_engine_kernels_avx512(kvqi_engine_kernels *k) {
    kvqi_engine_kernels_avx2(k);
    k->isa = KVQ_ISA_AVX512;
    k->gemm_q8 = gemm_q8_avx512;
    gemv_vnni_fill(k);
}
