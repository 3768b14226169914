/*
 * exp_neg.h - exp(x) for x <= 0, the softmax's and the gated activations' exponential:
 * one range reduction and one polynomial, in three forms (scalar, scalar with fused
 * multiply-adds, 8 AVX2 lanes) that the kernels of every ISA reproduce bit for bit.
 */
#ifndef KVQ_CPU_EXP_NEG_H
#define KVQ_CPU_EXP_NEG_H

#include <math.h>
#include <stdint.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

/* exp(x) for x <= 0: i = ceil(x log2(e) - 1/2), r = x - i ln2 in two steps (Cody-Waite,
 * |r| <= ln2/2), e^r by its degree-6 Taylor polynomial, times 2^i. Relative error about
 * 2e-7. Every ISA uses this reduction and these coefficients; below -87 it returns 0
 * (the softmax weight underflows anyway). */
#define KVQI_EXP_LN2_HI 0.693145751953125f
#define KVQI_EXP_LN2_LO 1.428606765330187e-06f
#define KVQI_EXP_C6 1.3888889e-3f
#define KVQI_EXP_C5 8.3333333e-3f
#define KVQI_EXP_C4 4.1666668e-2f
#define KVQI_EXP_C3 1.6666667e-1f
#define KVQI_EXP_C2 0.5f
static inline float kvqi_exp_neg(float x) {
    if (!(x >= -87.0f)) return 0.0f;
    float u = x * 1.44269504088896341f - 0.5f;
    float fi = (float)(int32_t)u; /* u <= 0: truncation is ceil */
    float r = x - fi * KVQI_EXP_LN2_HI;
    r = r - fi * KVQI_EXP_LN2_LO;
    float p = KVQI_EXP_C6;
    p = p * r + KVQI_EXP_C5;
    p = p * r + KVQI_EXP_C4;
    p = p * r + KVQI_EXP_C3;
    p = p * r + KVQI_EXP_C2;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { float f; int32_t i; } bits;
    bits.i = ((int32_t)fi + 127) << 23;
    return p * bits.f;
}

/* kvqi_exp_neg with fused multiply-adds (the engine's gated activations: the same bits as
 * kvqi_exp_neg8, lane for lane). */
static inline float kvqi_exp_neg_fma(float x) {
    if (!(x >= -87.0f)) return 0.0f;
    float fi = ceilf(x * 1.44269504088896341f - 0.5f);
    float r = fmaf(-fi, KVQI_EXP_LN2_HI, x);
    r = fmaf(-fi, KVQI_EXP_LN2_LO, r);
    float p = KVQI_EXP_C6;
    p = fmaf(p, r, KVQI_EXP_C5);
    p = fmaf(p, r, KVQI_EXP_C4);
    p = fmaf(p, r, KVQI_EXP_C3);
    p = fmaf(p, r, KVQI_EXP_C2);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    union {
        float f;
        int32_t i;
    } bits;
    bits.i = ((int32_t)fi + 127) << 23;
    return p * bits.f;
}

#if defined(__AVX2__) && defined(__FMA__)
/* kvqi_exp_neg_fma on 8 lanes, operation for operation */
static inline __m256 kvqi_exp_neg8(__m256 x) {
    __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    __m256 fi = _mm256_round_ps(_mm256_sub_ps(t, _mm256_set1_ps(0.5f)),
                                _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fi, _mm256_set1_ps(KVQI_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(fi, _mm256_set1_ps(KVQI_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(KVQI_EXP_C6);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVQI_EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVQI_EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVQI_EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVQI_EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fi), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

#endif

#endif /* KVQ_CPU_EXP_NEG_H */
