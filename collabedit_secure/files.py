"""Small file helpers shared by the writers of results and caches."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Callable


def json_safe(value, fallback: Callable | None = None):
    """Tensors, numpy scalars and tuples to plain JSON values; NaN and inf to None (which any JSON
    reader parses, unlike the NaN that json.dumps writes). Other objects go to `fallback`, or raise."""
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            name = _json_key(key)
            if name in converted:  # {1: a, "1": b} would silently keep only b
                raise ValueError(f"two keys, one of them {key!r}, both write as the JSON key {name!r}")
            converted[name] = json_safe(item, fallback)
        return converted
    if isinstance(value, (list, tuple)):
        return [json_safe(v, fallback) for v in value]
    if hasattr(value, "tolist"):  # torch tensors and numpy arrays / scalars
        return json_safe(value.tolist(), fallback)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if fallback is not None:
        return fallback(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _json_key(key) -> str:
    """A key as json.dumps spells it (True -> "true", None -> "null"); other objects by str()."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    return str(key)


def current_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def share_as_umask_allows(*paths: Path) -> None:
    """Give files and folders the modes a plain open() or mkdir() would: mkdtemp (0700), mkstemp and
    safetensors (0600) make them private, which hides a shared cache or results folder from others."""
    mask = current_umask()
    for path in paths:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
