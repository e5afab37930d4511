"""Files written whole or not at all: every result, checkpoint, weight and image the package writes goes through
:func:`atomic_output`, so a crash or a full disk never leaves a half-written file under the final name."""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Temporary files are named ``.dnl-tmp.<pid>@<host>.<stem>.<random>.tmp<suffix>``: hidden, recognisable, and
# carrying the writer's process id and machine, so a later run can tell a crashed writer's leftovers (see
# :func:`remove_stale_temp_files`) also in a folder that several machines share (NFS).
TEMP_PREFIX = ".dnl-tmp."
STALE_AFTER_S = 3600.0


def writer_tag() -> str:
    """``<pid>@<host>`` of this process; the host name without dots or other characters a file name may not hold."""
    return f"{os.getpid()}@{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())[:64]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can test: assume alive
    return True


def remove_stale_temp_files(folder: str | os.PathLike, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files :func:`atomic_output` left in ``folder`` when its process was killed (kill -9,
    power loss): those written on this machine by a process that no longer runs, and any older than ``max_age_s``
    seconds (another machine's process cannot be tested). Returns the removed paths. Other files are never touched.
    """
    removed = []
    try:
        candidates = [p for p in Path(folder).iterdir() if p.name.startswith(TEMP_PREFIX) and p.is_file()]
    except OSError:
        return removed
    now = time.time()
    pid_here, host_here = writer_tag().split("@", 1)
    for candidate in candidates:
        pid_text, _, host = candidate.name[len(TEMP_PREFIX):].split(".", 1)[0].partition("@")
        try:
            dead = (host == host_here and pid_text.isdigit() and pid_text != pid_here
                    and not _pid_alive(int(pid_text)))
            if dead or now - candidate.stat().st_mtime > max_age_s:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue  # removed meanwhile, or not ours to remove
    return removed


def _publish_exclusive(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if ``path`` does not exist, atomically: a hard link fails with
    FileExistsError when the name is taken, so two concurrent writers can never replace each other's file."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists (created by another process meanwhile?)", str(path)) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # no hard links on this file system (FAT, some network shares): reserve the name with O_EXCL, then rename
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "exists (created by another process meanwhile?)", str(path)) from None
        os.replace(tmp, path)


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block succeeds, removed when it
    fails, so ``path`` is never half-written. The file gets the usual permissions (0666 less the umask).

    ``overwrite=False``: the final step is create-exclusive and raises ``FileExistsError`` if ``path`` exists at that
    moment (even if it appeared while the block ran), instead of replacing it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{writer_tag()}.{path.stem}.",
                                   suffix=f".tmp{path.suffix}")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_exclusive(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
