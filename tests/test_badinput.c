/*
 * test_badinput.c - hostile input gets one clear line and exit 1, never a silent
 * default, a wrapped number, a huge allocation or a mixed artifact set: the CLI's
 * checked option values (kvq generate/perplexity/calibrate/bench/index), decimal-only
 * config values, regular-file checks, --window capped at the context, the sampler's
 * top-k/min-p/repeat penalty, --json output, crash-safe writes (stale temps of killed
 * runs removed) and per-layer artifact sets sealed by a manifest, with kill -9.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

#define TINY "tests/data/tiny-llama.gguf"

/* ----------------------------------------------------------------- helpers */

/* DIR/out.txt of the last kvqt_run_cli, NUL-terminated, in a static buffer. */
static const char *cli_stdout(kvqt_ctx *kvqt_) {
    static char buf[1 << 16];
    char path[600];
    snprintf(path, sizeof path, "%s/out.txt", kvqt_tmpdir(kvqt_));
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
    }
    return buf;
}

/* stderr is exactly one line (the message, nothing else) */
static int one_line(const char *err) {
    const char *nl = strchr(err, '\n');
    return nl && nl[1] == 0;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Files in dir whose name holds ".tmp." */
static int count_temps(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static int read_file(const char *path, char **buf, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t cap = 1 << 16;
    *buf = malloc(cap);
    *n = 0;
    size_t got;
    while (*buf && (got = fread(*buf + *n, 1, cap - *n, f)) > 0) {
        *n += got;
        if (*n == cap) {
            char *nb = realloc(*buf, cap *= 2);
            if (!nb) {
                free(*buf);
                *buf = NULL;
            }
            *buf = nb;
        }
    }
    fclose(f);
    return *buf != NULL;
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = read_file(a, &x, &nx) && read_file(b, &y, &ny) && nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

/* ------------------------------------------------------------ number options */

typedef struct bad_case {
    const char *args;   /* after "kvq " */
    const char *expect; /* in the one line on stderr */
} bad_case;

/* Each case exits 1 with its one line on stderr. */
static void refused(kvqt_ctx *kvqt_, const bad_case *cases, size_t n) {
    char err[4096];
    for (size_t i = 0; i < n; i++) {
        int rc = kvqt_run_cli(kvqt_, cases[i].args, err, sizeof err);
        CHECKF(rc == 1, "kvq %s: exit %d, want 1", cases[i].args, rc);
        CHECKF(strstr(err, cases[i].expect) != NULL, "kvq %s: stderr '%s', want '%s'", cases[i].args, err,
               cases[i].expect);
        CHECKF(one_line(err), "kvq %s: want one line, got '%s'", cases[i].args, err);
    }
}

TEST(badinput_cli_numbers_refused) {
    static const bad_case cases[] = {
        {"generate -m " TINY " -p hi -n abc", "generate: -n: 'abc' is not an integer in [0, 1000000]"},
        {"generate -m " TINY " -p hi -n 2abc", "-n: '2abc' is not an integer"},
        {"generate -m " TINY " -p hi --tokens ''", "--tokens: '' is not an integer"},
        {"generate -m " TINY " -p hi --ctx abc", "--ctx: 'abc' is not an integer"},
        {"generate -m " TINY " -p hi -c ' 64'", "-c: ' 64' is not an integer"},
        {"generate -m " TINY " -p hi --threads abc", "--threads: 'abc' is not an integer in [0, 1024]"},
        {"generate -m " TINY " -p hi --temp abc", "--temp: 'abc' is not a number"},
        {"generate -m " TINY " -p hi --temp nan", "--temp: 'nan' is not a number"},
        {"generate -m " TINY " -p hi --temp inf", "--temp: 'inf' is not a number"},
        {"generate -m " TINY " -p hi --temp 0x1p1", "--temp: '0x1p1' is not a number"},
        {"generate -m " TINY " -p hi --window abc", "--window: 'abc' is not an integer"},
        {"generate -m " TINY " -p hi --window 2000000", "--window: '2000000' is not an integer in [0, 1000000]"},
        {"generate -m " TINY " -p hi --seed -1", "--seed: '-1' is not an integer in [0, 18446744073709551615]"},
        {"generate -m " TINY " -p hi -s 18446744073709551616", "-s: '18446744073709551616' is not an integer"},
        {"generate -m " TINY " -p hi --top-p 1.5", "--top-p: '1.5' is not a number in [0, 1]"},
        {"generate -m " TINY " -p hi --top-k -1", "--top-k: '-1' is not an integer"},
        {"generate -m " TINY " -p hi --min-p nan", "--min-p: 'nan' is not a number"},
        {"generate -m " TINY " -p hi --repeat-penalty 0", "--repeat-penalty: '0' is not a number"},
        {"generate -m " TINY " -p hi --sink 5000", "--sink: '5000' is not an integer in [0, 1024]"},
        {"perplexity -m " TINY " -f x --chunks abc", "perplexity: --chunks: 'abc' is not an integer"},
        {"perplexity -m " TINY " -f x --ctx 8", "--ctx: '8' is not an integer in [16, 65536]"},
        {"perplexity -m " TINY " -f x -t 1.5", "-t: '1.5' is not an integer"},
        {"perplexity -m " TINY " -f x --window -3", "--window: '-3' is not an integer"},
        {"calibrate --method vecinfer -o x -m " TINY " -f x --seed -1", "calibrate: --seed: '-1' is not an integer"},
        {"calibrate --method vecinfer -o x -m " TINY " -f x --tokens 10k", "--tokens: '10k' is not an integer"},
        {"calibrate --method vecinfer -o x -m " TINY " -f x --layer 1x", "--layer: '1x' is not an integer"},
        {"calibrate --method ratequant -o x --sensitivities x --target nan", "--target: 'nan' is not a number"},
        {"bench --tokens 12abc", "bench: --tokens: '12abc' is not an integer in [16, 4194304]"},
        {"bench --seed -1", "bench: --seed: '-1' is not an integer"},
        {"index build -i x -o y --bits 0x2", "index build: --bits: '0x2' is not an integer in [1, 8]"},
        {"index build -i x -o y --seed -1", "index build: --seed: '-1' is not an integer"},
        {"index search -x x -q y -k 0", "index search: -k: '0' is not an integer in [1, 100000]"},
        {"index search -x x -q y --nprobe 4,abc", "--nprobe: 'abc' is not an integer"},
        {"index search -x x -q y --eps0 nan", "--eps0: 'nan' is not a number"},
    };
    refused(kvqt_, cases, sizeof cases / sizeof cases[0]);
}

/* kvq serve's numbers (where this build has the server: else `serve --help` fails) */
TEST(badinput_cli_serve_numbers_refused) {
    char err[4096];
    if (kvqt_run_cli(kvqt_, "serve --help", err, sizeof err) != 0) SKIP("kvq serve not in this build");
    static const bad_case cases[] = {
        {"serve -m " TINY " --port 99999", "serve: --port: '99999' is not an integer in [0, 65535]"},
        {"serve -m " TINY " --port abc", "--port: 'abc' is not an integer"},
        {"serve -m " TINY " -t 2x", "-t: '2x' is not an integer in [0, 1024]"},
        {"serve -m " TINY " -np 0", "-np: '0' is not an integer in [1, 256]"},
        {"serve -m " TINY " --kv-budget nan", "--kv-budget: 'nan' is not a number"},
        {"serve -m " TINY " --max-body -1", "--max-body: '-1' is not an integer"},
        {"serve -m " TINY " --timeout 0", "--timeout: '0' is not an integer in [1, 86400]"},
    };
    refused(kvqt_, cases, sizeof cases / sizeof cases[0]);
}

/* Good values around the bad ones still pass: the parser is strict, not stubborn. */
TEST(badinput_cli_numbers_accepted) {
    char err[4096];
    int rc = kvqt_run_cli(kvqt_,
                     "generate -m " TINY " -p 'The quick' -n 3 -c 64 -t 1 -s 18446744073709551615 --temp 0.7 "
                     "--top-k 5 --top-p 0.9 --min-p 0.01 --repeat-penalty 1.1 --repeat-last-n 8 -ctk q8_0 -ctv f16 "
                     "--window 0 --quiet",
                     err, sizeof err);
    CHECKF(rc == 0, "exit %d: %s", rc, err);
    rc = kvqt_run_cli(kvqt_, "generate -m " TINY " -p 'The quick' -n +2 --temp 1e-1 --quiet", err, sizeof err);
    CHECKF(rc == 0, "exit %d: %s", rc, err);
}

/* ------------------------------------------------------------ config values */

TEST(badinput_config_values_decimal_only) {
    static const char *const bad[] = {
        "mse:bits=010", "mse:bits=0x2", "mse:bits= 2", "mse:bits=08",  "mse:bits=+2",
        "mse:bits=-1",  "mse:bits=2a",  "mse:bits=",   "mse:seed=007", "mse:seed=18446744073709551616",
        "rabitq:eps0=0x1p1", "rabitq:eps0= 1.5",
    };
    kvq_config c;
    char msg[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msg[0] = 0;
        CHECKF(kvq_config_parse(bad[i], 128, &c, msg, sizeof msg) == KVQ_ERR_PARSE, "'%s' accepted", bad[i]);
        CHECKF(msg[0] != 0, "'%s': no message", bad[i]);
    }
    CHECK(strstr(msg, "eps0") || strstr(msg, "bits")); /* the message names the key */
    /* decimal values, 0 itself and the largest seed are fine; llama.cpp's f16 is fp16 */
    REQUIRE_OK(kvq_config_parse("mse:bits=2,seed=0", 128, &c, msg, sizeof msg));
    CHECK(c.bits == 2 && c.seed == 0);
    REQUIRE_OK(kvq_config_parse("mse: bits=3 , seed=18446744073709551615", 128, &c, msg, sizeof msg));
    CHECK(c.bits == 3 && c.seed == UINT64_MAX);
    REQUIRE_OK(kvq_config_parse("f16", 128, &c, msg, sizeof msg));
    CHECK(c.method == KVQ_METHOD_FP16);
    REQUIRE_OK(kvq_config_parse("rabitq:eps0=2.5", 128, &c, msg, sizeof msg));
    CHECK(c.eps0 == 2.5f);
    /* a cache spec with a side missing says so (it once read "unknown method ''") */
    static const char *const halves[] = {"q2+", "+q2", "mse:bits=4+", " + mse:bits=2"};
    kvq_cache_config cc;
    for (size_t i = 0; i < sizeof halves / sizeof halves[0]; i++) {
        msg[0] = 0;
        CHECKF(kvq_cache_config_parse(halves[i], 2, 64, &cc, msg, sizeof msg) == KVQ_ERR_PARSE, "'%s' accepted",
               halves[i]);
        CHECKF(strstr(msg, "empty method name") != NULL, "'%s': %s", halves[i], msg);
    }
    /* a bare word that is neither a preset nor a method names the presets; a bad value
     * side is still blamed on itself */
    CHECK_STATUS(kvq_cache_config_parse("q9", 2, 64, &cc, msg, sizeof msg), KVQ_ERR_PARSE);
    CHECKF(strstr(msg, "'q9' is neither a cache preset (q4, q3, q2) nor a method") != NULL, "%s", msg);
    CHECK_STATUS(kvq_cache_config_parse("mse+q9", 2, 64, &cc, msg, sizeof msg), KVQ_ERR_PARSE);
    CHECKF(strstr(msg, "unknown method 'q9'") != NULL, "%s", msg);
    /* '@' with nothing after it (it once read as no options) */
    CHECK_STATUS(kvq_cache_config_parse("q2@", 2, 64, &cc, msg, sizeof msg), KVQ_ERR_PARSE);
    CHECK(strstr(msg, "nothing after '@'") != NULL);
    REQUIRE_OK(kvq_cache_config_parse("q2@sink=2", 2, 64, &cc, msg, sizeof msg));
    CHECK(cc.n_sink == 2);
}

/* --------------------------------------------------------- regular files */

TEST(badinput_cli_directory_is_not_a_file) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char args[2048], err[4096], text[600];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    REQUIRE(kvqt_write_fox_text(text));
    const char *forms[] = {
        "perplexity -m " TINY " -f %s",
        "generate -m " TINY " -f %s",
        "calibrate --method vecinfer -o %s/x.safetensors -m " TINY " -f %s",
        "calibrate --method vecinfer -o %s/x.safetensors --keys %s",
        "calibrate --method ratequant -o %s/x.safetensors --sensitivities %s",
        "index build -i %s -o %s/ix",
        "calibrate --method ratequant -o %s --sensitivities %s/text.txt",
        "index build -i %s/text.txt -o %s",
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        snprintf(args, sizeof args, forms[i], dir, dir);
        int rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
        CHECKF(rc == 1, "kvq %s: exit %d", args, rc);
        CHECKF(strstr(err, "is a directory") != NULL && one_line(err), "kvq %s: '%s'", args, err);
    }
    /* an artifact or a plan that is a directory: refused, the message says so */
    snprintf(args, sizeof args, "perplexity -m " TINY " -f %s --ctx 64 --chunks 1 -t 1 --configs 'vecinfer:artifact=%s+fp16'",
             text, dir);
    CHECK(kvqt_run_cli(kvqt_, args, err, sizeof err) == 1);
    CHECKF(strstr(err, "artifact") && strstr(err, "is a directory"), "%s", err);
    snprintf(args, sizeof args, "generate -m " TINY " -p hi --cache-plan %s", dir);
    CHECK(kvqt_run_cli(kvqt_, args, err, sizeof err) == 1);
    CHECKF(strstr(err, "is a directory") && one_line(err), "%s", err);
}

/* -------------------------------------------------------------- --window */

/* Peak resident memory of the children waited for so far, in MiB. */
static double children_peak_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

TEST(badinput_cli_window_capped_at_context) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char args[2048], err[4096], text[600];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    REQUIRE(kvqt_write_fox_text(text));
    /* a window past the context holds the whole context: the same perplexity as a window
     * of exactly the context, with memory for the context only (it was 14.6 GB) */
    double ppl[2] = {0, 0};
    const char *windows[2] = {"64", "65536"};
    for (int w = 0; w < 2; w++) {
        snprintf(args, sizeof args,
                 "perplexity -m " TINY " -f %s --ctx 64 --chunks 2 -t 1 --configs q4_0 --window %s", text,
                 windows[w]);
        int rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
        CHECKF(rc == 0, "%s: exit %d: %s", args, rc, err);
        const char *out = cli_stdout(kvqt_);
        const char *row = strstr(out, "\nq4_0");
        CHECKF(row && sscanf(row + 1, "q4_0 %lf", &ppl[w]) == 1, "no q4_0 row in: %s", out);
    }
    CHECKF(ppl[0] > 1 && ppl[0] == ppl[1], "window 64: %g, window 65536: %g", ppl[0], ppl[1]);
    int rc = kvqt_run_cli(kvqt_, "generate -m " TINY " -p 'The quick' -n 2 -t 1 --window 1000000 --quiet", err, sizeof err);
    CHECKF(rc == 0, "exit %d: %s", rc, err);
    double peak = children_peak_mib();
    CHECKF(peak < 512.0, "a child peaked at %.0f MiB", peak);
}

/* ---------------------------------------------------------------- sampler */

typedef struct prob_ref {
    double p;
    int32_t id;
} prob_ref;

static int by_ref_desc(const void *a, const void *b) {
    const prob_ref *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

TEST(badinput_sampler_filters_and_penalty) {
    kvq_model *m;
    REQUIRE_OK(kvq_model_load(TINY, &m, NULL, 0));
    kvq_model_info info;
    kvq_model_get_info(m, &info);
    kvq_context_params p;
    kvq_context_params_init(&p);
    p.n_ctx = 16;
    p.n_threads = 1;
    p.seed = 11;
    kvq_context *a = NULL, *b = NULL;
    REQUIRE_OK(kvq_context_create(m, &p, &a));
    REQUIRE_OK(kvq_context_create(m, &p, &b));
    const uint32_t nv = info.n_vocab;
    float *logits = malloc(nv * sizeof *logits);
    REQUIRE(logits);
    for (uint32_t i = 0; i < nv; i++) logits[i] = (float)((i * 37u) % 101u) / 25.0f; /* many near ties */
    logits[5] = 9.0f;
    logits[9] = 8.5f;
    logits[3] = 8.0f;
    int32_t t1, t2;
    kvq_sampler_params sp;
    REQUIRE_OK(kvq_sampler_params_init(&sp));
    /* defaults: greedy */
    CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
    CHECK(t1 == 5);
    /* the old call and the new one with its settings draw the same tokens */
    sp.temperature = 1.0f;
    sp.top_p = 0.9f;
    for (int i = 0; i < 50; i++) {
        CHECK_OK(kvq_sample(a, logits, 1.0f, 0.9f, &t1));
        CHECK_OK(kvq_sample_ext(b, logits, &sp, &t2));
        CHECK(t1 == t2);
    }
    /* top_k = 2: only the two best ever come out, and both do */
    sp.top_p = 1.0f;
    sp.top_k = 2;
    int seen5 = 0, seen9 = 0, other = 0;
    for (int i = 0; i < 200; i++) {
        CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
        seen5 += t1 == 5;
        seen9 += t1 == 9;
        other += t1 != 5 && t1 != 9;
    }
    CHECKF(other == 0 && seen5 > 0 && seen9 > 0, "top_k 2: %d x 5, %d x 9, %d others", seen5, seen9, other);
    /* min_p: tokens below min_p x p(best) never come out; exp(-0.5) = 0.61 and exp(-1) = 0.37
     * of the best's probability: min_p 0.5 keeps 5 and 9, never 3 */
    sp.top_k = 0;
    sp.min_p = 0.5f;
    other = 0;
    for (int i = 0; i < 200; i++) {
        CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
        other += t1 != 5 && t1 != 9;
    }
    CHECK(other == 0);
    /* min_p alone draws by the kept tokens' probabilities: weights 1, e^-0.5, e^-1 for
     * tokens 5, 9, 3 (everything else is below 0.3 of the best) */
    sp.min_p = 0.3f;
    int count[3] = {0, 0, 0};
    other = 0;
    for (int i = 0; i < 4000; i++) {
        CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
        if (t1 == 5) count[0]++;
        else if (t1 == 9) count[1]++;
        else if (t1 == 3) count[2]++;
        else other++;
    }
    const double z = 1.0 + exp(-0.5) + exp(-1.0);
    CHECK(other == 0);
    CHECKF(fabs(count[0] / 4000.0 - 1.0 / z) < 0.03 && fabs(count[2] / 4000.0 - exp(-1.0) / z) < 0.03,
           "min_p draws %d %d %d, want shares %.3f %.3f %.3f", count[0], count[1], count[2], 1.0 / z,
           exp(-0.5) / z, exp(-1.0) / z);
    /* a larger top_k keeps exactly the k most likely (ties by lower id), as a full sort does */
    uint64_t s = 99;
    for (uint32_t i = 0; i < nv; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        logits[i] = (float)((s >> 40) % 64) / 8.0f; /* many exact ties */
    }
    float kth;
    {
        float *sorted = malloc(nv * sizeof *sorted);
        REQUIRE(sorted);
        memcpy(sorted, logits, nv * sizeof *sorted);
        for (uint32_t i = 0; i < 50; i++) /* partial selection sort: the 50th largest */
            for (uint32_t j = i + 1; j < nv; j++)
                if (sorted[j] > sorted[i]) {
                    float t = sorted[i];
                    sorted[i] = sorted[j];
                    sorted[j] = t;
                }
        kth = sorted[49];
        free(sorted);
    }
    uint32_t above = 0;
    for (uint32_t i = 0; i < nv; i++) above += logits[i] > kth;
    kvq_sampler_params_init(&sp);
    sp.temperature = 100.0f; /* nearly uniform over the kept set */
    sp.top_k = 50;
    int below = 0, tie_ok = 1;
    for (int i = 0; i < 3000; i++) {
        CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
        below += logits[t1] < kth;
        if (logits[t1] == kth) { /* among the tied, only the lowest ids make the cut */
            uint32_t rank = above;
            for (int32_t j = 0; j < t1; j++) rank += logits[j] == kth;
            tie_ok &= rank < 50;
        }
    }
    CHECK(below == 0 && tie_ok);
    /* top_p: the draws are exactly the nucleus of a full sort (by probability, then id) */
    for (uint32_t i = 0; i < nv; i++) logits[i] = logits[i] * 0.8f; /* peaks 0..7.9 in steps of 0.1 */
    {
        prob_ref *ref = malloc(nv * sizeof *ref);
        REQUIRE(ref);
        double z2 = 0;
        for (uint32_t i = 0; i < nv; i++) {
            ref[i].p = exp((double)logits[i]);
            ref[i].id = (int32_t)i;
            z2 += ref[i].p;
        }
        qsort(ref, nv, sizeof *ref, by_ref_desc);
        uint32_t nucleus = 0;
        for (double acc = 0; nucleus < nv && acc < 0.3;) acc += ref[nucleus++].p / z2;
        char *in = calloc(nv, 1), *drawn = calloc(nv, 1);
        REQUIRE(in && drawn);
        for (uint32_t i = 0; i < nucleus; i++) in[ref[i].id] = 1;
        kvq_sampler_params_init(&sp);
        sp.temperature = 1.0f;
        sp.top_p = 0.3f;
        int outside = 0;
        uint32_t distinct = 0;
        for (int i = 0; i < 4000; i++) {
            CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
            outside += !in[t1];
            distinct += !drawn[t1];
            drawn[t1] = 1;
        }
        CHECKF(nucleus >= 2 && nucleus <= 200, "nucleus of %u tokens: not a test of the cut", nucleus);
        CHECKF(outside == 0 && distinct == nucleus, "nucleus %u: %u drawn, %d outside",
               nucleus, distinct, outside);
        free(in);
        free(drawn);
        free(ref);
    }
    logits[5] = 9.0f;
    logits[9] = 8.5f;
    logits[3] = 8.0f;
    for (uint32_t i = 0; i < nv; i++)
        if (i != 5 && i != 9 && i != 3) logits[i] = (float)((i * 37u) % 101u) / 25.0f;
    /* the repeat penalty: greedy picks the best token not penalized (9.0/2 < 8.5) */
    int32_t recent[3] = {5, 5, 77};
    kvq_sampler_params_init(&sp);
    sp.repeat_penalty = 2.0f;
    sp.recent = recent;
    sp.n_recent = 3;
    CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
    CHECK(t1 == 9);
    /* a penalized token counts once, however often it recurs: 9/1.05 > 8.5 > 9/1.05^2 */
    sp.repeat_penalty = 1.05f;
    CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
    CHECK(t1 == 5);
    /* a negative logit is multiplied, pushing it further down */
    for (uint32_t i = 0; i < nv; i++) logits[i] = -1.0f - (float)i / (float)nv;
    recent[0] = 0;
    sp.n_recent = 1;
    sp.repeat_penalty = 1.5f;
    CHECK_OK(kvq_sample_ext(a, logits, &sp, &t1));
    CHECK(t1 == 1);
    /* bad settings */
    kvq_sampler_params bad = sp;
    bad.temperature = NAN;
    CHECK_STATUS(kvq_sample_ext(a, logits, &bad, &t1), KVQ_ERR_INVALID_ARG);
    bad = sp;
    bad.min_p = 1.5f;
    CHECK_STATUS(kvq_sample_ext(a, logits, &bad, &t1), KVQ_ERR_INVALID_ARG);
    bad = sp;
    bad.repeat_penalty = 0.0f;
    CHECK_STATUS(kvq_sample_ext(a, logits, &bad, &t1), KVQ_ERR_INVALID_ARG);
    bad = sp;
    recent[0] = (int32_t)nv;
    CHECK_STATUS(kvq_sample_ext(a, logits, &bad, &t1), KVQ_ERR_INVALID_ARG);
    bad.recent = NULL;
    CHECK_STATUS(kvq_sample_ext(a, logits, &bad, &t1), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_sample_ext(a, logits, NULL, &t1), KVQ_ERR_INVALID_ARG);
    free(logits);
    kvq_context_free(a);
    kvq_context_free(b);
    kvq_model_free(m);
}

/* ------------------------------------------------------- aliases and --json */

static int python_json_ok(const char *path) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "python3 -c 'import json,sys; json.load(open(sys.argv[1]))' %s 2>/dev/null", path);
    return system(cmd) == 0;
}

TEST(badinput_cli_aliases_and_json) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char args[2048], err[4096], text[600], out_path[600];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    snprintf(out_path, sizeof out_path, "%s/out.txt", dir);
    REQUIRE(kvqt_write_fox_text(text));
    int have_python = system("python3 -c 'import json' > /dev/null 2>&1") == 0;
    /* llama.cpp's names give what ours give */
    char a_text[4096], b_text[4096];
    int rc = kvqt_run_cli(kvqt_, "generate --model " TINY " --prompt 'The quick' --tokens 6 --ctx 64 --threads 1 --seed 4 "
                            "--temp 0.9 --cache-k q8_0 --cache-v q4_0 --quiet", err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    snprintf(a_text, sizeof a_text, "%s", cli_stdout(kvqt_));
    rc = kvqt_run_cli(kvqt_, "generate -m " TINY " -p 'The quick' -n 6 -c 64 -t 1 -s 4 --temp 0.9 -ctk q8_0 -ctv q4_0 --quiet",
                 err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    snprintf(b_text, sizeof b_text, "%s", cli_stdout(kvqt_));
    CHECKF(strcmp(a_text, b_text) == 0 && a_text[0], "'%s' vs '%s'", a_text, b_text);
    /* generate --json (prompt from a file, -f): one object; quote, backslash, newline and
     * tab of the prompt escaped */
    char prompt_path[600];
    snprintf(prompt_path, sizeof prompt_path, "%s/prompt.txt", dir);
    FILE *pf = fopen(prompt_path, "w");
    REQUIRE(pf);
    fputs("say \"hi\"\\\nx\t", pf);
    fclose(pf);
    snprintf(args, sizeof args, "generate -m " TINY " -f %s -n 5 -t 1 --json", prompt_path);
    rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    const char *js = cli_stdout(kvqt_);
    CHECKF(js[0] == '{' && strstr(js, "}\n") && strstr(js, "}\n")[2] == 0, "not one object: %s", js);
    CHECKF(strstr(js, "\"prompt\": \"say \\\"hi\\\"\\\\\\nx\\t\"") != NULL, "prompt not escaped: %s", js);
    CHECKF(strstr(js, "\"generated_tokens\": 5") || strstr(js, "\"stopped_at_eos\": true"), "%s", js);
    CHECK(strstr(js, "\"kv_code_bytes\": ") && strstr(js, "\"text\": \""));
    if (have_python) CHECKF(python_json_ok(out_path), "python cannot parse: %s", js);
    /* perplexity: -ctk/-ctv is the config K+V; --json has its ppl */
    snprintf(args, sizeof args, "perplexity -m " TINY " -f %s -c 64 --chunks 2 -t 1 -ctk q8_0 -ctv q4_0 --json", text);
    rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    js = cli_stdout(kvqt_);
    double ppl_json = 0, ppl_table = -1;
    const char *at = strstr(js, "\"ppl\": ");
    CHECKF(at && sscanf(at + 7, "%lf", &ppl_json) == 1, "%s", js);
    CHECK(strstr(js, "\"config\": \"q8_0+q4_0\"") != NULL);
    if (have_python) CHECKF(python_json_ok(out_path), "python cannot parse: %s", js);
    snprintf(args, sizeof args, "perplexity -m " TINY " -f %s --ctx 64 --chunks 2 --threads 1 --configs q8_0+q4_0", text);
    rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    at = strstr(cli_stdout(kvqt_), "\nq8_0+q4_0");
    CHECK(at && sscanf(at + 1, "q8_0+q4_0 %lf", &ppl_table) == 1);
    CHECKF(fabs(ppl_json - ppl_table) < 1e-3 * ppl_table, "json %g, table %g", ppl_json, ppl_table);
    /* with --kl the KL columns come along */
    snprintf(args, sizeof args, "perplexity -m " TINY " -f %s -c 64 --chunks 1 -t 1 --configs fp16,q4_0 --kl --json", text);
    rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    js = cli_stdout(kvqt_);
    CHECKF(strstr(js, "\"kl\": 0,") && strstr(js, "\"top1_same_percent\": ") && strstr(js, "\"reference\": \"fp16\""),
           "%s", js);
    if (have_python) CHECKF(python_json_ok(out_path), "python cannot parse: %s", js);
    /* -ctk with --configs: which one is meant? refused */
    snprintf(args, sizeof args, "perplexity -m " TINY " -f %s -ctk q8_0 --configs fp16", text);
    CHECK(kvqt_run_cli(kvqt_, args, err, sizeof err) == 1 && one_line(err));
    /* every --help names the aliases */
    CHECK(kvqt_run_cli(kvqt_, "generate --help", NULL, 0) == 0);
    js = cli_stdout(kvqt_);
    CHECK(strstr(js, "-ctk") && strstr(js, "--top-k") && strstr(js, "--min-p") && strstr(js, "--repeat-penalty") &&
          strstr(js, "--json") && strstr(js, "-c, --ctx") && strstr(js, "-s, --seed"));
    CHECK(kvqt_run_cli(kvqt_, "perplexity --help", NULL, 0) == 0);
    js = cli_stdout(kvqt_);
    CHECK(strstr(js, "-ctk") && strstr(js, "--json") && strstr(js, "-c, --ctx") && strstr(js, "-t, --threads"));
}

/* index search --json on a small flat index */
static int write_fvecs(const char *path, const float *x, size_t n, uint32_t d) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        int32_t dd = (int32_t)d;
        ok = fwrite(&dd, 4, 1, f) == 1 && fwrite(x + i * d, 4, d, f) == d;
    }
    return fclose(f) == 0 && ok;
}

TEST(badinput_cli_index_search_json) {
    const char *dir = kvqt_tmpdir(kvqt_);
    enum { N = 300, D = 16 };
    static float x[N * D];
    uint64_t s = 12345;
    for (size_t i = 0; i < N * D; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((s >> 33) % 1000) / 1000.0f;
    }
    char base[600], ix[600], args[2048], err[4096], out_path[600];
    snprintf(base, sizeof base, "%s/base.fvecs", dir);
    snprintf(ix, sizeof ix, "%s/ix.kvqi", dir);
    snprintf(out_path, sizeof out_path, "%s/out.txt", dir);
    REQUIRE(write_fvecs(base, x, N, D));
    snprintf(args, sizeof args, "index build -i %s -o %s --nlist 1", base, ix);
    REQUIRE(kvqt_run_cli(kvqt_, args, err, sizeof err) == 0);
    snprintf(args, sizeof args, "index search -x %s -q %s -k 3 --nprobe 1,2 --json", ix, base);
    int rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    const char *js = cli_stdout(kvqt_);
    CHECKF(js[0] == '{' && strstr(js, "\"n_queries\": 300") && strstr(js, "\"nprobe\": 1") &&
               strstr(js, "\"nprobe\": 2") && strstr(js, "\"recall\": null") && !strstr(js, "recall@k"),
           "%s", js);
    if (system("python3 -c 'import json' > /dev/null 2>&1") == 0) CHECKF(python_json_ok(out_path), "%s", js);
}

/* ----------------------------------------------------- crash-safe writes */

/* A temp file as a killed writer leaves it: its name, its bytes, no lock held. */
static int make_stale_temp(const char *target, const char *suffix) {
    char path[700];
    snprintf(path, sizeof path, "%s.tmp.%s", target, suffix);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fputs("half a file", f);
    return fclose(f) == 0;
}

TEST(badinput_stale_temps_removed_live_ones_kept) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char target[600], live[700], other[700];
    snprintf(target, sizeof target, "%s/keys.safetensors", dir);
    REQUIRE(make_stale_temp(target, "AbC123") && make_stale_temp(target, "zzzzzz"));
    /* a temp some live writer holds locked (here: this process) stays */
    snprintf(live, sizeof live, "%s.tmp.LIVE01", target);
    int fd = open(live, O_CREAT | O_WRONLY, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(flock(fd, LOCK_EX) == 0);
    /* names that only look alike are not ours to remove */
    snprintf(other, sizeof other, "%s/keys.safetensors.tmp.toolong7", dir);
    FILE *f = fopen(other, "w");
    REQUIRE(f);
    fclose(f);
    float rows[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    REQUIRE_OK(kvq_tensor_write_f32(target, "keys", rows, 2, 4));
    CHECK(count_temps(dir) == 2); /* the live one and the look-alike */
    CHECK(file_exists(live) && file_exists(other));
    close(fd);
    REQUIRE_OK(kvq_tensor_write_f32(target, "keys", rows, 2, 4));
    CHECK(!file_exists(live) && file_exists(other));
    float *back;
    size_t r, c;
    REQUIRE_OK(kvq_tensor_read_f32(target, NULL, &back, &r, &c, NULL, 0));
    CHECK(r == 2 && c == 4 && back[7] == 8.0f);
    kvq_buffer_free(back);
}

/* Start `kvq ARGS` (split on spaces) with output to /dev/null; its pid. */
static pid_t spawn_cli(const char *args) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", args);
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)kvqt_cli_path();
    for (char *save = NULL, *t = strtok_r(buf, " ", &save); t && n < 63; t = strtok_r(NULL, " ", &save)) argv[n++] = t;
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* kill -9 during `kvq calibrate --per-layer -o`: whatever moment the kill lands, the next
 * run leaves no temp file behind, and perplexity accepts the set exactly when it is one
 * run's whole set under that run's manifest - a mix is refused with a message. */
TEST(badinput_kill9_calibrate_per_layer) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char text[600], args[4096], err[4096], path[700], a[700], b[700];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    REQUIRE(kvqt_write_fox_text(text));
    char olddir[600], newdir[600];
    snprintf(olddir, sizeof olddir, "%s/old", dir);
    snprintf(newdir, sizeof newdir, "%s/new", dir);
    REQUIRE(mkdir(olddir, 0755) == 0 && mkdir(newdir, 0755) == 0);
    /* the two complete sets, seed 1 and seed 2, for reference */
    const char *cal = "calibrate -m " TINY " -f %s --method comm_vq --bits 4 --tokens 256 -t 1 --per-layer -o %s/cv.safetensors --seed %d";
    snprintf(args, sizeof args, cal, text, olddir, 1);
    REQUIRE(kvqt_run_cli(kvqt_, args, err, sizeof err) == 0);
    snprintf(args, sizeof args, cal, text, newdir, 2);
    REQUIRE(kvqt_run_cli(kvqt_, args, err, sizeof err) == 0);
    snprintf(path, sizeof path, "%s/cv.layers.manifest", newdir);
    REQUIRE(file_exists(path));
    const char *names[3] = {"cv.layer00.safetensors", "cv.layer01.safetensors", "cv.layers.manifest"};
    int refused = 0, accepted = 0;
    for (int round = 0; round < 8; round++) {
        /* the working set starts as the old one */
        for (int k = 0; k < 3; k++) {
            snprintf(args, sizeof args, "cp %s/%s %s/%s", olddir, names[k], dir, names[k]);
            REQUIRE(system(args) == 0);
        }
        snprintf(args, sizeof args, "calibrate -m " TINY " -f %s --method comm_vq --bits 4 --tokens 256 -t 1 --per-layer "
                 "-o %s/cv.safetensors --seed 2", text, dir);
        pid_t pid = spawn_cli(args);
        REQUIRE(pid > 0);
        struct timespec ts = {0, (long)round * 15 * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        /* which files are the new run's? */
        int is_new[3];
        for (int k = 0; k < 3; k++) {
            snprintf(a, sizeof a, "%s/%s", dir, names[k]);
            snprintf(b, sizeof b, "%s/%s", newdir, names[k]);
            is_new[k] = same_file(a, b);
            snprintf(b, sizeof b, "%s/%s", olddir, names[k]);
            CHECKF(is_new[k] || same_file(a, b), "round %d: %s is neither run's", round, names[k]);
        }
        int whole = is_new[0] == is_new[2] && is_new[1] == is_new[2];
        snprintf(args, sizeof args, "perplexity -m " TINY " -f %s --ctx 64 --chunks 1 -t 1 "
                 "--configs 'comm_vq:bits=4,artifact=%s/cv.layer%%02d.safetensors+fp16'", text, dir);
        int rc = kvqt_run_cli(kvqt_, args, err, sizeof err);
        CHECKF((rc == 0) == whole, "round %d: layers new %d %d, manifest new %d: perplexity exit %d: %s", round,
               is_new[0], is_new[1], is_new[2], rc, err);
        if (!whole) CHECKF(strstr(err, "mixed or partial") != NULL, "round %d: %s", round, err);
        refused += !whole;
        accepted += whole;
        /* the next run of the same -o cleans what the killed one left */
        snprintf(args, sizeof args, cal, text, dir, 2);
        CHECK(kvqt_run_cli(kvqt_, args, err, sizeof err) == 0);
        CHECKF(count_temps(dir) == 0, "round %d: %d temp files left", round, count_temps(dir));
    }
    /* the kill may land anywhere; make sure a mixed set is met at least once */
    for (int k = 0; k < 3; k++) {
        snprintf(args, sizeof args, "cp %s/%s %s/%s", olddir, names[k], dir, names[k]);
        REQUIRE(system(args) == 0);
    }
    snprintf(args, sizeof args, "cp %s/cv.layer01.safetensors %s/", newdir, dir);
    REQUIRE(system(args) == 0);
    snprintf(args, sizeof args, "perplexity -m " TINY " -f %s --ctx 64 --chunks 1 -t 1 "
             "--configs 'comm_vq:bits=4,artifact=%s/cv.layer%%02d.safetensors+fp16'", text, dir);
    CHECK(kvqt_run_cli(kvqt_, args, err, sizeof err) == 1);
    CHECKF(strstr(err, "layer 1") && strstr(err, "mixed or partial"), "%s", err);
    snprintf(args, sizeof args, "generate -m " TINY " -p hi -n 1 --cache-k 'comm_vq:bits=4,artifact=%s/cv.layer%%02d.safetensors'", dir);
    CHECK(kvqt_run_cli(kvqt_, args, err, sizeof err) == 1);
    CHECKF(strstr(err, "mixed or partial") && one_line(err), "%s", err);
    /* also when the artifact sits in a whole cache spec, before its @options */
    snprintf(args, sizeof args, "generate -m " TINY " -p hi -n 1 --cache-k "
             "'comm_vq:bits=4,artifact=%s/cv.layer%%02d.safetensors+fp16@window=4'", dir);
    CHECK(kvqt_run_cli(kvqt_, args, err, sizeof err) == 1);
    CHECKF(strstr(err, "mixed or partial") && one_line(err), "%s", err);
    /* a stale temp of a layer file and of the manifest, as a kill mid-write leaves them */
    snprintf(path, sizeof path, "%s/cv.layer01.safetensors", dir);
    REQUIRE(make_stale_temp(path, "Q1w2E3"));
    snprintf(path, sizeof path, "%s/cv.layers.manifest", dir);
    REQUIRE(make_stale_temp(path, "r4T5y6"));
    snprintf(args, sizeof args, cal, text, dir, 2);
    CHECK(kvqt_run_cli(kvqt_, args, err, sizeof err) == 0);
    CHECK(count_temps(dir) == 0);
    /* the library call refuses too, naming the layer */
    char l0[700], l1[700], man[700], msg[512];
    snprintf(l0, sizeof l0, "%s/cv.layer00.safetensors", dir);
    snprintf(l1, sizeof l1, "%s/cv.layer01.safetensors", olddir);
    snprintf(man, sizeof man, "%s/cv.layers.manifest", dir);
    const char *paths[2] = {l0, l1};
    CHECK_STATUS(kvq_layer_set_check(man, paths, 2, msg, sizeof msg), KVQ_ERR_MISMATCH);
    CHECK(strstr(msg, "layer 1") != NULL);
    snprintf(l1, sizeof l1, "%s/cv.layer01.safetensors", dir);
    CHECK_OK(kvq_layer_set_check(man, paths, 2, msg, sizeof msg));
    CHECK_STATUS(kvq_layer_set_check(man, paths, 1, msg, sizeof msg), KVQ_ERR_MISMATCH); /* layer count */
    printf("    kill -9 rounds: %d whole sets accepted, %d mixed sets refused\n", accepted, refused);
    fflush(stdout);
}

/* The manifest reader takes exactly what seal writes: numbers in decimal digits, the
 * checksum in 16 lowercase hex digits, one line per layer and nothing after. */
TEST(badinput_layer_set_manifest_strict) {
    const char *dir = kvqt_tmpdir(kvqt_);
    char l0[600], l1[600], man[600], msg[512];
    snprintf(l0, sizeof l0, "%s/s.layer00.safetensors", dir);
    snprintf(l1, sizeof l1, "%s/s.layer01.safetensors", dir);
    snprintf(man, sizeof man, "%s/s.layers.manifest", dir);
    FILE *f = fopen(l0, "wb");
    REQUIRE(f);
    fputs("a", f);
    fclose(f);
    REQUIRE((f = fopen(l1, "wb")));
    fputs("bb", f);
    fclose(f);
    const char *paths[2] = {l0, l1};
    REQUIRE_OK(kvq_layer_set_seal(man, paths, 2, msg, sizeof msg));
    char *good = NULL;
    size_t n = 0;
    REQUIRE(read_file(man, &good, &n));
    good = realloc(good, n + 1);
    REQUIRE(good);
    good[n] = 0;
    CHECK_OK(kvq_layer_set_check(man, paths, 2, msg, sizeof msg));
    CHECK(count_temps(dir) == 0);
    /* FNV-1a 64 of "a" and "bb" (the function's published test values) */
    CHECKF(strstr(good, "0 1 af63dc4c8601ec8c ") && strstr(good, "1 2 08a63607b54dd525 "), "%s", good);
    const char *edits[][2] = {
        {"layers 2", "layers -4294967294"}, {"layers 2", "layers 02x"},  {"layers 2", "layers  2"},
        {"af63dc4c8601ec8c", "AF63DC4C8601EC8C"}, {"af63dc4c8601ec8c", "af63dc4c8601ec8"},
        {"0 1 ", "0 +1 "}, {"1 2 ", "1 3 "}, {"kvq.layer_set 1", "kvq.layer_set 2"},
    };
    for (size_t e = 0; e < sizeof edits / sizeof edits[0] + 3; e++) {
        char text[1024];
        if (e < sizeof edits / sizeof edits[0]) {
            const char *at = strstr(good, edits[e][0]);
            REQUIRE(at);
            snprintf(text, sizeof text, "%.*s%s%s", (int)(at - good), good, edits[e][1], at + strlen(edits[e][0]));
        } else if (e == sizeof edits / sizeof edits[0]) {
            snprintf(text, sizeof text, "%sextra\n", good); /* a line too many */
        } else if (e == sizeof edits / sizeof edits[0] + 1) {
            snprintf(text, sizeof text, "%.*s", (int)n - 1, good); /* no final newline */
        } else {
            snprintf(text, sizeof text, "%.*s", (int)n / 2, good); /* cut short */
        }
        REQUIRE((f = fopen(man, "w")));
        fputs(text, f);
        fclose(f);
        msg[0] = 0;
        CHECKF(kvq_layer_set_check(man, paths, 2, msg, sizeof msg) != KVQ_OK, "accepted: %s", text);
        CHECK(msg[0] != 0);
    }
    free(good);
    /* no manifest, or a directory in its place */
    unlink(man);
    CHECK_STATUS(kvq_layer_set_check(man, paths, 2, msg, sizeof msg), KVQ_ERR_IO);
    REQUIRE(mkdir(man, 0755) == 0);
    CHECK_STATUS(kvq_layer_set_check(man, paths, 2, msg, sizeof msg), KVQ_ERR_IO);
    CHECK_STATUS(kvq_layer_set_check(man, paths, 0, msg, sizeof msg), KVQ_ERR_INVALID_ARG);
}
