"""What a party and the coordinator compare before a round: the same base model, hparams and C0.

Each fingerprint is a sha256 hex string (64 characters), so that clients in any language can show
and compare them. The coordinator never needs the model's weights: its configuration names the
model fingerprint, or computes it from the embedded default, which is public.
"""

from __future__ import annotations

import hashlib
import json

import torch

from ..editing.fingerprint import weights_digest


def model_fingerprint(model) -> str:
    """Every weight's bytes and the architecture (the base every party must start from)."""
    return hashlib.sha256(b"collabedit.v1/model\0" + weights_digest(model).encode()).hexdigest()


def hparams_fingerprint(hparams) -> str:
    """The canonical JSON of the editing hyperparameters (layers, lambda, compute_z settings...)."""
    blob = json.dumps(hparams.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(b"collabedit.v1/hparams\0" + blob.encode()).hexdigest()


def c0_fingerprint(c0: dict[str, torch.Tensor]) -> str:
    """The C0 matrices (float64, row-major) keyed by module name, in name order."""
    hasher = hashlib.sha256(b"collabedit.v1/c0\0")
    for name in sorted(c0):
        matrix = c0[name].detach().to(torch.float64).contiguous().cpu()
        hasher.update(name.encode() + b"\0" + repr(tuple(matrix.shape)).encode())
        hasher.update(matrix.numpy())  # the buffer itself: no copy of a d x d matrix
    return hasher.hexdigest()
