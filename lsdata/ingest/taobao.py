"""Tianchi UserBehavior.csv: ``user,item,category,behavior,ts``, no header, plain/.gz/.zip.

Each batch of lines takes a fast path (polars' CSV reader with the exact schema) when every line in it
parses cleanly; otherwise the batch is parsed line by line in polars expressions that name the first
failing field of each bad line. Both paths give identical results on clean lines.
"""

from __future__ import annotations

import re

import polars as pl

from lsdata.defaults import MAX_TS, MIN_TS, TAOBAO_BEHAVIORS, Behavior, IngestOptions
from lsdata.ingest.common import FileTask, IngestContext, first_failure, lines_frame, wrong_format
from lsdata.io import InputError, head_lines, iter_line_chunks

DATASET = "taobao"
RAW_TYPE = pl.Int64
KIND = "behavior"
COLUMNS = ("user", "item", "cate", "behavior", "ts")
_CODES = {b: int(Behavior[b]) for b in TAOBAO_BEHAVIORS}
_ENUM = pl.Enum(list(TAOBAO_BEHAVIORS))
_ENUM_CODES = pl.Series([_CODES[b] for b in TAOBAO_BEHAVIORS], dtype=pl.Int8)  # Enum physical index -> Behavior code
_LINE_RE = re.compile(rb"^\s*\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*(pv|buy|cart|fav)\s*,\s*\d+\s*$")


def sniff(path: str) -> str | None:
    """'behavior' if one of the first lines is a UserBehavior.csv row and none looks like JSON or TSV."""
    head = head_lines(path, 8)
    other = any(h.lstrip().startswith((b"{", b"[")) or b"\t" in h for h in head)
    if not other and any(_LINE_RE.match(h) for h in head):
        return KIND
    return None


def plan(paths: list[str], options: IngestOptions) -> list[FileTask]:
    tasks = []
    for i, p in enumerate(paths):
        kind = options.kinds.get(p) or sniff(p)
        if kind != KIND:
            raise wrong_format(p, "a Taobao UserBehavior.csv", "'user,item,category,pv|buy|cart|fav,ts' lines", (KIND,))
        tasks.append(FileTask(p, kind, i))
    return tasks


def _fast(chunk: bytes, n_lines: int) -> pl.DataFrame | None:
    """Whole-batch parse; None when any line is not clean (then the exact path runs)."""
    try:
        df = pl.read_csv(
            chunk,
            has_header=False,
            new_columns=list(COLUMNS),
            schema={"user": pl.Int64, "item": pl.Int64, "cate": pl.Int64, "behavior": _ENUM, "ts": pl.Int64},
            quote_char=None,
        )
    except Exception:
        return None
    if df.height != n_lines or sum(df.null_count().row(0)):
        return None
    ok = df.select(
        (pl.min_horizontal(pl.col("user").min(), pl.col("item").min(), pl.col("cate").min()) >= 0)
        & pl.col("ts").is_between(MIN_TS, MAX_TS)
        .all()
    ).item()
    if not ok:
        return None
    return df.with_columns(_ENUM_CODES.gather(df["behavior"].to_physical()).alias("behavior"))


def _exact(chunk: bytes, first_line: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Line-by-line parse: (good rows with 'line', rejects with line/field/reason/text)."""
    lines, _ = lines_frame(chunk, first_line)
    t = pl.col("text")
    nf = t.str.count_matches(",", literal=True) + 1
    parts = t.str.split_exact(",", 4)

    def num(i: int) -> pl.Expr:
        return parts.struct.field(f"field_{i}").str.strip_chars().cast(pl.Int64, strict=False)

    beh = parts.struct.field("field_3").str.strip_chars()
    df = lines.with_columns(
        num(0).alias("user"),
        num(1).alias("item"),
        num(2).alias("cate"),
        beh.replace_strict(_CODES, default=None, return_dtype=pl.Int8).alias("behavior"),
        num(4).alias("ts"),
        nf.alias("_nf"),
        beh.alias("_beh"),
    )
    c = pl.col
    field, reason = first_failure(
        [
            ("line", t.str.strip_chars() == "", "empty line"),
            ("line", c("_nf") != 5, pl.format("expected 5 comma-separated fields (user,item,category,behavior,ts), got {}", c("_nf"))),
            ("user", c("user").is_null() | (c("user") < 0), "not a non-negative integer"),
            ("item", c("item").is_null() | (c("item") < 0), "not a non-negative integer"),
            ("category", c("cate").is_null() | (c("cate") < 0), "not a non-negative integer"),
            ("behavior", c("behavior").is_null(), pl.format("{} is not one of pv,buy,cart,fav", c("_beh"))),
            ("ts", c("ts").is_null(), "not an integer unix timestamp"),
            ("ts", ~c("ts").is_between(MIN_TS, MAX_TS), "outside 1970..2100"),
        ]
    )
    df = df.with_columns(field.alias("field"), reason.alias("reason"))
    bad = df.filter(c("field").is_not_null()).select("line", "field", "reason", "text")
    good = df.filter(c("field").is_null()).select("line", *COLUMNS)
    return good, bad


def read(task: FileTask, ctx: IngestContext) -> None:
    """Parse one file into ``ctx`` (events, rejects, counts)."""
    opts: IngestOptions = ctx.options
    counts = ctx.file(task)
    keep_codes = None
    if opts.behaviors:
        unknown = set(opts.behaviors) - set(TAOBAO_BEHAVIORS)
        if unknown:
            raise InputError(f"--behaviors: unknown type(s) {sorted(unknown)}; choose from {','.join(TAOBAO_BEHAVIORS)}")
        keep_codes = [_CODES[b] for b in opts.behaviors]
    lo, hi = opts.window
    for first, n_lines, chunk in iter_line_chunks(task.path, opts.chunk_bytes, task.span, task.first_line):
        counts.read += n_lines
        good = _fast(chunk, n_lines)
        if good is not None:
            good = good.with_columns((pl.int_range(0, pl.len(), dtype=pl.Int64) + first).alias("line"))
        else:
            good, bad = _exact(chunk, first)
            ctx.reject(task, bad)
        if keep_codes is not None:
            keep = good["behavior"].is_in(keep_codes)
            n_drop = int((~keep).sum())
            counts.drop("behavior not selected (--behaviors)", n_drop)
            if n_drop:
                good = good.filter(keep)
        outside = ~good["ts"].is_between(lo, hi, closed="left")
        n_out = int(outside.sum())
        if opts.keep_out_of_window:
            counts.note("kept outside collection window", n_out)
        else:
            counts.drop("timestamp outside collection window", n_out)
            if n_out:
                good = good.filter(~outside)
        ctx.emit(
            task,
            good.select(
                "user",
                "item",
                "cate",
                "behavior",
                "ts",
                pl.lit(None, dtype=pl.Float32).alias("rating"),
                pl.lit(task.index, dtype=pl.Int16).alias("src_file"),
                pl.col("line").alias("src_row"),
            ),
        )
        ctx.advance(len(chunk))


EVENT_KINDS = (KIND,)


def prepare(tasks: list[FileTask], ctx: IngestContext) -> None:
    """Taobao rows carry their own category: no side table to read first."""
    return None
