/*
 * core.h - internal maths every method shares (not installed, not exported).
 * rng, fp16/bf16, bit packing, rotations, Lloyd-Max codebooks, k-means,
 * symmetric eigen-solver, checked sizes, safetensors I/O.
 */
#ifndef KVQ_CORE_H
#define KVQ_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvq.h"

#define KVQI_UNUSED(x) ((void)(x))
#define KVQI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVQI_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---------------------------------------------------------- checked sizes */

/* *out = a * b; returns KVQ_ERR_OVERFLOW instead of wrapping. */
static inline kvq_status kvqi_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return KVQ_ERR_OVERFLOW;
    *out = a * b;
    return KVQ_OK;
}
static inline kvq_status kvqi_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return KVQ_ERR_OVERFLOW;
    *out = a + b;
    return KVQ_OK;
}
/* malloc(a*b) with an overflow check; NULL on overflow or failure. 64-byte aligned. */
void *kvqi_alloc_array(size_t count, size_t size);
/* zeroed variant */
void *kvqi_calloc_array(size_t count, size_t size);
void kvqi_free(void *p);

/* Write msg (printf-style) into an optional caller buffer, and record it as this
 * thread's kvq_last_error() (msg NULL: recorded only). */
void kvqi_set_msg(char *msg, size_t msg_size, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ------------------------------------------------------------- threadpool */

/* Runs fn(ctx, task, thread) for task = 0..n_tasks-1 on the pool's threads and the
 * caller (thread = 0..kvq_threadpool_size(pool)-1, the caller is 0; the size counts the
 * caller, so per-thread scratch needs kvq_threadpool_size(pool) slots; size(NULL) = 1),
 * returns when all are done. Tasks are
 * handed out dynamically (an atomic counter). pool == NULL runs them serially with
 * thread 0. No allocation per call. Not reentrant for one pool: one parallel_for at a time. */
typedef void (*kvqi_task_fn)(void *ctx, size_t task, unsigned thread);
void kvqi_parallel_for(kvq_threadpool *pool, size_t n_tasks, kvqi_task_fn fn, void *ctx);
/* Working memory that lives with a pool, for work that runs on it one call at a time
 * (like parallel_for itself): per_thread[t] of per_thread_bytes for each of the pool's
 * threads and one shared buffer, 64-byte aligned, grown on request and kept until the
 * pool is freed. Every cache attended on one pool shares them. */
kvq_status kvqi_threadpool_buffers(kvq_threadpool *pool, size_t per_thread_bytes, size_t shared_bytes,
                                   float ***per_thread, float **shared);
/* Bytes the pool's buffers hold now. */
size_t kvqi_threadpool_buffer_bytes(const kvq_threadpool *pool);

/* -------------------------------------------------------------------- rng */

/* xoshiro256** seeded through splitmix64: the same stream on every platform.
 * Normals use only +,-,*,/,sqrt and kvqi_det_log, so they are bit-identical too. */
typedef struct kvqi_rng {
    uint64_t s[4];
} kvqi_rng;

void kvqi_rng_seed(kvqi_rng *r, uint64_t seed);
uint64_t kvqi_rng_next(kvqi_rng *r);
double kvqi_rng_uniform(kvqi_rng *r);            /* [0, 1), 53 random bits */
uint32_t kvqi_rng_below(kvqi_rng *r, uint32_t n); /* uniform in [0, n), unbiased */
double kvqi_rng_normal(kvqi_rng *r);             /* N(0, 1), Marsaglia polar */
/* A natural log built from IEEE-exact operations only (no libm): same bits everywhere. */
double kvqi_det_log(double x);
/* A derived seed for sub-streams: (seed, tag) -> seed. */
uint64_t kvqi_seed_mix(uint64_t seed, uint64_t tag);

/* ------------------------------------------------------------- fp16, bf16 */

/* IEEE binary16 / bfloat16, round-to-nearest-even, subnormals, inf and NaN kept. */
uint16_t kvqi_fp32_to_fp16(float f);
float kvqi_fp16_to_fp32(uint16_t h);
uint16_t kvqi_fp32_to_bf16(float f);
float kvqi_bf16_to_fp32(uint16_t h);

/* ------------------------------------------------------------ bit packing */

/* n indices of b bits (1..8) packed LSB-first into a little-endian bit stream. */
size_t kvqi_packed_size(size_t n, unsigned bits);
void kvqi_pack_bits(const uint8_t *idx, size_t n, unsigned bits, uint8_t *out);
void kvqi_unpack_bits(const uint8_t *in, size_t n, unsigned bits, uint8_t *idx);

/* ----------------------------------------------------- Hadamard rotation */

/* Randomized Hadamard transform for any dim, orthogonal: y = Pi x, ||y|| = ||x||.
 * dim = sum of powers of two (its binary digits, largest first). Pass 1: signs D1,
 * normalized FWHT on each block. For a dim that is not a power of two, pass 2:
 * signs D2 and FWHT on the blocks in reverse order, so every block overlaps another
 * and energy spreads across the whole vector. Inverse applies the steps backwards. */
#define KVQI_HAD_MAX_BLOCKS 32
typedef struct kvqi_hadamard {
    uint32_t dim;
    uint32_t n_blocks;
    uint32_t block[KVQI_HAD_MAX_BLOCKS]; /* block sizes, largest first */
    int two_pass;
    float *sign1; /* dim entries of +-1 */
    float *sign2; /* dim entries of +-1 (two_pass only) */
} kvqi_hadamard;

kvq_status kvqi_hadamard_init(kvqi_hadamard *h, uint32_t dim, uint64_t seed);
void kvqi_hadamard_free(kvqi_hadamard *h);
/* In place. isa picks the FWHT kernel (KVQ_ISA_AUTO for the dispatched one). */
void kvqi_hadamard_apply(const kvqi_hadamard *h, float *x, kvq_isa isa);
void kvqi_hadamard_inverse(const kvqi_hadamard *h, float *x, kvq_isa isa);

/* Dense random orthogonal d x d matrix (row-major): Householder QR of a seeded
 * Gaussian matrix, with R's diagonal signs folded in so Q is Haar-distributed. */
kvq_status kvqi_random_orthogonal(uint32_t d, uint64_t seed, float *q_out);
/* y = Q x  and  y = Q^T x  (d x d row-major). */
void kvqi_matvec(const float *q, uint32_t d, const float *x, float *y);
void kvqi_matvec_t(const float *q, uint32_t d, const float *x, float *y);

/* ------------------------------------------------------------- Lloyd-Max */

typedef enum kvqi_dist {
    KVQI_DIST_GAUSSIAN = 0, /* N(0,1) */
    KVQI_DIST_LAPLACE = 1,  /* Laplace with unit variance */
    KVQI_DIST_BETA = 2      /* a coordinate of a uniform random unit vector in d dims */
} kvqi_dist;

/* Optimal b-bit (1..8) scalar quantizer of a symmetric density by Lloyd iteration on
 * the density. centroids[2^b] ascending, thresholds[2^b - 1] (midpoints); *mse is the
 * expected squared error per coordinate. param = d for KVQI_DIST_BETA, ignored else. */
kvq_status kvqi_lloyd_max(kvqi_dist dist, double param, unsigned bits, float *centroids,
                          float *thresholds, double *mse);

/* ---------------------------------------------------------------- k-means */

/* k-means++ seeding then `iters` Lloyd iterations, deterministic for a seed.
 * x[n][d] -> centroids[k][d]; assign[n] optional (may be NULL). */
kvq_status kvqi_kmeans(const float *x, size_t n, uint32_t d, uint32_t k, uint32_t iters,
                       uint64_t seed, float *centroids, uint32_t *assign);

/* --------------------------------------------------------- eigen-solver */

/* Cyclic Jacobi on a symmetric n x n matrix a (destroyed). evals[n] descending,
 * evecs[n][n] row i = eigenvector i. */
kvq_status kvqi_eigh(double *a, uint32_t n, double *evals, double *evecs);

/* ------------------------------------------------------------ safetensors */

typedef enum kvqi_dtype {
    KVQI_F32 = 0,
    KVQI_F16,
    KVQI_BF16,
    KVQI_F64,
    KVQI_I32,
    KVQI_I64,
    KVQI_U8,
    KVQI_I8,
    KVQI_U32,
    KVQI_U16,
    KVQI_DTYPE_COUNT
} kvqi_dtype;

size_t kvqi_dtype_size(kvqi_dtype t);

#define KVQI_ST_MAX_DIMS 8
#define KVQI_ST_MAX_NAME 128

typedef struct kvqi_st_tensor {
    char name[KVQI_ST_MAX_NAME];
    kvqi_dtype dtype;
    uint32_t ndim;
    uint64_t shape[KVQI_ST_MAX_DIMS];
    const void *data; /* little-endian, nbytes = prod(shape) * dtype size */
    size_t nbytes;
} kvqi_st_tensor;

typedef struct kvqi_st_meta {
    const char *key;
    const char *value;
} kvqi_st_meta;

/* Crash-safe replacement of a file (atomic_file.c): begin creates PATH.tmp.XXXXXX
 * beside PATH (first removing stale temps of PATH that no live writer holds), the
 * caller writes af->f, commit(write_ok) fsyncs and renames it over PATH (or, when
 * write_ok is 0 or anything fails, removes it: KVQ_ERR_IO); abort removes it. */
typedef struct kvqi_atomic_file {
    FILE *f;
    char *tmp, *path;
} kvqi_atomic_file;
kvq_status kvqi_atomic_begin(const char *path, kvqi_atomic_file *af);
kvq_status kvqi_atomic_commit(kvqi_atomic_file *af, int write_ok);
void kvqi_atomic_abort(kvqi_atomic_file *af);
/* Remove PATH.tmp.XXXXXX files left by writers that died (no flock held on them). */
void kvqi_atomic_remove_stale(const char *path);

/* Write tensors and string metadata ("__metadata__") crash-safely: temp file in the
 * same directory, fsync, rename. Tensor names must be unique. */
kvq_status kvqi_st_write(const char *path, const kvqi_st_tensor *tensors, size_t n_tensors,
                         const kvqi_st_meta *meta, size_t n_meta);

/* A file read whole and validated: header JSON parsed, every offset and size checked
 * against the file, no overlap, dtype sizes consistent. */
typedef struct kvqi_st_file kvqi_st_file;
kvq_status kvqi_st_read(const char *path, kvqi_st_file **out);
/* Why kvqi_st_read(path) failed with st, in words: "No such file or directory", "is a
 * directory, not a file", ... (a static string). */
const char *kvqi_st_read_why(const char *path, kvq_status st);
/* Same from memory (copied). */
kvq_status kvqi_st_read_mem(const void *buf, size_t size, kvqi_st_file **out);
void kvqi_st_free(kvqi_st_file *f);
size_t kvqi_st_count(const kvqi_st_file *f);
const kvqi_st_tensor *kvqi_st_at(const kvqi_st_file *f, size_t i);
const kvqi_st_tensor *kvqi_st_find(const kvqi_st_file *f, const char *name);
/* Metadata value for key, or NULL. */
const char *kvqi_st_meta_get(const kvqi_st_file *f, const char *key);

#endif /* KVQ_CORE_H */
