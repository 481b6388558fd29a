"""Loader throughput: samples/s of the data path alone (no model), batch 256, Taobao and XLong shapes.

Builds (once, under --work) a Taobao-format dataset with the ``hpmn`` layout (L = 300) and an XLong-format
dataset (L = 1000) with the real pipeline, then times, for each: the map-style ``LayoutDataset`` through a
``DataLoader`` with the seeded ``EpochSampler`` (0 and 2 workers), and the ``StreamingLayoutDataset``
(0 and 2 workers). Each configuration runs ``--repeats`` full passes over the training split; the table
shows the median samples/s. Results go to ``benchmarks/results/loader.json``.

    python benchmarks/loader.py --taobao-rows 3000000 --xlong-users 20000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lsdata.loader import EpochSampler, LayoutDataset, StreamingLayoutDataset, collate, layout_file

HERE = Path(__file__).resolve().parent


def sh(*args: str) -> None:
    subprocess.run(["lsdata", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build(work: Path, taobao_rows: int, xlong_users: int) -> dict[str, Path]:
    tb = work / f"taobao_{taobao_rows}"
    if not (tb / "layouts" / "hpmn" / "report.json").exists():
        csv = work / f"taobao_{taobao_rows}.csv"
        sh("generate", "taobao", str(csv), "--rows", str(taobao_rows), "--seed", "3")
        sh("ingest", "taobao", str(csv), "--out", str(tb))
        sh("split", str(tb))
        sh("layout", str(tb), "hpmn")
    xl = work / f"xlong_{xlong_users}"
    if not (xl / "layouts" / "hpmn" / "report.json").exists():
        raw = work / f"xlong_raw_{xlong_users}"
        sh("generate", "xlong", str(raw), "--users", str(xlong_users), "--seed", "3")
        sh("ingest", "xlong", *[str(p) for p in sorted(raw.glob("*.txt"))], "--out", str(xl))
        sh("layout", str(xl), "hpmn")
    return {"taobao L=300": tb, "xlong L=1000": xl}


def one_pass(loader) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for b in loader:
        n += b["label"].shape[0]
    return n, time.perf_counter() - t0


def measure(root: Path, workers: int, streaming: bool, batch: int, repeats: int) -> dict:
    path = layout_file(root, "hpmn", "train")
    t0 = time.perf_counter()
    if streaming:
        ds = StreamingLayoutDataset(path, "hpmn", batch, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
        setup = time.perf_counter() - t0
    else:
        ds = LayoutDataset(path, "hpmn")
        setup = time.perf_counter() - t0
        sampler = EpochSampler(len(ds), batch, True, 0)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                             persistent_workers=workers > 0)
    rates = []
    for epoch in range(repeats):
        (ds if streaming else sampler).set_epoch(epoch)
        n, secs = one_pass(loader)
        rates.append(n / secs)
    return {"samples": n, "load_seconds": setup, "samples_per_s": statistics.median(rates), "runs": rates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lsdata-bench-loader"))
    ap.add_argument("--taobao-rows", type=int, default=3_000_000)
    ap.add_argument("--xlong-users", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    data = build(a.work, a.taobao_rows, a.xlong_users)
    rows = []
    for shape, root in data.items():
        for streaming in (False, True):
            for workers in (0, 2):
                r = measure(root, workers, streaming, a.batch, a.repeats)
                rows.append({"shape": shape, "dataset": "streaming" if streaming else "map-style", "workers": workers, **r})
                print(f"{shape:14} {rows[-1]['dataset']:10} workers {workers}: {r['samples_per_s']:>12,.0f} samples/s "
                      f"({r['samples']:,} samples/pass, load {r['load_seconds']:.1f}s)", flush=True)
    print("\n| shape | dataset | workers | samples/pass | median samples/s |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['dataset']} | {r['workers']} | {r['samples']:,} | {r['samples_per_s']:,.0f} |")
    out = HERE / "results" / "loader.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"machine": platform.node(), "cpus": torch.get_num_threads(), "python": sys.version.split()[0],
            "torch": torch.__version__, "batch": a.batch, "repeats": a.repeats}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
