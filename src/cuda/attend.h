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
int kvqc_mma_supports(const kvqc_params *kp, const kvqc_params *vp, int group, int capacity);
cudaError_t kvqc_launch_mma(const kvqc_attn_args *a, dim3 grid, cudaStream_t s);

#endif /* KVQ_CUDA_ATTEND_H */
