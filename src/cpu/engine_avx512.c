/*
 * engine_avx512.c - the GGUF engine's int8 tile product with AVX-512 VNNI: unpacked weight
 * rows times quantized activations, 4 rows x 4 tokens per pass so each loaded block feeds
 * four vpdpbusd, as llama.cpp's "llamafile sgemm" tiles its quantized products. A 256-bit
 * vector holds a block's 8 lanes as the reference sums them; two tokens share a 512-bit
 * one (tile_vnni512, the weights broadcast to both halves), so each lane's operations
 * stay the reference's while a core with 512-bit units does half the instructions
 * (Zen 5: prompts 1.32-1.40x, batched decoding 1.16-1.25x; one token keeps 256 bits).
 * Bit-identical to the scalar reference in engine/dequant.c (tests compare).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "engine/engine.h"

/* (i + i+4), then (j + j+2), then 0 + 1: the reference's order */
static inline float hsum8_ordered(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define KVQI_DPBUSD256(acc, u, w) _mm256_dpbusd_epi32((acc), (u), (w))
#include "cpu/engine_tile_vnni.h"

/* tile_vnni with two tokens a 512-bit vector (lanes 0-7 token t, 8-15 token t + 1, the
 * weights and lane scales broadcast to both halves): every lane runs the same operations
 * in the same order as in tile_vnni, so the same bits, with half the instructions on a
 * core whose vector units are 512 bits wide. NP: token pairs (1 or 2). */
static inline __attribute__((always_inline)) void tile_vnni512(const kvqi_q8_tile *tl, const kvqi_q8_acts *a,
                                                                size_t t0, const int NP, const __m256i *corr_rb,
                                                                float *y, size_t y_stride) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    size_t n = tl->n, nb = n / 32, nl = n / 4;
    __m512 acc[4][2];
    __m128 off[4];
    _Pragma("GCC unroll 4")
    for (int r = 0; r < 4; r++)
        _Pragma("GCC unroll 2")
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_ps();
    _Pragma("GCC unroll 4")
    for (int t = 0; t < 2 * NP; t++) off[t] = _mm_setzero_ps();
    const int8_t *q[4];
    const float *d[4], *s[4];
    kvqi_q8_acts_rows(a, t0, 2 * NP, q, d, s);
    for (size_t b = 0; b < nb; b++) {
        __m512i qv[2];
        __m512 dv[2];
        _Pragma("GCC unroll 2")
        for (int p = 0; p < NP; p++) {
            __m512i q2 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(q[2 * p] + 32 * b))),
                                            _mm256_loadu_si256((const __m256i *)(q[2 * p + 1] + 32 * b)), 1);
            qv[p] = _mm512_xor_si512(q2, bias);
            dv[p] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(d[2 * p][b])),
                                       _mm256_set1_ps(d[2 * p + 1][b]), 1);
        }
        _Pragma("GCC unroll 4")
        for (int r = 0; r < 4; r++) {
            __m512i w = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(tl->w + r * n + 32 * b)));
            __m512i corr = corr_rb ? _mm512_broadcast_i64x4(_mm256_loadu_si256(corr_rb + r * nb + b))
                                   : _mm512_sub_epi32(_mm512_setzero_si512(),
                                                      _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, w));
            __m512 lv = _mm512_broadcast_f32x8(_mm256_loadu_ps(tl->wl + r * nl + 8 * b));
            _Pragma("GCC unroll 2")
            for (int p = 0; p < NP; p++) {
                __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, qv[p], w));
                acc[r][p] = _mm512_fmadd_ps(_mm512_mul_ps(lv, dv[p]), f, acc[r][p]);
            }
        }
        if (tl->wo) {
            __m128 wo = _mm_loadu_ps(tl->wo + 4 * b);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < 2 * NP; t++) off[t] = _mm_fmadd_ps(wo, _mm_set1_ps(s[t][b]), off[t]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < 2 * NP; t++) {
        float o[4];
        _mm_storeu_ps(o, off[t]);
        for (size_t r = 0; r < tl->n_rows; r++) {
            __m512 v2 = acc[r][t / 2];
            float v = hsum8_ordered(t % 2 ? _mm512_extractf32x8_ps(v2, 1) : _mm512_castps512_ps256(v2));
            if (tl->wo) v += o[r];
            y[(t0 + t) * y_stride + r] = v;
        }
    }
}

static void gemm_q8_avx512(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t n_tok, float *y, size_t y_stride) {
    size_t t = 0;
    __m256i corr[4 * (TILE_CORR_MAX / 32)];
    const __m256i *cp = tile_corrections(tl, n_tok, corr);
    for (; t + 4 <= n_tok; t += 4) tile_vnni512(tl, a, t, 2, cp, y, y_stride);
    for (; t + 2 <= n_tok; t += 2) tile_vnni512(tl, a, t, 1, cp, y, y_stride);
    for (; t < n_tok; t++) tile_vnni(tl, a, t, 1, cp, y, y_stride);
}

/* ------------------------------------------------ one token, from the blocks */

static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* 16 bytes of nibbles to 32 bytes in element order (low nibbles 0..15, high 16..31):
 * the bytes in both halves, the upper half shifted by 4, then masked */
static inline __m256i q4_nibbles(const uint8_t *qs) {
    __m256i q = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    q = _mm256_srlv_epi64(q, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(q, _mm256_set1_epi8(0x0f));
}

/* The numbers of block b of a row, its scale and (Q4_1) its minimum: exactly what the
 * unpack functions store, but for the small types as unsigned bytes u = w + K (K = 8 for
 * Q4_0, 16 for Q5_0, 0 for Q4_1), which vpdpbusd takes as they are: sum(u x) - K sum(x)
 * is sum(w x) exactly, and K sum(x) per lane is one vpdpbusd per block for all rows
 * (kcorr below) instead of one per row. Q8_0 stays signed (w = u - 128 would need the
 * same work per row as its own correction). */
#define BLOCK_Q4_0(p, w, sc, mn) do { w = q4_nibbles((p) + 2); sc = h2f(p); } while (0)
#define BLOCK_Q4_1(p, w, sc, mn) do { w = q4_nibbles((p) + 4); sc = h2f(p); mn = h2f((p) + 2); } while (0)
/* Q5_0: the nibble plus 16 where the fifth bit is set, in one masked addition */
#define BLOCK_Q5_0(p, w, sc, mn)                                                                   \
    do {                                                                                           \
        uint32_t qh_;                                                                              \
        memcpy(&qh_, (p) + 2, 4);                                                                  \
        __m256i nib_ = q4_nibbles((p) + 6);                                                        \
        w = _mm256_mask_add_epi8(nib_, (__mmask32)qh_, nib_, _mm256_set1_epi8(16));               \
        sc = h2f(p);                                                                               \
    } while (0)
#define BLOCK_Q8_0(p, w, sc, mn) do { w = _mm256_loadu_si256((const __m256i *)((p) + 2)); sc = h2f(p); } while (0)

/* -K times the sum of each lane's four activation codes (x signed, K = 0..127) */
static inline __m256i kcorr(__m256i x, int k) {
    if (!k) return _mm256_setzero_si256();
    return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)k), x));
}

/* 4 rows x 1 token: the tile product's sums in the same order (acc per lane over the
 * blocks, then the 8-lane tree, then the row's offset chain) */
#define GEMV_Q8(NAME, BSIZE, BLOCK, HAS_MIN, K)                                                       \
    static void NAME(const void *row, size_t row_bytes, size_t n_rows, size_t n, const kvqi_q8_acts *a, float *y) { \
        const __m256i bias = _mm256_set1_epi8((char)0x80);                                           \
        (void)bias;                                                                                   \
        const uint8_t *base = row;                                                                    \
        const uint8_t *rp[4];                                                                         \
        for (size_t r = 0; r < 4; r++) rp[r] = base + (r < n_rows ? r : 0) * row_bytes;               \
        __m256 acc[4];                                                                                \
        __m128 off = _mm_setzero_ps(); /* row r's offset chain in lane r */                          \
        for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();                                    \
        for (size_t b = 0; b < n / 32; b++) {                                                         \
            __m256i xs = _mm256_loadu_si256((const __m256i *)(a->q + 32 * b));                       \
            /* signed weights (K < 0): x + 128 unsigned, corrected per row; else kcorr */         \
            __m256i xu = (K) < 0 ? _mm256_xor_si256(xs, bias) : xs;                                  \
            __m256i kc = (K) < 0 ? _mm256_setzero_si256() : kcorr(xs, (K));                          \
            float dx = a->d[b];                                                                       \
            /* the four rows' block scales (and Q4_1 minimums: the two halves after the   \
             * scale) converted at once, each scale times dx as one float product, as     \
             * the reference's sc * dx */                                                 \
            uint32_t hw0, hw1, hw2, hw3;                                                              \
            memcpy(&hw0, rp[0] + b * (BSIZE), 4), memcpy(&hw1, rp[1] + b * (BSIZE), 4);               \
            memcpy(&hw2, rp[2] + b * (BSIZE), 4), memcpy(&hw3, rp[3] + b * (BSIZE), 4);               \
            const __m256 hf = _mm256_cvtph_ps(_mm_setr_epi32((int)hw0, (int)hw1, (int)hw2, (int)hw3)); \
            const __m256 sdx = _mm256_mul_ps(hf, _mm256_set1_ps(dx));                                 \
            if (HAS_MIN)                                                                              \
                off = _mm_fmadd_ps(_mm256_castps256_ps128(_mm256_permutevar8x32_ps(                   \
                                       hf, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7))),               \
                                   _mm_set1_ps(a->s[b]), off);                                        \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                                    \
                const uint8_t *p = rp[r] + b * (BSIZE);                                               \
                /* 24 rows ahead (four interleaved row streams defeat the hardware       \
                 * prefetcher), non-temporal: a token reads each weight once */           \
                _mm_prefetch((const char *)(p + 24 * row_bytes), _MM_HINT_NTA);                          \
                __m256i w;                                                                            \
                float sc, mn = 0;                                                                     \
                BLOCK(p, w, sc, mn);                                                                  \
                (void)sc;                                                                             \
                (void)mn;                                                                             \
                __m256i corr = (K) < 0 ? _mm256_sub_epi32(_mm256_setzero_si256(),                    \
                                                          _mm256_dpbusd_epi32(_mm256_setzero_si256(), bias, w)) \
                                       : kc;                                                          \
                __m256 f = (K) < 0 ? _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(corr, xu, w))            \
                                   : _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(corr, w, xs));           \
                acc[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(sdx, _mm256_set1_epi32(2 * r)), f, acc[r]); \
            }                                                                                         \
        }                                                                                             \
        float o[4];                                                                                   \
        _mm_storeu_ps(o, off);                                                                        \
        for (size_t r = 0; r < n_rows; r++) {                                                         \
            float v = hsum8_ordered(acc[r]);                                                          \
            if (HAS_MIN) v += o[r];                                                                   \
            y[r] = v;                                                                                 \
        }                                                                                             \
    }

GEMV_Q8(gemv_q4_0, 18, BLOCK_Q4_0, 0, 8)
GEMV_Q8(gemv_q4_1, 20, BLOCK_Q4_1, 1, 0)
GEMV_Q8(gemv_q5_0, 22, BLOCK_Q5_0, 0, 16)
GEMV_Q8(gemv_q8_0, 34, BLOCK_Q8_0, 0, -1)

/* K-quants: a super-block of 256 is 8 blocks of 32 with their own scales */

static inline void k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* one block's step of the tile product for one row, the same operations in the same
 * order: u = w + K unsigned, x signed, kc = kcorr(x, K), so the integer sum is exact */
static inline __m256 step(__m256 acc, __m256i u, __m256i x, __m256i kc, __m256 scale) {
    return _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(kc, u, x)), acc);
}

static inline __m256i load_x(const kvqi_q8_acts *a, size_t b) {
    return _mm256_loadu_si256((const __m256i *)(a->q + 32 * b));
}

static void gemv_q4_k(const void *row, size_t row_bytes, size_t n_rows, size_t n, const kvqi_q8_acts *a, float *y) {
    const uint8_t *base = row;
    const uint8_t *rp[4];
    for (size_t r = 0; r < 4; r++) rp[r] = base + (r < n_rows ? r : 0) * row_bytes;
    __m256 acc[4];
    float off[4] = {0, 0, 0, 0};
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (size_t i = 0; i < n / 256; i++) {
        float scl[4][8], mo[4][8];
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {
            const uint8_t *p = rp[r] + i * 144;
            _mm_prefetch((const char *)(p + 24 * row_bytes), _MM_HINT_NTA);
            _mm_prefetch((const char *)(p + 24 * row_bytes + 64), _MM_HINT_NTA);
            _mm_prefetch((const char *)(p + 24 * row_bytes + 128), _MM_HINT_NTA);
            float d = h2f(p), dmin = h2f(p + 2);
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                k_scale_min(j, p + 4, &sc, &m);
                scl[r][j] = d * (float)sc;
                mo[r][j] = -(dmin * (float)m);
            }
        }
        for (int jj = 0; jj < 4; jj++) {
            size_t b = 8 * i + 2 * jj;
            __m256i x0 = load_x(a, b), x1 = load_x(a, b + 1);
            const __m256i z = _mm256_setzero_si256();
            float d0 = a->d[b], d1 = a->d[b + 1], s0 = a->s[b], s1 = a->s[b + 1];
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(rp[r] + i * 144 + 16 + 32 * jj));
                acc[r] = step(acc[r], _mm256_and_si256(q, m4), x0, z, _mm256_set1_ps(scl[r][2 * jj] * d0));
                off[r] = fmaf(mo[r][2 * jj], s0, off[r]);
                acc[r] = step(acc[r], _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), x1, z,
                              _mm256_set1_ps(scl[r][2 * jj + 1] * d1));
                off[r] = fmaf(mo[r][2 * jj + 1], s1, off[r]);
            }
        }
    }
    for (size_t r = 0; r < n_rows; r++) y[r] = hsum8_ordered(acc[r]) + off[r];
}

static void gemv_q6_k(const void *row, size_t row_bytes, size_t n_rows, size_t n, const kvqi_q8_acts *a, float *y) {
    const uint8_t *base = row;
    const uint8_t *rp[4];
    for (size_t r = 0; r < 4; r++) rp[r] = base + (r < n_rows ? r : 0) * row_bytes;
    __m256 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
    for (size_t i = 0; i < n / 256; i++) {
        for (int half = 0; half < 2; half++) {
            size_t b = 8 * i + 4 * half;
            __m256i xs[4], kc[4];
            __m256 dx[4];
            for (int k = 0; k < 4; k++) {
                xs[k] = load_x(a, b + k);
                kc[k] = kcorr(xs[k], 32); /* the numbers are u - 32, u in 0..63 */
                dx[k] = _mm256_set1_ps(a->d[b + k]);
            }
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {
                const uint8_t *p = rp[r] + i * 210;
                if (half == 0)
                    for (int c = 0; c < 4; c++) _mm_prefetch((const char *)(p + 24 * row_bytes + 64 * c), _MM_HINT_NTA);
                const uint8_t *ql = p + 64 * half, *qh = p + 128 + 32 * half;
                const int8_t *sc = (const int8_t *)(p + 192) + 8 * half;
                float d = h2f(p + 208);
                __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
                __m256i h = _mm256_loadu_si256((const __m256i *)qh);
                __m256i w[4];
                w[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
                w[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
                w[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
                w[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                       _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
                for (int k = 0; k < 4; k++) {
                    /* lanes 0-3 take the scale of numbers 0..15, lanes 4-7 of 16..31 */
                    __m256 wl = _mm256_set_m128(_mm_set1_ps(d * (float)sc[2 * k + 1]), _mm_set1_ps(d * (float)sc[2 * k]));
                    acc[r] = step(acc[r], w[k], xs[k], kc[k], _mm256_mul_ps(wl, dx[k]));
                }
            }
        }
    }
    for (size_t r = 0; r < n_rows; r++) y[r] = hsum8_ordered(acc[r]);
}

void kvqi_engine_kernels_avx512(kvqi_engine_kernels *k) {
    kvqi_engine_kernels_avx2(k);
    k->isa = KVQ_ISA_AVX512;
    k->gemm_q8 = gemm_q8_avx512;
    k->gemv_q8[KVQI_T_Q4_0] = gemv_q4_0;
    k->gemv_q8[KVQI_T_Q4_1] = gemv_q4_1;
    k->gemv_q8[KVQI_T_Q5_0] = gemv_q5_0;
    k->gemv_q8[KVQI_T_Q8_0] = gemv_q8_0;
    k->gemv_q8[KVQI_T_Q4_K] = gemv_q4_k;
    k->gemv_q8[KVQI_T_Q6_K] = gemv_q6_k;
}
