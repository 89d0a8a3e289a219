"""Hot paths: covariance accumulation, regularised solve, masking.

Every public function runs on one of three backends, chosen per call (see `backend_for`):
'cuda' (torch CUDA tensors or cupy arrays, no host round trip), 'cpu' (the C++ extension
collabedit_secure._kernels, multithreaded, GIL released) or 'reference' (torch/numpy, in
reference.py, the definition the others are tested against). COLLABEDIT_KERNELS=reference|cpu|cuda
or `with use_backend(name):` forces one; forcing an unavailable backend is an error. Inputs may
be torch tensors or numpy arrays; results come back as the same kind as the main input.

Masking definitions (protocol-level; every backend is bit-identical):

- Fixed point: x = round_half_to_even(v · 2^scale_bits) as int64, stored as its two's-complement
  uint64 in the ring Z_2^64. NaN, ±Inf and |x| > bound are refused (ValueError naming the index
  and the bound). The default bound is DEFAULT_BOUND = 2^62, a public round parameter; a sum of
  n parties decodes exactly when n · bound < 2^63 (`safe_bound(n)`).
- PRG: a 32-byte seed gives the AES-128 key seed[0:16] and the initial counter block seed[16:32],
  a 128-bit big-endian integer incremented by one per 16-byte block (mod 2^128): exactly
  `Cipher(AES(seed[:16]), modes.CTR(seed[16:]))` of the `cryptography` package encrypting zeros.
  Keystream bytes 8i..8i+8, read little-endian, are mask word i.
- mask_encode(v) = x + PRG(self_seed) + Σ_p sign_p · PRG(peer_seed_p)  (mod 2^64), sign_p = ±1.
- mask_decode(sum) = int64(sum) / 2^scale_bits.
"""

from ._backends import (
    BackendUnavailableError,
    available_backends,
    backend_for,
    use_backend,
)
from .api import (
    covariance_accumulate,
    mask_decode,
    mask_encode,
    prg_mask,
    regularized_solve,
    ring_add,
    ring_sub,
    safe_bound,
)
from .reference import (
    DEFAULT_BOUND,
    NotPositiveDefiniteError,
    pack_upper,
    packed_size,
    unpack_upper,
)

__all__ = [
    "DEFAULT_BOUND",
    "BackendUnavailableError",
    "NotPositiveDefiniteError",
    "available_backends",
    "backend_for",
    "covariance_accumulate",
    "mask_decode",
    "mask_encode",
    "pack_upper",
    "packed_size",
    "prg_mask",
    "regularized_solve",
    "ring_add",
    "ring_sub",
    "safe_bound",
    "unpack_upper",
    "use_backend",
]
