"""Combination rules and checkpoint selection, on arrays (no models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagger.ensemble.combine import (
    check_weights,
    combine_logits,
    combine_numpy,
    default_combine,
    learn_weights,
    probabilities,
)
from tagger.ensemble.selection import (
    Selection,
    best_k,
    from_epoch,
    greedy,
    metric_value,
    parse_selection,
    resolve_metric,
)
from tagger.errors import TaggerError
from tagger.evaluation import metrics


def test_mean_prob_is_the_weighted_mean_of_probabilities_even_for_extreme_logits():
    logits = torch.tensor([[[-60.0, 0.3, 40.0]], [[25.0, -2.0, 80.0]], [[0.0, 1.0, -90.0]]])
    weights = torch.tensor([0.5, 0.3, 0.2])
    out = combine_logits(logits, weights, "mean-prob", "multilabel")
    expected = (weights[:, None, None] * torch.sigmoid(logits.double())).sum(0)
    assert torch.allclose(torch.sigmoid(out.double()), expected, rtol=1e-6, atol=1e-12)
    assert torch.isfinite(out).all()


def test_mean_prob_multiclass_is_the_mean_softmax_and_mean_logit_the_mean_logit():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=gen) * 5
    weights = torch.tensor([0.25, 0.75])
    out = combine_logits(logits, weights, "mean-prob", "multiclass")
    expected = 0.25 * torch.softmax(logits[0], -1) + 0.75 * torch.softmax(logits[1], -1)
    assert torch.allclose(torch.softmax(out, -1), expected, atol=1e-6)
    assert torch.allclose(combine_logits(logits, weights, "mean-logit", "multiclass"),
                          0.25 * logits[0] + 0.75 * logits[1], atol=1e-6)


def test_one_member_or_zero_weights_leave_a_member_unchanged():
    logits = torch.randn(2, 3, 4)
    for mode in ("mean-prob", "mean-logit"):
        for task in ("multilabel", "multiclass"):
            out = combine_logits(logits, torch.tensor([1.0, 0.0]), mode, task)
            reference = logits[0] if task == "multilabel" else torch.log_softmax(logits[0], -1)
            if mode == "mean-logit":
                reference = logits[0]
            assert torch.allclose(out, reference, atol=1e-5), (mode, task)
    assert np.allclose(combine_numpy(logits.numpy(), [1.0, 0.0], "mean-prob", "multilabel"), logits[0].numpy(),
                       atol=1e-5)


def test_weights_are_checked_and_normalised():
    assert check_weights([2, 1, 1], 3) == [0.5, 0.25, 0.25]
    for bad, count in (([1, 2], 3), ([-1, 2], 2), ([0, 0], 2), ([float("nan"), 1], 2)):
        with pytest.raises(TaggerError, match="--weights"):
            check_weights(bad, count)
    with pytest.raises(TaggerError, match="combine 'median'"):
        combine_logits(torch.zeros(1, 1, 1), torch.ones(1), "median", "multilabel")


def test_default_combine_follows_the_families_conventions():
    assert default_combine(["passt", "efficientat"]) == "mean-logit"
    assert default_combine(["efficientat", "ast"]) == "mean-prob"
    assert default_combine(["psla"]) == "mean-prob"


def test_learned_weights_favour_the_informative_member():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < 0.3).astype(np.float32)
    good = (targets * 2 - 1) * 3 + rng.normal(0, 1, targets.shape)
    noise = rng.normal(0, 3, targets.shape)
    weights = learn_weights(np.stack([noise, good]).astype(np.float32), targets, "multilabel")
    assert abs(sum(weights) - 1) < 1e-5 and weights[1] > 0.8 > weights[0]


def test_selection_specs_parse_and_bad_ones_are_one_line_errors():
    assert parse_selection("all") == Selection("all")
    assert parse_selection("epochs >= 11") == Selection("epochs", 11)
    assert parse_selection("best:3") == Selection("best", 3) and parse_selection("best:3").needs_validation
    assert parse_selection("GREEDY") == Selection("greedy")
    for bad in ("epochs>3", "best:0", "top3", ""):
        with pytest.raises(TaggerError, match="--select"):
            parse_selection(bad)


def test_epoch_window_uses_the_recorded_epochs():
    assert from_epoch([1.0, 2.0, 3.0, 4.0], list("abcd"), 3) == [2, 3]
    with pytest.raises(TaggerError, match="latest is epoch 4"):
        from_epoch([1.0, 4.0], ["a", "b"], 5)
    with pytest.raises(TaggerError, match="b: the checkpoint does not record its epoch"):
        from_epoch([1.0, None], ["a", "b"], 1)
    assert best_k([0.2, 0.9, 0.5, 0.9], 2) == [1, 3]


@pytest.mark.parametrize("seed", range(8))
def test_greedy_never_reports_less_than_its_best_member(seed):
    rng = np.random.default_rng(seed)
    targets = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 60)]
    members = rng.normal(0, 1, (5, 60, 6)).astype(np.float32) + targets * rng.uniform(0.2, 1.5, (5, 1, 1))

    def value(indices):
        logits = combine_numpy(members[indices], [1 / len(indices)] * len(indices), "mean-prob", "multiclass")
        return metric_value("accuracy", targets, probabilities(logits, "multiclass"))

    singles = [value([k]) for k in range(5)]
    chosen, best = greedy(singles, value)
    assert chosen[0] == int(np.argmax(singles)) and best >= max(singles)
    assert best == pytest.approx(value(chosen)) and len(set(chosen)) == len(chosen)


def test_greedy_stops_when_nothing_helps():
    chosen, best = greedy([0.5, 0.7, 0.6], lambda indices: 0.7 if indices == [1] else 0.1)
    assert chosen == [1] and best == 0.7


def test_metric_values_match_the_evaluation_metrics():
    rng = np.random.default_rng(1)
    targets = (rng.random((40, 5)) < 0.4).astype(np.float32)
    scores = rng.random((40, 5)).astype(np.float32)
    summary = metrics.summarize(targets, scores, "multilabel")
    assert metric_value("mAP", targets, scores) == pytest.approx(summary["mAP"])
    assert metric_value("mAUC", targets, scores) == pytest.approx(summary["mAUC"])
    single = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 40)]
    assert metric_value("accuracy", single, scores) == pytest.approx(
        metrics.summarize(single, scores, "multiclass")["accuracy"])
    assert resolve_metric("auto", single) == "accuracy" and resolve_metric("auto", targets) == "mAP"
    with pytest.raises(TaggerError, match="single-label"):
        resolve_metric("accuracy", targets)
