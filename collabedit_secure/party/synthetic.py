"""Synthetic federations on disk, for parties that run `statistics: synthetic:<npz>` (SyntheticEngine).

What a synthetic federation shares (the same files at the coordinator and at every party, so that
the fingerprints agree): an hparams file naming the edited layers, and a C0 directory in MEMIT's
layout. Each party then has its own npz of S_KK and S_RK per layer (`write_synthetic_stats` in
engine.py). The protocol tests and `collabedit bench privacy` build their federations with these.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from collabedit_secure.editing.covariance import SecondMoment, export_memit_stats
from collabedit_secure.editing.hparams import MemitHparams

MODULE = "transformer.h.{}.mlp.c_proj"  # GPT-2's MLP output projection, MEMIT's rewrite module
MODEL_FINGERPRINT = "ab" * 32  # what every synthetic party reports as its model's fingerprint


def write_hparams(folder: str | Path, layers, base: str = "default-world", **fields) -> Path:
    """folder/hparams.yaml: the builtin `base` hparams editing `layers`, with `fields` replaced."""
    hparams = dataclasses.replace(MemitHparams.builtin(base), layers=[int(layer) for layer in layers], **fields)
    path = Path(folder) / "hparams.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    hparams.to_yaml(path)
    return path


def write_c0(folder: str | Path, c0: dict[int, np.ndarray], count: int = 10, n_samples: int = 100000,
             module: str = MODULE) -> Path:
    """folder/c0/: per layer, MEMIT's second-moment file whose moment (mom2 / count) is c0[layer].

    MEMIT stores mom2 as float32: give a C0 that stays positive definite after that rounding.
    """
    out = Path(folder) / "c0"
    for layer, moment in c0.items():
        mom2 = torch.tensor(np.asarray(moment, dtype=np.float64) * count)
        export_memit_stats(SecondMoment(mom2, count), out / f"{module.format(layer)}_float32_mom2_{n_samples}.npz")
    return out


def positive_definite_c0(d: int, rng: np.random.Generator, rank: int = 16) -> np.ndarray:
    """A well-conditioned positive-definite d x d matrix: a positive diagonal plus a low-rank PSD term.

    Its eigenvalues lie in [0.5, 1.5 + rank-term], so float32 storage keeps it positive definite; it
    costs O(d^2 rank), not the O(d^3) of a dense random Gram matrix."""
    b = rng.standard_normal((d, rank)) / np.sqrt(rank)
    return np.diag(rng.uniform(0.5, 1.5, d)) + b @ b.T


def low_rank_statistics(d_in: int, d_out: int, rng: np.random.Generator, rank: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One party's (S_KK = K Kᵀ, S_RK = R Kᵀ) from `rank` random keys and residuals.

    K and R have entries of variance 1/rank, so S_KK's diagonal is about 1 and every entry stays far
    inside the fixed-point bound ((2^63 - 1) / n / 2^scale_bits, about 1e6 for 8 parties at 40 bits)."""
    k = rng.standard_normal((d_in, rank)) / np.sqrt(rank)
    r = rng.standard_normal((d_out, rank)) / np.sqrt(rank)
    return k @ k.T, r @ k.T
