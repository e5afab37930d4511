"""Tests for ``denoise_lightning.datasets.download`` without any network access.

A zip laid out like the DnCNN GitHub archive at the pinned commit is built in a temporary folder
from the local copy of the data and weights, and the downloader is pointed at it with ``file://``
URL overrides (or, for the HTTP Range paths, a throw-away server on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
import zipfile
from pathlib import Path

import pytest

from denoise_lightning.datasets.download import (
    WEIGHTS_SET,
    DownloadError,
    archive_path,
    download,
    is_installed,
    load_manifest,
)
from denoise_lightning.zoo.registry import PUBLISHED_MODELS
from denoise_lightning.zoo.weights import read_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DNL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
MANIFEST = load_manifest()
SMALL_SETS = ("bsd68", "set12")
ALL_SETS = ("train400", "bsd68", "set12")
ARCHIVE_ROOT = MANIFEST["set12"].member_prefix.partition("/")[0]  # DnCNN-<commit>

if not all((SHARED_DATA / MANIFEST[name].target).is_dir() for name in ALL_SETS):
    pytest.skip(f"local benchmark data not found under {SHARED_DATA}", allow_module_level=True)


def build_archive(path: Path, sets=ALL_SETS, corrupt: tuple[str, str] | None = None,
                  omit: tuple[str, str] | None = None) -> Path:
    """Zip the local copies of ``sets`` under their archive member paths.

    ``corrupt=(set, file)`` flips one byte of that file; ``omit=(set, file)`` leaves it out.
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as bundle:
        bundle.writestr(f"{ARCHIVE_ROOT}/README.md", "not part of any data set\n")
        for name in sets:
            spec = MANIFEST[name]
            for filename in spec.files:
                if omit == (name, filename):
                    continue
                data = bytearray((SHARED_DATA / spec.target / filename).read_bytes())
                if corrupt == (name, filename):
                    data[len(data) // 2] ^= 0xFF
                bundle.writestr(spec.member(filename), bytes(data))
    return path


@pytest.fixture(scope="module")
def full_archive(tmp_path_factory) -> Path:
    return build_archive(tmp_path_factory.mktemp("source") / "DnCNN-archive.zip")


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> Path:
    return build_archive(tmp_path_factory.mktemp("source") / "DnCNN-archive.zip", sets=SMALL_SETS)


def overrides(archive: Path, sets=SMALL_SETS) -> dict[str, str]:
    return {name: archive.as_uri() for name in sets}


def assert_installed(root: Path, sets) -> None:
    """Every manifest file is in place, hashes right, equals the local copy; no temporaries left."""
    for name in sets:
        spec = MANIFEST[name]
        folder = root / spec.target
        assert sorted(p.name for p in folder.iterdir()) == sorted(spec.files)
        for filename, expected in spec.files.items():
            data = (folder / filename).read_bytes()
            assert hashlib.sha256(data).hexdigest() == expected
            assert data == (SHARED_DATA / spec.target / filename).read_bytes()


def test_download_into_empty_root_installs_all_sets(tmp_path, full_archive):
    root = tmp_path / "data"
    installed = download(root, ALL_SETS, overrides(full_archive, ALL_SETS))
    assert installed == list(ALL_SETS)
    assert_installed(root, ALL_SETS)
    assert any((root / ".downloads").glob("*.zip"))  # the archive is cached for later repairs
    assert not list((root / ".downloads").glob("*.part"))
    assert not (root / "README.md").exists()  # only manifest members are extracted


def test_second_run_downloads_nothing(tmp_path, small_archive):
    root = tmp_path / "data"
    source = tmp_path / "DnCNN-archive.zip"
    source.write_bytes(small_archive.read_bytes())
    assert download(root, SMALL_SETS, overrides(source)) == list(SMALL_SETS)
    source.unlink()  # a new fetch would now fail
    assert download(root, SMALL_SETS, overrides(source)) == []
    assert_installed(root, SMALL_SETS)


def test_damaged_file_is_restored_from_cached_archive(tmp_path, small_archive):
    root = tmp_path / "data"
    source = tmp_path / "DnCNN-archive.zip"
    source.write_bytes(small_archive.read_bytes())
    download(root, SMALL_SETS, overrides(source))
    source.unlink()
    (root / "test/set12/03.png").write_bytes(b"damaged")
    assert download(root, SMALL_SETS, overrides(source)) == ["set12"]
    assert_installed(root, SMALL_SETS)


def test_resume_from_partial_file_url(tmp_path, small_archive, monkeypatch):
    root = tmp_path / "data"
    url = small_archive.as_uri()
    data = small_archive.read_bytes()
    archive = archive_path(MANIFEST["set12"], url, root)
    part = archive.with_name(archive.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])

    requests = []
    real_urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda request, **kw: requests.append(request) or real_urlopen(request, **kw))
    assert download(root, SMALL_SETS, overrides(small_archive)) == list(SMALL_SETS)
    assert [r.get_header("Range") for r in requests] == [f"bytes={len(data) // 2}-"]
    assert not part.exists()
    assert archive.read_bytes() == data
    assert_installed(root, SMALL_SETS)


class _ArchiveServer(http.server.BaseHTTPRequestHandler):
    """Serves ``payload``; honours ``Range: bytes=N-`` only when ``honour_range`` is set."""

    payload = b""
    honour_range = True
    seen_ranges: list = []
    bytes_sent = 0
    cut_after: int | None = None

    def do_GET(self):  # noqa: N802 (http.server API)
        start = 0
        requested = self.headers.get("Range")
        type(self).seen_ranges.append(requested)
        if requested and self.honour_range:
            start = int(requested.removeprefix("bytes=").rstrip("-"))
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:  # simulate a dropped connection, once
            body, type(self).cut_after = body[: self.cut_after], None
            self.close_connection = True
        self.wfile.write(body)
        type(self).bytes_sent += len(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve(monkeypatch):
    """Start a local archive server: ``serve(payload, **handler_attributes) -> (url, handler)``."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # never route the local server through a proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    servers = []

    def start(payload: bytes, **attributes):
        handler = type("Handler", (_ArchiveServer,), {"payload": payload, "seen_ranges": [], **attributes})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/DnCNN-archive.zip", handler

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_interrupted_http_download_resumes_on_rerun(tmp_path, small_archive, serve):
    data = small_archive.read_bytes()
    url, handler = serve(data, cut_after=len(data) // 3)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="rerun to resume"):
        download(root, SMALL_SETS, {name: url for name in SMALL_SETS})
    assert not (root / "test/set12").exists()
    assert download(root, SMALL_SETS, {name: url for name in SMALL_SETS}) == list(SMALL_SETS)
    assert handler.seen_ranges == [None, f"bytes={len(data) // 3}-"]
    assert handler.bytes_sent == len(data)
    assert_installed(root, SMALL_SETS)


@pytest.mark.parametrize("honour_range", [True, False], ids=["206-partial", "200-full-body"])
def test_resume_over_http(tmp_path, small_archive, honour_range, serve):
    data = small_archive.read_bytes()
    url, handler = serve(data, honour_range=honour_range)
    root = tmp_path / "data"
    archive = archive_path(MANIFEST["set12"], url, root)
    part = archive.with_name(archive.name + ".part")
    part.parent.mkdir(parents=True)
    half = len(data) // 2
    part.write_bytes(data[:half])
    assert download(root, SMALL_SETS, {name: url for name in SMALL_SETS}) == list(SMALL_SETS)
    assert handler.seen_ranges == [f"bytes={half}-"]
    assert handler.bytes_sent == (len(data) - half if honour_range else len(data))
    assert_installed(root, SMALL_SETS)


def test_corrupted_member_raises_and_leaves_no_file(tmp_path):
    archive = build_archive(tmp_path / "DnCNN-archive.zip", sets=("set12",), corrupt=("set12", "05.png"))
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as caught:
        download(root, ("set12",), {"set12": archive.as_uri()})
    message = str(caught.value)
    assert "05.png" in message and MANIFEST["set12"].files["05.png"] in message
    corrupted_hash = hashlib.sha256(zipfile.ZipFile(archive).read(MANIFEST["set12"].member("05.png"))).hexdigest()
    assert corrupted_hash in message and "Delete" in message
    folder = root / "test/set12"
    assert not any("05.png" in p.name for p in folder.iterdir())
    assert list(folder.iterdir()) == []  # the set is installed all-or-nothing


def test_missing_member_names_member_and_archive(tmp_path):
    archive = build_archive(tmp_path / "DnCNN-archive.zip", sets=("set12",), omit=("set12", "12.png"))
    with pytest.raises(DownloadError, match=r"testsets/Set12/12\.png.*missing.*DnCNN-archive\.zip"):
        download(tmp_path / "data", ("set12",), {"set12": archive.as_uri()})


def test_unreachable_url_raises_download_error(tmp_path):
    url = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(DownloadError, match="nowhere.zip"):
        download(tmp_path / "data", ("set12",), {"set12": url})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "denoise_lightning.datasets.download", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_success_and_error(tmp_path, small_archive):
    root = tmp_path / "data"
    ok = run_cli("--root", str(root), "--sets", "set12", "--url-override", f"set12={small_archive.as_uri()}")
    assert ok.returncode == 0, ok.stderr
    assert_installed(root, ("set12",))
    again = run_cli("--root", str(root), "--sets", "set12")  # no override, no network needed
    assert again.returncode == 0 and "already present" in again.stdout

    bad = build_archive(tmp_path / "bad.zip", sets=("bsd68",), corrupt=("bsd68", "test007.png"))
    failed = run_cli("--root", str(root), "--sets", "bsd68", "--url-override", f"bsd68={bad.as_uri()}")
    assert failed.returncode != 0
    assert "test007.png" in failed.stderr and "checksum mismatch" in failed.stderr
    assert not (root / "test/bsd68/test007.png").exists()


# ---------------------------------------------------------------- the pinned archive and the published weights
def test_every_set_comes_from_one_archive_pinned_to_a_commit():
    urls = {spec.url for spec in MANIFEST.values()}
    assert len(urls) == 1
    (url,) = urls
    commit = re.fullmatch(r"https://github\.com/cszn/DnCNN/archive/([0-9a-f]{40})\.zip", url)
    assert commit, f"{url} is not an archive of one commit"
    for spec in MANIFEST.values():
        assert spec.member_prefix.startswith(f"DnCNN-{commit.group(1)}/") and commit.group(1) in spec.archive
    assert commit.group(1) in json.loads((REPO_ROOT / "denoise_lightning/datasets/manifest.json").read_text())["source"]


def test_manifest_checksums_match_the_local_copy_of_every_set():
    """The sha256 of all 486 files (Train400, BSD68, Set12 and the six published .mat files) equal the local copy."""
    if not (SHARED_DATA / MANIFEST[WEIGHTS_SET].target).is_dir():
        pytest.skip(f"published DnCNN weights not found under {SHARED_DATA}")
    assert [name for name, spec in MANIFEST.items() if not is_installed(spec, SHARED_DATA)] == []
    assert sorted(PUBLISHED_MODELS[name].file for name in PUBLISHED_MODELS) == sorted(MANIFEST[WEIGHTS_SET].files)


@pytest.fixture(scope="module")
def weights_archive(tmp_path_factory) -> Path:
    if not (SHARED_DATA / MANIFEST[WEIGHTS_SET].target).is_dir():
        pytest.skip(f"published DnCNN weights not found under {SHARED_DATA}")
    return build_archive(tmp_path_factory.mktemp("source") / "DnCNN-archive.zip", sets=(WEIGHTS_SET,))


def test_weights_are_fetched_verified_and_converted_once(tmp_path, weights_archive, serve):
    url, handler = serve(weights_archive.read_bytes())
    root, weights = tmp_path / "data", tmp_path / "weights"
    assert download(root, (WEIGHTS_SET,), {WEIGHTS_SET: url}, weights_dir=weights) == [WEIGHTS_SET]
    spec = MANIFEST[WEIGHTS_SET]
    for name, expected in spec.files.items():  # the release files are kept, byte-exact, for later conversions
        assert hashlib.sha256((root / spec.target / name).read_bytes()).hexdigest() == expected
    assert sorted(p.name for p in weights.iterdir()) == sorted(
        f"{name}.{suffix}" for name in PUBLISHED_MODELS for suffix in ("json", "safetensors"))
    loaded = read_weights(weights / "dncnn-s-sigma25.json")
    assert loaded.noise["sigma"] == 25.0 and not loaded.noise["blind"]
    assert loaded.metadata["provenance"]["source_file"] == "model/specifics/sigma=25.mat"
    assert loaded.metadata["provenance"]["source_sha256"] == spec.files["dncnn_s25.mat"]
    assert loaded.metadata["provenance"]["archive"] == spec.url  # the pinned upstream, not the local test server
    assert read_weights(weights / "dncnn-b.json").metadata["provenance"]["source_file"] == "model/GD_Gray_Blind.mat"

    before = {p.name: p.stat().st_mtime_ns for p in weights.iterdir()}
    assert download(root, (WEIGHTS_SET,), {WEIGHTS_SET: url}, weights_dir=weights) == []
    assert handler.seen_ranges == [None]  # one request in all: the second run neither fetches nor converts
    assert {p.name: p.stat().st_mtime_ns for p in weights.iterdir()} == before


def test_corrupted_weights_file_is_rejected_and_nothing_is_converted(tmp_path):
    if not (SHARED_DATA / MANIFEST[WEIGHTS_SET].target).is_dir():
        pytest.skip(f"published DnCNN weights not found under {SHARED_DATA}")
    archive = build_archive(tmp_path / "DnCNN-archive.zip", sets=(WEIGHTS_SET,),
                            corrupt=(WEIGHTS_SET, "dncnn_s25.mat"))
    root, weights = tmp_path / "data", tmp_path / "weights"
    with pytest.raises(DownloadError, match=r"checksum mismatch for dncnn_s25\.mat .*model/specifics/sigma=25\.mat"):
        download(root, (WEIGHTS_SET,), {WEIGHTS_SET: archive.as_uri()}, weights_dir=weights)
    assert list((root / MANIFEST[WEIGHTS_SET].target).iterdir()) == []
    assert not weights.exists()


def test_archive_under_another_top_folder_name_installs_by_checksum(tmp_path):
    """GitHub names the archive's top folder after the repository: a renamed repository still installs."""
    source = build_archive(tmp_path / "source.zip", sets=("set12",))
    renamed = tmp_path / "renamed.zip"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(renamed, "w") as new:
        for member in old.namelist():
            new.writestr("denoisers-0123abc/" + member.partition("/")[2], old.read(member))
    assert download(tmp_path / "data", ("set12",), {"set12": renamed.as_uri()}) == ["set12"]
    assert_installed(tmp_path / "data", ("set12",))
