/*
 * bench_batch.c - batched decoding against decoding one context at a time: N contexts
 * of one model (each with the given cache preset, after a prompt of P tokens) advance by
 * one token each, either in one kvq_batch_decode step or in N kvq_context_eval calls.
 * The two are run in turns, STEPS tokens per turn, REPS turns; the best turn of each is
 * reported (wall-clock and process CPU time), since other work on the machine only ever
 * makes a turn slower.
 *
 *   build/bench/bench_batch MODEL [N=1,4,16] [THREADS=1] [PRESET=q4] [P=40] [STEPS=8] [REPS=5]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvq.h"

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int run(kvq_model *m, const kvq_model_info *I, int n, unsigned threads, const char *preset, int prompt,
               int steps, int reps) {
    kvq_cache_config cfg;
    char msg[256];
    int use_cache = strcmp(preset, "exact") != 0;
    if (use_cache && kvq_cache_config_parse(preset, I->n_kv_heads, I->head_dim, &cfg, msg, sizeof msg)) {
        fprintf(stderr, "cache %s: %s\n", preset, msg);
        return 1;
    }
    kvq_context **c = calloc((size_t)n, sizeof *c);
    int32_t *tok = calloc((size_t)n, sizeof *tok), *pr = calloc((size_t)prompt, sizeof *pr);
    float *logits = malloc((size_t)n * I->n_vocab * sizeof *logits);
    kvq_batch *b = NULL;
    int rc = 1;
    if (!c || !tok || !pr || !logits) goto out;
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = (uint32_t)(prompt + 2 * steps * reps + 8);
    p.n_threads = threads;
    if (use_cache) {
        p.cache = &cfg;
        p.n_cache_configs = 1;
    }
    for (int i = 0; i < n; i++) {
        if (kvq_context_create(m, &p, &c[i])) goto out;
        for (int t = 0; t < prompt; t++) pr[t] = (int32_t)((100 + 7 * t + 31 * i) % (int)I->n_vocab);
        if (kvq_context_eval(c[i], pr, (size_t)prompt, NULL, 0)) goto out;
        tok[i] = (int32_t)((200 + i) % (int)I->n_vocab);
    }
    kvq_batch_params bp;
    kvq_batch_params_init(&bp);
    bp.n_threads = threads;
    if (kvq_batch_create(m, (uint32_t)n, &bp, &b)) goto out;
    double best[2][2] = {{1e30, 1e30}, {1e30, 1e30}}; /* [batched, alone][wall, cpu] */
    for (int r = 0; r < reps; r++)
        for (int mode = 0; mode < 2; mode++) {
            double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            for (int s = 0; s < steps; s++) {
                if (mode == 0) {
                    if (kvq_batch_decode(b, c, tok, (size_t)n, logits)) goto out;
                } else {
                    for (int i = 0; i < n; i++)
                        if (kvq_context_eval(c[i], &tok[i], 1, logits, 0)) goto out;
                }
            }
            double w = (clock_s(CLOCK_MONOTONIC) - w0) / steps, cpu = (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0) / steps;
            if (w < best[mode][0]) best[mode][0] = w;
            if (cpu < best[mode][1]) best[mode][1] = cpu;
        }
    printf("%-8s n=%-3d threads=%u  batched: %7.2f ms/step (%6.1f tok/s), cpu %7.2f ms   "
           "alone: %7.2f ms/step (%6.1f tok/s), cpu %7.2f ms   speed-up %.2fx\n",
           preset, n, threads, best[0][0] * 1e3, n / best[0][0], best[0][1] * 1e3, best[1][0] * 1e3, n / best[1][0],
           best[1][1] * 1e3, best[1][0] / best[0][0]);
    rc = 0;
out:
    if (rc) fprintf(stderr, "bench_batch: a call failed (n=%d)\n", n);
    kvq_batch_free(b);
    for (int i = 0; c && i < n; i++) kvq_context_free(c[i]);
    free(c);
    free(tok);
    free(pr);
    free(logits);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [N=1,4,16] [THREADS=1] [PRESET=q4|exact|SPEC] [P=40] [STEPS=8] [REPS=5]\n",
                argv[0]);
        return 2;
    }
    const char *ns = argc > 2 ? argv[2] : "1,4,16";
    unsigned threads = argc > 3 ? (unsigned)atoi(argv[3]) : 1;
    const char *preset = argc > 4 ? argv[4] : "q4";
    int prompt = argc > 5 ? atoi(argv[5]) : 40, steps = argc > 6 ? atoi(argv[6]) : 8, reps = argc > 7 ? atoi(argv[7]) : 5;
    if (prompt < 1 || steps < 1 || reps < 1) return 2;
    kvq_model *m = NULL;
    char msg[256];
    if (kvq_model_load(argv[1], &m, msg, sizeof msg)) {
        fprintf(stderr, "%s\n", msg);
        return 1;
    }
    kvq_model_info I;
    kvq_model_get_info(m, &I);
    int rc = 0;
    for (const char *p = ns; *p && !rc;) {
        int n = atoi(p);
        if (n < 1) break;
        rc = run(m, &I, n, threads, preset, prompt, steps, reps);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    kvq_model_free(m);
    return rc;
}
