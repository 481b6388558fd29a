"""Serving latency on CPU: per-event state update and scoring from the state vs. full recomputation.

For every model with per-event user state (``CTRModel.incremental``), one user, batch size 1 (a serving
request), untrained weights (latency does not depend on their values):

* ``update`` - folding one new event into the stored state (p50 / p99 over ``--events`` events);
* ``score`` - scoring ``--candidates`` candidates from the state (p50 / p99): must not grow with L;
* ``full`` - the full forward over a history of L events for the same candidates (what a model without
  state has to do per request), for L = 100, 1,000, 10,000.

SAM (target-attention, no state) is timed at L = 1,000 against its paper's production bound (< 30 ms per
request). Prints a markdown table and writes ``benchmarks/results/incremental.json``.

    python benchmarks/incremental.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lsdata import models
from lsdata.models.base import DataSpec

HERE = Path(__file__).resolve().parent
N_ITEMS, N_CATES = 1_000_000, 10_000


def batch_for(L: int, n_cand: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``n_cand`` rows sharing one user's full history of ``L`` events (the hpmn / mimn / shan keys)."""
    item = torch.from_numpy(rng.integers(1, N_ITEMS, L, dtype=np.int64).astype(np.int32))
    cate = torch.from_numpy(rng.integers(1, N_CATES, L, dtype=np.int64).astype(np.int32))
    beh = torch.ones(L, dtype=torch.int32)
    rep = lambda x: x[None, :].expand(n_cand, -1).contiguous()  # noqa: E731
    b = {"hist_item": rep(item), "hist_cate": rep(cate), "hist_behavior": rep(beh),
         "hist_len": torch.full((n_cand,), L, dtype=torch.int32),
         "neg_item": rep(item), "neg_cate": rep(cate),
         "item": torch.from_numpy(rng.integers(1, N_ITEMS, n_cand).astype(np.int32)),
         "cate": torch.from_numpy(rng.integers(1, N_CATES, n_cand).astype(np.int32)),
         "user": torch.ones(n_cand, dtype=torch.int32), "label": torch.zeros(n_cand),
         "side_user": torch.zeros(n_cand, 36, dtype=torch.int32), "side_behavior": torch.zeros(n_cand, 36, dtype=torch.int32),
         "side_len": torch.zeros(n_cand, dtype=torch.int32)}
    short = min(44, L)
    for part, n in (("long", L - short), ("short", short)):
        sl = slice(0, n) if part == "long" else slice(L - n, L)
        b[f"{part}_item"], b[f"{part}_cate"], b[f"{part}_behavior"] = (rep(item[sl]), rep(cate[sl]), rep(beh[sl]))
        b[f"{part}_len"] = torch.full((n_cand,), n, dtype=torch.int32)
    for part, width in (("side_long", 28), ("side_short", 8)):
        b[f"{part}_user"] = torch.zeros(n_cand, width, dtype=torch.int32)
        b[f"{part}_behavior"] = torch.zeros(n_cand, width, dtype=torch.int32)
        b[f"{part}_len"] = torch.zeros(n_cand, dtype=torch.int32)
    return b


def timed(fn, repeats: int) -> np.ndarray:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return np.array(out)


def pct(ms: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def build(name: str, L: int):
    cls = models.get(name)
    spec = DataSpec("taobao", cls.layout, 1_000_000, N_ITEMS, N_CATES, {"hist": L, "side": 36})
    torch.manual_seed(0)
    m = cls(spec, cls.make_params("taobao"))
    return m.eval()


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=1)
    ap.add_argument("--full-repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    names = [n for n in (a.models.split(",") if a.models else models.names())]
    rows = []
    for name in names:
        cls = models.get(name)
        if not cls.incremental and name != "sam":
            continue
        for L in a.lengths:
            m = build(name, L)
            b = batch_for(L, a.candidates, rng)
            full = timed(lambda: m(b), a.full_repeats)
            row = {"model": name, "L": L, "candidates": a.candidates, "full": pct(full)}
            if cls.incremental:
                state = m.init_state(1)
                for t in range(L):  # build the state of a user with L events (not timed)
                    state = m.update(state, {k: b[f"hist_{k}"][:1, t] for k in ("item", "cate", "behavior")})
                ev = {k: b[f"hist_{k}"][:1, -1] for k in ("item", "cate", "behavior")}
                upd = timed(lambda: m.update(state, ev), a.events)
                st_c = _expand(state, a.candidates)
                cand = {"item": b["item"], "cate": b["cate"]}
                sc = timed(lambda: m.score(st_c, cand), a.events)
                row |= {"update": pct(upd), "score": pct(sc)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| model | L | update p50 / p99 ms | score p50 / p99 ms | full forward p50 ms | full / score |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        f = r["full"]["p50_ms"]
        if "update" in r:
            u, s = r["update"], r["score"]
            print(f"| {r['model']} | {r['L']:,} | {u['p50_ms']:.3f} / {u['p99_ms']:.3f} | {s['p50_ms']:.3f} / {s['p99_ms']:.3f} | "
                  f"{f:.2f} | {f / s['p50_ms']:,.0f}x |")
        else:
            print(f"| {r['model']} | {r['L']:,} | - | - | {f:.2f} | - |")
    out = HERE / "results" / "incremental.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"machine": platform.node(), "threads": a.threads, "candidates": a.candidates, "torch": torch.__version__}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


def _expand(state, n: int):
    """A batch-1 state repeated for ``n`` candidates (tensors, tuples/lists/dicts of tensors)."""
    if isinstance(state, torch.Tensor):
        return state.expand(n, *state.shape[1:]) if state.shape and state.shape[0] == 1 else state
    if isinstance(state, dict):
        return {k: _expand(v, n) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        parts = [_expand(v, n) for v in state]
        return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)
    return state


if __name__ == "__main__":
    main()
