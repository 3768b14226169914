/*
 * bench_attention.c - CPU decode attention over the compressed cache at one Llama-3.1-8B
 * layer's shape (8 KV heads x 128, 32 query heads): median time of one decode step at
 * 4k and 32k context with 1 and 2 threads, and the output error against fp32 attention.
 * --dump DIR writes the q/k/v/reference of each context so a peer runs the same data.
 * --kv DIR runs one layer of real KV instead (`kvq generate --dump-kv`: keys, values and
 * queries as .npy), the last token's queries as the decode step.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvq.h"

#define N_KV 8u
#define HEAD_DIM 128u
#define N_Q_HEADS 32u

static const char *default_configs[] = {
    "fp16/fp16",
    "q8_0/q8_0",
    "q4_0/q4_0",
    "mse:bits=4/mse:bits=4",
    "mse:bits=3/mse:bits=3",
    "mse:bits=4/mse:bits=2",
    "mse:bits=2/mse:bits=2",
    "turboquant_rvq:bits=1/mse:bits=2",
    "rabitq:bits=1/mse:bits=4",
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct rng {
    uint64_t s;
} rng;
static uint64_t rng_next(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static double rng_normal(rng *r) {
    double u1 = ((double)(rng_next(r) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(rng_next(r) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
static void rope(float *x, uint32_t d, size_t pos) {
    for (uint32_t j = 0; j < d / 2; j++) {
        double theta = (double)pos * pow(500000.0, -2.0 * j / d);
        double c = cos(theta), s = sin(theta), a = x[j], b = x[j + d / 2];
        x[j] = (float)(a * c - b * s);
        x[j + d / 2] = (float)(a * s + b * c);
    }
}

/* the same synthetic KV as `kvq bench`: Gaussian rows, 4 heavy key channels per head in
 * the slow RoPE dimensions, RoPE on keys at their positions, one query at the end */
static void make_kv(size_t n, uint64_t seed, float *k, float *v, float *q) {
    rng r = {seed * 0x2545f4914f6cdd1dULL + 1};
    static float mean[N_KV][HEAD_DIM], spread[N_KV][HEAD_DIM], vspread[N_KV][HEAD_DIM];
    for (uint32_t g = 0; g < N_KV; g++)
        for (uint32_t j = 0; j < HEAD_DIM; j++) {
            int heavy = (j % (HEAD_DIM / 2)) >= HEAD_DIM / 2 - 2;
            mean[g][j] = heavy ? (float)(rng_next(&r) & 1 ? 6.0 : -6.0) : 0.0f;
            spread[g][j] = heavy ? 3.0f : (float)(0.5 + (rng_next(&r) % 1000) / 1000.0);
            vspread[g][j] = (float)(0.5 + (rng_next(&r) % 1000) / 1000.0);
        }
    for (size_t t = 0; t < n; t++)
        for (uint32_t g = 0; g < N_KV; g++) {
            float *kr = k + (t * N_KV + g) * HEAD_DIM, *vr = v + (t * N_KV + g) * HEAD_DIM;
            for (uint32_t j = 0; j < HEAD_DIM; j++) {
                kr[j] = mean[g][j] + spread[g][j] * (float)rng_normal(&r);
                vr[j] = vspread[g][j] * (float)rng_normal(&r);
            }
            rope(kr, HEAD_DIM, t);
        }
    for (uint32_t h = 0; h < N_Q_HEADS; h++) {
        uint32_t g = h / (N_Q_HEADS / N_KV);
        float *qr = q + h * HEAD_DIM;
        for (uint32_t j = 0; j < HEAD_DIM; j++) qr[j] = 0.3f * mean[g][j] + (float)rng_normal(&r);
        rope(qr, HEAD_DIM, n - 1);
    }
}

/* one query per head over n tokens: q [n_q][dim], k/v [n][n_kv][dim] */
static void ref_attend(const float *q, const float *k, const float *v, size_t n, uint32_t n_kv,
                       uint32_t n_q, uint32_t dim, float scale, float *out) {
    double *s = malloc(n * sizeof(double));
    if (!s) return;
    for (uint32_t h = 0; h < n_q; h++) {
        uint32_t g = h / (n_q / n_kv);
        const float *qh = q + h * dim;
        double m = -1e300, l = 0;
        for (size_t t = 0; t < n; t++) {
            const float *kt = k + (t * n_kv + g) * dim;
            double d = 0;
            for (uint32_t j = 0; j < dim; j++) d += (double)qh[j] * kt[j];
            s[t] = d * scale;
            if (s[t] > m) m = s[t];
        }
        for (size_t t = 0; t < n; t++) l += (s[t] = exp(s[t] - m));
        for (uint32_t j = 0; j < dim; j++) {
            double a = 0;
            for (size_t t = 0; t < n; t++) a += s[t] * v[(t * n_kv + g) * dim + j];
            out[h * dim + j] = (float)(a / l);
        }
    }
    free(s);
}

/* A little-endian float32 C-order .npy of shape (a, b, c), header and size checked. */
static float *read_npy3(const char *path, size_t shape[3]) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char pre[10];
    char hdr[1024];
    float *data = NULL;
    size_t hl;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY\x01", 7) != 0) goto fail;
    hl = pre[8] | (size_t)pre[9] << 8;
    if (hl >= sizeof hdr || fread(hdr, 1, hl, f) != hl) goto fail;
    hdr[hl] = 0;
    const char *sh = strstr(hdr, "'shape': (");
    if (!strstr(hdr, "'descr': '<f4'") || !strstr(hdr, "'fortran_order': False") || !sh) goto fail;
    sh += 10;
    for (int i = 0; i < 3; i++) {
        char *end;
        unsigned long long x = strtoull(sh, &end, 10);
        if (end == sh || x == 0 || x > (1u << 30) || (*end != ',' && *end != ')')) goto fail;
        shape[i] = (size_t)x;
        sh = end + 1;
        while (*sh == ' ') sh++;
    }
    if (shape[1] * shape[2] > (1u << 20)) goto fail;
    size_t count = shape[0] * shape[1] * shape[2];
    long here = ftell(f);
    if (here < 0 || fseek(f, 0, SEEK_END) != 0) goto fail;
    long total = ftell(f);
    if (total < 0 || (size_t)total != (size_t)here + count * sizeof(float) || fseek(f, here, SEEK_SET))
        goto fail;
    data = malloc(count * sizeof(float));
    if (!data || fread(data, sizeof(float), count, f) != count) goto fail;
    for (size_t i = 0; i < count; i++)
        if (!isfinite(data[i])) goto fail;
    fclose(f);
    return data;
fail:
    free(data);
    fclose(f);
    return NULL;
}

/* CPU time of the process: on a shared machine the 1-thread figure that other load
 * does not inflate (wall time is printed beside it) */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int dump(const char *dir, const char *name, const float *x, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t w = fwrite(x, sizeof(float), n, f);
    return fclose(f) == 0 && w == n;
}

int main(int argc, char **argv) {
    const char *configs[64];
    int n_configs = 0, json = 0, reps = 15;
    const char *dump_dir = NULL, *kv_dir = NULL;
    size_t contexts[8] = {4096, 32768};
    int n_contexts = 2, layer = 0, threads = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc) dump_dir = argv[++i];
        else if (!strcmp(argv[i], "--kv") && i + 1 < argc) kv_dir = argv[++i];
        else if (!strcmp(argv[i], "--layer") && i + 1 < argc) layer = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--context") && i + 1 < argc) {
            contexts[0] = (size_t)strtoull(argv[++i], NULL, 10);
            n_contexts = 1;
        } else if (!strcmp(argv[i], "--config") && i + 1 < argc && n_configs < 64)
            configs[n_configs++] = argv[++i];
        else {
            fprintf(stderr,
                    "usage: bench_attention [--config KEY/VALUE]... [--context N] [--reps N] "
                    "[--json] [--dump DIR] [--kv DIR [--layer L]] [--threads N]\n");
            return 1;
        }
    }
    if (reps < 1 || reps > 101) reps = 15;
    if (threads < 2 || threads > 1024 || layer < 0 || layer > 9999) {
        fprintf(stderr, "bench_attention: --threads 2..1024, --layer 0..9999\n");
        return 1;
    }
    /* real KV: one layer's keys, values and queries; shape from the files */
    uint32_t n_kv = N_KV, dim = HEAD_DIM, n_q = N_Q_HEADS;
    float *rk = NULL, *rv = NULL, *rq = NULL;
    if (kv_dir) {
        size_t sk[3], sv[3], sq[3];
        char path[1100];
        snprintf(path, sizeof path, "%s/keys_%02d.npy", kv_dir, layer);
        rk = read_npy3(path, sk);
        snprintf(path, sizeof path, "%s/values_%02d.npy", kv_dir, layer);
        rv = read_npy3(path, sv);
        snprintf(path, sizeof path, "%s/queries_%02d.npy", kv_dir, layer);
        rq = read_npy3(path, sq);
        if (!rk || !rv || !rq || memcmp(sk, sv, sizeof sk) || sq[0] != sk[0] || sq[2] != sk[2] ||
            sq[1] % sk[1] || sq[1] * sq[2] > N_Q_HEADS * HEAD_DIM || sk[0] < 2) {
            fprintf(stderr, "bench_attention: %s layer %d: missing, malformed or mismatched "
                            "keys/values/queries .npy\n", kv_dir, layer);
            return 1;
        }
        n_kv = (uint32_t)sk[1], dim = (uint32_t)sk[2], n_q = (uint32_t)sq[1];
        contexts[0] = sk[0];
        n_contexts = 1;
    }
    if (n_configs == 0)
        for (size_t i = 0; i < sizeof default_configs / sizeof default_configs[0]; i++)
            configs[n_configs++] = default_configs[i];
    kvq_threadpool *pool2 = NULL;
    if (kvq_threadpool_create((unsigned)threads, &pool2) != KVQ_OK) return 1;
    float scale = 1.0f / sqrtf((float)dim);
    char thr_col[32];
    snprintf(thr_col, sizeof thr_col, "%d thr ms", threads);
    if (!json)
        printf("bench_attention: one decode step, %u query heads over %u KV heads x %u (%s), %s "
               "kernels, median of %d\n%-34s %7s %8s %10s %10s %10s %10s\n",
               n_q, n_kv, dim, kv_dir ? "real KV" : "synthetic", kvq_cpu_isa(), reps,
               "keys/values", "context", "bits", "attn err", "1 thr ms", "1 thr cpu", thr_col);
    for (int ci = 0; ci < n_contexts; ci++) {
        size_t n = contexts[ci];
        float *k = rk, *v = rv;
        float q[N_Q_HEADS * HEAD_DIM], ref[N_Q_HEADS * HEAD_DIM], out[N_Q_HEADS * HEAD_DIM];
        if (kv_dir) {
            memcpy(q, rq + (n - 1) * n_q * dim, (size_t)n_q * dim * sizeof(float));
        } else {
            k = malloc(n * N_KV * HEAD_DIM * sizeof(float));
            v = malloc(n * N_KV * HEAD_DIM * sizeof(float));
            if (!k || !v) return 1;
            make_kv(n, 7, k, v, q);
        }
        ref_attend(q, k, v, n, n_kv, n_q, dim, scale, ref);
        if (dump_dir) {
            char sub[900];
            snprintf(sub, sizeof sub, "%s/ctx%zu", dump_dir, n);
            char cmd[1000];
            snprintf(cmd, sizeof cmd, "mkdir -p '%s'", sub);
            if (system(cmd) != 0 || !dump(sub, "q.f32", q, (size_t)n_q * dim) ||
                !dump(sub, "k.f32", k, n * n_kv * dim) ||
                !dump(sub, "v.f32", v, n * n_kv * dim) ||
                !dump(sub, "ref.f32", ref, (size_t)n_q * dim))
                fprintf(stderr, "bench_attention: could not write %s\n", sub);
        }
        for (int m = 0; m < n_configs; m++) {
            char ks[256], vs[256];
            const char *slash = strchr(configs[m], '/');
            if (!slash || (size_t)(slash - configs[m]) >= sizeof ks || strlen(slash + 1) >= sizeof vs)
                continue;
            memcpy(ks, configs[m], (size_t)(slash - configs[m]));
            ks[slash - configs[m]] = 0;
            strcpy(vs, slash + 1);
            kvq_cache_config cfg;
            kvq_cache *c;
            kvq_status st = kvq_cache_config_init(&cfg, n_kv, dim, ks, vs, NULL, 0);
            if (st == KVQ_OK) st = kvq_cache_create(&cfg, &c);
            if (st == KVQ_OK) {
                st = kvq_cache_append(c, k, v, n);
                if (st != KVQ_OK) kvq_cache_free(c);
            }
            if (st != KVQ_OK) {
                if (json)
                    printf("{\"config\":\"%s\",\"context\":%zu,\"error\":\"%s\"}\n", configs[m],
                           n, kvq_strerror(st));
                else
                    printf("%-34s %7zu unavailable: %s\n", configs[m], n, kvq_strerror(st));
                continue;
            }
            kvq_cache_memory_info mi;
            kvq_cache_memory(c, &mi);
            double bits = 8.0 * (double)(mi.key_codes + mi.value_codes) / ((double)n * n_kv * dim * 2);
            double med[2], med_cpu = 0;
            for (int th = 0; th < 2; th++) {
                kvq_threadpool *pool = th ? pool2 : NULL;
                double t[101], tc[101];
                kvq_cache_attend(c, q, n_q, 1, scale, pool, out); /* warm */
                for (int r = 0; r < reps; r++) {
                    double a = now_s(), ac = cpu_s();
                    kvq_cache_attend(c, q, n_q, 1, scale, pool, out);
                    t[r] = now_s() - a;
                    tc[r] = cpu_s() - ac;
                }
                qsort(t, (size_t)reps, sizeof t[0], cmp_double);
                qsort(tc, (size_t)reps, sizeof tc[0], cmp_double);
                med[th] = t[reps / 2] * 1e3;
                if (th == 0) med_cpu = tc[reps / 2] * 1e3;
            }
            double num = 0, den = 0;
            for (size_t i = 0; i < (size_t)n_q * dim; i++) {
                double e = (double)out[i] - ref[i];
                num += e * e, den += (double)ref[i] * ref[i];
            }
            double err = sqrt(num / den);
            if (json)
                printf("{\"config\":\"%s\",\"context\":%zu,\"bits\":%.4f,\"attn_rel_err\":%.6g,"
                       "\"ms_1thread\":%.4f,\"cpu_ms_1thread\":%.4f,\"threads\":%d,\"ms_threads\":%.4f}\n",
                       configs[m], n, bits, err, med[0], med_cpu, threads, med[1]);
            else
                printf("%-34s %7zu %8.3f %10.6f %10.3f %10.3f %10.3f\n", configs[m], n, bits,
                       err, med[0], med_cpu, med[1]);
            fflush(stdout);
            kvq_cache_free(c);
        }
        if (!kv_dir) {
            free(k);
            free(v);
        }
    }
    free(rk), free(rv), free(rq);
    kvq_threadpool_free(pool2);
    return 0;
}
