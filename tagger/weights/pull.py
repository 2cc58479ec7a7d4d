"""`tagger pull`: fetch an official checkpoint, verify it and convert it into the cache; tagger's only network code."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tagger.errors import TaggerError
from tagger.fileio import atomic_path
from tagger.models.releases import (
    LabelFile,
    Release,
    default_name,
    downloads_dir,
    find_release,
    labels_path,
    pulled_path,
    releases,
    set_default,
)
from tagger.version import __version__

CHUNK = 1 << 20
TIMEOUT_S = 60
ATTEMPTS = 3  # connections that drop after making progress are resumed this many times before giving up
USER_AGENT = f"tagger/{__version__} (tagger pull)"

Progress = Callable[[int, "int | None"], None]
Note = Callable[[str], None]


@dataclass
class PullResult:
    name: str
    path: Path  # the converted tagger checkpoint
    raw: Path | None = None  # the official file it came from (None when nothing had to be done)
    sha256: str | None = None  # of the official file
    verified: bool = False  # the digest matched the one the registry knows
    downloaded: bool = False  # bytes came over the network this time
    converted: bool = False
    default: bool = False  # the release is the default model now
    notes: list[str] = field(default_factory=list)


class _Dropped(Exception):
    """The connection ended before the announced length; what arrived is kept in the .part file."""


# --------------------------------------------------------------------------------------------- pull


def pull(
    name: str,
    source: str | Path | None = None,
    make_default: bool = False,
    on_progress: Progress | None = None,
    on_note: Note | None = None,
    labels: str | Path | None = None,
    table: Sequence[Release] | None = None,
) -> PullResult:
    """Download (or take from `source`: a local file or an http(s) URL), verify, convert into the cache.

    labels: a local class_labels_indices.csv, for machines without network; otherwise it is downloaded once.
    The first release pulled becomes the default model when none is set; `make_default` switches to this one.
    """
    release = find_release(name, table)
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if on_note is not None:
            on_note(message)

    out = pulled_path(release.name)
    result = PullResult(release.name, out, notes=notes)
    if out.is_file():
        note(f"{release.name} is already pulled: {out} (delete it to convert again)")
    else:
        raw, digest, origin, downloaded = _official_file(release, source, on_progress, note)
        label_file, label_digest, label_origin = _label_file(release.labels, labels, note)
        provenance = {
            "release": release.name, "arch": release.arch, "family": release.family, "url": origin,
            "file": release.filename, "size": raw.stat().st_size, "sha256": digest,
            "sha256_published": release.sha256 is not None, "licence": release.licence, "paper": release.paper,
            "home": release.home, "labels": {"url": label_origin, "sha256": label_digest,
                                             "licence": release.labels.licence},
        }
        _convert(release, raw, label_file, provenance, out, note)
        result.raw, result.sha256, result.verified = raw, digest, release.sha256 is not None
        result.downloaded, result.converted = downloaded, True
        note(f"converted to {out}")
    if make_default or default_name() is None:
        set_default(release.name)
        note(f"{release.name} is the default model now")
    result.default = default_name() == release.name
    return result


def list_releases(table: Sequence[Release] | None = None) -> list[dict]:
    """One row per release for `tagger pull --list`: what it is, how big, under which licence, and its state."""
    current = default_name()
    rows = []
    for release in releases(table):
        pulled = pulled_path(release.name).is_file()
        rows.append({
            "name": release.name, "arch": release.arch, "family": release.family, "mAP": release.mAP,
            "size_MB": None if release.size is None else round(release.size / 1e6, 1),
            "licence": release.licence,
            "from": urllib.parse.urlsplit(release.url).hostname if release.url else "manual download",
            "sha256": "known" if release.sha256 else "computed on pull",
            "pulled": "yes" if pulled else "no",
            "default": "yes" if pulled and release.name == current else "no",
        })
    return rows


# --------------------------------------------------------------------------------------------- the official file


def _is_url(source: str | Path) -> bool:
    return isinstance(source, str) and urllib.parse.urlsplit(source).scheme in ("http", "https")


def _official_file(release: Release, source, on_progress, note) -> tuple[Path, str, str, bool]:
    """(path, sha256, where it came from, downloaded now) of the verified official file."""
    if source is not None and not _is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise TaggerError(f"--from {source}: file not found; give the path of {release.filename}")
        digest = verify(path, release.size, release.sha256, delete=False)
        _report_digest(release, digest, note)
        return path, digest, str(path.resolve()), False
    url = str(source) if source is not None else release.url
    if url is None:
        raise TaggerError(f"{release.name}: {release.manual}")
    final = downloads_dir() / release.filename
    if final.is_file():
        try:
            digest = verify(final, release.size, release.sha256, delete=True)
        except TaggerError as error:
            note(f"{error}; downloading it again")
        else:
            note(f"{release.filename} is already downloaded: {final}")
            return final, digest, url, False
    part = final.with_name(final.name + ".part")
    download(url, part, release.size, on_progress, note)
    try:
        digest = verify(part, release.size, release.sha256, delete=True, shown=f"{release.filename} from {url}")
    except TaggerError as error:
        raise TaggerError(f"{error}; run the same command to download it again") from None
    _report_digest(release, digest, note)
    os.replace(part, final)
    return final, digest, url, True


def _report_digest(release: Release, digest: str, note: Note) -> None:
    if release.sha256 is None:
        note(f"SHA-256 of {release.filename}: {digest} (the authors publish none; recorded in the checkpoint)")
    else:
        note(f"verified {release.filename} (SHA-256 {digest[:12]}…)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, size: int | None, sha256: str | None, delete: bool, shown: str | None = None) -> str:
    """The file's SHA-256, after checking it against the known size and digest. A mismatch deletes a file
    tagger downloaded (`delete`); a user's own --from file is never deleted."""
    shown = shown or path.name
    outcome = "the file was deleted" if delete else "the file was left as it is"
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        if delete:
            path.unlink(missing_ok=True)
        raise TaggerError(f"{shown}: {actual_size:,} bytes, expected {size:,}; {outcome}")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256.lower():
        if delete:
            path.unlink(missing_ok=True)
        raise TaggerError(f"{shown}: SHA-256 mismatch: expected {sha256}, got {digest}; {outcome}")
    return digest


# --------------------------------------------------------------------------------------------- downloading


def download(url: str, part: Path, size: int | None = None, on_progress: Progress | None = None,
             on_note: Note | None = None) -> None:
    """Stream `url` into `part`, resuming what is already there with a Range request; a dropped connection is
    resumed up to ATTEMPTS times while it makes progress, then the .part file stays for the next run."""
    note = on_note or (lambda _message: None)
    part.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have >= size:
            if have == size:
                return  # complete from an earlier run; verification decides whether it is good
            part.unlink()  # longer than the file can be: not ours to resume
            have = 0
        if have:
            note(f"resuming {part.name} at {have:,} bytes")
        try:
            _transfer(url, part, have, size, on_progress, note)
            return
        except _Dropped as dropped:
            failures += 1
            now = part.stat().st_size if part.exists() else 0
            if now > have and failures < ATTEMPTS:
                note(f"the connection dropped at {now:,} bytes; resuming")
                continue
            raise TaggerError(f"the download of {url} stopped at {now:,} bytes ({dropped}); run the same command "
                              f"again to resume from {part}") from None


def _open(url: str, have: int):
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return None  # the server has nothing past what we hold: start again
        raise TaggerError(f"{url}: HTTP {error.code} {error.reason}; the file may have moved: check the "
                          "release's page, or download it by hand and use --from FILE") from None
    except urllib.error.URLError as error:
        raise TaggerError(f"cannot reach {urllib.parse.urlsplit(url).hostname} ({_reason(error.reason)}): this "
                          "machine seems offline; download the file elsewhere and run `tagger pull NAME --from "
                          "FILE`") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
        raise TaggerError(f"{url}: no answer ({_reason(error)}); try again later, or use --from FILE") from None


def _reason(reason) -> str:
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def _transfer(url: str, part: Path, have: int, size: int | None, on_progress: Progress | None, note: Note) -> None:
    response = _open(url, have)
    if response is None:
        part.unlink(missing_ok=True)
        note("the server cannot resume this download; starting over")
        have, response = 0, _open(url, 0)
    with response:
        if have and response.status != 206:
            note("the server ignored the resume request; starting over")  # a 200 carries the whole file
            have = 0
        elif have and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            part.unlink(missing_ok=True)
            raise _Dropped(f"the server resumed at another offset ({response.headers.get('Content-Range')})")
        if response.headers.get_content_type() == "text/html":
            raise TaggerError(f"{url} answered with a web page, not the file; the link may have changed: "
                              "download it in a browser and use --from FILE")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else size
        _check_space(part, (total or 0) - have)
        done = have
        try:
            with open(part, "ab" if have else "wb") as handle:
                if on_progress is not None:
                    on_progress(done, total)
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
                        raise _Dropped(_reason(error)) from None
                    if not chunk:
                        break
                    handle.write(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
        except OSError as error:
            raise TaggerError(f"cannot write {part}: {error.strerror or error}") from None
    if total is not None and done < total:
        raise _Dropped(f"{done:,} of {total:,} bytes arrived")


def _check_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise TaggerError(f"{path.parent} has {free / 1e6:,.0f} MB free but the download needs {needed / 1e6:,.0f} "
                          f"MB; free some space or set TAGGER_HOME to a larger disk")


# --------------------------------------------------------------------------------------------- labels


def _label_file(labels: LabelFile, local: str | Path | None, note: Note) -> tuple[Path, str, str]:
    """(path, sha256, where from) of the class list, checked by shape: given, cached, or downloaded once."""
    if local is not None:
        path = Path(local).expanduser()
        if not path.is_file():
            raise TaggerError(f"--labels {local}: file not found")
        check_labels(path, labels)
        cached = labels_path(labels)
        if not cached.is_file():  # later pulls on this offline machine then need no --labels
            with atomic_path(cached) as tmp:
                shutil.copyfile(path, tmp)
        return path, sha256_of(path), str(path.resolve())
    path = labels_path(labels)
    if path.is_file():
        try:
            check_labels(path, labels)
            return path, sha256_of(path), labels.url
        except TaggerError as error:
            note(f"{error}; downloading it again")
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)  # small: never worth resuming
    try:
        download(labels.url, part, on_note=note)
    except TaggerError as error:
        raise TaggerError(f"{error} (the class names {labels.filename}; a local copy can be given with "
                          "--labels FILE)") from None
    try:
        check_labels(part, labels)
    except TaggerError as error:
        part.unlink(missing_ok=True)
        raise TaggerError(f"{labels.url} is not the expected class list: {error}; it was deleted") from None
    os.replace(part, path)
    note(f"downloaded the {labels.key} class names ({labels.rows} classes) to {path}")
    return path, sha256_of(path), labels.url


def check_labels(path: Path, labels: LabelFile) -> None:
    """The header, the row count and the indices 0..rows-1: what a class list must have to name the outputs.
    No checksum exists for it, so its shape is what can be checked."""
    from tagger.labels import LabelSet

    try:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError) as error:
        raise TaggerError(f"{path}: unreadable class list ({error})") from None
    header = tuple(cell.strip().lower() for cell in first[0].split(",")) if first else ()
    if header != labels.header:
        raise TaggerError(f"{path}: header {','.join(header) or '(empty)'}, expected {','.join(labels.header)}")
    count = len(LabelSet.from_csv(path))  # checks that the indices run 0..n-1 without gaps
    if count != labels.rows:
        raise TaggerError(f"{path}: {count} classes, expected {labels.rows}")


# --------------------------------------------------------------------------------------------- conversion


def _convert(release: Release, raw: Path, label_file: Path, provenance: dict, out: Path, note: Note) -> None:
    """The import-checkpoint path (same importer, same checks), the provenance recorded, written atomically."""
    from tagger.labels import LabelSet
    from tagger.weights.importing import import_checkpoint

    result = import_checkpoint(release.family, raw, out, arch=release.arch, labels=LabelSet.from_csv(label_file),
                               force=True, source=provenance)
    for message in result.notes:
        note(message)
