/* index.c - the kvq_index handle: config defaults and checks, create/free, the
 * coded space (cosine normalization, PCA, random rotation) and memory accounting.
 * Follows RaBitQ (arXiv 2405.12497): vectors are coded in a randomly rotated space. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cpu/cpu.h"
#include "index/index_internal.h"

KVQ_API kvq_status kvq_index_config_init(kvq_index_config *cfg, uint32_t dim) {
    if (!cfg) return KVQ_ERR_INVALID_ARG;
    memset(cfg, 0, sizeof *cfg);
    cfg->dim = dim;
    cfg->metric = KVQ_METRIC_L2;
    cfg->nlist = 1;
    cfg->bits = 1;
    cfg->split = 0;
    cfg->query_bits = 4;
    cfg->rotation = KVQ_ROTATION_FHT;
    cfg->pca_dim = 0;
    cfg->reorder = KVQ_REORDER_FP32;
    cfg->seed = 0x5eed;
    return dim ? KVQ_OK : KVQ_ERR_INVALID_ARG;
}

KVQ_API kvq_status kvq_index_search_params_init(kvq_index_search_params *p) {
    if (!p) return KVQ_ERR_INVALID_ARG;
    memset(p, 0, sizeof *p);
    p->nprobe = 1;
    p->eps0 = KVQI_INDEX_DEFAULT_EPS0;
    return KVQ_OK;
}

kvq_status kvqi_index_validate_config(const kvq_index_config *c) {
    if (!c) return KVQ_ERR_INVALID_ARG;
    if (c->dim == 0 || c->nlist == 0 || c->bits == 0) return KVQ_ERR_INVALID_ARG;
    if (c->dim > KVQI_INDEX_MAX_DIM || c->pca_dim > c->dim || c->nlist > KVQI_INDEX_MAX_NLIST ||
        c->bits > 8)
        return KVQ_ERR_UNSUPPORTED;
    if ((unsigned)c->metric > KVQ_METRIC_COSINE || (unsigned)c->rotation > KVQ_ROTATION_DENSE ||
        (unsigned)c->reorder > KVQ_REORDER_NONE)
        return KVQ_ERR_INVALID_ARG;
    if (c->query_bits != 4 && c->query_bits != 32) return KVQ_ERR_UNSUPPORTED;
    if (c->split > 1 || (c->split && c->bits < 2)) {
        kvqi_set_msg(NULL, 0, "index: split is 0 or 1 and needs bits >= 2 (a 1-bit pass, then the "
                     "rest of the bits)");
        return KVQ_ERR_INVALID_ARG;
    }
    if (c->ip_assign > 1) {
        kvqi_set_msg(NULL, 0, "index: ip_assign is 0 (l2) or 1 (ip)");
        return KVQ_ERR_INVALID_ARG;
    }
    return KVQ_OK;
}

static uint32_t coded_dim(const kvq_index_config *c) { return c->pca_dim ? c->pca_dim : c->dim; }

kvq_status kvqi_index_init_rotation(kvq_index *ix) {
    uint64_t seed = kvqi_seed_mix(ix->cfg.seed, 0x726f74 /* "rot" */);
    if (ix->cfg.rotation == KVQ_ROTATION_FHT) return kvqi_hadamard_init(&ix->had, ix->d, seed);
    ix->rot_dense = kvqi_alloc_array((size_t)ix->d * ix->d, sizeof(float));
    if (!ix->rot_dense) return KVQ_ERR_NOMEM;
    return kvqi_random_orthogonal(ix->d, seed, ix->rot_dense);
}

KVQ_API kvq_status kvq_index_create(const kvq_index_config *cfg, kvq_index **out) {
    return kvqi_index_new(cfg, 1, out);
}

kvq_status kvqi_index_new(const kvq_index_config *cfg, int init_rotation, kvq_index **out) {
    if (!out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    kvq_status st = kvqi_index_validate_config(cfg);
    if (st != KVQ_OK) return st;
    kvq_isa isa;
    if ((st = kvqi_isa_resolve(KVQ_ISA_AUTO, &isa)) != KVQ_OK) return st;
    kvq_index *ix = calloc(1, sizeof *ix);
    if (!ix) return KVQ_ERR_NOMEM;
    ix->cfg = *cfg;
    ix->cos_l2 = 1;
    if (!ix->cfg.train_iters) ix->cfg.train_iters = 12;
    if (!ix->cfg.max_train_points) {
        uint64_t m = 40ull * cfg->nlist;
        ix->cfg.max_train_points = m < 4096 ? 4096 : (m > 1000000 ? 1000000 : (uint32_t)m);
    }
    ix->dim = cfg->dim;
    ix->d = coded_dim(cfg);
    ix->d_pad = (ix->d + 15u) & ~15u;
    ix->n_groups = ix->d_pad / 4;
    ix->ex_row = cfg->bits > 1 ? ix->d_pad / 8 * cfg->bits : 0;
    ix->nlist = cfg->nlist;
    ix->kern = kvqi_index_kernels_for(isa);
    if (!init_rotation && cfg->rotation == KVQ_ROTATION_DENSE) {
        *out = ix; /* the loader reads the matrix from the file */
        return KVQ_OK;
    }
    if ((st = kvqi_index_init_rotation(ix)) != KVQ_OK) {
        kvq_index_free(ix);
        return st;
    }
    *out = ix;
    return KVQ_OK;
}

kvq_status kvqi_index_alloc_trained(kvq_index *ix) {
    ix->centroids = kvqi_calloc_array((size_t)ix->nlist * ix->d, sizeof(float));
    ix->centroids_rot = kvqi_calloc_array((size_t)ix->nlist * ix->d_pad, sizeof(float));
    ix->centroids_rot_sum = kvqi_calloc_array(ix->nlist, sizeof(float));
    ix->centroids_n2 = kvqi_calloc_array(ix->nlist, sizeof(float));
    ix->centroids_t = kvqi_calloc_array((size_t)(ix->nlist + 15) / 16 * 16, (size_t)ix->d * sizeof(float));
    ix->lists = calloc(ix->nlist, sizeof *ix->lists);
    if (!ix->centroids || !ix->centroids_rot || !ix->centroids_rot_sum || !ix->centroids_n2 ||
        !ix->centroids_t ||
        !ix->lists)
        return KVQ_ERR_NOMEM;
    return KVQ_OK;
}

KVQ_API void kvq_index_free(kvq_index *ix) {
    if (!ix) return;
    kvqi_free(ix->pca_mean);
    kvqi_free(ix->pca_proj);
    kvqi_hadamard_free(&ix->had);
    kvqi_free(ix->rot_dense);
    kvqi_free(ix->centroids);
    kvqi_free(ix->centroids_rot);
    kvqi_free(ix->centroids_rot_sum);
    kvqi_free(ix->centroids_n2);
    kvqi_free(ix->centroids_t);
    if (ix->lists && !ix->mapped)
        for (uint32_t i = 0; i < ix->nlist; i++) kvqi_list_free(&ix->lists[i]);
    free(ix->lists);
    if (!ix->mapped) {
        kvqi_free(ix->ids);
        kvqi_free(ix->reorder_f32);
        kvqi_free(ix->reorder_f16);
    }
    if (ix->map_base) munmap(ix->map_base, ix->map_size);
    free(ix);
}

void kvqi_index_unit(const kvq_index *ix, const float *x, float *out) {
    float n2 = ix->kern->dot(x, x, ix->dim);
    float inv = n2 > 0.0f ? 1.0f / sqrtf(n2) : 0.0f;
    for (uint32_t i = 0; i < ix->dim; i++) out[i] = x[i] * inv;
}

void kvqi_index_to_space(const kvq_index *ix, const float *x, int center, float *tmp,
                         float *out) {
    const float *src = x;
    if (ix->cfg.metric == KVQ_METRIC_COSINE) {
        kvqi_index_unit(ix, x, tmp);
        src = tmp;
    }
    if (!ix->pca_proj) {
        if (src != out) memcpy(out, src, (size_t)ix->dim * sizeof(float));
        return;
    }
    if (center) {
        if (src != tmp) memcpy(tmp, src, (size_t)ix->dim * sizeof(float));
        for (uint32_t i = 0; i < ix->dim; i++) tmp[i] -= ix->pca_mean[i];
        src = tmp;
    }
    for (uint32_t j = 0; j < ix->d; j++)
        out[j] = ix->kern->dot(ix->pca_proj + (size_t)j * ix->dim, src, ix->dim);
}

void kvqi_index_finish_centroids(kvq_index *ix) {
    for (uint32_t c = 0; c < ix->nlist; c++) {
        float *cr = ix->centroids_rot + (size_t)c * ix->d_pad;
        kvqi_index_rotate(ix, ix->centroids + (size_t)c * ix->d, cr);
        float acc[KVQI_DOT_LANES] = {0}; /* the canonical order, as kern->dot */
        for (uint32_t i = 0; i < ix->d_pad; i++) acc[i % KVQI_DOT_LANES] += cr[i];
        for (int w = KVQI_DOT_LANES / 2; w >= 1; w >>= 1)
            for (int j = 0; j < w; j++) acc[j] += acc[j + w];
        ix->centroids_rot_sum[c] = acc[0];
        float n2 = 0.0f; /* in order: the same on every ISA */
        for (uint32_t j = 0; j < ix->d; j++) n2 += ix->centroids[(size_t)c * ix->d + j] * ix->centroids[(size_t)c * ix->d + j];
        ix->centroids_n2[c] = n2;
        float *blk = ix->centroids_t + (size_t)(c / 16) * ix->d * 16;
        for (uint32_t j = 0; j < ix->d; j++) blk[(size_t)j * 16 + c % 16] = ix->centroids[(size_t)c * ix->d + j];
    }
}

void kvqi_index_rotate(const kvq_index *ix, const float *x, float *y) {
    if (ix->rot_dense) {
        kvqi_matvec(ix->rot_dense, ix->d, x, y);
    } else {
        if (x != y) memcpy(y, x, (size_t)ix->d * sizeof(float));
        kvqi_hadamard_apply(&ix->had, y, ix->kern->isa);
    }
    for (uint32_t i = ix->d; i < ix->d_pad; i++) y[i] = 0.0f;
}

void *kvqi_index_alloc_rows(size_t count, size_t size) {
    size_t bytes;
    if (kvqi_mul_size(count, size, &bytes) != KVQ_OK) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t huge = (size_t)2 << 20;
    if (bytes >= 2 * huge && bytes <= SIZE_MAX - huge) {
        void *p = NULL;
        if (posix_memalign(&p, huge, (bytes + huge - 1) / huge * huge) != 0) return NULL;
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: failure changes nothing */
        return p;
    }
#endif
    return kvqi_alloc_array(count, size);
}

KVQ_API kvq_status kvq_index_code_bytes(const kvq_index *ix, uint64_t *per_vector) {
    if (!ix || !per_vector) return KVQ_ERR_INVALID_ARG;
    /* 1-bit code, 4 factors, row number; extended code and its 2 factors */
    *per_vector = (uint64_t)ix->d_pad / 8 + 4 * sizeof(float) + sizeof(uint32_t) +
                  (ix->cfg.bits > 1 ? (uint64_t)ix->ex_row + 2 * sizeof(float) : 0);
    return KVQ_OK;
}

KVQ_API kvq_status kvq_index_set_pool(kvq_index *ix, kvq_threadpool *pool) {
    if (!ix) return KVQ_ERR_INVALID_ARG;
    ix->pool = pool;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_index_count(const kvq_index *ix, uint64_t *count) {
    if (!ix || !count) return KVQ_ERR_INVALID_ARG;
    *count = ix->n;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_index_get_config(const kvq_index *ix, kvq_index_config *out) {
    if (!ix || !out) return KVQ_ERR_INVALID_ARG;
    *out = ix->cfg;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_index_size_bytes(const kvq_index *ix, uint64_t *bytes) {
    if (!ix || !bytes) return KVQ_ERR_INVALID_ARG;
    uint64_t b = sizeof *ix;
    if (ix->pca_proj) b += (uint64_t)ix->dim * 4 + (uint64_t)ix->d * ix->dim * 4;
    if (ix->rot_dense) b += (uint64_t)ix->d * ix->d * 4;
    else b += (uint64_t)ix->d * 4 * (ix->had.two_pass ? 2 : 1);
    if (ix->lists) {
        b += (uint64_t)ix->nlist * (ix->d + ix->d_pad + 2) * 4 + (uint64_t)ix->nlist * sizeof(kvqi_ivf_list);
        b += (uint64_t)(ix->nlist + 15) / 16 * 16 * ix->d * 4;
        for (uint32_t i = 0; i < ix->nlist; i++) b += kvqi_list_bytes(ix, &ix->lists[i]);
    }
    b += ix->n * sizeof(int64_t);
    if (ix->reorder_f32) b += ix->n * ix->dim * 4;
    if (ix->reorder_f16) b += ix->n * ix->dim * 2;
    *bytes = b;
    return KVQ_OK;
}
