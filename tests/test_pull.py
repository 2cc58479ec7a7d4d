"""`tagger pull` against a local HTTP server: download, resume, verify, convert, provenance, the cache folder."""

from __future__ import annotations

import hashlib
import io
import threading
import urllib.parse
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tagger.checkpoint import load_checkpoint
from tagger.errors import TaggerError
from tagger.models import create_model, model_entry
from tagger.models.releases import (
    AUDIOSET_LABELS,
    RELEASES,
    LabelFile,
    Release,
    default_model,
    default_name,
    find_release,
    pulled_path,
    set_default,
    tagger_home,
)
from tagger.weights import pull as pull_module
from tagger.weights.pull import list_releases, pull

# --------------------------------------------------------------------------------------------- a local server


class Server:
    """What the handler serves and how it misbehaves; it records each request's path and Range header."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None  # bytes sent before the connection is dropped ...
        self.cuts_left = 0  # ... for this many responses
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self.url = ""

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: the connection closes after each response
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                wanted = self.headers.get("Range")
                server.requests.append((path, wanted))
                body = server.files.get(path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if wanted and not server.ignore_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cuts_left > 0 and server.cut_after is not None:
                    server.cuts_left -= 1
                    payload = payload[: server.cut_after]
                self.wfile.write(payload)

        return Handler

    def ranges(self, path: str) -> list[str | None]:
        return [wanted for seen, wanted in self.requests if seen == path]


@pytest.fixture
def server():
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "tagger-home"
    monkeypatch.setenv("TAGGER_HOME", str(folder))
    for proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)  # the local server must be reached directly
    monkeypatch.setattr(pull_module, "CHUNK", 64 * 1024)  # several chunks per file, so progress and cuts show
    return folder


# --------------------------------------------------------------------------------------------- test material


@pytest.fixture(scope="module")
def official():
    """An EfficientAT mn01 file in the official layout (raw state_dict, no front-end) and the model it holds."""
    torch.manual_seed(0)
    model = create_model("efficientat-mn01", num_classes=527).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("frontend.")}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), model


def label_csv(rows: int = 527) -> bytes:
    """Made-up class names in AudioSet's layout (one with a quoted comma, as the real file has)."""
    lines = ["index,mid,display_name"] + [f'{i},/m/test{i},"Sound {i}"' for i in range(rows)]
    lines[3] = '2,/m/test2,"Sound 2, loud"'
    return ("\n".join(lines) + "\n").encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release(server: Server, data: bytes, name: str = "tiny-mn01", **changes) -> Release:
    """A release served by the local server; `changes` overrides fields (sha256, url, manual ...)."""
    filename = f"{name}_as_mAP_000.pt"
    server.files[f"/{filename}"] = data
    server.files.setdefault("/labels.csv", label_csv())
    labels = LabelFile("testset", f"{server.url}/labels.csv", "class_labels_indices.csv", 527,
                       AUDIOSET_LABELS.header, "test")
    base = Release(name=name, arch="efficientat-mn01", family="efficientat", filename=filename,
                   url=f"{server.url}/{filename}", mAP=None, licence="MIT", paper="a test", home="here",
                   size=len(data), sha256=sha(data), labels=labels)
    return replace(base, **changes)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------- pulling


def test_full_pull_verifies_converts_records_and_then_skips(server, home, official):
    data, reference = official
    table = [release(server, data)]
    progress, notes = [], []
    result = pull("tiny-mn01", table=table, on_progress=lambda d, t: progress.append((d, t)), on_note=notes.append)

    out = home / "models" / "tiny-mn01.pt"
    assert result.path == out and out.is_file() and result.converted and result.downloaded and result.verified
    assert result.sha256 == sha(data) and result.raw == home / "downloads" / table[0].filename
    assert result.raw.read_bytes() == data and not list((home / "downloads").glob("*.part"))
    assert (home / "labels" / "testset_class_labels_indices.csv").is_file()
    assert progress[-1] == (len(data), len(data)) and len(progress) > 2
    # The first pull becomes the default model; the marker is a small text file.
    assert result.default and default_name() == "tiny-mn01" and default_model() == out
    assert (home / "default").read_text() == "tiny-mn01\n"

    model, meta = load_checkpoint(out)
    source = meta["source"]
    assert source["sha256"] == sha(data) and source["url"] == table[0].url and source["release"] == "tiny-mn01"
    assert source["licence"] == "MIT" and source["paper"] == "a test" and source["sha256_published"]
    assert source["labels"]["sha256"] == sha(label_csv())
    assert meta["labels"].name_of(2) == "Sound 2, loud" and meta["train"]["imported_from"] == table[0].filename
    wave = torch.randn(2, 32000) * 0.1
    with torch.inference_mode():
        torch.testing.assert_close(model(wave).logits, reference(wave).logits, rtol=0, atol=0)

    asked = len(server.requests)
    again = pull("tiny-mn01", table=table, on_note=notes.append)
    assert len(server.requests) == asked and not again.converted and not again.downloaded
    assert "already pulled" in notes[-1]

    out.unlink()  # the verified download is reused: conversion only
    third = pull("tiny-mn01", table=table, on_note=notes.append)
    assert len(server.requests) == asked and third.converted and not third.downloaded
    assert any("already downloaded" in n for n in notes)


def test_dropped_connection_is_resumed_with_range(server, home, official):
    data, _ = official
    table = [release(server, data)]
    server.cut_after, server.cuts_left = 100_000, 1
    notes = []
    result = pull("tiny-mn01", table=table, on_note=notes.append)
    assert server.ranges(f"/{table[0].filename}") == [None, "bytes=100000-"]
    assert result.raw.read_bytes() == data and result.verified
    assert any("resuming" in n for n in notes)


def test_download_that_keeps_dropping_is_kept_for_the_next_run(server, home, official):
    data, _ = official
    table = [release(server, data)]
    server.cut_after, server.cuts_left = 50_000, 100
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", table=table)
    assert "run the same command again to resume" in one_line(error)
    part = home / "downloads" / f"{table[0].filename}.part"
    assert part.stat().st_size == 3 * 50_000 and not pulled_path("tiny-mn01").exists()

    server.cuts_left = 0
    result = pull("tiny-mn01", table=table)
    assert server.ranges(f"/{table[0].filename}")[-1] == "bytes=150000-"
    assert result.raw.read_bytes() == data and not part.exists()


def test_ctrl_c_leaves_the_part_file_to_resume(server, home, official):
    data, _ = official
    table = [release(server, data)]

    def interrupt(done, total):
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull("tiny-mn01", table=table, on_progress=interrupt)
    part = home / "downloads" / f"{table[0].filename}.part"
    assert part.stat().st_size == 64 * 1024
    result = pull("tiny-mn01", table=table)
    assert server.ranges(f"/{table[0].filename}")[-1] == f"bytes={64 * 1024}-"
    assert result.raw.read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(server, home, official):
    data, _ = official
    table = [release(server, data)]
    part = home / "downloads" / f"{table[0].filename}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # left by an earlier run; not a prefix of the file
    server.ignore_range = True
    notes = []
    result = pull("tiny-mn01", table=table, on_note=notes.append)
    assert server.ranges(f"/{table[0].filename}") == ["bytes=1000-"]
    assert result.raw.read_bytes() == data and result.verified
    assert any("ignored the resume request" in n for n in notes)


def test_wrong_checksum_deletes_the_download(server, home, official):
    data, _ = official
    table = [release(server, data, sha256="0" * 64)]
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", table=table)
    message = one_line(error)
    assert "SHA-256 mismatch" in message and "0" * 64 in message and sha(data) in message and "deleted" in message
    assert not list((home / "downloads").iterdir()) and not pulled_path("tiny-mn01").exists()
    assert default_name() is None


def test_wrong_size_is_caught_before_hashing(server, home, official):
    data, _ = official
    table = [release(server, data, size=len(data) + 1)]
    server.files[f"/{table[0].filename}"] = data
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", table=table)
    assert "expected" in one_line(error) and not list((home / "downloads").iterdir())


def test_http_404_names_the_url(server, home, official):
    data, _ = official
    table = [release(server, data, url=f"{server.url}/moved.pt")]
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", table=table)
    message = one_line(error)
    assert "404" in message and f"{server.url}/moved.pt" in message and "--from" in message


def test_no_network_suggests_from_file(home, official, server):
    data, _ = official
    table = [release(server, data, url="http://127.0.0.1:9/tiny.pt")]  # nothing listens on the discard port
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", table=table)
    assert "offline" in one_line(error) and "--from FILE" in str(error.value)


def test_from_a_local_file_is_verified_and_never_deleted(server, home, official, tmp_path):
    data, _ = official
    local = tmp_path / "copy.pt"
    local.write_bytes(data)
    bad = release(server, data, sha256="f" * 64, url=None, manual="by hand")
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", source=str(local), table=[bad])
    assert "SHA-256 mismatch" in one_line(error) and "left as it is" in str(error.value)
    assert local.read_bytes() == data

    good = release(server, data, url=None, manual="by hand")
    result = pull("tiny-mn01", source=local, table=[good])
    assert result.converted and result.verified and not result.downloaded and result.raw == local
    _, meta = load_checkpoint(result.path)
    assert meta["source"]["url"] == str(local.resolve())


def test_from_an_url_replaces_the_registry_location(server, home, official):
    data, _ = official
    table = [release(server, data, url=f"{server.url}/gone.pt")]
    server.files["/mirror.pt"] = data
    result = pull("tiny-mn01", source=f"{server.url}/mirror.pt", table=table)
    assert result.downloaded and result.verified
    _, meta = load_checkpoint(result.path)
    assert meta["source"]["url"] == f"{server.url}/mirror.pt"


def test_manual_only_release_explains_what_to_do(server, home, official, tmp_path):
    data, _ = official
    manual = "download it from the authors' folder, then run `tagger pull tiny-mn01 --from FILE`"
    table = [release(server, data, url=None, manual=manual, size=None, sha256=None)]
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", table=table)
    assert manual in one_line(error)

    local = tmp_path / "by-hand.pt"
    local.write_bytes(data)
    notes = []
    result = pull("tiny-mn01", source=local, table=table, on_note=notes.append)
    assert result.sha256 == sha(data) and not result.verified
    assert any(sha(data) in n and "publish none" in n for n in notes)
    _, meta = load_checkpoint(result.path)
    assert meta["source"]["sha256"] == sha(data) and not meta["source"]["sha256_published"]


def test_a_bad_label_file_is_refused_and_not_cached(server, home, official):
    data, _ = official
    table = [release(server, data)]
    server.files["/labels.csv"] = label_csv(rows=526)
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", table=table)
    assert "526 classes, expected 527" in one_line(error)
    assert not list((home / "labels").iterdir()) and not pulled_path("tiny-mn01").exists()


def test_local_label_file_for_offline_machines(server, home, official, tmp_path):
    data, _ = official
    table = [release(server, data)]
    table[0] = replace(table[0], labels=replace(table[0].labels, url="http://127.0.0.1:9/labels.csv"))
    with pytest.raises(TaggerError) as error:
        pull("tiny-mn01", table=table)
    assert "--labels FILE" in one_line(error)
    labels = tmp_path / "class_labels_indices.csv"
    labels.write_bytes(label_csv())
    result = pull("tiny-mn01", table=table, labels=labels)
    assert result.converted
    assert (home / "labels" / "testset_class_labels_indices.csv").read_bytes() == label_csv()  # kept for next time


def test_list_marks_pulled_and_default(server, home, official):
    data, _ = official
    table = [release(server, data, name="tiny-a"), release(server, data, name="tiny-b")]
    rows = {row["name"]: row for row in list_releases(table)}
    assert rows["tiny-a"]["pulled"] == "no" and rows["tiny-a"]["default"] == "no"
    assert rows["tiny-a"]["from"] == "127.0.0.1" and rows["tiny-a"]["size_MB"] == round(len(data) / 1e6, 1)
    pull("tiny-a", table=table)
    pull("tiny-b", table=table)  # a default exists: this one does not replace it
    rows = {row["name"]: row for row in list_releases(table)}
    assert (rows["tiny-a"]["pulled"], rows["tiny-a"]["default"]) == ("yes", "yes")
    assert (rows["tiny-b"]["pulled"], rows["tiny-b"]["default"]) == ("yes", "no")
    assert pull("tiny-b", table=table, make_default=True).default
    assert default_model() == pulled_path("tiny-b") and list_releases(table)[1]["default"] == "yes"


def test_default_marker_needs_a_pulled_model(home):
    with pytest.raises(TaggerError) as error:
        set_default("efficientat-mn04")
    assert "tagger pull efficientat-mn04" in one_line(error)
    assert default_model() is None
    (home / "default").parent.mkdir(parents=True, exist_ok=True)
    (home / "default").write_text("efficientat-mn04\n")  # the marker outlived its checkpoint
    assert default_model() is None and default_name() == "efficientat-mn04"


def test_tagger_home_and_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("TAGGER_HOME", str(tmp_path / "home"))
    assert tagger_home() == tmp_path / "home"
    assert pulled_path("x") == tmp_path / "home" / "models" / "x.pt"
    monkeypatch.delenv("TAGGER_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tagger_home() == tmp_path / "xdg" / "tagger"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert tagger_home() == tmp_path / "user" / ".cache" / "tagger"


# --------------------------------------------------------------------------------------------- the registry


def test_every_release_names_a_registered_architecture():
    names = [r.name for r in RELEASES]
    assert len(names) == len(set(names))
    for r in RELEASES:
        entry = model_entry(r.arch)
        assert entry.name == r.arch and entry.family == r.family, r.name
        assert r.name == r.arch or r.name.startswith(r.arch + "-"), r.name
        assert (r.url is None) == (r.manual is not None), r.name
        assert r.url is None or r.url.startswith("https://"), r.name
        assert r.sha256 is None or len(r.sha256) == 64 and int(r.sha256, 16) >= 0, r.name
        assert r.licence and r.paper and r.filename and r.mAP is not None and 0.2 < r.mAP < 0.6, r.name
    # The main release of every family is named as its architecture.
    families = {r.family for r in RELEASES}
    assert families == {"panns", "efficientat", "ast", "passt", "htsat", "psla"}
    for family in families:
        assert any(r.name == r.arch for r in RELEASES if r.family == family)


def test_find_release_takes_names_short_names_and_families():
    assert find_release("efficientat-mn04").sha256 == "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"
    assert find_release("mn10").name == "efficientat-mn10"
    assert find_release("cnn14").name == "panns-cnn14"
    assert find_release("ast").name == "ast-base384"
    assert find_release("HTSAT-Tiny").url is None
    with pytest.raises(TaggerError) as error:
        find_release("efficientat-mn11")
    assert "tagger pull --list" in one_line(error) and "efficientat-mn10" in str(error.value)
    with pytest.raises(TaggerError) as error:
        find_release("ast-tiny224")
    assert "no released" in one_line(error)


# --------------------------------------------------------------------------------------------- the real file


def test_real_mn04_pulled_from_a_local_server_tags_speech(server, home):
    """The real mn04_as file with the registry's real SHA-256, served locally, pulled, and tagging speech."""
    from conftest import shared_path

    folder = shared_path("data", "pretrained", "efficientat_mn04_as")
    speech = shared_path("data", "samples", "speech.wav")
    from tagger.audio import load

    real = find_release("efficientat-mn04")
    server.files[f"/{real.filename}"] = (folder / real.filename).read_bytes()
    server.files["/class_labels_indices.csv"] = (folder / "class_labels_indices.csv").read_bytes()
    labels = replace(real.labels, url=f"{server.url}/class_labels_indices.csv")
    local = replace(real, url=f"{server.url}/{real.filename}", labels=labels)
    result = pull("efficientat-mn04", table=[local])
    assert result.verified and result.sha256 == real.sha256

    model, meta = load_checkpoint(result.path)
    assert meta["source"]["sha256"] == real.sha256 and meta["source"]["licence"] == "MIT"
    wave = torch.from_numpy(load(speech, model.sample_rate))[None]
    with torch.inference_mode():
        top = model(wave).logits[0].topk(3).indices.tolist()
    assert "Speech" in {meta["labels"].name_of(i) for i in top}


# --------------------------------------------------------------------------------------------- the command


def test_pull_then_predict_without_model(server, home, official, tmp_path, monkeypatch):
    """The first-contact path: `tagger pull NAME`, then `tagger predict clip.wav --top-k 5` with no --model."""
    import json

    from conftest import tone, write_wav
    from typer.testing import CliRunner

    from tagger.cli import app
    from tagger.models import releases as registry

    data, _ = official
    monkeypatch.setattr(registry, "RELEASES", (release(server, data),))
    monkeypatch.delenv("TAGGER_MODEL", raising=False)
    runner = CliRunner()
    listed = runner.invoke(app, ["pull", "--list", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    assert [(r["name"], r["pulled"]) for r in json.loads(listed.stdout)] == [("tiny-mn01", "no")]
    pulled = runner.invoke(app, ["pull", "tiny-mn01", "--format", "json"])
    assert pulled.exit_code == 0, pulled.output
    (row,) = json.loads(pulled.stdout)
    assert row["default"] == "yes" and row["verified"] == "yes"
    assert "tiny-mn01 is the default model now" in pulled.stderr

    clip = write_wav(tmp_path / "clip.wav", tone(2.0, 32000), 32000)
    tagged = runner.invoke(app, ["predict", str(clip), "--top-k", "5", "--format", "json"])
    assert tagged.exit_code == 0, tagged.output
    (result,) = json.loads(tagged.stdout)
    assert len(result["labels"]) == 5 and result["labels"][0]["label"].startswith("Sound ")

    missing = runner.invoke(app, ["pull", "no-such-model"])
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1 and "tagger pull --list" in missing.stderr
