"""The lifelong-memory CTR models: HPMN (models.md §2, protocol.md §3.1) and MIMN (models.md §3, protocol.md §3.3).

Both keep a fixed-size per-user state that one behaviour event updates in O(1), so both are
``incremental``: :meth:`update` folds an event into the state, :meth:`score` reads it with a candidate.
The batched :meth:`forward` used for training computes exactly the same function (a test checks it on
real data), which is what makes a model trained here servable from a UIC-style state store.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import CTRModel, DataSpec, ModelParams
from lsdata.models.blocks import (
    Affine,
    BehaviorEmbedding,
    DINAttention,
    Head,
    gru_step,
    history,
    masked_sum,
    pool,
    run_rnn,
)


def slot_attention(dim: int, act: str) -> DINAttention:
    """DIN attention over memory slots (no query projection, no mask, softmax; no score bias)."""
    return DINAttention(dim, dim, (80, 40), act, query_proj=False, norm="softmax")


# ---------------------------------------------------------------------------------------------------------
# HPMN
# ---------------------------------------------------------------------------------------------------------


def slot_covariance_penalty(mem: Tensor, reduce: str = "mean") -> Tensor:
    """HPMN's memory regulariser: per user, centre each slot over its ``h`` coordinates, form the slot
    covariance ``C = M~ M~^T / h`` (``[D, D]``), zero its diagonal and take the Frobenius norm; then
    ``mean`` (default) or ``sum`` (reference ``get_covreg``) over the batch. ``mem``: ``[B, D, h]``."""
    mc = mem - mem.mean(-1, keepdim=True)
    cov = mc @ mc.transpose(1, 2) / mem.shape[-1]
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
    norm = torch.linalg.matrix_norm(off)  # Frobenius; its gradient at 0 is 0 (users with no history)
    return norm.sum() if reduce == "sum" else norm.mean()


def check_periods(v: tuple[int, ...]) -> tuple[int, ...]:
    """HPMN's update periods: ``t_1 = 1`` and each a multiple of the previous (else ``ValueError``)."""
    if not v or v[0] != 1 or any(b < 1 or b % a for a, b in zip(v, v[1:], strict=False)):
        raise ValueError(f"periods must start at 1 and each must be a multiple of the previous, got {v}")
    return v


def periodic_memory(grus: nn.ModuleList, periods: tuple[int, ...], x: Tensor, n: Tensor) -> Tensor:
    """HPMN's hierarchical periodic memory (see :class:`HPMN`): slots ``[B, D, h]`` after the ``n`` real
    (front-padded) events of ``x`` ``[B, T, D_e]``; GRU ``j`` updates slot ``j`` every ``periods[j]`` events."""
    b, t, _ = x.shape
    out, m, _ = run_rnn(grus[0], x, n)
    slots = [m]
    prev_len, prev_t = t, 1
    for gru, t_j in zip(grus[1:], periods[1:], strict=True):
        width = t // t_j  # most updates any row can have
        if width == 0:
            slots.append(torch.zeros_like(m))
            continue
        n_j, n_prev = n // t_j, n // prev_t
        k = torch.arange(1, width + 1, device=x.device)[None, :] - (width - n_j)[:, None]  # update number
        # layer j's k-th input = layer j-1's (k * t_j / t_{j-1})-th output, in its front-padded sequence
        src = ((prev_len - n_prev)[:, None] + k * (t_j // prev_t) - 1).clamp(0, prev_len - 1)
        seq = out.gather(1, src[..., None].expand(-1, -1, out.shape[2]))
        out, m, _ = run_rnn(gru, seq, n_j)
        slots.append(m)
        prev_len, prev_t = width, t_j
    return torch.stack(slots, 1)


def periodic_fold(grus: nn.ModuleList, periods: tuple[int, ...], state: tuple[Tensor, Tensor], e: Tensor,
                  valid: Tensor) -> tuple[Tensor, Tensor]:
    """One event (embedding ``e`` ``[B, D_e]``) folded into ``(slots [B, D, h], count [B])``, the incremental
    form of :func:`periodic_memory`; rows with ``valid`` False are left untouched."""
    slots, count = state
    count = count + valid.long()
    x, new = e, []
    for j, (gru, t_j) in enumerate(zip(grus, periods, strict=True)):
        due = valid & (count % t_j == 0)
        m = torch.where(due[:, None], gru_step(gru, x, slots[:, j]), slots[:, j])
        new.append(m)
        x = m
    return torch.stack(new, 1), count


class HPMNParams(ModelParams):
    head_act: str = Field("elu", description="head activation (reference: ELU)")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout after each head layer (reference keep 0.5)")
    periods: tuple[int, ...] = Field((1, 2, 4), description="update period t_j of memory layer j in events "
                                     "(t_1 = 1, each a multiple of the previous); one GRU per layer")
    hops: int = Field(3, ge=1, description="attention hops of the memory read")
    memory_reg: float = Field(1e-5, ge=0.0, description="weight of the slot-covariance regulariser")
    reg_reduce: str = Field("mean", pattern="^(mean|sum)$",
                            description="covariance penalty over the batch: mean, or sum (reference, batch-size dependent)")

    @field_validator("periods")
    @classmethod
    def _nested(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return check_periods(v)


@register
class HPMN(CTRModel):
    """Hierarchical Periodic Memory Network (Ren et al., SIGIR 2019).

    Memory: layer ``j`` (``j = 1..D``) is a GRU with its own weights (hidden ``h`` = 32) whose state is
    slot ``m_j``; it is updated once every ``t_j`` events (``periods``; presets: Amazon 1,2,4 = factors
    [2,2]; Taobao 1,2,4,12; XLong 1,2,4,8,16). Streaming rule, events numbered ``i = 1, 2, ...`` from the
    user's **first** event::

        for j = 1..D:  if i % t_j == 0:  m_j <- GRU_j(x_j, m_j),   x_1 = e_i,  x_j = the new m_{j-1}

    (``t_{j-1}`` divides ``t_j``, so layer ``j-1`` has always just updated when layer ``j`` does.)
    The batched :meth:`forward` is the same computation: layer 1 runs over the real events (packed GRU);
    layer ``j >= 2`` runs over layer ``j-1``'s outputs at the events ``i = k t_j`` (``k = 1..floor(n/t_j)``,
    a front-padded sequence of ``floor(n/t_j)`` steps gathered per row); slot ``m_j`` is its final state,
    zero when ``n < t_j``. Hence ``forward(batch) == score(fold(update, init_state, history), cand)``.

    Read: ``q_0 = W_q e_tgt``; per hop ``k`` (own MLP ``[q, m, q-m, q*m]`` -> 80 ReLU -> 40 ReLU -> 1):
    ``alpha = softmax_j(s_j)`` over the slots, ``r = sum_j alpha_j m_j``, ``q <- q H + r`` (``H`` shared);
    head ``[q_K; e_tgt]`` -> Affine -> 200 ELU -> 80 ELU (dropout 0.5) -> 1. Extra loss:
    ``memory_reg * cov-penalty(M)`` (:func:`slot_covariance_penalty`).

    Reproduced from ``hpmn.py``: hidden 32, 3 hops with per-hop attention MLPs and one shared ``H``,
    ``q_0`` Linear with bias, the head, the off-diagonal Frobenius covariance penalty (weight 1e-5, XLong
    5e-5), gradient values clipped to [-1, 1], lr 1e-3 and batch 128. The trainer reads one ``train_defaults``
    for all datasets: the reference's Amazon lr 3e-3 and XLong batch 500 are ``--lr 3e-3`` /
    ``--batch-size 500``.

    Fixed on purpose (``append_target=True`` / ``reg_reduce=sum`` switch back where a switch exists):

    * The memory is built from the history only; the reference writes the candidate into every slot (it is
      the last GRU input) - ``append_target=True`` makes the candidate the last event (and the clock
      counts it as event ``n + 1``), so :meth:`score` folds it into a copy of the state before reading.
    * GRU states are untouched on padding; the reference runs its GRUs over the front padding (the
      biases drift the state).
    * The period clock counts from the user's first event; the reference aligns the blocks to the end of
      the padded sequence, which a streaming store cannot do (models.md §2 g).
    * The covariance penalty is averaged over the batch (``reg_reduce=mean``); the reference sums it
      (Q-H15), which makes its weight batch-size dependent.
    * Not kept: the item-side memory (built by the reference but never used: ``item=False`` in every
      config), the user-id field, XLong's query from the last history row (the candidate is the query),
      TF's GRU gate layout (PyTorch gates, for the fused kernel), the bias of the attention score layer
      (a constant shift of every slot's score cancels in the softmax; see :func:`slot_attention`).

    Incremental state: ``(slots [B, D, h], event count [B])``; :meth:`score` costs ``O(K D)``, independent
    of the history length.
    """

    name = "hpmn"
    layout = "hpmn"
    Params = HPMNParams
    train_defaults = {"lr": 1e-3, "batch_size": 128, "clip_value": 1.0}
    presets = {
        "amazon": {"periods": (1, 2, 4)},
        "taobao": {"periods": (1, 2, 4, 12)},
        "xlong": {"periods": (1, 2, 4, 8, 16), "memory_reg": 5e-5},
    }
    incremental = True

    def __init__(self, spec: DataSpec, p: HPMNParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d, h = self.emb.dim, p.hidden
        self.grus = nn.ModuleList(nn.GRU(d if j == 0 else h, h, batch_first=True) for j in range(len(p.periods)))
        self.query = nn.Linear(d, h)
        self.hops = nn.ModuleList(slot_attention(h, "relu") for _ in range(p.hops))
        self.H = nn.Parameter(nn.init.xavier_uniform_(torch.empty(h, h)))
        self.head = Head(h + d, p)

    # -- memory ----------------------------------------------------------------------------------------
    def memory(self, x: Tensor, n: Tensor) -> Tensor:
        """Slots ``[B, D, h]`` after the ``n`` real (front-padded) events of ``x`` ``[B, T, D_e]``."""
        return periodic_memory(self.grus, self.p.periods, x, n)

    def read(self, slots: Tensor, e_tgt: Tensor) -> Tensor:
        """Multi-hop attention read with the candidate as query, then the head -> logits ``[B]``."""
        q = self.query(e_tgt)
        for att in self.hops:
            r, _ = att(q, slots, None)
            q = q @ self.H + r
        return self.head(torch.cat([q, e_tgt], -1))

    def forward(self, batch):
        x, _, n, tgt = history(self.emb, batch, self.p.append_target)
        slots = self.memory(x, n)
        reg = self.p.memory_reg * slot_covariance_penalty(slots, self.p.reg_reduce)
        return self.read(slots, tgt), reg

    # -- incremental -----------------------------------------------------------------------------------
    def init_state(self, batch_size):
        w = self.emb.item.weight
        return (torch.zeros(batch_size, len(self.grus), self.p.hidden, device=w.device),
                torch.zeros(batch_size, dtype=torch.long, device=w.device))

    def fold(self, state: tuple[Tensor, Tensor], e: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """One event (embedding ``e`` ``[B, D_e]``; rows with ``valid`` False are left untouched)."""
        return periodic_fold(self.grus, self.p.periods, state, e, valid)

    def update(self, state, event):
        e = self.emb(event["item"], event["cate"], event["behavior"])
        return self.fold(state, e, event["item"] > 0)

    def score(self, state, cand):
        e = self.emb(cand["item"], cand["cate"], None)
        slots = state[0]
        if self.p.append_target:
            slots = self.fold(state, e, torch.ones_like(cand["item"], dtype=torch.bool))[0]
        return self.read(slots, e)


# ---------------------------------------------------------------------------------------------------------
# MIMN
# ---------------------------------------------------------------------------------------------------------

CLIP = 20.0  #: the reference clips the head parameters and the cell output to [-20, 20]


def content_address(key: Tensor, beta: Tensor, mem: Tensor, static_keys: Tensor | None = None) -> Tensor:
    """NTM content addressing: ``w_i = softmax_i(beta * cos(k, M_i))``.

    ``key`` ``[B, H, D]`` (one key per head), ``beta`` ``[B, H]``, ``mem`` ``[B, m, D]`` -> ``[B, H, m]``.
    With ``static_keys`` ``[m, D]`` the similarity is ``(cos(k, K_i) + cos(k, M_i)) / 2`` (MIMN code).
    """
    kn = F.normalize(key, dim=-1, eps=1e-8)[:, :, None]  # [B, H, 1, D]; mul + sum beats bmm at these sizes
    sim = (kn * F.normalize(mem, dim=-1, eps=1e-8)[:, None]).sum(-1)
    if static_keys is not None:
        sim = 0.5 * (sim + (kn * F.normalize(static_keys, dim=-1, eps=1e-8)).sum(-1))
    return torch.softmax(beta[..., None] * sim, dim=-1)


def shift_sharpen(w: Tensor, shift: Tensor, gamma: Tensor) -> Tensor:
    """NTM location step (MIMN code's utilisation re-balancing): circular 3-tap convolution with ``shift``
    ``[B, 3]`` (offsets -1, 0, +1), then sharpening ``w^gamma / sum w^gamma`` (computed as a softmax of
    ``gamma log w`` so it cannot underflow to 0/0)."""
    w = shift[:, :1] * w.roll(-1, -1) + shift[:, 1:2] * w + shift[:, 2:] * w.roll(1, -1)
    return torch.softmax(gamma * w.clamp_min(1e-30).log(), dim=-1)


def utilisation_loss(util: Tensor) -> Tensor:
    """Variance of the accumulated write weights across slots, averaged over users: ``mean_{b,i}
    (g_bi - mean_i g_bi)^2``. Zero iff every slot was written equally; ``util`` ``[B, m]``."""
    return (util - util.mean(-1, keepdim=True)).pow(2).mean()


def _gru(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """PyTorch GRU cell from its two projections ``gi = W_i x + b_i``, ``gh = W_h h + b_h`` (gates r, z, n)."""
    n_h = h.shape[-1]
    (i_rz, i_n), (h_rz, h_n) = gi.split([2 * n_h, n_h], -1), gh.split([2 * n_h, n_h], -1)
    r, z = torch.sigmoid(i_rz + h_rz).chunk(2, -1)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


class SplitGRUCell(nn.Module):
    """A GRU cell on the concatenated input ``[x; y]`` whose ``x`` part of the input projection is computed
    for all steps at once (:meth:`project`), so the recurrence only multiplies ``y`` and the state.
    Same function and initialisation as ``nn.GRUCell(x_dim + y_dim, hidden)``."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int):
        super().__init__()
        self.wx = nn.Linear(x_dim, 3 * hidden)  # W_x x + b_i
        self.wy = nn.Linear(y_dim, 3 * hidden, bias=False)
        self.wh = nn.Linear(hidden, 3 * hidden)  # W_h h + b_h
        for w in self.parameters():
            nn.init.uniform_(w, -hidden ** -0.5, hidden ** -0.5)

    def project(self, x: Tensor) -> Tensor:
        return self.wx(x)

    def forward(self, px: Tensor, y: Tensor, h: Tensor) -> Tensor:
        return _gru(px + self.wy(y), self.wh(h), h)


class MIMNState(NamedTuple):
    """Per-user MIMN state (``B`` users)."""

    ctrl: Tensor  #: controller GRU state [B, h]
    mem: Tensor  #: NTM memory M [B, m, D]
    read: Tensor  #: last read vector r [B, D] (controller input of the next event)
    util: Tensor  #: accumulated write weights g [B, m]
    add_sum: Tensor  #: accumulated written content sum_t w_t (x) a_t [B, m, D]
    miu: Tensor | None  #: MIU channel states S [B, m, D]
    esum: Tensor  #: sum of the event embeddings [B, D]
    count: Tensor  #: number of events folded in [B]


class MIMNParams(ModelParams):
    head_act: str = Field("prelu", description="head activation (reference: PReLU)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each head layer (reference: none)")
    slots: int = Field(4, ge=1, description="memory slots m (paper's best: Amazon 4, Taobao 8)")
    util_reg: str = Field("paper", pattern="^(paper|code|none)$",
                          description="memory utilisation regularisation: paper (softmax(W_g g) re-weighting), "
                                      "code (shift + sharpen driven by g/400), none")
    util_weight: float = Field(1e-3, ge=0.0, description="weight of the utilisation-variance loss")
    static_keys: bool = Field(False, description="average content similarity with a learned static key matrix (code)")
    beta_scale: float = Field(1.0, gt=0.0, description="key strength beta = scale * (softplus + 1) (code: 2)")
    miu: bool = Field(True, description="Memory Induction Unit (multi-channel GRU) and its attention readout")
    miu_topk: int = Field(1, ge=1, description="MIU channels updated per event (top-k read weights; code: 1)")
    miu_memory: str = Field("current", pattern="^(current|previous)$",
                            description="MIU input slot M_t after the write (paper) or M_{t-1} (code)")
    aux_weight: float = Field(0.0, ge=0.0, description="weight of the next-behaviour auxiliary loss (needs the mimn "
                                                       "layout's negatives; 2 = the reference's relative weight)")
    compile_step: bool = Field(False, description="torch.compile the per-event cell of the batched forward (same "
                                                  "function; about 2.5x faster on CPU after about a minute of compiling)")

    @field_validator("miu_topk")
    @classmethod
    def _topk(cls, v: int, info) -> int:
        slots = info.data.get("slots")
        if slots is not None and v > slots:
            raise ValueError(f"miu_topk ({v}) cannot exceed slots ({slots})")
        return v


@register
class MIMN(CTRModel):
    """Multi-channel user Interest Memory Network (Pi et al., KDD 2019).

    Per event ``e_t`` (``D = D_e``, ``m`` slots of width ``D``, controller hidden ``h`` = 32):

    1. controller ``c_t = GRU([e_t; r_{t-1}], c_{t-1})``; head parameters ``clip(W [c_t (; g/400)], +-20)``;
    2. read and write heads address ``M_{t-1}`` by content: ``k = tanh(.)``, ``beta = s (softplus(.) + 1)``,
       ``w = softmax(beta cos(k, M_i))`` (:func:`content_address`);
    3. utilisation re-balancing of the write weight (``util_reg``): paper ``w~ = w * softmax(W_g g_{t-1})``
       renormalised to sum 1 (``W_g`` zero-initialised: plain NTM at start); code: shift + sharpen
       (:func:`shift_sharpen`); ``g_t = g_{t-1} + w~`` computed on ``stopgrad(w)``;
    4. read ``r_t = sum_i w^r_i M_{t-1,i}``; write ``M_t = M_{t-1} * (1 - w~ e^T) + w~ a^T`` (``e = sigmoid``,
       ``a = tanh``); ``S_add += stopgrad(w~) a^T``;
    5. MIU: the ``miu_topk`` channels with the largest read weight update
       ``S_i <- GRU_MIU([e_t; stopgrad(M_i)], S_i)`` (one GRU, hidden ``D``, shared by the channels).

    Target read: one more controller + read step with ``e_a`` on the final state, **not written back**
    -> ``read_out = clip(W_o [c; r], +-20)``. Head ``[e_a; pool_t e_t; read_out; DIN-att(e_a, S); mean_i
    S_add,i * e_a]`` -> Affine -> 200 PReLU -> 80 PReLU -> 1. Extra loss: ``util_weight *``
    :func:`utilisation_loss` ``(g_T)`` (when ``util_reg != none``) ``+ aux_weight * L_aux``, where
    ``L_aux`` is DIEN's next-behaviour loss on the per-step outputs ``y_t = clip(W_o [c_t; r_t])``:
    ``AuxMLP([y_t; e_{t+1}])`` vs the layout's negative ``AuxMLP([y_t; e~_{t+1}])`` (Affine -> 100 sigmoid
    -> 50 sigmoid -> 1), BCE averaged over the real pairs.

    Reproduced from ``mimn.py`` / ``model.py``: controller GRU(32), one read + one write head, memory
    initialised ``tanh(N(0, 1e-5))`` (fixed buffer), learned initial read vector ``tanh(r_0)``, head
    parameters and outputs clipped to +-20, ``S_add`` / ``mean_mem``, the extra target step, the head
    (no dropout), lr 1e-3, batch 256 (Taobao script; Book used 128: ``--batch-size 128``), no gradient
    clipping, utilisation loss weight 1e-3. Fixed: the head's pooled history is a mean (the code sums; see
    ``ModelParams.pooling``).

    Paper vs code (protocol.md Q-M9, Q-M10; default = paper, the parameter selects the code):

    * utilisation re-balancing: paper ``softmax(W_g g) * w`` vs code shift+sharpen with ``[c_t; g/400]``
      as the parameter input, the transform applied a second time for the accumulation -> ``util_reg=code``;
    * addressing: paper ``cos(k, M_i)`` vs code averaged with a learned static key matrix ->
      ``static_keys=True``; key strength ``softplus + 1`` vs ``2 (softplus + 1)`` -> ``beta_scale=2``;
    * MIU: paper top-k channels fed ``M_t`` vs code top-1 fed ``M_{t-1}`` -> ``miu_topk=1`` (default here
      too; the paper leaves k open) and ``miu_memory=previous``;
    * slots: paper's best 4 (Amazon) / 8 (Taobao) = the dataset presets; code default 4.

    Fixed on purpose: the MIU readout attends over the channel **states** (the official cell's output
    buffer is never updated, so all but the last-selected channel read as zeros); padding steps leave the
    whole state untouched (the reference resets the state on padding but keeps accumulating ``g`` and the
    read vector, and Book MIMN does not mask at all, Q-M9); the history excludes the candidate
    (``append_target=True`` reproduces the Taobao files, whose last history step is the candidate, Q-M5);
    the utilisation loss is ``mean_{b,i}`` of the variance (the code further divides by ``m B``, which makes
    it batch-size dependent; the code's value in this loss scale is ``util_weight = 2e-3 / (m B)``); one
    logit + BCE, so the reference's aux weight 1 on the halved 2-way CE is ``aux_weight=2`` here, and the
    aux loss is a mean over the real pairs (the reference divides by all ``B (T-1)`` pairs, padding
    included). Not kept: the user id, the shared item/category table (field-wise tables, see base), the
    MIU attention's score bias (softmax-invariant), TF's GRU gate layout; the behaviour-type field is
    embedded (``use_behavior=False`` gives the reference's ``D = 32``).

    Cost: the NTM recursion is sequential; the input projections of all steps (controller and MIU) are
    one matmul each before the loop, the loop holds only the recurrent parts, starts at the first step
    where any row has an event (one host read of ``max(n)`` per batch) and never syncs inside;
    ``compile_step=True`` additionally fuses the cell with ``torch.compile``.
    Incremental state: :class:`MIMNState`; :meth:`score` is ``O(m D + h^2)``, independent of ``L``.
    """

    name = "mimn"
    layout = "mimn"
    Params = MIMNParams
    train_defaults = {"lr": 1e-3, "batch_size": 256}
    presets = {"amazon": {"slots": 4}, "taobao": {"slots": 8}}
    incremental = True

    def __init__(self, spec: DataSpec, p: MIMNParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d, h, m = self.emb.dim, p.hidden, p.slots
        self.d, self.m = d, m
        self.ctrl = SplitGRUCell(d, d, h)  # input [e_t; r_{t-1}]
        self.read0 = nn.Parameter(torch.randn(d) * 0.5)
        self.register_buffer("mem0", torch.tanh(torch.randn(m, d) * 1e-5))
        # head parameters: read key, write key (2D), read/write strength (2), erase, add (2D),
        # and with util_reg=code the write head's 3 shift logits and sharpening
        self.n_loc = 4 if p.util_reg == "code" else 0
        self.o2p = nn.Linear(h + (m if p.util_reg == "code" else 0), 4 * d + 2 + self.n_loc)
        nn.init.trunc_normal_(self.o2p.weight, std=(1.0 / h) ** 0.5)
        nn.init.zeros_(self.o2p.bias)
        self.o2o = nn.Linear(h + d, h)
        nn.init.trunc_normal_(self.o2o.weight, std=(1.0 / (h + d)) ** 0.5)
        nn.init.zeros_(self.o2o.bias)
        self.util_map = nn.Linear(m, m, bias=False) if p.util_reg == "paper" else None
        if self.util_map is not None:
            nn.init.zeros_(self.util_map.weight)
        self.keys = nn.Parameter(torch.randn(m, d) * 0.5) if p.static_keys else None
        self.miu_cell = SplitGRUCell(d, d, d) if p.miu else None  # input [e_t; M_i]
        self.miu_att = slot_attention(d, "sigmoid") if p.miu else None
        self.aux = None
        if p.aux_weight > 0:
            self.aux = nn.Sequential(Affine(h + d), nn.Linear(h + d, 100), nn.Sigmoid(), nn.Linear(100, 50),
                                     nn.Sigmoid(), nn.Linear(50, 1))
        self.head = Head(d + d + h + (d if p.miu else 0) + d, p)

    # -- the cell --------------------------------------------------------------------------------------
    def _project(self, e: Tensor) -> tuple[Tensor, Tensor | None]:
        """The event-only parts of the controller and MIU input projections (any leading shape)."""
        return self.ctrl.project(e), self.miu_cell.project(e) if self.miu_cell is not None else None

    def _controller(self, s: MIMNState, xc: Tensor) -> tuple[Tensor, Tensor]:
        """(controller output, clipped head parameters) for one step."""
        c = self.ctrl(xc, s.read, s.ctrl)
        z = torch.cat([c, s.util.detach() / 400.0], -1) if self.p.util_reg == "code" else c
        return c, self.o2p(z).clamp(-CLIP, CLIP)

    def _weights(self, prm: Tensor, mem: Tensor, heads: int) -> Tensor:
        """Content weights ``[B, heads, m]`` of the read (and write) head on ``mem``."""
        d = self.d
        key, _, beta, _ = prm.split([heads * d, (2 - heads) * d, heads, prm.shape[1] - 2 * d - heads], -1)
        beta = F.softplus(beta) + 1
        if self.p.beta_scale != 1.0:
            beta = self.p.beta_scale * beta
        return content_address(torch.tanh(key).unflatten(1, (heads, d)), beta, mem,
                               torch.tanh(self.keys) if self.keys is not None else None)

    def step(self, s: MIMNState, xc: Tensor, xm: Tensor | None, valid: Tensor,
             validf: Tensor) -> tuple[MIMNState, Tensor, Tensor]:
        """One event for every row (``valid`` ``[B]`` bool, ``validf`` ``[B, 1]`` float; invalid rows keep
        their state). Returns (new state, controller output ``c_t``, read vector ``r_t``)."""
        d = self.d
        c, prm = self._controller(s, xc)
        w_r, w_w = self._weights(prm, s.mem, 2).unbind(1)
        r = (w_r[..., None] * s.mem).sum(1)
        _, erase, add, loc = prm.split([2 * d + 2, d, d, self.n_loc], -1)
        if self.p.util_reg == "paper":
            bal = torch.softmax(self.util_map(s.util.detach()), -1)
            g = w_w.detach() * bal  # utilisation on stopgrad(w): the loss trains W_g only
            g = g / g.sum(-1, keepdim=True)
            w_w = w_w * bal
            w_w = w_w / w_w.sum(-1, keepdim=True)
        elif self.p.util_reg == "code":
            shift, gamma = loc.split([3, 1], -1)
            shift, gamma = torch.softmax(shift, -1), 4.0 * (F.softplus(gamma) + 1)
            w_w = shift_sharpen(w_w, shift, gamma)
            g = shift_sharpen(w_w.detach(), shift, gamma)
        else:
            g = w_w.detach()
        w_w = w_w * validf  # a zero write weight leaves M, S_add and g exactly unchanged on padding
        erase, add = torch.sigmoid(erase), torch.tanh(add)
        ww = w_w[..., None]
        mem = s.mem - ww * (s.mem * erase[:, None] - add[:, None])  # = M (1 - w e^T) + w a^T
        add_sum = s.add_sum + ww.detach() * add[:, None]
        util = s.util + g * validf
        miu = s.miu
        if miu is not None:
            src = (mem if self.p.miu_memory == "current" else s.mem).detach()
            top = w_r.topk(self.p.miu_topk, -1).indices[..., None].expand(-1, -1, d)  # [B, k, D]
            cur = miu.gather(1, top)
            new = self.miu_cell(xm[:, None], src.gather(1, top), cur)
            miu = miu.scatter(1, top, torch.where(valid[:, None, None], new, cur))
        v = valid[:, None]
        state = MIMNState(torch.where(v, c, s.ctrl), mem, torch.where(v, r, s.read), util, add_sum, miu,
                          s.esum, s.count)
        return state, c, r

    def target_read(self, s: MIMNState, e_a: Tensor) -> tuple[Tensor, Tensor]:
        """The candidate's extra controller + read step on the final state (nothing is written back):
        (``read_out`` ``[B, h]``, read weights ``[B, m]``)."""
        c, prm = self._controller(s, self._project(e_a)[0])
        w_r = self._weights(prm, s.mem, 1)[:, 0]
        r = (w_r[..., None] * s.mem).sum(1)
        return self.o2o(torch.cat([c, r], -1)).clamp(-CLIP, CLIP), w_r

    def readout(self, s: MIMNState, e_a: Tensor) -> Tensor:
        read_out, _ = self.target_read(s, e_a)
        parts = [e_a, pool(s.esum, s.count, self.p.pooling), read_out]
        if self.miu_att is not None:
            parts.append(self.miu_att(e_a, s.miu, None)[0])
        parts.append(s.add_sum.mean(1) * e_a)
        return self.head(torch.cat(parts, -1))

    # -- training --------------------------------------------------------------------------------------
    def forward(self, batch):
        x, mask, n, tgt = history(self.emb, batch, self.p.append_target)
        b, t, _ = x.shape
        s = self.init_state(b)
        xc, xm = self._project(x)
        maskf = mask[..., None].to(x.dtype)
        start = t - int(n.max().clamp(max=t)) if t else 0  # leading steps that are padding in every row
        outs_c, outs_r = [], []
        # unbind once: indexing a step of a tensor that needs grad would cost a full-size zero fill per step
        xcs = xc[:, start:].unbind(1)
        xms = xm[:, start:].unbind(1) if xm is not None else [None] * len(xcs)
        step = self._compiled_step() if self.p.compile_step else self.step
        for i, (xc_i, xm_i) in enumerate(zip(xcs, xms, strict=True), start):
            s, c, r = step(s, xc_i, xm_i, mask[:, i], maskf[:, i])
            if self.aux is not None:
                outs_c.append(c)
                outs_r.append(r)
        s = s._replace(esum=masked_sum(x, mask), count=mask.sum(1))
        extra = tgt.new_zeros(())
        if self.p.util_reg != "none":
            extra = extra + self.p.util_weight * utilisation_loss(s.util)
        if self.aux is not None:
            extra = extra + self.p.aux_weight * self._aux_loss(batch, x, mask, start, outs_c, outs_r)
        return self.readout(s, tgt), extra

    def _compiled_step(self):
        if self.__dict__.get("_step_fn") is None:  # compiled lazily, kept out of the module's state
            self.__dict__["_step_fn"] = torch.compile(self.step)
        return self.__dict__["_step_fn"]

    def _aux_loss(self, batch, x, mask, start, outs_c, outs_r) -> Tensor:
        """DIEN-style next-behaviour loss on the outputs of history steps ``start..L-2``."""
        length = batch["hist_item"].shape[1]
        if length - 1 - start <= 0:
            return x.new_zeros(())
        y = self.o2o(torch.cat([torch.stack(outs_c[: length - 1 - start], 1),
                                torch.stack(outs_r[: length - 1 - start], 1)], -1)).clamp(-CLIP, CLIP)
        pos = x[:, start + 1: length]
        neg = self.emb.negatives(batch)[:, start + 1: length]
        pair = (mask[:, start: length - 1] & mask[:, start + 1: length]).to(x.dtype)
        lp = self.aux(torch.cat([y, pos], -1)).squeeze(-1)
        ln = self.aux(torch.cat([y, neg], -1)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp), reduction="none") + \
            F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln), reduction="none")
        return (loss * pair).sum() / pair.sum().clamp(min=1)

    # -- incremental -----------------------------------------------------------------------------------
    def init_state(self, batch_size):
        dev, d, m = self.mem0.device, self.d, self.m
        zeros = torch.zeros(batch_size, m, d, device=dev)
        return MIMNState(torch.zeros(batch_size, self.p.hidden, device=dev), self.mem0.expand(batch_size, m, d),
                         torch.tanh(self.read0).expand(batch_size, d), torch.zeros(batch_size, m, device=dev),
                         zeros, zeros if self.miu_cell is not None else None, torch.zeros(batch_size, d, device=dev),
                         torch.zeros(batch_size, dtype=torch.long, device=dev))

    def fold(self, s: MIMNState, e: Tensor, valid: Tensor) -> MIMNState:
        """One event embedding ``e`` ``[B, D]`` (rows with ``valid`` False untouched)."""
        xc, xm = self._project(e)
        s, _, _ = self.step(s, xc, xm, valid, valid[:, None].to(e.dtype))
        return s._replace(esum=s.esum + e * valid[:, None], count=s.count + valid)

    def update(self, state, event):
        e = self.emb(event["item"], event["cate"], event["behavior"])
        return self.fold(state, e, event["item"] > 0)

    def score(self, state, cand):
        e = self.emb(cand["item"], cand["cate"], None)
        if self.p.append_target:
            state = self.fold(state, e, torch.ones_like(cand["item"], dtype=torch.bool))
        return self.readout(state, e)
