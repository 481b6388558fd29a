"""The command line end to end: the documented commands work, errors are one line, runs are reproducible."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lsdata.cli import app

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def ok(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ingest_split_layout_stats_validate_on_the_real_slice(taobao_slice, tmp_path):
    d = tmp_path / "taobao"
    r = ok("ingest", "taobao", taobao_slice, "--out", d)
    assert "4,321 rows read = 4,320 kept + 0 quarantined + 1 dropped" in r.output
    r = ok("split", d, "--cut-time", "2017-12-02")
    assert "cut 1512172800" in r.output
    ok("layout", d, "hpmn", "shan")
    assert (d / "layouts" / "hpmn" / "test.parquet").exists() and (d / "layouts" / "shan" / "report.json").exists()
    r = ok("stats", d, "--plot", tmp_path / "len.png")
    assert "43 users" in r.output and (tmp_path / "len.png").stat().st_size > 1000
    ok("validate", d)


def test_same_inputs_and_seed_give_byte_identical_datasets(tmp_path):
    src = SAMPLE / "taobao" / "UserBehavior_synthetic.csv"
    digests = []
    for k in ("a", "b"):
        d = tmp_path / k
        ok("ingest", "taobao", src, "--out", d, "--partitions", "3")
        ok("split", d, "--seed", "7")
        ok("layout", d, "plain", "hpmn", "shan", "mimn")
        digests.append(tree_digest(d))
    assert digests[0] == digests[1]
    assert any(k.startswith("layouts/mimn") for k in digests[0])


def test_bad_input_is_a_one_line_error_with_exit_status_2(tmp_path):
    for args in (
        ["ingest", "taobao", tmp_path / "missing.csv", "--out", tmp_path / "d"],
        ["ingest", "amazon", SAMPLE / "taobao" / "UserBehavior_synthetic.csv", "--out", tmp_path / "d"],
        ["split", tmp_path / "not-a-dataset"],
    ):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and r.output.strip().startswith("error:")
        assert len(r.output.strip().splitlines()) == 1


def test_sample_data_quarantines_its_planted_bad_lines(tmp_path):
    d = tmp_path / "d"
    r = ok("ingest", "taobao", SAMPLE / "taobao" / "UserBehavior_synthetic.csv", "--out", d)
    import polars as pl

    q = pl.read_parquet(d / "quarantine.parquet")
    assert q.height >= 1 and f"{q.height} quarantined" in r.output.replace(",", "")


def test_every_option_has_help_text():
    import typer.main

    cmd = typer.main.get_command(app)
    for name, sub in cmd.commands.items():
        assert sub.help, name
        for p in sub.params:
            if p.name != "help":
                assert getattr(p, "help", None), f"{name} --{p.name} has no help"


@pytest.mark.slow
def test_demo_runs_on_the_bundled_sample_data(tmp_path):
    r = ok("demo", "--out", tmp_path / "demo")
    lines = [ln for ln in r.output.splitlines() if ln.endswith("| valid")]
    assert [ln.split(":")[0] for ln in lines] == ["taobao", "amazon", "xlong"]
    assert all(ln.endswith("| valid") and "plain,hpmn,shan,mimn" in ln for ln in lines)
