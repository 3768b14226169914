/* hadamard.c - randomized Hadamard rotation for any dimension (the "random sign flips +
 * fast Walsh-Hadamard transform" of QuIP#/QuaRot/TurboQuant, arXiv 2504.19874).
 * dim is split into its binary digits, largest block first (96 = 64 + 32). A block of size
 * B gets the normalized transform H_B / sqrt(B), which is symmetric and its own inverse.
 * When dim is not a power of two a single pass would never mix coordinates of different
 * blocks, so a second pass uses fresh signs and the blocks in the reverse order
 * (96: [0,32) [32,96)): every block of pass 2 straddles blocks of pass 1.
 * The exact order of operations (the contract a GPU port must follow for equal bits):
 *   pass 1: x_i *= sign1_i; for each block (offset o, size B) in order, largest first:
 *           fwht(x + o, B) with kvqi_fwht_scalar's butterfly order, then x *= (float)(1/sqrt(B))
 *   pass 2: x_i *= sign2_i; the same with the block order reversed (smallest first).
 * Signs: sign1 then sign2 from kvqi_rng seeded with `seed`, one bit per coordinate taken
 * LSB-first from successive 64-bit outputs (bit 1 -> -1). */
#include <math.h>

#include "core/core.h"
#include "cpu/cpu.h"

static void fill_signs(kvqi_rng *rng, float *sign, uint32_t dim) {
    uint64_t word = 0;
    for (uint32_t i = 0; i < dim; i++) {
        if ((i & 63) == 0) word = kvqi_rng_next(rng);
        sign[i] = (word >> (i & 63)) & 1 ? -1.0f : 1.0f;
    }
}

kvq_status kvqi_hadamard_init(kvqi_hadamard *h, uint32_t dim, uint64_t seed) {
    if (!h) return KVQ_ERR_INVALID_ARG;
    h->dim = 0;
    h->n_blocks = 0;
    h->two_pass = 0;
    h->sign1 = h->sign2 = NULL;
    if (dim == 0) return KVQ_ERR_INVALID_ARG;
    for (int bit = 31; bit >= 0; bit--)
        if (dim & (1u << bit)) h->block[h->n_blocks++] = 1u << bit;
    h->two_pass = h->n_blocks > 1;
    h->sign1 = kvqi_alloc_array(dim, sizeof(float));
    if (h->two_pass) h->sign2 = kvqi_alloc_array(dim, sizeof(float));
    if (!h->sign1 || (h->two_pass && !h->sign2)) {
        kvqi_free(h->sign1);
        kvqi_free(h->sign2);
        h->sign1 = h->sign2 = NULL;
        return KVQ_ERR_NOMEM;
    }
    h->dim = dim;
    kvqi_rng rng;
    kvqi_rng_seed(&rng, seed);
    fill_signs(&rng, h->sign1, dim);
    if (h->two_pass) fill_signs(&rng, h->sign2, dim);
    return KVQ_OK;
}

void kvqi_hadamard_free(kvqi_hadamard *h) {
    if (!h) return;
    kvqi_free(h->sign1);
    kvqi_free(h->sign2);
    h->sign1 = h->sign2 = NULL;
    h->dim = 0;
    h->n_blocks = 0;
}

static void block_transform(float *x, uint32_t size, void (*fwht)(float *, uint32_t)) {
    fwht(x, size);
    const float scale = (float)(1.0 / sqrt((double)size));
    for (uint32_t i = 0; i < size; i++) x[i] *= scale;
}

static void apply_signs(float *x, const float *sign, uint32_t dim) {
    for (uint32_t i = 0; i < dim; i++) x[i] *= sign[i];
}

static void blocks_forward(const kvqi_hadamard *h, float *x, void (*fwht)(float *, uint32_t)) {
    uint32_t off = 0;
    for (uint32_t b = 0; b < h->n_blocks; b++) {
        block_transform(x + off, h->block[b], fwht);
        off += h->block[b];
    }
}

static void blocks_reversed(const kvqi_hadamard *h, float *x, void (*fwht)(float *, uint32_t)) {
    uint32_t off = 0;
    for (uint32_t b = h->n_blocks; b-- > 0;) {
        block_transform(x + off, h->block[b], fwht);
        off += h->block[b];
    }
}

static void (*fwht_for(kvq_isa isa))(float *, uint32_t) {
    kvq_isa resolved;
    /* an ISA this machine lacks falls back to scalar: all kernels give the same bits */
    if (kvqi_isa_resolve(isa, &resolved) != KVQ_OK) resolved = KVQ_ISA_SCALAR;
    return kvqi_base_kernels_for(resolved)->fwht;
}

void kvqi_hadamard_apply(const kvqi_hadamard *h, float *x, kvq_isa isa) {
    void (*fwht)(float *, uint32_t) = fwht_for(isa);
    apply_signs(x, h->sign1, h->dim);
    blocks_forward(h, x, fwht);
    if (h->two_pass) {
        apply_signs(x, h->sign2, h->dim);
        blocks_reversed(h, x, fwht);
    }
}

void kvqi_hadamard_inverse(const kvqi_hadamard *h, float *x, kvq_isa isa) {
    void (*fwht)(float *, uint32_t) = fwht_for(isa);
    if (h->two_pass) {
        blocks_reversed(h, x, fwht);
        apply_signs(x, h->sign2, h->dim);
    }
    blocks_forward(h, x, fwht);
    apply_signs(x, h->sign1, h->dim);
}
