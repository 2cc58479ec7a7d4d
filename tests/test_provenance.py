"""Where weights came from: an imported checkpoint records the official file and its licences, weights made from
it (a run initialised from it, an average, an ensemble) keep that record, and `tagger info` shows it."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import pytest
import torch
from conftest import spread_model
from typer.testing import CliRunner

from tagger.checkpoint import derived_source, read_torch_file, save_checkpoint
from tagger.cli import app
from tagger.ensemble.store import save_ensemble
from tagger.labels import LabelSet
from tagger.models import create_model
from tagger.weights.importing import provenance
from tagger.weights.licences import LICENCES, family_licences

runner = CliRunner()
LABELS = LabelSet.from_list(["a", "b", "c", "d", "e"])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny EfficientAT file in the official layout (a raw state_dict), imported through the CLI."""
    folder = tmp_path_factory.mktemp("provenance")
    torch.manual_seed(0)
    model = create_model("efficientat-mn01", num_classes=5).eval()
    official = folder / "mn01_tiny.pt"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("frontend.")}, official)
    labels = folder / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/x{i},Class {i}\n" for i in range(5)))
    out = folder / "imported.pt"
    result = runner.invoke(app, ["import-checkpoint", "efficientat", str(official), "--out", str(out),
                                 "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    return {"official": official, "out": out, "folder": folder}


def tiny_config(*extra: str):
    """A one-second, four-clip-batch run of the imported architecture (as tests/training/tiny.py sets them)."""
    from tagger.training.config import build_config

    return build_config(None, ["data.clip_seconds=1", "data.batch_size=4", "data.num_workers=0", "optim.lr=1e-3",
                               *extra], "efficientat-mn01")


def _info(*args) -> list[dict]:
    result = runner.invoke(app, ["info", *map(str, args), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_an_import_records_the_file_its_digest_and_its_licences(imported):
    source = read_torch_file(imported["out"])["source"]
    data = imported["official"].read_bytes()
    assert source["family"] == "efficientat" and source["file"] == "mn01_tiny.pt"
    assert source["sha256"] == hashlib.sha256(data).hexdigest() and source["size"] == len(data)
    assert source["licence"] == "MIT" and source["code_licence"] == "MIT"
    assert source["licence_source"].startswith("https://github.com/fschmid56/EfficientAT/blob/")
    assert datetime.fromisoformat(source["imported"]).tzinfo is not None


def test_an_export_carries_the_provenance_and_tagger_models_the_licences(imported, tmp_path):
    from tagger.export import export_model, read_metadata

    export_model(imported["out"], "safetensors", tmp_path / "m.safetensors", check=False)
    assert read_metadata(tmp_path / "m.safetensors")["source"] == read_torch_file(imported["out"])["source"]
    result = runner.invoke(app, ["models", "--format", "json"])
    assert result.exit_code == 0, result.output
    licences = {row["family"]: row["weights_licence"] for row in json.loads(result.stdout)}
    assert licences["ced"] == "Apache-2.0" and licences["efficientat"] == "MIT"
    assert set(licences) <= {entry.family for entry in LICENCES}


def test_what_pull_knows_wins_and_its_verified_digest_is_not_recomputed(imported):
    known = {"release": "x", "url": "https://example.org/f.pt", "sha256": "f" * 64, "licence": "MIT"}
    record = provenance("efficientat", imported["official"], known)
    assert record["sha256"] == "f" * 64 and record["release"] == "x" and record["code_licence"] == "MIT"
    assert record["file"] == "mn01_tiny.pt" and record["size"] == imported["official"].stat().st_size


def test_info_shows_an_imported_checkpoint_as_table_and_json(imported):
    [row] = _info(imported["out"])
    assert row["kind"] == "checkpoint" and row["arch"] == "efficientat-mn01" and row["family"] == "efficientat"
    assert row["classes"] == 5 and row["sample_rate"] == 32000 and row["frame_output"] is False
    assert row["model_kwargs"] == {"num_classes": 5} and row["task"] == "multilabel"
    assert row["made"].startswith("imported from mn01_tiny.pt") and row["licence"] == "MIT (weights and code)"
    assert row["source"] == read_torch_file(imported["out"])["source"] and row["event_rule"] is None
    table = runner.invoke(app, ["info", str(imported["out"])])
    assert table.exit_code == 0, table.output
    for text in ("efficientat-mn01", "MIT (weights and code)", row["source"]["sha256"], "imported from"):
        assert text in table.stdout


def test_a_pulled_release_is_described_by_its_name(imported):
    from tagger.models.releases import pulled_path

    target = pulled_path("efficientat-mn01")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(imported["out"].read_bytes())
    try:
        [row] = _info("efficientat-mn01")
        assert row["path"] == str(target) and row["source"]["licence"] == "MIT"
    finally:
        target.unlink()


def test_a_run_initialised_from_an_import_keeps_its_provenance_through_a_resume(imported, synth_set, tmp_path):
    from tagger.training import trainer

    config = tiny_config("run.epochs=1", f"model.init=checkpoint:{imported['out']}")
    run = tmp_path / "run"
    trainer.train(config, trainer.data_spec(synth_set["train"]), trainer.data_spec(synth_set["valid"]), run,
                  labels_path=synth_set["labels"], show_progress=False)
    origin = read_torch_file(imported["out"])["source"]
    expected = {**origin, "derived": [{"how": "trained", "from": str(imported["out"])}]}
    assert read_torch_file(run / "last.pt")["source"] == expected
    assert read_torch_file(run / "best.pt")["source"] == expected

    (run / "config.toml").write_text((run / "config.toml").read_text().replace("epochs = 1", "epochs = 2"))
    trainer.resume(run, show_progress=False)
    assert read_torch_file(run / "last.pt")["train"]["epoch"] == 2
    assert read_torch_file(run / "last.pt")["source"] == expected

    [row] = _info(run / "last.pt")
    assert row["made"].startswith("trained by tagger to epoch 2") and f"checkpoint:{imported['out']}" in row["made"]
    assert row["licence"] == "MIT (weights and code)" and row["source"]["derived"] == expected["derived"]


def test_a_weight_average_keeps_its_members_provenance(imported, tmp_path):
    payload = read_torch_file(imported["out"])
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path, seed in ((a, 1), (b, 2)):
        model = spread_model("efficientat-mn01", 5, seed)
        step = {"how": "trained", "from": str(imported["out"])}
        save_checkpoint(path, model, LABELS, train={"epoch": 1.0}, source=derived_source([payload["source"]], step))
    result = runner.invoke(app, ["ensemble", str(a), str(b), "--mode", "weights", "--out", str(tmp_path / "wa.pt")])
    assert result.exit_code == 0, result.output
    source = read_torch_file(tmp_path / "wa.pt")["source"]
    assert {k: v for k, v in source.items() if k != "derived"} == payload["source"]
    assert source["derived"] == [{"how": "trained", "from": str(imported["out"])},
                                 {"how": "weight average", "from": [str(a), str(b)]}]
    [row] = _info(tmp_path / "wa.pt")
    assert row["made"].startswith("weight average of 2 checkpoints") and row["licence"] == "MIT (weights and code)"


def test_weights_of_several_origins_keep_every_licence(imported):
    mit = read_torch_file(imported["out"])["source"]
    apache = {"family": "passt", "file": "passt.pt", "sha256": "0" * 64, **_licences("passt")}
    merged = derived_source([mit, None, apache], {"how": "weight average", "from": ["x", "y", "z"]})
    assert merged["sources"] == [mit, apache] and merged["licence"] == "MIT + Apache-2.0"
    assert merged["family"] == "efficientat + passt" and merged["derived"][-1]["how"] == "weight average"
    assert derived_source([None, {}], {"how": "trained"}) is None  # from scratch: nobody else's licence
    again = derived_source([merged, mit], {"how": "trained"})
    assert again["sources"] == [mit, apache] and len(again["derived"]) == 2


def test_info_of_an_ensemble_lists_its_members_with_their_provenance(imported, tmp_path):
    member = read_torch_file(imported["out"])
    labels = LabelSet.from_list_of_dicts(member["labels"])
    other = spread_model("efficientat-mn01", 5, 3)
    save_checkpoint(tmp_path / "other.pt", other, labels, source={"family": "passt", "file": "passt.pt",
                                                                  "sha256": "0" * 64, **_licences("passt")})
    second = read_torch_file(tmp_path / "other.pt")
    save_ensemble(tmp_path / "ens.pt", [member, second], [str(imported["out"]), "other.pt"], "mean-prob", [0.5, 0.5],
                  labels, "multilabel")
    [row] = _info(tmp_path / "ens.pt")
    assert row["kind"] == "ensemble" and row["classes"] == 5 and len(row["members"]) == 2
    first, last = row["members"]
    assert first["source"] == member["source"] and first["path"] == str(imported["out"])
    assert last["licence"] == "Apache-2.0 (weights and code)"
    assert row["licence"] == "MIT + Apache-2.0 (weights and code)" and "prediction ensemble of 2" in row["made"]
    table = runner.invoke(app, ["info", str(tmp_path / "ens.pt")])
    assert table.exit_code == 0, table.output
    assert "members" in table.stdout and member["source"]["sha256"] in table.stdout
    rows = runner.invoke(app, ["info", str(tmp_path / "ens.pt"), "--format", "csv"]).stdout.splitlines()
    assert len(rows) == 4 and rows[0].startswith("path,kind,arch")  # header, the ensemble, two members


def test_a_stored_event_rule_is_described(imported, tmp_path):
    from tagger.api import EventRule, store_event_rule

    copy = tmp_path / "ruled.pt"
    copy.write_bytes(imported["out"].read_bytes())
    store_event_rule(copy, EventRule(on=0.3))
    [row] = _info(copy)
    assert row["event_rule"].startswith("set by hand")


@pytest.mark.parametrize("case", ["missing", "not-a-checkpoint", "official", "text"])
def test_files_that_are_no_model_give_one_line(imported, tmp_path, case):
    path = {"missing": tmp_path / "nope.pt", "official": imported["official"],
            "not-a-checkpoint": tmp_path / "garbage.pt", "text": tmp_path / "notes.txt"}[case]
    if case == "not-a-checkpoint":
        path.write_bytes(b"\x00\x01 not a zip")
    if case == "text":
        path.write_text("hello")
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    words = {"missing": "not found", "official": "not a tagger checkpoint", "not-a-checkpoint": "not a readable",
             "text": "not a readable"}[case]
    assert words in result.stderr


def test_the_licence_table_covers_every_importer_and_agrees_with_the_releases():
    from tagger import models
    from tagger.models.releases import RELEASES

    models.importer("ast")  # loads every family, so every importer is registered
    families = set(models._IMPORTERS)
    assert families <= {entry.family for entry in LICENCES}
    for release in RELEASES:
        assert release.licence == family_licences(release.family).weights, release.name
    for entry in LICENCES:
        assert "https://" in entry.source and entry.weights and entry.code
    assert family_licences("ced").weights == "Apache-2.0" and family_licences("ced").code == "GPL-3.0"
    assert family_licences("nonesuch").weights == "unknown"


def _licences(family: str) -> dict:
    entry = family_licences(family)
    return {"licence": entry.weights, "code_licence": entry.code, "licence_source": entry.source}
