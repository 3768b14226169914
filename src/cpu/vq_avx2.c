/*
 * vq_avx2.c - AVX2 value accumulation of vq codes (reference: vq_scalar.c): two
 * centroids a ymm, the accumulators of four heads held in registers 16 coordinates at a
 * time across the block's tokens; fused multiply-adds, as the reference (the same bits); and
 * the nearest-centroid search, 8 centroids a step.
 */
#include <immintrin.h>
#include <math.h>

#include "cpu/vq_kernels.h"

static inline __m256 pair(const float *cent, const uint8_t *idx) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(cent + 4 * (size_t)idx[0])),
                                _mm_loadu_ps(cent + 4 * (size_t)idx[1]), 1);
}

/* Heads four at a time (absent ones weigh nothing into a scratch row): each token's
 * centroids are gathered once for the four, 16 coordinates a pass (8 accumulators). */
void kvqi_vq_accum_avx2(const float *cent, uint32_t dim, const float *w, size_t ld, uint32_t G,
                        const uint8_t *v, size_t code_size, size_t n, float *acc) {
    float norm[KVQI_VQ_PASS]; /* the attend block is 64 tokens */
    float spare[16] = {0};
    for (size_t t0 = 0; t0 < n; t0 += KVQI_VQ_PASS) {
        size_t nt = n - t0 < KVQI_VQ_PASS ? n - t0 : KVQI_VQ_PASS;
        kvqi_vq_norms(v, code_size, t0, nt, norm);
        for (uint32_t h0 = 0; h0 < G; h0 += 4) {
            const float *wp[4];
            kvqi_vq_rows(w, ld, G, h0, t0, wp);
            uint32_t j0 = 0;
            for (; j0 + 16 <= dim; j0 += 16) {
                float *ap[4];
                kvqi_vq_accs(acc, dim, G, h0, j0, spare, ap);
                __m256 a00 = _mm256_loadu_ps(ap[0]), a01 = _mm256_loadu_ps(ap[0] + 8);
                __m256 a10 = _mm256_loadu_ps(ap[1]), a11 = _mm256_loadu_ps(ap[1] + 8);
                __m256 a20 = _mm256_loadu_ps(ap[2]), a21 = _mm256_loadu_ps(ap[2] + 8);
                __m256 a30 = _mm256_loadu_ps(ap[3]), a31 = _mm256_loadu_ps(ap[3] + 8);
                for (size_t t = 0; t < nt; t++) {
                    const uint8_t *idx = v + (t0 + t) * code_size + 2 + j0 / 4;
                    __m256 c0 = pair(cent, idx), c1 = pair(cent, idx + 2);
#define HEAD(i)                                                                                             \
    do {                                                                                                    \
        __m256 wt = _mm256_set1_ps(wp[i][t] * norm[t]);                                                     \
        a##i##0 = _mm256_fmadd_ps(wt, c0, a##i##0);                                            \
        a##i##1 = _mm256_fmadd_ps(wt, c1, a##i##1);                                            \
    } while (0)
                    HEAD(0);
                    HEAD(1);
                    HEAD(2);
                    HEAD(3);
#undef HEAD
                }
                _mm256_storeu_ps(ap[0], a00), _mm256_storeu_ps(ap[0] + 8, a01);
                _mm256_storeu_ps(ap[1], a10), _mm256_storeu_ps(ap[1] + 8, a11);
                _mm256_storeu_ps(ap[2], a20), _mm256_storeu_ps(ap[2] + 8, a21);
                _mm256_storeu_ps(ap[3], a30), _mm256_storeu_ps(ap[3] + 8, a31);
            }
            for (uint32_t h = h0; h < G && h < h0 + 4 && j0 < dim; h++) { /* 8 coordinates left */
                float *a = acc + (size_t)h * dim + j0;
                for (size_t t = 0; t < nt; t++) {
                    const uint8_t *idx = v + (t0 + t) * code_size + 2 + j0 / 4;
                    __m256 wt = _mm256_set1_ps(wp[h - h0][t] * norm[t]);
                    _mm256_storeu_ps(a, _mm256_fmadd_ps(wt, pair(cent, idx), _mm256_loadu_ps(a)));
                }
            }
        }
    }
}

void kvqi_vq_nearest_avx2(const float *soa, const float *v, uint32_t n_groups, uint8_t *out) {
    const __m256i step = _mm256_set1_epi32(8);
    for (uint32_t g = 0; g < n_groups; g++) {
        const float *x = v + 4 * (size_t)g;
        __m256 x0 = _mm256_set1_ps(x[0]), x1 = _mm256_set1_ps(x[1]), x2 = _mm256_set1_ps(x[2]),
               x3 = _mm256_set1_ps(x[3]);
        __m256 bd = _mm256_set1_ps(INFINITY);
        __m256i bi = _mm256_setzero_si256(), ki = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (uint32_t k = 0; k < 256; k += 8) {
            __m256 e0 = _mm256_sub_ps(x0, _mm256_loadu_ps(soa + k)), e1 = _mm256_sub_ps(x1, _mm256_loadu_ps(soa + 256 + k)),
                   e2 = _mm256_sub_ps(x2, _mm256_loadu_ps(soa + 512 + k)), e3 = _mm256_sub_ps(x3, _mm256_loadu_ps(soa + 768 + k));
            __m256 d = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(e0, e0), _mm256_mul_ps(e1, e1)),
                                     _mm256_add_ps(_mm256_mul_ps(e2, e2), _mm256_mul_ps(e3, e3)));
            __m256 lt = _mm256_cmp_ps(d, bd, _CMP_LT_OQ);
            bd = _mm256_blendv_ps(bd, d, lt);
            bi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(ki), lt));
            ki = _mm256_add_epi32(ki, step);
        }
        float dv[8];
        uint32_t iv[8];
        _mm256_storeu_ps(dv, bd);
        _mm256_storeu_si256((__m256i *)(void *)iv, bi);
        /* the smallest distance, then the smallest index holding it (the scalar's first) */
        uint32_t best = 0;
        float m = INFINITY;
        for (int l = 0; l < 8; l++)
            if (dv[l] < m || (dv[l] == m && m < INFINITY && iv[l] < best)) {
                m = dv[l];
                best = iv[l];
            }
        out[g] = (uint8_t)best;
    }
}
