/*
 * bench_timing.h - what the CUDA benchmark programs (bench_attn.c, bench_chan.c) share:
 * error checks that exit, and medians of CUDA-event timings, REPS calls a sample: as a
 * captured graph (time_graph) or as plain stream calls (time_plain: the copy ceiling, since
 * a memcpy node in a graph may run on the copy engines, slower than a stream copy).
 */
#ifndef KVQ_BENCH_TIMING_H
#define KVQ_BENCH_TIMING_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvq.h"

#define REPS 10
#define SAMPLES 9

#define CK(expr)                                                                           \
    do {                                                                                   \
        cudaError_t e_ = (expr);                                                           \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)
#define KK(expr)                                                                           \
    do {                                                                                   \
        kvq_status s_ = (expr);                                                            \
        if (s_ != KVQ_OK) {                                                                \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, kvq_strerror(s_)); \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

static inline int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* What a timed sample runs (captured REPS times into one graph). */
typedef void (*work_fn)(void *ctx, cudaStream_t s);

/* Median milliseconds of one call made REPS times back to back (no graph). */
static inline float time_plain(work_fn fn, void *ctx, cudaStream_t s) {
    fn(ctx, s);
    CK(cudaStreamSynchronize(s));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float ms[SAMPLES];
    for (int i = 0; i < SAMPLES; i++) {
        CK(cudaEventRecord(e0, s));
        for (int r = 0; r < REPS; r++) fn(ctx, s);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms[i], e0, e1));
        ms[i] /= REPS;
    }
    qsort(ms, SAMPLES, sizeof(float), cmp_float);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms[SAMPLES / 2];
}

/* Median milliseconds of one call. */
static inline float time_graph(work_fn fn, void *ctx, cudaStream_t s) {
    fn(ctx, s); /* warm-up outside the graph: module load, first-touch */
    CK(cudaStreamSynchronize(s));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < REPS; i++) fn(ctx, s);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float ms[SAMPLES];
    for (int i = 0; i < SAMPLES; i++) {
        CK(cudaEventRecord(e0, s));
        CK(cudaGraphLaunch(ge, s));
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms[i], e0, e1));
        ms[i] /= REPS;
    }
    qsort(ms, SAMPLES, sizeof(float), cmp_float);
    CK(cudaGetLastError());
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    return ms[SAMPLES / 2];
}

/* the copy ceiling: one device-to-device copy */
typedef struct copy_ctx {
    void *dst, *src;
    size_t bytes;
} copy_ctx;

static inline void run_copy(void *p, cudaStream_t s) {
    copy_ctx *c = p;
    CK(cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, s));
}

#endif
