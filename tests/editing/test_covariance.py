"""C0 statistics: correctness against a direct computation, cache hit, corruption, resume, MEMIT npz."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collabedit_secure.editing import SecondMoment, export_memit_stats, import_memit_stats, layer_stats
from collabedit_secure.editing.covariance import CorruptStatsError

from .conftest import corpus

LAYER = "transformer.h.1.mlp.c_proj"


class Interrupted(Exception):
    pass


def stats(model, tok, cache, **kw):
    return layer_stats(model, tok, LAYER, corpus()[:40], batch_size=8, cache_dir=cache, progress=False, **kw)


def test_matches_direct_computation(gpt2_f64, tok, tmp_path):
    stat = stats(gpt2_f64, tok, tmp_path)
    seen = []
    hook = gpt2_f64.get_submodule(LAYER).register_forward_hook(lambda m, a, o: seen.append(a[0][0]))
    with torch.no_grad():
        for text in [t for t in corpus()[:40] if t.strip()]:  # one text at a time: no padding at all
            gpt2_f64(**tok(text, return_tensors="pt"))
    hook.remove()
    keys = torch.cat(seen)
    assert stat.count == keys.shape[0]
    assert torch.allclose(stat.moment(), keys.T @ keys / keys.shape[0], rtol=1e-9, atol=1e-12)


def test_cache_hit_and_corruption_recomputed(gpt2_f64, tok, tmp_path):
    first = stats(gpt2_f64, tok, tmp_path)
    (final,) = (tmp_path / "stats").glob("*.npz")
    calls = []
    again = stats(gpt2_f64, tok, tmp_path, on_batch=calls.append)
    assert calls == [] and torch.equal(again.mom2, first.mom2)  # served from the cache
    final.write_bytes(final.read_bytes()[:-64] + b"\0" * 64)  # damage the file
    recomputed = stats(gpt2_f64, tok, tmp_path, on_batch=calls.append)
    assert calls and torch.equal(recomputed.mom2, first.mom2)


def test_resume_after_interruption_equals_uninterrupted(gpt2_f64, tok, tmp_path):
    whole = stats(gpt2_f64, tok, tmp_path / "a")

    def stop_at_third(position):
        if position >= 24:
            raise Interrupted

    with pytest.raises(Interrupted):
        stats(gpt2_f64, tok, tmp_path / "b", checkpoint_every=2, on_batch=stop_at_third)
    assert list((tmp_path / "b" / "stats").glob("*.partial.npz"))
    positions = []
    resumed = stats(gpt2_f64, tok, tmp_path / "b", checkpoint_every=2, on_batch=positions.append)
    assert positions[0] == 24  # batches 1-2 came from the checkpoint, batch 3 is redone
    assert resumed.count == whole.count and torch.equal(resumed.mom2, whole.mom2)


def test_memit_npz_round_trip(tmp_path):
    mom2 = torch.randn(6, 6, dtype=torch.float64)
    stat = SecondMoment(mom2 @ mom2.T, 17)
    path = export_memit_stats(stat, tmp_path / "transformer.h.1.mlp.c_proj_float32_mom2_100000.npz")
    with np.load(path) as raw:  # MEMIT's CombinedStat(mom2=SecondMoment()) keys
        assert set(raw.files) == {"mom2.constructor", "mom2.count", "mom2.mom2"}
        assert raw["mom2.mom2"].dtype == np.float32
    back = import_memit_stats(path)
    assert back.count == 17 and torch.allclose(back.mom2, stat.mom2, rtol=1e-6)
    np.savez(tmp_path / "bare.npz", mom2=np.eye(3, dtype=np.float32), count=np.array(3))
    assert torch.equal(import_memit_stats(tmp_path / "bare.npz").moment(), torch.eye(3, dtype=torch.float64) / 3)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CorruptStatsError, match="junk.npz"):
        import_memit_stats(tmp_path / "junk.npz")


@pytest.mark.parametrize("mom2, count, message", [
    (np.eye(3)[:2], 3, r"shape \(2, 3\), expected square"),
    (np.diag([1.0, np.nan, 1.0]), 3, "NaN or Inf"),
    (np.diag([1.0, np.inf, 1.0]), 3, "NaN or Inf"),
    (np.eye(3), 0, r"count must be one positive number, got 0"),
    (np.eye(3), [3, 4], r"count must be one positive number, got \[3, 4\]"),
])
def test_imported_stats_are_checked_on_arrival(tmp_path, mom2, count, message):
    np.savez(tmp_path / "bad.npz", mom2=mom2, count=np.array(count))
    with pytest.raises(CorruptStatsError, match=message):
        import_memit_stats(tmp_path / "bad.npz")
