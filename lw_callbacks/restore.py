"""restore_checkpoint: a checkpoint logged by UploadCheckpoints back as a local path, online or from an
offline run."""

from __future__ import annotations

import base64
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from lw_callbacks._errors import ConfigurationError, check_path, check_seconds
from lw_callbacks._wandb import active_run, public_api, run_is_offline
from lw_callbacks.core import files
from lw_callbacks.core.uploader import ENTRY_NAME
from lw_callbacks.core.versions import LOGGED, sanitize

__all__ = ["restore_checkpoint"]


def restore_checkpoint(
    ref: str,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Get a checkpoint logged by :class:`UploadCheckpoints` (or ``WandbLogger(log_model=...)``) as a local file.

    Offline (or given ``run_dir``) the version is resolved from the run's own records, numbered over every
    segment of a resumed run as ``wandb sync`` will number it, and its staged file is copied and checked
    against the recorded md5; online (``entity/project/`` in ``ref``) it is downloaded through the W&B API.
    The file returned is yours (it shares no storage with anything W&B uploads), the same path on every
    rank, with no collective; nothing is unpickled. The docs' checkpoint pages say where a version is found.

    Args:
        ref: ``"[entity/project/]name[:alias or version]"`` (alias ``latest`` when left out), e.g.
            ``"my-team/mnist/model-abc123-val_acc:best"`` or ``"model-abc123-val_acc:v3"``.
        run_dir: an offline run's folder (``.../wandb/offline-run-<date>-<id>``) or a folder holding it.
        root: where the file is put; default ``$WANDB_ARTIFACT_DIR`` or ``./artifacts``.
        timeout: seconds to wait for a run still being written (its log may lag ``wandb.finish()``,
            and another rank may still be uploading) and for another process's download.

    Returns:
        The local path of the checkpoint file, or of the folder of a folder checkpoint (sharded
        strategies; ``trainer.fit(ckpt_path=folder)`` takes it).

    Raises:
        LookupError: no collection ``name``, or no such alias or version (the message lists what exists).
        ConfigurationError: ``ref``, ``run_dir``, ``root`` or ``timeout`` is not what it accepts (before any I/O).
        ValueError: the staged file's md5 differs from the recorded digest.
        FileNotFoundError: no run to read, or the staged file is gone (after ``wandb sync``?).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks import UploadCheckpoints, restore_checkpoint
        >>> from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
        >>> upload = UploadCheckpoints()
        >>> trainer = Trainer(
        ...     logger=WandbLogger(project="digits"),
        ...     callbacks=[ModelCheckpoint(monitor="val_acc", mode="max"), upload],
        ...     max_epochs=1, limit_train_batches=2, limit_val_batches=1,
        ...     enable_progress_bar=False, enable_model_summary=False,
        ... )
        >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
        >>> name = upload.collection_names[0]  # model-<run id>-val_acc
        >>> path = restore_checkpoint(f"{name}:best")  # this process's offline run
        >>> path.name, path.parent.name.startswith(f"{name}-v0-")
        ('model.ckpt', True)
        >>> model = DigitsClassifier.load_from_checkpoint(path)

    From an offline run's folder, and online with ``entity/project/`` in the reference (this one
    needs a W&B server)::

        path = restore_checkpoint("model-abc123-val_acc:best", run_dir="wandb/offline-run-20260101_120000-abc123")
        path = restore_checkpoint("my-team/digits/model-abc123-val_acc:best")
    """
    owner = "restore_checkpoint"
    entity_project, name, tag = _parse_ref(ref)
    run_dir = check_path(owner, "run_dir", run_dir)
    root = check_path(owner, "root", root)
    timeout = check_seconds(owner, "timeout", timeout, allow_zero=True, example="30") or 0.0
    out_root = Path(root) if root is not None else Path(os.environ.get("WANDB_ARTIFACT_DIR") or "artifacts")
    mode = os.environ.get("WANDB_MODE", "").lower()
    if run_dir is None and entity_project and mode not in ("offline", "dryrun", "disabled"):
        live = active_run()
        if live is None or not run_is_offline(live):
            return _restore_online(ref if ":" in ref else f"{ref}:{tag}", name, out_root, timeout)
    return _restore_offline(name, tag, run_dir, out_root, timeout)


def _parse_ref(ref: str) -> tuple[str, str, str]:
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigurationError(
            f"restore_checkpoint(ref={ref!r}): ref must be a non-empty string, 'entity/project/name:alias' or "
            "'name:alias', e.g. 'model-abc123-val_acc:best'."
        )
    path, _, tag = ref.strip().rpartition(":") if ":" in ref else (ref.strip(), "", "latest")
    parts = path.split("/")
    if len(parts) > 3 or not all(parts) or not tag:
        raise ConfigurationError(
            f"restore_checkpoint(ref={ref!r}): expected 'entity/project/name:alias', 'project/name:alias', "
            "'name:alias' or 'name' (alias 'latest'), e.g. 'model-abc123-val_acc:best'."
        )
    return "/".join(parts[:-1]), parts[-1], tag


def _candidate_runs(name: str, run_dir: str | os.PathLike[str] | None) -> list[tuple[Path, bool]]:
    """Run folders to look in, best first, with whether each is the run live in this process."""
    from lw_callbacks.records import find_runs

    if run_dir is not None:
        path = Path(run_dir)
        if not path.exists():
            raise FileNotFoundError(f"restore_checkpoint(run_dir={str(run_dir)!r}): no such folder")
        if any(path.glob("run-*.wandb")) or path.is_file():
            return [(path, False)]
        runs = find_runs(path)
        if not runs:
            raise FileNotFoundError(f"restore_checkpoint(run_dir={str(run_dir)!r}): no run-<id>.wandb under it")
        return [(r, False) for r in reversed(runs)]
    found: list[tuple[Path, bool]] = []
    live = active_run()
    live_dir = None
    if live is not None:
        live_dir = Path(os.path.realpath(live.settings.sync_dir))
        found.append((live_dir, True))
    roots = [os.environ.get("WANDB_DIR"), os.getcwd()]
    others: list[Path] = []
    for base in dict.fromkeys(Path(r) for r in roots if r):
        for pattern in ("wandb/*run-*/run-*.wandb", "*/wandb/*run-*/run-*.wandb", "*run-*/run-*.wandb"):
            others.extend(p.parent for p in base.glob(pattern))
    unique = sorted({os.path.realpath(p) for p in others} - {str(live_dir)}, key=lambda p: (Path(p).name, p))
    # Runs whose id appears in the artifact name first (the default name holds the run id), newest first.
    hinted = [p for p in unique if Path(p).name.rsplit("-", 1)[-1] in name]
    rest = [p for p in unique if p not in hinted]
    found.extend((Path(p), False) for p in [*reversed(hinted), *reversed(rest)])
    return found


def _logged_version(name: str, tag: str) -> Any:
    """The version of ``name`` that UploadCheckpoints logged in this process, as the records show it."""
    from lw_callbacks.records import ArtifactEntry, ArtifactVersion

    versions = LOGGED[name]
    for v in versions:
        if tag in v["aliases"] or tag == f"v{v['version']}":
            if v.get("files"):  # a folder checkpoint: its files, and the digest of its manifest
                entries = tuple(ArtifactEntry(p, d, n, local, None) for p, d, n, local in v["files"])
                return ArtifactVersion(name, "model", v["version"], v["digest"], v["metadata"], entries,
                                       list(v["aliases"]))
            entry = ArtifactEntry(ENTRY_NAME, v["digest"], v["size"], v["local_path"], None)
            return ArtifactVersion(name, "model", v["version"], "", v["metadata"], (entry,), list(v["aliases"]))
    known = sorted({a for v in versions for a in v["aliases"]} | {f"v{v['version']}" for v in versions})
    raise LookupError(f"restore_checkpoint: artifact {name!r} has no version or alias {tag!r}; it has {known}")


def _restore_offline(name: str, tag: str, run_dir: Any, out_root: Path, timeout: float) -> Path:
    if run_dir is None and name in LOGGED:
        return _materialize(name, _logged_version(name, tag), out_root)

    candidates = _candidate_runs(name, run_dir)
    if not candidates:
        raise FileNotFoundError(
            f"restore_checkpoint: no W&B run to read {name!r} from (no run in this process and none under "
            f"$WANDB_DIR or {os.getcwd()}); pass run_dir='.../wandb/offline-run-<date>-<id>'."
        )
    deadline = time.monotonic() + timeout
    seen: dict[str, list[str]] = {}
    readers: dict[Path, Any] = {}  # each run's log is decoded once, then only what is appended to it
    while True:
        waiting = False  # a run still being written may yet log the name or move the alias
        for path, live in candidates:
            if path not in readers:
                readers[path] = _reader_with_earlier_segments(path)
            records = _read_waiting(readers[path], timeout=0 if live else min(2.0, timeout))
            names = records.artifact_names()
            seen[str(records.run_dir)] = names
            waiting = waiting or not records.complete
            if name not in names:
                continue
            try:
                version = records.resolve_artifact(name, tag)
            except KeyError as err:
                if records.complete or time.monotonic() >= deadline:
                    raise LookupError(f"restore_checkpoint: {err.args[0]} (run {records.run_dir})") from None
                break
            return _materialize(name, version, out_root)
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    listing = "; ".join(f"{run}: {names or 'no artifacts'}" for run, names in seen.items())
    damaged = sorted({f"{log} bytes {a}..{b}" for r in readers.values() for log, a, b in r.run.damaged})
    lost = f" (damaged and skipped, the records there lost: {'; '.join(damaged)})" if damaged else ""
    raise LookupError(f"restore_checkpoint: no artifact named {name!r}; the runs read have {listing}{lost}")


def _reader_with_earlier_segments(path: Path) -> Any:
    """A reader of the run in ``path`` that continues every earlier segment of the same run id beside it,
    in start order: versions numbered as ``wandb sync`` of those folders will number them."""
    from lw_callbacks.records import log_file_of, read_segments, segments_of
    from lw_callbacks.records.run import RunReader

    log = log_file_of(path)
    run_id = log.stem[len("run-") :]
    try:
        segments = segments_of(log.parent.parent, run_id)
    except (FileNotFoundError, ValueError):
        segments = []
    if len(segments) <= 1:
        return RunReader(log)
    return RunReader(log_file_of(segments[-1]), into=read_segments(segments[:-1], timeout=0))


def _read_waiting(reader: Any, timeout: float) -> Any:
    """The reader's run with what was appended since its last read, waiting up to ``timeout`` s for the
    run's ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = reader.read()
        if records.complete or time.monotonic() >= deadline:
            return records
        time.sleep(0.05)


def _materialize(name: str, version: Any, out_root: Path) -> Path:
    """A copy of the version's staged file that is the caller's own (never a link to a file W&B or this
    package will upload), at a path unique to its content: ``<root>/<name>-v<N>-<md5 prefix>/model.ckpt``
    (a folder of the version's files for a folder checkpoint)."""
    if isinstance(version.metadata, dict) and version.metadata.get("folder"):
        return _materialize_folder(name, version, out_root)
    entries = [e for e in version.entries if e.path == ENTRY_NAME] or [
        e for e in version.entries if e.path.endswith(".ckpt")
    ]
    if len(entries) != 1:
        raise LookupError(
            f"restore_checkpoint: {name}:v{version.version} holds {[e.path for e in version.entries]}, "
            f"not one checkpoint file ({ENTRY_NAME})"
        )
    entry = entries[0]
    source = entry.local_path
    target = out_root / f"{name}-v{version.version}-{_digest_tag(entry.digest)}" / os.path.basename(entry.path)
    if target.is_file() and target.stat().st_size == entry.size and files.md5_b64(target) == entry.digest:
        return target.resolve()  # a verified copy made before
    if not source or not os.path.isfile(source):
        raise FileNotFoundError(
            f"restore_checkpoint: {name}:v{version.version}'s staged file {source!r} is gone (W&B deletes staged "
            "copies once `wandb sync` has uploaded them); restore it with the online reference "
            f"'entity/project/{name}:v{version.version}'."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
    try:
        files.reflink_or_copy(source, str(tmp))
        actual = files.md5_b64(tmp)
        if actual != entry.digest:
            raise ValueError(
                f"restore_checkpoint: the staged file of {name}:v{version.version} ({source}) has md5 {actual}, but "
                f"the run recorded {entry.digest}: it changed after it was logged. Versions of {name}: aliases "
                f"{version.aliases}; refusing to return it."
            )
        os.replace(tmp, target)  # atomic: ranks doing this at once all end with the same whole file
    finally:
        if tmp.exists():
            tmp.unlink()
    return target.resolve()


def _materialize_folder(name: str, version: Any, out_root: Path) -> Path:
    """A folder checkpoint's files, copied (reflinks where offered) into a folder of the caller's own,
    ``<root>/<name>-v<N>-<manifest digest prefix>/model.ckpt/``, each checked against its recorded md5."""
    target = out_root / f"{name}-v{version.version}-{sanitize(version.digest)[:8]}" / ENTRY_NAME
    entries = list(version.entries)

    def verified(folder: Path) -> bool:
        return sorted(files.folder_files(str(folder))) == sorted(e.path for e in entries) and all(
            files.md5_b64(folder / e.path) == e.digest for e in entries
        )

    if target.is_dir() and verified(target):
        return target.resolve()
    gone = [e.local_path for e in entries if not e.local_path or not os.path.isfile(e.local_path)]
    if gone:
        raise FileNotFoundError(
            f"restore_checkpoint: {name}:v{version.version}'s staged files {gone[:3]} are gone (W&B deletes staged "
            "copies once `wandb sync` has uploaded them); restore it with the online reference "
            f"'entity/project/{name}:v{version.version}'."
        )
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
    try:
        for e in entries:
            dst = tmp / e.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            files.reflink_or_copy(str(e.local_path), str(dst))
            actual = files.md5_b64(dst)
            if actual != e.digest:
                raise ValueError(
                    f"restore_checkpoint: the staged file {e.local_path} of {name}:v{version.version} has md5 "
                    f"{actual}, but the run recorded {e.digest}: it changed after it was logged; refusing to return it."
                )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target.resolve()


def _digest_tag(digest: str) -> str:
    """The first 8 hex digits of a base64 md5 digest (a restored file's folder name carries it)."""
    try:
        return base64.b64decode(digest).hex()[:8]
    except (ValueError, TypeError):
        return sanitize(digest)[:8]


def _restore_online(ref: str, name: str, out_root: Path, timeout: float) -> Path:
    api = public_api()
    try:
        artifact = api.artifact(ref, type="model")
    except Exception as err:
        known = ""
        try:
            collection_path = ref.rsplit(":", 1)[0]
            versions = api.artifacts("model", collection_path)
            known = "; it has " + ", ".join(f"{v.version} {v.aliases}" for v in versions)  # version is "v<n>"
        except Exception:
            pass
        raise LookupError(f"restore_checkpoint: W&B has no {ref!r} ({err}){known}") from err
    target_dir = out_root / f"{name}-{artifact.version}"
    done = target_dir / ".complete"
    lock = target_dir.with_name(target_dir.name + ".lock")
    target_dir.mkdir(parents=True, exist_ok=True)  # also for a version with no file
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another process downloads it: wait for it
        deadline = time.monotonic() + max(timeout, 600.0)
        while not done.exists() and lock.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
    else:
        os.close(fd)
        try:
            if not done.exists():
                artifact.download(root=str(target_dir))
                done.touch()
        finally:
            lock.unlink(missing_ok=True)
    if not done.exists():
        artifact.download(root=str(target_dir))
        done.touch()
    if (artifact.metadata or {}).get("folder"):  # a folder checkpoint: the folder of its files
        return target_dir.resolve()
    files = sorted(target_dir.rglob("*.ckpt"))
    if len(files) != 1:
        raise LookupError(f"restore_checkpoint: {ref} holds {[str(f) for f in files]}, not one .ckpt file")
    return files[0].resolve()
