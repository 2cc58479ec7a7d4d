"""Manifest readers and writers: each format on tiny synthetic trees, detection, bad input, real metadata."""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import shared_path, tone, write_wav

from tagger.data.manifests import (
    MANIFEST_FORMATS,
    Example,
    detect_format,
    read_manifest,
    write_manifest_csv,
    write_manifest_json,
)
from tagger.errors import TaggerError

SR = 8000


def clip(path, seed=0):
    """A 0.05 s WAV or FLAC; other suffixes get an empty file, since the readers only check existence."""
    if path.suffix in (".wav", ".flac"):
        return write_wav(path, tone(0.05, SR, seed=seed), SR)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---- AST / PSLA JSON -----------------------------------------------------------------------------


def test_ast_json(tmp_path):
    clip(tmp_path / "audio" / "a.wav")
    absolute = clip(tmp_path / "elsewhere" / "b.flac")
    data = {
        "data": [
            {"wav": "audio/a.wav", "labels": "/m/x,/m/y", "video_id": "ignored"},
            {"wav": str(absolute), "labels": ["/m/z"]},
            {"wav": "audio/gone.wav", "labels": "/m/x"},
            {"wav": "audio/a.wav", "labels": "/m/y"},
        ]
    }
    path = write(tmp_path / "train.json", json.dumps(data))
    manifest = read_manifest(path)
    assert manifest.format == "ast-json" and manifest.source == path
    assert manifest.examples == [
        Example(tmp_path / "audio" / "a.wav", ("/m/x", "/m/y"), "a"),
        Example(absolute, ("/m/z",), "b"),
    ]
    assert [e.id for e in manifest.missing] == ["gone"]
    assert [e.labels for e in manifest.duplicates] == [("/m/y",)]
    assert manifest.summary() == "2 clips from train.json (ast-json); 1 missing, 1 duplicate"
    assert len(manifest) == 2


def test_ast_json_audio_dir_and_no_check(tmp_path):
    clip(tmp_path / "store" / "a.wav")
    path = write(
        tmp_path / "m" / "x.json", json.dumps({"data": [{"wav": "a.wav", "labels": ""}, {"wav": "z.wav"}]})
    )
    manifest = read_manifest(path, audio_dir=tmp_path / "store")
    assert manifest.examples[0].path == tmp_path / "store" / "a.wav" and manifest.examples[0].labels == ()
    assert len(manifest.missing) == 1
    unchecked = read_manifest(path, check_files=False)
    assert len(unchecked.examples) == 2 and unchecked.missing == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"data": [\n{"wav": "a.wav",,}]}', "line 2"),
        ('{"items": []}', '"data"'),
        ('{"data": [{"labels": "x"}]}', 'entry 0 of "data" has no "wav"'),
        ('{"data": []}', "lists no clips"),
    ],
)
def test_ast_json_errors(tmp_path, text, message):
    with pytest.raises(TaggerError, match=re.escape(message)):
        read_manifest(write(tmp_path / "bad.json", text))


# ---- AudioSet segment CSV ------------------------------------------------------------------------

AUDIOSET = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=6, num_segs=6, num_unique_labels=3, num_positive_labels=8
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
YaaaaaaaaaA, 0.000, 10.000, "/m/012xff"
b_cdefghijk, 20.000, 30.000, "/m/09x0r"
c-cdefghijk, 20.000, 30.000, "/m/09x0r,/m/012xff"
dddddddddd1, 5.500, 15.500, "/m/09x0r"
missingmiss, 0.000, 10.000, "/m/09x0r"
--PJHxphWEs, 30.000, 40.000, "/m/09x0r"
"""


def test_audioset_csv_finds_common_file_names(tmp_path):
    audio = tmp_path / "audio"
    clip(audio / "Y--PJHxphWEs.wav")
    clip(audio / "--PJHxphWEs.flac")  # the Y-prefixed name wins
    clip(audio / "YaaaaaaaaaA.flac")  # a YTID that itself starts with Y
    clip(audio / "b_cdefghijk_20000_30000.wav")
    clip(audio / "Yc-cdefghijk_20.000_30.000.ogg")
    clip(audio / "dddddddddd1.mp3")
    write(audio / "notes.txt", "not audio")
    csv_path = write(tmp_path / "meta" / "balanced_train_segments.csv", AUDIOSET)
    manifest = read_manifest(csv_path, audio_dir=audio)
    assert manifest.format == "audioset-csv"
    found = {e.id: e.path.name for e in manifest.examples}
    assert found == {
        "--PJHxphWEs": "Y--PJHxphWEs.wav",
        "YaaaaaaaaaA": "YaaaaaaaaaA.flac",
        "b_cdefghijk": "b_cdefghijk_20000_30000.wav",
        "c-cdefghijk": "Yc-cdefghijk_20.000_30.000.ogg",
        "dddddddddd1": "dddddddddd1.mp3",
    }
    first = manifest.examples[0]
    assert first.labels == ("/m/09x0r", "/t/dd00088") and (first.start, first.end) == (30.0, 40.0)
    assert manifest.examples[4].start == 5.5
    assert [e.path for e in manifest.missing] == [audio / "Ymissingmiss.wav"]
    assert [e.id for e in manifest.duplicates] == ["--PJHxphWEs"]


def test_audioset_csv_default_folder_and_unchecked(tmp_path):
    csv_path = write(tmp_path / "eval_segments.csv", AUDIOSET)
    clip(tmp_path / "Y--PJHxphWEs.wav")
    manifest = read_manifest(csv_path, check_files=False)
    assert len(manifest.examples) == 6 and manifest.missing == [] and len(manifest.duplicates) == 1
    assert manifest.examples[1].path == tmp_path / "YYaaaaaaaaaA.wav"
    checked = read_manifest(csv_path)
    assert [e.id for e in checked.examples] == ["--PJHxphWEs"] and len(checked.missing) == 5


def test_audioset_lists_the_folder_once(tmp_path, monkeypatch):
    audio = tmp_path / "audio"
    ids = [f"{i:011d}" for i in range(300)]
    for ytid in ids[::3]:
        (audio / f"Y{ytid}.wav").parent.mkdir(exist_ok=True)
        (audio / f"Y{ytid}.wav").touch()  # existence is all that is checked
    rows = "".join(f'{ytid}, 0.000, 10.000, "/m/a"\n' for ytid in ids)
    csv_path = write(tmp_path / "segments.csv", "# header\n" + rows)
    calls = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(p) or real_scandir(p))
    manifest = read_manifest(csv_path, audio_dir=audio)
    assert len(manifest.examples) == 100 and len(manifest.missing) == 200
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [('abc, 0.0, "/m/a"', "line 5: expected"), ('abc, zero, 10.0, "/m/a"', "line 5: start time 'zero'")],
)
def test_audioset_csv_bad_rows(tmp_path, row, message):
    path = write(tmp_path / "s.csv", '# a\n# b\n# c\nok_________, 0.0, 10.0, "/m/a"\n' + row + "\n")
    with pytest.raises(TaggerError, match=re.escape(message)):
        read_manifest(path, check_files=False)


# ---- ESC-50 --------------------------------------------------------------------------------------

ESC50 = """filename,fold,target,category,esc10,src_file,take
1-100032-A-0.wav,1,0,dog,True,100032,A
1-100038-A-14.wav,1,14,chirping_birds,False,100038,A
2-100648-A-43.wav,2,43,chirping_birds,False,100648,A
3-102583-A-5.wav,3,5,cat,False,102583,A
3-102583-B-5.wav,3,5,cat,False,102583,B
"""


def esc50_tree(root, audio_folder):
    for name in ("1-100032-A-0.wav", "1-100038-A-14.wav", "2-100648-A-43.wav", "3-102583-A-5.wav"):
        clip(audio_folder / name)
    return write(root / "esc50.csv", ESC50)


def test_esc50_folds_and_labels(tmp_path):
    path = esc50_tree(tmp_path, tmp_path / "audio")
    manifest = read_manifest(path)
    assert manifest.format == "esc50" and len(manifest.examples) == 4
    assert [e.id for e in manifest.missing] == ["3-102583-B-5"]
    assert manifest.examples[0] == Example(tmp_path / "audio" / "1-100032-A-0.wav", ("dog",), "1-100032-A-0")
    train = read_manifest(path, folds=[1, 2])
    assert [e.labels for e in train.examples] == [("dog",), ("chirping_birds",), ("chirping_birds",)]
    assert [e.id for e in read_manifest(path, folds=[3]).examples] == ["3-102583-A-5"]


def test_esc50_meta_layout_and_reencoded_audio(tmp_path):
    audio = tmp_path / "audio"
    for name in ("1-100032-A-0.flac", "1-100038-A-14.wav", "2-100648-A-43.flac", "3-102583-A-5.flac"):
        clip(audio / name)
    path = write(tmp_path / "meta" / "esc50.csv", ESC50)
    manifest = read_manifest(path)
    assert [e.path.name for e in manifest.examples][:2] == ["1-100032-A-0.flac", "1-100038-A-14.wav"]
    assert len(manifest.missing) == 1


def test_esc50_errors(tmp_path):
    path = write(tmp_path / "esc50.csv", ESC50)
    with pytest.raises(TaggerError, match="--audio-dir"):
        read_manifest(path)
    assert len(read_manifest(path, check_files=False).examples) == 5
    with pytest.raises(TaggerError, match="its folds are 1,2,3"):
        read_manifest(path, folds=[5], check_files=False)
    with pytest.raises(TaggerError, match="--folds applies to esc50"):
        read_manifest(write(tmp_path / "x.csv", "path\na.wav\n"), folds=[1])
    bad = write(tmp_path / "bad" / "esc50.csv", ESC50.replace(",2,43,", ",two,43,"))
    with pytest.raises(TaggerError, match="line 4: fold 'two'"):
        read_manifest(bad, check_files=False)


# ---- FSD50K --------------------------------------------------------------------------------------

DEV = """fname,labels,mids,split
64760,"Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music","/m/02sgy,/m/0342h,/m/0fx80y,/m/04szw,/m/04rlf",train
16399,"Electric_guitar,Guitar","/m/02sgy,/m/0342h",val
16401,"Bark","/m/05tny_",train
"""
EVAL = """fname,labels,mids
37199,Electric_guitar,/m/02sgy
175151,"Bark,Dog","/m/05tny_,/m/0bt9lr"
"""


def test_fsd50k_dev_split_and_eval(tmp_path):
    for fname in ("64760", "16399", "16401"):
        clip(tmp_path / "FSD50K.dev_audio" / f"{fname}.wav")
    clip(tmp_path / "FSD50K.eval_audio" / "37199.wav")
    dev = write(tmp_path / "FSD50K.ground_truth" / "dev.csv", DEV)
    evaluation = write(tmp_path / "FSD50K.ground_truth" / "eval.csv", EVAL)
    manifest = read_manifest(dev)
    assert manifest.format == "fsd50k" and len(manifest.examples) == 3
    assert manifest.examples[0].labels == ("/m/02sgy", "/m/0342h", "/m/0fx80y", "/m/04szw", "/m/04rlf")
    assert manifest.examples[0].path == tmp_path / "FSD50K.dev_audio" / "64760.wav"
    assert [e.id for e in read_manifest(dev, split="train").examples] == ["64760", "16401"]
    assert [e.id for e in read_manifest(dev, split="val").examples] == ["16399"]
    eval_manifest = read_manifest(evaluation)
    assert [e.id for e in eval_manifest.examples] == ["37199"]
    assert [e.id for e in eval_manifest.missing] == ["175151"]
    assert eval_manifest.missing[0].labels == ("/m/05tny_", "/m/0bt9lr")
    with pytest.raises(TaggerError, match="no split column"):
        read_manifest(evaluation, split="train")
    with pytest.raises(TaggerError, match="must be one of train, val"):
        read_manifest(dev, split="test")


def test_fsd50k_audio_dir(tmp_path):
    clip(tmp_path / "wavs" / "37199.flac")
    manifest = read_manifest(write(tmp_path / "eval.csv", EVAL), audio_dir=tmp_path / "wavs")
    assert manifest.examples[0].path == tmp_path / "wavs" / "37199.flac"


# ---- folder per class ----------------------------------------------------------------------------


def test_folder_per_class(tmp_path):
    root = tmp_path / "data"
    clip(root / "dog" / "a.wav")
    clip(root / "dog" / "deep" / "b.flac")
    clip(root / "cat" / "a.wav")
    clip(root / "stray.wav")  # no class: skipped
    write(root / "cat" / "readme.txt", "x")
    clip(root / ".hidden" / "c.wav")
    manifest = read_manifest(root)
    assert manifest.format == "folder"
    assert [(e.id, e.labels) for e in manifest.examples] == [
        ("cat/a", ("cat",)),
        ("dog/a", ("dog",)),
        ("dog/deep/b", ("dog",)),
    ]
    assert manifest.summary() == "3 clips from data (folder)"


def test_empty_folder(tmp_path):
    write(tmp_path / "data" / "dog" / "x.txt", "x")
    with pytest.raises(TaggerError, match="no audio files"):
        read_manifest(tmp_path / "data")


# ---- plain CSV / TSV -----------------------------------------------------------------------------


def test_plain_csv_quoted_commas_relative_paths(tmp_path):
    clip(tmp_path / "audio" / "a.wav")
    clip(tmp_path / "audio" / "b.wav")
    text = (
        'path,labels,id\naudio/a.wav,"dog,cat",first\n'
        "audio/b.wav,dog,\naudio/c.wav,,\naudio/a.wav,cat,again\n"
    )
    manifest = read_manifest(write(tmp_path / "train.csv", text))
    assert manifest.format == "csv"
    assert manifest.examples == [
        Example(tmp_path / "audio" / "a.wav", ("dog", "cat"), "first"),
        Example(tmp_path / "audio" / "b.wav", ("dog",), "b"),
    ]
    assert [e.id for e in manifest.missing] == ["c"] and manifest.missing[0].labels == ()
    assert [e.id for e in manifest.duplicates] == ["again"]


@pytest.mark.parametrize("separator", [";", "|"])
def test_plain_csv_other_separators_allow_commas(tmp_path, separator):
    clip(tmp_path / "a.wav")
    text = f'labels,path\n"Male speech, man speaking{separator}Speech",a.wav\n'
    manifest = read_manifest(write(tmp_path / "m.csv", text))
    assert manifest.examples[0].labels == ("Male speech, man speaking", "Speech")


def test_tsv_with_times(tmp_path):
    clip(tmp_path / "a.wav")
    text = "path\tlabels\tstart\tend\na.wav\tdog,cat\t1.5\t3\n"
    manifest = read_manifest(write(tmp_path / "m.tsv", text))
    example = manifest.examples[0]
    assert example.labels == ("dog", "cat") and (example.start, example.end) == (1.5, 3.0)


def test_plain_csv_errors(tmp_path):
    with pytest.raises(TaggerError, match="line 3 has 3 fields but the header has 2"):
        read_manifest(write(tmp_path / "a.csv", "path,labels\na.wav,x\nb.wav,x,y\n"))
    with pytest.raises(TaggerError, match="lists no clips"):
        read_manifest(write(tmp_path / "b.csv", "path,labels\n"))
    with pytest.raises(TaggerError, match="line 2 has an empty path"):
        read_manifest(write(tmp_path / "c.csv", "path,labels\n,x\n"))
    with pytest.raises(TaggerError, match="no path column"):
        read_manifest(write(tmp_path / "d.csv", "file,labels\na.wav,x\n"), fmt="csv")


# ---- detection and common errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("x.json", "{}", "ast-json"),
        ("x.csv", "# Segments csv created\n", "audioset-csv"),
        ("x.csv", "\n# anything\n", "audioset-csv"),
        ("x.csv", ESC50, "esc50"),
        ("x.csv", DEV, "fsd50k"),
        ("x.csv", EVAL, "fsd50k"),
        ("x.csv", "id,path,labels\n", "csv"),
        ("x.tsv", "labels\tpath\n", "csv"),
    ],
)
def test_detect_format(tmp_path, name, text, fmt):
    assert detect_format(write(tmp_path / name, text)) == fmt


def test_undetectable_and_unknown_formats(tmp_path):
    path = write(tmp_path / "x.csv", "file,tags\na.wav,dog\n")
    with pytest.raises(TaggerError) as info:
        read_manifest(path)
    assert "--format" in str(info.value) and all(f in str(info.value) for f in MANIFEST_FORMATS)
    with pytest.raises(TaggerError, match="unknown manifest format 'xml'"):
        read_manifest(path, "xml")
    with pytest.raises(TaggerError, match="empty"):
        read_manifest(write(tmp_path / "e.csv", "\n\n"))
    with pytest.raises(TaggerError, match="does not exist"):
        read_manifest(tmp_path / "nothing.csv")
    with pytest.raises(TaggerError, match="--audio-dir"):
        read_manifest(write(tmp_path / "ok.csv", "path\na.wav\n"), audio_dir=tmp_path / "nowhere")


def test_format_must_fit_the_path(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(TaggerError, match="is a folder"):
        read_manifest(tmp_path / "dir", "csv")
    with pytest.raises(TaggerError, match="is a file"):
        read_manifest(write(tmp_path / "m.csv", "path\na.wav\n"), "folder")
    (tmp_path / "latin1.csv").write_bytes("path,labels\na.wav,caf\xe9\n".encode("latin-1"))
    with pytest.raises(TaggerError, match="not UTF-8"):
        read_manifest(tmp_path / "latin1.csv")


def test_all_missing_is_an_error(tmp_path):
    with pytest.raises(TaggerError, match="none of the 2 audio files"):
        read_manifest(write(tmp_path / "m.csv", "path,labels\na.wav,x\nb.wav,y\n"))


# ---- writers -------------------------------------------------------------------------------------


def examples_on_disk(tmp_path, labels):
    return [
        Example(clip(tmp_path / "audio" / f"c{i}.wav"), tuple(ls), f"clip{i}") for i, ls in enumerate(labels)
    ]


@pytest.mark.parametrize(
    "labels",
    [
        [["dog", "cat"], [], ["cow"]],
        [["Male speech, man speaking", "Speech"], ["Speech"]],
        [["a,b", "c|d"]],
        [["x|y"], ["z"]],
    ],
)
def test_csv_round_trip(tmp_path, labels):
    examples = examples_on_disk(tmp_path, labels)
    for name in ("out.csv", "out.tsv"):
        write_manifest_csv(examples, tmp_path / name)
        assert read_manifest(tmp_path / name).examples == examples
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "out.csv", "out.tsv"]


def test_csv_writer_refuses_unrepresentable_labels(tmp_path):
    with pytest.raises(TaggerError, match="rename"):
        write_manifest_csv([Example(tmp_path / "a.wav", ("a;b",), "a")], tmp_path / "out.csv")


def test_json_round_trip(tmp_path):
    examples = [
        Example(e.path, e.labels, e.path.stem) for e in examples_on_disk(tmp_path, [["/m/a", "/m/b"], []])
    ]
    write_manifest_json(examples, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())["data"][0]["labels"] == "/m/a,/m/b"
    assert read_manifest(tmp_path / "out.json").examples == examples
    with pytest.raises(TaggerError, match="joins labels"):
        write_manifest_json([Example(tmp_path / "a.wav", ("a,b",), "a")], tmp_path / "bad.json")


# ---- the real metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["balanced_train_segments.csv", "eval_segments.csv"])
def test_real_audioset_segments(name):
    path = shared_path("data", "audioset", name)
    declared = int(re.search(r"num_ytids=(\d+)", path.read_text().splitlines()[1]).group(1))
    manifest = read_manifest(path, check_files=False)
    assert len(manifest.examples) == declared and manifest.duplicates == []
    assert declared == {"balanced_train_segments.csv": 22160, "eval_segments.csv": 20371}[name]
    assert all(e.labels and 0 < e.end - e.start <= 10.001 for e in manifest.examples)


def test_real_esc50_folds():
    path = shared_path("data", "esc50-folds1-4", "esc50.csv")
    train = read_manifest(path, folds=[1, 2, 3])
    valid = read_manifest(path, folds=[4])
    assert len(train.examples) == 1200 and len(valid.examples) == 400
    assert train.missing == [] and valid.missing == [] and train.duplicates == []
    assert not {e.id for e in train.examples} & {e.id for e in valid.examples}
    from tagger.labels import LabelSet

    labels = LabelSet.from_csv(path.parent / "class_labels_indices.csv")
    assert labels.encode_many([e.labels for e in valid.examples]).sum(axis=0).min() == 8
