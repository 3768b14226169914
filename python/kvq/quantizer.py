"""kvq.Quantizer - one quantizer (a method, its parameters, a vector length, a seed)
over float vectors: encode to codes, decode, inner-product estimates from the codes."""

import ctypes
import os

import numpy as np

from . import _native as N
from ._native import _bp, _check, _fp


class Quantizer:
    """One quantizer: a method and its parameters (a config string), a vector length
    and a seed. Same seed, same codes, on every CPU.

    Threads: encode, decode, score, score_bound and save may run at once from many
    threads on one Quantizer (the library reads it only); fit and close wait for them
    and run alone."""

    def __init__(self, spec, dim, seed=None, _handle=None):
        self._h = None
        self._guard = N._Guard()
        if _handle is None:
            dim = int(dim)
            if dim <= 0 or dim >= 2**32:
                raise ValueError("dim must be a positive 32-bit integer, got %d" % dim)
            cfg = N._parse(spec, dim)
            if seed is not None:
                cfg.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
            h = ctypes.c_void_p()
            _check(N._quantizer_create(ctypes.byref(cfg), ctypes.byref(h)), "kvq_quantizer_create")
            _handle = h
        self._h = _handle
        cfg = N._Config()
        _check(N._quantizer_config(self._h, ctypes.byref(cfg)), "kvq_quantizer_config")
        self.dim = int(cfg.dim)
        self.seed = int(cfg.seed)
        buf = ctypes.create_string_buffer(1024)
        _check(N._config_format(ctypes.byref(cfg), buf, len(buf)), "kvq_config_format")
        self.spec = buf.value.decode()
        self.code_size = int(N._code_size(self._h))
        self.shared_size = int(N._shared_size(self._h))

    @classmethod
    def load(cls, path):
        """A quantizer saved by .save() (a safetensors file)."""
        h = ctypes.c_void_p()
        _check(N._quantizer_load(os.fsencode(path), ctypes.byref(h)), "kvq_quantizer_load")
        return cls(None, 0, _handle=h)

    def _handle(self):
        if self._h is None:
            raise ValueError("kvq.Quantizer: used after close()")
        return self._h

    def save(self, path):
        with self._guard.shared():
            _check(N._quantizer_save(self._handle(), os.fsencode(path)), "kvq_quantizer_save")

    def close(self):
        guard = getattr(self, "_guard", None)
        if guard is None:
            return
        with guard.exclusive():
            if self._h is not None:
                N._quantizer_free(self._h)
                self._h = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "kvq.Quantizer(%r, dim=%d, seed=%d)" % (self.spec, self.dim, self.seed)

    def _rows(self, x, what):
        """x of shape (..., dim): float32 rows (n, dim) and the leading shape."""
        arr, back = N._as_float32(x)
        if arr.ndim == 0 or arr.shape[-1] != self.dim:
            raise ValueError("%s: expected shape (..., %d), got %s" % (what, self.dim, arr.shape))
        lead = arr.shape[:-1]
        return arr.reshape(-1, self.dim), lead, back

    def fit(self, x):
        """Calibrate on x (n, dim) for the methods that learn (vecinfer, spectral,
        comm_vq, rabitq with nlist)."""
        arr, n, _ = N._floats(x, "fit", (self.dim,))
        with self._guard.exclusive():
            _check(N._quantizer_fit(self._handle(), _fp(arr), n), "kvq_quantizer_fit")
        return self

    def encode(self, x):
        """(..., dim) floats -> (..., code_size) uint8 codes. x may be a numpy array or a
        torch tensor of float32, float16 or bfloat16 (codes always come back as numpy)."""
        arr, lead, _ = self._rows(x, "encode")
        n = arr.shape[0]
        out = np.empty((n, self.code_size), dtype=np.uint8)
        if n:
            with self._guard.shared():
                _check(N._encode(self._handle(), _fp(arr), n, _bp(out)), "kvq_encode")
        return out.reshape(lead + (self.code_size,))

    def decode(self, codes):
        """(..., code_size) uint8 codes -> (..., dim) float32."""
        arr = np.asarray(codes)
        if arr.dtype != np.uint8:
            raise ValueError("decode: codes must be uint8, got %s" % arr.dtype)
        if arr.ndim == 0 or arr.shape[-1] != self.code_size:
            raise ValueError(
                "decode: codes must have shape (..., %d), got %s" % (self.code_size, arr.shape)
            )
        lead = arr.shape[:-1]
        flat = np.ascontiguousarray(arr).reshape(-1, self.code_size)
        n = flat.shape[0]
        out = np.empty((n, self.dim), dtype=np.float32)
        if n:
            with self._guard.shared():
                _check(N._decode(self._handle(), _bp(flat), n, _fp(out)), "kvq_decode")
        return out.reshape(lead + (self.dim,))

    def score(self, query, codes):
        """Estimates of <query, x_i> for each code: (n,) float32."""
        q, _, qs = N._floats(query, "score query", (self.dim,))
        if not qs:
            raise ValueError("score: query must have shape (%d,)" % self.dim)
        arr, n, single = N._codes(codes, self.code_size, "score")
        out = np.empty(n, dtype=np.float32)
        if n:
            with self._guard.shared():
                _check(N._score(self._handle(), _fp(q), _bp(arr), n, _fp(out)), "kvq_score")
        return out[0] if single else out

    def score_bound(self, query, codes):
        """(scores, err): |<q, x_i> - scores[i]| <= err[i] with the method's
        confidence. KvqError UNSUPPORTED for methods without a bound."""
        q, _, qs = N._floats(query, "score_bound query", (self.dim,))
        if not qs:
            raise ValueError("score_bound: query must have shape (%d,)" % self.dim)
        arr, n, _ = N._codes(codes, self.code_size, "score_bound")
        s = np.empty(n, dtype=np.float32)
        e = np.empty(n, dtype=np.float32)
        if n:
            with self._guard.shared():
                st = N._score_bound(self._handle(), _fp(q), _bp(arr), n, _fp(s), _fp(e))
                _check(st, "kvq_score_bound")
        return s, e
