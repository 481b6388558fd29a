"""The catalog: which datasets a user has built, from what, and what was built from them (DuckDB).

One DuckDB file, by default ``~/.lsdata/catalog.duckdb``; the environment variable ``LSDATA_CATALOG`` (or
``--catalog``) names another, and ``LSDATA_CATALOG=off`` turns automatic registration off. ``lsdata ingest``,
``split``, ``layout`` and ``append`` register the dataset they wrote (best effort: a catalog that cannot be
written is a warning, never a failed run); ``lsdata store add DIR`` registers any existing dataset.

A registration re-reads the dataset's own records (``manifest.json``, ``versions.json``,
``split/report.json``, ``layouts/*/report.json``) and replaces everything the catalog held for that path in
one transaction, so the catalog is a cache of the directories, never the source of truth. Tables:

* ``datasets``: name, path, source, synthetic, latest version, counts, ingest options, registration time
* ``versions``: per version (1 = ingest) the totals and what it added
* ``sources``: lineage, every raw file (path, kind, sha256, bytes, rows read/kept/rejected/dropped) with the
  version it produced and its ``src_file`` index
* ``splits`` and ``layouts``: what was built, from which version, with row counts and widths

Query it directly too: ``duckdb ~/.lsdata/catalog.duckdb "select * from sources"``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from lsdata import versions
from lsdata.dataset import open_dataset
from lsdata.io import InputError, read_json
from lsdata.schemas import LayoutReport, SplitReport

ENV = "LSDATA_CATALOG"
DEFAULT_PATH = Path("~/.lsdata/catalog.duckdb")

DDL = [
    """create table if not exists datasets (
        name varchar primary key, path varchar unique, source varchar, synthetic boolean, lsdata_version varchar,
        latest_version integer, partitions integer, events bigint, users bigint, items bigint, cates bigint,
        ts_min bigint, ts_max bigint, options json, registered_at timestamp)""",
    """create table if not exists versions (
        path varchar, version integer, parent integer, events bigint, users bigint, items bigint, cates bigint,
        events_added bigint, users_touched bigint, users_new bigint, items_new bigint, quarantined bigint,
        ts_min bigint, ts_max bigint)""",
    """create table if not exists sources (
        path varchar, version integer, src_file integer, file varchar, kind varchar, sha256 varchar, bytes bigint,
        rows_read bigint, rows_kept bigint, rows_rejected bigint, rows_dropped bigint)""",
    """create table if not exists splits (
        path varchar, from_version integer, method varchar, cut_time bigint, valid_cut_time bigint,
        train bigint, valid bigint, test bigint, options json)""",
    """create table if not exists layouts (
        path varchar, from_version integer, layout varchar, widths json, train bigint, valid bigint, test bigint)""",
]
PER_PATH = ("versions", "sources", "splits", "layouts")


def catalog_path(path: str | Path | None = None) -> Path | None:
    """The catalog file: ``path``, else ``$LSDATA_CATALOG``, else ``~/.lsdata/catalog.duckdb``; None if "off"."""
    p = str(path) if path is not None else os.environ.get(ENV, "")
    if p.lower() == "off":
        return None
    return Path(p or DEFAULT_PATH).expanduser()


def connect(path: str | Path | None = None, read_only: bool = False):
    import duckdb

    p = catalog_path(path)
    if p is None:
        raise InputError(f"the catalog is turned off ({ENV}=off); name one with --catalog or {ENV}")
    if read_only and not p.exists():
        raise InputError(f"{p}: no catalog yet (register a dataset with `lsdata store add DIR`)")
    p.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(p), read_only=read_only)
    if not read_only:
        for ddl in DDL:
            con.execute(ddl)
    return con


def _free_name(con, wanted: str, path: str) -> str:
    taken = dict(con.execute("select name, path from datasets").fetchall())
    name, k = wanted, 1
    while name in taken and taken[name] != path:
        k += 1
        name = f"{wanted}-{k}"
    return name


def register(root: str | Path, name: str | None = None, catalog: str | Path | None = None) -> str:
    """Record (or refresh) the dataset at ``root``; returns its catalog name (default: the directory name,
    suffixed ``-2``, ``-3``... if another path has it)."""
    root = Path(root).resolve()
    ds = open_dataset(root)
    m, log = ds.manifest, versions.version_log(root)
    path = str(root)
    con = connect(catalog)
    try:
        con.execute("begin transaction")
        old = con.execute("select name from datasets where path = ?", [path]).fetchone()
        if name is not None:
            other = con.execute("select path from datasets where name = ?", [name]).fetchone()
            if other and other[0] != path:
                raise InputError(f"catalog name {name!r} is taken by {other[0]}")
        name = name or (old[0] if old else _free_name(con, root.name, path))
        con.execute("delete from datasets where path = ?", [path])
        for t in PER_PATH:
            con.execute(f"delete from {t} where path = ?", [path])
        last = log.versions[-1] if log.versions else m
        con.execute(
            "insert into datasets values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [name, path, m.dataset, m.synthetic, m.lsdata_version, ds.version, m.partitions, last.events, last.users,
             last.items, last.cates, last.ts_min, last.ts_max, json.dumps(m.options), datetime.now(timezone.utc).replace(tzinfo=None)],
        )
        rows = [[path, 1, None, m.events, m.users, m.items, m.cates, m.events, m.users, m.users, m.items, m.quarantined, m.ts_min, m.ts_max]]
        rows += [[path, v.version, v.parent, v.events, v.users, v.items, v.cates, v.events_added, v.users_touched, v.users_new,
                  v.items_new, v.quarantined, v.ts_min, v.ts_max] for v in log.versions]
        con.executemany("insert into versions values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        src = [(1, s) for s in m.sources] + [(v.version, s) for v in log.versions for s in v.sources]
        if src:
            con.executemany(
                "insert into sources values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [[path, v, i, s.path, s.kind, s.sha256, s.bytes, s.rows_read, s.rows_kept, s.rows_rejected, s.rows_dropped]
                 for i, (v, s) in enumerate(src)],
            )
        rep = root / "split" / "report.json"
        if rep.exists():
            r = SplitReport.model_validate(read_json(rep))
            n = {k: s.samples for k, s in r.sets.items()}
            con.execute("insert into splits values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [path, ds.version, r.method, r.cut_time, r.valid_cut_time, n.get("train"), n.get("valid"), n.get("test"),
                         json.dumps(r.options)])
        for rep in sorted((root / "layouts").glob("*/report.json")):
            lr = LayoutReport.model_validate(read_json(rep))
            con.execute("insert into layouts values (?, ?, ?, ?, ?, ?, ?)",
                        [path, ds.version, lr.layout, json.dumps(lr.widths), lr.rows.get("train"), lr.rows.get("valid"), lr.rows.get("test")])
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    finally:
        con.close()
    return name


def _resolve(con, name: str) -> tuple[str, str]:
    """(name, path) of a catalog entry given its name or its directory."""
    row = con.execute("select name, path from datasets where name = ? or path = ?", [name, str(Path(name).resolve())]).fetchone()
    if row is None:
        known = [r[0] for r in con.execute("select name from datasets order by name").fetchall()]
        raise InputError(f"no dataset {name!r} in the catalog; known: {', '.join(known) or '(none)'}")
    return row


def remove(name: str, catalog: str | Path | None = None) -> str:
    """Forget a dataset (the directory itself is not touched); returns its path."""
    con = connect(catalog)
    try:
        name, path = _resolve(con, name)
        con.execute("begin transaction")
        con.execute("delete from datasets where path = ?", [path])
        for t in PER_PATH:
            con.execute(f"delete from {t} where path = ?", [path])
        con.execute("commit")
    finally:
        con.close()
    return path


def _rows(con, sql: str, params: list) -> list[dict]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def list_datasets(catalog: str | Path | None = None) -> list[dict]:
    """One dict per registered dataset: name, source, latest version, counts, layouts built, path, whether it
    still exists."""
    con = connect(catalog, read_only=True)
    try:
        out = _rows(con, """
            select d.name, d.source, d.latest_version as version, d.events, d.users, d.items,
                   coalesce((select string_agg(layout, ',' order by layout) from layouts l where l.path = d.path), '') as layouts,
                   d.path
            from datasets d order by d.name""", [])
    finally:
        con.close()
    for r in out:
        r["exists"] = (Path(r["path"]) / "manifest.json").exists()
    return out


def show(name: str, catalog: str | Path | None = None) -> dict:
    """Everything the catalog holds on one dataset: the entry, versions, sources (lineage), split, layouts."""
    con = connect(catalog, read_only=True)
    try:
        name, path = _resolve(con, name)
        out = _rows(con, "select * from datasets where path = ?", [path])[0]
        out["options"] = json.loads(out["options"])
        out["registered_at"] = str(out["registered_at"])
        out["versions"] = _rows(con, "select * exclude (path) from versions where path = ? order by version", [path])
        out["sources"] = _rows(con, "select * exclude (path) from sources where path = ? order by src_file", [path])
        out["splits"] = _rows(con, "select * exclude (path) from splits where path = ?", [path])
        out["layouts"] = _rows(con, "select * exclude (path) from layouts where path = ? order by layout", [path])
    finally:
        con.close()
    for s in out["splits"]:
        s["options"] = json.loads(s["options"])
    for lay in out["layouts"]:
        lay["widths"] = json.loads(lay["widths"])
    return out
