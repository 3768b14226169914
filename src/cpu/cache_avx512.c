/*
 * cache_avx512.c - AVX-512 versions of the cache's fused attention kernels (references
 * in cache_scalar.c). Heads of a KV group are taken four at a time so each code is
 * loaded and expanded once for four queries; values accumulate in 32-coordinate slices
 * that keep 4 heads x 2 vectors of accumulators in registers across a block of tokens.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu/cache_kernels.h"

#define HG 4 /* heads per pass */

static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

/* Four horizontal sums at once. */
static inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 ab = _mm256_hadd_ps(a8, b8), cd = _mm256_hadd_ps(c8, d8);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static inline float fp16_scalar(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* hsum4's sums, the same adds in the same order, for 4 tokens x 4 heads at once: hsum4
 * adds lanes i and i + 8, then neighbours, then neighbouring pairs, then the two halves;
 * fold1 does the first for two heads of a token (lanes: head A's 8 sums, head B's),
 * fold2 the next two for two such vectors (each 128-bit lane: four partial sums), fold4
 * the last, so lane 4 h + t of the result is hsum4's sum of head h, token t: the scores
 * bit for bit as one token at a time, without the 4-float round trip through the stack
 * and scalar stores that had taken about half of the kernel's time in cache. */
/* The lanes of a 16-token vector that hold tokens, `left` of them from its first on. */
static inline __mmask16 first16(size_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

static inline __m512 hsum_fold1(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
static inline __m512 hsum_fold2(__m512 p, __m512 q) {
    return _mm512_add_ps(_mm512_shuffle_ps(p, q, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(p, q, _MM_SHUFFLE(3, 1, 3, 1)));
}
static inline __m512 hsum_fold4(__m512 t, __m512 u) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(t, u, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(t, u, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* ---------------------------------------------------------- row decoders */

/* 32 coordinates starting at block b (32-wide) of one row, into x0 (0..15), x1 (16..31) */
static inline void dec_f32(const uint8_t *row, uint32_t b, __m512 *x0, __m512 *x1) {
    const float *r = (const float *)(const void *)row + 32 * b;
    *x0 = _mm512_loadu_ps(r);
    *x1 = _mm512_loadu_ps(r + 16);
}
static inline void dec_f16(const uint8_t *row, uint32_t b, __m512 *x0, __m512 *x1) {
    const uint8_t *r = row + 64 * b;
    *x0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)r));
    *x1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(r + 32)));
}
static inline void dec_q8_0(const uint8_t *row, uint32_t b, __m512 *x0, __m512 *x1) {
    const uint8_t *blk = row + 34 * b;
    __m512 d = _mm512_set1_ps(fp16_scalar(blk));
    __m512i i0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2)));
    __m512i i1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18)));
    *x0 = _mm512_mul_ps(_mm512_cvtepi32_ps(i0), d);
    *x1 = _mm512_mul_ps(_mm512_cvtepi32_ps(i1), d);
}
static inline void dec_q4_0(const uint8_t *row, uint32_t b, __m512 *x0, __m512 *x1) {
    const uint8_t *blk = row + 18 * b;
    __m512 d = _mm512_set1_ps(fp16_scalar(blk));
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2)));
    __m512i eight = _mm512_set1_epi32(8);
    __m512i lo = _mm512_sub_epi32(_mm512_and_si512(v, _mm512_set1_epi32(15)), eight);
    __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(v, 4), eight);
    *x0 = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d);
    *x1 = _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d);
}

/* Scores: four tokens per pass, so each load of a query slice serves all four (the query
 * loads, not the multiply-adds, bound one token at a time), 4 heads x 4 tokens of
 * accumulators, each lane the same chain of multiply-adds as one token at a time; the 16
 * sums are hsum4's adds in hsum4's order (hsum_fold*), lane 4 h + t, stored as 4 floats
 * a head: the same bits as before, where the horizontal sums and scalar stores of two
 * tokens at a time had been as many instructions as the products. (A fold of unpacks
 * first, other bits by rounding, 1e-7 of the output, turned SmolLM2's greedy answer
 * under the q4 preset on one of the five test questions: the order was kept.)
 * Sums: two 32-coordinate slices per pass over the block, 4 heads x 4 vectors of
 * accumulators, so each weight is broadcast once per 64 coordinates. */
/* Rows are asked for KEY_AHEAD rows before the scores read them: four rows at a time
 * read their first lines, then their second ones, ..., which the hardware prefetcher
 * follows worse than one row after the other (fp16 keys, AVX-512, 32k step in one
 * process: without it 0.85-0.92x the two-token kernel, with it 8 rows on 1.08x, 16 rows
 * 1.08-1.21x, 32 rows 1.02x; into L2 instead of L1 1.18x). The value sums of fp16 rows
 * ask for the next group's rows as a group starts (1.19x with both against 1.08x with
 * the keys' alone); for q8_0 values that measured 0.98-0.99x and is not done. Only a
 * row's own bytes: rows of the exact window are `stride` apart with other heads between. */
#define KEY_AHEAD 16
static inline void prefetch_row(const uint8_t *row, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)row + o, _MM_HINT_T0);
    _mm_prefetch((const char *)row + bytes - 1, _MM_HINT_T0);
}

/* Sums go over the block in groups of ROW_TG tokens, each group's rows read once for all
 * coordinate slices while they sit in L1: fp16 and q8_0 rows come from memory, and a pass
 * per slice over the whole block read each row in pieces a block apart, which streams
 * slower (AVX-512, 32k tokens: accum_f16 alone 3.5 -> 3.0 ms, accum_q8_0 2.5 -> 1.9 ms).
 * A group's sums are parked (part) and picked up by the next, so every lane is the same
 * chain of multiply-adds as in one pass over the block: the same bits. fp32 rows (the
 * decode buffer, in cache) and q4_0 (more decode work per byte) keep one pass: the
 * groups' round trips cost them more than they save. Heads wider than ROW_PART too. */
#define ROW_PART 512
/* A head's sums of one 64-coordinate slice: parked until the block's last group, then
 * added to its accumulator (named registers: an array of them went through the stack). */
#define ROW_OUT(H, A0, A1, A2, A3)                                                           \
    do {                                                                                     \
        if (te < n) {                                                                        \
            float *q_ = part[H] + 32 * b;                                                    \
            _mm512_store_ps(q_, A0), _mm512_store_ps(q_ + 16, A1);                           \
            _mm512_store_ps(q_ + 32, A2), _mm512_store_ps(q_ + 48, A3);                      \
        } else if (ah[H] != dummy) {                                                         \
            float *p_ = ah[H] + 32 * b;                                                      \
            _mm512_storeu_ps(p_, _mm512_add_ps(_mm512_loadu_ps(p_), A0));                    \
            _mm512_storeu_ps(p_ + 16, _mm512_add_ps(_mm512_loadu_ps(p_ + 16), A1));          \
            if (two) {                                                                       \
                _mm512_storeu_ps(p_ + 32, _mm512_add_ps(_mm512_loadu_ps(p_ + 32), A2));      \
                _mm512_storeu_ps(p_ + 48, _mm512_add_ps(_mm512_loadu_ps(p_ + 48), A3));      \
            }                                                                                \
        }                                                                                    \
    } while (0)
#define DEFINE_ROW_KERNELS(NAME, DEC, BLK, SCALAR_SCORE, SCALAR_ACCUM, ROW_TG, V_AHEAD)       \
    static void score_##NAME(const float *q, uint32_t G, uint32_t dim, const uint8_t *k,     \
                             size_t stride, size_t n, float *scores, size_t ld) {            \
        if (dim % 32) {                                                                      \
            kvqi_cache_kernels_scalar.SCALAR_SCORE(q, G, dim, k, stride, n, scores, ld);     \
            return;                                                                          \
        }                                                                                    \
        uint32_t nb = dim / 32;                                                              \
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                            \
            const float *q0p = q + (size_t)h0 * dim;                                         \
            const float *q1p = q + (size_t)(h0 + 1 < G ? h0 + 1 : h0) * dim;                 \
            const float *q2p = q + (size_t)(h0 + 2 < G ? h0 + 2 : h0) * dim;                 \
            const float *q3p = q + (size_t)(h0 + 3 < G ? h0 + 3 : h0) * dim;                 \
            for (size_t t = 0; t < n; t += 4) {                                              \
                size_t nt = n - t < 4 ? n - t : 4;                                           \
                const uint8_t *r0 = k + t * stride;                                          \
                const uint8_t *r1 = r0 + (nt > 1 ? stride : 0);                              \
                const uint8_t *r2 = r0 + (nt > 2 ? 2 * stride : 0);                          \
                const uint8_t *r3 = r0 + (nt > 3 ? 3 * stride : 0);                          \
                for (size_t o = 0; o < 4 * stride; o += stride) /* KEY_AHEAD rows on */     \
                    prefetch_row(r0 + KEY_AHEAD * stride + o, nb * (BLK));                   \
                __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;           \
                __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;                           \
                __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;                           \
                __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;                           \
                for (uint32_t b = 0; b < nb; b++) {                                          \
                    __m512 x0, x1, y0, y1, z0, z1, u0, u1;                                   \
                    DEC(r0, b, &x0, &x1);                                                    \
                    DEC(r1, b, &y0, &y1);                                                    \
                    DEC(r2, b, &z0, &z1);                                                    \
                    DEC(r3, b, &u0, &u1);                                                    \
                    __m512 q0 = _mm512_loadu_ps(q0p + 32 * b);                               \
                    a00 = _mm512_fmadd_ps(q0, x0, a00);                                      \
                    a01 = _mm512_fmadd_ps(q0, y0, a01);                                      \
                    a02 = _mm512_fmadd_ps(q0, z0, a02);                                      \
                    a03 = _mm512_fmadd_ps(q0, u0, a03);                                      \
                    __m512 q1 = _mm512_loadu_ps(q1p + 32 * b);                               \
                    a10 = _mm512_fmadd_ps(q1, x0, a10);                                      \
                    a11 = _mm512_fmadd_ps(q1, y0, a11);                                      \
                    a12 = _mm512_fmadd_ps(q1, z0, a12);                                      \
                    a13 = _mm512_fmadd_ps(q1, u0, a13);                                      \
                    __m512 q2 = _mm512_loadu_ps(q2p + 32 * b);                               \
                    a20 = _mm512_fmadd_ps(q2, x0, a20);                                      \
                    a21 = _mm512_fmadd_ps(q2, y0, a21);                                      \
                    a22 = _mm512_fmadd_ps(q2, z0, a22);                                      \
                    a23 = _mm512_fmadd_ps(q2, u0, a23);                                      \
                    __m512 q3 = _mm512_loadu_ps(q3p + 32 * b);                               \
                    a30 = _mm512_fmadd_ps(q3, x0, a30);                                      \
                    a31 = _mm512_fmadd_ps(q3, y0, a31);                                      \
                    a32 = _mm512_fmadd_ps(q3, z0, a32);                                      \
                    a33 = _mm512_fmadd_ps(q3, u0, a33);                                      \
                    q0 = _mm512_loadu_ps(q0p + 32 * b + 16);                                 \
                    a00 = _mm512_fmadd_ps(q0, x1, a00);                                      \
                    a01 = _mm512_fmadd_ps(q0, y1, a01);                                      \
                    a02 = _mm512_fmadd_ps(q0, z1, a02);                                      \
                    a03 = _mm512_fmadd_ps(q0, u1, a03);                                      \
                    q1 = _mm512_loadu_ps(q1p + 32 * b + 16);                                 \
                    a10 = _mm512_fmadd_ps(q1, x1, a10);                                      \
                    a11 = _mm512_fmadd_ps(q1, y1, a11);                                      \
                    a12 = _mm512_fmadd_ps(q1, z1, a12);                                      \
                    a13 = _mm512_fmadd_ps(q1, u1, a13);                                      \
                    q2 = _mm512_loadu_ps(q2p + 32 * b + 16);                                 \
                    a20 = _mm512_fmadd_ps(q2, x1, a20);                                      \
                    a21 = _mm512_fmadd_ps(q2, y1, a21);                                      \
                    a22 = _mm512_fmadd_ps(q2, z1, a22);                                      \
                    a23 = _mm512_fmadd_ps(q2, u1, a23);                                      \
                    q3 = _mm512_loadu_ps(q3p + 32 * b + 16);                                 \
                    a30 = _mm512_fmadd_ps(q3, x1, a30);                                      \
                    a31 = _mm512_fmadd_ps(q3, y1, a31);                                      \
                    a32 = _mm512_fmadd_ps(q3, z1, a32);                                      \
                    a33 = _mm512_fmadd_ps(q3, u1, a33);                                      \
                }                                                                            \
                __m512 r = hsum_fold4(                                                       \
                    hsum_fold2(hsum_fold2(hsum_fold1(a00, a10), hsum_fold1(a01, a11)),       \
                               hsum_fold2(hsum_fold1(a02, a12), hsum_fold1(a03, a13))),      \
                    hsum_fold2(hsum_fold2(hsum_fold1(a20, a30), hsum_fold1(a21, a31)),       \
                               hsum_fold2(hsum_fold1(a22, a32), hsum_fold1(a23, a33))));     \
                __mmask8 m = (__mmask8)((1u << nt) - 1u);                                    \
                float *s0 = scores + (size_t)h0 * ld + t;                                    \
                _mm_mask_storeu_ps(s0, m, _mm512_castps512_ps128(r));                        \
                if (h0 + 1 < G) _mm_mask_storeu_ps(s0 + ld, m, _mm512_extractf32x4_ps(r, 1)); \
                if (h0 + 2 < G) _mm_mask_storeu_ps(s0 + 2 * ld, m, _mm512_extractf32x4_ps(r, 2)); \
                if (h0 + 3 < G) _mm_mask_storeu_ps(s0 + 3 * ld, m, _mm512_extractf32x4_ps(r, 3)); \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    static void accum_##NAME(const float *w, size_t ld, uint32_t G, uint32_t dim,            \
                             const uint8_t *v, size_t stride, size_t n, float *acc) {        \
        if (dim % 32) {                                                                      \
            kvqi_cache_kernels_scalar.SCALAR_ACCUM(w, ld, G, dim, v, stride, n, acc);        \
            return;                                                                          \
        }                                                                                    \
        float zero_w[KVQI_MAX_BLOCK_TOKENS];                                                 \
        float dummy[64];                                                                     \
        _Alignas(64) float part[HG][ROW_PART + 32]; /* a slice past an odd last block */ \
        if (G % HG) memset(zero_w, 0, sizeof zero_w);                                        \
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                            \
            const float *wh[HG];                                                             \
            float *ah[HG];                                                                   \
            for (uint32_t h = 0; h < HG; h++) {                                              \
                int ok = h0 + h < G;                                                         \
                wh[h] = ok ? w + (h0 + h) * ld : zero_w;                                     \
                ah[h] = ok ? acc + (size_t)(h0 + h) * dim : dummy;                           \
            }                                                                                \
            size_t step = ROW_TG < n && dim <= ROW_PART ? ROW_TG : n;                        \
            for (size_t tg = 0; tg < n; tg += step)                                          \
            for (uint32_t b = 0; b < dim / 32; b += 2) {                                     \
                int two = b + 1 < dim / 32;                                                  \
                size_t te = tg + step < n ? tg + step : n;                                   \
                if (V_AHEAD && b == 0) /* the next group's rows */                           \
                    for (size_t t = te; t < te + step; t++)                                  \
                        prefetch_row(v + t * stride, dim / 32 * (BLK));                      \
                __m512 r00 = _mm512_setzero_ps(), r01 = r00, r02 = r00, r03 = r00;           \
                __m512 r10 = r00, r11 = r00, r12 = r00, r13 = r00;                           \
                __m512 r20 = r00, r21 = r00, r22 = r00, r23 = r00;                           \
                __m512 r30 = r00, r31 = r00, r32 = r00, r33 = r00;                           \
                if (tg) { /* the earlier groups' sums: one chain per lane, as in one pass */ \
                    const float *p0 = part[0] + 32 * b, *p1 = part[1] + 32 * b;              \
                    const float *p2 = part[2] + 32 * b, *p3 = part[3] + 32 * b;              \
                    r00 = _mm512_load_ps(p0), r01 = _mm512_load_ps(p0 + 16);                 \
                    r10 = _mm512_load_ps(p1), r11 = _mm512_load_ps(p1 + 16);                 \
                    r20 = _mm512_load_ps(p2), r21 = _mm512_load_ps(p2 + 16);                 \
                    r30 = _mm512_load_ps(p3), r31 = _mm512_load_ps(p3 + 16);                 \
                    r02 = _mm512_load_ps(p0 + 32), r03 = _mm512_load_ps(p0 + 48);            \
                    r12 = _mm512_load_ps(p1 + 32), r13 = _mm512_load_ps(p1 + 48);            \
                    r22 = _mm512_load_ps(p2 + 32), r23 = _mm512_load_ps(p2 + 48);            \
                    r32 = _mm512_load_ps(p3 + 32), r33 = _mm512_load_ps(p3 + 48);            \
                }                                                                            \
                if (two) /* the branch out of the token loop: in it, GCC parked x0-x2 on the stack */ \
                    for (size_t t = tg; t < te; t++) {                                       \
                        __m512 x0, x1, x2, x3;                                               \
                        DEC(v + t * stride, b, &x0, &x1);                                    \
                        DEC(v + t * stride, b + 1, &x2, &x3);                                \
                        __m512 w0 = _mm512_set1_ps(wh[0][t]), w1 = _mm512_set1_ps(wh[1][t]); \
                        __m512 w2 = _mm512_set1_ps(wh[2][t]), w3 = _mm512_set1_ps(wh[3][t]); \
                        r00 = _mm512_fmadd_ps(w0, x0, r00);                                  \
                        r01 = _mm512_fmadd_ps(w0, x1, r01);                                  \
                        r02 = _mm512_fmadd_ps(w0, x2, r02);                                  \
                        r03 = _mm512_fmadd_ps(w0, x3, r03);                                  \
                        r10 = _mm512_fmadd_ps(w1, x0, r10);                                  \
                        r11 = _mm512_fmadd_ps(w1, x1, r11);                                  \
                        r12 = _mm512_fmadd_ps(w1, x2, r12);                                  \
                        r13 = _mm512_fmadd_ps(w1, x3, r13);                                  \
                        r20 = _mm512_fmadd_ps(w2, x0, r20);                                  \
                        r21 = _mm512_fmadd_ps(w2, x1, r21);                                  \
                        r22 = _mm512_fmadd_ps(w2, x2, r22);                                  \
                        r23 = _mm512_fmadd_ps(w2, x3, r23);                                  \
                        r30 = _mm512_fmadd_ps(w3, x0, r30);                                  \
                        r31 = _mm512_fmadd_ps(w3, x1, r31);                                  \
                        r32 = _mm512_fmadd_ps(w3, x2, r32);                                  \
                        r33 = _mm512_fmadd_ps(w3, x3, r33);                                  \
                    }                                                                        \
                else /* an odd last 32-coordinate slice */                                   \
                    for (size_t t = tg; t < te; t++) {                                       \
                        __m512 x0, x1;                                                       \
                        DEC(v + t * stride, b, &x0, &x1);                                    \
                        __m512 w0 = _mm512_set1_ps(wh[0][t]), w1 = _mm512_set1_ps(wh[1][t]); \
                        __m512 w2 = _mm512_set1_ps(wh[2][t]), w3 = _mm512_set1_ps(wh[3][t]); \
                        r00 = _mm512_fmadd_ps(w0, x0, r00);                                  \
                        r01 = _mm512_fmadd_ps(w0, x1, r01);                                  \
                        r10 = _mm512_fmadd_ps(w1, x0, r10);                                  \
                        r11 = _mm512_fmadd_ps(w1, x1, r11);                                  \
                        r20 = _mm512_fmadd_ps(w2, x0, r20);                                  \
                        r21 = _mm512_fmadd_ps(w2, x1, r21);                                  \
                        r30 = _mm512_fmadd_ps(w3, x0, r30);                                  \
                        r31 = _mm512_fmadd_ps(w3, x1, r31);                                  \
                    }                                                                        \
                ROW_OUT(0, r00, r01, r02, r03);                                              \
                ROW_OUT(1, r10, r11, r12, r13);                                              \
                ROW_OUT(2, r20, r21, r22, r23);                                              \
                ROW_OUT(3, r30, r31, r32, r33);                                              \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_ROW_KERNELS(f32, dec_f32, 128, score_f32, accum_f32, KVQI_MAX_BLOCK_TOKENS, 0)
DEFINE_ROW_KERNELS(f16, dec_f16, 64, score_f16, accum_f16, 16, 1)
DEFINE_ROW_KERNELS(q8_0, dec_q8_0, 34, score_q8_0, accum_q8_0, 16, 0)
DEFINE_ROW_KERNELS(q4_0, dec_q4_0, 18, score_q4_0, accum_q4_0, KVQI_MAX_BLOCK_TOKENS, 0)

/* ------------------------------------------------------- rotated codes */

/* The rotated-code kernels are generated for each (bits, passes) pair: with both known
 * at compile time the unpacking is straight-line code and the tables stay in registers. */
#define KVQI_INLINE static inline __attribute__((always_inline))

typedef struct rot_regs {
    __m512 tab[KVQI_ROT_MAX_PASSES], c0[KVQI_ROT_MAX_PASSES], c1[KVQI_ROT_MAX_PASSES];
} rot_regs;

KVQI_INLINE void load_regs(const kvqi_rot_layout *L, rot_regs *T, const uint32_t NP) {
    for (uint32_t p = 0; p < NP; p++) {
        T->tab[p] = _mm512_loadu_ps(KVQI_ROT_CENT(L, p));
        T->c0[p] = _mm512_set1_ps(KVQI_ROT_CENT(L, p)[0]);
        T->c1[p] = _mm512_set1_ps(KVQI_ROT_CENT(L, p)[1]);
    }
}

/* The 32 lanes [32b, 32b+32) of one pass's centroid values, in lane order. */
KVQI_INLINE void dec_pass(const uint32_t BITS, const rot_regs *T, uint32_t p, const float *tab256,
                          const uint8_t *idx, uint32_t b, __m512 *x0, __m512 *x1) {
    if (BITS == 4) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(idx + 16 * b)));
        *x0 = _mm512_permutexvar_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)), T->tab[p]);
        *x1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), T->tab[p]);
    } else if (BITS == 2) {
        /* a 64-lane block from 16 bytes; 32-lane half b%2 uses shifts 0,2 or 4,6 */
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(idx + 16 * (b / 2))));
        __m512i m3 = _mm512_set1_epi32(3);
        unsigned s = (b % 2) * 4;
        *x0 = _mm512_permutexvar_ps(_mm512_and_si512(_mm512_srli_epi32(v, s), m3), T->tab[p]);
        *x1 = _mm512_permutexvar_ps(_mm512_and_si512(_mm512_srli_epi32(v, s + 2), m3), T->tab[p]);
    } else if (BITS == 3) {
        /* 32 indices in 12 bytes, natural order: two overlapping 8-byte reads, each lane
         * shifts its own 3 bits out of a 24-bit group */
        uint64_t lo, hi;
        memcpy(&lo, idx + 12 * b, 8);
        memcpy(&hi, idx + 12 * b + 4, 8);
        const __m512i sh = _mm512_set_epi32(21, 18, 15, 12, 9, 6, 3, 0, 21, 18, 15, 12, 9, 6, 3, 0);
        const __m512i m7 = _mm512_set1_epi32(7);
        __m512i v0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32((int)(lo & 0xffffff))),
                                        _mm256_set1_epi32((int)((lo >> 24) & 0xffffff)), 1);
        __m512i v1 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32((int)((hi >> 16) & 0xffffff))),
                                        _mm256_set1_epi32((int)((hi >> 40) & 0xffffff)), 1);
        *x0 = _mm512_permutexvar_ps(_mm512_and_si512(_mm512_srlv_epi32(v0, sh), m7), T->tab[p]);
        *x1 = _mm512_permutexvar_ps(_mm512_and_si512(_mm512_srlv_epi32(v1, sh), m7), T->tab[p]);
    } else if (BITS == 1) {
        uint32_t bits;
        memcpy(&bits, idx + 4 * b, 4);
        *x0 = _mm512_mask_blend_ps((__mmask16)(bits & 0xffff), T->c0[p], T->c1[p]);
        *x1 = _mm512_mask_blend_ps((__mmask16)(bits >> 16), T->c0[p], T->c1[p]);
    } else { /* 8 bits: a gather from the 256-entry table */
        __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(idx + 32 * b)));
        __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(idx + 32 * b + 16)));
        *x0 = _mm512_i32gather_ps(i0, tab256, 4);
        *x1 = _mm512_i32gather_ps(i1, tab256, 4);
    }
}

/* All passes of one code combined: u = sum_p s_p * c_p[idx_p]. */
KVQI_INLINE void dec_rot(const uint32_t BITS, const uint32_t NP, const kvqi_rot_layout *L,
                         const rot_regs *T, const uint8_t *code, const __m512 *sp, uint32_t b,
                         __m512 *x0, __m512 *x1) {
    dec_pass(BITS, T, 0, KVQI_ROT_CENT(L, 0), code + L->index_offset[0], b, x0, x1);
    for (uint32_t p = 1; p < NP; p++) {
        __m512 y0, y1;
        dec_pass(BITS, T, p, KVQI_ROT_CENT(L, p), code + L->index_offset[p], b, &y0, &y1);
        *x0 = _mm512_fmadd_ps(sp[p], y0, *x0);
        *x1 = _mm512_fmadd_ps(sp[p], y1, *x1);
    }
}

KVQI_INLINE void pass_scales(const uint32_t NP, const kvqi_rot_layout *L, const uint8_t *code,
                             __m512 *sp) {
    for (uint32_t p = 1; p < NP; p++)
        sp[p] = _mm512_set1_ps(fp16_scalar(code + L->scale_offset[p]));
}

KVQI_INLINE void score_rot_impl(const uint32_t BITS, const uint32_t NP, const kvqi_rot_layout *L,
                                const float *q, uint32_t G, const uint8_t *k, size_t n,
                                float *scores, size_t ld) {
    uint32_t dim = L->dim, nb = dim / 32;
    rot_regs T;
    load_regs(L, &T, NP);
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        const float *q0 = q + (size_t)h0 * dim;
        const float *q1 = q + (size_t)(h0 + 1 < G ? h0 + 1 : h0) * dim;
        const float *q2 = q + (size_t)(h0 + 2 < G ? h0 + 2 : h0) * dim;
        const float *q3 = q + (size_t)(h0 + 3 < G ? h0 + 3 : h0) * dim;
        for (size_t t = 0; t < n; t++) {
            const uint8_t *code = k + t * L->code_size;
            __m512 sp[KVQI_ROT_MAX_PASSES];
            pass_scales(NP, L, code, sp);
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (uint32_t b = 0; b < nb; b++) {
                __m512 x0, x1;
                dec_rot(BITS, NP, L, &T, code, sp, b, &x0, &x1);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + 32 * b), x0, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + 32 * b), x0, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + 32 * b), x0, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + 32 * b), x0, a3);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + 32 * b + 16), x1, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + 32 * b + 16), x1, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + 32 * b + 16), x1, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + 32 * b + 16), x1, a3);
            }
            float s[4];
            _mm_storeu_ps(s, _mm_mul_ps(hsum4(a0, a1, a2, a3),
                                        _mm_set1_ps(fp16_scalar(code + L->norm_offset))));
            for (uint32_t h = 0; h < HG && h0 + h < G; h++) scores[(h0 + h) * ld + t] = s[h];
        }
    }
}

/* Values: 64-coordinate slices (4 heads x 4 vectors of accumulators, named so they stay
 * in registers) over the block. */
KVQI_INLINE void accum_rot_impl(const uint32_t BITS, const uint32_t NP, const kvqi_rot_layout *L,
                                const float *w, size_t ld, uint32_t G, const uint8_t *v,
                                size_t n, float *acc) {
    uint32_t dim = L->dim;
    rot_regs T;
    load_regs(L, &T, NP);
    float wn[HG][KVQI_MAX_BLOCK_TOKENS], dummy[64];
    float norms[KVQI_MAX_BLOCK_TOKENS];
    for (size_t t = 0; t < n; t++) norms[t] = fp16_scalar(v + t * L->code_size + L->norm_offset);
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        float *ah[HG];
        for (uint32_t h = 0; h < HG; h++) {
            int ok = h0 + h < G;
            ah[h] = ok ? acc + (size_t)(h0 + h) * dim : dummy;
            for (size_t t = 0; t < n; t++) wn[h][t] = ok ? w[(h0 + h) * ld + t] * norms[t] : 0.0f;
        }
        for (uint32_t b = 0; b < dim / 32; b += 2) {
            int two = b + 1 < dim / 32;
            __m512 r00 = _mm512_setzero_ps(), r01 = r00, r02 = r00, r03 = r00;
            __m512 r10 = r00, r11 = r00, r12 = r00, r13 = r00;
            __m512 r20 = r00, r21 = r00, r22 = r00, r23 = r00;
            __m512 r30 = r00, r31 = r00, r32 = r00, r33 = r00;
            for (size_t t = 0; t < n; t++) {
                const uint8_t *code = v + t * L->code_size;
                __m512 sp[KVQI_ROT_MAX_PASSES], x0, x1, x2 = r00, x3 = r00;
                pass_scales(NP, L, code, sp);
                dec_rot(BITS, NP, L, &T, code, sp, b, &x0, &x1);
                if (two) dec_rot(BITS, NP, L, &T, code, sp, b + 1, &x2, &x3);
                __m512 w0 = _mm512_set1_ps(wn[0][t]), w1 = _mm512_set1_ps(wn[1][t]);
                __m512 w2 = _mm512_set1_ps(wn[2][t]), w3 = _mm512_set1_ps(wn[3][t]);
                r00 = _mm512_fmadd_ps(w0, x0, r00);
                r01 = _mm512_fmadd_ps(w0, x1, r01);
                r02 = _mm512_fmadd_ps(w0, x2, r02);
                r03 = _mm512_fmadd_ps(w0, x3, r03);
                r10 = _mm512_fmadd_ps(w1, x0, r10);
                r11 = _mm512_fmadd_ps(w1, x1, r11);
                r12 = _mm512_fmadd_ps(w1, x2, r12);
                r13 = _mm512_fmadd_ps(w1, x3, r13);
                r20 = _mm512_fmadd_ps(w2, x0, r20);
                r21 = _mm512_fmadd_ps(w2, x1, r21);
                r22 = _mm512_fmadd_ps(w2, x2, r22);
                r23 = _mm512_fmadd_ps(w2, x3, r23);
                r30 = _mm512_fmadd_ps(w3, x0, r30);
                r31 = _mm512_fmadd_ps(w3, x1, r31);
                r32 = _mm512_fmadd_ps(w3, x2, r32);
                r33 = _mm512_fmadd_ps(w3, x3, r33);
            }
            __m512 r[HG][4] = {{r00, r01, r02, r03}, {r10, r11, r12, r13},
                               {r20, r21, r22, r23}, {r30, r31, r32, r33}};
            for (uint32_t h = 0; h < HG; h++) {
                if (ah[h] == dummy) continue;
                float *p = ah[h] + 32 * b;
                for (int i = 0; i < (two ? 4 : 2); i++)
                    _mm512_storeu_ps(p + 16 * i, _mm512_add_ps(_mm512_loadu_ps(p + 16 * i), r[h][i]));
            }
        }
    }
}

#define ROT_VARIANT(B, P)                                                                    \
    static void score_rot_##B##_##P(const kvqi_rot_layout *L, const float *q, uint32_t G,   \
                                    const uint8_t *k, size_t n, float *scores, size_t ld) { \
        score_rot_impl(B, P, L, q, G, k, n, scores, ld);                                     \
    }                                                                                        \
    static void accum_rot_##B##_##P(const kvqi_rot_layout *L, const float *w, size_t ld,     \
                                    uint32_t G, const uint8_t *v, size_t n, float *acc) {    \
        accum_rot_impl(B, P, L, w, ld, G, v, n, acc);                                        \
    }
ROT_VARIANT(1, 1)
ROT_VARIANT(1, 2)
ROT_VARIANT(1, 3)
ROT_VARIANT(1, 4)
ROT_VARIANT(2, 1)
ROT_VARIANT(2, 2)
ROT_VARIANT(2, 3)
ROT_VARIANT(2, 4)
ROT_VARIANT(3, 1)
ROT_VARIANT(3, 2)
ROT_VARIANT(3, 3)
ROT_VARIANT(3, 4)
ROT_VARIANT(4, 1)
ROT_VARIANT(4, 2)
ROT_VARIANT(4, 3)
ROT_VARIANT(4, 4)
ROT_VARIANT(8, 1)

typedef void (*score_rot_fn)(const kvqi_rot_layout *, const float *, uint32_t, const uint8_t *,
                             size_t, float *, size_t);
typedef void (*accum_rot_fn)(const kvqi_rot_layout *, const float *, size_t, uint32_t,
                             const uint8_t *, size_t, float *);
static const score_rot_fn score_rot_table[5][4] = {
    {score_rot_1_1, score_rot_1_2, score_rot_1_3, score_rot_1_4},
    {score_rot_2_1, score_rot_2_2, score_rot_2_3, score_rot_2_4},
    {score_rot_3_1, score_rot_3_2, score_rot_3_3, score_rot_3_4},
    {score_rot_4_1, score_rot_4_2, score_rot_4_3, score_rot_4_4},
    {score_rot_8_1, NULL, NULL, NULL}};
static const accum_rot_fn accum_rot_table[5][4] = {
    {accum_rot_1_1, accum_rot_1_2, accum_rot_1_3, accum_rot_1_4},
    {accum_rot_2_1, accum_rot_2_2, accum_rot_2_3, accum_rot_2_4},
    {accum_rot_3_1, accum_rot_3_2, accum_rot_3_3, accum_rot_3_4},
    {accum_rot_4_1, accum_rot_4_2, accum_rot_4_3, accum_rot_4_4},
    {accum_rot_8_1, NULL, NULL, NULL}};

static int bits_slot(uint32_t bits) { return bits <= 4 ? (int)bits - 1 : 4; }

static void score_rot(const kvqi_rot_layout *L, const float *q, uint32_t G, const uint8_t *k,
                      size_t n, float *scores, size_t ld) {
    score_rot_fn f = score_rot_table[bits_slot(L->bits)][L->n_pass - 1];
    if (f) f(L, q, G, k, n, scores, ld);
    else kvqi_cache_kernels_scalar.score_rot(L, q, G, k, n, scores, ld);
}

static void accum_rot(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                      const uint8_t *v, size_t n, float *acc) {
    accum_rot_fn f = accum_rot_table[bits_slot(L->bits)][L->n_pass - 1];
    if (f) f(L, w, ld, G, v, n, acc);
    else kvqi_cache_kernels_scalar.accum_rot(L, w, ld, G, v, n, acc);
}

/* outlier channels: sixteen (eight) tokens of one channel per conversion */
static void outlier_add(const uint16_t *vals, size_t stride, const float *q_out, uint32_t G,
                        uint32_t n_out, size_t n, float *scores, size_t ld) {
    size_t nv = n - n % 16;
    for (uint32_t o = 0; o < n_out; o++) {
        const uint16_t *v = vals + o * stride;
        for (size_t t = 0; t < nv; t += 16) {
            __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + t)));
            for (uint32_t h = 0; h < G; h++) {
                float *s = scores + h * ld + t;
                _mm512_storeu_ps(s, _mm512_fmadd_ps(_mm512_set1_ps(q_out[(size_t)h * n_out + o]), x,
                                                  _mm512_loadu_ps(s)));
            }
        }
        for (size_t t = nv; t < n; t++) {
            float x = _cvtsh_ss(v[t]);
            for (uint32_t h = 0; h < G; h++) scores[h * ld + t] += q_out[(size_t)h * n_out + o] * x;
        }
    }
}

/* y += sum_r x[r] M[r]: four rows per pass over y */
static void axpy_rows(const float *M, const float *x, uint32_t rows, uint32_t dim, float *y) {
    if (dim % 16) {
        kvqi_cache_kernels_scalar.axpy_rows(M, x, rows, dim, y);
        return;
    }
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        __m512 x0 = _mm512_set1_ps(x[r]), x1 = _mm512_set1_ps(x[r + 1]);
        __m512 x2 = _mm512_set1_ps(x[r + 2]), x3 = _mm512_set1_ps(x[r + 3]);
        const float *m0 = M + (size_t)r * dim;
        for (uint32_t j = 0; j < dim; j += 16) {
            __m512 a = _mm512_loadu_ps(y + j);
            a = _mm512_fmadd_ps(x0, _mm512_loadu_ps(m0 + j), a);
            a = _mm512_fmadd_ps(x1, _mm512_loadu_ps(m0 + dim + j), a);
            a = _mm512_fmadd_ps(x2, _mm512_loadu_ps(m0 + 2 * dim + j), a);
            a = _mm512_fmadd_ps(x3, _mm512_loadu_ps(m0 + 3 * dim + j), a);
            _mm512_storeu_ps(y + j, a);
        }
    }
    for (; r < rows; r++) {
        __m512 xr = _mm512_set1_ps(x[r]);
        const float *m0 = M + (size_t)r * dim;
        for (uint32_t j = 0; j < dim; j += 16)
            _mm512_storeu_ps(y + j, _mm512_fmadd_ps(xr, _mm512_loadu_ps(m0 + j), _mm512_loadu_ps(y + j)));
    }
}

/* ------------------------------------------------- integer key scores (VNNI) */

/* Four heads' int32 partial-sum vectors of one token -> per 128-bit lane, the four
 * heads' sums over that lane. */
static inline __m512i fold4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    __m512i a01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    __m512i a23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(a01, a23), _mm512_unpackhi_epi64(a01, a23));
}

/* Four tokens' fold4 results -> one vector, lane 4 t + h = the full sum. */
static inline __m512i fold_lanes(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
    __m512i t01 = _mm512_add_epi32(_mm512_shuffle_i32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_i32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1)));
    __m512i t23 = _mm512_add_epi32(_mm512_shuffle_i32x4(v2, v3, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_i32x4(v2, v3, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 128 coordinates of one code (block b) as two vectors of 64 centroid bytes, in the
 * kvqi_rot_i8_coordinate order: each index to its byte by one shuffle through the
 * 16-entry table. 4 bits: the nibbles of 64 bytes. 2 bits: 32 bytes in both halves,
 * shifted by 0 (low half) and 4 (high half), then by 2 more. 3 bits (VBMI): 48 bytes,
 * each 64-bit lane given the 3 bytes of 8 indices (vpermb) and the 8 indices cut out of
 * them at bit offsets 0, 3, ..., 21 (vpmultishiftqb), natural order. */
KVQI_INLINE __attribute__((target("avx512vnni"))) void
unpack_i8_24(const uint32_t BITS, const uint8_t *idx, uint32_t b, __m512i tab, __m512i *lo,
             __m512i *hi) {
    if (BITS == 4) {
        const __m512i m4 = _mm512_set1_epi8(0x0f);
        __m512i v = _mm512_loadu_si512(idx + 64 * b);
        *lo = _mm512_shuffle_epi8(tab, _mm512_and_si512(v, m4));
        *hi = _mm512_shuffle_epi8(tab, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
    } else {
        const __m512i m3 = _mm512_set1_epi8(0x03);
        const __m512i sh = _mm512_set_epi64(0x0004000400040004LL, 0x0004000400040004LL,
                                            0x0004000400040004LL, 0x0004000400040004LL,
                                            0, 0, 0, 0);
        __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(idx + 32 * b)));
        v = _mm512_srlv_epi16(v, sh);
        *lo = _mm512_shuffle_epi8(tab, _mm512_and_si512(v, m3));
        *hi = _mm512_shuffle_epi8(tab, _mm512_and_si512(_mm512_srli_epi16(v, 2), m3));
    }
}

KVQI_INLINE __attribute__((target("avx512vnni,avx512vbmi"))) void
unpack_i8_3(const uint32_t BITS, const uint8_t *idx, uint32_t b, __m512i tab, __m512i *lo,
            __m512i *hi) {
    (void)BITS;
    const __m512i m7 = _mm512_set1_epi8(0x07);
    const __m512i ctl = _mm512_set1_epi64(0x15120f0c09060300LL);
    const __m512i p0 = _mm512_set_epi64(0x17171615, 0x14141312, 0x1111100f, 0x0e0e0d0c,
                                        0x0b0b0a09, 0x08080706, 0x05050403, 0x02020100);
    const __m512i p1 = _mm512_add_epi8(p0, _mm512_set1_epi8(24));
    __m512i v = _mm512_maskz_loadu_epi8((__mmask64)0xffffffffffffULL, idx + 48 * b);
    __m512i x = _mm512_multishift_epi64_epi8(ctl, _mm512_permutexvar_epi8(p0, v));
    __m512i y = _mm512_multishift_epi64_epi8(ctl, _mm512_permutexvar_epi8(p1, v));
    *lo = _mm512_shuffle_epi8(tab, _mm512_and_si512(x, m7));
    *hi = _mm512_shuffle_epi8(tab, _mm512_and_si512(y, m7));
}

/* One token, four heads: 128 coordinates per step, 64 multiply-adds per instruction per
 * head; then four tokens at a time so the sixteen (token, head) sums reduce together.
 * Defined once per target: the 3-bit unpacking needs VBMI, the others only VNNI. */
#define DEFINE_SCORE_I8(SUFFIX, TARGET)                                                      \
    KVQI_INLINE __attribute__((target(TARGET))) __m512i token_i8_##SUFFIX(                   \
        const uint32_t BITS, const uint8_t *idx, uint32_t nblk, const int8_t *q0,            \
        const int8_t *q1, const int8_t *q2, const int8_t *q3, __m512i tab) {                 \
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;                      \
        for (uint32_t b = 0; b < nblk; b++) {                                                \
            __m512i lo, hi;                                                                  \
            unpack_i8_##SUFFIX(BITS, idx, b, tab, &lo, &hi);                                 \
            size_t o = 128 * (size_t)b;                                                      \
            a0 = _mm512_dpbusd_epi32(a0, lo, _mm512_loadu_si512(q0 + o));                    \
            a1 = _mm512_dpbusd_epi32(a1, lo, _mm512_loadu_si512(q1 + o));                    \
            a2 = _mm512_dpbusd_epi32(a2, lo, _mm512_loadu_si512(q2 + o));                    \
            a3 = _mm512_dpbusd_epi32(a3, lo, _mm512_loadu_si512(q3 + o));                    \
            a0 = _mm512_dpbusd_epi32(a0, hi, _mm512_loadu_si512(q0 + o + 64));               \
            a1 = _mm512_dpbusd_epi32(a1, hi, _mm512_loadu_si512(q1 + o + 64));               \
            a2 = _mm512_dpbusd_epi32(a2, hi, _mm512_loadu_si512(q2 + o + 64));               \
            a3 = _mm512_dpbusd_epi32(a3, hi, _mm512_loadu_si512(q3 + o + 64));               \
        }                                                                                    \
        return fold4(a0, a1, a2, a3);                                                        \
    }                                                                                        \
    KVQI_INLINE __attribute__((target(TARGET))) void score_rot_i8_##SUFFIX(                  \
        const uint32_t BITS, const kvqi_rot_layout *L, const int8_t *q8, const float *qscale, \
        const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n, float *scores,           \
        size_t ld) {                                                                         \
        uint32_t dim = L->dim, nblk = dim / 128;                                             \
        size_t cs = L->code_size;                                                            \
        const __m512i tab = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)L->cent_u8)); \
        const __m512i lane_tok = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0); \
        const __m512i head_major = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0); \
        const uint8_t *idx0 = k + L->index_offset[0], *nb = k + L->norm_offset;              \
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                            \
            uint32_t hh[HG];                                                                 \
            for (uint32_t h = 0; h < HG; h++) hh[h] = h0 + h < G ? h0 + h : h0;              \
            const int8_t *q0 = q8 + (size_t)hh[0] * dim, *q1 = q8 + (size_t)hh[1] * dim;     \
            const int8_t *q2 = q8 + (size_t)hh[2] * dim, *q3 = q8 + (size_t)hh[3] * dim;     \
            float scl[16];                                                                   \
            int32_t qs[16];                                                                  \
            for (int i = 0; i < 16; i++) {                                                   \
                scl[i] = qscale[hh[i % 4]];                                                  \
                qs[i] = qsum[hh[i % 4]];                                                     \
            }                                                                                \
            const __m512 vscale = _mm512_loadu_ps(scl);                                      \
            const __m512i vqsum = _mm512_loadu_si512(qs);                                    \
            for (size_t t0 = 0; t0 < n; t0 += 4) {                                           \
                size_t nt = n - t0 < 4 ? n - t0 : 4;                                         \
                size_t t1 = t0 + (nt > 1), t2 = t0 + (nt > 2 ? 2 : nt - 1), t3 = t0 + nt - 1; \
                __m512i v0 = token_i8_##SUFFIX(BITS, idx0 + t0 * cs, nblk, q0, q1, q2, q3, tab); \
                __m512i v1 = token_i8_##SUFFIX(BITS, idx0 + t1 * cs, nblk, q0, q1, q2, q3, tab); \
                __m512i v2 = token_i8_##SUFFIX(BITS, idx0 + t2 * cs, nblk, q0, q1, q2, q3, tab); \
                __m512i v3 = token_i8_##SUFFIX(BITS, idx0 + t3 * cs, nblk, q0, q1, q2, q3, tab); \
                __m128 n4 = _mm_set_ps(fp16_scalar(nb + t3 * cs), fp16_scalar(nb + t2 * cs),  \
                                       fp16_scalar(nb + t1 * cs), fp16_scalar(nb + t0 * cs)); \
                /* lane 4 t + h takes token t's norm */                                      \
                __m512 nrm = _mm512_permutexvar_ps(lane_tok, _mm512_castps128_ps512(n4));    \
                __m512i r = _mm512_sub_epi32(fold_lanes(v0, v1, v2, v3), vqsum);             \
                __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(r), vscale), nrm); \
                if (nt == 4 && h0 + HG <= G) { /* lanes 4 h + t: four stores of four */     \
                    f = _mm512_permutexvar_ps(head_major, f);                                \
                    _mm_storeu_ps(scores + h0 * ld + t0, _mm512_castps512_ps128(f));         \
                    _mm_storeu_ps(scores + (h0 + 1) * ld + t0, _mm512_extractf32x4_ps(f, 1)); \
                    _mm_storeu_ps(scores + (h0 + 2) * ld + t0, _mm512_extractf32x4_ps(f, 2)); \
                    _mm_storeu_ps(scores + (h0 + 3) * ld + t0, _mm512_extractf32x4_ps(f, 3)); \
                    continue;                                                                \
                }                                                                            \
                float out[16];                                                               \
                _mm512_storeu_ps(out, f);                                                    \
                for (size_t t = 0; t < nt; t++)                                              \
                    for (uint32_t h = 0; h < HG && h0 + h < G; h++)                          \
                        scores[(h0 + h) * ld + t0 + t] = out[4 * t + h];                     \
            }                                                                                \
        }                                                                                    \
    }
DEFINE_SCORE_I8(24, "avx512vnni")
DEFINE_SCORE_I8(3, "avx512vnni,avx512vbmi")

__attribute__((target("avx512vnni"))) static void
score_rot_i8_vnni(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,
                  const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n, float *scores,
                  size_t ld) {
    if (L->bits == 4) score_rot_i8_24(4, L, q8, qscale, qsum, G, k, n, scores, ld);
    else if (L->bits == 2) score_rot_i8_24(2, L, q8, qscale, qsum, G, k, n, scores, ld);
    else kvqi_cache_score_rot_i8_ref(L, q8, qscale, qsum, G, k, n, scores, ld);
}

__attribute__((target("avx512vnni,avx512vbmi"))) static void
score_rot_i8_vbmi(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,
                  const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n, float *scores,
                  size_t ld) {
    if (L->bits == 3) score_rot_i8_3(3, L, q8, qscale, qsum, G, k, n, scores, ld);
    else score_rot_i8_vnni(L, q8, qscale, qsum, G, k, n, scores, ld);
}

/* q4_0 keys against the int8 query (kvqi_cache_score_q4_0_i8_ref), 128 coordinates (four
 * blocks of 18 bytes, all at even offsets) per step: one permute of the row puts block b's
 * 16 code bytes in 128-bit lane b and another its scale four times in words 4b..4b+3; the
 * low nibbles against the query's coordinates 32 b + 0..15 and the high ones against
 * 32 b + 16..31 in two vpdpbusd per head, whose accumulator starts at -8 times the lane's
 * 8 query bytes; the four heads' lanes folded in integers (exact) to one vector of the
 * blocks' sums, block b's four heads in lane b, so one conversion and one multiply-add by
 * the scales serve four heads; four tokens' vectors folded over the lanes
 * ((L0 + L2) + (L1 + L3)), one permute to heads' rows. */
/* Four vectors' 128-bit lanes summed, (L0 + L2) + (L1 + L3): vector i's sums in lane i. */
KVQI_INLINE __attribute__((target("avx512vnni"))) __m512 q4k_fold_lanes(__m512 a0, __m512 a1, __m512 a2,
                                                                        __m512 a3) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* A step's code bytes, block b's 16 in 128-bit lane b (byte 16 b + m is the row's byte
 * 18 b + 2 + m; r1: the row's bytes 64..71): VBMI's byte permute, else the word permute. */
__attribute__((target("avx512vnni,avx512vbmi"))) static inline __m512i q4k_codes_vbmi(__m512i r0, __m512i r1) {
    const __m512i idx = _mm512_set_epi8(
        71, 70, 69, 68, 67, 66, 65, 64, 63, 62, 61, 60, 59, 58, 57, 56, 53, 52, 51, 50, 49, 48, 47,
        46, 45, 44, 43, 42, 41, 40, 39, 38, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22,
        21, 20, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2);
    return _mm512_permutex2var_epi8(r0, idx, r1);
}
__attribute__((target("avx512vnni"))) static inline __m512i q4k_codes_plain(__m512i r0, __m512i r1) {
    const __m512i idx = _mm512_set_epi16(35, 34, 33, 32, 31, 30, 29, 28, 26, 25, 24, 23, 22, 21, 20, 19,
                                         17, 16, 15, 14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);
    return _mm512_permutex2var_epi16(r0, idx, r1);
}

/* One row's blocks' sums times scales, block b's four heads in lane b (NC steps of 128
 * coordinates, the last half when HALF); then the call over four heads at a time. */
#define DEFINE_Q4K_IMPL(S, TARGET)                                                                             \
KVQI_INLINE __attribute__((target(TARGET))) __m512 q4k_row_##S(const uint32_t NC, const int HALF,              \
                                                                  const uint8_t *row, const __m512i *qlo,      \
                                                                  const __m512i *qhi, const __m512i *corr) {   \
    const __m512i m0f = _mm512_set1_epi8(15);                                                                  \
    const __m512i idx_q = _mm512_set_epi16(35, 34, 33, 32, 31, 30, 29, 28, 26, 25, 24, 23, 22, 21, 20, 19,     \
                                           17, 16, 15, 14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);            \
    const __m512i idx_d = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                     \
                                           27, 27, 27, 27, 18, 18, 18, 18, 9, 9, 9, 9, 0, 0, 0, 0);            \
    __m512 f = _mm512_setzero_ps();                                                                            \
    for (uint32_t c = 0; c < NC; c++) {                                                                        \
        const uint8_t *p = row + 72 * (size_t)c;                                                               \
        __m512i q, dw;                                                                                         \
        if (HALF && c + 1 == NC) { /* 36 bytes: two blocks, lanes 2 and 3 zero */                              \
            __m512i r0 = _mm512_maskz_loadu_epi8(0xfffffffffULL, p);                                           \
            q = _mm512_maskz_permutexvar_epi16(0xffff, idx_q, r0);                                             \
            dw = _mm512_maskz_permutexvar_epi16(0xff, idx_d, r0);                                              \
        } else {                                                                                               \
            __m512i r0 = _mm512_loadu_si512(p), r1 = _mm512_maskz_loadu_epi8(0xff, p + 64);                    \
            q = q4k_codes_##S(r0, r1);                                                                         \
            dw = _mm512_permutexvar_epi16(idx_d, r0);                                                          \
        }                                                                                                      \
        __m512i lo = _mm512_and_si512(q, m0f), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m0f);            \
        const __m512i *ql = qlo + 4 * c, *qh = qhi + 4 * c, *co = corr + 4 * c;                                \
        __m512i p0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(co[0], lo, ql[0]), hi, qh[0]);                    \
        __m512i p1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(co[1], lo, ql[1]), hi, qh[1]);                    \
        __m512i p2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(co[2], lo, ql[2]), hi, qh[2]);                    \
        __m512i p3 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(co[3], lo, ql[3]), hi, qh[3]);                    \
        __m512i u01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));          \
        __m512i u23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));          \
        __m512i sum = _mm512_add_epi32(_mm512_unpacklo_epi64(u01, u23), _mm512_unpackhi_epi64(u01, u23));      \
        f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_cvtph_ps(_mm512_castsi512_si256(dw)), f);          \
    }                                                                                                          \
    return f;                                                                                                  \
}                                                                                                              \
KVQI_INLINE __attribute__((target(TARGET))) void q4k_impl_##S(const uint32_t NC, const int HALF,               \
                                                              const int8_t *q8, const float *qscale, uint32_t G, \
                                                              uint32_t dim, const uint8_t *k, size_t stride,   \
                                                              size_t n, float *scores, size_t ld) {            \
    enum { MAXC = KVQI_QBLK_I8_MAX_DIM / 128 };                                                                \
    __m512i qlo[MAXC * HG], qhi[MAXC * HG], corr[MAXC * HG];                                                   \
    const __m512i eight = _mm512_set1_epi8(8);                                                                 \
    const __m512i tr = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);                \
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                                                  \
        uint32_t hh[HG];                                                                                       \
        for (uint32_t h = 0; h < HG; h++) hh[h] = h0 + h < G ? h0 + h : h0;                                    \
        for (uint32_t c = 0; c < NC; c++)                                                                      \
            for (uint32_t h = 0; h < HG; h++) {                                                                \
                const int8_t *qp = q8 + (size_t)hh[h] * dim + 128 * c;                                         \
                int two = HALF && c + 1 == NC;                                                                 \
                __m512i lo = _mm512_setzero_si512(), hi = lo;                                                  \
                for (uint32_t b = 0; b < (two ? 2u : 4u); b++) {                                               \
                    lo = _mm512_mask_loadu_epi8(lo, 0xffffULL << (16 * b), qp + 16 * b);                       \
                    hi = _mm512_mask_loadu_epi8(hi, 0xffffULL << (16 * b), qp + 16 * b + 16);                  \
                }                                                                                              \
                qlo[4 * c + h] = lo, qhi[4 * c + h] = hi;                                                      \
                corr[4 * c + h] = _mm512_sub_epi32(                                                            \
                    _mm512_setzero_si512(),                                                                    \
                    _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, lo), eight, hi));   \
            }                                                                                                  \
        const __m512 vqs = _mm512_setr_ps(qscale[hh[0]], qscale[hh[0]], qscale[hh[0]], qscale[hh[0]],          \
                                          qscale[hh[1]], qscale[hh[1]], qscale[hh[1]], qscale[hh[1]],          \
                                          qscale[hh[2]], qscale[hh[2]], qscale[hh[2]], qscale[hh[2]],          \
                                          qscale[hh[3]], qscale[hh[3]], qscale[hh[3]], qscale[hh[3]]);         \
        for (size_t t = 0; t < n; t += 4) {                                                                    \
            const uint8_t *r0 = k + t * stride;                                                                \
            const uint8_t *r1 = t + 1 < n ? r0 + stride : r0, *r2 = t + 2 < n ? r0 + 2 * stride : r0;          \
            const uint8_t *r3 = t + 3 < n ? r0 + 3 * stride : r0;                                              \
            __m512 g0 = q4k_row_##S(NC, HALF, r0, qlo, qhi, corr), g1 = q4k_row_##S(NC, HALF, r1, qlo, qhi, corr); \
            __m512 g2 = q4k_row_##S(NC, HALF, r2, qlo, qhi, corr), g3 = q4k_row_##S(NC, HALF, r3, qlo, qhi, corr); \
            /* token i's heads in 128-bit lane i, then heads' tokens: head h in lane h */                      \
            __m512 out = _mm512_mul_ps(_mm512_permutexvar_ps(tr, q4k_fold_lanes(g0, g1, g2, g3)), vqs);        \
            __mmask8 live = n - t >= 4 ? (__mmask8)15 : (__mmask8)((1u << (n - t)) - 1u);                      \
            _mm_mask_storeu_ps(scores + (size_t)h0 * ld + t, live, _mm512_castps512_ps128(out));               \
            if (h0 + 1 < G) _mm_mask_storeu_ps(scores + (size_t)(h0 + 1) * ld + t, live, _mm512_extractf32x4_ps(out, 1)); \
            if (h0 + 2 < G) _mm_mask_storeu_ps(scores + (size_t)(h0 + 2) * ld + t, live, _mm512_extractf32x4_ps(out, 2)); \
            if (h0 + 3 < G) _mm_mask_storeu_ps(scores + (size_t)(h0 + 3) * ld + t, live, _mm512_extractf32x4_ps(out, 3)); \
        }                                                                                                      \
    }                                                                                                          \
}
DEFINE_Q4K_IMPL(plain, "avx512vnni")
DEFINE_Q4K_IMPL(vbmi, "avx512vnni,avx512vbmi")

#define DEFINE_Q4K(NAME, S, TARGET)                                                          \
    __attribute__((target(TARGET))) static void NAME(const int8_t *q8, const float *qscale, uint32_t G, \
                                                     uint32_t dim, const uint8_t *k, size_t stride,    \
                                                     size_t n, float *scores, size_t ld) {             \
        if (dim == 128)                                                                      \
            q4k_impl_##S(1, 0, q8, qscale, G, dim, k, stride, n, scores, ld);                \
        else if (dim == 64)                                                                  \
            q4k_impl_##S(1, 1, q8, qscale, G, dim, k, stride, n, scores, ld);                \
        else if (dim == 256)                                                                 \
            q4k_impl_##S(2, 0, q8, qscale, G, dim, k, stride, n, scores, ld);                \
        else if (dim % 64 == 0 && dim <= KVQI_QBLK_I8_MAX_DIM)                               \
            q4k_impl_##S((dim + 127) / 128, dim % 128 != 0, q8, qscale, G, dim, k, stride, n, scores, ld); \
        else                                                                                 \
            kvqi_cache_score_q4_0_i8_ref(q8, qscale, G, dim, k, stride, n, scores, ld);      \
    }
DEFINE_Q4K(score_q4_0_i8, plain, "avx512vnni")
DEFINE_Q4K(score_q4_0_i8_vbmi, vbmi, "avx512vnni,avx512vbmi")

/* q8_0 keys against the int16 query (kvqi_cache_score_q8_0_i16_ref): per 64 coordinates
 * (blocks A and B) the keys as two vectors of 16-bit words, [A 0..15 | B 0..15] and
 * [A 16..31 | B 16..31] (each block's bytes sign-extended, the 256-bit halves regrouped),
 * the query regrouped alike once per call, and two vpdpwssd per head: lanes 0-7 hold
 * block A's exact sums, 8-15 block B's. With dim 128 the four heads' query
 * (16 vectors) stays in registers across the tokens. */
KVQI_INLINE __attribute__((target("avx512vnni"))) void qblk16_load(const uint8_t *row, uint32_t c,
                                                                   __m512i *x1, __m512i *x2,
                                                                   __m512 *d) {
    const uint8_t *b0 = row + (size_t)34 * 2 * c, *b1 = b0 + 34;
    uint16_t h0, h1;
    memcpy(&h0, b0, 2);
    memcpy(&h1, b1, 2);
    *d = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)h0)),
                                                 _mm_set1_epi16((short)h1), 1));
    __m512i a = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b0 + 2)));
    __m512i b = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b1 + 2)));
    *x1 = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(1, 0, 1, 0));
    *x2 = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 2, 3, 2));
}

enum { QBLK16_MAXC = KVQI_QBLK_I8_MAX_DIM / 64 };

/* One token's four head sums (per lane, before hsum4). */
KVQI_INLINE __attribute__((target("avx512vnni"))) void
qblk16_token(const uint32_t NC, const uint8_t *row, __m512i qv[HG][QBLK16_MAXC][2], __m512 *o0, __m512 *o1,
             __m512 *o2, __m512 *o3) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (uint32_t c = 0; c < NC; c++) {
        __m512i x1, x2;
        __m512 d;
        qblk16_load(row, c, &x1, &x2, &d);
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpwssd_epi32(
                                 _mm512_dpwssd_epi32(_mm512_setzero_si512(), x1, qv[0][c][0]), x2, qv[0][c][1])),
                             d, a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpwssd_epi32(
                                 _mm512_dpwssd_epi32(_mm512_setzero_si512(), x1, qv[1][c][0]), x2, qv[1][c][1])),
                             d, a1);
        a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpwssd_epi32(
                                 _mm512_dpwssd_epi32(_mm512_setzero_si512(), x1, qv[2][c][0]), x2, qv[2][c][1])),
                             d, a2);
        a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpwssd_epi32(
                                 _mm512_dpwssd_epi32(_mm512_setzero_si512(), x1, qv[3][c][0]), x2, qv[3][c][1])),
                             d, a3);
    }
    *o0 = a0, *o1 = a1, *o2 = a2, *o3 = a3;
}

KVQI_INLINE __attribute__((target("avx512vnni"))) void
score_qblk_i16_impl(const uint32_t NC, const int16_t *q16, const float *qscale,
                    uint32_t G, uint32_t dim, const uint8_t *k, size_t stride, size_t n,
                    float *scores, size_t ld) {
    __m512i qv[HG][QBLK16_MAXC][2];
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        uint32_t hh[HG];
        for (uint32_t h = 0; h < HG; h++) hh[h] = h0 + h < G ? h0 + h : h0;
        for (uint32_t h = 0; h < HG; h++)
            for (uint32_t c = 0; c < NC; c++) {
                const int16_t *qp = q16 + (size_t)hh[h] * dim + 64 * c;
                __m512i a = _mm512_loadu_si512(qp), b = _mm512_loadu_si512(qp + 32);
                qv[h][c][0] = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(1, 0, 1, 0));
                qv[h][c][1] = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 2, 3, 2));
            }
        const __m512 vqs = _mm512_set_ps(qscale[hh[3]], qscale[hh[3]], qscale[hh[3]], qscale[hh[3]],
                                         qscale[hh[2]], qscale[hh[2]], qscale[hh[2]], qscale[hh[2]],
                                         qscale[hh[1]], qscale[hh[1]], qscale[hh[1]], qscale[hh[1]],
                                         qscale[hh[0]], qscale[hh[0]], qscale[hh[0]], qscale[hh[0]]);
        for (size_t t = 0; t < n; t += 4) {
            size_t nt = n - t < 4 ? n - t : 4;
            const uint8_t *r0 = k + t * stride;
            __m512 lo[4], hi[4]; /* each token's heads 0, 1 and 2, 3 after the first fold */
            for (size_t i = 0; i < 4; i++) {
                __m512 a0, a1, a2, a3;
                qblk16_token(NC, r0 + (i < nt ? i : nt - 1) * stride, qv, &a0, &a1, &a2, &a3);
                lo[i] = hsum_fold1(a0, a1);
                hi[i] = hsum_fold1(a2, a3);
            }
            __m512 r = hsum_fold4(hsum_fold2(hsum_fold2(lo[0], lo[1]), hsum_fold2(lo[2], lo[3])),
                                  hsum_fold2(hsum_fold2(hi[0], hi[1]), hsum_fold2(hi[2], hi[3])));
            r = _mm512_mul_ps(r, vqs);
            __mmask8 m = (__mmask8)((1u << nt) - 1u);
            float *s0 = scores + (size_t)h0 * ld + t;
            _mm_mask_storeu_ps(s0, m, _mm512_castps512_ps128(r));
            if (h0 + 1 < G) _mm_mask_storeu_ps(s0 + ld, m, _mm512_extractf32x4_ps(r, 1));
            if (h0 + 2 < G) _mm_mask_storeu_ps(s0 + 2 * ld, m, _mm512_extractf32x4_ps(r, 2));
            if (h0 + 3 < G) _mm_mask_storeu_ps(s0 + 3 * ld, m, _mm512_extractf32x4_ps(r, 3));
        }
    }
}

__attribute__((target("avx512vnni"))) static void
score_q8_0_i16(const int16_t *q16, const float *qscale, uint32_t G, uint32_t dim, const uint8_t *k,
               size_t stride, size_t n, float *scores, size_t ld) {
    if (dim == 128)
        score_qblk_i16_impl(2, q16, qscale, G, dim, k, stride, n, scores, ld);
    else if (dim % 64 == 0 && dim <= KVQI_QBLK_I8_MAX_DIM)
        score_qblk_i16_impl(dim / 64, q16, qscale, G, dim, k, stride, n, scores, ld);
    else
        kvqi_cache_score_q8_0_i16_ref(q16, qscale, G, dim, k, stride, n, scores, ld);
}

/* q4_0 values in integers (kvqi_cache_accum_q4_0_i16_ref): per block of 32 coordinates,
 * each head's weights times the tokens' block scales rounded to 16 bits (weights_i16);
 * two tokens per step, their 16 code bytes interleaved and widened to 16 bits so each
 * 32-bit lane holds one coordinate of both (low nibbles: coordinates 0-15, high ones:
 * 16-31) and one vpdpwssd adds both weighted nibbles: 8 per token pair and block for four
 * heads, against 32 multiply-adds of the float kernel; the -8 offset once per block, as
 * -8 times the rounded weights' sum. */
/* weights4_i16's steps for one head (kvqi_cache_accum_q4_0_i16_ref's), and -8 times the rounded weights'
 * sum in *corr, taken from the registers (a reload of the stored words stalls). */
static float q4_weights_i16(const float *w, const float *d, size_t n, int16_t *wq, int32_t *corr) {
    __m512 wn[KVQI_MAX_BLOCK_TOKENS / 16], mx = _mm512_setzero_ps();
    size_t nv = (n + 15) / 16;
    *corr = 0;
    for (size_t i = 0; i < nv; i++) {
        __mmask16 k = first16(n - 16 * i);
        wn[i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, w + 16 * i), _mm512_loadu_ps(d + 16 * i));
        mx = _mm512_max_ps(mx, _mm512_abs_ps(wn[i]));
    }
    float m = _mm512_reduce_max_ps(mx);
    if (!(m > 0.0f) || !(m <= 3.0e38f)) return 0.0f;
    __m512 inv = _mm512_set1_ps(32767.0f / m);
    __m512i sum = _mm512_setzero_si512();
    for (size_t i = 0; i < nv; i++) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(wn[i], inv));
        sum = _mm512_add_epi32(sum, q);
        _mm256_storeu_si256((__m256i *)(wq + 16 * i), _mm512_cvtepi32_epi16(q));
    }
    *corr = -8 * _mm512_reduce_add_epi32(sum);
    return m * (1.0f / 32767.0f);
}
__attribute__((target("avx512vnni"))) static void
accum_q4_0_i16(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v, size_t stride,
               size_t n, float *acc) {
    if (dim % 32 || n > KVQI_MAX_BLOCK_TOKENS) {
        kvqi_cache_accum_q4_0_i16_ref(w, ld, G, dim, v, stride, n, acc);
        return;
    }
    _Alignas(64) uint16_t dh[KVQI_MAX_BLOCK_TOKENS + 16];
    _Alignas(64) float dsc[4][KVQI_MAX_BLOCK_TOKENS + 16];
    _Alignas(64) uint16_t dq[4 * (KVQI_MAX_BLOCK_TOKENS + 16)];
    _Alignas(64) int16_t wq[HG][KVQI_MAX_BLOCK_TOKENS + 32];
    const __m512i m15 = _mm512_set1_epi16(15);
    size_t nd = (n + 15) / 16;
    if (dim == 128) {
        /* the four scales of a row by one word permute (words 0, 9, 18, 27), rows in
         * token order; then per 16 tokens two two-source permutes to block order */
        const __m512i idx4 = _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, 0x001b001200090000LL);
        for (size_t t = 0; t < n; t++)
            _mm_storel_epi64((__m128i *)(void *)(dq + 4 * t),
                             _mm512_castsi512_si128(_mm512_permutexvar_epi16(idx4, _mm512_loadu_si512(v + t * stride))));
        memset(dq + 4 * n, 0, 4 * (16 * nd - n) * sizeof dq[0]);
        __m512i i01 = _mm512_setzero_si512(), i23 = i01;
        {
            _Alignas(64) int16_t a[32], c[32];
            for (int j = 0; j < 16; j++) {
                int src = j < 8 ? 4 * j : 32 + 4 * (j - 8);
                a[j] = (int16_t)src, a[16 + j] = (int16_t)(src + 1);
                c[j] = (int16_t)(src + 2), c[16 + j] = (int16_t)(src + 3);
            }
            i01 = _mm512_load_si512(a), i23 = _mm512_load_si512(c);
        }
        for (size_t i = 0; i < nd; i++) {
            __m512i A = _mm512_load_si512(dq + 64 * i), B = _mm512_load_si512(dq + 64 * i + 32);
            __m512i p01 = _mm512_permutex2var_epi16(A, i01, B), p23 = _mm512_permutex2var_epi16(A, i23, B);
            _mm512_store_ps(dsc[0] + 16 * i, _mm512_cvtph_ps(_mm512_castsi512_si256(p01)));
            _mm512_store_ps(dsc[1] + 16 * i, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(p01, 1)));
            _mm512_store_ps(dsc[2] + 16 * i, _mm512_cvtph_ps(_mm512_castsi512_si256(p23)));
            _mm512_store_ps(dsc[3] + 16 * i, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(p23, 1)));
        }
    }
    for (uint32_t b = 0; b < dim / 32; b++) {
        const uint8_t *blk = v + 18 * (size_t)b;
        const float *db = dsc[dim == 128 ? b : 0];
        if (dim != 128) {
            for (size_t t = 0; t < n; t++) memcpy(&dh[t], blk + t * stride, 2);
            for (size_t t = n; t < 16 * nd; t++) dh[t] = 0;
            for (size_t i = 0; i < nd; i++)
                _mm512_store_ps(dsc[0] + 16 * i, _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(dh + 16 * i))));
        }
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {
            float scale[HG];
            int32_t corr[HG];
            int any = 0;
            for (uint32_t h = 0; h < HG; h++) {
                /* written to a multiple of 16 tokens (zero past n) unless every weight is zero */
                scale[h] = h0 + h < G ? q4_weights_i16(w + (h0 + h) * ld, db, n, wq[h], &corr[h]) : 0.0f;
                if (scale[h] == 0.0f) memset(wq[h], 0, sizeof wq[h]);
                any |= scale[h] != 0.0f;
            }
            if (!any) continue;
            __m512i l0 = _mm512_setzero_si512(), l1 = l0, l2 = l0, l3 = l0;
            __m512i u0 = l0, u1 = l0, u2 = l0, u3 = l0;
            for (size_t t = 0; t < n; t += 2) {
                const uint8_t *ra = blk + t * stride + 2, *rb = t + 1 < n ? ra + stride : ra;
                __m128i a = _mm_loadu_si128((const __m128i *)ra), c = _mm_loadu_si128((const __m128i *)rb);
                __m512i x = _mm512_cvtepu8_epi16(
                    _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(a, c)), _mm_unpackhi_epi8(a, c), 1));
                __m512i xl = _mm512_and_si512(x, m15), xh = _mm512_srli_epi16(x, 4);
                /* token pairs: t in the low 16 bits, t + 1 in the high */
                int32_t p0, p1, p2, p3;
                memcpy(&p0, wq[0] + t, 4), memcpy(&p1, wq[1] + t, 4);
                memcpy(&p2, wq[2] + t, 4), memcpy(&p3, wq[3] + t, 4);
                __m512i w0 = _mm512_set1_epi32(p0), w1 = _mm512_set1_epi32(p1);
                __m512i w2 = _mm512_set1_epi32(p2), w3 = _mm512_set1_epi32(p3);
                l0 = _mm512_dpwssd_epi32(l0, xl, w0), u0 = _mm512_dpwssd_epi32(u0, xh, w0);
                l1 = _mm512_dpwssd_epi32(l1, xl, w1), u1 = _mm512_dpwssd_epi32(u1, xh, w1);
                l2 = _mm512_dpwssd_epi32(l2, xl, w2), u2 = _mm512_dpwssd_epi32(u2, xh, w2);
                l3 = _mm512_dpwssd_epi32(l3, xl, w3), u3 = _mm512_dpwssd_epi32(u3, xh, w3);
            }
#define Q4V_OUT(H, L, U)                                                                     \
    do {                                                                                     \
        if (h0 + (H) < G && scale[H] != 0.0f) {                                              \
            __m512i cv = _mm512_set1_epi32(corr[H]);                                         \
            __m512 sc = _mm512_set1_ps(scale[H]);                                            \
            float *p = acc + (size_t)(h0 + (H)) * dim + 32 * b;                              \
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p),                            \
                                              _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(L, cv)), sc))); \
            _mm512_storeu_ps(p + 16, _mm512_add_ps(_mm512_loadu_ps(p + 16),                  \
                                                   _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(U, cv)), sc))); \
        }                                                                                    \
    } while (0)
            Q4V_OUT(0, l0, u0);
            Q4V_OUT(1, l1, u1);
            Q4V_OUT(2, l2, u2);
            Q4V_OUT(3, l3, u3);
#undef Q4V_OUT
        }
    }
}

/* 1-bit passes: each pass's 128 bits per block become 0/1 bytes (a masked move of ones)
 * against the int8 query, so S_p of four heads costs 2 vpdpbusd per head and block. */
__attribute__((target("avx512vnni"))) static inline __m512i
token_b1(const uint8_t *bits, uint32_t nblk, const int8_t *q0, const int8_t *q1, const int8_t *q2,
         const int8_t *q3) {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (uint32_t b = 0; b < nblk; b++) {
        uint64_t w0, w1;
        memcpy(&w0, bits + 16 * b, 8);
        memcpy(&w1, bits + 16 * b + 8, 8);
        __m512i lo = _mm512_maskz_mov_epi8(_cvtu64_mask64(w0), ones);
        __m512i hi = _mm512_maskz_mov_epi8(_cvtu64_mask64(w1), ones);
        size_t o = 128 * (size_t)b;
        a0 = _mm512_dpbusd_epi32(a0, lo, _mm512_loadu_si512(q0 + o));
        a1 = _mm512_dpbusd_epi32(a1, lo, _mm512_loadu_si512(q1 + o));
        a2 = _mm512_dpbusd_epi32(a2, lo, _mm512_loadu_si512(q2 + o));
        a3 = _mm512_dpbusd_epi32(a3, lo, _mm512_loadu_si512(q3 + o));
        a0 = _mm512_dpbusd_epi32(a0, hi, _mm512_loadu_si512(q0 + o + 64));
        a1 = _mm512_dpbusd_epi32(a1, hi, _mm512_loadu_si512(q1 + o + 64));
        a2 = _mm512_dpbusd_epi32(a2, hi, _mm512_loadu_si512(q2 + o + 64));
        a3 = _mm512_dpbusd_epi32(a3, hi, _mm512_loadu_si512(q3 + o + 64));
    }
    return fold4(a0, a1, a2, a3);
}

/* Four tokens at a time, one pass after another: lane 4 t + h accumulates
 * s_p (c_p[0] qsum / 128 + (c_p[1] - c_p[0]) S_p) in the reference's order. */
__attribute__((target("avx512vnni"))) static void
score_rot1_i8(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale, const int32_t *qsum,
              uint32_t G, const uint8_t *k, size_t n, float *scores, size_t ld) {
    uint32_t dim = L->dim, nblk = dim / 128;
    size_t cs = L->code_size;
    const __m512i lane_tok = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i head_major = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        uint32_t hh[HG];
        for (uint32_t h = 0; h < HG; h++) hh[h] = h0 + h < G ? h0 + h : h0;
        const int8_t *q0 = q8 + (size_t)hh[0] * dim, *q1 = q8 + (size_t)hh[1] * dim;
        const int8_t *q2 = q8 + (size_t)hh[2] * dim, *q3 = q8 + (size_t)hh[3] * dim;
        float scl[16], qf[16];
        for (int i = 0; i < 16; i++) {
            scl[i] = qscale[hh[i % 4]];
            qf[i] = (float)(qsum[hh[i % 4]] / 128);
        }
        const __m512 vscale = _mm512_loadu_ps(scl), vqf = _mm512_loadu_ps(qf);
        for (size_t t0 = 0; t0 < n; t0 += 4) {
            size_t nt = n - t0 < 4 ? n - t0 : 4;
            size_t tt[4] = {t0, t0 + (nt > 1), t0 + (nt > 2 ? 2 : nt - 1), t0 + nt - 1};
            const uint8_t *c0 = k + tt[0] * cs, *c1 = k + tt[1] * cs, *c2 = k + tt[2] * cs,
                          *c3 = k + tt[3] * cs;
            __m512 acc = _mm512_setzero_ps();
            for (uint32_t p = 0; p < L->n_pass; p++) {
                uint32_t io = L->index_offset[p];
                __m512i v0 = token_b1(c0 + io, nblk, q0, q1, q2, q3);
                __m512i v1 = token_b1(c1 + io, nblk, q0, q1, q2, q3);
                __m512i v2 = token_b1(c2 + io, nblk, q0, q1, q2, q3);
                __m512i v3 = token_b1(c3 + io, nblk, q0, q1, q2, q3);
                __m512 S = _mm512_cvtepi32_ps(fold_lanes(v0, v1, v2, v3));
                __m512 sp = _mm512_set1_ps(1.0f);
                if (p) {
                    uint32_t so = L->scale_offset[p];
                    __m128 s4 = _mm_set_ps(fp16_scalar(c3 + so), fp16_scalar(c2 + so),
                                           fp16_scalar(c1 + so), fp16_scalar(c0 + so));
                    sp = _mm512_permutexvar_ps(lane_tok, _mm512_castps128_ps512(s4));
                }
                __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(KVQI_ROT_CENT(L, p)[0]), vqf),
                                         _mm512_mul_ps(_mm512_set1_ps(KVQI_ROT_CENT(L, p)[1] - KVQI_ROT_CENT(L, p)[0]), S));
                acc = _mm512_add_ps(acc, _mm512_mul_ps(sp, v));
            }
            const uint8_t *nb = k + L->norm_offset;
            __m128 n4 = _mm_set_ps(fp16_scalar(nb + tt[3] * cs), fp16_scalar(nb + tt[2] * cs),
                                   fp16_scalar(nb + tt[1] * cs), fp16_scalar(nb + tt[0] * cs));
            __m512 nrm = _mm512_permutexvar_ps(lane_tok, _mm512_castps128_ps512(n4));
            __m512 f = _mm512_mul_ps(_mm512_mul_ps(acc, vscale), nrm);
            if (nt == 4 && h0 + HG <= G) {
                f = _mm512_permutexvar_ps(head_major, f);
                _mm_storeu_ps(scores + h0 * ld + t0, _mm512_castps512_ps128(f));
                _mm_storeu_ps(scores + (h0 + 1) * ld + t0, _mm512_extractf32x4_ps(f, 1));
                _mm_storeu_ps(scores + (h0 + 2) * ld + t0, _mm512_extractf32x4_ps(f, 2));
                _mm_storeu_ps(scores + (h0 + 3) * ld + t0, _mm512_extractf32x4_ps(f, 3));
                continue;
            }
            float out[16];
            _mm512_storeu_ps(out, f);
            for (size_t t = 0; t < nt; t++)
                for (uint32_t h = 0; h < HG && h0 + h < G; h++)
                    scores[(h0 + h) * ld + t0 + t] = out[4 * t + h];
        }
    }
}

/* Sign codes against the int8 projection: the same 0/1-byte sums as the 1-bit keys. */
__attribute__((target("avx512vnni"))) static void
score_signs_i8(const kvqi_sign_layout *L, const int8_t *z8, const float *zscale, const int32_t *zsum8,
               uint32_t G, const uint8_t *k, size_t n, int accumulate, float *scores, size_t ld) {
    uint32_t m = L->m, nblk = m / 128;
    size_t cs = L->code_size;
    const __m512i lane_tok = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        uint32_t hh[HG];
        for (uint32_t h = 0; h < HG; h++) hh[h] = h0 + h < G ? h0 + h : h0;
        const int8_t *q0 = z8 + (size_t)hh[0] * m, *q1 = z8 + (size_t)hh[1] * m;
        const int8_t *q2 = z8 + (size_t)hh[2] * m, *q3 = z8 + (size_t)hh[3] * m;
        float scl[16];
        int32_t zs[16];
        for (int i = 0; i < 16; i++) {
            scl[i] = zscale[hh[i % 4]];
            zs[i] = zsum8[hh[i % 4]];
        }
        const __m512 vscale = _mm512_loadu_ps(scl);
        const __m512i vzs = _mm512_loadu_si512(zs);
        for (size_t t0 = 0; t0 < n; t0 += 4) {
            size_t nt = n - t0 < 4 ? n - t0 : 4;
            size_t tt[4] = {t0, t0 + (nt > 1), t0 + (nt > 2 ? 2 : nt - 1), t0 + nt - 1};
            float fv[4];
            __m512i v[4];
            for (int i = 0; i < 4; i++) {
                const uint8_t *c = k + tt[i] * cs;
                float f = fp16_scalar(c + L->num_offset);
                if (L->den_offset != KVQI_SIGN_NO_DEN) f = f / fp16_scalar(c + L->den_offset);
                fv[i] = f * L->c0;
                v[i] = token_b1(c + L->bits_offset, nblk, q0, q1, q2, q3);
            }
            __m512i S = fold_lanes(v[0], v[1], v[2], v[3]);
            __m512i d = _mm512_sub_epi32(_mm512_add_epi32(S, S), vzs);
            __m512 f = _mm512_permutexvar_ps(lane_tok, _mm512_castps128_ps512(_mm_loadu_ps(fv)));
            __m512 r = _mm512_mul_ps(f, _mm512_mul_ps(vscale, _mm512_cvtepi32_ps(d)));
            float out[16];
            _mm512_storeu_ps(out, r);
            for (size_t t = 0; t < nt; t++)
                for (uint32_t h = 0; h < HG && h0 + h < G; h++) {
                    float *dst = scores + (h0 + h) * ld + t0 + t;
                    *dst = accumulate ? *dst + out[4 * t + h] : out[4 * t + h];
                }
        }
    }
}

/* ------------------------------------------------- integer value sums (VNNI) */

/* One half (64 coordinates, HALF 0 or 1) of unpack_i8_*: the same bytes, the same order. */
KVQI_INLINE __attribute__((target("avx512vnni"))) __m512i
half_i8_24(const uint32_t BITS, const uint32_t HALF, const uint8_t *idx, uint32_t b, __m512i tab) {
    if (BITS == 4) {
        const __m512i m4 = _mm512_set1_epi8(0x0f);
        __m512i v = _mm512_loadu_si512(idx + 64 * b);
        if (HALF) v = _mm512_srli_epi16(v, 4);
        return _mm512_shuffle_epi8(tab, _mm512_and_si512(v, m4));
    }
    const __m512i m3 = _mm512_set1_epi8(0x03);
    const __m512i sh = _mm512_set_epi64(0x0004000400040004LL, 0x0004000400040004LL,
                                        0x0004000400040004LL, 0x0004000400040004LL,
                                        0, 0, 0, 0);
    __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(idx + 32 * b)));
    v = _mm512_srlv_epi16(v, sh);
    if (HALF) v = _mm512_srli_epi16(v, 2);
    return _mm512_shuffle_epi8(tab, _mm512_and_si512(v, m3));
}

/* half_i8_24's 2-bit case with the half's shifts in one vector (0 and 4, or 2 and 6 per
 * 256-bit half): the same bytes, one shift, and a loop over both halves without a branch
 * on the half, so the index bytes come in by one broadcast load. */
KVQI_INLINE __attribute__((target("avx512vnni"))) __m512i
half_i8_2s(const uint8_t *idx, uint32_t b, __m512i sh, __m512i tab) {
    __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(idx + 32 * b)));
    return _mm512_shuffle_epi8(tab, _mm512_and_si512(_mm512_srlv_epi16(v, sh), _mm512_set1_epi8(0x03)));
}

/* half_i8_2s's shifts for one half: 0 and 4 (half 0) or 2 and 6 per 256-bit half. */
KVQI_INLINE __m512i half_shifts2(uint32_t half) {
    return _mm512_add_epi16(_mm512_set_epi64(0x0004000400040004LL, 0x0004000400040004LL, 0x0004000400040004LL,
                                             0x0004000400040004LL, 0, 0, 0, 0),
                            _mm512_set1_epi16((short)(2 * half)));
}

KVQI_INLINE __attribute__((target("avx512vnni,avx512vbmi"))) __m512i
half_i8_3(const uint32_t BITS, const uint32_t HALF, const uint8_t *idx, uint32_t b, __m512i tab) {
    (void)BITS;
    const __m512i ctl = _mm512_set1_epi64(0x15120f0c09060300LL);
    __m512i p = _mm512_set_epi64(0x17171615, 0x14141312, 0x1111100f, 0x0e0e0d0c,
                                 0x0b0b0a09, 0x08080706, 0x05050403, 0x02020100);
    if (HALF) p = _mm512_add_epi8(p, _mm512_set1_epi8(24));
    __m512i v = _mm512_maskz_loadu_epi8((__mmask64)0xffffffffffffULL, idx + 48 * b);
    __m512i x = _mm512_multishift_epi64_epi8(ctl, _mm512_permutexvar_epi8(p, v));
    return _mm512_shuffle_epi8(tab, _mm512_and_si512(x, _mm512_set1_epi8(0x07)));
}

/* The centroid bytes as the signed table the half loaders look up (cent_u8 - 128). */
KVQI_INLINE __m512i rot_tab_i8(const kvqi_rot_layout *L) {
    return _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)L->cent_u8)),
                            _mm512_set1_epi8((char)0x80));
}

/* One token's half of block b for the value kernels: 2-bit codes by half_i8_2s with the
 * half's shifts sh2, other widths by the suffix's half loader (HALF a constant there). */
#define DEFINE_HALF_X(SUFFIX, TARGET)                                                        \
    KVQI_INLINE __attribute__((target(TARGET))) __m512i half_x_##SUFFIX(                     \
        const uint32_t BITS, uint32_t half, const uint8_t *c, uint32_t b, __m512i sh2, __m512i tab) { \
        if (BITS == 2) return half_i8_2s(c, b, sh2, tab);                                    \
        return half ? half_i8_##SUFFIX(BITS, 1, c, b, tab) : half_i8_##SUFFIX(BITS, 0, c, b, tab); \
    }
DEFINE_HALF_X(24, "avx512vnni")
DEFINE_HALF_X(3, "avx512vnni,avx512vbmi")

/* The value kernels' inner step: the four heads' 32-bit weight words at token t (wq[h] +
 * t) broadcast, and DP(r, c, w) into the 16 accumulators r00..r33 of the coordinates'
 * vectors c0..c3 (names of the caller's). */
#define ROT_DOT16(DP)                                                                        \
    do {                                                                                     \
        int32_t p0_, p1_, p2_, p3_;                                                          \
        memcpy(&p0_, wq[0] + t, 4), memcpy(&p1_, wq[1] + t, 4);                              \
        memcpy(&p2_, wq[2] + t, 4), memcpy(&p3_, wq[3] + t, 4);                              \
        __m512i w0_ = _mm512_set1_epi32(p0_), w1_ = _mm512_set1_epi32(p1_);                  \
        __m512i w2_ = _mm512_set1_epi32(p2_), w3_ = _mm512_set1_epi32(p3_);                  \
        r00 = DP(r00, c0, w0_), r01 = DP(r01, c1, w0_), r02 = DP(r02, c2, w0_), r03 = DP(r03, c3, w0_); \
        r10 = DP(r10, c0, w1_), r11 = DP(r11, c1, w1_), r12 = DP(r12, c2, w1_), r13 = DP(r13, c3, w1_); \
        r20 = DP(r20, c0, w2_), r21 = DP(r21, c1, w2_), r22 = DP(r22, c2, w2_), r23 = DP(r23, c3, w2_); \
        r30 = DP(r30, c0, w3_), r31 = DP(r31, c1, w3_), r32 = DP(r32, c2, w3_), r33 = DP(r33, c3, w3_); \
    } while (0)
/* 16-bit words of two tokens against 16-bit weight pairs; unsigned 8-bit weights of four
 * tokens against their signed centroid bytes */
#define DP_I16(r, c, w) _mm512_dpwssd_epi32(r, c, w)
#define DP_U8(r, c, w) _mm512_dpbusd_epi32(r, w, c)

/* The block's row norms, 16 tokens a vector (zero past n): one 4-byte gather at each
 * norm (a code holds at least 4 bytes from its norm on), the low words as fp16. */
KVQI_INLINE void rot_norms16(const kvqi_rot_layout *L, const uint8_t *v, size_t n, __m512 *nrm) {
    size_t cs = L->code_size, nv = (n + 15) / 16;
    if (L->norm_offset + 4 > cs) {
        float f[KVQI_MAX_BLOCK_TOKENS];
        for (size_t t = 0; t < n; t++) f[t] = fp16_scalar(v + t * cs + L->norm_offset);
        for (size_t i = 0; i < nv; i++) {
            nrm[i] = _mm512_maskz_loadu_ps(first16(n - 16 * i), f + 16 * i);
        }
        return;
    }
    const __m512i off = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32((int)cs));
    for (size_t i = 0; i < nv; i++) {
        __mmask16 k = first16(n - 16 * i);
        __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, off, v + L->norm_offset + 16 * i * cs, 1);
        nrm[i] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
    }
}

/* The weights times the norms of HG heads (zero past n and past gh), wn[h] in 16-token
 * vectors, and each head's largest |wn| in m[h]. */
KVQI_INLINE void weights4_wn(const float *w, size_t ld, uint32_t gh, const __m512 *nrm, size_t n,
                             __m512 wn[HG][KVQI_MAX_BLOCK_TOKENS / 16], float *m) {
    size_t nv = (n + 15) / 16;
    for (uint32_t h = 0; h < HG; h++) {
        __m512 mx = _mm512_setzero_ps();
        for (size_t i = 0; i < nv; i++) {
            __mmask16 k = h < gh ? first16(n - 16 * i) : 0;
            wn[h][i] = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, w + h * ld + 16 * i), nrm[i]);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(wn[h][i]));
        }
        m[h] = _mm512_reduce_max_ps(mx);
    }
}

/* weights_i16 for HG heads at once from the norms' vectors (the same products, maximum
 * and rounding: kvqi_cache_rot_weights_i16), the heads' chains side by side; wq[h]
 * written to a multiple of 16 tokens (zero past n, and for a head with no weight or
 * past G). */
KVQI_INLINE void weights4_i16(const float *w, size_t ld, uint32_t gh, const __m512 *nrm, size_t n,
                              int16_t wq[HG][KVQI_MAX_BLOCK_TOKENS + 32], float *scale) {
    __m512 wn[HG][KVQI_MAX_BLOCK_TOKENS / 16];
    float mh[HG];
    size_t nv = (n + 15) / 16;
    weights4_wn(w, ld, gh, nrm, n, wn, mh);
    for (uint32_t h = 0; h < HG; h++) {
        float m = mh[h];
        int ok = m > 0.0f && m <= 3.0e38f;
        __m512 inv = _mm512_set1_ps(ok ? 32767.0f / m : 0.0f);
        for (size_t i = 0; i < nv; i++)
            _mm256_store_si256((__m256i *)(void *)(wq[h] + 16 * i),
                               _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(wn[h][i], inv))));
        _mm256_store_si256((__m256i *)(void *)(wq[h] + 16 * nv), _mm256_setzero_si256());
        scale[h] = ok ? m * (1.0f / 32767.0f) : 0.0f;
    }
}

/* A pass's 64 int32 sums of each of gh heads (head h's row at p + h dim) added to the
 * accumulator times the head's scale; heads without weight (or skipped) untouched. */
KVQI_INLINE void rot_sums_out(float *p, uint32_t dim, uint32_t gh, const float *scale, const int *skip,
                              __m512i r[HG][4]) {
    for (uint32_t h = 0; h < gh; h++) {
        if (scale[h] == 0.0f || (skip && skip[h])) continue;
        __m512 sc = _mm512_set1_ps(scale[h]);
        float *ph = p + (size_t)h * dim;
        for (int m = 0; m < 4; m++)
            _mm512_storeu_ps(ph + 16 * m,
                             _mm512_add_ps(_mm512_loadu_ps(ph + 16 * m), _mm512_mul_ps(_mm512_cvtepi32_ps(r[h][m]), sc)));
    }
}

/* Two tokens per step: their centroid bytes interleaved and widened to 16 bits, so each
 * 32-bit lane holds one coordinate of both and one vpdpwssd adds both weighted terms;
 * 64 coordinates of four heads (16 accumulators) per pass over the block. */
#define DEFINE_ACCUM_I16(SUFFIX, TARGET)                                                     \
    KVQI_INLINE __attribute__((target(TARGET))) void accum_i16_##SUFFIX(                     \
        const uint32_t BITS, const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G, \
        const uint8_t *v, size_t n, float *acc) {                                            \
        uint32_t dim = L->dim;                                                               \
        size_t cs = L->code_size;                                                            \
        const __m512i tab = rot_tab_i8(L);                                                   \
        const uint8_t *idx0 = v + L->index_offset[0];                                        \
        __m512 nrm[KVQI_MAX_BLOCK_TOKENS / 16];                                              \
        _Alignas(64) int16_t wq[HG][KVQI_MAX_BLOCK_TOKENS + 32];                             \
        rot_norms16(L, v, n, nrm);                                                           \
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                            \
            float scale[HG];                                                                 \
            int any = 0;                                                                     \
            weights4_i16(w + h0 * ld, ld, G - h0 < HG ? G - h0 : HG, nrm, n, wq, scale);     \
            for (uint32_t h = 0; h < HG; h++) {                                              \
                scale[h] *= L->cent_scale;                                                   \
                any |= scale[h] != 0.0f;                                                     \
            }                                                                                \
            if (!any) continue;                                                              \
            /* token pairs: t in the low 16 bits, t + 1 in the high (zero past n) */        \
            for (uint32_t b = 0; b < dim / 128; b++) {                                       \
                for (uint32_t half = 0; half < 2; half++) {                                  \
                    const __m512i sh2 = half_shifts2(half);                                  \
                    __m512i r00 = _mm512_setzero_si512(), r01 = r00, r02 = r00, r03 = r00;   \
                    __m512i r10 = r00, r11 = r00, r12 = r00, r13 = r00;                      \
                    __m512i r20 = r00, r21 = r00, r22 = r00, r23 = r00;                      \
                    __m512i r30 = r00, r31 = r00, r32 = r00, r33 = r00;                      \
                    for (size_t t = 0; t < n; t += 2) {                                      \
                        const uint8_t *ca = idx0 + t * cs, *cb = t + 1 < n ? ca + cs : ca;    \
                        __m512i xa = half_x_##SUFFIX(BITS, half, ca, b, sh2, tab);           \
                        __m512i xb = half_x_##SUFFIX(BITS, half, cb, b, sh2, tab);           \
                        __m512i lo = _mm512_unpacklo_epi8(xa, xb), hi = _mm512_unpackhi_epi8(xa, xb); \
                        __m512i c0 = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(lo));       \
                        __m512i c1 = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(lo, 1)); \
                        __m512i c2 = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(hi));       \
                        __m512i c3 = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(hi, 1)); \
                        ROT_DOT16(DP_I16);                                                   \
                    }                                                                        \
                    __m512i r[HG][4] = {{r00, r01, r02, r03}, {r10, r11, r12, r13},          \
                                        {r20, r21, r22, r23}, {r30, r31, r32, r33}};         \
                    rot_sums_out(acc + (size_t)h0 * dim + 128 * b + 64 * half, dim,          \
                                 G - h0 < HG ? G - h0 : HG, scale, NULL, r);                \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }
DEFINE_ACCUM_I16(24, "avx512vnni")
DEFINE_ACCUM_I16(3, "avx512vnni,avx512vbmi")

/* The 8-bit weights of HG heads (kvqi_cache_rot_weights_u8's products, maximum and
 * rounding) from the norms' vectors: wq[h] as bytes, zero past n (to a multiple of 16),
 * for a head with no weight, past gh, or with a negative weight (neg[h] set, its 16-bit
 * words in wneg[h] for the one-at-a-time sums). */
KVQI_INLINE void weights4_u8(const float *w, size_t ld, uint32_t gh, const __m512 *nrm, size_t n,
                             uint8_t wq[HG][KVQI_MAX_BLOCK_TOKENS + 64], int16_t wneg[HG][KVQI_MAX_BLOCK_TOKENS],
                             float *scale, int *neg) {
    __m512 wn[HG][KVQI_MAX_BLOCK_TOKENS / 16];
    float mh[HG];
    size_t nv = (n + 15) / 16;
    weights4_wn(w, ld, gh, nrm, n, wn, mh);
    for (uint32_t h = 0; h < HG; h++) {
        float m = mh[h];
        int ok = m > 0.0f && m <= 3.0e38f;
        __m512 inv = _mm512_set1_ps(ok ? 255.0f / m : 0.0f);
        __m512i q[KVQI_MAX_BLOCK_TOKENS / 16];
        __mmask16 any_neg = 0;
        for (size_t i = 0; i < nv; i++) {
            q[i] = _mm512_cvtps_epi32(_mm512_mul_ps(wn[h][i], inv));
            any_neg |= _mm512_cmplt_epi32_mask(q[i], _mm512_setzero_si512());
        }
        neg[h] = any_neg != 0;
        scale[h] = ok ? m * (1.0f / 255.0f) : 0.0f;
        for (size_t i = 0; i < nv; i++) {
            _mm_store_si128((__m128i *)(void *)(wq[h] + 16 * i),
                            neg[h] ? _mm_setzero_si128() : _mm512_cvtepi32_epi8(q[i]));
            if (neg[h]) _mm256_storeu_si256((__m256i *)(void *)(wneg[h] + 16 * i), _mm512_cvtepi32_epi16(q[i]));
        }
        _mm_store_si128((__m128i *)(void *)(wq[h] + 16 * nv), _mm_setzero_si128());
    }
}

/* Four tokens per step: their centroid bytes interleaved, so each 32-bit lane holds one
 * coordinate of all four and one vpdpbusd adds the four weighted terms (weights as the
 * unsigned operand); 64 coordinates of four heads (16 accumulators) per pass over the
 * block; lanes in the kvqi_rot_v8_coordinate order. */
#define DEFINE_ACCUM_U8(SUFFIX, TARGET)                                                      \
    KVQI_INLINE __attribute__((target(TARGET))) void accum_u8_##SUFFIX(                      \
        const uint32_t BITS, const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G, \
        const uint8_t *v, size_t n, float *acc) {                                            \
        uint32_t dim = L->dim;                                                               \
        size_t cs = L->code_size;                                                            \
        const __m512i tab = rot_tab_i8(L);                                                   \
        const uint8_t *idx0 = v + L->index_offset[0];                                        \
        __m512 nrm[KVQI_MAX_BLOCK_TOKENS / 16];                                              \
        _Alignas(64) uint8_t wq[HG][KVQI_MAX_BLOCK_TOKENS + 64];                             \
        int16_t wneg[HG][KVQI_MAX_BLOCK_TOKENS];                                             \
        rot_norms16(L, v, n, nrm);                                                           \
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                            \
            float scale[HG];                                                                 \
            int neg[HG], any = 0;                                                            \
            uint32_t gh = G - h0 < HG ? G - h0 : HG;                                         \
            weights4_u8(w + h0 * ld, ld, gh, nrm, n, wq, wneg, scale, neg);                  \
            for (uint32_t h = 0; h < HG; h++) {                                              \
                scale[h] *= L->cent_scale;                                                   \
                if (h < gh && neg[h] && scale[h] != 0.0f) /* rare: one token at a time */    \
                    kvqi_cache_accum_rot_u8_head(L, wneg[h], scale[h], v, n, acc + (size_t)(h0 + h) * dim); \
                any |= scale[h] != 0.0f && !neg[h];                                          \
            }                                                                                \
            if (!any) continue;                                                              \
            for (uint32_t b = 0; b < dim / 128; b++) {                                       \
                for (uint32_t half = 0; half < 2; half++) {                                  \
                    const __m512i sh2 = half_shifts2(half);                                  \
                    __m512i r00 = _mm512_setzero_si512(), r01 = r00, r02 = r00, r03 = r00;   \
                    __m512i r10 = r00, r11 = r00, r12 = r00, r13 = r00;                      \
                    __m512i r20 = r00, r21 = r00, r22 = r00, r23 = r00;                      \
                    __m512i r30 = r00, r31 = r00, r32 = r00, r33 = r00;                      \
                    for (size_t t = 0; t < n; t += 4) {                                      \
                        /* tokens past n repeat the last one, under zero weights */          \
                        const uint8_t *ca = idx0 + t * cs;                                   \
                        const uint8_t *cb = t + 1 < n ? ca + cs : ca;                        \
                        const uint8_t *cc = t + 2 < n ? ca + 2 * cs : cb;                    \
                        const uint8_t *cd = t + 3 < n ? ca + 3 * cs : cc;                    \
                        __m512i xa = half_x_##SUFFIX(BITS, half, ca, b, sh2, tab);           \
                        __m512i xb = half_x_##SUFFIX(BITS, half, cb, b, sh2, tab);           \
                        __m512i xc = half_x_##SUFFIX(BITS, half, cc, b, sh2, tab);           \
                        __m512i xd = half_x_##SUFFIX(BITS, half, cd, b, sh2, tab);           \
                        __m512i ablo = _mm512_unpacklo_epi8(xa, xb), abhi = _mm512_unpackhi_epi8(xa, xb); \
                        __m512i cdlo = _mm512_unpacklo_epi8(xc, xd), cdhi = _mm512_unpackhi_epi8(xc, xd); \
                        __m512i c0 = _mm512_unpacklo_epi16(ablo, cdlo), c1 = _mm512_unpackhi_epi16(ablo, cdlo); \
                        __m512i c2 = _mm512_unpacklo_epi16(abhi, cdhi), c3 = _mm512_unpackhi_epi16(abhi, cdhi); \
                        ROT_DOT16(DP_U8);                                                    \
                    }                                                                        \
                    __m512i r[HG][4] = {{r00, r01, r02, r03}, {r10, r11, r12, r13},          \
                                        {r20, r21, r22, r23}, {r30, r31, r32, r33}};         \
                    rot_sums_out(acc + (size_t)h0 * dim + 128 * b + 64 * half, dim, gh, scale, neg, r); \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }
DEFINE_ACCUM_U8(24, "avx512vnni")
DEFINE_ACCUM_U8(3, "avx512vnni,avx512vbmi")

__attribute__((target("avx512vnni"))) static void
accum_rot_u8_vnni(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                  const uint8_t *v, size_t n, float *acc) {
    if (n > KVQI_MAX_BLOCK_TOKENS) kvqi_cache_accum_rot_u8_ref(L, w, ld, G, v, n, acc);
    else if (L->bits == 4) accum_u8_24(4, L, w, ld, G, v, n, acc);
    else if (L->bits == 2) accum_u8_24(2, L, w, ld, G, v, n, acc);
    else kvqi_cache_accum_rot_u8_ref(L, w, ld, G, v, n, acc);
}

__attribute__((target("avx512vnni,avx512vbmi"))) static void
accum_rot_u8_vbmi(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                  const uint8_t *v, size_t n, float *acc) {
    if (L->bits == 3 && n <= KVQI_MAX_BLOCK_TOKENS) accum_u8_3(3, L, w, ld, G, v, n, acc);
    else accum_rot_u8_vnni(L, w, ld, G, v, n, acc);
}

__attribute__((target("avx512vnni"))) static void
accum_rot_i16_vnni(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                   const uint8_t *v, size_t n, float *acc) {
    if (L->bits == 4) accum_i16_24(4, L, w, ld, G, v, n, acc);
    else if (L->bits == 2) accum_i16_24(2, L, w, ld, G, v, n, acc);
    else kvqi_cache_accum_rot_i16_ref(L, w, ld, G, v, n, acc);
}

__attribute__((target("avx512vnni,avx512vbmi"))) static void
accum_rot_i16_vbmi(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                   const uint8_t *v, size_t n, float *acc) {
    if (L->bits == 3) accum_i16_3(3, L, w, ld, G, v, n, acc);
    else accum_rot_i16_vnni(L, w, ld, G, v, n, acc);
}

/* ----------------------------------------------------------------- exp */

static inline __m512 exp_neg16(__m512 x) {
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 fi = _mm512_roundscale_ps(_mm512_sub_ps(t, _mm512_set1_ps(0.5f)),
                                     _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fi, _mm512_set1_ps(KVQI_EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(fi, _mm512_set1_ps(KVQI_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(KVQI_EXP_C6);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVQI_EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVQI_EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVQI_EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KVQI_EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fi), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(live, p, _mm512_castsi512_ps(e));
}

static float exp_sum(float *s, size_t n, float m) {
    __m512 mv = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
    size_t t = 0;
    for (; t + 16 <= n; t += 16) {
        __m512 e = exp_neg16(_mm512_sub_ps(_mm512_loadu_ps(s + t), mv));
        _mm512_storeu_ps(s + t, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (t < n) {
        __mmask16 k = (__mmask16)((1u << (n - t)) - 1u);
        __m512 e = exp_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + t), mv));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(s + t, k, e);
        sum = _mm512_add_ps(sum, e);
    }
    return hsum(sum);
}

static float max_of(const float *s, size_t n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    size_t t = 0;
    for (; t + 16 <= n; t += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + t));
    if (t < n) m = _mm512_mask_max_ps(m, (__mmask16)((1u << (n - t)) - 1u), m,
                                      _mm512_maskz_loadu_ps((__mmask16)((1u << (n - t)) - 1u), s + t));
    return _mm512_reduce_max_ps(m);
}

/* ------------------------------------------------------------ sign codes */

/* 16 codes per step, one per lane: their sign bytes are transposed into a byte-major
 * block (tb[j][lane]) so each table lookup is one gather of 16 floats; lanes past n read
 * byte 0 and are not stored. Same sums in the same order as the scalar reference. */
static void score_signs(const kvqi_sign_layout *L, const float *lut, const float *zsum, uint32_t G,
                        const uint8_t *k, size_t n, int accumulate, float *scores, size_t ld) {
    uint32_t nb = L->m / 8;
    uint8_t tb[KVQI_SIGN_MAX_M / 8][16];
    float fb[16];
    const __m512 two = _mm512_set1_ps(2.0f);
    for (size_t t0 = 0; t0 < n; t0 += 16) {
        uint32_t cnt = (uint32_t)(n - t0 < 16 ? n - t0 : 16);
        __mmask16 live = (__mmask16)((1u << cnt) - 1u);
        for (uint32_t i = 0; i < 16; i++) {
            if (i >= cnt) {
                fb[i] = 0.0f;
                for (uint32_t j = 0; j < nb; j++) tb[j][i] = 0;
                continue;
            }
            const uint8_t *c = k + (t0 + i) * L->code_size, *bits = c + L->bits_offset;
            float f = fp16_scalar(c + L->num_offset);
            if (L->den_offset != KVQI_SIGN_NO_DEN) f = f / fp16_scalar(c + L->den_offset);
            fb[i] = f * L->c0;
            for (uint32_t j = 0; j < nb; j++) tb[j][i] = bits[j];
        }
        __m512 f = _mm512_loadu_ps(fb);
        for (uint32_t h = 0; h < G; h++) {
            const float *lh = lut + (size_t)h * nb * 256;
            __m512 acc = _mm512_setzero_ps();
            for (uint32_t j = 0; j < nb; j++) {
                __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)tb[j]));
                acc = _mm512_add_ps(acc, _mm512_i32gather_ps(idx, lh + (size_t)j * 256, 4));
            }
            __m512 v = _mm512_mul_ps(f, _mm512_sub_ps(_mm512_mul_ps(two, acc), _mm512_set1_ps(zsum[h])));
            float *dst = scores + h * ld + t0;
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(live, dst), v);
            _mm512_mask_storeu_ps(dst, live, v);
        }
    }
}

void kvqi_cache_kernels_fill_avx512(kvqi_cache_kernels *k) {
    k->score_f32 = score_f32;
    k->score_f16 = score_f16;
    k->score_q8_0 = score_q8_0;
    k->score_q4_0 = score_q4_0;
    k->score_rot = score_rot;
    k->accum_f32 = accum_f32;
    k->accum_f16 = accum_f16;
    k->accum_q8_0 = accum_q8_0;
    k->accum_q4_0 = accum_q4_0;
    k->accum_rot = accum_rot;
    if (__builtin_cpu_supports("avx512vnni")) {
        int vbmi = __builtin_cpu_supports("avx512vbmi");
        k->score_rot_i8 = vbmi ? score_rot_i8_vbmi : score_rot_i8_vnni;
        k->rot_i8_bits = 1u << 2 | 1u << 4 | (vbmi ? 1u << 3 : 0u);
        k->accum_rot_i16 = vbmi ? accum_rot_i16_vbmi : accum_rot_i16_vnni;
        k->rot_v16_bits = k->rot_i8_bits;
        /* 8-bit weights for 2- and 3-bit values, whose own error (25 %, 13 % of the output)
         * dwarfs the weights' 0.4 %; 4-bit values (7 %) keep 16-bit weights */
        k->accum_rot_u8 = vbmi ? accum_rot_u8_vbmi : accum_rot_u8_vnni;
        k->rot_v8_bits = k->rot_i8_bits & (1u << 2 | 1u << 3);
        k->score_rot1_i8 = score_rot1_i8;
        k->score_signs_i8 = score_signs_i8;
        k->score_q4_0_i8 = vbmi ? score_q4_0_i8_vbmi : score_q4_0_i8;
        k->score_q8_0_i16 = score_q8_0_i16;
        k->accum_q4_0_i16 = accum_q4_0_i16;
    }
    k->outlier_add = outlier_add;
    k->axpy_rows = axpy_rows;
    k->exp_sum = exp_sum;
    k->max_of = max_of;
    k->score_signs = score_signs;
}
