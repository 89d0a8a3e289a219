"""Weight-merging baselines that CollabEdit is compared against.

Each party i edits the same starting model on its own and produces Δ_i, a dict
{layer_name: ΔW tensor}. These rules combine the Δ_i layer by layer, with no knowledge of the
keys, which is why they degrade as edits grow (CollabEdit and global editing do not).

- Task Arithmetic: Σ_i Δ_i.
- Simple Average:  Σ_i Δ_i / n, n the number of parties (the CollabEdit repository divides by a
  hard-coded 10; we use the real count).
- TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean, scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

LayerDeltas = Mapping[str, torch.Tensor]


def check_party_deltas(deltas: Sequence[LayerDeltas]) -> list[str]:
    """Reject empty input, non-finite updates and parties whose layers, shapes, dtypes or devices
    differ; return layer names."""
    if isinstance(deltas, Mapping) or len(deltas) == 0:
        raise ValueError("party deltas must be a non-empty list of {layer_name: tensor} dicts, one per party")
    reference = deltas[0]
    if len(reference) == 0:
        raise ValueError("party 0 has no layers")
    names = list(reference)
    for party, delta in enumerate(deltas):
        if set(delta) != set(names):
            missing = sorted(set(names) - set(delta))
            extra = sorted(set(delta) - set(names))
            raise ValueError(f"party {party} layers differ from party 0: missing {missing}, unexpected {extra}")
        for name in names:
            _check_same_kind(party, name, delta[name], reference[name])
    return names


def _check_same_kind(party: int, name: str, tensor, reference: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"party {party} layer {name!r}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point() or tensor.numel() == 0:
        raise ValueError(f"party {party} layer {name!r}: expected a non-empty floating-point update, got "
                         f"{tensor.dtype} of shape {tuple(tensor.shape)}")
    if tensor.shape != reference.shape:
        raise ValueError(
            f"party {party} layer {name!r}: shape {tuple(tensor.shape)} != party 0's {tuple(reference.shape)}"
        )
    if tensor.dtype != reference.dtype:
        raise ValueError(f"party {party} layer {name!r}: dtype {tensor.dtype} != party 0's {reference.dtype}")
    if tensor.device != reference.device:
        raise ValueError(f"party {party} layer {name!r}: device {tensor.device} != party 0's {reference.device}")
    if not bool(torch.isfinite(tensor).all()):  # TIES would rank a NaN as the largest and drop it unseen
        raise ValueError(f"party {party} layer {name!r}: has NaN or Inf entries")


def task_arithmetic(deltas: Sequence[LayerDeltas]) -> dict[str, torch.Tensor]:
    """Σ_i Δ_i per layer (scaling coefficient 1, as in the CollabEdit comparison)."""
    names = check_party_deltas(deltas)
    return {name: _layer_sum([d[name] for d in deltas]) for name in names}


def simple_average(deltas: Sequence[LayerDeltas]) -> dict[str, torch.Tensor]:
    """Σ_i Δ_i / n per layer, n = number of parties."""
    summed = task_arithmetic(deltas)
    return {name: total / len(deltas) for name, total in summed.items()}


def _layer_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    total = tensors[0].clone()
    for tensor in tensors[1:]:
        total += tensor
    return total


def ties_merge(deltas: Sequence[LayerDeltas], density: float = 0.2, scale: float = 0.4) -> dict[str, torch.Tensor]:
    """TIES-merging per layer: trim each Δ_i to its largest-magnitude entries, elect signs, disjoint mean, scale."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale}")
    names = check_party_deltas(deltas)
    return {name: ties_merge_layer([d[name] for d in deltas], density, scale) for name in names}


def trim_threshold(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Magnitude of the k-th largest entry, k = max(1, floor(density * numel)).

    Trimming keeps every entry with |x| >= this threshold, so entries tied with the k-th largest
    magnitude are all kept (slightly more than k may survive), and entries equal to zero never
    matter because they add nothing. The TIES reference code keeps floor(density*d)+1 entries through
    an off-by-one in its kthvalue index; we keep the documented top fraction instead.
    """
    magnitudes = delta.detach().abs().flatten()
    keep = max(1, int(density * magnitudes.numel()))
    return torch.kthvalue(magnitudes, magnitudes.numel() - keep + 1).values


def _trimmed(delta: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def ties_merge_layer(layer_deltas: list[torch.Tensor], density: float, scale: float) -> torch.Tensor:
    """TIES on one layer, streaming over parties so memory stays O(layer size), not O(n * layer size).

    Elected sign = sign of the summed trimmed values ("mass"). Where the mass is exactly zero the
    entry takes the layer's majority sign (the sign of the sum of elected signs), as TIES does.
    The disjoint mean averages only the non-zero trimmed values whose sign matches the elected one;
    entries where none match become zero.
    """
    thresholds = [trim_threshold(delta, density) for delta in layer_deltas]
    mass = torch.zeros_like(layer_deltas[0])
    for delta, threshold in zip(layer_deltas, thresholds):
        mass += _trimmed(delta, threshold)
    elected = torch.sign(mass)
    majority = torch.sign(elected.sum())
    elected = torch.where(elected == 0, majority, elected)

    agreeing_sum = torch.zeros_like(mass)
    agreeing_count = torch.zeros_like(mass)
    for delta, threshold in zip(layer_deltas, thresholds):
        trimmed = _trimmed(delta, threshold)
        agrees = (torch.sign(trimmed) == elected) & (trimmed != 0)
        agreeing_sum += torch.where(agrees, trimmed, torch.zeros_like(trimmed))
        agreeing_count += agrees.to(mass.dtype)
    return scale * agreeing_sum / agreeing_count.clamp(min=1)
