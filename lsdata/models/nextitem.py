"""Next-item models (issue #5): SASRec, GRU4Rec, STAMP, Caser and SDM in the next-item framing.

Every model encodes a sample's front-padded history (:class:`lsdata.nextitem.NextItemDataset` batch:
``hist_item``/``hist_cate`` ``[B, L]``, ``hist_len``, ``user``) into a user vector ``u`` ``[B, D]`` and scores an
item ``i`` as ``u . W[i] + b[i]`` with the model's output table (:meth:`NextItemModel.output`), so full
ranking over every item is one matrix product per chunk of items (:meth:`NextItemModel.item_scores`, which
``hpmn_next`` overrides with its candidate-queried read of the memory slots, still without a ``[B, N, d]``
tensor). ``forward(batch, items=None)`` returns the logits of every item ``[B, I + 1]`` (index 0 = padding,
scored ``-inf``) or of the given ``items`` ``[B, C]``, plus the model's extra loss; the trainer
(:mod:`lsdata.nextitem_train`) turns them into the loss the paper uses (``train_defaults["loss"]``).

Models with a causal per-position encoder (``encode_seq``: ``sasrec``, ``gru4rec_next``, ``dman``) also train
with every position as a target (``--targets all``, ``train_defaults["targets"]``; the official SASRec and DMAN
training): ``forward(batch, items, positions)`` scores the per-position vectors at ``positions`` ``[B, L]``, and
their ``encode`` is the last position of ``encode_seq`` (one code path). The others train one target per sample
(the last history position predicts it; the sliding window of :mod:`lsdata.nextitem` turns every position into
a sample, as RecBole does).

Choices made once here: item 0 is padding and embeds to zero; the optimiser is Adam (the trainer's), where a
paper used Adagrad (GRU4Rec, SDM) the learning rate default is Adam's reference one instead.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import DataSpec
from lsdata.models.blocks import caser_horizontal, front_mask, masked_softmax, run_rnn


class NextItemParams(BaseModel):
    """Parameters common to the next-item models (each model's ``Params`` re-defaults them)."""

    model_config = ConfigDict(extra="forbid")

    emb_dim: int = Field(64, ge=1, description="item embedding size (d)")
    max_len: int = Field(50, ge=1, description="history window L: the most recent L events before the target")


class NextItemModel(nn.Module):
    """A next-item model: ``encode(batch) -> (u [B, D], extra)``, ``output() -> (W [I+1, D], b [I+1] | None)``,
    optionally ``encode_seq(batch) -> (U [B, L, D], extra)`` (per-position, causal).

    Class attributes as :class:`lsdata.models.base.CTRModel` (``name``, ``Params``, ``train_defaults``,
    ``presets``); ``train_defaults`` also names the paper's ``loss`` (ce | sampled_softmax | bce | bpr),
    training ``negatives`` per target, ``sampler`` (uniform | popularity, ``pop_alpha``) and ``targets``
    (last | all, :class:`lsdata.defaults.NextItemOptions`).
    """

    task: ClassVar[str] = "next_item"
    name: ClassVar[str] = ""
    layout: ClassVar[str] = "sequences"  #: reads sequences/ directly, no layout
    incremental: ClassVar[bool] = False
    Params: ClassVar[type[NextItemParams]] = NextItemParams
    train_defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, spec: DataSpec, params: NextItemParams):
        super().__init__()
        self.spec, self.p = spec, params

    @classmethod
    def make_params(cls, dataset: str, overrides: dict[str, Any] | None = None) -> NextItemParams:
        """Params = class defaults, then the dataset preset, then ``overrides`` (validated)."""
        return cls.Params.model_validate({**cls.presets.get(dataset, {}), **(overrides or {})})

    @classmethod
    def per_position(cls) -> bool:
        """Whether the model has a per-position encoder (:meth:`encode_seq`), needed by ``--targets all``."""
        return cls.encode_seq is not NextItemModel.encode_seq

    def encode_seq(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``([B, L, D], extra)``: the user vector after each input position of the front-padded window, causal
        (position ``j`` depends on inputs ``<= j`` only); optional."""
        raise NotImplementedError(f"{self.name} has no per-position encoder (train it with --targets last)")

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(u [B, D], extra)``: by default the last position of :meth:`encode_seq`."""
        u, extra = self.encode_seq(batch)
        return u[:, -1], extra

    def output(self) -> tuple[Tensor, Tensor | None]:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor], items: Tensor | None = None,
                positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits of every item (``items`` None) or of ``items`` ``[N, C]``, for the last position of each sample
        (``N = B``) or, given ``positions`` (bool ``[B, L]``: the counted targets of all-position windows), for the
        targets at those positions, flattened in row-major order (``N = positions.sum()``), each scored from the
        :meth:`encode_seq` output at its ``batch["pos_source"]`` position (the same position if absent); and the
        extra loss."""
        if positions is None:
            u, extra = self.encode(batch)
        else:
            u, extra = self.encode_seq(batch)
            if "pos_source" in batch:  # a target tied in time with the events before it reads the output before the tie
                u = u.gather(1, batch["pos_source"].long()[..., None].expand(-1, -1, u.shape[-1]))
            u = u[positions]
        w, b = self.output()
        if items is None:
            logits = self.item_scores(u, w, b)
            return logits.index_fill(1, torch.zeros(1, dtype=torch.long, device=u.device), float("-inf")), extra
        items = items.long()
        return self.item_scores(u, w[items], b[items] if b is not None else None), extra

    def item_scores(self, u: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        """Scores ``[N, C]`` of the user vectors ``u`` ``[N, D]`` against output rows ``w``: ``[C, d]`` (the same
        items for every row) or ``[N, C, d]`` (per-row items); ``b`` has ``w``'s leading shape or is None.
        Default ``u · w + b``; a model whose score is not a dot product (``hpmn_next``) overrides it, and every
        scorer (training losses, full and sampled ranking) goes through it."""
        s = u @ w.T if w.dim() == 2 else torch.einsum("bd,bcd->bc", u, w)
        return s + b if b is not None else s


def _zero(ref: Tensor) -> Tensor:
    return torch.zeros((), device=ref.device, dtype=torch.float32)


def glorot_tables(*tables: nn.Embedding) -> None:
    """Glorot-uniform ``U(±√(6 / (rows + d)))`` per table (the official SASRec and GRU4Rec initialisation), with
    the ``padding_idx`` row of a table that has one set to zeros."""
    for t in tables:
        nn.init.xavier_uniform_(t.weight)
        if t.padding_idx is not None:
            with torch.no_grad():
                t.weight[t.padding_idx].zero_()


class SASBlock(nn.Module):
    """One official SASRec block: only the queries are layer-normalised, the residual adds them; the feed-forward
    is ``d -> ffn -> d`` (official: ``ffn = d``)."""

    def __init__(self, d: int, heads: int, p: float, ffn: int | None = None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-8), nn.LayerNorm(d, eps=1e-8)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.w1, self.w2 = nn.Linear(d, ffn or d), nn.Linear(ffn or d, d)
        self.drop, self.heads = nn.Dropout(p), heads

    def attend(self, q: Tensor, kv: Tensor, allow: Tensor | None, frozen: bool = False) -> Tensor:
        """``softmax(q W_q (kv W_k)ᵀ / √(d/heads) + mask) kv W_v``, heads merged: ``[B, t, d]``. ``allow``: bool
        (True = may attend) or an additive float mask; ``frozen``: the weights as constants (no gradient, no dropout)."""
        b, t, d = q.shape
        lin = (lambda m, z: F.linear(z, m.weight.detach(), m.bias.detach())) if frozen else (lambda m, z: m(z))  # noqa: E731
        heads = lambda z: z.view(b, z.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        qh = heads(lin(self.q, q))
        if allow is not None and allow.is_floating_point():
            allow = allow.to(qh.dtype)  # under autocast the projections are bfloat16
        a = F.scaled_dot_product_attention(qh, heads(lin(self.k, kv)), heads(lin(self.v, kv)), attn_mask=allow,
                                           dropout_p=self.drop.p if self.training and not frozen else 0.0)
        return a.transpose(1, 2).reshape(b, t, d)

    def forward(self, x: Tensor, allow: Tensor | None, pad: Tensor, kv: Tensor | None = None) -> Tensor:
        """``x`` ``[B, t, d]`` attends to ``kv`` ``[B, s, d]`` (default: ``x`` itself) under ``allow``."""
        q = self.ln1(x)
        x = (q + self.attend(q, x if kv is None else kv, allow)) * pad
        y = self.ln2(x)
        return (y + self.drop(self.w2(self.drop(F.relu(self.w1(y)))))) * pad


@register
class SASRec(NextItemModel):
    """SASRec (Kang & McAuley, ICDM 2018), the official kang205/SASRec forward (models.md §8).

    E = ItemEmb(s)·√d + PosEmb(slot) (learned, absolute slot of the left-padded window), dropout, padding
    mask; each of ``blocks`` blocks: Q = LN(x), x = Q + MHA(Q, x, x) with causal and key-padding masks
    (scaled 1/√(d/heads), dropout on the weights), then y = LN(x), x = y + Dropout(W2 ReLU(W1 y)) (W1 d x d
    as the official code, or d x ``ffn_dim``); F = LN(x);
    score(t, i) = F_t · ItemEmb(i) (shared table). Loss (official): every position t of the window predicts
    s_{t+1} (``--targets all``), binary CE with one uniform negative per position, mean over the counted
    positions; evaluation scores F_last. Defaults (official, models.md §8e): d 50, 2 blocks, 1 head, dropout
    0.5 (0.2 for ML-1M), L 50 (200 for ML-1M), batch 128, Adam lr 1e-3 with β2 = 0.98. Both tables start
    Glorot-uniform over their full shape (``tf.get_variable``'s default in the official ``modules.py``), the
    padding row zero: torch's N(0, 1) item table scored 8x lower NDCG@10 on the Amazon slice (RESULTS.md).
    """

    name = "sasrec"

    class Params(NextItemParams):
        emb_dim: int = Field(50, ge=1, description="d (official 50)")
        blocks: int = Field(2, ge=1, description="self-attention blocks (official 2)")
        heads: int = Field(1, ge=1, description="attention heads, must divide d (official 1)")
        dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout (official 0.5; 0.2 for ML-1M)")
        ffn_dim: int | None = Field(None, ge=1, description="feed-forward inner size; None = d (official: "
                                    "two d x d layers; RecBole's inner_size 256)")

    train_defaults = {"lr": 1e-3, "batch_size": 128, "betas": (0.9, 0.98), "loss": "bce", "negatives": 1, "targets": "all"}

    def __init__(self, spec: DataSpec, params: Params):
        super().__init__(spec, params)
        d, p = params.emb_dim, params
        if d % p.heads:
            raise ValueError(f"heads={p.heads} must divide emb_dim={d}")
        self.item = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.pos = nn.Embedding(p.max_len, d)
        self.drop = nn.Dropout(p.dropout)
        self.blocks = nn.ModuleList(SASBlock(d, p.heads, p.dropout, p.ffn_dim) for _ in range(p.blocks))
        self.ln = nn.LayerNorm(d, eps=1e-8)
        glorot_tables(self.item, self.pos)

    def encode_seq(self, batch):
        s = batch["hist_item"].long()
        t = s.shape[1]
        pad = (s > 0).unsqueeze(-1).float()
        x = self.item(s) * math.sqrt(self.p.emb_dim) + self.pos.weight[-t:]
        x = self.drop(x) * pad
        eye = torch.eye(t, dtype=torch.bool, device=s.device)
        allow = (torch.tril(torch.ones_like(eye)) & (s > 0)[:, None, :]) | eye  # self always allowed: no empty rows
        for blk in self.blocks:
            x = blk(x, allow[:, None], pad)
        return self.ln(x), _zero(x)

    def output(self):
        return self.item.weight, None


@register
class GRU4RecNext(NextItemModel):
    """GRU4Rec (Hidasi et al., ICLR 2016; CIKM 2018 losses), next-item framing (models.md §10).

    h = GRU(Dropout_e(ItemEmb(s_1..s_n))) over the real steps only (padding never enters the state);
    score(i) = Dropout(h) · W[i] + b_i (b: ``item_bias``) with the official ``xe`` parameter set: constrained embedding (input
    table = output table, so d = hidden = 100, one layer), hidden dropout 0.4, no embedding dropout
    (``dropout_p_embed``), sampled softmax over 2048 popularity^0.5 negatives with logQ correction; the item
    table starts uniform in ±√(6 / (N + d)) (the official ``init_parameter_matrix``; torch's N(0, 1) default
    gives scores of size √d at the start and trained to a lower NDCG@10 on MovieLens-100k, RESULTS.md).
    ``hidden`` ≠ d gives a GRU of that many units followed by a linear map to d before scoring (RecBole's
    ``dense`` layer; the official unconstrained variant has a separate output table instead). Departures:
    Adam lr 1e-3 instead of Adagrad(0.2, momentum); back-propagation over the whole window of the most recent
    L events instead of session-parallel one-step BPTT; negatives per sample instead of shared in-batch ones.
    """

    name = "gru4rec_next"

    class Params(NextItemParams):
        emb_dim: int = Field(100, ge=1, description="GRU units = item embedding size (official layers [100], constrained embedding)")
        dropout: float = Field(0.4, ge=0.0, lt=1.0, description="dropout on the hidden state (official xe: 0.4)")
        embed_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the input embeddings "
                                     "(official dropout_p_embed, xe: 0.0; RecBole: 0.3)")
        hidden: int | None = Field(None, ge=1, description="GRU units; None = emb_dim (official constrained "
                                   "embedding); other: a linear map hidden -> emb_dim before scoring (RecBole: 128)")
        item_bias: bool = Field(True, description="a learned bias per item in the score (official: the output "
                                "layer's By; RecBole: none)")
        gru_bias: bool = Field(True, description="biases in the GRU's gates (official: yes; RecBole: bias=False)")

    train_defaults = {"lr": 1e-3, "batch_size": 32, "loss": "sampled_softmax", "negatives": 2048,
                      "sampler": "popularity", "pop_alpha": 0.5}

    def __init__(self, spec: DataSpec, params: Params):
        super().__init__(spec, params)
        d, h = params.emb_dim, params.hidden or params.emb_dim
        self.item = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        glorot_tables(self.item)  # official init_parameter_matrix: U(±√(6 / (N + d)))
        self.bias = nn.Parameter(torch.zeros(spec.n_items + 1)) if params.item_bias else None
        self.embed_drop = nn.Dropout(params.embed_dropout)
        self.gru = nn.GRU(d, h, batch_first=True, bias=params.gru_bias)
        self.dense = nn.Linear(h, d) if h != d else nn.Identity()
        self.drop = nn.Dropout(params.dropout)

    def encode_seq(self, batch):
        x = self.embed_drop(self.item(batch["hist_item"].long()))
        out, _, _ = run_rnn(self.gru, x, batch["hist_len"].long())
        return self.dense(self.drop(out)), _zero(out)  # out[:, -1] is the state after the last real step

    def output(self):
        return self.item.weight, self.bias


@register
class STAMP(NextItemModel):
    """STAMP (Liu et al., KDD 2018), the official uestcnlp/STAMP forward (models.md §9).

    x_i = ItemEmb(s_i) (max-norm 1, as a differentiable rescaling of the looked-up rows and of the output table
    instead of torch's in-place renorm of the table), x_t = the last click, m_s = mean of the real x_i;
    α_i = w_0ᵀ σ(W_1 x_i + W_2 x_t + W_3 m_s + b_a) (no softmax, official ``norm_type='none'``; padding masked);
    m_a = Σ α_i x_i + m_s; h_s = tanh(W_A m_a), h_t = tanh(W_B x_t) (no biases); score(i) = ⟨h_s ⊙ h_t, x_i⟩.
    Loss: full softmax cross-entropy over all items. Defaults (official config): d 100, batch 512, Adam
    lr 3e-3, weights N(0, 0.05), embeddings N(0, 0.002), L 50 (a session-length bound; official sessions).
    """

    name = "stamp"

    class Params(NextItemParams):
        emb_dim: int = Field(100, ge=1, description="d (official 100)")
        max_norm: float | None = Field(1.0, gt=0, description="embedding max-norm (official 1; None = off)")

    train_defaults = {"lr": 3e-3, "batch_size": 512, "loss": "ce"}

    def __init__(self, spec: DataSpec, params: Params):
        super().__init__(spec, params)
        d = params.emb_dim
        self.item = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.w1, self.w2, self.w3 = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.b_a = nn.Parameter(torch.zeros(d))
        self.w0 = nn.Linear(d, 1, bias=False)
        self.wa, self.wb = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        for lin in (self.w1, self.w2, self.w3, self.w0, self.wa, self.wb):
            nn.init.normal_(lin.weight, 0.0, 0.05)
        nn.init.normal_(self.item.weight, 0.0, 0.002)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def _norm(self, x: Tensor) -> Tensor:
        if self.p.max_norm is None:
            return x
        return x * (self.p.max_norm / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)

    def encode(self, batch):
        s = batch["hist_item"].long()
        x = self._norm(self.item(s))
        mask = (s > 0).unsqueeze(-1).to(x.dtype)
        xt = x[:, -1]
        ms = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
        alpha = self.w0(torch.sigmoid(self.w1(x) + (self.w2(xt) + self.w3(ms) + self.b_a)[:, None])) * mask
        ma = (alpha * x).sum(1) + ms
        return torch.tanh(self.wa(ma)) * torch.tanh(self.wb(xt)), _zero(x)

    def output(self):
        return self._norm(self.item.weight), None


@register
class CaserNext(NextItemModel):
    """Caser (Tang & Wang, WSDM 2018), the official graytowne/caser_pytorch forward (models.md §11).

    E = ItemEmb(last L items) as a 1-channel L×d image; vertical conv (n_v filters L×1) -> n_v·d; horizontal
    convs of heights 1..L (n_h filters k×d each, ReLU, max-pooled over the windows that end on a real event:
    windows of padding only are left out, as in the CTR ``caser``; shared :func:`caser_horizontal`) -> L·n_h;
    z = ReLU(W_1 Dropout([o_v; o_h]) + b_1) [d]; x = [z; UserEmb(u)] [2d]; score(i) = W_2[i]·x + b_2[i] with
    separate output tables. Loss: binary CE with 3 uniform negatives per target (official). The official
    predicts the T = 3 next items from each history: ``--horizon 3``; the default stays 1 (one target per
    history), which was level with 3 on validation and 2.4-3x cheaper per epoch (RESULTS.md). Defaults
    (official): d 50, L 5, n_v 4, n_h 16, dropout 0.5, Adam lr 1e-3, weight decay 1e-6, batch 512.
    """

    name = "caser_next"

    class Params(NextItemParams):
        emb_dim: int = Field(50, ge=1, description="d (official 50)")
        max_len: int = Field(5, ge=1, description="L, the window of recent items (official 5)")
        n_v: int = Field(4, ge=1, description="vertical filters (official 4)")
        n_h: int = Field(16, ge=1, description="horizontal filters per height (official 16)")
        dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout before the dense layer (official 0.5)")

    train_defaults = {"lr": 1e-3, "batch_size": 512, "weight_decay": 1e-6, "loss": "bce", "negatives": 3}

    def __init__(self, spec: DataSpec, params: Params):
        super().__init__(spec, params)
        d, n, p = params.emb_dim, params.max_len, params
        self.item = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.user = nn.Embedding(spec.n_users + 1, d)
        self.conv_v = nn.Conv2d(1, p.n_v, (n, 1))
        self.conv_h = nn.ModuleList(nn.Conv2d(1, p.n_h, (k, d)) for k in range(1, n + 1))
        self.fc1 = nn.Linear(p.n_v * d + p.n_h * n, d)
        self.drop = nn.Dropout(p.dropout)
        self.w2 = nn.Embedding(spec.n_items + 1, 2 * d)
        self.b2 = nn.Parameter(torch.zeros(spec.n_items + 1))
        nn.init.normal_(self.w2.weight, 0.0, 1.0 / (2 * d))

    def encode(self, batch):
        x = self.item(batch["hist_item"].long())  # [B, L, d], front-padded
        o_v = self.conv_v(x.unsqueeze(1)).flatten(1)
        n = batch["hist_len"].long().clamp(max=x.shape[1])
        o_h = caser_horizontal(x, n, self.conv_h, relu=True)  # windows of padding only never enter the max
        z = F.relu(self.fc1(self.drop(torch.cat([o_v, o_h], 1))))
        return torch.cat([z, self.user(batch["user"].long())], 1), _zero(z)

    def output(self):
        return self.w2.weight, self.b2


@register
class SDM(NextItemModel):
    """SDM, Sequential Deep Matching (Lv et al., CIKM 2019), after the official alicogintel/SDM demo (models.md §7).

    e_t = [ItemEmb; CateEmb] (item 64 + category 16; the JD shop/brand fields do not exist here); short-term
    session S = the most recent ``short_len`` events (lsdata data has no session ids), long-term L_u = the older
    events of the window. Short: h = LSTM(e_S) (hidden 64, padding never enters the state); ĥ = LN(h + MHA(h)) (4
    heads, padding mask); user attention q = tanh(W e_u), a = softmax_k(qᵀ ĥ_k), s = Σ a_k ĥ_k + ĥ_last. Long: per
    field f, z_f = Σ softmax_k(g_kᵀ W_f e_u) g_k over L_u; p = tanh(W_p [z_item; z_cate] + b). Gated fusion:
    G = σ(W_g [s; p; e_u] + b), o = G ⊙ s + (1 − G) ⊙ p; score(i) = o · W_out[i] (separate output table, zero
    bias). Loss: sampled softmax (official num_samples 2000; uniform sampler here, the TF default is log-uniform).
    Defaults (official flags): item emb 64, hidden 64, heads 4, dropout 0.2, batch 256, lr 1e-3 (Adam here;
    official Adagrad), session length 50 -> window 100 = 20 short + 80 long by default.
    """

    name = "sdm"

    class Params(NextItemParams):
        emb_dim: int = Field(64, ge=1, description="item embedding size (official 64)")
        cate_dim: int = Field(16, ge=1, description="category embedding size (official 16)")
        hidden: int = Field(64, ge=1, description="LSTM / attention / user-vector size (official 64)")
        heads: int = Field(4, ge=1, description="self-attention heads, must divide hidden (official 4)")
        max_len: int = Field(100, ge=2, description="window L = short-term + long-term events")
        short_len: int = Field(20, ge=1, description="most recent events forming the short-term 'session'")
        dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout in the attention (official 0.2)")

    train_defaults = {"lr": 1e-3, "batch_size": 256, "loss": "sampled_softmax", "negatives": 2000}

    def __init__(self, spec: DataSpec, params: Params):
        super().__init__(spec, params)
        p, h = params, params.hidden
        if p.short_len >= p.max_len:
            raise ValueError(f"short_len={p.short_len} must be < max_len={p.max_len}")
        self.item = nn.Embedding(spec.n_items + 1, p.emb_dim, padding_idx=0)
        self.cate = nn.Embedding(spec.n_cates + 1, p.cate_dim, padding_idx=0)
        self.user = nn.Embedding(spec.n_users + 1, h)
        self.lstm = nn.LSTM(p.emb_dim + p.cate_dim, h, batch_first=True)
        self.mha = nn.MultiheadAttention(h, p.heads, dropout=p.dropout, batch_first=True)
        self.ln = nn.LayerNorm(h)
        self.wq = nn.Linear(h, h)
        self.w_item, self.w_cate = nn.Linear(h, p.emb_dim, bias=False), nn.Linear(h, p.cate_dim, bias=False)
        self.wp = nn.Linear(p.emb_dim + p.cate_dim, h)
        self.wg = nn.Linear(3 * h, h)
        self.out = nn.Embedding(spec.n_items + 1, h)

    @staticmethod
    def _pool(g: Tensor, query: Tensor, mask: Tensor) -> Tensor:
        return (masked_softmax((g @ query[:, :, None]).squeeze(-1), mask)[..., None] * g).sum(1)

    def encode(self, batch):
        s, c, n = batch["hist_item"].long(), batch["hist_cate"].long(), batch["hist_len"].long()
        k = self.p.short_len
        gi, gc = self.item(s), self.cate(c)
        n_s = n.clamp(max=k)
        short_mask = front_mask(n_s, k)
        h, _, _ = run_rnn(self.lstm, torch.cat([gi, gc], -1)[:, -k:], n_s)
        a, _ = self.mha(h, h, h, key_padding_mask=~short_mask, need_weights=False)
        hh = self.ln(h + a) * short_mask[..., None]
        eu = self.user(batch["user"].long())
        q = torch.tanh(self.wq(eu))
        s_t = self._pool(hh, q, short_mask) + hh[:, -1]
        long_mask = front_mask(n - n_s, s.shape[1] - k)
        z_item = self._pool(gi[:, :-k], self.w_item(eu), long_mask)
        z_cate = self._pool(gc[:, :-k], self.w_cate(eu), long_mask)
        p_u = torch.tanh(self.wp(torch.cat([z_item, z_cate], 1)))
        g = torch.sigmoid(self.wg(torch.cat([s_t, p_u, eu], 1)))
        return g * s_t + (1 - g) * p_u, _zero(s_t)

    def output(self):
        return self.out.weight, None
