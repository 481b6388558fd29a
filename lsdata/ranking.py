"""Ranking metrics of the next-item framing: HR@K, Recall@K, NDCG@K, MRR@K and MRR, vectorised torch.

Everything works on the 0-based **rank** of each target in its sample's candidate list (0 = top), so it runs
on whatever device the ranks are on (GPU during training when there is one).

* :func:`count_above` - the rank of a positive among candidate scores, **pessimistic on ties**: every other
  candidate scoring ``>=`` the positive is counted above it, so a model that scores everything equal gets the
  worst rank, never the best. Called per chunk of items (full ranking over a large catalogue) and summed.
* :func:`ranking_metrics` - per-sample averages. ``ranks`` is ``[N]`` (one target per sample) or ``[N, T]``
  with ``-1`` for missing targets (several targets per sample, each ranked among the non-target
  candidates plus itself). Per sample: HR@K = 1 if any target is in the top K; Recall@K = targets in the top K
  / targets (= HR@K for one target); NDCG@K = sum over hits of 1/log2(rank + 2) divided by the ideal DCG of
  min(T, K) hits; MRR@K = 1/(best rank + 1) if that rank < K else 0; MRR the same without the cut-off.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

KS = (10, 20, 50, 100)  #: cut-offs reported by default


def count_above(pos: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` number of candidates in ``scores`` ``[B, C]`` scoring ``>=`` ``pos`` ``[B]`` (where ``valid``)."""
    above = scores >= pos[:, None]
    if valid is not None:
        above &= valid
    return above.sum(1)


def ranking_metrics(ranks: torch.Tensor | np.ndarray, ks: Iterable[int] = KS) -> dict[str, float]:
    """``{"n", "hr@K", "recall@K", "ndcg@K", "mrr@K", "mrr"}`` averaged over samples; see the module doc."""
    r = torch.as_tensor(ranks)
    if r.ndim == 1:
        r = r[:, None]
    r = r.to(torch.float64)
    present = r >= 0
    n_t = present.sum(1)
    keep = n_t > 0
    r, present, n_t = r[keep], present[keep], n_t[keep]
    out: dict[str, float] = {"n": int(r.shape[0])}
    if not r.shape[0]:
        return out | {f"{m}@{k}": None for k in ks for m in ("hr", "recall", "ndcg", "mrr")} | {"mrr": None}
    best = torch.where(present, r, torch.full_like(r, float("inf"))).min(1).values
    gain = torch.where(present, 1.0 / torch.log2(r.clamp(min=0) + 2.0), torch.zeros_like(r))
    discounts = 1.0 / torch.log2(torch.arange(r.shape[1], dtype=torch.float64, device=r.device) + 2.0)
    for k in ks:
        hit = present & (r < k)
        ideal = torch.cumsum(discounts, 0)[(n_t.clamp(max=k) - 1).clamp(max=r.shape[1] - 1)]
        out[f"hr@{k}"] = float(hit.any(1).double().mean())
        out[f"recall@{k}"] = float((hit.sum(1).double() / n_t.double()).mean())
        out[f"ndcg@{k}"] = float(((gain * hit).sum(1) / ideal).mean())
        out[f"mrr@{k}"] = float(torch.where(best < k, 1.0 / (best + 1.0), torch.zeros_like(best)).mean())
    out["mrr"] = float((1.0 / (best + 1.0)).mean())
    return out
