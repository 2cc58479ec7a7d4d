"""The official released checkpoints `tagger pull` knows, and the cache folder they are converted into."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tagger.errors import TaggerError
from tagger.fileio import atomic_write_text

# Nothing here imports torch or the model registry at import time (only find_release's alias path loads the
# registry): the runtime reads the default model through this module, and `tagger pull --list` reads the table.

HOME_ENV = "TAGGER_HOME"


@dataclass(frozen=True)
class LabelFile:
    """A class list a release needs to name its outputs, fetched beside it (never shipped: its licence is
    not ours) and checked by shape, because no checksum is published for it."""

    key: str
    url: str
    filename: str
    rows: int
    header: tuple[str, ...]
    licence: str


AUDIOSET_LABELS = LabelFile(
    key="audioset",
    # The location panns_inference (config.py) downloads it from.
    url="http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv",
    filename="class_labels_indices.csv",
    rows=527,
    header=("index", "mid", "display_name"),
    licence="CC BY 4.0 (AudioSet, Google)",
)


@dataclass(frozen=True)
class Release:
    """One official checkpoint file: where it lives, how to check it, and how tagger imports it."""

    name: str  # what `tagger pull NAME` takes; the architecture's name for its main release
    arch: str  # tagger's registered architecture (passed to the importer as --arch)
    family: str  # the importer: tagger.models.importer(family)
    filename: str  # the official file name
    url: str | None  # a plain-HTTP location; None when the authors publish a folder a program cannot fetch
    mAP: float | None  # AudioSet eval mAP the authors report for this file
    licence: str
    paper: str
    home: str  # the official repository, which names the file
    size: int | None = None  # bytes, when known
    sha256: str | None = None  # when known; otherwise pull computes and records it
    manual: str | None = None  # what to do by hand when url is None
    labels: LabelFile = AUDIOSET_LABELS
    note: str = ""


_PANNS = dict(
    family="panns",
    licence="MIT",
    paper="Kong et al., PANNs, IEEE/ACM TASLP 2020",
    home="https://github.com/qiuqiangkong/audioset_tagging_cnn",
)
_EFFICIENTAT = dict(
    family="efficientat",
    licence="MIT",
    paper="Schmid, Koutini, Widmer, Efficient Large-Scale Audio Tagging via Transformer-to-CNN Knowledge "
          "Distillation, ICASSP 2023",
    home="https://github.com/fschmid56/EfficientAT",
)
_AST = dict(
    family="ast",
    arch="ast-base384",
    licence="BSD-3-Clause",
    paper="Gong, Chung, Glass, AST: Audio Spectrogram Transformer, Interspeech 2021",
    home="https://github.com/YuanGongND/ast",
)
_PASST = dict(
    family="passt",
    licence="Apache-2.0",
    paper="Koutini et al., Efficient Training of Audio Transformers with Patchout, Interspeech 2022",
    home="https://github.com/kkoutini/PaSST",
)
_HTSAT = dict(
    family="htsat",
    arch="htsat-tiny",
    licence="MIT",
    paper="Chen et al., HTS-AT: A Hierarchical Token-Semantic Audio Transformer, ICASSP 2022",
    home="https://github.com/RetroCirce/HTS-Audio-Transformer",
)
_PSLA = dict(
    family="psla",
    arch="psla-effnet-b2-att4",
    licence="BSD-3-Clause",
    paper="Gong, Chung, Glass, PSLA: Improving Audio Tagging with Pretraining, Sampling, Labeling, and "
          "Aggregation, IEEE/ACM TASLP 2021",
    home="https://github.com/YuanGongND/psla",
)

_ZENODO = "https://zenodo.org/record/3987831/files/"
_EFFICIENTAT_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
_PASST_URL = "https://github.com/kkoutini/PaSST/releases/download/"
_HTSAT_FOLDER = "https://drive.google.com/drive/folders/1f5VYMk0uos_YnuBshgmaTVioXbs7Kmz6"


def _panns(name: str, arch: str, filename: str, mAP: float, note: str = "") -> Release:
    # Zenodo names the files with '=' (URL-escaped as %3D), as the official README's wget lines do.
    url = _ZENODO + filename.replace("=", "%3D") + "?download=1"
    return Release(name=name, arch=arch, filename=filename, url=url, mAP=mAP, note=note, **_PANNS)


def _efficientat(name: str, arch: str, filename: str, mAP: float, **extra) -> Release:
    return Release(name=name, arch=arch, filename=filename, url=_EFFICIENTAT_URL + filename, mAP=mAP,
                   **_EFFICIENTAT, **extra)


def _ast(name: str, filename: str, dropbox: str, mAP: float, note: str) -> Release:
    url = f"https://www.dropbox.com/s/{dropbox}/{filename}?dl=1"
    return Release(name=name, filename=filename, url=url, mAP=mAP, note=note, **_AST)


def _passt(name: str, arch: str, tag: str, filename: str, mAP: float, note: str = "") -> Release:
    return Release(name=name, arch=arch, filename=filename, url=f"{_PASST_URL}{tag}/{filename}", mAP=mAP,
                   note=note, **_PASST)


def _htsat(name: str, filename: str, mAP: float | None, note: str) -> Release:
    manual = (f"the HTS-AT authors publish {filename} only in a Google Drive folder, which a program cannot "
              f"download: open {_HTSAT_FOLDER} in a browser, download {filename}, then run "
              f"`tagger pull {name} --from PATH/{filename}`")
    return Release(name=name, filename=filename, url=None, mAP=mAP, manual=manual, note=note, **_HTSAT)


def _psla(name: str, filename: str, dropbox: str, mAP: float, note: str) -> Release:
    url = f"https://www.dropbox.com/s/{dropbox}/{filename}?dl=1"
    return Release(name=name, filename=filename, url=url, mAP=mAP, note=note, **_PSLA)


# The main release of each architecture is named as the architecture; further files of the same architecture
# carry a suffix. Facts come from the official code and READMEs (see docs/pull.md for which file said what).
RELEASES: tuple[Release, ...] = (
    # PANNs: Zenodo record 3987831. Cnn14, Cnn14_16k, Cnn14_8k and Cnn14_DecisionLevelMax are named in the
    # official README / panns_inference; the others are on the same record under the names downstream code uses.
    _panns("panns-cnn14", "panns-cnn14", "Cnn14_mAP=0.431.pth", 0.431),
    _panns("panns-cnn14-16k", "panns-cnn14-16k", "Cnn14_16k_mAP=0.438.pth", 0.438,
           "16 kHz; trained by a later code version than the paper's"),
    _panns("panns-cnn14-8k", "panns-cnn14-8k", "Cnn14_8k_mAP=0.416.pth", 0.416, "8 kHz"),
    _panns("panns-cnn14-decisionlevel-max", "panns-cnn14-decisionlevel-max", "Cnn14_DecisionLevelMax_mAP=0.385.pth",
           0.385, "frame-level output (sound event detection)"),
    _panns("panns-cnn6", "panns-cnn6", "Cnn6_mAP=0.343.pth", 0.343),
    _panns("panns-cnn10", "panns-cnn10", "Cnn10_mAP=0.380.pth", 0.380),
    _panns("panns-resnet22", "panns-resnet22", "ResNet22_mAP=0.430.pth", 0.430),
    _panns("panns-resnet38", "panns-resnet38", "ResNet38_mAP=0.434.pth", 0.434),
    _panns("panns-resnet54", "panns-resnet54", "ResNet54_mAP=0.429.pth", 0.429),
    _panns("panns-mobilenetv1", "panns-mobilenetv1", "MobileNetV1_mAP=0.389.pth", 0.389),
    _panns("panns-mobilenetv2", "panns-mobilenetv2", "MobileNetV2_mAP=0.383.pth", 0.383),
    _panns("panns-res1dnet31", "panns-res1dnet31", "Res1dNet31_mAP=0.365.pth", 0.365, "waveform input"),
    _panns("panns-wavegram-cnn14", "panns-wavegram-cnn14", "Wavegram_Cnn14_mAP=0.389.pth", 0.389),
    _panns("panns-wavegram-logmel-cnn14", "panns-wavegram-logmel-cnn14", "Wavegram_Logmel_Cnn14_mAP=0.439.pth",
           0.439, "the paper's best PANN"),
    # EfficientAT: GitHub release v0.0.1, the `pretrained_models` table of models/mn/model.py.
    _efficientat("efficientat-mn01", "efficientat-mn01", "mn01_as_mAP_298.pt", 0.298),
    _efficientat("efficientat-mn02", "efficientat-mn02", "mn02_as_mAP_378.pt", 0.378),
    _efficientat("efficientat-mn04", "efficientat-mn04", "mn04_as_mAP_432.pt", 0.432, size=4066513,
                 sha256="899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"),
    _efficientat("efficientat-mn05", "efficientat-mn05", "mn05_as_mAP_443.pt", 0.443),
    _efficientat("efficientat-mn10", "efficientat-mn10", "mn10_as_mAP_471.pt", 0.471),
    _efficientat("efficientat-mn20", "efficientat-mn20", "mn20_as_mAP_478.pt", 0.478),
    _efficientat("efficientat-mn30", "efficientat-mn30", "mn30_as_mAP_482.pt", 0.482),
    _efficientat("efficientat-mn40", "efficientat-mn40", "mn40_as_mAP_484.pt", 0.484),
    _efficientat("efficientat-mn40-ext", "efficientat-mn40", "mn40_as_ext_mAP_487.pt", 0.487,
                 note="trained longer (300 epochs)"),
    _efficientat("efficientat-mn40-no-im-pre", "efficientat-mn40", "mn40_as_no_im_pre_mAP_483.pt", 0.483,
                 note="trained without ImageNet pre-training"),
    _efficientat("efficientat-mn10-fc", "efficientat-mn10", "mn10_as_fc_mAP_465.pt", 0.465,
                 note="fully-convolutional head"),
    # AST: Dropbox links of the official README (the first is also the audioset_pretrain weights).
    _ast("ast-base384", "audioset_10_10_0.4593.pth", "ca0b1v2nlxzyeb4", 0.459, "stride 10, weight-averaged"),
    _ast("ast-base384-s10-4495", "audioset_10_10_0.4495.pth", "1tv0hovue1bxupk", 0.450, "stride 10, model 1"),
    _ast("ast-base384-s10-4483", "audioset_10_10_0.4483.pth", "6u5sikl4b9wo4u5", 0.448, "stride 10, model 2"),
    _ast("ast-base384-s10-4475", "audioset_10_10_0.4475.pth", "kt6i0v9fvfm1mbq", 0.448, "stride 10, model 3"),
    _ast("ast-base384-s12", "audioset_12_12_0.4467.pth", "snfhx3tizr4nuc8", 0.447, "stride 12"),
    _ast("ast-base384-s14", "audioset_14_14_0.4431.pth", "z18s6pemtnxm4k7", 0.443, "stride 14"),
    _ast("ast-base384-s16", "audioset_16_16_0.4422.pth", "mdsa4t1xmcimia6", 0.442, "stride 16"),
    # PaSST: GitHub releases, the URLs of default_cfgs in models/passt.py.
    _passt("passt-s-p16-s10", "passt-s-p16-s10", "v0.0.1-audioset", "passt-s-f128-p16-s10-ap.476-swa.pt", 0.476,
           "weight-averaged (SWA)"),
    _passt("passt-s-p16-s10-ap4761", "passt-s-p16-s10", "v0.0.2-audioset", "passt-s-f128-p16-s10-ap.4761-swa.pt",
           0.4761, "weight-averaged (SWA)"),
    _passt("passt-s-p16-s10-ap472", "passt-s-p16-s10", "v0.0.2-audioset", "passt-s-f128-p16-s10-ap.472.pt", 0.472),
    _passt("passt-s-p16-s10-kd", "passt-s-p16-s10", "v.0.0.9", "passt-s-kd-ap.486.pt", 0.486,
           "trained with knowledge distillation"),
    _passt("passt-s-p16-s12", "passt-s-p16-s12", "v0.0.2-audioset", "passt-s-f128-p16-s12-ap.473-swa.pt", 0.473,
           "weight-averaged (SWA)"),
    _passt("passt-s-p16-s12-ap470", "passt-s-p16-s12", "v0.0.2-audioset", "passt-s-f128-p16-s12-ap.470.pt", 0.470),
    _passt("passt-s-p16-s14", "passt-s-p16-s14", "v0.0.2-audioset", "passt-s-f128-p16-s14-ap.471-swa.pt", 0.471,
           "weight-averaged (SWA)"),
    _passt("passt-s-p16-s14-ap469", "passt-s-p16-s14", "v0.0.2-audioset", "passt-s-f128-p16-s14-ap.469.pt", 0.469),
    _passt("passt-s-p16-s16", "passt-s-p16-s16", "v0.0.2-audioset", "passt-s-f128-p16-s16-ap.473-swa.pt", 0.473,
           "weight-averaged (SWA)"),
    _passt("passt-s-p16-s16-ap468", "passt-s-p16-s16", "v0.0.2-audioset", "passt-s-f128-p16-s16-ap.468.pt", 0.468),
    _passt("passt-s-p16-s10-20s", "passt-s-p16-s10-20s", "v0.0.5", "passt-s-f128-20sec-p16-s10-ap.474-swa.pt",
           0.474, "20 s input"),
    _passt("passt-s-p16-s10-30s", "passt-s-p16-s10-30s", "v0.0.5", "passt-s-f128-30sec-p16-s10-ap.473-swa.pt",
           0.473, "30 s input"),
    # HTS-AT: a Google Drive folder only (README); mAP is the paper's single-model figure.
    _htsat("htsat-tiny", "HTSAT_AudioSet_Saved_1.ckpt", 0.471, "the paper reports 0.471 for its single model"),
    # PSLA: Dropbox links of the official README's "Pretrained Models" table.
    _psla("psla-effnet-b2-att4", "as_mdl_0_wa.pth", "ieggie0ara4x26d", 0.444, "weight-averaged"),
    _psla("psla-effnet-b2-att4-single", "as_mdl_0.pth", "d1z27wj30ew5qrs", 0.440, "single model"),
)


# --------------------------------------------------------------------------------------------- look-ups


def releases(table: Sequence[Release] | None = None) -> tuple[Release, ...]:
    return tuple(RELEASES if table is None else table)


def find_release(name: str, table: Sequence[Release] | None = None) -> Release:
    """The release `name` stands for: its exact name, a name without its family prefix (`cnn14`, `mn10`), or
    anything tagger's registry resolves to an architecture (`ast`, `efficientat`) whose main release it is."""
    known = {release.name: release for release in releases(table)}
    key = name.strip().lower()
    if key in known:
        return known[key]
    short = [release for release in known.values() if release.name == f"{release.family}-{key}"]
    if len(short) == 1:
        return short[0]
    arch = _resolve_arch(key)
    if arch is not None:
        if arch in known:
            return known[arch]
        same = [release.name for release in known.values() if release.arch == arch]
        if same:
            return known[same[0]]
        raise TaggerError(f"{name!r} is the architecture {arch}, which has no released AudioSet checkpoint; "
                          "see `tagger pull --list`")
    # Short names count as spellings too, so `mn11` is close to efficientat-mn10 and efficientat-mn01.
    spellings = {release.name: release.name for release in known.values()}
    spellings.update({release.name.removeprefix(f"{release.family}-"): release.name for release in known.values()})
    close = dict.fromkeys(spellings[s] for s in difflib.get_close_matches(key, list(spellings), n=5, cutoff=0.6))
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise TaggerError(f"no release named {name!r}; {hint}see `tagger pull --list` for all of them")


def _resolve_arch(name: str) -> str | None:
    """The registry's reading of a family or short name, or None; the registry (and torch) load only here."""
    from tagger import models

    resolve = getattr(models, "resolve_arch", None)
    if resolve is None:
        return None
    try:
        return resolve(name)
    except TaggerError:
        return None


# --------------------------------------------------------------------------------------------- the cache


def tagger_home() -> Path:
    """$TAGGER_HOME, else $XDG_CACHE_HOME/tagger, else ~/.cache/tagger."""
    named = os.environ.get(HOME_ENV)
    if named:
        return Path(named).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "tagger"


def downloads_dir() -> Path:
    """Official files as published; `FILE.part` while a download is under way (kept for resuming)."""
    return tagger_home() / "downloads"


def models_dir() -> Path:
    return tagger_home() / "models"


def labels_path(labels: LabelFile = AUDIOSET_LABELS) -> Path:
    return tagger_home() / "labels" / f"{labels.key}_{labels.filename}"


def pulled_path(name: str) -> Path:
    """Where the converted checkpoint of release `name` is (or would be)."""
    return models_dir() / f"{name}.pt"


def _marker() -> Path:
    return tagger_home() / "default"


def default_name() -> str | None:
    """The release name the default marker holds, whether or not its checkpoint is still there."""
    try:
        name = _marker().read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise TaggerError(f"cannot read {_marker()}: {error.strerror}") from None
    return name or None


def default_model() -> Path | None:
    """The pulled default checkpoint, or None when none is set or its file is gone."""
    name = default_name()
    if name is None:
        return None
    path = pulled_path(name)
    return path if path.is_file() else None


def set_default(name: str) -> Path:
    """Make the pulled release `name` the model commands use without --model."""
    path = pulled_path(name)
    if not path.is_file():
        raise TaggerError(f"{name} is not pulled ({path} is missing); run `tagger pull {name}` first")
    atomic_write_text(_marker(), name + "\n")
    return path
