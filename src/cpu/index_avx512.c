/* index_avx512.c - RaBitQ index kernels with AVX-512: fast-scan of four 16-byte code
 * groups per vpshufb (one 4-bit LUT per 128-bit lane), u8/fp16 dot and L2 in the
 * canonical 16-lane order, bit-identical to index_scalar.c. */
#include <immintrin.h>

#include "cpu/cpu.h"
#include "cpu/index_kernels.h"

/* Sum the four 128-bit lanes of 8 u16 counters each into 8 u32. */
static inline __m256i fold_lanes(__m512i acc) {
    __m512i w = _mm512_add_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(acc)),
                                 _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(acc, 1)));
    return _mm256_add_epi32(_mm512_castsi512_si256(w), _mm512_extracti64x4_epi64(w, 1));
}

static inline __m512i join256(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

static void fastscan_avx512(const uint8_t *block, const uint8_t *lut, uint32_t n_groups,
                            uint32_t out[KVQI_FS_BLOCK]) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    /* the sums stay in registers and leave in two 64-byte stores: the block estimate
     * reloads them at once, and a load spanning several narrower stores is not
     * forwarded (it waited for them to reach the cache) */
    __m512i tot_lo = _mm512_setzero_si512(), tot_hi = _mm512_setzero_si512();
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
        tot_lo = _mm512_add_epi32(tot_lo, join256(fold_lanes(lo_even), fold_lanes(lo_odd)));
        tot_hi = _mm512_add_epi32(tot_hi, join256(fold_lanes(hi_even), fold_lanes(hi_odd)));
    }
    _mm512_storeu_si512((void *)out, tot_lo);
    _mm512_storeu_si512((void *)(out + 16), tot_hi);
}

static inline __m512i lane_ctrl(int t) { /* lane L: every byte = 4L + t */
#define R(x) ((int)(0x01010101u * (unsigned)(x)))
    return _mm512_set_epi32(R(12 + t), R(12 + t), R(12 + t), R(12 + t), R(8 + t), R(8 + t),
                            R(8 + t), R(8 + t), R(4 + t), R(4 + t), R(4 + t), R(4 + t), R(t),
                            R(t), R(t), R(t));
#undef R
}

static inline __m512 load_x(const float *q, const float *sub, uint32_t i) {
    __m512 v = _mm512_loadu_ps(q + i);
    return sub ? _mm512_sub_ps(v, _mm512_loadu_ps(sub + i)) : v;
}

static void build_lut4_avx512(const float *q, const float *sub, uint32_t d, uint32_t d_pad,
                              uint8_t *qu, uint8_t *lut, float *vmin_out, float *delta_out) {
    __m512 mn = _mm512_set1_ps(sub ? q[0] - sub[0] : q[0]), mx = mn;
    uint32_t i = 0;
    for (; i + 16 <= d; i += 16) {
        __m512 v = load_x(q, sub, i);
        mn = _mm512_min_ps(mn, v);
        mx = _mm512_max_ps(mx, v);
    }
    if (i < d) { /* d_pad covers the whole register; lanes past d keep the running values */
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1u);
        __m512 v = load_x(q, sub, i);
        mn = _mm512_mask_min_ps(mn, m, mn, v);
        mx = _mm512_mask_max_ps(mx, m, mx, v);
    }
    float vmin = _mm512_reduce_min_ps(mn), vmax = _mm512_reduce_max_ps(mx);
    float delta = (vmax - vmin) / 15.0f, inv = delta > 0.0f ? 1.0f / delta : 0.0f;
    const __m512 vmn = _mm512_set1_ps(vmin), vinv = _mm512_set1_ps(inv), half = _mm512_set1_ps(0.5f);
    const __m512i fifteen = _mm512_set1_epi32(15);
    for (i = 0; i < d_pad; i += 16) {
        __m512 v = load_x(q, sub, i);
        __m512i u = _mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v, vmn), vinv), half));
        u = _mm512_min_epi32(u, fifteen);
        __mmask16 valid = d >= i + 16 ? (__mmask16)0xffff
                                      : (d > i ? (__mmask16)((1u << (d - i)) - 1u) : (__mmask16)0);
        _mm_storeu_si128((__m128i *)(qu + i), _mm512_cvtepi32_epi8(_mm512_maskz_mov_epi32(valid, u)));
    }
    const __m512i c0 = lane_ctrl(0), c1 = lane_ctrl(1), c2 = lane_ctrl(2), c3 = lane_ctrl(3);
    for (uint32_t g = 0; g < d_pad / 4; g += 4) {
        __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(qu + 4 * g)));
        __m512i acc = _mm512_maskz_shuffle_epi8(0xAAAAAAAAAAAAAAAAull, b, c0);
        acc = _mm512_add_epi8(acc, _mm512_maskz_shuffle_epi8(0xCCCCCCCCCCCCCCCCull, b, c1));
        acc = _mm512_add_epi8(acc, _mm512_maskz_shuffle_epi8(0xF0F0F0F0F0F0F0F0ull, b, c2));
        acc = _mm512_add_epi8(acc, _mm512_maskz_shuffle_epi8(0xFF00FF00FF00FF00ull, b, c3));
        _mm512_storeu_si512((void *)(lut + (size_t)g * 16), acc);
    }
    *vmin_out = vmin;
    *delta_out = delta;
}

static uint32_t estimate_block_avx512(const uint32_t *S, const float *fa, const float *fr,
                                      const float *fe, const float *fp, const kvqi_block_consts *c,
                                      float *dist, float *err) {
    const __m512 delta = _mm512_set1_ps(c->delta), vmin = _mm512_set1_ps(c->vmin),
                 sum_q = _mm512_set1_ps(c->sum_q), K = _mm512_set1_ps(c->K),
                 alpha = _mm512_set1_ps(c->alpha), ferr = _mm512_set1_ps(c->ferr),
                 qerr = _mm512_set1_ps(c->qerr), tau = _mm512_set1_ps(c->tau), two = _mm512_set1_ps(2.0f);
    uint32_t mask = 0;
    for (unsigned h = 0; h < KVQI_FS_BLOCK; h += 16) {
        __m512 s = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(S + h)));
        __m512 r = _mm512_loadu_ps(fr + h);
        __m512 sbq = _mm512_add_ps(_mm512_mul_ps(delta, s), _mm512_mul_ps(vmin, _mm512_loadu_ps(fp + h)));
        __m512 ip = _mm512_mul_ps(r, _mm512_sub_ps(_mm512_mul_ps(two, sbq), sum_q));
        __m512 dd = _mm512_sub_ps(_mm512_add_ps(_mm512_loadu_ps(fa + h), K), _mm512_mul_ps(alpha, ip));
        __m512 e1 = _mm512_mul_ps(_mm512_loadu_ps(fe + h), ferr), e2 = _mm512_mul_ps(r, qerr);
        __m512 e = _mm512_sqrt_ps(_mm512_add_ps(_mm512_mul_ps(e1, e1), _mm512_mul_ps(e2, e2)));
        _mm512_storeu_ps(dist + h, dd);
        _mm512_storeu_ps(err + h, e);
        mask |= (uint32_t)_mm512_cmp_ps_mask(_mm512_sub_ps(dd, e), tau, _CMP_LT_OQ) << h;
    }
    return mask;
}

static inline __m512 probe_term(const float *ct, const float *q, uint32_t j, int ip) {
    __m512 x = _mm512_loadu_ps(ct + (size_t)j * 16), qj = _mm512_set1_ps(q[j]);
    if (ip) return _mm512_mul_ps(x, qj);
    __m512 t = _mm512_sub_ps(x, qj);
    return _mm512_mul_ps(t, t);
}

static void probe16_avx512(const float *ct, const float *q, uint32_t d, int ip, float out[16]) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    uint32_t j = 0;
    for (; j + 4 <= d; j += 4) { /* coordinate j adds into partial sum j % 4 */
        a0 = _mm512_add_ps(a0, probe_term(ct, q, j, ip));
        a1 = _mm512_add_ps(a1, probe_term(ct, q, j + 1, ip));
        a2 = _mm512_add_ps(a2, probe_term(ct, q, j + 2, ip));
        a3 = _mm512_add_ps(a3, probe_term(ct, q, j + 3, ip));
    }
    if (j < d) a0 = _mm512_add_ps(a0, probe_term(ct, q, j, ip));
    if (j + 1 < d) a1 = _mm512_add_ps(a1, probe_term(ct, q, j + 1, ip));
    if (j + 2 < d) a2 = _mm512_add_ps(a2, probe_term(ct, q, j + 2, ip));
    __m512 sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    if (ip) sum = _mm512_sub_ps(_mm512_setzero_ps(), sum);
    _mm512_storeu_ps(out, sum);
}

static inline __m512 probe_term_x(__m512 x, const float *q, uint32_t j, int ip) {
    __m512 qj = _mm512_set1_ps(q[j]);
    if (ip) return _mm512_mul_ps(x, qj);
    __m512 t = _mm512_sub_ps(x, qj);
    return _mm512_mul_ps(t, t);
}

/* Four queries at once, each with probe16's four partial sums: every coordinate row of
 * the 16 centroids is loaded once for the four. */
static void probe16_x4_avx512(const float *ct, const float *q, size_t qs, uint32_t d, int ip,
                              float *out) {
    const float *q0 = q, *q1 = q + qs, *q2 = q + 2 * qs, *q3 = q + 3 * qs;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;
#define STEP(p, j, x)                                    \
    do {                                                 \
        a0##p = _mm512_add_ps(a0##p, probe_term_x(x, q0, j, ip)); \
        a1##p = _mm512_add_ps(a1##p, probe_term_x(x, q1, j, ip)); \
        a2##p = _mm512_add_ps(a2##p, probe_term_x(x, q2, j, ip)); \
        a3##p = _mm512_add_ps(a3##p, probe_term_x(x, q3, j, ip)); \
    } while (0)
    uint32_t j = 0;
    for (; j + 4 <= d; j += 4) {
        __m512 x0 = _mm512_loadu_ps(ct + (size_t)j * 16), x1 = _mm512_loadu_ps(ct + (size_t)(j + 1) * 16);
        __m512 x2 = _mm512_loadu_ps(ct + (size_t)(j + 2) * 16), x3 = _mm512_loadu_ps(ct + (size_t)(j + 3) * 16);
        STEP(0, j, x0);
        STEP(1, j + 1, x1);
        STEP(2, j + 2, x2);
        STEP(3, j + 3, x3);
    }
    if (j < d) STEP(0, j, _mm512_loadu_ps(ct + (size_t)j * 16));
    if (j + 1 < d) STEP(1, j + 1, _mm512_loadu_ps(ct + (size_t)(j + 1) * 16));
    if (j + 2 < d) STEP(2, j + 2, _mm512_loadu_ps(ct + (size_t)(j + 2) * 16));
#undef STEP
    __m512 s0 = _mm512_add_ps(_mm512_add_ps(a00, a01), _mm512_add_ps(a02, a03));
    __m512 s1 = _mm512_add_ps(_mm512_add_ps(a10, a11), _mm512_add_ps(a12, a13));
    __m512 s2 = _mm512_add_ps(_mm512_add_ps(a20, a21), _mm512_add_ps(a22, a23));
    __m512 s3 = _mm512_add_ps(_mm512_add_ps(a30, a31), _mm512_add_ps(a32, a33));
    if (ip) {
        const __m512 z = _mm512_setzero_ps();
        s0 = _mm512_sub_ps(z, s0);
        s1 = _mm512_sub_ps(z, s1);
        s2 = _mm512_sub_ps(z, s2);
        s3 = _mm512_sub_ps(z, s3);
    }
    _mm512_storeu_ps(out, s0);
    _mm512_storeu_ps(out + 16, s1);
    _mm512_storeu_ps(out + 32, s2);
    _mm512_storeu_ps(out + 48, s3);
}

static void probe16_multi_avx512(const float *ct, const float *q, size_t q_stride, uint32_t nq,
                                 uint32_t d, int ip, float *out) {
    uint32_t b = 0;
    for (; b + 4 <= nq; b += 4) probe16_x4_avx512(ct, q + b * q_stride, q_stride, d, ip, out + 16 * b);
    for (; b < nq; b++) probe16_avx512(ct, q + b * q_stride, d, ip, out + 16 * b);
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

static const uint32_t pk_ctrl[8][16] = KVQI_PK_TABLE(KVQI_PK_CTRL);
static const uint32_t pk_shift[8][16] = KVQI_PK_TABLE(KVQI_PK_SHIFT);

/* 16 values per step: the run's 2b bytes in every 128-bit lane, one byte shuffle puts
 * each value's one or two bytes in its 32-bit lane, a variable shift and a mask finish. */
static float dot_packed_avx512(const uint8_t *code, unsigned bits, const float *q, size_t n) {
    const __m512i ctrl = _mm512_loadu_si512((const void *)pk_ctrl[bits - 1]);
    const __m512i shift = _mm512_loadu_si512((const void *)pk_shift[bits - 1]);
    const __m512i mask = _mm512_set1_epi32((int)((1u << bits) - 1u));
    const __mmask16 run = (__mmask16)((1u << (2 * bits)) - 1u);
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16, code += 2 * bits) {
        __m512i x = _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(run, code));
        __m512i v = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(x, ctrl), shift), mask);
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_loadu_ps(q + i)));
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
    KVQ_ISA_AVX512,        fastscan_avx512, build_lut4_avx512, estimate_block_avx512,
    probe16_avx512,        dot_u8_avx512,         dot_packed_avx512, l2sq_avx512,     l2sq_f16_avx512,   dot_avx512,
    dot_f16_avx512,        probe16_multi_avx512,
};
