/* cmd_index.c - `kvq index build` and `kvq index search`: a RaBitQ IVF index over
 * vectors read from .fvecs, .bvecs or .npy (float32, 2-D, C order), with recall@k
 * against an .ivecs ground truth and queries per second. Public API only. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "args.h"
#include "cli.h"
#include "json_out.h"

/* ------------------------------------------------------------ vector files */

static const char *ext_of(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : "";
}

/* A path the commands can read as one file: it exists and is a regular file (a
 * directory "opens" on Linux and has a meaningless size). */
static int regular_file(const char *path, char *err, size_t err_n) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        snprintf(err, err_n, "cannot open %s: %s", path, strerror(errno));
        return 0;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, err_n, "%s is %s, not a file", path,
                 S_ISDIR(sb.st_mode) ? "a directory" : "not a regular file");
        return 0;
    }
    return 1;
}

static int read_all(const char *path, uint8_t **buf, size_t *size, char *err, size_t err_n) {
    *buf = NULL;
    if (!regular_file(path, err, err_n)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_n, "cannot open %s: %s", path, strerror(errno));
        return 0;
    }
    long s = -1;
    if (fseek(f, 0, SEEK_END) == 0) s = ftell(f);
    if (s < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        snprintf(err, err_n, "cannot size %s", path);
        return 0;
    }
    *buf = malloc(s ? (size_t)s : 1);
    *size = (size_t)s;
    int ok = *buf && fread(*buf, 1, (size_t)s, f) == (size_t)s;
    fclose(f);
    if (!ok) {
        snprintf(err, err_n, "cannot read %s", path);
        free(*buf);
        *buf = NULL;
    }
    return ok;
}

/* .fvecs / .ivecs / .bvecs: every row is int32 dim, then dim elements of elem bytes. */
static int parse_vecs(const uint8_t *b, size_t size, size_t elem, size_t *n, uint32_t *dim,
                      char *err, size_t err_n) {
    int32_t d0;
    if (size < 4) {
        snprintf(err, err_n, "file too short for a vecs header");
        return 0;
    }
    memcpy(&d0, b, 4);
    if (d0 <= 0 || d0 > (1 << 20)) {
        snprintf(err, err_n, "bad vecs dimension %d", d0);
        return 0;
    }
    size_t row = 4 + (size_t)d0 * elem;
    if (size % row) {
        snprintf(err, err_n, "file size %zu is not a whole number of %zu-byte rows", size, row);
        return 0;
    }
    for (size_t off = 0; off < size; off += row) {
        int32_t d;
        memcpy(&d, b + off, 4);
        if (d != d0) {
            snprintf(err, err_n, "row %zu has dimension %d, row 0 has %d", off / row, d, d0);
            return 0;
        }
    }
    *n = size / row;
    *dim = (uint32_t)d0;
    return 1;
}

/* numpy .npy, version 1-3: '<f4', fortran_order False, shape (n, d). */
static int parse_npy(const uint8_t *b, size_t size, size_t *n, uint32_t *dim, size_t *data_off,
                     char *err, size_t err_n) {
    if (size < 10 || memcmp(b, "\x93NUMPY", 6) != 0) {
        snprintf(err, err_n, "not a .npy file");
        return 0;
    }
    unsigned major = b[6];
    size_t hlen, hoff;
    if (major == 1) {
        hlen = (size_t)b[8] | ((size_t)b[9] << 8);
        hoff = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) return snprintf(err, err_n, "truncated .npy header"), 0;
        hlen = (size_t)b[8] | ((size_t)b[9] << 8) | ((size_t)b[10] << 16) | ((size_t)b[11] << 24);
        hoff = 12;
    } else {
        snprintf(err, err_n, "unsupported .npy version %u", major);
        return 0;
    }
    if (hlen > size - hoff || hlen > 65536) {
        snprintf(err, err_n, "truncated .npy header");
        return 0;
    }
    char h[65537];
    memcpy(h, b + hoff, hlen);
    h[hlen] = 0;
    if (!strstr(h, "'descr': '<f4'") && !strstr(h, "'descr':'<f4'")) {
        snprintf(err, err_n, ".npy dtype must be little-endian float32 ('<f4')");
        return 0;
    }
    if (!strstr(h, "'fortran_order': False") && !strstr(h, "'fortran_order':False")) {
        snprintf(err, err_n, ".npy must be C order");
        return 0;
    }
    const char *s = strstr(h, "'shape':");
    if (!s || !(s = strchr(s, '('))) {
        snprintf(err, err_n, ".npy header has no shape");
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long rows = strtoull(s + 1, &end, 10);
    while (*end == ' ') end++;
    if (errno || *end != ',') {
        snprintf(err, err_n, ".npy must be 2-D");
        return 0;
    }
    unsigned long long cols = strtoull(end + 1, &end, 10);
    while (*end == ' ') end++;
    if (errno || *end != ')' || cols == 0 || cols > (1u << 20) || rows == 0) {
        snprintf(err, err_n, ".npy must be 2-D (n, d) with n, d > 0");
        return 0;
    }
    size_t off = hoff + hlen;
    if (rows > (size - off) / 4 / cols || rows * cols * 4 != size - off) {
        snprintf(err, err_n, ".npy data size does not match shape (%llu, %llu)", rows, cols);
        return 0;
    }
    *n = (size_t)rows;
    *dim = (uint32_t)cols;
    *data_off = off;
    return 1;
}

/* Float vectors from .fvecs, .bvecs (bytes widened) or .npy. */
static float *load_vectors(const char *path, size_t *n, uint32_t *dim, char *err, size_t err_n) {
    uint8_t *b;
    size_t size;
    if (!read_all(path, &b, &size, err, err_n)) return NULL;
    const char *e = ext_of(path);
    float *out = NULL;
    if (!strcmp(e, "npy")) {
        size_t off;
        if (parse_npy(b, size, n, dim, &off, err, err_n) && (out = malloc(size - off)))
            memcpy(out, b + off, size - off);
    } else if (!strcmp(e, "fvecs") || !strcmp(e, "bvecs")) {
        size_t elem = e[0] == 'f' ? 4 : 1;
        if (parse_vecs(b, size, elem, n, dim, err, err_n) &&
            (out = malloc(*n * (size_t)*dim * sizeof(float)))) {
            size_t row = 4 + (size_t)*dim * elem;
            for (size_t i = 0; i < *n; i++) {
                const uint8_t *r = b + i * row + 4;
                if (elem == 4) memcpy(out + i * *dim, r, (size_t)*dim * 4);
                else
                    for (uint32_t j = 0; j < *dim; j++) out[i * *dim + j] = (float)r[j];
            }
        }
    } else {
        snprintf(err, err_n, "%s: unknown vector format (want .fvecs, .bvecs or .npy)", path);
    }
    if (!out && !err[0]) snprintf(err, err_n, "out of memory");
    for (size_t i = 0; out && i < *n * (size_t)*dim; i++)
        if (!isfinite(out[i])) {
            snprintf(err, err_n, "%s: row %zu holds a NaN or infinity", path, i / *dim);
            free(out);
            out = NULL;
        }
    free(b);
    return out;
}

/* Why the library would refuse row x (NULL if it would not). */
static const char *row_problem(const float *x, uint32_t dim, kvq_metric metric) {
    double n2 = 0.0;
    for (uint32_t j = 0; j < dim; j++) n2 += (double)x[j] * x[j];
    if (!(n2 <= 1e36)) return "has a squared norm beyond the float range";
    if (metric == KVQ_METRIC_COSINE && n2 == 0.0) return "is all zeros: cosine cannot normalize it";
    return NULL;
}

static int32_t *load_ivecs(const char *path, size_t *n, uint32_t *k, char *err, size_t err_n) {
    uint8_t *b;
    size_t size;
    if (!read_all(path, &b, &size, err, err_n)) return NULL;
    int32_t *out = NULL;
    if (parse_vecs(b, size, 4, n, k, err, err_n) && (out = malloc(*n * (size_t)*k * 4)))
        for (size_t i = 0; i < *n; i++)
            memcpy(out + i * *k, b + i * (4 + (size_t)*k * 4) + 4, (size_t)*k * 4);
    free(b);
    return out;
}

static int write_ivecs(const char *path, const int64_t *ids, size_t n, uint32_t k) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = 1;
    int32_t kk = (int32_t)k;
    for (size_t i = 0; i < n && ok; i++) {
        ok = fwrite(&kk, 4, 1, f) == 1;
        for (uint32_t j = 0; j < k && ok; j++) {
            int32_t v = (int32_t)ids[i * k + j];
            ok = fwrite(&v, 4, 1, f) == 1;
        }
    }
    return fclose(f) == 0 && ok;
}

/* ------------------------------------------------------------ arguments */

static int usage_build(FILE *f) {
    fprintf(f,
            "usage: kvq index build -i VECTORS -o INDEX [options]\n\n"
            "  -i FILE            base vectors: .fvecs, .bvecs or .npy (float32, 2-D, C order)\n"
            "  -o FILE            index file to write\n"
            "  --metric M         l2 (default), ip or cosine\n"
            "  --nlist N          IVF clusters (default: about 4 sqrt(n); 1 = flat)\n"
            "  --bits B           bits per coordinate of the code, 1..8 (default 1)\n"
            "  --split            1-bit pass first, then the b-bit code (VSAG's 1 + 7 at B=8)\n"
            "  --query-bits Q     4 (default, integer fast-scan) or 32 (float query)\n"
            "  --rotation R       fht (default) or dense\n"
            "  --pca D            keep D principal axes (default: none)\n"
            "  --reorder S        fp32 (default), fp16 or none: exact vectors for reranking\n"
            "  --seed S           seed of rotation, sampling and k-means\n"
            "  --train-iters N    k-means rounds, 1..100000 (default 12; stops early once\n"
            "                     no assignment changes)\n"
            "  --ip-assign A      ip/cosine: a vector joins its l2-nearest centroid (l2,\n"
            "                     default: balanced lists) or the largest <x, c> (ip)\n"
            "  --threads T        threads for k-means and encoding, 1..1024 (default 1; the\n"
            "                     index is the same for every T)\n");
    return f == stderr ? 1 : 0;
}

static int usage_search(FILE *f) {
    fprintf(f,
            "usage: kvq index search -x INDEX -q QUERIES [options]\n\n"
            "  -x FILE            index file\n"
            "  -q FILE            queries: .fvecs, .bvecs or .npy\n"
            "  -k K               neighbours per query, 1..100000 (default 10)\n"
            "  --nprobe N         clusters visited per query (default 1); a list runs\n"
            "                     the search once per value: --nprobe 4,8,16\n"
            "  --rerank N         at most N exact distances per query (default: as many as\n"
            "                     the error bound asks for)\n"
            "  --eps0 E           confidence of the bound (default 1.9; inf reranks all)\n"
            "  --threads T        worker threads, 1..1024 (default 1)\n"
            "  --repeat R         run each search R times, report the fastest (default 1)\n"
            "  --gt FILE          ground truth .ivecs: print recall@k\n"
            "  --allow-ids L      return only these ids (comma list or .ivecs)\n"
            "  --radius R         range search: every vector within distance R (squared L2;\n"
            "                     -<q,x> for ip/cosine); prints results per query\n"
            "  --mmap             serve the index from a read-only mapping of the file\n"
            "  -o FILE            write the result ids as .ivecs\n"
            "  --json             print one JSON object on stdout instead of the table: recall,\n"
            "                     queries/s and ms/query per --nprobe value (recall null without --gt)\n");
    return f == stderr ? 1 : 0;
}

static int cmd_build(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    kvq_index_config cfg;
    kvq_index_config_init(&cfg, 1);
    int nlist_set = 0;
    uint32_t threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage_build(stdout);
        if (!strcmp(a, "--split")) {
            cfg.split = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "kvq index build: %s needs a value\n", a);
            return 1;
        }
        i++;
        int ok = 1; /* -1: the value's checker has said what is wrong */
#define U32_IN(lo, hi, dst) ok = kvq_arg_u32("index build", a, v, lo, hi, dst) ? -1 : 1
        if (!strcmp(a, "-i")) in = v;
        else if (!strcmp(a, "-o")) out = v;
        else if (!strcmp(a, "--metric")) {
            if (!strcmp(v, "l2")) cfg.metric = KVQ_METRIC_L2;
            else if (!strcmp(v, "ip")) cfg.metric = KVQ_METRIC_IP;
            else if (!strcmp(v, "cosine")) cfg.metric = KVQ_METRIC_COSINE;
            else ok = 0;
        } else if (!strcmp(a, "--nlist")) {
            U32_IN(1, 1u << 24, &cfg.nlist);
            nlist_set = 1;
        } else if (!strcmp(a, "--bits")) U32_IN(1, 8, &cfg.bits);
        else if (!strcmp(a, "--query-bits")) U32_IN(4, 32, &cfg.query_bits);
        else if (!strcmp(a, "--rotation")) {
            if (!strcmp(v, "fht")) cfg.rotation = KVQ_ROTATION_FHT;
            else if (!strcmp(v, "dense")) cfg.rotation = KVQ_ROTATION_DENSE;
            else ok = 0;
        } else if (!strcmp(a, "--pca")) U32_IN(0, 65536, &cfg.pca_dim);
        else if (!strcmp(a, "--reorder")) {
            if (!strcmp(v, "fp32")) cfg.reorder = KVQ_REORDER_FP32;
            else if (!strcmp(v, "fp16")) cfg.reorder = KVQ_REORDER_FP16;
            else if (!strcmp(v, "none")) cfg.reorder = KVQ_REORDER_NONE;
            else ok = 0;
        } else if (!strcmp(a, "--seed")) {
            uint64_t seed;
            ok = kvq_arg_u64("index build", a, v, 0, UINT64_MAX, &seed) ? -1 : 1;
            cfg.seed = seed;
        } else if (!strcmp(a, "--train-iters")) U32_IN(1, 100000, &cfg.train_iters);
        else if (!strcmp(a, "--threads")) U32_IN(1, 1024, &threads);
        else if (!strcmp(a, "--ip-assign")) {
            if (!strcmp(v, "l2")) cfg.ip_assign = 0;
            else if (!strcmp(v, "ip")) cfg.ip_assign = 1;
            else ok = 0;
        }
        else {
            fprintf(stderr, "kvq index build: unknown option %s (see --help)\n", a);
            return 1;
        }
#undef U32_IN
        if (ok < 0) return 1;
        if (!ok) {
            fprintf(stderr, "kvq index build: bad value '%s' for %s\n", v, a);
            return 1;
        }
    }
    if (!in || !out) return usage_build(stderr);
    if (kvq_arg_output_file("index build", out)) return 1;
    char err[512] = "";
    size_t n;
    uint32_t dim;
    float *x = load_vectors(in, &n, &dim, err, sizeof err);
    if (!x) {
        fprintf(stderr, "kvq index build: %s\n", err);
        return 1;
    }
    cfg.dim = dim;
    if (!nlist_set) {
        double s = 4.0 * sqrt((double)n);
        cfg.nlist = s < 1.0 ? 1 : (uint32_t)s;
        if (cfg.nlist > n) cfg.nlist = (uint32_t)n;
    }
    if (nlist_set && (cfg.nlist == 0 || cfg.nlist > n)) {
        fprintf(stderr, "kvq index build: --nlist %u must be between 1 and the %zu vectors of %s\n",
                cfg.nlist, n, in);
        free(x);
        return 1;
    }
    for (size_t i = 0; i < n; i++) { /* what the library would refuse, said by row */
        const char *why = row_problem(x + i * dim, dim, cfg.metric);
        if (why) {
            fprintf(stderr, "kvq index build: %s: row %zu %s\n", in, i, why);
            free(x);
            return 1;
        }
    }
    kvq_index *ix = NULL;
    kvq_threadpool *pool = NULL;
    double t0 = kvq_cli_now_s();
    double c0 = (double)clock() / CLOCKS_PER_SEC;
    kvq_status st = kvq_index_create(&cfg, &ix);
    if (st == KVQ_OK && threads > 1 && (st = kvq_threadpool_create(threads, &pool)) == KVQ_OK)
        st = kvq_index_set_pool(ix, pool);
    if (st != KVQ_OK) {
        free(x);
        kvq_index_free(ix);
        return kvq_cli_fail("index build", "config", st);
    }
    if ((st = kvq_index_train(ix, x, n)) != KVQ_OK) {
        free(x);
        kvq_index_free(ix);
        kvq_threadpool_free(pool);
        return kvq_cli_fail("index build", "train", st);
    }
    double t1 = kvq_cli_now_s();
    st = kvq_index_add(ix, x, n, NULL);
    double t2 = kvq_cli_now_s(), cpu = (double)clock() / CLOCKS_PER_SEC - c0;
    free(x);
    kvq_index_set_pool(ix, NULL);
    kvq_threadpool_free(pool);
    if (st == KVQ_OK) st = kvq_index_save(ix, out);
    if (st != KVQ_OK) {
        kvq_index_free(ix);
        return kvq_cli_fail("index build", out, st);
    }
    uint64_t bytes = 0;
    kvq_index_size_bytes(ix, &bytes);
    printf("built %s: %zu vectors, dim %u, nlist %u, bits %u%s, query bits %u, %s\n", out, n, dim,
           cfg.nlist, cfg.bits, cfg.split ? " split" : "", cfg.query_bits,
           cfg.metric == KVQ_METRIC_L2 ? "l2" : (cfg.metric == KVQ_METRIC_IP ? "ip" : "cosine"));
    printf("train %.2f s, add %.2f s, total %.2f s; index %.1f MiB in memory (%llu bytes)\n",
           t1 - t0, t2 - t1, t2 - t0, (double)bytes / 1048576.0, (unsigned long long)bytes);
    uint64_t per = 0;
    kvq_index_code_bytes(ix, &per);
    printf("codes %llu bytes/vector (+ id 8, reorder %u); cpu %.2f s on %u thread%s\n",
           (unsigned long long)per,
           cfg.reorder == KVQ_REORDER_FP32 ? dim * 4 : (cfg.reorder == KVQ_REORDER_FP16 ? dim * 2 : 0),
           cpu, threads, threads > 1 ? "s" : "");
    kvq_index_free(ix);
    return 0;
}

static int64_t *parse_ids(const char *arg, size_t *n, char *err, size_t err_n);

static int cmd_search(int argc, char **argv) {
    const char *xpath = NULL, *qpath = NULL, *gtpath = NULL, *opath = NULL;
    uint32_t k = 10, nprobes[64] = {1}, n_nprobe = 1, threads = 1, repeat = 1;
    int json = 0;
    double recalls[64], seconds[64];
    kvq_index_search_params p;
    kvq_index_search_params_init(&p);
    int use_mmap = 0;
    const char *allow_arg = NULL;
    float radius = NAN;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage_search(stdout);
        if (!strcmp(a, "--mmap")) {
            use_mmap = 1;
            continue;
        }
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "kvq index search: %s needs a value\n", a);
            return 1;
        }
        i++;
        int ok = 1; /* -1: the value's checker has said what is wrong */
#define U32_IN(lo, hi, dst) ok = kvq_arg_u32("index search", a, v, lo, hi, dst) ? -1 : 1
        if (!strcmp(a, "-x")) xpath = v;
        else if (!strcmp(a, "-q")) qpath = v;
        else if (!strcmp(a, "--gt")) gtpath = v;
        else if (!strcmp(a, "-o")) opath = v;
        else if (!strcmp(a, "-k")) U32_IN(1, 100000, &k);
        else if (!strcmp(a, "--rerank")) U32_IN(0, UINT32_MAX, &p.rerank);
        else if (!strcmp(a, "--threads")) U32_IN(1, 1024, &threads);
        else if (!strcmp(a, "--repeat")) U32_IN(1, 10000, &repeat);
        else if (!strcmp(a, "--eps0")) {
            double e;
            ok = kvq_arg_double("index search", a, v, 0.0, INFINITY, &e) ? -1 : e > 0.0;
            p.eps0 = (float)e;
        } else if (!strcmp(a, "--nprobe")) {
            n_nprobe = 0;
            char buf[512];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *tok = strtok(buf, ","); tok && ok == 1; tok = strtok(NULL, ",")) {
                ok = n_nprobe < 64 ? (kvq_arg_u32("index search", a, tok, 1, 1u << 24, &nprobes[n_nprobe]) ? -1 : 1) : 0;
                n_nprobe++;
            }
            if (ok == 1 && n_nprobe == 0) ok = 0;
        } else if (!strcmp(a, "--allow-ids")) {
            allow_arg = v;
        } else if (!strcmp(a, "--radius")) {
            double r;
            ok = kvq_arg_double("index search", a, v, -INFINITY, INFINITY, &r) ? -1 : isfinite(r);
            radius = (float)r;
        } else {
            fprintf(stderr, "kvq index search: unknown option %s (see --help)\n", a);
            return 1;
        }
#undef U32_IN
        if (ok < 0) return 1;
        if (!ok) {
            fprintf(stderr, "kvq index search: bad value '%s' for %s\n", v, a);
            return 1;
        }
    }
    if (!xpath || !qpath) return usage_search(stderr);
    char xerr[512];
    if (!regular_file(xpath, xerr, sizeof xerr)) {
        fprintf(stderr, "kvq index search: %s\n", xerr);
        return 1;
    }
    kvq_index *ix = NULL;
    kvq_status st = use_mmap ? kvq_index_map(xpath, &ix) : kvq_index_load(xpath, &ix);
    if (st != KVQ_OK) return kvq_cli_fail("index search", xpath, st);
    kvq_index_filter filt = {NULL, 0, NULL, NULL};
    uint8_t *allow_bits = NULL;
    if (allow_arg) { /* a bitset over 0..max id */
        size_t na = 0;
        int64_t *al = parse_ids(allow_arg, &na, xerr, sizeof xerr);
        int64_t mx = 0;
        for (size_t i = 0; al && i < na; i++) mx = al[i] > mx ? al[i] : mx;
        if (al && (uint64_t)mx < (1ull << 36)) allow_bits = calloc((size_t)mx / 8 + 1, 1);
        if (!allow_bits) {
            fprintf(stderr, "kvq index search: --allow-ids: %s\n", al ? "ids too large or out of memory" : xerr);
            free(al);
            kvq_index_free(ix);
            return 1;
        }
        for (size_t i = 0; i < na; i++) allow_bits[al[i] >> 3] |= (uint8_t)(1u << (al[i] & 7));
        filt.id_bitset = allow_bits;
        filt.bitset_ids = (uint64_t)mx + 1;
        free(al);
    }
    kvq_index_config cfg;
    kvq_index_get_config(ix, &cfg);
    char err[512] = "";
    size_t nq, ngt = 0;
    uint32_t dim, kgt = 0;
    float *q = load_vectors(qpath, &nq, &dim, err, sizeof err);
    int32_t *gt = NULL;
    int rc = 1;
    int64_t *ids = NULL;
    kvq_threadpool *pool = NULL;
    if (!q) {
        fprintf(stderr, "kvq index search: %s\n", err);
        goto done;
    }
    if (dim != cfg.dim) {
        fprintf(stderr, "kvq index search: queries have dimension %u, the index %u\n", dim, cfg.dim);
        goto done;
    }
    {
        uint64_t count = 0;
        kvq_index_count(ix, &count);
        if (k > count) {
            fprintf(stderr, "kvq index search: -k %u is more than the %llu vectors in %s\n", k,
                    (unsigned long long)count, xpath);
            goto done;
        }
        for (size_t i = 0; i < nq; i++) {
            const char *why = row_problem(q + i * dim, dim, cfg.metric);
            if (why) {
                fprintf(stderr, "kvq index search: %s: query %zu %s\n", qpath, i, why);
                goto done;
            }
        }
    }
    if (gtpath) {
        gt = load_ivecs(gtpath, &ngt, &kgt, err, sizeof err);
        if (!gt) {
            fprintf(stderr, "kvq index search: %s\n", err);
            goto done;
        }
        if (ngt < nq || kgt < k) {
            fprintf(stderr, "kvq index search: ground truth has %zu x %u, need %zu x %u\n", ngt, kgt,
                    nq, k);
            goto done;
        }
    }
    ids = malloc(nq * (size_t)k * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "kvq index search: out of memory\n");
        goto done;
    }
    if (threads > 1 && (st = kvq_threadpool_create(threads, &pool)) != KVQ_OK) {
        rc = kvq_cli_fail("index search", "threads", st);
        goto done;
    }
    p.pool = pool;
    if (radius == radius) { /* range search: every vector within the radius */
        uint64_t count = 0;
        kvq_index_count(ix, &count);
        int64_t *rid = malloc((size_t)(count ? count : 1) * sizeof *rid);
        if (!rid) {
            fprintf(stderr, "kvq index search: out of memory\n");
            goto done;
        }
        printf("%8s %14s %12s %10s\n", "nprobe", "results/query", "queries/s", "ms/query");
        for (uint32_t t = 0; t < n_nprobe; t++) {
            p.nprobe = nprobes[t];
            size_t total = 0;
            double t0 = kvq_cli_now_s();
            for (size_t i = 0; i < nq && st == KVQ_OK; i++) {
                size_t found = 0;
                st = kvq_index_range_search(ix, q + i * dim, radius, &p, &filt, rid, NULL, (size_t)count, &found);
                total += found;
            }
            double dt = kvq_cli_now_s() - t0;
            if (st != KVQ_OK) {
                free(rid);
                rc = kvq_cli_fail("index search", "range search", st);
                goto done;
            }
            printf("%8u %14.2f %12.1f %10.3f\n", p.nprobe, (double)total / (double)nq, (double)nq / dt,
                   1e3 * dt / (double)nq);
        }
        free(rid);
        rc = 0;
        goto done;
    }
    if (!json) printf("%8s %10s %12s %10s\n", "nprobe", "recall@k", "queries/s", "ms/query");
    for (uint32_t t = 0; t < n_nprobe; t++) {
        p.nprobe = nprobes[t];
        double dt = INFINITY;
        for (uint32_t r = 0; r < repeat; r++) {
            double t0 = kvq_cli_now_s();
            st = kvq_index_search_filtered(ix, q, nq, k, &p, &filt, ids, NULL);
            double t1 = kvq_cli_now_s() - t0;
            if (st != KVQ_OK) {
                rc = kvq_cli_fail("index search", "search", st);
                goto done;
            }
            dt = t1 < dt ? t1 : dt;
        }
        double rec = -1.0;
        if (gt) {
            size_t hit = 0;
            for (size_t i = 0; i < nq; i++)
                for (uint32_t a = 0; a < k; a++)
                    for (uint32_t b = 0; b < k; b++)
                        if (ids[i * k + a] == gt[i * kgt + b]) {
                            hit++;
                            break;
                        }
            rec = (double)hit / (double)(nq * k);
        }
        recalls[t] = rec;
        seconds[t] = dt;
        if (json) continue;
        if (rec >= 0) printf("%8u %10.4f %12.1f %10.3f\n", p.nprobe, rec, (double)nq / dt, 1e3 * dt / (double)nq);
        else printf("%8u %10s %12.1f %10.3f\n", p.nprobe, "-", (double)nq / dt, 1e3 * dt / (double)nq);
    }
    if (opath && !write_ivecs(opath, ids, nq, k)) {
        fprintf(stderr, "kvq index search: cannot write %s\n", opath);
        goto done;
    }
    if (json) {
        printf("{\"index\": ");
        kvq_json_string(stdout, xpath);
        printf(", \"queries\": ");
        kvq_json_string(stdout, qpath);
        printf(", \"n_queries\": %zu, \"dim\": %u, \"k\": %u, \"threads\": %u, \"runs\": [", nq, dim, k, threads);
        for (uint32_t t = 0; t < n_nprobe; t++) {
            printf("%s{\"nprobe\": %u, \"recall\": ", t ? ", " : "", nprobes[t]);
            kvq_json_number(stdout, recalls[t] >= 0 ? recalls[t] : NAN); /* null without --gt */
            printf(", \"queries_per_second\": ");
            kvq_json_number(stdout, (double)nq / seconds[t]);
            printf(", \"ms_per_query\": ");
            kvq_json_number(stdout, 1e3 * seconds[t] / (double)nq);
            printf("}");
        }
        printf("]}\n");
    }
    rc = 0;
done:
    kvq_threadpool_free(pool);
    free(ids);
    free(gt);
    free(q);
    free(allow_bits);
    kvq_index_free(ix);
    return rc;
}

/* ------------------------------------------------------------ add / remove */

/* Ids from a comma list "3,17,42" or an .ivecs file (every number of every row). */
static int64_t *parse_ids(const char *arg, size_t *n, char *err, size_t err_n) {
    *n = 0;
    const char *e = ext_of(arg);
    if (!strcmp(e, "ivecs")) {
        uint32_t k;
        size_t rows;
        int32_t *v = load_ivecs(arg, &rows, &k, err, err_n);
        if (!v) return NULL;
        size_t cnt = rows * (size_t)k;
        int64_t *ids = malloc((cnt > 0 ? cnt : 1) * sizeof *ids);
        if (!ids) snprintf(err, err_n, "out of memory");
        for (size_t i = 0; ids && i < rows * k; i++) {
            if (v[i] < 0) {
                snprintf(err, err_n, "%s: id %d is negative", arg, v[i]);
                free(ids);
                ids = NULL;
                break;
            }
            ids[i] = v[i];
        }
        free(v);
        if (ids) *n = rows * k;
        return ids;
    }
    size_t cap = 1;
    for (const char *c = arg; *c; c++) cap += *c == ',';
    int64_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        snprintf(err, err_n, "out of memory");
        return NULL;
    }
    const char *c = arg;
    for (;;) {
        char *end;
        errno = 0;
        long long v = strtoll(c, &end, 10);
        if (errno || end == c || v < 0 || (*end && *end != ',')) {
            snprintf(err, err_n, "bad id list '%s' (want non-negative integers, comma separated, or an .ivecs file)", arg);
            free(ids);
            return NULL;
        }
        ids[(*n)++] = v;
        if (!*end) break;
        c = end + 1;
    }
    return ids;
}

static int cmd_add(int argc, char **argv) {
    const char *xpath = NULL, *in = NULL, *out = NULL, *idarg = NULL;
    uint32_t threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: kvq index add -x INDEX -i VECTORS [options]\n\n"
                   "  -x FILE            index file to extend (rewritten in place, atomically)\n"
                   "  -i FILE            vectors to add: .fvecs, .bvecs or .npy\n"
                   "  -o FILE            write the result here instead of over INDEX\n"
                   "  --ids L            their ids: comma list or .ivecs (default: one past\n"
                   "                     the largest stored id onwards)\n"
                   "  --threads T        threads for encoding (default 1)\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr, "kvq index add: %s needs a value\n", a);
            return 1;
        }
        i++;
        if (!strcmp(a, "-x")) xpath = v;
        else if (!strcmp(a, "-i")) in = v;
        else if (!strcmp(a, "-o")) out = v;
        else if (!strcmp(a, "--ids")) idarg = v;
        else if (!strcmp(a, "--threads")) {
            if (kvq_arg_u32("index add", a, v, 1, 1024, &threads)) return 1;
        } else {
            fprintf(stderr, "kvq index add: unknown option %s (see --help)\n", a);
            return 1;
        }
    }
    if (!xpath || !in) {
        fprintf(stderr, "usage: kvq index add -x INDEX -i VECTORS [--ids L] [-o OUT] (see --help)\n");
        return 1;
    }
    char err[512] = "";
    if (!regular_file(xpath, err, sizeof err)) {
        fprintf(stderr, "kvq index add: %s\n", err);
        return 1;
    }
    kvq_index *ix = NULL;
    kvq_status st = kvq_index_load(xpath, &ix);
    if (st != KVQ_OK) return kvq_cli_fail("index add", xpath, st);
    kvq_index_config cfg;
    kvq_index_get_config(ix, &cfg);
    size_t n = 0, nids = 0;
    uint32_t dim = 0;
    int64_t *ids = NULL;
    kvq_threadpool *pool = NULL;
    int rc = 1;
    float *x = load_vectors(in, &n, &dim, err, sizeof err);
    if (!x) {
        fprintf(stderr, "kvq index add: %s\n", err);
        goto done;
    }
    if (dim != cfg.dim) {
        fprintf(stderr, "kvq index add: %s has dimension %u, the index %u\n", in, dim, cfg.dim);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const char *why = row_problem(x + i * dim, dim, cfg.metric);
        if (why) {
            fprintf(stderr, "kvq index add: %s: row %zu %s\n", in, i, why);
            goto done;
        }
    }
    if (idarg) {
        if (!(ids = parse_ids(idarg, &nids, err, sizeof err))) {
            fprintf(stderr, "kvq index add: %s\n", err);
            goto done;
        }
        if (nids != n) {
            fprintf(stderr, "kvq index add: %zu ids for %zu vectors\n", nids, n);
            goto done;
        }
    }
    if (threads > 1 && ((st = kvq_threadpool_create(threads, &pool)) != KVQ_OK ||
                        (st = kvq_index_set_pool(ix, pool)) != KVQ_OK)) {
        rc = kvq_cli_fail("index add", "threads", st);
        goto done;
    }
    double t0 = kvq_cli_now_s();
    if ((st = kvq_index_add(ix, x, n, ids)) != KVQ_OK) {
        rc = kvq_cli_fail("index add", "add", st);
        goto done;
    }
    double t1 = kvq_cli_now_s();
    kvq_index_set_pool(ix, NULL);
    if ((st = kvq_index_save(ix, out ? out : xpath)) != KVQ_OK) {
        rc = kvq_cli_fail("index add", out ? out : xpath, st);
        goto done;
    }
    uint64_t count = 0;
    kvq_index_count(ix, &count);
    printf("added %zu vectors in %.2f s; %s holds %llu\n", n, t1 - t0, out ? out : xpath,
           (unsigned long long)count);
    rc = 0;
done:
    kvq_index_free(ix);
    kvq_threadpool_free(pool);
    free(x);
    free(ids);
    return rc;
}

static int cmd_remove(int argc, char **argv) {
    const char *xpath = NULL, *out = NULL, *idarg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: kvq index remove -x INDEX --ids L [-o OUT]\n\n"
                   "  -x FILE            index file (rewritten in place, atomically)\n"
                   "  --ids L            ids to remove: comma list or .ivecs; absent ids are ignored\n"
                   "  -o FILE            write the result here instead of over INDEX\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr, "kvq index remove: %s needs a value\n", a);
            return 1;
        }
        i++;
        if (!strcmp(a, "-x")) xpath = v;
        else if (!strcmp(a, "-o")) out = v;
        else if (!strcmp(a, "--ids")) idarg = v;
        else {
            fprintf(stderr, "kvq index remove: unknown option %s (see --help)\n", a);
            return 1;
        }
    }
    if (!xpath || !idarg) {
        fprintf(stderr, "usage: kvq index remove -x INDEX --ids L [-o OUT] (see --help)\n");
        return 1;
    }
    char err[512] = "";
    size_t nids = 0;
    int64_t *ids = parse_ids(idarg, &nids, err, sizeof err);
    if (!ids || !regular_file(xpath, err, sizeof err)) {
        fprintf(stderr, "kvq index remove: %s\n", err);
        free(ids);
        return 1;
    }
    kvq_index *ix = NULL;
    kvq_status st = kvq_index_load(xpath, &ix);
    uint64_t removed = 0, count = 0;
    if (st == KVQ_OK) st = kvq_index_remove(ix, ids, nids, &removed);
    if (st == KVQ_OK) st = kvq_index_save(ix, out ? out : xpath);
    free(ids);
    if (st != KVQ_OK) {
        kvq_index_free(ix);
        return kvq_cli_fail("index remove", xpath, st);
    }
    kvq_index_count(ix, &count);
    printf("removed %llu of %zu ids; %s holds %llu\n", (unsigned long long)removed, nids,
           out ? out : xpath, (unsigned long long)count);
    kvq_index_free(ix);
    return 0;
}

int kvq_cmd_index(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        FILE *f = argc < 2 ? stderr : stdout;
        fprintf(f, "usage: kvq index build ...   build an index from vectors (--help for options)\n"
                   "       kvq index search ...  search it, print recall@k and queries/s\n"
                   "       kvq index add ...     add vectors to a saved index\n"
                   "       kvq index remove ...  remove vectors by id from a saved index\n");
        return argc < 2 ? 1 : 0;
    }
    if (!strcmp(argv[1], "build")) return cmd_build(argc - 1, argv + 1);
    if (!strcmp(argv[1], "search")) return cmd_search(argc - 1, argv + 1);
    if (!strcmp(argv[1], "add")) return cmd_add(argc - 1, argv + 1);
    if (!strcmp(argv[1], "remove")) return cmd_remove(argc - 1, argv + 1);
    fprintf(stderr, "kvq index: unknown subcommand '%s' (build, search, add or remove)\n", argv[1]);
    return 1;
}
