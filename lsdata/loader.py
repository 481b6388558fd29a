"""PyTorch datasets over a layout: ``layouts/NAME/{train,valid,test}.parquet`` -> dicts of tensors.

The batch contract (every model reads only these names)
-------------------------------------------------------
=================================  ==========  =========  ==================================================
key                                dtype       shape      meaning
=================================  ==========  =========  ==================================================
``label``                          float32     [B]        1 = the true next event, 0 = a sampled negative
``user``, ``item``, ``cate``       int32       [B]        dense ids; ``item``/``cate`` = the candidate
``ts``                             int64       [B]        target time; every sequence below is strictly earlier
``hist_item/cate/behavior``        int32       [B, L]     the user's history, **front-padded** (0 first, most
                                                          recent event last) whatever the layout's padding side
``hist_len``                       int32       [B]        real events in ``hist_*`` (<= L)
``side_user/behavior``, ``side_len``  int32    [B, S]     item side: users who touched the candidate before ts
``neg_item/cate``                  int32       [B, L]     ``mimn`` only: per-position negatives, aligned with hist
``long_*``/``short_*``, ``side_long_*``/``side_short_*``  ``shan`` only: the crop, each part front-padded
=================================  ==========  =========  ==================================================

One alignment for all layouts keeps models layout-agnostic: the ``plain`` layout's post-padded arrays are
re-aligned once when loaded. The target is never inside ``hist_*``; a model that reproduces the reference's
"candidate as the last step" appends it itself.

Two datasets
------------
* :class:`LayoutDataset` (map-style) decodes the Parquet file once into NumPy buffers; ``ds[i]`` returns
  zero-copy tensor views of row ``i`` and ``ds.__getitems__(idx)`` a whole batch with one fancy-index per
  column (``torch.utils.data.DataLoader`` calls it when given a batch sampler). Use with
  :class:`EpochSampler` for seeded per-epoch shuffling and DDP sharding.
* :class:`StreamingLayoutDataset` (iterable) reads one Parquet row group at a time, for data bigger than
  RAM: row groups (or, when there are fewer row groups than shards, rows) are split over
  ``world_size x num_workers`` shards, and the row-group order and rows within a group are reshuffled each
  epoch from ``seed + epoch`` (call :meth:`set_epoch`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, Sampler, get_worker_info

# ds[i] hands out read-only zero-copy views of the Arrow buffers on purpose
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

#: list columns whose real values are post-padded in a layout's Parquet file (re-aligned to the front here)
POST_PADDED = {
    "plain": {"hist_len": ("hist_item", "hist_cate", "hist_behavior"), "side_len": ("side_user", "side_behavior")},
    "shan": {"short_len": ("short_item", "short_cate", "short_behavior"), "side_short_len": ("side_short_user", "side_short_behavior")},
}


def front_align(matrix: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Move each row's first ``lengths[i]`` values to the end of the row (post- to front-padding)."""
    n, w = matrix.shape
    shift = (w - np.minimum(lengths, w)).astype(np.int64)
    src = np.arange(w, dtype=np.int64)[None, :] - shift[:, None]
    out = np.take_along_axis(matrix, np.clip(src, 0, w - 1), axis=1)
    out[src < 0] = 0
    return out


def _column(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A (fixed-size-list) Arrow column as a NumPy array, ``[n]`` or ``[n, width]`` (zero copy if one chunk)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        flat = col.flatten() if col.offset else col.values
        return flat.to_numpy(zero_copy_only=False).reshape(-1, width)
    return col.to_numpy(zero_copy_only=False)


def table_arrays(table: pa.Table, layout: str) -> dict[str, np.ndarray]:
    """NumPy arrays of a layout table under the batch contract (front-aligned, ``label`` float32)."""
    cols = {name: _column(table.column(name)) for name in table.column_names}
    for len_col, names in POST_PADDED.get(layout, {}).items():
        for name in names:
            cols[name] = front_align(cols[name], cols[len_col])
    cols["label"] = cols["label"].astype(np.float32)
    return cols


def to_tensors(cols: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors for the batch contract: int8 codes widened to int32, everything else as stored."""
    out = {}
    for k, v in cols.items():
        if v.dtype == np.int8:
            v = v.astype(np.int32)
        out[k] = torch.from_numpy(np.ascontiguousarray(v))
    return out


def layout_file(root: str | Path, layout: str, split: str) -> Path:
    return Path(root) / "layouts" / layout / f"{split}.parquet"


class LayoutDataset(torch.utils.data.Dataset):
    """Map-style dataset over one split of one layout, decoded once into memory."""

    def __init__(self, path: str | Path, layout: str, columns: Sequence[str] | None = None):
        self.path = Path(path)
        self.layout = layout
        table = pq.read_table(self.path, columns=list(columns) if columns else None)
        self.cols = table_arrays(table, layout)
        self.n = table.num_rows

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(v[i])) for k, v in self.cols.items()}

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        return to_tensors({k: v[idx] for k, v in self.cols.items()})


def collate(batch) -> dict[str, torch.Tensor]:
    """Collate for both datasets: a ready batch dict passes through; a list of row dicts is stacked."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.stack([b[k] for b in batch]).to(torch.int32 if batch[0][k].dtype == torch.int8 else batch[0][k].dtype) for k in batch[0]}


class EpochSampler(Sampler[list[int]]):
    """Batches of indices: a permutation from ``seed + epoch`` (or the identity), this rank's share of it.

    With ``world_size > 1`` the permutation is padded by wrapping to a multiple of ``world_size`` and rank
    ``r`` takes every ``world_size``-th index from ``r`` (as ``DistributedSampler``), so every rank runs the
    same number of batches. ``skip_batches`` resumes an epoch in the middle (``--resume``).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def indices(self) -> np.ndarray:
        idx = np.random.default_rng(self.seed + self.epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.world_size > 1:
            total = -(-self.n // self.world_size) * self.world_size
            idx = np.resize(idx, total)[self.rank :: self.world_size]
        return idx

    def __len__(self) -> int:
        m = len(self.indices()) if self.world_size > 1 else self.n
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.indices()
        stop = (idx.size // self.batch_size) * self.batch_size if self.drop_last else idx.size
        for b, s in enumerate(range(0, stop, self.batch_size)):
            if b >= self.skip_batches:
                yield idx[s : s + self.batch_size].tolist()


class StreamingLayoutDataset(IterableDataset):
    """Iterable dataset that streams row groups and yields ready batches (use ``batch_size=None``)."""

    def __init__(self, path: str | Path, layout: str, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, columns: Sequence[str] | None = None):
        self.path, self.layout = Path(path), layout
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.columns = list(columns) if columns else None
        self.epoch = 0
        meta = pq.ParquetFile(self.path).metadata
        self.row_groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        shard, n_shards = self._shard()
        rng = np.random.default_rng(self.seed + self.epoch)
        groups = rng.permutation(len(self.row_groups)) if self.shuffle else np.arange(len(self.row_groups))
        by_group = len(self.row_groups) >= n_shards
        mine = groups[shard::n_shards] if by_group else groups
        f = pq.ParquetFile(self.path)
        buf: dict[str, np.ndarray] | None = None
        for g in mine:
            cols = table_arrays(f.read_row_group(int(g), columns=self.columns), self.layout)
            n = cols["label"].shape[0]
            rows = np.arange(n) if by_group else np.arange(shard, n, n_shards)
            if self.shuffle:
                rows = np.random.default_rng([self.seed, self.epoch, int(g)]).permutation(rows)
            new = {k: v[rows] for k, v in cols.items()}
            buf = new if buf is None else {k: np.concatenate([buf[k], new[k]]) for k in new}
            full = (buf["label"].shape[0] // self.batch_size) * self.batch_size
            for s in range(0, full, self.batch_size):
                yield to_tensors({k: v[s : s + self.batch_size] for k, v in buf.items()})
            buf = {k: v[full:] for k, v in buf.items()}
        if buf is not None and buf["label"].shape[0]:
            yield to_tensors(buf)
