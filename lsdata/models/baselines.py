"""The HPMN-suite CTR baselines (models.md §10-§18, protocol.md §3.2-§3.3).

Every class follows the reference code's architecture (HPMN ``model.py`` unless said otherwise) with the
zoo-wide choices of :mod:`lsdata.models.base`; its docstring lists what is reproduced and what is fixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import CTRModel, DataSpec, ModelParams, zero
from lsdata.models.blocks import (
    Affine,
    BehaviorEmbedding,
    DINAttention,
    Head,
    activation,
    caser_horizontal,
    front_mask,
    gru_step,
    history,
    lstm_step,
    masked_softmax,
    masked_sum,
    pool,
    run_rnn,
)

HPMN_SUITE = {"lr": 1e-3, "batch_size": 128}


def _where(valid: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-row state update: ``new`` where ``valid`` (an event), ``old`` on padding."""
    return torch.where(valid[:, None], new, old)


@register
class DNN(CTRModel):
    """Embedding&MLP (models.md §16): ``head([e_tgt; pool_t e_t])``.

    Reproduced: pooling over the history only (HPMN's ``item_mask_1``), head Affine -> 200 tanh -> 80 tanh
    with dropout 0.2. Fixed: no user-id embedding (see base); mean pooling by default (``pooling=sum`` is the
    reference's; see ``ModelParams.pooling``).
    Incremental: the state is the running sum and count.
    """

    name = "dnn"
    layout = "hpmn"
    train_defaults = HPMN_SUITE
    incremental = True

    def __init__(self, spec: DataSpec, p: ModelParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        self.head = Head(2 * self.emb.dim, p)

    def forward(self, batch):
        x, mask, n, tgt = history(self.emb, batch, append_target=False)
        return self.head(torch.cat([tgt, pool(masked_sum(x, mask), n, self.p.pooling)], -1)), zero(tgt)

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
        return self.head(torch.cat([self.emb(cand["item"], cand["cate"], None), pool(s, n, self.p.pooling)], -1))


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


# ----------------------------------------------------------------------------------------------------------
# SVD++ (models.md §15)


class SVDppParams(ModelParams):
    norm: str = Field("count", pattern="^(count|l1_matrix)$",
                      description="normaliser of the implicit sum: count = |N(u)|^-1/2 (Koren); l1_matrix = 1/sqrt of "
                                  "the masked sequence's matrix 1-norm (HPMN code's tf.norm(ord=1, axis=(1,2)))")
    biases: bool = Field(False, description="add Koren's global and item biases mu + b_i (the HPMN code has none)")
    append_target: bool = Field(False, description="put the candidate into N(u) (the HPMN code sums over the "
                                                   "target-appended sequence); default: history only")


@register
class SVDpp(CTRModel):
    """SVD++ as a CTR model (models.md §15): ``logit = q_c . |N(u)|^-1/2 sum_{j in N(u)} y_j``.

    Koren's ``r_ui = mu + b_u + b_i + q_i . (p_u + |N(u)|^-1/2 sum_j y_j)`` with **no** ``p_u`` (and no ``b_u``):
    users are not embedded (see :mod:`lsdata.models.base`: under the cut-time split a test user never occurs
    in training), so the user is represented by the implicit-feedback term alone. Reproduced (HPMN
    ``model.py::SVDpp``): no MLP head, ``q`` and ``y`` from the one embedding table, no biases
    (``biases=True`` adds ``mu + b_i``). Fixed (models.md §15 g): ``N(u)`` is the history only and the
    normaliser is ``|N(u)|^-1/2``; ``append_target=True`` puts the candidate into ``N(u)`` and
    ``norm=l1_matrix`` uses the code's ``1/sqrt`` of the masked sequence's matrix 1-norm (the largest
    per-column absolute sum) - both together are the HPMN code. The HPMN code embeds the item id only
    (``use_cate=false use_behavior=false``); the default concatenates the fields as every other model.
    Incremental: the state is the running sum, the running per-column absolute sum and the count.
    """

    name = "svdpp"
    layout = "hpmn"
    Params = SVDppParams
    train_defaults = HPMN_SUITE
    incremental = True

    def __init__(self, spec: DataSpec, p: SVDppParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        self.mu = self.bias_emb = None
        if p.biases:
            self.mu = nn.Parameter(torch.zeros(()))
            self.bias_emb = nn.Embedding(spec.n_items + 1, 1, padding_idx=0)
            nn.init.zeros_(self.bias_emb.weight)

    def _logit(self, q: Tensor, s: Tensor, a: Tensor, n: Tensor, item: Tensor) -> Tensor:
        """``q`` candidate [B, D]; ``s`` sum, ``a`` per-column |.| sum [B, D]; ``n`` count [B] (all of N(u))."""
        if self.p.norm == "count":
            scale = n.clamp(min=1).rsqrt()
        else:
            scale = a.amax(-1).clamp(min=1e-12).rsqrt()
        logit = (q * s).sum(-1) * scale
        if self.bias_emb is not None:
            logit = logit + self.mu + self.bias_emb(item).squeeze(-1)
        return logit

    def forward(self, batch):
        x, mask, n, q = history(self.emb, batch, self.p.append_target)
        xm = x * mask[..., None]
        return self._logit(q, xm.sum(1), xm.abs().sum(1), n.float(), batch["item"]), zero(q)

    def init_state(self, batch_size):
        w = self.emb.item.weight
        z = torch.zeros(batch_size, self.emb.dim, device=w.device)
        return z, z.clone(), torch.zeros(batch_size, device=w.device)

    def update(self, state, event):
        s, a, n = state
        valid = event["item"] > 0
        e = self.emb(event["item"], event["cate"], event["behavior"]) * valid[:, None]
        return s + e, a + e.abs(), n + valid

    def score(self, state, cand):
        s, a, n = state
        q = self.emb(cand["item"], cand["cate"], None)
        if self.p.append_target:
            s, a, n = s + q, a + q.abs(), n + 1
        return self._logit(q, s, a, n, cand["item"])


# ----------------------------------------------------------------------------------------------------------
# LSTM (models.md §17)


@register
class LSTM4Rec(CTRModel):
    """LSTM as a CTR baseline (models.md §17): an LSTM over the history, its final ``[c; h]`` to the head.

    Reproduced: LSTM(h=32) over the real steps only (``sequence_length``), the head sees the final cell **and**
    hidden state (TF ``state_is_tuple=False``), head 200-80 tanh, dropout 0.2. With ``append_target=True`` the
    candidate is the last LSTM step and the head sees ``[c; h]`` only (HPMN ``model.py::LSTM4Rec``); by default
    the history is candidate-free and the head gets ``[e_tgt; c; h]`` (as :class:`GRU4Rec`). Fixed: PyTorch
    LSTM gates (no TF ``forget_bias=1`` offset; PyTorch's uniform init). Incremental: the state is ``(h, c)``.
    """

    name = "lstm"
    layout = "hpmn"
    train_defaults = HPMN_SUITE
    incremental = True

    def __init__(self, spec: DataSpec, p: ModelParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        self.lstm = nn.LSTM(self.emb.dim, p.hidden, batch_first=True)
        self.head = Head(2 * p.hidden + (0 if p.append_target else self.emb.dim), p)

    def _out(self, tgt: Tensor, h: Tensor, c: Tensor) -> Tensor:
        return self.head(torch.cat([c, h] if self.p.append_target else [tgt, c, h], -1))

    def forward(self, batch):
        x, _, n, tgt = history(self.emb, batch, self.p.append_target)
        _, h, c = run_rnn(self.lstm, x, n)
        return self._out(tgt, h, c), zero(h)

    def init_state(self, batch_size):
        z = torch.zeros(batch_size, self.p.hidden, device=self.emb.item.weight.device)
        return z, z.clone()

    def update(self, state, event):
        h, c = state
        e = self.emb(event["item"], event["cate"], event["behavior"])
        h2, c2 = lstm_step(self.lstm, e, h, c)
        valid = event["item"] > 0
        return _where(valid, h2, h), _where(valid, c2, c)

    def score(self, state, cand):
        h, c = state
        e = self.emb(cand["item"], cand["cate"], None)
        if self.p.append_target:
            h, c = lstm_step(self.lstm, e, h, c)
        return self._out(e, h, c)


# ----------------------------------------------------------------------------------------------------------
# ARNN (models.md §18)


class ARNNParams(ModelParams):
    att_hidden: tuple[int, ...] = Field((80, 40), description="attention MLP hidden sizes")
    att_act: str = Field("relu", description="attention MLP activation (HPMN relu; MIMN repo sigmoid)")


@register
class ARNN(CTRModel):
    """Attention over GRU states (models.md §18): ``pool = sum_t a_t H_t``, ``a = softmax_t DIN(q, H_t)``.

    Reproduced (HPMN ``model.py::ARNN``): GRU(h=32) over the real steps; the HPMN attention (query
    ``PReLU(W e_tgt)`` projected to ``h``, MLP over ``[q; H_t; q - H_t; q * H_t]`` 80-40 ReLU, masked softmax);
    head 200-80 tanh, dropout 0.2. With ``append_target=True`` the candidate is the last GRU step, its own state
    is among the keys and the head sees the pooled vector only (HPMN); by default the history is candidate-free
    and the head gets ``[e_tgt; h_T; pool]`` (the MIMN repo's input without the sum, as :class:`GRU4Rec`).
    Not incremental: target attention re-reads every state for each candidate.
    """

    name = "arnn"
    layout = "hpmn"
    Params = ARNNParams
    train_defaults = HPMN_SUITE

    def __init__(self, spec: DataSpec, p: ARNNParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        self.gru = nn.GRU(self.emb.dim, p.hidden, batch_first=True)
        self.att = DINAttention(self.emb.dim, p.hidden, p.att_hidden, p.att_act, query_proj=True, norm="softmax")
        self.head = Head(p.hidden if p.append_target else self.emb.dim + 2 * p.hidden, p)

    def forward(self, batch):
        x, mask, n, tgt = history(self.emb, batch, self.p.append_target)
        out, h, _ = run_rnn(self.gru, x, n)
        pooled, _ = self.att(tgt, out, mask)
        return self.head(pooled if self.p.append_target else torch.cat([tgt, h, pooled], -1)), zero(h)


# ----------------------------------------------------------------------------------------------------------
# DIN (models.md §12)


class DINParams(ModelParams):
    head_act: str = Field("dice", description="head activation: dice (DIEN repo's DIN) | prelu (MIMN repo) | "
                                               "tanh | relu | elu | sigmoid")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each head layer (DIN/DIEN repos: none)")
    att_hidden: tuple[int, ...] = Field((80, 40), description="attention MLP hidden sizes")
    att_act: str = Field("sigmoid", description="attention MLP activation (DIEN/MIMN repos sigmoid; paper Dice)")
    att_norm: str = Field("softmax", pattern="^(softmax|none)$",
                          description="attention weights: softmax (masked; DIEN/MIMN repos) or none (paper: raw)")


@register
class DIN(CTRModel):
    """Deep Interest Network (models.md §12): DIN attention with the candidate as query over the history.

    Reproduced (mouna99/dien ``Model_DIN``, MIMN repo ``Model_DIN``): ``s_t = MLP([e_a; e_t; e_a - e_t;
    e_a * e_t])`` 80-40 sigmoid, no query projection, masked softmax (``att_norm=none``: the paper's
    unnormalised weights, padding zeroed); head input ``[e_a; pool_t e_t; e_a * pool_t e_t; att]`` ->
    Affine -> 200 -> 80 with Dice (``head_act=prelu``: the MIMN repo), no dropout. Fixed: mean pooling
    (the repos sum; see ``ModelParams.pooling``); no user embedding
    (the DIEN repo's ``e_u``; see base); Dice uses running statistics at evaluation (the repo's uses batch
    statistics always). ``append_target`` does not apply: the candidate is the query, never a key.
    Not incremental: the attention re-reads the whole history for each candidate.
    """

    name = "din"
    layout = "hpmn"
    Params = DINParams
    train_defaults = HPMN_SUITE

    def __init__(self, spec: DataSpec, p: DINParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d = self.emb.dim
        self.att = DINAttention(d, d, p.att_hidden, p.att_act, query_proj=False, norm=p.att_norm)
        self.head = Head(4 * d, p)

    def forward(self, batch):
        x, mask, n, tgt = history(self.emb, batch, append_target=False)
        att, _ = self.att(tgt, x, mask)
        s = pool(masked_sum(x, mask), n, self.p.pooling)
        return self.head(torch.cat([tgt, s, tgt * s, att], -1)), zero(tgt)


# ----------------------------------------------------------------------------------------------------------
# DIEN (models.md §13)


def augru(cell: nn.GRUCell, x: Tensor, att: Tensor, mask: Tensor, convention: str = "paper",
          h0: Tensor | None = None) -> Tensor:
    """GRU with attentional update gate (DIEN's AUGRU) over ``x`` ``[B, T, H_in]``; returns the final state.

    ``att`` ``[B, T]`` scales the update gate; ``mask`` ``[B, T]`` marks real steps (padding leaves the state
    exactly unchanged, so front padding of any width gives the same result). Gates are PyTorch's (``r, z, n``;
    ``z`` keeps the old state: a GRU step is ``h' = (1 - z) n + z h``). ``convention``:

    * ``paper`` (AAAI'19): ``u~ = a (1 - z)`` (``1 - z`` is the update gate toward the new state),
      ``h' = (1 - u~) h + u~ n``: ``a = 0`` keeps the state, ``a = 1`` is a plain GRU step.
    * ``official`` (mouna99/dien ``VecAttGRUCell``, TF convention): ``z~ = (1 - a) z``, ``h' = z~ h + (1 - z~) n``:
      ``a = 0`` is a plain GRU step, ``a = 1`` replaces the state by the candidate ``n``.

    Both are ``h' = lerp(h, n, c0 + c1 z)`` with per-step constants (padding: ``c0 = c1 = 0``), so the loop
    does one recurrent matmul pair and a few element-wise ops per step: the input projections of all steps
    are one matmul, the time axis is unbound once (indexing it in the loop would make every step's backward
    allocate a full ``[B, T, 3H]``), and the loop starts at the first step that is real in some row.
    """
    if convention not in ("paper", "official"):
        raise ValueError(f"unknown AUGRU convention {convention!r}; choose paper or official")
    b, hid = x.shape[0], cell.hidden_size
    h = x.new_zeros(b, hid) if h0 is None else h0
    real = mask.any(0)
    if not bool(real.any()):
        return h
    start = int(real.nonzero()[0, 0])
    m = mask[:, start:, None].to(x.dtype)
    a = att[:, start:, None] * m
    c0, c1 = (a, -a) if convention == "paper" else (m, a - m)  # paper: a(1 - z); official: m(1 - (1 - a) z)
    gi = F.linear(x[:, start:], cell.weight_ih, cell.bias_ih)  # [B, T', 3H], one matmul for all steps
    gi_rz, gi_n = gi.split([2 * hid, hid], -1)
    w_rz, w_n = cell.weight_hh.split([2 * hid, hid])
    b_rz, b_n = cell.bias_hh.split([2 * hid, hid])
    for g_rz, g_n, k0, k1 in zip(gi_rz.unbind(1), gi_n.unbind(1), c0.unbind(1), c1.unbind(1)):
        r, z = torch.sigmoid(g_rz + F.linear(h, w_rz, b_rz)).chunk(2, -1)
        n = torch.tanh(g_n + r * F.linear(h, w_n, b_n))
        h = torch.lerp(h, n.to(h.dtype), torch.addcmul(k0, k1, z).to(h.dtype))  # (casts: no-ops outside autocast)
    return h


class DIENParams(ModelParams):
    augru: str = Field("paper", pattern="^(paper|official)$",
                       description="AUGRU convention: paper (update gate scaled by a_t; a_t = 0 keeps the state) or "
                                   "official (the DIEN repo's VecAttGRUCell: keep gate scaled by 1 - a_t)")
    att_hidden: tuple[int, ...] = Field((80, 40), description="attention MLP hidden sizes")
    att_act: str = Field("relu", description="attention MLP activation (HPMN relu; DIEN repo sigmoid)")
    att_norm: str = Field(
        "softmax", pattern="^(softmax|sigmoid)$",
        description="a_t: softmax over the real steps (reference) or a per-step sigmoid (independent of L)")
    aux_weight: float = Field(
        0.0, ge=0.0,
        description="auxiliary next-behaviour loss weight (0 = HPMN-suite DIEN; 1 = DIEN paper; 2 = the DIEN repo's "
                    "1 against its 0.5-scaled main loss); > 0 needs --layout mimn")
    aux_hidden: tuple[int, ...] = Field((100, 50), description="auxiliary net hidden sizes")
    aux_act: str = Field("sigmoid", description="auxiliary net hidden activation: sigmoid (DIEN repo) | none (a linear "
                                                "net: RecBole 1.2.1) | any head_act")
    att_query_proj: bool = Field(True, description="map the candidate to the hidden size with Linear + PReLU before "
                                                    "attention (HPMN repo); false: the candidate embedding itself "
                                                    "(DIEN/MIMN repos, RecBole; needs the embedding width == hidden)")
    att_scale: bool = Field(False, description="divide the attention scores by sqrt(hidden) before the softmax "
                                               "(RecBole 1.2.1's SequenceAttLayer)")
    head_input: str = Field("pooled", pattern="^(pooled|state)$",
                            description="head input without append_target: pooled = [e_a; pool e_t; e_a * pool e_t; "
                                        "h'_T] (DIEN/MIMN repos without e_u) | state = [h'_T; e_a] (RecBole 1.2.1 "
                                        "without its user-id embedding)")


#: RecBole 1.2.1's DIEN as `dien` parameters (benchmarks/recbole_compare.py adds its sizes): the candidate embedding
#: as the attention query with scores / sqrt(h), head on [h'_T; e_a] with training-mode batch norm and SiLU (its
#: `Dice`), a linear auxiliary net whose BCE is a mean over 2N terms (its alpha 1 = aux_weight 0.5 here)
RECBOLE_DIEN: dict[str, object] = {"att_query_proj": False, "att_scale": True, "head_input": "state", "head_act": "silu",
                                   "head_norm": "batch", "aux_act": "none", "aux_weight": 0.5}


@register
class DIEN(CTRModel):
    """Deep Interest Evolution Network (models.md §13): GRU extractor -> target attention -> AUGRU.

    Reproduced (HPMN ``model.py::DIEN`` / mouna99/dien): GRU(h=32) interest extractor over the real steps;
    attention of the candidate over its outputs (query ``PReLU(W e_a)``, MLP 80-40, masked softmax); AUGRU
    (:func:`augru`) over the extractor outputs with those scores; head 200-80 tanh, dropout 0.2. With
    ``append_target=True`` the candidate is the last extractor step (among the keys) and the head sees the
    final AUGRU state only (HPMN); by default the head gets ``[e_a; pool_t e_t; e_a * pool_t e_t; h'_T]`` (the
    DIEN/MIMN repos' input without ``e_u``; ``head_act=dice`` / ``prelu`` for their activations).
    The AUGRU convention is a parameter (``augru``): the paper's by default - with softmax weights
    ``a_t ~ 1/L`` the official cell is almost a plain GRU (models.md §13 g). AUGRU weights use PyTorch's
    scaled GRU initialisation (RecBole#1483 left them ``randn``). RecBole 1.2.1's DIEN is :data:`RECBOLE_DIEN`
    (its ``Dice`` computes SiLU; its alpha 1 averages the auxiliary BCE over 2N terms, half of this loss);
    benchmarks/recbole_compare.py trains it so.

    Auxiliary loss (``aux_weight > 0``; DIEN paper/repo): for each real step ``t`` with a real next step,
    ``AuxNet([h_t; e_{t+1}])`` should say 1 and ``AuxNet([h_t; e~_{t+1}])`` 0, with ``e~`` the ``mimn``
    layout's per-position negatives (``neg_item/neg_cate``, aligned with the history; given the positive's
    behaviour). AuxNet = Affine -> 100 -> 50 sigmoid -> 1. The per-slot loss is the sum of the two BCEs,
    **masked to real slots and averaged over real slots** (the DIEN repo averages over all slots including
    padding, RecBole#1483 does not mask). It is computed in training mode only and needs the ``mimn``
    layout: train with ``lsdata train dien DATA --layout mimn --set aux_weight=1`` (the default layout stays
    ``hpmn``, whose Taobao width differs: hpmn 300 vs mimn 200); a model so trained also scores ``hpmn``
    files. Not incremental: the AUGRU depends on the candidate's attention over all states.
    """

    name = "dien"
    layout = "hpmn"
    Params = DIENParams
    train_defaults = HPMN_SUITE

    def __init__(self, spec: DataSpec, p: DIENParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d, h = self.emb.dim, p.hidden
        self.gru = nn.GRU(d, h, batch_first=True)
        self.att = DINAttention(d, h, p.att_hidden, p.att_act, query_proj=p.att_query_proj, norm="softmax")
        self.augru = nn.GRUCell(h, h)
        self.head = Head(h if p.append_target else (3 * d + h if p.head_input == "pooled" else d + h), p)
        self.aux = None
        if p.aux_weight > 0:
            layers: list[nn.Module] = [Affine(h + d)]
            w = h + d
            for k in p.aux_hidden:
                layers += [nn.Linear(w, k), activation(p.aux_act, k)]
                w = k
            layers.append(nn.Linear(w, 1))
            self.aux = nn.Sequential(*layers)

    def forward(self, batch):
        x, mask, n, tgt = history(self.emb, batch, self.p.append_target)
        out, _, _ = run_rnn(self.gru, x, n)
        s = self.att.scores(tgt, out, mask)
        if self.p.att_scale:
            s = s / out.shape[-1] ** 0.5
        a = masked_softmax(s, mask) if self.p.att_norm == "softmax" else torch.sigmoid(s) * mask
        hn = augru(self.augru, out, a, mask, self.p.augru)
        if self.p.append_target:
            logit = self.head(hn)
        elif self.p.head_input == "state":
            logit = self.head(torch.cat([hn, tgt], -1))
        else:
            sm = pool(masked_sum(x, mask), n, self.p.pooling)
            logit = self.head(torch.cat([tgt, sm, tgt * sm, hn], -1))
        extra = zero(hn)
        if self.aux is not None and self.training:
            extra = self.p.aux_weight * self.aux_loss(batch, out, x)
        return logit, extra

    def aux_loss(self, batch: dict[str, Tensor], out: Tensor, x: Tensor) -> Tensor:
        """Mean over real slots ``t`` (``t`` and ``t+1`` real history steps) of BCE(pos, 1) + BCE(neg, 0)."""
        if "neg_item" not in batch:
            raise ValueError("dien with aux_weight > 0 needs the mimn layout's negatives (neg_item/neg_cate): "
                             "train with --layout mimn")
        width = batch["hist_item"].shape[1]
        hs = out[:, :width - 1]  # extractor outputs at the history positions (without an appended candidate)
        pos = x[:, 1:width]
        neg = self.emb.negatives(batch)[:, 1:]
        slot = front_mask(batch["hist_len"].long(), width)[:, :-1]  # front padding: t real => t+1 real
        lp = self.aux(torch.cat([hs, pos], -1)).squeeze(-1)
        ln = self.aux(torch.cat([hs, neg], -1)).squeeze(-1)
        per = F.softplus(-lp) + F.softplus(ln)  # -log s(lp) - log(1 - s(ln))
        w = slot.to(per.dtype)
        return (per * w).sum() / w.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------
# Caser (models.md §11, the CTR variant)


class CaserParams(ModelParams):
    heights: tuple[int, ...] = Field(
        (8,), min_length=1, description="horizontal filter heights (HPMN code: one height 8; paper: 1..window)")
    n_h: int = Field(32, ge=1, description="horizontal filters per height (HPMN 32; paper 16)")
    n_v: int = Field(32, ge=1, description="vertical filters (HPMN 32; paper 4)")
    window: int = Field(0, ge=0, description="most recent history positions convolved (0 = the layout's width: HPMN; "
                                             "paper 5)")
    h_act: str = Field("none", pattern="^(none|relu)$", description="horizontal activation (HPMN none; paper relu)")


@register
class Caser(CTRModel):
    """Caser's convolutions as a CTR baseline (models.md §11, HPMN ``model.py::CASER``).

    The last ``window`` history positions (``[W, D_e]``, front-padded; a wider input is cropped, a narrower
    one padded) are an image. Horizontal: per height ``k``, ``n_h`` filters ``k x D_e`` (no activation in the
    HPMN code, ReLU in the paper: ``h_act``), max-pooled over positions. Vertical: ``n_v`` filters ``W x 1``
    then a dense ``n_v -> 1`` over the filters (HPMN; the paper flattens ``n_v D_e``) -> ``[D_e]``.
    Head input ``[e_tgt; o_h; o_v]``; with ``append_target=True`` the candidate is the last image row (window
    ``W + 1``) and the head sees ``[o_h; o_v]`` (the HPMN code adds the item side's target row, which this
    item-history-only model does not have). Head 200-80 tanh, dropout 0.2. Fixed: windows made only of
    padding are left out of the max-pool (the reference pools over them; their output would be the bias),
    so the output does not depend on how much padding precedes the history. Not incremental (a window of
    ``W`` events per user would be the state); the vertical filters depend on ``W``.
    """

    name = "caser"
    layout = "hpmn"
    Params = CaserParams
    train_defaults = HPMN_SUITE

    def __init__(self, spec: DataSpec, p: CaserParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d = self.emb.dim
        self.window = p.window or spec.widths.get("hist", 0)
        if self.window < 1:
            raise ValueError(f"caser: the layout {spec.layout!r} has no hist width; set window")
        rows = self.window + p.append_target
        if max(p.heights) > rows:
            raise ValueError(f"caser: filter height {max(p.heights)} exceeds the window ({rows} rows)")
        self.h_convs = nn.ModuleList(nn.Conv2d(1, p.n_h, (k, d)) for k in p.heights)
        self.v_weight = nn.Parameter(torch.empty(p.n_v, rows))
        self.v_bias = nn.Parameter(torch.zeros(p.n_v))
        nn.init.uniform_(self.v_weight, -rows ** -0.5, rows ** -0.5)
        self.v_out = nn.Linear(p.n_v, 1)
        self.head = Head(len(p.heights) * p.n_h + d + (0 if p.append_target else d), p)

    def _image(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        """(``[B, W(+1), D_e]`` image, real rows per sample, target): the last ``window`` history steps."""
        w = self.window
        crop = {k: batch[f"hist_{k}"][:, -w:] for k in ("item", "cate", "behavior") if f"hist_{k}" in batch}
        x = self.emb(crop["item"], crop["cate"], crop.get("behavior"))
        if x.shape[1] < w:
            x = F.pad(x, (0, 0, w - x.shape[1], 0))
        n = batch["hist_len"].long().clamp(max=w)
        tgt = self.emb.target(batch)
        if self.p.append_target:
            x = torch.cat([x, tgt[:, None]], 1)
            n = n + 1
        return x, n, tgt

    def forward(self, batch):
        x, n, tgt = self._image(batch)
        outs = [caser_horizontal(x, n, self.h_convs, relu=self.p.h_act == "relu")]
        v = torch.einsum("ft,btd->bdf", self.v_weight, x) + self.v_bias  # [B, D_e, n_v]
        outs.append(self.v_out(v).squeeze(-1))
        if not self.p.append_target:
            outs.insert(0, tgt)
        return self.head(torch.cat(outs, -1)), zero(x)
