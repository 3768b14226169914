/* test_cpu.c - dispatch and base kernels: every ISA matches the scalar reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "test.h"

static void fill(float *x, size_t n, unsigned seed) {
    srand(seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
}

TEST(cpu_isa_resolves) {
    kvq_isa isa;
    REQUIRE_OK(kvqi_isa_resolve(KVQ_ISA_AUTO, &isa));
    CHECK(kvq_isa_available(isa));
    CHECK(kvq_isa_available(KVQ_ISA_SCALAR));
    CHECK(strcmp(kvq_cpu_isa(), kvqi_isa_name(isa)) == 0);
}

/* KVQ_FORCE_AVX2=1 and KVQ_FORCE_SCALAR=1 steer AUTO in a new process (detection runs
 * once): the CLI names the kernels it resolved to. */
TEST(cpu_isa_forced_by_environment) {
    static const struct { const char *env, *want; int needs_avx2; } cases[] = {
        {"KVQ_FORCE_SCALAR=1", "(kernels: scalar)", 0}, {"KVQ_FORCE_AVX2=1", "(kernels: avx2)", 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].needs_avx2 && !kvq_isa_available(KVQ_ISA_AVX2)) continue;
        char cmd[1024], line[256] = {0};
        snprintf(cmd, sizeof cmd, "%s %s --version", cases[i].env, kvqt_cli_path());
        FILE *p = popen(cmd, "r");
        REQUIRE(p);
        if (!fgets(line, sizeof line, p)) line[0] = 0;
        CHECK(pclose(p) == 0);
        CHECKF(strstr(line, cases[i].want) != NULL, "%s: '%s'", cases[i].env, line);
    }
}

TEST(cpu_simd_fwht_dot_match_scalar) {
    static const uint32_t fw_n[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
    static const size_t dot_n[] = {1, 3, 15, 16, 17, 64, 96, 100, 128, 256, 576, 1000};
    float a[1024], b[1024], ref[1024];
    for (int isa = KVQ_ISA_AVX2; isa <= KVQ_ISA_NEON; isa++) {
        if (!kvq_isa_available((kvq_isa)isa)) continue;
        const kvqi_base_kernels *k = kvqi_base_kernels_for((kvq_isa)isa);
        for (size_t t = 0; t < sizeof fw_n / sizeof fw_n[0]; t++) {
            uint32_t n = fw_n[t];
            fill(a, n, 7 + n);
            memcpy(ref, a, n * sizeof(float));
            kvqi_fwht_scalar(ref, n);
            k->fwht(a, n);
            CHECKF(memcmp(a, ref, n * sizeof(float)) == 0, "fwht %s n=%u not bit-identical",
                   kvqi_isa_name((kvq_isa)isa), n);
        }
        for (size_t t = 0; t < sizeof dot_n / sizeof dot_n[0]; t++) {
            size_t n = dot_n[t];
            fill(a, n, 11 + (unsigned)n);
            fill(b, n, 13 + (unsigned)n);
            float r = kvqi_dot_scalar(a, b, n), s = k->dot(a, b, n);
            CHECKF(memcmp(&r, &s, sizeof r) == 0, "dot %s n=%zu: %.9g vs %.9g",
                   kvqi_isa_name((kvq_isa)isa), n, s, r);
        }
    }
}
