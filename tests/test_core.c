/* test_core.c - the shared maths: rng streams against an independent reference
 * (tests/ref/xoshiro_ref.py), fp16/bf16 rounding, bit packing, rotations (orthogonal,
 * bit-identical across ISAs), Lloyd-Max against the published Gaussian table, k-means,
 * Jacobi eigenvalues, safetensors round trips and rejection of corrupt files, and the
 * thread pool running every task exactly once. */
#include <float.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "test.h"

/* ------------------------------------------------------------------- rng */

TEST(core_rng_matches_reference) {
    /* from tests/ref/xoshiro_ref.py */
    static const struct {
        uint64_t seed, first[4];
    } ref[] = {
        {0, {0x99EC5F36CB75F2B4ULL, 0xBF6E1F784956452AULL, 0x1A5F849D4933E6E0ULL,
             0x6AA594F1262D2D2CULL}},
        {42, {0x15780B2E0C2EC716ULL, 0x6104D9866D113A7EULL, 0xAE17533239E499A1ULL,
              0xECB8AD4703B360A1ULL}},
        {0xDEADBEEFCAFEF00DULL, {0x9E32CFB5BB93EEBBULL, 0x16006BD9D4AC0014ULL,
                                 0x8ADA5D6D34B6538EULL, 0x7C327CA32346A238ULL}},
    };
    for (size_t i = 0; i < sizeof ref / sizeof ref[0]; i++) {
        kvqi_rng r;
        kvqi_rng_seed(&r, ref[i].seed);
        for (int k = 0; k < 4; k++) {
            uint64_t v = kvqi_rng_next(&r);
            CHECKF(v == ref[i].first[k], "seed %llx draw %d: %016llx want %016llx",
                   (unsigned long long)ref[i].seed, k, (unsigned long long)v,
                   (unsigned long long)ref[i].first[k]);
        }
    }
    kvqi_rng r;
    kvqi_rng_seed(&r, 7);
    CHECK(kvqi_rng_uniform(&r) == 0x1.66b1f5ee9df2ep-1);
    CHECK(kvqi_rng_uniform(&r) == 0x1.1d70f6593d20ap-2);
}

/* normals bit for bit against the Python reference (IEEE doubles there too) */
TEST(core_rng_normals_match_reference) {
    static const double first[6] = {0x1.9356a7a1bbe22p-1, -0x1.45648f30d6b8ep-1,
                                    0x1.430bd816b81ecp-4, 0x1.48298177b4179p-3,
                                    0x1.bc6e210b757c2p-1, 0x1.2750fef4397fdp-1};
    kvqi_rng r;
    kvqi_rng_seed(&r, 2024);
    for (int i = 0; i < 6; i++) {
        double z = kvqi_rng_normal(&r);
        CHECKF(memcmp(&z, &first[i], sizeof z) == 0, "normal %d: %a want %a", i, z, first[i]);
    }
    kvqi_rng_seed(&r, 2024);
    double acc = 0.0;
    for (int i = 0; i < 10000; i++) acc += kvqi_rng_normal(&r);
    CHECKF(acc == 0x1.501cee329fee3p+5, "sum of 10000 normals %a", acc);
}

TEST(core_rng_det_log_accurate) {
    kvqi_rng r;
    kvqi_rng_seed(&r, 1);
    double worst = 0.0;
    for (int i = 0; i < 200000; i++) {
        /* log-uniform over the whole range, subnormals included */
        double e = -1074.0 + 2097.0 * kvqi_rng_uniform(&r);
        double x = ldexp(1.0 + kvqi_rng_uniform(&r), (int)floor(e));
        if (x == 0.0 || isinf(x)) continue;
        double got = kvqi_det_log(x), want = log(x);
        double err = fabs(got - want) / fmax(fabs(want), 1e-300);
        if (err > worst) worst = err;
    }
    /* near 1, where log is small and relative accuracy is hardest */
    for (int i = -2000; i <= 2000; i++) {
        double x = 1.0 + i * 1e-9;
        if (x == 1.0) {
            CHECK(kvqi_det_log(x) == 0.0);
            continue;
        }
        double err = fabs(kvqi_det_log(x) - log(x)) / fabs(log(x));
        if (err > worst) worst = err;
    }
    CHECKF(worst < 1e-15, "worst relative error %.3g", worst);
    CHECK(isinf(kvqi_det_log(0.0)) && kvqi_det_log(0.0) < 0);
    CHECK(isnan(kvqi_det_log(-1.0)));
    CHECK(kvqi_det_log(2.0) == log(2.0));
}

TEST(core_rng_normal_and_below) {
    kvqi_rng r;
    kvqi_rng_seed(&r, 12345);
    const int n = 100000;
    double sum = 0, sum2 = 0, sum4 = 0;
    for (int i = 0; i < n; i++) {
        double z = kvqi_rng_normal(&r);
        sum += z;
        sum2 += z * z;
        sum4 += z * z * z * z;
    }
    double mean = sum / n, var = sum2 / n - mean * mean, kurt = sum4 / n;
    CHECK_NEAR(mean, 0.0, 0.02); /* 6 sigma */
    CHECK_NEAR(var, 1.0, 0.03);
    CHECK_NEAR(kurt, 3.0, 0.15);
    /* same seed, same stream */
    kvqi_rng a, b;
    kvqi_rng_seed(&a, 99);
    kvqi_rng_seed(&b, 99);
    for (int i = 0; i < 1000; i++) {
        double x = kvqi_rng_normal(&a), y = kvqi_rng_normal(&b);
        REQUIRE(memcmp(&x, &y, sizeof x) == 0);
    }
    /* below(n): every value reached, counts within 6 sigma, never out of range */
    unsigned counts[10] = {0};
    for (int i = 0; i < n; i++) {
        uint32_t v = kvqi_rng_below(&r, 10);
        REQUIRE(v < 10);
        counts[v]++;
    }
    for (int k = 0; k < 10; k++) CHECKF(abs((int)counts[k] - n / 10) < 600, "count[%d]=%u", k, counts[k]);
    CHECK(kvqi_rng_below(&r, 1) == 0);
    CHECK(kvqi_rng_below(&r, 0) == 0);
    uint32_t big = 0;
    for (int i = 0; i < 1000; i++) {
        uint32_t v = kvqi_rng_below(&r, 0xFFFFFFFFu);
        if (v > big) big = v;
    }
    CHECK(big > 0xF0000000u);
    /* seed_mix: deterministic, distinct per tag and per seed */
    CHECK(kvqi_seed_mix(1, 2) == kvqi_seed_mix(1, 2));
    CHECK(kvqi_seed_mix(1, 2) != kvqi_seed_mix(1, 3));
    CHECK(kvqi_seed_mix(1, 2) != kvqi_seed_mix(2, 2));
    CHECK(kvqi_seed_mix(0, 0) != 0);
}

/* ----------------------------------------------------------- fp16, bf16 */

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* binary16 decoded independently: (-1)^s * m * 2^(e-25) in double */
static double fp16_ref_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp((double)m, -24) : ldexp((double)(m | 1024), e - 25);
    return s ? -v : v;
}

TEST(core_fp16_all_patterns_round_trip) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kvqi_fp16_to_fp32((uint16_t)h);
        int e = (h >> 10) & 31, m = h & 1023;
        if (e == 31 && m) {
            REQUIRE(isnan(f));
            uint16_t back = kvqi_fp32_to_fp16(f);
            CHECKF(((back >> 10) & 31) == 31 && (back & 1023) && (back & 0x200),
                   "NaN %04x -> %04x not a quiet NaN", h, back);
            CHECK((back & 0x8000) == (h & 0x8000));
            if (h & 0x200) CHECKF(back == h, "quiet NaN %04x -> %04x", h, back);
            continue;
        }
        if (e == 31) CHECK(isinf(f) && ((h & 0x8000) ? f < 0 : f > 0));
        else CHECKF((double)f == fp16_ref_value((uint16_t)h), "decode %04x", h);
        uint16_t back = kvqi_fp32_to_fp16(f);
        CHECKF(back == h, "%04x -> %.9g -> %04x", h, f, back);
    }
}

TEST(core_fp16_rounding_cases) {
    static const struct {
        float f;
        uint16_t h;
    } cases[] = {
        {65504.0f, 0x7BFF},                  /* max finite */
        {65519.99609375f, 0x7BFF},           /* just below the halfway point */
        {65520.0f, 0x7C00},                  /* halfway: ties to even = inf */
        {1e10f, 0x7C00},
        {-1e10f, 0xFC00},
        {0x1p-24f, 0x0001},                  /* smallest subnormal */
        {0x1p-25f, 0x0000},                  /* halfway between 0 and 2^-24: even is 0 */
        {0x1.000002p-25f, 0x0001},           /* just above halfway */
        {0x1.8p-24f, 0x0002},                /* 1.5 ulp: tie to even 2 */
        {0x1.4p-23f, 0x0002},                /* 2.5 ulp: tie to even 2 */
        {0x1.cp-23f, 0x0004},                /* 3.5 ulp: tie to even 4 */
        {0x1p-14f, 0x0400},                  /* smallest normal */
        {0x1.ffcp-15f, 0x0400},              /* halfway between 0x3ff and 0x400 */
        {0x1.ff8p-15f, 0x03FF},              /* largest subnormal */
        {0x1.ff4p-15f, 0x03FE},              /* 1022.5 ulp: tie to even */
        {1.0f + 0x1p-11f, 0x3C00},           /* halfway, even stays */
        {1.0f + 0x1.8p-10f, 0x3C02},         /* 1.5 ulp: ties to 2 */
        {1.0f + 0x1.02p-11f, 0x3C01},         /* just above halfway */
        {-2.0f, 0xC000},
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1e-30f, 0x0000},
        {-1e-30f, 0x8000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = kvqi_fp32_to_fp16(cases[i].f);
        CHECKF(got == cases[i].h, "%a -> %04x want %04x", (double)cases[i].f, got, cases[i].h);
    }
    CHECK(kvqi_fp32_to_fp16(INFINITY) == 0x7C00);
    CHECK(kvqi_fp32_to_fp16(-INFINITY) == 0xFC00);
    uint16_t n = kvqi_fp32_to_fp16(NAN);
    CHECK((n & 0x7C00) == 0x7C00 && (n & 0x3FF));
    /* a signalling float NaN whose payload sits only in the low bits stays a NaN */
    n = kvqi_fp32_to_fp16(bitsf(0x7F800001u));
    CHECK((n & 0x7C00) == 0x7C00 && (n & 0x3FF));

    /* every finite float on a stride: nearest representable, ties to even */
    for (uint64_t u = 0; u < 0x7F800000u; u += 997) {
        for (int sign = 0; sign < 2; sign++) {
            float f = bitsf((uint32_t)u | (sign ? 0x80000000u : 0));
            uint16_t h = kvqi_fp32_to_fp16(f);
            double x = (double)f, fx = fabs(x);
            if (fx >= 65520.0) {
                REQUIRE((h & 0x7FFF) == 0x7C00);
                continue;
            }
            REQUIRE((h & 0x7FFF) < 0x7C00);
            double err = fabs(fp16_ref_value(h) - x);
            uint16_t mag = h & 0x7FFF;
            double up = mag < 0x7BFF ? fabs(fp16_ref_value((uint16_t)((h & 0x8000) | (mag + 1))) - x) : INFINITY;
            double down = mag > 0 ? fabs(fp16_ref_value((uint16_t)((h & 0x8000) | (mag - 1))) - x) : INFINITY;
            REQUIRE(err <= up && err <= down);
            if (err == up || err == down) REQUIRE((h & 1) == 0);
        }
    }
}

TEST(core_bf16_round_trip_and_rounding) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kvqi_bf16_to_fp32((uint16_t)h);
        CHECK(fbits(f) == h << 16);
        uint16_t back = kvqi_fp32_to_bf16(f);
        if (isnan(f)) CHECKF(isnan(kvqi_bf16_to_fp32(back)) && (back & 0x40), "NaN %04x -> %04x", h, back);
        else CHECKF(back == h, "%04x -> %04x", h, back);
    }
    CHECK(kvqi_fp32_to_bf16(1.0f + 0x1p-8f) == 0x3F80);      /* tie, even stays */
    CHECK(kvqi_fp32_to_bf16(1.0f + 0x1.8p-7f) == 0x3F82);    /* tie up to even */
    CHECK(kvqi_fp32_to_bf16(1.0f + 0x1.02p-8f) == 0x3F81);
    CHECK(kvqi_fp32_to_bf16(FLT_MAX) == 0x7F80);             /* rounds up past the max */
    CHECK(kvqi_fp32_to_bf16(-INFINITY) == 0xFF80);
    CHECK(kvqi_fp32_to_bf16(0x1p-133f) == 0x0001);           /* subnormal kept */
    uint16_t n = kvqi_fp32_to_bf16(bitsf(0x7F800001u));      /* payload only in low bits */
    CHECK(isnan(kvqi_bf16_to_fp32(n)));
}

/* ------------------------------------------------------------ bit packing */

TEST(core_bitpack_round_trip) {
    static const size_t ns[] = {0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 100, 127, 1001};
    uint8_t idx[1001], back[1001], packed[1001 + 16];
    kvqi_rng r;
    kvqi_rng_seed(&r, 3);
    for (unsigned b = 1; b <= 8; b++) {
        for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
            size_t n = ns[t];
            size_t ps = kvqi_packed_size(n, b);
            CHECKF(ps == (n * b + 7) / 8, "packed_size(%zu,%u)=%zu", n, b, ps);
            for (size_t i = 0; i < n; i++) idx[i] = (uint8_t)kvqi_rng_below(&r, 1u << b);
            memset(packed, 0xA5, sizeof packed);
            kvqi_pack_bits(idx, n, b, packed);
            CHECKF(packed[ps] == 0xA5, "b=%u n=%zu wrote past packed_size", b, n);
            /* layout: bit k of the stream is bit k%8 of byte k/8, index i at bits [i*b, i*b+b) */
            for (size_t i = 0; i < n; i++)
                for (unsigned j = 0; j < b; j++) {
                    size_t k = i * b + j;
                    REQUIRE(((packed[k / 8] >> (k % 8)) & 1) == ((idx[i] >> j) & 1));
                }
            for (size_t k = n * b; k < ps * 8; k++) CHECK(((packed[k / 8] >> (k % 8)) & 1) == 0);
            memset(back, 0xEE, sizeof back);
            kvqi_unpack_bits(packed, n, b, back);
            CHECKF(memcmp(idx, back, n) == 0, "b=%u n=%zu round trip", b, n);
            if (n < sizeof back) CHECK(back[n] == 0xEE);
        }
    }
}

/* ----------------------------------------------------- Hadamard rotation */

static void fill_normal(float *x, size_t n, uint64_t seed) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)kvqi_rng_normal(&r);
}

TEST(core_hadamard_norm_and_inverse_all_dims) {
    float x[1024], y[1024];
    for (uint32_t dim = 1; dim <= 1024; dim++) {
        kvqi_hadamard h;
        REQUIRE_OK(kvqi_hadamard_init(&h, dim, 1000 + dim));
        fill_normal(x, dim, dim);
        memcpy(y, x, dim * sizeof(float));
        kvqi_hadamard_apply(&h, y, KVQ_ISA_AUTO);
        double n0 = 0, n1 = 0, diff = 0;
        for (uint32_t i = 0; i < dim; i++) {
            n0 += (double)x[i] * x[i];
            n1 += (double)y[i] * y[i];
        }
        CHECKF(fabs(n1 - n0) <= 1e-5 * n0, "dim %u: norm^2 %.9g -> %.9g", dim, n0, n1);
        kvqi_hadamard_inverse(&h, y, KVQ_ISA_AUTO);
        for (uint32_t i = 0; i < dim; i++) diff += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
        CHECKF(sqrt(diff / n0) <= 1e-5, "dim %u: inverse error %.3g", dim, sqrt(diff / n0));
        kvqi_hadamard_free(&h);
    }
    kvqi_hadamard h;
    CHECK_STATUS(kvqi_hadamard_init(&h, 0, 1), KVQ_ERR_INVALID_ARG);
}

/* the full matrix, column j = apply(e_j), must satisfy Q^T Q = I */
TEST(core_hadamard_matrix_orthogonal) {
    static const uint32_t dims[] = {64, 96, 100, 128, 256, 576};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        uint32_t d = dims[t];
        float *q = malloc((size_t)d * d * sizeof(float));
        REQUIRE(q);
        kvqi_hadamard h;
        REQUIRE_OK(kvqi_hadamard_init(&h, d, 77));
        for (uint32_t j = 0; j < d; j++) {
            float *col = q + (size_t)j * d; /* stored as rows of Q^T */
            memset(col, 0, d * sizeof(float));
            col[j] = 1.0f;
            kvqi_hadamard_apply(&h, col, KVQ_ISA_AUTO);
        }
        double worst = 0;
        for (uint32_t a = 0; a < d; a++)
            for (uint32_t b = a; b < d; b++) {
                double s = 0;
                for (uint32_t i = 0; i < d; i++) s += (double)q[(size_t)a * d + i] * q[(size_t)b * d + i];
                double e = fabs(s - (a == b ? 1.0 : 0.0));
                if (e > worst) worst = e;
            }
        CHECKF(worst < 1e-5, "dim %u: |Q^T Q - I| = %.3g", d, worst);
        /* two passes spread every basis vector beyond its own pass-1 block */
        if (h.two_pass) {
            uint32_t nz = 0;
            for (uint32_t i = 0; i < d; i++) nz += q[i] != 0.0f; /* image of e_0 */
            CHECKF(nz > h.block[0], "dim %u: e_0 reaches only %u coordinates", d, nz);
        }
        kvqi_hadamard_free(&h);
        free(q);
    }
}

TEST(core_hadamard_bit_identical_across_isas) {
    static const uint32_t dims[] = {1, 2, 3, 8, 17, 64, 96, 100, 128, 256, 576, 1000, 1024};
    float ref[1024], x[1024];
    int compared = 0;
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        uint32_t d = dims[t];
        kvqi_hadamard h;
        REQUIRE_OK(kvqi_hadamard_init(&h, d, 5));
        fill_normal(ref, d, 9 + d);
        memcpy(x, ref, d * sizeof(float));
        kvqi_hadamard_apply(&h, ref, KVQ_ISA_SCALAR);
        for (int isa = KVQ_ISA_AVX2; isa <= KVQ_ISA_NEON; isa++) {
            if (!kvq_isa_available((kvq_isa)isa)) continue;
            float y[1024];
            memcpy(y, x, d * sizeof(float));
            kvqi_hadamard_apply(&h, y, (kvq_isa)isa);
            CHECKF(memcmp(y, ref, d * sizeof(float)) == 0, "dim %u: %s differs from scalar", d,
                   kvqi_isa_name((kvq_isa)isa));
            kvqi_hadamard_inverse(&h, y, (kvq_isa)isa);
            float z[1024];
            memcpy(z, ref, d * sizeof(float));
            kvqi_hadamard_inverse(&h, z, KVQ_ISA_SCALAR);
            CHECK(memcmp(y, z, d * sizeof(float)) == 0);
            compared++;
        }
        /* same seed -> same signs; another seed -> another rotation */
        kvqi_hadamard h2, h3;
        REQUIRE_OK(kvqi_hadamard_init(&h2, d, 5));
        REQUIRE_OK(kvqi_hadamard_init(&h3, d, 6));
        CHECK(memcmp(h.sign1, h2.sign1, d * sizeof(float)) == 0);
        if (d >= 17) CHECK(memcmp(h.sign1, h3.sign1, d * sizeof(float)) != 0);
        kvqi_hadamard_free(&h);
        kvqi_hadamard_free(&h2);
        kvqi_hadamard_free(&h3);
    }
    if (!compared) SKIP("only the scalar ISA on this machine");
}

/* ------------------------------------------------------------- Lloyd-Max */

/* int_a^b g(x) dx by composite Simpson (n even), independent of the library's closed forms */
static double simpson(double (*g)(double, const void *), const void *arg, double a, double b, int n) {
    double h = (b - a) / n, s = g(a, arg) + g(b, arg);
    for (int i = 1; i < n; i++) s += g(a + i * h, arg) * (i & 1 ? 4 : 2);
    return s * h / 3;
}
typedef struct dens_arg {
    int kind; /* 0 laplace, 1 beta */
    double d, c;
    int moment;
} dens_arg;
static double dens_moment(double x, const void *p) {
    const dens_arg *a = p;
    double f = a->kind == 0 ? exp(-fabs(x) * sqrt(2.0)) / sqrt(2.0) : a->c * pow(1 - x * x, (a->d - 3) / 2);
    return a->moment ? x * f : f;
}

TEST(core_lloydmax_gaussian_table) {
    /* ALGORITHMS.md: positive centroids and MSE per coordinate */
    static const double cent[4][8] = {
        {0.7979},
        {0.4528, 1.5104},
        {0.2451, 0.7560, 1.3440, 2.1520},
        {0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6181, 2.0690, 2.7326},
    };
    static const double mse_ref[4] = {0.3634, 0.1175, 0.03454, 0.009497};
    for (unsigned b = 1; b <= 4; b++) {
        float c[16], t[15];
        double mse;
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0, b, c, t, &mse));
        unsigned k = 1u << b, half = k / 2;
        for (unsigned j = 0; j < half; j++) {
            CHECK_NEAR(c[half + j], cent[b - 1][j], 5e-4);
            CHECK_NEAR(c[half - 1 - j], -cent[b - 1][j], 5e-4);
        }
        for (unsigned j = 0; j + 1 < k; j++) CHECK_NEAR(t[j], 0.5 * (c[j] + c[j + 1]), 1e-6);
        CHECKF(fabs(mse - mse_ref[b - 1]) <= 1e-3 * mse_ref[b - 1], "b=%u mse %.6g want %.6g", b, mse,
               mse_ref[b - 1]);
    }
    /* b = 5..8: ascending, symmetric, MSE falling about 4x per bit (high-rate theory:
     * sqrt(3) pi / 2 * 4^-b) */
    double prev = 0.009497;
    for (unsigned b = 5; b <= 8; b++) {
        float c[256], t[255];
        double mse;
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0, b, c, t, &mse));
        unsigned k = 1u << b;
        for (unsigned j = 0; j + 1 < k; j++) REQUIRE(c[j] < t[j] && t[j] < c[j + 1]);
        for (unsigned j = 0; j < k; j++) REQUIRE(c[j] == -c[k - 1 - j]);
        double hr = sqrt(3.0) * M_PI / 2 * pow(4.0, -(double)b);
        CHECKF(mse < prev / 3.5 && mse > prev / 4.5, "b=%u mse %.4g prev %.4g", b, mse, prev);
        CHECKF(fabs(mse / hr - 1) < 0.1, "b=%u mse %.4g vs high-rate %.4g", b, mse, hr);
        prev = mse;
    }
    float c[2];
    CHECK_STATUS(kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0, 0, c, NULL, NULL), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0, 9, c, NULL, NULL), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvqi_lloyd_max(KVQI_DIST_BETA, 1.0, 1, c, NULL, NULL), KVQ_ERR_INVALID_ARG);
}

/* Lloyd's conditions checked by direct numerical integration: every centroid is the mean
 * of its cell. */
static void check_centroid_condition(kvqt_ctx *kvqt_, const dens_arg *base, double lo_end,
                                     double hi_end, const float *c, const float *t, unsigned k) {
    for (unsigned j = 0; j < k; j++) {
        double lo = j == 0 ? lo_end : t[j - 1], hi = j + 1 == k ? hi_end : t[j];
        dens_arg m0 = *base, m1 = *base;
        m0.moment = 0;
        m1.moment = 1;
        double p = simpson(dens_moment, &m0, lo, hi, 20000), mu = simpson(dens_moment, &m1, lo, hi, 20000);
        CHECKF(fabs(mu / p - c[j]) < 1e-5, "cell %u: mean %.6g centroid %.6g", j,
               mu / p, c[j]);
    }
}

TEST(core_lloydmax_laplace_beta) {
    float c[256], t[255];
    double mse, prev = 1.0;
    for (unsigned b = 1; b <= 8; b++) {
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_LAPLACE, 0, b, c, t, &mse));
        unsigned k = 1u << b;
        for (unsigned j = 0; j + 1 < k; j++) REQUIRE(c[j] < c[j + 1]);
        CHECKF(mse < prev, "laplace b=%u mse %.4g", b, mse);
        prev = mse;
        if (b == 1) {
            CHECK_NEAR(c[1], sqrt(0.5), 1e-6); /* E|X| */
            CHECK_NEAR(mse, 0.5, 1e-9);         /* 1 - (E|X|)^2 */
        }
        if (b == 3) {
            dens_arg a = {0, 0, 0, 0};
            check_centroid_condition(kvqt_, &a, -30, 30, c, t, k);
            double g;
            float gc[8];
            REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0, 3, gc, NULL, &g));
            CHECK(mse > g); /* heavier tails cost more at equal variance */
        }
    }
    /* d = 3: the coordinate is uniform on [-1, 1]; the optimum is the uniform grid */
    for (unsigned b = 1; b <= 8; b++) {
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_BETA, 3, b, c, t, &mse));
        unsigned k = 1u << b;
        for (unsigned j = 0; j < k; j++) CHECK_NEAR(c[j], (2.0 * j + 1) / k - 1, 1e-6);
        CHECKF(fabs(mse - 4.0 / (12.0 * k * k)) < 1e-6 / (k * k), "uniform b=%u mse %.6g", b, mse);
    }
    /* d = 16: conditional means by direct integration */
    {
        double d = 16;
        dens_arg a = {1, d, exp(lgamma(d / 2) - lgamma((d - 1) / 2)) / sqrt(M_PI), 0};
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_BETA, d, 3, c, t, &mse));
        check_centroid_condition(kvqt_, &a, -1, 1, c, t, 8);
    }
    /* large d: sqrt(d) * coordinate -> N(0, 1), so the codebook -> Gaussian / sqrt(d) */
    for (unsigned b = 1; b <= 4; b++) {
        float g[16];
        double gm;
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0, b, g, NULL, &gm));
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_BETA, 4096, b, c, t, &mse));
        for (unsigned j = 0; j < (1u << b); j++) CHECK_NEAR(c[j] * 64.0, g[j], 2e-3 * (1 + fabs(g[j])));
        CHECK_NEAR(mse * 4096, gm, 2e-3 * gm);
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_BETA, 128, b, c, t, &mse));
        CHECK_NEAR(mse * 128, gm, 0.03 * gm);
    }
    /* very large d: the O(1/d) gap shrinks and nothing cancels away (the normalizers are
     * ratios of huge Gamma values) */
    for (unsigned b = 2; b <= 8; b += 6) {
        float g[256];
        double gm;
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0, b, g, NULL, &gm));
        REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_BETA, 1e6, b, c, t, &mse));
        for (unsigned j = 0; j < (1u << b); j++) CHECK_NEAR(c[j] * 1000.0, g[j], 1e-4 * (1 + fabs(g[j])));
        CHECKF(fabs(mse * 1e6 / gm - 1) < 1e-4, "b=%u d=1e6: mse*d %.8g vs gaussian %.8g", b, mse * 1e6, gm);
    }
    /* d = 2 (arcsine density, singular at +-1) still converges to an ordered codebook */
    REQUIRE_OK(kvqi_lloyd_max(KVQI_DIST_BETA, 2, 4, c, t, &mse));
    for (unsigned j = 0; j + 1 < 16; j++) CHECK(c[j] < c[j + 1]);
    CHECK(c[15] < 1.0f && mse > 0 && mse < 0.01);
}

/* ------------------------------------------------------------ safetensors */

typedef struct st_sample {
    float f32[6];
    uint16_t f16[3];
    uint8_t u8[5];
    int64_t i64[2];
    double f64;
    kvqi_st_tensor t[5];
    kvqi_st_meta meta[3];
} st_sample;

static void make_sample(st_sample *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < 6; i++) s->f32[i] = 0.5f * (float)i - 1.0f;
    for (int i = 0; i < 3; i++) s->f16[i] = kvqi_fp32_to_fp16((float)i + 0.25f);
    for (int i = 0; i < 5; i++) s->u8[i] = (uint8_t)(200 + i);
    s->i64[0] = -5;
    s->i64[1] = 1LL << 40;
    s->f64 = 3.25;
    kvqi_st_tensor *t = s->t;
    /* the U8 tensor of 5 bytes comes before wider ones, to test the layout */
    strcpy(t[0].name, "layer.0.rot");
    t[0].dtype = KVQI_F32, t[0].ndim = 2, t[0].shape[0] = 2, t[0].shape[1] = 3;
    t[0].data = s->f32, t[0].nbytes = sizeof s->f32;
    strcpy(t[1].name, "codes \"quoted\"\\path");
    t[1].dtype = KVQI_U8, t[1].ndim = 1, t[1].shape[0] = 5, t[1].data = s->u8, t[1].nbytes = 5;
    strcpy(t[2].name, "half");
    t[2].dtype = KVQI_F16, t[2].ndim = 1, t[2].shape[0] = 3, t[2].data = s->f16, t[2].nbytes = 6;
    strcpy(t[3].name, "scalar");
    t[3].dtype = KVQI_F64, t[3].ndim = 0, t[3].data = &s->f64, t[3].nbytes = 8;
    strcpy(t[4].name, "empty");
    t[4].dtype = KVQI_I64, t[4].ndim = 2, t[4].shape[0] = 0, t[4].shape[1] = 4, t[4].data = NULL,
    t[4].nbytes = 0;
    s->meta[0] = (kvqi_st_meta){"kvq.method", "turboquant_mse"};
    s->meta[1] = (kvqi_st_meta){"note", "line1\nline2\t\"q\" \\ caf\xc3\xa9"};
    s->meta[2] = (kvqi_st_meta){"empty", ""};
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static uint8_t *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static void check_sample(kvqt_ctx *kvqt_, const kvqi_st_file *f, const st_sample *s) {
    REQUIRE(kvqi_st_count(f) == 5);
    for (int i = 0; i < 5; i++) {
        const kvqi_st_tensor *a = kvqi_st_at(f, (size_t)i), *want = &s->t[i];
        REQUIRE(a);
        CHECK(strcmp(a->name, want->name) == 0);
        CHECK(kvqi_st_find(f, want->name) == a);
        CHECK(a->dtype == want->dtype && a->ndim == want->ndim && a->nbytes == want->nbytes);
        for (uint32_t d = 0; d < a->ndim; d++) CHECK(a->shape[d] == want->shape[d]);
        if (a->nbytes) CHECK(memcmp(a->data, want->data, a->nbytes) == 0);
    }
    CHECK(kvqi_st_at(f, 5) == NULL);
    CHECK(kvqi_st_find(f, "missing") == NULL);
    for (int i = 0; i < 3; i++) {
        const char *v = kvqi_st_meta_get(f, s->meta[i].key);
        CHECKF(v && strcmp(v, s->meta[i].value) == 0, "metadata %s", s->meta[i].key);
    }
    CHECK(kvqi_st_meta_get(f, "nope") == NULL);
    /* the data area is 64-byte aligned in memory and the writer lays tensors out by
     * element size, so each starts aligned to its element size */
    for (size_t i = 0; i < 5; i++) {
        const kvqi_st_tensor *t = kvqi_st_at(f, i);
        CHECKF(((uintptr_t)t->data % kvqi_dtype_size(t->dtype)) == 0, "%s misaligned", t->name);
    }
}

TEST(core_safetensors_round_trip) {
    st_sample s;
    make_sample(&s);
    char *path = join_path(kvqt_tmpdir(kvqt_), "a.safetensors");
    REQUIRE(path);
    REQUIRE_OK(kvqi_st_write(path, s.t, 5, s.meta, 3));
    kvqi_st_file *f = NULL;
    REQUIRE_OK(kvqi_st_read(path, &f));
    check_sample(kvqt_, f, &s);
    kvqi_st_free(f);

    size_t size;
    uint8_t *buf = slurp(path, &size);
    REQUIRE(buf);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)buf[i] << (8 * i);
    CHECK((8 + hlen) % 8 == 0);
    CHECK(size == 8 + hlen + sizeof s.f32 + 5 + 6 + 8);
    REQUIRE_OK(kvqi_st_read_mem(buf, size, &f));
    check_sample(kvqt_, f, &s);
    kvqi_st_free(f);
    free(buf);

    /* no temp file left behind, and rewriting replaces the file */
    s.f32[0] = 42.0f;
    REQUIRE_OK(kvqi_st_write(path, s.t, 5, s.meta, 3));
    REQUIRE_OK(kvqi_st_read(path, &f));
    CHECK(((const float *)kvqi_st_find(f, "layer.0.rot")->data)[0] == 42.0f);
    kvqi_st_free(f);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 1", kvqt_tmpdir(kvqt_));
    CHECK(system(cmd) == 0);

    /* writer refuses bad input */
    kvqi_st_tensor dup[2] = {s.t[0], s.t[0]};
    CHECK_STATUS(kvqi_st_write(path, dup, 2, NULL, 0), KVQ_ERR_INVALID_ARG);
    kvqi_st_tensor wrong = s.t[0];
    wrong.nbytes = 4;
    CHECK_STATUS(kvqi_st_write(path, &wrong, 1, NULL, 0), KVQ_ERR_INVALID_ARG);
    kvqi_st_tensor meta_name = s.t[0];
    strcpy(meta_name.name, "__metadata__");
    CHECK_STATUS(kvqi_st_write(path, &meta_name, 1, NULL, 0), KVQ_ERR_INVALID_ARG);
    CHECK_FAILS(kvqi_st_write("/nonexistent-dir/x.safetensors", s.t, 1, NULL, 0));
    CHECK_STATUS(kvqi_st_read("/nonexistent-dir/x.safetensors", &f), KVQ_ERR_IO);
    free(path);
}

TEST(core_safetensors_truncated_rejected) {
    st_sample s;
    make_sample(&s);
    char *path = join_path(kvqt_tmpdir(kvqt_), "t.safetensors");
    REQUIRE(path);
    REQUIRE_OK(kvqi_st_write(path, s.t, 5, s.meta, 3));
    size_t size;
    uint8_t *buf = slurp(path, &size);
    REQUIRE(buf);
    for (size_t cut = 0; cut < size; cut++) {
        kvqi_st_file *f = NULL;
        /* a fresh copy of exactly `cut` bytes, so ASan sees any read past it */
        uint8_t *part = malloc(cut ? cut : 1);
        REQUIRE(part);
        memcpy(part, buf, cut);
        kvq_status st = kvqi_st_read_mem(part, cut, &f);
        CHECKF(st == KVQ_ERR_FORMAT, "cut at %zu of %zu: %s", cut, size, kvq_strerror(st));
        CHECK(f == NULL);
        free(part);
    }
    /* the same through the file reader, for a few cuts */
    for (size_t cut = 0; cut < size; cut += 7) {
        REQUIRE(truncate(path, (off_t)cut) == 0);
        kvqi_st_file *f = NULL;
        CHECK_STATUS(kvqi_st_read(path, &f), KVQ_ERR_FORMAT);
    }
    free(buf);
    free(path);
}

/* a file: header length, the header text, then data_len bytes of data */
static kvq_status read_crafted(const char *header, size_t data_len, uint64_t hlen_override) {
    size_t hl = strlen(header), size = 8 + hl + data_len;
    uint8_t *buf = calloc(1, size);
    if (!buf) return KVQ_ERR_NOMEM;
    uint64_t hlen = hlen_override ? hlen_override : hl;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, header, hl);
    kvqi_st_file *f = NULL;
    kvq_status st = kvqi_st_read_mem(buf, size, &f);
    kvqi_st_free(f);
    free(buf);
    return st;
}

TEST(core_safetensors_corrupt_rejected) {
    static const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    CHECK_OK(read_crafted(good, 8, 0));
    CHECK_OK(read_crafted("{}", 0, 0));
    CHECK_OK(read_crafted("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8],\"dtype\":\"F32\"}}   ", 8, 0));
    CHECK_OK(read_crafted("{\"\\u00e9\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", 1, 0));
    static const struct {
        const char *header;
        size_t data;
        const char *why;
    } bad[] = {
        {"", 8, "empty header"},
        {"{", 8, "unterminated object"},
        {"[]", 8, "not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "missing brace"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}x", 8, "trailing garbage"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},}", 8, "trailing comma"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "offsets past end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "wrong size"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin after end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "duplicate name"},
        {"{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "9 dims"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "float"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8, "leading zero"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8, "3 offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "no offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8, "unknown key"},
        {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "repeated key"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,8]}}", 8, "shape product overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,99999999999999999999]}}", 8,
         "number overflows"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "metadata not a string"},
        {"{\"__metadata__\":{\"k\":\"v\"},\"__metadata__\":{}}", 0, "two metadata"},
        {"{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, "duplicate metadata key"},
        {"{\"a\\ud800\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "lone surrogate"},
        {"{\"a\\u0000\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "NUL in name"},
        {"{\"a\\q\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "bad escape"},
        {"{\"a\n\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "raw control char"},
        {"{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "empty name"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]", 1, "cut"},
        {"{\"a\":\"x\"}", 0, "tensor not an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kvq_status st = read_crafted(bad[i].header, bad[i].data, 0);
        CHECKF(st == KVQ_ERR_FORMAT, "%s: %s", bad[i].why, kvq_strerror(st));
    }
    /* a name one byte too long for KVQI_ST_MAX_NAME */
    char longname[KVQI_ST_MAX_NAME + 128];
    memset(longname, 'n', KVQI_ST_MAX_NAME);
    longname[KVQI_ST_MAX_NAME] = 0;
    char hdr[KVQI_ST_MAX_NAME + 200];
    snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", longname);
    CHECK_STATUS(read_crafted(hdr, 1, 0), KVQ_ERR_FORMAT);
    longname[KVQI_ST_MAX_NAME - 1] = 0;
    snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", longname);
    CHECK_OK(read_crafted(hdr, 1, 0));
    /* header length fields that lie */
    CHECK_STATUS(read_crafted(good, 8, 1ULL << 40), KVQ_ERR_FORMAT);
    CHECK_STATUS(read_crafted(good, 8, UINT64_MAX), KVQ_ERR_FORMAT);
    CHECK_STATUS(read_crafted(good, 8, strlen(good) + 9), KVQ_ERR_FORMAT);
    CHECK_STATUS(read_crafted(good, 8, 200u * 1024 * 1024), KVQ_ERR_FORMAT);
    CHECK_STATUS(read_crafted(good, 8, 3), KVQ_ERR_FORMAT);
}

/* random byte flips in a valid file: any result but a crash (ASan run checks reads) */
TEST(core_safetensors_fuzz_no_crash) {
    st_sample s;
    make_sample(&s);
    char *path = join_path(kvqt_tmpdir(kvqt_), "f.safetensors");
    REQUIRE(path);
    REQUIRE_OK(kvqi_st_write(path, s.t, 5, s.meta, 3));
    size_t size;
    uint8_t *buf = slurp(path, &size);
    REQUIRE(buf);
    kvqi_rng r;
    kvqi_rng_seed(&r, 11);
    int rejected = 0;
    for (int it = 0; it < 3000; it++) {
        uint8_t *m = malloc(size);
        REQUIRE(m);
        memcpy(m, buf, size);
        int flips = 1 + (int)kvqi_rng_below(&r, 3);
        for (int k = 0; k < flips; k++) {
            /* mostly in the header, where the parser lives */
            size_t pos = kvqi_rng_below(&r, 4) ? kvqi_rng_below(&r, (uint32_t)KVQI_MIN(size, 300))
                                               : kvqi_rng_below(&r, (uint32_t)size);
            m[pos] = (uint8_t)kvqi_rng_next(&r);
        }
        kvqi_st_file *f = NULL;
        kvq_status st = kvqi_st_read_mem(m, size, &f);
        if (st == KVQ_OK) {
            /* whatever was accepted is self-consistent */
            for (size_t i = 0; i < kvqi_st_count(f); i++) {
                const kvqi_st_tensor *t = kvqi_st_at(f, i);
                CHECK(t->nbytes <= size);
                if (t->nbytes) CHECK((const uint8_t *)t->data + t->nbytes >= (const uint8_t *)t->data);
            }
        } else {
            CHECK(st == KVQ_ERR_FORMAT);
            rejected++;
        }
        kvqi_st_free(f);
        free(m);
    }
    CHECK(rejected > 1000);
    free(buf);
    free(path);
}

/* numpy users can read the files: Python's safetensors package, when installed */
TEST(core_safetensors_python_reads) {
    if (system("python3 -c 'import safetensors.numpy' >/dev/null 2>&1") != 0)
        SKIP("python3 with safetensors and numpy not installed");
    st_sample s;
    make_sample(&s);
    char *path = join_path(kvqt_tmpdir(kvqt_), "py.safetensors");
    REQUIRE(path);
    REQUIRE_OK(kvqi_st_write(path, s.t, 5, s.meta, 3));
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "python3 - '%s' <<'PYEOF'\n"
             "import sys, numpy as np\n"
             "from safetensors import safe_open\n"
             "from safetensors.numpy import load_file\n"
             "t = load_file(sys.argv[1])\n"
             "assert t['layer.0.rot'].shape == (2, 3) and t['layer.0.rot'].dtype == np.float32\n"
             "assert np.array_equal(t['layer.0.rot'].ravel(), np.arange(6, dtype=np.float32) * 0.5 - 1)\n"
             "assert list(t['codes \"quoted\"\\\\path']) == [200, 201, 202, 203, 204]\n"
             "assert np.array_equal(t['half'], np.array([0.25, 1.25, 2.25], dtype=np.float16))\n"
             "assert t['scalar'].shape == () and t['scalar'] == 3.25\n"
             "assert t['empty'].shape == (0, 4) and t['empty'].dtype == np.int64\n"
             "with safe_open(sys.argv[1], 'np') as f:\n"
             "    m = f.metadata()\n"
             "assert m['kvq.method'] == 'turboquant_mse' and m['empty'] == ''\n"
             "assert m['note'] == 'line1\\nline2\\t\"q\" \\\\ caf\\u00e9', repr(m['note'])\n"
             "PYEOF",
             path);
    CHECK(system(cmd) == 0);
    /* and we read what Python writes */
    char *path2 = join_path(kvqt_tmpdir(kvqt_), "from_py.safetensors");
    REQUIRE(path2);
    snprintf(cmd, sizeof cmd,
             "python3 -c \"import numpy as np; from safetensors.numpy import save_file; "
             "save_file({'w': np.arange(12, dtype=np.float32).reshape(3, 4), "
             "'b': np.array([1, 2, 3], dtype=np.int32)}, '%s', metadata={'fmt': 'np'})\"",
             path2);
    REQUIRE(system(cmd) == 0);
    kvqi_st_file *f = NULL;
    REQUIRE_OK(kvqi_st_read(path2, &f));
    const kvqi_st_tensor *w = kvqi_st_find(f, "w"), *b = kvqi_st_find(f, "b");
    REQUIRE(w && b);
    CHECK(w->dtype == KVQI_F32 && w->ndim == 2 && w->shape[0] == 3 && w->shape[1] == 4);
    float wf[12];
    memcpy(wf, w->data, sizeof wf);
    for (int i = 0; i < 12; i++) CHECK(wf[i] == (float)i);
    CHECK(b->dtype == KVQI_I32 && b->nbytes == 12);
    CHECK(kvqi_st_meta_get(f, "fmt") && strcmp(kvqi_st_meta_get(f, "fmt"), "np") == 0);
    kvqi_st_free(f);
    free(path);
    free(path2);
}

/* ------------------------------------------------------------- threadpool */

typedef struct pool_job {
    atomic_uint *hits;
    atomic_uint bad_thread;
    unsigned n_threads;
} pool_job;

static void count_task(void *ctx, size_t task, unsigned thread) {
    pool_job *j = ctx;
    atomic_fetch_add_explicit(&j->hits[task], 1, memory_order_relaxed);
    if (thread >= j->n_threads) atomic_fetch_add(&j->bad_thread, 1);
}

TEST(core_threadpool_every_task_once) {
    static const unsigned sizes[] = {1, 2, 4};
    enum { MAX_TASKS = 97 };
    atomic_uint hits[MAX_TASKS];
    for (size_t s = 0; s < 3; s++) {
        kvq_threadpool *pool = NULL;
        REQUIRE_OK(kvq_threadpool_create(sizes[s], &pool));
        REQUIRE(kvq_threadpool_size(pool) == sizes[s]);
        pool_job job;
        job.hits = hits;
        job.n_threads = sizes[s];
        atomic_init(&job.bad_thread, 0);
        for (int rep = 0; rep < 1000; rep++) {
            size_t n = (size_t)(rep * 7 % MAX_TASKS) + (rep % 3 == 0 ? 0 : 1);
            for (size_t i = 0; i < MAX_TASKS; i++) atomic_init(&hits[i], 0);
            kvqi_parallel_for(pool, n, count_task, &job);
            for (size_t i = 0; i < MAX_TASKS; i++) {
                unsigned h = atomic_load(&hits[i]);
                if (h != (i < n ? 1u : 0u)) {
                    CHECKF(0, "threads %u rep %d n %zu: task %zu ran %u times", sizes[s], rep, n, i, h);
                    rep = 1000;
                    break;
                }
            }
        }
        CHECK(atomic_load(&job.bad_thread) == 0);
        kvq_threadpool_free(pool);
    }
    /* NULL pool: serial on thread 0 */
    pool_job job;
    job.hits = hits;
    job.n_threads = 1;
    atomic_init(&job.bad_thread, 0);
    for (size_t i = 0; i < MAX_TASKS; i++) atomic_init(&hits[i], 0);
    kvqi_parallel_for(NULL, MAX_TASKS, count_task, &job);
    for (size_t i = 0; i < MAX_TASKS; i++) CHECK(atomic_load(&hits[i]) == 1);
    CHECK(atomic_load(&job.bad_thread) == 0);
    CHECK(kvq_threadpool_size(NULL) == 1);
    kvq_threadpool *pool = NULL;
    REQUIRE_OK(kvq_threadpool_create(0, &pool));
    CHECK(kvq_threadpool_size(pool) >= 1);
    kvq_threadpool_free(pool);
    kvq_threadpool_free(NULL);
    CHECK_STATUS(kvq_threadpool_create(2, NULL), KVQ_ERR_INVALID_ARG);
}

/* workers that sleep between calls (long gaps) still wake for the next one */
TEST(core_threadpool_wakes_after_idle) {
    kvq_threadpool *pool = NULL;
    REQUIRE_OK(kvq_threadpool_create(3, &pool));
    atomic_uint hits[16];
    pool_job job;
    job.hits = hits;
    job.n_threads = 3;
    atomic_init(&job.bad_thread, 0);
    for (int rep = 0; rep < 5; rep++) {
        usleep(20000);
        for (int i = 0; i < 16; i++) atomic_init(&hits[i], 0);
        kvqi_parallel_for(pool, 16, count_task, &job);
        for (int i = 0; i < 16; i++) CHECK(atomic_load(&hits[i]) == 1);
    }
    kvq_threadpool_free(pool);
}

/* ------------------------------------------------ dense orthogonal rotation */

TEST(core_random_orthogonal) {
    static const uint32_t dims[] = {1, 2, 3, 16, 64, 96, 100, 128};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        uint32_t d = dims[t];
        float *q = malloc((size_t)d * d * sizeof(float)), *q2 = malloc((size_t)d * d * sizeof(float));
        REQUIRE(q && q2);
        REQUIRE_OK(kvqi_random_orthogonal(d, 123, q));
        double worst = 0;
        for (uint32_t a = 0; a < d; a++)
            for (uint32_t b = 0; b < d; b++) {
                double s = 0;
                for (uint32_t i = 0; i < d; i++) s += (double)q[(size_t)i * d + a] * q[(size_t)i * d + b];
                worst = fmax(worst, fabs(s - (a == b)));
            }
        CHECKF(worst < 1e-5, "d=%u |Q^T Q - I| = %.3g", d, worst);
        float x[128], y[128], z[128];
        fill_normal(x, d, 5);
        kvqi_matvec(q, d, x, y);
        kvqi_matvec_t(q, d, y, z);
        double n0 = 0, n1 = 0, err = 0;
        for (uint32_t i = 0; i < d; i++) {
            n0 += (double)x[i] * x[i];
            n1 += (double)y[i] * y[i];
            err += ((double)z[i] - x[i]) * ((double)z[i] - x[i]);
        }
        CHECKF(fabs(n1 - n0) <= 1e-5 * n0, "d=%u norm", d);
        CHECKF(sqrt(err / n0) <= 1e-5, "d=%u round trip %.3g", d, sqrt(err / n0));
        /* y = Q x against a double reference */
        for (uint32_t i = 0; i < d; i++) {
            double s = 0;
            for (uint32_t j = 0; j < d; j++) s += (double)q[(size_t)i * d + j] * x[j];
            CHECK_NEAR(y[i], s, 1e-5 * sqrt(n0));
        }
        REQUIRE_OK(kvqi_random_orthogonal(d, 123, q2));
        CHECK(memcmp(q, q2, (size_t)d * d * sizeof(float)) == 0);
        if (d > 1) {
            REQUIRE_OK(kvqi_random_orthogonal(d, 124, q2));
            CHECK(memcmp(q, q2, (size_t)d * d * sizeof(float)) != 0);
        }
        free(q);
        free(q2);
    }
    /* Haar: the mean of the (0,0) entry over many seeds is 0 (a sign-unfixed QR would
     * bias it), and E[q00^2] = 1/d */
    const uint32_t d = 4;
    double m = 0, m2 = 0;
    float q[16];
    const int reps = 4000;
    for (int s = 0; s < reps; s++) {
        REQUIRE_OK(kvqi_random_orthogonal(d, (uint64_t)s, q));
        m += q[0];
        m2 += (double)q[0] * q[0];
    }
    CHECK_NEAR(m / reps, 0.0, 0.05);
    CHECK_NEAR(m2 / reps, 1.0 / d, 0.03);
    CHECK_STATUS(kvqi_random_orthogonal(0, 1, q), KVQ_ERR_INVALID_ARG);
}

/* ---------------------------------------------------------------- k-means */

TEST(core_kmeans_recovers_clusters) {
    enum { K = 5, D = 3, PER = 200, N = K * PER };
    static const float centers[K][D] = {{0, 0, 0}, {10, 0, 0}, {0, 10, 0}, {0, 0, 10}, {10, 10, 10}};
    static float x[N * D];
    kvqi_rng r;
    kvqi_rng_seed(&r, 17);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) x[i * D + j] = centers[i % K][j] + 0.3f * (float)kvqi_rng_normal(&r);
    float c[K * D], c2[K * D];
    uint32_t assign[N], assign2[N];
    REQUIRE_OK(kvqi_kmeans(x, N, D, K, 20, 99, c, assign));
    /* every true centre has exactly one centroid within 0.1, and the labels agree */
    int map[K];
    for (int t = 0; t < K; t++) {
        int found = -1;
        for (int k = 0; k < K; k++) {
            double e = 0;
            for (int j = 0; j < D; j++) e += (c[k * D + j] - centers[t][j]) * (c[k * D + j] - centers[t][j]);
            if (sqrt(e) < 0.1) {
                CHECK(found < 0);
                found = k;
            }
        }
        CHECKF(found >= 0, "centre %d not recovered", t);
        map[t] = found;
    }
    for (int i = 0; i < N; i++) CHECK((int)assign[i] == map[i % K]);
    /* deterministic */
    REQUIRE_OK(kvqi_kmeans(x, N, D, K, 20, 99, c2, assign2));
    CHECK(memcmp(c, c2, sizeof c) == 0 && memcmp(assign, assign2, sizeof assign) == 0);
    /* k > n is an error; k == n puts a centroid on every point */
    CHECK_STATUS(kvqi_kmeans(x, 3, D, 4, 5, 1, c, NULL), KVQ_ERR_INVALID_ARG);
    REQUIRE_OK(kvqi_kmeans(x, 4, D, 4, 5, 1, c, assign));
    for (int i = 0; i < 4; i++) {
        int hit = 0;
        for (int k = 0; k < 4; k++) hit += memcmp(c + k * D, x + i * D, D * sizeof(float)) == 0;
        CHECK(hit == 1);
        CHECK(memcmp(c + assign[i] * D, x + i * D, D * sizeof(float)) == 0);
    }
}

/* the lane-parallel assignment step against a plain scalar argmin with the same
 * summation order: labels identical, ties to the lowest index */
TEST(core_kmeans_assignment_matches_scalar) {
    enum { N = 3000, D = 5, K = 37 };
    static float x[N * D];
    kvqi_rng r;
    kvqi_rng_seed(&r, 23);
    for (int i = 0; i < N * D; i++) x[i] = (float)kvqi_rng_normal(&r);
    for (int i = 0; i < 40; i++) memcpy(x + (N - 1 - i) * D, x + i * D, D * sizeof(float)); /* exact ties */
    for (uint32_t iters = 0; iters <= 3; iters += 3) {
        float c[K * D];
        uint32_t a[N];
        REQUIRE_OK(kvqi_kmeans(x, N, D, K, iters, 5, c, a));
        for (int i = 0; i < N; i++) {
            uint32_t best = 0;
            float bd = 0;
            for (uint32_t k = 0; k < K; k++) {
                float s = 0.0f;
                for (int j = 0; j < D; j++) {
                    float t = x[i * D + j] - c[k * D + j];
                    s += t * t;
                }
                if (k == 0 || s < bd) {
                    bd = s;
                    best = k;
                }
            }
            if (a[i] != best) {
                CHECKF(0, "iters %u point %d: label %u, scalar %u", iters, i, a[i], best);
                break;
            }
        }
    }
}

TEST(core_kmeans_duplicates_and_empty_clusters) {
    /* 6 points, only 2 distinct: k = 4 forces duplicate seeds, empty clusters get re-seeded
     * and nothing goes NaN */
    float x[6 * 2] = {1, 1, 1, 1, 1, 1, 5, 5, 5, 5, 5, 5};
    float c[4 * 2];
    uint32_t a[6];
    REQUIRE_OK(kvqi_kmeans(x, 6, 2, 4, 10, 3, c, a));
    for (int i = 0; i < 8; i++) CHECK(isfinite(c[i]));
    for (int i = 0; i < 6; i++) {
        REQUIRE(a[i] < 4);
        CHECK(c[a[i] * 2] == x[i * 2] && c[a[i] * 2 + 1] == x[i * 2 + 1]);
    }
}

/* ----------------------------------------------------------- eigen-solver */

TEST(core_eigh_recovers_spectrum) {
    static const uint32_t dims[] = {1, 2, 5, 16, 64};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        uint32_t n = dims[t];
        float *qf = malloc((size_t)n * n * sizeof(float));
        double *a = malloc((size_t)n * n * sizeof(double)), *vec = malloc((size_t)n * n * sizeof(double));
        double *lam = malloc(n * sizeof(double)), *ev = malloc(n * sizeof(double));
        REQUIRE(qf && a && vec && lam && ev);
        REQUIRE_OK(kvqi_random_orthogonal(n, 7 + n, qf));
        /* distinct eigenvalues, negative ones too, in scrambled order */
        for (uint32_t i = 0; i < n; i++) lam[i] = (double)((i * 7) % n) - 0.3 * n + 0.5;
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t j = 0; j < n; j++) {
                double s = 0;
                for (uint32_t k = 0; k < n; k++) s += (double)qf[i * n + k] * lam[k] * qf[j * n + k];
                a[i * n + j] = s;
            }
        double *a_copy = malloc((size_t)n * n * sizeof(double));
        REQUIRE(a_copy);
        memcpy(a_copy, a, (size_t)n * n * sizeof(double));
        REQUIRE_OK(kvqi_eigh(a, n, ev, vec));
        for (uint32_t i = 0; i < n; i++) {
            double want = (double)(n - 1 - i) - 0.3 * n + 0.5; /* descending */
            CHECK_NEAR(ev[i], want, 1e-5);
            /* A v = lambda v and |v| = 1 */
            double norm = 0, res = 0;
            for (uint32_t r = 0; r < n; r++) {
                double av = 0;
                for (uint32_t c = 0; c < n; c++) av += a_copy[r * n + c] * vec[i * n + c];
                res = fmax(res, fabs(av - ev[i] * vec[i * n + r]));
                norm += vec[i * n + r] * vec[i * n + r];
            }
            CHECK_NEAR(norm, 1.0, 1e-9);
            CHECKF(res < 1e-5, "n=%u eigenpair %u residual %.3g", n, i, res);
        }
        free(qf);
        free(a);
        free(a_copy);
        free(vec);
        free(lam);
        free(ev);
    }
    double bad[4] = {1, NAN, NAN, 1}, ev[2], vec[4];
    CHECK_STATUS(kvqi_eigh(bad, 2, ev, vec), KVQ_ERR_INVALID_ARG);
}
