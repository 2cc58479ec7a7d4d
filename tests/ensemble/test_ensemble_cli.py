"""`tagger ensemble` end to end on the synthetic set: both modes, selection, reports, and the ensemble used by
predict and evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import spread_model
from typer.testing import CliRunner

from tagger.checkpoint import read_torch_file, save_checkpoint
from tagger.cli import app
from tagger.evaluation.evaluate import load_predictions
from tagger.labels import LabelSet

runner = CliRunner()


def _tagger(*args):
    return runner.invoke(app, [str(a) for a in args])


def _save(path: Path, arch: str, labels: LabelSet, seed: int, epoch: int | None = None, **kwargs) -> Path:
    """A random model whose classifier is spread out (an untrained CNN's logits are otherwise ~1e-6)."""
    model = spread_model(arch, len(labels), seed, **kwargs)
    train = {} if epoch is None else {"epoch": float(epoch), "step": epoch * 10}
    return save_checkpoint(path, model, labels, train=train)


@pytest.fixture(scope="module")
def setup(synth_set, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ensemble-cli")
    labels = LabelSet.from_csv(synth_set["labels"])
    epochs = [_save(folder / f"epoch_{k:03d}.pt", "efficientat-mn01", labels, k, epoch=k) for k in (1, 2, 3, 4)]
    return {"labels": labels, "epochs": epochs, "folder": folder,
            "ast": _save(folder / "ast.pt", "ast-tiny224", labels, 7, input_tdim=100),
            "cnn6": _save(folder / "cnn6.pt", "panns-cnn6", labels, 8), **synth_set}


def _report(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_two_architectures_at_two_rates_through_ensemble_predict_and_evaluate(setup, tmp_path):
    members = [setup["epochs"][3], setup["ast"]]
    report = _report(_tagger("ensemble", *members, "--valid", setup["valid"], "--out", tmp_path / "ens.pt",
                             "--format", "json", "--report", tmp_path / "report.json"))
    assert report["mode"] == "predictions" and report["combine"] == "mean-prob"  # AST present: its convention
    assert [m["weight"] for m in report["members"]] == [0.5, 0.5] and report["metric"] == "mAP"
    assert json.loads((tmp_path / "report.json").read_text()) == report

    preds = []
    for model, name in ((tmp_path / "ens.pt", "ens"), *((m, m.stem) for m in members)):
        result = _tagger("evaluate", setup["valid"], "--model", model, "--save-predictions", tmp_path / f"{name}.npz",
                         "--format", "json")
        assert result.exit_code == 0, result.output
        preds.append(load_predictions(tmp_path / f"{name}.npz"))
    ensemble, first, second = preds
    np.testing.assert_allclose(ensemble.probabilities, (first.probabilities + second.probabilities) / 2, atol=1e-6)
    assert ensemble.metrics["mAP"] == pytest.approx(report["ensemble"], abs=1e-6)
    assert [m["value"] for m in report["members"]] == pytest.approx([first.metrics["mAP"], second.metrics["mAP"]])

    clip = sorted(Path(setup["valid"]).parent.joinpath("audio").glob("*.wav"))[0]
    result = _tagger("predict", clip, "--model", tmp_path / "ens.pt", "--format", "json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)[0]["labels"]) == 2


def test_weight_average_of_identical_checkpoints_scores_exactly_like_the_checkpoint(setup, tmp_path):
    twin = tmp_path / "twin.pt"
    twin.write_bytes(setup["epochs"][0].read_bytes())
    result = _tagger("ensemble", setup["epochs"][0], twin, "--mode", "weights", "--out", tmp_path / "wa.pt")
    assert result.exit_code == 0, result.output
    assert "holds the same weights" in result.stderr
    averaged, original = read_torch_file(tmp_path / "wa.pt"), read_torch_file(setup["epochs"][0])
    assert all(torch.equal(averaged["state_dict"][k], v) for k, v in original["state_dict"].items())
    assert averaged["arch"] == original["arch"] and averaged["train"]["ensemble"]["mode"] == "weights"


def test_epoch_window_average_is_an_ordinary_checkpoint_with_its_report(setup, tmp_path):
    out = tmp_path / "wa.pt"
    report = _report(_tagger("ensemble", *setup["epochs"], "--mode", "weights", "--select", "epochs>=3", "--valid",
                             setup["valid"], "--bn-recalibrate", setup["train"], "--out", out, "--format", "json"))
    assert [m["selected"] for m in report["members"]] == [False, False, True, True]
    assert report["bn_clips"] == 18 and report["ensemble"] is not None
    averaged = read_torch_file(out)
    assert averaged["format"] == "tagger-checkpoint" and averaged["train"]["averaged"]["epochs"] == [3.0, 4.0]
    third, fourth = (read_torch_file(p)["state_dict"] for p in setup["epochs"][2:])
    key = "classifier.5.weight"
    assert torch.allclose(averaged["state_dict"][key], (third[key] + fourth[key]) / 2)
    result = _tagger("evaluate", setup["valid"], "--model", out, "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["mAP"] == pytest.approx(report["ensemble"])


def test_greedy_selection_never_reports_less_than_its_best_member(setup, tmp_path):
    for mode in ("predictions", "weights"):
        report = _report(_tagger("ensemble", *setup["epochs"], "--mode", mode, "--select", "greedy", "--valid",
                                 setup["valid"], "--out", tmp_path / f"{mode}.pt", "--format", "json"))
        best = max(m["value"] for m in report["members"])
        assert report["ensemble"] >= best and report["gain"] >= 0 and report["best_member"] == best
        chosen = [m for m in report["members"] if m["selected"]]
        assert chosen and max(m["value"] for m in chosen) == best


def test_best_k_and_learned_weights(setup, tmp_path):
    report = _report(_tagger("ensemble", *setup["epochs"], "--select", "best:2", "--combine", "weighted", "--valid",
                             setup["valid"], "--out", tmp_path / "best2.pt", "--format", "json"))
    values = [m["value"] for m in report["members"]]
    chosen = [m for m in report["members"] if m["selected"]]
    assert len(chosen) == 2 and min(m["value"] for m in chosen) >= sorted(values)[-2]
    assert sum(m["weight"] for m in chosen) == pytest.approx(1) and "learned" in report["combine"]


def test_without_out_or_mode_the_inputs_choose(setup, tmp_path):
    """`tagger ensemble ckpts/*.pt`: epochs of one run are averaged into the run folder, checkpoints of several
    runs become an ensemble beside them; the choice and the file are printed."""
    import shutil

    run, other = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    run.mkdir(parents=True)
    other.mkdir()
    epochs = [Path(shutil.copy(e, run)) for e in setup["epochs"]]
    result = _tagger("ensemble", *epochs)
    assert result.exit_code == 0, result.output
    assert "--mode weights: 4 checkpoints of one run" in result.stderr
    assert (run / "weight-average.pt").is_file() and f"writing {run / 'weight-average.pt'}" in result.stderr
    assert read_torch_file(run / "weight-average.pt")["train"]["averaged"]["sources"] == [str(e) for e in epochs]
    again = _tagger("ensemble", *run.glob("*.pt"))  # the glob now also holds the average: it is not an input
    assert again.exit_code == 2 and "weight-average.pt exists; pass --force" in again.stderr

    cnn6 = Path(shutil.copy(setup["cnn6"], other))
    result = _tagger("ensemble", epochs[-1], cnn6, "--format", "json")
    assert result.exit_code == 0, result.output
    assert "--mode predictions: checkpoints of 2 folders" in result.stderr
    assert json.loads(result.stdout)["mode"] == "predictions" and (tmp_path / "runs" / "ensemble.pt").is_file()


@pytest.mark.parametrize("more, options, message", [
    (["CNN6"], ["--mode", "weights"], "differs from"),
    (["AST"], ["--mode", "weights", "--bn-recalibrate", "TRAIN"], "differs from"),
    ([], ["--select", "greedy"], "add --valid"),
    ([], ["--select", "epochs>=9"], "latest is epoch 4"),
    ([], ["--combine", "weighted"], "learns the member weights"),
    ([], ["--weights", "1,2"], "2 values for 4 members"),
    (["RESUME"], [], "a training resume file"),
    ([], ["--mode", "average"], "--mode 'average'"),
])
def test_user_errors_are_one_line(setup, tmp_path, more, options, message):
    resume = tmp_path / "resume.pt"
    torch.save({"format": "tagger-resume", "version": 1}, resume)
    names = {"CNN6": setup["cnn6"], "AST": setup["ast"], "TRAIN": setup["train"], "RESUME": resume}
    result = _tagger("ensemble", *setup["epochs"], *(names[m] for m in more), *(names.get(o, o) for o in options),
                     "--out", tmp_path / "x.pt")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert not (tmp_path / "x.pt").exists()


def test_bn_recalibration_needs_batchnorm_and_out_needs_force(setup, tmp_path):
    result = _tagger("ensemble", setup["ast"], "--mode", "weights", "--bn-recalibrate", setup["train"], "--out",
                     tmp_path / "x.pt")
    assert result.exit_code == 2 and "has no BatchNorm layers" in result.stderr
    out = tmp_path / "exists.pt"
    out.write_bytes(b"keep")
    result = _tagger("ensemble", *setup["epochs"][:2], "--out", out)
    assert result.exit_code == 2 and "--force" in result.stderr and out.read_bytes() == b"keep"
    assert _tagger("ensemble", *setup["epochs"][:2], "--out", out, "--force").exit_code == 0


def test_validation_scores_are_kept_and_reused_until_the_checkpoint_changes(setup, tmp_path):
    members = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for member, source in zip(members, setup["epochs"][:2], strict=True):
        member.write_bytes(source.read_bytes())
    args = ["ensemble", *members, "--valid", setup["valid"], "--out", tmp_path / "ens.pt", "--format", "json"]
    first = _tagger(*args)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "valid-scores").glob("*.npz")) == ["a", "b"]
    second = _tagger(*args[:-4], "--out", tmp_path / "other.pt", "--format", "json", "--select", "greedy")
    assert second.stderr.count("validation scores reused") == 2
    assert [m["value"] for m in _report(second)["members"]] == [m["value"] for m in _report(first)["members"]]
    members[0].write_bytes(setup["epochs"][2].read_bytes())  # a new file under the same name is scored again
    third = _tagger(*args, "--force")
    assert third.stderr.count("validation scores reused") == 1


def test_saved_predictions_combine_without_running_a_model(setup, tmp_path):
    saved = []
    for index, checkpoint in enumerate((setup["epochs"][0], setup["ast"])):
        saved.append(tmp_path / f"p{index}.npz")
        result = _tagger("evaluate", setup["valid"], "--model", checkpoint, "--save-predictions", saved[-1])
        assert result.exit_code == 0, result.output
    report = _report(_tagger("ensemble", *saved, "--out", tmp_path / "ens.npz", "--format", "json"))
    assert report["valid"] == "the targets saved with the predictions" and report["combine"] == "mean-prob"
    combined, first, second = (load_predictions(p) for p in (tmp_path / "ens.npz", *saved))
    np.testing.assert_allclose(combined.probabilities, (first.probabilities + second.probabilities) / 2, atol=1e-6)
    assert combined.metrics["mAP"] == pytest.approx(report["ensemble"])
    greedy = _report(_tagger("ensemble", *saved, "--select", "greedy", "--out", tmp_path / "g.npz", "--format",
                             "json"))
    assert greedy["ensemble"] >= max(m["value"] for m in greedy["members"])
    for args, message in (([saved[0], setup["ast"], "--out", tmp_path / "x.npz"], "not both"),
                          ([*saved, "--out", tmp_path / "x.pt"], "name the file *.npz"),
                          ([*saved, "--valid", setup["valid"], "--out", tmp_path / "x.npz"], "drop --valid")):
        result = _tagger("ensemble", *args)
        assert result.exit_code == 2 and message in result.stderr.strip().splitlines()[-1], result.stderr


def test_ctrl_c_writes_nothing_and_a_rerun_scores_only_what_is_left(setup, tmp_path, monkeypatch):
    from tagger.ensemble import run as ensemble_run

    real, calls = ensemble_run.score_tagger, []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ensemble_run, "score_tagger", interrupted_on_the_second)
    args = ["ensemble", *setup["epochs"][:3], "--valid", setup["valid"], "--out", tmp_path / "ens.pt"]
    result = _tagger(*args)
    assert result.exit_code == 130 and "was not written" in result.stderr
    assert not (tmp_path / "ens.pt").exists() and len(list((tmp_path / "valid-scores").glob("*.npz"))) == 1
    monkeypatch.setattr(ensemble_run, "score_tagger", real)
    result = _tagger(*args)
    assert result.exit_code == 0 and result.stderr.count("validation scores reused") == 1
