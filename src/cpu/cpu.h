/*
 * cpu.h - CPU features detected once, and the base kernels (FWHT, dot) per ISA.
 * Every kernel has a scalar reference (*_scalar) that the SIMD versions must match.
 * ISA levels: AVX2 = AVX2+FMA+F16C; AVX512 = F+BW+VL+DQ+VPOPCNTDQ (Ice Lake, Zen 4 and
 * later; earlier AVX-512 parts run the AVX2 kernels); NEON = AArch64 Advanced SIMD.
 */
#ifndef KVQ_CPU_H
#define KVQ_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "kvq.h"

typedef struct kvqi_cpu_features {
    int avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512dq, avx512vpopcntdq;
    int avxvnni; /* 256-bit VEX vpdpwssd / vpdpbusd (AVX-VNNI); 0 with KVQ_NO_AVXVNNI=1 */
    int neon;
    int force_scalar; /* KVQ_FORCE_SCALAR=1 at start-up */
} kvqi_cpu_features;

/* Detected once (thread-safe), then read-only. */
const kvqi_cpu_features *kvqi_cpu(void);

/* AUTO -> the best ISA here (SCALAR if KVQ_FORCE_SCALAR=1). A named ISA the CPU or
 * build lacks -> KVQ_ERR_UNSUPPORTED. */
kvq_status kvqi_isa_resolve(kvq_isa requested, kvq_isa *resolved);
const char *kvqi_isa_name(kvq_isa isa);

/* The canonical reduction order shared by every ISA, so results are bit-identical:
 * 16 partial sums, lane j accumulates elements j, j+16, j+32, ... with a multiply then
 * an add (no FMA), then lanes fold j += j+8, j += j+4, j += j+2, j += j+1. */
#define KVQI_DOT_LANES 16

typedef struct kvqi_base_kernels {
    kvq_isa isa;
    /* In-place unnormalized Walsh-Hadamard transform, n a power of two. Same butterfly
     * order on every ISA, so results are bit-identical. */
    void (*fwht)(float *x, uint32_t n);
    /* Dot product in the canonical order above. */
    float (*dot)(const float *a, const float *b, size_t n);
} kvqi_base_kernels;

/* Kernels for a resolved ISA (never NULL for a resolved ISA). */
const kvqi_base_kernels *kvqi_base_kernels_for(kvq_isa resolved);

/* Scalar references (also used directly by tests). */
void kvqi_fwht_scalar(float *x, uint32_t n);
float kvqi_dot_scalar(const float *a, const float *b, size_t n);

#endif /* KVQ_CPU_H */
