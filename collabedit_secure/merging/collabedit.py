"""The CollabEdit merge: one regularised least-squares solve per layer on the two secure sums.

    S_KK = sum_i K_i K_i^T,   S_RK = sum_i R_i K_i^T
    Delta W = S_RK (lambda C0 + C_acc + S_KK)^-1

The coordinator needs nothing else: no party's individual Delta_i, keys or residuals. C_acc is the
dynamic covariance, the lambda-weighted S_KK of earlier rounds, which keeps later rounds from
overwriting what earlier rounds wrote (knowledge forgetting).
"""

from __future__ import annotations

import numpy as np
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


def merge_layer(c0, module: str, lam: float, s_kk_upper: np.ndarray, s_rk: np.ndarray, c_acc=None,
                device: str | torch.device = "cpu") -> np.ndarray:
    """Delta W of one layer (float64 numpy) as the coordinator and an HE party compute it, with
    bounded memory: C0 comes from `c0` (a mapping, LazyC0 included) one module at a time; C_acc is a
    symmetric matrix or file, packed or full (blockio.upper_rows); s_rk may be overwritten.

    CPU: lambda C0 + C_acc is assembled in one d x d buffer (C0 read into it, C_acc added a block of
    rows at a time), then the kernel adds S_KK and solves in place: the operations and order of
    collabedit_merge, so the same bits, without a second d x d matrix or a copy of S_RK.
    Elsewhere: the compiled solve on that device, operands moved there once."""
    from ..blockio import add_upper, c0_into, packed_blocks

    d = s_rk.shape[1]
    device = torch.device(device)
    if device.type != "cpu":
        packed_acc = None if c_acc is None else torch.from_numpy(np.concatenate(list(packed_blocks(c_acc, d))))
        on = lambda array: torch.as_tensor(np.ascontiguousarray(array)).to(device)  # noqa: E731
        delta = collabedit_merge(c0[module].to(device), lam, on(s_kk_upper), on(s_rk),
                                 None if packed_acc is None else packed_acc.to(device), layer=module)
        return delta.to(torch.float64).cpu().numpy()
    system = c0_into(c0, module, np.empty((d, d)))
    if c_acc is not None:
        add_upper(system, c_acc, scale=lam)
        lam = 1.0  # already applied: 1.0 * x is exact
    return kernels.regularized_solve(system, lam, s_kk_upper, np.ascontiguousarray(s_rk, dtype=np.float64),
                                     layer=module, overwrite=True)


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
