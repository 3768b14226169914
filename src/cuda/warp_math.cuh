/*
 * warp_math.cuh - warp-wide building blocks shared by the encode and attention kernels:
 * a vector of D = 32E floats lives in a warp with lane l holding coordinates l + 32e.
 * The canonical 16-lane sum and the Walsh-Hadamard butterflies reproduce the CPU's
 * operation order exactly (src/cpu/cpu.h, src/core/hadamard.c).
 */
#ifndef KVQ_CUDA_WARP_MATH_CUH
#define KVQ_CUDA_WARP_MATH_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/cuda_internal.h"

__device__ __forceinline__ float kvqc_load_one(const void *x, int dtype, size_t i) {
    if (dtype == KVQ_CUDA_F16) return __half2float(((const __half *)x)[i]);
    if (dtype == KVQ_CUDA_BF16) return __bfloat162float(((const __nv_bfloat16 *)x)[i]);
    return ((const float *)x)[i];
}

template <int E>
__device__ __forceinline__ void kvqc_load_row(const void *x, int dtype, size_t row, int lane,
                                              float v[E]) {
    size_t base = row * (size_t)(32 * E) + lane;
    if (dtype == KVQ_CUDA_F16) {
        const __half *h = (const __half *)x;
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = __half2float(h[base + 32 * e]);
    } else if (dtype == KVQ_CUDA_BF16) {
        const __nv_bfloat16 *h = (const __nv_bfloat16 *)x;
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = __bfloat162float(h[base + 32 * e]);
    } else {
        const float *f = (const float *)x;
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = f[base + 32 * e];
    }
}

__device__ __forceinline__ float kvqc_warp_max(float v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v = fmaxf(v, __shfl_xor_sync(KVQC_FULL, v, o));
    return v;
}

__device__ __forceinline__ float kvqc_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(KVQC_FULL, v, o);
    return v;
}

/* A merge slot's weight against the slots' maximum M: its max and sum at ps[D], ps[D + 1]
 * (ps NULL: the merging block's own m_own, l_own); its sum, weighed, added to L. */
__device__ __forceinline__ float kvqc_slot_weight(const float *ps, int D, float m_own, float l_own, float M,
                                                  float &L) {
    const float mu = ps ? ps[D] : m_own, lu = ps ? ps[D + 1] : l_own;
    const float w = exp2f(mu - M);
    L += lu * w;
    return w;
}

/* Lanes 0..15 hold the 16 canonical partial sums: fold j += j+8, j+4, j+2, j+1 and
 * hand lane 0's total to every lane. */
__device__ __forceinline__ float kvqc_fold16(float acc) {
#pragma unroll
    for (int w = 8; w >= 1; w >>= 1) acc = __fadd_rn(acc, __shfl_down_sync(KVQC_FULL, acc, w));
    return __shfl_sync(KVQC_FULL, acc, 0);
}

/* sum of p over the warp's vector in the canonical order: partial j takes coordinates
 * j, j+16, j+32, ... in turn; j + 32e is in lane j, j + 16 + 32e in lane j + 16. */
template <int E>
__device__ __forceinline__ float kvqc_canon_sum(const float p[E], int lane) {
    float acc = 0.0f;
#pragma unroll
    for (int e = 0; e < E; e++) {
        float other = __shfl_down_sync(KVQC_FULL, p[e], 16);
        acc = __fadd_rn(acc, p[e]);
        acc = __fadd_rn(acc, other);
    }
    (void)lane;
    return kvqc_fold16(acc);
}

template <int E>
__device__ __forceinline__ void kvqc_apply_signs(float v[E], const uint32_t *sign_bits, int lane) {
#pragma unroll
    for (int e = 0; e < E; e++)
        if ((sign_bits[e] >> lane) & 1u) v[e] = __fmul_rn(v[e], -1.0f);
}

/* Unnormalised in-place Walsh-Hadamard transform of the warp's vector, stage by stage
 * in kvqi_fwht_scalar's order: x[j] = a + b, x[j + h] = a - b. */
template <int E>
__device__ __forceinline__ void kvqc_fwht(float v[E], int lane) {
#pragma unroll
    for (int h = 1; h < 32; h <<= 1) {
        bool upper = (lane & h) != 0;
#pragma unroll
        for (int e = 0; e < E; e++) {
            float o = __shfl_xor_sync(KVQC_FULL, v[e], h);
            v[e] = upper ? __fsub_rn(o, v[e]) : __fadd_rn(v[e], o);
        }
    }
#pragma unroll
    for (int h = 1; h < E; h <<= 1) {
#pragma unroll
        for (int e = 0; e < E; e++) {
            if (e & h) continue;
            float a = v[e], b = v[e + h];
            v[e] = __fadd_rn(a, b);
            v[e + h] = __fsub_rn(a, b);
        }
    }
}

/* Pi x for a warp's vector: the signs, then the normalised transform (the values'
 * rotated domain, where the attention kernels accumulate). */
template <int E>
__device__ __forceinline__ void kvqc_rotate(const kvqc_params *p, float v[E], int lane) {
    if (!p->rotate) return;
    kvqc_apply_signs<E>(v, p->sign_bits, lane);
    kvqc_fwht<E>(v, lane);
#pragma unroll
    for (int e = 0; e < E; e++) v[e] *= p->had_scale;
}

/* Pi^T y for a warp's vector (the normalised transform is its own inverse, then the
 * signs), stored to out[lane + 32e]: the merge tail of the attention kernels. */
template <int E>
__device__ __forceinline__ void kvqc_unrotate_store(const kvqc_params *p, float v[E], int lane, float *out) {
    if (p->rotate) {
        kvqc_fwht<E>(v, lane);
#pragma unroll
        for (int e = 0; e < E; e++) v[e] *= p->had_scale;
        kvqc_apply_signs<E>(v, p->sign_bits, lane);
    }
#pragma unroll
    for (int e = 0; e < E; e++) out[lane + 32 * e] = v[e];
}

/* x as its fp16 high part (part 0) or the fp16 of what the high part misses (part 1): the
 * two halves of an fp32 operand split across mma columns. */
__device__ __forceinline__ unsigned short kvqc_split_half(float x, int part) {
    const unsigned short hi = __half_as_ushort(__float2half_rn(x));
    return part ? __half_as_ushort(__float2half_rn(x - __half2float(__ushort_as_half(hi)))) : hi;
}

/* D += A B on the tensor cores: m16n8k16, fp16 A (row) and B (col), fp32 C and D. */
__device__ __forceinline__ void kvqc_mma_f16(float c[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                             unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#endif /* KVQ_CUDA_WARP_MATH_CUH */
