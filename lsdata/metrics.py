"""Evaluation metrics of the CTR framing: AUC, logloss and GAUC, all vectorised NumPy.

* :func:`auc` - probability that a random positive scores above a random negative, ties counting 1/2
  (the Mann-Whitney statistic with average ranks; equal to scikit-learn's ``roc_auc_score``). ``nan``
  when only one class is present.
* :func:`logloss` - mean binary cross-entropy of probabilities clipped to ``[eps, 1 - eps]``
  (``eps = 1e-7``, as ``tf.losses.log_loss`` in the reference code).
* :func:`gauc` - per-user AUC weighted by the user's number of samples (impressions), over the users who
  have both a positive and a negative sample (DIN's GAUC). One sort of the whole array, no per-user loop.
  With the HPMN protocol (one sample per user) no user qualifies and GAUC is ``nan`` with ``users = 0``:
  it is reported as undefined, never as 0.5.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _group_ranks(keys: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by (key, score); return the order and the 1-based average rank of each sorted element
    inside its key group (ties share the mean of their ranks)."""
    order = np.lexsort((scores, keys))
    k, s = keys[order], scores[order]
    n = k.size
    new_tie = np.ones(n, dtype=bool)
    new_tie[1:] = (k[1:] != k[:-1]) | (s[1:] != s[:-1])
    new_grp = np.ones(n, dtype=bool)
    new_grp[1:] = k[1:] != k[:-1]
    pos = np.arange(n, dtype=np.float64)
    grp_start = np.maximum.accumulate(np.where(new_grp, pos, 0))
    tie_id = np.cumsum(new_tie) - 1
    tie_first = pos[new_tie]
    tie_last = np.append(tie_first[1:], n) - 1
    avg = (tie_first + tie_last) / 2.0  # mean 0-based position of each tie run
    ranks = avg[tie_id] - grp_start + 1.0
    return order, ranks


def _auc_parts(keys: np.ndarray, labels: np.ndarray, scores: np.ndarray):
    order, ranks = _group_ranks(keys, scores)
    k, y = keys[order], labels[order] > 0
    uniq, inv = np.unique(k, return_inverse=True)
    n_pos = np.bincount(inv, weights=y, minlength=uniq.size)
    n_all = np.bincount(inv, minlength=uniq.size).astype(np.float64)
    r_pos = np.bincount(inv, weights=np.where(y, ranks, 0.0), minlength=uniq.size)
    n_neg = n_all - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return a, n_pos, n_neg, n_all


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with average ranks for ties; ``nan`` if ``labels`` has a single class."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    a, *_ = _auc_parts(np.zeros(labels.size, dtype=np.int64), labels, scores)
    return float(a[0])


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = EPS) -> float:
    """Mean binary cross-entropy; probabilities clipped to ``[eps, 1 - eps]``."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """(GAUC, number of users it is defined on): sum_u n_u AUC_u / sum_u n_u over users with both labels."""
    users, labels = np.asarray(users), np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if users.size == 0:
        return float("nan"), 0
    a, n_pos, n_neg, n_all = _auc_parts(users.astype(np.int64), labels, scores)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan"), 0
    return float(np.sum(a[ok] * n_all[ok]) / np.sum(n_all[ok])), int(ok.sum())


def evaluate(users: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict:
    """All metrics of one set as a JSON-ready dict (``nan`` becomes ``None``)."""
    g, gu = gauc(users, labels, probs)
    out = {
        "n": int(np.asarray(labels).size),
        "positives": int(np.sum(np.asarray(labels) > 0)),
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs),
        "gauc": g,
        "gauc_users": gu,
    }
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}
