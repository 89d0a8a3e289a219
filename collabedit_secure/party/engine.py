"""What a party computes in a round: MEMIT on its model (ModelEngine), or fixed synthetic statistics
(SyntheticEngine: protocol tests and benchmarks without a model).

Both leave their model exactly as it was when a round fails or rolls back: ModelEngine relies on
memit.edit restoring the layers it touched when an exception escapes it (the exchange raises on
FAILED / ROLLED_BACK) and reverts the returned delta if the round ends badly after it was applied;
SyntheticEngine edits a copy and commits it only after COMPLETED.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from collabedit_secure.blockio import LazyC0, RowSum, memmap_npz, write_npz
from collabedit_secure.editing.hparams import MemitHparams
from collabedit_secure.kernels import pack_upper
from collabedit_secure.protocol import fingerprints

from .local_solve import LocalSolver
from .round_client import RoundClient

log = logging.getLogger(__name__)


def load_hparams(spec: str) -> MemitHparams:
    return MemitHparams.from_yaml(spec) if spec.endswith((".yaml", ".yml")) else MemitHparams.builtin(spec)


def module_name(hparams: MemitHparams, layer: int) -> str:
    return (hparams.rewrite_module_tmp or "transformer.h.{}.mlp.c_proj").format(layer)


def local_solver(hparams: MemitHparams, c0: dict[str, torch.Tensor], state_dir: Path,
                 device: str = "cpu") -> LocalSolver:
    """The HE-mode solver, with λ per edited module as the coordinator takes it from the same hparams."""
    lambdas = {module_name(hparams, layer): lam for layer, lam in zip(hparams.layers, hparams.layer_lambdas())}
    return LocalSolver(c0, lambdas, state_dir, "cuda:0" if device == "auto" else device)


def c0_files(directory: str, hparams: MemitHparams) -> dict[str, Path]:
    """The MEMIT-layout statistics file of every edited module in a directory."""
    from collabedit_secure.pipeline import stats_file

    return {module_name(hparams, layer): stats_file(Path(directory), module_name(hparams, layer), hparams)
            for layer in hparams.layers}


def load_c0_dir(directory: str, hparams: MemitHparams) -> dict[str, torch.Tensor]:
    """C0 per edited module from MEMIT-layout npz files (as the coordinator reads them)."""
    from collabedit_secure.editing.covariance import import_memit_stats
    from collabedit_secure.pipeline import stats_file

    return {module_name(hparams, layer): import_memit_stats(
        stats_file(Path(directory), module_name(hparams, layer), hparams)).moment().to(torch.float64)
        for layer in hparams.layers}


class _Clock:
    """Adds elapsed seconds to stage_seconds[stage]."""

    def __init__(self, seconds: dict, stage: str):
        self.seconds, self.stage = seconds, stage

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + time.perf_counter() - self.started


# ---------------------------------------------------------------------------------------- model


class ModelEngine:
    """The party's copy of the model; one MEMIT edit per round with the coordinator as the solver."""

    def __init__(self, config, log_: logging.Logger = log):
        from collabedit_secure.editing.context import generate_context_templates
        from collabedit_secure.pipeline import covariances, load_model

        self.log = log_
        self.loaded = load_model(config.model, config.device)
        self.model, self.tok = self.loaded.model, self.loaded.tok
        self.hparams = load_hparams(config.hparams)
        if config.c0 == "embedded":
            self.c0, _ = covariances(self.loaded, self.hparams, progress=False)
        else:  # on the device the keys are computed on (the first GPU under a device map)
            from collabedit_secure.devices import compute_device

            self.c0 = {name: c0.to(compute_device(config.device))
                       for name, c0 in load_c0_dir(config.c0, self.hparams).items()}
        self.fingerprints = {"model": fingerprints.model_fingerprint(self.model),  # the base, before any round
                             "hparams": fingerprints.hparams_fingerprint(self.hparams),
                             "c0": fingerprints.c0_fingerprint(self.c0)}
        # One set of context templates per base model, as simulate does: every party makes the same.
        self.templates = generate_context_templates(self.model, self.tok, self.hparams.context_template_seed,
                                                    self.hparams.context_template_length_params)
        self.evaluate = config.evaluate
        self.solver = local_solver(self.hparams, self.c0, config.state_dir, config.device)
        self.spool_dir = Path(config.state_dir) / "spool"

    def restore(self, results: list[dict]) -> str:
        """Re-apply the deltas of earlier completed rounds (a restarted daemon); last checkpoint path."""
        from collabedit_secure.editing.delta import EditDelta

        last = ""
        for result in results:
            if result.get("phase") == "COMPLETED" and result.get("delta_path"):
                EditDelta.load(result["delta_path"]).apply(self.model)
                last = result.get("checkpoint_path", "")
        return last

    def run_round(self, client: RoundClient, edits, round_dir: Path) -> dict:
        from collabedit_secure.editing.memit import edit

        requests = [e.request() for e in edits]
        seconds: dict[str, float] = {}
        client.spool_dir = client.spool_dir or self.spool_dir
        pending: list[int] = []  # layers edit() applied whose ReportApplied is still due
        in_exchange = [0.0]

        def exchange(step: dict[int, str], per_party):
            started = time.perf_counter()
            with _Clock(seconds, "report"):
                for layer in pending:  # edit() applied ΔW_l before computing this step's keys
                    client.report_applied(layer)
                pending.clear()
            (mine,) = per_party
            # On the model's device: on a GPU, mask mode checks and masks there (round_client)
            contributions = {layer: (pack_upper(c.s_kk.to(torch.float64)), c.s_rk.to(torch.float64))
                             for layer, c in mine.items()}
            deltas = client.exchange_step(step, contributions, self.solver.solve)
            if client.sequential:
                pending.extend(step)
            in_exchange[0] += time.perf_counter() - started
            return {name: (torch.from_numpy(deltas[layer]), None) for layer, name in step.items()}

        started = time.perf_counter()
        self.solver.discard()
        try:
            result = edit(self.model, self.tok, [requests], self.hparams, self.c0, schedule=_schedule(client),
                          templates=self.templates, exchange=exchange)
        except BaseException:
            self.solver.discard()
            raise
        seconds["compute"] = time.perf_counter() - started - in_exchange[0]  # targets, keys, statistics
        delta = result.delta
        with _Clock(seconds, "apply"):
            delta.apply(self.model)
        try:
            with _Clock(seconds, "report"):
                for layer in (pending if client.sequential else [s.layer for s in client.params.layers]):
                    client.report_applied(layer)
            client.wait_finished()
        except BaseException:
            delta.revert(self.model)  # nothing of a failed or rolled-back round stays
            self.solver.discard()
            raise
        self.solver.commit()  # HE mode: C_acc grows only with completed rounds
        with _Clock(seconds, "checkpoint"):
            checkpoint, delta_path = round_dir / "model", round_dir / "delta"
            self.model.to(self.loaded.stored_dtype).save_pretrained(checkpoint)
            (self.loaded.tok_as_stored or self.tok).save_pretrained(checkpoint)
            delta.save(delta_path)
        metrics = None
        if self.evaluate:
            with _Clock(seconds, "evaluate"):
                metrics = self._evaluate([e.record for e in edits])
        return {"applied_layers": [s.layer for s in client.params.layers], "checkpoint_path": str(checkpoint),
                "delta_path": str(delta_path), "metrics": metrics, "stage_seconds": seconds}

    def _evaluate(self, records: list[dict]) -> dict | None:
        """Efficacy / generalization / specificity of this party's own edits (fractions), as simulate."""
        return evaluate_records(self.model, self.tok, records, self.log)


def evaluate_records(model, tok, records: list[dict], log_: logging.Logger = log) -> dict | None:
    from collabedit_secure.eval.report import evaluate_dataset

    usable = [r for r in records if "target_true" in r["requested_rewrite"]]
    if len(usable) < len(records):
        log_.warning("%d of %d edits have no target_true and are not evaluated", len(records) - len(usable),
                     len(records))
    if not usable:
        return None
    # CounterFact's evaluation wants integer case ids; the party's ids are strings.
    numbered = [{**r, "case_id": i} for i, r in enumerate(usable)]
    _, summary = evaluate_dataset(model, tok, numbered, fluency=False)
    return {name: (summary[name] / 100.0 if summary.get(name) is not None else None)
            for name in ("efficacy", "generalization", "specificity")}


def _schedule(client: RoundClient) -> str:
    return "sequential" if client.sequential else "parallel"


# ------------------------------------------------------------------------------------ synthetic


class SyntheticEngine:
    """Fixed statistics from an npz instead of a model, and a 'model' that is ΔW summed over rounds.

    npz keys: model_fingerprint (str), s_kk_<layer> (d_in x d_in, or packed), s_rk_<layer> (d_out x d_in).
    hparams and C0 come from the configuration, as for a real model (same fingerprints).

    Memory: the statistics are memory-mapped (np.savez stores them uncompressed), C0 is read one
    layer at a time (LazyC0), each ΔW goes to disk as soon as it is downloaded, and the model and
    delta files are written a block of rows at a time: the engine holds no layer it is not working on.
    """

    def __init__(self, config, log_: logging.Logger = log):
        self.log = log_
        self.hparams = load_hparams(config.hparams)
        if config.c0 == "embedded":
            raise ValueError("synthetic statistics need c0: a directory of MEMIT statistics")
        self.c0 = LazyC0(c0_files(config.c0, self.hparams))
        self.stats = memmap_npz(config.synthetic)
        self.fingerprints = {"model": str(self.stats["model_fingerprint"]),
                             "hparams": fingerprints.hparams_fingerprint(self.hparams),
                             "c0": fingerprints.c0_fingerprint(self.c0)}
        self.c0.release()  # read again by an HE round's solve, one layer at a time
        self.state_file = config.state_dir / "synthetic_model.npz"
        self.spool_dir = Path(config.state_dir) / "spool"
        self.solver = local_solver(self.hparams, self.c0, config.state_dir, config.device)

    def weights(self) -> dict[int, np.ndarray]:
        """The model: ΔW summed over completed rounds, per layer (memory-mapped; zeros before any)."""
        saved = memmap_npz(self.state_file) if self.state_file.is_file() else {}
        return {layer: saved[f"w_{layer}"] if f"w_{layer}" in saved else np.zeros(self.stats[f"s_rk_{layer}"].shape)
                for layer in self.hparams.layers}

    def restore(self, results: list[dict]) -> str:
        return next((r.get("checkpoint_path", "") for r in reversed(results) if r.get("phase") == "COMPLETED"), "")

    def contribution(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(S_KK's packed upper triangle, S_RK) as float64, views of the file where it holds them so."""
        s_kk = np.asarray(self.stats[f"s_kk_{layer}"], dtype=np.float64)
        s_kk = pack_upper(s_kk) if s_kk.ndim == 2 else s_kk
        return s_kk, np.asarray(self.stats[f"s_rk_{layer}"], dtype=np.float64)

    def run_round(self, client: RoundClient, edits, round_dir: Path) -> dict:
        seconds: dict[str, float] = {}
        client.spool_dir = client.spool_dir or self.spool_dir
        pending = self.spool_dir / f"round-{client.round_id}"  # ΔW per layer as it arrives, until the checkpoint
        pending.mkdir(mode=0o700, parents=True, exist_ok=True)
        deltas: dict[int, Path] = {}

        def keep(layer: int, delta: np.ndarray) -> Path:
            with _Clock(seconds, "apply"):
                path = pending / f"delta_{layer}.npy"
                np.save(path, delta)
                deltas[layer] = path
                return path

        self.solver.discard()
        try:
            for step in client.steps():
                client.exchange_step(step, {layer: self.contribution(layer) for layer in step}, self.solver.solve,
                                     on_delta=keep)
                with _Clock(seconds, "report"):
                    for layer in step:
                        client.report_applied(layer)
            client.wait_finished()
            self.solver.commit()
            with _Clock(seconds, "checkpoint"):
                round_dir.mkdir(parents=True, exist_ok=True)
                received = {layer: np.load(path, mmap_mode="r") for layer, path in sorted(deltas.items())}
                base = self.weights()
                write_npz(round_dir / "delta.npz", {f"delta_{k}": v for k, v in received.items()})
                write_npz(round_dir / "model.npz", {f"w_{k}": RowSum(w, received.get(k)) for k, w in base.items()})
                tmp = self.state_file.with_suffix(".tmp.npz")
                write_npz(tmp, {f"w_{k}": RowSum(w, received.get(k)) for k, w in base.items()})
                del received, base
                tmp.replace(self.state_file)  # committed only now: a failed round never touches it
        finally:
            for path in deltas.values():
                path.unlink(missing_ok=True)
            try:
                pending.rmdir()
            except OSError:
                pass
        return {"applied_layers": sorted(deltas), "checkpoint_path": str(round_dir / "model.npz"),
                "delta_path": str(round_dir / "delta.npz"), "metrics": None, "stage_seconds": seconds}


def read_synthetic_delta(path: str | Path) -> dict[int, np.ndarray]:
    with np.load(path) as data:
        return {int(k.removeprefix("delta_")): np.array(data[k]) for k in data.files}


def write_synthetic_stats(path: str | Path, model_fingerprint: str, stats: dict[int, tuple]) -> Path:
    """stats: layer -> (S_KK d_in x d_in or packed, S_RK d_out x d_in); the npz a synthetic party reads."""
    arrays = {"model_fingerprint": np.array(model_fingerprint)}
    for layer, (s_kk, s_rk) in stats.items():
        arrays[f"s_kk_{layer}"], arrays[f"s_rk_{layer}"] = np.asarray(s_kk), np.asarray(s_rk)
    return write_npz(path, arrays)
