"""HE mode: the party solves ΔW itself, exactly as the coordinator does in mask mode.

    ΔW = S_RK (λ C0 + C_acc + S_KK)^-1        (merging/collabedit.py, the Cholesky kernel)

C_acc, the λ-weighted S_KK of earlier completed rounds, must be the same at every party: each
party adds λ S_KK of a round only after the round COMPLETED (commit), and drops it otherwise
(discard). It lives in the party's state folder (0600), replaced atomically, one file for every
module so a crash never leaves half a round in it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from collabedit_secure.kernels import unpack_upper
from collabedit_secure.merging.collabedit import collabedit_merge


class LocalSolver:
    def __init__(self, c0: dict[str, torch.Tensor], lambdas: dict[str, float], state_dir: Path,
                 device: str = "cpu"):
        self.c0, self.lambdas, self.device = c0, lambdas, torch.device(device)
        self.path = Path(state_dir) / "c_acc.npz"
        self.pending: dict[str, np.ndarray] = {}

    def c_acc(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        with np.load(self.path, allow_pickle=False) as data:
            return {name: np.array(data[name]) for name in data.files}

    def solve(self, layer: int, module: str, s_kk_upper: np.ndarray, s_rk: np.ndarray) -> np.ndarray:
        """ΔW of one layer from the decrypted sums; λ S_KK is kept for commit()."""
        if module not in self.c0:
            raise KeyError(f"no C0 for {module} (layer {layer})")
        d_in = self.c0[module].shape[0]
        s_kk = unpack_upper(np.ascontiguousarray(s_kk_upper, dtype=np.float64), d_in)
        c_acc = self.c_acc().get(module)
        on = lambda array: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(self.device)  # noqa: E731
        delta = collabedit_merge(self.c0[module].to(self.device), self.lambdas[module], on(s_kk), on(s_rk),
                                 None if c_acc is None else on(c_acc), layer=module)
        self.pending[module] = self.lambdas[module] * s_kk
        return delta.to(torch.float64).cpu().numpy()

    def commit(self) -> None:
        """The round COMPLETED: C_acc += λ S_KK for every solved module, in one atomic file replace."""
        if not self.pending:
            return
        total = self.c_acc()
        for module, added in self.pending.items():
            total[module] = total[module] + added if module in total else added
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.npz")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            np.savez(handle, **total)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.pending = {}

    def discard(self) -> None:
        self.pending = {}
