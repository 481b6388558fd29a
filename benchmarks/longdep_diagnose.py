"""Why the recurrent memory models miss the long-dependency signal (issue #4): the experiments behind the HPMN /
GRU4Rec / MIMN paragraph of benchmarks/RESULTS.md ("Where long memory matters").

DATA is a prepared longdep dataset (``benchmarks/longdep.py --preset cpu`` leaves one in ``--work``, e.g.
``/tmp/ldcpu/longdep_cpu_20000_0_w100``); ``prepare`` builds variants of it. Every command prints JSON lines.

    python benchmarks/longdep_diagnose.py prepare OUT --users 100000 [--set gap_min=5 --set gap_max=20]
    python benchmarks/longdep_diagnose.py train DATA --model hpmn [--oracle 1] [--gate-bias 3] [--att-init glorot]
                                                     [--set KEY=VALUE] [--grad] [--probe]
    python benchmarks/longdep_diagnose.py supervise DATA
    python benchmarks/longdep_diagnose.py warm DATA --pre 2 [--keep both|emb|gru]

* ``train``: a registered model (or ``mingru``, a hand-written GRU cell loop, to rule out the library's RNN runner)
  trained as ``lsdata train`` does (Adam, the model's reference lr / batch / clipping, validation each epoch, test
  AUC at the best validation epoch). ``--oracle K``: every history replaced by its latest interest event repeated K
  times (the perfect memory content; K = 12 fills all four HPMN slots). ``--grad``: mean ``|dL/de_t|`` by distance
  from the end and at the latest interest event (at init and every 4 epochs). ``--probe`` (HPMN): linear probes of
  the latest interest category from each memory slot, and the read's attention (entropy, score spread over the
  slots, matching minus non-matching candidates).
* ``supervise``: HPMN's embedding + memory trained on the latest interest category itself (cross-entropy of a
  linear readout of the slots): can the memory hold it at all?
* ``warm``: ``supervise`` for ``--pre`` epochs, then the whole HPMN trained on the click label only (``--keep``
  resets the GRUs or the embeddings to a fresh initialisation first).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsdata import models
from lsdata.loader import LayoutDataset, layout_file
from lsdata.metrics import auc
from lsdata.models.base import DataSpec, ModelParams
from lsdata.models.blocks import BehaviorEmbedding, Head, bce, history
from lsdata.synth import longdep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from longdep import PRESETS, sh  # noqa: E402


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for kv in pairs:
        k, v = kv.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


class MinGRU(nn.Module):
    """Independent minimal GRU CTR model: a hand-written cell loop over the front-padded history (state kept on
    padding), head on ``[h; e_tgt]`` - GRU4Rec's function without ``run_rnn``."""

    def __init__(self, spec: DataSpec, p: ModelParams):
        super().__init__()
        self.emb = BehaviorEmbedding(spec, p)
        self.h = p.hidden
        self.wx, self.wh = nn.Linear(self.emb.dim, 3 * self.h), nn.Linear(self.h, 3 * self.h)
        self.head = Head(self.h + self.emb.dim, p)

    def forward(self, batch):
        x, mask, tgt = self.emb.seq(batch), batch["hist_item"] > 0, self.emb.target(batch)
        gi, s, h = self.wx(x), x.new_zeros(x.shape[0], self.h), self.h
        for i in range(x.shape[1]):
            gh = self.wh(s)
            r = torch.sigmoid(gi[:, i, :h] + gh[:, :h])
            z = torch.sigmoid(gi[:, i, h: 2 * h] + gh[:, h: 2 * h])
            n = torch.tanh(gi[:, i, 2 * h:] + r * gh[:, 2 * h:])
            s = torch.where(mask[:, i, None], (1 - z) * n + z * s, s)
        return self.head(torch.cat([s, tgt], -1)), x.new_zeros(())


# -- the planted signal ------------------------------------------------------------------------------------


def latest_interest(b: dict, interest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, dense category) of each row's latest interest event; position -1 and category 0 when none."""
    cate = b["hist_cate"].numpy()
    hit = interest[cate] & (b["hist_item"].numpy() > 0)
    pos = np.where(hit.any(1), cate.shape[1] - 1 - np.argmax(hit[:, ::-1], 1), -1)
    return pos, np.where(pos >= 0, cate[np.arange(len(cate)), np.maximum(pos, 0)], 0)


def oracle(b: dict, interest: np.ndarray, repeat: int) -> dict:
    """The history replaced by the latest interest event repeated ``repeat`` times (front-padded)."""
    pos, _ = latest_interest(b, interest)
    has, out = pos >= 0, dict(b)
    for k in ("hist_item", "hist_cate", "hist_behavior"):
        v = b[k].numpy()
        new = np.zeros_like(v)
        new[:, -repeat:] = np.where(has, v[np.arange(len(v)), np.maximum(pos, 0)], 0)[:, None]
        out[k] = torch.from_numpy(new)
    out["hist_len"] = torch.from_numpy((has * repeat).astype(b["hist_len"].numpy().dtype))
    return out


# -- model surgery -----------------------------------------------------------------------------------------


def set_gate_bias(model: nn.Module, update: float, reset: float | None) -> None:
    """Total (input + hidden) bias of every ``nn.GRU``'s update gate ``z`` (PyTorch: ``h' = (1 - z) n + z h``, so
    ``sigmoid(b)`` is the share of the state kept per step at init), and of the reset gate when given."""
    for m in model.modules():
        if isinstance(m, nn.GRU):
            h = m.hidden_size
            with torch.no_grad():
                for layer in range(m.num_layers):
                    bi, bh = getattr(m, f"bias_ih_l{layer}"), getattr(m, f"bias_hh_l{layer}")
                    for gate, value in ((1, update), (0, reset)):
                        if value is not None:
                            bi[gate * h: (gate + 1) * h], bh[gate * h: (gate + 1) * h] = value, 0.0


def glorot_attention(model: nn.Module) -> None:
    """The reference's dense-layer init (Glorot-uniform kernels, zero biases) for HPMN's read / MIMN's MIU attention."""
    atts = [*getattr(model, "hops", [])] + [a for a in [getattr(model, "miu_att", None)] if a is not None]
    for lin in (m for att in atts for m in att.modules() if isinstance(m, nn.Linear)):
        nn.init.xavier_uniform_(lin.weight)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)


# -- measurements ------------------------------------------------------------------------------------------


def grad_profile(model: nn.Module, b: dict, interest: np.ndarray) -> dict:
    """Mean ``|dL/de_t|`` (dropout off) by distance ``d`` from the last history event, and at the latest interest event."""
    store: dict[str, Tensor] = {}

    def hook(_mod, _inp, out):
        if out.ndim == 3 and "x" not in store:
            out.retain_grad()
            store["x"] = out

    handle = model.emb.register_forward_hook(hook)
    was = model.training
    model.eval()
    logit, extra = model(b)
    model.zero_grad()
    (bce(logit, b["label"].float()) + extra).backward()
    handle.remove()
    model.train(was)
    g = store["x"].grad.norm(dim=-1).numpy()
    t = g.shape[1]
    pos, _ = latest_interest(b, interest)
    ok = pos >= 0
    return {"at_interest": float(g[np.flatnonzero(ok), pos[ok]].mean()), "interest_distance_mean": float((t - 1 - pos[ok]).mean()),
            "by_distance": {d: float(g[:, t - 1 - d].mean()) for d in (0, 1, 5, 10, 25, 50, 75, 99) if d < t}}


def linear_probe(a: Tensor, y: np.ndarray, a_test: Tensor, y_test: np.ndarray, classes: int) -> float:
    """Test accuracy of a multinomial logistic regression (standardised features, full-batch Adam, 300 steps)."""
    mu, sd = a.mean(0), a.std(0) + 1e-6
    torch.manual_seed(0)
    lin = nn.Linear(a.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(lin((a - mu) / sd), torch.as_tensor(y)).backward()
        opt.step()
    with torch.no_grad():
        return float((lin((a_test - mu) / sd).argmax(-1).numpy() == y_test).mean())


@torch.no_grad()
def hpmn_read(model, b: dict) -> tuple[Tensor, Tensor, list[float]]:
    """(slots ``[B, D, h]``, attention weights ``[B, K, D]``, per-hop mean std of the scores over the slots)."""
    x, _, n, tgt = history(model.emb, b, model.p.append_target)
    slots, q = model.memory(x, n), model.query(tgt)
    weights, spread = [], []
    for att in model.hops:
        spread.append(float(att.scores(q, slots).std(-1).mean()))
        r, w = att(q, slots, None)
        weights.append(w)
        q = q @ model.H + r
    return slots, torch.stack(weights, 1), spread


def probe_report(model, train: LayoutDataset, test: LayoutDataset, interest: np.ndarray, n: int = 6000) -> dict:
    """Does each HPMN slot hold the latest interest category (linear probe, 10 interest categories + chance), and
    is the read degenerate (normalised attention entropy 1 = uniform; score spread; attention on matching minus
    non-matching interest candidates)?"""
    model.eval()
    bt, bs = (d.__getitems__(np.arange(min(n, len(d)))) for d in (train, test))
    (st, _, _), (ss, att, spread) = hpmn_read(model, bt), hpmn_read(model, bs)
    _, ct = latest_interest(bt, interest)
    _, cs = latest_interest(bs, interest)
    cats = np.unique(np.r_[ct, cs])
    yt, ys = np.searchsorted(cats, ct), np.searchsorted(cats, cs)
    d = st.shape[1]
    acc = {f"slot{j + 1}": round(linear_probe(st[:, j], yt, ss[:, j], ys, cats.size), 4) for j in range(d)}
    acc["all"] = round(linear_probe(st.flatten(1), yt, ss.flatten(1), ys, cats.size), 4)
    ent = -(att * att.clamp_min(1e-12).log()).sum(-1) / math.log(d)
    cand = bs["cate"].numpy()
    match = torch.as_tensor((cand == cs) & (cs > 0))
    other = torch.as_tensor(interest[cand]) & ~match
    model.train()
    return {"probe_chance": round(float((ys == np.bincount(yt).argmax()).mean()), 4), "probe_acc": acc,
            "att_entropy": [round(float(v), 4) for v in ent.mean(0)], "score_spread": [round(v, 4) for v in spread],
            "att_match_minus_other": [[round(float(v), 3) for v in w] for w in att[match].mean(0) - att[other].mean(0)]}


# -- training ----------------------------------------------------------------------------------------------


def batches(ds: LayoutDataset, idx: np.ndarray, size: int, transform=None):
    for s in range(0, len(idx), size):
        b = ds.__getitems__(idx[s: s + size])
        yield transform(b) if transform else b


@torch.no_grad()
def split_auc(model: nn.Module, ds: LayoutDataset, transform=None) -> float:
    model.eval()
    p = np.concatenate([torch.sigmoid(model(b)[0]).numpy() for b in batches(ds, np.arange(len(ds)), 1024, transform)])
    model.train()
    return auc(np.asarray(ds.cols["label"]), p)


def fit(model, splits, epochs: int, lr: float, size: int, clip: float | None, rng, transform=None, each=None):
    """Train on the click label; yields one dict per epoch (train loss, valid AUC, test AUC at a new best valid)."""
    train, valid, test = splits
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best = -1.0
    for ep in range(1, epochs + 1):
        t0, total = time.perf_counter(), 0.0
        for b in batches(train, rng.permutation(len(train)), size, transform):
            logit, extra = model(b)
            loss = bce(logit, b["label"].float()) + extra
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_value_(model.parameters(), clip)
            opt.step()
            total += float(loss.detach()) * len(logit)
        v = split_auc(model, valid, transform)
        row = {"epoch": ep, "loss": round(total / len(train), 4), "valid_auc": round(v, 4), "s": round(time.perf_counter() - t0, 1)}
        if v > best:
            best, row["test_auc"] = v, round(split_auc(model, test, transform), 4)
        if each:
            row.update(each(ep))
        yield row


def supervise(model, readout: nn.Linear, train: LayoutDataset, interest: np.ndarray, epochs: int, rng) -> None:
    """Train HPMN's embedding + memory (+ ``readout``) on the latest interest category (rows without one skipped)."""
    cats = np.flatnonzero(interest)
    opt = torch.optim.Adam([*model.emb.parameters(), *model.grus.parameters(), *readout.parameters()], lr=1e-3)
    for _ in range(epochs):
        for b in batches(train, rng.permutation(len(train)), 128):
            _, c = latest_interest(b, interest)
            keep = torch.as_tensor(c > 0)
            x, _, n, _ = history(model.emb, b, False)
            logits = readout(model.memory(x, n).flatten(1))[keep]
            loss = F.cross_entropy(logits, torch.as_tensor(np.searchsorted(cats, c))[keep])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def supervised_accuracy(model, readout: nn.Linear, test: LayoutDataset, interest: np.ndarray) -> float:
    b = test.__getitems__(np.arange(min(len(test), 4000)))
    _, c = latest_interest(b, interest)
    x, _, n, _ = history(model.emb, b, False)
    pred = readout(model.memory(x, n).flatten(1)).argmax(-1).numpy()
    keep = c > 0
    return float((np.flatnonzero(interest)[pred[keep]] == c[keep]).mean())


def echo(rows) -> list[dict]:
    """Print each row as a JSON line as it comes; return them all."""
    out = []
    for r in rows:
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def build(data: str, name: str, overrides: dict):
    cls = models.get("gru4rec" if name == "mingru" else name)
    spec = DataSpec.from_dataset(data, cls.layout)
    params = cls.make_params(spec.dataset, overrides)
    model = MinGRU(spec, params) if name == "mingru" else cls(spec, params)
    splits = tuple(LayoutDataset(layout_file(data, cls.layout, s), cls.layout) for s in ("train", "valid", "test"))
    return cls, model, splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="cpu-preset longdep data with generator overrides (hpmn + mimn layouts, width 100)")
    pr.add_argument("out", type=Path)
    pr.add_argument("--users", type=int, default=20_000)
    pr.add_argument("--set", action="append", default=[], help="generator parameter KEY=VALUE")
    for name in ("train", "supervise", "warm"):
        p = sub.add_parser(name)
        p.add_argument("data")
        p.add_argument("--epochs", type=int, default=12 if name == "train" else 8)
        p.add_argument("--seed", type=int, default=1111)
        p.add_argument("--threads", type=int, default=1)
    tr = sub.choices["train"]
    tr.add_argument("--model", default="hpmn", help="a registered CTR model, or mingru")
    tr.add_argument("--set", action="append", default=[], help="model parameter KEY=VALUE")
    tr.add_argument("--lr", type=float)
    tr.add_argument("--oracle", type=int, default=0, help="history = the latest interest event repeated this many times")
    tr.add_argument("--gate-bias", type=float, help="update-gate bias of every nn.GRU (sigmoid = share kept per step)")
    tr.add_argument("--reset-bias", type=float, help="reset-gate bias of every nn.GRU")
    tr.add_argument("--att-init", choices=["glorot"], help="HPMN read / MIMN MIU attention: reference Glorot init")
    tr.add_argument("--grad", action="store_true")
    tr.add_argument("--probe", action="store_true")
    wa = sub.choices["warm"]
    wa.add_argument("--pre", type=int, default=2, help="epochs of supervision before the label-only training")
    wa.add_argument("--keep", choices=["both", "emb", "gru"], default="both")
    a = ap.parse_args()

    if a.cmd == "prepare":
        raw = a.out.with_suffix(".csv")
        longdep.generate(raw, users=a.users, seed=0, **{**PRESETS["cpu"]["params"], **parse_sets(a.set)})
        shutil.rmtree(a.out, ignore_errors=True)
        sh("ingest", "taobao", str(raw), "--out", str(a.out))
        sh("split", str(a.out))
        sh("layout", str(a.out), "hpmn", "mimn", "--hist", "100")
        print(json.dumps({"data": str(a.out), "bayes_test_auc": longdep.bayes_aucs(a.out, split="test", windows=(None, 100, 20))}))
        return

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    interest = longdep.model_for_dataset(a.data).interest
    cls, model, splits = build(a.data, getattr(a, "model", "hpmn"), parse_sets(getattr(a, "set", [])))
    train, _, test = splits
    td = cls.train_defaults
    lr, size, clip = getattr(a, "lr", None) or td.get("lr", 1e-3), td.get("batch_size", 128), td.get("clip_value")
    if a.cmd == "train":
        if a.gate_bias is not None or a.reset_bias is not None:
            set_gate_bias(model, a.gate_bias, a.reset_bias)
        if a.att_init:
            glorot_attention(model)
        transform = (lambda b: oracle(b, interest, a.oracle)) if a.oracle else None
        print(json.dumps({k: v for k, v in vars(a).items() if v not in (None, False, [])}), flush=True)
        sample = train.__getitems__(np.arange(min(512, len(train))))
        if a.grad:
            print(json.dumps({"epoch": 0, "grad": grad_profile(model, sample, interest)}), flush=True)
        each = (lambda ep: {"grad": grad_profile(model, sample, interest)} if ep % 4 == 0 else {}) if a.grad else None
        rows = echo(fit(model, splits, a.epochs, lr, size, clip, rng, transform, each))
    else:
        readout = nn.Linear(len(model.grus) * model.p.hidden, int(interest.sum()))
        if a.cmd == "supervise":
            for ep in range(1, a.epochs + 1):
                supervise(model, readout, train, interest, 1, rng)
                print(json.dumps({"epoch": ep, "test_category_accuracy": round(supervised_accuracy(model, readout, test, interest), 4)}), flush=True)
            return
        supervise(model, readout, train, interest, a.pre, rng)
        fresh = cls(model.spec, model.p)
        if a.keep == "emb":  # keep the supervised embeddings, fresh GRUs
            model.grus.load_state_dict(fresh.grus.state_dict())
        elif a.keep == "gru":  # keep the supervised GRUs, fresh embeddings
            model.emb.load_state_dict(fresh.emb.state_dict())
        print(json.dumps({"pre_epochs": a.pre, "keep": a.keep,
                          "after_pretraining": probe_report(model, train, test, interest)["probe_acc"]}), flush=True)
        rows = echo(fit(model, splits, a.epochs, lr, size, clip, rng))
    best = max(rows, key=lambda r: r["valid_auc"])
    final = {"best_valid_auc": best["valid_auc"], "test_auc_at_best": best["test_auc"], "best_epoch": best["epoch"]}
    if isinstance(model, models.get("hpmn")) and (a.cmd == "warm" or a.probe):
        final["probe"] = probe_report(model, train, test, interest)
    print(json.dumps({"final": final}), flush=True)


if __name__ == "__main__":
    main()
