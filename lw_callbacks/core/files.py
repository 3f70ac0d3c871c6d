"""File operations of the checkpoint upload: the hand-over, copies, signatures and digests.

- :func:`hand_over` puts a checkpoint into a staging folder: a hard link on the same filesystem; on
  another one, an open file descriptor taken on the training thread, from which the worker copies
  (:func:`copy_fd`). That is the only file work done on the training thread.
- :func:`signature`, :func:`folder_signature`, :func:`remote_signature` identify one content of a file,
  a folder or a remote file without reading it; :func:`md5_b64` and :func:`manifest_digest` are the
  digests W&B records.
- Every copy is written through ``<dst>.partial``, removed on any failure (``ENOSPC`` included), so a
  full disk keeps no partial file.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from lw_callbacks._wandb import wandb_staging_dir

_CHUNK = 8 * 2**20


def _link(src: str, dst: str) -> None:
    os.link(src, dst)


def _write(fh: IO[bytes], data: bytes) -> None:
    fh.write(data)


def _write_wandb(fh: IO[bytes], data: bytes) -> None:
    fh.write(data)


@contextlib.contextmanager
def removed_on_failure(path: str) -> Iterator[None]:
    """Remove the file ``path`` when the block raises (anything, ``KeyboardInterrupt`` included)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


def _write_through_partial(dst: str, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``dst`` through ``dst.partial`` (synced, then renamed; removed on any failure);
    returns the number of bytes written."""
    partial = dst + ".partial"
    size = 0
    with removed_on_failure(partial):
        with open(partial, "wb") as out:
            for chunk in chunks:
                _write(out, chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dst)
    return size


def copy_fd(fd: int, dst: str) -> None:
    """Copy the whole file open at ``fd`` to ``dst`` (through ``dst.partial``, removed on any failure,
    ``ENOSPC`` included, so a full disk keeps no partial file)."""

    def chunks() -> Iterable[bytes]:
        offset = 0
        while chunk := os.pread(fd, _CHUNK, offset):
            yield chunk
            offset += len(chunk)

    _write_through_partial(dst, chunks())


# fsspec schemes a checkpoint folder may use: local ones (a plain path), and remote ones, whose files
# the worker streams through fsspec into the staging folder (tests run `memory://` and `file://`; the
# object stores by design, with their fsspec package installed: s3fs, gcsfs, adlfs).
LOCAL_SCHEMES = ("file", "local")
REMOTE_SCHEMES = ("memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs", "sftp", "ssh")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def scheme_of(path: str | os.PathLike[str]) -> str | None:
    """The URL scheme of ``path`` (``"memory"`` for ``memory://ck/a.ckpt``), ``None`` for a plain path,
    ``"::"`` for a chained URL (``simplecache::s3://...``)."""
    text = os.fspath(path)
    if "::" in text.split("/", 1)[0]:
        return "::"
    found = _SCHEME.match(text)
    return found.group(1).lower() if found else None


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an fsspec URL of a filesystem other than the local one."""
    return scheme_of(path) not in (None, *LOCAL_SCHEMES)


def local_path(path: str | os.PathLike[str]) -> str:
    """``path`` without a ``file://`` / ``local://`` scheme."""
    text = os.fspath(path)
    return text.split("://", 1)[1] if scheme_of(text) in LOCAL_SCHEMES else text


def remote_signature(url: str) -> list[int]:
    """What identifies one content of a remote file without reading it: ``[0, 0, size, mtime ns]``
    (the time of the file's ``info`` where the filesystem gives one, else now). Raises ``OSError``."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(url)
    info = fs.info(inner)
    if info.get("type") not in (None, "file"):
        raise IsADirectoryError(url)
    when: Any = next((info[k] for k in ("mtime", "created", "LastModified", "last_modified", "updated") if info.get(k)),
                None)
    if hasattr(when, "timestamp"):
        ns = int(when.timestamp() * 1e9)
    elif isinstance(when, (int, float)):
        ns = int(when * 1e9)
    else:
        ns = time.time_ns()
    return [0, 0, int(info.get("size") or 0), ns]


def fetch(url: str, dst: str) -> int:
    """Stream the remote file ``url`` through fsspec to ``dst`` (through ``dst.partial``, removed on any
    failure); returns the number of bytes written."""
    import fsspec

    with fsspec.open(url, "rb") as fin:
        return _write_through_partial(dst, iter(lambda: fin.read(_CHUNK), b""))


def folder_files(folder: str) -> list[str]:
    """Every file under ``folder``, as sorted paths relative to it (``/``-separated)."""
    found = []
    for base, _dirs, names in os.walk(folder):
        for name in names:
            found.append(os.path.relpath(os.path.join(base, name), folder).replace(os.sep, "/"))
    return sorted(found)


def folder_signature(folder: str) -> list[int]:
    """What identifies one content of a checkpoint folder without reading it: device and inode of the
    folder, total size of its files, and the newest mtime among it and its files."""
    st = os.stat(folder)
    total, newest = 0, int(st.st_mtime_ns)
    for rel in folder_files(folder):
        fst = os.stat(os.path.join(folder, rel))
        total += int(fst.st_size)
        newest = max(newest, int(fst.st_mtime_ns))
    return [int(st.st_dev), int(st.st_ino), total, newest]


def manifest_digest(entries: dict[str, str]) -> str:
    """The digest of an artifact manifest holding ``entries`` (path -> base64 md5), computed as W&B
    computes an artifact's digest (hex md5 over ``path:digest`` lines, sorted by path)."""
    hasher = hashlib.md5()
    hasher.update(b"wandb-artifact-manifest-v1\n")
    for name in sorted(entries):
        hasher.update(f"{name}:{entries[name]}\n".encode())
    return hasher.hexdigest()


def link_folder(src: str, dst: str) -> str:
    """Stage the folder ``src`` at ``dst``: ``"link"`` when each file could be hard-linked, ``"copy"``
    when not (another filesystem: the worker copies it, :func:`copy_folder`). ``ENOSPC`` is raised."""
    try:
        for rel in folder_files(src):
            target = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _link(os.path.join(src, rel), target)
        return "link"
    except OSError as err:
        shutil.rmtree(dst, ignore_errors=True)
        if err.errno == errno.ENOSPC:
            raise
        return "copy"


def copy_folder(src: str, dst: str) -> None:
    """Copy the folder ``src`` to ``dst`` (through ``dst.partial``, removed on any failure)."""
    partial = dst + ".partial"
    try:
        shutil.copytree(src, partial)
        os.replace(partial, dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def copy_for_wandb(path: str) -> str:
    """W&B's staged copy of ``path`` (what ``policy="mutable"`` makes: a read-only file in W&B's staging
    folder, which W&B removes once uploaded and ``wandb sync`` uploads offline), made here so that a
    failed copy (W&B's data folder full, say) leaves no partial file behind."""
    folder = wandb_staging_dir()
    fd, partial = tempfile.mkstemp(dir=folder, prefix=f"lw-copy-{os.getpid()}-", suffix=".partial")
    with removed_on_failure(partial):
        with os.fdopen(fd, "wb") as out, open(path, "rb") as fin:
            while chunk := fin.read(_CHUNK):
                _write_wandb(out, chunk)
        os.chmod(partial, stat.S_IRUSR)
        dst = partial[: -len(".partial")]
        os.replace(partial, dst)
    return dst


def remove_wandb_copy(copy: Any, path: str | None = None) -> None:
    """Remove W&B's staged copy (a path, or a manifest entry whose ``local_path`` is not ``path``) made
    for an artifact that is not logged: nothing refers to it."""
    staged = copy if isinstance(copy, str) else getattr(copy, "local_path", None)
    if not staged or (path is not None and os.path.abspath(staged) == os.path.abspath(path)):
        return
    try:
        os.chmod(staged, 0o600)
        os.remove(staged)
    except OSError:
        pass


def process_gone(pid: str) -> bool:
    """Whether no process has the id ``pid`` (a number as text); False when it cannot be told."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def sweep_partials(folder: str | os.PathLike[str], pattern: str, pid_at: int) -> int:
    """Remove files in ``folder`` matching ``pattern`` left by processes that died while writing them
    (the writer's pid is field ``pid_at`` of the name split on ``-`` or ``.``); how many were removed."""
    removed = 0
    for path in Path(folder).glob(pattern):
        fields = path.name.replace(".", "-").split("-")
        if len(fields) > pid_at and process_gone(fields[pid_at]):
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
                path.unlink()
                removed += 1
    return removed


def open_source(src: str) -> int:
    """An open descriptor on ``src``: its content stays readable even if the file is deleted."""
    return os.open(src, os.O_RDONLY)


def hand_over(src: str, dst: str) -> tuple[str, int | None]:
    """Stage ``src`` at ``dst``: ``("link", None)`` when a hard link is possible, else
    ``("copy", fd)`` with ``fd`` open on ``src``, for the worker to copy from (:func:`copy_fd`).

    A full disk (``ENOSPC``) is raised at once (a copy onto it fails too: the worker uploads from the
    original or the descriptor); any other failure of the link (``EXDEV``: another filesystem; ``EPERM``
    or ``EACCES``; a filesystem without hard links) falls back to the descriptor, whose copy has its own
    fallback (the upload worker).
    """
    try:
        _link(src, dst)
        return "link", None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise
    return "copy", open_source(src)


def reflink_or_copy(src: str, dst: str) -> str:
    """Write a copy of ``src`` at ``dst`` that shares no storage with it that a write could change:
    a reflink (``FICLONE``, copy-on-write) where the filesystem offers one, else a plain copy.
    Returns ``"reflink"`` or ``"copy"``. ``dst`` is removed on failure."""
    with removed_on_failure(dst), open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            import fcntl

            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return "reflink"
        except (OSError, ImportError, AttributeError):
            pass
        shutil.copyfileobj(fin, fout, _CHUNK)
        return "copy"


_FICLONE = 0x40049409  # Linux ioctl: clone a whole file (btrfs, XFS, bcachefs, ...)


def md5_b64(path: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> str:
    """Base64 md5 of a file (the digest W&B records in an artifact manifest), read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return base64.b64encode(digest.digest()).decode("ascii")


def signature(st: os.stat_result) -> list[int]:
    """What identifies one content of a file without reading it: device, inode, size, mtime."""
    return [int(st.st_dev), int(st.st_ino), int(st.st_size), int(st.st_mtime_ns)]


def signature_of(path: str, folder: bool = False) -> list[int]:
    """:func:`folder_signature` of the folder ``path``, or :func:`signature` of the file; raises ``OSError``."""
    return folder_signature(path) if folder else signature(os.stat(path))


def cut_zip(path: str) -> bool:
    """Whether ``path`` begins as a zip archive (``torch.save``'s format) but lacks the record a whole
    one ends with: a save cut short by the end of its process. Anything else (a whole zip, another
    format, a folder, an unreadable file) is False: only what is known to be cut is refused."""
    import zipfile

    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                return False
        return not zipfile.is_zipfile(path)
    except OSError:
        return False
