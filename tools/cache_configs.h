/* cache_configs.h - per-layer KV cache configs from what users type: specs whose artifact
 * path names the layer (vecinfer:artifact=vi.layer%02d.safetensors, as kvq calibrate
 * --per-layer writes them) and RateQuant plans (kvq calibrate --method ratequant). */
#ifndef KVQ_CLI_CACHE_CONFIGS_H
#define KVQ_CLI_CACHE_CONFIGS_H

#include "kvq.h"

/* One config per layer of the model into per_layer[info->n_layers]. kspec and vspec may
 * hold one layer number pattern (%d, %u, %02d, ...), replaced by each layer's number.
 * plan (NULL: none): the keys' method and bits per layer come from this RateQuant plan
 * instead of kspec. comm_vq keys get the model's RoPE base and pairing. On failure msg
 * says what and for which layer. */
kvq_status kvq_cli_cache_configs(const kvq_model_info *info, const char *kspec, const char *vspec,
                                 const char *plan, uint32_t window, uint32_t n_outliers,
                                 uint32_t n_sink, kvq_cache_config *per_layer, char *msg,
                                 size_t msg_size);

/* 1 (after one line on stderr) if a side of spec (KSPEC, KSPEC+VSPEC, either with
 * @options) names a calibrated method (vecinfer, spectral, comm_vq) with no artifact=:
 * checked before the model loads, so a run does not fail after it. 0 otherwise. */
int kvq_cli_check_calibrated(const char *cmd, const char *spec);

/* 1 if spec names a layer pattern (then it needs kvq_cli_cache_configs per layer). */
int kvq_cli_spec_has_layer_pattern(const char *spec);

/* The layer pattern in s ('%', an optional 0, a one-digit width, d or u): its start, and
 * in *end the byte after it; NULL if there is none. */
const char *kvq_cli_find_layer_pattern(const char *s, const char **end, int *zero, int *width);

#endif
