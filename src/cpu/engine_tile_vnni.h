/*
 * engine_tile_vnni.h - the engine's int8 products with 256-bit vpdpbusd, bit for bit the
 * scalar references': the tile product (kvqi_gemm_q8's sums and order) and the one-token
 * products straight from the blocks (gemv_q8), shared by the AVX-512 VNNI engine and the
 * AVX-VNNI build of the AVX2 engine. The includer defines KVQI_DPBUSD256(acc, u, s) (the
 * EVEX or the VEX instruction), hsum8_ordered and h2f, and includes immintrin.h, string.h
 * and engine/engine.h first.
 */
#ifndef KVQ_ENGINE_TILE_VNNI_H
#define KVQ_ENGINE_TILE_VNNI_H

/* vpdpbusd multiplies unsigned by signed bytes: q + 128 (q xor 0x80) against w gives
 * sum(q w) + 128 sum(w), and the accumulator starts at -128 sum(w), once per row block.
 * TT tokens in 256-bit vectors; gemm_q8 runs it for a last odd token (tile_vnni512 takes
 * pairs), and it is the layout tile_vnni512 repeats lane for lane. */
static inline __attribute__((always_inline)) void tile_vnni(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t t0,
                                                             const int TT, const __m256i *corr_rb, float *y,
                                                             size_t y_stride) {
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    size_t n = tl->n, nb = n / 32, nl = n / 4;
    __m256 acc[4][4];
    __m128 off[4];
    _Pragma("GCC unroll 4")
    for (int r = 0; r < 4; r++)
        _Pragma("GCC unroll 4")
        for (int t = 0; t < TT; t++) acc[r][t] = _mm256_setzero_ps();
    _Pragma("GCC unroll 4")
    for (int t = 0; t < TT; t++) off[t] = _mm_setzero_ps();
    const int8_t *q[4];
    const float *d[4], *s[4];
    kvqi_q8_acts_rows(a, t0, TT, q, d, s);
    for (size_t b = 0; b < nb; b++) {
        __m256i qv[4];
        __m256 dv[4];
        _Pragma("GCC unroll 4")
        for (int t = 0; t < TT; t++) {
            qv[t] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q[t] + 32 * b)), bias);
            dv[t] = _mm256_set1_ps(d[t][b]);
        }
        _Pragma("GCC unroll 4")
        for (int r = 0; r < 4; r++) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(tl->w + r * n + 32 * b));
            __m256i corr = corr_rb ? _mm256_loadu_si256(corr_rb + r * nb + b)
                                   : _mm256_sub_epi32(_mm256_setzero_si256(),
                                                      KVQI_DPBUSD256(_mm256_setzero_si256(), bias, w));
            __m256 lv = _mm256_loadu_ps(tl->wl + r * nl + 8 * b);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < TT; t++) {
                __m256 f = _mm256_cvtepi32_ps(KVQI_DPBUSD256(corr, qv[t], w));
                acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(lv, dv[t]), f, acc[r][t]);
            }
        }
        if (tl->wo) {
            __m128 wo = _mm_loadu_ps(tl->wo + 4 * b);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < TT; t++) off[t] = _mm_fmadd_ps(wo, _mm_set1_ps(s[t][b]), off[t]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < TT; t++) {
        float o[4];
        _mm_storeu_ps(o, off[t]);
        for (size_t r = 0; r < tl->n_rows; r++) {
            float v = hsum8_ordered(acc[r][t]);
            if (tl->wo) v += o[r];
            y[(t0 + t) * y_stride + r] = v;
        }
    }
}

/* Rows of up to this many numbers get their corrections (-128 times each lane's weight
 * sum) computed once for all tokens, on the stack (4 * n bytes); longer ones per pass. */
#define TILE_CORR_MAX 8192

/* corr[r nb + b] = -128 times the lane sums of row r's block b (the accumulators' start),
 * for a call of more than one token on rows of at most TILE_CORR_MAX; else NULL (each
 * pass computes its own) */
static inline const __m256i *tile_corrections(const kvqi_q8_tile *tl, size_t n_tok, __m256i *corr) {
    if (n_tok < 2 || tl->n > TILE_CORR_MAX) return NULL;
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    size_t nb = tl->n / 32;
    for (size_t r = 0; r < 4; r++)
        for (size_t b = 0; b < nb; b++) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(tl->w + r * tl->n + 32 * b));
            corr[r * nb + b] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                                KVQI_DPBUSD256(_mm256_setzero_si256(), bias, w));
        }
    return corr;
}

/* ------------------------------------------------ one token, from the blocks */

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
/* Q5_0: the nibble plus 16 where the fifth bit is set (AVX-512: one masked addition; else
 * the 32 bits spread to bytes, byte i testing bit i) */
#if defined(__AVX512BW__) && defined(__AVX512VL__)
#define Q5_HIGH(nib, qh) _mm256_mask_add_epi8((nib), (__mmask32)(qh), (nib), _mm256_set1_epi8(16))
#else
static inline __m256i q5_high(__m256i nib, uint32_t qh) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                            3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), spread);
    __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
    return _mm256_add_epi8(nib, _mm256_and_si256(set, _mm256_set1_epi8(16)));
}
#define Q5_HIGH(nib, qh) q5_high((nib), (qh))
#endif
#define BLOCK_Q5_0(p, w, sc, mn)                                                                   \
    do {                                                                                           \
        uint32_t qh_;                                                                              \
        memcpy(&qh_, (p) + 2, 4);                                                                  \
        __m256i nib_ = q4_nibbles((p) + 6);                                                        \
        w = Q5_HIGH(nib_, qh_);                                                                    \
        sc = h2f(p);                                                                               \
    } while (0)
#define BLOCK_Q8_0(p, w, sc, mn) do { w = _mm256_loadu_si256((const __m256i *)((p) + 2)); sc = h2f(p); } while (0)

/* -K times the sum of each lane's four activation codes (x signed, K = 0..127) */
static inline __m256i kcorr(__m256i x, int k) {
    if (!k) return _mm256_setzero_si256();
    return _mm256_sub_epi32(_mm256_setzero_si256(), KVQI_DPBUSD256(_mm256_setzero_si256(), _mm256_set1_epi8((char)k), x));
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
                                                          KVQI_DPBUSD256(_mm256_setzero_si256(), bias, w)) \
                                       : kc;                                                          \
                __m256 f = (K) < 0 ? _mm256_cvtepi32_ps(KVQI_DPBUSD256(corr, xu, w))            \
                                   : _mm256_cvtepi32_ps(KVQI_DPBUSD256(corr, w, xs));           \
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
    return _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(KVQI_DPBUSD256(kc, u, x)), acc);
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

/* the one-token products of this file into the table */
static inline void gemv_vnni_fill(kvqi_engine_kernels *k) {
    k->gemv_q8[KVQI_T_Q4_0] = gemv_q4_0;
    k->gemv_q8[KVQI_T_Q4_1] = gemv_q4_1;
    k->gemv_q8[KVQI_T_Q5_0] = gemv_q5_0;
    k->gemv_q8[KVQI_T_Q8_0] = gemv_q8_0;
    k->gemv_q8[KVQI_T_Q4_K] = gemv_q4_k;
    k->gemv_q8[KVQI_T_Q6_K] = gemv_q6_k;
}

#endif /* KVQ_ENGINE_TILE_VNNI_H */
