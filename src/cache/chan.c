/*
 * chan.c - per-channel keys (KVQI_PATH_CHAN, method "channel"), after KIVI (arXiv
 * 2402.02750): a key channel's values over one chunk of tokens share an fp16 minimum
 * and step, and each token stores round((x - min) / step). Keys of RoPE models keep
 * their large channels nearly constant over a chunk and their fast-turning channels
 * bounded, so a per-channel range is far tighter than a per-token one. The channels'
 * bits follow their spread over the first chunk's tokens (more bits where the range is
 * wide; a channel that does not move gets none and is its chunk midpoint), `bits` on
 * average.
 *
 * A head's block in a chunk: lo[dim] fp16, step[dim] fp16, then per 64 tokens one unit
 * of bits * dim * 8 bytes: the codes cut into planes of 4, 2 and 1 bits, four planes of
 * one width to a group laid out for integer multiply-adds (kvqi_chan_layout,
 * cpu/cache_kernels.h). The score of token t, sum_j q_j lo_j + sum_j q_j step_j code_j(t),
 * is an integer dot product of the planes with int16 weights per chunk and query head
 * (q_j step_j on a common scale, times 2^shift per plane), scaled, plus the bias. A chunk
 * is coded once all its tokens are in: until then they wait in the ring (q8_0 rows).
 */
#include <math.h>
#include <string.h>

#include "cache/cache_internal.h"
#include "quant/quant.h"

size_t kvqi_chan_block_bytes(uint32_t dim, uint32_t bits, size_t C) {
    return (size_t)4 * dim + C * dim * bits / 8;
}

/* chan_bits holds [n_kv][dim] bits; chan_layouts, once the first chunk is coded, per
 * head a kvqi_chan_layout and its arrays (a few KB a head: a cache of one short context
 * never codes a chunk, and holds less than fp16). */

#define LAYOUT_HEADER (((sizeof(kvqi_chan_layout) + 63) & ~(size_t)63))

static kvqi_chan_layout *layout_of(const kvq_cache *c, uint32_t g) {
    return (kvqi_chan_layout *)(void *)(c->chan_layouts + g * c->chan_layout_stride);
}

/* Channel j's coded minimum and step in a head's chunk block (fp16, as floats). */
static void range_of(const uint8_t *block, uint32_t dim, uint32_t j, float *lo, float *step) {
    uint16_t lo_h, step_h;
    memcpy(&lo_h, block + 2 * (size_t)j, 2);
    memcpy(&step_h, block + 2 * ((size_t)dim + j), 2);
    *lo = kvqi_fp16_to_fp32(lo_h);
    *step = kvqi_fp16_to_fp32(step_h);
}

size_t kvqi_chan_held_bytes(const kvq_cache *c) {
    return (size_t)c->n_kv * c->dim * (1 + (c->chan_qsum ? sizeof(double) : 0)) +
           (c->chan_layouts ? (size_t)c->n_kv * c->chan_layout_stride : 0);
}

/* Each head's layout is built in a worst-case buffer, then packed to the planes it has
 * (a 4-bit head of 64 channels: about half the worst case), all heads at the stride of
 * the largest. Once per cache, when the first chunk is coded. */
kvq_status kvqi_chan_layouts(kvq_cache *c) {
    if (c->chan_layouts) return KVQ_OK;
    uint8_t *tmp = kvqi_alloc_array(1, kvqi_chan_layout_bytes(c->dim));
    if (!tmp) return KVQ_ERR_NOMEM;
    kvqi_chan_layout L;
    size_t need = 0;
    for (uint32_t g = 0; g < c->n_kv; g++) {
        kvqi_chan_layout_build(&L, c->chan_bits + (size_t)g * c->dim, c->dim, tmp);
        need = KVQI_MAX(need, kvqi_chan_layout_pack(&L, NULL, NULL));
    }
    c->chan_layout_stride = LAYOUT_HEADER + ((need + 63) & ~(size_t)63);
    c->chan_layouts = kvqi_alloc_array((size_t)c->n_kv, c->chan_layout_stride);
    if (!c->chan_layouts) {
        kvqi_free(tmp);
        return KVQ_ERR_NOMEM;
    }
    for (uint32_t g = 0; g < c->n_kv; g++) {
        kvqi_chan_layout_build(&L, c->chan_bits + (size_t)g * c->dim, c->dim, tmp);
        kvqi_chan_layout *D = layout_of(c, g);
        kvqi_chan_layout_pack(&L, D, (uint8_t *)D + LAYOUT_HEADER);
    }
    kvqi_free(tmp);
    return KVQ_OK;
}

kvq_status kvqi_chan_init(kvq_cache *c) {
    size_t C = c->cfg.chunk_tokens;
    if (C % 64 != 0) {
        kvqi_set_msg(NULL, 0, "cache: channel keys need chunk_tokens a multiple of 64 (got %zu)", C);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->n_out) {
        kvqi_set_msg(NULL, 0, "cache: channel keys give every channel its own range: outliers must be 0");
        return KVQ_ERR_UNSUPPORTED;
    }
    size_t block = kvqi_chan_block_bytes(c->dim, c->cfg.key.bits, C);
    c->key.code_size = (block + C - 1) / C;
    c->chan_bits = kvqi_calloc_array((size_t)c->n_kv * c->dim, 1);
    if (!c->chan_bits) return KVQ_ERR_NOMEM;
    return KVQ_OK;
}

void kvqi_chan_free(kvq_cache *c) {
    kvqi_free(c->chan_bits);
    kvqi_free(c->chan_layouts);
    kvqi_free(c->chan_qsum);
    c->chan_qsum = NULL;
    c->chan_bits = NULL;
    c->chan_layouts = NULL;
}

/* Bits per channel of head g from each channel's range [lo, hi] over the first chunk:
 * greedy, one bit at a time to the channel whose error is largest, up to 8; ties to the
 * lower channel. A channel's error is its squared range times 4^-bits (its squared
 * step), times the root mean square of the queries observed on it
 * (kvq_cache_observe_queries) when there were any. A score's error is sum_j q_j e_j, of
 * variance sum_j q_j^2 step_j^2 / 12, which the mean square itself would minimize if the
 * observed queries were those to come; they are the first chunk's (136 when a cache is
 * fed token by token), and the square root hedges: decoding token by token (SmolLM2, 4 x
 * 512, float activations) the mean square lowered q3's KL from 0.0126 to 0.0106 but
 * raised q2's from 0.0451 to 0.0464, the root 0.0105 and 0.0379 (power 3/4: 0.0104,
 * 0.0434; the mean square with a floor of a quarter of the mean: 0.0103, 0.0439; half
 * mean square, half the mean: 0.0106, 0.0397). The query weight has a floor of 2^-10 of
 * the head's mean square, so a channel the observed queries left alone still competes
 * by its range. w: dim doubles of scratch. Same ranges and queries, same bits, on every
 * machine (doubles, fixed order, IEEE square root). Other powers of the range as the
 * weight (SmolLM2-135M, 8 x 512, float activations, without queries; q3 KL 0.0167 with
 * the square): 1.5: 0.0174, 2.5: 0.0184, 3: 0.0201; q2 0.0598 (+5.49 %) with the square:
 * 0.0666 (+6.54 %), 0.0576 (+5.91 %), 0.0575 (+5.29 %; top-1 86.7 % against 87.0 %). */
void kvqi_chan_allocate(kvq_cache *c, uint32_t g, const float *lo, const float *hi, double *w) {
    uint32_t dim = c->dim, total = c->cfg.key.bits * dim;
    uint8_t *b = c->chan_bits + (size_t)g * dim;
    const double *qs = c->chan_qsum ? c->chan_qsum + (size_t)g * dim : NULL;
    double qtot = 0.0;
    for (uint32_t j = 0; qs && j < dim; j++) qtot += qs[j];
    double floor_q = ldexp(qtot / dim, -10);
    for (uint32_t j = 0; j < dim; j++) {
        double r = lo[j] <= hi[j] ? (double)hi[j] - (double)lo[j] : 0.0;
        w[j] = r * r;
        if (qtot > 0.0) w[j] *= sqrt(qs[j] > floor_q ? qs[j] : floor_q);
        b[j] = 0;
    }
    for (uint32_t n = 0; n < total; n++) {
        uint32_t best = UINT32_MAX;
        double best_e = -1.0;
        for (uint32_t j = 0; j < dim; j++) {
            if (b[j] >= 8) continue;
            double e = ldexp(w[j], -2 * (int)b[j]);
            if (e > best_e) {
                best_e = e;
                best = j;
            }
        }
        if (best == UINT32_MAX) break;
        b[best]++;
    }
}

/* Queries' squares summed per KV head and channel (the head's query heads together), in
 * query order, until the bits are fixed; the sums are allocated by the first call and
 * freed once the bits are fixed (kvqi_chan_forget_queries). */
kvq_status kvqi_chan_observe(kvq_cache *c, const float *q, uint32_t n_q_heads, size_t n_queries) {
    if (c->chan_fixed) return KVQ_OK;
    if (!c->chan_qsum && !(c->chan_qsum = kvqi_calloc_array((size_t)c->n_kv * c->dim, sizeof(double))))
        return KVQ_ERR_NOMEM;
    uint32_t dim = c->dim, G = n_q_heads / c->n_kv;
    for (size_t t = 0; t < n_queries; t++)
        for (uint32_t h = 0; h < n_q_heads; h++) {
            const float *x = q + (t * n_q_heads + h) * (size_t)dim;
            double *s = c->chan_qsum + (size_t)(h / G) * dim;
            for (uint32_t j = 0; j < dim; j++) s[j] += (double)x[j] * (double)x[j];
        }
    return KVQ_OK;
}

void kvqi_chan_forget_queries(kvq_cache *c) {
    kvqi_free(c->chan_qsum);
    c->chan_qsum = NULL;
}

/* New bits (after a reset): the layouts are made again, at their new size, before the
 * first chunk is coded. */
void kvqi_chan_relayout(kvq_cache *c) {
    kvqi_free(c->chan_layouts);
    c->chan_layouts = NULL;
}

/* A head's chunk block is coded in passes over its rows (so no chunk of rows is held):
 * ranges from each channel's minimum and maximum over the tokens that count (sinks and
 * tokens a sliding window dropped do not: they are never read), refinements of the 1-2-bit
 * channels' ranges (kvqi_chan_fit), then each token's codes. Here: the first ranges. */
void kvqi_chan_ranges(const kvq_cache *c, uint32_t g, const float *lo, const float *hi, uint8_t *block) {
    uint32_t dim = c->dim;
    const uint8_t *bits = c->chan_bits + (size_t)g * dim;
    memset(block, 0, kvqi_chan_block_bytes(dim, c->cfg.key.bits, c->cfg.chunk_tokens));
    for (uint32_t j = 0; j < dim; j++) {
        float l = lo[j] <= hi[j] ? lo[j] : 0.0f, h = lo[j] <= hi[j] ? hi[j] : 0.0f;
        uint16_t lo_h, step_h;
        if (bits[j] == 0) { /* the midpoint, no codes */
            lo_h = kvqi_fp32_to_fp16(0.5f * (l + h));
            step_h = 0;
        } else {
            kvqi_channel_range(l, h, bits[j], &lo_h, &step_h);
        }
        memcpy(block + 2 * (size_t)j, &lo_h, 2);
        memcpy(block + 2 * ((size_t)dim + j), &step_h, 2);
    }
}

/* One refinement of head g's ranges (Lloyd's step for a uniform grid): with every
 * token's code fixed, the lo and step that minimise the channel's squared error are the
 * least-squares line through (code, value); the caller then recodes. acc holds the
 * channels' sums of code, code^2, value and value * code over the n tokens that count,
 * [4][dim] (kvqi_chan_accumulate).
 * Only channels of at most KVQI_CHAN_REFINE_BITS bits are refined: with 4 levels the
 * minimum-maximum grid spends its steps on the extremes (a Gaussian channel over 128
 * tokens: 0.25 sigma^2 of error, against 0.12 for the clipped grid), while from 3 bits
 * on the gain is small and the clipped extremes are the tokens attention may pick.
 * A degenerate fit (one distinct code, a step that is not positive or overflows fp16)
 * keeps the range it had. Same sums, same ranges, on every machine. */
void kvqi_chan_fit(const kvq_cache *c, uint32_t g, const float *acc, size_t n, uint8_t *block) {
    uint32_t dim = c->dim;
    const uint8_t *bits = c->chan_bits + (size_t)g * dim;
    for (uint32_t j = 0; j < dim; j++) {
        if (bits[j] == 0 || bits[j] > KVQI_CHAN_REFINE_BITS || n < 2) continue;
        /* sum k, sum k^2, sum x, sum x k */
        const double a[4] = {acc[j], acc[dim + j], acc[2 * (size_t)dim + j], acc[3 * (size_t)dim + j]};
        double den = (double)n * a[1] - a[0] * a[0];
        if (!(den > 0.0)) continue;
        double step = ((double)n * a[3] - a[0] * a[2]) / den, lo = (a[2] - step * a[0]) / (double)n;
        if (!(step > 0.0) || !(fabs(lo) < 65504.0)) continue;
        /* lo to fp16 first, then the best step for that lo: sum k (x - lo) / sum k^2 */
        uint16_t lo_h = kvqi_fp32_to_fp16((float)lo);
        double l = (double)kvqi_fp16_to_fp32(lo_h);
        step = (a[3] - l * a[0]) / a[1];
        if (!(step > 0.0) || !(step < 65504.0)) continue;
        uint16_t step_h = kvqi_fp32_to_fp16((float)step);
        if (step_h == 0) continue;
        memcpy(block + 2 * (size_t)j, &lo_h, 2);
        memcpy(block + 2 * ((size_t)dim + j), &step_h, 2);
    }
}

/* Whether head g has channels whose ranges kvqi_chan_fit refines (1 to
 * KVQI_CHAN_REFINE_BITS bits): without, the refinement passes are skipped. */
int kvqi_chan_refines(const kvq_cache *c, uint32_t g) {
    const uint8_t *bits = c->chan_bits + (size_t)g * c->dim;
    for (uint32_t j = 0; j < c->dim; j++)
        if (bits[j] >= 1 && bits[j] <= KVQI_CHAN_REFINE_BITS) return 1;
    return 0;
}

/* Head g's ranges in block as floats for the passes below: lo[j], step[j] and top[j] =
 * 2^bits - 1 (step 0 for a channel without bits). */
void kvqi_chan_ranges_f32(const kvq_cache *c, uint32_t g, const uint8_t *block, float *lo, float *step, float *top) {
    uint32_t dim = c->dim;
    const uint8_t *bits = c->chan_bits + (size_t)g * dim;
    for (uint32_t j = 0; j < dim; j++) {
        range_of(block, dim, j, &lo[j], &step[j]);
        top[j] = (float)((1u << bits[j]) - 1u);
    }
}

/* Keys coded before RoPE (cache/positions.c): scores of tokens [in, in + nb) of head g's
 * chunk block (one unit of 64) against qt, G heads turned back to the chunk's start. */
void kvqi_chan_pre_scores(const kvq_cache *c, uint32_t g, const uint8_t *block, size_t in, size_t nb, const float *qt,
                          uint32_t G, float *scores, size_t ld) {
    c->kern->chan_prerope_scores(block, layout_of(c, g), qt, G, c->pre_cos, c->pre_sin, c->cfg.chunk_tokens,
                                 in - in % 64, c->pre_neox, in, nb, scores, ld);
}

/* Adds one row to the sums kvqi_chan_fit reads ([4][dim]), under the present ranges
 * (kvqi_chan_ranges_f32). */
void kvqi_chan_accumulate(const kvq_cache *c, const float *row, const float *lo, const float *step, const float *top,
                          float *acc) {
    c->kern->chan_fit_sums(row, lo, step, top, c->dim, acc);
}

/* Token t's codes into its unit, plane by plane (the block starts zeroed). */
void kvqi_chan_put_row(const kvq_cache *c, uint32_t g, const float *row, const float *lo, const float *step,
                       const float *top, size_t t, uint8_t *block) {
    uint32_t dim = c->dim;
    const kvqi_chan_layout *L = layout_of(c, g);
    uint8_t *unit = block + (size_t)4 * dim + (t / 64) * L->unit_bytes;
    uint8_t codes[KVQI_QUANT_MAX_DIM];
    c->kern->chan_codes(row, lo, step, top, dim, codes);
    kvqi_chan_put_codes(L, unit, (uint32_t)(t % 64), codes);
}

/* The chan scratch of G query heads (kvqi_chan_weigh): W (int16, G planes caps), scale[G],
 * bias[G], then dim floats for the kernels. */
static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

size_t kvqi_chan_scratch_floats(uint32_t dim, uint32_t G) {
    return round16(((size_t)G * kvqi_chan_planes_cap(dim) + 1) / 2) + 2 * round16(G) + dim;
}

void kvqi_chan_scratch(float *w, uint32_t dim, uint32_t G, kvqi_chan_weighed *out) {
    out->W = (int16_t *)(void *)w;
    out->scale = w + round16(((size_t)G * kvqi_chan_planes_cap(dim) + 1) / 2);
    out->bias = out->scale + round16(G);
    out->wf = out->bias + round16(G);
}

/* G query heads' weights for head g's block of a chunk (kvqi_chunk_keys; cpu/cache_kernels.h,
 * chan_weights). */
void kvqi_chan_weigh(const kvq_cache *c, const float *q, uint32_t G, uint32_t g, const uint8_t *block,
                     const kvqi_chan_weighed *w) {
    c->kern->chan_weights(block, layout_of(c, g), q, G, w->W, w->scale, w->bias, w->wf);
}

/* Scores of tokens [in, in + nb) of head g's chunk block (one 64-token unit) from those
 * weights (natural order; the query carried the softmax scale). */
void kvqi_chan_dot(const kvq_cache *c, uint32_t G, uint32_t g, const uint8_t *block, size_t in, size_t nb,
                   const kvqi_chan_weighed *w, float *scores, size_t ld) {
    c->kern->chan_dot(block, layout_of(c, g), w->W, w->scale, w->bias, G, in, nb, scores, ld);
}
