"""Typer app: parses options, calls one core function per command, renders results. No logic here.

Heavy modules (torch, numpy, the core) are imported inside the commands so `tagger --help` stays fast.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from tagger import __version__
from tagger.errors import TaggerError

app = typer.Typer(
    name="tagger",
    help="Audio tagging toolkit: features, models, training, evaluation and prediction.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def user_errors(command):
    """Turn a TaggerError into one line on stderr and exit status 2; anything else stays a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TaggerError as error:
            from tagger import console

            console.stderr.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tagger {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Audio tagging toolkit: features, models, training, evaluation and prediction."""


FormatOption = Annotated[str, typer.Option("--format", help="Result format: table, json or csv.")]


def _check_format(fmt: str) -> None:
    from tagger.console import OUTPUT_FORMATS

    if fmt not in OUTPUT_FORMATS:
        raise TaggerError(f"--format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")


@app.command("synthesize")
@user_errors
def synthesize_command(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write audio/, train.csv, valid.csv, labels.csv, events.csv.")
    ],
    clips: Annotated[int, typer.Option(help="Number of clips.")] = 48,
    seconds: Annotated[float, typer.Option(help="Clip length in seconds.")] = 5.0,
    sample_rate: Annotated[int, typer.Option(help="Sample rate of the WAV files.")] = 16000,
    valid_fraction: Annotated[float, typer.Option(help="Share of clips in valid.csv.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    fmt: FormatOption = "table",
) -> None:
    """Write a small labelled synthetic audio set with known event times (demo and test data)."""
    _check_format(fmt)
    from tagger import console
    from tagger.data.manifests import read_manifest
    from tagger.labels import LabelSet
    from tagger.synth import synthesize

    paths = synthesize(out_dir, clips, seconds, sample_rate, valid_fraction, seed)
    rows = []
    for split in ("train", "valid"):
        manifest = read_manifest(paths[split])
        counts = dict.fromkeys(LabelSet.from_csv(paths["labels"]).ids, 0)
        for example in manifest.examples:
            for label in example.labels:
                counts[label] = counts.get(label, 0) + 1
        rows.append({"split": split, "clips": len(manifest.examples), **counts})
    console.log(f"wrote {paths['train']}, {paths['valid']}, {paths['labels']} and {paths['events']}")
    console.render(rows, fmt, title="synthetic set: clips per label")


@app.command("extract-features")
@user_errors
def extract_features_command(
    manifest: Annotated[
        Path, typer.Argument(help="Manifest: AST JSON, AudioSet CSV, ESC-50/FSD50K CSV, plain CSV, or a folder.")
    ],
    frontend: Annotated[
        str, typer.Option(help="kaldi-fbank (AST/PSLA), passt-mel (PaSST/EfficientAT), panns-logmel (PANNs/HTS-AT).")
    ],
    out: Annotated[Path, typer.Option(help="Feature store folder (created; reruns resume).")],
    labels: Annotated[Path | None, typer.Option(help="class_labels_indices.csv to validate labels against.")] = None,
    manifest_format: Annotated[str, typer.Option(help="Manifest format, or auto.")] = "auto",
    audio_dir: Annotated[Path | None, typer.Option(help="Audio folder for AudioSet/ESC-50/FSD50K metadata.")] = None,
    folds: Annotated[str | None, typer.Option(help="ESC-50 folds to take, e.g. 1,2,3.")] = None,
    split: Annotated[str | None, typer.Option(help="FSD50K dev.csv split: train or val.")] = None,
    workers: Annotated[int, typer.Option(help="Decoding worker processes (0: decode in this process).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Clips per front-end batch.")] = 16,
    duration: Annotated[float | None, typer.Option(help="Crop or zero-pad every clip to this many seconds.")] = None,
    on_error: Annotated[
        str, typer.Option(help="fail: stop at the first bad file; skip: record it in errors.csv.")
    ] = "fail",
    shard: Annotated[
        str | None, typer.Option(help="K/N: process only part K of N (run N jobs, e.g. a SLURM array).")
    ] = None,
    shard_size: Annotated[
        int, typer.Option(help="Clips per committed shard (work lost on a kill is at most one shard).")
    ] = 256,
    fmt: FormatOption = "table",
) -> None:
    """Decode, resample and turn audio into log-mel features, cached as float16 shards with stats.json."""
    _check_format(fmt)
    from tagger import console
    from tagger.data.manifests import read_manifest
    from tagger.extract import extract_features, parse_part
    from tagger.labels import LabelSet

    part = parse_part(shard)
    fold_list = _parse_folds(folds)
    data = read_manifest(manifest, manifest_format, audio_dir=audio_dir, folds=fold_list, split=split)
    console.log(data.summary())
    if data.duplicates:
        console.log(f"skipping {len(data.duplicates)} duplicate entries, e.g. {data.duplicates[0].path}")
    label_set = LabelSet.from_csv(labels) if labels is not None else None
    try:
        result = extract_features(
            data.examples,
            out,
            frontend,
            missing=data.missing,
            labels=label_set,
            workers=workers,
            batch_size=batch_size,
            on_error=on_error,
            part=part,
            duration=duration,
            clips_per_shard=shard_size,
            manifest_name=str(manifest),
        )
    except KeyboardInterrupt:
        console.stderr.print(f"interrupted: finished clips are saved in {out}; rerun the same command to resume")
        raise typer.Exit(130) from None
    stats = result.stats
    row = {
        "store": str(result.out_dir),
        "frontend": stats["frontend"]["name"],
        "new": result.processed,
        "already_done": result.already_done,
        "failed": result.failed,
        "clips_total": stats["clips"],
        "bins": stats["bins"],
        "frames_min": stats["frames_min"],
        "frames_max": stats["frames_max"],
        "mean": stats["mean"],
        "std": stats["std"],
    }
    console.render([row], fmt, title="features")
    if result.failed:
        console.log(f"{result.failed} clips failed; see {result.out_dir / 'errors.csv'}")


@app.command("models")
@user_errors
def models_command(
    family: Annotated[str | None, typer.Option(help="Only this family, e.g. panns, psla, efficientat.")] = None,
    fmt: FormatOption = "table",
) -> None:
    """List every registered model: family, parameters (527 classes), sample rate, front-end, frame output."""
    _check_format(fmt)
    from tagger import console
    from tagger.models.catalog import catalog

    rows = catalog(family)
    if not rows:
        raise TaggerError(f"no models of family {family!r}; run `tagger models` to see all")
    if fmt == "table":  # descriptions stay in the JSON/CSV output, where width does not matter
        rows = [{k: v for k, v in row.items() if k != "description"} for row in rows]
    console.render(rows, fmt, title="models")


@app.command("import-checkpoint")
@user_errors
def import_checkpoint_command(
    family: Annotated[str, typer.Argument(help="Checkpoint family: panns, psla, efficientat.")],
    path: Annotated[Path, typer.Argument(help="The official checkpoint file.")],
    out: Annotated[Path, typer.Option(help="Where to write the tagger checkpoint (.pt).")],
    arch: Annotated[str | None, typer.Option(help="Model name (see `tagger models`); inferred when omitted.")] = None,
    labels: Annotated[Path | None, typer.Option(help="class_labels_indices.csv naming the classes.")] = None,
    task: Annotated[str, typer.Option(help="multilabel (sigmoid scores) or multiclass (softmax).")] = "multilabel",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    fmt: FormatOption = "table",
) -> None:
    """Convert an official checkpoint (AudioSet-trained weights etc.) into a self-describing tagger checkpoint."""
    _check_format(fmt)
    from tagger import console
    from tagger.importing import import_checkpoint
    from tagger.labels import LabelSet

    label_set = LabelSet.from_csv(labels) if labels is not None else None
    result = import_checkpoint(family, path, out, arch=arch, labels=label_set, task=task, force=force)
    for note in result.notes:
        console.log(f"note: {note}")
    row = {"out": str(result.out), "arch": result.arch, "classes": result.num_classes,
           "params_M": round(result.parameters / 1e6, 3)}
    console.render([row], fmt, title="imported")


@app.command("train")
@user_errors
def train_command(
    arch: Annotated[str | None, typer.Option(help="Model to train (see `tagger models`); a recipe may set it.")] = None,
    train: Annotated[Path | None, typer.Option(help="Training manifest (any format) or feature store.")] = None,
    valid: Annotated[Path | None, typer.Option(help="Validation manifest or feature store.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder: config, metrics, checkpoints.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Label file (class_labels_indices.csv); else from --train.")
                      ] = None,
    recipe: Annotated[str | None, typer.Option(help="A shipped recipe name (`tagger recipes`) or a TOML file.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: section.key=value.")] = None,
    init: Annotated[str | None, typer.Option(help="imagenet:PATH or checkpoint:PATH (same as --set model.init=).")
                    ] = None,
    train_folds: Annotated[str | None, typer.Option(help="Folds of --train to use (ESC-50), e.g. 1,2,3.")] = None,
    valid_folds: Annotated[str | None, typer.Option(help="Folds of --valid to use, e.g. 4.")] = None,
    audio_dir: Annotated[Path | None, typer.Option(help="Folder the manifests' audio paths are relative to.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this folder exactly where it stopped.")
                      ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Train a model with a paper's recipe; Ctrl-C saves and stops, --resume continues. Works under torchrun."""
    _check_format(fmt)
    from tagger import console
    from tagger.training import trainer
    from tagger.training.config import build_config

    try:
        if resume is not None:
            given = [n for n, v in (("--arch", arch), ("--train", train), ("--valid", valid), ("--recipe", recipe),
                                     ("--set", set_), ("--init", init), ("--out", out)) if v]
            if given:
                raise TaggerError(f"--resume continues with the run's saved settings; drop {', '.join(given)}")
            result = trainer.resume(resume)
        else:
            missing = [n for n, v in (("--train", train), ("--valid", valid), ("--out", out)) if v is None]
            if missing:
                raise TaggerError(f"missing {', '.join(missing)}; e.g. tagger train --arch NAME --train T --valid V "
                                  "--out RUN_DIR")
            overrides = list(set_ or []) + ([f"model.init={init}"] if init else [])
            config = build_config(recipe, overrides, arch)
            result = trainer.train(
                config, trainer.data_spec(train, _parse_folds(train_folds), audio_dir),
                trainer.data_spec(valid, _parse_folds(valid_folds), audio_dir), out, labels)
    except KeyboardInterrupt:
        run = resume or out
        console.log(f"interrupted; progress saved. Continue with: tagger train --resume {run}")
        raise typer.Exit(130) from None
    row = {"run": str(result.run_dir), "stopped": result.stop_reason, "epochs": result.epochs,
           "steps": result.steps, f"best_{result.metric}": result.best, "minutes": round(result.seconds / 60, 2)}
    row.update({k: v for k, v in result.last_metrics.items() if k not in ("epoch", "step", "lr")})
    console.render([row], fmt, title="training")


@app.command("recipes")
@user_errors
def recipes_command(fmt: FormatOption = "table") -> None:
    """List the shipped training recipes (use with `tagger train --recipe NAME`)."""
    _check_format(fmt)
    from tagger import console
    from tagger.training.config import read_recipe, recipe_description, recipe_names

    rows = []
    for name in recipe_names():
        data = read_recipe(name)
        rows.append({"recipe": name, "arch": data.get("model", {}).get("arch", ""),
                     "description": recipe_description(name)})
    console.render(rows, fmt, title="recipes")


def _parse_folds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TaggerError(f"--folds {text!r} must be comma-separated integers, e.g. 1,2,3") from None


def main() -> None:
    app()
