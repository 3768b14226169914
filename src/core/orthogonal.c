/* orthogonal.c - dense Haar-random orthogonal matrices (Mezzadri, "How to generate
 * random matrices from the classical compact groups", 2007): Householder QR of a seeded
 * Gaussian matrix in double, each column of Q multiplied by the sign of R's diagonal so
 * the distribution is uniform. Plus the two matrix-vector products the rotations use. */
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"

/* results must not depend on the compiler fusing a*b+c into one rounding (clang does by
 * default, GCC does outside ISO C mode, e.g. with -std=gnu11 -march=native) */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

kvq_status kvqi_random_orthogonal(uint32_t d, uint64_t seed, float *q_out) {
    if (d == 0 || !q_out) return KVQ_ERR_INVALID_ARG;
    const size_t n = d;
    size_t nn;
    if (kvqi_mul_size(n, n, &nn) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    double *a = kvqi_alloc_array(nn, sizeof(double));  /* becomes R above, v below */
    double *q = kvqi_alloc_array(nn, sizeof(double));
    double *vbuf = kvqi_alloc_array(n, sizeof(double));
    double *rdiag = kvqi_alloc_array(n, sizeof(double));
    if (!a || !q || !vbuf || !rdiag) {
        kvqi_free(a);
        kvqi_free(q);
        kvqi_free(vbuf);
        kvqi_free(rdiag);
        return KVQ_ERR_NOMEM;
    }
    kvqi_rng rng;
    kvqi_rng_seed(&rng, seed);
    for (size_t i = 0; i < nn; i++) a[i] = kvqi_rng_normal(&rng);

    /* Householder: column k, rows k..n-1, reflected onto alpha e_k. The unit vector v_k is
     * kept in a's column k below (and on) the diagonal; R's diagonal goes to rdiag. */
    for (size_t k = 0; k < n; k++) {
        double norm2 = 0.0;
        for (size_t i = k; i < n; i++) norm2 += a[i * n + k] * a[i * n + k];
        const double norm = sqrt(norm2), x0 = a[k * n + k];
        const double alpha = x0 >= 0.0 ? -norm : norm;
        rdiag[k] = alpha;
        /* v = x - alpha e_k, normalised; a zero column (probability 0) gives no reflection */
        double vnorm2 = norm2 - x0 * x0 + (x0 - alpha) * (x0 - alpha);
        if (k + 1 == n || !(vnorm2 > 0.0)) {
            rdiag[k] = x0;
            for (size_t i = k; i < n; i++) a[i * n + k] = 0.0;
            continue;
        }
        const double inv = 1.0 / sqrt(vnorm2);
        a[k * n + k] = (x0 - alpha) * inv;
        for (size_t i = k + 1; i < n; i++) a[i * n + k] *= inv;
        /* apply H = I - 2 v v^T to the remaining columns */
        for (size_t j = k + 1; j < n; j++) {
            double dot = 0.0;
            for (size_t i = k; i < n; i++) dot += a[i * n + k] * a[i * n + j];
            dot *= 2.0;
            for (size_t i = k; i < n; i++) a[i * n + j] -= dot * a[i * n + k];
        }
    }
    /* Q = H_0 H_1 ... H_{n-1}: start from I and apply the reflections from the last */
    memset(q, 0, nn * sizeof(double));
    for (size_t i = 0; i < n; i++) q[i * n + i] = 1.0;
    for (size_t k = n; k-- > 0;) {
        int any = 0;
        for (size_t i = k; i < n; i++) {
            vbuf[i] = a[i * n + k];
            any |= vbuf[i] != 0.0;
        }
        if (!any) continue;
        for (size_t j = k; j < n; j++) {
            double dot = 0.0;
            for (size_t i = k; i < n; i++) dot += vbuf[i] * q[i * n + j];
            dot *= 2.0;
            for (size_t i = k; i < n; i++) q[i * n + j] -= dot * vbuf[i];
        }
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            q_out[i * n + j] = (float)(rdiag[j] < 0.0 ? -q[i * n + j] : q[i * n + j]);
    kvqi_free(a);
    kvqi_free(q);
    kvqi_free(vbuf);
    kvqi_free(rdiag);
    return KVQ_OK;
}

/* y = Q x: one canonical-order dot per row, bit-identical on every ISA */
void kvqi_matvec(const float *q, uint32_t d, const float *x, float *y) {
    kvq_isa isa;
    if (kvqi_isa_resolve(KVQ_ISA_AUTO, &isa) != KVQ_OK) isa = KVQ_ISA_SCALAR;
    float (*dot)(const float *, const float *, size_t) = kvqi_base_kernels_for(isa)->dot;
    for (uint32_t i = 0; i < d; i++) y[i] = dot(q + (size_t)i * d, x, d);
}

/* y = Q^T x: rows accumulated in order, so each y[j] sees the same sum on every build */
void kvqi_matvec_t(const float *q, uint32_t d, const float *x, float *y) {
    for (uint32_t j = 0; j < d; j++) y[j] = 0.0f;
    for (uint32_t i = 0; i < d; i++) {
        const float xi = x[i];
        const float *row = q + (size_t)i * d;
        for (uint32_t j = 0; j < d; j++) y[j] += xi * row[j];
    }
}
