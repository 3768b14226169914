/*
 * cmd_bench.c - `kvq bench`: quality, memory and speed of each KV cache method on
 * synthetic KV shaped like a real model's (Gaussian rows, a few heavy key channels,
 * RoPE on keys at increasing positions), at the Llama-3.1-8B layer shape. Public API only.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define N_KV 8u
#define HEAD_DIM 128u
#define N_Q_HEADS 32u
#define LLAMA_LAYERS 32u
#define BUDGET_BYTES (8ull << 30)
#define MAX_METHODS 64

static const char *default_methods[] = {
    "fp16/fp16",
    "q8_0/q8_0",
    "q4_0/q4_0",
    "mse:bits=4/mse:bits=4",
    "mse:bits=3/mse:bits=3",
    "turboquant_rvq:bits=1/mse:bits=2",
    "turboquant_rvq:bits=2/mse:bits=4",
    "rabitq:bits=1/mse:bits=4",
    "qjl/mse:bits=2",
    "prod:bits=3/mse:bits=2",
    "polar/mse:bits=4",
};

static void usage(FILE *f) {
    fprintf(f,
            "usage: kvq bench [options]\n\n"
            "Compresses synthetic KV (8 KV heads x 128 dims, 32 query heads: one Llama-3.1-8B\n"
            "layer) with each method and prints bits per element, compression against fp16,\n"
            "key cosine similarity, attention-output error against fp32 attention, encode and\n"
            "attend speed, and the context that fits in 8 GiB for all 32 layers.\n\n"
            "options:\n"
            "  --methods LIST   key/value spec pairs separated by ',' or ';' (a spec alone is\n"
            "                   used for both), e.g. fp16/fp16,turboquant_rvq:bits=1,residuals=2/mse:bits=2\n"
            "  --tokens N       context length (default 4096; 1024 with --quick)\n"
            "  --window N       exact recent-token window (default 0)\n"
            "  --outliers N     key channels per head kept apart in fp16 (default 0)\n"
            "  --threads N      attend threads (default 1; 0 = all CPUs)\n"
            "  --seed S         data and quantizer seed (default 1)\n"
            "  --quick          fewer tokens and repeats: a few seconds in all\n"
            "  --json           one JSON object per line instead of the table\n"
            "  --help           this text\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------- synthetic KV */

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

/* Llama-style RoPE (pairs j, j + d/2; base 500000) at position pos, in place. */
static void rope(float *x, uint32_t d, size_t pos) {
    for (uint32_t j = 0; j < d / 2; j++) {
        double theta = (double)pos * pow(500000.0, -2.0 * j / d);
        double c = cos(theta), s = sin(theta), a = x[j], b = x[j + d / 2];
        x[j] = (float)(a * c - b * s);
        x[j + d / 2] = (float)(a * s + b * c);
    }
}

/* Keys: unit Gaussians plus 4 heavy channels per head (large mean, wide spread) in the
 * slow-rotating RoPE dimensions where real models keep them; RoPE at position t.
 * Values: Gaussians with a per-channel spread. Queries: like keys, at the last
 * positions, sharing the heavy channels' signs so attention is peaked as in real KV. */
static void make_kv(size_t n, size_t nq, uint64_t seed, float *k, float *v, float *q) {
    rng r = {seed * 0x2545f4914f6cdd1dULL + 1};
    float mean[N_KV][HEAD_DIM], spread[N_KV][HEAD_DIM], vspread[N_KV][HEAD_DIM];
    for (uint32_t g = 0; g < N_KV; g++)
        for (uint32_t j = 0; j < HEAD_DIM; j++) {
            int heavy = (j % (HEAD_DIM / 2)) >= HEAD_DIM / 2 - 2; /* 2 pairs: 4 channels */
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
    for (size_t i = 0; i < nq; i++)
        for (uint32_t h = 0; h < N_Q_HEADS; h++) {
            uint32_t g = h / (N_Q_HEADS / N_KV);
            float *qr = q + (i * N_Q_HEADS + h) * HEAD_DIM;
            for (uint32_t j = 0; j < HEAD_DIM; j++)
                qr[j] = 0.3f * mean[g][j] + (float)rng_normal(&r);
            rope(qr, HEAD_DIM, n - nq + i);
        }
}

/* fp32 causal GQA attention in double: the reference every method is measured against */
static void ref_attend(const float *q, const float *k, const float *v, size_t n, size_t nq,
                       float scale, float *out) {
    double *s = malloc(n * sizeof(double));
    if (!s) return;
    for (size_t i = 0; i < nq; i++) {
        size_t visible = n - nq + i + 1;
        for (uint32_t h = 0; h < N_Q_HEADS; h++) {
            uint32_t g = h / (N_Q_HEADS / N_KV);
            const float *qh = q + (i * N_Q_HEADS + h) * HEAD_DIM;
            double m = -1e300, l = 0;
            for (size_t t = 0; t < visible; t++) {
                const float *kt = k + (t * N_KV + g) * HEAD_DIM;
                double d = 0;
                for (uint32_t j = 0; j < HEAD_DIM; j++) d += (double)qh[j] * kt[j];
                s[t] = d * scale;
                if (s[t] > m) m = s[t];
            }
            for (size_t t = 0; t < visible; t++) l += (s[t] = exp(s[t] - m));
            float *o = out + (i * N_Q_HEADS + h) * HEAD_DIM;
            for (uint32_t j = 0; j < HEAD_DIM; j++) {
                double a = 0;
                for (size_t t = 0; t < visible; t++) a += s[t] * v[(t * N_KV + g) * HEAD_DIM + j];
                o[j] = (float)(a / l);
            }
        }
    }
    free(s);
}

/* ------------------------------------------------------------------ methods */

typedef struct method_spec {
    char key[256], value[256];
} method_spec;

static int is_continuation(const char *tok) {
    const char *p = tok;
    while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_') p++;
    return p != tok && *p == '=';
}

/* Splits "a/b,c:x=1,y=2/d;e" into pairs; a token "name=value" continues the previous spec. */
static int parse_methods(const char *list, method_spec *out, int max, char *err, size_t errn) {
    char buf[4096], joined[MAX_METHODS][512];
    int n = 0;
    if (strlen(list) >= sizeof buf) {
        snprintf(err, errn, "--methods list too long");
        return -1;
    }
    strcpy(buf, list);
    for (char *tok = strtok(buf, ",;"); tok; tok = strtok(NULL, ",;")) {
        if (n > 0 && is_continuation(tok)) {
            size_t l = strlen(joined[n - 1]);
            if (l + 1 + strlen(tok) >= sizeof joined[0]) {
                snprintf(err, errn, "method spec too long");
                return -1;
            }
            joined[n - 1][l] = ',';
            strcpy(joined[n - 1] + l + 1, tok);
            continue;
        }
        if (n == max) {
            snprintf(err, errn, "more than %d methods", max);
            return -1;
        }
        if (strlen(tok) >= sizeof joined[0]) {
            snprintf(err, errn, "method spec too long");
            return -1;
        }
        strcpy(joined[n++], tok);
    }
    for (int i = 0; i < n; i++) {
        char *slash = strchr(joined[i], '/');
        const char *ks = joined[i], *vs = joined[i];
        if (slash) {
            *slash = 0;
            vs = slash + 1;
        }
        if (!*ks || !*vs || strlen(ks) >= sizeof out[i].key || strlen(vs) >= sizeof out[i].value) {
            snprintf(err, errn, "bad method '%s'", joined[i]);
            return -1;
        }
        strcpy(out[i].key, ks);
        strcpy(out[i].value, vs);
    }
    return n;
}

typedef struct result {
    int ok;
    char error[200];
    double key_bits, value_bits, compression, key_cosine, attn_err;
    double encode_mvps, attend_ms, attend_mtps;
    uint64_t fit_tokens, bytes;
} result;

static double key_cosine(const kvq_config *kc, const float *k, size_t n_vec, int *ok) {
    kvq_quantizer *qz;
    *ok = 0;
    if (kvq_quantizer_create(kc, &qz) != KVQ_OK) return 0;
    size_t cs = kvq_code_size(qz);
    uint8_t *codes = malloc(n_vec * cs);
    float *dec = malloc(n_vec * HEAD_DIM * sizeof(float));
    double sum = 0;
    if (codes && dec && kvq_encode(qz, k, n_vec, codes) == KVQ_OK &&
        kvq_decode(qz, codes, n_vec, dec) == KVQ_OK) {
        for (size_t i = 0; i < n_vec; i++) {
            double d = 0, a = 0, b = 0;
            for (uint32_t j = 0; j < HEAD_DIM; j++) {
                double x = k[i * HEAD_DIM + j], y = dec[i * HEAD_DIM + j];
                d += x * y, a += x * x, b += y * y;
            }
            sum += (a > 0 && b > 0) ? d / sqrt(a * b) : 0;
        }
        *ok = 1;
    }
    free(codes);
    free(dec);
    kvq_quantizer_free(qz);
    return n_vec ? sum / (double)n_vec : 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void run_method(const method_spec *m, const float *k, const float *v, const float *q,
                       const float *ref, size_t n, size_t nq, uint32_t window, uint32_t n_out,
                       uint64_t seed, int reps, kvq_threadpool *pool, result *r) {
    memset(r, 0, sizeof *r);
    kvq_cache_config cfg;
    char msg[200] = "";
    kvq_status st = kvq_cache_config_init(&cfg, N_KV, HEAD_DIM, m->key, m->value, msg, sizeof msg);
    if (st != KVQ_OK) {
        snprintf(r->error, sizeof r->error, "%s", msg[0] ? msg : kvq_strerror(st));
        return;
    }
    cfg.key.seed = cfg.value.seed = seed;
    cfg.window = window;
    cfg.n_outliers = n_out;
    kvq_cache *c;
    if ((st = kvq_cache_create(&cfg, &c)) != KVQ_OK) {
        snprintf(r->error, sizeof r->error, "%s", kvq_strerror(st));
        return;
    }
    float *out = malloc(nq * N_Q_HEADS * HEAD_DIM * sizeof(float));
    if (!out) {
        kvq_cache_free(c);
        snprintf(r->error, sizeof r->error, "%s", kvq_strerror(KVQ_ERR_NOMEM));
        return;
    }
    double t0 = now_s();
    st = kvq_cache_append(c, k, v, n);
    double t_enc = now_s() - t0;
    float scale = 1.0f / sqrtf((float)HEAD_DIM);
    if (st == KVQ_OK) st = kvq_cache_attend(c, q, N_Q_HEADS, nq, scale, pool, out);
    if (st != KVQ_OK) {
        snprintf(r->error, sizeof r->error, "%s", kvq_strerror(st));
        free(out);
        kvq_cache_free(c);
        return;
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < nq * N_Q_HEADS * HEAD_DIM; i++) {
        double e = (double)out[i] - ref[i];
        num += e * e, den += (double)ref[i] * ref[i];
    }
    r->attn_err = sqrt(num / den);
    /* decode step: the last query alone, median of reps */
    double times[64];
    if (reps > 64) reps = 64;
    const float *q_last = q + (nq - 1) * N_Q_HEADS * HEAD_DIM;
    for (int i = 0; i < reps; i++) {
        double a = now_s();
        kvq_cache_attend(c, q_last, N_Q_HEADS, 1, scale, pool, out);
        times[i] = now_s() - a;
    }
    qsort(times, (size_t)reps, sizeof times[0], cmp_double);
    r->attend_ms = times[reps / 2] * 1e3;
    r->attend_mtps = (double)n / times[reps / 2] * 1e-6;
    r->encode_mvps = 2.0 * (double)n * N_KV / t_enc * 1e-6;

    kvq_quantizer *kq, *vq;
    kvq_config kc = cfg.key, vc = cfg.value;
    kc.dim = vc.dim = HEAD_DIM;
    if (kvq_quantizer_create(&kc, &kq) == KVQ_OK) {
        r->key_bits = 8.0 * (double)kvq_code_size(kq) / HEAD_DIM;
        kvq_quantizer_free(kq);
    }
    if (kvq_quantizer_create(&vc, &vq) == KVQ_OK) {
        r->value_bits = 8.0 * (double)kvq_code_size(vq) / HEAD_DIM;
        kvq_quantizer_free(vq);
    }
    r->compression = 32.0 / (r->key_bits + r->value_bits);
    int cos_ok;
    size_t n_vec = n * N_KV < 8192 ? n * N_KV : 8192;
    r->key_cosine = key_cosine(&kc, k, n_vec, &cos_ok);
    if (!cos_ok) r->key_cosine = NAN;
    kvq_cache_memory_info mem;
    if (kvq_cache_memory(c, &mem) == KVQ_OK) r->bytes = mem.total;
    kvq_cache_tokens_fit(&cfg, LLAMA_LAYERS, BUDGET_BYTES, &r->fit_tokens);
    r->ok = 1;
    free(out);
    kvq_cache_free(c);
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    if (!s || !*s || *s == '-') return 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (*end) return 0;
    *out = x;
    return 1;
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s >= 0x20) putchar(*s);
    }
    putchar('"');
}

int kvq_cmd_bench(int argc, char **argv) {
    const char *methods = NULL;
    uint64_t tokens = 0, threads = 1, seed = 1, window = 0, outliers = 0;
    int quick = 0, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--quick")) {
            quick = 1;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--methods") && val) {
            methods = val;
            i++;
        } else if ((!strcmp(a, "--tokens") && parse_u64(val, &tokens)) ||
                   (!strcmp(a, "--threads") && parse_u64(val, &threads)) ||
                   (!strcmp(a, "--seed") && parse_u64(val, &seed)) ||
                   (!strcmp(a, "--window") && parse_u64(val, &window)) ||
                   (!strcmp(a, "--outliers") && parse_u64(val, &outliers))) {
            i++;
        } else {
            fprintf(stderr, "kvq bench: bad option '%s'%s (try kvq bench --help)\n", a,
                    val ? "" : " or missing value");
            return 1;
        }
    }
    if (tokens == 0) tokens = quick ? 1024 : 4096;
    if (tokens < 16 || tokens > (1u << 22) || threads > 1024 || window > tokens ||
        outliers >= HEAD_DIM) {
        fprintf(stderr, "kvq bench: --tokens must be 16..4194304, --window <= --tokens, "
                        "--outliers < 128, --threads <= 1024\n");
        return 1;
    }
    method_spec specs[MAX_METHODS];
    int n_methods;
    char err[200];
    if (methods) {
        n_methods = parse_methods(methods, specs, MAX_METHODS, err, sizeof err);
        if (n_methods <= 0) {
            fprintf(stderr, "kvq bench: %s\n", n_methods < 0 ? err : "no methods");
            return 1;
        }
    } else {
        n_methods = (int)(sizeof default_methods / sizeof default_methods[0]);
        for (int i = 0; i < n_methods; i++)
            if (parse_methods(default_methods[i], specs + i, 1, err, sizeof err) != 1) return 1;
    }

    size_t n = (size_t)tokens, nq = 8;
    float *k = malloc(n * N_KV * HEAD_DIM * sizeof(float));
    float *v = malloc(n * N_KV * HEAD_DIM * sizeof(float));
    float *q = malloc(nq * N_Q_HEADS * HEAD_DIM * sizeof(float));
    float *ref = malloc(nq * N_Q_HEADS * HEAD_DIM * sizeof(float));
    kvq_threadpool *pool = NULL;
    int rc = 0;
    if (!k || !v || !q || !ref) {
        rc = kvq_cli_fail("bench", "synthetic KV", KVQ_ERR_NOMEM);
        goto done;
    }
    if (threads != 1) {
        /* the pool counts the calling thread; 0 = one per CPU */
        kvq_status st = kvq_threadpool_create((unsigned)threads, &pool);
        if (st != KVQ_OK) {
            rc = kvq_cli_fail("bench", "thread pool", st);
            goto done;
        }
    }
    make_kv(n, nq, seed, k, v, q);
    ref_attend(q, k, v, n, nq, 1.0f / sqrtf((float)HEAD_DIM), ref);

    int reps = quick ? 3 : 9;
    if (!json) {
        printf("kvq bench: %zu tokens, %u KV heads x %u dims, %u query heads, %s kernels, "
               "%llu thread(s)\n",
               n, N_KV, HEAD_DIM, N_Q_HEADS, kvq_cpu_isa(),
               (unsigned long long)(pool ? kvq_threadpool_size(pool) : 1));
        printf("%-36s %6s %6s %6s %6s %7s %9s %8s %9s %9s\n", "keys / values", "K bit", "V bit",
               "bits", "vs f16", "K cos", "attn err", "enc M/s", "attend ms", "ctx@8GiB");
    }
    for (int i = 0; i < n_methods; i++) {
        result r;
        run_method(&specs[i], k, v, q, ref, n, nq, (uint32_t)window, (uint32_t)outliers, seed,
                   reps, pool, &r);
        char name[520];
        snprintf(name, sizeof name, "%.250s / %.250s", specs[i].key, specs[i].value);
        if (json) {
            printf("{\"key\":");
            json_str(specs[i].key);
            printf(",\"value\":");
            json_str(specs[i].value);
            if (!r.ok) {
                printf(",\"error\":");
                json_str(r.error);
                printf("}\n");
                continue;
            }
            printf(",\"tokens\":%zu,\"key_bits\":%.4f,\"value_bits\":%.4f,\"bits\":%.4f,"
                   "\"compression\":%.3f,",
                   n, r.key_bits, r.value_bits, (r.key_bits + r.value_bits) / 2, r.compression);
            if (isnan(r.key_cosine)) printf("\"key_cosine\":null,");
            else printf("\"key_cosine\":%.5f,", r.key_cosine);
            printf("\"attn_rel_err\":%.6g,\"encode_mvec_s\":%.3f,\"attend_ms\":%.4f,"
                   "\"attend_mtok_s\":%.3f,\"cache_bytes\":%llu,\"llama8b_tokens_8gib\":%llu}\n",
                   r.attn_err, r.encode_mvps, r.attend_ms, r.attend_mtps,
                   (unsigned long long)r.bytes, (unsigned long long)r.fit_tokens);
        } else if (!r.ok) {
            printf("%-36s unavailable: %s\n", name, r.error);
        } else {
            char cosbuf[16];
            if (isnan(r.key_cosine)) snprintf(cosbuf, sizeof cosbuf, "-");
            else snprintf(cosbuf, sizeof cosbuf, "%.4f", r.key_cosine);
            printf("%-36s %6.2f %6.2f %6.2f %5.2fx %7s %9.5f %8.2f %9.3f %9llu\n", name,
                   r.key_bits, r.value_bits, (r.key_bits + r.value_bits) / 2, r.compression,
                   cosbuf, r.attn_err, r.encode_mvps, r.attend_ms,
                   (unsigned long long)r.fit_tokens);
        }
        fflush(stdout);
    }
    if (!json)
        printf("\nbits: per element incl. norms and scales; attn err: relative L2 error of the "
               "attention output against fp32 (8 causal queries at the end); attend: one decode "
               "step, all 32 heads, median of %d; ctx@8GiB: tokens of Llama-3.1-8B KV (32 layers) "
               "in 8 GiB.\n",
               reps);
done:
    kvq_threadpool_free(pool);
    free(k), free(v), free(q), free(ref);
    return rc;
}
