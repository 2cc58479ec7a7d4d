"""Opt-in frame outputs of EfficientAT and PSLA (`frame_output`): stride, shapes, alignment, checkpoints, events."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_wav
from torch import nn

import tagger
from tagger.checkpoint import load_checkpoint, save_checkpoint
from tagger.inference.events import EventRule, detect_events
from tagger.inference.runtime import Scorer
from tagger.labels import LabelSet
from tagger.models import create_model, model_entry
from tagger.models.base import repeat_steps
from tagger.models.inference import FastInference
from tagger.training.config import build_config

EFFICIENTAT = [("efficientat-mn01", {"head_type": head}) for head in
               ("mlp", "fully_convolutional", "multihead_attention_pooling")]
PSLA = [("psla-effnet-b0-mean", {}), ("psla-effnet-b0-att1", {}), ("psla-effnet-b0-att4", {})]
MODELS = EFFICIENTAT + PSLA + [("efficientat-mn01", {"strides": (2, 1, 2, 2)})]
SHAPES = EFFICIENTAT + [("psla-effnet-b0-att4", {}), ("efficientat-mn01", {"strides": (2, 1, 2, 2)})]


@pytest.fixture(autouse=True)
def _cpu():
    """Two threads, and denormal numbers flushed to zero: untrained and constant-weight networks make many (far from
    a local change their activations decay towards zero), and they are slow on a CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(previous)


def build(name: str, frame_output: bool = True, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_model(name, num_classes=3, frame_output=frame_output, **kwargs).eval()


def enliven(model, seed: int = 0):
    """Noisy weights and BatchNorm statistics of real activations, from a short input (conftest's `lively` runs a
    second of audio, which PSLA pads to 1056 frames): outputs of order 1 that differ between steps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model.train().forward_features(torch.randn(2, 128, 96, generator=gen))
    return model.eval()


def step_count(model, spec: torch.Tensor) -> int:
    """Time steps of the last feature map, straight from the trunk."""
    with torch.no_grad():
        if model.family == "efficientat":
            return model.features(spec.unsqueeze(1)).shape[-1]
        return model.features(spec).shape[2]


# --------------------------------------------------------------------------------------------- stride and shapes


@pytest.mark.parametrize(("name", "kwargs", "stride"), [
    ("efficientat-mn01", {}, 32), ("efficientat-mn01", {"strides": (2, 1, 2, 1)}, 8),
    ("efficientat-mn01", {"strides": (1, 1, 1, 1)}, 2), ("psla-effnet-b0-mean", {}, 32),
])
def test_time_stride_is_read_from_the_built_network(name, kwargs, stride):
    model = build(name, **kwargs)
    assert model.time_stride == stride
    for frames in (stride * 3, stride * 3 + 1, stride * 4 - 1):  # the trunk rounds up: ceil(T / stride) steps
        assert step_count(model, torch.randn(1, 128, frames)) == -(-frames // stride)


@pytest.mark.parametrize(("name", "kwargs"), SHAPES)  # PSLA's heads share the frame path
def test_frame_logits_cover_every_input_frame(name, kwargs):
    model = enliven(build(name, **kwargs))
    for batch, frames in [(1, 100), (2, 97), (2, 33), (1, 20)]:
        spec = torch.randn(batch, 128, frames)
        with torch.no_grad():
            out = model.forward_features(spec)
        assert out.frame_logits.shape == (batch, frames, 3)
        assert out.logits.shape == (batch, 3) and torch.isfinite(out.frame_logits).all()
        # Step s lies over frames [s r - r/2, s r + r/2): each step's value once, in order, on its own frames.
        r, steps = model.time_stride, step_count(model, spec)
        firsts = [0] + [s * r - r // 2 for s in range(1, steps) if s * r - r // 2 < frames]
        values = out.frame_logits[:, firsts]
        assert torch.equal(out.frame_logits, repeat_steps(values, frames, r, r // 2))
        assert len(firsts) == 1 or values[0, :, 0].unique().numel() > 1  # no constant output hides a slip


def test_repeat_steps_maps_frames_onto_steps():
    steps = torch.arange(4.0).view(1, 4, 1)
    assert repeat_steps(steps, 10, 4).flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert repeat_steps(steps, 10, 4, 2).flatten().tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert repeat_steps(steps, 20, 4).flatten().tolist()[-5:] == [3, 3, 3, 3, 3]  # the last step fills the rest


def test_psla_frames_are_the_padded_fbank_frames():
    """PSLA's front-end pads a short clip's fbank to target_length: the frame axis is that padded one."""
    wave = torch.randn(1, 16000 * 2)
    model = enliven(build("psla-effnet-b0-mean"))
    with torch.no_grad():
        assert model(wave).frame_logits.shape == (1, 1056, 3)  # 33 steps of 32 frames
        model.frontend = build("psla-effnet-b0-mean", target_length=None).frontend
        assert model(wave).frame_logits.shape == (1, model.frontend(wave).shape[-1], 3) == (1, 198, 3)


# --------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize(("name", "kwargs"), MODELS)
def test_clip_logits_and_embedding_are_unchanged(name, kwargs):
    plain = enliven(build(name, frame_output=False, **kwargs))
    framed = build(name, **kwargs)
    framed.load_state_dict(plain.state_dict())
    spec = torch.randn(2, 128, 150, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = plain.forward_features(spec), framed.forward_features(spec)
    assert a.frame_logits is None and b.frame_logits is not None
    assert torch.equal(a.logits, b.logits) and torch.equal(a.embedding, b.embedding)
    assert getattr(plain, "frame_level", None) is None and framed.frame_level is True


def test_efficientat_step_logits_are_the_head_per_step():
    spec = torch.randn(2, 128, 160, generator=torch.Generator().manual_seed(2))
    for _, kwargs in EFFICIENTAT:
        model = enliven(build("efficientat-mn01", **kwargs))
        with torch.no_grad():
            out = model.forward_features(spec)
            x = model.features(spec.unsqueeze(1))
        steps = out.frame_logits[:, [0, 16, 48, 80, 112]]  # the 5 steps of 160 frames
        if kwargs["head_type"] == "mlp":
            want = model.classifier[2:](x.mean(2).transpose(1, 2))
            torch.testing.assert_close(steps, want)
        elif kwargs["head_type"] == "fully_convolutional":  # pooling commutes: the steps' mean is the clip logit
            torch.testing.assert_close(steps.mean(1), out.logits, rtol=1e-5, atol=1e-5)
        else:
            proj = model.classifier.project(x)
            torch.testing.assert_close(steps, (proj[:, :, 1] * model.classifier.head_weight).sum(2))


@pytest.mark.parametrize(("name", "kwargs"), PSLA)
def test_psla_step_logits_are_the_head_frame_probabilities(name, kwargs):
    model = enliven(build(name, **kwargs))
    spec = torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.forward_features(spec)
        frame = model.pool(spec).frame  # (B, K, 4)
    steps = out.frame_logits[:, [0, 16, 48, 80]]
    torch.testing.assert_close(torch.sigmoid(steps), frame.transpose(1, 2).clamp(1e-7, 1 - 1e-7))
    if name.endswith("-mean"):  # mean pooling: the clip probability is the steps' mean probability
        torch.testing.assert_close(torch.sigmoid(steps).mean(1), torch.sigmoid(out.logits))


def test_fast_inference_keeps_the_frames():
    """predict traces CNNs for the CPU (FastInference): the frame output comes through the traced graph."""
    model = enliven(build("efficientat-mn01", head_type="multihead_attention_pooling"))
    wave = torch.randn(2, 32000, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        eager, fast = model(wave), FastInference(model)(wave)
    assert fast.frame_logits.shape == eager.frame_logits.shape == (2, 100, 3)
    torch.testing.assert_close(fast.frame_logits, eager.frame_logits, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- alignment


def constant_weights(model, spec: torch.Tensor):
    """Every conv and linear an average of its inputs, without bias.

    A random network's response to a local change is lopsided by its random weights (an untrained mn01 or B0 puts
    its largest change one or two steps off, either way, depending on the seed), and squeeze-excitation spreads
    some of it over the whole clip. Averaging kernels with symmetric padding respond symmetrically about each
    step's centre, so where the largest change lands shows how steps are mapped onto frames, exactly. PSLA's deep
    trunk shrinks the change to ~1e-8, which its head's sigmoid would round away: the head gets it back to ~1.
    """
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                layer.weight.fill_(1.0 / layer.weight[0].numel())
                if layer.bias is not None:
                    layer.bias.zero_()
        if model.family == "psla":
            peak = model.features(spec).abs().max()
            for layer in model.attention.modules():
                if isinstance(layer, nn.Conv2d):
                    layer.weight.div_(peak)
    return model.eval()


@pytest.mark.parametrize(("name", "kwargs"), EFFICIENTAT + [("efficientat-mn01", {"strides": (2, 1, 2, 2)}),
                                              ("psla-effnet-b0-att4", {})])
def test_a_local_change_moves_the_frames_it_touches_most(name, kwargs):
    # Changes of 8 frames at a step centre (64; also 48 and 80 when r = 16) and 12 frames either side of one (4
    # when r = 16): the mapping must put each on the step whose receptive field it is nearest the centre of.
    centres, frames = (52, 64, 76, 84, 108), 160
    spec = torch.zeros(len(centres), 128, frames)
    for row, c in enumerate(centres):
        spec[row, :, c - 4: c + 4] = 1.0
    model = constant_weights(build(name, **kwargs), spec)
    r = model.time_stride
    with torch.no_grad():
        base = model.forward_features(torch.zeros(1, 128, frames)).frame_logits
        change = (model.forward_features(spec).frame_logits - base).abs().amax(-1)  # (N, frames)
    assert (change.amax(1) > 0).all()
    for row, c in enumerate(centres):
        assert change[row, c - 4: c + 4].amax() == change[row].amax(), (c, change[row].argmax().item())
        stepped = int(change[row].argmax()) + r // 2
        assert abs(stepped // r - (c + r // 2) // r) <= 1


# --------------------------------------------------------------------------------------------- checkpoints, predict


LABELS = LabelSet.from_list(["/m/a", "/m/b", "/m/c"], ["A", "B", "C"])


def test_frame_output_reaches_model_kwargs_and_survives_a_checkpoint(tmp_path):
    config = build_config(arch="efficientat-mn01", overrides=["model.kwargs.frame_output=true"])
    assert config.model.kwargs == {"frame_output": True}
    for name in ("efficientat-mn01", "psla-effnet-b0-att4"):
        model = enliven(build(name))
        assert model.model_kwargs["frame_output"] is True and model_entry(name).frame_level is False
        path = save_checkpoint(tmp_path / f"{name}.pt", model, LABELS)
        loaded, meta = load_checkpoint(path)
        assert meta["model_kwargs"]["frame_output"] is True and loaded.frame_level is True
        spec = torch.randn(1, 128, 100)
        with torch.no_grad():
            torch.testing.assert_close(loaded.forward_features(spec).frame_logits,
                                       model.forward_features(spec).frame_logits, rtol=0, atol=0)
        assert Scorer(loaded, LABELS, "multilabel", device="cpu").frame_level


def test_predict_events_come_from_the_frame_output(tmp_path):
    """A tiny mn01 checkpoint with frame_output: events on the whole clip from its frame scores, no windows."""
    torch.manual_seed(0)
    model = create_model("efficientat-mn01", num_classes=3, frame_output=True)
    with torch.no_grad():  # spread the head so that the steps' scores differ (an untrained mn01's are ~1e-6 apart)
        for parameter in model.classifier.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, 50.0)
    model = enliven(model)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(32000 * 3)).astype(np.float32)
    wave[32000:48000] *= 8  # a louder half second
    clip = write_wav(tmp_path / "clip.wav", wave, 32000)
    path = save_checkpoint(tmp_path / "mn01-frames.pt", model, LABELS)

    loaded = tagger.load(path, device="cpu")
    assert loaded.frame_level
    from tagger import audio

    with torch.no_grad():
        frames = torch.sigmoid(model.eval()(torch.from_numpy(audio.load(clip, 32000))[None]).frame_logits)[0].numpy()
    on = float(np.median(frames[:, 0]))  # class 0 sounds in about half of the steps
    rule = EventRule(on=on, off=on, min_duration=0.0)
    prediction = loaded.predict(clip, events=rule, top_k=0)
    want = detect_events(frames[:300], 0.01, rule, duration=3.0)
    assert len(want) >= 1 and any(e.label == 0 for e in want)
    got = [(e.name, e.onset, e.offset) for e in prediction.events]
    assert got == [(LABELS.name_of(e.label), e.onset, e.offset) for e in want]
    # Event edges fall on step edges (every 32 frames from 16): the frame output, not windows, placed them.
    edges = {round(t * 100) for e in prediction.events for t in (e.onset, e.offset)} - {0, 300}
    assert edges and all((edge - 16) % 32 == 0 for edge in edges)

    plain = tmp_path / "mn01-plain.pt"
    model.model_kwargs.pop("frame_output")
    save_checkpoint(plain, model, LABELS)
    assert not tagger.load(plain, device="cpu").frame_level  # same weights without it: windows, as before
