"""Balanced-sampling weights (AST and PaSST formulas), weight files, and the resumable DDP WeightedSampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tagger.data.sampling import (
    WeightedSampler,
    balanced_weights,
    class_counts,
    read_weights_csv,
    write_weights_csv,
)
from tagger.errors import TaggerError

TARGETS = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.float32)


def test_class_counts():
    np.testing.assert_array_equal(class_counts(TARGETS), [3, 1])
    np.testing.assert_array_equal(class_counts(np.array([[0.2, 0.0]])), [1, 0])  # soft labels count if > 0


@pytest.mark.parametrize(("formula", "offset"), [("ast", 0.01), ("passt", 100.0)])
def test_balanced_weights_by_hand(formula, offset):
    first, second = 1000 / (3 + offset), 1000 / (1 + offset)
    weights = balanced_weights(TARGETS, formula)
    assert weights.dtype == np.float64
    np.testing.assert_allclose(weights, [first, first + second, 0.0, first])  # no labels -> weight 0


def test_balanced_weights_unknown_formula():
    with pytest.raises(TaggerError, match="ast, passt"):
        balanced_weights(TARGETS, "panns")


def test_weight_file_round_trip_and_ast_format(tmp_path):
    weights = balanced_weights(TARGETS)
    write_weights_csv(weights, tmp_path / "train_weight.csv")
    np.testing.assert_array_equal(read_weights_csv(tmp_path / "train_weight.csv"), weights)
    assert [p.name for p in tmp_path.iterdir()] == ["train_weight.csv"]
    np.savetxt(tmp_path / "ast_weight.csv", weights, delimiter=",")  # what AST's gen_weight_file writes
    np.testing.assert_allclose(read_weights_csv(tmp_path / "ast_weight.csv"), weights)


@pytest.mark.parametrize(
    ("text", "message"), [("1.0\nabc\n", "line 2"), ("1.0\n-2\n", "line 2"), ("\n", "empty")]
)
def test_bad_weight_files(tmp_path, text, message):
    (tmp_path / "w.csv").write_text(text)
    with pytest.raises(TaggerError, match=message):
        read_weights_csv(tmp_path / "w.csv")
    with pytest.raises(TaggerError, match="does not exist"):
        read_weights_csv(tmp_path / "nothing.csv")


def test_draws_follow_the_weights():
    weights = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    drawn = list(WeightedSampler(weights, num_samples=20000, seed=3))
    frequency = np.bincount(drawn, minlength=5) / len(drawn)
    np.testing.assert_allclose(frequency, weights / weights.sum(), atol=0.015)
    assert frequency[4] == 0


def test_without_replacement_is_a_permutation_of_nonzero_clips():
    weights = np.array([1.0, 0.0, 5.0, 2.0, 1.0])
    drawn = list(WeightedSampler(weights, num_samples=4, replacement=False))
    assert sorted(drawn) == [0, 2, 3, 4]


def test_deterministic_per_seed_and_epoch():
    weights = np.linspace(1, 2, 50)
    first, second = WeightedSampler(weights, 100, seed=7), WeightedSampler(weights, 100, seed=7)
    assert list(first) == list(second) and list(first) == list(first)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    assert list(WeightedSampler(weights, 100, seed=8)) != epoch0


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("replacement", [True, False])
def test_ddp_shares_partition_the_global_draw(world_size, replacement):
    weights = np.arange(1, 31, dtype=np.float64)
    n = 20
    reference = WeightedSampler(weights, n, replacement, seed=5)
    reference.set_epoch(4)
    global_draw = list(reference)
    shares = []
    for rank in range(world_size):
        sampler = WeightedSampler(weights, n, replacement, seed=5, rank=rank, world_size=world_size)
        sampler.set_epoch(4)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler) == math.ceil(n / world_size)
    interleaved = [share[k] for k in range(len(shares[0])) for share in shares]
    assert interleaved[:n] == global_draw  # every position of the global draw goes to exactly one rank
    assert interleaved[n:] == global_draw[: len(interleaved) - n]  # padding repeats the start
    if replacement is False and n % world_size == 0:
        assert len(set().union(*map(set, shares))) == n


@settings(max_examples=25, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=40).filter(lambda w: sum(w) > 0.1),
    n=st.integers(1, 60),
    world_size=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_shares_cover_global_draw_property(weights, n, world_size, seed):
    global_draw = list(WeightedSampler(weights, n, seed=seed))
    shares = [
        list(WeightedSampler(weights, n, seed=seed, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    interleaved = [share[k] for k in range(len(shares[0])) for share in shares]
    assert interleaved[:n] == global_draw
    assert all(weights[i] > 0 for i in global_draw)


def test_state_dict_resumes_the_same_sequence():
    weights = np.linspace(0.5, 3, 40)
    sampler = WeightedSampler(weights, 25, seed=11, rank=1, world_size=2)
    sampler.set_epoch(3)
    full = list(sampler)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(5)]
    state = sampler.state_dict()
    assert state == {"epoch": 3, "position": 5} and consumed == full[:5]

    resumed = WeightedSampler(weights, 25, seed=11, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a trainer calls this on resume too: same epoch keeps the position
    assert list(resumed) == full[5:]
    assert resumed.state_dict() == {"epoch": 3, "position": 0}
    assert list(resumed) == full  # the next pass over the same epoch starts from the beginning
    resumed.load_state_dict({"epoch": 3, "position": 9})
    resumed.set_epoch(4)  # a new epoch starts at its beginning
    assert resumed.state_dict() == {"epoch": 4, "position": 0}
    with pytest.raises(TaggerError, match="outside"):
        resumed.load_state_dict({"epoch": 0, "position": 99})


def test_works_with_a_dataloader():
    loader = torch.utils.data.DataLoader(
        list(range(10)), batch_size=4, sampler=WeightedSampler([1.0] * 10, 10)
    )
    assert sum(len(batch) for batch in loader) == 10 and len(loader) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": [0.0, 0.0]}, "all sampling weights are zero"),
        ({"weights": [1.0, -1.0]}, "non-negative"),
        ({"weights": [1.0, float("nan")]}, "finite"),
        ({"weights": []}, "non-empty"),
        ({"num_samples": 0}, "at least 1"),
        ({"rank": 2, "world_size": 2}, "rank 2"),
        ({"rank": -1}, "rank -1"),
        ({"replacement": False, "num_samples": 3}, "without replacement"),
    ],
)
def test_sampler_rejects_bad_setups(kwargs, message):
    options = {"weights": [1.0, 0.0, 2.0], "num_samples": 2} | kwargs
    with pytest.raises(TaggerError, match=message):
        WeightedSampler(**options)
