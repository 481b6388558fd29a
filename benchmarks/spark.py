"""Spark engine vs the single-machine engine on generated Taobao data (issue #7; not a test).

For each size: generate (if missing) -> for each engine, each stage in its own ``lsdata`` process:
``ingest`` -> ``split`` -> ``layout plain hpmn shan``; then checks that the two datasets' files are identical.
Spark runs in ``local[N]`` (``--master``, default local[2]) with a 4 GiB driver (executor inside it in local mode).

Memory is reported two ways: ``peak_rss_gib``, the largest single process (``wait4``, as benchmarks/pipeline.py),
and ``peak_tree_rss_gib``, the largest sum over the whole process tree sampled every 0.2 s - for Spark that is
the JVM (driver + executor) plus its Python workers, for the single-machine engine one process.

    python benchmarks/spark.py --rows 10000000 --work /tmp/lsbench            # ~4 min on 2 cores (measured)
    python benchmarks/spark.py --rows 100000000 --work /tmp/lsbench           # 3.2 GiB input; not run yet

The single-process RSS of a Spark run misses the JVM (the CLI does not reap it): read the tree figure for Spark.

Results: ``benchmarks/results/spark.json`` (one entry per size, merged) and a table on stdout.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import sys
import threading
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import HERE, run  # noqa: E402  (same process runner and RSS accounting as the pipeline benchmark)

STAGES = ("ingest", "split", "layout")


def _tree_rss(root: int) -> int:
    """Bytes resident in ``root``'s descendants (not ``root`` itself), from /proc."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            kids.setdefault(int(st[1]), []).append(int(d))
            rss[int(d)] = int(st[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, list(kids.get(root, []))
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += kids.get(p, [])
    return total


def run_tree(cmd: list[str]) -> dict:
    """:func:`pipeline.run` plus the peak summed RSS of the whole process tree."""
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], _tree_rss(os.getpid()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        r = run(cmd)
    finally:
        stop.set()
        t.join()
    r["peak_tree_rss_gib"] = round(peak[0] / (1 << 30), 3)
    return r


def stage_cmds(data: Path, src: Path, engine: list[str]) -> dict[str, list[str]]:
    return {
        "ingest": ["ingest", "taobao", str(src), "--out", str(data), *engine],
        "split": ["split", str(data), *engine],
        "layout": ["layout", str(data), "plain", "hpmn", "shan", *engine],
    }


def same_files(a: Path, b: Path) -> tuple[int, list[str]]:
    files = sorted(str(f.relative_to(a)) for f in a.rglob("*") if f.is_file())
    other = sorted(str(f.relative_to(b)) for f in b.rglob("*") if f.is_file())
    differ = sorted(set(files) ^ set(other)) + [f for f in files if f in other and not filecmp.cmp(a / f, b / f, shallow=False)]
    return len(files), differ


def bench(rows: int, work: Path, master: str, keep: bool) -> dict:
    lsdata = [sys.executable, "-m", "lsdata.cli"]
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"taobao_{rows}.csv"
    res: dict = {"rows": rows, "spark_master": master}
    if not src.exists():
        res["generate"] = run(lsdata + ["generate", "taobao", str(src), "--rows", str(rows), "--seed", "7"])
    res["input_gib"] = round(src.stat().st_size / (1 << 30), 3)
    engines = {"single": [], "spark": ["--engine", "spark", "--spark-master", master]}
    for name, flags in engines.items():
        data = work / f"ds_{name}_{rows}"
        shutil.rmtree(data, ignore_errors=True)
        r = {s: run_tree(lsdata + c) for s, c in stage_cmds(data, src, flags).items()}
        r["wall_s"] = round(sum(r[s]["wall_s"] for s in STAGES), 2)
        r["peak_rss_gib"] = max(r[s]["peak_rss_gib"] for s in STAGES)
        r["peak_tree_rss_gib"] = max(r[s]["peak_tree_rss_gib"] for s in STAGES)
        res[name] = r
    n, differ = same_files(work / f"ds_single_{rows}", work / f"ds_spark_{rows}")
    res["files_compared"], res["files_differ"] = n, differ
    res["spark_over_single"] = round(res["spark"]["wall_s"] / res["single"]["wall_s"], 2)
    if not keep:
        for name in engines:
            shutil.rmtree(work / f"ds_{name}_{rows}", ignore_errors=True)
    return res


def table(results: list[dict]) -> str:
    head = ("| rows | engine | ingest s | split s | layouts s | total s | peak RSS GiB (largest process / whole tree) "
            "| identical files |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        for e in ("single", "spark"):
            x = r[e]
            same = f"{r['files_compared'] - len(r['files_differ'])}/{r['files_compared']}"
            lines.append(f"| {r['rows']:,} | {e if e == 'single' else 'spark ' + r['spark_master']} | {x['ingest']['wall_s']} | "
                         f"{x['split']['wall_s']} | {x['layout']['wall_s']} | {x['wall_s']} | {x['peak_rss_gib']} / "
                         f"{x['peak_tree_rss_gib']} | {same} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000])
    ap.add_argument("--work", type=Path, default=HERE / "work", help="scratch directory for inputs and outputs")
    ap.add_argument("--master", default="local[2]", help="Spark master for the spark engine")
    ap.add_argument("--keep", action="store_true", help="keep the built datasets")
    args = ap.parse_args()
    out = HERE / "results" / "spark.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    results = []
    for rows in args.rows:
        r = bench(rows, args.work, args.master, args.keep)
        r.update(date=str(date.today()), machine=f"{platform.node()} {os.cpu_count()} cores, {platform.machine()}",
                 python=platform.python_version())
        saved[str(rows)] = r
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=2) + "\n")
        results.append(r)
        print(table([r]), flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
