"""Digests that identify a model (its architecture, config and the exact bytes of chosen weights) and a tokenizer."""

from __future__ import annotations

import hashlib
import json

import torch


def _feed(hasher, tensor: torch.Tensor) -> None:
    data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy()
    hasher.update(memoryview(data))


def architecture_digest(model) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(str(getattr(model.config, "model_type", type(model).__name__)).encode())
    for name, tensor in model.state_dict().items():
        hasher.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return hasher.hexdigest()


def layout_digest(model) -> str:
    """Model type, parameter names and shapes, not dtypes: one checkpoint in any precision."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(str(getattr(model.config, "model_type", type(model).__name__)).encode())
    for name, tensor in model.state_dict().items():
        hasher.update(f"{name}:{tuple(tensor.shape)};".encode())
    return hasher.hexdigest()


def weights_digest(model, names: list[str] | None = None) -> str:
    """Architecture plus the bytes of the named state-dict entries (all of them when names is None)."""
    state = model.state_dict()
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(architecture_digest(model).encode())
    for name in sorted(state) if names is None else names:
        hasher.update(name.encode())
        _feed(hasher, state[name])
    return hasher.hexdigest()


# Config fields that name, version or run a model without changing what it computes.
_CONFIG_BOOKKEEPING = {"transformers_version", "dtype", "torch_dtype", "use_cache", "architectures",
                       "output_attentions", "output_hidden_states", "return_dict"}


def config_digest(model) -> str:
    """The config fields that change the maths (activation, norm epsilon, rope settings, ...): the
    same weights under another config compute other activations."""
    fields = {k: v for k, v in model.config.to_diff_dict().items()
              if k not in _CONFIG_BOOKKEEPING and not k.startswith("_")}
    return hashlib.blake2b(json.dumps(fields, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def tokenizer_digest(tok) -> str:
    """What turns text into ids: the fast tokenizer's model, normalizer, pre- and post-processing
    (BOS/EOS insertion) and added tokens; not its padding or truncation state, which every call resets."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        described = {k: spec.get(k) for k in ("model", "normalizer", "pre_tokenizer", "post_processor", "added_tokens")}
    else:  # a slow (Python) tokenizer
        described = {"class": type(tok).__name__, "vocab": sorted(tok.get_vocab().items()),
                     "special": tok.special_tokens_map, "ids": tok("a b").input_ids}
    return hashlib.blake2b(json.dumps(described, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()
