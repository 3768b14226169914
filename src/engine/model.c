/*
 * model.c - the Llama-family forward pass on GGUF weights (Touvron et al. 2023):
 * RMSNorm, rotary positions (Su et al. 2021; normal or NeoX pairing), grouped-query
 * attention over a per-layer KV cache, SwiGLU feed-forward, tied or separate output;
 * and Gemma 3 (Gemma Team 2025) on the same skeleton: scaled embeddings, RMS-normed
 * queries and keys, sliding-window layers with their own RoPE base between global ones,
 * norms after attention and after the GeGLU feed-forward, optional logit soft-capping.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache_internal.h"
#include "engine/engine.h"

typedef struct layer_weights {
    float *attn_norm, *ffn_norm; /* dequantized at load: [n_embd] */
    float *bq, *bk, *bv;         /* optional biases (qwen2) */
    float *q_norm, *k_norm;      /* gemma3: RMSNorm of each head [head_dim] */
    float *post_attn_norm, *post_ffn_norm; /* gemma3: RMSNorm of the block outputs [n_embd] */
    int swa;                     /* 1: sliding-window layer (attends the last n_swa positions) */
    const kvqi_gguf_tensor *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
} layer_weights;

struct kvq_model {
    kvqi_gguf *gguf;
    kvqi_tokenizer *tok;
    kvq_model_info info;
    uint32_t n_rot;              /* rotated dims per head (<= head_dim) */
    const kvqi_gguf_tensor *tok_embd, *output;
    float *output_norm;
    float *rope_freq_factors;    /* optional [n_rot / 2] */
    layer_weights *layers;
    int gemma;                   /* gemma3's block layout, GeGLU, embedding scale */
    float attn_scale;            /* softmax scale of q.k (1/sqrt(head_dim) unless the model says) */
    uint32_t n_swa;              /* sliding window of the swa layers (0: none) */
    float rope_base_swa;         /* RoPE base of the sliding-window layers */
    float logit_softcap;         /* final logits: cap * tanh(logit / cap) (0: none) */
    const uint8_t *swa_flags;    /* per-layer sliding flags in the file, or NULL: */
    uint32_t swa_period;         /* layer l slides unless l % period == period - 1 */
};

/* ------------------------------------------------------------ loading */

static kvq_status get_arch_u32(const kvqi_gguf *g, const char *arch, const char *key, uint32_t *out,
                               int required, char *msg, size_t msg_size) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    kvq_status st = kvqi_gguf_get_u32(g, full, out);
    if (st && required) {
        kvqi_set_msg(msg, msg_size, "model: %s missing or not an unsigned integer", full);
        return KVQ_ERR_FORMAT;
    }
    return KVQ_OK;
}

static kvq_status find_matrix(const kvqi_gguf *g, const char *name, uint64_t ne0, uint64_t ne1,
                              int optional, const kvqi_gguf_tensor **out, char *msg, size_t msg_size) {
    const kvqi_gguf_tensor *t = kvqi_gguf_find_tensor(g, name);
    *out = t;
    if (!t) {
        if (optional) return KVQ_OK;
        kvqi_set_msg(msg, msg_size, "model: tensor %s missing", name);
        return KVQ_ERR_FORMAT;
    }
    if (t->ne[0] != ne0 || t->n_rows != ne1 || t->n_dims > 2) {
        kvqi_set_msg(msg, msg_size, "model: tensor %s is %llux%llu, expected %llux%llu", name,
                     (unsigned long long)t->ne[0], (unsigned long long)t->n_rows,
                     (unsigned long long)ne0, (unsigned long long)ne1);
        return KVQ_ERR_FORMAT;
    }
    if (!kvqi_type(t->type)->to_float) {
        kvqi_set_msg(msg, msg_size, "model: tensor %s has type %s, which this engine cannot read", name,
                     kvqi_type(t->type)->name);
        return KVQ_ERR_UNSUPPORTED;
    }
    return KVQ_OK;
}

static kvq_status load_vector(const kvqi_gguf *g, const char *name, uint64_t n, int optional, float **out,
                              char *msg, size_t msg_size) {
    const kvqi_gguf_tensor *t;
    *out = NULL;
    kvq_status st = find_matrix(g, name, n, 1, optional, &t, msg, msg_size);
    if (st || !t) return st;
    float *v = kvqi_alloc_array((size_t)n, sizeof(float));
    if (!v) return KVQ_ERR_NOMEM;
    kvqi_type(t->type)->to_float(t->data, v, (size_t)n);
    *out = v;
    return KVQ_OK;
}

void kvq_model_free(kvq_model *m) {
    if (!m) return;
    if (m->layers)
        for (uint32_t l = 0; l < m->info.n_layers; l++) {
            layer_weights *L = &m->layers[l];
            kvqi_free(L->attn_norm);
            kvqi_free(L->ffn_norm);
            kvqi_free(L->bq);
            kvqi_free(L->bk);
            kvqi_free(L->bv);
            kvqi_free(L->q_norm);
            kvqi_free(L->k_norm);
            kvqi_free(L->post_attn_norm);
            kvqi_free(L->post_ffn_norm);
        }
    free(m->layers);
    kvqi_free(m->output_norm);
    kvqi_free(m->rope_freq_factors);
    kvqi_tokenizer_free(m->tok);
    kvqi_gguf_close(m->gguf);
    free(m);
}

static kvq_status load_weights(kvq_model *m, char *msg, size_t msg_size) {
    const kvqi_gguf *g = m->gguf;
    kvq_model_info *I = &m->info;
    kvq_status st;
    uint64_t q_dim = (uint64_t)I->n_heads * I->head_dim, kv_dim = (uint64_t)I->n_kv_heads * I->head_dim;
    if ((st = find_matrix(g, "token_embd.weight", I->n_embd, I->n_vocab, 0, &m->tok_embd, msg, msg_size))) return st;
    if ((st = find_matrix(g, "output.weight", I->n_embd, I->n_vocab, 1, &m->output, msg, msg_size))) return st;
    I->tied_output = m->output == NULL;
    if (!m->output) m->output = m->tok_embd;
    if ((st = load_vector(g, "output_norm.weight", I->n_embd, 0, &m->output_norm, msg, msg_size))) return st;
    if ((st = load_vector(g, "rope_freqs.weight", m->n_rot / 2, 1, &m->rope_freq_factors, msg, msg_size))) return st;
    /* a blk.N tensor past block_count: the file and its header disagree on the depth */
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const char *tn = g->tensors[i].name;
        if (strncmp(tn, "blk.", 4) || !(tn[4] >= '0' && tn[4] <= '9')) continue;
        uint64_t b = 0;
        for (const char *d = tn + 4; *d >= '0' && *d <= '9' && b <= UINT32_MAX; d++) b = b * 10 + (uint64_t)(*d - '0');
        if (b >= I->n_layers) {
            kvqi_set_msg(msg, msg_size, "model: tensor '%s' is past block_count %u", tn, I->n_layers);
            return KVQ_ERR_FORMAT;
        }
    }
    m->layers = calloc(I->n_layers, sizeof *m->layers);
    if (!m->layers) return KVQ_ERR_NOMEM;
    for (uint32_t l = 0; l < I->n_layers; l++) {
        layer_weights *L = &m->layers[l];
        char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%u." suffix, l), name)
        if ((st = load_vector(g, NAME("attn_norm.weight"), I->n_embd, 0, &L->attn_norm, msg, msg_size))) return st;
        if ((st = load_vector(g, NAME("ffn_norm.weight"), I->n_embd, 0, &L->ffn_norm, msg, msg_size))) return st;
        if ((st = find_matrix(g, NAME("attn_q.weight"), I->n_embd, q_dim, 0, &L->wq, msg, msg_size))) return st;
        if ((st = find_matrix(g, NAME("attn_k.weight"), I->n_embd, kv_dim, 0, &L->wk, msg, msg_size))) return st;
        if ((st = find_matrix(g, NAME("attn_v.weight"), I->n_embd, kv_dim, 0, &L->wv, msg, msg_size))) return st;
        if ((st = find_matrix(g, NAME("attn_output.weight"), q_dim, I->n_embd, 0, &L->wo, msg, msg_size))) return st;
        if ((st = find_matrix(g, NAME("ffn_gate.weight"), I->n_embd, I->n_ff, 0, &L->w_gate, msg, msg_size))) return st;
        if ((st = find_matrix(g, NAME("ffn_up.weight"), I->n_embd, I->n_ff, 0, &L->w_up, msg, msg_size))) return st;
        if ((st = find_matrix(g, NAME("ffn_down.weight"), I->n_ff, I->n_embd, 0, &L->w_down, msg, msg_size))) return st;
        if ((st = load_vector(g, NAME("attn_q.bias"), q_dim, 1, &L->bq, msg, msg_size))) return st;
        if ((st = load_vector(g, NAME("attn_k.bias"), kv_dim, 1, &L->bk, msg, msg_size))) return st;
        if ((st = load_vector(g, NAME("attn_v.bias"), kv_dim, 1, &L->bv, msg, msg_size))) return st;
        if (m->gemma && m->n_swa > 0)
            L->swa = m->swa_flags ? m->swa_flags[l] != 0
                                  : m->swa_period == 0 || l % m->swa_period < m->swa_period - 1;
        if (m->gemma) {
            /* the converter stores Gemma's (1 + w) norm weights already summed */
            if ((st = load_vector(g, NAME("attn_q_norm.weight"), I->head_dim, 0, &L->q_norm, msg, msg_size))) return st;
            if ((st = load_vector(g, NAME("attn_k_norm.weight"), I->head_dim, 0, &L->k_norm, msg, msg_size))) return st;
            if ((st = load_vector(g, NAME("post_attention_norm.weight"), I->n_embd, 0, &L->post_attn_norm, msg,
                                  msg_size)))
                return st;
            if ((st = load_vector(g, NAME("post_ffw_norm.weight"), I->n_embd, 0, &L->post_ffn_norm, msg, msg_size)))
                return st;
        }
#undef NAME
    }
    return KVQ_OK;
}

/* Gemma 3's extras, with llama.cpp's defaults where the file is silent: every sixth layer
 * global, the others sliding-window with RoPE base 10000; queries scaled by
 * 1/sqrt(head_dim) (1/sqrt(n_embd / n_heads) for the 62-layer 27B, as Gemma's reference
 * code has query_pre_attn_scalar). */
static kvq_status load_gemma_hparams(kvq_model *m, char *msg, size_t msg_size) {
    const kvqi_gguf *g = m->gguf;
    kvq_model_info *I = &m->info;
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window", I->arch);
    m->n_swa = 0;
    kvqi_gguf_get_u32(g, key, &m->n_swa);
    m->rope_base_swa = 10000.0f;
    snprintf(key, sizeof key, "%s.rope.freq_base_swa", I->arch);
    kvqi_gguf_get_f32(g, key, &m->rope_base_swa);
    m->logit_softcap = 0.0f;
    snprintf(key, sizeof key, "%s.final_logit_softcapping", I->arch);
    kvqi_gguf_get_f32(g, key, &m->logit_softcap);
    if (I->n_layers == 62) m->attn_scale = 1.0f / sqrtf((float)(I->n_embd / I->n_heads));
    if (!(m->rope_base_swa > 0) || !isfinite(m->rope_base_swa) || !(m->logit_softcap >= 0) ||
        !isfinite(m->logit_softcap)) {
        kvqi_set_msg(msg, msg_size, "model: gemma3 rope.freq_base_swa or final_logit_softcapping out of range");
        return KVQ_ERR_FORMAT;
    }
    /* which layers slide: an array of bools per layer, or a period (the last layer of each
     * period is global), 6 when absent */
    uint32_t period = 6;
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", I->arch);
    const kvqi_gguf_kv *kv = kvqi_gguf_find(g, key);
    if (kv && kv->type == KVQI_GGUF_ARRAY) {
        if ((kv->arr_type != KVQI_GGUF_BOOL && kv->arr_type != KVQI_GGUF_U8 && kv->arr_type != KVQI_GGUF_I8) ||
            kv->arr_n != I->n_layers) {
            kvqi_set_msg(msg, msg_size, "model: %s is not %u booleans", key, I->n_layers);
            return KVQ_ERR_FORMAT;
        }
    } else if (kv && kvqi_gguf_get_u32(g, key, &period) != KVQ_OK) {
        kvqi_set_msg(msg, msg_size, "model: %s is neither a count nor an array", key);
        return KVQ_ERR_FORMAT;
    }
    m->swa_flags = kv && kv->type == KVQI_GGUF_ARRAY ? kv->arr : NULL;
    m->swa_period = period;
    return KVQ_OK;
}

static kvq_status load_hparams(kvq_model *m, char *msg, size_t msg_size) {
    const kvqi_gguf *g = m->gguf;
    kvq_model_info *I = &m->info;
    kvq_status st;
    if (kvqi_gguf_get_str(g, "general.architecture", I->arch, sizeof I->arch) != KVQ_OK) {
        kvqi_set_msg(msg, msg_size, "model: general.architecture missing");
        return KVQ_ERR_FORMAT;
    }
    kvqi_gguf_get_str(g, "general.name", I->name, sizeof I->name);
    kvqi_gguf_get_str(g, "tokenizer.ggml.model", I->tokenizer, sizeof I->tokenizer);
    kvqi_gguf_get_str(g, "tokenizer.ggml.pre", I->pre_tokenizer, sizeof I->pre_tokenizer);
    const char *a = I->arch;
    if (strcmp(a, "llama") && strcmp(a, "qwen2") && strcmp(a, "mistral") && strcmp(a, "gemma3")) {
        kvqi_set_msg(msg, msg_size, "model: architecture '%s' not supported (llama, qwen2, mistral, gemma3 are)", a);
        return KVQ_ERR_UNSUPPORTED;
    }
    m->gemma = !strcmp(a, "gemma3");
    I->rope_neox = !strcmp(a, "qwen2") || m->gemma;
    if ((st = get_arch_u32(g, a, "block_count", &I->n_layers, 1, msg, msg_size))) return st;
    if ((st = get_arch_u32(g, a, "embedding_length", &I->n_embd, 1, msg, msg_size))) return st;
    if ((st = get_arch_u32(g, a, "feed_forward_length", &I->n_ff, 1, msg, msg_size))) return st;
    if ((st = get_arch_u32(g, a, "attention.head_count", &I->n_heads, 1, msg, msg_size))) return st;
    I->n_kv_heads = I->n_heads;
    get_arch_u32(g, a, "attention.head_count_kv", &I->n_kv_heads, 0, msg, msg_size);
    I->ctx_len = 2048;
    get_arch_u32(g, a, "context_length", &I->ctx_len, 0, msg, msg_size);
    if (I->n_layers == 0 || I->n_layers > 1024 || I->n_embd == 0 || I->n_embd > 65536 || I->n_ff == 0 ||
        I->n_ff > 1u << 20 || I->n_heads == 0 || I->n_heads > 1024 || I->n_kv_heads == 0 ||
        I->n_heads % I->n_kv_heads || I->ctx_len == 0) {
        kvqi_set_msg(msg, msg_size, "model: inconsistent shape (layers %u, embd %u, ff %u, heads %u/%u)",
                     I->n_layers, I->n_embd, I->n_ff, I->n_heads, I->n_kv_heads);
        return KVQ_ERR_FORMAT;
    }
    /* heads are n_embd / n_heads wide unless the file says otherwise (gemma3: 256) */
    uint32_t key_len = I->n_embd / I->n_heads, value_len;
    get_arch_u32(g, a, "attention.key_length", &key_len, 0, msg, msg_size);
    value_len = key_len;
    get_arch_u32(g, a, "attention.value_length", &value_len, 0, msg, msg_size);
    if (key_len == 0 || key_len > 1024 || value_len != key_len ||
        (key_len * I->n_heads != I->n_embd && !m->gemma)) {
        kvqi_set_msg(msg, msg_size, "model: attention key/value lengths %u/%u unsupported for embd %u, %u heads",
                     key_len, value_len, I->n_embd, I->n_heads);
        return KVQ_ERR_UNSUPPORTED;
    }
    I->head_dim = key_len;
    m->n_rot = I->head_dim;
    get_arch_u32(g, a, "rope.dimension_count", &m->n_rot, 0, msg, msg_size);
    if (m->n_rot == 0 || m->n_rot > I->head_dim || m->n_rot % 2) {
        kvqi_set_msg(msg, msg_size, "model: rope.dimension_count %u invalid for head_dim %u", m->n_rot, I->head_dim);
        return KVQ_ERR_FORMAT;
    }
    char key[128];
    I->rope_base = 10000.0f;
    snprintf(key, sizeof key, "%s.rope.freq_base", a);
    kvqi_gguf_get_f32(g, key, &I->rope_base);
    I->rope_scale = 1.0f;
    char scaling[32] = "";
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    kvqi_gguf_get_str(g, key, scaling, sizeof scaling);
    if (scaling[0] && strcmp(scaling, "none") && strcmp(scaling, "linear")) {
        kvqi_set_msg(msg, msg_size, "model: rope scaling '%s' not supported (linear is)", scaling);
        return KVQ_ERR_UNSUPPORTED;
    }
    if (!strcmp(scaling, "linear")) {
        float f = 1.0f;
        snprintf(key, sizeof key, "%s.rope.scaling.factor", a);
        if (kvqi_gguf_get_f32(g, key, &f) == KVQ_OK && f > 0) I->rope_scale = f;
    }
    I->norm_eps = 1e-5f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
    kvqi_gguf_get_f32(g, key, &I->norm_eps);
    if (!(I->rope_base > 0) || !(I->norm_eps >= 0) || !isfinite(I->rope_base)) {
        kvqi_set_msg(msg, msg_size, "model: rope base or norm epsilon out of range");
        return KVQ_ERR_FORMAT;
    }
    m->attn_scale = 1.0f / sqrtf((float)I->head_dim);
    if (m->gemma) return load_gemma_hparams(m, msg, msg_size);
    return KVQ_OK;
}

KVQ_API kvq_status kvq_model_load(const char *path, kvq_model **out, char *msg, size_t msg_size) {
    if (!path || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    kvqi_gguf *g;
    kvq_status st = kvqi_gguf_open(path, &g, msg, msg_size);
    if (st) return st;
    return kvqi_model_from_gguf(g, out, msg, msg_size);
}

kvq_status kvqi_model_from_gguf(kvqi_gguf *g, kvq_model **out, char *msg, size_t msg_size) {
    *out = NULL;
    kvq_model *m = calloc(1, sizeof *m);
    if (!m) {
        kvqi_gguf_close(g);
        return KVQ_ERR_NOMEM;
    }
    m->gguf = g;
    kvq_status st;
    kvq_model_info *I = &m->info;
    I->gguf_version = m->gguf->version;
    I->n_tensors = m->gguf->n_tensors;
    I->n_metadata = m->gguf->n_kv;
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const kvqi_gguf_tensor *t = &m->gguf->tensors[i];
        if (t->type < KVQ_MODEL_TYPE_SLOTS) I->type_count[t->type]++;
        I->n_params += t->n_elems;
        I->weight_bytes += t->nbytes;
    }
    if ((st = load_hparams(m, msg, msg_size))) goto fail;
    if ((st = kvqi_tokenizer_load(m->gguf, &m->tok, msg, msg_size))) goto fail;
    I->n_vocab = kvqi_tokenizer_vocab(m->tok);
    uint32_t nv;
    char key[96];
    snprintf(key, sizeof key, "%s.vocab_size", I->arch);
    if (kvqi_gguf_get_u32(m->gguf, key, &nv) == KVQ_OK && nv != I->n_vocab) {
        kvqi_set_msg(msg, msg_size, "model: %s = %u but the tokenizer has %u tokens", key, nv, I->n_vocab);
        st = KVQ_ERR_FORMAT;
        goto fail;
    }
    I->bos_token = kvqi_tokenizer_bos(m->tok);
    I->eos_token = kvqi_tokenizer_eos(m->tok);
    I->add_bos = kvqi_tokenizer_add_bos(m->tok);
    if ((st = load_weights(m, msg, msg_size))) goto fail;
    *out = m;
    return KVQ_OK;
fail:
    kvq_model_free(m);
    return st;
}

const kvqi_gguf *kvqi_model_gguf(const kvq_model *m) { return m->gguf; }
const kvqi_tokenizer *kvqi_model_tokenizer(const kvq_model *m) { return m->tok; }

KVQ_API kvq_status kvq_model_get_info(const kvq_model *model, kvq_model_info *info) {
    if (!model || !info) return KVQ_ERR_INVALID_ARG;
    *info = model->info;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_model_metadata(const kvq_model *model, uint64_t i, char *key, size_t key_size,
                                      char *value, size_t value_size) {
    if (!model || !key || !value || !key_size || !value_size) return KVQ_ERR_INVALID_ARG;
    if (i >= model->gguf->n_kv) return KVQ_ERR_INVALID_ARG;
    const kvqi_gguf_kv *kv = &model->gguf->kv[i];
    snprintf(key, key_size, "%s", kv->key);
    kvqi_gguf_format_value(kv, value, value_size);
    return KVQ_OK;
}

KVQ_API kvq_status kvq_model_tensor(const kvq_model *model, uint64_t i, char *name, size_t name_size,
                                    uint32_t *type, uint64_t dims[4], uint32_t *n_dims) {
    if (!model || i >= model->gguf->n_tensors) return KVQ_ERR_INVALID_ARG;
    const kvqi_gguf_tensor *t = &model->gguf->tensors[i];
    if (name && name_size) snprintf(name, name_size, "%s", t->name);
    if (type) *type = t->type;
    if (dims)
        for (int d = 0; d < 4; d++) dims[d] = t->ne[d];
    if (n_dims) *n_dims = t->n_dims;
    return KVQ_OK;
}

/* ------------------------------------------------------------ tokenizer */

KVQ_API kvq_status kvq_tokenize(const kvq_model *model, const char *text, int add_bos, int32_t *tokens,
                                size_t cap, size_t *n_tokens) {
    if (!model) return KVQ_ERR_INVALID_ARG;
    return kvqi_tokenize(model->tok, text, add_bos, tokens, cap, n_tokens);
}

KVQ_API kvq_status kvq_token_to_piece(const kvq_model *model, int32_t token, char *buf, size_t size,
                                      size_t *len) {
    if (!model) return KVQ_ERR_INVALID_ARG;
    return kvqi_token_piece(model->tok, token, buf, size, len);
}

KVQ_API kvq_status kvq_detokenize(const kvq_model *model, const int32_t *tokens, size_t n, char *buf,
                                  size_t size, size_t *len) {
    if (!model || !len || (!tokens && n) || (!buf && size)) return KVQ_ERR_INVALID_ARG;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        kvq_status st = kvqi_token_piece(model->tok, tokens[i], total < size ? buf + total : NULL,
                                         total < size ? size - total : 0, &l);
        if (st && st != KVQ_ERR_CAPACITY) return st;
        total += l;
    }
    *len = total;
    if (total < size) buf[total] = 0;
    return total < size ? KVQ_OK : KVQ_ERR_CAPACITY;
}

/* ------------------------------------------------------------ context */

#define MATMUL_ROWS 16
/* below this many tokens the fused row kernels beat dequantize-once-then-dot */
#define MATMUL_DEQUANT_MIN_TOKENS 4
/* products smaller than this many multiply-adds run on the calling thread */
#define MATMUL_SERIAL_MACS ((size_t)1 << 20)

typedef struct thread_scratch {
    float *row;    /* four dequantized weight rows of up to max(n_embd, n_ff, q_dim) */
    float *scores; /* attention scores: n_ctx */
    /* four weight rows unpacked for the int8 tile product: numbers, lane scales, offsets */
    int8_t *wq;
    float *wl, *wo;
} thread_scratch;

struct kvq_context {
    const kvq_model *model;
    kvq_context_params params;
    kvqi_engine_kernels kern;
    kvq_threadpool *pool;
    int own_pool;               /* 0: borrowed through kvq_context_params.pool */
    unsigned n_slots;           /* threads that may run a task: pool workers + caller */
    thread_scratch *scratch;
    size_t n_past;
    uint64_t rng;
    /* activations, [n_batch][...] */
    float *x, *xn, *q, *k, *v, *att, *gate, *up;
    float *rope_freq;           /* [n_rot / 2] */
    float *rope_freq_swa;       /* [n_rot / 2]: sliding-window layers' (gemma3) */
    /* cos and sin of each batch position's angles, computed once per eval for all layers
     * and heads: [n_batch][n_rot / 2], and the sliding-window layers' */
    float *rope_cos, *rope_sin, *rope_cos_swa, *rope_sin_swa;
    /* exact float KV: [layer][n_ctx][kv_dim] */
    float *k_cache, *v_cache;
    /* layer l's rows start at slot_off[l] * kv_dim and hold kv_slots[l] positions: n_ctx, or
     * for a sliding-window layer a ring of n_swa + n_batch - 1 (position p in slot
     * p % kv_slots: the window of a batch's first query and the batch itself) */
    size_t *slot_off, *kv_slots;
    kvq_cache **caches;         /* one per layer, NULL entries when exact */
    /* int8 activations of up to n_batch tokens: [t][row_max] */
    int8_t *qx;
    float *qx_d, *qx_s;
    /* sampler scratch */
    struct prob_idx *probs;
    /* 1 (a batch's rows): float products run token by token as one token alone would,
     * so a row's results never depend on the rows beside it */
    int rowwise;
};

typedef struct prob_idx {
    float p;
    int32_t id;
} prob_idx;

KVQ_API kvq_status kvq_context_params_init(kvq_context_params *p) {
    if (!p) return KVQ_ERR_INVALID_ARG;
    memset(p, 0, sizeof *p);
    p->n_batch = 512;
    return KVQ_OK;
}

KVQ_API void kvq_context_free(kvq_context *c) {
    if (!c) return;
    if (c->scratch)
        for (unsigned i = 0; i < c->n_slots; i++) {
            kvqi_free(c->scratch[i].row);
            kvqi_free(c->scratch[i].scores);
            kvqi_free(c->scratch[i].wq);
            kvqi_free(c->scratch[i].wl);
            kvqi_free(c->scratch[i].wo);
        }
    free(c->scratch);
    if (c->caches)
        for (uint32_t l = c->model->info.n_layers; l-- > 0;) /* layer 0 last: the others borrow its rotations */
            kvq_cache_free(c->caches[l]);
    free(c->caches);
    if (c->own_pool) kvq_threadpool_free(c->pool);
    float *bufs[] = {c->x, c->xn, c->q, c->k, c->v, c->att, c->gate, c->up,
                     c->rope_freq, c->rope_freq_swa, c->k_cache, c->v_cache,
                     c->rope_cos, c->rope_sin, c->rope_cos_swa, c->rope_sin_swa};
    free(c->slot_off);
    free(c->kv_slots);
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) kvqi_free(bufs[i]);
    kvqi_free(c->probs);
    kvqi_free(c->qx);
    kvqi_free(c->qx_d);
    kvqi_free(c->qx_s);
    free(c);
}

static float *alloc2(size_t a, size_t b, kvq_status *st) {
    size_t n;
    if (*st) return NULL;
    if (kvqi_mul_size(a, b, &n)) {
        *st = KVQ_ERR_OVERFLOW;
        return NULL;
    }
    float *p = kvqi_alloc_array(n, sizeof(float));
    if (!p) *st = KVQ_ERR_NOMEM;
    return p;
}

/* rows_only: a batch's rows (activations and product scratch, no KV store of its own:
 * the rows attend in their contexts' caches) */
static kvq_status context_create(const kvq_model *model, const kvq_context_params *params, int rows_only,
                                 kvq_context **out) {
    if (!model || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    kvq_context_params p;
    if (params) p = *params;
    else kvq_context_params_init(&p);
    const kvq_model_info *I = &model->info;
    if (p.n_ctx == 0) p.n_ctx = I->ctx_len < 4096 ? I->ctx_len : 4096;
    if (p.n_batch == 0) p.n_batch = 512;
    if (p.n_batch > p.n_ctx) p.n_batch = p.n_ctx;
    if (p.n_ctx > (1u << 24)) return KVQ_ERR_INVALID_ARG;
    if (p.cache && p.n_cache_configs != 1 && p.n_cache_configs != I->n_layers) return KVQ_ERR_INVALID_ARG;
    kvq_context *c = calloc(1, sizeof *c);
    if (!c) return KVQ_ERR_NOMEM;
    c->model = model;
    c->params = p;
    c->params.cache = NULL; /* the caller's array need not outlive the call */
    c->rng = p.seed;
    kvq_status st = kvqi_engine_kernels_init(KVQ_ISA_AUTO, &c->kern);
    if (st) goto fail;
    {
        unsigned nt = p.n_threads;
        if (nt == 0) {
            long n = sysconf(_SC_NPROCESSORS_ONLN);
            nt = n > 0 ? (unsigned)n : 1;
        }
        /* the pool counts the calling thread; one thread gets a pool too (it runs every
         * task inline) so that the layers' caches share its attend scratch instead of
         * each keeping its own (tens of KB a layer) */
        if (p.pool) {
            c->pool = p.pool;
        } else {
            if ((st = kvq_threadpool_create(nt, &c->pool))) goto fail;
            c->own_pool = 1;
        }
        c->n_slots = c->pool ? kvq_threadpool_size(c->pool) : 1;
    }
    size_t B = p.n_batch;
    size_t q_dim = (size_t)I->n_heads * I->head_dim, kv_dim = (size_t)I->n_kv_heads * I->head_dim;
    size_t row_max = KVQI_MAX(KVQI_MAX((size_t)I->n_embd, (size_t)I->n_ff), q_dim);
    c->x = alloc2(B, I->n_embd, &st);
    c->xn = alloc2(B, I->n_embd, &st);
    c->q = alloc2(B, q_dim, &st);
    c->k = alloc2(B, kv_dim, &st);
    c->v = alloc2(B, kv_dim, &st);
    c->att = alloc2(B, q_dim, &st);
    c->gate = alloc2(B, I->n_ff, &st);
    c->up = alloc2(B, I->n_ff, &st);
    c->rope_freq = alloc2(1, model->n_rot / 2, &st);
    c->rope_freq_swa = alloc2(1, model->n_rot / 2, &st);
    c->rope_cos = alloc2(B, model->n_rot / 2 + 1, &st);
    c->rope_sin = alloc2(B, model->n_rot / 2 + 1, &st);
    c->rope_cos_swa = alloc2(B, model->n_rot / 2 + 1, &st);
    c->rope_sin_swa = alloc2(B, model->n_rot / 2 + 1, &st);
    if (!p.cache && !rows_only) {
        size_t total = 0;
        c->slot_off = calloc(I->n_layers, sizeof *c->slot_off);
        c->kv_slots = calloc(I->n_layers, sizeof *c->kv_slots);
        if (!c->slot_off || !c->kv_slots) st = KVQ_ERR_NOMEM;
        for (uint32_t l = 0; !st && l < I->n_layers; l++) {
            size_t n = p.n_ctx;
            if (model->layers[l].swa && (size_t)model->n_swa + p.n_batch - 1 < n) n = (size_t)model->n_swa + p.n_batch - 1;
            c->slot_off[l] = total;
            c->kv_slots[l] = n;
            total += n;
        }
        c->k_cache = alloc2(total, kv_dim, &st);
        c->v_cache = alloc2(total, kv_dim, &st);
    }
    c->qx_d = alloc2(B, row_max / 32 + 1, &st);
    c->qx_s = alloc2(B, row_max / 32 + 1, &st);
    if (!st) {
        c->qx = kvqi_alloc_array(B, row_max);
        c->probs = kvqi_alloc_array(I->n_vocab, sizeof *c->probs);
        if (!c->qx) st = KVQ_ERR_NOMEM;
        c->scratch = calloc(c->n_slots, sizeof *c->scratch);
        if (!c->probs || !c->scratch) st = KVQ_ERR_NOMEM;
    }
    for (unsigned i = 0; !st && i < c->n_slots; i++) {
        c->scratch[i].row = alloc2(4, row_max, &st);
        c->scratch[i].scores = alloc2(1, p.n_ctx, &st);
        c->scratch[i].wl = alloc2(1, row_max, &st); /* 4 rows x row_max / 4 */
        c->scratch[i].wo = alloc2(4, row_max / 32 + 1, &st);
        if (!st && !(c->scratch[i].wq = kvqi_alloc_array(4, row_max))) st = KVQ_ERR_NOMEM;
        if (!st) { /* rows past a short tile's last are read, never stored: keep them defined */
            memset(c->scratch[i].wq, 0, 4 * row_max);
            memset(c->scratch[i].wl, 0, row_max * sizeof(float));
            memset(c->scratch[i].wo, 0, 4 * (row_max / 32 + 1) * sizeof(float));
        }
    }
    if (st) goto fail;
    for (uint32_t i = 0; i < model->n_rot / 2; i++) {
        double f = pow((double)I->rope_base, -2.0 * i / (double)model->n_rot) / I->rope_scale;
        if (model->rope_freq_factors) f /= model->rope_freq_factors[i];
        c->rope_freq[i] = (float)f;
        c->rope_freq_swa[i] = (float)pow((double)model->rope_base_swa, -2.0 * i / (double)model->n_rot);
    }
    if (params && params->cache && !rows_only) {
        c->caches = calloc(I->n_layers, sizeof *c->caches);
        if (!c->caches) {
            st = KVQ_ERR_NOMEM;
            goto fail;
        }
        for (uint32_t l = 0; l < I->n_layers; l++) {
            kvq_cache_config cc = params->cache[params->n_cache_configs == 1 ? 0 : l];
            if (cc.n_kv_heads != I->n_kv_heads || cc.head_dim != I->head_dim) {
                st = KVQ_ERR_MISMATCH;
                goto fail;
            }
            if (cc.key.method == KVQ_METHOD_COMM_VQ || (cc.key.method == KVQ_METHOD_CHANNEL && cc.key.rope_base > 0.0f)) {
                /* codes live before RoPE (comm_vq; channel keys given a rope_base): the
                 * cache undoes the model's own RoPE, which it can only do for plain RoPE
                 * over the whole head; the model's base and pairing replace the spec's */
                if (I->rope_scale != 1.0f || model->rope_freq_factors || model->n_rot != I->head_dim) {
                    kvqi_set_msg(NULL, 0, "cache: keys before RoPE need plain RoPE over the whole head (layer %u)", l);
                    st = KVQ_ERR_UNSUPPORTED;
                    goto fail;
                }
                cc.key.rope_base = model->layers[l].swa ? model->rope_base_swa : I->rope_base;
                cc.key.rope_pairing = I->rope_neox ? KVQ_ROPE_NEOX : KVQ_ROPE_INTERLEAVED;
            }
            /* sliding-window layers: the cache masks and frees past the window */
            if (model->layers[l].swa) cc.sliding_window = model->n_swa;
            if (cc.n_outliers >= cc.head_dim) {
                kvqi_set_msg(NULL, 0, "cache: outliers %u must be below head_dim %u (layer %u)", cc.n_outliers,
                             cc.head_dim, l);
                st = KVQ_ERR_INVALID_ARG;
                goto fail;
            }
            if ((st = kvqi_cache_create_shared(&cc, l ? c->caches[0] : NULL, &c->caches[l]))) goto fail;
            /* keys before RoPE: the angle tables of any earlier layer with the same RoPE
             * (Gemma's global layers share theirs, its sliding ones layer 0's) */
            for (uint32_t j = 1; j < l && c->caches[l]->pre_freq && !c->caches[l]->pre_borrowed; j++)
                kvqi_pre_share(c->caches[l], c->caches[j]);
        }
    }
    *out = c;
    return KVQ_OK;
fail:
    kvq_context_free(c);
    return st;
}

KVQ_API kvq_status kvq_context_create(const kvq_model *model, const kvq_context_params *params,
                                      kvq_context **out) {
    return context_create(model, params, 0, out);
}

KVQ_API kvq_status kvq_context_reset(kvq_context *c) {
    if (!c) return KVQ_ERR_INVALID_ARG;
    c->n_past = 0;
    if (c->caches)
        for (uint32_t l = 0; l < c->model->info.n_layers; l++) {
            kvq_status st = kvq_cache_reset(c->caches[l]);
            if (st) return st;
        }
    return KVQ_OK;
}

KVQ_API kvq_status kvq_context_length(const kvq_context *c, size_t *n) {
    if (!c || !n) return KVQ_ERR_INVALID_ARG;
    *n = c->n_past;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_context_kv_memory(const kvq_context *c, kvq_cache_memory_info *info,
                                         uint64_t *fp16_bytes) {
    if (!c) return KVQ_ERR_INVALID_ARG;
    const kvq_model_info *I = &c->model->info;
    uint64_t per_side = (uint64_t)I->n_layers * I->n_kv_heads * I->head_dim; /* numbers per token */
    kvq_cache_memory_info sum;
    memset(&sum, 0, sizeof sum);
    sum.n_tokens = c->n_past;
    if (c->caches) {
        for (uint32_t l = 0; l < I->n_layers; l++) {
            kvq_cache_memory_info mi;
            kvq_status st = kvq_cache_memory(c->caches[l], &mi);
            if (st) return st;
            sum.key_codes += mi.key_codes;
            sum.value_codes += mi.value_codes;
            sum.window += mi.window;
            sum.outliers += mi.outliers;
            sum.shared += mi.shared;
            sum.overhead += mi.overhead;
            sum.total += mi.total;
        }
    } else {
        /* positions held: sliding-window rings hold at most their slots */
        uint64_t held = 0;
        for (uint32_t l = 0; l < I->n_layers; l++) held += KVQI_MIN(c->n_past, c->kv_slots[l]);
        sum.key_codes = sum.value_codes = held * I->n_kv_heads * I->head_dim * 4;
        sum.total = sum.key_codes + sum.value_codes;
    }
    if (info) *info = sum;
    if (fp16_bytes) *fp16_bytes = c->n_past * per_side * 2 * 2;
    return KVQ_OK;
}

/* ------------------------------------------------------------ kernels */

static void run_tasks(kvq_context *c, size_t n_tasks, kvqi_task_fn fn, void *arg) {
    kvqi_parallel_for(c->pool, n_tasks, fn, arg);
}

/* Up to three products sharing one input (q, k, v; gate, up) run as one parallel
 * loop: one pool barrier instead of three, one quantization of the activations. */
#define MATMUL_MAX_PARTS 3

typedef struct matmul_part {
    const kvqi_gguf_tensor *w;
    float *y;           /* [n_tok][y_stride], columns 0..n_rows-1 */
    size_t y_stride;
    size_t first_task;  /* tasks before this part's */
    int int8;           /* rows meet c->qx in integer dot products */
} matmul_part;

typedef struct matmul_job {
    kvq_context *c;
    const float *x;     /* [n_tok][n_in] */
    size_t n_tok;
    size_t n_parts;
    matmul_part part[MATMUL_MAX_PARTS];
} matmul_job;

static size_t act_stride(const kvq_model_info *I) {
    return KVQI_MAX(KVQI_MAX((size_t)I->n_embd, (size_t)I->n_ff), (size_t)I->n_heads * I->head_dim);
}

/* rows r0..r1 of a float product: y[t * y_stride + r] = W[r] . x[t] */
static void matmul_float_rows(kvq_context *c, const kvqi_gguf_tensor *w, const float *x, size_t n_tok, float *y,
                              size_t y_stride, size_t r0, size_t r1, unsigned thread) {
    size_t n_in = (size_t)w->ne[0];
    kvqi_row_dot_fn row_dot = c->kern.row_dot[w->type];
    if (n_tok < MATMUL_DEQUANT_MIN_TOKENS && row_dot) {
        for (size_t t = 0; t < n_tok; t++)
            for (size_t r = r0; r < r1; r++) y[t * y_stride + r] = row_dot(w->data + r * w->row_bytes, x + t * n_in, n_in);
        return;
    }
    /* many tokens: dequantize rows once (four at a time) and reuse them for all tokens */
    float *rows = c->scratch[thread].row;
    void (*to_float)(const void *, float *, size_t) = c->kern.to_float[w->type];
    size_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        for (size_t k = 0; k < 4; k++) to_float(w->data + (r + k) * w->row_bytes, rows + k * n_in, n_in);
        c->kern.gemm4_f32(rows, n_in, x, n_tok, y + r, y_stride);
    }
    for (; r < r1; r++) {
        to_float(w->data + r * w->row_bytes, rows, n_in);
        for (size_t t = 0; t < n_tok; t++) y[t * y_stride + r] = c->kern.dot_f32(rows, x + t * n_in, n_in);
    }
}

static void matmul_task(void *arg, size_t task, unsigned thread) {
    matmul_job *j = arg;
    kvq_context *c = j->c;
    size_t pi = j->n_parts - 1;
    while (pi > 0 && task < j->part[pi].first_task) pi--;
    const matmul_part *P = &j->part[pi];
    const kvqi_gguf_tensor *w = P->w;
    size_t n_in = (size_t)w->ne[0];
    size_t r0 = (task - P->first_task) * MATMUL_ROWS, r1 = KVQI_MIN(r0 + MATMUL_ROWS, (size_t)w->n_rows);
    if (P->int8) {
        /* unpack four rows once, then take them through every token */
        size_t stride = act_stride(&c->model->info), nb = stride / 32 + 1;
        thread_scratch *ts = &c->scratch[thread];
        kvqi_q8_acts a = {c->qx, c->qx_d, c->qx_s, stride, nb};
        if (j->n_tok == 1 && c->kern.gemv_q8[w->type]) { /* generation: straight from the blocks */
            for (size_t r = r0; r < r1; r += 4)
                c->kern.gemv_q8[w->type](w->data + r * w->row_bytes, w->row_bytes, KVQI_MIN((size_t)4, r1 - r), n_in,
                                         &a, P->y + r);
            return;
        }
        for (size_t r = r0; r < r1; r += 4) {
            kvqi_q8_tile tl = {ts->wq, ts->wl, NULL, n_in, KVQI_MIN((size_t)4, r1 - r)};
            int has_off = 0;
            /* the next four rows travel from memory while these meet the tokens */
            if (r + 4 < r1) {
                const uint8_t *nx = w->data + (r + 4) * w->row_bytes;
                size_t bytes = KVQI_MIN((size_t)4, r1 - r - 4) * w->row_bytes;
                for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(nx + o, 0, 0);
            }
            for (size_t k = 0; k < tl.n_rows; k++)
                has_off = c->kern.unpack_q8[w->type](w->data + (r + k) * w->row_bytes, n_in, ts->wq + k * n_in,
                                                     ts->wl + k * (n_in / 4), ts->wo + k);
            if (has_off) tl.wo = ts->wo;
            c->kern.gemm_q8(&tl, &a, j->n_tok, P->y + r, P->y_stride);
        }
        return;
    }
    if (c->rowwise) { /* each token as if alone: the kernels below group tokens */
        for (size_t t = 0; t < j->n_tok; t++)
            matmul_float_rows(c, w, j->x + t * n_in, 1, P->y + t * P->y_stride, P->y_stride, r0, r1, thread);
        return;
    }
    matmul_float_rows(c, w, j->x, j->n_tok, P->y, P->y_stride, r0, r1, thread);
}

/* y_i[t][r] = W_i[r] . x[t] for n_parts weights of the same row length */
static void matmul_multi(kvq_context *c, const float *x, size_t n_tok, size_t n_parts,
                         const kvqi_gguf_tensor *const *w, float *const *y, const size_t *y_stride) {
    matmul_job j;
    j.c = c;
    j.x = x;
    j.n_tok = n_tok;
    j.n_parts = n_parts;
    size_t n_tasks = 0;
    int any_int8 = 0;
    for (size_t i = 0; i < n_parts; i++) {
        matmul_part *P = &j.part[i];
        P->w = w[i];
        P->y = y[i];
        P->y_stride = y_stride[i];
        P->first_task = n_tasks;
        P->int8 = !c->params.float_activations && c->kern.unpack_q8[w[i]->type] && w[i]->ne[0] % 32 == 0;
        any_int8 |= P->int8;
        n_tasks += ((size_t)w[i]->n_rows + MATMUL_ROWS - 1) / MATMUL_ROWS;
    }
    if (any_int8) {
        /* quantize each token's activations once, here, for every row task to share */
        size_t stride = act_stride(&c->model->info), nb = stride / 32 + 1, n_in = (size_t)w[0]->ne[0];
        for (size_t t = 0; t < n_tok; t++)
            c->kern.quantize_q8(x + t * n_in, n_in, c->qx + t * stride, c->qx_d + t * nb, c->qx_s + t * nb);
    }
    /* a small product (one token through a layer of a small model) finishes sooner on
     * the calling thread than the pool's wake-up and barrier take, and far sooner when
     * the cores are oversubscribed */
    size_t macs = 0;
    for (size_t i = 0; i < n_parts; i++) macs += (size_t)w[i]->n_rows * (size_t)w[i]->ne[0] * n_tok;
    if (macs < MATMUL_SERIAL_MACS) {
        for (size_t t = 0; t < n_tasks; t++) matmul_task(&j, t, 0);
        return;
    }
    run_tasks(c, n_tasks, matmul_task, &j);
}

static void matmul(kvq_context *c, const kvqi_gguf_tensor *w, const float *x, size_t n_tok, float *y,
                   size_t y_stride) {
    matmul_multi(c, x, n_tok, 1, &w, &y, &y_stride);
}

static void rmsnorm(float *out, const float *x, const float *w, size_t n, float eps) {
    /* four running sums (element i in sum i % 4), joined as (0 + 1) + (2 + 3): one chain
     * of dependent double additions was 3-4 % of a Gemma prompt's time */
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++) s0 += (double)x[i] * x[i];
    double ss = (s0 + s1) + (s2 + s3);
    float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* the angles of n_tok positions from pos0 on */
static void rope_table(const kvq_context *c, const float *freq, size_t pos0, size_t n_tok, float *cs, float *sn) {
    uint32_t half = c->model->n_rot / 2;
    for (size_t t = 0; t < n_tok; t++)
        for (uint32_t i = 0; i < half; i++) {
            double theta = (double)(pos0 + t) * freq[i];
            cs[t * half + i] = (float)cos(theta);
            sn[t * half + i] = (float)sin(theta);
        }
}

static void rope(const kvq_context *c, const float *cos_t, const float *sin_t, float *vec, uint32_t n_heads) {
    const kvq_model *m = c->model;
    uint32_t hd = m->info.head_dim, half = m->n_rot / 2;
    for (uint32_t h = 0; h < n_heads; h++) {
        float *v = vec + (size_t)h * hd;
        for (uint32_t i = 0; i < half; i++) {
            float cs = cos_t[i], sn = sin_t[i];
            uint32_t a = m->info.rope_neox ? i : 2 * i, b = m->info.rope_neox ? i + half : 2 * i + 1;
            float x0 = v[a], x1 = v[b];
            v[a] = x0 * cs - x1 * sn;
            v[b] = x0 * sn + x1 * cs;
        }
    }
}

typedef struct attend_job {
    kvq_context *c;
    uint32_t layer;
    size_t n_tok;
    size_t window; /* a query sees only the last `window` positions (0: all) */
} attend_job;

/* Exact attention of one (token, head) against the float cache. */
static void attend_task(void *arg, size_t task, unsigned thread) {
    attend_job *j = arg;
    kvq_context *c = j->c;
    const kvq_model_info *I = &c->model->info;
    size_t t = task / I->n_heads, h = task % I->n_heads;
    size_t hd = I->head_dim, kv_dim = (size_t)I->n_kv_heads * hd;
    size_t kvh = h / (I->n_heads / I->n_kv_heads);
    size_t pos = c->n_past + t; /* sees positions first..pos */
    size_t first = j->window && pos >= j->window ? pos - j->window + 1 : 0;
    const float *q = c->q + t * (size_t)I->n_heads * hd + h * hd;
    const float *kc = c->k_cache + c->slot_off[j->layer] * kv_dim + kvh * hd;
    const float *vc = c->v_cache + c->slot_off[j->layer] * kv_dim + kvh * hd;
    size_t R = c->kv_slots[j->layer];
    float *s = c->scratch[thread].scores;
    float scale = c->model->attn_scale, mx = -INFINITY;
    for (size_t p = first; p <= pos; p++) {
        s[p] = c->kern.dot_f32(q, kc + (p % R) * kv_dim, hd) * scale;
        if (s[p] > mx) mx = s[p];
    }
    double sum = 0;
    for (size_t p = first; p <= pos; p++) {
        s[p] = expf(s[p] - mx);
        sum += s[p];
    }
    float inv = (float)(1.0 / sum);
    float *o = c->att + t * (size_t)I->n_heads * hd + h * hd;
    for (size_t d = 0; d < hd; d++) o[d] = 0;
    for (size_t p = first; p <= pos; p++) c->kern.axpy_f32(o, vc + (p % R) * kv_dim, s[p] * inv, hd);
}

static kvq_status attention(kvq_context *c, uint32_t layer, size_t n_tok) {
    const kvq_model_info *I = &c->model->info;
    size_t kv_dim = (size_t)I->n_kv_heads * I->head_dim;
    if (c->params.kv_observer) c->params.kv_observer(c->params.kv_observer_user, layer, c->n_past, c->k, c->v, n_tok);
    if (c->params.query_observer)
        c->params.query_observer(c->params.query_observer_user, layer, c->n_past, c->q, n_tok);
    /* short attention (a token against a short context) is not worth a pool barrier */
    size_t work = n_tok * (c->n_past + n_tok) * (size_t)I->n_heads * I->head_dim * 2;
    kvq_threadpool *pool = work >= MATMUL_SERIAL_MACS ? c->pool : NULL;
    size_t window = c->model->layers[layer].swa ? c->model->n_swa : 0;
    if (c->caches) { /* the cache decides itself when its work is too short for the pool */
        /* the queries weigh channel keys' bits (until the first chunk is coded) */
        kvq_status st = kvq_cache_observe_queries(c->caches[layer], c->q, I->n_heads, n_tok);
        if (st == KVQ_OK) st = kvq_cache_append(c->caches[layer], c->k, c->v, n_tok);
        if (st) return st;
        return kvq_cache_attend(c->caches[layer], c->q, I->n_heads, n_tok, c->model->attn_scale, c->pool,
                                c->att);
    }
    float *kc = c->k_cache + c->slot_off[layer] * kv_dim, *vc = c->v_cache + c->slot_off[layer] * kv_dim;
    size_t R = c->kv_slots[layer];
    for (size_t t = 0; t < n_tok; t++) {
        size_t slot = (c->n_past + t) % R;
        memcpy(kc + slot * kv_dim, c->k + t * kv_dim, kv_dim * sizeof(float));
        memcpy(vc + slot * kv_dim, c->v + t * kv_dim, kv_dim * sizeof(float));
    }
    attend_job j = {c, layer, n_tok, window};
    if (!pool) {
        for (size_t t = 0; t < n_tok * I->n_heads; t++) attend_task(&j, t, 0);
        return KVQ_OK;
    }
    run_tasks(c, n_tok * I->n_heads, attend_task, &j);
    return KVQ_OK;
}

static void add_bias(float *y, const float *b, size_t n_tok, size_t n) {
    if (!b) return;
    for (size_t t = 0; t < n_tok; t++)
        for (size_t i = 0; i < n; i++) y[t * n + i] += b[i];
}

/* Each row attends alone in its own context's cache at that context's position (a
 * batch's rows): the very call kvq_context_eval of one token makes. */
static kvq_status attention_rows(kvq_context *b, uint32_t layer, size_t n, kvq_context *const *seqs) {
    const kvq_model_info *I = &b->model->info;
    size_t q_dim = (size_t)I->n_heads * I->head_dim, kv_dim = (size_t)I->n_kv_heads * I->head_dim;
    for (size_t i = 0; i < n; i++) {
        kvq_context *c = seqs[i];
        memcpy(c->q, b->q + i * q_dim, q_dim * sizeof(float));
        memcpy(c->k, b->k + i * kv_dim, kv_dim * sizeof(float));
        memcpy(c->v, b->v + i * kv_dim, kv_dim * sizeof(float));
        kvq_status st = attention(c, layer, 1);
        if (st) return st;
        memcpy(b->att + i * q_dim, c->att, q_dim * sizeof(float));
    }
    return KVQ_OK;
}

/* The token rows' embeddings into c->x. */
static void embed(kvq_context *c, const int32_t *tokens, size_t n) {
    const kvq_model *m = c->model;
    size_t E = m->info.n_embd;
    const kvqi_type_traits *et = kvqi_type(m->tok_embd->type);
    for (size_t t = 0; t < n; t++)
        et->to_float(m->tok_embd->data + (size_t)tokens[t] * m->tok_embd->row_bytes, c->x + t * E, E);
    if (m->gemma) {
        float scale = sqrtf((float)E);
        for (size_t i = 0; i < n * E; i++) c->x[i] *= scale;
    }
}

/* Every layer over c's n rows (c->x in and out; the rope tables filled): the rows attend
 * in c's own cache as consecutive positions, or with seqs, row i in seqs[i]'s. */
static kvq_status run_layers(kvq_context *c, size_t n, kvq_context *const *seqs) {
    const kvq_model *m = c->model;
    const kvq_model_info *I = &m->info;
    size_t E = I->n_embd, hd = I->head_dim;
    size_t q_dim = (size_t)I->n_heads * hd, kv_dim = (size_t)I->n_kv_heads * hd, F = I->n_ff;
    for (uint32_t l = 0; l < I->n_layers; l++) {
        const layer_weights *L = &m->layers[l];
        const float *rc = L->swa ? c->rope_cos_swa : c->rope_cos, *rs = L->swa ? c->rope_sin_swa : c->rope_sin;
        size_t half = m->n_rot / 2;
        for (size_t t = 0; t < n; t++) rmsnorm(c->xn + t * E, c->x + t * E, L->attn_norm, E, I->norm_eps);
        {
            const kvqi_gguf_tensor *w[3] = {L->wq, L->wk, L->wv};
            float *y[3] = {c->q, c->k, c->v};
            size_t stride[3] = {q_dim, kv_dim, kv_dim};
            matmul_multi(c, c->xn, n, 3, w, y, stride);
        }
        add_bias(c->q, L->bq, n, q_dim);
        add_bias(c->k, L->bk, n, kv_dim);
        add_bias(c->v, L->bv, n, kv_dim);
        if (L->q_norm) {
            for (size_t i = 0; i < n * I->n_heads; i++) rmsnorm(c->q + i * hd, c->q + i * hd, L->q_norm, hd, I->norm_eps);
            for (size_t i = 0; i < n * I->n_kv_heads; i++)
                rmsnorm(c->k + i * hd, c->k + i * hd, L->k_norm, hd, I->norm_eps);
        }
        for (size_t t = 0; t < n; t++) {
            rope(c, rc + t * half, rs + t * half, c->q + t * q_dim, I->n_heads);
            rope(c, rc + t * half, rs + t * half, c->k + t * kv_dim, I->n_kv_heads);
        }
        kvq_status st = seqs ? attention_rows(c, l, n, seqs) : attention(c, l, n);
        if (st) return st;
        /* the output projection lands in xn, then joins the residual stream */
        matmul(c, L->wo, c->att, n, c->xn, E);
        if (L->post_attn_norm)
            for (size_t t = 0; t < n; t++) rmsnorm(c->xn + t * E, c->xn + t * E, L->post_attn_norm, E, I->norm_eps);
        for (size_t i = 0; i < n * E; i++) c->x[i] += c->xn[i];
        for (size_t t = 0; t < n; t++) rmsnorm(c->xn + t * E, c->x + t * E, L->ffn_norm, E, I->norm_eps);
        {
            const kvqi_gguf_tensor *w[2] = {L->w_gate, L->w_up};
            float *y[2] = {c->gate, c->up};
            size_t stride[2] = {F, F};
            matmul_multi(c, c->xn, n, 2, w, y, stride);
        }
        if (m->gemma) {
            /* GeGLU with GELU's tanh approximation (0.5 (1 + tanh u) as the logistic of
             * 2u) in a vector kernel with its own exponential: 2-3 % of a prompt was expf */
            c->kern.glu(c->gate, c->up, n * F, 1);
        } else {
            /* SwiGLU through libm's expf still: the recorded Llama-family figures (presets'
             * KL against fp16 among them) were measured with it */
            for (size_t i = 0; i < n * F; i++) {
                float g = c->gate[i];
                c->gate[i] = g / (1.0f + expf(-g)) * c->up[i];
            }
        }
        matmul(c, L->w_down, c->gate, n, c->xn, E);
        if (L->post_ffn_norm)
            for (size_t t = 0; t < n; t++) rmsnorm(c->xn + t * E, c->xn + t * E, L->post_ffn_norm, E, I->norm_eps);
        for (size_t i = 0; i < n * E; i++) c->x[i] += c->xn[i];
    }
    return KVQ_OK;
}

/* Logits of rows first..first+n_out-1 of c->x. */
static void output_logits(kvq_context *c, size_t first, size_t n_out, float *logits) {
    const kvq_model *m = c->model;
    const kvq_model_info *I = &m->info;
    size_t E = I->n_embd;
    for (size_t t = 0; t < n_out; t++) rmsnorm(c->xn + t * E, c->x + (first + t) * E, m->output_norm, E, I->norm_eps);
    matmul(c, m->output, c->xn, n_out, logits, I->n_vocab);
    if (m->logit_softcap > 0) {
        float cap = m->logit_softcap;
        for (size_t i = 0; i < n_out * I->n_vocab; i++) logits[i] = cap * tanhf(logits[i] / cap);
    }
}

KVQ_API kvq_status kvq_context_eval(kvq_context *c, const int32_t *tokens, size_t n, float *logits,
                                    int all_logits) {
    if (!c || !tokens || n == 0) return KVQ_ERR_INVALID_ARG;
    if (n > c->params.n_batch) return KVQ_ERR_INVALID_ARG;
    if (c->n_past + n > c->params.n_ctx) return KVQ_ERR_CAPACITY;
    const kvq_model *m = c->model;
    const kvq_model_info *I = &m->info;
    for (size_t t = 0; t < n; t++)
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= I->n_vocab) return KVQ_ERR_INVALID_ARG;
    embed(c, tokens, n);
    rope_table(c, c->rope_freq, c->n_past, n, c->rope_cos, c->rope_sin);
    if (m->gemma) rope_table(c, c->rope_freq_swa, c->n_past, n, c->rope_cos_swa, c->rope_sin_swa);
    kvq_status st = run_layers(c, n, NULL);
    if (st) return st;
    c->n_past += n;
    if (!logits) return KVQ_OK;
    size_t first = all_logits ? 0 : n - 1;
    output_logits(c, first, n - first, logits);
    return KVQ_OK;
}

/* ------------------------------------------------------------ batch */

struct kvq_batch {
    kvq_context *w; /* its activations, product scratch and pool serve the rows */
    uint32_t max_seqs;
};

KVQ_API kvq_status kvq_batch_params_init(kvq_batch_params *p) {
    if (!p) return KVQ_ERR_INVALID_ARG;
    memset(p, 0, sizeof *p);
    return KVQ_OK;
}

KVQ_API kvq_status kvq_batch_create(const kvq_model *model, uint32_t max_seqs, const kvq_batch_params *params,
                                    kvq_batch **out) {
    if (!model || !out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    if (max_seqs == 0 || max_seqs > 65536) return KVQ_ERR_INVALID_ARG;
    kvq_batch_params bp;
    if (params) bp = *params;
    else kvq_batch_params_init(&bp);
    kvq_batch *b = calloc(1, sizeof *b);
    if (!b) return KVQ_ERR_NOMEM;
    /* a context of max_seqs rows without a KV store (the rows attend in theirs) */
    kvq_context_params cp;
    kvq_context_params_init(&cp);
    cp.n_ctx = max_seqs;
    cp.n_batch = max_seqs;
    cp.n_threads = bp.n_threads;
    cp.pool = bp.pool;
    cp.float_activations = bp.float_activations;
    kvq_status st = context_create(model, &cp, 1, &b->w);
    if (st) {
        free(b);
        return st;
    }
    b->w->rowwise = 1;
    b->max_seqs = max_seqs;
    *out = b;
    return KVQ_OK;
}

KVQ_API void kvq_batch_free(kvq_batch *b) {
    if (!b) return;
    kvq_context_free(b->w);
    free(b);
}

KVQ_API kvq_status kvq_batch_decode(kvq_batch *b, kvq_context *const *ctxs, const int32_t *tokens, size_t n,
                                    float *logits) {
    if (!b || !ctxs || !tokens || n == 0 || n > b->max_seqs) return KVQ_ERR_INVALID_ARG;
    kvq_context *w = b->w;
    const kvq_model *m = w->model;
    const kvq_model_info *I = &m->info;
    for (size_t i = 0; i < n; i++) {
        const kvq_context *c = ctxs[i];
        if (!c || tokens[i] < 0 || (uint32_t)tokens[i] >= I->n_vocab) return KVQ_ERR_INVALID_ARG;
        for (size_t k = 0; k < i; k++)
            if (ctxs[k] == c) return KVQ_ERR_INVALID_ARG;
    }
    for (size_t i = 0; i < n; i++) {
        const kvq_context *c = ctxs[i];
        if (c->model != m || c->params.float_activations != w->params.float_activations) return KVQ_ERR_MISMATCH;
        if (c->n_past + 1 > c->params.n_ctx) return KVQ_ERR_CAPACITY;
    }
    embed(w, tokens, n);
    size_t half = m->n_rot / 2;
    for (size_t i = 0; i < n; i++) {
        rope_table(w, w->rope_freq, ctxs[i]->n_past, 1, w->rope_cos + i * half, w->rope_sin + i * half);
        if (m->gemma)
            rope_table(w, w->rope_freq_swa, ctxs[i]->n_past, 1, w->rope_cos_swa + i * half, w->rope_sin_swa + i * half);
    }
    kvq_status st = run_layers(w, n, ctxs);
    if (st) return st;
    for (size_t i = 0; i < n; i++) ctxs[i]->n_past++;
    if (logits) output_logits(w, 0, n, logits);
    return KVQ_OK;
}

/* ------------------------------------------------------------ sampling */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int by_prob_desc(const void *a, const void *b) {
    const prob_idx *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* x comes after y in by_prob_desc's order (less likely, or as likely with a larger id) */
static int prob_after(const prob_idx *x, const prob_idx *y) {
    return x->p < y->p || (x->p == y->p && x->id > y->id);
}

/* The k first entries of a[0..n) in by_prob_desc's order moved to the front, sorted: a
 * heap of the k best so far with the worst at its root, O(n log k) instead of a full sort. */
static void select_top_k(prob_idx *a, uint32_t n, uint32_t k) {
    for (uint32_t start = k / 2; start-- > 0;) {
        for (uint32_t i = start;;) {
            uint32_t l = 2 * i + 1, r = l + 1, w = i;
            if (l < k && prob_after(&a[l], &a[w])) w = l;
            if (r < k && prob_after(&a[r], &a[w])) w = r;
            if (w == i) break;
            prob_idx t = a[i];
            a[i] = a[w];
            a[w] = t;
            i = w;
        }
    }
    for (uint32_t j = k; j < n; j++) {
        if (!prob_after(&a[0], &a[j])) continue;
        a[0] = a[j];
        for (uint32_t i = 0;;) {
            uint32_t l = 2 * i + 1, r = l + 1, w = i;
            if (l < k && prob_after(&a[l], &a[w])) w = l;
            if (r < k && prob_after(&a[r], &a[w])) w = r;
            if (w == i) break;
            prob_idx t = a[i];
            a[i] = a[w];
            a[w] = t;
            i = w;
        }
    }
    qsort(a, k, sizeof *a, by_prob_desc);
}

KVQ_API kvq_status kvq_sampler_params_init(kvq_sampler_params *p) {
    if (!p) return KVQ_ERR_INVALID_ARG;
    memset(p, 0, sizeof *p);
    p->temperature = 0.0f;
    p->top_p = 1.0f;
    p->repeat_penalty = 1.0f;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_sample_ext(kvq_context *c, const float *logits, const kvq_sampler_params *sp,
                                  int32_t *token) {
    if (!c || !logits || !sp || !token || (sp->n_recent && !sp->recent)) return KVQ_ERR_INVALID_ARG;
    if (isnan(sp->temperature) || !(sp->top_p >= 0.0f) || !(sp->min_p >= 0.0f && sp->min_p <= 1.0f) ||
        !(sp->repeat_penalty > 0.0f) || !isfinite(sp->repeat_penalty))
        return KVQ_ERR_INVALID_ARG;
    const uint32_t nv = c->model->info.n_vocab;
    for (size_t r = 0; r < sp->n_recent; r++)
        if (sp->recent[r] < 0 || (uint32_t)sp->recent[r] >= nv) return KVQ_ERR_INVALID_ARG;
    /* probs[].p holds the working logits first, then the unnormalized probabilities */
    for (uint32_t i = 0; i < nv; i++) {
        c->probs[i].p = logits[i];
        c->probs[i].id = (int32_t)i;
    }
    if (sp->repeat_penalty != 1.0f) {
        /* once per distinct token, however often it recurs (as llama.cpp does): a
         * penalized entry is marked by a negative id until the pass ends */
        for (size_t r = 0; r < sp->n_recent; r++) {
            prob_idx *e = &c->probs[sp->recent[r]];
            if (e->id < 0) continue;
            e->p = e->p > 0 ? e->p / sp->repeat_penalty : e->p * sp->repeat_penalty;
            e->id = -1 - e->id;
        }
        for (size_t r = 0; r < sp->n_recent; r++) c->probs[sp->recent[r]].id = sp->recent[r];
    }
    uint32_t best = 0;
    for (uint32_t i = 1; i < nv; i++)
        if (c->probs[i].p > c->probs[best].p) best = i;
    if (!(sp->temperature > 0)) {
        *token = (int32_t)best;
        return KVQ_OK;
    }
    const float top = c->probs[best].p;
    double sum = 0;
    for (uint32_t i = 0; i < nv; i++) {
        float p = expf((c->probs[i].p - top) / sp->temperature);
        c->probs[i].p = p;
        sum += p;
    }
    uint32_t keep = nv;
    if (sp->top_k > 0 && sp->top_k < nv) {
        keep = sp->top_k;
        select_top_k(c->probs, nv, keep);
        sum = 0;
        for (uint32_t i = 0; i < keep; i++) sum += c->probs[i].p;
    } else if (sp->top_p >= 1.0f && sp->min_p > 0.0f) {
        /* min_p alone keeps a prefix of the sorted order: sort only what passes */
        const float floor_p = sp->min_p; /* the best token's weight is exp(0) = 1 */
        keep = 0;
        for (uint32_t i = 0; i < nv; i++)
            if (c->probs[i].p >= floor_p) c->probs[keep++] = c->probs[i];
        qsort(c->probs, keep, sizeof *c->probs, by_prob_desc);
        sum = 0;
        for (uint32_t i = 0; i < keep; i++) sum += c->probs[i].p;
    } else if (sp->top_p < 1.0f) {
        /* the tokens below t = (1 - top_p) sum / nv weigh less than (1 - top_p) sum
         * together, so the ones at or above t, a prefix of the sorted order, hold the
         * nucleus: sort only those (few, unless the distribution is flat) */
        const double t = (1.0 - (double)sp->top_p) * sum / (double)nv;
        keep = 0;
        for (uint32_t i = 0; i < nv; i++)
            if ((double)c->probs[i].p >= t) c->probs[keep++] = c->probs[i];
        qsort(c->probs, keep, sizeof *c->probs, by_prob_desc);
    }
    if (sp->top_p < 1.0f) {
        double acc = 0;
        uint32_t n = keep;
        for (keep = 0; keep < n;) {
            acc += c->probs[keep++].p / sum;
            if (acc >= sp->top_p) break;
        }
        sum = 0;
        for (uint32_t i = 0; i < keep; i++) sum += c->probs[i].p;
    }
    if (sp->min_p > 0.0f) {
        /* probs[0] is the most likely token (exp(0) = 1 before normalization) */
        const float floor_p = sp->min_p * c->probs[0].p;
        uint32_t n = 1;
        while (n < keep && c->probs[n].p >= floor_p) n++;
        if (n < keep) {
            keep = n;
            sum = 0;
            for (uint32_t i = 0; i < keep; i++) sum += c->probs[i].p;
        }
    }
    double u = (double)(splitmix64(&c->rng) >> 11) * (1.0 / 9007199254740992.0) * sum, acc = 0;
    for (uint32_t i = 0; i < keep; i++) {
        acc += c->probs[i].p;
        if (u < acc) {
            *token = c->probs[i].id;
            return KVQ_OK;
        }
    }
    *token = c->probs[keep - 1].id;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_sample(kvq_context *c, const float *logits, float temperature, float top_p,
                              int32_t *token) {
    kvq_sampler_params p;
    kvq_sampler_params_init(&p);
    p.temperature = temperature > 0 ? temperature : 0.0f; /* NaN and below zero: greedy, as before */
    p.top_p = isnan(top_p) ? 1.0f : top_p >= 0 ? top_p : 0.0f;
    return kvq_sample_ext(c, logits, &p, token);
}
