/* lloydmax.c - optimal scalar quantizers of symmetric densities (Lloyd 1957 / Max 1960)
 * computed on the density itself, not on samples. Cell moments come from closed-form
 * tails (Gaussian: erfc; Laplace: exponentials; Beta: the regularized incomplete beta
 * for the mass, closed forms for the first moment). Only the positive half is solved
 * (the middle threshold is 0 by symmetry). Start: the high-resolution optimum (point
 * density proportional to f^(1/3), Panter & Dite 1951); then Newton on the Lloyd fixed
 * point, whose Jacobian is tridiagonal, with a plain Lloyd step whenever Newton does not
 * reduce the residual. */
#include <math.h>
#include <stdlib.h>

#include "core/core.h"

#define KVQI_LM_MAX_HALF 128 /* 2^8 / 2 */
#define KVQI_LM_GRID 4096
#define KVQI_LM_MAX_ITERS 300

typedef struct density {
    kvqi_dist dist;
    double laplace_b;                /* Laplace scale, 1/sqrt(2) for unit variance */
    double beta_alpha;               /* (d-1)/2: (1+x)/2 ~ Beta(alpha, alpha) */
    double beta_pow;                 /* (d-3)/2: f ~ (1-x^2)^pow */
    double beta_log_c;               /* log normalizer of f */
    double beta_front;               /* log front factor of the incomplete beta */
    double support;                  /* upper end of the support (inf or 1) */
    double sd;
} density;

/* Stirling's correction lgamma(z) - [(z-1/2)log z - z + log sqrt(2 pi)] for z >= 10 */
static double stirling_tail(double z) {
    const double r = 1.0 / z, r2 = r * r;
    return r * (1.0 / 12 + r2 * (-1.0 / 360 + r2 * (1.0 / 1260 + r2 * (-1.0 / 1680 +
                r2 * (1.0 / 1188 + r2 * (-691.0 / 360360 + r2 * (1.0 / 156)))))));
}

/* log Gamma for x > 0: recurrence up to x >= 10, then Stirling's series to x^-13
 * (error < 1e-16). Written here because lgamma() writes the global signgam. */
static double lgamma_pos(double x) {
    double acc = 0.0;
    while (x < 10.0) {
        acc -= log(x);
        x += 1.0;
    }
    return acc + (x - 0.5) * log(x) - x + 0.91893853320467274178 + stirling_tail(x);
}

/* log(Gamma(a + 1/2) / Gamma(a)) without the cancellation of two huge lgammas: the
 * normalizers of the Beta density at large d are ratios like this. */
static double log_gamma_ratio_half(double a) {
    if (a < 10.0) return lgamma_pos(a + 0.5) - lgamma_pos(a);
    return a * log1p(0.5 / a) + 0.5 * log(a) - 0.5 + (stirling_tail(a + 0.5) - stirling_tail(a));
}

/* Continued fraction of the incomplete beta function (modified Lentz). */
static double beta_cf(double a, double b, double x) {
    const double tiny = 1e-300;
    const double qab = a + b, qap = a + 1.0, qam = a - 1.0;
    double c = 1.0, d = 1.0 - qab * x / qap;
    if (fabs(d) < tiny) d = tiny;
    d = 1.0 / d;
    double h = d;
    for (int m = 1; m <= 20000; m++) {
        const double m2 = 2.0 * m;
        double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        h *= d * c;
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        const double del = d * c;
        h *= del;
        if (fabs(del - 1.0) < 1e-16) break;
    }
    return h;
}

/* P(X > x) for x in [0, 1) when (1+X)/2 ~ Beta(a, a): I_u(a, a) with u = (1-x)/2 <= 1/2,
 * where the continued fraction converges. The front factor u^a (1-u)^a / B(a, a) is
 * exp(a log1p(-x^2) + front) with front = log(Gamma(a+1/2)/Gamma(a)) - log 2 - log sqrt(pi)
 * (Legendre's duplication formula): the 2a log 2 terms cancel exactly, so it stays
 * accurate at d in the millions. */
static double beta_upper_tail(double a, double front, double x) {
    if (x >= 1.0) return 0.0;
    const double u = 0.5 * (1.0 - x);
    return exp(a * log1p(-x * x) + front) * beta_cf(a, a, u) / a;
}

/* Tails for x >= 0: t0 = P(X > x), t1 = int_x^inf t f(t) dt. */
static void tails(const density *D, double x, double *t0, double *t1) {
    switch (D->dist) {
    case KVQI_DIST_GAUSSIAN: {
        const double phi = 0.39894228040143267794 * exp(-0.5 * x * x);
        *t0 = 0.5 * erfc(x * 0.70710678118654752440);
        *t1 = phi;
        break;
    }
    case KVQI_DIST_LAPLACE: {
        const double b = D->laplace_b, e = exp(-x / b);
        *t0 = 0.5 * e;
        *t1 = 0.5 * (x + b) * e;
        break;
    }
    case KVQI_DIST_BETA:
    default: {
        if (x >= 1.0) {
            *t0 = *t1 = 0.0;
            break;
        }
        *t0 = beta_upper_tail(D->beta_alpha, D->beta_front, x);
        /* int_x^1 t (1-t^2)^p dt = (1-x^2)^(p+1) / (2(p+1)), p + 1 = alpha */
        *t1 = exp(D->beta_log_c + D->beta_alpha * log1p(-x * x)) / (2.0 * D->beta_alpha);
        break;
    }
    }
}

static double pdf(const density *D, double x) {
    switch (D->dist) {
    case KVQI_DIST_GAUSSIAN: return 0.39894228040143267794 * exp(-0.5 * x * x);
    case KVQI_DIST_LAPLACE: return exp(-x / D->laplace_b) / (2.0 * D->laplace_b);
    case KVQI_DIST_BETA:
    default:
        if (x >= 1.0) return 0.0;
        return exp(D->beta_log_c + D->beta_pow * log1p(-x * x));
    }
}

/* f^(1/3) up to a constant, for the starting point. */
static double cube_root_density(const density *D, double x) {
    switch (D->dist) {
    case KVQI_DIST_GAUSSIAN: return exp(-x * x / 6.0);
    case KVQI_DIST_LAPLACE: return exp(-x / (3.0 * D->laplace_b));
    case KVQI_DIST_BETA:
    default: return exp(D->beta_pow / 3.0 * log((1.0 - x) * (1.0 + x)));
    }
}

/* Centroids at the (j + 1/2)/h quantiles of f^(1/3) on [0, inf), by a midpoint-rule
 * table (cells never touch an endpoint singularity). */
static void initial_centroids(const density *D, unsigned half, double *c) {
    const double xmax = D->dist == KVQI_DIST_GAUSSIAN  ? 12.0
                        : D->dist == KVQI_DIST_LAPLACE ? 60.0 * D->laplace_b
                                                       : 1.0;
    const double dx = xmax / KVQI_LM_GRID;
    double total = 0.0;
    for (int i = 0; i < KVQI_LM_GRID; i++) total += cube_root_density(D, (i + 0.5) * dx);
    double cum = 0.0;
    unsigned j = 0;
    for (int i = 0; i < KVQI_LM_GRID && j < half; i++) {
        const double w = cube_root_density(D, (i + 0.5) * dx);
        while (j < half && cum + w >= (j + 0.5) / half * total) {
            const double frac = ((j + 0.5) / half * total - cum) / w;
            c[j++] = (i + frac) * dx;
        }
        cum += w;
    }
    while (j < half) c[j++] = xmax * (1.0 - 1e-9); /* unreachable unless rounding */
}

/* m = conditional means of the cells that the midpoints of c define; jacobian
 * (lower/diag/upper of dm/dc) when jl != NULL. Returns max |m - c| / sd. */
static double lloyd_map(const density *D, unsigned half, const double *c, double *m, double *jl,
                        double *jd, double *ju) {
    double lo_t0, lo_t1, lo_f = 0.0, lo = 0.0;
    tails(D, 0.0, &lo_t0, &lo_t1);
    double resid = 0.0;
    for (unsigned j = 0; j < half; j++) {
        double hi_t0 = 0.0, hi_t1 = 0.0, hi_f = 0.0, hi = D->support;
        if (j + 1 < half) {
            hi = 0.5 * (c[j] + c[j + 1]);
            tails(D, hi, &hi_t0, &hi_t1);
            hi_f = pdf(D, hi);
        }
        const double mass = lo_t0 - hi_t0;
        const double mean = mass > 0.0 ? (lo_t1 - hi_t1) / mass : 0.5 * (lo + (isinf(hi) ? lo + 1.0 : hi));
        m[j] = mean;
        if (jl) {
            /* d mean / d lo = f(lo)(mean - lo)/mass, d mean / d hi = f(hi)(hi - mean)/mass;
             * lo = (c[j-1]+c[j])/2, hi = (c[j]+c[j+1])/2 */
            const double dlo = j > 0 && mass > 0.0 ? lo_f * (mean - lo) / mass : 0.0;
            const double dhi = j + 1 < half && mass > 0.0 ? hi_f * (hi - mean) / mass : 0.0;
            jl[j] = 0.5 * dlo;
            jd[j] = 0.5 * (dlo + dhi);
            ju[j] = 0.5 * dhi;
        }
        const double r = fabs(mean - c[j]);
        if (r > resid) resid = r;
        lo = hi;
        lo_t0 = hi_t0;
        lo_t1 = hi_t1;
        lo_f = hi_f;
    }
    return resid / D->sd;
}

/* Newton step on F(c) = m(c) - c = 0: (J - I) dc = -(m - c), tridiagonal (Thomas). */
static int newton_step(unsigned half, const double *c, const double *m, const double *jl,
                       const double *jd, const double *ju, double *out, double support) {
    double cp[KVQI_LM_MAX_HALF], dp[KVQI_LM_MAX_HALF];
    for (unsigned j = 0; j < half; j++) {
        const double a = j > 0 ? jl[j] : 0.0, b = jd[j] - 1.0, cc = ju[j];
        const double rhs = -(m[j] - c[j]);
        const double denom = b - (j > 0 ? a * cp[j - 1] : 0.0);
        if (!(fabs(denom) > 1e-300)) return 0;
        cp[j] = cc / denom;
        dp[j] = (rhs - (j > 0 ? a * dp[j - 1] : 0.0)) / denom;
    }
    for (unsigned j = half; j-- > 0;) {
        const double dc = dp[j] - (j + 1 < half ? cp[j] * (out[j + 1] - c[j + 1]) : 0.0);
        out[j] = c[j] + dc;
    }
    /* the result must still be an ordered set of positive points inside the support */
    if (!(out[0] > 0.0)) return 0;
    for (unsigned j = 1; j < half; j++)
        if (!(out[j] > out[j - 1])) return 0;
    if (!(out[half - 1] < support)) return 0;
    return 1;
}

kvq_status kvqi_lloyd_max(kvqi_dist dist, double param, unsigned bits, float *centroids,
                          float *thresholds, double *mse) {
    if (bits < 1 || bits > 8 || !centroids) return KVQ_ERR_INVALID_ARG;
    density D = {0};
    D.dist = dist;
    D.support = INFINITY;
    D.sd = 1.0;
    switch (dist) {
    case KVQI_DIST_GAUSSIAN: break;
    case KVQI_DIST_LAPLACE: D.laplace_b = 0.70710678118654752440; break;
    case KVQI_DIST_BETA:
        if (!(param >= 2.0) || !(param <= 1e9)) return KVQ_ERR_INVALID_ARG;
        D.beta_alpha = 0.5 * (param - 1.0);
        D.beta_pow = 0.5 * (param - 3.0);
        /* C_d = Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)), d/2 = alpha + 1/2 */
        D.beta_log_c = log_gamma_ratio_half(D.beta_alpha) - 0.57236494292470008707;
        D.beta_front = D.beta_log_c - 0.69314718055994530942;
        D.support = 1.0;
        D.sd = 1.0 / sqrt(param);
        break;
    default: return KVQ_ERR_INVALID_ARG;
    }
    const unsigned half = 1u << (bits - 1);
    double c[KVQI_LM_MAX_HALF], m[KVQI_LM_MAX_HALF], cn[KVQI_LM_MAX_HALF], mn[KVQI_LM_MAX_HALF];
    double jl[KVQI_LM_MAX_HALF], jd[KVQI_LM_MAX_HALF], ju[KVQI_LM_MAX_HALF];
    double jln[KVQI_LM_MAX_HALF], jdn[KVQI_LM_MAX_HALF], jun[KVQI_LM_MAX_HALF];
    initial_centroids(&D, half, c);
    double resid = lloyd_map(&D, half, c, m, jl, jd, ju);
    /* Newton converges quadratically to the rounding floor of the cell moments (about
     * 1e-13 for Gaussian, 1e-11 for Beta at large d): stop below 1e-9, or once a step
     * gains less than half near the floor. Floats keep 6e-8 anyway. */
    for (int it = 0; it < KVQI_LM_MAX_ITERS && resid > 1e-9; it++) {
        const double before = resid;
        if (newton_step(half, c, m, jl, jd, ju, cn, D.support)) {
            const double rn = lloyd_map(&D, half, cn, mn, jln, jdn, jun);
            if (rn < resid) {
                for (unsigned j = 0; j < half; j++) {
                    c[j] = cn[j];
                    m[j] = mn[j];
                    jl[j] = jln[j];
                    jd[j] = jdn[j];
                    ju[j] = jun[j];
                }
                resid = rn;
                if (resid < 1e-6 && resid > 0.5 * before) break;
                continue;
            }
        }
        for (unsigned j = 0; j < half; j++) c[j] = m[j]; /* Lloyd step */
        resid = lloyd_map(&D, half, c, m, jl, jd, ju);
        if (resid < 1e-6 && resid >= before) break;
    }
    /* one last Lloyd step: the centroids are then exactly the cell means */
    double cprev[KVQI_LM_MAX_HALF];
    for (unsigned j = 0; j < half; j++) {
        cprev[j] = c[j];
        c[j] = m[j];
    }

    /* c are now the conditional means of their cells, so the error is
     * E[X^2] - sum_j P_j c_j^2: no second moments, which cancel badly at large d */
    double second = 0.0, lo_t0, unused_t1;
    tails(&D, 0.0, &lo_t0, &unused_t1);
    for (unsigned j = 0; j < half; j++) {
        double hi_t0 = 0.0;
        if (j + 1 < half) tails(&D, 0.5 * (cprev[j] + cprev[j + 1]), &hi_t0, &unused_t1);
        second += (lo_t0 - hi_t0) * c[j] * c[j];
        lo_t0 = hi_t0;
    }
    const double err = 0.5 * D.sd * D.sd - second;
    for (unsigned j = 0; j < half; j++) {
        centroids[half + j] = (float)c[j];
        centroids[half - 1 - j] = (float)-c[j];
    }
    if (thresholds) {
        thresholds[half - 1] = 0.0f;
        for (unsigned j = 0; j + 1 < half; j++) {
            const float t = (float)(0.5 * (c[j] + c[j + 1]));
            thresholds[half + j] = t;
            thresholds[half - 2 - j] = -t;
        }
    }
    if (mse) *mse = 2.0 * err;
    return KVQ_OK;
}
