"""Typer app: parses options, calls one core function per command, renders results. No logic here.

Heavy modules (torch, numpy, the core) are imported inside the commands so `tagger --help` stays fast.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, get_args

import typer
import typer.core

from tagger.errors import TaggerError
from tagger.version import __version__

_KINDS = {str: "TEXT", Path: "PATH", int: "INTEGER", float: "FLOAT"}


def _kind(param, ctx=None) -> str | None:
    """A value's kind as click names it in help (TEXT, PATH, INTEGER, FILES...); nothing for flags."""
    descriptor = param.type_descriptor
    if getattr(param, "is_flag", False) or descriptor.annotation is bool:
        return None
    base = get_args(descriptor.annotation)[0] if descriptor.is_list else descriptor.annotation
    return _KINDS.get(base, "TEXT") + ("..." if descriptor.is_list else "")


if hasattr(typer.core.TyperArgument, "display_type_rich"):
    # typer 0.2x prints Python annotations (<str>, <list[Path]>, <bool>) where users of every other CLI read
    # TEXT / PATH / nothing for a flag, and lower-case argument names; older typer already prints click's.
    typer.core.TyperOption.display_type_rich = _kind
    typer.core.TyperArgument.display_type_rich = _kind
    typer.core.TyperArgument.display_name_raw = property(lambda self: self.metavar or self.name.upper())

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
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
PrecisionOption = Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).")]
SplitOption = Annotated[str | None, typer.Option(help="FSD50K dev.csv split: train or val.")]
ManifestFormatOption = Annotated[str, typer.Option(help="Manifest format, or auto.")]
ModelOption = Annotated[Path | None, typer.Option(
    help="Tagger checkpoint or ensemble (.pt), or a pulled release's name; default: $TAGGER_MODEL.")]
AudioDirOption = Annotated[Path | None, typer.Option(help="Folder the manifest's audio paths are relative to.")]
FoldsOption = Annotated[str | None, typer.Option(help="ESC-50 folds to take, e.g. 1,2.")]
ShardPartOption = Annotated[str | None, typer.Option(
    "--shard", help="K/N: only the shards i with i % N == K-1 (N machines fill one folder).")]
ShortInputOption = Annotated[str | None, typer.Option(help="HTS-AT clips under 5.12 s: tile (official inference) or "
                                                      "stretch (official evaluation); default: the checkpoint's.")]
LongInputOption = Annotated[str | None, typer.Option(help="HTS-AT clips over 10.24 s: windows, or crops (the official "
                                                     "evaluation's averaged crops, up to 20.5 s).")]

# Event post-processing, shared by predict --events and evaluate --strong. None means "not given": with none of
# them, the rule stored in the checkpoint is used if it has one; the defaults are EventRule's (choose_rule).
OnsetOption = Annotated[float | None, typer.Option(
    "--onset-threshold", help="An event starts when its score reaches this (default 0.5). Any event option "
    "replaces a rule stored in the checkpoint.")]
OffsetOption = Annotated[float | None, typer.Option("--offset-threshold",
                                                    help="... and ends below this (default: half).")]
MinDurationOption = Annotated[float | None, typer.Option(
    "--min-duration", help="Drop events shorter than this (seconds; default 0.1).")]
MinGapOption = Annotated[float | None, typer.Option(
    "--min-gap", help="Merge same-label events closer than this (seconds; default 0).")]
MedianFilterOption = Annotated[float | None, typer.Option(
    "--median-filter", help="Median-filter frame scores over this many seconds before thresholding (default 0: "
    "off).")]
EventRuleOption = Annotated[Path | None, typer.Option(
    "--event-rule", help="Per-class thresholds and settings saved by `tagger evaluate --strong --tune-rule` (JSON); "
    "classes it does not name keep the thresholds above.")]


def _inputs(short_input: str | None, long_input: str | None = None) -> dict[str, str | None]:
    """Per-call clip-length settings for Scorer / export (None keeps the checkpoint's)."""
    return {"short_input": short_input, "long_input": long_input}


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
    hierarchy: Annotated[
        bool,
        typer.Option(
            "--hierarchy/--no-hierarchy",
            help="Add the parent classes tonal and broadband to every clip's labels and write ontology.csv.",
        ),
    ] = False,
    missing_labels: Annotated[
        float,
        typer.Option(
            help="Chance per train class that its (class, parent) pair loses one label: a Type I or Type II gap "
            "(needs --hierarchy); the complete labels go to train-complete.csv."
        ),
    ] = 0.0,
    scenes_from: Annotated[Path | None, typer.Option(
        help="Build sound scenes with strong labels from this ESC-50 esc50.csv instead: event clips on background "
             "recordings, --clips training scenes from the other folds and a quarter as many test scenes from "
             "--test-fold (writes train/test-strong.tsv, train/test.csv, labels.csv, audioset-label-map.csv).")] = None,
    test_fold: Annotated[int, typer.Option(help="With --scenes-from: the ESC-50 fold the test scenes come from.")] = 4,
    fmt: FormatOption = "table",
) -> None:
    """Write a small labelled synthetic audio set with known event times (demo and test data)."""
    _check_format(fmt)
    from tagger import console

    if scenes_from is not None:
        from tagger.data.scenes import write_scene_set
        from tagger.data.strong import read_strong

        paths = write_scene_set(scenes_from, out_dir, clips, seconds, sample_rate, seed, test_fold)
        rows = []
        for split in ("train", "test"):
            strong = read_strong(paths[f"{split}_strong"])
            counts = {label: sum(e.label == label for e in strong.events) for label in sorted(strong.labels)}
            rows.append({"split": split, "scenes": len(strong.files), "events": len(strong), **counts})
        console.log(f"wrote {out_dir}/audio, {', '.join(str(paths[k]) for k in paths)}")
        console.render(rows, fmt, title="scenes: events per class")
        return
    from tagger.data.manifests import read_manifest
    from tagger.data.synth import synthesize
    from tagger.labels import LabelSet

    paths = synthesize(
        out_dir, clips, seconds, sample_rate, valid_fraction, seed, hierarchy=hierarchy, missing_labels=missing_labels
    )
    rows = []
    for split in ("train", "valid"):
        manifest = read_manifest(paths[split])
        counts = dict.fromkeys(LabelSet.from_csv(paths["labels"]).ids, 0)
        for example in manifest.examples:
            for label in example.labels:
                counts[label] = counts.get(label, 0) + 1
        rows.append({"split": split, "clips": len(manifest.examples), **counts})
    extra = f", {paths['train_complete']}, {paths['ontology']}" if "ontology" in paths else ""
    console.log(f"wrote {paths['train']}, {paths['valid']}{extra}, {paths['labels']} and {paths['events']}")
    console.render(rows, fmt, title="synthetic set: clips per label")


@app.command("extract-features")
@user_errors
def extract_features_command(
    manifest: Annotated[
        Path, typer.Argument(help="Manifest: AST JSON, AudioSet CSV, ESC-50/FSD50K CSV, plain CSV, or a folder; or "
                             "a pack or AudioSet HDF5 file.")
    ],
    frontend: Annotated[
        str, typer.Option(help="kaldi-fbank (AST/PSLA), passt-mel (PaSST/EfficientAT), panns-logmel (PANNs/HTS-AT), "
                              "ced-mel (CED).")
    ],
    out: Annotated[Path, typer.Option(help="Feature store folder (created; reruns resume).")],
    labels: Annotated[Path | None, typer.Option(help="class_labels_indices.csv to validate labels against.")] = None,
    manifest_format: ManifestFormatOption = "auto",
    audio_dir: Annotated[Path | None, typer.Option(help="Audio folder for AudioSet/ESC-50/FSD50K metadata.")] = None,
    folds: FoldsOption = None,
    split: SplitOption = None,
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
    from tagger.data.clips import open_clips
    from tagger.data.extract import extract_features, parse_part
    from tagger.labels import LabelSet

    part = parse_part(shard)
    fold_list = _parse_folds(folds)
    data = open_clips(manifest, manifest_format, audio_dir=audio_dir, folds=fold_list, split=split)
    console.log(data.summary())
    if data.duplicates:
        console.log(f"skipping {len(data.duplicates)} duplicate entries, e.g. {data.duplicates[0].path}")
    label_set = LabelSet.from_csv(labels) if labels is not None else None
    try:
        result = extract_features(
            data,
            out,
            frontend,
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


@app.command("pack")
@user_errors
def pack_command(
    manifest: Annotated[
        Path, typer.Argument(help="Manifest: AST JSON, AudioSet CSV, ESC-50/FSD50K CSV, plain CSV, or a folder.")
    ],
    out: Annotated[Path, typer.Option(help="Pack folder (created; reruns resume, --shard runs share it).")],
    codec: Annotated[str, typer.Option(help="flac (lossless), mp3 (128 kbit/s, as PaSST) or pcm16 (raw).")] = "flac",
    sample_rate: Annotated[int | None, typer.Option(help="Resample every clip to this rate once (default: each "
                                                    "clip keeps its own, so loading stays exact).")] = None,
    shard_size: Annotated[int, typer.Option(help="Clips per shard (work lost on a kill is at most the shards "
                                            "in flight).")] = 1000,
    shard: ShardPartOption = None,
    workers: Annotated[int, typer.Option(help="Decoding/encoding processes (0: in this process).")] = 2,
    manifest_format: ManifestFormatOption = "auto",
    audio_dir: AudioDirOption = None,
    folds: FoldsOption = None,
    split: SplitOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Decode (and optionally resample) a manifest's audio into HDF5 shards with a label index: random access to
    millions of clips without millions of files; data sets open from the pack folder as from a manifest."""
    _check_format(fmt)
    from tagger import console
    from tagger.data.manifests import read_manifest
    from tagger.data.pack_writer import check_settings, pack_with_progress
    from tagger.jobs import parse_part

    check_settings(codec, sample_rate, shard_size, workers)
    part = parse_part(shard)
    fold_list = _parse_folds(folds)
    data = read_manifest(manifest, manifest_format, audio_dir=audio_dir, folds=fold_list, split=split)
    console.log(data.summary())
    options = {"audio_dir": None if audio_dir is None else str(audio_dir), "folds": folds, "split": split}
    try:
        result = pack_with_progress(data.examples, out, source=manifest, missing=data.missing, codec=codec,
                                    sample_rate=sample_rate, shard_size=shard_size, part=part, workers=workers,
                                    manifest_format=manifest_format, manifest_options=options)
    except KeyboardInterrupt:
        console.log(f"interrupted: finished shards are kept in {out}; rerun the same command to resume")
        raise typer.Exit(130) from None
    row = {"pack": str(result.out), "shards_written": len(result.written), "shards_already_done": result.already,
           "shards_total": result.shards, "clips_written": result.clips,
           "unreadable": result.unreadable + result.missing_files,
           "complete": "yes" if result.complete else "no", "clips_total": result.total_clips}
    console.render([row], fmt, title="pack")
    if result.unreadable or result.missing_files:
        console.log(f"{result.unreadable + result.missing_files} clips could not be read; see {out / 'errors.tsv'}")
    if not result.complete:
        console.log(result.remaining)


@app.command("models")
@user_errors
def models_command(
    family: Annotated[str | None, typer.Option(help="Only this family, e.g. panns, psla, efficientat.")] = None,
    fmt: FormatOption = "table",
) -> None:
    """List every registered model: family, parameters (527 classes), sample rate, front-end, frame output.

    The `default` column marks each family's main AudioSet model: `--arch FAMILY` (e.g. `--arch ast`) means it."""
    _check_format(fmt)
    from tagger import console
    from tagger.catalog import catalog
    from tagger.weights.licences import family_licences

    rows = catalog(family)
    if not rows:
        raise TaggerError(f"no models of family {family!r}; run `tagger models` to see all")
    for row in rows:  # the licence of the family's official releases (docs/models.md, "Licences")
        row["weights_licence"] = family_licences(row["family"]).weights
    if fmt == "table":  # descriptions stay in the JSON/CSV output, where width does not matter
        rows = [{k: v for k, v in row.items() if k != "description"} for row in rows]
    console.render(rows, fmt, title="models")


@app.command("pull")
@user_errors
def pull_command(
    name: Annotated[str | None, typer.Argument(help="A release (see --list): a model name such as efficientat-mn10, "
                                               "or a family name (ast, passt, htsat, psla, panns, efficientat) "
                                               "for its main model.")] = None,
    source: Annotated[str | None, typer.Option("--from", help="The official file downloaded elsewhere (offline "
                                               "machines), or another URL; verified the same way.")] = None,
    default: Annotated[bool, typer.Option("--default", help="Make it the model commands use without --model.")
                       ] = False,
    list_releases: Annotated[bool, typer.Option("--list", help="Show every release and what is pulled.")] = False,
    labels: Annotated[Path | None, typer.Option(help="A local class_labels_indices.csv, for machines without "
                                                "network.")] = None,
    fmt: FormatOption = "table",
) -> None:
    """Download an official checkpoint, verify it and convert it into the cache ($TAGGER_HOME); the only command
    that uses the network."""
    _check_format(fmt)
    from tagger import console

    if list_releases:
        if name is not None or source is not None or default:
            raise TaggerError("--list takes no NAME, --from or --default; run it on its own")
        from tagger.weights.pull import list_releases as rows

        console.render(rows(), fmt, title="releases (tagger pull NAME)")
        return
    if name is None:
        raise TaggerError("name a release to pull, e.g. `tagger pull efficientat-mn10`; `tagger pull --list` shows "
                          "them all")
    from tagger.weights.pull import pull

    with console.download_progress() as bar:
        task = None

        def progress(done: int, total: int | None) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task("downloading", total=total)
            bar.update(task, completed=done, total=total)

        try:
            result = pull(name, source, make_default=default, on_progress=progress, on_note=console.log,
                          labels=labels)
        except KeyboardInterrupt:
            console.log("interrupted; the partial download is kept, and the same command resumes it")
            raise typer.Exit(130) from None
    row = {"name": result.name, "checkpoint": str(result.path), "sha256": result.sha256 or "",
           "verified": "yes" if result.verified else ("no published digest" if result.sha256 else ""),
           "default": "yes" if result.default else "no"}
    console.render([row], fmt, title="pulled")


@app.command("import-checkpoint")
@user_errors
def import_checkpoint_command(
    family: Annotated[str, typer.Argument(help="Checkpoint family: panns, psla, efficientat, ast, passt, htsat.")],
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
    from tagger import api, console

    result = api.import_checkpoint(family, path, out, arch=arch, labels=labels, task=task, force=force)
    for note in result.notes:
        console.log(f"note: {note}")
    row = {"out": str(result.out), "arch": result.arch, "classes": result.num_classes,
           "params_M": round(result.parameters / 1e6, 3), "sha256": result.source.get("sha256", ""),
           "licence": result.source.get("licence", "")}
    console.render([row], fmt, title="imported")


@app.command("info")
@user_errors
def info_command(
    model: Annotated[str, typer.Argument(help="A tagger checkpoint or ensemble (.pt), or a pulled release's name.")],
    fmt: FormatOption = "table",
) -> None:
    """What a model file is: architecture, classes, sample rate, frame output, how it was made, where its weights
    came from and under which licence, and a stored event rule; an ensemble's members too."""
    _check_format(fmt)
    from tagger import api, console

    described = api.info(model)
    if fmt == "json":
        console.render([described.to_dict()], fmt, title="model")
        return
    members = [member.summary() for member in described.members]
    if fmt == "csv":
        console.render([described.summary(), *members], fmt)
        return
    console.render([described.summary()], fmt, title=f"model {described.path}")
    if members:
        columns = ("path", "arch", "classes", "made", "licence", "provenance")
        console.render([{k: row[k] for k in columns} for row in members], fmt, title="members")


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
    train_folds: Annotated[str | None, typer.Option(help="Folds of --train to use (ESC-50), e.g. 1,2.")] = None,
    valid_folds: Annotated[str | None, typer.Option(help="Folds of --valid to use, e.g. 3.")] = None,
    audio_dir: Annotated[Path | None, typer.Option(help="Folder the manifests' audio paths are relative to.")] = None,
    strong: Annotated[Path | None, typer.Option(
        help="Strong labels (DCASE TSV, AudioSet-Strong TSV or predict --events output) of training clips: the frame "
             "output learns them. Without --train, its clips (found in --audio-dir) are the training set.")] = None,
    valid_strong: Annotated[Path | None, typer.Option(
        help="Strong labels of the validation clips: metrics.csv gets valid_frame_loss.")] = None,
    strong_label_map: Annotated[Path | None, typer.Option(
        help="CSV from,to mapping the strong files' labels onto the run's classes.")] = None,
    teacher_targets: Annotated[Path | None, typer.Option(
        help="Folder from `tagger teach`: each clip replays one of the teacher's stored crops and distils from its "
             "logits (loss = kd_lambda * label loss + (1 - kd_lambda) * KD; --set loss.kd_lambda=0 is KD alone, as "
             "CED).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this folder exactly where it stopped.")
                      ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Train a model with a paper's recipe; Ctrl-C saves and stops, --resume continues. Works under torchrun."""
    _check_format(fmt)
    from tagger import api, console

    try:
        if resume is not None:
            given = [n for n, v in (("--arch", arch), ("--train", train), ("--valid", valid), ("--recipe", recipe),
                                     ("--set", set_), ("--init", init), ("--out", out), ("--strong", strong),
                                     ("--valid-strong", valid_strong), ("--teacher-targets", teacher_targets))
                     if v]
            if given:
                raise TaggerError(f"--resume continues with the run's saved settings; drop {', '.join(given)}")
            result = api.resume(resume)
        else:
            missing = [n for n, v in (("--train", train or strong), ("--valid", valid), ("--out", out)) if v is None]
            if missing:
                raise TaggerError(f"missing {', '.join(missing)}; e.g. tagger train --arch NAME --train T --valid V "
                                  "--out RUN_DIR (or --strong ANN.tsv --audio-dir DIR instead of --train)")
            overrides = list(set_ or []) + ([f"model.init={init}"] if init else [])
            result = api.train(train, valid, out, arch=arch, recipe=recipe, overrides=overrides, labels=labels,
                               train_folds=_parse_folds(train_folds), valid_folds=_parse_folds(valid_folds),
                               audio_dir=audio_dir, strong=strong, valid_strong=valid_strong,
                               strong_label_map=strong_label_map, teacher_targets=teacher_targets)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            console.log(f"interrupted; progress saved. Continue with: tagger train --resume {resume or out}")
        raise typer.Exit(130) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for all (the others lack the metrics)
        return
    row = {"run": str(result.run_dir), "stopped": result.stop_reason, "epochs": result.epochs,
           "steps": result.steps, f"best_{result.metric}": result.best, "minutes": round(result.seconds / 60, 2)}
    row.update({k: v for k, v in result.last_metrics.items() if k not in ("epoch", "step", "lr")})
    console.render([row], fmt, title="training")


@app.command("teach")
@user_errors
def teach_command(
    teacher: Annotated[str, typer.Argument(help="Teacher: a tagger checkpoint or ensemble (.pt), or a pulled "
                                           "release's name.")],
    data: Annotated[Path, typer.Argument(help="Clips to teach: a manifest (any format), a folder, a pack or an "
                                         "AudioSet HDF5 file.")],
    out: Annotated[Path, typer.Option(help="Folder for the targets (created; reruns resume).")],
    crops: Annotated[int, typer.Option(help="Random draws (crop and gain) per clip.")] = 10,
    top_k: Annotated[int, typer.Option(help="Largest logits kept per draw (CED: 20).")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the draws: draw d of clip i comes from (seed, i, d).")] = 0,
    clip_seconds: Annotated[float, typer.Option(help="Crop length; train the student with the same "
                                                "data.clip_seconds.")] = 10.0,
    gain_db: Annotated[int, typer.Option(help="Random gain of an integer dB in [-G, G-1], as augment.gain_db "
                                         "(0: none).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Crops per teacher forward pass.")] = 32,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    shard_size: Annotated[int, typer.Option(help="Clips per shard (work lost on a kill is at most one shard).")
                          ] = 1000,
    shard: ShardPartOption = None,
    workers: Annotated[int, typer.Option(help="Decoding processes (0: in this process).")] = 2,
    manifest_format: ManifestFormatOption = "auto",
    audio_dir: AudioDirOption = None,
    folds: FoldsOption = None,
    split: SplitOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Consistent teacher targets (CED): the teacher's top-K logits for N random crops of every clip, stored with
    each crop's offset and gain, for `tagger train --teacher-targets` to replay exactly."""
    _check_format(fmt)
    from tagger import api, console

    options = {"manifest_format": manifest_format, "audio_dir": audio_dir, "folds": _parse_folds(folds),
               "split": split}
    try:
        with console.counting("teaching", "clips") as progress:
            result = api.teach(teacher, data, out, crops=crops, top_k=top_k, seed=seed, clip_seconds=clip_seconds,
                               gain_db=gain_db, batch_size=batch_size, device=device, precision=precision,
                               shard_size=shard_size, workers=workers, shard=shard, on_progress=progress,
                               **options)
    except KeyboardInterrupt:
        console.log(f"interrupted: finished shards are kept in {out}; rerun the same command to resume")
        raise typer.Exit(130) from None
    row = {"targets": str(result.out), "clips_taught": result.clips, "draws_per_clip": crops, "top_k": top_k,
           "shards_written": len(result.written), "shards_already_done": result.already,
           "shards_total": result.shards, "unreadable": result.unreadable,
           "complete": "yes" if result.complete else "no", "clips_total": result.total_clips,
           "minutes": round(result.seconds / 60, 2)}
    console.render([row], fmt, title="teach")
    if result.unreadable:
        console.log(f"{result.unreadable} clips could not be read; their reasons are in the shards (errors_id, "
                    "errors_reason) and they have no targets")
    if result.complete:
        console.log(f"train on them with: tagger train --teacher-targets {out} --set data.clip_seconds="
                    f"{clip_seconds:g} --set loss.kd_lambda=0 ...")
    else:
        console.log(f"{out} is not complete yet: the other --shard jobs (or a rerun) add the missing shards")


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


@app.command("predict")
@user_errors
def predict_command(
    inputs: Annotated[list[str], typer.Argument(help="Audio files, folders (searched recursively) or globs.")],
    model: ModelOption = None,
    top_k: Annotated[int, typer.Option(help="Labels to show per file or window (0: all).")] = 5,
    threshold: Annotated[float | None, typer.Option(help="Only show labels scoring at least this.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json, csv (long form) or jsonl.")] = "table",
    output: Annotated[Path | None, typer.Option(help="Write results to this file instead of stdout.")] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    batch_size: Annotated[int, typer.Option(help="Clips or windows per forward pass.")] = 8,
    window: Annotated[float | None, typer.Option(help="Score sliding windows of this many seconds.")] = None,
    hop: Annotated[float | None, typer.Option(help="Seconds between window starts (default: window / 2).")] = None,
    aggregate: Annotated[str, typer.Option(help="Clip score from windows: mean or max.")] = "mean",
    per_window: Annotated[bool, typer.Option("--per-window", help="Also report every window.")] = False,
    events: Annotated[bool, typer.Option("--events", help="Detect events: label, onset, offset, peak.")] = False,
    onset_threshold: OnsetOption = None,
    offset_threshold: OffsetOption = None,
    min_duration: MinDurationOption = None,
    min_gap: MinGapOption = None,
    median_filter: MedianFilterOption = None,
    event_rule: EventRuleOption = None,
    plot: Annotated[Path | None, typer.Option(help="PNG heat-map of the top classes over time.")] = None,
    embeddings: Annotated[str | None, typer.Option(help="Write embeddings: a .npy/.npz file, or 'json'.")] = None,
    short_input: ShortInputOption = None,
    long_input: LongInputOption = None,
) -> None:
    """Tag audio files, folders and long recordings; events with --events, windows with --window."""
    from tagger import console
    from tagger.inference.report import PredictSink, Selection, run_predict

    if top_k < 0:
        raise TaggerError(f"--top-k must be 0 (all) or more, got {top_k}")
    if event_rule is not None and not events:
        raise TaggerError("--event-rule sets how events are found: add --events")
    sink = PredictSink(Selection(top_k, threshold), fmt, output, _embeddings_target(embeddings), plot)
    try:
        summary = run_predict(inputs, model, sink, device=device, precision=precision, batch_size=batch_size,
                              window=window, hop=hop, aggregate=aggregate, per_window=per_window, events=events,
                              onset=onset_threshold, offset=offset_threshold, min_duration=min_duration,
                              min_gap=min_gap, median_filter=median_filter, event_rule=event_rule,
                              input_settings=_inputs(short_input, long_input))
    except KeyboardInterrupt:
        kept = "" if output is None else f"; {output} was left as it was"
        console.log(f"interrupted after {sink.count} files{kept}")
        raise typer.Exit(130) from None
    if summary.failed and not summary.scored:
        raise TaggerError(f"none of the {summary.failed} inputs could be scored (see the messages above)")
    if output is not None:
        console.log(f"wrote {summary.scored} results to {output}")


def _embeddings_target(value: str | None):
    return value if value in (None, "json") else Path(value)


@app.command("evaluate")
@user_errors
def evaluate_command(
    manifest: Annotated[Path | None, typer.Argument(help="Labelled manifest (any format of docs/data.md) or a folder; "
                                                    "or a pack or AudioSet HDF5 file. Not with --strong.")] = None,
    model: ModelOption = None,
    labels: Annotated[Path | None, typer.Option(help="Label file mapping the manifest's label ids/names "
                                                "(class_labels_indices.csv) onto the model's classes.")] = None,
    fmt: FormatOption = "table",
    per_class: Annotated[Path | None, typer.Option(help="Write per-class AP/AUC/positives to this CSV.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG: AP per class, confusion matrix.")] = None,
    save_predictions: Annotated[Path | None, typer.Option(help="Write ids, probabilities, logits, targets (.npz).")
                                ] = None,
    clip_seconds: Annotated[float | None, typer.Option(help="Crop/zero-pad every clip to this many seconds "
                                                       "(default: the whole clip).")] = None,
    batch_size: Annotated[int, typer.Option(help="Clips or windows per forward pass.")] = 8,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    folds: Annotated[str | None, typer.Option(help="ESC-50 folds to evaluate, e.g. 5 or 1,2.")] = None,
    split: SplitOption = None,
    manifest_format: ManifestFormatOption = "auto",
    audio_dir: AudioDirOption = None,
    on_error: Annotated[str, typer.Option(help="Missing/unreadable audio: fail, or skip (listed on stderr).")
                        ] = "fail",
    short_input: ShortInputOption = None,
    long_input: LongInputOption = None,
    strong: Annotated[Path | None, typer.Option(help="Strong labels (DCASE or AudioSet-Strong TSV, or predict "
                                                "--events output): score events with PSDS1/2 and event/segment F1; "
                                                "audio from --audio-dir.")] = None,
    label_map: Annotated[Path | None, typer.Option(help="With --strong: a from,to CSV mapping annotation labels "
                                                   "onto the model's.")] = None,
    save_scores: Annotated[Path | None, typer.Option(help="With --strong: write each file's frame scores (one TSV "
                                                     "per file, sed_scores_eval's format) into this folder.")] = None,
    window: Annotated[float | None, typer.Option(help="With --strong: score windows of this many seconds (the time "
                                                 "axis of a model without frame output; default 2).")] = None,
    hop: Annotated[float | None, typer.Option(help="With --strong: seconds between windows (default: window / 2, "
                                              "or 0.5 for the default windows).")] = None,
    onset_threshold: OnsetOption = None,
    offset_threshold: OffsetOption = None,
    min_duration: MinDurationOption = None,
    min_gap: MinGapOption = None,
    median_filter: MedianFilterOption = None,
    event_rule: EventRuleOption = None,
    tune_rule: Annotated[Path | None, typer.Option(help="With --strong: choose each class's onset threshold for the "
                                                   "best F1 on these files and save the rule (JSON) for --event-rule."
                                                   )] = None,
    tune_for: Annotated[str, typer.Option(help="With --tune-rule: the F1 to maximise, event or segment.")] = "event",
    store_rule: Annotated[bool, typer.Option("--store-rule", help="With --tune-rule: also store the tuned rule in the "
                                             "--model checkpoint, so predict --events and evaluate --strong use it "
                                             "when no event option is given.")] = False,
) -> None:
    """Score a labelled manifest: mAP, mAUC, d', lwlrap (accuracy, top-5 for single-label sets), per class.
    With --strong: sound event detection as DCASE scores it (PSDS1, PSDS2, event and segment F1)."""
    _check_format(fmt)

    from tagger import console

    if strong is not None:
        if manifest is not None or audio_dir is None:
            raise TaggerError("--strong scores the files its annotation names: give --audio-dir and no manifest")
        options = {"on": onset_threshold, "off": offset_threshold, "min_duration": min_duration, "min_gap": min_gap,
                   "median_filter": median_filter}
        _evaluate_strong(strong, audio_dir, model, label_map, save_scores, per_class, plot, fmt, batch_size, device,
                         precision, _inputs(short_input, long_input), options, event_rule, (window, hop),
                         (tune_rule, tune_for, store_rule))
        return
    if store_rule:
        raise TaggerError("--store-rule stores the rule --tune-rule makes, with --strong only")
    if window is not None or hop is not None:
        raise TaggerError("--window and --hop apply with --strong only")
    if manifest is None:
        raise TaggerError("give a manifest to evaluate, or --strong ANN.tsv --audio-dir DIR")

    fold_list = _parse_folds(folds)
    if on_error not in ("fail", "skip"):
        raise TaggerError(f"--on-error {on_error!r} is not one of fail, skip")
    from tagger import api

    tagger = api.load(model, device=device, precision=precision, short_input=short_input, long_input=long_input)
    notes: list[str] = []

    def note(path: Path, text: str) -> None:
        if not notes:
            console.log(f"note: {path}: {text}")
        notes.append(text)

    with console.counting("evaluating", "files") as progress:
        result = api.evaluate(
            tagger, manifest, labels=labels, manifest_format=manifest_format, folds=fold_list, split=split,
            audio_dir=audio_dir, clip_seconds=clip_seconds, batch_size=batch_size, on_error=on_error,
            on_skip=lambda problem: console.log(f"skipped {problem.path}: {problem.message}"),
            on_note=note, on_progress=progress,
        )
    if len(notes) > 1:
        console.log(f"{len(notes)} files were scored in windows (longer than the model's input)")
    for path, write in ((save_predictions, result.save_predictions), (per_class, result.write_per_class),
                        (plot, result.plot)):
        if path is not None:
            console.log(f"wrote {write(path)}")
    console.render([result.metrics], fmt, title=f"evaluation of {tagger.source}")


def _evaluate_strong(strong, audio_dir, model, label_map, save_scores, per_class, plot, fmt, batch_size, device,
                     precision, input_settings, options, saved_rule, windows: tuple, tuning: tuple) -> None:
    """evaluate --strong: the rule from the event `options` (None: not given), the --event-rule file laid over
    them, or the one stored in the checkpoint."""
    from datetime import datetime, timezone

    from tagger import console
    from tagger.checkpoint import check_writable
    from tagger.evaluation.strong import evaluate_strong
    from tagger.inference.events import choose_rule, stored_rule_note, write_rule
    from tagger.inference.runtime import Scorer, store_event_rule

    tune_path, tune_for, store = tuning
    if tune_path is not None and saved_rule is not None:
        raise TaggerError("--tune-rule starts from one threshold for all classes: drop --event-rule")
    if store and tune_path is None:
        raise TaggerError("--store-rule stores the rule --tune-rule makes: add --tune-rule OUT.json")
    if store and model is None:
        raise TaggerError("--store-rule writes the tuned rule into a checkpoint: name it with --model")
    scorer = Scorer.load(model, device=device, precision=precision, input_settings=input_settings)
    if store:
        check_writable(scorer.source)  # before the files are scored, not after
    # Tuning starts from the options (one threshold for every class), never from a stored per-class rule.
    stored = None if tune_path is not None else scorer.event_rule
    rule, source = choose_rule(scorer.labels.names, stored, saved_rule, **options)
    if source == "checkpoint":
        console.log(stored_rule_note(scorer.source, scorer.event_record))
    with console.counting("scoring", "files") as progress:
        result = evaluate_strong(scorer, strong, audio_dir, label_map=label_map, rule=rule, rule_source=source,
                                 window=windows[0], hop=windows[1], batch_size=batch_size, on_progress=progress)
    for note in result.notes:
        console.log(f"note: {note}")
    if tune_path is not None:
        tuned, reached = result.tune(tune_for)
        write_rule(tune_path, tuned, result.classes, {
            "tuned_for": f"{tune_for}_f1", "tuned_on": str(strong),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "f1": {c: round(v["f1"], 6) for c, v in reached.items()}, "reached": result.f1_of(tuned)})
        console.log(f"wrote {tune_path}: per-class onset thresholds for the best {tune_for} F1 on {strong} (use it "
                    "with --event-rule on other data)")
        if store:
            written = store_event_rule(scorer.source, tune_path)
            console.log(f"stored it in {written}: predict --events and evaluate --strong use it when no event option "
                        "is given")
    for path, write in ((save_scores, result.save_scores), (per_class, result.write_per_class),
                        (plot, result.plot)):
        if path is not None:
            console.log(f"wrote {write(path)}")
    metrics = dict(result.metrics)
    if fmt != "json":
        metrics["event_rule"] = ", ".join(f"{k} {v}" for k, v in metrics["event_rule"].items())
    console.render([metrics], fmt, title=f"sound event detection with {scorer.source}")


@app.command("export")
@user_errors
def export_command(
    model: Annotated[Path, typer.Option(help="Tagger checkpoint or ensemble (.pt) to export.")],
    out: Annotated[Path, typer.Option(help="File to write; an existing one is replaced only if the export passes.")],
    export_format: Annotated[str, typer.Option("--format", help="onnx, torchscript or safetensors.")] = "onnx",
    seconds: Annotated[float | None, typer.Option(help="Export and check length in seconds (default: 10, or the "
                                                  "length the model pads or crops to).")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset, 18 or later (default 18).")] = None,
    separate_frontend: Annotated[bool, typer.Option(
        "--separate-frontend", help="ONNX: the front-end in OUT-stem.frontend.onnx, OUT taking features.")] = False,
    check: Annotated[bool, typer.Option(help="Run the written file against PyTorch; keep it only if every logit "
                                        "is within 1e-4.")] = True,
    result_fmt: Annotated[str, typer.Option("--result-format", help="Result format: table, json or csv.")
                          ] = "table",
    short_input: ShortInputOption = None,
) -> None:
    """Export a checkpoint to ONNX, TorchScript or safetensors, checked against PyTorch before it is kept."""
    from tagger import console
    from tagger.console import OUTPUT_FORMATS
    from tagger.export import DEFAULT_OPSET, export_model

    if result_fmt not in OUTPUT_FORMATS:
        raise TaggerError(f"--result-format {result_fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    report = export_model(model, export_format, out, seconds=seconds, opset=DEFAULT_OPSET if opset is None else opset,
                          check=check, separate_frontend=separate_frontend,
                          input_settings=_inputs(short_input))
    for note in report.notes:
        console.log(f"note: {note}")
    console.render([report.row()], result_fmt, title="export")


@app.command("enhance-labels")
@user_errors
def enhance_labels_command(
    manifest: Annotated[Path, typer.Argument(help="Training manifest to enhance (any format of docs/data.md), or "
                                             "a pack or AudioSet HDF5 file.")],
    teacher: Annotated[Path, typer.Option(help="Teacher: a tagger checkpoint (.pt) trained on these labels, or a "
                                          "predictions .npz from tagger evaluate --save-predictions.")],
    ontology: Annotated[Path | None, typer.Option(help="Class hierarchy: AudioSet's ontology.json or a parent,child "
                                                  "CSV.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Label file mapping the manifest's labels onto the teacher's "
                                                "classes (as tagger evaluate --labels).")] = None,
    threshold: Annotated[str, typer.Option(help="Per-class threshold: mean, median, p25, p10, p5 of the teacher's "
                                           "scores on the class's positives, or a fixed probability.")] = "mean",
    fallback_threshold: Annotated[float | None, typer.Option(help="Threshold for classes without positives "
                                                             "(default: they are never added, as PSLA).")] = None,
    fix: Annotated[str, typer.Option(help="Rules: type1 (parent gets missing child), type2 (class gets missing "
                                     "ancestors), or type1,type2.")] = "type1,type2",
    single_pass: Annotated[bool, typer.Option("--single-pass", help="Apply each rule once to the original labels, "
                                              "exactly as PSLA (default: repeat until nothing changes).")] = False,
    out: Annotated[Path | None, typer.Option(help="Enhanced manifest (.json or .csv; default: MANIFEST-enhanced "
                                             "beside the input).")] = None,
    report: Annotated[Path | None, typer.Option(help="Markdown report (default: OUT-report.md); a per-class CSV "
                                                "of the same stem goes beside it.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write only the report (and the teacher-score "
                                          "cache).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
    store_teacher_logits: Annotated[Path | None, typer.Option(help="Also write the teacher's logits per clip "
                                                              "(.npz) for tagger train --set loss.teacher=...")] = None,
    top_k: Annotated[int | None, typer.Option(help="With --store-teacher-logits: keep each clip's K largest "
                                              "logits only (CED's sparse targets).")] = None,
    clip_seconds: Annotated[float | None, typer.Option(help="Crop/zero-pad clips to this many seconds for the "
                                                       "teacher (default: the whole clip).")] = None,
    batch_size: Annotated[int, typer.Option(help="Clips or windows per teacher forward pass.")] = 8,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    folds: Annotated[str | None, typer.Option(help="ESC-50 folds to read, e.g. 1,2,3.")] = None,
    split: SplitOption = None,
    manifest_format: ManifestFormatOption = "auto",
    audio_dir: AudioDirOption = None,
    fmt: FormatOption = "table",
) -> None:
    """PSLA label enhancement: a teacher and an ontology add missing child (Type I) and parent (Type II) labels."""
    _check_format(fmt)

    from tagger import console
    from tagger.data.clips import open_clips
    from tagger.enhance import run as enhance_run
    from tagger.enhance.report import build_report, render, write_csv, write_markdown
    from tagger.enhance.rules import parse_fixes, parse_threshold
    from tagger.labels import LabelSet, Ontology

    if fallback_threshold is not None and not 0 <= fallback_threshold <= 1:
        raise TaggerError(f"--fallback-threshold {fallback_threshold} must be between 0 and 1")
    settings = enhance_run.EnhanceSettings(parse_threshold(threshold), fallback_threshold, parse_fixes(fix),
                                           single_pass)
    if top_k is not None and store_teacher_logits is None:
        raise TaggerError("--top-k applies to --store-teacher-logits; add that option or drop --top-k")
    paths = enhance_run.default_paths(manifest, out, report)
    writes = [paths["report"], paths["report_csv"]]
    if not dry_run:
        writes += [paths["manifest"], paths["weights"], *([store_teacher_logits] if store_teacher_logits else [])]
    if any(path.resolve() == manifest.resolve() for path in writes):
        raise TaggerError(f"an output would replace the input manifest {manifest}; choose another --out or --report")
    existing = [path for path in writes if path.exists()]
    if existing and not force:
        raise TaggerError(f"{existing[0]} exists; pass --force to overwrite it or choose another --out/--report")
    clips = open_clips(manifest, manifest_format, audio_dir=audio_dir, folds=_parse_folds(folds), split=split)
    data = enhance_run.as_manifest(clips)
    if not dry_run:
        enhance_run.check_out(data, paths["manifest"])
    if ontology is None:
        raise TaggerError(enhance_run.missing_ontology(data))
    if data.missing:
        console.log(f"note: {len(data.missing)} clips of {manifest} have no audio; they are kept unchanged")
    hierarchy = Ontology.load(ontology)
    mapping = LabelSet.from_csv(labels) if labels is not None else None

    try:
        with console.counting("teacher", "files") as progress:
            scores = enhance_run.teacher_scores(
                teacher, clips, mapping=mapping, cache=paths["cache"], clip_seconds=clip_seconds,
                batch_size=batch_size, device=device, precision=precision, on_progress=progress,
                on_note=lambda text: console.log(f"note: {text}"),
                check=enhance_run.check_inputs(data, hierarchy, mapping))
    except KeyboardInterrupt:
        console.log(f"interrupted; the scores so far are in {paths['cache']}: rerun the command to go on")
        raise typer.Exit(130) from None
    for problem in scores.skipped:
        console.log(f"skipped {problem.path}: {problem.message} (its labels are kept unchanged)")
    result = enhance_run.enhance_manifest(data, scores, hierarchy, settings, mapping)
    reused = int(result.scored.sum()) - scores.scored_now
    console.log(f"teacher {teacher}: {scores.scored_now} clips scored now, {reused} from "
                f"{'the predictions file' if teacher.suffix.lower() == '.npz' else paths['cache']}")
    summary = build_report(result)
    write_markdown(summary, paths["report"])
    write_csv(summary, paths["report_csv"])
    render(summary, fmt)
    console.log(f"wrote {paths['report']} and {paths['report_csv']}")
    if dry_run:
        console.log("dry run: no manifest written")
        return
    rows = enhance_run.write_manifest_and_weights(result, paths["manifest"], paths["weights"], audio_dir)
    if enhance_run.is_stored(data):
        console.log(f"wrote {paths['manifest']} (id,labels rows: the labels of the {rows} clips of {manifest}, "
                    f"{len(result.new_labels)} changed; the audio stays in the {data.format}) and {paths['weights']}")
    else:
        console.log(f"wrote {paths['manifest']} ({rows} rows, {len(result.new_labels)} changed) and "
                    f"{paths['weights']}")
    if store_teacher_logits is not None:
        count = enhance_run.store_teacher_logits(result, store_teacher_logits, top_k)
        console.log(f"wrote the teacher's logits of {count} clips to {store_teacher_logits} "
                    f"(tagger train --set loss.teacher={store_teacher_logits})")


@app.command("ensemble")
@user_errors
def ensemble_command(
    checkpoints: Annotated[list[Path], typer.Argument(help="Tagger checkpoints, e.g. runs/a/epoch_*.pt, or saved "
                                                      "predictions (.npz from tagger evaluate).")],
    out: Annotated[Path | None, typer.Option(help="The file to write: an ensemble or averaged checkpoint (.pt), or "
                                             "combined predictions (.npz); default: next to the inputs.")] = None,
    mode: Annotated[str, typer.Option(help="predictions: one file holding the members, outputs combined; "
                                      "weights: average the parameters of one model's checkpoints; auto: weights "
                                      "for checkpoints of one run, else predictions.")] = "auto",
    select: Annotated[str, typer.Option(help="all, epochs>=N, best:K or greedy (the last two need --valid).")
                      ] = "all",
    combine: Annotated[str, typer.Option(help="predictions: auto (the members' convention), mean-prob, "
                                         "mean-logit, or weighted (weights learned on --valid).")] = "auto",
    weights: Annotated[str | None, typer.Option(help="Member weights W1,W2,... in the order given.")] = None,
    valid: Annotated[Path | None, typer.Option(help="Validation manifest, pack or AudioSet HDF5 file: member and "
                                               "ensemble metrics, best:K, greedy, weighted.")] = None,
    valid_folds: Annotated[str | None, typer.Option(help="ESC-50 folds of --valid, e.g. 3.")] = None,
    metric: Annotated[str, typer.Option(help="auto (accuracy for single-label sets, else mAP), mAP, mAUC, "
                                        "accuracy.")] = "auto",
    labels: Annotated[Path | None, typer.Option(help="Label file mapping --valid's labels onto the models' "
                                                "classes.")] = None,
    clip_seconds: Annotated[float | None, typer.Option(help="Crop/zero-pad validation clips to this length.")
                            ] = None,
    bn_recalibrate: Annotated[Path | None, typer.Option(help="weights: re-estimate BatchNorm statistics on this "
                                                        "manifest or pack (e.g. the training set).")] = None,
    bn_folds: Annotated[str | None, typer.Option(help="ESC-50 folds of --bn-recalibrate, e.g. 1,2.")] = None,
    manifest_format: ManifestFormatOption = "auto",
    audio_dir: AudioDirOption = None,
    batch_size: Annotated[int, typer.Option(help="Clips per forward pass.")] = 8,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    fmt: FormatOption = "table",
    report: Annotated[Path | None, typer.Option(help="Also write the report as JSON to this file.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Weight-average checkpoints, or combine any checkpoints (or saved predictions) into one ensemble."""
    _check_format(fmt)
    import time

    from tagger import console
    from tagger.ensemble.run import EnsembleSettings, Hooks, run_ensemble
    from tagger.fileio import atomic_write_text

    settings = EnsembleSettings(
        out=out, mode=mode, select=select, combine=combine, weights=_parse_weights(weights), valid=valid,
        valid_folds=_parse_folds(valid_folds), labels=labels, clip_seconds=clip_seconds, metric=metric,
        bn_recalibrate=bn_recalibrate, bn_folds=_parse_folds(bn_folds), manifest_format=manifest_format,
        audio_dir=audio_dir, batch_size=batch_size, device=device, precision=precision, force=force)
    started = time.perf_counter()
    try:
        with console.progress() as bar:
            tasks: dict[str, tuple[int, float]] = {}  # description -> (bar task, start time)

            def progress(description: str, done: int, total: int) -> None:
                if description not in tasks:
                    tasks[description] = bar.add_task(description, total=total, rate=""), time.perf_counter()
                task, begun = tasks[description]
                rate = f"{done / max(time.perf_counter() - begun, 1e-9):.1f} clips/s"
                bar.update(task, completed=done, total=total, rate=rate)

            result = run_ensemble(checkpoints, settings, Hooks(console.log, progress))
    except KeyboardInterrupt:
        console.log(f"interrupted; {settings.out or 'the output'} was not written")
        raise typer.Exit(130) from None
    if report is not None:
        atomic_write_text(report, result.to_json() + "\n")
    if fmt == "json":
        console.stdout.out(result.to_json(), highlight=False)
    else:
        console.render(result.rows(), fmt, title=result.title())
    console.log(f"wrote {settings.out} ({time.perf_counter() - started:.1f} s)")


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise TaggerError(f"--weights {text!r} must be comma-separated numbers, e.g. 2,1,1") from None


def _parse_folds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TaggerError(f"--folds {text!r} must be comma-separated integers, e.g. 1,2,3") from None


def main() -> None:
    app()
