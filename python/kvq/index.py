"""kvq.Index - a RaBitQ IVF index over float vectors (approximate nearest neighbours)."""

import ctypes
import os

import numpy as np

from . import _native as N
from ._native import _check, _fp, _floats

_i64p = N._i64p
_SearchParams = N._SearchParams
_IndexConfig = N._IndexConfig
_index_config_init = N._index_config_init
_search_params_init = N._search_params_init
_index_create = N._index_create
_index_free = N._index_free
_index_train = N._index_train
_index_add = N._index_add
_index_search = N._index_search
_index_save = N._index_save
_index_load = N._index_load
_index_size_bytes = N._index_size_bytes
_index_count = N._index_count
_index_get_config = N._index_get_config

_METRICS = {"l2": 0, "ip": 1, "cosine": 2}
_ROTATIONS = {"fht": 0, "dense": 1}
_REORDERS = {"fp32": 0, "fp16": 1, "none": 2}


def _choice(table, value, what):
    try:
        return table[value]
    except KeyError:
        raise ValueError("%s must be one of %s, got %r" % (what, sorted(table), value)) from None


class Index:
    """A RaBitQ IVF index over float vectors (approximate nearest neighbours).
    metric: "l2" (squared distance), "ip" or "cosine" (distance = -<q, x>); smaller is
    nearer. Train on a sample, add vectors (ids default to 0, 1, ...), then search.

    Threads: searches (and len, size_bytes, save) may run at once from many threads;
    train, add and close wait for them and run alone (the library's rule: add vs
    search never overlap on one index)."""

    def __init__(
        self,
        dim,
        metric="l2",
        nlist=1,
        bits=1,
        split=0,
        query_bits=4,
        rotation="fht",
        pca_dim=0,
        reorder="fp32",
        seed=0,
        train_iters=0,
        max_train_points=0,
        _handle=None,
    ):
        self._h = None
        self._guard = N._Guard()
        if _handle is None:
            dim = int(dim)
            if dim <= 0 or dim >= 2**32:
                raise ValueError("dim must be a positive 32-bit integer, got %d" % dim)
            cfg = _IndexConfig()
            _check(_index_config_init(ctypes.byref(cfg), dim), "kvq_index_config_init")
            cfg.metric = _choice(_METRICS, metric, "metric")
            cfg.nlist = int(nlist)
            cfg.bits = int(bits)
            cfg.split = int(split)
            cfg.query_bits = int(query_bits)
            cfg.rotation = _choice(_ROTATIONS, rotation, "rotation")
            cfg.pca_dim = int(pca_dim)
            cfg.reorder = _choice(_REORDERS, reorder, "reorder")
            cfg.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
            cfg.train_iters = int(train_iters)
            cfg.max_train_points = int(max_train_points)
            h = ctypes.c_void_p()
            _check(_index_create(ctypes.byref(cfg), ctypes.byref(h)), "kvq_index_create")
            _handle = h
        self._h = _handle
        cfg = _IndexConfig()
        _check(_index_get_config(self._h, ctypes.byref(cfg)), "kvq_index_get_config")
        self.dim = int(cfg.dim)
        self.metric = {v: k for k, v in _METRICS.items()}.get(cfg.metric, cfg.metric)
        self.nlist = int(cfg.nlist)
        self.bits = int(cfg.bits)

    @classmethod
    def load(cls, path):
        """An index saved by .save()."""
        h = ctypes.c_void_p()
        _check(_index_load(os.fsencode(path), ctypes.byref(h)), "kvq_index_load")
        return cls(0, _handle=h)

    def save(self, path):
        with self._guard.shared():
            _check(_index_save(self._live(), os.fsencode(path)), "kvq_index_save")

    def _live(self):
        if self._h is None:
            raise ValueError("kvq.Index: used after close()")
        return self._h

    def close(self):
        guard = getattr(self, "_guard", None)
        if guard is None:
            return
        with guard.exclusive():
            if self._h is not None:
                _index_free(self._h)
                self._h = None

    def __del__(self):
        self.close()

    def __len__(self):
        n = ctypes.c_uint64()
        with self._guard.shared():
            _check(_index_count(self._live(), ctypes.byref(n)), "kvq_index_count")
        return int(n.value)

    @property
    def size_bytes(self):
        """Bytes the index holds in memory."""
        n = ctypes.c_uint64()
        with self._guard.shared():
            _check(_index_size_bytes(self._live(), ctypes.byref(n)), "kvq_index_size_bytes")
        return int(n.value)

    def train(self, x):
        """k-means (and PCA) on a sample of x (n, dim); call before add."""
        arr, n, _ = _floats(x, "train", (self.dim,))
        with self._guard.exclusive():
            _check(_index_train(self._live(), _fp(arr), n), "kvq_index_train")
        return self

    def add(self, x, ids=None):
        """Append vectors (n, dim); ids (n,) int64, default: continue from len(index)."""
        arr, n, _ = _floats(x, "add", (self.dim,))
        idp = None
        if ids is not None:
            ida = np.ascontiguousarray(ids, dtype=np.int64)
            if ida.shape != (n,):
                raise ValueError("add: ids must have shape (%d,), got %s" % (n, ida.shape))
            idp = ida.ctypes.data_as(_i64p)
        if n:
            with self._guard.exclusive():
                _check(_index_add(self._live(), _fp(arr), n, idp), "kvq_index_add")

    def search(self, queries, k, nprobe=1, rerank=0, eps0=0.0, pool=None):
        """The k nearest of each query: (ids, dists), each (n_queries, k), ascending
        distance; slots past the vectors found hold id -1. A single query (dim,) gives
        (k,) arrays."""
        qa, n, single = _floats(queries, "search", (self.dim,))
        k = int(k)
        if k <= 0:
            raise ValueError("search: k must be positive")
        p = _SearchParams()
        _check(_search_params_init(ctypes.byref(p)), "kvq_index_search_params_init")
        p.nprobe = int(nprobe)
        p.rerank = int(rerank)
        p.eps0 = float(eps0)
        p.pool = pool._h.value if pool is not None else None
        ids = np.empty((n, k), dtype=np.int64)
        dists = np.empty((n, k), dtype=np.float32)
        if n:
            with self._guard.shared():
                if pool is None:
                    st = self._search_locked(qa, n, k, p, ids, dists)
                else:
                    with pool._lock:
                        st = self._search_locked(qa, n, k, p, ids, dists)
            _check(st, "kvq_index_search")
        return (ids[0], dists[0]) if single else (ids, dists)

    def _search_locked(self, qa, n, k, p, ids, dists):
        return _index_search(
            self._live(), _fp(qa), n, k, ctypes.byref(p), ids.ctypes.data_as(_i64p), _fp(dists)
        )
