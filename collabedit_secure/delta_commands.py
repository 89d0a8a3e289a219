"""`collabedit apply` and `collabedit revert`: a saved EditDelta onto a model directory, or off it.

    collabedit apply  --model BASE   --delta EDITED/delta --out NEW   # BASE + ΔW, as `edit` saved it
    collabedit revert --model EDITED [--delta DIR]        --out NEW   # EDITED - ΔW (default: EDITED/delta)

The delta names the exact weights it belongs to (EditDelta's fingerprints); a model it does not fit
is refused before anything is written, and the output appears all at once or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .editing.delta import DeltaMismatchError, EditDelta
from .files import share_as_umask_allows
from .editing.hparams import MemitHparams
from .pipeline import LoadedModel, check_model_path, load_model, module_templates


def run_apply(model: str, delta_dir: Path, out: Path, device: str = "cpu") -> Path:
    """Write BASE + ΔW to `out` with the delta and an edit_meta.json, as `collabedit edit` does."""
    delta = EditDelta.load(delta_dir)
    loaded = _load(model, device)
    _checked(lambda: delta.apply(loaded.model), model, delta_dir)
    with _staged(out) as staging:
        _save_model(loaded, staging)
        delta.save(staging / "delta")
        (staging / "edit_meta.json").write_text(json.dumps(_edit_meta(delta, loaded, delta_dir), indent=2,
                                                           default=str))
    return out


def run_revert(model: str, delta_dir: Path | None, out: Path, device: str = "cpu") -> Path:
    """Write EDITED - ΔW to `out`: the base again, to float rounding (W0 + ΔW - ΔW in the weights' dtype)."""
    delta_dir = delta_dir if delta_dir is not None else Path(model) / "delta"
    if not delta_dir.is_dir():
        raise FileNotFoundError(f"no delta given and {model} has no delta/ folder; pass --delta DIR")
    delta = EditDelta.load(delta_dir)
    loaded = _load(model, device)
    _checked(lambda: delta.revert(loaded.model), model, delta_dir)
    with _staged(out) as staging:
        _save_model(loaded, staging)
    return out


def _load(model: str, device: str) -> LoadedModel:
    check_model_path(model)
    return load_model(model, device)


def _checked(action, model: str, delta_dir: Path) -> None:
    try:
        action()
    except DeltaMismatchError as err:
        raise DeltaMismatchError(f"--delta {delta_dir} does not fit --model {model}: {err}") from None


class _staged:
    """A temporary folder beside `out`, renamed to `out` when the block succeeds, removed otherwise."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        return self.staging

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        share_as_umask_allows(self.staging, *self.staging.rglob("*"))  # mkdtemp and safetensors: 0600
        if self.out.exists():
            self.out.rmdir()  # an empty folder (argparse's new_dir let nothing else through)
        os.replace(self.staging, self.out)


def _save_model(loaded: LoadedModel, folder: Path) -> None:
    # In the dtype the checkpoint had, and the tokenizer as stored: what `collabedit edit` writes.
    loaded.model.to(loaded.stored_dtype).save_pretrained(folder)
    (loaded.tok_as_stored or loaded.tok).save_pretrained(folder)


def _edit_meta(delta: EditDelta, loaded: LoadedModel, delta_dir: Path) -> dict:
    meta = {key: delta.metadata.get(key) for key in
            ("schedule", "hparams", "context_templates", "request_ids", "stats_files", "model_fingerprint")}
    meta.update({"base_model": loaded.name, "n_requests": sum(len(ids) for ids in meta["request_ids"] or []),
                 "saved_dtype": str(loaded.stored_dtype).removeprefix("torch."),
                 "applied_from": str(delta_dir.resolve())})
    try:  # as `edit` records them; a delta whose hparams no longer parse just goes without
        meta["module_templates"] = module_templates(loaded.model, MemitHparams.from_dict(meta["hparams"]))
    except (TypeError, ValueError):  # HparamsError is a ValueError
        pass
    return meta
