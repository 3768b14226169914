/* rng.c - xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number
 * generators", 2018) seeded through splitmix64, plus normals by Marsaglia's polar method
 * and a natural log built from exact IEEE operations, so every stream is bit-identical on
 * every platform and compiler (no libm call whose last bit may differ). */
#include <math.h>
#include <string.h>

#include "core/core.h"

/* results must not depend on the compiler fusing a*b+c into one rounding (clang does by
 * default, GCC does outside ISO C mode, e.g. with -std=gnu11 -march=native) */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

static uint64_t splitmix64_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void kvqi_rng_seed(kvqi_rng *r, uint64_t seed) {
    uint64_t sm = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64_next(&sm);
}

uint64_t kvqi_rng_next(kvqi_rng *r) {
    uint64_t *s = r->s;
    const uint64_t result = rotl64(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

double kvqi_rng_uniform(kvqi_rng *r) { return (double)(kvqi_rng_next(r) >> 11) * 0x1.0p-53; }

/* Lemire's multiply-shift with rejection ("Fast random integer generation in an
 * interval", 2019): unbiased, one multiplication in the common case. */
uint32_t kvqi_rng_below(kvqi_rng *r, uint32_t n) {
    if (n <= 1) return 0;
    uint64_t m = (kvqi_rng_next(r) >> 32) * (uint64_t)n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (kvqi_rng_next(r) >> 32) * (uint64_t)n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

/* log(x) = e*ln2 + 2*atanh(s), s = (m-1)/(m+1), m in [sqrt(1/2), sqrt(2)), so |s| <= 0.1716
 * and the odd series reaches double precision in 12 terms. ln2 is split hi/lo (fdlibm's
 * constants) so e*ln2_hi is exact for every exponent. */
double kvqi_det_log(double x) {
    if (x != x) return x;
    if (x < 0) return NAN;
    if (x == 0) return -HUGE_VAL;
    if (x == HUGE_VAL) return x;
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int e = 0;
    if ((bits >> 52) == 0) { /* subnormal: scale into the normal range first */
        x *= 0x1.0p54;
        memcpy(&bits, &x, sizeof bits);
        e = -54;
    }
    e += (int)((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL; /* m in [1, 2) */
    double m;
    memcpy(&m, &bits, sizeof m);
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e += 1;
    }
    const double s = (m - 1.0) / (m + 1.0);
    const double s2 = s * s;
    /* Horner on 1 + s2/3 + s2^2/5 + ... + s2^11/23 */
    double p = 1.0 / 23.0;
    for (int k = 21; k >= 1; k -= 2) p = p * s2 + 1.0 / (double)k;
    const double log_m = 2.0 * s * p;
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    return (double)e * ln2_hi + (log_m + (double)e * ln2_lo);
}

double kvqi_rng_normal(kvqi_rng *r) {
    for (;;) {
        double u = 2.0 * kvqi_rng_uniform(r) - 1.0;
        double v = 2.0 * kvqi_rng_uniform(r) - 1.0;
        double s = u * u + v * v;
        if (s >= 1.0 || s == 0.0) continue;
        /* the second normal (v * f) is dropped: the state stays four words */
        return u * sqrt(-2.0 * kvqi_det_log(s) / s);
    }
}

uint64_t kvqi_seed_mix(uint64_t seed, uint64_t tag) {
    uint64_t t = tag;
    uint64_t h = splitmix64_next(&t);
    uint64_t s = seed ^ h;
    return splitmix64_next(&s);
}
