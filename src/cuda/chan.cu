/*
 * chan.cu - channel keys on the GPU (the cache presets q4, q3, q2; cache/chan.c is the
 * CPU method, after KIVI, arXiv 2402.02750): each key channel's values over a chunk of
 * tokens share an fp16 minimum and step, with per-channel bits fixed from the first
 * chunk; values are any kvq_cuda_quantizer's turboquant_mse codes.
 *
 * Coding repeats the CPU's float operations one rounding at a time (__fadd_rn, __fmul_rn,
 * IEEE divisions, no FMA contraction) on the same rows the CPU codes from: the exact
 * tokens are held as fp16 here, and a chunk is coded from their q8_0 round trip (minus
 * the head's mean key beyond the probe tokens), which is what the CPU's q8_0 ring holds.
 * So the mean, the bits, the ranges (with the least-squares refinements of 1-2-bit
 * channels) and every code equal the CPU's. One block per (sequence, kv head), one thread
 * per channel; a warp is one q8_0 block of 32 channels.
 *
 * Attention: split-K over whole chunks plus one or two blocks per (sequence, kv head) for the
 * exact tokens (sinks and the uncoded tail); one merge pass. A coded chunk's score is
 * <q, mean + lo> + sum_j (q_j step_j) code_j: the weights q_j step_j once per chunk and
 * query head, then a lane per token reads its codes from the chunk's bit planes (staged
 * per warp in shared memory) and sums the weighted codes (up to 4 query heads, the
 * default CHAN_MMA=1: the plane bits times per-plane weights on the tensor cores,
 * chan_mma_step, and the values' product too, chan_values_mma).
 * Values are accumulated in their rotated domain and rotated back once in the merge, a
 * programmatic dependent launch.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.h"
#include "cuda/warp_math.cuh"

#define LOG2E 1.4426950408889634f
/* as cache/cache_internal.h: probe tokens (the mean key), refinement passes, their bits */
#define CHAN_PROBE 32
#define CHAN_REFINE 3
#define CHAN_REFINE_BITS 2
#define CHAN_GMAX 8
#define CHAN_WARPS 4
#ifndef CHAN_QT
/* 1 (default): the tensor-core scores build a chunk's B fragments from the query heads of
 * each channel held once a block (QT, chan_attend_kernel): 1.00-1.12x on q4 / q3 / q2 and
 * 1.18-1.27x on q4's 5-bit layers at batch 8-32 (H100, bench/cuda/h100-2026-12-05-qt.txt);
 * 0: through per-warp chunk weights, as before */
#define CHAN_QT 1
#endif
#ifndef CHAN_WAVES10
/* the split's target grid in tenths of a wave of resident blocks, and the most splits a
 * (sequence, KV head) takes (split_attn) */
#define CHAN_WAVES10 40
#endif
#ifndef CHAN_SPLIT_MAX
#define CHAN_SPLIT_MAX 64
#endif
#ifndef CHAN_SPLIT_MIN_CHUNKS
#define CHAN_SPLIT_MIN_CHUNKS 8
#endif
#ifndef CHAN_SV
/* 1 (default): where the plan has a split take more than one chunk and it fits more
 * blocks an SM, the QT kernel with one buffer of value codes a warp (QS, plan_attn);
 * 0: never; 2: wherever it fits (the tests' build that covers it on every case) */
#define CHAN_SV 1
#endif
#ifndef CHAN_MMA
/* 1 (default): up to 4 query heads per KV head score on the tensor cores (integer mma
 * over the bit planes, chan_mma_step; bench/cuda/chan_mma_layout.py models its
 * fragments): 1.29-1.88x the CUDA-core score loop on an H200 (q4 / q3 / q2, batch 1-32,
 * 4k-128k; bench/cuda/h200-2026-12-05-chanmma.txt); 0: the CUDA-core score loop only
 * (it serves 8 query heads per KV head either way) */
#define CHAN_MMA 1
#endif

struct kvq_cuda_chan {
    kvq_cache_config cfg;
    kvq_cuda_quantizer *vq;
    uint32_t D, C, W, n_sink, bits, R, exact_rows, head_bytes, key_block, vcs;
    int n_sm;
};

static __host__ __device__ __forceinline__ uint64_t round16(uint64_t n) { return (n + 15) & ~(uint64_t)15; }

/* ------------------------------------------------------------- device helpers */

/* The CPU's q8_0 round trip of one value; the warp holds one block of 32. */
__device__ __forceinline__ float q8_round_trip(float x) {
    float amax = kvqc_warp_max(fabsf(x));
    float d = __fdiv_rn(amax, 127.0f);
    float id = fabsf(d) >= FLT_MIN ? __fdiv_rn(1.0f, d) : 0.0f; /* as the CPU: 0 below the normal floats */
    float r = roundf(__fmul_rn(x, id));
    int q = (int)(int8_t)(int)r;
    return __fmul_rn((float)q, __half2float(__float2half_rn(d)));
}

/* A key as the CPU's ring returns it (centered in q8_0 beyond the probe tokens). */
__device__ __forceinline__ float key_ring(float h, float mu, int pos) {
    bool c = pos >= CHAN_PROBE;
    float y = q8_round_trip(c ? __fsub_rn(h, mu) : h);
    return c ? __fadd_rn(y, mu) : y;
}

__device__ __forceinline__ uint32_t chan_code(float x, float lo, float step, int bits) {
    if (!(step > 0.0f)) return 0u;
    float v = rintf(__fdiv_rn(__fsub_rn(x, lo), step));
    float top = (float)((1u << bits) - 1u);
    return v <= 0.0f ? 0u : v >= top ? (uint32_t)top : (uint32_t)v;
}

__device__ __forceinline__ uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ int n_coded(int len, int W, int C) { return len > W ? (len - W) / C * C : 0; }

/* The head state: bits[D] (uint8, padded to 16), mean[D] (float32), plane offsets[D]
 * (uint16), then, from qsum_at(D), the observed queries' squared sums[D] (double) and the
 * position after the last observed query (int64; -1: none usable). */
static __host__ __device__ __forceinline__ uint64_t qsum_at(uint64_t D) { return round16(round16(D) + 6 * D); }

typedef struct chan_geom {
    uint8_t *cache;
    uint64_t heads, keys, values, exact_k, exact_v;
    int D, C, W, n_sink, R, exact_rows, head_bytes, key_block, vcs, capacity, bits, n_kv;
    /* where a row's chunks are: chunk ci of (sequence b, kv head h) is number pc = ptab ?
     * ptab[b * max_pages + ci] : ci from the row's base, its key block at kbase + pc *
     * kstep, its token ci * C + s's value code at vbase + pc * vstep + s * vcs. Contiguous:
     * the row's own regions (kstep a key block, vstep C codes); paged (kvq_cuda_pages with
     * page_size = C): page pc of the pools kpool / vpool, whose pages hold all kv heads */
    const int32_t *ptab;
    uint8_t *kpool, *vpool;
    int max_pages;
    int kstep, vstep;
} chan_geom;

/* A row's first chunk (number 0 from its base): key block and value code. */
struct chan_rowp {
    uint8_t *k, *v;
};
__device__ __forceinline__ chan_rowp chan_row(const chan_geom &g, int b, int h) {
    if (g.ptab) return {g.kpool + (size_t)h * g.key_block, g.vpool + (size_t)h * g.C * g.vcs};
    const size_t row = (size_t)b * g.n_kv + h;
    return {g.cache + g.keys + row * (g.capacity / g.C) * g.key_block, g.cache + g.values + row * g.capacity * g.vcs};
}

/* Chunk ci's number from the row's base (its page, paged). */
__device__ __forceinline__ size_t chan_chunk(const chan_geom &g, int b, int ci) {
    return g.ptab ? (size_t)__ldg(g.ptab + (size_t)b * g.max_pages + ci) : (size_t)ci;
}

/* Chunk ci's key block of (sequence b, kv head h). */
__device__ __forceinline__ uint8_t *chan_key_block(const chan_geom &g, int b, int h, int ci) {
    return chan_row(g, b, h).k + chan_chunk(g, b, ci) * g.kstep;
}

/* Token t's value code of (b, h) (the codes of a 32-token group are consecutive: a chunk
 * is a multiple of 64 tokens and sits in one page). */
__device__ __forceinline__ uint8_t *chan_value_row(const chan_geom &g, int b, int h, int t) {
    const int ci = t / g.C;
    return chan_row(g, b, h).v + chan_chunk(g, b, ci) * g.vstep + (size_t)(t - ci * g.C) * g.vcs;
}

/* ------------------------------------------------------------- append: ring */

/* One block per (sequence, kv head), a thread per channel: the token's fp16 rows into the
 * ring (and the sinks), and its value's q8_0 round trip into x (the value encoder's input,
 * as the CPU encodes values from its ring). */
__global__ void chan_ring_kernel(chan_geom g, int dtype, const void *k, const void *v, const int32_t *positions,
                                 float *x) {
    const int row = blockIdx.x, b = row / g.n_kv, j = threadIdx.x;
    const int pos = positions[b];
    if (pos < 0 || pos >= g.capacity) return;
    __half kh = __float2half_rn(kvqc_load_one(k, dtype, (size_t)row * g.D + j));
    __half vh = __float2half_rn(kvqc_load_one(v, dtype, (size_t)row * g.D + j));
    __half *ek = (__half *)(g.cache + g.exact_k) + (size_t)row * g.exact_rows * g.D;
    __half *ev = (__half *)(g.cache + g.exact_v) + (size_t)row * g.exact_rows * g.D;
    size_t slot = (size_t)(g.n_sink + pos % g.R) * g.D + j;
    ek[slot] = kh;
    ev[slot] = vh;
    if (pos < g.n_sink) {
        ek[(size_t)pos * g.D + j] = kh;
        ev[(size_t)pos * g.D + j] = vh;
    }
    x[(size_t)row * g.D + j] = q8_round_trip(__half2float(vh));
}

/* ------------------------------------------------------------- append: coding */

__device__ __forceinline__ float ring_key(const chan_geom &g, const __half *ek, int pos, int j) {
    return __half2float(ek[(size_t)(g.n_sink + pos % g.R) * g.D + j]);
}

/* Where a chunk's keys come from: the ring, and for positions from pos0 on (the tokens of
 * a multi-token append, not yet in the ring) the caller's input, element (b, h, t, j) at
 * b * sb + h * sh + t * st + j; k NULL: the ring alone. */
typedef struct key_src {
    const void *k;
    int dtype;
    long long sb, sh, st;
} key_src;

/* Token pos's key channel j as the ring holds it (fp16). */
__device__ __forceinline__ float src_key(const chan_geom &g, const __half *ek, const key_src &src, int b, int h,
                                         int pos0, int pos, int j) {
    if (src.k && pos >= pos0)
        return __half2float(__float2half_rn(kvqc_load_one(
            src.k, src.dtype, (size_t)(b * src.sb + h * src.sh + (long long)(pos - pos0) * src.st + j))));
    return ring_key(g, ek, pos, j);
}

/* Queries of the tokens about to be appended (n per sequence from positions[b]), while
 * the sequence's chunk 0 is not coded: each channel's squares summed per (sequence, kv
 * head) in the CPU's order (token, then the head's query heads; squares of floats are
 * exact in double), so the sums are kvqi_chan_observe's. Position 0 starts the sums; a
 * later call adds only when it follows the last one (positions[b] is the position after
 * it), else the sequence's sums are dropped and chunk 0's bits come from ranges alone.
 * Non-finite elements are skipped (the CPU refuses the call). Query element (b, h, t, j)
 * at b * sb + h * sh + t * st + j. */
__global__ void chan_observe_kernel(chan_geom g, int dtype, const void *q, long long sb, long long sh,
                                    long long st, int G, int n, const int32_t *positions) {
    const int row = blockIdx.x, b = row / g.n_kv, hd = row % g.n_kv, j = threadIdx.x;
    const int pos0 = positions[b];
    if (pos0 < 0 || n_coded(pos0, g.W, g.C) > 0) return;
    uint8_t *hs = g.cache + g.heads + (size_t)row * g.head_bytes;
    double *qs = (double *)(hs + qsum_at((uint64_t)g.D));
    long long *next = (long long *)(qs + g.D);
    const bool chain = pos0 == 0 || *next == (long long)pos0;
    if (chain) {
        double s = pos0 == 0 ? 0.0 : qs[j];
        for (int t = 0; t < n; t++)
            for (int h = hd * G; h < hd * G + G; h++) {
                double x = (double)kvqc_load_one(q, dtype, (size_t)(b * sb + h * sh + (long long)t * st + j));
                if (isfinite(x)) s = __dadd_rn(s, __dmul_rn(x, x));
            }
        qs[j] = s;
    }
    __syncthreads(); /* every thread read *next */
    if (j == 0) *next = chain ? (long long)pos0 + n : -1;
}

/* Steps FIRST .. LAST of the 32 x 32 bit transpose for N independent words (interleaved
 * so their shuffles overlap): after all five (16, 8, 4, 2, 1) word r of lane t holds bit
 * t of the 32 lanes' words r. Step sh swaps bit sh of the lane with bit sh of the bit
 * index where they differ: after steps 16, 8, 4 bit b of lane l holds what was bit
 * (b & 3) | (l & 28) of lane (l & 3) | (b & 28). */
template <int N, bool ROT, int LAST = 1, int FIRST = 16>
__device__ __forceinline__ void transpose_words(uint32_t (&v)[N], int lane) {
#pragma unroll
    for (int sh = FIRST; sh >= LAST; sh >>= 1) {
        const uint32_t mk = sh == 16 ? 0x0000ffffu : sh == 8 ? 0x00ff00ffu : sh == 4 ? 0x0f0f0f0fu
                            : sh == 2 ? 0x33333333u : 0x55555555u;
        uint32_t x[N];
#pragma unroll
        for (int i = 0; i < N; i++) x[i] = __shfl_xor_sync(KVQC_FULL, v[i], sh);
        if (ROT) {
            /* the lower lane of a pair keeps its mk bits and takes the partner's shifted
             * left by sh, the upper keeps ~mk and takes them shifted right: both one
             * rotation (the bits it wraps around fall in the part the lane keeps) and one
             * bitwise select, against two shifts, two masks and a select (used with up to
             * 4 query heads and the planes as pairs: with 8 heads its live masks spill at 128
             * registers, and with the planes in place the compiler then stops keeping several
             * channels' loads in flight in the score loop, 10 % slower on the H200) */
            const bool up = (lane & sh) != 0;
            const uint32_t keep = up ? ~mk : mk;
            const int rot = up ? 32 - sh : sh;
#pragma unroll
            for (int i = 0; i < N; i++) v[i] = (v[i] & keep) | (__funnelshift_l(x[i], x[i], rot) & ~keep);
        } else {
#pragma unroll
            for (int i = 0; i < N; i++)
                v[i] = (lane & sh) ? ((v[i] & ~mk) | ((x[i] >> sh) & mk)) : ((v[i] & mk) | ((x[i] << sh) & ~mk));
        }
    }
}

/* Code chunk ci of (sequence, kv head) row, a thread per channel (chunk 0: the mean key
 * and the channels' bits first; later chunks read them from the head). */
__device__ void code_chunk(const chan_geom &g, int row, int ci, const key_src &src, int pos0, long long qlen,
                           double *s_w, int *s_b) {
    const int b = row / g.n_kv, hd = row % g.n_kv, j = threadIdx.x, lane = j & 31, warp = j >> 5;
    const int D = g.D, C = g.C, s0 = ci * C;
    uint8_t *hs = g.cache + g.heads + (size_t)row * g.head_bytes;
    uint8_t *bits_p = hs;
    float *mean_p = (float *)(hs + round16((uint64_t)D));
    uint16_t *off_p = (uint16_t *)(hs + round16((uint64_t)D) + 4 * (uint64_t)D);
    const __half *ek = (const __half *)(g.cache + g.exact_k) + (size_t)row * g.exact_rows * D;
#define KEY(p) src_key(g, ek, src, b, hd, pos0, (p), j)
    float mu;
    int nb;
    if (ci == 0) {
        /* the mean key over probe tokens 1..31 (the CPU's double sum in order) */
        double acc = 0.0;
        for (int t = 1; t < CHAN_PROBE; t++) acc = __dadd_rn(acc, (double)KEY(t));
        mu = __double2float_rn(__ddiv_rn(acc, (double)(CHAN_PROBE - 1)));
        mean_p[j] = mu;
        /* bits from each channel's range over tokens 1..C-1 as the ring returns them */
        float lo = INFINITY, hi = -INFINITY;
        for (int t = 1; t < C; t++) {
            float r = key_ring(KEY(t), mu, t);
            lo = fminf(lo, r);
            hi = fmaxf(hi, r);
        }
        /* each channel's weight, times the root of its observed queries' squares when
         * they cover every token up to this append, or more (kvqi_chan_allocate) */
        __shared__ double s_tot;
        double *qs = (double *)(hs + qsum_at((uint64_t)D));
        long long *next = (long long *)(qs + D);
        const bool seen = *next >= qlen;
        const double qj = seen ? qs[j] : 0.0;
        s_w[j] = qj;
        __syncthreads();
        if (j == 0) {
            double tot = 0.0;
            for (int i = 0; i < D; i++) tot = __dadd_rn(tot, s_w[i]);
            s_tot = tot;
            *next = -1; /* used: a later sequence in this row starts its own */
        }
        __syncthreads();
        double r = lo <= hi ? __dsub_rn((double)hi, (double)lo) : 0.0;
        double w = __dmul_rn(r, r);
        if (s_tot > 0.0) {
            double fl = ldexp(__ddiv_rn(s_tot, (double)D), -10);
            w = __dmul_rn(w, __dsqrt_rn(qj > fl ? qj : fl));
        }
        s_w[j] = w;
        s_b[j] = 0;
        __syncthreads();
        if (warp == 0) { /* greedy: a bit to the largest weight 4^-bits, ties to the lower channel */
            const int total = g.bits * D;
            for (int n = 0; n < total; n++) {
                double be = -1.0;
                int bj = 0x7fffffff;
                for (int jj = lane; jj < D; jj += 32) {
                    if (s_b[jj] >= 8) continue;
                    double e = ldexp(s_w[jj], -2 * s_b[jj]);
                    if (e > be) {
                        be = e;
                        bj = jj;
                    }
                }
#pragma unroll
                for (int o = 16; o >= 1; o >>= 1) {
                    double oe = __shfl_xor_sync(KVQC_FULL, be, o);
                    int oj = __shfl_xor_sync(KVQC_FULL, bj, o);
                    if (oe > be || (oe == be && oj < bj)) {
                        be = oe;
                        bj = oj;
                    }
                }
                if (bj == 0x7fffffff) break;
                if (lane == (bj & 31)) s_b[bj]++;
                __syncwarp();
            }
        }
        __syncthreads();
        nb = s_b[j];
        bits_p[j] = (uint8_t)nb;
        if (j == 0) {
            int o = 0;
            for (int i = 0; i < D; i++) {
                off_p[i] = (uint16_t)o;
                o += s_b[i];
            }
        }
    } else {
        mu = mean_p[j];
        nb = bits_p[j];
    }
    __syncthreads(); /* offsets written (chunk 0) */
    const int off = off_p[j];
    const int lo_t = g.n_sink > s0 ? min(g.n_sink - s0, C) : 0;
    /* the rows, as encode_chan_chunks reads them: ring round trip minus the mean */
#define ROW(t) __fsub_rn(key_ring(KEY(s0 + (t)), mu, s0 + (t)), mu)
    float lo = INFINITY, hi = -INFINITY;
    for (int t = lo_t; t < C; t++) {
        float x = ROW(t);
        lo = fminf(lo, x);
        hi = fmaxf(hi, x);
    }
    uint16_t lo_h, step_h;
    {
        float l = lo <= hi ? lo : 0.0f, h = lo <= hi ? hi : 0.0f;
        if (nb == 0) {
            lo_h = f2h(__fmul_rn(0.5f, __fadd_rn(l, h)));
            step_h = 0;
        } else {
            float levels = (float)((1u << nb) - 1u);
            lo_h = f2h(l);
            float lf = h2f(lo_h);
            float step = h > lf ? __fdiv_rn(__fsub_rn(h, lf), levels) : 0.0f;
            uint16_t s = f2h(step);
            if (h2f(s) < step && s < 0x7bffu) s++;
            step_h = s;
        }
    }
    const bool mine = nb >= 1 && nb <= CHAN_REFINE_BITS;
    const int n_refine = __syncthreads_or(mine) ? CHAN_REFINE : 0;
    const int n = C - lo_t;
    for (int it = 0; it < n_refine; it++) {
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        const float lf = h2f(lo_h), sf = h2f(step_h);
        for (int t = lo_t; t < C; t++) {
            float x = ROW(t);
            float k = (float)chan_code(x, lf, sf, nb);
            a0 = __fadd_rn(a0, k);
            a1 = __fadd_rn(a1, __fmul_rn(k, k));
            a2 = __fadd_rn(a2, x);
            a3 = __fadd_rn(a3, __fmul_rn(x, k));
        }
        if (!mine || n < 2) continue;
        const double A0 = a0, A1 = a1, A2 = a2, A3 = a3, dn = (double)n;
        double den = __dsub_rn(__dmul_rn(dn, A1), __dmul_rn(A0, A0));
        if (!(den > 0.0)) continue;
        double step = __ddiv_rn(__dsub_rn(__dmul_rn(dn, A3), __dmul_rn(A0, A2)), den);
        double l0 = __ddiv_rn(__dsub_rn(A2, __dmul_rn(step, A0)), dn);
        if (!(step > 0.0) || !(fabs(l0) < 65504.0)) continue;
        uint16_t lh = f2h(__double2float_rn(l0));
        double l = (double)h2f(lh);
        step = __ddiv_rn(__dsub_rn(A3, __dmul_rn(l, A0)), A1);
        if (!(step > 0.0) || !(step < 65504.0)) continue;
        uint16_t sh = f2h(__double2float_rn(step));
        if (sh == 0) continue;
        lo_h = lh;
        step_h = sh;
    }
    uint8_t *blk = chan_key_block(g, row / g.n_kv, row % g.n_kv, ci);
    ((uint16_t *)blk)[j] = lo_h;
    ((uint16_t *)blk)[D + j] = step_h;
    uint32_t *words = (uint32_t *)(blk + 4 * (size_t)D);
    const int P = g.bits * D;
    const float lf = h2f(lo_h), sf = h2f(step_h);
    for (int w0 = 0; w0 < C; w0 += 32) {
        uint32_t pl[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int t = w0; t < w0 + 32; t++) {
            float x = ROW(t);
            uint32_t code = t >= lo_t ? chan_code(x, lf, sf, nb) : 0u;
#pragma unroll
            for (int p = 0; p < 8; p++) pl[p] |= ((code >> p) & 1u) << (t & 31);
        }
#pragma unroll
        for (int p = 0; p < 8; p++)
            if (p < nb) words[(size_t)(w0 / 32) * P + off + p] = pl[p];
    }
    /* the words as the attention kernel reads them: in each run of 32 (32 planes x 32
     * tokens) the transpose's first three steps, done once here instead of at every read
     * (bit b of word l holds plane (l & 3) | (b & 28), token (b & 3) | (l & 28)) */
    __syncthreads();
    for (int rr = warp; rr < (C / 32) * (P / 32); rr += (int)(blockDim.x >> 5)) {
        uint32_t v[1] = {words[32 * (size_t)rr + lane]};
        transpose_words<1, false, 4>(v, lane);
        words[32 * (size_t)rr + lane] = v[0];
    }
#undef ROW
#undef KEY
}

/* One block per (sequence, kv head), a thread per channel: when this token completes a
 * chunk to code, code it (from the ring, which holds the token already). */
__global__ void chan_code_kernel(chan_geom g, const int32_t *positions) {
    __shared__ double s_w[256];
    __shared__ int s_b[256];
    const int row = blockIdx.x, b = row / g.n_kv;
    const int pos = positions[b];
    if (pos < 0 || pos >= g.capacity) return;
    const int nc = n_coded(pos + 1, g.W, g.C);
    if (nc == n_coded(pos, g.W, g.C) || nc == 0) return;
    const key_src none = {NULL, 0, 0, 0, 0};
    code_chunk(g, row, nc / g.C - 1, none, 0x7fffffff, (long long)pos + 1, s_w, s_b);
}

/* n tokens per sequence from positions[b] (those below the capacity): grid (sequence x kv
 * head, chunk), a thread per channel. Every chunk the tokens complete is coded, before
 * the ring takes them (their keys come from the input; older ones from the ring, which
 * still holds every token of an uncoded chunk). first: the launch that codes chunk 0
 * (which fixes the head's mean and bits); else the one for the later chunks. */
__global__ void chan_code_n_kernel(chan_geom g, const int32_t *positions, int n, key_src src, int first) {
    __shared__ double s_w[256];
    __shared__ int s_b[256];
    const int row = blockIdx.x, b = row / g.n_kv;
    const int pos0 = positions[b];
    if (pos0 < 0 || pos0 >= g.capacity) return;
    const int end = (int)min((long long)pos0 + n, (long long)g.capacity);
    const int c0 = n_coded(pos0, g.W, g.C) / g.C, c1 = n_coded(end, g.W, g.C) / g.C;
    const int ci = c0 + (int)blockIdx.y;
    if (ci >= c1 || (first ? ci != 0 : ci == 0)) return;
    code_chunk(g, row, ci, src, pos0, (long long)pos0 + n, s_w, s_b);
}

/* n tokens per sequence: grid (sequence x kv head) x n, a thread per channel. The last
 * ring-full of the tokens below the capacity go into the ring (earlier ones would be
 * overwritten there, as one token at a time overwrites them), the sinks into theirs, and
 * every value's q8_0 round trip into x [row][n][D] (0 for skipped tokens). */
__global__ void chan_ring_n_kernel(chan_geom g, int dtype, const void *k, const void *v, key_src ks, key_src vs,
                                   const int32_t *positions, int n, float *x) {
    const long long blk = blockIdx.x;
    const int row = (int)(blk / n), t = (int)(blk % n), b = row / g.n_kv, h = row % g.n_kv, j = threadIdx.x;
    const int pos0 = positions[b];
    float *xr = x + ((size_t)row * n + t) * g.D;
    const long long pos = (long long)pos0 + t;
    if (pos0 < 0 || pos >= g.capacity) {
        xr[j] = 0.0f;
        return;
    }
    __half kh = __float2half_rn(kvqc_load_one(k, dtype, (size_t)(b * ks.sb + h * ks.sh + t * ks.st + j)));
    __half vh = __float2half_rn(kvqc_load_one(v, dtype, (size_t)(b * vs.sb + h * vs.sh + t * vs.st + j)));
    __half *ek = (__half *)(g.cache + g.exact_k) + (size_t)row * g.exact_rows * g.D;
    __half *ev = (__half *)(g.cache + g.exact_v) + (size_t)row * g.exact_rows * g.D;
    const long long n_in = min((long long)n, (long long)g.capacity - pos0);
    if (t >= n_in - g.R) {
        size_t slot = (size_t)(g.n_sink + (int)(pos % g.R)) * g.D + j;
        ek[slot] = kh;
        ev[slot] = vh;
    }
    if (pos < g.n_sink) {
        ek[(size_t)pos * g.D + j] = kh;
        ev[(size_t)pos * g.D + j] = vh;
    }
    xr[j] = q8_round_trip(__half2float(vh));
}

/* One warp per (row, token): its value code from the scratch rows [row][n] to its slot. */
__global__ void __launch_bounds__(128) chan_scatter_n_kernel(chan_geom g, const uint8_t *codes,
                                                             const int32_t *positions, int n, long long n_rows) {
    const long long r = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= n_rows) return;
    const int row = (int)(r / n), t = (int)(r % n), b = row / g.n_kv;
    const int pos0 = positions[b];
    const long long pos = (long long)pos0 + t;
    if (pos0 < 0 || pos >= g.capacity) return;
    uint8_t *dst = chan_value_row(g, b, row % g.n_kv, (int)pos);
    const uint8_t *src = codes + (size_t)r * g.vcs;
    for (int i = lane; i < g.vcs; i += 32) dst[i] = src[i];
}

/* ------------------------------------------------------------- attention */

typedef struct chan_attn_args {
    chan_geom g;
    const kvqc_params *vp;
    int vbits;
    const int32_t *seq_lens;
    const void *q;
    int q_dtype;
    float q_scale;
    float *partial; /* [batch * q_per_seq][n_q_heads][slot_stride][D + 2] */
    int n_q_heads, G, cps, n_split, n_slots; /* slots n_split..n_slots-1: the exact tokens */
    int q_per_seq; /* query rows a sequence: 1 (decode), n_new (prefill: row z of sequence z / n_new) */
    int slot_stride; /* slots a row in partial: n_slots, prefill one more (the new tokens') */
} chan_attn_args;

__device__ __forceinline__ unsigned get_idx(const uint8_t *p, int i, int bits) {
    int bit = i * bits, byte = bit >> 3, shift = bit & 7;
    unsigned v = (unsigned)p[byte] >> shift;
    if (shift + bits > 8) v |= (unsigned)p[byte + 1] << (8 - shift);
    return v & ((1u << bits) - 1u);
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    unsigned sa = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(src));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void cp_wait2() { asm volatile("cp.async.wait_group 2;\n" ::); }

/* Per-warp shared memory, in 4-byte words: two stages of one 32-token group (its chunk's
 * minima and steps, its plane words, its 32 value codes), the transposed planes as pairs
 * of consecutive rows (NR rows of 32 lanes x 2; none with tp, where they replace the
 * stage's plane words in place; with the tensor-core scores the same area holds the
 * chunk's B fragments, NR x 32 lanes x 2 words), the group's softmax weights [32][GS],
 * the chunk's weights q_j step_j [D][GS] (GS: 4 for up to 4 query heads, else 8; none for
 * the tensor-core scores with tp, which build the B fragments from the query heads of
 * channel j, held once a block as [D][4], and the step). */
static constexpr __host__ __device__ bool chan_mma(int GS) { return CHAN_MMA && GS == 4; }
static __host__ __device__ __forceinline__ int stage_words(int D, int P, int vcs) {
    return (D + P + (32 * vcs + 3) / 4 + 3) & ~3;
}
/* QT with sv (QS): two stages of the chunk's minima and steps and the group's plane
 * words, one buffer of its value codes (copied while the scores are computed) */
static __host__ __device__ __forceinline__ int kstage_words(int D, int P) { return (D + P + 3) & ~3; }
static __host__ __device__ __forceinline__ int vbuf_words(int vcs) { return ((32 * vcs + 3) / 4 + 3) & ~3; }
static __host__ __device__ __forceinline__ int warp_words(int D, int P, int vcs, int GS, bool tp, bool sv) {
    if (tp && chan_mma(GS) && sv) return 2 * kstage_words(D, P) + vbuf_words(vcs) + (P / 32) * 64 + 32 * GS;
    return 2 * stage_words(D, P, vcs) + (tp && !chan_mma(GS) ? 0 : (P / 32) * 64) + 32 * GS +
           (tp && chan_mma(GS) ? 0 : D * GS);
}

/* Dynamic shared memory of the attention kernel, in 4-byte words (the warps' areas hold
 * the split's partial results at the end; the tensor-core scores add a plane table of P
 * words to the block's area, and with tp the query heads by channel, [D][4]). */
static size_t attn_smem_words(int D, int G, int GS, int P, int vcs, bool tp, bool sv) {
    size_t warps = (size_t)CHAN_WARPS * warp_words(D, P, vcs, GS, tp, sv), part = (size_t)CHAN_WARPS * G * (D + 2);
    const bool qt = chan_mma(GS) && tp, qs = qt && sv; /* (s_qt; with sv s_top [D] instead of s_bm [D] x 4) */
    return (size_t)G * D + (qs ? 1 : 4) * (size_t)D + (chan_mma(GS) ? (size_t)P : 0) + 2 * CHAN_GMAX +
           (qt ? 4 * (size_t)D : 0) + (warps > part ? warps : part);
}

/* A lane's four value dims from two centroid pairs of s_pair at byte offsets o0, o1. */
template <int E>
__device__ __forceinline__ void pair_dims(float (&v)[E], const float2 *s_pair, uint32_t o0, uint32_t o1) {
    const float2 p0 = *(const float2 *)((const char *)s_pair + o0);
    const float2 p1 = *(const float2 *)((const char *)s_pair + o1);
    v[0] = p0.x;
    v[1 % E] = p0.y;
    v[2 % E] = p1.x;
    v[3 % E] = p1.y;
}

/* A code of at most 23 bits as a float, exactly: its bits in the mantissa of 2^23. */
__device__ __forceinline__ float code_float(uint32_t bits, uint32_t mask) {
    return __int_as_float((int)((bits & mask) | 0x4b000000u)) - 8388608.0f;
}

__device__ __forceinline__ void chan_imma(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint2 b) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b.x), "r"(b.y));
}

/* One k-step of the tensor-core scores, 32 planes: lane l loaded plane word 32 kt + l
 * (bit t = token t) and ran the first three steps of the bit transpose (lane bits 4, 3, 2
 * exchanged with word bits 4, 3, 2). Lane L = 4 r + q then holds tokens 4 r + {0..3}
 * (token bits 0, 1 at word bits 0, 1) of the planes l = q + 4 {0..7} (l's bits 2, 3, 4 at
 * word bits 2, 3, 4): byte b of (v >> e) & 0x01010101 is plane l = 16 (b >> 1) + 8 (b & 1)
 * + 4 (e >> 2) + q, token 4 r + (e & 3). As m16n8k32 A fragments (u8 0 or 1): M-tile m
 * rows r and r + 8 are tokens 4 r + 2 m and 4 r + 2 m + 1, k = 16 c + 4 q + b is plane
 * 16 (b >> 1) + 8 (b & 1) + 4 c + q; so the B fragment of lane L holds, for column L >> 2
 * (head L >> 3, high or low byte), plane 8 i + (L & 3) in byte i of b0 and plane
 * 8 i + 4 + (L & 3) in byte i of b1. */
__device__ __forceinline__ void chan_mma_step(int (&c0)[4], int (&c1)[4], uint32_t v, uint2 b) {
    chan_imma(c0, v & 0x01010101u, (v >> 1) & 0x01010101u, (v >> 4) & 0x01010101u, (v >> 5) & 0x01010101u, b);
    chan_imma(c1, (v >> 2) & 0x01010101u, (v >> 3) & 0x01010101u, (v >> 6) & 0x01010101u, (v >> 7) & 0x01010101u,
              b);
}

/* A group's values on the tensor cores (the tensor-core kernels, values of 1-4 bits), as
 * attend_mma.cu: O^T += V^T P^T per 16 dims (m-tile mt) and 16 tokens (k-step s); A = the
 * tokens' centroids in fp16, B = the softmax weights times the value norms split into
 * fp16 high and low parts (column 2 head + part: fp32 accuracy for them). Lane 4 g + c
 * holds A rows g and g + 8 of tile mt, dims 2 p and 2 p + 1 with p = MT g + mt, so its
 * pairs of a token are MT consecutive codes (2 MT b bits from bit 2 MT b g) and each pair
 * is one lookup in s_hp (two dims' centroids by their 2b-bit code). C: row g, columns
 * 2 c, 2 c + 1 (head c, both parts) = dim 2 p; row g + 8 = dim 2 p + 1. */
template <int MT, int VB>
__device__ __forceinline__ void chan_values_mma(float (&cv)[MT][4], const uint8_t *vst, int vcs, int lane,
                                                const uint32_t *s_hp, const uint32_t (&bf)[2][2]) {
    constexpr int NB = 2 * MT * VB, NW = (NB + 31) / 32, MK = (1 << (2 * VB)) - 1;
    const int g = lane >> 2, c = lane & 3;
#pragma unroll 1
    for (int s = 0; s < 2; s++) {
        const uint32_t b0 = s ? bf[1][0] : bf[0][0], b1 = s ? bf[1][1] : bf[0][1];
        uint32_t w[4][NW];
#pragma unroll
        for (int u = 0; u < 4; u++) { /* tokens 2c, 2c + 1, 2c + 8, 2c + 9 of the k-step */
            /* (vst is 4-byte aligned: the offset's low bits are the shift; the pointer
             * stays one into vst, so the loads stay shared-memory loads, not generic) */
            const int off = (16 * s + 2 * c + (u & 1) + 8 * (u >> 1)) * vcs + 2 + NB / 8 * g;
            const uint32_t *wa = (const uint32_t *)(vst + (off & ~3));
            const int sh = 8 * (off & 3);
            uint32_t x[NW + 1];
#pragma unroll
            for (int i = 0; i <= NW; i++) x[i] = wa[i];
#pragma unroll
            for (int i = 0; i < NW; i++) w[u][i] = __funnelshift_r(x[i], x[i + 1], sh);
        }
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            constexpr int W2 = 2 * VB;
            const int bit = W2 * mt, wi = bit >> 5, sb = bit & 31;
            uint32_t h[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const uint32_t x = sb + W2 <= 32 ? w[u][wi] >> sb : __funnelshift_r(w[u][wi], w[u][wi + 1 < NW ? wi + 1 : wi], sb);
                h[u] = s_hp[x & MK];
            }
            kvqc_mma_f16(cv[mt], __byte_perm(h[0], h[1], 0x5410), __byte_perm(h[0], h[1], 0x7632),
                         __byte_perm(h[2], h[3], 0x5410), __byte_perm(h[2], h[3], 0x7632), b0, b1);
        }
    }
}

/* Grid (n_slots, n_kv, batch): blocks x < n_split score whole coded chunks, blocks from
 * n_split on the exact tokens; each stores (acc, max, sum) per query head in its slot.
 * Each warp takes a contiguous quarter of the split's 32-token groups and copies its next
 * group (chunk header, plane words, value codes) with cp.async while it works on this
 * one; it computes a chunk's weights q_j step_j and bias <q, mean + lo> itself when the
 * chunk changes, so warps never wait for each other. A group's 32 x P plane bits are
 * transposed by shuffles so that lane t holds its token's bits of planes 32r..32r+31 in
 * word r (four words' shuffles interleaved); a channel's code is then one funnel shift
 * and mask at its plane offset, made a float by or-ing it into the mantissa of 2^23 (no
 * integer-to-float conversion, which runs at a fraction of the FMA rate). The online
 * softmax reduces all GS heads' maxima and sums together. GS (4 or 8 weights per
 * channel) is a template parameter, so the score loop has no head-count tests; TP keeps
 * the transposed words in place (one more load per channel, less shared memory: chosen
 * when it fits more blocks on an SM). With the tensor-core scores TP means QT instead:
 * no per-warp chunk weights [D][GS]; the B fragments are built from the query heads of
 * each channel (s_qt, once a block) and the chunk's steps, 6 KB less a block (q4's 5-bit
 * layers: 3 blocks an SM instead of 2) and a shorter chunk set-up. SV (with QT: QS) keeps
 * one buffer of value codes a warp, copied while the scores are computed, instead of one
 * a stage (q4: 4 blocks an SM instead of 3; plan_attn says where it pays). */
/* Blocks per SM the register budget must allow: the scoring loop's own need (the exact
 * tokens' path, which holds more in flight, must not raise it). */
#define CHAN_MIN_BLOCKS(E, GS) ((E) == 8 ? 3 : (E) == 2 && (GS) == 4 ? 5 : 4)
template <int E, int GS, bool TP, bool PG, bool SV>
__global__ void __launch_bounds__(CHAN_WARPS * 32, CHAN_MIN_BLOCKS(E, GS)) chan_attend_kernel(chan_attn_args a) {
    extern __shared__ __align__(16) float smem[];
    const chan_geom &g = a.g;
    const int D = 32 * E, G = a.G, P = g.bits * D, NR = P / 32;
    float *s_q = smem;                           /* [G][D] */
    constexpr bool MMA = chan_mma(GS);
    /* QT (tensor-core scores with TP): no per-warp chunk weights; the B fragments come
     * from the query heads of each channel (s_qt, [D] x 4) and the chunk's steps. QS (QT
     * with SV): one buffer of value codes a warp instead of one a stage, and each
     * channel's 2^(bits - 1) in s_top instead of s_bm's four words */
    constexpr bool QT = MMA && TP, QS = QT && SV;
    uint32_t *s_bmw = (uint32_t *)(s_q + G * D);
    int4 *s_bm = (int4 *)s_bmw;                  /* [D]: transposed word's byte offset, shift, mask */
    float *s_top = (float *)s_bmw;               /* QS: [D] 2^(bits - 1) (0: no bits) */
    __shared__ float s_cen[256];                 /* value centroids (a fixed address) */
    __shared__ float2 s_pair[E == 4 && !MMA ? 256 : 1]; /* E = 4, 4- / 2-bit values: two dims' centroids */
    __shared__ uint32_t s_hp[MMA ? 256 : 1];    /* MMA, 1-4-bit values: two dims' centroids in fp16 */
    uint32_t *s_pl = s_bmw + (QS ? D : 4 * D);   /* MMA: [P] plane -> 2^bit as float bits | channel */
    float *s_qmu = (float *)(s_pl + (MMA ? P : 0)); /* [GMAX] (+ pad) */
    float4 *s_qt = (float4 *)(s_qmu + 2 * CHAN_GMAX);
    uint32_t *s_warp = (uint32_t *)(s_qmu + 2 * CHAN_GMAX + (QT ? 4 * D : 0));
    const int vcs = g.vcs, SW = QS ? kstage_words(D, P) : stage_words(D, P, vcs), WW = warp_words(D, P, vcs, GS, TP, SV);
    float *s_part = (float *)s_warp; /* [WARPS][G][D + 2], once the warps are done */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* z: the query row (decode: the sequence), b: the sequence whose cache it reads */
    const int split = blockIdx.x, h = blockIdx.y, z = blockIdx.z, b = z / a.q_per_seq, row = b * g.n_kv + h;
    int len = a.seq_lens[b];
    if (len > g.capacity) len = g.capacity;
    if (len < 0) len = 0;
    const int nc = n_coded(len, g.W, g.C);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::); /* the merge may be scheduled (it waits for us) */
#endif
    /* a coded split's warp range and its first group's copy, issued before anything else
     * (the prologue's loads then wait with it, not before it) */
    const int C = g.C, t_begin = split * a.cps * C, t_end = min((split + 1) * a.cps * C, nc);
    const int n_groups = split < a.n_split ? max(t_end - t_begin, 0) / 32 : 0;
    const int g_begin = (int)((long long)n_groups * warp / CHAN_WARPS);
    const int g_end = (int)((long long)n_groups * (warp + 1) / CHAN_WARPS);
    uint32_t *my = s_warp + warp * WW;
    /* group gi's chunk and place in it without a division a group: t_begin is whole
     * chunks (split * cps), a chunk C / 32 groups (a shift and a mask where that is a
     * power of two, as for every chunk size the presets take) */
    const int gpc = C / 32, c_first = split * a.cps, lg = __ffs(gpc) - 1;
    const bool gp2 = (gpc & (gpc - 1)) == 0;
    auto chunk_of = [&](int gi) { return c_first + (gp2 ? gi >> lg : gi / gpc); };
    auto group_of = [&](int gi) { return gp2 ? gi & (gpc - 1) : gi % gpc; };
    const chan_rowp rp = chan_row(g, b, h);
    auto issue = [&](int gi, int st) {
        if (gi < g_end) {
            const int ci = chunk_of(gi), grp = group_of(gi);
            const size_t pc = PG ? chan_chunk(g, b, ci) : (size_t)ci; /* (PG: g.ptab != NULL) */
            const uint8_t *blk = rp.k + pc * g.kstep;
            const uint8_t *wsrc = blk + 4 * (size_t)D + (size_t)grp * P * 4;
            const uint8_t *vsrc = rp.v + pc * g.vstep + (size_t)(grp * 32) * vcs;
            uint8_t *dst = (uint8_t *)(my + st * SW);
            /* the chunk's minima and steps: only the chunk set-up reads them, at the warp's
             * first group and at each chunk's first */
            if (gi == g_begin || grp == 0)
                for (int c = lane; c < D / 4; c += 32) cp_async16(dst + 16 * c, blk + 16 * c);
            for (int c = lane; c < P / 4; c += 32) cp_async16(dst + 4 * D + 16 * c, wsrc + 16 * c);
            if (!QS) /* (QS: issue_v) */
                for (int c = lane; c < 2 * vcs; c += 32) cp_async16(dst + 4 * D + 4 * P + 16 * c, vsrc + 16 * c);
        }
        cp_commit();
    };
    auto issue_v = [&](int gi) { /* QS: group gi's value codes into the warp's one buffer */
        if (gi < g_end) {
            const int ci = chunk_of(gi), grp = group_of(gi);
            const size_t pc = PG ? chan_chunk(g, b, ci) : (size_t)ci;
            const uint8_t *vsrc = rp.v + pc * g.vstep + (size_t)(grp * 32) * vcs;
            uint8_t *dst = (uint8_t *)(my + 2 * SW);
            for (int c = lane; c < 2 * vcs; c += 32) cp_async16(dst + 16 * c, vsrc + 16 * c);
        }
        cp_commit();
    };
    const bool coded = split < a.n_split;
    if (coded) issue(g_begin, 0);
    if (coded && QS) issue_v(g_begin); /* (the later groups' values: in the loop) */
    /* the prologue's global loads (centroids, the query, the head state) all in flight
     * at once, then their shared-memory stores */
    const uint8_t *hs = g.cache + g.heads + (size_t)row * g.head_bytes;
    const float *mean_p = (const float *)(hs + round16((uint64_t)D));
    const uint16_t *off_p = (const uint16_t *)(hs + round16((uint64_t)D) + 4 * (uint64_t)D);
    /* s_pair: a 4-bit code byte, a 2-bit nibble; s_hp: two codes of a.vbits */
    const int vsh = MMA ? min(a.vbits, 4) : a.vbits == 4 ? 4 : 2, vmk = (1 << vsh) - 1;
    float cen_r[2], pair_r[2][2], q_r[2][E], mu_r[E];
    int off_r[2] = {0, 0}, nb_r[2] = {0, 0};
#pragma unroll
    for (int k = 0; k < 2; k++) { /* 256 entries, 128 threads */
        const int i = threadIdx.x + CHAN_WARPS * 32 * k;
        cen_r[k] = a.vp->cen[i];
        if (E == 4 || MMA) {
            pair_r[k][0] = a.vp->cen[i & vmk];
            pair_r[k][1] = a.vp->cen[(i >> vsh) & vmk];
        }
    }
#pragma unroll
    for (int k = 0; k < 2; k++) { /* query heads warp and warp + 4 */
        const int gg = warp + CHAN_WARPS * k;
        if (gg < G) kvqc_load_row<E>(a.q, a.q_dtype, (size_t)z * a.n_q_heads + (size_t)h * G + gg, lane, q_r[k]);
    }
    if (coded) {
#pragma unroll
        for (int e = 0; e < E; e++) mu_r[e] = mean_p[lane + 32 * e];
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const int j = threadIdx.x + CHAN_WARPS * 32 * k;
            if (j < D) {
                off_r[k] = off_p[j];
                nb_r[k] = hs[j];
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 2; k++) {
        const int i = threadIdx.x + CHAN_WARPS * 32 * k;
        s_cen[i] = cen_r[k];
        if (MMA)
            s_hp[i] = (uint32_t)f2h(pair_r[k][0]) | (uint32_t)f2h(pair_r[k][1]) << 16;
        else if (E == 4)
            s_pair[i] = make_float2(pair_r[k][0], pair_r[k][1]);
    }
#pragma unroll
    for (int k = 0; k < 2; k++) {
        const int gg = warp + CHAN_WARPS * k;
        if (gg < G)
#pragma unroll
            for (int e = 0; e < E; e++) s_q[gg * D + lane + 32 * e] = q_r[k][e] * a.q_scale;
    }
    if constexpr (QT) /* warp w: head w of every channel (0 past the G heads) */
#pragma unroll
        for (int e = 0; e < E; e++)
            ((float *)s_qt)[4 * (lane + 32 * e) + warp] = warp < G ? q_r[0][e] * a.q_scale : 0.0f;
    float acc[CHAN_GMAX][E], m[CHAN_GMAX], l[CHAN_GMAX];
#pragma unroll
    for (int gg = 0; gg < CHAN_GMAX; gg++) {
        m[gg] = -INFINITY;
        l[gg] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) acc[gg][e] = 0.0f;
    }
    bool lane_major = false; /* acc[.][e] holds dim lane + 32e (exact path) or E lane + e */
    /* MMA: a coded block's values on the tensor cores (1-4 bits: chan_gs), in cv, with
     * head lane & 3's running maximum and sum */
    constexpr int NCV = MMA ? 2 * E : 1;
    float cv[NCV][4], mq = -INFINITY, lq = 0.0f;
#pragma unroll
    for (int mt = 0; mt < NCV; mt++) cv[mt][0] = cv[mt][1] = cv[mt][2] = cv[mt][3] = 0.0f;
    if (coded) {
        lane_major = true;
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const int j = threadIdx.x + CHAN_WARPS * 32 * k, off = off_r[k], nb = nb_r[k];
            if (j < D && QS) s_top[j] = (float)(1u << nb >> 1);
            else if (j < D) s_bm[j] = make_int4((off >> 5) * (TP ? 128 : 256), off & 31, (int)((1u << nb) - 1u), 0);
        }
        if (MMA) { /* plane off_j + p of channel j: 2^p (float bits, low mantissa bits clear) | j */
            for (int i = threadIdx.x; i < P; i += blockDim.x) s_pl[i] = 0u; /* planes of no channel: 0 */
            __syncthreads();
#pragma unroll
            for (int k = 0; k < 2; k++) {
                const int j = threadIdx.x + CHAN_WARPS * 32 * k, off = off_r[k], nb = nb_r[k];
                if (j < D)
                    for (int p = 0; p < nb && off + p < P; p++)
                        s_pl[off + p] = ((uint32_t)(127 + p) << 23) | (uint32_t)j;
            }
        }
        __syncthreads();
        for (int gg = warp; gg < G; gg += CHAN_WARPS) {
            float sdot = 0.0f;
#pragma unroll
            for (int e = 0; e < E; e++) sdot += s_q[gg * D + lane + 32 * e] * mu_r[e];
            sdot = kvqc_warp_sum(sdot);
            if (lane == 0) s_qmu[gg] = sdot;
        }
        __syncthreads();
        uint32_t *wrk = my + 2 * SW + (QS ? vbuf_words(vcs) : 0);
        uint2 *s_t = (uint2 *)wrk;                    /* [NR][32] pairs (row r, row r + 1), unless TP */
        float *s_p = (float *)(wrk + (TP && !MMA ? 0 : NR * 64)); /* [32][GS] */
        float *s_w = s_p + 32 * GS;                   /* [D][GS] (not with QT) */
        uint8_t *s_bt = (uint8_t *)s_t;               /* MMA: [NR][32 lanes][b0, b1] */
        int stage = 0, cur = -1;
        float bias[CHAN_GMAX], sinv[4];
#pragma unroll
        for (int gg = 0; gg < CHAN_GMAX; gg++) bias[gg] = 0.0f;
#pragma unroll
        for (int gg = 0; gg < 4; gg++) sinv[gg] = 0.0f;
        const int vbits = a.vbits;
        for (int gi = g_begin; gi < g_end; gi++) {
            if constexpr (QS) { /* commits: K(gi) earlier, then V(gi), K(gi + 1): K(gi) is in */
                if (gi > g_begin) issue_v(gi); /* (the first with the prologue, after K(gi)) */
                issue(gi + 1, stage ^ 1);
                cp_wait2();
            } else {
                issue(gi + 1, stage ^ 1);
                cp_wait1();
            }
            __syncwarp();
            const int t0 = t_begin + 32 * gi, ci = chunk_of(gi);
            const uint32_t *sst = my + stage * SW;
            const uint16_t *hdr = (const uint16_t *)sst;
            const uint32_t *wst = sst + D;
            const uint8_t *vst = QS ? (const uint8_t *)(my + 2 * SW) : (const uint8_t *)(wst + P);
            if (ci != cur) { /* this chunk's weights and bias */
                cur = ci;
                float amax[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* QT: max |q_j step_j| 2^(bits_j - 1) a head */
                for (int j = lane; j < D; j += 32) {
                    const float st = h2f(hdr[D + j]), lo = h2f(hdr[j]);
                    if constexpr (QT) {
                        const float4 qj = s_qt[j];
                        const float top = QS ? s_top[j] : (float)((s_bm[j].z + 1) >> 1); /* 2^(bits - 1); 0: no bits */
                        amax[0] = fmaxf(amax[0], fabsf(qj.x * st) * top);
                        amax[1] = fmaxf(amax[1], fabsf(qj.y * st) * top);
                        amax[2] = fmaxf(amax[2], fabsf(qj.z * st) * top);
                        amax[3] = fmaxf(amax[3], fabsf(qj.w * st) * top);
                    } else {
                        for (int gg = 0; gg < GS; gg++) s_w[j * GS + gg] = gg < G ? s_q[gg * D + j] * st : 0.0f;
                    }
#pragma unroll
                    for (int gg = 0; gg < GS; gg++) /* (G <= GS: chan_gs) */
                        if (gg < G) bias[gg] = (j == lane ? 0.0f : bias[gg]) + s_q[gg * D + j] * lo;
                }
#pragma unroll
                for (int gg = 0; gg < GS; gg++)
                    if (gg < G) bias[gg] = kvqc_warp_sum(bias[gg]) + s_qmu[gg];
                if constexpr (MMA) {
                    /* the plane weights q_j step_j 2^p in 16-bit fixed point per head, against
                     * the largest (|W| <= 32639: high byte (W + 128) >> 8 and low byte W & 255
                     * both signed), as B fragments in s_bt */
                    for (int j = lane; j < D && !QT; j += 32) {
                        const float top = (float)((s_bm[j].z + 1) >> 1); /* 2^(bits - 1); 0: no bits */
                        const float4 w = *(const float4 *)(s_w + 4 * j);
                        amax[0] = fmaxf(amax[0], fabsf(w.x) * top);
                        amax[1] = fmaxf(amax[1], fabsf(w.y) * top);
                        amax[2] = fmaxf(amax[2], fabsf(w.z) * top);
                        amax[3] = fmaxf(amax[3], fabsf(w.w) * top);
                    }
#pragma unroll
                    for (int o = 16; o >= 1; o >>= 1)
#pragma unroll
                        for (int gg = 0; gg < 4; gg++)
                            amax[gg] = fmaxf(amax[gg], __shfl_xor_sync(KVQC_FULL, amax[gg], o));
                    float fs[4];
#pragma unroll
                    for (int gg = 0; gg < 4; gg++) {
                        const bool nz = amax[gg] > 1e-30f;
                        fs[gg] = nz ? 32639.0f / amax[gg] : 0.0f;
                        sinv[gg] = nz ? amax[gg] / 32639.0f : 0.0f;
                    }
                    for (int j = lane; j < D && !QT; j += 32) {
                        float4 w = *(const float4 *)(s_w + 4 * j);
                        w.x *= fs[0];
                        w.y *= fs[1];
                        w.z *= fs[2];
                        w.w *= fs[3];
                        *(float4 *)(s_w + 4 * j) = w;
                    }
                    __syncwarp();
                    /* lane l: plane 32 kt + l, to lanes 8 g + (l & 3) (high byte) and
                     * 8 g + 4 + (l & 3) (low), word (l >> 2) & 1, byte l >> 3 */
                    uint8_t *dst = s_bt + 8 * (lane & 3) + 4 * ((lane >> 2) & 1) + (lane >> 3);
                    for (int kt = 0; kt < NR; kt++) {
                        const uint32_t pe = s_pl[32 * kt + lane];
                        const float p2 = __uint_as_float(pe & 0xff800000u);
                        float uu[4];
                        if constexpr (QT) { /* (q_j step_j) fs, as the s_w path rounds it */
                            const int j = (int)(pe & 0x7fffffu);
                            const float4 qj = s_qt[j];
                            const float st = h2f(hdr[D + j]);
                            uu[0] = (qj.x * st) * fs[0];
                            uu[1] = (qj.y * st) * fs[1];
                            uu[2] = (qj.z * st) * fs[2];
                            uu[3] = (qj.w * st) * fs[3];
                        } else {
                            const float4 u = *(const float4 *)(s_w + 4 * (pe & 0x7fffffu));
                            uu[0] = u.x;
                            uu[1] = u.y;
                            uu[2] = u.z;
                            uu[3] = u.w;
                        }
#pragma unroll
                        for (int gg = 0; gg < 4; gg++) {
                            /* round(u 2^p) in the low bits of 1.5 * 2^23 + u 2^p */
                            const int bits = __float_as_int(fmaf(uu[gg], p2, 12582912.0f));
                            dst[256 * kt + 64 * gg] = (uint8_t)((bits - 0x4b3fff80) >> 8);
                            dst[256 * kt + 64 * gg + 32] = (uint8_t)bits;
                        }
                    }
                    __syncwarp();
                }
            }
            float sc[CHAN_GMAX];
#pragma unroll
            for (int gg = 0; gg < CHAN_GMAX; gg++) sc[gg] = bias[gg];
            if constexpr (MMA) {
                /* the scores on the tensor cores: A = the group's plane bits (32 tokens x P
                 * planes, u8 0 / 1), B = the chunk's plane weights (s_bt), two M-tiles of 16
                 * tokens, int32 sums of the high and low bytes per head */
                int c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
                const uint2 *btl = (const uint2 *)s_bt + lane;
                int r = 0;
                for (; r + 4 <= NR; r += 4) {
                    uint32_t v[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) v[i] = wst[32 * (r + i) + lane];
#pragma unroll
                    for (int i = 0; i < 4; i++) chan_mma_step(c0, c1, v[i], btl[32 * (r + i)]);
                }
                for (; r < NR; r += 2) {
                    uint32_t v[2] = {wst[32 * r + lane], wst[32 * (r + 1) + lane]};
                    chan_mma_step(c0, c1, v[0], btl[32 * r]);
                    chan_mma_step(c0, c1, v[1], btl[32 * (r + 1)]);
                }
                /* lane 4 r + q: head q of tokens 4 r .. 4 r + 3 (M-tile m, row +8: token
                 * 4 r + 2 m + 1). The online softmax in this layout: a head's 8 lanes
                 * reduce its maximum and sum in three shuffles each, all heads at once */
                const int q = lane & 3, r4 = 4 * (lane >> 2);
                float bq = bias[0], iq = sinv[0];
#pragma unroll
                for (int gg = 1; gg < 4; gg++)
                    if (q == gg) {
                        bq = bias[gg];
                        iq = sinv[gg];
                    }
                float sk[4] = {fmaf((float)(c0[0] * 256 + c0[1]), iq, bq), fmaf((float)(c0[2] * 256 + c0[3]), iq, bq),
                               fmaf((float)(c1[0] * 256 + c1[1]), iq, bq), fmaf((float)(c1[2] * 256 + c1[3]), iq, bq)};
                float mx = -INFINITY;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    if (t0 + r4 + k < g.n_sink) sk[k] = -INFINITY; /* a sink: held exact */
                    mx = fmaxf(mx, sk[k]);
                }
#pragma unroll
                for (int o = 4; o <= 16; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(KVQC_FULL, mx, o));
                const float mn = fmaxf(mq, mx);
                const bool live = mn != -INFINITY;
                const float alpha = live ? exp2f(mq - mn) : 1.0f;
                float pk[4];
#pragma unroll
                for (int k = 0; k < 4; k++) pk[k] = live ? exp2f(sk[k] - mn) : 0.0f;
                float ps = (pk[0] + pk[1]) + (pk[2] + pk[3]);
#pragma unroll
                for (int o = 4; o <= 16; o <<= 1) ps += __shfl_xor_sync(KVQC_FULL, ps, o);
                lq = lq * alpha + ps;
                mq = mn;
                if constexpr (QS) { /* V(gi) in too (K(gi + 1) may still be on its way) */
                    cp_wait1();
                    __syncwarp();
                }
#pragma unroll
                for (int k = 0; k < 4; k++) /* the value's norm rides on its weight */
                    s_p[(r4 + k) * GS + q] = pk[k] * h2f(*(const uint16_t *)(vst + (r4 + k) * vcs));
                __syncwarp();
                /* the values (lane l's accumulators are head l & 3's, as its softmax state) */
                if (__any_sync(KVQC_FULL, alpha != 1.0f))
#pragma unroll
                    for (int mt = 0; mt < NCV; mt++)
#pragma unroll
                        for (int i = 0; i < 4; i++) cv[mt][i] *= alpha;
                /* B: tokens 16 s + 2 c + {0, 1} (+ 8), column g = 2 head + part */
                const int c = lane & 3, hh = lane >> 3, part = (lane >> 2) & 1;
                uint32_t bf[2][2];
#pragma unroll
                for (int s = 0; s < 2; s++)
#pragma unroll
                    for (int jj = 0; jj < 2; jj++) {
                        const float *pp = s_p + (16 * s + 2 * c + 8 * jj) * GS + hh;
                        bf[s][jj] = (uint32_t)kvqc_split_half(pp[0], part) | (uint32_t)kvqc_split_half(pp[GS], part) << 16;
                    }
                if (vbits == 4) chan_values_mma<NCV, 4>(cv, vst, vcs, lane, s_hp, bf);
                else if (vbits == 3) chan_values_mma<NCV, 3>(cv, vst, vcs, lane, s_hp, bf);
                else if (vbits == 2) chan_values_mma<NCV, 2>(cv, vst, vcs, lane, s_hp, bf);
                else chan_values_mma<NCV, 1>(cv, vst, vcs, lane, s_hp, bf);
                __syncwarp();
                stage ^= 1;
                continue;
            } else {
                /* transpose: word r of lane t = bits t of planes 32r..32r+31 (NR is even:
                 * bits * E words; four or two words at a time). TP: in place (lane t's word r
                 * stays at 32 r + t, where lane t read it), else as pairs of words (r, r + 1) */
                uint32_t *wtr = (uint32_t *)wst;
                uint32_t prev = 0;
                int r = 0;
                for (; r + 4 <= NR; r += 4) {
                    uint32_t v[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) v[i] = wtr[32 * (r + i) + lane];
                    transpose_words<4, GS == 4 && !TP, 1, 2>(v, lane);
                    if (TP) {
#pragma unroll
                        for (int i = 0; i < 4; i++) wtr[32 * (r + i) + lane] = v[i];
                    } else {
                        if (r > 0) s_t[32 * (r - 1) + lane] = make_uint2(prev, v[0]);
#pragma unroll
                        for (int i = 0; i < 3; i++) s_t[32 * (r + i) + lane] = make_uint2(v[i], v[i + 1]);
                        prev = v[3];
                    }
                }
                for (; r < NR; r += 2) {
                    uint32_t v[2] = {wtr[32 * r + lane], wtr[32 * (r + 1) + lane]};
                    transpose_words<2, GS == 4 && !TP, 1, 2>(v, lane);
                    if (TP) {
                        wtr[32 * r + lane] = v[0];
                        wtr[32 * (r + 1) + lane] = v[1];
                    } else {
                        if (r > 0) s_t[32 * (r - 1) + lane] = make_uint2(prev, v[0]);
                        s_t[32 * r + lane] = make_uint2(v[0], v[1]);
                        prev = v[1];
                    }
                }
                if (!TP) s_t[32 * (NR - 1) + lane] = make_uint2(prev, 0u);
                __syncwarp();
                const uint2 *tl = s_t + lane;
                const uint32_t *tw = wtr + lane; /* TP: word NR (past the planes) only feeds masked-off bits */
#pragma unroll 4
                for (int j = 0; j < D; j++) {
                    const int4 bm = s_bm[j];
                    uint32_t w0, w1;
                    if (TP) {
                        w0 = *(const uint32_t *)((const char *)tw + bm.x);
                        w1 = *(const uint32_t *)((const char *)tw + bm.x + 128);
                    } else {
                        const uint2 pr = *(const uint2 *)((const char *)tl + bm.x);
                        w0 = pr.x;
                        w1 = pr.y;
                    }
                    const float fc = code_float(__funnelshift_r(w0, w1, bm.y), (uint32_t)bm.z);
                    const float4 wa = *(const float4 *)(s_w + j * GS);
                    sc[0] += wa.x * fc;
                    sc[1] += wa.y * fc;
                    sc[2] += wa.z * fc;
                    sc[3] += wa.w * fc;
                    if (GS > 4) {
                        const float4 wb = *(const float4 *)(s_w + j * GS + 4);
                        sc[4] += wb.x * fc;
                        sc[5] += wb.y * fc;
                        sc[6] += wb.z * fc;
                        sc[7] += wb.w * fc;
                    }
                }
            }
            const bool valid = t0 + lane >= g.n_sink;
            const float norm = h2f(*(const uint16_t *)(vst + lane * vcs));
            /* the online softmax of all GS heads at once (their reductions interleaved; heads
             * past G score 0 and are never stored) */
            float sv[GS], red[GS], pv[GS];
#pragma unroll
            for (int gg = 0; gg < GS; gg++) red[gg] = sv[gg] = valid ? sc[gg] : -INFINITY;
#pragma unroll
            for (int o = 16; o >= 1; o >>= 1)
#pragma unroll
                for (int gg = 0; gg < GS; gg++) red[gg] = fmaxf(red[gg], __shfl_xor_sync(KVQC_FULL, red[gg], o));
#pragma unroll
            for (int gg = 0; gg < GS; gg++) {
                const float mn = fmaxf(m[gg], red[gg]);
                const bool live = mn != -INFINITY;
                const float alpha = live ? exp2f(m[gg] - mn) : 1.0f;
                pv[gg] = valid && live ? exp2f(sv[gg] - mn) : 0.0f;
                red[gg] = pv[gg];
                l[gg] *= alpha;
#pragma unroll
                for (int e = 0; e < E; e++) acc[gg][e] *= alpha;
                m[gg] = mn;
            }
#pragma unroll
            for (int o = 16; o >= 1; o >>= 1)
#pragma unroll
                for (int gg = 0; gg < GS; gg++) red[gg] += __shfl_xor_sync(KVQC_FULL, red[gg], o);
#pragma unroll
            for (int gg = 0; gg < GS; gg++) {
                l[gg] += red[gg];
                s_p[lane * GS + gg] = pv[gg] * norm; /* the value's norm rides on its weight */
            }
            __syncwarp();
            /* values: the token loop once per code width (the width's test outside it) */
            auto add_values = [&](auto decode) {
#pragma unroll 2
                for (int tt = 0; tt < 32; tt++) {
                    float v[E];
                    decode(vst + tt * vcs, v);
                    const float4 pa = *(const float4 *)(s_p + tt * GS);
                    const float pp[4] = {pa.x, pa.y, pa.z, pa.w};
#pragma unroll
                    for (int gg = 0; gg < 4; gg++)
#pragma unroll
                        for (int e = 0; e < E; e++) acc[gg][e] += pp[gg] * v[e];
                    if (GS > 4) {
                        const float4 pb = *(const float4 *)(s_p + tt * GS + 4);
                        const float pq[4] = {pb.x, pb.y, pb.z, pb.w};
#pragma unroll
                        for (int gg = 0; gg < 4; gg++)
#pragma unroll
                            for (int e = 0; e < E; e++) acc[4 + gg][e] += pq[gg] * v[e];
                    }
                }
            };
            /* E = 4: a lane's four dims are two bytes (4-bit codes) or one (2-bit), decoded
             * as two centroid pairs (s_pair, looked up by byte offset) */
            if (!MMA && E == 4 && vbits == 4) {
                add_values([&](const uint8_t *vc, float(&v)[E]) {
                    const uint32_t c = *(const uint16_t *)(vc + 2 + 2 * lane);
                    pair_dims(v, s_pair, (c << 3) & 0x7f8u, (c >> 5) & 0x7f8u);
                });
            } else if (!MMA && E == 4 && vbits == 2) {
                add_values([&](const uint8_t *vc, float(&v)[E]) {
                    const uint32_t c = vc[2 + lane];
                    pair_dims(v, s_pair, (c << 3) & 0x78u, (c >> 1) & 0x78u);
                });
            } else {
                add_values([&](const uint8_t *vc, float(&v)[E]) {
#pragma unroll
                    for (int e = 0; e < E; e++) v[e] = s_cen[get_idx(vc + 2, E * lane + e, vbits)];
                });
            }
            __syncwarp();
            stage ^= 1;
        }
        asm volatile("cp.async.wait_all;\n" ::);
        __syncthreads(); /* the warps' areas become the partial results */
    } else {
        /* the exact tokens: sinks, then the tail from max(n_coded, n_sink), 32 at a time
         * per warp: a lane scores its token's fp16 key row (8-byte loads, several in flight) for every query head, one online-softmax step per 32 tokens, then the
         * 32 value rows are summed with the lanes over the dims */
        __syncthreads();
        const __half *ek = (const __half *)(g.cache + g.exact_k) + (size_t)row * g.exact_rows * D;
        const __half *ev = (const __half *)(g.cache + g.exact_v) + (size_t)row * g.exact_rows * D;
        const int ns = min(g.n_sink, len), tail0 = max(nc, g.n_sink), n_ex = ns + max(len - tail0, 0);
        float *s_pe = (float *)(s_warp + warp * WW); /* [32][GS] */
        const int xe = split - a.n_split, n_xe = a.n_slots - a.n_split; /* this exact block, of n_xe */
        for (int i0 = 32 * (warp + CHAN_WARPS * xe); i0 < n_ex; i0 += 32 * CHAN_WARPS * n_xe) {
            const int i = i0 + lane;
            const bool valid = i < n_ex;
            const int r = i < ns ? i : g.n_sink + (tail0 + i - ns) % g.R;
            /* four query heads a pass (the scores through shared memory: few registers) */
#pragma unroll 1
            for (int h0 = 0; h0 < G; h0 += 4) {
                float s4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                if (valid) {
                    const uint2 *kr = (const uint2 *)(ek + (size_t)r * D);
#pragma unroll 8
                    for (int c = 0; c < D / 4; c++) {
                        const uint2 u = kr[c];
                        const float2 k0 = __half22float2(*(const __half2 *)&u.x);
                        const float2 k1 = __half22float2(*(const __half2 *)&u.y);
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            if (h0 + i >= G) break;
                            const float4 qa = *(const float4 *)(s_q + (h0 + i) * D + 4 * c);
                            s4[i] += qa.x * k0.x + qa.y * k0.y + qa.z * k1.x + qa.w * k1.y;
                        }
                    }
                }
#pragma unroll
                for (int i = 0; i < 4; i++)
                    if (h0 + i < GS) s_pe[lane * GS + h0 + i] = s4[i];
            }
            float sc[GS];
#pragma unroll
            for (int gg = 0; gg < GS; gg++) sc[gg] = gg < G ? s_pe[lane * GS + gg] : 0.0f;
            float red[GS], pv[GS];
#pragma unroll
            for (int gg = 0; gg < GS; gg++) red[gg] = sc[gg] = valid ? sc[gg] : -INFINITY;
#pragma unroll
            for (int o = 16; o >= 1; o >>= 1)
#pragma unroll
                for (int gg = 0; gg < GS; gg++) red[gg] = fmaxf(red[gg], __shfl_xor_sync(KVQC_FULL, red[gg], o));
#pragma unroll
            for (int gg = 0; gg < GS; gg++) {
                const float mn = fmaxf(m[gg], red[gg]); /* finite: lane 0's token is valid */
                const float alpha = exp2f(m[gg] - mn);
                pv[gg] = valid ? exp2f(sc[gg] - mn) : 0.0f;
                red[gg] = pv[gg];
                l[gg] *= alpha;
#pragma unroll
                for (int e = 0; e < E; e++) acc[gg][e] *= alpha;
                m[gg] = mn;
            }
#pragma unroll
            for (int o = 16; o >= 1; o >>= 1)
#pragma unroll
                for (int gg = 0; gg < GS; gg++) red[gg] += __shfl_xor_sync(KVQC_FULL, red[gg], o);
#pragma unroll
            for (int gg = 0; gg < GS; gg++) {
                l[gg] += red[gg];
                s_pe[lane * GS + gg] = pv[gg];
            }
            __syncwarp();
            const int nt = min(32, n_ex - i0);
#pragma unroll(E == 8 ? 4 : 8)
            for (int tt = 0; tt < nt; tt++) {
                const int rr = __shfl_sync(KVQC_FULL, r, tt);
                float v[E];
#pragma unroll
                for (int e = 0; e < E; e++) v[e] = __half2float(ev[(size_t)rr * D + lane + 32 * e]);
#pragma unroll
                for (int gg = 0; gg < GS; gg++) {
                    const float pp = s_pe[tt * GS + gg];
#pragma unroll
                    for (int e = 0; e < E; e++) acc[gg][e] += pp * v[e];
                }
            }
            __syncwarp();
        }
        /* into the values' rotated domain (linear: once) */
#pragma unroll
        for (int gg = 0; gg < CHAN_GMAX; gg++) {
            if (gg >= G) break;
            kvqc_rotate<E>(a.vp, acc[gg], lane);
        }
        __syncthreads(); /* the warps' areas (s_pe) become the partial results */
    }
    /* the warps' states into one per query head */
#pragma unroll
    for (int gg = 0; gg < CHAN_GMAX; gg++) {
        if (gg >= G) break;
        float *ps = s_part + ((size_t)warp * G + gg) * (D + 2);
        if (lane_major && MMA) { /* cv: head lane & 3, dims 2 p, 2 p + 1 (chan_values_mma) */
            if ((lane & 3) == gg) {
#pragma unroll
                for (int mt = 0; mt < NCV; mt++) {
                    const int p = 2 * E * (lane >> 2) + mt;
                    *(float2 *)(ps + 2 * p) = make_float2(cv[mt][0] + cv[mt][1], cv[mt][2] + cv[mt][3]);
                }
                if (lane == gg) {
                    ps[D] = mq;
                    ps[D + 1] = lq;
                }
            }
        } else {
#pragma unroll
            for (int e = 0; e < E; e++) ps[lane_major ? E * lane + e : lane + 32 * e] = acc[gg][e];
            if (lane == 0) {
                ps[D] = m[gg];
                ps[D + 1] = l[gg];
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * (D + 2); i += blockDim.x) {
        const int gg = i / (D + 2), c = i % (D + 2);
        float M = -INFINITY;
        for (int w = 0; w < CHAN_WARPS; w++) M = fmaxf(M, s_part[((size_t)w * G + gg) * (D + 2) + D]);
        float r = 0.0f;
        if (c == D) {
            r = M;
        } else if (M != -INFINITY) {
            for (int w = 0; w < CHAN_WARPS; w++) {
                const float *ps = s_part + ((size_t)w * G + gg) * (D + 2);
                if (ps[D] != -INFINITY) r += ps[c] * exp2f(ps[D] - M);
            }
        }
        size_t qrow = (size_t)z * a.n_q_heads + (size_t)h * G + gg;
        a.partial[(qrow * a.slot_stride + split) * (D + 2) + c] = r;
    }
}

/* One block per (query head, sequence): the slots merged, then rotated back. Thread u
 * holds slot u's maximum and sum; its weight exp2(max - M) goes to shared memory once.
 * The block's NG groups of 128 threads take turns of CHAN_COMBINE_U slots (group g the
 * turns g, g + NG, ...): thread i of a group sums coordinate i over its slots with
 * CHAN_COMBINE_U loads in flight (as attend.cu's merge), and group 0 adds the other
 * groups' sums in order (NG > 1: more loads in flight where a few rows merge many slots,
 * batch 1). An empty slot stores acc = sum = 0 and max = -inf (weight 0). */
#define CHAN_COMBINE_U 16
#ifndef CHAN_COMBINE_NG
#define CHAN_COMBINE_NG 4
#endif
template <int E, int NG>
__global__ void __launch_bounds__(128 * NG) chan_combine_kernel(const kvqc_params *vp, const float *partial, int n_slots,
                                                                int n_q_heads, float *out) {
    constexpr int T = 128 * NG, NW = 4 * NG;
    __shared__ float s_red[NW];
    __shared__ float s_out[32 * E];
    __shared__ float s_part[NG > 1 ? NG - 1 : 1][32 * E];
    __shared__ __align__(16) float s_w[T];
    const int D = 32 * E, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, grp = tid >> 7, ci = tid & 127;
    const size_t row = (size_t)blockIdx.y * n_q_heads + blockIdx.x;
    const float *p = partial + row * n_slots * (D + 2);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory"); /* launched early: the slots once written */
#endif
    constexpr int NI = (32 * E + 127) / 128, U = CHAN_COMBINE_U;
    float m_own = -INFINITY, l_own = 0.0f;
    if (tid < n_slots) {
        m_own = p[(size_t)tid * (D + 2) + D];
        l_own = p[(size_t)tid * (D + 2) + D + 1];
    }
    float M = m_own;
    for (int u = tid + T; u < n_slots; u += T) M = fmaxf(M, p[(size_t)u * (D + 2) + D]);
    M = kvqc_warp_max(M);
    if (lane == 0) s_red[warp] = M;
    __syncthreads();
    M = s_red[0];
#pragma unroll
    for (int k = 1; k < NW; k++) M = fmaxf(M, s_red[k]);
    float acc[NI], L = 0.0f;
#pragma unroll
    for (int j = 0; j < NI; j++) acc[j] = 0.0f;
    if (M != -INFINITY) { /* the same in every thread: the barriers below are uniform */
        for (int u0 = 0; u0 < n_slots; u0 += T) {
            const int nu = min(T, n_slots - u0);
            __syncthreads();
            float w = 0.0f; /* past nu: 0 */
            if (tid < nu) w = kvqc_slot_weight(u0 > 0 ? p + (size_t)(u0 + tid) * (D + 2) : NULL, D, m_own, l_own, M, L);
            s_w[tid] = w;
            __syncthreads();
            for (int k0 = U * grp; k0 < nu; k0 += U * NG) {
#pragma unroll
                for (int j = 0; j < NI; j++) {
                    const int i = ci + 128 * j;
                    if (NI * 128 > D && i >= D) break;
                    const float *pk = p + (size_t)(u0 + k0) * (D + 2) + i;
                    float x[U];
#pragma unroll
                    for (int k = 0; k < U; k++) x[k] = k0 + k < nu ? pk[(size_t)k * (D + 2)] : 0.0f;
#pragma unroll
                    for (int k = 0; k < U; k++) acc[j] += x[k] * s_w[k0 + k];
                }
            }
        }
    }
    L = kvqc_warp_sum(L);
    __syncthreads();
    if (lane == 0) s_red[warp] = L;
    if (NG > 1 && grp > 0)
#pragma unroll
        for (int j = 0; j < NI; j++) {
            const int i = ci + 128 * j;
            if (i < D) s_part[grp - 1][i] = acc[j];
        }
    __syncthreads();
    L = (s_red[0] + s_red[1]) + (s_red[2] + s_red[3]);
#pragma unroll
    for (int k = 4; k < NW; k++) L += s_red[k];
    if (grp == 0)
#pragma unroll
        for (int j = 0; j < NI; j++) {
            const int i = ci + 128 * j;
            if (i < D) {
                float a = acc[j];
#pragma unroll
                for (int g = 1; g < NG; g++) a += s_part[g - 1][i];
                s_out[i] = L > 0.0f ? a / L : 0.0f;
            }
        }
    __syncthreads();
    if (warp != 0) return;
    float v[E];
#pragma unroll
    for (int e = 0; e < E; e++) v[e] = s_out[lane + 32 * e];
    kvqc_unrotate_store<E>(vp, v, lane, out + row * D);
}

/* ------------------------------------------------------------- host side */

typedef void (*chan_attend_fn)(chan_attn_args);

/* Weights a channel in the attention kernel: 4 for up to 4 query heads per KV head (G)
 * whose values the tensor-core kernel takes (1-4 bits), else 8. */
static int chan_gs(uint32_t G, uint32_t vbits) { return G <= 4 && (!CHAN_MMA || vbits <= 4) ? 4 : 8; }

/* The attention kernel for a head dim, weights a channel (GS), transposed-plane layout
 * (tp: in place) and chunk lookup (pg: through the page table). */
template <int E, bool PG> static chan_attend_fn attend_kernel_e(int GS, bool tp, bool sv) {
    if (tp && GS == 4 && sv && chan_mma(4)) return chan_attend_kernel<E, 4, true, PG, true>;
    return tp ? (GS == 4 ? chan_attend_kernel<E, 4, true, PG, false> : chan_attend_kernel<E, 8, true, PG, false>)
              : (GS == 4 ? chan_attend_kernel<E, 4, false, PG, false> : chan_attend_kernel<E, 8, false, PG, false>);
}
/* (sv: one value buffer a warp, QS; only with the tensor-core scores and tp) */
template <bool PG> static chan_attend_fn attend_kernel_pg(uint32_t D, int GS, bool tp, bool sv) {
    return D == 64 ? attend_kernel_e<2, PG>(GS, tp, sv) : D == 128 ? attend_kernel_e<4, PG>(GS, tp, sv)
                                                               : attend_kernel_e<8, PG>(GS, tp, sv);
}
static chan_attend_fn attend_kernel_for(uint32_t D, int GS, bool tp, bool pg = false, bool sv = false) {
    return pg ? attend_kernel_pg<true>(D, GS, tp, sv) : attend_kernel_pg<false>(D, GS, tp, sv);
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_create(const kvq_cache_config *cfg, kvq_cuda_chan **out) {
    if (!out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    if (!cfg) return KVQ_ERR_INVALID_ARG;
    int n_dev = 0;
    kvq_status st = kvq_cuda_available(&n_dev);
    if (st != KVQ_OK) return st;
    uint32_t D = cfg->head_dim, C = cfg->chunk_tokens ? cfg->chunk_tokens : 64;
    if (cfg->key.method != KVQ_METHOD_CHANNEL || cfg->value.method != KVQ_METHOD_TURBOQUANT_MSE)
        return KVQ_ERR_UNSUPPORTED;
    if (cfg->key.rope_base > 0.0f) return KVQ_ERR_UNSUPPORTED; /* keys before RoPE: the CPU cache only */
    if (D != 64 && D != 128 && D != 256) return KVQ_ERR_UNSUPPORTED;
    if (cfg->key.bits < 1 || cfg->key.bits > 8 || C % 64 != 0 || C > 4096) return KVQ_ERR_UNSUPPORTED;
    if (cfg->sliding_window || cfg->n_outliers || cfg->n_kv_heads == 0 || cfg->n_kv_heads > 65535)
        return KVQ_ERR_UNSUPPORTED;
    if (cfg->window > (1u << 20) || cfg->n_sink > 1024) return KVQ_ERR_UNSUPPORTED;
    kvq_config vc = cfg->value;
    vc.dim = D;
    kvq_quantizer *vq = NULL;
    if ((st = kvq_quantizer_create(&vc, &vq)) != KVQ_OK) return st;
    kvq_cuda_chan *kc = (kvq_cuda_chan *)calloc(1, sizeof *kc);
    if (!kc) {
        kvq_quantizer_free(vq);
        return KVQ_ERR_NOMEM;
    }
    st = kvq_cuda_quantizer_create(vq, &kc->vq);
    uint32_t vcs = (uint32_t)kvq_code_size(vq);
    kvq_quantizer_free(vq);
    if (st != KVQ_OK) {
        free(kc);
        return st;
    }
    if (kc->vq->p.kind != KVQC_MSE || kc->vq->p.bits > 8) {
        kvq_cuda_chan_free(kc);
        return KVQ_ERR_UNSUPPORTED;
    }
    kc->cfg = *cfg;
    kc->D = D;
    kc->C = C;
    kc->W = cfg->window;
    kc->n_sink = cfg->n_sink;
    kc->bits = cfg->key.bits;
    kc->R = kc->W + C;
    kc->exact_rows = kc->n_sink + kc->R;
    kc->head_bytes = (uint32_t)round16(qsum_at(D) + 8 * (uint64_t)D + 8);
    kc->key_block = 4 * D + C * D * kc->bits / 8;
    kc->vcs = vcs;
    kc->n_sm = kc->vq->n_sm;
    size_t smem = attn_smem_words((int)D, CHAN_GMAX, 8, (int)(kc->bits * D), (int)vcs, false, false) * 4;
    if (smem + 256 * (sizeof(float) + 2 * sizeof(float)) > kc->vq->smem_optin) { /* + the static centroid tables */
        kvq_cuda_chan_free(kc);
        return KVQ_ERR_UNSUPPORTED;
    }
    cudaError_t e = cudaSuccess;
    /* every variant, contiguous and paged: GS 4 / 8 x tp 0 / 1, then the sv kernel (v 4) */
    for (int pg = 0; pg < 2 && e == cudaSuccess; pg++)
        for (int v = 0; v < 5 && e == cudaSuccess; v++)
            e = cudaFuncSetAttribute((const void *)attend_kernel_for(D, v & 1 ? 8 : 4, v >= 2, pg != 0, v == 4),
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) {
        cudaGetLastError();
        kvq_cuda_chan_free(kc);
        return kvqc_status(e);
    }
    *out = kc;
    return KVQ_OK;
}

extern "C" KVQ_API void kvq_cuda_chan_free(kvq_cuda_chan *kc) {
    if (!kc) return;
    kvq_cuda_quantizer_free(kc->vq);
    free(kc);
}

/* paged: the coded chunks live in pages, so the keys and values regions are empty */
static kvq_status layout_impl(const kvq_cuda_chan *kc, uint32_t batch, uint32_t capacity, bool paged,
                              kvq_cuda_chan_layout *o) {
    if (!kc || !o || batch == 0 || capacity == 0 || capacity % kc->C != 0) return KVQ_ERR_INVALID_ARG;
    if (capacity > (uint32_t)INT32_MAX) return KVQ_ERR_UNSUPPORTED;
    memset(o, 0, sizeof *o);
    const uint64_t rows = (uint64_t)batch * kc->cfg.n_kv_heads, held = paged ? 0 : capacity;
    uint64_t at = 0;
    o->heads = at;
    at = round16(at + rows * kc->head_bytes);
    o->keys = at;
    at = round16(at + rows * (held / kc->C) * (uint64_t)kc->key_block);
    o->values = at;
    at = round16(at + rows * held * (uint64_t)kc->vcs);
    o->exact_k = at;
    at = round16(at + rows * kc->exact_rows * (uint64_t)kc->D * 2);
    o->exact_v = at;
    at = round16(at + rows * kc->exact_rows * (uint64_t)kc->D * 2);
    o->bytes = at;
    o->head_bytes = kc->head_bytes;
    o->key_block = kc->key_block;
    o->value_code = kc->vcs;
    o->exact_rows = kc->exact_rows;
    o->chunk_tokens = kc->C;
    o->window = kc->W;
    o->n_sink = kc->n_sink;
    o->bits = kc->bits;
    return KVQ_OK;
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_layout_of(const kvq_cuda_chan *kc, uint32_t batch, uint32_t capacity,
                                                      kvq_cuda_chan_layout *o) {
    return layout_impl(kc, batch, capacity, false, o);
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_layout_paged(const kvq_cuda_chan *kc, uint32_t batch,
                                                         kvq_cuda_chan_layout *o) {
    return layout_impl(kc, batch, kc ? kc->C : 1, true, o);
}

/* A call's shape: the per-sequence buffer's layout and the tokens a sequence can hold
 * (contiguous: capacity; paged: max_pages whole chunks). */
static kvq_status chan_shape(const kvq_cuda_chan *kc, uint32_t batch, uint32_t capacity, const kvq_cuda_pages *pg,
                             kvq_cuda_chan_layout *L, uint32_t *cap) {
    if (!pg) {
        *cap = capacity;
        return layout_impl(kc, batch, capacity, false, L);
    }
    if (!kc || !pg->k_pages_dev || !pg->v_pages_dev || !pg->page_table_dev || pg->max_pages == 0)
        return KVQ_ERR_INVALID_ARG;
    if (pg->page_size != kc->C) return KVQ_ERR_INVALID_ARG;
    if (((uintptr_t)pg->k_pages_dev & 15u) || ((uintptr_t)pg->v_pages_dev & 15u)) return KVQ_ERR_INVALID_ARG;
    if ((uint64_t)pg->max_pages * kc->C > (uint64_t)INT32_MAX) return KVQ_ERR_UNSUPPORTED;
    *cap = pg->max_pages * kc->C;
    return layout_impl(kc, batch, kc->C, true, L);
}

static chan_geom geom_of(const kvq_cuda_chan *kc, const kvq_cuda_chan_layout *L, void *cache, uint32_t capacity,
                         const kvq_cuda_pages *pg = NULL) {
    chan_geom g;
    g.ptab = pg ? pg->page_table_dev : NULL;
    g.kpool = pg ? (uint8_t *)pg->k_pages_dev : NULL;
    g.vpool = pg ? (uint8_t *)pg->v_pages_dev : NULL;
    g.max_pages = pg ? (int)pg->max_pages : 1;
    g.cache = (uint8_t *)cache;
    g.heads = L->heads;
    g.keys = L->keys;
    g.values = L->values;
    g.exact_k = L->exact_k;
    g.exact_v = L->exact_v;
    g.D = (int)kc->D;
    g.C = (int)kc->C;
    g.W = (int)kc->W;
    g.n_sink = (int)kc->n_sink;
    g.R = (int)kc->R;
    g.exact_rows = (int)kc->exact_rows;
    g.head_bytes = (int)kc->head_bytes;
    g.key_block = (int)kc->key_block;
    g.vcs = (int)kc->vcs;
    g.capacity = (int)capacity;
    g.kstep = (int)((pg ? kc->cfg.n_kv_heads : 1) * kc->key_block);
    g.vstep = (int)((pg ? kc->cfg.n_kv_heads : 1) * kc->C * kc->vcs);
    g.bits = (int)kc->bits;
    g.n_kv = (int)kc->cfg.n_kv_heads;
    return g;
}

/* Append workspace: the values' round trips (fp32) and their codes. */
static size_t append_ws(const kvq_cuda_chan *kc, uint32_t batch, size_t *codes_at) {
    size_t rows = (size_t)batch * kc->cfg.n_kv_heads;
    *codes_at = (size_t)round16((uint64_t)rows * kc->D * 4);
    return *codes_at + rows * kc->vcs;
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_append_workspace(const kvq_cuda_chan *kc, uint32_t batch,
                                                             size_t *bytes) {
    if (!kc || !bytes || batch == 0) return KVQ_ERR_INVALID_ARG;
    size_t at;
    *bytes = append_ws(kc, batch, &at);
    return KVQ_OK;
}

static kvq_status chan_append_impl(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                   const void *v_dev, uint32_t batch, uint32_t capacity_in, const kvq_cuda_pages *pg,
                                   const int32_t *positions_dev, void *cache_dev, void *workspace_dev,
                                   size_t workspace_bytes, void *stream) {
    if (!kc || !k_dev || !v_dev || !positions_dev || !cache_dev || !workspace_dev) return KVQ_ERR_INVALID_ARG;
    if (dtype != KVQ_CUDA_F32 && dtype != KVQ_CUDA_F16 && dtype != KVQ_CUDA_BF16) return KVQ_ERR_INVALID_ARG;
    kvq_cuda_chan_layout L;
    uint32_t capacity = 0;
    kvq_status st = chan_shape(kc, batch, capacity_in, pg, &L, &capacity);
    if (st != KVQ_OK) return st;
    if ((uint64_t)batch * kc->cfg.n_kv_heads > (uint64_t)INT32_MAX / 4) return KVQ_ERR_UNSUPPORTED;
    size_t codes_at, need = append_ws(kc, batch, &codes_at);
    if (workspace_bytes < need) return KVQ_ERR_CAPACITY;
    if (((uintptr_t)cache_dev & 15u) || ((uintptr_t)workspace_dev & 15u)) return KVQ_ERR_INVALID_ARG;
    cudaStream_t s = (cudaStream_t)stream;
    chan_geom g = geom_of(kc, &L, cache_dev, capacity, pg);
    const unsigned rows = batch * kc->cfg.n_kv_heads;
    float *x = (float *)workspace_dev;
    chan_ring_kernel<<<rows, kc->D, 0, s>>>(g, (int)dtype, k_dev, v_dev, positions_dev, x);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return kvqc_status(e);
    /* the values with the general append: one page a sequence (contiguous) or the pages of
     * chunk_tokens tokens, which is kvq_cuda_append's paged layout */
    st = kvq_cuda_append(kc->vq, KVQ_CUDA_F32, x, batch, kc->cfg.n_kv_heads, positions_dev,
                         pg ? pg->page_table_dev : NULL, pg ? kc->C : capacity, pg ? pg->max_pages : 1,
                         pg ? (uint8_t *)pg->v_pages_dev : (uint8_t *)cache_dev + L.values,
                         (uint8_t *)workspace_dev + codes_at, need - codes_at, stream);
    if (st != KVQ_OK) return st;
    chan_code_kernel<<<rows, kc->D, 0, s>>>(g, positions_dev);
    return kvqc_status(cudaGetLastError());
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_append(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                                   const void *v_dev, uint32_t batch, uint32_t capacity,
                                                   const int32_t *positions_dev, void *cache_dev,
                                                   void *workspace_dev, size_t workspace_bytes, void *stream) {
    return chan_append_impl(kc, dtype, k_dev, v_dev, batch, capacity, NULL, positions_dev, cache_dev, workspace_dev,
                            workspace_bytes, stream);
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_append_paged(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype,
                                                         const void *k_dev, const void *v_dev, uint32_t batch,
                                                         const kvq_cuda_pages *pages, const int32_t *positions_dev,
                                                         void *cache_dev, void *workspace_dev,
                                                         size_t workspace_bytes, void *stream) {
    if (!pages) return KVQ_ERR_INVALID_ARG;
    return chan_append_impl(kc, dtype, k_dev, v_dev, batch, 0, pages, positions_dev, cache_dev, workspace_dev,
                            workspace_bytes, stream);
}

/* Multi-token append workspace: the values' round trips (fp32) and their codes, per
 * (sequence, kv head, token). */
static size_t append_n_ws(const kvq_cuda_chan *kc, uint64_t rows_n, size_t *codes_at) {
    *codes_at = (size_t)round16(rows_n * kc->D * 4);
    return *codes_at + (size_t)rows_n * kc->vcs;
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_append_n_workspace(const kvq_cuda_chan *kc, uint32_t batch, uint32_t n,
                                                               size_t *bytes) {
    if (!kc || !bytes || batch == 0 || n == 0) return KVQ_ERR_INVALID_ARG;
    size_t at;
    *bytes = append_n_ws(kc, (uint64_t)batch * kc->cfg.n_kv_heads * n, &at);
    return KVQ_OK;
}

static kvq_status chan_append_n_impl(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                     const void *v_dev, const uint64_t *strides, uint32_t batch, uint32_t n,
                                     uint32_t capacity_in, const kvq_cuda_pages *pg, const int32_t *positions_dev,
                                     void *cache_dev, void *workspace_dev, size_t workspace_bytes, void *stream) {
    if (!kc || !k_dev || !v_dev || !positions_dev || !cache_dev || !workspace_dev || n == 0)
        return KVQ_ERR_INVALID_ARG;
    if (dtype != KVQ_CUDA_F32 && dtype != KVQ_CUDA_F16 && dtype != KVQ_CUDA_BF16) return KVQ_ERR_INVALID_ARG;
    kvq_cuda_chan_layout L;
    uint32_t capacity = 0;
    kvq_status st = chan_shape(kc, batch, capacity_in, pg, &L, &capacity);
    if (st != KVQ_OK) return st;
    const uint64_t rows = (uint64_t)batch * kc->cfg.n_kv_heads, rows_n = rows * n;
    if (rows_n > (uint64_t)INT32_MAX / 4 || (n + kc->C - 1) / kc->C > 65535)
        return KVQ_ERR_UNSUPPORTED;
    uint64_t sd[6];
    const uint64_t D = kc->D;
    if (strides) {
        memcpy(sd, strides, sizeof sd);
        for (int i = 0; i < 6; i++)
            if (sd[i] > ((uint64_t)1 << 40)) return KVQ_ERR_INVALID_ARG;
    } else {
        sd[0] = sd[3] = (uint64_t)kc->cfg.n_kv_heads * n * D;
        sd[1] = sd[4] = (uint64_t)n * D;
        sd[2] = sd[5] = D;
    }
    size_t codes_at, need = append_n_ws(kc, rows_n, &codes_at);
    if (workspace_bytes < need) return KVQ_ERR_CAPACITY;
    if (((uintptr_t)cache_dev & 15u) || ((uintptr_t)workspace_dev & 15u)) return KVQ_ERR_INVALID_ARG;
    cudaStream_t s = (cudaStream_t)stream;
    chan_geom g = geom_of(kc, &L, cache_dev, capacity, pg);
    key_src ks = {k_dev, (int)dtype, (long long)sd[0], (long long)sd[1], (long long)sd[2]};
    key_src vs = {v_dev, (int)dtype, (long long)sd[3], (long long)sd[4], (long long)sd[5]};
    /* chunks first (they read older tokens from the ring, which the new ones overwrite):
     * chunk 0, then the later ones */
    const unsigned chunks = (n + kc->C - 1) / kc->C;
    chan_code_n_kernel<<<dim3((unsigned)rows, 1), kc->D, 0, s>>>(g, positions_dev, (int)n, ks, 1);
    chan_code_n_kernel<<<dim3((unsigned)rows, chunks), kc->D, 0, s>>>(g, positions_dev, (int)n, ks, 0);
    float *x = (float *)workspace_dev;
    chan_ring_n_kernel<<<(unsigned)rows_n, kc->D, 0, s>>>(g, (int)dtype, k_dev, v_dev, ks, vs, positions_dev, (int)n,
                                                            x);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return kvqc_status(e);
    uint8_t *codes = (uint8_t *)workspace_dev + codes_at;
    if ((st = kvq_cuda_encode(kc->vq, KVQ_CUDA_F32, x, (size_t)rows_n, codes, stream)) != KVQ_OK) return st;
    chan_scatter_n_kernel<<<(unsigned)((rows_n + 3) / 4), 128, 0, s>>>(g, codes, positions_dev, (int)n,
                                                                     (long long)rows_n);
    return kvqc_status(cudaGetLastError());
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_append_n(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                                     const void *v_dev, const uint64_t *strides, uint32_t batch,
                                                     uint32_t n, uint32_t capacity, const int32_t *positions_dev,
                                                     void *cache_dev, void *workspace_dev, size_t workspace_bytes,
                                                     void *stream) {
    return chan_append_n_impl(kc, dtype, k_dev, v_dev, strides, batch, n, capacity, NULL, positions_dev, cache_dev,
                              workspace_dev, workspace_bytes, stream);
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_append_n_paged(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype,
                                                           const void *k_dev, const void *v_dev,
                                                           const uint64_t *strides, uint32_t batch, uint32_t n,
                                                           const kvq_cuda_pages *pages, const int32_t *positions_dev,
                                                           void *cache_dev, void *workspace_dev,
                                                           size_t workspace_bytes, void *stream) {
    if (!pages) return KVQ_ERR_INVALID_ARG;
    return chan_append_n_impl(kc, dtype, k_dev, v_dev, strides, batch, n, 0, pages, positions_dev, cache_dev,
                              workspace_dev, workspace_bytes, stream);
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_observe_queries(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype,
                                                           const void *q_dev, const uint64_t *strides, uint32_t batch,
                                                           uint32_t n_q_heads, uint32_t n, uint32_t capacity,
                                                           const int32_t *positions_dev, void *cache_dev,
                                                           void *stream) {
    if (!kc || !q_dev || !positions_dev || !cache_dev || n == 0 || n_q_heads == 0) return KVQ_ERR_INVALID_ARG;
    if (dtype != KVQ_CUDA_F32 && dtype != KVQ_CUDA_F16 && dtype != KVQ_CUDA_BF16) return KVQ_ERR_INVALID_ARG;
    if (n_q_heads % kc->cfg.n_kv_heads != 0) return KVQ_ERR_MISMATCH;
    kvq_cuda_chan_layout L;
    kvq_status st = kvq_cuda_chan_layout_of(kc, batch, capacity, &L);
    if (st != KVQ_OK) return st;
    const uint64_t rows = (uint64_t)batch * kc->cfg.n_kv_heads, D = kc->D;
    if (rows > (uint64_t)INT32_MAX || n > (uint32_t)INT32_MAX || n_q_heads > 65535) return KVQ_ERR_UNSUPPORTED;
    if ((uintptr_t)cache_dev & 15u) return KVQ_ERR_INVALID_ARG;
    uint64_t sd[3];
    if (strides) {
        memcpy(sd, strides, sizeof sd);
        for (int i = 0; i < 3; i++)
            if (sd[i] > ((uint64_t)1 << 40)) return KVQ_ERR_INVALID_ARG;
    } else {
        sd[0] = (uint64_t)n_q_heads * n * D;
        sd[1] = (uint64_t)n * D;
        sd[2] = D;
    }
    chan_geom g = geom_of(kc, &L, cache_dev, capacity);
    chan_observe_kernel<<<(unsigned)rows, kc->D, 0, (cudaStream_t)stream>>>(
        g, (int)dtype, q_dev, (long long)sd[0], (long long)sd[1], (long long)sd[2],
        (int)(n_q_heads / kc->cfg.n_kv_heads), (int)n, positions_dev);
    return kvqc_status(cudaGetLastError());
}

typedef struct attn_plan {
    int n_split, cps, n_slots; /* n_slots - n_split blocks for the exact tokens */
    bool tp, sv; /* sv: one value buffer a warp (QS) */
    int gs; /* weights a channel: chan_gs */
    size_t smem;
} attn_plan;

static kvq_status check_attn(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d) {
    if (!kc || !d) return KVQ_ERR_INVALID_ARG;
    if (d->batch == 0 || d->n_q_heads == 0 || d->capacity == 0 || d->max_len > d->capacity) return KVQ_ERR_INVALID_ARG;
    if (d->n_kv_heads != kc->cfg.n_kv_heads || d->head_dim != kc->D) return KVQ_ERR_MISMATCH;
    if (d->n_q_heads % d->n_kv_heads != 0 || d->capacity % kc->C != 0) return KVQ_ERR_INVALID_ARG;
    if (d->q_dtype != KVQ_CUDA_F32 && d->q_dtype != KVQ_CUDA_F16 && d->q_dtype != KVQ_CUDA_BF16)
        return KVQ_ERR_INVALID_ARG;
    if (d->n_q_heads / d->n_kv_heads > CHAN_GMAX) return KVQ_ERR_UNSUPPORTED;
    if (d->batch > 65535 || d->n_kv_heads > 65535 || d->n_q_heads > 65535) return KVQ_ERR_UNSUPPORTED;
    if (d->capacity > (uint32_t)INT32_MAX) return KVQ_ERR_UNSUPPORTED;
    return KVQ_OK;
}

static int blocks_per_sm(chan_attend_fn f, size_t smem) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, (const void *)f, 128, smem) != cudaSuccess) {
        cudaGetLastError();
        n = 0;
    }
    return n;
}

/* Split the coded chunks (whole chunks a split) so the grid holds about four waves of
 * per_sm resident blocks (batch 8 at 128k: 1.14x two waves), but no split of fewer than
 * CHAN_SPLIT_MIN_CHUNKS chunks unless that leaves less than one wave (batch 4 at 32k:
 * 32 splits of 8 chunks 1.03x 64 of 4), and at most CHAN_SPLIT_MAX splits a (sequence,
 * KV head): past that, at batch 1, the splits' fixed costs and the merge's loads outweigh
 * the balance (32k: 64 splits of 4 chunks 1.45x 132 of 2);
 * KVQ_CUDA_ATTN_ONE_SPLIT: one block per (sequence, kv head). */
static void split_attn(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d, uint32_t q_per_seq, int per_sm,
                       attn_plan *p) {
    uint64_t len = d->max_len;
    uint64_t chunks = len > kc->W ? (len - kc->W) / kc->C : 0;
    uint64_t base = (uint64_t)d->batch * q_per_seq * d->n_kv_heads;
    uint64_t wave = (uint64_t)kc->n_sm * per_sm, target = wave * CHAN_WAVES10 / 10;
    uint64_t ns = (target + base - 1) / base;
    /* splits of CHAN_SPLIT_MIN_CHUNKS chunks at least, unless fewer splits leave a wave unfilled */
    uint64_t most = (chunks + CHAN_SPLIT_MIN_CHUNKS - 1) / CHAN_SPLIT_MIN_CHUNKS, one_wave = wave / base;
    if (most < one_wave) most = one_wave;
    if (ns > most) ns = most;
    if (ns > CHAN_SPLIT_MAX) ns = CHAN_SPLIT_MAX;
    if (d->flags & KVQ_CUDA_ATTN_ONE_SPLIT) ns = 1;
    if (ns > chunks) ns = chunks;
    if (ns > 65534) ns = 65534;
    if (ns == 0) {
        p->n_split = 0;
        p->cps = 1;
    } else {
        uint64_t cps = (chunks + ns - 1) / ns;
        p->cps = (int)cps;
        p->n_split = (int)((chunks + cps - 1) / cps);
    }
}

/* The kernel variant (tp, sv), its shared memory and the split of the chunks. */
static void plan_attn(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d, uint32_t q_per_seq, attn_plan *p) {
    const int D = (int)kc->D, G = (int)(d->n_q_heads / d->n_kv_heads), GS = chan_gs(G, kc->vq->p.bits);
    p->gs = GS;
    /* the transposed planes in place (one more load per channel) when that fits more
     * blocks on an SM, else as pairs of words */
    int per_sm = 1;
    p->tp = false;
    for (int tp = 0; tp < 2; tp++) {
        if (tp && chan_mma(GS) && !CHAN_QT) break;
        const size_t smem = attn_smem_words(D, G, GS, (int)(kc->bits * kc->D), (int)kc->vcs, tp != 0, false) * 4;
        const int n = blocks_per_sm(attend_kernel_for(kc->D, GS, tp != 0), smem);
        /* (the tensor-core scores take QT whenever it fits as many blocks: built without
         * the per-warp weights, the chunk's set-up is shorter; CHAN_QT=0 at build time
         * keeps the per-warp weights, for comparison) */
        if (tp == 0 || n > per_sm || (chan_mma(GS) && n == per_sm)) {
            p->smem = smem;
            p->tp = tp != 0;
            per_sm = n;
        }
    }
    if (per_sm < 1) per_sm = 1;
    split_attn(kc, d, q_per_seq, per_sm, p);
    /* QS when it fits more blocks an SM and a split still takes more than one chunk: its
     * values' copy waits behind the scores, which only pays where more blocks hide it
     * (q4: 4 blocks an SM instead of 3, 1.04-1.11x at 32k-128k; at one chunk a split,
     * batch 1 at 4k, 0.90x) */
    p->sv = false;
    if (CHAN_SV && p->tp && chan_mma(GS)) {
        const size_t smem = attn_smem_words(D, G, GS, (int)(kc->bits * kc->D), (int)kc->vcs, true, true) * 4;
        const int n = blocks_per_sm(attend_kernel_for(kc->D, GS, true, false, true), smem);
        const bool forced = CHAN_SV == 2 && n > 0;
        if (n > per_sm || forced) {
            attn_plan q = *p;
            split_attn(kc, d, q_per_seq, n, &q);
            if (q.cps > 1 || forced) {
                *p = q;
                p->sv = true;
                p->smem = smem;
            }
        }
    }
    /* the exact tokens (sinks, window and the filling chunk: up to n_sink + W + C) a round
     * of 32 a warp: over two blocks when one would take more than one round a warp */
    p->n_slots = p->n_split + (kc->n_sink + kc->R > 32 * CHAN_WARPS ? 2 : 1);
}

/* Workspace floats of a call with q_per_seq query rows a sequence (prefill: one more slot
 * a row, the new tokens'); 0 on overflow. */
static size_t chan_ws_bytes(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d, uint32_t q_per_seq, int prefill,
                            const attn_plan *p) {
    uint64_t rows = (uint64_t)d->batch * q_per_seq * d->n_q_heads, per = (uint64_t)(p->n_slots + prefill) * (kc->D + 2);
    if (rows > SIZE_MAX / sizeof(float) / per) return 0;
    return (size_t)(rows * per * sizeof(float));
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_attend_workspace(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d,
                                                             size_t *bytes) {
    if (!bytes) return KVQ_ERR_INVALID_ARG;
    kvq_status st = check_attn(kc, d);
    if (st != KVQ_OK) return st;
    attn_plan p;
    plan_attn(kc, d, 1, &p);
    *bytes = chan_ws_bytes(kc, d, 1, 0, &p);
    return *bytes ? KVQ_OK : KVQ_ERR_OVERFLOW;
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_prefill_workspace(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d,
                                                              uint32_t n_new, size_t *bytes) {
    if (!bytes || n_new == 0) return KVQ_ERR_INVALID_ARG;
    kvq_status st = check_attn(kc, d);
    if (st != KVQ_OK) return st;
    if ((uint64_t)d->batch * n_new > 65535) return KVQ_ERR_UNSUPPORTED;
    attn_plan p;
    plan_attn(kc, d, n_new, &p);
    *bytes = chan_ws_bytes(kc, d, n_new, 1, &p);
    return *bytes ? KVQ_OK : KVQ_ERR_OVERFLOW;
}

/* Decode (n_new 0: one query row a sequence) or prefill (n_new rows a sequence over the
 * same cache, and the new tokens exactly as one more slot) */
static kvq_status chan_run(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d, const kvq_cuda_pages *pg,
                           uint32_t n_new, const void *q_dev, const void *k_new_dev, const void *v_new_dev,
                           const void *cache_dev, const int32_t *seq_lens_dev, void *workspace_dev,
                           size_t workspace_bytes, float *out_dev, void *stream) {
    if (!kc || !d) return KVQ_ERR_INVALID_ARG;
    /* paged: a sequence holds max_pages chunks, which desc->capacity states (the
     * workspace functions read the same desc) */
    if (pg && (uint64_t)pg->max_pages * kc->C != d->capacity) return KVQ_ERR_INVALID_ARG;
    kvq_status st = check_attn(kc, d);
    if (st != KVQ_OK) return st;
    if (!q_dev || !cache_dev || !seq_lens_dev || !workspace_dev || !out_dev) return KVQ_ERR_INVALID_ARG;
    if (n_new && (!k_new_dev || !v_new_dev)) return KVQ_ERR_INVALID_ARG;
    if ((uintptr_t)cache_dev & 15u) return KVQ_ERR_INVALID_ARG; /* 16-byte copies */
    const uint32_t qps = n_new ? n_new : 1;
    const int prefill = n_new != 0;
    if ((uint64_t)d->batch * qps > 65535) return KVQ_ERR_UNSUPPORTED;
    attn_plan p;
    plan_attn(kc, d, qps, &p);
    size_t need = chan_ws_bytes(kc, d, qps, prefill, &p);
    if (need == 0) return KVQ_ERR_OVERFLOW;
    if (workspace_bytes < need) return KVQ_ERR_CAPACITY;
    kvq_cuda_chan_layout L;
    uint32_t cap = 0;
    if ((st = chan_shape(kc, d->batch, d->capacity, pg, &L, &cap)) != KVQ_OK) return st;
    chan_attn_args a;
    memset(&a, 0, sizeof a);
    a.g = geom_of(kc, &L, (void *)cache_dev, cap, pg);
    a.vp = kc->vq->p_dev;
    a.vbits = kc->vq->p.bits;
    a.seq_lens = seq_lens_dev;
    a.q = q_dev;
    a.q_dtype = (int)d->q_dtype;
    a.q_scale = d->scale * LOG2E;
    a.partial = (float *)workspace_dev;
    a.n_q_heads = (int)d->n_q_heads;
    a.G = (int)(d->n_q_heads / d->n_kv_heads);
    a.cps = p.cps;
    a.n_split = p.n_split;
    a.n_slots = p.n_slots;
    a.slot_stride = p.n_slots + prefill;
    a.q_per_seq = (int)qps;
    cudaStream_t s = (cudaStream_t)stream;
    dim3 grid((unsigned)p.n_slots, d->n_kv_heads, d->batch * qps), rows(d->n_q_heads, d->batch * qps);
    attend_kernel_for(kc->D, p.gs, p.tp, pg != NULL, p.sv)<<<grid, 128, p.smem, s>>>(a);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return kvqc_status(e);
    void (*combine)(const kvqc_params *, const float *, int, int, float *) =
        kc->D == 64    ? chan_combine_kernel<2, CHAN_COMBINE_NG>
        : kc->D == 128 ? chan_combine_kernel<4, CHAN_COMBINE_NG>
                       : chan_combine_kernel<8, CHAN_COMBINE_NG>;
    const kvqc_params *vp = kc->vq->p_dev;
    const float *part = a.partial;
    if (prefill) { /* the new tokens' slot, then an ordinary merge */
        e = kvqc_launch_exact(vp, (int)kc->D, (int)d->q_dtype, q_dev, k_new_dev, v_new_dev, (int)n_new,
                              (int)d->n_q_heads, (int)d->n_kv_heads, a.G, d->scale, a.partial, a.slot_stride,
                              p.n_slots, d->batch * qps, s);
        if (e != cudaSuccess) return kvqc_status(e);
        combine<<<rows, 128 * CHAN_COMBINE_NG, 0, s>>>(vp, part, a.slot_stride, a.n_q_heads, out_dev);
        return kvqc_status(cudaGetLastError());
    }
    /* the merge as a programmatic dependent launch: scheduled while the attention's last
     * blocks run, it waits for their slots (griddepcontrol.wait) */
    cudaLaunchConfig_t lc;
    memset(&lc, 0, sizeof lc);
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    lc.gridDim = rows;
    lc.blockDim = dim3(128 * CHAN_COMBINE_NG);
    lc.stream = s;
    lc.attrs = at;
    lc.numAttrs = 1;
    e = cudaLaunchKernelEx(&lc, combine, vp, part, a.n_slots, a.n_q_heads, out_dev);
    if (e != cudaSuccess) { /* no programmatic launch here: an ordinary one */
        cudaGetLastError();
        combine<<<rows, 128 * CHAN_COMBINE_NG, 0, s>>>(vp, part, a.n_slots, a.n_q_heads, out_dev);
    }
    return kvqc_status(cudaGetLastError());
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_attend(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d,
                                                   const void *q_dev, const void *cache_dev,
                                                   const int32_t *seq_lens_dev, void *workspace_dev,
                                                   size_t workspace_bytes, float *out_dev, void *stream) {
    return chan_run(kc, d, NULL, 0, q_dev, NULL, NULL, cache_dev, seq_lens_dev, workspace_dev, workspace_bytes,
                    out_dev, stream);
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_attend_paged(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d,
                                                         const kvq_cuda_pages *pages, const void *q_dev,
                                                         const void *cache_dev, const int32_t *seq_lens_dev,
                                                         void *workspace_dev, size_t workspace_bytes, float *out_dev,
                                                         void *stream) {
    if (!pages) return KVQ_ERR_INVALID_ARG;
    return chan_run(kc, d, pages, 0, q_dev, NULL, NULL, cache_dev, seq_lens_dev, workspace_dev, workspace_bytes,
                    out_dev, stream);
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_prefill(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d,
                                                    uint32_t n_new, const void *q_dev, const void *k_new_dev,
                                                    const void *v_new_dev, const void *cache_dev,
                                                    const int32_t *seq_lens_dev, void *workspace_dev,
                                                    size_t workspace_bytes, float *out_dev, void *stream) {
    if (n_new == 0) return KVQ_ERR_INVALID_ARG;
    return chan_run(kc, d, NULL, n_new, q_dev, k_new_dev, v_new_dev, cache_dev, seq_lens_dev, workspace_dev,
                    workspace_bytes, out_dev, stream);
}

extern "C" KVQ_API kvq_status kvq_cuda_chan_prefill_paged(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *d,
                                                          const kvq_cuda_pages *pages, uint32_t n_new,
                                                          const void *q_dev, const void *k_new_dev,
                                                          const void *v_new_dev, const void *cache_dev,
                                                          const int32_t *seq_lens_dev, void *workspace_dev,
                                                          size_t workspace_bytes, float *out_dev, void *stream) {
    if (!pages || n_new == 0) return KVQ_ERR_INVALID_ARG;
    return chan_run(kc, d, pages, n_new, q_dev, k_new_dev, v_new_dev, cache_dev, seq_lens_dev, workspace_dev,
                    workspace_bytes, out_dev, stream);
}
