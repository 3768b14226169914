/*
 * rabitq.c - RaBitQ (arXiv 2405.12497) and extended RaBitQ (arXiv 2409.09913):
 * o = Pi(x - c)/||x - c|| for the nearest IVF centroid c (none when nlist = 0), coded
 * with b bits per coordinate on the grid x^_i = +-(k_i + 1/2), k_i < 2^(b-1), scaled to
 * maximise cos(x^, o) (b = 1: the sign code, x^/||x^|| = o^ = sign(o)/sqrt(d)).
 * <q, x> = <q, c> + ||x - c|| <Pi q, o> and <Pi q, o> ~ <x^, Pi q> / <x^, o>, unbiased
 * over the rotation, with |error| <= eps0 sqrt((1 - cos^2)/cos^2) ||q|| / sqrt(d - 1)
 * w.h.p. The query may be scalar-quantized to 4 bits with random dithering (unbiased;
 * the dither seed is a hash of the query, so scores are reproducible), so a 1-bit score
 * is popcounts over 4 bit-planes. Layouts: docs/METHODS.md.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "quant/quant.h"

#define RABITQ_MAX_NLIST 4096u
#define KMEANS_ITERS 25u

typedef struct rabitq_state {
    unsigned B, K; /* bits, K = 2^(B-1) codes per sign */
    unsigned qb;
    int split;
    uint32_t nlist;
    float *centroids; /* nlist x d */
    size_t hdr, plane_bytes, low_bytes, payload;
    float cb_centered[256]; /* u - (2^B - 1)/2 */
    float cb_low[128];      /* k */
} rabitq_state;

/* Header. 1-bit: [0,2) fp16 ||x-c||, [2,4) fp16 <o^,o>. b >= 2 (fp16 would round
 * cos ~ 0.9999 to 1 and bias the estimate): [0,4) f32 ||x-c||, [4,8) f32 cos(x^,o),
 * [8,12) f32 ||x^||, split only: [12,14) fp16 <o^,o> of the sign plane. Then, with
 * nlist > 0, a u16 cluster id; then the payload. */
static size_t off_id(const rabitq_state *s) {
    return s->B == 1 ? 4 : (s->split ? 14 : 12);
}
static float rd_norm(const rabitq_state *s, const uint8_t *c) {
    return s->B == 1 ? kvqi_rd_half(c) : kvqi_rdf32(c);
}
static float rd_cos(const rabitq_state *s, const uint8_t *c) {
    return s->B == 1 ? kvqi_rd_half(c + 2) : kvqi_rdf32(c + 4);
}

static int is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

static kvq_status rabitq_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits < 1 || c->bits > 8) {
        kvqi_set_msg(why, n, "bits %u outside 1..8", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->query_bits != 4 && c->query_bits != 32) {
        kvqi_set_msg(why, n, "query_bits %u: 4 (popcount scoring) or 32 (float query)", c->query_bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->split && c->bits < 2) {
        kvqi_set_msg(why, n, "split=1 needs bits >= 2 (1-bit plane + bits-1 low bits)");
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->nlist > RABITQ_MAX_NLIST) {
        kvqi_set_msg(why, n, "nlist %u above %u", c->nlist, RABITQ_MAX_NLIST);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->dim < 2) {
        kvqi_set_msg(why, n, "dim %u: needs at least 2 coordinates", c->dim);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (!(c->eps0 > 0.0f) || !isfinite(c->eps0)) {
        kvqi_set_msg(why, n, "eps0 must be positive");
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

static kvq_status rabitq_init(kvq_quantizer *q) {
    rabitq_state *s = calloc(1, sizeof *s);
    if (!s) return KVQ_ERR_NOMEM;
    uint32_t d = q->cfg.dim;
    s->B = q->cfg.bits;
    s->K = 1u << (s->B - 1);
    s->qb = q->cfg.query_bits;
    s->split = (int)q->cfg.split;
    s->nlist = q->cfg.nlist;
    s->hdr = off_id(s) + (s->nlist ? 2 : 0);
    if (s->B == 1) {
        s->plane_bytes = (d + 7) / 8;
    } else if (s->split) {
        s->plane_bytes = (d + 7) / 8;
        s->low_bytes = kvqi_packed_size(d, s->B - 1);
    } else {
        s->low_bytes = kvqi_packed_size(d, s->B);
    }
    s->payload = s->plane_bytes + s->low_bytes;
    for (unsigned u = 0; u < (1u << s->B); u++) s->cb_centered[u] = (float)u - ((float)(1u << s->B) - 1.0f) * 0.5f;
    for (unsigned k = 0; k < 128; k++) s->cb_low[k] = (float)k;
    if (s->nlist) {
        s->centroids = kvqi_calloc_array((size_t)s->nlist * d, sizeof(float));
        if (!s->centroids) {
            free(s);
            return KVQ_ERR_NOMEM;
        }
    }
    q->state = s;
    q->fitted = s->nlist == 0;
    return KVQ_OK;
}

static void rabitq_destroy(kvq_quantizer *q) {
    rabitq_state *s = q->state;
    if (s) kvqi_free(s->centroids);
    free(s);
    q->state = NULL;
}

static size_t rabitq_code_size(const kvq_quantizer *q) {
    const rabitq_state *s = q->state;
    return s->hdr + s->payload;
}

static size_t rabitq_shared_size(const kvq_quantizer *q) {
    const rabitq_state *s = q->state;
    return (size_t)s->nlist * q->cfg.dim * sizeof(float);
}

static kvq_status rabitq_fit(kvq_quantizer *q, const float *x, size_t n) {
    rabitq_state *s = q->state;
    if (!s->nlist) return KVQ_OK;
    if (n < s->nlist) return KVQ_ERR_INVALID_ARG;
    kvq_status st = kvqi_kmeans(x, n, q->cfg.dim, s->nlist, KMEANS_ITERS,
                                kvqi_seed_mix(q->cfg.seed, 0x49564655u), s->centroids, NULL);
    if (st == KVQ_OK) q->fitted = 1;
    return st;
}

/* Nearest centroid by squared distance in the canonical order (ties: lowest id). */
static uint32_t nearest_centroid(const kvq_quantizer *q, const float *x, float *diff) {
    const rabitq_state *s = q->state;
    uint32_t d = q->cfg.dim, best = 0;
    float best_d = INFINITY;
    for (uint32_t k = 0; k < s->nlist; k++) {
        const float *c = s->centroids + (size_t)k * d;
        for (uint32_t i = 0; i < d; i++) diff[i] = x[i] - c[i];
        float dist = q->base->dot(diff, diff, d);
        if (dist < best_d) {
            best_d = dist;
            best = k;
        }
    }
    return best;
}

static float abs_sum_canonical(const float *y, uint32_t n) {
    float acc[KVQI_DOT_LANES] = {0};
    for (uint32_t i = 0; i < n; i++) acc[i % KVQI_DOT_LANES] += fabsf(y[i]);
    for (int w = KVQI_DOT_LANES / 2; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) acc[j] = acc[j] + acc[j + w];
    return acc[0];
}

/* ------------------------------------------------- extended-code search */

/* A step (t, i) as one integer: the bits of a positive float t order like t itself, and
 * the coordinate breaks ties. */
typedef uint64_t ev;

static inline ev ev_make(double t, uint32_t i) {
    float f = (float)t;
    uint32_t b;
    memcpy(&b, &f, 4);
    return ((uint64_t)b << 32) | i;
}
static inline uint32_t ev_index(ev e) { return (uint32_t)e; }

static void heap_push(ev *h, uint32_t *n, ev e) {
    uint32_t i = (*n)++;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (e >= h[p]) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static ev heap_pop(ev *h, uint32_t *n) {
    ev top = h[0], last = h[--(*n)];
    uint32_t i = 0, cnt = *n;
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= cnt) break;
        uint32_t m = (l + 1 < cnt && h[l + 1] < h[l]) ? l + 1 : l;
        if (h[m] >= last) break;
        h[i] = h[m];
        i = m;
    }
    if (cnt) h[i] = last;
    return top;
}

static unsigned start_code(double t, double a, unsigned K) {
    double v = floor(t * a);
    if (!(v >= 0)) return 0; /* also NaN */
    return v >= K - 1 ? K - 1 : (unsigned)v;
}

/* Codes at t_lo, and the heap of the next steps up to t_hi. */
static void ext_start(const double *ao, uint32_t d, unsigned K, double t_lo, double t_hi,
                      unsigned char *k, ev *heap, uint32_t *hn, double *ip, double *sq) {
    *hn = 0;
    *ip = 0;
    *sq = 0;
    for (uint32_t i = 0; i < d; i++) {
        k[i] = (unsigned char)start_code(t_lo, ao[i], K);
        *ip += (k[i] + 0.5) * ao[i];
        *sq += (k[i] + 0.5) * (k[i] + 0.5);
        if (k[i] + 1u < K && ao[i] > 0) {
            double t = (k[i] + 1.0) / ao[i];
            if (t <= t_hi) heap_push(heap, hn, ev_make(t, i));
        }
    }
}

/* Search window for t in units of K / max|o|: where the optimum fell for Gaussian
 * data at d = 128 (b=2: 1.20..1.78, b=3: 1.01..1.37, b=4: 0.95..1.18, b>=5: 0.91..1.07),
 * widened; the walk inside it is exact. */
static void ext_window(unsigned K, double *lo, double *hi) {
    switch (K) {
    case 2: *lo = 0.9, *hi = 2.4; break;
    case 4: *lo = 0.8, *hi = 1.7; break;
    case 8: *lo = 0.75, *hi = 1.4; break;
    default: *lo = 0.75, *hi = 1.25; break;
    }
}

static double ext_search(const double *ao, uint32_t d, unsigned K, unsigned char *k, double *sq_out) {
    ev heap[KVQI_QUANT_MAX_DIM];
    uint32_t hn = 0;
    double amax = 0, ip, sq, t_lo = 0, t_hi = INFINITY;
    for (uint32_t i = 0; i < d; i++) amax = ao[i] > amax ? ao[i] : amax;
    if (amax > 0) {
        double wl, wh;
        ext_window(K, &wl, &wh);
        t_lo = wl * K / amax;
        t_hi = wh * K / amax;
    }
    ext_start(ao, d, K, t_lo, t_hi, k, heap, &hn, &ip, &sq);
    double best = ip / sqrt(sq), best_ip = ip, best_sq = sq;
    ev best_ev = 0;
    int moved = 0;
    while (hn) {
        ev e = heap_pop(heap, &hn);
        uint32_t ei = ev_index(e);
        unsigned ki = k[ei];
        ip += ao[ei];
        sq += 2.0 * ki + 2.0;
        k[ei] = (unsigned char)(ki + 1);
        double c = ip / sqrt(sq);
        if (c > best) {
            best = c;
            best_ip = ip;
            best_sq = sq;
            best_ev = e;
            moved = 1;
        }
        if (ki + 2 < K) {
            double t = (ki + 2) / ao[ei];
            if (t <= t_hi) heap_push(heap, &hn, ev_make(t, ei));
        }
    }
    /* the codes after the best step: every step (t, i) ordered before or at it, with t
     * computed exactly as the walk computed it */
    for (uint32_t i = 0; i < d; i++) {
        unsigned c0 = start_code(t_lo, ao[i], K), ki = c0;
        if (moved && ao[i] > 0)
            while (ki + 1 < K) {
                double t = (ki + 1.0) / ao[i];
                if (t > t_hi || ev_make(t, i) > best_ev) break;
                ki++;
            }
        k[i] = (unsigned char)ki;
    }
    *sq_out = best_sq;
    return best_ip;
}

static void put_low(uint8_t *p, uint32_t i, unsigned bits, unsigned v) {
    size_t bit = (size_t)i * bits;
    unsigned shift = (unsigned)(bit & 7);
    p[bit >> 3] |= (uint8_t)(v << shift);
    if (shift + bits > 8) p[(bit >> 3) + 1] |= (uint8_t)(v >> (8 - shift));
}

static unsigned get_low(const uint8_t *p, uint32_t i, unsigned bits) {
    size_t bit = (size_t)i * bits;
    unsigned shift = (unsigned)(bit & 7);
    unsigned v = p[bit >> 3] >> shift;
    if (shift + bits > 8) v |= (unsigned)p[(bit >> 3) + 1] << (8 - shift);
    return v & ((1u << bits) - 1u);
}

/* Code values u_i in 0..2^B-1 of one code (u >= 2^(B-1) <=> positive). */
static void unpack_u(const rabitq_state *s, const uint8_t *payload, uint32_t d, uint8_t *u) {
    if (s->B == 1) {
        for (uint32_t i = 0; i < d; i++) u[i] = (payload[i >> 3] >> (i & 7)) & 1;
    } else if (s->split) {
        for (uint32_t i = 0; i < d; i++)
            u[i] = (uint8_t)((((payload[i >> 3] >> (i & 7)) & 1) << (s->B - 1)) |
                             get_low(payload + s->plane_bytes, i, s->B - 1));
    } else {
        for (uint32_t i = 0; i < d; i++) u[i] = (uint8_t)get_low(payload, i, s->B);
    }
}

/* ------------------------------------------------------------------ encode */

static int fused_ok(const kvq_quantizer *q) {
    const rabitq_state *s = q->state;
    return s->B == 1 && s->nlist == 0 && q->rot.kind == KVQI_ROT_HADAMARD && is_pow2(q->cfg.dim) &&
           q->cfg.dim <= 1024 && q->cfg.dim >= 16;
}

#define FUSED_BATCH 64

static void encode_one(const kvq_quantizer *q, const float *x, uint8_t *c) {
    const rabitq_state *s = q->state;
    uint32_t d = q->cfg.dim;
    float diff[KVQI_QUANT_MAX_DIM], y[KVQI_QUANT_MAX_DIM];
    const float *r = x;
    if (s->nlist) {
        uint32_t id = nearest_centroid(q, x, diff);
        const float *cen = s->centroids + (size_t)id * d;
        for (uint32_t i = 0; i < d; i++) diff[i] = x[i] - cen[i];
        r = diff;
        kvqi_wr16(c + off_id(s), (uint16_t)id);
    }
    float rnorm = kvqi_quant_norm(q, r, d);
    if (s->B == 1) kvqi_wr16(c, kvqi_fp32_to_fp16(rnorm));
    else kvqi_wrf32(c, rnorm);
    kvqi_rotation_apply(&q->rot, r, y, q->isa);
    float ynorm = kvqi_quant_norm(q, y, d);
    uint8_t *pay = c + s->hdr;
    memset(pay, 0, s->payload);
    float cos1 = ynorm > 0.0f ? abs_sum_canonical(y, d) / (sqrtf((float)d) * ynorm) : 1.0f;
    if (s->B == 1) {
        q->k->sign_pack(y, d, pay);
        kvqi_wr16(c + 2, kvqi_fp32_to_fp16(cos1));
        return;
    }
    double ao[KVQI_QUANT_MAX_DIM], sq;
    unsigned char k[KVQI_QUANT_MAX_DIM];
    double inv = ynorm > 0.0f && isfinite(ynorm) ? 1.0 / ynorm : 0.0;
    for (uint32_t i = 0; i < d; i++) ao[i] = fabs((double)y[i]) * inv;
    double ip = ext_search(ao, d, s->K, k, &sq);
    double cosf_full = ynorm > 0.0f ? ip / sqrt(sq) : 1.0;
    kvqi_wrf32(c + 4, (float)cosf_full);
    kvqi_wrf32(c + 8, (float)sqrt(sq));
    if (s->split) {
        kvqi_wr16(c + 12, kvqi_fp32_to_fp16(cos1));
        q->k->sign_pack(y, d, pay);
        for (uint32_t i = 0; i < d; i++) {
            unsigned low = y[i] > 0.0f ? k[i] : s->K - 1 - k[i];
            put_low(pay + s->plane_bytes, i, s->B - 1, low);
        }
    } else {
        for (uint32_t i = 0; i < d; i++) {
            unsigned u = y[i] > 0.0f ? s->K + k[i] : s->K - 1 - k[i];
            put_low(pay, i, s->B, u);
        }
    }
}

static kvq_status rabitq_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const rabitq_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    uint32_t d = q->cfg.dim;
    size_t cs = q->code_size;
    if (fused_ok(q)) {
        uint8_t bits[FUSED_BATCH * 128];
        float norms[FUSED_BATCH], abs_sum[FUSED_BATCH];
        uint16_t half_norm[FUSED_BATCH], half_cos[FUSED_BATCH];
        size_t stride = d / 8;
        const float inv_d = 1.0f / (float)d;
        for (size_t i = 0; i < n; i += FUSED_BATCH) {
            size_t rows = KVQI_MIN((size_t)FUSED_BATCH, n - i);
            q->k->hadamard_sign_batch(x + i * d, rows, d, q->rot.had.sign1, bits, stride, norms, abs_sum);
            /* unnormalised H: ||H D x|| = sqrt(d) ||x||, so <o^, o> = sum|y| / (d ||x||) */
            for (size_t r = 0; r < rows; r++)
                abs_sum[r] = norms[r] > 0.0f ? abs_sum[r] * inv_d / norms[r] : 1.0f;
            q->k->fp16_from_f32(norms, rows, half_norm);
            q->k->fp16_from_f32(abs_sum, rows, half_cos);
            for (size_t r = 0; r < rows; r++) {
                uint8_t *c = codes + (i + r) * cs;
                kvqi_wr16(c, half_norm[r]);
                kvqi_wr16(c + 2, half_cos[r]);
                memcpy(c + s->hdr, bits + r * stride, stride);
            }
        }
        return KVQ_OK;
    }
    for (size_t i = 0; i < n; i++) encode_one(q, x + i * d, codes + i * cs);
    return KVQ_OK;
}

static kvq_status rabitq_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    const rabitq_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    uint32_t d = q->cfg.dim;
    uint8_t u[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        float *xi = x + i * d;
        float norm = rd_norm(s, c);
        unpack_u(s, c + s->hdr, d, u);
        /* x^ scaled to the norm of x - c: the cosine-optimal direction */
        float xn = s->B == 1 ? 0.5f * sqrtf((float)d) : kvqi_rdf32(c + 8);
        const float *cb = s->B == 1 ? (const float[]){-0.5f, 0.5f} : s->cb_centered;
        float scale = xn > 0.0f ? norm / xn : 0.0f;
        for (uint32_t k = 0; k < d; k++) xi[k] = cb[u[k]] * scale;
        kvqi_rotation_inverse(&q->rot, xi, xi, q->isa);
        if (s->nlist) {
            uint16_t id = kvqi_rd16(c + off_id(s));
            if (id >= s->nlist) return KVQ_ERR_FORMAT;
            const float *cen = s->centroids + (size_t)id * d;
            for (uint32_t k = 0; k < d; k++) xi[k] += cen[k];
        }
    }
    return KVQ_OK;
}

/* ------------------------------------------------------------------- score */

static uint64_t hash_floats(const float *x, uint32_t n, uint64_t seed) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        h = (h ^ b) * 1099511628211ull;
    }
    return h;
}

typedef struct query4 {
    float lo, delta;
    float vsum; /* sum of the 4-bit levels */
    uint8_t v[KVQI_QUANT_MAX_DIM];
    uint8_t planes[4][KVQI_QUANT_MAX_DIM / 8];
} query4;

/* Randomized rounding to 16 levels (RaBitQ Sec. 3.3): E[lo + delta v_i] = q_i exactly. */
static void quantize_query(const kvq_quantizer *q, const float *qr, uint32_t d, query4 *Q) {
    float lo = qr[0], hi = qr[0];
    for (uint32_t i = 1; i < d; i++) {
        lo = fminf(lo, qr[i]);
        hi = fmaxf(hi, qr[i]);
    }
    Q->lo = lo;
    Q->delta = (hi - lo) / 15.0f;
    kvqi_rng r;
    kvqi_rng_seed(&r, hash_floats(qr, d, q->cfg.seed));
    memset(Q->planes, 0, sizeof Q->planes);
    uint32_t vs = 0;
    float inv = Q->delta > 0.0f ? 1.0f / Q->delta : 0.0f;
    for (uint32_t i = 0; i < d; i++) {
        float t = (qr[i] - lo) * inv + (float)kvqi_rng_uniform(&r);
        int v = (int)floorf(t);
        v = v < 0 ? 0 : (v > 15 ? 15 : v);
        Q->v[i] = (uint8_t)v;
        vs += (uint32_t)v;
        for (int j = 0; j < 4; j++)
            if ((v >> j) & 1) Q->planes[j][i >> 3] |= (uint8_t)(1u << (i & 7));
    }
    Q->vsum = (float)vs;
}

static kvq_status rabitq_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                               size_t n, float *scores, float *err) {
    const rabitq_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    uint32_t d = q->cfg.dim;
    float qr[KVQI_QUANT_MAX_DIM];
    kvqi_rotation_apply(&q->rot, query, qr, q->isa);
    float qsum = 0.0f;
    for (uint32_t i = 0; i < d; i++) qsum += qr[i];
    float qn2 = q->base->dot(qr, qr, d);
    query4 Qs;
    const query4 *Q = &Qs;
    Qs.lo = Qs.delta = Qs.vsum = 0.0f;
    if (s->qb == 4) quantize_query(q, qr, d, &Qs);
    const float total4 = Q->lo * (float)d + Q->delta * Q->vsum; /* sum of the quantized query */
    const float inv_sqrt_d = 1.0f / sqrtf((float)d);
    const float half_span = ((float)(1u << s->B) - 1.0f) * 0.5f;
    float qc[RABITQ_MAX_NLIST];
    uint8_t have[RABITQ_MAX_NLIST];
    if (s->nlist) memset(have, 0, s->nlist);
    uint8_t u[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * q->code_size;
        const uint8_t *pay = c + s->hdr;
        float norm = rd_norm(s, c);
        float cosv = rd_cos(s, c);
        float ip; /* <x^, q'> / (||x^|| cos) */
        if (s->B == 1) {
            float sel, tot;
            if (s->qb == 4) {
                uint32_t pc;
                uint32_t acc = q->k->popcount_planes(pay, Q->planes[0], sizeof Q->planes[0], 4,
                                                     s->plane_bytes, &pc);
                sel = Q->lo * (float)pc + Q->delta * (float)acc;
                tot = total4;
            } else {
                sel = q->k->masked_sum(qr, pay, d);
                tot = qsum;
            }
            ip = (2.0f * sel - tot) * inv_sqrt_d / cosv;
        } else {
            float dotv;
            if (s->qb == 4) {
                unpack_u(s, pay, d, u);
                uint32_t su = 0, suv = 0;
                for (uint32_t k = 0; k < d; k++) {
                    su += u[k];
                    suv += (uint32_t)u[k] * Q->v[k];
                }
                dotv = Q->lo * (float)su + Q->delta * (float)suv - half_span * total4;
            } else if (s->split) {
                dotv = (float)s->K * q->k->masked_sum(qr, pay, d) +
                       q->k->lut_dot(qr, pay + s->plane_bytes, d, s->B - 1, s->cb_low) - half_span * qsum;
            } else {
                dotv = q->k->lut_dot(qr, pay, d, s->B, s->cb_centered);
            }
            ip = dotv / (kvqi_rdf32(c + 8) * cosv);
        }
        float base = 0.0f;
        if (s->nlist) {
            uint16_t id = kvqi_rd16(c + off_id(s));
            if (id >= s->nlist) return KVQ_ERR_FORMAT;
            if (!have[id]) {
                qc[id] = q->base->dot(query, s->centroids + (size_t)id * d, d);
                have[id] = 1;
            }
            base = qc[id];
        }
        scores[i] = base + norm * ip;
        if (err) {
            /* rotation: eps0 sd of <x^_perp, q_perp>/cos (RaBitQ Thm 3.2, ||q_perp|| <= ||q||);
             * 4-bit query: the dither adds at most var delta^2/4, taken at 3 sd */
            double c2 = (double)cosv * cosv, e0 = q->cfg.eps0;
            double w2 = e0 * e0 * qn2 * (1.0 - c2) / (d - 1);
            if (s->qb == 4) w2 += 9.0 * 0.25 * (double)Q->delta * Q->delta;
            err[i] = (float)(norm * sqrt(w2 > 0 ? w2 / c2 : 0));
        }
    }
    return KVQ_OK;
}

/* ---------------------------------------------------------------- save/load */

static size_t rabitq_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    const rabitq_state *s = q->state;
    if (!s->nlist || cap < 1) return 0;
    t[0] = kvqi_tensor_f32("rabitq.centroids", s->centroids, s->nlist, q->cfg.dim);
    return 1;
}

static kvq_status rabitq_load(kvq_quantizer *q, const kvqi_st_file *f) {
    rabitq_state *s = q->state;
    if (!s->nlist) return kvqi_st_find(f, "rabitq.centroids") ? KVQ_ERR_FORMAT : KVQ_OK;
    const kvqi_st_tensor *t = kvqi_st_find(f, "rabitq.centroids");
    size_t want = (size_t)s->nlist * q->cfg.dim * sizeof(float);
    if (!t || t->dtype != KVQI_F32 || t->ndim != 2 || t->shape[0] != s->nlist ||
        t->shape[1] != q->cfg.dim || t->nbytes != want)
        return KVQ_ERR_FORMAT;
    memcpy(s->centroids, t->data, want);
    for (size_t i = 0; i < (size_t)s->nlist * q->cfg.dim; i++)
        if (!isfinite(s->centroids[i])) return KVQ_ERR_FORMAT;
    q->fitted = 1;
    return KVQ_OK;
}

const kvqi_method kvqi_method_rabitq = {
    .method = KVQ_METHOD_RABITQ,
    .name = "rabitq",
    .validate = rabitq_validate,
    .init = rabitq_init,
    .destroy = rabitq_destroy,
    .code_size = rabitq_code_size,
    .shared_size = rabitq_shared_size,
    .encode = rabitq_encode,
    .decode = rabitq_decode,
    .score = rabitq_score,
    .has_bound = 1,
    .fit = rabitq_fit,
    .save_tensors = rabitq_save,
    .load_tensors = rabitq_load,
};
