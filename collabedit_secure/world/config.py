"""Every knob of the embedded default: world size, tokenizer, model shape, training recipe, seeds.

The cache key is a hash of this dataclass (plus BUILD_VERSION), so changing any field rebuilds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass

# Bump when generator/tokenizer/training code changes what a given config produces.
BUILD_VERSION = "world-v3"


@dataclass(frozen=True)
class WorldConfig:
    # world
    seed: int = 20250417
    n_subjects: int = 1000
    n_relations: int = 20
    relations_per_subject: int = 5
    objects_per_relation: int = 12  # capped by each relation's vocabulary
    n_neighbours: int = 10  # neighbourhood / attribute / generation prompts per record (CounterFact: 10)
    filler_per_subject: float = 0.3  # filler sentences in the corpus, per subject
    max_sentences_per_text: int = 3
    # tokenizer
    vocab_size: int = 1200  # names split into syllable pieces, as real tokenizers split rare names
    # model (GPT-2, pre-LN, GELU MLP, tied embeddings)
    n_layer: int = 6  # 4 layers edit well in small batches; 6 leave room for 200+ edits
    n_embd: int = 256  # the residual width bounds how many edits MEMIT can place (128: 80 % at 200)
    n_head: int = 4
    n_inner: int = 1024  # wider MLPs (or n_embd 384) recall at the prompt's end, not via the subject
    n_positions: int = 128
    # training
    train_seed: int = 7
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    max_epochs: int = 12
    schedule_epochs: int = 8  # cosine decay horizon; training may stop earlier (knowledge check)
    weight_decay: float = 0.0
    object_weight: float = 5.0  # loss weight of the object tokens of fact sentences
    # bfloat16: matmuls under CPU autocast (weights, optimiser state and the saved model stay float32),
    # 2.2-2.6x the float32 throughput on CPUs with AVX512-BF16 or AMX, but emulated slower than
    # float32 elsewhere (1.25x with AVX-512, about 20x with AVX2 only). "auto" picks by the CPU when the config is made (see native_train_dtype);
    # the resolved value is what the cache key hashes.
    train_dtype: str = "auto"
    # Not part of the cache key: like the CPU itself, the thread count can change the last bits of the
    # trained weights (reduction order), not what the model knows. world_config.json records it.
    threads: int = 2  # use 1 on a crowded machine
    # knowledge check
    check_sample: int = 200  # records scored after each epoch
    check_margin: float = 0.01  # the per-epoch sample must beat target + margin before the full check
    target_knowledge: float = 0.95
    final_check_records: int = 1000  # 0: all records (about 2 minutes more on 2 cores)
    require_knowledge: bool = True  # raise if the target is never reached

    def __post_init__(self) -> None:
        positive = ["n_subjects", "n_relations", "relations_per_subject", "objects_per_relation",
                    "n_neighbours", "vocab_size", "n_layer", "n_embd", "n_head", "n_inner",
                    "n_positions", "batch_size", "max_epochs", "schedule_epochs", "threads", "check_sample",
                    "max_sentences_per_text"]
        counts = [*positive, "seed", "train_seed", "warmup_steps", "final_check_records"]
        for name in counts:  # 1000.0 would hash to another cache key than 1000 for the same world
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"WorldConfig.{name} must be an integer, got {value!r}")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"WorldConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "final_check_records"):
            if getattr(self, name) < 0:
                raise ValueError(f"WorldConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name, low, high in (("filler_per_subject", 0, None), ("lr", None, None), ("min_lr_ratio", 0, 1),
                                ("weight_decay", 0, None), ("object_weight", None, None), ("check_margin", 0, None)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or (low is None and value <= 0) or (low is not None and value < low) \
                    or (high is not None and value > high):
                bounds = f"in [{low}, {high}]" if high is not None else (f">= {low}" if low is not None else "> 0")
                raise ValueError(f"WorldConfig.{name} must be a finite number {bounds}, got {value!r}")
        if self.relations_per_subject > self.n_relations:
            raise ValueError(f"relations_per_subject={self.relations_per_subject} > n_relations={self.n_relations}")
        if self.objects_per_relation < 2:
            raise ValueError("objects_per_relation must be >= 2 (target_new needs another object)")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} not divisible by n_head={self.n_head}")
        if self.train_dtype == "auto":
            object.__setattr__(self, "train_dtype", native_train_dtype())  # frozen: set once, here
        if self.train_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"train_dtype must be 'auto', 'float32' or 'bfloat16', got {self.train_dtype!r}")
        if not 0.5 < self.target_knowledge <= 1.0:
            raise ValueError(f"target_knowledge must be in (0.5, 1], got {self.target_knowledge}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WorldConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown WorldConfig fields: {sorted(unknown)}")
        return cls(**data)

    def cache_key(self) -> str:
        """Hash of every knob plus the code version: the cache subfolder name."""
        knobs = {k: v for k, v in self.to_dict().items() if k != "threads"}
        blob = json.dumps({"version": BUILD_VERSION, "config": knobs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache
def native_train_dtype() -> str:
    """'bfloat16' where this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), else 'float32'.

    Elsewhere torch emulates bfloat16 matmuls: a training step of the default model ran at 1.5
    sequences/s against 29 in float32 with oneDNN and MKL limited to AVX2, which would stretch the
    default world's 6.5-minute build to hours.
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the fallback
    native = any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return "bfloat16" if native else "float32"


def tiny_config(**overrides) -> WorldConfig:
    """A world that builds in seconds (tests): 60 subjects, 5 relations, a 4-layer model, short training."""
    base = dict(n_subjects=60, n_relations=5, relations_per_subject=5, objects_per_relation=4,
                vocab_size=600, n_layer=4, n_embd=64, n_head=4, n_inner=256, n_positions=64,
                batch_size=16, max_epochs=2, schedule_epochs=2, warmup_steps=5, check_sample=20,
                final_check_records=40, require_knowledge=False, threads=1)
    base.update(overrides)
    return WorldConfig(**base)
