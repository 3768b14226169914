/* test_quant_estimators.c - the statistical promises of the data-oblivious methods:
 * unbiased inner products (QJL arXiv 2406.03482, TurboQuant-prod arXiv 2504.19874,
 * RaBitQ arXiv 2405.12497 / 2409.09913), RaBitQ's error bound, RVQ cosine. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/core.h"
#include "test.h"

enum { D = 128, SEEDS = 100, PAIRS = 100 };

static void gaussian(float *x, size_t n, kvqi_rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = (float)kvqi_rng_normal(r);
}

static double dotd(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

typedef struct est_stats {
    double mean, se;    /* mean normalised error and its standard error (seed clusters) */
    double sd;          /* per-pair sd of the normalised error */
    double bound_hold;  /* fraction of pairs with |error| <= bound (if has_bound) */
} est_stats;

/* Normalised error (est - <q,x>) / (||q|| ||x||) over SEEDS fresh quantizers and PAIRS
 * pairs each: x ~ N(0,I), q = rho x + N(0,I) (rho = 1: cos(q,x) ~ 0.7, as attention keys
 * that matter; rho = 0: independent). The standard error treats each seed as a cluster. */
static int run_estimator(kvqt_ctx *kvqt_, const char *spec, float rho, est_stats *out) {
    static float x[PAIRS * D], qv[PAIRS * D], sc[PAIRS], err[PAIRS];
    static uint8_t codes[PAIRS * 512];
    double seed_means[SEEDS], sum = 0, sum2 = 0;
    size_t held = 0, total = 0;
    int bounded = 0;
    kvqi_rng r;
    kvqi_rng_seed(&r, 12345);
    clock_t t0 = clock();
    for (int s = 0; s < SEEDS; s++) {
        kvq_config c;
        char msg[200];
        if (kvq_config_parse(spec, D, &c, msg, sizeof msg) != KVQ_OK) {
            CHECKF(0, "%s: %s", spec, msg);
            return 0;
        }
        c.seed = 1000 + (uint64_t)s;
        kvq_quantizer *q;
        if (kvq_quantizer_create(&c, &q) != KVQ_OK) {
            CHECKF(0, "%s: create failed", spec);
            return 0;
        }
        gaussian(x, PAIRS * D, &r);
        gaussian(qv, PAIRS * D, &r);
        for (int i = 0; i < PAIRS * D; i++) qv[i] += rho * x[i];
        if (kvq_encode(q, x, PAIRS, codes) != KVQ_OK) {
            CHECKF(0, "%s: encode failed", spec);
            kvq_quantizer_free(q);
            return 0;
        }
        double m = 0;
        for (int p = 0; p < PAIRS; p++) {
            const float *xp = x + p * D, *qp = qv + p * D;
            kvq_status st = kvq_score_bound(q, qp, codes + p * kvq_code_size(q), 1, sc + p, err + p);
            bounded = st == KVQ_OK;
            if (!bounded && kvq_score(q, qp, codes + p * kvq_code_size(q), 1, sc + p) != KVQ_OK) {
                CHECKF(0, "%s: score failed", spec);
                kvq_quantizer_free(q);
                return 0;
            }
            double truth = dotd(qp, xp, D), scale = sqrt(dotd(qp, qp, D) * dotd(xp, xp, D));
            double e = (sc[p] - truth) / scale;
            m += e;
            sum += e;
            sum2 += e * e;
            if (bounded) held += fabs(sc[p] - truth) <= err[p];
            total++;
        }
        seed_means[s] = m / PAIRS;
        kvq_quantizer_free(q);
    }
    double n = (double)total, mean = sum / n, var_s = 0;
    for (int s = 0; s < SEEDS; s++) var_s += (seed_means[s] - mean) * (seed_means[s] - mean);
    out->mean = mean;
    out->se = sqrt(var_s / (SEEDS - 1) / SEEDS);
    out->sd = sqrt(sum2 / n - mean * mean);
    out->bound_hold = bounded ? (double)held / n : -1;
    printf("    %-28s rho %.0f pairs %zu  mean err %+.2e  se %.2e  sd %.2e  bound held %.4f  (%.2f s)\n", spec,
           (double)rho, total, out->mean, out->se, out->sd, out->bound_hold, (double)(clock() - t0) / CLOCKS_PER_SEC);
    fflush(stdout);
    return 1;
}

static void check_unbiased(kvqt_ctx *kvqt_, const char *spec, double max_sd, int bounded) {
    est_stats st;
    if (!run_estimator(kvqt_, spec, 1.0f, &st)) return;
    CHECKF(fabs(st.mean) <= 3 * st.se, "%s: mean error %.3g beyond 3 se (%.3g)", spec, st.mean, st.se);
    /* not trivially unbiased by being exact or useless: the spread is the method's */
    CHECKF(st.sd > 1e-5 && st.sd <= max_sd, "%s: error sd %.2e outside (1e-5, %.2e]", spec, st.sd, max_sd);
    /* RaBitQ's bound at the default eps0 = 1.9 */
    if (bounded) CHECKF(st.bound_hold >= 0.99, "%s: bound held for %.4f of pairs", spec, st.bound_hold);
}

TEST(quant_qjl_unbiased) {
    /* Var <= (pi/2)/m ||q||^2 ||x||^2 (QJL Lemma 3.5) */
    check_unbiased(kvqt_, "qjl", sqrt(1.5707963 / D) * 1.05, 0);
    check_unbiased(kvqt_, "qjl:m=256", sqrt(1.5707963 / 256) * 1.05, 0);
}

TEST(quant_turboquant_prod_unbiased) {
    /* residual norm^2 ~ mse(b-1) = 0.36 (b=2), 0.117 (b=3): sd <= sqrt(pi/2/m * mse) */
    check_unbiased(kvqt_, "prod:bits=2", sqrt(1.5707963 / D * 0.37) * 1.1, 0);
    check_unbiased(kvqt_, "prod:bits=3", sqrt(1.5707963 / D * 0.12) * 1.1, 0);
}

TEST(quant_rabitq_unbiased_and_bounded) {
    check_unbiased(kvqt_, "rabitq", 0.08, 1);
    check_unbiased(kvqt_, "rabitq:query_bits=4", 0.08, 1);
    check_unbiased(kvqt_, "rabitq:bits=4", 0.02, 1);
    check_unbiased(kvqt_, "rabitq:bits=3,query_bits=4", 0.03, 1);
    check_unbiased(kvqt_, "rabitq:bits=5,split=1", 0.005, 1);
}

/* Independent q and x: the whole of q is orthogonal to o, the error is ~ Gaussian with
 * the sd the bound assumes, and eps0 = 1.9 covers P(|Z| < 1.9) = 94.3 % (theory); 99 %
 * needs eps0 ~ 2.6. */
TEST(quant_rabitq_bound_independent_pairs) {
    est_stats st;
    if (!run_estimator(kvqt_, "rabitq", 0.0f, &st)) return;
    CHECKF(fabs(st.mean) <= 3 * st.se, "mean error %.3g beyond 3 se (%.3g)", st.mean, st.se);
    CHECKF(st.bound_hold >= 0.93 && st.bound_hold <= 0.96, "eps0=1.9 held %.4f, theory 0.943", st.bound_hold);
    if (!run_estimator(kvqt_, "rabitq:eps0=2.6", 0.0f, &st)) return;
    CHECKF(st.bound_hold >= 0.99, "eps0=2.6 held %.4f", st.bound_hold);
}

/* The seed's RVQ figures: 1-bit x 2 passes >= 0.92, 2-bit x 2 >= 0.98 (Gaussian, d=128). */
TEST(quant_rvq_cosine) {
    static const struct {
        const char *spec;
        double min_cos;
        size_t bytes;
    } cases[] = {{"rvq:bits=1,residuals=2", 0.92, 36}, {"rvq:bits=2,residuals=2", 0.98, 68}};
    enum { N = 2000 };
    static float x[N * D], y[N * D];
    static uint8_t codes[N * 128];
    kvqi_rng r;
    kvqi_rng_seed(&r, 4242);
    gaussian(x, N * D, &r);
    for (size_t c = 0; c < 2; c++) {
        kvq_config cfg;
        kvq_quantizer *q;
        REQUIRE_OK(kvq_config_parse(cases[c].spec, D, &cfg, NULL, 0));
        REQUIRE_OK(kvq_quantizer_create(&cfg, &q));
        CHECK(kvq_code_size(q) == cases[c].bytes);
        REQUIRE_OK(kvq_encode(q, x, N, codes));
        REQUIRE_OK(kvq_decode(q, codes, N, y));
        double cs = 0;
        for (int i = 0; i < N; i++)
            cs += dotd(x + i * D, y + i * D, D) / sqrt(dotd(x + i * D, x + i * D, D) * dotd(y + i * D, y + i * D, D));
        cs /= N;
        printf("    %s: mean cosine %.4f, %zu bytes/vector\n", cases[c].spec, cs, kvq_code_size(q));
        fflush(stdout);
        CHECKF(cs >= cases[c].min_cos, "%s: mean cosine %.4f < %.2f", cases[c].spec, cs, cases[c].min_cos);
        kvq_quantizer_free(q);
    }
}
