import pytest

from .synthetic import write_c0, write_hparams, write_party_stats


@pytest.fixture
def synthetic_world(tmp_path):
    """hparams, C0 dir and three parties' statistics in tmp_path."""
    return {"hparams": write_hparams(tmp_path), "c0": write_c0(tmp_path),
            "stats": [write_party_stats(tmp_path, i) for i in range(3)], "dir": tmp_path}
