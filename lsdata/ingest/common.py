"""What every source parser shares: the per-file report, the quarantine, and the context they write to.

A source module (``taobao``, ``amazon``, ``xlong``) turns raw files into polars frames of raw events
(see :mod:`lsdata.events`) and frames of rejected rows, and hands both to an :class:`IngestContext`.
The context keeps the books: for every file ``rows_read == rows_kept + rows_rejected + rows_dropped``
is checked before the dataset is published.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from lsdata.events import EventBuilder, write_parquet
from lsdata.io import InputError, head_lines
from lsdata.schemas import QuarantineRow, SourceFile, arrow_schema

REJECT_SCHEMA = {"line": pl.Int64, "field": pl.Utf8, "reason": pl.Utf8, "text": pl.Utf8}
TEXT_LIMIT = 500


@dataclass
class FileTask:
    """One input file with its recognised kind and its index (the ``src_file`` tie-break).

    ``span``/``first_line``: only the lines starting in that byte range of a plain file, numbered from
    ``first_line`` (a distributed engine's share of the file, :func:`lsdata.io.iter_line_chunks`).
    """

    path: str
    kind: str
    index: int
    span: tuple[int, int] | None = None
    first_line: int = 1


@dataclass
class FileCounts:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(n)

    def note(self, key: str, n: int) -> None:
        if n:
            self.notes[key] = self.notes.get(key, 0) + int(n)


class Quarantine:
    """Collects rejected rows (file, line, field, reason, text); raises at the first in strict mode."""

    def __init__(self, strict: bool):
        self.strict = strict
        self._frames: list[pl.DataFrame] = []
        self.count = 0

    def add(self, path: str, rejects: pl.DataFrame) -> int:
        if rejects.height == 0:
            return 0
        rejects = rejects.sort("line")
        if self.strict:
            r = rejects.row(0, named=True)
            raise InputError(f"{path}:{r['line']}:{r['field']}: {r['reason']} (line: {r['text'][:120]!r})")
        self._frames.append(
            rejects.select(
                pl.lit(path).alias("file"),
                pl.col("line").cast(pl.Int64),
                pl.col("field"),
                pl.col("reason"),
                pl.col("text").str.slice(0, TEXT_LIMIT),
            )
        )
        self.count += rejects.height
        return rejects.height

    def write(self, path: Path) -> None:
        schema = arrow_schema(QuarantineRow)
        if self._frames:
            t = pl.concat(self._frames).to_arrow().cast(schema)
        else:
            t = pa.table({f.name: pa.nulls(0, f.type) for f in schema}, schema=schema)  # (pa.array([]) imports pandas)
        write_parquet(t, path)


@dataclass
class IngestContext:
    """Where a source module sends its output for one ingest run."""

    builder: EventBuilder
    quarantine: Quarantine
    options: object
    progress: Callable[[int], None] | None = None
    counts: dict[int, FileCounts] = field(default_factory=dict)
    #: side tables a source reads in ``prepare`` and uses in ``read`` (e.g. Amazon meta: item -> category)
    side: dict[str, object] = field(default_factory=dict)

    def file(self, task: FileTask) -> FileCounts:
        return self.counts.setdefault(task.index, FileCounts())

    def emit(self, task: FileTask, events: pl.DataFrame) -> None:
        self.file(task).kept += events.height
        self.builder.add(events)

    def reject(self, task: FileTask, rejects: pl.DataFrame) -> None:
        self.file(task).rejected += self.quarantine.add(task.path, rejects)

    def advance(self, nbytes: int) -> None:
        if self.progress:
            self.progress(nbytes)


def reconcile(task: FileTask, c: FileCounts, sha256: str, nbytes: int) -> SourceFile:
    """The file's report; raises if its counts do not add up (a bug, never bad input)."""
    dropped = sum(c.dropped.values())
    if c.read != c.kept + c.rejected + dropped:
        raise AssertionError(
            f"{task.path}: counts do not reconcile: read {c.read} != kept {c.kept} + rejected {c.rejected} + dropped {dropped}"
        )
    return SourceFile(
        path=task.path,
        kind=task.kind,
        sha256=sha256,
        bytes=nbytes,
        rows_read=c.read,
        rows_kept=c.kept,
        rows_rejected=c.rejected,
        rows_dropped=dropped,
        dropped=dict(sorted(c.dropped.items())),
        notes=dict(sorted(c.notes.items())),
    )


def wrong_format(path: str, dataset: str, expected: str, kinds: tuple[str, ...]) -> InputError:
    """The one-line error for a file that is not of ``dataset``'s formats (shows its first line)."""
    first = head_lines(path, 1)
    shown = first[0][:100].decode("utf-8", "replace") if first else ""
    return InputError(
        f"{path}: does not look like {dataset} input (expected {expected}; first line is {shown!r}); "
        f"use --kind {path}={'|'.join(kinds)} to force"
    )


def lines_frame(chunk: bytes, first_line: int) -> tuple[pl.DataFrame, int]:
    """One row per line of ``chunk``: ``line`` (1-based number) and ``text`` (no newline/CR).

    Returns the frame and the number of lines whose invalid UTF-8 bytes were replaced by U+FFFD
    (such rows are then rejected or kept by the parser, never silently lost).
    """
    bad = 0
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        lines = chunk.split(b"\n")
        fixed = []
        for ln in lines:
            try:
                ln.decode("utf-8")
                fixed.append(ln)
            except UnicodeDecodeError:
                bad += 1
                fixed.append(ln.decode("utf-8", "replace").encode("utf-8"))
        chunk = b"\n".join(fixed)
    df = pl.scan_lines(chunk, name="text").collect()
    df = df.select((pl.int_range(0, pl.len(), dtype=pl.Int64) + first_line).alias("line"), "text")
    return df, bad


def first_failure(checks: list[tuple[str, pl.Expr, str | pl.Expr]]) -> tuple[pl.Expr, pl.Expr]:
    """(field, reason) expressions of the first failing check; checks are (field, failed?, reason)."""
    f = pl.lit(None, dtype=pl.Utf8)
    r = pl.lit(None, dtype=pl.Utf8)
    for name, failed, reason in reversed(checks):
        reason_e = reason if isinstance(reason, pl.Expr) else pl.lit(reason)
        f = pl.when(failed).then(pl.lit(name)).otherwise(f)
        r = pl.when(failed).then(reason_e).otherwise(r)
    return f, r
