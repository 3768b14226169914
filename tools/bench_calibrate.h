/* bench_calibrate.h - kvq bench --calibrate N: the calibrated methods (vecinfer, spectral,
 * comm_vq) fitted on the first N tokens of the KV being measured, through artifacts in a
 * temporary directory, so the cache loads them as it would a user's. */
#ifndef KVQ_BENCH_CALIBRATE_H
#define KVQ_BENCH_CALIBRATE_H

#include "kvq.h"

typedef struct kvq_bench_calib {
    char dir[512]; /* the temporary directory ("" until the first fit) */
    double fit_s;  /* seconds spent fitting */
    size_t n_fits;
} kvq_bench_calib;

/* 1 for a method that must learn before it codes anything. */
int kvq_bench_is_calibrated(const kvq_config *qc);

/* If qc is a calibrated method without an artifact: fit it on the first n tokens of rows
 * ([tokens][n_kv][dim]; for keys, after RoPE at positions 0, 1, ...: comm_vq turns them
 * back with qc's RoPE first), save it as DIR/tag.safetensors and point qc at it. Nothing
 * to do is KVQ_OK. */
kvq_status kvq_bench_calibrate(kvq_bench_calib *bc, kvq_config *qc, const float *rows, size_t n,
                               uint32_t n_kv, uint32_t dim, int is_key, const char *tag);

/* Removes the artifacts and the directory. */
void kvq_bench_calib_cleanup(kvq_bench_calib *bc);

#endif
