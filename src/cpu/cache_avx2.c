/*
 * cache_avx2.c - AVX2+FMA+F16C versions of the cache's fused attention kernels
 * (references in cache_scalar.c). Same shape as the AVX-512 file: four heads per pass,
 * 16-coordinate slices so 4 heads x 2 accumulators fit the 16 ymm registers.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu/cache_kernels.h"

#define HG 4

static inline float fp16_scalar(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* ---------------------------------------------------------- row decoders */
/* 16 coordinates [16g, 16g+16) of a row: x0 = first 8, x1 = next 8 */

static inline void dec_f32(const uint8_t *row, uint32_t g, __m256 *x0, __m256 *x1) {
    const float *r = (const float *)(const void *)row + 16 * g;
    *x0 = _mm256_loadu_ps(r);
    *x1 = _mm256_loadu_ps(r + 8);
}
static inline void dec_f16(const uint8_t *row, uint32_t g, __m256 *x0, __m256 *x1) {
    const uint8_t *r = row + 32 * g;
    *x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)r));
    *x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r + 16)));
}
static inline void dec_q8_0(const uint8_t *row, uint32_t g, __m256 *x0, __m256 *x1) {
    const uint8_t *blk = row + 34 * (g / 2);
    __m256 d = _mm256_set1_ps(fp16_scalar(blk));
    const uint8_t *qs = blk + 2 + 16 * (g % 2);
    __m256i i0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    __m256i i1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    *x0 = _mm256_mul_ps(_mm256_cvtepi32_ps(i0), d);
    *x1 = _mm256_mul_ps(_mm256_cvtepi32_ps(i1), d);
}
static inline void dec_q4_0(const uint8_t *row, uint32_t g, __m256 *x0, __m256 *x1) {
    const uint8_t *blk = row + 18 * (g / 2);
    __m256 d = _mm256_set1_ps(fp16_scalar(blk));
    __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2)));
    __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 10)));
    int shift = (g % 2) * 4;
    __m256i m = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
    v0 = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(v0, shift), m), eight);
    v1 = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(v1, shift), m), eight);
    *x0 = _mm256_mul_ps(_mm256_cvtepi32_ps(v0), d);
    *x1 = _mm256_mul_ps(_mm256_cvtepi32_ps(v1), d);
}

/* Sums go over the block in groups of ROW_TG tokens, each group's rows read once for all
 * 16-coordinate slices while they sit in L1 (a pass per slice over the whole block read
 * each row in pieces a block apart: slow from memory); a group's sums are parked (part)
 * and picked up by the next, so each lane is the chain of one pass: the same bits. fp32
 * and q4_0 rows, and heads wider than ROW_PART, keep one pass (as in cache_avx512.c). */
/* Scores: two tokens per pass, so each load of a query slice serves both (the query
 * loads, not the multiply-adds, bound one token at a time), 4 heads x 2 tokens of
 * accumulators (with the 4 decoded vectors and a query slice, 13 of the 16 registers);
 * each lane the same chain of multiply-adds as one token at a time, and the two tokens'
 * hsum4 adds folded into one vector (lanes h, 4 + h) in hsum4's order: the same bits.
 * Rows are asked for KEY_AHEAD rows before the scores read them (as in cache_avx512.c),
 * only a row's own bytes: rows of the exact window are `stride` apart with other heads
 * between (the q8_0 16-bit-query scores, one token a pass, ask too: 1.07-1.2x on q8_0/q8_0).
 * The value sums of fp16 and q8_0 rows ask for the next group's rows as a group starts
 * (fp16/fp16 32k step: 13.2 -> 8.6 ms, most of this file's gain over the one-token
 * kernel; q8_0/q8_0 1.07x, where on AVX-512 it measured 0.98-0.99x). */
#define KEY_AHEAD 16
static inline void prefetch_row(const uint8_t *row, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)row + o, _MM_HINT_T0);
    _mm_prefetch((const char *)row + bytes - 1, _MM_HINT_T0);
}
#define ROW_PART 512
#define DEFINE_ROW_KERNELS(NAME, DEC, BLK, SCALAR_SCORE, SCALAR_ACCUM, ROW_TG, V_AHEAD)       \
    static void score_##NAME(const float *q, uint32_t G, uint32_t dim, const uint8_t *k,     \
                             size_t stride, size_t n, float *scores, size_t ld) {            \
        if (dim % 32) {                                                                      \
            kvqi_cache_kernels_scalar.SCALAR_SCORE(q, G, dim, k, stride, n, scores, ld);     \
            return;                                                                          \
        }                                                                                    \
        size_t rowb = dim / 32 * (size_t)(BLK);                                              \
        for (uint32_t h0 = 0; h0 < G; h0 += HG) {                                            \
            const float *q0p = q + (size_t)h0 * dim;                                         \
            const float *q1p = q + (size_t)(h0 + 1 < G ? h0 + 1 : h0) * dim;                 \
            const float *q2p = q + (size_t)(h0 + 2 < G ? h0 + 2 : h0) * dim;                 \
            const float *q3p = q + (size_t)(h0 + 3 < G ? h0 + 3 : h0) * dim;                 \
            for (size_t t = 0; t < n; t += 2) {                                              \
                const uint8_t *r0 = k + t * stride;                                          \
                const uint8_t *r1 = t + 1 < n ? r0 + stride : r0;                            \
                prefetch_row(r0 + KEY_AHEAD * stride, rowb);                                 \
                prefetch_row(r0 + (KEY_AHEAD + 1) * stride, rowb);                           \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                  \
                __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;                                   \
                for (uint32_t g = 0; g < dim / 16; g++) {                                    \
                    __m256 x0, x1, y0, y1, qv;                                               \
                    DEC(r0, g, &x0, &x1);                                                    \
                    DEC(r1, g, &y0, &y1);                                                    \
                    qv = _mm256_loadu_ps(q0p + 16 * g);                                      \
                    a0 = _mm256_fmadd_ps(qv, x0, a0);                                        \
                    b0 = _mm256_fmadd_ps(qv, y0, b0);                                        \
                    qv = _mm256_loadu_ps(q1p + 16 * g);                                      \
                    a1 = _mm256_fmadd_ps(qv, x0, a1);                                        \
                    b1 = _mm256_fmadd_ps(qv, y0, b1);                                        \
                    qv = _mm256_loadu_ps(q2p + 16 * g);                                      \
                    a2 = _mm256_fmadd_ps(qv, x0, a2);                                        \
                    b2 = _mm256_fmadd_ps(qv, y0, b2);                                        \
                    qv = _mm256_loadu_ps(q3p + 16 * g);                                      \
                    a3 = _mm256_fmadd_ps(qv, x0, a3);                                        \
                    b3 = _mm256_fmadd_ps(qv, y0, b3);                                        \
                    qv = _mm256_loadu_ps(q0p + 16 * g + 8);                                  \
                    a0 = _mm256_fmadd_ps(qv, x1, a0);                                        \
                    b0 = _mm256_fmadd_ps(qv, y1, b0);                                        \
                    qv = _mm256_loadu_ps(q1p + 16 * g + 8);                                  \
                    a1 = _mm256_fmadd_ps(qv, x1, a1);                                        \
                    b1 = _mm256_fmadd_ps(qv, y1, b1);                                        \
                    qv = _mm256_loadu_ps(q2p + 16 * g + 8);                                  \
                    a2 = _mm256_fmadd_ps(qv, x1, a2);                                        \
                    b2 = _mm256_fmadd_ps(qv, y1, b2);                                        \
                    qv = _mm256_loadu_ps(q3p + 16 * g + 8);                                  \
                    a3 = _mm256_fmadd_ps(qv, x1, a3);                                        \
                    b3 = _mm256_fmadd_ps(qv, y1, b3);                                        \
                }                                                                            \
                __m256 sa = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));  \
                __m256 sb = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));  \
                __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(sa, sb, 0x20),               \
                                         _mm256_permute2f128_ps(sa, sb, 0x31));              \
                __m128 lo = _mm256_castps256_ps128(r), hi = _mm256_extractf128_ps(r, 1);     \
                float *s0 = scores + (size_t)h0 * ld + t;                                    \
                if (t + 1 < n && h0 + HG <= G) { /* head h: tokens t, t + 1 */               \
                    __m128 p01 = _mm_unpacklo_ps(lo, hi), p23 = _mm_unpackhi_ps(lo, hi);     \
                    _mm_storel_pi((__m64 *)(void *)s0, p01);                                 \
                    _mm_storeh_pi((__m64 *)(void *)(s0 + ld), p01);                          \
                    _mm_storel_pi((__m64 *)(void *)(s0 + 2 * ld), p23);                      \
                    _mm_storeh_pi((__m64 *)(void *)(s0 + 3 * ld), p23);                      \
                } else {                                                                     \
                    float s[8];                                                              \
                    _mm_storeu_ps(s, lo);                                                    \
                    _mm_storeu_ps(s + 4, hi);                                                \
                    for (uint32_t h = 0; h < HG && h0 + h < G; h++) {                        \
                        s0[h * ld] = s[h];                                                   \
                        if (t + 1 < n) s0[h * ld + 1] = s[4 + h];                            \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    static void accum_##NAME(const float *w, size_t ld, uint32_t G, uint32_t dim,            \
                             const uint8_t *v, size_t stride, size_t n, float *acc) {        \
        if (dim % 32) {                                                                      \
            kvqi_cache_kernels_scalar.SCALAR_ACCUM(w, ld, G, dim, v, stride, n, acc);        \
            return;                                                                          \
        }                                                                                    \
        float zero_w[KVQI_MAX_BLOCK_TOKENS], dummy[16];                                      \
        _Alignas(32) float part[HG][ROW_PART]; /* stored, then reloaded: whole lines */      \
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
            for (uint32_t g = 0; g < dim / 16; g++) {                                        \
                /* named accumulators: an indexed array of them is kept on the stack */      \
                size_t te = tg + step < n ? tg + step : n;                                   \
                if (V_AHEAD && g == 0) /* the next group's rows */                           \
                    for (size_t t = te; t < te + step; t++)                                  \
                        prefetch_row(v + t * stride, dim / 32 * (size_t)(BLK));              \
                __m256 r0 = _mm256_setzero_ps(), r1 = r0, r2 = r0, r3 = r0;                  \
                __m256 r4 = r0, r5 = r0, r6 = r0, r7 = r0;                                   \
                if (tg) { /* the earlier groups' sums: one chain per lane, as in one pass */ \
                    r0 = _mm256_loadu_ps(part[0] + 16 * g), r1 = _mm256_loadu_ps(part[0] + 16 * g + 8); \
                    r2 = _mm256_loadu_ps(part[1] + 16 * g), r3 = _mm256_loadu_ps(part[1] + 16 * g + 8); \
                    r4 = _mm256_loadu_ps(part[2] + 16 * g), r5 = _mm256_loadu_ps(part[2] + 16 * g + 8); \
                    r6 = _mm256_loadu_ps(part[3] + 16 * g), r7 = _mm256_loadu_ps(part[3] + 16 * g + 8); \
                }                                                                            \
                const float *w0 = wh[0], *w1 = wh[1], *w2 = wh[2], *w3 = wh[3];              \
                for (size_t t = tg; t < te; t++) {                                           \
                    __m256 x0, x1, wv;                                                       \
                    DEC(v + t * stride, g, &x0, &x1);                                        \
                    wv = _mm256_broadcast_ss(w0 + t);                                        \
                    r0 = _mm256_fmadd_ps(wv, x0, r0);                                        \
                    r1 = _mm256_fmadd_ps(wv, x1, r1);                                        \
                    wv = _mm256_broadcast_ss(w1 + t);                                        \
                    r2 = _mm256_fmadd_ps(wv, x0, r2);                                        \
                    r3 = _mm256_fmadd_ps(wv, x1, r3);                                        \
                    wv = _mm256_broadcast_ss(w2 + t);                                        \
                    r4 = _mm256_fmadd_ps(wv, x0, r4);                                        \
                    r5 = _mm256_fmadd_ps(wv, x1, r5);                                        \
                    wv = _mm256_broadcast_ss(w3 + t);                                        \
                    r6 = _mm256_fmadd_ps(wv, x0, r6);                                        \
                    r7 = _mm256_fmadd_ps(wv, x1, r7);                                        \
                }                                                                            \
                __m256 r[8] = {r0, r1, r2, r3, r4, r5, r6, r7};                              \
                for (uint32_t h = 0; h < HG; h++) {                                          \
                    if (te < n) { /* parked until the block's last group */                   \
                        _mm256_storeu_ps(part[h] + 16 * g, r[2 * h]);                        \
                        _mm256_storeu_ps(part[h] + 16 * g + 8, r[2 * h + 1]);                \
                        continue;                                                            \
                    }                                                                        \
                    if (ah[h] == dummy) continue;                                            \
                    float *p = ah[h] + 16 * g;                                               \
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), r[2 * h]));        \
                    _mm256_storeu_ps(p + 8, _mm256_add_ps(_mm256_loadu_ps(p + 8), r[2 * h + 1])); \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_ROW_KERNELS(f32, dec_f32, 128, score_f32, accum_f32, KVQI_MAX_BLOCK_TOKENS, 0)
DEFINE_ROW_KERNELS(f16, dec_f16, 64, score_f16, accum_f16, 16, 1)
DEFINE_ROW_KERNELS(q8_0, dec_q8_0, 34, score_q8_0, accum_q8_0, 16, 1)
DEFINE_ROW_KERNELS(q4_0, dec_q4_0, 18, score_q4_0, accum_q4_0, KVQI_MAX_BLOCK_TOKENS, 0)

/* ------------------------------------------------------- rotated codes */

typedef struct rot_tabs {
    __m256 lo[KVQI_ROT_MAX_PASSES], hi[KVQI_ROT_MAX_PASSES];
    __m256 c0[KVQI_ROT_MAX_PASSES], c1[KVQI_ROT_MAX_PASSES];
} rot_tabs;

static void load_tabs(const kvqi_rot_layout *L, rot_tabs *T) {
    for (uint32_t p = 0; p < L->n_pass; p++) {
        T->lo[p] = _mm256_loadu_ps(KVQI_ROT_CENT(L, p));
        T->hi[p] = _mm256_loadu_ps(KVQI_ROT_CENT(L, p) + 8);
        T->c0[p] = _mm256_set1_ps(KVQI_ROT_CENT(L, p)[0]);
        T->c1[p] = _mm256_set1_ps(KVQI_ROT_CENT(L, p)[1]);
    }
}

static inline __m256 lookup16(__m256 lo, __m256 hi, __m256i idx) {
    __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

static inline __m256 blend_bits(__m256 c0, __m256 c1, uint32_t bits8) {
    __m256i sel = _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1);
    __m256i m = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits8), sel), sel);
    return _mm256_blendv_ps(c0, c1, _mm256_castsi256_ps(m));
}

/* Lanes [16g, 16g+16) of one pass in the kernels' lane order. */
static inline void dec_pass(const kvqi_rot_layout *L, const rot_tabs *T, uint32_t p,
                            const uint8_t *idx, uint32_t g, __m256 *x0, __m256 *x1) {
    switch (L->bits) {
    case 4: {
        const uint8_t *b = idx + 16 * (g / 2);
        int s = (g % 2) * 4;
        __m256i m = _mm256_set1_epi32(15);
        __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b));
        __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 8)));
        *x0 = lookup16(T->lo[p], T->hi[p], _mm256_and_si256(_mm256_srli_epi32(v0, s), m));
        *x1 = lookup16(T->lo[p], T->hi[p], _mm256_and_si256(_mm256_srli_epi32(v1, s), m));
        break;
    }
    case 2: {
        const uint8_t *b = idx + 16 * (g / 4);
        int s = (g % 4) * 2;
        __m256i m = _mm256_set1_epi32(3);
        __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b));
        __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 8)));
        *x0 = _mm256_permutevar8x32_ps(T->lo[p], _mm256_and_si256(_mm256_srli_epi32(v0, s), m));
        *x1 = _mm256_permutevar8x32_ps(T->lo[p], _mm256_and_si256(_mm256_srli_epi32(v1, s), m));
        break;
    }
    case 3: {
        /* 16 indices in 6 bytes, natural order: each lane shifts its 3 bits out */
        uint32_t a, b;
        memcpy(&a, idx + 6 * g, 4);
        memcpy(&b, idx + 6 * g + 2, 4);
        const __m256i sh = _mm256_set_epi32(21, 18, 15, 12, 9, 6, 3, 0);
        const __m256i m7 = _mm256_set1_epi32(7);
        __m256i i0 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)(a & 0xffffff)), sh), m7);
        __m256i i1 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)(b >> 8)), sh), m7);
        *x0 = _mm256_permutevar8x32_ps(T->lo[p], i0);
        *x1 = _mm256_permutevar8x32_ps(T->lo[p], i1);
        break;
    }
    case 1:
        *x0 = blend_bits(T->c0[p], T->c1[p], idx[2 * g]);
        *x1 = blend_bits(T->c0[p], T->c1[p], idx[2 * g + 1]);
        break;
    default: {
        __m256i i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + 16 * g)));
        __m256i i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + 16 * g + 8)));
        *x0 = _mm256_i32gather_ps(KVQI_ROT_CENT(L, p), i0, 4);
        *x1 = _mm256_i32gather_ps(KVQI_ROT_CENT(L, p), i1, 4);
        break;
    }
    }
}

static inline void dec_rot(const kvqi_rot_layout *L, const rot_tabs *T, const uint8_t *code,
                           const float *sp, uint32_t g, __m256 *x0, __m256 *x1) {
    dec_pass(L, T, 0, code + L->index_offset[0], g, x0, x1);
    for (uint32_t p = 1; p < L->n_pass; p++) {
        __m256 y0, y1, s = _mm256_set1_ps(sp[p]);
        dec_pass(L, T, p, code + L->index_offset[p], g, &y0, &y1);
        *x0 = _mm256_fmadd_ps(s, y0, *x0);
        *x1 = _mm256_fmadd_ps(s, y1, *x1);
    }
}

static inline void pass_scales(const kvqi_rot_layout *L, const uint8_t *code, float *sp) {
    for (uint32_t p = 1; p < L->n_pass; p++) sp[p] = fp16_scalar(code + L->scale_offset[p]);
}

static void score_rot(const kvqi_rot_layout *L, const float *q, uint32_t G, const uint8_t *k,
                      size_t n, float *scores, size_t ld) {
    uint32_t dim = L->dim;
    rot_tabs T;
    load_tabs(L, &T);
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        const float *qh[HG];
        for (uint32_t h = 0; h < HG; h++) qh[h] = q + (size_t)(h0 + h < G ? h0 + h : h0) * dim;
        for (size_t t = 0; t < n; t++) {
            const uint8_t *code = k + t * L->code_size;
            float sp[KVQI_ROT_MAX_PASSES];
            pass_scales(L, code, sp);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (uint32_t g = 0; g < dim / 16; g++) {
                __m256 x0, x1;
                dec_rot(L, &T, code, sp, g, &x0, &x1);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[0] + 16 * g), x0, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[1] + 16 * g), x0, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[2] + 16 * g), x0, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[3] + 16 * g), x0, a3);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[0] + 16 * g + 8), x1, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[1] + 16 * g + 8), x1, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[2] + 16 * g + 8), x1, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[3] + 16 * g + 8), x1, a3);
            }
            float s[4];
            _mm_storeu_ps(s, _mm_mul_ps(hsum4(a0, a1, a2, a3),
                                        _mm_set1_ps(fp16_scalar(code + L->norm_offset))));
            for (uint32_t h = 0; h < HG && h0 + h < G; h++) scores[(h0 + h) * ld + t] = s[h];
        }
    }
}

static void accum_rot(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                      const uint8_t *v, size_t n, float *acc) {
    uint32_t dim = L->dim;
    rot_tabs T;
    load_tabs(L, &T);
    float zero_w[KVQI_MAX_BLOCK_TOKENS], dummy[16], norms[KVQI_MAX_BLOCK_TOKENS];
    if (G % HG) memset(zero_w, 0, sizeof zero_w);
    for (size_t t = 0; t < n; t++) norms[t] = fp16_scalar(v + t * L->code_size + L->norm_offset);
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        float wn[HG][KVQI_MAX_BLOCK_TOKENS];
        float *ah[HG];
        for (uint32_t h = 0; h < HG; h++) {
            int ok = h0 + h < G;
            ah[h] = ok ? acc + (size_t)(h0 + h) * dim : dummy;
            const float *wr = ok ? w + (h0 + h) * ld : zero_w;
            for (size_t t = 0; t < n; t++) wn[h][t] = wr[t] * norms[t];
        }
        for (uint32_t g = 0; g < dim / 16; g++) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_setzero_ps();
            for (size_t t = 0; t < n; t++) {
                const uint8_t *code = v + t * L->code_size;
                float sp[KVQI_ROT_MAX_PASSES];
                __m256 x0, x1;
                pass_scales(L, code, sp);
                dec_rot(L, &T, code, sp, g, &x0, &x1);
                for (int h = 0; h < HG; h++) {
                    __m256 wv = _mm256_broadcast_ss(&wn[h][t]);
                    r[2 * h] = _mm256_fmadd_ps(wv, x0, r[2 * h]);
                    r[2 * h + 1] = _mm256_fmadd_ps(wv, x1, r[2 * h + 1]);
                }
            }
            for (uint32_t h = 0; h < HG; h++) {
                if (ah[h] == dummy) continue;
                float *p = ah[h] + 16 * g;
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), r[2 * h]));
                _mm256_storeu_ps(p + 8, _mm256_add_ps(_mm256_loadu_ps(p + 8), r[2 * h + 1]));
            }
        }
    }
}

/* ------------------------------------------- integer paths (vpmaddwd, exact sums) */

#define I16_INLINE static inline __attribute__((always_inline))

/* 32 centroid bytes (cent_u8 through a 16-entry pshufb table) of byte positions
 * 32 j .. 32 j + 31 of block b in the kvqi_rot_i8_coordinate order. 4 bits: the low
 * nibbles of the block's 64 bytes, then the high ones; 2 bits: its 32 bytes shifted by 0,
 * 4, 2, 6; 3 bits: coordinates 32 j .. 32 j + 31 from bytes 12 j .. 12 j + 11. */
I16_INLINE __m256i cent_bytes(const unsigned BITS, const uint8_t *idx, uint32_t b, uint32_t j, __m256i tab) {
    if (BITS == 3) {
        /* natural order, 12 bytes: 16 loaded (the last 32 of a block's 48 from 4 bytes
         * earlier) into both lanes; each 16-bit lane takes the byte of its index's first
         * bit (and the next where the index straddles two), vpmullw by 2^(8 - s) and a
         * shift by 8 move bits s..s+2 to the bottom; lanes hold positions 0-7 | 16-23 (w0)
         * and 8-15 | 24-31 (w1), so vpackuswb gives 0..31 in order */
        const uint32_t back = j == 3 ? 4 : 0;
        __m256i src = _mm256_broadcastsi128_si256(
            _mm_loadu_si128((const __m128i *)(const void *)(idx + 48 * (size_t)b + 12 * j - back)));
        __m256i k0 = _mm256_setr_epi8(0, -128, 0, -128, 0, 1, 1, -128, 1, -128, 1, 2, 2, -128, 2, -128, 6, -128, 6,
                                      -128, 6, 7, 7, -128, 7, -128, 7, 8, 8, -128, 8, -128);
        __m256i k1 = _mm256_setr_epi8(3, -128, 3, -128, 3, 4, 4, -128, 4, -128, 4, 5, 5, -128, 5, -128, 9, -128, 9,
                                      -128, 9, 10, 10, -128, 10, -128, 10, 11, 11, -128, 11, -128);
        if (back) { /* the high bit of the empty entries stays set */
            k0 = _mm256_add_epi8(k0, _mm256_set1_epi8((char)back));
            k1 = _mm256_add_epi8(k1, _mm256_set1_epi8((char)back));
        }
        const __m256i mul = _mm256_setr_epi16(256, 32, 4, 128, 16, 2, 64, 8, 256, 32, 4, 128, 16, 2, 64, 8);
        __m256i w0 = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(src, k0), mul), 8);
        __m256i w1 = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(src, k1), mul), 8);
        return _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_packus_epi16(w0, w1), _mm256_set1_epi8(7)));
    }
    if (BITS == 4) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(idx + 64 * (size_t)b + 32 * (j % 2)));
        if (j / 2) x = _mm256_srli_epi16(x, 4);
        return _mm256_shuffle_epi8(tab, _mm256_and_si256(x, _mm256_set1_epi8(15)));
    }
    static const uint8_t sh2[4] = {0, 4, 2, 6};
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(idx + 32 * (size_t)b));
    x = _mm256_srl_epi16(x, _mm_cvtsi32_si128(sh2[j]));
    return _mm256_shuffle_epi8(tab, _mm256_and_si256(x, _mm256_set1_epi8(3)));
}

/* Integer key scores, gh (1..4) heads of one group: the int8 query widened once to int16
 * in the words' order of the centroid bytes' zero extension (vpunpck{l,h}bw within lanes),
 * then per token and 32 positions two vpmaddwd and two vpaddd per head; the exact sums
 * of the reference, then its float steps. */
#define I8_MAX_DIM 1024u
I16_INLINE void score_i8_heads(const unsigned BITS, const unsigned gh, const kvqi_rot_layout *L, const int8_t *q8,
                               const float *qscale, const int32_t *qsum, const uint8_t *k, size_t n, float *scores,
                               size_t ld) {
    uint32_t dim = L->dim, nblk = dim / 128;
    size_t cs = L->code_size;
    int16_t q16[4][I8_MAX_DIM];
    const __m256i z = _mm256_setzero_si256();
    for (unsigned h = 0; h < gh; h++)
        for (uint32_t j = 0; j < dim; j += 32) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(q8 + (size_t)h * dim + j));
            __m256i sg = _mm256_cmpgt_epi8(z, q);
            _mm256_storeu_si256((__m256i *)(void *)(q16[h] + j), _mm256_unpacklo_epi8(q, sg));
            _mm256_storeu_si256((__m256i *)(void *)(q16[h] + j + 16), _mm256_unpackhi_epi8(q, sg));
        }
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)L->cent_u8));
    float scl[4] = {0};
    int32_t qsi[4] = {0};
    for (unsigned h = 0; h < gh; h++) scl[h] = qscale[h], qsi[h] = qsum[h];
    const __m128i vqsum = _mm_loadu_si128((const __m128i *)(const void *)qsi);
    const __m128 vscale = _mm_loadu_ps(scl);
    const uint8_t *idx0 = k + L->index_offset[0];
    float out[KVQI_MAX_BLOCK_TOKENS][4];
    for (size_t t = 0; t < n; t++) {
        const uint8_t *idx = idx0 + t * cs;
        _mm_prefetch((const char *)(k + (n + t) * cs), _MM_HINT_T0);
        _mm_prefetch((const char *)(k + (n + t) * cs + cs - 1), _MM_HINT_T0);
        __m256i a0 = z, a1 = z, a2 = z, a3 = z;
        for (uint32_t b = 0; b < nblk; b++)
            for (uint32_t j = 0; j < 4; j++) {
                __m256i c = cent_bytes(BITS, idx, b, j, tab);
                __m256i cl = _mm256_unpacklo_epi8(c, z), ch = _mm256_unpackhi_epi8(c, z);
                size_t o = 128 * (size_t)b + 32 * j;
#define I8_HEAD(h, a)                                                                                     \
    if (gh > h)                                                                                           \
        a = KVQI_DP16(KVQI_DP16(a, cl, _mm256_loadu_si256((const __m256i *)(const void *)(q16[h] + o))), ch, \
                      _mm256_loadu_si256((const __m256i *)(const void *)(q16[h] + o + 16)));
                I8_HEAD(0, a0) I8_HEAD(1, a1) I8_HEAD(2, a2) I8_HEAD(3, a3)
#undef I8_HEAD
            }
        /* lane h: head h's sum */
        __m256i s01 = _mm256_hadd_epi32(a0, a1), s23 = _mm256_hadd_epi32(a2, a3);
        __m256i s = _mm256_hadd_epi32(s01, s23);
        __m128i r = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        __m128 f = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(_mm_sub_epi32(r, vqsum)), vscale),
                              _mm_set1_ps(fp16_scalar(k + t * cs + L->norm_offset)));
        _mm_storeu_ps(out[t], f);
    }
    /* [token][head] to the heads' rows, eight tokens at a time: a 4 x 4 transpose in each
     * 128-bit lane of tokens t and t + 4 */
    size_t t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 r0 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(out[t])), _mm_loadu_ps(out[t + 4]), 1);
        __m256 r1 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(out[t + 1])), _mm_loadu_ps(out[t + 5]), 1);
        __m256 r2 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(out[t + 2])), _mm_loadu_ps(out[t + 6]), 1);
        __m256 r3 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(out[t + 3])), _mm_loadu_ps(out[t + 7]), 1);
        __m256 u0 = _mm256_unpacklo_ps(r0, r1), u1 = _mm256_unpackhi_ps(r0, r1);
        __m256 u2 = _mm256_unpacklo_ps(r2, r3), u3 = _mm256_unpackhi_ps(r2, r3);
        _mm256_storeu_ps(scores + t, _mm256_shuffle_ps(u0, u2, 0x44));
        if (gh > 1) _mm256_storeu_ps(scores + ld + t, _mm256_shuffle_ps(u0, u2, 0xee));
        if (gh > 2) _mm256_storeu_ps(scores + 2 * ld + t, _mm256_shuffle_ps(u1, u3, 0x44));
        if (gh > 3) _mm256_storeu_ps(scores + 3 * ld + t, _mm256_shuffle_ps(u1, u3, 0xee));
    }
    for (; t < n; t++)
        for (unsigned h = 0; h < gh; h++) scores[h * ld + t] = out[t][h];
}

#define SCORE_I8(BITS, GH)                                                                                \
    static void score_i8_##BITS##_##GH(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,   \
                                       const int32_t *qsum, const uint8_t *k, size_t n, float *scores,   \
                                       size_t ld) {                                                      \
        score_i8_heads(BITS, GH, L, q8, qscale, qsum, k, n, scores, ld);                                  \
    }
SCORE_I8(2, 1) SCORE_I8(2, 2) SCORE_I8(2, 3) SCORE_I8(2, 4)
SCORE_I8(3, 1) SCORE_I8(3, 2) SCORE_I8(3, 3) SCORE_I8(3, 4)
SCORE_I8(4, 1) SCORE_I8(4, 2) SCORE_I8(4, 3) SCORE_I8(4, 4)
typedef void (*score_i8_fn)(const kvqi_rot_layout *, const int8_t *, const float *, const int32_t *, const uint8_t *,
                            size_t, float *, size_t);
static const score_i8_fn score_i8_table[3][4] = {
    {score_i8_2_1, score_i8_2_2, score_i8_2_3, score_i8_2_4},
    {score_i8_3_1, score_i8_3_2, score_i8_3_3, score_i8_3_4},
    {score_i8_4_1, score_i8_4_2, score_i8_4_3, score_i8_4_4},
};

static void score_rot_i8(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale, const int32_t *qsum,
                         uint32_t G, const uint8_t *k, size_t n, float *scores, size_t ld) {
    if (L->bits < 2 || L->bits > 4 || L->dim % 128 || L->dim > I8_MAX_DIM) {
        kvqi_cache_score_rot_i8_ref(L, q8, qscale, qsum, G, k, n, scores, ld);
        return;
    }
    /* up to KVQI_MAX_BLOCK_TOKENS tokens a call of the kernel (its staging) */
    for (size_t t0 = 0; t0 < n; t0 += KVQI_MAX_BLOCK_TOKENS) {
        size_t nt = n - t0 < KVQI_MAX_BLOCK_TOKENS ? n - t0 : KVQI_MAX_BLOCK_TOKENS;
        for (uint32_t h0 = 0; h0 < G; h0 += 4) {
            uint32_t gh = G - h0 < 4 ? G - h0 : 4;
            score_i8_table[L->bits - 2][gh - 1](L, q8 + (size_t)h0 * L->dim, qscale + h0, qsum + h0,
                                                k + t0 * L->code_size, nt, scores + h0 * ld + t0, ld);
        }
    }
}

/* One head's 16-bit weights as kvqi_cache_rot_weights_i16 computes them (the same
 * products, maximum and rounding), eight tokens per step; wq zero past n (to a multiple
 * of 8). Returns the scale before cent_scale (0: nothing to add). */
static float weights_i16(const float *w, const float *norms, size_t n, int16_t *wq) {
    __m256 wn[KVQI_MAX_BLOCK_TOKENS / 8], mx = _mm256_setzero_ps();
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    size_t nv = (n + 7) / 8;
    for (size_t i = 0; i < nv; i++) {
        __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - 8 * i)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        wn[i] = _mm256_mul_ps(_mm256_maskload_ps(w + 8 * i, live), _mm256_loadu_ps(norms + 8 * i));
        mx = _mm256_max_ps(mx, _mm256_and_ps(wn[i], absmask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    float m = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    if (!(m > 0.0f) || !(m <= 3.0e38f)) return 0.0f;
    __m256 inv = _mm256_set1_ps(32767.0f / m);
    for (size_t i = 0; i < nv; i++) {
        __m256i k = _mm256_cvtps_epi32(_mm256_mul_ps(wn[i], inv));
        __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1));
        _mm_storeu_si128((__m128i *)(void *)(wq + 8 * i), p);
    }
    return m * (1.0f / 32767.0f);
}

/* Integer value sums, gh (1..4) heads of one group: two tokens per step, their centroid
 * bytes (unsigned) interleaved and zero-extended so each int32 lane holds one position of
 * both, one vpmaddwd with the pair of 16-bit weights and one vpaddd per 8 positions and
 * head; 128 * the sum of a head's weights taken off at the end (so the sums are the
 * reference's over cent_u8 - 128). Tiles of 16 positions (8 + 8 of one 32-byte unpacking)
 * keep the gh x 2 accumulators in registers; lanes to the kvqi_rot_v16_coordinate order
 * by one 128-bit permute. */
I16_INLINE void accum_i16_heads(const unsigned BITS, const unsigned gh, const kvqi_rot_layout *L, const float *w,
                                size_t ld, const uint8_t *v, size_t n, float *acc) {
    uint32_t dim = L->dim, nblk = dim / 128;
    size_t cs = L->code_size;
    float norms[KVQI_MAX_BLOCK_TOKENS];
    int16_t wq[4][KVQI_MAX_BLOCK_TOKENS];
    int32_t wp[4][KVQI_MAX_BLOCK_TOKENS / 2];
    float scale[4];
    int32_t corr[4];
    for (size_t t = 0; t < n; t++) {
        norms[t] = fp16_scalar(v + t * cs + L->norm_offset);
        /* the next block's codes (the chunk's next tokens) on their way while this one runs */
        _mm_prefetch((const char *)(v + (n + t) * cs), _MM_HINT_T0);
        _mm_prefetch((const char *)(v + (n + t) * cs + cs - 1), _MM_HINT_T0);
    }
    for (size_t t = n; t < KVQI_MAX_BLOCK_TOKENS; t++) norms[t] = 0.0f;
    int any = 0;
    for (unsigned h = 0; h < gh; h++) {
        memset(wq[h], 0, sizeof wq[h]);
        scale[h] = weights_i16(w + h * ld, norms, n, wq[h]) * L->cent_scale;
        int32_t sw = 0;
        for (size_t t = 0; t < n; t++) sw += wq[h][t];
        corr[h] = 128 * sw;
        any |= scale[h] != 0.0f;
    }
    if (!any) return;
    /* token pairs: t in the low 16 bits, t + 1 in the high (zero past n) */
    memcpy(wp, wq, sizeof wp);
    const __m256i z = _mm256_setzero_si256();
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)L->cent_u8));
    const uint8_t *idx0 = v + L->index_offset[0];
    size_t np = (n + 1) / 2;
    __m256i pairs[KVQI_MAX_BLOCK_TOKENS / 2][8];
    for (uint32_t b = 0; b < nblk; b++) {
        /* the block's centroid bytes of each token pair, interleaved: pairs[t / 2][2 j + u]
         * holds byte positions 32 j + 8 u + {0..7, 16..23} of tokens t and t + 1 */
        for (size_t i = 0; i < np; i++) {
            const uint8_t *ca = idx0 + 2 * i * cs, *cb = 2 * i + 1 < n ? ca + cs : ca;
#pragma GCC unroll 4
            for (uint32_t j = 0; j < 4; j++) {
                __m256i xa = cent_bytes(BITS, ca, b, j, tab), xb = cent_bytes(BITS, cb, b, j, tab);
                pairs[i][2 * j] = _mm256_unpacklo_epi8(xa, xb);
                pairs[i][2 * j + 1] = _mm256_unpackhi_epi8(xa, xb);
            }
        }
        for (uint32_t j = 0; j < 4; j++)     /* byte positions 32 j .. 32 j + 31 of the block */
            for (uint32_t u = 0; u < 2; u++) { /* their bytes 0-7, 16-23 (u = 0) or 8-15, 24-31 */
                __m256i r00 = z, r01 = z, r10 = z, r11 = z, r20 = z, r21 = z, r30 = z, r31 = z;
                for (size_t i = 0; i < np; i++) {
                    __m256i x = pairs[i][2 * j + u];
                    __m256i c0 = _mm256_unpacklo_epi8(x, z), c1 = _mm256_unpackhi_epi8(x, z);
#define I16_HEAD(h, ra, rb)                                                                               \
    if (gh > h) {                                                                                         \
        __m256i wv = _mm256_set1_epi32(wp[h][i]);                                                         \
        ra = KVQI_DP16(ra, c0, wv);                                                                       \
        rb = KVQI_DP16(rb, c1, wv);                                                                       \
    }
                    I16_HEAD(0, r00, r01) I16_HEAD(1, r10, r11) I16_HEAD(2, r20, r21) I16_HEAD(3, r30, r31)
#undef I16_HEAD
                }
                /* r?0: byte positions 8u + {0..3, 16..19}, r?1: 8u + {4..7, 20..23} of the 32;
                 * the half's 16-lane vector m = j % 2 + 2 u (kvqi_rot_v16_coordinate) */
                size_t off = 128 * (size_t)b + 64 * (j / 2) + 16 * (j % 2 + 2 * u);
                __m256i rr[4][2] = {{r00, r01}, {r10, r11}, {r20, r21}, {r30, r31}};
                for (unsigned h = 0; h < gh; h++) {
                    if (scale[h] == 0.0f) continue;
                    __m256 sc = _mm256_set1_ps(scale[h]);
                    __m256i cv = _mm256_set1_epi32(corr[h]);
                    __m256i s0 = _mm256_sub_epi32(rr[h][0], cv), s1 = _mm256_sub_epi32(rr[h][1], cv);
                    float *p = acc + (size_t)h * dim + off;
                    __m256 lo = _mm256_cvtepi32_ps(_mm256_permute2x128_si256(s0, s1, 0x20));
                    __m256 hi = _mm256_cvtepi32_ps(_mm256_permute2x128_si256(s0, s1, 0x31));
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(lo, sc)));
                    _mm256_storeu_ps(p + 8, _mm256_add_ps(_mm256_loadu_ps(p + 8), _mm256_mul_ps(hi, sc)));
                }
            }
    }
}

#define ACCUM_I16(BITS, GH)                                                                               \
    static void accum_i16_##BITS##_##GH(const kvqi_rot_layout *L, const float *w, size_t ld, const uint8_t *v, \
                                        size_t n, float *acc) {                                          \
        accum_i16_heads(BITS, GH, L, w, ld, v, n, acc);                                                   \
    }
ACCUM_I16(2, 1) ACCUM_I16(2, 2) ACCUM_I16(2, 3) ACCUM_I16(2, 4)
ACCUM_I16(3, 1) ACCUM_I16(3, 2) ACCUM_I16(3, 3) ACCUM_I16(3, 4)
ACCUM_I16(4, 1) ACCUM_I16(4, 2) ACCUM_I16(4, 3) ACCUM_I16(4, 4)
typedef void (*accum_i16_fn)(const kvqi_rot_layout *, const float *, size_t, const uint8_t *, size_t, float *);
static const accum_i16_fn accum_i16_table[3][4] = {
    {accum_i16_2_1, accum_i16_2_2, accum_i16_2_3, accum_i16_2_4},
    {accum_i16_3_1, accum_i16_3_2, accum_i16_3_3, accum_i16_3_4},
    {accum_i16_4_1, accum_i16_4_2, accum_i16_4_3, accum_i16_4_4},
};

static void accum_rot_i16(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G, const uint8_t *v,
                          size_t n, float *acc) {
    if (L->bits < 2 || L->bits > 4 || L->dim % 128 || n > KVQI_MAX_BLOCK_TOKENS) {
        kvqi_cache_accum_rot_i16_ref(L, w, ld, G, v, n, acc);
        return;
    }
    for (uint32_t h0 = 0; h0 < G; h0 += 4) {
        uint32_t gh = G - h0 < 4 ? G - h0 : 4;
        accum_i16_table[L->bits - 2][gh - 1](L, w + h0 * ld, ld, v, n, acc + (size_t)h0 * L->dim);
    }
}

/* q4_0 values in integers (kvqi_cache_accum_q4_0_i16_ref): per block of 32 coordinates,
 * each head's weights times the tokens' block scales rounded to 16 bits (weights_i16);
 * two tokens per step, their 16 code bytes interleaved and widened to 16 bits so each
 * 32-bit lane holds one coordinate of both, and one vpmaddwd and one vpaddd add both
 * weighted nibbles (four vectors of 8 coordinates: 0-7, 8-15 low nibbles, 16-23, 24-31
 * high ones); two heads per pass; the -8 offset once per block, as -8 times the rounded
 * weights' sum. */
static void accum_q4_0_i16(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                           size_t stride, size_t n, float *acc) {
    if (dim % 32 || n > KVQI_MAX_BLOCK_TOKENS) {
        kvqi_cache_accum_q4_0_i16_ref(w, ld, G, dim, v, stride, n, acc);
        return;
    }
    float dsc[KVQI_MAX_BLOCK_TOKENS + 8];
    int16_t wq[2][KVQI_MAX_BLOCK_TOKENS + 16];
    int32_t wp[2][KVQI_MAX_BLOCK_TOKENS / 2 + 8];
    _Static_assert(sizeof wp == sizeof wq, "token pairs alias the weights");
    const __m256i m15 = _mm256_set1_epi16(15), m8 = _mm256_set1_epi16(-8);
    for (uint32_t b = 0; b < dim / 32; b++) {
        const uint8_t *blk = v + 18 * (size_t)b;
        for (size_t t = 0; t < n; t++) dsc[t] = fp16_scalar(blk + t * stride);
        for (size_t t = n; t < n + 8; t++) dsc[t] = 0.0f;
        for (uint32_t h0 = 0; h0 < G; h0 += 2) {
            float scale[2];
            int32_t corr[2];
            for (uint32_t h = 0; h < 2; h++) {
                memset(wq[h], 0, sizeof wq[h]);
                scale[h] = h0 + h < G ? weights_i16(w + (h0 + h) * ld, dsc, n, wq[h]) : 0.0f;
                __m256i s4 = _mm256_setzero_si256();
                for (int i = 0; i < 4; i++)
                    s4 = _mm256_add_epi32(s4, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(wq[h] + 16 * i)), m8));
                __m128i s2 = _mm_add_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
                s2 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, _MM_SHUFFLE(1, 0, 3, 2)));
                s2 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, _MM_SHUFFLE(2, 3, 0, 1)));
                corr[h] = _mm_cvtsi128_si32(s2);
            }
            if (scale[0] == 0.0f && scale[1] == 0.0f) continue;
            /* token pairs: t in the low 16 bits, t + 1 in the high (zero past n) */
            memcpy(wp, wq, sizeof wp);
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            __m256i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (size_t t = 0; t < n; t += 2) {
                const uint8_t *ra = blk + t * stride + 2, *rb = t + 1 < n ? ra + stride : ra;
                __m128i x = _mm_loadu_si128((const __m128i *)ra), y = _mm_loadu_si128((const __m128i *)rb);
                __m256i e0 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x, y));
                __m256i e1 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(x, y));
                __m256i k0 = _mm256_and_si256(e0, m15), k1 = _mm256_and_si256(e1, m15);
                __m256i k2 = _mm256_srli_epi16(e0, 4), k3 = _mm256_srli_epi16(e1, 4);
                __m256i w0 = _mm256_set1_epi32(wp[0][t / 2]), w1 = _mm256_set1_epi32(wp[1][t / 2]);
                a0 = KVQI_DP16(a0, k0, w0);
                a1 = KVQI_DP16(a1, k1, w0);
                a2 = KVQI_DP16(a2, k2, w0);
                a3 = KVQI_DP16(a3, k3, w0);
                b0 = KVQI_DP16(b0, k0, w1);
                b1 = KVQI_DP16(b1, k1, w1);
                b2 = KVQI_DP16(b2, k2, w1);
                b3 = KVQI_DP16(b3, k3, w1);
            }
#define Q4V_OUT(H, R0, R1, R2, R3)                                                           \
    do {                                                                                     \
        if (h0 + (H) < G && scale[H] != 0.0f) {                                              \
            __m256i cv = _mm256_set1_epi32(corr[H]);                                         \
            __m256 sc = _mm256_set1_ps(scale[H]);                                            \
            float *p = acc + (size_t)(h0 + (H)) * dim + 32 * b;                              \
            __m256i r_[4] = {R0, R1, R2, R3};                                                \
            for (int m = 0; m < 4; m++)                                                      \
                _mm256_storeu_ps(p + 8 * m, _mm256_add_ps(_mm256_loadu_ps(p + 8 * m),         \
                                                          _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(r_[m], cv)), sc))); \
        }                                                                                    \
    } while (0)
            Q4V_OUT(0, a0, a1, a2, a3);
            Q4V_OUT(1, b0, b1, b2, b3);
#undef Q4V_OUT
        }
    }
}

/* outlier channels: sixteen (eight) tokens of one channel per conversion */
static void outlier_add(const uint16_t *vals, size_t stride, const float *q_out, uint32_t G,
                        uint32_t n_out, size_t n, float *scores, size_t ld) {
    size_t nv = n - n % 8;
    for (uint32_t o = 0; o < n_out; o++) {
        const uint16_t *v = vals + o * stride;
        for (size_t t = 0; t < nv; t += 8) {
            __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + t)));
            for (uint32_t h = 0; h < G; h++) {
                float *s = scores + h * ld + t;
                _mm256_storeu_ps(s, _mm256_fmadd_ps(_mm256_set1_ps(q_out[(size_t)h * n_out + o]), x,
                                                  _mm256_loadu_ps(s)));
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
    if (dim % 8) {
        kvqi_cache_kernels_scalar.axpy_rows(M, x, rows, dim, y);
        return;
    }
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        __m256 x0 = _mm256_set1_ps(x[r]), x1 = _mm256_set1_ps(x[r + 1]);
        __m256 x2 = _mm256_set1_ps(x[r + 2]), x3 = _mm256_set1_ps(x[r + 3]);
        const float *m0 = M + (size_t)r * dim;
        for (uint32_t j = 0; j < dim; j += 8) {
            __m256 a = _mm256_loadu_ps(y + j);
            a = _mm256_fmadd_ps(x0, _mm256_loadu_ps(m0 + j), a);
            a = _mm256_fmadd_ps(x1, _mm256_loadu_ps(m0 + dim + j), a);
            a = _mm256_fmadd_ps(x2, _mm256_loadu_ps(m0 + 2 * dim + j), a);
            a = _mm256_fmadd_ps(x3, _mm256_loadu_ps(m0 + 3 * dim + j), a);
            _mm256_storeu_ps(y + j, a);
        }
    }
    for (; r < rows; r++) {
        __m256 xr = _mm256_set1_ps(x[r]);
        const float *m0 = M + (size_t)r * dim;
        for (uint32_t j = 0; j < dim; j += 8)
            _mm256_storeu_ps(y + j, _mm256_fmadd_ps(xr, _mm256_loadu_ps(m0 + j), _mm256_loadu_ps(y + j)));
    }
}

/* ------------------------------------------------ softmax (kvqi_exp_neg8: exp_neg.h) */

static float max_of(const float *s, size_t n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    size_t t = 0;
    for (; t + 8 <= n; t += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + t));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float r = _mm_cvtss_f32(h);
    for (; t < n; t++) r = s[t] > r ? s[t] : r;
    return r;
}

static float exp_sum(float *s, size_t n, float m) {
    __m256 mv = _mm256_set1_ps(m), sum = _mm256_setzero_ps();
    size_t t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 e = kvqi_exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
        _mm256_storeu_ps(s + t, e);
        sum = _mm256_add_ps(sum, e);
    }
    /* the tail through the same lanes, padded with -inf (weight 0): a row's weights and
     * sum do not depend on where n ends, so grouping queries cannot change results */
    if (t < n) {
        float pad[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                        -INFINITY, -INFINITY, -INFINITY, -INFINITY}, e8[8];
        memcpy(pad, s + t, (n - t) * sizeof(float));
        __m256 e = kvqi_exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(pad), mv));
        _mm256_storeu_ps(e8, e);
        memcpy(s + t, e8, (n - t) * sizeof(float));
        sum = _mm256_add_ps(sum, e);
    }
    return hsum(sum);
}

/* ------------------------------------------------------------ sign codes */

/* 8 codes per step, one per lane: sign bytes transposed to byte-major (tb[j][lane]) so
 * each table lookup is one gather; lanes past n read byte 0 and are not stored. Same sums
 * in the same order as the scalar reference. */
static void score_signs(const kvqi_sign_layout *L, const float *lut, const float *zsum, uint32_t G,
                        const uint8_t *k, size_t n, int accumulate, float *scores, size_t ld) {
    uint32_t nb = L->m / 8;
    uint8_t tb[KVQI_SIGN_MAX_M / 8][16];
    float fb[8], out[8];
    const __m256 two = _mm256_set1_ps(2.0f);
    for (size_t t0 = 0; t0 < n; t0 += 8) {
        uint32_t cnt = (uint32_t)(n - t0 < 8 ? n - t0 : 8);
        for (uint32_t i = 0; i < 8; i++) {
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
        __m256 f = _mm256_loadu_ps(fb);
        for (uint32_t h = 0; h < G; h++) {
            const float *lh = lut + (size_t)h * nb * 256;
            __m256 acc = _mm256_setzero_ps();
            for (uint32_t j = 0; j < nb; j++) {
                __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)tb[j]));
                acc = _mm256_add_ps(acc, _mm256_i32gather_ps(lh + (size_t)j * 256, idx, 4));
            }
            __m256 v = _mm256_mul_ps(f, _mm256_sub_ps(_mm256_mul_ps(two, acc), _mm256_set1_ps(zsum[h])));
            float *dst = scores + h * ld + t0;
            _mm256_storeu_ps(out, v);
            for (uint32_t i = 0; i < cnt; i++) dst[i] = accumulate ? dst[i] + out[i] : out[i];
        }
    }
}

/* q4_0 keys against the int8 query (kvqi_cache_score_q4_0_i8_ref): per block one ymm of
 * 32 signed key bytes (the nibbles minus 8, low ones then high ones), the products by
 * vpmaddubsw on |k| and the query bytes carrying k's sign (|k| <= 128, so the pair sums
 * stay within int16), vpmaddwd by ones for int32 sums of four products; pairs of blocks
 * folded by unpacks and adds to the four blocks' exact sums, one conversion and
 * multiply-add by the four scales (in registers: a vector loaded over four scalar stores
 * stalls). Four heads per pass, one decoding of each block. */
static inline __m256i qblk_bytes(const uint8_t *blk) {
    __m128i v = _mm_loadu_si128((const __m128i *)(blk + 2)), m = _mm_set1_epi8(15);
    __m256i x = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(v, m)),
                                        _mm_and_si128(_mm_srli_epi16(v, 4), m), 1);
    return _mm256_sub_epi8(x, _mm256_set1_epi8(8));
}

/* int32 sums of four products of one block against 32 query bytes */
static inline __m256i q4k_dot(__m256i kb, __m256i ak, const int8_t *q) {
    return KVQI_DOT4_U8S8(ak, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q), kb));
}

/* Two blocks' int32 lane sums folded to four lanes per 128 bits: [a0 + a2, b0 + b2, a1 + a3,
 * b1 + b3] (exact). */
static inline __m256i q4k_pair(__m256i a, __m256i b) {
    return _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
}

/* Blocks (a, b) and (c, d) so paired to their exact sums [P_a, P_b, P_c, P_d]. */
static inline __m128i q4k_sums(__m256i ab, __m256i cd) {
    __m256i z = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
    return _mm_add_epi32(_mm256_castsi256_si128(z), _mm256_extracti128_si256(z, 1));
}

static inline float q4k_fold(__m128 f) {
    __m128 r = _mm_add_ps(f, _mm_movehl_ps(f, f));
    return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}

static void score_q4_0_i8(const int8_t *q8, const float *qscale, uint32_t G, uint32_t dim,
                          const uint8_t *k, size_t stride, size_t n, float *scores, size_t ld) {
    if (dim % 64) {
        kvqi_cache_score_q4_0_i8_ref(q8, qscale, G, dim, k, stride, n, scores, ld);
        return;
    }
    uint32_t nb = dim / 32;
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        uint32_t hh[HG];
        for (uint32_t h = 0; h < HG; h++) hh[h] = h0 + h < G ? h0 + h : h0;
        const int8_t *q0 = q8 + (size_t)hh[0] * dim, *q1 = q8 + (size_t)hh[1] * dim;
        const int8_t *q2 = q8 + (size_t)hh[2] * dim, *q3 = q8 + (size_t)hh[3] * dim;
        for (size_t t = 0; t < n; t++) {
            const uint8_t *row = k + t * stride;
            __m128 f0 = _mm_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
            for (uint32_t b = 0; b < nb; b += 4) {
                /* blocks b..b+3 (the last two absent: zero when nb % 4 == 2), four heads,
                 * each pair of blocks folded as soon as it is summed */
                const uint8_t *pa = row + 18 * (size_t)b;
                uint16_t ha, hb, hc = 0, hd = 0;
                memcpy(&ha, pa, 2), memcpy(&hb, pa + 18, 2);
                __m256i ka = qblk_bytes(pa), aa = _mm256_abs_epi8(ka);
                __m256i kb = qblk_bytes(pa + 18), ab = _mm256_abs_epi8(kb);
                size_t o = 32 * (size_t)b;
                __m256i x0 = q4k_pair(q4k_dot(ka, aa, q0 + o), q4k_dot(kb, ab, q0 + o + 32));
                __m256i x1 = q4k_pair(q4k_dot(ka, aa, q1 + o), q4k_dot(kb, ab, q1 + o + 32));
                __m256i x2 = q4k_pair(q4k_dot(ka, aa, q2 + o), q4k_dot(kb, ab, q2 + o + 32));
                __m256i x3 = q4k_pair(q4k_dot(ka, aa, q3 + o), q4k_dot(kb, ab, q3 + o + 32));
                __m256i y0 = _mm256_setzero_si256(), y1 = y0, y2 = y0, y3 = y0;
                if (b + 4 <= nb) {
                    memcpy(&hc, pa + 36, 2), memcpy(&hd, pa + 54, 2);
                    ka = qblk_bytes(pa + 36), aa = _mm256_abs_epi8(ka);
                    kb = qblk_bytes(pa + 54), ab = _mm256_abs_epi8(kb);
                    y0 = q4k_pair(q4k_dot(ka, aa, q0 + o + 64), q4k_dot(kb, ab, q0 + o + 96));
                    y1 = q4k_pair(q4k_dot(ka, aa, q1 + o + 64), q4k_dot(kb, ab, q1 + o + 96));
                    y2 = q4k_pair(q4k_dot(ka, aa, q2 + o + 64), q4k_dot(kb, ab, q2 + o + 96));
                    y3 = q4k_pair(q4k_dot(ka, aa, q3 + o + 64), q4k_dot(kb, ab, q3 + o + 96));
                }
                __m128 d = _mm_cvtph_ps(_mm_setr_epi16((short)ha, (short)hb, (short)hc, (short)hd, 0, 0, 0, 0));
                f0 = _mm_fmadd_ps(_mm_cvtepi32_ps(q4k_sums(x0, y0)), d, f0);
                f1 = _mm_fmadd_ps(_mm_cvtepi32_ps(q4k_sums(x1, y1)), d, f1);
                f2 = _mm_fmadd_ps(_mm_cvtepi32_ps(q4k_sums(x2, y2)), d, f2);
                f3 = _mm_fmadd_ps(_mm_cvtepi32_ps(q4k_sums(x3, y3)), d, f3);
            }
            scores[h0 * ld + t] = q4k_fold(f0) * qscale[hh[0]];
            if (h0 + 1 < G) scores[(h0 + 1) * ld + t] = q4k_fold(f1) * qscale[hh[1]];
            if (h0 + 2 < G) scores[(h0 + 2) * ld + t] = q4k_fold(f2) * qscale[hh[2]];
            if (h0 + 3 < G) scores[(h0 + 3) * ld + t] = q4k_fold(f3) * qscale[hh[3]];
        }
    }
}

/* q8_0 keys against the int16 query (kvqi_cache_score_q8_0_i16_ref): per block two ymm
 * of 16-bit words, coordinates 0..15 and 16..31 (bytes sign-extended), vpmaddwd against
 * the query's words and one vpaddd: lane j holds the exact sum of coordinates 2j, 2j + 1,
 * 16 + 2j, 17 + 2j; lanes 0-7 of the reference are a pair's first block (l), 8-15 its
 * second (u). */
static void score_q8_0_i16(const int16_t *q16, const float *qscale, uint32_t G, uint32_t dim,
                           const uint8_t *k, size_t stride, size_t n, float *scores, size_t ld) {
    if (dim % 64 || dim > KVQI_QBLK_I8_MAX_DIM) {
        kvqi_cache_score_q8_0_i16_ref(q16, qscale, G, dim, k, stride, n, scores, ld);
        return;
    }
    const size_t bs = 34;
    for (uint32_t h0 = 0; h0 < G; h0 += HG) {
        uint32_t hh[HG];
        for (uint32_t h = 0; h < HG; h++) hh[h] = h0 + h < G ? h0 + h : h0;
        const int16_t *q0 = q16 + (size_t)hh[0] * dim, *q1 = q16 + (size_t)hh[1] * dim;
        const int16_t *q2 = q16 + (size_t)hh[2] * dim, *q3 = q16 + (size_t)hh[3] * dim;
        const __m128 vqs = _mm_set_ps(qscale[hh[3]], qscale[hh[2]], qscale[hh[1]], qscale[hh[0]]);
        for (size_t t = 0; t < n; t++) {
            const uint8_t *row = k + t * stride;
            prefetch_row(row + KEY_AHEAD * stride, dim / 32 * bs);
            __m256 l0 = _mm256_setzero_ps(), l1 = l0, l2 = l0, l3 = l0;
            __m256 u0 = l0, u1 = l0, u2 = l0, u3 = l0;
            for (uint32_t b = 0; b < dim / 32; b += 2) {
#define QBLK16_BLOCK(B, A0, A1, A2, A3)                                                      \
    do {                                                                                     \
        const uint8_t *blk = row + bs * (B);                                                 \
        __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 2)));      \
        __m256i x2 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 18)));     \
        __m256 d = _mm256_set1_ps(fp16_scalar(blk));                                         \
        size_t o = 32 * (size_t)(B);                                                         \
        A0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(QBLK16_SUM(0, q0)), d, A0);                 \
        A1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(QBLK16_SUM(1, q1)), d, A1);                 \
        A2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(QBLK16_SUM(2, q2)), d, A2);                 \
        A3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(QBLK16_SUM(3, q3)), d, A3);                 \
    } while (0)
#define QBLK16_SUM(H, QH)                                                                    \
    KVQI_DP16(_mm256_madd_epi16(x1, _mm256_loadu_si256((const __m256i *)(QH + o))), x2,                 \
              _mm256_loadu_si256((const __m256i *)(QH + o + 16)))
                QBLK16_BLOCK(b, l0, l1, l2, l3);
                QBLK16_BLOCK(b + 1, u0, u1, u2, u3);
#undef QBLK16_SUM
#undef QBLK16_BLOCK
            }
            float s[4];
            _mm_storeu_ps(s, _mm_mul_ps(hsum4(_mm256_add_ps(l0, u0), _mm256_add_ps(l1, u1),
                                              _mm256_add_ps(l2, u2), _mm256_add_ps(l3, u3)),
                                        vqs));
            for (uint32_t h = 0; h < HG && h0 + h < G; h++) scores[(h0 + h) * ld + t] = s[h];
        }
    }
}

void kvqi_cache_kernels_fill_avx2(kvqi_cache_kernels *k) {
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
    k->outlier_add = outlier_add;
    k->axpy_rows = axpy_rows;
    k->exp_sum = exp_sum;
    k->max_of = max_of;
    k->score_signs = score_signs;
    k->score_rot_i8 = score_rot_i8;
    k->rot_i8_bits = 1u << 2 | 1u << 3 | 1u << 4;
    k->accum_rot_i16 = accum_rot_i16;
    k->rot_v16_bits = 1u << 2 | 1u << 3 | 1u << 4;
    k->score_q4_0_i8 = score_q4_0_i8;
    k->score_q8_0_i16 = score_q8_0_i16;
    k->accum_q4_0_i16 = accum_q4_0_i16;
    /* chan_avx2.c's (its AVX-VNNI build's in that build of this file) */
    k->chan_weights = kvqi_chan_weights_avx2;
    k->chan_dot = kvqi_chan_dot_avx2;
    k->chan_codes = kvqi_chan_codes_avx2;
    k->chan_fit_sums = kvqi_chan_fit_sums_avx2;
    k->chan_prerope_scores = kvqi_chan_prerope_scores_avx2;
}
