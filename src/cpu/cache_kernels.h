/*
 * cache_kernels.h - the fused decode-attention kernels of the KV cache, per ISA.
 * Each kernel scores G grouped query heads against (or accumulates G weighted sums of)
 * a run of codes in one layout, so one load of a code serves every head of the group.
 * Layouts: fp32 rows, fp16 rows, llama.cpp q8_0 / q4_0 blocks, and rotated scalar codes
 * (an fp16 norm + b-bit indices into a centroid table, TurboQuant arXiv 2504.19874).
 */
#ifndef KVQ_CACHE_KERNELS_H
#define KVQ_CACHE_KERNELS_H

#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu/exp_neg.h"
#include "kvq.h"

#include "cpu/x86_dot.h"

/* Rotated scalar code: x = norm * R^T u with u_r = sum_p s_p * KVQI_ROT_CENT(L, p)[index_p(r)]
 * over n_pass passes of b-bit indices (turboquant_mse: one pass; turboquant_rvq: a
 * Gaussian pass then Laplacian residual passes). norm is fp16 at norm_offset; s_0 = 1 and
 * s_p (p > 0) is fp16 at scale_offset[p]; pass p's indices are an LSB-first bit stream at
 * index_offset[p]. The kernels read the indices of 32-coordinate blocks in the order the
 * unpacking leaves them (kvqi_rot_lane_coordinate), so the query and the accumulator live
 * in that permuted order and no shuffle is spent per token. */
#define KVQI_ROT_MAX_PASSES 4
typedef struct kvqi_rot_layout {
    uint32_t dim;       /* multiple of 32 (of 64 for 2 bits) */
    uint32_t bits;      /* 1, 2, 3, 4, or 8 (8: one pass) */
    uint32_t n_pass;    /* 1..KVQI_ROT_MAX_PASSES */
    uint32_t code_size; /* bytes per vector (stride) */
    uint32_t norm_offset;
    uint32_t scale_offset[KVQI_ROT_MAX_PASSES]; /* [0] unused */
    uint32_t index_offset[KVQI_ROT_MAX_PASSES];
    /* pass p's 2^bits centroids at KVQI_ROT_CENT(L, p) = cent + 16 p (entries past 2^bits
     * zero); 8 bits (one pass): the 256 at cent8 (allocated, owned by the layout's side) */
    float cent[KVQI_ROT_MAX_PASSES * 16];
    float *cent8;
    /* 2-, 3- and 4-bit one-pass codes scored in integers:
     * KVQI_ROT_CENT(L, 0)[i] ~ (cent_u8[i] - 128) * cent_scale (entries past 2^bits unused) */
    int has_u8;
    uint8_t cent_u8[16];
    float cent_scale;
} kvqi_rot_layout;
#define KVQI_ROT_CENT(L, p) ((L)->cent8 ? (L)->cent8 : (L)->cent + 16 * (size_t)(p))

/* The integer key path's query: the coordinate that byte byte_pos of the int8 query
 * pairs with, in the order the kernels unpack 128 coordinates into two 64-byte vectors.
 * 4 bits: the 64 even coordinates of 64 code bytes (low nibbles), then the 64 odd ones.
 * 2 bits: 32 code bytes give shifts 0 and 4, then 2 and 6 (coordinates 4i, 4i+2, 4i+1,
 * 4i+3 for i < 32). 3 bits: the natural order. */
static inline uint32_t kvqi_rot_i8_coordinate(uint32_t bits, uint32_t byte_pos) {
    uint32_t base = byte_pos - byte_pos % 128, in = byte_pos % 128;
    if (bits == 4) return base + (in < 64 ? 2 * in : 2 * (in - 64) + 1);
    if (bits == 2) return base + 4 * (in % 32) + (in / 64) + 2 * ((in / 32) % 2);
    return byte_pos;
}

/* The integer value path's accumulator order: per 128 coordinates, the two 64-byte
 * vectors of kvqi_rot_i8_coordinate (low half, high half), each as four 16-lane int32
 * vectors of the 8-bit to 16-bit widening of two tokens' interleaved bytes: vector m
 * holds byte positions 32 (m % 2) + 8 (m / 2) + {0..7, 16..23}. */
static inline uint32_t kvqi_rot_v16_coordinate(uint32_t bits, uint32_t p) {
    uint32_t base = p - p % 128, in = p % 128, m = (in % 64) / 16, e = in % 16;
    uint32_t j = (in / 64) * 64 + (m % 2) * 32 + (m / 2) * 8 + (e / 8) * 16 + e % 8;
    return kvqi_rot_i8_coordinate(bits, base + j);
}

/* The 8-bit-weight value path's accumulator order: per 128 coordinates, the two 64-byte
 * vectors of kvqi_rot_i8_coordinate, each as four 16-lane int32 vectors of four tokens'
 * interleaved bytes: vector m, lane e holds byte position 16 (e / 4) + 4 m + e % 4. */
static inline uint32_t kvqi_rot_v8_coordinate(uint32_t bits, uint32_t p) {
    uint32_t base = p - p % 128, in = p % 128, m = (in % 64) / 16, e = in % 16;
    return kvqi_rot_i8_coordinate(bits, base + (in / 64) * 64 + 16 * (e / 4) + 4 * m + e % 4);
}

/* lane -> coordinate: the coordinate that lane p of the kernels' permuted order holds.
 * Same on every ISA (the scalar reference uses it too). */
uint32_t kvqi_rot_lane_coordinate(uint32_t bits, uint32_t lane);

/* 1-bit sign codes scored through a projection z = P q of the query (QJL arXiv
 * 2406.03482: P = S; RaBitQ arXiv 2405.12497 1-bit: P = the rotation; TurboQuant prod
 * arXiv 2504.19874: P = S Pi on the residual's signs):
 *   score_t = c0 * f_t * (2 * sum_{i: bit i set} z_i - sum_i z_i),
 * f_t = fp16 at num_offset (divided by the fp16 at den_offset when there is one), bits an
 * LSB-first stream of m bits at bits_offset. The query side is a table: lut[j][b] = sum
 * of z over the set bits of byte value b in byte j, so a code costs m / 8 lookups. */
#define KVQI_SIGN_NO_DEN UINT32_MAX
#define KVQI_SIGN_MAX_M 1024u
typedef struct kvqi_sign_layout {
    uint32_t m;           /* sign bits, a multiple of 8, at most KVQI_SIGN_MAX_M */
    uint32_t code_size;   /* bytes per vector (stride) */
    uint32_t bits_offset;
    uint32_t num_offset;
    uint32_t den_offset;  /* KVQI_SIGN_NO_DEN: none */
    float c0;
} kvqi_sign_layout;

/* lut [m/8][256] for one query's projection z[m] (the reference every kernel reads). */
void kvqi_cache_sign_lut(const float *z, uint32_t m, float *lut);

/* Channel keys' codes of one head (cache/chan.c): each channel's b-bit code is cut into
 * planes of 4, 2 and 1 bits, narrowest at the bottom (b = 1: 1; 2: 2; 3: 1 + 2; 4: 4;
 * 5: 1 + 4; 6: 2 + 4; 7: 1 + 2 + 4; 8: 4 + 4). Planes of one width go four to a group;
 * a group's four planes are byte p % 4 of its token slots: width 4, token l at byte
 * 64 (l / 32) + 4 (l % 16) + p % 4, bits 4 ((l / 16) % 2); width 2, byte 4 (l % 16) + p % 4,
 * bits 2 (l / 16); width 1, byte 4 (l % 8) + p % 4, bit l / 8. So one load and a shift and
 * mask give 16 (or 8) tokens' four planes as bytes 4 t + i, which multiply-add
 * instructions consume directly. A chunk block is lo[dim] and step[dim] in fp16, then per
 * 64 tokens one unit: the groups of 4 bits (128 bytes each), of 2 bits (64), of 1 bit
 * (32), 8 sum_j bits[j] bytes in all.
 * Whole codes: of the channels of b = 8, 7, 6, 5 and 3 bits, the first 4 nc[b] in
 * channel order (nc[b] = their count / 4) go four to a whole group, whose planes are
 * groups of the same four channels at the head of each width (4 bits: nc[8] groups of
 * two, the low planes then the high, then nc[7], nc[6], nc[5] groups; 2 bits: nc[7],
 * nc[6], nc[3]; 1 bit: nc[7], nc[5], nc[3]), so that shifts and ORs of one whole group's
 * planes give the four channels' whole codes as bytes and one multiply-add serves all
 * their bits. The other channels' planes follow in channel order per width; the last
 * 4-bit planes that do not fill a group become two 2-bit planes each, then the last 2-bit
 * planes that do not fill one two 1-bit planes each, so the 1-bit planes fill whole groups
 * whenever sum_j bits[j] % 4 == 0 (else the last is padded with empty planes).
 * The score's slots, four to a slot group: the whole groups' channels (shift 0) in the
 * order 8, 7, 6, 5, 3, then the other planes (4, 2, 1 bits, shift as the plane's). */
typedef struct kvqi_chan_layout {
    uint32_t dim;
    uint32_t n4, n2, n1;     /* groups of four planes of 4, 2 and 1 bits, in that order */
    uint32_t n_planes;       /* 4 (n4 + n2 + n1) */
    uint32_t nc[9];          /* whole groups of b bits (b = 3, 5, 6, 7, 8; others 0) */
    uint32_t n_slots;        /* 4 (sum nc + the groups of planes not in whole groups) */
    uint32_t n_padded;       /* n_slots rounded up to 16: the weights' length */
    uint32_t unit_bytes;     /* 128 n4 + 64 n2 + 32 n1 */
    float wmax;              /* the largest weight times 2^shift: 32640, less where the int32
                              * sums of sum_j (2^bits[j] - 1) codes could overflow */
    const uint16_t *chan;    /* plane p's channel (padding: 0) */
    const uint8_t *shift;    /* plane p holds bits [shift, shift + width) of the code */
    const uint8_t *width;    /* 4, 2, 1 (padding: 0) */
    const float *top;        /* [dim] channel j's largest 2^shift over its slots (0 without bits) */
    const uint16_t *pair_chan;  /* slot channels in the weights' pair order (kvqi_chan_weights_ref) */
    const uint16_t *pair_shift; /* their shifts in that order (padding: 16) */
} kvqi_chan_layout;

/* Groups of planes of 4, 2 and 1 bits that whole groups take (the rest follow them). */
static inline void kvqi_chan_whole_groups(const kvqi_chan_layout *L, uint32_t *w4, uint32_t *w2, uint32_t *w1) {
    *w4 = 2 * L->nc[8] + L->nc[7] + L->nc[6] + L->nc[5];
    *w2 = L->nc[7] + L->nc[6] + L->nc[3];
    *w1 = L->nc[7] + L->nc[5] + L->nc[3];
}

/* The accum kernels take at most this many tokens per call (the attend block). */
#define KVQI_MAX_BLOCK_TOKENS 64u

typedef struct kvqi_cache_kernels {
    kvq_isa isa;
    /* scores[h * ld + t] = <q[h], k_t> for h < G, t < n. Rows of k are `stride` bytes
     * apart; q is [G][dim] fp32 (permuted order for rot). */
    void (*score_f32)(const float *q, uint32_t G, uint32_t dim, const uint8_t *k, size_t stride,
                      size_t n, float *scores, size_t ld);
    void (*score_f16)(const float *q, uint32_t G, uint32_t dim, const uint8_t *k, size_t stride,
                      size_t n, float *scores, size_t ld);
    void (*score_q8_0)(const float *q, uint32_t G, uint32_t dim, const uint8_t *k, size_t stride,
                       size_t n, float *scores, size_t ld);
    void (*score_q4_0)(const float *q, uint32_t G, uint32_t dim, const uint8_t *k, size_t stride,
                       size_t n, float *scores, size_t ld);
    void (*score_rot)(const kvqi_rot_layout *L, const float *q, uint32_t G, const uint8_t *k,
                      size_t n, float *scores, size_t ld);
    /* acc[h][dim] += sum_t w[h * ld + t] * v_t for h < G, t < n. */
    void (*accum_f32)(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                      size_t stride, size_t n, float *acc);
    void (*accum_f16)(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                      size_t stride, size_t n, float *acc);
    void (*accum_q8_0)(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                       size_t stride, size_t n, float *acc);
    void (*accum_q4_0)(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                       size_t stride, size_t n, float *acc);
    void (*accum_rot)(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                      const uint8_t *v, size_t n, float *acc);
    /* Keys of 2-, 3- or 4-bit one-pass rotated codes (has_u8, dim % 128 == 0) in
     * integers: scores = norm * qscale[h] * (sum_j cent_u8[idx_j] * q8[h][j] - qsum[h]),
     * q8 in the kvqi_rot_i8_coordinate order, qsum[h] = 128 * sum q8[h]. AVX-512 VNNI
     * and AVX2 (vpmaddwd on the query widened to 16 bits) have it; NULL elsewhere (the
     * float score_rot is used);
     * rot_i8_bits has bit b set for each width b it runs fast (others: the reference). */
    void (*score_rot_i8)(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,
                         const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n,
                         float *scores, size_t ld);
    uint32_t rot_i8_bits;
    /* Sign codes (m == dim, dim % 128 == 0) against an int8 projection z8 = round(z /
     * zscale): S = sum of z8 over the set bits, v = f * (zscale[h] * (2 S - zsum8[h]))
     * with f as score_signs takes it; scores = v (+= with accumulate). NULL without VNNI. */
    void (*score_signs_i8)(const kvqi_sign_layout *L, const int8_t *z8, const float *zscale,
                           const int32_t *zsum8, uint32_t G, const uint8_t *k, size_t n,
                           int accumulate, float *scores, size_t ld);
    /* Keys of 1-bit rotated codes of any number of passes (dim % 128 == 0) in integers:
     * S_p = sum of q8[h][r] over the coordinates r whose pass-p bit is set (natural
     * order), then score = norm * qscale[h] * sum_p s_p (c_p[0] qsum[h] / 128 +
     * (c_p[1] - c_p[0]) S_p) in the reference's float order. NULL without VNNI. */
    void (*score_rot1_i8)(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,
                          const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n,
                          float *scores, size_t ld);
    /* Values of 2-, 3- or 4-bit one-pass rotated codes (has_u8, dim % 128 == 0) in
     * integers: per head, wn_t = w[h][t] * norm_t rounded to 16 bits against the block's
     * largest |wn| (kvqi_cache_accum_rot_i16_ref gives the exact steps), summed against
     * cent_u8 - 128 in int32, then acc[h][p] += sum * scale: acc in the
     * kvqi_rot_v16_coordinate order. AVX-512 VNNI and AVX2 (vpmaddwd) have it; NULL
     * elsewhere; rot_v16_bits as rot_i8_bits. */
    void (*accum_rot_i16)(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                          const uint8_t *v, size_t n, float *acc);
    uint32_t rot_v16_bits;
    /* scores[h * ld + t] += sum_o q_out[h][o] * vals[o * stride + t]: the fp16 outlier
     * channels kept apart from the key codes, channel-major */
    void (*outlier_add)(const uint16_t *vals, size_t stride, const float *q_out, uint32_t G,
                        uint32_t n_out, size_t n, float *scores, size_t ld);
    /* y[dim] += sum_r x[r] * M[r][dim] for r < rows (rotations of queries and outputs) */
    void (*axpy_rows)(const float *M, const float *x, uint32_t rows, uint32_t dim, float *y);
    /* s[t] = exp(s[t] - m) for t < n; returns the sum. Same polynomial on every ISA. */
    float (*exp_sum)(float *s, size_t n, float m);
    /* the largest of s[0..n), n >= 1 (the same on every ISA for scores without NaN) */
    float (*max_of)(const float *s, size_t n);
    /* scores[h * ld + t] (+= when accumulate) = the sign estimate of code t for query h:
     * lut [G][m/8][256], zsum[h] = sum of query h's z. Every ISA sums the lookups of a
     * code in byte order and finishes in the same operations: bit-identical results. */
    void (*score_signs)(const kvqi_sign_layout *L, const float *lut, const float *zsum,
                        uint32_t G, const uint8_t *k, size_t n, int accumulate, float *scores,
                        size_t ld);
    /* Channel keys (cache/chan.c), one head's chunk block (kvqi_chan_layout), in two steps
     * so that one chunk's weights serve all its units. chan_weights: G query heads' (q:
     * [G][dim]) int16 weights W[h * n_padded + p], scale[h] and bias[h], each head as
     * kvqi_chan_weights_ref gives them (wf: dim floats of scratch). chan_dot: tokens t in
     * [in, in + n) inside one unit of 64 (in % 64 + n <= 64), scores[h * ld + t - in] =
     * fmaf((float)acc_h(t), scale[h], bias[h]) with acc_h(t) = sum_s W_h[s] slot_s(t) in
     * int32 (a whole group's slot: its channel's code; else its plane's value). Integer sums and the reference's float operations: every ISA gives the same
     * bits. */
    void (*chan_weights)(const uint8_t *block, const kvqi_chan_layout *L, const float *q, uint32_t G,
                         int16_t *W, float *scale, float *bias, float *wf);
    void (*chan_dot)(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                     const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld);
    /* q4_0 keys (dim % 64 == 0, dim <= KVQI_QBLK_I8_MAX_DIM) against an int8 query q8
     * [G][dim] (natural order, scale qscale[h]): per block b the exact int32 sum P_b of its
     * 32 products, acc_(b % 4) = fmaf(P_b, d_b, acc_(b % 4)) over b from 0, the score
     * ((acc_0 + acc_2) + (acc_1 + acc_3)) times qscale[h] (kvqi_cache_score_q4_0_i8_ref:
     * every ISA gives the same bits). NULL: the float score_q4_0 is used. */
    void (*score_q4_0_i8)(const int8_t *q8, const float *qscale, uint32_t G, uint32_t dim,
                          const uint8_t *k, size_t stride, size_t n, float *scores, size_t ld);
    /* q8_0 keys (dim % 64 == 0, dim <= KVQI_QBLK_I8_MAX_DIM) against an int16 query q16
     * [G][dim] (natural order, scale qscale[h]: rounding 2^-16 of max |q|, far below the
     * codes' own): per 64 coordinates c (two blocks) and lane j < 16, the exact int32 sum
     * P_cj of the 4 products of block 2c + j/8's coordinates 2 (j % 8), 2 (j % 8) + 1,
     * 16 + 2 (j % 8), 17 + 2 (j % 8); then the float steps of score_q4_0_i8 (acc_j =
     * fmaf(P_cj, d, acc_j), the same fold, times qscale[h]): kvqi_cache_score_q8_0_i16_ref,
     * bit for bit on every ISA. NULL: the float score_q8_0 is used. */
    void (*score_q8_0_i16)(const int16_t *q16, const float *qscale, uint32_t G, uint32_t dim,
                           const uint8_t *k, size_t stride, size_t n, float *scores, size_t ld);
    /* Values of q4_0 blocks (dim % 32 == 0, n <= KVQI_MAX_BLOCK_TOKENS) in integers: per
     * head and block, wd_t = w[h][t] * d_t (the token's block scale) rounded to 16 bits
     * against the largest |wd| of the call, summed against the nibbles (0..15) in int32,
     * minus 8 times the rounded weights' sum, then acc[h][j] += sum * scale in natural
     * order (kvqi_cache_accum_q4_0_i16_ref: every ISA gives the same bits). NULL: the
     * float accum_q4_0 is used. */
    void (*accum_q4_0_i16)(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                           size_t stride, size_t n, float *acc);
    /* Channel keys' encoding, one row x of dim channels (dim % 16 == 0) under a chunk's
     * ranges as floats (lo, step, top = 2^bits - 1): chan_codes writes codes[j] =
     * kvqi_chan_code(x[j], lo[j], step[j], top[j]); chan_fit_sums adds the row to the sums
     * of the least-squares refinement, acc[j] += k, acc[dim + j] += k * k, acc[2 dim + j]
     * += x, acc[3 dim + j] += x * k with k that code as a float (separate products and
     * sums: every ISA gives the same bits, row after row). */
    void (*chan_codes)(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                       uint8_t *codes);
    void (*chan_fit_sums)(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                          float *acc);
    /* Values of accum_rot_i16's codes with the weights rounded to 8 bits: wn_t = w[h][t] *
     * norm_t against the block's largest |wn|, wq_t = rint(255 wn_t / max) (-255..255;
     * softmax weights give 0..255), summed against cent_u8 - 128 in int32, acc[h][p] +=
     * sum * scale in the kvqi_rot_v8_coordinate order (kvqi_cache_accum_rot_u8_ref). Four
     * tokens a vpdpbusd on AVX-512 VNNI (a head with a negative weight: the same sums one
     * at a time); NULL elsewhere; rot_v8_bits: the widths it serves (2 and 3 bits). The
     * 8-bit weights add about 0.4 % of the output's norm to its error, against 2-bit
     * values' own 25 % (real KV of SmolLM2 and Gemma-3; 4-bit values: 7 %). */
    void (*accum_rot_u8)(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                         const uint8_t *v, size_t n, float *acc);
    uint32_t rot_v8_bits;
    /* Channel keys coded before RoPE (cache/positions.c): tokens t in [in, in + n) of one
     * unit of 64 (in % 64 + n <= 64) whose first token sits at offset u0 of its chunk.
     * With lo[j], step[j] the block's fp16 minima and steps as floats, each key k_j =
     * lo[j] + sum over channel j's planes p, in plane order, of (step[j]
     * 2^shift_p) v_p(t) (fmaf, the first from lo[j]); each RoPE pair i (channels a = i, b =
     * i + dim / 2 with neox, else 2 i, 2 i + 1) turned by its offset's angle, c = cs[i C +
     * u], s = sn[i C + u] with u = u0 + t % 64: ka = fmaf(k_a, c, -(k_b s)), kb = fmaf(k_a,
     * s, k_b c); per head h sums over the pairs in order A_h = fmaf(qt_h[a], ka, A_h), B_h =
     * fmaf(qt_h[b], kb, B_h) from 0, scores[h * ld + t - in] = A_h + B_h (qt: [G][dim], the
     * queries turned back to the chunk's start). Every ISA gives the same bits. */
    void (*chan_prerope_scores)(const uint8_t *block, const kvqi_chan_layout *L, const float *qt, uint32_t G,
                                const float *cs, const float *sn, size_t C, size_t u0, int neox, size_t in, size_t n,
                                float *scores, size_t ld);
} kvqi_cache_kernels;

/* A channel's code: the nearest of the levels lo + i step, i = 0..top, clamped; 0 where
 * there is no step (a channel without bits). */
static inline uint32_t kvqi_chan_code(float x, float lo, float step, float top) {
    if (!(step > 0.0f)) return 0;
    float v = rintf((x - lo) / step);
    return v <= 0.0f ? 0u : v >= top ? (uint32_t)top : (uint32_t)v;
}

/* The widest head the q8_0 / q4_0 integer key kernels take. */
#define KVQI_QBLK_I8_MAX_DIM 512u
/* Reference of score_q4_0_i8. */
void kvqi_cache_score_q4_0_i8_ref(const int8_t *q8, const float *qscale, uint32_t G, uint32_t dim,
                                  const uint8_t *k, size_t stride, size_t n, float *scores, size_t ld);
/* Reference of score_q8_0_i16. */
void kvqi_cache_score_q8_0_i16_ref(const int16_t *q16, const float *qscale, uint32_t G, uint32_t dim,
                                   const uint8_t *k, size_t stride, size_t n, float *scores, size_t ld);

/* chan_*.c */
void kvqi_chan_weights_scalar(const uint8_t *block, const kvqi_chan_layout *L, const float *q, uint32_t G,
                              int16_t *W, float *scale, float *bias, float *wf);
/* The SIMD kernels of chan_prerope_scores: a layout's planes in plane order (group, byte
 * lane, channel, whether it is the channel's first, step 2^shift) and the channels
 * without bits (bare[*n_bare]); returns the plane count. */
typedef struct kvqi_pre_op {
    uint16_t grp, lane, chan, first;
    float sc;
} kvqi_pre_op;
uint32_t kvqi_chan_pre_ops(const kvqi_chan_layout *L, const float *step, kvqi_pre_op *ops, uint16_t *bare,
                           uint32_t *n_bare);
void kvqi_chan_prerope_scores_scalar(const uint8_t *block, const kvqi_chan_layout *L, const float *qt, uint32_t G,
                                     const float *cs, const float *sn, size_t C, size_t u0, int neox, size_t in,
                                     size_t n, float *scores, size_t ld);
void kvqi_chan_dot_scalar(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                          const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld);
void kvqi_chan_codes_scalar(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                            uint8_t *codes);
void kvqi_chan_fit_sums_scalar(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                               float *acc);
/* Bytes of the arrays of one head's layout (kvqi_chan_layout_build's mem). */
size_t kvqi_chan_layout_bytes(uint32_t dim);
/* The layout of a head whose channel j has bits[j] (0..8) bits, arrays in mem
 * (kvqi_chan_layout_bytes(dim), 4-byte aligned); dim % 16 == 0. */
void kvqi_chan_layout_build(kvqi_chan_layout *L, const uint8_t *bits, uint32_t dim, void *mem);
/* The built layout L with arrays only as long as its planes and slots need (16 more each),
 * copied to dst and mem; returns the bytes of mem (mem NULL: only those). */
size_t kvqi_chan_layout_pack(const kvqi_chan_layout *L, kvqi_chan_layout *dst, void *mem);
/* Plane p's value (width bits) of token l < 64 in a unit, and its setting (OR: the unit
 * starts zeroed); a channel's code from its planes, token t of the block (64-token units
 * after the ranges). */
uint32_t kvqi_chan_plane_at(const kvqi_chan_layout *L, const uint8_t *unit, uint32_t p, uint32_t l);
void kvqi_chan_plane_put(const kvqi_chan_layout *L, uint8_t *unit, uint32_t p, uint32_t l, uint32_t v);
uint32_t kvqi_chan_code_at(const kvqi_chan_layout *L, const uint8_t *block, uint32_t j, size_t t);
/* Token l's codes (codes[j], channel order) into its unit's planes, as kvqi_chan_plane_put
 * plane after plane. */
void kvqi_chan_put_codes(const kvqi_chan_layout *L, uint8_t *unit, uint32_t l, const uint8_t *codes);
/* The query side of chan_dot (chan_weights) for one head q[dim], the reference every ISA
 * reproduces: w_j = q_j step_j, max = max_j |w_j| top_j, scale = max / wmax, channel
 * weights W_j = rint(w_j * (wmax / max)) and slot weights W[s'] = W_j 2^shift_s as int16
 * (so acc = sum_j W_j code_j), stored in pairs: s' = 4 (s / 4) + {0, 2, 1, 3}[s % 4]
 * (slots 0 and 2 of a group, then 1 and 3); bias = sum_j q_j lo_j (fmaf into 16 lanes
 * j % 16, folded 8, 4, 2, 1). wf: dim floats of scratch. */
void kvqi_chan_weights_ref(const uint8_t *block, const kvqi_chan_layout *L, const float *q, int16_t *W, float *scale,
                           float *bias, float *wf);
/* The most planes a head of dim channels can have (n_padded <= this: slots <= planes). */
uint32_t kvqi_chan_planes_cap(uint32_t dim);

/* Kernels for a resolved ISA; ISAs without their own version fall back per entry. AVX2
 * is the AVX-VNNI build of the AVX2 kernels where the CPU has it (KVQ_NO_AVXVNNI=1: not). */
const kvqi_cache_kernels *kvqi_cache_kernels_for(kvq_isa resolved);
/* Every kernel set this CPU runs, for tests: the scalar set, then each ISA's, and the
 * plain AVX2 build too where the AVX2 entry is its AVX-VNNI build; returns the count
 * (at most max written). */
size_t kvqi_cache_kernel_sets(const kvqi_cache_kernels **out, size_t max);

/* The scalar set (tests compare the others against it). */
extern const kvqi_cache_kernels kvqi_cache_kernels_scalar;
/* Reference of score_rot_i8 (exact integer sums, so SIMD versions match it bit for bit). */
void kvqi_cache_score_rot_i8_ref(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,
                                 const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n,
                                 float *scores, size_t ld);
/* Reference of score_signs_i8 (exact integer sums, the same float steps). */
void kvqi_cache_score_signs_i8_ref(const kvqi_sign_layout *L, const int8_t *z8, const float *zscale,
                                   const int32_t *zsum8, uint32_t G, const uint8_t *k, size_t n,
                                   int accumulate, float *scores, size_t ld);
/* Reference of score_rot1_i8 (exact integer sums, the same float steps: bit for bit). */
void kvqi_cache_score_rot1_i8_ref(const kvqi_rot_layout *L, const int8_t *q8, const float *qscale,
                                  const int32_t *qsum, uint32_t G, const uint8_t *k, size_t n,
                                  float *scores, size_t ld);
/* Reference of accum_rot_i16 (exact integer sums: SIMD versions match it bit for bit). */
void kvqi_cache_accum_rot_i16_ref(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                                  const uint8_t *v, size_t n, float *acc);
/* Reference of accum_q4_0_i16 (exact integer sums, the same float steps: bit for bit). */
void kvqi_cache_accum_q4_0_i16_ref(const float *w, size_t ld, uint32_t G, uint32_t dim, const uint8_t *v,
                                   size_t stride, size_t n, float *acc);
/* Reference of accum_rot_u8, and its steps: one head's 8-bit weights of a block
 * (wq[t], returns the sums' scale, 0 when every weight is zero), and one head's sums of
 * those weights into acc[dim] (kvqi_rot_v8_coordinate order). */
void kvqi_cache_accum_rot_u8_ref(const kvqi_rot_layout *L, const float *w, size_t ld, uint32_t G,
                                 const uint8_t *v, size_t n, float *acc);
float kvqi_cache_rot_weights_u8(const kvqi_rot_layout *L, const float *w, const uint8_t *v, size_t n,
                                int16_t *wq);
void kvqi_cache_accum_rot_u8_head(const kvqi_rot_layout *L, const int16_t *wq, float scale, const uint8_t *v,
                                  size_t n, float *acc);
/* One head's 16-bit weights of a block: wq[t] = round(w[t] norm_t * 32767 / max |w norm|);
 * returns the scale of the integer sums (0: every weight is zero, nothing to add). */
float kvqi_cache_rot_weights_i16(const kvqi_rot_layout *L, const float *w, const uint8_t *v,
                                 size_t n, int16_t *wq);
#if defined(KVQ_HAVE_X86_SIMD)
void kvqi_chan_weights_avx2(const uint8_t *block, const kvqi_chan_layout *L, const float *q, uint32_t G,
                            int16_t *W, float *scale, float *bias, float *wf);
void kvqi_chan_dot_avx2(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                        const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld);
void kvqi_chan_weights_avx512(const uint8_t *block, const kvqi_chan_layout *L, const float *q, uint32_t G,
                              int16_t *W, float *scale, float *bias, float *wf);
void kvqi_chan_prerope_scores_avx2(const uint8_t *block, const kvqi_chan_layout *L, const float *qt, uint32_t G,
                                   const float *cs, const float *sn, size_t C, size_t u0, int neox, size_t in, size_t n,
                                   float *scores, size_t ld);
void kvqi_chan_prerope_scores_avx512(const uint8_t *block, const kvqi_chan_layout *L, const float *qt, uint32_t G,
                                     const float *cs, const float *sn, size_t C, size_t u0, int neox, size_t in,
                                     size_t n, float *scores, size_t ld);
void kvqi_chan_dot_avx512(const uint8_t *block, const kvqi_chan_layout *L, const int16_t *W, const float *scale,
                          const float *bias, uint32_t G, size_t in, size_t n, float *scores, size_t ld);
void kvqi_chan_codes_avx2(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                          uint8_t *codes);
void kvqi_chan_fit_sums_avx2(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                             float *acc);
void kvqi_chan_codes_avx512(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                            uint8_t *codes);
void kvqi_chan_fit_sums_avx512(const float *x, const float *lo, const float *step, const float *top, uint32_t dim,
                               float *acc);
void kvqi_cache_kernels_fill_avx2(kvqi_cache_kernels *k);
void kvqi_cache_kernels_fill_avx512(kvqi_cache_kernels *k);
#endif
#if defined(KVQ_HAVE_AVXVNNI)
/* the AVX2 fill of the AVX-VNNI build (x86_dot.h) */
void kvqi_cache_kernels_fill_avxvnni(kvqi_cache_kernels *k);
#endif
#if defined(KVQ_HAVE_NEON)
void kvqi_cache_kernels_fill_neon(kvqi_cache_kernels *k);
#endif

#endif /* KVQ_CACHE_KERNELS_H */
