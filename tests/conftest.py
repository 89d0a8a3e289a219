"""Shared fixtures. The embedded default world is built once (minutes) and cached on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real-format datasets, read-only)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-format test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_world():
    """The embedded default (synthetic world + trained tiny GPT-2), built or loaded from cache."""
    from collabedit_secure.world import load_default

    return load_default(progress=False)
