/*
 * fuzz_layer_set.c - libFuzzer target for the per-layer set manifest reader
 * (kvq_layer_set_check): any manifest bytes give a status, never a crash, and KVQ_OK
 * only for a manifest of this set's two files (their sizes and checksums, in order),
 * which sealing the same files must reproduce byte for byte.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvq.h"

static char g_dir[64], g_manifest[96], g_sealed[96], g_l0[96], g_l1[96];

static int write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(p, 1, n, f) == n;
    return (fclose(f) == 0) && ok;
}

static void cleanup(void) {
    unlink(g_manifest);
    unlink(g_sealed);
    unlink(g_l0);
    unlink(g_l1);
    rmdir(g_dir);
}

static int setup(void) {
    if (g_dir[0]) return 1;
    atexit(cleanup);
    snprintf(g_dir, sizeof g_dir, "/tmp/kvq-fuzz-layer-set-%ld", (long)getpid());
    char cmd[128];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", g_dir);
    if (system(cmd) != 0) return 0;
    snprintf(g_manifest, sizeof g_manifest, "%s/x.layers.manifest", g_dir);
    snprintf(g_sealed, sizeof g_sealed, "%s/sealed.manifest", g_dir);
    snprintf(g_l0, sizeof g_l0, "%s/x.layer00.safetensors", g_dir);
    snprintf(g_l1, sizeof g_l1, "%s/x.layer01.safetensors", g_dir);
    /* the same bytes as fuzz/corpus/layer_set/ lists */
    return write_file(g_l0, "a", 1) && write_file(g_l1, "bb", 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!setup() || !write_file(g_manifest, data, size)) return 0;
    const char *paths[2] = {g_l0, g_l1};
    char msg[512];
    kvq_status st = kvq_layer_set_check(g_manifest, paths, 2, msg, sizeof msg);
    if (!memchr(msg, '\0', sizeof msg)) __builtin_trap();
    if (st != KVQ_OK) return 0;
    /* accepted: the header must be there, and sealing gives a manifest that passes too */
    static const char head[] = "kvq.layer_set 1\nlayers 2\n";
    if (size < sizeof head - 1 || memcmp(data, head, sizeof head - 1) != 0) __builtin_trap();
    size_t lines = 0;
    for (size_t i = 0; i < size; i++) lines += data[i] == '\n';
    if (lines != 4 || data[size - 1] != '\n' || memchr(data, '\0', size)) __builtin_trap();
    if (kvq_layer_set_seal(g_sealed, paths, 2, msg, sizeof msg) != KVQ_OK ||
        kvq_layer_set_check(g_sealed, paths, 2, msg, sizeof msg) != KVQ_OK)
        __builtin_trap();
    return 0;
}
