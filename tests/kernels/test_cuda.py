"""CUDA kernels: the device AES-CTR code is checked on the host here; the GPU paths run against
the reference only where a GPU is visible, and skip with the reason otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collabedit_secure import kernels
from collabedit_secure.kernels import _backends

from collabedit_secure.kernels import reference

try:
    from collabedit_secure import _kernels_cuda
except ImportError:
    _kernels_cuda = None

needs_module = pytest.mark.skipif(_kernels_cuda is None, reason="CUDA extension not built (no CUDA toolkit at build time)")
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or "cuda" not in kernels.available_backends(),
    reason=f"no usable GPU: torch.cuda.is_available()={torch.cuda.is_available()}; {_backends.cuda_unavailable_reason}",
)


@needs_module
@pytest.mark.parametrize("counter", [bytes(16), bytes.fromhex("fffffffffffffffffffffffffffffff8")])
def test_device_aes_code_is_bit_exact_on_host(counter):
    seed = bytes(range(7, 23)) + counter
    np.testing.assert_array_equal(_kernels_cuda.prg_mask_host(seed, 1001), reference.prg_mask(seed, 1001))


@needs_gpu
@pytest.mark.cuda
def test_gpu_covariance_matches_reference():
    keys = torch.randn(300, 257, device="cuda").to(torch.bfloat16)
    mask = torch.rand(300, device="cuda") < 0.7
    acc = torch.zeros(257, 257, dtype=torch.float64, device="cuda")
    kernels.covariance_accumulate(acc, keys, mask)
    k64 = keys[mask].double()
    torch.testing.assert_close(acc, k64.T @ k64, rtol=1e-12, atol=1e-10)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("refine", [True, False])
def test_gpu_solve_residual(refine):
    d = 300
    a = torch.randn(d, d + 5, dtype=torch.float64, device="cuda")
    c0 = a @ a.T / d + torch.eye(d, dtype=torch.float64, device="cuda")
    s_kk = kernels.pack_upper(torch.eye(d, dtype=torch.float64, device="cuda"))
    s_rk = torch.randn(40, d, dtype=torch.float64, device="cuda")
    delta = kernels.regularized_solve(c0, 1.0, s_kk, s_rk, refine=refine)
    system = c0 + torch.eye(d, dtype=torch.float64, device="cuda")
    residual = torch.linalg.norm(system @ delta.T - s_rk.T) / (torch.linalg.norm(system) * torch.linalg.norm(delta))
    assert float(residual) <= 1e-12


def spectrum_system(d: int, smallest: float, seed: int = 0) -> torch.Tensor:
    """A symmetric positive definite matrix with eigenvalues spread evenly in log scale over [smallest, 1]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    return (q * torch.logspace(0, torch.log10(torch.tensor(smallest)).item(), d, dtype=torch.float64)) @ q.T


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("smallest", [1e-6, 1e-9, 1e-12])
def test_gpu_refined_solve_reaches_float64_backward_error_however_ill_conditioned(smallest):
    """Condition 1e6 is within float32's reach, 1e9 is past it (refinement alone would stall), 1e12
    rounds to a float32 matrix that is not positive definite: each must still solve to float64
    accuracy, by refinement or by the float64 fallback, and never be called indefinite."""
    d = 256
    system = spectrum_system(d, smallest).cuda()
    s_rk = torch.randn(16, d, dtype=torch.float64, device="cuda")
    zero = kernels.pack_upper(torch.zeros(d, d, dtype=torch.float64, device="cuda"))
    for refine in (True, False):
        delta = kernels.regularized_solve(system, 1.0, zero, s_rk, refine=refine)
        backward = torch.linalg.norm(delta @ system - s_rk) / (torch.linalg.norm(system) * torch.linalg.norm(delta))
        assert float(backward) <= 1e-14, (refine, float(backward))


@needs_gpu
@pytest.mark.cuda
def test_gpu_masking_is_bit_identical_to_cpu():
    values = np.random.default_rng(0).standard_normal(100_001)
    seeds = [bytes([i]) * 32 for i in range(4)]
    want = kernels.mask_encode(values, 20, seeds[0], seeds[1:], [1, -1, 1])
    got = kernels.mask_encode(torch.from_numpy(values).cuda(), 20, seeds[0], seeds[1:], [1, -1, 1])
    np.testing.assert_array_equal(got.cpu().numpy(), want)


def test_device_output_check_needs_a_uint64_gpu_buffer():
    from collabedit_secure.kernels._convert import check_device_out

    with pytest.raises(TypeError, match="^out has dtype float64; expected uint64$"):
        check_device_out(np.zeros(3), 3)
    with pytest.raises(ValueError, match="^out must be on the GPU, as the data is$"):
        check_device_out(torch.zeros(3, dtype=torch.uint64), 3)


@needs_gpu
@pytest.mark.cuda
def test_gpu_output_buffers_are_checked_and_kept_when_a_call_is_refused():
    """The kernels write n words from out's address: a short, strided or host buffer would be
    overrun or misread, so each is refused; a refused encode leaves the caller's buffer as it was."""
    device_words = lambda *values: torch.from_numpy(np.array(values, np.uint64)).cuda()  # noqa: E731
    values = torch.tensor([1.0, 2.0, float("nan")], dtype=torch.float64, device="cuda")
    out = device_words(7, 7, 7)
    with pytest.raises(ValueError, match=r"^value nan at index \(2,\)"):
        kernels.mask_encode(values, 0, bytes(32), [], [], out=out)
    np.testing.assert_array_equal(out.cpu().numpy(), [7, 7, 7])
    good = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, device="cuda")
    assert kernels.mask_encode(good, 0, bytes(32), [], [], out=out) is out
    np.testing.assert_array_equal(out.cpu().numpy(), kernels.mask_encode(good.cpu().numpy(), 0, bytes(32), [], []))
    with pytest.raises(ValueError, match="^out has 2 elements; expected 3$"):
        kernels.mask_encode(good, 0, None, [], [], out=out[:2])
    with pytest.raises(ValueError, match="^out must be C-contiguous$"):
        kernels.mask_encode(good, 0, None, [], [], out=device_words(*range(6))[::2])
    with pytest.raises(ValueError, match="^out must be on the GPU, as the data is$"):
        kernels.mask_encode(good, 0, None, [], [], out=np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="^out has 3 elements; expected 4$"):
        kernels.prg_mask(bytes(32), 4, out=out)
    with pytest.raises(ValueError, match="^out has 2 elements; expected 3$"):
        kernels.ring_add(out, out, out=out[:2])


@needs_gpu
@pytest.mark.cuda
def test_gpu_operands_are_checked_on_the_device():
    d = 16
    c0 = torch.eye(d, dtype=torch.float64, device="cuda")
    s_rk = torch.ones(2, d, dtype=torch.float64, device="cuda")
    bad = c0.clone()
    bad[9, 2] = float("nan")  # lower triangle: the kernel alone would never read it
    with pytest.raises(ValueError, match="^c0 for layer g1 has NaN or Inf entries$"):
        kernels.regularized_solve(bad, 1.0, c0, s_rk, layer="g1")
    bad[9, 2] = 0.5  # only the upper triangle is read, on the GPU as on the CPU
    torch.testing.assert_close(kernels.regularized_solve(bad, 1.0, c0, s_rk), kernels.regularized_solve(c0, 1.0, c0, s_rk))


@needs_gpu
@pytest.mark.cuda
def test_operands_on_the_host_or_another_gpu_are_refused_by_name():
    d = 8
    c0 = torch.eye(d, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match=r"^operands mix GPU and host data \(host: argument\(s\) \[2\]\)"):
        kernels.regularized_solve(c0, 1.0, c0, torch.ones(2, d, dtype=torch.float64))
    keys = torch.randn(5, d, device="cuda")
    with pytest.raises(ValueError, match=r"^operands mix GPU and host data \(host: argument\(s\) \[2\]\)"):
        kernels.covariance_accumulate(torch.zeros(d, d, dtype=torch.float64, device="cuda"), keys,
                                      torch.ones(5, dtype=torch.bool))
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match=r"^operands are on GPUs \[0, 1\]"):
            kernels.regularized_solve(c0, 1.0, c0, torch.ones(2, d, dtype=torch.float64, device="cuda:1"))


@needs_gpu
@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_a_second_gpu_computes_the_same_masks_and_solves():
    """The AES tables live in each device's constant memory: uploaded per device, with the
    operands' device made current for the call (whatever the thread's current device)."""
    values = np.random.default_rng(1).standard_normal(50_001)
    seeds = [bytes([i + 1]) * 32 for i in range(3)]
    want = kernels.mask_encode(values, 20, seeds[0], seeds[1:], [1, -1])
    with torch.cuda.device(0):  # the thread's current device is 0; the data is on 1
        got = kernels.mask_encode(torch.from_numpy(values).to("cuda:1"), 20, seeds[0], seeds[1:], [1, -1])
        assert got.device == torch.device("cuda:1")
        np.testing.assert_array_equal(got.cpu().numpy(), want)
        d = 64
        a = torch.randn(d, d + 4, dtype=torch.float64)
        c0, s_rk = a @ a.T / d, torch.randn(5, d, dtype=torch.float64)
        on = lambda device: kernels.regularized_solve(c0.to(device), 1.0, c0.to(device), s_rk.to(device))  # noqa: E731
        torch.testing.assert_close(on("cuda:1").cpu(), on("cuda:0").cpu(), rtol=0, atol=0)


@needs_gpu
@pytest.mark.cuda
def test_cupy_arrays_run_on_the_gpu_kernels():
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (pip install cupy-cuda12x)")
    values = np.random.default_rng(2).standard_normal(10_001)
    seeds = [bytes([9]) * 32, bytes([8]) * 32]
    want = kernels.mask_encode(values, 20, seeds[0], seeds[1:], [1])
    got = kernels.mask_encode(cupy.asarray(values), 20, seeds[0], seeds[1:], [1])
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    d = 48
    a = np.random.default_rng(3).standard_normal((d, d + 4))
    c0, s_rk = a @ a.T / d, np.ones((3, d))
    np.testing.assert_allclose(cupy.asnumpy(kernels.regularized_solve(cupy.asarray(c0), 1.0, cupy.asarray(c0),
                                                                        cupy.asarray(s_rk))),
                               kernels.regularized_solve(c0, 1.0, c0, s_rk), rtol=1e-10, atol=1e-12)
