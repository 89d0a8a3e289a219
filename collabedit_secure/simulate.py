"""`collabedit simulate`: an in-process collaborative editing experiment.

N parties each hold M private edits per round, for R rounds. Every method starts from the same
model and edits the same records; the model is then evaluated on all edited records.

    collabedit  parties send S_KK, S_RK; one solve per layer (with the dynamic covariance C_acc)
    global      all edits in one place: the upper bound collabedit must equal
    ta / sa     Task Arithmetic (sum of local Delta_i) / Simple Average (sum / n)
    ties        TIES-merging of the local Delta_i
    none        the unedited model, for reference

In the sequential schedule the collaborative run follows the layer-synchronous protocol
(aggregate layer l, solve, apply, recompute layer l+1), which is what makes it equal global MEMIT.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .editing.adapters import ModelAdapter
from .editing.context import generate_context_templates
from .editing.delta import EditDelta
from .editing.memit import edit
from .merging.collabedit import update_dynamic_covariance
from .editing.requests import EditRequest
from .editing.targets import TargetCache
from .eval.consistency import ConsistencyReference, consistency_reference
from .eval.context_window import check_context
from .eval.counterfact import summarize_counterfact
from .eval.report import coverage_notes, evaluate_dataset, format_summary_table, format_value
from .files import json_safe
from .merging.baselines import simple_average, task_arithmetic, ties_merge
from .pipeline import (
    DEFAULT_MODEL, check_c0_source, check_model_path, covariances, default_hparams, load_model, run_settings,
)
from .world.config import WorldConfig

METHODS = ("collabedit", "global", "ta", "sa", "ties", "none")
LOCAL_MERGES = {"ta": task_arithmetic, "sa": simple_average, "ties": ties_merge}


MEMIT_FLUENCY_TOKENS, WORLD_FLUENCY_TOKENS = 100, 40


@dataclass
class SimulationConfig:
    parties: int = 10
    edits_per_party: int = 20
    rounds: int = 1
    schedule: str = "sequential"
    methods: list[str] = field(default_factory=lambda: ["collabedit", "global", "ta", "sa", "ties"])
    dataset: Path | None = None
    model: str = "default"
    device: str | None = None  # None: the hparams' EasyEdit device, else cpu
    hparams: Path | None = None
    corpus: str = "world"  # C0's corpus: the embedded world's, or a text file for other models
    stats: Path | None = None  # or MEMIT-layout npz files, instead of computing C0
    seed: int = 0
    fluency: bool = True
    # Tokens per fluency sample, prompt included. None: MEMIT's 100, or for the embedded world the 40
    # that its recorded results used (validate() fills it in, so the JSON records the value).
    fluency_max_len: int | None = None
    float64_weights: bool = False  # hold the model in float64, so later rounds build on unrounded updates
    # Consistency's reference: 'world' or a directory of MEMIT's snippet and TF-IDF files. None: the
    # world's own on the embedded default without --dataset, else no consistency. Needs fluency.
    consistency: str | None = None

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise ValueError("no methods to run")
        repeated = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if repeated:
            raise ValueError(f"method(s) {repeated} listed more than once")
        for name in ("parties", "edits_per_party", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.fluency_max_len is None:
            self.fluency_max_len = WORLD_FLUENCY_TOKENS if self.model == DEFAULT_MODEL else MEMIT_FLUENCY_TOKENS
        if self.fluency_max_len < 1:
            raise ValueError(f"fluency-tokens must be >= 1, got {self.fluency_max_len}")
        if self.schedule not in ("parallel", "sequential"):
            raise ValueError(f"schedule must be parallel or sequential, got {self.schedule!r}")
        if self.model != DEFAULT_MODEL and self.dataset is None:
            raise ValueError(f"--model {self.model} needs --dataset (the embedded world's edits belong to "
                             "--model default)")
        # EasyEdit's device and stats_dir in the hparams, where the command line gives none.
        self.device, self.stats = run_settings(self.hparams, self.device, self.stats, self.corpus)
        check_model_path(self.model)
        check_c0_source(self.model, self.corpus, self.stats)
        if self.consistency is not None and not self.fluency:
            raise ValueError("consistency scores the fluency generations: drop --no-fluency")
        if self.dataset is not None:
            from .eval.datasets import check_dataset, load_dataset

            kind = check_dataset(self.dataset, fluency=self.fluency,  # fail now, not after the edits
                                 consistency=self.consistency is not None)
            if kind != "counterfact":
                raise ValueError(f"simulate needs a CounterFact-format dataset; {self.dataset} is {kind}")
            split_cases(load_dataset(self.dataset)[1], self)  # enough distinct subjects, before the model loads
        elif self.edits_needed() > WorldConfig().n_subjects:  # one edit per subject, as split_cases draws
            raise ValueError(self._too_few(WorldConfig().n_subjects, "the embedded world has {} subjects"))

    def edits_needed(self) -> int:
        return self.parties * self.edits_per_party * self.rounds

    def _too_few(self, available: int, what: str) -> str:
        return (f"{what.format(available)}; {self.parties} parties x {self.edits_per_party} edits x "
                f"{self.rounds} rounds need {self.edits_needed()} (one edit per subject)")


def split_cases(records: list[dict], config: SimulationConfig) -> list[list[list[dict]]]:
    """rounds x parties x edits, drawn without replacement by a seeded shuffle, at most one edit per
    subject: two edits of one subject whose prompts put it first share a key vector, so they would ask
    the same key for two different values (an ill-posed least-squares problem, not an editing test)."""
    needed = config.edits_needed()
    rng = random.Random(config.seed)
    pool = list(records)
    rng.shuffle(pool)
    chosen, seen = [], set()
    for record in pool:
        rewrite = record["requested_rewrite"]
        if rewrite["subject"] not in seen:
            seen.add(rewrite["subject"])
            chosen.append(record)
        if len(chosen) == needed:
            break
    if len(chosen) < needed:
        raise ValueError(config._too_few(len(chosen), "the dataset has {} records with distinct subjects"))
    per_round = config.parties * config.edits_per_party
    m = config.edits_per_party
    return [[chosen[r * per_round + p * m: r * per_round + (p + 1) * m] for p in range(config.parties)]
            for r in range(config.rounds)]


def _requests(party_records: list[dict]) -> list[EditRequest]:
    return [EditRequest.from_record(record) for record in party_records]


class Experiment:
    """Holds the model, C0, templates and the base weights every method starts from."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        self.loaded = load_model(config.model, config.device)
        self.model, self.tok = self.loaded.model, self.loaded.tok
        self.hparams = default_hparams(self.loaded, config.hparams, config.schedule)
        self.c0, self.c0_sources = covariances(self.loaded, self.hparams, corpus=config.corpus, stats_dir=config.stats)
        self.templates = generate_context_templates(self.model, self.tok, self.hparams.context_template_seed,
                                                    self.hparams.context_template_length_params)
        if config.float64_weights:  # after C0 and the templates, which belong to the model as loaded
            self.model.double()
        self._adapter = ModelAdapter.from_model(self.model, self.hparams)
        self._base = {layer: self._adapter.weight_out_in(self.model, layer).detach().clone()
                      for layer in self.hparams.layers}
        self.targets = TargetCache()  # every method's first round asks for the same z's

    @torch.no_grad()
    def reset(self) -> None:
        # Weights are looked up each time: an edit with edit_dtype float64 converts the model and back,
        # which gives every parameter new storage.
        for layer, base in self._base.items():
            self._adapter.weight_out_in(self.model, layer).copy_(base)

    def _edit(self, parties, c_acc=None):
        return edit(self.model, self.tok, parties, self.hparams, self.c0, schedule=self.config.schedule,
                    c_acc=c_acc, templates=self.templates, stats_files=self.c0_sources,
                    target_cache=self.targets)

    def run_method(self, method: str, rounds: list[list[list[dict]]]) -> tuple[float, float, list[dict]]:
        """Edit round after round with one method; returns its cost and elapsed seconds, each round's ΔW.

        The cost is the elapsed time plus the compute_z time of targets reused from an earlier
        method, so every method is charged what it would cost alone.
        """
        self.reset()
        if method == "none":  # the unedited model: nothing to edit, nothing to time
            return 0.0, 0.0, []
        started, reused_before = time.perf_counter(), self.targets.reused_s
        c_acc, round_deltas = None, []
        for parties in rounds:
            requests = [_requests(p) for p in parties]
            if method in ("collabedit", "global"):
                result = self._edit(requests if method == "collabedit" else [sum(requests, [])], c_acc)
                c_acc = update_dynamic_covariance(c_acc, result.s_kk, result.lambdas)
                delta = result.delta
            else:  # every party edits alone from the same model; the server merges their Δ_i
                local = [self._edit([party]).delta for party in requests]
                merged = LOCAL_MERGES[method]([d.weights for d in local])
                delta = EditDelta(merged, {**local[0].metadata, "merge": method,
                                           "request_ids": [d.metadata["request_ids"][0] for d in local]})
            delta.apply(self.model)
            round_deltas.append({name: w.to(torch.float64) for name, w in delta.weights.items()})
        elapsed = time.perf_counter() - started
        return elapsed + self.targets.reused_s - reused_before, elapsed, round_deltas


def relative_errors(deltas: list[dict], reference: list[dict]) -> list[float]:
    """Per round: max over layers of ||ΔW - ΔW_ref||_F / ||ΔW_ref||_F."""
    return [max(float(torch.linalg.norm(got[name] - ref) / torch.linalg.norm(ref)) for name, ref in want.items())
            for got, want in zip(deltas, reference)]


def run_simulation(config: SimulationConfig, json_out: Path | None = None) -> dict:
    """Run every method, print the table, write the JSON; returns the results dict."""
    config.validate()
    torch.manual_seed(config.seed)
    # MEMIT's files are read and checked before the model loads.
    reference = consistency_reference(config.consistency) if config.consistency is not None else None
    experiment = Experiment(config)
    if reference is None and config.fluency and config.dataset is None and experiment.loaded.embedded:
        reference = ConsistencyReference.from_world(experiment.loaded.records, experiment.loaded.corpus())
    records = _load_records(config, experiment)
    rounds = split_cases(records, config)
    edited = [r for parties in rounds for party in parties for r in party]
    # Every evaluation prompt must fit the model before the first method spends minutes editing.
    check_context(experiment.model, experiment.tok, edited, "counterfact", fluency=config.fluency,
                  max_out_len=config.fluency_max_len)
    print(f"{config.parties} parties x {config.edits_per_party} edits x {config.rounds} round(s), "
          f"schedule {config.schedule}, model {experiment.loaded.name}")

    placement = [(r, p) for r, parties in enumerate(rounds) for p, party in enumerate(parties) for _ in party]
    results, cases, deltas = {}, {}, {}
    for method in config.methods:
        wall, elapsed, deltas[method] = experiment.run_method(method, rounds)
        per_case, summary = evaluate_dataset(experiment.model, experiment.tok, edited, fluency=config.fluency,
                                             max_out_len=config.fluency_max_len, seed=config.seed,
                                             consistency=reference)
        summary["wall_time_s"] = wall  # what the method costs alone
        summary["elapsed_s"] = elapsed  # less, where it reused another method's targets
        cases[method] = _placed_cases(per_case, placement)
        if config.rounds > 1:  # forgetting: how the edits of early rounds hold up after later ones
            summary["by_round"] = [_round_summary(cases[method], r) for r in range(config.rounds)]
        results[method] = summary
        print(f"  {method:<10} edited in {wall:7.1f} s; efficacy {format_value(summary['efficacy'])}, "
              f"specificity {format_value(summary['specificity'])}", flush=True)
    experiment.reset()
    drift_note = None
    if "collabedit" in deltas and "global" in deltas:
        # From round 2 on each method edits its own model, and float32 weights can differ by one unit in
        # the last place where two float64 updates equal to 1e-14 round differently (float64_weights: not).
        by_round = relative_errors(deltas["collabedit"], deltas["global"])
        results["collabedit"]["delta_rel_err_vs_global"] = max(by_round)
        results["collabedit"]["delta_rel_err_vs_global_by_round"] = by_round
        drift_note = _float32_drift_note(by_round, config)

    extra = ["wall_time_s"] + (["delta_rel_err_vs_global"] if "delta_rel_err_vs_global" in
                               results.get("collabedit", {}) else [])
    print(format_summary_table(results, extra_columns=extra))
    for note in coverage_notes(results):
        print(note)
    if drift_note:
        print(drift_note)
    if config.rounds > 1:
        print("\nby the round each edit was made in (all evaluated after the last round):")
        print(format_summary_table({f"{method} r{r + 1}": summary["by_round"][r] for method, summary in
                                    results.items() for r in range(config.rounds)}))
    report = {
        "config": {**asdict(config), "dataset": str(config.dataset) if config.dataset else "embedded world",
                   "hparams": experiment.hparams.to_dict()},
        "model": experiment.loaded.name,
        "n_edits": len(edited),
        "context_templates": experiment.templates,
        "c0": experiment.c0_sources,
        "consistency_reference": reference.source if reference is not None else None,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
        "methods": results,
        "cases": cases,  # per method, per edited record: its metrics, round and party (generations left out)
    }
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(json_safe(report, fallback=str), indent=2, allow_nan=False))
        print(f"results written to {json_out}")
    return report


def _float32_drift_note(by_round: list[float], config: SimulationConfig) -> str | None:
    """Why a later round's delta error can exceed 1e-9 though every round's merge is exact."""
    if config.float64_weights or len(by_round) < 2 or max(by_round[1:]) <= 1e-9:
        return None
    worst = max(range(len(by_round)), key=by_round.__getitem__)
    return (f"note: delta_rel_err_vs_global reaches {by_round[worst]:.1e} in round {worst + 1} (round 1: "
            f"{by_round[0]:.1e}). Each method edits its own float32 model: where two updates equal to 1e-14 "
            "round to different float32 weights, the next round's targets, optimised on those weights, "
            "differ by about float32's precision, and the difference grows round by round. "
            "--float64-weights holds the models in float64 between rounds and keeps every round exact.")


def _placed_cases(per_case: list[dict], placement: list[tuple[int, int]]) -> list[dict]:
    return [{"round": r + 1, "party": p + 1, **{k: v for k, v in case.items() if k != "generated_texts"}}
            for case, (r, p) in zip(per_case, placement)]


def _round_summary(cases: list[dict], round_index: int) -> dict:
    return summarize_counterfact([case for case in cases if case["round"] == round_index + 1])


def _load_records(config: SimulationConfig, experiment: Experiment) -> list[dict]:
    if config.dataset is None:
        return experiment.loaded.records  # the embedded default's (validate() asked others for a dataset)
    from .eval.datasets import load_dataset

    kind, records = load_dataset(config.dataset, experiment.tok)
    if kind != "counterfact":
        raise ValueError(f"simulate needs a CounterFact-format dataset; {config.dataset} is {kind}")
    return records
