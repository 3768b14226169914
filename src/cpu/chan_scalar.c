/*
 * chan_scalar.c - the reference of the channel keys' score kernel (cache_kernels.h):
 * codes from their split fields, one fused multiply-add per token and channel.
 */
#include <math.h>

#include "core/core.h"
#include "cpu/cache_kernels.h"

const uint8_t kvqi_chan_fields[9][4] = {{0}, {1, 0}, {2, 0}, {2, 1, 0}, {4, 0},
                                        {4, 1, 0}, {4, 2, 0}, {4, 2, 1, 0}, {4, 4, 0}};

uint32_t kvqi_chan_code_at(const uint8_t *group, uint32_t bits, uint32_t l) {
    uint32_t code = 0, shift = 0;
    for (const uint8_t *f = kvqi_chan_fields[bits]; *f; f++) {
        uint32_t v;
        if (*f == 4) v = l < 32 ? group[l] & 15u : group[l - 32] >> 4;
        else if (*f == 2) v = (group[l % 16] >> (2 * (l / 16))) & 3u;
        else v = (group[l / 8] >> (l % 8)) & 1u;
        code |= v << shift;
        shift += *f;
        group += 8 * (size_t)*f;
    }
    return code;
}

void kvqi_chan_code_put(uint8_t *group, uint32_t bits, uint32_t l, uint32_t code) {
    for (const uint8_t *f = kvqi_chan_fields[bits]; *f; f++) {
        uint32_t v = code & ((1u << *f) - 1u);
        code >>= *f;
        if (*f == 4) group[l % 32] |= (uint8_t)(v << (l < 32 ? 0 : 4));
        else if (*f == 2) group[l % 16] |= (uint8_t)(v << (2 * (l / 16)));
        else group[l / 8] |= (uint8_t)(v << (l % 8));
        group += 8 * (size_t)*f;
    }
}

/* The chunk's minima and steps to floats, q * step into w, and every row's bias. */
static void prepare(const uint8_t *block, uint32_t dim, const float *q, uint32_t G, size_t n, float *scores,
                    size_t ld, float *w) {
    float *lo = w + (size_t)G * dim, *step = lo + dim;
    for (uint32_t j = 0; j < 2 * dim; j++) {
        uint16_t h;
        memcpy(&h, block + 2 * (size_t)j, 2);
        lo[j] = kvqi_fp16_to_fp32(h); /* lo[dim + j] is step[j] */
    }
    for (uint32_t h = 0; h < G; h++) {
        const float *qh = q + (size_t)h * dim;
        float part[16] = {0};
        for (uint32_t j = 0; j < dim; j++) {
            part[j % 16] = fmaf(qh[j], lo[j], part[j % 16]);
            w[(size_t)h * dim + j] = qh[j] * step[j];
        }
        for (uint32_t half = 8; half >= 1; half /= 2)
            for (uint32_t i = 0; i < half; i++) part[i] += part[i + half];
        for (size_t t = 0; t < n; t++) scores[h * ld + t] = part[0];
    }
}

void kvqi_chan_score_scalar(const uint8_t *block, const uint8_t *bits, uint32_t dim,
                            size_t C, const float *q, uint32_t G, size_t in, size_t n, float *scores,
                            size_t ld, float *w) {
    prepare(block, dim, q, G, n, scores, ld, w);
    float u[64];
    size_t at = (size_t)4 * dim; /* channel j's codes: after the ranges and channels < j */
    for (uint32_t j = 0; j < dim; at += C * bits[j] / 8, j++) {
        uint32_t b = bits[j];
        if (b == 0) continue;
        const uint8_t *group = block + at + (in / 64) * 8 * (size_t)b;
        for (size_t t = 0; t < n; t++) u[t] = (float)kvqi_chan_code_at(group, b, (uint32_t)((in + t) % 64));
        for (uint32_t h = 0; h < G; h++) {
            float wj = w[(size_t)h * dim + j], *sc = scores + h * ld;
            for (size_t t = 0; t < n; t++) sc[t] = fmaf(wj, u[t], sc[t]);
        }
    }
}

void kvqi_chan_prepare(const uint8_t *block, uint32_t dim, const float *q, uint32_t G, size_t n, float *scores,
                       size_t ld, float *w) {
    prepare(block, dim, q, G, n, scores, ld, w);
}
