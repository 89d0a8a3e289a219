"""Public kernel entry points: check arguments once, then run the selected backend."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from . import _backends, reference
from ._convert import (
    all_finite,
    bad_value_error,
    check_bound,
    check_device_out,
    check_length,
    check_peers,
    check_scale_bits,
    check_seed,
    dtype_name,
    has_negative_strides,
    kind_of,
    like,
    out_words,
    require_dtype,
    to_numpy,
    to_torch,
)
from .reference import DEFAULT_BOUND, NotPositiveDefiniteError, packed_size

KEY_DTYPES = ("float32", "bfloat16", "float64")
MATRIX_DTYPES = ("float32", "float64")
INT_MASK_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64")
PRECISIONS = ("float64", "mixed")
# Longest run of keys the "mixed" CPU path sums in float32 (csrc/covariance.cpp, kMixedBlockRows).
MIXED_BLOCK_ROWS = 1024


def _cuda():
    from . import _cuda as cuda_adapter

    return cuda_adapter


# ---------------------------------------------------------------------------------- covariance


def _check_covariance(acc: Any, keys: Any, mask: Any) -> tuple[int, int]:
    require_dtype(acc, "acc", ("float64",))
    if isinstance(acc, np.ndarray) and not acc.flags.writeable:
        raise ValueError("acc is read-only; covariance_accumulate adds into it in place")
    require_dtype(keys, "keys", KEY_DTYPES)
    if len(keys.shape) != 2:
        raise ValueError(f"keys must be 2-D (n, d), got shape {tuple(keys.shape)}")
    n, d = (int(s) for s in keys.shape)
    if tuple(acc.shape) not in ((d, d), (packed_size(d),)):
        raise ValueError(f"acc has shape {tuple(acc.shape)}; expected ({d}, {d}) or packed ({packed_size(d)},)")
    if mask is not None:
        require_dtype(mask, "mask", INT_MASK_DTYPES)
        if tuple(mask.shape) != (n,):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected ({n},)")
    return n, d


def _host_mask(mask: Any) -> np.ndarray | None:
    if mask is None:
        return None
    view = to_numpy(mask)
    return view if view.dtype in (np.bool_, np.uint8) else view != 0


def covariance_accumulate(acc: Any, keys: Any, mask: Any = None, precision: str = "float64",
                          threads: int | None = None) -> Any:
    """acc += keysᵀ·keys into a float64 accumulator, skipping rows whose mask is False; returns acc.

    acc: float64, d x d (kept symmetric: the lower triangle is rewritten from the upper) or the
    packed row-major upper triangle of length d(d+1)/2. keys: (n, d) float32, bfloat16 or
    float64, any strides. mask: (n,) bool or integer (nonzero keeps the row), or None.

    precision="float64" (default): exact products, float64 round-off only.
    precision="mixed": float32/bfloat16 keys are multiplied in float32 (SSYRK, about twice the
    speed) over blocks of at most MIXED_BLOCK_ROWS = 1024 keys, and each block's result is added
    to the float64 acc, so batches still accumulate in float64 (like MEMIT's own float32
    statistics, but without float32 drift across batches). Per entry the error is at most
    γ_1025·Σ_r |k_ri·k_rj| + float64 round-off, γ_m = m·2^-24/(1 - m·2^-24) ≈ 6.1e-5 (worst case;
    typically ~1e-6 relative). Float64 keys, the reference and the GPU always compute in float64.
    """
    _check_covariance(acc, keys, mask)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    backend = _backends.backend_for(acc, keys, mask)
    if backend == "cuda":
        _backends.check_one_gpu((acc, keys, mask))
        return _cuda().covariance_accumulate(acc, keys, mask)
    if backend == "reference":
        mask_t = None if mask is None else to_torch(mask) != 0
        work = to_torch(acc)
        reference.covariance_accumulate(work, to_torch(keys), mask_t)
        if has_negative_strides(acc):  # to_torch copied it
            acc[...] = work.numpy()
        return acc
    target = to_numpy(acc)
    work = target if target.flags.c_contiguous and target.flags.writeable else np.ascontiguousarray(target)
    bfloat16 = dtype_name(keys) == "bfloat16"
    _backends.cpu_module.covariance_accumulate(work, to_numpy(keys), bfloat16, _host_mask(mask), precision == "mixed",
                                               _budget(threads))
    if work is not target:
        target[...] = work
    return acc


def _budget(threads: int | None) -> int:
    """A per-call thread budget for the CPU kernels (None: the process default). Thread-local in
    the C++: calls from several server threads at once never change each other's threading."""
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return threads


# ---------------------------------------------------------------------------------- solve


def _check_solve(c0: Any, lam: Any, s_kk: Any, s_rk: Any, c_acc: Any, layer: str | None) -> int:
    require_dtype(c0, "c0", MATRIX_DTYPES)
    if len(c0.shape) != 2 or c0.shape[0] != c0.shape[1]:
        raise ValueError(f"c0 must be square (d, d), got shape {tuple(c0.shape)}")
    d = int(c0.shape[0])
    if s_kk is None:
        raise ValueError("s_kk is required (the summed K Kᵀ; zeros where there is none)")
    for name, op in (("s_kk", s_kk), ("c_acc", c_acc)):
        if op is None:
            continue
        require_dtype(op, name, MATRIX_DTYPES)
        if tuple(op.shape) not in ((d, d), (packed_size(d),)):
            raise ValueError(f"{name} has shape {tuple(op.shape)}; expected ({d}, {d}) or packed ({packed_size(d)},)")
    require_dtype(s_rk, "s_rk", MATRIX_DTYPES)
    if len(s_rk.shape) != 2 or s_rk.shape[1] != d:
        raise ValueError(f"s_rk has shape {tuple(s_rk.shape)}; expected (d_out, {d})")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)) or not _finite(lam):
        raise ValueError(f"lam must be a finite real number, got {lam!r}")
    _check_solve_values((("c0", c0), ("s_kk", s_kk), ("c_acc", c_acc), ("s_rk", s_rk)), layer)
    return d


def _finite(number) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an int past float64's range
        return False


def _check_solve_values(operands: tuple[tuple[str, Any], ...], layer: str | None) -> None:
    """Every operand finite, all of it: the kernels read only the upper triangle of c0, s_kk and
    c_acc, so a NaN below the diagonal would otherwise pass on one backend and fail on another.
    One pass over each operand on its own device (about 1 % of the solve at d = 6400)."""
    where = f" for layer {layer}" if layer else ""
    for name, op in operands:
        if op is not None and not all_finite(op):
            raise ValueError(f"{name}{where} has NaN or Inf entries")


def _overwritable(op: Any, name: str) -> np.ndarray:
    """The operand itself, as a numpy view, where the solve may write into it."""
    if not isinstance(op, np.ndarray) or op.dtype != np.float64 or not op.flags.c_contiguous or not op.flags.writeable:
        raise ValueError(f"overwrite=True needs {name} as a writable, C-contiguous float64 numpy array")
    return op


def _host_operand(op: Any) -> np.ndarray | None:
    return None if op is None else np.ascontiguousarray(to_numpy(op))


def regularized_solve(
    c0: Any,
    lam: float,
    s_kk: Any,
    s_rk: Any,
    c_acc: Any = None,
    refine: bool = True,
    layer: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
) -> Any:
    """ΔW = s_rk · (lam·c0 + c_acc + s_kk)⁻¹ in float64, by Cholesky.

    c0: (d, d); s_kk and c_acc: (d, d) or packed upper triangle; s_rk: (d_out, d); float32 or
    float64 each. c0, s_kk and c_acc are symmetric by definition: as in LAPACK, every backend
    reads only their upper triangle (i <= j) and takes the lower as its mirror (checking symmetry
    would cost half a solve at d = 6400). Every operand must be finite, all of it (ValueError
    naming it). Returns a new float64 (d_out, d) array of the same kind as s_rk.
    `refine` lets the GPU factor in float32 and refine in float64 until every right-hand side's
    backward error is at float64 level (LAPACK dsposv's test), factoring in float64 where float32
    cannot factor the system or does not converge; the CPU factorises in float64. Raises
    NotPositiveDefiniteError (naming `layer`) instead of NaN.
    `overwrite` (CPU backend): the system is assembled and factored in c0's own memory and ΔW is
    solved into s_rk's, which is returned; both must be writable, C-contiguous float64 numpy arrays
    (ValueError otherwise) and are destroyed, also when the solve fails. No d x d scratch and no
    copy of s_rk: what lets a server solve d = 16384 in bounded memory. Bit-identical results.
    The CUDA and reference backends ignore it (they copy).
    """
    d = _check_solve(c0, lam, s_kk, s_rk, c_acc, layer)
    backend = _backends.backend_for(c0, s_kk, s_rk, c_acc)
    if backend == "cuda":
        _backends.check_one_gpu((c0, s_kk, s_rk, c_acc))
        return _cuda().regularized_solve(c0, float(lam), s_kk, s_rk, c_acc, refine, layer)
    if backend == "reference":
        acc_t = None if c_acc is None else to_torch(c_acc)
        result = reference.regularized_solve(to_torch(c0), float(lam), to_torch(s_kk), to_torch(s_rk), acc_t, refine, layer)
        return result if isinstance(s_rk, torch.Tensor) else result.numpy()
    system = None
    if overwrite:
        system, x = _overwritable(c0, "c0"), _overwritable(s_rk, "s_rk")
    else:
        x = np.array(to_numpy(s_rk), dtype=np.float64, order="C", copy=True)
    status = _backends.cpu_module.regularized_solve(
        _host_operand(c0), float(lam), _host_operand(c_acc), _host_operand(s_kk), x, _budget(threads), system
    )
    raise_for_solve_status(status, d, layer)
    return like(x, s_rk)


def raise_for_solve_status(status: int, d: int, layer: str | None) -> None:
    """Turns a kernel status code into the error the reference raises."""
    where = f" for layer {layer}" if layer else ""
    if status == 0:
        return
    if status == -1:
        raise ValueError(f"regularised system{where} has NaN or Inf entries")
    if status == -2:
        raise NotPositiveDefiniteError(f"regularised system{where} is numerically singular")
    raise NotPositiveDefiniteError(
        f"regularised system{where} is not positive definite (leading minor {status} of {d}); "
        "check lambda, C0 and the uploaded S_KK"
    )


# ---------------------------------------------------------------------------------- masking


def prg_mask(seed: bytes, n: int, out: Any = None) -> Any:
    """The first n uint64 words of the protocol PRG keyed by a 32-byte seed."""
    seed, n = check_seed(seed, "seed"), check_length(n)
    backend = _backends.backend_for(out)
    if backend == "cuda":
        check_device_out(out, n)
        return _cuda().prg_mask(seed, n, out)
    words = np.empty(n, np.uint64) if out is None else out_words(out, n)
    if backend == "reference":
        reference.prg_mask(seed, n, words)
    else:
        _backends.cpu_module.prg_mask(seed, words)
    return words if out is None else out


def mask_encode(
    values: Any,
    scale_bits: int,
    self_seed: bytes | None,
    peer_seeds: Sequence[bytes],
    peer_signs: Sequence[int],
    out: Any = None,
    bound: int | None = None,
    threads: int | None = None,
) -> Any:
    """Fixed-point encode values and add masks: encode(v) + PRG(self) + Σ sign·PRG(peer) mod 2^64.

    values: float64 (or float32, widened exactly) of any shape; the result is uint64 of the same
    shape and kind (or `out`, filled in place). Raises ValueError naming the first value that is
    NaN/Inf or encodes outside [-bound, bound] (bound defaults to DEFAULT_BOUND = 2^62).
    """
    require_dtype(values, "values", ("float64", "float32"))
    scale_bits, bound = check_scale_bits(scale_bits), check_bound(bound, DEFAULT_BOUND)
    seeds, signs = check_peers(peer_seeds, peer_signs)
    if self_seed is not None:
        seeds, signs = [check_seed(self_seed, "self_seed"), *seeds], [1, *signs]
    backend = _backends.backend_for(values, out)
    if backend == "cuda":
        if out is not None:
            check_device_out(out, math.prod(values.shape), near=values)
        return _cuda().mask_encode(values, scale_bits, seeds, signs, out, bound)
    host = np.ascontiguousarray(to_numpy(values), dtype=np.float64)
    words = np.empty(host.size, np.uint64) if out is None else out_words(out, host.size)
    if backend == "reference":
        try:
            reference.mask_encode(host, scale_bits, None, seeds, signs, out=words, bound=bound)
        except reference.FixedPointRangeError as error:
            raise bad_value_error(host, error.index, scale_bits, bound) from None
    else:
        # A caller's buffer is checked before it is written, so that a refused call leaves it intact.
        bad = -1 if out is None else _backends.cpu_module.first_unencodable(host, scale_bits, bound)
        if bad < 0:
            bad = _backends.cpu_module.mask_encode(host, scale_bits, bound, b"".join(seeds),
                                                   np.array(signs, np.int8), words, _budget(threads))
        if bad >= 0:
            raise bad_value_error(host, bad, scale_bits, bound)
    return like(words.reshape(host.shape), values) if out is None else out


def safe_bound(n_parties: int) -> int:
    """Largest per-party bound whose n-party sum cannot wrap: n·bound < 2^63."""
    return (2**63 - 1) // n_parties


def mask_decode(ring_sum: Any, scale_bits: int, n_parties: int, bound: int | None = None) -> Any:
    """Ring sum (uint64) -> two's-complement int64 -> float64 / 2^scale_bits.

    The sum of n_parties values each within ±bound is exact only if n_parties·bound < 2^63;
    when `bound` is given that is checked (ValueError otherwise).
    """
    require_dtype(ring_sum, "sum", ("uint64",))
    scale_bits = check_scale_bits(scale_bits)
    if isinstance(n_parties, bool) or not isinstance(n_parties, (int, np.integer)) or n_parties < 1:
        raise ValueError(f"n_parties must be an int >= 1, got {n_parties!r}")
    n_parties = int(n_parties)  # a numpy integer would wrap in the product below
    if bound is not None and check_bound(bound, DEFAULT_BOUND) * n_parties >= 2**63:
        raise ValueError(
            f"{n_parties} parties x bound {bound} >= 2^63: the ring sum may have wrapped; "
            f"use a per-party bound <= {safe_bound(n_parties)}"
        )
    backend = _backends.backend_for(ring_sum)
    if backend == "cuda":
        return _cuda().mask_decode(ring_sum, scale_bits)
    host = np.ascontiguousarray(to_numpy(ring_sum))
    if backend == "reference":
        result = reference.mask_decode(host, scale_bits, n_parties)
    else:
        result = np.empty(host.shape, np.float64)
        _backends.cpu_module.mask_decode(host, scale_bits, result)
    return like(result, ring_sum)


def _ring_op(name: str, a: Any, b: Any, out: Any) -> Any:
    require_dtype(a, "a", ("uint64",))
    require_dtype(b, "b", ("uint64",))
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"a has shape {tuple(a.shape)} but b has shape {tuple(b.shape)}")
    backend = _backends.backend_for(a, b, out)
    if backend == "cuda":
        if out is not None:
            check_device_out(out, math.prod(a.shape), near=a)
        return getattr(_cuda(), name)(a, b, out)
    ha, hb = (np.ascontiguousarray(to_numpy(x)) for x in (a, b))
    words = np.empty(ha.shape, np.uint64) if out is None else out_words(out, ha.size).reshape(ha.shape)
    if backend == "reference":
        getattr(reference, name)(ha, hb, out=words)
    else:
        getattr(_backends.cpu_module, name)(ha, hb, words)
    return like(words, a) if out is None else out


def ring_add(a: Any, b: Any, out: Any = None) -> Any:
    """(a + b) mod 2^64, elementwise, uint64."""
    return _ring_op("ring_add", a, b, out)


def ring_sub(a: Any, b: Any, out: Any = None) -> Any:
    """(a - b) mod 2^64, elementwise, uint64."""
    return _ring_op("ring_sub", a, b, out)


__all__ = [
    "covariance_accumulate",
    "regularized_solve",
    "prg_mask",
    "mask_encode",
    "mask_decode",
    "ring_add",
    "ring_sub",
    "safe_bound",
    "raise_for_solve_status",
    "kind_of",
]
