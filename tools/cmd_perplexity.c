/* cmd_perplexity.c - `kvq perplexity`: perplexity of a text under each KV cache config.
 * The text is cut into chunks of --ctx tokens; as llama.cpp's llama-perplexity does, the
 * first half of each chunk is context only and the second half is scored. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cache_configs.h"
#include "cli.h"
#include "json_out.h"
#include "layer_set.h"

#define PPL_MAX_CONFIGS 32
#define PPL_BATCH 64

static int ppl_usage(FILE *f) {
    fprintf(f,
            "usage: kvq perplexity -m MODEL.gguf -f TEXT [options]\n\n"
            "  -m, --model FILE   GGUF model (Llama family)\n"
            "  -f, --file TEXT    UTF-8 text file\n"
            "  -c, --ctx N        tokens per chunk, 16..65536 (default 512; also --ctx-size);\n"
            "                     the second half of each is scored\n"
            "  --chunks N         chunks to evaluate (default 0 = all the text gives)\n"
            "  --configs LIST     KV cache configs, comma-separated (default fp16,q8_0,q4_0);\n"
            "                     a spec's own key=value options follow it: turboquant_rvq:bits=1,residuals=2;\n"
            "                     KSPEC+VSPEC gives keys and values different quantizers; f32 = exact float KV;\n"
            "                     a layer number pattern in a spec (%%d, %%02d) gives each layer its own\n"
            "                     artifact: vecinfer:artifact=vi.layer%%02d.safetensors (kvq calibrate --per-layer);\n"
            "                     plan:FILE takes each layer's key method and bits from a RateQuant plan\n"
            "                     (per-layer sets are checked against their manifest first)\n"
            "  -ctk, --cache-type-k SPEC, -ctv, --cache-type-v SPEC\n"
            "                     llama.cpp's way: one config SPEC_K+SPEC_V (each fp16 if not given;\n"
            "                     f16 means fp16), instead of --configs\n"
            "  --cache-plan FILE  add plan:FILE (values fp16) to the configs (kvq calibrate --method ratequant)\n"
            "  --window N         most recent tokens also kept exact (default 0; also --cache-window);\n"
            "                     0..65536, and a window longer than --ctx is cut to --ctx\n"
            "  --outliers N       key channels per head kept in fp16 (default 0; also --cache-outliers)\n"
            "  --sink N           first tokens kept exact, the attention sinks, 0..1024 (default 0; also --cache-sink)\n"
            "  -t, --threads N    threads, 0..1024 (default 0 = one per CPU)\n"
            "  --float-activations  float32 activations in every matrix product (the numerical\n"
            "                     reference; by default they are int8, as llama.cpp's)\n"
            "  --kl               also compare every scored token's distribution with fp16's (the\n"
            "                     first config when fp16 is not among them): mean KL(fp16 || config)\n"
            "                     and how often both pick the same top token (llama.cpp's --kl-divergence)\n"
            "  --json             print one JSON object on stdout instead of the table\n"
            "Configs may be presets (q4, q3, q2) and take cache options after '@':\n"
            "  q4@window=32, mse:bits=4+mse:bits=3@sink=1,center=1 (docs/METHODS.md)\n"
            "Prints one line per config: perplexity, its difference from fp16, KV bits per number.\n");
    return f == stderr ? 1 : 0;
}

/* Split "fp16,q8_0,turboquant_rvq:bits=1,residuals=2" into specs: a piece that starts
 * "name=" is an option of the spec before it. */
static int split_configs(char *list, char **out, int max) {
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        const char *p = tok; /* "name=value": an option of the spec before */
        while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_') p++;
        int is_option = p != tok && *p == '=';
        if (is_option && n > 0) {
            /* re-join with the previous spec: the comma strtok replaced sits just before tok */
            tok[-1] = ',';
            continue;
        }
        if (n == max) return -1;
        out[n++] = tok;
    }
    return n;
}

typedef struct ppl_result {
    char spec[256];
    double ppl, nll_sum, nll_sq;
    double kl_sum, kl_sq;  /* KL(reference || config) per scored token */
    size_t top1_same;      /* scored tokens whose argmax equals the reference's */
    kvq_context *ctx;
    size_t n_scored;
    double bits_per_number;
    double seconds;
    int ok;
} ppl_result;

/* --json: one object, each config's row as in the table. */
static void print_json(const char *model, const char *text, long n_ctx, size_t n_chunks, const ppl_result *res,
                       int n_cfg, int ref, int want_kl) {
    printf("{\"model\": ");
    kvq_json_string(stdout, model);
    printf(", \"file\": ");
    kvq_json_string(stdout, text);
    printf(", \"ctx\": %ld, \"chunks\": %zu, \"reference\": ", n_ctx, n_chunks);
    if (ref >= 0) kvq_json_string(stdout, res[ref].spec);
    else printf("null");
    printf(", \"configs\": [");
    for (int c = 0; c < n_cfg; c++) {
        const ppl_result *r = &res[c];
        printf("%s{\"config\": ", c ? ", " : "");
        kvq_json_string(stdout, r->spec);
        if (!r->ok) {
            printf(", \"ok\": false}");
            continue;
        }
        double mean = r->nll_sum / (double)r->n_scored;
        double var = r->nll_sq / (double)r->n_scored - mean * mean;
        printf(", \"ok\": true, \"ppl\": ");
        kvq_json_number(stdout, r->ppl);
        printf(", \"ppl_err\": ");
        kvq_json_number(stdout, r->ppl * sqrt(var > 0 ? var / (double)r->n_scored : 0));
        printf(", \"delta\": ");
        kvq_json_number(stdout, ref >= 0 ? r->ppl - res[ref].ppl : NAN);
        printf(", \"delta_percent\": ");
        kvq_json_number(stdout, ref >= 0 ? 100.0 * (r->ppl / res[ref].ppl - 1.0) : NAN);
        printf(", \"kv_bits\": ");
        kvq_json_number(stdout, r->bits_per_number);
        printf(", \"tokens_scored\": %zu, \"seconds\": ", r->n_scored);
        kvq_json_number(stdout, r->seconds);
        if (want_kl) { /* as the table's KL, +- and top1% columns */
            double n = (double)r->n_scored, km = r->kl_sum / n, kv = r->kl_sq / n - km * km;
            printf(", \"kl\": ");
            kvq_json_number(stdout, km);
            printf(", \"kl_err\": ");
            kvq_json_number(stdout, sqrt(kv > 0 ? kv / n : 0));
            printf(", \"top1_same_percent\": ");
            kvq_json_number(stdout, 100.0 * (double)r->top1_same / n);
        }
        printf("}");
    }
    printf("]}\n");
}

int kvq_cmd_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL;
    char configs_buf[4096] = "fp16,q8_0,q4_0";
    int configs_given = 0, n_plans = 0;
    const char *plans[PPL_MAX_CONFIGS];
    long n_ctx = 512, max_chunks = 0, threads = 0, window = 0, outliers = 0, sink = 0;
    const char *ctk = NULL, *ctv = NULL;
    int json = 0, want_kl = 0, float_act = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define TAKES(name) (!strcmp(a, name) && v && ++i)
#define LONG_IN(lo, hi, dst) if (kvq_arg_long("perplexity", a, v, lo, hi, dst)) return 1
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return ppl_usage(stdout);
        else if (TAKES("-m") || TAKES("--model")) model_path = v;
        else if (TAKES("-f") || TAKES("--file")) text_path = v;
        else if (TAKES("-c") || TAKES("--ctx") || TAKES("--ctx-size")) { LONG_IN(16, 65536, &n_ctx); }
        else if (TAKES("--chunks")) { LONG_IN(0, 100000000, &max_chunks); }
        else if (TAKES("-t") || TAKES("--threads")) { LONG_IN(0, 1024, &threads); }
        else if (!strcmp(a, "--kl")) want_kl = 1;
        else if (!strcmp(a, "--float-activations")) float_act = 1;
        else if (TAKES("--window") || TAKES("--cache-window")) { LONG_IN(0, 65536, &window); }
        else if (TAKES("--outliers") || TAKES("--cache-outliers")) { LONG_IN(0, 4096, &outliers); }
        else if (TAKES("--sink") || TAKES("--cache-sink")) { LONG_IN(0, 1024, &sink); }
        else if (TAKES("-ctk") || TAKES("--cache-type-k")) ctk = v;
        else if (TAKES("-ctv") || TAKES("--cache-type-v")) ctv = v;
        else if (!strcmp(a, "--json")) json = 1;
        else if (TAKES("--cache-plan")) {
            if (n_plans == PPL_MAX_CONFIGS) {
                fprintf(stderr, "kvq perplexity: too many --cache-plan\n");
                return 1;
            }
            plans[n_plans++] = v;
        } else if (TAKES("--configs")) {
            if (strlen(v) >= sizeof configs_buf) {
                fprintf(stderr, "kvq perplexity: --configs too long\n");
                return 1;
            }
            strcpy(configs_buf, v);
            configs_given = 1;
        } else {
            fprintf(stderr, "kvq perplexity: unknown or incomplete option %s\n", a);
            return ppl_usage(stderr);
        }
#undef LONG_IN
#undef TAKES
    }
    if (!model_path || !text_path) return ppl_usage(stderr);
    if ((ctk || ctv) && (configs_given || n_plans)) {
        fprintf(stderr, "kvq perplexity: give -ctk/-ctv (one config) or --configs/--cache-plan, not both\n");
        return 1;
    }
    if (ctk || ctv) {
        /* llama.cpp's way: one config, keys and values fp16 unless given */
        int n = snprintf(configs_buf, sizeof configs_buf, "%s+%s", ctk ? ctk : "fp16", ctv ? ctv : "fp16");
        if (n < 0 || (size_t)n >= sizeof configs_buf) {
            fprintf(stderr, "kvq perplexity: -ctk/-ctv too long\n");
            return 1;
        }
        if (!strcmp(configs_buf, "f32+f32")) strcpy(configs_buf, "f32");
        configs_given = 1;
    }
    if (window > n_ctx) window = n_ctx; /* a longer window holds nothing more */
    if (kvq_arg_regular_file("perplexity", text_path)) return 1;
    /* each plan is one more config; without --configs, beside fp16 only */
    if (n_plans && !configs_given) strcpy(configs_buf, "fp16");
    for (int i = 0; i < n_plans; i++) {
        size_t used = strlen(configs_buf);
        if (used + 6 + strlen(plans[i]) >= sizeof configs_buf) {
            fprintf(stderr, "kvq perplexity: --cache-plan: configs too long\n");
            return 1;
        }
        snprintf(configs_buf + used, sizeof configs_buf - used, ",plan:%s", plans[i]);
    }
    char *specs[PPL_MAX_CONFIGS];
    int n_cfg = split_configs(configs_buf, specs, PPL_MAX_CONFIGS);
    if (n_cfg <= 0) {
        fprintf(stderr, "kvq perplexity: no configs (or more than %d)\n", PPL_MAX_CONFIGS);
        return 1;
    }
    for (int c = 0; c < n_cfg; c++) {
        if (kvq_cli_check_calibrated("perplexity", specs[c])) return 1;
        /* a calibrated artifact fits keys or values, never both: with no '+', values must be named */
        if (strncmp(specs[c], "plan:", 5) && !strchr(specs[c], '+') && strstr(specs[c], "artifact=")) {
            fprintf(stderr, "kvq perplexity: config '%s': an artifact is calibrated on keys or on values, not "
                            "both: give the values' spec as KSPEC+VSPEC (e.g. ...+fp16)\n", specs[c]);
            return 1;
        }
    }
    char msg[256] = "";
    kvq_model *model;
    kvq_status st = kvq_model_load(model_path, &model, msg, sizeof msg);
    if (st) {
        fprintf(stderr, "kvq perplexity: %s: %s%s%s\n", model_path, kvq_strerror(st), msg[0] ? ": " : "", msg);
        return 1;
    }
    kvq_model_info info;
    kvq_model_get_info(model, &info);
    int rc = 1;
    size_t text_len = 0, n_tok = 0;
    char *text = kvq_cli_read_text("perplexity", text_path, &text_len);
    int32_t *tokens = NULL;
    float *logits = NULL;
    ppl_result *res = calloc((size_t)n_cfg, sizeof *res);
    kvq_cache_config *per_layer = calloc(info.n_layers, sizeof *per_layer);
    if (!text) goto done;
    kvq_tokenize(model, text, 0, NULL, 0, &n_tok);
    tokens = malloc((n_tok ? n_tok : 1) * sizeof *tokens);
    logits = malloc((size_t)PPL_BATCH * info.n_vocab * sizeof *logits);
    if (!tokens || !logits || !res || !per_layer) {
        rc = kvq_cli_fail("perplexity", "memory", KVQ_ERR_NOMEM);
        goto done;
    }
    if ((st = kvq_tokenize(model, text, 0, tokens, n_tok, &n_tok))) {
        rc = kvq_cli_fail("perplexity", "tokenize", st);
        goto done;
    }
    size_t n_chunks = n_tok / (size_t)n_ctx;
    if (max_chunks > 0 && (size_t)max_chunks < n_chunks) n_chunks = (size_t)max_chunks;
    if (n_chunks == 0) {
        fprintf(stderr, "kvq perplexity: the text has %zu tokens, fewer than --ctx %ld\n", n_tok, n_ctx);
        goto done;
    }
    fprintf(stderr, "kvq perplexity: %s: %zu tokens, %zu chunks of %ld (scoring the second half of each)\n",
            text_path, n_tok, n_chunks, n_ctx);
    int32_t *chunk = malloc((size_t)n_ctx * sizeof *chunk);
    if (!chunk) {
        rc = kvq_cli_fail("perplexity", "memory", KVQ_ERR_NOMEM);
        goto done;
    }
    size_t first = (size_t)n_ctx / 2;
    /* the reference: fp16 when it is among the configs, else the first; it runs first in
     * every chunk so that --kl can hold its log-probabilities of the scored half */
    int ref = 0;
    for (int c = 0; c < n_cfg; c++)
        if (!strcmp(specs[c], "fp16")) ref = c;
    for (int c = 0; c < n_cfg; c++) {
        ppl_result *r = &res[c];
        snprintf(r->spec, sizeof r->spec, "%s", specs[c]);
        char kspec[1400], vspec[1400];
        char *plus = strchr(specs[c], '+');
        if (plus && !strchr(specs[c], '@')) {
            snprintf(kspec, sizeof kspec, "%.*s", (int)(plus - specs[c]), specs[c]);
            snprintf(vspec, sizeof vspec, "%s", plus + 1);
        } else {
            snprintf(kspec, sizeof kspec, "%s", specs[c]);
            /* a plan sets keys only: values fp16 unless given */
            snprintf(vspec, sizeof vspec, "%s", strncmp(specs[c], "plan:", 5) ? specs[c] : "fp16");
        }
        kvq_context_params p;
        kvq_context_params_init(&p);
        p.n_ctx = (uint32_t)n_ctx;
        p.n_batch = PPL_BATCH;
        p.float_activations = float_act;
        p.n_threads = (uint32_t)threads;
        int exact = !strcmp(kspec, "f32") && !strcmp(vspec, "f32");
        if (!exact) {
            /* "plan:FILE": the keys of each layer from a RateQuant plan */
            const char *plan = !strncmp(kspec, "plan:", 5) ? kspec + 5 : NULL;
            if ((!plan && kvq_cli_check_layer_set("perplexity", kspec, info.n_layers)) ||
                (strcmp(vspec, kspec) && kvq_cli_check_layer_set("perplexity", vspec, info.n_layers)))
                continue;
            /* the spec as given, read whole (KSPEC+VSPEC, PRESET+VSPEC): its keys' side alone
             * would be a preset's name standing for the whole cache, VSPEC dropped */
            if ((st = kvq_cli_cache_configs(&info, plan ? NULL : specs[c], vspec, plan, (uint32_t)window,
                                            (uint32_t)outliers, (uint32_t)sink, per_layer, msg, sizeof msg))) {
                fprintf(stderr, "kvq perplexity: config '%s': %s%s%s\n", specs[c], kvq_strerror(st),
                        msg[0] ? ": " : "", msg);
                continue;
            }
            p.cache = per_layer;
            p.n_cache_configs = info.n_layers;
        }
        kvq_clear_last_error();
        if ((st = kvq_context_create(model, &p, &r->ctx))) {
            const char *why = kvq_last_error();
            fprintf(stderr, "kvq perplexity: config '%s': context: %s%s%s\n", specs[c], kvq_strerror(st),
                    why[0] ? ": " : "", why);
            r->ctx = NULL;
        }
    }
    st = KVQ_OK;
    size_t n_scored_max = (size_t)n_ctx - first;
    float *ref_lp = NULL; /* [scored position][vocab]: the reference's log-probabilities */
    int32_t *ref_top = NULL;
    if (want_kl) {
        ref_lp = malloc(n_scored_max * info.n_vocab * sizeof *ref_lp);
        ref_top = malloc(n_scored_max * sizeof *ref_top);
        if (!ref_lp || !ref_top || !res[ref].ctx) {
            fprintf(stderr, "kvq perplexity: --kl: %s\n", res[ref].ctx ? "out of memory" : "the reference config failed");
            free(ref_lp);
            free(ref_top);
            free(chunk);
            goto done;
        }
    }
    for (size_t k = 0; k < n_chunks; k++) {
        memcpy(chunk, tokens + k * (size_t)n_ctx, (size_t)n_ctx * sizeof *chunk);
        if (info.add_bos && info.bos_token >= 0) chunk[0] = info.bos_token;
        for (int o = 0; o < n_cfg; o++) {
            int c = o == 0 ? ref : (o <= ref ? o - 1 : o); /* the reference first */
            ppl_result *r = &res[c];
            if (!r->ctx) continue;
            double t0 = kvq_cli_now_s();
            kvq_context_reset(r->ctx);
            st = KVQ_OK;
            for (size_t i = 0; i < (size_t)n_ctx && !st; i += PPL_BATCH) {
                size_t n = (size_t)n_ctx - i < PPL_BATCH ? (size_t)n_ctx - i : PPL_BATCH;
                int scored = i + n > first;
                st = kvq_context_eval(r->ctx, chunk + i, n, scored ? logits : NULL, 1);
                if (st || !scored) continue;
                for (size_t j = 0; j < n; j++) {
                    size_t pos = i + j;
                    if (pos < first || pos + 1 >= (size_t)n_ctx) continue;
                    const float *lg = logits + j * info.n_vocab;
                    float mx = lg[0];
                    int32_t top = 0;
                    for (uint32_t v = 1; v < info.n_vocab; v++)
                        if (lg[v] > mx) mx = lg[v], top = (int32_t)v;
                    double se = 0;
                    for (uint32_t v = 0; v < info.n_vocab; v++) se += exp((double)lg[v] - mx);
                    double lse = log(se) + mx;
                    double nll = lse - lg[chunk[pos + 1]];
                    r->nll_sum += nll;
                    r->nll_sq += nll * nll;
                    r->n_scored++;
                    if (!want_kl) continue;
                    float *rl = ref_lp + (pos - first) * info.n_vocab;
                    if (c == ref) {
                        for (uint32_t v = 0; v < info.n_vocab; v++) rl[v] = (float)(lg[v] - lse);
                        ref_top[pos - first] = top;
                        r->top1_same++;
                    } else {
                        double kl = 0;
                        for (uint32_t v = 0; v < info.n_vocab; v++) {
                            double lp = rl[v];
                            kl += exp(lp) * (lp - ((double)lg[v] - lse));
                        }
                        if (kl < 0) kl = 0; /* rounding */
                        r->kl_sum += kl;
                        r->kl_sq += kl * kl;
                        r->top1_same += top == ref_top[pos - first];
                    }
                }
            }
            r->seconds += kvq_cli_now_s() - t0;
            if (st) {
                fprintf(stderr, "\nkvq perplexity: config '%s': %s\n", specs[c], kvq_strerror(st));
                kvq_context_free(r->ctx);
                r->ctx = NULL;
                if (c == ref && want_kl) {
                    free(ref_lp);
                    free(ref_top);
                    free(chunk);
                    goto done;
                }
                continue;
            }
            fprintf(stderr, "\r  chunk %zu/%zu  %-40s ppl %.4f   ", k + 1, n_chunks, specs[c],
                    exp(r->nll_sum / (double)r->n_scored));
        }
    }
    fprintf(stderr, "\n");
    free(ref_lp);
    free(ref_top);
    for (int c = 0; c < n_cfg; c++) {
        ppl_result *r = &res[c];
        if (!r->ctx || !r->n_scored) continue;
        kvq_cache_memory_info mem;
        uint64_t fp16 = 0;
        kvq_context_kv_memory(r->ctx, &mem, &fp16);
        uint64_t code = mem.key_codes + mem.value_codes + mem.window + mem.outliers;
        r->bits_per_number = fp16 ? 16.0 * (double)code / (double)fp16 : 0;
        r->ppl = exp(r->nll_sum / (double)r->n_scored);
        r->ok = 1;
    }
    free(chunk);
    if (!res[ref].ok)
        for (int c = 0; c < n_cfg; c++)
            if (res[c].ok) {
                ref = c;
                break;
            }
    if (json) {
        print_json(model_path, text_path, n_ctx, n_chunks, res, n_cfg, res[ref].ok ? ref : -1, want_kl);
        goto printed;
    }
    printf("%-44s %10s %9s %10s %8s %9s %8s", "config", "ppl", "+-", "delta", "delta%", "kv bits", "seconds");
    if (want_kl) printf(" %10s %8s %7s", "KL", "+-", "top1%");
    printf("\n");
    for (int c = 0; c < n_cfg; c++) {
        ppl_result *r = &res[c];
        if (!r->ok) {
            printf("%-44s %10s\n", r->spec, "failed");
            continue;
        }
        /* the uncertainty of exp(mean nll): ppl * stderr of the mean nll */
        double mean = r->nll_sum / (double)r->n_scored;
        double var = r->nll_sq / (double)r->n_scored - mean * mean;
        double err = r->ppl * sqrt(var > 0 ? var / (double)r->n_scored : 0);
        printf("%-44s %10.4f %9.4f %+10.4f %+7.2f%% %9.2f %8.1f", r->spec, r->ppl, err, r->ppl - res[ref].ppl,
               100.0 * (r->ppl / res[ref].ppl - 1.0), r->bits_per_number, r->seconds);
        if (want_kl) {
            double n = (double)r->n_scored, km = r->kl_sum / n, kv = r->kl_sq / n - km * km;
            printf(" %10.6f %8.6f %6.2f%%", km, sqrt(kv > 0 ? kv / n : 0), 100.0 * (double)r->top1_same / n);
        }
        printf("\n");
    }
    printf("(%zu chunks of %ld tokens, %zu tokens scored per config; delta vs %s)\n", n_chunks, n_ctx,
           ref >= 0 ? res[ref].n_scored : 0, ref >= 0 ? res[ref].spec : "-");
printed:
    rc = 0;
    for (int c = 0; c < n_cfg; c++)
        if (!res[c].ok) rc = 1;
done:
    if (res)
        for (int c = 0; c < n_cfg; c++) kvq_context_free(res[c].ctx);
    free(per_layer);
    free(res);
    free(text);
    free(tokens);
    free(logits);
    kvq_model_free(model);
    return rc;
}
