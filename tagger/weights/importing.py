"""`tagger import-checkpoint`: official checkpoint file -> self-describing tagger checkpoint that records its origin."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tagger.checkpoint import read_torch_file, save_checkpoint
from tagger.errors import TaggerError
from tagger.labels import LabelSet
from tagger.models import importer
from tagger.version import __version__
from tagger.weights.licences import licence_record


@dataclass
class ImportResult:
    out: Path
    arch: str
    num_classes: int
    parameters: int
    notes: list[str]
    source: dict  # the provenance recorded in the checkpoint (see `provenance`)


def numbered_labels(count: int) -> LabelSet:
    """Placeholder names when no label file is given: predictions then show class indices."""
    ids = [f"class_{i:03d}" for i in range(count)]
    return LabelSet.from_list(ids, ids)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def provenance(family: str, path: str | Path, known: dict | None = None) -> dict:
    """What the checkpoint keeps about the official file: family, name, size, SHA-256, when it was imported, and
    the licences its authors state (weights/licences.py). `known`: what `tagger pull` already knows (release, url,
    the verified digest, the release's licence), which wins over the family's table."""
    path = Path(path)
    known = dict(known or {})
    record = {
        "family": family,
        "file": path.name,
        "size": path.stat().st_size,
        "sha256": known.get("sha256") or file_sha256(path),  # pull has just verified it: no second pass
        "imported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tagger": __version__,
        **licence_record(family),
    }
    return {**record, **known}


def read_official(path: str | Path):
    """An official weights file: a torch pickle (read safely), or a `.safetensors` file (CED's model cards)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return read_torch_file(path)
    if not path.is_file():
        raise TaggerError(f"{path} does not exist; check the path")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise TaggerError(f"{path}: reading .safetensors needs the safetensors package (pip install safetensors, "
                          "or pip install 'tagger[export]')") from None
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise TaggerError(f"{path}: not a readable safetensors file ({error})") from None


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
    """Convert, strictly load (one-line error on the first bad key), and save as a tagger checkpoint that records
    where it came from (`provenance`); `source` is what `tagger pull` adds to that record."""
    out = Path(out)
    if out.exists() and not force:
        raise TaggerError(f"{out} exists; choose another --out or pass --force to replace it")
    convert = importer(family)
    weights = convert(read_official(path), arch)
    model = weights.build_model(source=str(path))
    notes = list(weights.notes)
    if labels is None:
        labels = numbered_labels(model.num_classes)
        notes.append("no --labels given: classes are named class_000 ... (pass the class_labels_indices.csv)")
    elif len(labels) != model.num_classes:
        raise TaggerError(f"the label file has {len(labels)} classes but the checkpoint has {model.num_classes}")
    record = provenance(family, path, source)
    train = {"imported_from": Path(path).name, "family": family, "notes": notes}
    save_checkpoint(out, model, labels, task=task, train=train, source=record)
    parameters = sum(p.numel() for p in model.parameters())
    return ImportResult(out, weights.arch, model.num_classes, parameters, notes, record)
