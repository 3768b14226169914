/* cmd_generate.c - `kvq generate`: stream text from a GGUF model whose KV cache is
 * compressed with the given key and value quantizers, then report speed and KV memory. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_configs.h"
#include "cli.h"

static int gen_usage(FILE *f) {
    fprintf(f,
            "usage: kvq generate -m MODEL.gguf -p PROMPT [options]\n\n"
            "  -m, --model FILE   GGUF model (Llama family)\n"
            "  -p, --prompt TEXT  prompt text\n"
            "  -n, --tokens N     tokens to generate (default 64)\n"
            "  --cache-preset P   a named cache: q4 (<= 4.5 bits per number), q3 (<= 3), q2 (<= 2.25);\n"
            "                     cache options may follow '@': q4@window=32 (docs/METHODS.md)\n"
            "  --cache SPEC       a whole cache spec: KSPEC+VSPEC@options, e.g.\n"
            "                     mse:bits=4+mse:bits=3@center=1,sink=1,window=16\n"
            "  --cache-k SPEC     key quantizer, e.g. fp16, q8_0, q4_0, turboquant_rvq:bits=1,residuals=2\n"
            "                     (default fp16; f32 keeps exact float keys and values)\n"
            "                     a layer number pattern (%%d, %%02d) gives each layer its own artifact:\n"
            "                     vecinfer:artifact=vi.layer%%02d.safetensors (kvq calibrate --per-layer)\n"
            "  --cache-v SPEC     value quantizer (default: fp16)\n"
            "  --cache-plan FILE  keys of each layer from a RateQuant plan (kvq calibrate --method ratequant)\n"
            "  --window N         most recent tokens also kept exact (default 0; also --cache-window)\n"
            "  --outliers N       key channels per head kept in fp16 (default 0; also --cache-outliers)\n"
            "  --sink N           first tokens kept exact, the attention sinks (default 0; also --cache-sink)\n"
            "  --ctx N            context length (default: prompt + tokens)\n"
            "  --threads N        threads (default 0 = one per CPU)\n"
            "  --seed S           sampler seed (default 0)\n"
            "  --temp T           temperature, 0 = greedy (default 0)\n"
            "  --top-p P          nucleus sampling mass (default 0.95)\n"
            "  --no-bos           never put the BOS token first\n"
            "  --float-activations  float32 activations in one-token products too (slower, exact)\n"
            "  --quiet            print only the generated text\n"
            "  --dump-kv DIR      write every layer's keys (after RoPE) and values as\n"
            "                     DIR/keys_LL.npy and DIR/values_LL.npy, float32 [tokens][kv_heads][head_dim],\n"
            "                     and the queries (after RoPE) as DIR/queries_LL.npy [tokens][heads][head_dim]\n");
    return f == stderr ? 1 : 0;
}

/* Keys and values of every layer kept for --dump-kv: [layer][position][kv_dim]. */
typedef struct kv_dump {
    float *k, *v, *q;
    size_t kv_dim, q_dim, cap, n_layers, n_tokens;
} kv_dump;

static void dump_observer(void *user, uint32_t layer, size_t pos, const float *k, const float *v, size_t n) {
    kv_dump *d = user;
    if (layer >= d->n_layers || pos + n > d->cap) return;
    memcpy(d->k + ((size_t)layer * d->cap + pos) * d->kv_dim, k, n * d->kv_dim * sizeof(float));
    memcpy(d->v + ((size_t)layer * d->cap + pos) * d->kv_dim, v, n * d->kv_dim * sizeof(float));
    if (pos + n > d->n_tokens) d->n_tokens = pos + n;
}

static void dump_query_observer(void *user, uint32_t layer, size_t pos, const float *q, size_t n) {
    kv_dump *d = user;
    if (layer >= d->n_layers || pos + n > d->cap) return;
    memcpy(d->q + ((size_t)layer * d->cap + pos) * d->q_dim, q, n * d->q_dim * sizeof(float));
}

/* numpy's .npy v1.0: magic, header length, a Python dict padded to 64 bytes, the data */
static int write_npy(const char *path, const float *data, size_t n0, size_t n1, size_t n2) {
    char header[128];
    int len = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu, %zu), }",
                       n0, n1, n2);
    if (len < 0 || len > 100) return -1;
    size_t total = 10 + (size_t)len + 1;
    size_t pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    unsigned hl = (unsigned)(len + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(hl & 0xff), f);
    fputc((int)(hl >> 8), f);
    fwrite(header, 1, (size_t)len, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    size_t count = n0 * n1 * n2;
    int ok = fwrite(data, sizeof(float), count, f) == count; /* little-endian hosts */
    return fclose(f) == 0 && ok ? 0 : -1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int kvq_cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *kspec = "fp16", *vspec = NULL, *dump_dir = NULL;
    const char *whole = NULL;
    int k_given = 0;
    const char *plan = NULL;
    kvq_cache_config *per_layer = NULL;
    kv_dump dump = {0};
    long n_gen = 64, n_ctx = 0, threads = 0, window = 0, outliers = 0, sink = 0;
    unsigned long long seed = 0;
    double temp = 0.0, top_p = 0.95;
    int no_bos = 0, quiet = 0, float_act = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define TAKES(...) (!strcmp(a, __VA_ARGS__) && v && ++i)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return gen_usage(stdout);
        else if (TAKES("-m") || (!strcmp(a, "--model") && v && ++i)) model_path = v;
        else if (TAKES("-p") || (!strcmp(a, "--prompt") && v && ++i)) prompt = v;
        else if (TAKES("-n") || (!strcmp(a, "--tokens") && v && ++i)) n_gen = strtol(v, NULL, 10);
        else if (TAKES("--cache-preset") || TAKES("--cache")) whole = v;
        else if (TAKES("--cache-k")) kspec = v, k_given = 1;
        else if (TAKES("--cache-v")) vspec = v;
        else if (TAKES("--cache-plan")) plan = v;
        else if ((TAKES("--window") || TAKES("--cache-window"))) window = strtol(v, NULL, 10);
        else if ((TAKES("--outliers") || TAKES("--cache-outliers"))) outliers = strtol(v, NULL, 10);
        else if ((TAKES("--sink") || TAKES("--cache-sink"))) sink = strtol(v, NULL, 10);
        else if (TAKES("--ctx")) n_ctx = strtol(v, NULL, 10);
        else if (TAKES("--threads")) threads = strtol(v, NULL, 10);
        else if (TAKES("--seed")) seed = strtoull(v, NULL, 10);
        else if (TAKES("--temp")) temp = strtod(v, NULL);
        else if (TAKES("--top-p")) top_p = strtod(v, NULL);
        else if (TAKES("--dump-kv")) dump_dir = v;
        else if (!strcmp(a, "--no-bos")) no_bos = 1;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--float-activations")) float_act = 1;
        else {
            fprintf(stderr, "kvq generate: unknown or incomplete option %s\n", a);
            return gen_usage(stderr);
        }
#undef TAKES
    }
    if (!model_path || !prompt) return gen_usage(stderr);
    if (whole) {
        if (k_given || vspec || plan) {
            fprintf(stderr, "kvq generate: --cache-preset/--cache replace --cache-k, --cache-v and --cache-plan\n");
            return 1;
        }
        kspec = whole;
    }
    if (!vspec) vspec = !strcmp(kspec, "f32") ? "f32" : "fp16";
    if (n_gen < 0 || n_ctx < 0 || threads < 0 || window < 0 || outliers < 0 || sink < 0 || sink > 1024 || n_gen > 1000000 ||
        n_ctx > 1000000 || threads > 1024) {
        fprintf(stderr, "kvq generate: a count is out of range\n");
        return 1;
    }
    if (plan && !strcmp(vspec, "f32")) vspec = "fp16";
    if (!plan && (!strcmp(kspec, "f32")) != (!strcmp(vspec, "f32"))) {
        fprintf(stderr, "kvq generate: f32 (exact) applies to keys and values together\n");
        return 1;
    }
    char msg[256] = "";
    kvq_model *model;
    kvq_status st = kvq_model_load(model_path, &model, msg, sizeof msg);
    if (st) {
        fprintf(stderr, "kvq generate: %s: %s%s%s\n", model_path, kvq_strerror(st), msg[0] ? ": " : "", msg);
        return 1;
    }
    kvq_model_info info;
    kvq_model_get_info(model, &info);
    int rc = 1;
    kvq_context *ctx = NULL;
    float *logits = NULL;
    size_t n_prompt = 0;
    int32_t *tokens = NULL;
    kvq_tokenize(model, prompt, no_bos ? 0 : -1, NULL, 0, &n_prompt);
    if (n_prompt == 0) {
        fprintf(stderr, "kvq generate: the prompt gives no tokens\n");
        goto done;
    }
    tokens = malloc(n_prompt * sizeof *tokens);
    logits = malloc((size_t)info.n_vocab * sizeof *logits);
    if (!tokens || !logits) {
        rc = kvq_cli_fail("generate", "memory", KVQ_ERR_NOMEM);
        goto done;
    }
    if ((st = kvq_tokenize(model, prompt, no_bos ? 0 : -1, tokens, n_prompt, &n_prompt))) {
        rc = kvq_cli_fail("generate", "tokenize", st);
        goto done;
    }
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = (uint32_t)(n_ctx ? (size_t)n_ctx : n_prompt + (size_t)n_gen + 1);
    p.n_batch = 256;
    p.n_threads = (uint32_t)threads;
    p.seed = seed;
    p.float_activations = float_act;
    if (strcmp(kspec, "f32") || plan) {
        per_layer = calloc(info.n_layers, sizeof *per_layer);
        if (!per_layer) {
            rc = kvq_cli_fail("generate", "memory", KVQ_ERR_NOMEM);
            goto done;
        }
        if ((st = kvq_cli_cache_configs(&info, plan ? NULL : kspec, vspec, plan, (uint32_t)window,
                                        (uint32_t)outliers, (uint32_t)sink, per_layer, msg, sizeof msg))) {
            fprintf(stderr, "kvq generate: cache spec: %s%s%s\n", kvq_strerror(st), msg[0] ? ": " : "", msg);
            goto done;
        }
        p.cache = per_layer;
        p.n_cache_configs = info.n_layers;
    }
    if (dump_dir) {
        dump.kv_dim = (size_t)info.n_kv_heads * info.head_dim;
        dump.cap = p.n_ctx;
        dump.n_layers = info.n_layers;
        dump.k = calloc(dump.n_layers * dump.cap * dump.kv_dim, sizeof(float));
        dump.v = calloc(dump.n_layers * dump.cap * dump.kv_dim, sizeof(float));
        dump.q_dim = (size_t)info.n_heads * info.head_dim;
        dump.q = calloc(dump.n_layers * dump.cap * dump.q_dim, sizeof(float));
        if (!dump.k || !dump.v || !dump.q) {
            rc = kvq_cli_fail("generate", "--dump-kv memory", KVQ_ERR_NOMEM);
            goto done;
        }
        p.kv_observer = dump_observer;
        p.kv_observer_user = &dump;
        p.query_observer = dump_query_observer;
        p.query_observer_user = &dump;
    }
    if ((st = kvq_context_create(model, &p, &ctx))) {
        rc = kvq_cli_fail("generate", "context", st);
        goto done;
    }
    if (n_prompt + (size_t)n_gen > p.n_ctx) {
        fprintf(stderr, "kvq generate: prompt (%zu tokens) + %ld tokens exceed --ctx %u\n", n_prompt, n_gen, p.n_ctx);
        goto done;
    }
    if (!quiet) fputs(prompt, stdout);
    fflush(stdout);
    double t0 = now_s();
    for (size_t i = 0; i < n_prompt; i += p.n_batch) {
        size_t n = n_prompt - i < p.n_batch ? n_prompt - i : p.n_batch;
        if ((st = kvq_context_eval(ctx, tokens + i, n, i + n == n_prompt ? logits : NULL, 0))) {
            rc = kvq_cli_fail("generate", "prompt", st);
            goto done;
        }
    }
    double t1 = now_s();
    long produced = 0;
    for (; produced < n_gen; produced++) {
        int32_t tok;
        if ((st = kvq_sample(ctx, logits, (float)temp, (float)top_p, &tok))) {
            rc = kvq_cli_fail("generate", "sample", st);
            goto done;
        }
        if (tok == info.eos_token) break;
        char piece[256];
        size_t len;
        if (kvq_token_to_piece(model, tok, piece, sizeof piece, &len) == KVQ_OK) fwrite(piece, 1, len, stdout);
        fflush(stdout);
        if (produced + 1 < n_gen && (st = kvq_context_eval(ctx, &tok, 1, logits, 0))) {
            rc = kvq_cli_fail("generate", "decode", st);
            goto done;
        }
    }
    double t2 = now_s();
    printf("\n");
    fflush(stdout);
    kvq_cache_memory_info mem;
    uint64_t kv_fp16 = 0;
    kvq_context_kv_memory(ctx, &mem, &kv_fp16);
    if (!quiet) {
        double tp = t1 - t0, tg = t2 - t1;
        uint64_t per_token = mem.key_codes + mem.value_codes + mem.window + mem.outliers;
        fprintf(stderr,
                "kvq generate: prompt %zu tokens %.2f s (%.1f tok/s), generation %ld tokens %.2f s (%.1f tok/s)\n"
                "kvq generate: KV cache %s / %s: %" PRIu64 " bytes of codes for %" PRIu64 " tokens vs %" PRIu64
                " as fp16 (%.2fx smaller); %" PRIu64 " bytes held in all\n",
                n_prompt, tp, tp > 0 ? (double)n_prompt / tp : 0.0, produced, tg,
                tg > 0 ? (double)produced / tg : 0.0, plan ? "plan" : kspec, vspec, per_token, mem.n_tokens, kv_fp16,
                per_token ? (double)kv_fp16 / (double)per_token : 0.0, mem.total);
    }
    rc = 0;
    for (size_t l = 0; dump_dir && l < dump.n_layers; l++) {
        char path[4096];
        const float *src[3] = {dump.k + l * dump.cap * dump.kv_dim, dump.v + l * dump.cap * dump.kv_dim,
                               dump.q + l * dump.cap * dump.q_dim};
        static const char *const name[3] = {"keys", "values", "queries"};
        for (int side = 0; side < 3; side++) {
            snprintf(path, sizeof path, "%s/%s_%02zu.npy", dump_dir, name[side], l);
            if (write_npy(path, src[side], dump.n_tokens, side == 2 ? info.n_heads : info.n_kv_heads,
                          info.head_dim)) {
                fprintf(stderr, "kvq generate: cannot write %s\n", path);
                rc = 1;
            }
        }
    }
    if (dump_dir && !rc && !quiet)
        fprintf(stderr, "kvq generate: keys, values and queries of %zu tokens x %zu layers written to %s\n", dump.n_tokens,
                dump.n_layers, dump_dir);
done:
    free(per_layer);
    free(dump.k);
    free(dump.v);
    free(dump.q);
    kvq_context_free(ctx);
    free(tokens);
    free(logits);
    kvq_model_free(model);
    return rc;
}
