/* chat.c - `kvq generate --chat`: the conversation is rendered with kvq_chat_format after
 * every user turn, and only the text past what the context already holds is evaluated,
 * so the compressed KV cache carries the whole conversation from turn to turn (as
 * llama.cpp's conversation mode does). An answer ends at EOS or an end-of-turn token. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "json_out.h"

/* end-of-turn tokens of the common templates; each counts when the vocabulary spells it
 * as one token */
static const char *const STOP_TEXTS[] = {"<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>"};
#define N_STOP_TEXTS (sizeof STOP_TEXTS / sizeof STOP_TEXTS[0])

typedef struct chat_state {
    kvq_model *model;
    kvq_context *ctx;
    const kvq_cli_chat_opts *opts;
    kvq_model_info info;
    kvq_chat_message *msgs; /* contents owned (strdup) */
    size_t n_msgs, cap_msgs;
    size_t cached_len;      /* bytes of the rendering whose tokens are in the context */
    int32_t stops[N_STOP_TEXTS + 1];
    size_t n_stops;
    float *logits;
    int32_t *toks;
    size_t toks_cap;
    char *answer;
    size_t answer_len, answer_cap;
} chat_state;

static int push_msg(chat_state *s, const char *role, const char *content) {
    if (s->n_msgs == s->cap_msgs) {
        size_t cap = s->cap_msgs ? 2 * s->cap_msgs : 16;
        kvq_chat_message *m = realloc(s->msgs, cap * sizeof *m);
        if (!m) return -1;
        s->msgs = m;
        s->cap_msgs = cap;
    }
    char *c = strdup(content);
    if (!c) return -1;
    s->msgs[s->n_msgs].role = role;
    s->msgs[s->n_msgs].content = c;
    s->n_msgs++;
    return 0;
}

/* The conversation rendered (malloc'd, NUL-terminated), or NULL after a message. */
static char *render(chat_state *s, int add_assistant, size_t *len) {
    char msg[256] = "";
    kvq_status st = kvq_chat_format(s->model, s->opts->template_name, s->msgs, s->n_msgs, add_assistant, NULL, 0,
                                    len, msg, sizeof msg);
    if (st != KVQ_ERR_CAPACITY) {
        fprintf(stderr, "kvq generate: chat template: %s%s%s\n", kvq_strerror(st), msg[0] ? ": " : "", msg);
        return NULL;
    }
    char *buf = malloc(*len + 1);
    if (!buf) {
        kvq_cli_fail("generate", "chat", KVQ_ERR_NOMEM);
        return NULL;
    }
    if ((st = kvq_chat_format(s->model, s->opts->template_name, s->msgs, s->n_msgs, add_assistant, buf, *len + 1, len,
                              msg, sizeof msg))) {
        fprintf(stderr, "kvq generate: chat template: %s%s%s\n", kvq_strerror(st), msg[0] ? ": " : "", msg);
        free(buf);
        return NULL;
    }
    return buf;
}

static int is_stop(const chat_state *s, int32_t tok) {
    for (size_t i = 0; i < s->n_stops; i++)
        if (s->stops[i] == tok) return 1;
    return 0;
}

static void find_stops(chat_state *s) {
    if (s->info.eos_token >= 0) s->stops[s->n_stops++] = s->info.eos_token;
    for (size_t i = 0; i < N_STOP_TEXTS; i++) {
        int32_t tok[2];
        size_t n = 0;
        char piece[64];
        size_t len;
        if (kvq_tokenize(s->model, STOP_TEXTS[i], 0, tok, 2, &n) != KVQ_OK || n != 1) continue;
        if (kvq_token_to_piece(s->model, tok[0], piece, sizeof piece, &len) != KVQ_OK || strcmp(piece, STOP_TEXTS[i]))
            continue;
        if (!is_stop(s, tok[0])) s->stops[s->n_stops++] = tok[0];
    }
}

static int append_answer(chat_state *s, const char *p, size_t n) {
    if (s->answer_len + n + 1 > s->answer_cap) {
        size_t cap = (s->answer_len + n + 1) * 2;
        char *a = realloc(s->answer, cap);
        if (!a) return -1;
        s->answer = a;
        s->answer_cap = cap;
    }
    memcpy(s->answer + s->answer_len, p, n);
    s->answer_len += n;
    s->answer[s->answer_len] = 0;
    return 0;
}

static kvq_status eval_text(chat_state *s, const char *text, int add_bos, size_t n_batch, size_t *n_eval) {
    size_t n = 0;
    kvq_status st = kvq_tokenize(s->model, text, add_bos, NULL, 0, &n);
    if (st && st != KVQ_ERR_CAPACITY) return st;
    if (n > s->toks_cap) {
        int32_t *t = realloc(s->toks, n * sizeof *t);
        if (!t) return KVQ_ERR_NOMEM;
        s->toks = t;
        s->toks_cap = n;
    }
    if (n && (st = kvq_tokenize(s->model, text, add_bos, s->toks, n, &n))) return st;
    for (size_t i = 0; i < n; i += n_batch) {
        size_t b = n - i < n_batch ? n - i : n_batch;
        if ((st = kvq_context_eval(s->ctx, s->toks + i, b, s->logits, 0))) return st;
    }
    *n_eval = n;
    return KVQ_OK;
}

static size_t find_end(const char *hay, size_t len, size_t from, const char *needle, size_t n) {
    for (size_t i = from; i + n <= len; i++)
        if (!memcmp(hay + i, needle, n)) return i + n;
    return 0;
}

static int is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

/* Where the answer's text ends in the rendering of the conversation that includes it:
 * the template's closing of the turn (e.g. "<end_of_turn>\n") starts there and is
 * evaluated with the next turn. The answer as generated, else trimmed (Gemma and
 * Llama 3 trim contents); failing both, the whole rendering. */
static size_t answer_end(const char *rendered, size_t len, size_t from, const char *answer) {
    size_t n = strlen(answer), end = find_end(rendered, len, from, answer, n);
    if (end) return end;
    while (is_space(*answer)) answer++, n--;
    while (n && is_space(answer[n - 1])) n--;
    end = find_end(rendered, len, from, answer, n);
    return end ? end : len;
}

static void context_full(const chat_state *s) {
    size_t n = 0;
    kvq_context_length(s->ctx, &n);
    fprintf(stderr, "kvq generate: the context is full after %zu tokens (--ctx sets its size; a Gemma 3 model on a "
                    "compressed cache holds at most its sliding window, which --cache-k f32 lifts)\n", n);
}

/* One user turn: render, evaluate what is new, stream the answer. 0 ok, 1 error. */
static int turn(chat_state *s, const char *user, int number, size_t n_batch) {
    const kvq_cli_chat_opts *o = s->opts;
    if (push_msg(s, "user", user)) return kvq_cli_fail("generate", "chat", KVQ_ERR_NOMEM);
    size_t len;
    char *text = render(s, 1, &len);
    if (!text) return 1;
    size_t prompt_len = len, n_eval = 0;
    double t0 = kvq_cli_now_s();
    int add_bos = s->cached_len == 0 && !o->no_bos ? -1 : 0;
    kvq_status st = s->cached_len <= len ? eval_text(s, text + s->cached_len, add_bos, n_batch, &n_eval)
                                         : KVQ_ERR_STATE;
    free(text);
    if (st == KVQ_ERR_CAPACITY) {
        context_full(s);
        return 1;
    }
    if (st) return kvq_cli_fail("generate", "chat prompt", st);
    s->answer_len = 0;
    if (append_answer(s, "", 0)) return kvq_cli_fail("generate", "chat", KVQ_ERR_NOMEM);
    long produced = 0;
    int full = 0, stopped = 0;
    double t1 = kvq_cli_now_s();
    kvq_sampler_params sp;
    kvq_sampler_params_init(&sp);
    sp.temperature = o->temperature;
    sp.top_p = o->top_p;
    sp.top_k = o->top_k;
    sp.min_p = o->min_p;
    sp.repeat_penalty = o->repeat_penalty > 0.0f ? o->repeat_penalty : 1.0f;
    int32_t recent[4096];
    size_t n_recent = 0, last_n = o->repeat_last_n < 4096 ? o->repeat_last_n : 4096;
    while (produced < o->max_tokens) {
        int32_t tok;
        sp.recent = recent + (n_recent > last_n ? n_recent - last_n : 0);
        sp.n_recent = n_recent < last_n ? n_recent : last_n;
        if ((st = kvq_sample_ext(s->ctx, s->logits, &sp, &tok)))
            return kvq_cli_fail("generate", "sample", st);
        if (is_stop(s, tok)) {
            stopped = 1;
            break;
        }
        if (n_recent == 4096) { /* keep the newest half */
            memmove(recent, recent + 2048, 2048 * sizeof *recent);
            n_recent = 2048;
        }
        recent[n_recent++] = tok;
        char piece[256];
        size_t plen;
        if (kvq_token_to_piece(s->model, tok, piece, sizeof piece, &plen) == KVQ_OK) {
            if (!o->json) {
                fwrite(piece, 1, plen, stdout);
                fflush(stdout);
            }
            if (append_answer(s, piece, plen)) return kvq_cli_fail("generate", "chat", KVQ_ERR_NOMEM);
        }
        produced++;
        if ((st = kvq_context_eval(s->ctx, &tok, 1, s->logits, 0))) {
            if (st != KVQ_ERR_CAPACITY) return kvq_cli_fail("generate", "decode", st);
            full = 1;
            produced--;
            break;
        }
    }
    double t2 = kvq_cli_now_s();
    size_t ctx_len = 0;
    kvq_context_length(s->ctx, &ctx_len);
    if (o->json) {
        kvq_cache_memory_info mem;
        uint64_t kv_fp16 = 0;
        int have_mem = kvq_context_kv_memory(s->ctx, &mem, &kv_fp16) == KVQ_OK;
        printf("{\"turn\": %d, \"user\": ", number);
        kvq_json_string(stdout, user);
        fputs(", \"text\": ", stdout);
        kvq_json_string_n(stdout, s->answer, s->answer_len);
        printf(", \"prompt_tokens\": %zu, \"generated_tokens\": %ld, \"context_tokens\": %zu, \"stopped\": \"%s\"",
               n_eval, produced, ctx_len, stopped ? "eos" : full ? "context" : "length");
        fputs(", \"prompt_seconds\": ", stdout);
        kvq_json_number(stdout, t1 - t0);
        fputs(", \"generation_seconds\": ", stdout);
        kvq_json_number(stdout, t2 - t1);
        fputs(", \"generation_tokens_per_second\": ", stdout);
        kvq_json_number(stdout, t2 > t1 ? (double)produced / (t2 - t1) : 0.0);
        if (have_mem)
            printf(", \"kv_tokens\": %llu, \"kv_code_bytes\": %llu, \"kv_fp16_bytes\": %llu, \"kv_total_bytes\": %llu",
                   (unsigned long long)mem.n_tokens,
                   (unsigned long long)(mem.key_codes + mem.value_codes + mem.window + mem.outliers),
                   (unsigned long long)kv_fp16, (unsigned long long)mem.total);
        fputs("}\n", stdout);
    } else {
        fputc('\n', stdout);
    }
    fflush(stdout);
    if (!o->quiet)
        fprintf(stderr, "kvq generate: turn %d: %zu prompt tokens evaluated, %ld generated, context %zu tokens\n",
                number, n_eval, produced, ctx_len);
    if (full) {
        context_full(s);
        return 1;
    }
    if (push_msg(s, "assistant", s->answer)) return kvq_cli_fail("generate", "chat", KVQ_ERR_NOMEM);
    char *done = render(s, 0, &len);
    if (!done) return 1;
    s->cached_len = answer_end(done, len, prompt_len, s->answer);
    free(done);
    return 0;
}

int kvq_cli_chat(kvq_model *model, kvq_context *ctx, const kvq_cli_chat_opts *opts, FILE *in) {
    chat_state s;
    memset(&s, 0, sizeof s);
    s.model = model;
    s.ctx = ctx;
    s.opts = opts;
    kvq_model_get_info(model, &s.info);
    find_stops(&s);
    int rc = 1;
    char *line = NULL;
    size_t line_cap = 0;
    s.logits = malloc((size_t)s.info.n_vocab * sizeof *s.logits);
    if (!s.logits) {
        kvq_cli_fail("generate", "chat", KVQ_ERR_NOMEM);
        goto done;
    }
    if (opts->system && push_msg(&s, "system", opts->system)) {
        kvq_cli_fail("generate", "chat", KVQ_ERR_NOMEM);
        goto done;
    }
    size_t n_batch = opts->n_batch ? opts->n_batch : 1;
    if (opts->prompt) {
        rc = turn(&s, opts->prompt, 1, n_batch);
        goto done;
    }
    int interactive = isatty(fileno(in)) && isatty(fileno(stdout));
    for (int number = 1;; number++) {
        if (interactive) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t n = getline(&line, &line_cap, in);
        if (n < 0) break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) {
            number--;
            continue;
        }
        if (turn(&s, line, number, n_batch)) goto done;
    }
    rc = 0;
done:
    free(line);
    for (size_t i = 0; i < s.n_msgs; i++) free((char *)s.msgs[i].content);
    free(s.msgs);
    free(s.logits);
    free(s.toks);
    free(s.answer);
    return rc;
}
