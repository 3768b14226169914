/*
 * engine_avx2.c - AVX2+FMA+F16C row kernels of the GGUF engine: a quantized weight row
 * (Q4_0, Q4_1, Q8_0, F16, F32) times a float vector, unpacking each block in registers.
 * The scalar references are in engine/dequant.c; tests compare the two.
 */
#include <immintrin.h>
#include <string.h>

#include "cpu/x86_dot.h"
#include "engine/engine.h"

/* round to nearest, ties to even (a macro: clang wants the immediate as a constant) */
#define ROUND_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static float dot_f32_avx2(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float sum = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static float row_dot_f32_avx2(const void *row, const float *x, size_t n) { return dot_f32_avx2(row, x, n); }

static float row_dot_f16_avx2(const void *row, const float *x, size_t n) {
    const uint8_t *p = row;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i + 16)));
        s0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), s0);
        s1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), s1);
    }
    float sum = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) sum += h2f(p + 2 * i) * x[i];
    return sum;
}

/* 32 nibbles of a Q4 block: low nibbles are elements 0..15, high nibbles 16..31.
 * Returns sum(q * x) and sets *xs to the block's sum of x. */
static inline __m256 q4_block(const uint8_t *qs, const float *x, __m256 *xs) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(q, mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
    __m256 x2 = _mm256_loadu_ps(x + 16), x3 = _mm256_loadu_ps(x + 24);
    __m256 s = _mm256_mul_ps(f0, x0);
    s = _mm256_fmadd_ps(f1, x1, s);
    s = _mm256_fmadd_ps(f2, x2, s);
    s = _mm256_fmadd_ps(f3, x3, s);
    *xs = _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3));
    return s;
}

static float row_dot_q4_0_avx2(const void *row, const float *x, size_t n) {
    const uint8_t *b = row;
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < n / 32; i++, b += 18, x += 32) {
        __m256 xs;
        __m256 s = q4_block(b + 2, x, &xs);
        float d = h2f(b);
        /* (q - 8) d: sum(q x) d - 8 d sum(x) */
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(-8.0f * d), xs, acc);
    }
    return hsum256(acc);
}

static float row_dot_q4_1_avx2(const void *row, const float *x, size_t n) {
    const uint8_t *b = row;
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < n / 32; i++, b += 20, x += 32) {
        __m256 xs;
        __m256 s = q4_block(b + 4, x, &xs);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b)), s, acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b + 2)), xs, acc);
    }
    return hsum256(acc);
}

static float row_dot_q8_0_avx2(const void *row, const float *x, size_t n) {
    const uint8_t *b = row;
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < n / 32; i++, b += 34, x += 32) {
        __m128i q0 = _mm_loadu_si128((const __m128i *)(b + 2));
        __m128i q1 = _mm_loadu_si128((const __m128i *)(b + 18));
        __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0));
        __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8)));
        __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1));
        __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8)));
        __m256 s = _mm256_mul_ps(f0, _mm256_loadu_ps(x));
        s = _mm256_fmadd_ps(f1, _mm256_loadu_ps(x + 8), s);
        s = _mm256_fmadd_ps(f2, _mm256_loadu_ps(x + 16), s);
        s = _mm256_fmadd_ps(f3, _mm256_loadu_ps(x + 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b)), s, acc);
    }
    return hsum256(acc);
}

static void q4_to_float(const uint8_t *qs, float d, float m, float *out) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(q, mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), vd, vm));
    _mm256_storeu_ps(out + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), vd, vm));
    _mm256_storeu_ps(out + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), vd, vm));
    _mm256_storeu_ps(out + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), vd, vm));
}

static void q4_0_to_float_avx2(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 18, out += 32) {
        float d = h2f(b);
        q4_to_float(b + 2, d, -8.0f * d, out);
    }
}

static void q4_1_to_float_avx2(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 20, out += 32) q4_to_float(b + 4, h2f(b), h2f(b + 2), out);
}

static void q8_0_to_float_avx2(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 34, out += 32) {
        __m256 vd = _mm256_set1_ps(h2f(b));
        __m128i q0 = _mm_loadu_si128((const __m128i *)(b + 2));
        __m128i q1 = _mm_loadu_si128((const __m128i *)(b + 18));
        _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)), vd));
        _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))), vd));
        _mm256_storeu_ps(out + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)), vd));
        _mm256_storeu_ps(out + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))), vd));
    }
}

static void f16_to_float_avx2(const void *row, float *out, size_t n) {
    const uint8_t *p = row;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
    for (; i < n; i++) out[i] = h2f(p + 2 * i);
}

/* 4 rows x 3 tokens of accumulators (12 registers) plus the 4 row loads: each loaded
 * vector feeds 3 or 4 multiply-adds instead of one, which is what a dot per pair costs. */
static void gemm4_f32_avx2(const float *w, size_t n, const float *x, size_t n_tok, float *y, size_t y_stride) {
    const float *w0 = w, *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
    size_t n8 = n & ~(size_t)7;
    size_t t = 0;
    for (; t + 3 <= n_tok; t += 3) {
        const float *x0 = x + t * n, *x1 = x0 + n, *x2 = x1 + n;
        __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a02 = _mm256_setzero_ps();
        __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps(), a12 = _mm256_setzero_ps();
        __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a22 = _mm256_setzero_ps();
        __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps(), a32 = _mm256_setzero_ps();
        for (size_t i = 0; i < n8; i += 8) {
            __m256 v0 = _mm256_loadu_ps(x0 + i), v1 = _mm256_loadu_ps(x1 + i), v2 = _mm256_loadu_ps(x2 + i);
            __m256 r = _mm256_loadu_ps(w0 + i);
            a00 = _mm256_fmadd_ps(r, v0, a00);
            a01 = _mm256_fmadd_ps(r, v1, a01);
            a02 = _mm256_fmadd_ps(r, v2, a02);
            r = _mm256_loadu_ps(w1 + i);
            a10 = _mm256_fmadd_ps(r, v0, a10);
            a11 = _mm256_fmadd_ps(r, v1, a11);
            a12 = _mm256_fmadd_ps(r, v2, a12);
            r = _mm256_loadu_ps(w2 + i);
            a20 = _mm256_fmadd_ps(r, v0, a20);
            a21 = _mm256_fmadd_ps(r, v1, a21);
            a22 = _mm256_fmadd_ps(r, v2, a22);
            r = _mm256_loadu_ps(w3 + i);
            a30 = _mm256_fmadd_ps(r, v0, a30);
            a31 = _mm256_fmadd_ps(r, v1, a31);
            a32 = _mm256_fmadd_ps(r, v2, a32);
        }
        float s[4][3] = {{hsum256(a00), hsum256(a01), hsum256(a02)},
                         {hsum256(a10), hsum256(a11), hsum256(a12)},
                         {hsum256(a20), hsum256(a21), hsum256(a22)},
                         {hsum256(a30), hsum256(a31), hsum256(a32)}};
        for (size_t i = n8; i < n; i++)
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 3; c++) s[r][c] += w[r * n + i] * x[(t + c) * n + i];
        for (int c = 0; c < 3; c++)
            for (int r = 0; r < 4; r++) y[(t + c) * y_stride + r] = s[r][c];
    }
    for (; t < n_tok; t++)
        for (int r = 0; r < 4; r++) y[t * y_stride + r] = dot_f32_avx2(w + r * n, x + t * n, n);
}

static void axpy_f32_avx2(float *y, const float *x, float a, size_t n) {
    __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

/* ---------------------------------------------------- int8 activations */

static void quantize_q8_avx2(const float *x, size_t n, int8_t *q, float *d, float *s) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (size_t b = 0; b < n / 32; b++, x += 32, q += 32) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float scale = amax / 127.0f, inv = kvqi_q8_act_inv(amax);
        __m256 vi = _mm256_set1_ps(inv);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vi), ROUND_NEAREST));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vi), ROUND_NEAREST));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vi), ROUND_NEAREST));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vi), ROUND_NEAREST));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        /* pack 32 int32 to 32 int8; the packs interleave 128-bit lanes, the permute undoes it */
        __m256i p01 = _mm256_packs_epi32(i0, i1), p23 = _mm256_packs_epi32(i2, i3);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)q, p);
        d[b] = scale;
        s[b] = scale * (float)_mm_cvtsi128_si32(s4);
    }
}

/* 32 nibbles in element order: low nibbles 0..15, high nibbles 16..31 */
static inline __m256i q4_bytes(const uint8_t *qs) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    const __m128i mask = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), mask), _mm_and_si128(q, mask));
}

static inline __m256 sum_u8_s8(__m256i u, __m256i s) {
    /* |u| <= 15 or 128 against |s| <= 127: no pair sum saturates */
    return _mm256_cvtepi32_ps(KVQI_DOT4_U8S8(u, s));
}

static float dot_q8_q4_0_avx2(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    __m256 acc = _mm256_setzero_ps();
    float off = 0;
    for (size_t i = 0; i < n / 32; i++, b += 18, q += 32) {
        float dw = h2f(b);
        __m256 f = sum_u8_s8(q4_bytes(b + 2), _mm256_loadu_si256((const __m256i *)q));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * d[i]), f, acc);
        off += dw * s[i];
    }
    return hsum256(acc) - 8.0f * off;
}

static float dot_q8_q4_1_avx2(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    __m256 acc = _mm256_setzero_ps();
    float off = 0;
    for (size_t i = 0; i < n / 32; i++, b += 20, q += 32) {
        __m256 f = sum_u8_s8(q4_bytes(b + 4), _mm256_loadu_si256((const __m256i *)q));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b) * d[i]), f, acc);
        off += h2f(b + 2) * s[i];
    }
    return hsum256(acc) + off;
}

static float dot_q8_q8_0_avx2(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    __m256 acc = _mm256_setzero_ps();
    (void)s;
    for (size_t i = 0; i < n / 32; i++, b += 34, q += 32) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(b + 2));
        __m256i x = _mm256_loadu_si256((const __m256i *)q);
        /* maddubs wants unsigned x signed: move w's sign onto x */
        __m256 f = sum_u8_s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b) * d[i]), f, acc);
    }
    return hsum256(acc);
}

/* ------------------------------------------- tiled int8 products: unpacking */

static inline void store_scale8(float *wl, float v) { _mm256_storeu_ps(wl, _mm256_set1_ps(v)); }

/* 32 bits to 32 bytes: byte i is 0x10 where bit i is set (Q5's fifth bit) */
static inline __m256i bits_to_0x10(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                          3, 3, 3, 3, 3, 3, 3);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

static int unpack_q4_0_avx2(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    (void)wo;
    for (size_t i = 0; i < n / 32; i++, b += 18, w += 32, wl += 8) {
        _mm256_storeu_si256((__m256i *)w, _mm256_sub_epi8(q4_bytes(b + 2), _mm256_set1_epi8(8)));
        store_scale8(wl, h2f(b));
    }
    return 0;
}

static int unpack_q4_1_avx2(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 20, w += 32, wl += 8) {
        _mm256_storeu_si256((__m256i *)w, q4_bytes(b + 4));
        store_scale8(wl, h2f(b));
        wo[4 * i] = h2f(b + 2);
    }
    return 1;
}

static int unpack_q5_0_avx2(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    (void)wo;
    for (size_t i = 0; i < n / 32; i++, b += 22, w += 32, wl += 8) {
        uint32_t qh;
        memcpy(&qh, b + 2, 4);
        __m256i v = _mm256_or_si256(q4_bytes(b + 6), bits_to_0x10(qh));
        _mm256_storeu_si256((__m256i *)w, _mm256_sub_epi8(v, _mm256_set1_epi8(16)));
        store_scale8(wl, h2f(b));
    }
    return 0;
}

static int unpack_q8_0_avx2(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    (void)wo;
    for (size_t i = 0; i < n / 32; i++, b += 34, w += 32, wl += 8) {
        _mm256_storeu_si256((__m256i *)w, _mm256_loadu_si256((const __m256i *)(b + 2)));
        store_scale8(wl, h2f(b));
    }
    return 0;
}

static inline void k_scale_min_avx2(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static int unpack_q4_k_avx2(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    const __m256i mask = _mm256_set1_epi8(0x0f);
    for (size_t i = 0; i < n / 256; i++, b += 144) {
        float d = h2f(b), dmin = h2f(b + 2);
        for (int j = 0; j < 8; j += 2, w += 64, wl += 16, wo += 8) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(b + 16 + 16 * j));
            _mm256_storeu_si256((__m256i *)w, _mm256_and_si256(q, mask));
            _mm256_storeu_si256((__m256i *)(w + 32), _mm256_and_si256(_mm256_srli_epi16(q, 4), mask));
            uint8_t sc, m;
            k_scale_min_avx2(j, b + 4, &sc, &m);
            store_scale8(wl, d * (float)sc);
            wo[0] = -(dmin * (float)m);
            k_scale_min_avx2(j + 1, b + 4, &sc, &m);
            store_scale8(wl + 8, d * (float)sc);
            wo[4] = -(dmin * (float)m);
        }
    }
    return 1;
}

static int unpack_q6_k_avx2(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), k32 = _mm256_set1_epi8(32);
    (void)wo;
    for (size_t i = 0; i < n / 256; i++, b += 210) {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = h2f(b + 208);
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, w += 128) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            /* 16-bit shifts move bits across bytes; the masks keep only each byte's own */
            __m256i o0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
            __m256i o1 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
            __m256i o2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
            __m256i o3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
            _mm256_storeu_si256((__m256i *)w, _mm256_sub_epi8(o0, k32));
            _mm256_storeu_si256((__m256i *)(w + 32), _mm256_sub_epi8(o1, k32));
            _mm256_storeu_si256((__m256i *)(w + 64), _mm256_sub_epi8(o2, k32));
            _mm256_storeu_si256((__m256i *)(w + 96), _mm256_sub_epi8(o3, k32));
            for (int g = 0; g < 8; g++, wl += 4) _mm_storeu_ps(wl, _mm_set1_ps(d * (float)sc[g]));
        }
    }
    return 0;
}

/* ------------------------------------------- tiled int8 products: the product */

/* the 8-lane sum in the order the reference defines: (i + i+4), then (j + j+2), then 0 + 1 */
static inline float hsum8_ordered(__m256 v) { return hsum256(v); }

#if !defined(KVQ_AVXVNNI) /* (the AVX-VNNI build takes engine_tile_vnni.h's tile) */
/* maddubs wants unsigned x signed: |w| against q with w's sign; |w| <= 128 and
 * |q| <= 127 keep each pair sum within int16 */
static inline __m256i lane_sums(__m256i aw, __m256i w, __m256i q) {
    return KVQI_DOT4_U8S8(aw, _mm256_sign_epi8(q, w));
}

/* 4 rows x TT tokens; the compiler keeps the accumulators in registers */
static inline __attribute__((always_inline)) void tile_avx2(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t t0,
                                                             const int TT, float *y, size_t y_stride) {
    size_t n = tl->n, nb = n / 32, nl = n / 4;
    __m256 acc[4][2];
    __m128 off[2];
    _Pragma("GCC unroll 4")
    for (int r = 0; r < 4; r++)
        _Pragma("GCC unroll 4")
        for (int t = 0; t < TT; t++) acc[r][t] = _mm256_setzero_ps();
    _Pragma("GCC unroll 4")
    for (int t = 0; t < TT; t++) off[t] = _mm_setzero_ps();
    const int8_t *q[2];
    const float *d[2], *s[2];
    kvqi_q8_acts_rows(a, t0, TT, q, d, s);
    for (size_t b = 0; b < nb; b++) {
        __m256i qv[2];
        __m256 dv[2];
        _Pragma("GCC unroll 4")
        for (int t = 0; t < TT; t++) {
            qv[t] = _mm256_loadu_si256((const __m256i *)(q[t] + 32 * b));
            dv[t] = _mm256_set1_ps(d[t][b]);
        }
        _Pragma("GCC unroll 4")
        for (int r = 0; r < 4; r++) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(tl->w + r * n + 32 * b));
            __m256i aw = _mm256_abs_epi8(w);
            __m256 lv = _mm256_loadu_ps(tl->wl + r * nl + 8 * b);
            _Pragma("GCC unroll 4")
            for (int t = 0; t < TT; t++) {
                __m256 f = _mm256_cvtepi32_ps(lane_sums(aw, w, qv[t]));
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

static void gemm_q8_avx2(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t n_tok, float *y, size_t y_stride) {
    size_t t = 0;
    for (; t + 2 <= n_tok; t += 2) tile_avx2(tl, a, t, 2, y, y_stride);
    for (; t < n_tok; t++) tile_avx2(tl, a, t, 1, y, y_stride);
}
#else
/* the AVX-VNNI build: the AVX-512 engine's 256-bit VNNI tile (q + 128 against the
 * weights, the -128 sum(w) corrections once per call), two tokens a pass (four would
 * need more than the 16 ymm registers), and its one-token products from the blocks; the
 * same bits */
#define KVQI_DPBUSD256(acc, u, w) _mm256_dpbusd_avx_epi32((acc), (u), (w))
#include "cpu/engine_tile_vnni.h"

static void gemm_q8_avx2(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t n_tok, float *y, size_t y_stride) {
    size_t t = 0;
    __m256i corr[4 * (TILE_CORR_MAX / 32)];
    const __m256i *cp = tile_corrections(tl, n_tok, corr);
    for (; t + 2 <= n_tok; t += 2) tile_vnni(tl, a, t, 2, cp, y, y_stride);
    for (; t < n_tok; t++) tile_vnni(tl, a, t, 1, cp, y, y_stride);
}
#endif

/* ------------------------------------------------ gated activation */

static void glu_avx2(float *gate, const float *up, size_t n, int gelu) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i), z = g;
        if (gelu) {
            __m256 c = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), g), g), g);
            z = _mm256_mul_ps(_mm256_set1_ps(1.5957691216057308f), _mm256_add_ps(g, c));
        }
        __m256 e = kvqi_exp_neg8(_mm256_or_ps(z, sign)); /* -|z| */
        __m256 num = _mm256_blendv_ps(e, one, _mm256_cmp_ps(z, zero, _CMP_GE_OQ));
        __m256 sg = _mm256_div_ps(num, _mm256_add_ps(one, e));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_mul_ps(g, sg), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) gate[i] = kvqi_glu_one(gate[i], up[i], gelu);
}

void kvqi_engine_kernels_avx2(kvqi_engine_kernels *k) {
    k->glu = glu_avx2;
    k->quantize_q8 = quantize_q8_avx2;
    k->dot_q8[KVQI_T_Q4_0] = dot_q8_q4_0_avx2;
    k->dot_q8[KVQI_T_Q4_1] = dot_q8_q4_1_avx2;
    k->dot_q8[KVQI_T_Q8_0] = dot_q8_q8_0_avx2;
    k->gemm_q8 = gemm_q8_avx2;
    k->unpack_q8[KVQI_T_Q4_0] = unpack_q4_0_avx2;
    k->unpack_q8[KVQI_T_Q4_1] = unpack_q4_1_avx2;
    k->unpack_q8[KVQI_T_Q5_0] = unpack_q5_0_avx2;
    k->unpack_q8[KVQI_T_Q8_0] = unpack_q8_0_avx2;
    k->unpack_q8[KVQI_T_Q4_K] = unpack_q4_k_avx2;
    k->unpack_q8[KVQI_T_Q6_K] = unpack_q6_k_avx2;
    k->gemm4_f32 = gemm4_f32_avx2;
    k->axpy_f32 = axpy_f32_avx2;
    k->to_float[KVQI_T_F16] = f16_to_float_avx2;
    k->to_float[KVQI_T_Q4_0] = q4_0_to_float_avx2;
    k->to_float[KVQI_T_Q4_1] = q4_1_to_float_avx2;
    k->to_float[KVQI_T_Q8_0] = q8_0_to_float_avx2;
    k->isa = KVQ_ISA_AVX2;
    k->dot_f32 = dot_f32_avx2;
    k->row_dot[KVQI_T_F32] = row_dot_f32_avx2;
    k->row_dot[KVQI_T_F16] = row_dot_f16_avx2;
    k->row_dot[KVQI_T_Q4_0] = row_dot_q4_0_avx2;
    k->row_dot[KVQI_T_Q4_1] = row_dot_q4_1_avx2;
    k->row_dot[KVQI_T_Q8_0] = row_dot_q8_0_avx2;
#if defined(KVQ_AVXVNNI)
    gemv_vnni_fill(k); /* one token straight from the blocks, as the AVX-512 engine */
#endif
}
