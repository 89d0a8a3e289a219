"""Which implementation runs a kernel call: 'cuda', 'cpu' (C++ extension) or 'reference'.

Order of precedence: a `use_backend(...)` block, then the COLLABEDIT_KERNELS environment
variable, then the data itself (GPU arrays -> cuda, otherwise cpu when the extension is built,
otherwise reference). A forced backend that is not available is an error, never a fallback.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
from typing import Any, Iterator

BACKENDS = ("reference", "cpu", "cuda")
ENV_VAR = "COLLABEDIT_KERNELS"


class BackendUnavailableError(RuntimeError):
    """A backend was requested that is not built or has no device."""


def _load_cpu():
    try:
        # Make the OpenBLAS the extension links against loadable wherever the package lives.
        import scipy_openblas64

        lib = os.path.join(scipy_openblas64.get_lib_dir(), scipy_openblas64.get_library(True))
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        from collabedit_secure import _kernels
    except ImportError as error:
        return None, f"C++ extension not importable ({error})"
    return _kernels, ""


def _load_cuda():
    try:
        from collabedit_secure import _kernels_cuda
    except ImportError as error:
        return None, f"CUDA extension not built ({error})"
    try:
        devices = _kernels_cuda.device_count()
    except RuntimeError as error:
        return None, f"CUDA runtime unusable ({error})"
    if devices < 1:
        return None, "CUDA extension built, but no GPU is visible"
    return _kernels_cuda, ""


cpu_module, cpu_unavailable_reason = _load_cpu()
cuda_module, cuda_unavailable_reason = _load_cuda()
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("collabedit_kernels", default=None)


def available_backends() -> list[str]:
    """Backends usable in this process, fastest last."""
    names = ["reference"]
    if cpu_module is not None:
        names.append("cpu")
    if cuda_module is not None:
        names.append("cuda")
    return names


def _check_name(name: str, origin: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{origin}: unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "cpu" and cpu_module is None:
        raise BackendUnavailableError(f"{origin} asks for 'cpu' but {cpu_unavailable_reason}")
    if name == "cuda" and cuda_module is None:
        raise BackendUnavailableError(f"{origin} asks for 'cuda' but {cuda_unavailable_reason}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force every kernel call inside the block onto one backend."""
    token = _forced.set(_check_name(name, "use_backend"))
    try:
        yield
    finally:
        _forced.reset(token)


def is_on_gpu(x: Any) -> bool:
    """True for torch CUDA tensors and cupy arrays."""
    if getattr(x, "is_cuda", False):
        return True
    return type(x).__module__.startswith("cupy")


def forced_backend() -> str | None:
    forced = _forced.get()
    if forced is not None:
        return forced
    env = os.environ.get(ENV_VAR, "").strip().lower()
    return _check_name(env, f"{ENV_VAR}={env}") if env else None


def backend_for(*arrays: Any) -> str:
    """The backend a call with these arguments runs on."""
    on_gpu = any(is_on_gpu(a) for a in arrays if a is not None)
    forced = forced_backend()
    if forced is not None:
        if on_gpu and forced == "cpu":
            raise ValueError("backend 'cpu' was forced but the data is on a GPU; move it to the host first")
        if not on_gpu and forced == "cuda":
            raise ValueError("backend 'cuda' was forced but the data is on the host; move it to the GPU first")
        return forced
    if on_gpu:
        if cuda_module is None:
            raise BackendUnavailableError(f"data is on a GPU but {cuda_unavailable_reason}")
        return "cuda"
    return "cpu" if cpu_module is not None else "reference"


def gpu_index(x: Any) -> int | None:
    """The GPU an array lives on (torch or cupy), None for host data."""
    if not is_on_gpu(x):
        return None
    return x.device.index if hasattr(x.device, "index") else x.device.id


def check_one_gpu(arrays) -> None:
    """A kernel reads every operand through raw device pointers on one device: host data or a
    second GPU among them would be read as garbage (or crash), so it is refused by name."""
    located = [(index, gpu_index(a)) for index, a in enumerate(arrays) if a is not None and hasattr(a, "shape")]
    devices = {device for _, device in located}
    if None in devices:
        host = [index for index, device in located if device is None]
        raise ValueError(f"operands mix GPU and host data (host: argument(s) {host}); move them to one GPU first")
    if len(devices) > 1:
        raise ValueError(f"operands are on GPUs {sorted(devices)}; a kernel call needs them on one GPU")
