"""AUC, logloss and the vectorised GAUC against brute-force definitions on random data."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lsdata.metrics import auc, gauc, logloss


def pairwise_auc(y, s):
    """P(score of a random positive > a random negative), ties 1/2: the definition, O(n^2)."""
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=1, max_size=60))
def test_auc_equals_the_pairwise_definition_with_ties(rows):
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float) / 3  # few distinct values -> many ties
    a, b = auc(y, s), pairwise_auc(y, s)
    assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 4)), min_size=1, max_size=80))
def test_gauc_is_the_impression_weighted_mean_of_per_user_aucs(rows):
    u = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    s = np.array([r[2] for r in rows], dtype=float)
    num = den = 0.0
    users = 0
    for uid in np.unique(u):
        m = u == uid
        if y[m].min() != y[m].max():
            num += pairwise_auc(y[m], s[m]) * m.sum()
            den += m.sum()
            users += 1
    g, n = gauc(u, y, s)
    assert n == users
    assert (users == 0 and math.isnan(g)) or abs(g - num / den) < 1e-12


def test_known_values():
    # scikit-learn: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    # log_loss([1, 0], [0.9, 0.2]) == -(log 0.9 + log 0.8) / 2
    assert abs(logloss(np.array([1, 0]), np.array([0.9, 0.2])) + (math.log(0.9) + math.log(0.8)) / 2) < 1e-12
    # probabilities are clipped, never inf
    assert math.isfinite(logloss(np.array([1]), np.array([0.0])))


def test_gauc_is_undefined_not_one_half_when_every_user_has_one_sample():
    g, n = gauc(np.arange(10), np.array([0, 1] * 5), np.random.default_rng(0).random(10))
    assert n == 0 and math.isnan(g)


def test_gauc_handles_a_million_rows_without_a_python_loop():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 100_000, 1_000_000)
    y = rng.integers(0, 2, u.size)
    g, n = gauc(u, y, rng.random(u.size) + 0.1 * y)
    assert 0.5 < g < 0.7 and n > 50_000
