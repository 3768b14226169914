/* serve.h - `kvq serve`, an OpenAI-compatible HTTP server on the public API: the plain
 * request struct (serve_request.c), the slot scheduler (serve_sched.c), the OpenAI JSON
 * shapes (serve_openai.c) and the HTTP glue (serve_http.c) share these types. */
#ifndef KVQ_SERVE_H
#define KVQ_SERVE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "kvq.h"

#define SERVE_MAX_STOP 4
#define SERVE_MAX_STOP_LEN 256

/* ---------------------------------------------------------------- requests */

typedef enum serve_kind { SERVE_CHAT, SERVE_COMPLETION } serve_kind;

/* One /v1/chat/completions or /v1/completions request, validated. Strings point into
 * the parsed JSON (serve_request_free releases it). */
typedef struct serve_request {
    serve_kind kind;
    kvq_chat_message *messages; /* chat: n_messages */
    size_t n_messages;
    const char *prompt;         /* completion */
    long max_tokens;            /* -1: not given (fills the slot's context) */
    float temperature, top_p;
    int has_seed;
    uint64_t seed;
    const char *stop[SERVE_MAX_STOP];
    size_t n_stop;
    int stream, include_usage;
    int ignore_eos; /* llama-server's extension: run to max_tokens or a stop string */
    void *json; /* cJSON root */
} serve_request;

/* Parses and validates body[len] (0 ok, else -1 with msg/param set for a 400 error). */
int serve_request_parse(serve_kind kind, const char *body, size_t len, serve_request *req,
                        char *msg, size_t msg_size, const char **param);
void serve_request_free(serve_request *req);
/* 1 if s[n] is valid UTF-8 without NUL bytes. */
int serve_utf8_valid(const char *s, size_t n);
/* Length of the longest prefix of s[n] that ends on a UTF-8 character boundary. */
size_t serve_utf8_complete(const char *s, size_t n);

/* ---------------------------------------------------------------- scheduler */

typedef enum serve_finish { SERVE_RUNNING, SERVE_STOP, SERVE_LENGTH, SERVE_CANCELLED, SERVE_FAILED } serve_finish;

/* A request in flight: shared by the HTTP thread that waits on it and the scheduler
 * (reference counted; the last serve_job_release frees it). */
typedef struct serve_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    /* input, fixed before submit */
    int32_t *tokens;
    size_t n_tokens;
    long max_tokens;
    float temperature, top_p;
    uint64_t seed;
    char stop[SERVE_MAX_STOP][SERVE_MAX_STOP_LEN + 1];
    size_t n_stop;
    int ignore_eos;
    /* output, under mu */
    char *text;          /* generated text (stop strings cut), NUL-terminated */
    size_t text_len, text_cap;
    size_t text_ready;   /* bytes of text safe to send (no partial stop string or UTF-8) */
    size_t n_generated;
    size_t n_reused;     /* prompt tokens found in the slot's cache */
    serve_finish finish;
    int cancel;          /* set by the HTTP side: the client went away */
    char error[160];
    double t_submit, t_first;
} serve_job;

typedef struct serve_sched_params {
    const kvq_model *model;
    uint32_t n_slots, n_ctx, n_threads, n_batch;
    const kvq_cache_config *per_layer; /* NULL: exact float32 KV */
    uint64_t kv_budget;                /* bytes over all slots (0: no budget) */
    uint32_t max_queue;
    uint32_t measure_tokens; /* start-up KV measurement up to this length (growth measured
                                from half of it on: past any sliding window) */
} serve_sched_params;

typedef struct serve_sched serve_sched;

typedef struct serve_metrics {
    uint64_t tokens_generated, prompt_tokens, prompt_tokens_reused, requests_done, requests_cancelled;
    uint64_t decode_steps, decode_rows; /* batched decodes run, and the slots' tokens they took */
    double busy_seconds, gen_seconds;
    uint64_t kv_bytes, kv_fp16_bytes, kv_budget, reserved_bytes, fixed_bytes;
    uint64_t budget_tokens;        /* the longest prompt + max_tokens one request may have */
    uint64_t budget_conversations; /* full-context conversations the budget holds at once */
    uint32_t slots_busy, slots_total, queue_length;
} serve_metrics;

int serve_sched_create(const serve_sched_params *p, serve_sched **out, char *msg, size_t msg_size);
/* Fails every queued and running job and stops the scheduler thread (before the HTTP
 * side stops, so that no handler waits on a job forever); serve_sched_free then frees. */
void serve_sched_stop(serve_sched *s);
void serve_sched_free(serve_sched *s);
/* Queues job (taking a reference). 0 ok; -1 queue full (503); -2 the request alone needs
 * more than the KV budget or the slot's context (400; msg says which). */
int serve_sched_submit(serve_sched *s, serve_job *job, char *msg, size_t msg_size);
void serve_sched_metrics(serve_sched *s, serve_metrics *m);
uint32_t serve_sched_n_ctx(const serve_sched *s);

serve_job *serve_job_new(void);
void serve_job_release(serve_job *job);
void serve_job_cancel(serve_job *job);

/* ---------------------------------------------------------------- OpenAI shapes */

/* Each returns a malloc'ed NUL-terminated JSON text (NULL on no memory). */
char *serve_json_error(const char *message, const char *type, const char *param);
char *serve_json_models(const char *model_id, long created);
char *serve_json_completion(serve_kind kind, const char *id, const char *model_id, long created,
                            const char *text, size_t text_len, serve_finish finish,
                            size_t prompt_tokens, size_t completion_tokens);
/* One streamed chunk: text (may be NULL: the role-only opening chunk of a chat), finish
 * (SERVE_RUNNING: null), usage chunk when with_usage (choices empty). */
char *serve_json_chunk(serve_kind kind, const char *id, const char *model_id, long created,
                       const char *text, size_t text_len, int opening, serve_finish finish);
char *serve_json_usage_chunk(serve_kind kind, const char *id, const char *model_id, long created,
                             size_t prompt_tokens, size_t completion_tokens);

#endif
