/*
 * fuzz_quantizer.c - libFuzzer target for kvq_quantizer_load: any bytes as a saved
 * quantizer file give a status, never a crash; a file that loads must give a quantizer
 * that encodes, decodes and scores. The public loader reads paths, so each input goes
 * through one reused temporary file.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvq.h"

static char g_path[256];
static int g_fd = -1;

static void remove_temp(void) {
    if (g_path[0]) unlink(g_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("TMPDIR");
    snprintf(g_path, sizeof g_path, "%s/kvq-fuzz-quantizer-XXXXXX.safetensors",
             dir && *dir ? dir : "/tmp");
    g_fd = mkstemps(g_path, 12);
    if (g_fd < 0) {
        perror("fuzz_quantizer: mkstemps");
        return 1;
    }
    atexit(remove_temp);
    return 0;
}

static int write_input(const uint8_t *data, size_t size) {
    if (g_fd < 0 || ftruncate(g_fd, 0) != 0) return -1;
    size_t done = 0;
    while (done < size) {
        ssize_t w = pwrite(g_fd, data + done, size - done, (off_t)done);
        if (w <= 0) return -1;
        done += (size_t)w;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (write_input(data, size) != 0) return 0;
    kvq_quantizer *q = NULL;
    if (kvq_quantizer_load(g_path, &q) != KVQ_OK) {
        if (q) __builtin_trap(); /* a failed load must not hand out a quantizer */
        return 0;
    }
    kvq_config cfg;
    if (kvq_quantizer_config(q, &cfg) != KVQ_OK || cfg.dim == 0) __builtin_trap();
    size_t cs = kvq_code_size(q);
    if (cfg.dim <= 4096 && cs > 0 && cs <= (1u << 20)) {
        enum { N = 3 };
        float *x = malloc(sizeof(float) * N * cfg.dim);
        float *y = malloc(sizeof(float) * N * cfg.dim);
        uint8_t *codes = malloc(cs * N);
        float scores[N];
        if (x && y && codes) {
            for (size_t i = 0; i < (size_t)N * cfg.dim; i++)
                x[i] = (float)((int)(i * 131 % 29) - 14) * 0.1f;
            if (kvq_encode(q, x, N, codes) == KVQ_OK) {
                kvq_decode(q, codes, N, y);
                kvq_score(q, x, codes, N, scores);
            }
        }
        free(x);
        free(y);
        free(codes);
    }
    kvq_quantizer_free(q);
    return 0;
}
