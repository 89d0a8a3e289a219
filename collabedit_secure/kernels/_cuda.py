"""GPU adapter: passes device pointers of torch CUDA tensors or cupy arrays to _kernels_cuda.

Arguments (and a caller's `out`) were already checked by api.py. Every call runs with the
operands' device as the current device (`_on_device`): the kernels launch, allocate and upload the
AES tables on the current device, so a tensor on cuda:1 is computed on cuda:1 whatever the
thread's current device. Work is queued on that device's current stream; results stay on the
device (no host round trip).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

from . import _backends
from .api import raise_for_solve_status

KEY_TYPES = {"float32": 0, "bfloat16": 1, "float64": 2}


def _module():
    return _backends.cuda_module


def _device_context(x: Any):
    if _is_torch(x):
        return torch.cuda.device(x.device)
    import cupy

    return cupy.cuda.Device(x.device.id)


def _on_device(fn):
    """Runs fn with its first array argument's device current (api.py checked they share one)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        first = next((a for a in args if _is_torch(a) or hasattr(a, "__cuda_array_interface__")), None)
        with contextlib.nullcontext() if first is None else _device_context(first):
            return fn(*args, **kwargs)

    return call


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _ptr(x: Any) -> int:
    if x is None:
        return 0
    return x.data_ptr() if _is_torch(x) else x.data.ptr


def _strides(x: Any) -> tuple[int, ...]:
    return tuple(x.stride()) if _is_torch(x) else tuple(s // x.itemsize for s in x.strides)


def _stream(x: Any) -> int:
    if _is_torch(x):
        return torch.cuda.current_stream(x.device).cuda_stream
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _contiguous(x: Any, dtype: str | None = None) -> Any:
    if _is_torch(x):
        x = x if dtype is None else x.to(getattr(torch, dtype))
        return x.contiguous()
    import cupy

    return cupy.ascontiguousarray(x if dtype is None else x.astype(dtype))


def _empty(like: Any, shape: tuple[int, ...], dtype: str) -> Any:
    if _is_torch(like):
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    import cupy

    return cupy.empty(shape, dtype=dtype)


def _dtype(x: Any) -> str:
    return str(x.dtype).removeprefix("torch.")


@_on_device
def covariance_accumulate(acc: Any, keys: Any, mask: Any) -> Any:
    work = acc if acc.is_contiguous() else _contiguous(acc) if _is_torch(acc) else _contiguous(acc)
    n, d = keys.shape
    row_stride, col_stride = _strides(keys)
    mask_u8 = None if mask is None else _contiguous(mask != 0, "uint8")
    _module().covariance_accumulate(_ptr(work), work.dim() == 1 if _is_torch(work) else work.ndim == 1, d,
                                    _ptr(keys), KEY_TYPES[_dtype(keys)], n, row_stride, col_stride,
                                    _ptr(mask_u8), 1, _stream(acc))
    if work is not acc:
        acc[...] = work
    return acc


@_on_device
def regularized_solve(c0, lam, s_kk, s_rk, c_acc, refine, layer, max_iter: int = 30):  # LAPACK's ITERMAX
    d = c0.shape[0]
    c0, s_kk = _contiguous(c0), _contiguous(s_kk)
    c_acc = None if c_acc is None else _contiguous(c_acc)
    x = _contiguous(s_rk, "float64")
    x = x.clone() if _is_torch(x) and x.data_ptr() == s_rk.data_ptr() else x
    if not _is_torch(x) and x.data.ptr == s_rk.data.ptr:
        x = x.copy()
    f32 = lambda t: t is not None and _dtype(t) == "float32"  # noqa: E731
    packed = lambda t: t is not None and len(t.shape) == 1  # noqa: E731
    status = _module().regularized_solve(_ptr(c0), f32(c0), lam, _ptr(c_acc), f32(c_acc), packed(c_acc),
                                         _ptr(s_kk), f32(s_kk), packed(s_kk), d, _ptr(x), x.shape[0],
                                         bool(refine), max_iter, _stream(x))
    raise_for_solve_status(status, d, layer)
    return x


@_on_device
def prg_mask(seed: bytes, n: int, out: Any) -> Any:
    _module().prg_mask(seed, n, _ptr(out), _stream(out))
    return out


@_on_device
def mask_encode(values, scale_bits, seeds, signs, out, bound):
    from ._convert import bad_value_error

    flat = _contiguous(values, "float64").reshape(-1)
    # The kernel finds a bad value while it writes, so it writes into a buffer of its own: a refused
    # call leaves a caller's `out` as it was (one extra device copy when `out` is given).
    words = _empty(values, tuple(values.shape), "uint64")
    bad = _module().mask_encode(_ptr(flat), flat.shape[0], scale_bits, bound, list(seeds), list(signs),
                                _ptr(words), _stream(values))
    if bad >= 0:
        host = flat.cpu().numpy() if _is_torch(flat) else flat.get()
        raise bad_value_error(host.reshape(tuple(values.shape)), bad, scale_bits, bound)
    if out is None:
        return words
    out.reshape(words.shape)[...] = words  # out is contiguous (checked by the caller): a view
    return out


def _ring(a, b, out, subtract):
    a, b = _contiguous(a), _contiguous(b)
    words = _empty(a, tuple(a.shape), "uint64") if out is None else out
    _module().ring_op(_ptr(a), _ptr(b), _ptr(words), a.numel() if _is_torch(a) else a.size, subtract, _stream(a))
    return words


@_on_device
def ring_add(a, b, out):
    return _ring(a, b, out, False)


@_on_device
def ring_sub(a, b, out):
    return _ring(a, b, out, True)


@_on_device
def mask_decode(ring_sum, scale_bits):
    src = _contiguous(ring_sum)
    result = _empty(src, tuple(src.shape), "float64")
    _module().mask_decode(_ptr(src), src.numel() if _is_torch(src) else src.size, scale_bits, _ptr(result), _stream(src))
    return result
