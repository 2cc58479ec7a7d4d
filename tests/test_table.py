"""Columns for large data sets: strings and CSR labels, their round trip through .npy, and dense rows on demand."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.data.sampling import balanced_weights, balanced_weights_csr
from tagger.data.table import ClipTable, LabelColumn, StringColumn
from tagger.errors import TaggerError
from tagger.labels import LabelSet

LISTS = [("dog", "bark"), (), ("rain",), ("dog", "dog", "rain"), ("bark",)]


def test_strings_round_trip_through_memory_mapped_files(tmp_path):
    strings = ["Y--PJHxphWEs", "", "clip é ü", "a/b/c.wav"]
    column = StringColumn.from_strings(strings)
    assert len(column) == 4 and [column[i] for i in range(4)] == strings and column.tolist() == strings
    column.save(tmp_path, "ids")
    loaded = StringColumn.load(tmp_path, "ids")
    assert isinstance(loaded.data, np.memmap) and loaded.tolist() == strings
    assert loaded.take(np.array([2, 0])).tolist() == ["clip é ü", "Y--PJHxphWEs"]


def test_labels_are_csr_listed_once_per_clip(tmp_path):
    column = LabelColumn.from_lists(LISTS)
    assert column.vocabulary == ["dog", "bark", "rain"]
    assert column.tolists() == [("dog", "bark"), (), ("rain",), ("dog", "rain"), ("bark",)]  # "dog" once
    assert column.counts().tolist() == [2, 2, 2] and column.row_ids().tolist() == [0, 0, 2, 3, 3, 4]
    column.save(tmp_path)
    assert LabelColumn.load(tmp_path).tolists() == column.tolists()


def test_dense_rows_follow_the_run_label_order():
    column = LabelColumn.from_lists(LISTS)
    run = LabelSet.from_list(["rain", "bark", "dog", "wind"])
    columns = column.column_map(run)
    assert column.dense([3, 1], columns, 4).tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(column.dense(np.arange(5), columns, 4), run.encode_many(LISTS))


def test_unknown_labels_and_multi_label_clips_fail_in_one_line():
    column = LabelColumn.from_lists(LISTS)
    with pytest.raises(TaggerError, match="rain"):
        column.column_map(LabelSet.from_list(["dog", "bark"]))
    with pytest.raises(TaggerError, match="clip 0 has 2 labels"):
        column.single(column.column_map(LabelSet.from_list(["dog", "bark", "rain"])))
    single = LabelColumn.from_lists([("b",), ("a",)])
    assert single.single(single.column_map(LabelSet.from_list(["a", "b"]))).tolist() == [1, 0]


def test_a_table_needs_one_label_row_per_id():
    with pytest.raises(ValueError):
        ClipTable(StringColumn.from_strings(["a"]), LabelColumn.from_lists([(), ()]))


@pytest.mark.parametrize("formula", ["ast", "passt"])
def test_balanced_weights_from_csr_equal_the_dense_ones(formula):
    rng = np.random.default_rng(0)
    lists = [tuple(f"c{j}" for j in rng.choice(30, rng.integers(0, 4))) for _ in range(2000)]
    column = LabelColumn.from_lists(lists)
    run = LabelSet.from_list([f"c{j}" for j in range(30)])
    dense = balanced_weights(run.encode_many(lists), formula)
    np.testing.assert_allclose(balanced_weights_csr(column, column.column_map(run), 30, formula), dense, rtol=1e-12)
