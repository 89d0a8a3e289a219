"""--device / device: a device this machine has, or a one-line error before any model loads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from collabedit_secure.devices import DeviceError, compute_device, resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_cpu_and_its_spellings():
    assert resolve_device(None) == resolve_device("cpu") == resolve_device(" cpu ") == "cpu"
    assert compute_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec, words", [("tpu-ish", "is not a device"), ("meta", "only cpu, cuda"),
                                         ("cuda:99", "cuda:99")])
def test_devices_that_are_not_here_are_refused(spec, words):
    with pytest.raises(DeviceError, match=words):
        resolve_device(spec)


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "auto"])
def test_cuda_without_cuda_names_the_reason(spec):
    with pytest.raises(DeviceError, match=r"needs CUDA, and this machine has none .*use --device cpu"):
        resolve_device(spec)


@no_cuda
@pytest.mark.parametrize("command", [["edit", "--model", "default", "--requests", "README.md", "--out", "OUT"],
                                     ["simulate", "--parties", "2"]])  # stats and eval share the same argument
def test_cli_refuses_cuda_before_loading_anything(tmp_path, command):
    command = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    result = subprocess.run([sys.executable, "-m", "collabedit_secure.cli", *command, "--device", "cuda"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "argument --device: device 'cuda' needs CUDA" in result.stderr
    assert "loading" not in (result.stdout + result.stderr).lower() and not (tmp_path / "out").exists()
