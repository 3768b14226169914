/*
 * vq.c - rotated vector code: as turboquant_mse (rotate, keep ||x|| in fp16), but the
 * coordinates of u = Pi(x/||x||) are coded four at a time, by the nearest of 256 centroids
 * of a 4-d codebook (src/quant/vq_codebook.h, Lloyd's algorithm on N(0, 1) samples, as
 * tools/make_vq_codebook.py writes it): 2 bits a coordinate, as mse:bits=2, for an expected
 * error per coordinate of 0.096 / d against the scalar Lloyd-Max code's 0.1175 / d.
 * Decoded u^ = C[i] / sqrt(d) per group of four.
 * Code: [0,2) fp16 ||x||, [2, 2 + d/4) one codeword index a group of four coordinates.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu/vq_kernels.h"
#include "quant/quant.h"
#include "quant/vq_codebook.h"

#define VQ_GROUP 4u

const float *kvqi_vq_codebook(void) { return &kvqi_vq4_codebook[0][0]; }

uint32_t kvqi_vq_nearest(const float *v) {
    uint32_t best = 0;
    float bd = INFINITY;
    for (uint32_t k = 0; k < 256; k++) {
        const float *c = kvqi_vq4_codebook[k];
        float e0 = v[0] - c[0], e1 = v[1] - c[1], e2 = v[2] - c[2], e3 = v[3] - c[3];
        float dist = (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3);
        if (dist < bd) {
            bd = dist;
            best = k;
        }
    }
    return best;
}

static kvq_status vq_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits != 2) {
        kvqi_set_msg(why, n, "bits %u: the 4-d codebook codes 2 bits a coordinate", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->dim < VQ_GROUP || c->dim % VQ_GROUP) {
        kvqi_set_msg(why, n, "dim %u: needs a multiple of 4 coordinates", c->dim);
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

typedef struct vq_state {
    float soa[4 * 256]; /* the codebook by coordinate, for the search kernels */
    kvqi_vq_nearest_fn nearest;
} vq_state;

static kvq_status vq_init(kvq_quantizer *q) {
    vq_state *s = calloc(1, sizeof *s);
    if (!s) return KVQ_ERR_NOMEM;
    for (uint32_t k = 0; k < 256; k++)
        for (uint32_t i = 0; i < VQ_GROUP; i++) s->soa[i * 256 + k] = kvqi_vq4_codebook[k][i];
    s->nearest = kvqi_vq_nearest_for(q->isa);
    q->state = s;
    return KVQ_OK;
}

static void vq_destroy(kvq_quantizer *q) {
    free(q->state);
    q->state = NULL;
}

static size_t vq_code_size(const kvq_quantizer *q) { return 2 + q->cfg.dim / VQ_GROUP; }

static size_t vq_shared_size(const kvq_quantizer *q) {
    KVQI_UNUSED(q);
    return sizeof kvqi_vq4_codebook;
}

static kvq_status vq_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const vq_state *st = q->state;
    uint32_t d = q->cfg.dim;
    float u[KVQI_QUANT_MAX_DIM];
    float sd = sqrtf((float)d);
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        uint8_t *c = codes + i * q->code_size;
        float norm = kvqi_quant_norm(q, xi, d);
        kvqi_rotation_apply(&q->rot, xi, u, q->isa);
        float s = norm > 0.0f ? sd / norm : 0.0f;
        for (uint32_t j = 0; j < d; j++) u[j] *= s;
        st->nearest(st->soa, u, d / VQ_GROUP, c + 2);
        kvqi_wr16(c, kvqi_fp32_to_fp16(norm));
    }
    return KVQ_OK;
}

static kvq_status vq_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    uint32_t d = q->cfg.dim;
    float inv_sd = 1.0f / sqrtf((float)d);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float *xi = x + i * d;
        float g = kvqi_rd_half(c) * inv_sd;
        for (uint32_t j = 0; j < d / VQ_GROUP; j++) {
            const float *cw = kvqi_vq4_codebook[c[2 + j]];
            for (uint32_t t = 0; t < VQ_GROUP; t++) xi[j * VQ_GROUP + t] = g * cw[t];
        }
        kvqi_rotation_inverse(&q->rot, xi, xi, q->isa);
    }
    return KVQ_OK;
}

/* <q, x^> = ||x|| / sqrt(d) <Pi q, C[i]...>: rotate the query once, four products a byte. */
static kvq_status vq_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                           size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    uint32_t d = q->cfg.dim;
    float qr[KVQI_QUANT_MAX_DIM];
    kvqi_rotation_apply(&q->rot, query, qr, q->isa);
    float inv_sd = 1.0f / sqrtf((float)d);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float acc = 0.0f;
        for (uint32_t j = 0; j < d / VQ_GROUP; j++) {
            const float *cw = kvqi_vq4_codebook[c[2 + j]], *qj = qr + j * VQ_GROUP;
            acc += (qj[0] * cw[0] + qj[1] * cw[1]) + (qj[2] * cw[2] + qj[3] * cw[3]);
        }
        scores[i] = kvqi_rd_half(c) * inv_sd * acc;
    }
    return KVQ_OK;
}

static size_t vq_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    KVQI_UNUSED(q);
    if (cap < 1) return 0;
    t[0] = kvqi_tensor_f32("codebook.centroids", &kvqi_vq4_codebook[0][0], 256, VQ_GROUP);
    return 1;
}

static kvq_status vq_load(kvq_quantizer *q, const kvqi_st_file *f) {
    KVQI_UNUSED(q);
    if (!kvqi_tensor_equals_f32(f, "codebook.centroids", &kvqi_vq4_codebook[0][0], 256, VQ_GROUP))
        return KVQ_ERR_FORMAT;
    return KVQ_OK;
}

const kvqi_method kvqi_method_vq = {
    .method = KVQ_METHOD_VQ,
    .name = "vq",
    .validate = vq_validate,
    .init = vq_init,
    .destroy = vq_destroy,
    .code_size = vq_code_size,
    .shared_size = vq_shared_size,
    .encode = vq_encode,
    .decode = vq_decode,
    .score = vq_score,
    .save_tensors = vq_save,
    .load_tensors = vq_load,
};
