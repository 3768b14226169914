"""kvq._native - finding and loading libkvq, the ctypes mirrors of its structs and the
signatures of its functions, errors, array conversion (numpy and torch) and the lock
that serializes calls on C objects that are not thread-safe. Everything here is private;
the package's modules build the public classes on it."""

import ctypes
import ctypes.util
import glob
import os
import threading

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    env = os.environ.get("KVQ_LIBRARY")
    if env:
        yield env
        return
    # A wheel carries the library inside the package; a source tree has it in build/
    # two levels up (python/kvq/ -> build/); else the system's library path.
    for name in ("libkvq.so", "libkvq.so.*", "libkvq.dylib"):
        for path in sorted(glob.glob(os.path.join(_HERE, name))):
            yield path
    for rel in (("..", "..", "build"), ("..", "build")):
        yield os.path.normpath(os.path.join(_HERE, *rel, "libkvq.so"))
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
        "kvq: libkvq.so not found; install the wheel (pip install ./python), build it with "
        "`make`, or set KVQ_LIBRARY. Tried: " + ("; ".join(tried) if tried else "nothing")
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
        ("center_keys", ctypes.c_uint32),
        ("sliding_window", ctypes.c_uint32),
        ("sliding_key_bits", ctypes.c_uint32),
        ("sliding_value_bits", ctypes.c_uint32),
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
_cache_observe_queries = _fn("kvq_cache_observe_queries", _status, _vp, _f32p, ctypes.c_uint32, _size)
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
        if not detail and _last_error is not None:
            # the library's detail line for this thread's failure, taken once
            last = _last_error()
            detail = last.decode(errors="replace") if last else ""
            _clear_last_error()
        raise KvqError(status, where, detail)


def version():
    """The library's version string, e.g. "0.1.0"."""
    return _version_string().decode()


def cpu_isa():
    """The ISA the kernels run on here: "avx512", "avx2", "neon" or "scalar"."""
    return _cpu_isa().decode()




def _optional_fn(name, restype, *argtypes):
    """A function a library of another version may lack: None then."""
    try:
        return _fn(name, restype, *argtypes)
    except AttributeError:
        return None



# Named cache presets (the CLI's --cache-preset): absent from libraries built before them.
_cache_config_preset = _optional_fn(
    "kvq_cache_config_preset",
    _status,
    ctypes.POINTER(_CacheConfig),
    ctypes.c_char_p,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_char_p,
    _size,
)
_cache_preset_name = _optional_fn("kvq_cache_preset_name", ctypes.c_char_p, _size)
_cache_config_parse = _optional_fn(
    "kvq_cache_config_parse",
    _status,
    ctypes.c_char_p,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.POINTER(_CacheConfig),
    ctypes.c_char_p,
    _size,
)
# A preset's per-layer plan (layer, n_layers): absent from libraries built before it.
_cache_config_parse_layer = _optional_fn(
    "kvq_cache_config_parse_layer",
    _status,
    ctypes.c_char_p,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.POINTER(_CacheConfig),
    ctypes.c_char_p,
    _size,
)


class _CudaAttnDesc(ctypes.Structure):
    """Mirror of kvq_cuda_attn_desc."""

    _fields_ = [
        ("batch", ctypes.c_uint32),
        ("n_q_heads", ctypes.c_uint32),
        ("n_kv_heads", ctypes.c_uint32),
        ("head_dim", ctypes.c_uint32),
        ("capacity", ctypes.c_uint32),
        ("max_len", ctypes.c_uint32),
        ("scale", ctypes.c_float),
        ("q_dtype", ctypes.c_int),
        ("flags", ctypes.c_uint32),
    ]


_cuda_available = _fn("kvq_cuda_available", _status, ctypes.POINTER(ctypes.c_int))
_cuda_quantizer_create = _fn("kvq_cuda_quantizer_create", _status, _vp, _pvp)
_cuda_quantizer_free = _fn("kvq_cuda_quantizer_free", None, _vp)
_cuda_encode = _fn("kvq_cuda_encode", _status, _vp, ctypes.c_int, _vp, _size, _vp, _vp)
_cuda_attend_workspace = _fn(
    "kvq_cuda_attend_workspace", _status, _vp, _vp, ctypes.POINTER(_CudaAttnDesc), ctypes.POINTER(_size)
)
_cuda_attend = _fn(
    "kvq_cuda_attend",
    _status,
    _vp,
    _vp,
    ctypes.POINTER(_CudaAttnDesc),
    _vp,
    _vp,
    _vp,
    _vp,
    _vp,
    _size,
    _vp,
    _vp,
)


class _CudaChanLayout(ctypes.Structure):
    """Mirror of kvq_cuda_chan_layout."""

    _fields_ = [(n, ctypes.c_uint64) for n in ("bytes", "heads", "keys", "values", "exact_k", "exact_v")] + [
        (n, ctypes.c_uint32)
        for n in ("head_bytes", "key_block", "value_code", "exact_rows", "chunk_tokens", "window", "n_sink", "bits")
    ]


# Channel keys (the presets) on the GPU: absent from libraries built before them.
_cuda_chan_create = _optional_fn("kvq_cuda_chan_create", _status, ctypes.POINTER(_CacheConfig), _pvp)
_cuda_chan_free = _optional_fn("kvq_cuda_chan_free", None, _vp)
_cuda_chan_layout_of = _optional_fn(
    "kvq_cuda_chan_layout_of", _status, _vp, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(_CudaChanLayout)
)
_cuda_chan_append_workspace = _optional_fn(
    "kvq_cuda_chan_append_workspace", _status, _vp, ctypes.c_uint32, ctypes.POINTER(_size)
)
_cuda_chan_append = _optional_fn(
    "kvq_cuda_chan_append", _status, _vp, ctypes.c_int, _vp, _vp, ctypes.c_uint32, ctypes.c_uint32, _vp, _vp,
    _vp, _size, _vp,
)
# Many tokens per sequence in one call (the prompt): absent from libraries built before it.
_cuda_chan_append_n_workspace = _optional_fn(
    "kvq_cuda_chan_append_n_workspace", _status, _vp, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(_size)
)
_cuda_chan_append_n = _optional_fn(
    "kvq_cuda_chan_append_n", _status, _vp, ctypes.c_int, _vp, _vp, ctypes.POINTER(ctypes.c_uint64),
    ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, _vp, _vp, _vp, _size, _vp,
)
# The queries before an append (channel bits weighed by them): absent from older libraries.
_cuda_chan_observe_queries = _optional_fn(
    "kvq_cuda_chan_observe_queries", _status, _vp, ctypes.c_int, _vp, ctypes.POINTER(ctypes.c_uint64),
    ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, _vp, _vp, _vp,
)
_cuda_chan_attend_workspace = _optional_fn(
    "kvq_cuda_chan_attend_workspace", _status, _vp, ctypes.POINTER(_CudaAttnDesc), ctypes.POINTER(_size)
)
_cuda_chan_attend = _optional_fn(
    "kvq_cuda_chan_attend", _status, _vp, ctypes.POINTER(_CudaAttnDesc), _vp, _vp, _vp, _vp, _size, _vp, _vp
)


def cuda_devices():
    """How many CUDA devices libkvq can use here (0 without a driver, a GPU, or a build
    with CUDA)."""
    n = ctypes.c_int(0)
    st = _cuda_available(ctypes.byref(n))
    return int(n.value) if st == 0 else 0


# ----------------------------------------------------------------------- locks


class _Guard:
    """Serializes the calls on one C object: `with g.exclusive():` for calls that change
    it (or use scratch inside it), `with g.shared():` for calls the header says may run
    concurrently with each other (but not with a change). ctypes drops the GIL during a
    call, so without this two Python threads would be inside the same object at once."""

    __slots__ = ("_cond", "_readers", "_writer")

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False

    class _Ctx:
        __slots__ = ("enter", "exit")

        def __init__(self, enter, exit_):
            self.enter = enter
            self.exit = exit_

        def __enter__(self):
            self.enter()

        def __exit__(self, *exc):
            self.exit()

    def _acquire_shared(self):
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def _release_shared(self):
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def _acquire_exclusive(self):
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True

    def _release_exclusive(self):
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    def shared(self):
        return _Guard._Ctx(self._acquire_shared, self._release_shared)

    def exclusive(self):
        return _Guard._Ctx(self._acquire_exclusive, self._release_exclusive)


# ---------------------------------------------------------------- array checks


def _is_torch(x):
    return type(x).__module__.split(".", 1)[0] == "torch" and hasattr(x, "detach")


def _as_float32(a):
    """a (numpy array, anything numpy takes, or a torch tensor of any float dtype on any
    device, bf16 included) as a C-contiguous float32 numpy array, and a function that
    turns a float32 numpy result back into the caller's kind: a torch tensor of a's
    dtype on a's device, or the numpy array itself."""
    if _is_torch(a):
        import torch

        t = a.detach()
        dtype, device = t.dtype, t.device
        arr = t.to(device="cpu", dtype=torch.float32).contiguous().numpy()
        if not dtype.is_floating_point:
            dtype = torch.float32

        def back(out):
            return torch.from_numpy(out).to(device=device, dtype=dtype)

        return arr, back
    arr = np.asarray(a)
    # numpy has no bfloat16 of its own: ml_dtypes' (as JAX uses) converts by astype
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr, lambda out: out


def _floats(a, what, trailing):
    """a as a C-contiguous float32 array whose last dims are `trailing`; returns
    (array, leading count, was_single) where was_single means no leading dim."""
    arr, _ = _as_float32(a)
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


_last_error = _optional_fn("kvq_last_error", ctypes.c_char_p)
_clear_last_error = _optional_fn("kvq_clear_last_error", None)
if _clear_last_error is None:
    _last_error = None


def last_error():
    """The library's detail line for the last failed call on this thread ("" if none)."""
    if _last_error is None:
        return ""
    last = _last_error()
    return last.decode(errors="replace") if last else ""
