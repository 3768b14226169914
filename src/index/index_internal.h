/*
 * index_internal.h - the RaBitQ IVF index's internal state, shared by the files of
 * src/index/. RaBitQ (Gao & Long, SIGMOD 2024, arXiv 2405.12497) codes each vector's
 * rotated residual to its cluster centroid; extended RaBitQ (arXiv 2409.09913) adds
 * b-1 bits per coordinate.
 */
#ifndef KVQ_INDEX_INTERNAL_H
#define KVQ_INDEX_INTERNAL_H

#include <stdint.h>

#include "core/core.h"
#include "cpu/index_kernels.h"
#include "kvq.h"

#define KVQI_INDEX_MAX_DIM 16384u /* keeps fast-scan sums inside 16-bit counters */
#define KVQI_INDEX_MAX_NLIST 65536u
#define KVQI_INDEX_DEFAULT_EPS0 1.9f

/* One inverted list. Vectors sit in fast-scan blocks of 32; per-vector factors are
 * structure-of-arrays so a block's 32 factors load together. */
typedef struct kvqi_ivf_list {
    uint32_t n, cap;      /* cap is a multiple of 32 */
    uint8_t *codes;       /* cap / 32 blocks of n_groups * 16 bytes */
    float *f_add;         /* l2: ||r||^2; ip: 0 */
    float *f_rescale;     /* ||r||^2 / sum |r_i|  (= ||r|| / (sqrt(d) <o_bar, o>)) */
    float *f_err;         /* ||r|| sqrt(1 - <o_bar,o>^2) / (<o_bar,o> sqrt(d - 1)) */
    float *f_pop;         /* number of 1 bits of the code */
    uint8_t *ex_codes;    /* bits > 1: [cap][ex_row] the b-bit code values v_i, packed
                             (kvqi_ex_pack): d_pad * b / 8 bytes per vector */
    float *ex_rescale;    /* ||r||^2 / sum y_i r_i with y_i = v_i - (2^b - 1) / 2 */
    float *ex_err;        /* as f_err, with <y/||y||, o> in place of <o_bar, o> */
    uint32_t *rows;       /* row of each vector in the id / reorder arrays */
} kvqi_ivf_list;

struct kvq_index {
    kvq_index_config cfg;
    uint32_t dim;      /* input length */
    uint32_t d;        /* coded length (pca_dim or dim) */
    uint32_t d_pad;    /* d rounded up to 16: n_groups a multiple of 4 */
    uint32_t n_groups; /* d_pad / 4 */
    uint32_t ex_row;   /* bytes of one packed extended code: d_pad * bits / 8 */
    int trained;
    int cos_l2;        /* cosine coded as l2 between unit vectors: f_add = ||r||^2, residual
                          estimates against q - c (format 3); 0: as ip (format 2 files) */
    const kvqi_index_kernels *kern;
    kvq_threadpool *pool; /* the caller's, for train and add (NULL: calling thread) */
    int mapped;           /* ids, reorder store and list arrays point into a read-only
                             file image (kvq_index_map): never written or freed */
    void *map_base;       /* the mapping, unmapped by kvq_index_free */
    size_t map_size;

    float *pca_mean; /* [dim] (pca only) */
    float *pca_proj; /* [d][dim], rows = principal axes (pca only) */

    kvqi_hadamard had;  /* rotation fht */
    float *rot_dense;   /* [d][d] rotation dense */

    uint32_t nlist;
    float *centroids;     /* [nlist][d] */
    float *centroids_rot; /* [nlist][d_pad] rotated, zero padded */
    float *centroids_rot_sum; /* [nlist] sum of each rotated centroid's coordinates */
    float *centroids_n2;  /* [nlist] squared norms: the l2 probe ranks by ||c||^2 - 2 <q, c> */
    float *centroids_t;   /* [ceil(nlist/16)][d][16]: transposed for the probe kernel */
    kvqi_ivf_list *lists;

    uint64_t n, cap_rows;
    int64_t *ids;          /* [cap_rows] */
    float *reorder_f32;    /* [cap_rows][dim] (cosine: normalized) */
    uint16_t *reorder_f16; /* [cap_rows][dim] */
};

/* Cosine estimated as l2 between the unit vectors (||q - x||^2 = 2 - 2 <q, x>): the
 * residual's estimate and bound then scale with ||q - c||, not ||q||. */
static inline int kvqi_cos_l2(const kvq_index *ix) {
    return ix->cfg.metric == KVQ_METRIC_COSINE && ix->cos_l2;
}
/* The coded space's estimates are squared l2 distances (l2, and cosine above). */
static inline int kvqi_coded_l2(const kvq_index *ix) {
    return ix->cfg.metric == KVQ_METRIC_L2 || kvqi_cos_l2(ix);
}

/* index.c */
kvq_status kvqi_index_validate_config(const kvq_index_config *cfg);
/* kvq_index_create; with init_rotation 0 a dense rotation is left for the caller. */
kvq_status kvqi_index_new(const kvq_index_config *cfg, int init_rotation, kvq_index **out);
kvq_status kvqi_index_init_rotation(kvq_index *ix);
/* Allocate what a trained index needs once nlist and the PCA basis are known. */
kvq_status kvqi_index_alloc_trained(kvq_index *ix);
/* Rotated centroids and their coordinate sums, from the centroids. */
void kvqi_index_finish_centroids(kvq_index *ix);
/* Input vector -> coded space (normalize for cosine, PCA). out[d]; tmp[dim]. For ip,
 * PCA projects without centering (the caller adds <mean, q>). Cosine leaves the unit
 * vector in tmp, except with PCA and center (then tmp holds it minus the mean). */
void kvqi_index_to_space(const kvq_index *ix, const float *x, int center, float *tmp,
                         float *out);
/* out[dim] = x / ||x|| (cosine; x = 0 gives 0). */
void kvqi_index_unit(const kvq_index *ix, const float *x, float *out);
/* y[d_pad] = rotation(x[d]), zero padded. */
void kvqi_index_rotate(const kvq_index *ix, const float *x, float *y);

/* index.c: an allocation for the reorder store, on huge pages where the OS offers
 * them (the rerank reads rows at random: fewer TLB misses). Free with kvqi_free. */
void *kvqi_index_alloc_rows(size_t count, size_t size);

/* pca.c: the top d principal axes of x[n][dim] (rows of proj), and the mean. */
kvq_status kvqi_pca_fit(const float *x, size_t n, uint32_t dim, uint32_t d, float *mean,
                        float *proj);

/* codes.c: encode one rotated residual r[d_pad] (coordinates >= d are zero) into
 * slot pos of list l; scratch holds 2 d_pad floats. */
kvq_status kvqi_list_reserve(kvq_index *ix, kvqi_ivf_list *l, uint32_t need);
void kvqi_encode_into_list(const kvq_index *ix, kvqi_ivf_list *l, uint32_t pos,
                           const float *r, float *scratch);
/* 1-bit nibble of vector pos for group g. */
static inline unsigned kvqi_list_nibble(const kvq_index *ix, const kvqi_ivf_list *l,
                                        uint32_t pos, uint32_t g) {
    unsigned byte, shift;
    kvqi_fs_slot(pos % KVQI_FS_BLOCK, &byte, &shift);
    const uint8_t *blk = l->codes + (size_t)(pos / KVQI_FS_BLOCK) * ix->n_groups * 16;
    return (blk[(size_t)g * 16 + byte] >> shift) & 15u;
}
void kvqi_list_free(kvqi_ivf_list *l);
/* Packed extended codes: each run of 8 coordinates takes b bytes, coordinate t of the
 * run in bits [t b, t b + b) of them read as a little-endian integer. b = 8 is plain
 * bytes. n is a multiple of 8. */
void kvqi_ex_pack(const uint8_t *v, uint32_t n, unsigned b, uint8_t *out);
void kvqi_ex_unpack(const uint8_t *in, uint32_t n, unsigned b, uint8_t *v);
size_t kvqi_list_bytes(const kvq_index *ix, const kvqi_ivf_list *l);

/* io.c: CRC-32 (IEEE 802.3, reflected 0xEDB88320), continuing from crc. */
uint32_t kvqi_crc32(uint32_t crc, const void *buf, size_t n);

/* search.c: for tests, the estimate and bound half-width of every stored vector
 * against query q (1-bit code, or the extended code when use_ex), in list order. */
kvq_status kvqi_index_estimate_all(const kvq_index *ix, const float *q, int use_ex, float eps0,
                                   float *est, float *err, int64_t *ids);

/* ivf.c */
/* Rows x[n][dim] an index can take: finite, squared norm within float range, and
 * non-zero under cosine (KVQ_ERR_INVALID_ARG otherwise). */
kvq_status kvqi_index_check_rows(const kvq_index *ix, const float *x, size_t n);
uint32_t kvqi_nearest_centroid(const kvq_index *ix, const float *z);

#endif /* KVQ_INDEX_INTERNAL_H */
