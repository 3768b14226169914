#!/usr/bin/env python3
"""chan_key_sim.py - what-if simulations of the cache's channel keys on dumped real KV.

Reads `kvq generate --dump-kv DIR` output (keys, values, queries after RoPE, float32) and
codes each head's keys per channel over chunks of --chunk tokens the way the `channel`
method does, in NumPy and simplified: keys centered on the mean of the first 32 tokens,
token 0 exact (the sink), each head's bits * dim bits given greedily by the first
chunk's squared ranges weighted by the square root of the first chunk's queries' mean
square, 1-2-bit channels fitted by three least-squares refinements, wider ones spanning
minimum to maximum; values exact. Then attention of the last --queries positions (every
10th) with the coded keys against the exact ones: mean relative error of the output and
mean KL of the attention weights. It models no rounding to fp16 and no q8_0 ring, so
its figures rank variants; the engine's (`kvq perplexity --kl`) are the ones quoted.

--window / --global-every model sliding-window layers (Gemma 3: 512 and 6). Variants: base; `outliers=N` (N tokens a chunk with the largest spread kept exact and
left out of the ranges); `per_chunk` (bits given again for every chunk by its own
ranges); `gptq[=SPAN]` (each token's channels rounded in turn on the same grids, every
rounding error carried onto the channels not yet rounded so that the score error under
the queries' second moment H is least, GPTQ's update; H from the queries of the SPAN
positions up to the chunk's end, all of them without SPAN; GPTQ_DAMP in the environment:
H's diagonal damping, default 0.01 of its mean); `gptq_diag` (the same with H's diagonal
only: equal to base, a check); `gptq_oracle` (H from the measured queries themselves: a
bound, not causal); `prerope` (KVQuant's pre-RoPE keys: each head's keys turned back by
their position's RoPE angles, coded per channel there, centered on the mean of the first
32 pre-RoPE keys, the bits weighted by the query energy of each RoPE pair, then turned
again; `prerope=N`: only the N fastest RoPE pairs so, the others after RoPE as in base):
needs --rope-base, --rope-neox for pairs (i, i + d/2), --rope-base-swa for Gemma's
sliding-window layers); `spin[=N]` (a mean before RoPE, each chunk's, of the N fastest
pairs or all, turned to every position and taken off the keys, the rest coded after RoPE
as base and the turned mean added back exactly: the fast integer scores plus one
sinusoid sum a token); `spinfix[=N]` (the same with one mean, the first 32 keys', for the
whole context). Usage:
  kvq generate -m MODEL -f PROMPT -n 1 --dump-kv DIR
  python3 bench/chan_key_sim.py DIR [--bits 2,3] [--chunk 128] [--variants base,outliers=2,per_chunk]
      [--window 512 --global-every 6] [--rope-base 100000 [--rope-neox] [--rope-base-swa 10000]]
"""
import argparse
import glob
import os

import numpy as np


def fit_lohi(x, b, refine):
    """fit_grid's minimum and step (step 0: one level at the midpoint)."""
    lo, hi = float(x.min()), float(x.max())
    n = (1 << b) - 1
    if hi <= lo or b == 0:
        return (lo + hi) / 2, 0.0, 0
    step = (hi - lo) / n
    for _ in range(refine):
        c = np.clip(np.rint((x - lo) / step), 0, n)
        sol, *_ = np.linalg.lstsq(np.stack([np.ones_like(c), c], 1), x, rcond=None)
        if sol[1] <= 0:
            break
        lo, step = sol
    return lo, step, n


def fit_grid(x, b, refine):
    """x on b-bit levels from its minimum to its maximum, the range refitted by least
    squares `refine` times."""
    lo, step, n = fit_lohi(x, b, refine)
    if n == 0:
        return np.full_like(x, lo)
    return lo + step * np.clip(np.rint((x - lo) / step), 0, n)


def gptq_round(X, lo, step, n, H):
    """Each row of X on the channels' grids, channel after channel, every rounding error
    carried onto the channels not yet rounded so that (x^ - x)^T H (x^ - x) is least
    (GPTQ's order-one update with H the queries' second moment)."""
    d = H.shape[0]
    Hd = H + np.eye(d) * (float(os.environ.get("GPTQ_DAMP", "0.01")) * np.mean(np.diag(H)))
    U = np.linalg.cholesky(np.linalg.inv(Hd)).T  # H^-1 = U^T U, U upper
    X = X.copy()
    out = np.empty_like(X)
    for j in range(d):
        if n[j] == 0:
            q = np.full(X.shape[0], lo[j])
        else:
            q = lo[j] + step[j] * np.clip(np.rint((X[:, j] - lo[j]) / step[j]), 0, n[j])
        out[:, j] = q
        e = (X[:, j] - q) / U[j, j]
        X[:, j + 1:] -= np.outer(e, U[j, j + 1:])
    return out


def rope_pairs(d, neox):
    """The channels a and b of RoPE pair i (i = 0: the fastest)."""
    i = np.arange(d // 2)
    return (i, i + d // 2) if neox else (2 * i, 2 * i + 1)


def rope(K, base, neox, inverse=False, n_pairs=None):
    """K (T x d, row t at position t) turned by RoPE's angles t base^(-2i/d) in the pairs
    (2i, 2i + 1), or (i, i + d/2) with neox; inverse: turned back; n_pairs: only the
    n_pairs fastest pairs (i < n_pairs) turned."""
    T, d = K.shape
    half = d // 2
    i = np.arange(half)
    th = np.arange(T)[:, None] * (base ** (-2.0 * i / d) * (i < (half if n_pairs is None else n_pairs)))[None, :]
    c, s = np.cos(th), np.sin(th) * (-1.0 if inverse else 1.0)
    a, b = rope_pairs(d, neox)
    out = K.copy()
    out[:, a] = K[:, a] * c - K[:, b] * s
    out[:, b] = K[:, a] * s + K[:, b] * c
    return out


def allocate(r2, total, w):
    bits = np.zeros(len(r2), int)
    wt = r2 * w
    for _ in range(total):
        bits[np.argmax(wt * 4.0 ** (-bits) * (bits < 8))] += 1
    return bits


def code_head(K, Q0, B, C, variant, QH):
    T, d = K.shape
    out = K.copy()
    w = np.sqrt(np.maximum((Q0 ** 2).mean(0), 2 ** -10 * (Q0 ** 2).mean()))
    first = K[1:C]
    bits0 = allocate((first.max(0) - first.min(0)) ** 2, B * d, w)
    n_out = int(variant.split("=")[1]) if variant.startswith("outliers=") else 0
    for c0 in range(0, T - T % C, C):
        blk = K[c0:c0 + C].copy()
        keep = np.arange(c0, c0 + C) != 0
        if n_out:
            med = np.median(blk[keep], 0)
            spread = np.percentile(blk[keep], 90, 0) - np.percentile(blk[keep], 10, 0) + 1e-6
            score = (np.abs(blk - med) / spread).max(1)
            score[~keep] = -1
            keep[np.argsort(-score)[:n_out]] = False
        bits = bits0
        if variant.startswith("gptq"):
            if variant == "gptq_oracle":
                Hq = QH
            else:  # the queries seen when the chunk is coded: up to its end
                span = int(variant.split("=")[1]) if "=" in variant else 1 << 30
                Hq = QH[max(c0 + C - span, 0) * (len(QH) // T):(c0 + C) * (len(QH) // T)]
            H = (Hq.T @ Hq) / len(Hq)
            if variant == "gptq_diag":
                H = np.diag(np.diag(H))
            fits = [fit_lohi(blk[keep, j], bits[j], 3 if bits[j] <= 2 else 0) for j in range(d)]
            lo = np.array([f[0] for f in fits]); st = np.array([f[1] for f in fits])
            nn = np.array([f[2] for f in fits])
            blk[keep] = gptq_round(blk[keep], lo, st, nn, H)
            out[c0:c0 + C] = np.where(keep[:, None], blk, K[c0:c0 + C])
            continue
        if variant == "per_chunk":
            bits = allocate((blk[keep].max(0) - blk[keep].min(0)) ** 2, B * d, w)
        for j in range(d):
            x = blk[keep, j]
            blk[keep, j] = (x.min() + x.max()) / 2 if bits[j] == 0 else fit_grid(x, bits[j], 3 if bits[j] <= 2 else 0)
        out[c0:c0 + C] = np.where(keep[:, None], blk, K[c0:c0 + C])
    return out


def measure(dump, B, C, variant, n_queries, window=0, global_every=0, rope_base=0.0, rope_neox=False,
            rope_base_swa=0.0):
    errs, kls = [], []
    for kf in sorted(glob.glob(os.path.join(dump, "keys_*.npy"))):
        tag = kf[-6:-4]
        K = np.load(kf)
        V = np.load(os.path.join(dump, "values_%s.npy" % tag))
        Q = np.load(os.path.join(dump, "queries_%s.npy" % tag))
        T, n_kv, d = K.shape
        G = Q.shape[1] // n_kv
        Tq = T - T % C
        layer = int(tag)
        local = bool(global_every) and (layer + 1) % global_every != 0  # Gemma 3's sliding-window layers
        sliding = window > 0 and (local or not global_every)
        for h in range(n_kv):
            mu = K[:32, h].mean(0)
            Qh = Q[:, h * G:(h + 1) * G]
            QH = Qh[max(Tq - n_queries, 1):Tq] if variant == "gptq_oracle" else Qh
            if variant.startswith("prerope"):
                npairs = int(variant.split("=")[1]) if "=" in variant else None
                base = rope_base_swa if local and rope_base_swa > 0 else rope_base
                P = rope(K[:, h].astype(np.float64), base, rope_neox, inverse=True, n_pairs=npairs)
                mp = P[:32].mean(0)
                # a pair's query energy, shared by its two channels (the rotation mixes them)
                q2 = (Qh[:C].reshape(-1, d) ** 2).mean(0)
                a, b = rope_pairs(d, rope_neox)
                q2[a] = q2[b] = (q2[a] + q2[b]) / 2
                Q0 = np.broadcast_to(np.sqrt(q2), (1, d))
                Kq = rope(code_head(P - mp, Q0, B, C, "base", None) + mp, base, rope_neox, n_pairs=npairs)
            elif variant.startswith("spin"):
                # each chunk's mean before RoPE (of the N fastest pairs; all without N),
                # turned to every position and taken off; the rest coded after RoPE as base
                npairs = int(variant.split("=")[1]) if "=" in variant else d // 2
                base = rope_base_swa if local and rope_base_swa > 0 else rope_base
                P = rope(K[:, h].astype(np.float64), base, rope_neox, inverse=True)
                a, b = rope_pairs(d, rope_neox)
                sel = np.zeros(d, bool)
                sel[a[:npairs]] = sel[b[:npairs]] = True
                M = np.zeros_like(P)
                if variant.startswith("spinfix"):  # one mean: the first 32 keys'
                    M[:, sel] = P[1:33, sel].mean(0)
                for c0 in range(0, T, C) if not variant.startswith("spinfix") else ():
                    lo_ = max(c0, 1)
                    if lo_ < min(c0 + C, T):
                        M[c0:c0 + C, sel] = P[lo_:c0 + C, sel].mean(0)
                S = rope(M, base, rope_neox)
                R = K[:, h] - S
                mr = R[:32].mean(0)
                Kq = code_head(R - mr, Qh[:C].reshape(-1, d), B, C, "base", None) + mr + S
            else:
                Kq = code_head(K[:, h] - mu, Qh[:C].reshape(-1, d), B, C, variant, QH.reshape(-1, d)) + mu
            for t in range(max(Tq - n_queries, 1), Tq, 10):
                for g in range(G):
                    q = Q[t, h * G + g] / np.sqrt(d)
                    s, sq = K[:t + 1, h] @ q, Kq[:t + 1] @ q
                    if sliding:  # the layer sees its last `window` positions only
                        s[: max(t + 1 - window, 0)] = -np.inf
                        sq[: max(t + 1 - window, 0)] = -np.inf
                    p = np.exp(s - s.max())
                    p /= p.sum()
                    pq = np.exp(sq - sq.max())
                    pq /= pq.sum()
                    o, oq = p @ V[:t + 1, h], pq @ V[:t + 1, h]
                    errs.append(np.linalg.norm(o - oq) / np.linalg.norm(o))
                    kls.append(float((p * (np.log(p + 1e-30) - np.log(pq + 1e-30))).sum()))
    return float(np.mean(errs)), float(np.mean(kls))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump", help="directory written by kvq generate --dump-kv")
    ap.add_argument("--bits", default="2,3")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--variants", default="base,outliers=1,outliers=2,outliers=4,per_chunk")
    ap.add_argument("--queries", type=int, default=200, help="last positions measured (every 10th)")
    ap.add_argument("--window", type=int, default=0, help="sliding-window layers see this many positions")
    ap.add_argument("--global-every", type=int, default=0,
                    help="with --window: layer l is global when (l + 1) %% N == 0 (Gemma 3: 6)")
    ap.add_argument("--rope-base", type=float, default=0.0, help="prerope: the model's RoPE base")
    ap.add_argument("--rope-base-swa", type=float, default=0.0, help="prerope: the sliding-window layers' base")
    ap.add_argument("--rope-neox", action="store_true", help="prerope: pairs (i, i + d/2) instead of (2i, 2i + 1)")
    a = ap.parse_args()
    if any(v.startswith(("prerope", "spin")) for v in a.variants.split(",")) and not a.rope_base > 0:
        ap.error("the prerope variant needs --rope-base")
    if not glob.glob(os.path.join(a.dump, "keys_*.npy")):
        ap.error("%s holds no keys_*.npy (kvq generate --dump-kv writes them)" % a.dump)
    for B in (int(x) for x in a.bits.split(",")):
        for v in a.variants.split(","):
            e, k = measure(a.dump, B, a.chunk, v, a.queries, a.window, a.global_every, a.rope_base, a.rope_neox,
                           a.rope_base_swa)
            print("bits %d %-12s output error %.4f  attention KL %.5f" % (B, v, e, k), flush=True)


if __name__ == "__main__":
    main()
