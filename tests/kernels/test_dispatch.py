"""Backend selection: env var and context manager force a backend; unknown/unavailable ones fail."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from collabedit_secure import kernels


def test_compiled_backend_is_built():
    # CI builds the extension; a silent fallback to the reference would hide a broken build.
    assert "cpu" in kernels.available_backends()
    assert kernels.backend_for(np.zeros(3)) == "cpu"


def test_env_var_forces_reference(monkeypatch):
    monkeypatch.setenv("COLLABEDIT_KERNELS", "reference")
    assert kernels.backend_for(np.zeros(3), torch.zeros(2)) == "reference"
    acc = np.zeros((2, 2))
    kernels.covariance_accumulate(acc, np.ones((3, 2)))
    np.testing.assert_array_equal(acc, np.full((2, 2), 3.0))


def test_context_manager_beats_env_var(monkeypatch):
    monkeypatch.setenv("COLLABEDIT_KERNELS", "reference")
    with kernels.use_backend("cpu"):
        assert kernels.backend_for(np.zeros(1)) == "cpu"
    assert kernels.backend_for(np.zeros(1)) == "reference"


def test_unknown_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("COLLABEDIT_KERNELS", "fortran")
    with pytest.raises(ValueError, match="unknown kernel backend 'fortran'"):
        kernels.backend_for(np.zeros(1))


@pytest.mark.skipif("cuda" in kernels.available_backends(), reason="a GPU backend is available here")
def test_forcing_unavailable_cuda_fails(monkeypatch):
    with pytest.raises(kernels.BackendUnavailableError, match="'cuda'"):
        with kernels.use_backend("cuda"):
            pass
    monkeypatch.setenv("COLLABEDIT_KERNELS", "cuda")
    with pytest.raises(kernels.BackendUnavailableError):
        kernels.prg_mask(bytes(32), 4)


def test_package_imports_without_extension():
    """With the compiled modules hidden, the package still imports and runs the reference."""
    code = (
        "import sys; sys.modules['collabedit_secure._kernels'] = None; "
        "sys.modules['collabedit_secure._kernels_cuda'] = None\n"
        "import numpy as np; from collabedit_secure import kernels\n"
        "assert kernels.available_backends() == ['reference'], kernels.available_backends()\n"
        "print(kernels.prg_mask(bytes(32), 2).tolist())"
    )
    env = dict(os.environ, COLLABEDIT_KERNELS="")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == str(kernels.prg_mask(bytes(32), 2).tolist())
