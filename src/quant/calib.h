/*
 * calib.h - internal pieces of the calibrated methods that tests reach directly:
 * SpectralQuant's integer water-filling of bits over eigenvalues, and the RoPE rotation
 * comm_vq decodes with (arXiv 2506.18879).
 */
#ifndef KVQ_CALIB_H
#define KVQ_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "kvq.h"

#define KVQI_SPECTRAL_MAX_BITS 8u

/* Integer reverse water-filling: bits[i] in 0..8 for variances evals[d] (any order),
 * sum bits = budget exactly (budget <= 8 d). Greedy: each bit goes to the coordinate whose
 * expected squared error drops most, evals[i] * (M(b) - M(b+1)) with M the Gaussian
 * Lloyd-Max error per unit variance (M(0) = 1); ties to the lower index. M is convex in
 * b, so this is the integer optimum, and it tracks b_i = max(0, 1/2 log2(evals[i]/theta)).
 * theta (may be NULL): the water level of that continuous solution, by bisection. */
kvq_status kvqi_spectral_allocate(const double *evals, uint32_t d, uint32_t budget,
                                  uint8_t *bits, double *theta);

/* RoPE at position pos on one head vector, in place: pair i (per the pairing) turns by
 * pos * base^(-2i/dim). pos may be negative (the inverse rotation). */
void kvqi_rope_apply(float *x, uint32_t dim, uint32_t pairing, float base, int64_t pos);

#endif
