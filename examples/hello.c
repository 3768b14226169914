/* hello.c - the smallest program against an installed kvq: encode and decode vectors
 * with the default KV method and print the reconstruction error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <kvq.h>

int main(void) {
    enum { DIM = 128, N = 64 };
    kvq_config cfg;
    kvq_quantizer *q = NULL;
    char msg[256];
    kvq_status st = kvq_config_parse("turboquant_rvq:bits=1,residuals=2", DIM, &cfg, msg, sizeof msg);
    if (st == KVQ_OK) st = kvq_quantizer_create(&cfg, &q);
    if (st != KVQ_OK) {
        fprintf(stderr, "hello: %s\n", kvq_strerror(st));
        return 1;
    }
    static float x[N * DIM], y[N * DIM];
    for (int i = 0; i < N * DIM; i++) x[i] = (float)sin(0.37 * i) + 0.1f * (float)(i % 7);
    uint8_t *codes = malloc(kvq_code_size(q) * N);
    if (!codes) return 1;
    st = kvq_encode(q, x, N, codes);
    if (st == KVQ_OK) st = kvq_decode(q, codes, N, y);
    double err = 0, ref = 0;
    for (int i = 0; i < N * DIM; i++) {
        err += (x[i] - y[i]) * (x[i] - y[i]);
        ref += x[i] * x[i];
    }
    printf("kvq %s: %zu bytes/vector, relative error %.3f (%s)\n", kvq_version_string(),
           kvq_code_size(q), sqrt(err / ref), kvq_strerror(st));
    free(codes);
    kvq_quantizer_free(q);
    return st == KVQ_OK ? 0 : 1;
}
