"""MEMIT hyperparameters, with the field names of the MEMIT/EasyEdit JSON and YAML files."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml


# Keys EasyEdit puts in its MEMIT YAML files that describe the run, not the algorithm. The commands
# read these (pipeline.run_settings): where the model runs and where its statistics are.
RUN_SETTING_KEYS = ("alg_name", "model_name", "device", "model_parallel", "stats_dir")
# These the project has no use for: each is named in a notice, never dropped without a word.
IGNORED_KEYS = {
    "fp16": "the model is edited in float32 and saved in its checkpoint's dtype",
    "max_length": "EasyEdit's generation length in its own evaluation; see eval --fluency-tokens",
    "batch_size": "EasyEdit's batching of its requests; an edit takes every request of --requests",
}
EASYEDIT_ONLY_KEYS = frozenset(RUN_SETTING_KEYS) | frozenset(IGNORED_KEYS)
SUPPORTED_FACT_TOKENS = ("subject_last",)
_FLOAT_FIELDS = ("v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "v_early_stop_loss")
_INT_FIELDS = ("v_loss_layer", "v_num_grad_steps", "mom2_n_samples", "context_template_seed", "mom2_batch_size",
               "mom2_max_length")


def _as_int(name: str, value):
    """An integer, also from YAML 1.1's strings and floats ("1e5", 100000.0); never a bool or 2.5."""
    if value is None and name == "mom2_max_length":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        number = float(value) if isinstance(value, (str, float)) else None
    except ValueError:
        number = None
    if number is None or not number.is_integer():
        raise HparamsError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _as_lambda(value) -> float | list[float]:
    """mom2_update_weight: a number, or a list of numbers (one per layer); YAML 1.1 strings read."""
    try:
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        if not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError):
        pass
    raise HparamsError(f"mom2_update_weight must be a number or a list of numbers (one per layer), got {value!r}")


def _run_settings(data: dict) -> dict:
    """EasyEdit's run settings, checked for their type here (their meaning needs the command line)."""
    settings = {k: data[k] for k in RUN_SETTING_KEYS if data.get(k) is not None}
    device = settings.get("device")
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        if "device" in settings:
            raise HparamsError(f"device must be a GPU index (EasyEdit's 0) or a device name, got {device!r}")
    if not isinstance(settings.get("model_parallel", False), bool):
        raise HparamsError(f"model_parallel must be true or false, got {settings['model_parallel']!r}")
    for name in ("stats_dir", "model_name"):
        if name in settings and not isinstance(settings[name], str):
            raise HparamsError(f"{name} must be a path (a string), got {settings[name]!r}")
    return settings


def _ignored_notices(data: dict) -> tuple[str, ...]:
    """One line per given field that nothing here reads, saying why."""
    lines = [f"{key} is ignored: {why}" for key, why in IGNORED_KEYS.items() if key in data]
    if data.get("mom2_adjustment") is False:
        lines.append("mom2_adjustment false is ignored: C0 is always used, as in MEMIT's published runs")
    if data.get("mom2_dtype", "float32") != "float32":
        lines.append(f"mom2_dtype {data['mom2_dtype']} is ignored: C0 is always accumulated in float64")
    return tuple(lines)


class HparamsError(ValueError):
    """A hyperparameter file or value is invalid."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (PyYAML keeps the last one without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


@dataclass
class MemitHparams:
    layers: list[int]
    v_loss_layer: int
    layer_selection: str = "all"
    fact_token: str = "subject_last"
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    # Ours: compute_z stops once its loss is below this (MEMIT hard-codes 5e-2). A lower value spends
    # more steps so that a target is met with margin when the solve only partly realises it.
    v_early_stop_loss: float = 5e-2
    mom2_adjustment: bool = True  # read for MEMIT-file compatibility; C0 is always used, as in MEMIT
    # lambda, the weight of C0. Ours: also a list, one per edited layer (MEMIT uses one for all).
    mom2_update_weight: float | list[float] = 20000.0
    # Module templates; None means "the model family's default" (see adapters.FAMILIES).
    rewrite_module_tmp: str | None = None
    layer_module_tmp: str | None = None
    mlp_module_tmp: str | None = None
    attn_module_tmp: str | None = None
    ln_f_module: str | None = None
    lm_head_module: str | None = None
    mom2_dataset: str = "wikipedia"
    mom2_n_samples: int = 100000
    mom2_dtype: str = "float32"  # read for MEMIT-file compatibility; C0 always accumulates in float64
    # Ours: MEMIT leaves templates unseeded; a federation needs them reproducible.
    context_template_seed: int = 0
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[10, 5]])
    mom2_batch_size: int = 16
    mom2_max_length: int | None = None  # None: the model's n_positions
    # Ours: the precision of the key passes. "float64" runs them on a float64 copy of the weights, so
    # that in the sequential schedule round-off differences between two aggregation orders
    # (collaborative vs global) cannot flip float32 roundings of the edited weights and cascade
    # through later layers. Small models only: it doubles memory and time. Targets (compute_z) run
    # on the unedited weights in the model's own precision: no aggregation comes before them.
    edit_dtype: str = "float32"
    # Not a hyperparameter: the YAML file these came from, named by errors found once the model is known.
    source: ClassVar[str | None] = None
    # Not hyperparameters either: EasyEdit's run settings the file gave (RUN_SETTING_KEYS), and one line
    # per field it gave that is not used, for the commands to print.
    run_settings: ClassVar[dict] = {}
    notices: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in _FLOAT_FIELDS:  # YAML 1.1 reads "5e-1" as a string
            value = getattr(self, name)
            try:
                setattr(self, name, float(value))
            except (TypeError, ValueError):
                raise HparamsError(f"{name} must be a number, got {value!r}") from None
        for name in _INT_FIELDS:
            setattr(self, name, _as_int(name, getattr(self, name)))
        self.mom2_update_weight = _as_lambda(self.mom2_update_weight)
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.layers, list) or not self.layers:
            raise HparamsError("layers must be a non-empty list of layer indices")
        if any(not isinstance(l, int) or isinstance(l, bool) or l < 0 for l in self.layers):
            raise HparamsError(f"layers must be non-negative integers, got {self.layers}")
        if self.layers != sorted(set(self.layers)):
            raise HparamsError(f"layers must be strictly increasing, got {self.layers}")
        if self.fact_token not in SUPPORTED_FACT_TOKENS:
            raise HparamsError(
                f"fact_token {self.fact_token!r} is not supported; only {SUPPORTED_FACT_TOKENS} "
                "(MEMIT's other modes are unused or, for 'last', known to be broken)"
            )
        if not 0 <= self.context_template_seed < 2**63:  # what torch and random.Random both take
            raise HparamsError(f"context_template_seed must be between 0 and 2**63 - 1, got {self.context_template_seed}")
        if not isinstance(self.mom2_dataset, str):
            raise HparamsError(f"mom2_dataset must be a name (a string), got {self.mom2_dataset!r}")
        if self.v_num_grad_steps < 1:
            raise HparamsError(f"v_num_grad_steps must be >= 1, got {self.v_num_grad_steps}")
        for name in _FLOAT_FIELDS:
            if not math.isfinite(getattr(self, name)):
                raise HparamsError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("v_lr", "clamp_norm_factor"):
            if getattr(self, name) <= 0:
                raise HparamsError(f"{name} must be > 0, got {getattr(self, name)}")
        lambdas = self.mom2_update_weight
        if isinstance(lambdas, list) and len(lambdas) != len(self.layers):
            raise HparamsError(f"mom2_update_weight lists {len(lambdas)} values for {len(self.layers)} layers "
                               f"{self.layers}; give one per layer, or one number for all")
        for value in lambdas if isinstance(lambdas, list) else [lambdas]:
            if not math.isfinite(value) or value <= 0:
                raise HparamsError(f"mom2_update_weight must be finite and > 0, got {value}")
        for name in ("mom2_n_samples", "mom2_batch_size"):
            if getattr(self, name) < 1:
                raise HparamsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mom2_max_length is not None and self.mom2_max_length < 1:
            raise HparamsError(f"mom2_max_length must be >= 1 (or null: the model's context), "
                               f"got {self.mom2_max_length}")
        if not isinstance(self.mom2_adjustment, bool):
            raise HparamsError(f"mom2_adjustment must be true or false, got {self.mom2_adjustment!r}")
        if self.layer_selection != "all":
            raise HparamsError(f"layer_selection {self.layer_selection!r} is not supported; only 'all' "
                               "(MEMIT's 'random' is unused in its published runs)")
        for name, template in self.module_overrides().items():
            if template is None:
                continue
            slots = name in ("rewrite", "layer", "mlp", "attn")  # per-layer modules; ln_f and lm_head are one
            if not isinstance(template, str) or (template.count("{}") != 1 if slots else "{}" in template):
                expected = "exactly one '{}' for the layer index" if slots else "no '{}' (one module, not per layer)"
                raise HparamsError(f"{name}_module{'_tmp' if slots else ''} must be a module path with "
                                   f"{expected}, got {template!r}")
        for name in ("v_weight_decay", "kl_factor", "v_early_stop_loss"):
            if getattr(self, name) < 0:
                raise HparamsError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mom2_dtype not in ("float16", "bfloat16", "float32", "float64"):
            raise HparamsError(f"mom2_dtype must be a float dtype name, got {self.mom2_dtype!r}")
        if self.edit_dtype not in ("float32", "float64"):
            raise HparamsError(f"edit_dtype must be float32 or float64, got {self.edit_dtype!r}")
        pairs = self.context_template_length_params
        if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) for p in pairs):
            raise HparamsError(f"context_template_length_params must be a list of [max_tokens, count] "
                               f"pairs, e.g. [[10, 5]], got {pairs!r}")
        for pair in pairs:
            integers = all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            if len(pair) != 2 or not integers or pair[0] < 1 or pair[1] < 0 or pair[1] % 5:
                raise HparamsError(
                    "context_template_length_params entries are [max_tokens >= 1, count a multiple of 5 "
                    f"(one per seed prompt)], got {pair}"
                )

    def validate_for(self, n_layer: int, context: int | None = None) -> None:
        """Checks that need the model's depth and, where it has one, its context length."""
        where = f"{self.source}: " if self.source else "hparams "
        longest = max((pair[0] for pair in self.context_template_length_params), default=0)
        if context is not None and longest >= context:  # a template is followed by the prompt and target
            raise HparamsError(f"{where}context_template_length_params asks for {longest}-token templates; the "
                               f"model's context is {context} tokens")
        if self.layers[-1] >= n_layer:
            raise HparamsError(f"{where}layers {self.layers} out of range for a model with {n_layer} layers "
                               f"(0-{n_layer - 1})")
        if not 0 <= self.v_loss_layer < n_layer:
            raise HparamsError(f"{where}v_loss_layer {self.v_loss_layer} out of range for a model with {n_layer} "
                               f"layers (0-{n_layer - 1})")

    def layer_lambdas(self) -> list[float]:
        """lambda for each edited layer, in the order of `layers`."""
        lambdas = self.mom2_update_weight
        return list(lambdas) if isinstance(lambdas, list) else [lambdas] * len(self.layers)

    @property
    def z_layer(self) -> int:
        return self.layers[-1]

    @property
    def loss_layer(self) -> int:
        return max(self.v_loss_layer, self.z_layer)

    def module_overrides(self) -> dict[str, str | None]:
        return {
            "rewrite": self.rewrite_module_tmp, "layer": self.layer_module_tmp, "mlp": self.mlp_module_tmp,
            "attn": self.attn_module_tmp, "ln_f": self.ln_f_module, "lm_head": self.lm_head_module,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "MemitHparams":
        algorithm = data.get("alg_name")
        if algorithm is not None and str(algorithm).upper() != "MEMIT":
            raise HparamsError(f"these are {algorithm} hyperparameters (alg_name), not MEMIT's")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known and k not in EASYEDIT_ONLY_KEYS)
        if unknown:
            raise HparamsError(f"unknown MEMIT hyperparameter(s): {', '.join(unknown)}")
        missing = [k for k in ("layers", "v_loss_layer") if k not in data]
        if missing:
            raise HparamsError(f"missing required hyperparameter(s): {', '.join(missing)}")
        hparams = cls(**{k: v for k, v in data.items() if k in known})
        hparams.run_settings = _run_settings(data)
        hparams.notices = _ignored_notices(data)
        return hparams

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MemitHparams":
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.load(handle, Loader=_UniqueKeyLoader)
        except UnicodeDecodeError as err:
            raise HparamsError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(err, "problem", None) or str(err)
            raise HparamsError(f"{path}: not valid YAML{at}: {problem}") from None
        if not isinstance(data, dict):
            raise HparamsError(f"{path}: expected a mapping of hyperparameters")
        base = data.pop("base", None)  # a shipped file whose values this one overrides
        try:
            if base is not None:
                data = {**cls.builtin(base).to_dict(), **data}
            hparams = cls.from_dict(data)
        except HparamsError as err:
            raise HparamsError(f"{path}: {err}") from None
        hparams.source = str(path)
        hparams.notices = tuple(f"{path}: {line}" for line in hparams.notices)
        return hparams

    @classmethod
    def builtin(cls, name: str) -> "MemitHparams":
        """One of the shipped files in editing/hparams/, e.g. "gpt2-xl" or "default-world"."""
        folder = Path(__file__).parent / "hparams"
        shipped = sorted(p.stem for p in folder.glob("*.yaml"))
        if name not in shipped:  # a name, not a path: `base` cannot reach files outside this folder
            raise HparamsError(f"no shipped hparams {name!r}; available: {', '.join(shipped)}")
        return cls.from_yaml(folder / f"{name}.yaml")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        with open(path, "w") as handle:
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False)
