"""Padded and cropped views over sequences that are stored once.

A sequence set is flat value arrays plus, per sample, a half-open range ``[start, end)`` into them
(the sample's history). Every layout is built from these few vectorised operations; nothing here
loops over samples in Python.

* :func:`window` picks the most recent ``width`` positions of each range, front- or post-padded.
* :func:`split_window` is the reference ``crop``: a short part (most recent) and a long part (older).
* :func:`gather` reads values at those positions, writing ``fill`` (0 = padding) elsewhere.
* :func:`fixed_list` wraps an ``[n, width]`` matrix as an Arrow fixed-size-list column (zero copy).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

Side = Literal["front", "post"]


def window(starts: np.ndarray, ends: np.ndarray, width: int, side: Side) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the last ``min(width, end-start)`` elements of each range.

    Returns ``(idx, mask, length)``: ``idx[i, j]`` is a flat position (only meaningful where
    ``mask[i, j]``), ``length[i]`` the number of real positions. With ``side="front"`` the real
    positions are right-aligned (zeros first, most recent last, as HPMN); with ``"post"`` they are
    left-aligned (oldest kept first, zeros after, as the reference's post-padding).

    >>> idx, mask, n = window(np.array([0, 5]), np.array([3, 6]), 2, "front")
    >>> idx[mask].tolist(), n.tolist()
    ([1, 2, 5], [2, 1])
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    length = np.minimum(np.maximum(ends - starts, 0), width)
    j = np.arange(width, dtype=np.int64)[None, :]
    if side == "front":
        idx = ends[:, None] - width + j
        mask = j >= (width - length)[:, None]
    else:
        idx = (ends - length)[:, None] + j
        mask = j < length[:, None]
    return idx, mask, length.astype(np.int32)


def split_window(
    starts: np.ndarray, ends: np.ndarray, long: int, short: int
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The reference ``crop`` (HPMN ``util.crop``), on history ranges.

    If a range has fewer than ``short`` elements, they all go to the short part (post-padded) and the
    long part is empty. Otherwise the short part is the most recent ``short`` elements and the long part
    the up to ``long`` elements before them, front-padded so that it ends where the short part begins.
    Returns ``((long_idx, long_mask, long_len), (short_idx, short_mask, short_len))``.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    short_part = window(starts, ends, short, "post")
    long_end = np.where(ends - starts >= short, ends - short, starts)
    long_part = window(starts, long_end, long, "front")
    return long_part, short_part


def gather(values: np.ndarray, idx: np.ndarray, mask: np.ndarray, fill: int = 0) -> np.ndarray:
    """``values[idx]`` where ``mask``, ``fill`` elsewhere (safe for out-of-range masked positions)."""
    if values.size == 0:
        return np.full(idx.shape, fill, dtype=values.dtype)
    out = values.take(idx, mode="clip")
    out[~mask] = fill
    return out


def fixed_list(matrix: np.ndarray, type_: pa.DataType) -> pa.FixedSizeListArray:
    """An ``[n, width]`` matrix as a fixed-size-list Arrow array of ``type_`` values."""
    n, width = matrix.shape
    flat = pa.array(np.ascontiguousarray(matrix, dtype=type_.to_pandas_dtype()).reshape(-1), type_)
    return pa.FixedSizeListArray.from_arrays(flat, width)

