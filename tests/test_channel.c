/* test_channel.c - the channel method: the per-vector code's half-step bound, cache keys
 * coded per channel over chunks (half a step of each channel's own range, bits spent by
 * spread), attention against a double reference and against rotated keys on keys with
 * persistent and turning channels, batching invariance, the configs it refuses, and bits
 * fixed from the first chunk's ranges weighed by the queries observed. */
#include <stdlib.h>

#include "cache/cache_internal.h"
#include "core/core.h"
#include "cpu/cache_kernels.h"
#include "cpu/cpu.h"
#include "quant/quant.h"
#include "test.h"

TEST(channel_quantizer_half_step) {
    const uint32_t dim = 64;
    const size_t n = 50;
    float *x = malloc(n * dim * sizeof(float)), *y = malloc(n * dim * sizeof(float));
    float *s = malloc(n * sizeof(float));
    uint8_t *codes = malloc(n * (4 + dim));
    REQUIRE(x && y && s && codes);
    kvqi_rng r;
    kvqi_rng_seed(&r, 7);
    for (size_t i = 0; i < n * dim; i++) x[i] = (float)kvqi_rng_normal(&r) * (1.0f + (float)(i % 5));
    for (uint32_t bits = 1; bits <= 8; bits++) {
        kvq_config cfg;
        char spec[32];
        snprintf(spec, sizeof spec, "channel:bits=%u", bits);
        REQUIRE_OK(kvq_config_parse(spec, dim, &cfg, NULL, 0));
        kvq_quantizer *q;
        REQUIRE_OK(kvq_quantizer_create(&cfg, &q));
        CHECK(kvq_code_size(q) == 4 + dim * bits / 8);
        REQUIRE_OK(kvq_encode(q, x, n, codes));
        REQUIRE_OK(kvq_decode(q, codes, n, y));
        double worst = 0.0;
        for (size_t i = 0; i < n; i++) {
            float lo = x[i * dim], hi = lo;
            for (uint32_t j = 1; j < dim; j++) {
                lo = fminf(lo, x[i * dim + j]);
                hi = fmaxf(hi, x[i * dim + j]);
            }
            double step = (hi - lo) / (double)((1u << bits) - 1u);
            for (uint32_t j = 0; j < dim; j++) {
                /* half a step, plus the fp16 rounding of the minimum and the step */
                double e = fabs((double)x[i * dim + j] - y[i * dim + j]) / (0.5 * step + 2e-3 * (hi - lo));
                if (e > worst) worst = e;
            }
        }
        CHECKF(worst <= 1.0, "bits %u: error %.3f of the bound", bits, worst);
        /* the score is <q, decoded vector> */
        REQUIRE_OK(kvq_score(q, x, codes, n, s));
        for (size_t i = 0; i < n; i++) {
            double d = 0.0, nq = 0.0, ny = 0.0;
            for (uint32_t j = 0; j < dim; j++) {
                d += (double)x[j] * y[i * dim + j];
                nq += (double)x[j] * x[j];
                ny += (double)y[i * dim + j] * y[i * dim + j];
            }
            CHECKF(fabs(s[i] - d) <= 1e-5 * sqrt(nq * ny) + 1e-6, "bits %u row %zu: %g vs %g", bits, i, s[i], d);
        }
        kvq_quantizer_free(q);
    }
    kvq_config cfg;
    CHECK_STATUS(kvq_config_parse("channel:bits=9", dim, &cfg, NULL, 0), KVQ_ERR_UNSUPPORTED);
    CHECK_STATUS(kvq_config_parse("channel:bits=4", 60, &cfg, NULL, 0), KVQ_ERR_UNSUPPORTED);
    REQUIRE_OK(kvq_config_parse("kivi", dim, &cfg, NULL, 0));
    CHECK(cfg.method == KVQ_METHOD_CHANNEL && cfg.bits == 4);
    free(x), free(y), free(s), free(codes);
}

/* RoPE-like keys: per head, half the channels a large persistent offset with a little
 * noise, the other half pairs turning with the position at their own speed. */
static float *rope_like(size_t n, uint32_t n_kv, uint32_t dim, uint64_t seed) {
    float *x = malloc(n * n_kv * dim * sizeof(float));
    if (!x) return NULL;
    kvqi_rng r;
    kvqi_rng_seed(&r, seed);
    for (size_t t = 0; t < n; t++)
        for (uint32_t g = 0; g < n_kv; g++)
            for (uint32_t j = 0; j < dim; j++) {
                float *o = x + (t * n_kv + g) * dim + j;
                double noise = kvqi_rng_normal(&r);
                if (j < dim / 2) {
                    *o = (float)(6.0 * sin(1.0 + j * (g + 1.0)) + 0.05 * noise);
                } else {
                    uint32_t p = (j - dim / 2) / 2;
                    double ang = (double)t * pow(10000.0, -(double)p / (dim / 4)), a = 1.0 + 0.1 * noise;
                    *o = (float)(j % 2 ? a * sin(ang) : a * cos(ang));
                }
            }
    if (n > 0) /* the first token an attention sink, far from the rest */
        for (size_t i = 0; i < (size_t)n_kv * dim; i++) x[i] *= 8.0f;
    return x;
}

/* Per head of every whole chunk: each coded key within half a step of its channel's
 * range over the chunk's tokens (sinks left out), bits summing to bits * dim; channels
 * of 1-2 bits on their least-squares grid, with less squared error than min-max's. */
TEST(channel_cache_keys_within_half_step) {
    const uint32_t n_kv = 2, dim = 64, C = 64;
    const size_t n = 200;
    float *k = rope_like(n, n_kv, dim, 11), *v = rope_like(n, n_kv, dim, 12);
    REQUIRE(k && v);
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=3+fp16@sink=1,window=4,chunk=64", n_kv, dim, &cfg, NULL, 0));
    CHECK(cfg.chunk_tokens == C);
    kvq_cache *c;
    REQUIRE_OK(kvq_cache_create(&cfg, &c));
    REQUIRE_OK(kvq_cache_append(c, k, v, n));
    CHECK(c->key.path == KVQI_PATH_CHAN && c->n_coded == (n - 4) / C * C);
    for (uint32_t g = 0; g < n_kv; g++) {
        uint32_t sum = 0;
        for (uint32_t j = 0; j < dim; j++) sum += c->chan_bits[g * dim + j];
        CHECK(sum == 3 * dim);
        /* the fastest-turning channel spans more than a persistent one: more bits */
        CHECK(c->chan_bits[g * dim + dim / 2] > c->chan_bits[g * dim]);
    }
    /* each head's plane layout, rebuilt from its bits */
    kvqi_chan_layout lays[2];
    void *mem = malloc(n_kv * kvqi_chan_layout_bytes(dim));
    REQUIRE(mem);
    for (uint32_t g = 0; g < n_kv; g++)
        kvqi_chan_layout_build(&lays[g], c->chan_bits + g * dim, dim, (uint8_t *)mem + g * kvqi_chan_layout_bytes(dim));
    double worst = 0.0, sse_fit = 0.0, sse_minmax = 0.0;
    uint32_t fitted = 0;
    for (size_t ch = 0; ch * C < c->n_coded; ch++)
        for (uint32_t g = 0; g < n_kv; g++) {
            const uint8_t *blk = kvqi_chunk_keys(c, ch, g);
            for (uint32_t j = 0; j < dim; j++) {
                uint16_t lo_h, st_h;
                memcpy(&lo_h, blk + 2 * j, 2);
                memcpy(&st_h, blk + 2 * (dim + j), 2);
                float lo = kvqi_fp16_to_fp32(lo_h), step = kvqi_fp16_to_fp32(st_h);
                uint32_t b = c->chan_bits[g * dim + j];
                float mn = INFINITY, mx = -INFINITY;
                for (size_t t = ch ? 0 : 1; t < C; t++) {
                    float x = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(k[((ch * C + t) * n_kv + g) * dim + j]));
                    mn = fminf(mn, x);
                    mx = fmaxf(mx, x);
                }
                /* channels of 1-2 bits: the least-squares grid (kvqi_chan_fit), whose
                 * squared error is checked against the minimum-maximum grid's */
                int fit = b >= 1 && b <= KVQI_CHAN_REFINE_BITS;
                uint16_t mm_lo_h = 0, mm_st_h = 0;
                if (fit) kvqi_channel_range(mn - c->key_mean[g * dim + j], mx - c->key_mean[g * dim + j], b, &mm_lo_h, &mm_st_h);
                double e_fit = 0.0, e_mm = 0.0, e_q8 = 0.0;
                fitted += fit;
                for (size_t t = ch ? 0 : 1; t < C; t++) {
                    const float *row = k + ((ch * C + t) * n_kv + g) * dim, *mu = c->key_mean + g * dim;
                    float x = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(row[j])), amax = 0.0f;
                    /* the ring holds keys minus the head's mean (tokens past the probe) */
                    for (uint32_t i = j / 32 * 32; i < j / 32 * 32 + 32; i++)
                        amax = fmaxf(amax, fabsf(row[i] - (ch * C + t >= 32 ? mu[i] : 0.0f)));
                    uint32_t code = kvqi_chan_code_at(&lays[g], blk, j, t);
                    float y = (b ? lo + step * (float)code : lo) + mu[j]; /* coded centered */
                    double bound = b ? 0.5 * (mx - mn) / ((1u << b) - 1u) : 0.5 * (mx - mn);
                    /* the ring's q8_0 copy (half its step: amax / 254 of the token's block
                     * of 32, on the value and on the range), then fp16 minimum and step */
                    bound += 3.0 * amax / 254.0 + 2e-3 * (fabsf(mx) + fabsf(mn)) + 1e-6;
                    if (fit) {
                        float l = kvqi_fp16_to_fp32(mm_lo_h), s = kvqi_fp16_to_fp32(mm_st_h), xc = x - mu[j];
                        float ym = l + s * (float)kvqi_channel_code(xc, l, s, b);
                        e_fit += (double)(x - y) * (x - y);
                        e_mm += (double)(xc - ym) * (xc - ym);
                        e_q8 += (double)amax * amax / (254.0 * 254.0);
                        continue;
                    }
                    double e = fabs(x - y) / bound;
                    if (e > worst) worst = e;
                }
                /* per channel: never worse than min-max beyond the ring's q8_0 noise (the
                 * fit sees the ring's rows, whose half step may rival a small channel) */
                CHECKF(sqrt(e_fit) <= sqrt(1.05 * e_mm) + 2.0 * sqrt(e_q8) + 1e-3 * (mx - mn) * sqrt((double)C),
                       "chunk %zu head %u channel %u: %g > %g", ch, g, j, e_fit, e_mm);
                sse_fit += e_fit;
                sse_minmax += e_mm;
            }
        }
    CHECKF(worst <= 1.0, "worst error %.3f of the bound", worst);
    CHECK(fitted > 0);
    CHECKF(sse_fit < 0.8 * sse_minmax, "fitted grids: squared error %g, min-max %g", sse_fit, sse_minmax);
    free(mem);
    kvq_cache_free(c);
    free(k), free(v);
}

static double attend_err(const char *spec, const float *k, const float *v, const float *q, size_t n,
                         uint32_t n_kv, uint32_t H, uint32_t dim, const float *ref) {
    kvq_cache_config cfg;
    kvq_cache *c;
    float *out = malloc((size_t)H * dim * sizeof(float));
    double e = -1.0;
    if (out && kvq_cache_config_parse(spec, n_kv, dim, &cfg, NULL, 0) == KVQ_OK &&
        kvq_cache_create(&cfg, &c) == KVQ_OK) {
        /* decode-like: one token at a time */
        int ok = 1;
        for (size_t t = 0; t < n && ok; t++)
            ok = kvq_cache_append(c, k + t * n_kv * dim, v + t * n_kv * dim, 1) == KVQ_OK;
        if (ok && kvq_cache_attend(c, q, H, 1, 1.0f / 8.0f, NULL, out) == KVQ_OK) {
            double num = 0.0, den = 0.0;
            for (size_t i = 0; i < (size_t)H * dim; i++) {
                num += ((double)out[i] - ref[i]) * ((double)out[i] - ref[i]);
                den += (double)ref[i] * ref[i];
            }
            e = sqrt(num / den);
        }
        kvq_cache_free(c);
    }
    free(out);
    return e;
}

/* On keys with persistent and turning channels, per-channel ranges beat a rotated code
 * of more bits per key (norm included); values fp16 so the keys alone differ. */
TEST(channel_cache_attention_beats_rotated_keys) {
    const uint32_t n_kv = 2, H = 4, dim = 64;
    const size_t n = 300;
    float *k = rope_like(n, n_kv, dim, 21), *v = rope_like(n, n_kv, dim, 22);
    float *q = malloc((size_t)H * dim * sizeof(float)), *ref = malloc((size_t)H * dim * sizeof(float));
    REQUIRE(k && v && q && ref);
    /* a query that spreads its attention over the context */
    kvqi_rng r;
    kvqi_rng_seed(&r, 23);
    for (uint32_t i = 0; i < H * dim; i++) q[i] = (float)kvqi_rng_normal(&r) * (i % dim < dim / 2 ? 0.2f : 3.0f);
    /* every cache holds its exact tokens at fp16: the reference too */
    for (size_t i = 0; i < n * n_kv * dim; i++) {
        k[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(k[i]));
        v[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(v[i]));
    }
    kvqt_ref_attend(q, k, v, n, n_kv, H, dim, 1, 1.0f / 8.0f, ref);
    double ech = attend_err("channel:bits=4+fp16@sink=1", k, v, q, n, n_kv, H, dim, ref);
    /* the same exact tokens for both: channel keys hold 300 - 256 = 44 in the ring */
    double emse = attend_err("mse:bits=4+fp16@sink=1,center=1,window=44", k, v, q, n, n_kv, H, dim, ref);
    double e16 = attend_err("fp16", k, v, q, n, n_kv, H, dim, ref);
    CHECKF(ech >= 0 && emse >= 0 && e16 >= 0, "attend failed: %g %g %g", ech, emse, e16);
    CHECKF(ech < 1e-3, "channel 4-bit keys: relative error %.4f", ech);
    CHECKF(ech < 0.3 * emse, "channel %.4f not below half of rotated mse %.4f", ech, emse);
    CHECKF(e16 < 1e-5, "fp16 %.4g", e16);
    free(k), free(v), free(q), free(ref);
}

/* The codes and the answers do not depend on how the tokens were split into appends. */
TEST(channel_cache_batching_invisible) {
    const uint32_t n_kv = 2, H = 4, dim = 64;
    const size_t n = 500;
    float *k = rope_like(n, n_kv, dim, 31), *v = rope_like(n, n_kv, dim, 32);
    float *q = rope_like(3, H, dim, 33);
    float *o1 = malloc(3 * (size_t)H * dim * sizeof(float)), *o2 = malloc(3 * (size_t)H * dim * sizeof(float));
    REQUIRE(k && v && q && o1 && o2);
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=4+mse:bits=4@sink=1,window=5", n_kv, dim, &cfg, NULL, 0));
    kvq_cache *a, *b;
    REQUIRE_OK(kvq_cache_create(&cfg, &a));
    REQUIRE_OK(kvq_cache_create(&cfg, &b));
    for (size_t t = 0; t < n; t++) REQUIRE_OK(kvq_cache_append(a, k + t * n_kv * dim, v + t * n_kv * dim, 1));
    size_t have = 0, sizes[] = {3, 40, 64, 1, 100, 7};
    for (size_t i = 0; have < n; i++) {
        size_t nb = KVQI_MIN(sizes[i % 6], n - have);
        REQUIRE_OK(kvq_cache_append(b, k + have * n_kv * dim, v + have * n_kv * dim, nb));
        have += nb;
    }
    CHECK(a->n_coded == b->n_coded && a->n_coded == (n - 5) / 64 * 64);
    for (size_t ch = 0; ch * 64 < a->n_coded; ch++)
        for (uint32_t g = 0; g < n_kv; g++)
            CHECKF(memcmp(kvqi_chunk_keys(a, ch, g), kvqi_chunk_keys(b, ch, g), 64 * a->key.code_size) == 0 &&
                       memcmp(kvqi_chunk_values(a, ch, g), kvqi_chunk_values(b, ch, g), 64 * a->value.code_size) == 0,
                   "chunk %zu head %u differs", ch, g);
    REQUIRE_OK(kvq_cache_attend(a, q, H, 3, 0.125f, NULL, o1));
    REQUIRE_OK(kvq_cache_attend(b, q, H, 3, 0.125f, NULL, o2));
    CHECK(memcmp(o1, o2, 3 * (size_t)H * dim * sizeof(float)) == 0);
    /* memory: the ring holds window + a chunk of q8_0 rows; codes 4.5 + 4.25 bits */
    kvq_cache_memory_info m;
    REQUIRE_OK(kvq_cache_memory(a, &m));
    CHECK(m.key_codes == (uint64_t)a->n_coded * n_kv * (dim * 4 / 8 + 4 * dim / 64));
    CHECK(m.window == 2ull * 69 * n_kv * (dim / 32 * 34) + 2ull * 1 * n_kv * dim * 2);
    kvq_cache_free(a);
    kvq_cache_free(b);
    free(k), free(v), free(q), free(o1), free(o2);
}

TEST(channel_cache_refuses_what_it_cannot_do) {
    kvq_cache_config cfg;
    kvq_cache *c = NULL;
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=4+fp16@outliers=2", 2, 64, &cfg, NULL, 0));
    CHECK_STATUS(kvq_cache_create(&cfg, &c), KVQ_ERR_UNSUPPORTED);
    CHECK(c == NULL && strstr(kvq_last_error(), "outliers") != NULL);
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=4+fp16@chunk=96", 2, 64, &cfg, NULL, 0));
    CHECK_STATUS(kvq_cache_create(&cfg, &c), KVQ_ERR_UNSUPPORTED);
    /* q8_0 ring rows: head_dim a multiple of 32 */
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=4+fp16", 2, 48, &cfg, NULL, 0));
    CHECK(kvq_cache_create(&cfg, &c) != KVQ_OK && c == NULL);
    char msg[128];
    CHECK_STATUS(kvq_cache_config_parse("channel+fp16@chunk=x", 2, 64, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
}

/* Random bits per channel (0..8) summing to a multiple of 4 (as bits * dim does), with
 * every value present, and the layout built from them. */
static void random_layout(kvqi_rng *r, uint32_t dim, uint8_t *bits, kvqi_chan_layout *L, void *mem) {
    uint32_t sum = 0;
    for (uint32_t j = 0; j < dim; j++) {
        bits[j] = (uint8_t)(j < 9 ? j : kvqi_rng_next(r) % 9);
        sum += bits[j];
    }
    for (uint32_t j = 9; sum % 4; j++) /* up where below 8, never under 9 */
        if (bits[j] < 8) bits[j]++, sum++;
    kvqi_chan_layout_build(L, bits, dim, mem);
}

/* The layout: 8 bits * dim bytes per 64 tokens when the bits sum to a multiple of 4,
 * every channel's bits covered once by its planes, and every code of every channel put
 * plane by plane read back whole at every token. */
TEST(channel_planes_round_trip) {
    kvqi_rng r;
    kvqi_rng_seed(&r, 5);
    for (uint32_t dim = 32; dim <= 128; dim *= 2)
        for (int rep = 0; rep < 20; rep++) {
            uint8_t bits[128];
            kvqi_chan_layout L;
            void *mem = malloc(kvqi_chan_layout_bytes(dim));
            REQUIRE(mem);
            random_layout(&r, dim, bits, &L, mem);
            uint32_t sum = 0;
            for (uint32_t j = 0; j < dim; j++) sum += bits[j];
            CHECKF(L.unit_bytes == 8 * sum, "dim %u: %u bytes for %u bits", dim, L.unit_bytes, sum);
            CHECK(L.n_planes % 4 == 0 && L.n_slots % 4 == 0 && L.n_padded % 16 == 0 && L.n_padded >= L.n_slots &&
                  L.n_slots <= L.n_planes);
            /* whole groups: every four channels of 3, 5, 6, 7 or 8 bits */
            uint32_t count[9] = {0}, whole = 0;
            for (uint32_t j = 0; j < dim; j++) count[bits[j]]++;
            for (uint32_t b = 0; b <= 8; b++) {
                uint32_t want_nc = b == 3 || b >= 5 ? count[b] / 4 : 0;
                CHECKF(L.nc[b] == want_nc, "dim %u: %u whole groups of %u bits, %u channels", dim, L.nc[b], b, count[b]);
                whole += L.nc[b];
            }
            uint32_t cover[128] = {0}, n_pad = 0;
            for (uint32_t p = 0; p < L.n_planes; p++) {
                uint32_t wd = L.width[p], j = (uint32_t)L.chan[p];
                if (L.width[p] == 0) {
                    n_pad++;
                    continue;
                }
                uint32_t want = p / 4 < L.n4 ? 4 : p / 4 < L.n4 + L.n2 ? 2 : 1;
                CHECKF(wd == want, "plane %u width %u in a group of %u", p, wd, want);
                CHECK(L.shift[p] + wd <= bits[j]);
                CHECKF((cover[j] & (((1u << wd) - 1u) << L.shift[p])) == 0, "channel %u bit covered twice", j);
                cover[j] |= ((1u << wd) - 1u) << L.shift[p];
            }
            CHECK(n_pad == 0);
            for (uint32_t j = 0; j < dim; j++) CHECKF(cover[j] == (1u << bits[j]) - 1u, "channel %u: %x", j, cover[j]);
            /* two units of codes */
            size_t bytes = 4 * dim + 2 * (size_t)L.unit_bytes;
            uint8_t *block = calloc(bytes, 1), *want = malloc(2 * 64 * dim);
            REQUIRE(block && want);
            for (size_t t = 0; t < 128; t++) {
                uint8_t *unit = block + 4 * dim + t / 64 * L.unit_bytes;
                for (uint32_t j = 0; j < dim; j++)
                    want[t * dim + j] = (uint8_t)(kvqi_rng_next(&r) & ((1u << bits[j]) - 1u));
                for (uint32_t p = 0; p < L.n_planes; p++)
                    kvqi_chan_plane_put(&L, unit, p, (uint32_t)(t % 64), (uint32_t)want[t * dim + L.chan[p]] >> L.shift[p]);
            }
            for (size_t t = 0; t < 128; t++)
                for (uint32_t j = 0; j < dim; j++)
                    CHECKF(kvqi_chan_code_at(&L, block, j, t) == want[t * dim + j], "dim %u token %zu channel %u", dim,
                           t, j);
            /* the slots cover every channel's bits once: weights c_j 2^shift per slot (whole
             * groups' slots at shift 0) give sum_j c_j code_j exactly, on every ISA */
            int16_t W[4 * 128 + 16] = {0};
            int32_t cj[128];
            for (uint32_t j = 0; j < dim; j++) cj[j] = (int32_t)(kvqi_rng_next(&r) % 61) - 30;
            uint32_t n_whole_slots = 0;
            for (uint32_t s = 0; s < L.n_padded; s++) {
                uint32_t sh = L.pair_shift[s];
                if (sh < 16) W[s] = (int16_t)(cj[L.pair_chan[s]] * (1 << sh));
                n_whole_slots += s < 4 * whole && sh == 0;
            }
            CHECK(n_whole_slots == 4 * whole);
            const kvqi_cache_kernels *sets[8];
            const size_t n_sets = kvqi_cache_kernel_sets(sets, 8); /* scalar first */
            for (size_t k = 0; k < n_sets; k++) {
                const kvqi_cache_kernels *K = sets[k];
                float one = 1.0f, zero = 0.0f, got[64];
                for (size_t u = 0; u < 2; u++) {
                    K->chan_dot(block, &L, W, &one, &zero, 1, 64 * u, 64, got, 64);
                    for (size_t t = 0; t < 64; t++) {
                        int64_t sum = 0;
                        for (uint32_t j = 0; j < dim; j++) sum += (int64_t)cj[j] * want[(64 * u + t) * dim + j];
                        CHECKF(got[t] == (float)sum, "isa %d dim %u token %zu: %g vs %lld", (int)K->isa, dim,
                               64 * u + t, got[t], (long long)sum);
                    }
                }
            }
            free(block), free(want), free(mem);
        }
}

/* A block of random codes, minima and steps; the layout's own random bits. */
static void random_block(kvqi_rng *r, const kvqi_chan_layout *L, uint8_t *block, size_t bytes) {
    uint32_t dim = L->dim;
    for (size_t i = 0; i < bytes; i++) block[i] = (uint8_t)kvqi_rng_next(r);
    for (uint32_t j = 0; j < 2 * dim; j++) { /* finite minima and steps */
        uint16_t h = kvqi_fp32_to_fp16((float)kvqi_rng_normal(r) * (j < dim ? 4.0f : 0.1f));
        memcpy(block + 2 * j, &h, 2);
    }
}

/* Every ISA's score kernel gives the scalar reference's bits: random codes, bits 0..8
 * per channel, two units, spans starting and ending anywhere in a unit, 1..9 heads
 * (both sides of every group of four), heads of 64, 128 (two 64-channel tables of the
 * AVX-512 weights' permutes) and 288 channels (past that kernel's 256 for weighing four
 * heads at once). */
TEST(channel_score_kernels_match_scalar) {
    uint8_t bits[288];
    kvqi_chan_layout L;
    void *mem = malloc(kvqi_chan_layout_bytes(288));
    uint8_t *block = malloc(4 * 288 + 2 * 64 * 288);
    float *q = malloc(9 * 288 * sizeof(float)), *wf = malloc(288 * sizeof(float)), ref[9 * 64], got[9 * 64];
    size_t wn = 9 * (size_t)kvqi_chan_planes_cap(288);
    int16_t *W1 = malloc(wn * sizeof(int16_t)), *W2 = malloc(wn * sizeof(int16_t));
    float sc1[9], sc2[9], b1[9], b2[9];
    REQUIRE(mem && block && q && wf && W1 && W2);
    kvqi_rng r;
    kvqi_rng_seed(&r, 41);
    const kvqi_cache_kernels *sets[8];
    const size_t n_sets = kvqi_cache_kernel_sets(sets, 8); /* scalar first: sets[1..] */
    int compared = 0;
    for (int rep = 0; rep < 8; rep++) {
        uint32_t dim = rep < 4 ? 64 : rep < 6 ? 128 : 288;
        random_layout(&r, dim, bits, &L, mem);
        random_block(&r, &L, block, 4 * dim + 2 * (size_t)L.unit_bytes);
        for (uint32_t i = 0; i < 9 * dim; i++) q[i] = (float)kvqi_rng_normal(&r) * (rep % 2 ? 1.0f : 1e-3f);
        for (uint32_t G = 1; G <= 9; G++) {
            kvqi_cache_kernels_scalar.chan_weights(block, &L, q, G, W1, sc1, b1, wf);
            for (size_t k = 1; k < n_sets; k++) {
                const kvqi_cache_kernels *K = sets[k];
                K->chan_weights(block, &L, q, G, W2, sc2, b2, wf);
                CHECKF(memcmp(W1, W2, (size_t)G * L.n_padded * sizeof(int16_t)) == 0 &&
                           memcmp(sc1, sc2, G * sizeof(float)) == 0 && memcmp(b1, b2, G * sizeof(float)) == 0,
                       "isa %d rep %d G %u: weights differ", (int)K->isa, rep, G);
            }
            for (size_t in = 0; in < 128; in += 13) {
                size_t room = 64 - in % 64, n = (in + G) % 3 ? room : 1 + (in * 7 + G) % room;
                kvqi_cache_kernels_scalar.chan_dot(block, &L, W1, sc1, b1, G, in, n, ref, 64);
                for (size_t k = 1; k < n_sets; k++) {
                    const kvqi_cache_kernels *K = sets[k];
                    K->chan_dot(block, &L, W1, sc1, b1, G, in, n, got, 64);
                    for (uint32_t h = 0; h < G; h++)
                        CHECKF(memcmp(got + h * 64, ref + h * 64, n * sizeof(float)) == 0,
                               "isa %d rep %d in %zu n %zu G %u head %u differs", (int)K->isa, rep, in, n, G, h);
                    compared++;
                }
            }
        }
    }
    free(mem), free(block), free(q), free(wf), free(W1), free(W2);
    if (!compared) SKIP("no SIMD ISA on this CPU");
}

/* The integer score against the exact score of the decoded keys (in doubles): within
 * the documented bound, half a weight step times each code, sum_j scale / 2 * code_j,
 * plus float rounding. */
TEST(channel_score_within_bound) {
    const uint32_t dim = 128;
    uint8_t bits[128];
    kvqi_chan_layout L;
    void *mem = malloc(kvqi_chan_layout_bytes(dim));
    uint8_t *block = malloc(4 * dim + 64 * 8 * dim);
    float q[4 * 128], sc[4 * 64], w[128], scl[4], bia[4];
    int16_t Wall[4 * 3 * 128 + 64];
    REQUIRE(mem && block);
    kvqi_rng r;
    kvqi_rng_seed(&r, 43);
    double worst = 0.0, rel = 0.0;
    for (int rep = 0; rep < 20; rep++) {
        random_layout(&r, dim, bits, &L, mem);
        random_block(&r, &L, block, 4 * dim + (size_t)L.unit_bytes);
        /* a few large channels, as keys and queries of RoPE models have */
        for (uint32_t i = 0; i < 4 * dim; i++) q[i] = (float)kvqi_rng_normal(&r) * (i % 17 ? 1.0f : 8.0f);
        const uint32_t G = 4;
        REQUIRE(G * L.n_padded <= sizeof Wall / sizeof Wall[0]);
        kvqi_cache_kernels_scalar.chan_weights(block, &L, q, G, Wall, scl, bia, w);
        kvqi_cache_kernels_scalar.chan_dot(block, &L, Wall, scl, bia, G, 0, 64, sc, 64);
        for (uint32_t h = 0; h < G; h++) {
            float scale = scl[h];
            for (uint32_t t = 0; t < 64; t++) {
                double exact = 0.0, mag = 0.0, bound = 0.0;
                for (uint32_t j = 0; j < dim; j++) {
                    uint16_t lo_h, st_h;
                    memcpy(&lo_h, block + 2 * j, 2);
                    memcpy(&st_h, block + 2 * (dim + j), 2);
                    double k = kvqi_fp16_to_fp32(lo_h) + (double)kvqi_fp16_to_fp32(st_h) * kvqi_chan_code_at(&L, block, j, t);
                    exact += (double)q[h * dim + j] * k;
                    mag += fabs((double)q[h * dim + j] * k);
                }
                for (uint32_t j = 0; j < dim; j++) bound += 0.5 * scale * kvqi_chan_code_at(&L, block, j, t);
                double err = fabs(sc[h * 64 + t] - exact), lim = bound + 1e-5 * mag;
                if (err / lim > worst) worst = err / lim;
                rel += err / (mag > 0 ? mag : 1.0);
            }
        }
    }
    CHECKF(worst <= 1.0, "error %.3f of the bound", worst);
    /* and far inside it on average: 15-bit weights */
    CHECKF(rel / (20 * 4 * 64) < 1e-4, "mean relative error %.3g", rel / (20 * 4 * 64));
    free(mem), free(block);
}

/* A sliding-window cache on channel keys (Gemma's local layers): each query sees its
 * last SW positions, chunks behind the window are freed, and a chunk partly behind it is
 * coded from the tokens still visible. */
TEST(channel_cache_sliding_window) {
    const uint32_t n_kv = 1, H = 4, dim = 64, SW = 100;
    const size_t n = 700;
    float *k = rope_like(n, n_kv, dim, 61), *v = rope_like(n, n_kv, dim, 62);
    float *q = rope_like(n, H, dim, 63);
    float *ref = malloc(64 * (size_t)H * dim * sizeof(float)), *out = malloc(64 * (size_t)H * dim * sizeof(float));
    REQUIRE(k && v && q && ref && out);
    for (size_t i = 0; i < n * n_kv * dim; i++) {
        k[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(k[i]));
        v[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(v[i]));
    }
    for (size_t i = 0; i < n * H * dim; i++) q[i] *= 0.3f;
    kvq_cache_config cfg;
    /* values exact, so the keys' coding alone differs from the reference */
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=4+fp16@sink=1,window=8", n_kv, dim, &cfg, NULL, 0));
    cfg.sliding_window = SW;
    kvq_cache *c;
    REQUIRE_OK(kvq_cache_create(&cfg, &c));
    size_t have = 0, step = 0;
    double worst = 0.0;
    while (have < n) {
        /* batches of 7, 8 and once 150 (more than the window: chunks skipped whole) */
        size_t nb = KVQI_MIN(step == 30 ? (size_t)150 : (size_t)(step % 2 ? 7 : 8), n - have);
        if (nb > 64) { /* attend at most 64 queries at once here */
            REQUIRE_OK(kvq_cache_append(c, k + have * n_kv * dim, v + have * n_kv * dim, nb - 64));
            have += nb - 64;
            nb = 64;
        }
        REQUIRE_OK(kvq_cache_append(c, k + have * n_kv * dim, v + have * n_kv * dim, nb));
        have += nb;
        step++;
        REQUIRE_OK(kvq_cache_attend(c, q + (have - nb) * H * dim, H, nb, 0.125f, NULL, out));
        for (size_t i = 0; i < nb; i++) {
            size_t p = have - nb + i, lo = p + 1 > SW ? p + 1 - SW : 0;
            kvqt_ref_attend(q + p * H * dim, k + lo * n_kv * dim, v + lo * n_kv * dim, p + 1 - lo, n_kv, H, dim, 1,
                            0.125f, ref + i * H * dim);
        }
        double num = 0.0, den = 0.0;
        for (size_t i = 0; i < nb * H * dim; i++) {
            num += ((double)out[i] - ref[i]) * ((double)out[i] - ref[i]);
            den += (double)ref[i] * ref[i];
        }
        if (sqrt(num / den) > worst) worst = sqrt(num / den);
    }
    CHECKF(worst < 2e-3, "worst relative error %.4f", worst);
    kvq_cache_memory_info m;
    REQUIRE_OK(kvq_cache_memory(c, &m));
    /* codes for at most the window, a batch and two chunks, not the 700 tokens */
    CHECKF(m.key_codes <= (uint64_t)(SW + 64 + 128) * c->key.code_size, "%llu bytes of key codes",
           (unsigned long long)m.key_codes);
    kvq_cache_free(c);
    free(k), free(v), free(q), free(ref), free(out);
}

/* Bits follow each channel's range over the first chunk, not only over the 32-token
 * probe: a channel that holds still for the probe and then moves (a slow RoPE channel
 * seen at one phase) gets the bits its chunk range asks for; one that never moves gets
 * none. Same bits whether the tokens come at once or one at a time. */
TEST(channel_cache_bits_from_first_chunk) {
    const uint32_t n_kv = 1, dim = 64, C = 64;
    const size_t n = 2 * C + 8;
    float *k = malloc(n * dim * sizeof(float)), *v = malloc(n * dim * sizeof(float));
    REQUIRE(k && v);
    for (size_t t = 0; t < n; t++)
        for (uint32_t j = 0; j < dim; j++) {
            float x;
            if (j == 0) x = t < 32 ? 1.0f : 1.0f + 4.0f * (float)(t - 32) / 31.0f; /* still, then moves */
            else if (j == 1) x = 2.0f * (float)sin(0.7 * (double)t);                 /* moves throughout */
            else if (j == 2) x = 3.0f;                                               /* never moves */
            else x = 0.5f * (float)sin(0.3 * (double)t + j);
            k[t * dim + j] = t == 0 ? 8.0f * x : x;
            v[t * dim + j] = 0.1f * (float)j;
        }
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=2+fp16@sink=1,window=8,chunk=64", n_kv, dim, &cfg, NULL, 0));
    kvq_cache *a, *b;
    REQUIRE_OK(kvq_cache_create(&cfg, &a));
    REQUIRE_OK(kvq_cache_create(&cfg, &b));
    REQUIRE_OK(kvq_cache_append(a, k, v, n));
    for (size_t t = 0; t < n; t++) REQUIRE_OK(kvq_cache_append(b, k + t * dim, v + t * dim, 1));
    CHECK(a->n_coded >= C && b->n_coded == a->n_coded);
    uint32_t sum = 0;
    for (uint32_t j = 0; j < dim; j++) sum += a->chan_bits[j];
    CHECK(sum == 2 * dim);
    CHECKF(a->chan_bits[0] >= 2, "channel still over the probe: %u bits", a->chan_bits[0]);
    CHECK(a->chan_bits[1] >= 2);
    CHECK(a->chan_bits[2] == 0);
    CHECK(memcmp(a->chan_bits, b->chan_bits, dim) == 0);
    /* after a reset the bits come from the new first chunk */
    REQUIRE_OK(kvq_cache_reset(a));
    for (size_t t = 0; t < n; t++) k[t * dim] = 1.0f;
    REQUIRE_OK(kvq_cache_append(a, k, v, n));
    CHECK(a->chan_bits[0] == 0);
    kvq_cache_free(a);
    kvq_cache_free(b);
    free(k), free(v);
}

/* Observed queries weigh the bits: keys whose channels all span the same range, queries
 * that read the first 16 channels 30x harder than the rest. Those channels get more bits
 * than with the ranges alone, and the attention of such queries is more accurate; the
 * bits do not depend on how the queries were split into calls; a reset forgets them;
 * once the bits are fixed, and for other key methods, observing changes nothing; bad
 * arguments are refused with nothing summed. */
TEST(channel_cache_bits_follow_queries) {
    const uint32_t n_kv = 2, H = 4, dim = 64, NQ = 24;
    const size_t n = 300;
    float *k = malloc(n * n_kv * dim * sizeof(float)), *v = malloc(n * n_kv * dim * sizeof(float));
    float *q = malloc((size_t)NQ * H * dim * sizeof(float)), *ref = malloc((size_t)H * dim * sizeof(float));
    float *out = malloc((size_t)H * dim * sizeof(float));
    REQUIRE(k && v && q && ref && out);
    kvqi_rng r;
    kvqi_rng_seed(&r, 41);
    for (size_t i = 0; i < n * n_kv * dim; i++) {
        k[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16((float)kvqi_rng_normal(&r)));
        v[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16((float)kvqi_rng_normal(&r)));
    }
    for (size_t i = 0; i < (size_t)NQ * H * dim; i++)
        q[i] = (float)kvqi_rng_normal(&r) * (i % dim < 16 ? 1.5f : 0.05f);
    kvq_cache_config cfg;
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=2+fp16@sink=1,window=8,chunk=64", n_kv, dim, &cfg, NULL, 0));
    kvq_cache *plain, *seen, *split;
    REQUIRE_OK(kvq_cache_create(&cfg, &plain));
    REQUIRE_OK(kvq_cache_create(&cfg, &seen));
    REQUIRE_OK(kvq_cache_create(&cfg, &split));
    REQUIRE_OK(kvq_cache_observe_queries(seen, q, H, NQ));
    for (uint32_t i = 0; i < NQ; i += 8) REQUIRE_OK(kvq_cache_observe_queries(split, q + (size_t)i * H * dim, H, 8));
    REQUIRE_OK(kvq_cache_append(plain, k, v, n));
    REQUIRE_OK(kvq_cache_append(seen, k, v, n));
    for (size_t t = 0; t < n; t++) REQUIRE_OK(kvq_cache_append(split, k + t * n_kv * dim, v + t * n_kv * dim, 1));
    REQUIRE(plain->chan_fixed && seen->chan_fixed && split->chan_fixed);
    CHECK(memcmp(seen->chan_bits, split->chan_bits, (size_t)n_kv * dim) == 0);
    for (uint32_t g = 0; g < n_kv; g++) {
        uint32_t read_p = 0, read_s = 0, sum = 0;
        for (uint32_t j = 0; j < dim; j++) {
            sum += seen->chan_bits[g * dim + j];
            if (j < 16) read_p += plain->chan_bits[g * dim + j], read_s += seen->chan_bits[g * dim + j];
        }
        CHECK(sum == 2 * dim);
        CHECKF(read_s >= read_p + 24, "head %u: the read channels got %u bits with queries, %u without", g,
               read_s, read_p);
    }
    /* the last query against the whole context, exact (fp16 rows) vs each cache */
    const float *ql = q + (size_t)(NQ - 1) * H * dim;
    kvqt_ref_attend(ql, k, v, n, n_kv, H, dim, 1, 1.0f / 8.0f, ref);
    double err[2];
    kvq_cache *cs[2] = {plain, seen};
    for (int i = 0; i < 2; i++) {
        REQUIRE_OK(kvq_cache_attend(cs[i], ql, H, 1, 1.0f / 8.0f, NULL, out));
        double num = 0.0, den = 0.0;
        for (size_t x = 0; x < (size_t)H * dim; x++) {
            num += ((double)out[x] - ref[x]) * ((double)out[x] - ref[x]);
            den += (double)ref[x] * ref[x];
        }
        err[i] = sqrt(num / den);
    }
    CHECKF(err[1] < 0.6 * err[0], "relative attention error %.4f with queries, %.4f without", err[1], err[0]);
    /* fixed: the sums are gone, and observing keeps nothing */
    CHECK(seen->chan_qsum == NULL);
    REQUIRE_OK(kvq_cache_observe_queries(seen, q, H, 1));
    CHECK(seen->chan_qsum == NULL);
    /* a reset forgets the queries: the same keys give the plain bits */
    REQUIRE_OK(kvq_cache_reset(seen));
    REQUIRE_OK(kvq_cache_append(seen, k, v, n));
    CHECK(memcmp(seen->chan_bits, plain->chan_bits, (size_t)n_kv * dim) == 0);
    /* refused: nothing summed */
    REQUIRE_OK(kvq_cache_reset(seen));
    CHECK_STATUS(kvq_cache_observe_queries(NULL, q, H, 1), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cache_observe_queries(seen, NULL, H, 1), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cache_observe_queries(seen, q, 3, 1), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cache_observe_queries(seen, q, 0, 1), KVQ_ERR_INVALID_ARG);
    CHECK_STATUS(kvq_cache_observe_queries(seen, q, H, 0), KVQ_ERR_INVALID_ARG);
    q[5] = NAN;
    CHECK_STATUS(kvq_cache_observe_queries(seen, q, H, 1), KVQ_ERR_INVALID_ARG);
    CHECK(seen->chan_qsum == NULL);
    /* other key methods: accepted, nothing to weigh */
    kvq_cache *rot;
    REQUIRE_OK(kvq_cache_config_parse("mse:bits=4", n_kv, dim, &cfg, NULL, 0));
    REQUIRE_OK(kvq_cache_create(&cfg, &rot));
    q[5] = 0.0f;
    CHECK_OK(kvq_cache_observe_queries(rot, q, H, 2));
    kvq_cache_free(rot);
    kvq_cache_free(plain);
    kvq_cache_free(seen);
    kvq_cache_free(split);
    free(k), free(v), free(q), free(ref), free(out);
}

/* Channel keys' codes are the same bytes on every machine and ISA: exact dyadic keys
 * (no rounding in the input, channels of different spreads and offsets), appended in
 * uneven pieces, and the FNV-1a hash of every coded chunk's key block (ranges, fitted
 * 1-2-bit grids, planes) against the hash recorded on x86-64. A changed code format
 * prints the new hashes with KVQ_GOLDEN_PRINT=1 build/kvq-tests channel_codes_golden. */
TEST(channel_codes_golden) {
    static const struct {
        const char *spec;
        uint32_t dim;
        uint64_t hash;
    } cases[] = {
        {"q4", 128, 0xf5efb54cab9d8599ull},
        {"q2", 128, 0x5fc664d34b48b727ull},
        {"q3", 64, 0x6cf239fc077b501dull},
        {"channel:bits=2+mse:bits=2@chunk=64,sink=0,window=3", 64, 0x80d600d613f4b83aull},
    };
    const uint32_t n_kv = 2;
    const size_t n = 420;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        uint32_t dim = cases[ci].dim;
        float *k = malloc(n * n_kv * dim * sizeof(float)), *v = malloc(n * n_kv * dim * sizeof(float));
        REQUIRE(k && v);
        uint64_t s = 20261205u + ci;
        for (size_t i = 0; i < n * n_kv * dim; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            uint32_t j = (uint32_t)(i % dim);
            float x = (float)((int32_t)((s >> 32) & 0xfff) - 2048) / 1024.0f; /* [-2, 2) */
            k[i] = x * (float)(1u << (j % 5)) + (float)(j % 3) - 1.0f;        /* spreads 1..16 */
            v[i] = x;
        }
        kvq_cache_config cfg;
        REQUIRE_OK(kvq_cache_config_parse(cases[ci].spec, n_kv, dim, &cfg, NULL, 0));
        kvq_cache *c;
        REQUIRE_OK(kvq_cache_create(&cfg, &c));
        for (size_t have = 0, i = 0; have < n; i++) {
            size_t nb = KVQI_MIN((size_t)(i % 3 == 0 ? 1 : i % 3 == 1 ? 37 : 90), n - have);
            REQUIRE_OK(kvq_cache_append(c, k + have * n_kv * dim, v + have * n_kv * dim, nb));
            have += nb;
        }
        size_t C = c->cfg.chunk_tokens, bytes = kvqi_chan_block_bytes(dim, c->cfg.key.bits, C);
        CHECK(c->key.path == KVQI_PATH_CHAN && c->n_coded >= 2 * C);
        uint64_t h = 0xcbf29ce484222325ull;
        for (size_t ch = 0; ch * C < c->n_coded; ch++)
            for (uint32_t g = 0; g < n_kv; g++) {
                const uint8_t *b = kvqi_chunk_keys(c, ch, g);
                for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 0x100000001b3ull;
            }
        if (getenv("KVQ_GOLDEN_PRINT"))
            fprintf(stderr, "        {\"%s\", %u, 0x%016llxull},\n", cases[ci].spec, dim, (unsigned long long)h);
        CHECKF(h == cases[ci].hash, "%s dim %u: codes hash %016llx", cases[ci].spec, dim, (unsigned long long)h);
        kvq_cache_free(c);
        free(k), free(v);
    }
}

/* The encoder's kernels against the scalar set, bit for bit: channel codes and the
 * refinement's sums (values on and beside half steps, steps of 0 and fp16 subnormals,
 * 0-8 bits, rows past the top and below the bottom). (The ring's fp16 rows go through
 * the quantizers' conversions, checked over all 65536 halves in test_portable.c.) */
TEST(channel_encode_kernels_match_scalar) {
    enum { D = 272 };
    float x[D], lo[D], step[D], top[D], a1[4 * D], a2[4 * D];
    uint8_t c1[D], c2[D];
    kvqi_rng r;
    kvqi_rng_seed(&r, 77);
    const kvqi_cache_kernels *sets[8];
    const size_t n_sets = kvqi_cache_kernel_sets(sets, 8); /* scalar first: sets[1..] */
    int compared = 0;
    for (int rep = 0; rep < 200; rep++) {
        uint32_t dim = rep % 3 == 0 ? 64 : rep % 3 == 1 ? 128 : D;
        for (uint32_t j = 0; j < dim; j++) {
            uint32_t b = (uint32_t)(kvqi_rng_next(&r) % 9);
            top[j] = (float)((1u << b) - 1u);
            lo[j] = (float)kvqi_rng_normal(&r);
            uint32_t kind = (uint32_t)(kvqi_rng_next(&r) % 8);
            step[j] = b == 0 || kind == 0 ? 0.0f : kind == 1 ? 5.96e-8f : (float)(0.01 + fabs(kvqi_rng_normal(&r)));
            double i = floor(kvqi_rng_uniform(&r) * (top[j] + 3.0)) - 1.0; /* a level, or just past one */
            x[j] = kind == 2 ? lo[j] + ((float)i + 0.5f) * step[j] /* on a half step */
                   : kind == 3 ? -lo[j] * 1e3f                       /* far outside */
                               : lo[j] + (float)(i + kvqi_rng_uniform(&r)) * step[j];
        }
        for (uint32_t i = 0; i < 4 * dim; i++) a1[i] = a2[i] = (float)(i % 7) * 0.25f;
        kvqi_cache_kernels_scalar.chan_codes(x, lo, step, top, dim, c1);
        kvqi_cache_kernels_scalar.chan_fit_sums(x, lo, step, top, dim, a1);
        for (size_t k = 1; k < n_sets; k++) {
            const kvqi_cache_kernels *K = sets[k];
            for (uint32_t i = 0; i < 4 * dim; i++) a2[i] = (float)(i % 7) * 0.25f;
            K->chan_codes(x, lo, step, top, dim, c2);
            K->chan_fit_sums(x, lo, step, top, dim, a2);
            CHECKF(memcmp(c1, c2, dim) == 0 && memcmp(a1, a2, 4 * dim * sizeof(float)) == 0,
                   "isa %d rep %d: codes or sums differ", (int)K->isa, rep);
            compared++;
        }
        /* the scalar codes are kvqi_channel_code's */
        for (uint32_t j = 0; j < dim; j++) {
            uint32_t b = 0;
            while ((float)((1u << b) - 1u) < top[j]) b++;
            CHECKF(c1[j] == kvqi_channel_code(x[j], lo[j], step[j], b), "rep %d channel %u", rep, j);
        }
    }
    if (!compared) SKIP("no SIMD ISA on this CPU");
}

/* ------------------------------------------------------------ before RoPE */

/* RoPE of pair i by angle p theta_i (theta_i = base^(-2 i / dim)), NeoX or interleaved. */
static void rope_row(float *x, uint32_t dim, double p, double base, int neox) {
    for (uint32_t i = 0; i < dim / 2; i++) {
        uint32_t a = neox ? i : 2 * i, b = neox ? i + dim / 2 : 2 * i + 1;
        double th = p * pow(base, -2.0 * i / dim), c = cos(th), s = sin(th), xa = x[a], xb = x[b];
        x[a] = (float)(xa * c - xb * s);
        x[b] = (float)(xa * s + xb * c);
    }
}

/* The score kernel of keys before RoPE: every ISA gives the scalar reference's bits
 * (random layouts of 0..8 bits a channel, spans anywhere in two units, 1..9 heads, both
 * pairings, heads of 64, 128 and 288 channels: past the AVX-512 kernel's 256), and the
 * reference is the score of the decoded key turned by its offset's angle (in doubles). */
TEST(channel_prerope_kernels_match_scalar) {
    enum { MAXD = 288, C = 128 };
    uint8_t bits[MAXD];
    kvqi_chan_layout L;
    void *mem = malloc(kvqi_chan_layout_bytes(MAXD));
    uint8_t *block = malloc(4 * MAXD + 2 * 64 * MAXD);
    float *q = malloc(9 * MAXD * sizeof(float)), *cs = malloc(MAXD / 2 * C * sizeof(float)),
          *sn = malloc(MAXD / 2 * C * sizeof(float)), lo[MAXD], step[MAXD], ref[9 * 64], got[9 * 64];
    REQUIRE(mem && block && q && cs && sn);
    kvqi_rng r;
    kvqi_rng_seed(&r, 77);
    const kvqi_cache_kernels *sets[8];
    const size_t n_sets = kvqi_cache_kernel_sets(sets, 8); /* scalar first: sets[1..] */
    int compared = 0;
    double worst = 0.0;
    for (int rep = 0; rep < 6; rep++) {
        uint32_t dim = rep < 2 ? 64 : rep < 4 ? 128 : 288;
        int neox = rep % 2;
        random_layout(&r, dim, bits, &L, mem);
        random_block(&r, &L, block, 4 * dim + 2 * (size_t)L.unit_bytes);
        for (uint32_t j = 0; j < dim; j++) { /* the header's minima and steps (random_block) */
            uint16_t a, b;
            memcpy(&a, block + 2 * (size_t)j, 2);
            memcpy(&b, block + 2 * ((size_t)dim + j), 2);
            lo[j] = kvqi_fp16_to_fp32(a);
            step[j] = kvqi_fp16_to_fp32(b);
        }
        for (uint32_t i = 0; i < dim / 2; i++)
            for (uint32_t u = 0; u < C; u++) {
                double th = u * pow(10000.0, -2.0 * i / dim);
                cs[i * C + u] = (float)cos(th);
                sn[i * C + u] = (float)sin(th);
            }
        for (uint32_t i = 0; i < 9 * dim; i++) q[i] = (float)kvqi_rng_normal(&r);
        for (uint32_t G = 1; G <= 9; G += 2)
            for (size_t in = 0; in < 128; in += 21) {
                size_t room = 64 - in % 64, n = (in + G) % 3 ? room : 1 + (in * 7 + G) % room;
                kvqi_cache_kernels_scalar.chan_prerope_scores(block, &L, q, G, cs, sn, C, in - in % 64, neox, in, n, ref, 64);
                /* the reference against the decoded keys, turned in doubles */
                for (size_t t = 0; t < n; t++) {
                    size_t tok = in + t, u = tok; /* (the block is one chunk of 128) */
                    double k[MAXD], kt[MAXD];
                    for (uint32_t j = 0; j < dim; j++) k[j] = lo[j] + (double)step[j] * kvqi_chan_code_at(&L, block, j, tok);
                    for (uint32_t i = 0; i < dim / 2; i++) {
                        uint32_t a = neox ? i : 2 * i, b = neox ? i + dim / 2 : 2 * i + 1;
                        double c = cs[i * C + u], s = sn[i * C + u];
                        kt[a] = k[a] * c - k[b] * s;
                        kt[b] = k[a] * s + k[b] * c;
                    }
                    for (uint32_t h = 0; h < G; h++) {
                        double want = 0.0, mag = 0.0;
                        for (uint32_t j = 0; j < dim; j++) {
                            want += (double)q[h * dim + j] * kt[j];
                            mag += fabs((double)q[h * dim + j] * kt[j]);
                        }
                        double e = fabs(ref[h * 64 + t] - want) / (mag + 1e-30);
                        if (e > worst) worst = e;
                    }
                }
                for (size_t k = 1; k < n_sets; k++) {
                    const kvqi_cache_kernels *K = sets[k];
                    memset(got, 0, sizeof got);
                    K->chan_prerope_scores(block, &L, q, G, cs, sn, C, in - in % 64, neox, in, n, got, 64);
                    for (uint32_t h = 0; h < G; h++)
                        CHECKF(memcmp(got + h * 64, ref + h * 64, n * sizeof(float)) == 0,
                               "isa %d rep %d in %zu n %zu G %u head %u differs", (int)K->isa, rep, in, n, G, h);
                    compared++;
                }
            }
    }
    CHECKF(worst < 1e-5, "scalar kernel against the decoded keys turned in doubles: %.3g of the terms' sum", worst);
    free(mem), free(block), free(q), free(cs), free(sn);
    if (!compared) SKIP("no SIMD ISA on this CPU");
}

/* Keys whose channels hold steady offsets before RoPE (as real keys' outlier channels
 * do), turned by RoPE at their positions: coded after RoPE, a fast pair's offset sweeps
 * both its channels' ranges; coded before RoPE (rope_base), each channel keeps its narrow
 * range. The attention error against exact attention is far lower, at 8 bits near zero
 * (the turn back and the scores' turn agree with the model's RoPE, both pairings), and
 * bad combinations are refused. */
TEST(channel_cache_keys_before_rope) {
    const uint32_t n_kv = 2, H = 8, dim = 64;
    const size_t n = 1040;
    float *k = malloc(n * n_kv * dim * sizeof(float)), *v = malloc(n * n_kv * dim * sizeof(float));
    float *q = malloc((size_t)H * dim * sizeof(float)), *ref = malloc((size_t)H * dim * sizeof(float));
    REQUIRE(k && v && q && ref);
    for (int neox = 0; neox < 2; neox++) {
        kvqi_rng r;
        kvqi_rng_seed(&r, 91 + (uint64_t)neox);
        for (size_t t = 0; t < n; t++)
            for (uint32_t g = 0; g < n_kv; g++) {
                float *x = k + (t * n_kv + g) * dim;
                for (uint32_t j = 0; j < dim; j++) {
                    double off = j % 4 == 1 ? 4.0 * (1.0 + g) * (j % 8 == 1 ? -1.0 : 1.0) : 0.0;
                    x[j] = (float)(off + 0.3 * kvqi_rng_normal(&r));
                    v[(t * n_kv + g) * dim + j] = (float)kvqi_rng_normal(&r);
                }
                rope_row(x, dim, (double)t, 10000.0, neox);
            }
        for (uint32_t i = 0; i < H * dim; i++) q[i] = (float)kvqi_rng_normal(&r) * 0.3f;
        for (uint32_t h = 0; h < H; h++) rope_row(q + h * dim, dim, (double)n, 10000.0, neox);
        for (size_t i = 0; i < n * n_kv * dim; i++) { /* the exact tokens are held at fp16 */
            k[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(k[i]));
            v[i] = kvqi_fp16_to_fp32(kvqi_fp32_to_fp16(v[i]));
        }
        kvqt_ref_attend(q, k, v, n, n_kv, H, dim, 1, 1.0f / 8.0f, ref);
        const char *pair = neox ? "neox" : "interleaved";
        char s_after[160], s_before[160], s_eight[160];
        snprintf(s_after, sizeof s_after, "channel:bits=2+fp16@sink=1,window=8,chunk=128");
        snprintf(s_before, sizeof s_before, "channel:bits=2,rope_base=10000,rope=%s+fp16@sink=1,window=8,chunk=128", pair);
        snprintf(s_eight, sizeof s_eight, "channel:bits=8,rope_base=10000,rope=%s+fp16@sink=1,window=8,chunk=128", pair);
        double after = attend_err(s_after, k, v, q, n, n_kv, H, dim, ref);
        double before = attend_err(s_before, k, v, q, n, n_kv, H, dim, ref);
        double eight = attend_err(s_eight, k, v, q, n, n_kv, H, dim, ref);
        /* the channel format's own floor (fp16 minima and steps, integer weights): the
         * same at 8 bits after RoPE */
        double eight_after = attend_err("channel:bits=8+fp16@sink=1,window=8,chunk=128", k, v, q, n, n_kv, H, dim, ref);
        CHECKF(after > 0 && before >= 0 && eight >= 0 && eight_after > 0, "%s: attend failed (%g %g %g %g)", pair, after,
               before, eight, eight_after);
        CHECKF(before < 0.8 * after, "%s: 2-bit keys before RoPE %.4f, after %.4f", pair, before, after);
        CHECKF(eight < 1.1 * eight_after, "%s: 8-bit keys before RoPE %.5f, after %.5f", pair, eight, eight_after);
    }
    kvq_cache_config cfg;
    kvq_cache *c = NULL;
    REQUIRE_OK(kvq_cache_config_parse("channel:bits=2,rope_base=10000+fp16@center=1", 2, 64, &cfg, NULL, 0));
    CHECK_STATUS(kvq_cache_create(&cfg, &c), KVQ_ERR_UNSUPPORTED);
    CHECK(c == NULL && strstr(kvq_last_error(), "RoPE") != NULL);
    char msg[128];
    CHECK_STATUS(kvq_cache_config_parse("channel:bits=2,rope_base=-1+fp16", 2, 64, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
    CHECK_STATUS(kvq_cache_config_parse("channel:bits=2,rope=sideways+fp16", 2, 64, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
    /* a preset's keys before RoPE through the cache options */
    REQUIRE_OK(kvq_cache_config_parse("q2@rope_base=500000,rope=neox", 2, 64, &cfg, msg, sizeof msg));
    CHECK(cfg.key.method == KVQ_METHOD_CHANNEL && cfg.key.rope_base == 500000.0f && cfg.key.rope_pairing == KVQ_ROPE_NEOX);
    REQUIRE_OK(kvq_cache_config_parse("q2", 2, 64, &cfg, msg, sizeof msg));
    CHECK(cfg.key.rope_base == 0.0f);
    CHECK_STATUS(kvq_cache_config_parse("mse:bits=2@rope_base=10000", 2, 64, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
    CHECK(strstr(msg, "channel") != NULL);
    CHECK_STATUS(kvq_cache_config_parse("q2@rope=sideways", 2, 64, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
    CHECK_STATUS(kvq_cache_config_parse("q2@rope_base=0x10", 2, 64, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
    CHECK_STATUS(kvq_cache_config_parse("q2@rope_base=-5", 2, 64, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
    /* the layers of a model hold one copy of the angle tables (another base: its own),
     * and a layer on borrowed tables answers as one on its own */
    {
        kvq_cache *l0, *l1, *l2, *solo;
        kvq_cache_config c2;
        REQUIRE_OK(kvq_cache_config_parse("q2@rope_base=10000,rope=neox", n_kv, dim, &cfg, msg, sizeof msg));
        REQUIRE_OK(kvq_cache_config_parse("q2@rope_base=500000,rope=neox", n_kv, dim, &c2, msg, sizeof msg));
        REQUIRE_OK(kvqi_cache_create_shared(&cfg, NULL, &l0));
        REQUIRE_OK(kvqi_cache_create_shared(&cfg, l0, &l1));
        REQUIRE_OK(kvqi_cache_create_shared(&c2, l0, &l2));
        REQUIRE_OK(kvq_cache_create(&cfg, &solo));
        CHECK(l1->pre_borrowed && l1->pre_cos == l0->pre_cos && l1->pre_enc != l0->pre_enc);
        CHECK(!l2->pre_borrowed && l2->pre_cos != l0->pre_cos && !solo->pre_borrowed);
        kvq_cache_memory_info m0, m1;
        REQUIRE_OK(kvq_cache_memory(l0, &m0));
        REQUIRE_OK(kvq_cache_memory(l1, &m1));
        CHECKF(m0.overhead - m1.overhead == (uint64_t)dim / 2 * 3 * sizeof(double) + (uint64_t)dim * 128 * sizeof(float),
               "overhead %llu against %llu", (unsigned long long)m0.overhead, (unsigned long long)m1.overhead);
        float *o1 = malloc((size_t)H * dim * sizeof(float)), *o2 = malloc((size_t)H * dim * sizeof(float));
        REQUIRE(o1 && o2);
        for (size_t t = 0; t < 300; t++) {
            REQUIRE_OK(kvq_cache_append(l1, k + t * n_kv * dim, v + t * n_kv * dim, 1));
            REQUIRE_OK(kvq_cache_append(solo, k + t * n_kv * dim, v + t * n_kv * dim, 1));
        }
        REQUIRE_OK(kvq_cache_attend(l1, q, H, 1, 0.125f, NULL, o1));
        REQUIRE_OK(kvq_cache_attend(solo, q, H, 1, 0.125f, NULL, o2));
        CHECK(memcmp(o1, o2, (size_t)H * dim * sizeof(float)) == 0);
        free(o1), free(o2);
        kvq_cache_free(l2), kvq_cache_free(l1), kvq_cache_free(solo), kvq_cache_free(l0);
    }
    free(k), free(v), free(q), free(ref);
}
