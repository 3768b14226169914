/*
 * attend_base.cu - tensor-core decode attention for the baseline formats: fp16, q8_0
 * and q4_0 keys and values in any pair, head_dim 128, up to 4 query heads per KV head.
 * Same split-K scheme as attend_mma.cu (FlashDecoding, arXiv 2311.01282): each warp
 * streams tiles of 16 tokens into shared memory (cp.async, double-buffered) and runs
 *   scores  S^T = K Q^T:  A = key rows as fp16 (fp16 codes by ldmatrix; q8_0 / q4_0
 *           integers turned into exact fp16 by the 0x6400 exponent trick), B = the
 *           query split into fp16 high and low parts (columns 2h, 2h + 1);
 *   values  O^T += V^T P^T: A = value rows (ldmatrix.trans for fp16; q8_0 / q4_0
 *           integers times their block scale, rounded to fp16), B = softmax weights
 *           split the same way.
 * Key block scales multiply fp32 partial sums (one accumulator per 32-dim block), so
 * scores are exact products with fp32 accumulation; q8_0 / q4_0 values carry one fp16
 * rounding (under 2^-11 relative), the same error budget as the compressed kernel.
 */
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "cuda/attend.h"

#define BW 4     /* warps per block */
#define TILE 16  /* tokens per warp step */
#define FP16_ROW 272 /* 256 bytes + 16: ldmatrix rows land on distinct banks */

/* Tuning knobs, measured on an H200 (bench/cuda/h200-2026-12-04-base.txt; the defaults
 * were fastest or within run-to-run noise): tiles in flight per warp (cp.async stages:
 * 3-4 were up to 15 % slower than 2, the loop being issue-bound rather than waiting on
 * its copies); resident blocks per SM the kernels are compiled for (__launch_bounds__,
 * where shared memory allows that many: 5-6, i.e. 80-92 registers for the q4_0 pair,
 * were up to 30 % slower than the compiler's 4 blocks); 1: the first copies are issued
 * before the query is read and transformed (no faster, up to 13 % slower at batch 1). */
#ifndef KVQ_BASE_STAGES_FP16
#define KVQ_BASE_STAGES_FP16 2
#endif
#ifndef KVQ_BASE_STAGES_Q
#define KVQ_BASE_STAGES_Q 2
#endif
#ifndef KVQ_BASE_MIN_BLOCKS
#define KVQ_BASE_MIN_BLOCKS 1
#endif
#ifndef KVQ_BASE_EARLY_COPY
#define KVQ_BASE_EARLY_COPY 0
#endif

__device__ __forceinline__ void b_cp16(void *dst, const void *src, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void b_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void b_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldsm4(unsigned r[4], const void *p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}
__device__ __forceinline__ void ldsm4t(unsigned r[4], const void *p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}

__device__ __forceinline__ unsigned short b_f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ __forceinline__ float b_h2f(unsigned short h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ unsigned b_pack(unsigned short lo, unsigned short hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}
__device__ __forceinline__ unsigned short b_split(float x, int part) {
    unsigned short hi = b_f2h(x);
    return part ? b_f2h(x - b_h2f(hi)) : hi;
}
/* The 32-bit little-endian word at byte base + a4 + c of shared memory, with a4 a multiple
 * of 4 and c an even compile-time constant: one load when c is word-aligned, else two and
 * a funnel shift. */
__device__ __forceinline__ unsigned b_word_c(const uint8_t *base, int a4, int c) {
    const unsigned *w = (const unsigned *)(base + a4 + (c & ~3));
    if ((c & 3) == 0) return w[0];
    return __funnelshift_r(w[0], w[1], (c & 3) * 8);
}
__device__ __forceinline__ float b_ldh(const uint8_t *base, int off) {
    return b_h2f(*(const unsigned short *)(base + off));
}
/* (x & mask) | bits in one LOP3: written as C, the compiler emits an AND and an OR (two
 * immediates do not fit one instruction; here one constant is kept in a register). */
template <unsigned MASK, unsigned BITS>
__device__ __forceinline__ unsigned b_andor(unsigned x) {
    unsigned r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(x), "n"(MASK), "n"(BITS));
    return r;
}
/* half2 minus (c, c): exact for the small integers built below */
__device__ __forceinline__ unsigned b_hsub(unsigned x, unsigned cc) {
    __half2 r = __hsub2(*(const __half2 *)&x, *(const __half2 *)&cc);
    return *(unsigned *)&r;
}

__device__ __forceinline__ unsigned b_hmul(unsigned x, unsigned y) {
    __half2 r = __hmul2(*(const __half2 *)&x, *(const __half2 *)&y);
    return *(unsigned *)&r;
}

template <int F> struct fmt_t;
template <> struct fmt_t<KVQC_FP16> { enum { CS = 256, ROW = FP16_ROW }; };
template <> struct fmt_t<KVQC_Q8_0> { enum { CS = 136, ROW = 136 }; };
template <> struct fmt_t<KVQC_Q4_0> { enum { CS = 72, ROW = 72 }; };

/* Copy up to 16 token rows (n_valid real, the rest zero) into a tile of ROW-byte rows. */
template <int F>
__device__ __forceinline__ void load_tile(uint8_t *dst, const uint8_t *src, int n_valid, int lane) {
    if (F == KVQC_FP16 && n_valid == TILE) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int c = lane + 32 * i, tok = c >> 4, ch = c & 15;
            b_cp16(dst + tok * FP16_ROW + 16 * ch, src + tok * 256 + 16 * ch, 16);
        }
    } else if (F == KVQC_FP16) {
        /* 16 tokens x 16 chunks; padded rows */
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int c = lane + 32 * i, tok = c >> 4, ch = c & 15;
            bool ok = tok < n_valid;
            b_cp16(dst + tok * FP16_ROW + 16 * ch, ok ? src + tok * 256 + 16 * ch : src, ok ? 16 : 0);
        }
    } else if (n_valid == TILE) {
        /* 16 rows x CS bytes = CS chunks of 16, one run of memory */
#pragma unroll
        for (int i = 0; i < (fmt_t<F>::CS + 31) / 32; i++) {
            int c = lane + 32 * i;
            if (fmt_t<F>::CS % 32 == 0 || c < fmt_t<F>::CS) b_cp16(dst + 16 * c, src + 16 * c, 16);
        }
    } else {
        const int cs = fmt_t<F>::CS, chunks = cs;
        int valid = n_valid * cs;
        for (int c = lane; c < chunks; c += 32) {
            int off = 16 * c, nb = min(max(valid - off, 0), 16);
            b_cp16(dst + off, nb > 0 ? src + off : src, nb);
        }
    }
}

/* Dim of the query element in B slot j (0: k = 2t, 1: 2t + 1, 2: 2t + 8, 3: 2t + 9) of
 * k-step ks; the key A fragments read their rows in the same order. */
template <int KF>
__device__ __forceinline__ int qdim(int ks, int t, int j) {
    if (KF == KVQC_FP16) return 16 * ks + 2 * t + (j & 1) + 8 * (j >> 1);
    if (KF == KVQC_Q8_0) return 32 * (ks >> 1) + 8 * t + 4 * (ks & 1) + j;
    /* q4_0: slots 0..3 = dims 4t, 4t + 2, 4t + 1, 4t + 3 (+16 on odd steps) */
    return 32 * (ks >> 1) + 4 * t + 16 * (ks & 1) + (j == 1 ? 2 : j == 2 ? 1 : j);
}

/* Output dim of value row r (0: g, 1: g + 8) of m-tile mt. */
template <int VF>
__device__ __forceinline__ int vdim(int mt, int g, int r) {
    if (VF == KVQC_FP16) return 16 * mt + g + 8 * r;
    if (VF == KVQC_Q8_0) return 32 * (mt >> 1) + 4 * g + 2 * (mt & 1) + r;
    return 32 * (mt >> 1) + 2 * g + (mt & 1) + 16 * r;
}

/* Stages and the resident blocks the kernel is compiled for: pairs with an fp16 side use
 * the fp16 settings. */
template <int KF, int VF> struct cfg_t {
    enum {
        FP = KF == KVQC_FP16 || VF == KVQC_FP16,
        STAGES = FP ? KVQ_BASE_STAGES_FP16 : KVQ_BASE_STAGES_Q,
        /* dynamic + static shared memory + the 1 KB the SM reserves per block */
        SMEM = BW * STAGES * TILE * (fmt_t<KF>::ROW + fmt_t<VF>::ROW) + 16 + 2048 + 1024,
        BY_SMEM = 227 * 1024 / SMEM,
        MINB = BY_SMEM < KVQ_BASE_MIN_BLOCKS ? (BY_SMEM > 0 ? BY_SMEM : 1) : KVQ_BASE_MIN_BLOCKS
    };
};

/* The query heads of kv head h as B fragments (fp16 high and low parts). */
template <int KF>
__device__ __forceinline__ void query_frags(const kvqc_attn_args &a, int z, int h, int g, int tq,
                                            float (*s_q)[128], unsigned qb[8][2]) {
    const int G = a.group;
    kvqc_block_query(a, z, h, s_q);
    const int head = g >> 1, part = g & 1;
    const float *qrow = s_q[head < G ? head : 0];
#pragma unroll
    for (int ks = 0; ks < 8; ks++) {
        /* q4_0 keys: the high-nibble k-steps hold 16 (n - 8) */
        const float f = KF == KVQC_Q4_0 && (ks & 1) ? 0.0625f : 1.0f;
        if (head < G) {
            qb[ks][0] = b_pack(b_split(qrow[qdim<KF>(ks, tq, 0)] * f, part), b_split(qrow[qdim<KF>(ks, tq, 1)] * f, part));
            qb[ks][1] = b_pack(b_split(qrow[qdim<KF>(ks, tq, 2)] * f, part), b_split(qrow[qdim<KF>(ks, tq, 3)] * f, part));
        } else {
            qb[ks][0] = qb[ks][1] = 0u;
        }
    }
}

template <int KF, int VF>
__global__ void __launch_bounds__(BW * 32, (cfg_t<KF, VF>::MINB)) attend_base_kernel(kvqc_attn_args a) {
    constexpr int KROW = fmt_t<KF>::ROW, VROW = fmt_t<VF>::ROW;
    constexpr int KCS = fmt_t<KF>::CS, VCS = fmt_t<VF>::CS;
    constexpr int KT = TILE * KROW, VT = TILE * VROW;
    constexpr int S = cfg_t<KF, VF>::STAGES, STEP = TILE * BW;
    static_assert(S >= 2, "at least two copy stages");
    extern __shared__ __align__(16) uint8_t smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    uint8_t *s_k = smem + warp * S * (KT + VT);
    uint8_t *s_v = s_k + S * KT;
    /* after the loop each warp's [4][130] partial reuses its own tile buffers */
    float *s_part = (float *)smem;
    const int split = blockIdx.x, h = blockIdx.y, z = blockIdx.z;
    const int seq = z / a.q_per_seq;
    const int G = a.group;
    const int len = a.seq_lens[seq];
    const int t0 = split * a.chunk, t1 = min(len, t0 + a.chunk);

    __shared__ float s_q[4][128];
    unsigned qb[8][2];
    if (!KVQ_BASE_EARLY_COPY) query_frags<KF>(a, z, h, g, tq, s_q, qb);

    float acc[8][4];
#pragma unroll
    for (int mt = 0; mt < 8; mt++) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    /* the first S - 1 tiles are put in flight; rows of the contiguous layout are
     * row_base + t (no page lookups, no per-tile products) */
    const bool paged = a.page_table != nullptr;
    const size_t row_base = ((size_t)seq * a.n_kv_heads + h) * (size_t)a.page_size;
    int tt = t0 + TILE * warp;
    {
        int pg[S - 1];
#pragma unroll
        for (int i = 0; i < S - 1; i++) pg[i] = paged && tt + i * STEP < t1 ? kvqc_page(a, seq, tt + i * STEP) : 0;
#pragma unroll
        for (int i = 0; i < S - 1; i++) {
            const int ti = tt + i * STEP;
            if (ti < t1) {
                size_t r0 = paged ? kvqc_row_at(a, pg[i], h, ti) : row_base + ti;
                load_tile<KF>(s_k + i * KT, a.k_codes + r0 * KCS, min(TILE, t1 - ti), lane);
                load_tile<VF>(s_v + i * VT, a.v_codes + r0 * VCS, min(TILE, t1 - ti), lane);
            }
            b_commit();
        }
    }
    if (KVQ_BASE_EARLY_COPY) query_frags<KF>(a, z, h, g, tq, s_q, qb);
    /* ti: the next tile to copy, into slot sw; page-table entries are read one step ahead */
    int ti = tt + (S - 1) * STEP, sw = S - 1, sr = 0;
    int page_next = paged && ti < t1 ? kvqc_page(a, seq, ti) : 0;
    for (; tt < t1; tt += STEP) {
        if (ti < t1) {
            size_t r1 = paged ? kvqc_row_at(a, page_next, h, ti) : row_base + ti;
            load_tile<KF>(s_k + sw * KT, a.k_codes + r1 * KCS, min(TILE, t1 - ti), lane);
            load_tile<VF>(s_v + sw * VT, a.v_codes + r1 * VCS, min(TILE, t1 - ti), lane);
            if (paged && ti + STEP < t1) page_next = kvqc_page(a, seq, ti + STEP);
        }
        b_commit();
        ti += STEP;
        sw = sw + 1 == S ? 0 : sw + 1;
        b_wait<S - 1>();
        __syncwarp();
        const uint8_t *sk = s_k + sr * KT, *sv = s_v + sr * VT;
        sr = sr + 1 == S ? 0 : sr + 1;

        /* ---- scores of tokens g and g + 8 for head tq */
        float s_lo = 0.0f, s_hi = 0.0f;
        if (KF == KVQC_FP16) {
            float c[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            const uint8_t *rowp = sk + ((lane & 7) + 8 * ((lane >> 3) & 1)) * FP16_ROW + 16 * (lane >> 4);
#pragma unroll
            for (int ks = 0; ks < 8; ks++) {
                unsigned r[4];
                ldsm4(r, rowp + 32 * ks);
                kvqc_mma_f16(c[ks & 1], r[0], r[1], r[2], r[3], qb[ks][0], qb[ks][1]);
            }
            s_lo = (c[0][0] + c[0][1]) + (c[1][0] + c[1][1]);
            s_hi = (c[0][2] + c[0][3]) + (c[1][2] + c[1][3]);
        } else {
            const int ko_lo = g * KROW, ko_hi = (g + 8) * KROW;
#pragma unroll
            for (int blk = 0; blk < 4; blk++) {
                float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                const int bo = blk * (KCS / 4);
                unsigned a0[2], a1[2], a2[2], a3[2];
                if (KF == KVQC_Q8_0) {
                    const unsigned C = 0x64646464u, OFF = 0x64806480u; /* 1152, 1152 */
#pragma unroll
                    for (int hf = 0; hf < 2; hf++) {
                        unsigned wl = b_word_c(sk, ko_lo + 8 * tq, bo + 2 + 4 * hf) ^ 0x80808080u;
                        unsigned wh = b_word_c(sk, ko_hi + 8 * tq, bo + 2 + 4 * hf) ^ 0x80808080u;
                        a0[hf] = b_hsub(__byte_perm(wl, C, 0x4140), OFF);
                        a2[hf] = b_hsub(__byte_perm(wl, C, 0x4342), OFF);
                        a1[hf] = b_hsub(__byte_perm(wh, C, 0x4140), OFF);
                        a3[hf] = b_hsub(__byte_perm(wh, C, 0x4342), OFF);
                    }
                } else {
                    /* low nibbles: 1024 + n - 1032; high nibbles in place: 1024 + 16 n - 1152 =
                     * 16 (n - 8), the query of those k-steps being divided by 16 */
                    const unsigned OFF[2] = {0x64086408u, 0x64806480u};
                    const unsigned wl = b_word_c(sk, ko_lo + 4 * tq, bo + 2), wl8 = wl >> 8;
                    const unsigned wh = b_word_c(sk, ko_hi + 4 * tq, bo + 2), wh8 = wh >> 8;
                    a0[0] = b_hsub(b_andor<0x000F000Fu, 0x64006400u>(wl), OFF[0]);
                    a2[0] = b_hsub(b_andor<0x000F000Fu, 0x64006400u>(wl8), OFF[0]);
                    a1[0] = b_hsub(b_andor<0x000F000Fu, 0x64006400u>(wh), OFF[0]);
                    a3[0] = b_hsub(b_andor<0x000F000Fu, 0x64006400u>(wh8), OFF[0]);
                    a0[1] = b_hsub(b_andor<0x00F000F0u, 0x64006400u>(wl), OFF[1]);
                    a2[1] = b_hsub(b_andor<0x00F000F0u, 0x64006400u>(wl8), OFF[1]);
                    a1[1] = b_hsub(b_andor<0x00F000F0u, 0x64006400u>(wh), OFF[1]);
                    a3[1] = b_hsub(b_andor<0x00F000F0u, 0x64006400u>(wh8), OFF[1]);
                }
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
                    kvqc_mma_f16(c, a0[hf], a1[hf], a2[hf], a3[hf], qb[2 * blk + hf][0], qb[2 * blk + hf][1]);
                s_lo += b_ldh(sk, ko_lo + bo) * (c[0] + c[1]);
                s_hi += b_ldh(sk, ko_hi + bo) * (c[2] + c[3]);
            }
        }
        if (tt + g >= t1) s_lo = -INFINITY;
        if (tt + g + 8 >= t1) s_hi = -INFINITY;

        /* ---- online softmax for head tq (lanes with equal tq share it) */
        float tmax = fmaxf(s_lo, s_hi);
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 4));
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 8));
        tmax = fmaxf(tmax, __shfl_xor_sync(KVQC_FULL, tmax, 16));
        float mn = fmaxf(m, tmax);
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
        /* weights to the B layout: rows = tokens 2tq, 2tq + 1 (b0), + 8 (b1); column g */
        const int src0 = 4 * (2 * tq) + (g >> 1), src1 = src0 + 4;
        float x0 = __shfl_sync(KVQC_FULL, p_lo, src0), x1 = __shfl_sync(KVQC_FULL, p_lo, src1);
        float y0 = __shfl_sync(KVQC_FULL, p_hi, src0), y1 = __shfl_sync(KVQC_FULL, p_hi, src1);
        const int part = g & 1;
        const int T0 = 2 * tq, T1 = T0 + 1, T8 = T0 + 8, T9 = T0 + 9;

        if (VF == KVQC_FP16) {
            const unsigned pb0 = b_pack(b_split(x0, part), b_split(x1, part));
            const unsigned pb1 = b_pack(b_split(y0, part), b_split(y1, part));
            const uint8_t *rowp = sv + ((lane & 7) + 8 * (lane >> 4)) * FP16_ROW + 16 * ((lane >> 3) & 1);
#pragma unroll
            for (int mt = 0; mt < 8; mt++) {
                unsigned r[4];
                ldsm4t(r, rowp + 32 * mt);
                kvqc_mma_f16(acc[mt], r[0], r[1], r[2], r[3], pb0, pb1);
            }
        } else {
            /* block scales ride in the A operand: integer * scale rounded to fp16 (under
             * 2^-11 relative, the codebook rounding of the compressed kernel) */
            const unsigned pb0 = b_pack(b_split(x0, part), b_split(x1, part));
            const unsigned pb1 = b_pack(b_split(y0, part), b_split(y1, part));
#pragma unroll
            for (int bb = 0; bb < 4; bb++) {
                const int bo = bb * (VCS / 4);
                const unsigned d01 = __byte_perm(*(const unsigned short *)(sv + T0 * VROW + bo),
                                                 *(const unsigned short *)(sv + T1 * VROW + bo), 0x5410);
                const unsigned d89 = __byte_perm(*(const unsigned short *)(sv + T8 * VROW + bo),
                                                 *(const unsigned short *)(sv + T9 * VROW + bo), 0x5410);
                unsigned fa[2][4]; /* [mt & 1][a0..a3] */
                if (VF == KVQC_Q8_0) {
                    const unsigned C = 0x64646464u, OFF = 0x64806480u;
                    unsigned w0 = b_word_c(sv, T0 * VROW + 4 * g, bo + 2), w1 = b_word_c(sv, T1 * VROW + 4 * g, bo + 2);
                    unsigned w8 = b_word_c(sv, T8 * VROW + 4 * g, bo + 2), w9 = b_word_c(sv, T9 * VROW + 4 * g, bo + 2);
                    unsigned y01 = __byte_perm(w0, w1, 0x5140) ^ 0x80808080u; /* dims 0,1 of both */
                    unsigned y23 = __byte_perm(w0, w1, 0x7362) ^ 0x80808080u;
                    unsigned z01 = __byte_perm(w8, w9, 0x5140) ^ 0x80808080u;
                    unsigned z23 = __byte_perm(w8, w9, 0x7362) ^ 0x80808080u;
                    fa[0][0] = b_hsub(__byte_perm(y01, C, 0x4140), OFF);
                    fa[0][1] = b_hsub(__byte_perm(y01, C, 0x4342), OFF);
                    fa[0][2] = b_hsub(__byte_perm(z01, C, 0x4140), OFF);
                    fa[0][3] = b_hsub(__byte_perm(z01, C, 0x4342), OFF);
                    fa[1][0] = b_hsub(__byte_perm(y23, C, 0x4140), OFF);
                    fa[1][1] = b_hsub(__byte_perm(y23, C, 0x4342), OFF);
                    fa[1][2] = b_hsub(__byte_perm(z23, C, 0x4140), OFF);
                    fa[1][3] = b_hsub(__byte_perm(z23, C, 0x4342), OFF);
                } else {
                    const unsigned OFF = 0x64086408u;
                    const int o = bo + 2 + 2 * g;
                    unsigned h0 = *(const unsigned short *)(sv + T0 * VROW + o);
                    unsigned h1 = *(const unsigned short *)(sv + T1 * VROW + o);
                    unsigned h8 = *(const unsigned short *)(sv + T8 * VROW + o);
                    unsigned h9 = *(const unsigned short *)(sv + T9 * VROW + o);
                    unsigned y = __byte_perm(h0, h1, 0x5410), zz = __byte_perm(h8, h9, 0x5410);
                    /* high nibbles in place: bits 4-7 under exponent 2^6 (ulp 1/16) read
                     * 64 + n, so one shift per pair of bytes instead of three */
                    const unsigned OFFH = 0x54805480u; /* 72 */
                    const unsigned y8 = y >> 8, z8 = zz >> 8;
                    fa[0][0] = b_hsub(b_andor<0x000F000Fu, 0x64006400u>(y), OFF);
                    fa[0][1] = b_hsub(b_andor<0x00F000F0u, 0x54005400u>(y), OFFH);
                    fa[0][2] = b_hsub(b_andor<0x000F000Fu, 0x64006400u>(zz), OFF);
                    fa[0][3] = b_hsub(b_andor<0x00F000F0u, 0x54005400u>(zz), OFFH);
                    fa[1][0] = b_hsub(b_andor<0x000F000Fu, 0x64006400u>(y8), OFF);
                    fa[1][1] = b_hsub(b_andor<0x00F000F0u, 0x54005400u>(y8), OFFH);
                    fa[1][2] = b_hsub(b_andor<0x000F000Fu, 0x64006400u>(z8), OFF);
                    fa[1][3] = b_hsub(b_andor<0x00F000F0u, 0x54005400u>(z8), OFFH);
                }
#pragma unroll
                for (int j = 0; j < 2; j++)
                    kvqc_mma_f16(acc[2 * bb + j], b_hmul(fa[j][0], d01), b_hmul(fa[j][1], d01), b_hmul(fa[j][2], d89),
                          b_hmul(fa[j][3], d89), pb0, pb1);
            }
        }
        __syncwarp();
    }

    l += __shfl_xor_sync(KVQC_FULL, l, 4);
    l += __shfl_xor_sync(KVQC_FULL, l, 8);
    l += __shfl_xor_sync(KVQC_FULL, l, 16);
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncwarp();
    constexpr int WSTRIDE = S * (KT + VT) / 4; /* floats between warps' regions */
    static_assert(WSTRIDE >= 4 * 130, "a warp's tile buffers hold its partial");
    if (tq < G) {
        float *dst = s_part + warp * WSTRIDE + tq * 130;
#pragma unroll
        for (int mt = 0; mt < 8; mt++) {
            dst[vdim<VF>(mt, g, 0)] = acc[mt][0] + acc[mt][1];
            dst[vdim<VF>(mt, g, 1)] = acc[mt][2] + acc[mt][3];
        }
        if (g == 0) {
            dst[128] = m;
            dst[129] = l;
        }
    }
    __syncthreads();
    kvqc_merge_warps(s_part, BW, WSTRIDE, 130, G, 128, a, z, h, split);
}

static int fmt_index(int kind) {
    return kind == KVQC_FP16 ? 0 : kind == KVQC_Q8_0 ? 1 : kind == KVQC_Q4_0 ? 2 : -1;
}

int kvqc_base_supports(const kvqc_params *kp, const kvqc_params *vp, int group) {
    return fmt_index(kp->kind) >= 0 && fmt_index(vp->kind) >= 0 && kp->dim == 128 && vp->dim == 128 &&
           group >= 1 && group <= 4;
}

typedef void (*base_fn)(kvqc_attn_args);

static const base_fn k_base[3][3] = {
    {attend_base_kernel<KVQC_FP16, KVQC_FP16>, attend_base_kernel<KVQC_FP16, KVQC_Q8_0>,
     attend_base_kernel<KVQC_FP16, KVQC_Q4_0>},
    {attend_base_kernel<KVQC_Q8_0, KVQC_FP16>, attend_base_kernel<KVQC_Q8_0, KVQC_Q8_0>,
     attend_base_kernel<KVQC_Q8_0, KVQC_Q4_0>},
    {attend_base_kernel<KVQC_Q4_0, KVQC_FP16>, attend_base_kernel<KVQC_Q4_0, KVQC_Q8_0>,
     attend_base_kernel<KVQC_Q4_0, KVQC_Q4_0>},
};
static const int k_row[3] = {FP16_ROW, 136, 72};

static int base_stages(int ki, int vi) {
    return ki == 0 || vi == 0 ? KVQ_BASE_STAGES_FP16 : KVQ_BASE_STAGES_Q;
}

static size_t base_smem(int ki, int vi) {
    /* + 16: b_word_c reads the word after an aligned one it does not need */
    return (size_t)BW * base_stages(ki, vi) * TILE * (k_row[ki] + k_row[vi]) + 16;
}

cudaError_t kvqc_base_prepare(void) {
    for (int ki = 0; ki < 3; ki++)
        for (int vi = 0; vi < 3; vi++) {
            cudaError_t e = cudaFuncSetAttribute(k_base[ki][vi], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 (int)base_smem(ki, vi));
            if (e != cudaSuccess) return e;
        }
    return cudaSuccess;
}

int kvqc_base_blocks_per_sm(const kvqc_params *kp, const kvqc_params *vp) {
    int ki = fmt_index(kp->kind), vi = fmt_index(vp->kind), n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k_base[ki][vi], BW * 32, base_smem(ki, vi)) !=
        cudaSuccess) {
        cudaGetLastError();
        return 1;
    }
    return n > 0 ? n : 1;
}

cudaError_t kvqc_launch_base(const kvqc_params *kp, const kvqc_params *vp, const kvqc_attn_args *a,
                             dim3 grid, cudaStream_t s) {
    int ki = fmt_index(kp->kind), vi = fmt_index(vp->kind);
    k_base[ki][vi]<<<grid, BW * 32, base_smem(ki, vi), s>>>(*a);
    return cudaGetLastError();
}
