/*
 * chan_scalar.c - channel keys' plane layout (cache_kernels.h) and the reference of
 * their score kernel: int16 weights per channel and query head (times 2^shift per
 * plane), integer sums of weights times plane values, one float multiply-add per token
 * for the scale and the bias.
 */
#include <limits.h>
#include <math.h>

#include "core/core.h"
#include "cpu/cache_kernels.h"

/* planes before splits: at most 3 per channel; splits and padding at most 9 more */
static uint32_t padded_cap(uint32_t dim) { return (3 * dim + 9 + 15) & ~15u; }

uint32_t kvqi_chan_planes_cap(uint32_t dim) { return padded_cap(dim); }

size_t kvqi_chan_layout_bytes(uint32_t dim) {
    size_t cap = padded_cap(dim);
    /* top; pair_chan, pair_shift (the builder's list before them); chan; shift, width */
    return cap * (3 * sizeof(uint16_t) + 2) + (size_t)dim * sizeof(float);
}

/* One width's planes: the channels' own in channel order (list[i] = j << 8 | shift),
 * then those split from the wider width (pend, each into two of this width, the low one
 * first). The first 4 n_groups go to planes base..; the rest wait in out_pend to be
 * split in turn. */
static uint32_t place(kvqi_chan_layout *L, uint32_t *list, uint32_t n, const uint32_t *pend, uint32_t n_pend,
                      uint32_t width, uint32_t base, uint32_t n_groups, uint32_t *out_pend) {
    uint16_t *chan = (uint16_t *)(uintptr_t)L->chan;
    uint8_t *shift = (uint8_t *)(uintptr_t)L->shift, *wd = (uint8_t *)(uintptr_t)L->width;
    for (uint32_t i = 0; i < n_pend; i++) {
        list[n++] = pend[i];
        list[n++] = pend[i] + width; /* shift + width */
    }
    uint32_t n_out = 0;
    for (uint32_t k = 0; k < n; k++) {
        if (k < 4 * n_groups) {
            chan[base + k] = (uint16_t)(list[k] >> 8);
            shift[base + k] = (uint8_t)(list[k] & 255u);
            wd[base + k] = (uint8_t)width;
        } else {
            out_pend[n_out++] = list[k];
        }
    }
    return n_out;
}

void kvqi_chan_layout_build(kvqi_chan_layout *L, const uint8_t *bits, uint32_t dim, void *mem) {
    uint32_t cap = padded_cap(dim);
    memset(mem, 0, kvqi_chan_layout_bytes(dim));
    float *top = (float *)mem;
    uint16_t *pair_chan = (uint16_t *)(void *)(top + dim), *pair_shift = pair_chan + cap;
    /* the list of one width's planes lives where the pairs go last (cap words) */
    uint32_t *list = (uint32_t *)(void *)pair_chan;
    uint16_t *chan = pair_shift + cap;
    uint8_t *shift = (uint8_t *)(void *)(chan + cap), *width = shift + cap;
    L->chan = chan, L->top = top, L->shift = shift, L->width = width;
    L->pair_chan = pair_chan, L->pair_shift = pair_shift;
    /* planes of each width: 4 (b >= 4; b = 8 twice), 2 (b = 2, 3, 6, 7), 1 (b odd) */
    uint32_t c4 = 0, c2 = 0, c1 = 0;
    for (uint32_t j = 0; j < dim; j++) {
        uint32_t b = bits[j];
        c4 += (b >= 4) + (b == 8);
        c2 += (b & 2u) != 0;
        c1 += b & 1u;
    }
    uint32_t n4 = c4 / 4, r4 = c4 % 4, n2 = (c2 + 2 * r4) / 4, r2 = (c2 + 2 * r4) % 4;
    uint32_t n1 = (c1 + 2 * r2 + 3) / 4;
    uint32_t pend4[3], pend2[3], n = 0;
    for (uint32_t j = 0; j < dim; j++) {
        uint32_t b = bits[j];
        if (b == 8) list[n++] = j << 8, list[n++] = j << 8 | 4u;
        else if (b >= 4) list[n++] = j << 8 | (b & 3u);
    }
    place(L, list, n, NULL, 0, 4, 0, n4, pend4);
    n = 0;
    for (uint32_t j = 0; j < dim; j++)
        if (bits[j] & 2u) list[n++] = j << 8 | (bits[j] & 1u);
    place(L, list, n, pend4, r4, 2, 4 * n4, n2, pend2);
    n = 0;
    for (uint32_t j = 0; j < dim; j++)
        if (bits[j] & 1u) list[n++] = j << 8;
    place(L, list, n, pend2, r2, 1, 4 * (n4 + n2), n1, NULL);
    L->dim = dim;
    L->n4 = n4, L->n2 = n2, L->n1 = n1;
    L->n_planes = 4 * (n4 + n2 + n1);
    L->n_padded = (L->n_planes + 15) & ~15u;
    L->unit_bytes = 128 * n4 + 64 * n2 + 32 * n1;
    /* |W_j| top_j <= wmax + 0.51 top_j fits int16 (top_j <= 128); the sums sum_j W_j
     * code_j fit int32 */
    uint64_t codes = 1;
    for (uint32_t j = 0; j < dim; j++) codes += (1u << bits[j]) - 1u;
    L->wmax = (float)(codes * 32641u > INT32_MAX ? INT32_MAX / codes - 1 : 32640u);
    static const uint8_t pair[4] = {0, 2, 1, 3};
    for (uint32_t p = 0; p < L->n_padded; p++) {
        uint32_t q = 4 * (p / 4) + pair[p % 4];
        pair_chan[q] = (uint16_t)chan[p];
        pair_shift[q] = width[p] ? shift[p] : 16; /* padding: weight 0 */
        if (width[p] && ldexpf(1.0f, shift[p]) > top[chan[p]]) top[chan[p]] = ldexpf(1.0f, shift[p]);
    }
    /* past the planes: zero, as before the list used them (the kernels read whole vectors) */
    memset(pair_chan + L->n_padded, 0, (cap - L->n_padded) * sizeof *pair_chan);
    memset(pair_shift + L->n_padded, 0, (cap - L->n_padded) * sizeof *pair_shift);
}

/* A built layout's arrays copied to mem with n_padded + 16 entries each (the kernels read
 * 32 entries from a multiple of 16) instead of the worst case; dst gets the layout with
 * its arrays there. Returns the bytes; mem NULL: only those. */
size_t kvqi_chan_layout_pack(const kvqi_chan_layout *L, kvqi_chan_layout *dst, void *mem) {
    size_t n = (size_t)L->n_padded + 16, dim = L->dim;
    size_t bytes = dim * sizeof(float) + n * (3 * sizeof(uint16_t) + 2);
    if (!mem) return bytes;
    size_t m = KVQI_MIN(n, (size_t)padded_cap(L->dim));
    memset(mem, 0, bytes);
    float *top = (float *)mem;
    uint16_t *pair_chan = (uint16_t *)(void *)(top + dim), *pair_shift = pair_chan + n, *chan = pair_shift + n;
    uint8_t *shift = (uint8_t *)(void *)(chan + n), *width = shift + n;
    memcpy(top, L->top, dim * sizeof(float));
    memcpy(pair_chan, L->pair_chan, m * sizeof(uint16_t));
    memcpy(pair_shift, L->pair_shift, m * sizeof(uint16_t));
    memcpy(chan, L->chan, m * sizeof(uint16_t));
    memcpy(shift, L->shift, m);
    memcpy(width, L->width, m);
    *dst = *L;
    dst->top = top, dst->pair_chan = pair_chan, dst->pair_shift = pair_shift;
    dst->chan = chan, dst->shift = shift, dst->width = width;
    return bytes;
}

/* Byte and bit of plane p's value for token l of a unit; returns the mask. */
static uint32_t locate(const kvqi_chan_layout *L, uint32_t p, uint32_t l, size_t *byte, uint32_t *sh) {
    uint32_t g = p / 4, i = p % 4;
    if (g < L->n4) {
        *byte = 128 * (size_t)g + 64 * (l / 32) + 4 * (l % 16) + i;
        *sh = 4 * ((l / 16) % 2);
        return 15;
    }
    if (g < L->n4 + L->n2) {
        *byte = 128 * (size_t)L->n4 + 64 * (size_t)(g - L->n4) + 4 * (l % 16) + i;
        *sh = 2 * (l / 16);
        return 3;
    }
    *byte = 128 * (size_t)L->n4 + 64 * (size_t)L->n2 + 32 * (size_t)(g - L->n4 - L->n2) + 4 * (l % 8) + i;
    *sh = l / 8;
    return 1;
}

uint32_t kvqi_chan_plane_at(const kvqi_chan_layout *L, const uint8_t *unit, uint32_t p, uint32_t l) {
    size_t byte;
    uint32_t sh, mask = locate(L, p, l, &byte, &sh);
    return ((uint32_t)unit[byte] >> sh) & mask;
}

void kvqi_chan_plane_put(const kvqi_chan_layout *L, uint8_t *unit, uint32_t p, uint32_t l, uint32_t v) {
    size_t byte;
    uint32_t sh, mask = locate(L, p, l, &byte, &sh);
    unit[byte] |= (uint8_t)((v & mask) << sh);
}

uint32_t kvqi_chan_code_at(const kvqi_chan_layout *L, const uint8_t *block, uint32_t j, size_t t) {
    const uint8_t *unit = block + 4 * (size_t)L->dim + (t / 64) * L->unit_bytes;
    uint32_t code = 0;
    for (uint32_t p = 0; p < L->n_planes; p++)
        if (L->width[p] && L->chan[p] == j)
            code |= kvqi_chan_plane_at(L, unit, p, (uint32_t)(t % 64)) << L->shift[p];
    return code;
}

static float fold16(float *part) {
    for (uint32_t half = 8; half >= 1; half /= 2)
        for (uint32_t i = 0; i < half; i++) part[i] += part[i + half];
    return part[0];
}

void kvqi_chan_weights_ref(const uint8_t *block, const kvqi_chan_layout *L, const float *q, int16_t *W, float *scale,
                           float *bias, float *wf) {
    uint32_t dim = L->dim, P = L->n_padded;
    float part[16] = {0}, mx = 0.0f;
    for (uint32_t j = 0; j < dim; j++) {
        uint16_t lo, st;
        memcpy(&lo, block + 2 * (size_t)j, 2);
        memcpy(&st, block + 2 * ((size_t)dim + j), 2);
        part[j % 16] = fmaf(q[j], kvqi_fp16_to_fp32(lo), part[j % 16]);
        wf[j] = q[j] * kvqi_fp16_to_fp32(st);
        mx = fmaxf(mx, fabsf(wf[j]) * L->top[j]);
    }
    float inv = mx > 0.0f ? L->wmax / mx : 0.0f;
    for (uint32_t p = 0; p < P; p++) {
        long k = lrintf(wf[L->pair_chan[p]] * inv);
        k = k > 32767 ? 32767 : k < -32767 ? -32767 : k;
        W[p] = (int16_t)(L->pair_shift[p] < 16 ? k * (1l << L->pair_shift[p]) : 0);
    }
    *scale = mx / L->wmax;
    *bias = fold16(part);
}

void kvqi_chan_weights_scalar(const uint8_t *block, const kvqi_chan_layout *L, const float *q, uint32_t G,
                              int16_t *W, float *scale, float *bias, float *wf) {
    for (uint32_t h = 0; h < G; h++)
        kvqi_chan_weights_ref(block, L, q + (size_t)h * L->dim, W + (size_t)h * L->n_padded, &scale[h], &bias[h], wf);
}

void kvqi_chan_dot_scalar(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                          const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld) {
    uint32_t P = L->n_padded, l0 = (uint32_t)(in % 64);
    const uint8_t *unit = block + 4 * (size_t)L->dim + (in / 64) * L->unit_bytes;
    for (uint32_t h = 0; h < G; h++) {
        const int16_t *Wh = W + (size_t)h * P;
        for (uint32_t l = l0; l < l0 + n; l++) {
            int32_t acc = 0;
            for (uint32_t p = 0; p < L->n_planes; p += 4) { /* weights in pairs: planes 0, 2, 1, 3 */
                int32_t v[4];
                for (uint32_t i = 0; i < 4; i++) v[i] = (int32_t)kvqi_chan_plane_at(L, unit, p + i, l);
                acc += Wh[p] * v[0] + Wh[p + 1] * v[2] + Wh[p + 2] * v[1] + Wh[p + 3] * v[3];
            }
            scores[h * ld + l - l0] = fmaf((float)acc, scale[h], bias[h]);
        }
    }
}
