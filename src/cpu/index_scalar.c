/* index_scalar.c - plain-C references of the RaBitQ index kernels (fast-scan of 1-bit
 * codes, u8/fp16 dot and L2) and the dispatch table. The SIMD files must match these
 * bit for bit: integer sums are exact, float sums follow the 16-lane order of cpu.h. */
#include <math.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/index_kernels.h"

void kvqi_fastscan_scalar(const uint8_t *block, const uint8_t *lut, uint32_t n_groups,
                          uint32_t out[KVQI_FS_BLOCK]) {
    for (unsigned v = 0; v < KVQI_FS_BLOCK; v++) {
        unsigned byte, shift;
        kvqi_fs_slot(v, &byte, &shift);
        uint32_t acc = 0;
        for (uint32_t g = 0; g < n_groups; g++) {
            unsigned nib = (block[(size_t)g * KVQI_FS_GROUP_BYTES + byte] >> shift) & 15u;
            acc += lut[(size_t)g * 16 + nib];
        }
        out[v] = acc;
    }
}

void kvqi_build_lut4_scalar(const float *q, const float *sub, uint32_t d, uint32_t d_pad,
                            uint8_t *qu, uint8_t *lut, float *vmin_out, float *delta_out) {
#define X(i) (sub ? q[i] - sub[i] : q[i])
    float vmin = X(0), vmax = vmin;
    for (uint32_t i = 1; i < d; i++) {
        float x = X(i);
        vmin = x < vmin ? x : vmin;
        vmax = x > vmax ? x : vmax;
    }
    float delta = (vmax - vmin) / 15.0f, inv = delta > 0.0f ? 1.0f / delta : 0.0f;
    /* x - vmin >= 0, so truncation after + 1/2 rounds to nearest */
    for (uint32_t i = 0; i < d; i++) {
        int u = (int)((X(i) - vmin) * inv + 0.5f);
        qu[i] = (uint8_t)(u > 15 ? 15 : u);
    }
#undef X
    for (uint32_t i = d; i < d_pad; i++) qu[i] = 0;
    for (uint32_t g = 0; g < d_pad / 4; g++) {
        const uint8_t *u = qu + 4 * g;
        uint8_t *l = lut + (size_t)g * 16;
        for (unsigned m = 0; m < 16; m++)
            l[m] = (uint8_t)((m & 1 ? u[0] : 0) + (m & 2 ? u[1] : 0) + (m & 4 ? u[2] : 0) +
                             (m & 8 ? u[3] : 0));
    }
    *vmin_out = vmin;
    *delta_out = delta;
}

uint32_t kvqi_estimate_block_scalar(const uint32_t *S, const float *fa, const float *fr,
                                    const float *fe, const float *fp, const kvqi_block_consts *c,
                                    float *dist, float *err) {
    uint32_t mask = 0;
    for (unsigned v = 0; v < KVQI_FS_BLOCK; v++) {
        float sbq = c->delta * (float)S[v] + c->vmin * fp[v];
        float ip = fr[v] * (2.0f * sbq - c->sum_q);
        float dd = (fa[v] + c->K) - c->alpha * ip;
        float e1 = fe[v] * c->ferr, e2 = fr[v] * c->qerr;
        float e = sqrtf(e1 * e1 + e2 * e2);
        dist[v] = dd;
        err[v] = e;
        if (dd - e < c->tau) mask |= 1u << v;
    }
    return mask;
}

void kvqi_probe16_scalar(const float *ct, const float *q, uint32_t d, int ip, float out[16]) {
    for (unsigned c = 0; c < 16; c++) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* coordinate j goes to acc[j % 4] */
        for (uint32_t j = 0; j < d; j++) {
            float x = ct[(size_t)j * 16 + c];
            float p;
            if (ip) {
                p = x * q[j];
            } else {
                float t = x - q[j];
                p = t * t;
            }
            acc[j % 4] = acc[j % 4] + p;
        }
        float sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        out[c] = ip ? 0.0f - sum : sum; /* 0 - x, as the SIMD files negate */
    }
}

void kvqi_probe16_multi_scalar(const float *ct, const float *q, size_t q_stride, uint32_t nq,
                               uint32_t d, int ip, float *out) {
    for (uint32_t b = 0; b < nq; b++) kvqi_probe16_scalar(ct, q + b * q_stride, d, ip, out + 16 * b);
}

/* The canonical reduction: lane j takes elements j, j+16, ...; then a pairwise fold. */
#define CANONICAL_SUM(n, TERM)                                                  \
    do {                                                                        \
        float acc_[KVQI_DOT_LANES] = {0};                                       \
        size_t i_ = 0;                                                          \
        for (; i_ + KVQI_DOT_LANES <= (n); i_ += KVQI_DOT_LANES)                \
            for (int j_ = 0; j_ < KVQI_DOT_LANES; j_++) {                       \
                size_t i = i_ + (size_t)j_;                                     \
                float p_ = TERM;                                                \
                acc_[j_] = acc_[j_] + p_;                                       \
            }                                                                   \
        for (int j_ = 0; i_ + (size_t)j_ < (n); j_++) {                         \
            size_t i = i_ + (size_t)j_;                                         \
            float p_ = TERM;                                                    \
            acc_[j_] = acc_[j_] + p_;                                           \
        }                                                                       \
        for (int w_ = KVQI_DOT_LANES / 2; w_ >= 1; w_ >>= 1)                    \
            for (int j_ = 0; j_ < w_; j_++) acc_[j_] = acc_[j_] + acc_[j_ + w_]; \
        return acc_[0];                                                         \
    } while (0)

static inline float sq(float d) { return d * d; }

float kvqi_dot_u8_scalar(const uint8_t *code, const float *q, size_t n) {
    CANONICAL_SUM(n, (float)code[i] * q[i]);
}

static inline unsigned packed_value(const uint8_t *code, unsigned bits, size_t i) {
    size_t bit = i * bits;
    unsigned w = code[bit >> 3];
    if ((bit & 7u) + bits > 8u) w |= (unsigned)code[(bit >> 3) + 1] << 8;
    return (w >> (bit & 7u)) & ((1u << bits) - 1u);
}

float kvqi_dot_packed_scalar(const uint8_t *code, unsigned bits, const float *q, size_t n) {
    CANONICAL_SUM(n, (float)packed_value(code, bits, i) * q[i]);
}

float kvqi_l2sq_scalar(const float *a, const float *b, size_t n) {
    CANONICAL_SUM(n, sq(a[i] - b[i]));
}

float kvqi_l2sq_f16_scalar(const uint16_t *a, const float *b, size_t n) {
    CANONICAL_SUM(n, sq(kvqi_fp16_to_fp32(a[i]) - b[i]));
}

float kvqi_dot_f16_scalar(const uint16_t *a, const float *b, size_t n) {
    CANONICAL_SUM(n, kvqi_fp16_to_fp32(a[i]) * b[i]);
}

static const kvqi_index_kernels k_scalar = {
    KVQ_ISA_SCALAR,         kvqi_fastscan_scalar, kvqi_build_lut4_scalar,
    kvqi_estimate_block_scalar, kvqi_probe16_scalar, kvqi_dot_u8_scalar, kvqi_dot_packed_scalar,
    kvqi_l2sq_scalar,
    kvqi_l2sq_f16_scalar,   kvqi_dot_scalar,      kvqi_dot_f16_scalar,
    kvqi_probe16_multi_scalar,
};

#if defined(KVQ_HAVE_X86_SIMD)
extern const kvqi_index_kernels kvqi_index_avx2, kvqi_index_avx512;
#endif
#if defined(KVQ_HAVE_NEON)
extern const kvqi_index_kernels kvqi_index_neon;
#endif

const kvqi_index_kernels *kvqi_index_kernels_for(kvq_isa resolved) {
    switch (resolved) {
#if defined(KVQ_HAVE_X86_SIMD)
    case KVQ_ISA_AVX2: return &kvqi_index_avx2;
    case KVQ_ISA_AVX512: return &kvqi_index_avx512;
#endif
#if defined(KVQ_HAVE_NEON)
    case KVQ_ISA_NEON: return &kvqi_index_neon;
#endif
    default: return &k_scalar;
    }
}
