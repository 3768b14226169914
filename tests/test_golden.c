/*
 * test_golden.c - codes are the same bytes on every platform: for each method, a fixed
 * seed and a fixed input, the FNV-1a hash of the codes must equal the hash recorded on
 * x86-64 from the scalar reference (KVQ_FORCE_SCALAR=1), on every ISA this CPU runs.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

/*
 * Why a recorded value: the other tests compare SIMD with scalar on one machine, which
 * cannot notice that the scalar reference itself computes differently elsewhere (libm
 * differences, a compiler contracting a*b+c into an FMA on AArch64, long double, char
 * signedness). A hash taken once on x86-64 and checked under qemu-aarch64 does. The input
 * is exact small integers over 2^13 (no libm, no rounding), the seed is fixed, and the
 * hash covers all the bytes of N_VEC codes. When a method's code format changes on
 * purpose, print the new hashes on x86-64 with
 *     KVQ_FORCE_SCALAR=1 KVQ_GOLDEN_PRINT=1 build/kvq-tests portable_golden
 * and paste them here, saying why in the commit message.
 */
enum { N_VEC = 32, N_CALIB = 512 };
static const uint64_t k_seed = 20261123;

typedef struct golden {
    const char *spec;
    uint32_t dim;
    int calibrated; /* fit on the calibration set first */
    uint64_t hash;
} golden;

static const golden k_golden[] = {
    {"fp16", 128, 0, 0xdb97398408417b89ull},
    {"q8_0", 128, 0, 0xf456be974d080993ull},
    {"q4_0", 128, 0, 0x52e7394db29e4840ull},
    {"turboquant_mse:bits=1", 128, 0, 0x8b2fda42f02bbaa7ull},
    {"turboquant_mse:bits=2", 128, 0, 0x574aa94423af7fdcull},
    {"turboquant_mse:bits=4,rotate=dense", 128, 0, 0xbda7afd27137af6cull},
    {"turboquant_mse:bits=3", 96, 0, 0x0e3d3ae9546954b3ull},
    {"turboquant_prod:bits=3", 128, 0, 0xca614f5943bdf5bbull},
    {"turboquant_rvq:bits=1,residuals=2", 128, 0, 0x6c263cc2677e54c5ull},
    {"turboquant_rvq:bits=2,residuals=3", 128, 0, 0xf7ec7977cb89506dull},
    {"turboquant_rvq:bits=1,residuals=2", 96, 0, 0x858f2dc9eac5d45bull},
    {"qjl", 128, 0, 0x6916a4533afbb275ull},
    {"qjl:proj_dim=200", 96, 0, 0x82256efe891733f3ull},
    {"polarquant:bits=4", 128, 0, 0x90c9695fe92a77feull},
    {"rabitq:bits=1", 128, 0, 0xe2735951fe7cc0c9ull},
    {"rabitq:bits=4", 128, 0, 0x3d8c96fd7150f8ddull},
    {"rabitq:bits=1", 96, 0, 0x723206bd9e0ebb9dull},
    {"rabitq:bits=2,nlist=4", 128, 1, 0x445d66a45b7ed857ull},
};

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Exact dyadic values in [-4, 4): the same floats on every platform. */
static void fill_exact(float *x, size_t n, uint64_t seed) {
    uint64_t s = seed | 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((int32_t)((s >> 32) & 0xffff) - 32768) / 8192.0f;
    }
}

static kvq_status golden_hash(const golden *g, kvq_isa isa, const float *x, const float *calib,
                              uint64_t *hash) {
    kvq_config cfg;
    kvq_quantizer *q = NULL;
    uint8_t *codes = NULL;
    kvq_status st = kvq_config_parse(g->spec, g->dim, &cfg, NULL, 0);
    if (st != KVQ_OK) return st;
    cfg.seed = k_seed;
    cfg.isa = isa;
    st = kvq_quantizer_create(&cfg, &q);
    if (st == KVQ_OK && g->calibrated) st = kvq_quantizer_fit(q, calib, N_CALIB);
    if (st == KVQ_OK) {
        size_t cs = kvq_code_size(q);
        codes = malloc(cs * N_VEC);
        st = codes ? kvq_encode(q, x, N_VEC, codes) : KVQ_ERR_NOMEM;
        if (st == KVQ_OK) *hash = fnv1a(codes, cs * N_VEC);
    }
    free(codes);
    kvq_quantizer_free(q);
    return st;
}

TEST(portable_golden_codes_every_isa) {
    static const kvq_isa isas[] = {KVQ_ISA_SCALAR, KVQ_ISA_AVX2, KVQ_ISA_AVX512, KVQ_ISA_NEON};
    uint32_t max_dim = 0;
    for (size_t i = 0; i < sizeof k_golden / sizeof k_golden[0]; i++)
        if (k_golden[i].dim > max_dim) max_dim = k_golden[i].dim;
    float *x = malloc(sizeof(float) * N_VEC * max_dim);
    float *calib = malloc(sizeof(float) * N_CALIB * max_dim);
    REQUIRE(x && calib);
    const char *print = getenv("KVQ_GOLDEN_PRINT");
    int printing = print && print[0] == '1';
    for (size_t i = 0; i < sizeof k_golden / sizeof k_golden[0]; i++) {
        const golden *g = &k_golden[i];
        fill_exact(x, (size_t)N_VEC * g->dim, k_seed + g->dim);
        fill_exact(calib, (size_t)N_CALIB * g->dim, k_seed + 7 * g->dim);
        for (size_t a = 0; a < sizeof isas / sizeof isas[0]; a++) {
            if (!kvq_isa_available(isas[a])) continue;
            uint64_t h = 0;
            kvq_status st = golden_hash(g, isas[a], x, calib, &h);
            CHECKF(st == KVQ_OK, "%s dim %u isa %d: %s", g->spec, g->dim, (int)isas[a],
                   kvq_strerror(st));
            if (st != KVQ_OK) continue;
            if (printing) {
                if (isas[a] == KVQ_ISA_SCALAR)
                    printf("    {\"%s\", %u, %d, 0x%016llxull},\n", g->spec, g->dim,
                           g->calibrated, (unsigned long long)h);
                fflush(stdout);
                continue;
            }
            CHECKF(h == g->hash, "%s dim %u on isa %d: codes hash 0x%016llx, want 0x%016llx",
                   g->spec, g->dim, (int)isas[a], (unsigned long long)h,
                   (unsigned long long)g->hash);
        }
    }
    free(x);
    free(calib);
}
