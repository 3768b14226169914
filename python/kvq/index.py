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
_IndexFilter = N._IndexFilter
_ALLOW_FN = N._ALLOW_FN

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
        ip_assign=0,
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
            cfg.ip_assign = int(ip_assign)
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

    @classmethod
    def map(cls, path):
        """An index saved by .save(), served from a read-only mapping of the file
        (shared page cache, no private copy); search only: add/remove raise."""
        h = ctypes.c_void_p()
        _check(N._index_map(os.fsencode(path), ctypes.byref(h)), "kvq_index_map")
        return cls(0, _handle=h)

    @property
    def code_bytes(self):
        """Bytes each vector takes in the lists (codes, factors, row number)."""
        n = ctypes.c_uint64()
        with self._guard.shared():
            _check(N._index_code_bytes(self._live(), ctypes.byref(n)), "kvq_index_code_bytes")
        return int(n.value)

    def remove(self, ids):
        """Remove the vectors with these ids (absent ids are ignored); returns how many went."""
        ida = np.ascontiguousarray(np.atleast_1d(ids), dtype=np.int64).ravel()
        n = ctypes.c_uint64()
        with self._guard.exclusive():
            _check(N._index_remove(self._live(), ida.ctypes.data_as(_i64p), ida.size,
                                   ctypes.byref(n)), "kvq_index_remove")
        return int(n.value)

    @staticmethod
    def _filter(allow):
        """allow: None, an array of permitted ids, or a callable id -> bool. Returns the
        C filter (or None) and the objects that must stay alive during the call."""
        if allow is None:
            return None, ()
        f = _IndexFilter()
        if callable(allow):
            cb = _ALLOW_FN(lambda i, _ctx: 1 if allow(int(i)) else 0)
            f.allow = cb
            return f, (cb,)
        ida = np.asarray(allow, dtype=np.int64).ravel()
        if ida.size and ida.min() < 0:
            raise ValueError("allow: ids must be non-negative")
        top = int(ida.max()) + 1 if ida.size else 0
        bits = np.zeros(top // 8 + 1, dtype=np.uint8)
        np.bitwise_or.at(bits, ida >> 3, (1 << (ida & 7)).astype(np.uint8))
        f.id_bitset = bits.ctypes.data
        f.bitset_ids = top
        return f, (bits,)

    def _with_pool(self, pool, call):
        """call() with the index borrowing pool for train/add (exclusive use)."""
        with self._guard.exclusive():
            h = self._live()
            if pool is None:
                return call(h)
            with pool._lock:
                _check(N._index_set_pool(h, pool._h.value), "kvq_index_set_pool")
                try:
                    return call(h)
                finally:
                    N._index_set_pool(h, None)

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

    def train(self, x, pool=None):
        """k-means (and PCA) on a sample of x (n, dim); call before add. pool: a
        ThreadPool to spread k-means over (the result does not depend on it)."""
        arr, n, _ = _floats(x, "train", (self.dim,))
        self._with_pool(pool, lambda h: _check(_index_train(h, _fp(arr), n), "kvq_index_train"))
        return self

    def add(self, x, ids=None, pool=None):
        """Append vectors (n, dim); ids (n,) int64 >= 0, default: one past the largest
        stored id onwards. pool: a ThreadPool for encoding."""
        arr, n, _ = _floats(x, "add", (self.dim,))
        idp = None
        if ids is not None:
            ida = np.ascontiguousarray(ids, dtype=np.int64)
            if ida.shape != (n,):
                raise ValueError("add: ids must have shape (%d,), got %s" % (n, ida.shape))
            idp = ida.ctypes.data_as(_i64p)
        if n:
            self._with_pool(pool, lambda h: _check(_index_add(h, _fp(arr), n, idp), "kvq_index_add"))

    def search(self, queries, k, nprobe=1, rerank=0, eps0=0.0, pool=None, allow=None):
        """The k nearest of each query: (ids, dists), each (n_queries, k), ascending
        distance; slots past the vectors found hold id -1. A single query (dim,) gives
        (k,) arrays. allow: only these ids (array) or those a callable accepts."""
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
        filt, _keep = self._filter(allow)
        if n:
            with self._guard.shared():
                if pool is None:
                    st = self._search_locked(qa, n, k, p, ids, dists, filt)
                else:
                    with pool._lock:
                        st = self._search_locked(qa, n, k, p, ids, dists, filt)
            _check(st, "kvq_index_search")
        return (ids[0], dists[0]) if single else (ids, dists)

    def _search_locked(self, qa, n, k, p, ids, dists, filt=None):
        return N._index_search_filtered(
            self._live(), _fp(qa), n, k, ctypes.byref(p), ctypes.byref(filt) if filt else None,
            ids.ctypes.data_as(_i64p), _fp(dists)
        )

    def range_search(self, query, radius, nprobe=1, eps0=0.0, allow=None):
        """Every vector within distance radius of one query (dim,): (ids, dists),
        ascending distance."""
        qa, n, single = _floats(query, "range_search", (self.dim,))
        if n != 1:
            raise ValueError("range_search: one query at a time")
        p = _SearchParams()
        _check(_search_params_init(ctypes.byref(p)), "kvq_index_search_params_init")
        p.nprobe = int(nprobe)
        p.eps0 = float(eps0)
        filt, _keep = self._filter(allow)
        fp = ctypes.byref(filt) if filt else None
        cap = 256
        while True:
            ids = np.empty(cap, dtype=np.int64)
            dists = np.empty(cap, dtype=np.float32)
            found = N._size()
            with self._guard.shared():
                st = N._index_range_search(self._live(), _fp(qa), float(radius), ctypes.byref(p), fp,
                                           ids.ctypes.data_as(_i64p), _fp(dists), cap,
                                           ctypes.byref(found))
            if st == 12 and found.value > cap:  # KVQ_ERR_CAPACITY: room for all, again
                cap = int(found.value)
                continue
            _check(st, "kvq_index_range_search")
            m = int(found.value)
            return ids[:m], dists[:m]
