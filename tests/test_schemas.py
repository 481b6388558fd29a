"""schemas/ is generated from lsdata.schemas and matches what the writers produce."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lsdata import schemas
from lsdata.dataset import open_dataset
from lsdata.defaults import SplitOptions
from lsdata.ingest import ingest

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


def test_committed_json_schemas_match_the_pydantic_models():
    generated = schemas.json_schemas()
    on_disk = {p.name.removesuffix(".schema.json"): json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.json")}
    assert set(on_disk) == set(generated), "run `python -m lsdata.schemas --write`"
    for name, s in generated.items():
        assert on_disk[name] == s, f"schemas/{name}.schema.json drifted; run `python -m lsdata.schemas --write`"


def test_every_column_of_every_table_names_its_arrow_type():
    for name, s in schemas.json_schemas().items():
        if name in schemas.TABLES:
            for col, prop in s["properties"].items():
                assert "x-arrow" in prop and prop.get("description"), f"{name}.{col}"


def test_written_parquet_files_have_exactly_the_declared_arrow_schemas(taobao_slice, tmp_path):
    from lsdata import layouts, samples

    ingest("taobao", [str(taobao_slice)], tmp_path / "d")
    ds = open_dataset(tmp_path / "d")
    samples.build(ds, SplitOptions())
    layouts.build(ds, list(schemas.LAYOUT_ROWS))
    checks = {
        "events/part-00000.parquet": schemas.arrow_schema(schemas.EventRow),
        "sequences/part-00000.parquet": schemas.arrow_schema(schemas.SequenceRow),
        "item_events/part-00000.parquet": schemas.arrow_schema(schemas.ItemEventRow),
        "quarantine.parquet": schemas.arrow_schema(schemas.QuarantineRow),
        "split/samples.parquet": schemas.arrow_schema(schemas.SampleRow),
    }
    import pyarrow as pa

    checks["vocab/item.parquet"] = schemas.arrow_schema(schemas.ItemVocabRow, raw_type=pa.int64())
    checks["vocab/user.parquet"] = schemas.arrow_schema(schemas.VocabRow, raw_type=pa.int64())
    for name, row in schemas.LAYOUT_ROWS.items():
        widths = json.loads((ds.layout_dir(name) / "report.json").read_text())["widths"]
        checks[f"layouts/{name}/train.parquet"] = schemas.arrow_schema(row, widths)
    for rel, expect in checks.items():
        got = pq.read_schema(tmp_path / "d" / rel).remove_metadata()
        assert got.equals(expect), f"{rel}: {got} != {expect}"


@pytest.mark.parametrize("doc", ["manifest", "split_report", "layout_report"])
def test_documents_have_schemas(doc):
    assert schemas.json_schemas()[doc]["type"] == "object"
