/* test_engine.c - the GGUF engine: logits against the numpy reference (tests/ref_forward.py)
 * on the tiny model in tests/data, SIMD row kernels against the scalar ones, the BPE
 * tokenizer against the `tokenizers` package's ids, and corrupt files rejected cleanly. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "engine/engine.h"
#include "test.h"

#define TINY "tests/data/tiny-llama.gguf"
#define TINY_REF "tests/data/tiny-llama.ref"
#define TINY_TOK "tests/data/tiny-llama.tok"

static uint8_t *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

typedef struct ref_logits {
    uint32_t n_tok, n_vocab;
    int32_t *tokens;
    float *logits;
    uint8_t *raw;
} ref_logits;

static int load_ref_file(ref_logits *r, const char *path) {
    size_t size;
    r->raw = read_all(path, &size);
    if (!r->raw || size < 16 || memcmp(r->raw, "KVQREF1", 8)) return 0;
    memcpy(&r->n_tok, r->raw + 8, 4);
    memcpy(&r->n_vocab, r->raw + 12, 4);
    if (size != 16 + 4 * (size_t)r->n_tok * (1 + r->n_vocab)) return 0;
    r->tokens = (int32_t *)(r->raw + 16);
    r->logits = (float *)(r->raw + 16 + 4 * (size_t)r->n_tok);
    return 1;
}

static int load_ref(ref_logits *r) { return load_ref_file(r, TINY_REF); }

/* max |a - ref| / max |ref| over one row of logits */
static double rel_err(const float *a, const float *ref, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (d > md) md = d;
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    return md / (mr > 0 ? mr : 1);
}

TEST(engine_tiny_model_info) {
    kvq_model *m;
    char msg[256] = "";
    kvq_status st = kvq_model_load(TINY, &m, msg, sizeof msg);
    CHECKF(st == KVQ_OK, "load: %s", msg);
    if (st) return;
    kvq_model_info in;
    REQUIRE_OK(kvq_model_get_info(m, &in));
    CHECK(!strcmp(in.arch, "llama"));
    CHECK(in.n_layers == 2 && in.n_embd == 256 && in.n_heads == 4 && in.n_kv_heads == 2);
    CHECK(in.head_dim == 64 && in.n_ff == 256 && in.n_vocab == 379);
    CHECK(!in.tied_output && !in.rope_neox);
    CHECK(in.type_count[KVQI_T_Q4_K] == 2 && in.type_count[KVQI_T_Q6_K] == 3 && in.type_count[KVQI_T_BF16] == 1);
    CHECK(!strcmp(kvq_tensor_type_name(KVQI_T_Q4_1), "Q4_1"));
    CHECK(kvq_tensor_type_name(4) == NULL);
    kvq_model_free(m);
}

/* Logits of 16 tokens, in one batch and one token at a time, against float64 numpy. */
TEST(engine_logits_match_reference) {
    ref_logits ref = {0};
    REQUIRE(load_ref(&ref));
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 64;
    p.n_threads = 2;
    p.float_activations = 1;
    kvq_context *c;
    REQUIRE_OK(kvq_context_create(m, &p, &c));
    float *logits = malloc(sizeof(float) * ref.n_tok * ref.n_vocab);
    REQUIRE(logits);
    CHECK_OK(kvq_context_eval(c, ref.tokens, ref.n_tok, logits, 1));
    double worst = 0;
    for (uint32_t t = 0; t < ref.n_tok; t++) {
        double e = rel_err(logits + (size_t)t * ref.n_vocab, ref.logits + (size_t)t * ref.n_vocab, ref.n_vocab);
        if (e > worst) worst = e;
    }
    CHECKF(worst < 1e-3, "batch: worst relative error %g", worst);
    if (getenv("KVQ_TEST_VERBOSE")) printf("    batch worst relative error %g\n", worst);
    size_t len;
    CHECK_OK(kvq_context_length(c, &len));
    CHECK(len == ref.n_tok);
    CHECK_OK(kvq_context_reset(c));
    worst = 0;
    for (uint32_t t = 0; t < ref.n_tok; t++) {
        CHECK_OK(kvq_context_eval(c, ref.tokens + t, 1, logits, 0));
        double e = rel_err(logits, ref.logits + (size_t)t * ref.n_vocab, ref.n_vocab);
        if (e > worst) worst = e;
    }
    CHECKF(worst < 1e-3, "incremental: worst relative error %g", worst);
    /* int8 activations (the default for one token at a time): close, not exact */
    kvq_context *c8;
    p.float_activations = 0;
    REQUIRE_OK(kvq_context_create(m, &p, &c8));
    worst = 0;
    for (uint32_t t = 0; t < ref.n_tok; t++) {
        CHECK_OK(kvq_context_eval(c8, ref.tokens + t, 1, logits, 0));
        double e = rel_err(logits, ref.logits + (size_t)t * ref.n_vocab, ref.n_vocab);
        if (e > worst) worst = e;
    }
    CHECKF(worst < 5e-2, "int8 activations: worst relative error %g", worst);
    kvq_context_free(c8);
    /* out-of-range tokens and a full context are refused */
    int32_t bad = (int32_t)ref.n_vocab;
    CHECK_STATUS(kvq_context_eval(c, &bad, 1, logits, 0), KVQ_ERR_INVALID_ARG);
    for (int i = 0; i < 64; i++) kvq_context_eval(c, ref.tokens, 1, NULL, 0);
    CHECK_STATUS(kvq_context_eval(c, ref.tokens, 1, logits, 0), KVQ_ERR_CAPACITY);
    free(logits);
    kvq_context_free(c);
    kvq_model_free(m);
    free(ref.raw);
}

/* Every type's row kernel (SIMD where there is one) against dequantize-then-dot in double. */
TEST(engine_row_kernels_match_scalar) {
    kvqi_gguf *g;
    REQUIRE_OK(kvqi_gguf_open(TINY, &g, NULL, 0));
    kvqi_engine_kernels scalar, best;
    kvqi_engine_kernels_scalar(&scalar);
    REQUIRE_OK(kvqi_engine_kernels_init(KVQ_ISA_AUTO, &best));
    float x[512], w[512];
    for (int i = 0; i < 512; i++) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    int types_seen = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const kvqi_gguf_tensor *t = &g->tensors[i];
        if (t->n_dims != 2) continue;
        const kvqi_type_traits *tt = kvqi_type(t->type);
        REQUIRE(tt->to_float && scalar.row_dot[t->type] && best.row_dot[t->type]);
        size_t n = (size_t)t->ne[0];
        REQUIRE(n <= 512);
        types_seen++;
        for (uint64_t r = 0; r < t->n_rows; r += 7) {
            const uint8_t *row = t->data + r * t->row_bytes;
            tt->to_float(row, w, n);
            double exact = 0, mag = 0;
            for (size_t k = 0; k < n; k++) {
                exact += (double)w[k] * x[k];
                mag += fabs((double)w[k] * x[k]);
            }
            float a = scalar.row_dot[t->type](row, x, n), b = best.row_dot[t->type](row, x, n);
            CHECKF(fabs(a - exact) <= 1e-5 * mag + 1e-7, "%s scalar row %llu: %g vs %g", t->name,
                   (unsigned long long)r, a, exact);
            CHECKF(fabs(b - exact) <= 1e-5 * mag + 1e-7, "%s %s row %llu: %g vs %g", t->name,
                   kvq_cpu_isa(), (unsigned long long)r, b, exact);
        }
    }
    CHECK(types_seen == 16);
    float a[77], b[77];
    for (int i = 0; i < 77; i++) {
        a[i] = x[i];
        b[i] = x[i + 100];
    }
    CHECK_NEAR(scalar.dot_f32(a, b, 77), best.dot_f32(a, b, 77), 1e-4);
    float ya[77], yb[77];
    memcpy(ya, a, sizeof ya);
    memcpy(yb, a, sizeof yb);
    scalar.axpy_f32(ya, b, 0.37f, 77);
    best.axpy_f32(yb, b, 0.37f, 77);
    for (int i = 0; i < 77; i++) CHECK_NEAR(ya[i], yb[i], 1e-6);
    /* the 4-row block product, with a length that leaves a tail and 7 tokens (3 + 3 + 1) */
    for (size_t len = 77; len <= 96; len += 19) {
        float wr[4 * 96], xs[7 * 96], y1[7 * 5], y2[7 * 5];
        for (size_t i = 0; i < 4 * len; i++) wr[i] = x[(i * 7) % 512];
        for (size_t i = 0; i < 7 * len; i++) xs[i] = x[(i * 13 + 5) % 512];
        scalar.gemm4_f32(wr, len, xs, 7, y1, 5);
        best.gemm4_f32(wr, len, xs, 7, y2, 5);
        for (int t = 0; t < 7; t++)
            for (int r = 0; r < 4; r++) {
                float d = scalar.dot_f32(wr + r * len, xs + t * len, len);
                CHECK_NEAR(y1[t * 5 + r], d, 1e-5);
                CHECK_NEAR(y2[t * 5 + r], d, 1e-4);
            }
    }
    /* int8 activations: the SIMD quantizer gives the same bytes as the scalar one, and
     * the integer dot products match the scalar ones and the float product */
    {
        int8_t q1[512], q2[512];
        float d1[16], d2[16], s1[16], s2[16];
        scalar.quantize_q8(x, 512, q1, d1, s1);
        best.quantize_q8(x, 512, q2, d2, s2);
        CHECK(!memcmp(q1, q2, sizeof q1) && !memcmp(d1, d2, sizeof d1) && !memcmp(s1, s2, sizeof s1));
        int q8_types = 0;
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const kvqi_gguf_tensor *t = &g->tensors[i];
            if (t->n_dims != 2 || !scalar.dot_q8[t->type]) continue;
            REQUIRE(best.dot_q8[t->type]);
            q8_types++;
            size_t n = (size_t)t->ne[0];
            for (uint64_t r = 0; r < t->n_rows; r += 11) {
                const uint8_t *row = t->data + r * t->row_bytes;
                kvqi_type(t->type)->to_float(row, w, n);
                double exact = 0, mag = 0;
                for (size_t k = 0; k < n; k++) {
                    exact += (double)w[k] * x[k];
                    mag += fabs((double)w[k]);
                }
                float a = scalar.dot_q8[t->type](row, q1, d1, s1, n), b = best.dot_q8[t->type](row, q1, d1, s1, n);
                CHECKF(fabs(a - b) <= 1e-5 * mag + 1e-6, "%s row %llu: int8 scalar %g vs SIMD %g", t->name,
                       (unsigned long long)r, a, b);
                /* each x moved by at most half a step (max|x| / 254) */
                CHECKF(fabs(a - exact) <= mag / 254.0 + 1e-6, "%s row %llu: int8 %g vs float %g", t->name,
                       (unsigned long long)r, a, exact);
            }
        }
        CHECK(q8_types >= 5);
    }
    /* SIMD row dequantization against the scalar one */
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const kvqi_gguf_tensor *t = &g->tensors[i];
        size_t n = (size_t)t->ne[0];
        float w2[512];
        kvqi_type(t->type)->to_float(t->data, w, n);
        best.to_float[t->type](t->data, w2, n);
        double worst = 0;
        for (size_t k = 0; k < n; k++) worst = fmax(worst, fabs((double)w[k] - w2[k]) / (fabs((double)w[k]) + 1e-6));
        CHECKF(worst < 1e-6, "%s: %s dequantization differs by %g", t->name, kvq_cpu_isa(), worst);
    }
    kvqi_gguf_close(g);
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Reference ids from a file of (hex text, ids) line pairs; the text must tokenize to
 * exactly those ids and detokenize back to itself (after prefix, for SentencePiece's
 * leading space). Returns the number of cases. */
static int check_token_refs(kvqt_ctx *kvqt_, kvq_model *m, const char *ref_path, const char *prefix) {
    size_t size;
    char *txt = (char *)read_all(ref_path, &size);
    if (!txt) return 0;
    char *t2 = realloc(txt, size + 1);
    if (!t2) {
        free(txt);
        return 0;
    }
    txt = t2;
    txt[size] = 0;
    int cases = 0;
    char *save = NULL;
    for (char *line = strtok_r(txt, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        char text[512];
        size_t tl = 0;
        for (size_t i = 0; line[i] && line[i + 1] && tl + 1 < sizeof text; i += 2)
            text[tl++] = (char)(hexval(line[i]) * 16 + hexval(line[i + 1]));
        text[tl] = 0;
        char *ids = strtok_r(NULL, "\n", &save);
        if (!ids) break;
        int32_t want[256], got[256];
        size_t nw = 0, ng = 0;
        for (char *p = ids; *p && nw < 256;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) break;
            want[nw++] = (int32_t)v;
            p = end;
        }
        CHECK_OK(kvq_tokenize(m, text, 0, got, 256, &ng));
        int same = ng == nw && !memcmp(got, want, nw * sizeof *got);
        CHECKF(same, "%s: tokens differ for \"%s\" (%zu vs %zu tokens)", ref_path, text, ng, nw);
        for (size_t i = 0; !same && i < ng && i < nw; i++)
            if (got[i] != want[i]) {
                CHECKF(0, "  first difference at %zu: %d vs %d", i, got[i], want[i]);
                break;
            }
        char back[1024], expect[600];
        size_t bl;
        snprintf(expect, sizeof expect, "%s%s", prefix, text);
        CHECK_OK(kvq_detokenize(m, got, ng, back, sizeof back, &bl));
        CHECKF(bl == strlen(expect) && !memcmp(back, expect, bl), "round trip of \"%s\" gave \"%s\"", text, back);
        cases++;
    }
    free(txt);
    return cases;
}

/* Byte-level BPE: ids from the `tokenizers` package on the same vocabulary and merges. */
TEST(engine_tokenizer_matches_reference) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    CHECK(check_token_refs(kvqt_, m, TINY_TOK, "") >= 6);
    /* capacity: the count needed comes back */
    int32_t few[2];
    size_t need;
    CHECK_STATUS(kvq_tokenize(m, "The quick brown fox", 0, few, 2, &need), KVQ_ERR_CAPACITY);
    CHECK(need > 2);
    int32_t bos[4];
    CHECK_OK(kvq_tokenize(m, "a", 1, bos, 4, &need));
    CHECK(need == 2 && bos[0] == 1);
    CHECK_OK(kvq_tokenize(m, "", 0, bos, 4, &need));
    CHECK(need == 0);
    kvq_model_free(m);
}

/* The llama3 pre-tokenizer regex (case-insensitive contractions, digits in threes,
 * newline runs), against the `tokenizers` package running that regex. */
TEST(engine_tokenizer_llama3_matches_reference) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load("tests/data/tiny-llama3.gguf", &m, NULL, 0));
    kvq_model_info in;
    REQUIRE_OK(kvq_model_get_info(m, &in));
    CHECK(!strcmp(in.pre_tokenizer, "llama-bpe"));
    CHECK(check_token_refs(kvqt_, m, "tests/data/tiny-llama3.tok", "") >= 5);
    kvq_model_free(m);
}

/* SentencePiece BPE with byte fallback: ids from the `sentencepiece` package. */
TEST(engine_tokenizer_spm_matches_reference) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load("tests/data/tiny-spm.gguf", &m, NULL, 0));
    kvq_model_info in;
    REQUIRE_OK(kvq_model_get_info(m, &in));
    CHECK(!strcmp(in.tokenizer, "llama") && in.add_bos == 1);
    CHECK(check_token_refs(kvqt_, m, "tests/data/tiny-spm.tok", " ") >= 4);
    int32_t t[64];
    size_t n;
    CHECK_OK(kvq_tokenize(m, "the", -1, t, 64, &n));
    CHECK(n >= 2 && t[0] == in.bos_token);
    kvq_model_free(m);
}

/* ------------------------------------------------------------ corrupt files */

static kvq_status open_mem(const uint8_t *buf, size_t n) {
    kvqi_gguf *g = NULL;
    char msg[256];
    kvq_status st = kvqi_gguf_open_mem(buf, n, &g, msg, sizeof msg);
    kvqi_gguf_close(g);
    return st;
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Offset of the tensor info named name: its u64 length then the bytes. */
static size_t find_tensor_info(const uint8_t *buf, size_t n, const char *name) {
    size_t l = strlen(name);
    for (size_t i = 8; i + l < n; i++)
        if (!memcmp(buf + i, name, l) && buf[i - 8] == l && buf[i + l] <= 4 && buf[i + l] >= 1) return i - 8;
    return 0;
}

TEST(engine_gguf_rejects_corrupt_files) {
    size_t n;
    uint8_t *orig = read_all(TINY, &n);
    REQUIRE(orig);
    uint8_t *buf = malloc(n);
    REQUIRE(buf);
    CHECK_OK(open_mem(orig, n));
    /* truncated anywhere: header, metadata, tensor infos, data */
    for (size_t cut = 0; cut < n; cut += (cut < 4096 ? 13 : 4999))
        CHECKF(open_mem(orig, cut) == KVQ_ERR_FORMAT, "truncated at %zu accepted", cut);
#define MUTATE(desc, ...)                                                        \
    do {                                                                         \
        memcpy(buf, orig, n);                                                    \
        __VA_ARGS__;                                                             \
        CHECKF(open_mem(buf, n) == KVQ_ERR_FORMAT, "%s accepted", desc);         \
    } while (0)
    MUTATE("bad magic", buf[0] = 'X');
    MUTATE("version 1", put_u32(buf + 4, 1));
    MUTATE("version 4", put_u32(buf + 4, 4));
    MUTATE("huge tensor count", put_u64(buf + 8, UINT64_MAX / 2));
    MUTATE("huge metadata count", put_u64(buf + 16, UINT64_MAX / 2));
    MUTATE("one metadata more", put_u64(buf + 16, orig[16] + 1u));
    MUTATE("one tensor more", put_u64(buf + 8, orig[8] + 1u));
    MUTATE("first key length past the end", put_u64(buf + 24, n));
    MUTATE("first key length 2^63", put_u64(buf + 24, 1ull << 63));
    MUTATE("bad value type", put_u32(buf + 24 + 8 + orig[24], 77));
    size_t ti = find_tensor_info(orig, n, "blk.0.attn_q.weight");
    REQUIRE(ti > 0);
    size_t after = ti + 8 + strlen("blk.0.attn_q.weight"); /* n_dims */
    CHECK(orig[after] == 2);
    MUTATE("5 dims", put_u32(buf + after, 5));
    MUTATE("0 dims", put_u32(buf + after, 0));
    MUTATE("zero dim", put_u64(buf + after + 4, 0));
    MUTATE("huge dims", put_u64(buf + after + 4, 1ull << 40); put_u64(buf + after + 12, 1ull << 40));
    MUTATE("dims product overflow", put_u64(buf + after + 4, 1ull << 32); put_u64(buf + after + 12, 1ull << 33));
    MUTATE("row not a block multiple", put_u64(buf + after + 4, 255));
    MUTATE("unknown type", put_u32(buf + after + 20, 4));
    MUTATE("type past the table", put_u32(buf + after + 20, 1000));
    MUTATE("offset past the end", put_u64(buf + after + 24, n));
    MUTATE("offset near 2^64", put_u64(buf + after + 24, UINT64_MAX - 31));
    uint64_t off = 0;
    for (int i = 0; i < 8; i++) off |= (uint64_t)orig[after + 24 + i] << (8 * i);
    MUTATE("misaligned offset", put_u64(buf + after + 24, off + 1));
#undef MUTATE
    /* random byte damage must never crash (the sanitizer build checks memory safety) */
    uint64_t s = 99;
    for (int iter = 0; iter < 300; iter++) {
        memcpy(buf, orig, n);
        for (int k = 0; k < 4; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(s >> 33) % (iter % 2 ? n : 2048);
            buf[at] = (uint8_t)(s >> 13);
        }
        kvqi_gguf *g = NULL;
        if (kvqi_gguf_open_mem(buf, n, &g, NULL, 0) == KVQ_OK) kvqi_gguf_close(g);
    }
    /* the same through the public loader on files */
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char path[512];
    snprintf(path, sizeof path, "%s/bad.gguf", dir);
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    fwrite(orig, 1, n / 2, f);
    fclose(f);
    kvq_model *m = NULL;
    char msg[256] = "";
    CHECK_STATUS(kvq_model_load(path, &m, msg, sizeof msg), KVQ_ERR_FORMAT);
    CHECK(m == NULL && strlen(msg) > 0);
    CHECK_STATUS(kvq_model_load("tests/data/does-not-exist.gguf", &m, NULL, 0), KVQ_ERR_IO);
    free(buf);
    free(orig);
}

/* Sampling: greedy is the argmax, the same seed gives the same draws, top_p near 0 is greedy. */
TEST(engine_sampling) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 16;
    p.n_threads = 1;
    p.seed = 7;
    kvq_context *a, *b;
    REQUIRE_OK(kvq_context_create(m, &p, &a));
    REQUIRE_OK(kvq_context_create(m, &p, &b));
    float logits[379];
    for (int i = 0; i < 379; i++) logits[i] = (float)((i * 7919) % 379) / 100.0f;
    int32_t best = 0;
    for (int i = 1; i < 379; i++)
        if (logits[i] > logits[best]) best = i;
    int32_t t1, t2;
    CHECK_OK(kvq_sample(a, logits, 0.0f, 1.0f, &t1));
    CHECK(t1 == best);
    CHECK_OK(kvq_sample(a, logits, 1.0f, 1e-6f, &t1));
    CHECK(t1 == best);
    CHECK_OK(kvq_sample(b, logits, 1.0f, 1e-6f, &t2)); /* keep b's stream in step with a's */
    int differs = 0, hist_top = 0;
    for (int i = 0; i < 200; i++) {
        CHECK_OK(kvq_sample(a, logits, 1.0f, 0.9f, &t1));
        CHECK_OK(kvq_sample(b, logits, 1.0f, 0.9f, &t2));
        CHECK(t1 == t2);
        CHECK(t1 >= 0 && t1 < 379);
        if (t1 != best) differs++;
        if (logits[t1] >= 2.0f) hist_top++;
    }
    CHECK(differs > 0);
    CHECK(hist_top > 100); /* draws follow the distribution's heavy end */
    kvq_context_free(a);
    kvq_context_free(b);
    kvq_model_free(m);
}

TEST(engine_cli_info) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s info " TINY " > /dev/null", kvqt_cli_path());
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s info tests/data/tiny-llama.ref 2> /dev/null", kvqt_cli_path());
    CHECK(system(cmd) != 0);
}

/* Greedy decoding through the fp16 kvq_cache picks the same tokens as exact float KV,
 * and lower-precision caches stay close in logits. */
static int greedy_run(kvq_model *m, const kvq_cache_config *cc, int32_t *out, int n_gen, float *first_logits) {
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 128;
    p.n_threads = 2;
    /* float products: int8 activations would turn the cache's rounding into flips of
     * their own rounding, and the comparison is about the cache */
    p.float_activations = 1;
    p.cache = cc;
    p.n_cache_configs = cc ? 1 : 0;
    kvq_context *c;
    if (kvq_context_create(m, &p, &c)) return 0;
    int32_t prompt[8] = {40, 7, 300, 12, 99, 250, 3, 61};
    float logits[379];
    int ok = kvq_context_eval(c, prompt, 8, logits, 0) == KVQ_OK;
    if (first_logits) memcpy(first_logits, logits, sizeof logits);
    for (int i = 0; ok && i < n_gen; i++) {
        ok = kvq_sample(c, logits, 0.0f, 1.0f, &out[i]) == KVQ_OK;
        ok = ok && kvq_context_eval(c, &out[i], 1, logits, 0) == KVQ_OK;
    }
    kvq_context_free(c);
    return ok;
}

TEST(engine_fp16_cache_matches_exact_kv) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    enum { N = 40 };
    int32_t exact[N], half[N], q8[N];
    float l_exact[379], l_half[379], l_q8[379];
    REQUIRE(greedy_run(m, NULL, exact, N, l_exact));
    kvq_cache_config cc;
    char msg[256] = "";
    REQUIRE_OK(kvq_cache_config_init(&cc, 2, 64, "fp16", "fp16", msg, sizeof msg));
    REQUIRE(greedy_run(m, &cc, half, N, l_half));
    CHECK(memcmp(exact, half, sizeof exact) == 0);
    int distinct = 0;
    for (int i = 0; i < N; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= exact[j] == exact[i];
        distinct += !seen;
    }
    CHECKF(distinct >= 4, "greedy run too repetitive to compare (%d distinct tokens)", distinct);
    CHECKF(rel_err(l_half, l_exact, 379) < 1e-3, "fp16 cache logits off by %g", rel_err(l_half, l_exact, 379));
    REQUIRE_OK(kvq_cache_config_init(&cc, 2, 64, "q8_0", "q8_0", msg, sizeof msg));
    REQUIRE(greedy_run(m, &cc, q8, N, l_q8));
    CHECKF(rel_err(l_q8, l_exact, 379) < 2e-2, "q8_0 cache logits off by %g", rel_err(l_q8, l_exact, 379));
    /* a config for another shape is refused */
    kvq_context_params p;
    kvq_context_params_init(&p);
    REQUIRE_OK(kvq_cache_config_init(&cc, 3, 64, "fp16", "fp16", msg, sizeof msg));
    p.cache = &cc;
    p.n_cache_configs = 1;
    kvq_context *c = NULL;
    CHECK_STATUS(kvq_context_create(m, &p, &c), KVQ_ERR_MISMATCH);
    p.n_cache_configs = 5;
    CHECK_STATUS(kvq_context_create(m, &p, &c), KVQ_ERR_INVALID_ARG);
    kvq_model_free(m);
}

TEST(engine_cli_generate_and_perplexity) {
    char cmd[1024];
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " -p 'The quick brown fox' -n 8 --cache-k q8_0 "
             "--cache-v q4_0 --threads 1 --temp 0.8 --seed 3 > %s/gen.txt 2>&1", kvqt_cli_path(), dir);
    CHECK(system(cmd) == 0);
    /* perplexity on a text of the model's own vocabulary: every config gives a finite value */
    snprintf(cmd, sizeof cmd, "%s/text.txt", dir);
    FILE *f = fopen(cmd, "w");
    REQUIRE(f);
    for (int i = 0; i < 20; i++) fprintf(f, "The quick brown fox jumps over the lazy dog %d times. ", i);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s perplexity -m " TINY " -f %s/text.txt --ctx 64 --chunks 2 --threads 1 "
             "--configs f32,fp16,q8_0 > %s/ppl.txt 2> /dev/null", kvqt_cli_path(), dir, dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s/ppl.txt", dir);
    f = fopen(cmd, "r");
    REQUIRE(f);
    char line[512];
    int rows = 0;
    double ppl_f32 = 0, ppl_fp16 = 0;
    while (fgets(line, sizeof line, f)) {
        char name[64];
        double ppl;
        if (sscanf(line, "%63s %lf", name, &ppl) == 2) {
            rows++;
            CHECK(ppl > 1.0 && ppl < 379.0 * 10);
            if (!strcmp(name, "f32")) ppl_f32 = ppl;
            if (!strcmp(name, "fp16")) ppl_fp16 = ppl;
        }
    }
    fclose(f);
    CHECK(rows == 3);
    CHECK(fabs(ppl_f32 - ppl_fp16) < 1e-2 * ppl_f32);
    snprintf(cmd, sizeof cmd, "%s generate --help > /dev/null && %s perplexity --help > /dev/null && "
             "%s info --help > /dev/null", kvqt_cli_path(), kvqt_cli_path(), kvqt_cli_path());
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " -p x --cache-k nosuch > /dev/null 2>&1", kvqt_cli_path());
    CHECK(system(cmd) != 0);
}

/* The real model's tokenizer on the real text, against the `tokenizers` package
 * (tests/ref_tokens.py); skipped until `make model` has fetched the model. */
/* A real model's tokenizer on the real text against a reference count and hash of the
 * ids; skipped until the model has been fetched. */
static void check_real_text_tokens(kvqt_ctx *kvqt_, const char *model_path, const char *ref_path) {
    FILE *probe = fopen(model_path, "rb");
    if (!probe) {
        SKIP("models/ lacks the model (make model / make gemma)");
        return;
    }
    fclose(probe);
    size_t text_len, ref_len;
    char *text = (char *)read_all("data/fortunes-science.txt", &text_len);
    char *ref = (char *)read_all(ref_path, &ref_len);
    if (!text) {
        free(ref);
        SKIP("no data/fortunes-science.txt (make data)");
        return;
    }
    REQUIRE(text && ref);
    char *t2 = realloc(text, text_len + 1);
    REQUIRE(t2);
    text = t2;
    text[text_len] = 0;
    unsigned long long want_n = 0, want_hash = 0;
    REQUIRE(sscanf(ref, "%llu %llx", &want_n, &want_hash) == 2);
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(model_path, &m, NULL, 0));
    size_t n = 0;
    kvq_tokenize(m, text, 0, NULL, 0, &n);
    int32_t *ids = malloc(n * sizeof *ids);
    REQUIRE(ids);
    REQUIRE_OK(kvq_tokenize(m, text, 0, ids, n, &n));
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) {
            h ^= (uint8_t)((uint32_t)ids[i] >> (8 * b));
            h *= 0x100000001b3ull;
        }
    CHECKF(n == want_n && h == want_hash, "%zu tokens (hash %016llx), reference %llu (%016llx)", n,
           (unsigned long long)h, want_n, want_hash);
    char *back = malloc(text_len + 1);
    size_t bl;
    REQUIRE(back);
    CHECK_OK(kvq_detokenize(m, ids, n, back, text_len + 1, &bl));
    CHECK(bl == text_len && !memcmp(back, text, text_len));
    free(back);
    free(ids);
    kvq_model_free(m);
    free(text);
    free(ref);
}

/* SmolLM2 against the `tokenizers` package (tests/ref_tokens.py). */
TEST(engine_tokenizer_smollm2_text) {
    check_real_text_tokens(kvqt_, "models/SmolLM2-135M-Instruct.Q4_1.gguf", "tests/data/smollm2-fortunes-science.tokref");
}

/* Gemma 3's SentencePiece vocabulary against the `sentencepiece` package (tests/ref_tokens.py). */
TEST(engine_tokenizer_gemma3_text) {
    check_real_text_tokens(kvqt_, "models/gemma-3-270m-q4_k_m.gguf", "tests/data/gemma3-fortunes-science.tokref");
}

/* The KV observer sees each layer's keys and values once per eval, at the right
 * positions, and batched and one-at-a-time evaluation give the same keys. */
typedef struct kv_seen {
    int calls;
    size_t last_pos, last_n;
    float k0[16][128]; /* layer 0 keys by position */
} kv_seen;

static void observe(void *user, uint32_t layer, size_t pos, const float *k, const float *v, size_t n) {
    kv_seen *s = user;
    (void)v;
    s->calls++;
    s->last_pos = pos;
    s->last_n = n;
    if (layer == 0)
        for (size_t t = 0; t < n && pos + t < 16; t++) memcpy(s->k0[pos + t], k + t * 128, sizeof s->k0[0]);
}

TEST(engine_kv_observer) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    kv_seen *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    REQUIRE(a && b);
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 16;
    p.n_threads = 1;
    p.kv_observer = observe;
    p.kv_observer_user = a;
    kvq_context *ca, *cb;
    REQUIRE_OK(kvq_context_create(m, &p, &ca));
    p.kv_observer_user = b;
    REQUIRE_OK(kvq_context_create(m, &p, &cb));
    int32_t toks[8] = {5, 80, 200, 31, 7, 300, 12, 9};
    REQUIRE_OK(kvq_context_eval(ca, toks, 8, NULL, 0));
    CHECK(a->calls == 2 && a->last_pos == 0 && a->last_n == 8);
    for (int i = 0; i < 8; i++) REQUIRE_OK(kvq_context_eval(cb, toks + i, 1, NULL, 0));
    CHECK(b->calls == 16 && b->last_pos == 7 && b->last_n == 1);
    double worst = 0;
    for (int t = 0; t < 8; t++)
        for (int i = 0; i < 128; i++) worst = fmax(worst, fabs((double)a->k0[t][i] - b->k0[t][i]));
    CHECKF(worst < 1e-4, "batched and incremental keys differ by %g", worst);
    kvq_context_free(ca);
    kvq_context_free(cb);
    free(a);
    free(b);
    kvq_model_free(m);
}

/* The query observer sees each layer's queries once per eval, at the right positions,
 * the same batched and one at a time. */
typedef struct q_seen {
    int calls;
    size_t last_pos, last_n, q_dim;
    float *q0; /* layer 0 queries by position, [8][q_dim] */
} q_seen;

static void observe_queries(void *user, uint32_t layer, size_t pos, const float *q, size_t n) {
    q_seen *s = user;
    s->calls++;
    s->last_pos = pos;
    s->last_n = n;
    if (layer == 0)
        for (size_t t = 0; t < n && pos + t < 8; t++)
            memcpy(s->q0 + (pos + t) * s->q_dim, q + t * s->q_dim, s->q_dim * sizeof(float));
}

TEST(engine_query_observer) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    kvq_model_info info;
    REQUIRE_OK(kvq_model_get_info(m, &info));
    size_t q_dim = (size_t)info.n_heads * info.head_dim;
    q_seen a = {.q_dim = q_dim}, b = {.q_dim = q_dim};
    a.q0 = calloc(8 * q_dim, sizeof(float));
    b.q0 = calloc(8 * q_dim, sizeof(float));
    REQUIRE(a.q0 && b.q0);
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 16;
    p.n_threads = 1;
    p.query_observer = observe_queries;
    p.query_observer_user = &a;
    kvq_context *ca, *cb;
    REQUIRE_OK(kvq_context_create(m, &p, &ca));
    p.query_observer_user = &b;
    REQUIRE_OK(kvq_context_create(m, &p, &cb));
    int32_t toks[8] = {5, 80, 200, 31, 7, 300, 12, 9};
    REQUIRE_OK(kvq_context_eval(ca, toks, 8, NULL, 0));
    CHECK(a.calls == (int)info.n_layers && a.last_pos == 0 && a.last_n == 8);
    for (int i = 0; i < 8; i++) REQUIRE_OK(kvq_context_eval(cb, toks + i, 1, NULL, 0));
    CHECK(b.calls == 8 * (int)info.n_layers && b.last_pos == 7 && b.last_n == 1);
    double worst = 0, norm = 0;
    for (size_t i = 0; i < 8 * q_dim; i++) {
        worst = fmax(worst, fabs((double)a.q0[i] - b.q0[i]));
        norm = fmax(norm, fabs((double)a.q0[i]));
    }
    CHECKF(norm > 0 && worst < 1e-4 * (1 + norm), "batched and incremental queries differ by %g", worst);
    kvq_context_free(ca);
    kvq_context_free(cb);
    free(a.q0);
    free(b.q0);
    kvq_model_free(m);
}

/* ------------------------------------------------------------------ gemma3 */

#define TINY_GEMMA "tests/data/tiny-gemma.gguf"
#define TINY_GEMMA_REF "tests/data/tiny-gemma.ref"

/* worst relative error of n rows of logits against the reference's rows first.. */
static double worst_rows(const float *logits, const ref_logits *ref, uint32_t first, uint32_t n) {
    double worst = 0;
    for (uint32_t t = 0; t < n; t++) {
        double e = rel_err(logits + (size_t)t * ref->n_vocab, ref->logits + (size_t)(first + t) * ref->n_vocab,
                           ref->n_vocab);
        if (e > worst) worst = e;
    }
    return worst;
}

/* The reference's tokens in batches of 4, 3, 4, 3, ...: the worst relative error of any
 * row, or 1e30 if an evaluation fails. */
static double uneven_batches(kvq_context *c, const ref_logits *ref, float *logits) {
    double worst = 0;
    for (uint32_t t = 0; t < ref->n_tok; t += t % 2 ? 3 : 4) {
        uint32_t nb = t % 2 ? 3 : 4;
        if (nb > ref->n_tok - t) nb = ref->n_tok - t;
        if (kvq_context_eval(c, ref->tokens + t, nb, logits, 1) != KVQ_OK) return 1e30;
        double e = worst_rows(logits, ref, t, nb);
        if (e > worst) worst = e;
    }
    return worst;
}

/* The tiny gemma3 (window 5, five sliding layers then a global one) against float64
 * numpy: one batch, one token at a time, and two batches where the second one's
 * windows reach back into the first. */
TEST(engine_gemma_logits_match_reference) {
    ref_logits ref = {0};
    REQUIRE(load_ref_file(&ref, TINY_GEMMA_REF));
    kvq_model *m;
    char msg[256] = "";
    kvq_status st = kvq_model_load(TINY_GEMMA, &m, msg, sizeof msg);
    CHECKF(st == KVQ_OK, "load: %s", msg);
    if (st) {
        free(ref.raw);
        return;
    }
    kvq_model_info in;
    REQUIRE_OK(kvq_model_get_info(m, &in));
    CHECK(!strcmp(in.arch, "gemma3") && in.n_layers == 6 && in.n_embd == 96 && in.head_dim == 64);
    CHECK(in.n_heads == 2 && in.n_kv_heads == 1 && in.rope_neox && in.tied_output);
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 64;
    p.n_threads = 2;
    p.float_activations = 1;
    kvq_context *c;
    REQUIRE_OK(kvq_context_create(m, &p, &c));
    float *logits = malloc(sizeof(float) * ref.n_tok * ref.n_vocab);
    REQUIRE(logits);
    CHECK_OK(kvq_context_eval(c, ref.tokens, ref.n_tok, logits, 1));
    double worst = worst_rows(logits, &ref, 0, ref.n_tok);
    CHECKF(worst < 1e-3, "batch: worst relative error %g", worst);
    if (getenv("KVQ_TEST_VERBOSE")) printf("    batch worst relative error %g\n", worst);
    CHECK_OK(kvq_context_reset(c));
    worst = 0;
    for (uint32_t t = 0; t < ref.n_tok; t++) {
        CHECK_OK(kvq_context_eval(c, ref.tokens + t, 1, logits, 0));
        double e = worst_rows(logits, &ref, t, 1);
        if (e > worst) worst = e;
    }
    CHECKF(worst < 1e-3, "incremental: worst relative error %g", worst);
    CHECK_OK(kvq_context_reset(c));
    CHECK_OK(kvq_context_eval(c, ref.tokens, 7, logits, 1));
    worst = worst_rows(logits, &ref, 0, 7);
    CHECK_OK(kvq_context_eval(c, ref.tokens + 7, ref.n_tok - 7, logits, 1));
    double w2 = worst_rows(logits, &ref, 7, ref.n_tok - 7);
    CHECKF(worst < 1e-3 && w2 < 1e-3, "two batches: worst relative errors %g, %g", worst, w2);
    kvq_context_free(c);
    /* batches of at most 4: the sliding layers keep a ring of 5 + 4 - 1 = 8 positions,
     * which wraps twice over the 16 tokens */
    p.n_batch = 4;
    REQUIRE_OK(kvq_context_create(m, &p, &c));
    worst = uneven_batches(c, &ref, logits);
    CHECKF(worst < 1e-3, "ring of 8: worst relative error %g", worst);
    kvq_cache_memory_info mem;
    CHECK_OK(kvq_context_kv_memory(c, &mem, NULL));
    CHECK(mem.key_codes == (uint64_t)(5 * 8 + 1 * ref.n_tok) * in.head_dim * 4);
    kvq_context_free(c);
    p.n_batch = 0;
    /* an fp16 kvq_cache: its sliding-window layers mask and free past the window, so the
     * whole text follows the reference, in batches that cross the window unevenly */
    kvq_cache_config cc;
    REQUIRE_OK(kvq_cache_config_init(&cc, in.n_kv_heads, in.head_dim, "fp16", "fp16", msg, sizeof msg));
    cc.chunk_tokens = 2; /* small chunks, so the window frees some */
    p.cache = &cc;
    p.n_cache_configs = 1;
    p.n_batch = 4;
    REQUIRE_OK(kvq_context_create(m, &p, &c));
    worst = uneven_batches(c, &ref, logits);
    CHECKF(worst < 2e-3, "fp16 cache past the window: worst relative error %g", worst);
    CHECK_OK(kvq_context_kv_memory(c, &mem, NULL));
    /* five sliding layers hold at most window + batch - 1 + a chunk, the global one all */
    CHECKF(mem.key_codes <= (uint64_t)(5 * (5 + 3 + 2) + ref.n_tok) * in.head_dim * 2 &&
               mem.key_codes >= (uint64_t)(5 * 5 + ref.n_tok) * in.head_dim * 2,
           "key codes %llu", (unsigned long long)mem.key_codes);
    kvq_context_free(c);
    p.n_batch = 0;
    free(logits);
    kvq_model_free(m);
    free(ref.raw);
}

/* Gemma's chat template is recognised from the file, its turn tokens are single tokens. */
TEST(engine_gemma_chat_template) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY_GEMMA, &m, NULL, 0));
    kvq_chat_message msgs[] = {{"system", "Be brief."}, {"user", "Hi"}};
    char buf[256], msg[200] = "";
    size_t len;
    CHECK_OK(kvq_chat_format(m, NULL, msgs, 2, 1, buf, sizeof buf, &len, msg, sizeof msg));
    CHECKF(!strcmp(buf, "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"), "%s %s", buf,
           msg);
    int32_t toks[8];
    size_t n;
    CHECK_OK(kvq_tokenize(m, "<end_of_turn>", 0, toks, 8, &n));
    CHECK(n == 1);
    kvq_model_free(m);
}

/* The gated activation: every ISA gives the scalar reference's bits (lengths with and
 * without a tail, large and special inputs), and the reference is SiLU / GELU-tanh times
 * up to float accuracy. */
TEST(engine_glu_bit_identical_to_scalar_and_accurate) {
    enum { N = 1037 };
    static float g[N], up[N], y_ref[N], y_isa[N];
    kvqi_rng r;
    kvqi_rng_seed(&r, 2718);
    for (size_t i = 0; i < N; i++) {
        g[i] = (float)kvqi_rng_normal(&r) * (i % 7 == 0 ? 30.0f : 3.0f);
        up[i] = (float)kvqi_rng_normal(&r);
    }
    g[0] = 0.0f, g[1] = -0.0f, g[2] = 200.0f, g[3] = -200.0f, g[4] = INFINITY, g[5] = 1e-30f, g[6] = -60.0f;
    g[7] = NAN;
    kvqi_engine_kernels S, K;
    kvqi_engine_kernels_scalar(&S);
    REQUIRE(S.glu);
    for (int gelu = 0; gelu <= 1; gelu++) {
        memcpy(y_ref, g, sizeof g);
        S.glu(y_ref, up, N, gelu);
        for (size_t i = 0; i < N; i++) {
            if (!isfinite(g[i])) continue;
            double x = g[i], u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
            /* 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)), without tanh's cancellation near -1 */
            double want = (gelu ? x / (1.0 + exp(-2.0 * u)) : x / (1.0 + exp(-x))) * up[i];
            /* z = 2u (or x) in float: an error of |z| 2^-24 in z is that much relative in e^-|z| */
            double z = gelu ? 2.0 * u : x;
            CHECKF(fabs(y_ref[i] - want) <= 1e-6 * (1.0 + fabs(z)) * fabs(want) + 1e-30, "gelu %d g %g: %g vs %g", gelu, g[i],
                   y_ref[i], want);
        }
        CHECK(isnan(y_ref[7]));
        CHECK(y_ref[4] == (up[4] > 0 ? INFINITY : -INFINITY));
        for (int isa = KVQ_ISA_AVX2; isa <= KVQ_ISA_NEON; isa++) {
            if (!kvq_isa_available((kvq_isa)isa)) continue;
            REQUIRE_OK(kvqi_engine_kernels_init((kvq_isa)isa, &K));
            for (size_t n = N - 8; n <= N; n++) {
                memcpy(y_isa, g, sizeof g);
                K.glu(y_isa, up, n, gelu);
                CHECKF(!memcmp(y_ref, y_isa, n * sizeof(float)), "%s glu (gelu %d, n %zu) differs from the reference",
                       kvqi_isa_name(K.isa), gelu, n);
            }
        }
    }
}

/* Random blocks of a type with finite scales in the places ggml's layouts keep them. */
static void fill_type_row(uint8_t *row, uint32_t type, size_t n, kvqi_rng *r) {
    const kvqi_type_traits *tt = kvqi_type(type);
    for (size_t i = 0; i < n / tt->block; i++) {
        uint8_t *b = row + i * tt->size;
        for (uint32_t k = 0; k < tt->size; k++) b[k] = (uint8_t)kvqi_rng_next(r);
        uint16_t d = kvqi_fp32_to_fp16(0.001f + 0.02f * (float)kvqi_rng_uniform(r));
        uint16_t m = kvqi_fp32_to_fp16(-0.1f + 0.2f * (float)kvqi_rng_uniform(r));
        size_t d_at = type == KVQI_T_Q6_K ? 208 : 0;
        memcpy(b + d_at, &d, 2);
        if (type == KVQI_T_Q4_1 || type == KVQI_T_Q4_K) memcpy(b + 2, type == KVQI_T_Q4_K ? &d : &m, 2);
    }
}

/* The int8 tile product: every ISA unpacks the same bytes and scales and computes the
 * same bits as the scalar reference, for each weight type, tile height and token
 * count; and the result is the float product of the dequantized numbers. */
TEST(engine_int8_tile_bit_identical_to_scalar) {
    static const uint32_t types[] = {KVQI_T_Q4_0, KVQI_T_Q4_1, KVQI_T_Q5_0, KVQI_T_Q8_0, KVQI_T_Q4_K, KVQI_T_Q6_K};
    enum { NMAX = 512, TOK = 7 };
    static uint8_t rows[4][NMAX / 256 * 210 + NMAX / 32 * 22];
    static int8_t w_ref[4 * NMAX], w_isa[4 * NMAX], q[TOK * NMAX];
    static float wl_ref[NMAX], wl_isa[NMAX], wo_ref[4 * NMAX / 32], wo_isa[4 * NMAX / 32];
    static float x[TOK * NMAX], wf[NMAX], d[TOK * NMAX / 32], s[TOK * NMAX / 32];
    float y_ref[TOK * 4], y_isa[TOK * 4];
    kvqi_engine_kernels S, K;
    kvqi_engine_kernels_scalar(&S);
    kvqi_rng r;
    kvqi_rng_seed(&r, 1313);
    for (size_t i = 0; i < TOK * NMAX; i++) x[i] = (float)kvqi_rng_normal(&r);
    int compared = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t type = types[ti];
        REQUIRE(S.unpack_q8[type]);
        /* an odd block count where the type allows (3 blocks of 32) */
        size_t lens[2] = {NMAX, kvqi_type(type)->block == 32 ? 96 : 256};
        for (int li = 0; li < 2; li++) {
            size_t n = lens[li], nb = n / 32;
            for (int k = 0; k < 4; k++) fill_type_row(rows[k], type, n, &r);
            for (size_t t = 0; t < TOK; t++) S.quantize_q8(x + t * n, n, q + t * n, d + t * nb, s + t * nb);
            kvqi_q8_acts a = {q, d, s, n, nb};
            memset(wo_ref, 0, sizeof wo_ref);
            int off = 0;
            for (int k = 0; k < 4; k++) off = S.unpack_q8[type](rows[k], n, w_ref + k * n, wl_ref + k * (n / 4), wo_ref + k);
            CHECK(off == (type == KVQI_T_Q4_1 || type == KVQI_T_Q4_K));
            /* the reference against the float product of the dequantized numbers */
            kvqi_q8_tile full = {w_ref, wl_ref, off ? wo_ref : NULL, n, 4};
            S.gemm_q8(&full, &a, TOK, y_ref, 4);
            for (size_t t = 0; t < TOK; t++) {
                for (int k = 0; k < 4; k++) {
                    kvqi_type(type)->to_float(rows[k], wf, n);
                    double exact = 0, mag = 0;
                    for (size_t i = 0; i < n; i++) {
                        double xq = (double)q[t * n + i] * d[t * nb + i / 32];
                        exact += (double)wf[i] * xq;
                        mag += fabs((double)wf[i] * xq);
                    }
                    CHECKF(fabs(y_ref[t * 4 + k] - exact) <= 1e-5 * mag + 1e-6, "type %s n %zu: %g vs %g",
                           kvqi_type(type)->name, n, y_ref[t * 4 + k], exact);
                }
            }
            /* each x86 table, and the plain AVX2 build where AVX2 takes its AVX-VNNI one */
            kvqi_engine_kernels ksets[5];
            size_t n_ksets = kvqi_engine_kernel_sets(ksets, 5);
            REQUIRE(n_ksets <= 5);
            for (size_t ks = 0; ks < n_ksets; ks++) {
                K = ksets[ks];
                if (K.isa != KVQ_ISA_AVX2 && K.isa != KVQ_ISA_AVX512) continue;
                REQUIRE(K.unpack_q8[type] && K.gemm_q8);
                memset(wo_isa, 0, sizeof wo_isa);
                for (int k = 0; k < 4; k++)
                    CHECK(K.unpack_q8[type](rows[k], n, w_isa + k * n, wl_isa + k * (n / 4), wo_isa + k) == off);
                CHECKF(!memcmp(w_ref, w_isa, 4 * n) && !memcmp(wl_ref, wl_isa, n * sizeof(float)) &&
                           !memcmp(wo_ref, wo_isa, 4 * nb * sizeof(float)),
                       "%s unpacks %s differently", kvqi_isa_name(K.isa), kvqi_type(type)->name);
                for (size_t n_rows = 1; n_rows <= 4; n_rows++)
                    for (size_t n_tok = 1; n_tok <= TOK; n_tok++) {
                        kvqi_q8_tile tl = {w_ref, wl_ref, off ? wo_ref : NULL, n, n_rows};
                        memset(y_ref, 0, sizeof y_ref);
                        memset(y_isa, 0, sizeof y_isa);
                        S.gemm_q8(&tl, &a, n_tok, y_ref, 4);
                        K.gemm_q8(&tl, &a, n_tok, y_isa, 4);
                        CHECKF(!memcmp(y_ref, y_isa, sizeof y_ref), "%s %s: %zu rows x %zu tokens differ from the reference",
                               kvqi_isa_name(K.isa), kvqi_type(type)->name, n_rows, n_tok);
                        compared++;
                    }
                /* one token straight from the blocks: the same bits again */
                for (size_t n_rows = 1; K.gemv_q8[type] && n_rows <= 4; n_rows++) {
                    kvqi_q8_tile tl = {w_ref, wl_ref, off ? wo_ref : NULL, n, n_rows};
                    memset(y_ref, 0, sizeof y_ref);
                    memset(y_isa, 0, sizeof y_isa);
                    S.gemm_q8(&tl, &a, 1, y_ref, 4);
                    K.gemv_q8[type](rows[0], sizeof rows[0], n_rows, n, &a, y_isa);
                    CHECKF(!memcmp(y_ref, y_isa, sizeof y_ref), "%s %s: one-token product of %zu rows differs",
                           kvqi_isa_name(K.isa), kvqi_type(type)->name, n_rows);
                    compared++;
                }
            }
        }
    }
    if (kvq_isa_available(KVQ_ISA_AVX2)) CHECK(compared > 0);
}
