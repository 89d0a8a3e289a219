"""The CollabEdit merge: one regularised least-squares solve per layer on the two secure sums.

    S_KK = sum_i K_i K_i^T,   S_RK = sum_i R_i K_i^T
    Delta W = S_RK (lambda C0 + C_acc + S_KK)^-1

The coordinator needs nothing else: no party's individual Delta_i, keys or residuals. C_acc is the
dynamic covariance, the lambda-weighted S_KK of earlier rounds, which keeps later rounds from
overwriting what earlier rounds wrote (knowledge forgetting).
"""

from __future__ import annotations

import torch

from .. import kernels


def collabedit_merge(
    c0: torch.Tensor,
    lam: float,
    s_kk: torch.Tensor,
    s_rk: torch.Tensor,
    c_acc: torch.Tensor | None = None,
    layer: str | None = None,
) -> torch.Tensor:
    """Delta W for one layer (d_out x d_in, float64) from the summed statistics (S_KK full or packed)."""
    return kernels.regularized_solve(c0, lam, s_kk, s_rk, c_acc=c_acc, layer=layer)


def check_preservation(c0: torch.Tensor, lam: float, c_acc: torch.Tensor | None = None,
                       layer: str | None = None) -> None:
    """Refuses a preservation term lambda C0 + C_acc that is not positive definite on its own.

    The solve would then lean on the edit's own S_KK to fill C0's null space, leaving the update
    unconstrained in every direction the corpus never reached; checking before any target is
    optimised means a bad statistics file costs seconds, not the edit. Reads the upper triangle,
    as the solve does.
    """
    where = f" for layer {layer}" if layer else ""
    term = lam * c0.to(torch.float64) + (0 if c_acc is None else c_acc.to(torch.float64))
    if not torch.isfinite(term).all():
        raise ValueError(f"lambda C0 + C_acc{where} has NaN or Inf entries")
    term = torch.triu(term) + torch.triu(term, 1).T
    info = int(torch.linalg.cholesky_ex(term).info)
    if info:
        raise kernels.NotPositiveDefiniteError(
            f"lambda C0 + C_acc{where} is not positive definite (leading minor {info} of {term.shape[0]}): "
            "C0 from too few samples, or a corrupt or foreign statistics file; recompute it "
            "(collabedit stats) with more samples")


def update_dynamic_covariance(c_acc: dict[str, torch.Tensor] | None, s_kk: dict[str, torch.Tensor],
                              lam: float | dict[str, float]) -> dict[str, torch.Tensor]:
    """After a round: C_acc + lambda S_KK per layer (a new dict; the inputs are left untouched).

    `lam` is one number, or a number per layer name (hparams with a lambda per layer).
    """
    c_acc = c_acc or {}
    lams = lam if isinstance(lam, dict) else {name: lam for name in s_kk}
    return {name: c_acc.get(name, 0) + lams[name] * kk for name, kk in s_kk.items()}
