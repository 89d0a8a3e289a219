"""Training cannot be faked: a small world, trained from scratch here, must come to know its facts.

The shipped reference build is not retrained by the tests (it took 13-29 minutes on 2 cores); this
world runs the same code (generator, tokenizer, training loop, knowledge check) at a size that
trains in well under a minute (30 s measured on a busy 2-core machine; one thread, so that
OpenMP threads never wait on each other when other processes share the cores).
"""

from __future__ import annotations

import time

from collabedit_secure.world import build_world, tiny_config
from collabedit_secure.world.train import knowledge

# What the small world must reach on CounterFact's rule (true object preferred to target_new),
# in every column: chance is 50 %.
KNOWLEDGE_BAR = 0.9
SMALL = tiny_config(train_dtype="float32", threads=1, n_layer=2, n_embd=64, n_inner=256, max_epochs=40,
                    schedule_epochs=40, target_knowledge=KNOWLEDGE_BAR, check_margin=0.0, require_knowledge=True)


def test_a_small_world_trained_from_scratch_knows_its_facts(tmp_path, record_property):
    start = time.monotonic()
    bundle = build_world(tmp_path / "small", SMALL, progress=False)
    record_property("train_s", round(time.monotonic() - start, 1))
    model, tok = bundle.load_model()
    scores = knowledge(model, tok, bundle.records[: SMALL.final_check_records])  # recomputed, not read back
    assert all(scores[kind] >= KNOWLEDGE_BAR for kind in ("rewrite", "paraphrase", "neighborhood")), scores
    assert bundle.knowledge["epochs"] < SMALL.max_epochs  # it stopped because it knew, not because time ran out
