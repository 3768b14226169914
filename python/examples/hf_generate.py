"""hf_generate.py - kvq as a transformers cache: greedy generation on a tiny randomly
initialised Llama (no download) through a KVQCache, next to transformers' DynamicCache,
with the memory each holds. For a real model, load it with from_pretrained instead.
Needs torch and transformers >= 5. Run: python hf_generate.py"""

import inspect

import torch
import transformers
from transformers import DynamicCache

from kvq.hf import KVQCache

config = transformers.LlamaConfig(
    vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
)
torch.manual_seed(0)
model = transformers.LlamaForCausalLM(config).eval()
ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(1))

# transformers 5.24 and later call it cache=; earlier versions past_key_values=
kw = "cache" if "cache" in inspect.signature(transformers.LlamaModel.forward).parameters else "past_key_values"

with torch.no_grad():
    ref_cache = DynamicCache(config=model.config)
    ref = model.generate(ids, max_new_tokens=32, do_sample=False, **{kw: ref_cache})

    # the three lines
    cache = KVQCache(model, key_spec="turboquant_rvq:bits=2,residuals=2", value_spec="mse:bits=4")
    out = model.generate(ids, max_new_tokens=32, do_sample=False, **{kw: cache})

exact = sum(layer.keys.numel() * 2 * 2 for layer in ref_cache.layers)  # fp16 keys and values
mem = cache.memory()
same = int((out[0, 64:] == ref[0, 64:]).sum())
print("kvq cache %s / %s: %d of 32 greedy tokens as DynamicCache's" % (cache.key_spec, cache.value_spec, same))
print("codes %d bytes vs fp16 %d bytes (%.1fx smaller); held in all: %d bytes"
      % (mem["key_codes"] + mem["value_codes"], exact,
         exact / (mem["key_codes"] + mem["value_codes"]), mem["total"]))
assert out.shape == ref.shape
