"""A dataset directory: where each stage's files live, and whether a stage finished.

::

    DIR/manifest.json            ingest finished (written last)
    DIR/events/part-*.parquet    flat events, sorted by (user, ts, src_file, src_row) per part
    DIR/sequences/part-*.parquet one row per user, list columns, same user partitioning
    DIR/item_events/part-*.parquet  (item, ts, user, behavior), sorted by item then time
    DIR/vocab/{user,item,cate}.parquet
    DIR/quarantine.parquet
    DIR/split/samples.parquet, DIR/split/report.json     (report written last)
    DIR/layouts/NAME/{train,valid,test}.parquet, report.json
    DIR/versions.json, DIR/versions/NNNNN/...   versions appended by ``lsdata append`` (lsdata/versions.py)

A Dataset is opened **as of a version** (default: the latest); :meth:`Dataset.read` and
:meth:`Dataset.vocab_path` merge the appended versions' deltas into the base files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from lsdata.io import InputError, read_json
from lsdata.schemas import Manifest, SplitReport


@dataclass
class Dataset:
    root: Path
    manifest: Manifest
    version: int = 1  #: 1 = the ingest; 2, 3, ... = appended versions (lsdata/versions.py)

    @property
    def name(self) -> str:
        return self.manifest.dataset

    def parts(self, table: str) -> list[Path]:
        return sorted((self.root / table).glob("part-*.parquet"))

    @property
    def samples_path(self) -> Path:
        return self.root / "split" / "samples.parquet"

    def split_report(self) -> SplitReport:
        p = self.root / "split" / "report.json"
        if not p.exists():
            raise InputError(f"{self.root}: no finished split (run `lsdata split {self.root}` first)")
        return SplitReport.model_validate(read_json(p))

    def layout_dir(self, name: str) -> Path:
        return self.root / "layouts" / name

    def read(self, table: str, part: Path, columns: list[str] | None = None, users: pl.Series | None = None,
             items: pl.Series | None = None) -> pl.DataFrame:
        """Partition ``part`` (a path from :meth:`parts`) of events/sequences/item_events as of :attr:`version`
        (``users`` / ``items``: only those users' / items' rows, a prefiltered read)."""
        from lsdata import versions

        return versions.read_part(self, table, part, columns, users, items)

    def vocab_path(self, name: str) -> Path:
        """``vocab/{user,item,cate}.parquet`` as of :attr:`version`."""
        from lsdata import versions

        return versions.vocab_path(self, name)


def open_dataset(root: str | Path, version: int | None = None) -> Dataset:
    """Open a finished dataset directory as of ``version`` (None = the latest); a one-line InputError if it
    is missing or incomplete, or has no such version."""
    root = Path(root)
    m = root / "manifest.json"
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset directory")
    if not m.exists():
        raise InputError(f"{root}: no manifest.json - not an lsdata dataset, or its ingest did not finish")
    from lsdata import versions

    return Dataset(root, Manifest.model_validate(read_json(m)), versions.check_version(root, version))
