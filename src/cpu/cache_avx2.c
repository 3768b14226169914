/*
 * cache_avx2.c - AVX2+FMA+F16C versions of the cache's fused attention kernels
 * (references in cache_scalar.c).
 */
#include <immintrin.h>
#include <string.h>

#include "cpu/cache_kernels.h"

void kvqi_cache_kernels_fill_avx2(kvqi_cache_kernels *k) { (void)k; }
