"""The HPMN-suite CTR baselines (models.md §10-§18, protocol.md §3.2-§3.3).

Every class follows the reference code's architecture (HPMN ``model.py`` unless said otherwise) with the
zoo-wide choices of :mod:`lsdata.models.base`; its docstring lists what is reproduced and what is fixed.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import CTRModel, DataSpec, ModelParams, zero
from lsdata.models.blocks import BehaviorEmbedding, Head, gru_step, history, masked_sum, run_rnn

HPMN_SUITE = {"lr": 1e-3, "batch_size": 128}


def _where(valid: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-row state update: ``new`` where ``valid`` (an event), ``old`` on padding."""
    return torch.where(valid[:, None], new, old)


class DNNParams(ModelParams):
    pooling: str = Field("sum", pattern="^(sum|mean)$", description="sum (reference) or mean pooling of the history")


@register
class DNN(CTRModel):
    """Embedding&MLP (models.md §16): ``head([e_tgt; pool_t e_t])``.

    Reproduced: sum pooling over the history only (HPMN's ``item_mask_1``), head Affine -> 200 tanh -> 80 tanh
    with dropout 0.2. Fixed: no user-id embedding (see base). ``pooling=mean`` for very long histories.
    Incremental: the state is the running sum and count.
    """

    name = "dnn"
    layout = "hpmn"
    Params = DNNParams
    train_defaults = HPMN_SUITE
    incremental = True

    def __init__(self, spec: DataSpec, p: DNNParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        self.head = Head(2 * self.emb.dim, p)

    def _pool(self, s: Tensor, n: Tensor) -> Tensor:
        return s / n.clamp(min=1)[:, None] if self.p.pooling == "mean" else s

    def forward(self, batch):
        x, mask, n, tgt = history(self.emb, batch, append_target=False)
        return self.head(torch.cat([tgt, self._pool(masked_sum(x, mask), n.float())], -1)), zero(tgt)

    def init_state(self, batch_size):
        w = self.emb.item.weight
        return torch.zeros(batch_size, self.emb.dim, device=w.device), torch.zeros(batch_size, device=w.device)

    def update(self, state, event):
        s, n = state
        valid = event["item"] > 0
        e = self.emb(event["item"], event["cate"], event["behavior"])
        return s + e * valid[:, None], n + valid

    def score(self, state, cand):
        s, n = state
        return self.head(torch.cat([self.emb(cand["item"], cand["cate"], None), self._pool(s, n)], -1))


@register
class GRU4Rec(CTRModel):
    """GRU4Rec as a CTR baseline (models.md §10): a GRU over the history, its final state to the head.

    Reproduced: GRU(h=32) over the real steps only (``sequence_length``), final state, head 200-80 tanh,
    dropout 0.2. With ``append_target=True`` the candidate is the last GRU step and the head sees only the
    final state (HPMN ``model.py``); by default the history is candidate-free and the head gets
    ``[e_tgt; h_T]`` (MIMN repo's input without the sum). Fixed: PyTorch GRU gates (reset after the hidden
    matmul) instead of TF's, for the fused kernel. Incremental: the state is ``h``.
    """

    name = "gru4rec"
    layout = "hpmn"
    train_defaults = HPMN_SUITE
    incremental = True

    def __init__(self, spec: DataSpec, p: ModelParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        self.gru = nn.GRU(self.emb.dim, p.hidden, batch_first=True)
        self.head = Head(p.hidden if p.append_target else p.hidden + self.emb.dim, p)

    def forward(self, batch):
        x, _, n, tgt = history(self.emb, batch, self.p.append_target)
        _, h, _ = run_rnn(self.gru, x, n)
        return self.head(h if self.p.append_target else torch.cat([tgt, h], -1)), zero(h)

    def init_state(self, batch_size):
        return torch.zeros(batch_size, self.p.hidden, device=self.emb.item.weight.device)

    def update(self, state, event):
        e = self.emb(event["item"], event["cate"], event["behavior"])
        return _where(event["item"] > 0, gru_step(self.gru, e, state), state)

    def score(self, state, cand):
        e = self.emb(cand["item"], cand["cate"], None)
        if self.p.append_target:
            return self.head(gru_step(self.gru, e, state))
        return self.head(torch.cat([e, state], -1))

