/* serve_sched.c - the slot scheduler: SLOTS inference contexts, each with its own
 * compressed KV cache, stepped by one thread. Each iteration admits queued requests into
 * free slots (between steps), evaluates one prompt chunk for every slot still reading its
 * prompt, samples a token for every generating slot, then decodes all those tokens in
 * one batched pass (kvq_batch_decode: the weights read once for every slot), and lets
 * finished requests leave: continuous batching.
 * A slot keeps its tokens after a request, so a conversation that comes back with its
 * history evaluates only the new suffix. A KV budget in tokens (kvq_cache_tokens_fit)
 * covers every slot's reservation (prompt + max_tokens) and the idle slots' kept
 * prefixes; requests wait in a bounded queue when it is spent. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../cli.h"
#include "serve.h"

#define CHUNK_TOKENS 64 /* the caches grow in chunks of 64 tokens: reservations round up */

typedef enum slot_phase { SLOT_FREE, SLOT_PROMPT, SLOT_GEN } slot_phase;

typedef struct slot {
    kvq_context *ctx;
    int32_t *hist; /* tokens evaluated in ctx, in order */
    size_t n_hist;
    float *own_logits;    /* [n_vocab]: a prompt's last token's, or a lone decode's */
    const float *logits;  /* the next token's: own_logits, or its row of the last batched decode
                             (valid until the next decode, after every slot has sampled) */
    float *probs;
    int32_t *order;
    serve_job *job;
    slot_phase phase;
    size_t prompt_pos, reserve;
    uint64_t held_bytes; /* KV bytes this slot may hold: its reservation, or its kept tokens */
    uint64_t rng;
    double last_used;
} slot;

struct serve_sched {
    serve_sched_params p;
    kvq_model_info info;
    slot *slots;
    kvq_threadpool *pool; /* one pool for the batch and every slot: all kvq work runs on
                             the scheduler's thread, one call at a time */
    kvq_batch *batch;     /* one decode step for all generating slots */
    kvq_context **b_ctx;  /* [n_slots]: this step's rows */
    slot **b_slot;
    int32_t *b_tok;
    float *b_logits;      /* [n_slots][n_vocab] */
    int32_t stops[8];
    size_t n_stops;
    uint64_t budget;      /* KV bytes over all slots (UINT64_MAX: none) */
    uint64_t fixed_bytes; /* what an empty slot's caches hold (rotations, codebooks, tables) */
    uint64_t cal_n1, cal_b1, cal_slope; /* measured: cal_b1 bytes at cal_n1 tokens, then per token */
    uint64_t budget_tokens, budget_conversations;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int thread_started, quit;
    serve_job **queue;
    size_t q_head, q_len;
    uint64_t seed_counter;
    serve_metrics m;
};

/* ------------------------------------------------------------------ jobs */

serve_job *serve_job_new(void) {
    serve_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    j->t_submit = kvq_cli_now_s();
    return j;
}

void serve_job_release(serve_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (!last) return;
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j->tokens);
    free(j->text);
    free(j);
}

void serve_job_cancel(serve_job *j) {
    pthread_mutex_lock(&j->mu);
    j->cancel = 1;
    pthread_mutex_unlock(&j->mu);
}

static void job_finish(serve_job *j, serve_finish f, const char *error) {
    pthread_mutex_lock(&j->mu);
    if (j->finish == SERVE_RUNNING) {
        j->finish = f;
        j->text_ready = j->text_len;
        if (error) snprintf(j->error, sizeof j->error, "%s", error);
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* Appends a piece, cuts at a stop string; returns 1 when a stop string ended the text. */
static int job_append(serve_job *j, const char *piece, size_t n) {
    pthread_mutex_lock(&j->mu);
    int stopped = 0;
    if (j->text_len + n + 1 > j->text_cap) {
        size_t cap = (j->text_len + n + 1) * 2;
        char *t = realloc(j->text, cap);
        if (!t) {
            pthread_mutex_unlock(&j->mu);
            return -1;
        }
        j->text = t;
        j->text_cap = cap;
    }
    size_t old = j->text_len;
    memcpy(j->text + j->text_len, piece, n);
    j->text_len += n;
    j->text[j->text_len] = 0;
    j->n_generated++;
    if (j->t_first == 0) j->t_first = kvq_cli_now_s();
    size_t hold = 0;
    for (size_t s = 0; s < j->n_stop; s++) {
        size_t sl = strlen(j->stop[s]);
        size_t from = old > sl ? old - sl : 0;
        char *hit = strstr(j->text + from, j->stop[s]);
        if (hit && (size_t)(hit - j->text) < j->text_len) {
            j->text_len = (size_t)(hit - j->text);
            j->text[j->text_len] = 0;
            stopped = 1;
        }
    }
    for (size_t s = 0; !stopped && s < j->n_stop; s++) { /* hold back a partial stop string */
        size_t sl = strlen(j->stop[s]);
        for (size_t k = sl - 1; k > hold; k--)
            if (k <= j->text_len && !memcmp(j->text + j->text_len - k, j->stop[s], k)) {
                hold = k;
                break;
            }
    }
    size_t ready = serve_utf8_complete(j->text, j->text_len - hold);
    if (ready > j->text_ready) j->text_ready = ready;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return stopped;
}

/* --------------------------------------------------------------- sampling */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static const float *sort_probs; /* only the scheduler thread sorts */
static int by_prob_desc(const void *a, const void *b) {
    float pa = sort_probs[*(const int32_t *)a], pb = sort_probs[*(const int32_t *)b];
    return pa < pb ? 1 : pa > pb ? -1 : (*(const int32_t *)a > *(const int32_t *)b) - (*(const int32_t *)a < *(const int32_t *)b);
}

/* The request's own seeded draw (each request its own rng, so a seed repeats a reply):
 * greedy at temperature 0, else softmax(logits / T) cut to the top_p nucleus. */
static int32_t sample(slot *s, uint32_t n_vocab, float temperature, float top_p) {
    const float *l = s->logits;
    int32_t best = 0;
    for (uint32_t i = 1; i < n_vocab; i++)
        if (l[i] > l[best]) best = (int32_t)i;
    if (temperature <= 0.0f) return best;
    double sum = 0;
    for (uint32_t i = 0; i < n_vocab; i++) {
        s->probs[i] = expf((l[i] - l[best]) / temperature);
        sum += s->probs[i];
    }
    double r = (double)(splitmix64(&s->rng) >> 11) * 0x1.0p-53;
    if (top_p >= 1.0f) {
        double target = r * sum, acc = 0;
        for (uint32_t i = 0; i < n_vocab; i++) {
            acc += s->probs[i];
            if (acc >= target) return (int32_t)i;
        }
        return best;
    }
    /* the nucleus: only tokens at least 1e-7 of the top one can matter */
    size_t n = 0;
    for (uint32_t i = 0; i < n_vocab; i++)
        if (s->probs[i] >= 1e-7f) s->order[n++] = (int32_t)i;
    sort_probs = s->probs;
    qsort(s->order, n, sizeof *s->order, by_prob_desc);
    double mass = 0;
    size_t k = 0;
    while (k < n && mass < top_p * sum) mass += s->probs[s->order[k++]];
    double target = r * mass, acc = 0;
    for (size_t i = 0; i < k; i++) {
        acc += s->probs[s->order[i]];
        if (acc >= target) return s->order[i];
    }
    return best;
}

/* ---------------------------------------------------------------- budget */

static size_t round_chunk(size_t n) { return (n + CHUNK_TOKENS - 1) / CHUNK_TOKENS * CHUNK_TOKENS; }

/* The KV bytes one slot holds with n tokens: from the start-up measurement when there is
 * one (it sees what the model's contexts really hold: sliding-window layers that stop
 * growing, the exact window, sinks, staged outliers), else the fewest bytes in which
 * kvq_cache_tokens_fit finds room for n; never less than an empty slot's. */
static uint64_t bytes_for(const serve_sched *S, uint64_t n) {
    if (n == 0) return S->fixed_bytes;
    uint64_t b;
    if (S->cal_n1) /* measured at start-up: flat below the first point, then linear */
        return S->cal_b1 + (n > S->cal_n1 ? (n - S->cal_n1) * S->cal_slope : 0);
    if (!S->p.per_layer) {
        b = n * S->info.n_layers * 2ull * S->info.n_kv_heads * S->info.head_dim * 4ull;
    } else { /* layer by layer: a preset's plan gives layers different bits */
        b = 0;
        uint64_t prev = 0;
        for (uint32_t l = 0; l < S->info.n_layers; l++) {
            const kvq_cache_config *cfg = &S->p.per_layer[l];
            if (l && !memcmp(cfg, cfg - 1, sizeof *cfg)) { /* a plan repeats configs: searched once */
                b += prev;
                continue;
            }
            uint64_t lo = 0, hi = 1u << 16, fit = 0;
            while (hi < (1ull << 50) && (kvq_cache_tokens_fit(cfg, 1, hi, &fit) != KVQ_OK || fit < n)) lo = hi, hi *= 2;
            while (hi - lo > 256) {
                uint64_t mid = lo + (hi - lo) / 2;
                if (kvq_cache_tokens_fit(cfg, 1, mid, &fit) == KVQ_OK && fit >= n) hi = mid;
                else lo = mid;
            }
            b += hi;
            prev = hi;
        }
    }
    return b > S->fixed_bytes ? b : S->fixed_bytes;
}

static uint64_t held_total(const serve_sched *S) {
    uint64_t t = 0;
    for (uint32_t i = 0; i < S->p.n_slots; i++) t += S->slots[i].held_bytes;
    return t;
}

static size_t common_prefix(const slot *s, const serve_job *j) {
    size_t n = 0;
    while (n < s->n_hist && n < j->n_tokens && s->hist[n] == j->tokens[n]) n++;
    return n;
}

/* Puts queue heads into free slots while the budget allows (FIFO: the head waits). */
static void admit(serve_sched *S) {
    while (S->q_len) {
        serve_job *j = S->queue[S->q_head];
        pthread_mutex_lock(&j->mu);
        int cancelled = j->cancel;
        pthread_mutex_unlock(&j->mu);
        if (cancelled) {
            S->q_head = (S->q_head + 1) % S->p.max_queue;
            S->q_len--;
            S->m.requests_cancelled++;
            job_finish(j, SERVE_CANCELLED, NULL);
            serve_job_release(j);
            continue;
        }
        /* the free slot whose whole history starts the prompt (longest), else the
         * least recently used free slot */
        slot *pick = NULL;
        size_t pick_reuse = 0;
        for (uint32_t i = 0; i < S->p.n_slots; i++) {
            slot *s = &S->slots[i];
            if (s->job) continue;
            size_t cp = common_prefix(s, j);
            size_t reuse = cp == s->n_hist && cp < j->n_tokens ? cp : 0;
            if (!pick || reuse > pick_reuse || (reuse == pick_reuse && s->last_used < pick->last_used)) {
                pick = s;
                pick_reuse = reuse;
            }
        }
        if (!pick) return;
        size_t reserve = round_chunk(j->n_tokens + (size_t)j->max_tokens);
        uint64_t need = bytes_for(S, reserve);
        /* evict idle slots' kept histories, least recently used first, until it fits */
        while (held_total(S) - pick->held_bytes + need > S->budget) {
            slot *victim = NULL;
            for (uint32_t i = 0; i < S->p.n_slots; i++) {
                slot *s = &S->slots[i];
                if (s->job || s == pick || s->n_hist == 0) continue;
                if (!victim || s->last_used < victim->last_used) victim = s;
            }
            if (!victim) break;
            kvq_context_reset(victim->ctx);
            victim->n_hist = 0;
            victim->held_bytes = S->fixed_bytes;
        }
        if (held_total(S) - pick->held_bytes + need > S->budget) return; /* wait */
        if (pick_reuse == 0 && pick->n_hist) {
            kvq_context_reset(pick->ctx);
            pick->n_hist = 0;
        }
        S->q_head = (S->q_head + 1) % S->p.max_queue;
        S->q_len--;
        pick->job = j;
        pick->reserve = reserve;
        pick->held_bytes = need;
        pick->phase = SLOT_PROMPT;
        pick->prompt_pos = pick_reuse;
        pick->rng = j->seed;
        j->n_reused = pick_reuse;
        S->m.prompt_tokens += j->n_tokens;
        S->m.prompt_tokens_reused += pick_reuse;
    }
}

static void slot_failed(slot *s, kvq_status st) {
    char why[160];
    snprintf(why, sizeof why, "evaluation failed: %s", kvq_strerror(st));
    job_finish(s->job, SERVE_FAILED, why);
    kvq_context_reset(s->ctx);
    s->n_hist = 0;
}

/* One step of one busy slot up to its decode: a prompt chunk, or the sampling of its next
 * token, which it sets in *decode (-1: nothing to decode, the request ended or is still
 * reading its prompt). Returns 1 if it generated a token. */
static int step(serve_sched *S, slot *s, int32_t *decode) {
    *decode = -1;
    serve_job *j = s->job;
    pthread_mutex_lock(&j->mu);
    int cancelled = j->cancel;
    pthread_mutex_unlock(&j->mu);
    if (cancelled) {
        job_finish(j, SERVE_CANCELLED, NULL);
        return 0;
    }
    kvq_status st;
    if (s->phase == SLOT_PROMPT) {
        size_t n = j->n_tokens - s->prompt_pos;
        if (n > S->p.n_batch) n = S->p.n_batch;
        int last = s->prompt_pos + n == j->n_tokens;
        s->logits = s->own_logits;
        if ((st = kvq_context_eval(s->ctx, j->tokens + s->prompt_pos, n, last ? s->own_logits : NULL, 0))) goto failed;
        memcpy(s->hist + s->n_hist, j->tokens + s->prompt_pos, n * sizeof *s->hist);
        s->n_hist += n;
        s->prompt_pos += n;
        if (!last) return 0;
        s->phase = SLOT_GEN;
    }
    int32_t tok = sample(s, S->info.n_vocab, j->temperature, j->top_p);
    for (size_t i = 0; i < S->n_stops && !j->ignore_eos; i++)
        if (tok == S->stops[i]) {
            job_finish(j, SERVE_STOP, NULL);
            return 0;
        }
    char piece[256];
    size_t len = 0;
    if (kvq_token_to_piece(S->p.model, tok, piece, sizeof piece, &len) != KVQ_OK) len = 0;
    int stopped = job_append(j, piece, len);
    if (stopped < 0) {
        job_finish(j, SERVE_FAILED, "out of memory");
        return 1;
    }
    if (stopped) {
        job_finish(j, SERVE_STOP, NULL);
        return 1;
    }
    if (j->n_generated >= (size_t)j->max_tokens || s->n_hist + 1 >= S->p.n_ctx) {
        job_finish(j, SERVE_LENGTH, NULL);
        return 1;
    }
    *decode = tok;
    return 1;
failed:
    slot_failed(s, st);
    return 0;
}

/* Decodes the tokens the generating slots sampled, all in one batched pass. */
static void decode_step(serve_sched *S, size_t n) {
    if (n == 0) return;
    size_t V = S->info.n_vocab;
    kvq_status st = kvq_batch_decode(S->batch, S->b_ctx, S->b_tok, n, S->b_logits);
    if (st == KVQ_ERR_INVALID_ARG || st == KVQ_ERR_MISMATCH || st == KVQ_ERR_CAPACITY) {
        /* refused before anything ran: each slot alone, so that only the one at fault fails */
        for (size_t i = 0; i < n; i++) {
            slot *s = S->b_slot[i];
            s->logits = s->own_logits;
            kvq_status si = kvq_context_eval(s->ctx, &S->b_tok[i], 1, s->own_logits, 0);
            if (si) slot_failed(s, si);
            else s->hist[s->n_hist++] = S->b_tok[i];
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        slot *s = S->b_slot[i];
        if (st) { /* the caches may hold part of the step */
            slot_failed(s, st);
            continue;
        }
        s->logits = S->b_logits + i * V;
        s->hist[s->n_hist++] = S->b_tok[i];
    }
}

static void update_memory(serve_sched *S) {
    uint64_t bytes = 0, fp16 = 0;
    for (uint32_t i = 0; i < S->p.n_slots; i++) {
        kvq_cache_memory_info mi;
        uint64_t f = 0;
        if (kvq_context_kv_memory(S->slots[i].ctx, &mi, &f) == KVQ_OK) {
            bytes += mi.total;
            fp16 += f;
        }
    }
    S->m.kv_bytes = bytes;
    S->m.kv_fp16_bytes = fp16;
}

static void *sched_main(void *arg) {
    serve_sched *S = arg;
    pthread_mutex_lock(&S->mu);
    while (!S->quit) {
        admit(S);
        uint32_t busy = 0;
        for (uint32_t i = 0; i < S->p.n_slots; i++) busy += S->slots[i].job != NULL;
        S->m.slots_busy = busy;
        S->m.queue_length = (uint32_t)S->q_len;
        S->m.reserved_bytes = held_total(S);
        if (!busy) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&S->cv, &S->mu, &ts);
            continue;
        }
        pthread_mutex_unlock(&S->mu);
        double t0 = kvq_cli_now_s();
        uint64_t generated = 0;
        size_t n_dec = 0;
        for (uint32_t i = 0; i < S->p.n_slots; i++) {
            slot *s = &S->slots[i];
            int32_t tok;
            if (!s->job) continue;
            generated += (uint64_t)step(S, s, &tok);
            if (tok < 0) continue;
            S->b_ctx[n_dec] = s->ctx;
            S->b_slot[n_dec] = s;
            S->b_tok[n_dec++] = tok;
        }
        decode_step(S, n_dec);
        double dt = kvq_cli_now_s() - t0;
        pthread_mutex_lock(&S->mu);
        S->m.busy_seconds += dt;
        if (generated) S->m.gen_seconds += dt;
        S->m.tokens_generated += generated;
        if (n_dec) {
            S->m.decode_steps++;
            S->m.decode_rows += n_dec;
        }
        for (uint32_t i = 0; i < S->p.n_slots; i++) {
            slot *s = &S->slots[i];
            if (!s->job) continue;
            pthread_mutex_lock(&s->job->mu);
            serve_finish f = s->job->finish;
            pthread_mutex_unlock(&s->job->mu);
            if (f == SERVE_RUNNING) continue;
            if (f == SERVE_CANCELLED) S->m.requests_cancelled++;
            else S->m.requests_done++;
            serve_job_release(s->job);
            s->job = NULL;
            s->phase = SLOT_FREE;
            s->last_used = kvq_cli_now_s();
            s->held_bytes = bytes_for(S, round_chunk(s->n_hist));
        }
        update_memory(S);
    }
    pthread_mutex_unlock(&S->mu);
    return NULL;
}

/* ------------------------------------------------------------------- api */

static void find_stops(serve_sched *S) {
    static const char *const texts[] = {"<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>"};
    if (S->info.eos_token >= 0) S->stops[S->n_stops++] = S->info.eos_token;
    for (size_t i = 0; i < sizeof texts / sizeof texts[0] && S->n_stops < 8; i++) {
        int32_t tok[2];
        size_t n = 0, len;
        char piece[64];
        if (kvq_tokenize(S->p.model, texts[i], 0, tok, 2, &n) != KVQ_OK || n != 1) continue;
        if (kvq_token_to_piece(S->p.model, tok[0], piece, sizeof piece, &len) != KVQ_OK || strcmp(piece, texts[i]))
            continue;
        int dup = 0;
        for (size_t k = 0; k < S->n_stops; k++) dup |= S->stops[k] == tok[0];
        if (!dup) S->stops[S->n_stops++] = tok[0];
    }
}

/* Measures what a slot's caches hold at two lengths (the exact window, sinks and staged
 * outlier tokens make short caches cost more than the codes alone), evaluating a
 * throw-away prompt in slot 0; bytes_for extrapolates from the two points. */
static int calibrate(serve_sched *S) {
    size_t n2 = (S->p.n_ctx - 1) / CHUNK_TOKENS * CHUNK_TOKENS;
    if (n2 > S->p.measure_tokens) n2 = S->p.measure_tokens / CHUNK_TOKENS * CHUNK_TOKENS;
    size_t n1 = n2 / 2 / CHUNK_TOKENS * CHUNK_TOKENS;
    if (n1 < CHUNK_TOKENS || n2 <= n1) return 0; /* too short a context: the model alone */
    int32_t *toks = malloc(n2 * sizeof *toks);
    if (!toks) return -1;
    for (size_t i = 0; i < n2; i++) toks[i] = (int32_t)(1000 + i * 7919 % 5000) % (int32_t)S->info.n_vocab;
    uint64_t b1 = 0, b2 = 0, f;
    kvq_cache_memory_info mi;
    kvq_context *ctx = S->slots[0].ctx;
    int rc = -1;
    for (size_t done = 0; done < n2;) {
        size_t n = n2 - done < S->p.n_batch ? n2 - done : S->p.n_batch;
        if (done < n1 && done + n > n1) n = n1 - done;
        if (kvq_context_eval(ctx, toks + done, n, NULL, 0)) goto out;
        done += n;
        if (kvq_context_kv_memory(ctx, &mi, &f)) goto out;
        if (done == n1) b1 = mi.total;
        if (done == n2) b2 = mi.total;
    }
    S->cal_n1 = n1;
    S->cal_b1 = b1;
    S->cal_slope = b2 > b1 ? (b2 - b1 + (n2 - n1) - 1) / (n2 - n1) : 0;
    rc = 0;
out:
    free(toks);
    kvq_context_reset(ctx);
    return rc;
}

int serve_sched_create(const serve_sched_params *p, serve_sched **out, char *msg, size_t msg_size) {
    *out = NULL;
    serve_sched *S = calloc(1, sizeof *S);
    if (!S) return -1;
    S->p = *p;
    pthread_mutex_init(&S->mu, NULL);
    pthread_cond_init(&S->cv, NULL);
    kvq_model_get_info(p->model, &S->info);
    find_stops(S);
    S->queue = calloc(p->max_queue ? p->max_queue : 1, sizeof *S->queue);
    S->slots = calloc(p->n_slots, sizeof *S->slots);
    S->b_ctx = calloc(p->n_slots, sizeof *S->b_ctx);
    S->b_slot = calloc(p->n_slots, sizeof *S->b_slot);
    S->b_tok = calloc(p->n_slots, sizeof *S->b_tok);
    S->b_logits = malloc((size_t)p->n_slots * S->info.n_vocab * sizeof *S->b_logits);
    if (!S->queue || !S->slots || !S->b_ctx || !S->b_slot || !S->b_tok || !S->b_logits) goto nomem;
    {
        kvq_status st = kvq_threadpool_create(p->n_threads, &S->pool);
        if (st) {
            snprintf(msg, msg_size, "thread pool of %u threads: %s", p->n_threads, kvq_strerror(st));
            serve_sched_free(S);
            return -1;
        }
        kvq_batch_params bp;
        kvq_batch_params_init(&bp);
        bp.pool = S->pool;
        st = kvq_batch_create(p->model, p->n_slots, &bp, &S->batch);
        if (st) {
            snprintf(msg, msg_size, "batch of %u slots: %s", p->n_slots, kvq_strerror(st));
            serve_sched_free(S);
            return -1;
        }
    }
    S->seed_counter = 0x5eed;
    S->budget = p->kv_budget ? p->kv_budget : UINT64_MAX;
    for (uint32_t i = 0; i < p->n_slots; i++) {
        slot *s = &S->slots[i];
        kvq_context_params cp;
        kvq_context_params_init(&cp);
        cp.n_ctx = p->n_ctx;
        cp.n_batch = p->n_batch;
        cp.pool = S->pool;
        cp.cache = p->per_layer;
        cp.n_cache_configs = p->per_layer ? S->info.n_layers : 0;
        kvq_status st = kvq_context_create(p->model, &cp, &s->ctx);
        if (st) {
            snprintf(msg, msg_size, "slot %u context: %s", i, kvq_strerror(st));
            serve_sched_free(S);
            return -1;
        }
        s->hist = malloc((size_t)p->n_ctx * sizeof *s->hist);
        s->logits = s->own_logits = malloc((size_t)S->info.n_vocab * sizeof *s->own_logits);
        s->probs = malloc((size_t)S->info.n_vocab * sizeof *s->probs);
        s->order = malloc((size_t)S->info.n_vocab * sizeof *s->order);
        if (!s->hist || !s->own_logits || !s->probs || !s->order) goto nomem;
    }
    /* what an empty slot holds; then the longest request and the full-context
     * conversations the budget allows next to the other slots' fixed part */
    kvq_cache_memory_info mi;
    uint64_t fp16 = 0;
    if (kvq_context_kv_memory(S->slots[0].ctx, &mi, &fp16) == KVQ_OK) S->fixed_bytes = mi.total;
    if (calibrate(S)) {
        snprintf(msg, msg_size, "cannot measure the KV memory of a slot");
        serve_sched_free(S);
        return -1;
    }
    for (uint32_t i = 0; i < p->n_slots; i++) S->slots[i].held_bytes = S->fixed_bytes;
    uint64_t others = (uint64_t)(p->n_slots - 1) * S->fixed_bytes;
    if (S->budget != UINT64_MAX && S->budget < others + bytes_for(S, CHUNK_TOKENS)) {
        snprintf(msg, msg_size,
                 "--kv-budget is too small: %u slots hold %llu bytes empty; one request of %d tokens needs %llu more",
                 p->n_slots, (unsigned long long)(others + S->fixed_bytes), CHUNK_TOKENS,
                 (unsigned long long)(bytes_for(S, CHUNK_TOKENS) - S->fixed_bytes));
        serve_sched_free(S);
        return -1;
    }
    size_t lo = CHUNK_TOKENS, hi = round_chunk(p->n_ctx);
    while (lo < hi) { /* the largest reservation in chunks */
        size_t mid = (lo / CHUNK_TOKENS + (hi - lo) / CHUNK_TOKENS / 2 + 1) * CHUNK_TOKENS;
        if (mid > hi) mid = hi;
        if (S->budget == UINT64_MAX || others + bytes_for(S, mid) <= S->budget) lo = mid;
        else hi = mid - CHUNK_TOKENS;
    }
    S->budget_tokens = lo;
    uint64_t full = bytes_for(S, round_chunk(p->n_ctx));
    for (uint32_t k = p->n_slots; k > 0 && !S->budget_conversations; k--)
        if (S->budget == UINT64_MAX || (uint64_t)k * full + (uint64_t)(p->n_slots - k) * S->fixed_bytes <= S->budget)
            S->budget_conversations = k;
    S->m.slots_total = p->n_slots;
    S->m.kv_budget = p->kv_budget;
    S->m.budget_tokens = S->budget_tokens;
    S->m.budget_conversations = S->budget_conversations;
    S->m.fixed_bytes = S->fixed_bytes;
    if (pthread_create(&S->thread, NULL, sched_main, S)) {
        snprintf(msg, msg_size, "cannot start the scheduler thread");
        serve_sched_free(S);
        return -1;
    }
    S->thread_started = 1;
    *out = S;
    return 0;
nomem:
    snprintf(msg, msg_size, "out of memory");
    serve_sched_free(S);
    return -1;
}

void serve_sched_stop(serve_sched *S) {
    if (!S) return;
    pthread_mutex_lock(&S->mu);
    S->quit = 1;
    pthread_cond_broadcast(&S->cv);
    pthread_mutex_unlock(&S->mu);
    if (S->thread_started) pthread_join(S->thread, NULL);
    S->thread_started = 0;
    pthread_mutex_lock(&S->mu);
    for (; S->queue && S->q_len; S->q_len--) {
        serve_job *j = S->queue[S->q_head];
        S->q_head = (S->q_head + 1) % S->p.max_queue;
        job_finish(j, SERVE_FAILED, "the server is shutting down");
        serve_job_release(j);
    }
    for (uint32_t i = 0; S->slots && i < S->p.n_slots; i++) {
        slot *s = &S->slots[i];
        if (s->job) {
            job_finish(s->job, SERVE_FAILED, "the server is shutting down");
            serve_job_release(s->job);
            s->job = NULL;
        }
    }
    pthread_mutex_unlock(&S->mu);
}

void serve_sched_free(serve_sched *S) {
    if (!S) return;
    serve_sched_stop(S);
    for (uint32_t i = 0; S->slots && i < S->p.n_slots; i++) {
        slot *s = &S->slots[i];
        kvq_context_free(s->ctx);
        free(s->hist);
        free(s->own_logits);
        free(s->probs);
        free(s->order);
    }
    free(S->slots);
    free(S->queue);
    kvq_batch_free(S->batch);
    free(S->b_ctx);
    free(S->b_slot);
    free(S->b_tok);
    free(S->b_logits);
    kvq_threadpool_free(S->pool); /* after the contexts and the batch that borrow it */
    pthread_mutex_destroy(&S->mu);
    pthread_cond_destroy(&S->cv);
    free(S);
}

uint32_t serve_sched_n_ctx(const serve_sched *S) { return S->p.n_ctx; }

int serve_sched_submit(serve_sched *S, serve_job *j, char *msg, size_t msg_size) {
    if (j->n_tokens + 1 > S->p.n_ctx) {
        snprintf(msg, msg_size, "the prompt holds %zu tokens: more than this server's context of %u allows", j->n_tokens,
                 S->p.n_ctx);
        return -2;
    }
    size_t room = S->p.n_ctx - j->n_tokens;
    if (j->max_tokens < 0) j->max_tokens = (long)room;
    if ((size_t)j->max_tokens > room) {
        snprintf(msg, msg_size,
                 "prompt (%zu tokens) + max_tokens (%ld) exceed this server's context of %u tokens", j->n_tokens,
                 j->max_tokens, S->p.n_ctx);
        return -2;
    }
    if (round_chunk(j->n_tokens + (size_t)j->max_tokens) > S->budget_tokens) {
        snprintf(msg, msg_size, "prompt + max_tokens (%zu tokens) exceed the server's KV budget of %llu tokens",
                 j->n_tokens + (size_t)j->max_tokens, (unsigned long long)S->budget_tokens);
        return -2;
    }
    pthread_mutex_lock(&S->mu);
    if (S->quit || S->q_len >= S->p.max_queue) {
        pthread_mutex_unlock(&S->mu);
        snprintf(msg, msg_size, "the server is busy: every slot and the queue are full; retry shortly");
        return -1;
    }
    if (j->seed == 0) j->seed = splitmix64(&S->seed_counter);
    pthread_mutex_lock(&j->mu);
    j->refs++;
    pthread_mutex_unlock(&j->mu);
    S->queue[(S->q_head + S->q_len) % S->p.max_queue] = j;
    S->q_len++;
    S->m.queue_length = (uint32_t)S->q_len;
    pthread_cond_broadcast(&S->cv);
    pthread_mutex_unlock(&S->mu);
    return 0;
}

void serve_sched_metrics(serve_sched *S, serve_metrics *m) {
    pthread_mutex_lock(&S->mu);
    *m = S->m;
    pthread_mutex_unlock(&S->mu);
}
