"""Shamir secret sharing of 32-byte secrets over the prime field GF(p), p = 2^521 - 1.

p is a Mersenne prime larger than 2^256, so a 32-byte secret is one field element (its big-endian
integer) and needs no chunking. split: draw a polynomial f of degree t-1 with f(0) = secret and
the other t-1 coefficients uniform in [0, p); share i is (x = i, y = f(i)) for i = 1..n.
combine: Lagrange interpolation at 0 from t shares,

    f(0) = Σ_i y_i · Π_{j≠i} x_j / (x_j - x_i)   (mod p, division by modular inverse).

Any t shares determine f(0); any t-1 shares are consistent with every secret (perfect secrecy).

Share bytes (70): x as 4 bytes unsigned big-endian (1 <= x < 2^32) || y as 66 bytes unsigned
big-endian (0 <= y < p).

Integrity: Shamir alone does not authenticate shares, and it is malleable: adding δ to share i's
y shifts the reconstructed secret by δ·L_i(0), a shift the tamperer can choose. combine() checks
what it can for free: with more than t shares every extra share must lie on the interpolated
polynomial, and the result must be < 2^256 (which catches random corruption with probability
1 - 2^-265, not a chosen shift). Against deliberate tampering, callers pass `digest` =
secret_digest(secret) published in advance, or, for a key, compare the recovered key's public key
with the advertised one (recovery.recover_mask_private_key).
"""

from __future__ import annotations

import hashlib
import secrets as _secrets
from dataclasses import dataclass
from typing import Any, Sequence

from .encoding import encode_fields

PRIME = 2**521 - 1
SECRET_BYTES = 32
X_BYTES = 4
Y_BYTES = 66  # ceil(521 / 8)
SHARE_BYTES = X_BYTES + Y_BYTES
MAX_SHARES = 2**32 - 1
DIGEST_DOMAIN = "collabedit.v1/shamir-secret-digest"


class ShamirError(ValueError):
    """Bad parameters, malformed or inconsistent shares, or a failed reconstruction check."""


@dataclass(frozen=True)
class Share:
    x: int
    y: int

    def to_bytes(self) -> bytes:
        _check_point(self.x, self.y)
        return self.x.to_bytes(X_BYTES, "big") + self.y.to_bytes(Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Share":
        if not isinstance(data, (bytes, bytearray)):
            raise ShamirError(f"a share is {SHARE_BYTES} bytes, got {type(data).__name__}")
        if len(data) != SHARE_BYTES:
            raise ShamirError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        x, y = int.from_bytes(data[:X_BYTES], "big"), int.from_bytes(data[X_BYTES:], "big")
        _check_point(x, y)
        return cls(x, y)


def _check_point(x: Any, y: Any, prime: int = PRIME) -> None:
    if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= min(MAX_SHARES, prime - 1):
        raise ShamirError(f"share x must be an int in [1, {min(MAX_SHARES, prime - 1)}], got {x!r}")
    if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < prime:
        raise ShamirError("share y must be an int in [0, p)")


def _check_params(n: Any, t: Any, prime: int) -> None:
    for name, value in (("n", n), ("t", t)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ShamirError(f"{name} must be an int, got {value!r}")
    if not 1 <= t <= n <= min(MAX_SHARES, prime - 1):
        raise ShamirError(f"need 1 <= t <= n <= {min(MAX_SHARES, prime - 1)}, got n={n}, t={t}")


def _evaluate(coefficients: Sequence[int], x: int, prime: int) -> int:
    result = 0
    for c in reversed(coefficients):  # Horner
        result = (result * x + c) % prime
    return result


def split_int(secret: int, n: int, t: int, rng: Any = _secrets, prime: int = PRIME) -> list[Share]:
    """Shares of a field element (split() for bytes; exposed for small-field tests)."""
    _check_params(n, t, prime)
    if not 0 <= secret < prime:
        raise ShamirError("secret is not a field element")
    coefficients = [secret] + [rng.randbelow(prime) for _ in range(t - 1)]
    return [Share(x, _evaluate(coefficients, x, prime)) for x in range(1, n + 1)]


def lagrange_at(shares: Sequence[Share], x: int, prime: int = PRIME) -> int:
    """Value at x of the unique polynomial of degree < len(shares) through the shares."""
    total = 0
    for i, share_i in enumerate(shares):
        numerator, denominator = 1, 1
        for j, share_j in enumerate(shares):
            if i != j:
                numerator = numerator * (x - share_j.x) % prime
                denominator = denominator * (share_i.x - share_j.x) % prime
        total = (total + share_i.y * numerator * pow(denominator, -1, prime)) % prime
    return total


def combine_int(shares: Sequence[Share], t: int, prime: int = PRIME) -> int:
    """f(0) from >= t shares; rejects duplicates, bad values and shares off the polynomial."""
    shares = list(shares)
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ShamirError(f"threshold t must be an int >= 1, got {t!r}")
    if len(shares) < t:
        raise ShamirError(f"need at least {t} shares to reconstruct, got {len(shares)}")
    for share in shares:
        if not isinstance(share, Share):
            raise ShamirError(f"expected Share objects, got {type(share).__name__}")
        _check_point(share.x, share.y, prime)
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise ShamirError(f"duplicate share x in {sorted(xs)}")
    shares.sort(key=lambda s: s.x)
    basis, extra = shares[:t], shares[t:]
    for share in extra:  # free consistency check when more than t shares arrived
        if lagrange_at(basis, share.x, prime) != share.y:
            raise ShamirError(f"share x={share.x} is inconsistent with the others (tampered or from another secret)")
    return lagrange_at(basis, 0, prime)


def split(secret: bytes, n: int, t: int, rng: Any = _secrets) -> list[Share]:
    """n shares of a 32-byte secret, any t of which reconstruct it. rng needs randbelow()."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret must be {SECRET_BYTES} bytes")
    return split_int(int.from_bytes(secret, "big"), n, t, rng)


def combine(shares: Sequence[Share], t: int, digest: bytes | None = None) -> bytes:
    """The 32-byte secret from at least t shares (see the module docstring for the checks)."""
    value = combine_int(shares, t)
    if value >= 1 << (8 * SECRET_BYTES):
        raise ShamirError("reconstructed value is not a 32-byte secret: a share is wrong or tampered")
    secret = value.to_bytes(SECRET_BYTES, "big")
    if digest is not None and secret_digest(secret) != digest:
        raise ShamirError("reconstructed secret does not match its digest: a share is wrong or tampered")
    return secret


def secret_digest(secret: bytes) -> bytes:
    """SHA-256(encode_fields("collabedit.v1/shamir-secret-digest", secret)): a public check value."""
    return hashlib.sha256(encode_fields(DIGEST_DOMAIN, secret)).digest()
