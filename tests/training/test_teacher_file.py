"""Stored teacher logits: full or top-k, in the run's label order or mapped by the stored label ids."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.labels import LabelSet
from tagger.training.data import Teacher, save_teacher

LOGITS = np.array([[2.0, -1.0, 0.5, -3.0], [-2.0, 1.0, 3.0, 0.0]], dtype=np.float32)
TEACHER_LABELS = LabelSet(["/m/a", "/m/b", "/m/c", "/m/d"], ["A", "B", "C", "D"])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_full_logits_in_run_order(tmp_path):
    save_teacher(tmp_path / "t.npz", ["x", "y"], LOGITS)
    teacher = Teacher.load(tmp_path / "t.npz", 4, temperature=2.0)
    probs, found = teacher.lookup("y")
    assert found and np.allclose(probs, sigmoid(LOGITS[1] / 2.0))
    assert teacher.lookup("z") == (None, False)


def test_label_ids_map_columns_to_another_run_order_by_id_or_name(tmp_path):
    save_teacher(tmp_path / "t.npz", ["x", "y"], LOGITS, labels=TEACHER_LABELS)
    run = LabelSet(["/m/c", "A"], ["C", "A"])  # the second class is found by the teacher's display name
    teacher = Teacher.load(tmp_path / "t.npz", run, temperature=1.0)
    assert np.allclose(teacher.probs, sigmoid(LOGITS[:, [2, 0]]))


def test_top_k_keeps_the_largest_logits_and_zeroes_the_rest(tmp_path):
    save_teacher(tmp_path / "t.npz", ["x", "y"], LOGITS, labels=TEACHER_LABELS, top_k=2)
    with np.load(tmp_path / "t.npz") as data:
        assert "logits" not in data.files
        assert data["topk_indices"].tolist() == [[0, 2], [2, 1]]
    teacher = Teacher.load(tmp_path / "t.npz", TEACHER_LABELS, temperature=1.0)
    expected = np.where(np.array([[1, 0, 1, 0], [0, 1, 1, 0]], bool), sigmoid(LOGITS), 0.0)
    assert np.allclose(teacher.probs, expected)


def test_a_multiclass_run_gets_a_softmax_over_the_stored_logits(tmp_path):
    save_teacher(tmp_path / "full.npz", ["x", "y"], LOGITS)
    full = Teacher.load(tmp_path / "full.npz", 4, temperature=2.0, exclusive=True)
    expect = np.exp(LOGITS / 2.0) / np.exp(LOGITS / 2.0).sum(1, keepdims=True)
    assert np.allclose(full.probs, expect) and np.allclose(full.probs.sum(1), 1.0)
    save_teacher(tmp_path / "top.npz", ["x", "y"], LOGITS, labels=TEACHER_LABELS, top_k=2)
    top = Teacher.load(tmp_path / "top.npz", TEACHER_LABELS, temperature=1.0, exclusive=True)
    kept = np.array([[1, 0, 1, 0], [0, 1, 1, 0]], bool)
    expect = np.where(kept, np.exp(LOGITS), 0.0)
    assert np.allclose(top.probs, expect / expect.sum(1, keepdims=True))  # the softmax over the K kept classes


def test_missing_run_classes_are_named(tmp_path):
    save_teacher(tmp_path / "t.npz", ["x", "y"], LOGITS, labels=TEACHER_LABELS)
    with pytest.raises(TaggerError, match=r"no class for 2 of this run's labels \(/m/e, /m/f\)"):
        Teacher.load(tmp_path / "t.npz", LabelSet(["/m/a", "/m/e", "/m/f"]), temperature=1.0)


def test_bad_top_k_and_bad_files(tmp_path):
    with pytest.raises(TaggerError, match="at least 1"):
        save_teacher(tmp_path / "t.npz", ["x", "y"], LOGITS, top_k=0)
    np.savez(tmp_path / "bad.npz", ids=np.array(["x"]), topk_indices=np.array([[9]]), topk_logits=np.array([[1.0]]),
             label_ids=np.array(["a", "b"]))
    with pytest.raises(TaggerError, match="indices below 2"):
        Teacher.load(tmp_path / "bad.npz", 2, temperature=1.0)
