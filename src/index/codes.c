/* codes.c - RaBitQ codes of one rotated residual r: the sign bits in fast-scan
 * blocks with the estimator factors (arXiv 2405.12497, sections 3.2-3.3), and the
 * extended b-bit code (arXiv 2409.09913): y_i = sign(r_i) (u_i + 1/2), u_i in
 * [0, 2^(b-1) - 1], chosen to maximize <y/||y||, r/||r||>. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/index_internal.h"

void kvqi_list_free(kvqi_ivf_list *l) {
    free(l->codes);
    free(l->f_add);
    free(l->f_rescale);
    free(l->f_err);
    free(l->f_pop);
    free(l->ex_codes);
    free(l->ex_rescale);
    free(l->ex_err);
    free(l->rows);
    memset(l, 0, sizeof *l);
}

void kvqi_ex_pack(const uint8_t *v, uint32_t n, unsigned b, uint8_t *out) {
    for (uint32_t g = 0; g < n; g += 8) {
        uint64_t w = 0;
        for (unsigned t = 0; t < 8; t++) w |= (uint64_t)v[g + t] << (t * b);
        for (unsigned k = 0; k < b; k++) out[(size_t)g / 8 * b + k] = (uint8_t)(w >> (8 * k));
    }
}

void kvqi_ex_unpack(const uint8_t *in, uint32_t n, unsigned b, uint8_t *v) {
    const uint64_t mask = (1u << b) - 1u;
    for (uint32_t g = 0; g < n; g += 8) {
        uint64_t w = 0;
        const uint8_t *p = in + (size_t)g / 8 * b;
        for (unsigned k = 0; k < b; k++) w |= (uint64_t)p[k] << (8 * k);
        for (unsigned t = 0; t < 8; t++) v[g + t] = (uint8_t)((w >> (t * b)) & mask);
    }
}

size_t kvqi_list_bytes(const kvq_index *ix, const kvqi_ivf_list *l) {
    size_t blocks = (l->n + KVQI_FS_BLOCK - 1) / KVQI_FS_BLOCK;
    size_t b = blocks * ix->n_groups * 16 + (size_t)l->n * (4 * sizeof(float) + sizeof(uint32_t));
    if (ix->cfg.bits > 1) b += (size_t)l->n * (ix->ex_row + 2 * sizeof(float));
    return b;
}

/* Grow an array from old_count to count items, on a 64-byte boundary (realloc gave 16:
 * a 64-byte code row or factor load then straddled two cache lines). */
static kvq_status grow(void **p, size_t old_count, size_t count, size_t size) {
    size_t bytes;
    if (kvqi_mul_size(count, size, &bytes) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    void *q = kvqi_alloc_array(count ? count : 1, size ? size : 1);
    if (!q) return KVQ_ERR_NOMEM;
    if (*p && old_count) memcpy(q, *p, (old_count < count ? old_count : count) * size);
    kvqi_free(*p);
    *p = q;
    return KVQ_OK;
}

kvq_status kvqi_list_reserve(kvq_index *ix, kvqi_ivf_list *l, uint32_t need) {
    if (need <= l->cap) return KVQ_OK;
    uint64_t cap = (uint64_t)l->cap * 2;
    if (cap < need) cap = need;
    cap = (cap + KVQI_FS_BLOCK - 1) / KVQI_FS_BLOCK * KVQI_FS_BLOCK;
    if (cap > UINT32_MAX) return KVQ_ERR_CAPACITY;
    size_t block_bytes = (size_t)ix->n_groups * 16;
    size_t old_blocks = l->cap / KVQI_FS_BLOCK, new_blocks = (size_t)cap / KVQI_FS_BLOCK;
    kvq_status st;
    if ((st = grow((void **)&l->codes, old_blocks, new_blocks, block_bytes)) != KVQ_OK) return st;
    memset(l->codes + old_blocks * block_bytes, 0, (new_blocks - old_blocks) * block_bytes);
    if ((st = grow((void **)&l->f_add, l->cap, cap, sizeof(float))) != KVQ_OK ||
        (st = grow((void **)&l->f_rescale, l->cap, cap, sizeof(float))) != KVQ_OK ||
        (st = grow((void **)&l->f_err, l->cap, cap, sizeof(float))) != KVQ_OK ||
        (st = grow((void **)&l->f_pop, l->cap, cap, sizeof(float))) != KVQ_OK ||
        (st = grow((void **)&l->rows, l->cap, cap, sizeof(uint32_t))) != KVQ_OK)
        return st;
    /* block kernels read whole blocks: the slots past n hold zeros, not garbage */
    size_t fresh = (size_t)(cap - l->cap) * sizeof(float);
    memset(l->f_add + l->cap, 0, fresh);
    memset(l->f_rescale + l->cap, 0, fresh);
    memset(l->f_err + l->cap, 0, fresh);
    memset(l->f_pop + l->cap, 0, fresh);
    if (ix->cfg.bits > 1) {
        if ((st = grow((void **)&l->ex_codes, l->cap, cap, ix->ex_row)) != KVQ_OK ||
            (st = grow((void **)&l->ex_rescale, l->cap, cap, sizeof(float))) != KVQ_OK ||
            (st = grow((void **)&l->ex_err, l->cap, cap, sizeof(float))) != KVQ_OK)
            return st;
    }
    l->cap = (uint32_t)cap;
    return KVQ_OK;
}

/* <y, |o|> / ||y|| for the code of scale t (all inputs are |o_i|). */
static double ex_cosine(const float *a, uint32_t d, double t, uint32_t umax) {
    double num = 0.0, den = 0.0;
    for (uint32_t i = 0; i < d; i++) {
        double u = floor(t * a[i]);
        if (u > umax) u = umax;
        double y = u + 0.5;
        num += y * a[i];
        den += y * y;
    }
    return num / sqrt(den);
}

/* The scale t of the extended code: a geometric grid from the point where the largest
 * coordinate first leaves level 0 up to where most coordinates saturate, then a finer
 * grid around the best point. Near-optimal; the paper's exact search enumerates every
 * breakpoint, which costs O(d 2^b log d). */
static double ex_best_scale(const float *a, uint32_t d, uint32_t umax) {
    float amax = 0.0f;
    for (uint32_t i = 0; i < d; i++) amax = a[i] > amax ? a[i] : amax;
    if (amax <= 0.0f) return 1.0;
    double lo = 1.0 / amax, hi = 6.0 * (umax + 1) / amax;
    enum { COARSE = 48, FINE = 24 };
    double step = pow(hi / lo, 1.0 / (COARSE - 1)), best_t = lo, best = -1.0;
    for (int s = 0; s < COARSE; s++) {
        double t = lo * pow(step, s), c = ex_cosine(a, d, t, umax);
        if (c > best) best = c, best_t = t;
    }
    double flo = best_t / step, fstep = pow(step * step, 1.0 / (FINE - 1));
    for (int s = 0; s < FINE; s++) {
        double t = flo * pow(fstep, s), c = ex_cosine(a, d, t, umax);
        if (c > best) best = c, best_t = t;
    }
    return best_t;
}

void kvqi_encode_into_list(const kvq_index *ix, kvqi_ivf_list *l, uint32_t pos,
                           const float *r, float *scratch) {
    const uint32_t d = ix->d;
    uint8_t *blk = l->codes + (size_t)(pos / KVQI_FS_BLOCK) * ix->n_groups * 16;
    unsigned byte, shift;
    kvqi_fs_slot(pos % KVQI_FS_BLOCK, &byte, &shift);
    double n2 = 0.0, s1 = 0.0;
    unsigned pop = 0;
    for (uint32_t g = 0; g < ix->n_groups; g++) {
        unsigned nib = 0;
        for (unsigned t = 0; t < 4; t++) {
            float v = r[4 * g + t];
            if (v > 0.0f) nib |= 1u << t;
        }
        pop += (unsigned)__builtin_popcount(nib);
        uint8_t *p = blk + (size_t)g * 16 + byte;
        *p = (uint8_t)((*p & ~(15u << shift)) | (nib << shift));
    }
    for (uint32_t i = 0; i < d; i++) {
        n2 += (double)r[i] * r[i];
        s1 += fabs((double)r[i]);
    }
    double norm = sqrt(n2), sqrt_dm1 = sqrt(d > 1 ? (double)(d - 1) : 1.0);
    l->f_add[pos] = kvqi_coded_l2(ix) ? (float)n2 : 0.0f;
    l->f_pop[pos] = (float)pop;
    l->rows[pos] = 0;
    if (s1 <= 0.0) { /* the vector is its centroid: every estimate is exact */
        l->f_rescale[pos] = 0.0f;
        l->f_err[pos] = 0.0f;
    } else {
        double a = s1 / (sqrt((double)d) * norm);
        if (a > 1.0) a = 1.0;
        l->f_rescale[pos] = (float)(n2 / s1);
        l->f_err[pos] = (float)(norm * sqrt(1.0 - a * a) / (a * sqrt_dm1));
    }
    if (ix->cfg.bits < 2) return;

    const uint32_t umax = (1u << (ix->cfg.bits - 1)) - 1u;
    /* the values go to the tail of scratch (d_pad floats after a[d]), then packed */
    uint8_t *ex = (uint8_t *)(void *)(scratch + ix->d_pad);
    float *a = scratch;
    for (uint32_t i = 0; i < d; i++) a[i] = fabsf(r[i]);
    double t = s1 > 0.0 ? ex_best_scale(a, d, umax) : 1.0;
    double yr = 0.0, yy = 0.0;
    for (uint32_t i = 0; i < d; i++) {
        double u = floor(t * a[i]);
        if (u > umax) u = umax;
        ex[i] = (uint8_t)(r[i] > 0.0f ? umax + 1u + (uint32_t)u : umax - (uint32_t)u);
        yr += (u + 0.5) * a[i];
        yy += (u + 0.5) * (u + 0.5);
    }
    for (uint32_t i = d; i < ix->d_pad; i++) ex[i] = 0;
    kvqi_ex_pack(ex, ix->d_pad, ix->cfg.bits, l->ex_codes + (size_t)pos * ix->ex_row);
    if (yr <= 0.0) {
        l->ex_rescale[pos] = 0.0f;
        l->ex_err[pos] = 0.0f;
        return;
    }
    double ae = yr / (sqrt(yy) * norm);
    if (ae > 1.0) ae = 1.0;
    l->ex_rescale[pos] = (float)(n2 / yr);
    l->ex_err[pos] = (float)(norm * sqrt(1.0 - ae * ae) / (ae * sqrt_dm1));
}
