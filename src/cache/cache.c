/*
 * cache.c - the compressed KV cache of one layer: a chunked arena of key and value
 * codes, an optional exact window of recent tokens, optional fp16 outlier key channels
 * (the seed's two-stream cache), exact memory accounting, and per-layer cache sets.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_internal.h"
#include "cpu/cpu.h"
#include "cpu/quant_kernels.h"
#include "quant/quant.h"

#define DEFAULT_CHUNK_TOKENS 64u
#define MAX_CHUNK_TOKENS (1u << 16)
#define MAX_DIM 4096u
#define MAX_KV_HEADS 4096u
#define MAX_SINK_TOKENS 1024u

/* ------------------------------------------------------------------ config */

KVQ_API kvq_status kvq_cache_config_init(kvq_cache_config *cfg, uint32_t n_kv_heads,
                                         uint32_t head_dim, const char *key_spec,
                                         const char *value_spec, char *msg, size_t msg_size) {
    if (!cfg || !key_spec || !value_spec) return KVQ_ERR_INVALID_ARG;
    if (n_kv_heads == 0 || head_dim == 0) {
        kvqi_set_msg(msg, msg_size, "n_kv_heads and head_dim must be positive");
        return KVQ_ERR_INVALID_ARG;
    }
    memset(cfg, 0, sizeof *cfg);
    cfg->n_kv_heads = n_kv_heads;
    cfg->head_dim = head_dim;
    cfg->chunk_tokens = DEFAULT_CHUNK_TOKENS;
    kvq_status st = kvq_config_parse(key_spec, head_dim, &cfg->key, msg, msg_size);
    if (st != KVQ_OK) return st;
    return kvq_config_parse(value_spec, head_dim, &cfg->value, msg, msg_size);
}

/* ------------------------------------------------------- fast-path probing */

/* A few seeded vectors with a wide dynamic range, to check a layout end to end. */
static void probe_vectors(float *x, uint32_t dim, uint32_t n) {
    kvqi_rng r;
    kvqi_rng_seed(&r, 0x6b7671636163ULL);
    for (size_t i = 0; i < (size_t)n * dim; i++) {
        float s = (i % 7 == 3) ? 8.0f : 1.0f;
        x[i] = (float)kvqi_rng_normal(&r) * s;
    }
}

static float fp16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return kvqi_fp16_to_fp32(h);
}

/* b-bit index `coord` of an LSB-first stream (3-bit indices may straddle two bytes) */
static uint32_t rot_index_at(const uint8_t *idx, uint32_t bits, uint32_t coord) {
    size_t bit = (size_t)coord * bits;
    uint32_t v = idx[bit / 8];
    if (bit % 8 + bits > 8) v |= (uint32_t)idx[bit / 8 + 1] << 8;
    return (v >> (bit % 8)) & ((1u << bits) - 1u);
}

static void rot_set_index(uint8_t *idx, uint32_t bits, uint32_t coord, uint32_t v) {
    for (uint32_t i = 0; i < bits; i++) {
        size_t bit = (size_t)coord * bits + i;
        uint8_t m = (uint8_t)(1u << (bit % 8));
        idx[bit / 8] = (uint8_t)(((v >> i) & 1u) ? (idx[bit / 8] | m) : (idx[bit / 8] & ~m));
    }
}

/* Decodes one code in a known layout (the reference the kernels follow). */
static void decode_known(kvqi_code_path path, const kvqi_rot_layout *rot, const float *rotation,
                         uint32_t dim, const uint8_t *code, float *x) {
    switch (path) {
    case KVQI_PATH_F16:
        for (uint32_t j = 0; j < dim; j++) {
            uint16_t h;
            memcpy(&h, code + 2 * j, 2);
            x[j] = kvqi_fp16_to_fp32(h);
        }
        break;
    case KVQI_PATH_Q8_0:
        for (uint32_t b = 0; b < dim / 32; b++) {
            const uint8_t *blk = code + 34 * b;
            uint16_t h;
            memcpy(&h, blk, 2);
            float d = kvqi_fp16_to_fp32(h);
            for (uint32_t j = 0; j < 32; j++) x[32 * b + j] = d * (float)(int8_t)blk[2 + j];
        }
        break;
    case KVQI_PATH_Q4_0:
        for (uint32_t b = 0; b < dim / 32; b++) {
            const uint8_t *blk = code + 18 * b;
            uint16_t h;
            memcpy(&h, blk, 2);
            float d = kvqi_fp16_to_fp32(h);
            for (uint32_t j = 0; j < 16; j++) {
                x[32 * b + j] = d * (float)((int)(blk[2 + j] & 15) - 8);
                x[32 * b + j + 16] = d * (float)((int)(blk[2 + j] >> 4) - 8);
            }
        }
        break;
    case KVQI_PATH_ROT: {
        float norm = fp16_at(code + rot->norm_offset);
        for (uint32_t i = 0; i < dim; i++) x[i] = 0.0f;
        for (uint32_t r = 0; r < dim; r++) {
            float u = KVQI_ROT_CENT(rot, 0)[rot_index_at(code + rot->index_offset[0], rot->bits, r)];
            for (uint32_t p = 1; p < rot->n_pass; p++)
                u += fp16_at(code + rot->scale_offset[p]) *
                     KVQI_ROT_CENT(rot, p)[rot_index_at(code + rot->index_offset[p], rot->bits, r)];
            /* x = R^T u: row r of R scaled by u_r */
            for (uint32_t i = 0; i < dim; i++) x[i] += rotation[(size_t)r * dim + i] * u * norm;
        }
        break;
    }
    default: break;
    }
}

/* The rotated-code layout of turboquant_mse (fp16 norm, one pass of indices into the
 * Beta(d) Lloyd-Max codebook) and turboquant_rvq (fp16 norm, fp16 spreads of passes
 * 2..R, R passes: Gaussian then Laplacian codebooks, all scaled by norm / sqrt(d)), as
 * docs/METHODS.md gives them. The codebooks come from the same core routine the
 * quantizer uses; the rotation is read back through kvq_decode (below). */
static int rot_layout_for(const kvq_config *qc, size_t code_size, kvqi_rot_layout *L) {
    uint32_t d = qc->dim, b = qc->bits;
    if (!(b >= 1 && b <= 4) && b != 8) return 0;
    if (d % (b == 2 ? 64 : 32)) return 0;
    kvqi_free(L->cent8); /* a layout made before for this side */
    memset(L, 0, sizeof *L);
    L->dim = d;
    L->bits = b;
    L->code_size = (uint32_t)code_size;
    size_t idx_bytes = kvqi_packed_size(d, b);
    double mse;
    float thr[255];
    if (qc->method == KVQ_METHOD_TURBOQUANT_MSE) {
        if (code_size != 2 + idx_bytes) return 0;
        if (b == 8 && !(L->cent8 = kvqi_calloc_array(256, sizeof(float)))) return 0;
        if (kvqi_lloyd_max(KVQI_DIST_BETA, (double)d, b, KVQI_ROT_CENT(L, 0), thr, &mse) != KVQ_OK)
            return 0;
        L->n_pass = 1;
        L->index_offset[0] = 2;
        if (b >= 2 && b <= 4) {
            /* 8-bit centroids for the integer key path: symmetric scale, offset 128 */
            float cmax = 0.0f;
            for (uint32_t i = 0; i < (1u << b); i++) cmax = fmaxf(cmax, fabsf(KVQI_ROT_CENT(L, 0)[i]));
            if (cmax > 0.0f) {
                L->has_u8 = 1;
                L->cent_scale = cmax / 127.0f;
                memset(L->cent_u8, 128, sizeof L->cent_u8);
                for (uint32_t i = 0; i < (1u << b); i++)
                    L->cent_u8[i] = (uint8_t)(128 + (int)lrintf(KVQI_ROT_CENT(L, 0)[i] / L->cent_scale));
            }
        }
        return 1;
    }
    if (qc->method == KVQ_METHOD_TURBOQUANT_RVQ) {
        uint32_t R = qc->residuals;
        if (b > 4 || R < 1 || R > KVQI_ROT_MAX_PASSES || code_size != 2 * R + R * idx_bytes)
            return 0;
        float lap[256];
        if (kvqi_lloyd_max(KVQI_DIST_GAUSSIAN, 0.0, b, KVQI_ROT_CENT(L, 0), thr, &mse) != KVQ_OK ||
            kvqi_lloyd_max(KVQI_DIST_LAPLACE, 0.0, b, lap, thr, &mse) != KVQ_OK)
            return 0;
        float inv_sqrt_d = 1.0f / sqrtf((float)d);
        L->n_pass = R;
        for (uint32_t p = 0; p < R; p++) {
            L->scale_offset[p] = p ? 2 * p : 0;
            L->index_offset[p] = (uint32_t)(2 * R + p * idx_bytes);
            for (uint32_t i = 0; i < (1u << b); i++)
                KVQI_ROT_CENT(L, p)[i] = (p ? lap[i] : KVQI_ROT_CENT(L, 0)[i]) * (p ? inv_sqrt_d : 1.0f);
        }
        for (uint32_t i = 0; i < (1u << b); i++) KVQI_ROT_CENT(L, 0)[i] *= inv_sqrt_d;
        return 1;
    }
    return 0;
}

/* Reads the rotation R (row r = R^T e_r) back through kvq_decode: with norm 1 and unit
 * pass scales, moving coordinate r of pass 0 from index lo to hi changes the decoded
 * vector by (c[hi] - c[lo]) R^T e_r. lo is the centroid nearest zero (a small base
 * vector) and hi the one farthest from it (a large step), for precision. */
static uint32_t nearest_zero(const float *c, uint32_t k) {
    uint32_t best = 0;
    for (uint32_t i = 1; i < k; i++)
        if (fabsf(c[i]) < fabsf(c[best])) best = i;
    return best;
}

static kvq_status extract_rotation(kvqi_side *s, uint32_t dim) {
    const kvqi_rot_layout *L = &s->rot;
    uint32_t k = 1u << L->bits, lo = nearest_zero(KVQI_ROT_CENT(L, 0), k), hi = lo;
    for (uint32_t i = 0; i < k; i++)
        if (fabsf(KVQI_ROT_CENT(L, 0)[i] - KVQI_ROT_CENT(L, 0)[lo]) >
            fabsf(KVQI_ROT_CENT(L, 0)[hi] - KVQI_ROT_CENT(L, 0)[lo]))
            hi = i;
    float delta = KVQI_ROT_CENT(L, 0)[hi] - KVQI_ROT_CENT(L, 0)[lo];
    if (!(delta != 0.0f)) return KVQ_ERR_STATE;
    size_t cs = s->code_size, batch = 32;
    uint8_t *codes = kvqi_calloc_array(batch + 1, cs);
    float *dec = kvqi_alloc_array((batch + 1) * dim, sizeof(float));
    s->rotation = kvqi_alloc_array((size_t)dim * dim, sizeof(float));
    if (!codes || !dec || !s->rotation) {
        kvqi_free(codes);
        kvqi_free(dec);
        return KVQ_ERR_NOMEM;
    }
    uint16_t one = kvqi_fp32_to_fp16(1.0f);
    uint8_t *base = codes + batch * cs;
    memcpy(base + L->norm_offset, &one, 2);
    for (uint32_t p = 0; p < L->n_pass; p++) {
        if (p) memcpy(base + L->scale_offset[p], &one, 2);
        uint32_t z = p ? nearest_zero(KVQI_ROT_CENT(L, p), k) : lo;
        for (uint32_t r = 0; r < dim; r++) rot_set_index(base + L->index_offset[p], L->bits, r, z);
    }
    kvq_status st = kvq_decode(s->quant, base, 1, dec + batch * dim);
    for (uint32_t r0 = 0; r0 < dim && st == KVQ_OK; r0 += (uint32_t)batch) {
        uint32_t nb = KVQI_MIN((uint32_t)batch, dim - r0);
        for (uint32_t i = 0; i < nb; i++) {
            memcpy(codes + i * cs, base, cs);
            rot_set_index(codes + i * cs + L->index_offset[0], L->bits, r0 + i, hi);
        }
        st = kvq_decode(s->quant, codes, nb, dec);
        for (uint32_t i = 0; i < nb && st == KVQ_OK; i++)
            for (uint32_t j = 0; j < dim; j++)
                s->rotation[(size_t)(r0 + i) * dim + j] =
                    (dec[(size_t)i * dim + j] - dec[batch * dim + j]) / delta;
    }
    kvqi_free(codes);
    kvqi_free(dec);
    return st;
}

/* Rotation rows into the kernels' lane order. Queries are rotated by scoring them
 * against these rows and outputs by summing them, so no transpose is kept. */
static kvq_status permute_rotation(kvqi_side *s, uint32_t dim) {
    if (!s->rotation) return KVQ_OK;
    float *perm = kvqi_alloc_array((size_t)dim * dim, sizeof(float));
    if (!perm) return KVQ_ERR_NOMEM;
    for (uint32_t p = 0; p < dim; p++)
        memcpy(perm + (size_t)p * dim,
               s->rotation + (size_t)kvqi_rot_lane_coordinate(s->rot.bits, p) * dim,
               dim * sizeof(float));
    kvqi_free(s->rotation);
    s->rotation = perm;
    return KVQ_OK;
}

/* 1-bit sign codes (cache_kernels.h): QJL's [fp16 ||x||][signs of S x], RaBitQ 1-bit
 * without IVF and with a float query [fp16 ||x||][fp16 <o^,o>][signs of Pi x], and
 * turboquant_prod [fp16 ||x||][(b-1)-bit mse indices][fp16 ||r||][signs of S r], as
 * docs/METHODS.md gives them. The projection is read back through kvq_decode (below). */
#define SQRT_HALF_PI 1.2533141373155003f
static int sign_layout_for(const kvq_config *qc, size_t code_size, kvqi_side *s) {
    uint32_t d = qc->dim, m = qc->proj_dim ? qc->proj_dim : qc->dim;
    kvqi_sign_layout *S = &s->signs;
    memset(S, 0, sizeof *S);
    S->code_size = (uint32_t)code_size;
    S->den_offset = KVQI_SIGN_NO_DEN;
    s->signs_mse = 0;
    if (qc->method == KVQ_METHOD_QJL) {
        if (code_size != 2 + ((size_t)m + 7) / 8) return 0;
        S->bits_offset = 2;
        S->c0 = SQRT_HALF_PI / (float)m;
    } else if (qc->method == KVQ_METHOD_RABITQ) {
        m = d;
        if (qc->bits != 1 || qc->nlist || qc->query_bits != 32 ||
            code_size != 4 + ((size_t)d + 7) / 8)
            return 0;
        S->bits_offset = 4;
        S->den_offset = 2;
        S->c0 = 1.0f / sqrtf((float)d);
    } else if (qc->method == KVQ_METHOD_TURBOQUANT_PROD) {
        uint32_t b = qc->bits - 1;
        size_t P = kvqi_packed_size(d, b);
        if (b < 1 || b > 4 || code_size != 4 + P + ((size_t)m + 7) / 8) return 0;
        /* the mse part is a turboquant_mse code of b bits at the same offsets */
        kvq_config mc = *qc;
        mc.method = KVQ_METHOD_TURBOQUANT_MSE;
        mc.bits = b;
        if (!rot_layout_for(&mc, 2 + P, &s->rot)) return 0;
        s->rot.code_size = (uint32_t)code_size;
        s->rot.has_u8 = 0;
        S->num_offset = (uint32_t)(2 + P);
        S->bits_offset = (uint32_t)(4 + P);
        S->c0 = SQRT_HALF_PI / (float)m;
        s->signs_mse = 1;
    } else {
        return 0;
    }
    /* attend builds z in the decode buffer, behind the query: m + d <= BLOCK * d floats */
    if (m == 0 || m % 8 || m > KVQI_SIGN_MAX_M || m > (KVQI_ATTEND_BLOCK - 1) * d) return 0;
    S->m = m;
    return 1;
}

/* Reads the projection P (z = P q) back through kvq_decode: each layout decodes its sign
 * part as c0 * f * P^T s (s = +-1 from the bits), so with f = 1 (and the mse part's norm
 * 0), setting bit i moves the decoded vector by 2 c0 P^T e_i. */
static kvq_status extract_projection(kvqi_side *s, uint32_t dim) {
    const kvqi_sign_layout *S = &s->signs;
    uint32_t m = S->m;
    size_t cs = s->code_size, batch = 32;
    uint8_t *codes = kvqi_calloc_array(batch + 1, cs);
    float *dec = kvqi_alloc_array((batch + 1) * dim, sizeof(float));
    s->proj = kvqi_alloc_array((size_t)m * dim, sizeof(float));
    if (!codes || !dec || !s->proj) {
        kvqi_free(codes);
        kvqi_free(dec);
        return KVQ_ERR_NOMEM;
    }
    uint16_t one = kvqi_fp32_to_fp16(1.0f);
    uint8_t *base = codes + batch * cs;
    memcpy(base + S->num_offset, &one, 2);
    if (S->den_offset != KVQI_SIGN_NO_DEN) memcpy(base + S->den_offset, &one, 2);
    kvq_status st = kvq_decode(s->quant, base, 1, dec + batch * dim);
    float inv = 1.0f / (2.0f * S->c0);
    for (uint32_t r0 = 0; r0 < m && st == KVQ_OK; r0 += (uint32_t)batch) {
        uint32_t nb = KVQI_MIN((uint32_t)batch, m - r0);
        for (uint32_t i = 0; i < nb; i++) {
            uint8_t *c = codes + i * cs;
            memcpy(c, base, cs);
            c[S->bits_offset + (r0 + i) / 8] |= (uint8_t)(1u << ((r0 + i) % 8));
        }
        st = kvq_decode(s->quant, codes, nb, dec);
        for (uint32_t i = 0; i < nb && st == KVQ_OK; i++)
            for (uint32_t j = 0; j < dim; j++)
                s->proj[(size_t)(r0 + i) * dim + j] =
                    (dec[(size_t)i * dim + j] - dec[batch * dim + j]) * inv;
    }
    kvqi_free(codes);
    kvqi_free(dec);
    return st;
}

/* The sign estimate of code c for query q through the read-back projection (and the mse
 * part through the read-back rotation), in double: what the kernels compute. */
static double sign_score_known(const kvqi_side *s, uint32_t dim, const float *q, const uint8_t *c,
                               float *tmp) {
    const kvqi_sign_layout *S = &s->signs;
    double sel = 0.0, tot = 0.0;
    for (uint32_t i = 0; i < S->m; i++) {
        double z = 0.0;
        for (uint32_t j = 0; j < dim; j++) z += (double)s->proj[(size_t)i * dim + j] * q[j];
        tot += z;
        if ((c[S->bits_offset + i / 8] >> (i % 8)) & 1) sel += z;
    }
    double f = fp16_at(c + S->num_offset);
    if (S->den_offset != KVQI_SIGN_NO_DEN) f /= fp16_at(c + S->den_offset);
    double score = S->c0 * f * (2.0 * sel - tot);
    if (s->signs_mse) {
        decode_known(KVQI_PATH_ROT, &s->rot, s->rotation, dim, c, tmp);
        for (uint32_t j = 0; j < dim; j++) score += (double)tmp[j] * q[j];
    }
    return score;
}

/* Sign keys: the layout, projection (and rotation) read back, then proven on probe
 * vectors: kvq_score and the read-back estimate agree to 1e-4 of the largest score. */
static kvq_status try_signs(kvqi_side *s, const kvq_config *qc, uint32_t dim) {
    if (!sign_layout_for(qc, s->code_size, s)) return KVQ_OK;
    kvq_status st = extract_projection(s, dim);
    if (st == KVQ_OK && s->signs_mse) st = extract_rotation(s, dim);
    if (st == KVQ_ERR_NOMEM) return st;
    if (st != KVQ_OK) return KVQ_OK;
    enum { N_PROBE = 6 };
    float *x = kvqi_alloc_array((size_t)(N_PROBE + 1) * dim + N_PROBE, sizeof(float));
    uint8_t *codes = kvqi_alloc_array(N_PROBE, s->code_size);
    if (!x || !codes) {
        kvqi_free(x);
        kvqi_free(codes);
        return KVQ_ERR_NOMEM;
    }
    float *tmp = x + (size_t)N_PROBE * dim, *ref = tmp + dim;
    probe_vectors(x, dim, N_PROBE);
    int same = kvq_encode(s->quant, x, N_PROBE, codes) == KVQ_OK;
    for (uint32_t qi = 0; qi < N_PROBE && same; qi++) {
        const float *q = x + (size_t)((qi + 1) % N_PROBE) * dim;
        if (kvq_score(s->quant, q, codes, N_PROBE, ref) != KVQ_OK) {
            same = 0;
            break;
        }
        float amax = 0.0f;
        for (uint32_t i = 0; i < N_PROBE; i++) amax = fmaxf(amax, fabsf(ref[i]));
        for (uint32_t i = 0; i < N_PROBE && same; i++) {
            double mine = sign_score_known(s, dim, q, codes + i * s->code_size, tmp);
            if (!(fabs(mine - ref[i]) <= 1e-4 * amax)) same = 0;
        }
    }
    kvqi_free(x);
    kvqi_free(codes);
    if (same) s->path = KVQI_PATH_SIGNS;
    return KVQ_OK;
}

/* A rotated side whose quantizer rotates by a randomized Hadamard: when its transform
 * and inverse reproduce the matrix read back (to 1e-5 of the largest coordinate on probe
 * vectors), attend applies the transform itself (dim log dim operations, no dim x dim
 * matrix held) and the matrix is dropped. */
static kvq_status structured_rotation(kvqi_side *s, uint32_t dim) {
    const kvqi_rotation *R = &s->quant->rot;
    if (s->path != KVQI_PATH_ROT || !s->rotation || R->kind != KVQI_ROT_HADAMARD || R->dim != dim)
        return KVQ_OK;
    enum { N_PROBE = 3 };
    float *x = kvqi_alloc_array((size_t)3 * N_PROBE * dim, sizeof(float));
    if (!x) return KVQ_ERR_NOMEM;
    float *fast = x + (size_t)N_PROBE * dim, *dense = fast + (size_t)N_PROBE * dim;
    probe_vectors(x, dim, N_PROBE);
    int same = 1;
    for (int inverse = 0; inverse < 2 && same; inverse++) {
        for (uint32_t i = 0; i < N_PROBE; i++) {
            const float *xi = x + (size_t)i * dim;
            float *f = fast + (size_t)i * dim, *d = dense + (size_t)i * dim;
            if (inverse) kvqi_rotation_inverse(R, xi, f, s->quant->isa);
            else kvqi_rotation_apply(R, xi, f, s->quant->isa);
            for (uint32_t r = 0; r < dim; r++) {
                double acc = 0.0;
                for (uint32_t j = 0; j < dim; j++)
                    acc += inverse ? (double)s->rotation[(size_t)j * dim + r] * xi[j]
                                   : (double)s->rotation[(size_t)r * dim + j] * xi[j];
                d[r] = (float)acc;
            }
        }
        float amax = 0.0f;
        for (size_t i = 0; i < (size_t)N_PROBE * dim; i++) amax = fmaxf(amax, fabsf(dense[i]));
        for (size_t i = 0; i < (size_t)N_PROBE * dim && same; i++)
            if (!(fabsf(fast[i] - dense[i]) <= 1e-5f * amax)) same = 0;
    }
    kvqi_free(x);
    if (same) {
        s->had = R;
        kvqi_free(s->rotation);
        s->rotation = NULL;
    }
    return KVQ_OK;
}

/* vq values behind a randomized Hadamard: weighted sums of centroids in the rotated
 * domain, one inverse transform per output row (attend.c). */
static kvq_status vq_path(kvqi_side *s, uint32_t dim) {
    s->vq_cent = kvqi_alloc_array(256 * 4, sizeof(float));
    if (!s->vq_cent) return KVQ_ERR_NOMEM;
    const float *cb = kvqi_vq_codebook();
    float inv_sd = 1.0f / sqrtf((float)dim);
    for (uint32_t i = 0; i < 256 * 4; i++) s->vq_cent[i] = cb[i] * inv_sd;
    s->vq_accum = kvqi_vq_accum_for(s->quant->isa, dim);
    s->had = &s->quant->rot;
    s->path = KVQI_PATH_VQ;
    return KVQ_OK;
}

/* Picks a fused path when the quantizer's codes are in a layout the kernels know, and
 * proves it: probe vectors encoded by the quantizer must decode the same (to float
 * rounding) through the layout as through kvq_decode. Anything else stays generic. */
static kvq_status choose_path(kvqi_side *s, uint32_t dim, int is_key) {
    kvq_config qc;
    kvq_status st = kvq_quantizer_config(s->quant, &qc);
    if (st != KVQ_OK) return st;
    s->path = KVQI_PATH_GENERIC;
    if (is_key && qc.method == KVQ_METHOD_CHANNEL) {
        s->path = KVQI_PATH_CHAN; /* chan.c sets the code size */
        return KVQ_OK;
    }
    if (!is_key && qc.method == KVQ_METHOD_VQ && s->quant->rot.kind == KVQI_ROT_HADAMARD &&
        s->quant->rot.dim == dim && s->code_size == 2 + (size_t)dim / 4)
        return vq_path(s, dim);
    kvqi_code_path want = KVQI_PATH_GENERIC;
    if (dim % 32 == 0) {
        if (qc.method == KVQ_METHOD_FP16 && s->code_size == 2 * (size_t)dim) want = KVQI_PATH_F16;
        if (qc.method == KVQ_METHOD_Q8_0 && s->code_size == 34 * (size_t)(dim / 32))
            want = KVQI_PATH_Q8_0;
        if (qc.method == KVQ_METHOD_Q4_0 && s->code_size == 18 * (size_t)(dim / 32))
            want = KVQI_PATH_Q4_0;
    }
    if (want == KVQI_PATH_GENERIC && rot_layout_for(&qc, s->code_size, &s->rot)) {
        st = extract_rotation(s, dim);
        if (st == KVQ_ERR_NOMEM) return st;
        if (st == KVQ_OK) want = KVQI_PATH_ROT;
    }
    if (want == KVQI_PATH_GENERIC) {
        if (is_key) { /* values of sign codes have no fused accumulation */
            st = try_signs(s, &qc, dim);
            if (st != KVQ_OK) return st;
        }
        if (s->path != KVQI_PATH_SIGNS || !s->signs_mse) {
            kvqi_free(s->rotation);
            s->rotation = NULL;
        }
        if (s->path != KVQI_PATH_SIGNS) {
            kvqi_free(s->proj);
            s->proj = NULL;
            return KVQ_OK;
        }
        return permute_rotation(s, dim);
    }
    enum { N_PROBE = 4 };
    float *x = kvqi_alloc_array((size_t)3 * N_PROBE * dim, sizeof(float));
    uint8_t *codes = kvqi_alloc_array(N_PROBE, s->code_size);
    if (!x || !codes) {
        kvqi_free(x);
        kvqi_free(codes);
        return KVQ_ERR_NOMEM;
    }
    float *ref = x + (size_t)N_PROBE * dim, *mine = ref + (size_t)N_PROBE * dim;
    probe_vectors(x, dim, N_PROBE);
    st = kvq_encode(s->quant, x, N_PROBE, codes);
    if (st == KVQ_OK) st = kvq_decode(s->quant, codes, N_PROBE, ref);
    if (st == KVQ_OK) {
        int same = 1;
        /* a wrong layout is off by the size of the vector; float rounding by 1e-6 of it */
        for (uint32_t i = 0; i < N_PROBE && same; i++) {
            decode_known(want, &s->rot, s->rotation, dim, codes + i * s->code_size,
                         mine + (size_t)i * dim);
            float amax = 0.0f;
            for (uint32_t j = 0; j < dim; j++) amax = fmaxf(amax, fabsf(ref[(size_t)i * dim + j]));
            for (uint32_t j = 0; j < dim; j++) {
                float a = ref[(size_t)i * dim + j], b = mine[(size_t)i * dim + j];
                if (!(fabsf(a - b) <= 1e-4f * amax)) {
                    same = 0;
                    break;
                }
            }
        }
        if (same) s->path = want;
    }
    if (s->path != KVQI_PATH_ROT) {
        kvqi_free(s->rotation);
        s->rotation = NULL;
    } else { /* the matrix stays in natural order: keys and values may share it */
        s->lane = kvqi_alloc_array(dim, sizeof(uint16_t));
        if (!s->lane) st = KVQ_ERR_NOMEM;
        for (uint32_t p = 0; p < dim && s->lane; p++)
            s->lane[p] = (uint16_t)kvqi_rot_lane_coordinate(s->rot.bits, p);
        if (st == KVQ_OK) st = structured_rotation(s, dim);
    }
    kvqi_free(x);
    kvqi_free(codes);
    return st;
}

/* A rotated side's matrix in half the bytes when nothing is lost: every entry within
 * float rounding of an fp16 number (read back through decode, +-2^-k comes back as
 * +-2^-k (1 + 1e-7)). */
static kvq_status rotation_to_fp16(kvqi_side *s, uint32_t dim) {
    if (s->path != KVQI_PATH_ROT || !s->rotation) return KVQ_OK;
    size_t n = (size_t)dim * dim;
    for (size_t i = 0; i < n; i++) {
        float r = s->rotation[i], h = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(r));
        if (!(fabsf(h - r) <= 1e-5f * fabsf(r))) return KVQ_OK;
    }
    s->rotation_h = kvqi_alloc_array(n, sizeof(uint16_t));
    if (!s->rotation_h) return KVQ_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) s->rotation_h[i] = kvqi_fp32_to_fp16(s->rotation[i]);
    kvqi_free(s->rotation);
    s->rotation = NULL;
    return KVQ_OK;
}

/* ---------------------------------------------------------- create / free */

/* Each refusal also leaves its reason in kvq_last_error(). */
static kvq_status validate_config(const kvq_cache_config *cfg) {
    if (!cfg) return KVQ_ERR_INVALID_ARG;
    kvq_status st = KVQ_OK;
    if (cfg->n_kv_heads == 0 || cfg->head_dim == 0)
        kvqi_set_msg(NULL, 0, "cache: n_kv_heads and head_dim must be positive"), st = KVQ_ERR_INVALID_ARG;
    else if (cfg->n_kv_heads > MAX_KV_HEADS || cfg->head_dim > MAX_DIM)
        kvqi_set_msg(NULL, 0, "cache: at most %u KV heads of %u dims", MAX_KV_HEADS, MAX_DIM),
            st = KVQ_ERR_UNSUPPORTED;
    else if ((cfg->key.dim != 0 && cfg->key.dim != cfg->head_dim) ||
             (cfg->value.dim != 0 && cfg->value.dim != cfg->head_dim))
        kvqi_set_msg(NULL, 0, "cache: a quantizer's dim is not head_dim %u", cfg->head_dim),
            st = KVQ_ERR_MISMATCH;
    else if (cfg->n_outliers >= cfg->head_dim)
        kvqi_set_msg(NULL, 0, "cache: outliers %u must be below head_dim %u", cfg->n_outliers, cfg->head_dim),
            st = KVQ_ERR_INVALID_ARG;
    else if (cfg->chunk_tokens > MAX_CHUNK_TOKENS)
        kvqi_set_msg(NULL, 0, "cache: chunk_tokens above %u", MAX_CHUNK_TOKENS), st = KVQ_ERR_UNSUPPORTED;
    else if (cfg->n_sink > MAX_SINK_TOKENS)
        kvqi_set_msg(NULL, 0, "cache: at most %u sink tokens", MAX_SINK_TOKENS), st = KVQ_ERR_UNSUPPORTED;
    else if (cfg->sliding_key_bits && cfg->key.method != KVQ_METHOD_CHANNEL &&
             cfg->key.method != KVQ_METHOD_TURBOQUANT_MSE)
        kvqi_set_msg(NULL, 0, "cache: sliding_key_bits (slide_kbits) takes channel or turboquant_mse keys"),
            st = KVQ_ERR_INVALID_ARG;
    else if (cfg->key.method == KVQ_METHOD_CHANNEL && cfg->key.rope_base > 0.0f &&
             (cfg->center_keys || cfg->n_outliers))
        kvqi_set_msg(NULL, 0, "cache: channel keys before RoPE (rope_base) take no center or outliers option"),
            st = KVQ_ERR_UNSUPPORTED;
    else if (cfg->sliding_value_bits && cfg->value.method != KVQ_METHOD_TURBOQUANT_MSE)
        kvqi_set_msg(NULL, 0, "cache: sliding_value_bits (slide_vbits) takes turboquant_mse values"),
            st = KVQ_ERR_INVALID_ARG;
    else if ((cfg->sliding_key_bits && (uint64_t)cfg->key.bits + cfg->sliding_key_bits > 8) ||
             (cfg->sliding_value_bits && (uint64_t)cfg->value.bits + cfg->sliding_value_bits > 8))
        kvqi_set_msg(NULL, 0, "cache: a sliding layer's keys or values would take more than 8 bits (%u + %u, %u + %u)",
                     cfg->key.bits, cfg->sliding_key_bits, cfg->value.bits, cfg->sliding_value_bits),
            st = KVQ_ERR_INVALID_ARG;
    return st;
}

/* A sliding-window layer holds at most its window, so its bytes stop growing: the config's
 * extra bits go to its keys and values there (kvq_cache_config.sliding_key_bits). */
static void apply_sliding_bits(kvq_cache_config *cfg) {
    if (cfg->sliding_window) {
        cfg->key.bits += cfg->sliding_key_bits;
        cfg->value.bits += cfg->sliding_value_bits;
    }
    cfg->sliding_key_bits = cfg->sliding_value_bits = 0;
}

static kvq_status side_create(kvqi_side *s, const kvq_config *qc, uint32_t dim, int is_key) {
    kvq_config c = *qc;
    c.dim = dim;
    kvq_status st = kvq_quantizer_create(&c, &s->quant);
    if (st != KVQ_OK) return st;
    s->code_size = kvq_code_size(s->quant);
    if (s->code_size == 0) return KVQ_ERR_STATE;
    return choose_path(s, dim, is_key);
}

static void side_free(kvqi_side *s) {
    kvq_quantizer_free(s->quant);
    if (!s->rotation_borrowed) {
        kvqi_free(s->rotation);
        kvqi_free(s->rotation_h);
    }
    kvqi_free(s->lane);
    kvqi_free(s->proj);
    kvqi_free(s->rot.cent8);
    kvqi_free(s->vq_cent);
    memset(s, 0, sizeof *s);
}

static void free_chunks(kvq_cache *c) {
    for (size_t i = 0; i < c->n_chunks; i++) kvqi_free(c->chunks[i].slab);
    c->n_chunks = 0;
    c->first_chunk = 0;
    c->arena_bytes = 0;
}

/* Chunks in the next slab when `live` chunks are held: a sixteenth of them (the unused
 * tail of the last slab stays within 1/16 of the codes), at most 1024 tokens, and with a
 * sliding window at most a quarter of it (a slab is freed only when all of it has left). */
#define SLAB_MAX_TOKENS 1024

/* The most chunks a slab holds. */
static size_t slab_max_chunks(size_t C) { return SLAB_MAX_TOKENS / C + 1; }

static size_t span_for(size_t C, size_t SW, size_t live) {
    size_t cap = SLAB_MAX_TOKENS / C;
    if (SW && cap > SW / (4 * C)) cap = SW / (4 * C);
    size_t span = live / 16;
    if (span > cap) span = cap;
    return span ? span : 1;
}

static size_t slab_span(const kvq_cache *c, size_t live) {
    return span_for(c->cfg.chunk_tokens, c->cfg.sliding_window, live);
}

/* Chunks allocated, in whole slabs, once n are needed (no sliding window). */
static uint64_t slab_chunks(size_t C, uint64_t n) {
    uint64_t have = 0;
    while (have < n) have += span_for(C, 0, (size_t)have);
    return have;
}

/* Sliding window: the lowest position a query of an append starting at `first_new` can
 * see, and the chunks wholly below it freed. */
static size_t slide(kvq_cache *c, size_t first_new) {
    size_t SW = c->cfg.sliding_window;
    if (!SW || first_new + 1 <= SW) return 0;
    size_t lo = first_new + 1 - SW, C = c->cfg.chunk_tokens;
    while (c->first_chunk < c->n_chunks && (c->first_chunk + 1) * C <= lo) {
        kvqi_chunk *h = &c->chunks[c->first_chunk++];
        if (h->index + 1 == h->span) { /* the slab's last chunk: the whole slab goes */
            kvqi_chunk *first = h - h->index;
            kvqi_free(first->slab);
            c->arena_bytes -= (uint64_t)h->span * c->chunk_bytes;
            memset(first, 0, (size_t)h->span * sizeof *first);
        }
    }
    return lo;
}

static void free_scratch(kvq_cache *c) {
    if (c->scratch) {
        for (unsigned i = 0; i < c->n_scratch; i++) kvqi_free(c->scratch[i].q);
        kvqi_free(c->scratch);
    }
    c->scratch = NULL;
    c->n_scratch = 0;
}

KVQ_API void kvq_cache_free(kvq_cache *c) {
    if (!c) return;
    free_chunks(c);
    kvqi_free(c->chunks);
    side_free(&c->key);
    side_free(&c->value);
    kvqi_free(c->win_k);
    kvqi_free(c->win_v);
    kvqi_free(c->sink_k);
    kvqi_free(c->sink_v);
    kvqi_free(c->outlier_idx);
    kvqi_free(c->outlier_mask);
    kvqi_free(c->stage_k);
    kvqi_free(c->stage_v);
    kvqi_free(c->key_mean);
    kvqi_free(c->enc_buf);
    kvqi_free(c->out_buf);
    kvqi_cache_positions_free(c);
    kvqi_chan_free(c);
    kvq_quantizer_free(c->ring_q);
    free_scratch(c);
    kvqi_free(c);
}

/* Side s takes side d's read-back rotation (borrowed: not owned, not counted) when both
 * rotate and the matrices are identical as stored (fp16 copies read back at different bits
 * match); returns whether s now uses d's. */
static int share_rotation(kvqi_side *s, const kvqi_side *d, uint32_t dim) {
    if (s->path != KVQI_PATH_ROT || d->path != KVQI_PATH_ROT) return 0;
    if (s->had || d->had) return 0; /* no matrix to share */
    if (s->rotation == d->rotation && s->rotation_h == d->rotation_h) return 1;
    size_t n = (size_t)dim * dim;
    int same = (s->rotation_h && d->rotation_h && !memcmp(s->rotation_h, d->rotation_h, n * sizeof(uint16_t))) ||
               (s->rotation && d->rotation && !memcmp(s->rotation, d->rotation, n * sizeof(float)));
    if (!same) return 0;
    if (!s->rotation_borrowed) {
        kvqi_free(s->rotation);
        kvqi_free(s->rotation_h);
    }
    s->rotation = d->rotation;
    s->rotation_h = d->rotation_h;
    s->rotation_borrowed = 1;
    return 1;
}

/* A side's rotation from the donor cache (either of its sides) where identical. */
static void borrow_rotation(kvqi_side *s, const kvq_cache *donor, uint32_t dim) {
    if (donor && donor->dim == dim && !share_rotation(s, &donor->key, dim)) share_rotation(s, &donor->value, dim);
}

KVQ_API kvq_status kvq_cache_create(const kvq_cache_config *cfg, kvq_cache **out) {
    return kvqi_cache_create_shared(cfg, NULL, out);
}

kvq_status kvqi_cache_create_shared(const kvq_cache_config *cfg, const kvq_cache *donor, kvq_cache **out) {
    if (!out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    kvq_status st = validate_config(cfg);
    if (st != KVQ_OK) return st;
    kvq_cache *c = kvqi_calloc_array(1, sizeof *c);
    if (!c) return KVQ_ERR_NOMEM;
    c->cfg = *cfg;
    apply_sliding_bits(&c->cfg);
    if (c->cfg.chunk_tokens == 0) c->cfg.chunk_tokens = DEFAULT_CHUNK_TOKENS;
    c->cfg.key.dim = c->cfg.value.dim = cfg->head_dim;
    c->n_kv = cfg->n_kv_heads;
    c->dim = cfg->head_dim;
    c->n_out = cfg->n_outliers;

    kvq_isa isa;
    st = kvqi_isa_resolve(KVQ_ISA_AUTO, &isa);
    if (st != KVQ_OK) goto fail;
    c->kern = kvqi_cache_kernels_for(isa);

    st = side_create(&c->key, &c->cfg.key, c->dim, 1);
    if (st != KVQ_OK) goto fail;
    st = side_create(&c->value, &c->cfg.value, c->dim, 0);
    if (st != KVQ_OK) goto fail;
    if ((st = kvqi_cache_positions_init(c)) != KVQ_OK) goto fail;
    if (c->key.path == KVQI_PATH_CHAN && (st = kvqi_chan_init(c)) != KVQ_OK) goto fail;
    /* the probe fixes outlier channels, the key mean or the channel keys' bits */
    c->coded = c->n_out == 0 && !c->cfg.center_keys && c->key.path != KVQI_PATH_CHAN;
    c->ring = c->cfg.window;
    c->ring_head = (size_t)2 * c->dim;
    if (c->key.path == KVQI_PATH_CHAN) {
        if ((st = kvqi_add_size(c->ring, c->cfg.chunk_tokens, &c->ring)) != KVQ_OK) goto fail;
        kvq_config rq;
        if ((st = kvq_config_init(&rq, KVQ_METHOD_Q8_0, c->dim)) != KVQ_OK) goto fail;
        if ((st = kvq_quantizer_create(&rq, &c->ring_q)) != KVQ_OK) goto fail;
        c->ring_head = kvq_code_size(c->ring_q);
    }

    /* every size below is checked once here; later products are bounded by them */
    size_t C = c->cfg.chunk_tokens, row, per_token, chunk_bytes;
    st = kvqi_mul_size(c->n_kv, c->dim, &row);
    if (st != KVQ_OK) goto fail;
    size_t per_head = c->key.code_size;
    if ((st = kvqi_add_size(per_head, c->value.code_size, &per_head)) != KVQ_OK) goto fail;
    if ((st = kvqi_add_size(per_head, (size_t)2 * c->n_out, &per_head)) != KVQ_OK) goto fail;
    if ((st = kvqi_mul_size(per_head, c->n_kv, &per_token)) != KVQ_OK) goto fail;
    if ((st = kvqi_mul_size(per_token, C, &chunk_bytes)) != KVQ_OK) goto fail;
    c->chunk_bytes = chunk_bytes;
    /* slabs of up to SLAB_MAX_TOKENS tokens: their bytes must fit size_t */
    size_t slab_bytes;
    if ((st = kvqi_mul_size(chunk_bytes, slab_max_chunks(C), &slab_bytes)) != KVQ_OK) goto fail;

    if ((st = rotation_to_fp16(&c->key, c->dim)) != KVQ_OK) goto fail;
    if ((st = rotation_to_fp16(&c->value, c->dim)) != KVQ_OK) goto fail;
    /* the layers of one context or cache set read back the same matrices: one copy */
    borrow_rotation(&c->key, donor, c->dim);
    borrow_rotation(&c->value, donor, c->dim);
    kvqi_pre_share(c, donor);
    /* keys and values with the same rotation (same method and seed, any bits) share one
     * copy */
    share_rotation(&c->value, &c->key, c->dim);
    if (c->cfg.n_sink > 0) {
        size_t w;
        if ((st = kvqi_mul_size(row, c->cfg.n_sink, &w)) != KVQ_OK) goto fail;
        c->sink_k = kvqi_calloc_array(w, sizeof(uint16_t));
        c->sink_v = kvqi_calloc_array(w, sizeof(uint16_t));
        if (!c->sink_k || !c->sink_v) {
            st = KVQ_ERR_NOMEM;
            goto fail;
        }
    }
    if (c->n_out > 0) {
        c->outlier_idx = kvqi_calloc_array((size_t)c->n_kv * c->n_out, sizeof(uint16_t));
        c->outlier_mask = kvqi_calloc_array(row, 1);
        c->out_buf = kvqi_alloc_array((size_t)KVQI_ENCODE_ROWS * c->n_out, sizeof(uint16_t));
        if (!c->outlier_idx || !c->outlier_mask || !c->out_buf) {
            st = KVQ_ERR_NOMEM;
            goto fail;
        }
    }
    /* channel keys are always centered: their ring's q8_0 rows hold keys minus the mean */
    if (c->cfg.center_keys || c->key.path == KVQI_PATH_CHAN) {
        c->key_mean = kvqi_calloc_array(row, sizeof(float));
        if (!c->key_mean) {
            st = KVQ_ERR_NOMEM;
            goto fail;
        }
    }
    c->enc_buf = kvqi_alloc_array((size_t)(KVQI_ENCODE_ROWS + 3) * c->dim, sizeof(float));
    if (!c->enc_buf) {
        st = KVQ_ERR_NOMEM;
        goto fail;
    }
    *out = c;
    return KVQ_OK;
fail:
    kvq_cache_free(c);
    return st;
}

KVQ_API kvq_status kvq_cache_reset(kvq_cache *c) {
    if (!c) return KVQ_ERR_INVALID_ARG;
    free_chunks(c);
    c->n_tokens = 0;
    c->n_coded = 0;
    c->chan_fixed = 0;
    kvqi_chan_forget_queries(c);
    c->coded = c->n_out == 0 && !c->cfg.center_keys && c->key.path != KVQI_PATH_CHAN;
    if (c->outlier_mask) memset(c->outlier_mask, 0, (size_t)c->n_kv * c->dim);
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_length(const kvq_cache *c, size_t *n_tokens) {
    if (!c || !n_tokens) return KVQ_ERR_INVALID_ARG;
    *n_tokens = c->n_tokens;
    return KVQ_OK;
}

/* ------------------------------------------------------------------ append */

static kvq_status ensure_chunks(kvq_cache *c, size_t n_tokens) {
    size_t C = c->cfg.chunk_tokens;
    size_t need = n_tokens / C + (n_tokens % C != 0);
    if (need <= c->n_chunks) return KVQ_OK;
    /* room for a whole slab past need (spans grow with the chunks held: none is longer
     * than the one for need) */
    size_t room = need + slab_span(c, need > c->first_chunk ? need - c->first_chunk : 0);
    if (room > c->chunk_table_cap) {
        size_t cap = c->chunk_table_cap ? c->chunk_table_cap : 8;
        while (cap < room) {
            if (cap > SIZE_MAX / 2) return KVQ_ERR_OVERFLOW;
            cap *= 2;
        }
        kvqi_chunk *t = kvqi_calloc_array(cap, sizeof *t);
        if (!t) return KVQ_ERR_NOMEM;
        if (c->n_chunks) memcpy(t, c->chunks, c->n_chunks * sizeof *t);
        kvqi_free(c->chunks);
        c->chunks = t;
        c->chunk_table_cap = cap;
    }
    size_t ks = c->key.code_size, vs = c->value.code_size, os = (size_t)c->n_out * sizeof(uint16_t);
    while (c->n_chunks < need) {
        if (c->n_chunks < c->first_chunk) { /* dropped by the sliding window, never read */
            memset(&c->chunks[c->n_chunks++], 0, sizeof *c->chunks);
            continue;
        }
        size_t span = slab_span(c, c->n_chunks - c->first_chunk);
        uint8_t *slab = kvqi_alloc_array(span, c->chunk_bytes);
        if (!slab) return KVQ_ERR_NOMEM;
        /* head-major: keys of every head, then values, then outliers */
        uint8_t *v0 = slab + c->n_kv * span * C * ks, *o0 = v0 + c->n_kv * span * C * vs;
        for (size_t j = 0; j < span; j++) {
            kvqi_chunk *h = &c->chunks[c->n_chunks + j];
            h->k = slab + j * C * ks;
            h->v = v0 + j * C * vs;
            h->o = o0 + j * C * os;
            h->slab = j ? NULL : slab;
            h->span = (uint32_t)span;
            h->index = (uint32_t)j;
        }
        c->n_chunks += span;
        c->arena_bytes += (uint64_t)span * c->chunk_bytes;
    }
    return KVQ_OK;
}

/* Outlier channels of each head: the n_out largest in RMS over the probe tokens
 * (ties to the lower channel), kept in ascending order. */
static void choose_outliers(kvq_cache *c) {
    uint32_t dim = c->dim;
    float *energy = c->enc_buf; /* dim floats of scratch */
    for (uint32_t g = 0; g < c->n_kv; g++) {
        for (uint32_t j = 0; j < dim; j++) energy[j] = 0.0f;
        for (uint32_t t = 0; t < KVQI_OUTLIER_PROBE_TOKENS; t++) {
            const float *k = c->stage_k + ((size_t)t * c->n_kv + g) * dim;
            for (uint32_t j = 0; j < dim; j++) energy[j] += k[j] * k[j];
        }
        uint8_t *mask = c->outlier_mask + (size_t)g * dim;
        memset(mask, 0, dim);
        for (uint32_t o = 0; o < c->n_out; o++) {
            uint32_t best = UINT32_MAX;
            for (uint32_t j = 0; j < dim; j++)
                if (!mask[j] && (best == UINT32_MAX || energy[j] > energy[best])) best = j;
            mask[best] = 1;
        }
        uint16_t *idx = c->outlier_idx + (size_t)g * c->n_out;
        uint32_t o = 0;
        for (uint32_t j = 0; j < dim; j++)
            if (mask[j]) idx[o++] = (uint16_t)j;
    }
}

/* Centered keys: each head's mean key over the probe tokens after the first (the first
 * token is the attention sink, unlike the rest), zero on outlier channels (kept exact). */
static void probe_mean(const kvq_cache *c, const float *stage, float *mean) {
    uint32_t dim = c->dim;
    for (uint32_t g = 0; g < c->n_kv; g++) {
        float *mu = mean + (size_t)g * dim;
        for (uint32_t j = 0; j < dim; j++) {
            double acc = 0.0;
            for (uint32_t t = 1; t < KVQI_OUTLIER_PROBE_TOKENS; t++)
                acc += stage[((size_t)t * c->n_kv + g) * dim + j];
            mu[j] = (float)(acc / (KVQI_OUTLIER_PROBE_TOKENS - 1));
        }
    }
}

static void choose_means(kvq_cache *c) {
    if (!c->key_mean) return;
    probe_mean(c, c->stage_k, c->key_mean);
    if (c->n_out)
        for (size_t j = 0; j < (size_t)c->n_kv * c->dim; j++)
            if (c->outlier_mask[j]) c->key_mean[j] = 0.0f;
}

/* The probe is full: outlier channels and the key mean fixed, tokens coded from now on. */
static void fix_probe(kvq_cache *c) {
    if (c->n_out) choose_outliers(c);
    choose_means(c);
    c->coded = 1;
}

/* Where the exact rows of the token at pos are while an append is under way: the probe
 * stage (first tokens, fp32), the window ring (fp16, tokens from earlier appends), or
 * the rows being appended (first_new is the position of row 0 of k_new / v_new). */
typedef struct row_source {
    const float *k_new, *v_new;
    size_t first_new;
} row_source;

/* Byte offset of head g of the token at pos in a ring. */
static size_t ring_at(const kvq_cache *c, size_t pos, uint32_t g) {
    return ((pos % c->ring) * c->n_kv + g) * c->ring_head;
}

/* One head's row into / out of its ring format: fp16, or q8_0 (channel keys). Rows are
 * rounded to fp16 first either way, as every exact token of the cache is. Keys past the
 * probe go into q8_0 minus their head's mean key, so a channel's large steady value does
 * not set the block's scale for the small ones beside it. */
static const float *ring_shift(const kvq_cache *c, int values, size_t pos, uint32_t g) {
    if (!c->ring_q || values || !c->key_mean || pos < KVQI_OUTLIER_PROBE_TOKENS) return NULL;
    return c->key_mean + (size_t)g * c->dim;
}

/* Rows through fp16 with the quantizers' dispatched conversions (F16C on x86, FCVT on
 * AArch64: kvqi_fp32_to_fp16's bits): to fp16, from fp16, and y = the fp16 nearest x. */
static void to_fp16(const kvq_cache *c, const float *x, size_t n, uint16_t *h) {
    kvqi_quant_kernels_for(c->kern->isa)->fp16_from_f32(x, n, h);
}
static void from_fp16(const kvq_cache *c, const uint16_t *h, size_t n, float *x) {
    kvqi_quant_kernels_for(c->kern->isa)->fp16_to_f32(h, n, x);
}
static void round_fp16(const kvq_cache *c, const float *x, size_t n, float *y) {
    uint16_t h[MAX_DIM];
    for (size_t i = 0; i < n; i += MAX_DIM) {
        size_t m = KVQI_MIN(n - i, (size_t)MAX_DIM);
        to_fp16(c, x + i, m, h);
        from_fp16(c, h, m, y + i);
    }
}

static void ring_write(const kvq_cache *c, const float *x, int values, size_t pos, uint32_t g, uint8_t *dst) {
    if (c->ring_q) {
        float h[MAX_DIM];
        const float *mu = ring_shift(c, values, pos, g);
        round_fp16(c, x, c->dim, h);
        if (mu)
            for (uint32_t j = 0; j < c->dim; j++) h[j] -= mu[j];
        (void)kvq_encode(c->ring_q, h, 1, dst); /* q8_0 of a checked row cannot fail */
        return;
    }
    uint16_t h[MAX_DIM];
    to_fp16(c, x, c->dim, h);
    memcpy(dst, h, 2 * (size_t)c->dim);
}

static void ring_read(const kvq_cache *c, const uint8_t *src, int values, size_t pos, uint32_t g, float *x) {
    if (c->ring_q) {
        (void)kvq_decode(c->ring_q, src, 1, x);
        const float *mu = ring_shift(c, values, pos, g);
        if (mu)
            for (uint32_t j = 0; j < c->dim; j++) x[j] += mu[j];
        return;
    }
    uint16_t h[MAX_DIM];
    memcpy(h, src, 2 * (size_t)c->dim);
    from_fp16(c, h, c->dim, x);
}

static void fetch_row(const kvq_cache *c, const row_source *src, size_t pos, uint32_t g,
                      int values, float *dst) {
    size_t row = (size_t)c->n_kv * c->dim, off = (size_t)g * c->dim;
    if (pos >= src->first_new) {
        memcpy(dst, (values ? src->v_new : src->k_new) + (pos - src->first_new) * row + off,
               c->dim * sizeof(float));
    } else if (c->stage_k && pos < KVQI_OUTLIER_PROBE_TOKENS) {
        memcpy(dst, (values ? c->stage_v : c->stage_k) + pos * row + off, c->dim * sizeof(float));
    } else {
        ring_read(c, (values ? c->win_v : c->win_k) + ring_at(c, pos, g), values, pos, g, dst);
        return;
    }
    /* with a ring, every token is encoded from its ring copy, wherever it is read from,
     * so the codes do not depend on how the tokens were split into appends */
    if (c->ring) {
        uint8_t tmp[2 * MAX_DIM];
        ring_write(c, dst, values, pos, g, tmp);
        ring_read(c, tmp, values, pos, g, dst);
    }
}

/* Encodes the tokens at positions [pos, pos + n) into the arena, KVQI_ENCODE_ROWS rows of
 * one head per quantizer call. */
static kvq_status encode_tokens(kvq_cache *c, const row_source *src, size_t pos, size_t n) {
    size_t C = c->cfg.chunk_tokens;
    size_t ks = c->key.code_size, vs = c->value.code_size;
    while (n > 0) {
        size_t in_chunk = pos % C, cnt = KVQI_MIN(KVQI_MIN(n, C - in_chunk), (size_t)KVQI_ENCODE_ROWS);
        size_t ci = pos / C;
        /* channel keys are coded a whole chunk at a time (encode_chan_chunks): values only */
        int keys = c->key.path != KVQI_PATH_CHAN;
        for (uint32_t g = 0; g < c->n_kv; g++) {
            const uint8_t *mask = c->n_out ? c->outlier_mask + (size_t)g * c->dim : NULL;
            const uint16_t *idx = c->n_out ? c->outlier_idx + (size_t)g * c->n_out : NULL;
            for (size_t t = 0; t < cnt && keys; t++) {
                float *dst = c->enc_buf + t * c->dim;
                fetch_row(c, src, pos + t, g, 0, dst);
                if (mask) {
                    for (uint32_t o = 0; o < c->n_out; o++) {
                        c->out_buf[o * KVQI_ENCODE_ROWS + t] = kvqi_fp32_to_fp16(dst[idx[o]]);
                        dst[idx[o]] = 0.0f;
                    }
                }
                if (c->key_mean) {
                    const float *mu = c->key_mean + (size_t)g * c->dim;
                    for (uint32_t j = 0; j < c->dim; j++) dst[j] -= mu[j];
                }
            }
            kvq_status st =
                keys ? kvqi_cache_encode_keys(c, c->enc_buf, pos, cnt, kvqi_chunk_keys(c, ci, g) + in_chunk * ks)
                     : KVQ_OK;
            if (st != KVQ_OK) return st;
            for (uint32_t o = 0; o < c->n_out; o++) /* channel-major: a block is contiguous */
                memcpy(kvqi_chunk_outliers(c, ci, g) + ((size_t)o * C + in_chunk) * 2,
                       c->out_buf + (size_t)o * KVQI_ENCODE_ROWS, cnt * 2);
            for (size_t t = 0; t < cnt; t++) fetch_row(c, src, pos + t, g, 1, c->enc_buf + t * c->dim);
            st = kvq_encode(c->value.quant, c->enc_buf, cnt, kvqi_chunk_values(c, ci, g) + in_chunk * vs);
            if (st != KVQ_OK) return st;
        }
        pos += cnt;
        n -= cnt;
    }
    return KVQ_OK;
}

/* Each channel's range over rows: emptied, then widened by one row. */
static void range_empty(float *lo, float *hi, uint32_t dim) {
    for (uint32_t j = 0; j < dim; j++) {
        lo[j] = INFINITY;
        hi[j] = -INFINITY;
    }
}

/* (fminf and fmaxf as glibc gives them, lo at a tie of zeros, in compares the compiler
 * vectorizes: the rows are finite) */
static void range_widen(float *lo, float *hi, const float *row, uint32_t dim) {
    for (uint32_t j = 0; j < dim; j++) {
        float r = row[j];
        lo[j] = r < lo[j] ? r : lo[j];
        hi[j] = r > hi[j] ? r : hi[j];
    }
}

/* Channel keys of the whole chunks in [pos, end) (chunk-aligned), every head; tokens
 * below valid_lo (sinks, tokens a sliding window dropped) are never read and do not
 * count in a channel's range. */
static void encode_chan_chunks(kvq_cache *c, const row_source *src, size_t pos, size_t end,
                               size_t valid_lo) {
    size_t C = c->cfg.chunk_tokens;
    uint32_t dim = c->dim;
    /* enc_buf (KVQI_ENCODE_ROWS + 3 rows): the row being read, then each channel's minimum
     * and maximum, and in their place the sums of a refinement (4 rows); then the block's
     * ranges as floats */
    float *row = c->enc_buf, *lo = row + dim, *hi = lo + dim, *acc = lo;
    float *rlo = row + (size_t)KVQI_ENCODE_ROWS * dim, *rstep = rlo + dim, *rtop = rstep + dim;
    for (; pos < end; pos += C) {
        size_t lo_t = valid_lo > pos ? KVQI_MIN(valid_lo - pos, C) : 0;
        if (c->pre_freq) kvqi_pre_angles(c, pos / C, SIZE_MAX, c->pre_enc); /* keys before RoPE */
        for (uint32_t g = 0; g < c->n_kv; g++) {
            /* (keys before RoPE are coded as they are: the mean is of keys after it) */
            const float *mu = c->key_mean && !c->pre_freq ? c->key_mean + (size_t)g * dim : NULL;
            uint8_t *block = kvqi_chunk_keys(c, pos / C, g);
            range_empty(lo, hi, dim);
            /* pass 0: minimum and maximum; then KVQI_CHAN_REFINE least-squares
             * refinements of the ranges (none for a head without 1-2-bit channels);
             * the last pass writes the codes */
            int n_refine = kvqi_chan_refines(c, g) ? KVQI_CHAN_REFINE : 0;
            for (int pass = 0; pass < 2 + n_refine; pass++) {
                int refine = pass > 0 && pass <= n_refine;
                if (refine) memset(acc, 0, (size_t)4 * dim * sizeof(float));
                if (pass > 0) kvqi_chan_ranges_f32(c, g, block, rlo, rstep, rtop);
                for (size_t t = lo_t; t < C; t++) {
                    fetch_row(c, src, pos + t, g, 0, row);
                    if (c->pre_freq) kvqi_pre_turn_back(c, row, c->pre_enc, t);
                    if (mu)
                        for (uint32_t j = 0; j < dim; j++) row[j] -= mu[j];
                    if (pass == 0) {
                        range_widen(lo, hi, row, dim);
                    } else if (refine) {
                        kvqi_chan_accumulate(c, row, rlo, rstep, rtop, acc);
                    } else {
                        kvqi_chan_put_row(c, g, row, rlo, rstep, rtop, t, block);
                    }
                }
                if (pass == 0) kvqi_chan_ranges(c, g, lo, hi, block);
                else if (refine) kvqi_chan_fit(c, g, acc, C - lo_t, block);
            }
        }
    }
}

/* Channel keys' bits, once, before the first chunk is coded: from each channel's range
 * over the first chunk's tokens 1..C-1 (token 0 is the attention sink, unlike the rest),
 * read as they will be coded (ring copies). A 32-token probe sees a slow RoPE channel at
 * one phase only; over a chunk it turns further, and its range there is the one the
 * codes must cover. Tokens 0..C-1 are still in the ring or the append: nothing is coded
 * before chunk 0 is full and the ring holds window + C tokens (only a sliding window no
 * longer than the exact window can skip chunk 0 before then, and then no query reads a
 * code). */
static void chan_fix_bits(kvq_cache *c, const row_source *src) {
    size_t C = c->cfg.chunk_tokens;
    uint32_t dim = c->dim;
    float *row = c->enc_buf, *lo = row + dim, *hi = lo + dim;
    double *w = (double *)(void *)(hi + dim); /* dim doubles: the last 2 dim floats */
    if (c->pre_freq) kvqi_pre_angles(c, 0, SIZE_MAX, c->pre_enc);
    for (uint32_t g = 0; g < c->n_kv; g++) {
        range_empty(lo, hi, dim);
        for (size_t t = 1; t < C; t++) {
            fetch_row(c, src, t, g, 0, row);
            if (c->pre_freq) kvqi_pre_turn_back(c, row, c->pre_enc, t);
            range_widen(lo, hi, row, dim);
        }
        kvqi_chan_allocate(c, g, lo, hi, w);
    }
    kvqi_chan_forget_queries(c);
    kvqi_chan_relayout(c);
    c->chan_fixed = 1;
}

/* Grows the exact rings to hold `tokens` (at most the ring). Before the ring first wraps
 * every token sits at slot = position, so growing keeps them in place. */
static kvq_status grow_window(kvq_cache *c, size_t tokens) {
    size_t R = c->ring, want = KVQI_MIN(tokens, R);
    if (want <= c->win_cap) return KVQ_OK;
    /* 16 slots at a time up to 256, then by a quarter, in whole 16s: a doubled ring would
     * hold up to twice a short context's bytes, and an unbounded window still grows
     * geometrically */
    size_t step = c->win_cap < 256 ? 16 : c->win_cap / 4;
    size_t cap = KVQI_MIN((KVQI_MAX(want, c->win_cap + step) + 15) / 16 * 16, R);
    size_t row = (size_t)c->n_kv * c->ring_head, bytes;
    if (kvqi_mul_size(row, cap, &bytes) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    uint8_t *k = kvqi_alloc_array(bytes, 1);
    uint8_t *v = kvqi_alloc_array(bytes, 1);
    if (!k || !v) {
        kvqi_free(k);
        kvqi_free(v);
        return KVQ_ERR_NOMEM;
    }
    if (c->win_cap) {
        memcpy(k, c->win_k, c->win_cap * row);
        memcpy(v, c->win_v, c->win_cap * row);
    }
    kvqi_free(c->win_k);
    kvqi_free(c->win_v);
    c->win_k = k;
    c->win_v = v;
    c->win_cap = cap;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_append(kvq_cache *c, const float *k, const float *v,
                                    size_t n_tokens) {
    if (!c || !k || !v || n_tokens == 0) return KVQ_ERR_INVALID_ARG;
    size_t end;
    if (kvqi_add_size(c->n_tokens, n_tokens, &end) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    if (c->cfg.max_tokens && end > c->cfg.max_tokens) return KVQ_ERR_CAPACITY;
    size_t row = (size_t)c->n_kv * c->dim, bytes;
    if (kvqi_mul_size(row * sizeof(float), n_tokens, &bytes) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    /* a NaN or infinity would poison every score and softmax that sees it: refused whole */
    for (size_t i = 0; i < row * n_tokens; i++)
        if (!isfinite(k[i]) || !isfinite(v[i])) return KVQ_ERR_INVALID_ARG;
    size_t W = c->cfg.window, R = c->ring, C = c->cfg.chunk_tokens;
    kvq_status st = R ? grow_window(c, end) : KVQ_OK;
    if (st != KVQ_OK) return st;
    if (!c->coded && !c->stage_k) {
        c->stage_k = kvqi_alloc_array(row * KVQI_OUTLIER_PROBE_TOKENS, sizeof(float));
        c->stage_v = kvqi_alloc_array(row * KVQI_OUTLIER_PROBE_TOKENS, sizeof(float));
        if (!c->stage_k || !c->stage_v) return KVQ_ERR_NOMEM;
    }
    /* the probe: stage the first tokens, then fix the outlier channels and key mean */
    int ready = c->coded;
    if (!ready) {
        /* held at fp16 precision, as every exact token of the cache is */
        size_t take = KVQI_MIN(n_tokens, KVQI_OUTLIER_PROBE_TOKENS - c->n_tokens);
        round_fp16(c, k, take * row, c->stage_k + c->n_tokens * row);
        round_fp16(c, v, take * row, c->stage_v + c->n_tokens * row);
        ready = c->n_tokens + take == KVQI_OUTLIER_PROBE_TOKENS;
    }
    /* tokens leaving the window (or every token, without one) are encoded */
    size_t coded_end = ready ? (end > W ? end - W : 0) : 0;
    int chan = c->key.path == KVQI_PATH_CHAN;
    if (chan) coded_end -= coded_end % C; /* channel keys: whole chunks */
    /* a sliding window: tokens no query of this append (or later) can see need no codes */
    size_t lo = slide(c, c->n_tokens);
    if (ready && c->n_coded < lo) {
        c->n_coded = KVQI_MIN(lo, coded_end);
        if (chan) c->n_coded -= c->n_coded % C;
    }
    if (coded_end > c->n_coded) {
        if ((st = ensure_chunks(c, coded_end)) != KVQ_OK) return st;
        if (!c->coded) fix_probe(c);
        row_source src = {k, v, c->n_tokens};
        if (chan && !c->chan_fixed) chan_fix_bits(c, &src);
        if (chan && (st = kvqi_chan_layouts(c)) != KVQ_OK) return st;
        if ((st = encode_tokens(c, &src, c->n_coded, coded_end - c->n_coded)) != KVQ_OK) return st;
        if (chan) encode_chan_chunks(c, &src, c->n_coded, coded_end, KVQI_MAX((size_t)c->cfg.n_sink, lo));
        c->n_coded = coded_end;
    } else if (ready && !c->coded) {
        fix_probe(c);
    }
    if (c->n_tokens < c->cfg.n_sink) {
        size_t take = KVQI_MIN(n_tokens, (size_t)c->cfg.n_sink - c->n_tokens);
        to_fp16(c, k, take * row, c->sink_k + c->n_tokens * row);
        to_fp16(c, v, take * row, c->sink_v + c->n_tokens * row);
    }
    if (R > 0) { /* the newest tokens into the ring, after the evicted ones were encoded */
        for (size_t t = n_tokens > R ? n_tokens - R : 0; t < n_tokens; t++)
            for (uint32_t g = 0; g < c->n_kv; g++) {
                ring_write(c, k + t * row + (size_t)g * c->dim, 0, c->n_tokens + t, g,
                           c->win_k + ring_at(c, c->n_tokens + t, g));
                ring_write(c, v + t * row + (size_t)g * c->dim, 1, c->n_tokens + t, g,
                           c->win_v + ring_at(c, c->n_tokens + t, g));
            }
    }
    c->last_append = c->n_tokens;
    c->n_tokens = end;
    if (c->coded && c->stage_k) { /* every staged token is coded or in the ring now */
        kvqi_free(c->stage_k);
        kvqi_free(c->stage_v);
        c->stage_k = c->stage_v = NULL;
    }
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_observe_queries(kvq_cache *c, const float *q, uint32_t n_q_heads,
                                             size_t n_queries) {
    if (!c || !q || n_q_heads == 0 || n_queries == 0 || n_q_heads % c->n_kv != 0)
        return KVQ_ERR_INVALID_ARG;
    size_t n;
    if (kvqi_mul_size((size_t)n_q_heads * c->dim, n_queries, &n) != KVQ_OK) return KVQ_ERR_OVERFLOW;
    if (c->key.path != KVQI_PATH_CHAN || c->chan_fixed) return KVQ_OK;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(q[i])) return KVQ_ERR_INVALID_ARG;
    return kvqi_chan_observe(c, q, n_q_heads, n_queries);
}

KVQ_API kvq_status kvq_cache_attend(kvq_cache *c, const float *q, uint32_t n_q_heads,
                                    size_t n_queries, float scale, kvq_threadpool *pool,
                                    float *out) {
    if (!c || !q || !out || n_q_heads == 0 || n_queries == 0) return KVQ_ERR_INVALID_ARG;
    if (n_q_heads % c->n_kv != 0) {
        kvqi_set_msg(NULL, 0, "cache attend: %u query heads are not a multiple of the cache's %u KV heads (GQA)",
                     n_q_heads, c->n_kv);
        return KVQ_ERR_MISMATCH;
    }
    if (n_queries > c->n_tokens) return KVQ_ERR_INVALID_ARG;
    /* a sliding-window cache holds what the last append's queries can see */
    if (c->cfg.sliding_window && n_queries > c->n_tokens - c->last_append) return KVQ_ERR_INVALID_ARG;
    if (!(scale > 0.0f) || !isfinite(scale)) return KVQ_ERR_INVALID_ARG;
    return kvqi_cache_attend_impl(c, q, n_q_heads, n_queries, scale, pool, out);
}

/* ------------------------------------------------------------------ memory */

static void fixed_parts(const kvq_cache *c, kvq_cache_memory_info *m) {
    size_t row = (size_t)c->n_kv * c->dim;
    /* exact tokens in fp16: the recent window as far as it has grown, and the sinks */
    m->window = (uint64_t)2 * c->win_cap * c->n_kv * c->ring_head +
                (uint64_t)2 * c->cfg.n_sink * row * sizeof(uint16_t);
    if (c->stage_k) /* the probe's first tokens, staged until outliers and the mean are fixed */
        m->window += (uint64_t)2 * KVQI_OUTLIER_PROBE_TOKENS * row * sizeof(float);
    m->outliers = 0;
    if (c->n_out) {
        m->outliers += (uint64_t)c->n_kv * c->n_out * sizeof(uint16_t); /* channel lists */
        m->outliers += row;                                              /* channel masks */
        m->outliers += (uint64_t)KVQI_ENCODE_ROWS * c->n_out * sizeof(uint16_t);
    }
    m->shared = kvq_shared_size(c->key.quant) + kvq_shared_size(c->value.quant);
    if (c->key_mean) m->shared += row * sizeof(float);
    /* the rotations read back for the fused path (one when keys and values share it) and
     * their lane orders */
    if (c->key.lane) m->shared += (uint64_t)c->dim * sizeof(uint16_t);
    if (c->value.lane) m->shared += (uint64_t)c->dim * sizeof(uint16_t);
    /* 8-bit rotated codes' 256 centroids */
    if (c->key.rot.cent8) m->shared += 256 * sizeof(float);
    if (c->value.rot.cent8) m->shared += 256 * sizeof(float);
    if (c->value.vq_cent) m->shared += 256 * 4 * sizeof(float);
    for (int side = 0; side < 2; side++) {
        const kvqi_side *S = side ? &c->value : &c->key;
        if (S->rotation_borrowed) continue; /* counted where it is owned */
        if (S->rotation) m->shared += (uint64_t)c->dim * c->dim * sizeof(float);
        if (S->rotation_h) m->shared += (uint64_t)c->dim * c->dim * sizeof(uint16_t);
    }
    /* the sign keys' projection read back */
    if (c->key.proj) m->shared += (uint64_t)c->key.signs.m * c->dim * sizeof(float);
    m->overhead = sizeof *c + (uint64_t)c->chunk_table_cap * sizeof(kvqi_chunk) +
                  (uint64_t)KVQI_ENCODE_ROWS * c->dim * sizeof(float) +
                  (uint64_t)c->n_scratch * (sizeof(kvqi_attend_scratch) + c->scratch_bytes_each);
    if (c->chan_bits) /* channel keys: bits per channel and the plane layouts */
        m->overhead += (uint64_t)kvqi_chan_held_bytes(c);
    if (c->ring_q) m->shared += kvq_shared_size(c->ring_q);
    if (c->rope_freq) /* position-aware keys: the frequencies and one call's positions */
        m->overhead += (uint64_t)c->dim / 2 * sizeof(double) +
                       (uint64_t)c->cfg.chunk_tokens * sizeof(int32_t);
    if (c->pre_freq) /* keys before RoPE: a chunk's start angles; unless the donor layer's,
                      * frequencies and C theta (double), the offsets' cos and sin (float) */
        m->overhead += (uint64_t)c->dim / 2 * 2 * sizeof(double) +
                       (c->pre_borrowed ? 0
                                        : (uint64_t)c->dim / 2 * 3 * sizeof(double) +
                                              (uint64_t)c->dim * c->cfg.chunk_tokens * sizeof(float));
}

KVQ_API kvq_status kvq_cache_memory(const kvq_cache *c, kvq_cache_memory_info *m) {
    if (!c || !m) return KVQ_ERR_INVALID_ARG;
    memset(m, 0, sizeof *m);
    fixed_parts(c, m);
    /* codes held: the coded tokens the sliding window has not freed */
    uint64_t freed = (uint64_t)c->first_chunk * c->cfg.chunk_tokens;
    uint64_t coded = c->n_coded > freed ? c->n_coded - freed : 0;
    m->key_codes = coded * c->n_kv * c->key.code_size;
    m->value_codes = coded * c->n_kv * c->value.code_size;
    uint64_t outlier_values = coded * c->n_kv * c->n_out * sizeof(uint16_t);
    m->outliers += outlier_values;
    /* arena bytes not (yet, or no longer) holding codes: the tail of the last slab, the
     * chunks of a slab the sliding window has partly left */
    m->overhead += c->arena_bytes - (m->key_codes + m->value_codes + outlier_values);
    m->n_tokens = c->n_tokens;
    m->total = m->key_codes + m->value_codes + m->window + m->outliers + m->shared + m->overhead;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_tokens_fit(const kvq_cache_config *cfg, uint32_t n_layers,
                                        uint64_t budget_bytes, uint64_t *n_tokens) {
    if (!cfg || !n_tokens || n_layers == 0) return KVQ_ERR_INVALID_ARG;
    *n_tokens = 0;
    kvq_cache *c;
    kvq_status st = kvq_cache_create(cfg, &c);
    if (st != KVQ_OK) return st;
    kvq_cache_memory_info m;
    memset(&m, 0, sizeof m);
    fixed_parts(c, &m);
    /* the whole window once the context outgrows it: its tokens need no codes */
    uint64_t W = cfg->window;
    m.window += (uint64_t)2 * c->ring * c->n_kv * c->ring_head;
    /* the cache's own state; attend's per-thread scratch (a few tens of KB) is not counted */
    uint64_t fixed = m.window + m.outliers + m.shared + m.overhead;
    uint64_t chunk = c->chunk_bytes, C = c->cfg.chunk_tokens;
    kvq_cache_free(c);
    uint64_t per_layer = budget_bytes / n_layers;
    if (per_layer <= fixed) return KVQ_OK;
    /* whole slabs of chunks plus a chunk table that doubles from 8 entries */
    uint64_t lo = 0, hi = (per_layer - fixed) / chunk + 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo + 1) / 2, cap = 8, have = slab_chunks(C, mid);
        while (cap < mid + span_for(C, 0, (size_t)mid)) cap *= 2;
        if (fixed + have * chunk + cap * sizeof(kvqi_chunk) <= per_layer) lo = mid;
        else hi = mid - 1;
    }
    uint64_t tokens = lo * C + W;
    if (cfg->max_tokens && tokens > cfg->max_tokens) tokens = cfg->max_tokens;
    *n_tokens = tokens;
    return KVQ_OK;
}

/* --------------------------------------------------------------- cache sets */

struct kvq_cache_set {
    uint32_t n_layers;
    kvq_cache **layers;
};

KVQ_API void kvq_cache_set_free(kvq_cache_set *s) {
    if (!s) return;
    if (s->layers) /* the first layer last: the others borrow its rotations */
        for (uint32_t i = s->n_layers; i-- > 0;) kvq_cache_free(s->layers[i]);
    kvqi_free(s->layers);
    kvqi_free(s);
}

KVQ_API kvq_status kvq_cache_set_create(uint32_t n_layers, const kvq_cache_config *per_layer,
                                        kvq_cache_set **out) {
    if (!out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    if (n_layers == 0 || !per_layer) return KVQ_ERR_INVALID_ARG;
    kvq_cache_set *s = kvqi_calloc_array(1, sizeof *s);
    if (!s) return KVQ_ERR_NOMEM;
    s->layers = kvqi_calloc_array(n_layers, sizeof *s->layers);
    if (!s->layers) {
        kvqi_free(s);
        return KVQ_ERR_NOMEM;
    }
    s->n_layers = n_layers;
    for (uint32_t i = 0; i < n_layers; i++) {
        kvq_status st = kvqi_cache_create_shared(&per_layer[i], i ? s->layers[0] : NULL, &s->layers[i]);
        if (st != KVQ_OK) {
            kvq_cache_set_free(s);
            return st;
        }
    }
    *out = s;
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_set_layer(kvq_cache_set *s, uint32_t layer, kvq_cache **out) {
    if (!s || !out || layer >= s->n_layers) return KVQ_ERR_INVALID_ARG;
    *out = s->layers[layer];
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_set_reset(kvq_cache_set *s) {
    if (!s) return KVQ_ERR_INVALID_ARG;
    for (uint32_t i = 0; i < s->n_layers; i++) {
        kvq_status st = kvq_cache_reset(s->layers[i]);
        if (st != KVQ_OK) return st;
    }
    return KVQ_OK;
}

KVQ_API kvq_status kvq_cache_set_memory(const kvq_cache_set *s, kvq_cache_memory_info *m) {
    if (!s || !m) return KVQ_ERR_INVALID_ARG;
    memset(m, 0, sizeof *m);
    for (uint32_t i = 0; i < s->n_layers; i++) {
        kvq_cache_memory_info l;
        kvq_status st = kvq_cache_memory(s->layers[i], &l);
        if (st != KVQ_OK) return st;
        m->key_codes += l.key_codes;
        m->value_codes += l.value_codes;
        m->window += l.window;
        m->outliers += l.outliers;
        m->shared += l.shared;
        m->overhead += l.overhead;
        m->total += l.total;
        if (l.n_tokens > m->n_tokens) m->n_tokens = l.n_tokens;
    }
    return KVQ_OK;
}
