"""C0 = E[k kᵀ]: the uncentred second moment of the edited projection's input over a text corpus.

Accumulated in float64 over every non-padding token of a seeded random sample of documents (MEMIT
`layer_stats`), cached on disk under a key that hashes the model weights, layer, corpus, sample count
and max length, checkpointed atomically so an interrupted run resumes where it stopped, and stored in
MEMIT's npz layout (`mom2.mom2` raw sum, `mom2.count`) so MEMIT's published statistics import and
ours export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..kernels import covariance_accumulate
from ..progress import progress as progress_bar
from .fingerprint import config_digest, layout_digest, tokenizer_digest, weights_digest
from .hooks import run_until_stop, trace
from .tokens import context_limit

log = logging.getLogger(__name__)
MEMIT_CONSTRUCTOR = "util.runningstats.SecondMoment()"
SAMPLE_SEED = 1  # MEMIT's layer_stats draws its documents with random_sample=1


class CorruptStatsError(ValueError):
    """A statistics file cannot be read or fails its checksum."""


class StatsMismatchError(ValueError):
    """A statistics file belongs to another layer or another architecture than it is used for."""


# Identity that our files carry beside MEMIT's keys (MEMIT's loader reads only the keys it knows).
IDENTITY_KEYS = {"layer": "collabedit.layer", "architecture": "collabedit.architecture",
                 "model": "collabedit.model"}


@dataclasses.dataclass
class SecondMoment:
    mom2: torch.Tensor  # raw sum of k kᵀ, float64, d x d
    count: int  # number of keys summed
    # Where it was computed: module name, layout_digest (architecture) and weights_digest of the model.
    # None when unknown (MEMIT's published files do not say).
    layer: str | None = None
    architecture: str | None = None
    model: str | None = None

    def moment(self) -> torch.Tensor:
        if self.count <= 0:
            raise ValueError("second moment of zero samples is undefined")
        return self.mom2 / self.count


def cache_root(cache_dir: str | Path | None = None) -> Path:
    root = cache_dir or os.environ.get("COLLABEDIT_CACHE") or Path.home() / ".cache" / "collabedit_secure"
    return Path(root)


def _atomic_savez(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def export_memit_stats(stat: SecondMoment, path: str | Path, dtype=np.float32,
                       sample_size: int | None = None) -> Path:
    """Write MEMIT's layout (what `CombinedStat(mom2=SecondMoment())` saves). MEMIT itself uses float32.

    MEMIT's `tally` also stores its `sample_size` argument and, reading a cached file back, compares
    it (and fails on a file without it); pass the document count the file is named by.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "mom2.constructor": np.array(MEMIT_CONSTRUCTOR),
        "mom2.count": np.array(stat.count),
        "mom2.mom2": stat.mom2.numpy().astype(dtype),
    }
    if sample_size is not None:
        arrays["sample_size"] = np.array(sample_size)
    for field, key in IDENTITY_KEYS.items():
        if getattr(stat, field) is not None:
            arrays[key] = np.array(getattr(stat, field))
    _atomic_savez(path, **arrays)
    return path


def _read_identity(path, data) -> dict[str, str | None]:
    identity = {}
    for field, key in IDENTITY_KEYS.items():
        value = data[key] if key in data else None
        if value is not None and (value.ndim != 0 or value.dtype.kind != "U"):
            raise CorruptStatsError(f"{path}: {key} must be one string, got {value.dtype} of shape {value.shape}")
        identity[field] = None if value is None else str(value)
    return identity


def import_memit_stats(path: str | Path) -> SecondMoment:
    """Read MEMIT's `*_mom2_*.npz` (keys `mom2.mom2`, `mom2.count`; bare `mom2`, `count` also accepted)."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # numpy would call it "pickled data"
        raise CorruptStatsError(f"{path}: not an npz file (npz files are zip archives)")
    try:
        with np.load(path, allow_pickle=False) as data:
            prefix = "mom2." if "mom2.mom2" in data else ""
            mom2, count = data[prefix + "mom2"], data[prefix + "count"]
            identity = _read_identity(path, data)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptStatsError(f"{path}: not a readable MEMIT second-moment file ({err})") from err
    if mom2.ndim != 2 or mom2.shape[0] != mom2.shape[1]:
        raise CorruptStatsError(f"{path}: mom2 has shape {mom2.shape}, expected square")
    if count.size != 1 or int(count) < 1:
        raise CorruptStatsError(f"{path}: count must be one positive number, got {count.tolist()}")
    if not np.isfinite(mom2).all():  # fail here, not after every target has been optimised
        raise CorruptStatsError(f"{path}: mom2 has NaN or Inf entries")
    # A sum of k kᵀ is symmetric up to float32 round-off; the solve reads one triangle only, so a
    # damaged or foreign matrix would otherwise pass unseen.
    asymmetry = float(np.abs(mom2 - mom2.T).max()) / max(float(np.abs(mom2).max()), np.finfo(np.float64).tiny)
    if asymmetry > 1e-4:
        raise CorruptStatsError(f"{path}: mom2 is not symmetric (max |A - Aᵀ| is {asymmetry:.1e} of max |A|), "
                                "so it is not a sum of k kᵀ")
    return SecondMoment(torch.from_numpy(mom2.astype(np.float64)), int(count), **identity)


def check_stats_identity(stat: SecondMoment, path, layer_name: str, model) -> str | None:
    """Refuse a file made for another layer or architecture; return a note if other weights made it.

    Other weights of the same architecture are MEMIT's usual case (statistics of the base model,
    reused for its fine-tunes and for every round of editing), so they are noted, not refused.
    """
    if stat.layer is not None and stat.layer != layer_name:
        raise StatsMismatchError(f"{path} holds the statistics of {stat.layer}, not of {layer_name} "
                                 "(a renamed file?)")
    if stat.architecture is not None and stat.architecture != layout_digest(model):
        raise StatsMismatchError(f"{path} was computed on a model of another architecture (its digest "
                                 f"{stat.architecture} is not this model's {layout_digest(model)})")
    if stat.model is not None and stat.model != weights_digest(model):
        return f"computed on other weights of this architecture ({stat.model})"
    return None


def corpus_digest(texts: list[str]) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for text in texts:
        data = text.encode()
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


@dataclasses.dataclass
class StatsCache:
    """Files of one statistic: final npz + checksum sidecar, and the resumable partial sum."""

    directory: Path
    key: str

    @property
    def final(self) -> Path:
        return self.directory / f"{self.key}.npz"

    @property
    def sidecar(self) -> Path:
        return self.directory / f"{self.key}.json"

    @property
    def partial(self) -> Path:
        return self.directory / f"{self.key}.partial.npz"

    def load(self) -> SecondMoment | None:
        """The cached statistic, or None if absent; a corrupt file is reported and discarded."""
        if not self.final.exists():
            return None
        try:
            meta = json.loads(self.sidecar.read_text())
            if meta.get("sha256") != _file_sha256(self.final):
                raise CorruptStatsError(f"{self.final}: checksum mismatch")
            return import_memit_stats(self.final)
        except (OSError, ValueError, CorruptStatsError) as err:
            log.warning("discarding corrupt statistics cache (%s); recomputing", err)
            self.final.unlink(missing_ok=True)
            self.sidecar.unlink(missing_ok=True)
            return None

    def store(self, stat: SecondMoment, info: dict) -> None:
        export_memit_stats(stat, self.final, dtype=np.float64)
        sidecar = {**info, "count": stat.count, "sha256": _file_sha256(self.final)}
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps(sidecar, indent=2))
        os.replace(tmp, self.sidecar)
        self.partial.unlink(missing_ok=True)

    def checkpoint(self, acc: torch.Tensor, count: int, position: int, batch_size: int) -> None:
        _atomic_savez(self.partial, mom2=acc.numpy(), count=np.array(count), position=np.array(position),
                      batch_size=np.array(batch_size))

    def resume(self, d: int, batch_size: int) -> tuple[torch.Tensor, int, int] | None:
        """The partial sum to continue from, if one was left with the same width and batch size (a
        different batch size sums in another order: the result would differ from a fresh run's bits)."""
        if not self.partial.exists():
            return None
        try:
            with np.load(self.partial, allow_pickle=False) as data:
                acc, count, position = data["mom2"], int(data["count"]), int(data["position"])
                left_by = int(data["batch_size"]) if "batch_size" in data else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("ignoring unreadable partial statistics %s (%s)", self.partial, err)
            return None
        if acc.shape != (d, d) or left_by != batch_size:
            log.warning("restarting %s from the first document: the interrupted run used batch size %s, "
                        "this one %d", self.partial.name, left_by, batch_size)
            return None
        return torch.from_numpy(acc.astype(np.float64)), count, position


def _max_length(model, max_length: int | None, tok=None) -> int:
    """Tokens per C0 document: mom2_max_length, else the model's context, else (a model without a
    position limit, e.g. BLOOM's ALiBi) its tokenizer's model_max_length where that is a real length."""
    if max_length is not None:
        return max_length
    config = model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    limit = limit or getattr(tok, "model_max_length", None)
    if not isinstance(limit, int) or not 0 < limit < 10**6:  # transformers' "no limit" is 1e30
        raise ValueError(f"the {config.model_type} model states no context length (no n_positions or "
                         "max_position_embeddings, nor a tokenizer model_max_length): set mom2_max_length "
                         "in the hparams (tokens per C0 document)")
    return int(limit)


@torch.no_grad()
def _accumulate_batch(model, tok, layer_name: str, texts: list[str], max_length: int, acc: torch.Tensor) -> int:
    """acc += Σ k kᵀ over the batch's non-padding tokens; returns how many tokens were added."""
    device = next(model.parameters()).device
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    mask = enc["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with trace(model, [layer_name], "input", stop=True) as seen:
        run_until_stop(model, input_ids=enc["input_ids"].to(device), attention_mask=mask.to(device),
                       position_ids=position_ids.to(device))
    keys = seen[layer_name].reshape(-1, seen[layer_name].shape[-1]).cpu()
    covariance_accumulate(acc, keys, mask.reshape(-1).bool())
    return int(mask.sum())


def corpus_sample(texts: list[str], n_samples: int | None = None, seed: int = SAMPLE_SEED) -> list[str]:
    """The documents a statistic is taken over: n_samples of the non-empty texts, drawn at random.

    As MEMIT's `FixedRandomSubsetSampler(seed=1)` does, so that a corpus file sorted by title or date
    does not hand C0 its first section only. The draw is fixed by `seed` and the chosen documents keep
    their corpus order (order changes only round-off); n_samples of None, or as many as there are,
    takes every document.
    """
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be >= 1 (or None: every document), got {n_samples}")
    documents = [t for t in texts if t.strip()]
    if n_samples is None or n_samples >= len(documents):
        return documents
    chosen = sorted(random.Random(seed).sample(range(len(documents)), n_samples))
    return [documents[i] for i in chosen]


def _check_sampling(model, max_length: int | None, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size (mom2_batch_size) must be >= 1, got {batch_size}")
    limit = context_limit(model)
    if max_length is not None and not 1 <= max_length <= (limit or max_length):
        raise ValueError(f"max_length (mom2_max_length) must be between 1 and the model's context of {limit} "
                         f"tokens, got {max_length}")


def stats_identity(model, tok, layer_name: str, texts: list[str], max_length: int) -> tuple[str, dict]:
    """(file stem, identity): the stem hashes everything the statistic depends on."""
    info = {"layer": layer_name, "model": weights_digest(model), "config": config_digest(model),
            "tokenizer": tokenizer_digest(tok), "corpus": corpus_digest(texts), "n_samples": len(texts),
            "max_length": max_length}
    key = hashlib.blake2b(json.dumps(info, sort_keys=True).encode(), digest_size=16).hexdigest()
    return f"{layer_name}_mom2_{len(texts)}_{key}", info


def write_shipped_stat(stat: SecondMoment, path: Path) -> None:
    """A statistic as it ships: the packed upper triangle of the float64 sum (half the bytes), and the count."""
    mom2 = stat.mom2.numpy()
    _atomic_savez(path, mom2_upper=mom2[np.triu_indices(mom2.shape[0])], count=np.array(stat.count))


def read_shipped_stat(path: Path) -> SecondMoment | None:
    """The statistic write_shipped_stat wrote, or None if there is none (its bundle checked its sha256)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        upper, count = data["mom2_upper"], int(data["count"])
    d = int((np.sqrt(8 * upper.size + 1) - 1) / 2)
    mom2 = np.zeros((d, d))
    mom2[np.triu_indices(d)] = upper
    mom2 = np.triu(mom2) + np.triu(mom2, 1).T
    return SecondMoment(torch.from_numpy(mom2), count)


def layer_stats(model, tok, layer_name: str, texts: list[str], *, n_samples: int | None = None,
                max_length: int | None = None, batch_size: int = 16, cache_dir: str | Path | None = None,
                progress: bool = True, checkpoint_every: int = 20,
                on_batch: Callable[[int], None] | None = None, shipped_dir: Path | None = None) -> SecondMoment:
    """Second moment of `layer_name`'s input over n_samples of the texts (`corpus_sample`; cached, resumable).

    `on_batch(position)` is called after each batch with the number of texts consumed so far.
    `shipped_dir`: read-only statistics shipped with a model (the embedded world's), used when one
    was computed for exactly this model, layer, tokenizer, corpus sample and max length.
    """
    _check_sampling(model, max_length, batch_size)
    texts = corpus_sample(texts, n_samples)
    if not texts:
        raise ValueError("covariance corpus is empty")
    max_length = _max_length(model, max_length, tok)
    stem, info = stats_identity(model, tok, layer_name, texts, max_length)
    identity = dict(layer=layer_name, architecture=layout_digest(model), model=info["model"])
    shipped = read_shipped_stat(shipped_dir / f"{stem}.npz") if shipped_dir is not None else None
    if shipped is not None:
        log.info("C0 %s: shipped with the model (%d tokens)", layer_name, shipped.count)
        return dataclasses.replace(shipped, **identity)
    directory = cache_root(cache_dir) / "stats"
    directory.mkdir(parents=True, exist_ok=True)
    cache = StatsCache(directory, stem)
    cached = cache.load()
    if cached is not None:  # the key hashes the identity, so files cached before it was stored get it too
        log.info("C0 %s: cached in %s (%d tokens)", layer_name, cache.final, cached.count)
        return dataclasses.replace(cached, **identity)

    was_training = model.training
    model.eval()
    d = model.get_submodule(layer_name).weight.shape  # Linear (out, in) or Conv1D (in, out)
    d_in = d[0] if type(model.get_submodule(layer_name)).__name__ == "Conv1D" else d[1]
    acc, count, position = cache.resume(d_in, batch_size) or (torch.zeros(d_in, d_in, dtype=torch.float64), 0, 0)
    batches = range(position, len(texts), batch_size)
    try:
        for number, start in enumerate(progress_bar(batches, desc=f"C0 {layer_name}", enabled=progress), 1):
            count += _accumulate_batch(model, tok, layer_name, texts[start:start + batch_size], max_length, acc)
            position = min(start + batch_size, len(texts))
            if number % checkpoint_every == 0:
                cache.checkpoint(acc, count, position, batch_size)
            if on_batch is not None:
                on_batch(position)
    finally:
        model.train(was_training)
    stat = SecondMoment(acc, count, **identity)
    cache.store(stat, info)
    log.info("C0 %s: computed over %d documents (%d tokens), cached in %s", layer_name, len(texts), count,
             cache.final)
    return stat
