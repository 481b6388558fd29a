"""DMAN, Dynamic Memory-based Attention Network (Tan et al., AAAI 2021, arXiv 2102.09269), models.md §5.

No official code exists and only the abstract was consulted, so the model below is a careful reading of models.md
§5, not a reproduction. The window of ``L = S·T`` events (front-padded) is cut into ``S`` segments of ``T``; every
segment's positions are encoded in parallel, one layer at a time (the recursions only run along segments)::

    X       = Dropout(ItemEmb(s)·√d)                                          H⁰ = A⁰ = X   [B, S, T, d]
    per layer l:
      Hˡ_n  = SASBlock(Hˡ⁻¹_n; keys/values [SG(Hˡ⁻¹_{n-1}) ; Hˡ⁻¹_n], causal, key padding,  short-term
                       + a learned bias per head and query-key distance)
      Mˡ_0  = Mˡ_1 = Mˡ_init (learned);  Mˡ_n = f_abs(Mˡ_{n-1}, Hˡ_{n-2})           memory read by segment n
      Aˡ_n  = SASBlock(Aˡ⁻¹_n; keys/values Mˡ_n)                                     long-term
    h_s, h_l = LN(Hᴺ), LN(Aᴺ);  g = σ(W_g [h_s; h_l] + b);  v = g ⊙ h_s + (1 − g) ⊙ h_l;  score(i) = v · ItemEmb(i)

``f_abs`` (capsule dynamic routing, 3 iterations): inputs u_i = [M ; H] / ρ (m + T vectors, padding = 0; ρ = the
mean norm of the real ones), predictions û_{j|i} = W_j u_i, b_ij = 0, then c_i = softmax_j(b_i),
v_j = squash(Σ_i c_ij û_{j|i}), b_ij += û_{j|i} · v_j; the new memory is ρ·v_j. Loss = sampled softmax (1 positive
+ 100 uniform negatives per position, every position a target: ``--targets all``) + λ·L_rec, with

    L_rec = mean over layers, updates and real query positions of ‖Attn(Q, Mˡ_n) − Attn(Q, [Mˡ_{n-1}; Hˡ_{n-2}])‖²,

Q = the long-term block's (layer-normalised) queries of segment n, Attn its attention with the weights as constants.

Follows the abstract [abs]: the sequence is cut into sub-sequences; per-user memory blocks hold the long-term
interest and are updated segment by segment without rescanning the history; an auxiliary reconstruction loss
trains the abstraction; short- and long-term interests are extracted separately and combined.

From models.md §5 and [unverified] against the paper: Transformer-XL-like short-term attention over the previous
and current segment (keys along time, stop-gradient on the previous segment); long-term attention to an m-slot
memory per layer; capsule routing with squash and 3 iterations (the unofficial code's); L_rec's form
(Compressive-Transformer attention reconstruction) and its stop-gradient; neural gating; sampled softmax with 100
negatives; d 64, T 50, m 20, 2 layers, 1 head, λ 1, Adam 1e-3. Residual + LayerNorm + FFN around each attention
and the final LayerNorm are SASRec's block (:class:`lsdata.models.nextitem.SASBlock`); dropout 0.2, batch 128,
the window of 4 segments (L 200) and the item table's N(0, 1/d) initialisation (with torch's N(0, 1) the initial
scores have a standard deviation of ≈ d^½ and the sampled softmax starts near 18 instead of log 101) are lsdata's
choices.

Deliberate differences (models.md §5g pitfalls of the unofficial code):

* **Routing transforms**: one ``W_j ∈ R^{d×d}`` per memory slot, shared by all ``m + T`` inputs, instead of the
  unofficial ``W ∈ R^{m×(m+T)×d×d}`` (5.7M parameters per layer at the defaults, against 82k). A transform per
  input *position* would tie a meaning to a segment slot, which depends on how much front padding the user has;
  per-slot transforms still break the symmetry between slots. It also makes routing cheap: Σ_i c_ij W_j u_i =
  W_j Σ_i c_ij u_i and û_{j|i}·v_j = u_i · W_jᵀ v_j, so the ``[B, m, m+T, d]`` predictions are never formed.
* The initial memory is a learned parameter (the same for every user, deterministic), not ``torch.rand`` per
  forward; the memory is rebuilt from it at the start of every window (no state is carried between windows).
* Routing runs once per segment boundary and layer (S − 2 updates), not S times inside every step.
* Routing runs at capsule scale and the memory is returned at the inputs' scale (÷ρ before, ×ρ after). Capsule
  inputs have norm < 1, but the short-term states H grow to norm 10-50 in training, while squash caps every slot
  below 1: a memory of norm < 1 cannot reproduce attention over states 20x larger, and with the plain squash L_rec
  grew during training and the memory's attention output missed 28-94 % of the uncompressed one's (relative
  squared error, layer 1, four trained runs), about as much as a memory never updated; 9-21 % with the rescaling
  (``benchmarks/dman_memory.py``, RESULTS.md). ``--set rescale_memory=false`` restores the plain squash.
* L_rec exists (the unofficial code omits it). Compressive-Transformer style: the main loss reaches the memory
  but not the abstraction (its output and inputs are stop-gradient there), and L_rec trains only ``f_abs`` (its
  inputs, the queries and the attention weights are constants in L_rec).
* Short-term keys/values are concatenated along time (the unofficial code concatenates along features).
* Positions: a learned bias per head and query-key distance (0 .. 2T−1) in the short-term attention, the
  simplest relative encoding; Transformer-XL's own relative encoding is not reproduced. Relative positions keep
  the previous segment's cached states meaningful, and with the padding rule below the user vector does not
  depend on how much padding precedes the history (a test checks it).
* A segment made only of padding is never written into the memory (the memory stays as it was), and padding
  positions are zero vectors, which add nothing to the routing sums.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import DataSpec
from lsdata.models.nextitem import NextItemModel, NextItemParams, SASBlock


def squash(s: Tensor) -> Tensor:
    """Capsule squash: ``‖s‖² / (1 + ‖s‖²) · s / ‖s‖`` (0 stays 0)."""
    n2 = (s * s).sum(-1, keepdim=True)
    return s * (n2 / (1 + n2)) / torch.sqrt(n2 + 1e-9)


class DMANLayer(nn.Module):
    """One layer: short-term recurrent attention, the memory and its abstraction, long-term attention."""

    def __init__(self, d: int, heads: int, seg_len: int, slots: int, routing: int, p: float, rescale: bool = True):
        super().__init__()
        self.short, self.long = SASBlock(d, heads, p), SASBlock(d, heads, p)
        self.rel = nn.Parameter(torch.zeros(heads, 2 * seg_len))  # bias per head and query-key distance
        self.mem0 = nn.Parameter(torch.randn(slots, d) / math.sqrt(d))  # M_init
        self.w = nn.Parameter(torch.randn(slots, d, d) / math.sqrt(d))  # W_j: input -> slot j prediction
        self.routing, self.rescale = routing, rescale
        self.report: dict[str, float] | None = None  # set to {} to collect memory diagnostics (see memories)

    def abstract(self, mem: Tensor, h: Tensor) -> Tensor:
        """f_abs: ``[M ; H]`` ``[B, m + T, d]`` (padding rows zero) routed into m slots ``[B, m, d]``.

        With ``rescale`` routing runs at capsule scale: the inputs are divided by ρ, the mean norm of the user's real
        (non-zero) input rows, and the squashed slots (norm < 1) are multiplied by ρ again, so ``f_abs(cM, cH) =
        c·f_abs(M, H)`` for c > 0 and the memory lives at the scale of the states it summarises. Without it: plain
        capsule routing, every slot of norm < 1."""
        u = torch.cat([mem, h], 1)
        rho = u.new_ones(u.shape[0], 1, 1)
        if self.rescale:
            norm = u.norm(dim=-1)
            rho = (norm.sum(1) / (norm > 0).sum(1).clamp(min=1)).clamp(min=1e-6)[:, None, None]
        u = u / rho
        b = u.new_zeros(u.shape[0], u.shape[1], mem.shape[1])  # routing logits b_ij
        for r in range(self.routing):
            c = b.softmax(-1)  # input i's coupling to each slot j
            v = squash(torch.einsum("jed,bjd->bje", self.w, torch.einsum("bij,bid->bjd", c, u)))  # W_j Σ_i c_ij u_i
            if r + 1 < self.routing:
                b = b + torch.einsum("bid,bjd->bij", u, torch.einsum("jed,bje->bjd", self.w, v))  # û_j|i · v_j
        return v * rho

    def memories(self, h: Tensor, a: Tensor, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The memory each segment reads ``[B, S, m, d]`` from this layer's short-term states ``h`` and long-term
        inputs ``a`` (``[B, S, T, d]``, ``real`` ``[B, S, T]``), and L_rec's (sum, count) of squared errors (zero
        outside training). With ``self.report`` a dict, it also accumulates, over the same positions: ``err`` (L_rec's
        sum), ``err_keep`` (the same error had the memory not been updated), ``target`` (Σ ‖Attn(Q, [M; H])‖²),
        ``count``, and the norms of the written memory slots and of the real short-term states (``mem_norm`` over
        ``mem_count`` slots, ``h_norm`` over ``h_count`` states)."""
        bsz, n_seg = h.shape[:2]
        mem = self.mem0.expand(bsz, -1, -1)
        reads, err, cnt = [mem, mem], h.new_zeros(()), h.new_zeros(())
        for n in range(2, n_seg):  # segment n reads the memory of segments <= n-2 (n-1 is in its short-term keys)
            old, hn = reads[-1].detach(), h[:, n - 2].detach()
            new = self.abstract(old, hn)
            upd = real[:, n - 2].any(-1)  # a segment of padding only is never written
            if self.training or self.report is not None:
                q = self.long.ln1(a[:, n]).detach()
                keys = torch.cat([torch.ones_like(old[..., 0], dtype=torch.bool), real[:, n - 2]], 1)[:, None, None]
                target = self.long.attend(q, torch.cat([old, hn], 1), keys, frozen=True)
                w = (real[:, n] & upd[:, None]).to(h.dtype)
                e = (((self.long.attend(q, new, None, frozen=True) - target) ** 2).sum(-1) * w).sum()
                if self.training:
                    err, cnt = err + e, cnt + w.sum()
                if self.report is not None:
                    keep = (((self.long.attend(q, old, None, frozen=True) - target) ** 2).sum(-1) * w).sum()
                    hr = real[:, n - 2]
                    for k, v in (("err", e), ("err_keep", keep), ("target", ((target**2).sum(-1) * w).sum()),
                                 ("count", w.sum()), ("mem_norm", new.norm(dim=-1)[upd].sum()),
                                 ("mem_count", upd.sum() * new.shape[1]), ("h_norm", hn.norm(dim=-1)[hr].sum()),
                                 ("h_count", hr.sum())):
                        self.report[k] = self.report.get(k, 0.0) + float(v)
            reads.append(torch.where(upd[:, None, None], new.detach(), reads[-1]))
        return torch.stack(reads[:n_seg], 1), err, cnt


@register
class DMAN(NextItemModel):
    """DMAN (Tan et al., AAAI 2021): segments, recurrent short-term attention, per-user memory with dynamic-routing
    abstraction trained by a reconstruction loss, gated fusion. What follows the paper, what is unverified and what
    deliberately differs: the module docstring (:mod:`lsdata.models.dman`)."""

    name = "dman"

    class Params(NextItemParams):
        emb_dim: int = Field(64, ge=1, description="d (models.md §5e: 64)")
        max_len: int = Field(200, ge=1, description="window L = S segments x seg_len, a multiple of seg_len (lsdata: 4 segments)")
        seg_len: int = Field(50, ge=1, description="T, events per segment (models.md: 50)")
        slots: int = Field(20, ge=1, description="m, memory slots per layer (models.md: 20)")
        layers: int = Field(2, ge=1, description="layers (models.md: 2)")
        heads: int = Field(1, ge=1, description="attention heads, must divide d (models.md: 1-2)")
        routing: int = Field(3, ge=1, description="dynamic-routing iterations of the memory abstraction (unofficial code: 3)")
        rec_weight: float = Field(1.0, ge=0.0, description="λ, weight of the reconstruction loss L_rec (models.md: 1)")
        dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout on embeddings, attention and FFN (lsdata's choice)")
        rescale_memory: bool = Field(True, description="route at capsule scale and return the memory at the scale of "
                                     "its inputs (÷ρ, ×ρ; lsdata's fix); False: plain squash, memory norm < 1 (lsdata "
                                     "before 2026-12-03)")

    train_defaults = {"lr": 1e-3, "batch_size": 128, "loss": "sampled_softmax", "negatives": 100, "targets": "all"}

    def __init__(self, spec: DataSpec, params: Params):
        super().__init__(spec, params)
        d, p, t = params.emb_dim, params, params.seg_len
        if d % p.heads:
            raise ValueError(f"heads={p.heads} must divide emb_dim={d}")
        if p.max_len % t:
            raise ValueError(f"max_len={p.max_len} must be a multiple of seg_len={t}")
        self.item = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item.weight, 0.0, d**-0.5)  # ItemEmb·√d unit-variance; initial scores v·ItemEmb O(1)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.drop = nn.Dropout(p.dropout)
        self.layers = nn.ModuleList(DMANLayer(d, p.heads, t, p.slots, p.routing, p.dropout, p.rescale_memory)
                                    for _ in range(p.layers))
        self.ln_s, self.ln_l = nn.LayerNorm(d, eps=1e-8), nn.LayerNorm(d, eps=1e-8)
        self.gate = nn.Linear(2 * d, d)
        qk = torch.arange(t)[:, None] + t - torch.arange(2 * t)[None, :]  # query i (slot T+i of [prev; cur]) - key k
        self.register_buffer("dist", qk, persistent=False)

    def encode_seq(self, batch):
        s = batch["hist_item"].long()
        b, L = s.shape
        t, d = self.p.seg_len, self.p.emb_dim
        n_seg = L // t
        if L % t:
            raise ValueError(f"window {L} is not a multiple of seg_len={t}")
        real = (s > 0).view(b, n_seg, t)
        pad = real.reshape(b * n_seg, t, 1).to(torch.float32)
        x = self.drop(self.item(s) * math.sqrt(d)).view(b * n_seg, t, d) * pad
        prev_real = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], 1)
        keys = torch.cat([prev_real, real], 2).view(b * n_seg, 1, 2 * t)  # real keys of [previous ; current]
        allow = ((self.dist >= 0) & keys | (self.dist == 0))[:, None]  # causal, key padding, self always: [B·S, 1, T, 2T]
        h = a = x
        err = cnt = x.new_zeros(())
        for layer in self.layers:
            prev = torch.cat([h.new_zeros(b, 1, t, d), h.view(b, n_seg, t, d)[:, :-1]], 1)
            bias = layer.rel[:, self.dist.clamp(min=0)].masked_fill(~allow, float("-inf"))  # [B·S, heads, T, 2T]
            h = layer.short(h, bias, pad, kv=torch.cat([prev.reshape(b * n_seg, t, d).detach(), h], 1))
            mem, e, c = layer.memories(h.view(b, n_seg, t, d), a.view(b, n_seg, t, d), real)
            a = layer.long(a, None, pad, kv=mem.flatten(0, 1))
            err, cnt = err + e, cnt + c
        hs, hl = self.ln_s(h), self.ln_l(a)
        g = torch.sigmoid(self.gate(torch.cat([hs, hl], -1)))
        v = (g * hs + (1 - g) * hl).view(b, L, d)
        return v, self.p.rec_weight * err / cnt.clamp(min=1)

    def output(self):
        return self.item.weight, None
