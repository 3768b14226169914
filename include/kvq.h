/*
 * kvq.h - the one public header of kvq: key/value-cache and vector compression.
 *
 * Conventions (the same everywhere in this header):
 *   - every function that can fail returns a kvq_status; results go through
 *     out-parameters; kvq_strerror() turns a status into a sentence;
 *   - handles are opaque and come in *_create / *_free pairs; *_free(NULL) is a no-op;
 *   - floats are row-major float32 unless a name says otherwise;
 *   - the same seed gives the same codes on every ISA and every run.
 */
#ifndef KVQ_H
#define KVQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVQ_VERSION_MAJOR 0
#define KVQ_VERSION_MINOR 1
#define KVQ_VERSION_PATCH 0
#define KVQ_VERSION_NUMBER (KVQ_VERSION_MAJOR * 10000 + KVQ_VERSION_MINOR * 100 + KVQ_VERSION_PATCH)
#define KVQ_VERSION_STRING "0.1.0"

#if defined(_WIN32) && defined(KVQ_BUILDING_DLL)
#define KVQ_API __declspec(dllexport)
#elif defined(__GNUC__)
#define KVQ_API __attribute__((visibility("default")))
#else
#define KVQ_API
#endif

/* ------------------------------------------------------------------ status */

typedef enum kvq_status {
    KVQ_OK = 0,
    KVQ_ERR_INVALID_ARG = 1,  /* a NULL pointer, a zero size, inconsistent arguments */
    KVQ_ERR_NOMEM = 2,        /* an allocation failed */
    KVQ_ERR_OVERFLOW = 3,     /* a size computation would overflow */
    KVQ_ERR_IO = 4,           /* open/read/write/rename failed */
    KVQ_ERR_FORMAT = 5,       /* a file or buffer is truncated, corrupt or foreign */
    KVQ_ERR_UNSUPPORTED = 6,  /* valid request this build or method cannot serve (dim, bits, type) */
    KVQ_ERR_PARSE = 7,        /* a config string could not be parsed */
    KVQ_ERR_MISMATCH = 8,     /* an artifact or file made for another shape or method */
    KVQ_ERR_STATE = 9,        /* call out of order (e.g. a calibrated method used before fit) */
    KVQ_ERR_NO_DEVICE = 10,   /* no CUDA device (or a build without CUDA) */
    KVQ_ERR_DEVICE = 11,      /* a CUDA call failed */
    KVQ_ERR_CAPACITY = 12     /* a fixed capacity (context length, buffer) is exhausted */
} kvq_status;

/* A static English sentence for a status; never NULL. */
KVQ_API const char *kvq_strerror(kvq_status status);
/* "0.1.0" and the ISA the kernels run on here: "avx512", "avx2", "neon" or "scalar". */
KVQ_API const char *kvq_version_string(void);
KVQ_API const char *kvq_cpu_isa(void);

/* Instruction sets a quantizer may be pinned to (tests compare them; users keep AUTO).
 * KVQ_FORCE_SCALAR=1 in the environment makes AUTO resolve to SCALAR. */
typedef enum kvq_isa {
    KVQ_ISA_AUTO = 0,
    KVQ_ISA_SCALAR = 1,
    KVQ_ISA_AVX2 = 2,
    KVQ_ISA_AVX512 = 3,
    KVQ_ISA_NEON = 4
} kvq_isa;
/* 1 if the CPU (and this build) can run kernels of that ISA. */
KVQ_API int kvq_isa_available(kvq_isa isa);

/* --------------------------------------------------------------- threadpool */

/* A fixed pool of worker threads shared by caches, indexes and the engine.
 * n_threads = 0 means one per online CPU; the count includes the calling thread.
 * Work is handed out dynamically; calls that take a pool run on the calling thread
 * plus the workers. */
typedef struct kvq_threadpool kvq_threadpool;
KVQ_API kvq_status kvq_threadpool_create(unsigned n_threads, kvq_threadpool **out);
KVQ_API void kvq_threadpool_free(kvq_threadpool *pool);
KVQ_API unsigned kvq_threadpool_size(const kvq_threadpool *pool);

/* --------------------------------------------------------------- quantizer */

typedef enum kvq_method {
    KVQ_METHOD_NONE = 0,
    KVQ_METHOD_FP16,            /* 16-bit floats, the reference */
    KVQ_METHOD_Q8_0,            /* llama.cpp block of 32: fp16 scale + 32 int8 */
    KVQ_METHOD_Q4_0,            /* llama.cpp block of 32: fp16 scale + 16 bytes of nibbles */
    KVQ_METHOD_TURBOQUANT_MSE,  /* rotation + Lloyd-Max scalar code + norm */
    KVQ_METHOD_TURBOQUANT_PROD, /* (b-1)-bit mse + 1-bit QJL on the residual: unbiased <q,x> */
    KVQ_METHOD_TURBOQUANT_RVQ,  /* rotation + residual scalar passes (Gaussian, then Laplacian) */
    KVQ_METHOD_QJL,             /* sign(Sx) + norm, unbiased inner products */
    KVQ_METHOD_POLARQUANT,      /* rotation + recursive polar angles */
    KVQ_METHOD_RABITQ,          /* RaBitQ 1-bit or extended b-bit codes, unbiased estimator */
    KVQ_METHOD_VECINFER,        /* calibrated: smoothing + Hadamard + product VQ */
    KVQ_METHOD_SPECTRAL,        /* calibrated: eigenbasis + water-filled bits */
    KVQ_METHOD_COMM_VQ,         /* calibrated: RoPE-commutative additive VQ */
    KVQ_METHOD_COUNT
} kvq_method;

/* Everything that defines a quantizer. Zero means "the method's default" for every
 * numeric field; kvq_config_init() fills a valid config for a method and dim. */
typedef struct kvq_config {
    kvq_method method;
    uint32_t dim;          /* vector length (head_dim for KV) */
    uint32_t bits;         /* bits per coordinate (per pass for rvq) */
    uint32_t residuals;    /* turboquant_rvq: number of passes (1..4) */
    int32_t rotate;        /* -1 default, 0 off, 1 randomized Hadamard, 2 dense orthogonal */
    uint64_t seed;         /* rotation, projections, k-means: same seed, same codes */
    uint32_t proj_dim;     /* qjl: m, the number of sign bits (default dim) */
    uint32_t query_bits;   /* rabitq: 4 (popcount scoring) or 32 (float query) */
    uint32_t split;        /* rabitq: 1 = VSAG's 1-bit + 7-bit split layout */
    uint32_t nlist;        /* rabitq: IVF centroids fitted by kvq_quantizer_fit (0 = none) */
    float eps0;            /* rabitq: confidence parameter of the error bound (default 1.9) */
    uint32_t sub_dim;      /* vecinfer: sub-vector length (default 8) */
    uint32_t n_codebooks;  /* comm_vq: additive codebooks (default 4) */
    kvq_isa isa;           /* KVQ_ISA_AUTO unless pinning for tests */
    char artifact[512];    /* calibrated methods: safetensors artifact to load ("" = none) */
} kvq_config;

/* A valid default config for (method, dim). */
KVQ_API kvq_status kvq_config_init(kvq_config *cfg, kvq_method method, uint32_t dim);
/* Parse a spec as users type it: "turboquant_rvq:bits=1,residuals=2", "rabitq:bits=1",
 * "qjl", "polar:bits=4", "fp16", "q8_0", "q4_0", "mse:bits=2", "vecinfer:artifact=F".
 * On failure msg (if not NULL) receives one line naming the bad method or key. */
KVQ_API kvq_status kvq_config_parse(const char *spec, uint32_t dim, kvq_config *cfg,
                                    char *msg, size_t msg_size);
/* The canonical spec string of a config (parses back to the same config). */
KVQ_API kvq_status kvq_config_format(const kvq_config *cfg, char *buf, size_t buf_size);
/* KVQ_OK if a quantizer can be created from cfg; else the status create would return
 * (KVQ_ERR_UNSUPPORTED for a dim or bits the method cannot take) and, in msg, one line
 * saying why. kvq_config_parse runs it too when given a nonzero dim. */
KVQ_API kvq_status kvq_config_validate(const kvq_config *cfg, char *msg, size_t msg_size);
/* "turboquant_rvq", ...; NULL for an unknown method. */
KVQ_API const char *kvq_method_name(kvq_method method);

typedef struct kvq_quantizer kvq_quantizer;

KVQ_API kvq_status kvq_quantizer_create(const kvq_config *cfg, kvq_quantizer **out);
KVQ_API void kvq_quantizer_free(kvq_quantizer *q);
/* Calibrated methods (and rabitq with nlist > 0) learn from n calibration vectors. */
KVQ_API kvq_status kvq_quantizer_fit(kvq_quantizer *q, const float *x, size_t n);
/* The config the quantizer runs with (defaults resolved). */
KVQ_API kvq_status kvq_quantizer_config(const kvq_quantizer *q, kvq_config *out);
/* Bytes stored per vector: codes, norms, scales, ids - everything per vector. */
KVQ_API size_t kvq_code_size(const kvq_quantizer *q);
/* Bytes shared by all vectors (codebooks, rotations, centroids), not counted per vector. */
KVQ_API size_t kvq_shared_size(const kvq_quantizer *q);

/* x[n][dim] -> codes[n][code_size]. Thread-safe on a shared quantizer. */
KVQ_API kvq_status kvq_encode(const kvq_quantizer *q, const float *x, size_t n, uint8_t *codes);
/* codes[n][code_size] -> x[n][dim]. */
KVQ_API kvq_status kvq_decode(const kvq_quantizer *q, const uint8_t *codes, size_t n, float *x);
/* scores[i] = estimate of <query, x_i> for n codes, with the method's estimator where
 * it has one (qjl, turboquant_prod, rabitq, vecinfer, comm_vq), decode + dot otherwise. */
KVQ_API kvq_status kvq_score(const kvq_quantizer *q, const float *query, const uint8_t *codes,
                             size_t n, float *scores);
/* As kvq_score, plus err[i]: a half-width such that |<q,x_i> - scores[i]| <= err[i] holds
 * with the method's confidence (rabitq). KVQ_ERR_UNSUPPORTED for methods without a bound. */
KVQ_API kvq_status kvq_score_bound(const kvq_quantizer *q, const float *query,
                                   const uint8_t *codes, size_t n, float *scores, float *err);

/* Everything needed to decode, as safetensors (readable by numpy/torch users).
 * Written to a temp file, fsynced and renamed into place. */
KVQ_API kvq_status kvq_quantizer_save(const kvq_quantizer *q, const char *path);
KVQ_API kvq_status kvq_quantizer_load(const char *path, kvq_quantizer **out);

/* ------------------------------------------------------------------- cache */

/* One compressed KV cache per transformer layer.
 * Keys and values arrive as [n_tokens][n_kv_heads][head_dim] float32. */
typedef struct kvq_cache_config {
    uint32_t n_kv_heads;
    uint32_t head_dim;
    kvq_config key;          /* key quantizer (dim is set to head_dim) */
    kvq_config value;        /* value quantizer (dim is set to head_dim) */
    uint32_t window;         /* most recent tokens also kept exact (fp32) (0 = none) */
    uint32_t n_outliers;     /* key channels per head kept apart in fp16 (0 = none) */
    uint32_t chunk_tokens;   /* arena chunk length in tokens (0 = 256) */
    uint32_t max_tokens;     /* hard capacity (0 = grow without bound) */
} kvq_cache_config;

typedef struct kvq_cache kvq_cache;

/* Exact bytes held by a cache. total == codes + window + outliers + shared + overhead. */
typedef struct kvq_cache_memory_info {
    uint64_t key_codes;      /* per-token key codes (norms, scales included) */
    uint64_t value_codes;    /* per-token value codes */
    uint64_t window;         /* exact recent-token window */
    uint64_t outliers;       /* fp16 outlier channels and their index lists */
    uint64_t shared;         /* codebooks, rotations, artifacts */
    uint64_t overhead;       /* bookkeeping: chunk tables, scratch */
    uint64_t total;
    uint64_t n_tokens;
} kvq_cache_memory_info;

KVQ_API kvq_status kvq_cache_config_init(kvq_cache_config *cfg, uint32_t n_kv_heads,
                                         uint32_t head_dim, const char *key_spec,
                                         const char *value_spec, char *msg, size_t msg_size);
KVQ_API kvq_status kvq_cache_create(const kvq_cache_config *cfg, kvq_cache **out);
KVQ_API void kvq_cache_free(kvq_cache *cache);
KVQ_API kvq_status kvq_cache_reset(kvq_cache *cache);
KVQ_API kvq_status kvq_cache_length(const kvq_cache *cache, size_t *n_tokens);
/* Quantize and append n_tokens key and value rows. */
KVQ_API kvq_status kvq_cache_append(kvq_cache *cache, const float *k, const float *v,
                                    size_t n_tokens);
/* Causal grouped-query attention of n_queries new positions against the cache.
 * q: [n_queries][n_q_heads][head_dim]; out: same shape. Query i sits at position
 * length - n_queries + i and sees tokens 0..that position. n_q_heads must be a
 * multiple of n_kv_heads. pool may be NULL (run on the calling thread). */
KVQ_API kvq_status kvq_cache_attend(kvq_cache *cache, const float *q, uint32_t n_q_heads,
                                    size_t n_queries, float scale, kvq_threadpool *pool,
                                    float *out);
KVQ_API kvq_status kvq_cache_memory(const kvq_cache *cache, kvq_cache_memory_info *info);
/* How many tokens of context fit in budget_bytes for n_layers caches of this config. */
KVQ_API kvq_status kvq_cache_tokens_fit(const kvq_cache_config *cfg, uint32_t n_layers,
                                        uint64_t budget_bytes, uint64_t *n_tokens);

/* One cache per layer of a model, each with its own config (layers may use different
 * methods and bits: per_layer[n_layers]). */
typedef struct kvq_cache_set kvq_cache_set;
KVQ_API kvq_status kvq_cache_set_create(uint32_t n_layers, const kvq_cache_config *per_layer,
                                        kvq_cache_set **out);
KVQ_API void kvq_cache_set_free(kvq_cache_set *set);
/* The cache of one layer (owned by the set). */
KVQ_API kvq_status kvq_cache_set_layer(kvq_cache_set *set, uint32_t layer, kvq_cache **out);
KVQ_API kvq_status kvq_cache_set_reset(kvq_cache_set *set);
/* Sums of every layer's kvq_cache_memory (n_tokens: the longest layer). */
KVQ_API kvq_status kvq_cache_set_memory(const kvq_cache_set *set, kvq_cache_memory_info *info);

/* ------------------------------------------------------------------- index */
/* (section filled by the index: kvq_index_*) */

/* ------------------------------------------------------------------ engine */
/* (section filled by the engine: kvq_model_*, kvq_context_*) */

/* -------------------------------------------------------------------- cuda */
/* Encode and fused decode attention on an NVIDIA GPU (sm_90 and PTX for later parts).
 * Every pointer named *_dev is device memory; stream is a cudaStream_t (NULL: the
 * default stream). Calls only enqueue work: nothing is synchronized, nothing is
 * allocated after the *_create calls. A build without CUDA (or a machine without a
 * GPU) answers KVQ_ERR_NO_DEVICE. Codes are byte-identical to kvq_encode's. */

/* Element types of inputs on the device. */
typedef enum kvq_cuda_dtype {
    KVQ_CUDA_F32 = 0,
    KVQ_CUDA_F16 = 1,
    KVQ_CUDA_BF16 = 2
} kvq_cuda_dtype;

/* Number of CUDA devices (0 with KVQ_ERR_NO_DEVICE when there is none). */
KVQ_API kvq_status kvq_cuda_available(int *n_devices);

/* A quantizer's shared data (rotation signs, codebooks, projection) uploaded once to
 * the current device. GPU methods: fp16, q8_0, q4_0, turboquant_mse (bits 1..8),
 * turboquant_rvq, qjl (proj_dim a multiple of 32) and rabitq (bits 1, no IVF); dims a
 * power of two from 32 to 1024 (64..1024 for q8_0/q4_0 need a multiple of 32 only);
 * rotation none or Hadamard. Anything else: KVQ_ERR_UNSUPPORTED. */
typedef struct kvq_cuda_quantizer kvq_cuda_quantizer;
KVQ_API kvq_status kvq_cuda_quantizer_create(const kvq_quantizer *q, kvq_cuda_quantizer **out);
KVQ_API void kvq_cuda_quantizer_free(kvq_cuda_quantizer *cq);

/* x_dev[n_rows][dim] (dtype) -> codes_dev[n_rows][kvq_code_size(q)], one launch for a
 * whole batch of tokens x heads. */
KVQ_API kvq_status kvq_cuda_encode(const kvq_cuda_quantizer *cq, kvq_cuda_dtype dtype,
                                   const void *x_dev, size_t n_rows, uint8_t *codes_dev,
                                   void *stream);

/* Decode attention of one new query per sequence against compressed keys and values.
 * Layout (contiguous per sequence): the codes of sequence b, kv head h, token t sit at
 *   codes_dev + ((b * n_kv_heads + h) * capacity + t) * code_size
 * so kvq_cuda_encode of rows ordered [batch][n_kv_heads][capacity] fills it.
 * q_dev: [batch][n_q_heads][head_dim] (q_dtype); out_dev: the same shape, float32.
 * seq_lens_dev: [batch] int32 on the device, each in 0..capacity (0 gives zeros);
 * max_len: an upper bound of them, known on the host (it sizes the grid).
 * n_q_heads is a multiple of n_kv_heads (grouped-query attention). */
typedef struct kvq_cuda_attn_desc {
    uint32_t batch;
    uint32_t n_q_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t capacity;  /* tokens reserved per (sequence, kv head) */
    uint32_t max_len;   /* >= every sequence length */
    float scale;        /* softmax scale, usually 1/sqrt(head_dim) */
    kvq_cuda_dtype q_dtype;
    uint32_t flags;     /* KVQ_CUDA_ATTN_* (0: pick the fastest kernel) */
} kvq_cuda_attn_desc;

/* Always run the general CUDA-core kernel (tests and benchmarks compare the two). */
#define KVQ_CUDA_ATTN_GENERIC 1u

/* Device scratch an attend call needs (split-K partial results, rotated queries). */
KVQ_API kvq_status kvq_cuda_attend_workspace(const kvq_cuda_quantizer *key,
                                             const kvq_cuda_quantizer *value,
                                             const kvq_cuda_attn_desc *desc, size_t *bytes);
KVQ_API kvq_status kvq_cuda_attend(const kvq_cuda_quantizer *key, const kvq_cuda_quantizer *value,
                                   const kvq_cuda_attn_desc *desc, const void *q_dev,
                                   const uint8_t *k_codes_dev, const uint8_t *v_codes_dev,
                                   const int32_t *seq_lens_dev, void *workspace_dev,
                                   size_t workspace_bytes, float *out_dev, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* KVQ_H */
