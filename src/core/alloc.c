/* alloc.c - checked, 64-byte aligned allocation (cache lines, AVX-512 loads). */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

void *kvqi_alloc_array(size_t count, size_t size) {
    size_t bytes;
    if (kvqi_mul_size(count, size, &bytes) != KVQ_OK) return NULL;
    if (bytes == 0) bytes = 1;
    /* round up to the alignment, as aligned_alloc requires */
    if (bytes > SIZE_MAX - 63) return NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes);
}

void *kvqi_calloc_array(size_t count, size_t size) {
    size_t bytes;
    if (kvqi_mul_size(count, size, &bytes) != KVQ_OK) return NULL;
    void *p = kvqi_alloc_array(count, size);
    if (p) memset(p, 0, bytes ? bytes : 1);
    return p;
}

void kvqi_free(void *p) { free(p); }
