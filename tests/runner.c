/*
 * runner.c - runs every registered test, each in its own process so that a crash
 * counts as one failure, and ends with "N passed, N failed, N skipped".
 * Usage: kvq-tests [SUBSTRING...]   (run only tests whose names contain one of them)
 * KVQ_TEST_NOFORK=1 runs in-process (for debuggers).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#define KVQ_TEST_ENTRY(name) void kvq_test_##name(kvqt_ctx *);
#include "registry.h"
#undef KVQ_TEST_ENTRY

typedef struct {
    const char *name;
    void (*fn)(kvqt_ctx *);
} test_entry;

static const test_entry g_tests[] = {
#define KVQ_TEST_ENTRY(name) {#name, kvq_test_##name},
#include "registry.h"
#undef KVQ_TEST_ENTRY
};

#define EXIT_PASS 0
#define EXIT_FAIL 1
#define EXIT_SKIP 77

static char g_tmpdir[512];

void kvqt_fail(kvqt_ctx *t, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    t->failures++;
    if (t->failures > 20) return; /* enough said */
    fprintf(stdout, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

void kvqt_skip(kvqt_ctx *t, const char *reason) {
    t->skipped = 1;
    fprintf(stdout, "    skipped: %s\n", reason);
    fflush(stdout);
}

const char *kvqt_cli_path(void) {
    const char *p = getenv("KVQ_CLI");
    return (p && *p) ? p : "build/kvq";
}

int kvqt_run_cli(kvqt_ctx *t, const char *args, char *err, size_t err_size) {
    const char *dir = kvqt_tmpdir(t);
    char cmd[8192];
    if (!dir) return -1;
    snprintf(cmd, sizeof cmd, "%s %s > %s/out.txt 2> %s/err.txt", kvqt_cli_path(), args, dir, dir);
    int rc = system(cmd);
    if (err && err_size) {
        err[0] = 0;
        snprintf(cmd, sizeof cmd, "%s/err.txt", dir);
        FILE *f = fopen(cmd, "r");
        if (f) {
            size_t n = fread(err, 1, err_size - 1, f);
            err[n] = 0;
            fclose(f);
        }
    }
    return rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Causal GQA attention in double: q [nq][H][dim], k/v [n][n_kv][dim]. */
void kvqt_ref_attend(const float *q, const float *k, const float *v, size_t n, uint32_t n_kv,
                     uint32_t H, uint32_t dim, size_t nq, float scale, float *out) {
    uint32_t G = H / n_kv;
    double *s = malloc(n * sizeof(double));
    for (size_t i = 0; i < nq; i++) {
        size_t visible = n - nq + i + 1;
        for (uint32_t h = 0; h < H; h++) {
            uint32_t g = h / G;
            const float *qh = q + (i * H + h) * dim;
            double m = -1e300, l = 0.0;
            for (size_t t = 0; t < visible; t++) {
                const float *kt = k + (t * n_kv + g) * dim;
                double d = 0.0;
                for (uint32_t j = 0; j < dim; j++) d += (double)qh[j] * kt[j];
                s[t] = d * scale;
                if (s[t] > m) m = s[t];
            }
            for (size_t t = 0; t < visible; t++) {
                s[t] = exp(s[t] - m);
                l += s[t];
            }
            float *o = out + (i * H + h) * dim;
            for (uint32_t j = 0; j < dim; j++) {
                double a = 0.0;
                for (size_t t = 0; t < visible; t++) a += s[t] * v[(t * n_kv + g) * dim + j];
                o[j] = (float)(a / l);
            }
        }
    }
    free(s);
}

int kvqt_write_fox_text(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    for (int i = 0; i < 40; i++) fprintf(f, "The quick brown fox jumps over the lazy dog %d times. ", i);
    return fclose(f) == 0;
}

const char *kvqt_tmpdir(kvqt_ctx *t) {
    if (!g_tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_tmpdir, sizeof g_tmpdir, "%s/kvq-test-%s-XXXXXX", (base && *base) ? base : "/tmp",
                 t->name);
        if (!mkdtemp(g_tmpdir)) {
            kvqt_fail(t, __FILE__, __LINE__, "mkdtemp: %s", strerror(errno));
            snprintf(g_tmpdir, sizeof g_tmpdir, ".");
        }
    }
    return g_tmpdir;
}

static int run_one(const test_entry *e) {
    kvqt_ctx ctx = {e->name, 0, 0};
    g_tmpdir[0] = '\0';
    e->fn(&ctx);
    if (ctx.failures) return EXIT_FAIL;
    if (g_tmpdir[0] && strcmp(g_tmpdir, ".") != 0) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
        if (system(cmd) != 0) { /* best effort */
        }
    }
    return ctx.skipped ? EXIT_SKIP : EXIT_PASS;
}

static double now_s(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec * 1e-6;
}

static int selected(const char *name, int argc, char **argv) {
    if (argc <= 1) return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i])) return 1;
    return 0;
}

int main(int argc, char **argv) {
    size_t n = sizeof g_tests / sizeof g_tests[0];
    int passed = 0, failed = 0, skipped = 0;
    const char *nofork = getenv("KVQ_TEST_NOFORK");
    int fork_each = !(nofork && *nofork == '1');
    printf("kvq %s tests, ISA %s\n", kvq_version_string(), kvq_cpu_isa());
    for (size_t i = 0; i < n; i++) {
        const test_entry *e = &g_tests[i];
        if (!selected(e->name, argc, argv)) continue;
        printf("%s ...\n", e->name);
        fflush(stdout);
        double t0 = now_s();
        int rc;
        if (fork_each) {
            pid_t pid = fork();
            if (pid < 0) {
                perror("fork");
                return 2;
            }
            if (pid == 0) _exit(run_one(e));
            int st = 0;
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
            }
            if (WIFEXITED(st)) {
                rc = WEXITSTATUS(st);
            } else {
                printf("    crashed: signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
                rc = EXIT_FAIL;
            }
        } else {
            rc = run_one(e);
        }
        double dt = now_s() - t0;
        const char *word = rc == EXIT_PASS ? "ok" : rc == EXIT_SKIP ? "SKIP" : "FAIL";
        printf("  %-4s %s (%.2f s)\n", word, e->name, dt);
        if (rc == EXIT_PASS) passed++;
        else if (rc == EXIT_SKIP) skipped++;
        else failed++;
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
