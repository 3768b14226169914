/* bitpack.c - b-bit indices (b = 1..8) packed LSB-first into a little-endian bit stream:
 * index i occupies bits [i*b, (i+1)*b) of the stream, bit k of the stream is bit (k % 8)
 * of byte k / 8. Padding bits of the last byte are zero. b = 1, 2, 4, 8 take byte-wise
 * paths; other widths go 8 indices (= b bytes) at a time through a 64-bit word. */
#include <string.h>

#include "core/core.h"

/* the word-at-a-time paths read bytes in memory order as a little-endian word */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define KVQI_LE 1
#else
#define KVQI_LE 0
#endif

size_t kvqi_packed_size(size_t n, unsigned bits) {
    /* n*bits/8 rounded up without overflowing n*bits */
    return (n / 8) * bits + ((n % 8) * bits + 7) / 8;
}

static void pack_generic_tail(const uint8_t *idx, size_t n, unsigned bits, uint8_t *out) {
    const unsigned mask = (1u << bits) - 1u;
    uint32_t acc = 0;
    unsigned filled = 0;
    for (size_t i = 0; i < n; i++) {
        acc |= (uint32_t)(idx[i] & mask) << filled;
        filled += bits;
        while (filled >= 8) {
            *out++ = (uint8_t)acc;
            acc >>= 8;
            filled -= 8;
        }
    }
    if (filled) *out = (uint8_t)acc;
}

static void unpack_generic_tail(const uint8_t *in, size_t n, unsigned bits, uint8_t *idx) {
    const unsigned mask = (1u << bits) - 1u;
    uint32_t acc = 0;
    unsigned avail = 0;
    for (size_t i = 0; i < n; i++) {
        if (avail < bits) {
            acc |= (uint32_t)(*in++) << avail;
            avail += 8;
        }
        idx[i] = (uint8_t)(acc & mask);
        acc >>= bits;
        avail -= bits;
    }
}

void kvqi_pack_bits(const uint8_t *idx, size_t n, unsigned bits, uint8_t *out) {
    size_t i = 0, o = 0;
    switch (bits) {
    case 8: memcpy(out, idx, n); return;
    case 4:
#if KVQI_LE
        /* 8 indices in one word: squeeze the nibbles together by halving shifts */
        for (; i + 8 <= n; i += 8, o += 4) {
            uint64_t w;
            memcpy(&w, idx + i, 8);
            w &= 0x0F0F0F0F0F0F0F0FULL;
            w = (w | (w >> 4)) & 0x00FF00FF00FF00FFULL;
            w = (w | (w >> 8)) & 0x0000FFFF0000FFFFULL;
            const uint32_t packed = (uint32_t)(w | (w >> 16));
            memcpy(out + o, &packed, 4);
        }
#endif
        for (; i + 2 <= n; i += 2) out[o++] = (uint8_t)((idx[i] & 0xF) | (idx[i + 1] << 4));
        break;
    case 2:
#if KVQI_LE
        for (; i + 8 <= n; i += 8, o += 2) {
            uint64_t w;
            memcpy(&w, idx + i, 8);
            w &= 0x0303030303030303ULL;
            w = (w | (w >> 6)) & 0x000F000F000F000FULL;
            w = (w | (w >> 12)) & 0x000000FF000000FFULL;
            const uint16_t packed = (uint16_t)(w | (w >> 24));
            memcpy(out + o, &packed, 2);
        }
#endif
        for (; i + 4 <= n; i += 4)
            out[o++] = (uint8_t)((idx[i] & 3) | ((idx[i + 1] & 3) << 2) | ((idx[i + 2] & 3) << 4) |
                                 (idx[i + 3] << 6));
        break;
    case 1:
        for (; i + 8 <= n; i += 8) {
            /* gather the low bit of 8 bytes with one multiply: bit j of byte j moves to bit 56+j */
            uint64_t w;
            memcpy(&w, idx + i, 8);
#if KVQI_LE
            w &= 0x0101010101010101ULL;
            out[o++] = (uint8_t)((w * 0x0102040810204080ULL) >> 56);
#else
            uint8_t b = 0;
            for (int j = 0; j < 8; j++) b |= (uint8_t)((idx[i + j] & 1) << j);
            out[o++] = b;
#endif
        }
        break;
    default:
        if (bits == 0 || bits > 8) return;
        for (; i + 8 <= n; i += 8) {
            const uint64_t mask = (1u << bits) - 1u;
            uint64_t w = 0;
            for (unsigned j = 0; j < 8; j++) w |= (uint64_t)(idx[i + j] & mask) << (j * bits);
            for (unsigned j = 0; j < bits; j++) out[o++] = (uint8_t)(w >> (8 * j));
        }
        break;
    }
    if (i < n) pack_generic_tail(idx + i, n - i, bits, out + o);
}

void kvqi_unpack_bits(const uint8_t *in, size_t n, unsigned bits, uint8_t *idx) {
    size_t i = 0, o = 0;
    switch (bits) {
    case 8: memcpy(idx, in, n); return;
    case 4:
#if KVQI_LE
        /* the inverse: spread 8 nibbles to 8 bytes by doubling shifts */
        for (; i + 8 <= n; i += 8, o += 4) {
            uint32_t packed;
            memcpy(&packed, in + o, 4);
            uint64_t w = packed;
            w = (w | (w << 16)) & 0x0000FFFF0000FFFFULL;
            w = (w | (w << 8)) & 0x00FF00FF00FF00FFULL;
            w = (w | (w << 4)) & 0x0F0F0F0F0F0F0F0FULL;
            memcpy(idx + i, &w, 8);
        }
#endif
        for (; i + 2 <= n; i += 2, o++) {
            idx[i] = in[o] & 0xF;
            idx[i + 1] = in[o] >> 4;
        }
        break;
    case 2:
#if KVQI_LE
        for (; i + 8 <= n; i += 8, o += 2) {
            uint16_t packed;
            memcpy(&packed, in + o, 2);
            uint64_t w = packed;
            w = (w | (w << 24)) & 0x000000FF000000FFULL;
            w = (w | (w << 12)) & 0x000F000F000F000FULL;
            w = (w | (w << 6)) & 0x0303030303030303ULL;
            memcpy(idx + i, &w, 8);
        }
#endif
        for (; i + 4 <= n; i += 4, o++) {
            const uint8_t b = in[o];
            idx[i] = b & 3;
            idx[i + 1] = (b >> 2) & 3;
            idx[i + 2] = (b >> 4) & 3;
            idx[i + 3] = b >> 6;
        }
        break;
    case 1:
        for (; i + 8 <= n; i += 8, o++) {
#if KVQI_LE
            /* spread bit j of the byte to byte j: multiply copies the byte, mask keeps bit j
             * in byte j, then move it down to bit 0 */
            uint64_t w = ((uint64_t)in[o] * 0x0101010101010101ULL) & 0x8040201008040201ULL;
            w = ((w + 0x7F7F7F7F7F7F7F7FULL) >> 7) & 0x0101010101010101ULL;
            memcpy(idx + i, &w, 8);
#else
            for (int j = 0; j < 8; j++) idx[i + j] = (in[o] >> j) & 1;
#endif
        }
        break;
    default:
        if (bits == 0 || bits > 8) return;
        for (; i + 8 <= n; i += 8) {
            const uint64_t mask = (1u << bits) - 1u;
            uint64_t w = 0;
            for (unsigned j = 0; j < bits; j++) w |= (uint64_t)in[o++] << (8 * j);
            for (unsigned j = 0; j < 8; j++) idx[i + j] = (uint8_t)((w >> (j * bits)) & mask);
        }
        break;
    }
    if (i < n) unpack_generic_tail(in + o, n - i, bits, idx + i);
}
