/*
 * bench_calib.c - the calibrated methods (vecinfer, spectral, comm_vq) against
 * turboquant_mse at the same bits: fit time, bytes per vector, held-out relative MSE and
 * inner-product error, and one-core encode / score throughput per ISA (median of repeats;
 * each ISA runs the same artifact, so the codes are the same).
 * Keys: --keys FILE (safetensors [rows][dim], e.g. from kvq calibrate --save-keys), else
 * synthetic keys at dim 128 with two outlier channels in every 16.
 * comm_vq also: kvq_score_at over consecutive positions (a cache's keys) and scattered ones.
 * Usage: bench_calib [--keys FILE] [--n N] [--repeats R] [--json] [--only SUBSTRING]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvq.h"

static const char *const k_specs[] = {
    "vecinfer:bits=8,sub_dim=8", "vecinfer:bits=8,sub_dim=4", "turboquant_mse:bits=1",
    "spectral:bits=1",           "spectral:bits=2",           "turboquant_mse:bits=2",
    "spectral:bits=3",           "turboquant_mse:bits=3",     "comm_vq:bits=8,n_codebooks=4",
    "comm_vq:bits=8,n_codebooks=8",
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* xorshift normal generator (bench data only) */
static uint64_t g_state = 88172645463325252ull;
static double urand(void) {
    g_state ^= g_state << 13;
    g_state ^= g_state >> 7;
    g_state ^= g_state << 17;
    return ((g_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static double nrand(void) { return sqrt(-2 * log(urand())) * cos(6.283185307179586 * urand()); }

int main(int argc, char **argv) {
    const char *keys = NULL;
    size_t n = 8192;
    int repeats = 5, json = 0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--keys") && i + 1 < argc) keys = argv[++i];
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr, "usage: bench_calib [--keys FILE] [--n N] [--repeats R] [--json] [--only S]\n");
            return 1;
        }
    }
    float *x;
    size_t rows, dim;
    char msg[512];
    if (keys) {
        if (kvq_tensor_read_f32(keys, NULL, &x, &rows, &dim, msg, sizeof msg)) {
            fprintf(stderr, "bench_calib: %s\n", msg);
            return 1;
        }
    } else {
        dim = 128;
        rows = n;
        x = malloc(rows * dim * sizeof(float));
        if (!x) return 1;
        for (size_t i = 0; i < rows * dim; i++) {
            size_t j = i % dim;
            double z = nrand();
            x[i] = (float)(j % 16 == 3 ? 12 + 6 * z : j % 16 == 9 ? -8 + 4 * z : z);
        }
    }
    if (repeats < 1 || rows < 1000) {
        fprintf(stderr, "bench_calib: need at least 1000 rows\n");
        return 1;
    }
    /* fit on the first 80 %, measure on the rest */
    size_t n_fit = rows * 4 / 5, n_test = rows - n_fit;
    const float *test = x + n_fit * dim;
    float *y = malloc(n_test * dim * sizeof(float)), *sc = malloc(n_test * sizeof(float));
    uint8_t *codes = malloc(n_test * 64 * dim);
    if (!y || !sc || !codes) return 1;
    char path[] = "/tmp/kvq_bench_calib_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 1;
    close(fd);
    if (!json)
        printf("keys: %s, %zu rows x %zu (fit %zu, held out %zu), kernels: %s\n\n"
               "%-32s %7s %8s %9s %9s %8s %-7s %10s %10s\n",
               keys ? keys : "synthetic outlier channels", rows, dim, n_fit, n_test, kvq_cpu_isa(), "method",
               "bytes", "bits/el", "rel mse", "ip err", "fit s", "isa", "enc Mvec/s", "score Mv/s");
    for (size_t s = 0; s < sizeof k_specs / sizeof k_specs[0]; s++) {
        if (only && !strstr(k_specs[s], only)) continue;
        kvq_config c;
        kvq_quantizer *q;
        if (kvq_config_parse(k_specs[s], (uint32_t)dim, &c, msg, sizeof msg) ||
            kvq_quantizer_create(&c, &q)) {
            fprintf(stderr, "%s: %s\n", k_specs[s], msg);
            continue;
        }
        double t0 = now_s();
        kvq_status st = kvq_quantizer_fit(q, x, n_fit);
        double fit_s = now_s() - t0;
        if (st || kvq_quantizer_save(q, path)) {
            fprintf(stderr, "%s: fit: %s\n", k_specs[s], kvq_strerror(st));
            kvq_quantizer_free(q);
            continue;
        }
        size_t cs = kvq_code_size(q);
        kvq_encode(q, test, n_test, codes);
        kvq_decode(q, codes, n_test, y);
        double num = 0, den = 0, ipe = 0, ipd = 0;
        for (size_t i = 0; i < n_test; i++) {
            const float *qv = test + ((i + 1) % n_test) * dim;
            double a = 0, b = 0;
            for (size_t j = 0; j < dim; j++) {
                double e = (double)test[i * dim + j] - y[i * dim + j];
                num += e * e;
                den += (double)test[i * dim + j] * test[i * dim + j];
                a += (double)qv[j] * test[i * dim + j];
                b += (double)qv[j] * y[i * dim + j];
            }
            ipe += fabs(a - b);
            ipd += fabs(a);
        }
        int calibrated = c.method == KVQ_METHOD_VECINFER || c.method == KVQ_METHOD_SPECTRAL ||
                         c.method == KVQ_METHOD_COMM_VQ;
        const kvq_isa isas[] = {KVQ_ISA_SCALAR, KVQ_ISA_AVX2, KVQ_ISA_AVX512};
        const char *isa_names[] = {"scalar", "avx2", "avx512"};
        for (int k = 0; k < 3; k++) {
            if (!kvq_isa_available(isas[k])) continue;
            kvq_config ci = c;
            ci.isa = isas[k];
            if (calibrated) snprintf(ci.artifact, sizeof ci.artifact, "%s", path);
            kvq_quantizer *qi;
            if (kvq_quantizer_create(&ci, &qi)) continue;
            double enc[64], scr[64];
            int r_n = repeats < 64 ? repeats : 64;
            for (int r = 0; r < r_n; r++) {
                double a = now_s();
                kvq_encode(qi, test, n_test, codes);
                double b = now_s();
                kvq_score(qi, test, codes, n_test, sc);
                enc[r] = b - a;
                scr[r] = now_s() - b;
            }
            qsort(enc, (size_t)r_n, sizeof(double), cmp_d);
            qsort(scr, (size_t)r_n, sizeof(double), cmp_d);
            double enc_m = n_test / enc[r_n / 2] * 1e-6, scr_m = n_test / scr[r_n / 2] * 1e-6;
            if (json)
                printf("{\"bench\":\"calib\",\"keys\":\"%s\",\"dim\":%zu,\"method\":\"%s\",\"isa\":\"%s\","
                       "\"bytes\":%zu,\"rel_mse\":%.6g,\"ip_err\":%.6g,\"fit_s\":%.4g,"
                       "\"encode_mvec_s\":%.4g,\"score_mvec_s\":%.4g}\n",
                       keys ? keys : "synthetic", dim, k_specs[s], isa_names[k], cs, num / den, ipe / ipd,
                       fit_s, enc_m, scr_m);
            else
                printf("%-32s %7zu %8.3f %9.5f %9.5f %8.3f %-7s %10.3f %10.3f\n", k_specs[s], cs,
                       8.0 * cs / dim, num / den, ipe / ipd, fit_s, isa_names[k], enc_m, scr_m);
            kvq_quantizer_free(qi);
        }
        if (c.method == KVQ_METHOD_COMM_VQ) {
            int32_t *pos = malloc(n_test * sizeof(int32_t));
            if (!pos) return 1;
            for (int scattered = 0; scattered < 2; scattered++) {
                for (size_t i = 0; i < n_test; i++)
                    pos[i] = scattered ? (int32_t)((i * 7919) % 100000) : (int32_t)(1000 + i);
                kvq_encode_at(q, test, pos, n_test, codes);
                double t[64];
                int r_n = repeats < 64 ? repeats : 64;
                for (int r = 0; r < r_n; r++) {
                    double a = now_s();
                    kvq_score_at(q, test, codes, pos, n_test, sc);
                    t[r] = now_s() - a;
                }
                qsort(t, (size_t)r_n, sizeof(double), cmp_d);
                double m = n_test / t[r_n / 2] * 1e-6;
                if (json)
                    printf("{\"bench\":\"calib\",\"method\":\"%s\",\"score_at\":\"%s\",\"score_mvec_s\":%.4g}\n",
                           k_specs[s], scattered ? "scattered" : "consecutive", m);
                else
                    printf("%-32s score_at, %s positions: %.3f Mvec/s\n", k_specs[s],
                           scattered ? "scattered" : "consecutive", m);
            }
            free(pos);
        }
        kvq_quantizer_free(q);
    }
    remove(path);
    if (keys) kvq_buffer_free(x);
    else free(x);
    free(y);
    free(sc);
    free(codes);
    return 0;
}
