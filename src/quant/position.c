/*
 * position.c - the position-aware entry points (kvq_encode_at, kvq_decode_at,
 * kvq_score_at). Methods whose codes live before RoPE (comm_vq, arXiv 2506.18879) supply
 * their own; every other method ignores the positions and runs its plain call.
 */
#include "quant/quant.h"

KVQ_API kvq_status kvq_encode_at(const kvq_quantizer *q, const float *x, const int32_t *pos,
                                 size_t n, uint8_t *codes) {
    if (!q || !x || !codes || n == 0) return KVQ_ERR_INVALID_ARG;
    if (q->m->encode_at) return q->m->encode_at(q, x, pos, n, codes);
    return q->m->encode(q, x, n, codes);
}

KVQ_API kvq_status kvq_decode_at(const kvq_quantizer *q, const uint8_t *codes,
                                 const int32_t *pos, size_t n, float *x) {
    if (!q || !x || !codes || n == 0) return KVQ_ERR_INVALID_ARG;
    if (q->m->decode_at) return q->m->decode_at(q, codes, pos, n, x);
    return q->m->decode(q, codes, n, x);
}

KVQ_API kvq_status kvq_score_at(const kvq_quantizer *q, const float *query,
                                const uint8_t *codes, const int32_t *pos, size_t n,
                                float *scores) {
    if (!q || !query || !codes || !scores || n == 0) return KVQ_ERR_INVALID_ARG;
    if (q->m->score_at) return q->m->score_at(q, query, codes, pos, n, scores);
    return q->m->score(q, query, codes, n, scores, NULL);
}
