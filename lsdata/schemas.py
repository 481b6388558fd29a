"""Row models of every file lsdata writes, and the Arrow/JSON schemas derived from them.

One pydantic model per Parquet table (a row) and per JSON document. From each we derive
* the Arrow schema the writer uses (:func:`arrow_schema`), so code and files cannot disagree, and
* the language-neutral JSON Schema committed under ``schemas/`` (:func:`json_schemas`); a test
  regenerates them and fails on drift (``python -m lsdata.schemas --write`` refreshes them).

Fixed-size list columns take their width from the layout (``x-width`` names which width).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, create_model

from lsdata import __version__


@dataclass(frozen=True)
class Arrow:
    """Arrow storage of a column: value type, list kind ('', 'list', 'fixed') and fixed width key."""

    type: pa.DataType
    kind: Literal["", "list", "fixed"] = ""
    width: str = ""
    nullable: bool = False

    def resolve(self, widths: dict[str, int] | None) -> pa.DataType:
        if self.kind == "list":
            return pa.list_(self.type)
        if self.kind == "fixed":
            if not widths or self.width not in widths:
                raise KeyError(f"fixed-size list needs width {self.width!r}")
            return pa.list_(self.type, widths[self.width])
        return self.type


def _col(py, arrow: Arrow, desc: str):
    extra = {"x-arrow": str(arrow.type)}
    if arrow.kind:
        extra["x-list"] = arrow.kind
    if arrow.width:
        extra["x-width"] = arrow.width
    return Annotated[py, arrow, Field(description=desc, json_schema_extra=extra)]


def I8(d: str):
    return _col(int, Arrow(pa.int8()), d)


def I16(d: str):
    return _col(int, Arrow(pa.int16()), d)


def I32(d: str):
    return _col(int, Arrow(pa.int32()), d)


def I64(d: str):
    return _col(int, Arrow(pa.int64()), d)


def F32N(d: str):
    return _col(float | None, Arrow(pa.float32(), nullable=True), d)


def STR(d: str):
    return _col(str, Arrow(pa.string()), d)


def LIST(t: pa.DataType, d: str):
    return _col(list[int], Arrow(t, "list"), d)


def FIXED(t: pa.DataType, width: str, d: str):
    return _col(list[int], Arrow(t, "fixed", width), d)


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- events / vocab / sequences


class EventRow(Row):
    """``events/part-*.parquet``: one row per kept input row, sorted by (user, ts, src_file, src_row)."""

    user: I32("dense user id (1-based)")
    item: I32("dense item id (1-based)")
    cate: I32("dense category id (1-based; the explicit unknown category has its own id)")
    behavior: I8("behaviour code, lsdata.defaults.Behavior (pv=1 cart=2 fav=3 buy=4 review=5 rating=6 click=7)")
    ts: I64("event time, unix seconds UTC")
    rating: F32N("Amazon star rating; null where the source has none")
    src_file: I16("index of the source file in manifest.sources (tie-break after ts)")
    src_row: I64("1-based line number in the source file (tie-break after src_file)")


class VocabRow(Row):
    """``vocab/{user,cate}.parquet``: raw id <-> dense id. ``raw`` is int64 (Taobao) or string."""

    id: I32("dense id, 1-based, assigned in ascending order of raw")
    raw: _col(int | str, Arrow(pa.string()), "raw id as in the source (int64 for Taobao, string otherwise)")
    count: I64("number of kept events with this id")


class ItemVocabRow(VocabRow):
    """``vocab/item.parquet``: as VocabRow plus the item's category."""

    cate: I32("dense category of the item: the category of its earliest event (or from Amazon meta)")


class SequenceRow(Row):
    """``sequences/part-*.parquet``: each user's whole history, stored once, time-sorted."""

    user: I32("dense user id")
    length: I32("number of events")
    item: LIST(pa.int32(), "item ids in (ts, src_file, src_row) order")
    cate: LIST(pa.int32(), "category ids, parallel to item")
    behavior: LIST(pa.int8(), "behaviour codes, parallel to item")
    ts: LIST(pa.int64(), "unix seconds, non-decreasing")


class ItemEventRow(Row):
    """``item_events/part-*.parquet``: the events again, partitioned by ``item % partitions`` and sorted by
    (item, ts, src_file, src_row): the item-side view (who touched an item, and when)."""

    item: I32("dense item id")
    ts: I64("event time")
    user: I32("dense user id")
    behavior: I8("behaviour code")


class QuarantineRow(Row):
    """``quarantine.parquet``: every rejected input row, with where and why."""

    file: STR("source file path as given")
    line: I64("1-based line number")
    field: STR("offending field (or 'line' for the whole row)")
    reason: STR("why it was rejected")
    text: STR("the raw line (truncated to 500 characters)")


class SampleRow(Row):
    """``split/samples.parquet``: one row per sample; a sample is a pointer into a stored sequence."""

    user: I32("dense user id")
    split: STR("train | valid | test")
    label: I8("1 = the true next event's item, 0 = a sampled negative item")
    item: I32("candidate item (true target or negative)")
    cate: I32("candidate's category")
    ts: I64("target time (the true event's ts, also for negatives)")
    target_pos: I32("position of the true target event in the user's sequence")
    hist_end: I32("history = sequence[:hist_end] = events with ts < target ts")


class XLongSampleRow(Row):
    """``xlong/{train,valid,test}.parquet``: XLong arrives as samples; ids are the file's ids + 1."""

    user: I32("uid + 1")
    label: I8("1 = positive target, 0 = negative target")
    item: I32("target item + 1")
    cate: I32("always 0: XLong has no categories")
    ts: I64("1-based line number in its file (XLong has no time; order only)")
    hist_item: LIST(pa.int32(), "history items + 1, oldest first")
    side_user: LIST(pa.int32(), "the target's item-side ids + 1 (field 5/6 of the file; id space unverified)")


# --------------------------------------------------------------------------- layouts


class _Target(Row):
    user: I32("dense user id")
    label: I8("1 positive, 0 negative")
    item: I32("candidate item")
    cate: I32("candidate category")
    ts: I64("target time; every history and item-side event is strictly earlier")


class PlainLayoutRow(_Target):
    """``layouts/plain/{split}.parquet``: post-padded (real events first, zeros after)."""

    hist_item: FIXED(pa.int32(), "hist", "most recent history items, oldest first, post-padded with 0")
    hist_cate: FIXED(pa.int32(), "hist", "categories, parallel to hist_item")
    hist_behavior: FIXED(pa.int8(), "hist", "behaviour codes, parallel to hist_item")
    hist_len: I32("number of real history events (<= width)")
    side_user: FIXED(pa.int32(), "side", "users who touched the candidate item before ts, oldest first, post-padded")
    side_behavior: FIXED(pa.int8(), "side", "their behaviour codes")
    side_len: I32("number of real item-side events")


class HpmnLayoutRow(_Target):
    """``layouts/hpmn/{split}.parquet``: front-padded (zeros first; the most recent event is last)."""

    hist_item: FIXED(pa.int32(), "hist", "most recent history items, front-padded with 0")
    hist_cate: FIXED(pa.int32(), "hist", "categories")
    hist_behavior: FIXED(pa.int8(), "hist", "behaviour codes")
    hist_len: I32("number of real history events")
    side_user: FIXED(pa.int32(), "side", "item-side users, front-padded")
    side_behavior: FIXED(pa.int8(), "side", "their behaviour codes")
    side_len: I32("number of real item-side events")


class MimnLayoutRow(HpmnLayoutRow):
    """``layouts/mimn/{split}.parquet``: hpmn plus a per-position negative history (aux losses)."""

    neg_item: FIXED(pa.int32(), "hist", "per-position negative item (never in the user's history); 0 at padding")
    neg_cate: FIXED(pa.int32(), "hist", "category of neg_item")


class ShanLayoutRow(_Target):
    """``layouts/shan/{split}.parquet``: the reference ``crop``: long part front-padded, short part
    (the most recent events) post-padded when the history is shorter than it."""

    long_item: FIXED(pa.int32(), "long", "older history, front-padded")
    long_cate: FIXED(pa.int32(), "long", "categories")
    long_behavior: FIXED(pa.int8(), "long", "behaviour codes")
    long_len: I32("real events in the long part")
    short_item: FIXED(pa.int32(), "short", "most recent history, oldest first, post-padded")
    short_cate: FIXED(pa.int32(), "short", "categories")
    short_behavior: FIXED(pa.int8(), "short", "behaviour codes")
    short_len: I32("real events in the short part")
    side_long_user: FIXED(pa.int32(), "side_long", "older item-side users, front-padded")
    side_long_behavior: FIXED(pa.int8(), "side_long", "their behaviour codes")
    side_long_len: I32("real events in the item-side long part")
    side_short_user: FIXED(pa.int32(), "side_short", "most recent item-side users, post-padded")
    side_short_behavior: FIXED(pa.int8(), "side_short", "their behaviour codes")
    side_short_len: I32("real events in the item-side short part")


LAYOUT_ROWS: dict[str, type[Row]] = {
    "plain": PlainLayoutRow,
    "hpmn": HpmnLayoutRow,
    "shan": ShanLayoutRow,
    "mimn": MimnLayoutRow,
}

# --------------------------------------------------------------------------- JSON documents


class SourceFile(BaseModel):
    path: str
    kind: str = Field(description="reviews | meta | ratings | behavior | xlong_train | xlong_test | graph_emb")
    sha256: str
    bytes: int
    rows_read: int = Field(description="lines read (for meta files: records)")
    rows_kept: int
    rows_rejected: int = Field(description="malformed rows, all in quarantine.parquet")
    rows_dropped: int = Field(0, description="well-formed rows removed by an option (see dropped)")
    dropped: dict[str, int] = Field(default_factory=dict, description="reason -> rows, e.g. behavior filter, out of window")
    notes: dict[str, int] = Field(default_factory=dict, description="other counts, e.g. reviews with unknown category")


class Manifest(BaseModel):
    """``manifest.json``: written last by ingest; a dataset without it is incomplete."""

    lsdata_version: str = __version__
    dataset: Literal["taobao", "amazon", "xlong"]
    synthetic: bool = Field(False, description="true when every input was made by an lsdata generator")
    options: dict
    sources: list[SourceFile]
    partitions: int
    events: int
    users: int
    items: int
    cates: int
    ts_min: int | None
    ts_max: int | None
    quarantined: int
    files: dict[str, str] = Field(default_factory=dict, description="relative output path -> sha256")


class SetReport(BaseModel):
    users: int
    samples: int
    positives: int
    empty_history: int = Field(0, description="samples with no event strictly before the target")
    target_ts_min: int | None
    target_ts_max: int | None


class SplitReport(BaseModel):
    """``split/report.json``."""

    lsdata_version: str = __version__
    options: dict
    method: str
    cut_time: int | None
    valid_cut_time: int | None
    users_total: int
    sets: dict[str, SetReport]
    ties_at_cut: int = Field(0, description="users whose last event equals the cut exactly (they go to train)")
    warnings: list[str] = Field(default_factory=list)


class LayoutReport(BaseModel):
    """``layouts/{name}/report.json``."""

    lsdata_version: str = __version__
    layout: str
    widths: dict[str, int]
    rows: dict[str, int]
    files: dict[str, str] = Field(default_factory=dict, description="file -> sha256")


class VersionInfo(BaseModel):
    """One appended version (an entry of ``versions.json``); version 1 is the ingest (``manifest.json``)."""

    version: int = Field(description="2, 3, ...: the number --as-of-version takes")
    parent: int = Field(description="the version this one was appended to")
    sources: list[SourceFile] = Field(description="the appended raw files (lineage; a file whose sha256 is here is refused)")
    events_added: int
    users_touched: int = Field(description="users with new events (their sequences were rewritten)")
    users_new: int
    items_new: int
    cates_new: int
    quarantined: int
    events: int = Field(description="events in the dataset as of this version")
    users: int
    items: int
    cates: int
    ts_min: int | None
    ts_max: int | None
    files: dict[str, str] = Field(default_factory=dict, description="path relative to the dataset -> sha256")


class VersionLog(BaseModel):
    """``versions.json``: the published appended versions, oldest first; rewritten atomically (commit point)."""

    lsdata_version: str = __version__
    versions: list[VersionInfo]


def _retrieved(row: type[Row]) -> type[Row]:
    """A layout's row model for point-in-time retrieval: the request's index first, label nullable."""
    fields: dict = {"request": (I64("0-based row of the request in the requests file"), ...)}
    for k, info in row.model_fields.items():
        if k == "label":
            fields[k] = (_col(int | None, Arrow(pa.int8(), nullable=True), "the request's label if it carried one, else null"), None)
        else:
            fields[k] = (info.annotation, info)
    doc = f"``lsdata retrieve --layout {row.__name__.removesuffix('LayoutRow').lower()}``: one row per request, the " \
          "layout's columns computed from events strictly before the request's ts."
    return create_model(f"Retrieved{row.__name__}", __base__=Row, __doc__=doc, **fields)


RETRIEVED_ROWS: dict[str, type[Row]] = {k: _retrieved(v) for k, v in LAYOUT_ROWS.items()}

TABLES: dict[str, type[Row]] = {
    "events": EventRow,
    "vocab": VocabRow,
    "vocab_item": ItemVocabRow,
    "sequences": SequenceRow,
    "item_events": ItemEventRow,
    "quarantine": QuarantineRow,
    "samples": SampleRow,
    "xlong_samples": XLongSampleRow,
    **{f"layout_{k}": v for k, v in LAYOUT_ROWS.items()},
    **{f"retrieved_{k}": v for k, v in RETRIEVED_ROWS.items()},
}
DOCUMENTS: dict[str, type[BaseModel]] = {
    "manifest": Manifest,
    "split_report": SplitReport,
    "layout_report": LayoutReport,
    "versions": VersionLog,
}


def _arrow_meta(ann) -> Arrow:
    for a in get_args(ann)[1:] if get_origin(ann) is Annotated else ():
        if isinstance(a, Arrow):
            return a
    raise TypeError(f"column has no Arrow annotation: {ann}")


def arrow_schema(model: type[Row], widths: dict[str, int] | None = None, raw_type: pa.DataType | None = None) -> pa.Schema:
    """The Arrow schema of ``model``'s table; ``widths`` sizes fixed lists, ``raw_type`` the vocab raw id."""
    fields = []
    for name, info in model.model_fields.items():
        meta = next((m for m in info.metadata if isinstance(m, Arrow)), None)
        if meta is None:
            raise TypeError(f"{model.__name__}.{name} has no Arrow annotation")
        t = meta.resolve(widths)
        if name == "raw" and raw_type is not None:
            t = raw_type
        fields.append(pa.field(name, t, nullable=meta.nullable))
    return pa.schema(fields)


def json_schemas() -> dict[str, dict]:
    """name -> JSON Schema, for every table and document."""
    out = {}
    for name, m in {**TABLES, **DOCUMENTS}.items():
        s = m.model_json_schema()
        s["$id"] = f"https://lsdata.dev/schemas/{name}.json"
        s["$comment"] = (
            "Generated from lsdata.schemas." + m.__name__ + " by `python -m lsdata.schemas --write`; do not edit."
        )
        out[name] = s
    return out


def write_json_schemas(directory: str | Path) -> list[Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, s in json_schemas().items():
        p = d / f"{name}.schema.json"
        p.write_text(json.dumps(s, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(p)
    return paths


if __name__ == "__main__":  # pragma: no cover
    import sys

    target = Path(__file__).resolve().parent.parent / "schemas"
    if "--write" in sys.argv:
        for p in write_json_schemas(target):
            print(p)
    else:
        print(json.dumps(json_schemas(), indent=2, sort_keys=True))
