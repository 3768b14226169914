/*
 * fuzz_config.c - libFuzzer target for kvq_config_parse: any string, at several dims,
 * must give a status and never a crash (strings naming an artifact file are skipped). A spec that parses must format back to a spec
 * that parses to the same config, and a quantizer made from it must encode and decode.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvq.h"

static const uint32_t k_dims[] = {128, 1, 7, 64, 96, 0};

/* Configs compare field by field: padding bytes are not part of the value. */
static int same_config(const kvq_config *a, const kvq_config *b) {
    return a->method == b->method && a->dim == b->dim && a->bits == b->bits &&
           a->residuals == b->residuals && a->rotate == b->rotate && a->seed == b->seed &&
           a->proj_dim == b->proj_dim && a->query_bits == b->query_bits && a->split == b->split &&
           a->nlist == b->nlist && memcmp(&a->eps0, &b->eps0, sizeof a->eps0) == 0 &&
           a->sub_dim == b->sub_dim && a->n_codebooks == b->n_codebooks && a->isa == b->isa &&
           memcmp(&a->rope_base, &b->rope_base, sizeof a->rope_base) == 0 && a->rope_pairing == b->rope_pairing &&
           strncmp(a->artifact, b->artifact, sizeof a->artifact) == 0;
}

static void exercise(const kvq_config *cfg) {
    if (cfg->artifact[0] || cfg->dim > 256) return;
    kvq_quantizer *q = NULL;
    if (kvq_quantizer_create(cfg, &q) != KVQ_OK) return;
    size_t cs = kvq_code_size(q);
    float x[256], y[256], score = 0;
    for (uint32_t i = 0; i < cfg->dim; i++) x[i] = (float)((int)(i * 37 % 19) - 9) * 0.25f;
    uint8_t *codes = malloc(cs ? cs : 1);
    if (codes && kvq_encode(q, x, 1, codes) == KVQ_OK) {
        kvq_decode(q, codes, 1, y);
        kvq_score(q, x, codes, 1, &score);
    }
    free(codes);
    kvq_quantizer_free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *spec = malloc(size + 1);
    if (!spec) return 0;
    memcpy(spec, data, size);
    spec[size] = '\0';
    /* the parser opens an artifact it is given: the fuzzer must not open paths it
     * invents (/dev/zero, a FIFO, a huge file) */
    if (strstr(spec, "artifact")) {
        free(spec);
        return 0;
    }
    for (size_t d = 0; d < sizeof k_dims / sizeof k_dims[0]; d++) {
        kvq_config cfg, again;
        char msg[96], text[1024];
        memset(msg, 'x', sizeof msg);
        msg[0] = '\0'; /* a parser may leave msg alone, but never unterminated */
        kvq_status st = kvq_config_parse(spec, k_dims[d], &cfg, msg, sizeof msg);
        if (st != KVQ_OK) {
            if (!memchr(msg, '\0', sizeof msg)) __builtin_trap(); /* message not terminated */
            continue;
        }
        if (kvq_config_format(&cfg, text, sizeof text) != KVQ_OK) __builtin_trap();
        if (kvq_config_parse(text, k_dims[d], &again, NULL, 0) != KVQ_OK) __builtin_trap();
        if (!same_config(&cfg, &again)) __builtin_trap(); /* format does not round-trip */
        if (k_dims[d] == 64) exercise(&cfg); /* small enough to run fast, big enough for every method */
    }
    free(spec);
    return 0;
}
