/*
 * preset.c - cache specs as users type them, and the named presets: one table (name ->
 * key spec, value spec, window, sinks, outliers, key centering, bits) shared by the CLI,
 * the Python package and the server. docs/METHODS.md cites the measurement behind each.
 */
#include <stdlib.h>
#include <string.h>

#include "cache/cache_internal.h"
#include "quant/quant.h"

/* Chosen on SmolLM2-135M (head_dim 64, 3 KV heads: a hard case) and Gemma-3-270M by
 * perplexity and KL from fp16 over 8 chunks of 512 and 2 of 2048 tokens: the best
 * measured config whose codes cost at most 4.5, 3.0 and 2.25 bits per cached number.
 * Keys per channel over each 128-token chunk (KIVI), values rotated per token; the first
 * token exact, and the newest 8 plus the chunk still filling held as q8_0 rows until
 * their chunk is coded. q4 and q3 spend their spare bits by layer, a quarter bit a number
 * on average (measured per sixth of the layers on both models: docs/METHODS.md,
 * "Presets"): q3 gives one bit more to the values of the first, fourth and fifth sixths,
 * q4 to the keys of the second, fourth and fifth. `bits` counts everything that grows
 * with the context at 4096 tokens on SmolLM2's shape. A sliding-window layer (Gemma 3's
 * local layers), whose bytes stop growing at its window, takes one bit more for its keys
 * (all three) and its values (q3, q2; q4's would be 5-bit rotated values, which have no
 * fused kernel): on Gemma-3-270M over 2 x 2048 tokens that took q3's top-1 agreement
 * from 91.7 % to 94.8 % (bench/RESULTS.md, "Sliding-window layers"). */
#define PLAN_VALUES3 (1u << 0 | 1u << 3 | 1u << 4)
#define PLAN_KEYS4 (1u << 1 | 1u << 3 | 1u << 4) /* 5-bit rotated values have no fused kernel */
static const kvq_cache_preset presets[] = {
    {"q4", "channel:bits=4", "mse:bits=4", 8, 1, 0, 0, 4.65,
     "4-bit rotated values, 4-bit per-channel keys, 5-bit in half the layers (4.5 bits a number)", 128,
     "channel:bits=5", NULL, PLAN_KEYS4, 0, 1, 0},
    {"q3", "channel:bits=3", "mse:bits=2", 8, 1, 0, 0, 3.19,
     "3-bit per-channel keys, 2-bit rotated values, 3-bit in half the layers (3.0 bits a number)",
     128, NULL, "mse:bits=3", 0, PLAN_VALUES3, 1, 1},
    {"q2", "channel:bits=2", "mse:bits=2", 8, 1, 0, 0, 2.47,
     "2-bit per-channel keys over 128-token chunks, 2-bit values (2.25 bits a number)", 128, NULL, NULL, 0,
     0, 1, 1},
};

KVQ_API const kvq_cache_preset *kvq_cache_preset_at(size_t i) {
    return i < sizeof presets / sizeof presets[0] ? &presets[i] : NULL;
}

KVQ_API const char *kvq_cache_preset_name(size_t i) {
    const kvq_cache_preset *p = kvq_cache_preset_at(i);
    return p ? p->name : NULL;
}

KVQ_API const kvq_cache_preset *kvq_cache_preset_get(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(presets[i].name, name)) return &presets[i];
    return NULL;
}

/* 1 if layer l of n lies in a sixth whose bit is set: sixth s is the n / 6 layers
 * (rounded down, so a plan never takes more than its share) from layer s * n / 6. */
static int in_plan(uint32_t sixths, uint32_t l, uint32_t n) {
    uint64_t per = n / 6;
    for (uint32_t s = 0; s < 6; s++) {
        uint64_t from = (uint64_t)s * n / 6;
        if ((sixths >> s & 1u) && l >= from && l < from + per) return 1;
    }
    return 0;
}

KVQ_API kvq_status kvq_cache_config_preset_layer(kvq_cache_config *cfg, const char *preset,
                                                 uint32_t n_kv_heads, uint32_t head_dim,
                                                 uint32_t layer, uint32_t n_layers, char *msg,
                                                 size_t msg_size) {
    if (!cfg || !preset || (n_layers && layer >= n_layers)) return KVQ_ERR_INVALID_ARG;
    const kvq_cache_preset *p = kvq_cache_preset_get(preset);
    if (!p) {
        kvqi_set_msg(msg, msg_size, "unknown cache preset '%s' (q4, q3, q2)", preset);
        return KVQ_ERR_PARSE;
    }
    const char *kspec = p->key_spec, *vspec = p->value_spec;
    if (n_layers && p->plan_key_spec && in_plan(p->plan_key_sixths, layer, n_layers)) kspec = p->plan_key_spec;
    if (n_layers && p->plan_value_spec && in_plan(p->plan_value_sixths, layer, n_layers))
        vspec = p->plan_value_spec;
    kvq_status st = kvq_cache_config_init(cfg, n_kv_heads, head_dim, kspec, vspec, msg, msg_size);
    if (st != KVQ_OK) return st;
    cfg->window = p->window;
    cfg->n_sink = p->n_sink;
    cfg->n_outliers = p->n_outliers;
    cfg->center_keys = p->center_keys;
    cfg->chunk_tokens = p->chunk_tokens;
    cfg->sliding_key_bits = p->sliding_key_bits;
    cfg->sliding_value_bits = p->sliding_value_bits;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_config_preset(kvq_cache_config *cfg, const char *preset,
                                           uint32_t n_kv_heads, uint32_t head_dim, char *msg,
                                           size_t msg_size) {
    return kvq_cache_config_preset_layer(cfg, preset, n_kv_heads, head_dim, 0, 0, msg, msg_size);
}

/* A decimal count in [0, max]: digits only, no sign, no base prefix. */
static int parse_count(const char *s, uint32_t max, uint32_t *out) {
    if (!*s) return 0;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return 0;
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > max) return 0;
    }
    *out = (uint32_t)v;
    return 1;
}

KVQ_API kvq_status kvq_cache_options_parse(const char *options, kvq_cache_config *cfg,
                                           char *msg, size_t msg_size) {
    if (!options || !cfg) return KVQ_ERR_INVALID_ARG;
    char buf[256];
    size_t len = strlen(options);
    if (len >= sizeof buf) {
        kvqi_set_msg(msg, msg_size, "cache options longer than %zu bytes", sizeof buf - 1);
        return KVQ_ERR_PARSE;
    }
    memcpy(buf, options, len + 1);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            kvqi_set_msg(msg, msg_size, "cache option '%s' has no '=value'", item);
            return KVQ_ERR_PARSE;
        }
        *eq = 0;
        const char *val = eq + 1;
        uint32_t v;
        uint32_t *field = NULL, max = 0;
        /* channel keys before RoPE (docs/METHODS.md): the keys' rope_base and rope, as the
         * key spec's own options give them, for a preset too ("q2@rope_base=10000") */
        if (!strcmp(item, "rope_base") || !strcmp(item, "rope")) {
            if (cfg->key.method != KVQ_METHOD_CHANNEL) {
                kvqi_set_msg(msg, msg_size, "cache option '%s' takes channel keys", item);
                return KVQ_ERR_PARSE;
            }
            kvq_status st = kvqi_config_set_key(&cfg->key, item, val, msg, msg_size);
            if (st != KVQ_OK) return st;
            continue;
        }
        if (!strcmp(item, "window")) field = &cfg->window, max = 1u << 20;
        else if (!strcmp(item, "sink")) field = &cfg->n_sink, max = 1024;
        else if (!strcmp(item, "outliers")) field = &cfg->n_outliers, max = 4095;
        else if (!strcmp(item, "center")) field = &cfg->center_keys, max = 1;
        else if (!strcmp(item, "chunk")) field = &cfg->chunk_tokens, max = 4096;
        else if (!strcmp(item, "slide_kbits")) field = &cfg->sliding_key_bits, max = 7;
        else if (!strcmp(item, "slide_vbits")) field = &cfg->sliding_value_bits, max = 7;
        else {
            kvqi_set_msg(msg, msg_size,
                         "unknown cache option '%s' (window, sink, outliers, center, chunk, slide_kbits, "
                         "slide_vbits, rope_base, rope)",
                         item);
            return KVQ_ERR_PARSE;
        }
        if (!parse_count(val, max, &v)) {
            kvqi_set_msg(msg, msg_size, "cache option '%s': '%s' is not an integer in [0, %u]",
                         item, val, max);
            return KVQ_ERR_PARSE;
        }
        *field = v;
    }
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_config_parse(const char *spec, uint32_t n_kv_heads, uint32_t head_dim,
                                          kvq_cache_config *cfg, char *msg, size_t msg_size) {
    return kvq_cache_config_parse_layer(spec, n_kv_heads, head_dim, 0, 0, cfg, msg, msg_size);
}

KVQ_API kvq_status kvq_cache_config_parse_layer(const char *spec, uint32_t n_kv_heads,
                                                uint32_t head_dim, uint32_t layer,
                                                uint32_t n_layers, kvq_cache_config *cfg,
                                                char *msg, size_t msg_size) {
    if (!spec || !cfg || (n_layers && layer >= n_layers)) return KVQ_ERR_INVALID_ARG;
    char buf[2048];
    size_t len = strlen(spec);
    if (len >= sizeof buf) {
        kvqi_set_msg(msg, msg_size, "cache spec longer than %zu bytes", sizeof buf - 1);
        return KVQ_ERR_PARSE;
    }
    memcpy(buf, spec, len + 1);
    char *opts = strchr(buf, '@');
    if (opts) *opts++ = 0;
    if (opts && !*opts) {
        kvqi_set_msg(msg, msg_size, "cache spec '%s': nothing after '@' (options are name=value, e.g. @window=64)",
                     spec);
        return KVQ_ERR_PARSE;
    }
    kvq_status st;
    char *plus = strchr(buf, '+');
    if (plus) *plus = 0;
    const kvq_cache_preset *p = kvq_cache_preset_get(buf);
    if (p) {
        st = kvq_cache_config_preset_layer(cfg, buf, n_kv_heads, head_dim, layer, n_layers, msg, msg_size);
        /* PRESET+VSPEC: the preset with VSPEC for the values its plan leaves at the base
         * spec (checked on every layer, so a bad VSPEC fails the same on all) */
        int planned = n_layers && p->plan_value_spec && in_plan(p->plan_value_sixths, layer, n_layers);
        kvq_config vspec;
        if (st == KVQ_OK && plus) st = kvq_config_parse(plus + 1, head_dim, &vspec, msg, msg_size);
        if (st == KVQ_OK && plus && !planned) cfg->value = vspec;
        /* the sliding layers' extra value bit is for rotated scalar values (the layer's
         * own, which a plan layer keeps) */
        if (st == KVQ_OK && cfg->value.method != KVQ_METHOD_TURBOQUANT_MSE) cfg->sliding_value_bits = 0;
    } else {
        st = kvq_cache_config_init(cfg, n_kv_heads, head_dim, buf, plus ? plus + 1 : buf, msg, msg_size);
        /* keys named by a bare word that is neither a preset nor a method: name the
         * presets too (a user typing q9 meant one) */
        kvq_config probe;
        if (st == KVQ_ERR_PARSE && !strchr(buf, ':') && msg && msg_size && strstr(msg, "unknown method") &&
            kvq_config_parse(buf, head_dim, &probe, NULL, 0) == KVQ_ERR_PARSE)
            kvqi_set_msg(msg, msg_size, "'%s' is neither a cache preset (q4, q3, q2) nor a method", buf);
    }
    if (st != KVQ_OK || !opts) return st;
    return kvq_cache_options_parse(opts, cfg, msg, msg_size);
}
