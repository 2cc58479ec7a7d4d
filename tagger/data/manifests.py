"""Manifests: read the dataset listings of the reference recipes (and plain ones) into one list of Examples.

Formats (`MANIFEST_FORMATS`; "auto" detects them):
- `ast-json`: AST/PSLA `{"data": [{"wav": path, "labels": "/m/a,/m/b"}, ...]}`; extra keys are ignored,
  id = file stem.
- `audioset-csv`: AudioSet segment CSVs (`# ...` comment lines, then `YTID, start, end, "mid1,mid2"`).
  Audio is looked up by YTID in `audio_dir` (default: the CSV's folder) with one directory listing.
  Accepted file names, in order of preference: `Y<YTID>.<ext>` (PANNs), `<YTID>.<ext>`, and
  segment-suffixed names `[Y]<YTID>_<anything>.<ext>` (e.g. `<YTID>_30000_40000.wav`).
  Clips not found are reported under `Y<YTID>.wav`.
- `esc50`: `esc50.csv` (filename, fold, target, category, ...); labels = category names; audio in
  `audio_dir`, `<csv dir>/audio` or `<csv dir>/../audio`; `folds=[...]` selects folds.
- `fsd50k`: `dev.csv` (fname, labels, mids, split) or `eval.csv`; labels = mids; audio at
  `<audio_dir>/<fname>.wav` (default: `FSD50K.dev_audio` or `FSD50K.eval_audio` beside the CSV's folder,
  as in the official layout); `split="train"|"val"` filters dev.csv.
- `folder`: one subfolder per class, audio files found recursively; label = subfolder name,
  id = path relative to the folder, without suffix.
- `csv`: a header with `path` and optionally `labels`, `id`, `start`, `end` (tab-separated when the suffix
  is .tsv). The labels of one cell are separated by ";" if any labels cell of the file contains ";", else
  by "|" if any contains "|", else by "," (quote the cell); labels containing commas thus need ";" or "|".

Relative paths resolve against `audio_dir` when given, else the manifest's folder. For esc50 and fsd50k, whose
file names come from upstream metadata, a file with the same stem and another audio extension is accepted
(datasets are often re-encoded). Missing files and repeated ids/paths are kept out of `examples` and reported.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tagger.errors import TaggerError
from tagger.fileio import atomic_write_text

MANIFEST_FORMATS = ("ast-json", "audioset-csv", "esc50", "fsd50k", "folder", "csv")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aif", ".aiff")
LABEL_SEPARATORS = (";", "|", ",")  # detection order; "," is the fallback
FSD50K_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Example:
    """One clip: where its audio is, its labels, and a stable id (YTID, file stem, ...)."""

    path: Path
    labels: tuple[str, ...]
    id: str
    start: float | None = None  # AudioSet segment times, for information only: the files are already cut
    end: float | None = None


@dataclass
class Manifest:
    """What a manifest yields, plus what had to be left out, so the caller can report it rather than crash."""

    examples: list[Example]
    source: Path
    format: str
    missing: list[Example] = field(default_factory=list)
    duplicates: list[Example] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> str:
        n = len(self.examples)
        text = f"{n} clip{'s' * (n != 1)} from {self.source.name} ({self.format})"
        notes = []
        if self.missing:
            notes.append(f"{len(self.missing)} missing")
        if self.duplicates:
            notes.append(f"{len(self.duplicates)} duplicate{'s' * (len(self.duplicates) != 1)}")
        return text + ("; " + ", ".join(notes) if notes else "")


# ---- file system ---------------------------------------------------------------------------------


class _Listing:
    """Directory listings cached per folder: one scandir per folder instead of one stat per clip."""

    def __init__(self) -> None:
        self._names: dict[Path, set[str]] = {}
        self._stems: dict[Path, dict[str, str]] = {}

    def names(self, folder: Path) -> set[str]:
        if folder not in self._names:
            try:
                with os.scandir(folder) as entries:
                    self._names[folder] = {e.name for e in entries if not e.is_dir()}
            except OSError:
                self._names[folder] = set()
        return self._names[folder]

    def exists(self, path: Path) -> bool:
        return path.name in self.names(path.parent)

    def audio_by_stem(self, folder: Path) -> dict[str, str]:
        """stem -> file name of a folder's audio files, preferring extensions in AUDIO_EXTENSIONS order."""
        if folder not in self._stems:
            stems: dict[str, str] = {}
            for name in sorted(self.names(folder), key=_extension_rank):
                stem, ext = os.path.splitext(name)
                if ext.lower() in AUDIO_EXTENSIONS:
                    stems.setdefault(stem, name)
            self._stems[folder] = stems
        return self._stems[folder]

    def with_any_extension(self, path: Path) -> Path:
        """The path itself if present, else a same-stem audio file with another extension, else the path."""
        if self.exists(path):
            return path
        name = self.audio_by_stem(path.parent).get(path.stem)
        return path.parent / name if name else path


def _extension_rank(name: str) -> tuple[int, str]:
    ext = os.path.splitext(name)[1].lower()
    return (AUDIO_EXTENSIONS.index(ext) if ext in AUDIO_EXTENSIONS else len(AUDIO_EXTENSIONS), name)


def _resolve(raw: str, base: Path) -> Path:
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else base / path


def _first_dir(candidates: Iterable[Path]) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


# ---- reading helpers -----------------------------------------------------------------------------


@dataclass
class _Context:
    """The options every reader may need, bundled so reader signatures stay uniform."""

    audio_dir: Path | None
    folds: frozenset[int] | None
    split: str | None
    check_files: bool
    listing: _Listing


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _csv_rows(path: Path, *, skip_comments: bool = False, **options) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of non-blank rows; comment lines become blank so numbers stay true."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = ("\n" if line.startswith("#") else line for line in f) if skip_comments else f
        reader = csv.reader(lines, **options)
        rows = []
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((reader.line_num, [cell.strip() for cell in row]))
        except csv.Error as e:
            raise TaggerError(f"{path} line {reader.line_num} is not valid CSV ({e}); fix the file") from None
    return rows


def _table(
    path: Path, required: Sequence[str], rows: list[tuple[int, list[str]]] | None = None
) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """Header column positions and the data rows of a CSV with a header (`rows` if already read), checking row
    widths."""
    rows = _csv_rows(path, delimiter=_delimiter(path)) if rows is None else rows
    if not rows:
        raise TaggerError(f"{path} is empty; a manifest needs a header and one row per clip")
    header = [c.lower() for c in rows[0][1]]
    columns = {name: i for i, name in reversed(list(enumerate(header)))}
    absent = [c for c in required if c not in columns]
    if absent:
        raise TaggerError(f"{path} has no {', '.join(absent)} column; its header is {','.join(rows[0][1])!r}")
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise TaggerError(f"{path} line {line} has {len(cells)} fields but the header has {len(header)}")
    return columns, rows[1:]


def _split_labels(text: str, separator: str = ",") -> tuple[str, ...]:
    return tuple(label for label in (part.strip() for part in text.split(separator)) if label)


def _number(text: str, what: str, path: Path, line: int, kind: Callable = float):
    try:
        return kind(text)
    except ValueError:
        raise TaggerError(f"{path} line {line}: {what} {text!r} is not a number; fix the row") from None


# ---- the formats ---------------------------------------------------------------------------------


def _read_ast_json(path: Path, ctx: _Context) -> list[Example]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise TaggerError(f"{path} line {e.lineno} is not valid JSON ({e.msg}); fix the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TaggerError(
            f'{path} has no "data" list; an AST/PSLA manifest is {{"data": [{{"wav": ..., "labels": ...}}]}}'
        )
    base = ctx.audio_dir or path.parent
    examples = []
    for position, entry in enumerate(data["data"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("wav"), str):
            raise TaggerError(f'{path}: entry {position} of "data" has no "wav" path; every entry needs one')
        labels = entry.get("labels", "")
        labels = _split_labels(labels) if isinstance(labels, str) else tuple(str(x) for x in labels)
        audio = _resolve(entry["wav"], base)
        examples.append(Example(audio, labels, audio.stem))
    return examples


def _audioset_finder(folder: Path, listing: _Listing) -> Callable[[str], str | None]:
    """YTID -> file name in `folder`, from a single listing of it (AudioSet has two million clips)."""
    exact = listing.audio_by_stem(folder)
    segments: dict[str, str] = {}
    for stem, name in exact.items():
        if len(stem) > 11 and stem[11] == "_":
            segments.setdefault(stem[:11], name)
        if len(stem) > 12 and stem[0] == "Y" and stem[12] == "_":
            segments.setdefault(stem[1:12], name)

    def find(ytid: str) -> str | None:
        return exact.get("Y" + ytid) or exact.get(ytid) or segments.get(ytid)

    return find


def _read_audioset_csv(path: Path, ctx: _Context) -> list[Example]:
    folder = ctx.audio_dir or path.parent
    find = _audioset_finder(folder, ctx.listing) if ctx.check_files else lambda ytid: None
    examples = []
    for line, cells in _csv_rows(path, skip_comments=True, skipinitialspace=True):
        if len(cells) != 4:
            raise TaggerError(
                f"{path} line {line}: expected 'YTID, start, end, \"labels\"', got {len(cells)} fields"
            )
        ytid, start, end, labels = cells
        start_s = _number(start, "start time", path, line)
        end_s = _number(end, "end time", path, line)
        name = find(ytid) or f"Y{ytid}.wav"
        examples.append(Example(folder / name, _split_labels(labels), ytid, start_s, end_s))
    return examples


def _read_esc50(path: Path, ctx: _Context) -> list[Example]:
    columns, rows = _table(path, ("filename", "fold", "category"))
    folder = ctx.audio_dir or _first_dir([path.parent / "audio", path.parent.parent / "audio"])
    if folder is None:
        if ctx.check_files:
            raise TaggerError(
                f"no audio folder next to {path} (tried audio/ and ../audio/); pass --audio-dir"
            )
        folder = path.parent / "audio"
    examples, folds_seen = [], set()
    for line, cells in rows:
        fold = _number(cells[columns["fold"]], "fold", path, line, int)
        folds_seen.add(fold)
        if ctx.folds is not None and fold not in ctx.folds:
            continue
        audio = folder / cells[columns["filename"]]
        if ctx.check_files:
            audio = ctx.listing.with_any_extension(audio)
        examples.append(Example(audio, (cells[columns["category"]],), Path(cells[columns["filename"]]).stem))
    if rows and not examples:
        have = ",".join(str(f) for f in sorted(folds_seen))
        raise TaggerError(f"{path} has no clips in folds {sorted(ctx.folds or ())}; its folds are {have}")
    return examples


def _read_fsd50k(path: Path, ctx: _Context) -> list[Example]:
    columns, rows = _table(path, ("fname", "mids"))
    has_split = "split" in columns
    if ctx.split is not None and not has_split:
        raise TaggerError(f"{path} has no split column (only FSD50K's dev.csv has one); drop --split")
    folder = ctx.audio_dir or _first_dir(
        [
            path.parent.parent / ("FSD50K.dev_audio" if has_split else "FSD50K.eval_audio"),
            path.parent / "audio",
        ]
    )
    folder = folder or path.parent
    examples = []
    for _, cells in rows:
        if ctx.split is not None and cells[columns["split"]] != ctx.split:
            continue
        audio = folder / f"{cells[columns['fname']]}.wav"
        if ctx.check_files:
            audio = ctx.listing.with_any_extension(audio)
        examples.append(Example(audio, _split_labels(cells[columns["mids"]]), cells[columns["fname"]]))
    if rows and not examples:
        raise TaggerError(
            f"{path} has no clips in split {ctx.split!r}; use one of {', '.join(FSD50K_SPLITS)}"
        )
    return examples


def _read_folder(path: Path, ctx: _Context) -> list[Example]:
    examples = []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for root, dirs, files in os.walk(class_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS and not name.startswith("."):
                    audio = Path(root) / name
                    clip_id = audio.relative_to(path).with_suffix("").as_posix()
                    examples.append(Example(audio, (class_dir.name,), clip_id))
    if not examples:
        raise TaggerError(
            f"folder {path} has no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class subfolders; "
            "put each class's clips in a subfolder named after it"
        )
    return examples


def _read_csv(path: Path, ctx: _Context) -> list[Example]:
    columns, rows = _table(path, ("path",))
    labels_col = columns.get("labels")
    cells_of_labels = [cells[labels_col] for _, cells in rows] if labels_col is not None else []
    separator = detect_label_separator(cells_of_labels)
    base = ctx.audio_dir or path.parent
    examples = []
    for line, cells in rows:
        raw = cells[columns["path"]]
        if not raw:
            raise TaggerError(f"{path} line {line} has an empty path; every row needs an audio file")
        audio = _resolve(raw, base)
        labels = _split_labels(cells[labels_col], separator) if labels_col is not None else ()
        clip_id = cells[columns["id"]] if "id" in columns and cells[columns["id"]] else audio.stem
        start = _number(cells[columns["start"]], "start", path, line) if "start" in columns else None
        end = _number(cells[columns["end"]], "end", path, line) if "end" in columns else None
        examples.append(Example(audio, labels, clip_id, start, end))
    return examples


def detect_label_separator(cells: Iterable[str]) -> str:
    """';' if any cell has one, else '|' if any has one, else ','; one choice per file keeps rows alike."""
    cells = list(cells)
    return next((sep for sep in LABEL_SEPARATORS[:-1] if any(sep in cell for cell in cells)), ",")


_READERS: dict[str, Callable[[Path, _Context], list[Example]]] = {
    "ast-json": _read_ast_json,
    "audioset-csv": _read_audioset_csv,
    "esc50": _read_esc50,
    "fsd50k": _read_fsd50k,
    "folder": _read_folder,
    "csv": _read_csv,
}


# ---- public entry points -------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """Guess a manifest's format from what it is (folder, .json) or its first line."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".json":
        return "ast-json"
    first = _first_line(path)
    if first.startswith("#"):
        return "audioset-csv"
    header = [c.strip().lower() for c in next(csv.reader([first], delimiter=_delimiter(path)), [])]
    if header[:4] == ["filename", "fold", "target", "category"]:
        return "esc50"
    if header[:3] == ["fname", "labels", "mids"]:
        return "fsd50k"
    if "path" in header:
        return "csv"
    raise TaggerError(
        f"cannot tell the format of {path} from its first line {first[:60]!r}; "
        f"pass --format with one of {', '.join(MANIFEST_FORMATS)}"
    )


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.strip()
    raise TaggerError(f"{path} is empty; a manifest needs one row per clip")


def read_manifest(
    path: str | Path,
    fmt: str = "auto",
    *,
    audio_dir: str | Path | None = None,
    folds: Iterable[int] | None = None,
    split: str | None = None,
    check_files: bool = True,
) -> Manifest:
    """Read any supported manifest; missing audio and repeated clips are set aside and reported, not fatal."""
    path = Path(path)
    if not path.exists():
        raise TaggerError(f"manifest {path} does not exist; check the path")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in MANIFEST_FORMATS:
        raise TaggerError(f"unknown manifest format {fmt!r}; use one of auto, {', '.join(MANIFEST_FORMATS)}")
    _check_options(fmt, folds, split)
    if path.is_dir() != (fmt == "folder"):
        kind = "a folder" if path.is_dir() else "a file"
        raise TaggerError(f"manifest {path} is {kind}, which cannot be read as {fmt}; check --format")
    if audio_dir is not None and not Path(audio_dir).is_dir():
        raise TaggerError(f"audio folder {audio_dir} does not exist; check --audio-dir")
    ctx = _Context(
        audio_dir=Path(audio_dir) if audio_dir is not None else None,
        folds=frozenset(int(f) for f in folds) if folds is not None else None,
        split=split,
        check_files=check_files,
        listing=_Listing(),
    )
    try:
        examples = _READERS[fmt](path, ctx)
    except UnicodeDecodeError:
        raise TaggerError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
    if not examples:
        raise TaggerError(f"manifest {path} lists no clips; add at least one row")
    unique, duplicates = _split_duplicates(examples)
    present, missing = _split_missing(unique, ctx.listing) if check_files else (unique, [])
    if not present:
        raise TaggerError(
            f"none of the {len(missing)} audio files of {path} exist (e.g. {missing[0].path}); "
            "fix the paths or pass --audio-dir"
        )
    return Manifest(present, path, fmt, missing, duplicates)


def _check_options(fmt: str, folds, split: str | None) -> None:
    if folds is not None and fmt != "esc50":
        raise TaggerError(f"--folds applies to esc50 manifests only, not {fmt}; drop it")
    if split is not None and fmt != "fsd50k":
        raise TaggerError(f"--split applies to fsd50k manifests only, not {fmt}; drop it")
    if split is not None and split not in FSD50K_SPLITS:
        raise TaggerError(f"--split {split!r} must be one of {', '.join(FSD50K_SPLITS)}")


def _split_duplicates(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """Keep the first clip per id and per path: a repeat would silently double its weight in training."""
    seen_ids: set[str] = set()
    seen_paths: set[Path] = set()
    unique, duplicates = [], []
    for example in examples:
        if example.id in seen_ids or example.path in seen_paths:
            duplicates.append(example)
        else:
            seen_ids.add(example.id)
            seen_paths.add(example.path)
            unique.append(example)
    return unique, duplicates


def _split_missing(examples: list[Example], listing: _Listing) -> tuple[list[Example], list[Example]]:
    present, missing = [], []
    for example in examples:
        (present if listing.exists(example.path) else missing).append(example)
    return present, missing


def write_manifest_csv(examples: Iterable[Example], path: str | Path) -> None:
    """Write the plain `path,labels,id` CSV, choosing a label separator the reader will detect back."""
    examples = list(examples)
    cells = label_cells([e.labels for e in examples], path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=_delimiter(Path(path)), lineterminator="\n")
    writer.writerow(["path", "labels", "id"])
    writer.writerows([str(e.path), labels, e.id] for e, labels in zip(examples, cells, strict=True))
    atomic_write_text(path, buffer.getvalue())


def label_cells(label_lists: Sequence[Sequence[str]], path: str | Path) -> list[str]:
    """Joined labels per clip with the first separator that no label contains and the reader will detect.

    A trailing separator on the first cell (an empty label, dropped on reading) announces ';' or '|' in files
    where no cell holds two labels.
    """
    for separator in LABEL_SEPARATORS[::-1]:
        if any(separator in label for labels in label_lists for label in labels):
            continue
        cells = [separator.join(labels) for labels in label_lists]
        if cells and detect_label_separator(cells) != separator:
            cells[0] += separator
        if detect_label_separator(cells) == separator:
            return cells
    raise TaggerError(f"cannot write {path}: some labels contain ',', ';' and '|'; rename those labels")


def write_manifest_json(examples: Iterable[Example], path: str | Path) -> None:
    """Write the AST/PSLA JSON manifest, readable by the reference code as well as by `read_manifest`."""
    data = [{"wav": str(example.path), "labels": _json_labels(example.labels, path)} for example in examples]
    atomic_write_text(path, json.dumps({"data": data}, indent=1) + "\n")


def _json_labels(labels: Sequence[str], path: str | Path) -> str:
    bad = next((label for label in labels if "," in label), None)
    if bad is not None:
        raise TaggerError(f"cannot write label {bad!r} to the JSON manifest {path}: AST joins labels with ','")
    return ",".join(labels)


def write_manifest_like(
    manifest: Manifest, labels: dict[str, Sequence[str]], path: str | Path, audio_dir: str | Path | None = None
) -> list[tuple[str, ...]]:
    """Write `manifest` again with new labels for the clips whose id is in `labels`; return each row's labels.

    The input's own format is kept when `path`'s suffix allows it: an AST JSON keeps its other keys and entries,
    a plain CSV its other columns, an AudioSet CSV its comment lines and times; rows the reader set aside
    (missing audio, repeats) are written unchanged. Other formats (ESC-50, FSD50K, a folder, or a change of
    suffix) become the plain `path,labels,id` CSV or the AST JSON of the readable clips.

    Relative audio paths are rewritten so that they still point at the same files from `path`'s folder
    (`audio_dir`: the folder they were relative to when read, if not the manifest's). An AudioSet CSV names no
    paths: written to another folder, it needs --audio-dir when read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv", ".tsv"):
        raise TaggerError(f"output manifest {path} must end in .json, .csv or .tsv")
    source = manifest.source
    move = _path_mover(Path(audio_dir) if audio_dir is not None else source.parent, path.parent)
    if suffix == ".json" and manifest.format == "ast-json":
        return _rewrite_ast_json(source, labels, path, move)
    if suffix in (".csv", ".tsv") and manifest.format == "csv" and _delimiter(source) == _delimiter(path):
        return _rewrite_csv(source, labels, path, move)
    if suffix == ".csv" and manifest.format == "audioset-csv":
        return _rewrite_audioset_csv(source, labels, path)
    here = path.parent.resolve()
    examples = [Example(Path(os.path.relpath(Path(e.path).resolve(), here)), tuple(labels.get(e.id, e.labels)), e.id)
                for e in [*manifest.examples, *manifest.missing]]
    (write_manifest_json if suffix == ".json" else write_manifest_csv)(examples, path)
    return [e.labels for e in examples]


def _path_mover(base: Path, target: Path) -> Callable[[str], str]:
    """A relative path read against `base`, made relative to `target` instead; absolute paths stay as they are."""
    if base.resolve() == target.resolve():
        return lambda raw: raw

    def move(raw: str) -> str:
        if Path(os.path.expanduser(raw)).is_absolute():
            return raw
        return Path(os.path.relpath((base / raw).resolve(), target.resolve())).as_posix()

    return move


def _take(labels: dict[str, Sequence[str]], clip_id: str, used: set[str]) -> Sequence[str] | None:
    """New labels for the first row of a clip id only: a repeated row was not read, so it is not relabelled."""
    if clip_id in used or clip_id not in labels:
        return None
    used.add(clip_id)
    return labels[clip_id]


def _rewrite_ast_json(source: Path, labels: dict[str, Sequence[str]], path: Path,
                      move: Callable[[str], str]) -> list[tuple[str, ...]]:
    data = json.loads(source.read_text(encoding="utf-8-sig"))
    used: set[str] = set()
    rows = []
    for entry in data["data"]:
        new = _take(labels, Path(entry["wav"]).stem, used)
        entry["wav"] = move(entry["wav"])
        if new is not None:
            entry["labels"] = list(new) if isinstance(entry.get("labels"), list) else _json_labels(new, path)
        old = entry.get("labels", "")
        rows.append(tuple(old) if isinstance(old, list) else _split_labels(old))
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return rows


def _rewrite_csv(source: Path, labels: dict[str, Sequence[str]], path: Path,
                 move: Callable[[str], str]) -> list[tuple[str, ...]]:
    raw = _csv_rows(source, delimiter=_delimiter(source))
    columns, body = _table(source, ("path",), raw)
    header = raw[0][1]
    if "labels" not in columns:
        header, columns = [*header, "labels"], {**columns, "labels": len(header)}
        body = [(line, [*cells, ""]) for line, cells in body]
    separator = detect_label_separator(cells[columns["labels"]] for _, cells in body)
    used: set[str] = set()
    rows = []
    for _, cells in body:
        given_id = cells[columns["id"]] if "id" in columns else ""
        clip_id = given_id or Path(cells[columns["path"]]).stem
        new = _take(labels, clip_id, used)
        rows.append(tuple(new) if new is not None else _split_labels(cells[columns["labels"]], separator))
        cells[columns["path"]] = move(cells[columns["path"]])
    texts = label_cells(rows, path)
    table = [[*cells[: columns["labels"]], text, *cells[columns["labels"] + 1 :]]
             for (_, cells), text in zip(body, texts, strict=True)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=_delimiter(path), lineterminator="\n")
    writer.writerow(header)
    writer.writerows(table)
    atomic_write_text(path, buffer.getvalue())
    return rows


def _rewrite_audioset_csv(source: Path, labels: dict[str, Sequence[str]], path: Path) -> list[tuple[str, ...]]:
    used: set[str] = set()
    rows, lines = [], []
    with open(source, newline="", encoding="utf-8-sig") as handle:
        for line in handle:
            if line.startswith("#") or not line.strip():
                lines.append(line.rstrip("\r\n"))
                continue
            ytid, start, end, old = next(csv.reader([line], skipinitialspace=True))
            new = _take(labels, ytid.strip(), used)
            row = tuple(new) if new is not None else _split_labels(old)
            rows.append(row)
            lines.append(f'{ytid.strip()}, {start.strip()}, {end.strip()}, "{",".join(row)}"')
    atomic_write_text(path, "\n".join(lines) + "\n")
    return rows
