/* test_quant_vq.c - the vq method's kernels (src/cpu/vq_*.c): the nearest-centroid
 * search and the value accumulation of every ISA against the scalar reference, bit for
 * bit; and the cache's fused vq value path against attention over kvq_decode'd values. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_internal.h"
#include "core/core.h"
#include "cpu/vq_kernels.h"
#include "quant/quant.h"
#include "test.h"

static void normal(float *x, size_t n, float scale, kvqi_rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = (float)kvqi_rng_normal(r) * scale;
}

/* Groups a search may tie on or choke on: centroids, midpoints of two centroids, zeros,
 * huge and non-finite entries, then Gaussian groups at several scales. */
static void search_inputs(float *v, uint32_t n_groups, kvqi_rng *r) {
    const float *cb = kvqi_vq_codebook();
    for (uint32_t g = 0; g < n_groups; g++) {
        float *x = v + 4 * (size_t)g;
        uint32_t a = (uint32_t)(kvqi_rng_next(r) & 255), b = (uint32_t)(kvqi_rng_next(r) & 255);
        switch (g % 8) {
        case 0: memcpy(x, cb + 4 * a, 4 * sizeof(float)); break;
        case 1:
            for (int i = 0; i < 4; i++) x[i] = 0.5f * (cb[4 * a + i] + cb[4 * b + i]);
            break;
        case 2: memset(x, 0, 4 * sizeof(float)); break;
        case 3:
            normal(x, 4, 1.0f, r);
            x[g % 4] = (g / 8) % 3 == 0 ? NAN : (g / 8) % 3 == 1 ? INFINITY : 3e38f;
            break;
        default: normal(x, 4, (float)(g % 5) * 0.7f + 0.05f, r); break;
        }
    }
}

TEST(quant_vq_kernels_match_scalar) {
    enum { NG = 512, T = 64, DMAX = 256, GMAX = 8 };
    static float v[4 * NG], soa[4 * 256], cent[4 * 256], w[GMAX * T], acc0[GMAX * DMAX], acc1[GMAX * DMAX];
    static uint8_t ref[NG], got[NG], codes[T * (2 + DMAX / 4)];
    const float *cb = kvqi_vq_codebook();
    for (uint32_t k = 0; k < 256; k++)
        for (uint32_t i = 0; i < 4; i++) soa[i * 256 + k] = cb[4 * k + i];
    for (uint32_t i = 0; i < 4 * 256; i++) cent[i] = cb[i] / 8.0f;
    kvqi_rng r;
    kvqi_rng_seed(&r, 4242);
    search_inputs(v, NG, &r);
    kvqi_vq_nearest_scalar(soa, v, NG, ref);
    for (uint32_t g = 0; g < NG; g++) CHECKF(ref[g] == kvqi_vq_nearest(v + 4 * g), "group %u: soa vs aos", g);
    static const uint32_t dims[] = {32, 64, 96, 128, 192, 256};
    static const uint32_t Gs[] = {1, 3, 8};
    static const size_t ns[] = {1, 7, 64};
    int checked = 0;
    for (int isa = KVQ_ISA_SCALAR; isa <= KVQ_ISA_NEON; isa++) {
        if (!kvq_isa_available((kvq_isa)isa)) continue;
        kvqi_vq_nearest_fn near = kvqi_vq_nearest_for((kvq_isa)isa);
        memset(got, 0xee, sizeof got);
        near(soa, v, NG, got);
        for (uint32_t g = 0; g < NG; g++)
            CHECKF(got[g] == ref[g], "%s group %u (%g %g %g %g): %u, scalar %u", kvqi_isa_name((kvq_isa)isa), g,
                   (double)v[4 * g], (double)v[4 * g + 1], (double)v[4 * g + 2], (double)v[4 * g + 3], got[g], ref[g]);
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
            for (size_t gi = 0; gi < 3; gi++)
                for (size_t ni = 0; ni < 3; ni++) {
                    uint32_t d = dims[di], G = Gs[gi];
                    size_t n = ns[ni], cs = 2 + d / 4;
                    kvqi_vq_accum_fn fn = kvqi_vq_accum_for((kvq_isa)isa, d);
                    for (size_t t = 0; t < n; t++) {
                        uint8_t *c = codes + t * cs;
                        uint16_t h = kvqi_fp32_to_fp16((float)(kvqi_rng_uniform(&r) * 4.0 + 0.01));
                        memcpy(c, &h, 2);
                        for (uint32_t j = 0; j < d / 4; j++) c[2 + j] = (uint8_t)(kvqi_rng_next(&r) & 255);
                    }
                    for (size_t i = 0; i < (size_t)G * T; i++) w[i] = (float)kvqi_rng_uniform(&r);
                    normal(acc0, (size_t)G * d, 0.5f, &r);
                    memcpy(acc1, acc0, (size_t)G * d * sizeof(float));
                    kvqi_vq_accum_scalar(cent, d, w, T, G, codes, cs, n, acc0);
                    fn(cent, d, w, T, G, codes, cs, n, acc1);
                    CHECKF(!memcmp(acc0, acc1, (size_t)G * d * sizeof(float)), "%s accum d=%u G=%u n=%zu differs",
                           kvqi_isa_name((kvq_isa)isa), d, G, n);
                    checked++;
                }
    }
    CHECK(checked >= 54);
}

/* The fused path is taken for Hadamard-rotated vq values and gives attention over the
 * decoded values: softmax(scale q.k) against keys stored in fp16, values from a quantizer
 * of the same config (the same codes), to float rounding, on every ISA. */
TEST(quant_vq_cache_fused_matches_decode) {
    enum { T = 300, NKV = 2, NQ = 6, DMAX = 128 };
    static float k[T * NKV * DMAX], v[T * NKV * DMAX], vd[T * DMAX], q[NQ * DMAX], out[NQ * DMAX];
    static uint8_t codes[T * (2 + DMAX / 4)];
    static double sc[T];
    static const uint32_t dims[] = {64, 128};
    for (int isa = KVQ_ISA_SCALAR; isa <= KVQ_ISA_NEON; isa++) {
        if (!kvq_isa_available((kvq_isa)isa)) continue;
        for (int di = 0; di < 2; di++) {
            uint32_t d = dims[di];
            kvqi_rng r;
            kvqi_rng_seed(&r, 99 + d);
            for (size_t t = 0; t < T; t++) {
                normal(k + t * NKV * d, NKV * d, 1.0f, &r);
                normal(v + t * NKV * d, NKV * d, (float)(0.2 + 3.0 * kvqi_rng_uniform(&r)), &r);
            }
            normal(q, NQ * d, 0.4f, &r);
            kvq_cache_config cfg;
            REQUIRE_OK(kvq_cache_config_init(&cfg, NKV, d, "fp16", "vq:seed=5", NULL, 0));
            cfg.key.isa = cfg.value.isa = (kvq_isa)isa;
            kvq_cache *c;
            REQUIRE_OK(kvq_cache_create(&cfg, &c));
            CHECKF(c->value.path == KVQI_PATH_VQ, "%s d=%u: value path %d", kvqi_isa_name((kvq_isa)isa), d,
                   (int)c->value.path);
            REQUIRE_OK(kvq_cache_append(c, k, v, T));
            float scale = 1.0f / sqrtf((float)d);
            REQUIRE_OK(kvq_cache_attend(c, q, NQ, 1, scale, NULL, out));
            kvq_quantizer *vq;
            REQUIRE_OK(kvq_quantizer_create(&cfg.value, &vq));
            double worst = 0, amax = 0;
            for (uint32_t h = 0; h < NQ; h++) {
                uint32_t g = h / (NQ / NKV);
                for (size_t t = 0; t < T; t++) memcpy(vd + t * d, v + (t * NKV + g) * d, d * sizeof(float));
                REQUIRE_OK(kvq_encode(vq, vd, T, codes));
                REQUIRE_OK(kvq_decode(vq, codes, T, vd));
                double m = -INFINITY, l = 0;
                for (size_t t = 0; t < T; t++) {
                    double s = 0;
                    for (uint32_t j = 0; j < d; j++)
                        s += (double)q[h * d + j] * kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(k[(t * NKV + g) * d + j]));
                    sc[t] = s * scale;
                    m = fmax(m, sc[t]);
                }
                for (size_t t = 0; t < T; t++) l += sc[t] = exp(sc[t] - m);
                for (uint32_t j = 0; j < d; j++) {
                    double o = 0;
                    for (size_t t = 0; t < T; t++) o += sc[t] * vd[t * d + j];
                    o /= l;
                    amax = fmax(amax, fabs(o));
                    worst = fmax(worst, fabs(o - out[h * d + j]));
                }
            }
            CHECKF(worst <= 1e-4 * amax, "%s d=%u: fused vs decoded %.3g (max %.3g)", kvqi_isa_name((kvq_isa)isa), d,
                   worst, amax);
            kvq_quantizer_free(vq);
            kvq_cache_free(c);
        }
    }
}
