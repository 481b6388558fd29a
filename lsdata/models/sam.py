"""SAM - Sparse Attentive Memory network (Lin et al., CIKM 2022, arXiv 2208.04022; models.md §4)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import CTRModel, DataSpec, ModelParams, zero
from lsdata.models.blocks import BehaviorEmbedding, Head, activation, history, masked_softmax


class SAMParams(ModelParams):
    passes: int = Field(2, ge=1, description="memory passes T (each one attention pass over the whole sequence)")
    att_hidden: int = Field(8, ge=1, description="hidden units of the point-wise dual-query scoring MLP")
    att_act: str = Field("sigmoid", description="activation of the scoring MLP (reference code: sigmoid)")
    norm: str = Field("softmax", pattern="^(softmax|sigmoid)$",
                      description="attention normalisation: softmax (EasyRec default) or element-wise sigmoid (code A)")
    iterative_query: bool = Field(True, description="the memory query follows m_t (False: code A's 'stk' typo, query fixed at v)")
    me_steps: int = Field(3, ge=0, description="Memory Enhancement GRU steps (0 = no ME module)")
    att_fc: bool = Field(False, description="code A: add FC_16 of the last pass's attention-weight vector (ties to fixed L)")
    head_act: str = Field("relu", description="head activation")


class DualQueryScorer(nn.Module):
    """Point-wise dual-query score, for every position independently (code A)::

        s_i = w_2 . act(W [v - x_i; v * x_i; m - x_i; m * x_i] + b) + b_2

    With ``W = [Wa | Wb | Wc | Wd]`` the first layer is ``Wa v + Wc m + b - (Wa + Wc) x_i + x_i (diag(v) Wb^T +
    diag(m) Wd^T)``: two ``[B, L, D] x [D, H]`` products, so the ``[B, L, 4D]`` input is never built (O(L d H)).
    """

    def __init__(self, dim: int, hidden: int, act: str, out_bias: bool = True):
        super().__init__()
        self.first = nn.Linear(4 * dim, hidden)
        self.act = activation(act, hidden)
        self.out = nn.Linear(hidden, 1, bias=out_bias)  # a softmax is blind to b_2: no bias there

    def forward(self, v: Tensor, m: Tensor, x: Tensor) -> Tensor:
        wa, wb, wc, wd = self.first.weight.chunk(4, dim=1)  # each [H, D]
        per_row = v @ wa.t() + m @ wc.t() + self.first.bias  # [B, H]
        per_row_mat = v.unsqueeze(-1) * wb.t() + m.unsqueeze(-1) * wd.t()  # diag(v) Wb^T + diag(m) Wd^T  [B, D, H]
        h = per_row.unsqueeze(1) - x @ (wa + wc).t() + torch.bmm(x, per_row_mat)
        return self.out(self.act(h)).squeeze(-1)

    def reference(self, v: Tensor, m: Tensor, x: Tensor) -> Tensor:
        """The same score from the explicit ``[B, L, 4D]`` concatenation (for tests)."""
        v, m = v.unsqueeze(1).expand_as(x), m.unsqueeze(1).expand_as(x)
        return self.out(self.act(self.first(torch.cat([v - x, v * x, m - x, m * x], dim=-1)))).squeeze(-1)


@register
class SAM(CTRModel):
    """SAM (models.md §4): the candidate as the query over the whole (long) history, O(L) per candidate::

        m_0 = v = e_tgt
        for t = 1..T:   s_i = MLP_t(v, m_{t-1}, x_i)    (dual-query, one MLP per pass, every i at once)
                        a   = softmax_i(s)  (masked)    r_t = sum_i a_i x_i
                        m_t = GRU(r_t, m_{t-1})          (Iterative Memory Update)
        s_0 = m_T;  s_k = GRU'([W s_{k-1}; v], s_{k-1}), k = 1..3;  u = s_3     (Memory Enhancement)
        logit = head([v; m_T; u; r_T])

    T sequential steps over the passes plus 3 for ME, regardless of L; each pass is one vectorised
    attention pass over the L behaviours (no interaction between positions). Memory width = the
    behaviour embedding width D (the candidate and the behaviours share the field layout).

    Reproduced (code A / EasyRec, no authors' repo): scoring MLP ``[v-x; v*x; m-x; m*x] -> 8 sigmoid -> 1``,
    a separate MLP per pass, GRU memory update, 3-step ME with the linear map ``W``, T = 2 (the
    paper's value is unverified), the "recommended reference" head input ``[v; m_T; u; r_T]``, lr 1e-3.
    Choices / fixes: masked softmax normalisation by default (``norm=sigmoid`` is code A's un-normalised
    weights, whose scale grows with L); the memory query is updated every pass (``iterative_query=False``
    reproduces code A's default ``mode='stk'`` typo); code A's FC_16 on the last attention-weight vector
    is off (``att_fc=True``; it makes the model position-aware and ties it to the layout's width).
    Head Affine -> 200 ReLU -> 80 ReLU -> 1, dropout 0.2. Not incremental (the memory starts from the
    candidate; only behaviour embeddings could be cached).
    """

    name = "sam"
    layout = "hpmn"
    Params = SAMParams
    train_defaults = {"lr": 1e-3, "batch_size": 128}
    incremental = False

    def __init__(self, spec: DataSpec, p: SAMParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d = self.emb.dim
        self.scorers = nn.ModuleList(DualQueryScorer(d, p.att_hidden, p.att_act, out_bias=p.norm == "sigmoid")
                                     for _ in range(p.passes))  # one scoring MLP per pass
        self.memory_gru = nn.GRUCell(d, d)
        head_in = 3 * d
        if p.me_steps:
            self.me_map = nn.Linear(d, d)
            self.me_gru = nn.GRUCell(2 * d, d)
            head_in += d
        if p.att_fc:
            self.att_fc = nn.Linear(spec.widths["hist"] + int(p.append_target), 16)
            head_in += 16
        self.head = Head(head_in, p)

    def attend(self, t: int, v: Tensor, m: Tensor, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Pass ``t``: weights ``a [B, L]`` of every behaviour and the pooled ``r = sum_i a_i x_i``."""
        s = self.scorers[t](v, m, x)
        a = masked_softmax(s, mask) if self.p.norm == "softmax" else torch.sigmoid(s) * mask
        return torch.bmm(a.unsqueeze(1), x).squeeze(1), a

    def forward(self, batch):
        x, mask, _, v = history(self.emb, batch, self.p.append_target)
        m, query = v, v
        for t in range(self.p.passes):
            r, a = self.attend(t, v, query, x, mask)
            m = self.memory_gru(r, m)
            if self.p.iterative_query:
                query = m
        feats = [v, m, r]
        if self.p.me_steps:
            s = m
            for _ in range(self.p.me_steps):
                s = self.me_gru(torch.cat([self.me_map(s), v], dim=-1), s)
            feats.append(s)
        if self.p.att_fc:
            feats.append(self.att_fc(a))
        logit = self.head(torch.cat(feats, dim=-1))
        return logit, zero(logit)
