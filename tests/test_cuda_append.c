/*
 * test_cuda_append.c - kvq_cuda_chan_append_n (many tokens per sequence per call) against
 * the one-token kvq_cuda_chan_append, whose codes tests/test_cuda.c holds equal to the
 * CPU's: the whole cache buffer must be the same bytes, whatever the pieces a prompt is
 * cut into (1, 7, 128 tokens, all at once), whatever the input's strides, with sequences
 * at different positions, skipped ones and tokens past the capacity; plus the argument
 * checks. Without a GPU the device tests are skipped.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "kvq.h"
#include "test.h"

#ifdef KVQ_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static int have_gpu(void) {
    int n = 0;
    return kvq_cuda_available(&n) == KVQ_OK && n > 0;
}

TEST(cuda_chan_append_n_without_device_fails_cleanly) {
    if (have_gpu()) SKIP("a GPU is present: the device tests cover it");
    /* no handle can exist here: a build without CUDA answers NO_DEVICE, one with it
     * refuses the missing handle */
#ifdef KVQ_HAVE_CUDA
    const kvq_status want = KVQ_ERR_INVALID_ARG;
#else
    const kvq_status want = KVQ_ERR_NO_DEVICE;
#endif
    size_t ws = 7;
    CHECK_STATUS(kvq_cuda_chan_append_n_workspace(NULL, 1, 1, &ws), want);
    CHECK_STATUS(kvq_cuda_chan_append_n(NULL, KVQ_CUDA_F32, NULL, NULL, NULL, 1, 1, 128, NULL, NULL, NULL, 0, NULL),
                 want);
}

#ifdef KVQ_HAVE_CUDA

#define CU(expr) REQUIRE((expr) == cudaSuccess)

/* Token t of sequence b, kv head h: RoPE-like keys (an offset per channel, a slow or fast
 * turn, noise; token 0 large, a sink), Gaussian values; rounded to dtype. */
static void token_kv(uint32_t b, uint32_t t, uint32_t h, uint32_t d, float *k, float *v) {
    kvqi_rng r;
    kvqi_rng_seed(&r, (uint64_t)(b * 7919u + h) * 1000003u + t);
    for (uint32_t j = 0; j < d; j++) {
        double base = ((j * 37 + h * 11) % 17) * 0.4 - 3.0;
        double amp = 0.2 + (j % 5) * 0.6, freq = pow(10000.0, -(double)(j % (d / 2)) / (d / 2));
        double x = base + amp * sin(freq * t + h + b) + 0.15 * kvqi_rng_normal(&r);
        if (t == 0) x *= 4.0;
        k[j] = (float)x;
        v[j] = (float)kvqi_rng_normal(&r);
    }
}

static void put(void *dst, size_t i, float x, kvq_cuda_dtype dt) {
    if (dt == KVQ_CUDA_F16)
        ((uint16_t *)dst)[i] = kvqi_fp32_to_fp16(x);
    else if (dt == KVQ_CUDA_BF16)
        ((uint16_t *)dst)[i] = kvqi_fp32_to_bf16(x);
    else
        ((float *)dst)[i] = x;
}

/* Layouts of a piece of n tokens: head-major [batch][n_kv][n][d] (strides NULL), or keys
 * head-major and values token-major [batch][n][n_kv][d] through explicit strides (as a
 * transposed view of transformers' tensors is). */
enum { LAYOUT_CONTIGUOUS, LAYOUT_STRIDED };

typedef struct append_case {
    const char *preset;
    uint32_t d, n_kv, batch;
    kvq_cuda_dtype dt;
} append_case;

/* Fill a piece: tokens start[b] .. start[b] + n - 1 of each sequence. */
static void fill_piece(const append_case *c, const uint32_t *start, uint32_t n, int layout, void *k, void *v,
                       uint64_t strides[6]) {
    const uint64_t d = c->d, nk = c->n_kv;
    strides[0] = nk * n * d, strides[1] = n * d, strides[2] = d;
    if (layout == LAYOUT_STRIDED)
        strides[3] = nk * n * d, strides[4] = d, strides[5] = nk * d;
    else
        strides[3] = strides[0], strides[4] = strides[1], strides[5] = strides[2];
    float *kr = malloc(d * sizeof(float)), *vr = malloc(d * sizeof(float));
    if (!kr || !vr) abort();
    for (uint32_t b = 0; b < c->batch; b++)
        for (uint32_t h = 0; h < c->n_kv; h++)
            for (uint32_t t = 0; t < n; t++) {
                token_kv(b, start[b] + t, h, c->d, kr, vr);
                for (uint32_t j = 0; j < c->d; j++) {
                    put(k, b * strides[0] + h * strides[1] + t * strides[2] + j, kr[j], c->dt);
                    put(v, b * strides[3] + h * strides[4] + t * strides[5] + j, vr[j], c->dt);
                }
            }
    free(kr);
    free(vr);
}

/* Sequence b holds len[b] tokens: the first pre[b] appended one at a time, the rest in
 * pieces of `piece` tokens (a sequence with nothing left gets position -1; tokens past
 * the capacity are dropped). The buffer must equal the one-token path's. */
static void append_case_run(kvqt_ctx *kvqt_, const append_case *c, const uint32_t *pre, const uint32_t *len,
                            uint32_t capacity, const uint32_t *pieces, size_t n_pieces) {
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_preset(&cfg, c->preset, c->n_kv, c->d, NULL, 0));
    kvq_cuda_chan *kc = NULL;
    kvq_status st = kvq_cuda_chan_create(&cfg, &kc);
    CHECKF(st == KVQ_OK, "%s: %s", c->preset, kvq_strerror(st));
    if (st != KVQ_OK) return;
    kvq_cuda_chan_layout L;
    REQUIRE_OK(kvq_cuda_chan_layout_of(kc, c->batch, capacity, &L));
    uint32_t max_len = 0, max_rest = 0, B = c->batch;
    for (uint32_t b = 0; b < B; b++) {
        max_len = len[b] > max_len ? len[b] : max_len;
        max_rest = len[b] - pre[b] > max_rest ? len[b] - pre[b] : max_rest;
    }
    const size_t esz = c->dt == KVQ_CUDA_F32 ? 4 : 2, row = (size_t)c->n_kv * c->d;
    const size_t in_bytes = (size_t)B * row * (max_rest ? max_rest : 1) * esz;
    size_t ws1 = 0, wsn = 0;
    REQUIRE_OK(kvq_cuda_chan_append_workspace(kc, B, &ws1));
    REQUIRE_OK(kvq_cuda_chan_append_n_workspace(kc, B, max_rest ? max_rest : 1, &wsn));
    void *ref = NULL, *got = NULL, *ws = NULL, *dk = NULL, *dv = NULL, *dpos = NULL;
    size_t ws_bytes = ws1 > wsn ? ws1 : wsn;
    CU(cudaMalloc(&ref, L.bytes));
    CU(cudaMalloc(&got, L.bytes));
    CU(cudaMalloc(&ws, ws_bytes));
    CU(cudaMalloc(&dk, in_bytes));
    CU(cudaMalloc(&dv, in_bytes));
    CU(cudaMalloc(&dpos, B * 4));
    void *hk = malloc(in_bytes), *hv = malloc(in_bytes);
    uint8_t *href = malloc(L.bytes), *hgot = malloc(L.bytes);
    int32_t *pos = malloc(B * 4);
    uint32_t *start = malloc(B * 4);
    REQUIRE(hk && hv && href && hgot && pos && start);
    uint64_t strides[6];
    /* the reference: one token per call */
    CU(cudaMemset(ref, 0, L.bytes));
    for (uint32_t t = 0; t < max_len; t++) {
        for (uint32_t b = 0; b < B; b++) start[b] = t, pos[b] = t < len[b] ? (int32_t)t : -1;
        fill_piece(c, start, 1, LAYOUT_CONTIGUOUS, hk, hv, strides);
        CU(cudaMemcpy(dk, hk, B * row * esz, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dv, hv, B * row * esz, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dpos, pos, B * 4, cudaMemcpyHostToDevice));
        REQUIRE_OK(kvq_cuda_chan_append(kc, c->dt, dk, dv, B, capacity, dpos, ref, ws, ws1, NULL));
    }
    CU(cudaMemcpy(href, ref, L.bytes, cudaMemcpyDeviceToHost));
    for (size_t pi = 0; pi < n_pieces; pi++) {
        const uint32_t piece = pieces[pi] ? pieces[pi] : (max_rest ? max_rest : 1);
        for (int layout = LAYOUT_CONTIGUOUS; layout <= LAYOUT_STRIDED; layout++) {
            CU(cudaMemset(got, 0, L.bytes));
            /* the first tokens one at a time, then pieces */
            uint32_t max_pre = 0;
            for (uint32_t b = 0; b < B; b++) max_pre = pre[b] > max_pre ? pre[b] : max_pre;
            for (uint32_t t = 0; t < max_pre; t++) {
                for (uint32_t b = 0; b < B; b++) start[b] = t, pos[b] = t < pre[b] ? (int32_t)t : -1;
                fill_piece(c, start, 1, LAYOUT_CONTIGUOUS, hk, hv, strides);
                CU(cudaMemcpy(dk, hk, B * row * esz, cudaMemcpyHostToDevice));
                CU(cudaMemcpy(dv, hv, B * row * esz, cudaMemcpyHostToDevice));
                CU(cudaMemcpy(dpos, pos, B * 4, cudaMemcpyHostToDevice));
                REQUIRE_OK(kvq_cuda_chan_append(kc, c->dt, dk, dv, B, capacity, dpos, got, ws, ws1, NULL));
            }
            for (uint32_t s = 0; s < max_rest; s += piece) {
                const uint32_t n = max_rest - s < piece ? max_rest - s : piece;
                for (uint32_t b = 0; b < B; b++) {
                    start[b] = pre[b] + s;
                    pos[b] = pre[b] + s < len[b] ? (int32_t)(pre[b] + s) : -1;
                }
                fill_piece(c, start, n, layout, hk, hv, strides);
                const size_t bytes = (size_t)B * row * n * esz;
                CU(cudaMemcpy(dk, hk, bytes, cudaMemcpyHostToDevice));
                CU(cudaMemcpy(dv, hv, bytes, cudaMemcpyHostToDevice));
                CU(cudaMemcpy(dpos, pos, B * 4, cudaMemcpyHostToDevice));
                size_t need = 0;
                REQUIRE_OK(kvq_cuda_chan_append_n_workspace(kc, B, n, &need));
                REQUIRE(need <= ws_bytes);
                st = kvq_cuda_chan_append_n(kc, c->dt, dk, dv, layout == LAYOUT_STRIDED ? strides : NULL, B, n,
                                            capacity, dpos, got, ws, need, NULL);
                REQUIRE(st == KVQ_OK);
            }
            CU(cudaMemcpy(hgot, got, L.bytes, cudaMemcpyDeviceToHost));
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < L.bytes; i++)
                if (href[i] != hgot[i] && bad++ == 0) first = i;
            CHECKF(bad == 0,
                   "%s d=%u n_kv=%u: pieces of %u (%s): %zu of %llu bytes differ from one token per call, "
                   "the first at %zu (heads %llu, keys %llu, values %llu, exact %llu)",
                   c->preset, c->d, c->n_kv, piece, layout == LAYOUT_STRIDED ? "strided" : "contiguous", bad,
                   (unsigned long long)L.bytes, first, (unsigned long long)L.heads, (unsigned long long)L.keys,
                   (unsigned long long)L.values, (unsigned long long)L.exact_k);
        }
    }
    free(hk);
    free(hv);
    free(href);
    free(hgot);
    free(pos);
    free(start);
    cudaFree(ref);
    cudaFree(got);
    cudaFree(ws);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dpos);
    kvq_cuda_chan_free(kc);
}

static void body_cuda_chan_append_n_matches_one_token(kvqt_ctx *kvqt_) {
    /* window 8, one sink, 128-token chunks: a 136-token ring, so the longer pieces
     * overwrite it many times over and complete several chunks in one call */
    static const uint32_t pieces[] = {1, 7, 128, 0}; /* 0: the whole rest at once */
    {
        /* SmolLM2's shape: sequences at different positions, one skipped after its first
         * tokens, one running past the capacity (its last tokens dropped) */
        const append_case c = {"q4", 64, 3, 4, KVQ_CUDA_BF16};
        const uint32_t pre[4] = {0, 5, 140, 3}, len[4] = {5 * 128 + 40, 5 + 5 * 128 + 40, 140 + 5 * 128 + 40, 3};
        append_case_run(kvqt_, &c, pre, len, 6 * 128, pieces, 4);
    }
    {
        const append_case c = {"q3", 128, 2, 2, KVQ_CUDA_F32};
        const uint32_t pre[2] = {0, 0}, len[2] = {3 * 128 + 8 + 1, 3 * 128 + 8 + 1};
        append_case_run(kvqt_, &c, pre, len, 4 * 128, pieces, 4);
    }
    {
        /* Gemma's shape (one kv head of 256) */
        const append_case c = {"q2", 256, 1, 2, KVQ_CUDA_F16};
        const uint32_t pre[2] = {0, 77}, len[2] = {4 * 128 + 8, 77 + 4 * 128 + 8};
        append_case_run(kvqt_, &c, pre, len, 5 * 128, pieces, 4);
    }
}

static void body_cuda_chan_append_n_rejects_bad_arguments(kvqt_ctx *kvqt_) {
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_preset(&cfg, "q4", 2, 128, NULL, 0));
    kvq_cuda_chan *kc = NULL;
    REQUIRE_OK(kvq_cuda_chan_create(&cfg, &kc));
    size_t ws = 0;
    CHECK_STATUS(kvq_cuda_chan_append_n_workspace(NULL, 2, 8, &ws), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_append_n_workspace(kc, 0, 8, &ws), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_append_n_workspace(kc, 2, 0, &ws), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_append_n_workspace(kc, 2, 8, NULL), KVQ_ERR_INVALID_ARG);
    REQUIRE_OK(kvq_cuda_chan_append_n_workspace(kc, 2, 8, &ws));
    size_t ws16 = 0;
    REQUIRE_OK(kvq_cuda_chan_append_n_workspace(kc, 2, 16, &ws16));
    CHECK(ws16 > ws && ws >= 2 * 2 * 8 * 128 * 4);
    uint8_t *p = NULL;
    const size_t big = 1u << 22;
    CU(cudaMalloc((void **)&p, big));
    CU(cudaMemset(p, 0, big));
    const int32_t *pos = (const int32_t *)p;
    const uint64_t huge[6] = {1ull << 50, 0, 0, 0, 0, 0};
    /* one refused call a row: a NULL handle or pointer, no tokens or sequences, an unknown
     * input type, capacity not whole chunks, workspace for fewer tokens, a misaligned cache,
     * a stride past any buffer */
    const struct {
        kvq_cuda_chan *kc;
        kvq_cuda_dtype dtype;
        const void *k, *v;
        const uint64_t *strides;
        uint32_t batch, n, capacity;
        const int32_t *pos;
        void *cache, *ws;
        kvq_status want;
    } bad[] = {
        {NULL, KVQ_CUDA_F32, p, p, NULL, 2, 8, 1024, pos, p, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, NULL, p, NULL, 2, 8, 1024, pos, p, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, NULL, NULL, 2, 8, 1024, pos, p, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, p, NULL, 2, 8, 1024, NULL, p, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, p, NULL, 2, 8, 1024, pos, NULL, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, p, NULL, 2, 8, 1024, pos, p, NULL, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, p, NULL, 2, 0, 1024, pos, p, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, p, NULL, 0, 8, 1024, pos, p, p, KVQ_ERR_INVALID_ARG},
        {kc, (kvq_cuda_dtype)7, p, p, NULL, 2, 8, 1024, pos, p, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, p, NULL, 2, 8, 1000, pos, p, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, p, NULL, 2, 16, 1024, pos, p, p, KVQ_ERR_CAPACITY},
        {kc, KVQ_CUDA_F32, p, p, NULL, 2, 8, 1024, pos, p + 8, p, KVQ_ERR_INVALID_ARG},
        {kc, KVQ_CUDA_F32, p, p, huge, 2, 8, 1024, pos, p, p, KVQ_ERR_INVALID_ARG},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kvq_status st = kvq_cuda_chan_append_n(bad[i].kc, bad[i].dtype, bad[i].k, bad[i].v, bad[i].strides,
                                               bad[i].batch, bad[i].n, bad[i].capacity, bad[i].pos,
                                               bad[i].cache, bad[i].ws, ws, NULL);
        if (st != bad[i].want)
            kvqt_fail(kvqt_, __FILE__, __LINE__, "refused call %zu -> %s, want %s", i, kvq_strerror(st),
                      kvq_strerror(bad[i].want));
    }
    /* nothing was enqueued by the refused calls; a valid one with every sequence skipped
     * (positions -1) leaves the buffer as it was */
    int32_t skip[2] = {-1, -1};
    kvq_cuda_chan_layout L;
    REQUIRE_OK(kvq_cuda_chan_layout_of(kc, 2, 256, &L));
    uint8_t *cache = NULL, *wsd = NULL;
    CU(cudaMalloc((void **)&cache, L.bytes));
    CU(cudaMalloc((void **)&wsd, ws));
    CU(cudaMemset(cache, 0x5a, L.bytes));
    CU(cudaMemcpy(p, skip, sizeof skip, cudaMemcpyHostToDevice));
    REQUIRE_OK(kvq_cuda_chan_append_n(kc, KVQ_CUDA_F32, p + 4096, p + 4096, NULL, 2, 8, 256, pos, cache, wsd, ws,
                                      NULL));
    uint8_t *h = malloc(L.bytes);
    REQUIRE(h);
    CU(cudaMemcpy(h, cache, L.bytes, cudaMemcpyDeviceToHost));
    size_t changed = 0;
    for (size_t i = 0; i < L.bytes; i++) changed += h[i] != 0x5a;
    CHECKF(changed == 0, "%zu bytes changed by an append whose sequences are all skipped", changed);
    free(h);
    cudaFree(cache);
    cudaFree(wsd);
    cudaFree(p);
    kvq_cuda_chan_free(kc);
}

#endif

TEST(cuda_chan_append_n_matches_one_token) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_chan_append_n_matches_one_token(kvqt_);
#endif
}

TEST(cuda_chan_append_n_rejects_bad_arguments) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_chan_append_n_rejects_bad_arguments(kvqt_);
#endif
}
