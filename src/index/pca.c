/* pca.c - principal axes of the training sample for the index's optional PCA step
 * (VSAG's pca_dim): mean, covariance, symmetric eigen-decomposition, top axes. */
#include <stdlib.h>
#include <string.h>

#include "index/index_internal.h"

kvq_status kvqi_pca_fit(const float *x, size_t n, uint32_t dim, uint32_t d, float *mean,
                        float *proj) {
    if (!x || !n || !dim || !d || d > dim) return KVQ_ERR_INVALID_ARG;
    size_t dd;
    if (kvqi_mul_size(dim, dim, &dd) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    double *mu = calloc(dim, sizeof(double));
    double *cov = kvqi_calloc_array(dd, sizeof(double));
    double *evecs = kvqi_alloc_array(dd, sizeof(double));
    double *evals = kvqi_alloc_array(dim, sizeof(double));
    double *row = kvqi_alloc_array(dim, sizeof(double));
    kvq_status st = KVQ_OK;
    if (!mu || !cov || !evecs || !evals || !row) {
        st = KVQ_ERR_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < dim; j++) mu[j] += x[i * dim + j];
    for (uint32_t j = 0; j < dim; j++) mu[j] /= (double)n;
    for (size_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < dim; j++) row[j] = x[i * dim + j] - mu[j];
        for (uint32_t a = 0; a < dim; a++) {
            double ra = row[a];
            double *c = cov + (size_t)a * dim;
            for (uint32_t b = a; b < dim; b++) c[b] += ra * row[b];
        }
    }
    for (uint32_t a = 0; a < dim; a++)
        for (uint32_t b = a; b < dim; b++) {
            double v = cov[(size_t)a * dim + b] / (double)n;
            cov[(size_t)a * dim + b] = v;
            cov[(size_t)b * dim + a] = v;
        }
    if ((st = kvqi_eigh(cov, dim, evals, evecs)) != KVQ_OK) goto done;
    for (uint32_t j = 0; j < dim; j++) mean[j] = (float)mu[j];
    for (uint32_t k = 0; k < d; k++)
        for (uint32_t j = 0; j < dim; j++) proj[(size_t)k * dim + j] = (float)evecs[(size_t)k * dim + j];
done:
    free(mu);
    kvqi_free(cov);
    kvqi_free(evecs);
    kvqi_free(evals);
    kvqi_free(row);
    return st;
}
