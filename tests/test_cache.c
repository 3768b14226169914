/* test_cache.c - the compressed KV cache: attention against an fp32 reference, error
 * falling with bits, the exact window, outlier channels, memory accounting, batching
 * invariance, argument checking, SIMD kernels against the scalar reference, threads. */
#include <stdlib.h>

#include "cache/cache_internal.h"
#include "core/core.h"
#include "cpu/cache_kernels.h"
#include "cpu/cpu.h"
#include "test.h"

/* Gaussian rows; `heavy` channels per head scaled by `heavy_scale` (outlier channels). */
static float *make_kv(size_t n, uint32_t n_kv, uint32_t dim, uint64_t seed, uint32_t heavy,
                      float heavy_scale) {
    float *x = malloc(n * n_kv * dim * sizeof(float));
    if (!x) return NULL;
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < n * n_kv * dim; i++) {
        uint32_t ch = (uint32_t)(i % dim);
        float s = ch < heavy ? heavy_scale : 1.0f;
        x[i] = (float)kvqi_rng_normal(&r) * s + (ch < heavy ? heavy_scale : 0.0f);
    }
    return x;
}

/* Rounds to the nearest fp16 value: the exact window and sinks hold fp16 copies. */
static void round_fp16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(x[i]));
}

static double rel_err(const float *a, const float *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)a[i] - ref[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1.0));
}

static kvq_status make_cache(const char *ks, const char *vs, uint32_t n_kv, uint32_t dim,
                             uint32_t window, uint32_t n_out, uint32_t chunk, kvq_cache **out) {
    kvq_cache_config cfg;
    kvq_status st = kvq_cache_config_init(&cfg, n_kv, dim, ks, vs, NULL, 0);
    if (st != KVQ_OK) return st;
    cfg.window = window;
    cfg.n_outliers = n_out;
    cfg.chunk_tokens = chunk;
    return kvq_cache_create(&cfg, out);
}

/* Attention error of a config on one data set: decode step plus a 3-query prefill. */
static double config_error(const char *ks, const char *vs, uint32_t window, uint32_t n_out,
                           const float *k, const float *v, const float *q, const float *ref,
                           size_t n, uint32_t n_kv, uint32_t H, uint32_t dim, size_t nq) {
    kvq_cache *c;
    if (make_cache(ks, vs, n_kv, dim, window, n_out, 64, &c) != KVQ_OK) return -1.0;
    float *out = malloc(nq * H * dim * sizeof(float));
    double e = -1.0;
    if (out && kvq_cache_append(c, k, v, n) == KVQ_OK &&
        kvq_cache_attend(c, q, H, nq, 1.0f / sqrtf((float)dim), NULL, out) == KVQ_OK)
        e = rel_err(out, ref, nq * H * dim);
    free(out);
    kvq_cache_free(c);
    return e;
}

TEST(cache_fp16_matches_fp32_reference) {
    /* GQA (3 query heads per KV head), chunks crossed, multi-query causal prefill */
    const uint32_t n_kv = 2, H = 6, dim = 64;
    const size_t n = 300, nq = 7;
    float *k = make_kv(n, n_kv, dim, 1, 0, 1), *v = make_kv(n, n_kv, dim, 2, 0, 1);
    float *q = make_kv(nq, H, dim, 3, 0, 1);
    float *ref = malloc(nq * H * dim * sizeof(float)), *out = malloc(nq * H * dim * sizeof(float));
    REQUIRE(k && v && q && ref && out);
    float scale = 1.0f / sqrtf((float)dim);
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, nq, scale, ref);
    static const uint32_t chunks[] = {64, 7, 256};
    for (size_t ci = 0; ci < 3; ci++) {
        kvq_cache *c;
        REQUIRE_OK(make_cache("fp16", "fp16", n_kv, dim, 0, 0, chunks[ci], &c));
        REQUIRE_OK(kvq_cache_append(c, k, v, n));
        REQUIRE_OK(kvq_cache_attend(c, q, H, nq, scale, NULL, out));
        double e = rel_err(out, ref, nq * H * dim);
        CHECKF(e < 1e-3, "chunk %u: relative error %.3g", chunks[ci], e);
        /* also per query: the earliest prefill row sees fewer tokens */
        for (size_t i = 0; i < nq; i++) {
            double ei = rel_err(out + i * H * dim, ref + i * H * dim, H * dim);
            CHECKF(ei < 1e-3, "query %zu: %.3g", i, ei);
        }
        kvq_cache_free(c);
    }
    /* one KV head shared by every query head (multi-query attention) */
    float *ref1 = malloc(nq * H * dim * sizeof(float));
    float *k1 = malloc(n * dim * sizeof(float)), *v1 = malloc(n * dim * sizeof(float));
    REQUIRE(ref1 && k1 && v1);
    for (size_t t = 0; t < n; t++) {
        memcpy(k1 + t * dim, k + t * dim, dim * sizeof(float));
        memcpy(v1 + t * dim, v + t * dim, dim * sizeof(float));
    }
    kvqt_ref_attend(q, k1, v1, n, 1, H, dim, nq, scale, ref1);
    kvq_cache *c;
    REQUIRE_OK(make_cache("fp16", "fp16", 1, dim, 0, 0, 0, &c));
    REQUIRE_OK(kvq_cache_append(c, k1, v1, n));
    REQUIRE_OK(kvq_cache_attend(c, q, H, nq, scale, NULL, out));
    double e = rel_err(out, ref1, nq * H * dim);
    CHECKF(e < 1e-3, "MQA relative error %.3g", e);
    kvq_cache_free(c);
    free(k), free(v), free(q), free(ref), free(out), free(ref1), free(k1), free(v1);
}

TEST(cache_error_falls_with_bits) {
    const uint32_t n_kv = 2, H = 8, dim = 128;
    const size_t n = 400, nq = 2;
    float *k = make_kv(n, n_kv, dim, 11, 0, 1), *v = make_kv(n, n_kv, dim, 12, 0, 1);
    float *q = make_kv(nq, H, dim, 13, 0, 1), *ref = malloc(nq * H * dim * sizeof(float));
    REQUIRE(k && v && q && ref);
    /* queries aligned with some keys, so attention is peaked as in real models */
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t j = 0; j < dim; j++) q[h * dim + j] += 2.0f * k[(37 * h * n_kv) * dim + j];
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, nq, 1.0f / sqrtf((float)dim), ref);
    static const char *families[][5] = {
        {"q4_0", "q8_0", "fp16", NULL},
        {"mse:bits=1", "mse:bits=2", "mse:bits=3", "mse:bits=4", NULL},
        {"turboquant_rvq:bits=1,residuals=1", "turboquant_rvq:bits=1,residuals=2",
         "turboquant_rvq:bits=2,residuals=2", NULL},
        {"prod:bits=2", "prod:bits=3", "prod:bits=4", NULL},
        {"polar:bits=2", "polar:bits=3", "polar:bits=4", NULL},
        {"rabitq:bits=1", "rabitq:bits=2", "rabitq:bits=4", NULL},
        {"qjl:proj_dim=64", "qjl:proj_dim=128", "qjl:proj_dim=256", NULL},
    };
    int ran = 0;
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        double prev = 1e30;
        for (int b = 0; families[f][b]; b++) {
            const char *spec = families[f][b];
            kvq_config probe;
            if (kvq_config_parse(spec, dim, &probe, NULL, 0) != KVQ_OK) {
                CHECKF(f > 1, "baseline family config %s does not parse", spec);
                break;
            }
            /* the family on keys with exact-ish values, and on values with fp16 keys */
            double ek = config_error(spec, "fp16", 0, 0, k, v, q, ref, n, n_kv, H, dim, nq);
            int value_ok = f < 2 || f == 2;
            double ev = value_ok ? config_error("fp16", spec, 0, 0, k, v, q, ref, n, n_kv, H,
                                                dim, nq)
                                 : 0.0;
            CHECKF(ek >= 0.0 && ev >= 0.0, "%s failed to run", spec);
            double e = ek + ev;
            CHECKF(e < prev, "%s: error %.4g not below the previous step's %.4g", spec, e, prev);
            prev = e;
            ran++;
        }
    }
    CHECK(ran >= 7);
    free(k), free(v), free(q), free(ref);
}

TEST(cache_window_keeps_newest_exact) {
    const uint32_t n_kv = 2, H = 4, dim = 64, W = 24;
    const size_t n = 200, nq = 3;
    float *k = make_kv(n, n_kv, dim, 21, 0, 1), *v = make_kv(n, n_kv, dim, 22, 0, 1);
    float *q = make_kv(nq, H, dim, 23, 0, 1);
    float *kd = malloc(n * n_kv * dim * sizeof(float)), *vd = malloc(n * n_kv * dim * sizeof(float));
    float *ref = malloc(nq * H * dim * sizeof(float)), *out = malloc(nq * H * dim * sizeof(float));
    REQUIRE(k && v && q && kd && vd && ref && out);
    round_fp16(k, n * n_kv * dim);
    round_fp16(v, n * n_kv * dim);
    kvq_cache *c;
    REQUIRE_OK(make_cache("mse:bits=2", "mse:bits=2", n_kv, dim, W, 0, 32, &c));
    REQUIRE_OK(kvq_cache_append(c, k, v, 150));
    REQUIRE_OK(kvq_cache_append(c, k + 150 * n_kv * dim, v + 150 * n_kv * dim, 50));
    /* the expected cache: the quantizer's own decoding, except the newest W tokens */
    kvq_config kc;
    REQUIRE_OK(kvq_config_parse("mse:bits=2", dim, &kc, NULL, 0));
    kvq_quantizer *qz;
    REQUIRE_OK(kvq_quantizer_create(&kc, &qz));
    uint8_t *code = malloc(kvq_code_size(qz));
    REQUIRE(code);
    for (size_t i = 0; i < n * n_kv; i++) {
        int exact = i / n_kv >= n - W;
        if (exact) {
            memcpy(kd + i * dim, k + i * dim, dim * sizeof(float));
            memcpy(vd + i * dim, v + i * dim, dim * sizeof(float));
        } else {
            REQUIRE_OK(kvq_encode(qz, k + i * dim, 1, code));
            REQUIRE_OK(kvq_decode(qz, code, 1, kd + i * dim));
            REQUIRE_OK(kvq_encode(qz, v + i * dim, 1, code));
            REQUIRE_OK(kvq_decode(qz, code, 1, vd + i * dim));
        }
    }
    float scale = 1.0f / sqrtf((float)dim);
    kvqt_ref_attend(q, kd, vd, n, n_kv, H, dim, nq, scale, ref);
    REQUIRE_OK(kvq_cache_attend(c, q, H, nq, scale, NULL, out));
    double e = rel_err(out, ref, nq * H * dim);
    CHECKF(e < 2e-4, "mixed exact/decoded reference: relative error %.3g", e);
    /* attention that sees only the window is exact */
    float *qs = make_kv(1, H, dim, 24, 0, 1);
    REQUIRE(qs);
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t j = 0; j < dim; j++) qs[h * dim + j] = 40.0f * k[((n - 1) * n_kv + h / 2) * dim + j];
    kvqt_ref_attend(qs, k, v, n, n_kv, H, dim, 1, scale, ref);
    REQUIRE_OK(kvq_cache_attend(c, qs, H, 1, scale, NULL, out));
    e = rel_err(out, ref, H * dim);
    CHECKF(e < 1e-5, "peaked on the newest token: relative error %.3g", e);
    /* and the window lowers the error against exact attention */
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, nq, scale, ref);
    double with = config_error("mse:bits=2", "mse:bits=2", 64, 0, k, v, q, ref, n, n_kv, H, dim, nq);
    double without = config_error("mse:bits=2", "mse:bits=2", 0, 0, k, v, q, ref, n, n_kv, H, dim, nq);
    CHECKF(with >= 0 && with < without, "window 64: %.4g, none: %.4g", with, without);
    kvq_quantizer_free(qz);
    kvq_cache_free(c);
    free(code), free(k), free(v), free(q), free(qs), free(kd), free(vd), free(ref), free(out);
}

TEST(cache_outliers_reduce_error) {
    const uint32_t n_kv = 2, H = 4, dim = 128;
    const size_t n = 300, nq = 2;
    float *k = make_kv(n, n_kv, dim, 31, 4, 12.0f), *v = make_kv(n, n_kv, dim, 32, 0, 1);
    float *q = make_kv(nq, H, dim, 33, 0, 1), *ref = malloc(nq * H * dim * sizeof(float));
    REQUIRE(k && v && q && ref);
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, nq, 1.0f / sqrtf((float)dim), ref);
    static const char *specs[] = {"mse:bits=2", "q4_0", "mse:bits=4"};
    for (size_t i = 0; i < 3; i++) {
        double plain = config_error(specs[i], "fp16", 0, 0, k, v, q, ref, n, n_kv, H, dim, nq);
        double apart = config_error(specs[i], "fp16", 0, 4, k, v, q, ref, n, n_kv, H, dim, nq);
        CHECKF(plain > 0 && apart >= 0 && apart < plain, "%s: with outliers %.4g, without %.4g",
               specs[i], apart, plain);
    }
    /* the outlier channels are the heavy ones */
    kvq_cache *c;
    REQUIRE_OK(make_cache("mse:bits=2", "fp16", n_kv, dim, 0, 4, 64, &c));
    REQUIRE_OK(kvq_cache_append(c, k, v, n));
    for (uint32_t g = 0; g < n_kv; g++)
        for (uint32_t o = 0; o < 4; o++) CHECK(c->outlier_idx[g * 4 + o] == o);
    kvq_cache_free(c);
    free(k), free(v), free(q), free(ref);
}

TEST(cache_memory_accounting) {
    const uint32_t n_kv = 4, dim = 128;
    static const char *specs[][2] = {{"fp16", "fp16"}, {"q4_0", "q8_0"},
                                     {"mse:bits=2", "mse:bits=4"}};
    for (size_t s = 0; s < 3; s++) {
        for (uint32_t variant = 0; variant < 2; variant++) {
            uint32_t window = variant ? 16 : 0, n_out = variant ? 3 : 0;
            const size_t n = 333;
            float *k = make_kv(n, n_kv, dim, 41, 0, 1), *v = make_kv(n, n_kv, dim, 42, 0, 1);
            REQUIRE(k && v);
            kvq_cache *c;
            REQUIRE_OK(make_cache(specs[s][0], specs[s][1], n_kv, dim, window, n_out, 100, &c));
            REQUIRE_OK(kvq_cache_append(c, k, v, n));
            kvq_cache_memory_info m;
            REQUIRE_OK(kvq_cache_memory(c, &m));
            CHECK(m.total == m.key_codes + m.value_codes + m.window + m.outliers + m.shared +
                                 m.overhead);
            CHECK(m.n_tokens == n);
            /* the newest `window` tokens are held in fp16 only, the rest as codes */
            CHECK(m.key_codes == (uint64_t)kvq_code_size(c->key.quant) * n_kv * (n - window));
            CHECK(m.value_codes == (uint64_t)kvq_code_size(c->value.quant) * n_kv * (n - window));
            CHECK(m.window == (uint64_t)window * n_kv * dim * 2 * 2);
            if (n_out)
                CHECK(m.outliers >= (uint64_t)(n - window) * n_kv * n_out * 2 + n_kv * n_out * 2);
            else
                CHECK(m.outliers == 0);
            /* the arena is whole chunks: 4 chunks of 100 tokens for 333 */
            uint64_t per_token = (uint64_t)n_kv * (kvq_code_size(c->key.quant) +
                                                   kvq_code_size(c->value.quant) + 2 * n_out);
            CHECK(m.overhead >= 67 * per_token);
            /* tokens_fit agrees with a real cache of that many tokens */
            uint64_t budget = m.total * 3, fit;
            kvq_cache_config cfg = c->cfg;
            REQUIRE_OK(kvq_cache_tokens_fit(&cfg, 3, budget, &fit));
            CHECKF(fit >= n, "%s: %llu tokens fit in three times the bytes of %zu", specs[s][0],
                   (unsigned long long)fit, n);
            kvq_cache_free(c);
            free(k), free(v);
        }
    }
    /* fp16 at Llama-3.1-8B shape: 32 layers x 8 heads x 128 x 2 x 2 bytes per token */
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_init(&cfg, 8, 128, "fp16", "fp16", NULL, 0));
    uint64_t fit;
    REQUIRE_OK(kvq_cache_tokens_fit(&cfg, 32, 8ull << 30, &fit));
    /* whole slabs of chunks: the last one (up to 1024 tokens) may not fit */
    CHECKF(fit <= 65536 && fit >= 65536 - 1024 - 2 * 256, "fp16 8 GiB: %llu", (unsigned long long)fit);
}

static int same_arena(const kvq_cache *a, const kvq_cache *b) {
    if (a->n_tokens != b->n_tokens || a->n_coded != b->n_coded || a->chunk_bytes != b->chunk_bytes)
        return 0;
    size_t C = a->cfg.chunk_tokens, n = a->n_coded;
    for (size_t ch = 0; ch * C < n; ch++) {
        size_t cnt = KVQI_MIN(C, n - ch * C);
        for (uint32_t g = 0; g < a->n_kv; g++) {
            if (memcmp(kvqi_chunk_keys(a, ch, g), kvqi_chunk_keys(b, ch, g), cnt * a->key.code_size)) return 0;
            if (memcmp(kvqi_chunk_values(a, ch, g), kvqi_chunk_values(b, ch, g), cnt * a->value.code_size)) return 0;
            for (uint32_t o = 0; o < a->n_out; o++) {
                size_t oo = (size_t)o * C * 2;
                if (memcmp(kvqi_chunk_outliers(a, ch, g) + oo, kvqi_chunk_outliers(b, ch, g) + oo, cnt * 2)) return 0;
            }
        }
    }
    return 1;
}

TEST(cache_append_batching_is_invisible) {
    const uint32_t n_kv = 2, H = 4, dim = 64;
    const size_t n = 1000;
    float *k = make_kv(n, n_kv, dim, 51, 2, 8.0f), *v = make_kv(n, n_kv, dim, 52, 0, 1);
    float *q = make_kv(2, H, dim, 53, 0, 1);
    float *o1 = malloc(2 * H * dim * sizeof(float)), *o2 = malloc(2 * H * dim * sizeof(float));
    REQUIRE(k && v && q && o1 && o2);
    static const char *specs[] = {"mse:bits=3", "q4_0"};
    for (size_t s = 0; s < 2; s++) {
        kvq_cache *a, *b;
        REQUIRE_OK(make_cache(specs[s], specs[s], n_kv, dim, 10, 2, 128, &a));
        REQUIRE_OK(make_cache(specs[s], specs[s], n_kv, dim, 10, 2, 128, &b));
        for (size_t t = 0; t < n; t++)
            REQUIRE_OK(kvq_cache_append(a, k + t * n_kv * dim, v + t * n_kv * dim, 1));
        REQUIRE_OK(kvq_cache_append(b, k, v, n));
        CHECKF(same_arena(a, b), "%s: codes differ", specs[s]);
        CHECK(memcmp(a->outlier_idx, b->outlier_idx, n_kv * 2 * sizeof(uint16_t)) == 0);
        CHECK(a->win_cap == 10 && b->win_cap == 10 && a->n_coded == n - 10 && b->n_coded == n - 10);
        CHECK(memcmp(a->win_k, b->win_k, 10 * n_kv * dim * sizeof(uint16_t)) == 0);
        REQUIRE_OK(kvq_cache_attend(a, q, H, 2, 0.125f, NULL, o1));
        REQUIRE_OK(kvq_cache_attend(b, q, H, 2, 0.125f, NULL, o2));
        CHECKF(memcmp(o1, o2, 2 * H * dim * sizeof(float)) == 0, "%s: outputs differ", specs[s]);
        /* reset gives an empty cache that refills the same way */
        REQUIRE_OK(kvq_cache_reset(b));
        size_t len;
        REQUIRE_OK(kvq_cache_length(b, &len));
        CHECK(len == 0);
        REQUIRE_OK(kvq_cache_append(b, k, v, 400));
        REQUIRE_OK(kvq_cache_append(b, k + 400 * n_kv * dim, v + 400 * n_kv * dim, 600));
        CHECK(same_arena(a, b));
        kvq_cache_free(a);
        kvq_cache_free(b);
    }
    free(k), free(v), free(q), free(o1), free(o2);
}

TEST(cache_rejects_bad_arguments) {
    kvq_cache_config cfg;
    kvq_cache *c = NULL;
    CHECK_FAILS(kvq_cache_config_init(NULL, 8, 128, "fp16", "fp16", NULL, 0));
    CHECK_FAILS(kvq_cache_config_init(&cfg, 0, 128, "fp16", "fp16", NULL, 0));
    CHECK_FAILS(kvq_cache_config_init(&cfg, 8, 0, "fp16", "fp16", NULL, 0));
    CHECK_FAILS(kvq_cache_config_init(&cfg, 8, 128, NULL, "fp16", NULL, 0));
    char msg[128] = "";
    CHECK_FAILS(kvq_cache_config_init(&cfg, 8, 128, "nosuch", "fp16", msg, sizeof msg));
    CHECK(msg[0] != 0);
    CHECK_STATUS(kvq_cache_create(NULL, &c), KVQ_ERR_INVALID_ARG);
    REQUIRE_OK(kvq_cache_config_init(&cfg, 2, 64, "fp16", "fp16", NULL, 0));
    CHECK_STATUS(kvq_cache_create(&cfg, NULL), KVQ_ERR_INVALID_ARG);
    kvq_cache_config bad = cfg;
    bad.head_dim = 0;
    CHECK_FAILS(kvq_cache_create(&bad, &c));
    CHECK(c == NULL);
    bad = cfg;
    bad.n_kv_heads = 0;
    CHECK_FAILS(kvq_cache_create(&bad, &c));
    bad = cfg;
    bad.key.dim = 32;
    CHECK_STATUS(kvq_cache_create(&bad, &c), KVQ_ERR_MISMATCH);
    bad = cfg;
    bad.n_outliers = 64;
    CHECK_FAILS(kvq_cache_create(&bad, &c));
    bad = cfg;
    bad.n_kv_heads = UINT32_MAX;
    bad.head_dim = UINT32_MAX;
    CHECK_FAILS(kvq_cache_create(&bad, &c));
    bad = cfg;
    bad.chunk_tokens = UINT32_MAX;
    CHECK_FAILS(kvq_cache_create(&bad, &c));
    bad = cfg;
    bad.window = UINT32_MAX; /* 4 G tokens of exact window: too large to allocate */
    bad.n_kv_heads = 4096;
    bad.head_dim = 4096;
    CHECK_FAILS(kvq_cache_create(&bad, &c));

    cfg.max_tokens = 10;
    REQUIRE_OK(kvq_cache_create(&cfg, &c));
    float k[11 * 2 * 64] = {0}, q[8 * 64] = {0}, out[8 * 64];
    CHECK_STATUS(kvq_cache_attend(c, q, 8, 1, 0.1f, NULL, out), KVQ_ERR_INVALID_ARG); /* empty */
    CHECK_FAILS(kvq_cache_append(c, NULL, k, 1));
    CHECK_FAILS(kvq_cache_append(c, k, NULL, 1));
    CHECK_FAILS(kvq_cache_append(NULL, k, k, 1));
    CHECK_FAILS(kvq_cache_append(c, k, k, 0));
    CHECK_STATUS(kvq_cache_append(c, k, k, 11), KVQ_ERR_CAPACITY);
    REQUIRE_OK(kvq_cache_append(c, k, k, 10));
    CHECK_STATUS(kvq_cache_append(c, k, k, 1), KVQ_ERR_CAPACITY);
    CHECK_STATUS(kvq_cache_append(c, k, k, SIZE_MAX), KVQ_ERR_OVERFLOW);
    CHECK_STATUS(kvq_cache_attend(c, q, 3, 1, 0.1f, NULL, out), KVQ_ERR_MISMATCH);
    CHECK_FAILS(kvq_cache_attend(c, q, 0, 1, 0.1f, NULL, out));
    CHECK_FAILS(kvq_cache_attend(c, q, 8, 11, 0.1f, NULL, out));
    CHECK_FAILS(kvq_cache_attend(c, q, 8, 0, 0.1f, NULL, out));
    CHECK_FAILS(kvq_cache_attend(c, NULL, 8, 1, 0.1f, NULL, out));
    CHECK_FAILS(kvq_cache_attend(c, q, 8, 1, 0.1f, NULL, NULL));
    CHECK_FAILS(kvq_cache_attend(c, q, 8, 1, NAN, NULL, out));
    CHECK_FAILS(kvq_cache_attend(NULL, q, 8, 1, 0.1f, NULL, out));
    CHECK_OK(kvq_cache_attend(c, q, 8, 1, 0.1f, NULL, out));
    kvq_cache_memory_info m;
    CHECK_FAILS(kvq_cache_memory(NULL, &m));
    CHECK_FAILS(kvq_cache_memory(c, NULL));
    CHECK_FAILS(kvq_cache_length(c, NULL));
    CHECK_FAILS(kvq_cache_reset(NULL));
    uint64_t fit;
    CHECK_FAILS(kvq_cache_tokens_fit(&cfg, 0, 1 << 20, &fit));
    CHECK_FAILS(kvq_cache_tokens_fit(NULL, 1, 1 << 20, &fit));
    CHECK_FAILS(kvq_cache_tokens_fit(&cfg, 1, 1 << 20, NULL));
    REQUIRE_OK(kvq_cache_tokens_fit(&cfg, 1, 16, &fit));
    CHECK(fit == 0);
    kvq_cache_set *set = NULL;
    CHECK_FAILS(kvq_cache_set_create(0, &cfg, &set));
    CHECK_FAILS(kvq_cache_set_create(2, NULL, &set));
    CHECK_FAILS(kvq_cache_set_create(2, &cfg, NULL));
    kvq_cache_free(c);
    kvq_cache_free(NULL);
    kvq_cache_set_free(NULL);
}

TEST(cache_set_per_layer_configs) {
    kvq_cache_config cfgs[3];
    REQUIRE_OK(kvq_cache_config_init(&cfgs[0], 2, 64, "mse:bits=4", "mse:bits=4", NULL, 0));
    REQUIRE_OK(kvq_cache_config_init(&cfgs[1], 2, 64, "mse:bits=2", "mse:bits=2", NULL, 0));
    REQUIRE_OK(kvq_cache_config_init(&cfgs[2], 2, 64, "fp16", "q8_0", NULL, 0));
    kvq_cache_set *set;
    REQUIRE_OK(kvq_cache_set_create(3, cfgs, &set));
    float *k = make_kv(50, 2, 64, 61, 0, 1);
    REQUIRE(k);
    uint64_t sum = 0;
    for (uint32_t l = 0; l < 3; l++) {
        kvq_cache *c;
        REQUIRE_OK(kvq_cache_set_layer(set, l, &c));
        REQUIRE_OK(kvq_cache_append(c, k, k, 50));
        kvq_cache_memory_info m;
        REQUIRE_OK(kvq_cache_memory(c, &m));
        sum += m.total;
    }
    kvq_cache *c;
    CHECK_FAILS(kvq_cache_set_layer(set, 3, &c));
    kvq_cache_memory_info all, l0, l1;
    REQUIRE_OK(kvq_cache_set_memory(set, &all));
    CHECK(all.total == sum);
    REQUIRE_OK(kvq_cache_set_layer(set, 0, &c));
    REQUIRE_OK(kvq_cache_memory(c, &l0));
    REQUIRE_OK(kvq_cache_set_layer(set, 1, &c));
    REQUIRE_OK(kvq_cache_memory(c, &l1));
    CHECK(l1.key_codes < l0.key_codes); /* 2-bit layer smaller than the 4-bit one */
    REQUIRE_OK(kvq_cache_set_reset(set));
    REQUIRE_OK(kvq_cache_set_memory(set, &all));
    CHECK(all.n_tokens == 0 && all.key_codes == 0);
    kvq_cache_set_free(set);
    free(k);
}

/* --------------------------------------------------------------- kernels */

static void fill_uniform(float *x, size_t n, uint64_t seed) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)(kvqi_rng_uniform(&r) * 2.0 - 1.0);
}

static int close_arrays(const float *a, const float *b, size_t n, double tol) {
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - b[i]) <= tol * (1.0 + fabs((double)b[i])))) return 0;
    return 1;
}

/* n rows of q4_0 / q8_0 blocks (block_bytes 18 / 34: an fp16 scale, then the codes) at
 * stride bytes: random bytes, every block's scale in [0.001, 0.051], one in five negative. */
/* A one-pass rotated layout with byte centroids (the integer kernels' input): an fp16
 * norm, then the indices, then a spare byte. */
static kvqi_rot_layout int_rot_layout(uint32_t dim, uint32_t bits) {
    kvqi_rot_layout L;
    memset(&L, 0, sizeof L);
    L.dim = dim;
    L.bits = bits;
    L.n_pass = 1;
    L.has_u8 = 1;
    L.cent_scale = 0.01f;
    L.index_offset[0] = 2;
    L.code_size = 2 + dim * bits / 8 + 1;
    for (int i = 0; i < 16; i++) L.cent_u8[i] = (uint8_t)(128 + 17 * (i - 8));
    return L;
}

typedef void (*int_values_fn)(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                              const uint8_t *v, size_t n, float *acc);

/* An integer value kernel against its reference (bit for bit) and against the float sum
 * of the scalar set (num <= tol den per head, in natural order), 2-4 bits, dims 128 and
 * 256, 1-6 heads, token counts N - G % parity; returns the cases compared. */
static int int_values_match(kvqt_ctx *kvqt_, kvq_isa isa, const char *name, int_values_fn ref, int_values_fn simd,
                            uint32_t (*order)(uint32_t, uint32_t), size_t parity, double tol, uint64_t seed,
                            uint8_t *codes, float *a_ref, float *a_simd) {
    enum { N = 61 };
    int tested = 0;
    for (uint32_t bits = 2; bits <= 4; bits++) {
        for (uint32_t dim = 128; dim <= 256; dim += 128) {
            for (uint32_t G = 1; G <= 6; G++) {
                size_t nv = N - G % parity;
                kvqi_rot_layout L = int_rot_layout(dim, bits);
                kvqi_rng r;
                kvqi_rng_seed(&r, seed + G + dim + 7 * bits);
                for (size_t i = 0; i < (size_t)N * L.code_size; i++) codes[i] = (uint8_t)kvqi_rng_next(&r);
                for (size_t t = 0; t < N; t++) {
                    uint16_t h = kvqi_fp32_to_fp16(0.25f + 0.01f * (float)t);
                    memcpy(codes + t * L.code_size, &h, 2);
                }
                float wv[6 * 64];
                fill_uniform(wv, 6 * 64, seed + 100 + G);
                for (size_t i = 0; i < 6 * 64; i++) wv[i] = fabsf(wv[i]);
                wv[3] = -wv[3];
                if (G > 2) memset(wv + 64, 0, 64 * sizeof(float));
                fill_uniform(a_ref, G * dim, 1500);
                memcpy(a_simd, a_ref, G * dim * sizeof(float));
                ref(&L, wv, 64, G, codes, nv, a_ref);
                simd(&L, wv, 64, G, codes, nv, a_simd);
                CHECKF(memcmp(a_ref, a_simd, G * dim * sizeof(float)) == 0, "%s %s bits %u dim %u G %u n %zu",
                       kvqi_isa_name(isa), name, bits, dim, G, nv);
                /* and within the rounding of the weights and centroids of the float sum */
                kvqi_rot_layout F = L;
                for (int i = 0; i < 16; i++) KVQI_ROT_CENT(&F, 0)[i] = (float)(L.cent_u8[i] - 128) * L.cent_scale;
                static float a_float[6 * 256];
                memset(a_float, 0, sizeof a_float);
                kvqi_cache_kernels_scalar.accum_rot(&F, wv, 64, G, codes, nv, a_float);
                fill_uniform(a_simd, G * dim, 1500);
                for (uint32_t h = 0; h < G; h++) {
                    double num = 0, den = 0;
                    for (uint32_t p = 0; p < dim; p++) {
                        uint32_t cv = order(bits, p), pf = 0;
                        while (kvqi_rot_lane_coordinate(bits, pf) != cv) pf++;
                        double x = a_ref[h * dim + p] - a_simd[h * dim + p], y = a_float[h * dim + pf];
                        num += (x - y) * (x - y);
                        den += y * y;
                    }
                    CHECKF(num <= tol * den, "%s %s bits %u head %u off the float sum", kvqi_isa_name(isa), name,
                           bits, h);
                }
                tested++;
            }
        }
    }
    return tested;
}

static void fill_block_rows(uint8_t *codes, size_t n, size_t stride, uint32_t dim, size_t block_bytes, kvqi_rng *r) {
    for (size_t i = 0; i < n * stride; i++) codes[i] = (uint8_t)kvqi_rng_next(r);
    for (size_t t = 0; t < n; t++)
        for (uint32_t b = 0; b < dim / 32; b++) {
            float d = (float)(0.001 + 0.05 * kvqi_rng_uniform(r)) * ((t + b) % 5 ? 1.0f : -1.0f);
            uint16_t h = kvqi_fp32_to_fp16(d);
            memcpy(codes + t * stride + b * block_bytes, &h, 2);
        }
}

TEST(cache_simd_kernels_match_scalar) {
    enum { N = 61, MAXD = 256, G_MAX = 6 };
    const size_t B = KVQI_MAX_BLOCK_TOKENS;
    static const uint32_t dims[] = {32, 64, 128, 256, 48};
    float *q = malloc(G_MAX * MAXD * sizeof(float)), *w = malloc(G_MAX * B * sizeof(float));
    uint8_t *codes = malloc((size_t)N * MAXD * 8);
    float *s_ref = malloc(G_MAX * B * sizeof(float)), *s_simd = malloc(G_MAX * B * sizeof(float));
    float *a_ref = malloc(G_MAX * MAXD * sizeof(float)), *a_simd = malloc(G_MAX * MAXD * sizeof(float));
    REQUIRE(q && w && codes && s_ref && s_simd && a_ref && a_simd);
    const kvqi_cache_kernels *S = &kvqi_cache_kernels_scalar;
    int tested = 0;
    const kvqi_cache_kernels *ksets[8];
    size_t n_ksets = kvqi_cache_kernel_sets(ksets, 8); /* scalar first */
    for (size_t ks = 1; ks < n_ksets; ks++) {
        const kvqi_cache_kernels *K = ksets[ks];
        int isa = (int)K->isa;
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            uint32_t dim = dims[di];
            for (uint32_t G = 1; G <= G_MAX; G++) {
                fill_uniform(q, G * dim, 100 + G);
                fill_uniform(w, G * B, 200 + G);
                /* random bytes are valid codes for every layout but fp16/f32 */
                kvqi_rng r;
                kvqi_rng_seed(&r, 300 + dim);
                for (size_t i = 0; i < (size_t)N * MAXD * 4; i++) codes[i] = (uint8_t)kvqi_rng_next(&r);
                for (size_t i = 0; i < (size_t)N * dim; i++) {
                    uint16_t h = kvqi_fp32_to_fp16((float)(kvqi_rng_normal(&r)));
                    memcpy(codes + 2 * i, &h, 2);
                }
                /* layouts: 0 f32, 1 f16, 2 q8_0, 3 q4_0 */
                for (int lay = 0; lay < 4; lay++) {
                    if (lay >= 2 && dim % 32) continue;
                    size_t stride = lay == 0 ? dim * 4 : lay == 1 ? dim * 2 : lay == 2 ? dim / 32 * 34 : dim / 32 * 18;
                    uint8_t *src = codes;
                    float *f32 = (float *)(void *)(codes + (size_t)N * MAXD * 4);
                    if (lay == 0) {
                        fill_uniform(f32, (size_t)N * dim, 400 + dim);
                        src = (uint8_t *)f32;
                    }
                    if (lay >= 2) /* keep block scales finite: rewrite each block's fp16 */
                        for (size_t t = 0; t < N; t++)
                            for (uint32_t b = 0; b < dim / 32; b++) {
                                uint16_t h = kvqi_fp32_to_fp16(0.01f * (float)(1 + (t + b) % 7));
                                memcpy(codes + t * stride + b * (lay == 2 ? 34 : 18), &h, 2);
                            }
                    typedef void (*score_fn)(const float *, uint32_t, uint32_t, const uint8_t *, size_t, size_t, float *, size_t);
                    typedef void (*accum_fn)(const float *, size_t, uint32_t, uint32_t, const uint8_t *, size_t, size_t, float *);
                    score_fn sr[4] = {S->score_f32, S->score_f16, S->score_q8_0, S->score_q4_0};
                    score_fn sk[4] = {K->score_f32, K->score_f16, K->score_q8_0, K->score_q4_0};
                    accum_fn ar[4] = {S->accum_f32, S->accum_f16, S->accum_q8_0, S->accum_q4_0};
                    accum_fn ak[4] = {K->accum_f32, K->accum_f16, K->accum_q8_0, K->accum_q4_0};
                    sr[lay](q, G, dim, src, stride, N, s_ref, B);
                    sk[lay](q, G, dim, src, stride, N, s_simd, B);
                    for (uint32_t h = 0; h < G; h++)
                        CHECKF(close_arrays(s_simd + h * B, s_ref + h * B, N, 1e-4),
                               "%s score layout %d dim %u G %u", kvqi_isa_name((kvq_isa)isa), lay, dim, G);
                    fill_uniform(a_ref, G * dim, 500);
                    memcpy(a_simd, a_ref, G * dim * sizeof(float));
                    ar[lay](w, B, G, dim, src, stride, N, a_ref);
                    ak[lay](w, B, G, dim, src, stride, N, a_simd);
                    CHECKF(close_arrays(a_simd, a_ref, G * dim, 1e-4), "%s accum layout %d dim %u G %u",
                           kvqi_isa_name((kvq_isa)isa), lay, dim, G);
                    tested++;
                }
                /* rotated codes, one to three passes */
                static const uint32_t bitss[] = {1, 2, 3, 4, 8};
                for (size_t bi = 0; bi < 5; bi++) {
                    for (uint32_t passes = 1; passes <= (bitss[bi] == 8 ? 1u : 3u); passes++) {
                        uint32_t bits = bitss[bi];
                        if (dim % (bits == 2 ? 64 : 32)) continue;
                        kvqi_rot_layout L;
                        static float cent8[256];
                        memset(&L, 0, sizeof L);
                        if (bits == 8) L.cent8 = cent8;
                        L.dim = dim;
                        L.bits = bits;
                        L.n_pass = passes;
                        L.norm_offset = 0;
                        uint32_t ib = dim * bits / 8;
                        for (uint32_t p = 0; p < passes; p++) {
                            L.scale_offset[p] = 2 * p;
                            L.index_offset[p] = 2 * passes + p * ib;
                            for (uint32_t i = 0; i < (1u << bits); i++)
                                KVQI_ROT_CENT(&L, p)[i] = ((float)i * 0.3f - 1.0f) / (float)(p + 1);
                        }
                        L.code_size = 2 * passes + passes * ib + 3; /* odd stride on purpose */
                        for (size_t t = 0; t < N; t++)
                            for (uint32_t p = 0; p < passes; p++) {
                                uint16_t h = kvqi_fp32_to_fp16(0.5f + 0.01f * (float)(t + p));
                                memcpy(codes + t * L.code_size + 2 * p, &h, 2);
                            }
                        S->score_rot(&L, q, G, codes, N, s_ref, B);
                        K->score_rot(&L, q, G, codes, N, s_simd, B);
                        for (uint32_t h = 0; h < G; h++)
                            CHECKF(close_arrays(s_simd + h * B, s_ref + h * B, N, 1e-4),
                                   "%s score_rot bits %u passes %u dim %u G %u",
                                   kvqi_isa_name((kvq_isa)isa), bits, passes, dim, G);
                        fill_uniform(a_ref, G * dim, 600);
                        memcpy(a_simd, a_ref, G * dim * sizeof(float));
                        S->accum_rot(&L, w, B, G, codes, N, a_ref);
                        K->accum_rot(&L, w, B, G, codes, N, a_simd);
                        CHECKF(close_arrays(a_simd, a_ref, G * dim, 1e-4),
                               "%s accum_rot bits %u passes %u dim %u G %u",
                               kvqi_isa_name((kvq_isa)isa), bits, passes, dim, G);
                        tested++;
                    }
                }
            }
        }
        /* the integer paths' orders are permutations of each 128-coordinate block */
        for (uint32_t bits = 2; bits <= 4; bits++) {
            uint8_t seen_k[256], seen_v[256], seen_8[256];
            memset(seen_k, 0, sizeof seen_k);
            memset(seen_v, 0, sizeof seen_v);
            memset(seen_8, 0, sizeof seen_8);
            for (uint32_t p = 0; p < 256; p++) {
                uint32_t ck = kvqi_rot_i8_coordinate(bits, p), cv = kvqi_rot_v16_coordinate(bits, p);
                uint32_t c8 = kvqi_rot_v8_coordinate(bits, p);
                CHECKF(ck / 128 == p / 128 && cv / 128 == p / 128 && c8 / 128 == p / 128,
                       "bits %u lane %u leaves its block", bits, p);
                if (ck < 256) seen_k[ck]++;
                if (cv < 256) seen_v[cv]++;
                if (c8 < 256) seen_8[c8]++;
            }
            for (uint32_t c = 0; c < 256; c++)
                CHECKF(seen_k[c] == 1 && seen_v[c] == 1 && seen_8[c] == 1, "bits %u coordinate %u taken %u / %u / %u times",
                       bits, c, seen_k[c], seen_v[c], seen_8[c]);
        }
        /* integer key scores: exact sums, so bit-identical to the reference */
        for (uint32_t bits = 2; bits <= 4 && K->score_rot_i8; bits++) {
            for (uint32_t dim = 128; dim <= 256; dim += 128) {
                for (uint32_t G = 1; G <= 6; G++) {
                    kvqi_rot_layout L = int_rot_layout(dim, bits);
                    kvqi_rng r;
                    kvqi_rng_seed(&r, 1200 + G + dim + 7 * bits);
                    for (size_t i = 0; i < (size_t)N * L.code_size; i++) codes[i] = (uint8_t)kvqi_rng_next(&r);
                    for (size_t t = 0; t < N; t++) {
                        uint16_t h = kvqi_fp32_to_fp16(0.25f + 0.01f * (float)t);
                        memcpy(codes + t * L.code_size, &h, 2);
                    }
                    int8_t q8[6 * 256];
                    float qsc[6];
                    int32_t qsum[6];
                    for (uint32_t h = 0; h < G; h++) {
                        int32_t sum = 0;
                        for (uint32_t j = 0; j < dim; j++) {
                            q8[h * dim + j] = (int8_t)((int)(kvqi_rng_next(&r) % 255) - 127);
                            sum += q8[h * dim + j];
                        }
                        qsum[h] = 128 * sum;
                        qsc[h] = 0.001f * (float)(h + 1);
                    }
                    kvqi_cache_score_rot_i8_ref(&L, q8, qsc, qsum, G, codes, N, s_ref, B);
                    K->score_rot_i8(&L, q8, qsc, qsum, G, codes, N, s_simd, B);
                    for (uint32_t h = 0; h < G; h++)
                        CHECKF(memcmp(s_ref + h * B, s_simd + h * B, N * sizeof(float)) == 0,
                               "%s score_rot_i8 bits %u dim %u G %u head %u",
                               kvqi_isa_name((kvq_isa)isa), bits, dim, G, h);
                    tested++;
                }
            }
        }
        /* 1-bit keys of one to three passes in integers: bit-identical to the reference */
        for (uint32_t passes = 1; passes <= 3 && K->score_rot1_i8; passes++) {
            for (uint32_t dim = 128; dim <= 256; dim += 128) {
                for (uint32_t G = 1; G <= 6; G++) {
                    kvqi_rot_layout L;
                    memset(&L, 0, sizeof L);
                    L.dim = dim;
                    L.bits = 1;
                    L.n_pass = passes;
                    for (uint32_t p = 0; p < passes; p++) {
                        L.scale_offset[p] = 2 * p;
                        L.index_offset[p] = 2 * passes + p * (dim / 8);
                        KVQI_ROT_CENT(&L, p)[0] = -0.7f / (float)(p + 1);
                        KVQI_ROT_CENT(&L, p)[1] = 0.9f / (float)(p + 1);
                    }
                    L.code_size = 2 * passes + passes * dim / 8 + 3;
                    kvqi_rng r;
                    kvqi_rng_seed(&r, 1700 + G + dim + 11 * passes);
                    for (size_t i = 0; i < (size_t)N * L.code_size; i++) codes[i] = (uint8_t)kvqi_rng_next(&r);
                    for (size_t t = 0; t < N; t++)
                        for (uint32_t p = 0; p < passes; p++) {
                            uint16_t h = kvqi_fp32_to_fp16(0.5f + 0.01f * (float)(t + p));
                            memcpy(codes + t * L.code_size + 2 * p, &h, 2);
                        }
                    int8_t q8[6 * 256];
                    float qsc[6];
                    int32_t qsum[6];
                    for (uint32_t h = 0; h < G; h++) {
                        int32_t sum = 0;
                        for (uint32_t j = 0; j < dim; j++) {
                            q8[h * dim + j] = (int8_t)((int)(kvqi_rng_next(&r) % 255) - 127);
                            sum += q8[h * dim + j];
                        }
                        qsum[h] = 128 * sum;
                        qsc[h] = 0.002f * (float)(h + 1);
                    }
                    kvqi_cache_score_rot1_i8_ref(&L, q8, qsc, qsum, G, codes, N, s_ref, B);
                    K->score_rot1_i8(&L, q8, qsc, qsum, G, codes, N, s_simd, B);
                    for (uint32_t h = 0; h < G; h++)
                        CHECKF(memcmp(s_ref + h * B, s_simd + h * B, N * sizeof(float)) == 0,
                               "%s score_rot1_i8 passes %u dim %u G %u head %u",
                               kvqi_isa_name((kvq_isa)isa), passes, dim, G, h);
                    /* and the float scores of the same query, within the query's rounding */
                    float qf[6 * 256];
                    for (uint32_t i = 0; i < G * dim; i++) qf[i] = (float)q8[i];
                    S->score_rot(&L, qf, G, codes, N, a_ref, B);
                    for (uint32_t h = 0; h < G; h++)
                        for (size_t t = 0; t < N; t++)
                            CHECK_NEAR(s_ref[h * B + t], a_ref[h * B + t] * qsc[h],
                                       1e-3 * (fabs(a_ref[h * B + t] * qsc[h]) + 1.0));
                    tested++;
                }
            }
        }
        /* integer value sums: exact, so bit-identical to the reference; blocks of every
         * parity, a head whose weights are all zero, a negative weight; and within the
         * weights' rounding of the float sum (16 bits: 2^-16 of a block's largest; 8 bits,
         * token counts of every remainder mod 4: 1/510, a negative-weight head one token
         * at a time) */
        if (K->accum_rot_i16)
            tested += int_values_match(kvqt_, (kvq_isa)isa, "accum_rot_i16", kvqi_cache_accum_rot_i16_ref,
                                       K->accum_rot_i16, kvqi_rot_v16_coordinate, 2, 1e-8, 1300, codes, a_ref,
                                       a_simd);
        if (K->accum_rot_u8)
            tested += int_values_match(kvqt_, (kvq_isa)isa, "accum_rot_u8", kvqi_cache_accum_rot_u8_ref,
                                       K->accum_rot_u8, kvqi_rot_v8_coordinate, 4, 4e-5, 1600, codes, a_ref,
                                       a_simd);
        /* q4_0 values in integers: exact sums, so bit-identical to the reference; odd and
         * even token counts, a head whose weights are all zero, a negative weight and block
         * scale, padded rows; and the reference within the 16-bit weights' rounding of the
         * float sum */
        for (uint32_t dim = 32; dim <= 256 && K->accum_q4_0_i16; dim *= 2) {
            for (uint32_t G = 1; G <= 6; G++) {
                size_t nv = G % 2 ? N : N - 1, stride = dim / 32 * 18 + 5;
                kvqi_rng r;
                kvqi_rng_seed(&r, 1700 + G + dim);
                fill_block_rows(codes, N, stride, dim, 18, &r);
                float wv[6 * 64];
                fill_uniform(wv, 6 * 64, 1800 + G);
                for (size_t i = 0; i < 6 * 64; i++) wv[i] = fabsf(wv[i]);
                wv[5] = -wv[5];
                if (G > 2) memset(wv + 64, 0, 64 * sizeof(float));
                fill_uniform(a_ref, G * dim, 1900);
                memcpy(a_simd, a_ref, G * dim * sizeof(float));
                kvqi_cache_accum_q4_0_i16_ref(wv, 64, G, dim, codes, stride, nv, a_ref);
                K->accum_q4_0_i16(wv, 64, G, dim, codes, stride, nv, a_simd);
                CHECKF(memcmp(a_ref, a_simd, G * dim * sizeof(float)) == 0, "%s accum_q4_0_i16 dim %u G %u n %zu",
                       kvqi_isa_name((kvq_isa)isa), dim, G, nv);
                static float a_float[6 * 256], a_int[6 * 256];
                memset(a_float, 0, sizeof a_float);
                memset(a_int, 0, sizeof a_int);
                S->accum_q4_0(wv, 64, G, dim, codes, stride, nv, a_float);
                kvqi_cache_accum_q4_0_i16_ref(wv, 64, G, dim, codes, stride, nv, a_int);
                for (uint32_t h = 0; h < G; h++) {
                    double num = 0, den = 0;
                    for (uint32_t j = 0; j < dim; j++) {
                        double x = a_int[h * dim + j] - a_float[h * dim + j];
                        num += x * x;
                        den += (double)a_float[h * dim + j] * a_float[h * dim + j];
                    }
                    CHECKF(num <= 1e-8 * den, "%s accum_q4_0_i16 dim %u head %u off the float sum",
                           kvqi_isa_name((kvq_isa)isa), dim, h);
                }
                tested++;
            }
        }
        /* outlier channels */
        for (uint32_t G = 1; G <= 5; G += 2) {
            uint16_t vals[3 * 40];
            float qo[5 * 3], sc1[5 * 64], sc2[5 * 64];
            for (size_t i = 0; i < 3 * 40; i++) vals[i] = kvqi_fp32_to_fp16((float)i * 0.37f - 20.0f);
            fill_uniform(qo, 5 * 3, 1000 + G);
            fill_uniform(sc1, 5 * 64, 1100);
            memcpy(sc2, sc1, sizeof sc1);
            S->outlier_add(vals, 40, qo, G, 3, 37, sc1, 64);
            K->outlier_add(vals, 40, qo, G, 3, 37, sc2, 64);
            CHECKF(close_arrays(sc2, sc1, 5 * 64, 1e-5), "%s outlier_add G %u", kvqi_isa_name((kvq_isa)isa), G);
        }
        /* rotations of queries and outputs */
        for (uint32_t rows = 1; rows <= 9; rows += 4) {
            float M[9 * 64], x[9], y1[64], y2[64];
            fill_uniform(M, sizeof M / sizeof M[0], 700 + rows);
            fill_uniform(x, 9, 800 + rows);
            fill_uniform(y1, 64, 900);
            memcpy(y2, y1, sizeof y1);
            S->axpy_rows(M, x, rows, 64, y1);
            K->axpy_rows(M, x, rows, 64, y2);
            CHECKF(close_arrays(y2, y1, 64, 1e-5), "%s axpy_rows %u", kvqi_isa_name((kvq_isa)isa), rows);
        }
        /* block maximum: every length, masked (-inf) scores, the maximum anywhere */
        for (size_t n = 1; n <= 70; n++) {
            float sc[70];
            fill_uniform(sc, n, 1600 + n);
            for (size_t i = 0; i < n; i += 3) sc[i] = -INFINITY;
            sc[(n * 7) % n] = n % 2 ? sc[(n * 7) % n] : 5.0f + (float)n;
            CHECKF(K->max_of(sc, n) == S->max_of(sc, n), "%s max_of n %zu", kvqi_isa_name((kvq_isa)isa), n);
            float want = -INFINITY;
            for (size_t i = 0; i < n; i++) want = sc[i] > want ? sc[i] : want;
            CHECK(S->max_of(sc, n) == want);
        }
        /* exp: every length mod the vector width, arguments down to underflow */
        float e1[100], e2[100];
        for (size_t n = 1; n <= 100; n += 7) {
            double want[100];
            for (size_t i = 0; i < n; i++) {
                e1[i] = e2[i] = -(float)i * 1.1f + 3.0f;
                want[i] = exp((double)(e1[i] - 3.0f));
            }
            float r1 = S->exp_sum(e1, n, 3.0f), r2 = K->exp_sum(e2, n, 3.0f);
            CHECK(close_arrays(e2, e1, n, 1e-6));
            CHECK_NEAR(r2, r1, 1e-6 * r1);
            for (size_t i = 0; i < n; i++)
                CHECK_NEAR(e1[i], want[i], (i * 1.1 > 87 ? 0 : 3e-7 * want[i]) + 1e-37);
        }
    }
    if (!tested) SKIP("no SIMD ISA on this CPU");
    free(q), free(w), free(codes), free(s_ref), free(s_simd), free(a_ref), free(a_simd);
}

TEST(cache_threaded_matches_single_thread) {
    const uint32_t n_kv = 4, H = 16, dim = 128;
    const size_t n = 700, nq = 5;
    float *k = make_kv(n, n_kv, dim, 71, 2, 6.0f), *v = make_kv(n, n_kv, dim, 72, 0, 1);
    float *q = make_kv(nq, H, dim, 73, 0, 1);
    float *o1 = malloc(nq * H * dim * sizeof(float)), *o2 = malloc(nq * H * dim * sizeof(float));
    REQUIRE(k && v && q && o1 && o2);
    /* 3 threads share blocks of 4 queries; 8 threads get one query per task (more tasks
     * than threads), so the grouping of queries changes too */
    kvq_threadpool *pool, *pool8;
    REQUIRE_OK(kvq_threadpool_create(3, &pool));
    REQUIRE_OK(kvq_threadpool_create(8, &pool8));
    static const char *specs[] = {"mse:bits=4", "fp16", "q4_0", "rabitq:bits=1"};
    for (size_t s = 0; s < 4; s++) {
        kvq_cache *c;
        REQUIRE_OK(make_cache(specs[s], specs[s], n_kv, dim, 32, 2, 256, &c));
        REQUIRE_OK(kvq_cache_append(c, k, v, n));
        REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.1f, NULL, o1));
        REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.1f, pool, o2));
        CHECKF(memcmp(o1, o2, nq * H * dim * sizeof(float)) == 0, "%s: threaded differs", specs[s]);
        REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.1f, pool8, o2));
        CHECKF(memcmp(o1, o2, nq * H * dim * sizeof(float)) == 0, "%s: 8 threads differ", specs[s]);
        kvq_cache_free(c);
    }
    kvq_threadpool_free(pool);
    kvq_threadpool_free(pool8);
    free(k), free(v), free(q), free(o1), free(o2);
}

/* The fused paths agree with the generic quantizer path (kvq_score / kvq_decode). */
/* q4_0 keys against an int8 query: every ISA's kernel gives the reference's bits (exact
 * int32 sums, the same float steps), odd token counts, 1..6 heads, padded rows; the
 * reference is the dot product of the dequantized query and key to float rounding. */
/* The row scores take tokens in twos or fours per pass; a token's score must be the same
 * bits whichever neighbours share its pass (each lane one chain of multiply-adds, the
 * horizontal sums in one order): scores over a block == one token at a time. */
/* Where the CPU has AVX-VNNI, the AVX2 entry is that build of the AVX2 kernels and the
 * plain build is in the kernel sets too, so the tests above check both against the
 * reference; KVQ_NO_AVXVNNI=1 (read at start-up) leaves the plain one alone. */
TEST(cache_avxvnni_build_among_kernel_sets) {
    const kvqi_cache_kernels *ksets[8];
    size_t n = kvqi_cache_kernel_sets(ksets, 8);
    REQUIRE(n >= 1 && n <= 8 && ksets[0] == &kvqi_cache_kernels_scalar);
    size_t n_avx2 = 0;
    for (size_t i = 0; i < n; i++) n_avx2 += ksets[i]->isa == KVQ_ISA_AVX2;
#if defined(KVQ_HAVE_AVXVNNI)
    if (kvq_isa_available(KVQ_ISA_AVX2) && kvqi_cpu()->avxvnni) {
        CHECK(n_avx2 == 2);
        const kvqi_cache_kernels *a = NULL, *b = NULL;
        for (size_t i = 0; i < n; i++)
            if (ksets[i]->isa == KVQ_ISA_AVX2) *(a ? &b : &a) = ksets[i];
        REQUIRE(a && b);
        CHECK(a == kvqi_cache_kernels_for(KVQ_ISA_AVX2)); /* the AVX-VNNI build serves */
        CHECK(a->chan_dot != b->chan_dot && a->accum_rot_i16 != b->accum_rot_i16 &&
              a->score_q8_0_i16 != b->score_q8_0_i16);
        return;
    }
#endif
    CHECK(n_avx2 == (kvq_isa_available(KVQ_ISA_AVX2) ? 1u : 0u));
    SKIP("no AVX-VNNI build or CPU here");
}

TEST(cache_row_scores_independent_of_grouping) {
    enum { N = 23, MAXD = 256, G_MAX = 6 };
    static const uint32_t dims[] = {32, 64, 128, 256};
    float *q = malloc(G_MAX * MAXD * sizeof(float)), *s_all = malloc(G_MAX * N * sizeof(float));
    float *s_one = malloc(G_MAX * sizeof(float)), *f32 = malloc((size_t)N * MAXD * sizeof(float));
    uint8_t *codes = malloc((size_t)N * MAXD * 2);
    REQUIRE(q && s_all && s_one && f32 && codes);
    int tested = 0;
    const kvqi_cache_kernels *ksets[8];
    size_t n_ksets = kvqi_cache_kernel_sets(ksets, 8); /* scalar first */
    for (size_t ks = 0; ks < n_ksets; ks++) {
        const kvqi_cache_kernels *K = ksets[ks];
        int isa = (int)K->isa;
        typedef void (*score_fn)(const float *, uint32_t, uint32_t, const uint8_t *, size_t, size_t, float *, size_t);
        score_fn sk[4] = {K->score_f32, K->score_f16, K->score_q8_0, K->score_q4_0};
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            uint32_t dim = dims[di];
            for (uint32_t G = 1; G <= G_MAX; G++) {
                fill_uniform(q, G * dim, 700 + G);
                fill_uniform(f32, (size_t)N * dim, 800 + dim);
                for (int lay = 0; lay < 4; lay++) {
                    size_t stride = lay == 0 ? dim * 4 : lay == 1 ? dim * 2 : lay == 2 ? dim / 32 * 34 : dim / 32 * 18;
                    const uint8_t *src = lay == 0 ? (const uint8_t *)f32 : codes;
                    kvqi_rng r;
                    kvqi_rng_seed(&r, 900 + dim);
                    for (size_t i = 0; i < (size_t)N * stride && lay; i++) codes[i] = (uint8_t)kvqi_rng_next(&r);
                    for (size_t t = 0; t < N; t++) {
                        if (lay == 1)
                            for (uint32_t i = 0; i < dim; i++) {
                                uint16_t h = kvqi_fp32_to_fp16((float)kvqi_rng_normal(&r));
                                memcpy(codes + t * stride + 2 * i, &h, 2);
                            }
                        for (uint32_t b = 0; lay >= 2 && b < dim / 32; b++) {
                            uint16_t h = kvqi_fp32_to_fp16(0.01f * (float)(1 + (t + b) % 7));
                            memcpy(codes + t * stride + b * (lay == 2 ? 34 : 18), &h, 2);
                        }
                    }
                    sk[lay](q, G, dim, src, stride, N, s_all, N);
                    int same = 1;
                    for (size_t t = 0; t < N; t++) {
                        sk[lay](q, G, dim, src + t * stride, stride, 1, s_one, 1);
                        for (uint32_t h = 0; h < G; h++) same &= memcmp(&s_one[h], &s_all[h * N + t], sizeof(float)) == 0;
                    }
                    CHECKF(same, "%s score layout %d dim %u G %u", kvqi_isa_name((kvq_isa)isa), lay, dim, G);
                    tested++;
                }
            }
        }
    }
    CHECK(tested > 0);
    free(q);
    free(s_all);
    free(s_one);
    free(f32);
    free(codes);
}

TEST(cache_q4_0_i8_kernels_match_reference) {
    enum { N = 61, MAXD = 512, G_MAX = 6 };
    const size_t B = KVQI_MAX_BLOCK_TOKENS;
    static const uint32_t dims[] = {64, 128, 192, 512};
    const size_t stride_max = MAXD / 32 * 18 + 6;
    uint8_t *codes = malloc(N * stride_max);
    int8_t *q8 = malloc(G_MAX * MAXD);
    float *s_ref = malloc(G_MAX * B * sizeof(float)), *s_simd = malloc(G_MAX * B * sizeof(float));
    REQUIRE(codes && q8 && s_ref && s_simd);
    float qsc[G_MAX];
    int tested = 0, checked = 0;
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        uint32_t dim = dims[di];
        size_t stride = (size_t)dim / 32 * 18 + 6; /* rows apart by more than a row */
        kvqi_rng r;
        kvqi_rng_seed(&r, 1503 + dim);
        fill_block_rows(codes, N, stride, dim, 18, &r);
        for (size_t i = 0; i < (size_t)G_MAX * dim; i++) q8[i] = (int8_t)((int)(kvqi_rng_next(&r) % 255) - 127);
        for (uint32_t h = 0; h < G_MAX; h++) qsc[h] = 0.003f * (float)(h + 1);
        kvqi_cache_score_q4_0_i8_ref(q8, qsc, G_MAX, dim, codes, stride, N, s_ref, B);
        /* the reference against the dequantized dot product in double */
        for (uint32_t h = 0; h < G_MAX; h++)
            for (size_t t = 0; t < N; t++) {
                double exact = 0.0, mag = 0.0;
                for (uint32_t j = 0; j < dim; j++) {
                    const uint8_t *blk = codes + t * stride + (j / 32) * 18;
                    uint16_t hd;
                    memcpy(&hd, blk, 2);
                    uint32_t e = j % 32;
                    int kv = (int)((e < 16 ? blk[2 + e] : blk[2 + e - 16] >> 4) & 15) - 8;
                    double x = (double)kvqi_fp16_to_fp32(hd) * kv * q8[h * dim + j] * qsc[h];
                    exact += x;
                    mag += fabs(x);
                }
                CHECKF(fabs(s_ref[h * B + t] - exact) <= 1e-6 * mag + 1e-30,
                       "q4_0 ref dim %u head %u token %zu: %g vs %g", dim, h, t, (double)s_ref[h * B + t], exact);
                checked++;
            }
        const kvqi_cache_kernels *ksets[8];
        size_t n_ksets = kvqi_cache_kernel_sets(ksets, 8); /* scalar first */
        for (size_t ks = 1; ks < n_ksets; ks++) {
            const kvqi_cache_kernels *K = ksets[ks];
            int isa = (int)K->isa;
            if (!K->score_q4_0_i8) continue;
            for (uint32_t G = 1; G <= G_MAX; G++)
                for (size_t n = N; n >= 1; n = n > 2 ? n / 2 : n - 1) {
                    kvqi_cache_score_q4_0_i8_ref(q8, qsc, G, dim, codes, stride, n, s_ref, B);
                    memset(s_simd, 0xff, G_MAX * B * sizeof(float));
                    K->score_q4_0_i8(q8, qsc, G, dim, codes, stride, n, s_simd, B);
                    for (uint32_t h = 0; h < G; h++)
                        CHECKF(memcmp(s_ref + h * B, s_simd + h * B, n * sizeof(float)) == 0,
                               "%s score_q4_0_i8 dim %u G %u n %zu head %u", kvqi_isa_name((kvq_isa)isa), dim, G,
                               n, h);
                    tested++;
                }
        }
    }
    CHECK(checked > 0);
#if defined(KVQ_HAVE_X86_SIMD)
    /* AVX2 and AVX-512 with VNNI have the kernel: it must have run */
    if (kvq_isa_available(KVQ_ISA_AVX2)) CHECK(tested > 0);
#endif
    (void)tested;
    free(codes), free(q8), free(s_ref), free(s_simd);
}

/* q8_0 keys against an int16 query: the reference is the dequantized dot product to float
 * rounding (full-range query words, -128 key bytes, negative block scales), and every
 * ISA's kernel gives its bits: odd token counts, 1..6 heads, padded rows, dims whose
 * 64-coordinate count is odd, and one the kernels hand to the reference. */
TEST(cache_q8_0_i16_kernels_match_reference) {
    enum { N = 61, MAXD = 512, G_MAX = 6 };
    const size_t B = KVQI_MAX_BLOCK_TOKENS;
    static const uint32_t dims[] = {64, 128, 192, 256, 512, 96};
    const size_t stride_max = MAXD / 32 * 34 + 6;
    uint8_t *codes = malloc(N * stride_max);
    int16_t *q16 = malloc(G_MAX * MAXD * sizeof(int16_t));
    float *s_ref = malloc(G_MAX * B * sizeof(float)), *s_simd = malloc(G_MAX * B * sizeof(float));
    REQUIRE(codes && q16 && s_ref && s_simd);
    float qsc[G_MAX];
    int tested = 0, checked = 0;
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        uint32_t dim = dims[di];
        size_t stride = (size_t)dim / 32 * 34 + 6;
        kvqi_rng r;
        kvqi_rng_seed(&r, 2500 + dim);
        fill_block_rows(codes, N, stride, dim, 34, &r);
        for (size_t i = 0; i < (size_t)G_MAX * dim; i++) q16[i] = (int16_t)((int)(kvqi_rng_next(&r) % 65535) - 32767);
        q16[0] = 32767, q16[1] = -32767; /* the extremes, against -128 and 127 keys */
        for (uint32_t h = 0; h < G_MAX; h++) qsc[h] = 1e-5f * (float)(h + 1);
        kvqi_cache_score_q8_0_i16_ref(q16, qsc, G_MAX, dim, codes, stride, N, s_ref, B);
        for (uint32_t h = 0; h < G_MAX; h++)
            for (size_t t = 0; t < N; t++) {
                double exact = 0.0, mag = 0.0;
                for (uint32_t j = 0; j < dim; j++) {
                    const uint8_t *blk = codes + t * stride + (j / 32) * 34;
                    uint16_t hd;
                    memcpy(&hd, blk, 2);
                    double x = (double)kvqi_fp16_to_fp32(hd) * (int8_t)blk[2 + j % 32] * q16[h * dim + j] * qsc[h];
                    exact += x;
                    mag += fabs(x);
                }
                /* dims that are no multiple of 64: the reference sums nothing; skip */
                if (dim % 64) continue;
                CHECKF(fabs(s_ref[h * B + t] - exact) <= 1e-6 * mag + 1e-30,
                       "q8_0 i16 ref dim %u head %u token %zu: %g vs %g", dim, h, t, (double)s_ref[h * B + t],
                       exact);
                checked++;
            }
        const kvqi_cache_kernels *ksets[8];
        size_t n_ksets = kvqi_cache_kernel_sets(ksets, 8); /* scalar first */
        for (size_t ks = 1; ks < n_ksets; ks++) {
            const kvqi_cache_kernels *K = ksets[ks];
            int isa = (int)K->isa;
            if (!K->score_q8_0_i16) continue;
            for (uint32_t G = 1; G <= G_MAX; G++)
                for (size_t n = N; n >= 1; n = n > 2 ? n / 2 : n - 1) {
                    kvqi_cache_score_q8_0_i16_ref(q16, qsc, G, dim, codes, stride, n, s_ref, B);
                    memset(s_simd, 0xff, G_MAX * B * sizeof(float));
                    K->score_q8_0_i16(q16, qsc, G, dim, codes, stride, n, s_simd, B);
                    for (uint32_t h = 0; h < G; h++)
                        CHECKF(memcmp(s_ref + h * B, s_simd + h * B, n * sizeof(float)) == 0,
                               "%s score_q8_0_i16 dim %u G %u n %zu head %u", kvqi_isa_name((kvq_isa)isa), dim,
                               G, n, h);
                    tested++;
                }
        }
    }
    CHECK(checked > 0);
#if defined(KVQ_HAVE_X86_SIMD)
    /* AVX2 and AVX-512 with VNNI have the kernel: it must have run */
    if (kvq_isa_available(KVQ_ISA_AVX2)) CHECK(tested > 0);
#endif
    (void)tested;
    free(codes), free(q16), free(s_ref), free(s_simd);
}

TEST(cache_fused_paths_match_generic) {
    const uint32_t n_kv = 2, H = 8, dim = 128;
    const size_t n = 300, nq = 3;
    float *k = make_kv(n, n_kv, dim, 81, 0, 1), *v = make_kv(n, n_kv, dim, 82, 0, 1);
    float *q = make_kv(nq, H, dim, 83, 0, 1);
    float *o1 = malloc(nq * H * dim * sizeof(float)), *o2 = malloc(nq * H * dim * sizeof(float));
    REQUIRE(k && v && q && o1 && o2);
    static const char *specs[] = {"fp16",       "q8_0",       "q4_0",
                                  "mse:bits=1", "mse:bits=2", "mse:bits=3",
                                  "mse:bits=4", "mse:bits=8", "turboquant_rvq:bits=1,residuals=2",
                                  "turboquant_rvq:bits=3,residuals=3", "qjl", "rabitq:bits=1",
                                  "prod:bits=3", "mse:bits=4,rotate=dense"};
    int fused = 0;
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
        kvq_cache *c;
        REQUIRE_OK(make_cache(specs[s], specs[s], n_kv, dim, 0, 0, 128, &c));
        REQUIRE_OK(kvq_cache_append(c, k, v, n));
        REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.09f, NULL, o1));
        fused += c->key.path != KVQI_PATH_GENERIC;
        /* a randomized Hadamard is applied as a transform, a dense rotation as its matrix */
        for (int side = 0; side < 2; side++) {
            const kvqi_side *S = side ? &c->value : &c->key;
            if (S->path != KVQI_PATH_ROT) continue;
            int dense = strstr(specs[s], "dense") != NULL;
            CHECKF(dense ? !S->had && S->rotation : S->had && !S->rotation && !S->rotation_h,
                   "%s: side %d: transform %d, matrix %d", specs[s], side, S->had != NULL,
                   S->rotation || S->rotation_h);
        }
        /* the integer key path rounds the query and the centroids to 8 bits: about 1 % on
         * the scores; every float path agrees to rounding */
        int int8_keys = (c->key.path == KVQI_PATH_ROT && dim % 128 == 0 &&
                         ((c->key.rot.has_u8 && c->kern->score_rot_i8 &&
                           (c->kern->rot_i8_bits >> c->key.rot.bits & 1u)) ||
                          (c->key.rot.bits == 1 && c->kern->score_rot1_i8))) ||
                        (c->key.path == KVQI_PATH_SIGNS && c->kern->score_signs_i8 &&
                         c->key.signs.m == dim && dim % 128 == 0);
        /* q4_0 keys in integers: the query rounded to 8 bits; q8_0 keys: to 16 bits (about
         * 2^-16 of the largest entry per coordinate: far below 1e-3 of the output) */
        int qblk_keys = dim % 64 == 0 && c->key.path == KVQI_PATH_Q4_0 && c->kern->score_q4_0_i8;
        int qblk16_keys = dim % 64 == 0 && c->key.path == KVQI_PATH_Q8_0 && c->kern->score_q8_0_i16;
        /* the integer value path rounds the weights to 16 bits and the centroids to 8 */
        int int_values = c->value.path == KVQI_PATH_ROT && c->value.rot.has_u8 &&
                         c->kern->accum_rot_i16 && (c->kern->rot_v16_bits >> c->value.rot.bits & 1u) &&
                         dim % 128 == 0;
        c->key.path = c->value.path = KVQI_PATH_GENERIC;
        REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.09f, NULL, o2));
        double e = rel_err(o1, o2, nq * H * dim);
        CHECKF(e < (int8_keys ? 1.5e-2 : qblk_keys ? 1e-2 : int_values ? 5e-3 : qblk16_keys ? 1e-4 : 1e-5),
               "%s: fused vs generic %.3g", specs[s], e);
        kvq_cache_free(c);
    }
    CHECKF(fused == (int)(sizeof specs / sizeof specs[0]), "only %d configs took a fused path",
           fused);
    free(k), free(v), free(q), free(o1), free(o2);
}

/* Split-K: with fewer (KV head, query block) tasks than threads the context is cut into
 * token ranges whose softmax states are merged; the result matches one thread to float
 * rounding, with an exact window, outlier channels, the fused, integer and generic key
 * paths, and contexts that end mid-chunk. */
TEST(cache_split_k_matches_single_thread) {
    const uint32_t n_kv = 3, H = 9, dim = 64;
    const size_t n = 1000;
    float *k = make_kv(n, n_kv, dim, 91, 2, 5.0f), *v = make_kv(n, n_kv, dim, 92, 0, 1);
    float *q = make_kv(2, H, dim, 93, 0, 1);
    float *o1 = malloc(2 * H * dim * sizeof(float)), *o2 = malloc(2 * H * dim * sizeof(float));
    REQUIRE(k && v && q && o1 && o2);
    kvq_threadpool *pools[3];
    static const unsigned sizes[3] = {2, 4, 16};
    for (int p = 0; p < 3; p++) REQUIRE_OK(kvq_threadpool_create(sizes[p], &pools[p]));
    static const char *specs[][2] = {{"mse:bits=4", "mse:bits=2"}, {"fp16", "q4_0"},
                                     {"qjl", "mse:bits=3"}, {"turboquant_rvq:bits=1", "q8_0"}};
    static const uint32_t windows[] = {0, 48}, outs[] = {0, 2};
    for (size_t s = 0; s < 4; s++)
        for (int w = 0; w < 2; w++) {
            kvq_cache *c;
            kvq_cache_config cfg;
            REQUIRE_OK(kvq_cache_config_init(&cfg, n_kv, dim, specs[s][0], specs[s][1], NULL, 0));
            cfg.window = windows[w];
            cfg.n_outliers = outs[w];
            cfg.n_sink = w ? 5 : 0; /* sinks ahead of the first range */
            REQUIRE_OK(kvq_cache_create(&cfg, &c));
            /* 999 then 1000 tokens: the last chunk partly filled */
            REQUIRE_OK(kvq_cache_append(c, k, v, n - 1));
            for (int step = 0; step < 2; step++) {
                if (step) REQUIRE_OK(kvq_cache_append(c, k + (n - 1) * n_kv * dim,
                                                      v + (n - 1) * n_kv * dim, 1));
                REQUIRE_OK(kvq_cache_attend(c, q + step * H * dim, H, 1, 0.125f, NULL, o1));
                for (int p = 0; p < 3; p++) {
                    REQUIRE_OK(kvq_cache_attend(c, q + step * H * dim, H, 1, 0.125f, pools[p], o2));
                    double e = rel_err(o2, o1, H * dim);
                    CHECKF(e < 1e-5, "%s/%s window %u, %u threads: %.3g", specs[s][0],
                           specs[s][1], windows[w], sizes[p], e);
                }
            }
            kvq_cache_free(c);
        }
    /* the ranges were merged, not skipped: the pools hold the partial states */
    for (int p = 0; p < 3; p++) {
        float *shared = NULL;
        REQUIRE_OK(kvqi_threadpool_buffers(pools[p], 0, 0, NULL, &shared));
        CHECKF(shared != NULL, "%u threads: split-K did not run", sizes[p]);
    }
    for (int p = 0; p < 3; p++) kvq_threadpool_free(pools[p]);
    free(k), free(v), free(q), free(o1), free(o2);
}

/* Sign-code kernels: every ISA's score_signs equals the scalar reference bit for bit
 * (same lookups in the same order), and the reference equals the plain masked sum
 * 2 sum_{bit set} z - sum z to float rounding; with and without a divisor field, writing
 * and accumulating, runs that are not a multiple of the vector width. */
TEST(cache_sign_kernels_match_scalar) {
    enum { N = 45, G = 3, MAXM = 256 };
    const size_t ld = 64;
    static const uint32_t ms[] = {64, 128, 256, 8};
    float *z = malloc(G * MAXM * sizeof(float)), *lut = malloc(G * MAXM / 8 * 256 * sizeof(float));
    float *s_ref = malloc(G * ld * sizeof(float)), *s_simd = malloc(G * ld * sizeof(float));
    uint8_t *codes = malloc((size_t)N * (MAXM / 8 + 8));
    REQUIRE(z && lut && s_ref && s_simd && codes);
    float zsum[G];
    int tested = 0;
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
        uint32_t m = ms[mi];
        kvqi_sign_layout L = {.m = m, .code_size = m / 8 + 6, .bits_offset = 6, .num_offset = 0,
                              .den_offset = mi % 2 ? 2 : KVQI_SIGN_NO_DEN, .c0 = 0.37f};
        kvqi_rng r;
        kvqi_rng_seed(&r, 500 + m);
        for (size_t i = 0; i < (size_t)N * L.code_size; i++) codes[i] = (uint8_t)kvqi_rng_next(&r);
        for (size_t t = 0; t < N; t++) {
            uint16_t a = kvqi_fp32_to_fp16(0.5f + (float)kvqi_rng_uniform(&r));
            uint16_t b = kvqi_fp32_to_fp16(0.25f + (float)kvqi_rng_uniform(&r));
            memcpy(codes + t * L.code_size, &a, 2);
            memcpy(codes + t * L.code_size + 2, &b, 2);
        }
        for (uint32_t h = 0; h < G; h++) {
            zsum[h] = 0.0f;
            for (uint32_t i = 0; i < m; i++) zsum[h] += (z[h * m + i] = (float)kvqi_rng_normal(&r));
            kvqi_cache_sign_lut(z + h * m, m, lut + (size_t)h * m / 8 * 256);
        }
        for (int acc = 0; acc < 2; acc++) {
            for (size_t i = 0; i < G * ld; i++) s_ref[i] = acc ? (float)i * 0.01f : -7.0f;
            kvqi_cache_kernels_scalar.score_signs(&L, lut, zsum, G, codes, N, acc, s_ref, ld);
            for (uint32_t h = 0; h < G; h++)
                for (size_t t = 0; t < N; t++) {
                    const uint8_t *c = codes + t * L.code_size;
                    double sel = 0.0;
                    for (uint32_t i = 0; i < m; i++)
                        if ((c[6 + i / 8] >> (i % 8)) & 1) sel += z[h * m + i];
                    uint16_t a, b;
                    memcpy(&a, c, 2);
                    memcpy(&b, c + 2, 2);
                    double f = kvqi_fp16_to_fp32(a);
                    if (L.den_offset != KVQI_SIGN_NO_DEN) f /= kvqi_fp16_to_fp32(b);
                    double want = (acc ? (double)(h * ld + t) * 0.01 : 0.0) +
                                  0.37 * f * (2.0 * sel - zsum[h]);
                    CHECKF(fabs(s_ref[h * ld + t] - want) <= 1e-5 * (1.0 + fabs(want) + 0.37 * f * m),
                           "m %u h %u t %zu: %g vs %g", m, h, t, s_ref[h * ld + t], want);
                }
            const kvqi_cache_kernels *ksets[8];
            size_t n_ksets = kvqi_cache_kernel_sets(ksets, 8); /* scalar first */
            for (size_t ks = 1; ks < n_ksets; ks++) {
                const kvqi_cache_kernels *K = ksets[ks];
                int isa = (int)K->isa;
                for (size_t i = 0; i < G * ld; i++) s_simd[i] = acc ? (float)i * 0.01f : -7.0f;
                K->score_signs(&L, lut, zsum, G, codes, N, acc, s_simd, ld);
                CHECKF(memcmp(s_ref, s_simd, G * ld * sizeof(float)) == 0,
                       "%s m %u accumulate %d: differs from scalar", kvqi_isa_name((kvq_isa)isa), m, acc);
                tested++;
            }
        }
    }
    if (!tested) SKIP("no SIMD ISA on this CPU");
    free(z), free(lut), free(s_ref), free(s_simd), free(codes);
}

/* Sign keys in integers: bit-identical to their reference, with and without a
 * denominator, accumulating or not; within the int8 rounding of z of the float path. */
TEST(cache_sign_i8_kernels_match_reference) {
    enum { N = 45 };
    kvq_isa isa;
    REQUIRE_OK(kvqi_isa_resolve(KVQ_ISA_AUTO, &isa));
    const kvqi_cache_kernels *K = kvqi_cache_kernels_for(isa);
    if (!K->score_signs_i8) SKIP("no 8-bit dot product on this CPU");
    for (uint32_t m = 128; m <= 256; m += 128)
        for (int den = 0; den < 2; den++)
            for (int acc = 0; acc < 2; acc++)
                for (uint32_t G = 1; G <= 6; G++) {
                    kvqi_sign_layout L;
                    memset(&L, 0, sizeof L);
                    L.m = m;
                    L.num_offset = 0;
                    L.den_offset = den ? 2 : KVQI_SIGN_NO_DEN;
                    L.bits_offset = 4;
                    L.code_size = 4 + m / 8 + 1;
                    L.c0 = 0.0883f;
                    uint8_t codes[N * (4 + 256 / 8 + 1)];
                    kvqi_rng r;
                    kvqi_rng_seed(&r, 1800 + m + G + 10 * den + 100 * acc);
                    for (size_t i = 0; i < sizeof codes; i++) codes[i] = (uint8_t)kvqi_rng_next(&r);
                    for (size_t t = 0; t < N; t++) {
                        uint16_t a = kvqi_fp32_to_fp16(0.5f + 0.02f * (float)t), b = kvqi_fp32_to_fp16(0.7f);
                        memcpy(codes + t * L.code_size, &a, 2);
                        memcpy(codes + t * L.code_size + 2, &b, 2);
                    }
                    int8_t z8[6 * 256];
                    float zf[6 * 256], zsc[6], zsum[6], lut[256 / 8 * 256 * 6];
                    int32_t zs8[6];
                    for (uint32_t h = 0; h < G; h++) {
                        zs8[h] = 0;
                        zsum[h] = 0.0f;
                        zsc[h] = 0.01f * (float)(h + 1);
                        for (uint32_t i = 0; i < m; i++) {
                            z8[h * m + i] = (int8_t)((int)(kvqi_rng_next(&r) % 255) - 127);
                            zs8[h] += z8[h * m + i];
                            zf[h * m + i] = (float)z8[h * m + i] * zsc[h];
                            zsum[h] += zf[h * m + i];
                        }
                        kvqi_cache_sign_lut(zf + h * m, m, lut + (size_t)h * (m / 8) * 256);
                    }
                    float s_ref[6 * 64], s_got[6 * 64], s_flt[6 * 64];
                    for (size_t i = 0; i < 6 * 64; i++) s_ref[i] = s_got[i] = s_flt[i] = (float)i * 0.01f;
                    kvqi_cache_score_signs_i8_ref(&L, z8, zsc, zs8, G, codes, N, acc, s_ref, 64);
                    K->score_signs_i8(&L, z8, zsc, zs8, G, codes, N, acc, s_got, 64);
                    CHECKF(memcmp(s_ref, s_got, sizeof s_ref) == 0, "score_signs_i8 m %u den %d acc %d G %u",
                           m, den, acc, G);
                    kvqi_cache_kernels_scalar.score_signs(&L, lut, zsum, G, codes, N, acc, s_flt, 64);
                    for (uint32_t h = 0; h < G; h++)
                        for (size_t t = 0; t < N; t++)
                            CHECK_NEAR(s_ref[h * 64 + t], s_flt[h * 64 + t], 1e-3 * (fabs(s_flt[h * 64 + t]) + 1.0));
                }
}

/* The sign keys' fused path scores like the quantizer's own estimator: kvq_score and the
 * kernels (projection and rotation read back by the cache, the query's table) agree
 * within 1e-4 of the largest score, for qjl, 1-bit rabitq and turboquant_prod. */
TEST(cache_sign_paths_match_kvq_score) {
    enum { N = 50 };
    static const char *specs[] = {"qjl", "qjl:proj_dim=96", "rabitq:bits=1", "prod:bits=2",
                                  "prod:bits=3", "prod:bits=5"};
    static const uint32_t dims[] = {64, 128};
    for (size_t di = 0; di < 2; di++)
        for (size_t si = 0; si < sizeof specs / sizeof specs[0]; si++) {
            uint32_t dim = dims[di];
            kvq_cache *c;
            REQUIRE_OK(make_cache(specs[si], "fp16", 1, dim, 0, 0, 64, &c));
            const kvqi_side *K = &c->key;
            CHECKF(K->path == KVQI_PATH_SIGNS, "%s d=%u: path %d", specs[si], dim, (int)K->path);
            if (K->path != KVQI_PATH_SIGNS) {
                kvq_cache_free(c);
                continue;
            }
            uint32_t m = K->signs.m;
            float *x = make_kv(N + 1, 1, dim, 600 + si, 1, 4.0f);
            uint8_t *codes = malloc(N * K->code_size);
            float *ref = malloc(N * sizeof(float)), *got = malloc(N * sizeof(float));
            float *z = malloc(m * sizeof(float)), *lut = malloc(m / 8 * 256 * sizeof(float));
            float *ql = calloc(dim, sizeof(float));
            REQUIRE(x && codes && ref && got && z && lut && ql);
            const float *q = x + (size_t)N * dim;
            REQUIRE_OK(kvq_encode(K->quant, x, N, codes));
            REQUIRE_OK(kvq_score(K->quant, q, codes, N, ref));
            float zsum = 0.0f;
            for (uint32_t i = 0; i < m; i++) {
                double a = 0.0;
                for (uint32_t j = 0; j < dim; j++) a += (double)K->proj[(size_t)i * dim + j] * q[j];
                zsum += (z[i] = (float)a);
            }
            kvqi_cache_sign_lut(z, m, lut);
            if (K->signs_mse) {
                c->kern->score_f32(q, 1, dim, (const uint8_t *)K->rotation, dim * sizeof(float), dim, ql, dim);
                c->kern->score_rot(&K->rot, ql, 1, codes, N, got, N);
            }
            c->kern->score_signs(&K->signs, lut, &zsum, 1, codes, N, K->signs_mse, got, N);
            float amax = 0.0f;
            for (size_t t = 0; t < N; t++) amax = fmaxf(amax, fabsf(ref[t]));
            double worst = 0.0;
            for (size_t t = 0; t < N; t++) worst = fmax(worst, fabs((double)got[t] - ref[t]) / amax);
            CHECKF(worst <= 1e-4, "%s d=%u: fused vs kvq_score %.3g of the largest score",
                   specs[si], dim, worst);
            free(x), free(codes), free(ref), free(got), free(z), free(lut), free(ql);
            kvq_cache_free(c);
        }
}

/* Attention sinks: with every token a sink the output is exact fp32 attention whatever
 * the codes (1-bit here), prefill and decode, with and without split-K; a sink that
 * carries most of the attention is what the coarse codes got wrong, so keeping it exact
 * lowers the error; the exact copies are counted; more than 1024 sinks are refused. */
TEST(cache_sink_tokens_exact) {
    const uint32_t n_kv = 3, H = 9, dim = 64;
    const size_t n = 200, nq = 3;
    float *k = make_kv(n, n_kv, dim, 111, 0, 1), *v = make_kv(n, n_kv, dim, 112, 0, 1);
    float *q = make_kv(nq, H, dim, 113, 0, 1);
    float *ref = malloc(nq * H * dim * sizeof(float)), *out = malloc(nq * H * dim * sizeof(float));
    REQUIRE(k && v && q && ref && out);
    round_fp16(k, n * n_kv * dim);
    round_fp16(v, n * n_kv * dim);
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, nq, 0.125f, ref);
    kvq_threadpool *pool;
    REQUIRE_OK(kvq_threadpool_create(4, &pool));
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_init(&cfg, n_kv, dim, "mse:bits=1", "mse:bits=1", NULL, 0));
    cfg.n_sink = (uint32_t)n;
    cfg.chunk_tokens = 64;
    kvq_cache *c;
    REQUIRE_OK(kvq_cache_create(&cfg, &c));
    REQUIRE_OK(kvq_cache_append(c, k, v, n));
    REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.125f, NULL, out));
    CHECKF(rel_err(out, ref, nq * H * dim) < 1e-5, "all sinks, prefill: %.3g", rel_err(out, ref, nq * H * dim));
    REQUIRE_OK(kvq_cache_attend(c, q + (nq - 1) * H * dim, H, 1, 0.125f, pool, out));
    double e = rel_err(out, ref + (nq - 1) * H * dim, H * dim);
    CHECKF(e < 1e-5, "all sinks, split-K decode: %.3g", e);
    kvq_cache_memory_info mem;
    REQUIRE_OK(kvq_cache_memory(c, &mem));
    CHECK(mem.window == (uint64_t)2 * n * n_kv * dim * sizeof(uint16_t));
    kvq_cache_free(c);

    /* token 0 a strong sink for every query head */
    for (uint32_t g = 0; g < n_kv; g++)
        for (uint32_t j = 0; j < dim; j++) k[g * dim + j] = 0.0f;
    for (size_t i = 0; i < nq; i++)
        for (uint32_t h = 0; h < H; h++)
            for (uint32_t j = 0; j < dim; j++)
                k[(h / 3) * dim + j] += 2.0f * q[(i * H + h) * dim + j];
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, nq, 0.125f, ref);
    double err[2];
    for (int with = 0; with < 2; with++) {
        cfg.n_sink = with ? 1 : 0;
        REQUIRE_OK(kvq_cache_create(&cfg, &c));
        REQUIRE_OK(kvq_cache_append(c, k, v, n));
        REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.125f, NULL, out));
        err[with] = rel_err(out, ref, nq * H * dim);
        kvq_cache_free(c);
    }
    CHECKF(err[1] < 0.5 * err[0], "one exact sink: %.3g, none: %.3g", err[1], err[0]);
    cfg.n_sink = 1025;
    CHECK_STATUS(kvq_cache_create(&cfg, &c), KVQ_ERR_UNSUPPORTED);
    kvq_threadpool_free(pool);
    free(k), free(v), free(q), free(ref), free(out);
}

/* Keys with a large constant offset on a few channels (the persistent bias of real keys):
 * subtracting the mean key leaves the softmax unchanged and the codes only the spread. */
TEST(cache_centered_keys_cut_error) {
    const uint32_t n_kv = 2, H = 6, dim = 64;
    const size_t n = 400, nq = 3;
    float *k = make_kv(n, n_kv, dim, 211, 0, 1), *v = make_kv(n, n_kv, dim, 212, 0, 1);
    float *q = make_kv(nq, H, dim, 213, 0, 1);
    float *ref = malloc(nq * H * dim * sizeof(float)), *out = malloc(nq * H * dim * sizeof(float));
    REQUIRE(k && v && q && ref && out);
    for (size_t i = 0; i < n * n_kv; i++)
        for (uint32_t j = 0; j < 4; j++) k[i * dim + j] += 8.0f;
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, nq, 0.125f, ref);
    double err[2];
    for (int center = 0; center < 2; center++) {
        kvq_cache_config cfg;
        REQUIRE_OK(kvq_cache_config_parse(center ? "mse:bits=3+fp16@center=1" : "mse:bits=3+fp16",
                                          n_kv, dim, &cfg, NULL, 0));
        CHECK(cfg.center_keys == (uint32_t)center);
        kvq_cache *c;
        REQUIRE_OK(kvq_cache_create(&cfg, &c));
        /* appended in pieces across the probe: the choice cannot depend on the split */
        REQUIRE_OK(kvq_cache_append(c, k, v, 5));
        REQUIRE_OK(kvq_cache_append(c, k + 5 * n_kv * dim, v + 5 * n_kv * dim, n - 5));
        REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.125f, NULL, out));
        err[center] = rel_err(out, ref, nq * H * dim);
        kvq_cache_memory_info m;
        REQUIRE_OK(kvq_cache_memory(c, &m));
        CHECK(m.total == m.key_codes + m.value_codes + m.window + m.outliers + m.shared + m.overhead);
        kvq_cache_free(c);
    }
    CHECKF(err[1] < 0.5 * err[0], "centered %.4g, plain %.4g", err[1], err[0]);
    /* exact keys: centering changes nothing but rounding */
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_parse("fp16@center=1", n_kv, dim, &cfg, NULL, 0));
    kvq_cache *c;
    REQUIRE_OK(kvq_cache_create(&cfg, &c));
    REQUIRE_OK(kvq_cache_append(c, k, v, n));
    REQUIRE_OK(kvq_cache_attend(c, q, H, nq, 0.125f, NULL, out));
    CHECKF(rel_err(out, ref, nq * H * dim) < 2e-3, "fp16 centered: %.3g", rel_err(out, ref, nq * H * dim));
    kvq_cache_free(c);
    free(k), free(v), free(q), free(ref), free(out);
}

TEST(cache_spec_strings_and_presets) {
    kvq_cache_config cfg;
    char msg[200];
    REQUIRE_OK(kvq_cache_config_parse("mse:bits=4+q8_0@window=16,sink=2,outliers=1,center=1", 3, 64,
                                      &cfg, msg, sizeof msg));
    CHECK(cfg.key.method == KVQ_METHOD_TURBOQUANT_MSE && cfg.key.bits == 4);
    CHECK(cfg.value.method == KVQ_METHOD_Q8_0);
    CHECK(cfg.window == 16 && cfg.n_sink == 2 && cfg.n_outliers == 1 && cfg.center_keys == 1);
    REQUIRE_OK(kvq_cache_config_parse("q8_0", 3, 64, &cfg, NULL, 0));
    CHECK(cfg.key.method == KVQ_METHOD_Q8_0 && cfg.value.method == KVQ_METHOD_Q8_0);
    /* every preset parses, creates, and says what it is */
    size_t n = 0;
    for (const kvq_cache_preset *p; (p = kvq_cache_preset_at(n)); n++) {
        CHECK(kvq_cache_preset_get(p->name) == p);
        CHECK(!strcmp(kvq_cache_preset_name(n), p->name));
        CHECK(p->bits > 0 && p->summary && p->summary[0]);
        REQUIRE_OK(kvq_cache_config_parse(p->name, 3, 64, &cfg, NULL, 0));
        kvq_cache *c;
        REQUIRE_OK(kvq_cache_create(&cfg, &c));
        kvq_cache_free(c);
        char with[64];
        snprintf(with, sizeof with, "%s@window=8", p->name);
        REQUIRE_OK(kvq_cache_config_parse(with, 3, 64, &cfg, NULL, 0));
        CHECK(cfg.window == 8);
    }
    CHECK(n >= 3);
    CHECK(kvq_cache_preset_name(n) == NULL);
    const char *bad[] = {"q4@window=-1", "q4@window=0x10", "q4@window=", "q4@frob=1", "q4@window",
                         "q4@center=2", "q9", "mse:bits=4+"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msg[0] = 0;
        CHECKF(kvq_cache_config_parse(bad[i], 3, 64, &cfg, msg, sizeof msg) != KVQ_OK, "%s accepted", bad[i]);
        CHECKF(msg[0] != 0, "%s: no message", bad[i]);
    }
    CHECK_STATUS(kvq_cache_config_preset(&cfg, "nope", 3, 64, msg, sizeof msg), KVQ_ERR_PARSE);
}

/* A window far beyond the context costs only the tokens held: the ring grows with the
 * context (a window of UINT32_MAX once asked for terabytes up front). */
TEST(cache_window_grows_with_the_context) {
    const uint32_t n_kv = 2, H = 4, dim = 64;
    const size_t n = 100;
    float *k = make_kv(n, n_kv, dim, 311, 0, 1), *v = make_kv(n, n_kv, dim, 312, 0, 1);
    float *q = make_kv(1, H, dim, 313, 0, 1), *ref = malloc(H * dim * sizeof(float)), *out = malloc(H * dim * sizeof(float));
    REQUIRE(k && v && q && ref && out);
    round_fp16(k, n * n_kv * dim);
    round_fp16(v, n * n_kv * dim);
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_init(&cfg, n_kv, dim, "mse:bits=2", "mse:bits=2", NULL, 0));
    cfg.window = UINT32_MAX;
    kvq_cache *c;
    REQUIRE_OK(kvq_cache_create(&cfg, &c));
    kvq_cache_memory_info m;
    REQUIRE_OK(kvq_cache_memory(c, &m));
    CHECKF(m.total < (1u << 20), "empty cache holds %llu bytes", (unsigned long long)m.total);
    for (size_t t = 0; t < n; t += 10) REQUIRE_OK(kvq_cache_append(c, k + t * n_kv * dim, v + t * n_kv * dim, 10));
    REQUIRE_OK(kvq_cache_memory(c, &m));
    /* every token still in the window: fp16, no codes, the ring grown 16 slots at a time
     * (by a quarter past 256): 16, 32, ..., 112 slots for appends of 10 */
    CHECK(m.key_codes == 0 && m.value_codes == 0);
    CHECK(m.window == (uint64_t)2 * 112 * n_kv * dim * sizeof(uint16_t));
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, 1, 0.125f, ref);
    REQUIRE_OK(kvq_cache_attend(c, q, H, 1, 0.125f, NULL, out));
    CHECKF(rel_err(out, ref, H * dim) < 1e-5, "all in the window: %.3g", rel_err(out, ref, H * dim));
    uint64_t fit = 0;
    cfg.window = 64;
    REQUIRE_OK(kvq_cache_tokens_fit(&cfg, 1, 1u << 20, &fit));
    CHECK(fit > 64);
    kvq_cache_free(c);
    free(k), free(v), free(q), free(ref), free(out);
}

/* A sliding-window cache: each query sees only the last SW positions, in one thread and
 * split-K alike, and the cache frees the chunks no later query can see. */
TEST(cache_sliding_window) {
    const uint32_t n_kv = 1, H = 4, dim = 64, SW = 37;
    const size_t n = 300;
    float *k = make_kv(n, n_kv, dim, 411, 0, 1), *v = make_kv(n, n_kv, dim, 412, 0, 1);
    float *q = make_kv(n, H, dim, 413, 0, 1);
    float *ref = malloc(8 * H * dim * sizeof(float)), *out = malloc(8 * H * dim * sizeof(float));
    REQUIRE(k && v && q && ref && out);
    round_fp16(k, n * n_kv * dim);
    round_fp16(v, n * n_kv * dim);
    kvq_threadpool *pool;
    REQUIRE_OK(kvq_threadpool_create(3, &pool));
    static const char *specs[] = {"fp16@sink=2,window=5", "mse:bits=4@center=1"};
    for (size_t sp = 0; sp < 2; sp++) {
        kvq_cache_config cfg;
        REQUIRE_OK(kvq_cache_config_parse(specs[sp], n_kv, dim, &cfg, NULL, 0));
        cfg.sliding_window = SW;
        cfg.chunk_tokens = 16;
        kvq_cache *c;
        REQUIRE_OK(kvq_cache_create(&cfg, &c));
        size_t have = 0;
        double worst = 0;
        while (have < n) {
            size_t nb = KVQI_MIN((size_t)(have % 3 ? 7 : 8), n - have);
            REQUIRE_OK(kvq_cache_append(c, k + have * n_kv * dim, v + have * n_kv * dim, nb));
            have += nb;
            REQUIRE_OK(kvq_cache_attend(c, q + (have - nb) * H * dim, H, nb, 0.125f, have % 2 ? pool : NULL, out));
            /* reference: each query over its own last SW positions */
            for (size_t i = 0; i < nb; i++) {
                size_t p = have - nb + i, lo = p + 1 > SW ? p + 1 - SW : 0;
                kvqt_ref_attend(q + p * H * dim, k + lo * n_kv * dim, v + lo * n_kv * dim, p + 1 - lo, n_kv, H, dim,
                           1, 0.125f, ref + i * H * dim);
            }
            double e = rel_err(out, ref, nb * H * dim);
            if (e > worst) worst = e;
        }
        CHECKF(worst < (sp ? 0.2 : 1e-5), "%s: worst relative error %.3g", specs[sp], worst);
        kvq_cache_memory_info m;
        REQUIRE_OK(kvq_cache_memory(c, &m));
        size_t len;
        REQUIRE_OK(kvq_cache_length(c, &len));
        CHECK(len == n);
        /* held: at most the window, one batch and a chunk of codes, not the 300 tokens */
        uint64_t per = (uint64_t)c->key.code_size * n_kv;
        CHECKF(m.key_codes <= (SW + 8 + 16) * per, "%s: %llu bytes of key codes", specs[sp],
               (unsigned long long)m.key_codes);
        CHECK(m.total == m.key_codes + m.value_codes + m.window + m.outliers + m.shared + m.overhead);
        /* attend may only serve the last append's queries */
        CHECK_STATUS(kvq_cache_attend(c, q, H, 20, 0.125f, NULL, out), KVQ_ERR_INVALID_ARG);
        kvq_cache_free(c);
    }
    kvq_threadpool_free(pool);
    free(k), free(v), free(q), free(ref), free(out);
}

/* The arena in slabs: one head's codes run on across the chunks of a slab (each chunk's
 * block right after the previous one's), slabs grow with the context up to 1024 tokens,
 * the bytes held stay within a sixteenth of the codes plus one chunk, and a sliding
 * window's cache holds a bounded number of chunks however long it runs. */
TEST(cache_slabs_contiguous_and_bounded) {
    const uint32_t n_kv = 2, dim = 64, C = 64;
    float *k = malloc(100 * n_kv * dim * sizeof(float)), *v = malloc(100 * n_kv * dim * sizeof(float));
    REQUIRE(k && v);
    for (size_t i = 0; i < 100 * n_kv * dim; i++) k[i] = v[i] = (float)((i * 7919) % 101) / 50.0f - 1.0f;
    for (int sliding = 0; sliding < 2; sliding++) {
        kvq_cache_config cfg;
        REQUIRE_OK(kvq_cache_config_init(&cfg, n_kv, dim, "mse:bits=4", "q8_0", NULL, 0));
        cfg.chunk_tokens = C;
        cfg.sliding_window = sliding ? 4096 : 0;
        kvq_cache *c;
        REQUIRE_OK(kvq_cache_create(&cfg, &c));
        size_t max_span = 1024 / C;
        for (size_t n = 0; n < 40000; n += 100) {
            REQUIRE_OK(kvq_cache_append(c, k, v, 100));
            uint64_t codes = (uint64_t)(c->n_coded - KVQI_MIN(c->n_coded, c->first_chunk * C)) * n_kv *
                             (c->key.code_size + c->value.code_size);
            if (sliding)
                /* what the append's first token sees, its 100 tokens, partial chunks at both
                 * ends and one chunk of a slab not yet wholly left */
                CHECKF(c->arena_bytes <= ((4096 + 100) / C + 3 + max_span) * (uint64_t)c->chunk_bytes,
                       "%zu tokens: %llu bytes of slabs",
                       n + 100, (unsigned long long)c->arena_bytes);
            else
                CHECKF(c->arena_bytes <= codes + codes / 16 + c->chunk_bytes, "%zu tokens: %llu of slabs for %llu",
                       n + 100, (unsigned long long)c->arena_bytes, (unsigned long long)codes);
        }
        max_span = 0;
        for (size_t ci = c->first_chunk; ci + 1 < c->n_chunks; ci++) {
            const kvqi_chunk *h = &c->chunks[ci];
            if (h->span > max_span) max_span = h->span;
            if (h->index + 1 == h->span) continue;
            for (uint32_t g = 0; g < n_kv; g++) {
                CHECK(kvqi_chunk_keys(c, ci + 1, g) == kvqi_chunk_keys(c, ci, g) + C * c->key.code_size);
                CHECK(kvqi_chunk_values(c, ci + 1, g) == kvqi_chunk_values(c, ci, g) + C * c->value.code_size);
            }
        }
        /* long contexts get slabs of 1024 tokens; a 4096-token window's live chunks (about
         * 66) slabs of 4 */
        CHECKF(max_span == (sliding ? 4 : 1024 / C), "sliding %d: largest slab %zu chunks", sliding, max_span);
        kvq_cache_free(c);
    }
    free(k), free(v);
}

/* The layers of a cache set hold one copy of a dense rotation they read back alike: the
 * first layer owns it, the others borrow it (not counted), and each attends exactly as a
 * cache made alone; a layer of another rotation keeps its own. (Randomized Hadamard
 * rotations hold no matrix: attend applies the quantizer's transform.) */
TEST(cache_set_layers_share_rotations) {
    const uint32_t n_kv = 2, dim = 64, H = 4, L = 4;
    kvq_cache_config cfg[4];
    for (uint32_t l = 0; l < L; l++)
        REQUIRE_OK(kvq_cache_config_parse(l == 3 ? "mse:bits=4,seed=7,rotate=dense" : l == 2 ? "q4" : "mse:bits=4,rotate=dense",
                                          n_kv, dim, &cfg[l], NULL, 0));
    kvq_cache_set *set;
    REQUIRE_OK(kvq_cache_set_create(L, cfg, &set));
    kvq_cache *alone[4];
    for (uint32_t l = 0; l < L; l++) REQUIRE_OK(kvq_cache_create(&cfg[l], &alone[l]));
    size_t n = 300;
    float *k = malloc(n * n_kv * dim * sizeof(float)), *v = malloc(n * n_kv * dim * sizeof(float));
    float q[4 * 64], o1[4 * 64], o2[4 * 64];
    REQUIRE(k && v);
    kvqi_rng r;
    kvqi_rng_seed(&r, 77);
    for (size_t i = 0; i < n * n_kv * dim; i++) k[i] = (float)kvqi_rng_normal(&r), v[i] = (float)kvqi_rng_normal(&r);
    for (uint32_t i = 0; i < H * dim; i++) q[i] = (float)kvqi_rng_normal(&r);
    uint64_t shared_alone = 0;
    kvq_cache *first;
    REQUIRE_OK(kvq_cache_set_layer(set, 0, &first));
    for (uint32_t l = 0; l < L; l++) {
        kvq_cache *c;
        REQUIRE_OK(kvq_cache_set_layer(set, l, &c));
        REQUIRE_OK(kvq_cache_append(c, k, v, n));
        REQUIRE_OK(kvq_cache_append(alone[l], k, v, n));
        REQUIRE_OK(kvq_cache_attend(c, q, H, 1, 0.125f, NULL, o1));
        REQUIRE_OK(kvq_cache_attend(alone[l], q, H, 1, 0.125f, NULL, o2));
        CHECKF(memcmp(o1, o2, sizeof o1) == 0, "layer %u attends differently in the set", l);
        kvq_cache_memory_info m;
        REQUIRE_OK(kvq_cache_memory(alone[l], &m));
        shared_alone += m.shared;
        /* layer 1 reads back layer 0's matrices: borrowed; layer 3 (another seed) its own */
        if (l == 1) CHECK(c->key.rotation_borrowed && c->key.rotation == first->key.rotation);
        if (l == 3) CHECK(!c->key.rotation_borrowed);
        /* and within a cache, values read back as the keys' rotation use the keys' copy */
        if (l == 0) CHECK(c->value.rotation_borrowed && c->value.rotation == c->key.rotation);
    }
    kvq_cache_memory_info all;
    REQUIRE_OK(kvq_cache_set_memory(set, &all));
    /* one 64 x 64 fp32 matrix less: layer 1's */
    CHECKF(all.shared + 64 * 64 * 4 <= shared_alone, "set %llu, alone %llu", (unsigned long long)all.shared,
           (unsigned long long)shared_alone);
    for (uint32_t l = 0; l < L; l++) kvq_cache_free(alone[l]);
    kvq_cache_set_free(set);
    free(k), free(v);
}
