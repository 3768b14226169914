/*
 * attend_mma.cu - tensor-core decode attention for 1-bit keys (turboquant_rvq with one
 * bit per pass, 1-bit RaBitQ, 1-bit turboquant_mse) and 2- or 4-bit turboquant_mse
 * values, head_dim 128, up to 4 query heads per KV head. Two kernels: attend_bits_kernel
 * (below: integer mma; 2-bit values with a symmetric codebook as and-masked code bytes,
 * 4-bit values through a prmt table of 14-bit levels) and attend_mma_kernel (4-bit values
 * behind rvq keys of 3-4 passes, 2-bit values with an asymmetric codebook), which streams
 * tiles of 16 tokens per warp
 * (cp.async, double-buffered) and runs mma.m16n8k16 twice per tile:
 *   scores  S^T = K Q^T:  A = sign planes as +-1 halves (exact), B = the rotated query
 *           split into fp16 high and low parts (columns 2h, 2h+1), fp32 accumulation;
 *   values  O^T += V^T P^T: A = codebook entries rounded to fp16, B = softmax weights
 *           times the value norm, split the same way as the query.
 * The query and weight splits keep those operands at fp32 accuracy for free (they ride
 * in spare mma columns); the codebook is a single fp16 operand, whose rounding (under
 * 2^-11 relative per entry) is the kernel's main error. Every multiply runs on the
 * tensor cores (FlashDecoding's split-K, arXiv 2311.01282).
 */
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "cuda/attend.h"

#define MMA_WARPS 4
#define TILE 16
#define KBUF 1184 /* 16 tokens x 72 bytes (rvq, 4 passes) + read-ahead pad */
#define VBUF 1088 /* 16 tokens x 66 bytes (mse 4-bit) + pad */

enum { KEY_RVQ = 0, KEY_RABITQ = 1, KEY_MSE1 = 2 };

__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes));
}
/* the same with a shared-memory address computed once (whole 16-byte chunks) */
__device__ __forceinline__ void cp_async16_s(unsigned dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }

/* Half-word bit position p (8..15) as an fp16 A element: base_p when clear, base_p | bit
 * when set; both finite and distinct. */
__device__ __forceinline__ unsigned key_base(int p) {
    /* 8, 9: 1.0 (mantissa bits); 10..13: exponent bits clear in the base; 14: 0 -> 2;
     * 15: sign bit, 1.0 -> -1.0 */
    const unsigned short b = p <= 9 ? 0x3C00 : p == 10 ? 0x3800 : p == 11 ? 0x3400 : p == 12 ? 0x2C00
                           : p == 13 ? 0x1C00 : p == 14 ? 0x0000 : 0x3C00;
    return (unsigned)b * 0x00010001u;
}
/* The element as c + e s (s = +1 for a set bit): e = (v1 - v0) / 2, c = (v1 + v0) / 2. */
__device__ __forceinline__ void key_affine(int p, float *e, float *c) {
    unsigned short b = (unsigned short)key_base(p);
    float v0 = __half2float(__ushort_as_half(b));
    float v1 = __half2float(__ushort_as_half((unsigned short)(b | (1u << p))));
    *e = 0.5f * (v1 - v0);
    *c = 0.5f * (v1 + v0);
}
__device__ __forceinline__ unsigned key_elem(unsigned w, unsigned mask, unsigned base) {
    return (w & mask) | base; /* one lop3 */
}


__device__ __forceinline__ unsigned short f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ __forceinline__ float h2f(unsigned short h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ unsigned pack2(unsigned short lo, unsigned short hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

/* A 32-bit little-endian word at any even byte offset of shared memory. */
__device__ __forceinline__ unsigned ld_word(const uint8_t *base, int off) {
    const unsigned *w = (const unsigned *)(base + (off & ~3));
    return __funnelshift_r(w[0], w[1], (off & 3) * 8);
}
__device__ __forceinline__ float ld_h(const uint8_t *base, int off) {
    return h2f(*(const unsigned short *)(base + off));
}

__device__ __forceinline__ void issue_tile(uint8_t *sk, uint8_t *sv, const uint8_t *gk,
                                           const uint8_t *gv, int kcs, int vcs, int n_valid,
                                           int lane) {
    if (n_valid == TILE) { /* whole tiles: 16 rows = kcs (vcs) chunks of 16 bytes */
        for (int c = lane; c < kcs; c += 32) cp_async16(sk + 16 * c, gk + 16 * c, 16);
        for (int c = lane; c < vcs; c += 32) cp_async16(sv + 16 * c, gv + 16 * c, 16);
        return;
    }
    int kvalid = n_valid * kcs, vvalid = n_valid * vcs;
    for (int c = lane; c < kcs; c += 32) {
        int off = 16 * c, nb = min(max(kvalid - off, 0), 16);
        cp_async16(sk + off, nb > 0 ? gk + off : gk, nb);
    }
    for (int c = lane; c < vcs; c += 32) {
        int off = 16 * c, nb = min(max(vvalid - off, 0), 16);
        cp_async16(sv + off, nb > 0 ? gv + off : gv, nb);
    }
}

template <int VB, int R>
__global__ void __launch_bounds__(MMA_WARPS * 32) attend_mma_kernel(kvqc_attn_args a, int key_kind) {
    __shared__ __align__(16) uint8_t s_k[MMA_WARPS][2][KBUF];
    __shared__ __align__(16) uint8_t s_v[MMA_WARPS][2][VBUF];
    __shared__ unsigned s_vtab[16];
    __shared__ float s_part[MMA_WARPS][4][128 + 2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z; /* b: query row */
    const int seq = b / a.q_per_seq;
    const int G = a.group;
    if (threadIdx.x < (1 << VB)) {
        s_vtab[threadIdx.x] = f2h(a.vp->cen[threadIdx.x]);
    }
    const int kcs = a.kf.code_size, vcs = a.vf.code_size;
    const int plane0 = key_kind == KEY_RVQ ? 2 * R : (key_kind == KEY_RABITQ ? 4 : 2);
    const float c_first = key_kind == KEY_RABITQ ? 1.0f : a.kp->cen[1];
    const float c_rest = a.kp->cen2[1];
    const float inv_sqrt_d = a.kf.inv_sqrt_d;
    const bool k_aligned = (kcs & 3) == 0 && (plane0 & 3) == 0;

    /* query fragments: column n = 2 * head + part; row k of k-step ks is dim
     * 32 (ks/2) + 8 (ks%2) + t + 16 c for k = 2t + c, and + 4 for k = 2t + 8 + c */
    __shared__ float s_q[4][128];
    kvqc_block_query(a, b, h, s_q);
    /* Key bits become fp16 A elements by one lop3: (w & bit) | base, worth v0 (clear) or
     * v1 (set), i.e. c + e s for the sign s = +-1. A thread's elements sit at two bit
     * positions of a half word, 8 + tq and 12 + tq (positions 0..7 are read from the
     * word shifted left by 8); its query entries are divided by that position's e, and
     * the constant part K = sum_d c q'_d is taken off each pass's sum. */
    const int pos_a = 8 + tq, pos_b = 12 + tq;
    const unsigned base_a = key_base(pos_a), base_b = key_base(pos_b);
    const unsigned mask_a = 0x00010001u << pos_a, mask_b = 0x00010001u << pos_b;
    float ea, ca, eb, cb;
    key_affine(pos_a, &ea, &ca);
    key_affine(pos_b, &eb, &cb);
    const float inv_ea = 1.0f / ea, inv_eb = 1.0f / eb;
    unsigned qb[8][2];
    {
        const int head = g >> 1, part = g & 1;
        const float *qrow = s_q[head < G ? head : 0];
#pragma unroll
        for (int ks = 0; ks < 8; ks++) {
            int d0 = 32 * (ks >> 1) + 8 * (ks & 1) + tq;
            if (head < G) {
                qb[ks][0] = pack2(kvqc_split_half(qrow[d0] * inv_ea, part), kvqc_split_half(qrow[d0 + 16] * inv_ea, part));
                qb[ks][1] = pack2(kvqc_split_half(qrow[d0 + 4] * inv_eb, part), kvqc_split_half(qrow[d0 + 20] * inv_eb, part));
            } else {
                qb[ks][0] = qb[ks][1] = 0u;
            }
        }
    }
    float k_const;
    {
        float kp = 0.0f;
#pragma unroll
        for (int ks = 0; ks < 8; ks++) {
            kp += ca * (h2f((unsigned short)qb[ks][0]) + h2f((unsigned short)(qb[ks][0] >> 16)));
            kp += cb * (h2f((unsigned short)qb[ks][1]) + h2f((unsigned short)(qb[ks][1] >> 16)));
        }
        kp += __shfl_xor_sync(KVQC_FULL, kp, 1); /* the four tq of (head, part) */
        kp += __shfl_xor_sync(KVQC_FULL, kp, 2);
        kp += __shfl_xor_sync(KVQC_FULL, kp, 4); /* high + low part */
        k_const = __shfl_sync(KVQC_FULL, kp, 8 * tq); /* lane 8 tq holds head tq */
    }
    /* 2-bit value codebook as register tables for prmt: entries 0,1 | 2,3 */
    unsigned th0 = 0, th1 = 0;
    if (VB == 2) {
        th0 = pack2(f2h(a.vp->cen[0]), f2h(a.vp->cen[1]));
        th1 = pack2(f2h(a.vp->cen[2]), f2h(a.vp->cen[3]));
    }
    __syncthreads();

    const int len = a.seq_lens[seq];
    const int t0 = split * a.chunk, t1 = min(len, t0 + a.chunk);

    float acc[8][4];
#pragma unroll
    for (int mt = 0; mt < 8; mt++) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    int tt = t0 + TILE * warp;
    int buf = 0;
    /* page-table entries are read one step ahead of the copies that need them */
    int page_next = tt + TILE * MMA_WARPS < t1 ? kvqc_page(a, seq, tt + TILE * MMA_WARPS) : 0;
    if (tt < t1) {
        size_t r0 = kvqc_row(a, seq, h, tt);
        issue_tile(s_k[warp][0], s_v[warp][0], a.k_codes + r0 * kcs, a.v_codes + r0 * vcs, kcs, vcs, min(TILE, t1 - tt), lane);
    }
    cp_commit();
    for (; tt < t1; tt += TILE * MMA_WARPS, buf ^= 1) {
        int nt = tt + TILE * MMA_WARPS;
        if (nt < t1) {
            size_t r1 = kvqc_row_at(a, page_next, h, nt);
            issue_tile(s_k[warp][buf ^ 1], s_v[warp][buf ^ 1], a.k_codes + r1 * kcs, a.v_codes + r1 * vcs, kcs, vcs, min(TILE, t1 - nt), lane);
            if (nt + TILE * MMA_WARPS < t1) page_next = kvqc_page(a, seq, nt + TILE * MMA_WARPS);
        }
        cp_commit();
        cp_wait1();
        __syncwarp();
        const uint8_t *sk = s_k[warp][buf], *sv = s_v[warp][buf];

        /* ---- scores of tokens g and g + 8 for head tq. Dims are permuted inside each
         * 32-bit plane word so a register's two bits sit 16 apart: one rotate and one
         * lop3 make a half2 of +-1 (the query fragments use the same permutation). */
        float s_lo = 0.0f, s_hi = 0.0f;
        const int ko_lo = g * kcs, ko_hi = (g + 8) * kcs;
        const float n_lo = ld_h(sk, ko_lo), n_hi = ld_h(sk, ko_hi);
#pragma unroll
        for (int st = 0; st < R; st++) {
            unsigned wl[4], wh[4];
            if (k_aligned) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    wl[j] = *(const unsigned *)(sk + ko_lo + plane0 + 16 * st + 4 * j);
                    wh[j] = *(const unsigned *)(sk + ko_hi + plane0 + 16 * st + 4 * j);
                }
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    wl[j] = ld_word(sk, ko_lo + plane0 + 16 * st + 4 * j);
                    wh[j] = ld_word(sk, ko_hi + plane0 + 16 * st + 4 * j);
                }
            }
            /* two accumulators halve the dependent chain of mma */
            float c[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                /* even k-step: bit positions tq, tq + 4 (moved up by 8); odd: 8 + tq, 12 + tq */
                const unsigned sl = wl[j] << 8, sh = wh[j] << 8;
                kvqc_mma_f16(c[0], key_elem(sl, mask_a, base_a), key_elem(sh, mask_a, base_a),
                         key_elem(sl, mask_b, base_b), key_elem(sh, mask_b, base_b), qb[2 * j][0], qb[2 * j][1]);
                kvqc_mma_f16(c[1], key_elem(wl[j], mask_a, base_a), key_elem(wh[j], mask_a, base_a),
                         key_elem(wl[j], mask_b, base_b), key_elem(wh[j], mask_b, base_b), qb[2 * j + 1][0],
                         qb[2 * j + 1][1]);
            }
            c[0][0] -= k_const;
            c[0][2] -= k_const;
            float coef_lo, coef_hi;
            if (key_kind == KEY_RVQ) {
                float cs = st == 0 ? c_first : c_rest;
                coef_lo = cs * (st ? ld_h(sk, ko_lo + 2 * st) : 1.0f);
                coef_hi = cs * (st ? ld_h(sk, ko_hi + 2 * st) : 1.0f);
            } else {
                coef_lo = coef_hi = c_first;
            }
            s_lo += coef_lo * ((c[0][0] + c[0][1]) + (c[1][0] + c[1][1]));
            s_hi += coef_hi * ((c[0][2] + c[0][3]) + (c[1][2] + c[1][3]));
        }
        if (key_kind == KEY_RVQ) {
            s_lo *= n_lo * inv_sqrt_d;
            s_hi *= n_hi * inv_sqrt_d;
        } else if (key_kind == KEY_RABITQ) {
            s_lo *= n_lo * inv_sqrt_d / ld_h(sk, ko_lo + 2);
            s_hi *= n_hi * inv_sqrt_d / ld_h(sk, ko_hi + 2);
        } else {
            s_lo *= n_lo;
            s_hi *= n_hi;
        }
        if (tt + g >= t1) s_lo = -INFINITY;
        if (tt + g + 8 >= t1) s_hi = -INFINITY;

        /* ---- online softmax for head tq (lanes with equal tq share it) */
        float tmax = fmaxf(s_lo, s_hi);
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 4));
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 8));
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 16));
        float mn = fmaxf(m, tmax);
        /* rescale only when some head's maximum grew (rare after the first tiles) */
        if (__any_sync(KVQC_FULL, mn > m)) {
            float alpha = exp2f(m - mn);
            l *= alpha;
#pragma unroll
            for (int mt = 0; mt < 8; mt++) {
                acc[mt][0] *= alpha;
                acc[mt][1] *= alpha;
                acc[mt][2] *= alpha;
                acc[mt][3] *= alpha;
            }
            m = mn;
        }
        float p_lo = exp2f(s_lo - m), p_hi = exp2f(s_hi - m);
        l += p_lo + p_hi;
        /* weights times the value norm, moved to the B layout: rows = tokens, col = g */
        const int vo_lo = g * vcs, vo_hi = (g + 8) * vcs;
        float w_lo = p_lo * ld_h(sv, vo_lo), w_hi = p_hi * ld_h(sv, vo_hi);
        const int src0 = 4 * (2 * tq) + (g >> 1), src1 = src0 + 4;
        float x0 = __shfl_sync(KVQC_FULL, w_lo, src0), x1 = __shfl_sync(KVQC_FULL, w_lo, src1);
        float y0 = __shfl_sync(KVQC_FULL, w_hi, src0), y1 = __shfl_sync(KVQC_FULL, w_hi, src1);
        const int part = g & 1;
        unsigned pb0 = pack2(kvqc_split_half(x0, part), kvqc_split_half(x1, part));
        unsigned pb1 = pack2(kvqc_split_half(y0, part), kvqc_split_half(y1, part));

        /* ---- values: V^T tile per mt. Row g of tile mt is dim 16g + 2mt, row g + 8 is
         * 16g + 2mt + 1, so a thread's 16 dims of a token share one (2-bit) or two
         * (4-bit) payload words. */
        const int p0 = (2 * tq) * vcs + 2, p1 = p0 + vcs, p8 = p0 + 8 * vcs, p9 = p8 + vcs;
        if (VB == 2) {
            const unsigned w0 = ld_word(sv, p0 + 4 * g), w1 = ld_word(sv, p1 + 4 * g);
            const unsigned w8 = ld_word(sv, p8 + 4 * g), w9 = ld_word(sv, p9 + 4 * g);
            /* bytes interleaved: token pair fields side by side */
            const unsigned z[4] = {__byte_perm(w0, w1, 0x5140), __byte_perm(w0, w1, 0x7362),
                                   __byte_perm(w8, w9, 0x5140), __byte_perm(w8, w9, 0x7362)};
            /* prmt selectors for code field f (0..3) of every byte at once: a 2-bit code c
             * becomes nibbles 2c, 2c + 1 (its fp16 entry's two bytes); the low 16 bits
             * select for bytes 0-1 (shift 2f), the high 16 bits for bytes 2-3 (16 + 2f) */
            unsigned sel[4][4];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int f = 0; f < 4; f++) sel[i][f] = ((z[i] >> (2 * f)) & 0x03030303u) * 0x22u + 0x10101010u;
#pragma unroll
            for (int mt = 0; mt < 8; mt++) {
                /* row g: field shift base = 16 (k & 1) + 4 (mt & 1); row g + 8: base + 2 */
                const int k = mt >> 1, f = 2 * (mt & 1), up = 16 * (k & 1), zi = k >> 1;
                const unsigned s0 = sel[zi][f] >> up, s1 = sel[zi][f + 1] >> up;
                const unsigned s2 = sel[2 + zi][f] >> up, s3 = sel[2 + zi][f + 1] >> up;
                kvqc_mma_f16(acc[mt], __byte_perm(th0, th1, s0), __byte_perm(th0, th1, s1),
                         __byte_perm(th0, th1, s2), __byte_perm(th0, th1, s3), pb0, pb1);
            }
        } else {
            unsigned w0[2], w1[2], w8[2], w9[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                w0[i] = ld_word(sv, p0 + 8 * g + 4 * i);
                w1[i] = ld_word(sv, p1 + 8 * g + 4 * i);
                w8[i] = ld_word(sv, p8 + 8 * g + 4 * i);
                w9[i] = ld_word(sv, p9 + 8 * g + 4 * i);
            }
#pragma unroll
            for (int mt = 0; mt < 8; mt++) {
                const int wi = mt >> 2, sa = 8 * (mt & 3), sb = sa + 4;
                unsigned e00 = s_vtab[(w0[wi] >> sa) & 15u], e01 = s_vtab[(w1[wi] >> sa) & 15u];
                unsigned e10 = s_vtab[(w0[wi] >> sb) & 15u], e11 = s_vtab[(w1[wi] >> sb) & 15u];
                unsigned e80 = s_vtab[(w8[wi] >> sa) & 15u], e81 = s_vtab[(w9[wi] >> sa) & 15u];
                unsigned e90 = s_vtab[(w8[wi] >> sb) & 15u], e91 = s_vtab[(w9[wi] >> sb) & 15u];
                kvqc_mma_f16(acc[mt], __byte_perm(e00, e01, 0x5410), __byte_perm(e10, e11, 0x5410),
                         __byte_perm(e80, e81, 0x5410), __byte_perm(e90, e91, 0x5410), pb0, pb1);
            }
        }
        __syncwarp();
    }

    /* ---- per-warp results: head tq, dims 16mt + g and 16mt + g + 8 */
    l += __shfl_xor_sync(KVQC_FULL, l, 4);
    l += __shfl_xor_sync(KVQC_FULL, l, 8);
    l += __shfl_xor_sync(KVQC_FULL, l, 16);
    if (tq < G) {
#pragma unroll
        for (int mt = 0; mt < 8; mt++) {
            s_part[warp][tq][16 * g + 2 * mt] = acc[mt][0] + acc[mt][1];
            s_part[warp][tq][16 * g + 2 * mt + 1] = acc[mt][2] + acc[mt][3];
        }
        if (g == 0) {
            s_part[warp][tq][128] = m;
            s_part[warp][tq][129] = l;
        }
    }
    __syncthreads();
    kvqc_merge_warps(&s_part[0][0][0], MMA_WARPS, 4 * 130, 130, G, 128, a, b, h, split);
}


/* ======================================================================================
 * Integer tensor-core kernel: 1-bit keys with 2-bit values whose codebook is symmetric
 * (c0 = -c3, c1 = -c2, the Lloyd-Max levels) or 4-bit values (any codebook; see values4). Both products run mma.m16n8k32 on 8-bit
 * integers, so the sign planes and 2-bit codes become mma operands by ONE and-mask per
 * register of four elements (no fp16 conversion):
 *   scores: A = (key plane word >> 2i) & 0x01010101 (or 0x02020202), bytes {0, 1} (or
 *           {0, 2}) for the dims at bit 2i (2i + 1) of each byte; B = 2 Q, the query
 *           scaled to 16-bit fixed point against its largest entry (halved at odd bits),
 *           as two signed bytes (columns H, L of each head: one n-tile for four heads):
 *           the int32 sums recombine exactly (H << 8) + L - Kq, Kq = sum 2^(bit & 1) Q, so
 *           the result is sum q s for the signs s = 2 bit - 1 (BITS_Q16; with BITS_Q16=0
 *           the former 24-bit query against A bytes {0, 2^p}: columns H, M, L, two n-tiles).
 *   values: a 2-bit code is c0 + beta b0 + gamma b1 (exact for a symmetric codebook), so
 *           V^T P^T splits into bit planes: A = value bytes of four tokens (a byte
 *           transpose by prmt) & (0x01010101 << p), rows = (dim, bit); B = the softmax
 *           weights times the value norm in 16-bit fixed point (hi, lo byte columns).
 *           Scales 2^-p, beta, gamma and c0 * sum w apply once per split, after the loop.
 * The weights are exp2(s + log2 |v| - m) <= 1 against an integer reference m, so a
 * growing maximum rescales the int32 accumulators by a right shift.
 * ====================================================================================== */
#define BT 32     /* tokens per warp step */
#define VCS2 34   /* mse 2-bit code at dim 128: fp16 norm + 32 bytes */
#define VCS4 66   /* mse 4-bit code at dim 128: fp16 norm + 64 bytes */
#define BITS_MAX_CHUNK 262144 /* int32 value sums stay exact up to 65536 tokens per warp */
#ifndef BITS_KSPLIT
#define BITS_KSPLIT 1 /* 4-bit values: table halves in the k dimension, not OR-ed */
#endif
#ifndef BITS_DYN
#define BITS_DYN 0
#endif
#ifndef BITS_MIN_BLOCKS
#define BITS_MIN_BLOCKS 3
#endif
#ifndef BITS_RUN
#define BITS_RUN 1 /* whole 32-token tiles copied as one run (contiguous, pages of 32k tokens) */
#endif
#ifndef BITS_PROBE
#define BITS_PROBE 0 /* timing probes, wrong results: 1 leaves the value mma out, 2 the score mma */
#endif
#ifndef BITS_Q16
/* 1: the query in 16-bit fixed point (two byte columns per head, one n-tile: half the
 * score mma) against key bits worth 1 or 2 (bit pairs shifted down); 0: 24 bits against
 * key bits worth 2^p (three byte columns, two n-tiles) */
#define BITS_Q16 1
#endif
#ifndef BITS_MIN_BLOCKS2
#define BITS_MIN_BLOCKS2 BITS_MIN_BLOCKS /* resident blocks per SM, 2-bit values */
#endif
#ifndef BITS_MIN_BLOCKS_RQ2
#define BITS_MIN_BLOCKS_RQ2 4 /* rabitq keys with 2-bit values: 128 registers, no spills */
#endif
#ifndef BITS_MIN_BLOCKS4
#define BITS_MIN_BLOCKS4 BITS_MIN_BLOCKS /* 4-bit values */
#endif

template <int KIND, int R, int VB> struct bits_cfg {
    enum {
        VCS = VB == 2 ? VCS2 : VCS4,
        KCS = KIND == KEY_RVQ ? 18 * R : KIND == KEY_RABITQ ? 20 : 18, /* key code size */
        PLANE0 = KIND == KEY_RVQ ? 2 * R : KIND == KEY_RABITQ ? 4 : 2,  /* first sign plane */
        KALIGNED = (KCS & 3) == 0 && (PLANE0 & 3) == 0,
        KT = BT * KCS + 16, /* + read-ahead pad of ld_word */
        VT = BT * VCS + 16,
        ST = KT + VT,
        /* the stages in dynamic shared memory (4-bit values, BITS_DYN): 2 tiles in flight */
        DYN = BITS_DYN && VB == 4,
        /* tiles in flight per warp (2, or 1 where 4 warps x 4 stages would pass 46 KiB of
         * static shared memory: rvq with 3-4 passes, 4-bit values); stages = LA + the tile
         * being scored + the tile whose values run */
        LA = DYN || MMA_WARPS * 4 * ST + 4608 <= 46 * 1024 ? 2 : 1,
        NST = LA + 2,
        BUF = MMA_WARPS * NST * ST /* stage bytes of a block */
    };
};

__device__ __forceinline__ void imma_u8s8(int c[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                          unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void imma_u8u8(int c[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                          unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
/* prmt with the selector's sign-replicate bits honoured (bit 3 of a nibble: the selected
 * byte's sign over all 8 bits) */
__device__ __forceinline__ unsigned prmt_sx(unsigned x, unsigned y, unsigned s) {
    unsigned d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(x), "r"(y), "r"(s));
    return d;
}
template <int N> __device__ __forceinline__ void cp_wait_group() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

/* 2^e for -126 <= e <= 127 */
__device__ __forceinline__ float pow2i(int e) { return __int_as_float((127 + e) << 23); }
/* The query entry of dim d in fixed point: round(q / 2^(e + (d & 7))). */
__device__ __forceinline__ int q_fixed(float q, int e, int d) { return __float2int_rn(q * pow2i(-(e + (d & 7)))); }
/* BITS_Q16: round(q sc / 2^(d & 1)) for sc = 16319 / max |q|: |result| <= 16319, so 2 Q
 * = 256 H + L with signed bytes H, L */
__device__ __forceinline__ int q_fixed16(float q, float sc, int d) {
    return min(max(__float2int_rn(q * sc * ((d & 1) ? 0.5f : 1.0f)), -16319), 16319);
}
__device__ __forceinline__ float ex2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float lg2_ftz(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Copy the two 16-token halves of a 32-token tile (each inside one page) into a stage;
 * n0, n1 valid tokens (the rest zero-filled). */
template <int kcs, int VCS>
__device__ __forceinline__ void bits_issue(uint8_t *dk, uint8_t *dv, const kvqc_attn_args &a,
                                           size_t r0, size_t r1, int n0, int n1, int lane) {
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int n = half ? n1 : n0;
        const size_t r = half ? r1 : r0;
        uint8_t *sk = dk + half * 16 * kcs, *sv = dv + half * 16 * VCS;
        if (n == 16) {
            const uint8_t *gk = a.k_codes + r * kcs, *gv = a.v_codes + r * VCS;
#pragma unroll
            for (int i = 0; i < (kcs + 31) / 32; i++) {
                const int c = lane + 32 * i;
                if (kcs % 32 == 0 || c < kcs) cp_async16(sk + 16 * c, gk + 16 * c, 16);
            }
#pragma unroll
            for (int i = 0; i < (VCS + 31) / 32; i++) {
                const int c = lane + 32 * i;
                if (c < VCS) cp_async16(sv + 16 * c, gv + 16 * c, 16);
            }
        } else {
            const uint8_t *gk = n > 0 ? a.k_codes + r * kcs : a.k_codes;
            const uint8_t *gv = n > 0 ? a.v_codes + r * VCS : a.v_codes;
            const int kvalid = n * kcs, vvalid = n * VCS;
            for (int c = lane; c < kcs; c += 32) {
                int nb = min(max(kvalid - 16 * c, 0), 16);
                cp_async16(sk + 16 * c, nb > 0 ? gk + 16 * c : gk, nb);
            }
            for (int c = lane; c < VCS; c += 32) {
                int nb = min(max(vvalid - 16 * c, 0), 16);
                cp_async16(sv + 16 * c, nb > 0 ? gv + 16 * c : gv, nb);
            }
        }
    }
}

template <int KIND, int R, int VB>
__global__ void __launch_bounds__(MMA_WARPS * 32, VB == 4 ? BITS_MIN_BLOCKS4 : KIND == KEY_RABITQ ? BITS_MIN_BLOCKS_RQ2 : BITS_MIN_BLOCKS2) attend_bits_kernel(kvqc_attn_args a, int) {
    typedef bits_cfg<KIND, R, VB> C;
    constexpr int VCS = C::VCS;
    constexpr int key_kind = KIND, kcs = C::KCS, plane0 = C::PLANE0;
    constexpr bool k_aligned = C::KALIGNED;
    constexpr int LA = C::LA, NST = C::NST;
    __shared__ __align__(16) uint8_t s_stat[C::DYN ? 16 : C::BUF];
    extern __shared__ __align__(16) uint8_t s_dyn[];
    uint8_t *const s_buf = C::DYN ? s_dyn : s_stat;
    __shared__ __align__(16) unsigned short s_w[MMA_WARPS][2][4][BT]; /* weights, by tile parity */
    __shared__ float s_q[4][128];
    __shared__ int s_ex[4], s_kq[4];
    __shared__ unsigned s_qb[4][132];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int seq = b / a.q_per_seq;
    const int G = a.group;

    const float c_first = key_kind == KEY_RABITQ ? 1.0f : a.kp->cen[1];
    const float c_rest = a.kp->cen2[1];

    const int len = a.seq_lens[seq];
    const int t0 = split * a.chunk, t1 = min(len, t0 + a.chunk);

    uint8_t *wbuf = s_buf + warp * NST * C::ST;
    /* this lane's copy destination in the warp's first stage, as a shared-memory address
     * (the stages follow ST bytes apart) */
    const unsigned s_lane = (unsigned)__cvta_generic_to_shared(wbuf) + 16u * (unsigned)lane;
    const int step = BT * MMA_WARPS;
    int ti = t0 + BT * warp; /* next tile to copy */
    /* a whole tile is one run of 32 rows in the contiguous layout (copied from running
     * pointers, per lane 16 bytes apart) and in pages of a multiple of 32 tokens (one row
     * product per tile); other page sizes and a tile past the end: the two 16-token halves
     * with their pages. Pages are read one tile ahead. */
    const bool contig = BITS_RUN && a.page_table == nullptr;
    const bool page32 = BITS_RUN && !contig && (a.page_size & 31) == 0, whole = contig || page32;
    int pn0 = seq, pn1 = seq; /* its pages */
    size_t row0 = ((size_t)seq * a.n_kv_heads + h) * (size_t)a.page_size + (size_t)ti;
    if (!contig && ti < t1) {
        pn0 = kvqc_page(a, seq, ti);
        pn1 = ti + 16 < t1 && !page32 ? kvqc_page(a, seq, ti + 16) : pn0;
        row0 = kvqc_row_at(a, pn0, h, ti);
    }
    /* the tile's first rows, this lane's 16 bytes (the page's, for pages of 32k tokens,
     * set when the page is read) */
    const uint8_t *gk_run = a.k_codes + row0 * kcs + 16 * lane, *gv_run = a.v_codes + row0 * VCS + 16 * lane;
    /* copy the next tile into the stage at byte offset so */
    auto issue = [&](int so) {
        if (ti < t1) {
            if (whole && ti + BT <= t1) {
                const unsigned dk = s_lane + (unsigned)so, dv = dk + C::KT;
#pragma unroll
                for (int i = 0; i < (2 * kcs + 31) / 32; i++)
                    if ((2 * kcs) % 32 == 0 || lane + 32 * i < 2 * kcs) cp_async16_s(dk + 512 * i, gk_run + 512 * i);
#pragma unroll
                for (int i = 0; i < (2 * VCS + 31) / 32; i++)
                    if ((2 * VCS) % 32 == 0 || lane + 32 * i < 2 * VCS) cp_async16_s(dv + 512 * i, gv_run + 512 * i);
            } else {
                bits_issue<kcs, VCS>(wbuf + so, wbuf + so + C::KT, a, kvqc_row_at(a, pn0, h, ti),
                                     kvqc_row_at(a, pn1, h, ti + 16), min(16, t1 - ti), max(0, min(16, t1 - ti - 16)), lane);
            }
            ti += step;
            gk_run += step * kcs;
            gv_run += step * VCS;
            if (!contig && ti < t1) {
                pn0 = kvqc_page(a, seq, ti);
                pn1 = ti + 16 < t1 && !page32 ? kvqc_page(a, seq, ti + 16) : pn0;
                if (page32) {
                    const size_t r = kvqc_row_at(a, pn0, h, ti);
                    gk_run = a.k_codes + r * kcs + 16 * lane;
                    gv_run = a.v_codes + r * VCS + 16 * lane;
                }
            }
        }
        cp_commit();
    };
#pragma unroll
    for (int s = 0; s < LA; s++) issue(s * C::ST); /* the first copies fly during the setup */
    kvqc_block_query(a, b, h, s_q); /* ends with __syncthreads */
    /* per head: exponent e with |q| < 2^(e + 21), Kq = sum_d 2^(d & 7) Q_d, and the bytes
     * (H, M, L) of 2 Q_d = 65536 H + 256 M + L (each signed) in s_qb (one word per 32 dims
     * of padding: the fragment reads below hit distinct banks); BITS_Q16: see q_fixed16 */
    {
        float mx = 0.0f;
        if (warp < G)
            for (int e = 0; e < 4; e++) mx = fmaxf(mx, fabsf(s_q[warp][lane + 32 * e]));
        mx = kvqc_warp_max(mx);
        int ex = mx > 0.0f ? max(ilogbf(mx) + 1 - 21, -100) : 0;
        /* BITS_Q16: the scale sc; s_ex then holds the bits of 1 / sc */
        const bool q_nz = mx > 1e-30f;
        const float sc16 = q_nz ? 16319.0f / mx : 1.0f;
        if (BITS_Q16) ex = __float_as_int(q_nz ? mx / 16319.0f : 1.0f);
        int kq = 0;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int d = lane + 32 * e;
            if (BITS_Q16) {
                /* Q_d = q_d sc / 2^(d & 1), Kq = sum_d 2^(d & 1) Q_d, bytes (H, L) of
                 * 2 Q_d = 256 H + L in bytes 0, 1 */
                const int q = warp < G ? q_fixed16(s_q[warp][d], sc16, d) : 0;
                kq += q << (d & 1);
                const int v = 2 * q;
                const int lo = (int)(signed char)(v & 0xFF);
                const int hi = (v - lo) >> 8;
                s_qb[warp][d + (d >> 5)] = ((unsigned)hi & 0xFFu) | (((unsigned)lo & 0xFFu) << 8);
                continue;
            }
            const int q = warp < G ? q_fixed(s_q[warp][d], ex, d) : 0;
            kq += q * (1 << (d & 7));
            const int v = 2 * q;
            const int lo = (int)(signed char)(v & 0xFF);
            const int r1v = (v - lo) >> 8;
            const int mid = (int)(signed char)(r1v & 0xFF);
            const int hi = (r1v - mid) >> 8;
            s_qb[warp][d + (d >> 5)] = ((unsigned)hi & 0xFFu) | (((unsigned)mid & 0xFFu) << 8) | (((unsigned)lo & 0xFFu) << 16);
        }
#pragma unroll
        for (int o = 16; o >= 1; o >>= 1) kq += __shfl_xor_sync(KVQC_FULL, kq, o);
        if (lane == 0) {
            s_ex[warp] = ex;
            s_kq[warp] = kq;
        }
    }
    __syncthreads();
    /* B fragments of the query, k-step i: b0 holds dims 32 tq + 8 s + 2 i (bit 2i of byte s
     * of plane word tq), b1 dims + 1 (bit 2i + 1); n-tile 0 columns (2 head, 2 head + 1) =
     * (H, M), n-tile 1 = (L, 0). Values 2 Q (the factor 2 of s = 2 bit - 1). */
    unsigned kb[4][2][2];
    {
        const unsigned *qrow = s_qb[g >> 1];
        const unsigned p0 = (g & 1) ? 0x51u : 0x40u; /* byte M (odd g) or H of two words */
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                unsigned x[4];
#pragma unroll
                for (int s = 0; s < 4; s++) {
                    const int d = 32 * tq + 8 * s + 2 * i + hf;
                    x[s] = qrow[d + tq]; /* d >> 5 == tq */
                }
                kb[i][0][hf] = __byte_perm(__byte_perm(x[0], x[1], p0), __byte_perm(x[2], x[3], p0), 0x5410);
                kb[i][1][hf] = BITS_Q16 || (g & 1) ? 0u
                                       : __byte_perm(__byte_perm(x[0], x[1], 0x62), __byte_perm(x[2], x[3], 0x62), 0x5410);
            }
    }
    const int kq_h = tq < G ? s_kq[tq] : 0;
    const float sig = BITS_Q16 ? (tq < G ? __int_as_float(s_ex[tq]) : 1.0f) : pow2i(tq < G ? s_ex[tq] : 0);
    const float key_mul = (key_kind == KEY_MSE1 ? 1.0f : a.kf.inv_sqrt_d) * sig;
    int vacc[16][4], wacc[4] = {0, 0, 0, 0};
#pragma unroll
    for (int mt = 0; mt < 16; mt++) vacc[mt][0] = vacc[mt][1] = vacc[mt][2] = vacc[mt][3] = 0;
    float m = -INFINITY, l = 0.0f;

    /* 4-bit values: a code indexes a 16-entry table of 14-bit levels V = 128 H + L
     * (c ~ mid + hs (2 V - 16383)), looked up bytewise by prmt in two planes H, L of 7 bits
     * each: prmt(tab[0..7], sel) gives the entry for codes 0..7 and, through the selector's
     * sign-replicate bit (bit 3 of a code), 0 for codes 8..15; prmt(tab[8..15], sel ^ 0x8888)
     * the converse, so their OR is the entry (every table byte is below 128). */
    unsigned tH[4] = {0u, 0u, 0u, 0u}, tL[4] = {0u, 0u, 0u, 0u};
    float v_mid = 0.0f, v_hs = 0.0f;
    if (VB == 4) {
        float lo = a.vp->cen[0], hi = a.vp->cen[0];
#pragma unroll
        for (int i = 1; i < 16; i++) {
            lo = fminf(lo, a.vp->cen[i]);
            hi = fmaxf(hi, a.vp->cen[i]);
        }
        const float step = (hi - lo) / 16383.0f;
        v_mid = 0.5f * (lo + hi);
        v_hs = 0.5f * step;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int v = step > 0.0f ? __float2int_rn((a.vp->cen[i] - lo) / step) : 8192;
            v = min(max(v, 0), 16383);
            tH[i >> 2] |= (unsigned)(v >> 7) << (8 * (i & 3));
            tL[i >> 2] |= (unsigned)(v & 127) << (8 * (i & 3));
        }
    }
    auto lut = [&](const unsigned t[4], unsigned s, unsigned sx) {
        return prmt_sx(t[0], t[1], s) | prmt_sx(t[2], t[3], sx);
    };
    /* word g of a 4-bit row holds dims 16 g .. 16 g + 15 (byte j: dims 16 g + 2 j in the low
     * nibble, + 1 in the high nibble); rows g / g + 8 of m-tile j are those two dims, the H
     * plane accumulates in vacc[j], the L plane in vacc[8 + j]; k = tokens 4 tq + s and
     * 16 + 4 tq + s as for 2-bit values */
    auto values4 = [&](const uint8_t *sv, unsigned vb0, unsigned vb1) {
        unsigned S[2][8][2]; /* selectors: [grp][byte j][low / high nibble] (low 16 bits) */
#pragma unroll
        for (int grp = 0; grp < 2; grp++) {
            const int o0 = (16 * grp + 4 * tq) * VCS + 2 + 8 * g; /* = 2 mod 4 */
            const unsigned A0 = *(const unsigned *)(sv + o0 - 2), A1 = *(const unsigned *)(sv + o0 + 2);
            const unsigned A2 = *(const unsigned *)(sv + o0 + 6);
            const unsigned B1 = *(const unsigned *)(sv + o0 + VCS), B2 = *(const unsigned *)(sv + o0 + VCS + 4);
            const unsigned C0 = *(const unsigned *)(sv + o0 + 2 * VCS - 2);
            const unsigned C1 = *(const unsigned *)(sv + o0 + 2 * VCS + 2);
            const unsigned C2 = *(const unsigned *)(sv + o0 + 2 * VCS + 6);
            const unsigned D1 = *(const unsigned *)(sv + o0 + 3 * VCS);
            const unsigned D2 = *(const unsigned *)(sv + o0 + 3 * VCS + 4);
            /* X[p] = bytes 2p, 2p + 1 of tokens 0, 1: [t0 b2p, t1 b2p, t0 b2p+1, t1 b2p+1]; Y: 2, 3 */
            const unsigned X[4] = {__byte_perm(A0, B1, 0x5342), __byte_perm(A1, B1, 0x7160),
                                   __byte_perm(A1, B2, 0x5342), __byte_perm(A2, B2, 0x7160)};
            const unsigned Y[4] = {__byte_perm(C0, D1, 0x5342), __byte_perm(C1, D1, 0x7160),
                                   __byte_perm(C1, D2, 0x5342), __byte_perm(C2, D2, 0x7160)};
#pragma unroll
            for (int p = 0; p < 4; p++) {
                const unsigned Z = __byte_perm(X[p], Y[p], 0x6240); /* t0, t2 of bytes 2p, 2p + 1 */
                const unsigned W = __byte_perm(X[p], Y[p], 0x7351); /* t1, t3 */
                /* nibbles (t0, t1, t2, t3) of one dim: low nibbles, then high nibbles */
                const unsigned sl = (Z & 0x0F0F0F0Fu) | ((W << 4) & 0xF0F0F0F0u);
                const unsigned sh = ((Z >> 4) & 0x0F0F0F0Fu) | (W & 0xF0F0F0F0u);
                S[grp][2 * p][0] = sl;
                S[grp][2 * p][1] = sh;
                S[grp][2 * p + 1][0] = sl >> 16;
                S[grp][2 * p + 1][1] = sh >> 16;
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const unsigned s0 = S[0][j][0], s1 = S[0][j][1], s2 = S[1][j][0], s3 = S[1][j][1];
            const unsigned x0 = s0 ^ 0x8888u, x1 = s1 ^ 0x8888u, x2 = s2 ^ 0x8888u, x3 = s3 ^ 0x8888u;
            if (BITS_KSPLIT) {
                /* the two table halves as the two k halves of one mma (same tokens, same
                 * weights in b0 and b1): 16 tokens per mma, no OR */
                imma_u8u8(vacc[j], prmt_sx(tH[0], tH[1], s0), prmt_sx(tH[0], tH[1], s1),
                          prmt_sx(tH[2], tH[3], x0), prmt_sx(tH[2], tH[3], x1), vb0, vb0);
                imma_u8u8(vacc[j], prmt_sx(tH[0], tH[1], s2), prmt_sx(tH[0], tH[1], s3),
                          prmt_sx(tH[2], tH[3], x2), prmt_sx(tH[2], tH[3], x3), vb1, vb1);
                imma_u8u8(vacc[8 + j], prmt_sx(tL[0], tL[1], s0), prmt_sx(tL[0], tL[1], s1),
                          prmt_sx(tL[2], tL[3], x0), prmt_sx(tL[2], tL[3], x1), vb0, vb0);
                imma_u8u8(vacc[8 + j], prmt_sx(tL[0], tL[1], s2), prmt_sx(tL[0], tL[1], s3),
                          prmt_sx(tL[2], tL[3], x2), prmt_sx(tL[2], tL[3], x3), vb1, vb1);
            } else {
                imma_u8u8(vacc[j], lut(tH, s0, x0), lut(tH, s1, x1), lut(tH, s2, x2), lut(tH, s3, x3), vb0, vb1);
                imma_u8u8(vacc[8 + j], lut(tL, s0, x0), lut(tL, s1, x1), lut(tL, s2, x2), lut(tL, s3, x3), vb0, vb1);
            }
        }
    };
    /* values of the tile in stage vst with the weights of s_w[par]: word g (dims 16 g ..
     * 16 g + 15) of tokens 4 tq + s and 16 + 4 tq + s, byte-transposed so byte s of
     * T[grp][j] is byte j of token 16 grp + 4 tq + s; m-tile mt: rows g / g + 8 = bit 0 /
     * bit 1 of dim 16 g + mt (code mt & 3 of byte mt >> 2) */
    auto values = [&](int vso, int par) {
        if (BITS_PROBE == 1) return;
        const uint8_t *sv = wbuf + vso + C::KT;
        const unsigned sel = (g & 1) ? 0x6420u : 0x7531u;
        const uint2 u0 = *(const uint2 *)&s_w[warp][par][g >> 1][4 * tq];
        const uint2 u1 = *(const uint2 *)&s_w[warp][par][g >> 1][16 + 4 * tq];
        const unsigned vb0 = __byte_perm(u0.x, u0.y, sel), vb1 = __byte_perm(u1.x, u1.y, sel);
        if (VB == 4) {
            values4(sv, vb0, vb1);
        } else {
        unsigned T[2][4];
#pragma unroll
        for (int grp = 0; grp < 2; grp++) {
            const int o0 = (16 * grp + 4 * tq) * VCS + 2 + 4 * g; /* = 2 mod 4 */
            const unsigned A0 = *(const unsigned *)(sv + o0 - 2), A1 = *(const unsigned *)(sv + o0 + 2);
            const unsigned B1 = *(const unsigned *)(sv + o0 + VCS);
            const unsigned C0 = *(const unsigned *)(sv + o0 + 2 * VCS - 2);
            const unsigned C1 = *(const unsigned *)(sv + o0 + 2 * VCS + 2);
            const unsigned D1 = *(const unsigned *)(sv + o0 + 3 * VCS);
            const unsigned X0 = __byte_perm(A0, B1, 0x5342), X1 = __byte_perm(A1, B1, 0x7160);
            const unsigned Y0 = __byte_perm(C0, D1, 0x5342), Y1 = __byte_perm(C1, D1, 0x7160);
            T[grp][0] = __byte_perm(X0, Y0, 0x5410);
            T[grp][1] = __byte_perm(X0, Y0, 0x7632);
            T[grp][2] = __byte_perm(X1, Y1, 0x5410);
            T[grp][3] = __byte_perm(X1, Y1, 0x7632);
        }
#pragma unroll
        for (int mt = 0; mt < 16; mt++) {
            const unsigned m0 = 0x01010101u << (2 * (mt & 3)), m1 = m0 << 1;
            const int j = mt >> 2;
            imma_u8u8(vacc[mt], T[0][j] & m0, T[0][j] & m1, T[1][j] & m0, T[1][j] & m1, vb0, vb1);
        }
        }
        const unsigned ones = g == 0 ? 0x01010101u : 0u; /* row 0: sum of the weights */
        imma_u8u8(wacc, ones, 0u, ones, 0u, vb0, vb1);
    };

    /* tile i: its scores and weights at step i, its values at step i + 1 (they overlap the
     * next tile's scores and softmax); LA tiles in flight, NST = LA + 2 stages */
    /* stages by byte offset: so the tile scored now, so - ST (cyclic) the one whose values
     * run, so + LA ST the one copied */
    constexpr int SPAN = NST * C::ST;
    int so = 0, it = 0;
    for (int tt = t0 + BT * warp; tt < t1; tt += step, it++) {
        cp_wait_group<LA - 1>();
        __syncwarp();
        issue(so + LA * C::ST < SPAN ? so + LA * C::ST : so + LA * C::ST - SPAN);
        const uint8_t *sk = wbuf + so, *sv = sk + C::KT;
        const int rem = t1 - tt; /* valid tokens of the tile (32 or more: all) */

        /* ---- scores of tokens 16 mt + g (+ 8) for head tq: sc[2 mt], sc[2 mt + 1] */
        float sc[4];
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            const int ko_lo = (16 * mt + g) * kcs, ko_hi = ko_lo + 8 * kcs;
            float s_lo = 0.0f, s_hi = 0.0f;
#pragma unroll
            for (int st = 0; st < R; st++) {
                const int wo = plane0 + 16 * st + 4 * tq;
                const unsigned wl = k_aligned ? *(const unsigned *)(sk + ko_lo + wo) : ld_word(sk, ko_lo + wo);
                const unsigned wh = k_aligned ? *(const unsigned *)(sk + ko_hi + wo) : ld_word(sk, ko_hi + wo);
                int c0[4] = {0, 0, 0, 0}, c1[4] = {-kq_h, 0, -kq_h, 0};
                if (BITS_Q16) {
                    /* k-step i: bits 2i, 2i + 1 of each byte, shifted down to worth 1 and 2 */
#pragma unroll
                    for (int i = 0; i < (BITS_PROBE == 2 ? 0 : 4); i++) {
                        const unsigned sl = wl >> (2 * i), sh = wh >> (2 * i);
                        imma_u8s8(c0, sl & 0x01010101u, sh & 0x01010101u, sl & 0x02020202u, sh & 0x02020202u,
                                  kb[i][0][0], kb[i][0][1]);
                    }
                }
#pragma unroll
                for (int i = 0; i < (BITS_PROBE == 2 || BITS_Q16 ? 0 : 4); i++) {
                    const unsigned m0 = 0x01010101u << (2 * i), m1 = m0 << 1;
                    const unsigned a0 = wl & m0, a1 = wh & m0, a2 = wl & m1, a3 = wh & m1;
                    imma_u8s8(c0, a0, a1, a2, a3, kb[i][0][0], kb[i][0][1]);
                    imma_u8s8(c1, a0, a1, a2, a3, kb[i][1][0], kb[i][1][1]);
                }
                /* sum 2 Q b - Kq: BITS_Q16 (H << 8) + L, else (H << 16) + (M << 8) + L */
                const int y_lo = BITS_Q16 ? (int)(((unsigned)c0[0] << 8) + (unsigned)c0[1]) - kq_h
                                          : (int)(((unsigned)c0[0] << 16) + ((unsigned)c0[1] << 8) + (unsigned)c1[0]);
                const int y_hi = BITS_Q16 ? (int)(((unsigned)c0[2] << 8) + (unsigned)c0[3]) - kq_h
                                          : (int)(((unsigned)c0[2] << 16) + ((unsigned)c0[3] << 8) + (unsigned)c1[2]);
                float cl = c_first, ch = c_first;
                if (key_kind == KEY_RVQ && st > 0) {
                    cl = c_rest * ld_h(sk, ko_lo + 2 * st);
                    ch = c_rest * ld_h(sk, ko_hi + 2 * st);
                }
                s_lo = fmaf(cl, (float)y_lo, s_lo);
                s_hi = fmaf(ch, (float)y_hi, s_hi);
            }
            float n_lo = ld_h(sk, ko_lo) * key_mul, n_hi = ld_h(sk, ko_hi) * key_mul;
            if (key_kind == KEY_RABITQ) {
                n_lo = __fdividef(n_lo, ld_h(sk, ko_lo + 2));
                n_hi = __fdividef(n_hi, ld_h(sk, ko_hi + 2));
            }
            sc[2 * mt] = 16 * mt + g < rem ? s_lo * n_lo : -INFINITY;
            sc[2 * mt + 1] = 16 * mt + g + 8 < rem ? s_hi * n_hi : -INFINITY;
        }
        float nv[4], tmax = -INFINITY; /* value norms; the maximum of s + log2 |v| */
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int tok = 16 * (k >> 1) + g + 8 * (k & 1);
            nv[k] = ld_h(sv, tok * VCS);
            tmax = fmaxf(tmax, sc[k] + fmaxf(lg2_ftz(nv[k]), -30.0f));
        }
        /* ---- values of the previous tile, with weights against the current reference */
        if (it > 0) values(so == 0 ? SPAN - C::ST : so - C::ST, (it - 1) & 1);

        /* ---- online softmax of head tq; weights w = exp2(s + log2 |v| - m) <= 1 */
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 4));
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 8));
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 16));
        if (__any_sync(KVQC_FULL, tmax > m)) {
            const float mn = tmax > m ? ceilf(tmax) : m;
            if (mn > m) {
                if (m != -INFINITY) {
                    const int k = min((int)(mn - m), 31);
                    l *= exp2f(m - mn);
#pragma unroll
                    for (int mt = 0; mt < 16; mt++) {
                        vacc[mt][0] >>= k;
                        vacc[mt][1] >>= k;
                        vacc[mt][2] >>= k;
                        vacc[mt][3] >>= k;
                    }
                    wacc[0] >>= k;
                    wacc[1] >>= k;
                    wacc[2] >>= k;
                    wacc[3] >>= k;
                }
                m = mn;
            }
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int tok = 16 * (k >> 1) + g + 8 * (k & 1);
            const float p = ex2_ftz(sc[k] - m), w = p * nv[k];
            l += p;
            /* round(w * 65535) in the low 16 bits (w <= 1 up to the rounding of lg2, ex2) */
            s_w[warp][it & 1][tq][tok] = (unsigned short)__float_as_uint(fmaf(w, 65535.0f, 12582912.0f));
        }
        so = so + C::ST == SPAN ? 0 : so + C::ST;
    }
    if (it > 0) {
        __syncwarp();
        values(so == 0 ? SPAN - C::ST : so - C::ST, (it - 1) & 1);
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");

    /* ---- per-warp results: head tq, dim 16 g + mt */
    l += __shfl_xor_sync(KVQC_FULL, l, 4);
    l += __shfl_xor_sync(KVQC_FULL, l, 8);
    l += __shfl_xor_sync(KVQC_FULL, l, 16);
    const float wsum = __shfl_sync(KVQC_FULL, 256.0f * (float)wacc[0] + (float)wacc[1], tq);
    const int w_hi = __shfl_sync(KVQC_FULL, wacc[0], tq), w_lo = __shfl_sync(KVQC_FULL, wacc[1], tq);
    const float cb0 = a.vp->cen[0], beta = a.vp->cen[1] - cb0, gamma = a.vp->cen[2] - cb0;
    const float inv = 1.0f / 65535.0f;
    __syncthreads(); /* every warp is done with its stages: s_part reuses them */
    float *s_part = (float *)s_buf;
    if (tq < G) {
        float *dst = s_part + (warp * 4 + tq) * 130;
        if (VB == 4) {
            /* sum w c = mid W + hs (2 (128 S_H + S_L) - 16383 W), exact in 64-bit integers */
            const long long W = 256LL * w_hi + w_lo;
#pragma unroll
            for (int j = 0; j < 8; j++) {
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const long long sH = 256LL * vacc[j][2 * r] + vacc[j][2 * r + 1];
                    const long long sL = 256LL * vacc[8 + j][2 * r] + vacc[8 + j][2 * r + 1];
                    const long long x = 2 * (128 * sH + sL) - 16383 * W;
                    dst[16 * g + 2 * j + r] = (v_mid * wsum + v_hs * (float)x) * inv;
                }
            }
        } else {
#pragma unroll
        for (int mt = 0; mt < 16; mt++) {
            const float f0 = 1.0f / (float)(1 << (2 * (mt & 3))), f1 = 0.5f * f0;
            const float s0 = (256.0f * (float)vacc[mt][0] + (float)vacc[mt][1]) * f0;
            const float s1 = (256.0f * (float)vacc[mt][2] + (float)vacc[mt][3]) * f1;
            dst[16 * g + mt] = (cb0 * wsum + beta * s0 + gamma * s1) * inv;
        }
        }
        if (g == 0) {
            dst[128] = m;
            dst[129] = l;
        }
    }
    __syncthreads();
    kvqc_merge_warps(s_part, MMA_WARPS, 4 * 130, 130, G, 128, a, b, h, split);
}

static int key_kind_of(const kvqc_params *kp) {
    if (kp->kind == KVQC_RVQ && kp->bits == 1) return KEY_RVQ;
    if (kp->kind == KVQC_RABITQ) return KEY_RABITQ;
    if (kp->kind == KVQC_MSE && kp->bits == 1) return KEY_MSE1;
    return -1;
}

int kvqc_mma_supports(const kvqc_params *kp, const kvqc_params *vp, int group) {
    int kk = key_kind_of(kp);
    if (kk < 0 || kp->dim != 128 || vp->dim != 128 || group < 1 || group > 4) return 0;
    /* 1-bit codebooks must be +-c for the sign-plane product */
    if (kk != KEY_RABITQ && kp->cen[0] != -kp->cen[1]) return 0;
    if (kk == KEY_RVQ && kp->residuals > 1 && kp->cen2[0] != -kp->cen2[1]) return 0;
    if (vp->kind != KVQC_MSE || (vp->bits != 2 && vp->bits != 4)) return 0;
    return 1;
}

typedef void (*mma_kernel_fn)(kvqc_attn_args, int);

/* dynamic shared memory of the integer kernel for these formats (0: static only) */
template <int KIND, int R, int VB> static size_t bits_dyn_bytes() {
    typedef bits_cfg<KIND, R, VB> C;
    return C::DYN ? (size_t)C::BUF : 0;
}

/* 2-bit values take the integer kernel when their codebook is symmetric (a code is then
 * affine in its two bits); the Lloyd-Max levels are built symmetric (src/core/lloydmax.c).
 * 4-bit values take it with any codebook (table lookup), except behind rvq keys of 3-4
 * passes, whose stages would not fit the static shared memory. */
static int bits_path(const kvqc_params *kp, const kvqc_params *vp) {
    if (vp->bits == 4) return !(key_kind_of(kp) == KEY_RVQ && kp->residuals > 2);
    return vp->bits == 2 && vp->cen[0] == -vp->cen[3] && vp->cen[1] == -vp->cen[2];
}

static mma_kernel_fn pick(const kvqc_params *kp, const kvqc_params *vp) {
    int R = key_kind_of(kp) == KEY_RVQ ? kp->residuals : 1;
    static const mma_kernel_fn kb[4] = {attend_bits_kernel<KEY_RVQ, 1, 2>, attend_bits_kernel<KEY_RVQ, 2, 2>,
                                        attend_bits_kernel<KEY_RVQ, 3, 2>, attend_bits_kernel<KEY_RVQ, 4, 2>};
    static const mma_kernel_fn k2[4] = {attend_mma_kernel<2, 1>, attend_mma_kernel<2, 2>,
                                        attend_mma_kernel<2, 3>, attend_mma_kernel<2, 4>};
    static const mma_kernel_fn k4[4] = {attend_mma_kernel<4, 1>, attend_mma_kernel<4, 2>,
                                        attend_mma_kernel<4, 3>, attend_mma_kernel<4, 4>};
    if (bits_path(kp, vp)) {
        int kk = key_kind_of(kp);
        if (vp->bits == 4) {
            if (kk == KEY_RABITQ) return attend_bits_kernel<KEY_RABITQ, 1, 4>;
            if (kk == KEY_MSE1) return attend_bits_kernel<KEY_MSE1, 1, 4>;
            return R == 1 ? attend_bits_kernel<KEY_RVQ, 1, 4> : attend_bits_kernel<KEY_RVQ, 2, 4>;
        }
        if (kk == KEY_RABITQ) return attend_bits_kernel<KEY_RABITQ, 1, 2>;
        if (kk == KEY_MSE1) return attend_bits_kernel<KEY_MSE1, 1, 2>;
        return kb[R - 1];
    }
    return vp->bits == 2 ? k2[R - 1] : k4[R - 1];
}

static size_t dyn_of(const kvqc_params *kp, const kvqc_params *vp) {
    if (!bits_path(kp, vp) || vp->bits != 4) return 0;
    int kk = key_kind_of(kp);
    if (kk == KEY_RABITQ) return bits_dyn_bytes<KEY_RABITQ, 1, 4>();
    if (kk == KEY_MSE1) return bits_dyn_bytes<KEY_MSE1, 1, 4>();
    return kp->residuals == 1 ? bits_dyn_bytes<KEY_RVQ, 1, 4>() : bits_dyn_bytes<KEY_RVQ, 2, 4>();
}

/* the kernel for these formats, allowed its dynamic shared memory */
static cudaError_t prepare(const kvqc_params *kp, const kvqc_params *vp, mma_kernel_fn *fn, size_t *dyn) {
    *fn = pick(kp, vp);
    *dyn = dyn_of(kp, vp);
    if (*dyn == 0) return cudaSuccess;
    return cudaFuncSetAttribute(*fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)*dyn);
}

int kvqc_mma_max_chunk(const kvqc_params *kp, const kvqc_params *vp) {
    return bits_path(kp, vp) ? BITS_MAX_CHUNK : 0;
}

int kvqc_mma_blocks_per_sm(const kvqc_params *kp, const kvqc_params *vp) {
    int n = 0;
    mma_kernel_fn fn;
    size_t dyn;
    if (prepare(kp, vp, &fn, &dyn) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fn, MMA_WARPS * 32, dyn) != cudaSuccess) {
        cudaGetLastError();
        return 1;
    }
    return n > 0 ? n : 1;
}

cudaError_t kvqc_launch_mma(const kvqc_params *kp, const kvqc_params *vp,
                            const kvqc_attn_args *a, dim3 grid, cudaStream_t s) {
    mma_kernel_fn fn;
    size_t dyn;
    cudaError_t e = prepare(kp, vp, &fn, &dyn);
    if (e != cudaSuccess) return e;
    fn<<<grid, MMA_WARPS * 32, dyn, s>>>(*a, key_kind_of(kp));
    return cudaGetLastError();
}
