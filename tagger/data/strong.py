"""Strong labels for sound event detection: read, check, match and write timed annotations (onset, offset, label).

Formats (`STRONG_FORMATS`; "auto" detects them from the content: `[` or `{` first, else the header):
- `dcase-tsv`: DCASE/DESED `filename  onset  offset  event_label` (tab-separated; a comma-separated file with the
  same header is read too). A row whose onset and offset are both empty is not an event: with a label it is a
  weak-only row (skipped and counted in `skipped`), without one it lists a clip that has no events.
- `audioset-strong`: AudioSet-Strong `segment_id  start_time_seconds  end_time_seconds  label`, labels being
  ontology ids (`/m/09x0r`); the framed file's optional `present` column keeps only PRESENT rows (the
  NOT_PRESENT ones are counted in `skipped`).
- `predict-json`, `predict-jsonl`, `predict-csv`: what `tagger predict --events --format json|jsonl|csv` writes
  (objects with "path" and "events": [{"label", "id", "onset", "offset", "peak"}]; or the long CSV's rows of
  kind "event"), so predictions read back as annotations. A clip with no events stays listed in `files`.

Keys. An event's `file` is the key its audio is found by: the file name without folders and without an audio
extension ("audio/val/clip.wav" -> "clip"; "Y00pbt6aJV8_30.000_40.000.wav" -> "Y00pbt6aJV8_30.000_40.000").
AudioSet-Strong segment ids stay as given: `<YTID>_<start in ms>` ("YxlGt805lTA_30000": the 11-character YouTube id
followed by the segment's start, 30 s). `find_audio` finds the audio of a key in a folder: `<key>.<ext>`,
`Y<key>.<ext>`, and for a segment id also the PANNs / PaSST names `Y<YTID>.<ext>`, `<YTID>.<ext>` and
segment-suffixed names such as `Y<YTID>_30.000_40.000.<ext>` whose first time is the segment's start.

Labels. Readers keep a file's labels as written (names, or ids for AudioSet-Strong); `match_labels` turns them into
a model's display names through its LabelSet, after an optional `--label-map` CSV of `from,to` rows.

Every problem is one TaggerError line; a problem with a row says "FILE:LINE: ...".
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tagger.data.manifests import AUDIO_EXTENSIONS
from tagger.errors import TaggerError
from tagger.fileio import atomic_write_text
from tagger.labels import LabelSet

STRONG_FORMATS = ("dcase-tsv", "audioset-strong", "predict-json", "predict-jsonl", "predict-csv")
DCASE_COLUMNS = ("filename", "onset", "offset", "event_label")
AUDIOSET_STRONG_COLUMNS = ("segment_id", "start_time_seconds", "end_time_seconds", "label")
PREDICT_CSV_COLUMNS = ("path", "kind", "start", "end", "rank", "label", "id", "score")  # inference.report's
DEFAULT_TOLERANCE = 0.5  # seconds an event may run past its audio: AudioSet downloads are often a little short
_UNKNOWN_SHOWN = 10
_YTID_LENGTH = 11


@dataclass(frozen=True)
class StrongEvent:
    """One annotated event: `label` sounds in the audio found by key `file` over [onset, offset) seconds.

    `line` is the event's line in its source file (0 where the format has none, as in a JSON list); it is not part
    of an event's identity, so events read from different files compare equal.
    """

    file: str
    onset: float
    offset: float
    label: str
    line: int = field(default=0, compare=False)


class StrongLabels:
    """The events of one annotation file, plus the clips it lists without events and what was skipped."""

    def __init__(
        self,
        events: Iterable[StrongEvent],
        source: str | Path | None = None,
        format: str | None = None,
        skipped: int = 0,
        empty_files: Iterable[str] = (),
    ):
        self.events: list[StrongEvent] = list(events)
        self.source = None if source is None else str(source)
        self.format = format
        self.skipped = skipped  # weak-only (or NOT_PRESENT) rows left out
        self._empty = tuple(dict.fromkeys(f for f in empty_files))

    @property
    def files(self) -> list[str]:
        """Every clip key, in order of first appearance, including clips listed without events."""
        return list(dict.fromkeys([*(e.file for e in self.events), *self._empty]))

    @property
    def labels(self) -> set[str]:
        return {e.label for e in self.events}

    def by_file(self) -> dict[str, list[tuple[float, float, str]]]:
        """key -> [(onset, offset, label)] sorted by onset (then offset, label); clips without events map to []."""
        out: dict[str, list[tuple[float, float, str]]] = {key: [] for key in self.files}
        for event in self.events:
            out[event.file].append((event.onset, event.offset, event.label))
        for items in out.values():
            items.sort()
        return out

    def with_events(self, events: Iterable[StrongEvent]) -> StrongLabels:
        """The same source, skipped count and clip list, with other events (a clip left without events stays)."""
        return StrongLabels(events, self.source, self.format, self.skipped, self.files)

    def where(self, event: StrongEvent) -> str:
        """`FILE:LINE` of an event, for messages (`FILE` alone where the format has no lines)."""
        source = self.source or "strong labels"
        return f"{source}:{event.line}" if event.line else source

    def summary(self) -> str:
        text = f"{len(self)} events in {len(self.files)} clips, {len(self.labels)} labels"
        if self.source:
            text += f" from {Path(self.source).name}"
        return text + (f"; {self.skipped} rows without times skipped" if self.skipped else "")

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[StrongEvent]:
        return iter(self.events)

    def __repr__(self) -> str:
        return f"StrongLabels({self.summary()})"


def file_key(name: str) -> str:
    """The key of an audio file name or path: no folders, and no extension if it is an audio one."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in AUDIO_EXTENSIONS else base


# ---- reading -------------------------------------------------------------------------------------


def read_strong(
    path: str | Path,
    format: str = "auto",
    labels: LabelSet | None = None,
    label_map: dict[str, str] | None = None,
) -> StrongLabels:
    """Read a strong-label file (`STRONG_FORMATS`, or "auto"); with `labels`, match its labels to them too."""
    path = Path(path)
    if format != "auto" and format not in STRONG_FORMATS:
        raise TaggerError(f"strong-label format {format!r} is not one of auto, {', '.join(STRONG_FORMATS)}")
    text = _read_text(path, "strong-label file")
    if not text.strip():
        raise TaggerError(f"{path} is empty; a strong-label file needs a header and one row per event")
    fmt = _detect(path, text) if format == "auto" else format
    strong = _READERS[fmt](path, text)
    return strong if labels is None else match_labels(strong, labels, label_map)


def _detect(path: Path, text: str) -> str:
    first = text.lstrip()[0]
    if first == "[":
        return "predict-json"
    if first == "{":
        return "predict-jsonl"
    line, header = _header(path, text)
    names = set(header)
    if names >= set(DCASE_COLUMNS):
        return "dcase-tsv"
    if names >= set(AUDIOSET_STRONG_COLUMNS):
        return "audioset-strong"
    if names >= {"path", "kind", "start", "end", "label"}:
        return "predict-csv"
    raise TaggerError(
        f"{path}:{line}: header {_show(header)} is not a strong-label header; use "
        f"{_show(DCASE_COLUMNS)} (DCASE), {_show(AUDIOSET_STRONG_COLUMNS)} (AudioSet-Strong), "
        "or the JSON / JSONL / CSV of tagger predict --events"
    )


def _show(columns: Iterable[str]) -> str:
    return repr("\t".join(columns)).replace("\\t", " ")


def _delimiter(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return "\t" if "\t" in first else ","


def _rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of the non-blank rows."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    rows = []
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                rows.append((reader.line_num, [cell.strip() for cell in cells]))
    except csv.Error as e:
        raise TaggerError(f"{path}:{reader.line_num}: not valid CSV/TSV ({e}); fix the row") from None
    return rows


def _header(path: Path, text: str) -> tuple[int, list[str]]:
    rows = _rows(path, text)
    return rows[0][0], [cell.lower() for cell in rows[0][1]]


def _table(path: Path, text: str, required: tuple[str, ...], what: str):
    """Column positions and data rows; a missing column is an error at the header's line."""
    rows = _rows(path, text)
    line, header = rows[0][0], [cell.lower() for cell in rows[0][1]]
    columns = {name: i for i, name in reversed(list(enumerate(header)))}
    absent = [c for c in required if c not in columns]
    if absent:
        raise TaggerError(
            f"{path}:{line}: the header has no {', '.join(absent)} column; {what} needs the header "
            f"{_show(required)}, got {_show(rows[0][1])}"
        )
    width = len(header)
    body = []
    for number, cells in rows[1:]:
        if len(cells) > width:
            raise TaggerError(f"{path}:{number}: {len(cells)} fields but the header has {width}; fix the row")
        body.append((number, cells + [""] * (width - len(cells))))  # trailing empty fields are often trimmed
    return columns, body


def _time(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TaggerError(f"{where}: {what} {value!r} is not a number of seconds; fix it")
    try:
        seconds = float(value)
    except ValueError:
        raise TaggerError(f"{where}: {what} {value!r} is not a number of seconds; fix it") from None
    if not math.isfinite(seconds):
        raise TaggerError(f"{where}: {what} {value!r} is not a finite number of seconds; fix it")
    if seconds < 0:
        raise TaggerError(f"{where}: {what} {value!r} is negative; times count seconds from the clip's start")
    return seconds


def _event(key: str, onset: Any, offset: Any, label: str, where: str, line: int) -> StrongEvent:
    if not key:
        raise TaggerError(f"{where}: the file name is empty; every event needs its clip")
    if not label:
        raise TaggerError(f"{where}: the label is empty; give the event's label or leave onset and offset empty too")
    start = _time(onset, "onset", where)
    end = _time(offset, "offset", where)
    if end <= start:
        raise TaggerError(f"{where}: offset {end:g} is not after onset {start:g}; an event must last some time")
    return StrongEvent(key, start, end, label, line)


def _read_dcase(path: Path, text: str) -> StrongLabels:
    columns, body = _table(path, text, DCASE_COLUMNS, "a DCASE strong-label TSV")
    f, on, off, lab = (columns[c] for c in DCASE_COLUMNS)
    events, empty, skipped = [], [], 0
    for line, cells in body:
        where = f"{path}:{line}"
        if not cells[on] and not cells[off]:  # no times: a weak-only row, or a clip without events
            if not cells[f]:
                raise TaggerError(f"{where}: the file name is empty; every row needs its clip")
            if cells[lab]:
                skipped += 1
            else:
                empty.append(file_key(cells[f]))
            continue
        events.append(_event(file_key(cells[f]), cells[on], cells[off], cells[lab], where, line))
    return StrongLabels(events, path, "dcase-tsv", skipped, empty)


def _read_audioset_strong(path: Path, text: str) -> StrongLabels:
    columns, body = _table(path, text, AUDIOSET_STRONG_COLUMNS, "an AudioSet-Strong TSV")
    seg, on, off, lab = (columns[c] for c in AUDIOSET_STRONG_COLUMNS)
    present = columns.get("present")
    events, empty, skipped = [], [], 0
    for line, cells in body:
        if present is not None and cells[present].upper() != "PRESENT":
            skipped += 1
            empty.append(cells[seg])
            continue
        events.append(_event(cells[seg], cells[on], cells[off], cells[lab], f"{path}:{line}", line))
    return StrongLabels(events, path, "audioset-strong", skipped, empty)


def _predict_events(obj: Any, where: str, line: int, events: list, empty: list) -> bool:
    """Add one predict object's events; False when it has no "events" (predict ran without --events)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
        raise TaggerError(f'{where}: expected an object with a "path", as tagger predict writes; fix the file')
    key = file_key(obj["path"])
    if "events" not in obj:
        return False
    if not isinstance(obj["events"], list):
        raise TaggerError(f'{where}: "events" of {obj["path"]} is not a list; fix the file')
    if not obj["events"]:
        empty.append(key)
    for number, item in enumerate(obj["events"], 1):
        at = f"{where}: event {number} of {obj['path']}"
        if not isinstance(item, dict) or not all(k in item for k in ("onset", "offset")):
            raise TaggerError(f'{at} needs "label" (or "id"), "onset" and "offset"; fix the file')
        label = item.get("label", item.get("id", ""))
        events.append(_event(key, item["onset"], item["offset"], str(label), at, line))
    return True


def _no_events(path: Path) -> TaggerError:
    return TaggerError(f"{path} has no events: run tagger predict with --events to write them")


def _read_predict_json(path: Path, text: str) -> StrongLabels:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaggerError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file") from None
    if not isinstance(data, list):
        raise TaggerError(f"{path}: expected a JSON list of per-file objects, as tagger predict --format json writes")
    events: list[StrongEvent] = []
    empty: list[str] = []
    found = [_predict_events(obj, f"{path}: object {n}", 0, events, empty) for n, obj in enumerate(data, 1)]
    if data and not any(found):
        raise _no_events(path)
    return StrongLabels(events, path, "predict-json", 0, empty)


def _read_predict_jsonl(path: Path, text: str) -> StrongLabels:
    events: list[StrongEvent] = []
    empty: list[str] = []
    found = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise TaggerError(f"{path}:{line}: not valid JSON ({e.msg}); fix the line") from None
        found.append(_predict_events(obj, f"{path}:{line}", line, events, empty))
    if not any(found):
        raise _no_events(path)
    return StrongLabels(events, path, "predict-jsonl", 0, empty)


def _read_predict_csv(path: Path, text: str) -> StrongLabels:
    columns, body = _table(path, text, ("path", "kind", "start", "end", "label"), "a tagger predict CSV")
    events, empty = [], []
    for line, cells in body:
        kind = cells[columns["kind"]]
        if kind == "kind" and cells[columns["path"]] == "path":
            continue  # a header repeated where two outputs were concatenated
        key = file_key(cells[columns["path"]])
        if kind != "event":
            empty.append(key)  # a clip row: the clip stays listed even if no event was found in it
            continue
        label = cells[columns["label"]] or (cells[columns["id"]] if "id" in columns else "")
        where = f"{path}:{line}"
        events.append(_event(key, cells[columns["start"]], cells[columns["end"]], label, where, line))
    return StrongLabels(events, path, "predict-csv", 0, empty)


_READERS: dict[str, Callable[[Path, str], StrongLabels]] = {
    "dcase-tsv": _read_dcase,
    "audioset-strong": _read_audioset_strong,
    "predict-json": _read_predict_json,
    "predict-jsonl": _read_predict_jsonl,
    "predict-csv": _read_predict_csv,
}


# ---- writing -------------------------------------------------------------------------------------


def write_dcase_tsv(path: str | Path, labels: StrongLabels) -> None:
    """Write `filename onset offset event_label` atomically: `<key>.wav` per row, clips in order of appearance and
    their events by onset; a clip without events gets one row with empty times, as DESED writes it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(DCASE_COLUMNS)
    for key, items in labels.by_file().items():
        if not items:
            writer.writerow([f"{key}.wav", "", "", ""])
        writer.writerows([f"{key}.wav", repr(onset), repr(offset), label] for onset, offset, label in items)
    atomic_write_text(path, buffer.getvalue())


# ---- labels --------------------------------------------------------------------------------------


def read_label_map(path: str | Path) -> dict[str, str]:
    """A `from,to` CSV (tab-separated if .tsv; the header is optional): annotation label -> model name or id.

    An empty `to` drops that label's events (a class the model does not have).
    """
    path = Path(path)
    text = _read_text(path, "label map")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    mapping: dict[str, str] = {}
    try:
        for cells in reader:
            cells = [cell.strip() for cell in cells]
            line = reader.line_num
            if not any(cells):
                continue
            if not mapping and [c.lower() for c in cells] == ["from", "to"]:
                continue
            if len(cells) != 2 or not cells[0]:
                raise TaggerError(f"{path}:{line}: expected 'from,to' (annotation label, model label); got {cells}")
            if mapping.get(cells[0], cells[1]) != cells[1]:
                raise TaggerError(f"{path}:{line}: {cells[0]!r} is mapped twice, to different labels; keep one row")
            mapping[cells[0]] = cells[1]
    except csv.Error as e:
        raise TaggerError(f"{path}:{reader.line_num}: not valid CSV ({e}); fix the row") from None
    if not mapping:
        raise TaggerError(f"label map {path} has no rows; add from,to rows")
    return mapping


def match_labels(strong: StrongLabels, labels: LabelSet, label_map: dict[str, str] | None = None) -> StrongLabels:
    """The events with the model's display names as labels.

    An annotation label is first looked up in `label_map` (an empty target drops its events), then matched to a
    class by id (exact), by display name (exact), or by display name ignoring case when only one class fits.
    Unknown labels are reported together, with a hint to pass a label map.
    """
    label_map = label_map or {}
    by_id = {label: index for index, label in enumerate(labels.ids)}
    by_name: dict[str, list[int]] = {}
    by_lower: dict[str, list[int]] = {}
    for index, name in enumerate(labels.names):
        by_name.setdefault(name, []).append(index)
        by_lower.setdefault(name.lower(), []).append(index)
    uses: dict[str, int] = {}
    for event in strong:
        uses[event.label] = uses.get(event.label, 0) + 1
    resolved: dict[str, str | None] = {}
    unknown: dict[str, int] = {}
    for label, count in uses.items():
        target = label_map.get(label, label)
        index = _class_of(target, by_id, by_name, by_lower, labels, strong) if target else None
        if target and index is None:
            unknown[label] = count
        resolved[label] = labels.names[index] if index is not None else None
    if unknown:
        raise TaggerError(_unknown_message(unknown, strong, labels, label_map))
    return strong.with_events(
        replace(event, label=resolved[event.label]) for event in strong if resolved[event.label] is not None
    )


def _class_of(target: str, by_id: dict, by_name: dict, by_lower: dict, labels: LabelSet,
              strong: StrongLabels) -> int | None:
    """A class index by id, exact name, or name ignoring case; None if nothing fits, an error if several do."""
    if target in by_id:
        return by_id[target]
    for found in (by_name.get(target, []), by_lower.get(target.lower(), [])):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            ids = ", ".join(labels.ids[i] for i in found[:_UNKNOWN_SHOWN])
            raise TaggerError(
                f"{strong.source or 'strong labels'}: label {target!r} matches {len(found)} classes ({ids}); "
                "map it to one class id with --label-map CSV"
            )
    return None


def _unknown_message(unknown: dict[str, int], strong: StrongLabels, labels: LabelSet, label_map: dict) -> str:
    shown = [repr(label) + (f" (mapped to {label_map[label]!r})" if label in label_map else "")
             for label in list(unknown)[:_UNKNOWN_SHOWN]]
    more = f" and {len(unknown) - _UNKNOWN_SHOWN} more" if len(unknown) > _UNKNOWN_SHOWN else ""
    uses = sum(unknown.values())
    return (
        f"{strong.source or 'strong labels'}: {len(unknown)} labels ({uses} events) are not among the model's "
        f"{len(labels)} classes: {', '.join(shown)}{more}; pass --label-map CSV with from,to rows mapping them to "
        "class names or ids (an empty 'to' drops a label)"
    )


# ---- audio ---------------------------------------------------------------------------------------


def check_durations(
    strong: StrongLabels, durations: dict[str, float], tolerance: float = DEFAULT_TOLERANCE
) -> None:
    """Fail on the first event (in file order) that ends more than `tolerance` seconds past its clip's audio.

    `durations` maps keys to seconds of audio; clips missing from it are not checked.
    """
    late = [e for e in strong if e.file in durations and e.offset > durations[e.file] + tolerance]
    if late:
        first = late[0]
        more = f" ({len(late) - 1} more events end past their audio)" if len(late) > 1 else ""
        raise TaggerError(
            f"{strong.where(first)}: event {first.label!r} of {first.file} ends at {first.offset:g} s, past the end "
            f"of its audio ({durations[first.file]:g} s){more}; check the times' unit and the audio files"
        )


def _segment(key: str) -> tuple[str, int] | None:
    """(YTID, start ms) of an AudioSet-Strong segment id `<YTID>_<start ms>`, else None."""
    ytid, _, ms = key.rpartition("_")
    if len(ytid) == _YTID_LENGTH and ms.isdigit():
        return ytid, int(ms)
    return None


def _candidates(key: str) -> list[str]:
    """File stems to try for a key, best first."""
    stems = [key, "Y" + key]
    segment = _segment(key)
    if segment is not None:
        stems += ["Y" + segment[0], segment[0]]
    return stems


def _segment_match(stem: str, ytid: str, start_ms: int) -> bool:
    """Whether a file stem `[Y]<YTID>_<start>[_<end>]` names the segment (start in seconds or in ms)."""
    for prefix in ("Y" + ytid + "_", ytid + "_"):
        if stem.startswith(prefix):
            first = stem[len(prefix):].split("_", 1)[0]
            try:
                value = float(first)
            except ValueError:
                return False
            return abs(value - start_ms / 1000) < 5e-4 or ("." not in first and value == start_ms)
    return False


def audio_finder(audio_dir: str | Path) -> Callable[[str], Path]:
    """`find_audio` for many keys: the folder is listed once."""
    folder = Path(audio_dir)
    try:
        with os.scandir(folder) as entries:
            names = sorted((e.name for e in entries if not e.is_dir()), key=_rank)
    except OSError:
        raise TaggerError(f"audio folder {folder} cannot be read; check --audio-dir") from None
    by_stem: dict[str, str] = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() in AUDIO_EXTENSIONS:
            by_stem.setdefault(stem, name)

    def find(key: str) -> Path:
        for stem in _candidates(key):
            if stem in by_stem:
                return folder / by_stem[stem]
        segment = _segment(key)
        if segment is not None:
            for stem, name in by_stem.items():
                if _segment_match(stem, *segment):
                    return folder / name
        raise _not_found(folder, key)

    return find


def find_audio(audio_dir: str | Path, key: str) -> Path:
    """The audio file of a key in `audio_dir` (see the module's docstring for the names tried)."""
    folder = Path(audio_dir)
    if not folder.is_dir():
        raise TaggerError(f"audio folder {folder} does not exist; check --audio-dir")
    for stem in _candidates(key):
        for ext in AUDIO_EXTENSIONS:
            path = folder / (stem + ext)
            if path.is_file():
                return path
    return audio_finder(folder)(key)  # segment-suffixed names need a listing


def _rank(name: str) -> tuple[int, str]:
    ext = os.path.splitext(name)[1].lower()
    return (AUDIO_EXTENSIONS.index(ext) if ext in AUDIO_EXTENSIONS else len(AUDIO_EXTENSIONS), name)


def _not_found(folder: Path, key: str) -> TaggerError:
    tried = ", ".join(f"{stem}.*" for stem in _candidates(key))
    if _segment(key) is not None:
        tried += f", {_segment(key)[0]}_<start s>_*.*"
    return TaggerError(f"no audio for {key!r} in {folder} (tried {tried}); pass the folder of the clips as --audio-dir")


def _read_text(path: Path, what: str) -> str:
    """The file's text (a UTF-8 byte-order mark dropped), or a one-line error naming it."""
    if not path.is_file():
        raise TaggerError(f"{what} {path} does not exist; check the path")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise TaggerError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
