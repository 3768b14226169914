/*
 * bench_attn.c - GPU figures for kvq's CUDA kernels: device-to-device copy bandwidth
 * (the ceiling), encode throughput per method, and fused decode attention over
 * compressed KV at Llama-3.1-8B decode shapes (32 query heads, 8 KV heads, dim 128)
 * for batch 1/8/32 and context 4k/32k/128k. CUDA events, warm-up, medians; each timed
 * sample replays a captured graph of REPS calls. One line per figure, machine-readable.
 * Usage: bench_attn [--quick | --pair NAME[,NAME...] [--paged] | --profile [KEY VALUE [BATCH CTX]]]
 *                   [--batches N,N,...] [--ctxs N,N,...]
 * (--paged: those pairs over shuffled pools of 16-, 32- and 64-token pages too;
 *  --batches / --ctxs: the attention shapes, of batch 1/8/32 and context 4k/32k/128k)
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvq.h"

#include "bench_timing.h"

/* -------------------------------------------------------------------- encode */

typedef struct enc_ctx {
    kvq_cuda_quantizer *cq;
    const void *x;
    size_t rows;
    uint8_t *codes;
} enc_ctx;

static void run_encode(void *p, cudaStream_t s) {
    enc_ctx *c = p;
    KK(kvq_cuda_encode(c->cq, KVQ_CUDA_F16, c->x, c->rows, c->codes, s));
}

/* Random fp16 rows on the host (Gaussian-ish: sum of uniforms), uploaded once. */
static void *random_fp16_rows(size_t n_elems, uint64_t seed) {
    uint16_t *h = malloc(n_elems * 2);
    if (!h) exit(1);
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n_elems; i++) {
        float acc = 0.0f;
        for (int k = 0; k < 4; k++) {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            acc += (float)(st >> 40) * (1.0f / 16777216.0f) - 0.5f;
        }
        acc *= 1.7f;
        /* float -> fp16 by truncation (values are small normals: enough for timing) */
        uint32_t b;
        memcpy(&b, &acc, 4);
        uint32_t sign = (b >> 16) & 0x8000u;
        int ex = (int)((b >> 23) & 0xff) - 127 + 15;
        uint16_t v = ex <= 0 ? (uint16_t)sign : (uint16_t)(sign | ((uint32_t)ex << 10) | ((b >> 13) & 0x3ffu));
        h[i] = v;
    }
    void *d = NULL;
    CK(cudaMalloc(&d, n_elems * 2));
    CK(cudaMemcpy(d, h, n_elems * 2, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static kvq_cuda_quantizer *make_cq(const char *spec, kvq_quantizer **qout, uint64_t seed) {
    kvq_config cfg;
    char msg[200];
    KK(kvq_config_parse(spec, 128, &cfg, msg, sizeof msg));
    cfg.seed = seed;
    kvq_quantizer *q = NULL;
    KK(kvq_quantizer_create(&cfg, &q));
    kvq_cuda_quantizer *cq = NULL;
    KK(kvq_cuda_quantizer_create(q, &cq));
    *qout = q;
    return cq;
}

/* ----------------------------------------------------------------- attention */

typedef struct attn_ctx {
    kvq_cuda_quantizer *kq, *vq;
    kvq_cuda_attn_desc desc;
    const void *q;
    const uint8_t *k, *v;
    const int32_t *lens;
    void *ws;
    size_t ws_bytes;
    float *out;
} attn_ctx;

static void run_attn(void *p, cudaStream_t s) {
    attn_ctx *c = p;
    KK(kvq_cuda_attend(c->kq, c->vq, &c->desc, c->q, c->k, c->v, c->lens, c->ws, c->ws_bytes,
                       c->out, s));
}

/* Fill rows of codes by encoding one staging block of random fp16 rows again and again. */
static void fill_codes(kvq_cuda_quantizer *cq, const void *stage, size_t stage_rows, uint8_t *codes,
                       size_t rows, size_t cs, cudaStream_t s) {
    for (size_t r = 0; r < rows; r += stage_rows) {
        size_t n = rows - r < stage_rows ? rows - r : stage_rows;
        KK(kvq_cuda_encode(cq, KVQ_CUDA_F16, stage, n, codes + r * cs, s));
    }
    CK(cudaStreamSynchronize(s));
}

typedef struct pair {
    const char *name, *key, *value;
    uint32_t flags;
} pair;

/* ------------------------------------------------------------ paged and prefill */

typedef struct paged_ctx {
    kvq_cuda_quantizer *kq, *vq;
    kvq_cuda_attn_desc desc;
    kvq_cuda_pages pages;
    const void *q;
    const int32_t *lens;
    void *ws;
    size_t ws_bytes;
    float *out;
    uint32_t n_new;
    const void *k_new, *v_new;
} paged_ctx;

static void run_paged(void *p, cudaStream_t s) {
    paged_ctx *c = p;
    KK(kvq_cuda_attend_paged(c->kq, c->vq, &c->desc, &c->pages, c->q, c->lens, c->ws, c->ws_bytes, c->out, s));
}

static void run_prefill(void *p, cudaStream_t s) {
    paged_ctx *c = p;
    KK(kvq_cuda_prefill(c->kq, c->vq, &c->desc, &c->pages, c->n_new, c->q, c->k_new, c->v_new, c->lens, c->ws,
                        c->ws_bytes, c->out, s));
}

/* Batch B, context L over a shuffled page pool of page_size tokens (every page written
 * with codes); lengths all L (vary = 0) or spread over L/2..L. */
static void bench_paged(const pair *pr, uint32_t B, uint32_t L, uint32_t page_size, int vary, const void *stage,
                        size_t stage_rows, double copy_gbs, cudaStream_t s) {
    const uint32_t n_q = 32, n_kv = 8, d = 128;
    kvq_quantizer *kq = NULL, *vq = NULL;
    kvq_cuda_quantizer *ckq = make_cq(pr->key, &kq, 1), *cvq = make_cq(pr->value, &vq, 2);
    size_t kcs = kvq_code_size(kq), vcs = kvq_code_size(vq);
    uint32_t max_pages = (L + page_size - 1) / page_size, n_pages = B * max_pages;
    size_t rows = (size_t)n_pages * n_kv * page_size;
    paged_ctx c;
    memset(&c, 0, sizeof c);
    c.kq = ckq;
    c.vq = cvq;
    c.desc.batch = B;
    c.desc.n_q_heads = n_q;
    c.desc.n_kv_heads = n_kv;
    c.desc.head_dim = d;
    c.desc.max_len = L;
    c.desc.scale = 1.0f / sqrtf((float)d);
    c.desc.q_dtype = KVQ_CUDA_F16;
    uint8_t *kc = NULL, *vc = NULL;
    CK(cudaMalloc((void **)&kc, rows * kcs));
    CK(cudaMalloc((void **)&vc, rows * vcs));
    fill_codes(ckq, stage, stage_rows, kc, rows, kcs, s);
    fill_codes(cvq, (const uint8_t *)stage + 4096, stage_rows - 16, vc, rows, vcs, s);
    int32_t *table = malloc((size_t)n_pages * sizeof(int32_t)), *lens = malloc(B * sizeof(int32_t));
    if (!table || !lens) exit(1);
    for (uint32_t i = 0; i < n_pages; i++) table[i] = (int32_t)i;
    uint64_t st = 12345;
    for (uint32_t i = n_pages - 1; i > 0; i--) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t j = (uint32_t)((st >> 33) % (i + 1));
        int32_t t = table[i];
        table[i] = table[j];
        table[j] = t;
    }
    double tokens = 0;
    for (uint32_t b = 0; b < B; b++) {
        lens[b] = vary ? (int32_t)(L / 2 + (uint64_t)(L / 2) * b / (B > 1 ? B - 1 : 1)) : (int32_t)L;
        tokens += lens[b];
    }
    int32_t *dt = NULL, *dl = NULL;
    CK(cudaMalloc((void **)&dt, (size_t)n_pages * sizeof(int32_t)));
    CK(cudaMalloc((void **)&dl, B * sizeof(int32_t)));
    CK(cudaMemcpy(dt, table, (size_t)n_pages * sizeof(int32_t), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dl, lens, B * sizeof(int32_t), cudaMemcpyHostToDevice));
    c.pages.k_pages_dev = kc;
    c.pages.v_pages_dev = vc;
    c.pages.page_table_dev = dt;
    c.pages.page_size = page_size;
    c.pages.max_pages = max_pages;
    c.q = (const uint8_t *)stage + 8192;
    c.lens = dl;
    KK(kvq_cuda_attend_paged_workspace(ckq, cvq, &c.desc, &c.pages, 0, &c.ws_bytes));
    CK(cudaMalloc(&c.ws, c.ws_bytes));
    CK(cudaMalloc((void **)&c.out, (size_t)B * n_q * d * sizeof(float)));
    float ms = time_graph(run_paged, &c, s);
    double bytes = tokens * n_kv * (double)(kcs + vcs) + (double)B * n_q * d * 6;
    double gbs = bytes / (ms * 1e-3) / 1e9;
    printf("PAGED pair=%s batch=%u ctx=%u page=%u lens=%s kv_bytes=%.0f us=%.2f GBps=%.1f pct_copy=%.1f\n",
           pr->name, B, L, page_size, vary ? "L/2..L" : "L", bytes, ms * 1e3, gbs, 100.0 * gbs / copy_gbs);
    fflush(stdout);
    CK(cudaFree(kc));
    CK(cudaFree(vc));
    CK(cudaFree(dt));
    CK(cudaFree(dl));
    CK(cudaFree(c.ws));
    CK(cudaFree(c.out));
    free(table);
    free(lens);
    kvq_cuda_quantizer_free(ckq);
    kvq_cuda_quantizer_free(cvq);
    kvq_quantizer_free(kq);
    kvq_quantizer_free(vq);
}

/* Chunked prefill: B sequences with L cached (compressed) tokens, n_new new exact tokens. */
static void bench_prefill(const pair *pr, uint32_t B, uint32_t L, uint32_t n_new, const void *stage,
                          size_t stage_rows, double copy_gbs, cudaStream_t s) {
    const uint32_t n_q = 32, n_kv = 8, d = 128;
    kvq_quantizer *kq = NULL, *vq = NULL;
    kvq_cuda_quantizer *ckq = make_cq(pr->key, &kq, 1), *cvq = make_cq(pr->value, &vq, 2);
    size_t kcs = kvq_code_size(kq), vcs = kvq_code_size(vq);
    size_t rows = (size_t)B * n_kv * L;
    paged_ctx c;
    memset(&c, 0, sizeof c);
    c.kq = ckq;
    c.vq = cvq;
    c.desc.batch = B;
    c.desc.n_q_heads = n_q;
    c.desc.n_kv_heads = n_kv;
    c.desc.head_dim = d;
    c.desc.max_len = L;
    c.desc.scale = 1.0f / sqrtf((float)d);
    c.desc.q_dtype = KVQ_CUDA_F16;
    uint8_t *kc = NULL, *vc = NULL;
    CK(cudaMalloc((void **)&kc, rows * kcs));
    CK(cudaMalloc((void **)&vc, rows * vcs));
    fill_codes(ckq, stage, stage_rows, kc, rows, kcs, s);
    fill_codes(cvq, (const uint8_t *)stage + 4096, stage_rows - 16, vc, rows, vcs, s);
    int32_t *lens = malloc(B * sizeof(int32_t)), *dl = NULL;
    if (!lens) exit(1);
    for (uint32_t b = 0; b < B; b++) lens[b] = (int32_t)L;
    CK(cudaMalloc((void **)&dl, B * sizeof(int32_t)));
    CK(cudaMemcpy(dl, lens, B * sizeof(int32_t), cudaMemcpyHostToDevice));
    c.pages.k_pages_dev = kc;
    c.pages.v_pages_dev = vc;
    c.pages.page_size = L;
    c.pages.max_pages = 1;
    c.q = (const uint8_t *)stage + 8192;
    c.k_new = (const uint8_t *)stage + (64 << 20);
    c.v_new = (const uint8_t *)stage + (128 << 20);
    c.n_new = n_new;
    c.lens = dl;
    KK(kvq_cuda_attend_paged_workspace(ckq, cvq, &c.desc, &c.pages, n_new, &c.ws_bytes));
    CK(cudaMalloc(&c.ws, c.ws_bytes));
    CK(cudaMalloc((void **)&c.out, (size_t)B * n_new * n_q * d * sizeof(float)));
    float ms = time_graph(run_prefill, &c, s);
    /* every new token reads the compressed context once (no reuse across queries yet) */
    double bytes = (double)n_new * rows * (kcs + vcs);
    double gbs = bytes / (ms * 1e-3) / 1e9;
    printf("PREFILL pair=%s batch=%u ctx=%u n_new=%u us=%.2f us_per_token=%.2f GBps=%.1f pct_copy=%.1f\n", pr->name,
           B, L, n_new, ms * 1e3, ms * 1e3 / n_new, gbs, 100.0 * gbs / copy_gbs);
    fflush(stdout);
    CK(cudaFree(kc));
    CK(cudaFree(vc));
    CK(cudaFree(dl));
    CK(cudaFree(c.ws));
    CK(cudaFree(c.out));
    free(lens);
    kvq_cuda_quantizer_free(ckq);
    kvq_cuda_quantizer_free(cvq);
    kvq_quantizer_free(kq);
    kvq_quantizer_free(vq);
}

/* 1 when name is one of the comma-separated entries of list */
static int in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t k = e ? (size_t)(e - p) : strlen(p);
        if (k == n && strncmp(p, name, n) == 0) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    /* --profile: one encode and one attention call (b=8, 32k, rvq1x2/mse2) for ncu */
    int profile = argc > 1 && strcmp(argv[1], "--profile") == 0;
    /* --profile KEY VALUE: that pair instead of rvq1x2/mse2; --pair NAME: one pair only */
    const char *prof_key = profile && argc > 3 ? argv[2] : "turboquant_rvq:bits=1,residuals=2";
    const char *prof_value = profile && argc > 3 ? argv[3] : "turboquant_mse:bits=2";
    const uint32_t prof_batch = profile && argc > 5 ? (uint32_t)atoi(argv[4]) : 8;
    const uint32_t prof_ctx = profile && argc > 5 ? (uint32_t)atoi(argv[5]) : 32768;
    const char *only_batches = NULL, *only_ctxs = NULL;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--batches") == 0) only_batches = argv[i + 1];
        if (strcmp(argv[i], "--ctxs") == 0) only_ctxs = argv[i + 1];
    }
    if (profile && (prof_batch < 1 || prof_batch > 64 || prof_ctx < 16 || prof_ctx > (1u << 20))) {
        fprintf(stderr, "--profile: batch 1..64, context 16..1M\n");
        return 1;
    }
    const char *only_pair = argc > 2 && strcmp(argv[1], "--pair") == 0 ? argv[2] : NULL;
    const int pair_paged = only_pair && argc > 3 && strcmp(argv[3], "--paged") == 0;
    int n_dev = 0;
    if (kvq_cuda_available(&n_dev) != KVQ_OK) {
        fprintf(stderr, "no CUDA device\n");
        return 1;
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("DEVICE %s sms=%d mem_gib=%.1f l2_mib=%.1f\n", prop.name, prop.multiProcessorCount,
           prop.totalGlobalMem / 1073741824.0, prop.l2CacheSize / 1048576.0);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    if (profile) {
        const size_t rows = (size_t)prof_batch * 8 * prof_ctx;
        const size_t stage_rows = rows < ((size_t)1 << 18) ? rows : rows / 8;
        void *stage = random_fp16_rows(stage_rows * 128, 7);
        kvq_quantizer *kq = NULL, *vq = NULL;
        kvq_cuda_quantizer *ckq = make_cq(prof_key, &kq, 1);
        kvq_cuda_quantizer *cvq = make_cq(prof_value, &vq, 2);
        size_t kcs = kvq_code_size(kq), vcs = kvq_code_size(vq);
        attn_ctx ac;
        memset(&ac, 0, sizeof ac);
        ac.kq = ckq;
        ac.vq = cvq;
        ac.desc.batch = prof_batch;
        ac.desc.n_q_heads = 32;
        ac.desc.n_kv_heads = 8;
        ac.desc.head_dim = 128;
        ac.desc.capacity = prof_ctx;
        ac.desc.max_len = prof_ctx;
        ac.desc.scale = 1.0f / sqrtf(128.0f);
        ac.desc.q_dtype = KVQ_CUDA_F16;
        uint8_t *kc = NULL, *vc = NULL;
        CK(cudaMalloc((void **)&kc, rows * kcs));
        CK(cudaMalloc((void **)&vc, rows * vcs));
        fill_codes(ckq, stage, stage_rows, kc, rows, kcs, s);
        fill_codes(cvq, stage, stage_rows, vc, rows, vcs, s);
        int32_t lens_h[64];
        for (uint32_t b = 0; b < prof_batch; b++) lens_h[b] = (int32_t)prof_ctx;
        int32_t *lens_d = NULL;
        CK(cudaMalloc((void **)&lens_d, prof_batch * sizeof(int32_t)));
        CK(cudaMemcpy(lens_d, lens_h, prof_batch * sizeof(int32_t), cudaMemcpyHostToDevice));
        ac.k = kc;
        ac.v = vc;
        ac.q = stage;
        ac.lens = lens_d;
        KK(kvq_cuda_attend_workspace(ckq, cvq, &ac.desc, &ac.ws_bytes));
        CK(cudaMalloc(&ac.ws, ac.ws_bytes));
        CK(cudaMalloc((void **)&ac.out, (size_t)prof_batch * 32 * 128 * sizeof(float)));
        run_attn(&ac, s);
        CK(cudaStreamSynchronize(s));
        printf("PROFILE done\n");
        return 0;
    }

    /* copy ceiling: 2 GiB each way, read + write counted */
    copy_ctx cc;
    cc.bytes = (size_t)2 << 30;
    CK(cudaMalloc(&cc.src, cc.bytes));
    CK(cudaMalloc(&cc.dst, cc.bytes));
    CK(cudaMemset(cc.src, 1, cc.bytes));
    /* plain stream copies (a memcpy node in a graph may take the copy engines) */
    float ms = time_plain(run_copy, &cc, s);
    double copy_gbs = 2.0 * cc.bytes / (ms * 1e-3) / 1e9;
    float ms_g = time_graph(run_copy, &cc, s);
    printf("COPY bytes=%zu ms=%.4f GBps=%.1f graph_GBps=%.1f\n", cc.bytes, ms, copy_gbs,
           2.0 * cc.bytes / (ms_g * 1e-3) / 1e9);
    CK(cudaFree(cc.src));
    CK(cudaFree(cc.dst));

    /* staging rows: 4M rows x 128 fp16 = 1 GiB of input */
    const size_t stage_rows = (size_t)4 << 20;
    void *stage = random_fp16_rows(stage_rows * 128, 7);

    /* encode: fp16 input, bytes = input read + codes written */
    const char *enc_specs[] = {"turboquant_rvq:bits=1,residuals=2", "turboquant_mse:bits=2",
                               "turboquant_mse:bits=4", "rabitq:bits=1", "qjl", "q8_0", "q4_0", "fp16"};
    for (size_t i = 0; i < sizeof enc_specs / sizeof *enc_specs && !only_pair; i++) {
        kvq_quantizer *q = NULL;
        kvq_cuda_quantizer *cq = make_cq(enc_specs[i], &q, 42);
        size_t cs = kvq_code_size(q);
        enc_ctx ec = {cq, stage, stage_rows, NULL};
        if (strcmp(enc_specs[i], "qjl") == 0) ec.rows = stage_rows / 8; /* compute-bound */
        CK(cudaMalloc((void **)&ec.codes, ec.rows * cs));
        ms = time_graph(run_encode, &ec, s);
        double bytes = (double)ec.rows * (256 + cs);
        printf("ENCODE method=%s rows=%zu code_bytes=%zu ms=%.4f GBps=%.1f pct_copy=%.1f Mrows_s=%.1f\n",
               enc_specs[i], ec.rows, cs, ms, bytes / (ms * 1e-3) / 1e9,
               100.0 * bytes / (ms * 1e-3) / 1e9 / copy_gbs, ec.rows / (ms * 1e-3) / 1e6);
        if (i < 4) {
            /* input one element off 16-byte alignment: the warp-per-vector kernel */
            enc_ctx ew = ec;
            ew.x = (const uint8_t *)stage + 2;
            ew.rows = stage_rows - 1;
            float msw = time_graph(run_encode, &ew, s);
            double bw = (double)ew.rows * (256 + cs);
            printf("ENCODE_WARP method=%s ms=%.4f GBps=%.1f pct_copy=%.1f\n", enc_specs[i], msw,
                   bw / (msw * 1e-3) / 1e9, 100.0 * bw / (msw * 1e-3) / 1e9 / copy_gbs);
        }
        fflush(stdout);
        CK(cudaFree(ec.codes));
        kvq_cuda_quantizer_free(cq);
        kvq_quantizer_free(q);
    }

    /* attention */
    const pair pairs[] = {
        {"fp16/fp16", "fp16", "fp16", 0},
        {"q8_0/q8_0", "q8_0", "q8_0", 0},
        {"q4_0/q4_0", "q4_0", "q4_0", 0},
        {"rvq1x2/mse2", "turboquant_rvq:bits=1,residuals=2", "turboquant_mse:bits=2", 0},
        {"rabitq1/mse2", "rabitq:bits=1", "turboquant_mse:bits=2", 0},
        {"rvq1x2/mse4", "turboquant_rvq:bits=1,residuals=2", "turboquant_mse:bits=4", 0},
        {"q8_0/q4_0", "q8_0", "q4_0", 0},
        {"rabitq1/mse4", "rabitq:bits=1", "turboquant_mse:bits=4", 0},
        {"q4_0/fp16", "q4_0", "fp16", 0},
    };
    const uint32_t batches[] = {1, 8, 32};
    const uint32_t ctxs[] = {4096, 32768, 131072};
    const uint32_t n_q = 32, n_kv = 8, d = 128;
    size_t free_b = 0, total_b = 0;
    for (size_t pi = 0; pi < sizeof pairs / sizeof *pairs; pi++) {
        if (quick && pi >= 4) break;
        if (only_pair && !in_list(only_pair, pairs[pi].name)) continue;
        kvq_quantizer *kq = NULL, *vq = NULL;
        kvq_cuda_quantizer *ckq = make_cq(pairs[pi].key, &kq, 1);
        kvq_cuda_quantizer *cvq = make_cq(pairs[pi].value, &vq, 2);
        size_t kcs = kvq_code_size(kq), vcs = kvq_code_size(vq);
        for (size_t bi = 0; bi < 3; bi++)
            for (size_t ci = 0; ci < 3; ci++) {
                uint32_t B = batches[bi], L = ctxs[ci];
                char num[16];
                snprintf(num, sizeof num, "%u", B);
                if (only_batches && !in_list(only_batches, num)) continue;
                snprintf(num, sizeof num, "%u", L);
                if (only_ctxs && !in_list(only_ctxs, num)) continue;
                size_t rows = (size_t)B * n_kv * L;
                CK(cudaMemGetInfo(&free_b, &total_b));
                if (rows * (kcs + vcs) + ((size_t)1 << 30) > free_b) {
                    printf("ATTN pair=%s batch=%u ctx=%u skipped=memory\n", pairs[pi].name, B, L);
                    continue;
                }
                attn_ctx ac;
                memset(&ac, 0, sizeof ac);
                ac.kq = ckq;
                ac.vq = cvq;
                ac.desc.batch = B;
                ac.desc.n_q_heads = n_q;
                ac.desc.n_kv_heads = n_kv;
                ac.desc.head_dim = d;
                ac.desc.capacity = L;
                ac.desc.max_len = L;
                ac.desc.scale = 1.0f / sqrtf((float)d);
                ac.desc.q_dtype = KVQ_CUDA_F16;
                ac.desc.flags = pairs[pi].flags;
                uint8_t *kc = NULL, *vc = NULL;
                CK(cudaMalloc((void **)&kc, rows * kcs));
                CK(cudaMalloc((void **)&vc, rows * vcs));
                fill_codes(ckq, stage, stage_rows, kc, rows, kcs, s);
                fill_codes(cvq, (const uint8_t *)stage + 4096, stage_rows - 16, vc, rows, vcs, s);
                ac.k = kc;
                ac.v = vc;
                ac.q = (const uint8_t *)stage + 8192;
                int32_t *lens_h = malloc(B * sizeof(int32_t));
                for (uint32_t b = 0; b < B; b++) lens_h[b] = (int32_t)L;
                int32_t *lens_d = NULL;
                CK(cudaMalloc((void **)&lens_d, B * sizeof(int32_t)));
                CK(cudaMemcpy(lens_d, lens_h, B * sizeof(int32_t), cudaMemcpyHostToDevice));
                free(lens_h);
                ac.lens = lens_d;
                KK(kvq_cuda_attend_workspace(ckq, cvq, &ac.desc, &ac.ws_bytes));
                CK(cudaMalloc(&ac.ws, ac.ws_bytes));
                CK(cudaMalloc((void **)&ac.out, (size_t)B * n_q * d * sizeof(float)));
                ms = time_graph(run_attn, &ac, s);
                double bytes = (double)rows * (kcs + vcs) + (double)B * n_q * d * (2 + 4);
                double gbs = bytes / (ms * 1e-3) / 1e9;
                printf("ATTN pair=%s batch=%u ctx=%u kv_bytes=%.0f us=%.2f GBps=%.1f pct_copy=%.1f\n",
                       pairs[pi].name, B, L, bytes, ms * 1e3, gbs, 100.0 * gbs / copy_gbs);
                fflush(stdout);
                CK(cudaFree(kc));
                CK(cudaFree(vc));
                CK(cudaFree(lens_d));
                CK(cudaFree(ac.ws));
                CK(cudaFree(ac.out));
            }
        kvq_cuda_quantizer_free(ckq);
        kvq_cuda_quantizer_free(cvq);
        kvq_quantizer_free(kq);
        kvq_quantizer_free(vq);
    }
    /* paged: shuffled page tables, full and mixed lengths in one launch */
    if (!quick && !only_pair) {
        const uint32_t page_sizes[] = {16, 64};
        for (size_t pi = 0; pi < 4; pi++) { /* fp16, q8_0, q4_0, rvq1x2/mse2 */
            const pair *pr = &pairs[pi == 3 ? 3 : pi];
            for (size_t k = 0; k < 2; k++) bench_paged(pr, 32, 32768, page_sizes[k], 0, stage, stage_rows, copy_gbs, s);
            bench_paged(pr, 32, 32768, 64, 1, stage, stage_rows, copy_gbs, s);
        }
        for (size_t pi = 0; pi < 4; pi++) bench_prefill(&pairs[pi], 1, 32768, 64, stage, stage_rows, copy_gbs, s);
    }
    if (pair_paged) {
        const uint32_t page_sizes[] = {16, 32, 64};
        for (size_t pi = 0; pi < sizeof pairs / sizeof *pairs; pi++) {
            if (!in_list(only_pair, pairs[pi].name)) continue;
            for (size_t k = 0; k < 3; k++) bench_paged(&pairs[pi], 32, 32768, page_sizes[k], 0, stage, stage_rows, copy_gbs, s);
        }
    }
    CK(cudaFree(stage));
    CK(cudaStreamDestroy(s));
    return 0;
}
