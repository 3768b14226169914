/* index_avx512.c - RaBitQ index kernels with AVX-512: fast-scan of four 16-byte code
 * groups per vpshufb (one 4-bit LUT per 128-bit lane), u8/fp16 dot and L2 in the
 * canonical 16-lane order, bit-identical to index_scalar.c. */
#include <immintrin.h>

#include "cpu/cpu.h"
#include "cpu/index_kernels.h"

/* Sum the four 128-bit lanes of 8 u16 counters each into 8 u32 and add to out. */
static inline void fold_lanes(__m512i acc, uint32_t *out) {
    __m512i w = _mm512_add_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(acc)),
                                 _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(acc, 1)));
    __m256i s = _mm256_add_epi32(_mm512_castsi512_si256(w), _mm512_extracti64x4_epi64(w, 1));
    __m256i o = _mm256_loadu_si256((const __m256i *)out);
    _mm256_storeu_si256((__m256i *)out, _mm256_add_epi32(o, s));
}

static void fastscan_avx512(const uint8_t *block, const uint8_t *lut, uint32_t n_groups,
                            uint32_t out[KVQI_FS_BLOCK]) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (unsigned v = 0; v < KVQI_FS_BLOCK; v++) out[v] = 0;
    /* 16-bit counters: a chunk of 1024 groups puts at most 256 * 60 in each (and the
     * even sums, recovered as all - 256 * odd, are exact modulo 2^16). */
    for (uint32_t g0 = 0; g0 < n_groups; g0 += 1024) {
        uint32_t g1 = n_groups - g0 < 1024 ? n_groups : g0 + 1024;
        __m512i lo_all = _mm512_setzero_si512(), lo_odd = _mm512_setzero_si512();
        __m512i hi_all = _mm512_setzero_si512(), hi_odd = _mm512_setzero_si512();
        for (uint32_t g = g0; g < g1; g += 4) {
            __m512i c = _mm512_loadu_si512((const void *)(block + (size_t)g * 16));
            __m512i t = _mm512_loadu_si512((const void *)(lut + (size_t)g * 16));
            __m512i rl = _mm512_shuffle_epi8(t, _mm512_and_si512(c, low4));
            __m512i rh = _mm512_shuffle_epi8(t, _mm512_and_si512(_mm512_srli_epi16(c, 4), low4));
            lo_all = _mm512_add_epi16(lo_all, rl);
            lo_odd = _mm512_add_epi16(lo_odd, _mm512_srli_epi16(rl, 8));
            hi_all = _mm512_add_epi16(hi_all, rh);
            hi_odd = _mm512_add_epi16(hi_odd, _mm512_srli_epi16(rh, 8));
        }
        __m512i lo_even = _mm512_sub_epi16(lo_all, _mm512_slli_epi16(lo_odd, 8));
        __m512i hi_even = _mm512_sub_epi16(hi_all, _mm512_slli_epi16(hi_odd, 8));
        fold_lanes(lo_even, out);
        fold_lanes(lo_odd, out + 8);
        fold_lanes(hi_even, out + 16);
        fold_lanes(hi_odd, out + 24);
    }
}

static inline float hsum16(__m512 acc) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
}

static inline __mmask16 tail_mask(size_t left) { return (__mmask16)((1u << left) - 1u); }

static float dot_u8_avx512(const uint8_t *code, const float *q, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(code + i))));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(c, _mm512_loadu_ps(q + i)));
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, code + i)));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(c, _mm512_maskz_loadu_ps(m, q + i)));
    }
    return hsum16(acc);
}

static float l2sq_avx512(const float *a, const float *b, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(d, d));
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(d, d));
    }
    return hsum16(acc);
}

static inline __m512 load_f16(const uint16_t *a, size_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i)));
}
static inline __m512 load_f16_tail(const uint16_t *a, size_t i, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, a + i));
}

static float l2sq_f16_avx512(const uint16_t *a, const float *b, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(load_f16(a, i), _mm512_loadu_ps(b + i));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(d, d));
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 d = _mm512_sub_ps(load_f16_tail(a, i, m), _mm512_maskz_loadu_ps(m, b + i));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(d, d));
    }
    return hsum16(acc);
}

static float dot_f16_avx512(const uint16_t *a, const float *b, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_add_ps(acc, _mm512_mul_ps(load_f16(a, i), _mm512_loadu_ps(b + i)));
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        acc = _mm512_add_ps(acc, _mm512_mul_ps(load_f16_tail(a, i, m), _mm512_maskz_loadu_ps(m, b + i)));
    }
    return hsum16(acc);
}

static float dot_avx512(const float *a, const float *b, size_t n) {
    return kvqi_base_kernels_for(KVQ_ISA_AVX512)->dot(a, b, n);
}

const kvqi_index_kernels kvqi_index_avx512 = {
    KVQ_ISA_AVX512,  fastscan_avx512, dot_u8_avx512,  l2sq_avx512,
    l2sq_f16_avx512, dot_avx512,      dot_f16_avx512,
};
