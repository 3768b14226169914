/*
 * test_calib_cache.c - the calibrated methods end to end: CommVQ (arXiv 2506.18879) keys
 * in the KV cache (after-RoPE keys turned back and coded at their positions, scored at
 * the stored ones) against decode_at-then-fp32-attention, the engine filling in the
 * model's RoPE, the CLI's per-layer artifacts and RateQuant plans, and kvq bench
 * --calibrate.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_internal.h"
#include "core/core.h"
#include "quant/calib.h"
#include "test.h"

enum { D = 64, NKV = 2, NQ = 4, NTOK = 100, CHUNK = 32 };

static void gaussian(float *x, size_t n, uint64_t seed) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)kvqi_rng_normal(&r);
}

/* Keys before RoPE around 8 centres (structure a 16-word codebook learns), plus noise. */
static void prerope_keys(float *x, size_t n, uint64_t seed) {
    float centres[8 * D];
    gaussian(centres, 8 * D, 7); /* the same centres for every call: the artifact fits them */
    gaussian(x, n * D, seed);
    kvqi_rng r;
    kvqi_rng_seed(&r, seed + 2);
    for (size_t i = 0; i < n; i++) {
        const float *c = centres + (size_t)kvqi_rng_below(&r, 8) * D;
        for (uint32_t j = 0; j < D; j++) x[i * D + j] = 2.0f * c[j] + 0.1f * x[i * D + j];
    }
}

/* A fitted comm_vq artifact for the given RoPE, saved under dir. */
static kvq_status make_artifact(const char *dir, const char *rope_opts, char *path, size_t path_size,
                                kvq_config *cfg) {
    static float x[600 * D];
    char spec[256];
    snprintf(spec, sizeof spec, "comm_vq:bits=4,n_codebooks=2,%s", rope_opts);
    kvq_status st = kvq_config_parse(spec, D, cfg, NULL, 0);
    if (st != KVQ_OK) return st;
    prerope_keys(x, 600, 11);
    kvq_quantizer *q;
    if ((st = kvq_quantizer_create(cfg, &q)) != KVQ_OK) return st;
    st = kvq_quantizer_fit(q, x, 600);
    snprintf(path, path_size, "%s/cv_%s.safetensors", dir, cfg->rope_pairing ? "neox" : "inter");
    if (st == KVQ_OK) st = kvq_quantizer_save(q, path);
    kvq_quantizer_free(q);
    snprintf(cfg->artifact, sizeof cfg->artifact, "%s", path);
    return st;
}

/* fp32 causal GQA attention in double: query i of nq sits at position n - nq + i. */
static void ref_attention(const float *q, const float *k, const float *v, size_t n, size_t nq,
                          float scale, float *out) {
    double s[NTOK];
    for (size_t i = 0; i < nq; i++) {
        size_t vis = n - nq + i + 1;
        for (uint32_t h = 0; h < NQ; h++) {
            uint32_t g = h / (NQ / NKV);
            const float *qh = q + (i * NQ + h) * D;
            double m = -1e300, l = 0;
            for (size_t t = 0; t < vis; t++) {
                double d = 0;
                for (uint32_t j = 0; j < D; j++) d += (double)qh[j] * k[(t * NKV + g) * D + j];
                s[t] = d * scale;
                m = s[t] > m ? s[t] : m;
            }
            for (size_t t = 0; t < vis; t++) l += (s[t] = exp(s[t] - m));
            for (uint32_t j = 0; j < D; j++) {
                double a = 0;
                for (size_t t = 0; t < vis; t++) a += s[t] * v[(t * NKV + g) * D + j];
                out[(i * NQ + h) * D + j] = (float)(a / l);
            }
        }
    }
}

static double rel_err(const float *a, const float *b, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return m > 0 ? e / m : e;
}

TEST(calib_cache_comm_vq_attend_equals_decode_at_attention) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    static float pre[NTOK * NKV * D], post[NTOK * NKV * D], vals[NTOK * NKV * D];
    static float kref[NTOK * NKV * D], vref[NTOK * NKV * D], qs[NTOK * NQ * D];
    static float out[NTOK * NQ * D], ref[NTOK * NQ * D];
    static uint8_t codes[NTOK * NKV * 16];
    const char *ropes[] = {"rope_base=10000", "rope=neox,rope_base=500000"};
    const float scale = 1.0f / 8.0f;
    for (int r = 0; r < 2; r++) {
        char art[600];
        kvq_config kc;
        REQUIRE_OK(make_artifact(dir, ropes[r], art, sizeof art, &kc));
        kvq_quantizer *kq, *vq;
        REQUIRE_OK(kvq_quantizer_load(art, &kq));
        kvq_config fc;
        REQUIRE_OK(kvq_config_parse("fp16", D, &fc, NULL, 0));
        REQUIRE_OK(kvq_quantizer_create(&fc, &vq));
        size_t cs = kvq_code_size(kq);
        REQUIRE(cs <= 16);
        /* keys as the model hands them: RoPE at the token's position */
        prerope_keys(pre, (size_t)NTOK * NKV, 40 + r);
        gaussian(vals, (size_t)NTOK * NKV * D, 50 + r);
        gaussian(qs, (size_t)NTOK * NQ * D, 60 + r);
        for (size_t t = 0; t < NTOK; t++)
            for (uint32_t g = 0; g < NKV; g++) {
                float *x = post + (t * NKV + g) * D;
                memcpy(x, pre + (t * NKV + g) * D, D * sizeof(float));
                kvqi_rope_apply(x, D, kc.rope_pairing, kc.rope_base, (int64_t)t);
            }
        /* fp16-exact rows: the window and sinks keep fp16 copies and encode from them */
        for (size_t i = 0; i < (size_t)NTOK * NKV * D; i++) {
            post[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(post[i]));
            vals[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(vals[i]));
        }
        /* the reference: each key turned back, coded at its position, decoded there */
        for (size_t t = 0; t < NTOK; t++) {
            int32_t pos = (int32_t)t;
            for (uint32_t g = 0; g < NKV; g++) {
                float x[D];
                memcpy(x, post + (t * NKV + g) * D, sizeof x);
                kvqi_rope_apply(x, D, kc.rope_pairing, kc.rope_base, -(int64_t)t);
                uint8_t *cd = codes + (t * NKV + g) * cs;
                REQUIRE_OK(kvq_encode_at(kq, x, &pos, 1, cd));
                REQUIRE_OK(kvq_decode_at(kq, cd, &pos, 1, kref + (t * NKV + g) * D));
            }
        }
        uint8_t vcode[2 * D];
        for (size_t i = 0; i < (size_t)NTOK * NKV; i++) {
            REQUIRE_OK(kvq_encode(vq, vals + i * D, 1, vcode));
            REQUIRE_OK(kvq_decode(vq, vcode, 1, vref + i * D));
        }
        /* with and without the exact extras (window, sinks) */
        for (int extras = 0; extras < 2; extras++) {
            kvq_cache_config cfg;
            char msg[256];
            REQUIRE_OK(kvq_cache_config_init(&cfg, NKV, D, "fp16", "fp16", msg, sizeof msg));
            cfg.key = kc;
            cfg.chunk_tokens = CHUNK;
            cfg.window = extras ? 8 : 0;
            cfg.n_sink = extras ? 3 : 0;
            kvq_cache *c;
            REQUIRE_OK(kvq_cache_create(&cfg, &c));
            CHECK(c->key.path == KVQI_PATH_GENERIC);
            /* decode-style appends in uneven pieces, then a prefill-style attend of 5 */
            size_t have = 0, steps[] = {1, 30, 2, 40, 27};
            for (int s = 0; s < 5; s++) {
                REQUIRE_OK(kvq_cache_append(c, post + have * NKV * D, vals + have * NKV * D, steps[s]));
                have += steps[s];
                size_t nq = steps[s] < 5 ? steps[s] : 5;
                REQUIRE_OK(kvq_cache_attend(c, qs + (have - nq) * NQ * D, NQ, nq, scale, NULL, out));
                /* what attention should see: exact where the cache keeps tokens exact */
                static float kmix[NTOK * NKV * D], vmix[NTOK * NKV * D];
                for (size_t t = 0; t < have; t++) {
                    int exact = extras && (t < 3 || t + 8 >= have);
                    memcpy(kmix + t * NKV * D, (exact ? post : kref) + t * NKV * D, NKV * D * sizeof(float));
                    memcpy(vmix + t * NKV * D, (exact ? vals : vref) + t * NKV * D, NKV * D * sizeof(float));
                }
                ref_attention(qs + (have - nq) * NQ * D, kmix, vmix, have, nq, scale, ref);
                double e = rel_err(out, ref, nq * NQ * D);
                CHECKF(e < 1e-4, "%s extras=%d after %zu tokens: relative error %.3g", ropes[r], extras, have, e);
            }
            /* threads (split-K over the generic key path) change nothing */
            kvq_threadpool *pool;
            REQUIRE_OK(kvq_threadpool_create(3, &pool));
            static float out_mt[NTOK * NQ * D];
            REQUIRE_OK(kvq_cache_attend(c, qs + (NTOK - 1) * NQ * D, NQ, 1, scale, NULL, out));
            REQUIRE_OK(kvq_cache_attend(c, qs + (NTOK - 1) * NQ * D, NQ, 1, scale, pool, out_mt));
            CHECK(rel_err(out_mt, out, NQ * D) < 1e-5);
            kvq_threadpool_free(pool);
            /* the stored codes are the reference's, positions included, in every chunk */
            int same = 1;
            CHECK(c->n_coded == NTOK - (extras ? 8 : 0)); /* the window's tokens are not coded */
            for (size_t t = 0; t < c->n_coded; t++)
                for (uint32_t g = 0; g < NKV; g++)
                    if (memcmp(kvqi_chunk_keys(c, t / CHUNK, g) + (t % CHUNK) * cs,
                               codes + (t * NKV + g) * cs, cs))
                        same = 0;
            CHECKF(same, "%s extras=%d: cache codes differ from encode_at at the token positions", ropes[r], extras);
            /* and they carry the position: decode without one (stored) lands on the reference */
            float y[D];
            REQUIRE_OK(kvq_decode(kq, kvqi_chunk_keys(c, NTOK / CHUNK - 1, 1) + 3 * cs, 1, y));
            CHECK(rel_err(y, kref + ((size_t)((NTOK / CHUNK - 1) * CHUNK + 3) * NKV + 1) * D, D) < 1e-5);
            kvq_cache_memory_info mem;
            REQUIRE_OK(kvq_cache_memory(c, &mem));
            CHECK(mem.key_codes == (uint64_t)c->n_coded * NKV * cs);
            CHECK(mem.total == mem.key_codes + mem.value_codes + mem.window + mem.outliers + mem.shared +
                               mem.overhead);
            kvq_cache_free(c);
        }
        /* keys coded after RoPE as if at position 0 (what a position-blind cache would do)
         * are measurably worse: the check above can tell */
        {
            float blind[D], x[D];
            double num = 0, den = 0;
            for (size_t t = 50; t < NTOK; t++) {
                const float *k = post + t * NKV * D;
                REQUIRE_OK(kvq_encode(kq, k, 1, codes));
                REQUIRE_OK(kvq_decode(kq, codes, 1, blind));
                memcpy(x, kref + t * NKV * D, sizeof x);
                for (uint32_t j = 0; j < D; j++) {
                    num += ((double)blind[j] - k[j]) * ((double)blind[j] - k[j]);
                    den += ((double)x[j] - k[j]) * ((double)x[j] - k[j]);
                }
            }
            CHECKF(num > 2 * den, "%s: position-blind error %.4g not above the positional %.4g", ropes[r], num, den);
        }
        kvq_quantizer_free(kq);
        kvq_quantizer_free(vq);
    }
}

TEST(calib_cache_engine_fills_model_rope) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char art[600], msg[256];
    kvq_config kc;
    /* tiny-llama: RoPE base 10000, normal (interleaved) pairing */
    REQUIRE_OK(make_artifact(dir, "rope_base=10000", art, sizeof art, &kc));
    kvq_model *m;
    REQUIRE_OK(kvq_model_load("tests/data/tiny-llama.gguf", &m, msg, sizeof msg));
    kvq_cache_config cc;
    REQUIRE_OK(kvq_cache_config_init(&cc, 2, 64, "fp16", "fp16", msg, sizeof msg));
    cc.key = kc;
    cc.key.rope_base = 777.0f; /* wrong on purpose: the engine puts the model's in */
    cc.key.rope_pairing = KVQ_ROPE_NEOX;
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 64;
    p.n_threads = 1;
    p.cache = &cc;
    p.n_cache_configs = 1;
    kvq_context *ctx;
    REQUIRE_OK(kvq_context_create(m, &p, &ctx));
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = 3 + (i * 7) % 50;
    static float logits[40 * 512];
    kvq_model_info info;
    REQUIRE_OK(kvq_model_get_info(m, &info));
    float *lg = malloc((size_t)info.n_vocab * sizeof(float));
    REQUIRE(lg);
    REQUIRE_OK(kvq_context_eval(ctx, toks, 30, lg, 0));
    REQUIRE_OK(kvq_context_eval(ctx, toks + 30, 1, lg, 0));
    int finite = 1;
    for (uint32_t v = 0; v < info.n_vocab; v++) finite &= isfinite(lg[v]) != 0;
    CHECK(finite);
    kvq_cache_memory_info mem;
    uint64_t fp16 = 0;
    REQUIRE_OK(kvq_context_kv_memory(ctx, &mem, &fp16));
    CHECK(mem.n_tokens == 31 && mem.key_codes == (uint64_t)31 * 2 * 2 * (1 + 4));
    (void)logits;
    free(lg);
    kvq_context_free(ctx);
    kvq_model_free(m);
}

/* The CLI end to end on the tiny model: per-layer comm_vq artifacts named by a layer
 * pattern, a RateQuant plan, both through kvq perplexity and kvq generate. */
TEST(calib_cache_cli_per_layer_artifacts_and_plans) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char text[512], cmd[3000], path[600];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    FILE *f = fopen(text, "w");
    REQUIRE(f);
    for (int i = 0; i < 4; i++)
        fputs("The quick brown fox jumps over the lazy dog. A stitch in time saves nine; "
              "the early bird catches the worm, and every cloud has a silver lining. ", f);
    fclose(f);
    const char *cli = kvqt_cli_path();
    snprintf(cmd, sizeof cmd,
             "%s calibrate -m tests/data/tiny-llama.gguf -f %s --method comm_vq --bits 4 --per-layer "
             "--tokens 48 --threads 1 -o %s/cv.safetensors > /dev/null 2>&1",
             cli, text, dir);
    REQUIRE(system(cmd) == 0);
    snprintf(cmd, sizeof cmd,
             "%s calibrate -m tests/data/tiny-llama.gguf -f %s --method ratequant --key-spec mse --target 1.5 "
             "--tokens 32 --threads 1 -o %s/plan.safetensors > /dev/null 2>&1",
             cli, text, dir);
    REQUIRE(system(cmd) == 0);
    /* comm_vq's spec without RoPE options: the model's are filled in */
    snprintf(cmd, sizeof cmd,
             "%s perplexity -m tests/data/tiny-llama.gguf -f %s --ctx 32 --chunks 1 --threads 1 "
             "--configs 'fp16,comm_vq:bits=4,artifact=%s/cv.layer%%02d.safetensors+fp16' --cache-plan %s/plan.safetensors "
             "> %s/ppl.txt 2> /dev/null",
             cli, text, dir, dir, dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "grep -c '^comm_vq.* [0-9.]* *[0-9.]* *[+-][0-9.]* *[0-9.]* ' %s/ppl.txt | grep -q 1", dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "grep '^plan:' %s/ppl.txt | grep -vq failed", dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd,
             "%s generate -m tests/data/tiny-llama.gguf -p 'Once upon a time' -n 4 --threads 1 --quiet "
             "--cache-plan %s/plan.safetensors > /dev/null 2>&1",
             cli, dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd,
             "%s generate -m tests/data/tiny-llama.gguf -p 'Once upon a time' -n 4 --threads 1 --quiet "
             "--cache-k 'comm_vq:bits=4,artifact=%s/cv.layer%%02d.safetensors' > /dev/null 2>&1",
             cli, dir);
    CHECK(system(cmd) == 0);
    /* a stray pattern, and a layer whose artifact is missing, are refused */
    snprintf(cmd, sizeof cmd,
             "%s generate -m tests/data/tiny-llama.gguf -p 'Once' -n 2 --threads 1 --quiet "
             "--cache-k 'comm_vq:bits=4,artifact=%s/cv.layer%%s.safetensors' > /dev/null 2>&1",
             cli, dir);
    CHECK(system(cmd) != 0);
    snprintf(path, sizeof path, "%s/cv.layer01.safetensors", dir);
    REQUIRE(remove(path) == 0);
    snprintf(cmd, sizeof cmd,
             "%s generate -m tests/data/tiny-llama.gguf -p 'Once' -n 2 --threads 1 --quiet "
             "--cache-k 'comm_vq:bits=4,artifact=%s/cv.layer%%02d.safetensors' > /dev/null 2>&1",
             cli, dir);
    CHECK(system(cmd) != 0);
}

/* kvq bench --calibrate: the calibrated methods fitted on the first tokens, measured, and
 * their temporary artifacts removed; without it they cannot run. */
TEST(calib_cache_bench_calibrate) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char cmd[2000];
    const char *methods = "spectral:bits=3/fp16,comm_vq:bits=6,n_codebooks=2/fp16,vecinfer:bits=6/vecinfer:bits=6";
    snprintf(cmd, sizeof cmd,
             "TMPDIR=%s %s bench --tokens 64 --queries 2 --quick --json --calibrate 64 --methods '%s' "
             "> %s/out.json 2> /dev/null",
             dir, kvqt_cli_path(), methods, dir);
    REQUIRE(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "test $(grep -c '\"attn_rel_err\"' %s/out.json) = 3 && ! grep -q error %s/out.json",
             dir, dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -d %s/kvq-bench-* 2> /dev/null)\"", dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd,
             "%s bench --tokens 64 --queries 2 --quick --json --methods 'spectral:bits=3/fp16' 2> /dev/null "
             "| grep -q '\"error\"'",
             kvqt_cli_path());
    CHECK(system(cmd) == 0);
}
