"""Where models, statistics and solves live: `--device` on the commands, `device:` in configs.

    cpu (default) | cuda | cuda:N | auto   (auto: transformers' device map over every GPU)

Asking for CUDA on a machine without it is an error here, before any model loads: a user with a
6B model learns it in a second, not after minutes of loading onto the wrong device.
"""

from __future__ import annotations

import importlib.util

import torch

CHOICES_HELP = "cpu (default), cuda, cuda:N, or auto (the model spread over every GPU by transformers)"


class DeviceError(ValueError):
    """A device that is not a device, or that this machine does not have."""


def _no_cuda(spec: str) -> DeviceError:
    return DeviceError(f"device {spec!r} needs CUDA, and this machine has none (torch {torch.__version__}: "
                       "torch.cuda.is_available() is False); use --device cpu")


def resolve_device(spec: str | None) -> str:
    """The canonical device string ('cpu', 'cuda:N' or 'auto'), or DeviceError saying why not."""
    spec = "cpu" if spec is None else str(spec).strip()
    if spec == "auto":
        if not torch.cuda.is_available():
            raise _no_cuda(spec)
        if importlib.util.find_spec("accelerate") is None:
            raise DeviceError("device 'auto' uses transformers' device map, which needs the accelerate package "
                              "(pip install accelerate)")
        return "auto"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {spec!r} is not a device: use {CHOICES_HELP}") from None
    if device.type == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise DeviceError(f"device {spec!r}: only cpu, cuda, cuda:N and auto are supported")
    if not torch.cuda.is_available():
        raise _no_cuda(spec)
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return f"cuda:{index}"


def compute_device(device: str) -> torch.device:
    """Where statistics and solves run for a resolved device: the first GPU under 'auto'."""
    return torch.device("cuda:0" if device == "auto" else device)
