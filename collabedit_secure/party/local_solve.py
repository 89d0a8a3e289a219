"""HE mode: the party solves ΔW itself, exactly as the coordinator does in mask mode.

    ΔW = S_RK (λ C0 + C_acc + S_KK)^-1        (merging/collabedit.py, the Cholesky kernel)

C_acc, the λ-weighted S_KK of earlier completed rounds, must be the same at every party: each
party adds λ S_KK of a round only after the round COMPLETED (commit), and drops it otherwise
(discard). It lives in the party's state folder (0600), replaced atomically, one file for every
module so a crash never leaves half a round in it.

Memory (CPU): one d x d system per solve (C0 read into it, C_acc added a block of rows at a time,
factored in place), the decrypted sums, and nothing between solves: C_acc is stored as packed
upper triangles and memory-mapped, and λ S_KK of a round waits for commit() in a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from collabedit_secure.blockio import RowSum, memmap_npz, packed_blocks, write_npz
from collabedit_secure.merging.collabedit import merge_layer


class LocalSolver:
    def __init__(self, c0: Mapping[str, torch.Tensor], lambdas: dict[str, float], state_dir: Path,
                 device: str = "cpu"):
        self.c0, self.lambdas, self.device = c0, lambdas, torch.device(device)
        self.path = Path(state_dir) / "c_acc.npz"
        self.pending_dir = Path(state_dir) / "c_acc-pending"
        self.pending: dict[str, Path] = {}

    def c_acc(self) -> dict[str, np.ndarray]:
        """C_acc per module as saved: packed upper triangles, memory-mapped (an earlier version's
        full d x d matrices are read as they are)."""
        return memmap_npz(self.path) if self.path.is_file() else {}

    def solve(self, layer: int, module: str, s_kk_upper: np.ndarray, s_rk: np.ndarray) -> np.ndarray:
        """ΔW of one layer from the decrypted sums (s_rk may be overwritten); λ S_KK is kept for commit()."""
        if module not in self.c0:
            raise KeyError(f"no C0 for {module} (layer {layer})")
        lam = self.lambdas[module]
        s_kk_upper = np.ascontiguousarray(s_kk_upper, dtype=np.float64)
        delta = merge_layer(self.c0, module, lam, s_kk_upper, s_rk, self.c_acc().get(module), self.device)
        self._keep_pending(module, lam, s_kk_upper)
        return delta

    def _keep_pending(self, module: str, lam: float, s_kk_upper: np.ndarray) -> None:
        self.pending_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.pending_dir / f"{len(self.pending)}.npy"
        scaled = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=s_kk_upper.shape)
        step = 1 << 20
        for start in range(0, s_kk_upper.size, step):
            np.multiply(s_kk_upper[start:start + step], lam, out=scaled[start:start + step])
        scaled.flush()
        del scaled
        self.pending[module] = path

    def commit(self) -> None:
        """The round COMPLETED: C_acc += λ S_KK for every solved module, in one atomic file replace."""
        if not self.pending:
            return
        old = self.c_acc()
        total = {}
        for module in sorted(set(old) | set(self.pending)):
            added = np.load(self.pending[module], mmap_mode="r") if module in self.pending else None
            base = old.get(module)
            if base is not None and base.ndim == 2:  # an earlier version's full matrix: its upper triangle
                base = np.concatenate(list(packed_blocks(base, base.shape[0])))
            total[module] = RowSum(base, added) if base is not None else RowSum(added, None)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.npz")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        write_npz(tmp, total)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        del old, total
        os.replace(tmp, self.path)
        self.discard()

    def discard(self) -> None:
        for path in self.pending.values():
            path.unlink(missing_ok=True)
        self.pending = {}
