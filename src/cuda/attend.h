/*
 * attend.h - what the attention files share: the per-format decoding constants, the
 * arguments of the split-K kernels, and the tensor-core kernel's entry points.
 */
#ifndef KVQ_CUDA_ATTEND_H
#define KVQ_CUDA_ATTEND_H

#include "cuda/cuda_internal.h"

/* Split-K chunks are multiples of this many tokens (the tensor-core kernel's tile). */
#define KVQC_CHUNK_ALIGN 64

typedef struct kvqc_fmt {
    int kind, bits, residuals, code_size;
    float inv_sqrt_d, qjl_c0;
} kvqc_fmt;

typedef struct kvqc_attn_args {
    const kvqc_params *kp, *vp; /* device copies */
    kvqc_fmt kf, vf;
    const uint8_t *k_codes, *v_codes;
    const int32_t *seq_lens;
    const float *qr;  /* [batch][n_q_heads][D]: transformed query * scale * log2(e) */
    float *partial;   /* [batch][n_q_heads][n_split][D + 2]: acc, max, sum */
    int n_q_heads, n_kv_heads, group, capacity, chunk, n_split;
} kvqc_attn_args;

/* 1 when the tensor-core kernel takes this (key, value, group) at head_dim 128. */
int kvqc_mma_supports(const kvqc_params *kp, const kvqc_params *vp, int group);
/* Resident blocks per multiprocessor of the kernel kvqc_launch_mma would run. */
int kvqc_mma_blocks_per_sm(const kvqc_params *kp, const kvqc_params *vp);
cudaError_t kvqc_launch_mma(const kvqc_params *kp, const kvqc_params *vp,
                            const kvqc_attn_args *a, dim3 grid, cudaStream_t s);

#ifdef __CUDACC__
/* Block-wide: merge the per-warp (acc, m, l) of G heads and store the split's partial. */
static __device__ void kvqc_merge_warps(const float *part, int n_warps, int warp_stride, int head_stride,
                                 int G, int D, const kvqc_attn_args &a, int b, int h, int split) {
    for (int j = threadIdx.x; j < G * (D + 2); j += blockDim.x) {
        int g = j / (D + 2), i = j % (D + 2);
        float M = -INFINITY;
        for (int w = 0; w < n_warps; w++) M = fmaxf(M, part[w * warp_stride + g * head_stride + D]);
        float r;
        if (i == D) {
            r = M;
        } else {
            r = 0.0f;
            if (M != -INFINITY) {
                int src = i == D + 1 ? D + 1 : i;
                for (int w = 0; w < n_warps; w++) {
                    float mw = part[w * warp_stride + g * head_stride + D];
                    if (mw != -INFINITY) r += part[w * warp_stride + g * head_stride + src] * exp2f(mw - M);
                }
            }
        }
        size_t row = (size_t)b * a.n_q_heads + (size_t)h * G + g;
        a.partial[(row * a.n_split + split) * (D + 2) + i] = r;
    }
}

#endif

#endif /* KVQ_CUDA_ATTEND_H */
