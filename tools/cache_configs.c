/* cache_configs.c - per-layer KV cache configs for kvq perplexity and kvq generate:
 * layer patterns in artifact paths (one artifact per layer, as kvq calibrate --per-layer
 * writes them) and RateQuant plans (bits per layer from measured sensitivities).
 * Public API only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_configs.h"

/* Where the pattern starts and ends: '%', an optional 0, a width of one digit, d or u. */
static const char *find_pattern(const char *s, const char **end, int *zero, int *width) {
    const char *p = strchr(s, '%');
    if (!p) return NULL;
    const char *q = p + 1;
    *zero = *q == '0';
    if (*zero) q++;
    *width = 0;
    if (*q >= '1' && *q <= '9') *width = *q++ - '0';
    if (*q != 'd' && *q != 'u') return NULL;
    *end = q + 1;
    return p;
}

int kvq_cli_spec_has_layer_pattern(const char *spec) {
    const char *end;
    int zero, width;
    return find_pattern(spec, &end, &zero, &width) != NULL;
}

/* spec with its pattern replaced by layer; -1 on a stray '%' or a result too long */
static int expand(const char *spec, uint32_t layer, char *out, size_t out_size) {
    const char *end;
    int zero, width;
    const char *p = find_pattern(spec, &end, &zero, &width);
    if (!p) {
        if (strchr(spec, '%')) return -1;
        return snprintf(out, out_size, "%s", spec) < (int)out_size ? 0 : -1;
    }
    if (strchr(end, '%')) return -1; /* one pattern at most */
    int n = snprintf(out, out_size, "%.*s%0*u%s", (int)(p - spec), spec, zero ? width : 0, layer, end);
    if (!zero && width) n = snprintf(out, out_size, "%.*s%*u%s", (int)(p - spec), spec, width, layer, end);
    return n >= 0 && (size_t)n < out_size ? 0 : -1;
}

static kvq_status parse_side(const kvq_model_info *info, const char *spec, int is_key, kvq_config *out,
                             char *msg, size_t msg_size) {
    kvq_status st = kvq_config_parse(spec, 0, out, msg, msg_size);
    if (st != KVQ_OK) return st;
    if (is_key && out->method == KVQ_METHOD_COMM_VQ) {
        /* codes live before RoPE: the model's RoPE (the engine sets the same) */
        out->rope_base = info->rope_base;
        out->rope_pairing = info->rope_neox ? KVQ_ROPE_NEOX : KVQ_ROPE_INTERLEAVED;
    }
    out->dim = info->head_dim;
    return kvq_config_validate(out, msg, msg_size);
}

kvq_status kvq_cli_cache_configs(const kvq_model_info *info, const char *kspec, const char *vspec,
                                 const char *plan, uint32_t window, uint32_t n_outliers,
                                 uint32_t n_sink, kvq_cache_config *per_layer, char *msg,
                                 size_t msg_size) {
    if (!info || !vspec || (!kspec && !plan) || !per_layer || info->n_layers == 0) return KVQ_ERR_INVALID_ARG;
    char ks[1400], vs[1400], why[900] = "";
    kvq_status st = KVQ_OK;
    for (uint32_t l = 0; l < info->n_layers && st == KVQ_OK; l++) {
        kvq_cache_config *cc = &per_layer[l];
        if ((kspec && expand(kspec, l, ks, sizeof ks)) || expand(vspec, l, vs, sizeof vs)) {
            snprintf(msg, msg_size, "a spec has a stray '%%' (a layer is %%d or %%02d) or is too long");
            return KVQ_ERR_PARSE;
        }
        st = kvq_cache_config_init(cc, info->n_kv_heads, info->head_dim, "fp16", "fp16", why, sizeof why);
        if (st == KVQ_OK && !plan) st = parse_side(info, ks, 1, &cc->key, why, sizeof why);
        if (st == KVQ_OK) st = parse_side(info, vs, 0, &cc->value, why, sizeof why);
        cc->window = window;
        cc->n_outliers = n_outliers;
        cc->n_sink = n_sink;
        if (st != KVQ_OK) snprintf(msg, msg_size, "layer %u: %s", l, why[0] ? why : kvq_strerror(st));
    }
    if (st != KVQ_OK || !plan) return st;
    /* the plan sets the keys; each layer keeps its values and options */
    kvq_cache_config *planned = calloc(info->n_layers, sizeof *planned);
    if (!planned) return KVQ_ERR_NOMEM;
    st = kvq_ratequant_cache_configs(plan, &per_layer[0], info->n_layers, planned, why, sizeof why);
    for (uint32_t l = 0; l < info->n_layers && st == KVQ_OK; l++) per_layer[l].key = planned[l].key;
    free(planned);
    if (st != KVQ_OK) {
        snprintf(msg, msg_size, "%s", why[0] ? why : kvq_strerror(st));
        return st;
    }
    for (uint32_t l = 0; l < info->n_layers && st == KVQ_OK; l++)
        if (per_layer[l].key.method == KVQ_METHOD_COMM_VQ) {
            per_layer[l].key.rope_base = info->rope_base;
            per_layer[l].key.rope_pairing = info->rope_neox ? KVQ_ROPE_NEOX : KVQ_ROPE_INTERLEAVED;
        }
    return st;
}
