"""PSLA label enhancement rules: a teacher's scores and a class ontology add the labels a weak set is missing.

Pure numpy on (clips, classes) matrices; reading manifests, running the teacher and writing files live in
`run.py`, the report in `report.py`.

- Thresholds: per class, a statistic of the teacher's scores on the clips labelled with that class (PSLA's
  mean, median, 25th/10th/5th percentile) or one fixed value. A class without positives has no statistic and
  is never added unless a fallback threshold is given.
- Type I: a clip labelled with a parent but missing a direct child gets the child when its score passes.
- Type II: a clip labelled with a class gets each missing ancestor (all parents, transitively) that passes.
- Labels are only ever added. PSLA applies each rule once to the original labels; by default we repeat both
  until nothing changes, so that enhancing an enhanced set adds nothing new (`single_pass` gives PSLA's).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tagger.errors import TaggerError
from tagger.labels import LabelSet, Ontology

THRESHOLD_RULES = {"mean": None, "median": 50.0, "p25": 25.0, "p10": 10.0, "p5": 5.0}
FIXES = ("type1", "type2")
_ROWS_PER_CHUNK = 65536  # bounds the (clips, classes) temporaries on AudioSet-sized sets


def parse_threshold(text: str) -> str | float:
    """A rule name of THRESHOLD_RULES or a fixed probability in [0, 1]."""
    text = str(text).strip().lower()
    if text in THRESHOLD_RULES:
        return text
    try:
        value = float(text)
    except ValueError:
        raise TaggerError(f"--threshold {text!r} is not one of {', '.join(THRESHOLD_RULES)} or a number") from None
    if not 0.0 <= value <= 1.0:
        raise TaggerError(f"--threshold {value} must be between 0 and 1 (teacher scores are probabilities)")
    return value


def parse_fixes(text: str) -> tuple[str, ...]:
    fixes = tuple(dict.fromkeys(part.strip().lower().replace("-", "") for part in text.split(",") if part.strip()))
    unknown = [f for f in fixes if f not in FIXES]
    if unknown or not fixes:
        raise TaggerError(f"--fix {text!r}: use type1, type2 or type1,type2")
    return fixes


def class_thresholds(scores: np.ndarray, targets: np.ndarray, rule: str | float,
                     fallback: float | None = None) -> np.ndarray:
    """(C,) float64 thresholds; NaN where a class gets none (no positives and no fallback), so it is never added.

    A fixed value applies to every class. A statistic is taken over each class's positive clips, exactly as
    PSLA's numpy calls (`np.mean`, `np.percentile` with linear interpolation); classes without positives get
    `fallback`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(targets) > 0
    count = positives.sum(axis=0)
    if not isinstance(rule, str):
        return np.full(scores.shape[1], float(rule))
    if rule not in THRESHOLD_RULES:
        raise TaggerError(f"unknown threshold rule {rule!r}; use one of {', '.join(THRESHOLD_RULES)}")
    out = np.full(scores.shape[1], np.nan if fallback is None else float(fallback))
    if THRESHOLD_RULES[rule] is None:
        sums = np.where(positives, scores, 0.0).sum(axis=0)
        np.divide(sums, count, out=out, where=count > 0)
        return out
    for k in np.flatnonzero(count):
        out[k] = np.percentile(scores[positives[:, k], k], THRESHOLD_RULES[rule])
    return out


@dataclass
class Hierarchy:
    """The ontology seen through a vocabulary: for each class index, its direct children and all its ancestors
    that are classes too. Classes absent from the ontology have neither and are left as they are."""

    children: np.ndarray  # (C, C) bool: [p, c] when c is a direct child of p
    ancestors: np.ndarray  # (C, C) bool: [c, a] when a is above c, through any parents
    outside: list[str] = field(default_factory=list)  # class ids the ontology does not know
    abstract: list[str] = field(default_factory=list)  # class ids the ontology marks abstract: no edges, as PSLA

    @classmethod
    def build(cls, ontology: Ontology, labels: LabelSet) -> Hierarchy:
        """Edges of PSLA's maps (abstract nodes cut, see `Ontology.without_abstract`) between classes only."""
        graph = ontology.without_abstract()
        index = {label: k for k, label in enumerate(labels.ids) if label in graph}
        children = np.zeros((len(labels), len(labels)), dtype=bool)
        ancestors = np.zeros_like(children)
        for label, k in index.items():
            children[k, [index[c] for c in graph.children(label) if c in index]] = True
            ancestors[k, [index[a] for a in graph.ancestors(label) if a in index]] = True
        outside = [label for label in labels.ids if label not in ontology]
        abstract = [label for label in labels.ids if label in ontology and label not in graph]
        return cls(children, ancestors, outside, abstract)

    @property
    def parents(self) -> np.ndarray:
        """(C, C) bool: [c, p] when p is a direct parent of c."""
        return self.children.T


@dataclass
class Additions:
    """What enhancement added: Type I and Type II masks (a label both rules find is in both) and their union."""

    type1: np.ndarray  # (N, C) bool
    type2: np.ndarray  # (N, C) bool
    passes: int

    @property
    def added(self) -> np.ndarray:
        return self.type1 | self.type2


def _reaches(labels: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N, C) bool: clip i has a label k with edges[k, c]; a matrix product instead of a loop over clips."""
    return (labels.astype(np.float32) @ edges.astype(np.float32)) > 0


def enhance(targets: np.ndarray, scores: np.ndarray, hierarchy: Hierarchy, thresholds: np.ndarray,
            fixes: Sequence[str] = FIXES, single_pass: bool = False, scored: np.ndarray | None = None) -> Additions:
    """The labels to add to `targets` (N, C) given teacher `scores` (N, C) and per-class `thresholds` (C,).

    scored: (N,) bool, clips that have teacher scores; the others are left alone.
    """
    labels = np.asarray(targets) > 0
    scores = np.asarray(scores)
    if scores.shape != labels.shape or thresholds.shape != labels.shape[1:]:
        raise TaggerError(f"teacher scores {scores.shape}, labels {labels.shape} and thresholds {thresholds.shape} "
                          "do not match")
    with np.errstate(invalid="ignore"):
        passing = scores > thresholds[None, :]  # NaN thresholds never pass
    if scored is not None:
        passing &= np.asarray(scored, dtype=bool)[:, None]
    type1 = np.zeros_like(labels)
    type2 = np.zeros_like(labels)
    rules = [(edges, mask) for fix, edges, mask in (("type1", hierarchy.children, type1),
                                                    ("type2", hierarchy.ancestors, type2)) if fix in fixes]
    passes = 0
    for start in range(0, len(labels), _ROWS_PER_CHUNK):
        rows = slice(start, start + _ROWS_PER_CHUNK)
        current = labels[rows].copy()
        chunk_passes = 0
        while True:
            chunk_passes += 1
            new = np.zeros_like(current)
            for edges, mask in rules:  # both rules see the same labels, so one pass is their union
                found = _reaches(current, edges) & passing[rows] & ~current
                mask[rows] |= found
                new |= found
            if single_pass or not new.any():
                break
            current |= new
        passes = max(passes, chunk_passes)
    return Additions(type1, type2, passes)


def addition_pairs(targets: np.ndarray, additions: Additions, hierarchy: Hierarchy) -> tuple[Counter, Counter]:
    """Why labels were added: Counters of (labelled parent, added child) for Type I and (labelled class, added
    ancestor) for Type II, for the report's most common additions. A label is credited to the original labels
    that explain it, or, when it came from an added one (a later pass), to those; several sources count once
    each."""
    before = np.asarray(targets) > 0
    final = before | additions.added
    result = []
    for mask, edges in ((additions.type1, hierarchy.parents), (additions.type2, hierarchy.ancestors.T)):
        pairs: Counter = Counter()
        for i, c in zip(*np.nonzero(mask), strict=True):
            sources = np.flatnonzero(edges[c] & before[i])
            for source in sources if len(sources) else np.flatnonzero(edges[c] & final[i]):
                pairs[(int(source), int(c))] += 1
        result.append(pairs)
    return result[0], result[1]


@dataclass
class Consistency:
    """Label-graph inconsistencies of one label matrix: the errors PSLA sets out to fix."""

    child_without_ancestor: int  # clips with a class whose (vocabulary) ancestor is not labelled: Type II gaps
    parent_without_child: int  # clips with a class that has children in the vocabulary but none labelled


def consistency(targets: np.ndarray, hierarchy: Hierarchy) -> Consistency:
    labels = np.asarray(targets) > 0
    ancestors = _reaches(labels, hierarchy.ancestors)
    has_children = hierarchy.children.any(axis=1)
    child_labelled = _reaches(labels, hierarchy.parents)  # [i, p]: some child of p is labelled on clip i
    return Consistency(
        child_without_ancestor=int((ancestors & ~labels).any(axis=1).sum()),
        parent_without_child=int((labels & has_children[None, :] & ~child_labelled).any(axis=1).sum()),
    )


def family_check(targets: np.ndarray, labels: LabelSet, hierarchy: Hierarchy, parent: str) -> dict[str, int] | None:
    """PSLA's check_label_error for one parent (Speech and its male/female/child speech children in the paper):
    clips labelled with the parent, with each child, and with a child but not the parent. None if not a class."""
    if parent not in labels.ids:
        return None
    p = labels.ids.index(parent)
    kids = np.flatnonzero(hierarchy.children[p])
    marked = np.asarray(targets) > 0
    out = {"parent": int(marked[:, p].sum())}
    for k in kids:
        out[labels.ids[k]] = int(marked[:, k].sum())
    out["child_without_parent"] = int((marked[:, kids].any(axis=1) & ~marked[:, p]).sum()) if len(kids) else 0
    return out
