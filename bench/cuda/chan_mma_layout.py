"""chan_mma_layout.py - a NumPy model of chan_attend_kernel's tensor-core scores
(src/cuda/chan.cu built with CHAN_MMA=1) for one 32-token group: the plane table, the
per-head 16-bit weights as B bytes (the kernel's offsets, 1.5 * 2^23 rounding and high /
low split), the three transpose steps (done by the coder: the stored words, checked
against the closed form that the test's reader uses), the m16n8k32 A / B / C fragment
layouts of the PTX manual, and the scores through s_p, against codes @ (q * step) in
float64. It checks the layout without a GPU; prints the largest score error per case.
Usage: python3 bench/cuda/chan_mma_layout.py"""
import numpy as np, struct
rng = np.random.default_rng(5)
def f2i(x): return struct.unpack('<i', struct.pack('<f', np.float32(x)))[0]
def i2f(i): return struct.unpack('<f', struct.pack('<I', i & 0xffffffff))[0]
D = 128
for trial in range(6):
    G = [4, 3, 1][trial % 3]
    nb = rng.integers(0, 8, D) if trial >= 3 else np.full(D, [4, 3, 2][trial % 3])
    P = int(nb.sum()); P = (P + 63) // 64 * 64  # pad planes (unassigned planes have weight 0)
    off = np.concatenate([[0], np.cumsum(nb)[:-1]])
    codes = np.array([[rng.integers(0, 1 << nb[j]) if nb[j] else 0 for j in range(D)] for t in range(32)])
    words = [0] * P
    for j in range(D):
        for p in range(nb[j]):
            words[off[j] + p] = sum(((int(codes[t, j]) >> p) & 1) << t for t in range(32))
    q = rng.standard_normal((4, D)).astype(np.float32) * 0.1
    q[G:] = 0
    step = (rng.random(D) * 0.3).astype(np.float32)
    w = (q * step).astype(np.float32)           # s_w [j][g] (as [g][j] here)
    exact = codes @ w.T.astype(np.float64)       # [32][4]
    # s_pl
    s_pl = [0] * P
    for j in range(D):
        for p in range(nb[j]): s_pl[off[j] + p] = ((127 + p) << 23) | j
    top = np.where(nb > 0, 2.0 ** (nb - 1), 0)
    amax = np.max(np.abs(w) * top, axis=1)
    nz = amax > 1e-30
    fs = np.zeros(4, np.float32)
    fs[nz] = np.float32(32639.0) / amax[nz].astype(np.float32)
    sinv = np.where(nz, amax.astype(np.float32) / np.float32(32639.0), 0).astype(np.float32)
    u = (w * fs[:, None]).astype(np.float32)
    NR = P // 32
    s_bt = bytearray(NR * 256)
    for kt in range(NR):
        for lane in range(32):
            pe = s_pl[32 * kt + lane]
            p2 = i2f(pe & 0xff800000); j = pe & 0x7fffff
            dst = 8 * (lane & 3) + 4 * ((lane >> 2) & 1) + (lane >> 3)
            for g in range(4):
                bits = f2i(np.float32(np.float64(u[g, j]) * p2 + 12582912.0))
                s_bt[256 * kt + 64 * g + dst] = ((bits - 0x4b3fff80) >> 8) & 0xff
                s_bt[256 * kt + 64 * g + dst + 32] = bits & 0xff
    def s8(x): return x - 256 if x >= 128 else x
    c = np.zeros((32, 2, 4), dtype=np.int64)  # lane, m, reg
    for kt in range(NR):
        v = [words[32 * kt + l] for l in range(32)]
        for sh, mk in ((16, 0x0000ffff), (8, 0x00ff00ff), (4, 0x0f0f0f0f)):
            x = [v[L ^ sh] for L in range(32)]
            nv = []
            for L in range(32):
                up = L & sh
                keep = (~mk & 0xffffffff) if up else mk
                rot = 32 - sh if up else sh
                y = ((x[L] << rot) | (x[L] >> (32 - rot))) & 0xffffffff
                nv.append((v[L] & keep) | (y & ~keep & 0xffffffff))
            v = nv
        # the stored layout in closed form: bit b of word l is plane (l & 3) | (b & 28)'s
        # bit (b & 3) | (l & 28) (bits 2-4 of plane and token swapped)
        vc = [sum(((words[32 * kt + ((l & 3) | (b & 28))] >> ((b & 3) | (l & 28))) & 1) << b
                  for b in range(32)) for l in range(32)]
        assert vc == v, "stored layout differs from the three transpose steps"
        # mma per m: A[row][k], B[k][n]
        for m in range(2):
            A = np.zeros((16, 32), int); B = np.zeros((32, 8), int)
            for L in range(32):
                g_, t_ = L >> 2, L & 3
                shifts = [0, 1, 4, 5] if m == 0 else [2, 3, 6, 7]
                for ri in range(4):
                    reg = (v[L] >> shifts[ri]) & 0x01010101
                    row = g_ + (8 if ri in (1, 3) else 0)
                    for e in range(4):
                        A[row][4 * t_ + e + (16 if ri >= 2 else 0)] = (reg >> (8 * e)) & 0xff
                b = s_bt[256 * kt + 8 * L: 256 * kt + 8 * L + 8]
                for i in range(4):
                    B[4 * t_ + i][g_] = s8(b[i]); B[16 + 4 * t_ + i][g_] = s8(b[4 + i])
            Cm = A @ B
            for L in range(32):
                g_, t_ = L >> 2, L & 3
                c[L, m] += [Cm[g_][2 * t_], Cm[g_][2 * t_ + 1], Cm[g_ + 8][2 * t_], Cm[g_ + 8][2 * t_ + 1]]
    s_p = np.zeros(32 * 4)
    for L in range(32):
        qh = L & 3
        base = 16 * (L >> 2) + qh
        s_p[base + 0] = (c[L, 0, 0] * 256 + c[L, 0, 1]) * sinv[qh]
        s_p[base + 4] = (c[L, 0, 2] * 256 + c[L, 0, 3]) * sinv[qh]
        s_p[base + 8] = (c[L, 1, 0] * 256 + c[L, 1, 1]) * sinv[qh]
        s_p[base + 12] = (c[L, 1, 2] * 256 + c[L, 1, 3]) * sinv[qh]
    got = s_p.reshape(32, 4)
    scale = np.abs(exact).max() + 1e-30
    err = np.abs(got - exact).max()
    print("G=%d planes=%d bits=%s max score error %.3g (scores up to %.3g, %.2g relative)"
          % (G, P, "0-7" if trial >= 3 else nb[0], err, scale, err / scale))
    assert err <= 2e-4 * scale, "layout or rounding wrong"
