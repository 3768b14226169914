/*
 * vecinfer_scalar.c - reference product-VQ kernels of VecInfer (arXiv 2510.06175): the
 * order of every sum here is the one the SIMD versions reproduce lane by lane.
 */
#include "cpu/vecinfer_kernels.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

static uint32_t nearest_scalar(const float *x, uint32_t sub_dim, const float *cb_t, uint32_t k) {
    uint32_t best = 0;
    float best_d = 0.0f;
    for (uint32_t c = 0; c < k; c++) {
        float d = 0.0f;
        for (uint32_t t = 0; t < sub_dim; t++) {
            float e = x[t] - cb_t[(size_t)t * k + c];
            d = d + e * e;
        }
        if (c == 0 || d < best_d) {
            best_d = d;
            best = c;
        }
    }
    return best;
}

static void lut_build_scalar(const float *q, uint32_t n_sub, uint32_t sub_dim, const float *cb_t,
                             uint32_t k, float *lut) {
    for (uint32_t s = 0; s < n_sub; s++) {
        const float *qs = q + (size_t)s * sub_dim;
        float *row = lut + (size_t)s * k;
        for (uint32_t c = 0; c < k; c++) {
            float acc = 0.0f;
            for (uint32_t t = 0; t < sub_dim; t++) acc = acc + qs[t] * cb_t[(size_t)t * k + c];
            row[c] = acc;
        }
    }
}

static void lut_score8_scalar(const float *lut, uint32_t n_sub, uint32_t k, const uint8_t *codes,
                              size_t stride, size_t n, float *scores) {
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * stride;
        float acc = 0.0f;
        for (uint32_t s = 0; s < n_sub; s++) acc = acc + lut[(size_t)s * k + c[s]];
        scores[i] = acc;
    }
}

const kvqi_vecinfer_kernels kvqi_vecinfer_scalar = {
    .isa = KVQ_ISA_SCALAR,
    .nearest = nearest_scalar,
    .lut_build = lut_build_scalar,
    .lut_score8 = lut_score8_scalar,
};

#if defined(KVQ_HAVE_X86_SIMD)
extern const kvqi_vecinfer_kernels kvqi_vecinfer_avx2, kvqi_vecinfer_avx512;
#endif

const kvqi_vecinfer_kernels *kvqi_vecinfer_kernels_for(kvq_isa resolved) {
    switch (resolved) {
#if defined(KVQ_HAVE_X86_SIMD)
    case KVQ_ISA_AVX2: return &kvqi_vecinfer_avx2;
    case KVQ_ISA_AVX512: return &kvqi_vecinfer_avx512;
#endif
    default: return &kvqi_vecinfer_scalar;
    }
}
