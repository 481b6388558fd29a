"""`hpmn_next`: HPMN's periodic memory with a next-item read (issue #5) - the memory is HPMN's streaming rule,
the scores are the documented formula (full ranking = an explicit per-item loop), shapes, gradients, overfitting
one batch, and `lsdata train hpmn_next` end to end (the trainer's full ranking goes through the model's scorer)."""

from __future__ import annotations

import json

import numpy as np
import torch

from lsdata import models
from lsdata.cli import app
from lsdata.dataset import open_dataset
from lsdata.models.base import DataSpec
from lsdata.models.hpmn_next import HPMNNext
from lsdata.models.memory import HPMN, periodic_fold
from lsdata.nextitem import NextItemDataset, build_index, load_sequences, split_protocol
from lsdata.ranking import ranking_metrics
from tests import test_nextitem
from tests.test_shan_next import cluster_dataset

taobao_split = test_nextitem.taobao_split  # the real Taobao slice through `lsdata ingest` + `lsdata split`


def _tiny(periods=(1, 2, 4), seed=3):
    spec = DataSpec("x", "sequences", 3, 7, 2)
    torch.manual_seed(seed)
    m = HPMNNext(spec, HPMNNext.make_params("x", {"emb_dim": 5, "cate_dim": 2, "hidden": 4, "max_len": 9,
                                                  "periods": periods}))
    hist = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 3], [0, 0, 0, 4, 5, 1, 7, 2, 2], [6, 1, 2, 3, 4, 5, 6, 7, 1]])
    batch = {"hist_item": hist, "hist_cate": (hist % 2 + 1) * (hist > 0), "hist_len": (hist > 0).sum(1),
             "user": torch.tensor([1, 2, 3])}
    return m, batch


def test_registered_with_hpmn_presets_and_a_scalable_loss():
    cls = models.get("hpmn_next")
    assert cls is HPMNNext and "hpmn_next" in models.MODEL_NAMES and cls.task == "next_item"
    assert {k: v["periods"] for k, v in cls.presets.items()} == {k: v["periods"] for k, v in HPMN.presets.items()}
    assert cls.train_defaults["loss"] == "sampled_softmax" and not cls.per_position()
    with np.testing.assert_raises(ValueError):
        HPMNNext.make_params("x", {"periods": (1, 3, 4)})


def test_slots_are_hpmns_streaming_memory():
    """encode's slots = HPMN's rule folded event by event from the window's first event (shared periodic_fold)."""
    m, batch = _tiny(periods=(1, 2, 4))
    with torch.no_grad():
        u, _ = m.encode(batch)
        e = torch.cat([m.item(batch["hist_item"]), m.cate(batch["hist_cate"])], -1)
        state = (torch.zeros(3, 3, 4), torch.zeros(3, dtype=torch.long))
        for t in range(9):
            state = periodic_fold(m.grus, m.p.periods, state, e[:, t], batch["hist_item"][:, t] > 0)
    torch.testing.assert_close(u.view(3, 3, 4), state[0], rtol=1e-5, atol=1e-6)
    assert (state[0][0, 1:] == 0).all() and (state[0][2] != 0).all()  # 1 event: only slot 1; 9 events: all slots


def test_full_ranking_scores_equal_an_explicit_per_item_loop():
    m, batch = _tiny()
    with torch.no_grad():
        m.bias.normal_()
        logits, extra = m(batch)
        u, _ = m.encode(batch)
        slots = u.view(3, 3, 4)
        for b in range(3):
            for i in range(1, 8):
                k = m.key.weight @ m.item.weight[i]  # W e_i
                s = torch.stack([slots[b, j] @ k for j in range(3)])
                want = (torch.softmax(s, 0) * s).sum() + m.bias[i]
                torch.testing.assert_close(logits[b, i], want, rtol=1e-5, atol=1e-6)
        items = torch.tensor([[2, 5, 7], [1, 1, 3], [6, 4, 2]])
        torch.testing.assert_close(m(batch, items)[0], logits.gather(1, items), rtol=1e-5, atol=1e-6)
    assert torch.isinf(logits[:, 0]).all() and extra > 0


def test_shapes_and_gradients_reach_every_parameter(taobao_split):
    # the zoo's checks on real data (Taobao preset: 4 slots, periods 1, 2, 4, 12; histories long enough for all)
    test_nextitem.test_model_shapes_and_gradients_reach_every_parameter("hpmn_next", taobao_split)


def test_overfits_one_batch(taobao_split):
    test_nextitem.test_model_overfits_one_batch("hpmn_next", taobao_split)


def test_lsdata_train_hpmn_next_end_to_end_ranks_with_the_models_scorer(tmp_path):
    data, out, run = cluster_dataset(tmp_path)
    r = run.invoke(app, ["train", "hpmn_next", str(data), "--out", str(out), "--epochs", "6", "--patience", "6",
                         "--device", "cpu", "--threads", "1", "--set", "emb_dim=16", "--set", "hidden=16",
                         "--set", "max_len=10", "--batch-size", "64", "--lr", "3e-3"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    conf = json.loads((out / "config.json").read_text())
    assert conf["split_method"] == "loo" and conf["loss"] == "sampled_softmax" and conf["negatives"] == 100
    assert conf["params"]["periods"] == [1, 2, 4] and m["test"]["n"] == 120  # the amazon preset
    assert m["test"]["full"]["hr@10"] >= 0.9, m["test"]["full"]  # random ranking of 30 items: 10/30
    # the trainer's full ranking = ranks from the model's own full logits (forward), target ties counted against it
    ds = open_dataset(data)
    seq = load_sequences(ds)
    method, cut, vcut, _ = split_protocol(ds)
    test = NextItemDataset(seq, build_index(seq, method, cut, vcut, 1, 1)["test"], 10)
    model = HPMNNext(DataSpec(ds.manifest.dataset, "sequences", ds.manifest.users, ds.manifest.items, ds.manifest.cates),
                     HPMNNext.Params.model_validate(conf["params"]))
    model.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        batch = test.__getitems__(np.arange(len(test)))
        logits, _ = model(batch)
        pos = batch["target"].long()
        tgt = logits.gather(1, pos[:, None])
        ranks = ((logits >= tgt).sum(1) - 1).numpy()
    want = ranking_metrics(ranks)
    assert set(want) == set(m["test"]["full"])
    for k, v in want.items():
        assert abs(m["test"]["full"][k] - v) < 1e-6, (k, v, m["test"]["full"][k])
