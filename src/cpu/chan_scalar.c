/*
 * chan_scalar.c - the reference of the channel keys' score kernel (cache_kernels.h):
 * codes from bit-planes, one fused multiply-add per token and channel.
 */
#include <math.h>

#include "core/core.h"
#include "cpu/cache_kernels.h"

void kvqi_chan_score_scalar(const uint8_t *block, const uint32_t *off, const uint8_t *bits, uint32_t dim,
                            size_t C, const float *q, uint32_t G, size_t in, size_t n, float *scores,
                            size_t ld, float *w) {
    float *lo = w + (size_t)G * dim, *step = lo + dim, u[64];
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
    for (uint32_t j = 0; j < dim; j++) {
        uint32_t b = bits[j];
        if (b == 0) continue;
        uint32_t code[64] = {0};
        for (uint32_t p = 0; p < b; p++) {
            uint64_t v = kvqi_chan_plane_bits(block + off[j] + (size_t)p * (C / 8), C, in, n);
            for (size_t t = 0; t < n; t++) code[t] |= (uint32_t)((v >> t) & 1u) << p;
        }
        for (size_t t = 0; t < n; t++) u[t] = (float)code[t];
        for (uint32_t h = 0; h < G; h++) {
            float wj = w[(size_t)h * dim + j], *sc = scores + h * ld;
            for (size_t t = 0; t < n; t++) sc[t] = fmaf(wj, u[t], sc[t]);
        }
    }
}
