"""kvq - Python bindings (ctypes over libkvq.so, numpy arrays in and out).

Key/value-cache and vector compression: TurboQuant, RVQ, QJL, PolarQuant, RaBitQ and
the llama.cpp baselines, each named by a config string such as
"turboquant_rvq:bits=1,residuals=2". Pure Python: no compiled extension, the shared
library is found through KVQ_LIBRARY, then ../build/libkvq.so beside the package,
then the system's library path.

    import numpy as np, kvq
    q = kvq.Quantizer("turboquant_rvq:bits=1,residuals=2", dim=128, seed=7)
    codes = q.encode(x)              # (n, 128) float32 -> (n, q.code_size) uint8
    scores = q.score(query, codes)   # (n,) inner-product estimates from the codes

Also Cache (one layer's compressed KV cache with attention), Index (RaBitQ IVF nearest
neighbours) and ThreadPool. Errors from the library raise KvqError.
"""

import ctypes
import ctypes.util
import os

import numpy as np

__all__ = [
    "KvqError",
    "Quantizer",
    "Cache",
    "ThreadPool",
    "Index",
    "library_path",
    "version",
    "cpu_isa",
]

# ----------------------------------------------------------------- the library


def _candidates():
    env = os.environ.get("KVQ_LIBRARY")
    if env:
        yield env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    # python/kvq/ inside the source tree: the build directory is two levels up;
    # an installed copy may also sit one level below a build/ directory.
    for rel in (("..", "..", "build"), ("..", "build")):
        yield os.path.normpath(os.path.join(here, *rel, "libkvq.so"))
    found = ctypes.util.find_library("kvq")
    if found:
        yield found


def _load():
    tried = []
    for path in _candidates():
        if os.path.sep in path and not os.path.exists(path):
            tried.append(path + " (missing)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append("%s (%s)" % (path, e))
    raise ImportError(
        "kvq: libkvq.so not found; build it with `make` or set KVQ_LIBRARY. Tried: "
        + ("; ".join(tried) if tried else "nothing")
    )


_lib, library_path = _load()

_status = ctypes.c_int
_size = ctypes.c_size_t
_u8p = ctypes.POINTER(ctypes.c_uint8)
_f32p = ctypes.POINTER(ctypes.c_float)


class _Config(ctypes.Structure):
    """Mirror of kvq_config (include/kvq.h); field order and types must match."""

    _fields_ = [
        ("method", ctypes.c_int),
        ("dim", ctypes.c_uint32),
        ("bits", ctypes.c_uint32),
        ("residuals", ctypes.c_uint32),
        ("rotate", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("proj_dim", ctypes.c_uint32),
        ("query_bits", ctypes.c_uint32),
        ("split", ctypes.c_uint32),
        ("nlist", ctypes.c_uint32),
        ("eps0", ctypes.c_float),
        ("sub_dim", ctypes.c_uint32),
        ("n_codebooks", ctypes.c_uint32),
        ("rope_base", ctypes.c_float),
        ("rope_pairing", ctypes.c_uint32),
        ("isa", ctypes.c_int),
        ("artifact", ctypes.c_char * 512),
    ]


class _CacheConfig(ctypes.Structure):
    """Mirror of kvq_cache_config."""

    _fields_ = [
        ("n_kv_heads", ctypes.c_uint32),
        ("head_dim", ctypes.c_uint32),
        ("key", _Config),
        ("value", _Config),
        ("window", ctypes.c_uint32),
        ("n_outliers", ctypes.c_uint32),
        ("chunk_tokens", ctypes.c_uint32),
        ("max_tokens", ctypes.c_uint32),
        ("n_sink", ctypes.c_uint32),
    ]


class _CacheMemory(ctypes.Structure):
    """Mirror of kvq_cache_memory_info."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "key_codes",
            "value_codes",
            "window",
            "outliers",
            "shared",
            "overhead",
            "total",
            "n_tokens",
        )
    ]


class _IndexConfig(ctypes.Structure):
    """Mirror of kvq_index_config."""

    _fields_ = [
        ("dim", ctypes.c_uint32),
        ("metric", ctypes.c_int),
        ("nlist", ctypes.c_uint32),
        ("bits", ctypes.c_uint32),
        ("split", ctypes.c_uint32),
        ("query_bits", ctypes.c_uint32),
        ("rotation", ctypes.c_int),
        ("pca_dim", ctypes.c_uint32),
        ("reorder", ctypes.c_int),
        ("seed", ctypes.c_uint64),
        ("train_iters", ctypes.c_uint32),
        ("max_train_points", ctypes.c_uint32),
        ("ip_assign", ctypes.c_uint32),
    ]


class _SearchParams(ctypes.Structure):
    """Mirror of kvq_index_search_params."""

    _fields_ = [
        ("nprobe", ctypes.c_uint32),
        ("rerank", ctypes.c_uint32),
        ("eps0", ctypes.c_float),
        ("n_threads", ctypes.c_uint32),
        ("pool", ctypes.c_void_p),
    ]


def _fn(name, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_vp = ctypes.c_void_p
_pvp = ctypes.POINTER(ctypes.c_void_p)
_cfgp = ctypes.POINTER(_Config)

_strerror = _fn("kvq_strerror", ctypes.c_char_p, _status)
_version_string = _fn("kvq_version_string", ctypes.c_char_p)
_cpu_isa = _fn("kvq_cpu_isa", ctypes.c_char_p)
_config_parse = _fn(
    "kvq_config_parse", _status, ctypes.c_char_p, ctypes.c_uint32, _cfgp, ctypes.c_char_p, _size
)
_config_format = _fn("kvq_config_format", _status, _cfgp, ctypes.c_char_p, _size)
_quantizer_create = _fn("kvq_quantizer_create", _status, _cfgp, _pvp)
_quantizer_free = _fn("kvq_quantizer_free", None, _vp)
_quantizer_fit = _fn("kvq_quantizer_fit", _status, _vp, _f32p, _size)
_quantizer_config = _fn("kvq_quantizer_config", _status, _vp, _cfgp)
_code_size = _fn("kvq_code_size", _size, _vp)
_shared_size = _fn("kvq_shared_size", _size, _vp)
_encode = _fn("kvq_encode", _status, _vp, _f32p, _size, _u8p)
_decode = _fn("kvq_decode", _status, _vp, _u8p, _size, _f32p)
_score = _fn("kvq_score", _status, _vp, _f32p, _u8p, _size, _f32p)
_score_bound = _fn("kvq_score_bound", _status, _vp, _f32p, _u8p, _size, _f32p, _f32p)
_quantizer_save = _fn("kvq_quantizer_save", _status, _vp, ctypes.c_char_p)
_quantizer_load = _fn("kvq_quantizer_load", _status, ctypes.c_char_p, _pvp)
_threadpool_create = _fn("kvq_threadpool_create", _status, ctypes.c_uint, _pvp)
_threadpool_free = _fn("kvq_threadpool_free", None, _vp)
_threadpool_size = _fn("kvq_threadpool_size", ctypes.c_uint, _vp)
_cache_config_init = _fn(
    "kvq_cache_config_init",
    _status,
    ctypes.POINTER(_CacheConfig),
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    _size,
)
_cache_create = _fn("kvq_cache_create", _status, ctypes.POINTER(_CacheConfig), _pvp)
_cache_free = _fn("kvq_cache_free", None, _vp)
_cache_reset = _fn("kvq_cache_reset", _status, _vp)
_cache_length = _fn("kvq_cache_length", _status, _vp, ctypes.POINTER(_size))
_cache_append = _fn("kvq_cache_append", _status, _vp, _f32p, _f32p, _size)
_cache_attend = _fn(
    "kvq_cache_attend", _status, _vp, _f32p, ctypes.c_uint32, _size, ctypes.c_float, _vp, _f32p
)
_cache_memory = _fn("kvq_cache_memory", _status, _vp, ctypes.POINTER(_CacheMemory))

_i64p = ctypes.POINTER(ctypes.c_int64)
_u64p = ctypes.POINTER(ctypes.c_uint64)
_icfgp = ctypes.POINTER(_IndexConfig)
_index_config_init = _fn("kvq_index_config_init", _status, _icfgp, ctypes.c_uint32)
_search_params_init = _fn("kvq_index_search_params_init", _status, ctypes.POINTER(_SearchParams))
_index_create = _fn("kvq_index_create", _status, _icfgp, _pvp)
_index_free = _fn("kvq_index_free", None, _vp)
_index_train = _fn("kvq_index_train", _status, _vp, _f32p, _size)
_index_add = _fn("kvq_index_add", _status, _vp, _f32p, _size, _i64p)
_index_search = _fn(
    "kvq_index_search",
    _status,
    _vp,
    _f32p,
    _size,
    ctypes.c_uint32,
    ctypes.POINTER(_SearchParams),
    _i64p,
    _f32p,
)
_index_save = _fn("kvq_index_save", _status, _vp, ctypes.c_char_p)
_index_load = _fn("kvq_index_load", _status, ctypes.c_char_p, _pvp)
_index_size_bytes = _fn("kvq_index_size_bytes", _status, _vp, _u64p)
_index_count = _fn("kvq_index_count", _status, _vp, _u64p)
_index_get_config = _fn("kvq_index_get_config", _status, _vp, _icfgp)
_ALLOW_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_void_p)


class _IndexFilter(ctypes.Structure):
    """Mirror of kvq_index_filter."""
    _fields_ = [
        ("id_bitset", ctypes.c_void_p),
        ("bitset_ids", ctypes.c_uint64),
        ("allow", _ALLOW_FN),
        ("ctx", ctypes.c_void_p),
    ]


_filtp = ctypes.POINTER(_IndexFilter)
_index_search_filtered = _fn(
    "kvq_index_search_filtered", _status, _vp, _f32p, _size, ctypes.c_uint32,
    ctypes.POINTER(_SearchParams), _filtp, _i64p, _f32p,
)
_index_range_search = _fn(
    "kvq_index_range_search", _status, _vp, _f32p, ctypes.c_float, ctypes.POINTER(_SearchParams),
    _filtp, _i64p, _f32p, _size, ctypes.POINTER(_size),
)
_index_remove = _fn("kvq_index_remove", _status, _vp, _i64p, _size, _u64p)
_index_map = _fn("kvq_index_map", _status, ctypes.c_char_p, _pvp)
_index_set_pool = _fn("kvq_index_set_pool", _status, _vp, _vp)
_index_code_bytes = _fn("kvq_index_code_bytes", _status, _vp, _u64p)

_config_init = _fn("kvq_config_init", _status, _cfgp, ctypes.c_int, ctypes.c_uint32)


def _check_layout(struct_type, init, what):
    """The mirrors above must be exactly as large as the C structs: let the library's
    initializer fill one inside a larger buffer of sentinels and see where it stopped."""
    size = ctypes.sizeof(struct_type)
    buf = (ctypes.c_uint8 * (size + 512))()
    ctypes.memset(buf, 0xA5, len(buf))
    init(ctypes.cast(buf, ctypes.POINTER(struct_type)))
    if any(b != 0xA5 for b in bytes(buf)[size:]):
        raise ImportError(
            "kvq: %s in this libkvq is larger than these bindings know (%s): "
            "update python/kvq to the library's include/kvq.h" % (what, library_path)
        )


_check_layout(_Config, lambda p: _config_init(p, 1, 64), "kvq_config")
_check_layout(
    _CacheConfig,
    lambda p: _cache_config_init(p, 1, 64, b"fp16", b"fp16", None, 0),
    "kvq_cache_config",
)
_check_layout(_IndexConfig, lambda p: _index_config_init(p, 16), "kvq_index_config")
_check_layout(_SearchParams, lambda p: _search_params_init(p), "kvq_index_search_params")

# ---------------------------------------------------------------------- errors

STATUS_NAMES = {
    0: "OK",
    1: "INVALID_ARG",
    2: "NOMEM",
    3: "OVERFLOW",
    4: "IO",
    5: "FORMAT",
    6: "UNSUPPORTED",
    7: "PARSE",
    8: "MISMATCH",
    9: "STATE",
    10: "NO_DEVICE",
    11: "DEVICE",
    12: "CAPACITY",
}


class KvqError(Exception):
    """A kvq call failed. .status is the kvq_status number, .name its KVQ_ERR_ name,
    and the message is the library's sentence for it (plus the parser's detail)."""

    def __init__(self, status, where, detail=""):
        self.status = int(status)
        self.name = STATUS_NAMES.get(self.status, "UNKNOWN")
        self.sentence = _strerror(self.status).decode()
        self.where = where
        text = "%s: %s" % (where, self.sentence)
        if detail:
            text += " (%s)" % detail
        super().__init__(text)


def _check(status, where, detail=""):
    if status != 0:
        raise KvqError(status, where, detail)


def version():
    """The library's version string, e.g. "0.1.0"."""
    return _version_string().decode()


def cpu_isa():
    """The ISA the kernels run on here: "avx512", "avx2", "neon" or "scalar"."""
    return _cpu_isa().decode()


# ---------------------------------------------------------------- array checks


def _floats(a, what, trailing):
    """a as a C-contiguous float32 array whose last dims are `trailing`; returns
    (array, leading count, was_single) where was_single means no leading dim."""
    arr = np.ascontiguousarray(a, dtype=np.float32)
    nt = len(trailing)
    if arr.ndim == nt:
        single = True
        lead = 1
    elif arr.ndim == nt + 1:
        single = False
        lead = arr.shape[0]
    else:
        raise ValueError(
            "%s: expected shape (n, %s) or (%s), got %s"
            % (what, ", ".join(map(str, trailing)), ", ".join(map(str, trailing)), arr.shape)
        )
    if tuple(arr.shape[arr.ndim - nt :]) != tuple(trailing):
        raise ValueError(
            "%s: trailing shape must be %s, got %s" % (what, tuple(trailing), arr.shape)
        )
    return arr, lead, single


def _codes(c, code_size, what):
    arr = np.asarray(c)
    if arr.dtype != np.uint8:
        raise ValueError("%s: codes must be uint8, got %s" % (what, arr.dtype))
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 1 and arr.shape[0] == code_size:
        return arr, 1, True
    if arr.ndim == 2 and arr.shape[1] == code_size:
        return arr, arr.shape[0], False
    raise ValueError(
        "%s: codes must have shape (n, %d) or (%d,), got %s"
        % (what, code_size, code_size, arr.shape)
    )


def _fp(arr):
    return arr.ctypes.data_as(_f32p)


def _bp(arr):
    return arr.ctypes.data_as(_u8p)


def _parse(spec, dim):
    if not isinstance(spec, str):
        raise TypeError("spec must be a str such as 'turboquant_rvq:bits=1,residuals=2'")
    cfg = _Config()
    msg = ctypes.create_string_buffer(256)
    st = _config_parse(spec.encode(), dim, ctypes.byref(cfg), msg, len(msg))
    _check(st, "kvq_config_parse(%r)" % spec, msg.value.decode(errors="replace"))
    return cfg


# ------------------------------------------------------------------ quantizer


class Quantizer:
    """One quantizer: a method and its parameters (a config string), a vector length
    and a seed. Same seed, same codes, on every CPU. Safe to share across threads."""

    def __init__(self, spec, dim, seed=None, _handle=None):
        self._h = None
        if _handle is None:
            dim = int(dim)
            if dim <= 0 or dim >= 2**32:
                raise ValueError("dim must be a positive 32-bit integer, got %d" % dim)
            cfg = _parse(spec, dim)
            if seed is not None:
                cfg.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
            h = ctypes.c_void_p()
            _check(_quantizer_create(ctypes.byref(cfg), ctypes.byref(h)), "kvq_quantizer_create")
            _handle = h
        self._h = _handle
        cfg = _Config()
        _check(_quantizer_config(self._h, ctypes.byref(cfg)), "kvq_quantizer_config")
        self.dim = int(cfg.dim)
        self.seed = int(cfg.seed)
        buf = ctypes.create_string_buffer(1024)
        _check(_config_format(ctypes.byref(cfg), buf, len(buf)), "kvq_config_format")
        self.spec = buf.value.decode()
        self.code_size = int(_code_size(self._h))
        self.shared_size = int(_shared_size(self._h))

    @classmethod
    def load(cls, path):
        """A quantizer saved by .save() (a safetensors file)."""
        h = ctypes.c_void_p()
        _check(_quantizer_load(os.fsencode(path), ctypes.byref(h)), "kvq_quantizer_load")
        return cls(None, 0, _handle=h)

    def save(self, path):
        _check(_quantizer_save(self._h, os.fsencode(path)), "kvq_quantizer_save")

    def close(self):
        if self._h is not None:
            _quantizer_free(self._h)
            self._h = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "kvq.Quantizer(%r, dim=%d, seed=%d)" % (self.spec, self.dim, self.seed)

    def fit(self, x):
        """Calibrate on x (n, dim) for the methods that learn (vecinfer, spectral,
        comm_vq, rabitq with nlist)."""
        arr, n, _ = _floats(x, "fit", (self.dim,))
        _check(_quantizer_fit(self._h, _fp(arr), n), "kvq_quantizer_fit")
        return self

    def encode(self, x):
        """(n, dim) or (dim,) floats -> (n, code_size) or (code_size,) uint8 codes."""
        arr, n, single = _floats(x, "encode", (self.dim,))
        out = np.empty((n, self.code_size), dtype=np.uint8)
        if n:
            _check(_encode(self._h, _fp(arr), n, _bp(out)), "kvq_encode")
        return out[0] if single else out

    def decode(self, codes):
        """(n, code_size) uint8 codes -> (n, dim) float32 (or one vector)."""
        arr, n, single = _codes(codes, self.code_size, "decode")
        out = np.empty((n, self.dim), dtype=np.float32)
        if n:
            _check(_decode(self._h, _bp(arr), n, _fp(out)), "kvq_decode")
        return out[0] if single else out

    def score(self, query, codes):
        """Estimates of <query, x_i> for each code: (n,) float32."""
        q, _, qs = _floats(query, "score query", (self.dim,))
        if not qs:
            raise ValueError("score: query must have shape (%d,)" % self.dim)
        arr, n, single = _codes(codes, self.code_size, "score")
        out = np.empty(n, dtype=np.float32)
        if n:
            _check(_score(self._h, _fp(q), _bp(arr), n, _fp(out)), "kvq_score")
        return out[0] if single else out

    def score_bound(self, query, codes):
        """(scores, err): |<q, x_i> - scores[i]| <= err[i] with the method's
        confidence. KvqError UNSUPPORTED for methods without a bound."""
        q, _, qs = _floats(query, "score_bound query", (self.dim,))
        if not qs:
            raise ValueError("score_bound: query must have shape (%d,)" % self.dim)
        arr, n, _ = _codes(codes, self.code_size, "score_bound")
        s = np.empty(n, dtype=np.float32)
        e = np.empty(n, dtype=np.float32)
        if n:
            _check(_score_bound(self._h, _fp(q), _bp(arr), n, _fp(s), _fp(e)), "kvq_score_bound")
        return s, e


# ---------------------------------------------------------------- threadpool


class ThreadPool:
    """A fixed pool of worker threads (n_threads=0: one per CPU) for Cache.attend."""

    def __init__(self, n_threads=0):
        self._h = None
        h = ctypes.c_void_p()
        _check(_threadpool_create(int(n_threads), ctypes.byref(h)), "kvq_threadpool_create")
        self._h = h

    @property
    def size(self):
        return int(_threadpool_size(self._h))

    def close(self):
        if self._h is not None:
            _threadpool_free(self._h)
            self._h = None

    def __del__(self):
        self.close()


# --------------------------------------------------------------------- cache


class Cache:
    """One layer's compressed KV cache: keys and values of shape
    (n_tokens, n_kv_heads, head_dim) go in, attention outputs come out. window recent
    tokens and n_sink first tokens are also kept exact; n_outliers key channels per head
    are kept apart in fp16."""

    def __init__(
        self,
        n_kv_heads,
        head_dim,
        key_spec="turboquant_rvq:bits=1,residuals=2",
        value_spec="mse:bits=2",
        window=0,
        n_outliers=0,
        max_tokens=0,
        n_sink=0,
    ):
        self._h = None
        self.n_kv_heads = int(n_kv_heads)
        self.head_dim = int(head_dim)
        if self.n_kv_heads <= 0 or self.head_dim <= 0:
            raise ValueError("n_kv_heads and head_dim must be positive")
        cfg = _CacheConfig()
        msg = ctypes.create_string_buffer(256)
        st = _cache_config_init(
            ctypes.byref(cfg),
            self.n_kv_heads,
            self.head_dim,
            key_spec.encode(),
            value_spec.encode(),
            msg,
            len(msg),
        )
        _check(st, "kvq_cache_config_init(%r, %r)" % (key_spec, value_spec), msg.value.decode())
        cfg.window = int(window)
        cfg.n_outliers = int(n_outliers)
        cfg.max_tokens = int(max_tokens)
        cfg.n_sink = int(n_sink)
        h = ctypes.c_void_p()
        _check(_cache_create(ctypes.byref(cfg), ctypes.byref(h)), "kvq_cache_create")
        self._h = h

    def close(self):
        if self._h is not None:
            _cache_free(self._h)
            self._h = None

    def __del__(self):
        self.close()

    def __len__(self):
        n = _size()
        _check(_cache_length(self._h, ctypes.byref(n)), "kvq_cache_length")
        return int(n.value)

    def reset(self):
        _check(_cache_reset(self._h), "kvq_cache_reset")

    def append(self, k, v):
        """Append tokens: k and v of shape (n_tokens, n_kv_heads, head_dim), or one
        token as (n_kv_heads, head_dim)."""
        shape = (self.n_kv_heads, self.head_dim)
        ka, nk, _ = _floats(k, "append keys", shape)
        va, nv, _ = _floats(v, "append values", shape)
        if nk != nv:
            raise ValueError("append: %d key rows but %d value rows" % (nk, nv))
        if nk:
            _check(_cache_append(self._h, _fp(ka), _fp(va), nk), "kvq_cache_append")

    def attend(self, q, scale=None, pool=None):
        """Causal attention of the newest positions: q of shape
        (n_queries, n_q_heads, head_dim) (or (n_q_heads, head_dim) for one), n_q_heads a
        multiple of n_kv_heads; returns the output in q's shape. scale defaults to
        1/sqrt(head_dim); pool is an optional ThreadPool."""
        qa = np.ascontiguousarray(q, dtype=np.float32)
        single = qa.ndim == 2
        if single:
            qa = qa[None]
        if qa.ndim != 3 or qa.shape[2] != self.head_dim:
            raise ValueError(
                "attend: q must have shape (n_queries, n_q_heads, %d), got %s"
                % (self.head_dim, np.shape(q))
            )
        n_queries, n_q_heads = qa.shape[0], qa.shape[1]
        if n_q_heads == 0 or n_q_heads % self.n_kv_heads:
            raise ValueError(
                "attend: n_q_heads (%d) must be a positive multiple of n_kv_heads (%d)"
                % (n_q_heads, self.n_kv_heads)
            )
        if scale is None:
            scale = 1.0 / np.sqrt(self.head_dim)
        out = np.empty_like(qa)
        if n_queries:
            ph = pool._h if pool is not None else None
            st = _cache_attend(
                self._h, _fp(qa), n_q_heads, n_queries, float(scale), ph, _fp(out)
            )
            _check(st, "kvq_cache_attend")
        return out[0] if single else out

    def memory(self):
        """Exact bytes held, as a dict: key_codes, value_codes, window, outliers, shared,
        overhead, total, n_tokens."""
        info = _CacheMemory()
        _check(_cache_memory(self._h, ctypes.byref(info)), "kvq_cache_memory")
        return {name: int(getattr(info, name)) for name, _ in _CacheMemory._fields_}


# --------------------------------------------------------------------- index

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
    nearer. Train on a sample, add vectors (ids default to 0, 1, ...), then search."""

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
        _check(_index_map(os.fsencode(path), ctypes.byref(h)), "kvq_index_map")
        return cls(0, _handle=h)

    @property
    def code_bytes(self):
        """Bytes each vector takes in the lists (codes, factors, row number)."""
        n = ctypes.c_uint64()
        _check(_index_code_bytes(self._h, ctypes.byref(n)), "kvq_index_code_bytes")
        return int(n.value)

    def remove(self, ids):
        """Remove the vectors with these ids (absent ids are ignored); returns how many went."""
        ida = np.ascontiguousarray(np.atleast_1d(ids), dtype=np.int64).ravel()
        n = ctypes.c_uint64()
        _check(_index_remove(self._h, ida.ctypes.data_as(_i64p), ida.size, ctypes.byref(n)),
               "kvq_index_remove")
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

    def save(self, path):
        _check(_index_save(self._h, os.fsencode(path)), "kvq_index_save")

    def close(self):
        if self._h is not None:
            _index_free(self._h)
            self._h = None

    def __del__(self):
        self.close()

    def __len__(self):
        n = ctypes.c_uint64()
        _check(_index_count(self._h, ctypes.byref(n)), "kvq_index_count")
        return int(n.value)

    @property
    def size_bytes(self):
        """Bytes the index holds in memory."""
        n = ctypes.c_uint64()
        _check(_index_size_bytes(self._h, ctypes.byref(n)), "kvq_index_size_bytes")
        return int(n.value)

    def train(self, x, pool=None):
        """k-means (and PCA) on a sample of x (n, dim); call before add. pool: a
        ThreadPool to spread k-means over (the result does not depend on it)."""
        arr, n, _ = _floats(x, "train", (self.dim,))
        _check(_index_set_pool(self._h, pool._h.value if pool is not None else None), "kvq_index_set_pool")
        try:
            _check(_index_train(self._h, _fp(arr), n), "kvq_index_train")
        finally:
            _index_set_pool(self._h, None)
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
            _check(_index_set_pool(self._h, pool._h.value if pool is not None else None),
                   "kvq_index_set_pool")
            try:
                _check(_index_add(self._h, _fp(arr), n, idp), "kvq_index_add")
            finally:
                _index_set_pool(self._h, None)

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
            st = _index_search_filtered(
                self._h, _fp(qa), n, k, ctypes.byref(p), ctypes.byref(filt) if filt else None,
                ids.ctypes.data_as(_i64p), _fp(dists)
            )
            _check(st, "kvq_index_search")
        return (ids[0], dists[0]) if single else (ids, dists)

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
            found = _size()
            st = _index_range_search(self._h, _fp(qa), float(radius), ctypes.byref(p), fp,
                                     ids.ctypes.data_as(_i64p), _fp(dists), cap, ctypes.byref(found))
            if st == 12 and found.value > cap:  # KVQ_ERR_CAPACITY: room for all, again
                cap = int(found.value)
                continue
            _check(st, "kvq_index_range_search")
            m = int(found.value)
            return ids[:m], dists[:m]
