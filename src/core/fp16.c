/* fp16.c - IEEE 754 binary16 and bfloat16 conversions in integer arithmetic: round to
 * nearest, ties to even, subnormals, infinities; a NaN stays a NaN (made quiet, top
 * payload bits kept). Portable and identical to the F16C instructions' results. */
#include <string.h>

#include "core/core.h"

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t kvqi_fp32_to_fp16(float f) {
    const uint32_t x = f32_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) /* NaN: quiet bit set so a payload that lived only in low bits survives */
        return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
    if (ax >= 0x477FF000u) /* >= 65520 = halfway between 65504 and 2^16: rounds to inf */
        return (uint16_t)(sign | 0x7C00u);
    if (ax < 0x38800000u) { /* below 2^-14: a binary16 subnormal or zero */
        if (ax <= 0x33000000u) return sign; /* <= 2^-25, half the smallest subnormal: tie to 0 */
        const uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u;
        const uint32_t shift = 126u - (ax >> 23); /* value in units of 2^-24 is mant >> shift */
        uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q); /* q == 0x400 is the smallest normal: encoding is right */
    }
    const uint32_t rebias = ax - 0x38000000u; /* exponent 127 -> 15 */
    return (uint16_t)(sign | ((rebias + 0xFFFu + ((rebias >> 13) & 1u)) >> 13));
}

float kvqi_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);
        /* subnormal: normalise the mantissa */
        uint32_t e = 113; /* 127 - 14 */
        while (!(mant & 0x400u)) {
            mant <<= 1;
            e--;
        }
        return bits_f32(sign | (e << 23) | ((mant & 0x3FFu) << 13));
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t kvqi_fp32_to_bf16(float f) {
    const uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

float kvqi_bf16_to_fp32(uint16_t h) { return bits_f32((uint32_t)h << 16); }
