/*
 * cmd_bench.c - `kvq bench`: quality, memory and speed of each KV cache method on
 * synthetic KV shaped like a real model's (Gaussian rows, a few heavy key channels,
 * RoPE on keys at increasing positions), at the Llama-3.1-8B layer shape, or on the real
 * keys, values and queries a model wrote with `kvq generate --dump-kv`. Public API only.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "args.h"
#include "bench_calibrate.h"
#include "cli.h"

#define N_KV 8u
#define HEAD_DIM 128u
#define N_Q_HEADS 32u
#define LLAMA_LAYERS 32u
#define MAX_LAYERS 1024u
#define N_QUERIES 8u /* default causal queries measured at the end of the context */
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
    "mse:bits=4/vq",
    "qjl/mse:bits=2",
    "prod:bits=3/mse:bits=2",
    "polar/mse:bits=4",
    /* 6x with the cache's extras: on real SmolLM2 KV below q4_0's error (bench/RESULTS.md) */
    "mse:bits=2/mse:bits=2@window=32,outliers=1,sink=1",
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
            "                   used for both), e.g. fp16/fp16,turboquant_rvq:bits=1,residuals=2/mse:bits=2;\n"
            "                   a pair may carry its own cache options: mse:bits=2/mse:bits=2@window=20,outliers=2,sink=4,center=1;\n"
            "                   a preset name (q4, q3, q2) stands for its pair and options;\n"
            "                   channel keys before RoPE: channel:bits=2,rope_base=1 or q2@rope_base=1\n"
            "                   (synthetic KV takes its own RoPE, base 500000 NeoX; with --kv give\n"
            "                   the dumped model's base and rope=neox|interleaved)\n"
            "  --kv DIR         real keys, values and queries written by kvq generate --dump-kv\n"
            "                   (DIR/{keys,values,queries}_LL.npy) instead of synthetic KV; each\n"
            "                   token's query is shown to the cache before its key, as the engine\n"
            "                   does (channel keys weigh their bits by them)\n"
            "  --layers LIST    with --kv: 'all' (default) or layer numbers, e.g. 0,7,15,29\n"
            "  --tokens N       context length (default 4096; 1024 with --quick; with --kv, the\n"
            "                   first N tokens of the dump, default all)\n"
            "  --window N       exact recent-token window (default 0; also --cache-window)\n"
            "  --outliers N     key channels per head kept apart in fp16 (default 0; also\n"
            "                   --cache-outliers)\n"
            "  --sink N         first tokens kept exact, the attention sinks (default 0; also\n"
            "                   --cache-sink)\n"
            "  -t, --threads N  attend threads, 0..1024 (default 1; 0 = all CPUs)\n"
            "  --queries N      decode steps the error is measured on, spread over the second\n"
            "                   half of the context (default 8)\n"
            "  -s, --seed S     data and quantizer seed, 0..2^64-1 (default 1)\n"
            "  --calibrate N    fit the calibrated methods (vecinfer, spectral, comm_vq) on the\n"
            "                   first N tokens of each layer, e.g. --methods vecinfer/mse:bits=2;\n"
            "                   with --kv give comm_vq the model's RoPE (comm_vq:rope_base=100000)\n"
            "  --quick          fewer tokens and repeats: a few seconds in all\n"
            "  --json           one JSON object per line instead of the table\n"
            "  --help           this text\n");
}

/* CPU time of the whole process (every thread): steadier than wall time on shared CPUs */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
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
static void make_kv(size_t n, size_t nq, const size_t *qpos, uint64_t seed, float *k, float *v,
                    float *q) {
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
            rope(qr, HEAD_DIM, qpos[i]);
        }
}

/* One layer of KV to measure on: k, v [n][n_kv][dim], nq queries q [nq][n_q][dim] at
 * positions qpos (ascending, the last one n - 1) and their fp32 attention ref. */
typedef struct kv_layer {
    uint32_t id;
    float *k, *v, *q, *ref;
    float *q_all; /* --kv: every token's queries [n][n_q][dim], shown to the cache before
                     its tokens are appended, as the engine does (NULL for synthetic KV) */
} kv_layer;

typedef struct kv_data {
    uint32_t n_kv, dim, n_q, n_fit_layers; /* n_fit_layers: for the ctx@8GiB column */
    size_t n, nq;
    size_t *qpos; /* [nq] */
    uint32_t n_layers;
    kv_layer *layers;
} kv_data;

/* Query positions: nq of them spread over the second half of the context, ending at the
 * last token, so the error samples many attention patterns, not one neighbourhood. */
static int set_query_positions(kv_data *D) {
    D->qpos = malloc(D->nq * sizeof *D->qpos);
    if (!D->qpos) return -1;
    size_t step = D->nq > 1 ? (D->n / 2) / D->nq : 1;
    if (step == 0) step = 1;
    for (size_t i = 0; i < D->nq; i++) D->qpos[i] = D->n - 1 - (D->nq - 1 - i) * step;
    return 0;
}

/* fp32 causal GQA attention in double: the reference every method is measured against */
static int ref_attend(const kv_data *D, const kv_layer *L, float scale) {
    size_t n = D->n, nq = D->nq, dim = D->dim;
    uint32_t group = D->n_q / D->n_kv;
    double *s = malloc(n * sizeof(double));
    if (!s) return -1;
    for (size_t i = 0; i < nq; i++) {
        size_t visible = D->qpos[i] + 1;
        for (uint32_t h = 0; h < D->n_q; h++) {
            uint32_t g = h / group;
            const float *qh = L->q + (i * D->n_q + h) * dim;
            double m = -1e300, l = 0;
            for (size_t t = 0; t < visible; t++) {
                const float *kt = L->k + (t * D->n_kv + g) * dim;
                double d = 0;
                for (uint32_t j = 0; j < dim; j++) d += (double)qh[j] * kt[j];
                s[t] = d * scale;
                if (s[t] > m) m = s[t];
            }
            for (size_t t = 0; t < visible; t++) l += (s[t] = exp(s[t] - m));
            float *o = L->ref + (i * D->n_q + h) * dim;
            for (uint32_t j = 0; j < dim; j++) {
                double a = 0;
                for (size_t t = 0; t < visible; t++) a += s[t] * L->v[(t * D->n_kv + g) * dim + j];
                o[j] = (float)(a / l);
            }
        }
    }
    free(s);
    return 0;
}

/* --------------------------------------------------------- real KV (.npy) */

/* Reads a little-endian float32 C-order .npy of shape (a, b, c) (versions 1-3), checking
 * the header, the size against the file, and that every value is finite. */
static float *read_npy3(const char *path, size_t shape[3], char *err, size_t errn) {
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        snprintf(err, errn, "%.300s: %s, not a regular file", path, S_ISDIR(sb.st_mode) ? "is a directory" : "is a special file");
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    float *data = NULL;
    if (!f) {
        snprintf(err, errn, "cannot open %.300s", path);
        return NULL;
    }
    unsigned char pre[12];
    char hdr[4096];
    size_t hl = 0, pre_len = 10;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] < 1 || pre[6] > 3) {
        snprintf(err, errn, "%.300s: not a .npy file", path);
        goto fail;
    }
    if (pre[6] == 1) {
        hl = pre[8] | (size_t)pre[9] << 8;
    } else {
        if (fread(pre + 10, 1, 2, f) != 2) goto bad;
        hl = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
        pre_len = 12;
    }
    if (hl == 0 || hl >= sizeof hdr || fread(hdr, 1, hl, f) != hl) goto bad;
    hdr[hl] = 0;
    if (!strstr(hdr, "'descr': '<f4'") || !strstr(hdr, "'fortran_order': False")) {
        snprintf(err, errn, "%.300s: want little-endian float32 in C order ('<f4', fortran_order False)", path);
        goto fail;
    }
    const char *sh = strstr(hdr, "'shape': (");
    if (!sh) goto bad;
    sh += 10;
    for (int i = 0; i < 3; i++) {
        char *end;
        while (*sh == ' ') sh++;
        if (*sh < '0' || *sh > '9') goto bad;
        unsigned long long x = strtoull(sh, &end, 10);
        if (x == 0 || x > (1ull << 32)) goto bad;
        shape[i] = (size_t)x;
        sh = end;
        while (*sh == ' ') sh++;
        if (*sh != (i < 2 ? ',' : ')') && !(i == 2 && *sh == ',' && sh[1] == ')')) goto bad;
        sh++;
    }
    if (shape[1] > 65536 || shape[2] > 65536 || shape[0] > ((size_t)1 << 40) / (shape[1] * shape[2])) goto bad;
    size_t count = shape[0] * shape[1] * shape[2];
    long here = ftell(f);
    if (here < 0 || fseek(f, 0, SEEK_END) != 0) goto bad;
    long total = ftell(f);
    if (total < 0 || (size_t)total != (size_t)here + count * sizeof(float) ||
        (size_t)here != pre_len + hl || fseek(f, here, SEEK_SET) != 0) {
        snprintf(err, errn, "%.300s: file size does not match its shape", path);
        goto fail;
    }
    data = malloc(count * sizeof(float));
    if (!data || fread(data, sizeof(float), count, f) != count) {
        snprintf(err, errn, "%.300s: %s", path, data ? "short read" : "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < count; i++)
        if (!isfinite(data[i])) {
            snprintf(err, errn, "%.300s: non-finite value at element %zu", path, i);
            goto fail;
        }
    fclose(f);
    return data;
bad:
    snprintf(err, errn, "%.300s: malformed .npy header", path);
fail:
    free(data);
    fclose(f);
    return NULL;
}

/* Loads layers of DIR/{keys,values,queries}_LL.npy: the first n tokens (all if n == 0),
 * the queries at the last nq of them. layers: ids, or NULL for every layer found. */
static int load_real_kv(const char *dir, const uint32_t *ids, uint32_t n_ids, size_t n_want,
                        size_t nq, kv_data *D, char *err, size_t errn) {
    uint32_t found[MAX_LAYERS], n_found = 0;
    for (uint32_t l = 0; l < MAX_LAYERS; l++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/keys_%02u.npy", dir, l);
        FILE *f = fopen(path, "rb");
        if (!f) break;
        fclose(f);
        found[n_found++] = l;
    }
    if (!n_found) {
        snprintf(err, errn, "no %.300s/keys_00.npy (write one with kvq generate --dump-kv)", dir);
        return -1;
    }
    if (!ids) {
        ids = found;
        n_ids = n_found;
    }
    D->layers = calloc(n_ids, sizeof *D->layers);
    if (!D->layers) {
        snprintf(err, errn, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < n_ids; i++) {
        kv_layer *L = &D->layers[i];
        D->n_layers = i + 1;
        L->id = ids[i];
        size_t sk[3], sv[3], sq[3];
        char path[4200];
        snprintf(path, sizeof path, "%s/keys_%02u.npy", dir, ids[i]);
        if (!(L->k = read_npy3(path, sk, err, errn))) return -1;
        snprintf(path, sizeof path, "%s/values_%02u.npy", dir, ids[i]);
        if (!(L->v = read_npy3(path, sv, err, errn))) return -1;
        snprintf(path, sizeof path, "%s/queries_%02u.npy", dir, ids[i]);
        FILE *qf = fopen(path, "rb");
        if (!qf) {
            snprintf(err, errn, "%.300s missing: the dump has no queries (kvq generate --dump-kv of "
                                "this version writes them)", path);
            return -1;
        }
        fclose(qf);
        if (!(L->q = read_npy3(path, sq, err, errn))) return -1;
        if (memcmp(sk, sv, sizeof sk) || sq[0] != sk[0] || sq[2] != sk[2] || sq[1] % sk[1] ||
            sk[2] % 32 || sk[2] > 4096 || sk[1] > 4096 || sq[1] > 65536) {
            snprintf(err, errn, "layer %u: shapes keys (%zu,%zu,%zu) values (%zu,%zu,%zu) queries "
                     "(%zu,%zu,%zu) do not fit together (head_dim a multiple of 32, query heads a "
                     "multiple of KV heads)", ids[i], sk[0], sk[1], sk[2], sv[0], sv[1], sv[2],
                     sq[0], sq[1], sq[2]);
            return -1;
        }
        if (i == 0) {
            D->n_kv = (uint32_t)sk[1];
            D->dim = (uint32_t)sk[2];
            D->n_q = (uint32_t)sq[1];
            D->n = n_want && n_want < sk[0] ? n_want : sk[0];
        } else if (sk[1] != D->n_kv || sk[2] != D->dim || sq[1] != D->n_q || sk[0] < D->n) {
            snprintf(err, errn, "layer %u: shape differs from layer %u", ids[i], ids[0]);
            return -1;
        }
        if (D->n < 2 * nq) {
            snprintf(err, errn, "%zu tokens: too few", D->n);
            return -1;
        }
        /* the queries at the measured positions move to the front (qpos[j] >= j) */
        D->nq = nq;
        if (!D->qpos && set_query_positions(D)) {
            snprintf(err, errn, "out of memory");
            return -1;
        }
        /* the queries at the measured positions apart; all of them stay for the cache */
        size_t qrow = (size_t)D->n_q * D->dim;
        L->q_all = L->q;
        L->q = malloc(D->nq * qrow * sizeof(float));
        L->ref = malloc(D->nq * qrow * sizeof(float));
        if (!L->q || !L->ref) {
            snprintf(err, errn, "out of memory");
            return -1;
        }
        for (size_t j = 0; j < D->nq; j++) memcpy(L->q + j * qrow, L->q_all + D->qpos[j] * qrow, qrow * sizeof(float));
    }
    D->n_fit_layers = n_found; /* the model's layers, for the ctx@8GiB column */
    return 0;
}

static void free_kv(kv_data *D) {
    for (uint32_t i = 0; D->layers && i < D->n_layers; i++) {
        free(D->layers[i].k);
        free(D->layers[i].v);
        free(D->layers[i].q);
        free(D->layers[i].q_all);
        free(D->layers[i].ref);
    }
    free(D->layers);
    D->layers = NULL;
    free(D->qpos);
    D->qpos = NULL;
}

/* ------------------------------------------------------------------ methods */

/* A key/value pair, optionally with its own cache options: "K/V@window=20,outliers=2"
 * (-1: the command line's --window / --outliers). */
typedef struct method_spec {
    char key[256], value[256];
    long window, outliers, sink, center, chunk;
    size_t calibrate; /* --calibrate: tokens the calibrated methods learn from (0 = none) */
    float rope_base;  /* @rope_base=: channel keys before RoPE (0: not given; joins the key spec) */
    long rope;        /* @rope=: KVQ_ROPE_NEOX or KVQ_ROPE_INTERLEAVED (-1: not given; as well) */
} method_spec;

/* The cache options after '@' (kvq_cache_options_parse: window, sink, outliers, center,
 * chunk); those given override the preset's and the command line's. 0 and a message in
 * err on a bad one. */
static int parse_cache_opts(const char *s, method_spec *m, char *err, size_t errn) {
    kvq_cache_config c;
    memset(&c, 0xff, sizeof c); /* UINT32_MAX: not given */
    c.key.method = KVQ_METHOD_CHANNEL; /* (rope_base and rope join the key spec: its parse checks them) */
    c.key.rope_base = 0.0f;
    if (kvq_cache_options_parse(s, &c, err, errn) != KVQ_OK) return 0;
    if (c.key.rope_base > 0.0f) m->rope_base = c.key.rope_base;
    if (c.key.rope_pairing != UINT32_MAX) m->rope = (long)c.key.rope_pairing;
    if (c.window != UINT32_MAX) m->window = c.window;
    if (c.n_outliers != UINT32_MAX) m->outliers = c.n_outliers;
    if (c.n_sink != UINT32_MAX) m->sink = c.n_sink;
    if (c.center_keys != UINT32_MAX) m->center = c.center_keys;
    if (c.chunk_tokens != UINT32_MAX) m->chunk = c.chunk_tokens;
    return 1;
}

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
        out[i].window = out[i].outliers = out[i].sink = -1;
        out[i].center = 0;
        out[i].chunk = 0;
        out[i].rope_base = 0.0f;
        out[i].rope = -1;
        char *at = strchr(joined[i], '@'), opts[512] = "";
        if (at) {
            *at = 0;
            snprintf(opts, sizeof opts, "%s", at + 1);
        }
        const kvq_cache_preset *pr = kvq_cache_preset_get(joined[i]);
        if (pr) { /* a preset: its specs and options; options after '@' override them */
            out[i].window = pr->window;
            out[i].outliers = pr->n_outliers;
            out[i].sink = pr->n_sink;
            out[i].center = pr->center_keys;
            out[i].chunk = pr->chunk_tokens;
            if (strlen(pr->key_spec) + strlen(pr->value_spec) + 2 > sizeof joined[0]) return -1;
            strcpy(joined[i], pr->key_spec);
            strcat(joined[i], "/");
            strcat(joined[i], pr->value_spec);
        }
        if (at) {
            char why[200] = "";
            if (!parse_cache_opts(opts, &out[i], why, sizeof why)) {
                snprintf(err, errn, "'%.200s@%.200s': %s", joined[i], opts, why);
                return -1;
            }
        }
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
        if (out[i].rope_base > 0.0f || out[i].rope >= 0) { /* shown with the key spec */
            char extra[64] = "";
            if (out[i].rope_base > 0.0f) snprintf(extra, sizeof extra, "rope_base=%.9g", (double)out[i].rope_base);
            if (out[i].rope >= 0)
                snprintf(extra + strlen(extra), sizeof extra - strlen(extra), "%srope=%s", *extra ? "," : "",
                         out[i].rope == KVQ_ROPE_NEOX ? "neox" : "interleaved");
            size_t l = strlen(out[i].key);
            snprintf(out[i].key + l, sizeof out[i].key - l, "%s%s", strchr(out[i].key, ':') ? "," : ":", extra);
        }
    }
    return n;
}

typedef struct result {
    int ok;
    char error[200];
    double key_bits, value_bits, total_bits, compression, key_cosine, attn_err, attn_err_max;
    uint32_t worst_layer;
    double encode_mvps, attend_ms, attend_cpu_ms, attend_mtps;
    double attend_gbs; /* bytes a decode step must read (codes, window, sinks) per second */
    uint64_t fit_tokens, bytes;
} result;

static double key_cosine(const kvq_config *kc, const float *k, size_t n_vec, uint32_t dim, int *ok) {
    kvq_quantizer *qz;
    *ok = 0;
    if (kvq_quantizer_create(kc, &qz) != KVQ_OK) return 0;
    size_t cs = kvq_code_size(qz);
    uint8_t *codes = malloc(n_vec * cs);
    float *dec = malloc(n_vec * dim * sizeof(float));
    double sum = 0;
    if (codes && dec && kvq_encode(qz, k, n_vec, codes) == KVQ_OK &&
        kvq_decode(qz, codes, n_vec, dec) == KVQ_OK) {
        for (size_t i = 0; i < n_vec; i++) {
            double d = 0, a = 0, b = 0;
            for (uint32_t j = 0; j < dim; j++) {
                double x = k[i * dim + j], y = dec[i * dim + j];
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

/* ------------------------------------------------------------ read ceiling */

/* The rate one thread (or several, each on its own slice) streams a buffer far larger than
 * the caches, bound by the loads alone: eight independent 64-bit sums, and where the CPU
 * has them four independent 256-bit (AVX2) or 512-bit (AVX-512) sums. The ceiling is the
 * fastest of these: on a Zen 5 core the 64-bit loop reads 18-28 GB/s and the 512-bit one
 * 32-35, and a ceiling the kernels can pass (fp16 attention read at 101 % of the 64-bit
 * one) is no ceiling. */
typedef struct read_job {
    const uint64_t *p;
    size_t n; /* a multiple of 32 */
    int width; /* 64, 256 or 512 bits a load */
    uint64_t sum;
} read_job;

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static uint64_t read_sum_512(const uint64_t *p, size_t n) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (size_t i = 0; i < n; i += 32) {
        a = _mm512_add_epi64(a, _mm512_load_si512((const void *)(p + i)));
        b = _mm512_add_epi64(b, _mm512_load_si512((const void *)(p + i + 8)));
        c = _mm512_add_epi64(c, _mm512_load_si512((const void *)(p + i + 16)));
        d = _mm512_add_epi64(d, _mm512_load_si512((const void *)(p + i + 24)));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d)));
}
__attribute__((target("avx2"))) static uint64_t read_sum_256(const uint64_t *p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i < n; i += 16) {
        a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *)(const void *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *)(const void *)(p + i + 4)));
        c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i *)(const void *)(p + i + 8)));
        d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i *)(const void *)(p + i + 12)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    uint64_t l[4];
    _mm256_storeu_si256((__m256i *)(void *)l, s);
    return l[0] + l[1] + l[2] + l[3];
}
#endif

static void *read_slice(void *arg) {
    read_job *j = arg;
#if defined(__x86_64__) && defined(__GNUC__)
    if (j->width == 512) {
        j->sum = read_sum_512(j->p, j->n);
        return NULL;
    }
    if (j->width == 256) {
        j->sum = read_sum_256(j->p, j->n);
        return NULL;
    }
#endif
    uint64_t a[8] = {0};
    for (size_t i = 0; i + 8 <= j->n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += j->p[i + k];
    j->sum = a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
    return NULL;
}

/* The widest load the CPU has (64 where no vector loop is built for it). */
static int read_width(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (kvq_isa_available(KVQ_ISA_AVX512)) return 512;
    if (kvq_isa_available(KVQ_ISA_AVX2)) return 256;
#endif
    return 64;
}

/* GB/s read by `threads` threads over `bytes`: the best of 3 passes of the widest loads
 * and 3 of the 64-bit ones, alternated; 0 when it cannot run. */
static double read_ceiling(size_t bytes, unsigned threads) {
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
    size_t n = bytes / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(64, n * sizeof *buf);
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9E3779B97F4A7C15ull;
    read_job jobs[256];
    pthread_t th[256];
    double best = 0;
    volatile uint64_t sink = 0;
    int wide = read_width();
    for (int pass = 0; pass < 6; pass++) {
        size_t per = n / threads / 32 * 32;
        double t0 = kvq_cli_now_s();
        unsigned started = 0;
        for (unsigned t = 0; t < threads; t++) {
            jobs[t].p = buf + t * per;
            jobs[t].n = per;
            jobs[t].width = pass % 2 ? 64 : wide;
            if (t == 0 || pthread_create(&th[t], NULL, read_slice, &jobs[t]) == 0) started++;
            else break;
        }
        read_slice(&jobs[0]);
        for (unsigned t = 1; t < started; t++) pthread_join(th[t], NULL);
        double dt = kvq_cli_now_s() - t0;
        for (unsigned t = 0; t < started; t++) sink ^= jobs[t].sum;
        double gbs = dt > 0 ? (double)(per * started * sizeof(uint64_t)) / dt * 1e-9 : 0;
        if (gbs > best) best = gbs;
    }
    (void)sink;
    free(buf);
    return best;
}

/* One method over every layer of D: attention error pooled over layers (sum of squared
 * errors over sum of squared reference outputs) and the worst layer's; decode time per
 * layer (median of reps, averaged over layers); bits from the cache's own accounting
 * (codes, outlier channels and exact window: everything that grows with the context). */
static void run_method(const method_spec *m, const kv_data *D, uint32_t window, uint32_t n_out,
                       uint32_t n_sink, uint64_t seed, int reps, kvq_threadpool *pool, result *r) {
    memset(r, 0, sizeof *r);
    size_t n = D->n, nq = D->nq, out_floats = nq * D->n_q * D->dim;
    kvq_cache_config cfg;
    char msg[200] = "";
    kvq_status st = kvq_cache_config_init(&cfg, D->n_kv, D->dim, m->key, m->value, msg, sizeof msg);
    if (st != KVQ_OK) {
        snprintf(r->error, sizeof r->error, "%s", msg[0] ? msg : kvq_strerror(st));
        return;
    }
    cfg.key.seed = cfg.value.seed = seed;
    cfg.window = window;
    cfg.n_outliers = n_out;
    cfg.n_sink = n_sink;
    cfg.center_keys = (uint32_t)m->center;
    if (m->chunk) cfg.chunk_tokens = (uint32_t)m->chunk;
    /* channel keys before RoPE on synthetic KV: the data's own RoPE (base 500000, NeoX
     * pairs) replaces the spec's, as the engine takes the model's */
    if (cfg.key.method == KVQ_METHOD_CHANNEL && cfg.key.rope_base > 0.0f && D->n_layers && !D->layers[0].q_all) {
        cfg.key.rope_base = 500000.0f;
        cfg.key.rope_pairing = KVQ_ROPE_NEOX;
    }
    float *out = malloc(out_floats * sizeof(float));
    if (!out) {
        snprintf(r->error, sizeof r->error, "%s", kvq_strerror(KVQ_ERR_NOMEM));
        return;
    }
    float scale = 1.0f / sqrtf((float)D->dim);
    kvq_bench_calib bc;
    memset(&bc, 0, sizeof bc);
    kvq_config key_spec = cfg.key, value_spec = cfg.value, key_l0 = cfg.key, value_l0 = cfg.value;
    double num_all = 0, den_all = 0, t_enc = 0, t_att = 0, t_cpu = 0, grow_bytes = 0;
    if (reps > 64) reps = 64;
    for (uint32_t li = 0; li < D->n_layers; li++) {
        const kv_layer *L = &D->layers[li];
        kvq_cache *c;
        if (m->calibrate) { /* learned from this layer's first tokens */
            char tag[32];
            size_t nc = m->calibrate < n ? m->calibrate : n;
            cfg.key = key_spec;
            cfg.value = value_spec;
            snprintf(tag, sizeof tag, "k%u", li);
            st = kvq_bench_calibrate(&bc, &cfg.key, L->k, nc, D->n_kv, D->dim, 1, tag);
            snprintf(tag, sizeof tag, "v%u", li);
            if (st == KVQ_OK) st = kvq_bench_calibrate(&bc, &cfg.value, L->v, nc, D->n_kv, D->dim, 0, tag);
            if (st != KVQ_OK) break;
            if (li == 0) key_l0 = cfg.key, value_l0 = cfg.value;
        }
        if ((st = kvq_cache_create(&cfg, &c)) != KVQ_OK) break;
        /* decode-style: each query attends when exactly the tokens it sees are in the
         * cache, so the exact window holds its own most recent tokens */
        size_t have = 0, row = (size_t)D->n_kv * D->dim, qrow = (size_t)D->n_q * D->dim;
        for (size_t i = 0; i < nq && st == KVQ_OK; i++) {
            /* channel keys weigh their bits by the queries seen before chunk 0 is coded */
            if (L->q_all) st = kvq_cache_observe_queries(c, L->q_all + have * qrow, D->n_q, D->qpos[i] + 1 - have);
            if (st != KVQ_OK) break;
            double t0 = kvq_cli_now_s();
            st = kvq_cache_append(c, L->k + have * row, L->v + have * row, D->qpos[i] + 1 - have);
            t_enc += kvq_cli_now_s() - t0;
            have = D->qpos[i] + 1;
            if (st == KVQ_OK)
                st = kvq_cache_attend(c, L->q + i * qrow, D->n_q, 1, scale, pool, out + i * qrow);
        }
        if (st != KVQ_OK) {
            kvq_cache_free(c);
            break;
        }
        double num = 0, den = 0;
        for (size_t i = 0; i < out_floats; i++) {
            double e = (double)out[i] - L->ref[i];
            num += e * e, den += (double)L->ref[i] * L->ref[i];
        }
        num_all += num, den_all += den;
        double e = den > 0 ? sqrt(num / den) : 0;
        if (e > r->attn_err_max) {
            r->attn_err_max = e;
            r->worst_layer = L->id;
        }
        /* decode step: the last query (all n tokens visible), median of reps */
        double times[64], cpu[64];
        const float *q_last = L->q + (nq - 1) * D->n_q * D->dim;
        for (int i = 0; i < reps; i++) {
            double a = kvq_cli_now_s(), ac = cpu_s();
            kvq_cache_attend(c, q_last, D->n_q, 1, scale, pool, out);
            times[i] = kvq_cli_now_s() - a;
            cpu[i] = cpu_s() - ac;
        }
        qsort(times, (size_t)reps, sizeof times[0], cmp_double);
        qsort(cpu, (size_t)reps, sizeof cpu[0], cmp_double);
        t_att += times[reps / 2];
        t_cpu += cpu[reps / 2];
        kvq_cache_memory_info mem;
        if (kvq_cache_memory(c, &mem) == KVQ_OK) {
            r->bytes += mem.total;
            /* the coded outlier values, not the fixed staging and channel lists */
            grow_bytes += (double)(mem.key_codes + mem.value_codes + mem.window) +
                          2.0 * (double)n * D->n_kv * n_out;
        }
        kvq_cache_free(c);
    }
    free(out);
    if (st != KVQ_OK) {
        snprintf(r->error, sizeof r->error, "%s", kvq_strerror(st));
        kvq_bench_calib_cleanup(&bc);
        return;
    }
    if (bc.n_fits) {
        cfg.key = key_l0; /* the sizes and key cosine below: layer 0's artifacts */
        cfg.value = value_l0;
        fprintf(stderr, "kvq bench: %s / %s fitted on the first %zu tokens of each layer (%zu fits, %.2f s)\n",
                m->key, m->value, m->calibrate < n ? m->calibrate : n, bc.n_fits, bc.fit_s);
    }
    r->attn_err = den_all > 0 ? sqrt(num_all / den_all) : 0;
    r->attend_ms = t_att / D->n_layers * 1e3;
    r->attend_cpu_ms = t_cpu / D->n_layers * 1e3;
    r->attend_mtps = (double)n / (t_att / D->n_layers) * 1e-6;
    r->attend_gbs = t_att > 0 ? grow_bytes / t_att * 1e-9 : 0;
    r->encode_mvps = 2.0 * (double)n * D->n_kv * D->n_layers / t_enc * 1e-6;
    r->total_bits = 8.0 * grow_bytes / (2.0 * (double)n * D->n_kv * D->dim * D->n_layers);

    kvq_quantizer *kq, *vq;
    kvq_config kc = cfg.key, vc = cfg.value;
    kc.dim = vc.dim = D->dim;
    if (kc.method == KVQ_METHOD_CHANNEL) {
        /* cache keys per channel over a chunk: bits per code plus an fp16 minimum and step
         * per channel and chunk (the per-vector quantizer's size would mislead) */
        r->key_bits = (double)kc.bits + 32.0 / (cfg.chunk_tokens ? cfg.chunk_tokens : 64);
    } else if (kvq_quantizer_create(&kc, &kq) == KVQ_OK) {
        r->key_bits = 8.0 * (double)kvq_code_size(kq) / D->dim;
        kvq_quantizer_free(kq);
    }
    if (kvq_quantizer_create(&vc, &vq) == KVQ_OK) {
        r->value_bits = 8.0 * (double)kvq_code_size(vq) / D->dim;
        kvq_quantizer_free(vq);
    }
    r->compression = 16.0 / r->total_bits;
    int cos_ok;
    size_t n_vec = n * D->n_kv < 8192 ? n * D->n_kv : 8192;
    r->key_cosine = key_cosine(&kc, D->layers[0].k, n_vec, D->dim, &cos_ok);
    /* comm_vq codes keys before RoPE at their positions, channel keys over a chunk of
     * tokens: the one-vector-at-a-time cosine above would measure something else */
    if (!cos_ok || kc.method == KVQ_METHOD_COMM_VQ || kc.method == KVQ_METHOD_CHANNEL) r->key_cosine = NAN;
    kvq_cache_tokens_fit(&cfg, D->n_fit_layers, BUDGET_BYTES, &r->fit_tokens);
    kvq_bench_calib_cleanup(&bc);
    r->ok = 1;
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

/* "all" or a list like 0,5,29 */
static int parse_layers(const char *s, uint32_t *ids, uint32_t cap, uint32_t *n) {
    *n = 0;
    if (!strcmp(s, "all")) return 1;
    char buf[4096];
    if (strlen(s) >= sizeof buf) return 0;
    strcpy(buf, s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        uint64_t x;
        if (!parse_u64(tok, &x) || x >= MAX_LAYERS || *n == cap) return 0;
        ids[(*n)++] = (uint32_t)x;
    }
    return *n > 0;
}

static int make_synthetic(size_t n, size_t nq, uint64_t seed, kv_data *D) {
    D->n_kv = N_KV, D->dim = HEAD_DIM, D->n_q = N_Q_HEADS, D->n_fit_layers = LLAMA_LAYERS;
    D->n = n, D->nq = nq, D->n_layers = 1;
    D->layers = calloc(1, sizeof *D->layers);
    if (!D->layers) return -1;
    kv_layer *L = D->layers;
    L->k = malloc(n * N_KV * HEAD_DIM * sizeof(float));
    L->v = malloc(n * N_KV * HEAD_DIM * sizeof(float));
    L->q = malloc(nq * N_Q_HEADS * HEAD_DIM * sizeof(float));
    L->ref = malloc(nq * N_Q_HEADS * HEAD_DIM * sizeof(float));
    if (!L->k || !L->v || !L->q || !L->ref || set_query_positions(D)) return -1;
    make_kv(n, nq, D->qpos, seed, L->k, L->v, L->q);
    return 0;
}

int kvq_cmd_bench(int argc, char **argv) {
    const char *methods = NULL, *kv_dir = NULL, *layer_list = NULL;
    uint64_t tokens = 0, threads = 1, seed = 1, window = 0, outliers = 0, queries = N_QUERIES;
    uint64_t sink = 0, calibrate = 0;
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
        } else if (!strcmp(a, "--kv") && val) {
            kv_dir = val;
            i++;
        } else if (!strcmp(a, "--layers") && val) {
            layer_list = val;
            i++;
        } else if (val && (!strcmp(a, "--tokens") || !strcmp(a, "--threads") || !strcmp(a, "-t") ||
                           !strcmp(a, "--seed") || !strcmp(a, "-s") || !strcmp(a, "--queries") ||
                           !strcmp(a, "--calibrate") || !strcmp(a, "--window") || !strcmp(a, "--cache-window") ||
                           !strcmp(a, "--outliers") || !strcmp(a, "--cache-outliers") || !strcmp(a, "--sink") ||
                           !strcmp(a, "--cache-sink"))) {
            int bad;
            if (!strcmp(a, "--tokens")) bad = kvq_arg_u64("bench", a, val, 16, 1u << 22, &tokens);
            else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) bad = kvq_arg_u64("bench", a, val, 0, 1024, &threads);
            else if (!strcmp(a, "--seed") || !strcmp(a, "-s")) bad = kvq_arg_u64("bench", a, val, 0, UINT64_MAX, &seed);
            else if (!strcmp(a, "--queries")) bad = kvq_arg_u64("bench", a, val, 1, 4096, &queries);
            else if (!strcmp(a, "--calibrate")) bad = kvq_arg_u64("bench", a, val, 0, 1u << 22, &calibrate);
            else if (!strcmp(a, "--window") || !strcmp(a, "--cache-window"))
                bad = kvq_arg_u64("bench", a, val, 0, 1u << 22, &window);
            else if (!strcmp(a, "--outliers") || !strcmp(a, "--cache-outliers"))
                bad = kvq_arg_u64("bench", a, val, 0, 4096, &outliers);
            else bad = kvq_arg_u64("bench", a, val, 0, 1024, &sink);
            if (bad) return 1;
            i++;
        } else {
            fprintf(stderr, "kvq bench: bad option '%s'%s (try kvq bench --help)\n", a,
                    val ? "" : " or missing value");
            return 1;
        }
    }
    if (tokens == 0 && !kv_dir) tokens = quick ? 1024 : 4096;
    if ((tokens && (tokens < 16 || tokens > (1u << 22))) || threads > 1024 || queries < 1 ||
        queries > 4096 || (tokens && 2 * queries > tokens)) {
        fprintf(stderr, "kvq bench: --tokens must be 16..4194304, --threads <= 1024, --queries "
                        "1..4096 and at most half the tokens\n");
        return 1;
    }
    uint32_t layer_ids[MAX_LAYERS], n_layer_ids = 0;
    if (layer_list && (!kv_dir || !parse_layers(layer_list, layer_ids, MAX_LAYERS, &n_layer_ids))) {
        fprintf(stderr, "kvq bench: --layers takes 'all' or a list like 0,7,29, with --kv\n");
        return 1;
    }
    method_spec specs[MAX_METHODS];
    int n_methods;
    char err[1200];
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

    for (int i = 0; i < n_methods; i++) {
        specs[i].calibrate = (size_t)calibrate;
        /* the synthetic keys' RoPE (base 500000, NeoX pairs) unless the spec names one */
        if (!kv_dir && !strncmp(specs[i].key, "comm_vq", 7) && !strstr(specs[i].key, "rope") &&
            strlen(specs[i].key) + 40 < sizeof specs[i].key)
            strcat(specs[i].key, strchr(specs[i].key, ':') ? ",rope_base=500000,rope=neox"
                                                            : ":rope_base=500000,rope=neox");
    }
    kv_data D;
    memset(&D, 0, sizeof D);
    kvq_threadpool *pool = NULL;
    int rc = 0;
    if (kv_dir) {
        if (load_real_kv(kv_dir, n_layer_ids ? layer_ids : NULL, n_layer_ids, (size_t)tokens,
                         (size_t)queries, &D, err, sizeof err)) {
            fprintf(stderr, "kvq bench: --kv: %s\n", err);
            rc = 1;
            goto done;
        }
    } else if (make_synthetic((size_t)tokens, (size_t)queries, seed, &D)) {
        rc = kvq_cli_fail("bench", "synthetic KV", KVQ_ERR_NOMEM);
        goto done;
    }
    if (window > D.n || outliers >= D.dim) {
        fprintf(stderr, "kvq bench: --window must be <= the tokens, --outliers < head_dim (%u)\n",
                D.dim);
        rc = 1;
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
    /* the read ceiling of one core and of the attend threads, in this run */
    unsigned attend_threads = pool ? kvq_threadpool_size(pool) : 1;
    size_t probe_bytes = quick ? (size_t)64 << 20 : (size_t)256 << 20;
    double ceil_one = read_ceiling(probe_bytes, 1);
    double ceil_all = attend_threads > 1 ? read_ceiling(probe_bytes, attend_threads) : ceil_one;
    double ceiling = attend_threads > 1 ? ceil_all : ceil_one;
    for (uint32_t li = 0; li < D.n_layers; li++)
        if (ref_attend(&D, &D.layers[li], 1.0f / sqrtf((float)D.dim))) {
            rc = kvq_cli_fail("bench", "reference attention", KVQ_ERR_NOMEM);
            goto done;
        }

    int reps = quick ? 3 : 9;
    if (!json) {
        if (kv_dir)
            printf("kvq bench: real KV from %s: %u layer(s), %zu tokens, %u KV heads x %u dims, "
                   "%u query heads, %s kernels, %llu thread(s)\n",
                   kv_dir, D.n_layers, D.n, D.n_kv, D.dim, D.n_q, kvq_cpu_isa(),
                   (unsigned long long)(pool ? kvq_threadpool_size(pool) : 1));
        else
            printf("kvq bench: synthetic KV, %zu tokens, %u KV heads x %u dims, %u query heads, "
                   "%s kernels, %llu thread(s)\n",
                   D.n, D.n_kv, D.dim, D.n_q, kvq_cpu_isa(),
                   (unsigned long long)(pool ? kvq_threadpool_size(pool) : 1));
        if (window || outliers || sink)
            printf("cache: exact window %llu tokens, %llu outlier key channels per head (fp16), "
                   "%llu exact sink tokens\n", (unsigned long long)window,
                   (unsigned long long)outliers, (unsigned long long)sink);
        printf("read ceiling: one core %.1f GB/s, %u thread(s) %.1f GB/s (load loops over %zu MiB, "
               "%d-bit and 64-bit loads, best of 6)\n", ceil_one, attend_threads, ceil_all,
               probe_bytes >> 20, read_width());
        printf("%-36s %6s %6s %6s %6s %7s %9s %9s %8s %9s %7s %7s %6s %9s\n", "keys / values", "K bit",
               "V bit", "bits", "vs f16", "K cos", "attn err", "worst", "enc M/s", "attend ms", "cpu ms",
               "GB/s", "%ceil", "ctx@8GiB");
    }
    for (int i = 0; i < n_methods; i++) {
        result r;
        long w = specs[i].window >= 0 ? specs[i].window : (long)window;
        long o = specs[i].outliers >= 0 ? specs[i].outliers : (long)outliers;
        long sk = specs[i].sink >= 0 ? specs[i].sink : (long)sink;
        char name[560];
        snprintf(name, sizeof name, "%.250s / %.250s", specs[i].key, specs[i].value);
        if (specs[i].window >= 0 || specs[i].outliers >= 0 || specs[i].sink >= 0)
            snprintf(name + strlen(name), sizeof name - strlen(name), " w%ld o%ld s%ld", w, o, sk);
        if ((size_t)w > D.n || (uint64_t)o >= D.dim || sk > 1024) {
            printf("%-36s unavailable: window above the tokens, outliers >= head_dim or sink > "
                   "1024\n", name);
            continue;
        }
        run_method(&specs[i], &D, (uint32_t)w, (uint32_t)o, (uint32_t)sk, seed, reps, pool, &r);
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
            printf(",\"data\":\"%s\",\"layers\":%u,\"tokens\":%zu,\"window\":%ld,\"sink\":%ld,"
                   "\"outliers\":%ld,\"key_bits\":%.4f,\"value_bits\":%.4f,\"bits\":%.4f,"
                   "\"compression\":%.3f,",
                   kv_dir ? "real" : "synthetic", D.n_layers, D.n, w, sk, o, r.key_bits, r.value_bits,
                   r.total_bits, r.compression);
            if (isnan(r.key_cosine)) printf("\"key_cosine\":null,");
            else printf("\"key_cosine\":%.5f,", r.key_cosine);
            printf("\"attn_rel_err\":%.6g,\"attn_rel_err_worst_layer\":%.6g,\"worst_layer\":%u,"
                   "\"encode_mvec_s\":%.3f,\"attend_ms\":%.4f,\"attend_cpu_ms\":%.4f,"
                   "\"attend_mtok_s\":%.3f,\"attend_gb_s\":%.6g,\"read_ceiling_gb_s\":%.6g,"
                   "\"read_load_bits\":%d,\"attend_pct_of_ceiling\":%.2f,\"cache_bytes\":%llu,\"tokens_8gib\":%llu}\n",
                   r.attn_err, r.attn_err_max, r.worst_layer, r.encode_mvps, r.attend_ms, r.attend_cpu_ms,
                   r.attend_mtps, r.attend_gbs, ceiling, read_width(),
                   ceiling > 0 ? 100.0 * r.attend_gbs / ceiling : 0.0, (unsigned long long)r.bytes, (unsigned long long)r.fit_tokens);
        } else if (!r.ok) {
            printf("%-36s unavailable: %s\n", name, r.error);
        } else {
            char cosbuf[16];
            if (isnan(r.key_cosine)) snprintf(cosbuf, sizeof cosbuf, "-");
            else snprintf(cosbuf, sizeof cosbuf, "%.4f", r.key_cosine);
            printf("%-36s %6.2f %6.2f %6.2f %5.2fx %7s %9.5f %9.5f %8.2f %9.3f %7.3f %7.2f %5.1f%% %9llu\n",
                   name, r.key_bits, r.value_bits, r.total_bits, r.compression, cosbuf, r.attn_err,
                   r.attn_err_max, r.encode_mvps, r.attend_ms, r.attend_cpu_ms, r.attend_gbs,
                   ceiling > 0 ? 100.0 * r.attend_gbs / ceiling : 0.0, (unsigned long long)r.fit_tokens);
        }
        fflush(stdout);
    }
    if (!json)
        printf("\nbits: everything that grows with the context (codes with their norms and scales, "
               "fp16 outlier channels, the exact window and sinks) per element; attn err: relative L2 error of "
               "the attention output against fp32 (%zu decode steps over the second half of the "
               "context, each attending to exactly the tokens before it), pooled over the "
               "layers; worst: the worst layer's; attend: one decode step of one layer, all query "
               "heads, median of %d (wall; cpu ms: the process CPU time of the step, all threads, "
               "steadier when other jobs share the CPUs); GB/s: the bytes that step reads (codes, window, sinks, outlier "
               "channels) per second, and %%ceil that rate against the read ceiling above; "
               "ctx@8GiB: tokens of %u layers of this shape in 8 GiB.\n",
               D.nq, reps, D.n_fit_layers);
done:
    kvq_threadpool_free(pool);
    free_kv(&D);
    return rc;
}
