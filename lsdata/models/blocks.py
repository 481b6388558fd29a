"""Building blocks shared by the models (models.md §1.3): embeddings, masks, RNN runners, attention, heads.

Sequences are front-padded (see :mod:`lsdata.loader`): position ``L-1`` is the most recent event and
``mask[b, t] = t >= L - len[b]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lsdata.models.base import CANDIDATE_BEHAVIOR, N_BEHAVIOR_IDS, DataSpec, ModelParams

NEG_INF = -1e9


def front_mask(lengths: Tensor, width: int) -> Tensor:
    """``[B, width]`` bool, True on the last ``lengths[b]`` positions."""
    t = torch.arange(width, device=lengths.device)
    return t[None, :] >= (width - lengths.clamp(max=width))[:, None]


def init_embeddings(tables: list[nn.Embedding], p: ModelParams) -> None:
    """Initialise id tables per ``p.emb_init``; row 0 (padding) is set to zeros.

    ``glorot``: each table ``U(-a, a)``, ``a = sqrt(6 / (rows + d))``. ``glorot_shared``: the reference repos keep
    every id field in one shared TF table initialised with ``get_variable``'s default Glorot-uniform, so ``a``
    uses the total row count for all fields. The small item scale matters: with Adam a weight moves by about
    ``lr`` per step, so a popular item's embedding stands out from the initial noise within a few steps
    (N(0, 0.05) needs hundreds); a small category scale, on the other hand, slows learning to match a
    candidate's category in the history (measured in ``benchmarks/RESULTS.md``).
    """
    with torch.no_grad():
        total = sum(t.num_embeddings for t in tables)
        for t in tables:
            if p.emb_init == "normal":
                t.weight.normal_(0.0, p.emb_std)
            else:
                rows = total if p.emb_init == "glorot_shared" else t.num_embeddings
                a = math.sqrt(6.0 / (rows + p.emb_dim))
                t.weight.uniform_(-a, a)
            t.weight[0] = 0


class BehaviorEmbedding(nn.Module):
    """``e = [E_item[item]; E_cate[cate]; E_behavior[behavior]]``; id 0 embeds to zeros.

    XLong's ``item_init`` (graph embeddings) initialises the item table and sets its width.
    """

    def __init__(self, spec: DataSpec, p: ModelParams):
        super().__init__()
        d = p.emb_dim
        init = spec.item_init
        d_item = init.shape[1] if init is not None else d
        self.item = nn.Embedding(spec.n_items + 1, d_item, padding_idx=0)
        self.cate = self.behavior = None
        if p.use_cate and spec.n_cates > 0:
            self.cate = nn.Embedding(spec.n_cates + 1, d, padding_idx=0)
        if p.use_behavior:
            self.behavior = nn.Embedding(N_BEHAVIOR_IDS, d, padding_idx=0)
        tables = [t for t in (self.item, self.cate, self.behavior) if t is not None]
        init_embeddings(tables, p)
        if init is not None:
            with torch.no_grad():
                self.item.weight.copy_(torch.as_tensor(init[: spec.n_items + 1], dtype=torch.float32))
                self.item.weight[0] = 0
        self.dim = d_item + d * ((self.cate is not None) + (self.behavior is not None))

    def forward(self, item: Tensor, cate: Tensor, behavior: Tensor | None) -> Tensor:
        parts = [self.item(item)]
        if self.cate is not None:
            parts.append(self.cate(cate))
        if self.behavior is not None:
            b = behavior if behavior is not None else torch.full_like(item, CANDIDATE_BEHAVIOR)
            parts.append(self.behavior(b * (item > 0)))
        return torch.cat(parts, dim=-1)

    def seq(self, batch: dict[str, Tensor], prefix: str = "hist") -> Tensor:
        """``[B, L, D_e]`` embeddings of ``{prefix}_item/cate/behavior``."""
        return self(batch[f"{prefix}_item"], batch[f"{prefix}_cate"], batch.get(f"{prefix}_behavior"))

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, D_e]`` embedding of the candidate (behaviour = the candidate id)."""
        return self(batch["item"], batch["cate"], None)

    def negatives(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, L, D_e]`` of the ``mimn`` layout's per-position negatives, with the positive's behaviour."""
        return self(batch["neg_item"], batch["neg_cate"], batch["hist_behavior"])


def history(emb: BehaviorEmbedding, batch: dict[str, Tensor], append_target: bool,
            prefix: str = "hist") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(sequence ``[B, T, D_e]``, mask ``[B, T]``, lengths ``[B]``, target ``[B, D_e]``).

    With ``append_target`` the candidate is appended as step ``T-1`` (``T = L + 1``): the reference's input.
    """
    x = emb.seq(batch, prefix)
    n = batch[f"{prefix}_len"].long()
    tgt = emb.target(batch)
    if append_target:
        x = torch.cat([x, tgt[:, None]], dim=1)
        n = n + 1
    return x, front_mask(n, x.shape[1]), n, tgt


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask[..., None]).sum(1)


def pool(total: Tensor, count: Tensor, how: str) -> Tensor:
    """A pooled history from its running ``total`` ``[B, D]`` and event ``count`` ``[B]``: ``sum`` or ``mean``
    (an empty history pools to zeros). Taking the running pair keeps the incremental state exact."""
    return total / count.clamp(min=1).to(total.dtype)[:, None] if how == "mean" else total


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last axis restricted to ``mask``; an all-masked row gives all zeros."""
    if mask is None:
        return torch.softmax(scores, dim=-1)
    w = torch.softmax(scores.masked_fill(~mask, NEG_INF), dim=-1)
    return w * mask.any(-1, keepdim=True)


def run_rnn(rnn: nn.GRU | nn.LSTM, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run ``rnn`` over the real steps of front-padded ``x`` only (the state never sees padding).

    Returns (outputs ``[B, T, H]`` front-aligned with zeros on padding, final ``h`` ``[B, H]``, final ``c``
    for an LSTM else None). Rows with no real step get zero outputs and states.

    The rows are re-aligned to the left (real steps first) and cut to the longest row of the batch, the
    RNN runs unpacked (the fused kernel; on CPU the packed-sequence backward is ~10x slower), and the state
    after each row's last real step is gathered: padding after the real steps cannot affect it. An LSTM's
    cell state is not output per step, so LSTMs run on packed sequences (exact, slower backward on CPU).
    """
    b, t, _ = x.shape
    n = lengths.clamp(min=0, max=t)
    keep = (n > 0).to(x.dtype)[:, None]
    if isinstance(rnn, nn.LSTM):
        packed = pack_padded_sequence(_left_align(x, n), n.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        return _front_align(out, n, t), h[-1] * keep, c[-1] * keep
    out, _ = rnn(_left_align(x, n, span=max(int(n.max()), 1)))
    h = out[torch.arange(b, device=x.device), (n - 1).clamp(min=0)] * keep
    return _front_align(out, n, t), h, None


def _left_align(x: Tensor, n: Tensor, span: int | None = None) -> Tensor:
    """Rows of front-padded ``x`` with their ``n`` real steps moved to the start, cut to ``span`` steps."""
    t = x.shape[1]
    pos = torch.arange(span or t, device=x.device)[None, :]
    src = (pos + (t - n)[:, None]).clamp(max=t - 1)
    return x.gather(1, src[..., None].expand(-1, -1, x.shape[2]))


def _front_align(out: Tensor, n: Tensor, t: int) -> Tensor:
    """Inverse of :func:`_left_align` to width ``t``, zeros on padding."""
    pos = torch.arange(t, device=out.device)[None, :]
    back = (pos - (t - n)[:, None]).clamp(min=0, max=out.shape[1] - 1)
    return out.gather(1, back[..., None].expand(-1, -1, out.shape[2])) * front_mask(n, t)[..., None]


def gru_step(rnn: nn.GRU, x: Tensor, h: Tensor) -> Tensor:
    """One step of (single-layer) ``rnn`` with its own weights: the incremental form of :func:`run_rnn`."""
    return torch.gru_cell(x, h, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)


def lstm_step(rnn: nn.LSTM, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    return torch.lstm_cell(x, (h, c), rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)


class Dice(nn.Module):
    """DIN's Dice: ``p(x) x + (1 - p(x)) alpha x`` with ``p = sigmoid(BN(x))`` (running stats at eval)."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-8)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        p = torch.sigmoid(self.bn(x2))
        return (p * x2 + (1 - p) * self.alpha * x2).reshape(shape)


def activation(name: str, dim: int) -> nn.Module:
    """An activation by name. ``silu`` is ``x sigmoid(x)``: what RecBole 1.2.1's ``Dice`` computes (its ``alpha``
    is a fixed zero tensor, not a parameter, and it has no batch norm); ``none`` is the identity (a linear MLP,
    RecBole's ``MLPLayers(activation='none')``)."""
    if name == "prelu":
        return nn.PReLU(dim, init=0.1)
    if name == "dice":
        return Dice(dim)
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
            "none": nn.Identity}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join([*acts, 'prelu', 'dice'])}")
    return acts[name]()


class Affine(nn.Module):
    """The reference heads' ``tf.layers.batch_normalization`` in inference mode: ``gamma x / sqrt(1 + 1e-3) + beta``."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.scale = 1.0 / math.sqrt(1.0 + 1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return x * (self.gamma * self.scale) + self.beta


class Head(nn.Module):
    """Affine -> [Linear -> act -> Dropout] per hidden size -> Linear 1 (the logit).

    ``head_norm=batch``: no Affine; [Linear -> BatchNorm1d -> act -> Dropout] (training-mode batch norm).
    """

    def __init__(self, in_dim: int, p: ModelParams, act: str | None = None):
        super().__init__()
        batch = p.head_norm == "batch"
        layers: list[nn.Module] = [] if batch else [Affine(in_dim)]
        d = in_dim
        for h in p.head:
            layers += [nn.Linear(d, h), *([nn.BatchNorm1d(h)] if batch else []), activation(act or p.head_act, h),
                       nn.Dropout(p.dropout)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


#: Caser heights convolved together: one conv1d per group of this many heights (kernel = the group's largest, the
#: smaller filters zero-padded); 4x faster than one Conv2d per height at 50 heights, same outputs
CASER_HEIGHT_GROUP = 25
#: :func:`window_conv` multiplies unfolded windows up to this many elements (128 MiB in float32), else calls conv1d
WINDOW_MATMUL_LIMIT = 1 << 25


def window_conv(x: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    """``F.conv1d(x, w, bias)`` (``x`` ``[B, C_in, N]``, ``w`` ``[C_out, C_in, k]``). On a CPU without oneDNN
    (unavailable, or switched off as the RecBole comparisons run) and when the unfolded windows ``x[..., j:j+k]``
    hold at most ``WINDOW_MATMUL_LIMIT`` elements, computed as one matmul over them: the same numbers, 5.7x faster
    than torch's fallback convolution at Caser's L 5, d 64, batch 2048 (fwd+bwd 0.023 s vs 0.131 s); with oneDNN,
    conv1d (0.013 s) is used (``benchmarks/window_conv.py``, benchmarks/RESULTS.md MovieLens-100k section)."""
    b, c_in, n = x.shape
    k = w.shape[-1]
    fast_conv = x.device.type != "cpu" or (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    if fast_conv or b * (n - k + 1) * c_in * k > WINDOW_MATMUL_LIMIT:
        return F.conv1d(x, w, bias)
    return torch.einsum("bdjr,cdr->bcj", x.unfold(2, k, 1), w) + bias[:, None]


def caser_horizontal(x: Tensor, n: Tensor, convs: nn.ModuleList, relu: bool, group: int | None = None) -> Tensor:
    """Caser's horizontal filters over a front-padded image ``x`` ``[B, t, D]`` with ``n`` ``[B]`` real rows:
    ``[B, len(convs) * n_h]``, per ``Conv2d(1, n_h, (k, D))`` in ``convs`` and filter the max over the windows of
    ``k`` rows that end on a real row (``o_j = b + sum_{r<k} W[r] . x[j + r]``, ReLU first if ``relu``); a sample
    with no real row gets zeros. Windows made only of padding never enter the max, so the output does not depend
    on how much padding precedes the history."""
    b, t, _ = x.shape
    group = group or CASER_HEIGHT_GROUP
    heights = [c.kernel_size[0] for c in convs]
    n_h = convs[0].out_channels
    pad = t - n
    xt = F.pad(x.transpose(1, 2), (0, max(heights) - 1))  # zeros after the end: windows running past it
    pos = torch.arange(t, device=x.device)
    out: list[Tensor | None] = [None] * len(heights)
    order = sorted(range(len(heights)), key=heights.__getitem__)
    for g in range(0, len(order), group):
        idx = order[g : g + group]
        ks = [heights[i] for i in idx]
        kmax = max(ks)
        w = torch.cat([F.pad(convs[i].weight.squeeze(1).transpose(1, 2), (0, kmax - k)) for i, k in zip(idx, ks)])
        bias = torch.cat([convs[i].bias for i in idx])
        o = window_conv(xt[..., : t + kmax - 1], w, bias).view(b, len(ks), n_h, t)  # window j = rows j..j+k-1
        if relu:
            o = torch.relu(o)
        last = pos[None, :] + torch.tensor(ks, device=x.device)[:, None] - 1  # [G, t] each window's last row
        real = (last[None] < t) & (last[None] >= pad[:, None, None])  # [B, G, t]
        o = o.masked_fill(~real[:, :, None, :], NEG_INF).amax(-1)  # [B, G, n_h]
        o = torch.where((n > 0)[:, None, None], o, torch.zeros_like(o))
        for j, i in enumerate(idx):
            out[i] = o[:, j]
    return torch.cat(out, -1)


class DINAttention(nn.Module):
    """DIN local activation unit: ``s_t = MLP([q, k_t, q - k_t, q * k_t])``, normalised over ``t``.

    ``query_proj`` maps the query to the key width with Linear + PReLU (HPMN-repo variant); without it the
    widths must match (MIMN repo). ``norm``: ``softmax`` (masked) or ``none`` (DIN paper: raw weights,
    padding zeroed). Returns (pooled ``[B, Dk]``, weights ``[B, T]``).
    """

    def __init__(self, q_dim: int, k_dim: int, hidden: tuple[int, ...] = (80, 40), act: str = "relu",
                 query_proj: bool = True, norm: str = "softmax", score_bias: bool | None = None):
        super().__init__()
        if not query_proj and q_dim != k_dim:
            raise ValueError(f"attention without query projection needs equal widths, got {q_dim} and {k_dim}")
        self.proj = nn.Sequential(nn.Linear(q_dim, k_dim), nn.PReLU(k_dim, init=0.1)) if query_proj else None
        layers: list[nn.Module] = []
        d = 4 * k_dim
        for h in hidden:
            layers += [nn.Linear(d, h), activation(act, h)]
            d = h
        # a constant added to every score cancels in the softmax, so that bias would never learn anything
        layers.append(nn.Linear(d, 1, bias=norm != "softmax" if score_bias is None else score_bias))
        self.mlp = nn.Sequential(*layers)
        self.norm = norm

    def scores(self, q: Tensor, keys: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[B, T]`` raw scores. With a ``mask`` that leaves at least a quarter of the positions as padding,
        the MLP runs on the real positions only (padding scores are 0; every caller masks them): lifelong
        histories are mostly shorter than the layout width (mean 60 of 300 on the Taobao benchmark data), so
        this is most of the attention's cost saved."""
        if self.proj is not None:
            q = self.proj(q)
        if mask is not None and mask.numel() and int(mask.sum()) <= 0.75 * mask.numel():
            b, t = mask.nonzero(as_tuple=True)
            qr, kr = q[b], keys[b, t]
            real = self.mlp(torch.cat([qr, kr, qr - kr, qr * kr], dim=-1)).squeeze(-1)
            return real.new_zeros(mask.shape).index_put((b, t), real)
        q = q[:, None, :].expand_as(keys)
        return self.mlp(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)

    def forward(self, q: Tensor, keys: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        s = self.scores(q, keys, mask)
        if self.norm == "softmax":
            w = masked_softmax(s, mask)
        else:
            w = s if mask is None else s * mask
        return (w[..., None] * keys).sum(1), w


def bce(logit: Tensor, label: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logit, label)
