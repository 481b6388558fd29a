"""Offline references for online/offline parity checks (tests and ``benchmarks/serve_load.py``).

* :func:`forward_logits` - the training path: one batched ``forward`` over each user's whole stored sequence.
* :func:`fold_logits` - the model's own incremental path offline, one user at a time (``init_state(1)``,
  ``update`` over the whole sequence, ``score``).

HPMN's served scores equal both to ~1e-7. MIMN's float32 result depends on how it is batched (one user
alone vs 43 together, or forward vs the update loop, differ by up to ~0.03 in the logit on the Taobao
slice: kernels round differently per matrix shape and the NTM recursion with its top-1 MIU channel choice
amplifies 1e-8 into 1e-2), so its served scores are compared with :func:`fold_logits` with every fold
done one user at a time (``--warmup-batch 1``, one user per ``/events`` request).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from lsdata.serve.engine import Engine

HIST = ("item", "cate", "behavior")


def sequences(engine: Engine, users: list[int] | None = None) -> pl.DataFrame:
    """The stored sequences (one row per user, sorted by user) of the engine's dataset."""
    ds = engine.dataset
    df = pl.concat([ds.read("sequences", p) for p in ds.parts("sequences")]).sort("user")
    return df if users is None else df.filter(pl.col("user").is_in(users))


def later_events(engine: Engine, t: int) -> list[dict]:
    """Every stored event at or after ``t`` as API events (raw ids), in time order, each user's order kept."""
    flat = sequences(engine).explode(["item", "cate", "behavior", "ts"]).filter(pl.col("ts") >= t)
    flat = flat.with_row_index("k").sort(["ts", "k"])
    return [{"user": engine.users.raw(u), "item": engine.items.raw(i), "behavior": int(b), "ts": int(ts)}
            for u, i, b, ts in flat.select("user", "item", "behavior", "ts").iter_rows()]


def median_time(engine: Engine) -> int:
    return int(np.median(np.concatenate(sequences(engine)["ts"].to_list())))


def _cands(engine: Engine, cands: np.ndarray) -> dict[str, torch.Tensor]:
    return {"item": torch.from_numpy(cands.astype(np.int64)), "cate": torch.from_numpy(engine.items.extra[cands])}


@torch.no_grad()
def forward_logits(engine: Engine, users: list[int], cands: np.ndarray) -> np.ndarray:
    """Batched forward over the users' whole sequences (front-padded); ``cands[k]`` is user ``k``'s candidate."""
    seqs = sequences(engine, users)
    assert seqs["user"].to_list() == sorted(users) == list(users), "users must be sorted, each with a sequence"
    lens = seqs["length"].to_numpy()
    width = int(lens.max())
    batch = {}
    for col in HIST:
        mat = np.zeros((len(lens), width), np.int64)
        mat[np.arange(width)[None, :] >= width - lens[:, None]] = np.concatenate(seqs[col].to_list())
        batch[f"hist_{col}"] = torch.from_numpy(mat)
    batch |= {"hist_len": torch.from_numpy(lens)} | _cands(engine, cands)
    return engine.model(batch)[0].numpy()


@torch.no_grad()
def fold_logits(engine: Engine, users: list[int], cands: np.ndarray) -> np.ndarray:
    """update/score one user at a time over the user's whole sequence."""
    rows = {r["user"]: r for r in sequences(engine, users).iter_rows(named=True)}
    out = []
    for u, i in zip(users, cands):
        ev = [torch.tensor([rows[u][k]]) for k in HIST]
        state = engine.fold_matrix(engine.model.init_state(1), *ev)
        out.append(engine.model.score(state, _cands(engine, np.array([i])))[0].item())
    return np.array(out)
