"""lsdata validate and lsdata stats on an appended dataset (the real Taobao slice split by time into two files:
the first ingested, the second appended as version 2).

A clean appended dataset must validate with no violations and give the statistics of a single ingest of both
files; corruptions planted in a version's delta files must be reported naming the delta file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from lsdata import layouts, samples, stats, validate
from lsdata.append import append
from lsdata.cli import app
from lsdata.dataset import open_dataset
from lsdata.defaults import IngestOptions, SplitOptions
from lsdata.ingest import ingest

from .test_stats_validate import CSV, LAYOUTS, found, need_csv, rewrite

V2 = Path("versions") / "00002"


def halves(tmp: Path) -> tuple[Path, Path]:
    """The slice's lines split at the median event time: early.csv (ts <= median) and late.csv (the rest). The late
    file touches the users of the early one and brings new items."""
    lines = CSV.read_text().splitlines(keepends=True)
    ts = sorted(int(x.rsplit(",", 1)[1]) for x in lines)
    median = ts[len(ts) // 2]
    early, late = tmp / "early.csv", tmp / "late.csv"
    early.write_text("".join(x for x in lines if int(x.rsplit(",", 1)[1]) <= median))
    late.write_text("".join(x for x in lines if int(x.rsplit(",", 1)[1]) > median))
    return early, late


def finish(root: Path) -> None:
    ds = open_dataset(root)
    samples.build(ds, SplitOptions())
    layouts.build(ds, LAYOUTS)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """appended: early ingested, late appended (before the split, v1 and v2 validated: see ``checked``), split and
    laid out; both: early + late in one ingest, split and laid out; early: early alone."""
    need_csv()
    tmp = tmp_path_factory.mktemp("versions")
    early, late = halves(tmp)
    opts = IngestOptions(partitions=3, keep_out_of_window=True)
    out = {"appended": tmp / "appended", "both": tmp / "both", "early": tmp / "early"}
    ingest("taobao", [str(early)], out["appended"], opts)
    append(out["appended"], [str(late)])
    out["checked"] = {v: validate.validate(open_dataset(out["appended"], v)) for v in (1, 2)}  # before the split
    finish(out["appended"])
    ingest("taobao", [str(early), str(late)], out["both"], opts)
    finish(out["both"])
    ingest("taobao", [str(early)], out["early"], opts)
    return out


@pytest.fixture
def copy(datasets, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(datasets["appended"], dst)
    return dst


COUNTS = ["users", "items", "cates", "events", "seq_len", "item_len", "behaviors", "ts_min", "ts_max"]


def test_appended_dataset_is_valid_and_its_stats_equal_a_single_ingest(datasets):
    assert datasets["checked"] == {1: [], 2: []}
    ds = open_dataset(datasets["appended"])
    assert ds.version == 2 and any((ds.root / V2 / "sequences").iterdir())
    assert validate.validate(ds) == []
    got, want = stats.compute(ds), stats.compute(open_dataset(datasets["both"]))
    assert got.model_dump(include=set(COUNTS)) == want.model_dump(include=set(COUNTS))
    assert got.sets == want.sets and got.split_method == want.split_method and got.layouts == want.layouts == LAYOUTS
    v1 = stats.compute(open_dataset(datasets["appended"], version=1))
    early = stats.compute(open_dataset(datasets["early"]))
    assert v1.model_dump(include=set(COUNTS)) == early.model_dump(include=set(COUNTS))
    assert v1.events < got.events and v1.items < got.items  # the late half adds events and new items


def test_cli_validate_and_stats_take_as_of_version(datasets):
    runner = CliRunner()
    root = str(datasets["appended"])
    r = runner.invoke(app, ["stats", root, "--json", "--as-of-version", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["events"] == stats.compute(open_dataset(datasets["early"])).events
    r = runner.invoke(app, ["stats", root, "--json"])
    assert json.loads(r.output)["events"] == stats.compute(open_dataset(datasets["both"])).events
    r = runner.invoke(app, ["validate", root])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["validate", root, "--as-of-version", "3"])
    assert r.exit_code == 2 and "no version 3" in r.output


def _delta_with_a_long_sequence(root: Path) -> Path:
    return max((root / V2 / "sequences").glob("part-*.parquet"), key=lambda p: pl.read_parquet(p)["length"].max())


def test_sequence_out_of_time_order_in_a_delta_names_the_delta_file(copy):
    path = _delta_with_a_long_sequence(copy)
    d = pl.read_parquet(path)
    row = int(d["length"].arg_max())
    ts = d["ts"].to_list()
    k = next(j for j in range(1, len(ts[row])) if ts[row][j] != ts[row][j - 1])
    ts[row][k - 1], ts[row][k] = ts[row][k], ts[row][k - 1]
    rewrite(path, lambda f: f.with_columns(pl.Series("ts", ts, dtype=f.schema["ts"])))
    rel = (V2 / "sequences" / path.name).as_posix()
    msgs = validate.validate(open_dataset(copy))
    assert found(msgs, f"{rel} row {row} (user {d['user'][row]})", "ts decreases", f"position {k}"), msgs
    assert found(msgs, rel, "sha256 differs from versions.json version 2"), msgs
    assert found(msgs, f"{rel})", f"user {d['user'][row]}", "position"), msgs  # the merged partition != its events
    assert validate.validate(open_dataset(copy, version=1)) != []  # the split is of version 2 ...
    assert not found(validate.validate(open_dataset(copy, version=1)), rel)  # ... and version 1 never reads the delta


def test_vocab_id_gap_in_a_delta_names_the_delta_file(copy):
    path = copy / V2 / "vocab" / "item.parquet"
    n = pl.read_parquet(path).height
    rewrite(path, lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == n - 1).then(pl.col("id") + 1)
                                           .otherwise(pl.col("id")).alias("id")))
    msgs = validate.validate(open_dataset(copy))
    rel = (V2 / "vocab" / "item.parquet").as_posix()
    assert found(msgs, f"{rel} row {n - 1}: id {n + 1}, expected {n}"), msgs


def test_earlier_ids_changed_in_a_delta_vocab_are_caught(copy):
    path = copy / V2 / "vocab" / "user.parquet"
    d = pl.read_parquet(path)
    a, b = d["raw"][0], d["raw"][1]
    rewrite(path, lambda f: f.with_columns(pl.Series("raw", [b, a, *f["raw"][2:]], dtype=f.schema["raw"])))
    msgs = validate.validate(open_dataset(copy))
    assert found(msgs, f"{(V2 / 'vocab' / 'user.parquet').as_posix()} row 0", "vocab/user.parquet has", "must not change"), msgs


def test_delta_schema_and_versions_json_consistency(copy):
    ev = sorted((copy / V2 / "events").glob("part-*.parquet"))[0]
    pl.read_parquet(ev).with_columns(pl.col("src_row").cast(pl.Int32)).write_parquet(ev)
    shutil.copytree(copy / V2, copy / "versions" / "00003")  # an unpublished leftover
    log = json.loads((copy / "versions.json").read_text())
    first = json.loads((copy / "manifest.json").read_text())["sources"][0]
    log["versions"][0]["sources"][0]["sha256"] = first["sha256"]
    (copy / "versions.json").write_text(json.dumps(log))
    msgs = validate.validate(open_dataset(copy))
    rel = (V2 / "events" / ev.name).as_posix()
    assert found(msgs, f"{rel}: schema differs from EventRow", "src_row is int32"), msgs
    assert found(msgs, "versions/00003: not listed in versions.json"), msgs
    assert found(msgs, "versions.json version 2: source", f"has the sha256 of {first['path']} (version 1)"), msgs
    (copy / "versions.json").unlink()
    msgs = validate.validate(open_dataset(copy))  # version 1 now: the version directories are not published
    assert found(msgs, "versions/00002: not listed in versions.json"), msgs
