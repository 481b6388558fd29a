"""Synthetic lifelong behaviour with planted long-range structure, in the Taobao ``UserBehavior.csv`` format.

The point of this generator is a benchmark whose answer is known: the signal that predicts the target is
always more than 50 events back (``gap_min`` > 50), so a model that sees only the last ~50 events cannot
use it, while a model that sees 300 events always can (``gap_max`` <= 300). The Bayes-optimal score is
computed exactly from the generative model (:func:`bayes_scores`), for the full history and for any
window ``W`` (what a perfect model that sees only the last ``W`` events could do at best).

The file goes through the normal pipeline::

    lsdata ingest taobao FILE --out D && lsdata split D && lsdata layout D hpmn

Catalogue (fixed by ``seed``, independent of ``users``)
-------------------------------------------------------
* ``interest_categories`` (K) *interest* categories with ``items_per_interest`` (m) items each, and
  ``noise_categories`` *noise* categories sharing ``noise_items`` items (round robin by popularity rank, so
  each noise category has popular and rare items). The two kinds of category are disjoint and every item
  has exactly one category.
* Noise popularity: the noise item of rank ``r`` (0-based) has probability
  ``p_noise(r) = (r + 1) ** -noise_zipf / sum_s (s + 1) ** -noise_zipf`` (exact discrete Zipf; 0 = uniform).
* Raw user ids are ``1..users`` (rows grouped by user, ascending); raw item and category ids are
  distinct random integers (seeded), so the pipeline's dense ids (assigned in raw-id order) carry no hint
  of an item's kind or popularity.

Per user (one user = one sample of the pipeline: its last event is the target)
------------------------------------------------------------------------------
Positions are 0-based in the user's time-ordered sequence of ``L`` events; the target is position ``L - 1``.

1. ``lead ~ U{lead_min..lead_max}`` noise-dominated events, then the *latest interest burst* of
   ``B0 ~ U{burst_min..burst_max}`` events at positions ``lead .. lead + B0 - 1``, then ``gap - 1`` noise
   events, then the target: ``L = lead + B0 + gap`` with ``gap ~ U{gap_min..gap_max}``. The latest
   interest event is thus the ``gap``-th most recent history event: a window of the last ``W`` history
   events contains it iff ``gap <= W``. With the defaults (gap 80..250) the last 50 history events never
   contain an interest event and the last 300 always do.
2. Earlier bursts recur with a long period: burst ``b >= 1`` starts ``P_b ~ U{period_min..period_max}``
   events before burst ``b - 1`` (while the start is >= 0), with its own length ``~ U{burst_min..burst_max}``.
3. Interest categories: the *current* interest ``k_u`` (category of the latest burst) is uniform over the K
   interest categories. Going back in time, each earlier burst keeps the category of the next newer one,
   or, with probability ``switch_prob``, the user had a different interest then (uniform over the other
   K - 1). So a user has drifted interests (typically 0-2 switches in its life) and ``k_u`` is always the
   category of the *latest* interest event.
4. Burst events are items of their category, taken round robin per category across the whole file (so
   every interest item appears once its category has had m burst events; which item a burst shows carries
   no information about the target). All other history events are noise items drawn from ``p_noise``
   (their categories are the noise categories). History contents are independent of ``k_u`` except
   through the burst categories.
5. Target: with probability ``rho`` an item uniform among the m items of ``k_u``; otherwise a noise item
   drawn from ``p_noise`` (independently of everything else).
6. Behaviours: pv/buy/cart/fav with probabilities 0.89/0.02/0.06/0.03, independent of everything.
7. Timestamps: strictly increasing per user inside :data:`lsdata.defaults.TAOBAO_WINDOW`; a user's
   events span a duration ``D ~ U[0.2, 0.9] * window`` (at least ``L`` seconds) placed uniformly in the
   window, with exponential spacings; so users' last-event times (the pipeline's split key) spread over
   the window. Time carries no information about the target.

Parameters (``generate(path, users=20000, seed=0, **params)``; defaults in :data:`DEFAULTS`)
---------------------------------------------------------------------------------------------
======================  =======  ==================================================================
``interest_categories``  50      K, number of interest categories
``items_per_interest``   60      m, items per interest category (K * m = 3000 interest items)
``noise_categories``     100     number of noise categories
``noise_items``          2000    number of noise items
``noise_zipf``           0.5     Zipf exponent of ``p_noise`` (history noise events and noise targets)
``rho``                  0.6     probability that the target is an item of the current interest ``k_u``
``gap_min, gap_max``     80, 250 distance (in history events) from the target back to the latest interest event
``burst_min, burst_max`` 2, 5    events per interest burst
``period_min/max``       150,250 distance between the starts of consecutive bursts
``lead_min, lead_max``   0, 300  events before the latest burst (older bursts recur inside them)
``switch_prob``          0.5     per earlier burst: probability that the interest was different then
``block_users``          20000   users generated per block (memory is flat in ``users``)
======================  =======  ==================================================================

With the defaults a user has ~320 events on average (min 82, max 555). The defaults make the target's
marginal distribution nearly uniform over items (``rho`` = share of interest items, 0.6), so a model that
cannot see ``k_u`` gets only the weak noise-popularity signal (Bayes AUC ~0.58), while one that sees it
gets ~0.94. Same ``seed``, parameters and ``block_users`` give a byte-identical file.

The Bayes-optimal decision rule
-------------------------------
``lsdata split`` keeps the true target (label 1) or, with probability ``q = neg_ratio`` (0.5), replaces
it by an item drawn uniformly from the other ``N - 1`` items of the vocabulary (label 0). For a history
``h`` and a candidate ``c``::

    P(c | label 1, h) = P_target(c | h)
    P(c | label 0, h) = sum_{t != c} P_target(t | h) / (N - 1) = (1 - P_target(c | h)) / (N - 1)
    P(label 1 | h, c) = (1-q) P_target(c|h) / [(1-q) P_target(c|h) + q (1 - P_target(c|h)) / (N - 1)]

which is increasing in ``P_target(c | h)``, so ranking by ``P_target`` is Bayes-optimal (same AUC). For
this generator, with ``k = k_u`` read off the history::

    P_target(c | h) = rho * 1[cate(c) = k] / m + (1 - rho) * p_noise(c)      if h shows an interest event
    P_target(c | h) = rho * 1[cate(c) is interest] / (K m) + (1 - rho) * p_noise(c)      otherwise

where ``k`` is the category of the **latest interest event** in ``h`` (interest categories are known from
the catalogue) and ``p_noise(c) = 0`` for interest items. This is exact: the latest interest event of any
suffix window of the history is the latest interest event of the whole history whenever the window holds
one, and when it holds none, nothing else in it (noise items, behaviours, times, positions) depends on
``k_u``, whose prior is uniform over the K interest categories. A window of the last 50 events never holds
an interest event (``gap_min`` > 50), so the best a 50-event model can do is the second line; a
300-event window always holds one (``gap_max`` <= 300), so it can do as well as the full history.

Limits of the rule
------------------
* It is computed on the history the scorer is given. A layout truncates histories to its width (hpmn on
  Taobao: 300): with ``gap_max`` <= width nothing is lost; with a larger ``gap_max`` the layout-based score
  is the window-``width`` score. :func:`dataset_scores` reads the stored sequences and scores the full history.
* ``N`` is the vocabulary size, i.e. the items that occur in the file. A catalogue item that never occurs
  (possible only for tiny files; the sidecar records ``items_absent``) is never a candidate, so the
  ranking is unaffected; it only makes the ``P_target`` values sum to slightly less than 1 over the vocabulary.
* The score ranks the test samples optimally; AUC on a finite test set still has sampling noise.
* It assumes the pipeline's defaults for labels (uniform negatives over the vocabulary, the item's
  category from the vocabulary); ``q`` only rescales the posterior, never the ranking.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from lsdata.defaults import TAOBAO_WINDOW
from lsdata.synth import write_sidecar

BEHAVIORS = np.array(["pv", "buy", "cart", "fav"])
BEHAVIOR_P = np.array([0.89, 0.02, 0.06, 0.03])
GENERATOR = "lsdata.synth.longdep"

DEFAULTS: dict[str, float | int] = {
    "interest_categories": 50,
    "items_per_interest": 60,
    "noise_categories": 100,
    "noise_items": 2000,
    "noise_zipf": 0.5,
    "rho": 0.6,
    "gap_min": 80,
    "gap_max": 250,
    "burst_min": 2,
    "burst_max": 5,
    "period_min": 150,
    "period_max": 250,
    "lead_min": 0,
    "lead_max": 300,
    "switch_prob": 0.5,
}


#: keys a sidecar records besides the model parameters (accepted and ignored by :func:`resolve`)
SIDECAR_ONLY = {"seed", "users", "block_users", "rows", "items", "categories", "items_absent"}


def resolve(params: dict | None = None) -> dict:
    """Defaults updated with ``params`` (unknown keys rejected), after consistency checks."""
    p = dict(DEFAULTS)
    extra = set(params or {}) - set(DEFAULTS) - SIDECAR_ONLY
    if extra:
        raise ValueError(f"unknown longdep parameters: {sorted(extra)}")
    p.update({k: v for k, v in (params or {}).items() if k in DEFAULTS})
    if not (p["interest_categories"] >= 2 and p["items_per_interest"] >= 1 and p["noise_items"] >= 1):
        raise ValueError("need >= 2 interest categories, >= 1 item per interest category and >= 1 noise item")
    if not (1 <= p["noise_categories"] <= p["noise_items"]):
        raise ValueError("need 1 <= noise_categories <= noise_items")
    if not (1 <= p["gap_min"] <= p["gap_max"]):
        raise ValueError("need 1 <= gap_min <= gap_max")
    if not (1 <= p["burst_min"] <= p["burst_max"] <= p["period_min"] <= p["period_max"]):
        raise ValueError("need 1 <= burst_min <= burst_max <= period_min <= period_max")
    if not (0 <= p["lead_min"] <= p["lead_max"]):
        raise ValueError("need 0 <= lead_min <= lead_max")
    if not (0.0 <= p["rho"] <= 1.0 and 0.0 <= p["switch_prob"] <= 1.0 and p["noise_zipf"] >= 0):
        raise ValueError("need rho and switch_prob in [0, 1] and noise_zipf >= 0")
    return p


@dataclass
class Catalogue:
    """Raw ids of the catalogue. Items: the K*m interest items first (category ``i // m``), then the noise
    items by popularity rank. ``item_cate`` indexes ``cate_raw`` (interest categories first)."""

    item_raw: np.ndarray  # int64 [K*m + noise_items]
    item_cate: np.ndarray  # int64 index into cate_raw
    cate_raw: np.ndarray  # int64 [K + noise_categories]
    p_noise: np.ndarray  # float64 [noise_items], by rank
    n_interest_items: int


def catalogue(p: dict, seed: int) -> Catalogue:
    """The catalogue of a generated file (depends only on the catalogue parameters and ``seed``)."""
    k, m, nc, nn = (int(p[x]) for x in ("interest_categories", "items_per_interest", "noise_categories", "noise_items"))
    rng = np.random.default_rng([seed, 0x10D])
    n_items, n_cates = k * m + nn, k + nc
    item_raw = 1 + rng.choice(4 * n_items + 100, size=n_items, replace=False).astype(np.int64)
    cate_raw = 1 + rng.choice(20 * n_cates + 100, size=n_cates, replace=False).astype(np.int64)
    item_cate = np.r_[np.arange(k * m) // m, k + np.arange(nn) % nc].astype(np.int64)
    w = np.arange(1, nn + 1, dtype=np.float64) ** -float(p["noise_zipf"])
    return Catalogue(item_raw, item_cate, cate_raw, w / w.sum(), k * m)


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    return np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)


def _block(rng: np.random.Generator, n: int, p: dict, cat: Catalogue, cdf: np.ndarray, rr: np.ndarray):
    """One block of ``n`` users: flat (user index, item index, behaviour index, ts) arrays."""
    k, m = int(p["interest_categories"]), int(p["items_per_interest"])
    ri = lambda lo, hi, size: rng.integers(int(lo), int(hi) + 1, size=size)  # inclusive bounds
    lead = ri(p["lead_min"], p["lead_max"], n)
    b0 = ri(p["burst_min"], p["burst_max"], n)
    gap = ri(p["gap_min"], p["gap_max"], n)
    length = lead + b0 + gap
    # bursts: column 0 = latest; earlier starts go back by a period while >= 0
    nb = int(p["lead_max"]) // int(p["period_min"]) + 1
    period = ri(p["period_min"], p["period_max"], (n, nb))
    period[:, 0] = 0
    start = lead[:, None] - np.cumsum(period, axis=1)
    blen = ri(p["burst_min"], p["burst_max"], (n, nb))
    blen[:, 0] = b0
    valid = start >= 0
    cur = rng.integers(0, k, size=n)
    step = np.where(rng.random((n, nb)) < float(p["switch_prob"]), rng.integers(1, k, size=(n, nb)), 0)
    step[:, 0] = 0
    bcat = (cur[:, None] + np.cumsum(step, axis=1)) % k  # consecutive bursts differ when switched
    total = int(length.sum())
    off = _segment_starts(length)
    # noise everywhere first (ranks by exact inverse CDF), then bursts, then targets
    nn_ranks = np.searchsorted(cdf, rng.random(total) * cdf[-1], side="right")
    item = cat.n_interest_items + np.minimum(nn_ranks, cdf.size - 1)
    bu, bb = np.nonzero(valid)  # row-major: users ascending, bursts newest first
    bl = blen[bu, bb]
    ev_pos = np.repeat(off[bu] + start[bu, bb], bl) + (np.arange(int(bl.sum())) - np.repeat(_segment_starts(bl), bl))
    ev_cat = np.repeat(bcat[bu, bb], bl)
    # round robin per category, in file order
    order = np.lexsort((ev_pos, ev_cat))
    sc = ev_cat[order]
    first = np.searchsorted(sc, sc, side="left")
    slot = np.empty_like(order)
    slot[order] = (rr[sc] + np.arange(sc.size) - first) % m
    np.add.at(rr, ev_cat, 1)
    item[ev_pos] = ev_cat * m + slot
    last = off + length - 1
    interest_target = rng.random(n) < float(p["rho"])
    item[last] = np.where(interest_target, cur * m + rng.integers(0, m, size=n), item[last])
    beh, ts = behaviours_and_times(rng, length)
    return np.repeat(np.arange(n), length), item, beh, ts


def behaviours_and_times(rng: np.random.Generator, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Behaviour indices and strictly increasing timestamps for users with ``length`` events each (flat, users in
    order): behaviours i.i.d. from :data:`BEHAVIOR_P`; a user's events span ``D ~ U[0.2, 0.9] * window`` (at least
    ``L`` seconds) placed uniformly in :data:`lsdata.defaults.TAOBAO_WINDOW`, with exponential spacings."""
    n, total = length.size, int(length.sum())
    off = _segment_starts(length)
    last = off + length - 1
    beh = rng.choice(BEHAVIORS.size, size=total, p=BEHAVIOR_P)
    # strictly increasing times: start + floor(frac * (D - L)) + position
    lo, hi = TAOBAO_WINDOW
    span = hi - lo
    dur = np.maximum(length, np.floor(rng.uniform(0.2, 0.9, size=n) * span).astype(np.int64))
    t0 = lo + (rng.random(n) * (span - dur + 1)).astype(np.int64)
    e = rng.exponential(size=total)
    e[off] = 0.0
    cs = np.cumsum(e)
    cs -= np.repeat(cs[off], length)
    frac = cs / np.repeat(cs[last], length)
    pos = np.arange(total, dtype=np.int64) - np.repeat(off, length)
    ts = np.repeat(t0, length) + np.floor(frac * np.repeat(dur - length, length)).astype(np.int64) + pos
    return beh, ts


def write_blocks(path: str | Path, users: int, block_users: int, cat: Catalogue, make_block) -> tuple[Path, int, np.ndarray]:
    """Write ``users`` users in blocks of ``block_users`` to ``path`` atomically (temp file, then rename).

    ``make_block(n)`` returns flat ``(user index in block, catalogue item index, behaviour index, ts)`` arrays for
    ``n`` users; raw user ids are numbered ``1..users`` in block order. Returns ``(path, rows, seen)``, ``seen[i]``
    telling whether catalogue item ``i`` occurs in the file."""
    if users < 1:
        raise ValueError("users must be >= 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = np.zeros(cat.item_raw.size, dtype=bool)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    rows = 0
    with open(tmp, "wb") as f:
        for b0 in range(0, users, block_users):
            n = min(block_users, users - b0)
            u, item, beh, ts = make_block(n)
            seen[item] = True
            pl.DataFrame(
                {
                    "u": (u + b0 + 1).astype(np.int64),
                    "i": cat.item_raw[item],
                    "c": cat.cate_raw[cat.item_cate[item]],
                    "b": pl.Series(BEHAVIORS[beh]),
                    "t": ts,
                }
            ).write_csv(f, include_header=False)
            rows += item.size
    os.replace(tmp, path)
    return path, rows, seen


def generate(path: str | Path, users: int = 20_000, seed: int = 0, block_users: int = 20_000, **params) -> Path:
    """Write ``users`` users (one target each) to ``path`` plus a ``.synthetic.json`` sidecar; returns ``path``.

    ``params`` override :data:`DEFAULTS` (see the module docstring). Memory is bounded by ``block_users``.
    """
    p = resolve(params)
    cat = catalogue(p, seed)
    cdf = np.cumsum(cat.p_noise)
    rr = np.zeros(int(p["interest_categories"]), dtype=np.int64)
    rng = np.random.default_rng(seed)
    path, rows, seen = write_blocks(path, users, block_users, cat, lambda n: _block(rng, n, p, cat, cdf, rr))
    side = {
        **p, "seed": seed, "users": users, "block_users": block_users, "rows": rows,
        "items": int(cat.item_raw.size), "categories": int(cat.cate_raw.size),
        "items_absent": int((~seen).sum()),
    }
    write_sidecar(
        path, GENERATOR, "Tianchi UserBehavior.csv (user,item,category,behavior,ts; no header)", side,
        "synthetic lifelong behaviour with planted long-range structure (the target's interest category is "
        f"shown only {p['gap_min']}-{p['gap_max']} events back); Bayes-optimal scores in lsdata.synth.longdep; "
        "not real Tianchi data",
    )
    return path


def read_params(path: str | Path, generators: tuple[str, ...] = (GENERATOR,)) -> dict:
    """The parameters recorded in ``path.synthetic.json`` (``path`` may also be the sidecar itself), checking that
    one of ``generators`` wrote it."""
    path = Path(path)
    side = path if path.name.endswith(".synthetic.json") else Path(str(path) + ".synthetic.json")
    doc = json.loads(side.read_text())
    if doc.get("generator") not in generators:
        raise ValueError(f"{side}: not written by {' or '.join(generators)}")
    return doc["params"]


@dataclass
class Model:
    """The generative model in a dataset's dense ids (index 0 = padding everywhere).

    ``interest[cate]``: the category is an interest category; ``p_noise[item]``: noise popularity (0 for
    interest items and padding); ``n_items``: vocabulary size N.
    """

    rho: float
    n_interest: int
    items_per_interest: int
    interest: np.ndarray
    p_noise: np.ndarray
    n_items: int
    neg_ratio: float = 0.5


def catalogue_index(root: str | Path, cat) -> tuple[pl.DataFrame, np.ndarray, pl.DataFrame, np.ndarray]:
    """``(item vocab, item catalogue index per vocab row, category vocab, category catalogue index per row)`` of an
    ingested dataset, matching raw ids against ``cat.item_raw`` / ``cat.cate_raw``; a raw id the catalogue lacks is
    an error (the dataset was generated with other parameters or seed)."""
    root = Path(root)
    vi = pl.read_parquet(root / "vocab" / "item.parquet", columns=["id", "raw"])
    vc = pl.read_parquet(root / "vocab" / "cate.parquet", columns=["id", "raw"])

    def index_of(raw_vocab: pl.Series, raw_cat: np.ndarray, what: str) -> np.ndarray:
        raw = raw_vocab.cast(pl.Int64).to_numpy()
        srt = np.argsort(raw_cat)
        j = np.searchsorted(raw_cat, raw, sorter=srt)
        j = srt[np.minimum(j, raw_cat.size - 1)]
        if not np.array_equal(raw_cat[j], raw):
            raise ValueError(f"{root}: {what} vocabulary does not match the generator's catalogue (wrong params/seed?)")
        return j

    return vi, index_of(vi["raw"], cat.item_raw, "item"), vc, index_of(vc["raw"], cat.cate_raw, "category")


def model_for_dataset(root: str | Path, params: dict | None = None) -> Model:
    """Map the generator's catalogue onto an ingested dataset's vocabularies.

    ``params`` default to the sidecar of the dataset's (single) input file, found through ``manifest.json``.
    ``neg_ratio`` comes from ``split/report.json`` when present.
    """
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    if params is None:
        src = manifest["sources"][0]["path"]
        if not Path(src + ".synthetic.json").exists():
            raise ValueError(f"{root}: sidecar {src}.synthetic.json not found; pass params=read_params(FILE)")
        params = read_params(src)
    p = resolve({k: v for k, v in params.items() if k in DEFAULTS})
    cat = catalogue(p, int(params["seed"]))
    vi, ii, vc, ci = catalogue_index(root, cat)
    k = int(p["interest_categories"])
    interest = np.zeros(vc.height + 1, dtype=bool)
    interest[vc["id"].to_numpy()] = ci < k
    p_noise = np.zeros(vi.height + 1, dtype=np.float64)
    noise = ii >= cat.n_interest_items
    p_noise[vi["id"].to_numpy()[noise]] = cat.p_noise[ii[noise] - cat.n_interest_items]
    neg_ratio = 0.5
    rep = root / "split" / "report.json"
    if rep.exists():
        opts = json.loads(rep.read_text()).get("options", {})
        # with ``pairs`` each target gives one positive and one negative sample: q = 1/2
        neg_ratio = 0.5 if opts.get("pairs") else float(opts.get("neg_ratio", 0.5))
    return Model(float(p["rho"]), k, int(p["items_per_interest"]), interest, p_noise, vi.height, neg_ratio)


def posterior(p_target: np.ndarray, model: Model) -> np.ndarray:
    """P(label 1 | h, c) from P_target(c | h) (module docstring formula)."""
    q, n = model.neg_ratio, max(model.n_items, 2)
    pos = (1 - q) * p_target
    neg = q * (1 - p_target) / (n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pos + neg > 0, pos / (pos + neg), 0.0)


def target_probability(latest_cate: np.ndarray, cand_item: np.ndarray, cand_cate: np.ndarray, model: Model) -> np.ndarray:
    """P_target(c | h) given the dense category of the latest visible interest event (0 = none visible)."""
    cand_item, cand_cate = np.asarray(cand_item, dtype=np.int64), np.asarray(cand_cate, dtype=np.int64)
    latest_cate = np.asarray(latest_cate, dtype=np.int64)
    cand_interest = model.interest[cand_cate]
    known = latest_cate > 0
    p_int = np.where(
        known,
        (cand_cate == latest_cate) / model.items_per_interest,
        cand_interest / (model.n_interest * model.items_per_interest),
    )
    return model.rho * p_int * cand_interest + (1 - model.rho) * model.p_noise[cand_item]


def bayes_scores(
    hist_item: np.ndarray,
    hist_cate: np.ndarray,
    hist_len: np.ndarray,
    cand_item: np.ndarray,
    cand_cate: np.ndarray,
    model: Model,
    window: int | None = None,
    padding: str = "front",
) -> np.ndarray:
    """Bayes-optimal P(label 1 | history, candidate) for samples given as fixed-width matrices.

    ``hist_item``/``hist_cate``: ``[n, width]`` dense ids, ``padding="front"`` (hpmn/mimn: zeros first,
    most recent event last) or ``"post"`` (plain: oldest first, zeros after); ``hist_len[i]`` real events.
    ``window``: use only the last ``window`` events (``None`` = all the row shows). Only the categories
    decide (``hist_item`` is accepted for a uniform call and checked for shape). The history the layout
    shows is itself the last ``width`` events: see "Limits of the rule" in the module docstring.
    """
    cate = np.asarray(hist_cate)
    if cate.ndim != 2 or np.shape(hist_item) != cate.shape:
        raise ValueError("hist_item and hist_cate must be [n, width] matrices of the same shape")
    n, width = cate.shape
    length = np.minimum(np.asarray(hist_len, dtype=np.int64), width)
    shown = length if window is None else np.minimum(length, int(window))
    j = np.arange(width)[None, :]
    if padding == "front":
        visible = j >= (width - shown)[:, None]
    elif padding == "post":
        visible = (j < length[:, None]) & (j >= (length - shown)[:, None])
    else:
        raise ValueError("padding must be 'front' or 'post'")
    hit = visible & model.interest[cate]
    last = width - 1 - np.argmax(hit[:, ::-1], axis=1)  # most recent visible interest position
    latest = np.where(hit.any(axis=1), cate[np.arange(n), last], 0)
    return posterior(target_probability(latest, cand_item, cand_cate, model), model)


def bayes_scores_window(hist_item, hist_cate, hist_len, cand_item, cand_cate, model: Model, window: int, padding: str = "front") -> np.ndarray:
    """:func:`bayes_scores` restricted to the last ``window`` history events (the best a window-``window`` model can do)."""
    return bayes_scores(hist_item, hist_cate, hist_len, cand_item, cand_cate, model, window=window, padding=padding)


def layout_scores(path: str | Path, model: Model, window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(label, Bayes score) for one front-padded layout file (``layouts/hpmn/test.parquet``, ...)."""
    df = pl.read_parquet(path, columns=["hist_item", "hist_cate", "hist_len", "item", "cate", "label"])
    width = df.schema["hist_cate"].size
    mat = lambda c: df[c].to_numpy().reshape(df.height, width) if df.height else np.zeros((0, width), np.int32)
    s = bayes_scores(mat("hist_item"), mat("hist_cate"), df["hist_len"].to_numpy(), df["item"].to_numpy(),
                     df["cate"].to_numpy(), model, window=window)
    return df["label"].to_numpy(), s


def dataset_scores(root: str | Path, model: Model | None = None, window: int | None = None) -> pl.DataFrame:
    """Bayes scores of every sample in ``split/samples.parquet`` on the stored (untruncated) histories.

    Returns ``user, split, label, score``; ``window=None`` is the full history, else its last ``window`` events.
    """
    from lsdata.samples import flat_list

    root = Path(root)
    model = model or model_for_dataset(root)
    samples = pl.read_parquet(root / "split" / "samples.parquet", columns=["user", "split", "label", "item", "cate", "hist_end"])
    out = []
    for part in sorted((root / "sequences").glob("part-*.parquet")):
        seq = pl.read_parquet(part, columns=["user", "cate"])
        s = samples.join(seq.select("user"), on="user", how="semi")
        if s.height == 0:
            continue
        cate, off = flat_list(seq["cate"])
        users = seq["user"].to_numpy()
        start = off[np.searchsorted(users, s["user"].to_numpy())]
        end = start + s["hist_end"].to_numpy()
        idx = np.arange(cate.size)
        last_int = np.maximum.accumulate(np.where(model.interest[cate], idx, -1))
        latest_pos = np.where(end > start, last_int[np.maximum(end - 1, 0)], -1)
        lo = start if window is None else np.maximum(start, end - int(window))
        ok = latest_pos >= lo
        latest = np.where(ok, cate[np.maximum(latest_pos, 0)], 0)
        score = posterior(target_probability(latest, s["item"].to_numpy(), s["cate"].to_numpy(), model), model)
        out.append(s.select("user", "split", "label").with_columns(pl.Series("score", score)))
    return pl.concat(out).sort("user", "split")


def bayes_aucs(root: str | Path, split: str | None = "test", windows: tuple[int | None, ...] = (None, 300, 50)) -> dict[str, float]:
    """Bayes AUC per window on the stored histories of one split (``None`` = all samples).

    Keys: ``"full"`` for ``None``, else ``"w{W}"``.
    """
    from lsdata.metrics import auc

    model = model_for_dataset(root)
    res = {}
    for w in windows:
        df = dataset_scores(root, model, w)
        if split is not None:
            df = df.filter(pl.col("split") == split)
        res["full" if w is None else f"w{w}"] = auc(df["label"].to_numpy(), df["score"].to_numpy())
    return res
