"""Configuration errors name the file and the field."""

from __future__ import annotations

import pytest
import yaml

from collabedit_secure.coordinator.config import ConfigError, load_config

from .harness import D_IN, D_OUT, write_config


def edited(path, **changes):
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_config(tmp_path, pki, stats):
    config = load_config(write_config(tmp_path, stats, pki))
    assert config.roster == ("a", "b", "c") and config.threshold == 2 and config.privacy == "mask"
    assert [(l.layer, l.d_out, l.d_in) for l in config.layers] == [(0, D_OUT, D_IN), (1, D_OUT, D_IN)]
    assert config.lambdas == (2.0, 3.0) and len(config.c0_fingerprint) == 64


def test_toml_config(tmp_path, pki, stats):
    import json

    data = yaml.safe_load(write_config(tmp_path, stats, pki).read_text())
    data["layer_shapes"] = {str(k): v for k, v in data["layer_shapes"].items()}
    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for table in ("deadlines", "tls", "layer_shapes"):
        lines += [f"[{table}]"] + [f'"{k}" = {json.dumps(v)}' for k, v in data[table].items()]
    (tmp_path / "c.toml").write_text("\n".join(lines) + "\n")
    assert load_config(tmp_path / "c.toml").federation_id == data["federation_id"]


@pytest.mark.parametrize("changes, field", [
    ({"threshold": 1}, "threshold"),
    ({"threshold": 4}, "threshold"),
    ({"min_parties": 1}, "min_parties"),
    ({"schedule": "random"}, "schedule"),
    ({"privacy": "secret"}, "privacy"),
    ({"device": "cuda:99"}, "device"),
    ({"device": "auto"}, "device"),
    ({"privacy": "he", "scale_bits": 57}, "scale_bits"),
    ({"privacy": "he", "he": {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 60]}}, "he"),
    ({"privacy": "he", "he": {"ring": 8192}}, "he"),
    ({"privacy": "mask", "he": {"poly_modulus_degree": 8192}}, "he"),
    ({"listen": "nowhere"}, "listen"),
    ({"roster": ["a", "a b"]}, "roster"),
    ({"model_fingerprint": "XYZ"}, "model_fingerprint"),
    ({"chunk_bytes": 0}, "chunk_bytes"),
    ({"deadlines": {"upload": -1}}, "deadlines.upload"),
    ({"layer_shapes": None}, "layer_shapes"),
    ({"federation_id": None}, "federation_id"),
    ({"c0": "missing-dir"}, "c0"),
])
def test_config_errors_name_file_and_field(tmp_path, pki, stats, changes, field):
    path = edited(write_config(tmp_path, stats, pki), **changes)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and repr(field) in str(err.value)
