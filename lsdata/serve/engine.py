"""A trained run loaded for serving: vocabularies, model version, state codec, vectorised fold and score."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from lsdata.defaults import Behavior
from lsdata.io import InputError
from lsdata.serve.state import READY, Conflict, Record, clear

BEHAVIORS = {b.name: int(b) for b in Behavior if b != Behavior.pad}


def model_version(run_dir: str | Path) -> str:
    """sha256 over the run's ``config.json`` and the checkpoint it is served with (first 16 hex digits)."""
    from lsdata.train import run_weights

    h = hashlib.sha256()
    for p in (Path(run_dir) / "config.json", run_weights(run_dir)):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while b := f.read(1 << 22):
                h.update(b)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# state <-> bytes
# ---------------------------------------------------------------------------------------------------------


def _flatten(state: Any) -> tuple[list[torch.Tensor | None], Any]:
    """Leaves (tensors or None) and a structure to rebuild ``state`` (a tensor, or nested tuples, NamedTuples
    and dicts)."""
    if state is None or isinstance(state, torch.Tensor):
        return [state], None
    if isinstance(state, dict):
        leaves, sub = _flatten(tuple(state.values()))
        return leaves, (dict, list(state), sub)
    if not isinstance(state, (tuple, list)):
        raise TypeError(f"cannot serialise a state part of type {type(state).__name__}")
    leaves, subs = [], []
    for x in state:
        lv, sub = _flatten(x)
        leaves += lv
        subs.append((len(lv), sub))
    return leaves, (type(state), subs)


def _unflatten(leaves: list, tree: Any) -> Any:
    if tree is None:
        return leaves[0]
    if tree[0] is dict:
        return dict(zip(tree[1], _unflatten(leaves, tree[2])))
    kind, subs, parts, i = tree[0], tree[1], [], 0
    for n, sub in subs:
        parts.append(_unflatten(leaves[i: i + n], sub))
        i += n
    return kind(*parts) if hasattr(kind, "_fields") else kind(parts)


class StateCodec:
    """A batch of ``B`` users' states <-> ``B`` byte strings (each leaf's row as raw bytes, concatenated):
    exact (no float rounding), and encoding / decoding is one numpy reshape per leaf for the whole batch."""

    def __init__(self, template: Any):
        leaves, self.tree = _flatten(template)
        self.leaves = [None if x is None else (tuple(x.shape[1:]), x.detach().cpu().numpy().dtype) for x in leaves]
        self.sizes = [0 if s is None else int(np.prod(s[0], dtype=np.int64)) * s[1].itemsize for s in self.leaves]
        self.nbytes = sum(self.sizes)
        self.empty = self.encode(template)[0]

    def encode(self, state: Any) -> list[bytes]:
        leaves, _ = _flatten(state)
        cols = [x.detach().cpu().contiguous().numpy().reshape(x.shape[0], -1).view(np.uint8)
                for x in leaves if x is not None]
        mat = np.ascontiguousarray(np.concatenate(cols, 1))
        return [row.tobytes() for row in mat]

    def decode(self, blobs: list[bytes]) -> Any:
        bad = [i for i, b in enumerate(blobs) if len(b) != self.nbytes]
        if bad:
            raise Conflict(f"stored state has {len(blobs[bad[0]])} bytes, this model's state has {self.nbytes}")
        mat = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), self.nbytes)
        out, off = [], 0
        for spec, size in zip(self.leaves, self.sizes):
            if spec is None:
                out.append(None)
                continue
            shape, dtype = spec
            arr = mat[:, off: off + size].copy().view(dtype).reshape(len(blobs), *shape)
            out.append(torch.from_numpy(arr))
            off += size
        return _unflatten(out, self.tree)


# ---------------------------------------------------------------------------------------------------------
# raw ids
# ---------------------------------------------------------------------------------------------------------


class Vocab:
    """Raw id -> dense id of one vocabulary (sorted keys, binary search: compact for millions of ids)."""

    def __init__(self, path: Path, extra: str | None = None):
        df = pl.read_parquet(path, columns=["id", "raw", *([extra] if extra else [])]).sort("raw")
        self.numeric = df.schema["raw"].is_integer()
        self.keys = df["raw"].to_numpy() if self.numeric else np.array(df["raw"].to_list(), dtype=str)
        self.ids = df["id"].to_numpy().astype(np.int64)
        self.size = int(self.ids.max()) if len(self.ids) else 0
        self.extra = None
        if extra:  # dense id -> extra column (the item's category)
            self.extra = np.zeros(self.size + 1, np.int64)
            self.extra[self.ids] = df[extra].to_numpy()
        self.raw_of = np.empty(self.size + 1, dtype=self.keys.dtype)
        self.raw_of[self.ids] = self.keys

    def lookup(self, raws: list) -> np.ndarray:
        """Dense ids (0 = unknown) of raw ids given as JSON ints or strings."""
        if self.numeric:
            q = np.array([_as_int(r) for r in raws], dtype=np.int64)
        else:
            q = np.array([str(r) for r in raws], dtype=self.keys.dtype if len(self.keys) else str)
        pos = np.searchsorted(self.keys, q).clip(0, max(len(self.keys) - 1, 0))
        hit = (self.keys[pos] == q) if len(self.keys) else np.zeros(len(q), bool)
        if self.numeric:
            hit &= q != np.iinfo(np.int64).min
        return np.where(hit, self.ids[pos] if len(self.ids) else 0, 0)

    def raw(self, dense: int) -> int | str:
        v = self.raw_of[dense]
        return int(v) if self.numeric else str(v)


def _as_int(r) -> int:
    if isinstance(r, int):
        return r
    try:
        return int(r)
    except (TypeError, ValueError):
        return np.iinfo(np.int64).min  # never a key: unknown


def behavior_code(b: int | str) -> int:
    """A behaviour name (``pv``, ``buy``, ...) or code (1..7) -> code; ValueError otherwise."""
    if isinstance(b, str) and b in BEHAVIORS:
        return BEHAVIORS[b]
    if isinstance(b, int) and b in BEHAVIORS.values():
        return b
    raise ValueError(f"unknown behavior {b!r}; use one of {', '.join(BEHAVIORS)} or their codes 1..{max(BEHAVIORS.values())}")


# ---------------------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Events:
    """Validated events in dense ids, grouped by user in request order."""

    users: list[int]  #: distinct dense users, first-seen order
    item: list[np.ndarray]
    cate: list[np.ndarray]
    behavior: list[np.ndarray]
    ts: list[np.ndarray]


class Engine:
    """One trained run, ready to fold events and score candidates for many users at once (CPU)."""

    def __init__(self, run_dir: str | Path, data: str | Path | None = None, threads: int | None = None):
        from lsdata.dataset import open_dataset
        from lsdata.train import load_run

        if threads:
            torch.set_num_threads(threads)
        self.run_dir = Path(run_dir)
        run = load_run(self.run_dir, str(data) if data else None, device="cpu")
        self.model = run.model.eval()
        self.name = run.cls.name
        if not getattr(run.cls, "incremental", False):
            raise InputError(f"{self.run_dir}: model {self.name!r} keeps no per-event user state; serve one of the "
                             "incremental models (lsdata models)")
        self.data = Path(run.cfg.data)
        self.dataset = open_dataset(self.data)
        self.version = model_version(self.run_dir)
        self.users = Vocab(self.dataset.vocab_path("user"))
        self.items = Vocab(self.dataset.vocab_path("item"), extra="cate")
        if self.items.size > self.model.spec.n_items or self.users.size != self.model.spec.n_users:
            raise InputError(f"{self.data}: vocabulary ({self.users.size} users, {self.items.size} items) differs from the "
                             f"one the run was trained on ({self.model.spec.n_users}, {self.model.spec.n_items})")
        with torch.inference_mode():
            self.codec = StateCodec(self.model.init_state(1))

    # -- state ---------------------------------------------------------------------------------------------
    def _states(self, users: list[int], current: dict[int, Record]):
        for u in users:
            r = current.get(u)
            if r is not None and r.version != self.version:
                raise Conflict(f"the state of user {self.users.raw(u)} was written by model version {r.version}, "
                               f"this server runs {self.version}")
        return self.codec.decode([current[u].blob if u in current else self.codec.empty for u in users])

    @torch.inference_mode()
    def fold(self, ev: Events, current: dict[int, Record]) -> dict[int, Record]:
        """New records after folding each user's events into its current state: one ``update`` call per
        event position for all users at once (shorter users padded with item 0, which ``update`` skips)."""
        for u, ts in zip(ev.users, ev.ts):
            last = current[u].last_ts if u in current else 0
            if ts[0] < last:
                raise Conflict(f"user {self.users.raw(u)}: event ts {int(ts[0])} is before the last folded event "
                               f"(ts {last}); events must arrive in time order")
        state = self._states(ev.users, current)
        lens = np.array([len(x) for x in ev.item])
        width = int(lens.max())

        def pad(parts: list[np.ndarray]) -> torch.Tensor:
            out = np.zeros((len(parts), width), np.int64)
            out[np.arange(width)[None, :] < lens[:, None]] = np.concatenate(parts)
            return torch.from_numpy(out)

        blobs = self.codec.encode(self.fold_matrix(state, pad(ev.item), pad(ev.cate), pad(ev.behavior)))
        return {u: Record(b, (current[u].events if u in current else 0) + int(n), int(ts[-1]), self.version)
                for u, b, n, ts in zip(ev.users, blobs, lens, ev.ts)}

    @torch.inference_mode()
    def fold_matrix(self, state: Any, item: torch.Tensor, cate: torch.Tensor, behavior: torch.Tensor) -> Any:
        """Fold ``[U, W]`` events (item 0 = no event) into a batch of ``U`` states, one position at a time."""
        for t in range(item.shape[1]):
            state = self.model.update(state, {"item": item[:, t], "cate": cate[:, t], "behavior": behavior[:, t]})
        return state

    @torch.inference_mode()
    def score(self, user: int, record: Record | None, items: np.ndarray) -> np.ndarray:
        """Logits of dense ``items`` for one user from its record (no record: the empty state)."""
        state = self._states([user], {user: record} if record is not None else {})
        idx = torch.zeros(len(items), dtype=torch.long)
        state = _unflatten([None if x is None else x[idx] for x in _flatten(state)[0]], self.codec.tree)
        it = torch.from_numpy(items.astype(np.int64))
        cand = {"item": it, "cate": torch.from_numpy(self.items.extra[items])}
        return self.model.score(state, cand).float().numpy()

    # -- the store's pin -----------------------------------------------------------------------------------
    def pin(self, store, reset: bool = False) -> dict:
        """Check (or, for an empty store or with ``reset``, claim) the store for this model version."""
        meta = store.meta()
        theirs = meta.get("model_version")
        if theirs is not None and not reset:
            if theirs != self.version:
                raise InputError(f"{store.url}: holds the state of model version {theirs} (run {meta.get('run')}), this "
                                 f"run is {self.version}: serve that run, or pass --reset to discard the state and warm up again")
            if meta.get("status", READY) != READY:
                raise InputError(f"{store.url}: status {meta.get('status')!r}: a warm-up or rollback was interrupted; "
                                 "redo it (--warmup-days / --rollback) or pass --reset")
            return meta
        if reset or store.count():
            clear(store)
        store.set_meta(model_version=self.version, model=self.name, run=str(self.run_dir.resolve()),
                       dataset=str(self.data.resolve()), status=READY)
        return store.meta()

