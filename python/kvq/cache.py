"""kvq.Cache - one layer's compressed KV cache (keys and values in, fused attention
out, no decoded copy), built from key/value config strings or a named preset (the
CLI's --cache-preset)."""

import ctypes

import numpy as np

from . import _native as N
from ._native import _check, _fp

DEFAULT_KEY_SPEC = "turboquant_rvq:bits=1,residuals=2"
DEFAULT_VALUE_SPEC = "mse:bits=2"


def presets():
    """The names of the library's cache presets ("q4", "q3", ...), in its table's order;
    [] for a library without presets."""
    if N._cache_preset_name is None:
        return []
    names = []
    while True:
        name = N._cache_preset_name(len(names))
        if not name:
            return names
        names.append(name.decode())


def cache_config(
    n_kv_heads,
    head_dim,
    preset=None,
    key_spec=None,
    value_spec=None,
    window=None,
    n_outliers=None,
    max_tokens=None,
    n_sink=None,
    center_keys=None,
    spec=None,
    sliding_window=None,
    layer=None,
    n_layers=None,
):
    """A kvq_cache_config (the ctypes mirror) from one of: spec, a whole cache spec as
    the CLI's --cache takes it ("q4", "q4@window=64", "mse:bits=4+mse:bits=2@sink=1");
    preset, a preset name; or key_spec and value_spec config strings (defaults:
    DEFAULT_KEY_SPEC, DEFAULT_VALUE_SPEC). Any of the other arguments given overrides the
    value the spec, preset or library default set. layer and n_layers (both or neither):
    the config of that layer of an n_layers-layer model, a preset's per-layer plan
    applied (without them, a preset's layers outside its plan)."""
    n_kv_heads, head_dim = int(n_kv_heads), int(head_dim)
    if n_kv_heads <= 0 or head_dim <= 0:
        raise ValueError("n_kv_heads and head_dim must be positive")
    cfg = N._CacheConfig()
    msg = ctypes.create_string_buffer(256)
    given = [x for x in (spec, preset) if x is not None]
    if len(given) > 1 or (given and (key_spec is not None or value_spec is not None)):
        raise ValueError("give one of spec, preset, or key_spec/value_spec")
    if (layer is None) != (n_layers is None):
        raise ValueError("give both layer and n_layers, or neither")
    if layer is not None:
        layer, n_layers = int(layer), int(n_layers)
        if not 0 <= layer < n_layers < 2**32:
            raise ValueError("layer must be in [0, n_layers)")
        if N._cache_config_parse_layer is None:
            layer = None  # a library without per-layer plans: every layer alike
        elif preset is not None:
            spec, preset = str(preset), None
    if spec is not None and layer is not None:
        st = N._cache_config_parse_layer(
            str(spec).encode(), n_kv_heads, head_dim, layer, n_layers, ctypes.byref(cfg), msg, len(msg)
        )
        _check(st, "kvq_cache_config_parse_layer(%r)" % spec, msg.value.decode(errors="replace"))
    elif spec is not None:
        if N._cache_config_parse is None:
            raise ValueError("this libkvq (%s) takes no cache spec strings" % N.library_path)
        st = N._cache_config_parse(
            str(spec).encode(), n_kv_heads, head_dim, ctypes.byref(cfg), msg, len(msg)
        )
        _check(st, "kvq_cache_config_parse(%r)" % spec, msg.value.decode(errors="replace"))
    elif preset is not None:
        if N._cache_config_preset is None:
            raise ValueError(
                "this libkvq (%s) has no cache presets; give key_spec and value_spec"
                % N.library_path
            )
        st = N._cache_config_preset(
            ctypes.byref(cfg), str(preset).encode(), n_kv_heads, head_dim, msg, len(msg)
        )
        _check(st, "kvq_cache_config_preset(%r)" % preset, msg.value.decode(errors="replace"))
    else:
        key_spec = DEFAULT_KEY_SPEC if key_spec is None else key_spec
        value_spec = DEFAULT_VALUE_SPEC if value_spec is None else value_spec
        if not isinstance(key_spec, str) or not isinstance(value_spec, str):
            raise TypeError("key_spec and value_spec must be config strings such as 'mse:bits=2'")
        st = N._cache_config_init(
            ctypes.byref(cfg), n_kv_heads, head_dim, key_spec.encode(), value_spec.encode(),
            msg, len(msg),
        )
        _check(st, "kvq_cache_config_init(%r, %r)" % (key_spec, value_spec), msg.value.decode())
    for name, value in (
        ("window", window),
        ("n_outliers", n_outliers),
        ("max_tokens", max_tokens),
        ("n_sink", n_sink),
        ("center_keys", center_keys),
        ("sliding_window", sliding_window),
    ):
        if value is not None:
            if int(value) < 0 or int(value) >= 2**32:
                raise ValueError("%s must be a non-negative 32-bit integer" % name)
            setattr(cfg, name, int(value))
    return cfg


def _spec_of(qcfg):
    buf = ctypes.create_string_buffer(1024)
    _check(N._config_format(ctypes.byref(qcfg), buf, len(buf)), "kvq_config_format")
    return buf.value.decode()


class Cache:
    """One layer's compressed KV cache for one sequence: keys and values of shape
    (n_tokens, n_kv_heads, head_dim) go in, attention outputs come out. window recent
    tokens and n_sink first tokens are also kept exact; n_outliers key channels per head
    are kept apart in fp16; center_keys=1 subtracts each head's mean key. Configured by
    spec="q4@window=64" (the CLI's --cache strings), preset="q4" (kvq.presets() lists
    them) or key_spec / value_spec config strings.

    Arrays may be numpy or torch (float32, float16, bfloat16, any device): a torch input
    gives a torch output of its dtype and device. The transformers layout
    [1, heads, seq, head_dim] (4-D, batch 1) is taken too.

    Threads: a Cache serializes its calls (one append, attend, reset or memory at a time);
    share it freely, but calls from several threads take turns."""

    def __init__(
        self,
        n_kv_heads,
        head_dim,
        key_spec=None,
        value_spec=None,
        window=None,
        n_outliers=None,
        max_tokens=None,
        n_sink=None,
        preset=None,
        center_keys=None,
        spec=None,
        config=None,
        sliding_window=None,
    ):
        self._h = None
        self._guard = N._Guard()
        if config is not None:  # a prepared kvq_cache_config (kvq.hf makes one per layer)
            cfg = N._CacheConfig()
            ctypes.memmove(ctypes.byref(cfg), ctypes.byref(config), ctypes.sizeof(cfg))
        else:
            cfg = cache_config(
                n_kv_heads, head_dim, preset, key_spec, value_spec, window, n_outliers,
                max_tokens, n_sink, center_keys, spec, sliding_window,
            )
        self.n_kv_heads = int(cfg.n_kv_heads)
        self.head_dim = int(cfg.head_dim)
        self.key_spec = _spec_of(cfg.key)
        self.value_spec = _spec_of(cfg.value)
        self.window = int(cfg.window)
        self.n_sink = int(cfg.n_sink)
        self.n_outliers = int(cfg.n_outliers)
        self.center_keys = int(cfg.center_keys)
        h = ctypes.c_void_p()
        _check(N._cache_create(ctypes.byref(cfg), ctypes.byref(h)), "kvq_cache_create")
        self._h = h

    def __repr__(self):
        return "kvq.Cache(%d, %d, key_spec=%r, value_spec=%r, window=%d, n_sink=%d)" % (
            self.n_kv_heads, self.head_dim, self.key_spec, self.value_spec, self.window,
            self.n_sink,
        )

    def _handle(self):
        if self._h is None:
            raise ValueError("kvq.Cache: used after close()")
        return self._h

    def close(self):
        guard = getattr(self, "_guard", None)
        if guard is None:
            return
        with guard.exclusive():
            if self._h is not None:
                N._cache_free(self._h)
                self._h = None

    def __del__(self):
        self.close()

    def __len__(self):
        n = N._size()
        with self._guard.exclusive():
            _check(N._cache_length(self._handle(), ctypes.byref(n)), "kvq_cache_length")
        return int(n.value)

    def reset(self):
        with self._guard.exclusive():
            _check(N._cache_reset(self._handle()), "kvq_cache_reset")

    def _tokens(self, x, what):
        """x as float32 (n_tokens, n_kv_heads, head_dim): from that shape, one token
        (n_kv_heads, head_dim), or [1, n_kv_heads, n_tokens, head_dim]."""
        arr, _ = N._as_float32(x)
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(
                    "%s: a kvq.Cache holds one sequence; got batch %d (one Cache per row, "
                    "or kvq.hf.KVQCache for a model)" % (what, arr.shape[0])
                )
            arr = np.ascontiguousarray(arr[0].transpose(1, 0, 2))
        shape = (self.n_kv_heads, self.head_dim)
        arr, n, _ = N._floats(arr, what, shape)
        return arr, n

    def append(self, k, v):
        """Append tokens: k and v of shape (n_tokens, n_kv_heads, head_dim), one token as
        (n_kv_heads, head_dim), or [1, n_kv_heads, n_tokens, head_dim] tensors."""
        ka, nk = self._tokens(k, "append keys")
        va, nv = self._tokens(v, "append values")
        if nk != nv:
            raise ValueError("append: %d key rows but %d value rows" % (nk, nv))
        if nk:
            with self._guard.exclusive():
                _check(N._cache_append(self._handle(), _fp(ka), _fp(va), nk), "kvq_cache_append")

    def _queries(self, q, what):
        """q as attend() takes it: (n_queries, n_q_heads, head_dim), (n_q_heads, head_dim)
        for one, or [1, n_q_heads, n_queries, head_dim]. Returns the C-contiguous float32
        (n_queries, n_q_heads, head_dim) array, the function that turns a result back into
        q's kind, and whether q was the 4-D layout or a single query."""
        qa, back = N._as_float32(q)
        hf_layout = qa.ndim == 4
        if hf_layout:
            if qa.shape[0] != 1:
                raise ValueError("%s: a kvq.Cache holds one sequence; got batch %d" % (what, qa.shape[0]))
            qa = np.ascontiguousarray(qa[0].transpose(1, 0, 2))
        single = qa.ndim == 2
        if single:
            qa = qa[None]
        if qa.ndim != 3 or qa.shape[2] != self.head_dim:
            raise ValueError(
                "%s: q must have shape (n_queries, n_q_heads, %d), got %s" % (what, self.head_dim, np.shape(q))
            )
        n_q_heads = qa.shape[1]
        if n_q_heads == 0 or n_q_heads % self.n_kv_heads:
            raise ValueError(
                "%s: n_q_heads (%d) must be a positive multiple of n_kv_heads (%d)"
                % (what, n_q_heads, self.n_kv_heads)
            )
        return qa, back, hf_layout, single

    def observe_queries(self, q):
        """Channel keys (the presets): the queries of the tokens about to be appended, in
        attend()'s shapes. Until the first chunk is coded they weigh each key channel's
        bits (range times the queries' root mean square); afterwards, and for other key
        methods, a no-op."""
        qa, _, _, _ = self._queries(q, "observe_queries")
        n_queries, n_q_heads = qa.shape[0], qa.shape[1]
        if n_queries:
            with self._guard.exclusive():
                _check(
                    N._cache_observe_queries(self._handle(), _fp(qa), n_q_heads, n_queries),
                    "kvq_cache_observe_queries",
                )

    def attend(self, q, scale=None, pool=None):
        """Causal attention of the newest positions: q of shape
        (n_queries, n_q_heads, head_dim) (or (n_q_heads, head_dim) for one, or
        [1, n_q_heads, n_queries, head_dim]), n_q_heads a multiple of n_kv_heads; returns
        the output in q's shape (and kind). scale defaults to 1/sqrt(head_dim); pool is an
        optional ThreadPool."""
        qa, back, hf_layout, single = self._queries(q, "attend")
        n_queries, n_q_heads = qa.shape[0], qa.shape[1]
        if scale is None:
            scale = 1.0 / np.sqrt(self.head_dim)
        out = np.empty_like(qa)
        if n_queries:
            with self._guard.exclusive():
                self._attend_locked(qa, n_q_heads, n_queries, float(scale), pool, out)
        if hf_layout:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))[None]
        elif single:
            out = out[0]
        return back(out)

    def _attend_locked(self, qa, n_q_heads, n_queries, scale, pool, out):
        if pool is None:
            st = N._cache_attend(self._handle(), _fp(qa), n_q_heads, n_queries, scale, None, _fp(out))
        else:
            with pool._lock:
                st = N._cache_attend(
                    self._handle(), _fp(qa), n_q_heads, n_queries, scale, pool._h, _fp(out)
                )
        _check(st, "kvq_cache_attend")

    def memory(self):
        """Exact bytes held, as a dict: key_codes, value_codes, window, outliers, shared,
        overhead, total, n_tokens."""
        info = N._CacheMemory()
        with self._guard.exclusive():
            _check(N._cache_memory(self._handle(), ctypes.byref(info)), "kvq_cache_memory")
        return {name: int(getattr(info, name)) for name, _ in N._CacheMemory._fields_}
