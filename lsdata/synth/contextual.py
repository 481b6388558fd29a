"""Synthetic lifelong behaviour whose long-range rule governs ordinary positions: personal responses to contexts.

:mod:`lsdata.synth.longdep` plants its long-range signal at one target per user (the CTR framing: one labelled
sample per user). In next-item framing every position is a training target, and there that generator's rule
governs almost none of them (``benchmarks/RESULTS.md``, "Long-dependency data in next-item framing"). Here the
rule governs a third of all positions, in training, validation and test alike, and what it needs is usually
further back than a short window reaches.

The story: a user who opens a *context* (say a phone) next looks at one of the context's *options* (cases of
some brand). Which option is personal and stable: the user's choice for that context. A context recurs every
~``(1 + 1/tau) * contexts`` events, so the user's last response to it is usually far back; a model must recall
it by content (the context is the query, the past response to it the value) to predict the next event.

Catalogue (fixed by ``seed``, independent of ``users``; raw ids random, so dense ids carry no hint)
--------------------------------------------------------------------------------------------------
* ``contexts`` (X) context categories with ``items_per_context`` items each;
* for each context ``x``, ``options`` (R) *interest* categories ``(x, 0..R-1)`` with ``items_per_interest`` (m)
  items each (``K = X * R`` interest categories in all; each belongs to exactly one context);
* ``noise_categories`` noise categories sharing ``noise_items`` items (round robin by popularity rank), noise
  popularity ``p_noise(r) ~ (r + 1) ** -noise_zipf`` (as :mod:`lsdata.synth.longdep`).

Per user
--------
1. Length ``L ~ U{len_min..len_max}``; positions ``t = 0 .. L - 1`` in time order.
2. Choices ``f(x) ~ U{0..R-1}`` for every context ``x``, independent (the user's option for that context).
3. Event ``t``: if event ``t - 1`` is a context event of context ``x`` (``t`` is a *response* position): with
   probability ``rho`` an item uniform among the ``m`` items of interest category ``(x, f(x))``, otherwise a noise
   item. Otherwise: with probability ``tau`` a context event (context uniform over the X, item uniform among its
   ``items_per_context``), otherwise a noise item. All draws independent.
4. Behaviours and timestamps as :mod:`lsdata.synth.longdep` (:func:`lsdata.synth.longdep.behaviours_and_times`).

Shares with the defaults: context events ``tau / (1 + tau)`` = 1/3 of positions, responses 1/3, other noise 1/3.

Parameters (``generate(path, users=2000, seed=0, **params)``; defaults in :data:`DEFAULTS`)
------------------------------------------------------------------------------------------
======================  =======  ==================================================================
``contexts``             40      X, context categories
``items_per_context``    10      items per context category
``options``              4       R, interest categories per context (K = X * R = 160)
``items_per_interest``   20      m, items per interest category (3,200 interest items)
``noise_categories``     100     noise categories
``noise_items``          2000    noise items
``noise_zipf``           0.5     Zipf exponent of ``p_noise``
``tau``                  0.5     probability that a non-response position is a context event
``rho``                  0.8     probability that a response is an item of the user's option
``len_min, len_max``     300,900 events per user
``block_users``          20000   users generated per block (memory is flat in ``users``)
======================  =======  ==================================================================

Same ``seed``, parameters and ``block_users`` give a byte-identical file.

The Bayes-optimal decision rule (next-item framing)
--------------------------------------------------
For the event at position ``t`` given a history window (the last ``W`` events; ``W = None``: all of them):
let ``x`` be the context of event ``t - 1`` (if it is a context event and visible), and ``k`` the category of
the latest visible interest event of context ``x`` (0 if none is visible). Then::

    P_target(c | h) = rho * 1[cate(c) = k] / m + (1 - rho) * p_noise(c)                     x, k known
    P_target(c | h) = rho * 1[cate(c) is an option of x] / (R m) + (1 - rho) * p_noise(c)   x known, k = 0
    P_target(c | h) = tau * 1[c is a context item] / (X n_ctx) + (1 - tau) * p_noise(c)   t - 1 not a context

(:func:`target_probability` of :func:`history_state`; ``n_ctx = items_per_context``). This is exact: the
choices are independent and uniform across contexts and never change, interest events of context ``x`` are
exactly the responses to ``x`` that show the choice (each reveals ``f(x)``), and nothing else in a history
(noise items, other contexts and their responses, behaviours, times) depends on ``f(x)``. Ranking items by
``P_target`` is optimal for HR/NDCG over all items. This generator is meant for next-item framing: in CTR framing
with ``lsdata split``'s uniform negatives a response is told from its negative by the context alone (a random
negative is almost never another option of the same context), so the Bayes AUC hardly depends on the option, i.e.
on the window.

A window reveals ``f(x)`` iff it holds one of the user's earlier interest events of context ``x``: with the
defaults context ``x`` recurs every ~120 events and shows the choice with probability ``rho``, so a window of 50
reveals it for roughly a third of responses, one of 300 for most, and the full history for almost all
(``benchmarks/longdep_next.py --generator contextual`` measures the shares and the oracle metrics per window).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lsdata.synth import longdep, write_sidecar

GENERATOR = "lsdata.synth.contextual"

DEFAULTS: dict[str, float | int] = {
    "contexts": 40,
    "items_per_context": 10,
    "options": 4,
    "items_per_interest": 20,
    "noise_categories": 100,
    "noise_items": 2000,
    "noise_zipf": 0.5,
    "tau": 0.5,
    "rho": 0.8,
    "len_min": 300,
    "len_max": 900,
}

#: category kinds in :attr:`Model.kind`
INTEREST, CONTEXT, NOISE = 1, 2, 3


def resolve(params: dict | None = None) -> dict:
    """Defaults updated with ``params`` (unknown keys rejected), after consistency checks."""
    p = dict(DEFAULTS)
    extra = set(params or {}) - set(DEFAULTS) - longdep.SIDECAR_ONLY
    if extra:
        raise ValueError(f"unknown contextual parameters: {sorted(extra)}")
    p.update({k: v for k, v in (params or {}).items() if k in DEFAULTS})
    if not all(int(p[k]) >= 1 for k in ("contexts", "items_per_context", "options", "items_per_interest", "noise_items")):
        raise ValueError("need >= 1 context, item per context, option, item per interest category and noise item")
    if not (1 <= p["noise_categories"] <= p["noise_items"]):
        raise ValueError("need 1 <= noise_categories <= noise_items")
    if not (0.0 <= p["tau"] <= 1.0 and 0.0 <= p["rho"] <= 1.0 and p["noise_zipf"] >= 0):
        raise ValueError("need tau and rho in [0, 1] and noise_zipf >= 0")
    if not (1 <= p["len_min"] <= p["len_max"]):
        raise ValueError("need 1 <= len_min <= len_max")
    return p


def catalogue(p: dict, seed: int) -> longdep.Catalogue:
    """Items: the ``K * m`` interest items first (category ``i // m`` = ``x * R + option``), then the context items
    (category ``K + j // items_per_context``), then the noise items by popularity rank (category ``K + X + r %
    noise_categories``); ``n_interest_items`` = ``K * m``."""
    x, nc_, r, m, nc, nn = (int(p[k]) for k in ("contexts", "items_per_context", "options", "items_per_interest",
                                                 "noise_categories", "noise_items"))
    k = x * r
    rng = np.random.default_rng([seed, 0xC07])
    n_items, n_cates = k * m + x * nc_ + nn, k + x + nc
    item_raw = 1 + rng.choice(4 * n_items + 100, size=n_items, replace=False).astype(np.int64)
    cate_raw = 1 + rng.choice(20 * n_cates + 100, size=n_cates, replace=False).astype(np.int64)
    item_cate = np.r_[np.arange(k * m) // m, k + np.arange(x * nc_) // nc_, k + x + np.arange(nn) % nc].astype(np.int64)
    w = np.arange(1, nn + 1, dtype=np.float64) ** -float(p["noise_zipf"])
    return longdep.Catalogue(item_raw, item_cate, cate_raw, w / w.sum(), k * m)


def _block(rng: np.random.Generator, n: int, p: dict, cat: longdep.Catalogue, cdf: np.ndarray):
    """One block of ``n`` users: flat (user index, item index, behaviour index, ts) arrays."""
    x_n, n_ctx, r, m = (int(p[k]) for k in ("contexts", "items_per_context", "options", "items_per_interest"))
    length = rng.integers(int(p["len_min"]), int(p["len_max"]) + 1, size=n)
    choice = rng.integers(0, r, size=(n, x_n))
    width = int(length.max())
    u = rng.random((n, width))
    ctx = np.zeros((n, width), dtype=bool)
    ctx[:, 0] = u[:, 0] < float(p["tau"])
    for t in range(1, width):  # a response position is never a context event
        ctx[:, t] = ~ctx[:, t - 1] & (u[:, t] < float(p["tau"]))
    keep = np.arange(width)[None, :] < length[:, None]
    user = np.nonzero(keep)[0]
    is_ctx = ctx[keep]
    total = user.size
    context = rng.integers(0, x_n, size=total)
    within_ctx = rng.integers(0, n_ctx, size=total)
    shows = rng.random(total) < float(p["rho"])
    within = rng.integers(0, m, size=total)
    noise_rank = np.minimum(np.searchsorted(cdf, rng.random(total) * cdf[-1], side="right"), cdf.size - 1)
    item = cat.n_interest_items + x_n * n_ctx + noise_rank
    item = np.where(is_ctx, cat.n_interest_items + context * n_ctx + within_ctx, item)
    prev_ctx = np.r_[False, is_ctx[:-1]] & np.r_[False, user[1:] == user[:-1]]
    prev_x = np.r_[0, context[:-1]]
    resp = prev_ctx & shows
    option = (prev_x * r + choice[user, prev_x]) * m + within
    item = np.where(resp, option, item)
    beh, ts = longdep.behaviours_and_times(rng, length)
    return user, item, beh, ts


def generate(path: str | Path, users: int = 2000, seed: int = 0, block_users: int = 20_000, **params) -> Path:
    """Write ``users`` users to ``path`` plus a ``.synthetic.json`` sidecar; returns ``path``.

    ``params`` override :data:`DEFAULTS` (module docstring). Memory is bounded by ``block_users``.
    """
    p = resolve(params)
    cat = catalogue(p, seed)
    cdf = np.cumsum(cat.p_noise)
    rng = np.random.default_rng(seed)
    path, rows, seen = longdep.write_blocks(path, users, block_users, cat, lambda n: _block(rng, n, p, cat, cdf))
    side = {
        **p, "seed": seed, "users": users, "block_users": block_users, "rows": rows,
        "items": int(cat.item_raw.size), "categories": int(cat.cate_raw.size), "items_absent": int((~seen).sum()),
    }
    write_sidecar(
        path, GENERATOR, "Tianchi UserBehavior.csv (user,item,category,behavior,ts; no header)", side,
        "synthetic lifelong behaviour with personal responses to recurring contexts (the user's option for a "
        "context is shown only by earlier responses to it); Bayes-optimal scores in lsdata.synth.contextual; "
        "not real Tianchi data",
    )
    return path


def read_params(path: str | Path) -> dict:
    """The parameters recorded in ``path.synthetic.json`` by this generator."""
    return longdep.read_params(path, (GENERATOR,))


@dataclass
class Model:
    """The generative model in a dataset's dense ids (index 0 = padding everywhere).

    ``kind[cate]``: :data:`INTEREST`, :data:`CONTEXT` or :data:`NOISE` (0 = padding); ``group[cate]``: the
    context index of a context or interest category (-1 otherwise); ``p_noise[item]``: noise popularity (0 for
    other items); ``n_items``: vocabulary size N.
    """

    rho: float
    tau: float
    contexts: int
    items_per_context: int
    options: int
    items_per_interest: int
    kind: np.ndarray
    group: np.ndarray
    p_noise: np.ndarray
    n_items: int


def model_for_dataset(root: str | Path) -> Model:
    """The generative model of an ingested dataset, from its input file's sidecar (found through ``manifest.json``)."""
    root = Path(root)
    params = read_params(json.loads((root / "manifest.json").read_text())["sources"][0]["path"])
    p = resolve(params)
    cat = catalogue(p, int(params["seed"]))
    vi, ii, vc, ci = longdep.catalogue_index(root, cat)
    x_n, r = int(p["contexts"]), int(p["options"])
    k = x_n * r
    kind = np.zeros(vc.height + 1, dtype=np.int8)
    group = np.full(vc.height + 1, -1, dtype=np.int64)
    cid = vc["id"].to_numpy()
    kind[cid] = np.where(ci < k, INTEREST, np.where(ci < k + x_n, CONTEXT, NOISE))
    group[cid] = np.where(ci < k, ci // r, np.where(ci < k + x_n, ci - k, -1))
    p_noise = np.zeros(vi.height + 1, dtype=np.float64)
    first_noise = cat.n_interest_items + x_n * int(p["items_per_context"])
    noise = ii >= first_noise
    p_noise[vi["id"].to_numpy()[noise]] = cat.p_noise[ii[noise] - first_noise]
    return Model(float(p["rho"]), float(p["tau"]), x_n, int(p["items_per_context"]), r, int(p["items_per_interest"]),
                 kind, group, p_noise, vi.height)


def history_state(cate: np.ndarray, model: Model, start: np.ndarray, target: np.ndarray,
                  window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, k)`` per target (module docstring): the context index of the event before the target (-1 if it is
    not a context event or not visible) and the dense category of the latest visible interest event of that
    context (0 if none).

    ``cate``: flat dense categories of the users' time-ordered events; ``start``/``target``: flat positions of
    each target's user's first event and of the target; ``window``: only the last ``window`` events before the
    target are visible (``None``: all).
    """
    start, target = np.asarray(start, dtype=np.int64), np.asarray(target, dtype=np.int64)
    lo = start if window is None else np.maximum(start, target - int(window))
    prev = target - 1
    prev_cate = cate[np.maximum(prev, 0)]
    x = np.where((prev >= lo) & (model.kind[prev_cate] == CONTEXT), model.group[prev_cate], -1)
    pos = np.flatnonzero(model.kind[cate] == INTEREST)
    if pos.size == 0:
        return x, np.zeros(x.size, dtype=np.int64)
    # latest interest event of group x before `prev`: binary search in the sorted (group, position) keys
    span = int(cate.size) + 1
    keys = np.sort(model.group[cate[pos]] * span + pos)
    j = np.searchsorted(keys, np.maximum(x, 0) * span + prev, side="left") - 1
    found = keys[np.maximum(j, 0)]
    ok = (x >= 0) & (j >= 0) & (found // span == x) & (found % span >= lo)
    return x, np.where(ok, cate[found % span], 0)


def target_probability(x: np.ndarray, k: np.ndarray, cand_item: np.ndarray, cand_cate: np.ndarray, model: Model) -> np.ndarray:
    """P_target(c | h) from :func:`history_state`'s ``(x, k)`` (module docstring); arguments broadcast."""
    x, k = np.asarray(x), np.asarray(k)
    cand_item, cand_cate = np.asarray(cand_item, dtype=np.int64), np.asarray(cand_cate, dtype=np.int64)
    interest = model.kind[cand_cate] == INTEREST
    p_opt = np.where(k > 0, (cand_cate == k) / model.items_per_interest,
                     (interest & (model.group[cand_cate] == x)) / (model.options * model.items_per_interest))
    p_resp = model.rho * p_opt + (1 - model.rho) * model.p_noise[cand_item]
    p_ctx = (model.kind[cand_cate] == CONTEXT) / (model.contexts * model.items_per_context)
    p_other = model.tau * p_ctx + (1 - model.tau) * model.p_noise[cand_item]
    return np.where(x >= 0, p_resp, p_other)
