"""`tagger import-checkpoint`: official checkpoint file -> self-describing tagger checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagger.checkpoint import read_torch_file, save_checkpoint
from tagger.errors import TaggerError
from tagger.labels import LabelSet
from tagger.models import importer


@dataclass
class ImportResult:
    out: Path
    arch: str
    num_classes: int
    parameters: int
    notes: list[str]


def numbered_labels(count: int) -> LabelSet:
    """Placeholder names when no label file is given: predictions then show class indices."""
    ids = [f"class_{i:03d}" for i in range(count)]
    return LabelSet.from_list(ids, ids)


def import_checkpoint(
    family: str,
    path: str | Path,
    out: str | Path,
    arch: str | None = None,
    labels: LabelSet | None = None,
    task: str = "multilabel",
    force: bool = False,
    source: dict | None = None,
) -> ImportResult:
    """Convert, strictly load (one-line error on the first bad key), and save as a tagger checkpoint; `source` is
    the provenance `tagger pull` records."""
    out = Path(out)
    if out.exists() and not force:
        raise TaggerError(f"{out} exists; choose another --out or pass --force to replace it")
    convert = importer(family)
    weights = convert(read_torch_file(path), arch)
    model = weights.build_model(source=str(path))
    notes = list(weights.notes)
    if labels is None:
        labels = numbered_labels(model.num_classes)
        notes.append("no --labels given: classes are named class_000 ... (pass the class_labels_indices.csv)")
    elif len(labels) != model.num_classes:
        raise TaggerError(f"the label file has {len(labels)} classes but the checkpoint has {model.num_classes}")
    train = {"imported_from": Path(path).name, "family": family, "notes": notes}
    save_checkpoint(out, model, labels, task=task, train=train, source=source)
    parameters = sum(p.numel() for p in model.parameters())
    return ImportResult(out, weights.arch, model.num_classes, parameters, notes)
