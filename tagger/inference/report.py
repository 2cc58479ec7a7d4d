"""Predictions as people and programs read them: tables, JSON / JSON Lines objects, long-form CSV rows."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagger.inference.predict import FileResult
from tagger.labels import LabelSet

PREDICT_FORMATS = ("table", "json", "csv", "jsonl")
CSV_COLUMNS = ("path", "kind", "start", "end", "rank", "label", "id", "score")


@dataclass(frozen=True)
class Selection:
    """Which labels to show: the `top_k` best (0: all), of those only scores >= `threshold`."""

    top_k: int = 5
    threshold: float | None = None

    def pick(self, probs: np.ndarray, labels: LabelSet) -> list[dict[str, Any]]:
        order = np.argsort(-probs, kind="stable")
        if self.top_k:
            order = order[: self.top_k]
        if self.threshold is not None:
            order = [i for i in order if probs[i] >= self.threshold]
        return [{"rank": rank, "label": labels.name_of(int(i)), "id": labels.id_of(int(i)),
                 "score": round(float(probs[i]), 6)} for rank, i in enumerate(order, 1)]


def file_object(result: FileResult, labels: LabelSet, selection: Selection, embedding: bool = False,
                rule_source: str | None = None) -> dict:
    """One JSON object per file: its labels, and windows / events / embedding when they were computed.
    rule_source: where the event rule came from ("checkpoint", "options" or a rule file), recorded with it."""
    obj: dict[str, Any] = {"path": str(result.path), "duration": round(result.duration, 6)}
    if result.window is not None:
        obj["window"], obj["hop"] = result.window, result.hop
    obj["labels"] = selection.pick(result.probabilities, labels)
    if result.windows:
        obj["windows"] = [{"start": round(w.start, 6), "end": round(w.end, 6),
                           "labels": selection.pick(w.probabilities, labels)} for w in result.windows]
    if result.events is not None:
        obj["events"] = [event_object(event, labels) for event in result.events]
        if result.event_rule is not None:
            obj["event_rule"] = result.event_rule.to_dict()
            if rule_source is not None:
                obj["event_rule"]["source"] = rule_source
    if embedding:
        obj["embedding"] = [float(x) for x in result.embedding]
    return obj


def event_object(event, labels: LabelSet) -> dict[str, Any]:
    return {"label": labels.name_of(event.label), "id": labels.id_of(event.label), "onset": round(event.onset, 3),
            "offset": round(event.offset, 3), "peak": round(float(event.peak), 6)}


def csv_rows(result: FileResult, labels: LabelSet, selection: Selection) -> list[dict[str, Any]]:
    """Long form: one row per (file or window, label) and per event; `kind` says which."""
    rows = [{"path": str(result.path), "kind": "clip", "start": 0.0, "end": round(result.duration, 6), **label}
            for label in selection.pick(result.probabilities, labels)]
    for window in result.windows:
        rows += [{"path": str(result.path), "kind": "window", "start": round(window.start, 6),
                  "end": round(window.end, 6), **label} for label in selection.pick(window.probabilities, labels)]
    for event in result.events or ():
        item = event_object(event, labels)
        rows.append({"path": str(result.path), "kind": "event", "start": item["onset"], "end": item["offset"],
                     "rank": "", "label": item["label"], "id": item["id"], "score": item["peak"]})
    return rows


def csv_text(rows: Iterable[dict[str, Any]], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def jsonl_line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def table_rows(result: FileResult, labels: LabelSet, selection: Selection) -> list[dict[str, Any]]:
    """Rows for the rich table: the file, then one row per window when windows were kept."""
    rows = [{"path": str(result.path), "time": f"0–{result.duration:.2f} s",
             "labels": _tags(selection.pick(result.probabilities, labels))}]
    rows += [{"path": "", "time": f"{w.start:.2f}–{w.end:.2f} s", "labels": _tags(selection.pick(w.probabilities,
                                                                                                 labels))}
             for w in result.windows]
    return rows


def event_rows(result: FileResult, labels: LabelSet) -> list[dict[str, Any]]:
    return [{"path": str(result.path), **event_object(event, labels)} for event in result.events or ()]


def _tags(picked: list[dict[str, Any]]) -> str:
    return ", ".join(f"{item['label']} {item['score']:.3f}" for item in picked) or "(none above threshold)"


class PredictSink:
    """Collects results and writes them: JSON Lines and CSV stream as files finish, the rest at the end.

    With `output`, everything goes to that file atomically (nothing half-written if the run fails); otherwise
    to stdout. Embeddings go to an .npy (files x D) or .npz (paths, embeddings, and per-window arrays) file.
    `start` gives it the model's labels and the number of inputs once the model is loaded.
    """

    def __init__(self, selection: Selection, fmt: str, output=None, embeddings=None, plot=None):
        from tagger.errors import TaggerError

        if fmt not in PREDICT_FORMATS:
            raise TaggerError(f"--format {fmt!r} is not one of {', '.join(PREDICT_FORMATS)}")
        self.selection, self.fmt, self.output, self.plot = selection, fmt, output, plot
        self.embeddings = None if embeddings in (None, "json") else embeddings
        self.embed_json = embeddings == "json"
        if self.embeddings is not None and self.embeddings.suffix not in (".npy", ".npz"):
            raise TaggerError(f"--embeddings {self.embeddings}: use a .npy or .npz file name, or 'json'")
        self.labels: LabelSet | None = None
        self.plot_count = 1
        self.chunks: list[str] = []  # what goes to --output
        self.objects: list[dict] = []  # json
        self.table: list[dict] = []
        self.events: list[dict] = []
        self.paths: list[str] = []  # embeddings, when written to a file
        self.vectors: list[np.ndarray] = []
        self.window_vectors: list[tuple[str, float, float, np.ndarray]] = []
        self.count = 0
        self.rule_source: str | None = None

    def start(self, labels: LabelSet, files: int, rule_source: str | None = None) -> None:
        self.labels, self.plot_count, self.rule_source = labels, files, rule_source

    def add(self, result: FileResult) -> None:
        self.count += 1
        if self.embeddings is not None:
            self.paths.append(str(result.path))
            self.vectors.append(result.embedding)
            self.window_vectors += [(str(result.path), w.start, w.end, w.embedding) for w in result.windows]
        if self.fmt == "jsonl":
            self._write(jsonl_line(file_object(result, self.labels, self.selection, self.embed_json,
                                               self.rule_source)))
        elif self.fmt == "csv":
            self._write(csv_text(csv_rows(result, self.labels, self.selection), header=self.count == 1))
        elif self.fmt == "json":
            self.objects.append(file_object(result, self.labels, self.selection, self.embed_json, self.rule_source))
        else:
            self.table += table_rows(result, self.labels, self.selection)
            self.events += event_rows(result, self.labels)
        if self.plot is not None and result.timeline is not None:
            self._plot(result)

    def _write(self, text: str) -> None:
        """To --output at the end (atomically), or to stdout now."""
        from tagger import console

        if self.output is not None:
            self.chunks.append(text)
        else:
            console.stdout.out(text.rstrip("\n"), highlight=False)

    def _plot(self, result: FileResult) -> None:
        from tagger.inference.timeline import plot_timeline

        path = self.plot
        if self.plot_count > 1:
            path = path.with_name(f"{path.stem}-{self.count:03d}-{result.path.stem}{path.suffix}")
        names = [self.labels.name_of(i) for i in range(len(self.labels))]
        plot_timeline(result.timeline, result.timeline_seconds, names, path, events=result.events or (),
                      title=str(result.path.name))

    def finish(self) -> None:
        from tagger import console
        from tagger.fileio import atomic_path, atomic_write_text

        if self.fmt == "json":
            self._write(json.dumps(self.objects, indent=2, ensure_ascii=False) + "\n")
        elif self.fmt == "table":
            if self.output is not None:
                self.chunks.append(_plain_table(self.table, self.events))
            else:
                console.render(self.table, "table", title="predictions")
                if self.events:
                    console.render(self.events, "table", title="events")
        if self.output is not None:
            atomic_write_text(self.output, "".join(self.chunks))
        if self.embeddings is not None and self.vectors:
            with atomic_path(self.embeddings) as tmp, open(tmp, "wb") as handle:
                if self.embeddings.suffix == ".npy":
                    np.save(handle, np.stack(self.vectors))
                else:
                    np.savez(handle, **self._embedding_arrays())

    def _embedding_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"paths": np.array(self.paths), "embeddings": np.stack(self.vectors)}
        if self.window_vectors:
            arrays["window_paths"] = np.array([w[0] for w in self.window_vectors])
            arrays["window_starts"] = np.array([w[1] for w in self.window_vectors], np.float64)
            arrays["window_ends"] = np.array([w[2] for w in self.window_vectors], np.float64)
            arrays["window_embeddings"] = np.stack([w[3] for w in self.window_vectors])
        return arrays


def _plain_table(rows: list[dict], events: list[dict]) -> str:
    """A tab-separated text table for --output with --format table (rich boxes belong on terminals)."""
    lines = []
    for block in (rows, events):
        if not block:
            continue
        columns = list(block[0])
        lines.append("\t".join(columns))
        lines += ["\t".join(str(row.get(c, "")) for c in columns) for row in block]
        lines.append("")
    return "\n".join(lines)


@dataclass
class PredictSummary:
    scored: int
    failed: int


def run_predict(inputs, model, sink: PredictSink, device: str = "auto", precision: str = "fp32",
                batch_size: int = 8, window=None, hop=None, aggregate: str = "mean", per_window: bool = False,
                events: bool = False, onset: float | None = None, offset=None, min_duration: float | None = None,
                min_gap: float | None = None, median_filter: float | None = None, event_rule=None,
                input_settings=None) -> PredictSummary:
    """What `tagger predict` does: expand inputs, load the model, score with a progress bar, write via `sink`.

    Event options left as None were not given: then the checkpoint's stored rule is used, if it has one
    (`inference.events.choose_rule`)."""
    from tagger import console
    from tagger.inference.events import choose_rule, stored_rule_note
    from tagger.inference.predict import PredictOptions, expand_inputs, predict_files
    from tagger.inference.runtime import Scorer

    options = PredictOptions(window=window, hop=hop, aggregate=aggregate, per_window=per_window,
                             timeline=sink.plot is not None, batch_size=batch_size)
    files, problems = expand_inputs(inputs)
    for problem in problems:
        console.stderr.print(f"[yellow]skipped:[/yellow] {problem.path}: {problem.message}", highlight=False)
    failed = len(problems)
    if not files:
        return PredictSummary(0, failed)
    tagger = Scorer.load(model, device=device, precision=precision, input_settings=input_settings)
    source = None
    if events:  # the rule needs the model's classes and the rule stored with it
        from dataclasses import replace

        rule, source = choose_rule(tagger.labels.names, tagger.event_rule, event_rule, on=onset, off=offset,
                                   min_duration=min_duration, min_gap=min_gap, median_filter=median_filter)
        options = replace(options, events=rule)
        if source == "checkpoint":
            console.log(stored_rule_note(tagger.source, tagger.event_record))
    sink.start(tagger.labels, len(files), source)

    def on_error(problem) -> None:
        nonlocal failed
        failed += 1
        console.stderr.print(f"[yellow]skipped:[/yellow] {problem.path}: {problem.message}", highlight=False)

    def on_note(path, note: str) -> None:
        console.log(f"{path}: {note}")

    scored = 0
    durations = [_duration(path) for path in files]  # headers read once: the progress total and the plans
    total = sum(d for d in durations if d is not None)
    with console.progress("s") as bar:
        task = bar.add_task("tagging (seconds of audio)", total=total, rate="")
        for result in predict_files(tagger, files, options, on_error=on_error, on_note=on_note,
                                    on_progress=lambda seconds: bar.update(task, advance=seconds),
                                    durations=durations):
            sink.add(result)
            scored += 1
        bar.update(task, completed=total)
    if scored:
        sink.finish()
    return PredictSummary(scored, failed)


def _duration(path) -> float | None:
    """Seconds of audio from the header; None for a file that fails (predict_files then reports why)."""
    from tagger import audio
    from tagger.errors import TaggerError

    try:
        return audio.info(path).duration
    except TaggerError:
        return None
