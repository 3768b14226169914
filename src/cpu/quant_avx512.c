/*
 * quant_avx512.c - AVX-512 (F/BW/VL/DQ/VPOPCNTDQ) quantizer kernels. Codes come out bit
 * for bit as quant_scalar.c's: indices are threshold counts, norms and |y| sums use the
 * canonical 16-lane order, the Hadamard butterflies are the scalar order.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"

/* indices (one byte each) of 16 values: #{k : v > thr[k]} */
static inline __m512i count_above(__m512 v, const float *thr, unsigned n_thr) {
    __m512i idx = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi32(1);
    for (unsigned k = 0; k < n_thr; k++) {
        __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(thr[k]), _CMP_GT_OQ);
        idx = _mm512_mask_add_epi32(idx, m, idx, one);
    }
    return idx;
}

/* Pack n one-byte indices of `bits` bits LSB-first (bytes for the whole stream). */
static void pack_idx(const uint8_t *idx, uint32_t n, unsigned bits, uint8_t *out) {
    if (bits == 8) {
        memcpy(out, idx, n);
        return;
    }
    memset(out, 0, ((size_t)n * bits + 7) / 8);
    if (bits == 4) {
        for (uint32_t i = 0; i < n; i += 2)
            out[i >> 1] = (uint8_t)(idx[i] | (i + 1 < n ? idx[i + 1] << 4 : 0));
        return;
    }
    if (bits == 2) {
        for (uint32_t i = 0; i < n; i++) out[i >> 2] |= (uint8_t)(idx[i] << ((i & 3) * 2));
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        size_t bit = (size_t)i * bits;
        unsigned shift = (unsigned)(bit & 7);
        out[bit >> 3] |= (uint8_t)(idx[i] << shift);
        if (shift + bits > 8) out[(bit >> 3) + 1] |= (uint8_t)(idx[i] >> (8 - shift));
    }
}

static void unpack_idx(const uint8_t *p, uint32_t n, unsigned bits, uint8_t *idx) {
    if (bits == 8) {
        memcpy(idx, p, n);
        return;
    }
    if (bits == 4) {
        uint32_t i = 0;
        for (; i + 32 <= n; i += 32) {
            __m128i b = _mm_loadu_si128((const __m128i *)(p + i / 2));
            __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F));
            __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
            _mm_storeu_si128((__m128i *)(idx + i), _mm_unpacklo_epi8(lo, hi));
            _mm_storeu_si128((__m128i *)(idx + i + 16), _mm_unpackhi_epi8(lo, hi));
        }
        for (; i < n; i++) idx[i] = (uint8_t)((p[i >> 1] >> ((i & 1) * 4)) & 15);
        return;
    }
    if (bits == 1) {
        uint32_t i = 0;
        for (; i + 64 <= n; i += 64) {
            __mmask64 m;
            memcpy(&m, p + i / 8, 8);
            _mm512_storeu_si512((void *)(idx + i), _mm512_maskz_mov_epi8(m, _mm512_set1_epi8(1)));
        }
        for (; i < n; i++) idx[i] = (uint8_t)((p[i >> 3] >> (i & 7)) & 1);
        return;
    }
    const unsigned mask = (1u << bits) - 1u;
    for (uint32_t i = 0; i < n; i++) {
        size_t bit = (size_t)i * bits;
        unsigned shift = (unsigned)(bit & 7);
        unsigned v = p[bit >> 3] >> shift;
        if (shift + bits > 8) v |= (unsigned)p[(bit >> 3) + 1] << (8 - shift);
        idx[i] = (uint8_t)(v & mask);
    }
}

/* For b <= 4 the count of thresholds below v is found by binary search over the sorted
 * thresholds held in one register (b steps instead of 2^b - 1 compares); the same count. */
static inline __m512i count_above_bsearch(__m512 v, __m512 thr_vec, unsigned bits) {
    __m512i idx = _mm512_setzero_si512();
    for (int step = 1 << (bits - 1); step >= 1; step >>= 1) {
        const __m512i st = _mm512_set1_epi32(step);
        __m512 t = _mm512_permutexvar_ps(_mm512_sub_epi32(_mm512_add_epi32(idx, st), _mm512_set1_epi32(1)), thr_vec);
        idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(v, t, _CMP_GT_OQ), idx, st);
    }
    return idx;
}

static void quantize_pack_avx512(const float *x, uint32_t n, float scale, const float *thr,
                                 unsigned bits, uint8_t *out) {
    unsigned n_thr = (1u << bits) - 1u;
    const __m512 s = _mm512_set1_ps(scale);
    if (bits >= 2 && bits <= 4 && n % 16 == 0) {
        float tv[16];
        for (unsigned k = 0; k < 16; k++) tv[k] = k < n_thr ? thr[k] : INFINITY;
        const __m512 thr_vec = _mm512_loadu_ps(tv);
        const __m128i w_pair = bits == 4 ? _mm_set1_epi16(0x1001) : _mm_set1_epi16(0x0401);
        const __m512i sh3 = _mm512_set_epi64(21, 18, 15, 12, 9, 6, 3, 0);
        for (uint32_t i = 0; i < n; i += 16) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), s);
            __m512i idx = count_above_bsearch(v, thr_vec, bits);
            if (bits == 3) { /* 16 x 3 bits = 6 bytes: shift into 64-bit lanes and or */
                uint64_t lo = (uint64_t)_mm512_reduce_or_epi64(
                    _mm512_sllv_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(idx)), sh3));
                uint64_t hi = (uint64_t)_mm512_reduce_or_epi64(
                    _mm512_sllv_epi64(_mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(idx, 1)), sh3));
                uint64_t w = lo | (hi << 24);
                memcpy(out + i / 16 * 6, &w, 6);
                continue;
            }
            __m128i b8 = _mm512_cvtepi32_epi8(idx);
            __m128i p16 = _mm_maddubs_epi16(b8, w_pair);
            if (bits == 4) {
                _mm_storel_epi64((__m128i *)(out + i / 2), _mm_packus_epi16(p16, p16));
            } else {
                __m128i p32 = _mm_madd_epi16(p16, _mm_set1_epi32(0x00100001));
                __m128i p8 = _mm_packus_epi16(_mm_packus_epi32(p32, p32), _mm_setzero_si128());
                uint32_t w = (uint32_t)_mm_cvtsi128_si32(p8);
                memcpy(out + i / 4, &w, 4);
            }
        }
        return;
    }
    if (bits == 1) {
        memset(out, 0, ((size_t)n + 7) / 8);
        const __m512 t = _mm512_set1_ps(thr[0]);
        uint32_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __mmask16 m = _mm512_cmp_ps_mask(_mm512_mul_ps(_mm512_loadu_ps(x + i), s), t, _CMP_GT_OQ);
            out[i / 8] = (uint8_t)m;
            out[i / 8 + 1] = (uint8_t)(m >> 8);
        }
        for (; i < n; i++)
            if (x[i] * scale > thr[0]) out[i >> 3] |= (uint8_t)(1u << (i & 7));
        return;
    }
    if ((bits == 2 || bits == 4) && n % 16 == 0) {
        /* 16 indices -> 16 bytes -> 2b bytes: pairs (and quads) combined by
         * multiply-add of small integers, exact */
        const __m128i w_pair = bits == 4 ? _mm_set1_epi16(0x1001) : _mm_set1_epi16(0x0401);
        for (uint32_t i = 0; i < n; i += 16) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), s);
            __m128i b8 = _mm512_cvtepi32_epi8(count_above(v, thr, n_thr));
            __m128i p16 = _mm_maddubs_epi16(b8, w_pair); /* a + 2^b c per pair */
            if (bits == 4) {
                _mm_storel_epi64((__m128i *)(out + i / 2), _mm_packus_epi16(p16, p16));
            } else {
                __m128i p32 = _mm_madd_epi16(p16, _mm_set1_epi32(0x00100001)); /* + 16 * next */
                __m128i p8 = _mm_packus_epi16(_mm_packus_epi32(p32, p32), _mm_setzero_si128());
                uint32_t w = (uint32_t)_mm_cvtsi128_si32(p8);
                memcpy(out + i / 4, &w, 4);
            }
        }
        return;
    }
    uint8_t idx[4096 + 16];
    uint32_t i = 0;
    for (; i < n; i += 16) {
        __mmask16 lm = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(lm, x + i), s);
        _mm512_mask_cvtepi32_storeu_epi8(idx + i, lm, count_above(v, thr, n_thr));
    }
    pack_idx(idx, n, bits, out);
}

static void sign_pack_avx512(const float *x, uint32_t n, uint8_t *out) {
    memset(out, 0, ((size_t)n + 7) / 8);
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_setzero_ps(), _CMP_GT_OQ);
        out[i / 8] = (uint8_t)m;
        out[i / 8 + 1] = (uint8_t)(m >> 8);
    }
    for (; i < n; i++)
        if (x[i] > 0.0f) out[i >> 3] |= (uint8_t)(1u << (i & 7));
}

/* The 16 indices i0 .. i0+15 (i0 a multiple of 16) of a b-bit stream, b <= 4: their 16b
 * bits start on a byte boundary and fit one 64-bit word (loaded with a byte mask, so
 * nothing past the stream is touched). sh_lo/sh_hi: lane shifts j*b and (j+8)*b. */
typedef struct idx_unpacker {
    __m512i sh_lo, sh_hi, mask;
    __mmask16 bytes;
    unsigned b;
} idx_unpacker;

static inline idx_unpacker idx_unpacker_make(unsigned b) {
    idx_unpacker u;
    const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i step = _mm512_set1_epi64((long long)b);
    u.sh_lo = _mm512_mullo_epi64(lanes, step);
    u.sh_hi = _mm512_mullo_epi64(_mm512_add_epi64(lanes, _mm512_set1_epi64(8)), step);
    u.mask = _mm512_set1_epi32((1 << b) - 1);
    u.bytes = (__mmask16)((1u << (2 * b)) - 1u);
    u.b = b;
    return u;
}

static inline __m512i idx16_packed(const idx_unpacker *u, const uint8_t *p, uint32_t i0) {
    __m512i v = _mm512_broadcastq_epi64(_mm_maskz_loadu_epi8(u->bytes, p + (size_t)i0 * u->b / 8));
    __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srlv_epi64(v, u->sh_lo))),
                                      _mm512_cvtepi64_epi32(_mm512_srlv_epi64(v, u->sh_hi)), 1);
    return _mm512_and_si512(both, u->mask);
}

static inline __mmask16 bits16(const uint8_t *p, uint32_t i0) {
    return (__mmask16)(p[i0 / 8] | (p[i0 / 8 + 1] << 8));
}

/* 16 table entries from 16 byte indices */
static inline __m512 lut16(const uint8_t *idx, const float *cb, unsigned bits, __m512 table) {
    __m512i i32 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)idx));
    if (bits <= 4) return _mm512_permutexvar_ps(i32, table);
    return _mm512_i32gather_ps(i32, cb, 4);
}

static void lut_decode_avx512(const uint8_t *packed, uint32_t n, unsigned bits, const float *cb,
                              float scale, float *out) {
    if (bits == 1 && n % 16 == 0) {
        const __m512 c0 = _mm512_set1_ps(cb[0] * scale), c1 = _mm512_set1_ps(cb[1] * scale);
        for (uint32_t i = 0; i < n; i += 16)
            _mm512_storeu_ps(out + i, _mm512_mask_blend_ps(bits16(packed, i), c0, c1));
        return;
    }
    if (bits <= 4 && n % 16 == 0) {
        float tab[16] = {0};
        memcpy(tab, cb, sizeof(float) * (1u << bits));
        const __m512 table = _mm512_loadu_ps(tab), s = _mm512_set1_ps(scale);
        const idx_unpacker u = idx_unpacker_make(bits);
        for (uint32_t i = 0; i < n; i += 16)
            _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_permutexvar_ps(idx16_packed(&u, packed, i), table), s));
        return;
    }
    uint8_t idx[4096 + 16];
    unpack_idx(packed, n, bits, idx);
    memset(idx + n, 0, 16);
    float tab[16] = {0};
    memcpy(tab, cb, sizeof(float) * (bits <= 4 ? (1u << bits) : 16u));
    const __m512 table = _mm512_loadu_ps(tab), s = _mm512_set1_ps(scale);
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_mul_ps(lut16(idx + i, cb, bits, table), s));
    for (; i < n; i++) out[i] = cb[idx[i]] * scale;
}

static float lut_dot_avx512(const float *q, const uint8_t *packed, uint32_t n, unsigned bits,
                            const float *cb) {
    if (bits == 1 && n % 16 == 0) {
        const __m512 c0 = _mm512_set1_ps(cb[0]), c1 = _mm512_set1_ps(cb[1]);
        __m512 acc = _mm512_setzero_ps();
        for (uint32_t i = 0; i < n; i += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_mask_blend_ps(bits16(packed, i), c0, c1), acc);
        return _mm512_reduce_add_ps(acc);
    }
    if (bits <= 4 && n % 16 == 0) {
        float tab[16] = {0};
        memcpy(tab, cb, sizeof(float) * (1u << bits));
        const __m512 table = _mm512_loadu_ps(tab);
        const idx_unpacker u = idx_unpacker_make(bits);
        __m512 acc = _mm512_setzero_ps();
        for (uint32_t i = 0; i < n; i += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i),
                                  _mm512_permutexvar_ps(idx16_packed(&u, packed, i), table), acc);
        return _mm512_reduce_add_ps(acc);
    }
    uint8_t idx[4096 + 16];
    unpack_idx(packed, n, bits, idx);
    memset(idx + n, 0, 16);
    float tab[16] = {0};
    memcpy(tab, cb, sizeof(float) * (bits <= 4 ? (1u << bits) : 16u));
    const __m512 table = _mm512_loadu_ps(tab);
    __m512 acc = _mm512_setzero_ps();
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), lut16(idx + i, cb, bits, table), acc);
    float r = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) r += q[i] * cb[idx[i]];
    return r;
}

static float masked_sum_avx512(const float *z, const uint8_t *bits, uint32_t n) {
    __m512 acc = _mm512_setzero_ps();
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __mmask16 m = (__mmask16)(bits[i / 8] | (bits[i / 8 + 1] << 8));
        acc = _mm512_mask_add_ps(acc, m, acc, _mm512_loadu_ps(z + i));
    }
    float r = _mm512_reduce_add_ps(acc);
    for (; i < n; i++)
        if ((bits[i >> 3] >> (i & 7)) & 1) r += z[i];
    return r;
}

static uint32_t and_popcount_avx512(const uint8_t *a, const uint8_t *b, size_t nbytes) {
    __m512i acc = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 64 <= nbytes; i += 64)
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(
                                        _mm512_loadu_si512((const void *)(a + i)),
                                        _mm512_loadu_si512((const void *)(b + i)))));
    if (i < nbytes) {
        __mmask64 m = nbytes - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (nbytes - i)) - 1);
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(
                                        _mm512_maskz_loadu_epi8(m, a + i),
                                        _mm512_maskz_loadu_epi8(m, b + i))));
    }
    return (uint32_t)_mm512_reduce_add_epi64(acc);
}

/* Codes of up to 64 bytes (d <= 512) in one register; longer ones chunk by chunk. */
static uint32_t popcount_planes_avx512(const uint8_t *code, const uint8_t *planes,
                                       size_t plane_stride, unsigned n_planes, size_t nbytes,
                                       uint32_t *pop_code) {
    __m512i acc = _mm512_setzero_si512(), pc = _mm512_setzero_si512();
    for (size_t i = 0; i < nbytes; i += 64) {
        const __mmask64 m = nbytes - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (nbytes - i)) - 1);
        const __m512i c = _mm512_maskz_loadu_epi8(m, code + i);
        pc = _mm512_add_epi64(pc, _mm512_popcnt_epi64(c));
        for (unsigned j = 0; j < n_planes; j++) {
            __m512i p = _mm512_maskz_loadu_epi8(m, planes + j * plane_stride + i);
            acc = _mm512_add_epi64(acc, _mm512_slli_epi64(_mm512_popcnt_epi64(_mm512_and_si512(c, p)), j));
        }
    }
    *pop_code = (uint32_t)_mm512_reduce_add_epi64(pc);
    return (uint32_t)_mm512_reduce_add_epi64(acc);
}

static void fp16_from_f32_avx512(const float *x, size_t n, uint16_t *out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) out[i] = kvqi_fp32_to_fp16(x[i]);
}

static void fp16_to_f32_avx512(const uint16_t *h, size_t n, float *out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; i++) out[i] = kvqi_fp16_to_fp32(h[i]);
}

static float fp16_dot_avx512(const float *q, const uint16_t *h, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i),
                              _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))), acc);
    float r = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) r += q[i] * kvqi_fp16_to_fp32(h[i]);
    return r;
}

static inline float sqrt_ss(float x) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(x))); }

/* F16C conversions: IEEE round-to-nearest-even, the same bits as kvqi_fp32_to_fp16 (NaNs
 * included: quiet bit set, payload truncated), and no call that would spill the row. */
static inline uint16_t half_from(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline float half_to(uint16_t h) { return _cvtsh_ss(h); }

/* nv 16-bit masks (nv a multiple of 4) stored as 2*nv bytes, 64 bits at a time. */
static inline void store_masks(uint8_t *out, const __mmask16 *m, uint32_t nv) {
    for (uint32_t j = 0; j < nv; j += 4) {
        __mmask64 w = _mm512_kunpackd(_mm512_kunpackw(m[j + 3], m[j + 2]), _mm512_kunpackw(m[j + 1], m[j]));
        memcpy(out + 2 * j, &w, 8);
    }
}

/* Canonical fold of 16 lanes: j += j+8, j += j+4, j += j+2, j += j+1. */
static inline float fold16(__m512 acc) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(acc),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
}

/* The four in-register butterfly stages (h = 1, 2, 4, 8), as kvqi_fwht_scalar does them:
 * each is fma(v, +-1, partner): lower lanes v + p (= a + b), upper lanes p - v (= a - b);
 * the multiply by +-1 is exact, so the one rounding equals the scalar add or sub. */
static inline __m512 fwht16(__m512 v) {
    const __m512 s1 = _mm512_castsi512_ps(_mm512_set_epi32(
        (int)0xBF800000, 0x3F800000, (int)0xBF800000, 0x3F800000, (int)0xBF800000, 0x3F800000,
        (int)0xBF800000, 0x3F800000, (int)0xBF800000, 0x3F800000, (int)0xBF800000, 0x3F800000,
        (int)0xBF800000, 0x3F800000, (int)0xBF800000, 0x3F800000));
    const __m512 s2 = _mm512_set_ps(-1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1);
    const __m512 s4 = _mm512_set_ps(-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1);
    const __m512 s8 = _mm512_set_ps(-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1);
    v = _mm512_fmadd_ps(v, s1, _mm512_permute_ps(v, 0xB1));
    v = _mm512_fmadd_ps(v, s2, _mm512_permute_ps(v, 0x4E));
    v = _mm512_fmadd_ps(v, s4, _mm512_shuffle_f32x4(v, v, 0xB1));
    v = _mm512_fmadd_ps(v, s8, _mm512_shuffle_f32x4(v, v, 0x4E));
    return v;
}

/* Whole rows in registers: one function per chunk count (array sized exactly, loops
 * unrolled) so the compiler keeps the row in zmm registers (d = 64, 128, 256). */
#define HAD_SIGN_ROWS(NV)                                                                    \
    static void had_sign_rows_##NV(const float *x, size_t rows, const float *sign,           \
                                   uint8_t *bits_out, size_t bits_stride, float *norm_out,   \
                                   float *abs_sum_out) {                                     \
        const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));           \
        __m512 v[NV], sg[NV];                                                                \
        _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) sg[j] =                   \
            _mm512_loadu_ps(sign + 16 * j);                                                  \
        for (size_t r = 0; r < rows; r++) {                                                  \
            const float *xr = x + r * NV * 16;                                               \
            __m512 nacc = _mm512_setzero_ps();                                               \
            _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) {                     \
                __m512 a = _mm512_loadu_ps(xr + 16 * j);                                     \
                nacc = _mm512_add_ps(nacc, _mm512_mul_ps(a, a));                             \
                v[j] = fwht16(_mm512_mul_ps(a, sg[j]));                                      \
            }                                                                                \
            norm_out[r] = sqrt_ss(fold16(nacc));                                               \
            _Pragma("GCC unroll 16") for (uint32_t h = 1; h < NV; h <<= 1)                   \
                _Pragma("GCC unroll 16") for (uint32_t k = 0; k < NV / 2; k++) {             \
                const uint32_t j = (k / h) * 2 * h + k % h;                                  \
                __m512 a = v[j], b = v[(j + h) % NV];                                        \
                v[j] = _mm512_add_ps(a, b);                                                  \
                v[(j + h) % NV] = _mm512_sub_ps(a, b);                                       \
            }                                                                                \
            __m512 sacc = _mm512_setzero_ps();                                               \
            __mmask16 ms[NV];                                                                \
            _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) {                     \
                ms[j] = _mm512_cmp_ps_mask(v[j], _mm512_setzero_ps(), _CMP_GT_OQ);           \
                sacc = _mm512_add_ps(sacc, _mm512_and_ps(v[j], absmask));                    \
            }                                                                                \
            store_masks(bits_out + r * bits_stride, ms, NV);                                 \
            if (abs_sum_out) abs_sum_out[r] = fold16(sacc);                                  \
        }                                                                                    \
    }
HAD_SIGN_ROWS(4)
HAD_SIGN_ROWS(8)
HAD_SIGN_ROWS(16)

/* Other powers of two up to 1024: the same steps through a stack row. */
static void had_sign_rows_any(const float *x, size_t rows, const uint32_t nv, const float *sign,
                              uint8_t *bits_out, size_t bits_stride, float *norm_out,
                              float *abs_sum_out) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    __m512 v[64];
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * nv * 16;
        __m512 nacc = _mm512_setzero_ps();
        for (uint32_t j = 0; j < nv; j++) {
            __m512 a = _mm512_loadu_ps(xr + 16 * j);
            nacc = _mm512_add_ps(nacc, _mm512_mul_ps(a, a));
            v[j] = fwht16(_mm512_mul_ps(a, _mm512_loadu_ps(sign + 16 * j)));
        }
        norm_out[r] = sqrt_ss(fold16(nacc));
        for (uint32_t h = 1; h < nv; h <<= 1)
            for (uint32_t i = 0; i < nv; i += h << 1)
                for (uint32_t j = i; j < i + h; j++) {
                    __m512 a = v[j], b = v[j + h];
                    v[j] = _mm512_add_ps(a, b);
                    v[j + h] = _mm512_sub_ps(a, b);
                }
        uint8_t *out = bits_out + r * bits_stride;
        __m512 sacc = _mm512_setzero_ps();
        for (uint32_t j = 0; j < nv; j++) {
            __mmask16 m = _mm512_cmp_ps_mask(v[j], _mm512_setzero_ps(), _CMP_GT_OQ);
            memcpy(out + 2 * j, &m, 2);
            sacc = _mm512_add_ps(sacc, _mm512_and_ps(v[j], absmask));
        }
        if (abs_sum_out) abs_sum_out[r] = fold16(sacc);
    }
}

static void hadamard_sign_batch_avx512(const float *x, size_t rows, uint32_t dim,
                                       const float *sign, uint8_t *bits_out, size_t bits_stride,
                                       float *norm_out, float *abs_sum_out) {
    switch (dim) {
    case 64: had_sign_rows_4(x, rows, sign, bits_out, bits_stride, norm_out, abs_sum_out); return;
    case 128: had_sign_rows_8(x, rows, sign, bits_out, bits_stride, norm_out, abs_sum_out); return;
    case 256: had_sign_rows_16(x, rows, sign, bits_out, bits_stride, norm_out, abs_sum_out); return;
    default:
        if (dim < 16 || dim > 1024) {
            kvqi_quant_scalar.hadamard_sign_batch(x, rows, dim, sign, bits_out, bits_stride,
                                                  norm_out, abs_sum_out);
            return;
        }
        had_sign_rows_any(x, rows, dim / 16, sign, bits_out, bits_stride, norm_out, abs_sum_out);
    }
}

/* turboquant_rvq, 1 bit per pass: the row stays in registers from load to packed bits
 * (one function per chunk count, as for the sign codes). */
/* Rows go through in groups of RVQ_GROUP, one step at a time over the group (rotate, stage
 * 1, each later stage), so the long per-row dependency chain (norm, sqrt, divide, spread)
 * of one row overlaps the work of the others. */
#define RVQ_GROUP 16
#define RVQ1_ROWS(NV)                                                                         \
    static void rvq1_rows_##NV(const float *x, size_t rows, const kvqi_hadamard *had,         \
                               const float *cb_g, const float *thr_g, const float *cb_l,      \
                               const float *thr_l, unsigned residuals, uint8_t *codes,        \
                               size_t code_size) {                                            \
        const uint32_t d = NV * 16;                                                           \
        const float sqrt_d = sqrt_ss((float)d);                                               \
        const __m512 s_b = _mm512_set1_ps((float)(1.0 / sqrt((double)d)));                   \
        const __m512 tg = _mm512_set1_ps(thr_g[0]), g0 = _mm512_set1_ps(cb_g[0]),             \
                     g1 = _mm512_set1_ps(cb_g[1]);                                            \
        const __m512 tl = _mm512_set1_ps(thr_l[0]), l0 = _mm512_set1_ps(cb_l[0]),             \
                     l1 = _mm512_set1_ps(cb_l[1]);                                            \
        __m512 sg[NV];                                                                        \
        __m512 y[RVQ_GROUP][NV];                                                              \
        float sumsq[RVQ_GROUP];                                                               \
        _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) sg[j] =                    \
            _mm512_mul_ps(_mm512_loadu_ps(had->sign1 + 16 * j), s_b);                         \
        for (size_t r0 = 0; r0 < rows; r0 += RVQ_GROUP) {                                     \
            const size_t nr = rows - r0 < RVQ_GROUP ? rows - r0 : RVQ_GROUP;                  \
            for (size_t g = 0; g < nr; g++) {                                                 \
                const float *xr = x + (r0 + g) * d;                                           \
                uint8_t *c = codes + (r0 + g) * code_size;                                    \
                __m512 v[NV];                                                                 \
                __m512 nacc = _mm512_setzero_ps();                                            \
                _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) {                  \
                    __m512 a = _mm512_loadu_ps(xr + 16 * j);                                  \
                    nacc = _mm512_add_ps(nacc, _mm512_mul_ps(a, a));                          \
                    v[j] = fwht16(_mm512_mul_ps(a, sg[j]));                                   \
                }                                                                             \
                _Pragma("GCC unroll 16") for (uint32_t hh = 1; hh < NV; hh <<= 1)             \
                    _Pragma("GCC unroll 16") for (uint32_t k = 0; k < NV / 2; k++) {          \
                    const uint32_t j = (k / hh) * 2 * hh + k % hh;                            \
                    __m512 a = v[j], b = v[(j + hh) % NV];                                    \
                    v[j] = _mm512_add_ps(a, b);                                               \
                    v[(j + hh) % NV] = _mm512_sub_ps(a, b);                                   \
                }                                                                             \
                float norm = sqrt_ss(fold16(nacc));                                           \
                uint16_t h = half_from(norm);                                                 \
                c[0] = (uint8_t)h;                                                            \
                c[1] = (uint8_t)(h >> 8);                                                     \
                const __m512 av = _mm512_set1_ps(norm > 0.0f ? sqrt_d / norm : 0.0f);         \
                uint8_t *bits = c + 2 * residuals;                                            \
                __m512 acc = _mm512_setzero_ps();                                             \
                __mmask16 ms[NV];                                                             \
                _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) {                  \
                    __m512 t = _mm512_mul_ps(v[j], av);                                       \
                    ms[j] = _mm512_cmp_ps_mask(t, tg, _CMP_GT_OQ);                            \
                    __m512 yj = _mm512_sub_ps(t, _mm512_mask_blend_ps(ms[j], g0, g1));        \
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(yj, yj));                          \
                    y[g][j] = yj;                                                             \
                }                                                                             \
                store_masks(bits, ms, NV);                                                    \
                sumsq[g] = fold16(acc);                                                       \
            }                                                                                 \
            for (unsigned st = 1; st < residuals; st++)                                       \
                for (size_t g = 0; g < nr; g++) {                                             \
                    uint8_t *c = codes + (r0 + g) * code_size;                                \
                    __m512 acc = _mm512_setzero_ps();                                         \
                    float spread = sqrt_ss(sumsq[g] / (float)d);                              \
                    uint16_t h = half_from(spread);                                           \
                    c[2 * st] = (uint8_t)h;                                                   \
                    c[2 * st + 1] = (uint8_t)(h >> 8);                                        \
                    float shf = half_to(h);                                                   \
                    const __m512 sh = _mm512_set1_ps(shf),                                    \
                                 inv = _mm512_set1_ps(shf > 0.0f ? 1.0f / shf : 0.0f);        \
                    const __m512 q0 = _mm512_mul_ps(l0, sh), q1 = _mm512_mul_ps(l1, sh);      \
                    uint8_t *pb = c + 2 * residuals + st * (d / 8);                           \
                    const int last = st + 1 == residuals;                                     \
                    __mmask16 ms[NV];                                                         \
                    _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) {              \
                        __mmask16 m = _mm512_cmp_ps_mask(_mm512_mul_ps(y[g][j], inv), tl,     \
                                                         _CMP_GT_OQ);                         \
                        ms[j] = m;                                                            \
                        if (!last) { /* the last residual is never read */                   \
                            __m512 yj = _mm512_sub_ps(y[g][j], _mm512_mask_blend_ps(m, q0, q1)); \
                            acc = _mm512_add_ps(acc, _mm512_mul_ps(yj, yj));                  \
                            y[g][j] = yj;                                                     \
                        }                                                                     \
                    }                                                                         \
                    store_masks(pb, ms, NV);                                                  \
                    if (!last) sumsq[g] = fold16(acc);                                        \
                }                                                                             \
        }                                                                                     \
    }
RVQ1_ROWS(4)
RVQ1_ROWS(8)
RVQ1_ROWS(16)

static void rvq1_batch_avx512(const float *x, size_t rows, const kvqi_hadamard *had,
                              const float *cb_g, const float *thr_g, const float *cb_l,
                              const float *thr_l, unsigned residuals, uint8_t *codes,
                              size_t code_size) {
    if (!had->two_pass && had->dim == 64)
        rvq1_rows_4(x, rows, had, cb_g, thr_g, cb_l, thr_l, residuals, codes, code_size);
    else if (!had->two_pass && had->dim == 128)
        rvq1_rows_8(x, rows, had, cb_g, thr_g, cb_l, thr_l, residuals, codes, code_size);
    else if (!had->two_pass && had->dim == 256)
        rvq1_rows_16(x, rows, had, cb_g, thr_g, cb_l, thr_l, residuals, codes, code_size);
    else
        kvqi_rvq1_batch_scalar(x, rows, had, cb_g, thr_g, cb_l, thr_l, residuals, codes, code_size);
}

/* core's randomized Hadamard for one power-of-two block, in registers: forward scales by
 * sign_i * (1/sqrt(d)) then runs the butterflies; inverse runs them then scales. */
#define HAD_POW2(NV)                                                                          \
    static void had_pow2_##NV(const float *sign, const float *in, float *out, int inverse) { \
        const __m512 s_b = _mm512_set1_ps((float)(1.0 / sqrt((double)(NV * 16))));           \
        __m512 v[NV];                                                                        \
        _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) {                         \
            __m512 a = _mm512_loadu_ps(in + 16 * j);                                         \
            if (!inverse) a = _mm512_mul_ps(a, _mm512_mul_ps(_mm512_loadu_ps(sign + 16 * j), s_b)); \
            v[j] = fwht16(a);                                                                \
        }                                                                                    \
        _Pragma("GCC unroll 16") for (uint32_t hh = 1; hh < NV; hh <<= 1)                    \
            _Pragma("GCC unroll 16") for (uint32_t k = 0; k < NV / 2; k++) {                 \
            const uint32_t j = (k / hh) * 2 * hh + k % hh;                                   \
            __m512 a = v[j], b = v[(j + hh) % NV];                                           \
            v[j] = _mm512_add_ps(a, b);                                                      \
            v[(j + hh) % NV] = _mm512_sub_ps(a, b);                                          \
        }                                                                                    \
        _Pragma("GCC unroll 16") for (uint32_t j = 0; j < NV; j++) {                         \
            __m512 a = v[j];                                                                 \
            if (inverse) a = _mm512_mul_ps(a, _mm512_mul_ps(_mm512_loadu_ps(sign + 16 * j), s_b)); \
            _mm512_storeu_ps(out + 16 * j, a);                                               \
        }                                                                                    \
    }
HAD_POW2(4)
HAD_POW2(8)
HAD_POW2(16)

static void hadamard_pow2_avx512(const kvqi_hadamard *had, const float *in, float *out, int inverse) {
    if (!had->two_pass && had->dim == 64) had_pow2_4(had->sign1, in, out, inverse);
    else if (!had->two_pass && had->dim == 128) had_pow2_8(had->sign1, in, out, inverse);
    else if (!had->two_pass && had->dim == 256) had_pow2_16(had->sign1, in, out, inverse);
    else kvqi_hadamard_pow2_scalar(had, in, out, inverse);
}

/* ------------------------------------------------- llama.cpp q8_0 / q4_0 */

static inline float load_half(const uint8_t *p) { return _cvtsh_ss((unsigned short)(p[0] | p[1] << 8)); }

/* roundf: half away from zero, exactly (v - trunc(v) is exact) */
static inline __m512 round_away(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    __mmask16 up = _mm512_cmp_ps_mask(_mm512_and_ps(_mm512_sub_ps(v, t), absmask), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_andnot_ps(absmask, v));
    return _mm512_mask_add_ps(t, up, t, one);
}

static void q8_0_encode_avx512(const float *x, uint32_t nb, uint8_t *out) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    for (uint32_t b = 0; b < nb; b++, x += 32, out += 34) {
        __m512 a = _mm512_loadu_ps(x), c = _mm512_loadu_ps(x + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(a, absmask), _mm512_and_ps(c, absmask)));
        const float d = amax / ((1 << 7) - 1);
        const float id = kvqi_block_inv(d);
        const uint16_t h = kvqi_fp32_to_fp16(d);
        out[0] = (uint8_t)h;
        out[1] = (uint8_t)(h >> 8);
        const __m512 iv = _mm512_set1_ps(id);
        __m512i qa = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(a, iv)));
        __m512i qc = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(c, iv)));
        _mm_storeu_si128((__m128i *)(out + 2), _mm512_cvtepi32_epi8(qa));
        _mm_storeu_si128((__m128i *)(out + 18), _mm512_cvtepi32_epi8(qc));
    }
}

static void q8_0_decode_avx512(const uint8_t *in, uint32_t nb, float *out) {
    for (uint32_t b = 0; b < nb; b++, in += 34, out += 32) {
        const __m512 d = _mm512_set1_ps(load_half(in));
        __m512i lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(in + 2)));
        __m512i hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(in + 18)));
        _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d));
        _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d));
    }
}

static float q8_0_dot_avx512(const float *q, const uint8_t *in, uint32_t nb) {
    __m512 acc = _mm512_setzero_ps();
    for (uint32_t b = 0; b < nb; b++, in += 34, q += 32) {
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(in + 2))));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(in + 18))));
        __m512 s = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16), hi, _mm512_mul_ps(_mm512_loadu_ps(q), lo));
        acc = _mm512_fmadd_ps(s, _mm512_set1_ps(load_half(in)), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static void q4_0_encode_avx512(const float *x, uint32_t nb, uint8_t *out) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    for (uint32_t b = 0; b < nb; b++, x += 32, out += 18) {
        __m512 a = _mm512_loadu_ps(x), c = _mm512_loadu_ps(x + 16);
        __m512 aa = _mm512_and_ps(a, absmask), ac = _mm512_and_ps(c, absmask);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(aa, ac));
        /* the first element of largest magnitude, signed (the reference's strict <) */
        uint32_t hit = (uint32_t)_mm512_cmp_ps_mask(aa, _mm512_set1_ps(amax), _CMP_EQ_OQ) |
                       (uint32_t)_mm512_cmp_ps_mask(ac, _mm512_set1_ps(amax), _CMP_EQ_OQ) << 16;
        const float max = amax > 0.0f ? x[__builtin_ctz(hit)] : 0.0f;
        const float d = max / -8;
        const float id = kvqi_block_inv(d);
        const uint16_t h = kvqi_fp32_to_fp16(d);
        out[0] = (uint8_t)h;
        out[1] = (uint8_t)(h >> 8);
        const __m512 iv = _mm512_set1_ps(id), half8 = _mm512_set1_ps(8.5f);
        const __m512i fifteen = _mm512_set1_epi32(15);
        __m512i q0 = _mm512_min_epi32(_mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(a, iv), half8)), fifteen);
        __m512i q1 = _mm512_min_epi32(_mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(c, iv), half8)), fifteen);
        _mm_storeu_si128((__m128i *)(out + 2), _mm512_cvtepi32_epi8(_mm512_or_si512(q0, _mm512_slli_epi32(q1, 4))));
    }
}

static inline void q4_block_values(const uint8_t *in, __m512 *lo, __m512 *hi) {
    __m128i b = _mm_loadu_si128((const __m128i *)(in + 2));
    __m512i v = _mm512_cvtepu8_epi32(b);
    const __m512i eight = _mm512_set1_epi32(8), mask = _mm512_set1_epi32(15);
    *lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(v, mask), eight));
    *hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(v, 4), eight));
}

static void q4_0_decode_avx512(const uint8_t *in, uint32_t nb, float *out) {
    for (uint32_t b = 0; b < nb; b++, in += 18, out += 32) {
        const __m512 d = _mm512_set1_ps(load_half(in));
        __m512 lo, hi;
        q4_block_values(in, &lo, &hi);
        _mm512_storeu_ps(out, _mm512_mul_ps(lo, d));
        _mm512_storeu_ps(out + 16, _mm512_mul_ps(hi, d));
    }
}

static float q4_0_dot_avx512(const float *q, const uint8_t *in, uint32_t nb) {
    __m512 acc = _mm512_setzero_ps();
    for (uint32_t b = 0; b < nb; b++, in += 18, q += 32) {
        __m512 lo, hi;
        q4_block_values(in, &lo, &hi);
        __m512 s = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16), hi, _mm512_mul_ps(_mm512_loadu_ps(q), lo));
        acc = _mm512_fmadd_ps(s, _mm512_set1_ps(load_half(in)), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

const kvqi_quant_kernels kvqi_quant_avx512 = {
    KVQ_ISA_AVX512,       quantize_pack_avx512, sign_pack_avx512,     lut_decode_avx512,
    lut_dot_avx512,       masked_sum_avx512,    and_popcount_avx512,  popcount_planes_avx512,
    fp16_from_f32_avx512,
    fp16_to_f32_avx512,   fp16_dot_avx512,      hadamard_sign_batch_avx512,
    rvq1_batch_avx512,    hadamard_pow2_avx512, q8_0_encode_avx512,   q8_0_decode_avx512,   q8_0_dot_avx512,
    q4_0_encode_avx512,   q4_0_decode_avx512,   q4_0_dot_avx512,
};
