"""Whole-pipeline benchmark on generated Taobao-format data (not a test; prints a table, writes results).

For each size it runs, each in its own process so that peak RSS is that stage's alone:

    generate (if the file is missing) -> lsdata ingest -> lsdata split -> lsdata layout plain hpmn shan

and, in the same run, a reference single polars streaming query that only does
read -> remap (dense ids) -> sort -> group-to-lists -> Parquet. Target (issue #2): at 100M rows the whole
pipeline within 2x that query's wall time, peak RSS <= 8 GiB.

    python benchmarks/pipeline.py --rows 1000000 10000000 100000000 --work /tmp/lsbench

Results: ``benchmarks/results/pipeline-<rows>.json`` and a table printed on stdout (copy it to RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent

BASELINE = r"""
import sys, polars as pl
src, dst = sys.argv[1], sys.argv[2]
lf = pl.scan_csv(src, has_header=False, new_columns=["user", "item", "cate", "behavior", "ts"],
                 schema_overrides={"behavior": pl.Utf8})
(lf.with_columns(pl.col("user").rank("dense").cast(pl.Int32), pl.col("item").rank("dense").cast(pl.Int32),
                 pl.col("cate").rank("dense").cast(pl.Int32))
   .sort("user", "ts", maintain_order=True)
   .group_by("user", maintain_order=True).agg("item", "cate", "behavior", "ts")
   .sink_parquet(dst, engine="streaming"))
"""


def run(cmd: list[str], env=None) -> dict:
    """Run a command; return wall seconds and the peak RSS (GiB) of its process tree's largest process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out = p.stdout.read() if p.stdout else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{out}")
    return {"wall_s": round(wall, 2), "peak_rss_gib": round(ru.ru_maxrss / (1 << 20), 3), "output": out.strip()[-400:]}


def bench(rows: int, work: Path, lsdata: list[str], keep: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"taobao_{rows}.csv"
    res: dict = {"rows": rows}
    if not src.exists():
        res["generate"] = run(lsdata + ["generate", "taobao", str(src), "--rows", str(rows), "--seed", "7"])
    res["input_gib"] = round(src.stat().st_size / (1 << 30), 3)
    data = work / f"ds_{rows}"
    shutil.rmtree(data, ignore_errors=True)
    res["ingest"] = run(lsdata + ["ingest", "taobao", str(src), "--out", str(data)])
    res["split"] = run(lsdata + ["split", str(data)])
    res["layout"] = run(lsdata + ["layout", str(data), "plain", "hpmn", "shan"])
    res["pipeline_wall_s"] = round(sum(res[k]["wall_s"] for k in ("ingest", "split", "layout")), 2)
    res["pipeline_peak_rss_gib"] = max(res[k]["peak_rss_gib"] for k in ("ingest", "split", "layout"))
    dst = work / f"baseline_{rows}.parquet"
    res["baseline_query"] = run([sys.executable, "-c", BASELINE, str(src), str(dst)])
    res["ratio_pipeline_over_query"] = round(res["pipeline_wall_s"] / res["baseline_query"]["wall_s"], 2)
    res["dataset_gib"] = round(sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / (1 << 30), 3)
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
        dst.unlink(missing_ok=True)
    return res


def table(results: list[dict]) -> str:
    head = "| rows | input GiB | ingest s (GiB) | split s (GiB) | layouts plain+hpmn+shan s (GiB) | pipeline s | peak RSS GiB | polars query s (GiB) | pipeline / query |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        f = lambda k: f"{r[k]['wall_s']} ({r[k]['peak_rss_gib']})"  # noqa: E731
        lines.append(
            f"| {r['rows']:,} | {r['input_gib']} | {f('ingest')} | {f('split')} | {f('layout')} | {r['pipeline_wall_s']} | "
            f"{r['pipeline_peak_rss_gib']} | {f('baseline_query')} | {r['ratio_pipeline_over_query']}x |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--work", type=Path, default=HERE / "work", help="scratch directory for inputs and outputs")
    ap.add_argument("--keep", action="store_true", help="keep the built datasets")
    args = ap.parse_args()
    lsdata = [sys.executable, "-m", "lsdata.cli"]
    results = []
    for rows in args.rows:
        r = bench(rows, args.work, lsdata, args.keep)
        r.update(date=str(date.today()), machine=f"{platform.node()} {os.cpu_count()} cores, {platform.machine()}",
                 python=platform.python_version())
        out = HERE / "results" / f"pipeline-{rows}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=2) + "\n")
        results.append(r)
        print(table([r]).splitlines()[-1], flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
