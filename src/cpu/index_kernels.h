/*
 * index_kernels.h - the RaBitQ index's hot kernels per ISA (scalar reference, AVX2,
 * AVX-512): fast-scan of 1-bit codes against a 4-bit query LUT (RaBitQ, arXiv
 * 2405.12497, section 3.3.2; the FAISS fast-scan block layout idea), and the dot/L2
 * kernels of the extended-code estimate and the exact rerank.
 */
#ifndef KVQ_INDEX_KERNELS_H
#define KVQ_INDEX_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kvq.h"

/* A fast-scan block holds the 1-bit codes of 32 vectors. Coordinates are taken four
 * at a time (a "group", one nibble per vector, coordinate 4g+t is bit t). Group g
 * takes 16 bytes; byte p holds vector lo(p) in its low nibble and hi(p) in its high
 * nibble, with lo(2k) = k, lo(2k+1) = 8+k, hi(2k) = 16+k, hi(2k+1) = 24+k, so that the
 * even/odd byte split of a 16-bit accumulator yields vectors in order. */
#define KVQI_FS_BLOCK 32
#define KVQI_FS_GROUP_BYTES 16

/* Byte position and nibble shift of vector v (0..31) inside a group's 16 bytes. */
static inline void kvqi_fs_slot(unsigned v, unsigned *byte, unsigned *shift) {
    unsigned half = v >> 4, w = v & 15; /* half 0: low nibble, 1: high */
    *byte = (w < 8) ? 2 * w : 2 * (w - 8) + 1;
    *shift = half * 4;
}

/* Query-side constants of one list for the 1-bit estimate of a block:
 *   sum_i b_i q'_i  ~= delta * S + vmin * popcount
 *   dist = (f_add + K) - alpha * f_rescale * (2 * that - sum_q)
 *   err  = sqrt((f_err * ferr)^2 + (f_rescale * qerr)^2)
 * (the code's error and the query's rounding error are independent, so their spreads
 * add in quadrature) and a vector is kept when dist - err < tau. */
typedef struct kvqi_block_consts {
    float delta, vmin, sum_q, K, alpha, ferr, qerr, tau;
} kvqi_block_consts;

typedef struct kvqi_index_kernels {
    kvq_isa isa;
    /* out[v] = sum over groups g of lut[g*16 + nibble(v, g)] for the 32 vectors of one
     * block. n_groups is a multiple of 4; lut entries are at most 60 (4-bit query). */
    void (*fastscan)(const uint8_t *block, const uint8_t *lut, uint32_t n_groups,
                     uint32_t out[KVQI_FS_BLOCK]);
    /* x = q - sub (sub may be NULL: x = q), d_pad long, zero past d -> 4-bit levels
     * u_i = (int)((x_i - vmin) / delta + 1/2) (0 past d) and for each group the 16 sums
     * of its levels selected by the nibble bits: lut[g * 16 + m] = sum_t bit_t(m)
     * u_{4g+t}. qu is scratch of d_pad bytes. */
    void (*build_lut4)(const float *q, const float *sub, uint32_t d, uint32_t d_pad, uint8_t *qu,
                       uint8_t *lut, float *vmin, float *delta);
    /* The estimates of a full block of 32 (formula above): writes dist[32], err[32] and
     * returns the bit mask of the vectors whose lower bound is below tau. */
    uint32_t (*estimate_block)(const uint32_t *S, const float *f_add, const float *f_rescale,
                               const float *f_err, const float *f_pop,
                               const kvqi_block_consts *c, float *dist, float *err);
    /* Distances from q[d] to 16 centroids stored transposed (ct[j * 16 + c] is coordinate
     * j of centroid c): out[c] = sum_j (ct - q)^2 (ip: -sum_j ct * q); coordinate j adds
     * into partial sum j % 4 (in order), then (s0 + s1) + (s2 + s3). */
    void (*probe16)(const float *ct, const float *q, uint32_t d, int ip, float out[16]);
    /* sum_i code[i] * q[i] in the canonical 16-lane order (see cpu.h). */
    float (*dot_u8)(const uint8_t *code, const float *q, size_t n);
    /* The same sum over packed b-bit values (b = 1..8, n a multiple of 16): value i is
     * bits [i b, i b + b) of code read as a little-endian bit stream (the index's packed
     * extended codes); equal to dot_u8 of the unpacked values, bit for bit. */
    float (*dot_packed)(const uint8_t *code, unsigned bits, const float *q, size_t n);
    /* sum_i (a[i] - b[i])^2, canonical order; a as fp32 or fp16 bits. */
    float (*l2sq)(const float *a, const float *b, size_t n);
    float (*l2sq_f16)(const uint16_t *a, const float *b, size_t n);
    /* sum_i a[i] * b[i], canonical order. */
    float (*dot)(const float *a, const float *b, size_t n);
    float (*dot_f16)(const uint16_t *a, const float *b, size_t n);
    /* probe16 for nq <= 8 queries q + b * q_stride at once: out[b * 16 + c] equals
     * probe16(ct, q + b * q_stride, d, ip)[c] bit for bit (the centroids are read once). */
    void (*probe16_multi)(const float *ct, const float *q, size_t q_stride, uint32_t nq, uint32_t d,
                          int ip, float *out);
} kvqi_index_kernels;

const kvqi_index_kernels *kvqi_index_kernels_for(kvq_isa resolved);

/* Scalar references (the tests compare every ISA against them). */
void kvqi_fastscan_scalar(const uint8_t *block, const uint8_t *lut, uint32_t n_groups,
                          uint32_t out[KVQI_FS_BLOCK]);
void kvqi_build_lut4_scalar(const float *q, const float *sub, uint32_t d, uint32_t d_pad,
                            uint8_t *qu, uint8_t *lut, float *vmin, float *delta);
uint32_t kvqi_estimate_block_scalar(const uint32_t *S, const float *f_add, const float *f_rescale,
                                    const float *f_err, const float *f_pop,
                                    const kvqi_block_consts *c, float *dist, float *err);
void kvqi_probe16_scalar(const float *ct, const float *q, uint32_t d, int ip, float out[16]);
void kvqi_probe16_multi_scalar(const float *ct, const float *q, size_t q_stride, uint32_t nq,
                               uint32_t d, int ip, float *out);
float kvqi_dot_u8_scalar(const uint8_t *code, const float *q, size_t n);
float kvqi_dot_packed_scalar(const uint8_t *code, unsigned bits, const float *q, size_t n);

/* Where value j (0..15) of a run of 16 packed b-bit values lies in the run's 2b bytes:
 * a byte-shuffle control taking its first byte and, when it straddles into the next,
 * that byte too (0x80: zero) into a 32-bit lane, and the right shift that aligns it. */
#define KVQI_PK_BIT(b, j) ((unsigned)(j) * (unsigned)(b))
#define KVQI_PK_SHIFT(b, j) (KVQI_PK_BIT(b, j) & 7u)
#define KVQI_PK_CTRL(b, j)                                                              \
    ((KVQI_PK_BIT(b, j) >> 3) |                                                         \
     ((KVQI_PK_SHIFT(b, j) + (b) > 8u ? (KVQI_PK_BIT(b, j) >> 3) + 1u : 0x80u) << 8) | \
     0x80800000u)
#define KVQI_PK_ROW16(M, b)                                                             \
    {M(b, 0),  M(b, 1),  M(b, 2),  M(b, 3),  M(b, 4),  M(b, 5),  M(b, 6),  M(b, 7),     \
     M(b, 8),  M(b, 9),  M(b, 10), M(b, 11), M(b, 12), M(b, 13), M(b, 14), M(b, 15)}
#define KVQI_PK_TABLE(M)                                                                \
    {KVQI_PK_ROW16(M, 1), KVQI_PK_ROW16(M, 2), KVQI_PK_ROW16(M, 3), KVQI_PK_ROW16(M, 4), \
     KVQI_PK_ROW16(M, 5), KVQI_PK_ROW16(M, 6), KVQI_PK_ROW16(M, 7), KVQI_PK_ROW16(M, 8)}
float kvqi_l2sq_scalar(const float *a, const float *b, size_t n);
float kvqi_l2sq_f16_scalar(const uint16_t *a, const float *b, size_t n);
float kvqi_dot_f16_scalar(const uint16_t *a, const float *b, size_t n);

#endif /* KVQ_INDEX_KERNELS_H */
