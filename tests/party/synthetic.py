"""A small synthetic federation on disk: PKI, hparams, C0 files, per-party statistics, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from collabedit_secure.party import synthetic
from collabedit_secure.party.engine import write_synthetic_stats
from collabedit_secure.party.synthetic import MODEL_FINGERPRINT, MODULE  # noqa: F401 (re-export)

LAYERS = (0, 1)
D_IN, D_OUT = 6, 4


def write_hparams(folder: Path) -> Path:
    return synthetic.write_hparams(folder, LAYERS, mom2_update_weight=3.0)


def write_c0(folder: Path, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    c0 = {}
    for layer in LAYERS:
        a = rng.standard_normal((D_IN, 3 * D_IN))
        c0[layer] = a @ a.T / (3 * D_IN)
    return synthetic.write_c0(folder, c0, count=10)


def party_stats(seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(100 + seed)
    stats = {}
    for layer in LAYERS:
        k = rng.standard_normal((D_IN, 3))
        r = rng.standard_normal((D_OUT, 3))
        stats[layer] = (k @ k.T, r @ k.T)
    return stats


def write_party_stats(folder: Path, seed: int) -> Path:
    return write_synthetic_stats(folder / f"stats-{seed}.npz", MODEL_FINGERPRINT, party_stats(seed))


def party_config(folder: Path, party_id: str, coordinator: str, stats: Path, hparams: Path, c0: Path,
                 pki: Path | None = None, **extra) -> Path:
    data = {"party_id": party_id, "federation_id": "fed-test", "coordinator": coordinator,
            "listen": "127.0.0.1:0", "port_file": f"{party_id}.port", "hparams": str(hparams), "c0": str(c0),
            "state_dir": f"state-{party_id}", "statistics": f"synthetic:{stats}",
            "timeouts": {"join": 30, "phase": 60, "rpc": 10}, **extra}
    if pki is not None:
        data["tls"] = {"ca": str(pki / "ca.pem"), "cert": str(pki / f"{party_id}.pem"),
                       "key": str(pki / f"{party_id}.key")}
    path = folder / f"{party_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
