"""`shan_next`: SHAN in the next-item framing (issue #5) - the formula, shapes, gradients, overfitting one batch,
and `lsdata train shan_next` end to end on a small generated dataset with a learnable signal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lsdata import models
from lsdata.cli import app
from lsdata.models.base import DataSpec
from lsdata.models.shan import SHANAttention, SHANNext
from lsdata.nextitem_train import next_item_loss
from tests import test_nextitem

taobao_split = test_nextitem.taobao_split  # the fixture: the real Taobao slice through `lsdata ingest` + `lsdata split`


def _batch(root, n=16, **params):
    """16 training samples of the real Taobao slice spread over users (1-event histories up to full windows)."""
    _, batch, spec = test_nextitem._batch(root, "shan_next", n)
    torch.manual_seed(0)
    return SHANNext(spec, SHANNext.make_params(spec.dataset, params)), batch, spec


def test_registered_with_the_paper_loss():
    cls = models.get("shan_next")
    assert cls is SHANNext and cls.task == "next_item" and cls.layout == "sequences"
    assert cls.train_defaults["loss"] == "bpr" and cls.train_defaults["negatives"] == 1
    with pytest.raises(ValueError, match="short_len"):
        SHANNext.make_params("x", {"max_len": 2, "short_len": 2})


def test_user_vector_is_the_two_level_attention_of_the_paper():
    """u_hybrid recomputed by hand, per sample, from the formula (models.md §6 c), long and short sets disjoint."""
    spec = DataSpec("x", "sequences", 4, 9, 1)
    torch.manual_seed(1)
    m = SHANNext(spec, SHANNext.make_params("x", {"emb_dim": 6, "max_len": 5, "short_len": 2}))
    hist = torch.tensor([[0, 0, 0, 0, 3], [0, 0, 0, 4, 5], [0, 0, 7, 1, 2], [9, 8, 7, 6, 5]])
    batch = {"hist_item": hist, "hist_len": (hist > 0).sum(1), "user": torch.tensor([1, 2, 3, 4])}
    u, extra = m.encode(batch)
    assert extra.item() == 0.0  # regularisation off by default

    def level(att: SHANAttention, eu, xs):
        s = torch.stack([eu @ torch.relu(att.proj(x)) for x in xs])
        return (torch.softmax(s, 0)[:, None] * torch.stack(xs)).sum(0)

    with torch.no_grad():
        for b in range(hist.shape[0]):
            items = [int(i) for i in hist[b] if i > 0]
            eu = m.user.weight[b + 1]
            long_items, short_items = items[:-2], items[-2:]
            u_long = level(m.long_att, eu, [m.item.weight[i] for i in long_items]) if long_items else torch.zeros(6)
            want = level(m.short_att, eu, [u_long] + [m.item.weight[i] for i in short_items])
            torch.testing.assert_close(u[b], want, rtol=1e-5, atol=1e-6)
        logits, _ = m(batch)
        torch.testing.assert_close(logits[:, 1:], u @ m.item.weight[1:].T)


def test_regularisation_is_the_papers_squared_norms():
    spec = DataSpec("x", "sequences", 2, 6, 1)
    torch.manual_seed(2)
    m = SHANNext(spec, SHANNext.make_params("x", {"emb_dim": 4, "max_len": 4, "reg_att": 0.1, "reg_uv": 0.01}))
    batch = {"hist_item": torch.tensor([[0, 1, 2, 3], [4, 5, 6, 1]]), "hist_len": torch.tensor([3, 4]),
             "user": torch.tensor([1, 2])}
    items = torch.tensor([[2, 5], [3, 6]])
    _, extra = m(batch, items)
    with torch.no_grad():
        att = 0.1 * (m.long_att.proj.weight.pow(2).sum() + m.short_att.proj.weight.pow(2).sum())
        uv = 0.01 * (m.user.weight[1:3].pow(2).sum() + m.item.weight[items].pow(2).sum()) / 2
    torch.testing.assert_close(extra, att + uv)


def test_shapes_and_gradients_reach_every_parameter(taobao_split):
    # the zoo's checks (logit shapes, padding -inf, scored subsets = full logits, a gradient for every parameter)
    test_nextitem.test_model_shapes_and_gradients_reach_every_parameter("shan_next", taobao_split)
    model, batch, spec = _batch(taobao_split, reg_att=1e-3, reg_uv=1e-3)  # and with the regularisation on
    assert (batch["hist_len"] <= model.p.short_len).any() and (batch["hist_len"] == model.p.max_len).any()
    items = torch.cat([batch["target"].long()[:, None], torch.randint(1, spec.n_items + 1, (16, 1))], 1)
    sub, extra = model(batch, items)
    assert sub.shape == (16, 2) and extra > model(batch)[1] > 0  # the scored items' norms are added
    (next_item_loss("bpr", sub, None) + extra).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_overfits_one_batch_with_its_bpr_loss(taobao_split):
    model, batch, spec = _batch(taobao_split)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        neg = torch.randint(1, spec.n_items + 1, (16, 1), generator=gen)
        items = torch.cat([batch["target"].long()[:, None], neg], 1)
        loss = next_item_loss("bpr", model(batch, items)[0], None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        logits = model(batch)[0]
    ranks = (logits >= logits.gather(1, batch["target"].long()[:, None])).sum(1) - 1
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    assert (ranks < 10).float().mean() >= 0.75, ranks.tolist()


def _cluster_ratings(path, users=120, clusters=6, per=5, length=14, seed=0):
    """Ratings CSV where each user only rates items of one cluster of ``per`` items (random order, repeats
    allowed): the next item is predictable from the history (HR@10 ~1 for a model that learns it, ~0.33 for
    random ranking of the 30 items)."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(users):
        c = rng.integers(clusters)
        for k, i in enumerate(rng.integers(0, per, length)):
            lines.append(f"u{u},i{c * per + i},5,{1_500_000_000 + 3600 * k}\n")
    path.write_text("".join(lines))
    return path


def cluster_dataset(tmp_path):
    """The planted-cluster ratings through `lsdata ingest amazon` + `lsdata split --method loo`: (data, out, runner)."""
    csv = _cluster_ratings(tmp_path / "ratings.csv")
    data, out = tmp_path / "data", tmp_path / "run"
    run = CliRunner()
    for args in (["ingest", "amazon", str(csv), "--out", str(data)], ["split", str(data), "--method", "loo"]):
        r = run.invoke(app, args)
        assert r.exit_code == 0, r.output
    return data, out, run


def test_lsdata_train_shan_next_end_to_end_learns_a_planted_signal(tmp_path):
    data, out, run = cluster_dataset(tmp_path)
    r = run.invoke(app, ["train", "shan_next", str(data), "--out", str(out), "--epochs", "8", "--patience", "8",
                         "--device", "cpu", "--threads", "1", "--set", "emb_dim=16", "--set", "max_len=10",
                         "--set", "short_len=3", "--batch-size", "64"])
    assert r.exit_code == 0, r.output
    assert "test ndcg@10" in r.output
    m = json.loads((out / "metrics.json").read_text())
    conf = json.loads((out / "config.json").read_text())
    assert conf["split_method"] == "loo" and conf["loss"] == "bpr" and conf["negatives"] == 1
    assert m["test"]["n"] == 120 and conf["samples"]["train"] == 120 * 11
    assert m["selection"] == "valid ndcg@10 (full ranking)" and m["epochs_run"] == 8
    assert m["test"]["full"]["hr@10"] >= 0.9, m["test"]["full"]  # random ranking of 30 items: 10/30
    again = run.invoke(app, ["eval", str(out), "--split", "test"])
    assert again.exit_code == 0 and json.loads(again.stdout)["full"] == m["test"]["full"]
