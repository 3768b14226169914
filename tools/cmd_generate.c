/* cmd_generate.c - `kvq generate`: stream text from a GGUF model whose KV cache is
 * compressed with the given key and value quantizers, then report speed and KV memory. */
#include <inttypes.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "cache_configs.h"
#include "chat.h"
#include "cli.h"
#include "json_out.h"
#include "layer_set.h"

static int gen_usage(FILE *f) {
    fprintf(f,
            "usage: kvq generate -m MODEL.gguf (-p PROMPT | -f FILE) [options]\n"
            "       kvq generate -m MODEL.gguf --chat [-p PROMPT] [options]\n\n"
            "  -m, --model FILE   GGUF model (Llama family)\n"
            "  -p, --prompt TEXT  prompt text\n"
            "  -f, --file FILE    read the prompt from a text file\n"
            "  -n, --tokens N     tokens to generate, 0..1000000 (default 64; also --n-predict)\n"
            "  --cache-preset P   a named cache: q4 (<= 4.5 bits per number), q3 (<= 3), q2 (<= 2.25);\n"
            "                     cache options may follow '@': q4@window=32 (docs/METHODS.md)\n"
            "  --cache SPEC       a whole cache spec: KSPEC+VSPEC@options, e.g.\n"
            "                     mse:bits=4+mse:bits=3@center=1,sink=1,window=16\n"
            "  --cache-k SPEC     key quantizer, e.g. fp16, q8_0, q4_0, turboquant_rvq:bits=1,residuals=2\n"
            "                     (default fp16; f32 keeps exact float keys and values; also -ctk,\n"
            "                     --cache-type-k, where llama.cpp's f16 means fp16)\n"
            "                     a layer number pattern (%%d, %%02d) gives each layer its own artifact:\n"
            "                     vecinfer:artifact=vi.layer%%02d.safetensors (kvq calibrate --per-layer;\n"
            "                     its manifest must match the files, else the set is refused)\n"
            "  --cache-v SPEC     value quantizer (default: fp16; also -ctv, --cache-type-v)\n"
            "  --cache-plan FILE  keys of each layer from a RateQuant plan (kvq calibrate --method ratequant)\n"
            "  --window N         most recent tokens also kept exact (default 0; also --cache-window);\n"
            "                     0..1000000, and a window longer than the context is cut to the context\n"
            "  --outliers N       key channels per head kept in fp16 (default 0; also --cache-outliers)\n"
            "  --sink N           first tokens kept exact, the attention sinks, 0..1024 (default 0; also --cache-sink)\n"
            "  -c, --ctx N        context length, 0..1000000 (default 0: prompt + tokens; also --ctx-size)\n"
            "  -t, --threads N    threads, 0..1024 (default 0 = one per CPU)\n"
            "  -s, --seed S       sampler seed, 0..2^64-1 (default 0)\n"
            "  --temp T           temperature, 0 = greedy (default 0)\n"
            "  --top-k K          sample among the K most likely tokens (default 0 = all)\n"
            "  --top-p P          nucleus sampling mass, 0..1 (default 0.95)\n"
            "  --min-p P          drop tokens below P x the top token's probability, 0..1 (default 0)\n"
            "  --repeat-penalty R penalty on the last --repeat-last-n tokens' logits (default 1 = none)\n"
            "  --repeat-last-n N  tokens the penalty looks back on, 0..4096 (default 64)\n"
            "                     (top-k, top-p and min-p apply after the temperature)\n"
            "  --no-bos           never put the BOS token first\n"
            "  --float-activations  float32 activations in every matrix product (slower; the\n"
            "                     numerical reference: by default they are int8, as llama.cpp's)\n"
            "  --quiet            print only the generated text\n"
            "  --json             print one JSON object on stdout instead of the text: the text,\n"
            "                     token counts, timings, tokens/s and KV cache bytes (with --chat,\n"
            "                     one object per turn, each on its own line)\n"
            "  --chat, -cnv       chat with the model's chat template: each line of stdin is a user\n"
            "                     turn, answered until an end-of-turn token or -n tokens; the KV cache\n"
            "                     keeps the conversation, so only each new turn is evaluated; with -p,\n"
            "                     that one turn is answered and the program exits (sampling: --temp,\n"
            "                     --top-p, --top-k, --min-p and --repeat-penalty over the answer's last\n"
            "                     --repeat-last-n tokens)\n"
            "  --system, -sys TEXT  system prompt for --chat (Gemma: joined to the first user turn)\n"
            "  --chat-template NAME  chatml, llama3, llama2, mistral, gemma or phi3 instead of the\n"
            "                     model's own (default: the GGUF's tokenizer.chat_template)\n"
            "  --dump-kv DIR      write every layer's keys (after RoPE) and values as\n"
            "                     DIR/keys_LL.npy and DIR/values_LL.npy, float32 [tokens][kv_heads][head_dim],\n"
            "                     and the queries (after RoPE) as DIR/queries_LL.npy [tokens][heads][head_dim];\n"
            "                     DIR is created if missing (its parent must exist) before the model loads\n");
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

/* The generated text, for --json. */
typedef struct text_buf {
    char *p;
    size_t len, cap;
} text_buf;

static int text_append(text_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) return -1;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int kvq_cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *kspec = "fp16", *vspec = NULL, *dump_dir = NULL;
    const char *whole = NULL;
    int k_given = 0;
    const char *plan = NULL;
    kvq_cache_config *per_layer = NULL;
    kv_dump dump = {0};
    long n_gen = 64, n_ctx = 0, threads = 0, window = 0, outliers = 0, sink = 0, top_k = 0, last_n = 64;
    uint64_t seed = 0;
    double temp = 0.0, top_p = 0.95, min_p = 0.0, repeat_penalty = 1.0;
    int no_bos = 0, quiet = 0, float_act = 0, json = 0, chat = 0;
    const char *prompt_file = NULL;
    const char *system_prompt = NULL, *chat_template = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define TAKES(...) (!strcmp(a, __VA_ARGS__) && v && ++i)
#define LONG_IN(lo, hi, dst) if (kvq_arg_long("generate", a, v, lo, hi, dst)) return 1
#define REAL_IN(lo, hi, dst) if (kvq_arg_double("generate", a, v, lo, hi, dst)) return 1
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return gen_usage(stdout);
        else if (TAKES("-m") || TAKES("--model")) model_path = v;
        else if (TAKES("-p") || TAKES("--prompt")) prompt = v;
        else if (TAKES("-f") || TAKES("--file")) prompt_file = v;
        else if (TAKES("-n") || TAKES("--tokens") || TAKES("--n-predict")) { LONG_IN(0, 1000000, &n_gen); }
        else if (TAKES("--cache-preset") || TAKES("--cache")) whole = v;
        else if (TAKES("--cache-k") || TAKES("-ctk") || TAKES("--cache-type-k")) kspec = v, k_given = 1;
        else if (TAKES("--cache-v") || TAKES("-ctv") || TAKES("--cache-type-v")) vspec = v;
        else if (TAKES("--cache-plan")) plan = v;
        else if (TAKES("--window") || TAKES("--cache-window")) { LONG_IN(0, 1000000, &window); }
        else if (TAKES("--outliers") || TAKES("--cache-outliers")) { LONG_IN(0, 4096, &outliers); }
        else if (TAKES("--sink") || TAKES("--cache-sink")) { LONG_IN(0, 1024, &sink); }
        else if (TAKES("-c") || TAKES("--ctx") || TAKES("--ctx-size")) { LONG_IN(0, 1000000, &n_ctx); }
        else if (TAKES("-t") || TAKES("--threads")) { LONG_IN(0, 1024, &threads); }
        else if (TAKES("-s") || TAKES("--seed")) {
            if (kvq_arg_u64("generate", a, v, 0, UINT64_MAX, &seed)) return 1;
        } else if (TAKES("--temp")) { REAL_IN(0.0, 1000.0, &temp); }
        else if (TAKES("--top-k")) { LONG_IN(0, 1000000, &top_k); }
        else if (TAKES("--top-p")) { REAL_IN(0.0, 1.0, &top_p); }
        else if (TAKES("--min-p")) { REAL_IN(0.0, 1.0, &min_p); }
        else if (TAKES("--repeat-penalty")) { REAL_IN(0.01, 100.0, &repeat_penalty); }
        else if (TAKES("--repeat-last-n")) { LONG_IN(0, 4096, &last_n); }
        else if (TAKES("--dump-kv")) dump_dir = v;
        else if (!strcmp(a, "--no-bos")) no_bos = 1;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--float-activations")) float_act = 1;
        else if (!strcmp(a, "--chat") || !strcmp(a, "-cnv")) chat = 1;
        else if (TAKES("--system") || TAKES("-sys")) system_prompt = v;
        else if (TAKES("--chat-template")) chat_template = v;
        else {
            fprintf(stderr, "kvq generate: unknown or incomplete option %s\n", a);
            return gen_usage(stderr);
        }
#undef REAL_IN
#undef LONG_IN
#undef TAKES
    }
    if (prompt && prompt_file) {
        fprintf(stderr, "kvq generate: give the prompt as -p TEXT or -f FILE, not both\n");
        return 1;
    }
    if (!model_path || (!prompt && !prompt_file && !chat)) return gen_usage(stderr);
    if (whole) {
        if (k_given || vspec || plan) {
            fprintf(stderr, "kvq generate: --cache-preset/--cache replace --cache-k, --cache-v and --cache-plan\n");
            return 1;
        }
        kspec = whole;
    }
    if (!vspec) vspec = !strcmp(kspec, "f32") ? "f32" : "fp16";
    if (plan && !strcmp(vspec, "f32")) vspec = "fp16";
    if (!plan && (!strcmp(kspec, "f32")) != (!strcmp(vspec, "f32"))) {
        fprintf(stderr, "kvq generate: f32 (exact) applies to keys and values together\n");
        return 1;
    }
    if ((!plan && kvq_cli_check_calibrated("generate", kspec)) || kvq_cli_check_calibrated("generate", vspec))
        return 1;
    /* --dump-kv DIR: made (one level) or checked before the model runs, not after */
    if (dump_dir) {
        struct stat sb;
        if (mkdir(dump_dir, 0777) != 0 && errno != EEXIST) {
            fprintf(stderr, "kvq generate: --dump-kv %s: cannot create: %s\n", dump_dir, strerror(errno));
            return 1;
        }
        if (stat(dump_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "kvq generate: --dump-kv %s: not a directory\n", dump_dir);
            return 1;
        }
        if (access(dump_dir, W_OK | X_OK) != 0) {
            fprintf(stderr, "kvq generate: --dump-kv %s: not writable: %s\n", dump_dir, strerror(errno));
            return 1;
        }
    }
    char *prompt_text = NULL;
    if (prompt_file && !(prompt = prompt_text = kvq_cli_read_text("generate", prompt_file, NULL))) return 1;
    char msg[256] = "";
    kvq_model *model;
    kvq_status st = kvq_model_load(model_path, &model, msg, sizeof msg);
    if (st) {
        fprintf(stderr, "kvq generate: %s: %s%s%s\n", model_path, kvq_strerror(st), msg[0] ? ": " : "", msg);
        free(prompt_text);
        return 1;
    }
    kvq_model_info info;
    kvq_model_get_info(model, &info);
    int rc = 1;
    kvq_context *ctx = NULL;
    float *logits = NULL;
    int32_t *history = NULL;
    text_buf out_text = {0};
    size_t n_prompt = 0;
    int32_t *tokens = NULL;
    if (chat) goto context; /* the chat renders and tokenizes its own turns */
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
context:;
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = (uint32_t)(n_ctx ? (size_t)n_ctx : n_prompt + (size_t)n_gen + 1);
    if (chat && !n_ctx) p.n_ctx = info.ctx_len < 4096 ? info.ctx_len : 4096;
    p.n_batch = 256;
    p.n_threads = (uint32_t)threads;
    p.seed = seed;
    p.float_activations = float_act;
    if (window > (long)p.n_ctx) window = (long)p.n_ctx; /* a longer window holds nothing more */
    if (strcmp(kspec, "f32") || plan) {
        if ((!plan && kvq_cli_check_layer_set("generate", kspec, info.n_layers)) ||
            kvq_cli_check_layer_set("generate", vspec, info.n_layers))
            goto done;
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
    kvq_clear_last_error();
    if ((st = kvq_context_create(model, &p, &ctx))) {
        rc = kvq_cli_fail("generate", "context", st);
        goto done;
    }
    if (chat) {
        kvq_cli_chat_opts co = {system_prompt, chat_template, prompt, n_gen, p.n_batch < p.n_ctx ? p.n_batch : p.n_ctx,
                                (float)temp, (float)top_p, no_bos, quiet, (uint32_t)top_k, (float)min_p,
                                (float)repeat_penalty, (size_t)last_n, json};
        rc = kvq_cli_chat(model, ctx, &co, stdin);
        goto done;
    }
    if (n_prompt + (size_t)n_gen > p.n_ctx) {
        fprintf(stderr, "kvq generate: prompt (%zu tokens) + %ld tokens exceed --ctx %u\n", n_prompt, n_gen, p.n_ctx);
        goto done;
    }
    if (!quiet && !json) fputs(prompt, stdout);
    fflush(stdout);
    kvq_sampler_params sp;
    kvq_sampler_params_init(&sp);
    sp.temperature = (float)temp;
    sp.top_k = (uint32_t)top_k;
    sp.top_p = (float)top_p;
    sp.min_p = (float)min_p;
    sp.repeat_penalty = (float)repeat_penalty;
    /* the penalty's look-back: the last last_n tokens of prompt and output */
    history = malloc((n_prompt + (size_t)n_gen + 1) * sizeof *history);
    if (!history) {
        rc = kvq_cli_fail("generate", "memory", KVQ_ERR_NOMEM);
        goto done;
    }
    memcpy(history, tokens, n_prompt * sizeof *tokens);
    size_t n_history = n_prompt;
    double t0 = kvq_cli_now_s();
    for (size_t i = 0; i < n_prompt; i += p.n_batch) {
        size_t n = n_prompt - i < p.n_batch ? n_prompt - i : p.n_batch;
        if ((st = kvq_context_eval(ctx, tokens + i, n, i + n == n_prompt ? logits : NULL, 0))) {
            rc = kvq_cli_fail("generate", "prompt", st);
            goto done;
        }
    }
    double t1 = kvq_cli_now_s();
    long produced = 0;
    for (; produced < n_gen; produced++) {
        int32_t tok;
        sp.n_recent = n_history < (size_t)last_n ? n_history : (size_t)last_n;
        sp.recent = history + n_history - sp.n_recent;
        if ((st = kvq_sample_ext(ctx, logits, &sp, &tok))) {
            rc = kvq_cli_fail("generate", "sample", st);
            goto done;
        }
        if (tok == info.eos_token) break;
        history[n_history++] = tok;
        char piece[256];
        size_t len;
        if (kvq_token_to_piece(model, tok, piece, sizeof piece, &len) == KVQ_OK) {
            if (!json) {
                fwrite(piece, 1, len, stdout);
                fflush(stdout);
            } else if (text_append(&out_text, piece, len)) {
                rc = kvq_cli_fail("generate", "memory", KVQ_ERR_NOMEM);
                goto done;
            }
        }
        if (produced + 1 < n_gen && (st = kvq_context_eval(ctx, &tok, 1, logits, 0))) {
            rc = kvq_cli_fail("generate", "decode", st);
            goto done;
        }
    }
    double t2 = kvq_cli_now_s();
    kvq_cache_memory_info mem;
    uint64_t kv_fp16 = 0;
    kvq_context_kv_memory(ctx, &mem, &kv_fp16);
    double tp = t1 - t0, tg = t2 - t1;
    uint64_t per_token = mem.key_codes + mem.value_codes + mem.window + mem.outliers;
    if (json) {
        printf("{\"model\": ");
        kvq_json_string(stdout, model_path);
        printf(", \"prompt\": ");
        kvq_json_string(stdout, prompt);
        printf(", \"text\": ");
        kvq_json_string_n(stdout, out_text.p ? out_text.p : "", out_text.len);
        printf(", \"cache_k\": ");
        kvq_json_string(stdout, plan ? "plan" : kspec);
        printf(", \"cache_v\": ");
        kvq_json_string(stdout, vspec);
        printf(", \"n_ctx\": %u, \"prompt_tokens\": %zu, \"generated_tokens\": %ld, \"stopped_at_eos\": %s",
               p.n_ctx, n_prompt, produced, produced < n_gen ? "true" : "false");
        printf(", \"prompt_seconds\": ");
        kvq_json_number(stdout, tp);
        printf(", \"generation_seconds\": ");
        kvq_json_number(stdout, tg);
        printf(", \"prompt_tokens_per_second\": ");
        kvq_json_number(stdout, tp > 0 ? (double)n_prompt / tp : 0.0);
        printf(", \"generation_tokens_per_second\": ");
        kvq_json_number(stdout, tg > 0 ? (double)produced / tg : 0.0);
        printf(", \"kv_tokens\": %" PRIu64 ", \"kv_code_bytes\": %" PRIu64 ", \"kv_fp16_bytes\": %" PRIu64
               ", \"kv_total_bytes\": %" PRIu64 "}\n",
               mem.n_tokens, per_token, kv_fp16, mem.total);
    } else {
        printf("\n");
    }
    fflush(stdout);
    if (!quiet) {
        /* a whole spec (--cache, --cache-preset) names both sides itself */
        char label[1200];
        if (whole) snprintf(label, sizeof label, "%s", whole);
        else snprintf(label, sizeof label, "%s / %s", plan ? "plan" : kspec, vspec);
        /* codes plus the exact window and sinks: a fixed ring outweighs fp16 on a short text */
        int smaller = per_token <= kv_fp16;
        double ratio = smaller ? (per_token ? (double)kv_fp16 / (double)per_token : 0.0)
                               : (kv_fp16 ? (double)per_token / (double)kv_fp16 : 0.0);
        fprintf(stderr,
                "kvq generate: prompt %zu tokens %.2f s (%.1f tok/s), generation %ld tokens %.2f s (%.1f tok/s)\n"
                "kvq generate: KV cache %s: %" PRIu64 " bytes of codes and exact window for %" PRIu64
                " tokens vs %" PRIu64 " as fp16 (%.2fx %s); %" PRIu64 " bytes held in all\n",
                n_prompt, tp, tp > 0 ? (double)n_prompt / tp : 0.0, produced, tg,
                tg > 0 ? (double)produced / tg : 0.0, label, per_token, mem.n_tokens, kv_fp16, ratio,
                smaller ? "smaller" : "larger", mem.total);
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
    free(history);
    free(out_text.p);
    free(prompt_text);
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
