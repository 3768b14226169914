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

/* q8_0 block: [0,2) fp16 d = amax/127, [2,34) int8 round(x/d). */
static size_t q8_code_size(const kvq_quantizer *q) { return (size_t)(q->cfg.dim / QK) * 34; }

static void q8_block_encode(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) {
        float v = fabsf(x[j]);
        if (v > amax) amax = v;
    }
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    kvqi_wr16(b, kvqi_fp32_to_fp16(d));
    for (int j = 0; j < QK; j++) b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

static kvq_status q8_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    uint32_t nb = q->cfg.dim / QK;
    for (size_t i = 0; i < n; i++)
        for (uint32_t b = 0; b < nb; b++)
            q8_block_encode(x + i * q->cfg.dim + b * QK, codes + i * q->code_size + b * 34);
    return KVQ_OK;
}

static kvq_status q8_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    uint32_t nb = q->cfg.dim / QK;
    for (size_t i = 0; i < n; i++)
        for (uint32_t b = 0; b < nb; b++) {
            const uint8_t *blk = codes + i * q->code_size + b * 34;
            float d = kvqi_rd_half(blk), *y = x + i * q->cfg.dim + b * QK;
            for (int j = 0; j < QK; j++) y[j] = (float)(int8_t)blk[2 + j] * d;
        }
    return KVQ_OK;
}

static kvq_status q8_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                           size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    uint32_t nb = q->cfg.dim / QK;
    for (size_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (uint32_t b = 0; b < nb; b++) {
            const uint8_t *blk = codes + i * q->code_size + b * 34;
            const float *qq = query + b * QK;
            float s = 0.0f;
            for (int j = 0; j < QK; j++) s += qq[j] * (float)(int8_t)blk[2 + j];
            acc += s * kvqi_rd_half(blk);
        }
        scores[i] = acc;
    }
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

static void q4_block_encode(const float *x, uint8_t *b) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK; j++) {
        const float v = x[j];
        if (amax < fabsf(v)) {
            amax = fabsf(v);
            max = v;
        }
    }
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    kvqi_wr16(b, kvqi_fp32_to_fp16(d));
    for (int j = 0; j < QK / 2; j++) {
        const float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
        int v0 = (int8_t)(x0 + 8.5f), v1 = (int8_t)(x1 + 8.5f);
        const uint8_t xi0 = (uint8_t)(v0 < 15 ? v0 : 15);
        const uint8_t xi1 = (uint8_t)(v1 < 15 ? v1 : 15);
        b[2 + j] = (uint8_t)(xi0 | (xi1 << 4));
    }
}

static kvq_status q4_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    uint32_t nb = q->cfg.dim / QK;
    for (size_t i = 0; i < n; i++)
        for (uint32_t b = 0; b < nb; b++)
            q4_block_encode(x + i * q->cfg.dim + b * QK, codes + i * q->code_size + b * 18);
    return KVQ_OK;
}

static kvq_status q4_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    uint32_t nb = q->cfg.dim / QK;
    for (size_t i = 0; i < n; i++)
        for (uint32_t b = 0; b < nb; b++) {
            const uint8_t *blk = codes + i * q->code_size + b * 18;
            float d = kvqi_rd_half(blk), *y = x + i * q->cfg.dim + b * QK;
            for (int j = 0; j < QK / 2; j++) {
                y[j] = (float)((blk[2 + j] & 0x0F) - 8) * d;
                y[j + QK / 2] = (float)((blk[2 + j] >> 4) - 8) * d;
            }
        }
    return KVQ_OK;
}

static kvq_status q4_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                           size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    uint32_t nb = q->cfg.dim / QK;
    for (size_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (uint32_t b = 0; b < nb; b++) {
            const uint8_t *blk = codes + i * q->code_size + b * 18;
            const float *qq = query + b * QK;
            float s = 0.0f;
            for (int j = 0; j < QK / 2; j++)
                s += qq[j] * (float)((blk[2 + j] & 0x0F) - 8) +
                     qq[j + QK / 2] * (float)((blk[2 + j] >> 4) - 8);
            acc += s * kvqi_rd_half(blk);
        }
        scores[i] = acc;
    }
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
