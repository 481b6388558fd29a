"""Padded and cropped views over sequences that are stored once.

A sequence set is flat value arrays plus, per sample, a half-open range ``[start, end)`` into them
(the sample's history). Every layout is built from these few vectorised operations; nothing here
loops over samples in Python.

* :func:`window` picks the most recent ``width`` positions of each range, front- or post-padded.
* :func:`split_window` is the reference ``crop``: a short part (most recent) and a long part (older).
* :func:`gather` reads values at those positions, writing ``fill`` (0 = padding) elsewhere.
* :func:`window_rows` / :func:`split_window_rows` / :func:`take`: the same windows as one start position per row,
  read as one contiguous copy per row from zero-padded values (:func:`pad_values`): what layouts use (faster than
  a gather of every position; same result).
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
    first, mask, length = window_rows(starts, ends, width, side)
    return _positions(first, width), mask, length


def _positions(first: np.ndarray, width: int) -> np.ndarray:
    return first[:, None] + np.arange(width, dtype=np.int64)[None, :]


def window_rows(starts: np.ndarray, ends: np.ndarray, width: int, side: Side) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`window` with each row's positions given by their first: ``(first, mask, length)``, row ``i`` covers the
    flat positions ``first[i], ..., first[i] + width - 1`` (read them with :func:`take`).

    >>> first, mask, n = window_rows(np.array([0, 5]), np.array([3, 6]), 2, "front")
    >>> first.tolist(), mask.tolist(), n.tolist()
    ([1, 4], [[True, True], [False, True]], [2, 1])
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    length = np.minimum(np.maximum(ends - starts, 0), width)
    j = np.arange(width, dtype=np.int64)[None, :]
    if side == "front":
        first = ends - width
        mask = j >= (width - length)[:, None]
    else:
        first = ends - length
        mask = j < length[:, None]
    return first, mask, length.astype(np.int32)


def split_window(
    starts: np.ndarray, ends: np.ndarray, long: int, short: int
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The reference ``crop`` (HPMN ``util.crop``), on history ranges.

    If a range has fewer than ``short`` elements, they all go to the short part (post-padded) and the
    long part is empty. Otherwise the short part is the most recent ``short`` elements and the long part
    the up to ``long`` elements before them, front-padded so that it ends where the short part begins.
    Returns ``((long_idx, long_mask, long_len), (short_idx, short_mask, short_len))``.
    """
    (long_first, *long_rest), (short_first, *short_rest) = split_window_rows(starts, ends, long, short)
    return (_positions(long_first, long), *long_rest), (_positions(short_first, short), *short_rest)


def split_window_rows(
    starts: np.ndarray, ends: np.ndarray, long: int, short: int
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`split_window` as :func:`window_rows`: ``((long_first, long_mask, long_len), (short_first, ...))``."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    short_part = window_rows(starts, ends, short, "post")
    long_end = np.where(ends - starts >= short, ends - short, starts)
    long_part = window_rows(starts, long_end, long, "front")
    return long_part, short_part


def pad_values(values: np.ndarray, pad: int) -> np.ndarray:
    """``values`` with ``pad`` zeros before and after (for :func:`take` with windows up to ``pad`` wide)."""
    out = np.zeros(values.size + 2 * pad, dtype=values.dtype)
    out[pad : pad + values.size] = values
    return out


def take(
    padded: np.ndarray, pad: int, first: np.ndarray, mask: np.ndarray, fill: int = 0, holes: np.ndarray | None = None
) -> np.ndarray:
    """``gather(values, idx, mask, fill)`` for a window from :func:`window_rows` (``idx = first + 0..width-1``), with
    ``padded = pad_values(values, pad)`` and ``pad >= width``: each row is one contiguous slice of ``padded``
    (``holes``: ``~mask``, when the caller reads several fields over the same window)."""
    n, width = mask.shape
    if width > pad:
        raise ValueError(f"take: window width {width} > padding {pad}")
    rows = np.lib.stride_tricks.sliding_window_view(padded, width)
    out = rows[np.clip(np.asarray(first, dtype=np.int64) + pad, 0, rows.shape[0] - 1)]
    np.copyto(out, fill, where=~mask if holes is None else holes)
    return out


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
    return pa.FixedSizeListArray.from_arrays(arrow_array(matrix, type_), width)


def arrow_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A numpy array of fixed-width numbers, flattened, as an Arrow array of ``type_`` without nulls (zero copy when
    the dtype matches). Unlike ``pa.array`` it does not import pandas (0.2-0.4 s at the start of every command)."""
    flat = np.ascontiguousarray(values, dtype=type_.to_pandas_dtype()).reshape(-1)
    return pa.Array.from_buffers(type_, flat.size, [None, pa.py_buffer(flat)])

