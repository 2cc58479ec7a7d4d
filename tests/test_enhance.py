"""PSLA label enhancement on a small hand-made ontology: thresholds, both rules, abstract classes, outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tagger.data.manifests import read_manifest
from tagger.enhance.report import build_report, markdown
from tagger.enhance.rules import (
    Hierarchy,
    class_thresholds,
    consistency,
    enhance,
    family_check,
    parse_fixes,
    parse_threshold,
)
from tagger.enhance.run import (
    EnhanceSettings,
    TeacherScores,
    check_inputs,
    enhance_manifest,
    write_manifest_and_weights,
)
from tagger.errors import TaggerError
from tagger.labels import LabelSet, Ontology

# animal and pets are both parents of dog and cat (several parents); dog has children bark and howl; 'group' is
# abstract, so noise has no ancestor; 'concepts' is abstract *and* blacklisted, which PSLA keeps, so song keeps
# music as an ancestor; 'outsider' is a class the ontology does not know.
NODES = {
    "root": ("Everything", ["animal", "pets", "music"], ["abstract"]),
    "animal": ("Animal", ["dog", "cat"], []),
    "pets": ("Pets", ["dog", "cat"], []),
    "dog": ("Dog", ["bark", "howl"], []),
    "cat": ("Cat", [], []),
    "bark": ("Bark", [], []),
    "howl": ("Howl", [], []),
    "group": ("Group", ["noise"], ["abstract"]),
    "noise": ("Noise", [], []),
    "music": ("Music", ["concepts"], []),
    "concepts": ("Musical concepts", ["song"], ["abstract", "blacklist"]),
    "song": ("Song", [], ["blacklist"]),
}
CLASSES = ["animal", "pets", "dog", "cat", "bark", "howl", "noise", "music", "song", "group", "outsider"]
LABELS = LabelSet(CLASSES, [NODES[c][0] if c in NODES else "Outsider" for c in CLASSES])
K = {c: i for i, c in enumerate(CLASSES)}


def ontology() -> Ontology:
    return Ontology({k: v[0] for k, v in NODES.items()}, {k: v[1] for k, v in NODES.items()},
                    {k: v[2] for k, v in NODES.items()})


def matrix(*rows: tuple[str, ...]) -> np.ndarray:
    out = np.zeros((len(rows), len(CLASSES)), dtype=bool)
    for i, row in enumerate(rows):
        out[i, [K[c] for c in row]] = True
    return out


def scores_for(*rows: dict[str, float]) -> np.ndarray:
    out = np.zeros((len(rows), len(CLASSES)), dtype=np.float32)
    for i, row in enumerate(rows):
        for label, value in row.items():
            out[i, K[label]] = value
    return out


HIERARCHY = Hierarchy.build(ontology(), LABELS)
HALF = np.full(len(CLASSES), 0.5)


def added(targets, scores, thresholds=HALF, **kwargs) -> list[set[str]]:
    result = enhance(targets, scores, HIERARCHY, thresholds, **kwargs)
    return [{CLASSES[k] for k in np.flatnonzero(row)} for row in result.added]


# ---- thresholds ----------------------------------------------------------------------------------


def test_thresholds_follow_psla_statistics_over_positives():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 3))
    targets = rng.random((50, 3)) < 0.4
    targets[:, 2] = False
    for rule, stat in (("mean", np.mean), ("median", np.median), ("p25", lambda v: np.percentile(v, 25)),
                       ("p10", lambda v: np.percentile(v, 10)), ("p5", lambda v: np.percentile(v, 5))):
        got = class_thresholds(scores, targets, rule)
        for k in range(2):
            assert got[k] == pytest.approx(stat(scores[targets[:, k], k]))
        assert np.isnan(got[2])  # no positives: no threshold, never added
    assert class_thresholds(scores, targets, "mean", fallback=0.7)[2] == 0.7
    assert class_thresholds(scores, targets, 0.3).tolist() == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("text", ["p50", "-0.1", "1.5", "high"])
def test_bad_thresholds(text):
    with pytest.raises(TaggerError, match="--threshold"):
        parse_threshold(text)


def test_parse_threshold_and_fixes():
    assert parse_threshold("Mean") == "mean" and parse_threshold("0.25") == 0.25
    assert parse_fixes("type1") == ("type1",) and parse_fixes("type-2, type1") == ("type2", "type1")
    with pytest.raises(TaggerError, match="--fix"):
        parse_fixes("type3")


# ---- the ontology seen through the vocabulary ----------------------------------------------------


def test_hierarchy_multiple_parents_abstract_cut_and_blacklisted_abstract_kept():
    children = {CLASSES[p]: {CLASSES[c] for c in np.flatnonzero(HIERARCHY.children[p])} for p in range(len(CLASSES))}
    ancestors = {CLASSES[c]: {CLASSES[a] for a in np.flatnonzero(HIERARCHY.ancestors[c])} for c in range(len(CLASSES))}
    assert children["animal"] == children["pets"] == {"dog", "cat"}
    assert children["dog"] == {"bark", "howl"}
    assert ancestors["bark"] == {"dog", "animal", "pets"}  # transitive, through both parents
    assert ancestors["noise"] == set()  # its only parent is abstract
    assert ancestors["song"] == {"music"}  # through 'Musical concepts', abstract and blacklisted, as PSLA
    assert children["group"] == set() and ancestors["animal"] == set()  # root is abstract
    assert HIERARCHY.outside == ["outsider"] and HIERARCHY.abstract == ["group"]


# ---- the rules -----------------------------------------------------------------------------------


def test_type1_adds_direct_children_above_threshold_only():
    targets = matrix(("dog",), ("cat",))
    scores = scores_for({"bark": 0.9, "howl": 0.2}, {"bark": 0.9})
    assert added(targets, scores, fixes=("type1",)) == [{"bark"}, set()]  # cat has no children


def test_type2_adds_every_ancestor_through_several_parents():
    targets = matrix(("bark",), ("bark",), ("noise",), ("song",))
    scores = scores_for({"dog": 0.9, "animal": 0.8, "pets": 0.7}, {"dog": 0.9, "animal": 0.8, "pets": 0.1},
                        {"group": 0.9}, {"music": 0.9})
    assert added(targets, scores, fixes=("type2",)) == [{"dog", "animal", "pets"}, {"dog", "animal"}, set(),
                                                        {"music"}]


def test_union_of_both_rules_and_labels_are_never_removed():
    targets = matrix(("dog", "outsider"))
    scores = scores_for({"bark": 0.9, "animal": 0.9, "pets": 0.9, "dog": 0.0, "outsider": 0.0})
    result = enhance(targets, scores, HIERARCHY, HALF)
    assert {CLASSES[k] for k in np.flatnonzero(result.type1[0])} == {"bark"}
    assert {CLASSES[k] for k in np.flatnonzero(result.type2[0])} == {"animal", "pets"}
    assert not (targets & result.added).any()  # nothing already there is "added", nothing is taken away


def test_classes_without_threshold_are_never_added():
    thresholds = HALF.copy()
    thresholds[K["bark"]] = np.nan
    assert added(matrix(("dog",)), scores_for({"bark": 1.0, "howl": 0.9}), thresholds) == [{"howl"}]


def test_single_pass_is_psla_and_the_default_repeats_until_stable():
    targets = matrix(("animal",))
    scores = scores_for({"dog": 0.9, "bark": 0.9, "pets": 0.9})
    assert added(targets, scores, single_pass=True) == [{"dog"}]  # one level, from the original labels
    result = enhance(targets, scores, HIERARCHY, HALF)
    assert {CLASSES[k] for k in np.flatnonzero(result.added[0])} == {"dog", "bark", "pets"}
    assert result.passes == 3


def test_unscored_clips_are_left_alone():
    targets = matrix(("dog",), ("dog",))
    scores = scores_for({"bark": 0.9}, {"bark": 0.9})
    assert added(targets, scores, scored=np.array([True, False])) == [{"bark"}, set()]


def test_consistency_and_the_speech_style_family_check():
    before = matrix(("bark",), ("dog",), ("animal", "pets", "dog", "bark"))
    check = consistency(before, HIERARCHY)
    assert check.child_without_ancestor == 2  # bark without dog/animal/pets; dog without animal/pets
    assert check.parent_without_child == 1  # dog without bark or howl (clip 3 is complete)
    family = family_check(before, LABELS, HIERARCHY, "dog")
    assert family == {"parent": 2, "bark": 2, "howl": 0, "child_without_parent": 1}
    assert family_check(before, LABELS, HIERARCHY, "/m/09x0r") is None


# ---- manifests in, manifests out -----------------------------------------------------------------


def make_manifest(tmp_path, rows: list[tuple[str, str]], name: str = "train.csv", extra: bool = False):
    for clip, _ in rows:
        (tmp_path / f"{clip}.wav").touch()
    header = ["path", "labels", "id"] + (["split"] if extra else [])
    with open(tmp_path / name, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([f"{clip}.wav", labels, clip] + (["train"] if extra else []) for clip, labels in rows)
    return tmp_path / name


def teacher(ids: list[str], *rows: dict[str, float]) -> TeacherScores:
    probabilities = scores_for(*rows)
    return TeacherScores(LABELS, "multilabel", ids, probabilities, np.log(probabilities + 1e-6), "teacher.npz")


ROWS = [("a", "dog"), ("b", "dog"), ("c", "bark"), ("d", "bark;outsider"), ("e", "animal")]
SCORES = [{"dog": 0.8, "bark": 0.9, "animal": 0.95}, {"dog": 0.6, "bark": 0.3}, {"bark": 0.7, "dog": 0.9},
          {"bark": 0.5, "dog": 0.1, "outsider": 0.9}, {"animal": 0.9, "dog": 0.95, "cat": 0.2, "bark": 0.8}]


def test_enhance_manifest_end_to_end_and_idempotent(tmp_path):
    manifest = read_manifest(make_manifest(tmp_path, ROWS, extra=True))
    settings = EnhanceSettings("mean", fallback=0.5)
    result = enhance_manifest(manifest, teacher([c for c, _ in ROWS], *SCORES), ontology(), settings)
    # thresholds: dog mean(0.8, 0.6) = 0.7, bark mean(0.7, 0.5) = 0.6, animal 0.9 (clip e), pets (none) 0.5;
    # e gains dog by Type I, then bark under dog in the second pass
    assert result.new_labels == {"a": ("dog", "animal", "bark"), "c": ("bark", "dog"), "e": ("animal", "dog", "bark")}
    rows = write_manifest_and_weights(result, tmp_path / "out.csv", tmp_path / "out_weight.csv")
    assert rows == 5
    text = (tmp_path / "out.csv").read_text().splitlines()
    assert text[:2] == ["path,labels,id,split", 'a.wav,"dog,animal,bark",a,train']
    assert text[4] == 'd.wav,"bark,outsider",d,train'  # unchanged row, rewritten with the file's one separator
    assert len((tmp_path / "out_weight.csv").read_text().splitlines()) == 5
    again = enhance_manifest(read_manifest(tmp_path / "out.csv"), teacher([c for c, _ in ROWS], *SCORES),
                             ontology(), settings)
    assert again.new_labels == {}  # enhancing the enhanced set adds nothing new


def test_report_counts_and_markdown(tmp_path):
    manifest = read_manifest(make_manifest(tmp_path, ROWS))
    result = enhance_manifest(manifest, teacher([c for c, _ in ROWS], *SCORES), ontology(),
                              EnhanceSettings("mean", fallback=0.5))
    report = build_report(result)
    assert report.summary["clips_changed"] == 3 and report.summary["labels_added"] == 5
    by_id = {row["id"]: row for row in report.classes}
    assert by_id["dog"]["threshold"] == pytest.approx(0.7) and by_id["dog"]["added_type2"] == 1
    assert by_id["bark"]["added_type1"] == 2 and by_id["bark"]["positives_after"] == 4
    assert {"rule": "Type II", "from": "Bark", "to": "Dog", "clips": 1} in report.pairs
    assert report.outside == ["Outsider"] and report.abstract == ["Group"]
    text = markdown(report)
    assert "## Labels added per class" in text and "| bark | Bark | 0.6 | 2 | 2 | 0 | 2 | 4 |" in text
    assert "Classes outside the ontology" in text


def test_output_keeps_the_input_format(tmp_path):
    for clip, _ in ROWS[:2]:
        (tmp_path / f"{clip}.wav").touch()
    entries = [{"wav": "a.wav", "labels": "dog", "video_id": "x1"}, {"wav": "b.wav", "labels": "dog"},
               {"wav": "zz.wav", "labels": "dog"}]  # zz.wav is missing: kept as it was
    (tmp_path / "train.json").write_text(json.dumps({"data": entries, "note": "kept"}))
    manifest = read_manifest(tmp_path / "train.json")
    result = enhance_manifest(manifest, teacher(["a", "b"], *SCORES[:2]), ontology(), EnhanceSettings(0.75))
    write_manifest_and_weights(result, tmp_path / "out.json", tmp_path / "w.csv")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["note"] == "kept" and out["data"][0] == {"wav": "a.wav", "labels": "dog,animal,bark", "video_id": "x1"}
    assert out["data"][2] == entries[2]
    audioset = tmp_path / "segments.csv"
    (tmp_path / "Ya.wav").touch()
    audioset.write_text('# YTID, start_seconds, end_seconds, positive_labels\na, 0.000, 10.000, "dog"\n')
    result = enhance_manifest(read_manifest(audioset), teacher(["a"], SCORES[0]), ontology(), EnhanceSettings(0.75))
    write_manifest_and_weights(result, tmp_path / "segments-out.csv", tmp_path / "w2.csv")
    assert (tmp_path / "segments-out.csv").read_text() == (
        '# YTID, start_seconds, end_seconds, positive_labels\na, 0.000, 10.000, "dog,animal,bark"\n')


def test_display_name_manifests_gain_display_names(tmp_path):
    manifest = read_manifest(make_manifest(tmp_path, [("a", "Dog")]))
    result = enhance_manifest(manifest, teacher(["a"], SCORES[0]), ontology(), EnhanceSettings(0.75))
    assert result.new_labels == {"a": ("Dog", "Animal", "Bark")}


def test_bad_inputs_are_one_line_errors(tmp_path):
    manifest = read_manifest(make_manifest(tmp_path, [("a", "dog"), ("b", "zebra;unicorn")]))
    with pytest.raises(TaggerError, match=r"lack 2 labels .*'zebra', 'unicorn'; pass --labels"):
        check_inputs(manifest, ontology())(LABELS)
    only_outsider = read_manifest(make_manifest(tmp_path, [("a", "outsider")], "o.csv"))
    with pytest.raises(TaggerError, match="knows none of the 1 classes"):
        check_inputs(only_outsider, ontology())(LABELS)
    unlabelled = read_manifest(make_manifest(tmp_path, [("a", "")], "u.csv"))
    with pytest.raises(TaggerError, match="no clip of .* has a label"):
        enhance_manifest(unlabelled, teacher(["a"], {}), ontology())
    ok = read_manifest(make_manifest(tmp_path, [("a", "dog")], "ok.csv"))
    with pytest.raises(TaggerError, match="cover none of the clips"):
        enhance_manifest(ok, teacher(["zz"], {}), ontology())


def test_single_label_formats_become_plain_csv_with_paths_valid_from_the_new_folder(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").touch()
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text("filename,fold,target,category,esc10,src_file,take\n"
                                                 "a.wav,1,0,dog,False,1,A\n")
    manifest = read_manifest(tmp_path / "meta" / "esc50.csv", audio_dir=tmp_path / "audio")
    result = enhance_manifest(manifest, teacher(["a"], SCORES[0]), ontology(), EnhanceSettings(0.75))
    out = tmp_path / "elsewhere" / "enhanced.csv"
    write_manifest_and_weights(result, out, tmp_path / "elsewhere" / "w.csv")
    again = read_manifest(out)
    assert again.format == "csv" and [e.labels for e in again.examples] == [("dog", "animal", "bark")]
    assert again.examples[0].path.resolve() == (tmp_path / "audio" / "a.wav").resolve()
