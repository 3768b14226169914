/* serve_http.c - `kvq serve`: options, the model and its slots, and the HTTP glue
 * (libmicrohttpd, one thread per connection): routing, API keys, body limits and
 * timeouts, plain JSON answers and server-sent event streams fed by the scheduler. */
#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../args.h"
#include "../cache_configs.h"
#include "../cli.h"
#include "serve.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_Result;
#else
typedef enum MHD_Result MHD_Result;
#endif

typedef struct server {
    const kvq_model *model;
    serve_sched *sched;
    const char *chat_template; /* NULL: the GGUF's own */
    char model_id[128];
    const char *api_key;
    size_t max_body;
    double read_timeout;
    long created;
    pthread_mutex_t mu;
    uint64_t requests, rejected_busy, rejected_bad, rejected_auth, next_id;
} server;

typedef struct conn_state {
    char *body;
    size_t len, cap;
    int too_big;
    double t_start;
} conn_state;

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void count(server *sv, uint64_t *counter) {
    pthread_mutex_lock(&sv->mu);
    (*counter)++;
    pthread_mutex_unlock(&sv->mu);
}

/* ------------------------------------------------------------ responses */

static MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *type, char *text) {
    if (!text) {
        static char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
        text = NULL;
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(oom), oom, MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Content-Type", "application/json");
        MHD_Result ret = MHD_queue_response(c, 500, r);
        MHD_destroy_response(r);
        return ret;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    if (status == 503) MHD_add_response_header(r, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *message, const char *param) {
    const char *type = status == 401 ? "authentication_error"
                       : status == 404 ? "not_found_error"
                       : status == 503 ? "server_busy"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    return send_text(c, status, "application/json", serve_json_error(message, type, param));
}

/* 1 when the client has closed its end (it would read 0 bytes). */
static int peer_closed(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 1;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Every byte compared whatever the first difference: the time says nothing of the key. */
static int key_matches(const char *given, const char *key) {
    size_t gl = strlen(given), kl = strlen(key);
    unsigned diff = (unsigned)(gl != kl);
    for (size_t i = 0; i < kl; i++) diff |= (unsigned char)key[i] ^ (unsigned char)(i < gl ? given[i] : 0);
    return diff == 0;
}

/* -------------------------------------------------------------- streams */

typedef struct stream_state {
    server *sv;
    serve_job *job;
    serve_kind kind;
    struct MHD_Connection *conn;
    char id[48];
    int include_usage, opened, finished;
    size_t sent, n_prompt;
    char *out;
    size_t out_len, out_off;
} stream_state;

static int out_event(stream_state *ss, char *json) {
    if (!json) return -1;
    size_t n = strlen(json), need = ss->out_len + n + 16; /* "data: " json "\n\n" NUL */
    char *o = realloc(ss->out, need);
    if (!o) {
        free(json);
        return -1;
    }
    ss->out = o;
    ss->out_len += (size_t)sprintf(o + ss->out_len, "data: %s\n\n", json);
    free(json);
    return 0;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_state *ss = cls;
    for (;;) {
        if (ss->out_off < ss->out_len) {
            size_t n = ss->out_len - ss->out_off < max ? ss->out_len - ss->out_off : max;
            memcpy(buf, ss->out + ss->out_off, n);
            ss->out_off += n;
            return (ssize_t)n;
        }
        ss->out_len = ss->out_off = 0;
        if (ss->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!ss->opened) {
            ss->opened = 1;
            if (ss->kind == SERVE_CHAT &&
                out_event(ss, serve_json_chunk(ss->kind, ss->id, ss->sv->model_id, ss->sv->created, NULL, 0, 1,
                                               SERVE_RUNNING)))
                return MHD_CONTENT_READER_END_WITH_ERROR;
            continue;
        }
        serve_job *j = ss->job;
        pthread_mutex_lock(&j->mu);
        while (j->text_ready == ss->sent && j->finish == SERVE_RUNNING) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&j->cv, &j->mu, &ts);
            if (j->text_ready == ss->sent && j->finish == SERVE_RUNNING) {
                pthread_mutex_unlock(&j->mu);
                if (peer_closed(ss->conn)) {
                    serve_job_cancel(j);
                    return MHD_CONTENT_READER_END_WITH_ERROR;
                }
                pthread_mutex_lock(&j->mu);
            }
        }
        size_t ready = j->text_ready;
        serve_finish fin = j->finish;
        char *delta = NULL;
        size_t delta_len = ready - ss->sent;
        if (delta_len) {
            delta = malloc(delta_len);
            if (delta) memcpy(delta, j->text + ss->sent, delta_len);
        }
        size_t n_gen = j->n_generated;
        char error[sizeof j->error];
        memcpy(error, j->error, sizeof error);
        pthread_mutex_unlock(&j->mu);
        if (delta_len && !delta) return MHD_CONTENT_READER_END_WITH_ERROR;
        int bad = 0;
        if (delta_len) {
            bad |= out_event(ss, serve_json_chunk(ss->kind, ss->id, ss->sv->model_id, ss->sv->created, delta, delta_len, 0,
                                                  SERVE_RUNNING));
            ss->sent = ready;
        }
        free(delta);
        if (fin != SERVE_RUNNING && ss->sent == ready) {
            if (fin == SERVE_FAILED || fin == SERVE_CANCELLED)
                bad |= out_event(ss, serve_json_error(error[0] ? error : "generation stopped", "server_error", NULL));
            else
                bad |= out_event(ss, serve_json_chunk(ss->kind, ss->id, ss->sv->model_id, ss->sv->created, NULL, 0, 0, fin));
            if (ss->include_usage)
                bad |= out_event(ss, serve_json_usage_chunk(ss->kind, ss->id, ss->sv->model_id, ss->sv->created,
                                                            ss->n_prompt, n_gen));
            char *done = realloc(ss->out, ss->out_len + 16);
            if (!done) return MHD_CONTENT_READER_END_WITH_ERROR;
            ss->out = done;
            ss->out_len += (size_t)sprintf(done + ss->out_len, "data: [DONE]\n\n");
            ss->finished = 1;
        }
        if (bad) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static void stream_free(void *cls) {
    stream_state *ss = cls;
    serve_job_cancel(ss->job); /* no effect once finished; frees the slot if the client left */
    serve_job_release(ss->job);
    free(ss->out);
    free(ss);
}

/* ------------------------------------------------------------ endpoints */

static MHD_Result handle_completion(server *sv, struct MHD_Connection *c, serve_kind kind, conn_state *cs) {
    serve_request req;
    char msg[320];
    const char *param = NULL;
    if (serve_request_parse(kind, cs->body ? cs->body : "", cs->len, &req, msg, sizeof msg, &param)) {
        count(sv, &sv->rejected_bad);
        return send_error(c, 400, msg, param);
    }
    char *text = NULL;
    const char *prompt = req.prompt;
    if (kind == SERVE_CHAT) {
        size_t len = 0;
        char tmsg[200] = "";
        kvq_status st = kvq_chat_format(sv->model, sv->chat_template, req.messages, req.n_messages, 1, NULL, 0, &len,
                                        tmsg, sizeof tmsg);
        if (st == KVQ_ERR_CAPACITY || st == KVQ_OK) {
            text = malloc(len + 1);
            st = text ? kvq_chat_format(sv->model, sv->chat_template, req.messages, req.n_messages, 1, text, len + 1,
                                        &len, tmsg, sizeof tmsg)
                      : KVQ_ERR_NOMEM;
        }
        if (st) {
            free(text);
            serve_request_free(&req);
            snprintf(msg, sizeof msg, "chat template: %s%s%s", kvq_strerror(st), tmsg[0] ? ": " : "", tmsg);
            return send_error(c, 500, msg, NULL);
        }
        prompt = text;
    }
    serve_job *job = serve_job_new();
    size_t n = 0;
    kvq_status st = job ? kvq_tokenize(sv->model, prompt, -1, NULL, 0, &n) : KVQ_ERR_NOMEM;
    if (job && (st == KVQ_OK || st == KVQ_ERR_CAPACITY)) {
        job->tokens = malloc((n ? n : 1) * sizeof *job->tokens);
        st = job->tokens ? kvq_tokenize(sv->model, prompt, -1, job->tokens, n, &n) : KVQ_ERR_NOMEM;
        job->n_tokens = n;
    }
    free(text);
    if (st || n == 0) {
        serve_job_release(job);
        serve_request_free(&req);
        if (st) return send_error(c, 500, kvq_strerror(st), NULL);
        return send_error(c, 400, "the prompt gives no tokens", kind == SERVE_CHAT ? "messages" : "prompt");
    }
    job->max_tokens = req.max_tokens;
    job->temperature = req.temperature;
    job->top_p = req.top_p;
    job->seed = req.has_seed ? (req.seed + 1 ? req.seed + 1 : 1) : 0;
    for (size_t i = 0; i < req.n_stop; i++) snprintf(job->stop[i], sizeof job->stop[i], "%s", req.stop[i]);
    job->n_stop = req.n_stop;
    job->ignore_eos = req.ignore_eos;
    int stream = req.stream, include_usage = req.include_usage;
    serve_request_free(&req);
    int rc = serve_sched_submit(sv->sched, job, msg, sizeof msg);
    if (rc) {
        serve_job_release(job);
        count(sv, rc == -1 ? &sv->rejected_busy : &sv->rejected_bad);
        return send_error(c, rc == -1 ? 503 : 400, msg, rc == -1 ? NULL : "max_tokens");
    }
    pthread_mutex_lock(&sv->mu);
    uint64_t id = ++sv->next_id;
    pthread_mutex_unlock(&sv->mu);
    /* generation may take longer than the idle timeout that guards request reading */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)0);
    if (stream) {
        stream_state *ss = calloc(1, sizeof *ss);
        struct MHD_Response *r = NULL;
        if (ss) {
            ss->sv = sv;
            ss->job = job;
            ss->kind = kind;
            ss->conn = c;
            ss->include_usage = include_usage;
            ss->n_prompt = job->n_tokens;
            snprintf(ss->id, sizeof ss->id, "%s-%" PRIu64, kind == SERVE_CHAT ? "chatcmpl" : "cmpl", id);
            r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, ss, stream_free);
        }
        if (!r) {
            serve_job_cancel(job);
            serve_job_release(job);
            free(ss);
            return send_error(c, 500, "out of memory", NULL);
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    pthread_mutex_lock(&job->mu);
    while (job->finish == SERVE_RUNNING) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&job->cv, &job->mu, &ts);
        if (job->finish != SERVE_RUNNING) break;
        pthread_mutex_unlock(&job->mu);
        int gone = peer_closed(c);
        pthread_mutex_lock(&job->mu);
        if (gone) {
            job->cancel = 1;
            pthread_mutex_unlock(&job->mu);
            serve_job_release(job);
            return MHD_NO; /* the client left: close; the scheduler frees the slot */
        }
    }
    pthread_mutex_unlock(&job->mu);
    MHD_Result ret;
    char idbuf[48];
    snprintf(idbuf, sizeof idbuf, "%s-%" PRIu64, kind == SERVE_CHAT ? "chatcmpl" : "cmpl", id);
    if (job->finish == SERVE_FAILED || job->finish == SERVE_CANCELLED)
        ret = send_error(c, 500, job->error[0] ? job->error : "generation stopped", NULL);
    else
        ret = send_text(c, 200, "application/json",
                        serve_json_completion(kind, idbuf, sv->model_id, sv->created, job->text ? job->text : "",
                                              job->text_len, job->finish, job->n_tokens, job->n_generated));
    serve_job_release(job);
    return ret;
}

static MHD_Result handle_metrics(server *sv, struct MHD_Connection *c) {
    serve_metrics m;
    serve_sched_metrics(sv->sched, &m);
    pthread_mutex_lock(&sv->mu);
    uint64_t requests = sv->requests, busy = sv->rejected_busy, bad = sv->rejected_bad, auth = sv->rejected_auth;
    pthread_mutex_unlock(&sv->mu);
    char *t = malloc(6144);
    if (!t) return send_error(c, 500, "out of memory", NULL);
    snprintf(t, 6144,
             "# HELP kvq_requests_total HTTP requests received.\n# TYPE kvq_requests_total counter\n"
             "kvq_requests_total %" PRIu64 "\n"
             "# HELP kvq_requests_rejected_total Requests refused, by reason.\n# TYPE kvq_requests_rejected_total counter\n"
             "kvq_requests_rejected_total{reason=\"busy\"} %" PRIu64 "\n"
             "kvq_requests_rejected_total{reason=\"invalid\"} %" PRIu64 "\n"
             "kvq_requests_rejected_total{reason=\"auth\"} %" PRIu64 "\n"
             "# HELP kvq_completions_total Completions finished, by outcome.\n# TYPE kvq_completions_total counter\n"
             "kvq_completions_total{outcome=\"done\"} %" PRIu64 "\n"
             "kvq_completions_total{outcome=\"cancelled\"} %" PRIu64 "\n"
             "# HELP kvq_tokens_generated_total Tokens generated.\n# TYPE kvq_tokens_generated_total counter\n"
             "kvq_tokens_generated_total %" PRIu64 "\n"
             "# HELP kvq_prompt_tokens_total Prompt tokens received.\n# TYPE kvq_prompt_tokens_total counter\n"
             "kvq_prompt_tokens_total %" PRIu64 "\n"
             "# HELP kvq_prompt_tokens_reused_total Prompt tokens found in a slot's cache (not evaluated again).\n"
             "# TYPE kvq_prompt_tokens_reused_total counter\nkvq_prompt_tokens_reused_total %" PRIu64 "\n"
             "# HELP kvq_decode_steps_total Batched decoding steps (one pass over the weights each).\n"
             "# TYPE kvq_decode_steps_total counter\nkvq_decode_steps_total %" PRIu64 "\n"
             "# HELP kvq_decode_rows_total Tokens those steps decoded, one per generating slot.\n"
             "# TYPE kvq_decode_rows_total counter\nkvq_decode_rows_total %" PRIu64 "\n"
             "# HELP kvq_tokens_per_second Generated tokens per second of decoding steps, all slots together.\n"
             "# TYPE kvq_tokens_per_second gauge\nkvq_tokens_per_second %.3f\n"
             "# HELP kvq_kv_bytes Bytes the compressed KV caches of all slots hold.\n# TYPE kvq_kv_bytes gauge\n"
             "kvq_kv_bytes %" PRIu64 "\n"
             "# HELP kvq_kv_fp16_bytes Bytes the same tokens would take as fp16 keys and values.\n"
             "# TYPE kvq_kv_fp16_bytes gauge\nkvq_kv_fp16_bytes %" PRIu64 "\n"
             "# HELP kvq_kv_budget_bytes The KV memory budget (0: none).\n# TYPE kvq_kv_budget_bytes gauge\n"
             "kvq_kv_budget_bytes %" PRIu64 "\n"
             "# HELP kvq_kv_budget_tokens The longest prompt + max_tokens one request may have.\n"
             "# TYPE kvq_kv_budget_tokens gauge\nkvq_kv_budget_tokens %" PRIu64 "\n"
             "# HELP kvq_kv_budget_conversations Full-context conversations the budget holds at once.\n"
             "# TYPE kvq_kv_budget_conversations gauge\nkvq_kv_budget_conversations %" PRIu64 "\n"
             "# HELP kvq_kv_reserved_bytes KV bytes reserved by running requests, kept prefixes and empty slots.\n"
             "# TYPE kvq_kv_reserved_bytes gauge\nkvq_kv_reserved_bytes %" PRIu64 "\n"
             "# HELP kvq_kv_slot_fixed_bytes KV bytes an empty slot holds.\n"
             "# TYPE kvq_kv_slot_fixed_bytes gauge\nkvq_kv_slot_fixed_bytes %" PRIu64 "\n"
             "# HELP kvq_slots_busy Slots running a request.\n# TYPE kvq_slots_busy gauge\nkvq_slots_busy %u\n"
             "# HELP kvq_slots_total Slots.\n# TYPE kvq_slots_total gauge\nkvq_slots_total %u\n"
             "# HELP kvq_queue_length Requests waiting for a slot or KV budget.\n# TYPE kvq_queue_length gauge\n"
             "kvq_queue_length %u\n",
             requests, busy, bad, auth, m.requests_done, m.requests_cancelled, m.tokens_generated, m.prompt_tokens,
             m.prompt_tokens_reused, m.decode_steps, m.decode_rows, m.gen_seconds > 0 ? (double)m.tokens_generated / m.gen_seconds : 0.0, m.kv_bytes,
             m.kv_fp16_bytes, m.kv_budget, m.budget_tokens, m.budget_conversations, m.reserved_bytes, m.fixed_bytes, m.slots_busy, m.slots_total,
             m.queue_length);
    return send_text(c, 200, "text/plain; version=0.0.4", t);
}

static MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls) {
    (void)version;
    server *sv = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        cs = calloc(1, sizeof *cs);
        if (!cs) return MHD_NO;
        cs->t_start = kvq_cli_now_s();
        *con_cls = cs;
        count(sv, &sv->requests);
        if (sv->api_key && strcmp(url, "/health") != 0) {
            const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
            const char *given = h && !strncmp(h, "Bearer ", 7) ? h + 7 : "";
            if (!key_matches(given, sv->api_key)) {
                count(sv, &sv->rejected_auth);
                return send_error(c, 401, "missing or wrong API key (Authorization: Bearer KEY)", NULL);
            }
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > sv->max_body) {
            count(sv, &sv->rejected_bad);
            return send_error(c, 413, "the request body is larger than this server accepts", NULL);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (kvq_cli_now_s() - cs->t_start > sv->read_timeout) return MHD_NO; /* a client too slow to send */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (cs->too_big || cs->len + n > sv->max_body) {
            cs->too_big = 1;
            return MHD_YES;
        }
        if (cs->len + n + 1 > cs->cap) {
            size_t cap = (cs->len + n + 1) * 2;
            if (cap > sv->max_body + 1) cap = sv->max_body + 1;
            char *b = realloc(cs->body, cap);
            if (!b) return MHD_NO;
            cs->body = b;
            cs->cap = cap;
        }
        memcpy(cs->body + cs->len, upload_data, n);
        cs->len += n;
        cs->body[cs->len] = 0;
        return MHD_YES;
    }
    if (cs->too_big) {
        count(sv, &sv->rejected_bad);
        return send_error(c, 413, "the request body is larger than this server accepts", NULL);
    }
    int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/health") || !strcmp(url, "/v1/health"))
        return get ? send_text(c, 200, "application/json", strdup("{\"status\":\"ok\"}"))
                   : send_error(c, 405, "use GET", NULL);
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/models"))
        return get ? send_text(c, 200, "application/json", serve_json_models(sv->model_id, sv->created))
                   : send_error(c, 405, "use GET", NULL);
    if (!strcmp(url, "/metrics")) return get ? handle_metrics(sv, c) : send_error(c, 405, "use GET", NULL);
    if (!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/chat/completions"))
        return post ? handle_completion(sv, c, SERVE_CHAT, cs) : send_error(c, 405, "use POST", NULL);
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/completions"))
        return post ? handle_completion(sv, c, SERVE_COMPLETION, cs) : send_error(c, 405, "use POST", NULL);
    return send_error(c, 404, "no such endpoint", NULL);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    conn_state *cs = *con_cls;
    if (!cs) return;
    free(cs->body);
    free(cs);
    *con_cls = NULL;
}

/* ---------------------------------------------------------------- command */

static int serve_usage(FILE *f) {
    fprintf(f,
            "usage: kvq serve -m MODEL.gguf [options]\n\n"
            "An OpenAI-compatible HTTP server: POST /v1/chat/completions, POST /v1/completions,\n"
            "GET /v1/models, GET /health, GET /metrics (Prometheus text).\n\n"
            "  -m, --model FILE      GGUF model (Llama family)\n"
            "  --host ADDR           IPv4 address to listen on (default 127.0.0.1: loopback only)\n"
            "  --port N              TCP port (default 8080; 0 picks a free one, printed on stderr)\n"
            "  -np, --parallel N     slots: conversations decoded together, each with its own\n"
            "                        compressed KV cache (default 4)\n"
            "  -c, --ctx-size N      context of each slot in tokens (default: min(model's, 4096))\n"
            "  --cache-preset P      q4, q3 or q2 (default q4); options may follow '@': q4@window=32\n"
            "  --cache SPEC          a whole cache spec KSPEC+VSPEC@options (docs/METHODS.md)\n"
            "  --cache-k SPEC        key quantizer (fp16, q8_0, q4_0, mse:bits=4, ...; f32: exact)\n"
            "  --cache-v SPEC        value quantizer (default fp16)\n"
            "  --kv-budget MB        KV memory for all slots together (default: none); requests\n"
            "                        wait in the queue while running ones hold it\n"
            "  --kv-measure N        at start-up, measure a slot's KV bytes at N/2 and N tokens\n"
            "                        (default 512; past the model's sliding window, if any)\n"
            "  --queue N             requests that may wait for a slot or KV budget (default 64);\n"
            "                        past that: 503 with Retry-After\n"
            "  --api-key KEY         require 'Authorization: Bearer KEY' (all but /health)\n"
            "  --api-key-file F      the key from the first line of file F\n"
            "  -t, --threads N       threads per slot (default 0 = one per CPU)\n"
            "  -b, --batch N         prompt tokens evaluated per step (default 128)\n"
            "  --chat-template NAME  chatml, llama3, llama2, mistral, gemma or phi3 instead of the\n"
            "                        model's own (models without one fall back to chatml)\n"
            "  --max-body BYTES      largest request body (default 1048576)\n"
            "  --timeout S           idle connection timeout, and the longest a request body may\n"
            "                        take to arrive (default 30)\n"
            "  --max-connections N   connections at once (default 512)\n"
            "  --alias NAME          model id shown in /v1/models (default: the file's name)\n"
            "  --exit-after S        stop by itself after S seconds (tests; default never)\n");
    return f == stderr ? 1 : 0;
}

int kvq_cmd_serve(int argc, char **argv) {
    const char *model_path = NULL, *host = "127.0.0.1", *kspec = NULL, *vspec = NULL, *whole = NULL;
    const char *api_key = NULL, *api_key_file = NULL, *chat_template = NULL, *alias = NULL;
    long measure = 512;
    long port = 8080, n_slots = 4, n_ctx = 0, threads = 0, batch = 128, queue = 64, timeout = 30, max_conn = 512;
    double budget_mb = 0, exit_after = 0;
    uint64_t max_body = 1 << 20;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define TAKES(name) (!strcmp(a, name) && v && ++i)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return serve_usage(stdout);
        else if (TAKES("-m") || TAKES("--model")) model_path = v;
        else if (TAKES("--host")) host = v;
        else if (TAKES("--port")) { if (kvq_arg_long("serve", a, v, 0, 65535, &port)) return 1; }
        else if (TAKES("-np") || TAKES("--parallel")) { if (kvq_arg_long("serve", a, v, 1, 256, &n_slots)) return 1; }
        else if (TAKES("-c") || TAKES("--ctx-size")) { if (kvq_arg_long("serve", a, v, 0, 1000000, &n_ctx)) return 1; }
        else if (TAKES("--cache-preset") || TAKES("--cache")) whole = v;
        else if (TAKES("--cache-k")) kspec = v;
        else if (TAKES("--cache-v")) vspec = v;
        else if (TAKES("--kv-budget")) { if (kvq_arg_double("serve", a, v, 0, 1e9, &budget_mb)) return 1; }
        else if (TAKES("--queue")) { if (kvq_arg_long("serve", a, v, 1, 100000, &queue)) return 1; }
        else if (TAKES("--kv-measure")) { if (kvq_arg_long("serve", a, v, 128, 1000000, &measure)) return 1; }
        else if (TAKES("--api-key")) api_key = v;
        else if (TAKES("--api-key-file")) api_key_file = v;
        else if (TAKES("-t") || TAKES("--threads")) { if (kvq_arg_long("serve", a, v, 0, 1024, &threads)) return 1; }
        else if (TAKES("-b") || TAKES("--batch")) { if (kvq_arg_long("serve", a, v, 1, 4096, &batch)) return 1; }
        else if (TAKES("--chat-template")) chat_template = v;
        else if (TAKES("--max-body")) { if (kvq_arg_u64("serve", a, v, 1, 1ull << 30, &max_body)) return 1; }
        else if (TAKES("--timeout")) { if (kvq_arg_long("serve", a, v, 1, 86400, &timeout)) return 1; }
        else if (TAKES("--max-connections")) { if (kvq_arg_long("serve", a, v, 1, 65536, &max_conn)) return 1; }
        else if (TAKES("--alias")) alias = v;
        else if (TAKES("--exit-after")) { if (kvq_arg_double("serve", a, v, 0, 1e9, &exit_after)) return 1; }
        else {
            fprintf(stderr, "kvq serve: unknown or incomplete option %s\n", a);
            return serve_usage(stderr);
        }
#undef TAKES
    }
    if (!model_path) return serve_usage(stderr);
    if (whole && (kspec || vspec)) {
        fprintf(stderr, "kvq serve: --cache-preset/--cache replace --cache-k and --cache-v\n");
        return 1;
    }
    if (api_key && api_key_file) {
        fprintf(stderr, "kvq serve: give --api-key or --api-key-file, not both\n");
        return 1;
    }
    char key_buf[512];
    if (api_key_file) {
        FILE *f = fopen(api_key_file, "r");
        if (!f || !fgets(key_buf, sizeof key_buf, f)) {
            fprintf(stderr, "kvq serve: cannot read the API key from %s\n", api_key_file);
            if (f) fclose(f);
            return 1;
        }
        fclose(f);
        key_buf[strcspn(key_buf, "\r\n")] = 0;
        api_key = key_buf;
    }
    if (api_key && !api_key[0]) {
        fprintf(stderr, "kvq serve: the API key is empty\n");
        return 1;
    }
    if (!whole && !kspec) whole = "q4";
    if (whole) kspec = whole;
    if (!vspec) vspec = !strcmp(kspec, "f32") ? "f32" : "fp16";
    if ((!strcmp(kspec, "f32")) != (!strcmp(vspec, "f32"))) {
        fprintf(stderr, "kvq serve: f32 (exact) applies to keys and values together\n");
        return 1;
    }

    char msg[256] = "";
    kvq_model *model = NULL;
    kvq_status st = kvq_model_load(model_path, &model, msg, sizeof msg);
    if (st) {
        fprintf(stderr, "kvq serve: %s: %s%s%s\n", model_path, kvq_strerror(st), msg[0] ? ": " : "", msg);
        return 1;
    }
    kvq_model_info info;
    kvq_model_get_info(model, &info);
    int rc = 1;
    kvq_cache_config *per_layer = NULL;
    serve_sched *sched = NULL;
    struct MHD_Daemon *d = NULL;
    server sv;
    memset(&sv, 0, sizeof sv);
    pthread_mutex_init(&sv.mu, NULL);
    if (strcmp(kspec, "f32")) {
        per_layer = calloc(info.n_layers, sizeof *per_layer);
        if (!per_layer) {
            rc = kvq_cli_fail("serve", "memory", KVQ_ERR_NOMEM);
            goto done;
        }
        if ((st = kvq_cli_cache_configs(&info, kspec, vspec, NULL, 0, 0, 0, per_layer, msg, sizeof msg))) {
            fprintf(stderr, "kvq serve: cache spec: %s%s%s\n", kvq_strerror(st), msg[0] ? ": " : "", msg);
            goto done;
        }
    }
    /* a model without a recognised chat template falls back to ChatML, said once */
    {
        kvq_chat_message probe = {"user", "hi"};
        size_t len;
        char tmsg[200] = "", buf[512];
        if (!chat_template &&
            kvq_chat_format(model, NULL, &probe, 1, 1, buf, sizeof buf, &len, tmsg, sizeof tmsg) == KVQ_ERR_UNSUPPORTED) {
            fprintf(stderr, "kvq serve: the model has no chat template kvq knows (%s): chat requests use chatml\n", tmsg);
            chat_template = "chatml";
        }
        if (chat_template &&
            (st = kvq_chat_format(model, chat_template, &probe, 1, 1, buf, sizeof buf, &len, tmsg, sizeof tmsg))) {
            fprintf(stderr, "kvq serve: --chat-template %s: %s\n", chat_template, tmsg[0] ? tmsg : kvq_strerror(st));
            goto done;
        }
    }
    serve_sched_params sp = {0};
    sp.model = model;
    sp.n_slots = (uint32_t)n_slots;
    sp.n_ctx = (uint32_t)(n_ctx ? (uint32_t)n_ctx : (info.ctx_len && info.ctx_len < 4096 ? info.ctx_len : 4096));
    sp.n_threads = (uint32_t)threads;
    sp.n_batch = (uint32_t)batch;
    sp.per_layer = per_layer;
    sp.kv_budget = (uint64_t)(budget_mb * 1024.0 * 1024.0);
    sp.max_queue = (uint32_t)queue;
    sp.measure_tokens = (uint32_t)measure;
    if (serve_sched_create(&sp, &sched, msg, sizeof msg)) {
        fprintf(stderr, "kvq serve: %s\n", msg[0] ? msg : "cannot create the slots");
        goto done;
    }
    sv.model = model;
    sv.sched = sched;
    sv.chat_template = chat_template;
    sv.api_key = api_key;
    sv.max_body = (size_t)max_body;
    sv.read_timeout = (double)timeout;
    sv.created = (long)time(NULL);
    if (alias) snprintf(sv.model_id, sizeof sv.model_id, "%s", alias);
    else {
        const char *base = strrchr(model_path, '/');
        snprintf(sv.model_id, sizeof sv.model_id, "%s", base ? base + 1 : model_path);
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "kvq serve: --host %s is not an IPv4 address\n", host);
        goto done;
    }
    signal(SIGPIPE, SIG_IGN);
    d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                             MHD_USE_POLL,
                         (uint16_t)port, NULL, NULL, on_request, &sv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)timeout, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)max_conn, MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)0,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_NOTIFY_COMPLETED,
                         on_completed, NULL, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "kvq serve: cannot listen on %s:%ld (in use, or not allowed)\n", host, port);
        goto done;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned bound = di ? di->port : (unsigned)port;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    serve_metrics m0;
    serve_sched_metrics(sched, &m0);
    fprintf(stderr,
            "kvq serve: %s on http://%s:%u/v1 - %ld slots x %u tokens, KV %s%s%s, %" PRIu64
            " full-context conversations at once, %" PRIu64 " bytes per empty slot%s\n",
            sv.model_id, host, bound, n_slots, sp.n_ctx, kspec, whole ? "" : "/", whole ? "" : vspec, m0.budget_conversations, m0.fixed_bytes,
            api_key ? ", API key required" : "");
    fflush(stderr);
    double t0 = kvq_cli_now_s();
    while (!g_stop && !(exit_after > 0 && kvq_cli_now_s() - t0 >= exit_after)) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "kvq serve: stopping\n");
    rc = 0;
done:
    serve_sched_stop(sched);
    if (d) MHD_stop_daemon(d);
    serve_sched_free(sched);
    free(per_layer);
    kvq_model_free(model);
    pthread_mutex_destroy(&sv.mu);
    return rc;
}
