"""Weight averaging: compatibility checks, the (weighted) mean of states and payloads, BatchNorm re-estimation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tagger.checkpoint import model_from_payload, read_torch_file, save_checkpoint
from tagger.ensemble.averaging import (
    average_payloads,
    average_states,
    check_compatible,
    has_batchnorm,
    recalibrate_batchnorm,
)
from tagger.errors import TaggerError
from tagger.labels import LabelSet
from tagger.models import create_model

ARCH = "efficientat-mn01"  # 57 k parameters with BatchNorm and dropout: fast on 2 cores
LABELS = LabelSet(["a", "b", "c"])
CONV = "features.0.0.weight"
BN = "features.0.1"


def tiny_model(seed: int, arch: str = ARCH, num_classes: int = 3, batches_tracked: int = 0, **kwargs) -> nn.Module:
    """A freshly built model whose BatchNorm statistics differ from seed to seed (fresh ones are all 0 and 1)."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=generator))
                layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=generator) + 0.5)
                layer.num_batches_tracked.fill_(batches_tracked)
    return model.eval()


def saved(tmp_path, name: str, model: nn.Module, labels: LabelSet = LABELS, **kwargs) -> tuple[dict, str]:
    """(payload as read back from disk, its path), the way the ensemble command will see a checkpoint."""
    path = save_checkpoint(tmp_path / name, model, labels, **kwargs)
    return read_torch_file(path), str(path)


def wave(sample_rate: int = 32000, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, sample_rate, generator=torch.Generator().manual_seed(seed))


def outputs(payload: dict, source: str, audio: torch.Tensor) -> torch.Tensor:
    model, _ = model_from_payload(payload, source)
    with torch.no_grad():
        return model(audio).logits


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two checkpoints of one model from different seeds, with epochs 3 and 5 and different BN batch counts."""
    folder = tmp_path_factory.mktemp("pair")
    first = saved(folder, "epoch3.pt", tiny_model(0, batches_tracked=10),
                  train={"epoch": 3, "metric": "mAP", "config": {"lr": 1e-3}, "metrics": {"mAP": 0.1}})
    second = saved(folder, "epoch5.pt", tiny_model(1, batches_tracked=13), train={"epoch": 5, "metric": "mAP"})
    return [first[0], second[0]], [first[1], second[1]]


# --------------------------------------------------------------------------------------------- averaging


def test_averaging_identical_checkpoints_changes_nothing(tmp_path):
    payload, source = saved(tmp_path, "one.pt", tiny_model(0, batches_tracked=7))
    averaged = average_payloads([payload, copy.deepcopy(payload)], [source, source + ".copy"])
    assert averaged["state_dict"].keys() == payload["state_dict"].keys()
    for key, value in payload["state_dict"].items():
        assert torch.equal(averaged["state_dict"][key], value), key
        assert averaged["state_dict"][key].dtype == value.dtype
    audio = wave()
    torch.testing.assert_close(outputs(averaged, "averaged", audio), outputs(payload, source, audio),
                               atol=1e-6, rtol=0)


def test_uniform_mean_is_elementwise(pair):
    (a, b), sources = pair
    state = average_payloads([a, b], sources)["state_dict"]
    for key in (CONV, f"{BN}.running_var", f"{BN}.running_mean", "classifier.5.weight"):
        expected = ((a["state_dict"][key].double() + b["state_dict"][key].double()) / 2).float()
        assert torch.equal(state[key], expected), key
    assert not torch.equal(a["state_dict"][CONV], b["state_dict"][CONV])  # the check above means something
    assert not torch.equal(a["state_dict"][f"{BN}.running_var"], b["state_dict"][f"{BN}.running_var"])
    # 10 and 13 batches: 11.5 rounds half up, and the dtype stays an integer one
    assert state[f"{BN}.num_batches_tracked"].dtype == torch.int64
    assert state[f"{BN}.num_batches_tracked"].item() == 12


def test_averaged_model_differs_from_each_member(pair):
    (a, b), sources = pair
    averaged = average_payloads([a, b], sources)
    audio = wave()
    mean_out = outputs(averaged, "averaged", audio)
    for payload, source in zip((a, b), sources, strict=True):
        assert not torch.allclose(mean_out, outputs(payload, source, audio), atol=1e-4)


def test_weighted_mean(pair):
    (a, b), sources = pair
    state = average_payloads([a, b], sources, weights=(3, 1))["state_dict"]
    for key in (CONV, f"{BN}.running_var"):
        expected = (0.75 * a["state_dict"][key].double() + 0.25 * b["state_dict"][key].double()).float()
        torch.testing.assert_close(state[key], expected, rtol=1e-7, atol=1e-7)
    assert state[f"{BN}.num_batches_tracked"].item() == 11  # 0.75 * 10 + 0.25 * 13 = 10.75


def test_average_states_gives_new_contiguous_cpu_tensors():
    source = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(), "mask": torch.tensor([True, False])}
    other = {"w": source["w"] + 2, "mask": torch.tensor([True, True])}
    state = average_states([source, other])
    assert state["w"].is_contiguous() and state["w"].device.type == "cpu"
    assert torch.equal(state["w"], source["w"] + 1)
    assert torch.equal(state["mask"], source["mask"])  # bools cannot be averaged: the first is kept
    assert state["mask"].data_ptr() != source["mask"].data_ptr()
    single = average_states([source])
    assert torch.equal(single["w"], source["w"]) and single["w"].data_ptr() != source["w"].data_ptr()


def test_half_precision_is_accumulated_wide():
    big = torch.full((4,), 60000.0, dtype=torch.float16)  # a float16 sum would overflow to inf
    state = average_states([{"w": big}, {"w": big}, {"w": big}])
    assert state["w"].dtype == torch.float16
    assert torch.equal(state["w"], big)


@pytest.mark.parametrize(
    ("weights", "words"),
    [((1.0, -1.0), ">= 0"), ((0, 0), "not all 0"), ((1.0,), "1 values for 2"), ((1, float("nan")), "finite")],
)
def test_bad_weights_are_refused(pair, weights, words):
    (a, b), sources = pair
    with pytest.raises(TaggerError, match=words):
        average_payloads([a, b], sources, weights=weights)
    with pytest.raises(TaggerError, match=words):
        average_states([a["state_dict"], b["state_dict"]], weights)


def test_average_payloads_records_the_members_and_mutates_nothing(pair):
    (a, b), sources = pair
    before = copy.deepcopy([a, b])
    averaged = average_payloads([a, b], sources, weights=[1, 3])
    train = averaged["train"]
    assert train["averaged"] == {"sources": sources, "weights": [0.25, 0.75], "epochs": [3, 5]}
    assert train["epoch"] == 5
    assert train["metric"] == "mAP" and train["config"] == {"lr": 1e-3}
    assert "metrics" not in train  # one member's metrics do not describe the average
    for key in ("format", "version", "arch", "model_kwargs", "frontend", "labels", "normalization", "task"):
        assert averaged[key] == a[key]
    for original, kept in zip(before, (a, b), strict=True):
        assert original.keys() == kept.keys()
        assert original["train"] == kept["train"]
        for key, value in original["state_dict"].items():
            assert torch.equal(kept["state_dict"][key], value)
    averaged["model_kwargs"]["num_classes"] = 99
    assert a["model_kwargs"]["num_classes"] == 3


def test_unknown_epochs_give_none(tmp_path):
    payload, source = saved(tmp_path, "noepoch.pt", tiny_model(0))
    train = average_payloads([payload], [source])["train"]
    assert train["epoch"] is None and train["averaged"]["epochs"] == [None]
    assert train["averaged"]["weights"] == [1.0]


# --------------------------------------------------------------------------------------------- compatibility


def _changed(tmp_path, pair, what: str) -> dict:
    (a, _), _ = pair
    if what == "arch":
        return saved(tmp_path, "other.pt", tiny_model(2, arch="panns-cnn6"))[0]
    if what == "num_classes":
        return saved(tmp_path, "other.pt", tiny_model(2, num_classes=4), labels=LabelSet(["a", "b", "c", "d"]))[0]
    if what == "label ids":
        return saved(tmp_path, "other.pt", tiny_model(2), labels=LabelSet(["a", "b", "x"]))[0]
    if what == "task":
        return saved(tmp_path, "other.pt", tiny_model(2), task="multiclass")[0]
    if what == "model_kwargs":
        return saved(tmp_path, "other.pt", tiny_model(2, attention_heads=2))[0]
    edited = copy.copy(a)
    if what == "label count":
        edited["labels"] = a["labels"][:2]
    elif what == "frontend":
        edited["frontend"] = {**a["frontend"], "n_mels": 64}
    elif what == "missing key":
        edited["state_dict"] = {k: v for k, v in a["state_dict"].items() if k != CONV}
    elif what == "extra key":
        edited["state_dict"] = {**a["state_dict"], "extra.weight": torch.zeros(1)}
    elif what == "shape":
        edited["state_dict"] = {**a["state_dict"], CONV: torch.zeros(1, 2, 3)}
    elif what == "dtype":
        edited["state_dict"] = {**a["state_dict"], CONV: a["state_dict"][CONV].double()}
    elif what == "ensemble":
        edited = {"format": "tagger-ensemble", "version": 1, "members": [a], "labels": a["labels"]}
    return edited


@pytest.mark.parametrize(
    ("what", "words"),
    [
        ("arch", "arch: panns-cnn6 vs efficientat-mn01"),
        ("num_classes", "model setting num_classes: 4 vs 3"),
        ("model_kwargs", "model setting attention_heads: 2 vs (not set)"),
        ("frontend", "front-end setting n_mels: 64 vs 128"),
        ("label count", "number of classes: 2 vs 3"),
        ("label ids", "class id at position 2: 'x' vs 'c'"),
        ("task", "task: multiclass vs multilabel"),
        ("missing key", f"lacks {CONV}"),
        ("extra key", "extra extra.weight"),
        ("shape", f"shape of {CONV}: (1, 2, 3) vs "),
        ("dtype", f"dtype of {CONV}: torch.float64 vs torch.float32"),
    ],
)
def test_incompatible_checkpoints_are_refused(tmp_path, pair, what, words):
    (a, _), (first, _) = pair
    other = _changed(tmp_path, pair, what)
    with pytest.raises(TaggerError) as caught:
        check_compatible([a, other], [first, "runs/other.pt"])
    message = str(caught.value)
    assert message.startswith(f"runs/other.pt: differs from {first} in ")
    assert words in message
    assert "--mode predictions" in message and "\n" not in message
    with pytest.raises(TaggerError, match="runs/other.pt"):
        average_payloads([a, other], [first, "runs/other.pt"])


def test_an_ensemble_cannot_be_weight_averaged(tmp_path, pair):
    (a, _), (first, _) = pair
    ensemble = _changed(tmp_path, pair, "ensemble")
    for payloads, sources in (([a, ensemble], [first, "ens.pt"]), ([ensemble, a], ["ens.pt", first])):
        with pytest.raises(TaggerError, match=r"ens\.pt: an ensemble checkpoint .* cannot be weight-averaged"):
            check_compatible(payloads, sources)


def test_nothing_to_average_is_refused():
    with pytest.raises(TaggerError, match="at least one"):
        check_compatible([], [])
    with pytest.raises(TaggerError, match="at least one"):
        average_states([])


def test_compatible_checkpoints_pass(pair):
    payloads, sources = pair
    check_compatible(payloads, sources)
    check_compatible(payloads[:1], sources[:1])


# --------------------------------------------------------------------------------------------- BatchNorm


def _first_bn(model: nn.Module) -> nn.BatchNorm2d:
    return next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_recalibration_measures_the_inputs_at_inference(tmp_path):
    model = tiny_model(0)
    layer = _first_bn(model)
    batches = [wave(batch=3, seed=1), wave(batch=2, seed=2)]
    # The first BN layer's inputs do not depend on any BN statistics: record them with a plain eval pass
    inputs = []
    handle = layer.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach().clone()))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    expected_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)  # momentum None: mean of batches
    expected_var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for x in inputs]).mean(0)

    last = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m is not layer)
    last.momentum = 0.05  # one layer with its own momentum, to see each one restored
    momenta = {name: m.momentum for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    modes: dict[str, set] = {"bn": set(), "dropout": set(), "frontend": set()}
    hooks = [layer.register_forward_pre_hook(lambda m, _: modes["bn"].add(m.training)),
             model.frontend.register_forward_pre_hook(lambda m, _: modes["frontend"].add(m.training))]
    hooks += [m.register_forward_pre_hook(lambda m, _: modes["dropout"].add(m.training))
              for m in model.modules() if isinstance(m, nn.Dropout)]
    ticks = []
    seen = recalibrate_batchnorm(model, [batches[0], (batches[1], "targets")], on_batch=ticks.append)
    for hook in hooks:
        hook.remove()

    assert seen == 5 and ticks == [3, 2]
    torch.testing.assert_close(layer.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert layer.num_batches_tracked.item() == 2
    assert modes == {"bn": {True}, "dropout": {False}, "frontend": {False}}
    assert not any(m.training for m in model.modules())
    assert {name: m.momentum for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)} == momenta
    assert last.momentum == 0.05 and layer.momentum is not None
    audio = wave(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(audio).logits, model(audio).logits, atol=0, rtol=0)


def test_recalibration_of_a_model_without_batchnorm_is_refused():
    model = create_model("ast-tiny224", num_classes=3, input_tdim=100)
    assert not has_batchnorm(model)
    with pytest.raises(TaggerError, match=r"ast-tiny224 has no BatchNorm layers; drop --bn-recalibrate"):
        recalibrate_batchnorm(model, [wave(16000)])


def test_has_batchnorm_ignores_layers_without_running_statistics():
    assert has_batchnorm(tiny_model(0))
    assert has_batchnorm(nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2)))
    assert not has_batchnorm(nn.Sequential(nn.BatchNorm1d(2, track_running_stats=False), nn.LayerNorm(2)))


def test_empty_batches_are_refused_and_leave_the_statistics_alone():
    model = tiny_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = _first_bn(model).momentum
    with pytest.raises(TaggerError, match="no clips"):
        recalibrate_batchnorm(model, iter([]))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert _first_bn(model).momentum == momentum and not model.training
