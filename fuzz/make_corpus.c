/*
 * make_corpus.c - writes the fuzzers' seed corpora with the library itself, so every
 * seed is a valid input of today's formats: spec strings (fuzz_config), saved quantizers
 * of every method (fuzz_quantizer, also fuzz_safetensors) and safetensors files of every
 * dtype (fuzz_safetensors). Usage: make_corpus DIR  (writes DIR/<target>/...).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"

static int make_dir(const char *path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_corpus: mkdir %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int write_text(const char *dir, const char *name, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
    char buf[65536];
    size_t n;
    int ok = a && b;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0) ok = fwrite(buf, 1, n, b) == n;
    if (a) fclose(a);
    if (b && fclose(b) != 0) ok = 0;
    return ok ? 0 : -1;
}

/* Hand-typed specs beside the canonical ones: the spellings users type. */
static const char *k_specs[] = {
    "turboquant_rvq:bits=1,residuals=2", "rvq:bits=2,residuals=2", "mse:bits=2",
    "turboquant_mse:bits=4,rotate=2", "turboquant_prod:bits=3", "qjl", "qjl:proj_dim=256",
    "polar:bits=4", "polarquant:bits=3", "rabitq:bits=1", "rabitq:bits=4,query_bits=32",
    "rabitq:bits=8,split=1,eps0=1.9", "rabitq:bits=1,nlist=64", "fp16", "q8_0", "q4_0",
    "vecinfer:sub_dim=8", "spectral:bits=2", "comm_vq:n_codebooks=4", "mse:bits=2,seed=42",
    "vecinfer:artifact=calib.safetensors",
};

static int config_corpus(const char *dir) {
    char name[64];
    int n = 0;
    for (size_t i = 0; i < sizeof k_specs / sizeof k_specs[0]; i++) {
        snprintf(name, sizeof name, "typed_%02zu", i);
        if (write_text(dir, name, k_specs[i]) == 0) n++;
    }
    for (int m = KVQ_METHOD_FP16; m < KVQ_METHOD_COUNT; m++) {
        kvq_config cfg;
        char text[1024];
        if (kvq_config_init(&cfg, (kvq_method)m, 128) != KVQ_OK) continue;
        cfg.seed = 1234;
        if (kvq_config_format(&cfg, text, sizeof text) != KVQ_OK) continue;
        snprintf(name, sizeof name, "canonical_%s", kvq_method_name((kvq_method)m));
        if (write_text(dir, name, text) == 0) n++;
    }
    return n;
}

/* A saved quantizer of every method, at small dims (including one that is not a power
 * of two) so the seeds stay small and the fuzzer runs fast. */
static int quantizer_corpus(const char *qdir, const char *stdir) {
    static const uint32_t dims[] = {32, 24};
    enum { CALIB = 256, MAX_DIM = 32 };
    float *calib = malloc(sizeof(float) * CALIB * MAX_DIM);
    if (!calib) return 0;
    kvqi_rng rng;
    kvqi_rng_seed(&rng, 5);
    for (size_t i = 0; i < (size_t)CALIB * MAX_DIM; i++) calib[i] = (float)kvqi_rng_normal(&rng);
    int n = 0;
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        for (int m = KVQ_METHOD_FP16; m < KVQ_METHOD_COUNT; m++) {
            kvq_config cfg;
            kvq_quantizer *q = NULL;
            char path[1024], copy[1024];
            if (kvq_config_init(&cfg, (kvq_method)m, dims[d]) != KVQ_OK) continue;
            cfg.seed = 99;
            if (m == KVQ_METHOD_RABITQ && d == 1) cfg.nlist = 4;
            if (kvq_quantizer_create(&cfg, &q) != KVQ_OK) continue;
            kvq_status st = kvq_quantizer_fit(q, calib, CALIB);
            (void)st; /* uncalibrated methods may refuse or ignore fit */
            snprintf(path, sizeof path, "%s/%s_d%u.safetensors", qdir,
                     kvq_method_name((kvq_method)m), dims[d]);
            if (kvq_quantizer_save(q, path) == KVQ_OK) {
                n++;
                snprintf(copy, sizeof copy, "%s/quantizer_%s_d%u.safetensors", stdir,
                         kvq_method_name((kvq_method)m), dims[d]);
                if (copy_file(path, copy) != 0) fprintf(stderr, "make_corpus: copy %s failed\n", copy);
            } else {
                fprintf(stderr, "make_corpus: %s d=%u could not be saved\n",
                        kvq_method_name((kvq_method)m), dims[d]);
            }
            kvq_quantizer_free(q);
        }
    free(calib);
    return n;
}

/* One tensor of every dtype, shapes of rank 0..3, metadata, and an empty file. */
static int safetensors_corpus(const char *dir) {
    static uint8_t bytes[4096];
    for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (uint8_t)(i * 29 + 7);
    kvqi_st_tensor t[KVQI_DTYPE_COUNT + 1];
    memset(t, 0, sizeof t);
    for (int d = 0; d < KVQI_DTYPE_COUNT; d++) {
        snprintf(t[d].name, sizeof t[d].name, "t%d", d);
        t[d].dtype = (kvqi_dtype)d;
        t[d].ndim = (uint32_t)(d % 4);
        size_t count = 1;
        for (uint32_t k = 0; k < t[d].ndim; k++) {
            t[d].shape[k] = 2 + k;
            count *= t[d].shape[k];
        }
        t[d].data = bytes;
        t[d].nbytes = count * kvqi_dtype_size((kvqi_dtype)d);
    }
    /* a zero-length tensor */
    snprintf(t[KVQI_DTYPE_COUNT].name, sizeof t[0].name, "empty");
    t[KVQI_DTYPE_COUNT].dtype = KVQI_F32;
    t[KVQI_DTYPE_COUNT].ndim = 2;
    t[KVQI_DTYPE_COUNT].shape[0] = 0;
    t[KVQI_DTYPE_COUNT].shape[1] = 5;
    t[KVQI_DTYPE_COUNT].data = bytes;
    t[KVQI_DTYPE_COUNT].nbytes = 0;
    kvqi_st_meta meta[] = {{"method", "turboquant_rvq"}, {"format", "kvq"}, {"note", "a \"quoted\" \\ value"}};
    char path[1024];
    int n = 0;
    snprintf(path, sizeof path, "%s/all_dtypes.safetensors", dir);
    if (kvqi_st_write(path, t, KVQI_DTYPE_COUNT + 1, meta, 3) == KVQ_OK) n++;
    snprintf(path, sizeof path, "%s/one_tensor.safetensors", dir);
    if (kvqi_st_write(path, t, 1, NULL, 0) == KVQ_OK) n++;
    snprintf(path, sizeof path, "%s/no_tensors.safetensors", dir);
    if (kvqi_st_write(path, t, 0, meta, 1) == KVQ_OK) n++;
    return n;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    char cdir[900], qdir[900], sdir[900];
    snprintf(cdir, sizeof cdir, "%s/fuzz_config", argv[1]);
    snprintf(qdir, sizeof qdir, "%s/fuzz_quantizer", argv[1]);
    snprintf(sdir, sizeof sdir, "%s/fuzz_safetensors", argv[1]);
    if (make_dir(argv[1]) || make_dir(cdir) || make_dir(qdir) || make_dir(sdir)) return 1;
    int nc = config_corpus(cdir);
    int nq = quantizer_corpus(qdir, sdir);
    int ns = safetensors_corpus(sdir);
    printf("make_corpus: %d config specs, %d quantizer files, %d safetensors files\n", nc, nq, ns);
    return (nc > 0 && nq > 0 && ns > 0) ? 0 : 1;
}
