/* search.c - query processing of the RaBitQ IVF index: probe the nearest clusters,
 * estimate every distance from the 1-bit codes with fast-scan and RaBitQ's bound
 * (arXiv 2405.12497, section 3.2.2: |est - true| <= eps0 sqrt((1 - <o_bar,o>^2) /
 * <o_bar,o>^2) / sqrt(d - 1) * ||q'|| ||r||), refine survivors with the extended code
 * (arXiv 2409.09913), then rerank exactly only those whose lower bound can still
 * enter the top k. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/index_internal.h"

typedef struct cand {
    uint32_t list, pos, row; /* row: in the id / reorder arrays, read while the list is hot */
    float dist, err;         /* estimate and half-width of its bound */
} cand;

typedef struct heap_item {
    float d;
    int64_t id;
} heap_item;

/* max-heap on (d, id): its top is the worst of the kept items */
static inline int worse(heap_item a, heap_item b) { return a.d > b.d || (a.d == b.d && a.id > b.id); }

static void heap_push(heap_item *h, uint32_t *n, uint32_t cap, heap_item it) {
    if (*n == cap) {
        if (!worse(h[0], it)) return;
        uint32_t i = 0;
        for (;;) { /* sift the new item down from the root */
            uint32_t l = 2 * i + 1, r = l + 1, m = i;
            heap_item big = it;
            if (l < cap && worse(h[l], big)) m = l, big = h[l];
            if (r < cap && worse(h[r], big)) m = r;
            if (m == i) break;
            h[i] = h[m];
            i = m;
        }
        h[i] = it;
        return;
    }
    uint32_t i = (*n)++;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!worse(it, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

/* An exact distance into the result heap; the id (a random read) only when it can enter. */
static inline void push_result(const kvq_index *ix, heap_item *h, uint32_t *n, uint32_t k, float dist,
                               uint32_t row) {
    if (dist != dist) dist = INFINITY;
    if (*n == k && dist > h[0].d) return;
    heap_push(h, n, k, (heap_item){dist, ix->ids[row]});
}

static int cmp_item(const void *a, const void *b) {
    heap_item x = *(const heap_item *)a, y = *(const heap_item *)b;
    return worse(x, y) ? 1 : (worse(y, x) ? -1 : 0);
}

/* The rerank visits candidates by increasing lower bound through a min-heap of
 * (bound, row) keys: 8 bytes to move, no recomputed bounds; ties by row. */
typedef struct lb_key {
    float lb;
    uint32_t row;
} lb_key;

static inline int lb_less(lb_key a, lb_key b) { return a.lb < b.lb || (a.lb == b.lb && a.row < b.row); }

static void lb_sift_down(lb_key *h, uint32_t n, uint32_t i) {
    lb_key it = h[i];
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        lb_key best = it;
        if (l < n && lb_less(h[l], best)) m = l, best = h[l];
        if (r < n && lb_less(h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = it;
}

/* An integer key ordered as (distance, index): a smaller distance first, ties by the
 * smaller index; -0 counts as +0 and NaN as +inf. One compare, no branch on the float. */
static inline uint64_t dkey(float x, uint32_t i) {
    x = x == x ? x + 0.0f : INFINITY;
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u ^= (uint32_t)((int32_t)u >> 31) | 0x80000000u;
    return (uint64_t)u << 32 | i;
}
static inline float dkey_dist(uint64_t key) {
    uint32_t u = (uint32_t)(key >> 32);
    u ^= ~(uint32_t)((int32_t)u >> 31) | 0x80000000u;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static void sort_keys(uint64_t *a, uint32_t n) {
    for (uint32_t i = 1; i < n; i++) {
        uint64_t it = a[i];
        uint32_t j = i;
        for (; j > 0 && it < a[j - 1]; j--) a[j] = a[j - 1];
        a[j] = it;
    }
}

/* Reorder a[0..n) so that its `want` smallest keys come first, in any order: quickselect
 * with a median-of-three pivot and a branch-free partition (keys are distinct: each
 * carries its own index). */
static void select_keys(uint64_t *a, uint32_t n, uint32_t want) {
    uint32_t lo = 0, hi = n;
    if (want == 0 || want >= n) return;
    while (hi - lo > 16) {
        uint64_t x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
        uint64_t mn = x < y ? x : y, mx = x < y ? y : x;
        uint64_t piv = z < mn ? mn : (z > mx ? mx : z);
        uint32_t st = lo;
        for (uint32_t i = lo; i < hi; i++) { /* [lo, st) < piv <= [st, i) */
            uint64_t t = a[i];
            a[i] = a[st];
            a[st] = t;
            st += t < piv;
        }
        if (st == lo) break; /* only with repeated keys: sort what is left */
        if (want == st) return;
        if (want < st) hi = st;
        else lo = st;
    }
    sort_keys(a + lo, hi - lo);
}

/* Min-heap of keys: move h[i] down to its place among h[0..n). */
static inline void key_sift_down(uint64_t *h, uint32_t n, uint32_t i) {
    uint64_t it = h[i];
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= n) break;
        uint32_t m = l + (l + 1 < n && h[l + 1] < h[l]);
        if (h[m] >= it) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = it;
}

static int cmp_key(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : (x > y ? 1 : 0);
}

/* <v, q> for the extended code values v of vector pos of L, read packed in place. */
static inline float ex_dot(const kvq_index *ix, const kvqi_ivf_list *L, uint32_t pos, const float *q) {
    return ix->kern->dot_packed(L->ex_codes + (size_t)pos * ix->ex_row, ix->cfg.bits, q, ix->d_pad);
}

/* The prefetch helpers are always inlined: to the compiler a prefetch has no effect, so
 * GCC 12 (-O2) took a separate copy of prefetch_bytes for a function without effects
 * and deleted every call to it; none of the prefetches below was issued. */
#define PREFETCH_INLINE static inline __attribute__((always_inline))

/* Start fetching [p, p + n) (n small: a code row or a reorder row). */
PREFETCH_INLINE void prefetch_bytes(const void *p, size_t n) {
    const char *c = p;
    for (size_t o = 0; o < n; o += 64) __builtin_prefetch(c + o);
    if (n && ((uintptr_t)c & 63) + (n & 63) > 64) __builtin_prefetch(c + n - 1);
}

/* Block blk of list L (its code and the factors and rows of its 32 vectors), fetched
 * BLOCKS_AHEAD blocks before the scan reaches it (crossing into the next probed list):
 * the lists are short (~120 vectors at nlist 1024), too short for the hardware
 * prefetcher to pick their six streams up. Three blocks ahead ran 3-7 % faster than one
 * on the SIFT-like set (two and four close behind, six slower), level at d = 960. */
enum { BLOCKS_AHEAD = 3 };
PREFETCH_INLINE void prefetch_block(const kvq_index *ix, const kvqi_ivf_list *L, uint32_t blk) {
    const size_t block_bytes = (size_t)ix->n_groups * 16, at = (size_t)blk * KVQI_FS_BLOCK;
    prefetch_bytes(L->codes + blk * block_bytes, block_bytes < 1024 ? block_bytes : 1024);
    const size_t fb = KVQI_FS_BLOCK * sizeof(float);
    prefetch_bytes(L->f_add + at, fb);
    prefetch_bytes(L->f_rescale + at, fb);
    prefetch_bytes(L->f_err + at, fb);
    prefetch_bytes(L->f_pop + at, fb);
    prefetch_bytes(L->rows + at, fb);
}

static const char *row_ptr(const kvq_index *ix, uint32_t row) {
    return ix->reorder_f32 ? (const char *)(ix->reorder_f32 + (size_t)row * ix->dim)
                           : (const char *)(ix->reorder_f16 + (size_t)row * ix->dim);
}

/* Start fetching a stored row and its id (read when the row enters the results). */
PREFETCH_INLINE void prefetch_row(const kvq_index *ix, uint32_t row, size_t row_bytes) {
    prefetch_bytes(row_ptr(ix, row), row_bytes);
    __builtin_prefetch(ix->ids + row);
}

static inline int passes(const kvq_index_filter *f, int64_t id) {
    if (f->id_bitset &&
        ((uint64_t)id >= f->bitset_ids || !((f->id_bitset[(uint64_t)id >> 3] >> (id & 7)) & 1)))
        return 0;
    return !f->allow || f->allow(id, f->ctx);
}

typedef struct search_ctx {
    const kvq_index_filter *filt; /* NULL: every id passes */
    const kvq_index *ix;
    const float *queries;
    uint32_t k, nprobe, rerank;
    float eps0;
    int64_t *out_ids;
    float *out_dists;
    unsigned char *scratch;
    size_t slot_bytes, cand_cap, n_queries;
    uint32_t pcap;   /* probe buffer per query (probe_cap) */
    uint32_t qblock; /* queries per task, at most QBLOCK */
} search_ctx;

/* Per-thread scratch, carved from one slot. */
typedef struct scratch {
    float *tmp, *zq; /* the current query's: point into tmpb / zqb */
    float *tmpb, *zqb; /* [QBLOCK][dim] / [QBLOCK][d_pad]: a block of queries */
    float *qrot, *qp, *lutf, *ones, *probe_d;
    uint8_t *lut;
    uint32_t *probe_i;
    cand *cands;
    lb_key *keys;
    uint64_t *ukeys, *pbuf; /* pbuf: [QBLOCK][pcap] centroids kept by the probe (dkey) */
    heap_item *ubheap, *res;
} scratch;

/* Queries are probed QBLOCK at a time: each 16-centroid block is read once for all of
 * them (at d = 960 the centroids are 2 MB and the probe of one query waited on memory). */
#define QBLOCK 8u

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

static size_t carve(const kvq_index *ix, uint32_t k, size_t cand_cap, uint32_t pcap,
                    unsigned char *base, scratch *s) {
    size_t off = 0;
#define TAKE(field, type, count)                                      \
    do {                                                              \
        if (s) s->field = (type *)(void *)(base + off);               \
        off += align64((size_t)(count) * sizeof(type));               \
    } while (0)
    TAKE(tmpb, float, (size_t)QBLOCK * align64((size_t)ix->dim * sizeof(float)) / sizeof(float));
    TAKE(zqb, float, (size_t)QBLOCK * ix->d_pad);
    TAKE(qrot, float, ix->d_pad);
    TAKE(qp, float, ix->d_pad);
    TAKE(lutf, float, (size_t)ix->n_groups * 16);
    TAKE(ones, float, ix->d_pad);
    TAKE(probe_d, float, ix->nlist);
    TAKE(lut, uint8_t, (size_t)ix->n_groups * 16);
    TAKE(probe_i, uint32_t, ix->nlist);
    TAKE(cands, cand, cand_cap);
    TAKE(keys, lb_key, cand_cap);
    TAKE(ukeys, uint64_t, cand_cap);
    TAKE(pbuf, uint64_t, (size_t)QBLOCK * pcap);
    TAKE(ubheap, heap_item, k);
    TAKE(res, heap_item, k);
#undef TAKE
    if (s) { /* the first query of the block */
        s->tmp = s->tmpb;
        s->zq = s->zqb;
    }
    return off;
}

/* Floats between two queries' rows of tmpb. */
static size_t tmp_stride(const kvq_index *ix) { return align64((size_t)ix->dim * sizeof(float)) / sizeof(float); }

static void select_query(const kvq_index *ix, scratch *s, uint32_t b) {
    s->tmp = s->tmpb + (size_t)b * tmp_stride(ix);
    s->zq = s->zqb + (size_t)b * ix->d_pad;
}

/* The query as seen from one list: q' (rotated, minus the rotated centroid for l2),
 * the list's constant term and what the estimator needs. */
typedef struct list_query {
    const float *qp;  /* q' (l2: valid only when prepared with need_qp) */
    const float *sub; /* l2: the rotated centroid, q' = qrot - sub */
    float K, qnorm, sum_q;
    float vmin, delta, qerr; /* 4-bit query quantization */
} list_query;

/* Query-side numbers shared by every list of one query. */
typedef struct query_consts {
    float const_ip;  /* ip with PCA: <mean, q> */
    float qrot_sum;  /* sum of the rotated query's coordinates */
    float qrot_n2;   /* its squared norm */
} query_consts;

/* probe_dist is -<c, z_q> as the probe measured it (ip); l2 and cosine measure
 * ||q'||^2 = ||z_q - c||^2 here (the rotation keeps norms). */
static void prepare_list(const kvq_index *ix, uint32_t c, const scratch *s, float probe_dist,
                         const query_consts *qc, int need_qp, list_query *lq) {
    const uint32_t dp = ix->d_pad;
    float n2;
    lq->sub = NULL;
    if (kvqi_coded_l2(ix)) {
        const float *cr = ix->centroids_rot + (size_t)c * dp;
        lq->sub = cr;
        /* ||q'||^2 is measured here: the probe ranked l2 lists by ||c||^2 - 2 <q, c>
         * and cosine lists by <q, c> (0.002-0.003 more recall@10 at equal nprobe than
         * by l2 on the SIFT-like set) */
        probe_dist = ix->kern->l2sq(s->qrot, cr, dp);
        if (need_qp) /* else the 4-bit LUT kernel subtracts on the fly */
            for (uint32_t i = 0; i < dp; i++) s->qp[i] = s->qrot[i] - cr[i];
        lq->qp = s->qp;
        n2 = probe_dist;
        lq->K = probe_dist;
        lq->sum_q = qc->qrot_sum - ix->centroids_rot_sum[c];
    } else {
        lq->qp = s->qrot;
        n2 = qc->qrot_n2;
        lq->K = probe_dist - qc->const_ip;
        lq->sum_q = qc->qrot_sum;
    }
    lq->qnorm = sqrtf(n2 > 0.0f ? n2 : 0.0f);
}

/* One centroid's distance in the coded space's measure (squared l2, or -<c, z_q>),
 * computed exactly as the probe16 kernels do. */
static float probe_distance(const kvq_index *ix, uint32_t c, const float *zq) {
    const float *blk = ix->centroids_t + (size_t)(c / 16) * ix->d * 16 + c % 16;
    const int ip = !kvqi_coded_l2(ix);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (uint32_t j = 0; j < ix->d; j++) {
        float x = blk[(size_t)j * 16], p;
        if (ip) {
            p = x * zq[j];
        } else {
            float t = x - zq[j];
            p = t * t;
        }
        acc[j % 4] = acc[j % 4] + p;
    }
    float sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    return ip ? 0.0f - sum : sum;
}

/* Sort a few items by (d, id): insertion sort, no calls per comparison. */
static void sort_items(heap_item *a, uint32_t n) {
    if (n > 256) {
        qsort(a, n, sizeof *a, cmp_item);
        return;
    }
    for (uint32_t i = 1; i < n; i++) {
        heap_item it = a[i];
        uint32_t j = i;
        while (j > 0 && worse(a[j - 1], it)) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = it;
    }
}

/* Room per query for the centroids the probe keeps: np and at least as many more, so
 * that the buffer is cut back to np only now and then; never more than every centroid
 * (then it is never cut). */
static uint32_t probe_cap(const kvq_index *ix, uint32_t np) {
    uint64_t cap = 2ull * np + 64;
    return cap < (uint64_t)ix->nlist + 16 ? (uint32_t)cap : ix->nlist + 16;
}

/* What the probe of one query keeps: buf[0..m) holds every centroid seen so far that can
 * still be among its np nearest by (distance, id), since thr is at least the np-th
 * smallest distance seen. */
typedef struct probe_sel {
    uint32_t m;
    uint64_t thr; /* a dkey */
} probe_sel;

/* Take the distances of centroids c0..c0+cnt. A centroid behind thr is passed over
 * without a branch; when the buffer fills up, it is cut to its np nearest and thr
 * tightens to the np-th. (A histogram of all nlist distances, before, took three passes
 * over them; a bounded heap mispredicted on almost every push.) */
static void probe_keep(uint64_t *buf, probe_sel *ps, const float *d16, uint32_t c0, uint32_t cnt,
                       uint32_t np, uint32_t cap) {
    uint32_t m = ps->m;
    const uint64_t thr = ps->thr;
    for (uint32_t i = 0; i < cnt; i++) {
        uint64_t key = dkey(d16[i], c0 + i);
        buf[m] = key;
        m += key <= thr;
    }
    if (m + 16 > cap) {
        select_keys(buf, m, np);
        uint64_t t = buf[0];
        for (uint32_t i = 1; i < np; i++) t = buf[i] > t ? buf[i] : t;
        m = np;
        ps->thr = t;
    }
    ps->m = m;
}

/* The probe of nb queries zq[b * stride] at once: the distances to each block of 16
 * centroids for every query of the block (each pair computed by probe16, so a query's
 * distances do not depend on the others), then each query keeps what can be among its
 * np nearest in buf[b * cap ...]. */
static void probe_multi(const kvq_index *ix, const float *zq, size_t stride, uint32_t nb,
                        uint32_t np, uint64_t *buf, uint32_t cap, probe_sel *ps) {
    const int l2 = ix->cfg.metric == KVQ_METRIC_L2;
    const uint32_t n = ix->nlist;
    float d16[QBLOCK * 16];
    for (uint32_t b = 0; b < nb; b++) ps[b] = (probe_sel){0, UINT64_MAX};
    for (uint32_t c0 = 0; c0 < n; c0 += 16) {
        const float *ct = ix->centroids_t + (size_t)(c0 / 16) * ix->d * 16;
        /* -<c, q> for every metric; l2 ranks by ||c||^2 - 2 <q, c> (||q||^2 is the same
         * for every list): a multiply and an add per coordinate, where (c - q)^2 took a
         * subtraction more */
        ix->kern->probe16_multi(ct, zq, stride, nb, ix->d, 1, d16);
        const uint32_t cnt = n - c0 < 16 ? n - c0 : 16;
        if (l2)
            for (uint32_t b = 0; b < nb; b++)
                for (uint32_t i = 0; i < cnt; i++)
                    d16[16 * b + i] = ix->centroids_n2[c0 + i] + 2.0f * d16[16 * b + i];
        for (uint32_t b = 0; b < nb; b++)
            probe_keep(buf + (size_t)b * cap, &ps[b], d16 + 16 * b, c0, cnt, np, cap);
    }
}

/* The np nearest of what the probe kept, nearest first (ties by id). */
static uint32_t probe_finish(uint64_t *buf, const probe_sel *ps, uint32_t np, uint32_t *probe_i,
                             float *probe_d) {
    select_keys(buf, ps->m, np);
    if (np > 64) qsort(buf, np, sizeof *buf, cmp_key);
    else sort_keys(buf, np);
    for (uint32_t i = 0; i < np; i++) {
        probe_i[i] = (uint32_t)buf[i];
        probe_d[i] = dkey_dist(buf[i]);
    }
    return np;
}

/* One query's probe (range search, tests). */
static uint32_t probe(const kvq_index *ix, const float *zq, uint32_t np, uint64_t *buf,
                      uint32_t *probe_i, float *probe_d) {
    probe_sel ps;
    probe_multi(ix, zq, ix->d_pad, 1, np, buf, probe_cap(ix, np), &ps);
    return probe_finish(buf, &ps, np, probe_i, probe_d);
}

static void build_lut4(const kvq_index *ix, const scratch *s, list_query *lq) {
    /* the 4-bit levels borrow the float LUT area (4 * d_pad floats >= d_pad bytes) */
    ix->kern->build_lut4(s->qrot, lq->sub, ix->d, ix->d_pad, (uint8_t *)(void *)s->lutf, s->lut,
                         &lq->vmin, &lq->delta);
    /* rounding each q'_i by at most delta/2 moves sum_i b_i q'_i by a spread of about
     * delta sqrt(d / 24) (d/2 one bits, uniform error), and the estimate of <r, q'> by
     * twice that (times f_rescale) */
    lq->qerr = lq->delta * sqrtf((float)ix->d / 6.0f);
}

static void build_lutf(const kvq_index *ix, const scratch *s, const list_query *lq) {
    for (uint32_t g = 0; g < ix->n_groups; g++) {
        float *l = s->lutf + (size_t)g * 16;
        l[0] = 0.0f;
        for (unsigned m = 1; m < 16; m++) l[m] = l[m & (m - 1)] + lq->qp[4 * g + __builtin_ctz(m)];
    }
}

/* The exact distance of stored row `row` (reorder store) to the exact-space query. */
static inline float exact_dist(const kvq_index *ix, uint32_t row, const float *qx, int l2x) {
    if (ix->reorder_f32) {
        const float *v = ix->reorder_f32 + (size_t)row * ix->dim;
        return l2x ? ix->kern->l2sq(v, qx, ix->dim) : -ix->kern->dot(v, qx, ix->dim);
    }
    const uint16_t *v = ix->reorder_f16 + (size_t)row * ix->dim;
    return l2x ? ix->kern->l2sq_f16(v, qx, ix->dim) : -ix->kern->dot_f16(v, qx, ix->dim);
}

/* An exact distance in the units of the estimates (the same, but for cosine estimated
 * as l2 between unit vectors: ||q - x||^2 = 2 + 2 (-<q, x>)). */
static inline float exact_to_est(const kvq_index *ix, float d) {
    return kvqi_cos_l2(ix) ? 2.0f + 2.0f * d : d;
}
static inline float est_to_exact(const kvq_index *ix, float d) {
    return kvqi_cos_l2(ix) ? 0.5f * d - 1.0f : d;
}

/* Before the threshold exists (the first list): the (k - n_res) candidates of
 * [first, end) with the smallest lower bounds are fetched and measured together, and
 * marked measured (err = -inf: their bound can pass no threshold again). */
static void measure_first(const kvq_index *ix, scratch *s, uint32_t first, uint32_t end,
                          const float *qx, int l2x, uint32_t k, uint32_t *n_res, float *tau,
                          size_t row_bytes) {
    uint64_t *hp = s->ukeys;
    uint32_t m = 0;
    for (uint32_t j = first; j < end; j++)
        if (s->cands[j].err > -INFINITY) hp[m++] = dkey(s->cands[j].dist - s->cands[j].err, j);
    uint32_t want = k - *n_res < m ? k - *n_res : m;
    select_keys(hp, m, want);
    for (uint32_t j = 0; j < want; j++) prefetch_row(ix, s->cands[(uint32_t)hp[j]].row, row_bytes);
    for (uint32_t j = 0; j < want; j++) {
        cand *cd = &s->cands[(uint32_t)hp[j]];
        push_result(ix, s->res, n_res, k, exact_dist(ix, cd->row, qx, l2x), cd->row);
        cd->err = -INFINITY;
    }
    if (*n_res == k) *tau = exact_to_est(ix, s->res[0].d);
}

/* Query qi, once the probe has put its lists in s.probe_i / s.probe_d (nh of them) and
 * s.tmp / s.zq hold its coded-space forms. */
static void search_one(const search_ctx *ctx, scratch s, size_t qi, uint32_t nh) {
    const kvq_index *ix = ctx->ix;
    const float *q = ctx->queries + qi * ix->dim;
    const int l2 = kvqi_coded_l2(ix), l2x = ix->cfg.metric == KVQ_METRIC_L2;
    const float alpha = l2 ? 2.0f : 1.0f;
    const int full = !isfinite(ctx->eps0);
    const int ex = ix->cfg.bits > 1, prune_1bit = !ex || ix->cfg.split;
    /* split: a 1-bit survivor gets its extended estimate at once, so the threshold tau
     * comes from the tight extended bounds while the scan is still running (a 1-bit
     * upper bound is loose at low d and let most vectors through) */
    const int inline_ex = ex && ix->cfg.split && !full;
    /* with exact vectors, the threshold comes from exact distances as the scan goes:
     * the survivors of each list are measured at the end of that list and tau is the
     * k-th smallest exact distance so far. A threshold from estimated upper bounds is
     * pulled below the true k-th distance by the few bounds that miss, and the true
     * neighbours behind it are lost (on low-contrast data the recall stopped at 0.985). */
    const int exact_scan = ix->cfg.reorder != KVQ_REORDER_NONE && !full && !ctx->rerank && prune_1bit;
    const float half = (float)((1u << ix->cfg.bits) - 1u) * 0.5f;
    const uint32_t k = ctx->k;
    const size_t row_bytes = (size_t)ix->dim * (ix->reorder_f32 ? sizeof(float) : sizeof(uint16_t));
    uint32_t n_res = 0;

    /* the exact-space query (normalized for cosine: to_space left it in tmp) */
    const float *qx = ix->cfg.metric == KVQ_METRIC_COSINE ? s.tmp : q;
    query_consts qc = {0.0f, 0.0f, 0.0f};
    if (!l2 && ix->pca_mean) qc.const_ip = ix->kern->dot(ix->pca_mean, qx, ix->dim);
    kvqi_index_rotate(ix, s.zq, s.qrot);
    qc.qrot_sum = ix->kern->dot(s.qrot, s.ones, ix->d_pad);
    qc.qrot_n2 = ix->kern->dot(s.qrot, s.qrot, ix->d_pad);

    uint32_t n_cand = 0, n_ub = 0;
    float tau = INFINITY;
    list_query lq;
    _Alignas(64) uint32_t S[KVQI_FS_BLOCK]; /* whole-line stores and loads */
    /* the probed lists' descriptors (80 KB of them at nlist 1024, read in random order) */
    for (uint32_t pi = 0; pi < nh; pi++) prefetch_bytes(&ix->lists[s.probe_i[pi]], sizeof(kvqi_ivf_list));
    if (nh)
        for (uint32_t b = 0; b < BLOCKS_AHEAD && b * KVQI_FS_BLOCK < ix->lists[s.probe_i[0]].n; b++)
            prefetch_block(ix, &ix->lists[s.probe_i[0]], b);
    for (uint32_t pi = 0; pi < nh; pi++) {
        uint32_t c = s.probe_i[pi];
        const kvqi_ivf_list *L = &ix->lists[c];
        const kvqi_ivf_list *Ln = pi + 1 < nh ? &ix->lists[s.probe_i[pi + 1]] : NULL;
        if (Ln && kvqi_coded_l2(ix)) /* its rotated centroid, for its q' */
            prefetch_bytes(ix->centroids_rot + (size_t)s.probe_i[pi + 1] * ix->d_pad,
                           (size_t)ix->d_pad * sizeof(float));
        if (Ln && !Ln->n) Ln = NULL;
        if (L->n == 0) continue;
        const int q4 = ix->cfg.query_bits == 4;
        prepare_list(ix, c, &s, s.probe_d[pi], &qc, !q4 || inline_ex, &lq);
        if (q4) build_lut4(ix, &s, &lq);
        else build_lutf(ix, &s, &lq);
        const uint32_t first = n_cand;
        const int had_tau = n_res == k; /* survivors' rows fetched as they survive */
        const float ex_scale = alpha * ctx->eps0 * lq.qnorm;
        const float ferr_scale = alpha * ctx->eps0 * lq.qnorm, qerr_scale = alpha * ctx->eps0 * (q4 ? lq.qerr : 0.0f);
        const size_t block_bytes = (size_t)ix->n_groups * 16;
        for (uint32_t b0 = 0; b0 < L->n; b0 += KVQI_FS_BLOCK) {
            const uint8_t *blk = L->codes + (size_t)(b0 / KVQI_FS_BLOCK) * block_bytes;
            uint32_t nv = L->n - b0 < KVQI_FS_BLOCK ? L->n - b0 : KVQI_FS_BLOCK;
            { /* BLOCKS_AHEAD blocks on, in this list or the start of the next */
                const uint32_t ahead = b0 / KVQI_FS_BLOCK + BLOCKS_AHEAD;
                const uint32_t n_blocks = (L->n + KVQI_FS_BLOCK - 1) / KVQI_FS_BLOCK;
                if (ahead < n_blocks) prefetch_block(ix, L, ahead);
                else if (Ln && (ahead - n_blocks) * KVQI_FS_BLOCK < Ln->n) prefetch_block(ix, Ln, ahead - n_blocks);
            }
            if (!prune_1bit) { /* every vector goes on to the extended-code stage */
                for (uint32_t v = 0; v < nv; v++)
                    if (!ctx->filt || passes(ctx->filt, ix->ids[L->rows[b0 + v]]))
                        s.cands[n_cand++] = (cand){c, b0 + v, L->rows[b0 + v], 0.0f, INFINITY};
                continue;
            }
            _Alignas(64) float dist[KVQI_FS_BLOCK], err[KVQI_FS_BLOCK];
            uint32_t keep;
            if (q4) {
                ix->kern->fastscan(blk, s.lut, ix->n_groups, S);
                kvqi_block_consts bc = {lq.delta, lq.vmin, lq.sum_q, lq.K, alpha,
                                        full ? 0.0f : ferr_scale, full ? 0.0f : qerr_scale,
                                        full ? INFINITY : tau};
                keep = ix->kern->estimate_block(S, L->f_add + b0, L->f_rescale + b0, L->f_err + b0,
                                                L->f_pop + b0, &bc, dist, err);
            } else {
                keep = 0;
                for (uint32_t v = 0; v < nv; v++) {
                    unsigned byte, shift;
                    kvqi_fs_slot(v, &byte, &shift);
                    float acc = 0.0f;
                    for (uint32_t g = 0; g < ix->n_groups; g++)
                        acc += s.lutf[(size_t)g * 16 + ((blk[(size_t)g * 16 + byte] >> shift) & 15u)];
                    uint32_t pos = b0 + v;
                    float fr = L->f_rescale[pos];
                    dist[v] = (L->f_add[pos] + lq.K) - alpha * (fr * (2.0f * acc - lq.sum_q));
                    err[v] = full ? 0.0f : L->f_err[pos] * ferr_scale;
                    if (full || dist[v] - err[v] < tau) keep |= 1u << v;
                }
            }
            if (nv < KVQI_FS_BLOCK) keep &= (1u << nv) - 1u;
            while (keep) {
                unsigned v = (unsigned)__builtin_ctz(keep);
                keep &= keep - 1;
                if (ctx->filt && !passes(ctx->filt, ix->ids[L->rows[b0 + v]])) continue;
                if (full) {
                    s.cands[n_cand++] = (cand){c, b0 + v, L->rows[b0 + v], dist[v], INFINITY};
                    continue;
                }
                if (dist[v] - err[v] >= tau) continue; /* tau shrank inside this block */
                s.cands[n_cand++] = (cand){c, b0 + v, L->rows[b0 + v], dist[v], err[v]};
                if (inline_ex) { /* its extended estimate waits for the end of the list */
                    prefetch_bytes(L->ex_codes + (size_t)(b0 + v) * ix->ex_row, ix->ex_row);
                    __builtin_prefetch(L->ex_rescale + b0 + v);
                    __builtin_prefetch(L->ex_err + b0 + v);
                    continue;
                }
                if (exact_scan) { /* measured at the end of the list */
                    if (n_res == k) prefetch_row(ix, L->rows[b0 + v], row_bytes);
                    continue;
                }
                float ub = dist[v] + err[v];
                if (n_ub < k || ub < tau) {
                    heap_push(s.ubheap, &n_ub, k, (heap_item){ub, 0});
                    if (n_ub == k) tau = s.ubheap[0].d;
                }
            }
        }
        if (exact_scan && inline_ex && n_res < k && n_cand > first)
            /* no threshold yet (the first list): its k smallest 1-bit lower bounds are
             * measured first, so that the extended dots below already have one (else
             * every vector of the first list got a dot) */
            measure_first(ix, &s, first, n_cand, qx, l2x, k, &n_res, &tau, row_bytes);
        if (inline_ex) { /* the list's 1-bit survivors, their codes fetched meanwhile */
            uint32_t m = first;
            for (uint32_t i = first; i < n_cand; i++) {
                cand cd = s.cands[i];
                if (cd.dist - cd.err >= tau) continue; /* tau shrank since */
                const uint32_t pos = cd.pos;
                float yq = ex_dot(ix, L, pos, lq.qp) -
                           half * lq.sum_q;
                cd.dist = L->f_add[pos] + lq.K - alpha * L->ex_rescale[pos] * yq;
                cd.err = ex_scale * L->ex_err[pos];
                if (cd.dist - cd.err >= tau) continue;
                s.cands[m++] = cd;
                if (exact_scan) {
                    if (n_res == k) prefetch_row(ix, cd.row, row_bytes);
                    continue;
                }
                float ub = cd.dist + cd.err;
                if (n_ub < k || ub < tau) { /* the 1-bit bound holds in split mode too */
                    heap_push(s.ubheap, &n_ub, k, (heap_item){ub, 0});
                    if (n_ub == k) tau = s.ubheap[0].d;
                }
            }
            n_cand = m;
        }
        if (exact_scan) { /* the list's survivors, exactly; their rows fetched meanwhile */
            if (n_res < k) measure_first(ix, &s, first, n_cand, qx, l2x, k, &n_res, &tau, row_bytes);
            /* the rest below the threshold, by increasing lower bound: the threshold
             * falls fastest, and the walk stops at the first bound above it */
            uint64_t *hp = s.ukeys;
            uint32_t r = 0;
            for (uint32_t j = first; j < n_cand; j++) {
                float lb = s.cands[j].dist - s.cands[j].err;
                if (lb < tau) hp[r++] = dkey(lb, j);
            }
            if (!had_tau) /* rows not fetched as they survived */
                for (uint32_t j = 0; j < r; j++) prefetch_row(ix, s.cands[(uint32_t)hp[j]].row, row_bytes);
            /* a min-heap: the walk usually stops long before the last survivor */
            for (uint32_t j = r / 2; j-- > 0;) key_sift_down(hp, r, j);
            while (r && dkey_dist(hp[0]) < tau) {
                const uint32_t row = s.cands[(uint32_t)hp[0]].row;
                hp[0] = hp[--r];
                key_sift_down(hp, r, 0);
                push_result(ix, s.res, &n_res, k, exact_dist(ix, row, qx, l2x), row);
                if (n_res == k) tau = exact_to_est(ix, s.res[0].d);
            }
            n_cand = first;
        }
    }

    if (ex && n_cand && !inline_ex) { /* extended code: tighter estimate and bound for the survivors */
        if (prune_1bit && !full) { /* drop what the final 1-bit threshold already rules out */
            uint32_t m = 0;
            for (uint32_t i = 0; i < n_cand; i++)
                if (s.cands[i].dist - s.cands[i].err < tau) s.cands[m++] = s.cands[i];
            n_cand = m;
        }
        uint32_t cur = UINT32_MAX;
        const float tau_1bit = tau;
        n_ub = 0;
        for (uint32_t i = 0; i < n_cand; i++) {
            cand *cd = &s.cands[i];
            if (cd->list != cur) {
                cur = cd->list;
                prepare_list(ix, cur, &s, probe_distance(ix, cur, s.zq), &qc, 1, &lq);
            }
            const kvqi_ivf_list *L = &ix->lists[cur];
            float yq = ex_dot(ix, L, cd->pos, lq.qp) -
                       half * lq.sum_q;
            cd->dist = L->f_add[cd->pos] + lq.K - alpha * L->ex_rescale[cd->pos] * yq;
            cd->err = full ? INFINITY : alpha * ctx->eps0 * L->ex_err[cd->pos] * lq.qnorm;
            heap_push(s.ubheap, &n_ub, k, (heap_item){cd->dist + cd->err, 0});
        }
        /* both thresholds bound the k-th true distance: keep the tighter */
        tau = n_ub == k && s.ubheap[0].d < tau_1bit ? s.ubheap[0].d : tau_1bit;
    }

    if (exact_scan) {
        /* the results are in s.res already */
    } else if (ix->cfg.reorder != KVQ_REORDER_NONE) {
        uint32_t m = 0;
        for (uint32_t i = 0; i < n_cand; i++)
            if (full || s.cands[i].dist - s.cands[i].err < tau) s.cands[m++] = s.cands[i];
        /* visit in increasing lower bound through a binary min-heap: building it is
         * O(m), and the walk usually stops after a few dozen pops */
        lb_key *hp = s.keys;
        for (uint32_t i = 0; i < m; i++)
            hp[i] = (lb_key){est_to_exact(ix, s.cands[i].dist - s.cands[i].err), s.cands[i].row};
        for (uint32_t i = m / 2; i-- > 0;) lb_sift_down(hp, m, i);
        /* a few candidates popped ahead, their rows fetched whole: the rows sit at random
         * places and each exact distance would otherwise wait for memory */
        enum { AHEAD = 4 };
        lb_key ring[AHEAD];
        uint32_t rh = 0, rn = 0, n_exact = 0, left = m;
        while (rn < AHEAD && left) {
            ring[(rh + rn++) % AHEAD] = hp[0];
            prefetch_row(ix, hp[0].row, row_bytes);
            hp[0] = hp[--left];
            lb_sift_down(hp, left, 0);
        }
        while (rn) {
            const lb_key cd = ring[rh];
            rh = (rh + 1) % AHEAD;
            rn--;
            if (left) {
                ring[(rh + rn++) % AHEAD] = hp[0];
                prefetch_row(ix, hp[0].row, row_bytes);
                hp[0] = hp[--left];
                lb_sift_down(hp, left, 0);
            }
            if (!full && n_res == k && cd.lb >= s.res[0].d) break;
            if (ctx->rerank && n_exact >= ctx->rerank) break;
            uint32_t row = cd.row;
            float dist = exact_dist(ix, row, qx, l2x);
            n_exact++;
            push_result(ix, s.res, &n_res, k, dist, row);
        }
    } else {
        for (uint32_t i = 0; i < n_cand; i++) {
            const cand *cd = &s.cands[i];
            uint32_t row = cd->row;
            float dist = est_to_exact(ix, cd->dist);
            push_result(ix, s.res, &n_res, k, dist, row);
        }
    }
    sort_items(s.res, n_res);
    int64_t *oi = ctx->out_ids + qi * k;
    float *od = ctx->out_dists ? ctx->out_dists + qi * k : NULL;
    for (uint32_t i = 0; i < k; i++) {
        oi[i] = i < n_res ? s.res[i].id : -1;
        if (od) od[i] = i < n_res ? s.res[i].d : INFINITY;
    }
}

/* Queries QBLOCK * bi ..: coded space, one probe for all of them, then each one's lists. */
static void search_block(void *vctx, size_t bi, unsigned thread) {
    const search_ctx *ctx = vctx;
    const kvq_index *ix = ctx->ix;
    scratch s;
    carve(ix, ctx->k, ctx->cand_cap, ctx->pcap, ctx->scratch + (size_t)thread * ctx->slot_bytes, &s);
    for (uint32_t i = 0; i < ix->d_pad; i++) s.ones[i] = 1.0f;
    const size_t q0 = bi * ctx->qblock;
    const uint32_t nb = ctx->n_queries - q0 < ctx->qblock ? (uint32_t)(ctx->n_queries - q0) : ctx->qblock;
    const int l2 = kvqi_coded_l2(ix);
    for (uint32_t b = 0; b < nb; b++) {
        select_query(ix, &s, b);
        const float *qb = ctx->queries + (q0 + b) * ix->dim;
        kvqi_index_to_space(ix, qb, l2, s.tmp, s.zq);
        /* the rerank's query is the unit vector, which centring for PCA overwrote */
        if (ix->cfg.metric == KVQ_METRIC_COSINE && ix->pca_proj && l2) kvqi_index_unit(ix, qb, s.tmp);
    }
    const uint32_t np = ctx->nprobe < ix->nlist ? ctx->nprobe : ix->nlist;
    probe_sel ps[QBLOCK];
    probe_multi(ix, s.zqb, ix->d_pad, nb, np, s.pbuf, ctx->pcap, ps);
    for (uint32_t b = 0; b < nb; b++) {
        select_query(ix, &s, b);
        uint32_t nh = probe_finish(s.pbuf + (size_t)b * ctx->pcap, &ps[b], np, s.probe_i, s.probe_d);
        search_one(ctx, s, q0 + b, nh);
    }
}

KVQ_API kvq_status kvq_index_search(const kvq_index *ix, const float *queries, size_t n_queries,
                                    uint32_t k, const kvq_index_search_params *params,
                                    int64_t *out_ids, float *out_dists) {
    return kvq_index_search_filtered(ix, queries, n_queries, k, params, NULL, out_ids, out_dists);
}

KVQ_API kvq_status kvq_index_search_filtered(const kvq_index *ix, const float *queries,
                                             size_t n_queries, uint32_t k,
                                             const kvq_index_search_params *params,
                                             const kvq_index_filter *filter, int64_t *out_ids,
                                             float *out_dists) {
    if (!ix || (!queries && n_queries) || k == 0 || (!out_ids && n_queries))
        return KVQ_ERR_INVALID_ARG;
    if (!ix->trained) return KVQ_ERR_STATE;
    if (n_queries == 0) return KVQ_OK;
    size_t total;
    if (kvqi_mul_size(n_queries, ix->dim, &total) != KVQ_OK ||
        kvqi_mul_size(n_queries, k, &total) != KVQ_OK)
        return KVQ_ERR_OVERFLOW;
    kvq_index_search_params p;
    kvq_index_search_params_init(&p);
    if (params) p = *params;
    if (p.nprobe == 0) p.nprobe = 1;
    if (p.eps0 == 0.0f) p.eps0 = KVQI_INDEX_DEFAULT_EPS0;
    if (!(p.eps0 > 0.0f)) return KVQ_ERR_INVALID_ARG;
    if (k > 1u << 20) return KVQ_ERR_UNSUPPORTED;
    /* a NaN query would compare false everywhere and return only -1 */
    if (kvqi_index_check_rows(ix, queries, n_queries) != KVQ_OK) return KVQ_ERR_INVALID_ARG;

    if (filter && !filter->id_bitset && !filter->allow) filter = NULL;
    search_ctx ctx = {filter, ix, queries, k, p.nprobe < ix->nlist ? p.nprobe : ix->nlist, p.rerank,
                      p.eps0, out_ids, out_dists, NULL, 0, 0, n_queries, 0, QBLOCK};
    ctx.pcap = probe_cap(ix, ctx.nprobe);
    /* room for every vector of the nprobe largest lists */
    {
        uint32_t np = ctx.nprobe;
        uint64_t sum = 0;
        uint32_t *sizes = malloc((size_t)ix->nlist * sizeof *sizes);
        if (!sizes) return KVQ_ERR_NOMEM;
        for (uint32_t c = 0; c < ix->nlist; c++) sizes[c] = ix->lists[c].n;
        for (uint32_t t = 0; t < np; t++) { /* np largest by selection: np is small */
            uint32_t best = t;
            for (uint32_t c = t + 1; c < ix->nlist; c++)
                if (sizes[c] > sizes[best]) best = c;
            uint32_t tmp = sizes[t];
            sizes[t] = sizes[best];
            sizes[best] = tmp;
            sum += sizes[t];
        }
        free(sizes);
        ctx.cand_cap = (size_t)(sum > 0 ? sum : 1);
    }
    kvq_threadpool *pool = p.pool, *own = NULL;
    if (!pool && p.n_threads > 1 && n_queries > 1) {
        kvq_status st = kvq_threadpool_create(p.n_threads, &own);
        if (st != KVQ_OK) return st;
        pool = own;
    }
    unsigned slots = kvq_threadpool_size(pool);
    ctx.slot_bytes = carve(ix, k, ctx.cand_cap, ctx.pcap, NULL, NULL);
    ctx.scratch = kvqi_alloc_array(slots, ctx.slot_bytes);
    if (!ctx.scratch) {
        kvq_threadpool_free(own);
        return KVQ_ERR_NOMEM;
    }
    /* a few queries on several threads: smaller blocks, so that every thread gets some */
    if (n_queries < (size_t)QBLOCK * slots)
        ctx.qblock = (uint32_t)((n_queries + slots - 1) / slots);
    kvqi_parallel_for(pool, (n_queries + ctx.qblock - 1) / ctx.qblock, search_block, &ctx);
    kvqi_free(ctx.scratch);
    kvq_threadpool_free(own);
    return KVQ_OK;
}

kvq_status kvqi_index_estimate_all(const kvq_index *ix, const float *q, int use_ex, float eps0,
                                   float *est, float *err, int64_t *ids) {
    if (!ix || !q || !est || !err || !ids) return KVQ_ERR_INVALID_ARG;
    if (!ix->trained) return KVQ_ERR_STATE;
    if (use_ex && ix->cfg.bits < 2) return KVQ_ERR_INVALID_ARG;
    size_t bytes = carve(ix, 1, 1, 1, NULL, NULL);
    unsigned char *base = kvqi_alloc_array(1, bytes);
    if (!base) return KVQ_ERR_NOMEM;
    scratch s;
    carve(ix, 1, 1, 1, base, &s);
    for (uint32_t i = 0; i < ix->d_pad; i++) s.ones[i] = 1.0f;
    const int l2 = kvqi_coded_l2(ix);
    const float alpha = l2 ? 2.0f : 1.0f;
    kvqi_index_to_space(ix, q, l2, s.tmp, s.zq);
    if (ix->cfg.metric == KVQ_METRIC_COSINE && ix->pca_proj && l2) kvqi_index_unit(ix, q, s.tmp);
    const float *qx = ix->cfg.metric == KVQ_METRIC_COSINE ? s.tmp : q;
    query_consts qc = {0.0f, 0.0f, 0.0f};
    if (!l2 && ix->pca_mean) qc.const_ip = ix->kern->dot(ix->pca_mean, qx, ix->dim);
    kvqi_index_rotate(ix, s.zq, s.qrot);
    qc.qrot_sum = ix->kern->dot(s.qrot, s.ones, ix->d_pad);
    qc.qrot_n2 = ix->kern->dot(s.qrot, s.qrot, ix->d_pad);
    size_t o = 0;
    _Alignas(64) uint32_t S[KVQI_FS_BLOCK]; /* whole-line stores and loads */
    const float unit = kvqi_cos_l2(ix) ? 0.5f : 1.0f; /* est_to_exact's scale */
    for (uint32_t c = 0; c < ix->nlist; c++) {
        const kvqi_ivf_list *L = &ix->lists[c];
        if (!L->n) continue;
        list_query lq;
        prepare_list(ix, c, &s, probe_distance(ix, c, s.zq), &qc, 1, &lq);
        const int q4 = ix->cfg.query_bits == 4;
        if (q4) build_lut4(ix, &s, &lq);
        else build_lutf(ix, &s, &lq);
        for (uint32_t pos = 0; pos < L->n; pos++, o++) {
            ids[o] = ix->ids[L->rows[pos]];
            if (use_ex) {
                const float half = (float)((1u << ix->cfg.bits) - 1u) * 0.5f;
                float yq = ex_dot(ix, L, pos, lq.qp) -
                           half * lq.sum_q;
                est[o] = est_to_exact(ix, L->f_add[pos] + lq.K - alpha * L->ex_rescale[pos] * yq);
                err[o] = alpha * eps0 * L->ex_err[pos] * lq.qnorm * unit;
                continue;
            }
            float sbq;
            const uint8_t *blk = L->codes + (size_t)(pos / KVQI_FS_BLOCK) * ix->n_groups * 16;
            if (q4) {
                ix->kern->fastscan(blk, s.lut, ix->n_groups, S);
                sbq = lq.delta * (float)S[pos % KVQI_FS_BLOCK] + lq.vmin * L->f_pop[pos];
            } else {
                sbq = 0.0f;
                for (uint32_t g = 0; g < ix->n_groups; g++)
                    sbq += s.lutf[(size_t)g * 16 + kvqi_list_nibble(ix, L, pos, g)];
            }
            float F = L->f_rescale[pos];
            est[o] = est_to_exact(ix, L->f_add[pos] + lq.K - alpha * F * (2.0f * sbq - lq.sum_q));
            float e1 = L->f_err[pos] * lq.qnorm, e2 = F * (q4 ? lq.qerr : 0.0f);
            err[o] = alpha * eps0 * sqrtf(e1 * e1 + e2 * e2) * unit;
        }
    }
    kvqi_free(base);
    return KVQ_OK;
}

/* ------------------------------------------------------------ range search */

typedef struct range_out {
    heap_item *it;
    size_t n, cap;
} range_out;

static int range_push(range_out *o, float d, int64_t id) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 256;
        heap_item *p = realloc(o->it, cap * sizeof *p);
        if (!p) return 0;
        o->it = p;
        o->cap = cap;
    }
    o->it[o->n++] = (heap_item){d, id};
    return 1;
}

KVQ_API kvq_status kvq_index_range_search(const kvq_index *ix, const float *query, float radius,
                                          const kvq_index_search_params *params,
                                          const kvq_index_filter *filter, int64_t *out_ids,
                                          float *out_dists, size_t cap, size_t *n_found) {
    if (n_found) *n_found = 0;
    if (!ix || !query || !n_found || (cap && !out_ids) || radius != radius)
        return KVQ_ERR_INVALID_ARG;
    if (!ix->trained) return KVQ_ERR_STATE;
    if (kvqi_index_check_rows(ix, query, 1) != KVQ_OK) return KVQ_ERR_INVALID_ARG;
    kvq_index_search_params p;
    kvq_index_search_params_init(&p);
    if (params) p = *params;
    if (p.nprobe == 0) p.nprobe = 1;
    if (p.eps0 == 0.0f) p.eps0 = KVQI_INDEX_DEFAULT_EPS0;
    if (!(p.eps0 > 0.0f)) return KVQ_ERR_INVALID_ARG;
    if (filter && !filter->id_bitset && !filter->allow) filter = NULL;
    const uint32_t np = p.nprobe < ix->nlist ? p.nprobe : ix->nlist;
    const uint32_t pcap = probe_cap(ix, np);
    size_t bytes = carve(ix, 1, 1, pcap, NULL, NULL);
    unsigned char *base = kvqi_alloc_array(1, bytes);
    if (!base) return KVQ_ERR_NOMEM;
    scratch s;
    carve(ix, 1, 1, pcap, base, &s);
    for (uint32_t i = 0; i < ix->d_pad; i++) s.ones[i] = 1.0f;
    const int l2 = kvqi_coded_l2(ix), l2x = ix->cfg.metric == KVQ_METRIC_L2;
    const float alpha = l2 ? 2.0f : 1.0f;
    const int full = !isfinite(p.eps0), q4 = ix->cfg.query_bits == 4;
    kvqi_index_to_space(ix, query, l2, s.tmp, s.zq);
    if (ix->cfg.metric == KVQ_METRIC_COSINE && ix->pca_proj && l2) kvqi_index_unit(ix, query, s.tmp);
    const float *qx = ix->cfg.metric == KVQ_METRIC_COSINE ? s.tmp : query;
    query_consts qc = {0.0f, 0.0f, 0.0f};
    if (!l2 && ix->pca_mean) qc.const_ip = ix->kern->dot(ix->pca_mean, qx, ix->dim);
    kvqi_index_rotate(ix, s.zq, s.qrot);
    qc.qrot_sum = ix->kern->dot(s.qrot, s.ones, ix->d_pad);
    qc.qrot_n2 = ix->kern->dot(s.qrot, s.qrot, ix->d_pad);
    uint32_t nh = probe(ix, s.zq, np, s.pbuf, s.probe_i, s.probe_d);
    range_out o = {NULL, 0, 0};
    const float radius_est = exact_to_est(ix, radius);
    kvq_status st = KVQ_OK;
    const float half = (float)((1u << ix->cfg.bits) - 1u) * 0.5f;
    _Alignas(64) uint32_t S[KVQI_FS_BLOCK]; /* whole-line stores and loads */
    for (uint32_t pi = 0; pi < nh && st == KVQ_OK; pi++) {
        uint32_t c = s.probe_i[pi];
        const kvqi_ivf_list *L = &ix->lists[c];
        if (!L->n) continue;
        list_query lq;
        /* the float q' is needed by the extended code and the float LUT */
        prepare_list(ix, c, &s, s.probe_d[pi], &qc, 1, &lq);
        if (q4) build_lut4(ix, &s, &lq);
        else build_lutf(ix, &s, &lq);
        const float ferr = alpha * p.eps0 * lq.qnorm, qerr = alpha * p.eps0 * (q4 ? lq.qerr : 0.0f);
        for (uint32_t b0 = 0; b0 < L->n && st == KVQ_OK; b0 += KVQI_FS_BLOCK) {
            const uint8_t *blk = L->codes + (size_t)(b0 / KVQI_FS_BLOCK) * ix->n_groups * 16;
            uint32_t nv = L->n - b0 < KVQI_FS_BLOCK ? L->n - b0 : KVQI_FS_BLOCK;
            _Alignas(64) float dist[KVQI_FS_BLOCK], err[KVQI_FS_BLOCK];
            if (q4) {
                ix->kern->fastscan(blk, s.lut, ix->n_groups, S);
                kvqi_block_consts bc = {lq.delta, lq.vmin, lq.sum_q, lq.K, alpha, full ? 0.0f : ferr,
                                        full ? 0.0f : qerr, INFINITY};
                ix->kern->estimate_block(S, L->f_add + b0, L->f_rescale + b0, L->f_err + b0,
                                         L->f_pop + b0, &bc, dist, err);
            } else {
                for (uint32_t v = 0; v < nv; v++) {
                    float acc = 0.0f;
                    for (uint32_t g = 0; g < ix->n_groups; g++)
                        acc += s.lutf[(size_t)g * 16 + kvqi_list_nibble(ix, L, b0 + v, g)];
                    uint32_t pos = b0 + v;
                    dist[v] = (L->f_add[pos] + lq.K) - alpha * (L->f_rescale[pos] * (2.0f * acc - lq.sum_q));
                    err[v] = full ? 0.0f : L->f_err[pos] * ferr;
                }
            }
            for (uint32_t v = 0; v < nv; v++) {
                const uint32_t pos = b0 + v, row = L->rows[pos];
                const int64_t id = ix->ids[row];
                if (filter && !passes(filter, id)) continue;
                if (!full && !(dist[v] - err[v] <= radius_est)) continue; /* cannot be within */
                float d;
                if (ix->reorder_f32 || ix->reorder_f16) {
                    d = exact_dist(ix, row, qx, l2x);
                } else if (ix->cfg.bits > 1) {
                    float yq = ex_dot(ix, L, pos, lq.qp) -
                               half * lq.sum_q;
                    d = est_to_exact(ix, L->f_add[pos] + lq.K - alpha * L->ex_rescale[pos] * yq);
                } else {
                    d = est_to_exact(ix, dist[v]);
                }
                if (d <= radius && !range_push(&o, d, id)) st = KVQ_ERR_NOMEM;
            }
        }
    }
    kvqi_free(base);
    if (st != KVQ_OK) {
        free(o.it);
        return st;
    }
    qsort(o.it, o.n, sizeof *o.it, cmp_item);
    for (size_t i = 0; i < o.n && i < cap; i++) {
        out_ids[i] = o.it[i].id;
        if (out_dists) out_dists[i] = o.it[i].d;
    }
    *n_found = o.n;
    free(o.it);
    return o.n > cap ? KVQ_ERR_CAPACITY : KVQ_OK;
}
