/* index_neon.c - RaBitQ index kernels with AArch64 Advanced SIMD, bit-identical to
 * index_scalar.c: fast-scan of 1-bit codes with one table look-up (TBL) per nibble plane
 * (RaBitQ arXiv 2405.12497, 3.3.2), exact integer LUT sums, and u8/fp16 dot and L2 with
 * four 4-lane accumulators holding the canonical 16 lanes of cpu.h, folded in its order. */
#include <arm_neon.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/index_kernels.h"

/* u16 lane k of a TBL result holds vector k (even byte) and vector 8 + k (odd byte) of
 * the nibble plane; `all` sums whole lanes (wrapping), `odd` the high bytes, so
 * all - (odd << 8) is the exact sum of the low bytes. */
static inline void fold_plane(uint16x8_t all, uint16x8_t odd, uint32_t *out) {
    uint16x8_t even = vsubq_u16(all, vshlq_n_u16(odd, 8));
    vst1q_u32(out, vaddq_u32(vld1q_u32(out), vmovl_u16(vget_low_u16(even))));
    vst1q_u32(out + 4, vaddq_u32(vld1q_u32(out + 4), vmovl_u16(vget_high_u16(even))));
    vst1q_u32(out + 8, vaddq_u32(vld1q_u32(out + 8), vmovl_u16(vget_low_u16(odd))));
    vst1q_u32(out + 12, vaddq_u32(vld1q_u32(out + 12), vmovl_u16(vget_high_u16(odd))));
}

static void fastscan_neon(const uint8_t *block, const uint8_t *lut, uint32_t n_groups,
                          uint32_t out[KVQI_FS_BLOCK]) {
    const uint8x16_t low4 = vdupq_n_u8(0x0f);
    memset(out, 0, KVQI_FS_BLOCK * sizeof(uint32_t));
    /* a chunk of 1024 groups puts at most 1024 * 60 in each 16-bit counter */
    for (uint32_t g0 = 0; g0 < n_groups; g0 += 1024) {
        uint32_t g1 = n_groups - g0 < 1024 ? n_groups : g0 + 1024;
        uint16x8_t lo_all = vdupq_n_u16(0), lo_odd = lo_all, hi_all = lo_all, hi_odd = lo_all;
        for (uint32_t g = g0; g < g1; g++) {
            uint8x16_t c = vld1q_u8(block + (size_t)g * KVQI_FS_GROUP_BYTES);
            uint8x16_t t = vld1q_u8(lut + (size_t)g * 16);
            uint16x8_t rl = vreinterpretq_u16_u8(vqtbl1q_u8(t, vandq_u8(c, low4)));
            uint16x8_t rh = vreinterpretq_u16_u8(vqtbl1q_u8(t, vshrq_n_u8(c, 4)));
            lo_all = vaddq_u16(lo_all, rl);
            lo_odd = vaddq_u16(lo_odd, vshrq_n_u16(rl, 8));
            hi_all = vaddq_u16(hi_all, rh);
            hi_odd = vaddq_u16(hi_odd, vshrq_n_u16(rh, 8));
        }
        fold_plane(lo_all, lo_odd, out);
        fold_plane(hi_all, hi_odd, out + 16);
    }
}

/* x = q - sub (one rounding, as the reference), or q when sub is NULL */
static inline float32x4_t load_x(const float *q, const float *sub, uint32_t i) {
    float32x4_t v = vld1q_f32(q + i);
    return sub ? vsubq_f32(v, vld1q_f32(sub + i)) : v;
}

static void build_lut4_neon(const float *q, const float *sub, uint32_t d, uint32_t d_pad,
                            uint8_t *qu, uint8_t *lut, float *vmin_out, float *delta_out) {
    float32x4_t mn = vdupq_n_f32(sub ? q[0] - sub[0] : q[0]), mx = mn;
    uint32_t i = 0;
    for (; i + 4 <= d; i += 4) {
        float32x4_t v = load_x(q, sub, i);
        mn = vminq_f32(mn, v);
        mx = vmaxq_f32(mx, v);
    }
    float lo[4], hi[4];
    vst1q_f32(lo, mn);
    vst1q_f32(hi, mx);
    float vmin = lo[0], vmax = hi[0];
    for (int j = 1; j < 4; j++) {
        vmin = lo[j] < vmin ? lo[j] : vmin;
        vmax = hi[j] > vmax ? hi[j] : vmax;
    }
    for (; i < d; i++) {
        float x = sub ? q[i] - sub[i] : q[i];
        vmin = x < vmin ? x : vmin;
        vmax = x > vmax ? x : vmax;
    }
    float delta = (vmax - vmin) / 15.0f, inv = delta > 0.0f ? 1.0f / delta : 0.0f;
    const float32x4_t vmn = vdupq_n_f32(vmin), vinv = vdupq_n_f32(inv), half = vdupq_n_f32(0.5f);
    const int32x4_t fifteen = vdupq_n_s32(15);
    for (i = 0; i + 4 <= d; i += 4) {
        /* x - vmin >= 0, so truncation after + 1/2 rounds to nearest */
        int32x4_t u = vcvtq_s32_f32(vaddq_f32(vmulq_f32(vsubq_f32(load_x(q, sub, i), vmn), vinv), half));
        u = vminq_s32(u, fifteen);
        uint16x4_t w = vmovn_u32(vreinterpretq_u32_s32(u));
        uint8x8_t b = vmovn_u16(vcombine_u16(w, w));
        uint32_t four = vget_lane_u32(vreinterpret_u32_u8(b), 0);
        memcpy(qu + i, &four, 4);
    }
    for (; i < d; i++) {
        int u = (int)(((sub ? q[i] - sub[i] : q[i]) - vmin) * inv + 0.5f);
        qu[i] = (uint8_t)(u > 15 ? 15 : u);
    }
    for (i = d; i < d_pad; i++) qu[i] = 0;
    /* lut[g][m] = sum over the set bits t of m of u[4g + t]: four masked broadcasts */
    static const uint8_t sel[4][16] = {
        {0, 255, 0, 255, 0, 255, 0, 255, 0, 255, 0, 255, 0, 255, 0, 255},
        {0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 255, 255},
        {0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 255, 255, 255, 255},
        {0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255}};
    const uint8x16_t m0 = vld1q_u8(sel[0]), m1 = vld1q_u8(sel[1]), m2 = vld1q_u8(sel[2]),
                     m3 = vld1q_u8(sel[3]);
    for (uint32_t g = 0; g < d_pad / 4; g++) {
        const uint8_t *u = qu + 4 * g;
        uint8x16_t acc = vandq_u8(vdupq_n_u8(u[0]), m0);
        acc = vaddq_u8(acc, vandq_u8(vdupq_n_u8(u[1]), m1));
        acc = vaddq_u8(acc, vandq_u8(vdupq_n_u8(u[2]), m2));
        acc = vaddq_u8(acc, vandq_u8(vdupq_n_u8(u[3]), m3));
        vst1q_u8(lut + (size_t)g * 16, acc);
    }
    *vmin_out = vmin;
    *delta_out = delta;
}

/* The reference's expression, operation for operation (no fused multiply-add). */
static uint32_t estimate_block_neon(const uint32_t *S, const float *fa, const float *fr,
                                    const float *fe, const float *fp, const kvqi_block_consts *c,
                                    float *dist, float *err) {
    const float32x4_t delta = vdupq_n_f32(c->delta), vmin = vdupq_n_f32(c->vmin),
                      sum_q = vdupq_n_f32(c->sum_q), K = vdupq_n_f32(c->K),
                      alpha = vdupq_n_f32(c->alpha), ferr = vdupq_n_f32(c->ferr),
                      qerr = vdupq_n_f32(c->qerr), tau = vdupq_n_f32(c->tau), two = vdupq_n_f32(2.0f);
    static const uint32_t bit[4] = {1, 2, 4, 8};
    const uint32x4_t bits = vld1q_u32(bit);
    uint32_t mask = 0;
    for (unsigned h = 0; h < KVQI_FS_BLOCK; h += 4) {
        float32x4_t s = vcvtq_f32_u32(vld1q_u32(S + h));
        float32x4_t r = vld1q_f32(fr + h);
        float32x4_t sbq = vaddq_f32(vmulq_f32(delta, s), vmulq_f32(vmin, vld1q_f32(fp + h)));
        float32x4_t ip = vmulq_f32(r, vsubq_f32(vmulq_f32(two, sbq), sum_q));
        float32x4_t dd = vsubq_f32(vaddq_f32(vld1q_f32(fa + h), K), vmulq_f32(alpha, ip));
        float32x4_t e1 = vmulq_f32(vld1q_f32(fe + h), ferr), e2 = vmulq_f32(r, qerr);
        float32x4_t e = vsqrtq_f32(vaddq_f32(vmulq_f32(e1, e1), vmulq_f32(e2, e2)));
        vst1q_f32(dist + h, dd);
        vst1q_f32(err + h, e);
        uint32x4_t keep = vcltq_f32(vsubq_f32(dd, e), tau);
        mask |= vaddvq_u32(vandq_u32(keep, bits)) << h;
    }
    return mask;
}

/* 16 centroids stored transposed, one lane per centroid; coordinate j adds into partial
 * sum j % 4 (subtract, square, add, or multiply, add: unfused), then (s0 + s1) + (s2 + s3),
 * as the reference. */
static void probe16_neon(const float *ct, const float *q, uint32_t d, int ip, float out[16]) {
    float32x4_t acc[4][4]; /* [partial sum][centroids 4k..4k+3] */
    for (int p = 0; p < 4; p++)
        for (int k = 0; k < 4; k++) acc[p][k] = vdupq_n_f32(0.0f);
    for (uint32_t j = 0; j < d; j++) {
        const float *row = ct + (size_t)j * 16;
        float32x4_t qj = vdupq_n_f32(q[j]);
        float32x4_t *a = acc[j % 4];
        for (int k = 0; k < 4; k++) {
            float32x4_t x = vld1q_f32(row + 4 * k), p;
            if (ip) {
                p = vmulq_f32(x, qj);
            } else {
                float32x4_t t = vsubq_f32(x, qj);
                p = vmulq_f32(t, t);
            }
            a[k] = vaddq_f32(a[k], p);
        }
    }
    for (int k = 0; k < 4; k++) {
        float32x4_t sum = vaddq_f32(vaddq_f32(acc[0][k], acc[1][k]), vaddq_f32(acc[2][k], acc[3][k]));
        vst1q_f32(out + 4 * k, ip ? vsubq_f32(vdupq_n_f32(0.0f), sum) : sum);
    }
}

/* Fold the canonical 16 lanes (a[k] holds lanes 4k..4k+3): j += j+8, j += j+4, then the
 * last four lanes pairwise, as cpu.h orders it. */
static inline float fold16(const float32x4_t *a) {
    float32x4_t f = vaddq_f32(vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]));
    float l[4];
    vst1q_f32(l, f);
    l[0] = l[0] + l[2];
    l[1] = l[1] + l[3];
    return l[0] + l[1];
}

static inline float32x4_t u8x4(const uint8_t *c) {
    uint8x8_t b = vcreate_u8((uint64_t)c[0] | (uint64_t)c[1] << 8 | (uint64_t)c[2] << 16 |
                             (uint64_t)c[3] << 24);
    return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))));
}

static inline float32x4_t f16x4(const uint16_t *h) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

static inline float32x4_t sqdiff(float32x4_t a, float32x4_t b) {
    float32x4_t d = vsubq_f32(a, b);
    return vmulq_f32(d, d);
}

/* Full 16-element steps; the tail goes through zero-padded copies (adding 0 keeps every
 * lane's value, so the order stays canonical). */
#define CANONICAL_LOOP(T, a, b, n, TERM)                                        \
    float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)}; \
    size_t i = 0;                                                               \
    for (; i + 16 <= (n); i += 16)                                              \
        for (int k = 0; k < 4; k++) acc[k] = vaddq_f32(acc[k], TERM((a) + i + 4 * k, (b) + i + 4 * k)); \
    if (i < (n)) {                                                              \
        T pa[16];                                                               \
        float pb[16];                                                           \
        memset(pa, 0, sizeof pa);                                               \
        memset(pb, 0, sizeof pb);                                               \
        memcpy(pa, (a) + i, ((n) - i) * sizeof(T));                             \
        memcpy(pb, (b) + i, ((n) - i) * sizeof(float));                         \
        for (int k = 0; k < 4; k++) acc[k] = vaddq_f32(acc[k], TERM(pa + 4 * k, pb + 4 * k)); \
    }                                                                           \
    return fold16(acc)

#define TERM_DOT_U8(pa, pb) vmulq_f32(u8x4(pa), vld1q_f32(pb))
#define TERM_L2(pa, pb) sqdiff(vld1q_f32(pa), vld1q_f32(pb))
#define TERM_L2_F16(pa, pb) sqdiff(f16x4(pa), vld1q_f32(pb))
#define TERM_DOT_F16(pa, pb) vmulq_f32(f16x4(pa), vld1q_f32(pb))

static float dot_u8_neon(const uint8_t *code, const float *q, size_t n) {
    CANONICAL_LOOP(uint8_t, code, q, n, TERM_DOT_U8);
}

static float l2sq_neon(const float *a, const float *b, size_t n) {
    CANONICAL_LOOP(float, a, b, n, TERM_L2);
}

static float l2sq_f16_neon(const uint16_t *a, const float *b, size_t n) {
    CANONICAL_LOOP(uint16_t, a, b, n, TERM_L2_F16);
}

static float dot_f16_neon(const uint16_t *a, const float *b, size_t n) {
    CANONICAL_LOOP(uint16_t, a, b, n, TERM_DOT_F16);
}

static float dot_neon(const float *a, const float *b, size_t n) {
    return kvqi_base_kernels_for(KVQ_ISA_NEON)->dot(a, b, n);
}

static void probe16_multi_neon(const float *ct, const float *q, size_t q_stride, uint32_t nq,
                               uint32_t d, int ip, float *out) {
    for (uint32_t b = 0; b < nq; b++) probe16_neon(ct, q + b * q_stride, d, ip, out + 16 * b);
}

const kvqi_index_kernels kvqi_index_neon = {
    .isa = KVQ_ISA_NEON,
    .fastscan = fastscan_neon,
    .build_lut4 = build_lut4_neon,
    .estimate_block = estimate_block_neon,
    .probe16 = probe16_neon,
    .probe16_multi = probe16_multi_neon,
    .dot_u8 = dot_u8_neon,
    .dot_packed = kvqi_dot_packed_scalar, /* the reference: no NEON variant yet */
    .l2sq = l2sq_neon,
    .l2sq_f16 = l2sq_f16_neon,
    .dot = dot_neon,
    .dot_f16 = dot_f16_neon,
};
