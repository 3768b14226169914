/* hadamard.c - randomized Hadamard rotation for any dimension (the "random sign flips +
 * fast Walsh-Hadamard transform" of QuIP#/QuaRot/TurboQuant, arXiv 2504.19874).
 * dim is split into its binary digits, largest block first (96 = 64 + 32). A block of size
 * B gets the normalized transform H_B / sqrt(B), which is symmetric and its own inverse.
 * When dim is not a power of two a single pass would never mix coordinates of different
 * blocks, so a second pass uses fresh signs and the blocks in the reverse order
 * (96: [0,32) [32,96)): every block of pass 2 straddles blocks of pass 1.
 * The exact order of operations (the contract a GPU port must follow for equal bits),
 * with s_B = (float)(1/sqrt(B)) and sign_i * s_B exact:
 *   pass 1: for each block (offset o, size B), largest first:
 *           x_i = x_i * (sign1_i * s_B) for i in the block, then fwht(x + o, B) in
 *           kvqi_fwht_scalar's butterfly order;
 *   pass 2: the same with sign2 and the block order reversed (smallest first).
 *   inverse: pass 2's blocks: fwht, then x_i = x_i * (sign2_i * s_B); then pass 1's.
 * Scaling before the transform keeps each pass to one sweep over x besides the FWHT.
 * Signs: sign1 then sign2 from kvqi_rng seeded with `seed`, one bit per coordinate taken
 * LSB-first from successive 64-bit outputs (bit 1 -> -1). */
#include <math.h>
#include <string.h>

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

/* x_i *= sign_i * scale. GCC's -O2 cost model leaves the plain loop scalar, so the bulk
 * goes through 4-wide vector extensions (same IEEE multiplies, same bits). */
#if defined(__GNUC__)
typedef float kvqi_v4sf __attribute__((vector_size(16)));
#endif
static void scale_signed(float *restrict x, const float *restrict sign, uint32_t n, float scale) {
    uint32_t i = 0;
#if defined(__GNUC__)
    const kvqi_v4sf s4 = {scale, scale, scale, scale};
    for (; i + 4 <= n; i += 4) {
        kvqi_v4sf xv, sv;
        memcpy(&xv, x + i, sizeof xv);
        memcpy(&sv, sign + i, sizeof sv);
        xv = xv * (sv * s4);
        memcpy(x + i, &xv, sizeof xv);
    }
#endif
    for (; i < n; i++) x[i] = x[i] * (sign[i] * scale);
}

static float block_scale(uint32_t size) { return (float)(1.0 / sqrt((double)size)); }

typedef void (*fwht_fn)(float *, uint32_t);

/* one pass: blocks in the given order, forward (scale then transform) or inverse */
static void run_pass(const kvqi_hadamard *h, float *x, const float *sign, int reversed,
                     int inverse, fwht_fn fwht) {
    uint32_t off = 0;
    for (uint32_t k = 0; k < h->n_blocks; k++) {
        const uint32_t size = h->block[reversed ? h->n_blocks - 1 - k : k];
        if (inverse) {
            fwht(x + off, size);
            scale_signed(x + off, sign + off, size, block_scale(size));
        } else {
            scale_signed(x + off, sign + off, size, block_scale(size));
            fwht(x + off, size);
        }
        off += size;
    }
}

static fwht_fn fwht_for(kvq_isa isa) {
    kvq_isa resolved;
    /* an ISA this machine lacks falls back to scalar: all kernels give the same bits */
    if (kvqi_isa_resolve(isa, &resolved) != KVQ_OK) resolved = KVQ_ISA_SCALAR;
    return kvqi_base_kernels_for(resolved)->fwht;
}

void kvqi_hadamard_apply(const kvqi_hadamard *h, float *x, kvq_isa isa) {
    const fwht_fn fwht = fwht_for(isa);
    run_pass(h, x, h->sign1, 0, 0, fwht);
    if (h->two_pass) run_pass(h, x, h->sign2, 1, 0, fwht);
}

void kvqi_hadamard_inverse(const kvqi_hadamard *h, float *x, kvq_isa isa) {
    const fwht_fn fwht = fwht_for(isa);
    if (h->two_pass) run_pass(h, x, h->sign2, 1, 1, fwht);
    run_pass(h, x, h->sign1, 0, 1, fwht);
}
