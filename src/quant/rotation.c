/*
 * rotation.c - the random rotation Pi applied before scalar quantization (TurboQuant
 * arXiv 2504.19874, RaBitQ arXiv 2405.12497): randomized Hadamard from core for any dim
 * (power-of-two blocks, two passes when dim is not a power of two), or a dense
 * Haar-random orthogonal matrix. Both are re-derived from the seed; the saved copy lets
 * foreign readers decode and lets load check the seed still gives the same rotation.
 */
#include "quant/quant.h"

kvq_status kvqi_rotation_init(kvqi_rotation *r, int kind, uint32_t dim, uint64_t seed) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->dim = dim;
    uint64_t rot_seed = kvqi_seed_mix(seed, 0x524f54u); /* "ROT" */
    if (kind == KVQI_ROT_HADAMARD) return kvqi_hadamard_init(&r->had, dim, rot_seed);
    if (kind == KVQI_ROT_DENSE) {
        r->dense = kvqi_alloc_array((size_t)dim * dim, sizeof(float));
        if (!r->dense) return KVQ_ERR_NOMEM;
        kvq_status st = kvqi_random_orthogonal(dim, rot_seed, r->dense);
        if (st != KVQ_OK) {
            kvqi_free(r->dense);
            r->dense = NULL;
        }
        return st;
    }
    return kind == KVQI_ROT_NONE ? KVQ_OK : KVQ_ERR_INVALID_ARG;
}

void kvqi_rotation_free(kvqi_rotation *r) {
    if (!r) return;
    if (r->kind == KVQI_ROT_HADAMARD) kvqi_hadamard_free(&r->had);
    kvqi_free(r->dense);
    memset(r, 0, sizeof *r);
}

void kvqi_rotation_apply(const kvqi_rotation *r, const float *in, float *out, kvq_isa isa) {
    if (r->kind == KVQI_ROT_DENSE) {
        float tmp[KVQI_QUANT_MAX_DIM];
        memcpy(tmp, in, r->dim * sizeof(float));
        kvqi_matvec(r->dense, r->dim, tmp, out);
        return;
    }
    if (r->kind == KVQI_ROT_HADAMARD && !r->had.two_pass) {
        kvqi_quant_kernels_for(isa)->hadamard_pow2(&r->had, in, out, 0);
        return;
    }
    if (out != in) memcpy(out, in, r->dim * sizeof(float));
    if (r->kind == KVQI_ROT_HADAMARD) kvqi_hadamard_apply(&r->had, out, isa);
}

void kvqi_rotation_inverse(const kvqi_rotation *r, const float *in, float *out, kvq_isa isa) {
    if (r->kind == KVQI_ROT_DENSE) {
        float tmp[KVQI_QUANT_MAX_DIM];
        memcpy(tmp, in, r->dim * sizeof(float));
        kvqi_matvec_t(r->dense, r->dim, tmp, out);
        return;
    }
    if (r->kind == KVQI_ROT_HADAMARD && !r->had.two_pass) {
        kvqi_quant_kernels_for(isa)->hadamard_pow2(&r->had, in, out, 1);
        return;
    }
    if (out != in) memcpy(out, in, r->dim * sizeof(float));
    if (r->kind == KVQI_ROT_HADAMARD) kvqi_hadamard_inverse(&r->had, out, isa);
}

size_t kvqi_rotation_shared_size(const kvqi_rotation *r) {
    if (r->kind == KVQI_ROT_DENSE) return (size_t)r->dim * r->dim * sizeof(float);
    if (r->kind == KVQI_ROT_HADAMARD)
        return (size_t)r->dim * sizeof(float) * (r->had.two_pass ? 2 : 1);
    return 0;
}

size_t kvqi_rotation_tensors(const kvqi_rotation *r, kvqi_st_tensor *t, size_t cap) {
    size_t n = 0;
    if (r->kind == KVQI_ROT_HADAMARD) {
        if (n < cap) t[n++] = kvqi_tensor_f32("rotation.sign1", r->had.sign1, r->dim, 0);
        if (r->had.two_pass && n < cap)
            t[n++] = kvqi_tensor_f32("rotation.sign2", r->had.sign2, r->dim, 0);
    } else if (r->kind == KVQI_ROT_DENSE) {
        if (n < cap) t[n++] = kvqi_tensor_f32("rotation.matrix", r->dense, r->dim, r->dim);
    }
    return n;
}

kvq_status kvqi_rotation_check(const kvqi_rotation *r, const kvqi_st_file *f) {
    if (r->kind == KVQI_ROT_HADAMARD) {
        if (!kvqi_tensor_equals_f32(f, "rotation.sign1", r->had.sign1, r->dim, 0))
            return KVQ_ERR_FORMAT;
        if (r->had.two_pass && !kvqi_tensor_equals_f32(f, "rotation.sign2", r->had.sign2, r->dim, 0))
            return KVQ_ERR_FORMAT;
    } else if (r->kind == KVQI_ROT_DENSE) {
        if (!kvqi_tensor_equals_f32(f, "rotation.matrix", r->dense, r->dim, r->dim))
            return KVQ_ERR_FORMAT;
    }
    return KVQ_OK;
}
