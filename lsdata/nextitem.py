"""Next-item samples over the stored sequences, without a padded copy per sample (issue #5).

A next-item sample is a pointer ``(row, target, hist_end)`` into the flat arrays of ``sequences/``: ``target``
is the flat position of the event to predict, the history is the user's events in ``[row start, hist_end)``,
and a batch's ``[B, L]`` windows are gathered on the fly with :func:`lsdata.views.window` (the most recent
``L`` history events, front-padded). Nothing per sample is materialised. Validation and test samples are
always of this kind (one target, predicted from the last position); training samples are too with
``--targets last``, or all-position windows with ``--targets all`` (below).

Which positions are targets
---------------------------
* **History = events strictly before the target's time** (the project-wide rule, ``lsdata/defaults.py``):
  ``hist_end`` is the first event of the user with the target's timestamp, so neither the target nor any
  event at or after its moment is ever in its history (a property test checks it for both protocols).
* **Warm-up** ``k`` (``NextItemOptions.warmup``): a position is a target only if it has at least ``k``
  history events.
* **Stride** ``s`` (``NextItemOptions.stride``, training targets only): of a user's training positions, every
  ``s``-th counted back from the most recent one (``s = 1``: every position, the sliding window). Validation
  and test keep every eligible position.
* **Horizon** ``T`` (``NextItemOptions.horizon``, ``--targets last`` training only; Caser's multi-target
  samples, :func:`extend_horizon`): each training history also predicts the next ``T - 1`` training targets after
  its own, each as a sample with that same (strictly earlier) history.

All-position training samples (``--targets all``, :func:`build_windows`, :class:`WindowDataset`)
-------------------------------------------------------------------------------------------------
Every input position is a target, as the official SASRec and DMAN train. A sample is a window ``(row, end)``:
inputs = the ``L`` events before flat position ``end`` (front-padded), targets = each input's next event, so the
window's targets are positions ``end - L + 1 .. end``. A user's windows are non-overlapping chunks of ``L``
counted back from the user's last counted training target (windows without a counted target are dropped), so
every counted training target is predicted exactly once per epoch. A target counts in the loss
(``pos_target > 0``) only if it is a training target of the split protocol that passes the warm-up (as above, no
stride: ``--stride`` applies to ``--targets last``). It is predicted from the causal model's output at its
**source**, the position of its last strictly earlier event (``hist_end - 1``; ``pos_source`` in the batch): a
causal output sees that input and earlier ones only, so no counted target's history holds an event at or after
its moment. Untied, the source is the position just before the target; a target tied in time with the events
before it (common in Amazon data, whose reviews have day granularity) reads the output before the tie, so it
sees exactly the history ``--targets last`` gives it. Tied targets whose source would lie before their window's
first input are not counted (they are rare: a tie across a window boundary). ``tied="skip"`` (``--tied-targets
skip``) instead drops every target tied with the event before it, the behaviour before tied targets counted.

Split protocols (read from the dataset's ``split/report.json``, i.e. ``lsdata split``)
--------------------------------------------------------------------------------------
* ``cut`` (default): the dataset's global cut time ``C`` and validation cut ``V``. Targets with ``ts > C``
  are test, ``V < ts <= C`` validation, ``ts <= V`` training: every training target is earlier than every
  validation target, every validation target earlier than every test target. Histories of later targets
  may contain events after a cut (they are still strictly before the target): the rolling evaluation.
* ``loo`` (leave-one-out, SASRec/Caser comparability): per user the last event is test, the second last
  validation, all earlier eligible positions training. It leaks global time: a training target of one user
  can be later than another user's test target.

Negative samplers (:class:`NegativeSampler`)
--------------------------------------------
Draws from weights over items ``1..I`` (``uniform``: all 1; ``popularity``: training-target counts to the
power ``alpha``) **excluding the positive exactly**: the positive's weight is cut out of the cumulative
distribution, no redraw loop, so a negative never equals its positive. Torch, vectorised, on the batch's
device; seeded through the ``torch.Generator`` passed in (the trainer uses the global one, seeded by
``--seed`` and saved in ``last.pt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from lsdata.dataset import Dataset
from lsdata.io import InputError
from lsdata.loader import to_tensors
from lsdata.samples import flat_list
from lsdata.split import LOO_WARNING
from lsdata.views import gather, window


@dataclass
class Sequences:
    """Every user's sequence as flat arrays: row ``r`` is ``[offsets[r], offsets[r + 1])``."""

    user: np.ndarray  # [U] dense user id of each row
    offsets: np.ndarray  # [U + 1] int64
    item: np.ndarray  # [n] int32
    cate: np.ndarray  # [n] int32
    behavior: np.ndarray  # [n] int8
    ts: np.ndarray  # [n] int64, non-decreasing inside a row

    @property
    def row_of(self) -> np.ndarray:
        """Row index of every flat position."""
        return np.repeat(np.arange(self.user.size, dtype=np.int32), np.diff(self.offsets))


def load_sequences(ds: Dataset) -> Sequences:
    """All ``sequences/`` parts of a dataset as of its version (appended events included), concatenated."""
    parts = ds.parts("sequences")
    if not parts:
        raise InputError(f"{ds.root}: no sequences/ (XLong arrives without per-user sequences)")
    df = pl.concat([ds.read("sequences", p, ["user", "item", "cate", "behavior", "ts"]) for p in parts]).rechunk()
    item, off = flat_list(df["item"])
    return Sequences(df["user"].to_numpy(), off, item, flat_list(df["cate"])[0], flat_list(df["behavior"])[0],
                     flat_list(df["ts"])[0].astype(np.int64))


def history_ends(seq: Sequences) -> np.ndarray:
    """Per flat position: the flat index of the user's first event with the same timestamp (= ``hist_end``)."""
    n = seq.ts.size
    row = seq.row_of
    new = np.ones(n, dtype=bool)
    new[1:] = (row[1:] != row[:-1]) | (seq.ts[1:] != seq.ts[:-1])
    return np.maximum.accumulate(np.where(new, np.arange(n, dtype=np.int64), 0))


@dataclass
class Index:
    """Samples of one set: sequence row, flat target position, flat history end (exclusive)."""

    row: np.ndarray
    target: np.ndarray
    hist_end: np.ndarray

    def __len__(self) -> int:
        return self.target.size


def build_index(seq: Sequences, method: str, cut: int | None, valid_cut: int | None, warmup: int,
                stride: int) -> dict[str, Index]:
    """Targets of each set (``train``/``valid``/``test``) under ``method`` (``cut`` or ``loo``); see the module doc."""
    row = seq.row_of
    pos = np.arange(seq.ts.size, dtype=np.int64)
    start = seq.offsets[:-1][row]
    back = seq.offsets[1:][row] - 1 - pos  # 0 = the user's last event
    hist_end = history_ends(seq)
    eligible = hist_end - start >= warmup
    if method == "loo":
        test, valid = back == 0, back == 1
    elif method == "cut":
        if cut is None:
            raise InputError("the cut-time split needs a cut time (re-run `lsdata split`)")
        test = seq.ts > cut
        valid = ~test & (seq.ts > valid_cut) if valid_cut is not None else np.zeros_like(test)
    else:
        raise InputError(f"unknown split method {method!r}")
    train = ~test & ~valid  # a prefix of every user's sequence under both rules
    n_train = np.bincount(row[train], minlength=seq.user.size)
    train &= (n_train[row] - 1 - (pos - start)) % stride == 0
    sets = {"train": train & eligible, "valid": valid & eligible, "test": test & eligible}
    return {k: Index(row[m], pos[m], hist_end[m]) for k, m in sets.items()}


def training_targets(seq: Sequences, method: str, cut: int | None, valid_cut: int | None, warmup: int) -> np.ndarray:
    """Bool ``[n]``: the flat positions that are training targets of the protocol and pass the warm-up, every one
    (no stride); a prefix of every row."""
    mask = np.zeros(seq.ts.size, dtype=bool)
    mask[build_index(seq, method, cut, valid_cut, warmup, 1)["train"].target] = True
    return mask


def extend_horizon(seq: Sequences, index: Index, train: np.ndarray, horizon: int) -> Index:
    """Multi-target training samples (Caser's ``T``, ``--horizon``): the history of each sample of ``index`` also
    predicts the ``horizon - 1`` events after its target, as long as they are training targets of the same row
    (``train``: :func:`training_targets`, before the stride). The
    history stays the sample's own, so it is strictly earlier than every target it predicts. Returns one
    single-target sample per (history, target) pair, grouped by history; ``horizon == 1`` returns ``index``."""
    if horizon == 1:
        return index
    tgt = index.target[:, None] + np.arange(horizon)  # [S, T]
    ok = (tgt < seq.offsets[index.row + 1][:, None]) & train.take(tgt, mode="clip")
    n = ok.sum(1)
    return Index(np.repeat(index.row, n), tgt[ok], np.repeat(index.hist_end, n))


@dataclass
class Windows:
    """All-position training samples (module doc): window ``i`` of row ``row[i]`` has as inputs the ``L`` events
    before flat position ``end[i]`` and as targets their next events; ``counted`` ``[n]`` marks, per flat
    position, the targets that count in the loss; ``source`` ``[n]`` is each flat position's last strictly
    earlier event (``hist_end - 1``), whose causal output predicts it."""

    row: np.ndarray
    end: np.ndarray
    counted: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return self.end.size


def build_windows(seq: Sequences, method: str, cut: int | None, valid_cut: int | None, warmup: int,
                  max_len: int, tied: str = "earlier") -> Windows:
    """Non-overlapping windows of ``max_len`` over every user's counted training targets (see the module doc);
    ``tied``: ``earlier`` = a target tied in time with the events before it is predicted from the output before
    the tie, ``skip`` = it does not count."""
    if tied not in ("earlier", "skip"):
        raise InputError(f"unknown tied-target rule {tied!r} (earlier | skip)")
    source = history_ends(seq) - 1  # the warm-up (>= 1) keeps every target's source in its own row
    counted = training_targets(seq, method, cut, valid_cut, warmup)
    if tied == "skip":
        counted[1:] &= seq.ts[:-1] < seq.ts[1:]
    pos = np.flatnonzero(counted)
    row = seq.row_of[pos]
    rows, at = np.unique(row, return_index=True)
    first = pos[at]
    last = pos[np.searchsorted(row, rows, side="right") - 1]
    last_of = last[np.searchsorted(rows, row)]
    win_end = last_of - (last_of - pos) // max_len * max_len  # the end of the window that holds target pos
    counted[pos[source[pos] < win_end - max_len]] = False  # its source lies before the window's first input
    n = (last - first) // max_len + 1  # windows per user
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # 0 = the user's most recent window
    end = np.repeat(last, n) - k * max_len
    lo = np.maximum(end - max_len, np.repeat(first, n) - 1)  # the window's targets are (lo, end] of this row
    before = np.r_[0, np.cumsum(counted)]  # before[p] = counted targets at flat positions < p
    keep = before[end + 1] > before[lo + 1]
    return Windows(np.repeat(rows, n)[keep].astype(np.int32), end[keep], counted, source)


def split_protocol(ds: Dataset) -> tuple[str, int | None, int | None, list[str]]:
    """``(method, cut_time, valid_cut_time, warnings)`` of the dataset's finished ``lsdata split``."""
    rep = ds.split_report()
    return rep.method, rep.cut_time, rep.valid_cut_time, [LOO_WARNING] if rep.method == "loo" else []


class NextItemDataset(torch.utils.data.Dataset):
    """Map-style dataset of one set's next-item samples; ``__getitems__`` builds a whole batch at once.

    Batch contract: ``user``, ``target``, ``target_cate`` int32 ``[B]``; ``ts`` int64 ``[B]`` (target time);
    ``hist_item``, ``hist_cate``, ``hist_behavior`` int32 ``[B, L]`` front-padded (most recent last);
    ``hist_len`` int32 ``[B]``.
    """

    def __init__(self, seq: Sequences, index: Index, max_len: int):
        self.seq, self.index, self.max_len = seq, index, max_len

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        s, t = self.seq, self.index.target[idx]
        rows = self.index.row[idx]
        hist, _, _ = _history(s, rows, self.index.hist_end[idx], self.max_len)
        return to_tensors({"user": s.user[rows], "target": s.item[t], "target_cate": s.cate[t], "ts": s.ts[t], **hist})

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def _history(s: Sequences, rows: np.ndarray, ends: np.ndarray, width: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """The front-padded ``hist_*`` columns of the ``width`` events before ``ends``, and the window's flat positions
    and mask."""
    win, mask, length = window(s.offsets[rows], ends, width, "front")
    return ({"hist_item": gather(s.item, win, mask), "hist_cate": gather(s.cate, win, mask),
             "hist_behavior": gather(s.behavior, win, mask), "hist_len": length}, win, mask)


class WindowDataset(NextItemDataset):
    """Map-style dataset of all-position training windows (``--targets all``).

    Batch contract: ``user`` int32 ``[B]``; ``hist_item``, ``hist_cate``, ``hist_behavior`` int32 ``[B, L]``
    front-padded (the window's inputs), ``hist_len`` ``[B]``; ``pos_target`` int32 ``[B, L]``: the target after
    input position ``j`` (the event following it), 0 where it does not count (padding, not a training target,
    skipped); ``pos_source`` int64 ``[B, L]``: the input position whose causal output predicts that target (``j``
    unless the target is tied in time with the events before it; ``j`` where it does not count).
    """

    def __init__(self, seq: Sequences, windows: Windows, max_len: int):
        self.seq, self.windows, self.max_len = seq, windows, max_len

    def __len__(self) -> int:
        return len(self.windows)

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        s, rows = self.seq, self.windows.row[idx]
        hist, win, mask = _history(s, rows, self.windows.end[idx], self.max_len)
        nxt = win + 1  # <= end: inside the row wherever mask holds
        counted = mask & self.windows.counted.take(nxt, mode="clip")
        slot = np.arange(self.max_len)
        source = np.where(counted, slot - (nxt - 1 - self.windows.source.take(nxt, mode="clip")), slot)
        return to_tensors({"user": s.user[rows], **hist, "pos_target": np.where(counted, s.item.take(nxt, mode="clip"), 0),
                           "pos_source": source.astype(np.int64)})


def popularity(seq: Sequences, targets: np.ndarray, n_items: int, alpha: float) -> np.ndarray:
    """Sampling weights ``count^alpha`` of each item among the training targets (flat positions ``targets``;
    index 0 = padding = 0)."""
    counts = np.bincount(seq.item[targets], minlength=n_items + 1).astype(np.float64)
    counts[0] = 0.0
    return counts**alpha


class NegativeSampler:
    """Negatives drawn from ``weights`` (``[I + 1]``, ``weights[0] = 0`` for padding), never the positive.

    The positive's interval is cut out of the cumulative weights: draw ``u`` uniform on the remaining mass and
    shift it past the positive's interval. Rows whose positive holds all the mass fall back to uniform over
    the other items.
    """

    def __init__(self, weights: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"):
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64), device=device)
        if w.ndim != 1 or w.numel() < 3:
            raise ValueError("need weights for padding + at least two items")
        w[0] = 0.0
        self.w, self.cum = w, torch.cumsum(w, 0)
        self.n_items = w.numel() - 1

    @classmethod
    def uniform(cls, n_items: int, device: torch.device | str = "cpu") -> NegativeSampler:
        return cls(np.r_[0.0, np.ones(n_items)], device)

    def prob(self, items: torch.Tensor) -> torch.Tensor:
        """Probability of drawing ``items`` (before the positive is cut out), for logQ corrections."""
        return self.w[items.long()] / self.cum[-1]

    def sample(self, pos: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, n]`` negatives (int64) for positives ``pos`` ``[B]``."""
        pos = pos.long().to(self.w.device)
        wp = self.w[pos][:, None]
        before = self.cum[pos][:, None] - wp
        rest = self.cum[-1] - wp
        u = torch.rand(pos.numel(), n, generator=generator, device=self.w.device, dtype=torch.float64)
        x = u * rest
        x = torch.where(x < before, x, x + wp)
        draw = torch.searchsorted(self.cum, x, right=True).clamp_(1, self.n_items)
        r = (u * (self.n_items - 1)).long().clamp_(max=self.n_items - 2) + 1  # uniform on 1..I-1
        fallback = r + (r >= pos[:, None]).long()  # skips the positive
        bad = (rest <= 0) | (draw == pos[:, None])  # float edge: a draw landing on the positive's boundary
        return torch.where(bad, fallback, draw)
