/*
 * bench_chan.c - GPU decode attention of the cache presets (channel keys, kvq_cuda_chan):
 * microseconds per call, GB/s of the compressed bytes a call reads (key blocks, value
 * codes, exact sinks and tail, head state) and % of the device-to-device copy ceiling,
 * at the shapes of bench_attn and sdpa.py (32 query heads, 8 KV heads, dim 128).
 * The caches hold synthetic codes (valid fields, random planes): the kernel's work does
 * not depend on the values. Each figure is the median of 9 samples of a CUDA graph of 10
 * calls. Usage: bench_chan [--presets q4,q3,q2] [--batches 1,8,32] [--ctxs 32768,131072]
 * [--prefill N] [--paged 1] (--presets takes cache specs too: q3+mse:bits=3; --prefill: also
 * time kvq_cuda_chan_prefill of N new tokens a sequence over the same cache, PREFILL lines;
 * --paged 1: also the same cache copied into pages of one chunk, handed out in a shuffled
 * order, through kvq_cuda_chan_attend_paged, CHANPAGED lines)
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvq.h"

#include "bench_timing.h"

#define N_Q 32
#define N_KV 8
#define D 128

typedef struct attn_ctx {
    kvq_cuda_chan *kc;
    kvq_cuda_attn_desc d;
    void *q, *cache, *ws;
    int32_t *lens;
    size_t ws_bytes;
    float *out;
} attn_ctx;

static void run_attn(void *p, cudaStream_t s) {
    attn_ctx *c = p;
    KK(kvq_cuda_chan_attend(c->kc, &c->d, c->q, c->cache, c->lens, c->ws, c->ws_bytes, c->out, s));
}

typedef struct paged_ctx {
    attn_ctx *a;
    kvq_cuda_pages pg;
    void *cache;
} paged_ctx;

static void run_paged(void *p, cudaStream_t s) {
    paged_ctx *c = p;
    attn_ctx *a = c->a;
    KK(kvq_cuda_chan_attend_paged(a->kc, &a->d, &c->pg, a->q, c->cache, a->lens, a->ws, a->ws_bytes, a->out, s));
}

typedef struct prefill_ctx {
    attn_ctx *a;
    uint32_t n_new;
    void *k_new, *v_new;
} prefill_ctx;

static void run_prefill(void *p, cudaStream_t s) {
    prefill_ctx *c = p;
    attn_ctx *a = c->a;
    KK(kvq_cuda_chan_prefill(a->kc, &a->d, c->n_new, a->q, c->k_new, c->v_new, a->cache, a->lens, a->ws, a->ws_bytes,
                             a->out, s));
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* fp16 bits of a small value in [-1, 1) */
static uint16_t small_half(void) { return (uint16_t)(0x3000u + (rnd() % 0x0c00u)) | (uint16_t)((rnd() & 1u) << 15); }

/* One (sequence, head) slab of `bytes` filled on the host by fill(), copied to every row. */
static void fill_rows(uint8_t *dev, uint64_t stride, uint64_t rows, uint8_t *host) {
    for (uint64_t r = 0; r < rows; r++) CK(cudaMemcpy(dev + r * stride, host, stride, cudaMemcpyHostToDevice));
}

static int parse_list(const char *s, uint32_t *out, int max) {
    int n = 0;
    while (*s && n < max) {
        out[n++] = (uint32_t)strtoul(s, (char **)&s, 10);
        if (*s == ',') s++;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *presets = "q4,q3,q2";
    uint32_t batches[8] = {1, 8, 32}, ctxs[8] = {32768, 131072};
    int nb = 3, nctx = 2;
    uint32_t n_new = 0, paged = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--paged")) paged = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--presets")) presets = argv[i + 1];
        else if (!strcmp(argv[i], "--prefill")) n_new = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--batches")) nb = parse_list(argv[i + 1], batches, 8);
        else if (!strcmp(argv[i], "--ctxs")) nctx = parse_list(argv[i + 1], ctxs, 8);
    }
    int n_dev = 0;
    KK(kvq_cuda_available(&n_dev));
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    copy_ctx cc;
    cc.bytes = (size_t)2 << 30;
    CK(cudaMalloc(&cc.dst, cc.bytes));
    CK(cudaMalloc(&cc.src, cc.bytes));
    CK(cudaMemset(cc.src, 1, cc.bytes));
    float ms = time_plain(run_copy, &cc, s);
    double copy_gbs = 2.0 * cc.bytes / (ms * 1e-3) / 1e9;
    printf("DEVICE %s\nCOPY bytes=%zu GBps=%.1f\n", prop.name, cc.bytes, copy_gbs);
    CK(cudaFree(cc.dst));
    CK(cudaFree(cc.src));
    char list[256];
    snprintf(list, sizeof list, "%s", presets);
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        kvq_cache_config cfg;
        /* a preset (the layers outside its plan) or a spec such as q3+mse:bits=3 (its
         * plan's 3-bit-value layers) */
        KK(kvq_cache_config_parse(name, N_KV, D, &cfg, NULL, 0));
        kvq_cuda_chan *kc = NULL;
        KK(kvq_cuda_chan_create(&cfg, &kc));
        for (int bi = 0; bi < nb; bi++)
            for (int ci = 0; ci < nctx; ci++) {
                uint32_t B = batches[bi], ctx = ctxs[ci];
                kvq_cuda_chan_layout L;
                uint32_t C = cfg.chunk_tokens ? cfg.chunk_tokens : 64;
                uint32_t cap = (ctx + C - 1) / C * C;
                KK(kvq_cuda_chan_layout_of(kc, B, cap, &L));
                uint8_t *cache = NULL;
                if (cudaMalloc((void **)&cache, L.bytes) != cudaSuccess) {
                    printf("CHAN preset=%s batch=%u ctx=%u skipped (%.1f GB)\n", name, B, ctx, L.bytes / 1e9);
                    cudaGetLastError();
                    continue;
                }
                const uint64_t rows = (uint64_t)B * N_KV, nch = cap / C;
                /* head state: uniform bits, consecutive planes, small means */
                uint8_t *host = malloc(nch * L.key_block > (uint64_t)cap * L.value_code ? nch * L.key_block
                                                                                          : (uint64_t)cap * L.value_code);
                if (!host) return 1;
                memset(host, 0, L.head_bytes);
                for (uint32_t j = 0; j < D; j++) {
                    host[j] = (uint8_t)L.bits;
                    float mu = 0.01f * (float)(j % 7);
                    memcpy(host + D + 4 * j, &mu, 4);
                    uint16_t off = (uint16_t)(j * L.bits);
                    memcpy(host + 5 * D + 2 * j, &off, 2);
                }
                fill_rows(cache + L.heads, L.head_bytes, rows, host);
                for (uint64_t c = 0; c < nch; c++) {
                    uint8_t *blk = host + c * L.key_block;
                    for (uint32_t j = 0; j < D; j++) {
                        uint16_t lo = small_half(), st = (uint16_t)(0x2000u + rnd() % 0x800u);
                        memcpy(blk + 2 * j, &lo, 2);
                        memcpy(blk + 2 * (D + j), &st, 2);
                    }
                    for (uint32_t i = 4 * D; i < L.key_block; i++) blk[i] = (uint8_t)rnd();
                }
                fill_rows(cache + L.keys, nch * L.key_block, rows, host);
                for (uint64_t t = 0; t < cap; t++) {
                    uint8_t *vc = host + t * L.value_code;
                    uint16_t norm = 0x3c00u; /* 1.0 */
                    memcpy(vc, &norm, 2);
                    for (uint32_t i = 2; i < L.value_code; i++) vc[i] = (uint8_t)rnd();
                }
                fill_rows(cache + L.values, (uint64_t)cap * L.value_code, rows, host);
                for (uint64_t i = 0; i < (uint64_t)L.exact_rows * D; i++) ((uint16_t *)host)[i] = small_half();
                fill_rows(cache + L.exact_k, (uint64_t)L.exact_rows * D * 2, rows, host);
                fill_rows(cache + L.exact_v, (uint64_t)L.exact_rows * D * 2, rows, host);
                free(host);
                attn_ctx a;
                memset(&a, 0, sizeof a);
                a.kc = kc;
                kvq_cuda_attn_desc d = {B, N_Q, N_KV, D, cap, ctx, 0.08838834764831845f, KVQ_CUDA_F16, 0};
                a.d = d;
                a.cache = cache;
                KK(kvq_cuda_chan_attend_workspace(kc, &d, &a.ws_bytes));
                CK(cudaMalloc(&a.ws, a.ws_bytes));
                CK(cudaMalloc(&a.q, (size_t)B * N_Q * D * 2));
                CK(cudaMemset(a.q, 0x31, (size_t)B * N_Q * D * 2));
                CK(cudaMalloc((void **)&a.out, (size_t)B * N_Q * D * 4));
                CK(cudaMalloc((void **)&a.lens, B * 4));
                int32_t *lens = malloc(B * 4);
                for (uint32_t b = 0; b < B; b++) lens[b] = (int32_t)ctx;
                CK(cudaMemcpy(a.lens, lens, B * 4, cudaMemcpyHostToDevice));
                free(lens);
                float t_ms = time_graph(run_attn, &a, s);
                uint64_t nc = ctx > L.window ? (ctx - L.window) / C * C : 0, tail = ctx - (nc > L.n_sink ? nc : L.n_sink);
                double bytes = (double)rows * ((double)(nc / C) * L.key_block + (double)nc * L.value_code +
                                               (double)(L.n_sink + tail) * 4 * D + L.head_bytes);
                double gbs = bytes / (t_ms * 1e-3) / 1e9;
                double fp16 = (double)rows * ctx * 4.0 * D;
                printf("CHAN preset=%s batch=%u ctx=%u chunk=%u bytes=%.0f fp16_bytes=%.0f us=%.2f GBps=%.1f "
                       "pct_copy=%.1f\n",
                       name, B, ctx, C, bytes, fp16, t_ms * 1e3, gbs, 100.0 * gbs / copy_gbs);
                fflush(stdout);
                if (paged) {
                    /* the same bytes in pages: chunk c of sequence b to page perm[b * nch + c] */
                    kvq_cuda_chan_layout Lp;
                    KK(kvq_cuda_chan_layout_paged(kc, B, &Lp));
                    const size_t n_pages = (size_t)B * nch, kb = L.key_block, vb = (size_t)C * L.value_code;
                    paged_ctx pc;
                    memset(&pc, 0, sizeof pc);
                    pc.a = &a;
                    uint8_t *kpool = NULL, *vpool = NULL;
                    int32_t *table = malloc(n_pages * 4), *dtable = NULL;
                    if (!table) return 1;
                    if (cudaMalloc((void **)&kpool, n_pages * N_KV * kb) != cudaSuccess ||
                        cudaMalloc((void **)&vpool, n_pages * N_KV * vb) != cudaSuccess ||
                        cudaMalloc(&pc.cache, Lp.bytes) != cudaSuccess) {
                        printf("CHANPAGED preset=%s batch=%u ctx=%u skipped\n", name, B, ctx);
                        cudaGetLastError();
                    } else {
                        for (size_t i = 0; i < n_pages; i++) table[i] = (int32_t)i;
                        for (size_t i = n_pages - 1; i > 0; i--) {
                            size_t j = rnd() % (i + 1);
                            int32_t t = table[i];
                            table[i] = table[j];
                            table[j] = t;
                        }
                        CK(cudaMalloc((void **)&dtable, n_pages * 4));
                        CK(cudaMemcpy(dtable, table, n_pages * 4, cudaMemcpyHostToDevice));
                        for (uint32_t b = 0; b < B; b++)
                            for (uint64_t c = 0; c < nch; c++) {
                                const size_t pgid = (size_t)table[b * nch + c];
                                CK(cudaMemcpy2D(kpool + pgid * N_KV * kb, kb, cache + L.keys + ((size_t)b * N_KV * nch + c) * kb,
                                                nch * kb, kb, N_KV, cudaMemcpyDeviceToDevice));
                                CK(cudaMemcpy2D(vpool + pgid * N_KV * vb, vb,
                                                cache + L.values + ((size_t)b * N_KV * cap + c * C) * L.value_code,
                                                (size_t)cap * L.value_code, vb, N_KV, cudaMemcpyDeviceToDevice));
                            }
                        const size_t ex = (size_t)rows * L.exact_rows * D * 2;
                        CK(cudaMemcpy((uint8_t *)pc.cache + Lp.heads, cache + L.heads, (size_t)rows * L.head_bytes,
                                      cudaMemcpyDeviceToDevice));
                        CK(cudaMemcpy((uint8_t *)pc.cache + Lp.exact_k, cache + L.exact_k, ex, cudaMemcpyDeviceToDevice));
                        CK(cudaMemcpy((uint8_t *)pc.cache + Lp.exact_v, cache + L.exact_v, ex, cudaMemcpyDeviceToDevice));
                        kvq_cuda_pages pg = {kpool, vpool, dtable, C, (uint32_t)nch};
                        pc.pg = pg;
                        float p_ms = time_graph(run_paged, &pc, s);
                        printf("CHANPAGED preset=%s batch=%u ctx=%u page=%u us=%.2f GBps=%.1f x_contiguous=%.3f\n", name, B,
                               ctx, C, p_ms * 1e3, bytes / (p_ms * 1e-3) / 1e9, p_ms / t_ms);
                        fflush(stdout);
                    }
                    cudaFree(kpool);
                    cudaFree(vpool);
                    cudaFree(pc.cache);
                    cudaFree(dtable);
                    free(table);
                }
                if (n_new && (uint64_t)B * n_new <= 65535) {
                    /* the same cache, n_new query rows a sequence and the new tokens */
                    prefill_ctx pc = {&a, n_new, NULL, NULL};
                    const size_t nq = (size_t)B * n_new * N_Q * D, nkv = (size_t)B * n_new * N_KV * D;
                    cudaFree(a.ws);
                    cudaFree(a.q);
                    cudaFree(a.out);
                    KK(kvq_cuda_chan_prefill_workspace(kc, &d, n_new, &a.ws_bytes));
                    CK(cudaMalloc(&a.ws, a.ws_bytes));
                    CK(cudaMalloc(&a.q, nq * 2));
                    CK(cudaMemset(a.q, 0x31, nq * 2));
                    CK(cudaMalloc((void **)&a.out, nq * 4));
                    CK(cudaMalloc(&pc.k_new, nkv * 2));
                    CK(cudaMalloc(&pc.v_new, nkv * 2));
                    CK(cudaMemset(pc.k_new, 0x30, nkv * 2));
                    CK(cudaMemset(pc.v_new, 0x2f, nkv * 2));
                    float p_ms = time_graph(run_prefill, &pc, s);
                    printf("PREFILL preset=%s batch=%u ctx=%u n_new=%u us=%.2f us_per_new=%.2f x_decode=%.2f\n", name, B,
                           ctx, n_new, p_ms * 1e3, p_ms * 1e3 / n_new, p_ms / t_ms);
                    fflush(stdout);
                    cudaFree(pc.k_new);
                    cudaFree(pc.v_new);
                }
                cudaFree(a.ws);
                cudaFree(a.q);
                cudaFree(a.out);
                cudaFree(a.lens);
                cudaFree(cache);
            }
        kvq_cuda_chan_free(kc);
    }
    return 0;
}
