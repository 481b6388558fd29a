"""RUM - Recommender with User Memory networks (Chen et al., WSDM 2018; models.md §14, protocol.md §3.2).

Two models:

* ``rum``: feature-level RUM as the HPMN repo's CTR cell (``code/rum.py``): K learnable latent-feature keys,
  a per-user value memory ``S`` (K slots of width h) written one behaviour at a time with erase/add.
* ``rum_item``: item-level RUM: a FIFO memory of the K most recent behaviours read with the candidate
  (the paper's RUM-I), or the HPMN repo's ``RUM_ITEM`` (DIN attention over the whole history).

Both keep a per-user state that is folded one event at a time (``incremental = True``).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import CTRModel, DataSpec, ModelParams, zero
from lsdata.models.blocks import BehaviorEmbedding, DINAttention, Head, front_mask, masked_softmax

HPMN_SUITE = {"lr": 1e-3, "batch_size": 128}


class KeyAddressing(nn.Module):
    """Slot weights over K learnable keys from a DIN-MLP (HPMN ``rum_cell``)::

        z_k = softmax_k MLP([x, Kf_k, x - Kf_k, x * Kf_k]),   MLP: 80 ReLU -> 40 ReLU -> 1

    The first layer's weight is split into the four input blocks ``W = [Wq | Wk | Wd | Wp]``:
    ``W [x, k, x - k, x * k] = (Wq + Wd) x + (Wk - Wd) k + (Wp * k) x``, so the ``[..., K, 4D]`` input is
    never built and the key terms are computed once per call. The last layer has no bias (the softmax
    over slots is blind to it). (A candidate for blocks.py: any DIN unit whose keys are shared
    parameters, e.g. memory slots.)
    """

    def __init__(self, dim: int, slots: int, hidden: tuple[int, ...]):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(slots, dim) * 0.1)  # reference: N(0, 0.1)
        self.first = nn.Linear(4 * dim, hidden[0])
        layers: list[nn.Module] = [nn.ReLU()]
        for a, b in zip(hidden[:-1], hidden[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(hidden[-1], 1, bias=False))
        self.rest = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D] -> [..., K]`` slot weights (rows sum to 1)."""
        wq, wk, wd, wp = self.first.weight.chunk(4, dim=1)  # each [H1, D]
        per_key = self.keys @ (wk - wd).t() + self.first.bias  # [K, H1]
        prod = torch.einsum("...d,khd->...kh", x, self.keys[:, None, :] * wp[None])  # (x * k_j) Wp^T
        h = (x @ (wq + wd).t()).unsqueeze(-2) + per_key + prod
        return torch.softmax(self.rest(h).squeeze(-1), dim=-1)

    def reference(self, x: Tensor) -> Tensor:
        """The same weights from the explicit ``[x, k, x - k, x * k]`` concatenation (for tests)."""
        k = self.keys.expand(*x.shape[:-1], -1, -1)
        q = x.unsqueeze(-2).expand_as(k)
        return torch.softmax(self.rest(self.first(torch.cat([q, k, q - k, q * k], dim=-1))).squeeze(-1), dim=-1)


class RUMParams(ModelParams):
    emb_dim: int = Field(18, ge=1, description="embedding size per id field (reference: Amazon 8, Taobao 18)")
    hidden: int = Field(16, ge=1, description="memory slot width h")
    slots: int = Field(5, ge=1, description="number of latent-feature keys / memory slots K (Amazon 3, Taobao 5)")
    head_act: str = Field("elu", description="head activation (reference: elu)")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout after each head layer (reference keep 0.5)")
    att_hidden: tuple[int, ...] = Field((80, 40), min_length=1, description="hidden sizes of the DIN-MLP addressing the keys")
    key_reg: float = Field(3e-6, ge=0.0, description="weight of the key-decorrelation penalty (extra loss)")


@register
class RUM(CTRModel):
    """Feature-level RUM (HPMN ``code/rum.py`` ``rum_cell``), models.md §14.

    State ``S in R^{K x h}`` (zeros), global keys ``Kf in R^{K x D}``. For each history behaviour ``x_t``::

        z_t = softmax_k MLP([x_t, Kf_k, x_t - Kf_k, x_t * Kf_k])     (DIN MLP 80 ReLU -> 40 ReLU -> 1)
        o_t = sum_k z_tk S_k                                         (read, before the write)
        e_t = sigmoid(W_e [x_t; o_t] + b_e)
        a_t = sigmoid(W_g [x_t; o_t] + b_g) * tanh(W_a [x_t; o_t] + b_a)
        S_k <- S_k * (1 - z_tk e_t) + z_tk a_t

    The user representation is the read with the candidate ``e_tgt`` (``sum_k z_k(e_tgt) S_k``, no write):
    the reference runs the cell over ``history + candidate`` and takes the output of the candidate step,
    which is read before write, i.e. exactly this (so ``append_target`` changes nothing here, and scoring
    a candidate never changes the memory - the model is streaming-correct as the reference is).
    Logit = head([o; e_tgt]), head Affine -> 200 ELU -> 80 ELU -> 1, dropout 0.5. Extra loss
    ``key_reg * sum_{i<j} <Kf_i, Kf_j> / (1/2 ||Kf||^2)`` (the reference's signed form, weight 3e-6).

    Reproduced: K = 3/5 and emb 8/18 (Amazon/Taobao presets), h = 16, the behaviour input without the
    user field (``[item; cate; behavior]``), N(0, 0.1) keys and cell kernels with zero biases, lr 1e-3,
    gradient values clipped to +-1. Fixed / changed: no user-id embedding in the head (base), the head
    sees the whole candidate embedding instead of its item field only; batch 128 instead of the
    reference's 10 (``--batch-size 10`` reproduces it); padding steps are exact no-ops (``z = 0``).
    Incremental: the state is ``S``.
    """

    name = "rum"
    layout = "hpmn"
    Params = RUMParams
    train_defaults = {"lr": 1e-3, "batch_size": 128, "clip_value": 1.0}
    presets = {"amazon": {"emb_dim": 8, "slots": 3}, "taobao": {"emb_dim": 18, "slots": 5}}
    incremental = True

    def __init__(self, spec: DataSpec, p: RUMParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d, h = self.emb.dim, p.hidden
        self.address = KeyAddressing(d, p.slots, p.att_hidden)
        # [W_e; W_g; W_a] split into the input part (applied to all steps at once) and the read part
        self.w_x = nn.Linear(d, 3 * h)
        self.w_o = nn.Linear(h, 3 * h, bias=False)
        for w in (self.w_x.weight, self.w_o.weight):
            nn.init.normal_(w, std=0.1)
        nn.init.zeros_(self.w_x.bias)
        self.head = Head(h + d, p)

    def slot_weights(self, x: Tensor) -> Tensor:
        """``z = softmax_k MLP([x, Kf_k, x - Kf_k, x * Kf_k])``: ``[..., D] -> [..., K]``."""
        return self.address(x)

    @staticmethod
    def read(mem: Tensor, z: Tensor) -> Tensor:
        """``o = sum_k z_k S_k``: ``[B, K, h], [B, K] -> [B, h]`` (never changes ``mem``)."""
        return (z.unsqueeze(-1) * mem).sum(1)

    def write(self, mem: Tensor, zk: Tensor, px: Tensor) -> Tensor:
        """One step: read ``o`` with ``zk = z[..., None]`` (``[B, K, 1]``), then erase/add. ``px = W_x x_t + b``
        is precomputed for all steps, so only the recurrent part runs here. Returns the new ``S``."""
        h = self.p.hidden
        o = (zk * mem).sum(1)  # read before write
        gates = torch.addmm(px, o, self.w_o.weight.t())  # [W_e; W_g; W_a] [x; o] + b
        sig = torch.sigmoid(gates[:, : 2 * h])
        erase = sig[:, None, :h]
        add = (sig[:, h:] * torch.tanh(gates[:, 2 * h :])).unsqueeze(1)
        return mem - zk * (mem * erase - add)  # = S * (1 - z e) + z a

    def key_penalty(self) -> Tensor:
        k = self.address.keys
        gram = k @ k.t()
        off = (gram.sum() - gram.diagonal().sum()) / 2  # sum_{i<j} <k_i, k_j>
        return self.p.key_reg * off / (0.5 * (k * k).sum())

    def memory(self, x: Tensor, mask: Tensor) -> Tensor:
        """Fold the front-padded history ``x [B, L, D]`` into ``S [B, K, h]``."""
        b, length, _ = x.shape
        mem = x.new_zeros(b, self.p.slots, self.p.hidden)
        n_max = int(mask.sum(1).max()) if b else 0
        if n_max == 0:
            return mem
        x, mask = x[:, length - n_max:], mask[:, length - n_max:]  # all-padding columns are no-ops: skip them
        z = x.new_zeros(b, n_max, self.p.slots, 1)  # z = 0 on padding: the write leaves S unchanged
        z[mask] = self.slot_weights(x[mask]).unsqueeze(-1).to(z.dtype)  # the DIN-MLP addressing: real events only
        px = self.w_x(x)  # input part of the gates, all steps at once
        for zk_t, px_t in zip(z.unbind(1), px.unbind(1), strict=True):
            mem = self.write(mem, zk_t, px_t)
        return mem

    def _logit(self, mem: Tensor, tgt: Tensor) -> Tensor:
        return self.head(torch.cat([self.read(mem, self.slot_weights(tgt)), tgt], dim=-1))

    def forward(self, batch):
        x = self.emb.seq(batch, "hist")
        mask = front_mask(batch["hist_len"].long(), x.shape[1])
        tgt = self.emb.target(batch)
        return self._logit(self.memory(x, mask), tgt), self.key_penalty()

    def init_state(self, batch_size):
        return torch.zeros(batch_size, self.p.slots, self.p.hidden, device=self.address.keys.device)

    def update(self, state, event):
        x = self.emb(event["item"], event["cate"], event["behavior"])
        z = self.slot_weights(x) * (event["item"] > 0).unsqueeze(-1)
        return self.write(state, z.unsqueeze(-1), self.w_x(x))

    def score(self, state, cand):
        return self._logit(state, self.emb(cand["item"], cand["cate"], None))


class RUMItemParams(ModelParams):
    variant: str = Field("fifo", pattern="^(fifo|din)$",
                         description="fifo: memory of the K most recent behaviours (paper RUM-I); din: HPMN RUM_ITEM")
    slots: int = Field(5, ge=1, description="fifo: memory size K")


@register
class RUMItem(CTRModel):
    """Item-level RUM (models.md §14, RUM-I), ``variant=fifo`` (default)::

        M_u = the K most recent behaviour embeddings (FIFO, written after each event)
        w_k = softmax_k(e_tgt . m_k)  over filled slots;   p_m = sum_k w_k m_k
        logit = head([e_tgt; p_m])

    The paper merges ``p_u + alpha p_m`` and scores ``<p, q_i>``; without user embeddings (base) the
    read vector goes to the zoo's head with the candidate instead. ``variant=din`` is the HPMN repo's
    ``RUM_ITEM``: DIN attention (query Dense + PReLU, MLP 80/40 ReLU, masked softmax) of the candidate
    over the whole history, ``head([e_tgt; att])``; with ``append_target=True`` the reference's zeroed
    candidate slot (Q-H7) is kept inside its softmax. In the fifo variant the memory is read before the
    candidate is written, so ``append_target`` changes nothing.

    Reproduced: HPMN baseline head (Affine -> 200 tanh -> 80 tanh, dropout 0.2), lr 1e-3, batch 128.
    Fixed: no user-id embedding. Incremental (both variants): the state is the id buffer the model reads
    (the last K events, or the last L = the layout's width for ``din``), pushed one event at a time.
    """

    name = "rum_item"
    layout = "hpmn"
    Params = RUMItemParams
    train_defaults = HPMN_SUITE
    incremental = True

    def __init__(self, spec: DataSpec, p: RUMItemParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d = self.emb.dim
        self.att = None
        if p.variant == "din":
            self.att = DINAttention(d, d, hidden=(80, 40), act="relu", query_proj=True)
        self.capacity = p.slots if p.variant == "fifo" else spec.widths.get("hist", 0)
        self.head = Head(2 * d, p)

    def _logit(self, mem: dict[str, Tensor], n: Tensor, tgt: Tensor) -> Tensor:
        """Read the memory (front-padded ids ``mem``, ``n`` real entries) with the candidate ``tgt``."""
        m = self.emb(mem["item"], mem["cate"], mem["behavior"])
        mask = front_mask(n, m.shape[1])
        if self.att is None:
            w = masked_softmax(torch.einsum("bkd,bd->bk", m, tgt), mask)
            read = (w.unsqueeze(-1) * m).sum(1)
        else:
            if self.p.append_target:  # reference: the candidate slot is zeroed but still in the softmax
                m = torch.cat([m, m.new_zeros(m.shape[0], 1, m.shape[2])], dim=1)
                mask = front_mask(n + 1, m.shape[1])
            read, _ = self.att(tgt, m, mask)
        return self.head(torch.cat([tgt, read], dim=-1))

    def forward(self, batch):
        n = batch["hist_len"].long()
        keep = self.p.slots if self.att is None else batch["hist_item"].shape[1]
        mem = {k: batch[f"hist_{k}"][:, -keep:] for k in ("item", "cate", "behavior")}
        logit = self._logit(mem, n.clamp(max=keep), self.emb.target(batch))
        return logit, zero(logit)

    def init_state(self, batch_size):
        dev = self.emb.item.weight.device
        if self.capacity <= 0:
            raise ValueError("rum_item variant=din needs the layout's history width (spec.widths['hist'])")
        ids = {k: torch.zeros(batch_size, self.capacity, dtype=torch.int32, device=dev) for k in ("item", "cate", "behavior")}
        return ids, torch.zeros(batch_size, dtype=torch.long, device=dev)

    def update(self, state, event):
        """Push one event per user (padding events leave the memory unchanged); the oldest drops out."""
        mem, n = state
        valid = event["item"] > 0
        new = {k: torch.where(valid[:, None], torch.cat([v[:, 1:], event[k][:, None].to(v.dtype)], dim=1), v)
               for k, v in mem.items()}
        return new, (n + valid.long()).clamp(max=self.capacity)

    def score(self, state, cand):
        mem, n = state
        return self._logit(mem, n, self.emb(cand["item"], cand["cate"], None))
