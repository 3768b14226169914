/*
 * kvq.h - the one public header of kvq: key/value-cache and vector compression.
 *
 * Conventions (the same everywhere in this header):
 *   - every function that can fail returns a kvq_status; results go through
 *     out-parameters; kvq_strerror() turns a status into a sentence;
 *   - handles are opaque and come in *_create / *_free pairs; *_free(NULL) is a no-op;
 *   - floats are row-major float32 unless a name says otherwise;
 *   - the same seed gives the same codes on every ISA and every run.
 *
 * Threads. The library keeps no mutable global state but the CPU-dispatch table, which
 * is filled once under pthread_once: calls on DIFFERENT objects may always run at once.
 * On ONE object, a const pointer in a signature means "only reads": calls that only
 * read may run concurrently with each other, never with a call that takes the object
 * non-const (free included). Per object:
 *   - kvq_quantizer: encode/decode/score (and their _at forms), score_bound, config,
 *     code_size, save, kvq_cuda_quantizer_create: concurrent; fit: alone.
 *   - kvq_cache: one call at a time, whatever it is: attend (const or not) works in and
 *     grows scratch inside the cache, which length and memory also read.
 *   - kvq_cache_set: its layers are independent caches (each as above; different layers
 *     at once is fine); set_reset, set_memory and set_free touch every layer: alone.
 *   - kvq_index: search, save, count, size_bytes, get_config: concurrent (search makes
 *     its own scratch); train and add: alone, never while a search runs.
 *   - kvq_threadpool: runs one job at a time: two calls sharing a pool must not overlap
 *     (contexts and batches given one pool in their params included).
 *   - kvq_model: read-only once loaded (tokenize, metadata, any number of contexts).
 *   - kvq_context: one call at a time (eval, sample, reset, length, kv_memory).
 *   - kvq_batch: one decode at a time; the contexts a decode is given are in use for
 *     its whole length (no other call on them meanwhile, nor in a second decode).
 *   - kvq_cuda_quantizer, kvq_cuda_chan: read-only once created; encode/append/attend
 *     calls only enqueue work on the caller's stream (buffers passed in belong to the
 *     caller: two appends into one cache buffer must be ordered by the caller's streams).
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
/* One line saying what was wrong in the last failing call on this thread that had
 * more to say than its status ("cache: outliers 64 must be below head_dim 64",
 * "x.kvqi: No space left on device", ...); "" when none. Per thread (each thread sees
 * its own failures only); successful calls leave it as it is, so clear it first with
 * kvq_clear_last_error() to tell whether a call recorded one. The string stays valid
 * until the thread's next kvq call. Calls with a msg buffer write the same line there. */
KVQ_API const char *kvq_last_error(void);
KVQ_API void kvq_clear_last_error(void);
/* "0.1.0" and the ISA the kernels run on here: "avx512", "avx2", "neon" or "scalar". */
KVQ_API const char *kvq_version_string(void);
KVQ_API const char *kvq_cpu_isa(void);

/* Instruction sets a quantizer may be pinned to (tests compare them; users keep AUTO).
 * KVQ_FORCE_SCALAR=1 in the environment makes AUTO resolve to SCALAR; KVQ_FORCE_AVX2=1
 * makes an AVX-512 CPU resolve to AVX2. */
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
    KVQ_METHOD_CHANNEL,         /* KIVI's asymmetric uniform code: per vector (min, step,
                                   b-bit codes); as cache keys per channel over each chunk */
    KVQ_METHOD_VQ,              /* rotation + 4-d codebook of 256 (2 bits a coordinate) + norm */
    KVQ_METHOD_COUNT
} kvq_method;

/* How RoPE pairs the coordinates of a head: (2i, 2i+1) as llama.cpp's "normal" mode,
 * or NeoX's half split (i, i + dim/2). Pair i turns by pos * base^(-2i/dim). */
enum { KVQ_ROPE_INTERLEAVED = 0, KVQ_ROPE_NEOX = 1 };

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
    float rope_base;       /* comm_vq: RoPE frequency base theta (default 10000); channel
                            * cache keys: > 0 codes them before RoPE (default 0: after) */
    uint32_t rope_pairing; /* comm_vq, channel: KVQ_ROPE_INTERLEAVED (default) or KVQ_ROPE_NEOX */
    kvq_isa isa;           /* KVQ_ISA_AUTO unless pinning for tests */
    char artifact[512];    /* calibrated methods: safetensors artifact to load ("" = none) */
} kvq_config;

/* A valid default config for (method, dim); dim 0 or an unknown method: KVQ_ERR_INVALID_ARG. */
KVQ_API kvq_status kvq_config_init(kvq_config *cfg, kvq_method method, uint32_t dim);
/* Parse a spec as users type it: "turboquant_rvq:bits=1,residuals=2", "rabitq:bits=1",
 * "qjl", "polar:bits=4", "fp16", "q8_0", "q4_0", "mse:bits=2", "vecinfer:artifact=F".
 * Integers are decimal digits only (no sign, spaces, base prefix or leading zero).
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

/* Position-aware calls, for methods whose codes live before RoPE (comm_vq). pos[i] is
 * the token position of row i. Every method takes them; position-free methods ignore
 * pos (which may then be NULL) and behave as kvq_encode/kvq_decode/kvq_score.
 *   encode_at: x[i] is the key BEFORE RoPE of the token at pos[i] (NULL: position 0);
 *              comm_vq keeps the position in the code.
 *   decode_at: the key as attention sees it at pos[i], RoPE applied (NULL: the position
 *              stored in each code, which is what kvq_decode uses).
 *   score_at:  <query, decode_at(codes_i, pos[i])> with the query as attention holds it
 *              (after its own RoPE); comm_vq rotates the query instead of the keys. */
KVQ_API kvq_status kvq_encode_at(const kvq_quantizer *q, const float *x, const int32_t *pos,
                                 size_t n, uint8_t *codes);
KVQ_API kvq_status kvq_decode_at(const kvq_quantizer *q, const uint8_t *codes,
                                 const int32_t *pos, size_t n, float *x);
KVQ_API kvq_status kvq_score_at(const kvq_quantizer *q, const float *query,
                                const uint8_t *codes, const int32_t *pos, size_t n,
                                float *scores);

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
    uint32_t chunk_tokens;   /* arena chunk length in tokens (0 = 64) */
    uint32_t max_tokens;     /* hard capacity (0 = grow without bound) */
    uint32_t n_sink;         /* first tokens also kept exact (fp32): the attention sinks
                                (StreamingLLM, arXiv 2309.17453) (0 = none, at most 1024) */
    uint32_t center_keys;    /* 1: subtract each head's mean key (over the probe tokens
                                after the first) before encoding and add <q, mean> back
                                to the scores: softmax is unchanged by a constant shift,
                                and the persistent channel bias leaves the codes */
    uint32_t sliding_window; /* 0: every query sees every earlier token; W: a query at
                                position p sees p-W+1..p only (Gemma's local layers), and
                                the cache frees what no later query can see: attend's
                                queries must then lie within the last append */
    uint32_t sliding_key_bits;   /* with sliding_window: this many bits more for the keys
                                    (channel or turboquant_mse; at most 8 in all), and */
    uint32_t sliding_value_bits; /* for the values (turboquant_mse): such a layer holds at
                                    most its window, so its bytes stop growing (0 = none;
                                    no effect without sliding_window) */
} kvq_cache_config;

typedef struct kvq_cache kvq_cache;

/* Exact bytes held by a cache. total == codes + window + outliers + shared + overhead.
 * key_codes / value_codes are code_size x n_kv_heads x tokens once tokens are encoded;
 * with outlier channels the first 32 tokens stay exact (staged, counted in outliers)
 * until the channels are chosen from them. The arena grows in slabs of whole chunks (a
 * sixteenth of the chunks held, up to 1024 tokens; each head's codes contiguous across a
 * slab): the unused tail of the last slab is overhead. */
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
/* A whole cache config from one string, as the CLI, the Python package and the server
 * take it: a preset name ("q4", "q3", "q2"), or KSPEC[+VSPEC] (values as keys when no
 * '+'), either followed by "@" and cache options: window=N, sink=N, outliers=N,
 * center=0|1 (comma-separated, decimal). "q4@window=64", "mse:bits=4+mse:bits=2@sink=1".
 * A preset gives the layers outside its per-layer plan; kvq_cache_config_parse_layer
 * gives each layer of a model its own. PRESET+VSPEC: the preset with VSPEC for the values
 * its plan leaves at the base spec ("q3+vq", "q3+vq@chunk=128"). */
KVQ_API kvq_status kvq_cache_config_parse(const char *spec, uint32_t n_kv_heads, uint32_t head_dim,
                                          kvq_cache_config *cfg, char *msg, size_t msg_size);
/* Applies "window=N,sink=N,outliers=N,center=0|1" to cfg. */
KVQ_API kvq_status kvq_cache_options_parse(const char *options, kvq_cache_config *cfg, char *msg,
                                           size_t msg_size);

/* Named presets: the best measured configs at <= 4.5, <= 3.0 and <= 2.25 bits per
 * element (docs/METHODS.md gives the measurements). Static data, never freed. */
typedef struct kvq_cache_preset {
    const char *name;       /* "q4", "q3", "q2" */
    const char *key_spec;   /* kvq_config_parse specs */
    const char *value_spec;
    uint32_t window, n_sink, n_outliers, center_keys; /* as in kvq_cache_config */
    double bits;            /* bits per cached number at 4096 tokens, all parts counted */
    const char *summary;    /* one line for --help */
    uint32_t chunk_tokens;  /* as in kvq_cache_config (0 = the default, 64) */
    /* Per-layer plan, from the layer count alone: for an n-layer model, sixth s of the
     * layers is the n / 6 layers (rounded down) from layer s * n / 6. The layers of the
     * sixths whose bit is set in plan_key_sixths code keys with plan_key_spec instead of
     * key_spec (values: plan_value_sixths, plan_value_spec); 0: none. Each plan spec is
     * one bit more than the base, so a plan of k sixths adds at most k / 12 bit per
     * cached number on average. */
    const char *plan_key_spec, *plan_value_spec;
    uint32_t plan_key_sixths, plan_value_sixths;
    /* as in kvq_cache_config: bits more for a sliding-window layer's keys and values */
    uint32_t sliding_key_bits, sliding_value_bits;
} kvq_cache_preset;
/* Preset i (0, 1, ...) and NULL past the last; by name, NULL if unknown. */
KVQ_API const kvq_cache_preset *kvq_cache_preset_at(size_t i);
KVQ_API const kvq_cache_preset *kvq_cache_preset_get(const char *name);
KVQ_API const char *kvq_cache_preset_name(size_t i);
/* cfg from a preset for a layer shape, the layers outside its plan; KVQ_ERR_PARSE (msg
 * lists the names) if unknown. */
KVQ_API kvq_status kvq_cache_config_preset(kvq_cache_config *cfg, const char *preset,
                                           uint32_t n_kv_heads, uint32_t head_dim, char *msg,
                                           size_t msg_size);
/* Layer `layer` of an n_layers-layer model: the preset's per-layer plan applied
 * (n_layers 0: as kvq_cache_config_preset; layer >= n_layers > 0: KVQ_ERR_INVALID_ARG). */
KVQ_API kvq_status kvq_cache_config_preset_layer(kvq_cache_config *cfg, const char *preset,
                                                 uint32_t n_kv_heads, uint32_t head_dim,
                                                 uint32_t layer, uint32_t n_layers, char *msg,
                                                 size_t msg_size);
/* kvq_cache_config_parse for layer `layer` of n_layers: a preset resolves its per-layer
 * plan (n_layers 0: as kvq_cache_config_parse, every preset layer outside the plan). */
KVQ_API kvq_status kvq_cache_config_parse_layer(const char *spec, uint32_t n_kv_heads,
                                                uint32_t head_dim, uint32_t layer,
                                                uint32_t n_layers, kvq_cache_config *cfg,
                                                char *msg, size_t msg_size);
KVQ_API kvq_status kvq_cache_create(const kvq_cache_config *cfg, kvq_cache **out);
KVQ_API void kvq_cache_free(kvq_cache *cache);
KVQ_API kvq_status kvq_cache_reset(kvq_cache *cache);
KVQ_API kvq_status kvq_cache_length(const kvq_cache *cache, size_t *n_tokens);
/* Quantize and append n_tokens key and value rows. A NaN or infinite entry anywhere in
 * k or v: KVQ_ERR_INVALID_ARG, nothing appended. */
KVQ_API kvq_status kvq_cache_append(kvq_cache *cache, const float *k, const float *v,
                                    size_t n_tokens);
/* Channel keys (`channel:` key specs, the presets): the queries of the tokens about to be
 * appended, q: [n_queries][n_q_heads][head_dim] as kvq_cache_attend takes them. Until
 * the first chunk is coded the cache sums each key channel's squared queries (per KV
 * head, its query heads together); the chunk's bits then go by range times the root of
 * that mean square rather than by range alone (a score's error is sum_j q_j e_j), so
 * channels the queries barely read get fewer bits (docs/METHODS.md, "channel"). The sums
 * are held only until then. Optional: without it
 * the bits follow the ranges. An engine calls it before each kvq_cache_append with the
 * same tokens' queries; once the bits are fixed, and for other key methods, it does
 * nothing. A NaN or infinite entry: KVQ_ERR_INVALID_ARG, nothing summed. */
KVQ_API kvq_status kvq_cache_observe_queries(kvq_cache *cache, const float *q, uint32_t n_q_heads,
                                             size_t n_queries);
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
 * (whole slabs of chunks, each layer with its own rotation: a bound for a cache set or
 * context, whose layers share it; attend's per-thread scratch, tens of KB, is not
 * counted). */
KVQ_API kvq_status kvq_cache_tokens_fit(const kvq_cache_config *cfg, uint32_t n_layers,
                                        uint64_t budget_bytes, uint64_t *n_tokens);

/* One cache per layer of a model, each with its own config (layers may use different
 * methods and bits: per_layer[n_layers]). Layers whose quantizers read back the same
 * rotation (same method, dim and seed) hold one copy of it, the first layer's. */
typedef struct kvq_cache_set kvq_cache_set;
KVQ_API kvq_status kvq_cache_set_create(uint32_t n_layers, const kvq_cache_config *per_layer,
                                        kvq_cache_set **out);
KVQ_API void kvq_cache_set_free(kvq_cache_set *set);
/* The cache of one layer (owned by the set). */
KVQ_API kvq_status kvq_cache_set_layer(kvq_cache_set *set, uint32_t layer, kvq_cache **out);
KVQ_API kvq_status kvq_cache_set_reset(kvq_cache_set *set);
/* Sums of every layer's kvq_cache_memory (n_tokens: the longest layer). */
KVQ_API kvq_status kvq_cache_set_memory(const kvq_cache_set *set, kvq_cache_memory_info *info);

/* ------------------------------------------------------------- calibration */

/* Calibration data for users of any engine: a 2-D tensor [rows][cols] of F32, F16 or
 * BF16 read from a safetensors file (name NULL: the file's only tensor, or the one named
 * "keys"). *data is allocated by kvq; release it with kvq_buffer_free. msg names the
 * problem on failure. */
KVQ_API kvq_status kvq_tensor_read_f32(const char *path, const char *name, float **data,
                                       size_t *rows, size_t *cols, char *msg, size_t msg_size);
/* Write one F32 tensor [rows][cols] named name to a new safetensors file. */
KVQ_API kvq_status kvq_tensor_write_f32(const char *path, const char *name, const float *data,
                                        size_t rows, size_t cols);
KVQ_API void kvq_buffer_free(void *p);

/* A set of per-layer artifacts (kvq calibrate --per-layer) as one unit. seal writes,
 * after the last layer's file, a manifest with each file's size and checksum, replacing
 * it atomically (temp file, fsync, rename); check refuses a set whose files differ from
 * their manifest (KVQ_ERR_MISMATCH: mixed or partial, e.g. a killed calibrate run) or
 * whose manifest is absent or unreadable (KVQ_ERR_IO, KVQ_ERR_FORMAT); msg says which
 * file. paths[n_layers]: layer l's file. */
KVQ_API kvq_status kvq_layer_set_seal(const char *manifest, const char *const *paths, uint32_t n_layers,
                                      char *msg, size_t msg_size);
KVQ_API kvq_status kvq_layer_set_check(const char *manifest, const char *const *paths, uint32_t n_layers,
                                       char *msg, size_t msg_size);

/* RateQuant: bits per layer by reverse water-filling. Layer l's distortion is modelled as
 * sensitivity[l] * 4^-(b - choices[0]) (rate-distortion of a Gaussian source, measured at
 * the smallest choice); starting from choices[0] everywhere, the budget
 * round-down(target_bits * n_layers) is spent one step at a time on the layer with the
 * largest distortion drop per bit (ties: lower layer), which is optimal for this convex
 * model. The total is exactly the budget, so the average equals target_bits whenever
 * target_bits * n_layers is a whole number (else it is the largest total below it).
 * choices: ascending bit widths (e.g. {1, 2, 3, 4}); target within [first, last]. */
KVQ_API kvq_status kvq_ratequant_allocate(const double *sensitivity, uint32_t n_layers,
                                          const uint32_t *choices, uint32_t n_choices,
                                          double target_bits, uint32_t *bits);
/* A RateQuant plan file (safetensors): per-layer bits and sensitivities plus the base
 * key spec they apply to (e.g. "turboquant_rvq"). */
KVQ_API kvq_status kvq_ratequant_save(const char *path, const char *key_spec,
                                      const double *sensitivity, const uint32_t *bits,
                                      uint32_t n_layers, double target_bits);
/* Per-layer cache configs from a plan: each layer gets base with its key bits set to the
 * plan's bits (key method taken from the plan). n_layers must match the plan
 * (KVQ_ERR_MISMATCH otherwise, with msg saying so). */
KVQ_API kvq_status kvq_ratequant_cache_configs(const char *path, const kvq_cache_config *base,
                                               uint32_t n_layers, kvq_cache_config *per_layer,
                                               char *msg, size_t msg_size);


/* ------------------------------------------------------------------- index */
/* An approximate nearest-neighbour index over float vectors: IVF clusters (k-means),
 * RaBitQ codes of each vector's rotated residual (1-bit signs in 32-vector fast-scan
 * blocks, plus b-1 extra bits per coordinate for extended RaBitQ), and an optional
 * exact reorder store. Search estimates every distance from the codes with a
 * confidence bound and reranks exactly only the vectors whose lower bound can still
 * enter the top k. Ids are int64; distances are squared L2 for KVQ_METRIC_L2 and
 * -<q, x> for ip and cosine (smaller is nearer in every metric). */
typedef enum kvq_metric {
    KVQ_METRIC_L2 = 0,     /* squared Euclidean distance */
    KVQ_METRIC_IP = 1,     /* maximum inner product; reported distance = -<q, x> */
    KVQ_METRIC_COSINE = 2  /* vectors and queries normalized, then as ip */
} kvq_metric;

typedef enum kvq_index_rotation {
    KVQ_ROTATION_FHT = 0,   /* randomized Hadamard, O(d log d) */
    KVQ_ROTATION_DENSE = 1  /* Haar-random orthogonal matrix, O(d^2) */
} kvq_index_rotation;

typedef enum kvq_index_reorder {
    KVQ_REORDER_FP32 = 0,  /* exact vectors kept for reranking (4 bytes per coordinate) */
    KVQ_REORDER_FP16 = 1,  /* half precision (2 bytes per coordinate) */
    KVQ_REORDER_NONE = 2   /* codes only: results ranked by the estimator */
} kvq_index_reorder;

typedef struct kvq_index_config {
    uint32_t dim;                /* input vector length */
    kvq_metric metric;
    uint32_t nlist;              /* IVF clusters; 1 = flat (one list around the mean) */
    uint32_t bits;               /* bits per coordinate of the base code, 1..8 */
    uint32_t split;              /* 1: the 1-bit pass prunes before the b-bit estimate
                                    (VSAG's split 1 + 7 layout when bits = 8) */
    uint32_t query_bits;         /* 4: query quantized to 4 bits, integer fast scan;
                                    32: float query (slower, no query rounding error) */
    kvq_index_rotation rotation;
    uint32_t pca_dim;            /* 0 = none; else project to this many principal axes */
    kvq_index_reorder reorder;
    uint64_t seed;               /* rotation, k-means, sampling: same seed, same index */
    uint32_t train_iters;        /* k-means iterations (0 = 20) */
    uint32_t max_train_points;   /* training sample cap (0 = 40 * nlist, at least 4096) */
    uint32_t ip_assign;          /* ip / cosine, which list a vector joins: 0 = its l2-nearest
                                    centroid (balanced lists; default), 1 = the centroid with
                                    the largest <x, c>, the probe's own measure (more recall
                                    per probed list, but large-norm lists grow large) */
} kvq_index_config;

/* Defaults: l2, nlist 1, bits 1, split 0, query_bits 4, fht, no pca, fp32 reorder. */
KVQ_API kvq_status kvq_index_config_init(kvq_index_config *cfg, uint32_t dim);

typedef struct kvq_index_search_params {
    uint32_t nprobe;        /* clusters visited per query (0 = 1; capped at nlist) */
    uint32_t rerank;        /* at most this many exact distances per query (0 = as many
                               as the error bound asks for) */
    float eps0;             /* confidence of the bound (0 = 1.9; larger = more reranks,
                               INFINITY reranks every scanned vector) */
    uint32_t n_threads;     /* used when pool is NULL: 0 or 1 = the calling thread */
    kvq_threadpool *pool;   /* optional: queries are spread over its threads */
} kvq_index_search_params;

KVQ_API kvq_status kvq_index_search_params_init(kvq_index_search_params *p);

typedef struct kvq_index kvq_index;

KVQ_API kvq_status kvq_index_create(const kvq_index_config *cfg, kvq_index **out);
KVQ_API void kvq_index_free(kvq_index *index);
/* k-means (and PCA) on a seeded sample of x[n][dim]; must precede add. Flat indexes
 * (nlist 1) need at least one vector, to take the mean. */
KVQ_API kvq_status kvq_index_train(kvq_index *index, const float *x, size_t n);
/* Append n vectors. ids may be NULL: then ids continue from one past the largest stored
 * id (0 for an empty index; = kvq_index_count() while ids were never chosen). Ids must
 * be >= 0 (-1 marks "no result" in search output). KVQ_ERR_INVALID_ARG, with nothing
 * added, for a negative id, a NaN or infinite coordinate, a squared norm above 1e36, or
 * (cosine) an all-zero vector; train refuses the same rows. */
KVQ_API kvq_status kvq_index_add(kvq_index *index, const float *x, size_t n,
                                 const int64_t *ids);
/* For each query, the k nearest: out_ids[n_queries][k], out_dists[n_queries][k] (may be
 * NULL), ascending distance; slots past the number of vectors found hold id -1. Queries
 * must pass the same checks as added rows (KVQ_ERR_INVALID_ARG: a NaN query never
 * returns a row of -1). */
KVQ_API kvq_status kvq_index_search(const kvq_index *index, const float *queries,
                                    size_t n_queries, uint32_t k,
                                    const kvq_index_search_params *params, int64_t *out_ids,
                                    float *out_dists);
/* Which ids a search may return: id i passes when it is below bitset_ids and bit i
 * (byte i / 8, bit i % 8) of id_bitset is set, and, if allow is not NULL, when
 * allow(id, ctx) returns non-zero. A NULL filter (or both NULL) passes every id. Filtered
 * vectors never enter the candidate set, so the k results are the k nearest passing ones
 * (as far as the probed lists hold them). allow may be called from the pool's threads. */
typedef struct kvq_index_filter {
    const uint8_t *id_bitset;
    uint64_t bitset_ids;
    int (*allow)(int64_t id, void *ctx);
    void *ctx;
} kvq_index_filter;
/* kvq_index_search with a filter (may be NULL). */
KVQ_API kvq_status kvq_index_search_filtered(const kvq_index *index, const float *queries,
                                             size_t n_queries, uint32_t k,
                                             const kvq_index_search_params *params,
                                             const kvq_index_filter *filter, int64_t *out_ids,
                                             float *out_dists);
/* Every vector of the probed lists within distance radius of one query (distance as in
 * search: squared L2, or -<q, x> for ip and cosine; <= radius). Exact distances where
 * the index keeps a reorder store (each vector whose lower bound is <= radius is
 * checked; eps0 = INFINITY checks all), estimates otherwise. Results in ascending
 * distance into out_ids/out_dists[cap]; *n_found is the number there are: when it
 * exceeds cap, the first cap are written and KVQ_ERR_CAPACITY returned. filter may be
 * NULL. nprobe = nlist searches everything. */
KVQ_API kvq_status kvq_index_range_search(const kvq_index *index, const float *query,
                                          float radius, const kvq_index_search_params *params,
                                          const kvq_index_filter *filter, int64_t *out_ids,
                                          float *out_dists, size_t cap, size_t *n_found);
/* Remove every stored vector whose id is in ids[n] (ids not present are ignored);
 * *removed (may be NULL) says how many went. Order of the rest is kept. */
KVQ_API kvq_status kvq_index_remove(kvq_index *index, const int64_t *ids, size_t n,
                                    uint64_t *removed);
/* One file: versioned header, sections, CRC-32 trailer; written to a temp file,
 * fsynced and renamed into place. Load refuses truncated, corrupt or foreign files
 * with KVQ_ERR_FORMAT. */
KVQ_API kvq_status kvq_index_save(const kvq_index *index, const char *path);
KVQ_API kvq_status kvq_index_load(const char *path, kvq_index **out);
KVQ_API kvq_status kvq_index_load_buffer(const void *buf, size_t size, kvq_index **out);
/* As load, but the codes, factors, ids and reorder store stay in a read-only shared
 * mapping of the file (validated in place: CRC, counts, rows, finite floats) instead of
 * private memory; the page cache is shared between processes mapping the same file. The
 * index searches like a loaded one; add and remove answer KVQ_ERR_STATE (load it to
 * edit). The file must not be truncated while mapped. Format-1 files (unaligned) give
 * KVQ_ERR_UNSUPPORTED: load and save them once. */
KVQ_API kvq_status kvq_index_map(const char *path, kvq_index **out);
/* Bytes the index holds in memory (codes, factors, ids, lists, reorder store, centroids,
 * rotation, PCA). */
KVQ_API kvq_status kvq_index_size_bytes(const kvq_index *index, uint64_t *bytes);
/* Bytes each vector takes in the lists: its 1-bit code (d/8, d rounded up to 16), the
 * extended code packed at `bits` bits per coordinate (bits > 1), the estimator factors
 * and a row number; the reorder store (dim * 4 or 2) and the id (8) come on top. */
KVQ_API kvq_status kvq_index_code_bytes(const kvq_index *index, uint64_t *per_vector);
/* Train (k-means assignment) and add (assignment and encoding) spread their work over
 * pool's threads; NULL = the calling thread. The index only borrows the pool: it must
 * outlive every later train/add call (or be unset first). Results do not depend on it. */
KVQ_API kvq_status kvq_index_set_pool(kvq_index *index, kvq_threadpool *pool);
KVQ_API kvq_status kvq_index_count(const kvq_index *index, uint64_t *count);
KVQ_API kvq_status kvq_index_get_config(const kvq_index *index, kvq_index_config *out);

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

/* One chat message: role "system", "user" or "assistant" (others pass through as the
 * template writes them), content UTF-8 text. */
typedef struct kvq_chat_message { const char *role; const char *content; } kvq_chat_message;
/* Renders msgs with the model's chat template (GGUF tokenizer.chat_template, recognised
 * among the common families: ChatML (SmolLM2, Qwen2), Llama 3, Llama 2/Mistral [INST],
 * Gemma (<start_of_turn>), Phi-3; override with template_name != NULL: "chatml", "llama3",
 * "llama2", "mistral", "gemma", "phi3"). add_assistant != 0 appends the assistant turn's
 * opening. Writes NUL-terminated text to buf; *len gets the length needed (without NUL);
 * KVQ_ERR_CAPACITY when buf is too small, KVQ_ERR_UNSUPPORTED (msg says why) for an
 * unknown template. The templates' leading BOS is not written: kvq_tokenize adds it. */
KVQ_API kvq_status kvq_chat_format(const kvq_model *model, const char *template_name,
                                   const kvq_chat_message *msgs, size_t n_msgs, int add_assistant,
                                   char *buf, size_t buf_size, size_t *len, char *msg, size_t msg_size);

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
    uint32_t n_threads;    /* 0 = one per online CPU; ignored when pool is set */
    /* NULL: the context makes its own pool of n_threads. Else it borrows this pool (not
     * freed with the context; it must outlive it): contexts, batches and caches on one
     * pool share its threads and attend scratch, and must not run at the same time. */
    kvq_threadpool *pool;
    uint64_t seed;         /* sampler seed */
    /* KV cache per layer: NULL = exact float32 keys and values (the reference);
     * else n_cache_configs configs: 1 (every layer the same) or n_layers. */
    const kvq_cache_config *cache;
    uint32_t n_cache_configs;
    /* 0: products with Q4_0/Q4_1/Q5_0/Q8_0/Q4_K/Q6_K rows quantize the activations to
     * int8 in blocks of 32 and take integer dot products, prompts and generation alike
     * (llama.cpp's way, several times faster); 1: float32 activations everywhere (the
     * numerical reference). */
    int float_activations;
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
 * KVQ_ERR_CAPACITY when the context is full. After any other error the caches may hold
 * part of the batch: kvq_context_reset before reusing the context. */
KVQ_API kvq_status kvq_context_eval(kvq_context *ctx, const int32_t *tokens, size_t n,
                                    float *logits, int all_logits);
/* Pick a token from logits: temperature <= 0 is greedy (argmax, lowest id on ties);
 * else softmax(logits / temperature) restricted to the smallest set of tokens whose
 * probability reaches top_p (top_p >= 1: all), drawn with the context's seeded rng. */
KVQ_API kvq_status kvq_sample(kvq_context *ctx, const float *logits, float temperature,
                              float top_p, int32_t *token);

/* kvq_sample_ext's settings; kvq_sampler_params_init gives greedy decoding and no
 * filter. The steps, in order: the repeat penalty on the logits of the recent tokens,
 * then the temperature, then top_k, top_p and min_p on the tempered distribution (as
 * kvq_sample does; llama.cpp filters before the temperature, the same at 1), then a
 * draw with the context's seeded rng. */
typedef struct kvq_sampler_params {
    float temperature;     /* <= 0: greedy (argmax after the penalty, lowest id on ties) */
    uint32_t top_k;        /* keep the k most likely tokens (0: all) */
    float top_p;           /* keep the smallest set whose probability reaches top_p (>= 1: all) */
    float min_p;           /* drop tokens less likely than min_p x the most likely one (0: none), 0..1 */
    float repeat_penalty;  /* > 0; a recent token's logit is divided by it when positive, else
                              multiplied (1: none); once per distinct token */
    const int32_t *recent; /* the tokens the penalty applies to (llama.cpp: the last 64) */
    size_t n_recent;
} kvq_sampler_params;

KVQ_API kvq_status kvq_sampler_params_init(kvq_sampler_params *params);
/* KVQ_ERR_INVALID_ARG for a NaN temperature, top_p < 0, min_p outside 0..1, a penalty
 * that is not a finite positive number, or a recent token outside the vocabulary. */
KVQ_API kvq_status kvq_sample_ext(kvq_context *ctx, const float *logits,
                                  const kvq_sampler_params *params, int32_t *token);
/* Bytes the KV caches of all layers hold now (summed; exact float KV counts as
 * key_codes/value_codes of 4 bytes a number), and what fp16 keys and values would take. */
KVQ_API kvq_status kvq_context_kv_memory(const kvq_context *ctx, kvq_cache_memory_info *info,
                                         uint64_t *fp16_bytes);

/* Batched decoding: one token for each of n contexts of the same model in one pass.
 * Every weight matrix is read once for all n rows (the int8 tile products of a prompt),
 * norms and the feed-forward run over the n rows together, and each row attends over
 * its own context's cache at its own position (contexts may differ in length and in
 * cache config). Each row's logits and each context's state afterwards are those that
 * kvq_context_eval of that one token on that context alone gives, bit for bit: every
 * product is computed row by row in the same order however many rows share it.
 * The batch holds the activations and scratch for max_seqs rows (sized at create,
 * nothing is allocated per token) and a thread pool for the products (its own, or one
 * it borrows); each context's attention runs on that context's pool. */
typedef struct kvq_batch kvq_batch;

typedef struct kvq_batch_params {
    uint32_t n_threads;     /* threads for the matrix products (0 = one per online CPU) */
    kvq_threadpool *pool;   /* NULL: its own pool of n_threads; else borrowed, as in
                               kvq_context_params (the contexts may share it too) */
    int float_activations;  /* as kvq_context_params: contexts decoded together must have
                               the same setting (else KVQ_ERR_MISMATCH) */
} kvq_batch_params;

KVQ_API kvq_status kvq_batch_params_init(kvq_batch_params *params);
/* KVQ_ERR_INVALID_ARG for max_seqs 0 or above 65536. params NULL: the defaults. */
KVQ_API kvq_status kvq_batch_create(const kvq_model *model, uint32_t max_seqs,
                                    const kvq_batch_params *params, kvq_batch **out);
KVQ_API void kvq_batch_free(kvq_batch *batch);
/* Evaluates tokens[i] at the next position of ctxs[i] for i < n and advances each
 * context by one position; logits (may be NULL) receives n rows of n_vocab floats, row i
 * for ctxs[i]. Checked before anything runs, leaving every context as it was:
 * KVQ_ERR_INVALID_ARG for n = 0 or n > max_seqs, a NULL context, one context twice or a
 * token outside the vocabulary; KVQ_ERR_MISMATCH for a context of another model or of
 * other float_activations; KVQ_ERR_CAPACITY when a context is full. After any other
 * error the contexts' caches may hold part of the step: kvq_context_reset them. */
KVQ_API kvq_status kvq_batch_decode(kvq_batch *batch, kvq_context *const *ctxs,
                                    const int32_t *tokens, size_t n, float *logits);

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
 * power of two from 32 to 1024; rotation none or Hadamard. Anything else:
 * KVQ_ERR_UNSUPPORTED. */
typedef struct kvq_cuda_quantizer kvq_cuda_quantizer;
KVQ_API kvq_status kvq_cuda_quantizer_create(const kvq_quantizer *q, kvq_cuda_quantizer **out);
KVQ_API void kvq_cuda_quantizer_free(kvq_cuda_quantizer *cq);

/* x_dev[n_rows][dim] (dtype) -> codes_dev[n_rows][kvq_code_size(q)], one launch for a
 * whole batch of tokens x heads. codes_dev must be 2-byte aligned; 16-byte aligned
 * input at dim 128 takes the fastest (thread-per-vector) kernels. */
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
/* kvq_cuda_chan_attend: one block per (sequence, kv head) for all coded chunks (tests
 * cover the long per-block loop with it; the default splits the context). */
#define KVQ_CUDA_ATTN_ONE_SPLIT 2u

/* Device scratch an attend call needs (split-K partial results, rotated queries). */
KVQ_API kvq_status kvq_cuda_attend_workspace(const kvq_cuda_quantizer *key,
                                             const kvq_cuda_quantizer *value,
                                             const kvq_cuda_attn_desc *desc, size_t *bytes);
KVQ_API kvq_status kvq_cuda_attend(const kvq_cuda_quantizer *key, const kvq_cuda_quantizer *value,
                                   const kvq_cuda_attn_desc *desc, const void *q_dev,
                                   const uint8_t *k_codes_dev, const uint8_t *v_codes_dev,
                                   const int32_t *seq_lens_dev, void *workspace_dev,
                                   size_t workspace_bytes, float *out_dev, void *stream);

/* Paged KV (as vLLM / FlashInfer page their caches): codes live in a pool of pages of
 * page_size tokens; page p holds, for every kv head h, its tokens at
 *   pages_dev + ((p * n_kv_heads + h) * page_size + slot) * code_size
 * and token t of sequence b sits in page page_table_dev[b * max_pages + t / page_size],
 * slot t % page_size. Sequences of any length share one launch (seq_lens_dev). The
 * contiguous layout above is the case page_table_dev == NULL, max_pages == 1,
 * page_size == capacity (page b is sequence b). page_size a multiple of 16 (and 16-byte
 * aligned pools) lets the tensor-core kernels run; other sizes take the general one.
 * Page ids are not checked on the device: every id a used entry names must be a page
 * of the pool. A tensor-parallel engine gives each GPU its own pools holding its kv heads
 * (n_kv_heads = the local count) and the same page table. */
typedef struct kvq_cuda_pages {
    const uint8_t *k_pages_dev;     /* key code pool */
    const uint8_t *v_pages_dev;     /* value code pool */
    const int32_t *page_table_dev;  /* [batch][max_pages] page ids, or NULL (contiguous) */
    uint32_t page_size;             /* tokens per page */
    uint32_t max_pages;             /* page-table columns; max_len <= max_pages * page_size */
} kvq_cuda_pages;

/* Decode attention over paged KV (desc->capacity is ignored). n_new: 0 for decode, or the
 * n_new of a kvq_cuda_prefill call whose workspace this sizes. */
KVQ_API kvq_status kvq_cuda_attend_paged_workspace(const kvq_cuda_quantizer *key,
                                                   const kvq_cuda_quantizer *value,
                                                   const kvq_cuda_attn_desc *desc,
                                                   const kvq_cuda_pages *pages, uint32_t n_new,
                                                   size_t *bytes);
KVQ_API kvq_status kvq_cuda_attend_paged(const kvq_cuda_quantizer *key,
                                         const kvq_cuda_quantizer *value,
                                         const kvq_cuda_attn_desc *desc,
                                         const kvq_cuda_pages *pages, const void *q_dev,
                                         const int32_t *seq_lens_dev, void *workspace_dev,
                                         size_t workspace_bytes, float *out_dev, void *stream);

/* Chunked prefill: n_new new tokens per sequence follow the seq_lens_dev[b] tokens
 * already compressed in the cache. New token i of sequence b attends, causally, to the
 * cached tokens and to new tokens 0..i, whose keys and values are given exactly:
 * q_dev [batch][n_new][n_q_heads][head_dim], k_new_dev and v_new_dev
 * [batch][n_new][n_kv_heads][head_dim], all of desc->q_dtype; out_dev
 * [batch][n_new][n_q_heads][head_dim] float32. batch * n_new <= 65535. Append the new
 * tokens (kvq_cuda_append) after the call to extend the cache. Workspace:
 * kvq_cuda_attend_paged_workspace with the same n_new. */
KVQ_API kvq_status kvq_cuda_prefill(const kvq_cuda_quantizer *key, const kvq_cuda_quantizer *value,
                                    const kvq_cuda_attn_desc *desc, const kvq_cuda_pages *pages,
                                    uint32_t n_new, const void *q_dev, const void *k_new_dev,
                                    const void *v_new_dev, const int32_t *seq_lens_dev,
                                    void *workspace_dev, size_t workspace_bytes, float *out_dev,
                                    void *stream);

/* Append one token per sequence: x_dev [batch][n_kv_heads][dim] (dtype) is encoded and
 * its codes written to token positions_dev[b] of sequence b in pages_dev (a key or a
 * value pool laid out as kvq_cuda_pages says; page_table_dev NULL: contiguous, page_size
 * = capacity). Sequences whose position is negative or beyond max_pages * page_size are
 * skipped. scratch_dev holds batch * n_kv_heads codes (kvq_code_size bytes each). */
KVQ_API kvq_status kvq_cuda_append(const kvq_cuda_quantizer *cq, kvq_cuda_dtype dtype,
                                   const void *x_dev, uint32_t batch, uint32_t n_kv_heads,
                                   const int32_t *positions_dev, const int32_t *page_table_dev,
                                   uint32_t page_size, uint32_t max_pages, uint8_t *pages_dev,
                                   void *scratch_dev, size_t scratch_bytes, void *stream);

/* Channel keys on the GPU: the presets q4, q3 and q2 (keys method "channel": per-channel
 * minimum and step over chunks of chunk_tokens tokens, per-channel bits fixed from the
 * first chunk; values a kvq_cuda_quantizer method). One handle per layer config; the
 * cache of a batch of sequences lives in one device buffer the caller allocates
 * (kvq_cuda_chan_layout_of gives its size and regions):
 *   heads   [batch][n_kv_heads] head_bytes: bits[dim] (uint8), mean[dim] (float32),
 *           plane offsets[dim] (uint16), fixed when chunk 0 is coded; then the observed
 *           queries' sums (kvq_cuda_chan_observe_queries)
 *   keys    [batch][n_kv_heads][capacity / chunk] key_block bytes: minimum[dim] and
 *           step[dim] (fp16, the CPU's values), then the codes as bit planes, uint32
 *           words [chunk / 32][bits * dim / 32][32]: plane k = offsets[j] + p (bit p of
 *           channel j's code) of token t in group t / 32, run k / 32, word (k & 3) |
 *           (t & 28), bit (t & 3) | (k & 28) (t, k here modulo 32: a run of 32 planes x
 *           32 tokens with bits 2-4 of plane and token swapped, the layout the tensor
 *           cores' fragments take)
 *   values  [batch][n_kv_heads][capacity] value codes (kvq_code_size bytes, CPU format)
 *   exact_k, exact_v [batch][n_kv_heads][exact_rows][dim] fp16: rows 0..n_sink-1 the
 *           sinks, row n_sink + t % (window + chunk) token t while it is not coded
 * A key of a coded token decodes to mean + minimum + step * code (channel-wise). Token
 * t is coded once t < n_coded(len) = (len - window) rounded down to a whole chunk;
 * attention reads the sinks and tokens n_coded..len-1 exactly (fp16: the CPU holds the
 * window and the filling chunk as q8_0 rows, and codes the chunk from those rows; the
 * GPU codes it from the same q8_0 round trip, so codes and values are the CPU's).
 * Every (sequence, kv head) is independent: a tensor-parallel engine creates the handle
 * with its local n_kv_heads. head_dim 64, 128 or 256; chunk_tokens a multiple of 64; no
 * sliding window and no outlier channels. */
typedef struct kvq_cuda_chan kvq_cuda_chan;
KVQ_API kvq_status kvq_cuda_chan_create(const kvq_cache_config *cfg, kvq_cuda_chan **out);
KVQ_API void kvq_cuda_chan_free(kvq_cuda_chan *kc);

typedef struct kvq_cuda_chan_layout {
    uint64_t bytes;                      /* the whole buffer */
    uint64_t heads, keys, values, exact_k, exact_v; /* byte offsets of the regions */
    uint32_t head_bytes, key_block, value_code, exact_rows;
    uint32_t chunk_tokens, window, n_sink, bits; /* the config, as the GPU reads it */
} kvq_cuda_chan_layout;
/* capacity: tokens per (sequence, kv head), a multiple of chunk_tokens. */
KVQ_API kvq_status kvq_cuda_chan_layout_of(const kvq_cuda_chan *kc, uint32_t batch, uint32_t capacity,
                                           kvq_cuda_chan_layout *out);

/* Append one token per sequence at position positions_dev[b] (negative: skipped; a
 * sequence's tokens arrive in order from 0, one call each): k_dev, v_dev
 * [batch][n_kv_heads][head_dim] (dtype). When the token completes a chunk to code
 * (len - window a multiple of chunk_tokens), that chunk's keys are coded (chunk 0 first
 * fixes the head's mean key and channel bits, as the CPU does); values are coded as
 * they arrive. A new sequence in a slot needs no reset (position 0 starts it). */
KVQ_API kvq_status kvq_cuda_chan_append_workspace(const kvq_cuda_chan *kc, uint32_t batch, size_t *bytes);
KVQ_API kvq_status kvq_cuda_chan_append(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                        const void *v_dev, uint32_t batch, uint32_t capacity,
                                        const int32_t *positions_dev, void *cache_dev, void *workspace_dev,
                                        size_t workspace_bytes, void *stream);

/* Append n tokens per sequence at once (a prompt, or a piece of one): sequence b's
 * tokens take positions positions_dev[b] .. positions_dev[b] + n - 1 (negative: the
 * sequence is skipped; tokens at or past capacity are dropped), next after what it holds.
 * Key and value element (b, h, t, j) - sequence, kv head, token, channel - sit at
 * k_dev + strides[0] * b + strides[1] * h + strides[2] * t + j (v_dev: strides[3..5]),
 * counted in elements of dtype; strides NULL: both contiguous [batch][n_kv_heads][n]
 * [head_dim], transformers' [batch, heads, seq, dim]. The cache then holds exactly the
 * bytes that n kvq_cuda_chan_append calls would have written: every chunk the tokens
 * complete is coded in one launch (after one that fixes the mean and bits when chunk 0
 * is among them), values in one. Workspace: kvq_cuda_chan_append_n_workspace for the
 * same batch and n (or more), 16-byte aligned. */
KVQ_API kvq_status kvq_cuda_chan_append_n_workspace(const kvq_cuda_chan *kc, uint32_t batch, uint32_t n,
                                                    size_t *bytes);
KVQ_API kvq_status kvq_cuda_chan_append_n(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                          const void *v_dev, const uint64_t *strides, uint32_t batch, uint32_t n,
                                          uint32_t capacity, const int32_t *positions_dev, void *cache_dev,
                                          void *workspace_dev, size_t workspace_bytes, void *stream);

/* The queries of the tokens about to be appended (kvq_cache_observe_queries on the GPU):
 * call it before each append with the same positions_dev and n (1 before
 * kvq_cuda_chan_append). Until a sequence's chunk 0 is coded, each channel's squared
 * queries are summed per (sequence, kv head), and chunk 0 then spends the key bits by
 * them as the CPU does (same sums, same bits, same codes as a CPU cache shown the same
 * queries). The sums start at position 0 and must follow on from there (n queries at
 * once may precede n single-token appends): a sequence with a gap, or unobserved from
 * its start, gets bits from ranges alone; after chunk 0 the call does nothing. Query
 * element (b, h, t, j) - sequence, query head, token, channel - at
 * q_dev + strides[0] * b + strides[1] * h + strides[2] * t + j in
 * elements of dtype; strides NULL: contiguous [batch][n_q_heads][n][head_dim] (for n = 1
 * the layout kvq_cuda_chan_attend reads). n_q_heads a multiple of n_kv_heads; non-finite
 * elements are skipped. */
KVQ_API kvq_status kvq_cuda_chan_observe_queries(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *q_dev,
                                                 const uint64_t *strides, uint32_t batch, uint32_t n_q_heads,
                                                 uint32_t n, uint32_t capacity, const int32_t *positions_dev,
                                                 void *cache_dev, void *stream);

/* Decode attention of one query per sequence over [sinks, coded chunks, exact tail],
 * one softmax: desc as kvq_cuda_attend's (n_kv_heads and head_dim the handle's,
 * capacity the buffer's), seq_lens_dev [batch] int32 on the device; cache_dev (and the
 * append workspace) 16-byte aligned, as cudaMalloc gives. */
KVQ_API kvq_status kvq_cuda_chan_attend_workspace(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                                  size_t *bytes);
KVQ_API kvq_status kvq_cuda_chan_attend(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                        const void *q_dev, const void *cache_dev, const int32_t *seq_lens_dev,
                                        void *workspace_dev, size_t workspace_bytes, float *out_dev,
                                        void *stream);
/* Prefill over the presets' cache: n_new new tokens per sequence after its seq_lens[b]
 * cached ones, causal. Query row b * n_new + i (q_dev: [batch][n_new][n_q_heads][head_dim]
 * in desc->q_dtype) attends to the whole cache of sequence b (sinks, coded chunks, exact
 * tail) and to its new tokens 0..i, given exactly (k_new_dev, v_new_dev: [batch][n_new]
 * [n_kv_heads][head_dim] in desc->q_dtype), in one softmax; out_dev: [batch][n_new]
 * [n_q_heads][head_dim] fp32. The cache is only read: append the new tokens afterwards
 * (kvq_cuda_chan_append_n). batch * n_new <= 65535. */
KVQ_API kvq_status kvq_cuda_chan_prefill_workspace(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                                   uint32_t n_new, size_t *bytes);
KVQ_API kvq_status kvq_cuda_chan_prefill(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc, uint32_t n_new,
                                         const void *q_dev, const void *k_new_dev, const void *v_new_dev,
                                         const void *cache_dev, const int32_t *seq_lens_dev, void *workspace_dev,
                                         size_t workspace_bytes, float *out_dev, void *stream);

/* Paged presets: the coded chunks in pages of one chunk (kvq_cuda_pages with page_size =
 * chunk_tokens; chunk c of sequence b in page page_table_dev[b * max_pages + c]). Page p
 * holds, for every kv head h, the chunk's key block at
 *   k_pages_dev + (p * n_kv_heads + h) * key_block
 * and its value codes at
 *   v_pages_dev + ((p * n_kv_heads + h) * chunk_tokens + slot) * value_code
 * (kvq_cuda_append's paged layout). Each sequence's head state and exact rows stay in
 * cache_dev, laid out by kvq_cuda_chan_layout_paged (its keys and values regions are
 * empty); a sequence holds max_pages * chunk_tokens tokens, which desc->capacity must
 * state for the attend and prefill calls (and their workspace functions, which take the
 * same desc). Page ids are not checked on the device. observe_queries reads only the head
 * state: call it with capacity = max_pages * chunk_tokens and the paged cache_dev. The
 * codes written and the attention computed are those of the contiguous calls. */
KVQ_API kvq_status kvq_cuda_chan_layout_paged(const kvq_cuda_chan *kc, uint32_t batch, kvq_cuda_chan_layout *out);
KVQ_API kvq_status kvq_cuda_chan_append_paged(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                              const void *v_dev, uint32_t batch, const kvq_cuda_pages *pages,
                                              const int32_t *positions_dev, void *cache_dev, void *workspace_dev,
                                              size_t workspace_bytes, void *stream);
KVQ_API kvq_status kvq_cuda_chan_append_n_paged(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                                const void *v_dev, const uint64_t *strides, uint32_t batch,
                                                uint32_t n, const kvq_cuda_pages *pages,
                                                const int32_t *positions_dev, void *cache_dev, void *workspace_dev,
                                                size_t workspace_bytes, void *stream);
KVQ_API kvq_status kvq_cuda_chan_attend_paged(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                              const kvq_cuda_pages *pages, const void *q_dev, const void *cache_dev,
                                              const int32_t *seq_lens_dev, void *workspace_dev,
                                              size_t workspace_bytes, float *out_dev, void *stream);
KVQ_API kvq_status kvq_cuda_chan_prefill_paged(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                               const kvq_cuda_pages *pages, uint32_t n_new, const void *q_dev,
                                               const void *k_new_dev, const void *v_new_dev, const void *cache_dev,
                                               const int32_t *seq_lens_dev, void *workspace_dev,
                                               size_t workspace_bytes, float *out_dev, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* KVQ_H */
