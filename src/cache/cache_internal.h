/*
 * cache_internal.h - the compressed KV cache's handle, shared by cache.c (append,
 * memory) and attend.c (fused score -> online softmax -> weighted sum of values).
 */
#ifndef KVQ_CACHE_INTERNAL_H
#define KVQ_CACHE_INTERNAL_H

#include "core/core.h"
#include "cpu/cache_kernels.h"
#include "cpu/vq_kernels.h"

/* Tokens whose key magnitudes pick the outlier channels. Until that many have arrived
 * they stay exact in a staging buffer, so the choice does not depend on how the tokens
 * were split into append calls. */
#define KVQI_OUTLIER_PROBE_TOKENS 32u
/* Rows handed to the quantizer per encode call: the encode buffer holds this many rows,
 * held by every layer for the cache's life, so few; at least 5 (the channel keys' bits
 * take a row, two ranges and dim doubles of it). */
#define KVQI_ENCODE_ROWS 5u
/* least-squares refinements of a channel-key chunk's ranges, for channels of at most
 * KVQI_CHAN_REFINE_BITS bits (chan.c, kvqi_chan_fit) */
#define KVQI_CHAN_REFINE 3
#define KVQI_CHAN_REFINE_BITS 2u
/* Tokens per softmax block inside a chunk: scores for G heads, one rescale per block. */
#define KVQI_ATTEND_BLOCK KVQI_MAX_BLOCK_TOKENS

/* One chunk of the arena (kvq_cache.chunks): where head 0's codes of its tokens start. */
typedef struct kvqi_chunk {
    uint8_t *k, *v, *o; /* keys, values, outlier channels */
    uint8_t *slab;      /* the slab's allocation, on its first chunk only */
    uint32_t span;      /* chunks in its slab: head g's codes are g * span * C tokens on */
    uint32_t index;     /* its place in the slab */
} kvqi_chunk;

/* How a side of the cache (keys or values) is scored / decoded at attention time. */
typedef enum kvqi_code_path {
    KVQI_PATH_GENERIC = 0, /* kvq_score / kvq_decode through the quantizer */
    KVQI_PATH_F16,
    KVQI_PATH_Q8_0,
    KVQI_PATH_Q4_0,
    KVQI_PATH_ROT, /* rotated scalar code: work in the rotated domain */
    KVQI_PATH_SIGNS, /* keys: 1-bit sign codes (qjl, rabitq 1-bit, turboquant_prod) */
    KVQI_PATH_CHAN,  /* keys: per-channel ranges over each chunk (method channel, chan.c) */
    KVQI_PATH_VQ     /* values: vq's 4-d codes summed in the rotated domain (vq_kernels.h) */
} kvqi_code_path;

typedef struct kvqi_side {
    kvq_quantizer *quant;
    size_t code_size;
    kvqi_code_path path;
    kvqi_rot_layout rot;     /* PATH_ROT */
    float *rotation;         /* PATH_ROT: dim x dim, row r = output coordinate r of the
                                rotation (natural order; lane[] maps the kernels' lanes to
                                it); PATH_SIGNS: the mse part's, rows in lane order */
    uint16_t *lane;          /* PATH_ROT: lane p of the kernels holds coordinate lane[p] */
    uint16_t *rotation_h;    /* PATH_ROT: the same matrix in fp16 when every entry is an
                                fp16 number (randomized Hadamard at dim 4^k: +-2^-k);
                                `rotation` is NULL then */
    const struct kvqi_rotation *had; /* PATH_ROT: the quantizer's own randomized Hadamard,
                                applied in O(dim log dim) (rotation, rotation_h NULL): set
                                when it reproduces the matrix read back */
    int rotation_borrowed;   /* the matrix is the keys' (values, whatever the bits) or
                                another cache's (kvqi_cache_create_shared), identical: not
                                owned, not counted */
    kvqi_sign_layout signs;  /* PATH_SIGNS */
    float *proj;             /* PATH_SIGNS: m x dim, z = proj q */
    int signs_mse;           /* PATH_SIGNS: an mse part in `rot` (turboquant_prod) too */
    float *vq_cent;          /* PATH_VQ: the codebook divided by sqrt(dim), 256 x 4 (`had`
                                is the quantizer's own Hadamard, applied once per output) */
    kvqi_vq_accum_fn vq_accum; /* PATH_VQ */
} kvqi_side;

/* Per-thread scratch of attend, sized once for the cache's shape. */
typedef struct kvqi_attend_scratch {
    float *q;      /* [G][dim] query as the key kernels want it */
    float *q_raw;  /* [G][dim] query as given (exact tokens) */
    float *q_out;  /* [G][n_outliers] query entries on the outlier channels */
    float *scores; /* [G][BLOCK] */
    float *acc;    /* [G][dim] weighted sum of coded values (rotated domain for ROT) */
    float *acc_x;  /* [G][dim] weighted sum of exact values */
    float *vdec;   /* [BLOCK][dim] decoded values (generic path) */
    float *m, *l;  /* [G] running max and sum */
    float *kspan;  /* [G][chunk_tokens] generic key scores of the current chunk span */
    int8_t *q8;    /* [G][dim] integer key path: the quantized rotated query */
    float *q8_scale;
    int32_t *q8_sum;
    float *lut;    /* [G][m/8][256] sign keys: the query's table */
    float *zsum;   /* [G] */
    float *kbias;  /* [G] centered keys: <q, key mean> added to every coded score */
    /* channel keys before RoPE: the chunk whose start angles pre_cs holds and the chunk
     * the turned query pre_q ([G][dim]) was made for (SIZE_MAX: none) */
    size_t pre_ci, pre_qci;
    double *pre_cs; /* [dim / 2][2] cos, sin of that chunk's start angles */
    float *pre_q;
} kvqi_attend_scratch;

struct kvq_cache {
    kvq_cache_config cfg; /* resolved: chunk_tokens set, key/value dim = head_dim */
    uint32_t n_kv, dim, n_out;
    kvqi_side key, value;
    const kvqi_cache_kernels *kern;

    size_t n_tokens; /* appended */
    int coded;       /* 1 once the probe has fixed outlier channels and the key mean
                        (at once when neither is asked for); tokens are coded from then */

    /* arena: chunk c holds tokens [c*C, (c+1)*C); chunks are allocated in slabs of
     * `span` chunks laid out head-major, so one head's codes run on for span * C tokens:
     * key codes [head][span][C][key.code_size], then value codes [head][span][C]
     * [value.code_size], then outliers [head][span][n_out][C] fp16 (kvqi_chunk_keys,
     * _values, _outliers address them) */
    kvqi_chunk *chunks;
    size_t n_chunks, chunk_table_cap; /* n_chunks: allocated, whole slabs */
    size_t first_chunk; /* sliding window: chunks below this one are dropped (a slab is
                           freed once all its chunks are) */
    size_t last_append; /* position of the first token of the last append */
    size_t chunk_bytes;  /* one chunk's codes, every head */
    uint64_t arena_bytes; /* slabs held */

    /* tokens [0, n_coded) have codes in the arena; the rest are exact: in the stage
     * until the probe is full, then in the window ring (n_coded = n_tokens - window) */
    size_t n_coded;
    /* exact ring: slot = position mod ring, [win_cap][n_kv][ring_head bytes]; grows
     * with the context up to the ring, so short contexts hold only what they use */
    uint8_t *win_k, *win_v;
    size_t win_cap;
    /* the first n_sink tokens kept exact (fp16), [n_sink][n_kv][dim] */
    uint16_t *sink_k, *sink_v;
    /* outlier channels per head, ascending; mask[head][dim] = 1 on them */
    uint16_t *outlier_idx;
    uint8_t *outlier_mask;
    float *stage_k, *stage_v; /* [PROBE][n_kv][dim] until the channels (and the key mean)
                                 are fixed; freed then */
    float *key_mean;          /* [n_kv][dim] centered keys: the mean subtracted (0 on
                                 outlier channels) */

    float *enc_buf; /* [KVQI_ENCODE_ROWS][dim] rows of one head handed to the quantizer */
    uint16_t *out_buf;

    /* attend's scratch without a thread pool (one thread); with a pool, attend works in
     * the pool's buffers (kvqi_threadpool_buffers), shared by every cache on that pool */
    kvqi_attend_scratch *scratch;
    unsigned n_scratch;
    size_t scratch_bytes_each;

    /* position-aware keys (comm_vq, positions.c): RoPE frequencies to undo, pairing,
     * and the positions of one encode call (NULL for position-free methods) */
    double *rope_freq;
    /* channel keys coded before RoPE (key rope_base > 0): the pairs' frequencies, cos and
     * sin of C theta ([dim / 2][2]), of u theta for each chunk offset u ([pair][C]), the
     * encoder's chunk start angles ([dim / 2][2]), the pairing */
    double *pre_freq, *pre_step, *pre_enc;
    float *pre_cos, *pre_sin;
    int pre_neox, pre_borrowed; /* borrowed: all but pre_enc are the donor layer's */
    int rope_neox;
    int32_t *pos_buf;

    /* the exact ring: `ring` slots (the window; channel keys add one chunk, whose tokens
     * wait there until the chunk is full), each token's heads as ring_head bytes apiece:
     * fp16, or q8_0 rows (ring_q) with channel keys, whose ring outlasts the window */
    size_t ring, ring_head;
    kvq_quantizer *ring_q;
    /* channel keys (chan.c): bits per channel [n_kv][dim], fixed from the first chunk
     * when it is coded (chan_fixed: 1 from then until a reset) */
    uint8_t *chan_bits;
    int chan_fixed;
    /* and each channel's sum of squared queries [n_kv][dim] over the queries observed
     * until then (kvq_cache_observe_queries), which weighs the bits: allocated by the
     * first observation, freed when the bits are fixed (NULL: none observed) */
    double *chan_qsum;
    /* and each head's plane layout from them, made when the first chunk is coded */
    uint8_t *chan_layouts;
    size_t chan_layout_stride; /* bytes per head in chan_layouts */
};

/* Head g's codes of chunk ci (C tokens of them, contiguous; the next chunk of its slab
 * follows): keys, values, and the outlier channels ([n_out][C] fp16). */
static inline uint8_t *kvqi_chunk_keys(const kvq_cache *c, size_t ci, uint32_t g) {
    const kvqi_chunk *h = &c->chunks[ci];
    return h->k + (size_t)g * h->span * c->cfg.chunk_tokens * c->key.code_size;
}
static inline uint8_t *kvqi_chunk_values(const kvq_cache *c, size_t ci, uint32_t g) {
    const kvqi_chunk *h = &c->chunks[ci];
    return h->v + (size_t)g * h->span * c->cfg.chunk_tokens * c->value.code_size;
}
static inline uint8_t *kvqi_chunk_outliers(const kvq_cache *c, size_t ci, uint32_t g) {
    const kvqi_chunk *h = &c->chunks[ci];
    return h->o + (size_t)g * h->span * c->n_out * c->cfg.chunk_tokens * sizeof(uint16_t);
}

/* chan.c */
size_t kvqi_chan_block_bytes(uint32_t dim, uint32_t bits, size_t C);
kvq_status kvqi_chan_init(kvq_cache *c);
void kvqi_chan_free(kvq_cache *c);
kvq_status kvqi_chan_observe(kvq_cache *c, const float *q, uint32_t n_q_heads, size_t n_queries);
void kvqi_chan_forget_queries(kvq_cache *c);
/* bytes held for channel keys besides the codes: the bits per channel and, once made,
 * each head's plane layout */
size_t kvqi_chan_held_bytes(const kvq_cache *c);
/* allocates and builds the plane layouts if not yet done (KVQ_ERR_NOMEM) */
kvq_status kvqi_chan_layouts(kvq_cache *c);
/* head g's bits from its channels' ranges over the first chunk (w: dim doubles) */
void kvqi_chan_allocate(kvq_cache *c, uint32_t g, const float *lo, const float *hi, double *w);
void kvqi_chan_relayout(kvq_cache *c);
void kvqi_chan_ranges(const kvq_cache *c, uint32_t g, const float *lo, const float *hi, uint8_t *block);
int kvqi_chan_refines(const kvq_cache *c, uint32_t g);
void kvqi_chan_ranges_f32(const kvq_cache *c, uint32_t g, const uint8_t *block, float *lo, float *step, float *top);
void kvqi_chan_pre_scores(const kvq_cache *c, uint32_t g, const uint8_t *block, size_t in, size_t nb, const float *qt,
                          uint32_t G, float *scores, size_t ld);
void kvqi_chan_accumulate(const kvq_cache *c, const float *row, const float *lo, const float *step, const float *top,
                          float *acc);
void kvqi_chan_fit(const kvq_cache *c, uint32_t g, const float *acc, size_t n, uint8_t *block);
void kvqi_chan_put_row(const kvq_cache *c, uint32_t g, const float *row, const float *lo, const float *step,
                       const float *top, size_t t, uint8_t *block);
/* A chunk's channel-key weights for G query heads, computed once per chunk block and used
 * by every unit of it; carved from kvqi_chan_scratch_floats(dim, G) floats. */
typedef struct kvqi_chan_weighed {
    int16_t *W;
    float *scale, *bias, *wf;
} kvqi_chan_weighed;
size_t kvqi_chan_scratch_floats(uint32_t dim, uint32_t G);
void kvqi_chan_scratch(float *w, uint32_t dim, uint32_t G, kvqi_chan_weighed *out);
void kvqi_chan_weigh(const kvq_cache *c, const float *q, uint32_t G, uint32_t g, const uint8_t *block,
                     const kvqi_chan_weighed *w);
void kvqi_chan_dot(const kvq_cache *c, uint32_t G, uint32_t g, const uint8_t *block, size_t in, size_t nb,
                   const kvqi_chan_weighed *w, float *scores, size_t ld);

/* kvq_cache_create whose read-back rotations, where identical to one of donor's, are
 * donor's (borrowed): donor must outlive the cache. The layers of a context or cache set
 * share the first layer's. */
kvq_status kvqi_cache_create_shared(const kvq_cache_config *cfg, const kvq_cache *donor, kvq_cache **out);

kvq_status kvqi_cache_attend_impl(kvq_cache *c, const float *q, uint32_t n_q_heads,
                                  size_t n_queries, float scale, kvq_threadpool *pool,
                                  float *out);

/* positions.c: keys of position-aware methods arrive after RoPE and are encoded before
 * it, at their token positions. encode_keys may overwrite rows (n x dim scratch). */
kvq_status kvqi_cache_positions_init(kvq_cache *c);
void kvqi_pre_angles(const kvq_cache *c, size_t ci, size_t prev, double *cs);
void kvqi_pre_share(kvq_cache *c, const kvq_cache *donor);
void kvqi_pre_turn_back(const kvq_cache *c, float *x, const double *cs, size_t u);
void kvqi_cache_positions_free(kvq_cache *c);
kvq_status kvqi_cache_encode_keys(kvq_cache *c, float *rows, size_t pos, size_t n,
                                  uint8_t *codes);

#endif /* KVQ_CACHE_INTERNAL_H */
