"""`tagger models`: the recorded catalog equals the registry, lists without importing torch, marks defaults."""

from __future__ import annotations

import json
import subprocess
import sys

from tagger.catalog import FIELDS, build_catalog, catalog
from tagger.models import FAMILY_DEFAULTS, create_model, list_models, resolve_arch


def test_recorded_catalog_equals_the_registry():
    """models/catalog.json is what the registry builds; after adding a model run `python -m tagger.catalog`."""
    assert catalog() == build_catalog()
    assert [tuple(row) for row in catalog()] == [FIELDS] * len(list_models())


def test_listing_the_zoo_imports_no_torch():
    code = ("import sys\nfrom tagger.cli import app\n"
            "try:\n    app(['models', '--format', 'json'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "NO TORCH", done.stderr
    rows = json.loads(done.stdout)
    assert {row["name"] for row in rows} == {entry.name for entry in list_models()}


def test_family_names_pick_the_main_audioset_model():
    defaults = {row["name"]: row["default"] for row in catalog() if row["default"]}
    assert defaults == {arch: f"--arch {family}" for family, arch in FAMILY_DEFAULTS.items()}
    assert resolve_arch("ast") == "ast-base384" and resolve_arch("efficientat") == "efficientat-mn10"
    assert resolve_arch("cnn14") == "panns-cnn14" and resolve_arch("mn01") == "efficientat-mn01"
    assert resolve_arch("panns-cnn6") == "panns-cnn6"
    model = create_model("htsat", num_classes=3, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
    assert model.arch == "htsat-tiny"  # checkpoints record the full name
