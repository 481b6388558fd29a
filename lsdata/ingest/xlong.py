"""XLong (Tianchi dataId=22482, the HPMN repo's ``data/xlong/``): samples, not events.

Input files (protocol.md §1.3), plain/.gz/.bz2/.zip, kind recognised from the content:

* ``train_corpus_total_dual.txt`` / ``test_corpus_total_dual.txt`` - one user per line, 7 tab-separated
  fields::

      0 index     integer, ignored (checked to be an integer)
      1 uid       raw user index (the reference assumes < 20000)
      2 history   comma list of item ids, oldest first (the reference assumes exactly 1000)
      3 pos_item  positive target item id
      4 neg_item  negative target item id
      5 pos_side  comma list of ints: item-side sequence of the positive target (reference: 184; may be empty)
      6 neg_side  same for the negative target

  Train or test is read from the file NAME (``train`` / ``test`` in it), overridable with
  ``IngestOptions.kinds[path] = "xlong_train" | "xlong_test"``.
* ``graph_emb.txt`` - kind ``graph_emb``: whitespace-separated float matrix, one row per raw item id
  (row ``r`` = item ``r``), 16 columns in the reference. Blank lines are skipped and take no row (as
  ``np.loadtxt`` does). Optional: without it no ``item_init.npy`` is written.

Output (``OUT/``)::

    xlong/{train,valid,test}.parquet   one row per sample, see BASE_SCHEMA
    item_init.npy                      float32 [items + 1, dim]: row 0 = padding (zeros), row r + 1 = graph_emb
                                       row r; initialises the item embedding table. Items the corpora use
                                       beyond graph_emb's rows get zero rows (counted in the graph_emb notes).
    quarantine.parquet                 rejected lines with file, line, field, reason
    manifest.json                      written last
    layouts/plain/                     materialised right after the manifest (``build_layouts``)

Conventions:

* Ids are shifted by +1 so that 0 is padding: ``item = raw + 1``, ``user = uid + 1``, item-side ids
  ``= raw + 1``. With the generator's convention (item-side ids are uids) item-side ids equal user ids.
* Every line gives **two samples** sharing the history: label 1 with ``pos_item`` and ``pos_side``, then
  label 0 with ``neg_item`` and ``neg_side`` (the reference's interleaved pos, neg order).
* XLong has no time and no categories: ``ts`` is the 1-based line number of the sample's line in its file
  (the same number the quarantine uses), so it only orders samples; ``cate`` is 0 everywhere and the
  manifest has ``cates = 0``, ``ts_min = ts_max = None``. Every history/item-side entry gets the
  behaviour code ``Behavior.click``.
* Validation is carved from the train file(s) by user: of the distinct uids on kept train lines, a
  seeded random ``round(xlong_valid_fraction * n)`` (``numpy.random.default_rng(seed).permutation`` of
  the sorted uids) go to ``valid`` with all their lines; XLong has one line per user, so this is that
  share of the train lines, both samples of a line always together, and valid users never appear in
  train. The draw does not depend on chunk sizes or file order.
* Manifest: ``events`` = number of **history entries** on kept lines, counted once per line (not per
  sample); ``users`` = the largest user id (so an embedding table needs ``users + 1`` rows);
  ``items`` = the largest item id used by the corpora or covered by ``graph_emb`` (``items + 1`` rows);
  ``partitions = 1``. Per-file notes give the length distribution (min/median/max, lists off the
  reference length 1000/184), ``history_entries``, ``samples`` (2 per kept line), ``side_id_max``
  (largest item-side id), and on the first train file ``valid_lines``/``valid_users`` (the carve over
  all train files); graph_emb notes give ``rows``, ``dim`` and ``items_without_embedding``.

Parsing is streaming (``chunk_bytes`` of text at a time; peak memory is roughly 15 x ``chunk_bytes``)
and vectorised: each chunk is split with polars string/list expressions; nothing loops over lines in
Python. Spaces around fields and commas are accepted. Malformed lines are quarantined with
the first failing field (``line``, ``index``, ``uid``, ``history``, ``pos_item``, ``neg_item``,
``pos_side``, ``neg_side``; ``row``/``value`` for graph_emb), or raise :class:`InputError` naming
``file:line:field`` with ``strict``.

The Spark engine (:mod:`lsdata.spark.xlong`) writes the same files with the pieces of :func:`ingest`:
:func:`read_chunk` per chunk of a byte span, :class:`CorpusStats` merged over spans, :func:`valid_users`,
:func:`carve` and :func:`sample_table` per write batch, :func:`write_samples`, :func:`finish`; its layouts with
:func:`layout_plan` and :func:`batch_tables` per batch of samples.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lsdata.dataset import Dataset
from lsdata.defaults import DEFAULT_SEED, SPLITS, Behavior, IngestOptions, LayoutLengths
from lsdata.events import parquet_options
from lsdata.ingest.common import FileCounts, FileTask, Quarantine, first_failure, lines_frame, reconcile, wrong_format
from lsdata.io import (
    InputError,
    file_bytes,
    head_lines,
    iter_line_chunks,
    publish,
    sha256_file,
    staging_dir,
    write_model_atomic,
)
from lsdata.layouts import LayoutWriter, NegativeSampler, Ranges, layout_table, lengths_for, publish_layouts
from lsdata.schemas import LayoutReport, Manifest, XLongSampleRow, arrow_schema

DATASET = "xlong"
TRAIN, TEST, EMB = "xlong_train", "xlong_test", "graph_emb"
KINDS = (TRAIN, TEST, EMB)
FIELDS = ("index", "uid", "history", "pos_item", "neg_item", "pos_side", "neg_side")
LIST_FIELDS = ("history", "pos_side", "neg_side")
REF_HIST_LEN, REF_SIDE_LEN = 1000, 184  # the reference loaders' fixed lengths (protocol.md Q-H18)
MAX_RAW_ID = (1 << 31) - 2  # raw + 1 must fit int32
CLICK = int(Behavior.click)
OUTPUTS = ["xlong", "item_init.npy", "quarantine.parquet", "manifest.json"]
SAMPLE_ROW_GROUP = 8192
LAYOUT_BATCH = 4096  # samples per layout batch; also fixes the mimn negatives' streams

#: ``xlong/{split}.parquet``: one row per sample.
BASE_SCHEMA = arrow_schema(XLongSampleRow)
LINE_SCHEMA = {
    "line": pl.Int64,
    "user": pl.Int32,
    "pos_item": pl.Int32,
    "neg_item": pl.Int32,
    "history": pl.List(pl.Int32),
    "pos_side": pl.List(pl.Int32),
    "neg_side": pl.List(pl.Int32),
}


# --------------------------------------------------------------------------- recognising files


def _is_int(b: bytes) -> bool:
    return b.strip().isdigit()


def _is_float(b: bytes) -> bool:
    try:
        float(b)
        return True
    except ValueError:
        return False


def _corpus_line(line: bytes) -> bool:
    f = line.split(b"\t")
    return len(f) == 7 and all(_is_int(f[i]) for i in (0, 1, 3, 4)) and _is_int(f[2].split(b",")[0])


def _emb_dim(line: bytes) -> int:
    """Number of values if the line is a whitespace-separated float row, else 0."""
    f = line.split()
    return len(f) if f and all(_is_float(x) for x in f) else 0


def sniff(path: str) -> str | None:
    """'corpus', 'graph_emb' or None, from the first non-empty lines (most of them must match)."""
    head = head_lines(path, 5)
    if not head:
        return None
    if sum(_corpus_line(h) for h in head) * 2 >= len(head):
        return "corpus"
    dims = [_emb_dim(h) for h in head]
    if dims[0] and sum(d == dims[0] for d in dims) * 2 >= len(dims):
        return EMB
    return None


def split_from_name(path: str) -> str:
    """'xlong_train' / 'xlong_test' from the file name (a zip member's name first, then the file's)."""
    archive, _, member = str(path).partition("::")
    for name in (Path(member).name, Path(archive).name) if member else (Path(archive).name,):
        n = name.lower()
        if ("train" in n) != ("test" in n):
            return TRAIN if "train" in n else TEST
    raise InputError(
        f"{path}: an XLong corpus, but its name does not say train or test; "
        f"use --kind {path}=xlong_train or --kind {path}=xlong_test"
    )


def plan(paths: list[str], options: IngestOptions) -> list[FileTask]:
    """Each file's kind (``options.kinds`` first, then content + name); InputError on anything else."""
    tasks = []
    for i, p in enumerate(paths):
        kind = options.kinds.get(p)
        if kind is not None and kind not in KINDS:
            raise InputError(f"{p}: unknown XLong kind {kind!r}; choose from {', '.join(KINDS)}")
        if kind is None:
            sniffed = sniff(p)
            if sniffed is None:
                raise wrong_format(
                    p, "an XLong file",
                    "7 tab-separated fields 'index, uid, history, pos item, neg item, pos side, neg side', "
                    "or graph_emb's whitespace-separated float rows",
                    ("xlong_train", "xlong_test", "graph_emb"),
                )
            kind = split_from_name(p) if sniffed == "corpus" else EMB
        tasks.append(FileTask(p, kind, i))
    if sum(t.kind == EMB for t in tasks) > 1:
        raise InputError("more than one graph_emb file given; XLong has one item embedding matrix")
    if not any(t.kind in (TRAIN, TEST) for t in tasks):
        raise InputError("no XLong corpus (train_/test_corpus_total_dual.txt) among the inputs")
    return tasks


# --------------------------------------------------------------------------- parsing


def _split_list(field: pl.Expr) -> pl.Expr:
    """A comma list as a list of strings; an empty (or blank) field is []."""
    f = field.str.strip_chars()
    return pl.when(f == "").then(pl.lit([], dtype=pl.List(pl.Utf8))).otherwise(f.str.split(","))


def _bad_id(e: pl.Expr) -> pl.Expr:
    """Not an integer that stays a valid int32 after the +1 shift."""
    return e.is_null() | (e < 0) | (e > MAX_RAW_ID)


ID_REASON = f"not an integer in 0..{MAX_RAW_ID}"


def parse_corpus(chunk: bytes, first_line: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One chunk of a corpus -> (good lines in ``LINE_SCHEMA``, ids already +1; rejects).

    A rejected line names its first failing field; for a list field the reason gives the 1-based
    position and text of the first bad element.
    """
    lines, _ = lines_frame(chunk, first_line)
    c = pl.col
    df = lines.with_columns(c("text").str.split("\t").alias("_f"))
    df = df.with_columns(
        c("_f").list.len().alias("_nf"),
        *(
            c("_f").list.get(FIELDS.index(n), null_on_oob=True).str.strip_chars().cast(pl.Int64, strict=False).alias(n)
            for n in ("index", "uid", "pos_item", "neg_item")
        ),
        *(c("_f").list.get(FIELDS.index(n), null_on_oob=True).alias(f"_r_{n}") for n in LIST_FIELDS),
    ).drop("_f")
    df = df.with_columns(_split_list(c(f"_r_{n}")).alias(f"_s_{n}") for n in LIST_FIELDS)
    df = df.with_columns(c(f"_s_{n}").cast(pl.List(pl.Int64), strict=False).alias(n) for n in LIST_FIELDS)
    # slow path, only for chunks that need it: spaces around the commas ("1, 2") are allowed
    spaced = {
        n: c(n).list.eval(pl.element().is_null()).list.any() & c(f"_r_{n}").str.contains(" ", literal=True)
        for n in LIST_FIELDS
    }
    if df.select(pl.any_horizontal(e.any() for e in spaced.values())).item():
        df = df.with_columns(
            pl.when(spaced[n])
            .then(_split_list(c(f"_r_{n}").str.replace_all(r"\s*,\s*", ",")))
            .otherwise(c(f"_s_{n}"))
            .alias(f"_s_{n}")
            for n in LIST_FIELDS
        )
        df = df.with_columns(c(f"_s_{n}").cast(pl.List(pl.Int64), strict=False).alias(n) for n in LIST_FIELDS)
    bad = {n: c(n).list.eval(_bad_id(pl.element())) for n in LIST_FIELDS}
    df = df.with_columns(
        *(b.list.any().alias(f"_any_{n}") for n, b in bad.items()),
        *(b.list.arg_max().cast(pl.Int64).alias(f"_at_{n}") for n, b in bad.items()),
    )

    def bad_element(n: str) -> tuple[str, pl.Expr, pl.Expr]:
        at = c(f"_at_{n}")
        text = c(f"_s_{n}").list.get(at, null_on_oob=True).str.slice(0, 40)
        return n, c(f"_any_{n}"), pl.format(f"element {{}} ('{{}}') is {ID_REASON}", at + 1, text)

    field, reason = first_failure(
        [
            ("line", c("text").str.strip_chars() == "", "empty line"),
            ("line", c("_nf") != 7, pl.format(f"expected 7 tab-separated fields ({', '.join(FIELDS)}), got {{}}", c("_nf"))),
            ("index", c("index").is_null(), "not an integer"),
            ("uid", _bad_id(c("uid")), ID_REASON),
            ("history", c("history").list.len() == 0, "empty behaviour history"),
            bad_element("history"),
            ("pos_item", _bad_id(c("pos_item")), ID_REASON),
            ("neg_item", _bad_id(c("neg_item")), ID_REASON),
            bad_element("pos_side"),
            bad_element("neg_side"),
        ]
    )
    df = df.with_columns(field.alias("field"), reason.alias("reason"))
    bad = df.filter(c("field").is_not_null()).select("line", "field", "reason", "text")
    good = df.filter(c("field").is_null()).select(
        "line",
        (c("uid") + 1).alias("user"),
        (c("pos_item") + 1).alias("pos_item"),
        (c("neg_item") + 1).alias("neg_item"),
        *((c(n) + 1).alias(n) for n in LIST_FIELDS),
    )
    return good.cast(LINE_SCHEMA), bad


def parse_emb(chunk: bytes, first_line: int, dim: int, row0: int) -> tuple[np.ndarray, np.ndarray, pl.DataFrame, int]:
    """One chunk of graph_emb -> (row numbers, float32 [n, dim] values, rejects, non-blank lines).

    ``row0`` is the number of non-blank lines before this chunk: the k-th non-blank line is item row k.
    """
    lines, _ = lines_frame(chunk, first_line)
    c = pl.col
    blank = c("text").str.strip_chars() == ""
    df = lines.filter(~blank).with_columns(
        (pl.int_range(0, pl.len(), dtype=pl.Int64) + row0).alias("row"),
        c("text").str.extract_all(r"\S+").alias("_s"),
    )
    df = df.with_columns(
        c("_s").list.len().alias("_n"),
        c("_s").list.eval(pl.element().cast(pl.Float32, strict=False)).alias("_v"),
    )
    bad = c("_v").list.eval(pl.element().is_null() | ~pl.element().is_finite())
    df = df.with_columns(bad.list.any().alias("_any"), bad.list.arg_max().alias("_at"))
    value = c("_s").list.get(c("_at").cast(pl.Int64), null_on_oob=True).str.slice(0, 40)
    field, reason = first_failure(
        [
            ("row", c("_n") != dim, pl.format("expected {} values, got {}", pl.lit(dim), c("_n"))),
            ("value", c("_any"), pl.format("element {} ('{}') is not a finite number", c("_at") + 1, value)),
        ]
    )
    df = df.with_columns(field.alias("field"), reason.alias("reason"))
    rejects = df.filter(c("field").is_not_null()).select("line", "field", "reason", "text")
    good = df.filter(c("field").is_null())
    values = good["_v"].explode().to_numpy().astype(np.float32).reshape(good.height, dim)
    return good["row"].to_numpy(), values, rejects, df.height


def samples_of(lines: pl.DataFrame) -> pl.DataFrame:
    """Two samples per line (label 1 with pos_item/pos_side, then label 0 with neg_item/neg_side)."""
    lines = lines.with_row_index("_r")

    def one(label: int, item: str, side: str) -> pl.DataFrame:
        return lines.select(
            "_r",
            pl.lit(label, dtype=pl.Int8).alias("_k"),
            "user",
            pl.lit(label, dtype=pl.Int8).alias("label"),
            pl.col(item).alias("item"),
            pl.lit(0, dtype=pl.Int32).alias("cate"),
            pl.col("line").alias("ts"),
            pl.col("history").alias("hist_item"),
            pl.col(side).alias("side_user"),
        )

    both = pl.concat([one(1, "pos_item", "pos_side"), one(0, "neg_item", "neg_side")])
    return both.sort("_r", pl.col("_k"), descending=[False, True]).drop("_r", "_k")


def _table(samples: pl.DataFrame) -> pa.Table:
    return samples.to_arrow().cast(BASE_SCHEMA)


class _Lengths:
    """Histogram of list lengths -> notes ``PREFIX_len_{min,median,max}`` and ``PREFIX_len_not_REF``
    (lists whose length differs from the reference's fixed length; item-side lists count twice per line)."""

    def __init__(self):
        self.counts = np.zeros(1, np.int64)

    def add(self, lengths: np.ndarray) -> None:
        self.add_counts(np.bincount(lengths.astype(np.int64)))

    def merge(self, other: _Lengths) -> None:
        self.add_counts(other.counts)

    def add_counts(self, b: np.ndarray) -> None:
        if b.size > self.counts.size:
            self.counts = np.pad(self.counts, (0, b.size - self.counts.size))
        self.counts[: b.size] += b

    def notes(self, prefix: str, ref: int) -> dict[str, int]:
        n = int(self.counts.sum())
        if n == 0:
            return {}
        nz = np.flatnonzero(self.counts)
        median = int(np.searchsorted(np.cumsum(self.counts), (n + 1) // 2))
        return {
            f"{prefix}_len_min": int(nz[0]),
            f"{prefix}_len_median": median,
            f"{prefix}_len_max": int(nz[-1]),
            f"{prefix}_len_not_{ref}": n - int(self.counts[ref]) if ref < self.counts.size else n,
        }


class CorpusStats:
    """What a corpus's kept lines give the manifest; per file, or per byte span and then :meth:`merge`-d (Spark)."""

    def __init__(self):
        self.hist, self.side = _Lengths(), _Lengths()
        self.users: list[np.ndarray] = []  # distinct users per chunk (for the valid carve)
        self.max_user = self.max_item = self.max_side = self.entries = 0

    def add(self, good: pl.DataFrame) -> None:
        hl = good["history"].list.len().to_numpy()
        self.hist.add(hl)
        self.side.add(np.concatenate([good["pos_side"].list.len().to_numpy(), good["neg_side"].list.len().to_numpy()]))
        self.entries += int(hl.sum())
        self.users.append(good["user"].unique().to_numpy())
        m = good.select(
            pl.col("user").max(),
            pl.max_horizontal(pl.col("history").list.max().max(), pl.col("pos_item").max(), pl.col("neg_item").max()),
            pl.max_horizontal(pl.col("pos_side").list.max().max(), pl.col("neg_side").list.max().max()),
        ).row(0)
        self.max_user = max(self.max_user, m[0] or 0)
        self.max_item = max(self.max_item, m[1] or 0)
        self.max_side = max(self.max_side, m[2] or 0)

    def merge(self, other: CorpusStats) -> None:
        self.hist.merge(other.hist)
        self.side.merge(other.side)
        self.users += other.users
        self.max_user = max(self.max_user, other.max_user)
        self.max_item = max(self.max_item, other.max_item)
        self.max_side = max(self.max_side, other.max_side)
        self.entries += other.entries

    def to_json(self) -> dict:
        """Everything but ``users`` (a distributed engine gets the distinct train users by an aggregation)."""
        return {"hist": self.hist.counts.tolist(), "side": self.side.counts.tolist(), "max_user": self.max_user,
                "max_item": self.max_item, "max_side": self.max_side, "entries": self.entries}

    @classmethod
    def from_json(cls, d: dict) -> CorpusStats:
        st = cls()
        st.hist.counts, st.side.counts = np.array(d["hist"], np.int64), np.array(d["side"], np.int64)
        st.max_user, st.max_item, st.max_side, st.entries = d["max_user"], d["max_item"], d["max_side"], d["entries"]
        return st

    def note(self, counts: FileCounts) -> None:
        """The file's notes (called once per file, after all its lines)."""
        counts.note("history_entries", self.entries)
        counts.note("side_id_max", self.max_side)
        counts.notes.update(self.hist.notes("history", REF_HIST_LEN))
        counts.notes.update(self.side.notes("side", REF_SIDE_LEN))


def read_chunk(path: str, first: int, n_lines: int, chunk: bytes, quarantine, counts: FileCounts, stats: CorpusStats) -> pl.DataFrame:
    """One chunk of a corpus (from :func:`lsdata.io.iter_line_chunks`): parsed, its rejects quarantined, its
    lines counted and added to ``stats``; returns the kept lines. Both engines parse every chunk with this."""
    counts.read += n_lines
    good, bad = parse_corpus(chunk, first)
    counts.rejected += quarantine.add(path, bad)
    if good.height:
        counts.kept += good.height
        stats.add(good)
    return good


def _read_corpus(task: FileTask, opts: IngestOptions, quarantine: Quarantine, counts: FileCounts, sink, progress) -> CorpusStats:
    """Stream one corpus file; kept lines go to ``sink(lines_df)``. Returns stats for the manifest."""
    st = CorpusStats()
    for first, n_lines, chunk in iter_line_chunks(task.path, opts.chunk_bytes):
        good = read_chunk(task.path, first, n_lines, chunk, quarantine, counts, st)
        if good.height:
            sink(good)
        if progress:
            progress(len(chunk))
    st.note(counts)
    return st


def read_emb(task: FileTask, opts: IngestOptions, quarantine: Quarantine, counts: FileCounts, progress) -> tuple[list, int, int]:
    """Stream graph_emb: ([(rows, values)], dim, number of rows). ``dim`` = the usual count in the first lines."""
    dims = [_emb_dim(h) for h in head_lines(task.path, 5)]
    dim = max(set(dims), key=dims.count) if dims else 0
    if dim == 0:
        raise InputError(f"{task.path}: graph_emb's first lines are not whitespace-separated numbers")
    blocks, rows = [], 0
    for first, n, chunk in iter_line_chunks(task.path, opts.chunk_bytes):
        counts.read += n
        r, v, bad, nonblank = parse_emb(chunk, first, dim, rows)
        rows += nonblank
        counts.drop("blank line", n - nonblank)
        counts.rejected += quarantine.add(task.path, bad)
        counts.kept += r.size
        blocks.append((r, v))
        if progress:
            progress(len(chunk))
    counts.note("rows", rows)
    counts.note("dim", dim)
    return blocks, dim, rows


def valid_users(users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The seeded ``round(fraction * n)`` of the ``n`` distinct ``users`` that form the validation set (sorted)."""
    users = np.unique(users)
    k = int(round(fraction * users.size))
    return np.sort(np.random.default_rng(seed).permutation(users)[:k])


def carve(lines: pl.DataFrame, valid: np.ndarray) -> list[tuple[str, pl.DataFrame]]:
    """One batch of train lines -> its ``train`` and ``valid`` lines (``valid``: :func:`valid_users`)."""
    is_valid = pl.Series(np.isin(lines["user"].to_numpy(), valid))
    return [("train", lines.filter(~is_valid)), ("valid", lines.filter(is_valid))]


def sample_table(lines: pl.DataFrame) -> pa.Table:
    """Kept lines -> their samples as written to ``xlong/{split}.parquet`` (one ``write_samples`` call)."""
    return _table(samples_of(lines))


def sample_writers(tmp: Path) -> dict[str, pq.ParquetWriter]:
    (tmp / "xlong").mkdir()
    return {s: pq.ParquetWriter(tmp / "xlong" / f"{s}.parquet", BASE_SCHEMA, **parquet_options(BASE_SCHEMA)) for s in SPLITS}


def write_samples(writer: pq.ParquetWriter, table: pa.Table) -> None:
    """Appends one batch of samples (row groups of ``SAMPLE_ROW_GROUP``: the files' layout follows the batches)."""
    writer.write_table(table, row_group_size=SAMPLE_ROW_GROUP)


def check_lines(corpora: list[FileTask], counts: dict[int, FileCounts], paths: list[str], quarantine: Quarantine) -> None:
    if not any(counts[t.index].kept for t in corpora):
        raise InputError(f"no valid XLong lines in {', '.join(paths)} ({quarantine.count} rows quarantined); nothing to write")


def ingest(paths: list[str], out: Path, options: IngestOptions, progress: Callable[[int], None] | None = None) -> Manifest:
    """Convert XLong files into ``out/`` (see the module docstring) and build ``layouts/plain``; returns the manifest."""
    tasks = plan(paths, options)
    out = Path(out)
    quarantine = Quarantine(options.strict)
    counts = {t.index: FileCounts() for t in tasks}
    corpora = [t for t in tasks if t.kind != EMB]
    emb_task = next((t for t in tasks if t.kind == EMB), None)
    with staging_dir(out, "ingest") as tmp:
        (tmp / "work").mkdir()
        writers = sample_writers(tmp)

        def write(split: str, lines: pl.DataFrame) -> None:
            if lines.height:
                write_samples(writers[split], sample_table(lines))

        # pass 1: parse every file; test lines become samples at once, train lines wait for the valid draw
        lines_path = tmp / "work" / "train_lines.parquet"
        line_writer = pq.ParquetWriter(lines_path, pl.DataFrame(schema=LINE_SCHEMA).to_arrow().schema)
        stats: list[CorpusStats] = []
        for t in corpora:
            if t.kind == TRAIN:
                sink = lambda g: line_writer.write_table(g.to_arrow())  # noqa: E731
            else:
                sink = lambda g: write("test", g)  # noqa: E731
            stats.append(_read_corpus(t, options, quarantine, counts[t.index], sink, progress))
        line_writer.close()
        emb = read_emb(emb_task, options, quarantine, counts[emb_task.index], progress) if emb_task else None
        check_lines(corpora, counts, paths, quarantine)

        # pass 2: carve the validation users out of the train lines
        train_users = [u for t, st in zip(corpora, stats) if t.kind == TRAIN for u in st.users]
        all_train = np.concatenate(train_users) if train_users else np.zeros(0, np.int32)
        valid = valid_users(all_train, options.xlong_valid_fraction, options.seed)
        valid_lines = 0
        # batches of SAMPLE_ROW_GROUP // 2 lines counted over all train lines in (file, line) order (iter_batches
        # crosses the row groups): a distributed engine carves the same batches by the lines' global position
        for batch in pq.ParquetFile(lines_path).iter_batches(batch_size=SAMPLE_ROW_GROUP // 2):
            for split, part in carve(pl.from_arrow(pa.Table.from_batches([batch])), valid):
                valid_lines += part.height if split == "valid" else 0
                write(split, part)
        for w in writers.values():
            w.close()
        manifest = finish(tmp, out, paths, options, tasks, counts, stats, emb, quarantine, valid_lines, valid.size)
    build_layouts(Dataset(out, manifest), ["plain"])
    return manifest


def finish(
    tmp: Path, out: Path, paths: list[str], options: IngestOptions, tasks: list[FileTask], counts: dict[int, FileCounts],
    stats: list[CorpusStats], emb: tuple[list, int, int] | None, quarantine: Quarantine, valid_lines: int, n_valid: int,
) -> Manifest:
    """The end of every engine's XLong ingest, after ``xlong/`` is written in ``tmp``: per-file notes, item_init.npy,
    quarantine, reconciled reports, manifest (last); publishes ``tmp`` into ``out``. ``stats``: one per corpus, in
    task order; ``emb``: what :func:`read_emb` returned (None without graph_emb)."""
    from lsdata.ingest import DOWNSTREAM, is_synthetic, output_hashes  # the driver imports this module
    from lsdata.ingest import OUTPUTS as EVENT_OUTPUTS

    shutil.rmtree(tmp / "work", ignore_errors=True)
    corpora = [t for t in tasks if t.kind != EMB]
    train_tasks = [t for t in tasks if t.kind == TRAIN]
    emb_task = next((t for t in tasks if t.kind == EMB), None)
    for t in corpora:
        counts[t.index].note("samples", 2 * counts[t.index].kept)
    if train_tasks:  # the carve spans all train files; reported on the first
        counts[train_tasks[0].index].note("valid_lines", valid_lines)
        counts[train_tasks[0].index].note("valid_users", int(n_valid))

    max_item = max(st.max_item for st in stats)
    n_items = max_item
    entries = list(OUTPUTS)
    if emb is not None:
        blocks, dim, rows = emb
        n_items = max(max_item, rows)
        init = np.zeros((n_items + 1, dim), np.float32)  # row 0: padding
        for r, v in blocks:
            init[r + 1] = v
        np.save(tmp / "item_init.npy", init)
        counts[emb_task.index].note("items_without_embedding", max(0, max_item - rows))
    else:
        entries.remove("item_init.npy")
    quarantine.write(tmp / "quarantine.parquet")
    sources = [reconcile(t, counts[t.index], sha256_file(t.path), file_bytes([t.path])) for t in tasks]
    manifest = Manifest(
        dataset=DATASET,
        synthetic=all(is_synthetic(p) for p in paths),
        options=options.model_dump(mode="json"),
        sources=sources,
        partitions=1,
        events=sum(st.entries for st in stats),
        users=max(st.max_user for st in stats),
        items=n_items,
        cates=0,
        ts_min=None,
        ts_max=None,
        quarantined=quarantine.count,
        files=output_hashes(tmp, entries[:-1]),
    )
    write_model_atomic(tmp / "manifest.json", manifest)
    # the old dataset stops looking complete first; then stale outputs of any earlier ingest go
    (out / "manifest.json").unlink(missing_ok=True)
    for name in dict.fromkeys([*DOWNSTREAM, *EVENT_OUTPUTS, *OUTPUTS]):
        if name not in entries:
            stale = out / name
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
    publish(tmp, out, entries, "manifest.json")
    return manifest


# --------------------------------------------------------------------------- layouts


def _ranges(col: pa.Array, key: str, consts: dict[str, tuple[int, type]]) -> Ranges:
    """Ranges over a list column: its values under ``key``, plus constant columns ``consts`` (value, dtype)."""
    offsets = col.offsets.to_numpy().astype(np.int64)  # of this (possibly sliced) array, into col.values
    values = col.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    out = {key: values, **{k: np.full(values.size, v, t) for k, (v, t) in consts.items()}}
    return Ranges(out, offsets[:-1], offsets[1:])


def layout_plan(
    ds: Dataset, names: list[str], overrides: dict[str, dict[str, int]] | None = None, seed: int | None = None
) -> tuple[dict[str, LayoutLengths], NegativeSampler]:
    """Widths of each requested layout and mimn's negative sampler (any engine): negatives uniform over
    ``1..manifest.items``, seeded by ``seed`` (default: the ingest seed)."""
    for s in SPLITS:
        if not (ds.root / "xlong" / f"{s}.parquet").exists():
            raise InputError(f"{ds.root}: no xlong/{s}.parquet - re-run `lsdata ingest xlong`")
    overrides = overrides or {}
    lengths = {n: lengths_for(DATASET, n, overrides.get(n)) for n in dict.fromkeys(names)}
    n_items = ds.manifest.items
    seed = ds.manifest.options.get("seed", DEFAULT_SEED) if seed is None else seed
    return lengths, NegativeSampler(n_items, np.zeros(n_items + 1, np.int32), seed)


def batch_tables(
    batch: pa.RecordBatch, split: str, bno: int, lengths: dict[str, LayoutLengths], negatives: NegativeSampler
) -> Iterator[tuple[str, pa.Table]]:
    """``(layout, rows)`` of batch number ``bno`` (rows ``bno * LAYOUT_BATCH ..`` of ``xlong/{split}.parquet``; any
    engine). The batch number and split fix the mimn negatives' stream."""
    target = pl.from_arrow(pa.Table.from_batches([batch]).select(["user", "label", "item", "cate", "ts"]))
    hist = _ranges(batch.column("hist_item"), "item", {"cate": (0, np.int32), "behavior": (CLICK, np.int8)})
    side = _ranges(batch.column("side_user"), "user", {"behavior": (CLICK, np.int8)})
    stream = bno * len(SPLITS) + SPLITS.index(split)
    for n, w in lengths.items():
        yield n, layout_table(n, w, target, hist, side, negatives, stream=stream)


def build_layouts(
    ds: Dataset,
    names: list[str],
    overrides: dict[str, dict[str, int]] | None = None,
    progress: Callable[[int], None] | None = None,
    seed: int | None = None,
) -> dict[str, LayoutReport]:
    """Materialise layouts ``names`` from the base store ``xlong/{split}.parquet``; publishes ``layouts/NAME/``.

    Reads each split in batches of ``LAYOUT_BATCH`` samples (memory bounded by one batch's windows), each turned
    into rows by :func:`batch_tables`. History entries get ``cate = 0`` and ``behavior = click``; item-side ids go
    to ``side_user`` (``behavior = click``). ``mimn`` negatives are uniform over ``1..manifest.items`` outside the
    row's shown history, seeded by ``seed`` (default: the ingest seed) and the (split, batch) number.
    ``progress(1)`` per batch. (Spark: :func:`lsdata.spark.xlong.build_layouts`, the same files.)
    """
    lengths, negatives = layout_plan(ds, names, overrides, seed)
    with staging_dir(ds.root, "layouts") as tmp:
        writers = {n: LayoutWriter(tmp, n, w) for n, w in lengths.items()}
        for s in SPLITS:
            pf = pq.ParquetFile(ds.root / "xlong" / f"{s}.parquet")
            for bno, batch in enumerate(pf.iter_batches(batch_size=LAYOUT_BATCH)):
                for n, table in batch_tables(batch, s, bno, lengths, negatives):
                    writers[n].write(s, table)
                if progress:
                    progress(1)
        return publish_layouts(ds, tmp, writers)
