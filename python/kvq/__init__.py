"""kvq - Python bindings (ctypes over libkvq, numpy arrays or torch tensors in and out).

Key/value-cache and vector compression: TurboQuant, RVQ, QJL, PolarQuant, RaBitQ and
the llama.cpp baselines, each named by a config string such as
"turboquant_rvq:bits=1,residuals=2". No compiled extension: the wheel carries libkvq
itself; KVQ_LIBRARY (a path) overrides it, and a source tree's build/libkvq.so is used
when the package runs from the source tree.

    import numpy as np, kvq
    q = kvq.Quantizer("turboquant_rvq:bits=1,residuals=2", dim=128, seed=7)
    codes = q.encode(x)              # (n, 128) float32 -> (n, q.code_size) uint8
    scores = q.score(query, codes)   # (n,) inner-product estimates from the codes

Also Cache (one layer's compressed KV cache with attention), Index (RaBitQ IVF nearest
neighbours), ThreadPool, and kvq.hf (a transformers Cache; imported only when used).
Errors from the library raise KvqError. Every object may be shared by Python threads.
"""

from ._native import (
    STATUS_NAMES,
    KvqError,
    cpu_isa,
    cuda_devices,
    last_error,
    library_path,
    version,
)
from .cache import Cache, cache_config, presets
from .index import Index
from .quantizer import Quantizer
from .threadpool import ThreadPool

__all__ = [
    "KvqError",
    "STATUS_NAMES",
    "Quantizer",
    "Cache",
    "ThreadPool",
    "Index",
    "cache_config",
    "presets",
    "library_path",
    "version",
    "cpu_isa",
    "cuda_devices",
    "last_error",
]
