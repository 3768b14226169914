/*
 * encode_rows.cu - thread-per-vector encoders for head_dim 128 (TurboQuant mse and rvq,
 * arXiv 2504.19874; 1-bit RaBitQ, arXiv 2405.12497): each thread keeps its whole vector
 * in registers, so the canonical norm, the Walsh-Hadamard butterflies and the bit
 * packing are plain register arithmetic with no shuffles. Operation order is the CPU's,
 * one rounding per operation (__fmul_rn/__fadd_rn), so codes stay byte-identical with
 * the warp-per-vector kernels in encode.cu and with src/quant. Codes are assembled in
 * shared memory and leave the block as coalesced 32-bit stores.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/cuda_internal.h"

#define RD 128 /* coordinates per vector */
#define RT 128 /* vectors (threads) per block */

enum { ROWS_MSE = 0, ROWS_SIGN = 1, ROWS_RVQ = 2 };

__device__ __forceinline__ void rows_load(const void *x, int dtype, size_t row, float v[RD]) {
    if (dtype == KVQ_CUDA_F32) {
        const float4 *s = (const float4 *)((const float *)x + row * RD);
#pragma unroll
        for (int k = 0; k < RD / 4; k++) {
            float4 f = s[k];
            v[4 * k] = f.x;
            v[4 * k + 1] = f.y;
            v[4 * k + 2] = f.z;
            v[4 * k + 3] = f.w;
        }
        return;
    }
    const uint4 *s = (const uint4 *)((const uint16_t *)x + row * RD);
#pragma unroll
    for (int k = 0; k < RD / 8; k++) {
        uint4 u = s[k];
        unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (dtype == KVQ_CUDA_F16) {
                v[8 * k + 2 * j] = __half2float(__ushort_as_half((unsigned short)(w[j] & 0xffffu)));
                v[8 * k + 2 * j + 1] = __half2float(__ushort_as_half((unsigned short)(w[j] >> 16)));
            } else {
                v[8 * k + 2 * j] = __uint_as_float(w[j] << 16);
                v[8 * k + 2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
            }
        }
    }
}

/* j += j+8, j+4, j+2, j+1, spelled out so the partials stay in registers */
__device__ __forceinline__ float rows_fold(float acc[16]) {
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j] = __fadd_rn(acc[j], acc[j + 8]);
#pragma unroll
    for (int j = 0; j < 4; j++) acc[j] = __fadd_rn(acc[j], acc[j + 4]);
    acc[0] = __fadd_rn(acc[0], acc[2]);
    acc[1] = __fadd_rn(acc[1], acc[3]);
    return __fadd_rn(acc[0], acc[1]);
}

/* sum of p_i in the canonical 16-lane order (cpu.h) */
__device__ __forceinline__ float rows_canon(const float p[RD]) {
    float acc[16];
#pragma unroll
    for (int j = 0; j < 16; j++) acc[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < RD; i++) acc[i & 15] = __fadd_rn(acc[i & 15], p[i]);
    return rows_fold(acc);
}

__device__ __forceinline__ float rows_sumsq(const float v[RD]) {
    float acc[16];
#pragma unroll
    for (int j = 0; j < 16; j++) acc[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < RD; i++) acc[i & 15] = __fadd_rn(acc[i & 15], __fmul_rn(v[i], v[i]));
    return rows_fold(acc);
}

/* x *= sign1 (exact negation), then kvqi_fwht_scalar's stages */
__device__ __forceinline__ void rows_signs_fwht(float v[RD], const uint32_t *sign_bits) {
#pragma unroll
    for (int k = 0; k < RD / 32; k++) {
        const unsigned sw = sign_bits[k];
#pragma unroll
        for (int b = 0; b < 32; b++)
            v[32 * k + b] = __uint_as_float(__float_as_uint(v[32 * k + b]) ^ (((sw >> b) & 1u) << 31));
    }
#pragma unroll
    for (int h = 1; h < RD; h <<= 1)
#pragma unroll
        for (int i = 0; i < RD; i++) {
            if (i & h) continue;
            float a = v[i], b = v[i + h];
            v[i] = __fadd_rn(a, b);
            v[i + h] = __fsub_rn(a, b);
        }
}

template <int B>
__device__ __forceinline__ unsigned rows_index(float v, const float *thr) {
    if (B == 1) return v > thr[0];
    if (B == 2) return (unsigned)(v > thr[0]) + (v > thr[1]) + (v > thr[2]);
    unsigned idx = 0;
#pragma unroll
    for (int step = 1 << (B - 1); step >= 1; step >>= 1)
        if (v > thr[idx + step - 1]) idx += step;
    return idx;
}

template <int B>
__device__ __forceinline__ void rows_put(unsigned w[4 * B], int i, unsigned idx) {
    const int bit = i * B, k = bit >> 5, s = bit & 31;
    w[k] |= idx << s;
    if (s + B > 32) w[k + 1] |= idx >> (32 - s);
}

__device__ __forceinline__ void rows_store_half(uint8_t *p, float f) {
    *(__half *)p = __float2half_rn(f);
}

/* words as little-endian bytes at an even offset */
template <int NW>
__device__ __forceinline__ void rows_store_words(uint8_t *p, const unsigned *w) {
#pragma unroll
    for (int k = 0; k < NW; k++) {
        *(unsigned short *)(p + 4 * k) = (unsigned short)(w[k] & 0xffffu);
        *(unsigned short *)(p + 4 * k + 2) = (unsigned short)(w[k] >> 16);
    }
}

template <int KIND, int B>
__global__ void __launch_bounds__(RT, 2) encode_rows_kernel(kvqc_params p, int dtype, const void *x,
                                                            size_t n_rows, uint8_t *codes) {
    extern __shared__ __align__(16) uint8_t s_out[];
    __shared__ float s_thr[16], s_thr2[16];
    __shared__ float s_cen[16], s_cen2[16];
    if (threadIdx.x < 15) {
        s_thr[threadIdx.x] = p.thr[threadIdx.x];
        s_thr2[threadIdx.x] = p.thr2[threadIdx.x];
    }
    if (threadIdx.x < 16) {
        s_cen[threadIdx.x] = p.cen[threadIdx.x];
        s_cen2[threadIdx.x] = p.cen2[threadIdx.x];
    }
    __syncthreads();
    const int cs = p.code_size;
    for (size_t r0 = (size_t)blockIdx.x * RT; r0 < n_rows; r0 += (size_t)gridDim.x * RT) {
        const size_t row = r0 + threadIdx.x;
        uint8_t *my = s_out + threadIdx.x * cs;
        if (row < n_rows) {
            float v[RD];
            rows_load(x, dtype, row, v);
            const float norm = __fsqrt_rn(rows_sumsq(v));
            rows_store_half(my, norm);
            if (KIND == ROWS_SIGN) {
                rows_signs_fwht(v, p.sign_bits);
                unsigned w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
                for (int i = 0; i < RD; i++) w[i >> 5] |= (unsigned)(v[i] > 0.0f) << (i & 31);
                if (p.kind == KVQC_RABITQ) {
#pragma unroll
                    for (int i = 0; i < RD; i++) v[i] = fabsf(v[i]);
                    float abs_sum = rows_canon(v);
                    float cos1 = norm > 0.0f ? __fdiv_rn(__fmul_rn(abs_sum, p.inv_d), norm) : 1.0f;
                    rows_store_half(my + 2, cos1);
                    rows_store_words<4>(my + 4, w);
                } else {
                    rows_store_words<4>(my + 2, w);
                }
            } else if (KIND == ROWS_MSE) {
                if (p.rotate) {
                    rows_signs_fwht(v, p.sign_bits);
#pragma unroll
                    for (int i = 0; i < RD; i++) v[i] = __fmul_rn(v[i], p.had_scale);
                }
                const float inv = norm > 0.0f ? __fdiv_rn(1.0f, norm) : 0.0f;
                unsigned w[4 * B];
#pragma unroll
                for (int k = 0; k < 4 * B; k++) w[k] = 0u;
#pragma unroll
                for (int i = 0; i < RD; i++) rows_put<B>(w, i, rows_index<B>(__fmul_rn(v[i], inv), s_thr));
                rows_store_words<4 * B>(my + 2, w);
            } else { /* ROWS_RVQ */
                const int R = p.residuals;
                if (p.rotate) {
                    rows_signs_fwht(v, p.sign_bits);
#pragma unroll
                    for (int i = 0; i < RD; i++) v[i] = __fmul_rn(v[i], p.had_scale);
                }
                const float a = norm > 0.0f ? __fdiv_rn(p.sqrt_d, norm) : 0.0f;
                unsigned w[4 * B];
#pragma unroll
                for (int k = 0; k < 4 * B; k++) w[k] = 0u;
#pragma unroll
                for (int i = 0; i < RD; i++) {
                    float y = __fmul_rn(v[i], a);
                    unsigned idx = rows_index<B>(y, s_thr);
                    rows_put<B>(w, i, idx);
                    v[i] = __fsub_rn(y, __fmul_rn(s_cen[idx], 1.0f));
                }
                rows_store_words<4 * B>(my + 2 * R, w);
                for (int st = 1; st < R; st++) {
                    float spread = __fsqrt_rn(__fdiv_rn(rows_sumsq(v), (float)RD));
                    float sh = __half2float(__float2half_rn(spread));
                    rows_store_half(my + 2 * st, spread);
                    const float inv = sh > 0.0f ? __fdiv_rn(1.0f, sh) : 0.0f;
#pragma unroll
                    for (int k = 0; k < 4 * B; k++) w[k] = 0u;
#pragma unroll
                    for (int i = 0; i < RD; i++) {
                        unsigned idx = rows_index<B>(__fmul_rn(v[i], inv), s_thr2);
                        rows_put<B>(w, i, idx);
                        v[i] = __fsub_rn(v[i], __fmul_rn(s_cen2[idx], sh));
                    }
                    rows_store_words<4 * B>(my + 2 * R + st * 16 * B, w);
                }
            }
        }
        __syncthreads();
        /* the block's codes are contiguous: out with 32-bit stores when aligned */
        const size_t nb = n_rows - r0 < (size_t)RT ? n_rows - r0 : (size_t)RT;
        uint8_t *dst = codes + r0 * cs;
        const size_t bytes = nb * cs;
        if ((((uintptr_t)dst) & 3u) == 0 && (bytes & 3u) == 0) {
            const unsigned *src32 = (const unsigned *)s_out;
            unsigned *dst32 = (unsigned *)dst;
            for (size_t k = threadIdx.x; k < bytes / 4; k += RT) dst32[k] = src32[k];
        } else {
            for (size_t k = threadIdx.x; k < bytes; k += RT) dst[k] = s_out[k];
        }
        __syncthreads();
    }
}

typedef void (*rows_fn)(kvqc_params, int, const void *, size_t, uint8_t *);

static rows_fn rows_pick(const kvqc_params *p) {
    if (p->dim != RD) return NULL;
    if (p->sign_path) return encode_rows_kernel<ROWS_SIGN, 1>;
    if (p->kind == KVQC_MSE) {
        switch (p->bits) {
        case 1: return encode_rows_kernel<ROWS_MSE, 1>;
        case 2: return encode_rows_kernel<ROWS_MSE, 2>;
        case 3: return encode_rows_kernel<ROWS_MSE, 3>;
        case 4: return encode_rows_kernel<ROWS_MSE, 4>;
        default: return NULL;
        }
    }
    if (p->kind == KVQC_RVQ) {
        if (p->bits == 1) return encode_rows_kernel<ROWS_RVQ, 1>;
        if (p->bits == 2) return encode_rows_kernel<ROWS_RVQ, 2>;
    }
    return NULL;
}

int kvqc_encode_rows(const kvqc_params *p, int dtype, const void *x, size_t n_rows, uint8_t *codes,
                     cudaStream_t s, int n_sm, cudaError_t *err) {
    rows_fn fn = rows_pick(p);
    if (!fn || ((uintptr_t)x & 15u) != 0) return 0;
    size_t smem = (size_t)RT * p->code_size;
    size_t blocks = (n_rows + RT - 1) / RT, cap = (size_t)n_sm * 8;
    if (blocks > cap) blocks = cap;
    fn<<<(unsigned)blocks, RT, smem, s>>>(*p, dtype, x, n_rows, codes);
    *err = cudaGetLastError();
    return 1;
}
