"""kvq.hf - a Hugging Face transformers Cache whose attention layers hold only kvq
codes (plus the exact window and sinks the config asks for), and the attention function
that reads them, registered with transformers' AttentionInterface as "kvq". Imported
only when used. Needs torch and transformers 5.17 to 5.25 (tested on each release in
that range; others warn at import).

    from kvq.hf import KVQCache
    cache = KVQCache(model, "q4")                           # a preset, or any --cache string
    out = model.generate(**inputs, past_key_values=cache)   # cache=cache from 5.24

KVQCache(model, ...) switches the model to attn_implementation="kvq" (sdpa for every
layer or cache that is not kvq's, so other caches keep working).

Each full-attention and sliding-window layer keeps one kvq_cache (every batch row's KV
heads; sliding layers with the C cache's sliding window): update() quantizes the new
keys and values into it and returns empty placeholders, and the attention function runs
kvq_cache_attend (fused scores, softmax and value sum over the codes) on CPU tensors, so
no decoded copy of the cache is ever built. Chunked-attention, linear-attention and
other layer types are left as transformers makes them (exact_sliding=True leaves the
sliding layers too).

On CUDA tensors, layers whose codes the GPU kernels take (codes alone - no exact window,
sinks, outlier channels, centering or sliding window - in a method the kernels have;
cuda_refusal(config) says why not) keep their codes on the device and attend with
kvq_cuda_attend (one query per row and call: a prompt is attended exactly with sdpa
while its codes are written; several new tokens on a filled cache are appended and
attended one at a time, as if fed one per step). Layers of the presets (channel keys, mse values) run on
kvq_cuda_chan with their exact sinks and newest tokens: chunks are coded on the device,
with the CPU's codes. Other layers, or without a GPU build or a driver, CUDA tensors go
through the CPU path (copied to the host), with a warning.

Not supported: beam search (reorder), cropping (assisted decoding), and left-padded
batches (a padding mask raises): run one sequence per row without padding.
"""

import ctypes
import threading
import warnings

import numpy as np
import torch
import transformers
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import _native as N
from .cache import Cache as _KvqCache
from .cache import _spec_of, cache_config
from .threadpool import ThreadPool

ATTN_IMPLEMENTATION = "kvq"

# The transformers releases kvq.hf is tested on (python/tests/test_hf.py, every release
# from the first to the last): the Cache, layer and attention-interface API it builds on.
TRANSFORMERS_TESTED = ((5, 17), (5, 25))


def _check_transformers_version():
    try:
        have = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    except ValueError:
        return
    lo, hi = TRANSFORMERS_TESTED
    if not lo <= have <= hi:
        warnings.warn("kvq.hf is tested with transformers %d.%d to %d.%d; this is %s"
                      % (lo + hi + (transformers.__version__,)), RuntimeWarning, stacklevel=3)


_check_transformers_version()

__all__ = ["KVQCache", "KVQLayer", "kvq_attention_forward", "register", "cuda_refusal", "ATTN_IMPLEMENTATION"]


try:  # the table of layer kinds and the config reader behind DynamicCache
    from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING
    from transformers.cache_utils import get_layer_types_and_kwargs as _hf_layer_types_and_kwargs
except ImportError:
    DYNAMIC_LAYER_TYPE_MAPPING = {
        "full_attention": DynamicLayer,
        "sliding_attention": DynamicSlidingWindowLayer,
        "chunked_attention": DynamicSlidingWindowLayer,
    }
    _hf_layer_types_and_kwargs = None


def layer_types_and_kwargs(text_config):
    """The decoder's layer kinds and one kwargs dict per layer, as DynamicCache builds its
    layers from them. transformers up to 5.18 returns one dict shared by every layer
    (sliding_window set when any layer slides), later ones a list of per-layer dicts;
    both come out here as a list."""
    if _hf_layer_types_and_kwargs is not None:
        types, kwargs = _hf_layer_types_and_kwargs(text_config)
    else:
        n = text_config.num_hidden_layers
        types = getattr(text_config, "layer_types", None)
        if types is None:
            sliding = getattr(text_config, "sliding_window", None)
            types = ["sliding_attention" if sliding else "full_attention"] * n
        kwargs = {}
        if "sliding_attention" in types:
            kwargs["sliding_window"] = text_config.sliding_window
        if "chunked_attention" in types:
            kwargs["sliding_window"] = text_config.attention_chunk_size
    types = list(types)
    if isinstance(kwargs, dict):
        kwargs = [dict(kwargs) for _ in types]
    if len(kwargs) != len(types):
        raise ValueError("kvq.hf: %d layer kinds but %d layer settings in the model's config"
                         % (len(types), len(kwargs)))
    return types, list(kwargs)


def _token_major(x):
    """[batch, heads, seq, dim] -> (seq, batch * heads, dim), the layout kvq_cache takes."""
    b, h, n, d = x.shape
    return x.permute(2, 0, 1, 3).reshape(n, b * h, d)


def _model_dims(config):
    text = config.get_text_config(decoder=True)
    n_heads = int(text.num_attention_heads)
    n_kv = int(getattr(text, "num_key_value_heads", None) or n_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    return text, n_kv, int(head_dim)


class KVQLayer(CacheLayerMixin):
    """One full-attention layer: a kvq.Cache per batch row (CPU), or device code buffers
    (CUDA). keys/values stay None: nothing decoded is kept."""

    is_sliding = False
    is_croppable = False
    is_compileable = False

    def __init__(self, config, pool=None, use_cuda=True, observe_queries=True, **kwargs):
        super().__init__()
        self._config = config  # a kvq_cache_config for this layer's shape
        self.is_sliding = bool(config.sliding_window)
        self._pool = pool
        self._use_cuda = use_cuda
        self._codes = None  # CPU: one kvq.Cache, the batch rows' KV heads side by side
        self._gpu = None  # CUDA: _GpuCodes
        self._lock = threading.Lock()
        self._pending = None  # CUDA: new tokens for attend() to append one at a time
        # CPU: new tokens for attend() to append after their queries are observed (channel
        # keys weigh their bits by them; kvq_cache_observe_queries)
        self._pending_cpu = None
        self._pending_gpu = None  # GPU: (keys, values, n_past) waiting for their queries
        self._observe = observe_queries
        self.n_tokens = 0
        self.batch_size = None

    # --------------------------------------------------------------- life cycle

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        self.dtype = key_states.dtype
        b, h, _, d = key_states.shape
        self.batch_size = int(b)
        self.n_kv_heads, self.head_dim = int(h), int(d)
        if key_states.is_cuda and self._use_cuda:
            why = cuda_refusal(self._config)
            if why is None:
                gpu_class = _GpuChan if _is_chan(self._config) else _GpuCodes
                self._gpu = gpu_class.try_create(self._config, self.batch_size, key_states.device)
                why = None if self._gpu is not None else "the GPU kernels refused this layer's codes"
            if why is not None:
                _warn_host_path(why)
        if (self.n_kv_heads, self.head_dim) != (self._config.n_kv_heads, self._config.head_dim):
            raise ValueError(
                "kvq.hf: the model gives %d KV heads of %d, its config says %d of %d"
                % (self.n_kv_heads, self.head_dim, self._config.n_kv_heads, self._config.head_dim)
            )
        if self._gpu is None:
            # Rows are whole sequences of one length (padding is refused), so one cache of
            # batch x n_kv_heads heads holds them all: head b*n_kv + h is row b's head h,
            # and query head b*n_q + j falls on it by the usual grouped-query rule. One
            # rotation, one arena and one call per step for the whole batch.
            cfg = N._CacheConfig()
            ctypes.memmove(ctypes.byref(cfg), ctypes.byref(self._config), ctypes.sizeof(cfg))
            cfg.n_kv_heads = self.batch_size * self.n_kv_heads
            self._codes = _KvqCache(0, 0, config=cfg)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if tuple(key_states.shape[:2]) != (self.batch_size, self.n_kv_heads):
            raise ValueError(
                "kvq.hf: keys of shape %s for a cache of batch %d, %d KV heads"
                % (tuple(key_states.shape), self.batch_size, self.n_kv_heads)
            )
        n_new = int(key_states.shape[2])
        with self._lock:
            self._flush_gpu(None)  # an update whose attention never came: append it as is
            if self._gpu is not None and n_new > 1 and self.n_tokens:
                # Several new tokens on a filled GPU cache: the GPU kernels attend one query
                # per sequence, so attend() appends and attends them one at a time (the
                # causal result, the same as feeding them one per step).
                self._pending = (key_states, value_states, self.n_tokens)
                exact = None
            elif self._gpu is not None and self._observe and self._gpu.observing(self.n_tokens):
                # channel keys before their bits are fixed: the append waits for the
                # queries (attend(), or flush_gpu() for a prompt that attends exactly)
                self._pending_gpu = (key_states, value_states, self.n_tokens)
                exact = (key_states, value_states) if n_new > 1 else None
            elif self._gpu is not None:
                exact = self._gpu.append(key_states, value_states, self.n_tokens)
            else:
                exact = None
                self._flush_cpu(None)
                self._pending_cpu = (_token_major(key_states), _token_major(value_states))
            self.n_tokens += n_new
        # Placeholders: the attention function finds the layer through them.
        k = key_states.new_empty((self.batch_size, self.n_kv_heads, 0, self.head_dim))
        v = value_states.new_empty((self.batch_size, self.n_kv_heads, 0, self.head_dim))
        k._kvq_layer = self
        k._kvq_exact = exact
        v._kvq_layer = self
        return k, v

    def attend(self, query, scaling):
        """query [batch, n_q_heads, n_new, head_dim] against everything appended so far;
        returns [batch, n_new, n_q_heads, head_dim] in query's dtype."""
        with self._lock:
            if self._pending is not None:
                k, v, n_past = self._pending
                self._pending = None
                if query.shape[2] != k.shape[2]:
                    raise ValueError("kvq.hf: %d queries for %d new tokens" % (query.shape[2], k.shape[2]))
                outs = []
                for t in range(k.shape[2]):
                    # only channel layers observe, and only while their bits are open
                    if self._observe and self._gpu.observing(n_past + t):
                        self._gpu.observe(query[:, :, t : t + 1], n_past + t)
                    self._gpu.append(k[:, :, t : t + 1], v[:, :, t : t + 1], n_past + t)
                    outs.append(self._gpu.attend(query[:, :, t : t + 1], scaling, n_past + t + 1))
                return torch.cat(outs, dim=1)
            if self._gpu is not None:
                self._flush_gpu(query)
                return self._gpu.attend(query, scaling, self.n_tokens)
            q = _token_major(query)
            self._flush_cpu(q)
            out = self._codes.attend(q, scale=scaling, pool=self._pool)
        b, hq, n, d = query.shape
        return out.reshape(n, b, hq, d).permute(1, 0, 2, 3).contiguous()

    def flush_gpu(self, query):
        with self._lock:
            self._flush_gpu(query)

    def _flush_gpu(self, query):
        """Appends the tokens update() left on the GPU path, after their queries (query
        [batch, n_q_heads, n_new, head_dim]; None: none) are observed."""
        if self._pending_gpu is None:
            return
        k, v, n_past = self._pending_gpu
        self._pending_gpu = None
        if query is not None:
            if query.shape[2] != k.shape[2]:
                raise ValueError("kvq.hf: %d queries for %d new tokens" % (query.shape[2], k.shape[2]))
            self._gpu.observe(query, n_past)
        self._gpu.append(k, v, n_past)

    def _flush_cpu(self, q):
        """Appends the tokens update() left for attend(), after their queries q (when
        there is one a token) are observed."""
        if self._pending_cpu is None:
            return
        k, v = self._pending_cpu
        self._pending_cpu = None
        if self._observe and q is not None and q.shape[0] == k.shape[0]:
            self._codes.observe_queries(q)
        self._codes.append(k, v)

    def get_mask_sizes(self, query_length):
        return self.n_tokens + query_length, 0

    def get_seq_length(self):
        return self.n_tokens

    def get_max_length(self):
        return -1

    def reset(self):
        with self._lock:
            if self._codes is not None:
                self._codes.reset()
            if self._gpu is not None:
                self._gpu.reset()
            self._pending = None
            self._pending_cpu = None
            self._pending_gpu = None
            self.n_tokens = 0

    def crop(self, tokens_to_remove):
        if tokens_to_remove != 0:
            raise NotImplementedError("kvq.hf: a kvq cache cannot be cropped (its codes are append-only)")

    def _unsupported(self, what):
        if self.n_tokens:
            raise NotImplementedError("kvq.hf: %s is not supported on a filled kvq cache" % what)

    def reorder_cache(self, beam_idx):
        self._unsupported("beam search (reorder_cache)")

    def batch_repeat_interleave(self, repeats):
        self._unsupported("batch_repeat_interleave")

    def batch_select_indices(self, indices):
        self._unsupported("batch_select_indices")

    def offload(self):
        pass

    def prefetch(self):
        pass

    def memory(self):
        """Bytes held: kvq_cache_memory's fields."""
        total = {}
        if self._codes is not None:
            total.update(self._codes.memory())
        if self._gpu is not None:
            for k, v in self._gpu.memory().items():
                total[k] = total.get(k, 0) + v
        total["n_tokens"] = self.n_tokens
        return total


class KVQCache(Cache):
    """A transformers Cache whose full-attention layers keep kvq codes.

    model_or_config: a PreTrainedModel (its attention is switched to "kvq") or a config.
    spec: a cache string as the CLI's --cache takes it: a preset name ("q4", "q3", "q2";
    kvq.presets() lists them) or KSPEC[+VSPEC], with "@window=N,sink=N,..." options
    ("q4@window=64", "mse:bits=4+mse:bits=2"). Or preset=, or key_spec= / value_spec=
    (the CLI's --cache-k / --cache-v). window, n_sink, n_outliers and center_keys
    override what the spec sets. n_threads: the CPU attention's thread
    pool (0: one per CPU, 1: the calling thread only). use_cuda: run CUDA tensors on the
    GPU kernels where they apply. exact_sliding: keep sliding-window layers as
    transformers' exact windows instead of kvq codes. observe_queries: show channel keys
    each step's queries before its keys until their bits are fixed (they weigh the
    channels' bits, as the CLI's engine does; on the CPU and the GPU path alike)."""

    def __init__(
        self,
        model_or_config,
        spec=None,
        preset=None,
        key_spec=None,
        value_spec=None,
        window=None,
        n_sink=None,
        n_outliers=None,
        center_keys=None,
        n_threads=0,
        use_cuda=True,
        exact_sliding=False,
        observe_queries=True,
    ):
        config = getattr(model_or_config, "config", model_or_config)
        text, n_kv, head_dim = _model_dims(config)
        # Parsed once, now (a bad spec fails here, not in the middle of generate); every
        # layer and row gets a copy.
        cfg = cache_config(n_kv, head_dim, preset=preset, key_spec=key_spec, value_spec=value_spec,
                           window=window, n_sink=n_sink, n_outliers=n_outliers,
                           center_keys=center_keys, spec=spec)
        self.config = cfg
        self.key_spec = _spec_of(cfg.key)
        self.value_spec = _spec_of(cfg.value)
        self.spec = spec if spec is not None else preset
        self.pool = None if n_threads == 1 else ThreadPool(n_threads)
        layer_types, layer_kwargs = layer_types_and_kwargs(text)
        layers = []
        n_layers = len(layer_types)
        for li, (kind, kw) in enumerate(zip(layer_types, layer_kwargs)):
            # a preset's per-layer plan (some layers a bit more): each layer its own config
            lcfg = cache_config(n_kv, head_dim, preset=preset, key_spec=key_spec, value_spec=value_spec,
                                window=window, n_sink=n_sink, n_outliers=n_outliers,
                                center_keys=center_keys, spec=spec, layer=li,
                                n_layers=n_layers) if spec is not None or preset is not None else cfg
            if kind == "full_attention":
                layers.append(KVQLayer(lcfg, pool=self.pool, use_cuda=use_cuda, observe_queries=observe_queries))
            elif kind == "sliding_attention" and not exact_sliding:
                # the C cache's sliding window: a query at p sees p-W+1..p, as transformers'
                # sliding mask, and chunks no later query can see are freed
                local = N._CacheConfig()
                ctypes.memmove(ctypes.byref(local), ctypes.byref(lcfg), ctypes.sizeof(local))
                local.sliding_window = int(kw["sliding_window"])
                layers.append(KVQLayer(local, pool=self.pool, use_cuda=use_cuda, observe_queries=observe_queries))
            else:
                layers.append(DYNAMIC_LAYER_TYPE_MAPPING[kind](**kw))
        super().__init__(layers=layers)
        register()
        if hasattr(model_or_config, "set_attn_implementation"):
            model_or_config.set_attn_implementation(ATTN_IMPLEMENTATION)

    def __repr__(self):
        return "KVQCache(key_spec=%r, value_spec=%r, layers=%d)" % (
            self.key_spec, self.value_spec, len(self.layers))

    def memory(self):
        """Bytes this cache holds: kvq layers' codes, windows and overheads
        (kvq_cache_memory summed), plus the exact tensors of the other layers
        ("exact_layers"); "total" covers everything. "fp16" is what the same tokens
        would take as fp16 keys and values in the kvq layers."""
        total = {"exact_layers": 0, "fp16": 0}
        for layer in self.layers:
            if isinstance(layer, KVQLayer):
                for k, v in layer.memory().items():
                    if k != "n_tokens":
                        total[k] = total.get(k, 0) + v
                if layer.is_initialized:
                    total["fp16"] += 2 * 2 * layer.batch_size * layer.n_kv_heads * layer.head_dim * layer.n_tokens
            else:
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                    if isinstance(t, torch.Tensor):
                        total["exact_layers"] += t.numel() * t.element_size()
        total["total"] = total.get("total", 0) + total["exact_layers"]
        return total


# ------------------------------------------------------------------ attention


def kvq_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          is_causal=None, **kwargs):
    """The "kvq" attention: layers of a KVQCache attend from their codes; anything else
    (sliding layers, other caches, no cache) goes to transformers' sdpa."""
    layer = getattr(key, "_kvq_layer", None)
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("kvq.hf: attention logit softcapping is not supported")
    if dropout:
        raise NotImplementedError("kvq.hf: attention dropout (training) is not supported")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    exact = getattr(key, "_kvq_exact", None)
    if exact is not None:
        # CUDA prompt: the codes are written (after its queries are observed); its
        # attention is over the exact new keys.
        layer.flush_gpu(query)
        k_new, v_new = exact
        return sdpa_attention_forward(module, query, k_new, v_new, None, dropout=0.0,
                                      scaling=scaling, is_causal=query.shape[2] > 1, **kwargs)
    return layer.attend(query, float(scaling)), None


def kvq_mask(*args, **kwargs):
    """sdpa's masks (the sliding layers use them), refusing padded batches: kvq layers
    attend causally over every token of their row."""
    padding = kwargs.get("attention_mask")
    if padding is not None and padding.dim() == 2 and not bool(padding.all()):
        raise NotImplementedError(
            "kvq.hf: padded batches are not supported (each row must be a whole sequence)"
        )
    return sdpa_mask(*args, **kwargs)


_registered = False


def register():
    """Registers the "kvq" attention and mask functions with transformers (idempotent);
    then from_pretrained(..., attn_implementation="kvq") and
    model.set_attn_implementation("kvq") accept the name."""
    global _registered
    if not _registered:
        AttentionInterface.register(ATTN_IMPLEMENTATION, kvq_attention_forward)
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, kvq_mask)
        _registered = True


# ---------------------------------------------------------------------- CUDA

_CUDA_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


# Methods kvq_cuda_quantizer_create takes (include/kvq.h; it refuses finer cases itself,
# e.g. qjl's projection width or rabitq's bits, and _GpuCodes.try_create catches those).
_GPU_METHODS = ("fp16", "q8_0", "q4_0", "turboquant_mse", "turboquant_rvq", "qjl", "rabitq")


def _chan_refusal(cfg):
    """cuda_refusal for channel keys (the presets q4, q3, q2: kvq_cuda_chan)."""
    why = []
    if cfg.sliding_window:
        why.append("sliding-window layers (exact_sliding=True keeps them as exact windows on the GPU)")
    if cfg.n_outliers:
        why.append("outlier channels with channel keys (this config sets outliers; add @outliers=0)")
    vmethod = _spec_of(cfg.value).split(":")[0]
    if vmethod != "turboquant_mse":
        why.append("the GPU kernels take turboquant_mse values behind channel keys, not %s" % vmethod)
    d = int(cfg.head_dim)
    if d not in (64, 128, 256):
        why.append("the GPU kernels take head dims 64, 128 and 256, not %d" % d)
    if not why and (N._cuda_chan_create is None or N.cuda_devices() == 0):
        why.append("libkvq has no CUDA build or sees no GPU")
    return "; ".join(why) or None


def _is_chan(cfg):
    return _spec_of(cfg.key).split(":")[0] == "channel"


def cuda_refusal(cfg):
    """Why a layer of this kvq_cache_config cannot keep its codes on the GPU (its CUDA
    tensors then go through the CPU path, copied to the host), or None when it can.
    Channel keys (the presets) run with their exact sinks and newest tokens; the other
    methods keep codes only."""
    if _is_chan(cfg):
        return _chan_refusal(cfg)
    why = []
    if cfg.sliding_window:
        why.append("sliding-window layers (exact_sliding=True keeps them as exact windows on the GPU)")
    extras = [name for name, v in (("window", cfg.window), ("sink", cfg.n_sink), ("outliers", cfg.n_outliers),
                                   ("center", cfg.center_keys)) if v]
    if extras:
        why.append("the GPU kernels keep codes only, without the exact window, sinks, outlier channels or "
                   "centered keys (this config sets %s; add @%s to drop them)"
                   % (", ".join(extras), ",".join(e + "=0" for e in extras)))
    for role, q in (("key", cfg.key), ("value", cfg.value)):
        method = _spec_of(q).split(":")[0]
        if method not in _GPU_METHODS:
            why.append("the GPU kernels do not take %s %ss (they take %s)" % (method, role, ", ".join(_GPU_METHODS)))
    d = int(cfg.head_dim)
    if d not in (64, 128, 256):
        why.append("the GPU kernels take head dims 64, 128 and 256, not %d" % d)
    if not why and N.cuda_devices() == 0:
        why.append("libkvq has no CUDA build or sees no GPU")
    return "; ".join(why) or None


_host_path_warned = set()


def _warn_host_path(why):
    if why not in _host_path_warned:
        _host_path_warned.add(why)
        warnings.warn("kvq.hf: CUDA tensors go through the CPU path (copied to the host): " + why,
                      RuntimeWarning, stacklevel=3)


class _GpuLayer:
    """What the two GPU layer kinds share: creation that falls back to the CPU path, growth
    by a quarter at a time, the current stream, and attention of one new token per sequence
    (KVQLayer feeds several new tokens one at a time) into a float32 output."""

    @classmethod
    def try_create(cls, cfg, batch, device):
        try:
            return cls(cfg, batch, device)
        except (N.KvqError, RuntimeError):
            return None  # a method or shape the GPU kernels do not take: the CPU path

    @staticmethod
    def _capacity_for(need, old, unit):
        # an eighth over what is needed, a quarter over the old size, whole units: a prompt
        # leaves room for the next tokens, and held bytes stay near the codes
        cap = max(need + need // 8, old + old // 4, 256)
        return (cap + unit - 1) // unit * unit

    def _stream(self):
        return torch.cuda.current_stream(self.device).cuda_stream

    def attend(self, query, scaling, n_tokens):
        if query.shape[2] != 1:
            raise ValueError("kvq.hf: the GPU kernels attend one new token per sequence")
        q = query.contiguous()
        if q.dtype not in _CUDA_DTYPES:
            q = q.float()
        desc = N._CudaAttnDesc(
            batch=self.batch, n_q_heads=q.shape[1], n_kv_heads=self.n_kv, head_dim=self.head_dim,
            capacity=self.capacity, max_len=n_tokens, scale=scaling, q_dtype=_CUDA_DTYPES[q.dtype], flags=0,
        )
        need = N._size()
        self._attend_workspace(desc, need)
        if self.workspace is None or self.workspace.numel() < need.value:
            self.workspace = torch.empty(max(int(need.value), 1), dtype=torch.uint8, device=self.device)
        out = torch.empty((self.batch, q.shape[1], self.head_dim), dtype=torch.float32, device=self.device)
        self._attend(desc, q, out)
        return out.to(query.dtype)[:, None]  # [batch, 1, n_q_heads, head_dim]

    def reset(self):
        self.seq_lens.zero_()

    def observing(self, n_past):
        """Whether queries shown before appending at n_past would weigh anything."""
        return False


class _GpuCodes(_GpuLayer):
    """A layer's codes on the GPU: [batch][n_kv_heads][capacity][code_size] buffers for
    keys and values (kvq_cuda_attend's layout), grown by a quarter at a time (whole
    256-token blocks). Only a GPU runs it: python/tests/test_hf.py -k cuda."""

    def __init__(self, cfg, batch, device):
        from .quantizer import Quantizer

        why = cuda_refusal(cfg)
        if why is not None:
            raise RuntimeError(why)
        n_kv, head_dim = int(cfg.n_kv_heads), int(cfg.head_dim)
        self.device = device
        self.batch, self.n_kv, self.head_dim = batch, n_kv, head_dim
        self.kq = Quantizer(_spec_of(cfg.key), head_dim)
        self.vq = Quantizer(_spec_of(cfg.value), head_dim)
        self._handles = []
        with torch.cuda.device(device):
            for q in (self.kq, self.vq):
                h = ctypes.c_void_p()
                N._check(N._cuda_quantizer_create(q._h, ctypes.byref(h)), "kvq_cuda_quantizer_create")
                self._handles.append(h)
        self.capacity = 0
        self.k_codes = self.v_codes = None
        self.seq_lens = torch.zeros(batch, dtype=torch.int32, device=device)
        self.workspace = None

    def __del__(self):
        for h in getattr(self, "_handles", []):
            N._cuda_quantizer_free(h)

    def _grow(self, need):
        if need <= self.capacity:
            return
        cap = self._capacity_for(need, self.capacity, 256)
        new = []
        for codes, q in ((self.k_codes, self.kq), (self.v_codes, self.vq)):
            buf = torch.empty((self.batch, self.n_kv, cap, q.code_size), dtype=torch.uint8, device=self.device)
            if codes is not None:
                buf[:, :, : self.capacity].copy_(codes)
            new.append(buf)
        self.k_codes, self.v_codes = new
        self.capacity = cap

    def append(self, k, v, n_past):
        n_new = k.shape[2]
        self._grow(n_past + n_new)
        for x, codes, h, q in ((k, self.k_codes, self._handles[0], self.kq),
                               (v, self.v_codes, self._handles[1], self.vq)):
            x = x.contiguous()
            dtype = _CUDA_DTYPES.get(x.dtype)
            if dtype is None:
                x, dtype = x.float(), 0
            rows = torch.empty((self.batch, self.n_kv, n_new, q.code_size), dtype=torch.uint8, device=self.device)
            st = N._cuda_encode(h, dtype, x.data_ptr(), self.batch * self.n_kv * n_new, rows.data_ptr(),
                                self._stream())
            N._check(st, "kvq_cuda_encode")
            codes[:, :, n_past : n_past + n_new].copy_(rows)
        self.seq_lens.fill_(n_past + n_new)
        return (k, v) if n_new > 1 else None  # the prompt attends over its exact keys

    def _attend_workspace(self, desc, need):
        st = N._cuda_attend_workspace(self._handles[0], self._handles[1], ctypes.byref(desc), ctypes.byref(need))
        N._check(st, "kvq_cuda_attend_workspace")

    def _attend(self, desc, q, out):
        st = N._cuda_attend(self._handles[0], self._handles[1], ctypes.byref(desc), q.data_ptr(),
                            self.k_codes.data_ptr(), self.v_codes.data_ptr(), self.seq_lens.data_ptr(),
                            self.workspace.data_ptr(), self.workspace.numel(), out.data_ptr(), self._stream())
        N._check(st, "kvq_cuda_attend")

    def memory(self):
        kc = self.kq.code_size * self.batch * self.n_kv
        vc = self.vq.code_size * self.batch * self.n_kv
        n = int(self.seq_lens.max().item()) if self.capacity else 0
        held = (kc + vc) * self.capacity
        return {"key_codes": kc * n, "value_codes": vc * n, "window": 0, "outliers": 0,
                "shared": self.kq.shared_size + self.vq.shared_size,
                "overhead": held - (kc + vc) * n, "total": held + self.kq.shared_size + self.vq.shared_size}


class _GpuChan(_GpuLayer):
    """A layer of channel keys (the presets q4, q3, q2) on the GPU: one kvq_cuda_chan
    buffer (kvq_cuda_chan_layout: per-head bits and mean, coded chunks, value codes, the
    exact sinks and newest tokens in fp16), regrown by a quarter at a time (whole chunks).
    A prompt goes in with kvq_cuda_chan_append_n (one call per layer, or per piece of a
    long prompt), a decode step's token with kvq_cuda_chan_append; a chunk is coded on the
    device when it leaves the exact window, with the CPU's codes either way. Attention
    reads sinks, coded chunks and the exact tail."""

    def __init__(self, cfg, batch, device):
        why = cuda_refusal(cfg)
        if why is not None:
            raise RuntimeError(why)
        self.device = device
        self.batch, self.n_kv, self.head_dim = batch, int(cfg.n_kv_heads), int(cfg.head_dim)
        self._cfg = N._CacheConfig()
        ctypes.memmove(ctypes.byref(self._cfg), ctypes.byref(cfg), ctypes.sizeof(self._cfg))
        self._h = ctypes.c_void_p()
        with torch.cuda.device(device):
            N._check(N._cuda_chan_create(ctypes.byref(self._cfg), ctypes.byref(self._h)), "kvq_cuda_chan_create")
        self.capacity = 0
        self.buf = None
        self.layout = None
        self.pos = torch.zeros(batch, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(batch, dtype=torch.int32, device=device)
        need = N._size()
        N._check(N._cuda_chan_append_workspace(self._h, batch, ctypes.byref(need)), "kvq_cuda_chan_append_workspace")
        self.append_ws = torch.empty(max(int(need.value), 16), dtype=torch.uint8, device=device)
        self.workspace = None

    def __del__(self):
        h = getattr(self, "_h", None)
        if h is not None and h.value:
            N._cuda_chan_free(h)

    def _layout(self, cap):
        L = N._CudaChanLayout()
        N._check(N._cuda_chan_layout_of(self._h, self.batch, cap, ctypes.byref(L)), "kvq_cuda_chan_layout_of")
        return L

    def _grow(self, need):
        if need <= self.capacity:
            return
        C = self._layout_chunk()
        cap = self._capacity_for(need, self.capacity, C)
        L = self._layout(cap)
        buf = torch.zeros(int(L.bytes), dtype=torch.uint8, device=self.device)
        if self.buf is not None:
            O, rows = self.layout, self.batch * self.n_kv
            for a, b, n in ((O.heads, L.heads, rows * O.head_bytes), (O.exact_k, L.exact_k, L.exact_v - L.exact_k),
                            (O.exact_v, L.exact_v, L.exact_v - L.exact_k)):
                buf[b : b + n].copy_(self.buf[a : a + n])
            old_c, new_c = self.capacity // C, cap // C
            kb, vc = int(L.key_block), int(L.value_code)
            buf[L.keys : L.keys + rows * new_c * kb].view(rows, new_c, kb)[:, :old_c].copy_(
                self.buf[O.keys : O.keys + rows * old_c * kb].view(rows, old_c, kb))
            buf[L.values : L.values + rows * cap * vc].view(rows, cap, vc)[:, : self.capacity].copy_(
                self.buf[O.values : O.values + rows * self.capacity * vc].view(rows, self.capacity, vc))
        self.buf, self.layout, self.capacity = buf, L, cap

    def _layout_chunk(self):
        return int(self._cfg.chunk_tokens) or 64

    def observing(self, n_past):
        # until chunk 0 is coded (its bits fixed), with a library that takes queries
        return N._cuda_chan_observe_queries is not None and n_past < int(self._cfg.window) + self._layout_chunk()

    def observe(self, query, n_past):
        """Shows the queries [batch, n_q_heads, n, head_dim] of the tokens about to be
        appended at n_past (kvq_cuda_chan_observe_queries): chunk 0's key bits weigh each
        channel by them, as the CPU path's do."""
        if not self.observing(n_past):
            return
        n = int(query.shape[2])
        self._grow(n_past + n)
        q = query if query.stride(3) == 1 else query.contiguous()
        dtype = _CUDA_DTYPES.get(q.dtype)
        if dtype is None:
            q, dtype = q.float(), 0
        strides = (ctypes.c_uint64 * 3)(*(int(x) for x in q.stride()[:3]))
        self.pos.fill_(n_past)
        st = N._cuda_chan_observe_queries(self._h, dtype, q.data_ptr(), strides, self.batch, int(q.shape[1]), n,
                                          self.capacity, self.pos.data_ptr(), self.buf.data_ptr(), self._stream())
        N._check(st, "kvq_cuda_chan_observe_queries")

    def append(self, k, v, n_past):
        n_new = int(k.shape[2])
        self._grow(n_past + n_new)
        dtype = _CUDA_DTYPES.get(k.dtype)
        if dtype is None:
            k, v, dtype = k.float(), v.float(), 0
        if n_new > 1 and N._cuda_chan_append_n is not None:
            self._append_n(k, v, n_past, dtype)
            self.seq_lens.fill_(n_past + n_new)
            return (k, v)  # the prompt attends over its exact keys
        for t in range(n_new):
            kt, vt = k[:, :, t].contiguous(), v[:, :, t].contiguous()
            self.pos.fill_(n_past + t)
            st = N._cuda_chan_append(self._h, dtype, kt.data_ptr(), vt.data_ptr(), self.batch, self.capacity,
                                     self.pos.data_ptr(), self.buf.data_ptr(), self.append_ws.data_ptr(),
                                     self.append_ws.numel(), self._stream())
            N._check(st, "kvq_cuda_chan_append")
        self.seq_lens.fill_(n_past + n_new)
        return (k, v) if n_new > 1 else None  # the prompt attends over its exact keys

    # The most workspace one multi-token append call takes (each token's value round trip
    # and code for every row): a longer prompt goes in pieces, so a 32k-token prompt of 16
    # rows needs no half-gigabyte scratch.
    APPEND_N_BYTES = 32 << 20

    def _append_n(self, k, v, n_past, dtype):
        """All n tokens of k, v [batch, n_kv, n, dim] (any strides with dim contiguous, as
        transformers' transposed projections are) through kvq_cuda_chan_append_n: one call
        per piece of up to APPEND_N_BYTES of workspace."""
        if k.stride(3) != 1:
            k = k.contiguous()
        if v.stride(3) != 1:
            v = v.contiguous()
        n_new = int(k.shape[2])
        one = N._size()
        N._check(N._cuda_chan_append_n_workspace(self._h, self.batch, 1, ctypes.byref(one)),
                 "kvq_cuda_chan_append_n_workspace")
        piece = max(1, min(n_new, self.APPEND_N_BYTES // max(int(one.value), 1)))
        strides = (ctypes.c_uint64 * 6)(*(int(x) for x in k.stride()[:3] + v.stride()[:3]))
        for s in range(0, n_new, piece):
            n = min(piece, n_new - s)
            need = N._size()
            N._check(N._cuda_chan_append_n_workspace(self._h, self.batch, n, ctypes.byref(need)),
                     "kvq_cuda_chan_append_n_workspace")
            # freed at once: the caching allocator hands it out again in stream order
            ws = torch.empty(max(int(need.value), 16), dtype=torch.uint8, device=self.device)
            self.pos.fill_(n_past + s)
            st = N._cuda_chan_append_n(self._h, dtype, k[:, :, s:].data_ptr(), v[:, :, s:].data_ptr(), strides,
                                       self.batch, n, self.capacity, self.pos.data_ptr(), self.buf.data_ptr(),
                                       ws.data_ptr(), ws.numel(), self._stream())
            N._check(st, "kvq_cuda_chan_append_n")

    def _attend_workspace(self, desc, need):
        N._check(N._cuda_chan_attend_workspace(self._h, ctypes.byref(desc), ctypes.byref(need)),
                 "kvq_cuda_chan_attend_workspace")

    def _attend(self, desc, q, out):
        st = N._cuda_chan_attend(self._h, ctypes.byref(desc), q.data_ptr(), self.buf.data_ptr(),
                                 self.seq_lens.data_ptr(), self.workspace.data_ptr(), self.workspace.numel(),
                                 out.data_ptr(), self._stream())
        N._check(st, "kvq_cuda_chan_attend")

    def memory(self):
        if self.buf is None:
            return {"key_codes": 0, "value_codes": 0, "window": 0, "outliers": 0, "shared": 0, "overhead": 0,
                    "total": 0}
        L, rows = self.layout, self.batch * self.n_kv
        n = int(self.seq_lens.max().item())
        C, W = int(L.chunk_tokens), int(L.window)
        nc = (n - W) // C * C if n > W else 0
        key = rows * (nc // C) * int(L.key_block)
        val = rows * nc * int(L.value_code)
        window = 2 * (L.exact_v - L.exact_k)
        return {"key_codes": key, "value_codes": val, "window": int(window), "outliers": 0, "shared": 0,
                "overhead": int(L.bytes) - key - val - int(window), "total": int(L.bytes)}
