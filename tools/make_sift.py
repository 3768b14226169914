#!/usr/bin/env python3
"""make_sift.py - a SIFT-like 128-d descriptor set from real photographs.

Images: the sample photographs shipped in Debian's python3-skimage package (astronaut,
camera, chelsea, coffee, coins, moon, rocket, the motorcycle stereo pair, brick, grass
and gravel textures, ...), read from a directory given with --images (`make vectors-sift`
unpacks the .deb there without installing it). Each image is taken in grey at three
scales; at every pixel the gradient's magnitude is split between the two nearest of 8
orientation bins; a descriptor is the 4x4 grid of 4x4-pixel cells of a 16x16 patch, each
cell an 8-bin histogram weighted by a Gaussian of the cell's distance to the patch
centre (128 numbers), as in Lowe's SIFT without the keypoint detector and rotation
(dense SIFT). Patches are sampled on a 4-pixel grid, low-contrast ones dropped.

Two sets come out:
  base.fvecs / query.fvecs: SIFT-normalized (L2 unit, clipped at 0.2, renormalized,
      times 512, rounded: non-negative integers, norms ~512), with gt_l2.ivecs;
  base_ip.fvecs / query_ip.fvecs: the same patches before normalization, scaled by one
      constant so the mean norm is 512 (norms follow the patch contrast), with
      gt_ip.ivecs: maximum inner product, the unnormalized-MIPS case.
Ground truth: the 100 nearest by exact float64 brute force, ties by id. Seeded: the same
files every run.

usage: python3 tools/make_sift.py --images DIR -o data/vectors-sift [--n 120000] [--nq 1000]
"""
import argparse
import glob
import os
import sys

import numpy as np

try:
    from PIL import Image
except ImportError:  # pragma: no cover
    sys.exit("make_sift.py: needs Pillow (Debian python3-pil or PyPI pillow)")

BINS, CELL, GRID = 8, 4, 4
PATCH = CELL * GRID


def grey(path, scale):
    im = Image.open(path).convert("L")
    if scale != 1.0:
        im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))),
                       Image.BICUBIC)
    return np.asarray(im, dtype=np.float64) / 255.0


def orientation_channels(img):
    gy, gx = np.gradient(img)
    mag = np.hypot(gx, gy)
    ang = (np.arctan2(gy, gx) % (2 * np.pi)) / (2 * np.pi) * BINS
    b0 = np.floor(ang).astype(np.int64) % BINS
    w1 = ang - np.floor(ang)
    ch = np.zeros((BINS,) + img.shape)
    for b in range(BINS):
        ch[b] += np.where(b0 == b, mag * (1 - w1), 0.0)
        ch[b] += np.where((b0 + 1) % BINS == b, mag * w1, 0.0)
    return ch


def cell_sums(ch):
    """sum over every CELL x CELL box, at every top-left position: [BINS][H-CELL+1][W-CELL+1]"""
    ii = np.pad(ch, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
    return ii[:, CELL:, CELL:] - ii[:, :-CELL, CELL:] - ii[:, CELL:, :-CELL] + ii[:, :-CELL, :-CELL]


def descriptors(img, stride, rng):
    cs = cell_sums(orientation_channels(img))
    h, w = img.shape
    ys = np.arange(0, h - PATCH + 1, stride)
    xs = np.arange(0, w - PATCH + 1, stride)
    if len(ys) == 0 or len(xs) == 0:
        return np.zeros((0, 128))
    oy, ox = rng.integers(0, stride, 2)
    ys = ys[ys + oy <= h - PATCH] + oy
    xs = xs[xs + ox <= w - PATCH] + ox
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    c = (GRID - 1) / 2.0
    parts = []
    for gy in range(GRID):
        for gx in range(GRID):
            wgt = np.exp(-((gy - c) ** 2 + (gx - c) ** 2) / (2 * (GRID / 2.0) ** 2))
            parts.append(cs[:, yy + gy * CELL, xx + gx * CELL].T * wgt)
    return np.concatenate(parts, axis=1)


def sift_normalize(d):
    n = np.linalg.norm(d, axis=1, keepdims=True)
    d = d / np.maximum(n, 1e-12)
    d = np.minimum(d, 0.2)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return np.round(d * 512.0)


def write_vecs(path, a, dtype):
    a = np.ascontiguousarray(a, dtype=dtype)
    out = np.empty((a.shape[0], a.shape[1] + 1), dtype=dtype)
    out[:, 0] = np.array([a.shape[1]], dtype=np.int32).view(dtype)[0]
    out[:, 1:] = a
    out.tofile(path)


def ground_truth(base, query, k, metric):
    b = base.astype(np.float64)
    bn = (b * b).sum(1)
    gt = np.empty((len(query), k), dtype=np.int32)
    for s in range(0, len(query), 100):
        q = query[s:s + 100].astype(np.float64)
        ip = q @ b.T
        score = -ip if metric == "ip" else bn[None, :] - 2 * ip
        for i in range(len(q)):
            part = np.argpartition(score[i], k)[:k + 1]
            order = np.lexsort((part, score[i][part]))
            gt[s + i] = part[order][:k]
    return gt


def photo_args(prog, out, n):
    """The command line both set builders take: --images, -o, --n, --nq, --seed."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True, help="directory searched for .png/.jpg photos")
    ap.add_argument("-o", "--out", default=out)
    ap.add_argument("--n", type=int, default=n, help="base vectors")
    ap.add_argument("--nq", type=int, default=1000, help="queries")
    ap.add_argument("--seed", type=int, default=1234)
    return ap.parse_args()


def photo_patches(prog, images, load, describe, stride, rng):
    """Every photograph under images at three scales, cut into descriptors; the flattest
    fifth of each image's patches dropped. Returns (paths, patches)."""
    paths = sorted(p for p in glob.glob(os.path.join(images, "**", "*"), recursive=True)
                   if p.lower().endswith((".png", ".jpg", ".jpeg")) and "/data/" in p
                   and os.path.getsize(p) > 40000)
    if not paths:
        sys.exit(f"{prog}: no photographs under {images}")
    raw = []
    for p in paths:
        for scale in (1.0, 0.7, 0.5):
            d = describe(load(p, scale), stride, rng)
            energy = d.sum(1)
            d = d[energy > np.percentile(energy, 20)] if len(d) else d  # drop flat patches
            raw.append(d.astype(np.float32))
        print(f"  {os.path.basename(p)}: {sum(len(r) for r in raw)} patches so far", file=sys.stderr)
    return paths, np.concatenate(raw)


def main():
    a = photo_args("make_sift.py", "data/vectors-sift", 120000)
    rng = np.random.default_rng(a.seed)
    paths, raw = photo_patches("make_sift.py", a.images, grey, descriptors, 4, rng)
    total = a.n + a.nq
    if len(raw) < total:
        sys.exit(f"make_sift.py: only {len(raw)} patches, want {total}")
    raw = raw[rng.permutation(len(raw))[:total]]
    sift = sift_normalize(raw).astype(np.float32)
    ipset = (raw * (512.0 / np.linalg.norm(raw, axis=1).mean())).astype(np.float32)
    os.makedirs(a.out, exist_ok=True)
    q, b = sift[:a.nq], sift[a.nq:]
    qi, bi = ipset[:a.nq], ipset[a.nq:]
    write_vecs(os.path.join(a.out, "base.fvecs"), b, np.float32)
    write_vecs(os.path.join(a.out, "query.fvecs"), q, np.float32)
    write_vecs(os.path.join(a.out, "gt_l2.ivecs"), ground_truth(b, q, 100, "l2"), np.int32)
    write_vecs(os.path.join(a.out, "base_ip.fvecs"), bi, np.float32)
    write_vecs(os.path.join(a.out, "query_ip.fvecs"), qi, np.float32)
    write_vecs(os.path.join(a.out, "gt_ip.ivecs"), ground_truth(bi, qi, 100, "ip"), np.int32)
    norms = np.linalg.norm(bi, axis=1)
    print(f"{len(paths)} images, {len(raw)} patches -> {a.n} base + {a.nq} queries, dim 128; "
          f"ip-set norms {norms.min():.0f}..{norms.max():.0f} (mean {norms.mean():.0f}) in {a.out}")


if __name__ == "__main__":
    main()
