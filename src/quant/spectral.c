/*
 * spectral.c - SpectralQuant ("3% Is All You Need", the seed's SpectralQuant): keys rotated
 * into the eigenbasis of their calibration covariance, y = V (x - mean), where a few
 * "signal" directions hold most of the variance. Bits per eigen-direction by reverse
 * water-filling (b_i = max(0, 1/2 log2(lambda_i / theta)), integer, summing exactly to
 * bits x dim); each direction is coded with the Gaussian Lloyd-Max codebook of its
 * bit-width scaled by sqrt(lambda_i), refined by Lloyd iterations on its calibration
 * coordinates. The signal directions (the first d_s = round of the
 * participation ratio (sum lambda)^2 / sum lambda^2) and the noise directions keep
 * separate codebook tables. Code: the variable-width indices, LSB-first, bits x dim bits
 * in all, no norm. Shared: mean, eigenvalues, basis (dim x dim), bits and codebooks.
 */
#include <math.h>
#include <stdlib.h>

#include "quant/calib.h"
#include "quant/quant.h"

#define SP_K 256u /* table width: 2^max bits */

typedef struct sp_state {
    uint32_t d_s;      /* signal directions */
    double pr, theta;  /* participation ratio, water level */
    float *mean;       /* d */
    float *evals;      /* d, descending */
    float *basis;      /* d x d, row i = eigenvector i */
    uint8_t *bits;     /* d */
    float *cb;         /* d x 256: direction i's centroids (first 2^bits[i]) */
    float *thr;        /* d x 256: midpoints between them (first 2^bits[i] - 1) */
    /* unit Gaussian Lloyd-Max for b = 1..8 */
    float unit_cb[KVQI_SPECTRAL_MAX_BITS + 1][SP_K];
    double unit_mse[KVQI_SPECTRAL_MAX_BITS + 1];
} sp_state;

static kvq_status sp_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits < 1 || c->bits > KVQI_SPECTRAL_MAX_BITS) {
        kvqi_set_msg(why, n, "bits %u outside 1..8 (average bits per coordinate)", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->dim < 2) {
        kvqi_set_msg(why, n, "dim %u: needs at least 2 coordinates", c->dim);
        return KVQ_ERR_UNSUPPORTED;
    }
    return kvqi_artifact_check(c, why, n);
}

static void sp_destroy(kvq_quantizer *q) {
    sp_state *s = q->state;
    if (!s) return;
    kvqi_free(s->mean);
    kvqi_free(s->evals);
    kvqi_free(s->basis);
    kvqi_free(s->bits);
    kvqi_free(s->cb);
    kvqi_free(s->thr);
    free(s);
    q->state = NULL;
}

static kvq_status sp_load(kvq_quantizer *q, const kvqi_st_file *f);

static kvq_status sp_init(kvq_quantizer *q) {
    kvqi_st_file *art = NULL;
    q->fitted = 0; /* learned state: kvq_quantizer_fit or an artifact sets it */
    if (q->cfg.artifact[0]) {
        kvq_status st = kvqi_artifact_open(&q->cfg, &art, &q->cfg.seed);
        if (st != KVQ_OK) return st;
    }
    const size_t d = q->cfg.dim;
    sp_state *s = calloc(1, sizeof *s);
    if (!s) {
        kvqi_st_free(art);
        return KVQ_ERR_NOMEM;
    }
    q->state = s;
    kvq_status st = KVQ_OK;
    s->mean = kvqi_alloc_array(d, sizeof(float));
    s->evals = kvqi_alloc_array(d, sizeof(float));
    s->basis = kvqi_alloc_array(d * d, sizeof(float));
    s->bits = kvqi_calloc_array(d, 1);
    s->cb = kvqi_calloc_array(d * SP_K, sizeof(float));
    s->thr = kvqi_calloc_array(d * SP_K, sizeof(float));
    if (!s->mean || !s->evals || !s->basis || !s->bits || !s->cb || !s->thr) st = KVQ_ERR_NOMEM;
    s->unit_mse[0] = 1.0;
    float thr[SP_K];
    for (unsigned b = 1; st == KVQ_OK && b <= KVQI_SPECTRAL_MAX_BITS; b++)
        st = kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0.0, b, s->unit_cb[b], thr, &s->unit_mse[b]);
    if (st == KVQ_OK && art) st = sp_load(q, art);
    kvqi_st_free(art);
    if (st != KVQ_OK) sp_destroy(q);
    return st;
}

static size_t sp_code_size(const kvq_quantizer *q) {
    return ((size_t)q->cfg.bits * q->cfg.dim + 7) / 8;
}

static size_t sp_shared_size(const kvq_quantizer *q) {
    size_t d = q->cfg.dim, table = 0;
    const sp_state *s = q->state;
    for (size_t i = 0; i < d; i++) table += s->bits[i] ? (size_t)1 << s->bits[i] : 0;
    return (d * d + 2 * d + table) * sizeof(float) + d;
}

/* ------------------------------------------------------------ water-filling */

static const double k_gauss_mse[KVQI_SPECTRAL_MAX_BITS + 1] = {
    /* Gaussian Lloyd-Max error per unit variance, b = 0..8 (Max 1960) */
    1.0, 0.3634, 0.1175, 0.03454, 0.009497, 0.002499, 0.0006419, 0.0001626, 0.0000409};

kvq_status kvqi_spectral_allocate(const double *evals, uint32_t d, uint32_t budget,
                                  uint8_t *bits, double *theta) {
    if (!evals || !bits || d == 0) return KVQ_ERR_INVALID_ARG;
    if ((uint64_t)budget > (uint64_t)KVQI_SPECTRAL_MAX_BITS * d) return KVQ_ERR_INVALID_ARG;
    for (uint32_t i = 0; i < d; i++) {
        if (!(evals[i] >= 0.0) || !isfinite(evals[i])) return KVQ_ERR_INVALID_ARG;
        bits[i] = 0;
    }
    for (uint32_t spent = 0; spent < budget; spent++) {
        uint32_t best = UINT32_MAX;
        double best_gain = -1.0;
        for (uint32_t i = 0; i < d; i++) {
            if (bits[i] >= KVQI_SPECTRAL_MAX_BITS) continue;
            double gain = evals[i] * (k_gauss_mse[bits[i]] - k_gauss_mse[bits[i] + 1]);
            if (gain > best_gain) {
                best_gain = gain;
                best = i;
            }
        }
        bits[best]++; /* budget <= 8 d: some direction always has room */
    }
    if (theta) {
        /* continuous reverse water-filling: sum max(0, 1/2 log2(l/theta)) = budget */
        double lo = 1e-300, hi = 0.0;
        for (uint32_t i = 0; i < d; i++) hi = KVQI_MAX(hi, evals[i]);
        if (hi <= 0.0 || budget == 0) {
            *theta = hi;
            return KVQ_OK;
        }
        for (int it = 0; it < 200; it++) {
            double mid = sqrt(lo * hi), total = 0.0;
            for (uint32_t i = 0; i < d; i++)
                if (evals[i] > mid) total += 0.5 * log2(evals[i] / mid);
            if (total > budget) lo = mid;
            else hi = mid;
        }
        *theta = sqrt(lo * hi);
    }
    return KVQ_OK;
}

/* Direction i's table: the unit codebook of its bits scaled by sqrt(lambda_i). */
static void sp_set_tables(sp_state *s, uint32_t d) {
    for (uint32_t i = 0; i < d; i++) {
        unsigned b = s->bits[i];
        float *cb = s->cb + (size_t)i * SP_K, *thr = s->thr + (size_t)i * SP_K;
        memset(cb, 0, SP_K * sizeof(float));
        memset(thr, 0, SP_K * sizeof(float));
        if (!b) continue;
        float scale = sqrtf(KVQI_MAX(s->evals[i], 0.0f));
        for (uint32_t c = 0; c < (1u << b); c++) cb[c] = s->unit_cb[b][c] * scale;
    }
}

static void sp_set_thresholds(sp_state *s, uint32_t d) {
    for (uint32_t i = 0; i < d; i++) {
        unsigned b = s->bits[i];
        const float *cb = s->cb + (size_t)i * SP_K;
        float *thr = s->thr + (size_t)i * SP_K;
        for (uint32_t c = 0; b && c + 1 < (1u << b); c++) thr[c] = 0.5f * (cb[c] + cb[c + 1]);
    }
}

/* Lloyd iterations on each direction's calibration coordinates, starting from its scaled
 * Gaussian codebook: never worse than it on the calibration data, and it follows the
 * coordinates where they are not Gaussian (skewed or heavy-tailed directions of keys). */
#define SP_LLOYD_ITERS 25
static kvq_status sp_refine(kvq_quantizer *q, const float *x, size_t n) {
    sp_state *s = q->state;
    const uint32_t d = q->cfg.dim;
    float *y = kvqi_alloc_array(n, sizeof(float)), c[KVQI_QUANT_MAX_DIM];
    double *sum = kvqi_alloc_array(SP_K, sizeof(double));
    size_t *cnt = kvqi_alloc_array(SP_K, sizeof(size_t));
    kvq_status st = y && sum && cnt ? KVQ_OK : KVQ_ERR_NOMEM;
    for (uint32_t r = 0; st == KVQ_OK && r < d; r++) {
        unsigned b = s->bits[r];
        if (!b) continue;
        const uint32_t K = 1u << b;
        for (size_t i = 0; i < n; i++) {
            for (uint32_t j = 0; j < d; j++) c[j] = x[i * d + j] - s->mean[j];
            y[i] = q->base->dot(s->basis + (size_t)r * d, c, d);
        }
        float *cb = s->cb + (size_t)r * SP_K, *thr = s->thr + (size_t)r * SP_K;
        for (int it = 0; it < SP_LLOYD_ITERS; it++) {
            memset(sum, 0, K * sizeof(double));
            memset(cnt, 0, K * sizeof(size_t));
            for (size_t i = 0; i < n; i++) {
                uint32_t lo = 0, hi = K - 1; /* the cell: first threshold >= y */
                while (lo < hi) {
                    uint32_t mid = (lo + hi) / 2;
                    if (y[i] > thr[mid]) lo = mid + 1;
                    else hi = mid;
                }
                sum[lo] += y[i];
                cnt[lo]++;
            }
            for (uint32_t k = 0; k < K; k++)
                if (cnt[k]) cb[k] = (float)(sum[k] / (double)cnt[k]);
            for (uint32_t k = 0; k + 1 < K; k++) /* an empty cell may leave the order broken */
                if (cb[k + 1] < cb[k]) cb[k + 1] = cb[k];
            for (uint32_t k = 0; k + 1 < K; k++) thr[k] = 0.5f * (cb[k] + cb[k + 1]);
        }
    }
    kvqi_free(y);
    kvqi_free(sum);
    kvqi_free(cnt);
    return st;
}

static kvq_status sp_fit(kvq_quantizer *q, const float *x, size_t n) {
    sp_state *s = q->state;
    const uint32_t d = q->cfg.dim;
    if (n < 2) return KVQ_ERR_INVALID_ARG;
    size_t dd = (size_t)d * d;
    double *mean = kvqi_calloc_array(d, sizeof(double)), *cov = kvqi_calloc_array(dd, sizeof(double));
    double *evals = kvqi_alloc_array(d, sizeof(double)), *evecs = kvqi_alloc_array(dd, sizeof(double));
    double *row = kvqi_alloc_array(d, sizeof(double));
    kvq_status st = (mean && cov && evals && evecs && row) ? KVQ_OK : KVQ_ERR_NOMEM;
    for (size_t i = 0; st == KVQ_OK && i < n; i++)
        for (uint32_t j = 0; j < d; j++) {
            if (!isfinite(x[i * d + j])) st = KVQ_ERR_INVALID_ARG;
            mean[j] += x[i * d + j];
        }
    if (st == KVQ_OK) {
        for (uint32_t j = 0; j < d; j++) mean[j] /= (double)n;
        for (size_t i = 0; i < n; i++) {
            for (uint32_t j = 0; j < d; j++) row[j] = (double)x[i * d + j] - mean[j];
            for (uint32_t a = 0; a < d; a++) {
                double ra = row[a];
                double *c = cov + (size_t)a * d;
                for (uint32_t b = a; b < d; b++) c[b] += ra * row[b];
            }
        }
        for (uint32_t a = 0; a < d; a++)
            for (uint32_t b = a; b < d; b++) {
                cov[(size_t)a * d + b] /= (double)(n - 1);
                cov[(size_t)b * d + a] = cov[(size_t)a * d + b];
            }
        st = kvqi_eigh(cov, d, evals, evecs);
    }
    if (st == KVQ_OK) {
        double sum = 0.0, sum2 = 0.0;
        for (uint32_t i = 0; i < d; i++) {
            if (evals[i] < 0.0) evals[i] = 0.0; /* rounding below zero */
            sum += evals[i];
            sum2 += evals[i] * evals[i];
        }
        s->pr = sum2 > 0.0 ? sum * sum / sum2 : (double)d;
        s->d_s = (uint32_t)KVQI_MIN((double)d, KVQI_MAX(1.0, floor(s->pr + 0.5)));
        st = kvqi_spectral_allocate(evals, d, q->cfg.bits * d, s->bits, &s->theta);
    }
    if (st == KVQ_OK) {
        for (uint32_t j = 0; j < d; j++) {
            s->mean[j] = (float)mean[j];
            s->evals[j] = (float)evals[j];
        }
        for (size_t i = 0; i < dd; i++) s->basis[i] = (float)evecs[i];
        sp_set_tables(s, d);
        sp_set_thresholds(s, d);
        st = sp_refine(q, x, n);
        if (st == KVQ_OK) q->fitted = 1;
    }
    kvqi_free(mean);
    kvqi_free(cov);
    kvqi_free(evals);
    kvqi_free(evecs);
    kvqi_free(row);
    return st;
}

/* ----------------------------------------------------------------- codes */

static void put_bits(uint8_t *out, size_t *pos, uint32_t v, unsigned b) {
    for (unsigned k = 0; k < b; k++, (*pos)++)
        if ((v >> k) & 1u) out[*pos >> 3] |= (uint8_t)(1u << (*pos & 7));
}

/* Reads from a copy of the code padded with 8 zero bytes, a little-endian word at a time. */
static uint32_t get_bits(const uint8_t *padded, size_t *pos, unsigned b) {
    const uint8_t *p = padded + (*pos >> 3);
    uint64_t w = (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
    uint32_t v = (uint32_t)(w >> (*pos & 7)) & ((1u << b) - 1u);
    *pos += b;
    return v;
}

#define SP_MAX_CODE (KVQI_SPECTRAL_MAX_BITS * KVQI_QUANT_MAX_DIM / 8)

static kvq_status sp_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const sp_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim;
    float c[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        uint8_t *out = codes + i * q->code_size;
        memset(out, 0, q->code_size);
        for (uint32_t j = 0; j < d; j++) c[j] = x[i * d + j] - s->mean[j];
        size_t pos = 0;
        for (uint32_t r = 0; r < d; r++) {
            unsigned b = s->bits[r];
            if (!b) continue;
            float y = q->base->dot(s->basis + (size_t)r * d, c, d);
            const float *thr = s->thr + (size_t)r * SP_K;
            uint32_t idx = 0;
            while (idx + 1 < (1u << b) && y > thr[idx]) idx++;
            put_bits(out, &pos, idx, b);
        }
    }
    return KVQ_OK;
}

/* y_hat: the coded coordinates in the eigenbasis */
static void sp_coords(const sp_state *s, uint32_t d, size_t code_size, const uint8_t *code, float *y) {
    uint8_t padded[SP_MAX_CODE + 8] = {0};
    memcpy(padded, code, code_size);
    code = padded;
    size_t pos = 0;
    for (uint32_t r = 0; r < d; r++) {
        unsigned b = s->bits[r];
        y[r] = b ? s->cb[(size_t)r * SP_K + get_bits(code, &pos, b)] : 0.0f;
    }
}

static kvq_status sp_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    const sp_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim;
    float y[KVQI_QUANT_MAX_DIM];
    for (size_t i = 0; i < n; i++) {
        float *xi = x + i * d;
        sp_coords(s, d, q->code_size, codes + i * q->code_size, y);
        memcpy(xi, s->mean, d * sizeof(float));
        for (uint32_t r = 0; r < d; r++) {
            if (y[r] == 0.0f) continue;
            const float *v = s->basis + (size_t)r * d;
            for (uint32_t j = 0; j < d; j++) xi[j] += y[r] * v[j];
        }
    }
    return KVQ_OK;
}

/* <q, mean + V^T y> = <q, mean> + <V q, y>: project the query once per call. */
static kvq_status sp_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                           size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    const sp_state *s = q->state;
    if (!q->fitted) return KVQ_ERR_STATE;
    const uint32_t d = q->cfg.dim;
    float qv[KVQI_QUANT_MAX_DIM];
    for (uint32_t r = 0; r < d; r++) qv[r] = q->base->dot(s->basis + (size_t)r * d, query, d);
    float qm = q->base->dot(query, s->mean, d);
    uint8_t code[SP_MAX_CODE + 8] = {0};
    for (size_t i = 0; i < n; i++) {
        memcpy(code, codes + i * q->code_size, q->code_size);
        size_t pos = 0;
        float acc = 0.0f;
        for (uint32_t r = 0; r < d; r++) {
            unsigned b = s->bits[r];
            if (b) acc += qv[r] * s->cb[(size_t)r * SP_K + get_bits(code, &pos, b)];
        }
        scores[i] = qm + acc;
    }
    return KVQ_OK;
}

/* ------------------------------------------------------------- artifacts */

static size_t sp_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    sp_state *s = q->state;
    const uint32_t d = q->cfg.dim;
    if (!q->fitted || cap < 7) return 0;
    static const char *const names[2] = {"spectral.signal_codebooks", "spectral.noise_codebooks"};
    size_t n = 0;
    t[n++] = kvqi_tensor_f32("spectral.mean", s->mean, d, 0);
    t[n++] = kvqi_tensor_f32("spectral.eigenvalues", s->evals, d, 0);
    t[n++] = kvqi_tensor_f32("spectral.basis", s->basis, d, d);
    kvqi_st_tensor b;
    memset(&b, 0, sizeof b);
    snprintf(b.name, sizeof b.name, "spectral.bits");
    b.dtype = KVQI_U8;
    b.ndim = 1;
    b.shape[0] = d;
    b.data = s->bits;
    b.nbytes = d;
    t[n++] = b;
    /* direction i's row holds its 2^bits[i] centroids, zero-padded to 256 */
    uint32_t first[2] = {0, s->d_s}, count[2] = {s->d_s, d - s->d_s};
    for (int g = 0; g < 2; g++)
        if (count[g]) t[n++] = kvqi_tensor_f32(names[g], s->cb + (size_t)first[g] * SP_K, count[g], SP_K);
    return n;
}

static int take_f32(const kvqi_st_file *f, const char *name, uint64_t a, uint64_t b, float *out) {
    const kvqi_st_tensor *t = kvqi_st_find(f, name);
    if (!t || t->dtype != KVQI_F32 || t->ndim != (b ? 2u : 1u) || t->shape[0] != a ||
        (b && t->shape[1] != b) || t->nbytes != (size_t)(a * (b ? b : 1) * sizeof(float)))
        return 0;
    memcpy(out, t->data, t->nbytes);
    for (size_t i = 0; i < t->nbytes / sizeof(float); i++)
        if (!isfinite(out[i])) return 0;
    return 1;
}

static kvq_status sp_load(kvq_quantizer *q, const kvqi_st_file *f) {
    sp_state *s = q->state;
    const uint32_t d = q->cfg.dim;
    const kvqi_st_tensor *b = kvqi_st_find(f, "spectral.bits");
    if (!b || b->dtype != KVQI_U8 || b->ndim != 1 || b->shape[0] != d || b->nbytes != d)
        return KVQ_ERR_FORMAT;
    const uint8_t *bits = b->data;
    uint32_t total = 0;
    for (uint32_t i = 0; i < d; i++) {
        if (bits[i] > KVQI_SPECTRAL_MAX_BITS) return KVQ_ERR_FORMAT;
        total += bits[i];
    }
    if (total != q->cfg.bits * d) return KVQ_ERR_FORMAT; /* the code layout depends on it */
    memcpy(s->bits, bits, d);
    const kvqi_st_tensor *sig = kvqi_st_find(f, "spectral.signal_codebooks");
    if (!sig || sig->ndim != 2 || sig->shape[0] == 0 || sig->shape[0] > d) return KVQ_ERR_FORMAT;
    s->d_s = (uint32_t)sig->shape[0];
    if (!take_f32(f, "spectral.mean", d, 0, s->mean) ||
        !take_f32(f, "spectral.eigenvalues", d, 0, s->evals) ||
        !take_f32(f, "spectral.basis", d, d, s->basis) ||
        !take_f32(f, "spectral.signal_codebooks", s->d_s, SP_K, s->cb) ||
        (s->d_s < d &&
         !take_f32(f, "spectral.noise_codebooks", d - s->d_s, SP_K, s->cb + (size_t)s->d_s * SP_K)))
        return KVQ_ERR_FORMAT;
    for (uint32_t i = 0; i < d; i++) {
        const float *cb = s->cb + (size_t)i * SP_K;
        for (uint32_t c = 0; bits[i] && c + 1 < (1u << bits[i]); c++)
            if (!(cb[c] <= cb[c + 1])) return KVQ_ERR_FORMAT; /* thresholds need ascending */
    }
    sp_set_thresholds(s, d);
    double sum = 0.0, sum2 = 0.0;
    for (uint32_t i = 0; i < d; i++) {
        sum += s->evals[i];
        sum2 += (double)s->evals[i] * s->evals[i];
    }
    s->pr = sum2 > 0.0 ? sum * sum / sum2 : (double)d;
    q->fitted = 1;
    return KVQ_OK;
}

const kvqi_method kvqi_method_spectral = {
    .method = KVQ_METHOD_SPECTRAL,
    .name = "spectral",
    .validate = sp_validate,
    .init = sp_init,
    .destroy = sp_destroy,
    .code_size = sp_code_size,
    .shared_size = sp_shared_size,
    .encode = sp_encode,
    .decode = sp_decode,
    .score = sp_score,
    .fit = sp_fit,
    .save_tensors = sp_save,
    .load_tensors = sp_load,
};
