/*
 * vq_kernels.h - the value accumulation of the vq method's codes (src/quant/vq.c) in the
 * rotated domain, for the cache's fused attention: a code is [fp16 norm][one byte per
 * four coordinates], a byte indexing a 256 x 4 table of centroids (the codebook already
 * divided by sqrt(dim)). Every version does the same fused multiply-adds (fmaf, one
 * rounding each) in the same order as the scalar reference: the same bits on every ISA.
 */
#ifndef KVQ_VQ_KERNELS_H
#define KVQ_VQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/core.h"
#include "kvq.h"

/* acc[h][j] = fmaf(w[h * ld + t] * norm_t, cent[4 * v_t[2 + j / 4] + j % 4], acc[h][j])
 * for h < G, j < dim, t < n, tokens in order; v_t = v + t * code_size, norm_t its fp16
 * norm. */
typedef void (*kvqi_vq_accum_fn)(const float *cent, uint32_t dim, const float *w, size_t ld,
                                 uint32_t G, const uint8_t *v, size_t code_size, size_t n,
                                 float *acc);

void kvqi_vq_accum_scalar(const float *cent, uint32_t dim, const float *w, size_t ld, uint32_t G,
                          const uint8_t *v, size_t code_size, size_t n, float *acc);
#if defined(KVQ_HAVE_X86_SIMD)
/* dim % 8 == 0 (AVX2), dim % 16 == 0 (AVX-512) */
void kvqi_vq_accum_avx2(const float *cent, uint32_t dim, const float *w, size_t ld, uint32_t G,
                        const uint8_t *v, size_t code_size, size_t n, float *acc);
void kvqi_vq_accum_avx512(const float *cent, uint32_t dim, const float *w, size_t ld, uint32_t G,
                          const uint8_t *v, size_t code_size, size_t n, float *acc);
#endif

/* The SIMD versions walk the tokens in passes of up to KVQI_VQ_PASS (each pass's norms
 * converted once) and the heads four at a time: */
#define KVQI_VQ_PASS 256u
/* heads h0 .. h0 + 3's weight rows from token t0, a head past G reading zeros. */
static inline void kvqi_vq_rows(const float *w, size_t ld, uint32_t G, uint32_t h0, size_t t0,
                                const float *rows[4]) {
    static const float zero_w[KVQI_VQ_PASS];
    for (uint32_t i = 0; i < 4; i++) rows[i] = h0 + i < G ? w + (h0 + i) * ld + t0 : zero_w;
}

/* the fp16 norms of tokens t0 .. t0 + nt - 1 (nt <= KVQI_VQ_PASS) as floats */
static inline void kvqi_vq_norms(const uint8_t *v, size_t code_size, size_t t0, size_t nt, float *norm) {
    for (size_t t = 0; t < nt; t++) {
        uint16_t nh;
        memcpy(&nh, v + (t0 + t) * code_size, 2);
        norm[t] = kvqi_fp16_to_fp32(nh);
    }
}
/* heads h0 .. h0 + 3's accumulators from coordinate j0, a head past G writing to spare. */
static inline void kvqi_vq_accs(float *acc, uint32_t dim, uint32_t G, uint32_t h0, uint32_t j0, float *spare,
                                float *accs[4]) {
    for (uint32_t i = 0; i < 4; i++) accs[i] = h0 + i < G ? acc + (size_t)(h0 + i) * dim + j0 : spare;
}

/* The fastest version for a resolved ISA and dim (dim % 4 == 0). */
kvqi_vq_accum_fn kvqi_vq_accum_for(kvq_isa resolved, uint32_t dim);

/* out[g] = index of the centroid nearest v[4g..4g+3] for g < n_groups: the smallest
 * (v0-c0)^2 + (v1-c1)^2 + ((v2-c2)^2 + (v3-c3)^2) summed as (e0 e0 + e1 e1) + (e2 e2 +
 * e3 e3), the first of equals (index 0 when every distance is NaN). soa is the codebook
 * by coordinate: soa[i * 256 + k] = centroid k's coordinate i. */
typedef void (*kvqi_vq_nearest_fn)(const float *soa, const float *v, uint32_t n_groups, uint8_t *out);
void kvqi_vq_nearest_scalar(const float *soa, const float *v, uint32_t n_groups, uint8_t *out);
#if defined(KVQ_HAVE_X86_SIMD)
void kvqi_vq_nearest_avx2(const float *soa, const float *v, uint32_t n_groups, uint8_t *out);
void kvqi_vq_nearest_avx512(const float *soa, const float *v, uint32_t n_groups, uint8_t *out);
#endif
kvqi_vq_nearest_fn kvqi_vq_nearest_for(kvq_isa resolved);

#endif /* KVQ_VQ_KERNELS_H */
