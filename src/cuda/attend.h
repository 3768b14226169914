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

/* Grid: (split, kv head, query row z). Query row z belongs to sequence z / q_per_seq
 * (decode: one query row per sequence; prefill: the new tokens of a sequence). */
typedef struct kvqc_attn_args {
    const kvqc_params *kp, *vp; /* device copies */
    kvqc_fmt kf, vf;
    const uint8_t *k_codes, *v_codes; /* page pool ([page][n_kv_heads][page_size] codes) */
    const int32_t *seq_lens;   /* [sequences] */
    const int32_t *page_table; /* [sequences][max_pages]; NULL: page of sequence b is b */
    const float *qr;  /* [rows][n_q_heads][D]: transformed query * scale * log2(e) */
    const void *q;    /* the raw query (q_dtype), for kernels that transform it themselves */
    int q_dtype;
    float q_scale;    /* scale * log2(e) */
    float *partial;   /* [rows][n_q_heads][n_slots][D + 2]: acc, max, sum */
    int n_q_heads, n_kv_heads, group, page_size, max_pages, chunk, n_split, n_slots, q_per_seq;
} kvqc_attn_args;

#ifdef __CUDACC__
/* Page holding token t of sequence seq (contiguous layout: the sequence itself). */
static __device__ __forceinline__ int kvqc_page(const kvqc_attn_args &a, int seq, int t) {
    return a.page_table ? a.page_table[(size_t)seq * a.max_pages + t / a.page_size] : seq;
}
/* Row index (in code units) of token t of kv head h, given its page. */
static __device__ __forceinline__ size_t kvqc_row_at(const kvqc_attn_args &a, int page, int h, int t) {
    int off = a.page_table ? t % a.page_size : t;
    return ((size_t)page * a.n_kv_heads + h) * (size_t)a.page_size + off;
}
/* Row index (in code units) of token t of kv head h of sequence seq. */
static __device__ __forceinline__ size_t kvqc_row(const kvqc_attn_args &a, int seq, int h, int t) {
    return kvqc_row_at(a, kvqc_page(a, seq, t), h, t);
}
#endif

/* 1 when the tensor-core kernel takes this (key, value, group) at head_dim 128. */
int kvqc_mma_supports(const kvqc_params *kp, const kvqc_params *vp, int group);
/* Resident blocks per multiprocessor of the kernel kvqc_launch_mma would run. */
int kvqc_mma_blocks_per_sm(const kvqc_params *kp, const kvqc_params *vp);
/* Longest chunk (tokens per block) the tensor-core kernel takes; 0: no limit. */
int kvqc_mma_max_chunk(const kvqc_params *kp, const kvqc_params *vp);
cudaError_t kvqc_launch_mma(const kvqc_params *kp, const kvqc_params *vp,
                            const kvqc_attn_args *a, dim3 grid, cudaStream_t s);

/* The tensor-core kernel for fp16 / q8_0 / q4_0 keys and values (any pair), head_dim
 * 128, up to 4 query heads per KV head (attend_base.cu). */
int kvqc_base_supports(const kvqc_params *kp, const kvqc_params *vp, int group);
int kvqc_base_blocks_per_sm(const kvqc_params *kp, const kvqc_params *vp);
cudaError_t kvqc_launch_base(const kvqc_params *kp, const kvqc_params *vp,
                             const kvqc_attn_args *a, dim3 grid, cudaStream_t s);
/* Raise the base kernels' dynamic shared-memory limit (once per quantizer creation). */
cudaError_t kvqc_base_prepare(void);

#ifdef __CUDACC__
#include "cuda/warp_math.cuh"

/* Block-wide (at least G warps): the key transform of the G query heads of kv head h,
 * times scale * log2(e), into s_q[g][0..127] (what the query pass stores in qr). */
static __device__ void kvqc_block_query(const kvqc_attn_args &a, int z, int h, float (*s_q)[128]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (warp < a.group) {
        float v[4];
        size_t row = (size_t)z * a.n_q_heads + (size_t)h * a.group + warp;
        kvqc_load_row<4>(a.q, a.q_dtype, row, lane, v);
        if (a.kp->rotate) {
            kvqc_apply_signs<4>(v, a.kp->sign_bits, lane);
            kvqc_fwht<4>(v, lane);
#pragma unroll
            for (int e = 0; e < 4; e++) v[e] *= a.kp->had_scale;
        }
#pragma unroll
        for (int e = 0; e < 4; e++) s_q[warp][lane + 32 * e] = v[e] * a.q_scale;
    }
    __syncthreads();
}

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
        a.partial[(row * a.n_slots + split) * (D + 2) + i] = r;
    }
}

#endif

#endif /* KVQ_CUDA_ATTEND_H */
