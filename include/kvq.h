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
    uint32_t n_outliers;     /* key channels per head kept apart in fp16 (0 = none): the
                                largest by RMS over the first 32 tokens, then fixed */
    uint32_t chunk_tokens;   /* arena chunk length in tokens (0 = 256) */
    uint32_t max_tokens;     /* hard capacity (0 = grow without bound) */
    uint32_t n_sink;         /* first tokens also kept exact (fp32): the attention sinks
                                (StreamingLLM, arXiv 2309.17453) (0 = none, at most 1024) */
} kvq_cache_config;

typedef struct kvq_cache kvq_cache;

/* Exact bytes held by a cache. total == codes + window + outliers + shared + overhead.
 * key_codes / value_codes are code_size x n_kv_heads x tokens once tokens are encoded;
 * with outlier channels the first 32 tokens stay exact (staged, counted in outliers)
 * until the channels are chosen from them. The arena grows in whole chunks: the unused
 * tail of the last chunk is overhead. */
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
 * multiple of n_kv_heads. pool may be NULL (run on the calling thread).
 * Softmax weights are scale * <q, k>; scores, softmax and the weighted sum of values
 * are fused per block of tokens, so no decoded copy of the cache is ever built.
 * One attend at a time per cache: it works in the cache's own per-thread scratch, which
 * is allocated on the first call that brings a larger pool or more query heads per KV
 * head (the only allocation attend makes). */
KVQ_API kvq_status kvq_cache_attend(kvq_cache *cache, const float *q, uint32_t n_q_heads,
                                    size_t n_queries, float scale, kvq_threadpool *pool,
                                    float *out);
KVQ_API kvq_status kvq_cache_memory(const kvq_cache *cache, kvq_cache_memory_info *info);
/* How many tokens of context fit in budget_bytes for n_layers caches of this config
 * (whole chunks; attend's per-thread scratch, tens of KB, is not counted). */
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

/* A Llama-family model read from a GGUF file (v2/v3, memory-mapped read-only).
 * Every count, offset and size in the file is checked before use: a bad file gives
 * KVQ_ERR_FORMAT (or KVQ_ERR_UNSUPPORTED for a valid file with an unknown tensor type
 * or architecture) and msg names the problem. */
typedef struct kvq_model kvq_model;

#define KVQ_MODEL_TYPE_SLOTS 32 /* ggml tensor type ids counted in kvq_model_info */

typedef struct kvq_model_info {
    char arch[32];            /* general.architecture: "llama", "qwen2", ... */
    char name[96];            /* general.name ("" if absent) */
    char tokenizer[16];       /* tokenizer.ggml.model: "gpt2" or "llama" */
    char pre_tokenizer[32];   /* tokenizer.ggml.pre ("" if absent) */
    uint32_t gguf_version;
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t n_embd;
    uint32_t n_ff;
    uint32_t n_vocab;
    uint32_t ctx_len;         /* training context length */
    float rope_base;
    float rope_scale;         /* linear position scaling (1 = none) */
    int rope_neox;            /* 1: rotate pairs (i, i + d/2); 0: pairs (2i, 2i + 1) */
    float norm_eps;
    int tied_output;          /* 1 if the output projection is the token embedding */
    int32_t bos_token;        /* -1 if none */
    int32_t eos_token;        /* -1 if none */
    int add_bos;              /* tokenizer.ggml.add_bos_token (default 1 for "llama") */
    uint64_t n_params;        /* weights in all tensors */
    uint64_t weight_bytes;    /* bytes of tensor data */
    uint64_t n_tensors;
    uint64_t n_metadata;
    uint32_t type_count[KVQ_MODEL_TYPE_SLOTS]; /* tensors per ggml type id */
} kvq_model_info;

KVQ_API kvq_status kvq_model_load(const char *path, kvq_model **out, char *msg, size_t msg_size);
KVQ_API void kvq_model_free(kvq_model *model);
KVQ_API kvq_status kvq_model_get_info(const kvq_model *model, kvq_model_info *info);
/* "Q4_1", "F32", ... for a ggml type id; NULL if unknown. */
KVQ_API const char *kvq_tensor_type_name(uint32_t type);
/* Metadata key i (0..n_metadata-1) and its value printed as text (arrays: type and
 * length, then the first elements). */
KVQ_API kvq_status kvq_model_metadata(const kvq_model *model, uint64_t i, char *key,
                                      size_t key_size, char *value, size_t value_size);
/* Tensor i: name, ggml type id, dims (ne0 = row length first, unused dims 1). */
KVQ_API kvq_status kvq_model_tensor(const kvq_model *model, uint64_t i, char *name,
                                    size_t name_size, uint32_t *type, uint64_t dims[4],
                                    uint32_t *n_dims);

/* Tokenizer from the file's metadata: byte-level BPE ("gpt2") or SentencePiece
 * ("llama", scores and byte fallback). On KVQ_ERR_CAPACITY *n_tokens holds the
 * number needed. add_bos < 0 follows the file's add_bos_token. */
KVQ_API kvq_status kvq_tokenize(const kvq_model *model, const char *text, int add_bos,
                                int32_t *tokens, size_t cap, size_t *n_tokens);
/* The bytes a token stands for (special tokens as their text); *len receives the
 * length, buf is NUL-terminated when it fits. KVQ_ERR_CAPACITY if buf is too small. */
KVQ_API kvq_status kvq_token_to_piece(const kvq_model *model, int32_t token, char *buf,
                                      size_t size, size_t *len);
KVQ_API kvq_status kvq_detokenize(const kvq_model *model, const int32_t *tokens, size_t n,
                                  char *buf, size_t size, size_t *len);

/* An inference context: activations, scratch, the KV cache of every layer, a thread
 * pool and the sampler's random state. */
typedef struct kvq_context kvq_context;

/* Sees every layer's keys (after RoPE) and values as they enter the cache:
 * k, v: [n_tokens][n_kv_heads][head_dim] at positions pos..pos+n_tokens-1. */
typedef void (*kvq_kv_observer)(void *user, uint32_t layer, size_t pos, const float *k,
                                const float *v, size_t n_tokens);
/* Sees every layer's queries (after RoPE, before the softmax scale) as attention gets
 * them: q: [n_tokens][n_heads][head_dim] at positions pos..pos+n_tokens-1. */
typedef void (*kvq_query_observer)(void *user, uint32_t layer, size_t pos, const float *q,
                                   size_t n_tokens);

typedef struct kvq_context_params {
    uint32_t n_ctx;        /* positions the context holds (0 = min(model ctx_len, 4096)) */
    uint32_t n_batch;      /* most tokens per kvq_context_eval call (0 = 512) */
    uint32_t n_threads;    /* 0 = one per online CPU */
    uint64_t seed;         /* sampler seed */
    /* KV cache per layer: NULL = exact float32 keys and values (the reference);
     * else n_cache_configs configs: 1 (every layer the same) or n_layers. */
    const kvq_cache_config *cache;
    uint32_t n_cache_configs;
    kvq_kv_observer kv_observer; /* NULL = none */
    void *kv_observer_user;
    kvq_query_observer query_observer; /* NULL = none */
    void *query_observer_user;
} kvq_context_params;

KVQ_API kvq_status kvq_context_params_init(kvq_context_params *params);
KVQ_API kvq_status kvq_context_create(const kvq_model *model, const kvq_context_params *params,
                                      kvq_context **out);
KVQ_API void kvq_context_free(kvq_context *ctx);
/* Forget every position (the cache is emptied, the sampler keeps its state). */
KVQ_API kvq_status kvq_context_reset(kvq_context *ctx);
/* Positions evaluated so far. */
KVQ_API kvq_status kvq_context_length(const kvq_context *ctx, size_t *n_tokens);
/* Run n tokens (n <= n_batch) at the next positions. logits (may be NULL) receives
 * n_vocab floats for the last token, or n * n_vocab (one row per token) if all_logits.
 * KVQ_ERR_CAPACITY when the context is full. */
KVQ_API kvq_status kvq_context_eval(kvq_context *ctx, const int32_t *tokens, size_t n,
                                    float *logits, int all_logits);
/* Pick a token from logits: temperature <= 0 is greedy (argmax, lowest id on ties);
 * else softmax(logits / temperature) restricted to the smallest set of tokens whose
 * probability reaches top_p (top_p >= 1: all), drawn with the context's seeded rng. */
KVQ_API kvq_status kvq_sample(kvq_context *ctx, const float *logits, float temperature,
                              float top_p, int32_t *token);
/* Bytes the KV caches of all layers hold now (summed; exact float KV counts as
 * key_codes/value_codes of 4 bytes a number), and what fp16 keys and values would take. */
KVQ_API kvq_status kvq_context_kv_memory(const kvq_context *ctx, kvq_cache_memory_info *info,
                                         uint64_t *fp16_bytes);

/* -------------------------------------------------------------------- cuda */
/* (section filled by the CUDA kernels: kvq_cuda_*) */

#ifdef __cplusplus
}
#endif

#endif /* KVQ_H */
