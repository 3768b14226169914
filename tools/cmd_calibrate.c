/* cmd_calibrate.c - `kvq calibrate`: fit a calibrated method (vecinfer, spectral, comm_vq)
 * on keys captured from a GGUF model running a text, or on keys from a safetensors file
 * [rows][head_dim] for users of other engines, and save the artifact; or probe each
 * layer's sensitivity and save a RateQuant plan (bits per layer at a target average). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli.h"
#include "layer_set.h"

#define CAL_BATCH 64
#define CAL_MAX_CHOICES 8

static int cal_usage(FILE *f) {
    fprintf(f,
            "usage: kvq calibrate --method M -o OUT.safetensors (-m MODEL.gguf -f TEXT | --keys KEYS.safetensors)\n\n"
            "  --method M         vecinfer | spectral | comm_vq | ratequant\n"
            "  -o, --output FILE  artifact (vecinfer, spectral, comm_vq) or RateQuant plan\n"
            "  -m, --model FILE   GGUF model: keys are captured while it reads the text\n"
            "  -f, --file TEXT    UTF-8 text the model reads\n"
            "  --keys FILE        calibration keys instead of a model: a safetensors file with one\n"
            "                     2-D tensor [rows][head_dim] (F32/F16/BF16; comm_vq: keys before RoPE)\n"
            "  --tensor NAME      the tensor in --keys (default: the only one, or \"keys\")\n"
            "  --bits B           vecinfer: codebook bits per sub-vector (default 8 = 1 bit/element);\n"
            "                     spectral: average bits per coordinate (default 2);\n"
            "                     comm_vq: bits per codebook index (default 8)\n"
            "  --spec OPTS        more key=value options of the method (e.g. sub_dim=4,n_codebooks=2)\n"
            "  -s, --seed S       seed of k-means and rotations, 0..2^64-1 (default 0)\n"
            "  --tokens N         tokens of the text the model reads, 2..65536 (default 512)\n"
            "  --layer L|all      model layer whose keys are used (default all: every layer, every head)\n"
            "  --holdout PCT      rows kept out of the fit to measure quality, 0..50 (default 10)\n"
            "  --save-keys FILE   also write the captured keys [rows][head_dim] as safetensors\n"
            "  --per-layer        one artifact per layer: OUT.layerNN.safetensors, then the manifest\n"
            "                     OUT.layers.manifest (sizes and checksums) written last, atomically:\n"
            "                     generate and perplexity refuse a set that does not match it\n"
            "  --eval N           then run the next N tokens of the text with these keys in every layer\n"
            "                     (values fp16) and print the output's KL divergence from fp16 keys,\n"
            "                     beside turboquant_mse at the same bits\n"
            "  -t, --threads N    model threads, 0..1024 (default 0 = one per CPU)\n"
            "ratequant only (-m MODEL -f TEXT, or --sensitivities FILE):\n"
            "  --sensitivities F  one sensitivity per layer (text, e.g. measured with another engine)\n"
            "  --key-spec SPEC    key quantizer the plan sets bits of (default turboquant_rvq)\n"
            "  --choices LIST     allowed bits, ascending (default 1,2,3,4)\n"
            "  --target B         average bits per layer (default 1.5)\n"
            "Progress goes to stderr; a summary (time, quality, sizes) to stdout.\n");
    return f == stderr ? 1 : 0;
}

/* ------------------------------------------------------------- key capture */

typedef struct capture {
    long layer;         /* -1: every layer */
    uint32_t n_kv_heads, head_dim;
    int unrope;         /* comm_vq learns keys before RoPE: undo it at each position */
    int neox;
    double rope_base;
    float *rows;        /* [n_rows][head_dim] */
    uint32_t *row_layer; /* [n_rows] */
    size_t n_rows, cap_rows;
    int failed;
} capture;

static void unrope(float *x, uint32_t d, int neox, double base, size_t pos) {
    for (uint32_t j = 0; j < d / 2; j++) {
        uint32_t a = neox ? j : 2 * j, b = neox ? j + d / 2 : 2 * j + 1;
        double phi = -(double)pos * pow(base, -2.0 * j / d), c = cos(phi), s = sin(phi);
        double xa = x[a], xb = x[b];
        x[a] = (float)(xa * c - xb * s);
        x[b] = (float)(xa * s + xb * c);
    }
}

static void observe(void *user, uint32_t layer, size_t pos, const float *k, const float *v,
                    size_t n_tokens) {
    (void)v;
    capture *c = user;
    if (c->failed || (c->layer >= 0 && (long)layer != c->layer)) return;
    size_t add = n_tokens * c->n_kv_heads;
    if (c->n_rows + add > c->cap_rows) {
        size_t cap = c->cap_rows ? c->cap_rows : 4096;
        while (cap < c->n_rows + add) cap *= 2;
        float *nr = realloc(c->rows, cap * c->head_dim * sizeof(float));
        if (nr) c->rows = nr;
        uint32_t *nl = nr ? realloc(c->row_layer, cap * sizeof(uint32_t)) : NULL;
        if (!nl) {
            c->failed = 1;
            return;
        }
        c->row_layer = nl;
        c->cap_rows = cap;
    }
    for (size_t t = 0; t < n_tokens; t++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++) {
            float *dst = c->rows + c->n_rows * c->head_dim;
            memcpy(dst, k + (t * c->n_kv_heads + h) * c->head_dim, c->head_dim * sizeof(float));
            if (c->unrope) unrope(dst, c->head_dim, c->neox, c->rope_base, pos + t);
            c->row_layer[c->n_rows++] = layer;
        }
}

static kvq_status run_text(kvq_model *model, const kvq_model_info *info, const int32_t *tokens,
                           size_t n, const kvq_cache_config *per_layer, kvq_kv_observer obs,
                           void *user, long threads, float *logits) {
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = (uint32_t)n;
    p.n_batch = CAL_BATCH;
    p.n_threads = (uint32_t)threads;
    p.kv_observer = obs;
    p.kv_observer_user = user;
    if (per_layer) {
        p.cache = per_layer;
        p.n_cache_configs = info->n_layers;
    }
    kvq_context *ctx = NULL;
    kvq_status st = kvq_context_create(model, &p, &ctx);
    for (size_t i = 0; st == KVQ_OK && i < n; i += CAL_BATCH) {
        size_t m = n - i < CAL_BATCH ? n - i : CAL_BATCH;
        st = kvq_context_eval(ctx, tokens + i, m, logits ? logits + i * info->n_vocab : NULL, 1);
    }
    kvq_context_free(ctx);
    return st;
}

/* Mean KL(p_ref || p) over positions, from logits [n][n_vocab]. */
static double mean_kl(const float *ref, const float *lg, size_t n, uint32_t n_vocab) {
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        const float *a = ref + i * n_vocab, *b = lg + i * n_vocab;
        double ma = a[0], mb = b[0], sa = 0, sb = 0, kl = 0;
        for (uint32_t v = 1; v < n_vocab; v++) {
            if (a[v] > ma) ma = a[v];
            if (b[v] > mb) mb = b[v];
        }
        for (uint32_t v = 0; v < n_vocab; v++) {
            sa += exp(a[v] - ma);
            sb += exp(b[v] - mb);
        }
        double la = log(sa) + ma, lb = log(sb) + mb;
        for (uint32_t v = 0; v < n_vocab; v++) {
            double pa = exp(a[v] - la);
            kl += pa * ((a[v] - la) - (b[v] - lb));
        }
        total += kl > 0 ? kl : 0;
    }
    return total / (double)n;
}

/* ------------------------------------------------------------------ main */

typedef struct cal_opts {
    const char *method, *out, *model, *text, *keys, *tensor, *spec_extra, *key_spec, *choices, *save_keys;
    const char *sens_file;
    long bits, tokens, layer, holdout, threads, eval;
    int per_layer;
    uint64_t seed;
    double target;
} cal_opts;

/* Mean KL of the model's output with every layer's keys at bits[l] against ref. */
static kvq_status plan_kl(kvq_model *model, const kvq_model_info *info, const int32_t *tokens, size_t n,
                          const char *key_spec, const uint32_t *bits, long threads, const float *ref,
                          float *lg, kvq_cache_config *per, double *kl) {
    char spec[320], msg[256];
    for (uint32_t l = 0; l < info->n_layers; l++) {
        snprintf(spec, sizeof spec, "%s%sbits=%u", key_spec, strchr(key_spec, ':') ? "," : ":", bits[l]);
        kvq_status st = kvq_cache_config_init(&per[l], info->n_kv_heads, info->head_dim, spec, "fp16", msg,
                                              sizeof msg);
        if (st) return st;
    }
    kvq_status st = run_text(model, info, tokens, n, per, NULL, NULL, threads, lg);
    if (st == KVQ_OK) *kl = mean_kl(ref, lg, n, info->n_vocab);
    return st;
}

/* "1,2,3,4" -> choices; 0 on a bad list (after a message). */
static uint32_t parse_choices(const char *list, uint32_t *choices) {
    uint32_t n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        long b = strtol(t, &end, 10);
        if (*end || n == CAL_MAX_CHOICES || b < 1 || b > 16 || (n && (uint32_t)b <= choices[n - 1])) {
            fprintf(stderr, "kvq calibrate: --choices: '%s' is not an ascending list of up to %d bit widths\n",
                    list, CAL_MAX_CHOICES);
            return 0;
        }
        choices[n++] = (uint32_t)b;
    }
    return n;
}

/* RateQuant from sensitivities measured elsewhere: a text file, one number per layer. */
static int ratequant_from_file(const cal_opts *o) {
    uint32_t choices[CAL_MAX_CHOICES], n_choices = parse_choices(o->choices, choices);
    if (!n_choices || kvq_arg_regular_file("calibrate", o->sens_file)) return 1;
    FILE *f = fopen(o->sens_file, "r");
    if (!f) {
        fprintf(stderr, "kvq calibrate: cannot read %s\n", o->sens_file);
        return 1;
    }
    size_t cap = 64, L = 0;
    double *sens = malloc(cap * sizeof(double)), v;
    int rc = 1;
    while (sens && fscanf(f, "%lf", &v) == 1) {
        if (!(v >= 0) || !isfinite(v) || L == 4096) {
            fprintf(stderr, "kvq calibrate: %s: sensitivity %zu is not a finite number >= 0 (or > 4096 layers)\n",
                    o->sens_file, L);
            goto done;
        }
        if (L == cap) {
            double *ns = realloc(sens, 2 * cap * sizeof(double));
            if (!ns) goto done;
            sens = ns;
            cap *= 2;
        }
        sens[L++] = v;
    }
    if (!sens || !feof(f) || L == 0) {
        fprintf(stderr, "kvq calibrate: %s: expected one number per layer\n", o->sens_file);
        goto done;
    }
    uint32_t *bits = malloc(L * sizeof(uint32_t));
    kvq_status st = bits ? kvq_ratequant_allocate(sens, (uint32_t)L, choices, n_choices, o->target, bits)
                         : KVQ_ERR_NOMEM;
    if (st == KVQ_OK) st = kvq_ratequant_save(o->out, o->key_spec, sens, bits, (uint32_t)L, o->target);
    if (st == KVQ_OK) {
        double total = 0;
        printf("layer  sensitivity  bits\n");
        for (size_t l = 0; l < L; l++) {
            printf("%5zu  %11.6g  %4u\n", l, sens[l], bits[l]);
            total += bits[l];
        }
        printf("ratequant: %zu layers, average %.4f bits (target %.4g) -> %s\n", L, total / (double)L, o->target,
               o->out);
        rc = 0;
    } else {
        kvq_cli_fail("calibrate", "ratequant", st);
    }
    free(bits);
done:
    free(sens);
    fclose(f);
    return rc;
}

static int ratequant(const cal_opts *o, kvq_model *model, const kvq_model_info *info,
                     const int32_t *tokens, size_t n) {
    uint32_t choices[CAL_MAX_CHOICES], n_choices = parse_choices(o->choices, choices);
    if (!n_choices) return 1;
    const uint32_t L = info->n_layers;
    char kspec[300], msg[512];
    /* the probe quantizes one layer's keys at the smallest choice */
    snprintf(kspec, sizeof kspec, "%s%sbits=%u", o->key_spec, strchr(o->key_spec, ':') ? "," : ":",
             choices[0]);
    kvq_cache_config exact, probe, *per = malloc(L * sizeof *per);
    float *ref = malloc(n * info->n_vocab * sizeof(float)), *lg = malloc(n * info->n_vocab * sizeof(float));
    double *sens = malloc(L * sizeof(double));
    uint32_t *bits = malloc(L * sizeof(uint32_t));
    int rc = 1;
    kvq_status st = KVQ_ERR_NOMEM;
    if (!per || !ref || !lg || !sens || !bits) goto done;
    if ((st = kvq_cache_config_init(&exact, info->n_kv_heads, info->head_dim, "fp16", "fp16", msg, sizeof msg)) ||
        (st = kvq_cache_config_init(&probe, info->n_kv_heads, info->head_dim, kspec, "fp16", msg, sizeof msg))) {
        fprintf(stderr, "kvq calibrate: key spec '%s': %s: %s\n", kspec, kvq_strerror(st), msg);
        goto done;
    }
    double t0 = kvq_cli_now_s();
    for (uint32_t l = 0; l < L; l++) per[l] = exact;
    fprintf(stderr, "kvq calibrate: ratequant: %zu tokens, %u layers, probe %s on one layer at a time\n",
            n, L, kspec);
    if ((st = run_text(model, info, tokens, n, per, NULL, NULL, o->threads, ref))) goto done;
    for (uint32_t l = 0; l < L; l++) {
        per[l] = probe;
        st = run_text(model, info, tokens, n, per, NULL, NULL, o->threads, lg);
        per[l] = exact;
        if (st) goto done;
        sens[l] = mean_kl(ref, lg, n, info->n_vocab);
        fprintf(stderr, "\r  layer %u/%u  KL %.3g   ", l + 1, L, sens[l]);
    }
    fprintf(stderr, "\n");
    if ((st = kvq_ratequant_allocate(sens, L, choices, n_choices, o->target, bits))) {
        fprintf(stderr, "kvq calibrate: --target %.3g must lie within the choices %u..%u\n", o->target,
                choices[0], choices[n_choices - 1]);
        goto done;
    }
    if ((st = kvq_ratequant_save(o->out, o->key_spec, sens, bits, L, o->target))) goto done;
    double probe_s = kvq_cli_now_s() - t0;
    /* the plan against the same total spread without the sensitivities (equal weights: the
     * extra bits go to the first layers) */
    double kl_plan = 0, kl_flat = 0;
    uint32_t *flat = malloc(L * sizeof(uint32_t));
    double *ones = malloc(L * sizeof(double));
    if (!flat || !ones) st = KVQ_ERR_NOMEM;
    for (uint32_t l = 0; st == KVQ_OK && l < L; l++) ones[l] = 1.0;
    if (st == KVQ_OK) st = kvq_ratequant_allocate(ones, L, choices, n_choices, o->target, flat);
    if (st == KVQ_OK)
        st = plan_kl(model, info, tokens, n, o->key_spec, bits, o->threads, ref, lg, per, &kl_plan);
    if (st == KVQ_OK)
        st = plan_kl(model, info, tokens, n, o->key_spec, flat, o->threads, ref, lg, per, &kl_flat);
    free(flat);
    free(ones);
    if (st) goto done;
    double smin = sens[0], smax = sens[0], total = 0;
    printf("layer  sensitivity(KL)  bits\n");
    for (uint32_t l = 0; l < L; l++) {
        printf("%5u  %15.6g  %4u\n", l, sens[l], bits[l]);
        smin = fmin(smin, sens[l]);
        smax = fmax(smax, sens[l]);
        total += bits[l];
    }
    printf("ratequant: %u layers, average %.4f bits (target %.4g), sensitivity ratio %.2f, probe %.1f s -> %s\n",
           L, total / L, o->target, smin > 0 ? smax / smin : INFINITY, probe_s, o->out);
    printf("output KL vs fp16 keys: RateQuant plan %.5f, same bits without sensitivities %.5f\n", kl_plan,
           kl_flat);
    rc = 0;
done:
    if (rc && st) kvq_cli_fail("calibrate", "ratequant", st);
    free(per);
    free(ref);
    free(lg);
    free(sens);
    free(bits);
    return rc;
}

/* Relative squared error and mean relative inner-product error on held-out rows. */
static kvq_status quality(const kvq_quantizer *q, const float *x, size_t n, uint32_t d, double *mse,
                          double *ip) {
    uint8_t *codes = malloc(n * kvq_code_size(q));
    float *y = malloc(n * d * sizeof(float));
    kvq_status st = codes && y ? kvq_encode(q, x, n, codes) : KVQ_ERR_NOMEM;
    if (st == KVQ_OK) st = kvq_decode(q, codes, n, y);
    double num = 0, den = 0, ipe = 0, ipd = 0;
    for (size_t i = 0; st == KVQ_OK && i < n; i++) {
        /* query: another held-out key, as attention compares keys with similar vectors */
        const float *qv = x + ((i + 1) % n) * d;
        double a = 0, b = 0;
        for (uint32_t j = 0; j < d; j++) {
            double e = (double)x[i * d + j] - y[i * d + j];
            num += e * e;
            den += (double)x[i * d + j] * x[i * d + j];
            a += (double)qv[j] * x[i * d + j];
            b += (double)qv[j] * y[i * d + j];
        }
        ipe += fabs(a - b);
        ipd += fabs(a);
    }
    *mse = den > 0 ? num / den : 0;
    *ip = ipd > 0 ? ipe / ipd : 0;
    free(codes);
    free(y);
    return st;
}

/* Fit on rows (reordered: held-out rows move to the end), save to out, print quality;
 * spec_out receives the spec that loads the artifact. quiet: one line (per-layer runs). */
static int fit_method(const cal_opts *o, const kvq_model_info *info, float *rows, size_t n_rows,
                      uint32_t dim, const char *out, int quiet, char *spec_out, size_t spec_out_size) {
    char spec[1024], msg[512];
    int w = snprintf(spec, sizeof spec, "%s:seed=%llu", o->method, (unsigned long long)o->seed);
    if (o->bits > 0) w += snprintf(spec + w, sizeof spec - (size_t)w, ",bits=%ld", o->bits);
    if (info && !strcmp(o->method, "comm_vq"))
        w += snprintf(spec + w, sizeof spec - (size_t)w, ",rope_base=%.9g,rope=%s", (double)info->rope_base,
                      info->rope_neox ? "neox" : "interleaved");
    if (o->spec_extra && *o->spec_extra) w += snprintf(spec + w, sizeof spec - (size_t)w, ",%s", o->spec_extra);
    if (w < 0 || (size_t)w >= sizeof spec) {
        fprintf(stderr, "kvq calibrate: --spec too long\n");
        return 1;
    }
    kvq_config cfg;
    kvq_status st = kvq_config_parse(spec, dim, &cfg, msg, sizeof msg);
    if (st) {
        fprintf(stderr, "kvq calibrate: '%s': %s: %s\n", spec, kvq_strerror(st), msg);
        return 1;
    }
    size_t n_test = n_rows * (size_t)o->holdout / 100, n_fit = n_rows - n_test;
    if (n_fit < 2) {
        fprintf(stderr, "kvq calibrate: only %zu rows to fit on\n", n_fit);
        return 1;
    }
    /* hold out every k-th row, so both sets span the text */
    if (n_test) {
        size_t stride = n_rows / n_test, t = 0, f = 0;
        float *tmp = malloc(n_test * dim * sizeof(float));
        if (!tmp) return kvq_cli_fail("calibrate", "memory", KVQ_ERR_NOMEM);
        for (size_t i = 0; i < n_rows; i++) {
            float *src = rows + i * dim;
            if (t < n_test && i % stride == stride - 1) memcpy(tmp + t++ * dim, src, dim * sizeof(float));
            else memmove(rows + f++ * dim, src, dim * sizeof(float));
        }
        memcpy(rows + f * dim, tmp, n_test * dim * sizeof(float));
        free(tmp);
        n_fit = f;
        n_test = t;
    }
    kvq_quantizer *q;
    if ((st = kvq_quantizer_create(&cfg, &q))) return kvq_cli_fail("calibrate", spec, st);
    kvq_config_format(&cfg, spec, sizeof spec);
    if (!quiet)
        fprintf(stderr, "kvq calibrate: fitting %s on %zu rows of %u (%zu held out)...\n", spec, n_fit, dim,
                n_test);
    double t0 = kvq_cli_now_s();
    st = kvq_quantizer_fit(q, rows, n_fit);
    double fit_s = kvq_cli_now_s() - t0;
    if (st) {
        kvq_quantizer_free(q);
        return kvq_cli_fail("calibrate", "fit", st);
    }
    if ((st = kvq_quantizer_save(q, out))) {
        kvq_quantizer_free(q);
        return kvq_cli_fail("calibrate", out, st);
    }
    if (spec_out) snprintf(spec_out, spec_out_size, "%s,artifact=%s", spec, out);
    double mse = 0, ip = 0;
    if (n_test) st = quality(q, rows + n_fit * dim, n_test, dim, &mse, &ip);
    if (quiet) {
        printf("  %-28s %7zu rows  fit %6.2f s  rel sq err %.5f  ip err %.5f\n", out, n_fit, fit_s, mse, ip);
        kvq_quantizer_free(q);
        return st ? kvq_cli_fail("calibrate", "quality", st) : 0;
    }
    printf("%s: dim %u, %zu rows, fit %.2f s, code %zu bytes/vector (%.3f bits/element, fp16 %u bytes), "
           "shared %zu bytes\n",
           spec, dim, n_fit, fit_s, kvq_code_size(q), 8.0 * (double)kvq_code_size(q) / dim, 2 * dim,
           kvq_shared_size(q));
    if (n_test && !st) {
        printf("held-out %zu rows: relative squared error %.5f, relative inner-product error %.5f\n", n_test,
               mse, ip);
        /* the data-oblivious reference at the nearest whole bits per element */
        long b = lround(8.0 * (double)kvq_code_size(q) / dim);
        char ref[64];
        snprintf(ref, sizeof ref, "turboquant_mse:bits=%ld", b < 1 ? 1 : b > 8 ? 8 : b);
        kvq_config rc;
        kvq_quantizer *r;
        if (kvq_config_parse(ref, dim, &rc, NULL, 0) == KVQ_OK && kvq_quantizer_create(&rc, &r) == KVQ_OK) {
            double rm = 0, ri = 0;
            if (quality(r, rows + n_fit * dim, n_test, dim, &rm, &ri) == KVQ_OK)
                printf("  reference %s (%zu bytes/vector): relative squared error %.5f, inner-product %.5f\n",
                       ref, kvq_code_size(r), rm, ri);
            kvq_quantizer_free(r);
        }
    }
    printf("artifact: %s (use --cache-k %s,artifact=%s)\n", out, spec, out);
    kvq_quantizer_free(q);
    return st ? kvq_cli_fail("calibrate", "quality", st) : 0;
}

/* Output KL from fp16 keys over the tokens after the calibration ones, with the calibrated
 * keys in every layer and with turboquant_mse at the nearest bits. */
static int eval_kl(const cal_opts *o, kvq_model *model, const kvq_model_info *info, const int32_t *tokens,
                   size_t n_all, size_t n_calib, char (*specs)[1400]) {
    size_t n = n_all > n_calib ? n_all - n_calib : 0;
    if (n > (size_t)o->eval) n = (size_t)o->eval;
    if (n > info->ctx_len) n = info->ctx_len;
    if (n < 2) {
        fprintf(stderr, "kvq calibrate: --eval: the text has no tokens left after the %zu calibration ones\n",
                n_calib);
        return 1;
    }
    const uint32_t L = info->n_layers;
    kvq_cache_config *per = malloc(L * sizeof *per);
    float *ref = malloc(n * info->n_vocab * sizeof(float)), *lg = malloc(n * info->n_vocab * sizeof(float));
    char msg[512], tq[64];
    kvq_status st = per && ref && lg ? KVQ_OK : KVQ_ERR_NOMEM;
    double kl_cal = 0, kl_tq = 0;
    size_t bytes = 0;
    for (uint32_t l = 0; st == KVQ_OK && l < L; l++) {
        st = kvq_cache_config_init(&per[l], info->n_kv_heads, info->head_dim, "fp16", "fp16", msg, sizeof msg);
    }
    fprintf(stderr, "kvq calibrate: eval on %zu tokens after the calibration ones\n", n);
    if (st == KVQ_OK) st = run_text(model, info, tokens + n_calib, n, per, NULL, NULL, o->threads, ref);
    for (uint32_t l = 0; st == KVQ_OK && l < L; l++) {
        st = kvq_cache_config_init(&per[l], info->n_kv_heads, info->head_dim, specs[l], "fp16", msg, sizeof msg);
        if (st == KVQ_OK && l == 0) {
            kvq_quantizer *q;
            if (kvq_quantizer_create(&per[0].key, &q) == KVQ_OK) {
                bytes = kvq_code_size(q);
                kvq_quantizer_free(q);
            }
        }
    }
    if (st == KVQ_OK) st = run_text(model, info, tokens + n_calib, n, per, NULL, NULL, o->threads, lg);
    if (st == KVQ_OK) kl_cal = mean_kl(ref, lg, n, info->n_vocab);
    long b = lround(8.0 * (double)bytes / info->head_dim);
    snprintf(tq, sizeof tq, "turboquant_mse:bits=%ld", b < 1 ? 1 : b > 8 ? 8 : b);
    for (uint32_t l = 0; st == KVQ_OK && l < L; l++)
        st = kvq_cache_config_init(&per[l], info->n_kv_heads, info->head_dim, tq, "fp16", msg, sizeof msg);
    if (st == KVQ_OK) st = run_text(model, info, tokens + n_calib, n, per, NULL, NULL, o->threads, lg);
    if (st == KVQ_OK) kl_tq = mean_kl(ref, lg, n, info->n_vocab);
    free(per);
    free(ref);
    free(lg);
    if (st) {
        fprintf(stderr, "kvq calibrate: eval: %s%s%s\n", kvq_strerror(st), msg[0] ? ": " : "", msg);
        return 1;
    }
    printf("eval, %zu tokens, keys in every layer (values fp16), output KL from fp16 keys: %s%s %.5f, %s %.5f\n",
           n, o->method, o->per_layer ? " (per layer)" : "", kl_cal, tq, kl_tq);
    return 0;
}

int kvq_cmd_calibrate(int argc, char **argv) {
    cal_opts o = {.bits = 0, .tokens = 512, .layer = -1, .holdout = 10, .target = 1.5,
                  .key_spec = "turboquant_rvq", .choices = "1,2,3,4"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define TAKES(name) (!strcmp(a, name) && v && ++i)
#define LONG_IN(lo, hi, dst) if (kvq_arg_long("calibrate", a, v, lo, hi, dst)) return 1
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return cal_usage(stdout);
        else if (TAKES("--method")) o.method = v;
        else if (TAKES("-o") || TAKES("--output")) o.out = v;
        else if (TAKES("-m") || TAKES("--model")) o.model = v;
        else if (TAKES("-f") || TAKES("--file")) o.text = v;
        else if (TAKES("--keys")) o.keys = v;
        else if (TAKES("--tensor")) o.tensor = v;
        else if (TAKES("--bits")) { LONG_IN(0, 16, &o.bits); }
        else if (TAKES("--spec")) o.spec_extra = v;
        else if (TAKES("-s") || TAKES("--seed")) {
            if (kvq_arg_u64("calibrate", a, v, 0, UINT64_MAX, &o.seed)) return 1;
        } else if (TAKES("--tokens")) { LONG_IN(2, 65536, &o.tokens); }
        else if (TAKES("--layer")) {
            if (!strcmp(v, "all")) o.layer = -1;
            else if (kvq_arg_long("calibrate", a, v, 0, 65535, &o.layer)) return 1;
        } else if (TAKES("--holdout")) { LONG_IN(0, 50, &o.holdout); }
        else if (TAKES("-t") || TAKES("--threads")) { LONG_IN(0, 1024, &o.threads); }
        else if (TAKES("--key-spec")) o.key_spec = v;
        else if (TAKES("--choices")) o.choices = v;
        else if (TAKES("--target")) {
            if (kvq_arg_double("calibrate", a, v, 0.0, 64.0, &o.target)) return 1;
        } else if (TAKES("--save-keys")) o.save_keys = v;
        else if (TAKES("--sensitivities")) o.sens_file = v;
        else if (TAKES("--eval")) { LONG_IN(0, 1000000, &o.eval); }
        else if (!strcmp(a, "--per-layer")) o.per_layer = 1;
        else {
            fprintf(stderr, "kvq calibrate: unknown or incomplete option %s\n", a);
            return cal_usage(stderr);
        }
#undef LONG_IN
#undef TAKES
    }
    if (!o.method || !o.out) return cal_usage(stderr);
    if (kvq_arg_output_file("calibrate", o.out) || (o.save_keys && kvq_arg_output_file("calibrate", o.save_keys)))
        return 1;
    int is_rq = !strcmp(o.method, "ratequant");
    if (!is_rq && strcmp(o.method, "vecinfer") && strcmp(o.method, "spectral") && strcmp(o.method, "comm_vq")) {
        fprintf(stderr, "kvq calibrate: --method '%s' is not vecinfer|spectral|comm_vq|ratequant\n", o.method);
        return 1;
    }
    if (is_rq && o.sens_file && !o.model && !o.keys) return ratequant_from_file(&o);
    if ((o.keys != NULL) == (o.model != NULL) || (o.model && !o.text) || (is_rq && !o.model)) {
        fprintf(stderr, "kvq calibrate: give either --keys FILE or -m MODEL -f TEXT%s\n",
                is_rq ? " (ratequant: or --sensitivities FILE)" : "");
        return 1;
    }
    if (((o.eval || o.per_layer) && !o.model) || (o.per_layer && o.layer >= 0)) {
        fprintf(stderr, "kvq calibrate: --eval and --per-layer need -m (and --per-layer no --layer)\n");
        return 1;
    }
    if (o.per_layer && strchr(o.out, '%')) {
        fprintf(stderr, "kvq calibrate: --per-layer: -o %s: the name may not hold '%%'\n", o.out);
        return 1;
    }
    if ((o.text && kvq_arg_regular_file("calibrate", o.text)) || (o.keys && kvq_arg_regular_file("calibrate", o.keys)) ||
        (o.sens_file && kvq_arg_regular_file("calibrate", o.sens_file)))
        return 1;
    char msg[512] = "";
    if (o.keys) {
        float *rows;
        size_t n_rows, dim;
        kvq_status st = kvq_tensor_read_f32(o.keys, o.tensor, &rows, &n_rows, &dim, msg, sizeof msg);
        if (st) {
            fprintf(stderr, "kvq calibrate: %s\n", msg[0] ? msg : kvq_strerror(st));
            return 1;
        }
        fprintf(stderr, "kvq calibrate: %s: %zu keys of dim %zu\n", o.keys, n_rows, dim);
        int rc = dim > UINT32_MAX ? 1 : fit_method(&o, NULL, rows, n_rows, (uint32_t)dim, o.out, 0, NULL, 0);
        kvq_buffer_free(rows);
        return rc;
    }
    kvq_model *model;
    kvq_status st = kvq_model_load(o.model, &model, msg, sizeof msg);
    if (st) {
        fprintf(stderr, "kvq calibrate: %s: %s%s%s\n", o.model, kvq_strerror(st), msg[0] ? ": " : "", msg);
        return 1;
    }
    kvq_model_info info;
    kvq_model_get_info(model, &info);
    int rc = 1;
    size_t n_tok = 0;
    int32_t *tokens = NULL;
    size_t n_all = 0;
    char (*specs)[1400] = NULL;
    char *text = kvq_cli_read_text("calibrate", o.text, NULL);
    capture cap = {.layer = o.layer, .n_kv_heads = info.n_kv_heads, .head_dim = info.head_dim,
                   .unrope = !strcmp(o.method, "comm_vq"), .neox = info.rope_neox,
                   .rope_base = info.rope_base};
    if (!text) goto done;
    if (o.layer >= (long)info.n_layers) {
        fprintf(stderr, "kvq calibrate: --layer %ld: the model has %u layers\n", o.layer, info.n_layers);
        goto done;
    }
    if (cap.unrope && info.rope_scale != 1.0f) {
        fprintf(stderr, "kvq calibrate: comm_vq: RoPE position scaling %g is not supported\n",
                (double)info.rope_scale);
        goto done;
    }
    kvq_tokenize(model, text, -1, NULL, 0, &n_tok);
    tokens = malloc((n_tok ? n_tok : 1) * sizeof *tokens);
    if (!tokens || (st = kvq_tokenize(model, text, -1, tokens, n_tok, &n_tok))) {
        kvq_cli_fail("calibrate", "tokenize", tokens ? st : KVQ_ERR_NOMEM);
        goto done;
    }
    n_all = n_tok;
    if (n_tok > (size_t)o.tokens) n_tok = (size_t)o.tokens;
    if (n_tok < 2) {
        fprintf(stderr, "kvq calibrate: %s gives only %zu tokens\n", o.text, n_tok);
        goto done;
    }
    if (is_rq) {
        rc = ratequant(&o, model, &info, tokens, n_tok);
        goto done;
    }
    fprintf(stderr, "kvq calibrate: %s reads %zu tokens of %s; capturing keys of %s\n", o.model, n_tok, o.text,
            o.layer < 0 ? "every layer" : "one layer");
    double t0 = kvq_cli_now_s();
    st = run_text(model, &info, tokens, n_tok, NULL, observe, &cap, o.threads, NULL);
    if (st || cap.failed) {
        kvq_cli_fail("calibrate", "model run", st ? st : KVQ_ERR_NOMEM);
        goto done;
    }
    fprintf(stderr, "kvq calibrate: %zu key rows (%u kv heads x %zu tokens%s) in %.2f s\n", cap.n_rows,
            info.n_kv_heads, n_tok, o.layer < 0 ? " x layers" : "", kvq_cli_now_s() - t0);
    if (o.save_keys && (st = kvq_tensor_write_f32(o.save_keys, "keys", cap.rows, cap.n_rows, info.head_dim))) {
        kvq_cli_fail("calibrate", o.save_keys, st);
        goto done;
    }
    specs = calloc(info.n_layers, sizeof *specs);
    if (!specs) {
        kvq_cli_fail("calibrate", "memory", KVQ_ERR_NOMEM);
        goto done;
    }
    if (!o.per_layer) {
        rc = fit_method(&o, &info, cap.rows, cap.n_rows, info.head_dim, o.out, 0, specs[0], sizeof specs[0]);
        for (uint32_t l = 1; l < info.n_layers; l++) memcpy(specs[l], specs[0], sizeof specs[0]);
    } else {
        /* gather each layer's rows to the front in turn */
        const size_t row_bytes = info.head_dim * sizeof(float);
        float *tmp = malloc(cap.n_rows * row_bytes);
        rc = tmp ? 0 : kvq_cli_fail("calibrate", "memory", KVQ_ERR_NOMEM);
        printf("%s per layer (%s):\n", o.method, o.out);
        for (uint32_t l = 0; rc == 0 && l < info.n_layers; l++) {
            size_t m = 0;
            for (size_t i = 0; i < cap.n_rows; i++)
                if (cap.row_layer[i] == l) memcpy(tmp + m++ * info.head_dim, cap.rows + i * info.head_dim, row_bytes);
            char path[1100];
            size_t len = strlen(o.out);
            const char *ext = len > 12 && !strcmp(o.out + len - 12, ".safetensors") ? o.out + len - 12 : o.out + len;
            snprintf(path, sizeof path, "%.*s.layer%02u.safetensors", (int)(ext - o.out), o.out, l);
            rc = fit_method(&o, &info, tmp, m, info.head_dim, path, 1, specs[l], sizeof specs[l]);
        }
        free(tmp);
        /* the manifest last: until it is replaced, a set mixing new and old layers is refused */
        if (rc == 0) {
            char pattern[1100], manifest[1100];
            size_t len = strlen(o.out);
            const char *ext = len > 12 && !strcmp(o.out + len - 12, ".safetensors") ? o.out + len - 12 : o.out + len;
            snprintf(pattern, sizeof pattern, "%.*s.layer%%02u.safetensors", (int)(ext - o.out), o.out);
            rc = kvq_cli_seal_layer_set("calibrate", pattern, info.n_layers);
            if (rc == 0 && kvq_cli_layer_manifest(pattern, manifest, sizeof manifest) == 0)
                printf("manifest: %s (use --cache-k %s:...,artifact=%s)\n", manifest, o.method, pattern);
        }
    }
    if (rc == 0 && o.eval > 0) rc = eval_kl(&o, model, &info, tokens, n_all, n_tok, specs);
done:
    free(specs);
    free(cap.row_layer);
    free(cap.rows);
    free(tokens);
    free(text);
    kvq_model_free(model);
    return rc;
}
