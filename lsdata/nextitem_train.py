"""``lsdata train`` for next-item models: :class:`NextItemRun`, the CTR :class:`lsdata.train.Run` with next-item
data, losses and ranking metrics. The loop, checkpoints, resume, DDP, early stopping, run-directory outputs
and "test once with the validation-selected weights" are :func:`lsdata.train.train`'s, unchanged.

* **Data**: :mod:`lsdata.nextitem` samples over ``sequences/`` under the dataset's split protocol
  (``lsdata split``: ``cut`` or ``loo``), windows of the model's ``max_len``. ``--targets`` (default the model's
  ``train_defaults``): ``last`` = one target per training sample; ``all`` = every counted position of a training
  window is a target (``WindowDataset``), the loss below taken over the counted positions, flattened;
  ``--horizon T`` (``last`` only) lets each training history also predict the next ``T - 1`` training targets.
* **Losses** (``--loss``, default the model paper's): ``ce`` full softmax over all items; ``sampled_softmax``
  cross-entropy over the positive and ``negatives`` sampled items (with the popularity sampler the logits
  are logQ-corrected, ``s - log q``, as GRU4Rec/SDM); ``bce`` ``-log σ(s_pos) - mean log(1 - σ(s_neg))``
  (SASRec, Caser); ``bpr`` ``-mean log σ(s_pos - s_neg)``.
* **Evaluation**: every validation/test target is ranked twice, among **all items** (full ranking, chunked
  matrix products) and among ``eval_negatives`` uniform negatives (the SASRec protocol; fixed by ``--seed``
  so every validation sees the same candidates). Nothing is removed from the candidates but padding and
  the target itself: repeat consumption is a legitimate target in lifelong data. Ties count against the
  target (:func:`lsdata.ranking.count_above`). Metrics: :func:`lsdata.ranking.ranking_metrics`.
* **Selection**: validation NDCG@10 of ``select_on`` (full by default); the test set is scored once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lsdata.dataset import open_dataset
from lsdata.defaults import TrainConfig
from lsdata.io import InputError
from lsdata.loader import EpochSampler, collate
from lsdata.models.base import DataSpec
from lsdata.nextitem import (
    NegativeSampler,
    NextItemDataset,
    WindowDataset,
    build_index,
    build_windows,
    extend_horizon,
    load_sequences,
    popularity,
    split_protocol,
    training_targets,
)
from lsdata.ranking import count_above, ranking_metrics
from lsdata.train import Run, loader_generator, pq_rows


def next_item_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, logq: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of ``kind``. ``ce``: ``logits`` ``[B, I + 1]`` over all items, ``target`` the true ids. Otherwise
    ``logits`` ``[B, 1 + n]`` with the positive in column 0; ``logq`` ``[B, 1 + n]`` (log sampling
    probabilities) corrects the sampled softmax."""
    if kind == "ce":
        return F.cross_entropy(logits, target.long())
    if kind == "sampled_softmax":
        z = logits - logq if logq is not None else logits
        return F.cross_entropy(z, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))
    if kind == "bce":
        return F.softplus(-logits[:, 0]).mean() + F.softplus(logits[:, 1:]).mean()
    if kind == "bpr":
        return -F.logsigmoid(logits[:, :1] - logits[:, 1:]).mean()
    raise ValueError(f"unknown next-item loss {kind!r}")


class NextItemRun(Run):
    """A :class:`lsdata.train.Run` over next-item samples (see the module docstring)."""

    curve_metric = "valid_ndcg@10"

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        o, td = cfg.next_item, self.cls.train_defaults
        self.loss_kind = o.loss or td.get("loss", "ce")
        self.negatives = o.negatives or td.get("negatives", 1)
        self.sampler_kind = o.sampler or td.get("sampler", "uniform")
        self.pop_alpha = o.pop_alpha if o.pop_alpha is not None else td.get("pop_alpha", 1.0)
        self.targets = o.targets or td.get("targets", "last")
        n = self.spec.n_items
        if n < 2:
            raise InputError(f"{cfg.data}: next-item training needs at least two items")
        self.windows = None
        train_targets = self.index["train"].target
        self.horizon = o.horizon or td.get("horizon", 1)
        if self.horizon > 1:
            if self.targets == "all":
                raise InputError("--horizon applies to --targets last; --targets all predicts every position already")
            train = training_targets(self.seqs, self.method, self.cut, self.valid_cut, o.warmup)
            self.index["train"] = extend_horizon(self.seqs, self.index["train"], train, self.horizon)
            train_targets = np.unique(self.index["train"].target)  # each event once (popularity, counts)
        if self.targets == "all":
            if not self.cls.per_position():
                raise InputError(f"--targets all: {cfg.model} has no per-position encoder; use --targets last")
            if o.stride != 1:
                raise InputError("--stride applies to --targets last; --targets all predicts every position")
            self.windows = build_windows(self.seqs, self.method, self.cut, self.valid_cut, o.warmup, self.params.max_len,
                                         o.tied_targets)
            train_targets = np.flatnonzero(self.windows.counted)
        self.n_train_targets = int(train_targets.size)
        self.uniform = NegativeSampler.uniform(n, self.device)
        self.sampler = (NegativeSampler(popularity(self.seqs, train_targets, n, self.pop_alpha), self.device)
                        if self.sampler_kind == "popularity" else self.uniform)
        self.selection = f"valid ndcg@10 ({o.select_on} ranking)"

    def make_spec(self) -> DataSpec:
        cfg = self.cfg
        if cfg.streaming:
            raise InputError("--streaming: next-item samples are read from sequences/ in memory; drop --streaming")
        self.layout = "sequences"
        ds = open_dataset(cfg.data)
        self.method, self.cut, self.valid_cut, self.warnings = split_protocol(ds)
        self.seqs = load_sequences(ds)
        self.index = build_index(self.seqs, self.method, self.cut, self.valid_cut, cfg.next_item.warmup,
                                 cfg.next_item.stride)
        n = {k: pq_rows(ds.vocab_path(k)) for k in ("user", "item", "cate")}  # vocabularies as of the version
        return DataSpec(ds.name, "sequences", n["user"], n["item"], n["cate"])

    def resolved(self) -> dict:
        samples = {k: len(v) for k, v in self.index.items()}
        if self.windows is not None:
            samples["train"] = len(self.windows)
        return {**super().resolved(), "task": "next_item", "split_method": self.method, "warnings": self.warnings,
                "samples": samples, "train_targets": self.n_train_targets, "targets": self.targets, "horizon": self.horizon,
                "loss": self.loss_kind, "negatives": self.negatives, "sampler": self.sampler_kind,
                "pop_alpha": self.pop_alpha}

    def data(self) -> tuple:
        train = self.eval_data("train") if self.windows is None else WindowDataset(self.seqs, self.windows,
                                                                                      self.params.max_len)
        sampler = EpochSampler(len(train), self.batch_size, True, self.cfg.seed, self.rank, self.world)
        loader = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate, num_workers=self.cfg.workers,
                                             persistent_workers=self.cfg.workers > 0,
                                             generator=loader_generator(self.cfg.seed))
        valid = self.eval_data("valid")
        return train, loader, sampler, len(train), valid, len(valid)

    def eval_data(self, split: str) -> NextItemDataset:
        return NextItemDataset(self.seqs, self.index[split], self.params.max_len)

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss over the batch's targets: one per sample, or (``--targets all``) every counted position."""
        net = self.ddp or self.model
        counted = batch["pos_target"] > 0 if self.windows is not None else None
        pos = (batch["target"] if counted is None else batch["pos_target"][counted]).long()
        items = logq = None
        if self.loss_kind != "ce":
            items = torch.cat([pos[:, None], self.sampler.sample(pos, self.negatives)], 1)
            if self.sampler_kind == "popularity":
                logq = torch.log(self.sampler.prob(items).clamp(min=1e-30)).float()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            logits, extra = net(batch, items, counted)
        loss = next_item_loss(self.loss_kind, logits.float(), pos, logq) + extra.float()
        if self.cfg.l2:
            loss = loss + 0.5 * self.cfg.l2 * sum((p * p).sum() for p in self.l2_params)
        return loss, extra.detach()

    @torch.no_grad()
    def ranks(self, data: NextItemDataset) -> tuple[np.ndarray, np.ndarray]:
        """0-based ranks of each target among all items and among the sampled candidates, in file order."""
        self.model.eval()
        o, bs = self.cfg.next_item, self.cfg.eval_batch_size
        rows = np.arange(min(len(data), self.cfg.max_eval_rows or len(data)))[self.rank :: self.world]
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        w, b = self.model.output()
        w = w.float()
        b = b.float() if b is not None else torch.zeros(w.shape[0], device=w.device)
        full, sampled = [], []
        for s in range(0, rows.size, bs):
            batch = self.to_device(data.__getitems__(rows[s : s + bs]))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                u, _ = self.model.encode(batch)
            u, pos = u.float(), batch["target"].long()
            score = self.model.item_scores  # u · w + b, or the model's own scorer
            ps = score(u, w[pos][:, None], b[pos][:, None])[:, 0]
            above = torch.zeros_like(pos)
            for c in range(1, w.shape[0], o.item_chunk):
                ids = torch.arange(c, min(c + o.item_chunk, w.shape[0]), device=w.device)
                above += count_above(ps, score(u, w[c : c + ids.numel()], b[ids]), ids[None, :] != pos[:, None])
            neg = self.uniform.sample(pos, o.eval_negatives, gen)
            full.append(above.cpu().numpy())
            sampled.append(count_above(ps, score(u, w[neg], b[neg])).cpu().numpy())
        self.model.train()
        out = [np.concatenate(x) if x else np.zeros(0, dtype=np.int64) for x in (full, sampled, [rows])]
        if self.world > 1:
            parts = [None] * self.world
            dist.all_gather_object(parts, out)
            out = [np.concatenate([p[i] for p in parts]) for i in range(3)]
            order = np.argsort(out[2], kind="stable")
            out = [x[order] for x in out]
        return out[0], out[1]

    def score(self, data: NextItemDataset) -> dict:
        full, sampled = self.ranks(data)
        return {"n": int(full.size), "full": ranking_metrics(full), "sampled": ranking_metrics(sampled),
                "eval_negatives": self.cfg.next_item.eval_negatives}

    def selection_key(self, m: dict) -> float:
        v = m[self.cfg.next_item.select_on].get("ndcg@10")
        return -np.inf if v is None else v

    def valid_log(self, m: dict) -> dict:
        sel = m[self.cfg.next_item.select_on]
        return {"valid_ndcg@10": sel.get("ndcg@10"), "valid_hr@10": sel.get("hr@10")}
