#!/usr/bin/env python3
"""Independent reference for kvq's rng (src/core/rng.c): splitmix64 seeding of
xoshiro256** (Blackman & Vigna), written from the published algorithm. Prints the first
outputs for a few seeds, plus kvqi_rng_uniform / kvqi_rng_below values, in the form that
tests/test_core.c stores."""

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


if __name__ == "__main__":
    for seed in (0, 42, 0xDEADBEEFCAFEF00D):
        r = Xoshiro256ss(seed)
        vals = ", ".join("0x%016XULL" % r.next() for _ in range(4))
        print("seed 0x%X: {%s}" % (seed, vals))
    r = Xoshiro256ss(7)
    print("seed 7 uniform: %r" % [float.hex((r.next() >> 11) * 2.0**-53) for _ in range(2)])
