/*
 * test.h - the test runner's macros. A test is `TEST(name) { ... }` at the start of a
 * line in any tests/ source; the build registers it. CHECK* record a failure and go on,
 * REQUIRE* record it and return, SKIP returns as skipped (e.g. no GPU here).
 */
#ifndef KVQ_TEST_H
#define KVQ_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kvq.h"

typedef struct kvqt_ctx {
    const char *name;
    int failures;
    int skipped;
} kvqt_ctx;

void kvqt_fail(kvqt_ctx *t, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
void kvqt_skip(kvqt_ctx *t, const char *reason);
/* Path of the built CLI (KVQ_CLI in the environment, else build/kvq). */
const char *kvqt_cli_path(void);
/* A fresh temporary directory for this test (removed by the runner when it passes). */
const char *kvqt_tmpdir(kvqt_ctx *t);
/* Runs `kvq ARGS` (shell syntax) with stdout into TMPDIR/out.txt and stderr into
 * TMPDIR/err.txt; err (may be NULL) receives stderr. The exit code, or -1 if the
 * command did not exit. */
int kvqt_run_cli(kvqt_ctx *t, const char *args, char *err, size_t err_size);
/* Writes forty sentences of the tiny models' vocabulary to path; 0 on failure. */
int kvqt_write_fox_text(const char *path);
/* Causal GQA attention in double: q [nq][H][dim], k/v [n][n_kv][dim]; query i sees the
 * first n - nq + i + 1 tokens. out [nq][H][dim]. */
void kvqt_ref_attend(const float *q, const float *k, const float *v, size_t n, uint32_t n_kv,
                     uint32_t H, uint32_t dim, size_t nq, float scale, float *out);

/* KVQT_SANITIZED: built under AddressSanitizer (gcc or clang), where the real models'
 * long runs are skipped */
#if defined(__SANITIZE_ADDRESS__)
#define KVQT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVQT_SANITIZED 1
#endif
#endif

#define TEST(name) void kvq_test_##name(kvqt_ctx *kvqt_)

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) kvqt_fail(kvqt_, __FILE__, __LINE__, "%s", #cond);    \
    } while (0)
#define CHECKF(cond, ...)                                                  \
    do {                                                                   \
        if (!(cond)) kvqt_fail(kvqt_, __FILE__, __LINE__, __VA_ARGS__);    \
    } while (0)
#define REQUIRE(cond)                                                      \
    do {                                                                   \
        if (!(cond)) {                                                     \
            kvqt_fail(kvqt_, __FILE__, __LINE__, "%s", #cond);             \
            return;                                                        \
        }                                                                  \
    } while (0)
#define CHECK_OK(expr)                                                     \
    do {                                                                   \
        kvq_status kvqt_s_ = (expr);                                       \
        if (kvqt_s_ != KVQ_OK)                                             \
            kvqt_fail(kvqt_, __FILE__, __LINE__, "%s -> %s", #expr,        \
                      kvq_strerror(kvqt_s_));                              \
    } while (0)
#define REQUIRE_OK(expr)                                                   \
    do {                                                                   \
        kvq_status kvqt_s_ = (expr);                                       \
        if (kvqt_s_ != KVQ_OK) {                                           \
            kvqt_fail(kvqt_, __FILE__, __LINE__, "%s -> %s", #expr,        \
                      kvq_strerror(kvqt_s_));                              \
            return;                                                        \
        }                                                                  \
    } while (0)
/* expr must fail with exactly this status */
#define CHECK_STATUS(expr, want)                                           \
    do {                                                                   \
        kvq_status kvqt_s_ = (expr);                                       \
        if (kvqt_s_ != (want))                                             \
            kvqt_fail(kvqt_, __FILE__, __LINE__, "%s -> %s, want %s",      \
                      #expr, kvq_strerror(kvqt_s_), kvq_strerror(want));   \
    } while (0)
/* expr must fail with any status but KVQ_OK */
#define CHECK_FAILS(expr)                                                  \
    do {                                                                   \
        if ((expr) == KVQ_OK)                                              \
            kvqt_fail(kvqt_, __FILE__, __LINE__, "%s succeeded", #expr);   \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                              \
    do {                                                                   \
        double kvqt_a_ = (double)(a), kvqt_b_ = (double)(b);               \
        if (!(fabs(kvqt_a_ - kvqt_b_) <= (double)(tol)))                   \
            kvqt_fail(kvqt_, __FILE__, __LINE__, "%s = %.9g, %s = %.9g, "  \
                      "|diff| > %g", #a, kvqt_a_, #b, kvqt_b_, (double)(tol)); \
    } while (0)
#define SKIP(reason)                                                       \
    do {                                                                   \
        kvqt_skip(kvqt_, reason);                                          \
        return;                                                            \
    } while (0)

#endif /* KVQ_TEST_H */
