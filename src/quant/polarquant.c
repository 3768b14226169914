/*
 * polarquant.c - PolarQuant (arXiv 2502.02617): after the rotation, coordinates are
 * paired and turned into (radius, angle) recursively; level-1 angles are uniform on
 * [0, 2pi) and get a uniform b-bit grid, a level-l angle (l >= 2) lies in [0, pi/2] with
 * density ~ sin^(2^(l-1) - 1)(2 psi) (ever more concentrated round pi/4) and gets a Lloyd-Max
 * codebook for that density with ceil(b/2) bits. Levels go on while the count of radii is
 * even (L = the power of two in d: 7 levels and one radius at d=128, 5 levels and three
 * radii at d=96); the last radii are kept in fp16.
 * Code: [0, 2F) fp16 final radii (F = d / 2^L), then one LSB-first bit stream of angle
 * indices, level 1 first (d/2 angles of b bits), then level 2 (d/4 of ceil(b/2) bits), ...
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "quant/quant.h"

#define POLAR_MAX_LEVELS 12
#define POLAR_GRID 8192

typedef struct polar_state {
    unsigned levels, n_final;
    unsigned bits1, bits_deep;
    size_t stream_bytes;
    /* level l (1-based) codebook: centroids[l][0..2^bits), thresholds[l][0..2^bits-1) */
    float centroids[POLAR_MAX_LEVELS + 1][256];
    float thresholds[POLAR_MAX_LEVELS + 1][256];
    float cosc[POLAR_MAX_LEVELS + 1][256], sinc[POLAR_MAX_LEVELS + 1][256];
} polar_state;

static unsigned polar_levels(uint32_t d) {
    unsigned l = 0;
    while (d % 2 == 0 && l < POLAR_MAX_LEVELS) {
        d /= 2;
        l++;
    }
    return l;
}

static kvq_status polar_validate(const kvq_config *c, char *why, size_t n) {
    if (c->bits < 1 || c->bits > 8) {
        kvqi_set_msg(why, n, "bits %u outside 1..8 (level-1 angle bits)", c->bits);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (c->dim % 2) {
        kvqi_set_msg(why, n, "dim %u is odd: coordinates are taken in pairs", c->dim);
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

/* Lloyd-Max on [0, pi/2] for density sin^p(2 psi), on a fine grid (deterministic): prefix
 * sums of the mass and first moment make each iteration O(2^bits). */
static void angle_codebook(double p, unsigned bits, float *cent, float *thr) {
    const unsigned K = 1u << bits;
    static const double half_pi = 1.57079632679489661923;
    double w_pre[POLAR_GRID + 1], m_pre[POLAR_GRID + 1];
    w_pre[0] = m_pre[0] = 0;
    for (int g = 0; g < POLAR_GRID; g++) {
        double x = half_pi * (g + 0.5) / POLAR_GRID, w = pow(sin(2.0 * x), p);
        w_pre[g + 1] = w_pre[g] + w;
        m_pre[g + 1] = m_pre[g] + w * x;
    }
    double c[256];
    /* start from equal-mass quantiles */
    unsigned k = 0;
    for (int g = 0; g < POLAR_GRID && k < K; g++)
        while (k < K && w_pre[g + 1] >= w_pre[POLAR_GRID] * (k + 0.5) / K)
            c[k++] = half_pi * (g + 0.5) / POLAR_GRID;
    for (; k < K; k++) c[k] = half_pi * (1.0 - 0.5 / POLAR_GRID);
    for (int it = 0; it < 300; it++) {
        int lo = 0;
        for (unsigned j = 0; j < K; j++) {
            /* cell j: grid points up to the midpoint with the next centroid */
            int hi = POLAR_GRID;
            if (j + 1 < K) {
                double mid = 0.5 * (c[j] + c[j + 1]);
                hi = (int)floor(mid / half_pi * POLAR_GRID + 0.5);
                if (hi < lo) hi = lo;
                if (hi > POLAR_GRID) hi = POLAR_GRID;
            }
            double mass = w_pre[hi] - w_pre[lo];
            if (mass > 0) c[j] = (m_pre[hi] - m_pre[lo]) / mass;
            lo = hi;
        }
    }
    for (unsigned j = 0; j < K; j++) cent[j] = (float)c[j];
    for (unsigned j = 0; j + 1 < K; j++) thr[j] = (float)(0.5 * (c[j] + c[j + 1]));
}

static void fill_trig(polar_state *s) {
    for (unsigned l = 1; l <= s->levels; l++) {
        unsigned K = 1u << (l == 1 ? s->bits1 : s->bits_deep);
        for (unsigned j = 0; j < K; j++) {
            s->cosc[l][j] = (float)cos((double)s->centroids[l][j]);
            s->sinc[l][j] = (float)sin((double)s->centroids[l][j]);
        }
    }
}

static kvq_status polar_init(kvq_quantizer *q) {
    polar_state *s = calloc(1, sizeof *s);
    if (!s) return KVQ_ERR_NOMEM;
    uint32_t d = q->cfg.dim;
    s->levels = polar_levels(d);
    s->n_final = d >> s->levels;
    s->bits1 = q->cfg.bits;
    s->bits_deep = (q->cfg.bits + 1) / 2;
    size_t stream_bits = (size_t)(d / 2) * s->bits1 + (size_t)(d / 2 - s->n_final) * s->bits_deep;
    s->stream_bytes = (stream_bits + 7) / 8;
    const double two_pi = 6.28318530717958647692;
    unsigned K1 = 1u << s->bits1;
    for (unsigned j = 0; j < K1; j++) {
        s->centroids[1][j] = (float)(two_pi * (j + 0.5) / K1);
        if (j + 1 < K1) s->thresholds[1][j] = (float)(two_pi * (j + 1) / K1);
    }
    for (unsigned l = 2; l <= s->levels; l++)
        angle_codebook((double)(1u << (l - 1)) - 1.0, s->bits_deep, s->centroids[l], s->thresholds[l]);
    fill_trig(s);
    q->state = s;
    return KVQ_OK;
}

static void polar_destroy(kvq_quantizer *q) {
    free(q->state);
    q->state = NULL;
}

static size_t polar_code_size(const kvq_quantizer *q) {
    const polar_state *s = q->state;
    return 2 * (size_t)s->n_final + s->stream_bytes;
}

static size_t polar_shared_size(const kvq_quantizer *q) {
    const polar_state *s = q->state;
    size_t n = (2u << s->bits1) - 1u;
    if (s->levels > 1) n += (size_t)(s->levels - 1) * ((2u << s->bits_deep) - 1u);
    return n * sizeof(float);
}

static inline void put_bits(uint8_t *p, size_t *pos, unsigned v, unsigned bits) {
    for (unsigned b = 0; b < bits; b++, (*pos)++)
        if ((v >> b) & 1) p[*pos >> 3] |= (uint8_t)(1u << (*pos & 7));
}

static inline unsigned get_bits(const uint8_t *p, size_t *pos, unsigned bits) {
    unsigned v = 0;
    for (unsigned b = 0; b < bits; b++, (*pos)++) v |= (unsigned)((p[*pos >> 3] >> (*pos & 7)) & 1) << b;
    return v;
}

static unsigned nearest_idx(double a, const float *thr, unsigned K) {
    unsigned i = 0;
    while (i + 1 < K && a > (double)thr[i]) i++;
    return i;
}

static kvq_status polar_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes) {
    const polar_state *s = q->state;
    uint32_t d = q->cfg.dim;
    float y[KVQI_QUANT_MAX_DIM];
    double r[KVQI_QUANT_MAX_DIM / 2];
    const double two_pi = 6.28318530717958647692;
    const unsigned K1 = 1u << s->bits1, Kd = 1u << s->bits_deep;
    for (size_t i = 0; i < n; i++) {
        uint8_t *c = codes + i * q->code_size;
        uint8_t *stream = c + 2 * s->n_final;
        memset(stream, 0, s->stream_bytes);
        size_t pos = 0;
        kvqi_rotation_apply(&q->rot, x + i * d, y, q->isa);
        for (uint32_t k = 0; k < d / 2; k++) {
            double a = y[2 * k], b = y[2 * k + 1];
            double th = atan2(b, a);
            if (th < 0) th += two_pi;
            if (!(th >= 0)) th = 0; /* NaN input */
            unsigned idx = (unsigned)(th * K1 / two_pi);
            put_bits(stream, &pos, idx < K1 ? idx : K1 - 1, s->bits1);
            r[k] = sqrt(a * a + b * b);
        }
        uint32_t cnt = d / 2;
        for (unsigned l = 2; l <= s->levels; l++) {
            for (uint32_t k = 0; k < cnt / 2; k++) {
                double a = r[2 * k], b = r[2 * k + 1];
                put_bits(stream, &pos, nearest_idx(atan2(b, a), s->thresholds[l], Kd), s->bits_deep);
                r[k] = sqrt(a * a + b * b);
            }
            cnt /= 2;
        }
        for (unsigned f = 0; f < s->n_final; f++) kvqi_wr16(c + 2 * f, kvqi_fp32_to_fp16((float)r[f]));
    }
    return KVQ_OK;
}

/* Rebuild the rotated vector y from a code. */
static void polar_unpack(const polar_state *s, uint32_t d, const uint8_t *c, float *y) {
    const uint8_t *stream = c + 2 * s->n_final;
    float r[KVQI_QUANT_MAX_DIM];
    uint32_t cnt = s->n_final;
    for (unsigned f = 0; f < cnt; f++) r[f] = kvqi_rd_half(c + 2 * f);
    /* bit offset of level l's first index */
    size_t level_pos[POLAR_MAX_LEVELS + 2];
    level_pos[1] = 0;
    level_pos[2] = (size_t)(d / 2) * s->bits1;
    for (unsigned l = 2; l <= s->levels; l++) level_pos[l + 1] = level_pos[l] + (size_t)(d >> l) * s->bits_deep;
    for (unsigned l = s->levels; l >= 2; l--) {
        /* cnt radii at level l -> 2*cnt radii at level l-1 (in place, from the back) */
        for (uint32_t k = cnt; k-- > 0;) {
            size_t p = level_pos[l] + (size_t)k * s->bits_deep;
            unsigned idx = get_bits(stream, &p, s->bits_deep);
            float rho = r[k];
            r[2 * k] = rho * s->cosc[l][idx];
            r[2 * k + 1] = rho * s->sinc[l][idx];
        }
        cnt *= 2;
    }
    size_t pos = 0;
    for (uint32_t k = 0; k < d / 2; k++) {
        unsigned idx = get_bits(stream, &pos, s->bits1);
        y[2 * k] = r[k] * s->cosc[1][idx];
        y[2 * k + 1] = r[k] * s->sinc[1][idx];
    }
}

static kvq_status polar_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x) {
    uint32_t d = q->cfg.dim;
    for (size_t i = 0; i < n; i++) {
        float *xi = x + i * d;
        polar_unpack(q->state, d, codes + i * q->code_size, xi);
        kvqi_rotation_inverse(&q->rot, xi, xi, q->isa);
    }
    return KVQ_OK;
}

static kvq_status polar_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                              size_t n, float *scores, float *err) {
    KVQI_UNUSED(err);
    uint32_t d = q->cfg.dim;
    float qr[KVQI_QUANT_MAX_DIM], y[KVQI_QUANT_MAX_DIM];
    kvqi_rotation_apply(&q->rot, query, qr, q->isa);
    for (size_t i = 0; i < n; i++) {
        polar_unpack(q->state, d, codes + i * q->code_size, y);
        scores[i] = q->base->dot(qr, y, d);
    }
    return KVQ_OK;
}

static size_t polar_save(const kvq_quantizer *q, kvqi_st_tensor *t, size_t cap) {
    const polar_state *s = q->state;
    static const char *const names[POLAR_MAX_LEVELS + 1] = {
        "", "polar.level1.centroids", "polar.level2.centroids", "polar.level3.centroids",
        "polar.level4.centroids", "polar.level5.centroids", "polar.level6.centroids",
        "polar.level7.centroids", "polar.level8.centroids", "polar.level9.centroids",
        "polar.level10.centroids", "polar.level11.centroids", "polar.level12.centroids"};
    size_t n = 0;
    for (unsigned l = 1; l <= s->levels && n < cap; l++)
        t[n++] = kvqi_tensor_f32(names[l], s->centroids[l], 1u << (l == 1 ? s->bits1 : s->bits_deep), 0);
    return n;
}

/* Angle codebooks come from libm (sin, pow): take the saved ones once they agree with
 * ours to 1e-5, so a file decodes the same on a machine whose libm rounds differently. */
static kvq_status polar_load(kvq_quantizer *q, const kvqi_st_file *f) {
    polar_state *s = q->state;
    for (unsigned l = 1; l <= s->levels; l++) {
        char name[64];
        snprintf(name, sizeof name, "polar.level%u.centroids", l);
        unsigned K = 1u << (l == 1 ? s->bits1 : s->bits_deep);
        const kvqi_st_tensor *t = kvqi_st_find(f, name);
        if (!t || t->dtype != KVQI_F32 || t->ndim != 1 || t->shape[0] != K || t->nbytes != K * 4u)
            return KVQ_ERR_FORMAT;
        float c[256];
        memcpy(c, t->data, K * 4u);
        double hi = l == 1 ? 6.2831854 : 1.5707964;
        /* within libm rounding of the codebook this build derives */
        for (unsigned j = 0; j < K; j++)
            if (!(c[j] >= 0.0f && c[j] <= hi) || (j && !(c[j] > c[j - 1])) ||
                !(fabsf(c[j] - s->centroids[l][j]) <= 1e-5f))
                return KVQ_ERR_FORMAT;
        memcpy(s->centroids[l], c, K * 4u);
        for (unsigned j = 0; j + 1 < K; j++)
            s->thresholds[l][j] = l == 1 ? s->thresholds[l][j] : (float)(0.5 * ((double)c[j] + c[j + 1]));
    }
    fill_trig(s);
    return KVQ_OK;
}

const kvqi_method kvqi_method_polarquant = {
    .method = KVQ_METHOD_POLARQUANT,
    .name = "polarquant",
    .validate = polar_validate,
    .init = polar_init,
    .destroy = polar_destroy,
    .code_size = polar_code_size,
    .shared_size = polar_shared_size,
    .encode = polar_encode,
    .decode = polar_decode,
    .score = polar_score,
    .save_tensors = polar_save,
    .load_tensors = polar_load,
};
