"""Build, verify and cache worlds (records, corpus, tokenizer, trained GPT-2).

The default world itself ships prebuilt (reference.py); this module trains and caches the worlds
that `collabedit world build --train` or a WorldConfig of one's own asks for.

Layout of a bundle directory:
    model/            an HF dir: AutoModelForCausalLM / AutoTokenizer load it
    records.json      CounterFact-schema edit cases
    corpus.json       the world texts (training data and the public corpus for C0), fixed order
    world_config.json the WorldConfig that produced it
    knowledge.json    final knowledge-check fractions and build times
    manifest.json     sha256 of every other file; written LAST, so its presence marks a finished build

Builds go to a temporary sibling directory and are renamed into place; an fcntl lock per cache key
makes a second builder wait and then reuse the first one's result.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..files import json_safe, share_as_umask_allows
from .config import WorldConfig

MANIFEST = "manifest.json"
REQUIRED_FILES = ("records.json", "corpus.json", "world_config.json", "knowledge.json",
                  "model/config.json", "model/model.safetensors", "model/tokenizer.json")
COMPRESSED = ("records.json", "corpus.json")  # the shipped build holds these gzipped (a tenth of the bytes)


@dataclass
class WorldBundle:
    root: Path
    config: WorldConfig
    records: list[dict]
    knowledge: dict
    built_now: bool = field(default=False, compare=False)  # True when this call trained it

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def corpus_texts(self) -> list[str]:
        """The public corpus (C0 statistics, and the training data), in its fixed order."""
        return read_bundle_json(self.root, "corpus.json")

    def load_model(self, device: str = "cpu"):
        """(model in eval mode, float32, on device; its tokenizer with pad = eos)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32).to(device)
        tok = AutoTokenizer.from_pretrained(str(self.model_dir))
        tok.pad_token = tok.eos_token
        return model.eval(), tok


def default_cache_root() -> Path:
    env = os.environ.get("COLLABEDIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "collabedit_secure"


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_bundle_json(root: Path, name: str):
    """A bundle's JSON file, read from name or, where the bundle ships it compressed, name.gz."""
    plain = root / name
    if plain.is_file() or name not in COMPRESSED:
        return json.loads(plain.read_text())
    with gzip.open(root / f"{name}.gz", "rt", encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(json_safe(obj), indent=1, ensure_ascii=False, allow_nan=False))


def write_manifest(root: Path, config: WorldConfig) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(root)): _sha256(p) for p in files}
    _write_json(root / MANIFEST, {"cache_key": config.cache_key(), "files": entries})


def verify_bundle(root: Path, config: WorldConfig) -> str | None:
    """None if root holds a complete, untampered build of config; otherwise the reason it does not."""
    manifest_path = root / MANIFEST
    if root.exists() and not root.is_dir():
        return "a file, not a directory"
    if not root.is_dir():
        return "directory missing"
    if not manifest_path.is_file():
        return "manifest.json missing (partial or interrupted build)"
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["files"]
        entries.items()  # a mapping of name -> sha256, or the manifest is damaged
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"manifest.json unreadable: {type(exc).__name__}: {exc}"
    if manifest.get("cache_key") != config.cache_key():
        return f"manifest is for cache key {manifest.get('cache_key')}, expected {config.cache_key()}"
    for name in REQUIRED_FILES:
        if name not in entries and not (name in COMPRESSED and f"{name}.gz" in entries):
            return f"manifest does not list {name}"
    for name, digest in entries.items():
        path = root / name
        if not path.resolve().is_relative_to(root.resolve()):
            return f"manifest names {name!r}, outside the build"
        if not path.is_file():
            return f"{name} missing"
        if _sha256(path) != digest:
            return f"{name} does not match its sha256 in the manifest"
    return None


def open_bundle(root: Path, config: WorldConfig | None = None) -> WorldBundle:
    root = Path(root)
    if config is None:
        config = WorldConfig.from_dict(json.loads((root / "world_config.json").read_text()))
    records = read_bundle_json(root, "records.json")
    knowledge = json.loads((root / "knowledge.json").read_text())
    return WorldBundle(root=root, config=config, records=records, knowledge=knowledge)


def _build_into(tmp: Path, config: WorldConfig, progress: bool) -> None:
    from .generator import generate_world
    from .tokenizer import save_tokenizer, train_tokenizer
    from .train import train_model

    start = time.time()
    world = generate_world(config)
    tok = train_tokenizer(world.corpus, config.vocab_size)
    objects = [o for _, _, o in world.facts]
    model, report = train_model(config, tok, world.corpus, world.records, objects, progress=progress)
    model_dir = tmp / "model"
    model.save_pretrained(str(model_dir))
    save_tokenizer(tok, model_dir, config.n_positions)
    _write_json(tmp / "records.json", world.records)
    _write_json(tmp / "corpus.json", world.corpus)
    _write_json(tmp / "world_config.json", config.to_dict())
    knowledge = {**report["final"], "records_checked": report["final_records"], "epochs": report["epochs"],
                 "steps": report["steps"], "train_s": report["train_s"], "build_s": round(time.time() - start, 1),
                 "n_subjects": len(world.subjects), "n_relations": len(world.relations),
                 "n_facts": len(world.facts), "n_records": len(world.records), "n_texts": len(world.corpus),
                 "n_params": sum(p.numel() for p in model.parameters()), "history": report["history"]}
    _write_json(tmp / "knowledge.json", knowledge)
    write_manifest(tmp, config)  # last: its presence means everything above is complete


def build_world(out_dir, config: WorldConfig | None = None, progress: bool = True) -> WorldBundle:
    """Generate, tokenise, train and save a world into out_dir (built in a temp dir, renamed atomically)."""
    config = config or WorldConfig()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or pick another directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _build_into(tmp, config, progress)
        share_as_umask_allows(tmp, *tmp.rglob("*"))  # mkdtemp and safetensors would keep it to its builder
        os.rename(tmp, out_dir)  # atomic on one filesystem; fails if another builder won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if verify_bundle(out_dir, config) is None:  # someone else finished first: use theirs
            return open_bundle(out_dir, config)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle = open_bundle(out_dir, config)
    bundle.built_now = True
    return bundle


def open_or_build(out_dir, config: WorldConfig | None = None, progress: bool = True) -> WorldBundle:
    """`collabedit world build --out`: reuse a valid build of config at out_dir, else build one there.

    A directory that holds anything else is the user's: it is reported, never overwritten.
    """
    config = config or WorldConfig()
    out_dir = Path(out_dir)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()  # an empty directory made for the build
    if not out_dir.exists():
        # Locked, as load_default's cache: a second builder waits and reuses the build, and under
        # the lock the folders of killed builders can go.
        with _locked(out_dir.parent / f".{out_dir.name}.lock"):
            _remove_stale_builds(out_dir)
            if not out_dir.exists():
                return build_world(out_dir, config, progress=progress)
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file; give a directory for the world (new, empty, or a "
                              "build of it)")
    if not (out_dir / MANIFEST).exists() and not (out_dir / "model").exists():
        raise FileExistsError(f"{out_dir} holds other files, not a build of the world; remove them or "
                              "pick another directory")
    reason = verify_bundle(out_dir, config)
    if reason is not None:
        raise FileExistsError(f"{out_dir} exists and is not a build of this world ({reason}); "
                              "remove it or pick another directory")
    return open_bundle(out_dir, config)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_loadable(bundle: WorldBundle) -> str | None:
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a check, not the load the user asked for: no second bar
    try:
        bundle.load_model()
    except Exception as exc:  # reported with its cause
        return f"model does not load: {type(exc).__name__}: {exc}"
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return None


class WorldCacheError(OSError):
    """A cached world whose files are intact does not load here (it is left in place)."""


def _open_verified(final: Path, config: WorldConfig) -> WorldBundle:
    """A build whose every file matches its manifest is what we built: if it does not load, the
    cause is this environment (memory, an incompatible transformers), which a rebuild would not fix."""
    bundle = open_bundle(final, config)
    reason = _check_loadable(bundle)
    if reason is not None:
        raise WorldCacheError(f"the cached world at {final} is complete (every file matches its manifest) "
                              f"but its {reason}; remove the folder to rebuild it")
    return bundle


def _remove_stale_builds(final: Path, lock: Path | None = None) -> None:
    """Delete build folders that killed builders left. Under the lock no builder is running; with
    `lock` it is taken here, and a read-only cache keeps its leftovers (they cost disk, not builds)."""
    stale = list(final.parent.glob(f".{final.name}.building-*"))
    if not stale:
        return
    if lock is None:
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return
    try:
        with _locked(lock):
            _remove_stale_builds(final)
    except OSError:
        pass


def load_default(cache_dir=None, progress: bool = True, config: WorldConfig | None = None) -> WorldBundle:
    """The embedded default world. Without `config`: the reference build shipped in the package
    (checked against its manifest, never trained). With one: that world from the cache if valid,
    else trained (minutes) and cached; a corrupt or partial cache is reported, moved aside and rebuilt.
    """
    if config is None:
        from .reference import load_reference

        return load_reference()
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    final = root / f"world-{config.cache_key()}"
    lock = root / f"world-{config.cache_key()}.lock"
    if verify_bundle(final, config) is None:  # a finished build never changes, so it is read without
        bundle = _open_verified(final, config)  # the lock: a read-only cache (a shared mount) works
        _remove_stale_builds(final, lock)
        return bundle
    with _locked(lock):
        _remove_stale_builds(final)
        reason = verify_bundle(final, config)
        if reason is None:  # another process finished it while we waited
            return _open_verified(final, config)
        if final.exists():
            warnings.warn(f"cached world at {final} is invalid ({reason}); rebuilding", RuntimeWarning,
                          stacklevel=2)
            trash = final.with_name(f".{final.name}.invalid-{os.getpid()}-{time.time_ns()}")
            os.rename(final, trash)
            if trash.is_dir():
                shutil.rmtree(trash, ignore_errors=True)
            else:
                trash.unlink()
        return build_world(final, config, progress=progress)
