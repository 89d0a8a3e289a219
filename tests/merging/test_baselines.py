"""Merging baselines: hand-computed TIES, and the algebraic properties of TA and SA."""

from __future__ import annotations

import pytest
import torch

from collabedit_secure.merging.baselines import (
    simple_average,
    task_arithmetic,
    ties_merge,
    trim_threshold,
)


def _parties(*layers):
    return [{"h.0.mlp": torch.tensor(layer, dtype=torch.float64)} for layer in layers]


def test_ties_matches_hand_computed_example():
    # density 0.5 on 6 entries keeps k = 3 per party (ties with the 3rd largest are kept too).
    #   Δ1 = [[ 4, -1,  2], [ 0.5, -3,  1]]  top |.|: 4, 3, 2       -> [[ 4, 0, 2], [ 0, -3, 0]]
    #   Δ2 = [[-2,  5,  1], [ 3, -0.5, -1]]  top |.|: 5, 3, 2       -> [[-2, 5, 0], [ 3,  0, 0]]
    #   Δ3 = [[-1,  2, -4], [-2,  0.1,  6]]  top |.|: 6, 4, 2, 2    -> [[ 0, 2,-4], [-2,  0, 6]]
    #        (the two 2s tie at the threshold: both kept, 4 entries survive)
    # mass = sum of trimmed = [[2, 7, -2], [1, -3, 6]] -> elected signs [[+, +, -], [+, -, +]]
    # disjoint mean of agreeing non-zeros:
    #   (0,0): 4            (0,1): (5+2)/2 = 3.5   (0,2): -4
    #   (1,0): 3            (1,1): -3              (1,2): 6
    # times scale 0.4 -> [[1.6, 1.4, -1.6], [1.2, -1.2, 2.4]]
    parties = _parties(
        [[4, -1, 2], [0.5, -3, 1]],
        [[-2, 5, 1], [3, -0.5, -1]],
        [[-1, 2, -4], [-2, 0.1, 6]],
    )
    merged = ties_merge(parties, density=0.5, scale=0.4)
    expected = torch.tensor([[1.6, 1.4, -1.6], [1.2, -1.2, 2.4]], dtype=torch.float64)
    torch.testing.assert_close(merged["h.0.mlp"], expected)


def test_ties_zero_mass_takes_majority_sign():
    # density 1 keeps everything. mass = [1-1, 2+1] = [0, 3]; elected = [0, +]; the zero takes the
    # layer's majority sign sign(0 + 1) = +. Entry 0: mean of positives {1} = 1; entry 1: (2+1)/2.
    parties = _parties([1.0, 2.0], [-1.0, 1.0])
    merged = ties_merge(parties, density=1.0, scale=1.0)
    torch.testing.assert_close(merged["h.0.mlp"], torch.tensor([1.0, 1.5], dtype=torch.float64))


def test_ties_drops_disagreeing_and_trimmed_entries():
    # density 0.25 on 4 entries keeps 1 per party. Party 0 keeps -5 (index 0); party 1 keeps 3
    # (index 1) and, for the outvoted check, party 2 keeps -1 at index 1 as well.
    # mass = [-5, 3 - 1, 0, 0] -> elected [-, +, ., .]; majority = sign(-1 + 1) = 0, so the two
    # all-trimmed entries keep sign 0 and merge to 0. Index 1 averages only the agreeing 3.
    parties = _parties([-5.0, 0.1, 0.2, 0.0], [0.0, 3.0, 0.1, 0.0], [0.0, -1.0, 0.5, 0.0])
    merged = ties_merge(parties, density=0.25, scale=1.0)["h.0.mlp"]
    torch.testing.assert_close(merged, torch.tensor([-5.0, 3.0, 0.0, 0.0], dtype=torch.float64))


def test_trim_threshold_keeps_top_fraction():
    delta = torch.arange(1.0, 11.0)  # 1..10, density 0.2 keeps 2 entries: threshold 9
    assert trim_threshold(delta, 0.2).item() == 9.0
    assert trim_threshold(-delta, 0.2).item() == 9.0
    assert trim_threshold(delta, 0.01).item() == 10.0  # at least one entry survives


def test_one_party_task_arithmetic_is_that_party():
    generator = torch.Generator().manual_seed(0)
    party = {"a": torch.randn(4, 3, generator=generator), "b": torch.randn(5, generator=generator)}
    merged = task_arithmetic([party])
    for name in party:
        torch.testing.assert_close(merged[name], party[name])
    assert merged["a"] is not party["a"]  # the caller's tensors are not aliased


def test_simple_average_is_task_arithmetic_over_n():
    generator = torch.Generator().manual_seed(1)
    parties = [{"w": torch.randn(3, 2, generator=generator, dtype=torch.float64)} for _ in range(3)]
    ta, sa = task_arithmetic(parties), simple_average(parties)
    torch.testing.assert_close(sa["w"], ta["w"] / 3)
    torch.testing.assert_close(ta["w"], parties[0]["w"] + parties[1]["w"] + parties[2]["w"])


def test_ties_full_density_one_party_is_scaled_party():
    party = {"w": torch.tensor([[1.0, -2.0], [3.0, 0.0]])}
    torch.testing.assert_close(ties_merge([party], density=1.0, scale=0.4)["w"], 0.4 * party["w"])


@pytest.mark.parametrize("merge", [task_arithmetic, simple_average, ties_merge])
def test_empty_party_list_rejected(merge):
    with pytest.raises(ValueError, match="must be a non-empty list of"):
        merge([])
    with pytest.raises(ValueError, match="one per party"):
        merge({"layer": torch.ones(2, 2)})  # one party's dict where the list of parties belongs


@pytest.mark.parametrize("merge", [task_arithmetic, simple_average, ties_merge])
@pytest.mark.parametrize("bad", [torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 2, dtype=torch.int64),
                                 torch.zeros(0, 2)])
def test_updates_that_are_not_float_or_empty_are_rejected(merge, bad):
    with pytest.raises(ValueError, match="layer 'w': expected a non-empty floating-point update"):
        merge([{"w": bad}, {"w": bad.clone()}])


@pytest.mark.parametrize("scale", [float("inf"), float("nan")])
def test_ties_scale_must_be_finite(scale):
    with pytest.raises(ValueError, match="scale must be a finite number"):
        ties_merge([{"w": torch.ones(3)}, {"w": -torch.ones(3)}], scale=scale)


@pytest.mark.parametrize("merge", [task_arithmetic, simple_average, ties_merge])
def test_shape_mismatch_rejected(merge):
    parties = [{"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 2)}]
    with pytest.raises(ValueError, match=r"party 1 layer 'w': shape \(3, 2\) != party 0's \(2, 3\)"):
        merge(parties)


@pytest.mark.parametrize("merge", [task_arithmetic, simple_average, ties_merge])
def test_layer_name_mismatch_rejected(merge):
    parties = [{"w": torch.zeros(2), "v": torch.zeros(2)}, {"w": torch.zeros(2), "u": torch.zeros(2)}]
    with pytest.raises(ValueError, match=r"party 1 layers differ.*missing \['v'\], unexpected \['u'\]"):
        merge(parties)


@pytest.mark.parametrize("merge", [task_arithmetic, simple_average, ties_merge])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_update_rejected(merge, bad):
    poisoned = torch.arange(10.0).reshape(2, 5)
    poisoned[1, 3] = bad
    parties = [{"w": torch.ones(2, 5)}, {"w": poisoned}]
    with pytest.raises(ValueError, match=r"party 1 layer 'w': has NaN or Inf entries"):
        merge(parties)


def test_dtype_mismatch_and_bad_density_rejected():
    parties = [{"w": torch.zeros(2)}, {"w": torch.zeros(2, dtype=torch.float64)}]
    with pytest.raises(ValueError, match=r"party 1 layer 'w': dtype torch.float64 != party 0's torch.float32"):
        task_arithmetic(parties)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 0.0"):
        ties_merge([{"w": torch.zeros(2)}], density=0.0)
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        task_arithmetic([{"w": [1.0, 2.0]}])
