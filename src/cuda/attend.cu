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
#define KVQC_CHUNK_MIN 128
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
    const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z; /* b: query row */
    const int seq = b / a.q_per_seq;
    const int G = a.group;
    const int len = a.seq_lens[seq];
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
    for (int t = t0 + warp; t < t1; t += ATT_WARPS) {
        float k[E], v[E];
        const size_t row = kvqc_row(a, seq, h, t);
        decode_vec<E>(a.kf, s_cen[0], s_cen2[0], a.k_codes + row * a.kf.code_size, lane, true, k);
        decode_vec<E>(a.vf, s_cen[1], s_cen2[1], a.v_codes + row * a.vf.code_size, lane, false, v);
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
/* 1: every thread computes every split's weight for its own coordinate (the former merge) */
#ifndef KVQ_COMBINE_PER_THREAD
#define KVQ_COMBINE_PER_THREAD 0
#endif

/* One block per (query row, query head): the splits' maxima in parallel, then thread i
 * sums coordinate i over the splits (coalesced), then one warp rotates back. Slots past
 * n_split (prefill: the exact new tokens) always count. */
template <int E>
__global__ void __launch_bounds__(COMBINE_THREADS) combine_kernel(const kvqc_params *vp,
                                                                  const float *partial, int n_split,
                                                                  int n_slots, const int32_t *seq_lens,
                                                                  int q_per_seq, int chunk,
                                                                  int n_q_heads, float *out) {
    __shared__ float s_red[COMBINE_THREADS / 32];
    __shared__ float s_out[32 * E];
#if !KVQ_COMBINE_PER_THREAD
    __shared__ __align__(16) float s_w[COMBINE_THREADS];
#endif
    const int D = 32 * E, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int hq = blockIdx.x, b = blockIdx.y;
    size_t row = (size_t)b * n_q_heads + hq;
    const float *p = partial + row * n_slots * (D + 2);
    int used = (seq_lens[b / q_per_seq] + chunk - 1) / chunk;
    if (used > n_split) used = n_split;
    if (used < 0) used = 0;
    const int n_used = used + (n_slots - n_split);
    /* slot of the u-th used partial */
#define SLOT(u) ((u) < used ? (u) : n_split + (u) - used)
#if KVQ_COMBINE_PER_THREAD
    float M = -INFINITY;
    for (int u = tid; u < n_used; u += COMBINE_THREADS) M = fmaxf(M, p[SLOT(u) * (D + 2) + D]);
    M = kvqc_warp_max(M);
    if (lane == 0) s_red[warp] = M;
    __syncthreads();
    M = s_red[0];
    for (int w = 1; w < COMBINE_THREADS / 32; w++) M = fmaxf(M, s_red[w]);
    for (int i = tid; i < D; i += COMBINE_THREADS) {
        float acc = 0.0f, L = 0.0f;
        /* branch-free so the loads of several splits are in flight at once; an empty
         * split stores acc = sum = 0 and max = -inf (weight exp2(-inf) = 0) */
        if (M != -INFINITY) {
#pragma unroll 4
            for (int u = 0; u < n_used; u++) {
                const float *ps = p + SLOT(u) * (D + 2);
                float w = exp2f(ps[D] - M);
                L += ps[D + 1] * w;
                acc += ps[i] * w;
            }
        }
        s_out[i] = L > 0.0f ? acc / L : 0.0f;
    }
#else
    /* Thread u holds split u's max and sum (the first COMBINE_THREADS splits stay in
     * registers); its weight exp2(max - M) goes to shared memory once, and every thread
     * sums its coordinates over the splits in order with U loads in flight (decode: the
     * splits are consecutive slots, read at fixed offsets from one pointer). The sum of
     * weights is a block reduction. An empty split stores acc = sum = 0 and max = -inf
     * (weight exp2(-inf) = 0). */
    constexpr int NI = (32 * E + COMBINE_THREADS - 1) / COMBINE_THREADS, U = 32;
    float m_own = -INFINITY, l_own = 0.0f;
    if (tid < n_used) {
        const float *ps = p + SLOT(tid) * (D + 2);
        m_own = ps[D];
        l_own = ps[D + 1];
    }
    float M = m_own;
    for (int u = tid + COMBINE_THREADS; u < n_used; u += COMBINE_THREADS) M = fmaxf(M, p[SLOT(u) * (D + 2) + D]);
    M = kvqc_warp_max(M);
    if (lane == 0) s_red[warp] = M;
    __syncthreads();
    M = s_red[0];
    for (int w = 1; w < COMBINE_THREADS / 32; w++) M = fmaxf(M, s_red[w]);
    float acc[NI], L = 0.0f;
#pragma unroll
    for (int j = 0; j < NI; j++) acc[j] = 0.0f;
    const bool direct = n_slots == n_split; /* decode: slot u is split u */
    if (M != -INFINITY) { /* the same in every thread: the barriers below are uniform */
        for (int u0 = 0; u0 < n_used; u0 += COMBINE_THREADS) {
            const int nu = min(COMBINE_THREADS, n_used - u0);
            __syncthreads();
            float w = 0.0f; /* past nu: 0, times x = 0 below */
            if (tid < nu) w = kvqc_slot_weight(u0 > 0 ? p + SLOT(u0 + tid) * (D + 2) : NULL, D, m_own, l_own, M, L);
            s_w[tid] = w;
            __syncthreads();
            for (int k0 = 0; k0 < nu; k0 += U) {
#pragma unroll
                for (int j = 0; j < NI; j++) {
                    const int i = tid + j * COMBINE_THREADS;
                    if (NI * COMBINE_THREADS > D && i >= D) break;
                    float x[U];
                    if (direct && k0 + U <= nu) {
                        const float *pk = p + (size_t)(u0 + k0) * (D + 2) + i;
#pragma unroll
                        for (int k = 0; k < U; k++) x[k] = pk[k * (D + 2)];
                    } else {
#pragma unroll
                        for (int k = 0; k < U; k++)
                            x[k] = k0 + k < nu ? p[SLOT(u0 + k0 + k) * (D + 2) + i] : 0.0f;
                    }
                    const float4 *w4 = (const float4 *)(s_w + k0);
#pragma unroll
                    for (int k = 0; k < U; k += 4) {
                        const float4 w = w4[k / 4];
                        acc[j] += x[k] * w.x;
                        acc[j] += x[k + 1] * w.y;
                        acc[j] += x[k + 2] * w.z;
                        acc[j] += x[k + 3] * w.w;
                    }
                }
            }
        }
    }
    L = kvqc_warp_sum(L);
    __syncthreads();
    if (lane == 0) s_red[warp] = L;
    __syncthreads();
    L = s_red[0];
    for (int w = 1; w < COMBINE_THREADS / 32; w++) L += s_red[w];
#pragma unroll
    for (int j = 0; j < NI; j++) {
        const int i = tid + j * COMBINE_THREADS;
        if (i < D) s_out[i] = L > 0.0f ? acc[j] / L : 0.0f;
    }
#endif
#undef SLOT
    __syncthreads();
    if (warp != 0) return;
    float v[E];
#pragma unroll
    for (int e = 0; e < E; e++) v[e] = s_out[lane + 32 * e];
    kvqc_unrotate_store<E>(vp, v, lane, out + row * D);
}

/* ------------------------------------------------- prefill: exact new tokens */

/* One warp per (query row z, query head): query i of sequence b attends to the new tokens
 * 0..i of its sequence, given exactly; the weighted sum of values is moved to the value
 * quantizer's rotated domain (the transform is linear, so once at the end) and stored as
 * partial slot `slot`, which the merge pass adds to the compressed context's splits. */
template <int E>
__global__ void __launch_bounds__(32) exact_kernel(const kvqc_params *vp, int dtype, const void *q,
                                                   const void *k_new, const void *v_new, int n_new,
                                                   int n_q_heads, int n_kv_heads, int group, float scale,
                                                   float *partial, int n_slots, int slot) {
    const int lane = threadIdx.x, D = 32 * E;
    const int hq = blockIdx.x, z = blockIdx.y;
    const int b = z / n_new, i = z % n_new, h = hq / group;
    size_t row = (size_t)z * n_q_heads + hq;
    float qv[E], acc[E];
    kvqc_load_row<E>(q, dtype, row, lane, qv);
    const float s = scale * LOG2E;
#pragma unroll
    for (int e = 0; e < E; e++) {
        qv[e] *= s;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j <= i; j++) {
        size_t kv_row = ((size_t)b * n_new + j) * n_kv_heads + h;
        float k[E], v[E];
        kvqc_load_row<E>(k_new, dtype, kv_row, lane, k);
        kvqc_load_row<E>(v_new, dtype, kv_row, lane, v);
        float sdot = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) sdot += qv[e] * k[e];
        sdot = kvqc_warp_sum(sdot);
        float mn = fmaxf(m, sdot);
        float alpha = exp2f(m - mn), p = exp2f(sdot - mn);
        l = l * alpha + p;
#pragma unroll
        for (int e = 0; e < E; e++) acc[e] = acc[e] * alpha + p * v[e];
        m = mn;
    }
    if (vp->rotate) {
        kvqc_apply_signs<E>(acc, vp->sign_bits, lane);
        kvqc_fwht<E>(acc, lane);
#pragma unroll
        for (int e = 0; e < E; e++) acc[e] *= vp->had_scale;
    }
    float *dst = partial + (row * n_slots + slot) * (D + 2);
#pragma unroll
    for (int e = 0; e < E; e++) dst[lane + 32 * e] = acc[e];
    if (lane == 0) {
        dst[D] = m;
        dst[D + 1] = l;
    }
}

cudaError_t kvqc_launch_exact(const kvqc_params *vp, int D, int dtype, const void *q, const void *k_new,
                              const void *v_new, int n_new, int n_q_heads, int n_kv_heads, int group,
                              float scale, float *partial, int n_slots, int slot, unsigned n_rows,
                              cudaStream_t s) {
    dim3 rows((unsigned)n_q_heads, n_rows);
    if (D == 64)
        exact_kernel<2><<<rows, 32, 0, s>>>(vp, dtype, q, k_new, v_new, n_new, n_q_heads, n_kv_heads, group, scale,
                                            partial, n_slots, slot);
    else if (D == 128)
        exact_kernel<4><<<rows, 32, 0, s>>>(vp, dtype, q, k_new, v_new, n_new, n_q_heads, n_kv_heads, group, scale,
                                            partial, n_slots, slot);
    else if (D == 256)
        exact_kernel<8><<<rows, 32, 0, s>>>(vp, dtype, q, k_new, v_new, n_new, n_q_heads, n_kv_heads, group, scale,
                                            partial, n_slots, slot);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

/* ---------------------------------------------------------- host side */

/* What one call attends over: the page pool, its table (NULL: contiguous, one page per
 * sequence of page_size = capacity tokens) and the number of query rows per sequence. */
typedef struct call_shape {
    const uint8_t *k_codes, *v_codes;
    const int32_t *page_table;
    uint32_t page_size, max_pages;
    uint32_t q_per_seq; /* 1: decode; n_new: prefill */
    int prefill;
} call_shape;

static int use_mma(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                   const kvq_cuda_attn_desc *d, const call_shape *c) {
    return d->head_dim == 128 && !(d->flags & KVQ_CUDA_ATTN_GENERIC) && c->page_size % 16 == 0 &&
           kvqc_mma_supports(&kq->p, &vq->p, (int)(d->n_q_heads / d->n_kv_heads));
}

static int use_base(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                    const kvq_cuda_attn_desc *d, const call_shape *c) {
    return d->head_dim == 128 && !(d->flags & KVQ_CUDA_ATTN_GENERIC) && c->page_size % 16 == 0 &&
           kvqc_base_supports(&kq->p, &vq->p, (int)(d->n_q_heads / d->n_kv_heads));
}

/* Split the context so the grid fills whole waves of resident blocks: the smallest
 * split count whose last wave is at least 90% full (else the fullest). Chunks are
 * multiples of KVQC_CHUNK_ALIGN tokens. */
static void plan(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                 const kvq_cuda_attn_desc *d, const call_shape *c, uint32_t *n_split, uint32_t *chunk) {
    size_t max_len = d->max_len ? d->max_len : 1;
    size_t base = (size_t)d->batch * c->q_per_seq * d->n_kv_heads;
    int per_sm = 1;
    if (use_mma(kq, vq, d, c)) {
        per_sm = kvqc_mma_blocks_per_sm(&kq->p, &vq->p);
    } else if (use_base(kq, vq, d, c)) {
        per_sm = kvqc_base_blocks_per_sm(&kq->p, &vq->p);
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
    /* the integer tensor-core kernel bounds its chunk (exact int32 sums) */
    size_t min_split = 1;
    if (use_mma(kq, vq, d, c)) {
        size_t mc = (size_t)kvqc_mma_max_chunk(&kq->p, &vq->p);
        if (mc) min_split = (max_len + mc - 1) / mc;
    }
    /* chunks of at least KVQC_CHUNK_MIN tokens: below that, a block's fixed costs (query
     * fragments, first tile latency, its share of the merge) outweigh its work */
    size_t max_split = (max_len + KVQC_CHUNK_MIN - 1) / KVQC_CHUNK_MIN;
    size_t limit = 4 * ((slots + base - 1) / base) + 1;
    if (limit > max_split) limit = max_split;
    if (limit < min_split) limit = min_split;
    double best_eff = -1.0;
    size_t best_c = (max_len + KVQC_CHUNK_ALIGN - 1) / KVQC_CHUNK_ALIGN * KVQC_CHUNK_ALIGN;
    for (size_t s = min_split; s <= limit; s++) {
        size_t cc = (max_len + s - 1) / s;
        cc = (cc + KVQC_CHUNK_ALIGN - 1) / KVQC_CHUNK_ALIGN * KVQC_CHUNK_ALIGN;
        size_t ns = (max_len + cc - 1) / cc, ctas = base * ns;
        size_t waves = (ctas + slots - 1) / slots;
        double eff = (double)ctas / (double)(waves * slots);
        if (eff > best_eff + 1e-9) {
            best_eff = eff;
            best_c = cc;
        }
        if (eff >= 0.9) break;
    }
    *chunk = (uint32_t)best_c;
    *n_split = (uint32_t)((max_len + best_c - 1) / best_c);
}

/* capacity: tokens a sequence can hold in this layout (contiguous: desc->capacity). */
static kvq_status check_desc(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                             const kvq_cuda_attn_desc *d, uint64_t capacity) {
    if (!kq || !vq || !d) return KVQ_ERR_INVALID_ARG;
    if (d->batch == 0 || d->n_q_heads == 0 || d->n_kv_heads == 0 || capacity == 0)
        return KVQ_ERR_INVALID_ARG;
    if (d->n_q_heads % d->n_kv_heads != 0 || d->max_len > capacity) return KVQ_ERR_INVALID_ARG;
    if (d->q_dtype != KVQ_CUDA_F32 && d->q_dtype != KVQ_CUDA_F16 && d->q_dtype != KVQ_CUDA_BF16)
        return KVQ_ERR_INVALID_ARG;
    if (kq->cfg.dim != d->head_dim || vq->cfg.dim != d->head_dim) return KVQ_ERR_MISMATCH;
    if (d->n_q_heads / d->n_kv_heads > GMAX) return KVQ_ERR_UNSUPPORTED;
    if (d->head_dim != 64 && d->head_dim != 128 && d->head_dim != 256) return KVQ_ERR_UNSUPPORTED;
    if (kq->p.kind == KVQC_QJL && kq->p.m != (int)d->head_dim) return KVQ_ERR_UNSUPPORTED;
    if (vq->p.kind == KVQC_QJL) return KVQ_ERR_UNSUPPORTED;
    if (d->n_q_heads > 65535 || d->n_kv_heads > 65535) return KVQ_ERR_UNSUPPORTED;
    return KVQ_OK;
}

static kvq_status check_pages(const kvq_cuda_attn_desc *d, const kvq_cuda_pages *pg,
                              uint64_t *capacity) {
    if (!pg || pg->page_size == 0 || pg->max_pages == 0) return KVQ_ERR_INVALID_ARG;
    if (!pg->page_table_dev && pg->max_pages != 1) return KVQ_ERR_INVALID_ARG;
    *capacity = (uint64_t)pg->page_size * pg->max_pages;
    (void)d;
    return KVQ_OK;
}

/* Workspace in floats, or 0 when it would overflow. */
static size_t ws_floats(const kvq_cuda_attn_desc *d, uint32_t q_per_seq, uint32_t n_slots) {
    uint64_t rows = (uint64_t)d->batch * q_per_seq * d->n_q_heads;
    uint64_t n = rows * d->head_dim + rows * n_slots * (d->head_dim + 2);
    if (rows / d->n_q_heads / q_per_seq != d->batch || n > ((uint64_t)1 << 60)) return 0;
    return (size_t)n;
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

typedef struct extra_in {
    const void *k_new, *v_new;
} extra_in;

template <int E>
static cudaError_t launch_all(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                              const kvq_cuda_attn_desc *d, const call_shape *c, kvqc_attn_args *a,
                              const void *q, const extra_in *x, float *out, cudaStream_t s) {
    const uint32_t n_rows = d->batch * c->q_per_seq;
    dim3 rows(d->n_q_heads, n_rows);
    dim3 grid(a->n_split, d->n_kv_heads, n_rows);
    const int aligned = ((uintptr_t)a->k_codes & 15u) == 0 && ((uintptr_t)a->v_codes & 15u) == 0;
    /* the tensor-core kernels transform the query themselves (one launch less) */
    cudaError_t e;
    if (E == 4 && aligned && use_mma(kq, vq, d, c)) {
        e = kvqc_launch_mma(&kq->p, &vq->p, a, grid, s);
    } else if (E == 4 && aligned && use_base(kq, vq, d, c)) {
        e = kvqc_launch_base(&kq->p, &vq->p, a, grid, s);
    } else {
        query_kernel<E><<<rows, 32, 0, s>>>(kq->p_dev, (int)d->q_dtype, q, d->scale, (float *)a->qr);
        e = cudaGetLastError();
        if (e != cudaSuccess) return e;
        attend_simt_kernel<E><<<grid, ATT_WARPS * 32, 0, s>>>(*a);
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) return e;
    if (c->prefill) {
        e = kvqc_launch_exact(vq->p_dev, 32 * E, (int)d->q_dtype, q, x->k_new, x->v_new, (int)c->q_per_seq,
                              (int)d->n_q_heads, (int)d->n_kv_heads, a->group, d->scale, a->partial, a->n_slots,
                              a->n_split, n_rows, s);
        if (e != cudaSuccess) return e;
    }
    combine_kernel<E><<<rows, COMBINE_THREADS, 0, s>>>(vq->p_dev, a->partial, a->n_split, a->n_slots,
                                                       a->seq_lens, (int)c->q_per_seq, a->chunk,
                                                       (int)d->n_q_heads, out);
    return cudaGetLastError();
}

static kvq_status workspace_of(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                               const kvq_cuda_attn_desc *d, const call_shape *c, size_t *bytes) {
    uint32_t n_split, chunk;
    plan(kq, vq, d, c, &n_split, &chunk);
    size_t n = ws_floats(d, c->q_per_seq, n_split + (c->prefill ? 1 : 0));
    if (n == 0 || n > SIZE_MAX / sizeof(float)) return KVQ_ERR_OVERFLOW;
    *bytes = n * sizeof(float);
    return KVQ_OK;
}

static kvq_status run_call(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                           const kvq_cuda_attn_desc *d, const call_shape *c, const void *q,
                           const extra_in *x, const int32_t *seq_lens, void *ws, size_t ws_bytes,
                           float *out, void *stream) {
    if (!q || !c->k_codes || !c->v_codes || !seq_lens || !ws || !out) return KVQ_ERR_INVALID_ARG;
    if ((uint64_t)d->batch * c->q_per_seq > 65535) return KVQ_ERR_UNSUPPORTED;
    uint32_t n_split, chunk;
    plan(kq, vq, d, c, &n_split, &chunk);
    uint32_t n_slots = n_split + (c->prefill ? 1 : 0);
    if (n_split > 65535) return KVQ_ERR_UNSUPPORTED;
    size_t need = ws_floats(d, c->q_per_seq, n_slots);
    if (need == 0) return KVQ_ERR_OVERFLOW;
    if (ws_bytes / sizeof(float) < need) return KVQ_ERR_CAPACITY;
    size_t rows = (size_t)d->batch * c->q_per_seq * d->n_q_heads;
    kvqc_attn_args a;
    memset(&a, 0, sizeof a);
    a.kp = kq->p_dev;
    a.vp = vq->p_dev;
    a.kf = fmt_of(&kq->p);
    a.vf = fmt_of(&vq->p);
    a.k_codes = c->k_codes;
    a.v_codes = c->v_codes;
    a.seq_lens = seq_lens;
    a.page_table = c->page_table;
    float *wsf = (float *)ws;
    a.qr = wsf;
    a.partial = wsf + rows * d->head_dim;
    a.n_q_heads = (int)d->n_q_heads;
    a.n_kv_heads = (int)d->n_kv_heads;
    a.group = (int)(d->n_q_heads / d->n_kv_heads);
    a.page_size = (int)c->page_size;
    a.max_pages = (int)c->max_pages;
    a.chunk = (int)chunk;
    a.n_split = (int)n_split;
    a.n_slots = (int)n_slots;
    a.q_per_seq = (int)c->q_per_seq;
    a.q = q;
    a.q_dtype = (int)d->q_dtype;
    a.q_scale = d->scale * LOG2E;
    cudaStream_t s = (cudaStream_t)stream;
    cudaError_t e;
    switch (d->head_dim) {
    case 64: e = launch_all<2>(kq, vq, d, c, &a, q, x, out, s); break;
    case 128: e = launch_all<4>(kq, vq, d, c, &a, q, x, out, s); break;
    default: e = launch_all<8>(kq, vq, d, c, &a, q, x, out, s); break;
    }
    return kvqc_status(e);
}

static kvq_status shape_of(const kvq_cuda_quantizer *kq, const kvq_cuda_quantizer *vq,
                           const kvq_cuda_attn_desc *d, const kvq_cuda_pages *pg, uint32_t n_new,
                           call_shape *c) {
    uint64_t cap = 0;
    if (!d) return KVQ_ERR_INVALID_ARG;
    if (pg) {
        kvq_status st = check_pages(d, pg, &cap);
        if (st != KVQ_OK) return st;
    } else {
        cap = d->capacity;
    }
    kvq_status st = check_desc(kq, vq, d, cap);
    if (st != KVQ_OK) return st;
    if (pg && (pg->page_size > (uint32_t)INT32_MAX || pg->max_pages > (uint32_t)INT32_MAX))
        return KVQ_ERR_UNSUPPORTED;
    memset(c, 0, sizeof *c);
    c->page_table = pg ? pg->page_table_dev : NULL;
    c->page_size = pg ? pg->page_size : d->capacity;
    c->max_pages = pg ? pg->max_pages : 1;
    c->k_codes = pg ? pg->k_pages_dev : NULL;
    c->v_codes = pg ? pg->v_pages_dev : NULL;
    c->q_per_seq = n_new ? n_new : 1;
    c->prefill = n_new > 0;
    return KVQ_OK;
}

extern "C" KVQ_API kvq_status kvq_cuda_attend_workspace(const kvq_cuda_quantizer *key,
                                                        const kvq_cuda_quantizer *value,
                                                        const kvq_cuda_attn_desc *desc,
                                                        size_t *bytes) {
    if (!bytes) return KVQ_ERR_INVALID_ARG;
    call_shape c;
    kvq_status st = shape_of(key, value, desc, NULL, 0, &c);
    if (st != KVQ_OK) return st;
    return workspace_of(key, value, desc, &c, bytes);
}

extern "C" KVQ_API kvq_status kvq_cuda_attend(const kvq_cuda_quantizer *key,
                                              const kvq_cuda_quantizer *value,
                                              const kvq_cuda_attn_desc *desc, const void *q_dev,
                                              const uint8_t *k_codes_dev,
                                              const uint8_t *v_codes_dev,
                                              const int32_t *seq_lens_dev, void *workspace_dev,
                                              size_t workspace_bytes, float *out_dev,
                                              void *stream) {
    call_shape c;
    kvq_status st = shape_of(key, value, desc, NULL, 0, &c);
    if (st != KVQ_OK) return st;
    c.k_codes = k_codes_dev;
    c.v_codes = v_codes_dev;
    return run_call(key, value, desc, &c, q_dev, NULL, seq_lens_dev, workspace_dev, workspace_bytes,
                    out_dev, stream);
}

extern "C" KVQ_API kvq_status kvq_cuda_attend_paged_workspace(const kvq_cuda_quantizer *key,
                                                              const kvq_cuda_quantizer *value,
                                                              const kvq_cuda_attn_desc *desc,
                                                              const kvq_cuda_pages *pages,
                                                              uint32_t n_new, size_t *bytes) {
    if (!bytes) return KVQ_ERR_INVALID_ARG;
    call_shape c;
    kvq_status st = shape_of(key, value, desc, pages, n_new, &c);
    if (st != KVQ_OK) return st;
    return workspace_of(key, value, desc, &c, bytes);
}

extern "C" KVQ_API kvq_status kvq_cuda_attend_paged(const kvq_cuda_quantizer *key,
                                                    const kvq_cuda_quantizer *value,
                                                    const kvq_cuda_attn_desc *desc,
                                                    const kvq_cuda_pages *pages, const void *q_dev,
                                                    const int32_t *seq_lens_dev, void *workspace_dev,
                                                    size_t workspace_bytes, float *out_dev,
                                                    void *stream) {
    call_shape c;
    kvq_status st = shape_of(key, value, desc, pages, 0, &c);
    if (st != KVQ_OK) return st;
    return run_call(key, value, desc, &c, q_dev, NULL, seq_lens_dev, workspace_dev, workspace_bytes,
                    out_dev, stream);
}

extern "C" KVQ_API kvq_status kvq_cuda_prefill(const kvq_cuda_quantizer *key,
                                               const kvq_cuda_quantizer *value,
                                               const kvq_cuda_attn_desc *desc,
                                               const kvq_cuda_pages *pages, uint32_t n_new,
                                               const void *q_dev, const void *k_new_dev,
                                               const void *v_new_dev, const int32_t *seq_lens_dev,
                                               void *workspace_dev, size_t workspace_bytes,
                                               float *out_dev, void *stream) {
    if (n_new == 0 || !k_new_dev || !v_new_dev) return KVQ_ERR_INVALID_ARG;
    call_shape c;
    kvq_status st = shape_of(key, value, desc, pages, n_new, &c);
    if (st != KVQ_OK) return st;
    extra_in x = {k_new_dev, v_new_dev};
    return run_call(key, value, desc, &c, q_dev, &x, seq_lens_dev, workspace_dev, workspace_bytes,
                    out_dev, stream);
}
