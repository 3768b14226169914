/* test_quant_kernels.c - every quantizer kernel of every ISA table against the scalar
 * reference (quant_scalar.c): bit-identical where codes or rotations come out, within
 * float rounding where a sum is returned. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"
#include "test.h"

static void fill(float *x, size_t n, uint64_t seed) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)kvqi_rng_normal(&r);
}

static int close_rel(float a, float b, float scale) { return fabsf(a - b) <= 1e-5f * (fabsf(b) + scale); }

TEST(quant_kernels_match_scalar) {
    static const uint32_t dims[] = {16, 32, 64, 96, 100, 128, 256, 512};
    const kvqi_quant_kernels *ref = &kvqi_quant_scalar;
    static float x[4 * 512], y1[4 * 512], y2[4 * 512], thr[255], cb[256];
    static uint8_t c1[4 * 1024], c2[4 * 1024], p1[512], p2[512];
    for (int isa = KVQ_ISA_AVX2; isa <= KVQ_ISA_NEON; isa++) {
        if (!kvq_isa_available((kvq_isa)isa)) continue;
        const kvqi_quant_kernels *k = kvqi_quant_kernels_for((kvq_isa)isa);
        const char *name = kvqi_isa_name((kvq_isa)isa);
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            uint32_t d = dims[di];
            fill(x, 4 * d, 100 + d);
            x[1] = 0.0f;
            x[2] = -0.0f;
            for (unsigned bits = 1; bits <= 8; bits++) {
                unsigned K = 1u << bits;
                for (unsigned j = 0; j < K; j++) cb[j] = -2.0f + 4.0f * (j + 0.5f) / K;
                for (unsigned j = 0; j + 1 < K; j++) thr[j] = 0.5f * (cb[j] + cb[j + 1]);
                size_t pb = kvqi_packed_size(d, bits);
                memset(p1, 0xAA, sizeof p1);
                memset(p2, 0xAA, sizeof p2);
                ref->quantize_pack(x, d, 0.9f, thr, bits, p1);
                k->quantize_pack(x, d, 0.9f, thr, bits, p2);
                CHECKF(memcmp(p1, p2, pb) == 0, "%s quantize_pack d=%u b=%u", name, d, bits);
                ref->lut_decode(p1, d, bits, cb, 1.5f, y1);
                k->lut_decode(p1, d, bits, cb, 1.5f, y2);
                CHECKF(memcmp(y1, y2, d * sizeof(float)) == 0, "%s lut_decode d=%u b=%u", name, d, bits);
                float a = ref->lut_dot(x + d, p1, d, bits, cb), b = k->lut_dot(x + d, p1, d, bits, cb);
                CHECKF(close_rel(b, a, sqrtf((float)d)), "%s lut_dot d=%u b=%u: %g vs %g", name, d, bits, b, a);
            }
            ref->sign_pack(x, d, p1);
            k->sign_pack(x, d, p2);
            CHECKF(memcmp(p1, p2, (d + 7) / 8) == 0, "%s sign_pack d=%u", name, d);
            CHECKF(close_rel(k->masked_sum(x + d, p1, d), ref->masked_sum(x + d, p1, d), sqrtf((float)d)),
                   "%s masked_sum d=%u", name, d);
            ref->sign_pack(x + d, d, p2);
            CHECK(k->and_popcount(p1, p2, (d + 7) / 8) == ref->and_popcount(p1, p2, (d + 7) / 8));
            {
                static uint8_t planes[4][512];
                for (int j = 0; j < 4; j++) ref->sign_pack(x + (size_t)j * 7, d, planes[j]);
                uint32_t pa, pb2;
                uint32_t ra = ref->popcount_planes(p1, planes[0], sizeof planes[0], 4, (d + 7) / 8, &pa);
                uint32_t rb = k->popcount_planes(p1, planes[0], sizeof planes[0], 4, (d + 7) / 8, &pb2);
                CHECKF(ra == rb && pa == pb2, "%s popcount_planes d=%u", name, d);
            }
            uint16_t h1[512], h2[512];
            ref->fp16_from_f32(x, d, h1);
            k->fp16_from_f32(x, d, h2);
            CHECKF(memcmp(h1, h2, d * 2) == 0, "%s fp16_from_f32 d=%u", name, d);
            ref->fp16_to_f32(h1, d, y1);
            k->fp16_to_f32(h1, d, y2);
            CHECKF(memcmp(y1, y2, d * 4) == 0, "%s fp16_to_f32 d=%u", name, d);
            CHECK(close_rel(k->fp16_dot(x + d, h1, d), ref->fp16_dot(x + d, h1, d), sqrtf((float)d)));
            if (d % 32 == 0) {
                uint32_t nb = d / 32;
                for (int which = 0; which < 2; which++) {
                    size_t bs = which ? 18 : 34;
                    (which ? ref->q4_0_encode : ref->q8_0_encode)(x, nb, c1);
                    (which ? k->q4_0_encode : k->q8_0_encode)(x, nb, c2);
                    CHECKF(memcmp(c1, c2, nb * bs) == 0, "%s q%d_0 encode d=%u", name, which ? 4 : 8, d);
                    (which ? ref->q4_0_decode : ref->q8_0_decode)(c1, nb, y1);
                    (which ? k->q4_0_decode : k->q8_0_decode)(c1, nb, y2);
                    CHECKF(memcmp(y1, y2, d * 4) == 0, "%s q%d_0 decode d=%u", name, which ? 4 : 8, d);
                    float a = (which ? ref->q4_0_dot : ref->q8_0_dot)(x + d, c1, nb);
                    float b = (which ? k->q4_0_dot : k->q8_0_dot)(x + d, c1, nb);
                    CHECKF(close_rel(b, a, sqrtf((float)d)), "%s q%d_0 dot d=%u", name, which ? 4 : 8, d);
                }
            }
            if (d & (d - 1)) continue; /* the rest are power-of-two Hadamard kernels */
            kvqi_hadamard h;
            REQUIRE_OK(kvqi_hadamard_init(&h, d, 7 + d));
            for (int inv = 0; inv < 2; inv++) {
                ref->hadamard_pow2(&h, x, y1, inv);
                k->hadamard_pow2(&h, x, y2, inv);
                CHECKF(memcmp(y1, y2, d * 4) == 0, "%s hadamard_pow2 d=%u inverse=%d", name, d, inv);
            }
            memcpy(y2, x, d * 4);
            kvqi_hadamard_apply(&h, y2, KVQ_ISA_SCALAR);
            ref->hadamard_pow2(&h, x, y1, 0);
            CHECKF(memcmp(y1, y2, d * 4) == 0, "scalar hadamard_pow2 d=%u differs from core", d);
            float n1[4], n2[4], s1[4], s2[4];
            ref->hadamard_sign_batch(x, 4, d, h.sign1, c1, d / 8, n1, s1);
            k->hadamard_sign_batch(x, 4, d, h.sign1, c2, d / 8, n2, s2);
            CHECKF(memcmp(c1, c2, 4 * (d / 8)) == 0 && memcmp(n1, n2, sizeof n1) == 0 &&
                       memcmp(s1, s2, sizeof s1) == 0,
                   "%s hadamard_sign_batch d=%u", name, d);
            float g[2] = {-0.7978846f, 0.7978846f}, gt[1] = {0.0f}, l[2] = {-0.7071068f, 0.7071068f};
            for (unsigned R = 1; R <= 4; R++) {
                size_t cs = 2 * R + R * (d / 8);
                memset(c1, 0, sizeof c1);
                memset(c2, 0, sizeof c2);
                ref->rvq1_batch(x, 4, &h, g, gt, l, gt, R, c1, cs);
                k->rvq1_batch(x, 4, &h, g, gt, l, gt, R, c2, cs);
                CHECKF(memcmp(c1, c2, 4 * cs) == 0, "%s rvq1_batch d=%u R=%u", name, d, R);
            }
            kvqi_hadamard_free(&h);
        }
    }
}
