"""LabelSet (reading, lookups, encoding) and Ontology (AudioSet JSON, edge CSVs, traversal)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import shared_path

from tagger.errors import TaggerError
from tagger.labels import LabelSet, Ontology


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def animals():
    return LabelSet.from_list(["/m/dog", "/m/cat", "/m/cow"], ["Dog", "Cat, domestic", "Cow"])


# ---- LabelSet ------------------------------------------------------------------------------------


def test_from_csv_audioset_layout_with_quoted_commas(tmp_path):
    path = write(
        tmp_path / "labels.csv",
        'index,mid,display_name\n1,/m/b,"Male speech, man speaking"\n0,/m/a,"Speech"\n',
    )
    labels = LabelSet.from_csv(path)
    assert labels.ids == ("/m/a", "/m/b")  # ordered by the index column, not by row
    assert labels.names == ("Speech", "Male speech, man speaking")


@pytest.mark.parametrize(
    ("text", "ids", "names"),
    [
        ("id,name\na,Alpha\nb,Beta\n", ("a", "b"), ("Alpha", "Beta")),
        ("id\na\nb\n", ("a", "b"), ("a", "b")),
        ("a\nb\n\n", ("a", "b"), ("a", "b")),
        ("name,mid\nAlpha,a\n", ("a",), ("Alpha",)),
    ],
)
def test_from_csv_other_layouts(tmp_path, text, ids, names):
    labels = LabelSet.from_csv(write(tmp_path / "labels.csv", text))
    assert (labels.ids, labels.names) == (ids, names)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("index,mid,display_name\n", "no classes"),
        ("index,mid,display_name\n0,a,A\n0,b,B\n", "index"),
        ("index,mid,display_name\n0,a,A\n2,b,B\n", "index 2"),
        ("index,mid,display_name\nx,a,A\n", "not an integer"),
        ("id,name\na,A\na,B\n", "twice"),
        ("foo,bar\n1,2\n", "no 'mid' or 'id' column"),
    ],
)
def test_from_csv_rejects_bad_files(tmp_path, text, message):
    with pytest.raises(TaggerError, match=message):
        LabelSet.from_csv(write(tmp_path / "labels.csv", text))


def test_from_csv_missing_file(tmp_path):
    with pytest.raises(TaggerError, match="does not exist"):
        LabelSet.from_csv(tmp_path / "nope.csv")


def test_lookup_by_id_or_name(animals):
    assert animals.index("/m/cat") == 1
    assert animals.index("Cat, domestic") == 1
    assert animals.id_of(2) == "/m/cow" and animals.name_of(2) == "Cow"
    assert "Dog" in animals and "/m/dog" in animals and "Horse" not in animals
    assert list(animals) == ["/m/dog", "/m/cat", "/m/cow"] and len(animals) == 3
    with pytest.raises(TaggerError, match="unknown label 'Horse'"):
        animals.index("Horse")
    with pytest.raises(IndexError):
        animals.id_of(3)


def test_ambiguous_name_fails_only_when_used():
    labels = LabelSet.from_list(["a", "b"], ["Same", "Same"])
    assert labels.index("b") == 1
    with pytest.raises(TaggerError, match="several classes"):
        labels.index("Same")


def test_encode_variants(animals):
    np.testing.assert_array_equal(animals.encode(["/m/dog", "Cow"]), [1, 0, 1])
    np.testing.assert_array_equal(animals.encode("Cat, domestic"), [0, 1, 0])  # a string is one label
    assert animals.encode([]).dtype == np.float32
    many = animals.encode_many([["/m/dog"], [], ("Cow", "/m/cat")])
    assert many.shape == (3, 3) and many.dtype == np.float32
    np.testing.assert_array_equal(many, [[1, 0, 0], [0, 0, 0], [0, 1, 1]])
    assert animals.encode_many([]).shape == (0, 3)
    assert animals.encode_single(["Cow"]) == 2


def test_encode_many_reports_all_unknown_labels(animals):
    lists = [[f"bird{i}"] for i in range(7)] + [["bird0", "/m/dog"]]
    with pytest.raises(TaggerError) as info:
        animals.encode_many(lists)
    message = str(info.value)
    assert "\n" not in message
    assert "7 labels" in message and "8 uses" in message and "and 2 more" in message
    assert "'bird0'" in message and "'bird4'" in message and "'bird5'" not in message


@pytest.mark.parametrize("labels", [[], ["/m/dog", "/m/cat"]])
def test_encode_single_needs_exactly_one(animals, labels):
    with pytest.raises(TaggerError, match="exactly one"):
        animals.encode_single(labels)


def test_round_trips(animals, tmp_path):
    assert LabelSet.from_list_of_dicts(animals.to_list()) == animals
    animals.write_csv(tmp_path / "out" / "labels.csv")
    assert LabelSet.from_csv(tmp_path / "out" / "labels.csv") == animals
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["labels.csv"]  # no temporary left behind
    assert animals != LabelSet.from_list(animals.ids)
    with pytest.raises(TaggerError, match="id"):
        LabelSet.from_list_of_dicts([{"name": "x"}])


def test_from_examples_sorts_unique_labels():
    class Clip:
        def __init__(self, *labels):
            self.labels = labels

    labels = LabelSet.from_examples([Clip("b", "a"), Clip("c"), Clip("a")])
    assert labels.ids == ("a", "b", "c") and labels.names == labels.ids
    with pytest.raises(TaggerError, match="no labels"):
        LabelSet.from_examples([Clip()])


def test_constructor_checks():
    with pytest.raises(TaggerError, match="at least one"):
        LabelSet.from_list([])
    with pytest.raises(TaggerError, match="one name per id"):
        LabelSet.from_list(["a", "b"], ["A"])


def test_labels_module_does_not_import_torch():
    code = "import sys, tagger.labels, tagger.data.manifests; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_real_audioset_label_file():
    labels = LabelSet.from_csv(shared_path("data", "audioset", "class_labels_indices.csv"))
    assert len(labels) == 527
    assert labels.name_of(1) == "Male speech, man speaking"
    assert labels.index("/m/09x0r") == 0 and labels.index("Speech") == 0
    assert labels.index("Male speech, man speaking") == 1


def test_real_esc50_label_file_matches_categories():
    labels = LabelSet.from_csv(shared_path("data", "esc50-folds1-4", "class_labels_indices.csv"))
    assert len(labels) == 50 and labels.index("dog") == 0 and labels.id_of(0) == "/m/07rwj00"


# ---- Ontology ------------------------------------------------------------------------------------


def small_ontology_json(tmp_path):
    nodes = [
        {"id": "root", "name": "Everything", "child_ids": ["animal", "thing"], "restrictions": ["abstract"]},
        {"id": "animal", "name": "Animal", "child_ids": ["dog", "pet"], "restrictions": []},
        {"id": "pet", "name": "Pet", "child_ids": ["dog"], "restrictions": ["abstract", "blacklist"]},
        {"id": "dog", "name": "Dog", "child_ids": ["bark"], "restrictions": []},
        {"id": "bark", "name": "Bark", "child_ids": [], "restrictions": ["blacklist"]},
        {"id": "thing", "name": "Thing", "child_ids": []},
    ]
    return write(tmp_path / "ontology.json", json.dumps(nodes))


def test_ontology_json_queries(tmp_path):
    onto = Ontology.load(small_ontology_json(tmp_path))
    assert len(onto) == 6 and "dog" in onto and "cat" not in onto
    assert onto.name("dog") == "Dog"
    assert onto.children("animal") == ("dog", "pet")
    assert set(onto.parents("dog")) == {"animal", "pet"}
    assert onto.ancestors("bark") == {"dog", "animal", "pet", "root"}
    assert onto.descendants("animal") == {"dog", "pet", "bark"}
    assert onto.ancestors("root") == set() and onto.descendants("bark") == set()
    assert [i for i in onto.ids if onto.is_abstract(i)] == ["root", "pet"]
    assert not onto.is_abstract("bark") and onto.restrictions("bark") == ("blacklist",)
    with pytest.raises(TaggerError, match="not in the ontology"):
        onto.children("cat")


def test_without_abstract_cuts_paths(tmp_path):
    onto = Ontology.load(small_ontology_json(tmp_path)).without_abstract()
    assert set(onto.ids) == {"animal", "pet", "dog", "bark", "thing"}  # pet is abstract *and* blacklisted: kept
    assert set(onto.parents("dog")) == {"animal", "pet"}
    assert onto.ancestors("bark") == {"dog", "animal", "pet"}
    assert onto.ancestors("thing") == set()  # its only parent was abstract


def test_ontology_csv_with_and_without_header(tmp_path):
    for text in ("parent,child\na,b\nb,c\na,c\nlonely\n", "a,b\nb,c\na,c\nlonely\n"):
        onto = Ontology.load(write(tmp_path / "edges.csv", text))
        assert onto.ancestors("c") == {"a", "b"} and set(onto.parents("c")) == {"a", "b"}
        assert onto.name("c") == "c" and onto.children("lonely") == ()


@pytest.mark.parametrize("text", ["a,b\nb,c\nc,a\n", "a,a\n"])
def test_ontology_csv_cycle_is_an_error(tmp_path, text):
    with pytest.raises(TaggerError, match="cycle"):
        Ontology.from_csv(write(tmp_path / "edges.csv", text))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("o.json", "[{", "line 1"),
        ("o.json", '{"id": "a"}', "list"),
        ("o.json", '[{"id": "a", "child_ids": ["b"]}]', "not a node"),
        ("o.json", '[{"id": "a"}, {"id": "a"}]', "twice"),
        ("o.csv", "a,b,c\n", "parent,child"),
        ("o.txt", "a,b\n", ".json"),
    ],
)
def test_ontology_bad_files(tmp_path, name, text, message):
    with pytest.raises(TaggerError, match=message):
        Ontology.load(write(tmp_path / name, text))


def test_real_audioset_ontology():
    onto = Ontology.from_json(shared_path("data", "audioset", "ontology.json"))
    assert len(onto) == 632
    dog, bark = "/m/0bt9lr", "/m/05tny_"
    assert bark in onto.children(dog) and dog in onto.parents(bark)
    assert {"/m/0jbk", "/m/068hy", dog} <= onto.ancestors(bark)
    assert bark in onto.descendants("/m/0jbk")
    abstract = [i for i in onto.ids if onto.is_abstract(i)]
    assert len(abstract) == 23
    assert sum(onto.restrictions(i) == ("abstract", "blacklist") for i in abstract) == 1
    kept = onto.without_abstract()
    assert len(kept) == 610  # 'Musical concepts' (abstract and blacklist) stays, as in PSLA
    assert "/m/04rlf" in kept.ancestors("/m/074ft")  # Song -> Musical concepts -> Music
