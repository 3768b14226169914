/*
 * artifact.c - what calibration produces and consumes: a calibrated quantizer's artifact
 * (the file kvq_quantizer_save writes, checked against the config that names it), and
 * calibration keys as plain safetensors tensors [rows][cols] for users of any engine.
 */
#include <stdio.h>
#include <stdlib.h>

#include "quant/quant.h"

static const char *meta_or(const kvqi_st_file *f, const char *key) {
    const char *v = kvqi_st_meta_get(f, key);
    return v ? v : "?";
}

/* The config an artifact was saved with, or a status and a reason. */
static kvq_status artifact_config(const kvqi_st_file *f, const char *path, kvq_config *out,
                                  char *why, size_t why_size) {
    const char *format = kvqi_st_meta_get(f, "format"), *version = kvqi_st_meta_get(f, "version");
    if (!format || strcmp(format, "kvq.quantizer") != 0 || !version || strcmp(version, "1") != 0) {
        kvqi_set_msg(why, why_size, "artifact %s is not a kvq quantizer file (version 1)", path);
        return KVQ_ERR_FORMAT;
    }
    const char *spec = kvqi_st_meta_get(f, "spec"), *dim_s = kvqi_st_meta_get(f, "dim");
    char *end = NULL;
    unsigned long dim = dim_s ? strtoul(dim_s, &end, 10) : 0;
    if (!spec || !dim_s || *end || dim == 0 || dim > KVQI_QUANT_MAX_DIM ||
        kvq_config_parse(spec, 0, out, NULL, 0) != KVQ_OK) {
        kvqi_set_msg(why, why_size, "artifact %s: metadata 'spec'/'dim' missing or corrupt", path);
        return KVQ_ERR_FORMAT;
    }
    out->dim = (uint32_t)dim;
    return KVQ_OK;
}

static kvq_status compare(const kvq_config *cfg, const kvq_config *art, const char *path,
                          char *why, size_t why_size) {
    const char *want = kvq_method_name(cfg->method), *have = kvq_method_name(art->method);
    if (cfg->method != art->method) {
        kvqi_set_msg(why, why_size, "artifact %s was made for method %s, not %s", path,
                     have ? have : "?", want ? want : "?");
        return KVQ_ERR_MISMATCH;
    }
    if (cfg->dim != art->dim) {
        kvqi_set_msg(why, why_size, "artifact %s was made for dim %u, not %u", path, art->dim,
                     cfg->dim);
        return KVQ_ERR_MISMATCH;
    }
    if (cfg->bits != art->bits || cfg->sub_dim != art->sub_dim ||
        cfg->n_codebooks != art->n_codebooks || cfg->rope_base != art->rope_base ||
        cfg->rope_pairing != art->rope_pairing) {
        kvq_config c = *art;
        c.seed = cfg->seed;
        char spec[1200];
        if (kvq_config_format(&c, spec, sizeof spec) != KVQ_OK) spec[0] = 0;
        kvqi_set_msg(why, why_size, "artifact %s was made for '%s' (dim %u): give those keys",
                     path, spec, art->dim);
        return KVQ_ERR_MISMATCH;
    }
    return KVQ_OK;
}

kvq_status kvqi_artifact_open(const kvq_config *cfg, kvqi_st_file **f, uint64_t *seed) {
    *f = NULL;
    kvq_status st = kvqi_st_read(cfg->artifact, f);
    if (st != KVQ_OK) return st;
    kvq_config art;
    st = artifact_config(*f, cfg->artifact, &art, NULL, 0);
    if (st == KVQ_OK) st = compare(cfg, &art, cfg->artifact, NULL, 0);
    if (st != KVQ_OK) {
        kvqi_st_free(*f);
        *f = NULL;
        return st;
    }
    *seed = art.seed;
    return KVQ_OK;
}

kvq_status kvqi_artifact_check(const kvq_config *cfg, char *why, size_t why_size) {
    if (!cfg->artifact[0]) return KVQ_OK;
    kvqi_st_file *f;
    kvq_status st = kvqi_st_read(cfg->artifact, &f);
    if (st != KVQ_OK) {
        kvqi_set_msg(why, why_size, "artifact %s: %s", cfg->artifact, kvqi_st_read_why(cfg->artifact, st));
        return st;
    }
    kvq_config art;
    st = artifact_config(f, cfg->artifact, &art, why, why_size);
    if (st == KVQ_OK) st = compare(cfg, &art, cfg->artifact, why, why_size);
    if (st == KVQ_OK && strcmp(meta_or(f, "method"), kvq_method_name(cfg->method)) != 0) {
        kvqi_set_msg(why, why_size, "artifact %s: metadata method '%s' disagrees with its spec",
                     cfg->artifact, meta_or(f, "method"));
        st = KVQ_ERR_FORMAT;
    }
    kvqi_st_free(f);
    return st;
}

/* ------------------------------------------------------ calibration keys */

KVQ_API void kvq_buffer_free(void *p) { kvqi_free(p); }

KVQ_API kvq_status kvq_tensor_read_f32(const char *path, const char *name, float **data,
                                       size_t *rows, size_t *cols, char *msg, size_t msg_size) {
    if (msg && msg_size) msg[0] = 0;
    if (!path || !data || !rows || !cols) return KVQ_ERR_INVALID_ARG;
    *data = NULL;
    *rows = *cols = 0;
    kvqi_st_file *f;
    kvq_status st = kvqi_st_read(path, &f);
    if (st != KVQ_OK) {
        kvqi_set_msg(msg, msg_size, "%s: %s", path, kvqi_st_read_why(path, st));
        return st;
    }
    const kvqi_st_tensor *t = NULL;
    if (name) {
        t = kvqi_st_find(f, name);
    } else if (kvqi_st_count(f) == 1) {
        t = kvqi_st_at(f, 0);
    } else {
        t = kvqi_st_find(f, "keys");
    }
    if (!t) {
        kvqi_set_msg(msg, msg_size, "%s: no tensor '%s' (%zu tensors in the file)", path,
                     name ? name : "keys", kvqi_st_count(f));
        kvqi_st_free(f);
        return KVQ_ERR_FORMAT;
    }
    if (t->ndim != 2 || t->shape[0] == 0 || t->shape[1] == 0 ||
        (t->dtype != KVQI_F32 && t->dtype != KVQI_F16 && t->dtype != KVQI_BF16)) {
        kvqi_set_msg(msg, msg_size, "%s: tensor '%s' must be 2-D [rows][cols] of F32, F16 or BF16",
                     path, t->name);
        kvqi_st_free(f);
        return KVQ_ERR_FORMAT;
    }
    size_t r = (size_t)t->shape[0], c = (size_t)t->shape[1], n;
    if (t->shape[0] > SIZE_MAX || t->shape[1] > SIZE_MAX || kvqi_mul_size(r, c, &n) != KVQ_OK) {
        kvqi_st_free(f);
        return KVQ_ERR_OVERFLOW;
    }
    float *out = kvqi_alloc_array(n, sizeof(float));
    if (!out) {
        kvqi_st_free(f);
        return KVQ_ERR_NOMEM;
    }
    const uint8_t *src = t->data;
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == KVQI_F32) {
            memcpy(&out[i], src + 4 * i, 4);
        } else {
            uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
            out[i] = t->dtype == KVQI_F16 ? kvqi_fp16_to_fp32(h) : kvqi_bf16_to_fp32(h);
        }
        if (!isfinite(out[i])) {
            kvqi_set_msg(msg, msg_size, "%s: tensor '%s' holds a non-finite value at %zu", path,
                         t->name, i);
            kvqi_free(out);
            kvqi_st_free(f);
            return KVQ_ERR_FORMAT;
        }
    }
    kvqi_st_free(f);
    *data = out;
    *rows = r;
    *cols = c;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_tensor_write_f32(const char *path, const char *name, const float *data,
                                        size_t rows, size_t cols) {
    if (!path || !name || !data || rows == 0 || cols == 0) return KVQ_ERR_INVALID_ARG;
    if (strlen(name) >= KVQI_ST_MAX_NAME) return KVQ_ERR_INVALID_ARG;
    size_t n, bytes;
    if (kvqi_mul_size(rows, cols, &n) != KVQ_OK || kvqi_mul_size(n, sizeof(float), &bytes) != KVQ_OK)
        return KVQ_ERR_OVERFLOW;
    kvqi_st_tensor t = kvqi_tensor_f32(name, data, rows, cols);
    t.nbytes = bytes;
    const kvqi_st_meta meta[] = {{"format", "kvq.tensor"}};
    return kvqi_st_write(path, &t, 1, meta, 1);
}
