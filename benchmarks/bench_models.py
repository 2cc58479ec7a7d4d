"""Forward time of tagger models next to the official implementations, timed in the same run.

The official code is not part of tagger: pass the folders of your own checkouts (and make their
dependencies importable, e.g. torchlibrosa and efficientnet_pytorch on PYTHONPATH). Without them the
script times tagger alone and prints the reference timings recorded with the parity fixtures (other
run, same machine type), marked as such.

    python benchmarks/bench_models.py --panns ~/src/audioset_tagging_cnn --efficientat ~/src/EfficientAT \
        --psla ~/src/psla --batches 1 8 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagger.models import create_model  # noqa: E402
from tagger.models.inference import FastInference  # noqa: E402

# Official forward times (s) from ../shared/parity/README.md, 2026-11-21, 2-vCPU AMD EPYC, torch 2.14.1.
RECORDED = {
    "panns-cnn14": (0.369, 2.450), "panns-cnn10": (0.174, 1.846), "panns-cnn6": (0.126, 1.025),
    "panns-resnet22": (0.310, 1.911), "panns-resnet38": (0.388, 2.438), "panns-mobilenetv1": (0.041, 0.400),
    "panns-mobilenetv2": (0.042, 0.573), "panns-leenet24": (0.272, 3.195), "panns-dainet19": (0.216, 3.387),
    "panns-res1dnet31": (0.240, 2.935), "panns-wavegram-cnn14": (0.352, 2.996),
    "panns-wavegram-logmel-cnn14": (0.544, 3.744), "panns-cnn14-16k": (0.349, 2.180),
    "panns-cnn14-decisionlevel-max": (0.363, 2.295), "panns-cnn14-decisionlevel-att": (0.357, 2.293),
    "psla-effnet-b2-att4": (0.087, 1.679), "psla-effnet-b2-att1": (0.102, 1.522),
    "psla-effnet-b2-mean": (0.100, 1.545), "efficientat-mn10": (0.029, 0.407), "efficientat-mn04": (0.020, 0.201),
    "ast-base384": (2.396, 22.415), "passt-s-p16-s10": (2.523, 21.672), "htsat-tiny": (0.117, 1.040),
}

PANNS_CLASSES = {
    "panns-cnn14": "Cnn14", "panns-cnn10": "Cnn10", "panns-cnn6": "Cnn6", "panns-resnet22": "ResNet22",
    "panns-resnet38": "ResNet38", "panns-mobilenetv1": "MobileNetV1", "panns-mobilenetv2": "MobileNetV2",
    "panns-leenet24": "LeeNet24", "panns-dainet19": "DaiNet19", "panns-res1dnet31": "Res1dNet31",
    "panns-wavegram-cnn14": "Wavegram_Cnn14", "panns-wavegram-logmel-cnn14": "Wavegram_Logmel_Cnn14",
    "panns-cnn14-16k": "Cnn14_16k", "panns-cnn14-decisionlevel-max": "Cnn14_DecisionLevelMax",
    "panns-cnn14-decisionlevel-att": "Cnn14_DecisionLevelAtt",
}
PSLA_HEADS = {"psla-effnet-b2-att4": 4, "psla-effnet-b2-att1": 1, "psla-effnet-b2-mean": 0}
EFFICIENTAT_WIDTH = {"efficientat-mn10": 1.0, "efficientat-mn04": 0.4}


@dataclass
class Case:
    name: str
    ours: Callable[[torch.Tensor], object]
    fast: Callable[[torch.Tensor], object]
    official: Callable[[torch.Tensor], object] | None
    make_input: Callable[[int], torch.Tensor]


def median_times(fns: list[Callable], x: torch.Tensor, repeats: int) -> list[float]:
    """Median seconds per call of each function on x; the functions take turns so load drift hits all alike."""
    for fn in fns:
        fn(x)  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn(x)
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def _wave(sample_rate: int, seconds: float = 10.0) -> Callable[[int], torch.Tensor]:
    return lambda batch: torch.randn(batch, int(sample_rate * seconds)) * 0.1


def panns_case(name: str, repo: Path | None) -> Case:
    ours = create_model(name).eval()
    official = None
    if repo is not None:
        sys.path.insert(0, str(repo / "pytorch"))
        import models as panns_models  # the user's checkout of audioset_tagging_cnn

        rate, win, hop, fmax = (16000, 512, 160, 8000) if name.endswith("16k") else (32000, 1024, 320, 14000)
        net = getattr(panns_models, PANNS_CLASSES[name])(
            sample_rate=rate, window_size=win, hop_size=hop, mel_bins=64, fmin=50, fmax=fmax, classes_num=527
        ).eval()
        official = net
    return Case(name, ours, FastInference(ours), official, _wave(ours.sample_rate))


def psla_case(name: str, repo: Path | None) -> Case:
    """Both sides timed on the normalised fbank (as the official timing was), not on the waveform."""
    ours = create_model(name).eval()
    official = None
    if repo is not None:
        sys.path.insert(0, str(repo))
        from src.models.Models import EffNetAttention  # the user's checkout of psla

        net = EffNetAttention(label_dim=527, b=2, pretrain=False, head_num=PSLA_HEADS[name]).eval()
        official = net
    fast = FastInference(ours)
    return Case(
        name,
        lambda x: ours.forward_features(x.transpose(1, 2)),
        lambda x: fast.forward_features(x.transpose(1, 2)),
        official,
        lambda batch: torch.randn(batch, 1056, 128),
    )


def efficientat_case(name: str, repo: Path | None) -> Case:
    ours = create_model(name).eval()
    official = None
    if repo is not None:
        sys.path.insert(0, str(repo))
        sys.modules.pop("models", None)  # PANNs' models.py (a module) would shadow EfficientAT's models/ package
        with contextlib.chdir(repo):  # its helpers read metadata/ relative to the checkout at import time
            from models.mn.model import get_model  # the user's checkout of EfficientAT
            from models.preprocess import AugmentMelSTFT

        net = get_model(num_classes=527, pretrained_name=None, width_mult=EFFICIENTAT_WIDTH[name]).eval()
        mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320).eval()
        official = lambda wave: net(mel(wave).unsqueeze(1))  # noqa: E731
    return Case(name, ours, FastInference(ours), official, _wave(32000))


def htsat_official(repo: Path) -> Callable[[torch.Tensor], object]:
    """The official HTSAT_Swin_Transformer with the AudioSet config.py of the checkout."""
    import types

    sys.path.insert(0, str(repo))
    helpers = types.ModuleType("utils")  # the repo's utils.py imports h5py, museval, ...; the model needs two helpers
    helpers.do_mixup = lambda x, lam: x
    helpers.interpolate = lambda x, ratio: x.repeat_interleave(ratio, dim=1)
    sys.modules["utils"] = helpers
    import config  # the user's checkout of HTS-Audio-Transformer
    from model.htsat import HTSAT_Swin_Transformer

    net = HTSAT_Swin_Transformer(
        spec_size=config.htsat_spec_size, patch_size=config.htsat_patch_size, in_chans=1,
        num_classes=config.classes_num, window_size=config.htsat_window_size, config=config,
        depths=config.htsat_depth, embed_dim=config.htsat_dim, patch_stride=config.htsat_stride,
        num_heads=config.htsat_num_head,
    ).eval()
    return lambda wave: net(wave, None, infer_mode=False)


def stub_ba3l() -> None:
    """The sacred/ba3l framework only registers configs in the PaSST files we import; an inert Ingredient suffices."""
    import types

    class Ingredient:
        def __init__(self, *args, **kwargs):
            pass

        def add_config(self, *args, **kwargs):
            pass

        def command(self, function=None, **kwargs):
            return function if function else (lambda f: f)

    for name in ("ba3l", "ba3l.ingredients", "ba3l.ingredients.ingredient"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["ba3l.ingredients.ingredient"].Ingredient = Ingredient


def passt_official(repo: Path) -> Callable[[torch.Tensor], object]:
    """The official PaSST net + AugmentMelSTFT of the AudioSet experiment (ex_audioset.py settings)."""
    stub_ba3l()
    sys.path.insert(0, str(repo))
    sys.modules.pop("models", None)
    from models.passt import get_model  # the user's checkout of kkoutini/PaSST
    from models.preprocess import AugmentMelSTFT

    net = get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False, n_classes=527, in_channels=1, fstride=10,
                    tstride=10, input_fdim=128, input_tdim=998, u_patchout=0, s_patchout_t=40, s_patchout_f=4).eval()
    mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                         htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000).eval()
    return lambda wave: net(mel(wave).unsqueeze(1))


def transformer_case(name: str, repo: Path | None) -> Case:
    """AST is timed on its normalised fbank (as the recorded official timing); PaSST and HTS-AT on the wave."""
    ours = create_model(name).eval()
    fast = FastInference(ours)
    if name.startswith("ast"):
        fbank = lambda batch: torch.randn(batch, 128, 1024)  # noqa: E731
        return Case(name, ours.forward_features, fast.forward_features, None, fbank)
    official = None
    if repo is not None:
        official = htsat_official(repo) if name.startswith("htsat") else passt_official(repo)
    return Case(name, ours, fast, official, _wave(ours.sample_rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(RECORDED))
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--panns", type=Path, help="checkout of qiuqiangkong/audioset_tagging_cnn")
    parser.add_argument("--psla", type=Path, help="checkout of YuanGongND/psla")
    parser.add_argument("--efficientat", type=Path, help="checkout of fschmid56/EfficientAT")
    parser.add_argument("--htsat", type=Path, help="checkout of RetroCirce/HTS-Audio-Transformer")
    parser.add_argument("--passt", type=Path, help="checkout of kkoutini/PaSST")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, eval + inference_mode, median of {args.repeats}")
    print("| model | batch | tagger eager s | tagger fast s | official s | official / fast | official / eager "
          "| official s (recorded) | recorded / fast |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        family = name.split("-")[0]
        builders = {"panns": panns_case, "psla": psla_case, "efficientat": efficientat_case}
        build = builders.get(family, transformer_case)
        case = build(name, getattr(args, family, None))
        for i, batch in enumerate(args.batches):
            x = case.make_input(batch)
            fns = [case.ours, case.fast] + ([case.official] if case.official else [])
            with torch.inference_mode():
                ours, fast, *rest = median_times(fns, x, args.repeats)
            theirs = rest[0] if rest else None
            recorded = RECORDED.get(name, (None, None))[min(i, 1)] if batch in (1, 8) else None
            same = f"{theirs:.3f} | {theirs / fast:.2f}× | {theirs / ours:.2f}×" if theirs else "– | – | –"
            rec = f"{recorded:.3f} | {recorded / fast:.2f}×" if recorded else "– | –"
            print(f"| {name} | {batch} | {ours:.3f} | {fast:.3f} | {same} | {rec} |", flush=True)


if __name__ == "__main__":
    main()
