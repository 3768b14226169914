"""kvq.ThreadPool - a fixed pool of worker threads for Cache.attend and Index.search."""

import ctypes

from . import _native as N
from ._native import _check


class ThreadPool:
    """A fixed pool of worker threads (n_threads=0: one per CPU). A pool runs one job at
    a time: calls that share it from several Python threads take turns (its lock)."""

    def __init__(self, n_threads=0):
        self._h = None
        self._lock = N.threading.Lock()
        h = ctypes.c_void_p()
        _check(N._threadpool_create(int(n_threads), ctypes.byref(h)), "kvq_threadpool_create")
        self._h = h

    @property
    def size(self):
        return int(N._threadpool_size(self._h))

    def close(self):
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            if self._h is not None:
                N._threadpool_free(self._h)
                self._h = None

    def __del__(self):
        self.close()
