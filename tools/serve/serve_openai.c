/* serve_openai.c - the OpenAI API's JSON shapes (chat.completion, text_completion, their
 * streamed chunks, model lists and error objects), written with cJSON. */
#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

static char *print_and_free(cJSON *root) {
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

/* cJSON strings are NUL-terminated and passed through byte for byte: copy text[len],
 * writing U+FFFD for each byte that does not start a valid UTF-8 sequence (a token may
 * hold part of a character) and for NUL bytes. */
static cJSON *add_text(cJSON *obj, const char *name, const char *text, size_t len) {
    if (len > (SIZE_MAX - 1) / 3) return NULL;
    char *copy = malloc(len * 3 + 1);
    if (!copy) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t k = 1;
        while (k <= 4 && i + k <= len && !serve_utf8_valid(text + i, k)) k++;
        if (k <= 4 && i + k <= len) {
            memcpy(copy + o, text + i, k);
            o += k;
            i += k;
        } else {
            memcpy(copy + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    copy[o] = 0;
    cJSON *s = cJSON_AddStringToObject(obj, name, copy);
    free(copy);
    return s;
}

static const char *finish_name(serve_finish f) {
    return f == SERVE_LENGTH ? "length" : "stop";
}

char *serve_json_error(const char *message, const char *type, const char *param) {
    cJSON *root = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(root, "error");
    if (!err) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddStringToObject(err, "message", message);
    cJSON_AddStringToObject(err, "type", type);
    if (param) cJSON_AddStringToObject(err, "param", param);
    else cJSON_AddNullToObject(err, "param");
    cJSON_AddNullToObject(err, "code");
    return print_and_free(root);
}

char *serve_json_models(const char *model_id, long created) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    if (!data || !m) {
        cJSON_Delete(m);
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "kvq");
    return print_and_free(root);
}

static cJSON *envelope(serve_kind kind, const char *id, const char *model_id, long created, int chunk) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "id", id);
    cJSON_AddStringToObject(root, "object",
                            kind == SERVE_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)created);
    cJSON_AddStringToObject(root, "model", model_id);
    cJSON_AddStringToObject(root, "system_fingerprint", "kvq");
    return root;
}

static void add_usage(cJSON *root, size_t prompt_tokens, size_t completion_tokens) {
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    if (!u) return;
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(prompt_tokens + completion_tokens));
}

char *serve_json_completion(serve_kind kind, const char *id, const char *model_id, long created, const char *text,
                            size_t text_len, serve_finish finish, size_t prompt_tokens, size_t completion_tokens) {
    cJSON *root = envelope(kind, id, model_id, created, 0);
    cJSON *choices = root ? cJSON_AddArrayToObject(root, "choices") : NULL;
    cJSON *c = cJSON_CreateObject();
    if (!choices || !c) {
        cJSON_Delete(c);
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    if (kind == SERVE_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        if (m) {
            cJSON_AddStringToObject(m, "role", "assistant");
            add_text(m, "content", text, text_len);
        }
    } else {
        add_text(c, "text", text, text_len);
    }
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", finish_name(finish));
    add_usage(root, prompt_tokens, completion_tokens);
    return print_and_free(root);
}

char *serve_json_chunk(serve_kind kind, const char *id, const char *model_id, long created, const char *text,
                       size_t text_len, int opening, serve_finish finish) {
    cJSON *root = envelope(kind, id, model_id, created, 1);
    cJSON *choices = root ? cJSON_AddArrayToObject(root, "choices") : NULL;
    cJSON *c = cJSON_CreateObject();
    if (!choices || !c) {
        cJSON_Delete(c);
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    if (kind == SERVE_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (d && opening) cJSON_AddStringToObject(d, "role", "assistant");
        if (d && (text || opening)) add_text(d, "content", text ? text : "", text ? text_len : 0);
    } else {
        add_text(c, "text", text ? text : "", text ? text_len : 0);
    }
    cJSON_AddNullToObject(c, "logprobs");
    if (finish == SERVE_RUNNING) cJSON_AddNullToObject(c, "finish_reason");
    else cJSON_AddStringToObject(c, "finish_reason", finish_name(finish));
    return print_and_free(root);
}

char *serve_json_usage_chunk(serve_kind kind, const char *id, const char *model_id, long created,
                             size_t prompt_tokens, size_t completion_tokens) {
    cJSON *root = envelope(kind, id, model_id, created, 1);
    if (!root || !cJSON_AddArrayToObject(root, "choices")) {
        cJSON_Delete(root);
        return NULL;
    }
    add_usage(root, prompt_tokens, completion_tokens);
    return print_and_free(root);
}
