"""The CLI shell: cheap --help, --version, one-line user errors, result formats."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from tagger import __version__
from tagger.cli import app

runner = CliRunner()


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from tagger.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = [m for m in ('torch', 'numpy', 'torchaudio', 'librosa', 'timm') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"--help imported {done.stdout.strip()}"


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"tagger {__version__}"


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "tagger", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and __version__ in done.stdout


def test_help_names_value_kinds_as_click_does():
    """TEXT, PATH, INTEGER and FILES... in help, not typer's <str> / <list[Path]> annotations."""
    done = subprocess.run([sys.executable, "-m", "tagger", "ensemble", "--help"], capture_output=True, text=True,
                          env={"COLUMNS": "120", "PATH": ""}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "CHECKPOINTS" in done.stdout and "PATH..." in done.stdout and "INTEGER" in done.stdout
    assert "<" not in done.stdout.replace("<=", "")


def test_user_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nowhere.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tagger",
            "extract-features",
            str(missing),
            "--frontend",
            "kaldi-fbank",
            "--out",
            str(tmp_path / "f"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "nowhere.csv" in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_bad_output_format_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["synthesize", str(tmp_path / "s"), "--format", "yaml"])
    assert result.exit_code == 2
    assert "--format 'yaml'" in result.output


def test_synthesize_json_output(tmp_path):
    result = runner.invoke(
        app, ["synthesize", str(tmp_path / "s"), "--clips", "8", "--seconds", "1", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["split"] for r in rows] == ["train", "valid"]
    assert rows[0]["clips"] + rows[1]["clips"] == 8


def test_synthesize_csv_output(tmp_path):
    result = runner.invoke(
        app, ["synthesize", str(tmp_path / "s"), "--clips", "4", "--seconds", "1", "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("split,clips,")
    assert len(lines) == 3
