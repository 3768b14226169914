/*
 * test_portable.c - every SIMD table of the quantizer kernels (AVX2, AVX-512, NEON: those
 * this CPU runs) against the scalar reference, kernel by kernel, on the inputs that
 * separate implementations: lengths that leave tails, NaN, infinities, signed zeros,
 * values exactly on a threshold, fp16 subnormals and NaN payloads, long popcounts.
 * Kernels that make codes must match bit for bit; those that make scores, to rounding.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"
#include "test.h"

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Gaussian-ish values with specials sprinkled in (every 13th and 17th entry). */
static void fill_mixed(float *x, size_t n, uint64_t seed, const float *thr, unsigned n_thr) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    static const uint32_t specials[] = {0x7fc00000u, 0xffc00001u, 0x7f800000u, 0xff800000u,
                                        0x80000000u, 0x00000000u, 0x00000001u, 0x807fffffu};
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)kvqi_rng_normal(&r);
        if (i % 13 == 5) x[i] = f32_from_bits(specials[(i / 13) % 8]);
        if (thr && n_thr && i % 17 == 3) x[i] = thr[(i / 17) % n_thr]; /* exactly on a threshold */
    }
}

static int n_simd_tables(const kvqi_quant_kernels **out) {
    int n = 0;
    for (int isa = KVQ_ISA_AVX2; isa <= KVQ_ISA_NEON; isa++)
        if (kvq_isa_available((kvq_isa)isa)) out[n++] = kvqi_quant_kernels_for((kvq_isa)isa);
    return n;
}

static const uint32_t k_lengths[] = {1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 128, 257, 4096};
#define N_LENGTHS (sizeof k_lengths / sizeof k_lengths[0])

TEST(portable_quant_kernels_codes_bit_identical) {
    const kvqi_quant_kernels *T[4];
    int nt = n_simd_tables(T);
    if (nt == 0) SKIP("no SIMD ISA on this CPU");
    const kvqi_quant_kernels *S = &kvqi_quant_scalar;
    static float x[4096], thr[255], cb[256], y_ref[4096], y_simd[4096];
    static uint8_t c_ref[4096 + 8], c_simd[4096 + 8];
    for (int t = 0; t < nt; t++) {
        const char *isa = kvqi_isa_name(T[t]->isa);
        for (unsigned bits = 1; bits <= 8; bits++) {
            unsigned n_thr = (1u << bits) - 1u;
            for (unsigned k = 0; k < n_thr; k++) thr[k] = -2.5f + 5.0f * (float)(k + 1) / (float)(n_thr + 1);
            for (unsigned k = 0; k <= n_thr; k++) cb[k] = -3.0f + 0.37f * (float)k;
            for (size_t li = 0; li < N_LENGTHS; li++) {
                uint32_t n = k_lengths[li];
                size_t nbytes = ((size_t)n * bits + 7) / 8;
                fill_mixed(x, n, 11 * bits + n, thr, n_thr);
                memset(c_ref, 0xAA, sizeof c_ref);
                memset(c_simd, 0x55, sizeof c_simd);
                S->quantize_pack(x, n, 1.0f, thr, bits, c_ref);
                T[t]->quantize_pack(x, n, 1.0f, thr, bits, c_simd);
                CHECKF(memcmp(c_ref, c_simd, nbytes) == 0, "%s quantize_pack bits %u n %u", isa, bits, n);
                S->quantize_pack(x, n, 0.75f, thr, bits, c_ref);
                T[t]->quantize_pack(x, n, 0.75f, thr, bits, c_simd);
                CHECKF(memcmp(c_ref, c_simd, nbytes) == 0, "%s quantize_pack scaled bits %u n %u", isa,
                       bits, n);
                /* decode the same codes: one multiply per value, so bit-identical */
                S->lut_decode(c_ref, n, bits, cb, 0.5f, y_ref);
                T[t]->lut_decode(c_ref, n, bits, cb, 0.5f, y_simd);
                CHECKF(memcmp(y_ref, y_simd, n * sizeof(float)) == 0, "%s lut_decode bits %u n %u", isa,
                       bits, n);
            }
        }
        for (size_t li = 0; li < N_LENGTHS; li++) {
            uint32_t n = k_lengths[li];
            fill_mixed(x, n, 500 + n, NULL, 0);
            memset(c_ref, 0xAA, sizeof c_ref);
            memset(c_simd, 0x55, sizeof c_simd);
            S->sign_pack(x, n, c_ref);
            T[t]->sign_pack(x, n, c_simd);
            CHECKF(memcmp(c_ref, c_simd, (n + 7) / 8) == 0, "%s sign_pack n %u", isa, n);
        }
    }
}

TEST(portable_quant_kernels_scores_match_to_rounding) {
    const kvqi_quant_kernels *T[4];
    int nt = n_simd_tables(T);
    if (nt == 0) SKIP("no SIMD ISA on this CPU");
    const kvqi_quant_kernels *S = &kvqi_quant_scalar;
    static float q[4096], cb[256], z[4096];
    static uint8_t codes[4096], mask[512];
    static uint16_t h[4096];
    kvqi_rng r;
    kvqi_rng_seed(&r, 77);
    for (size_t i = 0; i < 4096; i++) {
        q[i] = (float)kvqi_rng_normal(&r);
        z[i] = (float)kvqi_rng_normal(&r);
        codes[i] = (uint8_t)kvqi_rng_next(&r);
        h[i] = kvqi_fp32_to_fp16((float)kvqi_rng_normal(&r));
    }
    for (size_t i = 0; i < sizeof mask; i++) mask[i] = (uint8_t)kvqi_rng_next(&r);
    for (int k = 0; k < 256; k++) cb[k] = (float)(k - 128) / 64.0f;
    for (int t = 0; t < nt; t++) {
        const char *isa = kvqi_isa_name(T[t]->isa);
        for (size_t li = 0; li < N_LENGTHS; li++) {
            uint32_t n = k_lengths[li];
            /* error of a length-n float sum: a few ulps times the sum of |terms| */
            double mag = 0;
            for (uint32_t i = 0; i < n; i++) mag += fabs(q[i]) * 2.0;
            double tol = 4e-7 * mag * (1 + log2((double)n)) + 1e-6;
            for (unsigned bits = 1; bits <= 8; bits++) {
                float a = S->lut_dot(q, codes, n, bits, cb), b = T[t]->lut_dot(q, codes, n, bits, cb);
                CHECKF(fabs(a - b) <= tol, "%s lut_dot bits %u n %u: %.9g vs %.9g", isa, bits, n, b, a);
            }
            float a = S->masked_sum(z, mask, n), b = T[t]->masked_sum(z, mask, n);
            CHECKF(fabs(a - b) <= tol, "%s masked_sum n %u: %.9g vs %.9g", isa, n, b, a);
            a = S->fp16_dot(q, h, n);
            b = T[t]->fp16_dot(q, h, n);
            CHECKF(fabs(a - b) <= 4 * tol, "%s fp16_dot n %u: %.9g vs %.9g", isa, n, b, a);
        }
    }
}

TEST(portable_quant_kernels_popcount_and_fp16_exact) {
    const kvqi_quant_kernels *T[4];
    int nt = n_simd_tables(T);
    if (nt == 0) SKIP("no SIMD ISA on this CPU");
    const kvqi_quant_kernels *S = &kvqi_quant_scalar;
    enum { BIG = 70001 }; /* past 4096 blocks of 16 bytes: NEON's counter refill */
    uint8_t *a = malloc(BIG), *b = malloc(BIG);
    uint16_t *hh = malloc(65536 * sizeof(uint16_t)), *h_ref = malloc(65536 * 2), *h_simd = malloc(65536 * 2);
    float *f_ref = malloc(65536 * sizeof(float)), *f_simd = malloc(65536 * sizeof(float));
    float *src = malloc(65536 * sizeof(float));
    REQUIRE(a && b && hh && h_ref && h_simd && f_ref && f_simd && src);
    kvqi_rng r;
    kvqi_rng_seed(&r, 5);
    for (size_t i = 0; i < BIG; i++) {
        a[i] = (uint8_t)kvqi_rng_next(&r);
        b[i] = i % 3 ? 0xFF : (uint8_t)kvqi_rng_next(&r);
    }
    for (uint32_t i = 0; i < 65536; i++) hh[i] = (uint16_t)i;
    /* floats around every fp16 boundary: halfway cases, subnormals, overflow, NaN payloads */
    for (uint32_t i = 0; i < 65536; i++) {
        uint32_t u = (uint32_t)kvqi_rng_next(&r);
        if (i % 4 == 0) u = (u & 0x80000000u) | (0x33000000u + (u & 0x0FFFFFFFu) % 0x14800000u);
        if (i % 4 == 1) u = (u & 0xFFFFE000u) | 0x1000u; /* exact ties */
        if (i % 64 == 2) u = 0x7F800000u | (u & 0x807FFFFFu) | 1u; /* NaNs with payloads */
        src[i] = f32_from_bits(u);
    }
    static const size_t sizes[] = {0, 1, 15, 16, 17, 4095, 65536, 65537, BIG};
    for (int t = 0; t < nt; t++) {
        const char *isa = kvqi_isa_name(T[t]->isa);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            CHECKF(S->and_popcount(a, b, sizes[s]) == T[t]->and_popcount(a, b, sizes[s]),
                   "%s and_popcount %zu bytes", isa, sizes[s]);
        S->fp16_from_f32(src, 65536, h_ref);
        T[t]->fp16_from_f32(src, 65536, h_simd);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < 65536; i++)
            if (h_ref[i] != h_simd[i] && bad++ == 0) first = i;
        CHECKF(bad == 0, "%s fp16_from_f32: %zu differ, first 0x%08x -> 0x%04x vs 0x%04x", isa, bad,
               bits_of(src[first]), h_simd[first], h_ref[first]);
        S->fp16_to_f32(hh, 65536, f_ref);
        T[t]->fp16_to_f32(hh, 65536, f_simd);
        bad = 0;
        for (size_t i = 0; i < 65536; i++) {
            /* a NaN stays a NaN; hardware may quiet a signalling one, so payloads may differ */
            int same = isnan(f_ref[i]) ? isnan(f_simd[i]) : bits_of(f_ref[i]) == bits_of(f_simd[i]);
            if (!same && bad++ == 0) first = i;
        }
        CHECKF(bad == 0, "%s fp16_to_f32: %zu of 65536 halves differ, first 0x%04zx", isa, bad, first);
    }
    free(a);
    free(b);
    free(hh);
    free(h_ref);
    free(h_simd);
    free(f_ref);
    free(f_simd);
    free(src);
}

TEST(portable_hadamard_sign_batch_bit_identical) {
    const kvqi_quant_kernels *T[4];
    int nt = n_simd_tables(T);
    if (nt == 0) SKIP("no SIMD ISA on this CPU");
    enum { ROWS = 5 };
    static float x[ROWS * 1024], sign[1024];
    static uint8_t b_ref[ROWS * 160], b_simd[ROWS * 160];
    float n_ref[ROWS], n_simd[ROWS], a_ref[ROWS], a_simd[ROWS];
    kvqi_rng r;
    kvqi_rng_seed(&r, 9);
    for (size_t i = 0; i < ROWS * 1024; i++) x[i] = (float)kvqi_rng_normal(&r);
    for (int t = 0; t < nt; t++) {
        if (!T[t]->hadamard_sign_batch) continue;
        for (uint32_t dim = 4; dim <= 1024; dim *= 2) {
            for (uint32_t i = 0; i < dim; i++) sign[i] = (kvqi_rng_next(&r) & 1) ? 1.0f : -1.0f;
            size_t stride = dim / 8 + 3;
            memset(b_ref, 0, sizeof b_ref);
            memset(b_simd, 0, sizeof b_simd);
            kvqi_quant_scalar.hadamard_sign_batch(x, ROWS, dim, sign, b_ref, stride, n_ref, a_ref);
            T[t]->hadamard_sign_batch(x, ROWS, dim, sign, b_simd, stride, n_simd, a_simd);
            CHECKF(memcmp(b_ref, b_simd, ROWS * stride) == 0, "%s sign bits dim %u",
                   kvqi_isa_name(T[t]->isa), dim);
            CHECKF(memcmp(n_ref, n_simd, sizeof n_ref) == 0 && memcmp(a_ref, a_simd, sizeof a_ref) == 0,
                   "%s norms or |y| sums differ at dim %u", kvqi_isa_name(T[t]->isa), dim);
        }
    }
}
