/* cpu.c - CPU features detected once at first use (the only global state), ISA
 * resolution, and the scalar reference kernels. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"

#if defined(KVQ_HAVE_X86_SIMD)
#include <cpuid.h>
#endif

static kvqi_cpu_features g_features;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

#if defined(KVQ_HAVE_X86_SIMD)
static unsigned long long read_xcr0(void) {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}
#endif

/* An environment switch: set, not empty and not "0". */
static int env_on(const char *name) {
    const char *v = getenv(name);
    return v && v[0] && strcmp(v, "0") != 0;
}

static void detect(void) {
    kvqi_cpu_features f;
    memset(&f, 0, sizeof f);
#if defined(KVQ_HAVE_X86_SIMD)
    unsigned int a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        int osxsave = (c >> 27) & 1;
        int avx = (c >> 28) & 1;
        f.fma = (c >> 12) & 1;
        f.f16c = (c >> 29) & 1;
        unsigned long long xcr0 = osxsave ? read_xcr0() : 0;
        int ymm_ok = avx && (xcr0 & 0x6) == 0x6;
        int zmm_ok = ymm_ok && (xcr0 & 0xe0) == 0xe0;
        if (__get_cpuid_max(0, NULL) >= 7) {
            __cpuid_count(7, 0, a, b, c, d);
            unsigned int max_sub = a;
            f.avx2 = ymm_ok && ((b >> 5) & 1);
            f.avx512f = zmm_ok && ((b >> 16) & 1);
            f.avx512dq = zmm_ok && ((b >> 17) & 1);
            f.avx512bw = zmm_ok && ((b >> 30) & 1);
            f.avx512vl = zmm_ok && ((b >> 31) & 1);
            f.avx512vpopcntdq = zmm_ok && ((c >> 14) & 1);
            if (max_sub >= 1) { /* leaf 7, subleaf 1: EAX bit 4, AVX-VNNI */
                __cpuid_count(7, 1, a, b, c, d);
                f.avxvnni = ymm_ok && ((a >> 4) & 1);
            }
        }
        if (!ymm_ok) f.fma = f.f16c = 0;
    }
#endif
#if defined(KVQ_HAVE_NEON)
    f.neon = 1;
#endif
    f.force_scalar = env_on("KVQ_FORCE_SCALAR");
    /* KVQ_FORCE_AVX2=1: an AVX-512 CPU taken as AVX2 only (AUTO resolves to AVX2), to run
     * and time the AVX2 kernels where both exist */
    if (env_on("KVQ_FORCE_AVX2")) f.avx512f = f.avx512dq = f.avx512bw = f.avx512vl = f.avx512vpopcntdq = 0;
    /* KVQ_NO_AVXVNNI=1: the AVX2 kernels without their AVX-VNNI builds (the same bits) */
    if (env_on("KVQ_NO_AVXVNNI")) f.avxvnni = 0;
    g_features = f;
}

const kvqi_cpu_features *kvqi_cpu(void) {
    pthread_once(&g_once, detect);
    return &g_features;
}

static int isa_ok(kvq_isa isa) {
    const kvqi_cpu_features *f = kvqi_cpu();
    switch (isa) {
    case KVQ_ISA_SCALAR: return 1;
    case KVQ_ISA_AVX2: return f->avx2 && f->fma && f->f16c;
    case KVQ_ISA_AVX512:
        return f->avx2 && f->fma && f->f16c && f->avx512f && f->avx512bw && f->avx512vl &&
               f->avx512dq && f->avx512vpopcntdq;
    case KVQ_ISA_NEON: return f->neon;
    default: return 0;
    }
}

KVQ_API int kvq_isa_available(kvq_isa isa) { return isa_ok(isa); }

kvq_status kvqi_isa_resolve(kvq_isa requested, kvq_isa *resolved) {
    if (!resolved) return KVQ_ERR_INVALID_ARG;
    if (requested == KVQ_ISA_AUTO) {
        if (kvqi_cpu()->force_scalar) *resolved = KVQ_ISA_SCALAR;
        else if (isa_ok(KVQ_ISA_AVX512)) *resolved = KVQ_ISA_AVX512;
        else if (isa_ok(KVQ_ISA_AVX2)) *resolved = KVQ_ISA_AVX2;
        else if (isa_ok(KVQ_ISA_NEON)) *resolved = KVQ_ISA_NEON;
        else *resolved = KVQ_ISA_SCALAR;
        return KVQ_OK;
    }
    if (!isa_ok(requested)) return KVQ_ERR_UNSUPPORTED;
    *resolved = requested;
    return KVQ_OK;
}

const char *kvqi_isa_name(kvq_isa isa) {
    switch (isa) {
    case KVQ_ISA_AUTO: return "auto";
    case KVQ_ISA_SCALAR: return "scalar";
    case KVQ_ISA_AVX2: return "avx2";
    case KVQ_ISA_AVX512: return "avx512";
    case KVQ_ISA_NEON: return "neon";
    }
    return "unknown";
}

void kvqi_fwht_scalar(float *x, uint32_t n) {
    for (uint32_t h = 1; h < n; h <<= 1) {
        for (uint32_t i = 0; i < n; i += h << 1) {
            for (uint32_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
}

float kvqi_dot_scalar(const float *a, const float *b, size_t n) {
    float acc[KVQI_DOT_LANES] = {0};
    size_t i = 0;
    for (; i + KVQI_DOT_LANES <= n; i += KVQI_DOT_LANES)
        for (int j = 0; j < KVQI_DOT_LANES; j++) {
            float p = a[i + j] * b[i + j];
            acc[j] = acc[j] + p;
        }
    for (int j = 0; i + (size_t)j < n; j++) {
        float p = a[i + j] * b[i + j];
        acc[j] = acc[j] + p;
    }
    for (int w = KVQI_DOT_LANES / 2; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) acc[j] = acc[j] + acc[j + w];
    return acc[0];
}

static const kvqi_base_kernels k_scalar = {KVQ_ISA_SCALAR, kvqi_fwht_scalar, kvqi_dot_scalar};

/* ISA tables live in their own files (base_avx2.c, base_avx512.c, base_neon.c). */
#if defined(KVQ_HAVE_X86_SIMD)
extern const kvqi_base_kernels kvqi_base_avx2, kvqi_base_avx512;
#endif
#if defined(KVQ_HAVE_NEON)
extern const kvqi_base_kernels kvqi_base_neon;
#endif

const kvqi_base_kernels *kvqi_base_kernels_for(kvq_isa resolved) {
    switch (resolved) {
#if defined(KVQ_HAVE_X86_SIMD)
    case KVQ_ISA_AVX2: return &kvqi_base_avx2;
    case KVQ_ISA_AVX512: return &kvqi_base_avx512;
#endif
#if defined(KVQ_HAVE_NEON)
    case KVQ_ISA_NEON: return &kvqi_base_neon;
#endif
    default: return &k_scalar;
    }
}
