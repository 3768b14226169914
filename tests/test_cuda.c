/*
 * test_cuda.c - the GPU kernels against the CPU reference: encode codes byte for byte,
 * decode attention within 1e-3 of a double-precision softmax over the CPU's scores and
 * decoded values, argument checks. Without a GPU every device test is skipped.
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
};

static void attend_case(kvqt_ctx *kvqt_, const attn_case *c, uint32_t d, uint32_t n_kv,
                        uint32_t group, const int32_t *lens, uint32_t batch, uint32_t capacity,
                        kvq_cuda_dtype qdt, uint32_t flags) {
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
    /* queries large enough that the softmax is far from uniform */
    for (size_t i = 0; i < (size_t)batch * nq * d; i++) qh[i] = 2.5f * (float)kvqi_rng_normal(&r);
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
    CHECKF(worst <= 1e-3, "%s / %s d=%u group=%u flags=%u: worst relative error %.3g", c->key,
           c->value, d, group, flags, worst);
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

static void body_cuda_attend_matches_cpu_reference(kvqt_ctx *kvqt_) {
    const int32_t lens[3] = {2500, 1, 1003};
    for (size_t i = 0; i < sizeof k_attn_cases / sizeof *k_attn_cases; i++) {
        attend_case(kvqt_, &k_attn_cases[i], 128, 2, 4, lens, 3, 2560, KVQ_CUDA_F32, 0);
        if (i < 4) /* the tensor-core cases through the general kernel too */
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
    attend_case(kvqt_, &k_attn_cases[0], 128, 2, 4, lens, 4, 401, KVQ_CUDA_F32, 0);
    attend_case(kvqt_, &k_attn_cases[0], 64, 2, 4, lens, 4, 400, KVQ_CUDA_F32, 0);
    attend_case(kvqt_, &k_attn_cases[6], 256, 2, 2, lens, 4, 400, KVQ_CUDA_F32, 0);
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

TEST(cuda_rejects_bad_arguments) {
    if (!have_gpu()) SKIP("no CUDA device");
#ifdef KVQ_HAVE_CUDA
    body_cuda_rejects_bad_arguments(kvqt_);
#endif
}
