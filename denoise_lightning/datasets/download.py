"""Download the public denoising benchmark sets and the published DnCNN weights into a data root (``make data``).

Train400, BSD68, Set12 and the published DnCNN weights (set ``dncnn-weights``: DnCNN-S sigma 15/25/50, DnCNN-S
sigma 25 before BN merging, DnCNN-B, DnCNN-3, MatConvNet ``.mat`` files) are fetched from the archive zip of the
official DnCNN repository (github.com/cszn/DnCNN) at one pinned commit, because that is where the paper's authors
distribute them.  ``manifest.json`` (next to this module) says, for each set, which archive to fetch, where the
set's files live inside it, where they go under the data root, and the sha256 of every file, so that experiments run
on byte-exact copies and a changed upstream file is caught instead of silently used.

The ``.mat`` files are kept under ``<root>/weights/dncnn`` and converted once, when verified, into the weights format
of named models (:mod:`denoise_lightning.zoo.weights`) in the weights folder: ``--weights-dir``, else
``$DNL_WEIGHTS_DIR``, else ``~/.cache/denoise-lightning/weights``. A root that already holds the verified ``.mat``
files (even a read-only one) needs no download: ``--root DIR --sets dncnn-weights`` only converts.

The download is:

* idempotent: a set whose files are all present with the right sha256 is left alone;
* resumable: the archive is streamed into ``<root>/.downloads/<archive>.part`` and an
  interrupted download continues from there (HTTP Range, or by skipping the bytes
  already held when the server ignores Range);
* atomic per set: files are verified in temporary names and only then moved into
  place, so a target folder never holds a half-written or unverified file.

Usage: ``python -m denoise_lightning.datasets.download [--root DIR] [--sets train400,bsd68,set12,dncnn-weights]
[--weights-dir DIR] [--url-override NAME=URL]``; the root defaults to ``$DNL_DATA_DIR``, else ``./data``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

MANIFEST_PATH = Path(__file__).with_name("manifest.json")
WEIGHTS_SET = "dncnn-weights"  # converted into the weights format of named models once verified
DEFAULT_SETS = ("train400", "bsd68", "set12", WEIGHTS_SET)
CHUNK_BYTES = 1 << 20
console = Console(highlight=False, soft_wrap=True)


class DownloadError(RuntimeError):
    """A download, archive or checksum failure; the message names the URL or path and the fix."""


@dataclass(frozen=True)
class DatasetSpec:
    """One manifest entry: where a set comes from, where it goes, and what its files must hash to."""

    name: str
    url: str
    archive: str  # file name of the downloaded archive in <root>/.downloads
    member_prefix: str  # path of the set's folder inside the archive, ending in "/"
    target: str  # folder relative to the data root
    files: dict[str, str]  # file name -> sha256 hex digest
    members: dict[str, str] = field(default_factory=dict)  # file name -> path under member_prefix, when it differs

    def member(self, name: str) -> str:
        """The archive member that is installed as file ``name``."""
        return self.member_prefix + self.members.get(name, name)


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, DatasetSpec]:
    """Read the manifest into ``{set name: DatasetSpec}``."""
    entries = json.loads(Path(path).read_text())["datasets"]
    return {name: DatasetSpec(name=name, **entry) for name, entry in entries.items()}


def default_root() -> Path:
    """The data root used when none is given: ``$DNL_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get("DNL_DATA_DIR") or "data")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def is_installed(spec: DatasetSpec, root: Path) -> bool:
    """True when every file of the set exists under the root with the manifest's sha256."""
    folder = root / spec.target
    return all((folder / name).is_file() and sha256_of(folder / name) == expected
               for name, expected in spec.files.items())


def archive_path(spec: DatasetSpec, url: str, root: Path) -> Path:
    """Where the archive for ``url`` is cached; overridden URLs get their own name so caches never mix."""
    if url == spec.url:
        name = spec.archive
    else:
        basename = Path(urllib.parse.urlparse(url).path).name or "archive.zip"
        name = f"override-{hashlib.sha1(url.encode()).hexdigest()[:10]}-{basename}"
    return root / ".downloads" / name


def fetch(url: str, destination: Path) -> Path:
    """Download ``url`` to ``destination``, resuming from ``destination + '.part'`` if one exists.

    The part file is renamed to ``destination`` only once the whole body has arrived, so an
    existing ``destination`` is always a complete download.
    """
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left past our offset: the part is complete
            part.replace(destination)
            return destination
        raise DownloadError(f"HTTP {error.code} ({error.reason}) fetching {url}") from error
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"cannot fetch {url}: {getattr(error, 'reason', error)}") from error

    with response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        to_skip = 0 if resumed else offset  # server (or file://) sent the whole body again
        length = response.headers.get("Content-Length")
        expected_size = ((offset if resumed else 0) + int(length)) if length else None
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        console.print(f"fetching {url}" + (f" (resuming after {offset} bytes)" if offset else ""))
        try:
            with part.open("ab") as out, Progress(*columns, console=console) as progress:
                task = progress.add_task(destination.name, total=expected_size, completed=offset)
                while block := response.read(CHUNK_BYTES):
                    if to_skip:
                        dropped = min(to_skip, len(block))
                        block, to_skip = block[dropped:], to_skip - dropped
                    out.write(block)
                    progress.advance(task, len(block))
        except (OSError, http.client.HTTPException) as error:  # timeouts, resets, truncated bodies
            raise DownloadError(f"download of {url} interrupted ({error}); rerun to resume from {part}") from error

    size = part.stat().st_size
    if to_skip or (expected_size is not None and size != expected_size):
        raise DownloadError(
            f"download of {url} is incomplete or inconsistent: {part} holds {size} bytes, "
            f"expected {expected_size}; rerun to resume, or delete {part} to start over")
    part.replace(destination)
    return destination


def install_from_archive(spec: DatasetSpec, archive: Path, root: Path) -> None:
    """Extract the set's files from ``archive`` into its target folder, verifying every sha256.

    All files are first written to hidden temporary names and checked; only when the whole
    set verifies are they moved into place with ``os.replace``. On any failure the
    temporary files are removed and nothing of the failed set is left behind.

    The archive's single top-level folder stands for the manifest's (``DnCNN-<commit>/``) when they differ, as
    GitHub names it after the repository: the sha256 of every file still decides what is installed.
    """
    folder = root / spec.target
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = set(bundle.namelist())
            expected_top, _, _ = spec.member_prefix.partition("/")
            tops = {member.partition("/")[0] for member in members}
            top = tops.pop() if len(tops) == 1 and expected_top not in tops else expected_top
            for name, expected in spec.files.items():
                member = top + spec.member(name)[len(expected_top):]
                if member not in members:
                    raise DownloadError(
                        f"{spec.name}: member {member} is missing from archive {archive}; the upstream "
                        f"layout may have changed, or the archive is wrong: delete {archive} and rerun")
                temporary = folder / f".{name}.{os.getpid()}.tmp"
                staged.append((temporary, folder / name))
                digest = hashlib.sha256()
                with bundle.open(member) as source, open(temporary, "wb") as out:
                    while block := source.read(CHUNK_BYTES):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != expected:
                    raise DownloadError(
                        f"{spec.name}: checksum mismatch for {name} (member {member} of {archive}): "
                        f"expected sha256 {expected}, got {digest.hexdigest()}. "
                        f"Delete {archive} and rerun to download it again.")
    except BaseException as error:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        if isinstance(error, zipfile.BadZipFile):
            raise DownloadError(f"{archive} is not a valid zip archive ({error}); delete it and rerun") from error
        raise
    for temporary, final in staged:
        os.replace(temporary, final)


def convert_weights(spec: DatasetSpec, root: Path, weights_dir: Path | str | None = None) -> list[str]:
    """Convert the verified ``.mat`` files of the weights set into named models (once; see
    :func:`denoise_lightning.zoo.registry.install_published`), recording their upstream path and archive.
    Returns the model names converted; an empty list means all were already converted from these files."""
    from denoise_lightning.zoo.registry import install_published
    from denoise_lightning.zoo.weights import weights_dir as default_weights_dir

    destination = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    sources = {name: {"source_file": spec.members.get(name, name), "archive": spec.url} for name in spec.files}
    try:
        converted = install_published(root / spec.target, destination, sources=sources)
    except ImportError as error:  # h5py reads the MATLAB v7.3 files
        raise DownloadError(f"{spec.name}: converting the .mat files needs h5py ({error}): pip install h5py") from error
    except OSError as error:  # an unwritable weights folder
        raise DownloadError(f"{spec.name}: cannot convert {root / spec.target} into {destination}: {error}. "
                            "Choose another folder with --weights-dir or $DNL_WEIGHTS_DIR.") from error
    except ValueError as error:  # a release file that is not the DnCNN it should be
        raise DownloadError(f"{spec.name}: cannot convert {root / spec.target}: {error}") from error
    if converted:
        console.print(f"{spec.name}: converted {', '.join(converted)} into {destination}")
    else:
        console.print(f"{spec.name}: named models already converted in {destination}")
    return converted


def download(root: Path | str | None = None, sets: tuple[str, ...] | list[str] = DEFAULT_SETS,
             url_overrides: dict[str, str] | None = None,
             manifest: dict[str, DatasetSpec] | None = None, weights_dir: Path | str | None = None) -> list[str]:
    """Make every requested set present and verified under ``root``; the weights set is then converted into the
    named models of ``weights_dir`` (default ``$DNL_WEIGHTS_DIR``, else ``~/.cache/denoise-lightning/weights``).

    Sets that share an archive URL share one download. Returns the names of the sets
    that were (re)installed; an empty list means everything was already in place.
    """
    root = Path(root) if root is not None else default_root()
    specs = manifest if manifest is not None else load_manifest()
    overrides = dict(url_overrides or {})
    unknown = sorted((set(sets) | set(overrides)) - set(specs))
    if unknown:
        raise DownloadError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(specs)}")

    pending: dict[str, list[DatasetSpec]] = {}
    for name in sets:
        spec = specs[name]
        if is_installed(spec, root):
            console.print(f"{name}: already present, verified ({len(spec.files)} files in {root / spec.target})")
            continue
        pending.setdefault(overrides.get(name, spec.url), []).append(spec)

    installed = []
    for url, group in pending.items():
        archive = fetch(url, archive_path(group[0], url, root))
        for spec in group:
            install_from_archive(spec, archive, root)
            console.print(f"{spec.name}: installed {len(spec.files)} verified files in {root / spec.target}")
            installed.append(spec.name)
    if WEIGHTS_SET in sets:
        convert_weights(specs[WEIGHTS_SET], root, weights_dir)
    return installed


def _parse_override(text: str) -> tuple[str, str]:
    """argparse type for ``NAME=URL``."""
    name, separator, url = text.partition("=")
    if not separator or not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {text!r}")
    return name, url


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m denoise_lightning.datasets.download",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="data root (default: $DNL_DATA_DIR, else ./data)")
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS), help="comma-separated sets (default: %(default)s)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help=f"where {WEIGHTS_SET} is converted into named models (default: $DNL_WEIGHTS_DIR, else "
                             "~/.cache/denoise-lightning/weights)")
    parser.add_argument("--url-override", type=_parse_override, action="append", default=[], metavar="NAME=URL",
                        help="fetch set NAME from URL instead of the manifest's (repeatable)")
    args = parser.parse_args(argv)
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    try:
        download(args.root, sets, dict(args.url_override), weights_dir=args.weights_dir)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
