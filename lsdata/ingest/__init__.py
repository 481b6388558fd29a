"""``lsdata ingest``: raw files -> ``events/``, ``sequences/``, ``vocab/``, ``quarantine.parquet``, ``manifest.json``.

A source module provides ``DATASET``, ``RAW_TYPE``, ``EVENT_KINDS``, ``plan(paths, options)`` (recognise each
file's kind from its content; raise :class:`lsdata.io.InputError` on a wrong format), ``prepare(tasks, ctx)``
(read side tables such as Amazon meta first; return raw item -> raw category or None) and
``read(task, ctx)`` (parse one event file). A source that arrives already as samples (XLong) provides
``ingest(paths, out, options, progress)`` instead.

Everything is written to a staging directory and published at the end; ``manifest.json`` is written last,
so a killed run never leaves a dataset that looks complete.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from lsdata.defaults import DEFAULT_PARTITION_BYTES, MAX_PARTITIONS, MAX_SPARK_PARTITIONS, OPEN_FILES_MARGIN, IngestOptions
from lsdata.events import EventBuilder
from lsdata.ingest import amazon, taobao, xlong
from lsdata.ingest.common import FileTask, IngestContext, Quarantine, reconcile
from lsdata.io import Background, InputError, check_input_file, file_bytes, publish, sha256_file, staging_dir, write_model_atomic
from lsdata.schemas import Manifest

SOURCES = {"taobao": taobao, "amazon": amazon, "xlong": xlong}
OUTPUTS = ["vocab", "events", "sequences", "item_events", "quarantine.parquet", "manifest.json"]
DOWNSTREAM = ["split", "layouts", "xlong", "item_init.npy"]  # invalidated by a new ingest


def auto_partitions(paths: list[str]) -> int:
    """--partitions auto: one per ``DEFAULT_PARTITION_BYTES`` of input, at least 1 and at most ``MAX_PARTITIONS``
    (on every engine, so that they write the same files)."""
    return max(1, min(MAX_PARTITIONS, math.ceil(file_bytes(paths) / DEFAULT_PARTITION_BYTES)))


def partition_count(paths: list[str], options: IngestOptions, spark: bool = False) -> int:
    """The ingest's user-hash partitions: ``options.partitions`` (at most ``MAX_SPARK_PARTITIONS``, checked by
    :class:`IngestOptions`) or :func:`auto_partitions`. The single-machine engine takes at most ``MAX_PARTITIONS``
    and keeps one spill file per partition open: for it the soft open-files limit is raised to fit them."""
    p = options.partitions or auto_partitions(paths)
    if not spark:
        if p > MAX_PARTITIONS:
            raise InputError(f"--partitions {p}: the single-machine engine takes at most {MAX_PARTITIONS} partitions "
                             f"(lsdata/defaults.py); use --engine spark (up to {MAX_SPARK_PARTITIONS})")
        _allow_open_files(p + OPEN_FILES_MARGIN, p)
    return p


def _allow_open_files(n: int, partitions: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``n`` when it is lower (an InputError when the hard one is)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= n:
        return
    if hard != resource.RLIM_INFINITY and hard < n:
        raise InputError(
            f"--partitions {partitions}: the single-machine engine keeps one spill file per partition open and needs "
            f"~{n} open files, but `ulimit -Hn` is {hard}; raise it, or use fewer partitions or --engine spark"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def is_synthetic(path: str) -> bool:
    """Generators write ``FILE.synthetic.json`` beside each file they make."""
    return Path(str(path).split("::")[0] + ".synthetic.json").exists()


def output_hashes(root: Path, entries: list[str], known: dict[Path, str] | None = None) -> dict[str, str]:
    """sha256 of every file under ``entries`` of ``root``, by relative path; ``known``: hashes already taken of
    finished files (by path), not read again."""
    known = known or {}
    out = {}
    for e in entries:
        p = root / e
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                out[str(f.relative_to(root))] = known.get(f) or sha256_file(f)
    return out


def source_module(dataset: str, paths: list[str]):
    """The source module of ``dataset``, after checking that every input exists and is not empty."""
    if dataset not in SOURCES:
        raise InputError(f"unknown dataset {dataset!r}; choose from {', '.join(SOURCES)}")
    if not paths:
        raise InputError("no input files given")
    for p in paths:
        check_input_file(p)
    return SOURCES[dataset]


def check_events(rows: int, paths: list[str], quarantine: Quarantine) -> None:
    if rows == 0:
        raise InputError(f"no valid events in {', '.join(paths)} ({quarantine.count} rows quarantined); nothing to write")


def ingest(
    dataset: str,
    paths: list[str],
    out: str | Path,
    options: IngestOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Run the ingest stage; returns the manifest that was written to ``out/manifest.json``."""
    options = options or IngestOptions()
    mod = source_module(dataset, paths)
    out = Path(out)
    if hasattr(mod, "ingest"):
        return mod.ingest(paths, out, options, progress)
    tasks = mod.plan(paths, options)
    partitions = partition_count(paths, options)
    with staging_dir(out, "ingest") as tmp, Background() as bg:
        # the inputs' sha256 (for the manifest) is taken while they are parsed; spill and Parquet writes, and the
        # outputs' sha256, run on bg's threads while the next batch or partition is computed
        input_sha = bg.submit("hash_inputs", lambda: {t.path: sha256_file(t.path, stop=bg.stopped) for t in tasks})
        builder = EventBuilder(tmp / "work", partitions, mod.RAW_TYPE, bg)
        quarantine = Quarantine(options.strict)
        ctx = IngestContext(builder, quarantine, options, progress)
        item_cat = mod.prepare(tasks, ctx)
        for t in tasks:
            if t.kind in mod.EVENT_KINDS:
                mod.read(t, ctx)
        check_events(builder.rows, paths, quarantine)
        summary = builder.finish(tmp, item_cat)
        return publish_ingest(tmp, out, dataset, paths, options, tasks, ctx, partitions, summary, input_sha.result(), builder.hashes)


def publish_ingest(
    tmp: Path, out: Path, dataset: str, paths: list[str], options: IngestOptions, tasks: list[FileTask],
    ctx: IngestContext, partitions: int, summary: dict, input_sha: dict[str, str] | None = None,
    output_sha: dict[Path, str] | None = None,
) -> Manifest:
    """The end of every engine's ingest: quarantine, reconciled per-file reports, manifest (last), publish ``tmp``.

    ``input_sha`` (input path -> sha256) and ``output_sha`` (written file -> sha256): hashes already taken."""
    shutil.rmtree(tmp / "work", ignore_errors=True)
    ctx.quarantine.write(tmp / "quarantine.parquet")
    input_sha = input_sha or {}
    sources = [reconcile(t, ctx.file(t), input_sha.get(t.path) or sha256_file(t.path), file_bytes([t.path])) for t in tasks]
    manifest = Manifest(
        dataset=dataset,
        synthetic=all(is_synthetic(p) for p in paths),
        options=options.model_dump(mode="json"),
        sources=sources,
        partitions=partitions,
        quarantined=ctx.quarantine.count,
        files=output_hashes(tmp, OUTPUTS[:-1], output_sha),
        **summary,
    )
    write_model_atomic(tmp / "manifest.json", manifest)
    for d in DOWNSTREAM:
        shutil.rmtree(out / d, ignore_errors=True) if (out / d).is_dir() else (out / d).unlink(missing_ok=True)
    publish(tmp, out, OUTPUTS, "manifest.json")
    return manifest
