/* index_avx2.c - RaBitQ index kernels with AVX2: fast-scan of two 16-byte code groups
 * per vpshufb, u8/fp16 dot and L2 with two 8-lane accumulators in the canonical
 * 16-lane order, bit-identical to index_scalar.c. */
#include <immintrin.h>
#include <string.h>

#include "cpu/cpu.h"
#include "cpu/index_kernels.h"

/* Sum the two 128-bit lanes of 8 u16 counters each into 8 u32 and add to out. */
static inline void fold_lanes(__m256i acc, uint32_t *out) {
    __m256i s = _mm256_add_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(acc)),
                                 _mm256_cvtepu16_epi32(_mm256_extracti128_si256(acc, 1)));
    __m256i o = _mm256_loadu_si256((const __m256i *)out);
    _mm256_storeu_si256((__m256i *)out, _mm256_add_epi32(o, s));
}

static void fastscan_avx2(const uint8_t *block, const uint8_t *lut, uint32_t n_groups,
                          uint32_t out[KVQI_FS_BLOCK]) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (unsigned v = 0; v < KVQI_FS_BLOCK; v++) out[v] = 0;
    /* a chunk of 1024 groups puts at most 512 * 60 in each 16-bit counter */
    for (uint32_t g0 = 0; g0 < n_groups; g0 += 1024) {
        uint32_t g1 = n_groups - g0 < 1024 ? n_groups : g0 + 1024;
        __m256i lo_all = _mm256_setzero_si256(), lo_odd = _mm256_setzero_si256();
        __m256i hi_all = _mm256_setzero_si256(), hi_odd = _mm256_setzero_si256();
        for (uint32_t g = g0; g < g1; g += 2) {
            __m256i c = _mm256_loadu_si256((const __m256i *)(block + (size_t)g * 16));
            __m256i t = _mm256_loadu_si256((const __m256i *)(lut + (size_t)g * 16));
            __m256i rl = _mm256_shuffle_epi8(t, _mm256_and_si256(c, low4));
            __m256i rh = _mm256_shuffle_epi8(t, _mm256_and_si256(_mm256_srli_epi16(c, 4), low4));
            lo_all = _mm256_add_epi16(lo_all, rl);
            lo_odd = _mm256_add_epi16(lo_odd, _mm256_srli_epi16(rl, 8));
            hi_all = _mm256_add_epi16(hi_all, rh);
            hi_odd = _mm256_add_epi16(hi_odd, _mm256_srli_epi16(rh, 8));
        }
        fold_lanes(_mm256_sub_epi16(lo_all, _mm256_slli_epi16(lo_odd, 8)), out);
        fold_lanes(lo_odd, out + 8);
        fold_lanes(_mm256_sub_epi16(hi_all, _mm256_slli_epi16(hi_odd, 8)), out + 16);
        fold_lanes(hi_odd, out + 24);
    }
}

static inline __m256 load_x(const float *q, const float *sub, uint32_t i) {
    __m256 v = _mm256_loadu_ps(q + i);
    return sub ? _mm256_sub_ps(v, _mm256_loadu_ps(sub + i)) : v;
}

static void build_lut4_avx2(const float *q, const float *sub, uint32_t d, uint32_t d_pad,
                            uint8_t *qu, uint8_t *lut, float *vmin_out, float *delta_out) {
    __m256 mn = _mm256_set1_ps(sub ? q[0] - sub[0] : q[0]), mx = mn;
    uint32_t i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256 v = load_x(q, sub, i);
        mn = _mm256_min_ps(mn, v);
        mx = _mm256_max_ps(mx, v);
    }
    float lo[8], hi[8];
    _mm256_storeu_ps(lo, mn);
    _mm256_storeu_ps(hi, mx);
    float vmin = lo[0], vmax = hi[0];
    for (int j = 1; j < 8; j++) {
        vmin = lo[j] < vmin ? lo[j] : vmin;
        vmax = hi[j] > vmax ? hi[j] : vmax;
    }
    for (; i < d; i++) {
        float x = sub ? q[i] - sub[i] : q[i];
        vmin = x < vmin ? x : vmin;
        vmax = x > vmax ? x : vmax;
    }
    float delta = (vmax - vmin) / 15.0f, inv = delta > 0.0f ? 1.0f / delta : 0.0f;
    const __m256 vmn = _mm256_set1_ps(vmin), vinv = _mm256_set1_ps(inv), half = _mm256_set1_ps(0.5f);
    const __m256i fifteen = _mm256_set1_epi32(15);
    const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                               0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (i = 0; i < d_pad; i += 8) {
        __m256 v = load_x(q, sub, i);
        __m256i u = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, vmn), vinv), half));
        u = _mm256_shuffle_epi8(_mm256_min_epi32(u, fifteen), low_bytes);
        int32_t a = _mm_cvtsi128_si32(_mm256_castsi256_si128(u));
        int32_t b = _mm_cvtsi128_si32(_mm256_extracti128_si256(u, 1));
        memcpy(qu + i, &a, 4);
        memcpy(qu + i + 4, &b, 4);
    }
    for (i = d; i < d_pad; i++) qu[i] = 0;
    /* two groups per 256-bit register: lane L takes group g + L */
    const __m256i ctrl[4] = {
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4),
        _mm256_setr_epi8(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5),
        _mm256_setr_epi8(2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6),
        _mm256_setr_epi8(3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7)};
#define M(t) _mm256_setr_epi8(                                                                    \
    0, ((1 >> t) & 1) * -1, ((2 >> t) & 1) * -1, ((3 >> t) & 1) * -1, ((4 >> t) & 1) * -1,          \
    ((5 >> t) & 1) * -1, ((6 >> t) & 1) * -1, ((7 >> t) & 1) * -1, ((8 >> t) & 1) * -1,              \
    ((9 >> t) & 1) * -1, ((10 >> t) & 1) * -1, ((11 >> t) & 1) * -1, ((12 >> t) & 1) * -1,           \
    ((13 >> t) & 1) * -1, ((14 >> t) & 1) * -1, ((15 >> t) & 1) * -1, 0, ((1 >> t) & 1) * -1,        \
    ((2 >> t) & 1) * -1, ((3 >> t) & 1) * -1, ((4 >> t) & 1) * -1, ((5 >> t) & 1) * -1,              \
    ((6 >> t) & 1) * -1, ((7 >> t) & 1) * -1, ((8 >> t) & 1) * -1, ((9 >> t) & 1) * -1,              \
    ((10 >> t) & 1) * -1, ((11 >> t) & 1) * -1, ((12 >> t) & 1) * -1, ((13 >> t) & 1) * -1,          \
    ((14 >> t) & 1) * -1, ((15 >> t) & 1) * -1)
    const __m256i mask[4] = {M(0), M(1), M(2), M(3)};
#undef M
    for (uint32_t g = 0; g < d_pad / 4; g += 2) {
        uint64_t eight;
        memcpy(&eight, qu + 4 * g, 8);
        __m256i b = _mm256_broadcastsi128_si256(_mm_cvtsi64_si128((long long)eight));
        __m256i acc = _mm256_setzero_si256();
        for (int t = 0; t < 4; t++)
            acc = _mm256_add_epi8(acc, _mm256_and_si256(_mm256_shuffle_epi8(b, ctrl[t]), mask[t]));
        _mm256_storeu_si256((__m256i *)(lut + (size_t)g * 16), acc);
    }
    *vmin_out = vmin;
    *delta_out = delta;
}

static uint32_t estimate_block_avx2(const uint32_t *S, const float *fa, const float *fr,
                                    const float *fe, const float *fp, const kvqi_block_consts *c,
                                    float *dist, float *err) {
    const __m256 delta = _mm256_set1_ps(c->delta), vmin = _mm256_set1_ps(c->vmin),
                 sum_q = _mm256_set1_ps(c->sum_q), K = _mm256_set1_ps(c->K),
                 alpha = _mm256_set1_ps(c->alpha), ferr = _mm256_set1_ps(c->ferr),
                 qerr = _mm256_set1_ps(c->qerr), tau = _mm256_set1_ps(c->tau), two = _mm256_set1_ps(2.0f);
    uint32_t mask = 0;
    for (unsigned h = 0; h < KVQI_FS_BLOCK; h += 8) {
        __m256 s = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(S + h)));
        __m256 r = _mm256_loadu_ps(fr + h);
        __m256 sbq = _mm256_add_ps(_mm256_mul_ps(delta, s), _mm256_mul_ps(vmin, _mm256_loadu_ps(fp + h)));
        __m256 ip = _mm256_mul_ps(r, _mm256_sub_ps(_mm256_mul_ps(two, sbq), sum_q));
        __m256 dd = _mm256_sub_ps(_mm256_add_ps(_mm256_loadu_ps(fa + h), K), _mm256_mul_ps(alpha, ip));
        __m256 e1 = _mm256_mul_ps(_mm256_loadu_ps(fe + h), ferr), e2 = _mm256_mul_ps(r, qerr);
        __m256 e = _mm256_sqrt_ps(_mm256_add_ps(_mm256_mul_ps(e1, e1), _mm256_mul_ps(e2, e2)));
        _mm256_storeu_ps(dist + h, dd);
        _mm256_storeu_ps(err + h, e);
        mask |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(dd, e), tau, _CMP_LT_OQ)) << h;
    }
    return mask;
}

static inline void probe_term(const float *ct, const float *q, uint32_t j, int ip, __m256 *lo,
                              __m256 *hi) {
    __m256 x0 = _mm256_loadu_ps(ct + (size_t)j * 16), x1 = _mm256_loadu_ps(ct + (size_t)j * 16 + 8);
    __m256 qj = _mm256_set1_ps(q[j]);
    if (ip) {
        *lo = _mm256_add_ps(*lo, _mm256_mul_ps(x0, qj));
        *hi = _mm256_add_ps(*hi, _mm256_mul_ps(x1, qj));
    } else {
        __m256 t0 = _mm256_sub_ps(x0, qj), t1 = _mm256_sub_ps(x1, qj);
        *lo = _mm256_add_ps(*lo, _mm256_mul_ps(t0, t0));
        *hi = _mm256_add_ps(*hi, _mm256_mul_ps(t1, t1));
    }
}

static void probe16_avx2(const float *ct, const float *q, uint32_t d, int ip, float out[16]) {
    __m256 l0 = _mm256_setzero_ps(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
    uint32_t j = 0;
    for (; j + 4 <= d; j += 4) { /* coordinate j adds into partial sum j % 4 */
        probe_term(ct, q, j, ip, &l0, &h0);
        probe_term(ct, q, j + 1, ip, &l1, &h1);
        probe_term(ct, q, j + 2, ip, &l2, &h2);
        probe_term(ct, q, j + 3, ip, &l3, &h3);
    }
    if (j < d) probe_term(ct, q, j, ip, &l0, &h0);
    if (j + 1 < d) probe_term(ct, q, j + 1, ip, &l1, &h1);
    if (j + 2 < d) probe_term(ct, q, j + 2, ip, &l2, &h2);
    __m256 a0 = _mm256_add_ps(_mm256_add_ps(l0, l1), _mm256_add_ps(l2, l3));
    __m256 a1 = _mm256_add_ps(_mm256_add_ps(h0, h1), _mm256_add_ps(h2, h3));
    if (ip) {
        a0 = _mm256_sub_ps(_mm256_setzero_ps(), a0);
        a1 = _mm256_sub_ps(_mm256_setzero_ps(), a1);
    }
    _mm256_storeu_ps(out, a0);
    _mm256_storeu_ps(out + 8, a1);
}

static inline float hsum(__m256 a0, __m256 a1) {
    __m256 s8 = _mm256_add_ps(a0, a1);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
}

/* Each kernel runs full 16-element steps; the tail is copied into zero-padded buffers
 * (adding 0 to a lane leaves it unchanged, so the order stays canonical). */
#define TAIL_PAD(T, dst, src, left)              \
    T dst[16];                                   \
    memset(dst, 0, sizeof dst);                  \
    memcpy(dst, src, (left) * sizeof(T))

static inline __m256 cvt_u8(const uint8_t *c) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)c)));
}

static float dot_u8_avx2(const uint8_t *code, const float *q, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(cvt_u8(code + i), _mm256_loadu_ps(q + i)));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(cvt_u8(code + i + 8), _mm256_loadu_ps(q + i + 8)));
    }
    if (i < n) {
        TAIL_PAD(uint8_t, c, code + i, n - i);
        TAIL_PAD(float, x, q + i, n - i);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(cvt_u8(c), _mm256_loadu_ps(x)));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(cvt_u8(c + 8), _mm256_loadu_ps(x + 8)));
    }
    return hsum(a0, a1);
}

static const uint32_t pk_ctrl[8][16] = KVQI_PK_TABLE(KVQI_PK_CTRL);
static const uint32_t pk_shift[8][16] = KVQI_PK_TABLE(KVQI_PK_SHIFT);

/* 16 values per step as in the AVX-512 file: the run's 2b bytes in both 128-bit lanes,
 * byte shuffles put values 0..7 and 8..15 in the 32-bit lanes of two registers. The
 * last runs of a row are copied out so no load passes its end. */
static float dot_packed_avx2(const uint8_t *code, unsigned bits, const float *q, size_t n) {
    const __m256i c0 = _mm256_loadu_si256((const __m256i *)pk_ctrl[bits - 1]);
    const __m256i c1 = _mm256_loadu_si256((const __m256i *)(pk_ctrl[bits - 1] + 8));
    const __m256i s0 = _mm256_loadu_si256((const __m256i *)pk_shift[bits - 1]);
    const __m256i s1 = _mm256_loadu_si256((const __m256i *)(pk_shift[bits - 1] + 8));
    const __m256i mask = _mm256_set1_epi32((int)((1u << bits) - 1u));
    const size_t run = 2 * bits, row = n / 16 * run;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (size_t i = 0, o = 0; i < n; i += 16, o += run) {
        __m128i raw;
        if (o + 16 <= row) {
            raw = _mm_loadu_si128((const __m128i *)(code + o));
        } else {
            uint8_t t[16] = {0};
            memcpy(t, code + o, row - o < 16 ? row - o : 16);
            raw = _mm_loadu_si128((const __m128i *)t);
        }
        __m256i x = _mm256_broadcastsi128_si256(raw);
        __m256i v0 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(x, c0), s0), mask);
        __m256i v1 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(x, c1), s1), mask);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_cvtepi32_ps(v0), _mm256_loadu_ps(q + i)));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_cvtepi32_ps(v1), _mm256_loadu_ps(q + i + 8)));
    }
    return hsum(a0, a1);
}

static inline __m256 sqdiff(__m256 a, __m256 b) {
    __m256 d = _mm256_sub_ps(a, b);
    return _mm256_mul_ps(d, d);
}

static float l2sq_avx2(const float *a, const float *b, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_ps(a0, sqdiff(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
        a1 = _mm256_add_ps(a1, sqdiff(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8)));
    }
    if (i < n) {
        TAIL_PAD(float, x, a + i, n - i);
        TAIL_PAD(float, y, b + i, n - i);
        a0 = _mm256_add_ps(a0, sqdiff(_mm256_loadu_ps(x), _mm256_loadu_ps(y)));
        a1 = _mm256_add_ps(a1, sqdiff(_mm256_loadu_ps(x + 8), _mm256_loadu_ps(y + 8)));
    }
    return hsum(a0, a1);
}

static inline __m256 cvt_f16(const uint16_t *a) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)a));
}

static float l2sq_f16_avx2(const uint16_t *a, const float *b, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_ps(a0, sqdiff(cvt_f16(a + i), _mm256_loadu_ps(b + i)));
        a1 = _mm256_add_ps(a1, sqdiff(cvt_f16(a + i + 8), _mm256_loadu_ps(b + i + 8)));
    }
    if (i < n) {
        TAIL_PAD(uint16_t, x, a + i, n - i);
        TAIL_PAD(float, y, b + i, n - i);
        a0 = _mm256_add_ps(a0, sqdiff(cvt_f16(x), _mm256_loadu_ps(y)));
        a1 = _mm256_add_ps(a1, sqdiff(cvt_f16(x + 8), _mm256_loadu_ps(y + 8)));
    }
    return hsum(a0, a1);
}

static float dot_f16_avx2(const uint16_t *a, const float *b, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(cvt_f16(a + i), _mm256_loadu_ps(b + i)));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(cvt_f16(a + i + 8), _mm256_loadu_ps(b + i + 8)));
    }
    if (i < n) {
        TAIL_PAD(uint16_t, x, a + i, n - i);
        TAIL_PAD(float, y, b + i, n - i);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(cvt_f16(x), _mm256_loadu_ps(y)));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(cvt_f16(x + 8), _mm256_loadu_ps(y + 8)));
    }
    return hsum(a0, a1);
}

static float dot_avx2(const float *a, const float *b, size_t n) {
    return kvqi_base_kernels_for(KVQ_ISA_AVX2)->dot(a, b, n);
}

static void probe16_multi_avx2(const float *ct, const float *q, size_t q_stride, uint32_t nq,
                               uint32_t d, int ip, float *out) {
    for (uint32_t b = 0; b < nq; b++) probe16_avx2(ct, q + b * q_stride, d, ip, out + 16 * b);
}

const kvqi_index_kernels kvqi_index_avx2 = {
    KVQ_ISA_AVX2,  fastscan_avx2, build_lut4_avx2, estimate_block_avx2, probe16_avx2, dot_u8_avx2,
    dot_packed_avx2, l2sq_avx2,     l2sq_f16_avx2, dot_avx2,        dot_f16_avx2,
    probe16_multi_avx2,
};
