/*
 * attend.cu - fused decode attention over compressed keys and values (split-K
 * "flash decoding": each block scores a chunk of the context with an online softmax,
 * a second pass merges the chunks). Keys are scored against the query rotated once
 * (TurboQuant's <Pi q, Pi x>, arXiv 2504.19874; RaBitQ's and QJL's estimators), values
 * are accumulated in their rotated domain and the output is rotated back once.
 * This file holds the host entry point, the query/merge passes and the general
 * CUDA-core kernel that serves every format; attend_mma.cu holds the tensor-core
 * kernel for 1-bit keys with 2- and 4-bit values.
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/attend.h"
#include "cuda/warp_math.cuh"

#define LOG2E 1.4426950408889634f
#define GMAX 8
#define ATT_WARPS 4

/* ------------------------------------------------------------ decoding */

__device__ __forceinline__ unsigned get_index(const uint8_t *p, int i, int bits) {
    int bit = i * bits, byte = bit >> 3, shift = bit & 7;
    unsigned v = (unsigned)p[byte] >> shift;
    if (shift + bits > 8) v |= (unsigned)p[byte + 1] << (8 - shift);
    return v & ((1u << bits) - 1u);
}

__device__ __forceinline__ float ld_half(const uint8_t *p) {
    return __half2float(*(const __half *)p);
}

/* Coordinates lane + 32e of a code, in the space the query was moved to (rotated, or
 * projected for qjl). as_key: rabitq divides by its stored cosine (the estimator). */
template <int E>
__device__ __forceinline__ void decode_vec(const kvqc_fmt &f, const float *cen, const float *cen2,
                                           const uint8_t *c, int lane, bool as_key, float out[E]) {
    switch (f.kind) {
    case KVQC_FP16:
#pragma unroll
        for (int e = 0; e < E; e++) out[e] = __half2float(((const __half *)c)[lane + 32 * e]);
        break;
    case KVQC_Q8_0:
#pragma unroll
        for (int e = 0; e < E; e++) out[e] = (float)(int8_t)c[34 * e + 2 + lane] * ld_half(c + 34 * e);
        break;
    case KVQC_Q4_0:
#pragma unroll
        for (int e = 0; e < E; e++) {
            unsigned byte = c[18 * e + 2 + (lane & 15)];
            int nib = (int)(lane < 16 ? byte & 15u : byte >> 4);
            out[e] = (float)(nib - 8) * ld_half(c + 18 * e);
        }
        break;
    case KVQC_MSE: {
        float norm = ld_half(c);
#pragma unroll
        for (int e = 0; e < E; e++) out[e] = cen[get_index(c + 2, lane + 32 * e, f.bits)] * norm;
        break;
    }
    case KVQC_RVQ: {
        const int R = f.residuals, idx_bytes = 4 * E * f.bits;
        const uint8_t *idx = c + 2 * R;
#pragma unroll
        for (int e = 0; e < E; e++) out[e] = cen[get_index(idx, lane + 32 * e, f.bits)];
        for (int st = 1; st < R; st++) {
            float sh = ld_half(c + 2 * st);
#pragma unroll
            for (int e = 0; e < E; e++)
                out[e] += cen2[get_index(idx + st * idx_bytes, lane + 32 * e, f.bits)] * sh;
        }
        float scale = ld_half(c) * f.inv_sqrt_d;
#pragma unroll
        for (int e = 0; e < E; e++) out[e] *= scale;
        break;
    }
    case KVQC_RABITQ:
    case KVQC_QJL: {
        int hdr = f.kind == KVQC_RABITQ ? 4 : 2;
        float mag = f.kind == KVQC_RABITQ ? ld_half(c) * f.inv_sqrt_d : ld_half(c) * f.qjl_c0;
        if (f.kind == KVQC_RABITQ && as_key) mag = mag / ld_half(c + 2);
#pragma unroll
        for (int e = 0; e < E; e++) {
            unsigned byte = c[hdr + 4 * e + (lane >> 3)];
            out[e] = (byte >> (lane & 7)) & 1u ? mag : -mag;
        }
        break;
    }
    default:
#pragma unroll
        for (int e = 0; e < E; e++) out[e] = 0.0f;
    }
}

/* --------------------------------------------------------- query pass */

/* qr = the key's transform of q (Hadamard or qjl projection) * scale * log2(e). */
template <int E>
__global__ void __launch_bounds__(32) query_kernel(const kvqc_params *kp, int dtype, const void *q,
                                                   float scale, float *qr) {
    __shared__ float qs[32 * E];
    const int lane = threadIdx.x, D = 32 * E;
    size_t row = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
    float v[E];
    kvqc_load_row<E>(q, dtype, row, lane, v);
    const float s = scale * LOG2E;
    if (kp->kind == KVQC_QJL) {
#pragma unroll
        for (int e = 0; e < E; e++) qs[lane + 32 * e] = v[e];
        __syncwarp();
        for (int e = 0; e < E; e++) {
            const float *srow = kp->proj + (size_t)(lane + 32 * e) * D;
            float z = 0.0f;
            for (int i = 0; i < D; i++) z += srow[i] * qs[i];
            qr[row * D + lane + 32 * e] = z * s;
        }
        return;
    }
    if (kp->rotate) {
        kvqc_apply_signs<E>(v, kp->sign_bits, lane);
        kvqc_fwht<E>(v, lane);
#pragma unroll
        for (int e = 0; e < E; e++) v[e] *= kp->had_scale;
    }
#pragma unroll
    for (int e = 0; e < E; e++) qr[row * D + lane + 32 * e] = v[e] * s;
}

/* --------------------------------------------------------- general kernel */

template <int E>
__global__ void __launch_bounds__(ATT_WARPS * 32) attend_simt_kernel(kvqc_attn_args a) {
    __shared__ float s_cen[2][256], s_cen2[2][16];
    __shared__ float s_part[ATT_WARPS][GMAX][32 * E + 2];
    const int D = 32 * E;
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        s_cen[0][i] = a.kp->cen[i];
        s_cen[1][i] = a.vp->cen[i];
    }
    if (threadIdx.x < 16) {
        s_cen2[0][threadIdx.x] = a.kp->cen2[threadIdx.x];
        s_cen2[1][threadIdx.x] = a.vp->cen2[threadIdx.x];
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int G = a.group;
    const int len = a.seq_lens[b];
    const int t0 = split * a.chunk;
    const int t1 = min(len, t0 + a.chunk);
    float q[GMAX][E], acc[GMAX][E], m[GMAX], l[GMAX];
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) {
            acc[g][e] = 0.0f;
            q[g][e] = g < G ? a.qr[((size_t)b * a.n_q_heads + h * G + g) * D + lane + 32 * e] : 0.0f;
        }
    }
    const size_t seq_base = ((size_t)b * a.n_kv_heads + h) * (size_t)a.capacity;
    for (int t = t0 + warp; t < t1; t += ATT_WARPS) {
        float k[E], v[E];
        decode_vec<E>(a.kf, s_cen[0], s_cen2[0], a.k_codes + (seq_base + t) * a.kf.code_size, lane, true, k);
        decode_vec<E>(a.vf, s_cen[1], s_cen2[1], a.v_codes + (seq_base + t) * a.vf.code_size, lane, false, v);
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g >= G) break;
            float sdot = 0.0f;
#pragma unroll
            for (int e = 0; e < E; e++) sdot += q[g][e] * k[e];
            sdot = kvqc_warp_sum(sdot);
            float mn = fmaxf(m[g], sdot);
            float alpha = exp2f(m[g] - mn), p = exp2f(sdot - mn);
            l[g] = l[g] * alpha + p;
#pragma unroll
            for (int e = 0; e < E; e++) acc[g][e] = acc[g][e] * alpha + p * v[e];
            m[g] = mn;
        }
    }
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g >= G) break;
#pragma unroll
        for (int e = 0; e < E; e++) s_part[warp][g][lane + 32 * e] = acc[g][e];
        if (lane == 0) {
            s_part[warp][g][D] = m[g];
            s_part[warp][g][D + 1] = l[g];
        }
    }
    __syncthreads();
    kvqc_merge_warps(&s_part[0][0][0], ATT_WARPS, GMAX * (D + 2), D + 2, G, D, a, b, h, split);
}

/* ---------------------------------------------------------- merge pass */

#define COMBINE_THREADS 128

/* One block per (sequence, query head): the splits' maxima in parallel, then thread i
 * sums coordinate i over the splits (coalesced), then one warp rotates back. */
template <int E>
__global__ void __launch_bounds__(COMBINE_THREADS) combine_kernel(const kvqc_params *vp,
                                                                  const float *partial, int n_split,
                                                                  const int32_t *seq_lens, int chunk,
                                                                  int n_q_heads, float *out) {
    __shared__ float s_red[COMBINE_THREADS / 32];
    __shared__ float s_out[32 * E];
    const int D = 32 * E, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int hq = blockIdx.x, b = blockIdx.y;
    size_t row = (size_t)b * n_q_heads + hq;
    const float *p = partial + row * n_split * (D + 2);
    int used = (seq_lens[b] + chunk - 1) / chunk;
    if (used > n_split) used = n_split;
    float M = -INFINITY;
    for (int s = tid; s < used; s += COMBINE_THREADS) M = fmaxf(M, p[s * (D + 2) + D]);
    M = kvqc_warp_max(M);
    if (lane == 0) s_red[warp] = M;
    __syncthreads();
    M = s_red[0];
    for (int w = 1; w < COMBINE_THREADS / 32; w++) M = fmaxf(M, s_red[w]);
    for (int i = tid; i < D; i += COMBINE_THREADS) {
        float acc = 0.0f, L = 0.0f;
        if (M != -INFINITY)
            for (int s = 0; s < used; s++) {
                float ms = p[s * (D + 2) + D];
                if (ms == -INFINITY) continue;
                float w = exp2f(ms - M);
                L += p[s * (D + 2) + D + 1] * w;
                acc += p[s * (D + 2) + i] * w;
            }
        s_out[i] = L > 0.0f ? acc / L : 0.0f;
    }
    __syncthreads();
    if (warp != 0) return;
    float v[E];
#pragma unroll
    for (int e = 0; e < E; e++) v[e] = s_out[lane + 32 * e];
    if (vp->rotate) {
        /* Pi^T y: normalised transform (its own inverse), then the signs */
        kvqc_fwht<E>(v, lane);
#pragma unroll
        for (int e = 0; e < E; e++) v[e] *= vp->had_scale;
        kvqc_apply_signs<E>(v, vp->sign_bits, lane);
    }
#pragma unroll
    for (int e = 0; e < E; e++) out[row * D + lane + 32 * e] = v[e];
}

/* ---------------------------------------------------------- host side */

static int use_mma(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                   const kvq_cuda_attn_desc *d) {
    return d->head_dim == 128 && !(d->flags & KVQ_CUDA_ATTN_GENERIC) && d->capacity % 16 == 0 &&
           kvqc_mma_supports(&kq->p, &vq->p, (int)(d->n_q_heads / d->n_kv_heads));
}

/* Split the context so the grid fills whole waves of resident blocks: the smallest
 * split count whose last wave is at least 90% full (else the fullest). Chunks are
 * multiples of KVQC_CHUNK_ALIGN tokens. */
static void plan(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                 const kvq_cuda_attn_desc *d, uint32_t *n_split, uint32_t *chunk) {
    size_t max_len = d->max_len ? d->max_len : 1;
    size_t base = (size_t)d->batch * d->n_kv_heads;
    int per_sm = 1;
    if (use_mma(kq, vq, d)) {
        per_sm = kvqc_mma_blocks_per_sm(&kq->p, &vq->p);
    } else {
        void (*fn)(kvqc_attn_args) = d->head_dim == 64 ? attend_simt_kernel<2>
                                     : d->head_dim == 128 ? attend_simt_kernel<4>
                                                          : attend_simt_kernel<8>;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, ATT_WARPS * 32, 0) != cudaSuccess) {
            cudaGetLastError();
            per_sm = 1;
        }
        if (per_sm < 1) per_sm = 1;
    }
    size_t slots = (size_t)kq->n_sm * per_sm;
    size_t max_split = (max_len + KVQC_CHUNK_ALIGN - 1) / KVQC_CHUNK_ALIGN;
    size_t limit = 4 * ((slots + base - 1) / base) + 1;
    if (limit > max_split) limit = max_split;
    double best_eff = -1.0;
    size_t best_c = max_split * KVQC_CHUNK_ALIGN;
    for (size_t s = 1; s <= limit; s++) {
        size_t c = (max_len + s - 1) / s;
        c = (c + KVQC_CHUNK_ALIGN - 1) / KVQC_CHUNK_ALIGN * KVQC_CHUNK_ALIGN;
        size_t ns = (max_len + c - 1) / c, ctas = base * ns;
        size_t waves = (ctas + slots - 1) / slots;
        double eff = (double)ctas / (double)(waves * slots);
        if (eff > best_eff + 1e-9) {
            best_eff = eff;
            best_c = c;
        }
        if (eff >= 0.9) break;
    }
    *chunk = (uint32_t)best_c;
    *n_split = (uint32_t)((max_len + best_c - 1) / best_c);
}

static kvq_status check_desc(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                             const kvq_cuda_attn_desc *d) {
    if (!kq || !vq || !d) return KVQ_ERR_INVALID_ARG;
    if (d->batch == 0 || d->n_q_heads == 0 || d->n_kv_heads == 0 || d->capacity == 0)
        return KVQ_ERR_INVALID_ARG;
    if (d->n_q_heads % d->n_kv_heads != 0 || d->max_len > d->capacity) return KVQ_ERR_INVALID_ARG;
    if (d->q_dtype != KVQ_CUDA_F32 && d->q_dtype != KVQ_CUDA_F16 && d->q_dtype != KVQ_CUDA_BF16)
        return KVQ_ERR_INVALID_ARG;
    if (kq->cfg.dim != d->head_dim || vq->cfg.dim != d->head_dim) return KVQ_ERR_MISMATCH;
    if (d->n_q_heads / d->n_kv_heads > GMAX) return KVQ_ERR_UNSUPPORTED;
    if (d->head_dim != 64 && d->head_dim != 128 && d->head_dim != 256) return KVQ_ERR_UNSUPPORTED;
    if (kq->p.kind == KVQC_QJL && kq->p.m != (int)d->head_dim) return KVQ_ERR_UNSUPPORTED;
    if (vq->p.kind == KVQC_QJL) return KVQ_ERR_UNSUPPORTED;
    return KVQ_OK;
}

static size_t ws_floats(const kvq_cuda_attn_desc *d, uint32_t n_split) {
    size_t rows = (size_t)d->batch * d->n_q_heads;
    return rows * d->head_dim + rows * n_split * (d->head_dim + 2);
}

extern "C" KVQ_API kvq_status kvq_cuda_attend_workspace(const kvq_cuda_quantizer *key,
                                                        const kvq_cuda_quantizer *value,
                                                        const kvq_cuda_attn_desc *desc,
                                                        size_t *bytes) {
    if (!bytes) return KVQ_ERR_INVALID_ARG;
    kvq_status st = check_desc(key, value, desc);
    if (st != KVQ_OK) return st;
    uint32_t n_split, chunk;
    plan(key, value, desc, &n_split, &chunk);
    *bytes = ws_floats(desc, n_split) * sizeof(float);
    return KVQ_OK;
}

static kvqc_fmt fmt_of(const kvqc_params *p) {
    kvqc_fmt f;
    f.kind = p->kind;
    f.bits = p->bits;
    f.residuals = p->residuals;
    f.code_size = p->code_size;
    f.inv_sqrt_d = p->inv_sqrt_d;
    f.qjl_c0 = p->qjl_c0;
    return f;
}

template <int E>
static cudaError_t launch_all(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                              const kvq_cuda_attn_desc *d, kvqc_attn_args *a, const void *q,
                              float *out, cudaStream_t s) {
    dim3 rows(d->n_q_heads, d->batch);
    query_kernel<E><<<rows, 32, 0, s>>>(kq->p_dev, (int)d->q_dtype, q, d->scale, (float *)a->qr);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    dim3 grid(a->n_split, d->n_kv_heads, d->batch);
    if (E == 4 && use_mma(kq, vq, d) && ((uintptr_t)a->k_codes & 15u) == 0 &&
        ((uintptr_t)a->v_codes & 15u) == 0) {
        e = kvqc_launch_mma(&kq->p, &vq->p, a, grid, s);
    } else {
        attend_simt_kernel<E><<<grid, ATT_WARPS * 32, 0, s>>>(*a);
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) return e;
    combine_kernel<E><<<rows, COMBINE_THREADS, 0, s>>>(vq->p_dev, a->partial, a->n_split, a->seq_lens, a->chunk,
                                          (int)d->n_q_heads, out);
    return cudaGetLastError();
}

extern "C" KVQ_API kvq_status kvq_cuda_attend(const kvq_cuda_quantizer *key,
                                              const kvq_cuda_quantizer *value,
                                              const kvq_cuda_attn_desc *desc, const void *q_dev,
                                              const uint8_t *k_codes_dev,
                                              const uint8_t *v_codes_dev,
                                              const int32_t *seq_lens_dev, void *workspace_dev,
                                              size_t workspace_bytes, float *out_dev,
                                              void *stream) {
    kvq_status st = check_desc(key, value, desc);
    if (st != KVQ_OK) return st;
    if (!q_dev || !k_codes_dev || !v_codes_dev || !seq_lens_dev || !workspace_dev || !out_dev)
        return KVQ_ERR_INVALID_ARG;
    uint32_t n_split, chunk;
    plan(key, value, desc, &n_split, &chunk);
    size_t rows = (size_t)desc->batch * desc->n_q_heads;
    if (workspace_bytes < ws_floats(desc, n_split) * sizeof(float)) return KVQ_ERR_CAPACITY;
    kvqc_attn_args a;
    memset(&a, 0, sizeof a);
    a.kp = key->p_dev;
    a.vp = value->p_dev;
    a.kf = fmt_of(&key->p);
    a.vf = fmt_of(&value->p);
    a.k_codes = k_codes_dev;
    a.v_codes = v_codes_dev;
    a.seq_lens = seq_lens_dev;
    float *ws = (float *)workspace_dev;
    a.qr = ws;
    a.partial = ws + rows * desc->head_dim;
    a.n_q_heads = (int)desc->n_q_heads;
    a.n_kv_heads = (int)desc->n_kv_heads;
    a.group = (int)(desc->n_q_heads / desc->n_kv_heads);
    a.capacity = (int)desc->capacity;
    a.chunk = (int)chunk;
    a.n_split = (int)n_split;
    cudaStream_t s = (cudaStream_t)stream;
    cudaError_t e;
    switch (desc->head_dim) {
    case 64: e = launch_all<2>(key, value, desc, &a, q_dev, out_dev, s); break;
    case 128: e = launch_all<4>(key, value, desc, &a, q_dev, out_dev, s); break;
    default: e = launch_all<8>(key, value, desc, &a, q_dev, out_dev, s); break;
    }
    return kvqc_status(e);
}
