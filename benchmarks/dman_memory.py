"""How well a trained DMAN's memory stands in for what it compresses (the fidelity L_rec trains for).

For each run directory: load its checkpoint (``lsdata.train.load_run``), encode the first ``--windows`` validation
histories in eval mode with every layer's ``report`` switched on (``lsdata.models.dman.DMANLayer.memories``) and
print, per layer: the mean norm of the short-term states H and of the written memory slots, and the relative
reconstruction error Σ‖Attn(Q, M_new) − Attn(Q, [M_old; H])‖² / Σ‖Attn(Q, [M_old; H])‖², next to the same error had
the memory been left as it was (M_old). 1.0 = the memory's attention output carries nothing of the target's.

    python benchmarks/dman_memory.py RUN_DIR [RUN_DIR ...] --json benchmarks/results/dman_memory.json
    # a run trained before the rescaling existed (its config has no rescale_memory): rebuild it as trained
    python benchmarks/dman_memory.py OLD_RUN --rescale-memory false
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from lsdata.train import load_run


def measure(run_dir: str, windows: int, rescale: bool | None) -> list[dict]:
    run = load_run(run_dir, device="cpu")
    model = run.model
    if model.name != "dman":
        raise SystemExit(f"{run_dir}: a {model.name} run, not dman")
    ds = run.eval_data("valid")
    batch = {k: torch.as_tensor(v) for k, v in ds.__getitems__(np.arange(min(len(ds), windows))).items()}
    model.eval()
    for layer in model.layers:
        layer.report = {}
        if rescale is not None:
            layer.rescale = rescale
    with torch.no_grad():
        model.encode_seq(batch)
    rows = []
    for i, layer in enumerate(model.layers, 1):
        r = layer.report
        rows.append({"run": run_dir, "layer": i, "windows": int(batch["hist_item"].shape[0]), "rescale": layer.rescale,
                     "h_norm": r["h_norm"] / max(r["h_count"], 1), "mem_norm": r["mem_norm"] / max(r["mem_count"], 1),
                     "rel_err": r["err"] / r["target"], "rel_err_keep": r["err_keep"] / r["target"],
                     "positions": int(r["count"])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="lsdata train dman output directories")
    ap.add_argument("--windows", type=int, default=256, help="validation histories encoded (the first N)")
    ap.add_argument("--rescale-memory", choices=["true", "false"], default=None,
                    help="override the model's rescale_memory (for runs whose config predates it)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rescale = None if a.rescale_memory is None else a.rescale_memory == "true"
    rows = [row for run in a.runs for row in measure(run, a.windows, rescale)]
    print("| run | layer | rescale | mean ‖H‖ | mean ‖M‖ | relative error, new memory | "
          "relative error, old memory kept |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['layer']} | {r['rescale']} | {r['h_norm']:.2f} | {r['mem_norm']:.2f} | "
              f"{r['rel_err']:.3f} | {r['rel_err_keep']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                       "windows": a.windows, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
