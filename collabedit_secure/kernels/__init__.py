"""Hot paths: covariance accumulation, regularised solve, masking.

Public functions dispatch to CUDA (tensors on a GPU), the C++ extension, or the torch reference.
Until the compiled backends are wired in, every call runs the reference.
"""

from .reference import (
    NotPositiveDefiniteError,
    covariance_accumulate,
    pack_upper,
    packed_size,
    regularized_solve,
    unpack_upper,
)

__all__ = [
    "NotPositiveDefiniteError",
    "covariance_accumulate",
    "pack_upper",
    "packed_size",
    "regularized_solve",
    "unpack_upper",
]
