/*
 * chan_avx2.c - channel keys' weights and dot kernels (cache_kernels.h). The weights:
 * kvqi_chan_weights_ref with 8 lanes (the same operations lane for lane, the 16 bias
 * lanes as two vectors), then the plane weights of two heads per gather. The dot: a
 * unit's 64 tokens in four passes of two octets (8 tokens) each, the octets that one
 * 32-byte load of a 4-bit group holds (its two nibbles): pass a takes octets a and a + 2
 * for a = 0, 1, 4, 5. Per group, the two octets' four planes come as 16-bit words
 * (planes 0 and 2 of a token in the even words, 1 and 3 in the odd, each by one shift
 * and mask), multiplied with the int16 weight pairs by vpmaddwd and added in int32
 * registers, one per octet and query head, up to four heads per pass; the same final
 * multiply-add as the reference.
 */
#include <immintrin.h>

#include "cpu/cache_kernels.h"

#define CHAN_INLINE static inline __attribute__((always_inline))

/* kvqi_chan_weights_ref of one head q[dim] up to the channels' weights: kc[j] = W_j
 * (rounded and clamped, int32), scale and bias; wf: dim floats of scratch (may be kc). */
static void channel_weights(const uint8_t *block, const kvqi_chan_layout *L, const float *q, int32_t *kc,
                            float *scale, float *bias, float *wf) {
    uint32_t dim = L->dim;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 p0 = _mm256_setzero_ps(), p1 = p0, m0 = p0, m1 = p0;
    for (uint32_t j = 0; j < dim; j += 16) {
        const uint8_t *lo = block + 2 * (size_t)j, *st = block + 2 * ((size_t)dim + j);
        __m256 q0 = _mm256_loadu_ps(q + j), q1 = _mm256_loadu_ps(q + j + 8);
        p0 = _mm256_fmadd_ps(q0, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)lo)), p0);
        p1 = _mm256_fmadd_ps(q1, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(lo + 16))), p1);
        __m256 w0 = _mm256_mul_ps(q0, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)st)));
        __m256 w1 = _mm256_mul_ps(q1, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(st + 16))));
        _mm256_storeu_ps(wf + j, w0);
        _mm256_storeu_ps(wf + j + 8, w1);
        m0 = _mm256_max_ps(m0, _mm256_mul_ps(_mm256_and_ps(w0, absmask), _mm256_loadu_ps(L->top + j)));
        m1 = _mm256_max_ps(m1, _mm256_mul_ps(_mm256_and_ps(w1, absmask), _mm256_loadu_ps(L->top + j + 8)));
    }
    __m256 m8 = _mm256_max_ps(m0, m1);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    float mx = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    float inv = mx > 0.0f ? L->wmax / mx : 0.0f;
    const __m256 iv = _mm256_set1_ps(inv);
    const __m256i hi = _mm256_set1_epi32(32767), lo = _mm256_set1_epi32(-32767);
    for (uint32_t j = 0; j < dim; j += 8) {
        __m256i k = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(wf + j), iv));
        _mm256_storeu_si256((__m256i *)(void *)(kc + j), _mm256_max_epi32(_mm256_min_epi32(k, hi), lo));
    }
    *scale = mx / L->wmax;
    /* the 16 lanes folded 8, 4, 2, 1 */
    __m256 f8 = _mm256_add_ps(p0, p1);
    __m128 f4 = _mm_add_ps(_mm256_castps256_ps128(f8), _mm256_extractf128_ps(f8, 1));
    __m128 f2 = _mm_add_ps(f4, _mm_movehl_ps(f4, f4));
    *bias = _mm_cvtss_f32(_mm_add_ss(f2, _mm_shuffle_ps(f2, f2, 1)));
}

/* 2^shift per 16-bit half of each of 8 planes' int32 lanes (shift 16, padding: 0) */
static inline __m256i plane_mul(const uint16_t *shift) {
    __m256i s = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)shift));
    __m256i m = _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32(1), s), _mm256_set1_epi32(0xffff));
    return _mm256_or_si256(m, _mm256_slli_epi32(m, 16));
}

/* The plane weights W[p] = W_{chan p} 2^shift_p kept to 16 bits, of two heads at once:
 * kc2[j] holds head a's W_j in its low 16 bits and head b's in the high, so one gather
 * picks eight planes of both, and vpmullw by 2^shift shifts each half (Wb NULL: head a
 * only). */
static void plane_weights(const kvqi_chan_layout *L, const int32_t *kc2, int16_t *Wa, int16_t *Wb) {
    uint32_t P = L->n_padded;
    const __m256i m16 = _mm256_set1_epi32(0xffff);
    uint32_t p = 0;
    for (; p + 16 <= P; p += 16) {
        __m256i i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(L->pair_chan + p)));
        __m256i i1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(L->pair_chan + p + 8)));
        __m256i g0 = _mm256_mullo_epi16(_mm256_i32gather_epi32((const int *)kc2, i0, 4), plane_mul(L->pair_shift + p));
        __m256i g1 = _mm256_mullo_epi16(_mm256_i32gather_epi32((const int *)kc2, i1, 4), plane_mul(L->pair_shift + p + 8));
        __m256i a = _mm256_packus_epi32(_mm256_and_si256(g0, m16), _mm256_and_si256(g1, m16));
        _mm256_storeu_si256((__m256i *)(void *)(Wa + p), _mm256_permute4x64_epi64(a, 0xd8));
        if (Wb) {
            __m256i b = _mm256_packus_epi32(_mm256_srli_epi32(g0, 16), _mm256_srli_epi32(g1, 16));
            _mm256_storeu_si256((__m256i *)(void *)(Wb + p), _mm256_permute4x64_epi64(b, 0xd8));
        }
    }
    for (; p < P; p++) {
        uint32_t sh = L->pair_shift[p];
        Wa[p] = (int16_t)(uint16_t)((uint32_t)kc2[L->pair_chan[p]] << sh);
        if (Wb) Wb[p] = (int16_t)(uint16_t)(((uint32_t)kc2[L->pair_chan[p]] >> 16) << sh);
    }
}

/* kvqi_chan_weights_ref per head, heads two at a time through plane_weights where dim
 * fits the stack's arrays */
#define CHAN_PAIR_DIM 512u
void kvqi_chan_weights_avx2(const uint8_t *block, const kvqi_chan_layout *L, const float *q, uint32_t G,
                            int16_t *W, float *scale, float *bias, float *wf) {
    uint32_t dim = L->dim, P = L->n_padded, h = 0;
    if (dim <= CHAN_PAIR_DIM) {
        int32_t ka[CHAN_PAIR_DIM], kb[CHAN_PAIR_DIM];
        for (; h + 2 <= G; h += 2) {
            channel_weights(block, L, q + (size_t)h * dim, ka, &scale[h], &bias[h], wf);
            channel_weights(block, L, q + (size_t)(h + 1) * dim, kb, &scale[h + 1], &bias[h + 1], wf);
            for (uint32_t j = 0; j < dim; j += 8) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)(ka + j));
                __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)(kb + j));
                a = _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(b, 16));
                _mm256_storeu_si256((__m256i *)(void *)(ka + j), a);
            }
            plane_weights(L, ka, W + (size_t)h * P, W + (size_t)(h + 1) * P);
        }
    }
    for (; h < G; h++) {
        int32_t *kc = (int32_t *)(void *)wf;
        channel_weights(block, L, q + (size_t)h * dim, kc, &scale[h], &bias[h], wf);
        plane_weights(L, kc, W + (size_t)h * P, NULL);
    }
}

/* the int32 at w (a weight pair) in all lanes */
CHAN_INLINE __m256i pair_at(const int16_t *w) {
    int32_t x;
    memcpy(&x, w, 4);
    return _mm256_set1_epi32(x);
}

#define CHAN_ACC(h) __m256i a##h = z, b##h = z;
/* acc += the products of a token octet's even (e) and odd (o) words with head h's pairs */
#define CHAN_DOT(h, acc, e, o)                                                                        \
    if (gh > h) {                                                                                     \
        acc = KVQI_DP16(KVQI_DP16(acc, e, pair_at(wp + (size_t)(h) * P)), o, pair_at(wp + (size_t)(h) * P + 2)); \
    }
/* one group: octet A's words (even ea, odd oa) into a0..a3, then octet A + 2's into b0..b3 */
#define CHAN_GROUP(EA, OA, EB, OB)                                                                    \
    {                                                                                                 \
        __m256i ea = (EA), oa = (OA);                                                                 \
        CHAN_DOT(0, a0, ea, oa) CHAN_DOT(1, a1, ea, oa) CHAN_DOT(2, a2, ea, oa) CHAN_DOT(3, a3, ea, oa) \
        __m256i eb = (EB), ob = (OB);                                                                 \
        CHAN_DOT(0, b0, eb, ob) CHAN_DOT(1, b1, eb, ob) CHAN_DOT(2, b2, eb, ob) CHAN_DOT(3, b3, eb, ob) \
    }
#define CHAN_OUT(h)                                                                                   \
    if (gh > h) {                                                                                     \
        __m256 sv = _mm256_set1_ps(scale[h]), bv = _mm256_set1_ps(bias[h]);                           \
        _mm256_storeu_ps(out + (h) * ldo + 8 * A, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a##h), sv, bv)); \
        _mm256_storeu_ps(out + (h) * ldo + 8 * A + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(b##h), sv, bv)); \
    }

/* A plane group's words for octets A and A + 2 (pass A), i = 0, 1: the even and odd
 * words of octet A, 2, 3: those of A + 2. 4 bits (x: the group's 32 bytes of pass A): the
 * two nibbles; 2 bits (x: its 32 bytes of pass A % 2 shifted by 4 (A / 4)): the octet
 * A + 2 two bits above; 1 bit (x: the group shifted by A): octet l's bit l. One word
 * vector at a time, so that few are live (16 registers). */
CHAN_INLINE __m256i w4(__m256i x, const unsigned i) {
    const __m256i m = _mm256_set1_epi16(15);
    return i == 0 ? _mm256_and_si256(x, m)
           : i == 1 ? _mm256_and_si256(_mm256_srli_epi16(x, 8), m)
           : i == 2 ? _mm256_and_si256(_mm256_srli_epi16(x, 4), m)
                    : _mm256_srli_epi16(x, 12);
}
CHAN_INLINE __m256i w21(__m256i x, const unsigned i, __m256i m) {
    return _mm256_and_si256(i == 0 ? x : _mm256_srli_epi16(x, i == 1 ? 8 : i == 2 ? 2 : 10), m);
}
#define LD(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
/* a whole code from the words of its planes: (hi << s) | lo, (hi << s) | (mid << t) | lo */
#define WHOLE2(hi, s, lo) _mm256_or_si256(_mm256_slli_epi16(hi, s), lo)
#define WHOLE3(hi, s, mid, t, lo) _mm256_or_si256(_mm256_or_si256(_mm256_slli_epi16(hi, s), _mm256_slli_epi16(mid, t)), lo)
#define GROUP4(F) CHAN_GROUP(F(0), F(1), F(2), F(3))

/* Octets A and A + 2 (A = 0, 1, 4, 5) of gh (1..4) heads into out[h * ldo + l]. */
CHAN_INLINE void octets(const uint8_t *unit, const kvqi_chan_layout *L, const int16_t *W, uint32_t P,
                        const float *scale, const float *bias, float *out, size_t ldo, const unsigned gh,
                        const unsigned A) {
    const __m256i z = _mm256_setzero_si256(), m2 = _mm256_set1_epi16(3),
                  m1 = _mm256_set1_epi16(1);
    CHAN_ACC(0) CHAN_ACC(1) CHAN_ACC(2) CHAN_ACC(3)
    const int16_t *wp = W;
    const uint8_t *g4 = unit + 64 * (A / 4) + 32 * (A % 2), *g2 = unit + 128 * (size_t)L->n4 + 32 * (A % 2),
                  *g1 = unit + 128 * (size_t)L->n4 + 64 * (size_t)L->n2;
    uint32_t w4n, w2n, w1n;
    kvqi_chan_whole_groups(L, &w4n, &w2n, &w1n);
    /* whole groups: each channel's code from its planes' words */
#define X2(p) (A / 4 ? _mm256_srli_epi16(LD(p), 4) : LD(p))
#define X1(p) (A ? _mm256_srli_epi16(LD(p), A) : LD(p))
    for (uint32_t i = 0; i < L->nc[8]; i++, g4 += 256, wp += 4) {
        __m256i lo = LD(g4), hi = LD(g4 + 128);
#define F8(k) WHOLE2(w4(hi, k), 4, w4(lo, k))
        GROUP4(F8)
    }
    for (uint32_t i = 0; i < L->nc[7]; i++, g4 += 128, g2 += 64, g1 += 32, wp += 4) {
        __m256i x4 = LD(g4), x2 = X2(g2), x1 = X1(g1);
#define F7(k) WHOLE3(w4(x4, k), 3, w21(x2, k, m2), 1, w21(x1, k, m1))
        GROUP4(F7)
    }
    for (uint32_t i = 0; i < L->nc[6]; i++, g4 += 128, g2 += 64, wp += 4) {
        __m256i x4 = LD(g4), x2 = X2(g2);
#define F6(k) WHOLE2(w4(x4, k), 2, w21(x2, k, m2))
        GROUP4(F6)
    }
    for (uint32_t i = 0; i < L->nc[5]; i++, g4 += 128, g1 += 32, wp += 4) {
        __m256i x4 = LD(g4), x1 = X1(g1);
#define F5(k) WHOLE2(w4(x4, k), 1, w21(x1, k, m1))
        GROUP4(F5)
    }
    for (uint32_t i = 0; i < L->nc[3]; i++, g2 += 64, g1 += 32, wp += 4) {
        __m256i x2 = X2(g2), x1 = X1(g1);
#define F3(k) WHOLE2(w21(x2, k, m2), 1, w21(x1, k, m1))
        GROUP4(F3)
    }
    /* the other planes */
    for (uint32_t i = w4n; i < L->n4; i++, g4 += 128, wp += 4) {
        __m256i x4 = LD(g4);
#define P4(k) w4(x4, k)
        GROUP4(P4)
    }
    for (uint32_t i = w2n; i < L->n2; i++, g2 += 64, wp += 4) {
        __m256i x2 = X2(g2);
#define P2(k) w21(x2, k, m2)
        GROUP4(P2)
    }
    for (uint32_t i = w1n; i < L->n1; i++, g1 += 32, wp += 4) {
        __m256i x1 = X1(g1);
#define P1(k) w21(x1, k, m1)
        GROUP4(P1)
    }
#undef X2
#undef X1
    CHAN_OUT(0) CHAN_OUT(1) CHAN_OUT(2) CHAN_OUT(3)
}

/* pass A of gh heads, one function per (heads, pass) */
#define CHAN_PASS(GH, A)                                                                              \
    static void pass_##GH##_##A(const uint8_t *unit, const kvqi_chan_layout *L, const int16_t *W, uint32_t P, \
                                const float *scale, const float *bias, float *out, size_t ldo) {     \
        octets(unit, L, W, P, scale, bias, out, ldo, GH, A);                                          \
    }
#define CHAN_PASSES(GH) CHAN_PASS(GH, 0) CHAN_PASS(GH, 1) CHAN_PASS(GH, 4) CHAN_PASS(GH, 5)
CHAN_PASSES(1)
CHAN_PASSES(2)
CHAN_PASSES(3)
CHAN_PASSES(4)

typedef void (*pass_fn)(const uint8_t *, const kvqi_chan_layout *, const int16_t *, uint32_t, const float *,
                        const float *, float *, size_t);
static const pass_fn passes[4][4] = {
    {pass_1_0, pass_1_1, pass_1_4, pass_1_5},
    {pass_2_0, pass_2_1, pass_2_4, pass_2_5},
    {pass_3_0, pass_3_1, pass_3_4, pass_3_5},
    {pass_4_0, pass_4_1, pass_4_4, pass_4_5},
};

void kvqi_chan_dot_avx2(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                        const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld) {
    static const uint32_t first[4] = {0, 1, 4, 5};
    uint32_t P = L->n_padded;
    const uint8_t *unit = block + 4 * (size_t)L->dim + (in / 64) * L->unit_bytes;
    size_t l0 = in % 64;
    /* the whole unit straight into the rows when it is asked for whole */
    int whole = l0 == 0 && n == 64 && ld >= 64;
    float tmp[4 * 64];
    /* what follows the unit (the next unit, or the next chunk's block when a chunk is one
     * unit): a block head and a unit further on */
    for (size_t o = 0; o < 4 * (size_t)L->dim + L->unit_bytes; o += 64)
        _mm_prefetch((const char *)(unit + L->unit_bytes + o), _MM_HINT_T0);
    for (uint32_t h0 = 0; h0 < G; h0 += 4) {
        uint32_t gh = G - h0 < 4 ? G - h0 : 4;
        const int16_t *Wg = W + (size_t)h0 * P;
        float *out = whole ? scores + h0 * ld : tmp;
        size_t ldo = whole ? ld : 64;
        for (uint32_t k = 0; k < 4; k++) {
            uint32_t a = first[k];
            /* tokens 8a .. 8a + 7 and 8a + 16 .. 8a + 23: skip a pass that has none asked */
            int need = (8 * a < l0 + n && 8 * a + 8 > l0) || (8 * a + 16 < l0 + n && 8 * a + 24 > l0);
            if (need) passes[gh - 1][k](unit, L, Wg, P, scale + h0, bias + h0, out, ldo);
        }
        if (!whole)
            for (uint32_t h = 0; h < gh; h++) memcpy(scores + (h0 + h) * ld, tmp + h * 64 + l0, n * sizeof(float));
    }
}

/* kvqi_chan_code, 8 channels at a time (as chan_avx512.c's codes16). */
static inline __m256 codes8(const float *x, const float *lo, const float *step, const float *top) {
    __m256 st = _mm256_loadu_ps(step);
    __m256 v = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(lo)), st);
    v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_loadu_ps(top));
    return _mm256_and_ps(v, _mm256_cmp_ps(st, _mm256_setzero_ps(), _CMP_GT_OQ));
}

void kvqi_chan_codes_avx2(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                          uint8_t *codes) {
    for (uint32_t j = 0; j < dim; j += 16) {
        __m256i a = _mm256_cvtps_epi32(codes8(x + j, lo + j, step + j, top + j));
        __m256i b = _mm256_cvtps_epi32(codes8(x + j + 8, lo + j + 8, step + j + 8, top + j + 8));
        /* 16 codes of 0..255: words in lane order after the pack's lane interleave */
        __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), _MM_SHUFFLE(3, 1, 2, 0));
        __m128i by = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storeu_si128((__m128i *)(void *)(codes + j), by);
    }
}

void kvqi_chan_fit_sums_avx2(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                             float *acc) {
    for (uint32_t j = 0; j < dim; j += 8) {
        __m256 k = codes8(x + j, lo + j, step + j, top + j), xv = _mm256_loadu_ps(x + j);
        float *a = acc + j;
        _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), k));
        _mm256_storeu_ps(a + dim, _mm256_add_ps(_mm256_loadu_ps(a + dim), _mm256_mul_ps(k, k)));
        _mm256_storeu_ps(a + 2 * (size_t)dim, _mm256_add_ps(_mm256_loadu_ps(a + 2 * (size_t)dim), xv));
        _mm256_storeu_ps(a + 3 * (size_t)dim, _mm256_add_ps(_mm256_loadu_ps(a + 3 * (size_t)dim), _mm256_mul_ps(xv, k)));
    }
}

/* ------------------------------------------------------- keys before RoPE */

/* chan_prerope_scores (cache_kernels.h), 8 tokens (an octet) a pass in the lanes: each
 * plane's 8 values by a shift and mask of its group's 32-byte load (octet m of a unit:
 * 4-bit groups at 64 (m / 4) + 32 (m % 2), nibble (m / 2) % 2; 2-bit groups at 32 (m % 2),
 * bits 2 (m / 2); 1-bit groups whole, bit m), made float and multiply-added into its
 * channel's key, then per RoPE pair the two keys turned by the offsets' angles and dotted
 * with four heads at a time; the reference's operations lane for lane. */
#define PRE2_MAX_DIM 256
static const float pre2_zero[PRE2_MAX_DIM];

CHAN_INLINE void pre2_pairs4(const __m256 *kf, const float *q0, const float *q1, const float *q2, const float *q3,
                             uint32_t dim, int neox, const float *cs0, const float *sn0, size_t C, __m256 *acc) {
    uint32_t half = dim / 2;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (uint32_t i = 0; i < half; i++) {
        uint32_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        __m256 xa = kf[a], xb = kf[b];
        __m256 c = _mm256_loadu_ps(cs0 + i * C), s = _mm256_loadu_ps(sn0 + i * C);
        __m256 ka = _mm256_fmsub_ps(xa, c, _mm256_mul_ps(xb, s));
        __m256 kb = _mm256_fmadd_ps(xa, s, _mm256_mul_ps(xb, c));
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(q0[a]), ka, a0);
        b0 = _mm256_fmadd_ps(_mm256_set1_ps(q0[b]), kb, b0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(q1[a]), ka, a1);
        b1 = _mm256_fmadd_ps(_mm256_set1_ps(q1[b]), kb, b1);
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(q2[a]), ka, a2);
        b2 = _mm256_fmadd_ps(_mm256_set1_ps(q2[b]), kb, b2);
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(q3[a]), ka, a3);
        b3 = _mm256_fmadd_ps(_mm256_set1_ps(q3[b]), kb, b3);
    }
    acc[0] = _mm256_add_ps(a0, b0);
    acc[1] = _mm256_add_ps(a1, b1);
    acc[2] = _mm256_add_ps(a2, b2);
    acc[3] = _mm256_add_ps(a3, b3);
}

void kvqi_chan_prerope_scores_avx2(const uint8_t *block, const kvqi_chan_layout *L, const float *qt, uint32_t G,
                                   const float *cs, const float *sn, size_t C, size_t u0, int neox, size_t in, size_t n,
                                   float *scores, size_t ld) {
    uint32_t dim = L->dim, l0 = (uint32_t)(in % 64);
    if (dim > PRE2_MAX_DIM || dim % 8 != 0 || C % 8 != 0 || u0 % 64 != 0) {
        kvqi_chan_prerope_scores_scalar(block, L, qt, G, cs, sn, C, u0, neox, in, n, scores, ld);
        return;
    }
    float lo[PRE2_MAX_DIM], step[PRE2_MAX_DIM]; /* the block's fp16 minima and steps (exact) */
    for (uint32_t j = 0; j < dim; j += 8) {
        _mm256_storeu_ps(lo + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(block + 2 * (size_t)j))));
        _mm256_storeu_ps(step + j, _mm256_cvtph_ps(_mm_loadu_si128(
                                       (const __m128i *)(const void *)(block + 2 * ((size_t)dim + j)))));
    }
    const uint8_t *unit = block + 4 * (size_t)dim + (in / 64) * L->unit_bytes;
    kvqi_pre_op ops[3 * PRE2_MAX_DIM];
    uint16_t bare[PRE2_MAX_DIM];
    uint32_t nbare = 0, nops = kvqi_chan_pre_ops(L, step, ops, bare, &nbare);
    __m256 kf[PRE2_MAX_DIM];
    __m256i V[3 * PRE2_MAX_DIM / 4];
    const __m256i ff = _mm256_set1_epi32(0xff);
    const uint32_t ng = L->n4 + L->n2 + L->n1;
    for (uint32_t m = l0 / 8; 8 * m < l0 + n; m++) {
        for (uint32_t gi = 0; gi < ng; gi++) { /* token 8 m + lane's four planes as bytes */
            if (gi < L->n4) {
                __m256i x = _mm256_loadu_si256(
                    (const __m256i *)(const void *)(unit + 128 * (size_t)gi + 64 * (m / 4) + 32 * (m % 2)));
                V[gi] = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128((int)(4 * ((m / 2) % 2)))),
                                         _mm256_set1_epi8(15));
            } else if (gi < L->n4 + L->n2) {
                __m256i x = _mm256_loadu_si256(
                    (const __m256i *)(const void *)(unit + 128 * (size_t)L->n4 + 64 * (size_t)(gi - L->n4) + 32 * (m % 2)));
                V[gi] = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128((int)(2 * (m / 2)))), _mm256_set1_epi8(3));
            } else {
                __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(unit + 128 * (size_t)L->n4 +
                                                                              64 * (size_t)L->n2 +
                                                                              32 * (size_t)(gi - L->n4 - L->n2)));
                V[gi] = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128((int)m)), _mm256_set1_epi8(1));
            }
        }
        for (uint32_t i = 0; i < nbare; i++) kf[bare[i]] = _mm256_set1_ps(lo[bare[i]]);
        for (uint32_t o = 0; o < nops; o++) {
            const kvqi_pre_op *op = &ops[o];
            __m256 v = _mm256_cvtepi32_ps(
                _mm256_and_si256(_mm256_srl_epi32(V[op->grp], _mm_cvtsi32_si128(8 * op->lane)), ff));
            __m256 base = op->first ? _mm256_set1_ps(lo[op->chan]) : kf[op->chan];
            kf[op->chan] = _mm256_fmadd_ps(v, _mm256_set1_ps(op->sc), base);
        }
        /* tokens 8 m + lane within [l0, l0 + n) to scores[h][8 m + lane - l0] */
        uint32_t first = 8 * m, lo_t = first < l0 ? l0 : first;
        uint32_t hi_t = first + 8 < l0 + n ? first + 8 : l0 + (uint32_t)n;
        const float *cs0 = cs + u0 + first, *sn0 = sn + u0 + first;
        for (uint32_t h0 = 0; h0 < G; h0 += 4) {
            __m256 acc[4];
            uint32_t gh = G - h0 < 4 ? G - h0 : 4;
            const float *q = qt + (size_t)h0 * dim;
            pre2_pairs4(kf, q, gh > 1 ? q + dim : pre2_zero, gh > 2 ? q + 2 * dim : pre2_zero,
                        gh > 3 ? q + 3 * dim : pre2_zero, dim, neox, cs0, sn0, C, acc);
            for (uint32_t h = 0; h < gh; h++) {
                float tmp[8], *row = scores + (size_t)(h0 + h) * ld;
                _mm256_storeu_ps(tmp, acc[h]);
                for (uint32_t t = lo_t; t < hi_t; t++) row[t - l0] = tmp[t - first];
            }
        }
    }
}
