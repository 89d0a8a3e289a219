"""Plain torch reference implementations of the compiled kernels.

These define what the kernels compute; the C++ and CUDA versions are tested against them.
"""

from __future__ import annotations

import numpy as np
import torch


class NotPositiveDefiniteError(ValueError):
    """The regularised system lam*C0 + C_acc + S_KK is not positive definite."""


def packed_size(d: int) -> int:
    """Number of entries of the packed upper triangle of a d x d matrix."""
    if d < 0:
        raise ValueError(f"matrix dimension must be >= 0, got {d}")
    return d * (d + 1) // 2


def dim_from_packed(n: int) -> int:
    """Inverse of packed_size; raises if n is not a triangular number."""
    d = int(((8 * n + 1) ** 0.5 - 1) / 2)
    while packed_size(d) < n:
        d += 1
    if packed_size(d) != n:
        raise ValueError(f"packed length {n} is not d*(d+1)/2 for any d")
    return d


def pack_upper(matrix):
    """Row-major upper triangle (i <= j) of a square matrix, as a 1-D array (numpy in, numpy out).
    No index arrays (torch.triu_indices would take 16 bytes per packed entry: 2 GiB at d = 16384):
    numpy copies row by row, torch selects through a boolean mask of d x d bytes, on the matrix's device."""
    if not isinstance(matrix, torch.Tensor):
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"pack_upper needs a square (d, d) matrix, got shape {tuple(matrix.shape)}")
        d = matrix.shape[0]
        out, start = np.empty(packed_size(d), dtype=matrix.dtype), 0
        for i in range(d):
            out[start:start + d - i] = matrix[i, i:]
            start += d - i
        return out
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"pack_upper needs a square (d, d) matrix, got shape {tuple(matrix.shape)}")
    d = matrix.shape[0]
    upper = torch.ones(d, d, dtype=torch.bool, device=matrix.device).triu_()
    return matrix.masked_select(upper)


def unpack_upper(packed, d: int | None = None):
    """Symmetric d x d matrix from its row-major packed upper triangle (numpy in, numpy out)."""
    if not isinstance(packed, torch.Tensor):
        return unpack_upper(torch.tensor(packed), d).numpy()
    if packed.dim() != 1:
        raise ValueError(f"unpack_upper needs a 1-D packed triangle, got shape {tuple(packed.shape)}")
    d = dim_from_packed(packed.numel()) if d is None else d
    if packed_size(d) != packed.numel():
        raise ValueError(f"a packed {d} x {d} triangle has {packed_size(d)} entries, got {packed.numel()}")
    rows, cols = torch.triu_indices(d, d, device=packed.device)
    full = torch.zeros(d, d, dtype=packed.dtype, device=packed.device)
    full[rows, cols] = packed
    full[cols, rows] = packed
    return full


def symmetric_from_upper(operand: torch.Tensor, d: int) -> torch.Tensor:
    """The symmetric d x d matrix an operand's upper triangle (i <= j) defines, full or packed:
    exactly the entries the compiled solves read; the lower triangle is ignored."""
    if operand.dim() == 1:
        return unpack_upper(operand, d)
    upper = torch.ones(d, d, dtype=torch.bool, device=operand.device).triu()
    return torch.where(upper, operand, operand.T)


def covariance_accumulate(acc: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """acc += keys^T keys in float64 (acc d x d, or packed upper triangle); rows with mask False skipped."""
    if mask is not None:
        keys = keys[mask.to(torch.bool)]
    k64 = keys.to(torch.float64)
    update = k64.T @ k64
    if acc.dim() == 1:
        acc += pack_upper(update)
    else:  # the upper triangle plus the update, mirrored: the compiled kernels' contract
        acc.copy_(symmetric_from_upper(acc + update, acc.shape[0]))
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

    c0 is a full matrix; s_kk and c_acc may be full or the packed upper triangle. Like the
    compiled kernels, only the upper triangle of each is read (the lower is taken as its mirror).
    `refine` is accepted for interface parity (the reference factorises in float64, so there is
    nothing to refine).
    """
    del refine
    d = c0.shape[0]
    system = lam * symmetric_from_upper(c0.to(torch.float64), d)
    if c_acc is not None:
        system = system + symmetric_from_upper(c_acc.to(torch.float64), d)
    system = system + symmetric_from_upper(s_kk.to(torch.float64), d)
    where = f" for layer {layer}" if layer else ""
    if not bool(torch.isfinite(system).all()):
        raise ValueError(f"regularised system{where} has NaN or Inf entries")
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        raise NotPositiveDefiniteError(
            f"regularised system{where} is not positive definite (leading minor {int(info)} of {d}); "
            "check lambda, C0 and the uploaded S_KK"
        )
    # Delta W A = S_RK  <=>  A Delta W^T = S_RK^T (A symmetric).
    delta = torch.cholesky_solve(s_rk.to(torch.float64).T, factor).T.contiguous()
    if not bool(torch.isfinite(delta).all()):
        raise NotPositiveDefiniteError(f"regularised system{where} is numerically singular")
    return delta


# ---------------------------------------------------------------------------------------------
# Masking: fixed-point encoding in Z_2^64 plus AES-128-CTR masks (numpy + cryptography).
# The PRG and encoding are defined in collabedit_secure/kernels/__init__.py; this is the
# executable form of that definition and the baseline the compiled kernels must match bit for bit.

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402

DEFAULT_BOUND = 1 << 62
SEED_BYTES = 32
_CHUNK_WORDS = 1 << 17  # 1 MiB of keystream per update_into: fastest chunk size measured here


class FixedPointRangeError(ValueError):
    """A value is NaN/Inf or encodes outside [-bound, bound]; `index` is its flat index."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def _keystream(seed: bytes):
    return Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:32])).encryptor()


def prg_mask(seed: bytes, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """The first n mask words (uint64) of the PRG keyed by a 32-byte seed."""
    out = np.empty(n, dtype=np.uint64) if out is None else out
    if n:
        _keystream(seed).update_into(np.zeros(8 * n, np.uint8), out.view(np.uint8))
    return out


def fixed_point_encode(values: np.ndarray, scale_bits: int, bound: int = DEFAULT_BOUND) -> np.ndarray:
    """round_half_even(v * 2^scale_bits) as two's-complement uint64; refuses NaN/Inf and |x| > bound."""
    flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    scaled = np.rint(flat * float(2**scale_bits))
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(scaled) < 2.0**63)
        ints = np.where(bad, 0, scaled).astype(np.int64)
    bad |= (ints > bound) | (ints < -bound)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise FixedPointRangeError(
            f"value {flat[index]!r} at flat index {index} does not encode within the fixed-point "
            f"bound |x| <= {bound} at scale 2^{scale_bits}",
            index,
        )
    return ints.view(np.uint64)


def mask_encode(values, scale_bits, self_seed, peer_seeds, peer_signs, out=None, bound=None):
    """encode(values) + PRG(self_seed) + Σ sign_p · PRG(peer_seed_p)  (mod 2^64), chunked."""
    bound = DEFAULT_BOUND if bound is None else bound
    encoded = fixed_point_encode(values, scale_bits, bound)
    n = encoded.size
    result = np.empty(n, np.uint64) if out is None else out.reshape(-1)
    result[...] = encoded
    streams = [(_keystream(s), 1) for s in ([self_seed] if self_seed is not None else [])]
    streams += [(_keystream(s), int(sign)) for s, sign in zip(peer_seeds, peer_signs)]
    buf = np.empty(min(n, _CHUNK_WORDS), np.uint64)
    zeros = np.zeros(buf.size * 8, np.uint8)
    for start in range(0, n, _CHUNK_WORDS):
        stop = min(n, start + _CHUNK_WORDS)
        ks, part = buf[: stop - start], result[start:stop]
        for stream, sign in streams:
            stream.update_into(zeros[: ks.size * 8], ks.view(np.uint8))
            np.add(part, ks, out=part) if sign > 0 else np.subtract(part, ks, out=part)
    return result.reshape(np.shape(values)) if out is None else out


def mask_decode(ring_sum, scale_bits: int, n_parties: int) -> np.ndarray:
    """Ring sum as two's-complement int64, scaled back by 2^-scale_bits (float64)."""
    del n_parties  # the bound check lives in the public wrapper
    return np.asarray(ring_sum, dtype=np.uint64).view(np.int64).astype(np.float64) * (2.0**-scale_bits)


def ring_add(a, b, out=None):
    return np.add(np.asarray(a, np.uint64), np.asarray(b, np.uint64), out=out)


def ring_sub(a, b, out=None):
    return np.subtract(np.asarray(a, np.uint64), np.asarray(b, np.uint64), out=out)
