/*
 * chan_scalar.c - channel keys' plane layout (cache_kernels.h) and the reference of
 * their score kernel: int16 weights per channel and query head (times 2^shift per
 * plane), integer sums of weights times plane values, one float multiply-add per token
 * for the scale and the bias.
 */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cache_kernels.h"
#include "quant/quant.h"

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

/* The classes of whole groups in slot order, and each one's planes: 4-bit shifts (up to
 * two), 2-bit shift and 1-bit shift (none: 255). */
static const uint8_t whole_bits[5] = {8, 7, 6, 5, 3};
static const uint8_t whole_planes[9][4] = {
    [8] = {0, 4, 255, 255}, [7] = {3, 255, 1, 0}, [6] = {2, 255, 0, 255},
    [5] = {1, 255, 255, 0}, [3] = {255, 255, 1, 0},
};

void kvqi_chan_layout_build(kvqi_chan_layout *L, const uint8_t *bits, uint32_t dim, void *mem) {
    uint32_t cap = padded_cap(dim);
    memset(mem, 0, kvqi_chan_layout_bytes(dim));
    memset(L, 0, sizeof *L);
    float *top = (float *)mem;
    uint16_t *pair_chan = (uint16_t *)(void *)(top + dim), *pair_shift = pair_chan + cap;
    /* the list of one width's planes lives where the pairs go last (cap words) */
    uint32_t *list = (uint32_t *)(void *)pair_chan;
    uint16_t *chan = pair_shift + cap;
    uint8_t *shift = (uint8_t *)(void *)(chan + cap), *width = shift + cap;
    L->chan = chan, L->top = top, L->shift = shift, L->width = width;
    L->pair_chan = pair_chan, L->pair_shift = pair_shift;
    /* planes of each width: 4 (b >= 4; b = 8 twice), 2 (b = 2, 3, 6, 7), 1 (b odd) */
    uint32_t c4 = 0, c2 = 0, c1 = 0, count[9] = {0};
    for (uint32_t j = 0; j < dim; j++) {
        uint32_t b = bits[j];
        c4 += (b >= 4) + (b == 8);
        c2 += (b & 2u) != 0;
        c1 += b & 1u;
        count[b]++;
    }
    for (uint32_t k = 0; k < 5; k++) L->nc[whole_bits[k]] = count[whole_bits[k]] / 4;
    uint32_t n4 = c4 / 4, r4 = c4 % 4, n2 = (c2 + 2 * r4) / 4, r2 = (c2 + 2 * r4) % 4;
    uint32_t n1 = (c1 + 2 * r2 + 3) / 4;
    /* whole[j]: channel j is in a whole group (the first 4 nc[b] of its bits); kept where
     * top goes last */
    uint8_t *whole = (uint8_t *)(void *)top;
    uint32_t seen[9] = {0};
    for (uint32_t j = 0; j < dim; j++) {
        uint32_t b = bits[j];
        whole[j] = seen[b]++ < 4 * L->nc[b];
    }
    /* one width's planes of the whole groups, class by class in slot order: the four
     * channels of each group (in channel order) at that class's shift of this width */
    uint32_t n = 0;
#define WHOLE_PLANES(slot)                                                                     \
    for (uint32_t k = 0; k < 5; k++) {                                                         \
        uint32_t b = whole_bits[k], sh = whole_planes[b][slot], left = 4 * L->nc[b], j0 = 0;   \
        if (sh == 255) continue;                                                               \
        while (left) { /* the next four channels of b bits */                                  \
            uint32_t grp[4], got = 0;                                                          \
            for (uint32_t j = j0; got < 4; j++)                                                \
                if (bits[j] == b && whole[j]) grp[got++] = j, j0 = j + 1;                      \
            for (uint32_t i = 0; i < 4; i++) list[n++] = grp[i] << 8 | sh;                     \
            if (slot == 0 && whole_planes[b][1] != 255)                                        \
                for (uint32_t i = 0; i < 4; i++) list[n++] = grp[i] << 8 | whole_planes[b][1]; \
            left -= 4;                                                                         \
        }                                                                                      \
    }
    uint32_t pend4[3], pend2[3];
    WHOLE_PLANES(0)
    for (uint32_t j = 0; j < dim; j++) {
        uint32_t b = bits[j];
        if (whole[j]) continue;
        if (b == 8) list[n++] = j << 8, list[n++] = j << 8 | 4u;
        else if (b >= 4) list[n++] = j << 8 | (b & 3u);
    }
    place(L, list, n, NULL, 0, 4, 0, n4, pend4);
    n = 0;
    WHOLE_PLANES(2)
    for (uint32_t j = 0; j < dim; j++)
        if ((bits[j] & 2u) && !whole[j]) list[n++] = j << 8 | (bits[j] & 1u);
    place(L, list, n, pend4, r4, 2, 4 * n4, n2, pend2);
    n = 0;
    WHOLE_PLANES(3)
    for (uint32_t j = 0; j < dim; j++)
        if ((bits[j] & 1u) && !whole[j]) list[n++] = j << 8;
    place(L, list, n, pend2, r2, 1, 4 * (n4 + n2), n1, NULL);
#undef WHOLE_PLANES
    L->dim = dim;
    L->n4 = n4, L->n2 = n2, L->n1 = n1;
    L->n_planes = 4 * (n4 + n2 + n1);
    L->unit_bytes = 128 * n4 + 64 * n2 + 32 * n1;
    /* |W_j| top_j <= wmax + 0.51 top_j fits int16 (top_j <= 128); the sums sum_j W_j
     * code_j fit int32 */
    uint64_t codes = 1;
    for (uint32_t j = 0; j < dim; j++) codes += (1u << bits[j]) - 1u;
    L->wmax = (float)(codes * 32641u > INT32_MAX ? INT32_MAX / codes - 1 : 32640u);
    /* the slots: the whole groups' channels at shift 0 (their first plane group gives
     * them), then the other planes; slot s of a group of four goes to pair position
     * {0, 2, 1, 3}[s % 4] */
    uint32_t w4, w2, w1, ns = 0;
    kvqi_chan_whole_groups(L, &w4, &w2, &w1);
    uint32_t g4 = 0, g2 = n4 + L->nc[7] + L->nc[6]; /* the 3-bit groups' 2-bit planes */
    static const uint8_t pair[4] = {0, 2, 1, 3};
    /* the lists and the flags are done with: the pairs and top are written over them */
    memset(pair_chan, 0, 2 * (size_t)cap * sizeof *pair_chan);
    memset(top, 0, (size_t)dim * sizeof *top);
#define SLOT(j, sh)                                                                            \
    do {                                                                                       \
        uint32_t q_ = 4 * (ns / 4) + pair[ns % 4];                                             \
        pair_chan[q_] = (uint16_t)(j);                                                         \
        pair_shift[q_] = (uint16_t)(sh);                                                       \
        if ((sh) < 16 && ldexpf(1.0f, (int)(sh)) > top[j]) top[j] = ldexpf(1.0f, (int)(sh));   \
        ns++;                                                                                  \
    } while (0)
    for (uint32_t k = 0; k < 5; k++) {
        uint32_t b = whole_bits[k];
        for (uint32_t i = 0; i < L->nc[b]; i++) {
            uint32_t g = whole_planes[b][0] != 255 ? g4 : g2; /* its first plane group */
            for (uint32_t t = 0; t < 4; t++) SLOT(chan[4 * g + t], 0u);
            if (whole_planes[b][0] != 255) g4 += b == 8 ? 2 : 1;
            else g2++;
        }
    }
    for (uint32_t g = 0; g < n4 + n2 + n1; g++) {
        if (g < w4 || (g >= n4 && g < n4 + w2) || (g >= n4 + n2 && g < n4 + n2 + w1)) continue;
        for (uint32_t t = 0; t < 4; t++) {
            uint32_t p = 4 * g + t;
            SLOT(chan[p], width[p] ? (uint32_t)shift[p] : 16u);
        }
    }
#undef SLOT
    L->n_slots = ns;
    L->n_padded = (ns + 15) & ~15u;
    for (; ns < L->n_padded; ns++) pair_shift[4 * (ns / 4) + pair[ns % 4]] = 16; /* padding: weight 0 */
}

/* A built layout's arrays copied to mem with 16 entries past the planes (at least as many
 * as the slots) each (the kernels read 32 entries from a multiple of 16) instead of the
 * worst case; dst gets the layout with its arrays there. Returns the bytes; mem NULL:
 * only those. */
size_t kvqi_chan_layout_pack(const kvqi_chan_layout *L, kvqi_chan_layout *dst, void *mem) {
    size_t n = (((size_t)L->n_planes + 15) & ~(size_t)15) + 16, dim = L->dim;
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

void kvqi_chan_put_codes(const kvqi_chan_layout *L, uint8_t *unit, uint32_t l, const uint8_t *codes) {
    for (uint32_t p = 0; p < L->n_planes; p++)
        if (L->width[p]) /* else padding */
            kvqi_chan_plane_put(L, unit, p, l, (uint32_t)codes[L->chan[p]] >> L->shift[p]);
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

/* Slot group sg's four values for token l of a unit: a whole group's channels' codes
 * (its planes shifted and added), else one plane group's values. */
static void slot_values(const kvqi_chan_layout *L, const uint8_t *unit, uint32_t sg, uint32_t l, int32_t v[4]) {
    uint32_t w4, w2, w1, g4 = 0, g2 = L->n4, g1 = L->n4 + L->n2;
    kvqi_chan_whole_groups(L, &w4, &w2, &w1);
    for (uint32_t k = 0; k < 5; k++) {
        uint32_t b = whole_bits[k];
        const uint8_t *pl = whole_planes[b];
        if (sg < L->nc[b]) { /* group sg of b bits: its plane groups from g4, g2, g1 on */
            uint32_t gs[4] = {g4 + 2 * sg, g4 + 2 * sg + 1, g2 + sg, g1 + sg};
            if (b != 8) gs[0] = g4 + sg;
            for (uint32_t i = 0; i < 4; i++) {
                v[i] = 0;
                for (uint32_t m = 0; m < 4; m++)
                    if (pl[m] != 255) v[i] += (int32_t)(kvqi_chan_plane_at(L, unit, 4 * gs[m] + i, l) << pl[m]);
            }
            return;
        }
        sg -= L->nc[b];
        g4 += pl[0] != 255 ? (b == 8 ? 2 : 1) * L->nc[b] : 0;
        g2 += pl[2] != 255 ? L->nc[b] : 0;
        g1 += pl[3] != 255 ? L->nc[b] : 0;
    }
    /* the other plane groups, in plane order */
    uint32_t g = sg < L->n4 - w4 ? w4 + sg
                 : sg < L->n4 - w4 + L->n2 - w2 ? L->n4 + w2 + (sg - (L->n4 - w4))
                                                 : L->n4 + L->n2 + w1 + (sg - (L->n4 - w4) - (L->n2 - w2));
    for (uint32_t i = 0; i < 4; i++) v[i] = (int32_t)kvqi_chan_plane_at(L, unit, 4 * g + i, l);
}

void kvqi_chan_dot_scalar(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                          const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld) {
    uint32_t P = L->n_padded, l0 = (uint32_t)(in % 64);
    const uint8_t *unit = block + 4 * (size_t)L->dim + (in / 64) * L->unit_bytes;
    for (uint32_t h = 0; h < G; h++) {
        const int16_t *Wh = W + (size_t)h * P;
        for (uint32_t l = l0; l < l0 + n; l++) {
            int32_t acc = 0;
            for (uint32_t s = 0; s < L->n_slots; s += 4) { /* weights in pairs: slots 0, 2, 1, 3 */
                int32_t v[4];
                slot_values(L, unit, s / 4, l, v);
                acc += Wh[s] * v[0] + Wh[s + 1] * v[2] + Wh[s + 2] * v[1] + Wh[s + 3] * v[3];
            }
            scores[h * ld + l - l0] = fmaf((float)acc, scale[h], bias[h]);
        }
    }
}

void kvqi_chan_codes_scalar(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                            uint8_t *codes) {
    for (uint32_t j = 0; j < dim; j++) codes[j] = (uint8_t)kvqi_chan_code(x[j], lo[j], step[j], top[j]);
}

void kvqi_chan_fit_sums_scalar(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                               float *acc) {
    for (uint32_t j = 0; j < dim; j++) {
        float k = (float)kvqi_chan_code(x[j], lo[j], step[j], top[j]);
        acc[j] += k;
        acc[dim + j] += k * k;
        acc[2 * (size_t)dim + j] += x[j];
        acc[3 * (size_t)dim + j] += x[j] * k;
    }
}

/* Channel keys coded before RoPE (cache_kernels.h, chan_prerope_scores): each token's
 * keys from its planes in plane order, its RoPE pairs turned by its offset's angle, then
 * the heads' sums, in the order every ISA takes. */
void kvqi_chan_prerope_scores_scalar(const uint8_t *block, const kvqi_chan_layout *L, const float *qt, uint32_t G,
                                     const float *cs, const float *sn, size_t C, size_t u0, int neox, size_t in,
                                     size_t n, float *scores, size_t ld) {
    uint32_t dim = L->dim, half = dim / 2, l0 = (uint32_t)(in % 64);
    const uint8_t *unit = block + 4 * (size_t)dim + (in / 64) * L->unit_bytes;
    float k[KVQI_QUANT_MAX_DIM], kt[KVQI_QUANT_MAX_DIM], lo[KVQI_QUANT_MAX_DIM], step[KVQI_QUANT_MAX_DIM];
    uint8_t seen[KVQI_QUANT_MAX_DIM];
    for (uint32_t j = 0; j < dim; j++) { /* the block's fp16 minima, then steps */
        uint16_t a, b;
        memcpy(&a, block + 2 * (size_t)j, 2);
        memcpy(&b, block + 2 * ((size_t)dim + j), 2);
        lo[j] = kvqi_fp16_to_fp32(a);
        step[j] = kvqi_fp16_to_fp32(b);
    }
    for (size_t t = 0; t < n; t++) {
        uint32_t l = l0 + (uint32_t)t;
        size_t u = u0 + l;
        memset(seen, 0, dim);
        for (uint32_t p = 0; p < L->n_planes; p++) {
            if (!L->width[p]) continue;
            uint32_t j = L->chan[p];
            float v = (float)kvqi_chan_plane_at(L, unit, p, l), sc = step[j] * (float)(1u << L->shift[p]);
            k[j] = fmaf(v, sc, seen[j] ? k[j] : lo[j]);
            seen[j] = 1;
        }
        for (uint32_t j = 0; j < dim; j++)
            if (!seen[j]) k[j] = lo[j];
        for (uint32_t i = 0; i < half; i++) {
            uint32_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            float c = cs[i * C + u], s = sn[i * C + u];
            kt[a] = fmaf(k[a], c, -(k[b] * s));
            kt[b] = fmaf(k[a], s, k[b] * c);
        }
        for (uint32_t h = 0; h < G; h++) {
            const float *q = qt + (size_t)h * dim;
            float A = 0.0f, B = 0.0f;
            for (uint32_t i = 0; i < half; i++) {
                uint32_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
                A = fmaf(q[a], kt[a], A);
                B = fmaf(q[b], kt[b], B);
            }
            scores[h * ld + t] = A + B;
        }
    }
}

uint32_t kvqi_chan_pre_ops(const kvqi_chan_layout *L, const float *step, kvqi_pre_op *ops, uint16_t *bare,
                           uint32_t *n_bare) {
    uint8_t seen[KVQI_QUANT_MAX_DIM];
    uint32_t n = 0, nb = 0;
    memset(seen, 0, L->dim);
    for (uint32_t p = 0; p < L->n_planes; p++) {
        if (!L->width[p]) continue;
        uint32_t j = L->chan[p];
        ops[n].grp = (uint16_t)(p / 4);
        ops[n].lane = (uint16_t)(p % 4);
        ops[n].chan = (uint16_t)j;
        ops[n].first = !seen[j];
        ops[n].sc = step[j] * (float)(1u << L->shift[p]);
        seen[j] = 1;
        n++;
    }
    for (uint32_t j = 0; j < L->dim; j++)
        if (!seen[j]) bare[nb++] = (uint16_t)j;
    *n_bare = nb;
    return n;
}
