"""Where output goes: results to stdout, progress and logs to stderr, in table, JSON or CSV form."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

OUTPUT_FORMATS = ("table", "json", "csv")

# Piped output has no terminal width; rich would assume 80 columns and squash wide tables.
stdout = Console(soft_wrap=True, width=None if Console().is_terminal else 200)
stderr = Console(stderr=True, soft_wrap=True)


def progress(rate_unit: str = "clips") -> Progress:
    """A progress bar on stderr showing a rate; silent when stderr is not a terminal (logs, CI)."""
    return _bar(MofNCompleteColumn(), TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                TimeRemainingColumn())


@contextmanager
def counting(description: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for jobs that report (done, total); the callback it yields also shows units/s so far."""
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(description, total=None, rate="")

        def update(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:.1f} {unit}/s")

        yield update


def download_progress() -> Progress:
    """A byte-counting progress bar on stderr (downloads); silent when stderr is not a terminal."""
    return _bar(DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())


def _bar(*columns) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), *columns, console=stderr,
                    disable=not stderr.is_terminal, transient=False, refresh_per_second=4)


def log(message: str) -> None:
    """A status line for people, on stderr."""
    stderr.print(message, highlight=False)


def render(rows: Sequence[dict[str, Any]], fmt: str, title: str | None = None) -> None:
    """Print result rows to stdout as a rich table, a JSON list or CSV."""
    if fmt == "json":
        stdout.out(json.dumps(list(rows), indent=2, default=str), highlight=False)
    elif fmt == "csv":
        columns = _columns(rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        stdout.out(buffer.getvalue().rstrip("\n"), highlight=False)
    elif len(rows) == 1:  # one record reads best as field/value pairs, and fits any terminal width
        table = Table(title=title)
        table.add_column("field")
        table.add_column("value")
        for key, value in rows[0].items():
            table.add_row(key, _cell(value))
        stdout.print(table)
    else:
        table = Table(title=title)
        for column in _columns(rows):
            table.add_column(column)
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in _columns(rows)))
        stdout.print(table)


def _columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)
