"""On a CUDA device: every family's model and front-end agree with the CPU, and training and prediction run there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
from tiny import TINY_ARCH, tiny_config, tiny_overrides  # noqa: E402

# the smallest model of each family, with kwargs that keep a 1 s clip cheap
TINY_MODELS = {
    "ast-tiny224": {"input_tdim": 100},
    "passt-s-p16-s10": {},
    "htsat-tiny": {},
    "psla-effnet-b0-att1": {},
    "panns-cnn6": {},
    "efficientat-mn01": {},
}


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 on the GPU as on the CPU: no TF32 in convolutions and matrix products while comparing."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(name: str):
    from conftest import lively

    from tagger.models import create_model

    return lively(create_model(name, num_classes=7, **TINY_MODELS[name]))


def _wave(model, batch: int = 2, seconds: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(batch, int(seconds * model.sample_rate), generator=gen)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_front_end_and_model_give_on_cuda_what_they_give_on_the_cpu(name):
    model = _model(name)
    wave = _wave(model)
    with torch.no_grad():
        spec_cpu = model.frontend(wave)
        logits_cpu = model.forward_features(spec_cpu).logits
        model.cuda()
        spec_gpu = model.frontend(wave.cuda())
        logits_gpu = model.forward_features(spec_cpu.cuda()).logits  # the same input: the model alone
    torch.testing.assert_close(spec_gpu.cpu(), spec_cpu, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=1e-3, atol=1e-3)


def _run(cfg, synth_set, out):
    from tagger.training import trainer

    return trainer.train(cfg, trainer.data_spec(synth_set["train"]), trainer.data_spec(synth_set["valid"]), out,
                         labels_path=synth_set["labels"], show_progress=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_run_trains_on_cuda(synth_set, tmp_path, precision):
    from tagger.checkpoint import read_torch_file

    result = _run(tiny_config("run.device=cuda", f"run.precision={precision}", "run.epochs=1",
                              "augment.spec_mixup=perm", "run.log_every_steps=3"), synth_set, tmp_path / "run")
    assert result.steps == 4 and np.isfinite(float(result.last_metrics["train_loss"]))
    saved = read_torch_file(tmp_path / "run" / "resume.pt")
    assert bool(saved["scaler"]) == (precision == "fp16")  # GradScaler with fp16 only
    assert all(len(s) for s in saved["optimizer"]["state"].values())  # the (fused) optimizer did step


def test_compiled_model_trains_on_cuda(synth_set, tmp_path):
    result = _run(tiny_config("run.device=cuda", "run.compile=true", "run.precision=bf16", "run.epochs=1",
                              arch="panns-cnn6"), synth_set, tmp_path / "run")
    assert result.steps == 4 and np.isfinite(float(result.last_metrics["train_loss"]))


def test_channels_last_auto_switches_a_cnn_to_nhwc_on_cuda(synth_set, tmp_path):
    from tagger.training import trainer

    cfg = tiny_config("run.device=cuda", "run.channels_last=auto", "run.precision=bf16")
    t = trainer.Trainer(cfg, tmp_path / "run", trainer.data_spec(synth_set["train"]),
                        trainer.data_spec(synth_set["valid"]), synth_set["labels"], show_progress=False)
    seen = []
    last = [m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last.register_forward_hook(lambda module, inputs, out: seen.append(out))
    spec = t.model.frontend(_wave(t.model, batch=4).cuda())
    with t._autocast():
        t.net(spec)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert isinstance(t.optimizer, torch.optim.Adam) and t.optimizer.defaults["fused"]


def test_train_and_predict_commands_run_on_cuda(synth_set, tmp_path):
    from typer.testing import CliRunner

    from tagger.cli import app

    runner = CliRunner()
    sets = [f"--set={item}" for item in tiny_overrides("run.device=cuda", "run.precision=bf16", "run.epochs=1",
                                                       "data.num_workers=2")]
    result = runner.invoke(app, ["train", "--arch", TINY_ARCH, "--train", str(synth_set["train"]), "--valid",
                                 str(synth_set["valid"]), "--labels", str(synth_set["labels"]), "--out",
                                 str(tmp_path / "run"), *sets, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.pt").is_file()
    clips = sorted((Path(synth_set["valid"]).parent).rglob("*.wav"))[:3]
    result = runner.invoke(app, ["predict", *map(str, clips), "--model", str(tmp_path / "run" / "best.pt"),
                                 "--device", "cuda", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 3
