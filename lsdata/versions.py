"""Dataset versions: ingest writes version 1; each ``lsdata append`` publishes version N+1 beside it.

::

    DIR/versions.json                        the published appended versions (VersionLog; the commit point)
    DIR/versions/NNNNN/sequences/part-P      the full updated sequences of the users version N touched,
                                             in their user partition P (same raw-id hash as ingest)
    DIR/versions/NNNNN/events/part-P         the events version N added (dense ids), sorted as events/
    DIR/versions/NNNNN/item_events/part-Q    the item-side rows version N added, sorted by (item, ts)
    DIR/versions/NNNNN/vocab/*.parquet       full vocabularies: earlier ids unchanged, new ids appended
    DIR/versions/NNNNN/quarantine.parquet    the rows of the appended files that were rejected

The base files written by ingest are never modified. Reading partition ``P`` **as of version V** merges
the base file with the deltas of versions 2..V:

* ``sequences``: a user's row is taken from the newest version <= V that has it, else from the base.
* ``events`` / ``item_events``: base rows, then each version's rows, stably sorted by ``(user, ts)`` /
  ``(item, ts)``. Appended files get ``src_file`` indexes after every earlier file, so this is exactly the
  ``(ts, src_file, src_row)`` order a single ingest of all files would give.
* ``vocab``: the newest version's vocabulary <= V (older ids are a prefix of newer ones).

A version directory not listed in ``versions.json`` is an interrupted append: no reader looks at it, and
the next append removes it. Cost of a merged read: the partition's size plus the deltas' sizes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from lsdata.io import InputError, read_json
from lsdata.schemas import Manifest, VersionInfo, VersionLog

if TYPE_CHECKING:
    from lsdata.dataset import Dataset

LOG = "versions.json"
DIR = "versions"
TABLES = ("events", "sequences", "item_events")
_ORDER = {"events": "user", "item_events": "item"}


def version_log(root: Path) -> VersionLog:
    """The published versions of a dataset (empty log: only the ingest, version 1)."""
    p = Path(root) / LOG
    if not p.exists():
        return VersionLog(versions=[])
    return VersionLog.model_validate(read_json(p))


def version_dir(root: Path, version: int) -> Path:
    return Path(root) / DIR / f"{version:05d}"


def latest(root: Path) -> int:
    log = version_log(root)
    return log.versions[-1].version if log.versions else 1


def check_version(root: Path, version: int | None) -> int:
    """``version`` (None = latest), or an InputError naming the versions that exist."""
    last = latest(root)
    if version is None:
        return last
    if not 1 <= version <= last:
        raise InputError(f"{root}: no version {version}; versions 1..{last} exist (1 = the ingest)")
    return version


def totals(ds: Dataset) -> tuple[str, Manifest | VersionInfo]:
    """Where the dataset's totals as of ``ds.version`` are recorded, and that record (events, users, items,
    cates, ts_min, ts_max): ``manifest.json`` for version 1, else the version's ``versions.json`` entry."""
    if ds.version == 1:
        return "manifest.json", ds.manifest
    info = next(v for v in version_log(ds.root).versions if v.version == ds.version)
    return f"versions.json version {ds.version}", info


def files(ds: Dataset, table: str, part: Path) -> list[Path]:
    """The files a read of partition ``part`` as of ``ds.version`` merges: the base file, then its deltas."""
    return [part, *deltas(ds, table, part)]


def deltas(ds: Dataset, table: str, part: Path) -> list[Path]:
    """Delta files of ``table`` for the partition named like ``part``, versions 2..ds.version in order."""
    out = []
    for v in range(2, ds.version + 1):
        p = version_dir(ds.root, v) / table / part.name
        if p.exists():
            out.append(p)
    return out


def _read(path: Path, columns: list[str] | None, keys: dict[str, pl.Series]) -> pl.DataFrame:
    if not keys:
        return pl.read_parquet(path, columns=columns)
    # prefiltered: decode the key column(s), then only the matching rows of the others
    lf = pl.scan_parquet(path, parallel="prefiltered")
    for col, values in keys.items():
        lf = lf.filter(pl.col(col).is_in(values.implode()))
    return (lf.select(columns) if columns else lf).collect()


def read_part(
    ds: Dataset, table: str, part: Path, columns: list[str] | None = None, users: pl.Series | None = None,
    items: pl.Series | None = None,
) -> pl.DataFrame:
    """Partition ``part`` of ``table`` as of ``ds.version`` (see the module docstring); ``users`` reads just
    those users' rows, ``items`` (events, item_events) just those items' rows (prefiltered reads; a row
    filter commutes with the stable merge sort, so the rows kept are in the same order as in a full read)."""
    extra = deltas(ds, table, part)
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    if table == "sequences" and items is not None:
        raise ValueError("sequences hold item lists: filter them by users only")
    keys = {k: s for k, s in (("user", users), ("item", items)) if s is not None}
    key = "user" if table == "sequences" else _ORDER[table]
    order = [key] if table == "sequences" else [key, "ts"]
    need = columns if columns is None or set(order) <= set(columns) else list(dict.fromkeys([*order, *columns]))
    base = _read(part, need, keys)
    if not extra:
        return base.select(columns) if columns else base
    newer = [_read(p, need, keys) for p in extra]
    if table == "sequences":  # a user's row from the newest version that has it
        latest = pl.concat(newer[::-1]).unique("user", keep="first", maintain_order=True)
        merged = pl.concat([base.join(latest.select("user"), on="user", how="anti"), latest]).sort("user")
    else:
        merged = pl.concat([base, *newer]).sort(*order, maintain_order=True)
    return merged.select(columns) if columns else merged


def vocab_path(ds: Dataset, name: str) -> Path:
    """``vocab/NAME.parquet`` as of ``ds.version``."""
    for v in range(ds.version, 1, -1):
        p = version_dir(ds.root, v) / "vocab" / f"{name}.parquet"
        if p.exists():
            return p
    return ds.root / "vocab" / f"{name}.parquet"


def remove_unpublished(root: Path) -> list[Path]:
    """Delete version directories that no published version lists (left by an interrupted append)."""
    listed = {version_dir(root, v.version).name for v in version_log(root).versions}
    gone = []
    for d in sorted((Path(root) / DIR).glob("*")) if (Path(root) / DIR).is_dir() else []:
        if d.name not in listed:
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
            gone.append(d)
    return gone
