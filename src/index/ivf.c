/* ivf.c - the inverted file: k-means centroids trained on a seeded sample (and the
 * optional PCA basis), assignment of each added vector to its nearest centroid, and
 * appending its RaBitQ code of the rotated residual to that list. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/index_internal.h"

/* The nearest of the k centroids stored transposed in ct (blocks of 16, as the probe
 * kernel reads them): smallest squared L2, or for ip largest <z, c>, the measure the
 * search probes by; ties to the lowest index. *score is its probe distance. */
static uint32_t nearest_of(const kvq_index *ix, const float *ct, uint32_t k, const float *z,
                           int ip, float *score) {
    uint32_t best = 0;
    float best_d = INFINITY, d16[16];
    for (uint32_t c0 = 0; c0 < k; c0 += 16) {
        ix->kern->probe16(ct + (size_t)(c0 / 16) * ix->d * 16, z, ix->d, ip, d16);
        for (uint32_t c = c0; c < c0 + 16 && c < k; c++)
            if (d16[c - c0] < best_d) best_d = d16[c - c0], best = c;
    }
    if (score) *score = best_d;
    return best;
}

uint32_t kvqi_nearest_centroid(const kvq_index *ix, const float *z) {
    return nearest_of(ix, ix->centroids_t, ix->nlist, z,
                      ix->cfg.metric != KVQ_METRIC_L2 && ix->cfg.ip_assign, NULL);
}

static void transpose16(const float *c, uint32_t k, uint32_t d, float *ct) {
    for (uint32_t i = 0; i < (k + 15) / 16 * 16; i++)
        for (uint32_t j = 0; j < d; j++)
            ct[(size_t)(i / 16) * d * 16 + (size_t)j * 16 + i % 16] = i < k ? c[(size_t)i * d + j] : 0.0f;
}

/* ------------------------------------------------------------------ k-means */

#define KM_CHUNK 256

typedef struct km_ctx {
    const kvq_index *ix;
    const float *x, *ct;
    size_t n;
    uint32_t k;
    int ip;
    uint32_t *lab;
    float *score;
    uint32_t *changed; /* per chunk */
} km_ctx;

static void km_assign(void *vctx, size_t t, unsigned thread) {
    const km_ctx *c = vctx;
    KVQI_UNUSED(thread);
    size_t end = (t + 1) * KM_CHUNK < c->n ? (t + 1) * KM_CHUNK : c->n;
    uint32_t ch = 0;
    for (size_t i = t * KM_CHUNK; i < end; i++) {
        uint32_t l = nearest_of(c->ix, c->ct, c->k, c->x + i * c->ix->d, c->ip, &c->score[i]);
        ch += l != c->lab[i];
        c->lab[i] = l;
    }
    c->changed[t] = ch;
}

/* Lloyd's k-means on x[n][d] (the coded space) into ix->centroids, with the assignment
 * the index uses (l2, or max inner product for ip and cosine, as faiss's IVF does):
 * seeded random initial centres, assignment spread over pool (each point on its own, so
 * the labels do not depend on the threads), sums in point order in double, an empty
 * cluster re-seeded with the worst-served point. Stops after `iters` rounds, or as soon
 * as no label changes or the objective improves by less than 1e-5 of itself. */
static kvq_status ivf_kmeans(kvq_index *ix, const float *x, size_t n, kvq_threadpool *pool,
                             uint32_t *rounds) {
    const uint32_t k = ix->nlist, d = ix->d;
    const int ip = ix->cfg.metric != KVQ_METRIC_L2 && ix->cfg.ip_assign;
    const size_t chunks = (n + KM_CHUNK - 1) / KM_CHUNK;
    uint32_t *lab = kvqi_alloc_array(n, sizeof(uint32_t));
    float *score = kvqi_alloc_array(n, sizeof(float));
    uint32_t *changed = kvqi_alloc_array(chunks, sizeof(uint32_t));
    double *sum = kvqi_alloc_array((size_t)k * d, sizeof(double));
    size_t *count = kvqi_alloc_array(k, sizeof(size_t));
    uint32_t *perm = kvqi_alloc_array(n, sizeof(uint32_t));
    float *ct = ix->centroids_t;
    kvq_status st = KVQ_OK;
    if (!lab || !score || !changed || !sum || !count || !perm) {
        st = KVQ_ERR_NOMEM;
        goto done;
    }
    kvqi_rng rng;
    kvqi_rng_seed(&rng, kvqi_seed_mix(ix->cfg.seed, 0x6b6d /* "km" */));
    for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    for (uint32_t c = 0; c < k; c++) { /* k distinct points, partial Fisher-Yates */
        size_t j = c + (size_t)(kvqi_rng_uniform(&rng) * (double)(n - c));
        if (j >= n) j = n - 1;
        uint32_t t = perm[c];
        perm[c] = perm[j];
        perm[j] = t;
        memcpy(ix->centroids + (size_t)c * d, x + (size_t)perm[c] * d, d * sizeof(float));
    }
    for (size_t i = 0; i < n; i++) lab[i] = UINT32_MAX;
    km_ctx ctx = {ix, x, ct, n, k, ip, lab, score, changed};
    double prev = INFINITY;
    uint32_t it = 0;
    for (; it < ix->cfg.train_iters; it++) {
        transpose16(ix->centroids, k, d, ct);
        kvqi_parallel_for(pool, chunks, km_assign, &ctx);
        uint64_t moved = 0;
        double obj = 0.0;
        for (size_t t = 0; t < chunks; t++) moved += changed[t];
        for (size_t i = 0; i < n; i++) obj += score[i];
        if (moved == 0) break;
        memset(sum, 0, (size_t)k * d * sizeof(double));
        memset(count, 0, k * sizeof(size_t));
        for (size_t i = 0; i < n; i++) {
            double *sp = sum + (size_t)lab[i] * d;
            const float *xi = x + i * d;
            for (uint32_t j = 0; j < d; j++) sp[j] += xi[j];
            count[lab[i]]++;
        }
        for (uint32_t c = 0; c < k; c++) {
            float *cc = ix->centroids + (size_t)c * d;
            if (count[c]) {
                for (uint32_t j = 0; j < d; j++) cc[j] = (float)(sum[(size_t)c * d + j] / (double)count[c]);
                continue;
            }
            size_t far = 0; /* the point its centre serves worst (lowest index on ties) */
            for (size_t i = 1; i < n; i++)
                if (score[i] > score[far]) far = i;
            memcpy(cc, x + far * d, d * sizeof(float));
            score[far] = -INFINITY;
        }
        if (fabs(prev - obj) <= 1e-5 * fabs(obj)) {
            it++;
            break;
        }
        prev = obj;
    }
    if (rounds) *rounds = it;
done:
    kvqi_free(lab);
    kvqi_free(score);
    kvqi_free(changed);
    kvqi_free(sum);
    kvqi_free(count);
    kvqi_free(perm);
    return st;
}

static int has_non_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 1;
    return 0;
}

kvq_status kvqi_index_check_rows(const kvq_index *ix, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float *v = x + i * ix->dim;
        if (has_non_finite(v, ix->dim)) return KVQ_ERR_INVALID_ARG;
        /* a squared norm past the float range makes every distance inf or NaN */
        double n2 = 0.0;
        for (uint32_t j = 0; j < ix->dim; j++) n2 += (double)v[j] * v[j];
        if (!(n2 <= 1e36)) return KVQ_ERR_INVALID_ARG;
        if (ix->cfg.metric == KVQ_METRIC_COSINE && !(n2 > 0.0)) return KVQ_ERR_INVALID_ARG;
    }
    return KVQ_OK;
}

KVQ_API kvq_status kvq_index_train(kvq_index *ix, const float *x, size_t n) {
    if (!ix || !x || n == 0) return KVQ_ERR_INVALID_ARG;
    if (ix->trained) return KVQ_ERR_STATE;
    if (n < ix->nlist) return KVQ_ERR_INVALID_ARG;
    size_t total;
    if (kvqi_mul_size(n, ix->dim, &total) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    if (kvqi_index_check_rows(ix, x, n) != KVQ_OK) return KVQ_ERR_INVALID_ARG;

    /* a seeded sample without replacement (partial Fisher-Yates over row numbers) */
    size_t m = n < ix->cfg.max_train_points ? n : ix->cfg.max_train_points;
    kvq_status st = KVQ_OK;
    float *sample = kvqi_alloc_array(m, (size_t)ix->dim * sizeof(float));
    float *coded = kvqi_alloc_array(m, (size_t)ix->d * sizeof(float));
    float *tmp = kvqi_alloc_array(ix->dim, sizeof(float));
    uint32_t *perm = NULL;
    if (!sample || !coded || !tmp) {
        st = KVQ_ERR_NOMEM;
        goto done;
    }
    if (m == n) {
        memcpy(sample, x, total * sizeof(float));
    } else {
        perm = malloc(n * sizeof *perm);
        if (!perm || n > UINT32_MAX) {
            st = perm ? KVQ_ERR_UNSUPPORTED : KVQ_ERR_NOMEM;
            goto done;
        }
        for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
        kvqi_rng rng;
        kvqi_rng_seed(&rng, kvqi_seed_mix(ix->cfg.seed, 0x73616d70 /* "samp" */));
        for (size_t i = 0; i < m; i++) {
            size_t j = i + (size_t)(kvqi_rng_uniform(&rng) * (double)(n - i));
            if (j >= n) j = n - 1;
            uint32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
            memcpy(sample + i * ix->dim, x + (size_t)perm[i] * ix->dim, ix->dim * sizeof(float));
        }
    }
    if (ix->cfg.metric == KVQ_METRIC_COSINE)
        for (size_t i = 0; i < m; i++) {
            float *v = sample + i * ix->dim;
            float n2 = ix->kern->dot(v, v, ix->dim);
            float inv = n2 > 0.0f ? 1.0f / sqrtf(n2) : 0.0f;
            for (uint32_t j = 0; j < ix->dim; j++) v[j] *= inv;
        }
    if (ix->cfg.pca_dim) {
        ix->pca_mean = kvqi_alloc_array(ix->dim, sizeof(float));
        ix->pca_proj = kvqi_alloc_array((size_t)ix->d * ix->dim, sizeof(float));
        if (!ix->pca_mean || !ix->pca_proj) {
            st = KVQ_ERR_NOMEM;
            goto done;
        }
        if ((st = kvqi_pca_fit(sample, m, ix->dim, ix->d, ix->pca_mean, ix->pca_proj)) != KVQ_OK)
            goto done;
    }
    if ((st = kvqi_index_alloc_trained(ix)) != KVQ_OK) goto done;
    for (size_t i = 0; i < m; i++) {
        /* the sample is already normalized: skip the cosine step */
        const float *v = sample + i * ix->dim;
        float *z = coded + i * ix->d;
        if (ix->pca_proj) {
            for (uint32_t j = 0; j < ix->dim; j++) tmp[j] = v[j] - ix->pca_mean[j];
            for (uint32_t j = 0; j < ix->d; j++)
                z[j] = ix->kern->dot(ix->pca_proj + (size_t)j * ix->dim, tmp, ix->dim);
        } else {
            memcpy(z, v, ix->dim * sizeof(float));
        }
    }
    if (ix->nlist == 1) {
        double *acc = calloc(ix->d, sizeof(double));
        if (!acc) {
            st = KVQ_ERR_NOMEM;
            goto done;
        }
        for (size_t i = 0; i < m; i++)
            for (uint32_t j = 0; j < ix->d; j++) acc[j] += coded[i * ix->d + j];
        for (uint32_t j = 0; j < ix->d; j++) ix->centroids[j] = (float)(acc[j] / (double)m);
        free(acc);
    } else {
        if ((st = ivf_kmeans(ix, coded, m, ix->pool, NULL)) != KVQ_OK) goto done;
    }
    kvqi_index_finish_centroids(ix);
    ix->trained = 1;
done:
    if (st != KVQ_OK && !ix->trained) {
        kvqi_free(ix->pca_mean);
        kvqi_free(ix->pca_proj);
        kvqi_free(ix->centroids);
        kvqi_free(ix->centroids_rot);
        kvqi_free(ix->centroids_rot_sum);
        kvqi_free(ix->centroids_n2);
        kvqi_free(ix->centroids_t);
        ix->centroids_rot_sum = ix->centroids_n2 = ix->centroids_t = NULL;
        free(ix->lists);
        ix->pca_mean = ix->pca_proj = ix->centroids = ix->centroids_rot = NULL;
        ix->lists = NULL;
    }
    free(perm);
    kvqi_free(sample);
    kvqi_free(coded);
    kvqi_free(tmp);
    return st;
}

static kvq_status reserve_rows(kvq_index *ix, uint64_t need) {
    if (need <= ix->cap_rows) return KVQ_OK;
    if (need > UINT32_MAX) return KVQ_ERR_CAPACITY;
    uint64_t cap = ix->cap_rows * 2;
    if (cap < need) cap = need;
    if (cap < 1024) cap = 1024;
    if (cap > UINT32_MAX) cap = UINT32_MAX;
    int64_t *ids = kvqi_alloc_array((size_t)cap, sizeof(int64_t));
    if (!ids) return KVQ_ERR_NOMEM;
    if (ix->n) memcpy(ids, ix->ids, (size_t)ix->n * sizeof(int64_t));
    if (ix->cfg.reorder != KVQ_REORDER_NONE) {
        size_t el = ix->cfg.reorder == KVQ_REORDER_FP32 ? sizeof(float) : sizeof(uint16_t);
        size_t row_bytes = (size_t)ix->dim * el;
        void *re = kvqi_index_alloc_rows((size_t)cap, row_bytes);
        if (!re) {
            kvqi_free(ids);
            return KVQ_ERR_NOMEM;
        }
        void *old = ix->cfg.reorder == KVQ_REORDER_FP32 ? (void *)ix->reorder_f32
                                                        : (void *)ix->reorder_f16;
        if (ix->n) memcpy(re, old, (size_t)ix->n * row_bytes);
        kvqi_free(old);
        if (ix->cfg.reorder == KVQ_REORDER_FP32) ix->reorder_f32 = re;
        else ix->reorder_f16 = re;
    }
    kvqi_free(ix->ids);
    ix->ids = ids;
    ix->cap_rows = cap;
    return KVQ_OK;
}

typedef struct add_ctx {
    kvq_index *ix;
    const float *x;
    size_t n;
    uint64_t row0;
    uint32_t *lab;    /* [n] the list of each new vector */
    uint32_t *order;  /* new vectors grouped by list, input order within a list */
    uint32_t *start;  /* [nlist + 1] each list's run in order */
    uint32_t *old_n;  /* [nlist] list sizes before this call */
    uint32_t *task_list, *task_block;
    float *scratch;   /* per thread: dim + 5 d_pad floats */
    size_t scratch_n;
} add_ctx;

static void add_assign(void *vctx, size_t t, unsigned thread) {
    const add_ctx *c = vctx;
    const kvq_index *ix = c->ix;
    float *tmp = c->scratch + thread * c->scratch_n, *z = tmp + ix->dim;
    size_t end = (t + 1) * KM_CHUNK < c->n ? (t + 1) * KM_CHUNK : c->n;
    for (size_t i = t * KM_CHUNK; i < end; i++) {
        kvqi_index_to_space(ix, c->x + i * ix->dim, 1, tmp, z);
        c->lab[i] = kvqi_nearest_centroid(ix, z);
    }
}

/* One fast-scan block of one list: its new vectors are encoded by one thread (two
 * vectors share each code byte). */
static void add_encode(void *vctx, size_t t, unsigned thread) {
    const add_ctx *c = vctx;
    const kvq_index *ix = c->ix;
    float *tmp = c->scratch + thread * c->scratch_n, *z = tmp + ix->dim, *res = z + ix->d_pad,
          *r = res + ix->d_pad, *ex_tmp = r + ix->d_pad;
    const uint32_t l = c->task_list[t], blk = c->task_block[t];
    kvqi_ivf_list *L = &ix->lists[l];
    const uint32_t first = c->old_n[l], last = first + (c->start[l + 1] - c->start[l]);
    uint32_t p0 = blk * KVQI_FS_BLOCK, p1 = p0 + KVQI_FS_BLOCK;
    if (p0 < first) p0 = first;
    if (p1 > last) p1 = last;
    const float *cen = ix->centroids + (size_t)l * ix->d;
    for (uint32_t pos = p0; pos < p1; pos++) {
        uint32_t i = c->order[c->start[l] + (pos - first)];
        kvqi_index_to_space(ix, c->x + (size_t)i * ix->dim, 1, tmp, z);
        for (uint32_t j = 0; j < ix->d; j++) res[j] = z[j] - cen[j];
        kvqi_index_rotate(ix, res, r);
        kvqi_encode_into_list(ix, L, pos, r, ex_tmp);
        L->rows[pos] = (uint32_t)(c->row0 + i);
    }
}

KVQ_API kvq_status kvq_index_add(kvq_index *ix, const float *x, size_t n, const int64_t *ids) {
    if (!ix || (!x && n)) return KVQ_ERR_INVALID_ARG;
    if (!ix->trained) return KVQ_ERR_STATE;
    if (n == 0) return KVQ_OK;
    size_t total;
    if (kvqi_mul_size(n, ix->dim, &total) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    if (kvqi_index_check_rows(ix, x, n) != KVQ_OK) return KVQ_ERR_INVALID_ARG;
    if (ids) /* -1 is "no result" in search output: ids are non-negative */
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0) return KVQ_ERR_INVALID_ARG;
    if ((uint64_t)n > UINT32_MAX - ix->n) return KVQ_ERR_CAPACITY;
    if (ix->mapped) return KVQ_ERR_STATE;
    int64_t next_id = 0; /* ids NULL: one past the largest stored */
    for (uint64_t r = 0; !ids && r < ix->n; r++)
        if (ix->ids[r] >= next_id) next_id = ix->ids[r] + 1;
    if (!ids && (uint64_t)next_id > (uint64_t)INT64_MAX - n) return KVQ_ERR_CAPACITY;
    kvq_status st = reserve_rows(ix, ix->n + n);
    if (st != KVQ_OK) return st;
    const uint32_t nl = ix->nlist;
    const unsigned slots = kvq_threadpool_size(ix->pool);
    add_ctx c = {ix, x, n, ix->n, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                 (size_t)ix->dim + 5 * (size_t)ix->d_pad};
    c.scratch = kvqi_alloc_array(slots, c.scratch_n * sizeof(float));
    c.lab = kvqi_alloc_array(n, sizeof(uint32_t));
    c.order = kvqi_alloc_array(n, sizeof(uint32_t));
    c.start = kvqi_calloc_array((size_t)nl + 1, sizeof(uint32_t));
    c.old_n = kvqi_alloc_array(nl, sizeof(uint32_t));
    /* a list's new vectors span at most new/32 + 2 blocks */
    const size_t max_tasks = n / KVQI_FS_BLOCK + 2 * (size_t)nl;
    c.task_list = kvqi_alloc_array(max_tasks, sizeof(uint32_t));
    c.task_block = kvqi_alloc_array(max_tasks, sizeof(uint32_t));
    if (!c.scratch || !c.lab || !c.order || !c.start || !c.old_n || !c.task_list || !c.task_block) {
        st = KVQ_ERR_NOMEM;
        goto done;
    }
    kvqi_parallel_for(ix->pool, (n + KM_CHUNK - 1) / KM_CHUNK, add_assign, &c);
    for (size_t i = 0; i < n; i++) c.start[c.lab[i] + 1]++;
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t cnt = c.start[l + 1];
        c.old_n[l] = ix->lists[l].n;
        if (cnt && (uint64_t)ix->lists[l].n + cnt > UINT32_MAX) {
            st = KVQ_ERR_CAPACITY;
            goto done;
        }
        if (cnt && (st = kvqi_list_reserve(ix, &ix->lists[l], ix->lists[l].n + cnt)) != KVQ_OK)
            goto done;
        c.start[l + 1] += c.start[l];
    }
    {
        uint32_t *fill = c.task_list; /* borrowed as the running fill of each list */
        for (uint32_t l = 0; l < nl; l++) fill[l] = c.start[l];
        for (size_t i = 0; i < n; i++) c.order[fill[c.lab[i]]++] = (uint32_t)i;
    }
    size_t n_tasks = 0;
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t cnt = c.start[l + 1] - c.start[l];
        if (!cnt) continue;
        for (uint32_t b = c.old_n[l] / KVQI_FS_BLOCK; b <= (c.old_n[l] + cnt - 1) / KVQI_FS_BLOCK; b++) {
            c.task_list[n_tasks] = l;
            c.task_block[n_tasks++] = b;
        }
    }
    kvqi_parallel_for(ix->pool, n_tasks, add_encode, &c);
    for (uint32_t l = 0; l < nl; l++) ix->lists[l].n += c.start[l + 1] - c.start[l];
    float *tmp = c.scratch;
    for (size_t i = 0; i < n; i++) {
        const float *v = x + i * ix->dim;
        uint64_t row = ix->n + i;
        ix->ids[row] = ids ? ids[i] : next_id + (int64_t)i;
        if (ix->reorder_f32 || ix->reorder_f16) {
            const float *keep = v;
            if (ix->cfg.metric == KVQ_METRIC_COSINE) {
                float n2 = ix->kern->dot(v, v, ix->dim);
                float inv = n2 > 0.0f ? 1.0f / sqrtf(n2) : 0.0f;
                for (uint32_t j = 0; j < ix->dim; j++) tmp[j] = v[j] * inv;
                keep = tmp;
            }
            if (ix->reorder_f32) memcpy(ix->reorder_f32 + row * ix->dim, keep, ix->dim * sizeof(float));
            else
                for (uint32_t j = 0; j < ix->dim; j++)
                    ix->reorder_f16[row * ix->dim + j] = kvqi_fp32_to_fp16(keep[j]);
        }
    }
    ix->n += n;
done:
    kvqi_free(c.scratch);
    kvqi_free(c.lab);
    kvqi_free(c.order);
    kvqi_free(c.start);
    kvqi_free(c.old_n);
    kvqi_free(c.task_list);
    kvqi_free(c.task_block);
    return st;
}

/* ------------------------------------------------------------------ remove */

static void set_nibble(const kvq_index *ix, kvqi_ivf_list *l, uint32_t pos, uint32_t g, unsigned nib) {
    unsigned byte, shift;
    kvqi_fs_slot(pos % KVQI_FS_BLOCK, &byte, &shift);
    uint8_t *p = l->codes + (size_t)(pos / KVQI_FS_BLOCK) * ix->n_groups * 16 + (size_t)g * 16 + byte;
    *p = (uint8_t)((*p & ~(15u << shift)) | (nib << shift));
}

/* slot from -> slot to of the same list (to < from); clear = zero slot `to` instead */
static void list_move(const kvq_index *ix, kvqi_ivf_list *l, uint32_t from, uint32_t to, int clear) {
    for (uint32_t g = 0; g < ix->n_groups; g++)
        set_nibble(ix, l, to, g, clear ? 0u : kvqi_list_nibble(ix, l, from, g));
    l->f_add[to] = clear ? 0.0f : l->f_add[from];
    l->f_rescale[to] = clear ? 0.0f : l->f_rescale[from];
    l->f_err[to] = clear ? 0.0f : l->f_err[from];
    l->f_pop[to] = clear ? 0.0f : l->f_pop[from];
    l->rows[to] = clear ? 0u : l->rows[from];
    if (ix->cfg.bits > 1) {
        uint8_t *dst = l->ex_codes + (size_t)to * ix->ex_row;
        if (clear) memset(dst, 0, ix->ex_row);
        else memcpy(dst, l->ex_codes + (size_t)from * ix->ex_row, ix->ex_row);
        l->ex_rescale[to] = clear ? 0.0f : l->ex_rescale[from];
        l->ex_err[to] = clear ? 0.0f : l->ex_err[from];
    }
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

KVQ_API kvq_status kvq_index_remove(kvq_index *ix, const int64_t *ids, size_t n, uint64_t *removed) {
    if (removed) *removed = 0;
    if (!ix || (!ids && n)) return KVQ_ERR_INVALID_ARG;
    if (ix->mapped) return KVQ_ERR_STATE;
    if (!ix->trained || n == 0 || ix->n == 0) return KVQ_OK;
    int64_t *sorted = kvqi_alloc_array(n, sizeof(int64_t));
    uint8_t *drop = kvqi_calloc_array((size_t)ix->n, 1);
    uint32_t *newrow = kvqi_alloc_array((size_t)ix->n, sizeof(uint32_t));
    kvq_status st = KVQ_OK;
    if (!sorted || !drop || !newrow) {
        st = KVQ_ERR_NOMEM;
        goto done;
    }
    memcpy(sorted, ids, n * sizeof(int64_t));
    qsort(sorted, n, sizeof(int64_t), cmp_i64);
    uint64_t count = 0;
    for (uint64_t r = 0; r < ix->n; r++)
        if (bsearch(&ix->ids[r], sorted, n, sizeof(int64_t), cmp_i64)) drop[r] = 1, count++;
    if (!count) goto done;
    /* rows: compact ids and the reorder store, keeping order */
    const size_t row_bytes = ix->reorder_f32 ? (size_t)ix->dim * 4 : (ix->reorder_f16 ? (size_t)ix->dim * 2 : 0);
    char *store = ix->reorder_f32 ? (char *)ix->reorder_f32 : (char *)ix->reorder_f16;
    uint32_t w = 0;
    for (uint64_t r = 0; r < ix->n; r++) {
        if (drop[r]) continue;
        newrow[r] = w;
        if (w != r) {
            ix->ids[w] = ix->ids[r];
            if (row_bytes) memcpy(store + (size_t)w * row_bytes, store + (size_t)r * row_bytes, row_bytes);
        }
        w++;
    }
    /* lists: survivors slide down in order, the freed tail slots are zeroed */
    for (uint32_t c = 0; c < ix->nlist; c++) {
        kvqi_ivf_list *l = &ix->lists[c];
        uint32_t lw = 0;
        for (uint32_t pos = 0; pos < l->n; pos++) {
            uint32_t row = l->rows[pos];
            if (drop[row]) continue;
            if (lw != pos) list_move(ix, l, pos, lw, 0);
            l->rows[lw++] = newrow[row];
        }
        for (uint32_t pos = lw; pos < l->n; pos++) list_move(ix, l, pos, pos, 1);
        l->n = lw;
    }
    ix->n -= count;
    if (removed) *removed = count;
done:
    kvqi_free(sorted);
    kvqi_free(drop);
    kvqi_free(newrow);
    return st;
}
