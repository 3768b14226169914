/*
 * positions.c - keys of position-aware methods in the cache. CommVQ (arXiv 2506.18879)
 * codes keys before RoPE and keeps each token's position in its code; the cache receives
 * keys after RoPE, so each row is turned back by its position (the token's index) before
 * kvq_encode_at. Scores need nothing more: kvq_score rotates the query by the stored
 * position, and <RoPE_-p q, RoPE_-p k> = <q, k> for any frequencies used on both sides.
 */
#include <math.h>
#include <string.h>

#include "cache/cache_internal.h"

kvq_status kvqi_cache_positions_init(kvq_cache *c) {
    kvq_config qc;
    kvq_status st = kvq_quantizer_config(c->key.quant, &qc);
    if (st != KVQ_OK) return st;
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
