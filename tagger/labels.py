"""Label vocabularies (index <-> id <-> display name, multi-hot encoding) and the AudioSet ontology graph."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError

_ID_COLUMNS = ("mid", "id")
_NAME_COLUMNS = ("display_name", "name")
_SINGLE_COLUMN_HEADERS = {"id", "mid", "label", "name", "display_name"}
_UNKNOWN_SHOWN = 5


def _read_rows(path: Path, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """(line number, cells) for every non-blank row, so errors can point at a line."""
    if not path.is_file():
        raise TaggerError(f"label file {path} does not exist; check the path")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            rows = [
                (reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)
            ]
        except csv.Error as e:
            raise TaggerError(f"{path} line {reader.line_num} is not valid CSV ({e}); fix the file") from None
        except UnicodeDecodeError:
            raise TaggerError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
    if not rows:
        raise TaggerError(f"{path} is empty; it needs one row per class")
    return rows


def _as_label_list(labels: str | Iterable[str]) -> list[str]:
    """A bare string means one label, not its characters."""
    return [labels] if isinstance(labels, str) else list(labels)


class LabelSet:
    """The ordered class vocabulary of a model: position i of every score vector is class i."""

    def __init__(self, ids: Sequence[str], names: Sequence[str] | None = None):
        ids = tuple(str(i) for i in ids)
        names = ids if names is None else tuple(str(n) for n in names)
        if not ids:
            raise TaggerError("a label set needs at least one class")
        if len(names) != len(ids):
            raise TaggerError(f"got {len(ids)} label ids but {len(names)} names; give one name per id")
        if any(not i for i in ids):
            raise TaggerError("a label id is empty; every class needs a non-empty id")
        self.ids: tuple[str, ...] = ids
        self.names: tuple[str, ...] = names
        self._by_id: dict[str, int] = {}
        for index, label in enumerate(ids):
            if label in self._by_id:
                raise TaggerError(f"label id {label!r} appears twice; each class must be listed once")
            self._by_id[label] = index
        # Display names are a convenience, so a duplicated name only fails when someone looks it up.
        self._by_name: dict[str, int | None] = {}
        for index, name in enumerate(names):
            self._by_name[name] = None if name in self._by_name else index

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_list(cls, ids: Sequence[str], names: Sequence[str] | None = None) -> LabelSet:
        return cls(ids, names)

    @classmethod
    def from_examples(cls, examples: Iterable) -> LabelSet:
        """Infer a vocabulary from a manifest: the sorted unique labels, each its own display name."""
        found = sorted({label for example in examples for label in example.labels})
        if not found:
            raise TaggerError("the manifest has no labels to build a label set from; pass a label file")
        return cls(found)

    @classmethod
    def from_list_of_dicts(cls, items: Sequence[dict]) -> LabelSet:
        """The inverse of `to_list`, for label sets stored inside checkpoints."""
        try:
            return cls([item["id"] for item in items], [item.get("name", item["id"]) for item in items])
        except (KeyError, TypeError, AttributeError):
            raise TaggerError('stored labels must be a list of {"id": ..., "name": ...} entries') from None

    @classmethod
    def from_csv(cls, path: str | Path) -> LabelSet:
        """Read a label file.

        Accepted layouts: `index,mid,display_name` (AudioSet's `class_labels_indices.csv`; names may contain
        quoted commas), any header naming an id column (`mid` or `id`) with an optional name column
        (`display_name` or `name`) and an optional `index` column, or a single column of ids with or without
        a one-word header. Rows are ordered by `index` when that column exists.
        """
        path = Path(path)
        rows = _read_rows(path)
        header = [c.lower() for c in rows[0][1]]
        id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
        if id_col is not None:
            return cls._from_table(path, header, id_col, rows[1:])
        if all(len(cells) == 1 for _, cells in rows):
            body = rows[1:] if header[0] in _SINGLE_COLUMN_HEADERS else rows
            if not body:
                raise TaggerError(f"{path} has a header but no classes; add one class per line")
            return cls([cells[0] for _, cells in body])
        raise TaggerError(
            f"{path} has no 'mid' or 'id' column; use the header index,mid,display_name or id,name, "
            "or list one label per line"
        )

    @classmethod
    def _from_table(cls, path: Path, header: list[str], id_col: int, body: list) -> LabelSet:
        name_col = next((header.index(c) for c in _NAME_COLUMNS if c in header), id_col)
        index_col = header.index("index") if "index" in header else None
        if not body:
            raise TaggerError(f"{path} has a header but no classes; add one row per class")
        entries = []
        for line, cells in body:
            if len(cells) <= max(id_col, name_col, index_col or 0):
                raise TaggerError(
                    f"{path} line {line} has {len(cells)} columns, expected {len(header)}; fix the row"
                )
            order = len(entries)
            if index_col is not None:
                try:
                    order = int(cells[index_col])
                except ValueError:
                    raise TaggerError(
                        f"{path} line {line}: index {cells[index_col]!r} is not an integer"
                    ) from None
            entries.append((order, cells[id_col], cells[name_col], line))
        entries.sort(key=lambda e: e[0])
        for position, (order, _, _, line) in enumerate(entries):
            if order != position:
                raise TaggerError(
                    f"{path} line {line}: index {order} breaks the sequence 0..{len(entries) - 1}; "
                    "indices must be unique and without gaps"
                )
        try:
            return cls([e[1] for e in entries], [e[2] for e in entries])
        except TaggerError as e:
            raise TaggerError(f"{path}: {e}") from None

    # ---- serialisation ---------------------------------------------------------------------------

    def to_list(self) -> list[dict]:
        """Plain data for a checkpoint, so loading needs no pickled classes."""
        return [{"id": i, "name": n} for i, n in zip(self.ids, self.names, strict=True)]

    def write_csv(self, path: str | Path) -> None:
        """Write `index,mid,display_name`, the layout every reference implementation reads."""
        from tagger.fileio import atomic_write_text

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows(
            [i, label, name] for i, (label, name) in enumerate(zip(self.ids, self.names, strict=True))
        )
        atomic_write_text(path, buffer.getvalue())

    # ---- lookups ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, label: object) -> bool:
        return label in self._by_id or self._by_name.get(label) is not None  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return self.ids == other.ids and self.names == other.names

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:3]) + (", ..." if len(self) > 3 else "")
        return f"LabelSet({len(self)} classes: {shown})"

    def _lookup(self, label: str) -> int | None:
        if label in self._by_id:
            return self._by_id[label]
        if label in self._by_name and self._by_name[label] is None:
            raise TaggerError(f"label name {label!r} belongs to several classes; use the class id instead")
        return self._by_name.get(label)

    def index(self, label: str) -> int:
        """Position of a class given its id or, failing that, its display name."""
        found = self._lookup(label)
        if found is None:
            raise TaggerError(
                f"unknown label {label!r}: it is neither an id nor a name of the {len(self)} classes"
            )
        return found

    def id_of(self, index: int) -> str:
        return self.ids[self._check_index(index)]

    def name_of(self, index: int) -> str:
        return self.names[self._check_index(index)]

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"class index {index} is outside 0..{len(self) - 1}")
        return index

    # ---- encoding --------------------------------------------------------------------------------

    def encode(self, labels: str | Iterable[str]) -> np.ndarray:
        """Multi-hot float32 vector (C,) of one clip's labels."""
        return self.encode_many([_as_label_list(labels)])[0]

    def encode_many(self, label_lists: Iterable[str | Iterable[str]]) -> np.ndarray:
        """Multi-hot float32 matrix (N, C); every unknown label is reported at once, not one per run."""
        rows: list[int] = []
        cols: list[int] = []
        unknown: dict[str, int] = {}
        n = 0
        for n, labels in enumerate(label_lists, start=1):
            for label in _as_label_list(labels):
                index = self._lookup(label)
                if index is None:
                    unknown[label] = unknown.get(label, 0) + 1
                else:
                    rows.append(n - 1)
                    cols.append(index)
        if unknown:
            raise TaggerError(self._unknown_message(unknown))
        out = np.zeros((n, len(self)), dtype=np.float32)
        out[rows, cols] = 1.0
        return out

    def _unknown_message(self, unknown: dict[str, int]) -> str:
        shown = ", ".join(repr(label) for label in list(unknown)[:_UNKNOWN_SHOWN])
        more = f" and {len(unknown) - _UNKNOWN_SHOWN} more" if len(unknown) > _UNKNOWN_SHOWN else ""
        uses = sum(unknown.values())
        return (
            f"{len(unknown)} labels of the manifest ({uses} uses) are not among the {len(self)} classes: "
            f"{shown}{more}; use the matching label file or fix the manifest"
        )

    def encode_single(self, labels: str | Iterable[str]) -> int:
        """Class index for single-label (multiclass) tasks such as ESC-50."""
        labels = _as_label_list(labels)
        if len(labels) != 1:
            raise TaggerError(
                f"a single-label task needs exactly one label per clip, got {len(labels)}: {labels[:5]}; "
                "fix the manifest or train as multi-label"
            )
        return self.index(labels[0])


class Ontology:
    """A class hierarchy (a DAG: a class may have several parents), e.g. AudioSet's ontology.json."""

    def __init__(
        self,
        names: dict[str, str],
        children: dict[str, Sequence[str]],
        restrictions: dict[str, Sequence[str]] | None = None,
        source: str | Path = "ontology",
    ):
        self._source = str(source)
        self._names = dict(names)
        self._restrictions = {i: tuple((restrictions or {}).get(i, ())) for i in self._names}
        self._children: dict[str, tuple[str, ...]] = {}
        self._parents: dict[str, list[str]] = {i: [] for i in self._names}
        for node in self._names:
            kids = tuple(dict.fromkeys(children.get(node, ())))
            for kid in kids:
                if kid not in self._names:
                    raise TaggerError(
                        f"{self._source}: {node} lists child {kid}, which is not a node; fix the file"
                    )
                self._parents[kid].append(node)
            self._children[node] = kids
        self._check_acyclic()

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_json(cls, path: str | Path) -> Ontology:
        """AudioSet's ontology.json: a list of {id, name, child_ids, restrictions, ...}."""
        path = Path(path)
        if not path.is_file():
            raise TaggerError(f"ontology file {path} does not exist; check the path")
        try:
            nodes = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise TaggerError(f"{path} line {e.lineno} is not valid JSON ({e.msg}); fix the file") from None
        except UnicodeDecodeError:
            raise TaggerError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
        if not isinstance(nodes, list) or not nodes:
            raise TaggerError(f"{path} must hold a non-empty JSON list of nodes with id and child_ids")
        names: dict[str, str] = {}
        children: dict[str, list[str]] = {}
        restrictions: dict[str, list[str]] = {}
        for position, node in enumerate(nodes):
            if not isinstance(node, dict) or "id" not in node:
                raise TaggerError(f"{path}: entry {position} has no 'id'; every node needs one")
            node_id = str(node["id"])
            if node_id in names:
                raise TaggerError(f"{path}: id {node_id} appears twice; each node must be listed once")
            names[node_id] = str(node.get("name", node_id))
            children[node_id] = [str(c) for c in node.get("child_ids", [])]
            restrictions[node_id] = [str(r) for r in node.get("restrictions", [])]
        return cls(names, children, restrictions, source=path)

    @classmethod
    def from_csv(cls, path: str | Path) -> Ontology:
        """A `parent,child` edge list (header optional); a one-column row adds a lone node; name = id."""
        path = Path(path)
        rows = _read_rows(path, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if [c.lower() for c in rows[0][1]] == ["parent", "child"]:
            rows = rows[1:]
        names: dict[str, str] = {}
        children: dict[str, list[str]] = {}
        for line, cells in rows:
            if len(cells) not in (1, 2) or not all(cells):
                raise TaggerError(f"{path} line {line}: expected 'parent,child', got {','.join(cells)!r}")
            for node in cells:
                names.setdefault(node, node)
                children.setdefault(node, [])
            if len(cells) == 2:
                children[cells[0]].append(cells[1])
        if not names:
            raise TaggerError(f"{path} has a header but no edges; add parent,child rows")
        return cls(names, children, source=path)

    @classmethod
    def load(cls, path: str | Path) -> Ontology:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return cls.from_json(path)
        if suffix in (".csv", ".tsv"):
            return cls.from_csv(path)
        raise TaggerError(f"ontology {path}: use a .json (AudioSet ontology) or a .csv of parent,child rows")

    def _check_acyclic(self) -> None:
        """Depth-first search with colours; a grey node met again closes a cycle."""
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        for root in self._names:
            if root in state:
                continue
            path = [root]
            stack = [iter(self._children[root])]
            state[root] = 1
            while stack:
                kid = next(stack[-1], None)
                if kid is None:
                    state[path.pop()] = 2
                    stack.pop()
                elif state.get(kid) == 1:
                    cycle = " -> ".join(path[path.index(kid) :] + [kid])
                    raise TaggerError(f"{self._source} has a cycle {cycle}; an ontology must be acyclic")
                elif kid not in state:
                    state[kid] = 1
                    path.append(kid)
                    stack.append(iter(self._children[kid]))

    def without_abstract(self) -> Ontology:
        """The graph minus purely abstract nodes and their edges: PSLA's filter (`restrictions != ['abstract']`).

        Paths through a removed node are cut. A node both abstract and blacklisted (AudioSet's 'Musical concepts')
        stays, as in PSLA, so Song keeps Music as an ancestor.
        """
        keep = {i: n for i, n in self._names.items() if self.restrictions(i) != ("abstract",)}
        children = {i: [k for k in self._children[i] if k in keep] for i in keep}
        return Ontology(keep, children, self._restrictions, source=self._source)

    # ---- queries ---------------------------------------------------------------------------------

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._names)

    def __contains__(self, node: object) -> bool:
        return node in self._names

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"Ontology({len(self)} nodes from {self._source})"

    def _known(self, node: str) -> str:
        if node not in self._names:
            raise TaggerError(f"{node!r} is not in the ontology {self._source}; check the class id")
        return node

    def name(self, node: str) -> str:
        return self._names[self._known(node)]

    def restrictions(self, node: str) -> tuple[str, ...]:
        return self._restrictions[self._known(node)]

    def is_abstract(self, node: str) -> bool:
        """AudioSet marks grouping-only nodes 'abstract' (some also 'blacklist'); they never label clips."""
        return "abstract" in self.restrictions(node)

    def children(self, node: str) -> tuple[str, ...]:
        return self._children[self._known(node)]

    def parents(self, node: str) -> tuple[str, ...]:
        return tuple(self._parents[self._known(node)])

    def ancestors(self, node: str) -> set[str]:
        """Every node above, through all parents (transitive)."""
        return self._reach(node, self._parents)

    def descendants(self, node: str) -> set[str]:
        return self._reach(node, self._children)

    def _reach(self, node: str, edges: dict) -> set[str]:
        seen: set[str] = set()
        todo = list(edges[self._known(node)])
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(edges[current])
        return seen
