/* cache_configs.c - per-layer KV cache configs for kvq perplexity and kvq generate:
 * layer patterns in artifact paths (one artifact per layer, as kvq calibrate --per-layer
 * writes them) and RateQuant plans (bits per layer from measured sensitivities).
 * Public API only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_configs.h"

/* Where the pattern starts and ends: '%', an optional 0, a width of one digit, d or u. */
const char *kvq_cli_find_layer_pattern(const char *s, const char **end, int *zero, int *width) {
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
    return kvq_cli_find_layer_pattern(spec, &end, &zero, &width) != NULL;
}

/* spec with its pattern replaced by layer; -1 on a stray '%' or a result too long */
static int expand(const char *spec, uint32_t layer, char *out, size_t out_size) {
    const char *end;
    int zero, width;
    const char *p = kvq_cli_find_layer_pattern(spec, &end, &zero, &width);
    if (!p) {
        if (strchr(spec, '%')) return -1;
        return snprintf(out, out_size, "%s", spec) < (int)out_size ? 0 : -1;
    }
    if (strchr(end, '%')) return -1; /* one pattern at most */
    int n = snprintf(out, out_size, "%.*s%0*u%s", (int)(p - spec), spec, zero ? width : 0, layer, end);
    if (!zero && width) n = snprintf(out, out_size, "%.*s%*u%s", (int)(p - spec), spec, width, layer, end);
    return n >= 0 && (size_t)n < out_size ? 0 : -1;
}

/* comm_vq keys live before RoPE: they get the model's RoPE (the engine applies the same) */
static void set_rope(const kvq_model_info *info, kvq_config *k) {
    if (k->method != KVQ_METHOD_COMM_VQ) return;
    k->rope_base = info->rope_base;
    k->rope_pairing = info->rope_neox ? KVQ_ROPE_NEOX : KVQ_ROPE_INTERLEAVED;
}

/* A whole cache spec (a preset, both sides named as KSPEC+VSPEC or PRESET+VSPEC, or
 * anything with cache options after '@') stands alone; otherwise keys and values are
 * joined as KSPEC+VSPEC. */
static int is_whole_spec(const char *spec) {
    return strchr(spec, '@') || strchr(spec, '+') || kvq_cache_preset_get(spec) != NULL;
}
/* A whole spec with a calibrated artifact and no '+' would have kvq_cache_config_parse
 * apply the key artifact to values too (values as keys): refused, values must be named. */
static int kspec_needs_vspec(const char *spec) {
    if (!is_whole_spec(spec) || kvq_cache_preset_get(spec)) return 0;
    const char *at = strchr(spec, '@');
    size_t n = at ? (size_t)(at - spec) : strlen(spec);
    const char *plus = memchr(spec, '+', n), *art = strstr(spec, "artifact=");
    return !plus && art && art < spec + n;
}

kvq_status kvq_cli_cache_configs(const kvq_model_info *info, const char *kspec, const char *vspec,
                                 const char *plan, uint32_t window, uint32_t n_outliers,
                                 uint32_t n_sink, kvq_cache_config *per_layer, char *msg,
                                 size_t msg_size) {
    if (!info || (!kspec && !plan) || !per_layer || info->n_layers == 0) return KVQ_ERR_INVALID_ARG;
    if (!vspec) vspec = "fp16";
    char spec[2900], ls[2900], why[900] = "";
    if (!plan && kspec_needs_vspec(kspec)) {
        snprintf(msg, msg_size,
                 "'%s': an artifact is calibrated on keys or on values, not both: give the values' "
                 "spec as KSPEC+VSPEC (e.g. ...+fp16)", kspec);
        return KVQ_ERR_INVALID_ARG;
    }
    if (plan) snprintf(spec, sizeof spec, "fp16+%s", vspec);
    else if (is_whole_spec(kspec)) snprintf(spec, sizeof spec, "%s", kspec);
    else snprintf(spec, sizeof spec, "%s+%s", kspec, vspec);
    kvq_status st = KVQ_OK;
    for (uint32_t l = 0; l < info->n_layers && st == KVQ_OK; l++) {
        kvq_cache_config *cc = &per_layer[l];
        if (expand(spec, l, ls, sizeof ls)) {
            snprintf(msg, msg_size, "a spec has a stray '%%' (a layer is %%d or %%02d) or is too long");
            return KVQ_ERR_PARSE;
        }
        st = kvq_cache_config_parse_layer(ls, info->n_kv_heads, info->head_dim, l, info->n_layers, cc, why,
                                          sizeof why);
        if (st == KVQ_OK) set_rope(info, &cc->key);
        /* options given on the command line win over a preset's (0: the spec's own) */
        if (window) cc->window = window;
        if (n_outliers) cc->n_outliers = n_outliers;
        if (n_sink) cc->n_sink = n_sink;
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
    for (uint32_t l = 0; l < info->n_layers; l++) set_rope(info, &per_layer[l].key);
    return st;
}

int kvq_cli_check_calibrated(const char *cmd, const char *spec) {
    if (!spec || !strncmp(spec, "plan:", 5)) return 0;
    char buf[2900];
    snprintf(buf, sizeof buf, "%s", spec);
    char *at = strchr(buf, '@');
    if (at) *at = 0;
    if (kvq_cache_preset_get(buf)) return 0;
    static const kvq_method calibrated[] = {KVQ_METHOD_VECINFER, KVQ_METHOD_SPECTRAL, KVQ_METHOD_COMM_VQ};
    for (char *side = buf; side;) {
        char *plus = strchr(side, '+');
        if (plus) *plus = 0;
        size_t len = strcspn(side, ":");
        for (size_t i = 0; i < sizeof calibrated / sizeof calibrated[0]; i++) {
            const char *name = kvq_method_name(calibrated[i]);
            if (name && strlen(name) == len && !strncmp(side, name, len) && !strstr(side, "artifact=")) {
                fprintf(stderr,
                        "kvq %s: '%s': %s is calibrated: give its artifact, %s:artifact=FILE (from kvq calibrate "
                        "--method %s)\n",
                        cmd, spec, name, name, name);
                return 1;
            }
        }
        side = plus ? plus + 1 : NULL;
    }
    return 0;
}
