/*
 * baseline.c - the reference formats every table compares against: fp16, and
 * llama.cpp's q8_0 and q4_0 blocks byte for byte (ggml-quants.c reference quantizers:
 * blocks of 32 values with one fp16 scale).
 */
#include <math.h>
#include <stdint.h>

#include "quant/quant.h"

#define QK 32

static kvq_status no_state(kvq_quantizer *q) {
    KVQI_UNUSED(q);
    return KVQ_OK;
}

/* ------------------------------------------------------------------- fp16 */

static kvq_status fp16_validate(const kvq_config *c, char *why, size_t n) {
    KVQI_UNUSED(c);
    KVQI_UNUSED(why);
    KVQI_UNUSED(n);
    return KVQ_OK;
}

static size_t fp16_code_size(const kvq_quantizer *q) { return (size_t)q->cfg.dim * 2; }

/* Rows are 2*dim bytes: aligned whenever the caller's buffer is; else go through a copy. */
static const uint16_t *fp16_row(const uint8_t *code, uint32_t d, uint16_t *tmp) {
    if (((uintptr_t)code & 1u) == 0) return (const uint16_t *)(const void *)code;
    memcpy(tmp, code, (size_t)d * 2);
    return tmp;
}

static kvq_status fp16_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    uint32_t d = q->cfg.dim;
    uint16_t tmp[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        q->k->fp16_from_f32(x + i * d, d, tmp);
        memcpy(codes + i * q->code_size, tmp, (size_t)d * 2);
    }
    return KVQ_OK;
}

static kvq_status fp16_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    uint32_t d = q->cfg.dim;
    uint16_t tmp[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++)
        q->k->fp16_to_f32(fp16_row(codes + i * q->code_size, d, tmp), d, x + i * d);
    return KVQ_OK;
}

static kvq_status fp16_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                             size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    uint32_t d = q->cfg.dim;
    uint16_t tmp[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++)
        scores[i] = q->k->fp16_dot(query, fp16_row(codes + i * q->code_size, d, tmp), d);
    return KVQ_OK;
}

const kvqi_method kvqi_method_fp16 = {
    .method = KVQ_METHOD_FP16,
    .name = "fp16",
    .validate = fp16_validate,
    .init = no_state,
    .code_size = fp16_code_size,
    .encode = fp16_encode,
    .decode = fp16_decode,
    .score = fp16_score,
};

/* ------------------------------------------------------- q8_0 and q4_0 */

static kvq_status block_validate(const kvq_config *c, char *why, size_t n) {
    if (c->dim % QK != 0) {
        kvqi_set_msg(why, n, "dim %u is not a multiple of the block size %d", c->dim, QK);
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

/* q8_0 block: [0,2) fp16 d = amax/127, [2,34) int8 roundf(x/d) (kernels in src/cpu). */
static size_t q8_code_size(const kvq_quantizer *q) { return (size_t)(q->cfg.dim / QK) * 34; }

static kvq_status q8_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    for (size_t i = 0; i < n; i++)
        q->k->q8_0_encode(x + i * q->cfg.dim, q->cfg.dim / QK, codes + i * q->code_size);
    return KVQ_OK;
}

static kvq_status q8_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    for (size_t i = 0; i < n; i++)
        q->k->q8_0_decode(codes + i * q->code_size, q->cfg.dim / QK, x + i * q->cfg.dim);
    return KVQ_OK;
}

static kvq_status q8_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                           size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    for (size_t i = 0; i < n; i++)
        scores[i] = q->k->q8_0_dot(query, codes + i * q->code_size, q->cfg.dim / QK);
    return KVQ_OK;
}

const kvqi_method kvqi_method_q8_0 = {
    .method = KVQ_METHOD_Q8_0,
    .name = "q8_0",
    .validate = block_validate,
    .init = no_state,
    .code_size = q8_code_size,
    .encode = q8_encode,
    .decode = q8_decode,
    .score = q8_score,
};

/* q4_0 block: [0,2) fp16 d = max/-8 (max: the value of largest magnitude, signed),
 * [2,18) nibbles q = min(15, (int8)(x/d + 8.5)); byte j holds element j in its low
 * nibble and element j+16 in its high nibble. Value = (q - 8) * d. */
static size_t q4_code_size(const kvq_quantizer *q) { return (size_t)(q->cfg.dim / QK) * 18; }

static kvq_status q4_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    for (size_t i = 0; i < n; i++)
        q->k->q4_0_encode(x + i * q->cfg.dim, q->cfg.dim / QK, codes + i * q->code_size);
    return KVQ_OK;
}

static kvq_status q4_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    for (size_t i = 0; i < n; i++)
        q->k->q4_0_decode(codes + i * q->code_size, q->cfg.dim / QK, x + i * q->cfg.dim);
    return KVQ_OK;
}

static kvq_status q4_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                           size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    for (size_t i = 0; i < n; i++)
        scores[i] = q->k->q4_0_dot(query, codes + i * q->code_size, q->cfg.dim / QK);
    return KVQ_OK;
}

const kvqi_method kvqi_method_q4_0 = {
    .method = KVQ_METHOD_Q4_0,
    .name = "q4_0",
    .validate = block_validate,
    .init = no_state,
    .code_size = q4_code_size,
    .encode = q4_encode,
    .decode = q4_decode,
    .score = q4_score,
};
