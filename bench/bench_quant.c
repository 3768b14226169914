/*
 * bench_quant.c - every data-oblivious quantizer at one dim (default 128): bytes per
 * vector, compression against fp16, distortion (relative MSE, cosine), inner-product
 * error, and one-core encode / score throughput (median of repeats).
 * Usage: bench_quant [--dim D] [--n N] [--repeats R] [--json] [--only SUBSTRING] [--wall]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvq.h"

static const char *const k_specs[] = {
    "fp16",
    "q8_0",
    "q4_0",
    "turboquant_mse:bits=1",
    "turboquant_mse:bits=2",
    "turboquant_mse:bits=3",
    "turboquant_mse:bits=4",
    "turboquant_prod:bits=2",
    "turboquant_prod:bits=3",
    "turboquant_prod:bits=4",
    "turboquant_rvq:bits=1,residuals=2",
    "turboquant_rvq:bits=2,residuals=2",
    "turboquant_rvq:bits=1,residuals=3",
    "qjl",
    "polarquant:bits=4",
    "polarquant:bits=2",
    "rabitq:bits=1",
    "rabitq:bits=1,query_bits=4",
    "rabitq:bits=2",
    "rabitq:bits=4",
    "rabitq:bits=8,split=1",
};

/* Thread CPU time by default: on a shared machine it counts only this core's work
 * (--wall measures elapsed time instead). */
static clockid_t g_clock = CLOCK_THREAD_CPUTIME_ID;

static double now(void) {
    struct timespec ts;
    clock_gettime(g_clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* splitmix64 + Box-Muller: the bench's own data, independent of the library's rng */
static uint64_t g_state = 0x9E3779B97F4A7C15ull;
static double unif(void) {
    uint64_t z = (g_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}
static double gauss(void) { return sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif()); }

typedef struct result {
    const char *spec;
    size_t bytes, shared;
    double ratio, rel_mse, cosine, ip_err, ip_bias, enc_vps, score_vps;
} result;

static int run(const char *spec, uint32_t d, size_t n, int repeats, const float *x,
               const float *queries, size_t nq, result *r) {
    kvq_config cfg;
    char msg[256];
    kvq_status st = kvq_config_parse(spec, d, &cfg, msg, sizeof msg);
    if (st != KVQ_OK) {
        fprintf(stderr, "bench_quant: %s: %s\n", spec, msg);
        return 0;
    }
    kvq_quantizer *q;
    if ((st = kvq_quantizer_create(&cfg, &q)) != KVQ_OK) {
        fprintf(stderr, "bench_quant: %s: %s\n", spec, kvq_strerror(st));
        return 0;
    }
    size_t cs = kvq_code_size(q);
    uint8_t *codes = malloc(n * cs);
    float *y = malloc(n * d * sizeof(float)), *sc = malloc(n * sizeof(float));
    if (!codes || !y || !sc) return 0;
    memset(r, 0, sizeof *r);
    r->spec = spec;
    r->bytes = cs;
    r->shared = kvq_shared_size(q);
    r->ratio = 2.0 * d / (double)cs;

    /* quality on all n vectors */
    kvq_encode(q, x, n, codes);
    kvq_decode(q, codes, n, y);
    double mse = 0, cs_sum = 0;
    for (size_t i = 0; i < n; i++) {
        double e = 0, xx = 0, yy = 0, xy = 0;
        for (uint32_t j = 0; j < d; j++) {
            double a = x[i * d + j], b = y[i * d + j];
            e += (a - b) * (a - b);
            xx += a * a;
            yy += b * b;
            xy += a * b;
        }
        mse += e / xx;
        cs_sum += xy / sqrt(xx * yy + 1e-30);
    }
    r->rel_mse = mse / (double)n;
    r->cosine = cs_sum / (double)n;
    double err = 0, bias = 0;
    size_t cnt = 0;
    for (size_t k = 0; k < nq; k++) {
        const float *qv = queries + k * d;
        kvq_score(q, qv, codes, n, sc);
        double qq = 0;
        for (uint32_t j = 0; j < d; j++) qq += (double)qv[j] * qv[j];
        for (size_t i = 0; i < n; i++) {
            double t = 0, xx = 0;
            for (uint32_t j = 0; j < d; j++) {
                t += (double)qv[j] * x[i * d + j];
                xx += (double)x[i * d + j] * x[i * d + j];
            }
            double e = (sc[i] - t) / sqrt(qq * xx);
            err += fabs(e);
            bias += e;
            cnt++;
        }
    }
    r->ip_err = err / (double)cnt;
    r->ip_bias = bias / (double)cnt;

    /* throughput: a batch sized so one repeat takes ~0.1 s */
    double t0 = now();
    size_t probe = n < 256 ? n : 256;
    kvq_encode(q, x, probe, codes);
    double per = (now() - t0) / (double)probe;
    size_t batch = per > 0 ? (size_t)(0.1 / per) : n;
    if (batch > n) batch = n;
    if (batch < 16) batch = n < 16 ? n : 16;
    double *t = malloc(sizeof(double) * (size_t)repeats);
    for (int k = 0; k < repeats; k++) {
        t0 = now();
        kvq_encode(q, x, batch, codes);
        t[k] = now() - t0;
    }
    r->enc_vps = (double)batch / median(t, repeats);
    for (int k = 0; k < repeats; k++) {
        t0 = now();
        for (size_t j = 0; j < 4; j++) kvq_score(q, queries + (j % nq) * d, codes, batch, sc);
        t[k] = (now() - t0) / 4;
    }
    r->score_vps = (double)batch / median(t, repeats);
    free(t);
    free(codes);
    free(y);
    free(sc);
    kvq_quantizer_free(q);
    return 1;
}

int main(int argc, char **argv) {
    uint32_t d = 128;
    size_t n = 8192;
    int repeats = 7, json = 0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dim") && i + 1 < argc) d = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--wall")) g_clock = CLOCK_MONOTONIC;
        else {
            fprintf(stderr, "usage: bench_quant [--dim D] [--n N] [--repeats R] [--json] [--only S] [--wall]\n");
            return 1;
        }
    }
    if (d == 0 || n == 0 || repeats < 1) return 1;
    enum { NQ = 8 };
    float *x = malloc(n * d * sizeof(float)), *queries = malloc(NQ * d * sizeof(float));
    if (!x || !queries) return 1;
    for (size_t i = 0; i < n * d; i++) x[i] = (float)gauss();
    /* queries correlated with the data, as attention queries with their keys */
    for (size_t k = 0; k < NQ; k++)
        for (uint32_t j = 0; j < d; j++) queries[k * d + j] = (float)gauss() + x[k * 97 % n * d + j];
    if (!json) {
        printf("kvq %s bench_quant: d=%u, n=%zu Gaussian vectors, ISA %s, one core, median of %d, %s\n",
               kvq_version_string(), d, n, kvq_cpu_isa(), repeats,
               g_clock == CLOCK_MONOTONIC ? "wall clock" : "thread CPU time");
        printf("%-36s %6s %6s %9s %7s %9s %9s %12s %12s\n", "method", "bytes", "x fp16", "rel MSE",
               "cosine", "|ip err|", "ip bias", "encode/s", "score/s");
    } else {
        printf("[\n");
    }
    int first = 1;
    for (size_t s = 0; s < sizeof k_specs / sizeof k_specs[0]; s++) {
        if (only && !strstr(k_specs[s], only)) continue;
        result r;
        if (!run(k_specs[s], d, n, repeats, x, queries, NQ, &r)) continue;
        if (json)
            printf("%s  {\"method\": \"%s\", \"dim\": %u, \"bytes\": %zu, \"shared_bytes\": %zu, "
                   "\"compression_vs_fp16\": %.4f, \"rel_mse\": %.6g, \"cosine\": %.6f, "
                   "\"ip_abs_err\": %.6g, \"ip_bias\": %.3g, \"encode_vectors_per_s\": %.4g, "
                   "\"score_vectors_per_s\": %.4g, \"isa\": \"%s\"}",
                   first ? "" : ",\n", r.spec, d, r.bytes, r.shared, r.ratio, r.rel_mse, r.cosine,
                   r.ip_err, r.ip_bias, r.enc_vps, r.score_vps, kvq_cpu_isa());
        else
            printf("%-36s %6zu %6.2f %9.5f %7.4f %9.5f %+9.1e %12.4g %12.4g\n", r.spec, r.bytes, r.ratio,
                   r.rel_mse, r.cosine, r.ip_err, r.ip_bias, r.enc_vps, r.score_vps);
        fflush(stdout);
        first = 0;
    }
    if (json) printf("\n]\n");
    if (!json)
        printf("ip err: |score - <q,x>| / (||q|| ||x||), mean over %d queries x %zu vectors\n", NQ, n);
    free(x);
    free(queries);
    return 0;
}
