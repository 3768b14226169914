/*
 * positions.c - keys of position-aware methods in the cache. CommVQ (arXiv 2506.18879)
 * codes keys before RoPE and keeps each token's position in its code; the cache receives
 * keys after RoPE, so each row is turned back by its position (the token's index) before
 * kvq_encode_at. Scores need nothing more: kvq_score rotates the query by the stored
 * position, and <RoPE_-p q, RoPE_-p k> = <q, k> for any frequencies used on both sides.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cache/cache_internal.h"

kvq_status kvqi_cache_positions_init(kvq_cache *c) {
    kvq_config qc;
    kvq_status st = kvq_quantizer_config(c->key.quant, &qc);
    if (st != KVQ_OK) return st;
    if (qc.method == KVQ_METHOD_CHANNEL && qc.rope_base > 0.0f) { /* channel keys before RoPE */
        size_t C = c->cfg.chunk_tokens, half = c->dim / 2;
        c->pre_freq = kvqi_alloc_array(half, sizeof(double));
        c->pre_cos = kvqi_alloc_array(C * half, sizeof(float));
        c->pre_sin = kvqi_alloc_array(C * half, sizeof(float));
        c->pre_step = kvqi_alloc_array(2 * half, sizeof(double));
        c->pre_enc = kvqi_alloc_array(2 * half, sizeof(double));
        if (!c->pre_freq || !c->pre_cos || !c->pre_sin || !c->pre_step || !c->pre_enc) return KVQ_ERR_NOMEM;
        for (size_t j = 0; j < half; j++) c->pre_freq[j] = pow((double)qc.rope_base, -2.0 * (double)j / c->dim);
        c->pre_neox = qc.rope_pairing == KVQ_ROPE_NEOX;
        for (size_t j = 0; j < half; j++) {
            c->pre_step[2 * j] = cos((double)C * c->pre_freq[j]);
            c->pre_step[2 * j + 1] = sin((double)C * c->pre_freq[j]);
        }
        for (size_t j = 0; j < half; j++)
            for (size_t u = 0; u < C; u++) {
                c->pre_cos[j * C + u] = (float)cos((double)u * c->pre_freq[j]);
                c->pre_sin[j * C + u] = (float)sin((double)u * c->pre_freq[j]);
            }
        return KVQ_OK;
    }
    if (qc.method != KVQ_METHOD_COMM_VQ) return KVQ_OK;
    uint32_t half = c->dim / 2;
    c->rope_freq = kvqi_alloc_array(half, sizeof(double));
    c->pos_buf = kvqi_alloc_array(c->cfg.chunk_tokens, sizeof(int32_t));
    if (!c->rope_freq || !c->pos_buf) return KVQ_ERR_NOMEM;
    /* the frequencies and pairing comm_vq itself rotates with */
    for (uint32_t j = 0; j < half; j++)
        c->rope_freq[j] = pow((double)qc.rope_base, -2.0 * j / c->dim);
    c->rope_neox = qc.rope_pairing == KVQ_ROPE_NEOX;
    return KVQ_OK;
}

void kvqi_cache_positions_free(kvq_cache *c) {
    kvqi_free(c->rope_freq);
    kvqi_free(c->pos_buf);
    c->rope_freq = NULL;
    c->pos_buf = NULL;
    if (!c->pre_borrowed) {
        kvqi_free(c->pre_freq);
        kvqi_free(c->pre_cos);
        kvqi_free(c->pre_sin);
        kvqi_free(c->pre_step);
    }
    kvqi_free(c->pre_enc);
    c->pre_freq = c->pre_step = c->pre_enc = NULL;
    c->pre_cos = c->pre_sin = NULL;
    c->pre_borrowed = 0;
}

/* Keys before RoPE: the donor layer's tables where they are the same (frequencies, head
 * dim and chunk: the pairing only changes which channels a pair reads), so the layers
 * of a model hold one copy (the encoder's chunk angles stay each layer's own). */
void kvqi_pre_share(kvq_cache *c, const kvq_cache *donor) {
    if (!c->pre_freq || !donor || !donor->pre_freq || c->pre_borrowed || donor->dim != c->dim ||
        donor->cfg.chunk_tokens != c->cfg.chunk_tokens ||
        memcmp(donor->pre_freq, c->pre_freq, c->dim / 2 * sizeof(double)) != 0)
        return;
    kvqi_free(c->pre_freq);
    kvqi_free(c->pre_cos);
    kvqi_free(c->pre_sin);
    kvqi_free(c->pre_step);
    c->pre_freq = donor->pre_freq;
    c->pre_cos = donor->pre_cos;
    c->pre_sin = donor->pre_sin;
    c->pre_step = donor->pre_step;
    c->pre_borrowed = 1;
}

/* Channel keys before RoPE: cs[2 j], cs[2 j + 1] = cos, sin of chunk ci's start angle
 * (ci C theta_j) for every pair j; where cs holds chunk prev = ci - 1's, by one turn of C
 * theta (in double), else by sincos (prev SIZE_MAX: nothing held). */
void kvqi_pre_angles(const kvq_cache *c, size_t ci, size_t prev, double *cs) {
    if (prev != SIZE_MAX && prev + 1 == ci) {
        for (uint32_t j = 0; j < c->dim / 2; j++) {
            double cC = c->pre_step[2 * j], sC = c->pre_step[2 * j + 1], c0 = cs[2 * j], s0 = cs[2 * j + 1];
            cs[2 * j] = c0 * cC - s0 * sC;
            cs[2 * j + 1] = s0 * cC + c0 * sC;
        }
        return;
    }
    double p = (double)ci * (double)c->cfg.chunk_tokens;
    for (uint32_t j = 0; j < c->dim / 2; j++) {
        cs[2 * j] = cos(p * c->pre_freq[j]);
        cs[2 * j + 1] = sin(p * c->pre_freq[j]);
    }
}

/* Row x of the token at offset u of a chunk whose start angles are cs (kvqi_pre_angles)
 * turned back by its angle in each pair: the key before RoPE. */
void kvqi_pre_turn_back(const kvq_cache *c, float *x, const double *cs, size_t u) {
    uint32_t half = c->dim / 2;
    size_t C = c->cfg.chunk_tokens;
    for (uint32_t j = 0; j < half; j++) {
        uint32_t a = c->pre_neox ? j : 2 * j, b = c->pre_neox ? j + half : 2 * j + 1;
        double cu = c->pre_cos[j * C + u], su = c->pre_sin[j * C + u];
        double co = cs[2 * j] * cu - cs[2 * j + 1] * su, si = cs[2 * j + 1] * cu + cs[2 * j] * su;
        double xa = x[a], xb = x[b];
        x[a] = (float)(xa * co + xb * si);
        x[b] = (float)(xb * co - xa * si);
    }
}

kvq_status kvqi_cache_encode_keys(kvq_cache *c, float *rows, size_t pos, size_t n,
                                  uint8_t *codes) {
    if (!c->rope_freq) return kvq_encode(c->key.quant, rows, n, codes);
    if (pos + n > (size_t)INT32_MAX) return KVQ_ERR_CAPACITY; /* positions are int32 in the code */
    uint32_t d = c->dim, half = d / 2;
    for (size_t t = 0; t < n; t++) {
        float *x = rows + t * d;
        double p = (double)(pos + t);
        for (uint32_t j = 0; j < half; j++) {
            uint32_t a = c->rope_neox ? j : 2 * j, b = c->rope_neox ? j + half : 2 * j + 1;
            double phi = p * c->rope_freq[j], cs = cos(phi), sn = sin(phi);
            double xa = x[a], xb = x[b];
            x[a] = (float)(xa * cs + xb * sn); /* rotation by -phi */
            x[b] = (float)(xb * cs - xa * sn);
        }
        c->pos_buf[t] = (int32_t)(pos + t);
    }
    return kvq_encode_at(c->key.quant, rows, c->pos_buf, n, codes);
}
