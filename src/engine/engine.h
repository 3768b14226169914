/*
 * engine.h - the engine's internal interfaces: the GGUF reader (gguf.c), tensor types
 * and quantized row kernels (dequant.c, cpu/engine_*.c), the tokenizer (tokenizer.c)
 * and the model/context handles (model.c). Formats follow ggml's GGUF specification.
 */
#ifndef KVQ_ENGINE_H
#define KVQ_ENGINE_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "cpu/exp_neg.h"

/* ------------------------------------------------------------------ GGUF */

enum {
    KVQI_GGUF_U8 = 0,
    KVQI_GGUF_I8 = 1,
    KVQI_GGUF_U16 = 2,
    KVQI_GGUF_I16 = 3,
    KVQI_GGUF_U32 = 4,
    KVQI_GGUF_I32 = 5,
    KVQI_GGUF_F32 = 6,
    KVQI_GGUF_BOOL = 7,
    KVQI_GGUF_STRING = 8,
    KVQI_GGUF_ARRAY = 9,
    KVQI_GGUF_U64 = 10,
    KVQI_GGUF_I64 = 11,
    KVQI_GGUF_F64 = 12,
    KVQI_GGUF_TYPE_COUNT = 13
};

#define KVQI_GGUF_MAX_DIMS 4

typedef struct kvqi_gguf_kv {
    char *key;            /* NUL-terminated copy */
    uint32_t type;        /* KVQI_GGUF_* */
    uint64_t u;           /* integer and bool values (sign-extended for signed types) */
    double f;             /* float values (also set for integers) */
    const char *str;      /* STRING: bytes in the file (not NUL-terminated) */
    uint64_t str_len;
    uint32_t arr_type;    /* ARRAY: element type (never ARRAY) */
    uint64_t arr_n;       /* ARRAY: element count */
    const uint8_t *arr;   /* ARRAY: first element in the file */
} kvqi_gguf_kv;

typedef struct kvqi_gguf_tensor {
    char *name;           /* NUL-terminated copy */
    uint32_t type;        /* ggml type id */
    uint32_t n_dims;
    uint64_t ne[KVQI_GGUF_MAX_DIMS]; /* ne[0] = row length; unused dims are 1 */
    uint64_t n_elems;
    uint64_t n_rows;      /* n_elems / ne[0] */
    uint64_t row_bytes;
    uint64_t nbytes;
    uint64_t offset;      /* from the start of the data section */
    const uint8_t *data;
} kvqi_gguf_tensor;

typedef struct kvqi_gguf {
    const uint8_t *base;
    size_t size;
    int mapped;           /* 1: base is an mmap to release */
    uint32_t version;
    uint64_t n_kv;
    uint64_t n_tensors;
    kvqi_gguf_kv *kv;
    kvqi_gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset;
} kvqi_gguf;

/* Open and validate a file (mmap, read-only) or a caller's buffer (kept, not copied:
 * it must outlive the handle). */
kvq_status kvqi_gguf_open(const char *path, kvqi_gguf **out, char *msg, size_t msg_size);
kvq_status kvqi_gguf_open_mem(const void *buf, size_t size, kvqi_gguf **out, char *msg,
                              size_t msg_size);
void kvqi_gguf_close(kvqi_gguf *g);
const kvqi_gguf_kv *kvqi_gguf_find(const kvqi_gguf *g, const char *key);
const kvqi_gguf_tensor *kvqi_gguf_find_tensor(const kvqi_gguf *g, const char *name);
/* Typed getters: KVQ_OK, or KVQ_ERR_FORMAT if the key is absent or of another kind
 * (integers of any width convert when the value fits). */
kvq_status kvqi_gguf_get_u32(const kvqi_gguf *g, const char *key, uint32_t *out);
kvq_status kvqi_gguf_get_f32(const kvqi_gguf *g, const char *key, float *out);
kvq_status kvqi_gguf_get_bool(const kvqi_gguf *g, const char *key, int *out);
/* Copies a string value (truncated to fit, NUL-terminated). */
kvq_status kvqi_gguf_get_str(const kvqi_gguf *g, const char *key, char *buf, size_t size);
/* Element i of an array of strings: walks from the start, so callers that need all
 * of them use kvqi_gguf_string_array instead. */
kvq_status kvqi_gguf_string_array(const kvqi_gguf_kv *kv, const char **ptrs, uint32_t *lens);
/* The value as text for `kvq info`. */
void kvqi_gguf_format_value(const kvqi_gguf_kv *kv, char *buf, size_t size);
const char *kvqi_gguf_type_name(uint32_t type);

/* ---------------------------------------------------------- tensor types */

enum {
    KVQI_T_F32 = 0,
    KVQI_T_F16 = 1,
    KVQI_T_Q4_0 = 2,
    KVQI_T_Q4_1 = 3,
    KVQI_T_Q5_0 = 6,
    KVQI_T_Q5_1 = 7,
    KVQI_T_Q8_0 = 8,
    KVQI_T_Q8_1 = 9,
    KVQI_T_Q2_K = 10,
    KVQI_T_Q3_K = 11,
    KVQI_T_Q4_K = 12,
    KVQI_T_Q5_K = 13,
    KVQI_T_Q6_K = 14,
    KVQI_T_Q8_K = 15,
    KVQI_T_BF16 = 30,
    KVQI_T_COUNT = 42
};

typedef struct kvqi_type_traits {
    const char *name;   /* NULL: unknown id */
    uint32_t block;     /* elements per block */
    uint32_t size;      /* bytes per block */
    /* Row of n elements (n a multiple of block) to floats; NULL if unsupported. */
    void (*to_float)(const void *row, float *out, size_t n);
} kvqi_type_traits;

/* Traits of a ggml type id; an entry with name NULL for unknown ids. */
const kvqi_type_traits *kvqi_type(uint32_t type);

/* Matrix kernels. Row-major weights W[n_rows][n_cols] of one type;
 * dot of one quantized row with a float vector (n_cols a multiple of the block). */
typedef float (*kvqi_row_dot_fn)(const void *row, const float *x, size_t n);
struct kvqi_q8_tile;
struct kvqi_q8_acts;
typedef struct kvqi_engine_kernels {
    kvq_isa isa;
    kvqi_row_dot_fn row_dot[KVQI_T_COUNT]; /* NULL: go through to_float + dot */
    /* row dequantization (the traits' scalar one where no SIMD version exists) */
    void (*to_float[KVQI_T_COUNT])(const void *row, float *out, size_t n);
    float (*dot_f32)(const float *a, const float *b, size_t n);
    void (*axpy_f32)(float *y, const float *x, float a, size_t n); /* y += a x */
    /* int8 activations, as llama.cpp's vec_dot: x is quantized once per product in
     * blocks of 32 (q = round(x / d), d = max|x| / 127, s = d * sum(q)), then a weight
     * row of Q4_0 / Q4_1 / Q8_0 meets it in integer multiply-adds. */
    void (*quantize_q8)(const float *x, size_t n, int8_t *q, float *d, float *s);
    float (*dot_q8[KVQI_T_COUNT])(const void *row, const int8_t *q, const float *d, const float *s, size_t n);
    /* Four dequantized rows w[4][n] against n_tok vectors x[n_tok][n]:
     * y[t * y_stride + r] = w[r] . x[t] for r < 4. */
    void (*gemm4_f32)(const float *w, size_t n, const float *x, size_t n_tok, float *y, size_t y_stride);
    /* Tiled int8 products, as llama.cpp's quantized matrix products (and its "llamafile
     * sgemm"): a weight row is unpacked once (unpack_q8) to n int8 numbers w, one float
     * scale per 4 numbers wl[n / 4] and, for types with a block minimum, one offset per
     * block of 32 written to wo[4 * b] (the return value says whether it did); then
     * gemm_q8 multiplies up to 4 unpacked rows with n_tok quantized activations.
     * The result is defined exactly (kvqi_gemm_q8 below) so every ISA gives the same bits. */
    int (*unpack_q8[KVQI_T_COUNT])(const void *row, size_t n, int8_t *w, float *wl, float *wo);
    void (*gemm_q8)(const struct kvqi_q8_tile *tile, const struct kvqi_q8_acts *a, size_t n_tok, float *y,
                    size_t y_stride);
    /* One token (generation): n_rows (1..4) rows at row, row + row_bytes, ... straight
     * from their blocks, y[r] for r < n_rows; the same bits as unpack_q8 then gemm_q8
     * (NULL: go through those). */
    void (*gemv_q8[KVQI_T_COUNT])(const void *row, size_t row_bytes, size_t n_rows, size_t n,
                                  const struct kvqi_q8_acts *a, float *y);
    /* The gated feed-forward's activation, gate[i] = kvqi_glu_one(gate[i], up[i], gelu)
     * for i < n: the same bits on every ISA. */
    void (*glu)(float *gate, const float *up, size_t n, int gelu);
} kvqi_engine_kernels;

/* One gated activation: g sigmoid(z) up, with z = g (SiLU, SwiGLU) or, gelu != 0, GELU's
 * tanh form 0.5 (1 + tanh u) = sigmoid(2 u), u = sqrt(2/pi) (g + 0.044715 g^3) (GeGLU).
 * sigmoid(z) = 1 / (1 + e) for z >= 0 and e / (1 + e) below, e = exp(-|z|), so the
 * exponential never overflows. */
/* 127 / amax for an int8 activation block, or 0 where that is not a float (amax 0, or
 * below 127 / FLT_MAX: its conversion to integer codes would be undefined in C): such a
 * block codes 0 on every ISA. */
static inline float kvqi_q8_act_inv(float amax) {
    float inv = amax > 0 ? 127.0f / amax : 0.0f;
    return inv <= FLT_MAX ? inv : 0.0f;
}

static inline float kvqi_glu_one(float g, float up, int gelu) {
    float z = gelu ? 1.5957691216057308f * (g + 0.044715f * g * g * g) : g;
    float e = kvqi_exp_neg_fma(-fabsf(z));
    float sg = (z >= 0.0f ? 1.0f : e) / (1.0f + e);
    return g * sg * up;
}

/* Activations quantized by quantize_q8: token t's codes at q + t * q_stride, its block
 * scales and sums at d, s + t * ds_stride. */
typedef struct kvqi_q8_acts {
    const int8_t *q;
    const float *d, *s;
    size_t q_stride, ds_stride;
} kvqi_q8_acts;

/* Tokens t0 .. t0 + nt - 1 of a: their codes, block scales and sums (the tile kernels'). */
static inline __attribute__((always_inline)) void kvqi_q8_acts_rows(const kvqi_q8_acts *a, size_t t0, int nt,
                                                                     const int8_t **q, const float **d,
                                                                     const float **s) {
    _Pragma("GCC unroll 4")
    for (int t = 0; t < nt; t++) {
        q[t] = a->q + (t0 + t) * a->q_stride;
        d[t] = a->d + (t0 + t) * a->ds_stride;
        s[t] = a->s + (t0 + t) * a->ds_stride;
    }
}

/* n_rows (1..4) unpacked rows of length n (a multiple of 32): row r's numbers at
 * w + r * n, its lane scales at wl + r * (n / 4), its block offsets at wo[4 * b + r]
 * (wo NULL: none). For row r and token t, with lane j of block b covering numbers
 * 32 b + 4 j .. 32 b + 4 j + 3 and isum the exact integer sum of w * q over those four:
 *   acc[j] = fma(wl[8 b + j] * d[b], (float)isum, acc[j])      (blocks in order, acc = 0)
 *   y = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7))
 *   y += off, off = fma(wo[4 b + r], s[b], off) over the blocks in order (when wo)
 * y lands at y[t * y_stride + r]. */
typedef struct kvqi_q8_tile {
    const int8_t *w;
    const float *wl, *wo;
    size_t n, n_rows;
} kvqi_q8_tile;

/* Fill k with the kernels of an ISA (AUTO: the best here; AVX-512 runs the AVX2 ones but
 * for the int8 tile product, which uses VNNI where the CPU has it). */
kvq_status kvqi_engine_kernels_init(kvq_isa requested, kvqi_engine_kernels *k);
/* Every table this CPU runs, for tests: each available ISA's (kvqi_engine_kernels_init),
 * then the plain AVX2 build where AVX2 takes its AVX-VNNI one; returns the count (at
 * most max filled). */
size_t kvqi_engine_kernel_sets(kvqi_engine_kernels *out, size_t max);
/* Scalar references (tests compare the SIMD ones against them). */
void kvqi_engine_kernels_scalar(kvqi_engine_kernels *k);
#if defined(KVQ_HAVE_X86_SIMD)
void kvqi_engine_kernels_avx2(kvqi_engine_kernels *k);
#if defined(KVQ_HAVE_AVXVNNI)
/* the AVX2 table's AVX-VNNI build (int8 products in vpdpbusd, the same bits) */
void kvqi_engine_kernels_avxvnni(kvqi_engine_kernels *k);
#endif
/* AVX-512 VL + VNNI: the AVX2 table with the int8 tile product in vpdpbusd */
void kvqi_engine_kernels_avx512(kvqi_engine_kernels *k);
#endif
#if defined(KVQ_HAVE_NEON)
void kvqi_engine_kernels_neon(kvqi_engine_kernels *k);
#endif

/* fp16 -> fp32 for the hot paths (exact, subnormals included). */
static inline float kvqi_eng_h2f(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v;
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in float */
        v.f = (float)mant * 5.9604644775390625e-08f;
        v.u |= sign;
        return v.f;
    }
    if (exp == 31) v.u = sign | 0x7f800000u | (mant << 13);
    else v.u = sign | ((exp + 112) << 23) | (mant << 13);
    return v.f;
}
static inline uint16_t kvqi_eng_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* ------------------------------------------------------------- tokenizer */

typedef struct kvqi_tokenizer kvqi_tokenizer;
kvq_status kvqi_tokenizer_load(const kvqi_gguf *g, kvqi_tokenizer **out, char *msg,
                               size_t msg_size);
void kvqi_tokenizer_free(kvqi_tokenizer *t);
uint32_t kvqi_tokenizer_vocab(const kvqi_tokenizer *t);
kvq_status kvqi_tokenize(const kvqi_tokenizer *t, const char *text, int add_bos,
                         int32_t *tokens, size_t cap, size_t *n_tokens);
kvq_status kvqi_token_piece(const kvqi_tokenizer *t, int32_t token, char *buf, size_t size,
                            size_t *len);
int32_t kvqi_tokenizer_bos(const kvqi_tokenizer *t);
int32_t kvqi_tokenizer_eos(const kvqi_tokenizer *t);
int kvqi_tokenizer_add_bos(const kvqi_tokenizer *t);
/* Id of the special (control or user-defined) token spelled text, or -1. */
int32_t kvqi_tokenizer_find_special(const kvqi_tokenizer *t, const char *text);

/* ------------------------------------------------------------------ model */

/* A model from an opened file; takes ownership of g (closed on failure too). */
kvq_status kvqi_model_from_gguf(kvqi_gguf *g, kvq_model **out, char *msg, size_t msg_size);

/* The model's file (for metadata the public info does not carry). */
const kvqi_gguf *kvqi_model_gguf(const kvq_model *m);
const kvqi_tokenizer *kvqi_model_tokenizer(const kvq_model *m);

/* ------------------------------------------------------------------- chat */

/* Template family from a Jinja chat template's markers: 0..5 in the order chatml, llama3,
 * llama2, mistral, gemma, phi3; -1 when none matches. */
int kvqi_chat_detect(const char *tmpl, size_t len);
/* "chatml", ... for a family; NULL out of range. */
const char *kvqi_chat_family_name(int family);

#endif /* KVQ_ENGINE_H */
