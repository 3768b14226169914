#!/usr/bin/env python3
"""index_peers.py - kvq's RaBitQ IVF index against faiss-cpu (IndexIVFRaBitQ,
IndexIVFRaBitQFastScan and IndexIVFPQFastScan with an exact refine, IndexHNSWFlat as a
graph reference) and rabitqlib's IvfIndex, in one run, on the same vectors, searching on
one thread each; builds on --build-threads threads (wall and CPU seconds reported).

For every method and setting: recall@10 against the exact ground truth, queries/s
(the median, or with --stat max the fastest, of --repeat passes over all queries; the
passes run round-robin over every method and setting, so a slow spell of the machine hits
all of them alike), build time
and index bytes. kvq is built by `kvq index build` and searched in this process through
libkvq.so (ctypes). Prints a table and JSON lines, and the best queries/s each method
reaches at recall@10 >= the target (0.95 by default).

usage: python3 bench/index_peers.py [--data data/vectors] [--kvq build/kvq]
       [--metric l2|ip|cosine] [--suffix _ip] [--build-threads 2] [--targets 0.9,0.95,0.99]
       [--k-factors 10,40]
Data sets: `make vectors` (384-d MiniLM, data/vectors) and `make vectors-sift` (128-d dense
SIFT of photographs, data/vectors-sift; --metric ip --suffix _ip for its unnormalized set,
--metric cosine --suffix _ip for cosine on the same unnormalized vectors).
"""
import argparse
import ctypes
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np


def read_fvecs(path):
    a = np.fromfile(path, dtype=np.float32)
    d = a[:1].view(np.int32)[0]
    return np.ascontiguousarray(a.reshape(-1, d + 1)[:, 1:])


def read_ivecs(path):
    a = np.fromfile(path, dtype=np.int32)
    return a.reshape(-1, a[0] + 1)[:, 1:]


def recall(ids, gt, k):
    return float(np.mean([len(set(ids[i, :k]) & set(gt[i, :k])) / k for i in range(len(ids))]))


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ------------------------------------------------------------------ kvq

class KvqParams(ctypes.Structure):
    _fields_ = [("nprobe", ctypes.c_uint32), ("rerank", ctypes.c_uint32),
                ("eps0", ctypes.c_float), ("n_threads", ctypes.c_uint32),
                ("pool", ctypes.c_void_p)]


def kvq_library(kvq_cli):
    lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.abspath(kvq_cli)), "libkvq.so"))
    lib.kvq_index_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.kvq_index_search_params_init.argtypes = [ctypes.POINTER(KvqParams)]
    lib.kvq_index_search.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.c_uint32, ctypes.POINTER(KvqParams),
                                     ctypes.c_void_p, ctypes.c_void_p]
    lib.kvq_index_free.argtypes = [ctypes.c_void_p]
    return lib


def bench_kvq(a, plans, lib, xq, name, build_args, nprobes, tmp):
    path = os.path.join(tmp, f"kvq{len(plans)}.kvqi")
    out = subprocess.run([a.kvq, "index", "build", "-i", a.base, "-o", path, "--metric", a.metric,
                          "--threads", str(a.build_threads), *build_args],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"total ([0-9.]+) s; .*\((\d+) bytes\)", out)
    build_s, mem = float(m.group(1)), int(m.group(2))
    cpu = re.search(r"cpu ([0-9.]+) s", out)
    build_cpu = float(cpu.group(1)) if cpu else float("nan")
    handle = ctypes.c_void_p()
    if lib.kvq_index_load(path.encode(), ctypes.byref(handle)) != 0:
        raise RuntimeError("kvq_index_load failed")
    file_bytes = os.path.getsize(path)
    q = np.ascontiguousarray(xq, dtype=np.float32)
    for npb in nprobes:
        def run(npb=npb):
            p = KvqParams()
            lib.kvq_index_search_params_init(ctypes.byref(p))
            p.nprobe, p.n_threads = npb, 1
            ids = np.empty((len(q), a.k), dtype=np.int64)
            st = lib.kvq_index_search(handle, q.ctypes.data, len(q), a.k, ctypes.byref(p),
                                      ids.ctypes.data, None)
            if st != 0:
                raise RuntimeError(f"kvq_index_search: status {st}")
            return ids
        plans.append(dict(method="kvq", config=name, param=f"nprobe={npb}", run=run,
                          build_s=build_s, build_cpu=build_cpu, bytes=file_bytes, mem_bytes=mem))
    print(f"  kvq {name}: build {build_s:.2f} s ({build_cpu:.2f} s CPU)", file=sys.stderr)


# ------------------------------------------------------------------ faiss

def faiss_bytes(faiss, index):
    return int(faiss.serialize_index(index).size)


def faiss_metric(faiss, a):  # cosine: the peers get normalized vectors and inner product
    return faiss.METRIC_L2 if a.metric == "l2" else faiss.METRIC_INNER_PRODUCT


def normalized(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(n > 0, n, 1), dtype=np.float32)


def exact_gt(xb, xq, k, metric):
    """Brute-force top k (l2: smallest squared distance; ip and cosine on the vectors
    given: largest inner product), in chunks of queries."""
    out = np.empty((len(xq), k), dtype=np.int64)
    bn = (xb.astype(np.float64) ** 2).sum(1) if metric == "l2" else None
    for i in range(0, len(xq), 64):
        s = xq[i:i + 64].astype(np.float64) @ xb.astype(np.float64).T
        score = (bn[None, :] - 2 * s) if metric == "l2" else -s
        part = np.argpartition(score, k, axis=1)[:, :k]
        order = np.take_along_axis(score, part, 1).argsort(1, kind="stable")
        out[i:i + 64] = np.take_along_axis(part, order, 1)
    return out


def bench_faiss_ivf(a, rows, faiss, xb, xq, gt, kind, nlist, k_factors, nprobes, qb):
    d = xb.shape[1]
    faiss.omp_set_num_threads(a.build_threads)
    t, c = time.perf_counter(), time.process_time()
    quant = faiss.IndexFlatL2(d) if a.metric == "l2" else faiss.IndexFlatIP(d)
    if kind == "IndexIVFPQFastScan":  # d/4 sub-quantizers of 4 bits, as for SIFT1M
        ivf = faiss.IndexIVFPQFastScan(quant, d, nlist, d // 4, 4, faiss_metric(faiss, a))
    else:
        ivf = getattr(faiss, kind)(quant, d, nlist, faiss_metric(faiss, a))
    ref = faiss.IndexRefineFlat(ivf)
    ref.train(xb)
    ref.add(xb)
    build_s, build_cpu = time.perf_counter() - t, time.process_time() - c
    faiss.omp_set_num_threads(1)
    if qb is not None:
        ivf.qb = qb
    nbytes = faiss_bytes(faiss, ref)
    for kf in k_factors:
        for npb in nprobes:
            def run(kf=kf, npb=npb):
                ref.k_factor = kf
                ivf.nprobe = npb
                return ref.search(xq, a.k)[1]
            rows.append(dict(method="faiss", config=f"{kind}+RefineFlat" + (f" qb={qb}" if qb else ""),
                             param=f"nprobe={npb},k_factor={kf}", run=run, build_s=build_s,
                             build_cpu=build_cpu, bytes=nbytes))
    print(f"  faiss {kind}: build {build_s:.2f} s ({build_cpu:.2f} s CPU)", file=sys.stderr)


def bench_faiss_hnsw(a, rows, faiss, xb, xq, gt, efs):
    d = xb.shape[1]
    faiss.omp_set_num_threads(a.build_threads)
    t, c = time.perf_counter(), time.process_time()
    ix = faiss.IndexHNSWFlat(d, 32, faiss_metric(faiss, a))
    ix.hnsw.efConstruction = 80
    ix.add(xb)
    build_s, build_cpu = time.perf_counter() - t, time.process_time() - c
    faiss.omp_set_num_threads(1)
    nbytes = faiss_bytes(faiss, ix)
    for ef in efs:
        def run(ef=ef):
            ix.hnsw.efSearch = ef
            return ix.search(xq, a.k)[1]
        rows.append(dict(method="faiss", config="IndexHNSWFlat M=32", param=f"efSearch={ef}",
                         run=run, build_s=build_s, build_cpu=build_cpu, bytes=nbytes))
    print(f"  faiss HNSW: build {build_s:.2f} s", file=sys.stderr)


# ------------------------------------------------------------------ rabitqlib

def bench_rabitqlib(a, rows, faiss, xb, xq, gt, nlist, nbits, nprobes):
    import rabitqlib
    d = xb.shape[1]
    faiss.omp_set_num_threads(a.build_threads)
    t, c = time.perf_counter(), time.process_time()
    # rabitqlib's IvfIndex takes the clustering from outside: faiss k-means, as its
    # examples do
    km = faiss.Kmeans(d, nlist, niter=10, seed=1234)
    km.train(xb)
    _, assign = km.index.search(xb, 1)
    ix = rabitqlib.IvfIndex(d, len(xb), nlist, nbits, "l2" if a.metric == "l2" else "ip")
    ix.build(xb, km.centroids, assign.ravel().astype(np.uint32), a.build_threads)
    build_s, build_cpu = time.perf_counter() - t, time.process_time() - c
    faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "r.idx")
        ix.save(p)
        nbytes = os.path.getsize(p)
    for npb in nprobes:
        def run(npb=npb):
            return np.asarray(ix.search(xq, a.k, npb, num_threads=1)[0])
        rows.append(dict(method="rabitqlib", config=f"IvfIndex nbits={nbits}",
                         param=f"nprobe={npb}", run=run, build_s=build_s, build_cpu=build_cpu,
                         bytes=nbytes))
    print(f"  rabitqlib nbits={nbits}: build {build_s:.2f} s", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/vectors")
    ap.add_argument("--kvq", default="build/kvq")
    ap.add_argument("--nlist", type=int, default=256)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--targets", default="0.9,0.95,0.99")
    ap.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"],
                    help="cosine: kvq indexes the raw vectors with --metric cosine, the peers "
                         "normalized ones with inner product; exact ground truth computed here")
    ap.add_argument("--k-factors", default="10,40",
                    help="faiss IVF + RefineFlat: candidates reranked = k_factor * k")
    ap.add_argument("--suffix", default="", help="base{S}.fvecs / query{S}.fvecs (e.g. _ip)")
    ap.add_argument("--build-threads", type=int, default=1)
    ap.add_argument("--nprobes", default="8,16,24,32,48,64,96,128")
    ap.add_argument("--nq", type=int, default=0, help="use only the first NQ queries")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--only", help="comma list of kvq,faiss,pq,rabitqlib,hnsw")
    ap.add_argument("--stat", default="median", choices=["median", "max"],
                    help="queries/s of a setting: the median or the fastest of its timed passes")
    a = ap.parse_args()
    a.base = os.path.join(a.data, f"base{a.suffix}.fvecs")
    a.query = os.path.join(a.data, f"query{a.suffix}.fvecs")
    a.gt = os.path.join(a.data, f"gt_{a.metric}.ivecs")
    k_factors = [int(v) for v in a.k_factors.split(",")]
    only = set(a.only.split(",")) if a.only else {"kvq", "faiss", "pq", "rabitqlib", "hnsw"}

    import faiss
    faiss.omp_set_num_threads(1)
    xb, xq = read_fvecs(a.base), read_fvecs(a.query)
    if a.nq:
        xq = xq[:a.nq]
    if a.metric == "cosine":  # kvq reads the raw file; the peers and the truth see unit vectors
        xb, xq = normalized(xb), normalized(xq)
        gt = exact_gt(xb, xq, a.k, "cosine")
    elif os.path.exists(a.gt):
        gt = read_ivecs(a.gt)[:len(xq)]
    else:  # a set written without this metric's truth (the GIST-like one has l2 only)
        gt = exact_gt(xb, xq, a.k, a.metric)
    print(f"{len(xb)} base, {len(xq)} queries, dim {xb.shape[1]}, {a.metric}; {cpu_model()}; "
          f"builds on {a.build_threads} threads, searches on 1", file=sys.stderr)
    nprobes = [int(v) for v in a.nprobes.split(",")]
    rows = []
    nl = ["--nlist", str(a.nlist)]
    tmp = tempfile.TemporaryDirectory()
    if "kvq" in only:
        lib = kvq_library(a.kvq)
        bench_kvq(a, rows, lib, xq, "bits=1 q4 fp32-reorder", nl, nprobes, tmp.name)
        # half the bytes a reranked row: lossless where the coordinates are small integers
        # (the SIFT-like l2 set's are below 2048), else rounded to fp16
        bench_kvq(a, rows, lib, xq, "bits=1 q4 fp16-reorder", nl + ["--reorder", "fp16"], nprobes,
                  tmp.name)
        bench_kvq(a, rows, lib, xq, "bits=4 split q4 fp16-reorder",
                  nl + ["--bits", "4", "--split", "--reorder", "fp16"], nprobes, tmp.name)
        bench_kvq(a, rows, lib, xq, "bits=8 split q4 no-reorder",
                  nl + ["--bits", "8", "--split", "--reorder", "none"], nprobes, tmp.name)
        if a.metric == "ip":  # vectors join the list of largest <x, c> instead of l2-nearest
            bench_kvq(a, rows, lib, xq, "bits=1 q4 fp32-reorder ip-assign",
                      nl + ["--ip-assign", "ip"], nprobes, tmp.name)
    if "faiss" in only:
        bench_faiss_ivf(a, rows, faiss, xb, xq, gt, "IndexIVFRaBitQ", a.nlist, k_factors, nprobes, 4)
        bench_faiss_ivf(a, rows, faiss, xb, xq, gt, "IndexIVFRaBitQFastScan", a.nlist, k_factors,
                        nprobes, 4)
    if "pq" in only:
        bench_faiss_ivf(a, rows, faiss, xb, xq, gt, "IndexIVFPQFastScan", a.nlist, k_factors,
                        nprobes, None)
    if "hnsw" in only:
        bench_faiss_hnsw(a, rows, faiss, xb, xq, gt, [16, 32, 64, 128, 256])
    if "rabitqlib" in only:
        for nbits in (32, 7, 5):
            bench_rabitqlib(a, rows, faiss, xb, xq, gt, a.nlist, nbits, nprobes)

    for r in rows:  # a warm-up pass gives the recall
        r["recall"] = recall(r["run"](), gt, a.k)
        r["wall_passes"], r["cpu_passes"] = [], []
    for _ in range(a.repeat):  # round-robin timed passes
        for r in rows:
            t, c = time.perf_counter(), time.process_time()
            r["run"]()
            r["wall_passes"].append(len(xq) / (time.perf_counter() - t))
            r["cpu_passes"].append(len(xq) / max(time.process_time() - c, 1e-9))
    pick = (lambda v: float(np.median(v))) if a.stat == "median" else max
    for r in rows:
        del r["run"]
        r["qps"], r["cpu_qps"] = pick(r["wall_passes"]), pick(r["cpu_passes"])

    print(f"\n{'method':10} {'config':42} {'param':22} {'recall@10':>9} {'qps':>9} {'cpu-qps':>9} "
          f"{'build s':>8} {'cpu s':>7} {'MiB':>7}")
    for r in rows:
        print(f"{r['method']:10} {r['config']:42} {r['param']:22} {r['recall']:9.4f} "
              f"{r['qps']:9.1f} {r['cpu_qps']:9.1f} {r['build_s']:8.2f} {r['build_cpu']:7.2f} "
              f"{r['bytes'] / 2**20:7.1f}")
    for target in [float(v) for v in a.targets.split(",")]:
        print(f"\nbest queries/s (CPU-time based) at recall@{a.k} >= {target}:")
        best = {}
        for r in rows:
            if r["recall"] >= target:
                key = (r["method"], r["config"])
                if key not in best or r["cpu_qps"] > best[key]["cpu_qps"]:
                    best[key] = r
        ranked = sorted(best.items(), key=lambda kv: -kv[1]["cpu_qps"])
        top_kvq = max((r["cpu_qps"] for (m, _), r in ranked if m == "kvq"), default=0.0)
        top_peer = max((r["cpu_qps"] for (m, _), r in ranked if m != "kvq"), default=0.0)
        for (m, c), r in ranked:
            print(f"  {m:10} {c:42} {r['param']:22} recall {r['recall']:.4f}  {r['cpu_qps']:9.1f} q/s"
                  f" (wall {r['qps']:.1f})")
        if top_kvq and top_peer:
            print(f"  kvq / best peer: {top_kvq / top_peer:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
