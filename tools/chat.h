/* chat.h - `kvq generate --chat`: turns rendered with the model's chat template, one
 * context (and its compressed KV cache) kept across them. */
#ifndef KVQ_CLI_CHAT_H
#define KVQ_CLI_CHAT_H

#include <stdio.h>

#include "kvq.h"

typedef struct kvq_cli_chat_opts {
    const char *system;        /* system prompt (NULL: none) */
    const char *template_name; /* NULL: the model's own */
    const char *prompt;        /* one user turn, answered, then return (NULL: read stdin) */
    long max_tokens;           /* most tokens per answer */
    size_t n_batch;            /* the context's batch (most tokens per eval) */
    float temperature, top_p;
    int no_bos, quiet;
    /* kvq_sample_ext's filters; the repeat penalty looks back on the last
     * repeat_last_n tokens of the answer being written (at most 4096) */
    uint32_t top_k;
    float min_p, repeat_penalty;
    size_t repeat_last_n;
    int json; /* one JSON object per turn on stdout (JSON Lines) instead of the streamed text */
} kvq_cli_chat_opts;

/* Runs the conversation on ctx (fresh) and returns the exit code. Each user turn is a
 * line of `in`; answers stream to stdout (or, with json, each turn is one line holding a
 * JSON object: turn, user, text, token counts, seconds, why it stopped, KV bytes); per-turn
 * token counts go to stderr unless quiet. */
int kvq_cli_chat(kvq_model *model, kvq_context *ctx, const kvq_cli_chat_opts *opts, FILE *in);

#endif
