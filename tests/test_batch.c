/*
 * test_batch.c - kvq_batch_decode: contexts of different lengths and cache configs
 * decoded together give, row for row, the logits that kvq_context_eval gives each alone
 * (bit for bit), leave each context where decoding alone would, and bad arguments are
 * refused before anything changes. On the tiny Llama and Gemma models in tests/data,
 * and on the real ones when models/ has them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvq.h"
#include "test.h"

#define N_SEQ 4

/* Context i's cache: exact float KV, fp16, the q4 preset, q4 again with 2 threads. */
static kvq_status make_ctx(const kvq_model *m, const kvq_model_info *I, int kind, uint32_t n_ctx, kvq_context **out) {
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = n_ctx;
    p.n_batch = 64;
    p.n_threads = kind == 3 ? 2 : 1;
    kvq_cache_config cfg;
    kvq_status st = KVQ_OK;
    if (kind == 1) st = kvq_cache_config_parse("fp16", I->n_kv_heads, I->head_dim, &cfg, NULL, 0);
    else if (kind >= 2) st = kvq_cache_config_preset(&cfg, "q4", I->n_kv_heads, I->head_dim, NULL, 0);
    if (st) return st;
    if (kind > 0) {
        p.cache = &cfg;
        p.n_cache_configs = 1;
    }
    return kvq_context_create(m, &p, out);
}

static int32_t argmax(const float *l, uint32_t n) {
    int32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = (int32_t)i;
    return b;
}

/* Twin contexts: a[i] decoded in batches, b[i] alone; prompts of different lengths
 * (past the tiny Gemma's 5-token sliding window), then steps with all four, with a
 * subset in another order (one leaves, later joins), and a last token alone on both. */

static void check_batch_equals_alone(kvqt_ctx *kvqt_, const char *path, unsigned batch_threads) {
#ifdef KVQT_SANITIZED
    if (strncmp(path, "models/", 7) == 0) {
        SKIP("the real models run in the optimized build only (the tiny ones cover the sanitizers)");
        return;
    }
#endif
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        SKIP("models/ lacks the model");
        return;
    }
    fclose(probe);
    kvq_model *m = NULL;
    REQUIRE_OK(kvq_model_load(path, &m, NULL, 0));
    kvq_model_info I;
    REQUIRE_OK(kvq_model_get_info(m, &I));
    const uint32_t V = I.n_vocab;
    kvq_context *a[N_SEQ] = {0}, *b[N_SEQ] = {0};
    kvq_batch *bt = NULL;
    float *la = malloc((size_t)N_SEQ * V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    int32_t next[N_SEQ];
    static const size_t prompt_len[N_SEQ] = {3, 9, 17, 30};
    REQUIRE(la && lb);
    for (int i = 0; i < N_SEQ; i++) {
        REQUIRE_OK(make_ctx(m, &I, i, 128, &a[i]));
        REQUIRE_OK(make_ctx(m, &I, i, 128, &b[i]));
        int32_t prompt[30];
        for (size_t t = 0; t < prompt_len[i]; t++) prompt[t] = (int32_t)((7 + 13 * t + 101 * (size_t)i) % V);
        REQUIRE_OK(kvq_context_eval(a[i], prompt, prompt_len[i], la, 0));
        REQUIRE_OK(kvq_context_eval(b[i], prompt, prompt_len[i], lb, 0));
        CHECK(memcmp(la, lb, V * sizeof(float)) == 0);
        next[i] = argmax(lb, V);
    }
    kvq_batch_params bp;
    kvq_batch_params_init(&bp);
    bp.n_threads = batch_threads;
    REQUIRE_OK(kvq_batch_create(m, N_SEQ, &bp, &bt));
    /* steps: all four; three in another order (1 leaves); all four; 2 and 0 */
    static const int order[4][N_SEQ] = {{0, 1, 2, 3}, {3, 0, 2, -1}, {2, 3, 1, 0}, {2, 0, -1, -1}};
    size_t mismatches = 0, rows = 0;
    for (int s = 0; s < 4; s++) {
        kvq_context *cs[N_SEQ];
        int32_t toks[N_SEQ];
        size_t n = 0;
        for (int k = 0; k < N_SEQ && order[s][k] >= 0; k++, n++) {
            cs[n] = a[order[s][k]];
            toks[n] = next[order[s][k]];
        }
        REQUIRE_OK(kvq_batch_decode(bt, cs, toks, n, la));
        for (size_t k = 0; k < n; k++) {
            int i = order[s][k];
            REQUIRE_OK(kvq_context_eval(b[i], &toks[k], 1, lb, 0));
            rows++;
            if (memcmp(la + k * V, lb, V * sizeof(float))) mismatches++;
            /* greedy continuation, with a turn every other step so the rows differ */
            next[i] = (argmax(lb, V) + (int32_t)(s & 1) * 5) % (int32_t)V;
        }
    }
    CHECKF(mismatches == 0, "%zu of %zu batched rows differ from decoding alone", mismatches, rows);
    /* the states afterwards: same lengths, same next logits decoding alone */
    for (int i = 0; i < N_SEQ; i++) {
        size_t na = 0, nb = 0;
        CHECK_OK(kvq_context_length(a[i], &na));
        CHECK_OK(kvq_context_length(b[i], &nb));
        CHECK(na == nb && na > prompt_len[i]);
        CHECK_OK(kvq_context_eval(a[i], &next[i], 1, la, 0));
        CHECK_OK(kvq_context_eval(b[i], &next[i], 1, lb, 0));
        CHECK(memcmp(la, lb, V * sizeof(float)) == 0);
        CHECK(argmax(la, V) == argmax(lb, V));
    }
    kvq_batch_free(bt);
    for (int i = 0; i < N_SEQ; i++) {
        kvq_context_free(a[i]);
        kvq_context_free(b[i]);
    }
    free(la);
    free(lb);
    kvq_model_free(m);
}

TEST(batch_tiny_llama_equals_alone) { check_batch_equals_alone(kvqt_, "tests/data/tiny-llama.gguf", 1); }
TEST(batch_tiny_gemma_equals_alone) { check_batch_equals_alone(kvqt_, "tests/data/tiny-gemma.gguf", 2); }
TEST(batch_smollm2_equals_alone) { check_batch_equals_alone(kvqt_, "models/SmolLM2-135M-Instruct.Q4_1.gguf", 2); }
TEST(batch_gemma3_equals_alone) { check_batch_equals_alone(kvqt_, "models/gemma-3-270m-q4_k_m.gguf", 1); }

/* float_activations: the float row kernels group tokens; a batch must not. */
TEST(batch_float_activations_equal_alone) {
    kvq_model *m = NULL;
    REQUIRE_OK(kvq_model_load("tests/data/tiny-llama.gguf", &m, NULL, 0));
    kvq_model_info I;
    REQUIRE_OK(kvq_model_get_info(m, &I));
    const uint32_t V = I.n_vocab;
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 64;
    p.n_threads = 1;
    p.float_activations = 1;
    kvq_context *a[5] = {0}, *b[5] = {0};
    int32_t toks[5];
    for (int i = 0; i < 5; i++) {
        REQUIRE_OK(kvq_context_create(m, &p, &a[i]));
        REQUIRE_OK(kvq_context_create(m, &p, &b[i]));
        int32_t pr[6] = {5, 6, 7, 8, 9, 10};
        pr[0] = (int32_t)(11 * i + 3);
        REQUIRE_OK(kvq_context_eval(a[i], pr, (size_t)i + 1, NULL, 0));
        REQUIRE_OK(kvq_context_eval(b[i], pr, (size_t)i + 1, NULL, 0));
        toks[i] = (int32_t)((40 + 17 * i) % (int)V);
    }
    kvq_batch_params bp;
    kvq_batch_params_init(&bp);
    bp.n_threads = 1;
    bp.float_activations = 1;
    kvq_batch *bt = NULL;
    REQUIRE_OK(kvq_batch_create(m, 5, &bp, &bt));
    float *la = malloc((size_t)5 * V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    REQUIRE(la && lb);
    REQUIRE_OK(kvq_batch_decode(bt, a, toks, 5, la));
    for (int i = 0; i < 5; i++) {
        REQUIRE_OK(kvq_context_eval(b[i], &toks[i], 1, lb, 0));
        CHECKF(memcmp(la + (size_t)i * V, lb, V * sizeof(float)) == 0, "row %d differs", i);
    }
    /* an int8 context cannot join a float batch */
    kvq_context *c8 = NULL;
    p.float_activations = 0;
    REQUIRE_OK(kvq_context_create(m, &p, &c8));
    kvq_context *mix[2] = {a[0], c8};
    CHECK_STATUS(kvq_batch_decode(bt, mix, toks, 2, la), KVQ_ERR_MISMATCH);
    kvq_context_free(c8);
    kvq_batch_free(bt);
    for (int i = 0; i < 5; i++) {
        kvq_context_free(a[i]);
        kvq_context_free(b[i]);
    }
    free(la);
    free(lb);
    kvq_model_free(m);
}

TEST(batch_rejects_bad_arguments) {
    kvq_model *m = NULL, *m2 = NULL;
    REQUIRE_OK(kvq_model_load("tests/data/tiny-llama.gguf", &m, NULL, 0));
    REQUIRE_OK(kvq_model_load("tests/data/tiny-llama.gguf", &m2, NULL, 0)); /* same file, another model */
    kvq_model_info I;
    REQUIRE_OK(kvq_model_get_info(m, &I));
    const uint32_t V = I.n_vocab;
    kvq_batch *bt = NULL;
    CHECK_STATUS(kvq_batch_create(m, 0, NULL, &bt), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_create(NULL, 2, NULL, &bt), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_create(m, 2, NULL, NULL), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_params_init(NULL), KVQ_ERR_INVALID_ARG);
    kvq_batch_free(NULL);
    kvq_batch_params bp;
    kvq_batch_params_init(&bp);
    bp.n_threads = 1;
    REQUIRE_OK(kvq_batch_create(m, 2, &bp, &bt));
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 8;
    p.n_threads = 1;
    kvq_context *c0 = NULL, *c1 = NULL, *c2 = NULL, *other = NULL, *full = NULL;
    REQUIRE_OK(kvq_context_create(m, &p, &c0));
    REQUIRE_OK(kvq_context_create(m, &p, &c1));
    REQUIRE_OK(kvq_context_create(m, &p, &c2));
    REQUIRE_OK(kvq_context_create(m2, &p, &other));
    REQUIRE_OK(kvq_context_create(m, &p, &full));
    int32_t eight[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    REQUIRE_OK(kvq_context_eval(full, eight, 8, NULL, 0));
    REQUIRE_OK(kvq_context_eval(c0, eight, 2, NULL, 0));
    float *l = malloc((size_t)3 * V * sizeof(float));
    REQUIRE(l);
    int32_t ok[3] = {3, 4, 5};
    kvq_context *two[2] = {c0, c1}, *three[3] = {c0, c1, c2};
    kvq_context *dup[2] = {c0, c0}, *with_null[2] = {c0, NULL};
    kvq_context *foreign[2] = {c0, other}, *with_full[2] = {c0, full};
    CHECK_STATUS(kvq_batch_decode(NULL, two, ok, 2, l), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_decode(bt, NULL, ok, 2, l), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_decode(bt, two, NULL, 2, l), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_decode(bt, two, ok, 0, l), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_decode(bt, three, ok, 3, l), KVQ_ERR_INVALID_ARG); /* above max_seqs */
    CHECK_STATUS(kvq_batch_decode(bt, dup, ok, 2, l), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_decode(bt, with_null, ok, 2, l), KVQ_ERR_INVALID_ARG);
    int32_t bad_lo[2] = {3, -1}, bad_hi[2] = {(int32_t)V, 3};
    CHECK_STATUS(kvq_batch_decode(bt, two, bad_lo, 2, l), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_decode(bt, two, bad_hi, 2, l), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_batch_decode(bt, foreign, ok, 2, l), KVQ_ERR_MISMATCH);
    CHECK_STATUS(kvq_batch_decode(bt, with_full, ok, 2, l), KVQ_ERR_CAPACITY);
    /* nothing moved: c0 still holds its 2 tokens, c1 none */
    size_t n0 = 99, n1 = 99;
    CHECK_OK(kvq_context_length(c0, &n0));
    CHECK_OK(kvq_context_length(c1, &n1));
    CHECK(n0 == 2 && n1 == 0);
    /* and a good call after the refused ones works, logits optional */
    CHECK_OK(kvq_batch_decode(bt, two, ok, 2, NULL));
    CHECK_OK(kvq_context_length(c0, &n0));
    CHECK_OK(kvq_context_length(c1, &n1));
    CHECK(n0 == 3 && n1 == 1);
    free(l);
    kvq_context_free(c0);
    kvq_context_free(c1);
    kvq_context_free(c2);
    kvq_context_free(other);
    kvq_context_free(full);
    kvq_batch_free(bt);
    kvq_model_free(m);
    kvq_model_free(m2);
}

/* Two contexts and a batch borrowing one pool (kvq_context_params.pool): the same logits,
 * bit for bit, as twins with pools of their own of the same size, prompts and batched
 * steps alike; the pool outlives a context freed before it and still serves the others. */
TEST(batch_contexts_share_one_pool) {
    kvq_model *m = NULL;
    REQUIRE_OK(kvq_model_load("tests/data/tiny-llama.gguf", &m, NULL, 0));
    kvq_model_info I;
    REQUIRE_OK(kvq_model_get_info(m, &I));
    const uint32_t V = I.n_vocab;
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_preset(&cfg, "q4", I.n_kv_heads, I.head_dim, NULL, 0));
    kvq_threadpool *pool = NULL;
    REQUIRE_OK(kvq_threadpool_create(2, &pool));
    kvq_context *sh[2] = {0}, *own[2] = {0};
    kvq_batch *bsh = NULL, *bown = NULL;
    float *la = malloc(2 * (size_t)V * sizeof(float)), *lb = malloc(2 * (size_t)V * sizeof(float));
    REQUIRE(la && lb);
    for (int i = 0; i < 2; i++) {
        kvq_context_params p;
        kvq_context_params_init(&p);
        p.n_ctx = 96;
        p.n_batch = 48;
        p.cache = &cfg;
        p.n_cache_configs = 1;
        p.n_threads = 2;
        REQUIRE_OK(kvq_context_create(m, &p, &own[i]));
        p.n_threads = 7; /* ignored: the pool decides */
        p.pool = pool;
        REQUIRE_OK(kvq_context_create(m, &p, &sh[i]));
        int32_t prompt[40];
        size_t n = 20 + 20 * (size_t)i;
        for (size_t t = 0; t < n; t++) prompt[t] = (int32_t)((3 + 11 * t + 57 * (size_t)i) % V);
        REQUIRE_OK(kvq_context_eval(sh[i], prompt, n, la, 0));
        REQUIRE_OK(kvq_context_eval(own[i], prompt, n, lb, 0));
        CHECK(memcmp(la, lb, V * sizeof(float)) == 0);
    }
    kvq_batch_params bp;
    kvq_batch_params_init(&bp);
    bp.n_threads = 2;
    REQUIRE_OK(kvq_batch_create(m, 2, &bp, &bown));
    bp.pool = pool;
    REQUIRE_OK(kvq_batch_create(m, 2, &bp, &bsh));
    int32_t tok[2] = {5, 9};
    size_t differ = 0;
    for (int s = 0; s < 6; s++) {
        REQUIRE_OK(kvq_batch_decode(bsh, sh, tok, 2, la));
        REQUIRE_OK(kvq_batch_decode(bown, own, tok, 2, lb));
        if (memcmp(la, lb, 2 * (size_t)V * sizeof(float))) differ++;
        for (int i = 0; i < 2; i++) tok[i] = (int32_t)((tok[i] * 7 + 1 + s) % (int32_t)V);
    }
    CHECKF(differ == 0, "%zu of 6 batched steps differ between a shared pool and own pools", differ);
    kvq_batch_free(bsh);
    kvq_context_free(sh[0]); /* leaves the pool to sh[1] */
    REQUIRE_OK(kvq_context_eval(sh[1], &tok[1], 1, la, 0));
    REQUIRE_OK(kvq_context_eval(own[1], &tok[1], 1, lb, 0));
    CHECK(memcmp(la, lb, V * sizeof(float)) == 0);
    CHECK(kvq_threadpool_size(pool) == 2);
    kvq_context_free(sh[1]);
    kvq_threadpool_free(pool);
    kvq_batch_free(bown);
    kvq_context_free(own[0]);
    kvq_context_free(own[1]);
    free(la);
    free(lb);
    kvq_model_free(m);
}
