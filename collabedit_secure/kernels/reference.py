"""Plain torch reference implementations of the compiled kernels.

These define what the kernels compute; the C++ and CUDA versions are tested against them.
"""

from __future__ import annotations

import torch


class NotPositiveDefiniteError(ValueError):
    """The regularised system lam*C0 + C_acc + S_KK is not positive definite."""


def packed_size(d: int) -> int:
    """Number of entries of the packed upper triangle of a d x d matrix."""
    return d * (d + 1) // 2


def dim_from_packed(n: int) -> int:
    """Inverse of packed_size; raises if n is not a triangular number."""
    d = int(((8 * n + 1) ** 0.5 - 1) / 2)
    while packed_size(d) < n:
        d += 1
    if packed_size(d) != n:
        raise ValueError(f"packed length {n} is not d*(d+1)/2 for any d")
    return d


def pack_upper(matrix: torch.Tensor) -> torch.Tensor:
    """Row-major upper triangle (i <= j) of a square matrix, as a 1-D tensor."""
    d = matrix.shape[0]
    rows, cols = torch.triu_indices(d, d, device=matrix.device)
    return matrix[rows, cols].contiguous()


def unpack_upper(packed: torch.Tensor, d: int | None = None) -> torch.Tensor:
    """Symmetric d x d matrix from its row-major packed upper triangle."""
    d = dim_from_packed(packed.numel()) if d is None else d
    rows, cols = torch.triu_indices(d, d, device=packed.device)
    full = torch.zeros(d, d, dtype=packed.dtype, device=packed.device)
    full[rows, cols] = packed
    full[cols, rows] = packed
    return full


def covariance_accumulate(acc: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """acc += keys^T keys in float64 (acc d x d, or packed upper triangle); rows with mask False skipped."""
    if mask is not None:
        keys = keys[mask.to(torch.bool)]
    k64 = keys.to(torch.float64)
    update = k64.T @ k64
    if acc.dim() == 1:
        acc += pack_upper(update)
    else:
        acc += update
    return acc


def regularized_solve(
    c0: torch.Tensor,
    lam: float,
    s_kk: torch.Tensor,
    s_rk: torch.Tensor,
    c_acc: torch.Tensor | None = None,
    refine: bool = True,
    layer: str | None = None,
) -> torch.Tensor:
    """Delta W = s_rk (lam*c0 + c_acc + s_kk)^-1, in float64, by Cholesky.

    s_kk may be the packed upper triangle or a full symmetric matrix. `refine` is accepted for
    interface parity (the reference factorises in float64, so there is nothing to refine).
    """
    del refine
    d = c0.shape[0]
    system = lam * c0.to(torch.float64)
    if c_acc is not None:
        system = system + c_acc.to(torch.float64)
    s_kk = s_kk.to(torch.float64)
    system = system + (unpack_upper(s_kk, d) if s_kk.dim() == 1 else s_kk)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        where = f" for layer {layer}" if layer else ""
        raise NotPositiveDefiniteError(
            f"regularised system{where} is not positive definite (leading minor {int(info)} of {d}); "
            "check lambda, C0 and the uploaded S_KK"
        )
    # Delta W A = S_RK  <=>  A Delta W^T = S_RK^T (A symmetric).
    return torch.cholesky_solve(s_rk.to(torch.float64).T, factor).T.contiguous()
