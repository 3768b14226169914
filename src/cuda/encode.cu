/*
 * encode.cu - the GPU quantizers: one warp per vector, lane l holding coordinates
 * l, l+32, l+64, ... Codes are byte-identical to the CPU's (src/quant): every float
 * operation is rounded one at a time (__fmul_rn/__fadd_rn: no FMA contraction), norms
 * use the CPU's canonical 16-lane order, and the Walsh-Hadamard butterflies are the
 * a+b / a-b of kvqi_fwht_scalar stage by stage. Methods: TurboQuant mse and rvq
 * (arXiv 2504.19874), QJL (arXiv 2406.03482), 1-bit RaBitQ (arXiv 2405.12497), and
 * llama.cpp's fp16/q8_0/q4_0 blocks.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.h"
#include "cuda/attend.h"
extern "C" {
#include "quant/quant.h"
}
#include "cuda/warp_math.cuh"

/* ------------------------------------------------------------ host handle */

extern "C" KVQ_API kvq_status kvq_cuda_available(int *n_devices) {
    if (!n_devices) return KVQ_ERR_INVALID_ARG;
    *n_devices = 0;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        cudaGetLastError();
        return KVQ_ERR_NO_DEVICE;
    }
    *n_devices = n;
    return KVQ_OK;
}

static int is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

static kvq_status fill_params(const kvq_quantizer *q, kvqc_params *p) {
    const kvq_config *c = &q->cfg;
    uint32_t d = c->dim;
    memset(p, 0, sizeof *p);
    if (!is_pow2(d) || d < 32 || d > KVQC_MAX_DIM) return KVQ_ERR_UNSUPPORTED;
    if (q->rot.kind != KVQI_ROT_NONE && q->rot.kind != KVQI_ROT_HADAMARD) return KVQ_ERR_UNSUPPORTED;
    p->dim = (int)d;
    p->bits = (int)c->bits;
    p->residuals = (int)c->residuals;
    p->code_size = (int)kvq_code_size(q);
    p->rotate = q->rot.kind == KVQI_ROT_HADAMARD;
    p->had_scale = (float)(1.0 / sqrt((double)d));
    p->sqrt_d = sqrtf((float)d);
    p->inv_sqrt_d = 1.0f / sqrtf((float)d);
    p->inv_d = 1.0f / (float)d;
    if (p->rotate)
        for (uint32_t i = 0; i < d; i++)
            if (q->rot.had.sign1[i] < 0.0f) p->sign_bits[i / 32] |= 1u << (i % 32);
    double mse;
    switch (c->method) {
    case KVQ_METHOD_FP16: p->kind = KVQC_FP16; return KVQ_OK;
    case KVQ_METHOD_Q8_0: p->kind = KVQC_Q8_0; return KVQ_OK;
    case KVQ_METHOD_Q4_0: p->kind = KVQC_Q4_0; return KVQ_OK;
    case KVQ_METHOD_TURBOQUANT_MSE:
        if (c->bits < 1 || c->bits > 8) return KVQ_ERR_UNSUPPORTED;
        p->kind = KVQC_MSE;
        /* the CPU codes 1 bit from the unnormalised transform when it can */
        p->sign_path = c->bits == 1 && p->rotate && q->k->hadamard_sign_batch != NULL;
        return kvqi_lloyd_max(KVQI_DIST_BETA, (double)d, c->bits, p->cen, p->thr, &mse);
    case KVQ_METHOD_TURBOQUANT_RVQ: {
        if (c->bits < 1 || c->bits > 4 || c->residuals < 1 || c->residuals > 4)
            return KVQ_ERR_UNSUPPORTED;
        p->kind = KVQC_RVQ;
        kvq_status st = kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0.0, c->bits, p->cen, p->thr, &mse);
        if (st == KVQ_OK) st = kvqi_lloyd_max(KVQI_DIST_LAPLACE, 0.0, c->bits, p->cen2, p->thr2, &mse);
        return st;
    }
    case KVQ_METHOD_QJL:
        if (c->proj_dim % 32 != 0 || c->proj_dim == 0 || c->proj_dim > KVQC_MAX_DIM)
            return KVQ_ERR_UNSUPPORTED;
        p->kind = KVQC_QJL;
        p->m = (int)c->proj_dim;
        p->qjl_c0 = KVQI_SQRT_HALF_PI / (float)c->proj_dim;
        p->rotate = 0;
        return KVQ_OK;
    case KVQ_METHOD_RABITQ:
        if (c->bits != 1 || c->nlist != 0 || c->split || !p->rotate) return KVQ_ERR_UNSUPPORTED;
        p->kind = KVQC_RABITQ;
        p->sign_path = 1;
        return KVQ_OK;
    default: return KVQ_ERR_UNSUPPORTED;
    }
}

extern "C" KVQ_API kvq_status kvq_cuda_quantizer_create(const kvq_quantizer *q,
                                                        kvq_cuda_quantizer **out) {
    if (!q || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    int n_dev = 0;
    kvq_status st = kvq_cuda_available(&n_dev);
    if (st != KVQ_OK) return st;
    kvq_cuda_quantizer *cq = (kvq_cuda_quantizer *)calloc(1, sizeof *cq);
    if (!cq) return KVQ_ERR_NOMEM;
    cq->cfg = q->cfg;
    st = fill_params(q, &cq->p);
    cudaError_t e = cudaSuccess;
    if (st == KVQ_OK) e = cudaGetDevice(&cq->device);
    int v = 0;
    if (st == KVQ_OK && e == cudaSuccess)
        e = cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, cq->device);
    cq->n_sm = v > 0 ? v : 1;
    if (st == KVQ_OK && e == cudaSuccess)
        e = cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, cq->device);
    cq->smem_optin = (size_t)(v > 0 ? v : 48 * 1024);
    /* the baseline attention kernels take more than 48 KiB of shared memory */
    if (st == KVQ_OK && e == cudaSuccess) e = kvqc_base_prepare();
    if (st == KVQ_OK && e == cudaSuccess && cq->p.kind == KVQC_QJL) {
        const kvqi_qjl *j = (const kvqi_qjl *)q->state;
        size_t md = (size_t)j->m * j->d;
        float *host = (float *)malloc(2 * md * sizeof(float));
        if (!host) {
            st = KVQ_ERR_NOMEM;
        } else {
            memcpy(host, j->S, md * sizeof(float));
            for (uint32_t r = 0; r < j->m; r++)
                for (uint32_t i = 0; i < j->d; i++) host[md + (size_t)i * j->m + r] = j->S[(size_t)r * j->d + i];
            e = cudaMalloc((void **)&cq->proj_dev, 2 * md * sizeof(float));
            if (e == cudaSuccess)
                e = cudaMemcpy(cq->proj_dev, host, 2 * md * sizeof(float), cudaMemcpyHostToDevice);
            free(host);
            cq->p.proj = cq->proj_dev;
            cq->p.proj_t = cq->proj_dev + md;
        }
    }
    if (st == KVQ_OK && e == cudaSuccess) e = cudaMalloc((void **)&cq->p_dev, sizeof(kvqc_params));
    if (st == KVQ_OK && e == cudaSuccess)
        e = cudaMemcpy(cq->p_dev, &cq->p, sizeof(kvqc_params), cudaMemcpyHostToDevice);
    if (st == KVQ_OK) st = kvqc_status(e);
    if (st != KVQ_OK) {
        kvq_cuda_quantizer_free(cq);
        return st;
    }
    *out = cq;
    return KVQ_OK;
}

extern "C" KVQ_API void kvq_cuda_quantizer_free(kvq_cuda_quantizer *cq) {
    if (!cq) return;
    if (cq->proj_dev) cudaFree(cq->proj_dev);
    if (cq->p_dev) cudaFree(cq->p_dev);
    free(cq);
}

/* ---------------------------------------------------------------- kernels */

/* Packs the b-bit indices of 32 coordinates (one per lane) into 4b bytes, LSB-first,
 * and stores them at out[0 .. 4b). Power-of-two widths gather whole indices; other
 * widths gather bit by bit. */
__device__ __forceinline__ void pack_store(unsigned idx, int bits, int lane, uint8_t *out) {
    const int nbytes = 4 * bits;
    unsigned byte = 0;
    if (bits == 1) {
        unsigned b = __ballot_sync(KVQC_FULL, idx & 1u);
        if (lane < 4) out[lane] = (uint8_t)(b >> (8 * lane));
        return;
    }
    if ((bits & (bits - 1)) == 0) {
        const int per = 8 / bits; /* indices per byte */
        for (int k = 0; k < per; k++) {
            int src = lane * per + k;
            unsigned v = __shfl_sync(KVQC_FULL, idx, src < 32 ? src : 31);
            byte |= v << (k * bits);
        }
    } else {
#pragma unroll
        for (int t = 0; t < 8; t++) {
            int pos = 8 * lane + t;
            int src = pos / bits;
            unsigned v = __shfl_sync(KVQC_FULL, idx, src < 32 ? src : 31);
            byte |= ((v >> (pos - src * bits)) & 1u) << t;
        }
    }
    if (lane < nbytes) out[lane] = (uint8_t)byte;
}

/* #{k : v > thr[k]} over 2^bits - 1 ascending thresholds, by bisection. */
__device__ __forceinline__ unsigned count_above(float v, const float *thr, int bits) {
    unsigned idx = 0;
    for (int step = 1 << (bits - 1); step >= 1; step >>= 1)
        if (v > thr[idx + step - 1]) idx += step;
    return idx;
}

/* One 16-bit store (every fp16 field sits at an even offset of a 2-aligned buffer).
 * Storing the converted half as two bytes gave a wrong low byte on sm_90 with nvcc
 * 13.0 (the float's integer part), caught by the byte-identity test. */
__device__ __forceinline__ void store_half(uint8_t *p, float f) {
    *(__half *)p = __float2half_rn(f);
}

__device__ __forceinline__ float half_round(float f) { return __half2float(__float2half_rn(f)); }

template <int E>
__global__ void __launch_bounds__(128, 6) encode_kernel(kvqc_params p, int dtype, const void *x,
                                                     size_t n_rows, uint8_t *codes) {
    __shared__ float s_thr[255], s_cen[256], s_thr2[15], s_cen2[16];
    for (int i = threadIdx.x; i < 255; i += blockDim.x) s_thr[i] = p.thr[i];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) s_cen[i] = p.cen[i];
    if (threadIdx.x < 15) s_thr2[threadIdx.x] = p.thr2[threadIdx.x];
    if (threadIdx.x < 16) s_cen2[threadIdx.x] = p.cen2[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int D = 32 * E;
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    size_t n_warps = ((size_t)gridDim.x * blockDim.x) >> 5;
    /* the next row's load is in flight while this one is coded */
    float nxt[E];
    if (warp < n_rows) kvqc_load_row<E>(x, dtype, warp, lane, nxt);
    for (size_t row = warp; row < n_rows; row += n_warps) {
        float v[E];
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = nxt[e];
        if (row + n_warps < n_rows) kvqc_load_row<E>(x, dtype, row + n_warps, lane, nxt);
        uint8_t *c = codes + row * (size_t)p.code_size;
        if (p.kind == KVQC_FP16) {
#pragma unroll
            for (int e = 0; e < E; e++) store_half(c + 2 * (lane + 32 * e), v[e]);
            continue;
        }
        if (p.kind == KVQC_Q8_0) {
#pragma unroll
            for (int e = 0; e < E; e++) {
                float amax = kvqc_warp_max(fabsf(v[e]));
                float d = __fdiv_rn(amax, 127.0f);
                float id = fabsf(d) >= FLT_MIN ? __fdiv_rn(1.0f, d) : 0.0f; /* as the CPU: 0 below the normal floats */
                uint8_t *blk = c + 34 * e;
                if (lane == 0) store_half(blk, d);
                blk[2 + lane] = (uint8_t)(int8_t)(int)roundf(__fmul_rn(v[e], id));
            }
            continue;
        }
        if (p.kind == KVQC_Q4_0) {
#pragma unroll
            for (int e = 0; e < E; e++) {
                /* the value of largest magnitude, the first one on ties */
                float a = fabsf(v[e]);
                int at = lane;
#pragma unroll
                for (int o = 16; o >= 1; o >>= 1) {
                    float a2 = __shfl_xor_sync(KVQC_FULL, a, o);
                    int at2 = __shfl_xor_sync(KVQC_FULL, at, o);
                    if (a2 > a || (a2 == a && at2 < at)) {
                        a = a2;
                        at = at2;
                    }
                }
                float mx = __shfl_sync(KVQC_FULL, v[e], at);
                float d = __fdiv_rn(mx, -8.0f);
                float id = fabsf(d) >= FLT_MIN ? __fdiv_rn(1.0f, d) : 0.0f; /* as the CPU: 0 below the normal floats */
                int q = (int)(int8_t)__float2int_rz(__fadd_rn(__fmul_rn(v[e], id), 8.5f));
                unsigned nib = (unsigned)(q < 15 ? q : 15);
                unsigned hi = __shfl_down_sync(KVQC_FULL, nib, 16);
                uint8_t *blk = c + 18 * e;
                if (lane == 0) store_half(blk, d);
                if (lane < 16) blk[2 + lane] = (uint8_t)(nib | (hi << 4));
            }
            continue;
        }
        /* rotating methods: ||x|| first, in the canonical order */
        float sq[E];
#pragma unroll
        for (int e = 0; e < E; e++) sq[e] = __fmul_rn(v[e], v[e]);
        float norm = __fsqrt_rn(kvqc_canon_sum<E>(sq, lane));
        if (p.sign_path) {
            /* sign(H D x) without the 1/sqrt(d): the CPU's fused 1-bit encoder */
            kvqc_apply_signs<E>(v, p.sign_bits, lane);
            kvqc_fwht<E>(v, lane);
            int hdr = p.kind == KVQC_RABITQ ? 4 : 2;
#pragma unroll
            for (int e = 0; e < E; e++) {
                unsigned b = __ballot_sync(KVQC_FULL, v[e] > 0.0f);
                if (lane < 4) c[hdr + 4 * e + lane] = (uint8_t)(b >> (8 * lane));
            }
            if (lane == 0) store_half(c, norm);
            if (p.kind == KVQC_RABITQ) {
                float ab[E];
#pragma unroll
                for (int e = 0; e < E; e++) ab[e] = fabsf(v[e]);
                float abs_sum = kvqc_canon_sum<E>(ab, lane);
                float cos1 = norm > 0.0f ? __fdiv_rn(__fmul_rn(abs_sum, p.inv_d), norm) : 1.0f;
                if (lane == 0) store_half(c + 2, cos1);
            }
            continue;
        }
        if (p.rotate) {
            kvqc_apply_signs<E>(v, p.sign_bits, lane);
            kvqc_fwht<E>(v, lane);
#pragma unroll
            for (int e = 0; e < E; e++) v[e] = __fmul_rn(v[e], p.had_scale);
        }
        const int b = p.bits;
        if (p.kind == KVQC_MSE) {
            if (lane == 0) store_half(c, norm);
            float inv = norm > 0.0f ? __fdiv_rn(1.0f, norm) : 0.0f;
#pragma unroll
            for (int e = 0; e < E; e++)
                pack_store(count_above(__fmul_rn(v[e], inv), s_thr, b), b, lane, c + 2 + 4 * b * e);
            continue;
        }
        /* KVQC_RVQ: stage 1 on the unit-variance scale, then Laplacian residual stages */
        if (lane == 0) store_half(c, norm);
        const int R = p.residuals, idx_bytes = D * b / 8;
        uint8_t *idx0 = c + 2 * R;
        float a = norm > 0.0f ? __fdiv_rn(p.sqrt_d, norm) : 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) {
            float y = __fmul_rn(v[e], a);
            unsigned idx = count_above(y, s_thr, b);
            pack_store(idx, b, lane, idx0 + 4 * b * e);
            v[e] = __fsub_rn(y, __fmul_rn(s_cen[idx], 1.0f));
        }
        for (int st = 1; st < R; st++) {
            float y2[E];
#pragma unroll
            for (int e = 0; e < E; e++) y2[e] = __fmul_rn(v[e], v[e]);
            float spread = __fsqrt_rn(__fdiv_rn(kvqc_canon_sum<E>(y2, lane), (float)D));
            float sh = half_round(spread);
            if (lane == 0) store_half(c + 2 * st, spread);
            float inv = sh > 0.0f ? __fdiv_rn(1.0f, sh) : 0.0f;
            uint8_t *idx_st = idx0 + (size_t)st * idx_bytes;
#pragma unroll
            for (int e = 0; e < E; e++) {
                unsigned idx = count_above(__fmul_rn(v[e], inv), s_thr2, b);
                pack_store(idx, b, lane, idx_st + 4 * b * e);
                v[e] = __fsub_rn(v[e], __fmul_rn(s_cen2[idx], sh));
            }
        }
    }
}

/* QJL: bits = sign(S x) with each row's dot in the canonical order. S^T sits in shared
 * memory; a block takes QJL_TOK vectors at a time so each load of S serves them all. */
#define QJL_TOK 4
__global__ void __launch_bounds__(128) qjl_encode_kernel(kvqc_params p, int dtype, const void *x,
                                                         size_t n_rows, uint8_t *codes,
                                                         int s_in_smem) {
    extern __shared__ float smem[];
    const int d = p.dim, m = p.m;
    /* S^T [d][m] in shared memory when it fits, else read through the caches */
    const float *st = s_in_smem ? smem : p.proj_t;
    float *xs = s_in_smem ? smem + (size_t)d * m : smem; /* [QJL_TOK][d] */
    if (s_in_smem)
        for (int i = threadIdx.x; i < d * m; i += blockDim.x) smem[i] = p.proj_t[i];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (size_t r0 = (size_t)blockIdx.x * QJL_TOK; r0 < n_rows; r0 += (size_t)gridDim.x * QJL_TOK) {
        __syncthreads();
        for (int i = threadIdx.x; i < QJL_TOK * d; i += blockDim.x) {
            size_t row = r0 + i / d;
            xs[i] = row < n_rows ? kvqc_load_one(x, dtype, row * d + i % d) : 0.0f;
        }
        __syncthreads();
        if (warp < QJL_TOK && r0 + warp < n_rows) {
            /* ||x||: canonical lanes j < 16 walk j, j+16, ... then fold */
            const float *xr = xs + warp * d;
            float acc = 0.0f;
            if (lane < 16)
                for (int i = lane; i < d; i += 16) acc = __fadd_rn(acc, __fmul_rn(xr[i], xr[i]));
            acc = kvqc_fold16(acc);
            if (lane == 0) store_half(codes + (r0 + warp) * (size_t)p.code_size, __fsqrt_rn(acc));
        }
        for (int rb = 0; rb < m; rb += blockDim.x) {
            int r = rb + threadIdx.x;
            bool live = r < m;
            float acc[QJL_TOK][16];
#pragma unroll
            for (int t = 0; t < QJL_TOK; t++)
#pragma unroll
                for (int j = 0; j < 16; j++) acc[t][j] = 0.0f;
            if (live) {
                for (int i0 = 0; i0 < d; i0 += 16) {
#pragma unroll
                    for (int j = 0; j < 16; j++) {
                        float s = st[(i0 + j) * m + r];
#pragma unroll
                        for (int t = 0; t < QJL_TOK; t++)
                            acc[t][j] = __fadd_rn(acc[t][j], __fmul_rn(s, xs[t * d + i0 + j]));
                    }
                }
            }
#pragma unroll
            for (int t = 0; t < QJL_TOK; t++) {
#pragma unroll
                for (int j = 0; j < 8; j++) acc[t][j] = __fadd_rn(acc[t][j], acc[t][j + 8]);
#pragma unroll
                for (int j = 0; j < 4; j++) acc[t][j] = __fadd_rn(acc[t][j], acc[t][j + 4]);
                acc[t][0] = __fadd_rn(acc[t][0], acc[t][2]);
                acc[t][1] = __fadd_rn(acc[t][1], acc[t][3]);
                acc[t][0] = __fadd_rn(acc[t][0], acc[t][1]);
                unsigned bits = __ballot_sync(KVQC_FULL, live && acc[t][0] > 0.0f);
                size_t row = r0 + t;
                if (row < n_rows && live && lane < 4)
                    codes[row * (size_t)p.code_size + 2 + (r - lane) / 8 + lane] = (uint8_t)(bits >> (8 * lane));
            }
        }
    }
}

/* ------------------------------------------------------------- entry point */

template <int E>
static cudaError_t launch_encode(const kvqc_params *p, int dtype, const void *x, size_t n,
                                 uint8_t *codes, cudaStream_t s, int n_sm) {
    size_t warps = n;
    size_t blocks = (warps + 3) / 4;
    size_t cap = (size_t)n_sm * 16;
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    encode_kernel<E><<<(unsigned)blocks, 128, 0, s>>>(*p, dtype, x, n, codes);
    return cudaGetLastError();
}

extern "C" KVQ_API kvq_status kvq_cuda_encode(const kvq_cuda_quantizer *cq, kvq_cuda_dtype dtype,
                                              const void *x_dev, size_t n_rows,
                                              uint8_t *codes_dev, void *stream) {
    if (!cq || !x_dev || !codes_dev || ((uintptr_t)codes_dev & 1u)) return KVQ_ERR_INVALID_ARG;
    if (dtype != KVQ_CUDA_F32 && dtype != KVQ_CUDA_F16 && dtype != KVQ_CUDA_BF16)
        return KVQ_ERR_INVALID_ARG;
    if (n_rows == 0) return KVQ_OK;
    cudaStream_t s = (cudaStream_t)stream;
    const kvqc_params *p = &cq->p;
    cudaError_t e;
    if (p->kind == KVQC_QJL) {
        size_t smem = ((size_t)p->dim * p->m + (size_t)QJL_TOK * p->dim) * sizeof(float);
        int in_smem = smem <= cq->smem_optin;
        if (!in_smem) smem = (size_t)QJL_TOK * p->dim * sizeof(float);
        e = cudaFuncSetAttribute(qjl_encode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return kvqc_status(e);
        size_t blocks = (n_rows + QJL_TOK - 1) / QJL_TOK, cap = (size_t)cq->n_sm * 2;
        if (blocks > cap) blocks = cap;
        qjl_encode_kernel<<<(unsigned)blocks, 128, smem, s>>>(*p, (int)dtype, x_dev, n_rows, codes_dev, in_smem);
        return kvqc_status(cudaGetLastError());
    }
    /* head_dim 128 with 16-byte aligned input: one vector per thread */
    if (kvqc_encode_rows(p, (int)dtype, x_dev, n_rows, codes_dev, s, cq->n_sm, &e))
        return kvqc_status(e);
    switch (p->dim) {
    case 32: e = launch_encode<1>(p, (int)dtype, x_dev, n_rows, codes_dev, s, cq->n_sm); break;
    case 64: e = launch_encode<2>(p, (int)dtype, x_dev, n_rows, codes_dev, s, cq->n_sm); break;
    case 128: e = launch_encode<4>(p, (int)dtype, x_dev, n_rows, codes_dev, s, cq->n_sm); break;
    case 256: e = launch_encode<8>(p, (int)dtype, x_dev, n_rows, codes_dev, s, cq->n_sm); break;
    case 512: e = launch_encode<16>(p, (int)dtype, x_dev, n_rows, codes_dev, s, cq->n_sm); break;
    case 1024: e = launch_encode<32>(p, (int)dtype, x_dev, n_rows, codes_dev, s, cq->n_sm); break;
    default: return KVQ_ERR_UNSUPPORTED;
    }
    return kvqc_status(e);
}
