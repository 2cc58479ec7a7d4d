"""The label-enhancement report: what was added per class and why, the thresholds, and the consistency checks.

One `Report` feeds the console tables, the Markdown file and the per-class CSV, so they always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagger.enhance.rules import addition_pairs, consistency, family_check
from tagger.enhance.run import Enhancement
from tagger.evaluation.metrics import average_precision

SPEECH = "/m/09x0r"  # PSLA's check_label_error: Speech against its male/female/child speech children
CLASS_COLUMNS = ("index", "id", "name", "threshold", "positives", "added_type1", "added_type2", "added",
                 "positives_after")


@dataclass
class Report:
    summary: dict[str, Any]
    classes: list[dict[str, Any]]  # CLASS_COLUMNS, every class
    pairs: list[dict[str, Any]]  # most common additions: rule, from, to, clips
    checks: list[dict[str, Any]]  # consistency counts: check, before, after
    no_threshold: list[str] = field(default_factory=list)  # class names that can never be added
    outside: list[str] = field(default_factory=list)  # class names the ontology lacks (kept, never expanded)
    abstract: list[str] = field(default_factory=list)  # class names the ontology marks abstract

    @property
    def changed_classes(self) -> list[dict[str, Any]]:
        return sorted((row for row in self.classes if row["added"]), key=lambda row: (-row["added"], row["index"]))


def build_report(result: Enhancement, top: int = 15) -> Report:
    labels, before, after = result.labels, result.targets, result.enhanced
    added = result.additions
    classes = [
        {"index": k, "id": labels.ids[k], "name": labels.names[k],
         "threshold": None if math.isnan(result.thresholds[k]) else round(float(result.thresholds[k]), 4),
         "positives": int(before[:, k].sum()), "added_type1": int(added.type1[:, k].sum()),
         "added_type2": int(added.type2[:, k].sum()), "added": int(added.added[:, k].sum()),
         "positives_after": int(after[:, k].sum())}
        for k in range(len(labels))
    ]
    type1, type2 = addition_pairs(before, added, result.hierarchy)
    pairs = [{"rule": rule, "from": labels.names[a], "to": labels.names[b], "clips": n}
             for rule, counter in (("Type I", type1), ("Type II", type2)) for (a, b), n in counter.items()]
    pairs = sorted(pairs, key=lambda row: (-row["clips"], row["rule"], row["to"]))[:top]
    return Report(_summary(result), classes, pairs, _checks(result),
                  no_threshold=[labels.names[k] for k in np.flatnonzero(np.isnan(result.thresholds))],
                  outside=[labels.names[labels.index(i)] for i in result.hierarchy.outside],
                  abstract=[labels.names[labels.index(i)] for i in result.hierarchy.abstract])


def _summary(result: Enhancement) -> dict[str, Any]:
    settings, added = result.settings, result.additions
    scored = result.scored
    ap = average_precision(result.targets[scored], result.scores[scored]) if scored.any() else np.array([np.nan])
    finite = ap[~np.isnan(ap)]
    return {
        "manifest": str(result.manifest.source),
        "teacher": result.teacher.source,
        "clips": len(result.manifest.examples),
        "clips_scored": int(scored.sum()),
        "clips_changed": int(added.added.any(axis=1).sum()),
        "labels_before": int(result.targets.sum()),
        "labels_added": int(added.added.sum()),
        "added_type1": int(added.type1.sum()),
        "added_type2": int(added.type2.sum()),
        "threshold": settings.threshold,
        "fallback_threshold": settings.fallback,
        "fixes": ",".join(settings.fixes),
        "mode": "single pass (PSLA)" if settings.single_pass else f"until stable ({added.passes} passes)",
        "teacher_mAP_on_these_labels": round(float(finite.mean()), 4) if finite.size else None,
    }


def _checks(result: Enhancement) -> list[dict[str, Any]]:
    before = consistency(result.targets, result.hierarchy)
    after = consistency(result.enhanced, result.hierarchy)
    rows = [
        {"check": "clips with a class but not all its ancestors (Type II gaps)",
         "before": before.child_without_ancestor, "after": after.child_without_ancestor},
        {"check": "clips with a parent but none of its children (Type I candidates)",
         "before": before.parent_without_child, "after": after.parent_without_child},
    ]
    speech_before = family_check(result.targets, result.labels, result.hierarchy, SPEECH)
    speech_after = family_check(result.enhanced, result.labels, result.hierarchy, SPEECH)
    if speech_before is not None and (any(speech_before.values()) or any(speech_after.values())):
        for key, value in speech_before.items():
            what = {"parent": "clips labelled Speech",
                    "child_without_parent": "clips with a Speech child but not Speech (PSLA's Type II error)"}
            name = what.get(key) or f"clips labelled {result.labels.names[result.labels.index(key)]}"
            rows.append({"check": name, "before": value, "after": speech_after[key]})
    return rows


# ---- output --------------------------------------------------------------------------------------


def write_csv(report: Report, path: str | Path) -> None:
    from tagger.fileio import atomic_write_csv

    atomic_write_csv(path, CLASS_COLUMNS, ([row[c] for c in CLASS_COLUMNS] for row in report.classes))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    def cell(value: Any) -> str:
        text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def markdown(report: Report, title: str = "Label enhancement report") -> str:
    lines = [f"# {title}", ""]
    for key, value in report.summary.items():
        lines.append(f"- **{key.replace('_', ' ')}**: {'' if value is None else value}")
    lines += ["", "## Labels added per class", ""]
    changed = report.changed_classes
    lines += _table(changed, list(CLASS_COLUMNS[1:])) if changed else ["No labels were added."]
    lines += ["", "## Most common additions", "",
              "Type I: a labelled parent gained the child; Type II: a labelled class gained the ancestor.", ""]
    lines += _table(report.pairs, ["rule", "from", "to", "clips"]) if report.pairs else ["None."]
    lines += ["", "## Consistency with the ontology", ""]
    lines += _table(report.checks, ["check", "before", "after"])
    for heading, names in (("Classes without a threshold (no positives; never added)", report.no_threshold),
                           ("Classes outside the ontology (kept, never expanded)", report.outside),
                           ("Classes the ontology marks abstract (kept, never expanded)", report.abstract)):
        if names:
            shown = ", ".join(names[:40]) + (f", and {len(names) - 40} more" if len(names) > 40 else "")
            lines += ["", f"## {heading}", "", f"{len(names)}: {shown}"]
    return "\n".join(lines) + "\n"


def write_markdown(report: Report, path: str | Path) -> None:
    from tagger.fileio import atomic_write_text

    atomic_write_text(path, markdown(report))


def render(report: Report, fmt: str = "table", top: int = 15) -> None:
    """Console output: the summary, the classes that gained most, the checks (one JSON object with --format json)."""
    from tagger import console

    if fmt != "table":
        console.render([{**report.summary, "classes": report.changed_classes, "pairs": report.pairs,
                         "checks": report.checks}] if fmt == "json" else report.changed_classes, fmt)
        return
    console.render([report.summary], fmt, title="label enhancement")
    if report.changed_classes:
        console.render([{c: row[c] for c in CLASS_COLUMNS[2:]} for row in report.changed_classes[:top]], fmt,
                       title=f"labels added per class (top {min(top, len(report.changed_classes))})")
    if report.pairs:
        console.render(report.pairs[:top], fmt, title="most common additions")
    console.render(report.checks, fmt, title="consistency with the ontology")
