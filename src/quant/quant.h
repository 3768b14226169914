/*
 * quant.h - inside a kvq_quantizer: the per-method vtable (methods are data: one table
 * of them by name in registry.c), the shared rotation, and small routines the method
 * files share. Public entry points and argument checks live in quantizer.c.
 */
#ifndef KVQ_QUANT_H
#define KVQ_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"
#include "kvq.h"

/* Largest vector the per-call stack buffers take (encode/score allocate nothing). */
#define KVQI_QUANT_MAX_DIM 4096u

/* Rotation Pi shared by the rotating methods (ALGORITHMS.md): none, randomized
 * Hadamard (core's kvqi_hadamard, any dim) or a dense Haar-random orthogonal matrix. */
enum { KVQI_ROT_NONE = 0, KVQI_ROT_HADAMARD = 1, KVQI_ROT_DENSE = 2 };
typedef struct kvqi_rotation {
    int kind;
    uint32_t dim;
    kvqi_hadamard had; /* KVQI_ROT_HADAMARD */
    float *dense;      /* KVQI_ROT_DENSE: dim x dim row-major */
} kvqi_rotation;

kvq_status kvqi_rotation_init(kvqi_rotation *r, int kind, uint32_t dim, uint64_t seed);
void kvqi_rotation_free(kvqi_rotation *r);
/* y = Pi x and x = Pi^T y; in and out may alias. */
void kvqi_rotation_apply(const kvqi_rotation *r, const float *in, float *out, kvq_isa isa);
void kvqi_rotation_inverse(const kvqi_rotation *r, const float *in, float *out, kvq_isa isa);
size_t kvqi_rotation_shared_size(const kvqi_rotation *r);
/* Saves the rotation's defining data under "rotation.*" and checks it on load. */
size_t kvqi_rotation_tensors(const kvqi_rotation *r, kvqi_st_tensor *t, size_t cap);
kvq_status kvqi_rotation_check(const kvqi_rotation *r, const kvqi_st_file *f);

struct kvq_quantizer;

/* Tensors a method saves (pointers stay valid while the quantizer lives). */
#define KVQI_QUANT_MAX_TENSORS 16

typedef struct kvqi_method {
    kvq_method method;
    const char *name;
    /* Check cfg (defaults already resolved) for this method: KVQ_ERR_UNSUPPORTED with a
     * one-line reason in why for a dim or bits it cannot take. */
    kvq_status (*validate)(const kvq_config *cfg, char *why, size_t why_size);
    /* Build the method's state (codebooks, projections); q->cfg, q->isa, kernels set. */
    kvq_status (*init)(struct kvq_quantizer *q);
    void (*destroy)(struct kvq_quantizer *q);
    size_t (*code_size)(const struct kvq_quantizer *q);
    size_t (*shared_size)(const struct kvq_quantizer *q);
    kvq_status (*encode)(const struct kvq_quantizer *q, const float *x, size_t n,
                         uint8_t *codes);
    kvq_status (*decode)(const struct kvq_quantizer *q, const uint8_t *codes, size_t n,
                         float *x);
    /* err may be NULL; when not NULL the method must have a bound (has_bound). */
    kvq_status (*score)(const struct kvq_quantizer *q, const float *query,
                        const uint8_t *codes, size_t n, float *scores, float *err);
    int has_bound;
    /* Optional (NULL: KVQ_ERR_UNSUPPORTED / nothing to learn). */
    kvq_status (*fit)(struct kvq_quantizer *q, const float *x, size_t n);
    /* Tensors beyond the rotation; returns how many were written into t. */
    size_t (*save_tensors)(const struct kvq_quantizer *q, kvqi_st_tensor *t, size_t cap);
    /* Check (or take, for learned state) the saved tensors. */
    kvq_status (*load_tensors)(struct kvq_quantizer *q, const kvqi_st_file *f);
    /* Optional position-aware variants (kvq_encode_at etc., position.c); NULL: the
     * position-free calls above serve, positions ignored. pos may be NULL. */
    kvq_status (*encode_at)(const struct kvq_quantizer *q, const float *x, const int32_t *pos,
                            size_t n, uint8_t *codes);
    kvq_status (*decode_at)(const struct kvq_quantizer *q, const uint8_t *codes,
                            const int32_t *pos, size_t n, float *x);
    kvq_status (*score_at)(const struct kvq_quantizer *q, const float *query,
                           const uint8_t *codes, const int32_t *pos, size_t n, float *scores);
} kvqi_method;

struct kvq_quantizer {
    kvq_config cfg; /* defaults resolved */
    const kvqi_method *m;
    kvq_isa isa; /* resolved */
    const kvqi_quant_kernels *k;
    const kvqi_base_kernels *base;
    kvqi_rotation rot;
    size_t code_size;
    int fitted; /* methods with learned state */
    void *state;
};

/* registry.c */
const kvqi_method *kvqi_method_find(kvq_method method);
extern const kvqi_method kvqi_method_fp16, kvqi_method_q8_0, kvqi_method_q4_0,
    kvqi_method_turboquant_mse, kvqi_method_turboquant_prod, kvqi_method_turboquant_rvq,
    kvqi_method_qjl, kvqi_method_polarquant, kvqi_method_rabitq;
extern const kvqi_method kvqi_method_vecinfer, kvqi_method_spectral, kvqi_method_comm_vq;
extern const kvqi_method kvqi_method_channel, kvqi_method_vq;

/* vq.c: the 4-d codebook (256 x 4 floats, for coordinates of unit variance) and the index
 * of the centroid nearest v[0..3] (the first of equals; the same on every ISA). */
const float *kvqi_vq_codebook(void);
uint32_t kvqi_vq_nearest(const float *v);

/* channel.c: the asymmetric uniform code shared with the cache's per-channel keys.
 * range: fp16 minimum and step (rounded up) of [lo, hi] in 2^bits - 1 steps; code: the
 * nearest level, clamped. */
void kvqi_channel_range(float lo, float hi, uint32_t bits, uint16_t *lo_h, uint16_t *step_h);
uint32_t kvqi_channel_code(float x, float lo, float step, uint32_t bits);

/* artifact.c: calibrated methods' artifacts (kvq_config.artifact, files written by
 * kvq_quantizer_save). check: the header is a kvq quantizer of cfg's method, dim and code
 * layout (KVQ_ERR_MISMATCH and a one-line reason otherwise; the seed may differ: the
 * learned state defines the codes). open: check, then hand back the file and its seed for
 * the method's init to build with and pass to its load_tensors. */
kvq_status kvqi_artifact_check(const kvq_config *cfg, char *why, size_t why_size);
kvq_status kvqi_artifact_open(const kvq_config *cfg, kvqi_st_file **f, uint64_t *seed);

/* config.c: fill the method's defaults into zero fields. */
void kvqi_config_resolve(kvq_config *cfg);
/* One key=value of kvq_config_parse applied to cfg (its method must take the key), for
 * the options that stand beside a spec (the cache options' rope_base and rope). */
kvq_status kvqi_config_set_key(kvq_config *cfg, const char *key, const char *val, char *msg, size_t msg_size);
/* The rotation a config asks for (after resolve). */
int kvqi_config_rotation(const kvq_config *cfg);

/* Little-endian scalar fields inside codes (codes may be unaligned). */
static inline uint16_t kvqi_rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline void kvqi_wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline float kvqi_rdf32(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}
static inline void kvqi_wrf32(uint8_t *p, float f) { memcpy(p, &f, 4); }
static inline float kvqi_rd_half(const uint8_t *p) { return kvqi_fp16_to_fp32(kvqi_rd16(p)); }
/* Store f as fp16 and return the value a decoder will read back. */
static inline float kvqi_wr_half(uint8_t *p, float f) {
    uint16_t h = kvqi_fp32_to_fp16(f);
    kvqi_wr16(p, h);
    return kvqi_fp16_to_fp32(h);
}

/* ||x|| in the canonical dot order (bit-identical on every ISA). */
static inline float kvqi_quant_norm(const struct kvq_quantizer *q, const float *x, uint32_t n) {
    return sqrtf(q->base->dot(x, x, n));
}

/* A tensor descriptor for a float32 array of shape (a) or (a, b). */
kvqi_st_tensor kvqi_tensor_f32(const char *name, const float *data, uint64_t a, uint64_t b);
/* 1 when the saved tensor has exactly this name, dtype F32, shape and content. */
int kvqi_tensor_equals_f32(const kvqi_st_file *f, const char *name, const float *data,
                           uint64_t a, uint64_t b);


/* ----------------------------------------------------- QJL projection (qjl.c) */

/* S in R^{m x d}, i.i.d. N(0,1) from the seed (arXiv 2406.03482). Shared by qjl and
 * turboquant_prod (which applies it to the rotated residual). */
typedef struct kvqi_qjl {
    uint32_t m, d;
    float *S; /* m x d row-major */
} kvqi_qjl;

kvq_status kvqi_qjl_init(kvqi_qjl *j, uint32_t m, uint32_t d, uint64_t seed);
void kvqi_qjl_free(kvqi_qjl *j);
/* bits <- sign(S x): each row's dot in the canonical order, so the same on every ISA. */
void kvqi_qjl_signs(const struct kvq_quantizer *q, const kvqi_qjl *j, const float *x, uint8_t *bits);
/* z <- S x (query side; any summation order). */
void kvqi_qjl_project(const struct kvq_quantizer *q, const kvqi_qjl *j, const float *x, float *z);
/* <z, s> for s = +-1 from bits, given zsum = sum z. */
static inline float kvqi_qjl_signed_dot(const struct kvq_quantizer *q, const float *z, float zsum,
                                        const uint8_t *bits, uint32_t m);
/* out += scale * S^T s */
void kvqi_qjl_reconstruct(const kvqi_qjl *j, const uint8_t *bits, float scale, float *out);

static inline float kvqi_qjl_signed_dot(const struct kvq_quantizer *q, const float *z, float zsum,
                                        const uint8_t *bits, uint32_t m) {
    return 2.0f * q->k->masked_sum(z, bits, m) - zsum;
}

/* sqrt(pi/2): E|<s, x>| = sqrt(2/pi) ||x|| for s ~ N(0, I). */
#define KVQI_SQRT_HALF_PI 1.2533141373155003f

#endif /* KVQ_QUANT_H */
