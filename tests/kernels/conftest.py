"""Shared helpers: every host backend this build has, and a seeded generator."""

from __future__ import annotations

import numpy as np
import pytest

from collabedit_secure import kernels

HOST_BACKENDS = [b for b in kernels.available_backends() if b != "cuda"]


@pytest.fixture(params=HOST_BACKENDS)
def backend(request):
    with kernels.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def require_cpu_extension():
    if "cpu" not in kernels.available_backends():
        pytest.fail("the C++ extension is not built: run pip install --no-build-isolation -e .")
