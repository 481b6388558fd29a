"""Synthetic XLong files in the exact HPMN ``data/xlong/`` format (protocol.md §1.3). Not real XLong data.

Writes, into ``out_dir``:

* ``synthetic_train_corpus_total_dual.txt`` and ``synthetic_test_corpus_total_dual.txt``: one user per line,
  7 tab-separated fields ``index, uid, history (hist_len comma ids), pos item, neg item,
  pos side (side_len comma ids), neg side``; raw ids are 0-based (items ``0..n_items-1``, uids
  ``0..n_users-1``); about 20 % of the users are test users, each user on exactly one line.
* ``synthetic_graph_emb.txt``: ``n_items`` rows of ``emb_dim`` space-separated floats (row r = item r).

Each file gets a ``FILE.synthetic.json`` sidecar, so ingest marks the dataset ``synthetic``.

Learnable signal: items belong to latent clusters and every user prefers one cluster. 50 % of a user's
history and 60 % of positive targets come from that cluster, the rest (and every negative target) are
uniform. An item's item-side list holds uids, 50 % of them users who prefer the item's cluster (the same
rule for positive and negative targets, so the label is not written into the format). graph_emb rows are
the cluster centroid plus noise. A model (or the cosine between the target's embedding and the mean
history embedding) therefore beats AUC 0.5.

Vectorised with numpy/polars; deterministic per ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from lsdata.synth import write_sidecar

HIST_AFFINITY = 0.5  # share of history items drawn from the user's cluster
POS_AFFINITY = 0.6  # share of positive targets drawn from the user's cluster
SIDE_AFFINITY = 0.5  # share of item-side ids that are users of the item's cluster
TEST_SHARE = 0.2
NOTE = "synthetic data in the XLong format; not real XLong data"


class _Groups:
    """Uniform draws from the members of a group (cluster), vectorised over any shape of group ids."""

    def __init__(self, group_of: np.ndarray, n_groups: int):
        self.order = np.argsort(group_of, kind="stable")
        self.count = np.bincount(group_of, minlength=n_groups)
        self.start = np.r_[0, np.cumsum(self.count)[:-1]]

    def draw(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        """A member of each group in ``groups`` (-1 where the group is empty)."""
        n = self.count[groups]
        k = (rng.random(groups.shape) * np.maximum(n, 1)).astype(np.int64)
        return np.where(n > 0, self.order[np.minimum(self.start[groups] + k, self.order.size - 1)], -1)


def _mix(rng: np.random.Generator, preferred: np.ndarray, share: float, n: int) -> np.ndarray:
    """``preferred`` with probability ``share`` (where it is >= 0), else uniform on ``0..n-1``."""
    uniform = rng.integers(0, n, size=preferred.shape)
    return np.where((rng.random(preferred.shape) < share) & (preferred >= 0), preferred, uniform)


def _joined(matrix: np.ndarray) -> pl.Series:
    """Each row of an int matrix as one comma-joined string ('' for zero columns)."""
    if matrix.shape[1] == 0:
        return pl.Series([""] * matrix.shape[0], dtype=pl.Utf8)
    return pl.Series(np.ascontiguousarray(matrix, dtype=np.int64)).cast(pl.Array(pl.Utf8, matrix.shape[1])).arr.join(",")


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def generate(
    out_dir: str | Path,
    n_users: int = 200,
    hist_len: int = 1000,
    side_len: int = 184,
    n_items: int = 5000,
    emb_dim: int = 16,
    seed: int = 0,
) -> list[Path]:
    """Write the three XLong files (and sidecars) into ``out_dir``; returns [train, test, graph_emb]."""
    if n_users < 2 or hist_len < 1 or side_len < 0 or n_items < 2 or emb_dim < 1:
        raise ValueError("need n_users >= 2, hist_len >= 1, side_len >= 0, n_items >= 2, emb_dim >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_clusters = max(2, min(50, n_items // 100))
    item_cluster = rng.permutation(np.arange(n_items) % n_clusters)
    user_cluster = rng.integers(0, n_clusters, size=n_users)
    items = _Groups(item_cluster, n_clusters)
    users = _Groups(user_cluster, n_clusters)

    uc = user_cluster[:, None]
    hist = _mix(rng, items.draw(rng, np.broadcast_to(uc, (n_users, hist_len))), HIST_AFFINITY, n_items)
    pos = _mix(rng, items.draw(rng, user_cluster), POS_AFFINITY, n_items)
    neg = rng.integers(0, n_items - 1, size=n_users)
    neg = neg + (neg >= pos)  # uniform over items other than the positive

    def side(targets: np.ndarray) -> np.ndarray:
        groups = np.broadcast_to(item_cluster[targets][:, None], (targets.size, side_len))
        return _mix(rng, users.draw(rng, groups), SIDE_AFFINITY, n_users)

    pos_side, neg_side = side(pos), side(neg)
    perm = rng.permutation(n_users)
    n_test = max(1, int(round(TEST_SHARE * n_users)))
    params = {
        "n_users": n_users, "hist_len": hist_len, "side_len": side_len, "n_items": n_items,
        "emb_dim": emb_dim, "seed": seed, "clusters": n_clusters, "hist_affinity": HIST_AFFINITY,
        "pos_affinity": POS_AFFINITY, "side_affinity": SIDE_AFFINITY, "test_users": n_test,
    }
    paths = []
    for name, who in (("train", np.sort(perm[n_test:])), ("test", np.sort(perm[:n_test]))):
        df = pl.DataFrame(
            {
                "index": np.arange(who.size),
                "uid": who,
                "hist": _joined(hist[who]),
                "pos": pos[who],
                "neg": neg[who],
                "pos_side": _joined(pos_side[who]),
                "neg_side": _joined(neg_side[who]),
            }
        )
        text = df.select(pl.concat_str(pl.all().cast(pl.Utf8), separator="\t").alias("x"))["x"]
        path = out / f"synthetic_{name}_corpus_total_dual.txt"
        _write_atomic(path, lambda f: f.write(("\n".join(text.to_list()) + "\n").encode()))
        paths.append(path)

    centroids = rng.normal(0.0, 1.0, size=(n_clusters, emb_dim))
    emb = centroids[item_cluster] + rng.normal(0.0, 1.0, size=(n_items, emb_dim))
    path = out / "synthetic_graph_emb.txt"
    rows = pl.DataFrame(emb).select(pl.concat_str(pl.all().round(6).cast(pl.Utf8), separator=" ").alias("x"))["x"]
    _write_atomic(path, lambda f: f.write(("\n".join(rows.to_list()) + "\n").encode()))
    paths.append(path)

    for p in paths:
        write_sidecar(p, "lsdata.synth.xlong", "HPMN XLong files (tab-separated corpora, graph_emb.txt)", params, NOTE)
    return paths
