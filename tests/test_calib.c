/*
 * test_calib.c - the calibrated methods: VecInfer's LUT scores against decode-then-dot and
 * its SIMD kernels against the scalar ones, each method against turboquant_mse on the
 * data it is built for, SpectralQuant's exact bit budget, CommVQ's RoPE commutation,
 * RateQuant's allocation, artifacts (byte-identical round trips, corrupt and mismatched
 * files refused).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/core.h"
#include "cpu/vecinfer_kernels.h"
#include "quant/calib.h"
#include "test.h"

static void gaussian(float *x, size_t n, uint64_t seed) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)kvqi_rng_normal(&r);
}

static double dotd(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Keys like a real layer's: most channels N(0,1), a few with a large offset and spread
 * (the outlier channels VecInfer's smoothing is for). */
static void outlier_keys(float *x, size_t n, uint32_t d, uint64_t seed) {
    gaussian(x, n * d, seed);
    for (size_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < d; j++) {
            float *v = x + i * d + j;
            if (j % 16 == 3) *v = 12.0f + 6.0f * *v;
            else if (j % 16 == 9) *v = -8.0f + 4.0f * *v;
        }
}

/* x = V diag(sqrt(ev)) z with a random orthogonal V: a known, decaying spectrum. */
static kvq_status spectrum_keys(float *x, size_t n, uint32_t d, const double *ev, uint64_t seed) {
    float *V = malloc((size_t)d * d * sizeof(float)), z[512];
    if (!V || d > 512) {
        free(V);
        return KVQ_ERR_NOMEM;
    }
    kvq_status st = kvqi_random_orthogonal(d, seed, V);
    kvqi_rng r;
    kvqi_rng_seed(&r, seed + 1);
    for (size_t i = 0; st == KVQ_OK && i < n; i++) {
        for (uint32_t k = 0; k < d; k++) z[k] = (float)(kvqi_rng_normal(&r) * sqrt(ev[k]));
        kvqi_matvec(V, d, z, x + i * d);
    }
    free(V);
    return st;
}

static double rel_mse(const kvq_quantizer *q, const float *x, size_t n, uint32_t d) {
    float *y = malloc(n * d * sizeof(float));
    uint8_t *c = malloc(n * kvq_code_size(q));
    double num = 0, den = 0;
    if (y && c && kvq_encode(q, x, n, c) == KVQ_OK && kvq_decode(q, c, n, y) == KVQ_OK) {
        for (size_t i = 0; i < n * d; i++) {
            num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            den += (double)x[i] * x[i];
        }
    } else {
        num = INFINITY;
        den = 1;
    }
    free(y);
    free(c);
    return num / den;
}

static kvq_status make(const char *spec, uint32_t d, kvq_quantizer **q) {
    kvq_config c;
    char msg[256];
    kvq_status st = kvq_config_parse(spec, d, &c, msg, sizeof msg);
    if (st != KVQ_OK) {
        fprintf(stderr, "%s: %s\n", spec, msg);
        return st;
    }
    return kvq_quantizer_create(&c, q);
}

static kvq_status make_fitted(const char *spec, uint32_t d, kvq_isa isa, const float *x, size_t n,
                              kvq_quantizer **q) {
    kvq_config c;
    kvq_status st = kvq_config_parse(spec, d, &c, NULL, 0);
    if (st != KVQ_OK) return st;
    c.isa = isa;
    st = kvq_quantizer_create(&c, q);
    if (st != KVQ_OK) return st;
    st = kvq_quantizer_fit(*q, x, n);
    if (st != KVQ_OK) {
        kvq_quantizer_free(*q);
        *q = NULL;
    }
    return st;
}

/* ------------------------------------------------------------------ vecinfer */

TEST(calib_vecinfer_scores_match_decode_and_beat_mse_1bit) {
    enum { N = 512, D = 64, T = 256 };
    static float x[N * D], y[T * D], qv[D], sc[T];
    static uint8_t codes[T * 64];
    outlier_keys(x, N, D, 11);
    kvq_quantizer *vi, *mse;
    REQUIRE_OK(make_fitted("vecinfer:bits=8,sub_dim=8", D, KVQ_ISA_AUTO, x, N, &vi));
    CHECK(kvq_code_size(vi) == D / 8); /* 1 bit per element */
    CHECK_STATUS(kvq_score_bound(vi, qv, codes, 1, sc, sc), KVQ_ERR_UNSUPPORTED);
    /* held-out keys from the same distribution */
    static float test_x[T * D];
    outlier_keys(test_x, T, D, 12);
    REQUIRE_OK(kvq_encode(vi, test_x, T, codes));
    REQUIRE_OK(kvq_decode(vi, codes, T, y));
    for (int rep = 0; rep < 4; rep++) {
        gaussian(qv, D, 100 + rep);
        REQUIRE_OK(kvq_score(vi, qv, codes, T, sc));
        for (int i = 0; i < T; i++) {
            double ref = dotd(qv, y + (size_t)i * D, D);
            double scale = sqrt(dotd(qv, qv, D) * dotd(y + (size_t)i * D, y + (size_t)i * D, D));
            CHECKF(fabs(sc[i] - ref) <= 1e-4 * scale, "row %d: LUT score %.7g vs decode-dot %.7g",
                   i, sc[i], ref);
        }
    }
    REQUIRE_OK(make("turboquant_mse:bits=1", D, &mse));
    double e_vi = rel_mse(vi, test_x, T, D), e_mse = rel_mse(mse, test_x, T, D);
    fprintf(stderr, "vecinfer 1 bit/elt rel mse %.4f (%zu B), turboquant_mse b=1 %.4f (%zu B)\n",
            e_vi, kvq_code_size(vi), e_mse, kvq_code_size(mse));
    CHECKF(e_vi < e_mse, "vecinfer %.4f not below turboquant_mse 1-bit %.4f", e_vi, e_mse);
    CHECK(kvq_code_size(vi) <= kvq_code_size(mse));
    kvq_quantizer_free(vi);
    kvq_quantizer_free(mse);
}

TEST(calib_vecinfer_simd_matches_scalar) {
    enum { N = 256, D = 128, T = 37 };
    static float x[N * D], qv[D], s_ref[T], s_isa[T];
    static uint8_t c_ref[T * 16], c_isa[T * 16];
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char path[512], spec[700];
    snprintf(path, sizeof path, "%s/vi.safetensors", dir);
    outlier_keys(x, N, D, 21);
    gaussian(qv, D, 22);
    kvq_quantizer *ref;
    REQUIRE_OK(make_fitted("vecinfer", D, KVQ_ISA_SCALAR, x, N, &ref));
    REQUIRE_OK(kvq_encode(ref, x, T, c_ref));
    REQUIRE_OK(kvq_score(ref, qv, c_ref, T, s_ref));
    REQUIRE_OK(kvq_quantizer_save(ref, path));
    const kvq_isa isas[] = {KVQ_ISA_AVX2, KVQ_ISA_AVX512, KVQ_ISA_NEON};
    int tested = 0;
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
        if (!kvq_isa_available(isas[k])) continue;
        tested++;
        kvq_quantizer *q;
        kvq_config c;
        snprintf(spec, sizeof spec, "vecinfer:artifact=%s", path);
        REQUIRE_OK(kvq_config_parse(spec, D, &c, NULL, 0));
        c.isa = isas[k];
        REQUIRE_OK(kvq_quantizer_create(&c, &q));
        REQUIRE_OK(kvq_encode(q, x, T, c_isa));
        CHECKF(memcmp(c_ref, c_isa, sizeof c_ref) == 0, "isa %d: codes differ from scalar", isas[k]);
        REQUIRE_OK(kvq_score(q, qv, c_ref, T, s_isa));
        CHECKF(memcmp(s_ref, s_isa, sizeof s_ref) == 0, "isa %d: scores differ from scalar", isas[k]);
        /* the kernels alone, odd sizes: a table of 7 sub-spaces x 256, 21 keys */
        const kvqi_vecinfer_kernels *kr = &kvqi_vecinfer_scalar, *ki = kvqi_vecinfer_kernels_for(isas[k]);
        static float cb_t[8 * 256], lut_r[7 * 256], lut_i[7 * 256], sub[8 * 7];
        static uint8_t codes[21 * 7];
        gaussian(cb_t, 8 * 256, 5);
        gaussian(sub, 8 * 7, 6);
        for (size_t i = 0; i < sizeof codes; i++) codes[i] = (uint8_t)(i * 37 + 11);
        kr->lut_build(sub, 7, 8, cb_t, 256, lut_r);
        ki->lut_build(sub, 7, 8, cb_t, 256, lut_i);
        CHECK(memcmp(lut_r, lut_i, sizeof lut_r) == 0);
        float sr[21], si[21];
        kr->lut_score8(lut_r, 7, 256, codes, 7, 21, sr);
        ki->lut_score8(lut_r, 7, 256, codes, 7, 21, si);
        CHECK(memcmp(sr, si, sizeof sr) == 0);
        for (int j = 0; j < 7; j++)
            CHECK(kr->nearest(sub + 8 * j, 8, cb_t, 256) == ki->nearest(sub + 8 * j, 8, cb_t, 256));
        kvq_quantizer_free(q);
    }
    kvq_quantizer_free(ref);
    if (!tested) SKIP("no SIMD ISA on this CPU");
}

TEST(calib_vecinfer_unfitted_and_bad_configs) {
    kvq_config c;
    kvq_quantizer *q;
    float x[64] = {0};
    uint8_t code[16];
    REQUIRE_OK(kvq_config_parse("vecinfer", 64, &c, NULL, 0));
    REQUIRE_OK(kvq_quantizer_create(&c, &q));
    CHECK_STATUS(kvq_encode(q, x, 1, code), KVQ_ERR_STATE);
    CHECK_STATUS(kvq_quantizer_save(q, "unfitted.safetensors"), KVQ_ERR_STATE);
    CHECK_STATUS(kvq_quantizer_fit(q, x, 1), KVQ_ERR_INVALID_ARG); /* 8 sub-vectors < 256 */
    kvq_quantizer_free(q);
    char msg[256];
    CHECK_STATUS(kvq_config_parse("vecinfer:sub_dim=7", 64, &c, msg, sizeof msg), KVQ_ERR_UNSUPPORTED);
    CHECK(strstr(msg, "sub_dim") != NULL);
    CHECK_STATUS(kvq_config_parse("vecinfer:bits=9", 64, &c, msg, sizeof msg), KVQ_ERR_UNSUPPORTED);
    CHECK_STATUS(kvq_config_parse("comm_vq", 63, &c, msg, sizeof msg), KVQ_ERR_UNSUPPORTED);
    CHECK_STATUS(kvq_config_parse("comm_vq:rope=sideways", 64, &c, msg, sizeof msg), KVQ_ERR_PARSE);
}

/* ------------------------------------------------------------------ spectral */

TEST(calib_spectral_water_filling_spends_the_budget) {
    double ev[128];
    uint8_t bits[128];
    kvqi_rng r;
    kvqi_rng_seed(&r, 3);
    for (uint32_t trial = 0; trial < 20; trial++) {
        uint32_t d = 8 + trial * 6;
        for (uint32_t i = 0; i < d; i++) ev[i] = exp(6.0 * kvqi_rng_uniform(&r)) * (i % 5 ? 1 : 0.001);
        uint32_t budget = (trial * 37) % (8 * d + 1);
        double theta;
        REQUIRE_OK(kvqi_spectral_allocate(ev, d, budget, bits, &theta));
        uint32_t total = 0;
        for (uint32_t i = 0; i < d; i++) total += bits[i];
        CHECKF(total == budget, "d=%u: spent %u of %u bits", d, total, budget);
        for (uint32_t i = 0; i < d; i++)
            for (uint32_t j = 0; j < d; j++)
                if (ev[i] > ev[j]) CHECKF(bits[i] >= bits[j], "larger variance got fewer bits");
        /* the integer bits follow 1/2 log2(ev/theta) within a bit or two */
        for (uint32_t i = 0; budget > 0 && budget < 4 * d && i < d; i++) {
            double cont = ev[i] > theta ? 0.5 * log2(ev[i] / theta) : 0.0;
            CHECKF(fabs(bits[i] - cont) <= 1.6, "d=%u dir %u: %u bits vs continuous %.2f", d, i,
                   bits[i], cont);
        }
    }
    CHECK_STATUS(kvqi_spectral_allocate(ev, 4, 33, bits, NULL), KVQ_ERR_INVALID_ARG);
}

TEST(calib_spectral_beats_mse_on_decaying_spectrum) {
    enum { N = 2048, D = 64, T = 512 };
    static float x[N * D], test_x[T * D];
    double ev[D];
    for (int i = 0; i < D; i++) ev[i] = 50.0 * pow(0.8, i) + 0.01;
    REQUIRE_OK(spectrum_keys(x, N, D, ev, 41));
    /* held-out rows: the same basis, fresh coefficients */
    {
        static float z[T * D];
        float *V = malloc((size_t)D * D * sizeof(float));
        REQUIRE(V);
        REQUIRE_OK(kvqi_random_orthogonal(D, 41, V));
        gaussian(z, T * D, 999);
        for (int i = 0; i < T; i++) {
            float zi[D];
            for (int k = 0; k < D; k++) zi[k] = (float)(z[i * D + k] * sqrt(ev[k]));
            kvqi_matvec(V, D, zi, test_x + (size_t)i * D);
        }
        free(V);
    }
    for (uint32_t b = 1; b <= 3; b++) {
        char spec[64];
        snprintf(spec, sizeof spec, "spectral:bits=%u", b);
        kvq_quantizer *sp, *mse;
        REQUIRE_OK(make_fitted(spec, D, KVQ_ISA_AUTO, x, N, &sp));
        snprintf(spec, sizeof spec, "turboquant_mse:bits=%u", b);
        REQUIRE_OK(make(spec, D, &mse));
        CHECK(kvq_code_size(sp) == (size_t)b * D / 8);
        double e_sp = rel_mse(sp, test_x, T, D), e_mse = rel_mse(mse, test_x, T, D);
        fprintf(stderr, "b=%u: spectral rel mse %.5f (%zu B), turboquant_mse %.5f (%zu B)\n", b,
                e_sp, kvq_code_size(sp), e_mse, kvq_code_size(mse));
        CHECKF(e_sp < e_mse, "b=%u: spectral %.5f not below turboquant_mse %.5f", b, e_sp, e_mse);
        /* scores are <q, decode> */
        static float y[16 * D], qv[D], sc[16];
        static uint8_t codes[16 * D];
        gaussian(qv, D, 7);
        REQUIRE_OK(kvq_encode(sp, test_x, 16, codes));
        REQUIRE_OK(kvq_decode(sp, codes, 16, y));
        REQUIRE_OK(kvq_score(sp, qv, codes, 16, sc));
        for (int i = 0; i < 16; i++)
            CHECK_NEAR(sc[i], dotd(qv, y + i * D, D),
                       1e-4 * sqrt(dotd(qv, qv, D) * dotd(y + i * D, y + i * D, D)));
        kvq_quantizer_free(sp);
        kvq_quantizer_free(mse);
    }
}

/* ------------------------------------------------------------------- comm_vq */

static void lowrank_keys(float *x, size_t n, uint32_t d, uint64_t seed) {
    /* 6 latent factors plus noise: structure an additive codebook can learn */
    static float basis[6 * 256];
    gaussian(basis, 6 * d, seed);
    kvqi_rng r;
    kvqi_rng_seed(&r, seed + 5);
    for (size_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < d; j++) x[i * d + j] = 0.1f * (float)kvqi_rng_normal(&r);
    for (size_t i = 0; i < n; i++)
        for (int f = 0; f < 6; f++) {
            float a = (float)kvqi_rng_normal(&r) * (float)(3 - f * 0.4);
            for (uint32_t j = 0; j < d; j++) x[i * d + j] += a * basis[f * d + j];
        }
}

TEST(calib_comm_vq_decode_commutes_with_rope) {
    enum { N = 512, D = 64, T = 64 };
    static float x[N * D], y[T * D], y0[T * D], ref[T * D], qv[D], sc[T];
    static uint8_t codes[T * 16], codes0[T * 16];
    const char *specs[] = {"comm_vq:bits=5,n_codebooks=4", "comm_vq:bits=5,n_codebooks=3,rope=neox,rope_base=500000"};
    lowrank_keys(x, N, D, 51);
    for (int s = 0; s < 2; s++) {
        kvq_quantizer *q;
        REQUIRE_OK(make_fitted(specs[s], D, KVQ_ISA_AUTO, x, N, &q));
        kvq_config c;
        REQUIRE_OK(kvq_quantizer_config(q, &c));
        CHECK(kvq_code_size(q) == kvqi_packed_size(c.n_codebooks, 5) + 4);
        const int32_t positions[] = {0, 100, 10000};
        double err[3];
        REQUIRE_OK(kvq_encode(q, x, T, codes0));
        REQUIRE_OK(kvq_decode_at(q, codes0, NULL, T, y0)); /* position 0 */
        for (int p = 0; p < 3; p++) {
            int32_t pos[T];
            for (int i = 0; i < T; i++) pos[i] = positions[p];
            REQUIRE_OK(kvq_encode_at(q, x, pos, T, codes));
            REQUIRE_OK(kvq_decode(q, codes, T, y)); /* the stored position */
            double num = 0, den = 0, comm = 0;
            for (int i = 0; i < T; i++) {
                memcpy(ref + i * D, x + i * D, D * sizeof(float));
                kvqi_rope_apply(ref + i * D, D, c.rope_pairing, c.rope_base, positions[p]);
                float r0[D];
                memcpy(r0, y0 + i * D, sizeof r0);
                kvqi_rope_apply(r0, D, c.rope_pairing, c.rope_base, positions[p]);
                for (int j = 0; j < D; j++) {
                    double e = (double)y[i * D + j] - ref[i * D + j];
                    num += e * e;
                    den += (double)ref[i * D + j] * ref[i * D + j];
                    comm = fmax(comm, fabs((double)r0[j] - y[i * D + j]));
                }
            }
            err[p] = num / den;
            /* RoPE(decode at 0) == decode at p: the codewords commute with RoPE */
            CHECKF(comm < 1e-4, "%s p=%d: RoPE(decode) vs decode_at differ by %g", specs[s],
                   positions[p], comm);
            /* the codes at p are the codes at 0 (encoding happens before RoPE) */
            size_t packed = kvq_code_size(q) - 4;
            for (int i = 0; i < T; i++) CHECK(memcmp(codes + i * kvq_code_size(q), codes0 + i * kvq_code_size(q), packed) == 0);
            gaussian(qv, D, 60 + p);
            REQUIRE_OK(kvq_score_at(q, qv, codes, pos, T, sc));
            for (int i = 0; i < T; i++)
                CHECK_NEAR(sc[i], dotd(qv, y + i * D, D),
                           1e-4 * (1 + sqrt(dotd(qv, qv, D) * dotd(y + i * D, y + i * D, D))));
        }
        /* runs of consecutive positions (across a multiple of 256), repeats and jumps */
        {
            int32_t pos[T];
            for (int i = 0; i < T; i++) pos[i] = i < 40 ? 230 + i : (i < 45 ? 300 : 70000 + i);
            gaussian(qv, D, 77);
            REQUIRE_OK(kvq_score_at(q, qv, codes0, pos, T, sc));
            REQUIRE_OK(kvq_decode_at(q, codes0, pos, T, y));
            for (int i = 0; i < T; i++)
                CHECK_NEAR(sc[i], dotd(qv, y + i * D, D),
                           1e-4 * (1 + sqrt(dotd(qv, qv, D) * dotd(y + i * D, y + i * D, D))));
        }
        fprintf(stderr, "%s: rel err at p=0,100,10000: %.5f %.5f %.5f\n", specs[s], err[0], err[1], err[2]);
        CHECKF(err[0] < 0.2, "%s: relative error %.4f: codebooks did not learn", specs[s], err[0]);
        for (int p = 1; p < 3; p++)
            CHECKF(fabs(err[p] - err[0]) <= 1e-3 * err[0], "%s: error at p=%d %.6f vs p=0 %.6f",
                   specs[s], positions[p], err[p], err[0]);
        kvq_quantizer_free(q);
    }
}

TEST(calib_comm_vq_codes_identical_across_isas) {
    enum { N = 256, D = 64, T = 50 };
    static float x[N * D], y_ref[T * D], y_isa[T * D];
    static uint8_t c_ref[T * 16], c_isa[T * 16];
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char path[512], spec[700];
    snprintf(path, sizeof path, "%s/cv.safetensors", dir);
    lowrank_keys(x, N, D, 52);
    kvq_quantizer *ref;
    REQUIRE_OK(make_fitted("comm_vq:bits=5,n_codebooks=3", D, KVQ_ISA_SCALAR, x, N, &ref));
    REQUIRE_OK(kvq_encode(ref, x, T, c_ref));
    REQUIRE_OK(kvq_decode(ref, c_ref, T, y_ref));
    REQUIRE_OK(kvq_quantizer_save(ref, path));
    const kvq_isa isas[] = {KVQ_ISA_AVX2, KVQ_ISA_AVX512, KVQ_ISA_NEON};
    int tested = 0;
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
        if (!kvq_isa_available(isas[k])) continue;
        tested++;
        kvq_config c;
        kvq_quantizer *q;
        snprintf(spec, sizeof spec, "comm_vq:bits=5,n_codebooks=3,artifact=%s", path);
        REQUIRE_OK(kvq_config_parse(spec, D, &c, NULL, 0));
        c.isa = isas[k];
        REQUIRE_OK(kvq_quantizer_create(&c, &q));
        REQUIRE_OK(kvq_encode(q, x, T, c_isa));
        CHECKF(memcmp(c_ref, c_isa, T * kvq_code_size(q)) == 0, "isa %d: codes differ", isas[k]);
        REQUIRE_OK(kvq_decode(q, c_ref, T, y_isa));
        CHECK(memcmp(y_ref, y_isa, sizeof y_ref) == 0);
        kvq_quantizer_free(q);
    }
    kvq_quantizer_free(ref);
    if (!tested) SKIP("no SIMD ISA on this CPU");
}

TEST(calib_position_free_methods_ignore_positions) {
    enum { D = 64, N = 8 };
    static float x[N * D], y1[N * D], y2[N * D], qv[D], s1[N], s2[N];
    static uint8_t c1[N * 64], c2[N * 64];
    int32_t pos[N] = {0, 5, 17, 100, 1000, 3, 9, 77};
    gaussian(x, N * D, 71);
    gaussian(qv, D, 72);
    kvq_quantizer *q;
    REQUIRE_OK(make("turboquant_mse:bits=3", D, &q));
    REQUIRE_OK(kvq_encode(q, x, N, c1));
    REQUIRE_OK(kvq_encode_at(q, x, pos, N, c2));
    CHECK(memcmp(c1, c2, N * kvq_code_size(q)) == 0);
    REQUIRE_OK(kvq_decode(q, c1, N, y1));
    REQUIRE_OK(kvq_decode_at(q, c1, pos, N, y2));
    CHECK(memcmp(y1, y2, sizeof y1) == 0);
    REQUIRE_OK(kvq_score(q, qv, c1, N, s1));
    REQUIRE_OK(kvq_score_at(q, qv, c1, pos, N, s2));
    CHECK(memcmp(s1, s2, sizeof s1) == 0);
    kvq_quantizer_free(q);
}

/* ----------------------------------------------------------------- ratequant */

TEST(calib_ratequant_allocation_exact_and_monotone) {
    const uint32_t choices[] = {1, 2, 3, 4};
    double sens[64];
    uint32_t bits[64];
    kvqi_rng r;
    kvqi_rng_seed(&r, 81);
    const double targets[] = {1.0, 1.5, 2.0, 2.25, 3.5, 4.0};
    for (uint32_t L = 4; L <= 64; L += 12)
        for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
            for (uint32_t l = 0; l < L; l++) sens[l] = exp(4.0 * kvqi_rng_uniform(&r));
            REQUIRE_OK(kvq_ratequant_allocate(sens, L, choices, 4, targets[t], bits));
            uint64_t total = 0;
            for (uint32_t l = 0; l < L; l++) {
                total += bits[l];
                CHECK(bits[l] >= 1 && bits[l] <= 4);
            }
            CHECKF(total == (uint64_t)floor(targets[t] * L + 1e-9), "L=%u target %.2f: total %llu", L,
                   targets[t], (unsigned long long)total);
            if (fmod(targets[t] * L, 1.0) == 0.0)
                CHECK_NEAR((double)total / L, targets[t], 1e-12);
            for (uint32_t a = 0; a < L; a++)
                for (uint32_t b = 0; b < L; b++)
                    if (sens[a] > sens[b]) CHECKF(bits[a] >= bits[b], "more sensitive layer got fewer bits");
        }
    /* 28 layers at 1.5: 42 bits, the 14 most sensitive layers get 2 when their spread is small */
    for (uint32_t l = 0; l < 28; l++) sens[l] = 1.0 + l * 0.01;
    REQUIRE_OK(kvq_ratequant_allocate(sens, 28, choices, 4, 1.5, bits));
    for (uint32_t l = 0; l < 28; l++) CHECK(bits[l] == (l >= 14 ? 2u : 1u));
    CHECK_STATUS(kvq_ratequant_allocate(sens, 28, choices, 4, 4.5, bits), KVQ_ERR_INVALID_ARG);
    const uint32_t unsorted[] = {2, 1};
    CHECK_STATUS(kvq_ratequant_allocate(sens, 28, unsorted, 2, 1.5, bits), KVQ_ERR_INVALID_ARG);
}

TEST(calib_ratequant_plan_to_cache_configs) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char path[512], msg[256];
    snprintf(path, sizeof path, "%s/plan.safetensors", dir);
    double sens[6] = {0.1, 5, 0.3, 2, 0.2, 9};
    uint32_t bits[6];
    const uint32_t choices[] = {1, 2, 3, 4};
    REQUIRE_OK(kvq_ratequant_allocate(sens, 6, choices, 4, 2.0, bits));
    REQUIRE_OK(kvq_ratequant_save(path, "turboquant_rvq:residuals=2", sens, bits, 6, 2.0));
    kvq_cache_config base, per[6];
    REQUIRE_OK(kvq_cache_config_init(&base, 2, 64, "fp16", "fp16", msg, sizeof msg));
    REQUIRE_OK(kvq_ratequant_cache_configs(path, &base, 6, per, msg, sizeof msg));
    for (int l = 0; l < 6; l++) {
        CHECK(per[l].key.method == KVQ_METHOD_TURBOQUANT_RVQ);
        CHECK(per[l].key.bits == bits[l]);
        CHECK(per[l].value.method == KVQ_METHOD_FP16);
    }
    CHECK_STATUS(kvq_ratequant_cache_configs(path, &base, 7, per, msg, sizeof msg), KVQ_ERR_MISMATCH);
    CHECK(strstr(msg, "6 layers") != NULL);
}

/* ----------------------------------------------------------------- artifacts */

static kvq_status slurp(const char *path, uint8_t **buf, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return KVQ_ERR_IO;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc((size_t)len + 1);
    *n = (size_t)len;
    kvq_status st = *buf && fread(*buf, 1, *n, f) == *n ? KVQ_OK : KVQ_ERR_IO;
    fclose(f);
    return st;
}

static kvq_status spit(const char *path, const uint8_t *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return KVQ_ERR_IO;
    kvq_status st = fwrite(buf, 1, n, f) == n ? KVQ_OK : KVQ_ERR_IO;
    fclose(f);
    return st;
}

/* Rewrite an artifact with one float of one tensor replaced. */
static kvq_status rewrite(const char *src, const char *dst, const char *tensor, size_t at, float v) {
    kvqi_st_file *f;
    kvq_status st = kvqi_st_read(src, &f);
    if (st != KVQ_OK) return st;
    size_t n = kvqi_st_count(f);
    kvqi_st_tensor t[16];
    void *copy = NULL;
    for (size_t i = 0; i < n && i < 16; i++) {
        t[i] = *kvqi_st_at(f, i);
        if (strcmp(t[i].name, tensor) == 0 && (at + 1) * 4 <= t[i].nbytes) {
            copy = malloc(t[i].nbytes);
            memcpy(copy, t[i].data, t[i].nbytes);
            memcpy((uint8_t *)copy + 4 * at, &v, 4);
            t[i].data = copy;
        }
    }
    const char *keys[] = {"format", "version", "method", "dim", "bits", "seed", "code_size", "spec"};
    kvqi_st_meta meta[8];
    for (int i = 0; i < 8; i++) {
        meta[i].key = keys[i];
        meta[i].value = kvqi_st_meta_get(f, keys[i]);
    }
    st = copy ? kvqi_st_write(dst, t, n, meta, 8) : KVQ_ERR_INVALID_ARG;
    free(copy);
    kvqi_st_free(f);
    return st;
}

TEST(calib_artifacts_roundtrip_and_rejects) {
    enum { N = 512, D = 64 };
    static float x[N * D], y1[64 * D], y2[64 * D];
    static uint8_t c1[64 * 64], c2[64 * 64];
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    outlier_keys(x, N, D, 91);
    const char *specs[] = {"vecinfer:seed=7", "spectral:bits=2,seed=7", "comm_vq:bits=5,n_codebooks=2,seed=7"};
    const char *probe[] = {"vecinfer.lambda", "spectral.eigenvalues", "comm_vq.codewords"};
    for (int s = 0; s < 3; s++) {
        char a[600], b[600], bad[600], spec[1200], msg[512];
        snprintf(a, sizeof a, "%s/a%d.safetensors", dir, s);
        snprintf(b, sizeof b, "%s/b%d.safetensors", dir, s);
        snprintf(bad, sizeof bad, "%s/bad%d.safetensors", dir, s);
        kvq_quantizer *q, *l, *viaspec;
        REQUIRE_OK(make_fitted(specs[s], D, KVQ_ISA_AUTO, x, N, &q));
        REQUIRE_OK(kvq_quantizer_save(q, a));
        REQUIRE_OK(kvq_quantizer_load(a, &l));
        REQUIRE_OK(kvq_quantizer_save(l, b));
        uint8_t *ba, *bb;
        size_t na, nb;
        REQUIRE_OK(slurp(a, &ba, &na));
        REQUIRE_OK(slurp(b, &bb, &nb));
        CHECKF(na == nb && memcmp(ba, bb, na) == 0, "%s: save(load(save)) not byte-identical", specs[s]);
        REQUIRE_OK(kvq_encode(q, x, 64, c1));
        REQUIRE_OK(kvq_encode(l, x, 64, c2));
        CHECK(memcmp(c1, c2, 64 * kvq_code_size(q)) == 0);
        CHECK(kvq_shared_size(q) == kvq_shared_size(l));
        /* through the config string, as --cache-k vecinfer:artifact=FILE does; the seed in
         * the string may differ: the artifact's is used */
        const char *name = kvq_method_name((kvq_method)(KVQ_METHOD_VECINFER + s));
        snprintf(spec, sizeof spec, "%s%s%s,artifact=%s", name, s == 0 ? ":bits=8" : "",
                 s == 1 ? ":bits=2" : (s == 2 ? ":bits=5,n_codebooks=2" : ""), a);
        kvq_config c;
        REQUIRE_OK(kvq_config_parse(spec, D, &c, msg, sizeof msg));
        REQUIRE_OK(kvq_quantizer_create(&c, &viaspec));
        REQUIRE_OK(kvq_encode(viaspec, x, 64, c2));
        CHECKF(memcmp(c1, c2, 64 * kvq_code_size(q)) == 0, "%s via artifact= encodes differently", specs[s]);
        REQUIRE_OK(kvq_decode(q, c1, 64, y1));
        REQUIRE_OK(kvq_decode(viaspec, c1, 64, y2));
        CHECK(memcmp(y1, y2, sizeof y1) == 0);
        kvq_quantizer_free(viaspec);
        /* made for dim 64, asked for 128: refused with a reason */
        CHECK_STATUS(kvq_config_parse(spec, 128, &c, msg, sizeof msg), KVQ_ERR_MISMATCH);
        CHECKF(strstr(msg, "dim 64") != NULL, "message: %s", msg);
        c.dim = 128;
        CHECK_STATUS(kvq_quantizer_create(&c, &viaspec), KVQ_ERR_MISMATCH);
        /* another method's artifact */
        char other[1200];
        snprintf(other, sizeof other, "%s,artifact=%s", s == 0 ? "spectral:bits=2" : "vecinfer:bits=8", a);
        CHECK_STATUS(kvq_config_parse(other, D, &c, msg, sizeof msg), KVQ_ERR_MISMATCH);
        CHECK(strstr(msg, "method") != NULL);
        /* corrupt: truncated, a NaN in the learned state, a missing file */
        REQUIRE_OK(spit(bad, ba, na / 2));
        CHECK_FAILS(kvq_quantizer_load(bad, &viaspec));
        REQUIRE_OK(rewrite(a, bad, probe[s], 1, NAN));
        CHECK_STATUS(kvq_quantizer_load(bad, &viaspec), KVQ_ERR_FORMAT);
        if (s == 0) {
            REQUIRE_OK(rewrite(a, bad, "vecinfer.lambda", 0, -1.0f));
            CHECK_STATUS(kvq_quantizer_load(bad, &viaspec), KVQ_ERR_FORMAT);
            REQUIRE_OK(rewrite(a, bad, "vecinfer.hadamard_sign1", 3, 0.5f));
            CHECK_STATUS(kvq_quantizer_load(bad, &viaspec), KVQ_ERR_FORMAT);
        }
        if (s == 1) { /* codebook not ascending */
            REQUIRE_OK(rewrite(a, bad, "spectral.signal_codebooks", 0, 1e30f));
            CHECK_STATUS(kvq_quantizer_load(bad, &viaspec), KVQ_ERR_FORMAT);
        }
        /* single-byte flips anywhere: refused or, when they land in a float that stays
         * valid, a usable quantizer - never a crash */
        kvqi_rng fr;
        kvqi_rng_seed(&fr, 1234 + (uint64_t)s);
        for (int k = 0; k < 60; k++) {
            size_t at = k < 30 ? kvqi_rng_below(&fr, (uint32_t)KVQI_MIN(na, 400)) : kvqi_rng_below(&fr, (uint32_t)na);
            uint8_t saved = ba[at];
            ba[at] ^= (uint8_t)(1u << kvqi_rng_below(&fr, 8));
            REQUIRE_OK(spit(bad, ba, na));
            ba[at] = saved;
            if (kvq_quantizer_load(bad, &viaspec) == KVQ_OK) {
                CHECK_OK(kvq_encode(viaspec, x, 4, c2));
                kvq_quantizer_free(viaspec);
            }
        }
        snprintf(other, sizeof other, "%s:artifact=%s/missing.safetensors", name, dir);
        CHECK_FAILS(kvq_config_parse(other, D, &c, msg, sizeof msg));
        free(ba);
        free(bb);
        kvq_quantizer_free(l);
        kvq_quantizer_free(q);
    }
}

TEST(calib_keys_tensor_file_roundtrip) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char path[512], msg[256];
    snprintf(path, sizeof path, "%s/keys.safetensors", dir);
    static float x[100 * 32];
    gaussian(x, 100 * 32, 5);
    REQUIRE_OK(kvq_tensor_write_f32(path, "keys", x, 100, 32));
    float *y;
    size_t rows, cols;
    REQUIRE_OK(kvq_tensor_read_f32(path, NULL, &y, &rows, &cols, msg, sizeof msg));
    CHECK(rows == 100 && cols == 32);
    CHECK(memcmp(x, y, sizeof x) == 0);
    kvq_buffer_free(y);
    CHECK_STATUS(kvq_tensor_read_f32(path, "nope", &y, &rows, &cols, msg, sizeof msg), KVQ_ERR_FORMAT);
    CHECK(strstr(msg, "nope") != NULL);
    x[7] = NAN;
    REQUIRE_OK(kvq_tensor_write_f32(path, "keys", x, 100, 32));
    CHECK_STATUS(kvq_tensor_read_f32(path, NULL, &y, &rows, &cols, msg, sizeof msg), KVQ_ERR_FORMAT);
}

/* ----------------------------------------------------------------------- CLI */

TEST(calib_cli_keys_file_and_tiny_model) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char keys[512], art[512], plan[512], text[512], cmd[2400], spec[1200], msg[512];
    snprintf(keys, sizeof keys, "%s/keys.safetensors", dir);
    snprintf(art, sizeof art, "%s/sp.safetensors", dir);
    snprintf(plan, sizeof plan, "%s/plan.safetensors", dir);
    snprintf(text, sizeof text, "%s/text.txt", dir);
    static float x[600 * 32];
    double ev[32];
    for (int i = 0; i < 32; i++) ev[i] = pow(0.7, i);
    REQUIRE_OK(spectrum_keys(x, 600, 32, ev, 3));
    REQUIRE_OK(kvq_tensor_write_f32(keys, "keys", x, 600, 32));
    snprintf(cmd, sizeof cmd, "%s calibrate --help > /dev/null", kvqt_cli_path());
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s calibrate --keys %s --method spectral --bits 2 -o %s > /dev/null 2>&1",
             kvqt_cli_path(), keys, art);
    CHECK(system(cmd) == 0);
    kvq_quantizer *q;
    REQUIRE_OK(kvq_quantizer_load(art, &q));
    kvq_config c;
    REQUIRE_OK(kvq_quantizer_config(q, &c));
    CHECK(c.method == KVQ_METHOD_SPECTRAL && c.dim == 32 && c.bits == 2);
    kvq_quantizer_free(q);
    snprintf(spec, sizeof spec, "spectral:bits=2,artifact=%s", art);
    REQUIRE_OK(kvq_config_parse(spec, 32, &c, msg, sizeof msg));
    /* wrong method for --keys, no output, ratequant without a model: refused */
    snprintf(cmd, sizeof cmd, "%s calibrate --keys %s --method nope -o %s 2> /dev/null", kvqt_cli_path(), keys, art);
    CHECK(system(cmd) != 0);
    snprintf(cmd, sizeof cmd, "%s calibrate --keys %s --method ratequant -o %s 2> /dev/null", kvqt_cli_path(), keys, plan);
    CHECK(system(cmd) != 0);
    /* the tiny model: keys of layer 1 for vecinfer, and a RateQuant plan for its 2 layers */
    FILE *f = fopen(text, "w");
    REQUIRE(f);
    fputs("The quick brown fox jumps over the lazy dog. A stitch in time saves nine; "
          "the early bird catches the worm, and every cloud has a silver lining.", f);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "%s calibrate -m tests/data/tiny-llama.gguf -f %s --method vecinfer --bits 4 --layer 1 "
             "--tokens 64 --threads 1 -o %s > /dev/null 2>&1",
             kvqt_cli_path(), text, art);
    CHECK(system(cmd) == 0);
    REQUIRE_OK(kvq_quantizer_load(art, &q));
    REQUIRE_OK(kvq_quantizer_config(q, &c));
    CHECK(c.method == KVQ_METHOD_VECINFER && c.dim == 64 && c.bits == 4);
    kvq_quantizer_free(q);
    /* one artifact per layer, then the model runs with them in its cache */
    char base_out[520], layer1[540];
    snprintf(base_out, sizeof base_out, "%s/sp.safetensors", dir);
    snprintf(layer1, sizeof layer1, "%s/sp.layer01.safetensors", dir);
    snprintf(cmd, sizeof cmd,
             "%s calibrate -m tests/data/tiny-llama.gguf -f %s --method spectral --bits 3 --per-layer "
             "--tokens 24 --eval 16 --threads 1 -o %s > %s/eval.txt 2>&1",
             kvqt_cli_path(), text, base_out, dir);
    CHECK(system(cmd) == 0);
    REQUIRE_OK(kvq_quantizer_load(layer1, &q));
    kvq_quantizer_free(q);
    snprintf(cmd, sizeof cmd, "grep -q 'output KL from fp16 keys: spectral (per layer)' %s/eval.txt", dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd,
             "%s calibrate -m tests/data/tiny-llama.gguf -f %s --method ratequant --target 2 "
             "--tokens 32 --threads 1 -o %s > /dev/null 2>&1",
             kvqt_cli_path(), text, plan);
    CHECK(system(cmd) == 0);
    kvq_cache_config base, per[4];
    REQUIRE_OK(kvq_cache_config_init(&base, 2, 64, "fp16", "fp16", msg, sizeof msg));
    REQUIRE_OK(kvq_ratequant_cache_configs(plan, &base, 2, per, msg, sizeof msg));
    CHECK(per[0].key.bits + per[1].key.bits == 4);
    CHECK(per[0].key.method == KVQ_METHOD_TURBOQUANT_RVQ);
    /* sensitivities measured elsewhere, one per line */
    f = fopen(text, "w");
    REQUIRE(f);
    fputs("0.5\n0.01\n3\n0.2\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "%s calibrate --method ratequant --sensitivities %s --key-spec mse --target 2.5 -o %s > /dev/null",
             kvqt_cli_path(), text, plan);
    CHECK(system(cmd) == 0);
    REQUIRE_OK(kvq_ratequant_cache_configs(plan, &base, 4, per, msg, sizeof msg));
    CHECK(per[0].key.method == KVQ_METHOD_TURBOQUANT_MSE);
    CHECK(per[0].key.bits + per[1].key.bits + per[2].key.bits + per[3].key.bits == 10);
    CHECK(per[2].key.bits >= per[0].key.bits && per[0].key.bits >= per[3].key.bits &&
          per[3].key.bits >= per[1].key.bits);
}
