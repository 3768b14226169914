/*
 * test_fuzz_regress.c - what the fuzzers taught, replayed by the ordinary suite (and so
 * under ASan, TSan and qemu too): the seed corpora still load with today's formats,
 * every truncation and byte flip of a saved quantizer is refused or survives cleanly,
 * and the inputs the fuzzers found problems with stay fixed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "test.h"

static uint8_t *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0, got;
    uint8_t chunk[4096];
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (n + got > cap) {
            size_t ncap = (n + got) * 2;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap = ncap;
        }
        memcpy(buf + n, chunk, got);
        n += got;
    }
    fclose(f);
    if (!buf) buf = malloc(1);
    *size = n;
    return buf;
}

static int write_file(const char *path, const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t w = n ? fwrite(b, 1, n, f) : 0;
    return fclose(f) == 0 && w == n;
}

/* Up to max file names of a corpus directory, sorted; 0 if it is absent. */
static size_t list_dir(const char *dir, char names[][512], size_t max) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        if (e->d_name[0] == '.') continue;
        if (strlen(dir) + strlen(e->d_name) + 2 > 512) continue;
        snprintf(names[n++], 512, "%.255s/%.255s", dir, e->d_name);
    }
    closedir(d);
    qsort(names, n, 512, (int (*)(const void *, const void *))strcmp);
    return n;
}

/* A quantizer that loads must also work: encode, decode and score a few vectors. */
static kvq_status exercise_quantizer(const kvq_quantizer *q) {
    kvq_config cfg;
    kvq_status st = kvq_quantizer_config(q, &cfg);
    if (st != KVQ_OK) return st;
    enum { N = 3 };
    size_t cs = kvq_code_size(q);
    float *x = malloc(sizeof(float) * N * cfg.dim), *y = malloc(sizeof(float) * N * cfg.dim);
    uint8_t *codes = malloc(cs * N + 1);
    float s[N];
    st = (x && y && codes) ? KVQ_OK : KVQ_ERR_NOMEM;
    for (size_t i = 0; st == KVQ_OK && i < (size_t)N * cfg.dim; i++) x[i] = (float)((int)(i % 23) - 11) * 0.125f;
    if (st == KVQ_OK) st = kvq_encode(q, x, N, codes);
    if (st == KVQ_OK) st = kvq_decode(q, codes, N, y);
    if (st == KVQ_OK) st = kvq_score(q, x, codes, N, s);
    free(x);
    free(y);
    free(codes);
    return st;
}

TEST(fuzz_seed_corpus_still_valid) {
    static char names[64][512];
    size_t nq = list_dir("fuzz/corpus/fuzz_quantizer", names, 64);
    if (nq == 0) SKIP("not run from the source tree (fuzz/corpus not found)");
    for (size_t i = 0; i < nq; i++) {
        kvq_quantizer *q = NULL;
        kvq_status st = kvq_quantizer_load(names[i], &q);
        CHECKF(st == KVQ_OK, "%s: %s (regenerate with make fuzz-corpus if the format changed)", names[i],
               kvq_strerror(st));
        if (st == KVQ_OK) {
            st = exercise_quantizer(q);
            CHECKF(st == KVQ_OK, "%s: loads but does not run: %s", names[i], kvq_strerror(st));
        }
        kvq_quantizer_free(q);
    }
    size_t ns = list_dir("fuzz/corpus/fuzz_safetensors", names, 64);
    CHECK(ns > 0);
    for (size_t i = 0; i < ns; i++) {
        size_t size = 0;
        uint8_t *b = slurp(names[i], &size);
        REQUIRE(b);
        kvqi_st_file *f = NULL;
        kvq_status st = kvqi_st_read_mem(b, size, &f);
        CHECKF(st == KVQ_OK, "%s: %s", names[i], kvq_strerror(st));
        kvqi_st_free(f);
        free(b);
    }
    size_t nc = list_dir("fuzz/corpus/fuzz_config", names, 64);
    size_t parsed = 0;
    for (size_t i = 0; i < nc; i++) {
        size_t size = 0;
        uint8_t *b = slurp(names[i], &size);
        REQUIRE(b);
        char spec[512];
        snprintf(spec, sizeof spec, "%.*s", (int)(size < 511 ? size : 511), (const char *)b);
        kvq_config cfg;
        char msg[256] = "";
        kvq_status st = kvq_config_parse(spec, 128, &cfg, msg, sizeof msg);
        /* methods this build lacks say so; a named artifact that is not there, too */
        int fine = st == KVQ_OK || st == KVQ_ERR_UNSUPPORTED || (strstr(spec, "artifact=") && st == KVQ_ERR_IO);
        CHECKF(fine, "%s: \"%s\": %s (%s)", names[i], spec, kvq_strerror(st), msg);
        parsed += st == KVQ_OK;
        if (st == KVQ_OK) { /* what parses formats back to a spec that parses to the same text
                              * (fuzz_config found channel keys formatted with rope_base=0) */
            char text[1024], text2[1024];
            kvq_config again;
            CHECK_OK(kvq_config_format(&cfg, text, sizeof text));
            kvq_status st2 = kvq_config_parse(text, 128, &again, msg, sizeof msg);
            CHECKF(st2 == KVQ_OK, "%s: \"%s\" formats as \"%s\", which does not parse: %s", names[i], spec, text, msg);
            if (st2 == KVQ_OK) {
                CHECK_OK(kvq_config_format(&again, text2, sizeof text2));
                CHECKF(!strcmp(text, text2), "%s: \"%s\" -> \"%s\" -> \"%s\"", names[i], spec, text, text2);
            }
        }
        free(b);
    }
    CHECKF(parsed >= 20, "only %zu of %zu config seeds parse", parsed, nc);
}

/* Every prefix of a saved quantizer is refused with a status; every single-byte change
 * is refused or gives a quantizer that still runs. One file per method. */
TEST(fuzz_truncated_and_flipped_quantizers_refused_cleanly) {
    static char names[64][512];
    size_t nq = list_dir("fuzz/corpus/fuzz_quantizer", names, 64);
    if (nq == 0) SKIP("not run from the source tree (fuzz/corpus not found)");
    char path[600];
    snprintf(path, sizeof path, "%.500s/q.safetensors", kvqt_tmpdir(kvqt_));
    for (size_t i = 0; i < nq; i++) {
        if (!strstr(names[i], "_d24") && !strstr(names[i], "q4_0") && !strstr(names[i], "q8_0")) continue;
        size_t size = 0;
        uint8_t *b = slurp(names[i], &size);
        REQUIRE(b);
        int accepted_prefix = 0, broken = 0;
        size_t step = size / 40 > 11 ? size / 40 : 11; /* every byte of the length, then samples */
        for (size_t len = 0; len < size; len += (len < 48 ? 1 : step)) {
            REQUIRE(write_file(path, b, len));
            kvq_quantizer *q = NULL;
            if (kvq_quantizer_load(path, &q) == KVQ_OK) accepted_prefix++;
            kvq_quantizer_free(q);
        }
        CHECKF(accepted_prefix == 0, "%s: %d truncated copies were accepted", names[i], accepted_prefix);
        /* header bytes (the JSON and its length) are where parsers go wrong */
        size_t flips = size < 64 ? size : 64;
        for (size_t pos = 0; pos < flips; pos++) {
            uint8_t keep = b[pos];
            b[pos] = (uint8_t)(keep ^ (pos % 2 ? 0x01 : 0x80));
            REQUIRE(write_file(path, b, size));
            kvq_quantizer *q = NULL;
            if (kvq_quantizer_load(path, &q) == KVQ_OK && exercise_quantizer(q) != KVQ_OK) broken++;
            kvq_quantizer_free(q);
            b[pos] = keep;
        }
        CHECKF(broken == 0, "%s: %d altered files loaded but then failed to run", names[i], broken);
        free(b);
    }
}
