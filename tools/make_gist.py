#!/usr/bin/env python3
"""make_gist.py - a GIST-like 960-d descriptor set from real photographs.

Images: the same photographs as tools/make_sift.py (Debian's python3-skimage samples,
unpacked by `make vectors-sift`). GIST (Oliva & Torralba 2001; the GIST1M benchmark's
960-d vectors) pools oriented filter energy at several scales over a 4 x 4 grid for each
colour channel. Here, for a 32 x 32 patch: in each of R, G, B, the gradient magnitude is
split between the two nearest orientation bins at three scales (the channel as is with 8
bins, blurred and halved with 8 bins, blurred and quartered with 4 bins: 20 maps), and
each map is summed over the 4 x 4 cells of the patch: 3 x 20 x 16 = 960 numbers.
Patches are sampled on an 8-pixel grid over each image at scales 1, 0.7 and 0.5, flat
ones dropped. The vectors are not normalized (one global scale to a mean norm of 1, as
GIST1M's norms vary with the image), l2 ground truth: the 100 nearest by exact float64
brute force, ties by id. Seeded: the same files every run.

usage: python3 tools/make_gist.py --images DIR -o data/vectors-gist [--n 60000] [--nq 1000]
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sift import ground_truth, photo_args, photo_patches, write_vecs  # noqa: E402

try:
    from PIL import Image
except ImportError:  # pragma: no cover
    sys.exit("make_gist.py: needs Pillow (Debian python3-pil or PyPI pillow)")

PATCH, GRID = 32, 4
CELL = PATCH // GRID
SCALES = ((1, 8), (2, 8), (4, 4))  # (downsampling factor, orientation bins): 20 maps


def rgb(path, scale):
    im = Image.open(path).convert("RGB")
    if scale != 1.0:
        im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))),
                       Image.BICUBIC)
    return np.asarray(im, dtype=np.float64).transpose(2, 0, 1) / 255.0


def oriented(img, bins):
    gy, gx = np.gradient(img)
    mag = np.hypot(gx, gy)
    ang = (np.arctan2(gy, gx) % (2 * np.pi)) / (2 * np.pi) * bins
    b0 = np.floor(ang).astype(np.int64) % bins
    w1 = ang - np.floor(ang)
    ch = np.zeros((bins,) + img.shape)
    for b in range(bins):
        ch[b] += np.where(b0 == b, mag * (1 - w1), 0.0)
        ch[b] += np.where((b0 + 1) % bins == b, mag * w1, 0.0)
    return ch


def box(ch, size):
    """sum over every size x size box, at every top-left position"""
    ii = np.pad(ch, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
    return ii[:, size:, size:] - ii[:, :-size, size:] - ii[:, size:, :-size] + ii[:, :-size, :-size]


def maps(channel):
    """the 20 oriented-energy maps of one channel, each back at full resolution"""
    out = []
    h, w = channel.shape
    for f, bins in SCALES:
        x = channel
        if f > 1:  # blur (f x f box mean) and subsample
            hh, ww = h // f * f, w // f * f
            x = x[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
        e = oriented(x, bins)
        if f > 1:
            e = np.repeat(np.repeat(e, f, axis=1), f, axis=2)
            e = np.pad(e, ((0, 0), (0, h - e.shape[1]), (0, w - e.shape[2])), mode="edge")
        out.append(e)
    return np.concatenate(out)  # [20][h][w]


def descriptors(img, stride, rng):
    _, h, w = img.shape
    ys = np.arange(0, h - PATCH + 1, stride)
    xs = np.arange(0, w - PATCH + 1, stride)
    if len(ys) == 0 or len(xs) == 0:
        return np.zeros((0, 960))
    oy, ox = rng.integers(0, stride, 2)
    ys = ys[ys + oy <= h - PATCH] + oy
    xs = xs[xs + ox <= w - PATCH] + ox
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    parts = []
    for c in range(3):
        cs = box(maps(img[c]), CELL)
        for gy in range(GRID):
            for gx in range(GRID):
                parts.append(cs[:, yy + gy * CELL, xx + gx * CELL].T)
    return np.concatenate(parts, axis=1)


def main():
    a = photo_args("make_gist.py", "data/vectors-gist", 60000)
    rng = np.random.default_rng(a.seed)
    paths, raw = photo_patches("make_gist.py", a.images, rgb, descriptors, 8, rng)
    total = a.n + a.nq
    if len(raw) < total:
        sys.exit(f"make_gist.py: only {len(raw)} patches, want {total}")
    raw = raw[rng.permutation(len(raw))[:total]].astype(np.float64)
    x = (raw / np.linalg.norm(raw, axis=1).mean()).astype(np.float32)
    os.makedirs(a.out, exist_ok=True)
    q, b = x[:a.nq], x[a.nq:]
    write_vecs(os.path.join(a.out, "base.fvecs"), b, np.float32)
    write_vecs(os.path.join(a.out, "query.fvecs"), q, np.float32)
    write_vecs(os.path.join(a.out, "gt_l2.ivecs"), ground_truth(b, q, 100, "l2"), np.int32)
    norms = np.linalg.norm(b, axis=1)
    print(f"{len(paths)} images, {len(raw)} patches -> {a.n} base + {a.nq} queries, dim 960; "
          f"norms {norms.min():.2f}..{norms.max():.2f} (mean {norms.mean():.2f}) in {a.out}")


if __name__ == "__main__":
    main()
