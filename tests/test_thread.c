/*
 * test_thread.c - concurrency contracts: one quantizer shared by several threads encodes
 * and scores exactly as it does serially (kvq.h: "Thread-safe on a shared quantizer"),
 * and cache attention split over a threadpool equals the single-threaded result bit for
 * bit, and one index searched by several threads (or over a pool) answers as it does
 * serially. `make test-tsan` runs these under ThreadSanitizer.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

enum { THREADS = 4, DIM = 64, N_VEC = 96, ROUNDS = 3 };

/* A deterministic, platform-independent test signal (xorshift + a sum of uniforms). */
static void fill_signal(float *x, size_t n, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        float acc = 0;
        for (int k = 0; k < 4; k++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            acc += (float)(s >> 40) / (float)(1u << 24) - 0.5f;
        }
        x[i] = acc * 1.7f;
    }
}

typedef struct {
    const kvq_quantizer *q;
    const float *x;
    const float *query;
    size_t code_size;
    uint8_t *codes;  /* N_VEC * code_size, this thread's own */
    float *scores;   /* N_VEC */
    kvq_status status;
} quant_job;

static void *quant_worker(void *arg) {
    quant_job *j = arg;
    j->status = KVQ_OK;
    for (int r = 0; r < ROUNDS && j->status == KVQ_OK; r++) {
        j->status = kvq_encode(j->q, j->x, N_VEC, j->codes);
        if (j->status == KVQ_OK) j->status = kvq_score(j->q, j->query, j->codes, N_VEC, j->scores);
    }
    return NULL;
}

static int is_calibrated(kvq_method m) {
    return m == KVQ_METHOD_VECINFER || m == KVQ_METHOD_SPECTRAL || m == KVQ_METHOD_COMM_VQ;
}

TEST(thread_shared_quantizer_matches_serial) {
    float *x = malloc(sizeof(float) * N_VEC * DIM);
    float *calib = malloc(sizeof(float) * 512 * DIM);
    float query[DIM];
    REQUIRE(x && calib);
    fill_signal(x, (size_t)N_VEC * DIM, 1);
    fill_signal(calib, (size_t)512 * DIM, 2);
    fill_signal(query, DIM, 3);
    int tested = 0;
    for (int m = KVQ_METHOD_FP16; m < KVQ_METHOD_COUNT; m++) {
        kvq_config cfg;
        kvq_quantizer *q = NULL;
        kvq_status st = kvq_config_init(&cfg, (kvq_method)m, DIM);
        if (st == KVQ_OK) {
            cfg.seed = 77;
            st = kvq_quantizer_create(&cfg, &q);
        }
        if (st == KVQ_OK && is_calibrated((kvq_method)m)) st = kvq_quantizer_fit(q, calib, 512);
        if (st != KVQ_OK) {
            /* calibrated methods may be absent from a build; the others may not */
            CHECKF(is_calibrated((kvq_method)m), "%s: %s", kvq_method_name((kvq_method)m),
                   kvq_strerror(st));
            kvq_quantizer_free(q);
            continue;
        }
        size_t cs = kvq_code_size(q);
        uint8_t *serial_codes = malloc(cs * N_VEC);
        float serial_scores[N_VEC];
        quant_job jobs[THREADS];
        pthread_t tid[THREADS];
        int ok = serial_codes != NULL;
        if (ok) {
            CHECK_OK(kvq_encode(q, x, N_VEC, serial_codes));
            CHECK_OK(kvq_score(q, query, serial_codes, N_VEC, serial_scores));
        }
        for (int t = 0; t < THREADS; t++) {
            jobs[t] = (quant_job){q, x, query, cs, malloc(cs * N_VEC), malloc(sizeof(float) * N_VEC),
                                  KVQ_OK};
            ok = ok && jobs[t].codes && jobs[t].scores;
        }
        int started = 0;
        for (; ok && started < THREADS; started++)
            if (pthread_create(&tid[started], NULL, quant_worker, &jobs[started]) != 0) break;
        for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
        CHECKF(ok && started == THREADS, "%s: could not start %d threads",
               kvq_method_name((kvq_method)m), THREADS);
        for (int t = 0; ok && t < started; t++) {
            CHECKF(jobs[t].status == KVQ_OK, "%s thread %d: %s", kvq_method_name((kvq_method)m), t,
                   kvq_strerror(jobs[t].status));
            CHECKF(memcmp(jobs[t].codes, serial_codes, cs * N_VEC) == 0,
                   "%s thread %d: codes differ from the serial run", kvq_method_name((kvq_method)m),
                   t);
            CHECKF(memcmp(jobs[t].scores, serial_scores, sizeof serial_scores) == 0,
                   "%s thread %d: scores differ from the serial run", kvq_method_name((kvq_method)m),
                   t);
        }
        for (int t = 0; t < THREADS; t++) {
            free(jobs[t].codes);
            free(jobs[t].scores);
        }
        free(serial_codes);
        kvq_quantizer_free(q);
        tested++;
    }
    CHECKF(tested >= 9, "only %d methods could be tested", tested);
    free(x);
    free(calib);
}

/* Attention split over a pool must equal the calling thread alone, bit for bit: each
 * (query, head) is one task whose arithmetic does not depend on who runs it. */
static void check_cache_pool_matches_serial(kvqt_ctx *kvqt_, const char *kspec, const char *vspec,
                                            uint32_t window) {
    enum { H_KV = 4, H_Q = 8, HD = 64, T = 200, NQ = 3 };
    kvq_cache_config cc;
    kvq_cache *cache = NULL;
    kvq_threadpool *pool = NULL;
    char msg[256] = "";
    kvq_status st = kvq_cache_config_init(&cc, H_KV, HD, kspec, vspec, msg, sizeof msg);
    CHECKF(st == KVQ_OK, "%s / %s: %s (%s)", kspec, vspec, kvq_strerror(st), msg);
    if (st != KVQ_OK) return;
    cc.window = window;
    cc.chunk_tokens = 64; /* several arena chunks */
    float *k = malloc(sizeof(float) * T * H_KV * HD);
    float *v = malloc(sizeof(float) * T * H_KV * HD);
    float *q = malloc(sizeof(float) * NQ * H_Q * HD);
    float *serial = malloc(sizeof(float) * NQ * H_Q * HD);
    float *pooled = malloc(sizeof(float) * NQ * H_Q * HD);
    if (!(k && v && q && serial && pooled)) {
        CHECK(!"out of memory");
        goto done;
    }
    fill_signal(k, (size_t)T * H_KV * HD, 11);
    fill_signal(v, (size_t)T * H_KV * HD, 12);
    fill_signal(q, (size_t)NQ * H_Q * HD, 13);
    st = kvq_cache_create(&cc, &cache);
    CHECKF(st == KVQ_OK, "kvq_cache_create(%s, %s): %s", kspec, vspec, kvq_strerror(st));
    if (st != KVQ_OK) goto done;
    /* append in uneven pieces so the window and chunk boundaries are crossed */
    CHECK_OK(kvq_cache_append(cache, k, v, 37));
    CHECK_OK(kvq_cache_append(cache, k + 37 * H_KV * HD, v + 37 * H_KV * HD, T - 37));
    float scale = 0.125f;
    CHECK_OK(kvq_cache_attend(cache, q, H_Q, NQ, scale, NULL, serial));
    CHECK_OK(kvq_threadpool_create(THREADS, &pool));
    if (!pool) goto done;
    for (int r = 0; r < ROUNDS; r++) {
        memset(pooled, 0xff, sizeof(float) * NQ * H_Q * HD);
        CHECK_OK(kvq_cache_attend(cache, q, H_Q, NQ, scale, pool, pooled));
        CHECKF(memcmp(serial, pooled, sizeof(float) * NQ * H_Q * HD) == 0,
               "%s / %s window %u: pooled attention differs from serial (round %d)", kspec, vspec,
               window, r);
    }
    int finite = 1;
    for (size_t i = 0; i < (size_t)NQ * H_Q * HD; i++) finite = finite && isfinite(serial[i]);
    CHECK(finite);
done:
    kvq_threadpool_free(pool);
    kvq_cache_free(cache);
    free(k);
    free(v);
    free(q);
    free(serial);
    free(pooled);
}

TEST(thread_cache_attend_pool_matches_serial) {
    check_cache_pool_matches_serial(kvqt_, "turboquant_rvq:bits=1,residuals=2", "mse:bits=2", 16);
    check_cache_pool_matches_serial(kvqt_, "q8_0", "q4_0", 0);
    check_cache_pool_matches_serial(kvqt_, "qjl", "fp16", 0);
}

typedef struct {
    const char *kspec;
    uint64_t seed;
    float *out;
    kvq_status status;
} cache_job;

/* Separate caches on separate threads share nothing mutable (CPU dispatch is read-only
 * after its one-time detection), so each gives what it gives alone. */
static void *cache_worker(void *arg) {
    enum { H = 2, HD = 32, T = 50 };
    cache_job *j = arg;
    kvq_cache_config cc;
    kvq_cache *c = NULL;
    float k[T * H * HD], v[T * H * HD], q[H * HD];
    fill_signal(k, T * H * HD, j->seed);
    fill_signal(v, T * H * HD, j->seed + 1);
    fill_signal(q, H * HD, j->seed + 2);
    j->status = kvq_cache_config_init(&cc, H, HD, j->kspec, "mse:bits=3", NULL, 0);
    if (j->status == KVQ_OK) j->status = kvq_cache_create(&cc, &c);
    if (j->status == KVQ_OK) j->status = kvq_cache_append(c, k, v, T);
    if (j->status == KVQ_OK) j->status = kvq_cache_attend(c, q, H, 1, 0.2f, NULL, j->out);
    kvq_cache_free(c);
    return NULL;
}

TEST(thread_independent_caches_match_alone) {
    static const char *specs[THREADS] = {"turboquant_rvq:bits=1,residuals=2", "qjl", "q4_0",
                                         "rabitq:bits=1"};
    float alone[THREADS][64], together[THREADS][64];
    cache_job jobs[THREADS];
    pthread_t tid[THREADS];
    for (int t = 0; t < THREADS; t++) {
        jobs[t] = (cache_job){specs[t], 100u + (uint64_t)t, alone[t], KVQ_OK};
        cache_worker(&jobs[t]);
        CHECKF(jobs[t].status == KVQ_OK, "%s alone: %s", specs[t], kvq_strerror(jobs[t].status));
        jobs[t].out = together[t];
    }
    int started = 0;
    for (; started < THREADS; started++)
        if (pthread_create(&tid[started], NULL, cache_worker, &jobs[started]) != 0) break;
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
    REQUIRE(started == THREADS);
    for (int t = 0; t < THREADS; t++) {
        CHECKF(jobs[t].status == KVQ_OK, "%s threaded: %s", specs[t], kvq_strerror(jobs[t].status));
        CHECKF(memcmp(alone[t], together[t], sizeof alone[t]) == 0, "%s: threaded result differs",
               specs[t]);
    }
}

/* --------------------------------------------------------------- index */

enum { IX_DIM = 48, IX_N = 1500, IX_Q = 24, IX_K = 10 };

typedef struct {
    const kvq_index *index;
    const float *queries;
    int64_t ids[IX_Q * IX_K];
    float dists[IX_Q * IX_K];
    kvq_status status;
} index_job;

static void *index_worker(void *arg) {
    index_job *j = arg;
    kvq_index_search_params p;
    j->status = kvq_index_search_params_init(&p);
    p.nprobe = 3;
    for (int r = 0; r < ROUNDS && j->status == KVQ_OK; r++)
        j->status = kvq_index_search(j->index, j->queries, IX_Q, IX_K, &p, j->ids, j->dists);
    return NULL;
}

/* One index searched by four threads at once, and one search spread over a pool, give
 * the serial answer: same ids, same distances. */
TEST(thread_index_search_shared_and_pooled_match_serial) {
    float *x = malloc(sizeof(float) * IX_N * IX_DIM), *queries = malloc(sizeof(float) * IX_Q * IX_DIM);
    REQUIRE(x && queries);
    fill_signal(x, (size_t)IX_N * IX_DIM, 41);
    fill_signal(queries, (size_t)IX_Q * IX_DIM, 42);
    static const uint32_t bits[] = {1, 4};
    for (size_t bi = 0; bi < sizeof bits / sizeof bits[0]; bi++) {
        kvq_index_config cfg;
        kvq_index *index = NULL;
        kvq_threadpool *pool = NULL;
        REQUIRE_OK(kvq_index_config_init(&cfg, IX_DIM));
        cfg.nlist = 8;
        cfg.bits = bits[bi];
        cfg.seed = 5;
        REQUIRE_OK(kvq_index_create(&cfg, &index));
        CHECK_OK(kvq_index_train(index, x, IX_N));
        CHECK_OK(kvq_index_add(index, x, IX_N, NULL));
        index_job serial = {index, queries, {0}, {0}, KVQ_OK};
        index_worker(&serial);
        CHECKF(serial.status == KVQ_OK, "bits %u serial search: %s", bits[bi], kvq_strerror(serial.status));
        index_job *jobs = calloc(THREADS, sizeof *jobs);
        pthread_t tid[THREADS];
        int started = 0;
        if (jobs) {
            for (int t = 0; t < THREADS; t++) jobs[t] = (index_job){index, queries, {0}, {0}, KVQ_OK};
            for (; started < THREADS; started++)
                if (pthread_create(&tid[started], NULL, index_worker, &jobs[started]) != 0) break;
            for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
        }
        CHECKF(started == THREADS, "could not start %d threads", THREADS);
        for (int t = 0; t < started; t++) {
            CHECKF(jobs[t].status == KVQ_OK, "thread %d: %s", t, kvq_strerror(jobs[t].status));
            CHECKF(memcmp(jobs[t].ids, serial.ids, sizeof serial.ids) == 0 &&
                       memcmp(jobs[t].dists, serial.dists, sizeof serial.dists) == 0,
                   "bits %u thread %d: results differ from the serial search", bits[bi], t);
        }
        free(jobs);
        /* the same queries spread over a pool */
        CHECK_OK(kvq_threadpool_create(THREADS, &pool));
        kvq_index_search_params p;
        CHECK_OK(kvq_index_search_params_init(&p));
        p.nprobe = 3;
        p.pool = pool;
        index_job pooled = {index, queries, {0}, {0}, KVQ_OK};
        CHECK_OK(kvq_index_search(index, queries, IX_Q, IX_K, &p, pooled.ids, pooled.dists));
        CHECKF(memcmp(pooled.ids, serial.ids, sizeof serial.ids) == 0 &&
                   memcmp(pooled.dists, serial.dists, sizeof serial.dists) == 0,
               "bits %u: pooled search differs from the serial one", bits[bi]);
        /* the answers are real neighbours: every query finds k ids */
        int found = 0;
        for (int i = 0; i < IX_Q * IX_K; i++) found += serial.ids[i] >= 0 && serial.ids[i] < IX_N;
        CHECKF(found == IX_Q * IX_K, "bits %u: %d of %d result slots hold valid ids", bits[bi], found,
               IX_Q * IX_K);
        kvq_threadpool_free(pool);
        kvq_index_free(index);
    }
    free(x);
    free(queries);
}
