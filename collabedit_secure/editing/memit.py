"""MEMIT as a collaboration: parties contribute per-layer sums, a coordinator solves.

For edited layer l_i (i = 0..L-1) a party with requests j holds keys K (d_in x n) and residuals
R = (Z - cur_z) / (L - i) (d_out x n), and contributes

    S_KK = K Kᵀ,   S_RK = R Kᵀ;     the coordinator solves   ΔW = ΣS_RK (λC0 + C_acc + ΣS_KK)⁻¹.

Z is optimised once per round on the model as it stands before the round. Schedules:
  parallel    every layer's K, R on the unedited model; one aggregation for all layers (CollabEdit's code);
  sequential  layer by layer: contributions on the current weights, aggregate, solve, apply ΔW_l, go on
              (true MEMIT; collaborative == global exactly, because every party sees the same weights).
Global MEMIT is one party holding every request; a party's local MEMIT is one party with its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..kernels import unpack_upper
from ..merging.collabedit import check_preservation, collabedit_merge, update_dynamic_covariance  # noqa: F401 (re-export)
from .adapters import ModelAdapter
from .context import check_templates, generate_context_templates
from .delta import EditDelta, creation_info
from .hparams import MemitHparams
from .keys import compute_keys
from .requests import EditRequest, check_unique_ids, shared_keys
from .targets import TargetCache, check_prompts_fit, compute_targets
from .tokens import check_tokenizer, context_limit

log = logging.getLogger(__name__)

SCHEDULES = ("parallel", "sequential")


@dataclass
class LayerContribution:
    layer: int
    s_kk: torch.Tensor  # K Kᵀ, d_in x d_in, float64
    s_rk: torch.Tensor  # R Kᵀ, d_out x d_in, float64
    keys: torch.Tensor | None = None  # K, kept only when asked (tests, diagnostics)
    residuals: torch.Tensor | None = None  # R


Aggregate = Callable[[str, list[LayerContribution]], tuple[torch.Tensor, torch.Tensor]]
# One step of a schedule: the parties' contributions to the step's layers in, ΔW per module out (and
# the summed S_KK where it is known, for C_acc). The default sums and solves here; a federated party
# sends its own contribution to the coordinator instead and receives ΔW (collabedit_secure/party).
Exchange = Callable[[dict[int, str], list[dict[int, "LayerContribution"]]],
                    dict[str, tuple[torch.Tensor, torch.Tensor | None]]]


def sum_contributions(layer_name: str, contributions: list[LayerContribution]) -> tuple[torch.Tensor, torch.Tensor]:
    """In-process aggregation: plain sums (the secure protocol replaces this)."""
    del layer_name
    s_kk = sum(c.s_kk for c in contributions)
    s_rk = sum(c.s_rk for c in contributions)
    return s_kk, s_rk


class PartyWorker:
    """One party's side of a round: its requests, its targets Z, its per-layer contributions."""

    def __init__(self, model, tok, requests: list[EditRequest], hparams: MemitHparams,
                 templates: list[list[str]], adapter: ModelAdapter | None = None, keep_factors: bool = False,
                 target_cache: TargetCache | None = None):
        self.model, self.tok, self.requests, self.hp = model, tok, requests, hparams
        self.target_cache = target_cache
        self.templates = templates
        self.adapter = adapter or ModelAdapter.from_model(model, hparams)
        self.keep_factors = keep_factors
        self.targets: torch.Tensor | None = None

    def compute_targets(self) -> torch.Tensor:
        """Z for this round: call once, on the model before any of this round's updates."""
        self.targets = compute_targets(self.model, self.tok, self.adapter, self.hp, self.requests, self.templates,
                                       self.target_cache)
        return self.targets

    def contributions(self, positions: list[int]) -> dict[int, LayerContribution]:
        """Contributions for hparams.layers[i], i in positions, on the model's current weights."""
        if self.targets is None:
            raise RuntimeError("compute_targets() must run before contributions() in each round")
        layers = [self.hp.layers[i] for i in positions]
        keys, cur_z = compute_keys(self.model, self.tok, self.adapter, self.requests, layers,
                                   self.templates, self.hp.z_layer)
        out = {}
        for i, layer in zip(positions, layers):
            k = keys[layer]
            r = (self.targets - cur_z) / (len(self.hp.layers) - i)  # spread the remaining residual
            out[layer] = LayerContribution(layer, k @ k.T, r @ k.T, k if self.keep_factors else None,
                                           r if self.keep_factors else None)
        return out


@dataclass
class EditResult:
    delta: EditDelta
    s_kk: dict[str, torch.Tensor]  # aggregated K Kᵀ per module, for C_acc += λ S_KK
    contributions: list[dict[int, LayerContribution]]  # per party, per layer, if asked for (else empty)
    targets: list[torch.Tensor]  # per party, Z (hidden x n_i, float64): what the edit asked for
    lambdas: dict[str, float]  # lambda per module, for C_acc += λ S_KK
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: compute_z, then keys and solve


def _check_parties(parties) -> None:
    if not isinstance(parties, (list, tuple)) or not parties:
        raise ValueError("edit needs at least one party (a list of lists of EditRequest)")
    for index, party in enumerate(parties):
        if not isinstance(party, (list, tuple)) or not party:
            raise ValueError(f"party {index} has no edit requests; nothing would be edited for it")
        for request in party:
            if not isinstance(request, EditRequest):
                raise TypeError(f"party {index}: expected EditRequest, got {type(request).__name__}")
    check_unique_ids([request for party in parties for request in party])


def _by_module(matrices: dict | None, adapter: ModelAdapter, layers: list[int], what: str,
               dims: dict[str, int], required: bool) -> dict[str, torch.Tensor]:
    """Per-layer square matrices keyed by layer index or module name, re-keyed by module name."""
    matrices = matrices or {}
    out = {}
    for layer in layers:
        name = adapter.rewrite_name(layer)
        value = matrices.get(name, matrices.get(layer))
        if value is None:
            if required:
                raise KeyError(f"{what} missing for layer {layer} ({name})")
            continue
        value = unpack_upper(value) if value.dim() == 1 else value
        if tuple(value.shape) != (dims[name], dims[name]):
            raise ValueError(f"{what} for {name} has shape {tuple(value.shape)}, expected ({dims[name]}, {dims[name]})")
        out[name] = value.to(torch.float64).cpu()
    return out


def _solve(name, c0, lam, s_kk, s_rk, c_acc) -> torch.Tensor:
    return collabedit_merge(c0[name], lam[name], s_kk, s_rk, c_acc=c_acc.get(name), layer=name)


def edit(model, tok, parties: list[list[EditRequest]], hparams: MemitHparams, c0: dict,
         schedule: str = "sequential", c_acc: dict | None = None, templates: list[list[str]] | None = None,
         aggregate: Aggregate = sum_contributions, keep_factors: bool = False,
         stats_files: dict | None = None, target_cache: TargetCache | None = None,
         exchange: Exchange | None = None, keep_contributions: bool = False) -> EditResult:
    """One round of collaborative MEMIT; the model is left exactly as it was, the update is returned.

    `keep_contributions` keeps every party's per-layer sums (and factors, with keep_factors) in the
    result, for tests and analysis: parties x layers d_in x d_in matrices. By default each is
    dropped once its layer is solved, so memory stays at one layer's worth, however many layers.

    `schedule` is "sequential" (true MEMIT, the default as in the CLI) or "parallel" (CollabEdit's code).

    `target_cache` shares compute_z results between edits that start from identical weights.
    """
    _check_parties(parties)
    check_tokenizer(tok)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    adapter = ModelAdapter.from_model(model, hparams)
    hparams.validate_for(adapter.n_layer, context_limit(model))
    layers = hparams.layers
    names = [adapter.rewrite_name(layer) for layer in layers]
    lam = dict(zip(names, hparams.layer_lambdas()))
    dims = {name: adapter.key_dim(model, layer) for name, layer in zip(names, layers)}
    c0 = _by_module(c0, adapter, layers, "C0", dims, required=True)
    c_acc = _by_module(c_acc, adapter, layers, "C_acc", dims, required=False)
    for name in names:  # before compute_z, so that a bad C0 costs no optimisation
        check_preservation(c0[name], lam[name], c_acc.get(name), layer=name)
    base_fingerprint, base_digest = EditDelta.fingerprint(model, names), EditDelta.base_digest(model)
    if templates is None:
        templates = generate_context_templates(model, tok, hparams.context_template_seed,
                                               hparams.context_template_length_params)
    templates = check_templates(templates)
    check_prompts_fit(model, tok, [r for party in parties for r in party], templates)
    for warning in shared_keys([r for party in parties for r in party]):
        log.warning(warning)

    dtypes = _float_dtypes(model)
    originals: dict[int, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        workers = [PartyWorker(model, tok, list(p), hparams, templates, adapter, keep_factors, target_cache)
                   for p in parties]
        # Targets in the model's own precision, as MEMIT: each is a function of the unedited weights
        # and one request, so every party and global editing get the same z in any precision. The
        # float64 copy is for the keys, which see the updates of earlier layers.
        started = time.perf_counter()
        for worker in workers:
            worker.compute_targets()
        seconds = {"compute_z": time.perf_counter() - started}
        started = time.perf_counter()
        if hparams.edit_dtype == "float64":
            model.double()  # exact: every float32 value is a float64, and converts back unchanged
        originals = {layer: adapter.weight_out_in(model, layer).detach().clone() for layer in layers}
        if exchange is None:
            exchange = _local_exchange(c0, c_acc, lam, aggregate)
        if schedule == "parallel":
            updates, s_kk, kept = _run_parallel(workers, layers, names, exchange, keep_contributions)
        else:
            updates, s_kk, kept = _run_sequential(model, adapter, workers, originals, names, exchange,
                                                  keep_contributions)
        seconds["keys+solve"] = time.perf_counter() - started
    finally:
        with torch.no_grad():  # never leave the shared model edited
            for layer, weight in originals.items():
                adapter.weight_out_in(model, layer).copy_(weight)
        _restore_dtypes(model, dtypes)
        model.train(was_training)

    metadata = {
        "algorithm": "MEMIT", "schedule": schedule, "lambda": hparams.mom2_update_weight,
        "hparams": hparams.to_dict(),
        "context_templates": templates, "request_ids": [[str(r.case_id) for r in p] for p in parties],
        "stats_files": stats_files or {}, "model_fingerprint": base_fingerprint,
        "base_weights_digest": base_digest,
        "weights_dtype": str(dtypes[f"{names[0]}.weight"]).removeprefix("torch."),
        "model_family": adapter.family, "dynamic_covariance": bool(c_acc), **creation_info(),
    }
    return EditResult(EditDelta(updates, metadata), s_kk, kept, [w.targets for w in workers], lam, seconds)


def _float_dtypes(model) -> dict[str, torch.dtype]:
    """Each floating parameter's and buffer's dtype: models mix them (float32 rotary buffers in a
    bfloat16 Llama), so one model-wide cast back would not restore the model."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.dtype for name, t in tensors if t.is_floating_point()}


@torch.no_grad()
def _restore_dtypes(model, dtypes: dict[str, torch.dtype]) -> None:
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name in dtypes and t.dtype != dtypes[name]:
            t.data = t.data.to(dtypes[name])


def _local_exchange(c0, c_acc, lam, aggregate) -> Exchange:
    """Sum the contributions in this process and solve each layer: global and simulated editing."""

    def exchange(step: dict[int, str], per_party: list[dict[int, LayerContribution]]):
        solved = {}
        for layer, name in step.items():
            kk, rk = aggregate(name, [p[layer] for p in per_party])
            solved[name] = (_solve(name, c0, lam, kk, rk, c_acc), unpack_upper(kk) if kk.dim() == 1 else kk)
        return solved

    return exchange


def _run_parallel(workers, layers, names, exchange: Exchange, keep: bool):
    """All layers' contributions on the unedited model, then one exchange for all layers."""
    per_party = [w.contributions(list(range(len(layers)))) for w in workers]
    solved = exchange(dict(zip(layers, names)), per_party)
    updates = {name: solved[name][0] for name in names}
    s_kk = {name: solved[name][1] for name in names if solved[name][1] is not None}
    return updates, s_kk, per_party if keep else []


@torch.no_grad()
def _apply_layer(model, adapter, layer, originals, update) -> None:
    """W_l = W⁰_l + ΔW_l in the weight's dtype (MEMIT writes the update at once)."""
    weight = adapter.weight_out_in(model, layer)
    weight.copy_(originals[layer] + update.to(weight.dtype).to(weight.device))


def _run_sequential(model, adapter, workers, originals, names, exchange: Exchange, keep: bool):
    """Layer-synchronous rounds: every party on the current weights, exchange, apply, next layer."""
    layers = workers[0].hp.layers
    updates, s_kk = {}, {}
    per_party = [{} for _ in workers] if keep else []
    for i, (layer, name) in enumerate(zip(layers, names)):
        contributions = [w.contributions([i]) for w in workers]
        for store, contribution in zip(per_party, contributions):
            store[layer] = contribution[layer]
        updates[name], summed = exchange({layer: name}, contributions)[name]
        if summed is not None:
            s_kk[name] = summed
        _apply_layer(model, adapter, layer, originals, updates[name])
    return updates, s_kk, per_party
