"""Amazon product data (McAuley 2014, Ni/Li/McAuley 2018): reviews, metadata and ratings-only CSV.

Every file may be plain, gzip, bzip2 or zip (recognised by its first bytes). A file's kind is recognised
from its first lines (``options.kinds[path]`` overrides it):

``reviews``
    One JSON object per line with ``reviewerID`` and ``asin`` (2014: ``reviews_*.json``, also the
    5-core files; 2018: the same keys plus ``verified``/``style``/``vote``/``image``). Used fields:
    ``reviewerID`` -> user, ``asin`` -> item, ``unixReviewTime`` -> ts (integer seconds, required),
    ``overall`` -> rating (a number; missing or null gives a null rating). Behaviour code
    ``Behavior.review``. A line that is not JSON but a Python dict literal is read with
    ``ast.literal_eval`` (never ``eval``).
``meta``
    One record per line with ``asin`` and ``categories``/``category``/``title`` and no ``reviewerID``.
    2014 files are Python dict literals (single quotes; ``json.loads`` fails), parsed with
    ``ast.literal_eval``; 2018 files are strict JSON. Category of an item:

    * 2014 ``categories`` (a list of paths, each a list of strings): the leaf (last element) of the
      **last** path when ``options.category_path == "last"`` (HPMN, ``categories[-1][-1]``), of the
      **first** path when ``"first"`` (MIMN, ``categories[0][-1]``);
    * 2018 ``category`` (one flat list of strings): its last element, whatever ``category_path`` says;
    * no categories, an empty list/path or an empty leaf: :data:`lsdata.defaults.UNKNOWN_CATEGORY`.

    When an asin occurs more than once (across all meta files, in command-line order) the first record
    wins; later ones are counted as dropped. Meta files are read before any event file, whatever order
    the files were given in.
``ratings``
    ``user,item,rating,ts`` CSV (the 2014/2018 "ratings only" files), with or without a header line (a
    first line whose four fields are words and whose rating/ts fields are not numbers; it is counted
    as dropped). Behaviour code ``Behavior.rating``; rating required.

Reviews/ratings of items without a meta record get the unknown category; those rows are counted in the
file's notes (``"reviews with unknown category (no meta)"``, ``"ratings with ..."``).

Validation rules (a failing line goes to the quarantine with the first failing field): user and item ids
are non-empty strings without control characters or U+FFFD (the mark of invalid UTF-8); ts is an
integer in [1970, 2100]; a rating is a number finite as float32.

Speed: each batch of review lines is first parsed whole by polars' NDJSON reader (only the four needed
fields); only a batch in which some line fails any rule is parsed line by line with ``json.loads`` so that
the rejects name their line and field. Both paths give identical rows on clean lines. Ratings CSV works
the same way with polars' CSV reader. Meta lines are parsed one by one (``json.loads``, then
``ast.literal_eval`` for Python literals: about 10 MB/s, meta files are much smaller than reviews).
"""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import polars as pl

from lsdata.defaults import MAX_TS, MIN_TS, UNKNOWN_CATEGORY, Behavior, IngestOptions
from lsdata.ingest.common import REJECT_SCHEMA, FileTask, IngestContext, first_failure, lines_frame, wrong_format
from lsdata.io import InputError, head_lines, iter_line_chunks

DATASET = "amazon"
RAW_TYPE = pl.Utf8
KINDS = ("reviews", "meta", "ratings")
EVENT_KINDS = ("reviews", "ratings")

#: attribute of the IngestContext where ``prepare`` leaves the asin -> category table for ``read``
_META_KEY = "item_category"
_REVIEW_SCHEMA = {"reviewerID": pl.Utf8, "asin": pl.Utf8, "overall": pl.Float64, "unixReviewTime": pl.Int64}
_RATING_SCHEMA = {"user": pl.Utf8, "item": pl.Utf8, "rating": pl.Float64, "ts": pl.Int64}
_GOOD_SCHEMA = {"line": pl.Int64, "user": pl.Utf8, "item": pl.Utf8, "ts": pl.Int64, "rating": pl.Float64}
# an id may not contain control characters or U+FFFD (what invalid UTF-8 was replaced with)
_BAD_ID_PY = re.compile("[\x00-\x1f\x7f\ufffd]")
_BAD_ID_PL = r"[\x00-\x1f\x7f\x{FFFD}]"
# the fast path only runs when every line has the two ids as JSON strings (polars would turn 1, true or
# [..] into text, where the exact path rejects them)
_USER_KEY = r'"reviewerID"\s*:\s*"'
_ITEM_KEY = r'"asin"\s*:\s*"'
_NUM = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_INT = re.compile(r"^\s*[+-]?\d+\s*$")
_HEADER_FIELD = re.compile(r"^\s*[A-Za-z_][\w .-]*\s*$")


# ---------------------------------------------------------------------------------------------- records


def _first_wins(pairs: list[tuple]) -> dict:
    """JSON object hook keeping the first of duplicated keys (as polars' reader does)."""
    out: dict = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _parse_record(text: str) -> tuple[object, str | None]:
    """(value, None) for a JSON value or a Python literal; (None, reason) otherwise. Never evaluates code."""
    s = text.strip().lstrip("\ufeff")
    if not s:
        return None, "empty line"
    try:
        return json.loads(s, object_pairs_hook=_first_wins), None
    except Exception as e:  # JSONDecodeError, RecursionError
        json_err = f"{getattr(e, 'msg', type(e).__name__)} at column {getattr(e, 'colno', '?')}"
    if s.startswith("{"):
        try:
            return ast.literal_eval(s), None
        except Exception as e:  # ValueError (not a literal), SyntaxError, MemoryError, RecursionError
            return None, f"neither JSON ({json_err}) nor a Python dict literal ({type(e).__name__})"
    return None, f"not JSON ({json_err})"


def _type_name(v: object) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(v), type(v).__name__
    )


def _id_problem(v: object) -> str | None:
    """Why ``v`` is not a usable raw id (None when it is)."""
    if v is None:
        return "missing"
    if not isinstance(v, str):
        return f"not a string ({_type_name(v)})"
    if not v:
        return "empty"
    if _BAD_ID_PY.search(v):
        return "contains control characters or invalid UTF-8"
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate escape"
    return None


def _f32_finite(v: float) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.float32(v)))


def _review_fields(rec: object) -> tuple[tuple | None, tuple[str, str] | None]:
    """((user, item, ts, rating), None) or (None, (field, reason)) for one parsed review record."""
    if not isinstance(rec, dict):
        return None, ("line", f"not a JSON object ({_type_name(rec)})")
    user, item = rec.get("reviewerID"), rec.get("asin")
    if p := _id_problem(user):
        return None, ("reviewerID", p)
    if p := _id_problem(item):
        return None, ("asin", p)
    ts = rec.get("unixReviewTime")
    if ts is None:
        return None, ("unixReviewTime", "missing")
    if isinstance(ts, bool) or not isinstance(ts, int):
        return None, ("unixReviewTime", f"not an integer unix timestamp ({_type_name(ts)})")
    if not MIN_TS <= ts <= MAX_TS:
        return None, ("unixReviewTime", "outside 1970..2100")
    rating = rec.get("overall")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int | float):
            return None, ("overall", f"not a number ({_type_name(rating)})")
        try:
            rating = float(rating)
        except OverflowError:
            return None, ("overall", "number out of range")
        if not _f32_finite(rating):
            return None, ("overall", "not a finite float32 number")
    return (user, item, ts, rating), None


def _meta_fields(rec: object, category_path: str) -> tuple[tuple | None, tuple[str, str] | None]:
    """((asin, category), None) or (None, (field, reason)) for one parsed meta record."""
    if not isinstance(rec, dict):
        return None, ("line", f"not a dict ({_type_name(rec)})")
    asin = rec.get("asin")
    if p := _id_problem(asin):
        return None, ("asin", p)
    if rec.get("categories") is not None:
        key, cats = "categories", rec["categories"]
        if not isinstance(cats, list) or not all(isinstance(path, list) for path in cats):
            return None, (key, "not a list of category paths (lists of strings)")
        path = (cats[-1] if category_path == "last" else cats[0]) if cats else []
    elif rec.get("category") is not None:
        key, path = "category", rec["category"]
        if not isinstance(path, list):
            return None, (key, f"not a list of strings ({_type_name(path)})")
    else:
        return (asin, None), None
    leaf = path[-1] if path else None
    if leaf is not None and not isinstance(leaf, str):
        return None, (key, f"category leaf is not a string ({_type_name(leaf)})")
    return (asin, leaf if leaf and leaf.strip() else None), None


# ---------------------------------------------------------------------------------------------- plan


def _is_header(fields: list[str]) -> bool:
    return (
        len(fields) == 4
        and all(_HEADER_FIELD.match(f) for f in fields)
        and not _NUM.match(fields[2])
        and not _INT.match(fields[3])
    )


def _sniff_line(raw: bytes) -> str | None:
    text = raw.decode("utf-8", "replace").strip().lstrip("\ufeff")
    if text.startswith("{"):
        rec, err = _parse_record(text)
        if err is None and isinstance(rec, dict):
            if "reviewerID" in rec and "asin" in rec:
                return "reviews"
            if "asin" in rec and any(k in rec for k in ("categories", "category", "title")):
                return "meta"
        return None
    fields = text.split(",")
    if len(fields) == 4 and _NUM.match(fields[2]) and _INT.match(fields[3]):
        return "ratings"
    return None


def sniff(path: str) -> str | None:
    """'reviews', 'meta' or 'ratings' when most of the first lines look like that kind, else None."""
    head = head_lines(path, 8)
    if head and _is_header(head[0].decode("utf-8", "replace").lstrip("\ufeff").split(",")):
        head = head[1:]
        if not head or _sniff_line(head[0]) != "ratings":
            return None
    if not head:
        return None
    kinds = [_sniff_line(h) for h in head]
    best = max(KINDS, key=kinds.count)
    return best if kinds.count(best) * 2 >= len(head) else None


def plan(paths: list[str], options: IngestOptions) -> list[FileTask]:
    tasks = []
    for i, p in enumerate(paths):
        kind = options.kinds.get(p)
        if kind is not None and kind not in KINDS:
            raise InputError(f"{p}: unknown kind {kind!r} for amazon; choose from {', '.join(KINDS)}")
        kind = kind or sniff(p)
        if kind is None:
            raise wrong_format(
                p, "an Amazon file",
                "JSON review lines with reviewerID+asin, meta lines with asin+categories/category, or user,item,rating,ts CSV",
                ("reviews", "meta", "ratings"),
            )
        tasks.append(FileTask(p, kind, i))
    if not any(t.kind in EVENT_KINDS for t in tasks):
        raise InputError(
            f"only meta files given ({', '.join(paths)}): meta has no events; add a reviews or ratings file"
        )
    return tasks


# ---------------------------------------------------------------------------------------------- meta


def _meta_chunk(chunk: bytes, first: int, category_path: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One batch of meta lines -> (asin, cate-or-null) rows and rejects."""
    lines, _ = lines_frame(chunk, first)
    items, cates = [], []
    bad: dict[str, list] = {k: [] for k in REJECT_SCHEMA}
    for line, text in zip(lines["line"].to_list(), lines["text"].to_list(), strict=True):
        rec, err = _parse_record(text)
        if err is None:
            got, problem = _meta_fields(rec, category_path)
        else:
            got, problem = None, ("line", err)
        if problem is not None:
            for k, v in zip(REJECT_SCHEMA, (line, *problem, text), strict=True):
                bad[k].append(v)
            continue
        items.append(got[0])
        cates.append(got[1])
    good = pl.DataFrame({"item": items, "cate": cates}, schema={"item": pl.Utf8, "cate": pl.Utf8})
    return good, pl.DataFrame(bad, schema=REJECT_SCHEMA)


def prepare(tasks: list[FileTask], ctx: IngestContext) -> pl.DataFrame | None:
    """Read every meta file (before any event file); return asin -> category, one row per asin.

    Items whose record has no category get ``UNKNOWN_CATEGORY``. The table is also left on ``ctx`` for
    :func:`read`. Returns None when no meta file was given.
    """
    opts: IngestOptions = ctx.options
    metas = [t for t in tasks if t.kind == "meta"]
    frames = []
    for t in metas:
        counts = ctx.file(t)
        for first, n_lines, chunk in iter_line_chunks(t.path, opts.chunk_bytes):
            counts.read += n_lines
            good, bad = _meta_chunk(chunk, first, opts.category_path)
            ctx.reject(t, bad)
            counts.note("meta records without a category", good["cate"].null_count())
            frames.append(good.with_columns(pl.lit(t.index, dtype=pl.Int16).alias("file")))
            ctx.advance(len(chunk))
    if not metas:
        ctx.side[_META_KEY] = None
        return None
    allm = pl.concat(frames) if frames else pl.DataFrame(schema={"item": pl.Utf8, "cate": pl.Utf8, "file": pl.Int16})
    allm = allm.with_columns(pl.col("item").is_first_distinct().alias("_first"))
    for t in metas:
        mine = allm.filter(pl.col("file") == t.index)
        dup = int((~mine["_first"]).sum())
        ctx.file(t).kept += mine.height - dup
        ctx.file(t).drop("duplicate asin (first record kept)", dup)
    table = allm.filter("_first").select("item", pl.col("cate").fill_null(UNKNOWN_CATEGORY))
    ctx.side[_META_KEY] = table
    return table


# ---------------------------------------------------------------------------------------------- reviews


def _valid_id(c: pl.Expr) -> pl.Expr:
    return c.is_not_null() & (c.str.len_bytes() > 0) & ~c.str.contains(_BAD_ID_PL)


def _all_valid(df: pl.DataFrame, rating_required: bool) -> bool:
    """Whether every row of a fast-path frame (user, item, ts, rating) passes the rules of the exact path."""
    c = pl.col
    ok_rating = c("rating").cast(pl.Float32).is_finite()
    ok_rating = ok_rating.fill_null(False) if rating_required else (c("rating").is_null() | ok_rating)
    ok_ts = c("ts").is_not_null() & c("ts").is_between(MIN_TS, MAX_TS)
    return bool(df.select((_valid_id(c("user")) & _valid_id(c("item")) & ok_ts & ok_rating).all()).item())


def _reviews_fast(chunk: bytes, lines: pl.DataFrame) -> pl.DataFrame | None:
    """Whole-batch parse; None when any line breaks a rule (then the exact path runs)."""
    t = pl.col("text")
    if not lines.select((t.str.contains(_USER_KEY) & t.str.contains(_ITEM_KEY)).all()).item():
        return None
    try:
        df = pl.read_ndjson(chunk, schema=_REVIEW_SCHEMA)
    except Exception:
        return None
    if df.height != lines.height:  # blank lines are skipped by the reader
        return None
    df = df.select(
        pl.col("reviewerID").alias("user"),
        pl.col("asin").alias("item"),
        pl.col("unixReviewTime").alias("ts"),
        pl.col("overall").alias("rating"),
    )
    if not _all_valid(df, rating_required=False):
        return None
    return df.with_columns(lines["line"]).select(list(_GOOD_SCHEMA))


def _reviews_exact(lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Line-by-line parse: (good rows with 'line', rejects naming line and field)."""
    good: dict[str, list] = {k: [] for k in _GOOD_SCHEMA}
    bad: dict[str, list] = {k: [] for k in REJECT_SCHEMA}
    for line, text in zip(lines["line"].to_list(), lines["text"].to_list(), strict=True):
        rec, err = _parse_record(text)
        got, problem = _review_fields(rec) if err is None else (None, ("line", err))
        if problem is not None:
            for k, v in zip(REJECT_SCHEMA, (line, *problem, text), strict=True):
                bad[k].append(v)
        else:
            for k, v in zip(_GOOD_SCHEMA, (line, *got), strict=True):
                good[k].append(v)
    return pl.DataFrame(good, schema=_GOOD_SCHEMA), pl.DataFrame(bad, schema=REJECT_SCHEMA)


# ---------------------------------------------------------------------------------------------- ratings


def _ratings_fast(chunk: bytes, first: int, n_lines: int) -> pl.DataFrame | None:
    try:
        df = pl.read_csv(
            chunk, has_header=False, new_columns=list(_RATING_SCHEMA), schema=_RATING_SCHEMA, quote_char=None
        )
    except Exception:
        return None
    if df.height != n_lines:
        return None
    df = df.with_columns(pl.col("user").str.strip_chars(), pl.col("item").str.strip_chars())
    if not _all_valid(df, rating_required=True):
        return None
    return df.with_columns((pl.int_range(0, pl.len(), dtype=pl.Int64) + first).alias("line")).select(list(_GOOD_SCHEMA))


def _ratings_exact(chunk: bytes, first: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    lines, _ = lines_frame(chunk, first)
    t = pl.col("text")
    parts = t.str.split_exact(",", 3)

    def field(i: int) -> pl.Expr:
        return parts.struct.field(f"field_{i}").str.strip_chars()

    df = lines.with_columns(
        field(0).alias("user"),
        field(1).alias("item"),
        field(2).cast(pl.Float64, strict=False).alias("rating"),
        field(3).cast(pl.Int64, strict=False).alias("ts"),
        (t.str.count_matches(",", literal=True) + 1).alias("_nf"),
    )
    c = pl.col
    fld, reason = first_failure(
        [
            ("line", t.str.strip_chars() == "", "empty line"),
            (
                "line",
                c("_nf") != 4,
                pl.format("expected 4 comma-separated fields (user,item,rating,ts), got {}", c("_nf")),
            ),
            ("user", ~_valid_id(c("user")), "empty or contains control characters/invalid UTF-8"),
            ("item", ~_valid_id(c("item")), "empty or contains control characters/invalid UTF-8"),
            ("rating", c("rating").is_null(), "not a number"),
            ("rating", ~c("rating").cast(pl.Float32).is_finite(), "not a finite float32 number"),
            ("ts", c("ts").is_null(), "not an integer unix timestamp"),
            ("ts", ~c("ts").is_between(MIN_TS, MAX_TS), "outside 1970..2100"),
        ]
    )
    df = df.with_columns(fld.alias("field"), reason.alias("reason"))
    bad = df.filter(c("field").is_not_null()).select(list(REJECT_SCHEMA))
    good = df.filter(c("field").is_null()).select(list(_GOOD_SCHEMA))
    return good, bad


# ---------------------------------------------------------------------------------------------- read


def _emit(task: FileTask, ctx: IngestContext, good: pl.DataFrame, behavior: Behavior) -> None:
    """Attach categories from meta and hand the rows to the builder."""
    counts = ctx.file(task)
    meta: pl.DataFrame | None = ctx.side.get(_META_KEY)
    if meta is None:
        cate = pl.lit(UNKNOWN_CATEGORY, dtype=pl.Utf8)
        counts.note(f"{task.kind} with unknown category (no meta)", good.height)
    else:
        good = good.join(meta.rename({"cate": "_meta"}), on="item", how="left", maintain_order="left")
        counts.note(f"{task.kind} with unknown category (no meta)", good["_meta"].null_count())
        counts.note(
            f"{task.kind} with unknown category (meta without category)",
            int((good["_meta"] == UNKNOWN_CATEGORY).sum()),
        )
        cate = pl.col("_meta").fill_null(UNKNOWN_CATEGORY)
    ctx.emit(
        task,
        good.select(
            "user",
            "item",
            cate.alias("cate"),
            pl.lit(int(behavior), dtype=pl.Int8).alias("behavior"),
            "ts",
            pl.col("rating").cast(pl.Float32),
            pl.lit(task.index, dtype=pl.Int16).alias("src_file"),
            pl.col("line").alias("src_row"),
        ),
    )


def _read_reviews(task: FileTask, ctx: IngestContext) -> None:
    counts = ctx.file(task)
    for first, n_lines, chunk in iter_line_chunks(task.path, ctx.options.chunk_bytes, task.span, task.first_line):
        counts.read += n_lines
        lines, _ = lines_frame(chunk, first)
        good = _reviews_fast(chunk, lines)
        if good is None:
            good, bad = _reviews_exact(lines)
            ctx.reject(task, bad)
        _emit(task, ctx, good, Behavior.review)
        ctx.advance(len(chunk))


def _read_ratings(task: FileTask, ctx: IngestContext) -> None:
    counts = ctx.file(task)
    for first, n_lines, chunk in iter_line_chunks(task.path, ctx.options.chunk_bytes, task.span, task.first_line):
        counts.read += n_lines
        nbytes = len(chunk)
        if first == 1:  # the file's first line (a span of the file numbers its lines from task.first_line)
            head = chunk[: chunk.find(b"\n")].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")
            if _is_header(head.split(",")):
                counts.drop("header line", 1)
                chunk, first, n_lines = chunk[chunk.find(b"\n") + 1 :], 2, n_lines - 1
        if chunk:
            good = _ratings_fast(chunk, first, n_lines)
            if good is None:
                good, bad = _ratings_exact(chunk, first)
                ctx.reject(task, bad)
            _emit(task, ctx, good, Behavior.rating)
        ctx.advance(nbytes)


def read(task: FileTask, ctx: IngestContext) -> None:
    """Parse one reviews or ratings file (or the ``task.span`` of a plain one) into ``ctx`` (events, rejects,
    counts); the asin -> category table is the one :func:`prepare` left in ``ctx.side``."""
    if task.kind == "reviews":
        _read_reviews(task, ctx)
    elif task.kind == "ratings":
        _read_ratings(task, ctx)
    else:
        raise ValueError(f"{task.path}: amazon.read got a {task.kind!r} file (meta is read by prepare)")
