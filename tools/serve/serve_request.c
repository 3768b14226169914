/* serve_request.c - a completion request's JSON body (cJSON) into a plain, validated
 * serve_request: known fields of the wrong type, out-of-range numbers, invalid UTF-8
 * and trailing bytes are refused with a message naming the field. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

int serve_utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c == 0) return 0;
        if (c < 0x80) { i++; continue; }
        size_t len;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
        else return 0;
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += len;
    }
    return 1;
}

size_t serve_utf8_complete(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    /* look back at most 3 bytes for a lead byte whose sequence runs past the end */
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned c = s[n - back];
        if ((c & 0xc0) == 0x80) continue;
        size_t len = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return len > back ? n - back : n;
    }
    return n;
}

static int fail(char *msg, size_t msg_size, const char **param, const char *field, const char *what) {
    snprintf(msg, msg_size, "'%s' %s", field, what);
    *param = field;
    return -1;
}

/* A content field: a string, or an array of {"type":"text","text":...} parts (joined). */
static const char *content_text(cJSON *c, cJSON *msg_obj) {
    if (cJSON_IsString(c)) return c->valuestring;
    if (!cJSON_IsArray(c)) return NULL;
    size_t total = 1;
    cJSON *part;
    cJSON_ArrayForEach(part, c) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        if (!cJSON_IsObject(part) || !cJSON_IsString(t) || (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "text"))))
            return NULL;
        total += strlen(t->valuestring);
    }
    char *joined = malloc(total);
    if (!joined) return NULL;
    joined[0] = 0;
    cJSON_ArrayForEach(part, c) strcat(joined, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
    /* kept alive by the JSON tree: replace the array with the joined string */
    cJSON *s = cJSON_CreateString(joined);
    free(joined);
    if (!s) return NULL;
    cJSON_ReplaceItemInObjectCaseSensitive(msg_obj, "content", s);
    return s->valuestring;
}

static int get_number(cJSON *root, const char *field, double lo, double hi, double *out, int *given, char *msg,
                      size_t msg_size, const char **param) {
    cJSON *x = cJSON_GetObjectItemCaseSensitive(root, field);
    *given = 0;
    if (!x || cJSON_IsNull(x)) return 0;
    if (!cJSON_IsNumber(x)) return fail(msg, msg_size, param, field, "must be a number");
    if (!isfinite(x->valuedouble) || x->valuedouble < lo || x->valuedouble > hi) {
        char what[96];
        snprintf(what, sizeof what, "must be between %g and %g", lo, hi);
        return fail(msg, msg_size, param, field, what);
    }
    *out = x->valuedouble;
    *given = 1;
    return 0;
}

int serve_request_parse(serve_kind kind, const char *body, size_t len, serve_request *req, char *msg,
                        size_t msg_size, const char **param) {
    memset(req, 0, sizeof *req);
    req->kind = kind;
    req->max_tokens = -1;
    req->temperature = 1.0f;
    req->top_p = 1.0f;
    *param = NULL;
    if (!serve_utf8_valid(body, len)) {
        snprintf(msg, msg_size, "the request body is not valid UTF-8 text");
        return -1;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (root) {
        while (end < body + len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t')) end++;
        if (end != body + len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root) {
        snprintf(msg, msg_size, "the request body is not valid JSON (near byte %zu)", end ? (size_t)(end - body) : (size_t)0);
        return -1;
    }
    req->json = root;
    if (!cJSON_IsObject(root)) {
        snprintf(msg, msg_size, "the request body must be a JSON object");
        goto bad;
    }
    cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsString(model) && !cJSON_IsNull(model)) {
        fail(msg, msg_size, param, "model", "must be a string");
        goto bad;
    }
    if (kind == SERVE_CHAT) {
        cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
        if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
            fail(msg, msg_size, param, "messages", "must be a non-empty array");
            goto bad;
        }
        size_t n = (size_t)cJSON_GetArraySize(msgs);
        req->messages = calloc(n, sizeof *req->messages);
        if (!req->messages) {
            snprintf(msg, msg_size, "out of memory");
            goto bad;
        }
        cJSON *m;
        cJSON_ArrayForEach(m, msgs) {
            cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
                fail(msg, msg_size, param, "messages", "must hold objects with a string 'role'");
                goto bad;
            }
            const char *text = cJSON_IsNull(content) || !content ? "" : content_text(content, m);
            if (!text) {
                fail(msg, msg_size, param, "messages", "content must be a string or an array of text parts");
                goto bad;
            }
            req->messages[req->n_messages].role = role->valuestring;
            req->messages[req->n_messages].content = text;
            req->n_messages++;
        }
    } else {
        cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
            p = cJSON_GetArrayItem(p, 0);
        if (!cJSON_IsString(p)) {
            fail(msg, msg_size, param, "prompt", "must be a string");
            goto bad;
        }
        req->prompt = p->valuestring;
    }
    double v;
    int given;
    const char *mt_name = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if (get_number(root, mt_name, 1, 1e9, &v, &given, msg, msg_size, param)) goto bad;
    if (given) {
        if (v != floor(v)) {
            fail(msg, msg_size, param, mt_name, "must be an integer");
            goto bad;
        }
        req->max_tokens = (long)v;
    }
    if (get_number(root, "temperature", 0, 2, &v, &given, msg, msg_size, param)) goto bad;
    if (given) req->temperature = (float)v;
    if (get_number(root, "top_p", 0, 1, &v, &given, msg, msg_size, param)) goto bad;
    if (given) req->top_p = (float)v;
    if (get_number(root, "seed", -9.2e18, 9.2e18, &v, &given, msg, msg_size, param)) goto bad;
    if (given) {
        if (v != floor(v)) {
            fail(msg, msg_size, param, "seed", "must be an integer");
            goto bad;
        }
        req->has_seed = 1;
        req->seed = (uint64_t)(int64_t)v;
    }
    if (get_number(root, "n", 1, 1, &v, &given, msg, msg_size, param)) goto bad;
    cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (cJSON_IsString(stop)) {
        req->stop[req->n_stop++] = stop->valuestring;
    } else if (cJSON_IsArray(stop)) {
        cJSON *s;
        cJSON_ArrayForEach(s, stop) {
            if (!cJSON_IsString(s) || req->n_stop == SERVE_MAX_STOP) {
                fail(msg, msg_size, param, "stop", "must be a string or an array of at most 4 strings");
                goto bad;
            }
            req->stop[req->n_stop++] = s->valuestring;
        }
    } else if (stop && !cJSON_IsNull(stop)) {
        fail(msg, msg_size, param, "stop", "must be a string or an array of at most 4 strings");
        goto bad;
    }
    for (size_t i = 0; i < req->n_stop; i++)
        if (!req->stop[i][0] || strlen(req->stop[i]) > SERVE_MAX_STOP_LEN) {
            fail(msg, msg_size, param, "stop", "strings must hold 1 to 256 bytes");
            goto bad;
        }
    cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (stream && !cJSON_IsBool(stream) && !cJSON_IsNull(stream)) {
        fail(msg, msg_size, param, "stream", "must be a boolean");
        goto bad;
    }
    req->stream = cJSON_IsTrue(stream);
    cJSON *ie = cJSON_GetObjectItemCaseSensitive(root, "ignore_eos");
    if (ie && !cJSON_IsBool(ie) && !cJSON_IsNull(ie)) {
        fail(msg, msg_size, param, "ignore_eos", "must be a boolean");
        goto bad;
    }
    req->ignore_eos = cJSON_IsTrue(ie);
    cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
        if (!cJSON_IsObject(so) || (iu && !cJSON_IsBool(iu))) {
            fail(msg, msg_size, param, "stream_options", "must be an object with a boolean 'include_usage'");
            goto bad;
        }
        req->include_usage = cJSON_IsTrue(iu);
    }
    static const char *const numeric[] = {"presence_penalty", "frequency_penalty", "top_k", "min_p", "repeat_penalty"};
    for (size_t i = 0; i < sizeof numeric / sizeof numeric[0]; i++) {
        cJSON *x = cJSON_GetObjectItemCaseSensitive(root, numeric[i]);
        if (x && !cJSON_IsNumber(x) && !cJSON_IsNull(x)) {
            fail(msg, msg_size, param, numeric[i], "must be a number");
            goto bad;
        }
    }
    cJSON *user = cJSON_GetObjectItemCaseSensitive(root, "user");
    if (user && !cJSON_IsString(user) && !cJSON_IsNull(user)) {
        fail(msg, msg_size, param, "user", "must be a string");
        goto bad;
    }
    return 0;
bad:
    serve_request_free(req);
    return -1;
}

void serve_request_free(serve_request *req) {
    free(req->messages);
    cJSON_Delete(req->json);
    req->messages = NULL;
    req->json = NULL;
}
