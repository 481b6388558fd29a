"""Layout datasets: one front-padded batch contract for every layout, seeded sharding and reshuffling."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lsdata.loader import EpochSampler, LayoutDataset, StreamingLayoutDataset, collate, front_align, layout_file


def test_front_align_moves_the_real_values_to_the_end():
    m = np.array([[1, 2, 0, 0], [3, 0, 0, 0], [4, 5, 6, 7], [0, 0, 0, 0]])
    out = front_align(m, np.array([2, 1, 4, 0]))
    assert out.tolist() == [[0, 0, 1, 2], [0, 0, 0, 3], [4, 5, 6, 7], [0, 0, 0, 0]]


def test_plain_layout_reads_as_the_same_front_padded_history_as_hpmn(taobao_layouts):
    plain = LayoutDataset(layout_file(taobao_layouts, "plain", "train"), "plain")
    hpmn = LayoutDataset(layout_file(taobao_layouts, "hpmn", "train"), "hpmn")
    for k in ("hist_item", "hist_cate", "hist_behavior", "hist_len", "label", "item", "user"):
        np.testing.assert_array_equal(plain.cols[k], hpmn.cols[k])


def test_shan_short_part_is_front_aligned_and_continues_the_long_part(taobao_layouts):
    shan = LayoutDataset(layout_file(taobao_layouts, "shan", "train"), "shan")
    hpmn = LayoutDataset(layout_file(taobao_layouts, "hpmn", "train"), "hpmn")
    c, h = shan.cols, hpmn.cols
    for i in range(len(shan)):
        ls, ss = int(c["long_len"][i]), int(c["short_len"][i])
        joined = np.concatenate([c["long_item"][i][c["long_item"].shape[1] - ls:], c["short_item"][i][c["short_item"].shape[1] - ss:]])
        n = int(h["hist_len"][i])
        tail = h["hist_item"][i][h["hist_item"].shape[1] - n:]
        assert joined.tolist() == tail[len(tail) - len(joined):].tolist()


def test_batches_have_the_documented_names_and_dtypes(taobao_layouts):
    ds = LayoutDataset(layout_file(taobao_layouts, "mimn", "train"), "mimn")
    b = ds.__getitems__([0, 1, 2])
    assert b["label"].dtype == torch.float32 and b["ts"].dtype == torch.int64
    for k in ("user", "item", "cate", "hist_item", "hist_cate", "hist_behavior", "hist_len", "neg_item", "neg_cate", "side_user"):
        assert b[k].dtype == torch.int32, k
    assert b["hist_item"].shape == (3, 200) and b["neg_item"].shape == (3, 200)
    one = ds[0]
    assert torch.equal(collate([one])["hist_item"][0], b["hist_item"][0])


def test_epoch_sampler_shards_cover_every_row_once_and_reshuffle_per_epoch():
    n = 103
    shards = [EpochSampler(n, 10, True, seed=5, rank=r, world_size=2) for r in range(2)]
    rows = [np.concatenate([np.array(b) for b in s]) for s in shards]
    assert len(rows[0]) == len(rows[1])  # equal step counts on every rank
    assert set(np.concatenate(rows)) == set(range(n))
    first = list(EpochSampler(n, 10, True, seed=5))
    again = list(EpochSampler(n, 10, True, seed=5))
    s1 = EpochSampler(n, 10, True, seed=5)
    s1.set_epoch(1)
    assert first == again and first != list(s1)
    s1.set_epoch(1, skip_batches=3)
    assert len(list(s1)) == len(first) - 3


def _table(n: int, path, row_group: int):
    t = pa.table({
        "user": pa.array(np.arange(n, dtype=np.int32)), "label": pa.array(np.arange(n) % 2, pa.int8()),
        "item": pa.array(np.arange(n, dtype=np.int32)),
        "hist_item": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(np.arange(n, dtype=np.int32), 3)), 3),
    })
    pq.write_table(t, path, row_group_size=row_group)


def test_streaming_dataset_gives_every_row_to_exactly_one_rank_and_worker(tmp_path):
    for row_group in (7, 1000):  # many row groups (split by group) and one (split by row)
        p = tmp_path / f"t{row_group}.parquet"
        _table(100, p, row_group)
        seen = []
        for rank in range(2):
            ds = StreamingLayoutDataset(p, "hpmn", batch_size=8, seed=3, rank=rank, world_size=2)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
            for b in loader:
                assert torch.equal(b["hist_item"][:, 0], b["user"])  # rows stay intact
                seen.extend(b["user"].tolist())
        assert sorted(seen) == list(range(100)), row_group


def test_streaming_order_is_a_function_of_seed_and_epoch(tmp_path):
    p = tmp_path / "t.parquet"
    _table(50, p, 10)
    ds = StreamingLayoutDataset(p, "hpmn", batch_size=50, seed=1)
    a = next(iter(ds))["user"].tolist()
    assert a == next(iter(ds))["user"].tolist()
    ds.set_epoch(1)
    b = next(iter(ds))["user"].tolist()
    assert a != b and sorted(a) == sorted(b) == list(range(50))


def test_map_dataset_works_with_worker_processes(taobao_layouts):
    ds = LayoutDataset(layout_file(taobao_layouts, "hpmn", "train"), "hpmn")
    batches = {}
    for w in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_sampler=EpochSampler(len(ds), 8, True, 0), collate_fn=collate, num_workers=w)
        batches[w] = [b["user"].tolist() for b in loader]
    assert batches[0] == batches[2]
