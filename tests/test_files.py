"""json_safe: what every report and cache file goes through before json.dumps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from collabedit_secure.files import json_safe


def test_json_safe_writes_plain_strict_json():
    value = {"nan": math.nan, "inf": -math.inf, "tensor": torch.tensor([1.5, 2.0]), "scalar": np.float32(0.5),
             "int": np.int64(3), "tuple": (1, Path("/a/b")), 7: True, None: None, False: "no"}
    converted = json_safe(value)
    assert converted == {"nan": None, "inf": None, "tensor": [1.5, 2.0], "scalar": 0.5, "int": 3,
                         "tuple": [1, "/a/b"], "7": True, "null": None, "false": "no"}
    assert json.loads(json.dumps(converted, allow_nan=False)) == converted
    assert list(converted)[-3:] == list(json.loads(json.dumps({7: 0, None: 0, False: 0})))  # json.dumps's spelling


@pytest.mark.parametrize("keys", [(1, "1"), (True, "true"), (None, "null"), (1.5, "1.5")])
def test_json_safe_refuses_keys_that_would_overwrite_each_other(keys):
    with pytest.raises(ValueError, match="both write as the JSON key"):
        json_safe({keys[0]: "first", keys[1]: "second"})


def test_json_safe_names_what_it_cannot_write():
    with pytest.raises(TypeError, match="cannot write a object as JSON"):
        json_safe({"x": object()})
    assert json_safe({"x": object()}, fallback=lambda _: "?") == {"x": "?"}
