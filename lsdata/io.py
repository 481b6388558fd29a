"""File plumbing shared by every stage: compressed input, line chunks, hashing, atomic output.

Nothing here knows about datasets. Raw inputs may be plain, gzip, bzip2 or zip (one member, or a
member named ``archive.zip::member``); the kind is recognised from the file's first bytes, not from its
name.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

from pydantic import BaseModel


class InputError(Exception):
    """Bad user input (missing/empty file, wrong format, malformed row in --strict mode).

    The CLI prints the message on one line and exits with status 2; no traceback.
    """


def _split_member(path: str | Path) -> tuple[Path, str | None]:
    s = str(path)
    if "::" in s:
        p, m = s.split("::", 1)
        return Path(p), m
    return Path(s), None


def compression_of(path: str | Path) -> str:
    """'gzip', 'bz2', 'zip' or 'none', from the file's magic bytes."""
    p, _ = _split_member(path)
    with open(p, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bz2"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return "none"


def check_input_file(path: str | Path) -> Path:
    """Raise :class:`InputError` if the file is missing, a directory, or empty."""
    p, member = _split_member(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    return p


@contextlib.contextmanager
def open_binary(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a raw input for streaming binary reads, decompressing transparently."""
    p, member = _split_member(path)
    check_input_file(path)
    kind = compression_of(p)
    if kind == "gzip":
        with gzip.open(p, "rb") as f:
            yield f
    elif kind == "bz2":
        with bz2.open(p, "rb") as f:
            yield f
    elif kind == "zip":
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
            if member is None:
                if len(names) != 1:
                    raise InputError(f"{p}: zip has {len(names)} members {names[:5]}; name one as {p}::MEMBER")
                member = names[0]
            elif member not in names:
                raise InputError(f"{p}: zip has no member {member!r}")
            with z.open(member) as f:
                yield f
    else:
        with open(p, "rb") as f:
            yield f


def iter_line_chunks(
    path: str | Path, chunk_bytes: int, span: tuple[int, int] | None = None, first_line: int = 1
) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(first_line_number, n_lines, chunk)``; each chunk holds ``n_lines`` whole lines (1-based numbering).

    Every chunk but possibly the last ends with ``b"\\n"``; a final line without a newline is
    completed with one, so each input line appears in exactly one chunk and the line numbers of
    consecutive chunks add up (``next_first = first + n_lines``).

    ``span=(start, end)`` (plain files only) reads just the lines that *start* at a byte offset in
    ``[start, end)``, numbered from ``first_line`` (see :func:`count_span_lines`): consecutive spans cover
    every line exactly once, which is how a distributed engine splits one large file between tasks.
    """
    line_no = first_line
    rest = b""
    buf = bytearray(chunk_bytes)  # raw blocks are read into this one buffer (no fresh 64 MiB per block)
    with open_binary(path) as f:
        for size in _span_reads(f, buf, span):
            cut = buf.rfind(b"\n", 0, size)
            if cut < 0:
                rest += buf[:size]
                continue
            with memoryview(buf) as mv:  # the one copy: the leftover partial line, then the block's whole lines
                chunk = b"".join((rest, mv[: cut + 1]))
            rest = bytes(buf[cut + 1 : size])
            n = chunk.count(b"\n")
            yield line_no, n, chunk
            line_no += n
    if rest:
        yield line_no, 1, rest + b"\n"


def _span_reads(f: IO[bytes], buf: bytearray, span: tuple[int, int] | None) -> Iterator[int]:
    """The raw blocks of ``f`` holding exactly the lines that start in ``span`` (the whole stream if None), read
    into ``buf``: yields each block's size, the block being ``buf[:size]`` until the next step (``buf`` grows if
    the line that straddles the span's end is longer than it)."""
    chunk_bytes = len(buf)

    def read(limit: int) -> int:
        with memoryview(buf) as mv:
            return f.readinto(mv[:limit]) or 0

    if span is None:
        while size := read(chunk_bytes):
            yield size
        return
    start, end = span
    pos = 0
    if start > 0:  # the first line starting at or after `start`: skip past the newline at or after start - 1
        f.seek(start - 1)
        pos = start - 1 + len(f.readline())
    last = b"\n"
    while pos < end:
        size = read(min(chunk_bytes, end - pos))
        if not size:
            return
        pos += size
        last = bytes(buf[size - 1 : size])
        yield size
    if last != b"\n":  # the line that straddles `end` belongs to this span
        tail = f.readline()
        if tail:
            if len(tail) > len(buf):
                buf.extend(bytes(len(tail) - len(buf)))
            buf[: len(tail)] = tail
            yield len(tail)


def count_span_lines(path: str | Path, span: tuple[int, int], chunk_bytes: int = 64 << 20) -> int:
    """Number of lines that start in ``span`` of a plain file (what :func:`iter_line_chunks` yields for it)."""
    n, last = 0, b"\n"
    buf = bytearray(chunk_bytes)
    with open_binary(path) as f:
        for size in _span_reads(f, buf, span):
            n += buf.count(b"\n", 0, size)
            last = bytes(buf[size - 1 : size])
    return n + (last != b"\n")


def head_lines(path: str | Path, n: int = 5, max_bytes: int = 1 << 20) -> list[bytes]:
    """The first ``n`` non-empty lines (decompressed), for sniffing a file's kind."""
    out: list[bytes] = []
    with open_binary(path) as f:
        data = f.read(max_bytes)
    for line in data.split(b"\n"):
        line = line.strip()
        if line:
            out.append(line)
            if len(out) >= n:
                break
    return out


def sha256_file(path: str | Path, block: int = 1 << 22, stop: threading.Event | None = None) -> str:
    """Hex sha256 of the file (of the archive for ``archive.zip::member``); ``stop``: give up (returns "") once set."""
    p, _ = _split_member(path)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(block):
            if stop is not None and stop.is_set():
                return ""
            h.update(b)
    return h.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write via a temp file in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_model_atomic(path: str | Path, model: BaseModel) -> None:
    write_text_atomic(path, model.model_dump_json(indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def staging_dir(root: str | Path, name: str) -> Iterator[Path]:
    """A fresh temporary directory ``root/.name.tmp-PID`` removed on failure.

    Stages write everything into it and then :func:`publish` its entries; a killed run leaves only a
    dot-directory that no reader looks at (and the next run deletes).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, root: Path, entries: list[str], marker: str) -> None:
    """Move ``entries`` from ``tmp`` into ``root`` and write the completion ``marker`` last.

    The old marker is removed first, so a crash between the moves leaves a directory that does not
    look complete (readers require the marker). The marker itself is written atomically.
    """
    root = Path(root)
    (root / marker).unlink(missing_ok=True)
    for e in entries:
        if e == marker:
            continue
        dst = root / e
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / e, dst)
    if (tmp / marker).exists():
        os.replace(tmp / marker, root / marker)


class Background:
    """Calls run on worker threads while the caller goes on computing: Parquet/IPC writes and hashing, whose C code
    releases the GIL, overlap with the next partition's work instead of waiting for it.

    Calls on one ``lane`` run one at a time, in submission order (appends to one file stay in order); different
    lanes run concurrently. At most ``limit`` calls per lane are pending: :meth:`submit` first waits for that
    lane's oldest beyond it, so memory stays bounded by what those calls hold. The first error of a call is raised
    in the caller by :meth:`submit`, :meth:`wait` or on leaving the ``with`` block; leaving it on an error cancels
    the calls that have not started and waits for the running ones (nothing writes into a staging directory that
    is being removed).
    """

    def __init__(self, limit: int = 2):
        self.limit = limit
        self._lanes: dict[str, tuple[ThreadPoolExecutor, deque[Future]]] = {}
        #: set once the threads are being stopped (on leaving the block): long calls may check it and return early
        self.stopped = threading.Event()

    def submit(self, lane: str, fn: Callable, *args, **kwargs) -> Future:
        if lane not in self._lanes:
            self._lanes[lane] = (ThreadPoolExecutor(1, thread_name_prefix=f"lsdata-{lane}"), deque())
        ex, pending = self._lanes[lane]
        while len(pending) >= self.limit:
            pending.popleft().result()
        f = ex.submit(fn, *args, **kwargs)
        pending.append(f)
        return f

    def wait(self, lane: str | None = None) -> None:
        """Wait for every call submitted so far (on ``lane``, or on all lanes); raises the first error."""
        for name, (_, pending) in self._lanes.items():
            if lane is None or name == lane:
                while pending:
                    pending.popleft().result()

    def close(self, cancel: bool = False) -> None:
        """Stop the worker threads: after the pending calls (raising the first error) or, with ``cancel``, dropping
        the calls not yet started."""
        try:
            if not cancel:
                self.wait()
        finally:
            self.stopped.set()
            for ex, pending in self._lanes.values():
                for f in pending:
                    f.cancel()
                ex.shutdown(wait=True)
            self._lanes.clear()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


def file_bytes(paths: list[str | Path]) -> int:
    return sum(_split_member(p)[0].stat().st_size for p in paths)


