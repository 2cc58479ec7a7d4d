"""The house rules of docs/architecture.md, checked: no import circles, imports point down the layers, every stage
package says its job, and the predict path calls back up only through callbacks it was handed.

Imports are read from the source (every `import`, also those inside functions), so a circle hidden in a lazy
import is found too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from typer.testing import CliRunner

import tagger

PACKAGE = Path(tagger.__file__).resolve().parent

# Lowest first. A module may import modules of its own package, and anything of a lower layer; never a higher
# one, nor another package of its own layer (so peers such as training and export stay independent).
LAYERS: list[tuple[str, ...]] = [
    ("tagger.errors", "tagger.version"),
    ("tagger.fileio", "tagger.console", "tagger.jobs"),
    ("tagger.labels", "tagger.audio", "tagger.frontends", "tagger.augment", "tagger.torchfile"),
    ("tagger.models",),
    ("tagger.checkpoint", "tagger.catalog"),
    ("tagger.data",),
    ("tagger.inference",),
    ("tagger.evaluation",),
    ("tagger.training", "tagger.export", "tagger.weights", "tagger.ensemble"),
    ("tagger.enhance",),
    ("tagger.api",),
    ("tagger",),  # the package itself: the public names, loaded from tagger.api on first use
    ("tagger.hear", "tagger.demo"),
    ("tagger.cli",),
    ("tagger.__main__",),
]
STAGES = ("data", "models", "inference", "evaluation", "training", "enhance", "ensemble", "export", "weights")


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at `root`."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source (relative imports resolved)."""
    modules = module_files(root)
    top = root.name

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target.split(".")[0] == top and resolve(target) not in ("", name):
                    graph[name].add(resolve(target))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer, the layer entry the module belongs to): the longest entry that is the module or a parent of it."""
    best = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (rank, name)
    if best is None:
        raise AssertionError(f"{module} is in no layer of LAYERS; add it (and to docs/architecture.md)")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        rank, unit = layer_of(module)
        for target in targets:
            target_rank, target_unit = layer_of(target)
            if target_unit == unit and unit != "tagger":
                continue
            if target_rank >= rank:
                wrong.append(f"{module} imports {target}")
    return sorted(wrong)


# ------------------------------------------------------------------------------------------------- the rules


def test_the_package_has_no_import_circles():
    assert circles(import_graph(PACKAGE)) == []


def test_imports_point_down_the_layers():
    assert upward_imports(import_graph(PACKAGE)) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_find_a_circle_hidden_in_a_function_and_an_upward_import(tmp_path):
    root = _write(tmp_path / "tagger", {
        "__init__.py": "",
        "audio.py": "def load():\n    from tagger.inference import predict  # lazy, still a circle\n",
        "inference/__init__.py": "",
        "inference/predict.py": "from tagger import audio\nfrom .runtime import Scorer\n",
        "inference/runtime.py": "from ..audio import load\n",
    })
    graph = import_graph(root)
    assert graph["tagger.inference.predict"] == {"tagger.audio", "tagger.inference.runtime"}
    assert circles(graph) == [["tagger.audio", "tagger.inference.predict", "tagger.inference.runtime"]]
    assert upward_imports(graph) == ["tagger.audio imports tagger.inference.predict"]
    (root / "audio.py").write_text("def load():\n    return None\n")
    graph = import_graph(root)
    assert circles(graph) == [] and upward_imports(graph) == []


def test_every_stage_package_says_its_job_and_what_it_may_import():
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) >= 3, f"tagger/{stage}/__init__.py needs a docstring: its job and modules"
        assert "May import" in doc, f"tagger/{stage}/__init__.py: say what it may import"


def test_every_module_starts_with_a_docstring():
    missing = [name for name, path in module_files(PACKAGE).items()
               if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert missing == []


# ------------------------------------------------------------------------------------------------- the predict path


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _tagger_module(frame) -> str | None:
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.split(".")[0] == "tagger":
            return name
        frame = frame.f_back
    return None


def test_the_predict_path_calls_back_up_only_through_callbacks_and_the_model_registry(tmp_path, monkeypatch):
    """Follow one model through `tagger predict --events` with windows and record every call from one tagger module
    into another (a call made through torch or numpy counts from the nearest tagger frame).

    A call goes back up when its module is not among what the caller imports (directly or not), or sits in a
    higher layer. The only ones allowed are callbacks the caller was handed (a progress hook) and, inside models/,
    the registry's builders and the family's own forward_features: at most 8 distinct ones, as issue 17 asks.
    """
    from tagger.checkpoint import save_checkpoint
    from tagger.cli import app
    from tagger.labels import LabelSet
    from tagger.models import create_model

    torch.manual_seed(0)
    model = create_model("efficientat-mn01", num_classes=3).eval()
    save_checkpoint(tmp_path / "m.pt", model, LabelSet(["a", "b", "c"]))
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "clip.wav", (0.1 * rng.standard_normal(32000 * 6)).astype(np.float32), 32000)
    monkeypatch.chdir(tmp_path)
    graph = import_graph(PACKAGE)
    moves: dict[tuple[str, str], set[str]] = {}

    def record(frame, event, arg) -> None:
        callee = frame.f_globals.get("__name__", "")
        if event != "call" or callee.split(".")[0] != "tagger" or frame.f_code.co_name == "__getattr__":
            return
        caller = _tagger_module(frame.f_back)
        if caller is not None and caller != callee:
            moves.setdefault((caller, callee), set()).add(frame.f_code.co_qualname)

    args = ["predict", "clip.wav", "--model", "m.pt", "--events", "--window", "2", "--hop", "1", "--format", "json"]
    sys.setprofile(record)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        sys.setprofile(None)
    assert result.exit_code == 0, result.output

    def goes_up(caller: str, callee: str) -> bool:
        if layer_of(caller)[1] != layer_of(callee)[1]:
            return layer_of(callee)[0] > layer_of(caller)[0]
        reached = _reaches(graph, caller)
        parts = callee.split(".")
        return not any(".".join(parts[:k]) in reached for k in range(2, len(parts) + 1))

    up = {move: names for move, names in moves.items() if goes_up(*move)}
    assert len(moves) > 20  # the trace saw the whole path: cli, inference, models, front-end, audio, labels ...
    assert len(up) <= 8, sorted(up)
    for (caller, callee), names in up.items():
        callbacks = all("<lambda>" in name or "<locals>" in name for name in names)
        inside_models = layer_of(caller)[1] == layer_of(callee)[1] == "tagger.models"
        assert callbacks or inside_models, f"{caller} calls back up into {callee} ({', '.join(sorted(names))})"
