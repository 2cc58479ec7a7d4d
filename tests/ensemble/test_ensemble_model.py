"""Prediction ensembles as models: members at several rates, label mapping, windows, frames, the file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tone, write_wav

from tagger import audio
from tagger.checkpoint import load_checkpoint, read_torch_file, save_checkpoint
from tagger.ensemble.store import column_map, save_ensemble
from tagger.errors import TaggerError
from tagger.inference.events import EventRule
from tagger.inference.predict import PredictOptions, predict_files
from tagger.inference.runtime import Scorer
from tagger.labels import LabelSet
from tagger.models import create_model

LABELS = LabelSet(["a", "b", "c"])
PERMUTED = LabelSet(["c", "a", "b"])  # the second member lists the classes in another order


def _save(path: Path, arch: str, labels: LabelSet, seed: int, spread: float = 0.0, **kwargs) -> Path:
    """A random model; `spread` widens the classifier of an untrained CNN, whose logits are otherwise ~1e-6."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=len(labels), **kwargs)
    if spread:
        with torch.no_grad():
            for parameter in model.classifier.parameters():
                if parameter.ndim == 2:
                    parameter.normal_(0, spread)
    return save_checkpoint(path, model, labels)


def _ensemble(path: Path, members: list[Path], weights: list[float], combine: str = "mean-prob",
              labels: LabelSet = LABELS, task: str = "multilabel") -> Path:
    return save_ensemble(path, [read_torch_file(m) for m in members], [m.name for m in members], combine, weights,
                         labels, task)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ensemble-model")
    return {
        "mn_a": _save(folder / "mn_a.pt", "efficientat-mn01", LABELS, 0, spread=50.0),
        "mn_b": _save(folder / "mn_b.pt", "efficientat-mn01", PERMUTED, 1, spread=50.0),
        "ast": _save(folder / "ast.pt", "ast-tiny224", LABELS, 2, input_tdim=100),
        "clip": write_wav(folder / "clip.wav", tone(0.9, 22050, 600.0, seed=1), 22050),  # within every window
        "long": write_wav(folder / "long.wav", tone(3.2, 44100, 300.0, seed=2), 44100),
        "folder": folder,
    }


def _predict(model: Path, wav: Path, options: PredictOptions = PredictOptions()):
    """The FileResult of one file, scored by `predict_files` with the checkpoint or ensemble at `model`."""
    return next(predict_files(Scorer.load(model, device="cpu"), [wav], options))


def test_members_at_two_rates_give_exactly_the_weighted_mean_of_their_own_predictions(files):
    ensemble = _ensemble(files["folder"] / "two-rates.pt", [files["mn_a"], files["ast"]], [0.7, 0.3])
    tagger = Scorer.load(ensemble, device="cpu")
    assert tagger.rates == (32000, 16000) and tagger.sample_rate == 32000 and not tagger.frame_level
    wave = tagger.read(files["clip"])  # decoded once, resampled to each rate exactly as each member alone reads it
    assert all(np.array_equal(w, audio.load(files["clip"], r)) for w, r in zip(wave, tagger.rates, strict=True))
    got = _predict(ensemble, files["clip"])
    alone = [_predict(files[name], files["clip"]).probabilities for name in ("mn_a", "ast")]
    np.testing.assert_allclose(got.probabilities, 0.7 * alone[0] + 0.3 * alone[1], atol=1e-6)
    sizes = [_predict(files[name], files["clip"]).embedding.shape[0] for name in ("mn_a", "ast")]
    assert got.embedding.shape == (sum(sizes),)  # the members' embeddings side by side


def test_labels_are_matched_by_id_and_mean_logit_averages_logits(files):
    ensemble = _ensemble(files["folder"] / "perm.pt", [files["mn_a"], files["mn_b"]], [0.5, 0.5], "mean-logit")
    got = _predict(ensemble, files["clip"])
    a = _predict(files["mn_a"], files["clip"]).logits
    b = _predict(files["mn_b"], files["clip"]).logits[[PERMUTED.index(i) for i in LABELS.ids]]
    np.testing.assert_allclose(got.logits, (a + b) / 2, atol=1e-5)
    assert not np.allclose(a, b, atol=1e-2)  # the members really differ


def test_windows_are_read_per_rate_and_aggregate_like_the_members(files):
    ensemble = _ensemble(files["folder"] / "windows.pt", [files["mn_a"], files["ast"]], [0.5, 0.5])
    options = PredictOptions(window=0.8, hop=0.4, per_window=True)
    got = _predict(ensemble, files["long"], options)
    alone = [_predict(files[name], files["long"], options) for name in ("mn_a", "ast")]
    assert [w.start for w in got.windows] == [w.start for w in alone[0].windows] == [w.start for w in alone[1].windows]
    np.testing.assert_allclose(got.probabilities, (alone[0].probabilities + alone[1].probabilities) / 2, atol=1e-6)


def test_fused_cpu_graphs_of_cnn_members_agree_with_eager(files):
    ensemble = _ensemble(files["folder"] / "fast.pt", [files["mn_a"], files["ast"]], [0.5, 0.5])
    fast = Scorer.load(ensemble, device="cpu", fast=True)
    eager = Scorer.load(ensemble, device="cpu", fast=False)
    wave = fast.stack([fast.pad(fast.read(files["clip"]))] * 2)
    for _ in range(3):  # the second call of a shape switches to the fused graph
        np.testing.assert_allclose(fast(wave).logits, eager(wave).logits, atol=1e-4)


def test_frame_level_members_on_one_grid_give_combined_frames_and_events(files, tmp_path):
    small = {"embed_dim": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    members = [_save(tmp_path / f"h{k}.pt", "htsat-tiny", LABELS, 10 + k, **small) for k in range(2)]
    ensemble = _ensemble(tmp_path / "frames.pt", members, [0.5, 0.5])
    tagger = Scorer.load(ensemble, device="cpu")
    assert tagger.frame_level and tagger.frame_seconds == pytest.approx(0.01)
    wave = tagger.stack([tagger.pad(tagger.read(files["clip"]))])
    frames = tagger(wave).frame_probabilities
    alone = [Scorer.load(m, device="cpu")(wave).frame_probabilities for m in members]
    np.testing.assert_allclose(frames, (alone[0] + alone[1]) / 2, atol=1e-6)
    result = next(predict_files(tagger, [files["clip"]], PredictOptions(events=EventRule(on=0.01, min_duration=0))))
    assert {e.label for e in result.events} == {0, 1, 2}  # a threshold every class passes


def test_members_with_an_opt_in_frame_output_give_frames_too(files, tmp_path):
    """EfficientAT's frame output is off in the registry; members that have it switched on still count."""
    members = [_save(tmp_path / f"f{k}.pt", "efficientat-mn01", LABELS, 20 + k, frame_output=True) for k in range(2)]
    assert Scorer.load(_ensemble(tmp_path / "f.pt", members, [0.5, 0.5]), device="cpu").frame_level
    mixed = _ensemble(tmp_path / "m.pt", [members[0], files["mn_a"]], [0.5, 0.5])
    assert not Scorer.load(mixed, device="cpu").frame_level  # one member without frames: windows


def test_clip_length_settings_reach_the_members_that_have_them(files, tmp_path):
    small = {"embed_dim": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    htsat = _save(tmp_path / "h.pt", "htsat-tiny", LABELS, 10, **small)
    ensemble = _ensemble(tmp_path / "mixed.pt", [htsat, files["mn_a"]], [0.5, 0.5])
    tagger = Scorer.load(ensemble, device="cpu", input_settings={"short_input": "tile"})
    assert [getattr(m, "short_input", None) for m in tagger.model.members] == ["tile", None]
    wave = tagger.stack([tagger.read(files["clip"])])  # 0.9 s: the HTS-AT member tiles it 11 times
    alone = [Scorer.load(htsat, device="cpu", input_settings={"short_input": "tile"})(wave).probabilities,
             Scorer.load(files["mn_a"], device="cpu")(wave).probabilities]
    np.testing.assert_allclose(tagger(wave).probabilities, (alone[0] + alone[1]) / 2, atol=1e-6)
    plain = _ensemble(tmp_path / "plain.pt", [files["mn_a"], files["ast"]], [0.5, 0.5])
    with pytest.raises(TaggerError, match="--short-input applies to none of this ensemble's members"):
        Scorer.load(plain, device="cpu", input_settings={"short_input": "tile"})


def test_the_file_loads_only_where_a_model_is_scored(files):
    ensemble = _ensemble(files["folder"] / "plain.pt", [files["mn_a"], files["ast"]], [0.5, 0.5])
    with pytest.raises(TaggerError, match="an ensemble checkpoint cannot be used here"):
        load_checkpoint(ensemble)
    tagger = Scorer.load(ensemble, device="cpu")
    assert tagger.labels == LABELS and tagger.task == "multilabel" and tagger.source == str(ensemble)


def test_label_and_task_mismatches_are_one_line_errors():
    assert column_map(LABELS, LABELS, "multilabel", "multilabel", "m") is None
    assert column_map(PERMUTED, LABELS, "multilabel", "multilabel", "m") == [1, 2, 0]
    assert column_map(LabelSet(["x", "c", "b", "a"]), LABELS, "multilabel", "multilabel", "m") == [3, 2, 1]
    with pytest.raises(TaggerError, match="m: lacks 1 of the ensemble's classes \\(first: 'c'\\)"):
        column_map(LabelSet(["a", "b"]), LABELS, "multilabel", "multilabel", "m")
    with pytest.raises(TaggerError, match="single-label member must have exactly"):
        column_map(LabelSet(["x", "c", "b", "a"]), LABELS, "multiclass", "multiclass", "m")
    with pytest.raises(TaggerError, match="a multiclass model cannot join a multilabel ensemble"):
        column_map(LABELS, LABELS, "multilabel", "multiclass", "m")
