/* ivf.c - the inverted file: k-means centroids trained on a seeded sample (and the
 * optional PCA basis), assignment of each added vector to its nearest centroid, and
 * appending its RaBitQ code of the rotated residual to that list. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/index_internal.h"

uint32_t kvqi_nearest_centroid(const kvq_index *ix, const float *z) {
    uint32_t best = 0;
    float best_d = INFINITY;
    for (uint32_t c = 0; c < ix->nlist; c++) {
        float dist = ix->kern->l2sq(ix->centroids + (size_t)c * ix->d, z, ix->d);
        if (dist < best_d) best_d = dist, best = c;
    }
    return best;
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
        st = kvqi_kmeans(coded, m, ix->d, ix->nlist, ix->cfg.train_iters,
                         kvqi_seed_mix(ix->cfg.seed, 0x6b6d /* "km" */), ix->centroids, NULL);
        if (st != KVQ_OK) goto done;
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
        kvqi_free(ix->centroids_t);
        ix->centroids_rot_sum = ix->centroids_t = NULL;
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
    kvq_status st = reserve_rows(ix, ix->n + n);
    if (st != KVQ_OK) return st;
    size_t scratch_n = (size_t)ix->dim + 4 * (size_t)ix->d_pad;
    float *scratch = kvqi_alloc_array(scratch_n, sizeof(float));
    if (!scratch) return KVQ_ERR_NOMEM;
    float *tmp = scratch, *z = tmp + ix->dim, *res = z + ix->d_pad, *r = res + ix->d_pad,
          *ex_tmp = r + ix->d_pad;
    for (size_t i = 0; i < n; i++) {
        const float *v = x + i * ix->dim;
        uint64_t row = ix->n;
        kvqi_index_to_space(ix, v, 1, tmp, z);
        uint32_t c = kvqi_nearest_centroid(ix, z);
        kvqi_ivf_list *l = &ix->lists[c];
        if ((st = kvqi_list_reserve(ix, l, l->n + 1)) != KVQ_OK) break;
        const float *cen = ix->centroids + (size_t)c * ix->d;
        for (uint32_t j = 0; j < ix->d; j++) res[j] = z[j] - cen[j];
        kvqi_index_rotate(ix, res, r);
        kvqi_encode_into_list(ix, l, l->n, r, ex_tmp);
        l->rows[l->n] = (uint32_t)row;
        l->n++;
        ix->ids[row] = ids ? ids[i] : (int64_t)row;
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
        ix->n++;
    }
    kvqi_free(scratch);
    return st;
}
