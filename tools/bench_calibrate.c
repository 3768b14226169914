/* bench_calibrate.c - kvq bench --calibrate N: fits vecinfer, spectral (SpectralQuant)
 * and comm_vq (CommVQ, arXiv 2506.18879) on the first N tokens of each layer's KV and
 * hands them to the cache as artifacts. Public API only. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "bench_calibrate.h"

int kvq_bench_is_calibrated(const kvq_config *qc) {
    return qc->method == KVQ_METHOD_VECINFER || qc->method == KVQ_METHOD_SPECTRAL ||
           qc->method == KVQ_METHOD_COMM_VQ;
}

/* RoPE by -pos on one head vector, with comm_vq's frequencies and pairing */
static void unrope(float *x, uint32_t d, int neox, double base, size_t pos) {
    for (uint32_t j = 0; j < d / 2; j++) {
        uint32_t a = neox ? j : 2 * j, b = neox ? j + d / 2 : 2 * j + 1;
        double phi = (double)pos * pow(base, -2.0 * j / d), c = cos(phi), s = sin(phi);
        double xa = x[a], xb = x[b];
        x[a] = (float)(xa * c + xb * s);
        x[b] = (float)(xb * c - xa * s);
    }
}

kvq_status kvq_bench_calibrate(kvq_bench_calib *bc, kvq_config *qc, const float *rows, size_t n,
                               uint32_t n_kv, uint32_t dim, int is_key, const char *tag) {
    if (!kvq_bench_is_calibrated(qc) || qc->artifact[0]) return KVQ_OK;
    if (n == 0) return KVQ_ERR_STATE; /* nothing to learn from: the cache would refuse too */
    if (!bc->dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(bc->dir, sizeof bc->dir, "%s/kvq-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(bc->dir)) {
            bc->dir[0] = 0;
            return KVQ_ERR_IO;
        }
    }
    size_t n_rows = n * n_kv;
    float *x = malloc(n_rows * dim * sizeof(float));
    if (!x) return KVQ_ERR_NOMEM;
    memcpy(x, rows, n_rows * dim * sizeof(float));
    if (is_key && qc->method == KVQ_METHOD_COMM_VQ)
        for (size_t i = 0; i < n_rows; i++)
            unrope(x + i * dim, dim, qc->rope_pairing == KVQ_ROPE_NEOX, qc->rope_base, i / n_kv);
    kvq_config c = *qc;
    c.dim = dim;
    kvq_quantizer *q = NULL;
    double t0 = kvq_cli_now_s();
    kvq_status st = kvq_quantizer_create(&c, &q);
    if (st == KVQ_OK) st = kvq_quantizer_fit(q, x, n_rows);
    bc->fit_s += kvq_cli_now_s() - t0;
    char path[700];
    snprintf(path, sizeof path, "%s/%s.safetensors", bc->dir, tag);
    if (st == KVQ_OK) st = kvq_quantizer_save(q, path);
    kvq_quantizer_free(q);
    free(x);
    if (st != KVQ_OK) return st;
    if (strlen(path) >= sizeof qc->artifact) return KVQ_ERR_OVERFLOW;
    strcpy(qc->artifact, path);
    bc->n_fits++;
    return KVQ_OK;
}

void kvq_bench_calib_cleanup(kvq_bench_calib *bc) {
    if (!bc->dir[0]) return;
    DIR *d = opendir(bc->dir);
    if (d) {
        struct dirent *e;
        char path[1100];
        while ((e = readdir(d)))
            if (strstr(e->d_name, ".safetensors")) {
                snprintf(path, sizeof path, "%s/%s", bc->dir, e->d_name);
                remove(path);
            }
        closedir(d);
    }
    rmdir(bc->dir);
    bc->dir[0] = 0;
}
