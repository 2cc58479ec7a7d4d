"""Metrics against sklearn (the papers' reference), including tied scores, missing classes and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score, roc_auc_score

from tagger import metrics
from tagger.errors import TaggerError


def tied_data(seed: int = 0, n: int = 200, c: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot targets and scores rounded to one decimal, so most scores tie with others."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.25).astype(np.float32)
    scores = np.round(np.clip(0.3 * targets + 0.7 * rng.random((n, c)), 0, 1), 1)
    return targets, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn_with_ties(seed):
    targets, scores = tied_data(seed)
    expected = [average_precision_score(targets[:, k], scores[:, k]) for k in range(targets.shape[1])]
    np.testing.assert_allclose(metrics.average_precision(targets, scores), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed):
    targets, scores = tied_data(seed)
    expected = [roc_auc_score(targets[:, k], scores[:, k]) for k in range(targets.shape[1])]
    np.testing.assert_allclose(metrics.roc_auc(targets, scores), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_lwlrap_matches_weighted_label_ranking_ap(seed):
    targets, scores = tied_data(seed, c=15)
    expected = label_ranking_average_precision_score(targets, scores, sample_weight=targets.sum(axis=1))
    assert metrics.lwlrap(targets, scores) == pytest.approx(expected, abs=1e-12)


def test_lwlrap_by_hand():
    # Clip 0: positive label at rank 2 of 3 -> 1/2. Clip 1: positives at ranks 1 and 3 -> 1/1 and 2/3.
    targets = np.array([[0, 1, 0], [1, 0, 1]])
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2]])
    assert metrics.lwlrap(targets, scores) == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)


def test_classes_without_positives_or_negatives_are_nan_and_skipped():
    targets, scores = tied_data(3, c=5)
    targets[:, 1] = 0  # no positives: AP and AUC undefined
    targets[:, 3] = 1  # no negatives: AP is 1, AUC undefined
    ap = metrics.average_precision(targets, scores)
    auc = metrics.roc_auc(targets, scores)
    assert np.isnan(ap[1]) and np.isnan(auc[1]) and np.isnan(auc[3])
    assert ap[3] == 1.0
    summary = metrics.summarize(targets, scores)
    assert summary["classes_scored"] == 4
    assert summary["mAP"] == pytest.approx(np.mean(ap[[0, 2, 3, 4]]))
    assert summary["mAUC"] == pytest.approx(np.mean(auc[[0, 2, 4]]))
    assert summary["d_prime"] == pytest.approx(metrics.d_prime(summary["mAUC"]))


def test_all_classes_empty_gives_nan_means_without_warning(recwarn):
    summary = metrics.summarize(np.zeros((4, 3)), np.random.default_rng(0).random((4, 3)))
    assert np.isnan(summary["mAP"]) and np.isnan(summary["mAUC"]) and np.isnan(summary["lwlrap"])
    assert summary["classes_scored"] == 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_d_prime_known_values():
    assert metrics.d_prime(0.5) == pytest.approx(0.0, abs=1e-15)
    assert metrics.d_prime(0.9) == pytest.approx(1.8124, abs=1e-4)
    assert metrics.d_prime(0.1) == pytest.approx(-1.8124, abs=1e-4)
    assert isinstance(metrics.d_prime(0.9), float)
    values = metrics.d_prime(np.array([0.9, np.nan, 1.0]))
    assert values[0] == pytest.approx(1.8124, abs=1e-4) and np.isnan(values[1]) and values[2] == np.inf


def test_accuracy_with_indices_and_one_hot():
    scores = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.4, 0.5, 0.1]])
    indices = np.array([1, 0, 0, 1])
    assert metrics.accuracy(indices, scores) == 0.75
    assert metrics.accuracy(np.eye(3)[indices], scores) == 0.75


def test_multiclass_summary():
    scores = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.4, 0.5, 0.1]])
    indices = np.array([1, 0, 0, 1])
    summary = metrics.summarize(indices, scores, task="multiclass")
    assert set(summary) == {"accuracy", "mAP", "mAUC", "d_prime"}
    assert summary["accuracy"] == 0.75
    onehot = np.eye(3)[indices]
    assert summary["mAP"] == pytest.approx(
        np.mean([average_precision_score(onehot[:, k], scores[:, k]) for k in (0, 1)])
    )
    assert summary["mAUC"] == pytest.approx(np.mean([roc_auc_score(onehot[:, k], scores[:, k]) for k in (0, 1)]))
    assert metrics.summarize(onehot, scores, task="multiclass") == summary


def test_soft_targets_are_binarised_at_one_half():
    targets, scores = tied_data(4)
    soft = np.where(targets > 0, 0.9, 0.05)
    soft[0, :] = 0.5  # exactly one half is negative
    hard = (soft > 0.5).astype(int)
    np.testing.assert_array_equal(metrics.average_precision(soft, scores), metrics.average_precision(hard, scores))
    np.testing.assert_array_equal(metrics.roc_auc(soft, scores), metrics.roc_auc(hard, scores))
    assert metrics.lwlrap(soft, scores) == metrics.lwlrap(hard, scores)


def test_perfect_ranking():
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    scores = targets + 0.1 * np.arange(4)[:, None] / 4
    summary = metrics.summarize(targets, scores)
    assert summary["mAP"] == 1.0 and summary["mAUC"] == 1.0 and summary["lwlrap"] == 1.0
    assert summary["d_prime"] == np.inf


def test_logits_and_probabilities_give_the_same_values():
    rng = np.random.default_rng(5)
    targets = rng.random((100, 6)) < 0.3
    logits = rng.normal(size=(100, 6)) + 2 * targets
    probs = 1 / (1 + np.exp(-logits))
    assert metrics.summarize(targets, logits) == pytest.approx(metrics.summarize(targets, probs), abs=1e-12)


def test_per_class_rows():
    targets, scores = tied_data(6, c=3)
    rows = metrics.per_class(targets, scores, ["dog", "cat", "bird"])
    assert [r["label"] for r in rows] == ["dog", "cat", "bird"]
    assert rows[1]["positives"] == int(targets[:, 1].sum())
    assert rows[2]["AP"] == pytest.approx(average_precision_score(targets[:, 2], scores[:, 2]), abs=1e-12)
    assert rows[0]["AUC"] == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]), abs=1e-12)
    assert rows[0]["d_prime"] == pytest.approx(metrics.d_prime(rows[0]["AUC"]))
    with pytest.raises(TaggerError, match="2 class names for 3"):
        metrics.per_class(targets, scores, ["dog", "cat"])


@pytest.mark.parametrize(
    ("targets", "scores", "message"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), "do not match"),
        (np.zeros((3,)), np.zeros((4, 3)), "do not match"),
        (np.zeros((4, 3)), np.zeros(4), "matrix"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "no scores"),
        (np.zeros((2, 2)), np.array([[np.nan, 0.0], [np.inf, np.nan]]), "2 NaN and 1 inf"),
        (np.array([0, 3]), np.zeros((2, 3)), "0..2"),
        (np.array([0.5, 1.0]), np.zeros((2, 3)), "class indices"),
    ],
)
def test_bad_input_raises_tagger_error(targets, scores, message):
    with pytest.raises(TaggerError, match=message):
        metrics.summarize(targets, scores)


def test_unknown_task():
    with pytest.raises(TaggerError, match="unknown task"):
        metrics.summarize(np.eye(2), np.eye(2), task="regression")
