"""Shared fixtures: where the real data slices are, and a tiny Taobao-format dataset builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One intra-op thread: the tests' tensors are small, and several pytest/DataLoader processes share 2 cores.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"
REALDATA = SHARED / "realdata"
TAOBAO_SLICE = REALDATA / "taobao_fattydelivery" / "UserBehavior.csv"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data slice not found: {path} (CI checks out ../shared beside the repo)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _catalog(tmp_path_factory):
    """CLI stages register datasets in the catalog: point it at a temporary file, never ~/.lsdata."""
    import os

    os.environ["LSDATA_CATALOG"] = str(tmp_path_factory.mktemp("catalog") / "catalog.duckdb")


@pytest.fixture
def taobao_slice() -> Path:
    return need(TAOBAO_SLICE)


def write_taobao(path: Path, rows) -> Path:
    """rows: iterable of (user, item, cate, behavior, ts) -> a header-less UserBehavior.csv."""
    path.write_text("".join(f"{u},{i},{c},{b},{t}\n" for u, i, c, b, t in rows))
    return path


@pytest.fixture(scope="session")
def taobao_layouts(tmp_path_factory) -> Path:
    """The real Taobao slice ingested, split and laid out in every layout (built once per session)."""
    from lsdata import ingest, layouts, samples
    from lsdata.dataset import open_dataset
    from lsdata.defaults import LAYOUTS, SplitOptions

    src = need(TAOBAO_SLICE)
    root = tmp_path_factory.mktemp("taobao_layouts") / "taobao"
    ingest.ingest("taobao", [str(src)], root)
    ds = open_dataset(root)
    samples.build(ds, SplitOptions())
    layouts.build(ds, list(LAYOUTS))
    return root
