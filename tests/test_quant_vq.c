/* test_quant_vq.c - the vq method's kernels (src/cpu/vq_*.c): the nearest-centroid
 * search and the value accumulation of every ISA against the scalar reference, bit for
 * bit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
