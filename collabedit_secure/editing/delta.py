"""EditDelta: the per-layer weight updates of one edit, with what is needed to reproduce it.

ΔW is kept as (d_out, d_in) whatever the module's storage; apply() transposes for Conv1D.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import share_as_umask_allows
from .adapters import ModelAdapter, get_module
from .fingerprint import weights_digest

TENSORS_FILE = "delta.safetensors"
METADATA_FILE = "metadata.json"


class DeltaMismatchError(ValueError):
    """The delta does not belong to this model (other weights, shapes or modules)."""


def edited_weight_names(weights: dict) -> list[str]:
    return [f"{module}.weight" for module in sorted(weights)]


@dataclass
class EditDelta:
    weights: dict[str, torch.Tensor]  # module name -> ΔW (d_out, d_in)
    metadata: dict = field(default_factory=dict)
    # model -> (weights before, digest after); weak, so a model dropped without revert() is freed.
    _originals: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError("an EditDelta needs at least one layer update")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"EditDelta metadata must be a mapping, got {type(self.metadata).__name__}")
        for name, update in self.weights.items():
            if not isinstance(update, torch.Tensor) or not update.is_floating_point() or update.dim() != 2:
                described = f"{update.dtype} of shape {tuple(update.shape)}" if isinstance(update, torch.Tensor) \
                    else type(update).__name__
                raise ValueError(f"{name}: ΔW must be a 2-D floating-point tensor, got {described}")
            if not bool(torch.isfinite(update).all()):
                raise ValueError(f"{name}: ΔW has NaN or Inf entries")

    @staticmethod
    def fingerprint(model, module_names) -> str:
        """The edited weights' bytes (metadata `model_fingerprint`; `edited_fingerprint` after apply)."""
        return weights_digest(model, edited_weight_names(dict.fromkeys(module_names)))

    @staticmethod
    def base_digest(model) -> str:
        """Every weight's bytes (metadata `base_weights_digest`): keys and targets depend on the
        layers below and above the edited ones too."""
        return weights_digest(model)

    def _stored_view(self, model, name: str) -> tuple[torch.nn.Parameter, torch.Tensor]:
        """The module's weight, and ΔW laid out like it."""
        module = get_module(model, name)
        update = self.weights[name]
        transposed = ModelAdapter.is_transposed(module)
        stored = update.T if transposed else update
        if tuple(stored.shape) != tuple(module.weight.shape):
            out_in = tuple(module.weight.shape)[::-1] if transposed else tuple(module.weight.shape)
            raise DeltaMismatchError(f"{name}: delta has shape {tuple(update.shape)} (out, in) but the weight "
                                     f"is {out_in} (out, in)")
        return module.weight, stored

    def _check_modules(self, model) -> None:
        missing = sorted(set(edited_weight_names(self.weights)) - set(model.state_dict()))
        if missing:
            raise DeltaMismatchError(f"the model has no {', '.join(missing)}: this delta is for another architecture")

    def _check_base(self, model) -> None:
        self._check_modules(model)
        expected = self.metadata.get("model_fingerprint")
        actual = self.fingerprint(model, self.weights)
        if expected is not None and expected != actual:
            raise DeltaMismatchError(
                f"model fingerprint {actual} differs from the one this delta was computed on ({expected}): "
                f"a delta only applies to the exact weights it was computed from{self._dtype_hint(model)}"
            )
        expected = self.metadata.get("base_weights_digest")  # absent in deltas saved before it existed
        if expected is not None and expected != self.base_digest(model):
            raise DeltaMismatchError(
                "the edited layers match, but other weights differ from the model this delta was computed "
                "on (e.g. another edit applied since): a delta only applies to the exact weights it was computed from"
            )

    def _dtype_hint(self, model) -> str:
        computed_on = self.metadata.get("weights_dtype")
        held = str(get_module(model, next(iter(self.weights))).weight.dtype).removeprefix("torch.")
        if computed_on is None or computed_on == held:
            return ""
        return f" (it was computed on {computed_on} weights and the model holds {held}: load it as {computed_on})"

    @torch.no_grad()
    def apply(self, model) -> None:
        """W += ΔW (cast to the weight's dtype), after checking this is the model the delta was made for."""
        if model in self._originals:
            raise DeltaMismatchError("this delta is already applied to this model; revert() it first")
        self._check_base(model)
        views = {name: self._stored_view(model, name) for name in self.weights}
        before = {name: weight.detach().clone() for name, (weight, _) in views.items()}
        for weight, stored in views.values():
            weight += stored.to(weight.dtype, copy=False).to(weight.device)
        edited = self.fingerprint(model, self.weights)
        self._originals[model] = (before, edited)
        self.metadata["edited_fingerprint"] = edited  # saved with the delta: lets revert() recognise the model

    @torch.no_grad()
    def revert(self, model) -> None:
        """Undo apply(): restore the exact weights saved by apply() on this model object.

        A model this delta was not applied to in this process (e.g. an edited model loaded from
        disk) gets ΔW subtracted instead, which restores it up to float rounding; it must be the
        model apply() produced (`edited_fingerprint`), or at least not the unedited base.
        """
        self._check_modules(model)
        record = self._originals.get(model)
        current = self.fingerprint(model, self.weights)
        if record is not None and current != record[1]:
            raise DeltaMismatchError("the edited weights changed since apply(); refusing to overwrite them")
        if record is None:
            self._check_edited(current)
        views = {name: self._stored_view(model, name) for name in self.weights}  # every layer, before any write
        for name, (weight, stored) in views.items():
            if record is None:
                weight -= stored.to(weight.dtype).to(weight.device)
            else:
                weight.copy_(record[0][name])
        self._originals.pop(model, None)

    def _check_edited(self, current: str) -> None:
        if current == self.metadata.get("model_fingerprint"):
            raise DeltaMismatchError("the model holds the weights this delta was computed on: it is not "
                                     "edited (or already reverted), so there is nothing to revert")
        edited = self.metadata.get("edited_fingerprint")
        if edited is not None and current != edited:
            raise DeltaMismatchError(f"model fingerprint {current} is not that of the model this delta "
                                     f"edited ({edited}); refusing to subtract it")

    def save(self, directory: str | Path) -> Path:
        """Writes the delta into a new (or empty) directory, all or nothing: both files go to a
        temporary folder beside it that is renamed into place, so no half-written delta is left."""
        directory = Path(directory)
        if directory.exists() and not (directory.is_dir() and not any(directory.iterdir())):
            raise FileExistsError(f"{directory} already exists and is not an empty directory; an EditDelta "
                                  "is never written over another")
        try:  # before any write
            metadata = json.dumps(self.metadata, indent=2, sort_keys=True, default=str)
        except TypeError as error:
            raise TypeError(f"the delta's metadata cannot be written as JSON (keys must be strings): {error}") from None
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            save_file({k: v.contiguous().cpu() for k, v in self.weights.items()}, str(staging / TENSORS_FILE))
            (staging / METADATA_FILE).write_text(metadata)
            share_as_umask_allows(staging, *staging.iterdir())  # mkdtemp and safetensors make them private
            if directory.exists():
                directory.rmdir()
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "EditDelta":
        """A saved delta, checked: readable files, a metadata object naming the weights it was computed
        on (without that, apply() could not tell the right base from any other), finite float updates."""
        directory = Path(directory)
        for name in (TENSORS_FILE, METADATA_FILE):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory} is not a saved EditDelta: {name} is missing")
        try:
            weights = load_file(str(directory / TENSORS_FILE))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{directory / TENSORS_FILE}: not a readable safetensors file ({err})") from None
        try:
            metadata = json.loads((directory / METADATA_FILE).read_text())
        except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{directory / METADATA_FILE}: not valid JSON ({err})") from None
        if not isinstance(metadata, dict):
            raise ValueError(f"{directory / METADATA_FILE}: expected a JSON object, got {type(metadata).__name__}")
        if not isinstance(metadata.get("model_fingerprint"), str):
            raise ValueError(f"{directory / METADATA_FILE}: no model_fingerprint, so the delta cannot be checked "
                             "against the weights it was computed on")
        try:
            return cls(weights=weights, metadata=metadata)
        except ValueError as err:
            raise ValueError(f"{directory / TENSORS_FILE}: {err}") from None


def creation_info() -> dict:
    import transformers

    return {"created_unix": time.time(), "torch": torch.__version__, "transformers": transformers.__version__}
