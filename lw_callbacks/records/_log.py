"""The wire format of a W&B run's transaction log (``run-<id>.wandb``): chunks and records.

A header (``:W&B``, u16 ``0xBEE1``, u8 version 0), then 32 KiB blocks of chunks, each with a 7-byte
header ``<crc32(type byte + data) u32 LE, length u16 LE, type u8>`` (1 FULL, 2 FIRST, 3 MIDDLE,
4 LAST); a block tail shorter than 7 bytes is padding. Each whole record is a
``wandb.proto.wandb_internal_pb2.Record``. Reading can start at the offset after any whole record,
so a growing log is decoded once, piece by piece.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_MAGIC = b":W&B"
_IDENT = 0xBEE1
_HEADER_LEN = 7
_BLOCK_LEN = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_KIND_CRC = [zlib.crc32(bytes([kind])) for kind in range(256)]  # the crc of the type byte, continued


def iter_records(path: str | Path, damaged: list[tuple[int, int]] | None = None) -> Iterator[Any]:
    """Yield each whole ``Record`` protobuf in a ``.wandb`` log, in order.

    A truncated tail (a chunk or record the writer has not finished) ends the iteration quietly:
    it is "not yet", not corruption. A damaged block (a checksum mismatch, a chunk that cannot be
    there) raises ``ValueError``; or, given a ``damaged`` list, is skipped and its byte range
    ``(start, end)`` appended to the list, and decoding goes on at the next block.
    """
    for record, _end in records_from(Path(path), 0, damaged):
        yield record


def records_from(path: Path, start: int, damaged: list[tuple[int, int]] | None = None) -> Iterator[tuple[Any, int]]:
    """``(record, offset after it)`` for each whole record from byte ``start`` (0, or an offset this
    yielded before: the end of a record, where a later read can resume).

    The log is written in 32 KiB blocks and no chunk crosses a block's end, so damage costs only the
    records with a chunk in the damaged block: with a ``damaged`` list, the bytes from the start of
    the first record lost to the first chunk decoded again are appended to it as ``(start, end)``
    and the reading goes on (without one, ``ValueError``).
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as fh:
        header = fh.read(_HEADER_LEN)
        if len(header) < _HEADER_LEN:
            return
        magic, ident, version = struct.unpack("<4sHB", header)
        if magic != _MAGIC or ident != _IDENT or version != 0:
            raise ValueError(f"{path} is not a W&B transaction log (header {header!r})")
        pos = max(start, _HEADER_LEN)
        fh.seek(pos)
        # One block at a time (no chunk crosses a block's end): a log of any size is read in 32 KiB.
        pending: bytearray | None = None
        pending_start = pos
        lost_from: int | None = None  # where the bytes being skipped began

        def damage(at: int, why: str) -> None:
            nonlocal pending, lost_from
            if damaged is None:
                raise ValueError(f"{path}: {why} at byte {at}")
            if lost_from is None:
                lost_from = pending_start if pending is not None else at
            pending = None

        ended = False  # the log ends here, maybe in the middle of what the writer is writing
        while not ended:
            block_end = pos - pos % _BLOCK_LEN + _BLOCK_LEN
            block = fh.read(block_end - pos)
            if not block:
                break
            base, stop = pos, pos + len(block)
            while True:
                left = block_end - pos
                if left < _HEADER_LEN:  # padding
                    ended = stop < block_end
                    pos = block_end if not ended else pos
                    break
                if pos + _HEADER_LEN > stop:
                    ended = True
                    break
                rel = pos - base
                crc, length, kind = struct.unpack_from("<IHB", block, rel)
                if not _FULL <= kind <= _LAST and any(block[rel : rel + _HEADER_LEN]):
                    # No writer writes this header: damage, not a tail being written (whose length
                    # may point past the end of the file as a damaged one's can).
                    damage(pos, f"a chunk of unknown type {kind}")
                    pos = block_end
                    ended = stop < block_end
                    break
                if _HEADER_LEN + length > left:  # no chunk crosses a block's end
                    damage(pos, "a chunk longer than its block")
                    pos = block_end
                    ended = stop < block_end
                    break
                if pos + _HEADER_LEN + length > stop:
                    ended = True
                    break
                chunk = block[rel + _HEADER_LEN : rel + _HEADER_LEN + length]
                if zlib.crc32(chunk, _KIND_CRC[kind]) != crc:
                    if crc == 0 and length == 0 and kind == 0 and not any(block[rel:]):
                        if stop < block_end or not fh.read(1):  # a zero-filled tail being written
                            ended = True
                            break
                        fh.seek(block_end)
                    damage(pos, "checksum mismatch")
                    pos = block_end
                    ended = stop < block_end
                    break
                chunk_start, pos = pos, pos + _HEADER_LEN + length
                if lost_from is not None:
                    if kind in (_MIDDLE, _LAST):  # the rest of a record begun in the damaged block
                        continue
                    assert damaged is not None
                    damaged.append((lost_from, chunk_start))
                    lost_from = None
                if kind == _FULL:
                    payload: bytes | None = chunk
                    pending_start = chunk_start
                elif kind == _FIRST:
                    pending, payload, pending_start = bytearray(chunk), None, chunk_start
                elif kind == _MIDDLE and pending is not None:
                    pending += chunk
                    payload = None
                elif kind == _LAST and pending is not None:
                    payload, pending = bytes(pending + chunk), None
                else:
                    damage(chunk_start, f"unexpected chunk type {kind}")
                    pos = block_end
                    ended = stop < block_end
                    break
                if payload is not None:
                    record = pb.Record()  # type: ignore[attr-defined]
                    try:
                        record.ParseFromString(payload)
                    except DecodeError:  # whole and checksummed, yet not a record: it alone is lost
                        if damaged is None:
                            raise ValueError(f"{path}: a record that does not decode at byte {pending_start}") from None
                        damaged.append((pending_start, pos))
                        continue
                    yield record, pos
            if pos != fh.tell() and not ended:
                fh.seek(pos)
        if lost_from is not None and damaged is not None:
            damaged.append((lost_from, max(lost_from, min(pos, fh.seek(0, 2)))))


ManifestRow = tuple[str, str, int, str | None, str | None]


def manifest_rows(manifest: Any) -> list[ManifestRow]:
    """``(path, digest, size, local_path, ref)`` of each file of an artifact record's manifest, by path:
    from the record itself, or from the gzipped manifest file it names when it holds none inline."""
    rows: list[ManifestRow] = [
        (e.path, e.digest, int(e.size), e.local_path or None, e.ref or None) for e in manifest.contents
    ]
    if not rows and manifest.manifest_file_path:
        with gzip.open(manifest.manifest_file_path, "rt") as fh:
            for line in fh:
                e = json.loads(line)
                rows.append((e["path"], e["digest"], int(e.get("size") or 0), e.get("local_path"), e.get("ref")))
    return sorted(rows, key=lambda row: row[0])


def scan_artifact_digests(path: str | Path, offset: int = 0) -> tuple[list[tuple[str, str]], int]:
    """``(collection name, file digest)`` of every manifest entry of the artifact records written to
    the log at ``path`` after byte ``offset``, and the offset to pass next time.

    Only the bytes appended since ``offset`` are decoded, so a writer can call this again and again
    on a growing log to learn which artifacts have reached the disk. A record not yet whole is
    left for the next call. A missing file gives nothing and ``offset`` back.
    """
    pairs, offset, _exited = scan_log(path, offset)
    return pairs, offset


def scan_log(path: str | Path, offset: int = 0) -> tuple[list[tuple[str, str]], int, bool]:
    """:func:`scan_artifact_digests`, and whether the ``exit`` record was among the bytes read."""
    found: list[tuple[str, str]] = []
    exited = False
    try:
        for record, end in records_from(Path(path), offset):
            offset = end
            kind = record.WhichOneof("record_type")
            if kind == "artifact":
                found.extend((record.artifact.name, row[1]) for row in manifest_rows(record.artifact.manifest))
                if record.artifact.digest:  # a folder checkpoint is known by its manifest's digest
                    found.append((record.artifact.name, record.artifact.digest))
            elif kind == "exit":
                exited = True
    except FileNotFoundError:
        pass
    return found, offset, exited
