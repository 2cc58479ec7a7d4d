"""Metrics against sklearn (the papers' reference), including tied scores, missing classes and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    label_ranking_average_precision_score,
    roc_auc_score,
    top_k_accuracy_score,
)

from tagger.errors import TaggerError
from tagger.evaluation import metrics


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
    assert summary["classes_without_positives"] == 1 and summary["classes_without_negatives"] == 1
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
    assert list(summary) == [
        "accuracy", "top5_accuracy", "mAP", "mAUC", "d_prime", "lwlrap",
        "classes_scored", "classes_without_positives", "classes_without_negatives",
    ]
    assert summary["accuracy"] == 0.75
    assert summary["top5_accuracy"] == 1.0  # k = min(5, C) = 3: every class is in the top 3
    # One positive per clip: lwlrap is the mean reciprocal rank of the target (ranks 1, 1, 3, 1).
    assert summary["lwlrap"] == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)
    assert (summary["classes_scored"], summary["classes_without_positives"]) == (2, 1)
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


def continuous_multiclass(seed: int, n: int = 300, c: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and untied scores that favour the target class a little."""
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, c, n)
    scores = rng.random((n, c)) + 0.4 * np.eye(c)[indices]
    return indices, scores


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_accuracy_matches_sklearn(seed, k):
    indices, scores = continuous_multiclass(seed)
    expected = top_k_accuracy_score(indices, scores, k=k, labels=np.arange(scores.shape[1]))
    assert metrics.top_k_accuracy(indices, scores, k) == pytest.approx(expected, abs=1e-12)
    assert metrics.top_k_accuracy(np.eye(scores.shape[1])[indices], scores, k) == pytest.approx(expected, abs=1e-12)


def test_top_k_accuracy_ties_k_one_and_large_k():
    # Clip 0: target 2 ties with class 0 for the top score -> rank 2 (lower index first). Clip 1: target 0 ties
    # with class 1 -> rank 1. Clip 2: target 1 is last of 3.
    scores = np.array([[0.5, 0.1, 0.5], [0.4, 0.4, 0.2], [0.5, 0.1, 0.3]])
    indices = np.array([2, 0, 1])
    assert metrics.top_k_accuracy(indices, scores, 1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(indices, scores, 2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(indices, scores, 3) == 1.0
    assert metrics.top_k_accuracy(indices, scores, 10) == 1.0
    targets, tied = tied_data(7, c=6)  # many ties: top-1 still agrees with argmax accuracy
    labels = tied.argmax(axis=1)[::-1]
    assert metrics.top_k_accuracy(labels, tied, 1) == metrics.accuracy(labels, tied)
    with pytest.raises(TaggerError, match="at least 1"):
        metrics.top_k_accuracy(indices, scores, 0)


def test_summary_top5_matches_sklearn():
    indices, scores = continuous_multiclass(3, c=12)
    summary = metrics.summarize(indices, scores, task="multiclass")
    assert summary["top5_accuracy"] == pytest.approx(top_k_accuracy_score(indices, scores, k=5))
    assert summary["lwlrap"] == pytest.approx(label_ranking_average_precision_score(np.eye(12)[indices], scores))


def test_lwlrap_by_hand_with_ties_and_uneven_label_counts():
    # Clip 0 has 3 positives, clip 1 one: lwlrap weighs the 4 (clip, label) pairs equally, not the 2 clips.
    # Clip 0: scores 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (pos). Tied 0.5s both rank 3 (pessimistic):
    # 0.9 -> 1/1; 0.5 (pos) -> 2 positives in the top 3 -> 2/3; 0.1 -> 3/4.
    # Clip 1: its positive ties with a negative at the top -> 1/2.
    targets = np.array([[1, 1, 0, 1], [0, 0, 1, 0]])
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.7, 0.2, 0.7, 0.1]])
    assert metrics.lwlrap(targets, scores) == pytest.approx((1 + 2 / 3 + 3 / 4 + 1 / 2) / 4)
    clip_mean = np.mean([(1 + 2 / 3 + 3 / 4) / 3, 1 / 2])
    assert metrics.lwlrap(targets, scores) != pytest.approx(clip_mean)


def test_class_counts():
    targets = np.array([[1, 0, 1, 0.6], [1, 0, 0, 0.2], [1, 0, 1, 0.9]])
    assert metrics.class_counts(targets) == {
        "classes_scored": 3, "classes_without_positives": 1, "classes_without_negatives": 1,
    }
    with pytest.raises(TaggerError, match="matrix"):
        metrics.class_counts(np.array([0, 1]))
