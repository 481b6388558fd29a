"""DMAN (lsdata/models/dman.py): shapes, where the gradients go, memory, padding, overfitting and `lsdata train dman`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lsdata import models
from lsdata.cli import app
from lsdata.dataset import open_dataset
from lsdata.models.base import DataSpec
from lsdata.nextitem import WindowDataset, build_windows, load_sequences, split_protocol
from lsdata.nextitem_train import next_item_loss
from tests.test_nextitem import taobao_split  # noqa: F401 - the real Taobao slice, ingested and split

SMALL = {"max_len": 40, "seg_len": 10, "slots": 4, "emb_dim": 16, "dropout": 0.0}  # 4 segments of 10
SPEC = DataSpec("synthetic", "sequences", 50, 60, 5)


def _model(spec: DataSpec = SPEC, **kw) -> torch.nn.Module:
    cls = models.get("dman")
    torch.manual_seed(0)
    return cls(spec, cls.make_params(spec.dataset, {**SMALL, **kw}))


def _batch(lengths=(40, 33, 25, 12, 3, 1), width=40, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(1, SPEC.n_items + 1, (len(lengths), width), generator=g)
    n = torch.tensor(lengths)
    s[torch.arange(width)[None, :] < (width - n)[:, None]] = 0  # front padding
    return {"hist_item": s, "hist_len": n}


def _windows(root, n=8, max_len=40) -> tuple[dict[str, torch.Tensor], DataSpec]:
    """``n`` all-position training windows of the real slice, spread over its users."""
    ds = open_dataset(root)
    seq = load_sequences(ds)
    method, cut, vcut, _ = split_protocol(ds)
    w = build_windows(seq, method, cut, vcut, 1, max_len)
    m = ds.manifest
    return (WindowDataset(seq, w, max_len).__getitems__(np.linspace(0, len(w) - 1, n).astype(int)),
            DataSpec(m.dataset, "sequences", m.users, m.items, m.cates))


def test_shapes_and_the_loss_terms():
    m, b = _model(), _batch()
    u, rec = m.encode_seq(b)
    assert u.shape == (6, 40, 16) and torch.isfinite(u).all()
    assert rec.ndim == 0 and rec.item() > 0  # rows with >= 3 segments write the memory: L_rec is defined
    logits, _ = m(b)
    assert logits.shape == (6, SPEC.n_items + 1) and torch.isinf(logits[:, 0]).all()
    pos = b["hist_item"] > 0
    sub, _ = m(b, torch.randint(1, SPEC.n_items + 1, (int(pos.sum()), 7)), pos)
    assert sub.shape == (int(pos.sum()), 7)
    m.eval()
    assert m.encode_seq(b)[1].item() == 0.0  # L_rec is a training loss only
    with pytest.raises(ValueError, match="multiple"):
        _model(max_len=45)


def test_main_loss_never_trains_the_abstraction_and_l_rec_trains_only_it():
    m, b = _model(), _batch()
    pos = b["hist_item"] > 0
    items = torch.randint(1, SPEC.n_items + 1, (int(pos.sum()), 6))
    logits, rec = m(b, items, pos)
    main = next_item_loss("sampled_softmax", logits, None)
    routing = {n for n, _ in m.named_parameters() if n.endswith(".w")}
    assert len(routing) == 2  # W_j of each layer
    grads = dict(zip([n for n, _ in m.named_parameters()], torch.autograd.grad(main, list(m.parameters()), allow_unused=True)))
    has = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    assert has == set(grads) - routing  # every other parameter, the initial memories and position biases included
    grads = dict(zip(grads, torch.autograd.grad(rec, list(m.parameters()), allow_unused=True)))
    assert {n for n, g in grads.items() if g is not None and g.abs().sum() > 0} == routing


@pytest.mark.parametrize("c", [0.05, 1.0, 20.0])
def test_the_abstraction_is_scale_equivariant_so_memory_matches_the_scale_of_the_states(c):
    """Routing runs at capsule scale (inputs / their mean norm) and the slots return to the inputs' scale: scaling
    M and H by c scales the new memory by c, and its mean slot norm stays within the inputs' own range instead of
    the squash's (0, 1) (the short-term states grow to norm 10-50 in training; a memory capped at 1 could not
    reconstruct their attention output)."""
    m = _model()
    layer = m.layers[0]
    g = torch.Generator().manual_seed(1)
    mem, h = torch.randn(3, 4, 16, generator=g), 5 * torch.randn(3, 10, 16, generator=g)
    h[0, :4] = 0  # padding rows: zero, not counted in the scale
    with torch.no_grad():
        base, scaled = layer.abstract(mem, h), layer.abstract(c * mem, c * h)
    torch.testing.assert_close(scaled, c * base, rtol=1e-4, atol=1e-5 * c)
    norms = torch.cat([mem, h], 1).norm(dim=-1)
    assert (scaled.norm(dim=-1) <= c * norms.amax() + 1e-4).all()
    assert scaled.norm(dim=-1).mean() > 0.2 * c * norms[norms > 0].mean()


def test_without_rescaling_the_memory_is_the_plain_squash_below_norm_one():
    layer = _model(rescale_memory=False).layers[0]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = layer.abstract(torch.randn(2, 4, 16, generator=g), 30 * torch.randn(2, 10, 16, generator=g))
    assert (out.norm(dim=-1) < 1).all()


def test_the_memory_report_measures_what_l_rec_trains():
    """``layer.report`` collects L_rec's own error sum outside training too, next to the error of keeping the old
    memory and the target's energy, so a trained run's memory fidelity can be measured (benchmarks/dman_memory.py)."""
    m, b = _model(), _batch()
    _, rec = m.encode_seq(b)  # training mode, dropout 0: L_rec = Σ err / Σ count over the layers
    m.eval()
    for layer in m.layers:
        layer.report = {}
    with torch.no_grad():
        assert m.encode_seq(b)[1].item() == 0.0  # still not a loss outside training
    reps = [layer.report for layer in m.layers]
    total = sum(r["err"] for r in reps) / sum(r["count"] for r in reps)
    assert total == pytest.approx(rec.item(), rel=1e-5)
    for r in reps:
        assert r["count"] > 0 and r["target"] > 0 and r["err_keep"] > 0
        assert r["mem_count"] % 4 == 0 and r["h_count"] > 0


def test_memory_carries_what_the_short_term_attention_cannot_reach():
    """With 2 layers a segment's short-term attention reaches 2 segments back; an event in segment 0 changes the
    last position (segment 3) only through the memory."""
    m, b = _model(), _batch(lengths=(40, 40, 40))
    m.eval()
    c = dict(b, hist_item=b["hist_item"].clone())
    c["hist_item"][:, 4] = c["hist_item"][:, 4] % SPEC.n_items + 1
    with torch.no_grad():
        u, v = m.encode_seq(b)[0], m.encode_seq(c)[0]
        assert ((u[:, -1] - v[:, -1]).abs().amax(-1) > 1e-5).all()
        torch.testing.assert_close(u[:, :4], v[:, :4], rtol=0, atol=0)
        for layer in m.layers:  # a memory that ignores its input: segment 0 no longer reaches segment 3
            layer.w.zero_()
        u, v = m.encode_seq(b)[0], m.encode_seq(c)[0]
    torch.testing.assert_close(u[:, -1], v[:, -1], rtol=0, atol=1e-6)


def test_the_user_vector_does_not_depend_on_front_padding_or_the_global_rng():
    m, b = _model(), _batch(lengths=(40, 29, 12, 1))
    m.eval()
    wide = {"hist_item": torch.cat([torch.zeros(4, 30, dtype=torch.long), b["hist_item"]], 1), "hist_len": b["hist_len"]}
    with torch.no_grad():
        u = m.encode_seq(b)[0]
        torch.manual_seed(123)  # the initial memory is a parameter, never drawn per forward
        again = m.encode_seq(b)[0]
        w = m.encode_seq(wide)[0]  # 3 more segments of padding in front: never written into the memory
    torch.testing.assert_close(again, u, rtol=0, atol=0)
    real = b["hist_item"] > 0
    torch.testing.assert_close(w[:, 30:][real], u[real], rtol=1e-5, atol=1e-5)


def test_dman_overfits_a_batch_of_all_position_windows(taobao_split):  # noqa: F811
    b, spec = _windows(taobao_split)
    counted = b["pos_target"] > 0
    pos = b["pos_target"][counted].long()
    assert counted.sum() > 3 * counted.shape[0]  # several targets per window
    m = _model(spec)
    items = torch.cat([pos[:, None], torch.randint(1, spec.n_items + 1, (pos.numel(), 20))], 1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits, rec = m(b, items, counted)
        main = next_item_loss("sampled_softmax", logits, None)
        opt.zero_grad()
        (main + rec).backward()
        opt.step()
        losses.append(main.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_the_abstraction_learns_to_reconstruct_what_it_compresses(taobao_split):  # noqa: F811
    """L_rec trains f_abs alone: with the rest of the model fixed, the compressed memory's attention output moves
    towards the uncompressed one's."""
    b, spec = _windows(taobao_split)
    m = _model(spec)
    opt = torch.optim.Adam([layer.w for layer in m.layers], lr=1e-2)
    recs = []
    for _ in range(60):
        _, rec = m.encode_seq(b)
        opt.zero_grad()
        rec.backward()
        opt.step()
        recs.append(rec.item())
    assert recs[-1] < 0.5 * recs[0], recs[::10]


def test_lsdata_train_dman_end_to_end(taobao_split, tmp_path):  # noqa: F811
    out = tmp_path / "dman"
    r = CliRunner().invoke(app, ["train", "dman", str(taobao_split), "--out", str(out), "--epochs", "2", "--lr", "0.01",
                                 "--batch-size", "8", "--device", "cpu", "--threads", "1", "--set", "max_len=40",
                                 "--set", "seg_len=10", "--set", "slots=4", "--set", "emb_dim=16"])
    assert r.exit_code == 0, r.output
    assert "test ndcg@10" in r.output
    conf = json.loads((out / "config.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    assert (conf["targets"], conf["loss"], conf["negatives"], conf["sampler"]) == ("all", "sampled_softmax", 100, "uniform")
    assert conf["samples"]["train"] < conf["train_targets"] and m["test"]["n"] == conf["samples"]["test"] > 0
    rows = [x.split(",") for x in (out / "log.csv").read_text().splitlines()[1:] if x.startswith("train,")]
    assert len(rows) > 6 and all(float(x[5]) > 0 for x in rows)  # extra_loss = λ·L_rec is trained
    main = [float(x[4]) - float(x[5]) for x in rows]  # the sampled softmax alone
    assert np.mean(main[-3:]) < np.mean(main[:3]) - 0.1, main
    assert 0.0 <= m["test"]["full"]["ndcg@10"] <= 1.0 and m["valid"] is not None
    bad = CliRunner().invoke(app, ["train", "dman", str(taobao_split), "--out", str(tmp_path / "bad"), "--device", "cpu",
                                   "--set", "max_len=45", "--set", "seg_len=10"])
    assert bad.exit_code != 0 and "multiple of seg_len" in bad.output
