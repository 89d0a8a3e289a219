"""Writes party statistics in the folder format the Node masking party reads (clients/node/lib/stats.js).

    manifest.json              {"format": "collabedit-stats/1", "layers": {"<L>": {"d_in": D, "d_out": O}}}
    layer-<L>-s_kk_upper.f64   S_KK's packed upper triangle (kernels.pack_upper order), float64 little-endian
    layer-<L>-s_rk.f64         S_RK, d_out x d_in row-major, float64 little-endian

Not part of the package: the statistics come from Python (MEMIT or a synthetic federation).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from collabedit_secure.kernels import pack_upper, packed_size

FORMAT = "collabedit-stats/1"


def write_node_stats(folder: str | Path, stats: dict[int, tuple[np.ndarray, np.ndarray]]) -> Path:
    """stats: layer -> (S_KK as d_in x d_in or already packed, S_RK d_out x d_in). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = {}
    for layer, (s_kk, s_rk) in sorted(stats.items()):
        s_kk, s_rk = np.asarray(s_kk, dtype=np.float64), np.asarray(s_rk, dtype=np.float64)
        if s_rk.ndim != 2:
            raise ValueError(f"layer {layer}: S_RK must be d_out x d_in, got shape {s_rk.shape}")
        d_out, d_in = s_rk.shape
        packed = pack_upper(s_kk) if s_kk.ndim == 2 else s_kk
        if packed.shape != (packed_size(d_in),):
            raise ValueError(f"layer {layer}: S_KK does not match d_in = {d_in}")
        np.ascontiguousarray(packed, dtype="<f8").tofile(folder / f"layer-{layer}-s_kk_upper.f64")
        np.ascontiguousarray(s_rk, dtype="<f8").tofile(folder / f"layer-{layer}-s_rk.f64")
        layers[str(layer)] = {"d_in": int(d_in), "d_out": int(d_out)}
    (folder / "manifest.json").write_text(json.dumps({"format": FORMAT, "layers": layers}, indent=1) + "\n")
    return folder


def read_node_delta(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A ΔW file the Node party (or `collabedit-node download`) wrote: raw float64 little-endian."""
    return np.fromfile(path, dtype="<f8").reshape(shape)
