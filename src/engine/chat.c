/*
 * chat.c - chat messages rendered as a model's prompt. The GGUF's tokenizer.chat_template
 * is Jinja; instead of running it, the common families are recognised by their markers
 * (as llama.cpp's llm_chat_detect_template does) and written out by hand, following each
 * family's Hugging Face template. The leading BOS token that those templates print is
 * left to the tokenizer (kvq_tokenize's add_bos), so it is never doubled. A file without
 * a template (Gemma-3-270M's GGUF has none) is placed by the turn tokens of its vocabulary.
 */
#include <string.h>

#include "engine/engine.h"

typedef enum chat_family {
    CHAT_CHATML = 0, /* SmolLM2, Qwen2: <|im_start|>role\n...<|im_end|>\n */
    CHAT_LLAMA3,     /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    CHAT_LLAMA2,     /* [INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] */
    CHAT_MISTRAL,    /* [INST] ... [/INST]...</s> (no system role) */
    CHAT_GEMMA,      /* <start_of_turn>user\n...<end_of_turn>\n (no system role) */
    CHAT_PHI3,       /* <|user|>\n...<|end|>\n */
    CHAT_COUNT
} chat_family;

static const char *const family_names[CHAT_COUNT] = {"chatml", "llama3", "llama2", "mistral", "gemma", "phi3"};

static int contains(const char *s, size_t n, const char *needle) {
    size_t m = strlen(needle);
    if (m > n) return 0;
    for (size_t i = 0; i + m <= n; i++)
        if (s[i] == needle[0] && !memcmp(s + i, needle, m)) return 1;
    return 0;
}

int kvqi_chat_detect(const char *tmpl, size_t len) {
    if (!tmpl) return -1;
    /* same order as llama.cpp: a template may mention another family's markers late */
    if (contains(tmpl, len, "<|im_start|>")) return CHAT_CHATML;
    if (contains(tmpl, len, "[INST]")) return contains(tmpl, len, "<<SYS>>") ? CHAT_LLAMA2 : CHAT_MISTRAL;
    if (contains(tmpl, len, "<|assistant|>") && contains(tmpl, len, "<|end|>")) return CHAT_PHI3;
    if (contains(tmpl, len, "<start_of_turn>")) return CHAT_GEMMA;
    if (contains(tmpl, len, "<|start_header_id|>") && contains(tmpl, len, "<|end_header_id|>")) return CHAT_LLAMA3;
    return -1;
}

/* A family from the special tokens the vocabulary has, for files without a template. */
static int detect_from_vocab(const kvq_model *model) {
    const kvqi_tokenizer *t = kvqi_model_tokenizer(model);
    if (kvqi_tokenizer_find_special(t, "<|im_start|>") >= 0 && kvqi_tokenizer_find_special(t, "<|im_end|>") >= 0)
        return CHAT_CHATML;
    if (kvqi_tokenizer_find_special(t, "<start_of_turn>") >= 0 && kvqi_tokenizer_find_special(t, "<end_of_turn>") >= 0)
        return CHAT_GEMMA;
    if (kvqi_tokenizer_find_special(t, "<|start_header_id|>") >= 0 && kvqi_tokenizer_find_special(t, "<|eot_id|>") >= 0)
        return CHAT_LLAMA3;
    if (kvqi_tokenizer_find_special(t, "<|assistant|>") >= 0 && kvqi_tokenizer_find_special(t, "<|end|>") >= 0)
        return CHAT_PHI3;
    return -1;
}

const char *kvqi_chat_family_name(int family) {
    return family >= 0 && family < CHAT_COUNT ? family_names[family] : NULL;
}

/* ---------------------------------------------------------------- output */

typedef struct out_buf {
    char *buf;
    size_t size;
    size_t len; /* bytes needed so far (may exceed size) */
} out_buf;

static void put_n(out_buf *o, const char *s, size_t n) {
    if (o->len < o->size) {
        size_t room = o->size - o->len, k = n < room ? n : room;
        memcpy(o->buf + o->len, s, k);
    }
    o->len += n;
}

static void put(out_buf *o, const char *s) { put_n(o, s, strlen(s)); }

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Jinja's trim / Python's strip(): no leading or trailing whitespace */
static void put_trimmed(out_buf *o, const char *s) {
    size_t a = 0, b = strlen(s);
    while (a < b && is_ws(s[a])) a++;
    while (b > a && is_ws(s[b - 1])) b--;
    put_n(o, s + a, b - a);
}

/* ------------------------------------------------------------ renderers */

/* Every family below is written from its Hugging Face template (the file named beside
 * it), the opening bos_token left out. */

/* Families that wrap every message the same way: before + role + after_role + content
 * (trimmed or not) + after_content; the generation prompt is gen. */
typedef struct role_wrap {
    const char *before, *after_role, *after_content, *gen;
    int trim;
} role_wrap;

/* HuggingFaceTB/SmolLM2-*-Instruct, Qwen/Qwen2-*-Instruct: each message as
 * '<|im_start|>' + role + '\n' + content + '<|im_end|>' + '\n'; generation prompt
 * '<|im_start|>assistant\n'. (Their templates add a default system message when the
 * first message is not one; as llama.cpp, nothing is added here.) */
static const role_wrap wrap_chatml = {"<|im_start|>", "\n", "<|im_end|>\n", "<|im_start|>assistant\n", 0};

/* meta-llama/Meta-Llama-3-8B-Instruct: '<|start_header_id|>' + role + '<|end_header_id|>\n\n'
 * + content | trim + '<|eot_id|>'; generation prompt '<|start_header_id|>assistant<|end_header_id|>\n\n'. */
static const role_wrap wrap_llama3 = {"<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>",
                                      "<|start_header_id|>assistant<|end_header_id|>\n\n", 1};

/* microsoft/Phi-3.5-mini-instruct: '<|' + role + '|>\n' + content + '<|end|>\n' for
 * system, user and assistant; generation prompt '<|assistant|>\n'. */
static const role_wrap wrap_phi3 = {"<|", "|>\n", "<|end|>\n", "<|assistant|>\n", 0};

static void render_wrapped(out_buf *o, const role_wrap *w, const kvq_chat_message *m, size_t n,
                           int add_assistant) {
    for (size_t i = 0; i < n; i++) {
        put(o, w->before);
        put(o, m[i].role);
        put(o, w->after_role);
        if (w->trim) put_trimmed(o, m[i].content);
        else put(o, m[i].content);
        put(o, w->after_content);
    }
    if (add_assistant) put(o, w->gen);
}

/* meta-llama/Llama-2-7b-chat-hf: a leading system message becomes
 * '<<SYS>>\n' + system + '\n<</SYS>>\n\n' before the first user message; user:
 * bos_token + '[INST] ' + content.strip() + ' [/INST]'; assistant: ' ' + content.strip()
 * + ' ' + eos_token. The [/INST] already opens the answer, so add_assistant adds nothing. */
static void render_llama2(out_buf *o, const kvq_chat_message *m, size_t n) {
    const char *system = NULL;
    int first_user = 1;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "system")) {
            system = m[i].content;
        } else if (!strcmp(m[i].role, "user")) {
            put(o, first_user ? "[INST] " : "<s>[INST] ");
            if (system) {
                put(o, "<<SYS>>\n");
                put_trimmed(o, system);
                put(o, "\n<</SYS>>\n\n");
                system = NULL;
            }
            put_trimmed(o, m[i].content);
            put(o, " [/INST]");
            first_user = 0;
        } else {
            put(o, " ");
            put_trimmed(o, m[i].content);
            put(o, " </s>");
        }
    }
}

/* mistralai/Mistral-7B-Instruct-v0.2: user: '[INST] ' + content + ' [/INST]'; assistant:
 * content + eos_token. It has no system role: a system message joins the next user
 * message as system + '\n\n' + content (Mistral's own v0.3 template does the same). */
static void render_mistral(out_buf *o, const kvq_chat_message *m, size_t n) {
    const char *system = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "system")) {
            system = m[i].content;
        } else if (!strcmp(m[i].role, "user")) {
            put(o, "[INST] ");
            if (system) {
                put(o, system);
                put(o, "\n\n");
                system = NULL;
            }
            put(o, m[i].content);
            put(o, " [/INST]");
        } else {
            put(o, m[i].content);
            put(o, "</s>");
        }
    }
}

/* google/gemma-3-270m-it: '<start_of_turn>' + role ('assistant' is 'model') + '\n' +
 * content | trim + '<end_of_turn>\n'; generation prompt '<start_of_turn>model\n'. No
 * system role: a leading system message becomes the first user turn's prefix,
 * system + '\n\n' (llama.cpp merges it the same way). */
static void render_gemma(out_buf *o, const kvq_chat_message *m, size_t n, int add_assistant) {
    const char *system = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "system")) {
            system = m[i].content;
            continue;
        }
        int model = !strcmp(m[i].role, "assistant") || !strcmp(m[i].role, "model");
        put(o, "<start_of_turn>");
        put(o, model ? "model" : m[i].role);
        put(o, "\n");
        if (system && !model) {
            put_trimmed(o, system);
            put(o, "\n\n");
            system = NULL;
        }
        put_trimmed(o, m[i].content);
        put(o, "<end_of_turn>\n");
    }
    if (add_assistant) put(o, "<start_of_turn>model\n");
}

KVQ_API kvq_status kvq_chat_format(const kvq_model *model, const char *template_name,
                                   const kvq_chat_message *msgs, size_t n_msgs, int add_assistant,
                                   char *buf, size_t buf_size, size_t *len, char *msg, size_t msg_size) {
    if (!len || (!msgs && n_msgs) || (!buf && buf_size) || (!model && !template_name)) {
        kvqi_set_msg(msg, msg_size, "chat: invalid arguments");
        return KVQ_ERR_INVALID_ARG;
    }
    *len = 0;
    for (size_t i = 0; i < n_msgs; i++)
        if (!msgs[i].role || !msgs[i].content) {
            kvqi_set_msg(msg, msg_size, "chat: message %zu has no role or no content", i);
            return KVQ_ERR_INVALID_ARG;
        }
    int family = -1;
    if (template_name) {
        for (int f = 0; f < CHAT_COUNT; f++)
            if (!strcmp(template_name, family_names[f])) family = f;
        if (family < 0) {
            kvqi_set_msg(msg, msg_size,
                         "chat: unknown template '%s' (chatml, llama3, llama2, mistral, gemma, phi3 are known)",
                         template_name);
            return KVQ_ERR_UNSUPPORTED;
        }
    } else {
        const kvqi_gguf_kv *kv = kvqi_gguf_find(kvqi_model_gguf(model), "tokenizer.chat_template");
        if (!kv || kv->type != KVQI_GGUF_STRING) {
            family = detect_from_vocab(model);
            if (family < 0) {
                kvqi_set_msg(msg, msg_size, "chat: the model has no tokenizer.chat_template and no known turn "
                                            "tokens; name a template (chatml, llama3, llama2, mistral, gemma, phi3)");
                return KVQ_ERR_UNSUPPORTED;
            }
        } else if ((family = kvqi_chat_detect(kv->str, (size_t)kv->str_len)) < 0) {
            kvqi_set_msg(msg, msg_size, "chat: the model's chat template is not one of the known families "
                                        "(chatml, llama3, llama2, mistral, gemma, phi3); name one to use");
            return KVQ_ERR_UNSUPPORTED;
        }
    }
    out_buf o = {buf, buf_size, 0};
    switch ((chat_family)family) {
    case CHAT_CHATML: render_wrapped(&o, &wrap_chatml, msgs, n_msgs, add_assistant); break;
    case CHAT_LLAMA3: render_wrapped(&o, &wrap_llama3, msgs, n_msgs, add_assistant); break;
    case CHAT_LLAMA2: render_llama2(&o, msgs, n_msgs); break;
    case CHAT_MISTRAL: render_mistral(&o, msgs, n_msgs); break;
    case CHAT_GEMMA: render_gemma(&o, msgs, n_msgs, add_assistant); break;
    case CHAT_PHI3: render_wrapped(&o, &wrap_phi3, msgs, n_msgs, add_assistant); break;
    default: break;
    }
    *len = o.len;
    if (o.len >= buf_size) {
        if (buf_size) buf[buf_size - 1] = 0;
        kvqi_set_msg(msg, msg_size, "chat: the prompt needs %zu bytes, the buffer holds %zu", o.len + 1, buf_size);
        return KVQ_ERR_CAPACITY;
    }
    buf[o.len] = 0;
    return KVQ_OK;
}
