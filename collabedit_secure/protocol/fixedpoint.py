"""Public fixed-point parameters of a round, and the party-side refusal to send what would overflow.

Encoding (the kernels' definition, collabedit_secure/kernels/__init__.py): a float64 v becomes
x = round_half_to_even(v * 2^f) as a two's-complement int64 in Z_2^64, f = scale_bits. A party
refuses (FixedPointOverflowError) unless every x satisfies |x| <= bound.

Why the bound: the coordinator decodes the ring sum of n uploads as an int64. That is exact only
if the true integer sum lies in [-2^63, 2^63), guaranteed when n * bound < 2^63. We use the largest
such bound, bound = floor((2^63 - 1) / n) (`kernels.safe_bound(n)`), so both sides compute it with
one integer division; the largest float magnitude that encodes is about bound / 2^f ≈ 2^(63-f) / n.

Error budget: v * 2^f is exact in float64 (a power-of-two scaling), so rounding to an integer
costs at most 1/2 unit, i.e. |error| <= 2^-(f+1) per entry per party, and the exact integer sum
of n parties is off by at most n * 2^-(f+1). Decoding converts that integer to float64 (correctly
rounded: a further relative 2^-53 of |sum|) and scales by 2^-f (exact). So

    |decoded - true sum| <= n * 2^-(f+1) + 2^-53 * |true sum|          (sum_error_bound)

Default f = 40 (DEFAULT_SCALE_BITS). MEMIT's S_KK and S_RK entries are float64 sums of products
of hidden activations, at most ~1e6 in magnitude for the models here. With f = 40:
- headroom: max |v| = 2^23 / n ≈ 8.4e6 / n, so |v| up to ~1e6 fits for n <= 8 parties (use
  `scale_bits_for(n, max_abs)` to pick a smaller f for larger federations or statistics);
- precision: 2^-41 ≈ 4.5e-13 absolute per entry per party, i.e. relative 4.5e-13 for entries of
  size 1 and still 4.5e-10 for entries of size 1e-3, inside the 1e-9 collaborative == global bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from collabedit_secure.kernels import safe_bound

DEFAULT_SCALE_BITS = 40
MAX_SCALE_BITS = 62  # the kernels' limit
_CHECK_CHUNK = 1 << 20  # elements per pass of check_encodable: bounded extra memory


class FixedPointOverflowError(ValueError):
    """A value is NaN/Inf or too large to encode for this round; nothing has been sent."""

    def __init__(self, message: str, tensor: str, index: tuple[int, ...], value: float, bound: int):
        super().__init__(message)
        self.tensor, self.index, self.value, self.bound = tensor, index, value, bound


def _check_int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def _largest_float_at_most(integer: int) -> float:
    """The largest float64 <= integer (float() rounds to nearest, which may round up)."""
    as_float = float(integer)
    return as_float if int(as_float) <= integer else math.nextafter(as_float, 0.0)


def max_abs_for(n_parties: int, scale_bits: int = DEFAULT_SCALE_BITS) -> float:
    """Largest float magnitude guaranteed to encode in an n-party round at this scale."""
    n = _check_int(n_parties, "n_parties", 1, 2**63 - 1)
    f = _check_int(scale_bits, "scale_bits", 0, MAX_SCALE_BITS)
    return math.ldexp(_largest_float_at_most(safe_bound(n)), -f)


def sum_error_bound(n_parties: int, scale_bits: int = DEFAULT_SCALE_BITS, abs_sum: float = 0.0) -> float:
    """Bound on |decoded sum - exact sum| for one entry whose exact sum has magnitude abs_sum."""
    n = _check_int(n_parties, "n_parties", 1, 2**63 - 1)
    f = _check_int(scale_bits, "scale_bits", 0, MAX_SCALE_BITS)
    return n * math.ldexp(1.0, -(f + 1)) + math.ldexp(abs(abs_sum), -53)


def scale_bits_for(n_parties: int, max_abs: float) -> int:
    """The largest scale_bits (finest precision) at which |v| <= max_abs encodes for n parties."""
    if not (isinstance(max_abs, (int, float)) and math.isfinite(max_abs) and max_abs >= 0):
        raise ValueError(f"max_abs must be a finite number >= 0, got {max_abs!r}")
    for f in range(MAX_SCALE_BITS, -1, -1):
        if max_abs_for(n_parties, f) >= max_abs:
            return f
    raise ValueError(f"|v| <= {max_abs} cannot be encoded for {n_parties} parties even at scale_bits 0")


@dataclass(frozen=True)
class RoundNumerics:
    """Public fixed-point parameters of a round: every party and the coordinator use the same."""

    n_parties: int
    scale_bits: int = DEFAULT_SCALE_BITS
    bound: int | None = None  # per-party |x| bound on encoded integers; None = safe_bound(n_parties)

    def __post_init__(self) -> None:
        n = _check_int(self.n_parties, "n_parties", 1, 2**63 - 1)
        _check_int(self.scale_bits, "scale_bits", 0, MAX_SCALE_BITS)
        bound = safe_bound(n) if self.bound is None else _check_int(self.bound, "bound", 1, 2**63 - 1)
        if n * bound >= 2**63:  # a smaller bound is allowed, a larger one could wrap the sum
            raise ValueError(f"bound {bound} x {n} parties >= 2^63: the sum could wrap; use <= {safe_bound(n)}")
        object.__setattr__(self, "bound", bound)

    @classmethod
    def for_parties(cls, n_parties: int, scale_bits: int = DEFAULT_SCALE_BITS) -> "RoundNumerics":
        """Parameters for an n-party round with the largest bound whose sum cannot wrap."""
        return cls(n_parties=n_parties, scale_bits=scale_bits)

    @property
    def max_abs(self) -> float:
        """Largest float magnitude guaranteed to encode within `bound`."""
        return math.ldexp(_largest_float_at_most(self.bound), -self.scale_bits)

    def sum_error_bound(self, abs_sum: float = 0.0) -> float:
        """|decoded - exact| bound for an entry of the n-party sum with |exact sum| = abs_sum."""
        return self.n_parties * math.ldexp(1.0, -(self.scale_bits + 1)) + math.ldexp(abs(abs_sum), -53)

    def check_encodable(self, name: str, values: np.ndarray) -> None:
        """Raises FixedPointOverflowError naming the tensor, the first bad index, the value and
        the bound if any value is NaN/Inf or |round(v * 2^f)| > bound. Call before sending."""
        scale = math.ldexp(1.0, self.scale_bits)
        # Encoded values are integer-valued floats, so x <= bound  <=>  x <= largest float <= bound.
        limit = _largest_float_at_most(self.bound)
        if getattr(values, "is_cuda", False):  # a torch CUDA tensor: checked on its GPU, same arithmetic
            self._check_on_gpu(name, values, scale, limit)
            return
        values = np.asarray(values)
        if values.dtype.kind != "f":
            raise TypeError(f"{name} must be a float array, got dtype {values.dtype}")
        flat = values.reshape(-1)
        for start in range(0, flat.size, _CHECK_CHUNK):
            chunk = flat[start : start + _CHECK_CHUNK].astype(np.float64, copy=False)
            with np.errstate(over="ignore", invalid="ignore"):
                bad = ~(np.abs(np.rint(chunk * scale)) <= limit)  # NaN compares False: caught too
            if bad.any():
                self._raise(name, values, start + int(np.flatnonzero(bad)[0]))

    def _check_on_gpu(self, name: str, values, scale: float, limit: float) -> None:
        import torch

        if not values.is_floating_point():
            raise TypeError(f"{name} must be a float array, got dtype {values.dtype}")
        flat = values.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHECK_CHUNK):
            chunk = flat[start : start + _CHECK_CHUNK].to(torch.float64)
            bad = ~(torch.abs(torch.round(chunk * scale)) <= limit)  # round half to even, as np.rint
            if bool(bad.any()):
                self._raise(name, values.detach(), start + int(torch.nonzero(bad)[0, 0]))

    def _raise(self, name: str, values: np.ndarray, flat_index: int) -> None:
        value = float(values.reshape(-1)[flat_index])
        index = tuple(int(i) for i in np.unravel_index(flat_index, values.shape)) if values.ndim else ()
        if math.isfinite(value):
            problem = f"exceeds the largest encodable magnitude {self.max_abs:.6g}"
        else:
            problem = "is not finite"
        raise FixedPointOverflowError(
            f"tensor {name!r}: value {value!r} at index {index} {problem} "
            f"(per-party bound {self.bound} at scale 2^{self.scale_bits} for {self.n_parties} parties); "
            "nothing was sent. Normalise the statistics or start the round with a smaller scale_bits "
            "(see scale_bits_for).",
            name, index, value, self.bound,
        )
