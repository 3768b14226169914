/*
 * cache_avx512.c - AVX-512 versions of the cache's fused attention kernels
 * (references in cache_scalar.c).
 */
#include <immintrin.h>
#include <string.h>

#include "cpu/cache_kernels.h"

void kvqi_cache_kernels_fill_avx512(kvqi_cache_kernels *k) { (void)k; }
