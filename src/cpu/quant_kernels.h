/*
 * quant_kernels.h - the hot loops of the data-oblivious quantizers, one table per ISA
 * (quant_scalar.c is the reference; quant_avx2.c and quant_avx512.c must give the same
 * codes bit for bit and scores within float rounding of it).
 */
#ifndef KVQ_QUANT_KERNELS_H
#define KVQ_QUANT_KERNELS_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "kvq.h"

/* 1 / d for a q8_0 / q4_0 block's scale d, or 0 when d is below the normal floats (its
 * fp16 is 0, and 1 / d may overflow to infinity, whose conversion to an integer code is
 * undefined in C): such a block codes 0 (q4_0: 8) on every ISA and compiler. */
static inline float kvqi_block_inv(float d) { return fabsf(d) >= FLT_MIN ? 1.0f / d : 0.0f; }

/* Packed indices are LSB-first little-endian bit streams (core's kvqi_pack_bits layout):
 * index i of b bits occupies stream bits [i*b, i*b + b). */
typedef struct kvqi_quant_kernels {
    kvq_isa isa;
    /* out <- indices idx_i = #{k : x[i] * scale > thr[k]}, k < 2^bits - 1, packed.
     * thr ascending. Only comparisons and one multiply: identical on every ISA. */
    void (*quantize_pack)(const float *x, uint32_t n, float scale, const float *thr,
                          unsigned bits, uint8_t *out);
    /* bit i of out <- x[i] > 0 (n bits, tail of the last byte zero). */
    void (*sign_pack)(const float *x, uint32_t n, uint8_t *out);
    /* out[i] <- cb[idx_i] * scale */
    void (*lut_decode)(const uint8_t *packed, uint32_t n, unsigned bits, const float *cb,
                       float scale, float *out);
    /* sum_i q[i] * cb[idx_i] */
    float (*lut_dot)(const float *q, const uint8_t *packed, uint32_t n, unsigned bits,
                     const float *cb);
    /* sum of z[i] over the set bits of bits[] (n bits) */
    float (*masked_sum)(const float *z, const uint8_t *bits, uint32_t n);
    /* popcount(a & b) over nbytes */
    uint32_t (*and_popcount)(const uint8_t *a, const uint8_t *b, size_t nbytes);
    /* sum_j 2^j popcount(code & plane_j) over n_planes planes (plane j at planes +
     * j * plane_stride), nbytes each; *pop_code = popcount(code). RaBitQ's 4-bit query. */
    uint32_t (*popcount_planes)(const uint8_t *code, const uint8_t *planes, size_t plane_stride,
                                unsigned n_planes, size_t nbytes, uint32_t *pop_code);
    /* IEEE binary16 round-to-nearest-even conversions and a dot against fp16 data */
    void (*fp16_from_f32)(const float *x, size_t n, uint16_t *out);
    void (*fp16_to_f32)(const uint16_t *h, size_t n, float *out);
    float (*fp16_dot)(const float *q, const uint16_t *h, size_t n);
    /* Fused batch encoder for the 1-bit Hadamard codes (turboquant_mse b=1, rabitq b=1
     * without IVF): for each row, y = H(D x) unnormalised on a power-of-two dim
     * (n <= 1024), sign bits of y, ||x|| in the canonical dot order, and sum |y| in the
     * canonical order. NULL when the ISA has no fused path (callers fall back). */
    void (*hadamard_sign_batch)(const float *x, size_t rows, uint32_t dim, const float *sign,
                                uint8_t *bits_out, size_t bits_stride, float *norm_out,
                                float *abs_sum_out);
    /* Fused batch encoder for turboquant_rvq with 1 bit per pass on a power-of-two dim
     * with the Hadamard rotation (had: single pass): whole codes, code_size apart, in
     * turboquant_rvq.c's layout and exactly its arithmetic (rotation as core's
     * kvqi_hadamard_apply, x * sqrt(d)/||x||, stage scales rounded to fp16). */
    void (*rvq1_batch)(const float *x, size_t rows, const kvqi_hadamard *had, const float *cb_g,
                       const float *thr_g, const float *cb_l, const float *thr_l,
                       unsigned residuals, uint8_t *codes, size_t code_size);
    /* out = core's kvqi_hadamard_apply (inverse = 0) or kvqi_hadamard_inverse (1) of in,
     * bit for bit, for a single-pass (power-of-two) transform. in and out may alias. */
    void (*hadamard_pow2)(const kvqi_hadamard *had, const float *in, float *out, int inverse);
    /* llama.cpp blocks of 32 (ggml-quants.c reference formulas, byte for byte):
     * q8_0 = fp16 d + 32 int8 (34 bytes), q4_0 = fp16 d + 16 nibble bytes (18 bytes). */
    void (*q8_0_encode)(const float *x, uint32_t n_blocks, uint8_t *out);
    void (*q8_0_decode)(const uint8_t *in, uint32_t n_blocks, float *out);
    float (*q8_0_dot)(const float *q, const uint8_t *in, uint32_t n_blocks);
    void (*q4_0_encode)(const float *x, uint32_t n_blocks, uint8_t *out);
    void (*q4_0_decode)(const uint8_t *in, uint32_t n_blocks, float *out);
    float (*q4_0_dot)(const float *q, const uint8_t *in, uint32_t n_blocks);
} kvqi_quant_kernels;

/* Scalar references the AVX2 table shares (encoders whose cost is not in AVX2 arithmetic). */
void kvqi_q8_0_encode_scalar(const float *x, uint32_t n_blocks, uint8_t *out);
void kvqi_q4_0_encode_scalar(const float *x, uint32_t n_blocks, uint8_t *out);
void kvqi_hadamard_pow2_scalar(const kvqi_hadamard *had, const float *in, float *out, int inverse);
/* The scalar reference of rvq1_batch (the AVX2 table uses it too). */
void kvqi_rvq1_batch_scalar(const float *x, size_t rows, const kvqi_hadamard *had,
                            const float *cb_g, const float *thr_g, const float *cb_l,
                            const float *thr_l, unsigned residuals, uint8_t *codes,
                            size_t code_size);

/* The table for a resolved ISA (never NULL: falls back to scalar). */
const kvqi_quant_kernels *kvqi_quant_kernels_for(kvq_isa resolved);

/* Scalar references, also called directly by tests. */
extern const kvqi_quant_kernels kvqi_quant_scalar;

#endif /* KVQ_QUANT_KERNELS_H */
