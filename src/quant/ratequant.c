/*
 * ratequant.c - RateQuant (the seed's RateQuant): mixed precision per layer. Given each
 * layer's sensitivity w_l (how far the model's output moves when only that layer's cache
 * is quantized at the smallest bit width), bits are spread by reverse water-filling on
 * the model D_l(b) = w_l 4^-(b - b_min), hitting the budget exactly; the plan (bits,
 * sensitivities, the key spec they apply to) is a small safetensors file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "quant/quant.h"

#define RQ_FORMAT "kvq.ratequant"
#define RQ_MAX_LAYERS 4096u

KVQ_API kvq_status kvq_ratequant_allocate(const double *sensitivity, uint32_t n_layers,
                                          const uint32_t *choices, uint32_t n_choices,
                                          double target_bits, uint32_t *bits) {
    if (!sensitivity || !choices || !bits || n_layers == 0 || n_choices == 0 ||
        n_layers > RQ_MAX_LAYERS || !isfinite(target_bits))
        return KVQ_ERR_INVALID_ARG;
    for (uint32_t c = 0; c < n_choices; c++)
        if (choices[c] == 0 || choices[c] > 16 || (c && choices[c] <= choices[c - 1]))
            return KVQ_ERR_INVALID_ARG; /* ascending, distinct */
    for (uint32_t l = 0; l < n_layers; l++)
        if (!(sensitivity[l] >= 0.0) || !isfinite(sensitivity[l])) return KVQ_ERR_INVALID_ARG;
    const uint32_t lo = choices[0], hi = choices[n_choices - 1];
    if (target_bits < lo || target_bits > hi) return KVQ_ERR_INVALID_ARG;
    /* the budget in whole bits; the 1e-9 keeps 1.5 * 28 = 42 from rounding to 41 */
    uint64_t budget = (uint64_t)floor(target_bits * n_layers + 1e-9);
    uint64_t spent = (uint64_t)lo * n_layers;
    uint32_t *level = calloc(n_layers, sizeof *level); /* index into choices */
    if (!level) return KVQ_ERR_NOMEM;
    for (uint32_t l = 0; l < n_layers; l++) bits[l] = lo;
    for (;;) {
        /* the step with the largest distortion drop per bit that still fits */
        uint32_t best = UINT32_MAX;
        double best_rate = -1.0;
        for (uint32_t l = 0; l < n_layers; l++) {
            if (level[l] + 1 >= n_choices) continue;
            uint32_t b0 = choices[level[l]], b1 = choices[level[l] + 1];
            if (spent + (b1 - b0) > budget) continue;
            double drop = sensitivity[l] * (pow(4.0, -(double)(b0 - lo)) - pow(4.0, -(double)(b1 - lo)));
            double rate = drop / (double)(b1 - b0);
            if (rate > best_rate) {
                best_rate = rate;
                best = l;
            }
        }
        if (best == UINT32_MAX) break;
        spent += choices[level[best] + 1] - choices[level[best]];
        level[best]++;
        bits[best] = choices[level[best]];
    }
    free(level);
    return KVQ_OK;
}

KVQ_API kvq_status kvq_ratequant_save(const char *path, const char *key_spec,
                                      const double *sensitivity, const uint32_t *bits,
                                      uint32_t n_layers, double target_bits) {
    if (!path || !key_spec || !sensitivity || !bits || n_layers == 0 || n_layers > RQ_MAX_LAYERS)
        return KVQ_ERR_INVALID_ARG;
    kvq_config c;
    kvq_status st = kvq_config_parse(key_spec, 0, &c, NULL, 0);
    if (st != KVQ_OK) return st;
    kvqi_st_tensor t[2];
    memset(t, 0, sizeof t);
    snprintf(t[0].name, sizeof t[0].name, "ratequant.bits");
    t[0].dtype = KVQI_U32;
    t[0].ndim = 1;
    t[0].shape[0] = n_layers;
    t[0].data = bits;
    t[0].nbytes = (size_t)n_layers * sizeof(uint32_t);
    snprintf(t[1].name, sizeof t[1].name, "ratequant.sensitivity");
    t[1].dtype = KVQI_F64;
    t[1].ndim = 1;
    t[1].shape[0] = n_layers;
    t[1].data = sensitivity;
    t[1].nbytes = (size_t)n_layers * sizeof(double);
    char layers[32], target[64];
    snprintf(layers, sizeof layers, "%u", n_layers);
    snprintf(target, sizeof target, "%.17g", target_bits);
    const kvqi_st_meta meta[] = {
        {"format", RQ_FORMAT}, {"version", "1"},      {"method", "ratequant"},
        {"key_spec", key_spec}, {"n_layers", layers}, {"target_bits", target},
    };
    return kvqi_st_write(path, t, 2, meta, sizeof meta / sizeof meta[0]);
}

KVQ_API kvq_status kvq_ratequant_cache_configs(const char *path, const kvq_cache_config *base,
                                               uint32_t n_layers, kvq_cache_config *per_layer,
                                               char *msg, size_t msg_size) {
    if (msg && msg_size) msg[0] = 0;
    if (!path || !base || !per_layer || n_layers == 0) return KVQ_ERR_INVALID_ARG;
    kvqi_st_file *f;
    kvq_status st = kvqi_st_read(path, &f);
    if (st != KVQ_OK) {
        kvqi_set_msg(msg, msg_size, "%s: %s", path, kvqi_st_read_why(path, st));
        return st;
    }
    const char *format = kvqi_st_meta_get(f, "format"), *spec = kvqi_st_meta_get(f, "key_spec");
    const kvqi_st_tensor *t = kvqi_st_find(f, "ratequant.bits");
    if (!format || strcmp(format, RQ_FORMAT) != 0 || !spec || !t || t->dtype != KVQI_U32 ||
        t->ndim != 1 || t->nbytes != t->shape[0] * sizeof(uint32_t)) {
        kvqi_set_msg(msg, msg_size, "%s: not a RateQuant plan", path);
        kvqi_st_free(f);
        return KVQ_ERR_FORMAT;
    }
    if (t->shape[0] != n_layers) {
        kvqi_set_msg(msg, msg_size, "%s: plan is for %llu layers, the model has %u", path,
                     (unsigned long long)t->shape[0], n_layers);
        kvqi_st_free(f);
        return KVQ_ERR_MISMATCH;
    }
    kvq_config key;
    st = kvq_config_parse(spec, base->head_dim, &key, msg, msg_size);
    for (uint32_t l = 0; st == KVQ_OK && l < n_layers; l++) {
        uint32_t b;
        memcpy(&b, (const uint8_t *)t->data + 4 * l, 4);
        per_layer[l] = *base;
        per_layer[l].key = key;
        per_layer[l].key.bits = b;
        st = kvq_config_validate(&per_layer[l].key, msg, msg_size);
    }
    kvqi_st_free(f);
    return st;
}
