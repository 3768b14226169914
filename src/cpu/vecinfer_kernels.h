/*
 * vecinfer_kernels.h - product-VQ hot loops of VecInfer (arXiv 2510.06175): nearest
 * centroid of a sub-vector (encode), the per-query look-up table and the LUT scoring of
 * byte codes. vecinfer_scalar.c is the reference; the AVX2/AVX-512 tables give the same
 * codes and the same scores bit for bit (each centroid / each key owns one lane and keeps
 * the scalar order of operations, multiply then add, no FMA).
 */
#ifndef KVQ_VECINFER_KERNELS_H
#define KVQ_VECINFER_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kvq.h"

/* Codebooks are kept transposed: cb_t[t * k + c] is coordinate t of centroid c. */
typedef struct kvqi_vecinfer_kernels {
    kvq_isa isa;
    /* Index of the centroid nearest to x[sub_dim] (squared distance summed over t in
     * order; lowest index on ties). k a multiple of 16. */
    uint32_t (*nearest)(const float *x, uint32_t sub_dim, const float *cb_t, uint32_t k);
    /* lut[s * k + c] = sum_t q[s * sub_dim + t] * cb_t[t * k + c], t ascending. */
    void (*lut_build)(const float *q, uint32_t n_sub, uint32_t sub_dim, const float *cb_t,
                      uint32_t k, float *lut);
    /* scores[i] = sum_s lut[s * k + codes[i * stride + s]] (s ascending, from 0). */
    void (*lut_score8)(const float *lut, uint32_t n_sub, uint32_t k, const uint8_t *codes,
                       size_t stride, size_t n, float *scores);
} kvqi_vecinfer_kernels;

const kvqi_vecinfer_kernels *kvqi_vecinfer_kernels_for(kvq_isa resolved);
extern const kvqi_vecinfer_kernels kvqi_vecinfer_scalar;

#endif
