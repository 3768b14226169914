/* bench_engine.c - prompt and generation speed of the engine, measured as llama-bench
 * measures them: pp = one batch of P random tokens on a context already holding D
 * tokens, tg = N tokens one at a time on such a context; median of R runs, each on a
 * fresh context. Wall and process CPU time (the CPU figure holds up on a shared machine).
 * Usage: build/bench/bench_engine MODEL [-p P] [-n N] [-d D] [-t THREADS] [-r R]
 *                                  [--cache SPEC] [--float-activations] [--json] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvq.h"

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* feeds n tokens in batches of at most n_batch */
static kvq_status feed(kvq_context *c, const int32_t *tok, size_t n, size_t n_batch, float *logits) {
    for (size_t i = 0; i < n; i += n_batch) {
        size_t m = n - i < n_batch ? n - i : n_batch;
        kvq_status st = kvq_context_eval(c, tok + i, m, logits, 0);
        if (st) return st;
    }
    return KVQ_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [-p P] [-n N] [-d D] [-t THREADS] [-r R] [--cache SPEC] "
                        "[--float-activations] [--json]\n", argv[0]);
        return 1;
    }
    const char *path = argv[1], *cache_spec = NULL;
    long P = 512, N = 128, D = 0, T = 1, R = 3;
    int json = 0, float_act = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        long *dst = !strcmp(a, "-p") ? &P : !strcmp(a, "-n") ? &N : !strcmp(a, "-d") ? &D : !strcmp(a, "-t") ? &T
                  : !strcmp(a, "-r") ? &R : NULL;
        if (dst && i + 1 < argc) {
            char *end;
            *dst = strtol(argv[++i], &end, 10);
            if (*end || *dst < 0 || *dst > 1000000) {
                fprintf(stderr, "bench_engine: bad number for %s\n", a);
                return 1;
            }
        } else if (!strcmp(a, "--cache") && i + 1 < argc) {
            cache_spec = argv[++i];
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--float-activations")) {
            float_act = 1;
        } else {
            fprintf(stderr, "bench_engine: unknown argument %s\n", a);
            return 1;
        }
    }
    if (R < 1 || R > 100) R = 3;
    char msg[512] = "";
    kvq_model *m;
    if (kvq_model_load(path, &m, msg, sizeof msg)) {
        fprintf(stderr, "bench_engine: %s\n", msg);
        return 1;
    }
    kvq_model_info info;
    kvq_model_get_info(m, &info);
    /* one config a layer: a preset's plan gives layers different bits, as kvq generate does */
    kvq_cache_config *cc = cache_spec ? calloc(info.n_layers, sizeof *cc) : NULL;
    if (cache_spec && !cc) return 1;
    for (uint32_t l = 0; cache_spec && l < info.n_layers; l++) {
        if (kvq_cache_config_parse_layer(cache_spec, info.n_kv_heads, info.head_dim, l, info.n_layers, &cc[l], msg,
                                         sizeof msg)) {
            fprintf(stderr, "bench_engine: %s\n", msg);
            free(cc);
            kvq_model_free(m);
            return 1;
        }
    }
    size_t total = (size_t)(D + P + N);
    int32_t *tok = malloc(total * sizeof *tok);
    float *logits = malloc((size_t)info.n_vocab * sizeof *logits);
    double *pp_wall = calloc((size_t)R, sizeof(double)), *pp_cpu = calloc((size_t)R, sizeof(double));
    double *tg_wall = calloc((size_t)R, sizeof(double)), *tg_cpu = calloc((size_t)R, sizeof(double));
    if (!tok || !logits || !pp_wall || !pp_cpu || !tg_wall || !tg_cpu) return 1;
    uint64_t s = 42;
    for (size_t i = 0; i < total; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % info.n_vocab);
    }
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = (uint32_t)(total + 1);
    p.n_batch = 512;
    p.n_threads = (unsigned)T;
    p.float_activations = float_act;
    if (cache_spec) {
        p.cache = cc;
        p.n_cache_configs = info.n_layers;
    }
    kvq_status st = KVQ_OK;
    /* run 0 warms up (skipped at depth, where filling the context warms up anyway) */
    for (int r = D ? 1 : 0; r <= R && !st; r++) {
        for (int phase = 0; phase < 2 && !st; phase++) {
            long n = phase ? N : P;
            if (n == 0) continue;
            kvq_context *c;
            if ((st = kvq_context_create(m, &p, &c))) break;
            st = feed(c, tok, (size_t)D, p.n_batch, logits);
            double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            if (!st && phase == 0) st = feed(c, tok + D, (size_t)P, p.n_batch, logits);
            for (long i = 0; !st && phase == 1 && i < N; i++) st = kvq_context_eval(c, tok + D + P + i, 1, logits, 0);
            double w = clock_s(CLOCK_MONOTONIC) - w0, cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
            kvq_context_free(c);
            if (r == 0) continue;
            (phase ? tg_wall : pp_wall)[r - 1] = (double)n / w;
            (phase ? tg_cpu : pp_cpu)[r - 1] = (double)n / cpu;
        }
    }
    if (st) {
        fprintf(stderr, "bench_engine: %s\n", kvq_strerror(st));
        return 1;
    }
    double ppw = P ? median(pp_wall, (int)R) : 0, ppc = P ? median(pp_cpu, (int)R) : 0;
    double tgw = N ? median(tg_wall, (int)R) : 0, tgc = N ? median(tg_cpu, (int)R) : 0;
    const char *cname = cache_spec ? cache_spec : "f32";
    if (json)
        printf("{\"model\": \"%s\", \"cache\": \"%s\", \"threads\": %ld, \"depth\": %ld, \"n_prompt\": %ld, "
               "\"n_gen\": %ld, \"repeats\": %ld, \"pp_tok_s\": %.2f, \"pp_cpu_tok_s\": %.2f, \"tg_tok_s\": %.2f, "
               "\"tg_cpu_tok_s\": %.2f}\n",
               path, cname, T, D, P, N, R, ppw, ppc, tgw, tgc);
    else
        printf("%s cache %s, %ld thread(s), depth %ld, median of %ld: pp%ld %.1f tok/s (CPU %.1f), "
               "tg%ld %.1f tok/s (CPU %.1f)\n",
               path, cname, T, D, R, P, ppw, ppc, N, tgw, tgc);
    free(tok);
    free(logits);
    free(pp_wall);
    free(pp_cpu);
    free(tg_wall);
    free(tg_cpu);
    free(cc);
    kvq_model_free(m);
    return 0;
}
