/* bench_core.c - timings of the shared maths: Lloyd-Max codebook construction, thread
 * pool dispatch latency, Hadamard rotation and bit packing throughput.
 * Usage: build/bench/bench_core [threads] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void empty_task(void *ctx, size_t task, unsigned thread) {
    (void)ctx;
    (void)task;
    (void)thread;
}

int main(int argc, char **argv) {
    unsigned threads = argc > 1 ? (unsigned)atoi(argv[1]) : 2;
    static const char *dist_name[] = {"gaussian", "laplace", "beta(d=128)", "beta(d=4096)"};
    static const kvqi_dist dists[] = {KVQI_DIST_GAUSSIAN, KVQI_DIST_LAPLACE, KVQI_DIST_BETA, KVQI_DIST_BETA};
    static const double params[] = {0, 0, 128, 4096};
    printf("lloyd-max codebook construction (ms, best of 3):\n");
    for (int d = 0; d < 4; d++) {
        printf("  %-13s", dist_name[d]);
        for (unsigned b = 1; b <= 8; b++) {
            float c[256], t[255];
            double mse, best = 1e9;
            for (int rep = 0; rep < 3; rep++) {
                double t0 = now_s();
                if (kvqi_lloyd_max(dists[d], params[d], b, c, t, &mse) != KVQ_OK) return 1;
                double dt = now_s() - t0;
                if (dt < best) best = dt;
            }
            printf(" b%u=%.3f", b, best * 1e3);
        }
        printf("\n");
    }

    kvq_threadpool *pool;
    if (kvq_threadpool_create(threads, &pool) != KVQ_OK) return 1;
    const int calls = 100000;
    double best = 1e9;
    for (int round = 0; round < 5; round++) {
        double t0 = now_s();
        for (int i = 0; i < calls; i++) kvqi_parallel_for(pool, threads, empty_task, NULL);
        double dt = (now_s() - t0) / calls;
        if (dt < best) best = dt;
    }
    printf("parallel_for dispatch, %u threads, back-to-back: %.2f us/call (best of 5 rounds)\n",
           threads, best * 1e6);
    double total = 0;
    for (int i = 0; i < 100; i++) {
        struct timespec gap = {0, 2000000};
        nanosleep(&gap, NULL);
        double s = now_s();
        kvqi_parallel_for(pool, threads, empty_task, NULL);
        total += now_s() - s;
    }
    printf("parallel_for dispatch after 2 ms idle (workers asleep): %.2f us/call\n", total / 100 * 1e6);
    kvq_threadpool_free(pool);

    static const uint32_t dims[] = {128, 96, 576};
    for (int k = 0; k < 3; k++) {
        kvqi_hadamard h;
        if (kvqi_hadamard_init(&h, dims[k], 1) != KVQ_OK) return 1;
        float x[1024];
        for (uint32_t i = 0; i < dims[k]; i++) x[i] = (float)i;
        double best_h = 1e9;
        for (int round = 0; round < 5; round++) {
            const int reps = 50000;
            double t0 = now_s();
            for (int i = 0; i < reps; i++) kvqi_hadamard_apply(&h, x, KVQ_ISA_AUTO);
            double dt = (now_s() - t0) / reps;
            if (dt < best_h) best_h = dt;
        }
        printf("hadamard apply dim %u: %.1f ns/vector (best of 5)\n", dims[k], best_h * 1e9);
        kvqi_hadamard_free(&h);
    }

    enum { N = 1 << 20 };
    uint8_t *idx = malloc(N), *packed = malloc(N), *back = malloc(N);
    if (!idx || !packed || !back) return 1;
    for (size_t i = 0; i < N; i++) idx[i] = (uint8_t)(i * 2654435761u >> 13);
    for (unsigned b = 1; b <= 8; b++) {
        for (size_t i = 0; i < N; i++) idx[i] &= (uint8_t)((1u << b) - 1);
        double tp = 1e9, tu = 1e9;
        for (int round = 0; round < 5; round++) {
            double t0 = now_s();
            for (int r = 0; r < 4; r++) kvqi_pack_bits(idx, N, b, packed);
            double dt = now_s() - t0;
            if (dt < tp) tp = dt;
            t0 = now_s();
            for (int r = 0; r < 4; r++) kvqi_unpack_bits(packed, N, b, back);
            dt = now_s() - t0;
            if (dt < tu) tu = dt;
        }
        printf("bits=%u pack %.2f unpack %.2f G indices/s (best of 5)\n", b, 4.0 * N / tp * 1e-9, 4.0 * N / tu * 1e-9);
    }
    free(idx);
    free(packed);
    free(back);
    return 0;
}
