/* layer_set.h - per-layer artifact sets on the CLI side: kvq calibrate --per-layer names
 * layer l's file STEM.layerLL.safetensors and seals the set with STEM.layers.manifest;
 * generate and perplexity check the manifest of a spec whose artifact path holds a
 * layer pattern (artifact=STEM.layer%02d.safetensors) before loading it. Public API only. */
#ifndef KVQ_CLI_LAYER_SET_H
#define KVQ_CLI_LAYER_SET_H

#include <stddef.h>
#include <stdint.h>

/* The manifest of a layer pattern: the text before the pattern, then "s.manifest"
 * (STEM.layer%02d.safetensors -> STEM.layers.manifest). 0 ok, -1 too long. */
int kvq_cli_layer_manifest(const char *pattern, char *out, size_t out_size);

/* 0 if spec has no per-layer artifact, or its set matches its manifest; else one line
 * on stderr (mixed or partial set, unreadable manifest) and 1. A set without any
 * manifest (made by hand or by an older kvq) passes with a note on stderr. */
int kvq_cli_check_layer_set(const char *cmd, const char *spec, uint32_t n_layers);

/* Seal the set STEM.layer00.safetensors ... written by calibrate: 0, or 1 after a line. */
int kvq_cli_seal_layer_set(const char *cmd, const char *pattern, uint32_t n_layers);

#endif
