"""HPMN in the next-item framing (issue #5): HPMN's hierarchical periodic memory with a rankable read.

Memory (shared with the CTR :class:`lsdata.models.memory.HPMN`, :func:`lsdata.models.memory.periodic_memory`):
the window's events ``x_t = [ItemEmb(s_t); CateEmb(c_t)]`` feed GRU 1; GRU ``j`` updates slot ``m_j`` (hidden ``h``)
once every ``t_j`` events with the new ``m_{j-1}`` as input (``periods``; presets as HPMN's: Amazon 1,2,4, Taobao
1,2,4,12, XLong 1,2,4,8,16). Read, with the candidate item ``i`` as the query over the ``D`` slots (one hop)::

    k_i = W e_i                         e_i = ItemEmb(i) (the history's item table), W ∈ R^{h×d}
    s_{u,i,j} = m_{u,j} · k_i           j = 1..D
    a_{u,i,j} = softmax_j s_{u,i,j}
    score(u, i) = Σ_j a_{u,i,j} s_{u,i,j} + b_i  =  ⟨r(u, i), W e_i⟩ + b_i,   r(u, i) = Σ_j a_{u,i,j} m_{u,j}

i.e. the candidate-attended read vector ``r(u, i)`` dotted with the candidate's projection. Full ranking needs
only ``S = M_u (W E)ᵀ`` ``[B, D, N]`` (one matrix product; D = 3..5), never a ``[B, N, d]`` tensor. Extra loss:
``memory_reg ·`` HPMN's slot-covariance penalty (:func:`lsdata.models.memory.slot_covariance_penalty`).

How the read departs from the CTR HPMN read and why: there, ``q_0 = W_q e_i + b``, then 3 hops, each an MLP
over ``[q, m_j, q − m_j, q ⊙ m_j]`` (80 ReLU, 40 ReLU, 1) giving the attention, ``q ← q H + r``, and an MLP
head on ``[q_3; e_i]`` gives the logit. Every hop and the head are nonlinear in the pair (user, candidate), so
ranking N items costs ``B·N·D·3`` MLP evaluations with ``[B, N, 4h]`` inputs: not feasible over all items
(full-softmax training, full-ranking evaluation). A bilinear one-hop read keeps the defining idea (the candidate
queries the multi-scale memory and picks the slot(s) whose time scale matters for it) and is one matmul per
chunk of items. The multi-hop query update and the head are dropped; the item bias ``b_i`` (popularity) is
added, and the candidate is the item id only (no category: full ranking scores items from one table).

Other choices: the window's first event starts the period clock (HPMN counts from the user's first event; the
two agree when the history fits the window); GRU states never see padding, as in HPMN; no behaviour field (the
next-item batches are ranked by item); loss sampled softmax over 100 uniform negatives (HPMN's BCE with one
negative is a CTR loss; 100 as DMAN, and it never forms the ``[B, D, N]`` scores during training, so it scales
to lifelong catalogues; ``--loss ce`` for small ones); gradient values clipped to [-1, 1] and lr 1e-3, batch 128
as HPMN; item table N(0, 1/d); d 64, category 16, h 64 (HPMN: 16 per field, h 32 - too small to rank items).
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import DataSpec
from lsdata.models.memory import check_periods, periodic_memory, slot_covariance_penalty
from lsdata.models.nextitem import NextItemModel, NextItemParams


@register
class HPMNNext(NextItemModel):
    """HPMN's periodic GRU memory read by the candidate item (one bilinear hop): the equations, and how they depart
    from the CTR HPMN read, are in the module docstring (:mod:`lsdata.models.hpmn_next`)."""

    name = "hpmn_next"

    class Params(NextItemParams):
        emb_dim: int = Field(64, ge=1, description="item embedding size d")
        cate_dim: int = Field(16, ge=1, description="category embedding size of the memory's input events")
        hidden: int = Field(64, ge=1, description="slot size h (GRU hidden)")
        max_len: int = Field(300, ge=1, description="history window L (HPMN's Taobao layout: 300)")
        periods: tuple[int, ...] = Field((1, 2, 4), description="update period t_j of memory slot j in events "
                                         "(t_1 = 1, each a multiple of the previous); one GRU per slot")
        memory_reg: float = Field(1e-5, ge=0.0, description="weight of HPMN's slot-covariance regulariser")
        reg_reduce: str = Field("mean", pattern="^(mean|sum)$", description="covariance penalty over the batch: mean or sum")

        @field_validator("periods")
        @classmethod
        def _nested(cls, v: tuple[int, ...]) -> tuple[int, ...]:
            return check_periods(v)

    train_defaults = {"lr": 1e-3, "batch_size": 128, "clip_value": 1.0, "loss": "sampled_softmax", "negatives": 100}
    presets = {
        "amazon": {"periods": (1, 2, 4)},
        "taobao": {"periods": (1, 2, 4, 12)},
        "xlong": {"periods": (1, 2, 4, 8, 16), "memory_reg": 5e-5},
    }

    def __init__(self, spec: DataSpec, params: Params):
        super().__init__(spec, params)
        p, h = params, params.hidden
        self.item = nn.Embedding(spec.n_items + 1, p.emb_dim, padding_idx=0)
        self.cate = nn.Embedding(spec.n_cates + 1, p.cate_dim, padding_idx=0)
        nn.init.normal_(self.item.weight, 0.0, p.emb_dim**-0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.grus = nn.ModuleList(nn.GRU(p.emb_dim + p.cate_dim if j == 0 else h, h, batch_first=True)
                                  for j in range(len(p.periods)))
        self.key = nn.Linear(p.emb_dim, h, bias=False)  # W
        self.bias = nn.Parameter(torch.zeros(spec.n_items + 1))  # b_i

    def encode(self, batch):
        """``u`` = the slots ``[B, D·h]`` (flattened), and the covariance penalty."""
        s = batch["hist_item"].long()
        x = torch.cat([self.item(s), self.cate(batch["hist_cate"].long())], -1)
        slots = periodic_memory(self.grus, self.p.periods, x, batch["hist_len"].long().clamp(max=s.shape[1]))
        return slots.flatten(1), self.p.memory_reg * slot_covariance_penalty(slots, self.p.reg_reduce)

    def output(self):
        return self.item.weight, self.bias

    def item_scores(self, u, w, b):
        m = u.unflatten(1, (len(self.p.periods), self.p.hidden))  # [N, D, h]
        k = self.key(w)  # [C, h] or [N, C, h]
        s = m @ k.T if k.dim() == 2 else torch.einsum("njh,nch->njc", m, k)  # s_{u,i,j}: [N, D, C]
        score = (s.softmax(1) * s).sum(1)
        return score + b if b is not None else score
