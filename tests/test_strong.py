"""Strong labels: each format read, predictions round-tripped through the DCASE TSV, label matching, errors, audio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagger.data.strong import (
    StrongEvent,
    StrongLabels,
    audio_finder,
    check_durations,
    file_key,
    find_audio,
    match_labels,
    read_label_map,
    read_strong,
    write_dcase_tsv,
)
from tagger.errors import TaggerError
from tagger.labels import LabelSet

IDS = ["/m/09x0r", "/m/0bt9lr", "/m/01yrx", "/m/05zppz"]
NAMES = ["Speech", "Dog", "Cat", "Male speech, man speaking"]


@pytest.fixture
def labels() -> LabelSet:
    return LabelSet(IDS, NAMES)


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def dcase(tmp_path: Path, *rows: str, name: str = "strong.tsv") -> Path:
    return write(tmp_path / name, "filename\tonset\toffset\tevent_label", *rows)


# ---- formats -------------------------------------------------------------------------------------


def test_dcase_tsv_keys_sorting_and_skipped_weak_rows(tmp_path):
    path = dcase(
        tmp_path,
        "audio/val/b.wav\t4.5\t6\tDog",
        "audio/val/b.wav\t0.25\t1.5\tSpeech",
        "a.wav\t\t\tCat",  # weak-only: a label without times
        "a.wav\t1\t2\tCat",
        "quiet.wav\t\t\t",  # a clip without events
        "Y00pbt6aJV8_30.000_40.000.wav\t0\t10\tSpeech",
    )
    strong = read_strong(path)
    assert strong.format == "dcase-tsv"
    assert len(strong) == 4 and strong.skipped == 1
    assert strong.files == ["b", "a", "Y00pbt6aJV8_30.000_40.000", "quiet"]
    assert strong.labels == {"Dog", "Speech", "Cat"}
    by_file = strong.by_file()
    assert by_file["b"] == [(0.25, 1.5, "Speech"), (4.5, 6.0, "Dog")]
    assert by_file["quiet"] == []
    assert [e.line for e in strong] == [2, 3, 5, 7]
    assert "1 rows without times skipped" in strong.summary()


def test_dcase_rows_with_trimmed_trailing_tabs_list_clips(tmp_path):
    strong = read_strong(dcase(tmp_path, "x.wav\t0\t1\tDog", "empty.wav"))
    assert strong.by_file() == {"x": [(0.0, 1.0, "Dog")], "empty": []}


def test_dcase_comma_separated_and_explicit_format(tmp_path):
    path = write(tmp_path / "strong.csv", "filename,onset,offset,event_label", "c.wav,1,2,Dog")
    assert read_strong(path, format="dcase-tsv").by_file() == {"c": [(1.0, 2.0, "Dog")]}


def test_audioset_strong_keys_stay_and_ids_map_to_names(tmp_path, labels):
    path = write(
        tmp_path / "audioset_eval_strong.tsv",
        "segment_id\tstart_time_seconds\tend_time_seconds\tlabel",
        "YxlGt805lTA_30000\t2.627\t7.237\t/m/09x0r",
        "-0SdAVK79lg_30000\t0.000\t1.500\t/m/0bt9lr",
    )
    raw = read_strong(path)
    assert raw.format == "audioset-strong"
    assert raw.files == ["YxlGt805lTA_30000", "-0SdAVK79lg_30000"]
    assert raw.labels == {"/m/09x0r", "/m/0bt9lr"}
    named = read_strong(path, labels=labels)
    assert named.by_file() == {"YxlGt805lTA_30000": [(2.627, 7.237, "Speech")],
                               "-0SdAVK79lg_30000": [(0.0, 1.5, "Dog")]}


def test_audioset_strong_framed_file_keeps_present_rows(tmp_path):
    path = write(
        tmp_path / "framed.tsv",
        "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\tpresent",
        "YxlGt805lTA_30000\t0.960\t1.920\t/m/09x0r\tPRESENT",
        "YxlGt805lTA_30000\t0.960\t1.920\t/m/0bt9lr\tNOT_PRESENT",
        "abcdefghijk_0\t0.000\t0.960\t/m/0bt9lr\tNOT_PRESENT",
    )
    strong = read_strong(path)
    assert len(strong) == 1 and strong.skipped == 2
    assert strong.by_file() == {"YxlGt805lTA_30000": [(0.96, 1.92, "/m/09x0r")], "abcdefghijk_0": []}


def _predict_output(tmp_path: Path, labels: LabelSet, fmt: str) -> Path:
    """What tagger predict --events --format fmt writes for two clips, through its own writer."""
    from tagger.inference.events import Event
    from tagger.inference.predict import FileResult
    from tagger.inference.report import PredictSink, Selection

    def result(path: str, events: list[Event]) -> FileResult:
        probs = np.linspace(0.9, 0.1, len(labels)).astype(np.float32)
        return FileResult(Path(path), 10.0, probs, probs, np.zeros(4, np.float32), events=events)

    out = tmp_path / f"pred.{fmt}"
    sink = PredictSink(Selection(top_k=2), fmt, output=out)
    sink.start(labels, 2)
    sink.add(result("/data/clips/one.wav", [Event(1, 2.5, 4.0, 0.9), Event(0, 0.125, 1.75, 0.8)]))
    sink.add(result("/data/clips/two.flac", []))
    sink.add(result("/data/clips/three.wav", [Event(3, 1.0, 9.5, 0.7)]))
    sink.finish()
    return out


EXPECTED = {"one": [(0.125, 1.75, "Speech"), (2.5, 4.0, "Dog")], "two": [],
            "three": [(1.0, 9.5, "Male speech, man speaking")]}


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_predict_outputs_read_as_annotations(tmp_path, labels, fmt):
    strong = read_strong(_predict_output(tmp_path, labels, fmt))
    assert strong.format == f"predict-{fmt}"
    assert strong.by_file() == EXPECTED
    assert strong.events[0] == StrongEvent("one", 2.5, 4.0, "Dog")


def test_predict_json_round_trips_through_the_dcase_tsv(tmp_path, labels):
    strong = read_strong(_predict_output(tmp_path, labels, "json"))
    tsv = tmp_path / "out" / "events.tsv"
    write_dcase_tsv(tsv, strong)
    again = read_strong(tsv)
    assert again.format == "dcase-tsv"
    assert again.by_file() == strong.by_file() == EXPECTED
    order = lambda events: sorted(events, key=lambda e: (e.file, e.onset))  # noqa: E731
    assert order(again.events) == order(strong.events)
    assert tsv.read_text().splitlines()[0] == "filename\tonset\toffset\tevent_label"
    assert "two.wav\t\t\t" in tsv.read_text().splitlines()
    assert not [p for p in tsv.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_predict_csv_columns_match_the_report():
    from tagger.data.strong import PREDICT_CSV_COLUMNS
    from tagger.inference.report import CSV_COLUMNS

    assert PREDICT_CSV_COLUMNS == CSV_COLUMNS


def test_predict_json_without_events_is_an_error(tmp_path):
    path = write(tmp_path / "p.json", '[{"path": "a.wav", "duration": 1.0, "labels": []}]')
    with pytest.raises(TaggerError, match=r"p\.json has no events: run tagger predict with --events"):
        read_strong(path)


def test_file_key():
    assert file_key("a/b/clip.wav") == "clip"
    assert file_key("C:\\x\\clip.FLAC") == "clip"
    assert file_key("YxlGt805lTA_30000") == "YxlGt805lTA_30000"
    assert file_key("Y00pbt6aJV8_30.000_40.000") == "Y00pbt6aJV8_30.000_40.000"


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.wav\t2\t1\tDog", "offset 1 is not after onset 2"),
        ("a.wav\t2\t2\tDog", "offset 2 is not after onset 2"),
        ("a.wav\t-1\t1\tDog", "onset '-1' is negative"),
        ("a.wav\tabc\t1\tDog", "onset 'abc' is not a number of seconds"),
        ("a.wav\t0\tnan\tDog", "offset 'nan' is not a finite number"),
        ("a.wav\t0\t\tDog", "offset '' is not a number"),
        ("a.wav\t0\t1\t", "the label is empty"),
        ("a.wav\t0\t1\tDog\textra", "5 fields but the header has 4"),
    ],
)
def test_row_errors_name_file_and_line(tmp_path, row, message):
    path = dcase(tmp_path, "ok.wav\t0\t1\tDog", row)
    with pytest.raises(TaggerError) as info:
        read_strong(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3: ") and message in text and "\n" not in text


def test_wrong_header_and_missing_columns(tmp_path):
    weak = write(tmp_path / "weak.tsv", "filename\tevent_labels", "a.wav\tDog,Cat")
    with pytest.raises(TaggerError, match=r"weak\.tsv:1: header 'filename event_labels' is not a strong-label header"):
        read_strong(weak)
    with pytest.raises(TaggerError, match=r"weak\.tsv:1: the header has no onset, offset, event_label column"):
        read_strong(weak, format="dcase-tsv")
    with pytest.raises(TaggerError, match=r"format 'sed' is not one of auto, dcase-tsv"):
        read_strong(weak, format="sed")
    with pytest.raises(TaggerError, match=r"does not exist"):
        read_strong(tmp_path / "nope.tsv")
    with pytest.raises(TaggerError, match=r"is empty"):
        read_strong(write(tmp_path / "empty.tsv", ""))


def test_json_errors_name_the_line_or_object(tmp_path):
    bad_line = write(tmp_path / "p.jsonl", '{"path": "a.wav", "events": []}', "{oops")
    with pytest.raises(TaggerError, match=r"p\.jsonl:2: not valid JSON"):
        read_strong(bad_line)
    bad_event = write(tmp_path / "p.json", '[{"path": "a.wav", "events": [{"label": "Dog", "onset": 3, "offset": 1}]}]')
    with pytest.raises(TaggerError, match=r"p\.json: object 1: event 1 of a\.wav: offset 1 is not after onset 3"):
        read_strong(bad_event)
    bool_time = write(tmp_path / "q.json", '[{"path": "a.wav", "events": [{"label": "Dog", "onset": true, '
                                           '"offset": 1}]}]')
    with pytest.raises(TaggerError, match=r"onset True is not a number"):
        read_strong(bool_time)


# ---- labels --------------------------------------------------------------------------------------


def test_match_by_name_id_and_case(tmp_path, labels):
    path = dcase(tmp_path, "a.wav\t0\t1\tSpeech", "a.wav\t1\t2\t/m/0bt9lr", "b.wav\t0\t1\tcat", "c.wav\t\t\t")
    matched = match_labels(read_strong(path), labels)
    assert matched.by_file() == {"a": [(0.0, 1.0, "Speech"), (1.0, 2.0, "Dog")], "b": [(0.0, 1.0, "Cat")], "c": []}
    assert matched.source == str(path) and [e.line for e in matched] == [2, 3, 4]


def test_ids_are_case_sensitive(tmp_path, labels):
    with pytest.raises(TaggerError, match=r"'/M/0BT9LR'"):
        match_labels(read_strong(dcase(tmp_path, "a.wav\t0\t1\t/M/0BT9LR")), labels)


def test_match_via_label_map_csv(tmp_path, labels):
    mapping = write(tmp_path / "map.csv", "from,to", "Dog_barking,Dog", "Male_voice,/m/05zppz", "Vacuum_cleaner,")
    label_map = read_label_map(mapping)
    assert label_map == {"Dog_barking": "Dog", "Male_voice": "/m/05zppz", "Vacuum_cleaner": ""}
    path = dcase(tmp_path, "a.wav\t0\t1\tDog_barking", "a.wav\t2\t3\tMale_voice", "b.wav\t0\t5\tVacuum_cleaner",
                 "b.wav\t5\t6\tSpeech")
    matched = match_labels(read_strong(path), labels, label_map)
    assert matched.by_file() == {"a": [(0.0, 1.0, "Dog"), (2.0, 3.0, "Male speech, man speaking")],
                                 "b": [(5.0, 6.0, "Speech")]}
    assert read_strong(path, labels=labels, label_map=label_map).by_file() == matched.by_file()


def test_unknown_labels_are_listed_with_the_label_map_hint(tmp_path, labels):
    rows = [f"a.wav\t{i}\t{i + 1}\tThing{i}" for i in range(13)] + ["a.wav\t0\t1\tThing0", "a.wav\t0\t1\tDog"]
    with pytest.raises(TaggerError) as info:
        match_labels(read_strong(dcase(tmp_path, *rows)), labels)
    text = str(info.value)
    assert "13 labels (14 events) are not among the model's 4 classes" in text
    assert "'Thing0', 'Thing1'" in text and "'Thing9'" in text and "'Thing10'" not in text
    assert "and 3 more; pass --label-map CSV" in text and "\n" not in text


def test_a_mapped_label_the_model_lacks_says_so(tmp_path, labels):
    with pytest.raises(TaggerError, match=r"'Bark' \(mapped to 'Woof'\)"):
        match_labels(read_strong(dcase(tmp_path, "a.wav\t0\t1\tBark")), labels, {"Bark": "Woof"})


def test_ambiguous_names_ask_for_an_id(tmp_path):
    twice = LabelSet(["/m/a", "/m/b"], ["Bell", "bell"])
    with pytest.raises(TaggerError, match=r"label 'BELL' matches 2 classes \(/m/a, /m/b\)"):
        match_labels(read_strong(dcase(tmp_path, "a.wav\t0\t1\tBELL")), twice)
    assert match_labels(read_strong(dcase(tmp_path, "a.wav\t0\t1\tbell")), twice).labels == {"bell"}


def test_label_map_errors(tmp_path):
    with pytest.raises(TaggerError, match=r"map\.csv:2: expected 'from,to'"):
        read_label_map(write(tmp_path / "map.csv", "from,to", "a,b,c"))
    with pytest.raises(TaggerError, match=r"map\.csv:3: 'a' is mapped twice"):
        read_label_map(write(tmp_path / "map.csv", "a,b", "", "a,c"))
    assert read_label_map(write(tmp_path / "map.tsv", "Dog_barking\tDog")) == {"Dog_barking": "Dog"}


# ---- audio ---------------------------------------------------------------------------------------


def test_check_durations_names_the_first_late_event(tmp_path):
    strong = read_strong(dcase(tmp_path, "a.wav\t0\t10.2\tDog", "b.wav\t0\t12\tDog", "c.wav\t0\t30\tCat",
                               "d.wav\t0\t99\tCat"))
    check_durations(strong, {"a": 10.0, "b": 12.0})  # within the tolerance; c and d are not checked
    with pytest.raises(TaggerError) as info:
        check_durations(strong, {"a": 10.0, "b": 10.0, "c": 10.0}, tolerance=0.1)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'strong.tsv'}:2: event 'Dog' of a ends at 10.2 s, past the end of its "
                           "audio (10 s) (2 more events end past their audio)")
    events = StrongLabels([StrongEvent("x", 0.0, 5.0, "Dog")])
    with pytest.raises(TaggerError, match=r"^strong labels: event 'Dog' of x ends at 5 s"):
        check_durations(events, {"x": 1.0})


def test_find_audio_names(tmp_path):
    for name in ["clip.wav", "Yabcdefghijk.flac", "Yxlgt805lTA_30.000_40.000.wav", "-0SdAVK79lg.wav",
                 "Yb0RFKhbpFJA_30000.wav", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert find_audio(tmp_path, "clip") == tmp_path / "clip.wav"
    assert find_audio(tmp_path, "abcdefghijk") == tmp_path / "Yabcdefghijk.flac"
    assert find_audio(tmp_path, "abcdefghijk_30000") == tmp_path / "Yabcdefghijk.flac"  # PANNs: one file per YTID
    assert find_audio(tmp_path, "-0SdAVK79lg_0") == tmp_path / "-0SdAVK79lg.wav"
    assert find_audio(tmp_path, "Yxlgt805lTA_30000") == tmp_path / "Yxlgt805lTA_30.000_40.000.wav"
    assert find_audio(tmp_path, "b0RFKhbpFJA_30000") == tmp_path / "Yb0RFKhbpFJA_30000.wav"
    find = audio_finder(tmp_path)
    assert find("clip") == tmp_path / "clip.wav"
    assert find("Yxlgt805lTA_30000") == tmp_path / "Yxlgt805lTA_30.000_40.000.wav"
    with pytest.raises(TaggerError) as info:
        find_audio(tmp_path, "xlgt805lTAY_10000")
    text = str(info.value)
    assert text.startswith("no audio for 'xlgt805lTAY_10000' in ")
    assert "pass the folder of the clips as --audio-dir" in text
    assert "xlgt805lTAY_10000.*, Yxlgt805lTAY_10000.*, Yxlgt805lTAY.*" in text and "\n" not in text
    with pytest.raises(TaggerError, match=r"no audio for 'notes'"):
        find_audio(tmp_path, "notes")
    with pytest.raises(TaggerError, match=r"audio folder .* does not exist"):
        find_audio(tmp_path / "nope", "clip")


def test_import_is_torch_free():
    code = "import sys, tagger.data.strong; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
