"""Files and folders that are either absent or whole: the one way this project commits what it writes.

A reader (the report, a second flow run, a resumed trainer) never sees half a file, and a writer killed
at any point leaves at most a dot-named temporary behind, which folder scans skip.

    write_atomic(path, text_or_bytes)
    with atomic_path(path) as tmp: pq.write_table(table, tmp)   # for writers that take a path
    tmp = build_dir(final); ...; replace_dir(tmp, final, is_complete)   # a whole folder
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it is fsynced and renamed onto `path`.

    The temporary name is unique to the writer, so two writers of one file never share it: the last
    rename wins and each renamed file is whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def build_dir(final: Path) -> Path:
    """A fresh temporary folder beside `final` to build it in, after removing those of builds of
    `final` killed on this host (their builder process is gone).

    It is named `.<final>-<host>-<pid>-<random>`: the owner is in the name from the start, so no
    build can mistake a new folder for an abandoned one, and builders on other hosts sharing the
    folder are left alone.
    """
    host = socket.gethostname()
    for tmp in final.parent.glob(f".{final.name}-{host}-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 2)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (PermissionError, ValueError):  # alive under another user, or not a name of ours
            continue
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-{host}-{os.getpid()}-", dir=final.parent))


def replace_dir(tmp: Path, final: Path, is_complete: Callable[[Path], bool]) -> None:
    """Move the finished folder `tmp` to `final`, replacing a stale `final`.

    If another process finished the same folder first, theirs is kept and `tmp` is dropped.
    """
    if final.exists():
        if is_complete(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(final, stale)
        except FileNotFoundError:
            pass
        else:
            shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final.exists() and is_complete(final)):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(final.parent)
