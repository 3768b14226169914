/*
 * vq_scalar.c - the reference value accumulation of vq codes (vq_kernels.h) and the
 * choice of version by ISA.
 */
#include "cpu/vq_kernels.h"

#include <math.h>
#include <string.h>

#include "core/core.h"

void kvqi_vq_accum_scalar(const float *cent, uint32_t dim, const float *w, size_t ld, uint32_t G,
                          const uint8_t *v, size_t code_size, size_t n, float *acc) {
    for (uint32_t h = 0; h < G; h++) {
        float *a = acc + (size_t)h * dim;
        for (size_t t = 0; t < n; t++) {
            const uint8_t *code = v + t * code_size;
            uint16_t nh;
            memcpy(&nh, code, 2);
            float wt = w[h * ld + t] * kvqi_fp16_to_fp32(nh);
            for (uint32_t g = 0; g < dim / 4; g++) {
                const float *c = cent + 4 * (size_t)code[2 + g];
                for (uint32_t i = 0; i < 4; i++) a[4 * g + i] = fmaf(wt, c[i], a[4 * g + i]);
            }
        }
    }
}

kvqi_vq_accum_fn kvqi_vq_accum_for(kvq_isa resolved, uint32_t dim) {
#if defined(KVQ_HAVE_X86_SIMD)
    if (resolved == KVQ_ISA_AVX512 && dim % 16 == 0) return kvqi_vq_accum_avx512;
    if ((resolved == KVQ_ISA_AVX512 || resolved == KVQ_ISA_AVX2) && dim % 8 == 0) return kvqi_vq_accum_avx2;
#else
    (void)resolved;
#endif
    (void)dim;
    return kvqi_vq_accum_scalar;
}

void kvqi_vq_nearest_scalar(const float *soa, const float *v, uint32_t n_groups, uint8_t *out) {
    for (uint32_t g = 0; g < n_groups; g++) {
        const float *x = v + 4 * (size_t)g;
        uint32_t best = 0;
        float bd = INFINITY;
        for (uint32_t k = 0; k < 256; k++) {
            float e0 = x[0] - soa[k], e1 = x[1] - soa[256 + k], e2 = x[2] - soa[512 + k],
                  e3 = x[3] - soa[768 + k];
            float dist = (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3);
            if (dist < bd) {
                bd = dist;
                best = k;
            }
        }
        out[g] = (uint8_t)best;
    }
}

kvqi_vq_nearest_fn kvqi_vq_nearest_for(kvq_isa resolved) {
#if defined(KVQ_HAVE_X86_SIMD)
    if (resolved == KVQ_ISA_AVX512) return kvqi_vq_nearest_avx512;
    if (resolved == KVQ_ISA_AVX2) return kvqi_vq_nearest_avx2;
#else
    (void)resolved;
#endif
    return kvqi_vq_nearest_scalar;
}
