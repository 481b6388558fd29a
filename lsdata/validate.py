"""``lsdata validate``: check a dataset directory against its contracts, independently of the code that wrote it.

Every check re-derives what the files should hold from the stored sequences with plain polars operations
(joins, ``list.slice``, ``explode``); nothing here calls :mod:`lsdata.views`, :mod:`lsdata.layouts`,
:mod:`lsdata.samples` or :mod:`lsdata.split`. :func:`validate` returns one message per violation (an empty
list means the dataset is valid); each message names the file, the row (or user) and the field.

A dataset is validated **as of a version** (``ds.version``, default the latest; see :mod:`lsdata.versions`):
file-level checks cover the ingest's files and every delta file of versions 2..V, table checks read each
partition as of V through :meth:`Dataset.read` (one partition in memory at a time) and the vocabularies
through :meth:`Dataset.vocab_path`; the counts compared are V's (``manifest.json`` or its ``versions.json``
entry). A message about one file names it (a delta: ``versions/NNNNN/...``); one about a merged partition
names the base file and the deltas merged in.

Checks (each runs on its own; one that cannot run reports why and the others still run):

``files``    ``manifest.json`` parses as :class:`~lsdata.schemas.Manifest` and the sha256 of every file it
             lists matches; the part files are ``part-00000 .. part-{P-1}``; ``versions.json`` parses, lists
             exactly the ``versions/`` directories present, numbered 2, 3, ... each on its parent, and no
             appended source repeats an earlier source's sha256; each version's files (up to V) match the
             sha256 of its entry, are all listed, and are named like the ingest's parts; split/layout reports
             parse and the layout files match the sha256 in their ``report.json``.
``schema``   every Parquet file's Arrow schema (delta files included) equals :func:`lsdata.schemas.arrow_schema`
             of its row model (layouts with the widths of their ``report.json``; vocab ``raw`` may be int64 or
             string, the same in every vocabulary file).
``tables``   per file (base and deltas): events sorted by (user, ts, src_file, src_row), ids in range;
             sequences sorted by user, one row per user, ``length`` == list lengths, ``ts`` non-decreasing;
             item_events sorted by (item, ts), in part ``item % P``. Per partition as of V: merged events
             still in (user, ts, src_file, src_row) order, sequences identical to the events of the same
             part, item_events per item the same events as ``events/``. Vocabularies: ids dense 1..N in every
             version's file, each version's file starting with the previous one's (id, raw) rows; counts;
             V's counts and time range.
``split``    the split rule of :mod:`lsdata.split` recomputed from the users' last event times: the cut(s),
             every sample's set, one target per user (cut) / the last three events (loo), report counts.
``leakage``  every sample: ``hist_end`` == number of the user's events with ts < target ts, the target time
             is the ts of the event at ``target_pos``, positives carry that event's item, negatives do not.
``layouts/NAME``  every row (up to ``max_rows`` per file): matches one sample of its set; the history
             columns equal the user's events before ``hist_end`` (most recent ``width``, padded on the
             layout's side, shan cropped into long + short); the item-side columns equal the most recent
             events of the candidate item strictly before the target time; padding is 0; lengths match;
             mimn negatives are never in the row's history and 0 at padding.

XLong datasets (samples only, no event times, no categories) get the ``files`` and ``schema`` checks (the
store ``xlong/{split}.parquet`` against :class:`~lsdata.schemas.XLongSampleRow`), ids >= 1 in the store, and
per layout row: widths, padding (0), lengths, and the shown history items / item-side ids equal to the most
recent ones of the matching store row (matched on user, ts, item, label).

At most :data:`MAX_MESSAGES` messages are kept per check, followed by ``... and N more``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from lsdata import versions
from lsdata.dataset import Dataset
from lsdata.defaults import SPLITS, Behavior
from lsdata.io import read_json, sha256_file
from lsdata.schemas import (
    LAYOUT_ROWS,
    Arrow,
    EventRow,
    ItemEventRow,
    ItemVocabRow,
    LayoutReport,
    Manifest,
    QuarantineRow,
    SampleRow,
    SequenceRow,
    SplitReport,
    VersionLog,
    VocabRow,
    XLongSampleRow,
    arrow_schema,
)

MAX_MESSAGES = 20  #: messages kept per check; the rest are counted
BATCH_ROWS = 1 << 14  #: layout rows checked at a time
RAW_TYPES = (pa.int64(), pa.string(), pa.large_string())  #: accepted vocab ``raw`` types
TABLE_DIRS = ("events", "sequences", "item_events")


# --------------------------------------------------------------------------- message collection


class Violations:
    """Messages per check, at most ``cap`` formatted each; the remainder only counted."""

    def __init__(self, cap: int = MAX_MESSAGES):
        self.cap = cap
        self.messages: dict[str, list[str]] = {}
        self.total: dict[str, int] = {}

    def room(self, check: str) -> int:
        return max(self.cap - len(self.messages.get(check, [])), 0)

    def add(self, check: str, message: str) -> None:
        self.extend(check, [message], 1)

    def extend(self, check: str, messages: list[str], total: int) -> None:
        """Record ``total`` violations of which ``messages`` (the first few) are formatted."""
        if total <= 0:
            return
        self.total[check] = self.total.get(check, 0) + total
        kept = self.messages.setdefault(check, [])
        kept.extend(messages[: self.room(check)])

    def emit(self, check: str, bad: pl.DataFrame, fmt: Callable[[dict], str]) -> None:
        """Record every row of ``bad`` as one violation, formatting the first few with ``fmt``.

        ``fmt`` is called here and now, so lambdas may use the caller's loop variables.
        """
        if bad.height:
            self.extend(check, [fmt(r) for r in bad.head(self.room(check)).iter_rows(named=True)], bad.height)

    def lines(self) -> list[str]:
        out = []
        for check, msgs in self.messages.items():
            out.extend(msgs)
            more = self.total[check] - len(msgs)
            if more > 0:
                out.append(f"{check}: ... and {more} more")
        return out


def validate(ds: Dataset, max_rows: int | None = None) -> list[str]:
    """All violations found in ``ds`` (empty list = valid). ``max_rows`` caps the layout rows checked per file."""
    v = Violations()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("files", lambda: check_files(ds, v)),
        ("schema", lambda: check_schemas(ds, v)),
    ]
    if ds.name == "xlong":
        steps.append(("xlong", lambda: check_xlong_store(ds, v)))
        for name in _layout_names(ds):
            steps.append((f"layouts/{name}", lambda name=name: check_xlong_layout(ds, name, v, max_rows)))
    else:
        steps.append(("tables", lambda: check_tables(ds, v)))
        if (ds.root / "split" / "report.json").exists():
            try:
                ctx = _SplitContext(ds)
            except Exception as e:
                v.add("split", f"split: samples/sequences/vocab could not be read, split, leakage and layout content "
                               f"checks skipped: {type(e).__name__}: {_first_line(e)}")
            else:
                steps.append(("split", lambda: check_split(ds, ctx, v)))
                steps.append(("leakage", lambda: check_leakage(ds, ctx, v)))
                for name in _layout_names(ds):
                    steps.append((f"layouts/{name}", lambda name=name: check_layout(ds, ctx, name, v, max_rows)))
    for key, fn in steps:
        try:
            fn()
        except Exception as e:  # a corrupt file must not hide the other checks
            v.add(key, f"{key}: check could not run: {type(e).__name__}: {_first_line(e)}")
    return v.lines()


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


# --------------------------------------------------------------------------- helpers


def _rel(ds: Dataset, p: Path) -> str:
    return Path(p).relative_to(ds.root).as_posix()


def _layout_names(ds: Dataset) -> list[str]:
    d = ds.root / "layouts"
    return sorted(p.parent.name for p in d.glob("*/report.json")) if d.is_dir() else []


def _parse(model: type[BaseModel], path: Path) -> tuple[BaseModel | None, str | None]:
    try:
        return model.model_validate(read_json(path)), None
    except (ValidationError, ValueError, OSError) as e:
        return None, str(e).replace("\n", " ")[:300]


def _before_previous(cols: list[str]) -> pl.Expr:
    """True where the row's key ``cols`` sorts strictly before the previous row's (lexicographic)."""
    expr = None
    for c in reversed(cols):
        cur, prev = pl.col(c), pl.col(c).shift(1)
        expr = (cur < prev) if expr is None else ((cur < prev) | ((cur == prev) & expr))
    return expr.fill_null(False)


def _key(r: dict, cols: list[str], prefix: str = "") -> str:
    return "(" + ", ".join(str(r[prefix + c]) for c in cols) + ")"


def _width_keys(model: type) -> set[str]:
    keys = set()
    for info in model.model_fields.values():
        for m in info.metadata:
            if isinstance(m, Arrow) and m.kind == "fixed":
                keys.add(m.width)
    return keys


def _vocab_table(ds: Dataset, name: str, columns: list[str]) -> pl.DataFrame:
    return pl.read_parquet(ds.vocab_path(name), columns=columns)


# --------------------------------------------------------------------------- a. files and schemas


def check_files(ds: Dataset, v: Violations) -> None:
    """manifest.json parses and its sha256 match; part names; split/layout reports parse and match."""
    c = "files"
    manifest, err = _parse(Manifest, ds.root / "manifest.json")
    if manifest is None:
        v.add(c, f"manifest.json: does not parse as Manifest: {err}")
        return
    _check_hashes(ds, v, manifest.files, ds.root, "manifest.json files", "ingest")
    if ds.name != "xlong":
        on_disk = [p for d in ("vocab", *TABLE_DIRS) for p in sorted((ds.root / d).rglob("*")) if p.is_file()]
        on_disk += [ds.root / "quarantine.parquet"] if (ds.root / "quarantine.parquet").exists() else []
        for p in on_disk:
            if _rel(ds, p) not in manifest.files:
                v.add(c, f"{_rel(ds, p)}: not listed in manifest.json files")
        for d in TABLE_DIRS:
            names = [p.name for p in ds.parts(d)]
            want = [f"part-{i:05d}.parquet" for i in range(manifest.partitions)]
            if names != want:
                v.add(c, f"{d}/: holds parts {names[:5]}{'...' if len(names) > 5 else ''}, expected "
                         f"part-00000..part-{manifest.partitions - 1:05d} (manifest.json partitions = {manifest.partitions})")
        _check_versions(ds, v, manifest)
    if (ds.root / "split" / "report.json").exists():
        _, err = _parse(SplitReport, ds.root / "split" / "report.json")
        if err:
            v.add(c, f"split/report.json: does not parse as SplitReport: {err}")
    for name in _layout_names(ds):
        rel = f"layouts/{name}/report.json"
        rep, err = _parse(LayoutReport, ds.root / rel)
        if rep is None:
            v.add(c, f"{rel}: does not parse as LayoutReport: {err}")
            continue
        if rep.layout != name:
            v.add(c, f"{rel}: layout is {rep.layout!r} but the directory is {name!r}")
        _check_hashes(ds, v, rep.files, ds.layout_dir(name), rel, "it was written")


def _check_hashes(ds: Dataset, v: Violations, files: dict[str, str], base: Path, source: str, what: str) -> None:
    """Every file of ``files`` (path relative to ``base`` -> sha256, as ``source`` lists them) exists with that sha256."""
    for rel, sha in files.items():
        p = base / rel
        if not p.is_file():
            v.add("files", f"{_rel(ds, p)}: listed in {source} but missing")
        elif sha256_file(p) != sha:
            v.add("files", f"{_rel(ds, p)}: sha256 differs from {source} (the file changed after {what})")


def _check_versions(ds: Dataset, v: Violations, manifest: Manifest) -> None:
    """``versions.json`` against ``versions/``: the versions listed are the directories present, numbered 2, 3, ...
    each on the previous; no appended source has the sha256 of an earlier source. The files of each version up
    to ``ds.version`` match the sha256 its entry lists, are all listed, and are named like the ingest's parts."""
    c = "files"
    log_path, vdir = ds.root / versions.LOG, ds.root / versions.DIR
    present = sorted(d.name for d in vdir.iterdir()) if vdir.is_dir() else []
    log = None
    if log_path.exists():
        log, err = _parse(VersionLog, log_path)
        if log is None:
            v.add(c, f"{versions.LOG}: does not parse as VersionLog: {err}")
            return
    entries = log.versions if log else []
    for k, info in enumerate(entries):
        if (info.version, info.parent) != (k + 2, k + 1):
            v.add(c, f"{versions.LOG} entry {k}: version {info.version} with parent {info.parent}, expected version "
                     f"{k + 2} with parent {k + 1} (appended versions are 2, 3, ..., each on the previous)")
    listed = [versions.version_dir(ds.root, info.version).name for info in entries]
    for name in sorted(set(listed) - set(present)):
        v.add(c, f"{versions.DIR}/{name}/: listed in {versions.LOG} but missing")
    for name in sorted(set(present) - set(listed)):
        v.add(c, f"{versions.DIR}/{name}: not listed in {versions.LOG} (left by an interrupted append: no reader uses "
                 f"it and the next append removes it)")
    seen = {s.sha256: (1, s.path) for s in manifest.sources}
    for info in entries:
        for src in info.sources:
            if src.sha256 in seen:
                ver, path = seen[src.sha256]
                v.add(c, f"{versions.LOG} version {info.version}: source {src.path} has the sha256 of {path} (version "
                         f"{ver}): the same data is in the dataset twice")
            seen.setdefault(src.sha256, (info.version, src.path))
    parts = {d: {p.name for p in ds.parts(d)} for d in TABLE_DIRS}
    for info in entries:
        d = versions.version_dir(ds.root, info.version)
        if info.version > ds.version or not d.is_dir():
            continue
        _check_hashes(ds, v, info.files, ds.root, f"{versions.LOG} version {info.version} files", "the append")
        for p in sorted(d.rglob("*")):
            if p.is_file() and _rel(ds, p) not in info.files:
                v.add(c, f"{_rel(ds, p)}: not listed in {versions.LOG} version {info.version} files")
        for t in TABLE_DIRS:
            for p in sorted((d / t).glob("*")):
                if p.name not in parts[t]:
                    v.add(c, f"{_rel(ds, p)}: not a partition of {t}/ (the ingest wrote part-00000..part-"
                             f"{manifest.partitions - 1:05d}); no read merges it")


def schema_diff(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    """Human-readable differences between two Arrow schemas (empty if equal, metadata ignored)."""
    if actual.equals(expected, check_metadata=False):
        return []
    out = []
    a_names, e_names = actual.names, expected.names
    missing = [n for n in e_names if n not in a_names]
    extra = [n for n in a_names if n not in e_names]
    if missing:
        out.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        out.append(f"unexpected column(s) {', '.join(extra)}")
    common_a = [n for n in a_names if n in e_names]
    common_e = [n for n in e_names if n in a_names]
    if common_a != common_e:
        out.append(f"columns in order {common_a}, expected {common_e}")
    for n in common_e:
        fa, fe = actual.field(n), expected.field(n)
        if not fa.type.equals(fe.type):
            out.append(f"column {n} is {fa.type}, expected {fe.type}")
        elif fa.nullable != fe.nullable:
            out.append(f"column {n} is {'nullable' if fa.nullable else 'not null'}, expected "
                       f"{'nullable' if fe.nullable else 'not null'}")
    return out or ["schema differs (field metadata or list item nullability)"]


def _expect_schema(ds: Dataset, v: Violations, path: Path, expected: pa.Schema, model: str) -> None:
    for d in schema_diff(pq.read_schema(path), expected):
        v.add("schema", f"{_rel(ds, path)}: schema differs from {model}: {d}")


def check_schemas(ds: Dataset, v: Violations) -> None:
    """Every Parquet file's Arrow schema equals the one derived from its row model."""
    c = "schema"
    raw_types: dict[str, pa.DataType] = {}
    dirs = [ds.root] + [d for ver in range(2, ds.version + 1) if (d := versions.version_dir(ds.root, ver)).is_dir()]
    for d in dirs:  # the ingest's files, then each version's deltas (a missing version is reported by check_files)
        _check_dir_schemas(ds, v, d, raw_types)
    if len({str(t) for t in raw_types.values()}) > 1:
        v.add(c, f"vocab: raw id types differ between files: {', '.join(f'{k}={t}' for k, t in raw_types.items())}")
    if ds.samples_path.exists():
        _expect_schema(ds, v, ds.samples_path, arrow_schema(SampleRow), "SampleRow")
    for s in SPLITS:
        p = ds.root / "xlong" / f"{s}.parquet"
        if p.exists():
            _expect_schema(ds, v, p, arrow_schema(XLongSampleRow), "XLongSampleRow")
    for name in _layout_names(ds):
        rel = f"layouts/{name}/report.json"
        if name not in LAYOUT_ROWS:
            v.add(c, f"layouts/{name}: unknown layout (known: {', '.join(LAYOUT_ROWS)})")
            continue
        rep, _ = _parse(LayoutReport, ds.root / rel)
        if rep is None:
            continue  # reported by check_files
        model = LAYOUT_ROWS[name]
        need = _width_keys(model)
        if set(rep.widths) != need:
            v.add(c, f"{rel}: widths has keys {sorted(rep.widths)}, expected {sorted(need)} for {model.__name__}")
            continue
        bad = [k for k, w in rep.widths.items() if w < 1]
        if bad:
            v.add(c, f"{rel}: widths {', '.join(f'{k}={rep.widths[k]}' for k in bad)} must be >= 1")
            continue
        expected = arrow_schema(model, rep.widths)
        for s in SPLITS:
            p = ds.layout_dir(name) / f"{s}.parquet"
            if not p.exists():
                v.add(c, f"layouts/{name}/{s}.parquet: missing")
                continue
            _expect_schema(ds, v, p, expected, f"{model.__name__} with widths {rep.widths}")


TABLE_MODELS = {"events": EventRow, "sequences": SequenceRow, "item_events": ItemEventRow}


def _check_dir_schemas(ds: Dataset, v: Violations, d: Path, raw_types: dict[str, pa.DataType]) -> None:
    """Schemas of one version's files: ``d`` is the dataset root (version 1) or ``versions/NNNNN``. Every table
    file against its row model, the vocabularies (``raw`` int64 or string, recorded in ``raw_types``), the
    quarantine."""
    c = "schema"
    for t, model in TABLE_MODELS.items():
        for p in sorted((d / t).glob("part-*.parquet")):
            _expect_schema(ds, v, p, arrow_schema(model), model.__name__)
    for name in ("user", "item", "cate"):
        p = d / "vocab" / f"{name}.parquet"
        rel = _rel(ds, p)
        if not p.exists():
            if ds.name != "xlong":
                v.add(c, f"{rel}: missing")
            continue
        model = ItemVocabRow if name == "item" else VocabRow
        actual = pq.read_schema(p)
        raw = actual.field("raw").type if "raw" in actual.names else None
        if raw is not None and not any(raw.equals(t) for t in RAW_TYPES):
            v.add(c, f"{rel}: column raw is {raw}, expected int64 or string")
        raw_types[rel] = raw
        _expect_schema(ds, v, p, arrow_schema(model, raw_type=raw if raw is not None else pa.int64()), model.__name__)
    q = d / "quarantine.parquet"
    if q.exists():
        _expect_schema(ds, v, q, arrow_schema(QuarantineRow), "QuarantineRow")
    elif ds.name != "xlong":
        v.add(c, f"{_rel(ds, q)}: missing")


# --------------------------------------------------------------------------- b. tables: order and agreement


def check_tables(ds: Dataset, v: Violations) -> None:
    """As of ``ds.version``: per file (base and deltas) sort orders, id ranges, sequence rows; per partition
    (merged reads) events == sequences, item_events == events per item; vocabularies; the version's counts."""
    c = "tables"
    label, rec = versions.totals(ds)
    n = _check_vocabs(ds, v, label, rec)
    key = ["user", "ts", "src_file", "src_row"]
    n_events = 0
    ts_lo, ts_hi = None, None
    item_sums, seq_users = [], []
    for p in ds.parts("events"):
        ev = _read_merged(ds, "events", p, EVENT_COLUMNS, lambda f, df: _check_events_file(ds, v, f, df, n))
        ev = ev.with_row_index("row")
        rel = _merged_rel(ds, "events", p)
        if rel != _rel(ds, p):  # merged with deltas: the merge must keep the stored (ts, src_file, src_row) order
            bad = ev.with_columns([pl.col(k).shift(1).alias(f"prev_{k}") for k in key]).filter(_before_previous(key))
            v.emit(c, bad, lambda r: f"{rel} row {r['row']} (user {r['user']}): (user, ts, src_file, src_row) = "
                                     f"{_key(r, key)} sorts before the previous row's {_key(r, key, 'prev_')}")
        n_events += ev.height
        if ev.height:
            lo, hi = ev["ts"].min(), ev["ts"].max()
            ts_lo = lo if ts_lo is None else min(ts_lo, lo)
            ts_hi = hi if ts_hi is None else max(ts_hi, hi)
        item_sums.append(_item_sums(ev))
        seq_path = ds.root / "sequences" / p.name
        if seq_path.exists():
            seq = _read_merged(ds, "sequences", seq_path, None, lambda f, df: _check_sequence_rows(ds, v, f, df))
            seq_users.append(seq.select("user", "length", pl.lit(p.name).alias("file")))
            _compare_sequences_events(ds, v, seq_path, seq.with_row_index("row"), ev)
    if n_events != rec.events:
        v.add(c, f"events/: {n_events} rows as of version {ds.version} but {label} events = {rec.events}")
    if (ts_lo, ts_hi) != (rec.ts_min, rec.ts_max):
        v.add(c, f"events/: ts range {ts_lo}..{ts_hi} as of version {ds.version} but {label} says {rec.ts_min}..{rec.ts_max}")
    # one row per user over all sequences parts; vocab user counts == lengths
    if seq_users:
        users = pl.concat(seq_users)
        dup = users.group_by("user").agg(pl.col("file").alias("files"), pl.len().alias("n"))
        v.emit(c, dup.filter(pl.col("n") > 1).sort("user"),
               lambda r: f"sequences/: user {r['user']} has {r['n']} rows ({', '.join(r['files'])}); expected one")
        vocab = _rel(ds, ds.vocab_path("user"))
        vu = _vocab_table(ds, "user", ["id", "count"]).rename({"id": "user"})
        j = vu.join(users.group_by("user").agg(pl.col("length").sum()), on="user", how="full", coalesce=True)
        v.emit(c, j.filter(pl.col("count").fill_null(-1) != pl.col("length").fill_null(-1)).sort("user"),
               lambda r: f"{vocab} user {r['user']}: count {r['count']} but sequences length {r['length']}")
    ev_sums = pl.concat(item_sums).group_by("item").agg(pl.all().sum()) if item_sums else None
    _check_item_events(ds, v, n["item"], ev_sums, label, rec.events)


EVENT_COLUMNS = ["user", "item", "cate", "behavior", "ts", "src_file", "src_row"]
SUMS = ["n", "ts_sum", "user_sum", "behavior_sum"]  #: per-item fingerprint compared between events and item_events


def _read_merged(ds: Dataset, table: str, part: Path, columns: list[str] | None, check_file) -> pl.DataFrame:
    """Run ``check_file(path, frame)`` on the base file of ``part`` and on each of its deltas (one file in memory
    at a time), then return the partition as of ``ds.version`` (the base frame itself when it has no deltas)."""
    paths = versions.files(ds, table, part)
    for f in paths:
        frame = pl.read_parquet(f, columns=columns)
        check_file(f, frame)
    return frame if len(paths) == 1 else ds.read(table, part, columns)


def _merged_rel(ds: Dataset, table: str, part: Path) -> str:
    """How messages name a partition read as of the version: its file, or its file and the deltas merged in."""
    extra = versions.deltas(ds, table, part)
    if not extra:
        return _rel(ds, part)
    return f"{_rel(ds, part)} as of version {ds.version} (merged with {', '.join(_rel(ds, p) for p in extra)})"


def _check_vocabs(ds: Dataset, v: Violations, label: str, rec) -> dict[str, int]:
    """Each vocabulary file up to ``ds.version`` has dense ids 1..N in row order and starts with the previous
    version's (id, raw) rows unchanged; the one in use has the version's number of rows. Returns the sizes."""
    c = "tables"
    sizes = {}
    for name in ("user", "item", "cate"):
        paths = [ds.root / "vocab" / f"{name}.parquet"]
        paths += [p for ver in range(2, ds.version + 1)
                  if (p := versions.version_dir(ds.root, ver) / "vocab" / f"{name}.parquet").exists()]
        prev, prev_rel = None, None
        for path in paths:
            rel = _rel(ds, path)
            df = pl.read_parquet(path, columns=["id", "raw"]).with_row_index("row")
            v.emit(c, df.filter(pl.col("id") != pl.col("row") + 1),
                   lambda r: f"{rel} row {r['row']}: id {r['id']}, expected {r['row'] + 1} (dense ids are 1..N in row order)")
            if prev is not None:
                if df.height < prev.height:
                    v.add(c, f"{rel}: {df.height} rows, fewer than the {prev.height} of {prev_rel} (vocabularies only grow)")
                j = df.join(prev, on="row", suffix="_prev")
                v.emit(c, j.filter((pl.col("id") != pl.col("id_prev")) | (pl.col("raw") != pl.col("raw_prev"))),
                       lambda r: f"{rel} row {r['row']}: (id, raw) = ({r['id']}, {r['raw']}) but {prev_rel} has "
                                 f"({r['id_prev']}, {r['raw_prev']}) (the ids of earlier versions must not change)")
            prev, prev_rel = df, rel
        sizes[name] = prev.height
        if prev.height != getattr(rec, f"{name}s"):
            v.add(c, f"{prev_rel}: {prev.height} rows but {label} {name}s = {getattr(rec, f'{name}s')}")
    return sizes


def _check_events_file(ds: Dataset, v: Violations, path: Path, ev: pl.DataFrame, n: dict[str, int]) -> None:
    """One events file (base or delta): sorted by (user, ts, src_file, src_row), ids in range, behaviour codes."""
    c = "tables"
    rel = _rel(ds, path)
    key = ["user", "ts", "src_file", "src_row"]
    ev = ev.with_row_index("row")
    bad = ev.with_columns([pl.col(k).shift(1).alias(f"prev_{k}") for k in key]).filter(_before_previous(key))
    v.emit(c, bad, lambda r: f"{rel} row {r['row']} (user {r['user']}): (user, ts, src_file, src_row) = "
                             f"{_key(r, key)} sorts before the previous row's {_key(r, key, 'prev_')}")
    for col in ("user", "item", "cate"):
        v.emit(c, ev.filter((pl.col(col) < 1) | (pl.col(col) > n[col])),
               lambda r, col=col: f"{rel} row {r['row']} (user {r['user']}): {col} {r[col]} outside 1..{n[col]}")
    valid_codes = [int(b) for b in Behavior if b != Behavior.pad]
    v.emit(c, ev.filter(~pl.col("behavior").is_in(valid_codes)),
           lambda r: f"{rel} row {r['row']} (user {r['user']}): behavior {r['behavior']} is not a Behavior code")


def _check_sequence_rows(ds: Dataset, v: Violations, path: Path, seq: pl.DataFrame) -> None:
    """One sequences file (base or delta): sorted unique users, list lengths, time order."""
    c = "tables"
    rel = _rel(ds, path)
    seq = seq.with_row_index("row")
    v.emit(c, seq.with_columns(pl.col("user").shift(1).alias("prev")).filter(pl.col("user") <= pl.col("prev")),
           lambda r: f"{rel} row {r['row']} (user {r['user']}): user does not follow the previous row's user "
                     f"{r['prev']} (rows must be sorted by user, one per user)")
    for col in SEQ_LISTS:
        bad = seq.filter(pl.col(col).list.len() != pl.col("length")).with_columns(pl.col(col).list.len().alias("n"))
        v.emit(c, bad, lambda r, col=col: f"{rel} row {r['row']} (user {r['user']}): length {r['length']} but "
                                          f"{col} holds {r['n']} values")
    v.emit(c, seq.filter(pl.col("length") < 1),
           lambda r: f"{rel} row {r['row']} (user {r['user']}): length {r['length']} (every stored user has events)")
    bad = seq.filter(pl.col("ts").list.eval(pl.element().diff() < 0).list.any())

    def ts_msg(r: dict) -> str:
        t = np.asarray(r["ts"])
        j = int(np.flatnonzero(np.diff(t) < 0)[0]) + 1
        return (f"{rel} row {r['row']} (user {r['user']}): ts decreases at position {j} ({t[j]} < {t[j - 1]}): "
                f"the sequence is not in time order")

    v.emit(c, bad, ts_msg)


SEQ_LISTS = ["item", "cate", "behavior", "ts"]


def _compare_sequences_events(ds: Dataset, v: Violations, path: Path, seq: pl.DataFrame, ev: pl.DataFrame) -> None:
    """A sequences partition holds the events of its events partition, user by user and in the same order
    (both as of the version; ``seq`` and ``ev`` carry a ``row`` index)."""
    c = "tables"
    rel, ev_rel = _merged_rel(ds, "sequences", path), _merged_rel(ds, "events", ds.root / "events" / path.name)
    counts = ev.group_by("user").agg(pl.len().alias("events"))
    j = seq.select("user", "length").join(counts, on="user", how="full", coalesce=True)
    bad = j.filter(pl.col("length").fill_null(0) != pl.col("events").fill_null(0)).sort("user")
    v.emit(c, bad, lambda r: f"{rel} user {r['user']}: length {r['length'] or 0} but {ev_rel} holds "
                             f"{r['events'] or 0} events of this user")
    lengths_ok = all((seq[col].list.len() == seq["length"]).all() for col in SEQ_LISTS)
    if not lengths_ok or bad.height or seq["length"].sum() != ev.height:
        return
    flat = seq.select(
        pl.col("row").alias("seq_row"), "user", pl.int_ranges(0, pl.col("length")).alias("pos"), *SEQ_LISTS
    ).explode(["pos", *SEQ_LISTS])
    flat = flat.with_columns(ev.select(pl.col("row").alias("ev_row"), *[pl.col(x).alias(f"ev_{x}") for x in ["user", *SEQ_LISTS]]))
    cols = ["user", *SEQ_LISTS]
    diff = pl.any_horizontal([pl.col(x) != pl.col(f"ev_{x}") for x in cols])

    def content_msg(r: dict) -> str:
        f = next(x for x in cols if r[x] != r[f"ev_{x}"])
        return (f"{rel} row {r['seq_row']} (user {r['user']}) position {r['pos']}: {f} {r[f]} but {ev_rel} row "
                f"{r['ev_row']} has {r[f'ev_{f}']} (sequences must hold the events in the same order)")

    v.emit(c, flat.filter(diff), content_msg)


def _item_sums(df: pl.DataFrame) -> pl.DataFrame:
    """Per item: events, and sums of ts/user/behavior (additive over partitions)."""
    return df.group_by("item").agg(
        pl.len().cast(pl.Int64).alias("n"),
        pl.col("ts").sum().alias("ts_sum"),
        pl.col("user").cast(pl.Int64).sum().alias("user_sum"),
        pl.col("behavior").cast(pl.Int64).sum().alias("behavior_sum"),
    )


def _check_item_events(ds: Dataset, v: Violations, n_items: int, ev_sums: pl.DataFrame | None, label: str,
                       events: int) -> None:
    """item_events files sorted by (item, ts) and in part ``item % P``; per item (as of the version) equal to events/."""
    c = "tables"
    parts = ds.parts("item_events")
    n_parts = len(parts)
    total = 0
    ie_sums = []

    def check_file(q: int, path: Path, ie: pl.DataFrame) -> None:
        rel = _rel(ds, path)
        ie = ie.with_row_index("row")
        bad = ie.with_columns(pl.col("item").shift(1).alias("prev_item"), pl.col("ts").shift(1).alias("prev_ts"))
        v.emit(c, bad.filter(_before_previous(["item", "ts"])),
               lambda r: f"{rel} row {r['row']} (item {r['item']}): (item, ts) = ({r['item']}, {r['ts']}) sorts before "
                         f"the previous row's ({r['prev_item']}, {r['prev_ts']})")
        v.emit(c, ie.filter(pl.col("item") % n_parts != q),
               lambda r: f"{rel} row {r['row']} (item {r['item']}): item belongs in part {r['item'] % n_parts} "
                         f"(item % {n_parts})")

    for q, p in enumerate(parts):
        ie = _read_merged(ds, "item_events", p, ["item", "ts", "user", "behavior"], lambda f, df, q=q: check_file(q, f, df))
        total += ie.height
        ie_sums.append(_item_sums(ie))
    if total != events:
        v.add(c, f"item_events/: {total} rows as of version {ds.version} but {label} events = {events}")
    if not parts or ev_sums is None:
        return
    j = pl.concat(ie_sums).join(ev_sums, on="item", how="full", coalesce=True, suffix="_ev")
    bad = j.filter(pl.any_horizontal([pl.col(x).fill_null(-1) != pl.col(f"{x}_ev").fill_null(-1) for x in SUMS]))

    def sums(r: dict, sfx: str) -> str:
        if r[f"n{sfx}"] is None:
            return "no events"
        return f"{r[f'n{sfx}']} events (sums of ts/user/behavior {r[f'ts_sum{sfx}']}/{r[f'user_sum{sfx}']}/{r[f'behavior_sum{sfx}']})"

    v.emit(c, bad.sort("item"), lambda r: f"item_events/ item {r['item']}: {sums(r, '')} but events/ has {sums(r, '_ev')}")
    vocab = _rel(ds, ds.vocab_path("item"))
    vi = _vocab_table(ds, "item", ["id", "count"]).rename({"id": "item"})
    j = vi.join(ev_sums.select("item", "n"), on="item", how="full", coalesce=True)
    v.emit(c, j.filter(pl.col("count").fill_null(-1) != pl.col("n").fill_null(-1)).sort("item"),
           lambda r: f"{vocab} item {r['item']}: count {r['count']} but events/ has {r['n'] or 0} events")


# --------------------------------------------------------------------------- c. the split rule


class _SplitContext:
    """What the split, leakage and layout checks share: samples, per-user facts, item categories."""

    def __init__(self, ds: Dataset):
        self.report = ds.split_report()
        self.samples = pl.read_parquet(ds.samples_path).with_row_index("row")
        parts = ds.parts("sequences")
        frames = []
        for i, p in enumerate(parts):  # as of the version, one partition at a time
            frames.append(
                ds.read("sequences", p, ["user", "length", "ts"])
                .select("user", "length", pl.col("ts").list.max().alias("last_ts"), pl.lit(i).alias("part"))
            )
        self.users = pl.concat(frames) if frames else pl.DataFrame(
            schema={"user": pl.Int32, "length": pl.Int32, "last_ts": pl.Int64, "part": pl.Int32})
        self.seq_parts = parts
        self.ds = ds
        v = _vocab_table(ds, "item", ["id", "cate"])
        self.item_cate = v.rename({"id": "item", "cate": "item_cate"})
        self.n_items = v.height


def _quantile_cut(values: np.ndarray, q: float) -> int:
    s = np.sort(values)
    return int(s[min(int(q * s.size), s.size - 1)])


def check_split(ds: Dataset, ctx: _SplitContext, v: Violations) -> None:
    """Recompute the split rule from the users' last event times and compare every sample's set."""
    c = "split"
    rel = "split/samples.parquet"
    rep, s = ctx.report, ctx.samples
    opts = rep.options
    users = ctx.users.unique("user", keep="first")
    v.emit(c, s.filter(~pl.col("split").is_in(list(SPLITS))),
           lambda r: f"{rel} row {r['row']} (user {r['user']}): split {r['split']!r} is not one of {', '.join(SPLITS)}")
    v.emit(c, s.join(users, on="user", how="anti"),
           lambda r: f"{rel} row {r['row']} (user {r['user']}): the user has no stored sequence")
    if rep.users_total != users.height:
        v.add(c, f"split/report.json: users_total {rep.users_total} but sequences/ holds {users.height} users")
    if rep.method == "cut":
        last = users["last_ts"].to_numpy()
        if last.size == 0:
            v.add(c, "sequences/: no users to split")
            return
        cut = opts.get("cut_time")
        cut = _quantile_cut(last, opts.get("cut_quantile", 0.7)) if cut is None else int(cut)
        how = "options.cut_time" if opts.get("cut_time") is not None else \
            f"sorted(last event ts)[int({opts.get('cut_quantile', 0.7)} * {last.size})]"
        if rep.cut_time != cut:
            v.add(c, f"split/report.json: cut_time {rep.cut_time} but {how} = {cut}")
        train_last = last[last <= cut]
        vcut = opts.get("valid_cut_time")
        if vcut is not None:
            vcut = int(vcut)
        elif opts.get("valid_quantile") is not None and train_last.size:
            vcut = _quantile_cut(train_last, opts["valid_quantile"])
        if rep.valid_cut_time != vcut:
            v.add(c, f"split/report.json: valid_cut_time {rep.valid_cut_time} but the rule gives {vcut}")
        ties = int((last == cut).sum())
        if rep.ties_at_cut != ties:
            v.add(c, f"split/report.json: ties_at_cut {rep.ties_at_cut} but {ties} users' last event equals the cut")
        want = (
            pl.when(pl.col("last_ts") > cut).then(pl.lit("test"))
            .when(pl.lit(vcut is not None) & (pl.col("last_ts") > (vcut if vcut is not None else 0)))
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
        )
        users = users.with_columns(want.alias("expected"))
        j = s.join(users, on="user", how="inner")

        def why(r: dict) -> str:
            if r["expected"] == "test":
                return f"its last event (ts {r['last_ts']}) is after the cut time {cut}"
            if r["expected"] == "valid":
                return f"its last event (ts {r['last_ts']}) is <= the cut time {cut} and after the validation cut {vcut}"
            return (f"its last event (ts {r['last_ts']}) is <= the cut time {cut}"
                    + (f" and <= the validation cut {vcut}" if vcut is not None else ""))

        v.emit(c, j.filter(pl.col("split") != pl.col("expected")),
               lambda r: f"{rel} row {r['row']} (user {r['user']}): split is {r['split']!r} but the split rule puts the "
                         f"user in {r['expected']!r}: {why(r)}")
        v.emit(c, j.filter(pl.col("target_pos") != pl.col("length") - 1),
               lambda r: f"{rel} row {r['row']} (user {r['user']}): target_pos {r['target_pos']}, expected "
                         f"{r['length'] - 1} (the cut split's target is the user's last event)")
        per_user = s.group_by("user").agg(pl.len().alias("n"), pl.col("split").unique().sort().alias("sets"))
        v.emit(c, per_user.filter(pl.col("sets").list.len() > 1).sort("user"),
               lambda r: f"{rel} user {r['user']}: in several sets ({', '.join(r['sets'])}); cut-split sets must be "
                         f"user-disjoint")
        per_target = 2 if rep.options.get("pairs") else 1
        v.emit(c, per_user.filter(pl.col("n") != per_target).sort("user"),
               lambda r: f"{rel} user {r['user']}: {r['n']} samples, expected {per_target} (the user's last event"
                         f"{', as a positive and a negative' if per_target == 2 else ''})")
        v.emit(c, users.join(s, on="user", how="anti").sort("user"),
               lambda r: f"{rel} user {r['user']}: no sample (the cut split gives every user one)")
    elif rep.method == "loo":
        frames = [
            users.filter(pl.col("length") >= back).select(
                "user", pl.lit(name).alias("split"), (pl.col("length") - back).cast(pl.Int32).alias("target_pos"))
            for name, back in (("train", 3), ("valid", 2), ("test", 1))
        ]
        want = pl.concat(frames)
        keys = ["user", "split", "target_pos"]
        v.emit(c, s.join(want, on=keys, how="anti"),
               lambda r: f"{rel} row {r['row']} (user {r['user']}): ({r['split']}, target_pos {r['target_pos']}) is not "
                         f"a leave-one-out target (test = last, valid = second last, train = third last event)")
        v.emit(c, want.join(s, on=keys, how="anti").sort("user"),
               lambda r: f"{rel} user {r['user']}: no {r['split']} sample at target_pos {r['target_pos']}")
    else:
        v.add(c, f"split/report.json: unknown method {rep.method!r}")
    # the report's per-set numbers
    for name in SPLITS:
        d = s.filter(pl.col("split") == name)
        got = {
            "samples": d.height,
            "users": d["user"].n_unique(),
            "positives": int((d["label"] == 1).sum()),
            "empty_history": int((d["hist_end"] == 0).sum()),
            "target_ts_min": d["ts"].min(),
            "target_ts_max": d["ts"].max(),
        }
        sr = rep.sets.get(name)
        if sr is None:
            v.add(c, f"split/report.json: sets has no {name!r} entry")
            continue
        for k, val in got.items():
            if getattr(sr, k) != val:
                v.add(c, f"split/report.json: sets.{name}.{k} = {getattr(sr, k)} but {rel} gives {val}")


# --------------------------------------------------------------------------- d. leakage of samples


def check_leakage(ds: Dataset, ctx: _SplitContext, v: Violations) -> None:
    """Per sample: target time/item against the stored sequence, and hist_end == #events strictly before it."""
    c = "leakage"
    rel = "split/samples.parquet"
    s = ctx.samples.join(ctx.item_cate, on="item", how="left")
    v.emit(c, s.filter((pl.col("item") < 1) | (pl.col("item") > ctx.n_items)),
           lambda r: f"{rel} row {r['row']} (user {r['user']}): item {r['item']} outside 1..{ctx.n_items}")
    v.emit(c, s.filter(~pl.col("label").is_in([0, 1])),
           lambda r: f"{rel} row {r['row']} (user {r['user']}): label {r['label']} is not 0 or 1")
    for p in ctx.seq_parts:
        seq = ds.read("sequences", p, ["user", "length", "item", "cate", "ts"]).unique("user", keep="first")
        seq = seq.rename({"item": "seq_item", "cate": "seq_cate", "ts": "seq_ts"})
        j = s.join(seq, on="user", how="inner")
        if j.height == 0:
            continue
        before = (
            j.select("row", "ts", "seq_ts").explode("seq_ts")
            .group_by("row").agg((pl.col("seq_ts") < pl.col("ts")).sum().cast(pl.Int64).alias("n_before"))
        )
        ok = (pl.col("target_pos") >= 0) & (pl.col("target_pos") < pl.col("seq_ts").list.len())
        at = pl.col("target_pos").clip(0)
        j = j.join(before, on="row", how="left").with_columns(
            ok.alias("pos_ok"),
            pl.when(ok).then(pl.col("seq_ts").list.get(at, null_on_oob=True)).alias("ev_ts"),
            pl.when(ok).then(pl.col("seq_item").list.get(at, null_on_oob=True)).alias("ev_item"),
            pl.when(ok).then(pl.col("seq_cate").list.get(at, null_on_oob=True)).alias("ev_cate"),
        )
        head = lambda r: f"{rel} row {r['row']} (user {r['user']})"
        v.emit(c, j.filter(~pl.col("pos_ok")),
               lambda r: f"{head(r)}: target_pos {r['target_pos']} outside the user's sequence (length {r['length']})")
        j = j.filter(pl.col("pos_ok"))
        v.emit(c, j.filter(pl.col("hist_end") > pl.col("n_before")),
               lambda r: f"{head(r)}: hist_end {r['hist_end']} but only {r['n_before']} of the user's events are strictly "
                         f"before the target time {r['ts']}: the history includes {r['hist_end'] - r['n_before']} "
                         f"event(s) at/after the target time")
        v.emit(c, j.filter(pl.col("hist_end") < pl.col("n_before")),
               lambda r: f"{head(r)}: hist_end {r['hist_end']} but {r['n_before']} of the user's events are strictly "
                         f"before the target time {r['ts']}: the history misses {r['n_before'] - r['hist_end']} event(s)")
        v.emit(c, j.filter(pl.col("ts") != pl.col("ev_ts")),
               lambda r: f"{head(r)}: ts {r['ts']} differs from ts {r['ev_ts']} of the event at target_pos {r['target_pos']}")
        pos, neg = pl.col("label") == 1, pl.col("label") == 0
        v.emit(c, j.filter(pos & (pl.col("item") != pl.col("ev_item"))),
               lambda r: f"{head(r)}: label 1 but item {r['item']} is not the item {r['ev_item']} of the event at "
                         f"target_pos {r['target_pos']}")
        v.emit(c, j.filter(pos & (pl.col("item") == pl.col("ev_item")) & (pl.col("cate") != pl.col("ev_cate"))),
               lambda r: f"{head(r)}: label 1 but cate {r['cate']} is not the category {r['ev_cate']} of the event at "
                         f"target_pos {r['target_pos']}")
        v.emit(c, j.filter(neg & (pl.col("item") == pl.col("ev_item"))),
               lambda r: f"{head(r)}: label 0 but item {r['item']} is the true target item (the event at target_pos "
                         f"{r['target_pos']})")
        v.emit(c, j.filter(neg & (pl.col("cate") != pl.col("item_cate"))),
               lambda r: f"{head(r)}: label 0 but cate {r['cate']} is not the category {r['item_cate']} of item {r['item']} "
                         f"(vocab/item.parquet)")


# --------------------------------------------------------------------------- e. layouts


@dataclass(frozen=True)
class Group:
    """A set of fixed-list columns sharing one window: ``{prefix}_{field}`` and ``{prefix}_len``."""

    prefix: str  #: column prefix: hist, side, long, short, side_long, side_short
    source: str  #: "hist" (the user's history) or "side" (the candidate item's earlier events)
    mode: str  #: "all" (most recent width), "long" / "short" (the crop parts)
    pad: str  #: "front" (zeros first) or "post" (zeros last)
    width: str  #: key in the layout's widths


FIELDS = {"hist": ("item", "cate", "behavior"), "side": ("user", "behavior")}
ID_FIELDS = {"item", "user"}  #: ids are 1-based: 0 only at padding (XLong categories are all 0)
CROP = {"hist": ("long", "short"), "side": ("side_long", "side_short")}  #: widths of the crop parts
GROUPS: dict[str, list[Group]] = {
    "plain": [Group("hist", "hist", "all", "post", "hist"), Group("side", "side", "all", "post", "side")],
    "hpmn": [Group("hist", "hist", "all", "front", "hist"), Group("side", "side", "all", "front", "side")],
    "mimn": [Group("hist", "hist", "all", "front", "hist"), Group("side", "side", "all", "front", "side")],
    "shan": [
        Group("long", "hist", "long", "front", "long"),
        Group("short", "hist", "short", "post", "short"),
        Group("side_long", "side", "long", "front", "side_long"),
        Group("side_short", "side", "short", "post", "side_short"),
    ],
}


def _window(g: Group, widths: dict[str, int], n: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(offset, length) of group ``g``'s real part within the ``n`` events before the target.

    ``all``: the most recent ``width``. The crop rule (shan): the short part is the most recent
    ``min(n, short)`` events; the long part the up to ``long`` events just before it (so when fewer than
    ``short`` events exist, all of them are in the short part and the long part is empty).
    """
    if g.mode == "all":
        length = pl.min_horizontal(n, pl.lit(widths[g.width]))
        return n - length, length
    w_long, w_short = (widths[k] for k in CROP[g.source])
    short_len = pl.min_horizontal(n, pl.lit(w_short))
    if g.mode == "short":
        return n - short_len, short_len
    end = n - short_len
    length = pl.min_horizontal(end, pl.lit(w_long))
    return end - length, length


def _padded(src: pl.Expr, offset: pl.Expr, length: pl.Expr, width: int, pad: str, dtype: pl.DataType) -> pl.Expr:
    real = src.list.slice(offset, length)
    zeros = pl.lit(0, dtype=dtype).repeat_by(pl.lit(width) - length)
    return pl.concat_list([zeros, real] if pad == "front" else [real, zeros])


def _side_tail(g_widths: dict[str, int], name: str) -> int:
    """How many of the item's most recent earlier events the layout can show."""
    if name == "shan":
        return g_widths["side_long"] + g_widths["side_short"]
    return g_widths["side"]


def _batches(path: Path, max_rows: int | None) -> Iterator[tuple[int, pl.DataFrame]]:
    """(first row number, frame) of up to ``max_rows`` rows of a Parquet file, BATCH_ROWS at a time."""
    pf = pq.ParquetFile(path)
    start = 0
    for b in pf.iter_batches(batch_size=BATCH_ROWS):
        if max_rows is not None and start >= max_rows:
            break
        df = pl.from_arrow(pa.Table.from_batches([b]))
        if max_rows is not None:
            df = df.head(max_rows - start)
        yield start, df
        start += df.height


def _side_sources(ds: Dataset, rows: pl.DataFrame, tail: int) -> pl.DataFrame:
    """Per layout row: the candidate item's events strictly before the row's ts, the most recent ``tail`` of them.

    Returns ``row``, ``side_n_before`` (number of such events) and ``src_side_user``/``src_side_behavior`` (the
    last ``min(side_n_before, tail)`` of them, oldest first; ties in time keep the stored order).

    Work is linear in the events of the batch's items, never in rows x item popularity: the item events are
    ranked by (ts, stored order) within each item; ``side_n_before`` comes from sorting the queries into the
    events (a query sorts before events with the same ts, so those do not count); the wanted events are then
    the ranks ``[n_before - L, n_before)``, fetched by an equi-join on (item, rank).
    """
    q = rows.select("row", "item", "ts")
    wanted = q["item"].unique()
    ev = pl.concat([  # as of the version: only the batch's items' rows, in stored order within each partition
        ds.read("item_events", p, ["item", "ts", "user", "behavior"], items=wanted).with_row_index("order")
        .select("item", "ts", pl.col("order").cast(pl.Int64) + (k << 40), "user", "behavior")
        for k, p in enumerate(ds.parts("item_events"))
    ]).sort("item", "ts", "order")
    ev = ev.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("item").alias("rank"))
    merged = pl.concat([
        ev.select("item", "ts", pl.lit(1, pl.Int64).alias("is_event"), pl.col("order").cast(pl.Int64).alias("tie"),
                  pl.lit(None, dtype=q.schema["row"]).alias("row")),
        q.select("item", "ts", pl.lit(0, pl.Int64).alias("is_event"), pl.lit(0, pl.Int64).alias("tie"), "row"),
    ]).sort("item", "ts", "is_event", "tie")
    n_before = (
        merged.with_columns(pl.col("is_event").cum_sum().over("item").alias("side_n_before"))
        .filter(pl.col("is_event") == 0)
        .select("row", "side_n_before")
    )
    length = pl.min_horizontal(pl.col("side_n_before"), pl.lit(tail))
    picked = (
        q.join(n_before, on="row", how="left")
        .with_columns(pl.int_ranges(pl.col("side_n_before") - length, pl.col("side_n_before"),
                                    dtype=pl.Int64).alias("rank"))
        .explode("rank")
        .filter(pl.col("rank").is_not_null())
        .join(ev.select("item", "rank", "user", "behavior"), on=["item", "rank"], how="left")
        .sort("row", "rank")
        .group_by("row", maintain_order=True)
        .agg(pl.col("user").alias("src_side_user"), pl.col("behavior").alias("src_side_behavior"))
    )
    return (
        q.select("row")
        .join(n_before, on="row", how="left")
        .join(picked, on="row", how="left")
        .with_columns(
            pl.col("side_n_before").fill_null(0).cast(pl.Int64),
            pl.col("src_side_user").fill_null(pl.lit([], dtype=pl.List(pl.Int32))),
            pl.col("src_side_behavior").fill_null(pl.lit([], dtype=pl.List(pl.Int8))),
        )
    )


def check_layout(ds: Dataset, ctx: _SplitContext, name: str, v: Violations, max_rows: int | None) -> None:
    """Every layout row (up to ``max_rows`` per file) re-derived from samples, sequences and item_events."""
    c = f"layouts/{name}"
    rep, _ = _parse(LayoutReport, ds.layout_dir(name) / "report.json")
    if rep is None or name not in GROUPS or set(rep.widths) != _width_keys(LAYOUT_ROWS[name]):
        return  # reported by check_files / check_schemas
    widths = rep.widths
    tail = _side_tail(widths, name)
    key = ["user", "ts", "item", "label"]
    for split in SPLITS:
        path = ds.layout_dir(name) / f"{split}.parquet"
        rel = _rel(ds, path)
        if not path.exists():
            continue  # reported by check_schemas
        samples = ctx.samples.filter(pl.col("split") == split)
        n_rows = pq.ParquetFile(path).metadata.num_rows
        if rep.rows.get(split) != n_rows:
            v.add(c, f"layouts/{name}/report.json: rows.{split} = {rep.rows.get(split)} but {rel} has {n_rows} rows")
        if n_rows != samples.height:
            v.add(c, f"{rel}: {n_rows} rows but split/samples.parquet has {samples.height} {split} samples")
        if schema_diff(pq.read_schema(path), arrow_schema(LAYOUT_ROWS[name], widths)):
            continue  # reported by check_schemas; the content cannot be compared column by column
        lookup = samples.select(*key, pl.col("row").alias("sample_row"), pl.col("cate").alias("sample_cate"),
                                "hist_end").unique(key, keep="first")
        for start, df in _batches(path, max_rows):
            df = df.with_row_index("row", offset=start).join(lookup, on=key, how="left")
            v.emit(c, df.filter(pl.col("sample_row").is_null()),
                   lambda r: f"{rel} row {r['row']} (user {r['user']}): no {split} sample in split/samples.parquet with "
                             f"(user, ts, item, label) = ({r['user']}, {r['ts']}, {r['item']}, {r['label']})")
            df = df.filter(pl.col("sample_row").is_not_null())
            v.emit(c, df.filter(pl.col("cate") != pl.col("sample_cate")),
                   lambda r: f"{rel} row {r['row']} (user {r['user']}): cate {r['cate']} but the sample's cate is "
                             f"{r['sample_cate']}")
            if df.height == 0:
                continue
            df = _with_history_source(ctx, df)
            df = df.join(_side_sources(ds, df, tail), on="row", how="left")
            _compare_groups(v, c, rel, name, widths, df)
            if name == "mimn":
                _check_negatives(v, c, rel, widths["hist"], ctx, df)
        if max_rows is None:
            keys = pl.scan_parquet(path).select(key).collect()
            cover = keys.group_by(key).len()
            v.emit(c, samples.join(cover, on=key, how="anti").sort("row"),
                   lambda r: f"{rel}: split/samples.parquet row {r['row']} (user {r['user']}) has no row in this file")
            v.emit(c, cover.filter(pl.col("len") > 1).join(lookup, on=key, how="left"),
                   lambda r: f"{rel}: split/samples.parquet row {r['sample_row']} (user {r['user']}) has {r['len']} rows "
                             f"in this file, expected one")


def _with_history_source(ctx: _SplitContext, df: pl.DataFrame) -> pl.DataFrame:
    """Add the users' whole stored sequences (``src_hist_*`` lists) and ``hist_n`` (hist_end within range)."""
    parts = df.select("user").unique().join(ctx.users.select("user", "part"), on="user", how="inner")
    frames = []
    for (i,), u in parts.group_by("part"):
        frames.append(
            ctx.ds.read("sequences", ctx.seq_parts[i], ["user", *FIELDS["hist"], "ts"], users=u["user"])
            .select("user", *[pl.col(f).alias(f"src_hist_{f}") for f in (*FIELDS["hist"], "ts")])
        )
    schema = {"user": pl.Int32, "src_hist_item": pl.List(pl.Int32), "src_hist_cate": pl.List(pl.Int32),
              "src_hist_behavior": pl.List(pl.Int8), "src_hist_ts": pl.List(pl.Int64)}
    seq = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    seq = seq.unique("user", keep="first")
    df = df.join(seq, on="user", how="left")
    for f in (*FIELDS["hist"], "ts"):
        df = df.with_columns(pl.col(f"src_hist_{f}").fill_null(pl.lit([], dtype=schema[f"src_hist_{f}"])))
    n = pl.col("hist_end").cast(pl.Int64).clip(0, pl.col("src_hist_item").list.len().cast(pl.Int64))
    return df.with_columns(n.alias("hist_n"))


def _compare_groups(
    v: Violations, c: str, rel: str, name: str, widths: dict[str, int], df: pl.DataFrame,
    fields: dict[str, tuple[str, ...]] = FIELDS,
) -> None:
    """Compare every column group of a layout batch with the window re-derived from its source.

    ``df`` holds the layout columns plus the sources: ``src_hist_{field}`` lists (whole histories) with
    ``hist_n`` (how many of their first entries precede the target) and ``src_side_{field}`` lists (the
    item-side entries before the target, all of which count). ``fields`` picks the columns compared.
    """
    for g in GROUPS[name]:
        w = widths[g.width]
        n = pl.col("hist_n") if g.source == "hist" else pl.col("src_side_user").list.len().cast(pl.Int64)
        offset, length = _window(g, widths, n)
        exp_cols, bad_cols = [], []
        for f in fields[g.source]:
            col = f"{g.prefix}_{f}"
            dtype = df.schema[col].inner
            exp = _padded(pl.col(f"src_{g.source}_{f}"), offset, length, w, g.pad, dtype)
            exp_cols.append(exp.alias(f"exp_{col}"))
            bad_cols.append((pl.col(col).arr.to_list() != pl.col(f"exp_{col}")).alias(f"bad_{col}"))
        d = df.with_columns(*exp_cols, length.alias("exp_len")).with_columns(
            *bad_cols, (pl.col(f"{g.prefix}_len") != pl.col("exp_len")).alias("bad_len")
        )
        any_bad = pl.any_horizontal([pl.col(f"bad_{g.prefix}_{f}") for f in fields[g.source]] + [pl.col("bad_len")])
        bad = d.filter(any_bad)
        if bad.height == 0:
            continue
        msgs = []
        for r in bad.head(v.room(c)).iter_rows(named=True):
            msgs.extend(_describe(rel, g, w, r, fields[g.source]))
        v.extend(c, msgs, bad.height)


def _describe(rel: str, g: Group, w: int, r: dict, fields: tuple[str, ...]) -> list[str]:
    """Messages for one mismatching row of group ``g`` (called only for the first few rows)."""
    head = f"{rel} row {r['row']} (user {r['user']})"
    if "src_hist_ts" not in r:  # XLong: the sample's own lists, no time
        where = "the store row's " + ("hist_item" if g.source == "hist" else "side_user")
    elif g.source == "hist":
        where = "the user's events strictly before the target time"
    else:
        where = f"the users who touched item {r['item']} strictly before the target time"
    out = []
    if r["bad_len"]:
        extra = ""
        if r[f"{g.prefix}_len"] > r["exp_len"]:
            extra = ": more events than exist before the target time (events at/after the target time?)"
        out.append(f"{head}: {g.prefix}_len is {r[f'{g.prefix}_len']}, expected {r['exp_len']} ({where}){extra}")
    exp_len = r["exp_len"]
    for f in fields:
        col = f"{g.prefix}_{f}"
        if not r[f"bad_{col}"]:
            continue
        a, e = list(r[col]), list(r[f"exp_{col}"])
        j = next(i for i in range(w) if a[i] != e[i])
        is_pad = j < w - exp_len if g.pad == "front" else j >= exp_len
        if is_pad:
            out.append(f"{head}: {col} position {j} is padding but holds {a[j]} (padding must be 0)")
            continue
        msg = f"{head}: {col} position {j} holds {a[j]}, expected {e[j]} ({where})"
        if g.source == "hist" and f == "item" and "src_hist_ts" in r:
            seq, ts, n = list(r["src_hist_item"]), list(r["src_hist_ts"]), r["hist_n"]
            later = [k for k in range(n, len(seq)) if seq[k] == a[j]]
            if later:
                k = later[0]
                if a[j] not in seq[:n]:
                    msg = (f"{head}: {col} holds an event at/after the target time: position {j} holds item {a[j]}, "
                           f"which the user touches only at/after the target time {r['ts']} (first at sequence "
                           f"position {k}, ts {ts[k]}); expected {e[j]}")
                else:
                    msg += (f"; item {a[j]} is also the user's event at sequence position {k} (ts {ts[k]}, at/after "
                            f"the target time {r['ts']}): the history may hold an event at/after the target time")
        out.append(msg)
    return out


def _check_negatives(v: Violations, c: str, rel: str, width: int, ctx: _SplitContext, df: pl.DataFrame) -> None:
    """mimn: neg_item/neg_cate are 0 at padding; elsewhere valid items, with their category, not in the history."""
    flat = (
        df.select(
            "row", "user", "hist_len",
            pl.int_ranges(0, width).alias("pos"),
            pl.col("hist_item").arr.to_list(),
            pl.col("neg_item").arr.to_list(),
            pl.col("neg_cate").arr.to_list(),
        )
        .explode(["pos", "hist_item", "neg_item", "neg_cate"])
        .with_columns((pl.col("pos") >= width - pl.col("hist_len")).alias("real"))
    )
    head = lambda r: f"{rel} row {r['row']} (user {r['user']})"
    v.emit(c, flat.filter(~pl.col("real") & ((pl.col("neg_item") != 0) | (pl.col("neg_cate") != 0))),
           lambda r: f"{head(r)}: neg_item/neg_cate position {r['pos']} is padding but holds "
                     f"{r['neg_item']}/{r['neg_cate']} (padding must be 0)")
    real = flat.filter(pl.col("real"))
    v.emit(c, real.filter((pl.col("neg_item") < 1) | (pl.col("neg_item") > ctx.n_items)),
           lambda r: f"{head(r)}: neg_item position {r['pos']} holds {r['neg_item']}, outside 1..{ctx.n_items}")
    cat = real.join(ctx.item_cate, left_on="neg_item", right_on="item", how="left")
    v.emit(c, cat.filter(pl.col("item_cate").is_not_null() & (pl.col("neg_cate") != pl.col("item_cate"))),
           lambda r: f"{head(r)}: neg_cate position {r['pos']} is {r['neg_cate']}, but item {r['neg_item']}'s category "
                     f"is {r['item_cate']}")
    shown = real.select("row", pl.col("hist_item").alias("neg_item")).unique()
    v.emit(c, real.join(shown, on=["row", "neg_item"], how="semi"),
           lambda r: f"{head(r)}: neg_item position {r['pos']} holds item {r['neg_item']}, which is in the row's history")


# --------------------------------------------------------------------------- XLong: no time, no categories


XLONG_KEY = ["user", "ts", "item", "label"]  #: identifies a sample (ts = line number in its file)


def check_xlong_store(ds: Dataset, v: Violations) -> None:
    """``xlong/{split}.parquet`` exist (schema: see check_schemas) and hold ids >= 1 (0 is padding)."""
    c = "xlong"
    for s in SPLITS:
        p = ds.root / "xlong" / f"{s}.parquet"
        rel = f"xlong/{s}.parquet"
        if not p.exists():
            v.add(c, f"{rel}: missing")
            continue
        if schema_diff(pq.read_schema(p), arrow_schema(XLongSampleRow)):
            continue  # reported by check_schemas
        lf = pl.scan_parquet(p).with_row_index("row")
        for col in ("user", "item"):
            v.emit(c, lf.filter(pl.col(col) < 1).collect(),
                   lambda r, col=col: f"{rel} row {r['row']} (user {r['user']}): {col} {r[col]} < 1 (ids are 1-based)")
        for col in ("hist_item", "side_user"):
            bad = lf.filter(pl.col(col).list.eval(pl.element() < 1).list.any()).select("row", "user").collect()
            v.emit(c, bad, lambda r, col=col: f"{rel} row {r['row']} (user {r['user']}): {col} holds an id < 1 "
                                              f"(ids are 1-based; 0 is padding)")


def check_xlong_layout(ds: Dataset, name: str, v: Violations, max_rows: int | None) -> None:
    """An XLong layout: widths, padding and lengths, and the ids shown equal the store row's most recent ones.

    Per column group: ``0 <= len <= width``; padding positions (front or post, per the layout) are 0 in every
    column (mimn negatives included); ids are non-zero at real positions; shan's long part is empty unless
    its short part is full. Each row is matched to its store row (``xlong/{split}.parquet``, on user, ts,
    item, label) and its lengths and history items / item-side ids are compared with the window taken from
    the store's ``hist_item`` / ``side_user`` lists (categories and behaviours are constants, not compared).
    """
    c = f"layouts/{name}"
    rep, _ = _parse(LayoutReport, ds.layout_dir(name) / "report.json")
    if rep is None or name not in GROUPS or set(rep.widths) != _width_keys(LAYOUT_ROWS[name]):
        return  # reported by check_files / check_schemas
    widths = rep.widths
    ids = {"hist": ("item",), "side": ("user",)}
    for split in SPLITS:
        path = ds.layout_dir(name) / f"{split}.parquet"
        if not path.exists():
            continue
        rel = _rel(ds, path)
        n_rows = pq.ParquetFile(path).metadata.num_rows
        if rep.rows.get(split) != n_rows:
            v.add(c, f"layouts/{name}/report.json: rows.{split} = {rep.rows.get(split)} but {rel} has {n_rows} rows")
        if schema_diff(pq.read_schema(path), arrow_schema(LAYOUT_ROWS[name], widths)):
            continue  # reported by check_schemas
        store_path = ds.root / "xlong" / f"{split}.parquet"
        store = None
        if store_path.exists() and not schema_diff(pq.read_schema(store_path), arrow_schema(XLongSampleRow)):
            store = pl.scan_parquet(store_path)
            n_store = store.select(pl.len()).collect().item()
            if n_store != n_rows:
                v.add(c, f"{rel}: {n_rows} rows but xlong/{split}.parquet has {n_store} samples")
        for start, df in _batches(path, max_rows):
            df = df.with_row_index("row", offset=start)
            _check_structure(v, c, rel, name, widths, df)
            if store is None:
                continue
            src = (
                store.join(df.lazy().select(XLONG_KEY).unique(), on=XLONG_KEY, how="semi")
                .select(*XLONG_KEY, pl.col("hist_item").alias("src_hist_item"), pl.col("side_user").alias("src_side_user"))
                .unique(XLONG_KEY, keep="none")  # a key that is not unique cannot be matched
                .collect()
            )
            m = df.join(src, on=XLONG_KEY, how="left")
            v.emit(c, m.filter(pl.col("src_hist_item").is_null()),
                   lambda r: f"{rel} row {r['row']} (user {r['user']}): no single sample in xlong/{split}.parquet with "
                             f"(user, ts, item, label) = ({r['user']}, {r['ts']}, {r['item']}, {r['label']})")
            m = m.filter(pl.col("src_hist_item").is_not_null())
            if m.height:
                m = m.with_columns(pl.col("src_hist_item").list.len().cast(pl.Int64).alias("hist_n"))
                _compare_groups(v, c, rel, name, widths, m, fields=ids)


def _check_structure(v: Violations, c: str, rel: str, name: str, widths: dict[str, int], df: pl.DataFrame) -> None:
    """Lengths within the widths, zeros at padding, non-zero ids at real positions, the shan crop shape."""

    def head(r: dict) -> str:
        return f"{rel} row {r['row']}" + (f" (user {r['user']})" if "user" in r else "")

    for g in GROUPS[name]:
        w, ln = widths[g.width], pl.col(f"{g.prefix}_len")
        v.emit(c, df.filter((ln < 0) | (ln > w)),
               lambda r, g=g, w=w: f"{head(r)}: {g.prefix}_len {r[f'{g.prefix}_len']} outside 0..{w}")
        ok = df.filter((ln >= 0) & (ln <= w))
        pad_off, pad_len = (pl.lit(0), w - ln) if g.pad == "front" else (ln, w - ln)
        real_off = (w - ln) if g.pad == "front" else pl.lit(0)
        fields = [f"{g.prefix}_{f}" for f in FIELDS[g.source]]
        if name == "mimn" and g.prefix == "hist":
            fields += ["neg_item", "neg_cate"]
        for col in fields:
            lst = pl.col(col).arr.to_list()
            bad = ok.filter(lst.list.slice(pad_off, pad_len).list.eval(pl.element() != 0).list.any())
            v.emit(c, bad, lambda r, col=col: f"{head(r)}: {col} holds a non-zero value at a padding position "
                                              f"(padding must be 0)")
            if col.rsplit("_", 1)[-1] in ID_FIELDS:
                bad = ok.filter(lst.list.slice(real_off, ln).list.eval(pl.element() == 0).list.any())
                v.emit(c, bad, lambda r, col=col: f"{head(r)}: {col} holds 0 at a real position "
                                                  f"(0 is padding; ids are 1-based)")
    if name == "shan":
        for lp, sp in (("long", "short"), ("side_long", "side_short")):
            w_short = widths[sp]
            bad = df.filter((pl.col(f"{sp}_len") < w_short) & (pl.col(f"{lp}_len") > 0))
            v.emit(c, bad, lambda r, lp=lp, sp=sp, w_short=w_short:
                   f"{head(r)}: {lp}_len {r[f'{lp}_len']} > 0 while {sp}_len {r[f'{sp}_len']} < {w_short} "
                   f"(crop rule: the long part is empty until the short part is full)")
