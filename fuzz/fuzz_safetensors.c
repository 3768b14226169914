/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors reader (kvqi_st_read_mem):
 * any bytes give a status, never a crash, and an accepted file's tensors lie inside it
 * with sizes consistent with their dtype and shape (every byte is read to prove it).
 */
#include <stdint.h>
#include <string.h>

#include "core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvqi_st_file *f = NULL;
    if (kvqi_st_read_mem(data, size, &f) != KVQ_OK) {
        if (f) __builtin_trap(); /* a failed read must not hand out a file */
        return 0;
    }
    size_t n = kvqi_st_count(f);
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < n; i++) {
        const kvqi_st_tensor *t = kvqi_st_at(f, i);
        if (!t || t->dtype >= KVQI_DTYPE_COUNT || t->ndim > KVQI_ST_MAX_DIMS) __builtin_trap();
        if (!memchr(t->name, '\0', sizeof t->name)) __builtin_trap();
        size_t count = 1;
        for (uint32_t d = 0; d < t->ndim; d++)
            if (kvqi_mul_size(count, (size_t)t->shape[d], &count) != KVQ_OK) __builtin_trap();
        size_t bytes;
        if (kvqi_mul_size(count, kvqi_dtype_size(t->dtype), &bytes) != KVQ_OK) __builtin_trap();
        if (bytes != t->nbytes) __builtin_trap(); /* size disagrees with dtype x shape */
        const uint8_t *p = t->data;
        for (size_t b = 0; b < t->nbytes; b++) sink ^= p[b];
        if (kvqi_st_find(f, t->name) != t) __builtin_trap(); /* names are unique */
    }
    if (kvqi_st_at(f, n) != NULL) __builtin_trap();
    const char *v = kvqi_st_meta_get(f, "method");
    if (v) sink ^= (uint8_t)strlen(v);
    kvqi_st_free(f);
    (void)sink;
    return 0;
}
