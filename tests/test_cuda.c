/*
 * test_cuda.c - the GPU kernels against the CPU reference: encode codes byte for byte,
 * decode attention within 1e-3 of a double-precision softmax over the CPU's scores and
 * decoded values, argument checks. Without a GPU every device test is skipped.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_internal.h"
#include "core/core.h"
#include "cpu/cache_kernels.h"
#include "kvq.h"
#include "test.h"

#ifdef KVQ_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static int have_gpu(void) {
    int n = 0;
    return kvq_cuda_available(&n) == KVQ_OK && n > 0;
}

TEST(cuda_without_device_fails_cleanly) {
    if (have_gpu()) SKIP("a GPU is present: the device tests cover it");
    int n = 7;
    CHECK_STATUS(kvq_cuda_available(&n), KVQ_ERR_NO_DEVICE);
    CHECK(n == 0);
    kvq_config cfg;
    REQUIRE_OK(kvq_config_init(&cfg, KVQ_METHOD_TURBOQUANT_MSE, 128));
    kvq_quantizer *q = NULL;
    REQUIRE_OK(kvq_quantizer_create(&cfg, &q));
    kvq_cuda_quantizer *cq = (kvq_cuda_quantizer *)1;
    CHECK_STATUS(kvq_cuda_quantizer_create(q, &cq), KVQ_ERR_NO_DEVICE);
    CHECK(cq == NULL);
    kvq_cuda_quantizer_free(NULL);
    kvq_quantizer_free(q);
}

#ifdef KVQ_HAVE_CUDA

/* Gaussian rows with a few heavy channels, a zero row and q4_0 ties: the corners. */
static void fill_rows(float *x, size_t n, uint32_t d, uint64_t seed) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < n * d; i++) x[i] = (float)kvqi_rng_normal(&r);
    for (size_t i = 0; i < n; i++) x[i * d + (i % d)] *= 8.0f;
    if (n > 2) memset(x + d, 0, d * sizeof(float));
    if (n > 3) {
        x[3 * d + 0] = -5.0f;
        x[3 * d + 1] = 5.0f;
    }
}

static void round_to(float *x, size_t n, kvq_cuda_dtype dt, void *out) {
    for (size_t i = 0; i < n; i++) {
        if (dt == KVQ_CUDA_F16) {
            uint16_t h = kvqi_fp32_to_fp16(x[i]);
            ((uint16_t *)out)[i] = h;
            x[i] = kvqi_fp16_to_fp32(h);
        } else if (dt == KVQ_CUDA_BF16) {
            uint16_t h = kvqi_fp32_to_bf16(x[i]);
            ((uint16_t *)out)[i] = h;
            x[i] = kvqi_bf16_to_fp32(h);
        } else {
            ((float *)out)[i] = x[i];
        }
    }
}

#define CU(expr) REQUIRE((expr) == cudaSuccess)

static const char *k_encode_specs[] = {
    "turboquant_mse:bits=1", "turboquant_mse:bits=2", "turboquant_mse:bits=3",
    "turboquant_mse:bits=4", "turboquant_mse:bits=8", "turboquant_rvq:bits=1,residuals=2",
    "turboquant_rvq:bits=2,residuals=3", "turboquant_rvq:bits=3,residuals=1", "qjl",
    "rabitq:bits=1", "q8_0", "q4_0", "fp16", "turboquant_mse:bits=2,rotate=none",
};

static void body_cuda_encode_matches_cpu_bytes(kvqt_ctx *kvqt_) {
    const uint32_t dims[] = {128, 64, 256};
    const kvq_cuda_dtype dts[] = {KVQ_CUDA_F32, KVQ_CUDA_F16, KVQ_CUDA_BF16};
    const size_t n = 777;
    for (size_t di = 0; di < 3; di++) {
        uint32_t d = dims[di];
        float *x = malloc(n * d * sizeof(float));
        void *xin = malloc(n * d * sizeof(float));
        REQUIRE(x && xin);
        for (size_t si = 0; si < sizeof k_encode_specs / sizeof *k_encode_specs; si++) {
            for (size_t ti = 0; ti < 3; ti++) {
                if (di > 0 && ti > 0) continue; /* dtypes once, at 128 */
                kvq_config cfg;
                char msg[160];
                REQUIRE_OK(kvq_config_parse(k_encode_specs[si], d, &cfg, msg, sizeof msg));
                cfg.seed = 1234 + si;
                kvq_quantizer *q = NULL;
                REQUIRE_OK(kvq_quantizer_create(&cfg, &q));
                kvq_cuda_quantizer *cq = NULL;
                kvq_status st = kvq_cuda_quantizer_create(q, &cq);
                CHECKF(st == KVQ_OK, "%s d=%u: %s", k_encode_specs[si], d, kvq_strerror(st));
                if (st != KVQ_OK) {
                    kvq_quantizer_free(q);
                    continue;
                }
                fill_rows(x, n, d, 99 + si * 7 + ti);
                round_to(x, n * d, dts[ti], xin);
                size_t cs = kvq_code_size(q);
                uint8_t *want = malloc(n * cs), *got = malloc(n * cs);
                REQUIRE(want && got);
                REQUIRE_OK(kvq_encode(q, x, n, want));
                size_t esz = dts[ti] == KVQ_CUDA_F32 ? 4 : 2;
                void *dx = NULL, *dc = NULL;
                CU(cudaMalloc(&dx, (n * d + 8) * esz));
                CU(cudaMalloc(&dc, n * cs));
                /* aligned input takes the thread-per-vector kernels where they exist;
                 * input one element off takes the warp-per-vector ones */
                for (int shift = 0; shift < 2; shift++) {
                    uint8_t *xs = (uint8_t *)dx + shift * esz;
                    CU(cudaMemcpy(xs, xin, n * d * esz, cudaMemcpyHostToDevice));
                    CU(cudaMemset(dc, 0xA5, n * cs));
                    CHECK_OK(kvq_cuda_encode(cq, dts[ti], xs, n, dc, NULL));
                    CU(cudaDeviceSynchronize());
                    CU(cudaMemcpy(got, dc, n * cs, cudaMemcpyDeviceToHost));
                    size_t bad = 0, first = 0;
                    for (size_t i = 0; i < n * cs; i++)
                        if (got[i] != want[i] && bad++ == 0) first = i;
                    CHECKF(bad == 0, "%s d=%u dtype=%zu shift=%d: %zu bytes differ, first row %zu "
                           "byte %zu (gpu %02x cpu %02x)", k_encode_specs[si], d, ti, shift, bad,
                           first / cs, first % cs, got[first], want[first]);
                }
                cudaFree(dx);
                cudaFree(dc);
                free(want);
                free(got);
                kvq_cuda_quantizer_free(cq);
                kvq_quantizer_free(q);
            }
        }
        free(x);
        free(xin);
    }
}

/* Reference attention for one (sequence, q head): the key quantizer's own scores,
 * a double softmax, the value quantizer's decoded rows. */
static void ref_attend(const kvq_quantizer *kq, const kvq_quantizer *vq, const float *qv,
                       const uint8_t *kc, const uint8_t *vc, size_t len, uint32_t d, float scale,
                       float *scores, float *vrow, double *out) {
    for (uint32_t i = 0; i < d; i++) out[i] = 0.0;
    if (len == 0) return;
    kvq_score(kq, qv, kc, len, scores);
    double mx = -INFINITY, sum = 0.0;
    for (size_t t = 0; t < len; t++) mx = fmax(mx, (double)scores[t] * scale);
    size_t vcs = kvq_code_size(vq);
    for (size_t t = 0; t < len; t++) {
        double p = exp((double)scores[t] * scale - mx);
        sum += p;
        kvq_decode(vq, vc + t * vcs, 1, vrow);
        for (uint32_t i = 0; i < d; i++) out[i] += p * vrow[i];
    }
    for (uint32_t i = 0; i < d; i++) out[i] /= sum;
}

typedef struct attn_case {
    const char *key, *value;
} attn_case;

static const attn_case k_attn_cases[] = {
    {"turboquant_rvq:bits=1,residuals=2", "turboquant_mse:bits=2"},
    {"turboquant_rvq:bits=1,residuals=2", "turboquant_mse:bits=4"},
    {"rabitq:bits=1", "turboquant_mse:bits=2"},
    {"turboquant_mse:bits=1", "turboquant_mse:bits=4"},
    {"turboquant_rvq:bits=2,residuals=2", "turboquant_rvq:bits=1,residuals=2"},
    {"qjl", "fp16"},
    {"q8_0", "q8_0"},
    {"q4_0", "q4_0"},
    {"fp16", "fp16"},
    {"q8_0", "q4_0"},
    {"q4_0", "fp16"},
    {"fp16", "q8_0"},
    /* the integer tensor-core kernel's other key formats */
    {"turboquant_mse:bits=1", "turboquant_mse:bits=2"},
    {"turboquant_rvq:bits=1,residuals=3", "turboquant_mse:bits=2"},
    /* 4-bit values on the integer kernel (table lookup) behind every key format it takes;
     * rvq with 3 passes keeps 4-bit values on the fp16 kernel */
    {"rabitq:bits=1", "turboquant_mse:bits=4"},
    {"turboquant_rvq:bits=1,residuals=1", "turboquant_mse:bits=4"},
    {"turboquant_rvq:bits=1,residuals=3", "turboquant_mse:bits=4"},
};

/* mode ATTN_POISON: the rows past each sequence's length hold codes whose norms are inf
 * (values) and NaN (keys), every other byte 0xFF; the result must not depend on them.
 * ATTN_Q_OUTLIER: one query channel 40x the others; ATTN_Q_TINY: queries of ~1e-25 (a
 * near-uniform softmax; kernels that scale the query to fixed point must not lose it). */
enum { ATTN_POISON = 1, ATTN_Q_OUTLIER = 2, ATTN_Q_TINY = 4 };
static void attend_case_ex(kvqt_ctx *kvqt_, const attn_case *c, uint32_t d, uint32_t n_kv,
                           uint32_t group, const int32_t *lens, uint32_t batch, uint32_t capacity,
                           kvq_cuda_dtype qdt, uint32_t flags, int mode) {
    const int poison = mode & ATTN_POISON;
    const uint32_t nq = n_kv * group;
    kvq_config kc, vc;
    char msg[160];
    REQUIRE_OK(kvq_config_parse(c->key, d, &kc, msg, sizeof msg));
    REQUIRE_OK(kvq_config_parse(c->value, d, &vc, msg, sizeof msg));
    kc.seed = 11;
    vc.seed = 22;
    kvq_quantizer *kq = NULL, *vq = NULL;
    REQUIRE_OK(kvq_quantizer_create(&kc, &kq));
    REQUIRE_OK(kvq_quantizer_create(&vc, &vq));
    kvq_cuda_quantizer *ckq = NULL, *cvq = NULL;
    REQUIRE_OK(kvq_cuda_quantizer_create(kq, &ckq));
    REQUIRE_OK(kvq_cuda_quantizer_create(vq, &cvq));
    size_t kcs = kvq_code_size(kq), vcs = kvq_code_size(vq);
    size_t rows = (size_t)batch * n_kv * capacity;
    float *x = malloc(rows * d * sizeof(float));
    uint8_t *kcodes = malloc(rows * kcs), *vcodes = malloc(rows * vcs);
    float *qh = malloc((size_t)batch * nq * d * sizeof(float));
    void *qin = malloc((size_t)batch * nq * d * sizeof(float));
    float *got = malloc((size_t)batch * nq * d * sizeof(float));
    float *scores = malloc(capacity * sizeof(float)), *vrow = malloc(d * sizeof(float));
    double *ref = malloc(d * sizeof(double));
    REQUIRE(x && kcodes && vcodes && qh && qin && got && scores && vrow && ref);
    kvqi_rng r;
    kvqi_rng_seed(&r, 5 + d + group);
    for (size_t i = 0; i < rows * d; i++) x[i] = (float)kvqi_rng_normal(&r) * (1.0f + (i % d == 3) * 4.0f);
    REQUIRE_OK(kvq_encode(kq, x, rows, kcodes));
    for (size_t i = 0; i < rows * d; i++) x[i] = (float)kvqi_rng_normal(&r);
    REQUIRE_OK(kvq_encode(vq, x, rows, vcodes));
    if (poison)
        for (size_t row = 0; row < rows; row++) {
            if (row % capacity < (size_t)lens[row / capacity / n_kv]) continue;
            memset(kcodes + row * kcs, 0xFF, kcs);
            memset(vcodes + row * vcs, 0xFF, vcs);
            vcodes[row * vcs] = 0x00; /* fp16 +inf, little-endian */
            vcodes[row * vcs + 1] = 0x7C;
        }
    /* queries large enough that the softmax is far from uniform */
    for (size_t i = 0; i < (size_t)batch * nq * d; i++) {
        qh[i] = 2.5f * (float)kvqi_rng_normal(&r);
        if ((mode & ATTN_Q_OUTLIER) && i % d == 5) qh[i] *= 40.0f;
        if (mode & ATTN_Q_TINY) qh[i] *= 1e-25f;
    }
    round_to(qh, (size_t)batch * nq * d, qdt, qin);
    kvq_cuda_attn_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.batch = batch;
    desc.n_q_heads = nq;
    desc.n_kv_heads = n_kv;
    desc.head_dim = d;
    desc.capacity = capacity;
    desc.scale = 1.0f / sqrtf((float)d);
    desc.q_dtype = qdt;
    desc.flags = flags;
    for (uint32_t b = 0; b < batch; b++)
        if ((uint32_t)lens[b] > desc.max_len) desc.max_len = (uint32_t)lens[b];
    size_t ws = 0;
    REQUIRE_OK(kvq_cuda_attend_workspace(ckq, cvq, &desc, &ws));
    size_t qsz = (size_t)batch * nq * d * (qdt == KVQ_CUDA_F32 ? 4 : 2);
    void *dq = NULL, *dk = NULL, *dv = NULL, *dl = NULL, *dws = NULL, *dout = NULL;
    CU(cudaMalloc(&dq, qsz));
    CU(cudaMalloc(&dk, rows * kcs));
    CU(cudaMalloc(&dv, rows * vcs));
    CU(cudaMalloc(&dl, batch * sizeof(int32_t)));
    CU(cudaMalloc(&dws, ws));
    CU(cudaMalloc(&dout, (size_t)batch * nq * d * sizeof(float)));
    CU(cudaMemcpy(dq, qin, qsz, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dk, kcodes, rows * kcs, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dv, vcodes, rows * vcs, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dl, lens, batch * sizeof(int32_t), cudaMemcpyHostToDevice));
    CU(cudaMemset(dws, 0xFF, ws));
    CU(cudaMemset(dout, 0xFF, (size_t)batch * nq * d * sizeof(float))); /* NaN poison */
    CHECK_OK(kvq_cuda_attend(ckq, cvq, &desc, dq, dk, dv, dl, dws, ws, dout, NULL));
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(got, dout, (size_t)batch * nq * d * sizeof(float), cudaMemcpyDeviceToHost));
    double worst = 0.0;
    for (uint32_t b = 0; b < batch; b++)
        for (uint32_t hq = 0; hq < nq; hq++) {
            uint32_t h = hq / group;
            size_t base = ((size_t)b * n_kv + h) * capacity;
            ref_attend(kq, vq, qh + ((size_t)b * nq + hq) * d, kcodes + base * kcs,
                       vcodes + base * vcs, (size_t)lens[b], d, desc.scale, scores, vrow, ref);
            const float *o = got + ((size_t)b * nq + hq) * d;
            double num = 0.0, den = 0.0;
            for (uint32_t i = 0; i < d; i++) {
                double e = (double)o[i] - ref[i];
                num += e * e;
                den += ref[i] * ref[i];
            }
            double rel = lens[b] == 0 ? sqrt(num) : sqrt(num / (den > 0 ? den : 1e-30));
            if (!(rel <= worst)) worst = rel; /* NaN sticks */
        }
    CHECKF(worst <= 1e-3, "%s / %s d=%u group=%u flags=%u mode=%d: worst relative error %.3g", c->key,
           c->value, d, group, flags, mode, worst);
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dl);
    cudaFree(dws);
    cudaFree(dout);
    free(x);
    free(kcodes);
    free(vcodes);
    free(qh);
    free(qin);
    free(got);
    free(scores);
    free(vrow);
    free(ref);
    kvq_cuda_quantizer_free(ckq);
    kvq_cuda_quantizer_free(cvq);
    kvq_quantizer_free(kq);
    kvq_quantizer_free(vq);
}

static void attend_case(kvqt_ctx *kvqt_, const attn_case *c, uint32_t d, uint32_t n_kv,
                        uint32_t group, const int32_t *lens, uint32_t batch, uint32_t capacity,
                        kvq_cuda_dtype qdt, uint32_t flags) {
    attend_case_ex(kvqt_, c, d, n_kv, group, lens, batch, capacity, qdt, flags, 0);
}

static void body_cuda_attend_matches_cpu_reference(kvqt_ctx *kvqt_) {
    const int32_t lens[3] = {2500, 1, 1003};
    for (size_t i = 0; i < sizeof k_attn_cases / sizeof *k_attn_cases; i++) {
        attend_case(kvqt_, &k_attn_cases[i], 128, 2, 4, lens, 3, 2560, KVQ_CUDA_F32, 0);
        if (i < 4 || i >= 6) /* the tensor-core cases through the general kernel too */
            attend_case(kvqt_, &k_attn_cases[i], 128, 2, 4, lens, 3, 2560, KVQ_CUDA_F32,
                        KVQ_CUDA_ATTN_GENERIC);
    }
}

static void body_cuda_attend_shapes_and_query_types(kvqt_ctx *kvqt_) {
    const int32_t lens[4] = {0, 64, 333, 130};
    attend_case(kvqt_, &k_attn_cases[0], 128, 3, 1, lens, 4, 400, KVQ_CUDA_F16, 0);
    attend_case(kvqt_, &k_attn_cases[1], 128, 1, 8, lens, 4, 400, KVQ_CUDA_BF16, 0);
    attend_case(kvqt_, &k_attn_cases[2], 128, 2, 3, lens, 4, 400, KVQ_CUDA_F32, 0);
    attend_case(kvqt_, &k_attn_cases[3], 128, 4, 2, lens, 4, 400, KVQ_CUDA_F16, 0);
    attend_case(kvqt_, &k_attn_cases[14], 128, 3, 1, lens, 4, 400, KVQ_CUDA_BF16, 0);
    attend_case(kvqt_, &k_attn_cases[15], 128, 2, 3, lens, 4, 401, KVQ_CUDA_F32, 0);
    attend_case(kvqt_, &k_attn_cases[0], 128, 2, 4, lens, 4, 401, KVQ_CUDA_F32, 0);
    attend_case(kvqt_, &k_attn_cases[0], 64, 2, 4, lens, 4, 400, KVQ_CUDA_F32, 0);
    attend_case(kvqt_, &k_attn_cases[6], 256, 2, 2, lens, 4, 400, KVQ_CUDA_F32, 0);
    /* baseline tensor-core kernels: 1-4 query heads per kv head, fp16 / bf16 queries */
    attend_case(kvqt_, &k_attn_cases[8], 128, 2, 4, lens, 4, 416, KVQ_CUDA_F16, 0);
    attend_case(kvqt_, &k_attn_cases[6], 128, 3, 1, lens, 4, 416, KVQ_CUDA_BF16, 0);
    attend_case(kvqt_, &k_attn_cases[7], 128, 2, 3, lens, 4, 416, KVQ_CUDA_F32, 0);
    attend_case(kvqt_, &k_attn_cases[9], 128, 4, 2, lens, 4, 416, KVQ_CUDA_F16, 0);
}

/* Many (sequence, kv head) pairs of a couple of thousand tokens: the grid fills the device
 * with few splits, so a block streams a chunk of 500-700 tokens (8-11 tiles per warp
 * through the copy stages) and most sequences end inside a tile. */
static void body_cuda_attend_long_chunks(kvqt_ctx *kvqt_) {
    int32_t lens[16];
    for (int b = 0; b < 16; b++) lens[b] = 2048 - (b * 149) % 700;
    static const size_t cases[] = {7, 8, 9}; /* q4_0/q4_0, fp16/fp16, q8_0/q4_0 */
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        attend_case(kvqt_, &k_attn_cases[cases[i]], 128, 8, 2, lens, 16, 2048, KVQ_CUDA_F16, 0);
}

/* The tensor-core kernels may read whole 16-token blocks past a sequence's end (inside its
 * capacity); rows there hold inf / NaN norms and 0xFF codes and must change nothing. */
static void body_cuda_attend_ignores_rows_past_length(kvqt_ctx *kvqt_) {
    const int32_t lens[4] = {37, 5, 250, 16};
    static const size_t cases[] = {0, 1, 2, 3, 8, 12, 13, 14, 15};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        attend_case_ex(kvqt_, &k_attn_cases[cases[i]], 128, 2, 4, lens, 4, 256, KVQ_CUDA_F32, 0, ATTN_POISON);
}

/* Queries with an outlier channel and queries of ~1e-25 through the tensor-core kernels
 * (the integer kernel holds the query in 16-bit fixed point against its largest entry). */
static void body_cuda_attend_query_range(kvqt_ctx *kvqt_) {
    const int32_t lens[3] = {700, 33, 301};
    static const size_t cases[] = {0, 1, 2, 3, 12, 13, 14, 15, 8};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        attend_case_ex(kvqt_, &k_attn_cases[cases[i]], 128, 2, 4, lens, 3, 704, KVQ_CUDA_F32, 0, ATTN_Q_OUTLIER);
        attend_case_ex(kvqt_, &k_attn_cases[cases[i]], 128, 2, 4, lens, 3, 704, KVQ_CUDA_F32, 0, ATTN_Q_TINY);
    }
}

static void body_cuda_rejects_bad_arguments(kvqt_ctx *kvqt_) {
    kvq_config cfg;
    kvq_quantizer *q = NULL, *q64 = NULL, *polar = NULL;
    REQUIRE_OK(kvq_config_init(&cfg, KVQ_METHOD_TURBOQUANT_MSE, 128));
    REQUIRE_OK(kvq_quantizer_create(&cfg, &q));
    REQUIRE_OK(kvq_config_init(&cfg, KVQ_METHOD_TURBOQUANT_MSE, 64));
    REQUIRE_OK(kvq_quantizer_create(&cfg, &q64));
    REQUIRE_OK(kvq_config_init(&cfg, KVQ_METHOD_POLARQUANT, 128));
    REQUIRE_OK(kvq_quantizer_create(&cfg, &polar));
    kvq_cuda_quantizer *cq = NULL, *cq64 = NULL, *cp = NULL;
    REQUIRE_OK(kvq_cuda_quantizer_create(q, &cq));
    REQUIRE_OK(kvq_cuda_quantizer_create(q64, &cq64));
    CHECK_STATUS(kvq_cuda_quantizer_create(polar, &cp), KVQ_ERR_UNSUPPORTED);
    CHECK(cp == NULL);
    CHECK_STATUS(kvq_cuda_quantizer_create(NULL, &cp), KVQ_ERR_INVALID_ARG);
    kvq_cuda_attn_desc d;
    memset(&d, 0, sizeof d);
    d.batch = 1;
    d.n_q_heads = 6;
    d.n_kv_heads = 4;
    d.head_dim = 128;
    d.capacity = 100;
    d.max_len = 100;
    d.scale = 0.1f;
    size_t ws = 0;
    CHECK_STATUS(kvq_cuda_attend_workspace(cq, cq, &d, &ws), KVQ_ERR_INVALID_ARG);
    d.n_q_heads = 8;
    CHECK_STATUS(kvq_cuda_attend_workspace(cq, cq64, &d, &ws), KVQ_ERR_MISMATCH);
    d.max_len = 101;
    CHECK_STATUS(kvq_cuda_attend_workspace(cq, cq, &d, &ws), KVQ_ERR_INVALID_ARG);
    d.max_len = 100;
    REQUIRE_OK(kvq_cuda_attend_workspace(cq, cq, &d, &ws));
    CHECK(ws > 0);
    void *buf = NULL;
    CU(cudaMalloc(&buf, ws));
    CHECK_STATUS(kvq_cuda_attend(cq, cq, &d, buf, buf, buf, buf, buf, ws - 4, buf, NULL),
                 KVQ_ERR_CAPACITY);
    CHECK_STATUS(kvq_cuda_encode(cq, (kvq_cuda_dtype)9, buf, 1, buf, NULL), KVQ_ERR_INVALID_ARG);
    CHECK_OK(kvq_cuda_encode(cq, KVQ_CUDA_F32, buf, 0, buf, NULL));
    cudaFree(buf);
    kvq_cuda_quantizer_free(cq);
    kvq_cuda_quantizer_free(cq64);
    kvq_quantizer_free(q);
    kvq_quantizer_free(q64);
    kvq_quantizer_free(polar);
}

/* ------------------------------------------------------------ paged KV, prefill */

/* A random cache: codes for [batch][n_kv][capacity] of two quantizers, encoded on the CPU. */
typedef struct kv_fixture {
    kvq_quantizer *kq, *vq;
    kvq_cuda_quantizer *ckq, *cvq;
    size_t kcs, vcs;
    uint32_t batch, n_kv, group, d, capacity;
    uint8_t *kcodes, *vcodes; /* contiguous, host */
    int ok;
} kv_fixture;

static void kv_fixture_init(kvqt_ctx *kvqt_, kv_fixture *f, const attn_case *c, uint32_t batch,
                           uint32_t n_kv, uint32_t group, uint32_t capacity, uint64_t seed) {
    memset(f, 0, sizeof *f);
    const uint32_t d = 128;
    kvq_config kc, vc;
    char msg[160];
    REQUIRE_OK(kvq_config_parse(c->key, d, &kc, msg, sizeof msg));
    REQUIRE_OK(kvq_config_parse(c->value, d, &vc, msg, sizeof msg));
    kc.seed = 31;
    vc.seed = 32;
    REQUIRE_OK(kvq_quantizer_create(&kc, &f->kq));
    REQUIRE_OK(kvq_quantizer_create(&vc, &f->vq));
    REQUIRE_OK(kvq_cuda_quantizer_create(f->kq, &f->ckq));
    REQUIRE_OK(kvq_cuda_quantizer_create(f->vq, &f->cvq));
    f->kcs = kvq_code_size(f->kq);
    f->vcs = kvq_code_size(f->vq);
    f->batch = batch;
    f->n_kv = n_kv;
    f->group = group;
    f->d = d;
    f->capacity = capacity;
    size_t rows = (size_t)batch * n_kv * capacity;
    float *x = malloc(rows * d * sizeof(float));
    f->kcodes = malloc(rows * f->kcs);
    f->vcodes = malloc(rows * f->vcs);
    REQUIRE(x && f->kcodes && f->vcodes);
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < rows * d; i++) x[i] = (float)kvqi_rng_normal(&r) * (1.0f + (i % d == 5) * 3.0f);
    REQUIRE_OK(kvq_encode(f->kq, x, rows, f->kcodes));
    for (size_t i = 0; i < rows * d; i++) x[i] = (float)kvqi_rng_normal(&r);
    REQUIRE_OK(kvq_encode(f->vq, x, rows, f->vcodes));
    free(x);
    f->ok = 1;
}

static void kv_fixture_free(kv_fixture *f) {
    free(f->kcodes);
    free(f->vcodes);
    kvq_cuda_quantizer_free(f->ckq);
    kvq_cuda_quantizer_free(f->cvq);
    kvq_quantizer_free(f->kq);
    kvq_quantizer_free(f->vq);
}

/* perm[0..n-1]: 0..n-1 in a shuffled order (Fisher-Yates, draws from r). */
static void shuffled_pages(uint32_t *perm, uint32_t n, kvqi_rng *r) {
    for (uint32_t i = 0; i < n; i++) perm[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(kvqi_rng_next(r) % (i + 1));
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* Spread a contiguous cache over a pool of pages in a shuffled order. pool_*: host, sized
 * n_pages pages; table [batch][max_pages]. */
static void to_pages(const kv_fixture *f, uint32_t page_size, uint32_t max_pages, uint32_t n_pages,
                     int32_t *table, uint8_t *pool_k, uint8_t *pool_v, uint64_t seed) {
    uint32_t *perm = malloc(n_pages * sizeof(uint32_t));
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    shuffled_pages(perm, n_pages, &r);
    memset(pool_k, 0x5A, (size_t)n_pages * f->n_kv * page_size * f->kcs);
    memset(pool_v, 0x5A, (size_t)n_pages * f->n_kv * page_size * f->vcs);
    for (uint32_t b = 0; b < f->batch; b++)
        for (uint32_t pi = 0; pi < max_pages; pi++) {
            uint32_t page = perm[b * max_pages + pi];
            table[b * max_pages + pi] = (int32_t)page;
            for (uint32_t h = 0; h < f->n_kv; h++)
                for (uint32_t s = 0; s < page_size; s++) {
                    uint32_t t = pi * page_size + s;
                    if (t >= f->capacity) continue;
                    size_t src = ((size_t)b * f->n_kv + h) * f->capacity + t;
                    size_t dst = ((size_t)page * f->n_kv + h) * page_size + s;
                    memcpy(pool_k + dst * f->kcs, f->kcodes + src * f->kcs, f->kcs);
                    memcpy(pool_v + dst * f->vcs, f->vcodes + src * f->vcs, f->vcs);
                }
        }
    free(perm);
}

static void *upload(kvqt_ctx *kvqt_, const void *h, size_t n) {
    void *d = NULL;
    if (cudaMalloc(&d, n ? n : 1) != cudaSuccess) {
        CHECK(0);
        return NULL;
    }
    if (n) CHECK(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice) == cudaSuccess);
    return d;
}

static double rel_err(const float *got, const double *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - ref[i];
        num += e * e;
        den += ref[i] * ref[i];
    }
    double r = sqrt(num / (den > 0 ? den : 1e-30));
    return r == r ? r : INFINITY;
}

static void body_cuda_paged_matches_contiguous(kvqt_ctx *kvqt_) {
    /* one pair per kernel: rvq/mse (tensor-core), q4_0/q8_0 (baseline tensor-core),
     * rvq 2-bit keys (general) */
    const attn_case cases[] = {
        {"turboquant_rvq:bits=1,residuals=2", "turboquant_mse:bits=2"},
        {"q4_0", "q8_0"},
        {"fp16", "fp16"},
        {"turboquant_rvq:bits=2,residuals=2", "turboquant_mse:bits=3"},
    };
    const int32_t lens[3] = {700, 5, 0};
    const uint32_t page_sizes[] = {32, 48, 20};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        kv_fixture f;
        kv_fixture_init(kvqt_, &f, &cases[ci], 3, 2, 4, 768, 77 + ci);
        if (!f.ok) return;
        const uint32_t nq = f.n_kv * f.group, d = f.d;
        size_t qn = (size_t)f.batch * nq * d;
        float *qh = malloc(qn * sizeof(float));
        kvqi_rng r;
        kvqi_rng_seed(&r, 500 + ci);
        for (size_t i = 0; i < qn; i++) qh[i] = 2.0f * (float)kvqi_rng_normal(&r);
        kvq_cuda_attn_desc desc;
        memset(&desc, 0, sizeof desc);
        desc.batch = f.batch;
        desc.n_q_heads = nq;
        desc.n_kv_heads = f.n_kv;
        desc.head_dim = d;
        desc.capacity = f.capacity;
        desc.max_len = 700;
        desc.scale = 1.0f / sqrtf((float)d);
        desc.q_dtype = KVQ_CUDA_F32;
        size_t rows = (size_t)f.batch * f.n_kv * f.capacity;
        void *dq = upload(kvqt_, qh, qn * sizeof(float));
        void *dk = upload(kvqt_, f.kcodes, rows * f.kcs), *dv = upload(kvqt_, f.vcodes, rows * f.vcs);
        void *dl = upload(kvqt_, lens, sizeof lens);
        float *want = malloc(qn * sizeof(float)), *got = malloc(qn * sizeof(float));
        size_t ws = 0;
        REQUIRE_OK(kvq_cuda_attend_workspace(f.ckq, f.cvq, &desc, &ws));
        void *dws = NULL, *dout = NULL;
        CU(cudaMalloc(&dws, ws));
        CU(cudaMalloc(&dout, qn * sizeof(float)));
        CHECK_OK(kvq_cuda_attend(f.ckq, f.cvq, &desc, dq, dk, dv, dl, dws, ws, dout, NULL));
        CU(cudaDeviceSynchronize());
        CU(cudaMemcpy(want, dout, qn * sizeof(float), cudaMemcpyDeviceToHost));
        cudaFree(dws);
        for (size_t pi = 0; pi < sizeof page_sizes / sizeof *page_sizes; pi++) {
            uint32_t ps = page_sizes[pi], max_pages = (f.capacity + ps - 1) / ps;
            uint32_t n_pages = f.batch * max_pages + 3;
            int32_t *table = malloc((size_t)f.batch * max_pages * sizeof(int32_t));
            size_t pk = (size_t)n_pages * f.n_kv * ps * f.kcs, pv = (size_t)n_pages * f.n_kv * ps * f.vcs;
            uint8_t *hk = malloc(pk), *hv = malloc(pv);
            REQUIRE(table && hk && hv);
            to_pages(&f, ps, max_pages, n_pages, table, hk, hv, 9 + pi);
            kvq_cuda_pages pg;
            pg.k_pages_dev = upload(kvqt_, hk, pk);
            pg.v_pages_dev = upload(kvqt_, hv, pv);
            pg.page_table_dev = upload(kvqt_, table, (size_t)f.batch * max_pages * sizeof(int32_t));
            pg.page_size = ps;
            pg.max_pages = max_pages;
            REQUIRE_OK(kvq_cuda_attend_paged_workspace(f.ckq, f.cvq, &desc, &pg, 0, &ws));
            CU(cudaMalloc(&dws, ws));
            CU(cudaMemset(dout, 0xFF, qn * sizeof(float)));
            CHECK_OK(kvq_cuda_attend_paged(f.ckq, f.cvq, &desc, &pg, dq, dl, dws, ws, dout, NULL));
            CU(cudaDeviceSynchronize());
            CU(cudaMemcpy(got, dout, qn * sizeof(float), cudaMemcpyDeviceToHost));
            if (ps % 16 == 0) {
                /* same kernel, same split plan: bit for bit */
                CHECKF(memcmp(got, want, qn * sizeof(float)) == 0, "%s / %s page %u: paged != contiguous",
                       cases[ci].key, cases[ci].value, ps);
            } else {
                double worst = 0.0;
                for (size_t row = 0; row < (size_t)f.batch * nq; row++) {
                    double ref[128];
                    for (uint32_t i = 0; i < d; i++) ref[i] = want[row * d + i];
                    double e = row / nq == 2 ? 0.0 : rel_err(got + row * d, ref, d);
                    if (!(e <= worst)) worst = e;
                }
                CHECKF(worst <= 1e-3, "%s / %s page %u: %.3g from contiguous", cases[ci].key,
                       cases[ci].value, ps, worst);
            }
            /* the empty sequence attends to nothing: zeros */
            for (size_t i = 2 * nq * d; i < qn; i++) CHECK(got[i] == 0.0f);
            cudaFree((void *)pg.k_pages_dev);
            cudaFree((void *)pg.v_pages_dev);
            cudaFree((void *)pg.page_table_dev);
            cudaFree(dws);
            free(table);
            free(hk);
            free(hv);
        }
        cudaFree(dq);
        cudaFree(dk);
        cudaFree(dv);
        cudaFree(dl);
        cudaFree(dout);
        free(qh);
        free(want);
        free(got);
        kv_fixture_free(&f);
    }
}

static void body_cuda_append_writes_cpu_codes(kvqt_ctx *kvqt_) {
    const char *specs[] = {"turboquant_mse:bits=2", "q4_0", "rabitq:bits=1"};
    const uint32_t batch = 3, n_kv = 2, d = 128, ps = 16, max_pages = 4, n_pages = 13;
    for (size_t si = 0; si < 3; si++) {
        kvq_config cfg;
        char msg[160];
        REQUIRE_OK(kvq_config_parse(specs[si], d, &cfg, msg, sizeof msg));
        kvq_quantizer *q = NULL;
        REQUIRE_OK(kvq_quantizer_create(&cfg, &q));
        kvq_cuda_quantizer *cq = NULL;
        REQUIRE_OK(kvq_cuda_quantizer_create(q, &cq));
        size_t cs = kvq_code_size(q), pool = (size_t)n_pages * n_kv * ps * cs;
        float *x = malloc((size_t)batch * n_kv * d * sizeof(float));
        uint8_t *want = malloc((size_t)batch * n_kv * cs), *host = malloc(pool);
        REQUIRE(x && want && host);
        fill_rows(x, (size_t)batch * n_kv, d, 3 + si);
        REQUIRE_OK(kvq_encode(q, x, (size_t)batch * n_kv, want));
        int32_t table[3 * 4] = {4, 9, 1, 0, 7, 2, 12, 3, 11, 5, 6, 8};
        int32_t pos[3] = {37, 0, -1}; /* page 1 slot 5; page 0 slot 0; skipped */
        memset(host, 0xC3, pool);
        uint8_t *dpool = upload(kvqt_, host, pool);
        void *dx = upload(kvqt_, x, (size_t)batch * n_kv * d * sizeof(float));
        void *dt = upload(kvqt_, table, sizeof table), *dp = upload(kvqt_, pos, sizeof pos);
        void *scratch = NULL;
        CU(cudaMalloc(&scratch, (size_t)batch * n_kv * cs));
        CHECK_STATUS(kvq_cuda_append(cq, KVQ_CUDA_F32, dx, batch, n_kv, dp, dt, ps, max_pages, dpool,
                                     scratch, (size_t)batch * n_kv * cs - 1, NULL),
                     KVQ_ERR_CAPACITY);
        CHECK_OK(kvq_cuda_append(cq, KVQ_CUDA_F32, dx, batch, n_kv, dp, dt, ps, max_pages, dpool, scratch,
                                 (size_t)batch * n_kv * cs, NULL));
        CU(cudaDeviceSynchronize());
        CU(cudaMemcpy(host, dpool, pool, cudaMemcpyDeviceToHost));
        size_t n_written = 0, bad = 0;
        for (uint32_t b = 0; b < 2; b++)
            for (uint32_t h = 0; h < n_kv; h++) {
                int32_t page = table[b * max_pages + pos[b] / (int32_t)ps];
                size_t slot = ((size_t)page * n_kv + h) * ps + (size_t)(pos[b] % (int32_t)ps);
                if (memcmp(host + slot * cs, want + ((size_t)b * n_kv + h) * cs, cs) != 0) bad++;
                memset(host + slot * cs, 0xC3, cs);
                n_written++;
            }
        CHECKF(bad == 0, "%s: %zu appended codes differ from the CPU's", specs[si], bad);
        size_t touched = 0;
        for (size_t i = 0; i < pool; i++) touched += host[i] != 0xC3;
        CHECKF(touched == 0, "%s: %zu bytes written outside the target slots", specs[si], touched);
        CHECK(n_written == 4);
        cudaFree(dpool);
        cudaFree(dx);
        cudaFree(dt);
        cudaFree(dp);
        cudaFree(scratch);
        free(x);
        free(want);
        free(host);
        kvq_cuda_quantizer_free(cq);
        kvq_quantizer_free(q);
    }
}

static void body_cuda_prefill_matches_cpu_reference(kvqt_ctx *kvqt_) {
    const attn_case cases[] = {
        {"turboquant_rvq:bits=1,residuals=2", "turboquant_mse:bits=2"},
        {"q8_0", "q4_0"},
        {"fp16", "fp16"},
        {"turboquant_mse:bits=3", "turboquant_mse:bits=4"},
    };
    const int32_t lens[2] = {300, 0};
    const uint32_t n_new = 7;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        for (int paged = 0; paged < 2; paged++) {
            kv_fixture f;
            kv_fixture_init(kvqt_, &f, &cases[ci], 2, 2, 2, 320, 900 + ci);
            if (!f.ok) return;
            const uint32_t nq = f.n_kv * f.group, d = f.d, B = f.batch;
            kvq_cuda_dtype dt = ci == 2 ? KVQ_CUDA_F16 : KVQ_CUDA_F32;
            size_t qn = (size_t)B * n_new * nq * d, kn = (size_t)B * n_new * f.n_kv * d;
            float *qh = malloc(qn * sizeof(float)), *kh = malloc(kn * sizeof(float)),
                  *vh = malloc(kn * sizeof(float));
            void *qin = malloc(qn * 4), *kin = malloc(kn * 4), *vin = malloc(kn * 4);
            float *got = malloc(qn * sizeof(float)), *scores = malloc(f.capacity * sizeof(float)),
                  *vrow = malloc(d * sizeof(float));
            REQUIRE(qh && kh && vh && qin && kin && vin && got && scores && vrow);
            kvqi_rng r;
            kvqi_rng_seed(&r, 1000 + ci);
            for (size_t i = 0; i < qn; i++) qh[i] = 2.0f * (float)kvqi_rng_normal(&r);
            for (size_t i = 0; i < kn; i++) kh[i] = (float)kvqi_rng_normal(&r);
            for (size_t i = 0; i < kn; i++) vh[i] = (float)kvqi_rng_normal(&r);
            round_to(qh, qn, dt, qin);
            round_to(kh, kn, dt, kin);
            round_to(vh, kn, dt, vin);
            size_t esz = dt == KVQ_CUDA_F32 ? 4 : 2;
            kvq_cuda_attn_desc desc;
            memset(&desc, 0, sizeof desc);
            desc.batch = B;
            desc.n_q_heads = nq;
            desc.n_kv_heads = f.n_kv;
            desc.head_dim = d;
            desc.capacity = f.capacity;
            desc.max_len = 300;
            desc.scale = 1.0f / sqrtf((float)d);
            desc.q_dtype = dt;
            size_t rows = (size_t)B * f.n_kv * f.capacity;
            kvq_cuda_pages pg;
            int32_t *table = NULL;
            uint8_t *hk = NULL, *hv = NULL;
            if (paged) {
                const uint32_t ps = 64, max_pages = f.capacity / ps, n_pages = B * max_pages;
                table = malloc((size_t)B * max_pages * sizeof(int32_t));
                hk = malloc((size_t)n_pages * f.n_kv * ps * f.kcs);
                hv = malloc((size_t)n_pages * f.n_kv * ps * f.vcs);
                REQUIRE(table && hk && hv);
                to_pages(&f, ps, max_pages, n_pages, table, hk, hv, 5);
                pg.k_pages_dev = upload(kvqt_, hk, (size_t)n_pages * f.n_kv * ps * f.kcs);
                pg.v_pages_dev = upload(kvqt_, hv, (size_t)n_pages * f.n_kv * ps * f.vcs);
                pg.page_table_dev = upload(kvqt_, table, (size_t)B * max_pages * sizeof(int32_t));
                pg.page_size = ps;
                pg.max_pages = max_pages;
            } else {
                pg.k_pages_dev = upload(kvqt_, f.kcodes, rows * f.kcs);
                pg.v_pages_dev = upload(kvqt_, f.vcodes, rows * f.vcs);
                pg.page_table_dev = NULL;
                pg.page_size = f.capacity;
                pg.max_pages = 1;
            }
            void *dq = upload(kvqt_, qin, qn * esz), *dkn = upload(kvqt_, kin, kn * esz),
                 *dvn = upload(kvqt_, vin, kn * esz), *dl = upload(kvqt_, lens, sizeof lens);
            size_t ws = 0;
            REQUIRE_OK(kvq_cuda_attend_paged_workspace(f.ckq, f.cvq, &desc, &pg, n_new, &ws));
            void *dws = NULL, *dout = NULL;
            CU(cudaMalloc(&dws, ws));
            CU(cudaMalloc(&dout, qn * sizeof(float)));
            CU(cudaMemset(dws, 0xFF, ws));
            CU(cudaMemset(dout, 0xFF, qn * sizeof(float)));
            CHECK_OK(kvq_cuda_prefill(f.ckq, f.cvq, &desc, &pg, n_new, dq, dkn, dvn, dl, dws, ws, dout, NULL));
            CU(cudaDeviceSynchronize());
            CU(cudaMemcpy(got, dout, qn * sizeof(float), cudaMemcpyDeviceToHost));
            double worst = 0.0;
            for (uint32_t b = 0; b < B; b++)
                for (uint32_t i = 0; i < n_new; i++)
                    for (uint32_t hq = 0; hq < nq; hq++) {
                        uint32_t h = hq / f.group;
                        const float *qv = qh + (((size_t)b * n_new + i) * nq + hq) * d;
                        size_t base = ((size_t)b * f.n_kv + h) * f.capacity;
                        size_t len = (size_t)lens[b];
                        double ref[128], mx = -INFINITY, sum = 0.0;
                        for (uint32_t e = 0; e < d; e++) ref[e] = 0.0;
                        if (len) kvq_score(f.kq, qv, f.kcodes + base * f.kcs, len, scores);
                        double sc_new[16];
                        for (size_t t = 0; t < len; t++) mx = fmax(mx, (double)scores[t] * desc.scale);
                        for (uint32_t j = 0; j <= i; j++) {
                            const float *kv = kh + (((size_t)b * n_new + j) * f.n_kv + h) * d;
                            double dot = 0.0;
                            for (uint32_t e = 0; e < d; e++) dot += (double)qv[e] * kv[e];
                            sc_new[j] = dot * desc.scale;
                            mx = fmax(mx, sc_new[j]);
                        }
                        for (size_t t = 0; t < len; t++) {
                            double p = exp((double)scores[t] * desc.scale - mx);
                            sum += p;
                            kvq_decode(f.vq, f.vcodes + (base + t) * f.vcs, 1, vrow);
                            for (uint32_t e = 0; e < d; e++) ref[e] += p * vrow[e];
                        }
                        for (uint32_t j = 0; j <= i; j++) {
                            double p = exp(sc_new[j] - mx);
                            sum += p;
                            const float *vv = vh + (((size_t)b * n_new + j) * f.n_kv + h) * d;
                            for (uint32_t e = 0; e < d; e++) ref[e] += p * vv[e];
                        }
                        for (uint32_t e = 0; e < d; e++) ref[e] /= sum;
                        double err = rel_err(got + (((size_t)b * n_new + i) * nq + hq) * d, ref, d);
                        if (!(err <= worst)) worst = err;
                    }
            CHECKF(worst <= 1e-3, "prefill %s / %s paged=%d: worst relative error %.3g", cases[ci].key,
                   cases[ci].value, paged, worst);
            cudaFree((void *)pg.k_pages_dev);
            cudaFree((void *)pg.v_pages_dev);
            cudaFree((void *)pg.page_table_dev);
            cudaFree(dq);
            cudaFree(dkn);
            cudaFree(dvn);
            cudaFree(dl);
            cudaFree(dws);
            cudaFree(dout);
            free(table);
            free(hk);
            free(hv);
            free(qh);
            free(kh);
            free(vh);
            free(qin);
            free(kin);
            free(vin);
            free(got);
            free(scores);
            free(vrow);
            kv_fixture_free(&f);
        }
    }
}

static void body_cuda_paged_rejects_bad_arguments(kvqt_ctx *kvqt_) {
    kvq_config cfg;
    kvq_quantizer *q = NULL;
    REQUIRE_OK(kvq_config_init(&cfg, KVQ_METHOD_Q8_0, 128));
    REQUIRE_OK(kvq_quantizer_create(&cfg, &q));
    kvq_cuda_quantizer *cq = NULL;
    REQUIRE_OK(kvq_cuda_quantizer_create(q, &cq));
    void *buf = NULL;
    CU(cudaMalloc(&buf, 1 << 20));
    kvq_cuda_attn_desc d;
    memset(&d, 0, sizeof d);
    d.batch = 2;
    d.n_q_heads = 8;
    d.n_kv_heads = 2;
    d.head_dim = 128;
    d.max_len = 100;
    d.scale = 0.1f;
    kvq_cuda_pages pg = {buf, buf, buf, 16, 6}; /* 96 tokens < max_len */
    size_t ws = 0;
    CHECK_STATUS(kvq_cuda_attend_paged_workspace(cq, cq, &d, &pg, 0, &ws), KVQ_ERR_INVALID_ARG);
    pg.max_pages = 8; /* 128 tokens >= max_len */
    REQUIRE_OK(kvq_cuda_attend_paged_workspace(cq, cq, &d, &pg, 0, &ws));
    CHECK(ws > 0 && ws < (1 << 20));
    pg.page_size = 0;
    CHECK_STATUS(kvq_cuda_attend_paged(cq, cq, &d, &pg, buf, buf, buf, ws, buf, NULL), KVQ_ERR_INVALID_ARG);
    pg.page_size = 16;
    pg.page_table_dev = NULL; /* contiguous takes exactly one page per sequence */
    CHECK_STATUS(kvq_cuda_attend_paged(cq, cq, &d, &pg, buf, buf, buf, ws, buf, NULL), KVQ_ERR_INVALID_ARG);
    pg.page_table_dev = buf;
    CHECK_STATUS(kvq_cuda_attend_paged(cq, cq, &d, NULL, buf, buf, buf, ws, buf, NULL), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_attend_paged(cq, cq, &d, &pg, buf, buf, buf, ws - 4, buf, NULL), KVQ_ERR_CAPACITY);
    CHECK_STATUS(kvq_cuda_prefill(cq, cq, &d, &pg, 0, buf, buf, buf, buf, buf, ws, buf, NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_prefill(cq, cq, &d, &pg, 4, buf, NULL, buf, buf, buf, ws, buf, NULL),
                 KVQ_ERR_INVALID_ARG);
    REQUIRE_OK(kvq_cuda_attend_paged_workspace(cq, cq, &d, &pg, 4, &ws));
    CHECK_STATUS(kvq_cuda_prefill(cq, cq, &d, &pg, 40000, buf, buf, buf, buf, buf, ws, buf, NULL),
                 KVQ_ERR_UNSUPPORTED);
    CHECK_STATUS(kvq_cuda_append(cq, KVQ_CUDA_F32, buf, 2, 2, buf, NULL, 16, 3, buf, buf, 1 << 20, NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_append(cq, KVQ_CUDA_F32, buf, 0, 2, buf, buf, 16, 3, buf, buf, 1 << 20, NULL),
                 KVQ_ERR_INVALID_ARG);
    cudaFree(buf);
    kvq_cuda_quantizer_free(cq);
    kvq_quantizer_free(q);
}

#endif /* KVQ_HAVE_CUDA */

TEST(cuda_encode_matches_cpu_bytes) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_encode_matches_cpu_bytes(kvqt_);
#endif
}

TEST(cuda_attend_matches_cpu_reference) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_attend_matches_cpu_reference(kvqt_);
#endif
}

TEST(cuda_attend_shapes_and_query_types) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_attend_shapes_and_query_types(kvqt_);
#endif
}

TEST(cuda_attend_long_chunks) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_attend_long_chunks(kvqt_);
#endif
}

TEST(cuda_attend_ignores_rows_past_length) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_attend_ignores_rows_past_length(kvqt_);
#endif
}

TEST(cuda_attend_query_range) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_attend_query_range(kvqt_);
#endif
}

TEST(cuda_rejects_bad_arguments) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_rejects_bad_arguments(kvqt_);
#endif
}

TEST(cuda_paged_matches_contiguous) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_paged_matches_contiguous(kvqt_);
#endif
}

TEST(cuda_append_writes_cpu_codes) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_append_writes_cpu_codes(kvqt_);
#endif
}

TEST(cuda_prefill_matches_cpu_reference) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_prefill_matches_cpu_reference(kvqt_);
#endif
}

TEST(cuda_paged_rejects_bad_arguments) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_paged_rejects_bad_arguments(kvqt_);
#endif
}

/* ------------------------------------------------------------ channel keys (presets) */

TEST(cuda_chan_without_device_fails_cleanly) {
    if (have_gpu()) SKIP("a GPU is present: the device tests cover it");
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_preset(&cfg, "q4", 2, 128, NULL, 0));
    kvq_cuda_chan *kc = (kvq_cuda_chan *)1;
    CHECK_STATUS(kvq_cuda_chan_create(&cfg, &kc), KVQ_ERR_NO_DEVICE);
    CHECK(kc == NULL);
    float x = 0.0f;
    int32_t p = 0;
    /* no handle can exist: refused (no device without nvcc, no handle with it) */
    CHECK(kvq_cuda_chan_observe_queries(NULL, KVQ_CUDA_F32, &x, NULL, 1, 8, 1, 128, &p, &x, NULL) != KVQ_OK);
    size_t ws = 1;
    CHECK(kvq_cuda_chan_prefill_workspace(NULL, NULL, 1, &ws) != KVQ_OK);
    CHECK(kvq_cuda_chan_prefill(NULL, NULL, 1, &x, &x, &x, &x, &p, &x, 0, &x, NULL) != KVQ_OK);
    kvq_cuda_chan_free(NULL);
}

#ifdef KVQ_HAVE_CUDA

/* RoPE-like keys: a steady offset per channel, a slow or fast turn, a little noise; the
 * first rows of each head large (an attention sink). Values Gaussian. */
static void chan_token(uint64_t seed, uint32_t t, uint32_t n_kv, uint32_t d, float *k, float *v) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed * 1000003u + t);
    for (uint32_t h = 0; h < n_kv; h++)
        for (uint32_t j = 0; j < d; j++) {
            double base = ((j * 37 + h * 11) % 17) * 0.4 - 3.0;
            double amp = 0.2 + (j % 5) * 0.6, freq = pow(10000.0, -(double)(j % (d / 2)) / (d / 2));
            double x = base + amp * sin(freq * t + h) + 0.15 * kvqi_rng_normal(&r);
            if (t == 0) x *= 4.0;
            k[h * d + j] = (float)x;
            v[h * d + j] = (float)kvqi_rng_normal(&r);
        }
}

static uint32_t n_coded_of(uint32_t len, uint32_t W, uint32_t C) { return len > W ? (len - W) / C * C : 0; }

static uint32_t gpu_code(const uint8_t *blk, const kvq_cuda_chan_layout *L, uint32_t d, const uint8_t *bits,
                         const uint16_t *off, uint32_t j, uint32_t t) {
    const uint8_t *w = blk + 4 * (size_t)d;
    uint32_t P = L->bits * d, code = 0;
    for (uint32_t p = 0; p < bits[j]; p++) {
        /* plane k = off[j] + p in its run of 32 (the first three transpose steps done at
         * coding): word (k & ~31) + ((k & 3) | (t & 28)), bit (t & 3) | (k & 28) */
        uint32_t word, k = off[j] + p, tt = t % 32;
        memcpy(&word, w + 4 * ((size_t)(t / 32) * P + (k & ~31u) + ((k & 3u) | (tt & 28u))), 4);
        code |= ((word >> ((tt & 3u) | (k & 28u))) & 1u) << p;
    }
    return code;
}

/* The double-precision softmax over the GPU cache's decoded keys and values (the codes
 * the first test holds equal to the CPU's), against the kernel's output. n_new > 0: a
 * prefill of n_new random new tokens a sequence (exact, fp32), query row b * n_new + i
 * over the cache and new tokens 0..i. */
static double chan_attend_check(kvqt_ctx *kvqt_, const kvq_cuda_chan *kc, const kvq_cuda_chan_layout *L,
                                const kvq_quantizer *vq, const uint8_t *cache_dev, const int32_t *lens,
                                uint32_t batch, uint32_t n_kv, uint32_t d, uint32_t capacity, uint32_t group,
                                uint64_t seed, uint32_t flags, uint32_t n_new) {
    uint32_t nq = n_kv * group, maxlen = 0, qps = n_new ? n_new : 1;
    for (uint32_t b = 0; b < batch; b++) maxlen = lens[b] > (int32_t)maxlen ? (uint32_t)lens[b] : maxlen;
    kvq_cuda_attn_desc desc = {batch, nq, n_kv, d, capacity, maxlen, 1.0f / sqrtf((float)d), KVQ_CUDA_F32, flags};
    size_t ws_bytes = 0, nrow = (size_t)batch * qps, nkv = (size_t)batch * n_new * n_kv * d;
    if ((n_new ? kvq_cuda_chan_prefill_workspace(kc, &desc, n_new, &ws_bytes)
               : kvq_cuda_chan_attend_workspace(kc, &desc, &ws_bytes)) != KVQ_OK)
        return INFINITY;
    float *q = malloc(nrow * nq * d * sizeof(float)), *got = malloc(nrow * nq * d * sizeof(float));
    float *knew = malloc((nkv + 1) * sizeof(float)), *vnew = malloc((nkv + 1) * sizeof(float));
    uint8_t *host = malloc(L->bytes);
    float *vrow = malloc(d * sizeof(float));
    double *sc = malloc(((size_t)capacity + qps) * sizeof(double)), *ref = malloc(d * sizeof(double));
    if (!q || !got || !knew || !vnew || !host || !vrow || !sc || !ref) return INFINITY;
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t i = 0; i < nrow * nq * d; i++) q[i] = (float)kvqi_rng_normal(&r) * 0.6f;
    for (size_t i = 0; i < nkv; i++) { /* keys about the cached ones' size, so both parts weigh */
        knew[i] = (float)kvqi_rng_normal(&r) * 2.5f;
        vnew[i] = (float)kvqi_rng_normal(&r);
    }
    void *dq = NULL, *dws = NULL, *dout = NULL, *dlen = NULL, *dk = NULL, *dv = NULL;
    double worst = 0.0;
    if (cudaMalloc(&dq, nrow * nq * d * 4) != cudaSuccess || cudaMalloc(&dws, ws_bytes) != cudaSuccess ||
        cudaMalloc(&dout, nrow * nq * d * 4) != cudaSuccess || cudaMalloc(&dlen, batch * 4) != cudaSuccess ||
        cudaMalloc(&dk, (nkv + 1) * 4) != cudaSuccess || cudaMalloc(&dv, (nkv + 1) * 4) != cudaSuccess)
        worst = INFINITY;
    if (worst == 0.0) {
        cudaMemcpy(dq, q, nrow * nq * d * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dlen, lens, batch * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dk, knew, nkv * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dv, vnew, nkv * 4, cudaMemcpyHostToDevice);
        kvq_status st = n_new ? kvq_cuda_chan_prefill(kc, &desc, n_new, dq, dk, dv, cache_dev, dlen, dws, ws_bytes,
                                                      dout, NULL)
                              : kvq_cuda_chan_attend(kc, &desc, dq, cache_dev, dlen, dws, ws_bytes, dout, NULL);
        CHECKF(st == KVQ_OK, "chan %s: %s", n_new ? "prefill" : "attend", kvq_strerror(st));
        if (cudaDeviceSynchronize() != cudaSuccess) worst = INFINITY;
        cudaMemcpy(got, dout, nrow * nq * d * 4, cudaMemcpyDeviceToHost);
        cudaMemcpy(host, cache_dev, L->bytes, cudaMemcpyDeviceToHost);
    }
    const uint32_t C = L->chunk_tokens, W = L->window, S = L->n_sink, R = W + C;
    for (size_t z = 0; z < nrow; z++) {
        uint32_t b = (uint32_t)(z / qps), i_new = n_new ? (uint32_t)(z % qps) + 1 : 0; /* new tokens seen */
        uint32_t len = (uint32_t)lens[b], nc = n_coded_of(len, W, C);
        for (uint32_t h = 0; h < n_kv; h++) {
            size_t row = (size_t)b * n_kv + h;
            const uint8_t *hs = host + L->heads + row * L->head_bytes;
            const float *mean = (const float *)(hs + ((d + 15) & ~15u));
            const uint16_t *off = (const uint16_t *)(hs + ((d + 15) & ~15u) + 4 * d);
            const uint16_t *ek = (const uint16_t *)(host + L->exact_k) + row * L->exact_rows * d;
            const uint16_t *ev = (const uint16_t *)(host + L->exact_v) + row * L->exact_rows * d;
            for (uint32_t g = 0; g < group; g++) {
                const float *qq = q + (z * nq + h * group + g) * d;
                double mx = -INFINITY, sum = 0.0;
                for (uint32_t t = 0; t < len; t++) {
                    double s = 0.0;
                    for (uint32_t j = 0; j < d; j++) {
                        double kj;
                        if (t < S || t >= nc) {
                            size_t er = t < S ? t : S + t % R;
                            kj = kvqi_fp16_to_fp32(ek[er * d + j]);
                        } else {
                            const uint8_t *blk = host + L->keys + (row * (capacity / C) + t / C) * L->key_block;
                            uint16_t lo_h, st_h;
                            memcpy(&lo_h, blk + 2 * j, 2);
                            memcpy(&st_h, blk + 2 * (d + j), 2);
                            kj = (double)mean[j] + kvqi_fp16_to_fp32(lo_h) +
                                 (double)kvqi_fp16_to_fp32(st_h) * gpu_code(blk, L, d, hs, off, j, t % C);
                        }
                        s += (double)qq[j] * kj;
                    }
                    sc[t] = s / sqrt((double)d);
                    if (sc[t] > mx) mx = sc[t];
                }
                for (uint32_t t = 0; t < i_new; t++) { /* the new tokens, exact */
                    const float *kk = knew + (((size_t)b * n_new + t) * n_kv + h) * d;
                    double s = 0.0;
                    for (uint32_t j = 0; j < d; j++) s += (double)qq[j] * kk[j];
                    sc[len + t] = s / sqrt((double)d);
                    if (sc[len + t] > mx) mx = sc[len + t];
                }
                for (uint32_t j = 0; j < d; j++) ref[j] = 0.0;
                for (uint32_t t = 0; t < len; t++) {
                    double p = exp(sc[t] - mx);
                    sum += p;
                    if (t < S || t >= nc) {
                        size_t er = t < S ? t : S + t % R;
                        for (uint32_t j = 0; j < d; j++) ref[j] += p * kvqi_fp16_to_fp32(ev[er * d + j]);
                    } else {
                        (void)kvq_decode(vq, host + L->values + (row * capacity + t) * L->value_code, 1, vrow);
                        for (uint32_t j = 0; j < d; j++) ref[j] += p * vrow[j];
                    }
                }
                for (uint32_t t = 0; t < i_new; t++) {
                    double p = exp(sc[len + t] - mx);
                    sum += p;
                    const float *vv = vnew + (((size_t)b * n_new + t) * n_kv + h) * d;
                    for (uint32_t j = 0; j < d; j++) ref[j] += p * vv[j];
                }
                const uint32_t seen = len + i_new;
                for (uint32_t j = 0; j < d; j++) ref[j] = seen ? ref[j] / sum : 0.0;
                double e = seen ? rel_err(got + (z * nq + h * group + g) * d, ref, d) : 0.0;
                if (!seen)
                    for (uint32_t j = 0; j < d; j++) e += fabs(got[(z * nq + h * group + g) * d + j]);
                if (e > worst) worst = e;
            }
        }
    }
    cudaFree(dq);
    cudaFree(dws);
    cudaFree(dout);
    cudaFree(dlen);
    cudaFree(dk);
    cudaFree(dv);
    free(q);
    free(got);
    free(knew);
    free(vnew);
    free(host);
    free(vrow);
    free(sc);
    free(ref);
    return worst;
}

/* One preset: batch sequences of different lengths appended token by token on the GPU and
 * to one CPU cache each; the mean key, channel bits, ranges, codes (decoded both ways)
 * and value codes must be the CPU's, and attention at a few lengths within 1e-3 of the
 * double reference. */
/* Queries of token t: a few channels of each head 6-12x the others, so that their
 * weight moves the key bits. */
static void chan_queries(uint64_t seed, uint32_t t, uint32_t nq, uint32_t d, float *q) {
    kvqi_rng r;
    kvqi_rng_seed(&r, seed * 7919u + t);
    for (uint32_t h = 0; h < nq; h++)
        for (uint32_t j = 0; j < d; j++) {
            double s = (j * 5 + h / 2) % 11 == 3 ? 6.0 : 0.5 + (j % 3) * 0.25;
            q[h * d + j] = (float)(s * kvqi_rng_normal(&r));
        }
}

/* observe: queries shown before each append, to the CPU caches and the GPU alike, except
 * sequence 1, whose position-0 query the GPU does not see (a gap: the GPU then codes
 * from ranges alone, as a CPU cache shown no queries). */
/* preset: a preset or cache spec, layer `layer` of n_layers (a preset's plan applied; 0
 * layers: outside the plan). */
static void chan_case(kvqt_ctx *kvqt_, const char *preset, uint32_t layer, uint32_t n_layers, uint32_t d,
                      uint32_t n_kv, uint32_t group, const uint32_t *n_tok, uint32_t batch, kvq_cuda_dtype dt,
                      int observe) {
    kvq_cache_config cfg;
    char msg[200] = "";
    kvq_status cst = kvq_cache_config_parse_layer(preset, n_kv, d, layer, n_layers, &cfg, msg, sizeof msg);
    CHECKF(cst == KVQ_OK, "%s: %s", preset, msg);
    if (cst != KVQ_OK) return;
    kvq_cuda_chan *kc = NULL;
    kvq_status st = kvq_cuda_chan_create(&cfg, &kc);
    CHECKF(st == KVQ_OK, "%s: %s", preset, kvq_strerror(st));
    if (st != KVQ_OK) return;
    uint32_t maxn = 0;
    for (uint32_t b = 0; b < batch; b++) maxn = n_tok[b] > maxn ? n_tok[b] : maxn;
    kvq_cuda_chan_layout L;
    uint32_t C0 = cfg.chunk_tokens ? cfg.chunk_tokens : 64;
    uint32_t capacity = (maxn + C0 - 1) / C0 * C0;
    REQUIRE_OK(kvq_cuda_chan_layout_of(kc, batch, capacity, &L));
    const uint32_t C = L.chunk_tokens, W = L.window;
    CHECK(C == C0 && W == cfg.window && L.n_sink == cfg.n_sink && L.bits == cfg.key.bits);
    kvq_config vc = cfg.value;
    vc.dim = d;
    kvq_quantizer *vq = NULL;
    REQUIRE_OK(kvq_quantizer_create(&vc, &vq));
    kvq_cache **cpu = calloc(batch, sizeof *cpu);
    REQUIRE(cpu);
    for (uint32_t b = 0; b < batch; b++) REQUIRE_OK(kvq_cache_create(&cfg, &cpu[b]));
    kvq_cache *blind = NULL; /* sequence 0 shown no queries: the queries must move some bits */
    if (observe) REQUIRE_OK(kvq_cache_create(&cfg, &blind));
    size_t ws_bytes = 0, row = (size_t)n_kv * d, esz = dt == KVQ_CUDA_F32 ? 4 : 2;
    const size_t qrow = (size_t)n_kv * group * d;
    float *q = malloc(batch * qrow * sizeof(float));
    void *qin = malloc(batch * qrow * 4), *dq = NULL;
    REQUIRE(q && qin);
    CU(cudaMalloc(&dq, batch * qrow * esz));
    REQUIRE_OK(kvq_cuda_chan_append_workspace(kc, batch, &ws_bytes));
    void *dcache = NULL, *dws = NULL, *dk = NULL, *dv = NULL, *dpos = NULL;
    CU(cudaMalloc(&dcache, L.bytes));
    CU(cudaMemset(dcache, 0, L.bytes));
    CU(cudaMalloc(&dws, ws_bytes));
    CU(cudaMalloc(&dk, batch * row * esz));
    CU(cudaMalloc(&dv, batch * row * esz));
    CU(cudaMalloc(&dpos, batch * 4));
    float *k = malloc(batch * row * sizeof(float)), *v = malloc(batch * row * sizeof(float));
    void *kin = malloc(batch * row * 4), *vin = malloc(batch * row * 4);
    int32_t *pos = malloc(batch * 4), *lens = malloc(batch * 4);
    REQUIRE(k && v && kin && vin && pos && lens);
    double worst = 0.0, worst_pf = 0.0;
    int checks = 0;
    for (uint32_t t = 0; t < maxn; t++) {
        for (uint32_t b = 0; b < batch; b++) {
            pos[b] = t < n_tok[b] ? (int32_t)t : -1;
            chan_token(77 + b, t, n_kv, d, k + b * row, v + b * row);
        }
        round_to(k, batch * row, dt, kin);
        round_to(v, batch * row, dt, vin);
        CU(cudaMemcpy(dpos, pos, batch * 4, cudaMemcpyHostToDevice));
        if (observe) {
            for (uint32_t b = 0; b < batch; b++) chan_queries(55 + b, t, n_kv * group, d, q + b * qrow);
            round_to(q, batch * qrow, dt, qin);
            for (uint32_t b = 0; b < batch; b++)
                if (pos[b] >= 0 && b != 1) REQUIRE_OK(kvq_cache_observe_queries(cpu[b], q + b * qrow, n_kv * group, 1));
            if (t == 0 && batch > 1) { /* sequence 1's first query unseen */
                int32_t p1[2] = {pos[0], -1};
                CU(cudaMemcpy(dpos, p1, 2 * 4, cudaMemcpyHostToDevice));
            }
            CU(cudaMemcpy(dq, qin, batch * qrow * esz, cudaMemcpyHostToDevice));
            REQUIRE_OK(kvq_cuda_chan_observe_queries(kc, dt, dq, NULL, batch, n_kv * group, 1, capacity, dpos,
                                                     dcache, NULL));
            CU(cudaMemcpy(dpos, pos, batch * 4, cudaMemcpyHostToDevice));
            if (pos[0] >= 0) REQUIRE_OK(kvq_cache_append(blind, k, v, 1));
        }
        for (uint32_t b = 0; b < batch; b++)
            if (pos[b] >= 0) REQUIRE_OK(kvq_cache_append(cpu[b], k + b * row, v + b * row, 1));
        CU(cudaMemcpy(dk, kin, batch * row * esz, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dv, vin, batch * row * esz, cudaMemcpyHostToDevice));
        st = kvq_cuda_chan_append(kc, dt, dk, dv, batch, capacity, dpos, dcache, dws, ws_bytes, NULL);
        REQUIRE(st == KVQ_OK);
        /* attention at a few lengths: before the first chunk, at and past chunk edges */
        uint32_t len = t + 1;
        if (len == 5 || len == W + C || len == W + C + 1 || len % 97 == 0 || len == maxn) {
            for (uint32_t b = 0; b < batch; b++) lens[b] = len < n_tok[b] ? (int32_t)len : (int32_t)n_tok[b];
            /* split over the context, and one block per head (several chunks and groups
             * per warp, chunk changes inside a warp's range) */
            for (uint32_t flags = 0; flags <= KVQ_CUDA_ATTN_ONE_SPLIT; flags += KVQ_CUDA_ATTN_ONE_SPLIT) {
                double e = chan_attend_check(kvqt_, kc, &L, vq, dcache, lens, batch, n_kv, d, capacity, group, len,
                                             flags, 0);
                checks++;
                if (e > worst) worst = e;
            }
            /* prefill over the same cache: 1 and 7 new tokens a sequence */
            for (uint32_t n_new = 1; n_new <= 7; n_new += 6) {
                double e = chan_attend_check(kvqt_, kc, &L, vq, dcache, lens, batch, n_kv, d, capacity, group,
                                             len + 1000, 0, n_new);
                checks++;
                if (e > worst_pf) worst_pf = e;
            }
        }
    }
    CU(cudaDeviceSynchronize());
    CHECKF(worst <= 1e-3, "%s d=%u group=%u: attention %.3g from the double reference (%d checks)", preset, d,
           group, worst, checks);
    CHECKF(worst_pf <= 1e-3, "%s d=%u group=%u: prefill %.3g from the double reference", preset, d, group, worst_pf);
    uint8_t *host = malloc(L.bytes);
    REQUIRE(host);
    CU(cudaMemcpy(host, dcache, L.bytes, cudaMemcpyDeviceToHost));
    size_t bad_bits = 0, bad_mean = 0, bad_range = 0, bad_code = 0, bad_val = 0, bad_dec = 0, n_codes = 0;
    for (uint32_t b = 0; b < batch; b++) {
        kvq_cache *c = cpu[b];
        uint32_t nc = n_coded_of(n_tok[b], W, C);
        CHECKF(c->n_coded == nc, "%s: CPU coded %zu, GPU %u", preset, c->n_coded, nc);
        if (c->n_coded != nc || nc == 0) continue;
        for (uint32_t h = 0; h < n_kv; h++) {
            size_t r = (size_t)b * n_kv + h;
            const uint8_t *hs = host + L.heads + r * L.head_bytes;
            const float *mean = (const float *)(hs + ((d + 15) & ~15u));
            const uint16_t *off = (const uint16_t *)(hs + ((d + 15) & ~15u) + 4 * d);
            const kvqi_chan_layout *CL = (const kvqi_chan_layout *)(void *)(c->chan_layouts + h * c->chan_layout_stride);
            bad_bits += memcmp(hs, c->chan_bits + (size_t)h * d, d) != 0;
            bad_mean += memcmp(mean, c->key_mean + (size_t)h * d, d * sizeof(float)) != 0;
            for (uint32_t ci = 0; ci < nc / C; ci++) {
                const uint8_t *want = kvqi_chunk_keys(c, ci, h);
                const uint8_t *blk = host + L.keys + (r * (capacity / C) + ci) * L.key_block;
                bad_range += memcmp(want, blk, 4 * (size_t)d) != 0;
                for (uint32_t t = ci == 0 ? cfg.n_sink : 0; t < C; t++)
                    for (uint32_t j = 0; j < d; j++) {
                        uint32_t a = kvqi_chan_code_at(CL, want, j, t), g = gpu_code(blk, &L, d, hs, off, j, t);
                        bad_code += a != g;
                        n_codes++;
                        /* decoded both ways: mean + minimum + step * code */
                        uint16_t lo_h, st_h;
                        memcpy(&lo_h, want + 2 * j, 2);
                        memcpy(&st_h, want + 2 * (d + j), 2);
                        float cpu_x = c->key_mean[h * d + j] + kvqi_fp16_to_fp32(lo_h) + kvqi_fp16_to_fp32(st_h) * (float)a;
                        memcpy(&lo_h, blk + 2 * j, 2);
                        memcpy(&st_h, blk + 2 * (d + j), 2);
                        float gpu_x = mean[j] + kvqi_fp16_to_fp32(lo_h) + kvqi_fp16_to_fp32(st_h) * (float)g;
                        bad_dec += cpu_x != gpu_x;
                    }
            }
            for (uint32_t t = 0; t < nc; t++)
                bad_val += memcmp(kvqi_chunk_values(c, t / C, h) + (t % C) * c->value.code_size,
                                  host + L.values + (r * capacity + t) * L.value_code, L.value_code) != 0;
        }
    }
    CHECKF(bad_bits == 0 && bad_mean == 0 && bad_range == 0,
           "%s d=%u: heads with other bits %zu, other means %zu, chunks with other ranges %zu", preset, d, bad_bits,
           bad_mean, bad_range);
    CHECKF(bad_code == 0 && bad_dec == 0 && n_codes > 0, "%s d=%u: %zu of %zu codes differ (%zu decoded)", preset,
           d, bad_code, n_codes, bad_dec);
    CHECKF(bad_val == 0, "%s d=%u: %zu value codes differ", preset, d, bad_val);
    if (blind && blind->chan_fixed && cpu[0]->chan_fixed)
        CHECKF(memcmp(blind->chan_bits, cpu[0]->chan_bits, (size_t)n_kv * d) != 0,
               "%s d=%u: the observed queries left every key bit where the ranges alone put it", preset, d);
    if (observe) CHECK(blind && blind->chan_fixed); /* the case reaches chunk 0 */
    kvq_cache_free(blind);
    free(q);
    free(qin);
    cudaFree(dq);
    free(host);
    free(k);
    free(v);
    free(kin);
    free(vin);
    free(pos);
    free(lens);
    cudaFree(dcache);
    cudaFree(dws);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dpos);
    for (uint32_t b = 0; b < batch; b++) kvq_cache_free(cpu[b]);
    free(cpu);
    kvq_quantizer_free(vq);
    kvq_cuda_chan_free(kc);
}

static void body_cuda_chan_matches_cpu(kvqt_ctx *kvqt_) {
    /* the GPU coder repeats these constants of the CPU method (src/cuda/chan.cu) */
    CHECK(KVQI_OUTLIER_PROBE_TOKENS == 32 && KVQI_CHAN_REFINE == 3 && KVQI_CHAN_REFINE_BITS == 2u);
    const uint32_t n3[3] = {8 + 3 * 128 + 5, 8 + 128 + 40, 3};
    chan_case(kvqt_, "q3", 0, 0, 128, 2, 4, n3, 3, KVQ_CUDA_F32, 0);
    const uint32_t n2[2] = {8 + 2 * 128 + 77, 8 + 4 * 128};
    chan_case(kvqt_, "q2", 0, 0, 128, 2, 3, n2, 2, KVQ_CUDA_F16, 0);
    const uint32_t n4[2] = {8 + 5 * 64 + 1, 8 + 64 + 63};
    chan_case(kvqt_, "q4", 0, 0, 128, 2, 4, n4, 2, KVQ_CUDA_F32, 0);
    chan_case(kvqt_, "q4", 0, 0, 64, 3, 3, n4, 2, KVQ_CUDA_BF16, 0);
    /* six and eight query heads per KV head: the kernels with eight weights a channel */
    const uint32_t n8[2] = {8 + 3 * 128 + 30, 8 + 128 + 7};
    chan_case(kvqt_, "q4", 0, 0, 128, 1, 8, n8, 2, KVQ_CUDA_F16, 0);
    chan_case(kvqt_, "q2", 0, 0, 64, 2, 6, n8, 2, KVQ_CUDA_F32, 0);
    /* queries observed before each append (kvq_cuda_chan_observe_queries): the same bits */
    chan_case(kvqt_, "q3", 0, 0, 128, 2, 4, n3, 3, KVQ_CUDA_F16, 1);
    chan_case(kvqt_, "q2", 0, 0, 64, 2, 3, n2, 2, KVQ_CUDA_BF16, 1);
    chan_case(kvqt_, "q4", 0, 0, 128, 2, 4, n4, 2, KVQ_CUDA_F32, 1);
    /* the plans' layers: q3's 3-bit values (head dims 128, and 64: a lane's codes of a
     * token at odd byte offsets), q4's 5-bit keys; head dim 256; 1-bit values (the
     * tensor-core values take 1-4 bits) and 5-bit ones (four query heads in the
     * eight-weight kernel) */
    chan_case(kvqt_, "q3", 0, 6, 128, 2, 4, n3, 3, KVQ_CUDA_F16, 1);
    chan_case(kvqt_, "q3", 0, 6, 64, 3, 2, n2, 2, KVQ_CUDA_BF16, 0);
    chan_case(kvqt_, "q4", 1, 6, 128, 2, 4, n4, 2, KVQ_CUDA_F32, 0);
    chan_case(kvqt_, "q4", 0, 0, 256, 1, 4, n4, 2, KVQ_CUDA_F16, 1);
    chan_case(kvqt_, "q2+mse:bits=1", 0, 0, 128, 2, 4, n2, 2, KVQ_CUDA_F32, 0);
    chan_case(kvqt_, "q2+mse:bits=5", 0, 0, 64, 2, 4, n4, 2, KVQ_CUDA_F16, 0);
    /* chunks of 64, 192 and 256 tokens (the presets take 128): a warp's 32-token groups
     * meet a new chunk, and build its B fragments from the query by channel, at other
     * groups */
    chan_case(kvqt_, "q4@chunk=64", 0, 0, 128, 2, 4, n4, 2, KVQ_CUDA_F16, 0);
    chan_case(kvqt_, "q2@chunk=192", 0, 0, 128, 2, 4, n3, 3, KVQ_CUDA_F32, 1);
    const uint32_t n5[2] = {8 + 3 * 256 + 9, 8 + 256 + 100};
    chan_case(kvqt_, "q3@chunk=256", 0, 0, 128, 2, 4, n5, 2, KVQ_CUDA_BF16, 0);
}

static void body_cuda_chan_rejects_bad_arguments(kvqt_ctx *kvqt_) {
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_preset(&cfg, "q3", 2, 128, NULL, 0));
    kvq_cuda_chan *kc = NULL;
    CHECK_STATUS(kvq_cuda_chan_create(NULL, &kc), KVQ_ERR_INVALID_ARG);
    kvq_cache_config bad = cfg;
    bad.sliding_window = 512;
    CHECK_STATUS(kvq_cuda_chan_create(&bad, &kc), KVQ_ERR_UNSUPPORTED);
    kvq_cache_config other;
    REQUIRE_OK(kvq_cache_config_parse("turboquant_mse:bits=4", 2, 128, &other, NULL, 0));
    CHECK_STATUS(kvq_cuda_chan_create(&other, &kc), KVQ_ERR_UNSUPPORTED);
    CHECK(kc == NULL);
    REQUIRE_OK(kvq_cuda_chan_create(&cfg, &kc));
    kvq_cuda_chan_layout L;
    CHECK_STATUS(kvq_cuda_chan_layout_of(kc, 2, 1000, &L), KVQ_ERR_INVALID_ARG); /* not whole chunks */
    CHECK_STATUS(kvq_cuda_chan_layout_of(kc, 0, 1024, &L), KVQ_ERR_INVALID_ARG);
    REQUIRE_OK(kvq_cuda_chan_layout_of(kc, 2, 1024, &L));
    CHECK(L.bytes >= L.exact_v + 2ull * 2 * 2 * L.exact_rows * 128);
    kvq_cuda_attn_desc d = {2, 8, 2, 128, 1024, 1024, 0.1f, KVQ_CUDA_F32, 0};
    size_t ws = 0;
    REQUIRE_OK(kvq_cuda_chan_attend_workspace(kc, &d, &ws));
    kvq_cuda_attn_desc dd = d;
    dd.n_kv_heads = 4;
    CHECK_STATUS(kvq_cuda_chan_attend_workspace(kc, &dd, &ws), KVQ_ERR_MISMATCH);
    dd = d;
    dd.max_len = 2048;
    CHECK_STATUS(kvq_cuda_chan_attend_workspace(kc, &dd, &ws), KVQ_ERR_INVALID_ARG);
    dd = d;
    dd.n_q_heads = 2 * 9;
    CHECK_STATUS(kvq_cuda_chan_attend_workspace(kc, &dd, &ws), KVQ_ERR_UNSUPPORTED);
    void *p = NULL;
    CU(cudaMalloc(&p, 4096));
    CHECK_STATUS(kvq_cuda_chan_attend(kc, &d, p, p, (const int32_t *)p, p, 0, (float *)p, NULL), KVQ_ERR_CAPACITY);
    /* prefill: no new tokens, no new keys, more query rows than a grid holds, a workspace
     * sized for decode (one slot a row fewer) */
    size_t wsp = 0;
    CHECK_STATUS(kvq_cuda_chan_prefill_workspace(kc, &d, 0, &wsp), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_prefill_workspace(kc, &d, 40000, &wsp), KVQ_ERR_UNSUPPORTED);
    REQUIRE_OK(kvq_cuda_chan_prefill_workspace(kc, &d, 1, &wsp));
    CHECK(wsp > ws);
    CHECK_STATUS(kvq_cuda_chan_prefill(kc, &d, 0, p, p, p, p, (const int32_t *)p, p, wsp, (float *)p, NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_prefill(kc, &d, 1, p, NULL, p, p, (const int32_t *)p, p, wsp, (float *)p, NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_prefill(kc, &d, 1, p, p, p, p, (const int32_t *)p, p, ws, (float *)p, NULL),
                 KVQ_ERR_CAPACITY);
    CHECK_STATUS(kvq_cuda_chan_append(kc, KVQ_CUDA_F32, p, p, 2, 1024, (const int32_t *)p, p, p, 0, NULL),
                 KVQ_ERR_CAPACITY);
    CHECK_STATUS(kvq_cuda_chan_append(kc, KVQ_CUDA_F32, p, p, 2, 1000, (const int32_t *)p, p, p, 4096, NULL),
                 KVQ_ERR_INVALID_ARG);
    /* queries: a head count that is no multiple of the KV heads, no queries, a capacity
     * of no whole chunks, an unknown dtype */
    CHECK_STATUS(kvq_cuda_chan_observe_queries(kc, KVQ_CUDA_F32, p, NULL, 2, 7, 1, 1024, (const int32_t *)p, p, NULL),
                 KVQ_ERR_MISMATCH);
    CHECK_STATUS(kvq_cuda_chan_observe_queries(kc, KVQ_CUDA_F32, NULL, NULL, 2, 8, 1, 1024, (const int32_t *)p, p,
                                               NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_observe_queries(kc, KVQ_CUDA_F32, p, NULL, 2, 8, 0, 1024, (const int32_t *)p, p, NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_observe_queries(kc, KVQ_CUDA_F32, p, NULL, 2, 8, 1, 1000, (const int32_t *)p, p, NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_observe_queries(kc, (kvq_cuda_dtype)7, p, NULL, 2, 8, 1, 1024, (const int32_t *)p, p,
                                               NULL),
                 KVQ_ERR_INVALID_ARG);
    cudaFree(p);
    kvq_cuda_chan_free(kc);
}

/* Long sequences over many KV heads, so that the split plan gives each block a run of
 * several chunks (fewer splits than chunks): every chunk of every split must be attended
 * (a split once stopped at the wrong chunk and the tests, all of one chunk a split, passed).
 * Coded on the GPU only (cuda_chan_matches_cpu holds the codes to the CPU's); attention
 * against the double reference, split and one block per head. */
static void chan_split_case(kvqt_ctx *kvqt_, const char *preset, uint32_t d, uint32_t n_kv, uint32_t group,
                            const uint32_t n_tok[2]) {
    const uint32_t batch = 2;
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_preset(&cfg, preset, n_kv, d, NULL, 0));
    kvq_cuda_chan *kc = NULL;
    REQUIRE_OK(kvq_cuda_chan_create(&cfg, &kc));
    const uint32_t maxn = n_tok[0] > n_tok[1] ? n_tok[0] : n_tok[1];
    const uint32_t C = cfg.chunk_tokens ? cfg.chunk_tokens : 64, capacity = (maxn + C - 1) / C * C;
    kvq_cuda_chan_layout L;
    REQUIRE_OK(kvq_cuda_chan_layout_of(kc, batch, capacity, &L));
    kvq_config vc = cfg.value;
    vc.dim = d;
    kvq_quantizer *vq = NULL;
    REQUIRE_OK(kvq_quantizer_create(&vc, &vq));
    size_t ws_bytes = 0, row = (size_t)n_kv * d;
    REQUIRE_OK(kvq_cuda_chan_append_workspace(kc, batch, &ws_bytes));
    void *dcache = NULL, *dws = NULL, *dk = NULL, *dv = NULL, *dpos = NULL;
    CU(cudaMalloc(&dcache, L.bytes));
    CU(cudaMemset(dcache, 0, L.bytes));
    CU(cudaMalloc(&dws, ws_bytes));
    CU(cudaMalloc(&dk, batch * row * 4));
    CU(cudaMalloc(&dv, batch * row * 4));
    CU(cudaMalloc(&dpos, batch * 4));
    float *k = malloc(batch * row * sizeof(float)), *v = malloc(batch * row * sizeof(float));
    int32_t pos[2], lens[2];
    REQUIRE(k && v);
    for (uint32_t t = 0; t < maxn; t++) {
        for (uint32_t b = 0; b < batch; b++) {
            pos[b] = t < n_tok[b] ? (int32_t)t : -1;
            chan_token(91 + b, t, n_kv, d, k + b * row, v + b * row);
        }
        CU(cudaMemcpy(dk, k, batch * row * 4, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dv, v, batch * row * 4, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dpos, pos, batch * 4, cudaMemcpyHostToDevice));
        REQUIRE_OK(kvq_cuda_chan_append(kc, KVQ_CUDA_F32, dk, dv, batch, capacity, dpos, dcache, dws, ws_bytes, NULL));
    }
    CU(cudaDeviceSynchronize());
    for (uint32_t b = 0; b < batch; b++) lens[b] = (int32_t)n_tok[b];
    /* the plan: fewer splits than the longest sequence's chunks, more than one */
    const uint32_t nq = n_kv * group, chunks = n_coded_of(maxn, L.window, C) / C;
    kvq_cuda_attn_desc desc = {batch, nq, n_kv, d, capacity, maxn, 1.0f / sqrtf((float)d), KVQ_CUDA_F32, 0};
    size_t attn_ws = 0;
    REQUIRE_OK(kvq_cuda_chan_attend_workspace(kc, &desc, &attn_ws));
    const size_t n_slots = attn_ws / ((size_t)batch * nq * (d + 2) * sizeof(float));
    CHECKF(n_slots >= 3 && n_slots - 1 < chunks, "%s d=%u: %zu splits for %u chunks (the case needs 2..chunks-1)",
           preset, d, n_slots - 1, chunks);
    for (uint32_t flags = 0; flags <= KVQ_CUDA_ATTN_ONE_SPLIT; flags += KVQ_CUDA_ATTN_ONE_SPLIT) {
        double e = chan_attend_check(kvqt_, kc, &L, vq, dcache, lens, batch, n_kv, d, capacity, group, 5, flags, 0);
        CHECKF(e <= 1e-3, "%s d=%u flags=%u: attention %.3g from the double reference (%zu splits, %u chunks)",
               preset, d, flags, e, n_slots - 1, chunks);
    }
    free(k);
    free(v);
    cudaFree(dcache);
    cudaFree(dws);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dpos);
    kvq_quantizer_free(vq);
    kvq_cuda_chan_free(kc);
}

static void body_cuda_chan_splits_cover_every_chunk(kvqt_ctx *kvqt_) {
    const uint32_t n4[2] = {8 + 40 * 128 + 30, 8 + 17 * 128 + 3};
    chan_split_case(kvqt_, "q4", 128, 32, 4, n4);
    const uint32_t n2[2] = {8 + 13 * 128 + 100, 8 + 44 * 128 + 1};
    chan_split_case(kvqt_, "q2", 64, 48, 3, n2);
}

/* The paged calls against the contiguous ones on the same tokens: a prompt piece through
 * append_n, then one token at a time, sequences of three lengths, pages given in a
 * shuffled order from a pool with spare pages. The head states, exact rows, key blocks
 * and value codes must be the same bytes, and attention and prefill the same bits (one
 * kernel, the same plan: only the addresses differ). */
static void chan_paged_case(kvqt_ctx *kvqt_, const char *preset, uint32_t d, uint32_t n_kv, uint32_t group,
                            kvq_cuda_dtype dt) {
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_parse_layer(preset, n_kv, d, 0, 0, &cfg, NULL, 0));
    kvq_cuda_chan *kc = NULL;
    REQUIRE_OK(kvq_cuda_chan_create(&cfg, &kc));
    kvq_cuda_chan_layout Lc, Lp;
    const uint32_t C = cfg.chunk_tokens, W = cfg.window, batch = 3;
    const uint32_t n_tok[3] = {3 * C + W + 17, C + W + 5, 2 * C + W + 1}, n0 = C + W + 3;
    const uint32_t max_pages = (3 * C + W + 17 + C - 1) / C, capacity = max_pages * C;
    REQUIRE_OK(kvq_cuda_chan_layout_of(kc, batch, capacity, &Lc));
    REQUIRE_OK(kvq_cuda_chan_layout_paged(kc, batch, &Lp));
    CHECK(Lp.values == Lp.keys && Lp.exact_k == Lp.values && Lp.bytes < Lc.bytes);
    const size_t n_pages = (size_t)batch * max_pages + 3, kpage = (size_t)n_kv * Lc.key_block,
                 vpage = (size_t)n_kv * C * Lc.value_code;
    int32_t *table = malloc((size_t)batch * max_pages * 4);
    uint32_t *perm = malloc(n_pages * 4);
    REQUIRE(table && perm);
    kvqi_rng r;
    kvqi_rng_seed(&r, 4242 + d);
    shuffled_pages(perm, (uint32_t)n_pages, &r);
    for (size_t i = 0; i < (size_t)batch * max_pages; i++) table[i] = (int32_t)perm[i];
    uint8_t *cc = NULL, *cp = NULL, *kpool = NULL, *vpool = NULL;
    int32_t *dtable = NULL, *dpos = NULL;
    CU(cudaMalloc((void **)&cc, Lc.bytes));
    CU(cudaMalloc((void **)&cp, Lp.bytes));
    CU(cudaMalloc((void **)&kpool, n_pages * kpage));
    CU(cudaMalloc((void **)&vpool, n_pages * vpage));
    CU(cudaMemset(cc, 0, Lc.bytes));
    CU(cudaMemset(cp, 0, Lp.bytes));
    CU(cudaMemset(kpool, 0, n_pages * kpage));
    CU(cudaMemset(vpool, 0, n_pages * vpage));
    CU(cudaMalloc((void **)&dtable, (size_t)batch * max_pages * 4));
    CU(cudaMemcpy(dtable, table, (size_t)batch * max_pages * 4, cudaMemcpyHostToDevice));
    CU(cudaMalloc((void **)&dpos, batch * 4));
    kvq_cuda_pages pg = {kpool, vpool, dtable, C, max_pages};
    const size_t row = (size_t)n_kv * d, esz = dt == KVQ_CUDA_F32 ? 4 : 2;
    size_t ws1 = 0, wsn = 0;
    REQUIRE_OK(kvq_cuda_chan_append_workspace(kc, batch, &ws1));
    REQUIRE_OK(kvq_cuda_chan_append_n_workspace(kc, batch, n0, &wsn));
    void *dws = NULL, *dk = NULL, *dv = NULL;
    CU(cudaMalloc(&dws, ws1 > wsn ? ws1 : wsn));
    CU(cudaMalloc(&dk, batch * row * n0 * esz));
    CU(cudaMalloc(&dv, batch * row * n0 * esz));
    float *k = malloc(batch * row * n0 * sizeof(float)), *v = malloc(batch * row * n0 * sizeof(float));
    void *kin = malloc(batch * row * n0 * 4), *vin = malloc(batch * row * n0 * 4);
    int32_t pos[3];
    REQUIRE(k && v && kin && vin);
    /* the prompt piece: [batch][n_kv][n0][d] */
    float *kt = malloc(row * sizeof(float)), *vt = malloc(row * sizeof(float));
    REQUIRE(kt && vt);
    for (uint32_t b = 0; b < batch; b++)
        for (uint32_t t = 0; t < n0; t++) {
            chan_token(300 + b, t, n_kv, d, kt, vt);
            for (uint32_t h = 0; h < n_kv; h++) {
                memcpy(k + (((size_t)b * n_kv + h) * n0 + t) * d, kt + (size_t)h * d, d * sizeof(float));
                memcpy(v + (((size_t)b * n_kv + h) * n0 + t) * d, vt + (size_t)h * d, d * sizeof(float));
            }
        }
    round_to(k, batch * row * n0, dt, kin);
    round_to(v, batch * row * n0, dt, vin);
    CU(cudaMemcpy(dk, kin, batch * row * n0 * esz, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dv, vin, batch * row * n0 * esz, cudaMemcpyHostToDevice));
    for (uint32_t b = 0; b < batch; b++) pos[b] = 0;
    CU(cudaMemcpy(dpos, pos, batch * 4, cudaMemcpyHostToDevice));
    REQUIRE_OK(kvq_cuda_chan_append_n(kc, dt, dk, dv, NULL, batch, n0, capacity, dpos, cc, dws, wsn, NULL));
    REQUIRE_OK(kvq_cuda_chan_append_n_paged(kc, dt, dk, dv, NULL, batch, n0, &pg, dpos, cp, dws, wsn, NULL));
    for (uint32_t t = n0; t < n_tok[0]; t++) {
        for (uint32_t b = 0; b < batch; b++) {
            pos[b] = t < n_tok[b] ? (int32_t)t : -1;
            chan_token(300 + b, t, n_kv, d, k + b * row, v + b * row);
        }
        round_to(k, batch * row, dt, kin);
        round_to(v, batch * row, dt, vin);
        CU(cudaMemcpy(dk, kin, batch * row * esz, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dv, vin, batch * row * esz, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dpos, pos, batch * 4, cudaMemcpyHostToDevice));
        REQUIRE_OK(kvq_cuda_chan_append(kc, dt, dk, dv, batch, capacity, dpos, cc, dws, ws1, NULL));
        REQUIRE_OK(kvq_cuda_chan_append_paged(kc, dt, dk, dv, batch, &pg, dpos, cp, dws, ws1, NULL));
    }
    CU(cudaDeviceSynchronize());
    /* the bytes: head states and exact rows region by region, key blocks and value codes
     * chunk by chunk through the table */
    uint8_t *hc = malloc(Lc.bytes), *hp = malloc(Lp.bytes), *hk = malloc(n_pages * kpage), *hv = malloc(n_pages * vpage);
    REQUIRE(hc && hp && hk && hv);
    CU(cudaMemcpy(hc, cc, Lc.bytes, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(hp, cp, Lp.bytes, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(hk, kpool, n_pages * kpage, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(hv, vpool, n_pages * vpage, cudaMemcpyDeviceToHost));
    const size_t rows = (size_t)batch * n_kv, ex = rows * Lc.exact_rows * d * 2;
    CHECKF(memcmp(hc + Lc.heads, hp + Lp.heads, rows * Lc.head_bytes) == 0, "%s d=%u: paged head states differ",
           preset, d);
    CHECKF(memcmp(hc + Lc.exact_k, hp + Lp.exact_k, ex) == 0 && memcmp(hc + Lc.exact_v, hp + Lp.exact_v, ex) == 0,
           "%s d=%u: paged exact rows differ", preset, d);
    size_t bad_k = 0, bad_v = 0, n_blocks = 0;
    for (uint32_t b = 0; b < batch; b++)
        for (uint32_t h = 0; h < n_kv; h++) {
            const size_t rr = (size_t)b * n_kv + h;
            for (uint32_t ci = 0; ci < n_coded_of(n_tok[b], W, C) / C; ci++, n_blocks++)
                bad_k += memcmp(hc + Lc.keys + (rr * max_pages + ci) * Lc.key_block,
                                hk + ((size_t)table[b * max_pages + ci] * n_kv + h) * Lc.key_block, Lc.key_block) != 0;
            for (uint32_t t = 0; t < n_tok[b]; t++)
                bad_v += memcmp(hc + Lc.values + (rr * capacity + t) * Lc.value_code,
                                hv + (((size_t)table[b * max_pages + t / C] * n_kv + h) * C + t % C) * Lc.value_code,
                                Lc.value_code) != 0;
        }
    CHECKF(n_blocks > 0 && bad_k == 0 && bad_v == 0, "%s d=%u: %zu of %zu key blocks, %zu value codes differ",
           preset, d, bad_k, n_blocks, bad_v);
    /* attention and a 3-token prefill, both ways */
    const uint32_t nq = n_kv * group, n_new = 3;
    kvq_cuda_attn_desc desc = {batch, nq, n_kv, d, capacity, n_tok[0], 1.0f / sqrtf((float)d), KVQ_CUDA_F32, 0};
    size_t wa = 0, wp = 0;
    REQUIRE_OK(kvq_cuda_chan_attend_workspace(kc, &desc, &wa));
    REQUIRE_OK(kvq_cuda_chan_prefill_workspace(kc, &desc, n_new, &wp));
    const size_t qn = (size_t)batch * n_new * nq * d, kn = (size_t)batch * n_new * row;
    float *q = malloc(qn * 4), *kn_h = malloc(kn * 4), *o1 = malloc(qn * 4), *o2 = malloc(qn * 4);
    REQUIRE(q && kn_h && o1 && o2);
    for (size_t i = 0; i < qn; i++) q[i] = (float)kvqi_rng_normal(&r) * 0.6f;
    for (size_t i = 0; i < kn; i++) kn_h[i] = (float)kvqi_rng_normal(&r);
    void *dq = NULL, *dkn = NULL, *dwa = NULL, *dout = NULL;
    int32_t *dlen = NULL;
    CU(cudaMalloc(&dq, qn * 4));
    CU(cudaMalloc(&dkn, kn * 4));
    CU(cudaMalloc(&dwa, wa > wp ? wa : wp));
    CU(cudaMalloc(&dout, qn * 4));
    CU(cudaMalloc((void **)&dlen, batch * 4));
    CU(cudaMemcpy(dq, q, qn * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dkn, kn_h, kn * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dlen, n_tok, batch * 4, cudaMemcpyHostToDevice));
    for (int pf = 0; pf < 2; pf++) {
        const size_t on = pf ? qn : (size_t)batch * nq * d;
        if (pf)
            REQUIRE_OK(kvq_cuda_chan_prefill(kc, &desc, n_new, dq, dkn, dkn, cc, dlen, dwa, wp, (float *)dout, NULL));
        else
            REQUIRE_OK(kvq_cuda_chan_attend(kc, &desc, dq, cc, dlen, dwa, wa, (float *)dout, NULL));
        CU(cudaMemcpy(o1, dout, on * 4, cudaMemcpyDeviceToHost));
        CU(cudaMemset(dout, 0, on * 4));
        if (pf)
            REQUIRE_OK(kvq_cuda_chan_prefill_paged(kc, &desc, &pg, n_new, dq, dkn, dkn, cp, dlen, dwa, wp,
                                                   (float *)dout, NULL));
        else
            REQUIRE_OK(kvq_cuda_chan_attend_paged(kc, &desc, &pg, dq, cp, dlen, dwa, wa, (float *)dout, NULL));
        CU(cudaMemcpy(o2, dout, on * 4, cudaMemcpyDeviceToHost));
        double mag = 0.0;
        for (size_t i = 0; i < on; i++) mag += fabs(o1[i]);
        CHECKF(mag > 0.0 && memcmp(o1, o2, on * 4) == 0, "%s d=%u: paged %s differs from contiguous", preset, d,
               pf ? "prefill" : "attention");
    }
    /* bad arguments: a page size other than the chunk, no table, a capacity that is not
     * max_pages chunks, no pages */
    kvq_cuda_pages bad = pg;
    bad.page_size = C / 2;
    CHECK_STATUS(kvq_cuda_chan_attend_paged(kc, &desc, &bad, dq, cp, dlen, dwa, wa, (float *)dout, NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_append_paged(kc, dt, dk, dv, batch, &bad, dpos, cp, dws, ws1, NULL), KVQ_ERR_INVALID_ARG);
    bad = pg;
    bad.page_table_dev = NULL;
    CHECK_STATUS(kvq_cuda_chan_append_n_paged(kc, dt, dk, dv, NULL, batch, 1, &bad, dpos, cp, dws, wsn, NULL),
                 KVQ_ERR_INVALID_ARG);
    kvq_cuda_attn_desc d2 = desc;
    d2.capacity = capacity + C;
    CHECK_STATUS(kvq_cuda_chan_attend_paged(kc, &d2, &pg, dq, cp, dlen, dwa, wa, (float *)dout, NULL),
                 KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cuda_chan_prefill_paged(kc, &desc, NULL, n_new, dq, dkn, dkn, cp, dlen, dwa, wp, (float *)dout,
                                             NULL),
                 KVQ_ERR_INVALID_ARG);
    free(q);
    free(kn_h);
    free(o1);
    free(o2);
    free(hc);
    free(hp);
    free(hk);
    free(hv);
    free(k);
    free(v);
    free(kin);
    free(vin);
    free(kt);
    free(vt);
    free(table);
    free(perm);
    cudaFree(dq);
    cudaFree(dkn);
    cudaFree(dwa);
    cudaFree(dout);
    cudaFree(dlen);
    cudaFree(dws);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(cc);
    cudaFree(cp);
    cudaFree(kpool);
    cudaFree(vpool);
    cudaFree(dtable);
    cudaFree(dpos);
    kvq_cuda_chan_free(kc);
}

static void body_cuda_chan_paged_matches_contiguous(kvqt_ctx *kvqt_) {
    chan_paged_case(kvqt_, "q3", 128, 2, 4, KVQ_CUDA_F16);
    chan_paged_case(kvqt_, "q4", 64, 3, 2, KVQ_CUDA_F32);
    /* q4 at head_dim 128: its one-value-buffer kernel needs more than 48 KB of shared
     * memory, so the paged variant too must be allowed it (the CHAN_SV=2 build takes it) */
    chan_paged_case(kvqt_, "q4", 128, 2, 4, KVQ_CUDA_F16);
}

#endif

TEST(cuda_chan_matches_cpu) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_chan_matches_cpu(kvqt_);
#endif
}

TEST(cuda_chan_splits_cover_every_chunk) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_chan_splits_cover_every_chunk(kvqt_);
#endif
}

TEST(cuda_chan_paged_matches_contiguous) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_chan_paged_matches_contiguous(kvqt_);
#endif
}

TEST(cuda_chan_rejects_bad_arguments) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_chan_rejects_bad_arguments(kvqt_);
#endif
}
