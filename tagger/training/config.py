"""Training configuration: typed sections with the papers' defaults, TOML recipes and `--set a.b=c` overrides."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from tagger.errors import TaggerError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    arch: str = ""  # a registered model name (`tagger models`); --arch overrides it
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to create_model, e.g. {input_tdim = 512}
    init: str = ""  # "" (random), "imagenet:PATH" or "checkpoint:PATH"


@dataclass
class DataConfig:
    clip_seconds: float = 10.0  # training clips are cropped/padded to this length (random crop)
    eval_clip_seconds: float = 0.0  # validation clip length; 0 = clip_seconds (centre crop)
    batch_size: int = 32
    micro_batches: int = 1  # each batch runs as this many micro-batches, gradients accumulated (the memory check
    # raises it when a whole batch would not fit); batch_size stays the batch the optimizer sees
    eval_batch_size: int = 0  # 0 = batch_size
    num_workers: int = 2
    sampler: str = "shuffle"  # shuffle | balanced
    balance_formula: str = "ast"  # ast: 1000/(n+0.01), with replacement; passt: 1000/(n+100), without
    epoch_length: int = 0  # clips drawn per epoch; 0 = the training set size
    replacement: bool = True  # balanced sampler draws with replacement (AST/PSLA) or without (PaSST)
    prefetch: int = 2  # batches each DataLoader worker loads ahead (the workers live for the whole run)


@dataclass
class AugmentConfig:
    wave_mixup: float = 0.0  # probability that a clip is mixed with a random other clip (AST 0.5, PaSST 0.5)
    wave_mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha): AST 10, PaSST 2
    wave_mixup_max: bool = False  # lambda = max(lambda, 1 - lambda) (PaSST)
    spec_mixup: str = "none"  # none | perm (PaSST/EfficientAT) | pairs (PANNs, halves the batch) | flip (HTS-AT)
    spec_mixup_alpha: float = 0.3  # PaSST/EfficientAT 0.3, PANNs 1.0, HTS-AT 0.5
    freqm: int = 0  # SpecAugment: widest frequency mask, in bins (0 = off)
    timem: int = 0  # SpecAugment: widest time mask, in frames (0 = off)
    freq_masks: int = 1  # masks per clip (PANNs: 2)
    time_masks: int = 1
    roll: int = 0  # random circular time shift of the waveform, at most this many samples either way
    gain_db: int = 0  # random gain of an integer dB in [-gain_db, gain_db - 1] (PaSST 7, EfficientAT 12)


@dataclass
class LossConfig:
    kind: str = "auto"  # auto (bce for multi-label, ce for single-label) | bce | ce
    teacher: str = ""  # .npz with `ids` and `logits` of a teacher: knowledge distillation when set
    teacher_targets: str = ""  # a `tagger teach` folder: distil from its stored draws, replaying their crops
    kd_lambda: float = 0.1  # loss = kd_lambda * label loss + (1 - kd_lambda) * distillation loss; 0 = KD alone (CED)
    kd_temperature: float = 1.0


@dataclass
class StrongConfig:
    """Strong-label (frame-level) training, used when the run has --strong labels."""

    frame_weight: float = 1.0  # loss = clip loss + frame_weight * frame loss (DCASE baselines: 1)
    batch_share: float = 0.0  # share of each batch drawn from the strongly labelled clips; 0 = as the sampler draws
    # (DCASE baselines fix it per batch; 0.5 mixes strong and weak clips half and half)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    accumulate: int = 1  # gradient accumulation steps per optimizer step


@dataclass
class ScheduleConfig:
    kind: str = "constant"  # constant | step | exp-warmup-linear-down | cosine | htsat
    unit: str = "epoch"  # epoch: the factor changes at epoch boundaries; step: it follows fractional epochs
    warmup_steps: int = 0  # AST/PSLA staircase warmup: lr * (step // 50 * 50) / warmup_steps until then
    # step (AST/PSLA MultiStepLR): multiply by decay_factor after epoch decay_start, then every decay_every epochs
    decay_start: int = 0
    decay_every: int = 1
    decay_factor: float = 0.5
    # exp-warmup-linear-down (PaSST/EfficientAT), lengths in epochs
    warmup_len: int = 5
    ramp_down_start: int = 50
    ramp_down_len: int = 50
    last_lr_value: float = 0.01
    # cosine: linear warmup over warmup_epochs, then cosine from 1 to min_lr_ratio at the last epoch
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    # htsat: the official LambdaLR (warmup 0.02/0.05/0.1, then lr_rate by lr_scheduler_epoch, 0.03 after 30)
    lr_rate: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1])
    lr_scheduler_epoch: list[int] = field(default_factory=lambda: [10, 20, 30])


@dataclass
class RunConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU or GPU) | fp16 (autocast + GradScaler, GPU)
    compile: bool = False  # torch.compile the model
    channels_last: str = "auto"  # auto (on for the conv families on CUDA: PANNs, EfficientAT, PSLA) | on | off
    log_every_steps: int = 20  # read the loss back (progress, clips/s, non-finite check) every N optimizer steps
    eval_every_steps: int = 0  # also validate every N optimizer steps; 0 = once per epoch
    save_every_steps: int = 100  # write the resume file every N optimizer steps (and at each epoch end)
    save_every_epoch: bool = False  # also keep epoch_NNN.pt after every epoch, for `tagger ensemble` (WA, cum)
    metric: str = "auto"  # the metric best.pt is chosen by: auto (mAP or accuracy) | mAP | mAUC | accuracy | loss
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (needs the tensorboard package)


@dataclass
class TrainConfig:
    task: str = "auto"  # auto (multiclass when every training clip has exactly one label) | multilabel | multiclass
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    strong: StrongConfig = field(default_factory=StrongConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "task": ("auto", "multilabel", "multiclass"),
    "data.sampler": ("shuffle", "balanced"),
    "data.balance_formula": ("ast", "passt"),
    "augment.spec_mixup": ("none", "perm", "pairs", "flip"),
    "loss.kind": ("auto", "bce", "ce"),
    "optim.name": ("adam", "adamw"),
    "schedule.kind": ("constant", "step", "exp-warmup-linear-down", "cosine", "htsat"),
    "schedule.unit": ("epoch", "step"),
    "run.precision": ("fp32", "bf16", "fp16"),
    "run.channels_last": ("auto", "on", "off"),
    "run.metric": ("auto", "mAP", "mAUC", "accuracy", "loss", "frame_loss"),
}

NON_NEGATIVE = (
    "data.clip_seconds", "data.eval_clip_seconds", "data.num_workers", "data.epoch_length", "data.eval_batch_size",
    "augment.wave_mixup", "augment.freqm", "augment.timem", "augment.freq_masks", "augment.time_masks",
    "augment.roll", "augment.gain_db", "optim.weight_decay", "optim.clip_grad", "schedule.warmup_steps",
    "run.eval_every_steps", "run.patience", "run.seed", "strong.frame_weight", "strong.batch_share",
)
POSITIVE = (
    "data.batch_size", "data.micro_batches", "augment.wave_mixup_alpha", "augment.spec_mixup_alpha", "optim.lr",
    "optim.eps", "optim.accumulate", "run.epochs", "run.save_every_steps", "loss.kd_temperature",
    "data.prefetch", "run.log_every_steps",
)


# ------------------------------------------------------------------------------------------- recipes


def recipe_names() -> list[str]:
    """Recipes shipped in tagger/recipes, by name (file stem)."""
    folder = resources.files("tagger") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's TOML as a dict, from a shipped name (`esc50-ast`) or a file path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise TaggerError(f"recipe file {path} does not exist")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        if name_or_path not in recipe_names():
            raise TaggerError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(recipe_names())}")
        text = (resources.files("tagger") / "recipes" / f"{name_or_path}.toml").read_text(encoding="utf-8")
        source = f"recipe {name_or_path}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TaggerError(f"{source}: not valid TOML ({error})") from None
    data.pop("description", None)
    data.pop("recipe", None)
    return data


def recipe_description(name: str) -> str:
    text = (resources.files("tagger") / "recipes" / f"{name}.toml").read_text(encoding="utf-8")
    return str(tomllib.loads(text).get("description", ""))


# ------------------------------------------------------------------------------- building a config


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as the field's type; strings from --set are parsed (numbers, booleans, JSON lists/tables)."""
    origin = get_origin(hint)
    if hint is bool:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise TaggerError(f"{key}={value!r}: expected true or false")
        if isinstance(value, bool):
            return value
        raise TaggerError(f"{key}={value!r}: expected true or false")
    if hint in (int, float):
        if isinstance(value, bool):
            raise TaggerError(f"{key}={value!r}: expected a number")
        try:
            number = float(value) if hint is float else _as_int(value)
        except (TypeError, ValueError):
            raise TaggerError(f"{key}={value!r}: expected {'an integer' if hint is int else 'a number'}") from None
        return number
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise TaggerError(f"{key}={value!r}: expected text")
        return str(value)
    if origin in (list, dict):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                example = "[0.9, 0.999]" if origin is list else '{"input_tdim": 512}'
                raise TaggerError(f"{key}={value!r}: expected a JSON {origin.__name__}, e.g. {example}") from None
        if not isinstance(value, origin):
            raise TaggerError(f"{key}={value!r}: expected a {origin.__name__}")
        if origin is list:
            (item,) = get_args(hint)
            return [_coerce(v, item, key) for v in value]
        return dict(value)
    return value


def _as_int(value: Any) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def _apply(config: TrainConfig, data: dict[str, Any], source: str) -> None:
    """Set every key of a nested dict on the config, refusing unknown sections and keys."""
    for key, value in data.items():
        _set(config, key, value, source)


def _set(config: TrainConfig, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    target: Any = config
    for depth, part in enumerate(parts):
        names = {f.name for f in fields(target)}
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            raise TaggerError(f"{source}: unknown setting {dotted!r} (no {part!r} in {where}; valid: "
                              f"{', '.join(sorted(names))})")
        hint = get_type_hints(type(target))[part]
        current = getattr(target, part)
        if dataclasses.is_dataclass(current):
            if depth == len(parts) - 1:
                if not isinstance(value, dict):
                    raise TaggerError(f"{source}: {dotted} is a section; set its keys, e.g. {dotted}.<key>=...")
                for key, item in value.items():
                    _set(config, f"{dotted}.{key}", item, source)
                return
            target = current
            continue
        if depth != len(parts) - 1:
            if isinstance(current, dict):  # model.kwargs.input_tdim=512
                current[".".join(parts[depth + 1:])] = _parse_scalar(value)
                return
            raise TaggerError(f"{source}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        setattr(target, part, _coerce(value, hint, f"{source}: {dotted}"))
        return


def _parse_scalar(value: Any) -> Any:
    """A --set value for a free-form table (model.kwargs): JSON when it parses, else the text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TaggerError(f"--set {item!r}: write it as section.key=value, e.g. optim.lr=1e-4")
        pairs.append((key.strip(), value.strip()))
    return pairs


def validate(config: TrainConfig) -> TrainConfig:
    """Check choices and ranges, naming the setting; returns the config for chaining."""
    def get(dotted: str) -> Any:
        value: Any = config
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    for key, choices in CHOICES.items():
        if get(key) not in choices:
            raise TaggerError(f"{key}={get(key)!r} must be one of {', '.join(choices)}")
    for key in NON_NEGATIVE:
        if get(key) < 0:
            raise TaggerError(f"{key}={get(key)} must be >= 0")
    for key in POSITIVE:
        if get(key) <= 0:
            raise TaggerError(f"{key}={get(key)} must be > 0")
    if not 0 <= config.augment.wave_mixup <= 1:
        raise TaggerError(f"augment.wave_mixup={config.augment.wave_mixup} is a probability in [0, 1]")
    if not 0 <= config.loss.kd_lambda <= 1:
        raise TaggerError(f"loss.kd_lambda={config.loss.kd_lambda} must be in [0, 1]")
    if config.loss.teacher and config.loss.teacher_targets:
        raise TaggerError("loss.teacher (one teacher row per clip) and loss.teacher_targets (per stored draw) are two "
                          "ways to distil; set one of them")
    if len(config.optim.betas) != 2 or not all(0 <= b < 1 for b in config.optim.betas):
        raise TaggerError(f"optim.betas={config.optim.betas} must be two numbers in [0, 1)")
    if not 0 <= config.strong.batch_share < 1:
        raise TaggerError(f"strong.batch_share={config.strong.batch_share} is a share of each batch in [0, 1); "
                          "0 draws clips as the sampler does")
    if config.data.clip_seconds <= 0:
        raise TaggerError(f"data.clip_seconds={config.data.clip_seconds} must be > 0")
    if config.data.batch_size % config.data.micro_batches:
        raise TaggerError(f"data.micro_batches={config.data.micro_batches} must divide data.batch_size "
                          f"{config.data.batch_size}")
    if config.augment.spec_mixup == "pairs" and (config.data.batch_size // config.data.micro_batches) % 2:
        raise TaggerError(f"augment.spec_mixup=pairs mixes clips two by two; each (micro-)batch of "
                          f"{config.data.batch_size // config.data.micro_batches} clips must be even")
    return config


def build_config(recipe: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                 arch: str | None = None) -> TrainConfig:
    """Defaults, then the recipe, then `--arch`, then each `--set key=value` in order."""
    config = TrainConfig()
    if recipe:
        _apply(config, read_recipe(recipe), f"recipe {recipe}")
    if arch:
        config.model.arch = arch
    for key, value in parse_overrides(list(overrides)):
        _set(config, key, value, f"--set {key}")
    if not config.model.arch:
        raise TaggerError("no model chosen: pass --arch NAME (see `tagger models`) or a recipe that sets model.arch")
    from tagger.models import resolve_arch

    config.model.arch = resolve_arch(config.model.arch)  # `ast` -> `ast-base384`: the run records the full name
    return validate(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """The config saved in a run folder or checkpoint, back as a TrainConfig."""
    config = TrainConfig()
    _apply(config, data, "saved config")
    return validate(config)


# ------------------------------------------------------------------------------------------ TOML out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def to_toml(config: TrainConfig) -> str:
    """The resolved config as TOML that `--recipe FILE` reads back to the same config."""
    data = config.to_dict()
    lines = [f"task = {_toml_value(data.pop('task'))}"]
    for section, values in data.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"
