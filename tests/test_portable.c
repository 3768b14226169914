/*
 * test_portable.c - every SIMD table of the quantizer kernels (AVX2, AVX-512, NEON: those
 * this CPU runs) against the scalar reference, kernel by kernel, on the inputs that
 * separate implementations: lengths that leave tails, NaN, infinities, signed zeros,
 * values exactly on a threshold, fp16 subnormals and NaN payloads, long popcounts.
 * Kernels that make codes must match bit for bit; those that make scores, to rounding.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu.h"
#include "cpu/cache_kernels.h"
#include "cpu/index_kernels.h"
#include "cpu/quant_kernels.h"
#include "engine/engine.h"
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

TEST(portable_block_and_rvq_kernels_bit_identical) {
    const kvqi_quant_kernels *T[4];
    int nt = n_simd_tables(T);
    if (nt == 0) SKIP("no SIMD ISA on this CPU");
    const kvqi_quant_kernels *S = &kvqi_quant_scalar;
    enum { NB = 24 };
    static float x[NB * 32], y_ref[NB * 32], y_simd[NB * 32], q[NB * 32];
    static uint8_t c_ref[NB * 34], c_simd[NB * 34];
    kvqi_rng r;
    kvqi_rng_seed(&r, 21);
    for (size_t i = 0; i < NB * 32; i++) {
        x[i] = (float)kvqi_rng_normal(&r) * (float)(1 + i / 32);
        q[i] = (float)kvqi_rng_normal(&r);
    }
    /* blocks that pick the scale differently: all zero, -0 first, |max| tied with opposite
     * signs (the first wins), a lone large value, subnormals */
    memset(x, 0, 32 * sizeof(float));
    x[32] = -0.0f;
    x[64 + 3] = -5.0f;
    x[64 + 9] = 5.0f;
    x[96 + 31] = 3e4f; /* the scale stays inside fp16 */
    for (int j = 0; j < 32; j++) x[128 + j] = f32_from_bits(0x00000100u + (uint32_t)j) * (j % 2 ? -1.0f : 1.0f);
    /* that block's scale is below the normal floats (1 / d would overflow; its fp16 is 0):
     * codes 0 (q8_0) and 8 (q4_0) by definition, on every ISA and compiler (a conversion
     * of the overflow to an integer was undefined, and clang's scalar code gave other
     * bytes than its SIMD kernels) */
    S->q8_0_encode(x, NB, c_ref);
    for (int j = 0; j < 34; j++) CHECKF(c_ref[4 * 34 + j] == 0, "q8_0 subnormal-scale block byte %d: %u", j, c_ref[4 * 34 + j]);
    S->q4_0_encode(x, NB, c_ref);
    for (int j = 2; j < 18; j++) CHECKF(c_ref[4 * 18 + j] == 0x88, "q4_0 subnormal-scale block byte %d: %u", j, c_ref[4 * 18 + j]);
    for (int t = 0; t < nt; t++) {
        const char *isa = kvqi_isa_name(T[t]->isa);
        S->q8_0_encode(x, NB, c_ref);
        T[t]->q8_0_encode(x, NB, c_simd);
        CHECKF(memcmp(c_ref, c_simd, NB * 34) == 0, "%s q8_0_encode", isa);
        S->q8_0_decode(c_ref, NB, y_ref);
        T[t]->q8_0_decode(c_ref, NB, y_simd);
        CHECKF(memcmp(y_ref, y_simd, sizeof y_ref) == 0, "%s q8_0_decode", isa);
        float a = S->q8_0_dot(q, c_ref, NB), b = T[t]->q8_0_dot(q, c_ref, NB);
        CHECKF(fabsf(a - b) <= 1e-4f * (1.0f + fabsf(a)) + 1e-3f, "%s q8_0_dot %.9g vs %.9g", isa, b, a);
        S->q4_0_encode(x, NB, c_ref);
        T[t]->q4_0_encode(x, NB, c_simd);
        CHECKF(memcmp(c_ref, c_simd, NB * 18) == 0, "%s q4_0_encode", isa);
        S->q4_0_decode(c_ref, NB, y_ref);
        T[t]->q4_0_decode(c_ref, NB, y_simd);
        CHECKF(memcmp(y_ref, y_simd, sizeof y_ref) == 0, "%s q4_0_decode", isa);
        a = S->q4_0_dot(q, c_ref, NB);
        b = T[t]->q4_0_dot(q, c_ref, NB);
        CHECKF(fabsf(a - b) <= 1e-4f * (1.0f + fabsf(a)) + 1e-3f, "%s q4_0_dot %.9g vs %.9g", isa, b, a);
    }
    /* 1-bit RVQ: Gaussian then Laplacian 1-bit codebooks (their exact values do not
     * matter here, only that every table computes the same codes from them) */
    static const float cb_g[2] = {-0.7978846f, 0.7978846f}, thr_g[1] = {0.0f};
    static const float cb_l[2] = {-0.7071068f, 0.7071068f}, thr_l[1] = {0.0f};
    enum { ROWS = 6 };
    static float xr[ROWS * 1024];
    static uint8_t r_ref[ROWS * (8 + 4 * 128)], r_simd[ROWS * (8 + 4 * 128)];
    for (size_t i = 0; i < ROWS * 1024; i++) xr[i] = (float)kvqi_rng_normal(&r);
    for (uint32_t dim = 16; dim <= 1024; dim *= 4)
        for (unsigned res = 1; res <= 3; res++) {
            kvqi_hadamard had;
            REQUIRE_OK(kvqi_hadamard_init(&had, dim, 1000 + dim));
            size_t cs = 2 * res + res * dim / 8;
            S->rvq1_batch(xr, ROWS, &had, cb_g, thr_g, cb_l, thr_l, res, r_ref, cs);
            for (int t = 0; t < nt; t++) {
                if (!T[t]->rvq1_batch) continue;
                memset(r_simd, 0x5A, sizeof r_simd);
                T[t]->rvq1_batch(xr, ROWS, &had, cb_g, thr_g, cb_l, thr_l, res, r_simd, cs);
                CHECKF(memcmp(r_ref, r_simd, ROWS * cs) == 0, "%s rvq1_batch dim %u residuals %u",
                       kvqi_isa_name(T[t]->isa), dim, res);
            }
            kvqi_hadamard_free(&had);
        }
}

/* The index's kernels: fast-scan sums are integers and the float kernels follow the
 * canonical order, so every ISA must equal the reference exactly. */
TEST(portable_index_kernels_bit_identical) {
    int tested = 0;
    kvqi_rng r;
    kvqi_rng_seed(&r, 171);
    enum { G = 1100 }; /* past one 1024-group chunk of 16-bit counters */
    static uint8_t block[G * 16], lut[G * 16], lut_ref[G * 16], lut_simd[G * 16];
    static uint8_t qu_ref[4500], qu_simd[4500], c8[4500];
    static float a[4500], b[4500];
    static uint16_t h[4500];
    for (size_t i = 0; i < sizeof block; i++) block[i] = (uint8_t)kvqi_rng_below(&r, 256);
    for (size_t i = 0; i < sizeof lut; i++) lut[i] = (uint8_t)(i % 97 == 0 ? 60 : kvqi_rng_below(&r, 61));
    for (size_t i = 0; i < 4500; i++) {
        a[i] = (float)kvqi_rng_normal(&r);
        b[i] = (float)kvqi_rng_normal(&r);
        c8[i] = (uint8_t)kvqi_rng_below(&r, 256);
        h[i] = kvqi_fp32_to_fp16((float)kvqi_rng_normal(&r));
    }
    const kvqi_index_kernels *S = kvqi_index_kernels_for(KVQ_ISA_SCALAR);
    for (int isa = KVQ_ISA_AVX2; isa <= KVQ_ISA_NEON; isa++) {
        if (!kvq_isa_available((kvq_isa)isa)) continue;
        tested++;
        const kvqi_index_kernels *K = kvqi_index_kernels_for((kvq_isa)isa);
        const char *name = kvqi_isa_name((kvq_isa)isa);
        uint32_t ref[32], got[32];
        static const uint32_t groups[] = {4, 8, 100, 1024, 1028, G - G % 4};
        for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++) {
            S->fastscan(block, lut, groups[gi], ref);
            K->fastscan(block, lut, groups[gi], got);
            CHECKF(memcmp(ref, got, sizeof ref) == 0, "%s fastscan groups=%u", name, groups[gi]);
        }
        static const uint32_t dims[] = {3, 4, 17, 64, 127, 384, 4096};
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            uint32_t d = dims[di], d_pad = (d + 63) / 64 * 64;
            static float q[4160], sub[4160];
            float vmin_r, delta_r, vmin_s, delta_s;
            memcpy(q, a, d * sizeof(float));
            memset(q + d, 0, (d_pad - d) * sizeof(float));
            memcpy(sub, b, d * sizeof(float)); /* a residual against a centroid */
            memset(sub + d, 0, (d_pad - d) * sizeof(float));
            for (int with_sub = 0; with_sub < 2; with_sub++) {
                const float *sp = with_sub ? sub : NULL;
                S->build_lut4(q, sp, d, d_pad, qu_ref, lut_ref, &vmin_r, &delta_r);
                K->build_lut4(q, sp, d, d_pad, qu_simd, lut_simd, &vmin_s, &delta_s);
                CHECKF(memcmp(qu_ref, qu_simd, d_pad) == 0 && memcmp(lut_ref, lut_simd, d_pad * 4) == 0 &&
                           vmin_r == vmin_s && delta_r == delta_s,
                       "%s build_lut4 d=%u sub=%d", name, d, with_sub);
            }
        }
        uint32_t Sv[32];
        float fa[32], fr[32], fe[32], fp[32], d_ref[32], e_ref[32], d_simd[32], e_simd[32];
        for (int v = 0; v < 32; v++) {
            Sv[v] = kvqi_rng_below(&r, 4000);
            fa[v] = (float)kvqi_rng_uniform(&r) * 4.0f;
            fr[v] = (float)kvqi_rng_normal(&r);
            fe[v] = (float)kvqi_rng_uniform(&r);
            fp[v] = (float)kvqi_rng_below(&r, 128);
        }
        kvqi_block_consts c = {0.013f, -0.41f, 2.5f, 1.75f, 0.9f, 1.9f, 0.02f, 3.0f};
        uint32_t m_ref = S->estimate_block(Sv, fa, fr, fe, fp, &c, d_ref, e_ref);
        uint32_t m_simd = K->estimate_block(Sv, fa, fr, fe, fp, &c, d_simd, e_simd);
        CHECKF(m_ref == m_simd && memcmp(d_ref, d_simd, sizeof d_ref) == 0 &&
                   memcmp(e_ref, e_simd, sizeof e_ref) == 0,
               "%s estimate_block (mask 0x%08x vs 0x%08x)", name, m_simd, m_ref);
        CHECKF(m_ref != 0 && m_ref != 0xffffffffu, "estimate_block test constants select nothing apart");
        static float ct[64 * 16];
        for (size_t i = 0; i < 64 * 16; i++) ct[i] = a[i + 7];
        for (int ip = 0; ip < 2; ip++)
            for (uint32_t d = 1; d <= 64; d += 21) {
                float o_ref[16], o_simd[16];
                S->probe16(ct, b, d, ip, o_ref);
                K->probe16(ct, b, d, ip, o_simd);
                CHECKF(memcmp(o_ref, o_simd, sizeof o_ref) == 0, "%s probe16 d=%u ip=%d", name, d, ip);
            }
        static const size_t lens[] = {0, 1, 7, 15, 16, 17, 64, 100, 403, 4500};
        for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
            size_t n = lens[t];
            float s[5] = {S->dot_u8(c8, a, n), S->l2sq(a, b, n), S->l2sq_f16(h, b, n),
                          S->dot_f16(h, b, n), S->dot(a, b, n)};
            float v[5] = {K->dot_u8(c8, a, n), K->l2sq(a, b, n), K->l2sq_f16(h, b, n),
                          K->dot_f16(h, b, n), K->dot(a, b, n)};
            for (int k = 0; k < 5; k++)
                CHECKF(bits_of(s[k]) == bits_of(v[k]), "%s n=%zu float kernel %d: %.9g vs %.9g", name, n,
                       k, v[k], s[k]);
        }
    }
    if (!tested) SKIP("no SIMD ISA on this CPU");
}

/* A kernel table is a struct of function pointers filled per ISA; a field added to the
 * struct but not to one ISA's initializer would be NULL and crash only on that ISA.
 * Every slot of every table this CPU can run must be set (hadamard_sign_batch alone may
 * be NULL by contract: callers fall back). */
static int null_slots(const void *table, size_t first, size_t size, size_t allowed_null) {
    int n = 0;
    for (size_t off = first; off + sizeof(void (*)(void)) <= size; off += sizeof(void (*)(void))) {
        void (*fn)(void);
        memcpy(&fn, (const char *)table + off, sizeof fn);
        if (!fn && off != allowed_null) n++;
    }
    return n;
}

TEST(portable_kernel_tables_complete) {
    for (int isa = KVQ_ISA_SCALAR; isa <= KVQ_ISA_NEON; isa++) {
        if (!kvq_isa_available((kvq_isa)isa)) continue;
        const char *name = kvqi_isa_name((kvq_isa)isa);
        int nq = null_slots(kvqi_quant_kernels_for((kvq_isa)isa), offsetof(kvqi_quant_kernels, quantize_pack),
                            sizeof(kvqi_quant_kernels), offsetof(kvqi_quant_kernels, hadamard_sign_batch));
        int ni = null_slots(kvqi_index_kernels_for((kvq_isa)isa), offsetof(kvqi_index_kernels, fastscan),
                            sizeof(kvqi_index_kernels), (size_t)-1);
        CHECKF(nq == 0, "%s quantizer kernel table: %d entries unset", name, nq);
        CHECKF(ni == 0, "%s index kernel table: %d entries unset", name, ni);
        CHECKF(kvqi_quant_kernels_for((kvq_isa)isa)->isa == (kvq_isa)isa &&
                   kvqi_index_kernels_for((kvq_isa)isa)->isa == (kvq_isa)isa,
               "%s: dispatch returns another ISA's table", name);
    }
}

TEST(portable_planes_and_hadamard_kernels_bit_identical) {
    const kvqi_quant_kernels *T[4];
    int nt = n_simd_tables(T);
    if (nt == 0) SKIP("no SIMD ISA on this CPU");
    const kvqi_quant_kernels *S = &kvqi_quant_scalar;
    static uint8_t code[600], planes[4 * 640];
    static float in[1024], out_ref[1024], out_simd[1024];
    kvqi_rng r;
    kvqi_rng_seed(&r, 31);
    for (size_t i = 0; i < sizeof code; i++) code[i] = (uint8_t)kvqi_rng_next(&r);
    for (size_t i = 0; i < sizeof planes; i++) planes[i] = (uint8_t)kvqi_rng_next(&r);
    for (size_t i = 0; i < 1024; i++) in[i] = (float)kvqi_rng_normal(&r);
    static const size_t sizes[] = {1, 16, 17, 64, 600};
    for (int t = 0; t < nt; t++) {
        const char *isa = kvqi_isa_name(T[t]->isa);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            uint32_t pa = 0, pb = 1;
            uint32_t a = S->popcount_planes(code, planes, 640, 4, sizes[s], &pa);
            uint32_t b = T[t]->popcount_planes(code, planes, 640, 4, sizes[s], &pb);
            CHECKF(a == b && pa == pb, "%s popcount_planes %zu bytes", isa, sizes[s]);
        }
        for (uint32_t dim = 8; dim <= 1024; dim *= 2) {
            kvqi_hadamard had;
            REQUIRE_OK(kvqi_hadamard_init(&had, dim, 77 + dim));
            for (int inverse = 0; inverse < 2; inverse++) {
                S->hadamard_pow2(&had, in, out_ref, inverse);
                T[t]->hadamard_pow2(&had, in, out_simd, inverse);
                CHECKF(memcmp(out_ref, out_simd, dim * sizeof(float)) == 0, "%s hadamard_pow2 dim %u inverse %d",
                       isa, dim, inverse);
                memcpy(out_simd, in, dim * sizeof(float)); /* in place */
                T[t]->hadamard_pow2(&had, out_simd, out_simd, inverse);
                CHECKF(memcmp(out_ref, out_simd, dim * sizeof(float)) == 0,
                       "%s hadamard_pow2 in place dim %u inverse %d", isa, dim, inverse);
            }
            kvqi_hadamard_free(&had);
        }
    }
}

/* The engine's row kernels per ISA against the scalar table: dequantization and the int8
 * activation codes bit for bit, products to rounding. NEON's table is filled here
 * directly as well, so it is checked even where the engine does not pick it yet. */
#if defined(KVQ_HAVE_NEON)
void kvqi_engine_kernels_neon(kvqi_engine_kernels *k);
#endif

static void fill_blocks(uint8_t *row, int type, size_t n_blocks, kvqi_rng *r) {
    size_t bsize = type == KVQI_T_Q4_0 ? 18 : type == KVQI_T_Q4_1 ? 20 : 34;
    for (size_t b = 0; b < n_blocks; b++) {
        uint8_t *blk = row + b * bsize;
        for (size_t i = 0; i < bsize; i++) blk[i] = (uint8_t)kvqi_rng_next(r);
        uint16_t d = kvqi_fp32_to_fp16(0.001f + 0.02f * (float)kvqi_rng_uniform(r));
        uint16_t m = kvqi_fp32_to_fp16(-0.1f + 0.2f * (float)kvqi_rng_uniform(r));
        memcpy(blk, &d, 2);
        if (type == KVQI_T_Q4_1) memcpy(blk + 2, &m, 2);
    }
}

static void check_engine_table(kvqt_ctx *kvqt_, const kvqi_engine_kernels *S, const kvqi_engine_kernels *K) {
    enum { N = 512, NB = N / 32 };
    static uint8_t row[NB * 34];
    static uint16_t h[N];
    static float x[4 * N], w[4 * N], y_ref[N], y_simd[N], g_ref[5 * 8], g_simd[5 * 8];
    static int8_t q_ref[N], q_simd[N];
    float d_ref[NB], d_simd[NB], s_ref[NB], s_simd[NB];
    const char *name = kvqi_isa_name(K->isa);
    kvqi_rng r;
    kvqi_rng_seed(&r, 404);
    for (size_t i = 0; i < 4 * N; i++) {
        x[i] = (float)kvqi_rng_normal(&r);
        w[i] = (float)kvqi_rng_normal(&r);
    }
    x[7] = 0.0f;
    /* a block of values too small for 127 / max|x| to be a float: codes 0 on every ISA */
    for (size_t i = 32; i < 64; i++) x[i] = (float)(i % 3) * 1e-38f * (i % 2 ? -1.0f : 1.0f);
    for (size_t i = 0; i < N; i++) h[i] = kvqi_fp32_to_fp16((float)kvqi_rng_normal(&r));
    static const int types[] = {KVQI_T_Q4_0, KVQI_T_Q4_1, KVQI_T_Q8_0};
    for (size_t ti = 0; ti < 3; ti++) {
        int t = types[ti];
        fill_blocks(row, t, NB, &r);
        S->to_float[t](row, y_ref, N);
        K->to_float[t](row, y_simd, N);
        CHECKF(memcmp(y_ref, y_simd, sizeof(float) * N) == 0, "%s to_float type %d", name, t);
        float a = S->row_dot[t](row, x, N), b = K->row_dot[t](row, x, N);
        CHECKF(fabsf(a - b) <= 1e-4f * (1.0f + fabsf(a)) + 1e-3f, "%s row_dot type %d: %.7g vs %.7g", name, t, b, a);
        S->quantize_q8(x, N, q_ref, d_ref, s_ref);
        K->quantize_q8(x, N, q_simd, d_simd, s_simd);
        CHECKF(memcmp(q_ref, q_simd, N) == 0 && memcmp(d_ref, d_simd, sizeof d_ref) == 0 &&
                   memcmp(s_ref, s_simd, sizeof s_ref) == 0,
               "%s quantize_q8 codes differ", name);
        for (size_t i = 32; i < 64; i++) CHECKF(q_ref[i] == 0, "quantize_q8 tiny block code %zu: %d", i, q_ref[i]);
        a = S->dot_q8[t](row, q_ref, d_ref, s_ref, N);
        b = K->dot_q8[t](row, q_ref, d_ref, s_ref, N);
        CHECKF(fabsf(a - b) <= 1e-4f * (1.0f + fabsf(a)) + 1e-3f, "%s dot_q8 type %d: %.7g vs %.7g", name, t, b, a);
    }
    S->to_float[KVQI_T_F16](h, y_ref, N - 3);
    K->to_float[KVQI_T_F16](h, y_simd, N - 3);
    CHECKF(memcmp(y_ref, y_simd, sizeof(float) * (N - 3)) == 0, "%s f16 to_float", name);
    for (size_t n = 1; n <= N; n = n * 3 + 1) {
        float a = S->dot_f32(x, w, n), b = K->dot_f32(x, w, n);
        CHECKF(fabsf(a - b) <= 1e-4f * (1.0f + sqrtf((float)n)), "%s dot_f32 n=%zu: %.7g vs %.7g", name, n, b, a);
        a = S->row_dot[KVQI_T_F16](h, x, n);
        b = K->row_dot[KVQI_T_F16](h, x, n);
        CHECKF(fabsf(a - b) <= 1e-4f * (1.0f + sqrtf((float)n)), "%s row_dot f16 n=%zu", name, n);
    }
    for (size_t n_tok = 1; n_tok <= 5; n_tok++) {
        size_t n = 37;
        S->gemm4_f32(w, n, x, n_tok, g_ref, 8);
        K->gemm4_f32(w, n, x, n_tok, g_simd, 8);
        for (size_t t = 0; t < n_tok; t++)
            for (int rr = 0; rr < 4; rr++)
                CHECKF(fabsf(g_ref[t * 8 + rr] - g_simd[t * 8 + rr]) <= 1e-4f * (1.0f + fabsf(g_ref[t * 8 + rr])),
                       "%s gemm4 n_tok=%zu row %d", name, n_tok, rr);
    }
    memcpy(y_ref, w, sizeof(float) * 100);
    memcpy(y_simd, w, sizeof(float) * 100);
    S->axpy_f32(y_ref, x, 0.37f, 99);
    K->axpy_f32(y_simd, x, 0.37f, 99);
    for (int i = 0; i < 100; i++) CHECKF(fabsf(y_ref[i] - y_simd[i]) <= 1e-6f * (1.0f + fabsf(y_ref[i])), "%s axpy %d", name, i);
}

TEST(portable_engine_kernels_match_scalar) {
    kvqi_engine_kernels S, sets[5];
    kvqi_engine_kernels_scalar(&S);
    int tested = 0;
    /* each ISA's table and, where AVX2 takes its AVX-VNNI build, the plain one */
    size_t n_sets = kvqi_engine_kernel_sets(sets, 5);
    REQUIRE(n_sets <= 5);
    for (size_t i = 0; i < n_sets; i++) {
        if (sets[i].isa != KVQ_ISA_AVX2 && sets[i].isa != KVQ_ISA_AVX512) continue;
        check_engine_table(kvqt_, &S, &sets[i]);
        tested++;
    }
#if defined(KVQ_HAVE_NEON)
    kvqi_engine_kernels K;
    kvqi_engine_kernels_scalar(&K);
    kvqi_engine_kernels_neon(&K);
    check_engine_table(kvqt_, &S, &K);
    tested++;
#endif
    if (!tested) SKIP("no SIMD ISA on this CPU");
}

/* Attention scores a block of queries together over the tokens the last one sees, the
 * earlier queries' extra tokens masked to -inf; alone, a query's row simply ends sooner.
 * Pooled and serial attention agree bit for bit only if a row's softmax weights and sum
 * do not depend on where the row ends: check every ISA's exp_sum for that. */
TEST(portable_cache_exp_sum_independent_of_row_end) {
    for (int isa = KVQ_ISA_SCALAR; isa <= KVQ_ISA_NEON; isa++) {
        if (!kvq_isa_available((kvq_isa)isa)) continue;
        const kvqi_cache_kernels *K = kvqi_cache_kernels_for((kvq_isa)isa);
        int bad = 0, first = -1;
        for (int n = 1; n <= 70; n++) {
            float a[96], b[96];
            for (int i = 0; i < 96; i++) a[i] = b[i] = -(float)((i * 37) % 23) * 0.17f;
            for (int i = n; i < 96; i++) b[i] = -INFINITY;
            float s1 = K->exp_sum(a, (size_t)n, 0.0f), s2 = K->exp_sum(b, (size_t)(n + n % 5 + 3), 0.0f);
            if (bits_of(s1) != bits_of(s2) || memcmp(a, b, (size_t)n * sizeof(float)) != 0) {
                if (first < 0) first = n;
                bad++;
            }
        }
        CHECKF(bad == 0, "%s exp_sum: %d of 70 row lengths change the weights or sum (first n = %d)",
               kvqi_isa_name((kvq_isa)isa), bad, first);
    }
}
