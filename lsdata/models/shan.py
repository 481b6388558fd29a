"""SHAN - Sequential Hierarchical Attention Network (Ying et al., IJCAI 2018; models.md §6, protocol.md §3.2):
``shan`` in the CTR framing (the ``shan`` layout) and ``shan_next`` in the next-item framing (``sequences/``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from lsdata.models import register
from lsdata.models.base import CTRModel, DataSpec, ModelParams, zero
from lsdata.models.blocks import BehaviorEmbedding, DINAttention, Head, front_mask, history, masked_softmax
from lsdata.models.nextitem import NextItemModel, NextItemParams


class SHANParams(ModelParams):
    emb_dim: int = Field(18, ge=1, description="embedding size per id field (reference shan.py: 18)")
    head_act: str = Field("relu", description="head activation (reference: relu)")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="head dropout in training (reference: constant keep 0.8)")
    long_term: bool = Field(True, description="long-term attention level (False: the HPMN-repo HEAD, short queue only)")
    user_query: str = Field("mean", pattern="^(mean|global)$",
                            description="stand-in for the user embedding: mean = projected mean of the history, "
                                        "global = one learned vector")
    dual: bool = Field(False, description="add the reference's item-side branch (candidate attention over side_short users)")
    dropout_at_eval: bool = Field(False, description="reference bug Q-H9: keep the head dropout on at evaluation")


class SHANAttention(nn.Module):
    """SHAN's attention level: ``h_j = ReLU(W x_j + b)``, ``a = softmax_j(e_u . h_j)``, ``sum_j a_j x_j``."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, user: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        scores = torch.einsum("btd,bd->bt", torch.relu(self.proj(x)), user)
        return (masked_softmax(scores, mask).unsqueeze(-1) * x).sum(1)


@register
class SHAN(CTRModel):
    """SHAN as a CTR model on the ``shan`` layout (``long_*`` = older history, ``short_*`` = the most recent
    ``short`` events)::

        e_u      = W_u mean(long U short) + b_u             (user_query=mean, default)  | learned u (global)
        u_long   = sum_j softmax_j(e_u . ReLU(W_1 v_j + b_1)) v_j            over the long part
        u_hybrid = sum_k softmax_k(e_u . ReLU(W_2 x_k + b_2)) x_k            over {u_long} U short items
        logit    = head([u_hybrid; e_tgt])     head: Affine -> 200 ReLU -> 80 ReLU -> 1

    ``u_long`` is never masked (a zero vector when the long part is empty), as in the paper.

    User query: the zoo has no user embedding (base), so the paper's ``e_u`` is replaced by a projection of
    the candidate-free mean of the user's behaviours (the crop this model sees; per-user, like the user
    embedding it replaces); ``user_query=global`` uses one learned vector instead (then the long-term
    pooling weights depend on the item only and could be kept as running sums). The paper's score
    ``<u_hybrid, v_i>`` becomes the zoo's head on ``[u_hybrid; e_tgt]`` (CTR adaptation).

    Reference (HPMN ``shan.py``/``srnn.py``): E = 18, lr 1e-3, head Affine -> 200 ReLU -> 80 ReLU -> 1 with
    a constant keep 0.8 (the placeholder is ignored, Q-H9), i.e. dropout 0.2 in training - reproduced.
    Fixed on purpose:

    * the long-term branch, commented out at the repo's HEAD, is **restored**; ``long_term=False`` gives the
      HEAD's structure: one attention level over the short queue only (``long_*`` unused, ``e_u`` from
      ``short``). (The HEAD's attention itself is a DIN unit queried by the item-side ``target_user`` row,
      which embeds the candidate; here both levels keep SHAN's candidate-free attention);
    * dropout is **off at evaluation** (``dropout_at_eval=True`` reproduces Q-H9);
    * the item-side branch that the positional-argument shift switches on (``dual=True`` in the reference)
      is **off** because the item-side sequence carries a popularity signal (Q-H8); ``dual=True`` adds it:
      DIN attention (query Dense + PReLU, MLP 80/40 ReLU, softmax) of the candidate over the
      ``side_short`` rows ``[E_item(candidate); E_user; E_behavior]`` (this branch alone embeds user ids:
      item-side users are other users), pooled vector appended to the head input;
    * the short queue excludes the candidate (``append_target=True`` appends it, as the reference's crop);
    * batch 128 instead of 10; no Taobao ``item_mem_maxlen`` shape error.

    Not incremental: with ``user_query=mean`` the query of both levels moves with every event.
    """

    name = "shan"
    layout = "shan"
    Params = SHANParams
    train_defaults = {"lr": 1e-3, "batch_size": 128}
    incremental = False

    def __init__(self, spec: DataSpec, p: SHANParams):
        super().__init__(spec, p)
        self.emb = BehaviorEmbedding(spec, p)
        d = self.emb.dim
        if p.user_query == "mean":
            self.user_proj = nn.Linear(d, d)
        else:
            self.user_vec = nn.Parameter(torch.randn(d) * 0.1)
        self.long_att = SHANAttention(d) if p.long_term else None
        self.short_att = SHANAttention(d)
        head_in = 2 * d
        if p.dual:
            self.side_user = nn.Embedding(spec.n_users + 1, p.emb_dim, padding_idx=0)
            nn.init.normal_(self.side_user.weight, std=0.05)
            self.side_user.weight.data[0] = 0
            self.side_dim = self.emb.item.embedding_dim + p.emb_dim + (p.emb_dim if self.emb.behavior is not None else 0)
            self.side_att = DINAttention(d, self.side_dim, hidden=(80, 40), act="relu", query_proj=True)
            head_in += self.side_dim
        self.head = Head(head_in, p)

    def user_query(self, parts: list[tuple[Tensor, Tensor]]) -> Tensor:
        """``e_u``: the projected mean of the real behaviours in ``parts`` (or the learned global vector)."""
        if self.p.user_query == "global":
            return self.user_vec.expand(parts[0][0].shape[0], -1)
        total = sum((x * m.unsqueeze(-1)).sum(1) for x, m in parts)
        count = sum(m.sum(1) for _, m in parts).clamp(min=1)
        return self.user_proj(total / count.unsqueeze(-1))

    def item_side(self, batch: dict[str, Tensor]) -> Tensor:
        """Candidate attention over the users who touched the candidate (reference ``item_part``)."""
        users = batch["side_short_user"]
        rows = [self.emb.item(batch["item"]).unsqueeze(1).expand(-1, users.shape[1], -1) * (users > 0).unsqueeze(-1),
                self.side_user(users)]
        if self.emb.behavior is not None:
            rows.append(self.emb.behavior(batch["side_short_behavior"] * (users > 0)))
        keys = torch.cat(rows, dim=-1)
        pooled, _ = self.side_att(self.emb.target(batch), keys, front_mask(batch["side_short_len"].long(), users.shape[1]))
        return pooled

    def forward(self, batch):
        short, short_mask, _, tgt = history(self.emb, batch, self.p.append_target, prefix="short")
        short_hist = (short[:, : batch["short_item"].shape[1]], short_mask[:, : batch["short_item"].shape[1]])
        if self.long_att is not None:
            long = self.emb.seq(batch, "long")
            long_mask = front_mask(batch["long_len"].long(), long.shape[1])
            user = self.user_query([(long, long_mask), short_hist])
            u_long = self.long_att(user, long, long_mask)
            short = torch.cat([u_long.unsqueeze(1), short], dim=1)
            short_mask = torch.cat([short_mask.new_ones(short.shape[0], 1), short_mask], dim=1)  # u_long never masked
        else:
            user = self.user_query([short_hist])
        feats = [self.short_att(user, short, short_mask), tgt]
        if self.p.dual:
            feats.append(self.item_side(batch))
        x = torch.cat(feats, dim=-1)
        logit = self._head(x)
        return logit, zero(logit)

    def _head(self, x: Tensor) -> Tensor:
        if not (self.p.dropout_at_eval and not self.training):
            return self.head(x)
        for layer in self.head.net:  # reference Q-H9: dropout also at evaluation
            x = F.dropout(x, layer.p, training=True) if isinstance(layer, nn.Dropout) else layer(x)
        return x.squeeze(-1)


class SHANNextParams(NextItemParams):
    emb_dim: int = Field(100, ge=1, description="d, user and item embeddings (paper 100; RecBole 64)")
    short_len: int = Field(2, ge=1, description="most recent events forming the short-term set S_u (no session ids in "
                                                "lsdata data; RecBole's short_item_length 2)")
    reg_att: float = Field(0.0, ge=0.0, description="lambda_a: weight of ||W_1||^2 + ||W_2||^2 (attention weights)")
    reg_uv: float = Field(0.0, ge=0.0, description="lambda_uv: weight of ||e_u||^2 + ||v||^2 of each training triple's "
                                                   "user and scored items, averaged over the batch")

    @model_validator(mode="after")
    def _short_inside_window(self) -> SHANNextParams:
        if self.short_len >= self.max_len:
            raise ValueError(f"short_len={self.short_len} must be < max_len={self.max_len}")
        return self


@register
class SHANNext(NextItemModel):
    """SHAN (Ying et al., IJCAI 2018; models.md §6) in the next-item framing, the paper's model and BPR loss::

        e_u      = UserEmb(u),  v_j = ItemEmb(s_j)                   (one table scores and embeds items)
        u_long   = sum_j softmax_j(e_u . ReLU(W_1 v_j + b_1)) v_j        over the long-term set L_u
        u_hybrid = sum_k softmax_k(e_u . ReLU(W_2 x_k + b_2)) x_k        over X = {u_long} U S_u (u_long never masked)
        score(i) = u_hybrid . ItemEmb(i)

    Both attention levels are :class:`SHANAttention`, the block the CTR ``shan`` uses. S_u = the most recent
    ``short_len`` events of the window, L_u = the older ones (disjoint, as the paper; RecBole's variant lets
    L_u include S_u); with no older event u_long is the zero vector. The paper's sessions (one day) do not exist
    in lsdata's data, so the short-term set is a count, as in SDM here and RecBole's SHAN.

    Loss: BPR with one uniform negative per target (paper), plus the paper's regularisation
    ``reg_att (||W_1||^2 + ||W_2||^2) + reg_uv (||e_u||^2 + ||v_pos||^2 + ||v_neg||^2)`` (batch mean; the
    item terms are added in :meth:`forward` for the scored items). No official code exists; init as the
    reference implementation (RecBole): embeddings N(0, 0.01), attention weights U(±sqrt(3/d)). Defaults:
    d 100 (paper), Adam lr 1e-3, batch 256, the regularisation weights 0 (the paper tunes them; its values are
    unverified, see models.md §6).
    """

    name = "shan_next"
    Params = SHANNextParams
    train_defaults = {"lr": 1e-3, "batch_size": 256, "loss": "bpr", "negatives": 1}

    def __init__(self, spec: DataSpec, params: SHANNextParams):
        super().__init__(spec, params)
        d = params.emb_dim
        self.item = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
        self.user = nn.Embedding(spec.n_users + 1, d)
        self.long_att, self.short_att = SHANAttention(d), SHANAttention(d)
        bound = (3.0 / d) ** 0.5
        for t in (self.item, self.user):
            nn.init.normal_(t.weight, 0.0, 0.01)
        for att in (self.long_att, self.short_att):
            nn.init.uniform_(att.proj.weight, -bound, bound)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def encode(self, batch):
        s, n = batch["hist_item"].long(), batch["hist_len"].long()
        k = self.p.short_len
        v = self.item(s)
        eu = self.user(batch["user"].long())
        n_s = n.clamp(max=k)
        u_long = self.long_att(eu, v[:, :-k], front_mask(n - n_s, s.shape[1] - k))
        x = torch.cat([u_long.unsqueeze(1), v[:, -k:]], 1)
        mask = torch.cat([torch.ones_like(n_s, dtype=torch.bool).unsqueeze(1), front_mask(n_s, k)], 1)
        reg = self.p.reg_att * sum(a.proj.weight.pow(2).sum() for a in (self.long_att, self.short_att))
        return self.short_att(eu, x, mask), reg + self.p.reg_uv * eu.pow(2).sum(1).mean()

    def forward(self, batch, items=None, positions=None):
        logits, extra = super().forward(batch, items, positions)
        if items is not None and self.p.reg_uv:
            extra = extra + self.p.reg_uv * self.item(items.long()).pow(2).sum((1, 2)).mean()
        return logits, extra

    def output(self):
        return self.item.weight, None
