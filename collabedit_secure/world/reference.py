"""The reference build of the embedded default, shipped inside the package.

Every CPU trains the world into slightly different weights (bfloat16 or float32 matmuls, kernel
choice, reduction order), and a handful of edits flip with them. So one build, made once by
`collabedit world build --train`, ships in `reference/` beside this file: every machine then edits
the same model and prints the same figures, and nothing is trained before a first run.

The folder is an ordinary world bundle (see cache.py): its manifest.json lists the sha256 of every
file, and a file that does not match is refused by name. `provenance.json` says where, when and in
which precision it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from .cache import MANIFEST, WorldBundle, open_bundle, verify_bundle
from .config import WorldConfig

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
REMEDY = ("reinstall the package, or train a world with `collabedit world build --train --out DIR` and edit it "
          "as --model DIR/model")


class ReferenceWorldError(OSError):
    """The shipped reference build is missing, tampered with or truncated."""


def reference_config(root: Path = REFERENCE_DIR) -> WorldConfig:
    """The WorldConfig the reference was trained with (its precision included)."""
    path = root / "world_config.json"
    try:
        return WorldConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ReferenceWorldError(f"the shipped world's {path} is unreadable ({err}); {REMEDY}") from None


def load_reference(root: Path = REFERENCE_DIR) -> WorldBundle:
    """The shipped build, after checking every file against its sha256 in the manifest."""
    if not (root / MANIFEST).is_file():
        raise ReferenceWorldError(f"the shipped world is missing ({root / MANIFEST} not found); {REMEDY}")
    config = reference_config(root)
    reason = verify_bundle(root, config)
    if reason is not None:
        raise ReferenceWorldError(f"the shipped world at {root} is damaged: {reason} (tampered or truncated); "
                                  f"{REMEDY}")
    return open_bundle(root, config)


def provenance(root: Path = REFERENCE_DIR) -> dict:
    """Machine, date, precision and package versions of the reference build."""
    path = root / "provenance.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def package_reference(build: Path, out: Path = REFERENCE_DIR, command: str = "collabedit world build --train") -> Path:
    """Make `out` the shipped reference from a finished world build (maintainers only).

    Copies the model and reports, gzips records and corpus, adds the C0 statistics of the default
    edited layers (computed exactly as `pipeline.covariances` would, so that every run finds them),
    writes provenance.json and the manifest last. `python -m collabedit_secure.world.reference DIR`.
    """
    import datetime
    import gzip
    import platform
    import shutil
    import tempfile

    import torch
    import transformers

    from ..editing.covariance import _max_length, corpus_sample, layer_stats, stats_identity, write_shipped_stat
    from ..editing.hparams import MemitHparams
    from ..files import share_as_umask_allows
    from .cache import COMPRESSED, write_manifest

    bundle = open_bundle(build)
    reason = verify_bundle(build, bundle.config)
    if reason is not None:
        raise ReferenceWorldError(f"{build} is not a finished world build: {reason}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".reference-", dir=out.parent))
    shutil.copytree(build / "model", staging / "model")
    for name in ("world_config.json", "knowledge.json"):
        shutil.copy2(build / name, staging / name)
    for name in COMPRESSED:  # mtime 0: the same build packs to the same bytes
        with open(staging / f"{name}.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            packed.write((build / name).read_bytes())
    model, tok = open_bundle(staging, bundle.config).load_model()
    (staging / "c0").mkdir()
    layers = sorted({layer for name in ("default-world", "default-world-parallel")
                     for layer in MemitHparams.builtin(name).layers})
    hparams = MemitHparams.builtin("default-world")
    texts = corpus_sample(bundle.corpus_texts(), hparams.mom2_n_samples)
    for layer in layers:
        name = hparams.rewrite_module_tmp.format(layer)
        stat = layer_stats(model, tok, name, texts, max_length=hparams.mom2_max_length,
                           batch_size=hparams.mom2_batch_size)
        stem, _ = stats_identity(model, tok, name, texts, _max_length(model, hparams.mom2_max_length))
        write_shipped_stat(stat, staging / "c0" / f"{stem}.npz")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    made = {"date": datetime.date.today().isoformat(), "command": command,
            "cpu": f"{cpu}, {torch.get_num_threads()} threads",
            "cpu_features": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags],
            "train_dtype": bundle.config.train_dtype, "weights_dtype": "float32",
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "train_s": bundle.knowledge.get("train_s"),
            "c0_layers": layers, "c0_tokens": stat.count}
    (staging / "provenance.json").write_text(json.dumps(made, indent=1) + "\n")
    write_manifest(staging, bundle.config)
    share_as_umask_allows(staging, *staging.rglob("*"))  # mkdtemp made it private to its maker
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


if __name__ == "__main__":
    import sys

    print(package_reference(Path(sys.argv[1])))
