/*
 * fuzz_index.c - libFuzzer target for the index loader (kvq_index_load_buffer): any
 * bytes give a status, never a crash. The input is tried as it is and again with its
 * CRC-32 trailer recomputed, so that mutations reach the field checks behind the
 * checksum; an index that loads is then searched, counted and measured.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "index/index_internal.h"

static void exercise(const kvq_index *ix) {
    uint64_t n = 0, bytes = 0;
    if (kvq_index_count(ix, &n) != KVQ_OK || kvq_index_size_bytes(ix, &bytes) != KVQ_OK)
        __builtin_trap();
    kvq_index_config cfg;
    kvq_index_get_config(ix, &cfg);
    float *q = calloc(cfg.dim, sizeof(float));
    if (!q) return;
    for (uint32_t i = 0; i < cfg.dim; i++) q[i] = (float)((i * 7919u) % 13u) - 6.0f;
    int64_t ids[4];
    float dists[4];
    kvq_index_search_params p;
    kvq_index_search_params_init(&p);
    p.nprobe = 3;
    if (kvq_index_search(ix, q, 1, 4, &p, ids, dists) == KVQ_OK)
        for (int i = 1; i < 4; i++) /* results come back in order, padding last */
            if (ids[i] != -1 && (ids[i - 1] == -1 || dists[i] < dists[i - 1])) __builtin_trap();
    free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvq_index *ix = NULL;
    if (kvq_index_load_buffer(data, size, &ix) == KVQ_OK) {
        exercise(ix);
        kvq_index_free(ix);
    } else if (ix) {
        __builtin_trap(); /* a failed load must not hand out an index */
    }
    if (size < 12 + 8) return 0;
    uint8_t *fixed = malloc(size);
    if (!fixed) return 0;
    memcpy(fixed, data, size);
    memcpy(fixed, "KVQINDEX", 8);
    memcpy(fixed + size - 8, "KVQIEND!", 8);
    uint32_t crc = kvqi_crc32(0, fixed, size - 12);
    memcpy(fixed + size - 12, &crc, 4);
    ix = NULL;
    if (kvq_index_load_buffer(fixed, size, &ix) == KVQ_OK) {
        exercise(ix);
        kvq_index_free(ix);
    } else if (ix) {
        __builtin_trap();
    }
    free(fixed);
    return 0;
}
