/*
 * test_badinput2.c - more hostile input: sizes whose byte count wraps, a zero dimension,
 * NaN/Inf rows in the cache, a key-calibrated artifact with no values' spec, and the
 * CLI's one-line messages for them.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#define TINY "tests/data/tiny-llama.gguf"

/* n rows whose byte count wraps size_t: OVERFLOW before any kernel touches a buffer */
TEST(badinput2_quantizer_overflow) {
    kvq_config c;
    REQUIRE_OK(kvq_config_init(&c, KVQ_METHOD_Q8_0, 128));
    kvq_quantizer *q = NULL;
    REQUIRE_OK(kvq_quantizer_create(&c, &q));
    float x[128] = {0}, s[4];
    uint8_t codes[1024];
    size_t huge[] = {SIZE_MAX / (128 * sizeof(float)) + 1, SIZE_MAX / 2, SIZE_MAX};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        CHECK_STATUS(kvq_encode(q, x, huge[i], codes), KVQ_ERR_OVERFLOW);
        CHECK_STATUS(kvq_decode(q, codes, huge[i], x), KVQ_ERR_OVERFLOW);
        CHECK_STATUS(kvq_score(q, x, codes, huge[i], s), KVQ_ERR_OVERFLOW);
    }
    /* the largest n that fits is not refused for its size (one row still works) */
    CHECK_OK(kvq_encode(q, x, 1, codes));
    kvq_quantizer_free(q);
    CHECK_STATUS(kvq_config_init(&c, KVQ_METHOD_FP16, 0), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_config_init(&c, KVQ_METHOD_Q8_0, 0), KVQ_ERR_INVALID_ARG);
}

/* a NaN or an infinity in k or v: refused whole, the cache unchanged */
TEST(badinput2_cache_append_rejects_nonfinite) {
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_init(&cfg, 2, 64, "q8_0", "q8_0", NULL, 0));
    kvq_cache *cache = NULL;
    REQUIRE_OK(kvq_cache_create(&cfg, &cache));
    float k[3 * 2 * 64], v[3 * 2 * 64];
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) k[i] = v[i] = (float)((i * 7) % 13) - 6.0f;
    REQUIRE_OK(kvq_cache_append(cache, k, v, 3));
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t b = 0; b < 3; b++)
        for (int which = 0; which < 2; which++) {
            float *t = which ? v : k;
            size_t at = 2 * 2 * 64 + 17; /* in the last row */
            float keep = t[at];
            t[at] = bad[b];
            CHECK_STATUS(kvq_cache_append(cache, k, v, 3), KVQ_ERR_INVALID_ARG);
            t[at] = keep;
        }
    size_t n = 0;
    REQUIRE_OK(kvq_cache_length(cache, &n));
    CHECKF(n == 3, "length %zu after refused appends", n);
    REQUIRE_OK(kvq_cache_append(cache, k, v, 3));
    REQUIRE_OK(kvq_cache_length(cache, &n));
    CHECK(n == 6);
    kvq_cache_free(cache);
}

/* a key artifact with no '+VSPEC' would be applied to values too: refused with a message */
TEST(badinput2_cli_artifact_needs_value_spec) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char args[4096], err[4096], text[600];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    REQUIRE(kvqt_write_fox_text(text));
    const char *forms[] = {
        "perplexity -m " TINY " -f %s --ctx 64 --chunks 1 -t 1 --configs 'vecinfer:artifact=%s/k.safetensors'",
        "perplexity -m " TINY " -f %s --ctx 64 --chunks 1 -t 1 --configs 'vecinfer:artifact=%s/k.safetensors@sink=1'",
        "generate -m " TINY " -f %s -n 2 --cache 'vecinfer:artifact=%s/k.safetensors@sink=1'",
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        snprintf(args, sizeof args, forms[i], text, dir);
        int rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
        CHECKF(rc == 1, "kvq %s: exit %d", args, rc);
        CHECKF(strstr(err, "KSPEC+VSPEC") != NULL, "kvq %s: '%s'", args, err);
    }
}

/* --dump-kv DIR: created when missing, refused up front when it cannot be (before a run) */
TEST(badinput2_cli_dump_kv_dir) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char args[4096], err[4096], path[600];
    /* a parent that does not exist: one line, exit 1, and no model output */
    snprintf(args, sizeof args, "generate -m " TINY " -p hi -n 2 --dump-kv %s/no/such", dir);
    int rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
    CHECKF(rc == 1, "exit %d", rc);
    CHECKF(strstr(err, "--dump-kv") && strstr(err, "cannot create"), "'%s'", err);
    /* a regular file in the way */
    snprintf(path, sizeof path, "%s/file", dir);
    REQUIRE(kvqt_write_fox_text(path));
    snprintf(args, sizeof args, "generate -m " TINY " -p hi -n 2 --dump-kv %s", path);
    rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
    CHECKF(rc == 1 && strstr(err, "not a directory"), "exit %d '%s'", rc, err);
    /* missing but creatable: made, and the layers land in it */
    snprintf(path, sizeof path, "%s/dump", dir);
    snprintf(args, sizeof args, "generate -m " TINY " -p hi -n 2 --quiet --dump-kv %s", path);
    rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
    CHECKF(rc == 0, "exit %d '%s'", rc, err);
    snprintf(path, sizeof path, "%s/dump/keys_00.npy", dir);
    struct stat sb;
    CHECKF(stat(path, &sb) == 0 && sb.st_size > 128, "%s missing", path);
}

/* ------------------------------------------------------------ GGUF oddities */

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = sz > 0 ? malloc((size_t)sz) : NULL;
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)sz;
    return b;
}

/* Offset just past a string in the file stored as u64 length + bytes (a key or a tensor name). */
static size_t after_string(const uint8_t *buf, size_t n, const char *s) {
    size_t l = strlen(s);
    for (size_t i = 8; i + l < n; i++)
        if (!memcmp(buf + i, s, l) && buf[i - 8] == l && !buf[i - 7]) return i + l;
    return 0;
}

static uint64_t get_le(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_le(uint8_t *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* buf written to DIR/odd.gguf and loaded: the status, msg the loader's message */
static kvq_status load_bytes(kvqt_ctx *kvqt_, const uint8_t *buf, size_t n, char *msg, size_t msg_size) {
    char path[600];
    snprintf(path, sizeof path, "%s/odd.gguf", kvqt_tmpdir(kvqt_));
    FILE *f = fopen(path, "wb");
    if (!f) return KVQ_ERR_IO;
    fwrite(buf, 1, n, f);
    fclose(f);
    kvq_model *m = NULL;
    msg[0] = 0;
    kvq_status st = kvq_model_load(path, &m, msg, msg_size);
    kvq_model_free(m);
    return st;
}

/* A u32/i32 metadata value named key: its offset (after the type), 0 if not one */
static size_t meta_u32_at(const uint8_t *buf, size_t n, const char *key) {
    size_t at = after_string(buf, n, key);
    if (!at || at + 8 > n) return 0;
    uint32_t type = (uint32_t)get_le(buf + at, 4);
    return type == 4 || type == 5 ? at + 4 : 0; /* GGUF u32 = 4, i32 = 5 */
}

TEST(badinput2_gguf_oddities_rejected) {
    size_t n;
    uint8_t *orig = slurp(TINY, &n), *buf = malloc(n);
    REQUIRE(orig && buf);
    char msg[512];
    REQUIRE_OK(load_bytes(kvqt_, orig, n, msg, sizeof msg));
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    kvq_model_info info;
    kvq_model_get_info(m, &info);
    kvq_model_free(m);
    /* bos / eos past the vocabulary */
    const char *ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"};
    for (int k = 0; k < 2; k++) {
        size_t at = meta_u32_at(orig, n, ids[k]);
        REQUIRE(at);
        memcpy(buf, orig, n);
        put_le(buf + at, info.n_vocab, 4);
        CHECK_STATUS(load_bytes(kvqt_, buf, n, msg, sizeof msg), KVQ_ERR_FORMAT);
        CHECKF(strstr(msg, ids[k]) && strstr(msg, "vocabulary"), "%s", msg);
        put_le(buf + at, info.n_vocab - 1, 4); /* the last token is still one */
        CHECK_OK(load_bytes(kvqt_, buf, n, msg, sizeof msg));
    }
    /* one tensor's data moved onto another's (aligned, inside the file) */
    size_t q = after_string(orig, n, "blk.0.attn_q.weight"), e = after_string(orig, n, "token_embd.weight");
    REQUIRE(q && e);
    uint32_t qd = (uint32_t)get_le(orig + q, 4), ed = (uint32_t)get_le(orig + e, 4);
    REQUIRE(qd >= 1 && qd <= 4 && ed >= 1 && ed <= 4);
    size_t q_off = q + 4 + 8 * qd + 4, e_off = e + 4 + 8 * ed + 4;
    memcpy(buf, orig, n);
    put_le(buf + q_off, get_le(orig + e_off, 8), 8);
    CHECK_STATUS(load_bytes(kvqt_, buf, n, msg, sizeof msg), KVQ_ERR_FORMAT);
    CHECKF(strstr(msg, "overlaps"), "%s", msg);
    /* block_count below the blk.N tensors present */
    char key[128];
    snprintf(key, sizeof key, "%s.block_count", info.arch);
    size_t bc = meta_u32_at(orig, n, key);
    REQUIRE(bc && info.n_layers >= 2);
    memcpy(buf, orig, n);
    put_le(buf + bc, info.n_layers - 1, 4);
    CHECK_STATUS(load_bytes(kvqt_, buf, n, msg, sizeof msg), KVQ_ERR_FORMAT);
    CHECKF(strstr(msg, "block_count"), "%s", msg);
    free(buf);
    free(orig);
}

/* ------------------------------------------------------ kvq_last_error details */

static void *fail_in_thread(void *arg) {
    (void)arg;
    kvq_clear_last_error();
    kvq_config c;
    if (kvq_config_init(&c, KVQ_METHOD_RABITQ, 128) == KVQ_OK) {
        c.split = 1;
        c.bits = 1;
        kvq_quantizer *q = NULL;
        if (kvq_quantizer_create(&c, &q) == KVQ_OK) kvq_quantizer_free(q);
    }
    return (void *)(strstr(kvq_last_error(), "split") != NULL ? (void *)1 : NULL);
}

TEST(badinput2_last_error_details) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char path[700];
    kvq_clear_last_error();
    CHECK(kvq_last_error() != NULL && kvq_last_error()[0] == 0);
    /* split with 1 bit: the reason, not just "invalid argument" */
    kvq_config c;
    REQUIRE_OK(kvq_config_init(&c, KVQ_METHOD_RABITQ, 128));
    c.split = 1;
    c.bits = 1;
    kvq_quantizer *q = NULL;
    CHECK_FAILS(kvq_quantizer_create(&c, &q));
    CHECKF(strstr(kvq_last_error(), "split=1 needs bits"), "'%s'", kvq_last_error());
    /* another thread's failure is not seen here, and this one's is not seen there */
    kvq_clear_last_error();
    pthread_t th;
    void *seen = NULL;
    REQUIRE(pthread_create(&th, NULL, fail_in_thread, NULL) == 0);
    REQUIRE(pthread_join(th, &seen) == 0);
    CHECK(seen != NULL);
    CHECKF(kvq_last_error()[0] == 0, "another thread's detail leaked: '%s'", kvq_last_error());
    /* I/O: the path and the system's reason */
    REQUIRE_OK(kvq_config_init(&c, KVQ_METHOD_Q8_0, 128));
    REQUIRE_OK(kvq_quantizer_create(&c, &q));
    snprintf(path, sizeof path, "%s/no/such/dir/q.safetensors", dir);
    CHECK_STATUS(kvq_quantizer_save(q, path), KVQ_ERR_IO);
    CHECKF(strstr(kvq_last_error(), path) && strstr(kvq_last_error(), "No such file or directory"), "'%s'",
           kvq_last_error());
    kvq_quantizer *back = NULL;
    kvq_clear_last_error();
    CHECK_STATUS(kvq_quantizer_load(path, &back), KVQ_ERR_IO);
    CHECKF(strstr(kvq_last_error(), path) && strstr(kvq_last_error(), "No such file or directory"), "'%s'",
           kvq_last_error());
    kvq_quantizer_free(q);
    /* GQA: query heads not a multiple of the KV heads */
    kvq_cache_config cc;
    REQUIRE_OK(kvq_cache_config_init(&cc, 2, 64, "fp16", "fp16", NULL, 0));
    kvq_cache *cache = NULL;
    REQUIRE_OK(kvq_cache_create(&cc, &cache));
    float kv[2 * 64] = {0}, qv[3 * 64] = {0}, out[3 * 64];
    REQUIRE_OK(kvq_cache_append(cache, kv, kv, 1));
    kvq_clear_last_error();
    CHECK_STATUS(kvq_cache_attend(cache, qv, 3, 1, 0.125f, NULL, out), KVQ_ERR_MISMATCH);
    CHECKF(strstr(kvq_last_error(), "3 query heads") && strstr(kvq_last_error(), "2 KV heads"), "'%s'",
           kvq_last_error());
    kvq_cache_free(cache);
}

/* the CLI prints the detail; a calibrated method with no artifact is refused before the model loads */
TEST(badinput2_cli_details) {
    char err[4096];
    int rc = kvqt_run_cli(kvqt_, "generate -m " TINY " -p hi -n 1 --outliers 64", err, sizeof err);
    CHECKF(rc == 1 && strstr(err, "outliers 64 must be below head_dim 64"), "exit %d '%s'", rc, err);
    /* the model path does not exist: the spec is judged first */
    const char *forms[] = {
        "generate -m no-such-model.gguf -p hi --cache-k vecinfer",
        "generate -m no-such-model.gguf -p hi --cache-k fp16 --cache-v spectral:bits=2",
        "perplexity -m no-such-model.gguf -f README.md --configs fp16,comm_vq+fp16",
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        rc = kvqt_run_cli(kvqt_, forms[i], err, sizeof err);
        CHECKF(rc == 1 && strstr(err, "is calibrated: give its artifact") && !strstr(err, "no-such-model"),
               "kvq %s: exit %d '%s'", forms[i], rc, err);
    }
}

/* tests/cli_badinput_sweep.sh: every hostile CLI input exits 1 with one line, no signal */
TEST(badinput2_cli_sweep) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "sh tests/cli_badinput_sweep.sh '%s' '%s' 2>&1", kvqt_cli_path(), kvqt_tmpdir(kvqt_));
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    char out[8192];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int rc = pclose(p);
    CHECKF(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "sweep: %s", out);
    CHECKF(strstr(out, " 0 failed") != NULL, "%s", out);
}

/* fuzz_layer_set found "layers 0002" accepted: a sealed manifest never has a leading
 * zero, so a number with one is refused (the count, a layer, a size) */
TEST(badinput2_layer_set_leading_zeros_refused) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char l0[600], l1[600], man[600];
    snprintf(l0, sizeof l0, "%s/x.layer00.safetensors", dir);
    snprintf(l1, sizeof l1, "%s/x.layer01.safetensors", dir);
    snprintf(man, sizeof man, "%s/x.layers.manifest", dir);
    REQUIRE(kvqt_write_fox_text(l0) && kvqt_write_fox_text(l1));
    const char *paths[2] = {l0, l1};
    char msg[512];
    REQUIRE_OK(kvq_layer_set_seal(man, paths, 2, msg, sizeof msg));
    REQUIRE_OK(kvq_layer_set_check(man, paths, 2, msg, sizeof msg));
    char sealed[4096];
    FILE *f = fopen(man, "rb");
    REQUIRE(f);
    size_t n = fread(sealed, 1, sizeof sealed - 1, f);
    fclose(f);
    sealed[n] = 0;
    const char *from[] = {"layers 2\n", "\n0 ", "\n1 "};
    const char *to[] = {"layers 0002\n", "\n00 ", "\n01 "};
    for (int i = 0; i < 3; i++) {
        char bad[4200], *at = strstr(sealed, from[i]);
        REQUIRE(at);
        snprintf(bad, sizeof bad, "%.*s%s%s", (int)(at - sealed), sealed, to[i], at + strlen(from[i]));
        f = fopen(man, "wb");
        REQUIRE(f);
        fputs(bad, f);
        fclose(f);
        CHECKF(kvq_layer_set_check(man, paths, 2, msg, sizeof msg) != KVQ_OK, "accepted:\n%s", bad);
    }
}
