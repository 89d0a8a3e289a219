"""Digests that identify a model: its architecture, and the exact bytes of chosen weights."""

from __future__ import annotations

import hashlib

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


def weights_digest(model, names: list[str] | None = None) -> str:
    """Architecture plus the bytes of the named state-dict entries (all of them when names is None)."""
    state = model.state_dict()
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(architecture_digest(model).encode())
    for name in sorted(state) if names is None else names:
        hasher.update(name.encode())
        _feed(hasher, state[name])
    return hasher.hexdigest()
