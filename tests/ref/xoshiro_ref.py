#!/usr/bin/env python3
"""Independent reference for kvq's rng (src/core/rng.c): splitmix64 seeding of
xoshiro256** (Blackman & Vigna), written from the published algorithm, and the
Marsaglia polar normals with the IEEE-only log (Python floats are IEEE doubles, so the
bits must match the C library's on every platform). Prints the values that
tests/test_core.c stores."""

import math
import struct

M64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Xoshiro256ss:
    def __init__(self, seed):
        self.s = []
        st = seed & M64
        for _ in range(4):
            st, v = splitmix64(st)
            self.s.append(v)

    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result


def det_log(x):
    """log(x) = e*ln2 + 2*atanh(s), s = (m-1)/(m+1), m in [sqrt(1/2), sqrt(2))."""
    bits = struct.unpack("<Q", struct.pack("<d", x))[0]
    e = 0
    if bits >> 52 == 0:
        x *= 2.0**54
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
        e = -54
    e += ((bits >> 52) & 0x7FF) - 1023
    m = struct.unpack("<d", struct.pack("<Q", (bits & ((1 << 52) - 1)) | (1023 << 52)))[0]
    if m > 1.4142135623730951:
        m *= 0.5
        e += 1
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = 1.0 / 23.0
    for k in range(21, 0, -2):
        p = p * s2 + 1.0 / k
    log_m = 2.0 * s * p
    ln2_hi, ln2_lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10
    return e * ln2_hi + (log_m + e * ln2_lo)


def uniform(r):
    return (r.next() >> 11) * 2.0**-53


def normal(r):
    while True:
        u = 2.0 * uniform(r) - 1.0
        v = 2.0 * uniform(r) - 1.0
        s = u * u + v * v
        if s >= 1.0 or s == 0.0:
            continue
        return u * math.sqrt(-2.0 * det_log(s) / s)


if __name__ == "__main__":
    for seed in (0, 42, 0xDEADBEEFCAFEF00D):
        r = Xoshiro256ss(seed)
        vals = ", ".join("0x%016XULL" % r.next() for _ in range(4))
        print("seed 0x%X: {%s}" % (seed, vals))
    r = Xoshiro256ss(7)
    print("seed 7 uniform: %r" % [float.hex((r.next() >> 11) * 2.0**-53) for _ in range(2)])
    r = Xoshiro256ss(2024)
    print("seed 2024 normals: %s" % ", ".join(float.hex(normal(r)) for _ in range(6)))
    r = Xoshiro256ss(2024)
    acc = 0.0
    for _ in range(10000):
        acc += normal(r)
    print("seed 2024 sum of 10000 normals: %s" % float.hex(acc))
