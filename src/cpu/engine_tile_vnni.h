/*
 * engine_tile_vnni.h - the int8 tile product with 256-bit vpdpbusd (kvqi_gemm_q8's sums
 * and order, bit for bit), shared by the AVX-512 VNNI engine (its last odd token) and the
 * AVX-VNNI build of the AVX2 engine. The includer defines KVQI_DPBUSD256(acc, u, s) (the
 * EVEX or the VEX instruction) and hsum8_ordered, and includes immintrin.h and
 * engine/engine.h first.
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

#endif /* KVQ_ENGINE_TILE_VNNI_H */
