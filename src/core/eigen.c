/* eigen.c - symmetric eigen-decomposition by the cyclic Jacobi method (Golub & Van Loan,
 * Matrix Computations, 4th ed., 8.5), in double: slow (O(n^3) per sweep) but simple,
 * accurate to working precision even for tiny eigenvalues, and deterministic. */
#include <math.h>
#include <string.h>

#include "core/core.h"

#define KVQI_JACOBI_MAX_SWEEPS 100

kvq_status kvqi_eigh(double *a, uint32_t n, double *evals, double *evecs) {
    if (!a || !evals || !evecs || n == 0) return KVQ_ERR_INVALID_ARG;
    const size_t N = n;
    size_t nn;
    if (kvqi_mul_size(N, N, &nn) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    double *v = kvqi_alloc_array(nn, sizeof(double)); /* columns are eigenvectors */
    uint32_t *order = kvqi_alloc_array(N, sizeof(uint32_t));
    if (!v || !order) {
        kvqi_free(v);
        kvqi_free(order);
        return KVQ_ERR_NOMEM;
    }
    for (size_t i = 0; i < N; i++) {
        if (!isfinite(a[i * N + i])) goto bad;
        for (size_t j = i + 1; j < N; j++) {
            if (!isfinite(a[i * N + j])) goto bad;
            /* use the upper triangle's symmetric part */
            const double s = 0.5 * (a[i * N + j] + a[j * N + i]);
            a[i * N + j] = a[j * N + i] = s;
        }
    }
    memset(v, 0, nn * sizeof(double));
    for (size_t i = 0; i < N; i++) v[i * N + i] = 1.0;

    double total = 0.0;
    for (size_t i = 0; i < nn; i++) total += a[i] * a[i];
    for (int sweep = 0; sweep < KVQI_JACOBI_MAX_SWEEPS; sweep++) {
        double off = 0.0;
        for (size_t p = 0; p < N; p++)
            for (size_t q = p + 1; q < N; q++) off += a[p * N + q] * a[p * N + q];
        if (off <= 1e-30 * total || off == 0.0) break;
        for (size_t p = 0; p < N; p++)
            for (size_t q = p + 1; q < N; q++) {
                const double apq = a[p * N + q];
                if (apq == 0.0) continue;
                const double app = a[p * N + p], aqq = a[q * N + q];
                /* rotation angle: t = tan(theta) solving t^2 + 2 tau t - 1 = 0, smaller root */
                const double tau = (aqq - app) / (2.0 * apq);
                const double t = (tau >= 0.0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
                const double c = 1.0 / sqrt(1.0 + t * t), s = t * c;
                /* A <- J^T A J on rows/columns p and q */
                for (size_t k = 0; k < N; k++) {
                    const double akp = a[k * N + p], akq = a[k * N + q];
                    a[k * N + p] = c * akp - s * akq;
                    a[k * N + q] = s * akp + c * akq;
                }
                for (size_t k = 0; k < N; k++) {
                    const double apk = a[p * N + k], aqk = a[q * N + k];
                    a[p * N + k] = c * apk - s * aqk;
                    a[q * N + k] = s * apk + c * aqk;
                }
                a[p * N + q] = a[q * N + p] = 0.0;
                for (size_t k = 0; k < N; k++) {
                    const double vkp = v[k * N + p], vkq = v[k * N + q];
                    v[k * N + p] = c * vkp - s * vkq;
                    v[k * N + q] = s * vkp + c * vkq;
                }
            }
    }
    /* sort descending (insertion sort: stable, n is small) */
    for (uint32_t i = 0; i < n; i++) order[i] = i;
    for (uint32_t i = 1; i < n; i++) {
        const uint32_t cur = order[i];
        uint32_t j = i;
        while (j > 0 && a[(size_t)order[j - 1] * N + order[j - 1]] < a[(size_t)cur * N + cur]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = cur;
    }
    for (size_t i = 0; i < N; i++) {
        const size_t src = order[i];
        evals[i] = a[src * N + src];
        for (size_t k = 0; k < N; k++) evecs[i * N + k] = v[k * N + src];
    }
    kvqi_free(v);
    kvqi_free(order);
    return KVQ_OK;
bad:
    kvqi_free(v);
    kvqi_free(order);
    return KVQ_ERR_INVALID_ARG;
}
