/* kmeans.c - k-means (Lloyd's algorithm) with k-means++ seeding (Arthur & Vassilvitskii,
 * SODA 2007). Deterministic for a seed: the only randomness is kvqi_rng, distances are
 * summed in a fixed order, ties go to the lowest index, and an empty cluster is re-seeded
 * with the point farthest from its centroid (lowest index on ties). */
#include <string.h>

#include "core/core.h"

/* results must not depend on the compiler fusing a*b+c into one rounding (clang does by
 * default, GCC does outside ISO C mode, e.g. with -std=gnu11 -march=native) */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

static float dist2(const float *a, const float *b, uint32_t d) {
    float s = 0.0f;
    for (uint32_t i = 0; i < d; i++) {
        const float t = a[i] - b[i];
        s += t * t;
    }
    return s;
}

#if !defined(__GNUC__)
/* nearest centroid (lowest index on ties) and its squared distance */
static uint32_t nearest(const float *x, const float *c, uint32_t k, uint32_t d, float *best_out) {
    uint32_t best = 0;
    float bd = dist2(x, c, d);
    for (uint32_t j = 1; j < k; j++) {
        const float dj = dist2(x, c + (size_t)j * d, d);
        if (dj < bd) {
            bd = dj;
            best = j;
        }
    }
    *best_out = bd;
    return best;
}
#endif

/* The assignment step, 8 centroids at a time: centroids transposed into blocks
 * ct[block][dim][8], each lane summing (x_j - c_j)^2 over j in the same order as dist2,
 * so the distances (and the labels) are bit-identical to the plain loop. */
#define KVQI_KM_LANES 8
#if defined(__GNUC__)
typedef float kvqi_v8sf __attribute__((vector_size(32)));
#endif

static void transpose_centroids(const float *c, uint32_t k, uint32_t d, float *ct) {
    const uint32_t blocks = (k + KVQI_KM_LANES - 1) / KVQI_KM_LANES;
    for (uint32_t b = 0; b < blocks; b++)
        for (uint32_t j = 0; j < d; j++)
            for (uint32_t l = 0; l < KVQI_KM_LANES; l++) {
                const uint32_t ci = b * KVQI_KM_LANES + l;
                ct[((size_t)b * d + j) * KVQI_KM_LANES + l] = ci < k ? c[(size_t)ci * d + j] : 0.0f;
            }
}

static void assign_all(const float *x, size_t n, uint32_t d, const float *c, const float *ct,
                       uint32_t k, uint32_t *lab, float *pd) {
#if defined(__GNUC__)
    const uint32_t blocks = (k + KVQI_KM_LANES - 1) / KVQI_KM_LANES;
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        uint32_t best = 0;
        float bd = 0.0f;
        for (uint32_t b = 0; b < blocks; b++) {
            kvqi_v8sf acc = {0};
            const float *cb = ct + (size_t)b * d * KVQI_KM_LANES;
            for (uint32_t j = 0; j < d; j++) {
                kvqi_v8sf cv;
                memcpy(&cv, cb + (size_t)j * KVQI_KM_LANES, sizeof cv);
                const kvqi_v8sf diff = xi[j] - cv;
                acc = acc + diff * diff;
            }
            float lanes[KVQI_KM_LANES];
            memcpy(lanes, &acc, sizeof lanes);
            for (uint32_t l = 0; l < KVQI_KM_LANES && b * KVQI_KM_LANES + l < k; l++)
                if ((b == 0 && l == 0) || lanes[l] < bd) {
                    bd = lanes[l];
                    best = b * KVQI_KM_LANES + l;
                }
        }
        lab[i] = best;
        pd[i] = bd;
    }
    KVQI_UNUSED(c);
#else
    KVQI_UNUSED(ct);
    for (size_t i = 0; i < n; i++) lab[i] = nearest(x + i * d, c, k, d, &pd[i]);
#endif
}

kvq_status kvqi_kmeans(const float *x, size_t n, uint32_t d, uint32_t k, uint32_t iters,
                       uint64_t seed, float *centroids, uint32_t *assign) {
    if (!x || !centroids || d == 0 || k == 0 || n == 0) return KVQ_ERR_INVALID_ARG;
    if ((size_t)k > n || n > UINT32_MAX) return KVQ_ERR_INVALID_ARG;
    size_t kd, nd;
    if (kvqi_mul_size(k, d, &kd) != KVQ_OK || kvqi_mul_size(n, d, &nd) != KVQ_OK)
        return KVQ_ERR_OVERFLOW;
    double *d2 = kvqi_alloc_array(n, sizeof(double));
    uint32_t *lab = kvqi_alloc_array(n, sizeof(uint32_t));
    double *sum = kvqi_alloc_array(kd, sizeof(double));
    size_t *count = kvqi_alloc_array(k, sizeof(size_t));
    float *pd = kvqi_alloc_array(n, sizeof(float));
    const size_t padded_k = ((size_t)k + KVQI_KM_LANES - 1) / KVQI_KM_LANES * KVQI_KM_LANES;
    float *ct = kvqi_alloc_array(padded_k, (size_t)d * sizeof(float));
    if (!d2 || !lab || !sum || !count || !pd || !ct) {
        kvqi_free(ct);
        kvqi_free(d2);
        kvqi_free(lab);
        kvqi_free(sum);
        kvqi_free(count);
        kvqi_free(pd);
        return KVQ_ERR_NOMEM;
    }
    kvqi_rng rng;
    kvqi_rng_seed(&rng, seed);

    /* k-means++: first centre uniform, then each with probability proportional to D^2 */
    const size_t first = kvqi_rng_below(&rng, (uint32_t)n); /* n <= UINT32_MAX, checked */
    memcpy(centroids, x + first * d, d * sizeof(float));
    for (size_t i = 0; i < n; i++) d2[i] = dist2(x + i * d, centroids, d);
    for (uint32_t c = 1; c < k; c++) {
        double total = 0.0;
        for (size_t i = 0; i < n; i++) total += d2[i];
        size_t pick = 0;
        if (total > 0.0) {
            const double target = kvqi_rng_uniform(&rng) * total;
            double acc = 0.0;
            pick = n; /* set below; guards rounding at the very end */
            for (size_t i = 0; i < n; i++) {
                acc += d2[i];
                if (acc > target && d2[i] > 0.0) {
                    pick = i;
                    break;
                }
            }
            if (pick == n) /* rounding: take the last point with mass */
                for (size_t i = n; i-- > 0;)
                    if (d2[i] > 0.0) {
                        pick = i;
                        break;
                    }
        } else {
            /* every point already coincides with a centre: duplicates are unavoidable */
            pick = kvqi_rng_below(&rng, (uint32_t)n);
        }
        float *cc = centroids + (size_t)c * d;
        memcpy(cc, x + pick * d, d * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            const double t = dist2(x + i * d, cc, d);
            if (t < d2[i]) d2[i] = t;
        }
    }

    for (uint32_t it = 0; it < iters; it++) {
        transpose_centroids(centroids, k, d, ct);
        assign_all(x, n, d, centroids, ct, k, lab, pd);
        memset(sum, 0, kd * sizeof(double));
        memset(count, 0, k * sizeof(size_t));
        for (size_t i = 0; i < n; i++) {
            double *s = sum + (size_t)lab[i] * d;
            const float *xi = x + i * d;
            for (uint32_t j = 0; j < d; j++) s[j] += xi[j];
            count[lab[i]]++;
        }
        for (uint32_t c = 0; c < k; c++) {
            float *cc = centroids + (size_t)c * d;
            if (count[c]) {
                for (uint32_t j = 0; j < d; j++) cc[j] = (float)(sum[(size_t)c * d + j] / (double)count[c]);
                continue;
            }
            /* empty: move it to the worst-served point, which then counts as served */
            size_t far = 0;
            for (size_t i = 1; i < n; i++)
                if (pd[i] > pd[far]) far = i;
            memcpy(cc, x + far * d, d * sizeof(float));
            pd[far] = 0.0f;
        }
    }
    if (assign) {
        transpose_centroids(centroids, k, d, ct);
        assign_all(x, n, d, centroids, ct, k, assign, pd);
    }
    kvqi_free(d2);
    kvqi_free(lab);
    kvqi_free(sum);
    kvqi_free(count);
    kvqi_free(pd);
    kvqi_free(ct);
    return KVQ_OK;
}
