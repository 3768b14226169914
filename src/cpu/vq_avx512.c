/*
 * vq_avx512.c - AVX-512 value accumulation of vq codes (reference: vq_scalar.c): four
 * centroids a zmm, the accumulators of four heads held in registers 64 coordinates at a
 * time across the block's tokens; fused multiply-adds, as the reference (the same bits);
 * and the nearest-centroid search, 16 centroids a step.
 */
#include <immintrin.h>
#include <math.h>

#include "cpu/vq_kernels.h"

static inline __m512 quad(const float *cent, const uint8_t *idx) {
    __m256 lo = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(cent + 4 * (size_t)idx[0])),
                                     _mm_loadu_ps(cent + 4 * (size_t)idx[1]), 1);
    __m256 hi = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(cent + 4 * (size_t)idx[2])),
                                     _mm_loadu_ps(cent + 4 * (size_t)idx[3]), 1);
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

/* Heads four at a time (absent ones weigh nothing into a scratch row): each token's
 * centroids are gathered once for the four, 64 coordinates a pass (16 accumulators). */
void kvqi_vq_accum_avx512(const float *cent, uint32_t dim, const float *w, size_t ld, uint32_t G,
                          const uint8_t *v, size_t code_size, size_t n, float *acc) {
    float norm[KVQI_VQ_PASS]; /* the attend block is 64 tokens */
    float spare[64] = {0};
    for (size_t t0 = 0; t0 < n; t0 += KVQI_VQ_PASS) {
        size_t nt = n - t0 < KVQI_VQ_PASS ? n - t0 : KVQI_VQ_PASS;
        kvqi_vq_norms(v, code_size, t0, nt, norm);
        for (uint32_t h0 = 0; h0 < G; h0 += 4) {
            const float *wp[4];
            kvqi_vq_rows(w, ld, G, h0, t0, wp);
            uint32_t j0 = 0;
            for (; j0 + 64 <= dim; j0 += 64) {
                float *ap[4];
                kvqi_vq_accs(acc, dim, G, h0, j0, spare, ap);
                __m512 a00 = _mm512_loadu_ps(ap[0]), a01 = _mm512_loadu_ps(ap[0] + 16), a02 = _mm512_loadu_ps(ap[0] + 32),
                       a03 = _mm512_loadu_ps(ap[0] + 48);
                __m512 a10 = _mm512_loadu_ps(ap[1]), a11 = _mm512_loadu_ps(ap[1] + 16), a12 = _mm512_loadu_ps(ap[1] + 32),
                       a13 = _mm512_loadu_ps(ap[1] + 48);
                __m512 a20 = _mm512_loadu_ps(ap[2]), a21 = _mm512_loadu_ps(ap[2] + 16), a22 = _mm512_loadu_ps(ap[2] + 32),
                       a23 = _mm512_loadu_ps(ap[2] + 48);
                __m512 a30 = _mm512_loadu_ps(ap[3]), a31 = _mm512_loadu_ps(ap[3] + 16), a32 = _mm512_loadu_ps(ap[3] + 32),
                       a33 = _mm512_loadu_ps(ap[3] + 48);
                for (size_t t = 0; t < nt; t++) {
                    const uint8_t *idx = v + (t0 + t) * code_size + 2 + j0 / 4;
                    __m512 c0 = quad(cent, idx), c1 = quad(cent, idx + 4), c2 = quad(cent, idx + 8),
                           c3 = quad(cent, idx + 12);
#define HEAD(i)                                                                                             \
    do {                                                                                                    \
        __m512 wt = _mm512_set1_ps(wp[i][t] * norm[t]);                                                     \
        a##i##0 = _mm512_fmadd_ps(wt, c0, a##i##0);                                            \
        a##i##1 = _mm512_fmadd_ps(wt, c1, a##i##1);                                            \
        a##i##2 = _mm512_fmadd_ps(wt, c2, a##i##2);                                            \
        a##i##3 = _mm512_fmadd_ps(wt, c3, a##i##3);                                            \
    } while (0)
                    HEAD(0);
                    HEAD(1);
                    HEAD(2);
                    HEAD(3);
#undef HEAD
                }
                _mm512_storeu_ps(ap[0], a00), _mm512_storeu_ps(ap[0] + 16, a01), _mm512_storeu_ps(ap[0] + 32, a02),
                    _mm512_storeu_ps(ap[0] + 48, a03);
                _mm512_storeu_ps(ap[1], a10), _mm512_storeu_ps(ap[1] + 16, a11), _mm512_storeu_ps(ap[1] + 32, a12),
                    _mm512_storeu_ps(ap[1] + 48, a13);
                _mm512_storeu_ps(ap[2], a20), _mm512_storeu_ps(ap[2] + 16, a21), _mm512_storeu_ps(ap[2] + 32, a22),
                    _mm512_storeu_ps(ap[2] + 48, a23);
                _mm512_storeu_ps(ap[3], a30), _mm512_storeu_ps(ap[3] + 16, a31), _mm512_storeu_ps(ap[3] + 32, a32),
                    _mm512_storeu_ps(ap[3] + 48, a33);
            }
            for (uint32_t h = h0; h < G && h < h0 + 4 && j0 < dim; h++) { /* 16 to 48 coordinates left */
                float *a = acc + (size_t)h * dim + j0;
                for (size_t t = 0; t < nt; t++) {
                    const uint8_t *idx = v + (t0 + t) * code_size + 2 + j0 / 4;
                    __m512 wt = _mm512_set1_ps(wp[h - h0][t] * norm[t]);
                    for (uint32_t j = 0; j0 + j < dim; j += 16)
                        _mm512_storeu_ps(a + j, _mm512_fmadd_ps(wt, quad(cent, idx + j / 4), _mm512_loadu_ps(a + j)));
                }
            }
        }
    }
}

void kvqi_vq_nearest_avx512(const float *soa, const float *v, uint32_t n_groups, uint8_t *out) {
    const __m512i step = _mm512_set1_epi32(16);
    for (uint32_t g = 0; g < n_groups; g++) {
        const float *x = v + 4 * (size_t)g;
        __m512 x0 = _mm512_set1_ps(x[0]), x1 = _mm512_set1_ps(x[1]), x2 = _mm512_set1_ps(x[2]),
               x3 = _mm512_set1_ps(x[3]);
        __m512 bd = _mm512_set1_ps(INFINITY);
        __m512i bi = _mm512_setzero_si512(), ki = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (uint32_t k = 0; k < 256; k += 16) {
            __m512 e0 = _mm512_sub_ps(x0, _mm512_loadu_ps(soa + k)), e1 = _mm512_sub_ps(x1, _mm512_loadu_ps(soa + 256 + k)),
                   e2 = _mm512_sub_ps(x2, _mm512_loadu_ps(soa + 512 + k)), e3 = _mm512_sub_ps(x3, _mm512_loadu_ps(soa + 768 + k));
            __m512 d = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(e0, e0), _mm512_mul_ps(e1, e1)),
                                     _mm512_add_ps(_mm512_mul_ps(e2, e2), _mm512_mul_ps(e3, e3)));
            __mmask16 lt = _mm512_cmp_ps_mask(d, bd, _CMP_LT_OQ);
            bd = _mm512_mask_mov_ps(bd, lt, d);
            bi = _mm512_mask_mov_epi32(bi, lt, ki);
            ki = _mm512_add_epi32(ki, step);
        }
        /* the smallest distance, then the smallest index holding it (the scalar's first) */
        float m = _mm512_reduce_min_ps(bd);
        __mmask16 at = _mm512_cmp_ps_mask(bd, _mm512_set1_ps(m), _CMP_EQ_OQ);
        uint32_t best = at ? (uint32_t)_mm512_mask_reduce_min_epu32(at, bi) : 0;
        out[g] = (uint8_t)best;
    }
}
