"""Model-specific checks of the HPMN-suite baselines (lsdata/models/baselines.py), on small synthetic batches.

The generic checks (shapes, gradients, overfitting, incremental == full forward on real data) are in
test_models.py; these check each model's own formula or property, so each can fail on its own.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lsdata import models
from lsdata.models.base import DataSpec
from lsdata.models import baselines
from lsdata.models.baselines import augru
from lsdata.models.blocks import run_rnn

L = 24
SPEC = DataSpec("taobao", "hpmn", n_users=40, n_items=60, n_cates=7, widths={"hist": L, "side": 8})
MIMN_SPEC = DataSpec("taobao", "mimn", n_users=40, n_items=60, n_cates=7, widths={"hist": L, "side": 8})


def make_batch(b: int = 6, width: int = L, seed: int = 0, lengths=None) -> dict[str, torch.Tensor]:
    """A front-padded batch under the loader's contract, with the mimn layout's negatives."""
    g = torch.Generator().manual_seed(seed)
    n = torch.as_tensor(lengths) if lengths is not None else torch.randint(0, width + 1, (b,), generator=g)
    b = n.shape[0]
    mask = torch.arange(width)[None, :] >= (width - n)[:, None]

    def ids(hi):
        return (torch.randint(1, hi + 1, (b, width), generator=g) * mask).int()

    return {
        "hist_item": ids(60), "hist_cate": ids(7), "hist_behavior": ids(4), "hist_len": n.int(),
        "neg_item": ids(60), "neg_cate": ids(7),
        "item": torch.randint(1, 61, (b,), generator=g).int(), "cate": torch.randint(1, 8, (b,), generator=g).int(),
        "user": torch.arange(b).int(), "label": torch.randint(0, 2, (b,), generator=g).float(),
    }


def widen(batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """The same samples in a layout ``extra`` columns wider: more front padding, nothing else."""
    out = dict(batch)
    for k, v in batch.items():
        if v.ndim == 2:
            out[k] = F.pad(v, (extra, 0))
    return out


def build(name: str, spec: DataSpec = SPEC, **overrides):
    cls = models.get(name)
    torch.manual_seed(0)
    return cls(spec, cls.make_params(spec.dataset, overrides))


# ---------------------------------------------------------------------------------------------- SVD++


@pytest.mark.parametrize("append_target", [False, True])
@pytest.mark.parametrize("norm", ["count", "l1_matrix"])
def test_svdpp_logit_is_the_svdpp_formula_computed_by_hand(norm, append_target):
    m = build("svdpp", norm=norm, append_target=append_target, use_behavior=False)
    batch = make_batch(lengths=[0, 1, 5, L, 3])
    it, ct = m.emb.item.weight.detach(), m.emb.cate.weight.detach()
    got = m(batch)[0].detach()
    for b in range(5):
        n = int(batch["hist_len"][b])
        ys = [torch.cat([it[batch["hist_item"][b, t]], ct[batch["hist_cate"][b, t]]]) for t in range(L - n, L)]
        q = torch.cat([it[batch["item"][b]], ct[batch["cate"][b]]])
        if append_target:
            ys.append(q)
        if not ys:
            want = torch.tensor(0.0)
        else:
            y = torch.stack(ys)
            scale = len(ys) ** -0.5 if norm == "count" else y.abs().sum(0).max() ** -0.5  # |N(u)|^-1/2 / HPMN's 1-norm
            want = q @ (y.sum(0) * scale)
        torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-6)


def test_svdpp_biases_add_mu_and_the_item_bias():
    m = build("svdpp", biases=True)
    batch = make_batch()
    with torch.no_grad():
        base = m(batch)[0]
        m.mu.fill_(0.5)
        m.bias_emb.weight[batch["item"][0]] = 2.0
        shifted = m(batch)[0]
    want = base + 0.5
    want[batch["item"] == batch["item"][0]] += 2.0
    torch.testing.assert_close(shifted, want)


# ------------------------------------------------------------------------- incremental, non-default variants


@pytest.mark.parametrize("name,overrides", [
    ("svdpp", {"append_target": True}), ("svdpp", {"norm": "l1_matrix", "append_target": True}),
    ("svdpp", {"biases": True}), ("lstm", {"append_target": True}), ("lstm", {}),
])
def test_folding_events_equals_the_full_forward_for_non_default_params(name, overrides):
    m = build(name, **overrides).eval()
    batch = make_batch(b=8, lengths=[0, 1, 2, 7, L, L - 1, 13, 4])
    with torch.no_grad():
        full = m(batch)[0]
        state = m.init_state(8)
        for t in range(L):
            state = m.update(state, {k: batch[f"hist_{k}"][:, t] for k in ("item", "cate", "behavior")})
        folded = m.score(state, {"item": batch["item"], "cate": batch["cate"]})
    torch.testing.assert_close(folded, full, rtol=1e-5, atol=1e-5)


def test_lstm_head_sees_both_cell_and_hidden_state():
    m = build("lstm", append_target=True).eval()
    assert m.head.net[0].gamma.shape[0] == 2 * m.p.hidden
    batch = make_batch(lengths=[3, 9, L, 1, 5, 6])
    with torch.no_grad():
        base = m(batch)[0]
        m.head.net[0].gamma[: m.p.hidden] = 0  # silence c: the logit must move
        no_c = m(batch)[0]
    assert not torch.allclose(base, no_c)


# ------------------------------------------------------------------------------------------------ AUGRU


def _gru_fold(cell, x, mask, h):
    for t in range(x.shape[1]):
        h = torch.where(mask[:, t, None], cell(x[:, t], h), h)
    return h


def test_augru_paper_convention_keeps_the_state_when_attention_is_zero():
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(5, 4)
    x, h0 = torch.randn(3, 7, 5), torch.randn(3, 4)
    mask = torch.ones(3, 7, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(augru(cell, x, torch.zeros(3, 7), mask, "paper", h0), h0)
        # a = 1 is a plain GRU step
        torch.testing.assert_close(augru(cell, x, torch.ones(3, 7), mask, "paper", h0), _gru_fold(cell, x, mask, h0))


def test_augru_official_convention_is_a_gru_at_zero_attention_and_differs_from_the_paper():
    torch.manual_seed(1)
    cell = torch.nn.GRUCell(5, 4)
    x, h0 = torch.randn(3, 7, 5), torch.randn(3, 4)
    mask = torch.arange(7)[None, :] >= torch.tensor([0, 3, 6])[:, None]
    a = torch.rand(3, 7)
    with torch.no_grad():
        zero_att = augru(cell, x, torch.zeros(3, 7), mask, "official", h0)
        torch.testing.assert_close(zero_att, _gru_fold(cell, x, mask, h0))
        assert not torch.allclose(augru(cell, x, a, mask, "official", h0), augru(cell, x, a, mask, "paper", h0))
        # one step with a = 1: the official cell takes the candidate state n outright
        n_only = augru(cell, x[:, -1:], torch.ones(3, 1), mask[:, -1:], "official", h0)
        gi, gh = F.linear(x[:, -1], cell.weight_ih, cell.bias_ih), F.linear(h0, cell.weight_hh, cell.bias_hh)
        r = torch.sigmoid(gi[:, :4] + gh[:, :4])
        torch.testing.assert_close(n_only, torch.tanh(gi[:, 8:] + r * gh[:, 8:]))


def test_augru_padding_steps_leave_the_state_unchanged_in_both_conventions():
    torch.manual_seed(2)
    cell = torch.nn.GRUCell(5, 4)
    x, a = torch.randn(2, 6, 5), torch.rand(2, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    for conv in ("paper", "official"):
        with torch.no_grad():
            full = augru(cell, x, a, mask, conv)
            short = augru(cell, x[:, 2:], a[:, 2:], mask[:, 2:], conv)
            garbage = augru(cell, torch.where(mask[..., None], x, torch.randn_like(x)), a, mask, conv)
        torch.testing.assert_close(full, short)
        torch.testing.assert_close(full, garbage)


# ----------------------------------------------------------------------------------------- DIEN aux loss


def test_dien_aux_loss_is_positive_on_the_mimn_layout_and_zero_without():
    batch = make_batch(lengths=[0, 1, 2, 10, L, 5])
    m = build("dien", MIMN_SPEC, aux_weight=1.0).train()
    _, extra = m(batch)
    assert extra.item() > 0 and extra.requires_grad
    extra.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.aux.parameters())
    off = build("dien", MIMN_SPEC).train()
    assert off.aux is None and off(batch)[1].item() == 0.0
    with torch.no_grad():
        assert m.eval()(batch)[1].item() == 0.0  # evaluation scores only: no negatives needed


def test_dien_aux_loss_needs_the_mimn_negatives():
    batch = make_batch()
    del batch["neg_item"], batch["neg_cate"]
    with pytest.raises(ValueError, match="--layout mimn"):
        build("dien", SPEC, aux_weight=1.0).train()(batch)


def test_dien_aux_loss_is_masked_to_real_steps_and_averaged_over_them():
    m = build("dien", MIMN_SPEC, aux_weight=2.0).train()
    batch = make_batch(lengths=[3, 1, L, 6])
    with torch.no_grad():
        base = m(batch)[1]
        # padding negatives are ignored, and more front padding (more padded slots) does not dilute the mean
        noisy = dict(batch, neg_item=torch.where(batch["hist_item"] > 0, batch["neg_item"], 5))
        assert torch.equal(m(noisy)[1], base)
        torch.testing.assert_close(m(widen(batch, 20))[1], base)
        # by hand: mean over the 2 + 0 + 23 + 5 real slots of BCE(pos, 1) + BCE(neg, 0), times the weight
        x = m.emb.seq(batch)
        out, _, _ = run_rnn(m.gru, x, batch["hist_len"].long())
        neg = m.emb(batch["neg_item"], batch["neg_cate"], batch["hist_behavior"])
        terms = []
        for b, n in enumerate(batch["hist_len"].tolist()):
            for t in range(L - n, L - 1):
                lp = m.aux(torch.cat([out[b, t], x[b, t + 1]])[None])[0, 0]
                ln = m.aux(torch.cat([out[b, t], neg[b, t + 1]])[None])[0, 0]
                terms.append(F.softplus(-lp) + F.softplus(ln))
        assert len(terms) == 2 + 0 + (L - 1) + 5
        torch.testing.assert_close(base, 2.0 * torch.stack(terms).mean())


def test_dien_candidate_changes_the_augru_state():
    m = build("dien").eval()
    batch = make_batch(lengths=[10, 20, 5, L, 3, 8])
    with torch.no_grad():
        a = m(batch)[0]
        m.head.net[0].gamma[: 3 * m.emb.dim] = 0  # the head now sees h'_T only
        b1 = m(batch)[0]
        b2 = m(dict(batch, item=batch["item"] % 60 + 1))[0]
    assert not torch.allclose(a, b1)
    # the candidate reaches h'_T through the attention-gated AUGRU (at init the effect is small, but not nil)
    assert not torch.equal(b1, b2)


RECBOLE_DIEN = {**baselines.RECBOLE_DIEN, "use_behavior": False}


def test_dien_recbole_options_read_the_state_and_candidate_with_scaled_unprojected_attention():
    """``head_input=state`` feeds [h'_T; e_a] (RecBole 1.2.1's head without e_u); ``att_scale`` divides the scores by
    sqrt(h) before the softmax, the same as shrinking the score layer's weights by sqrt(h)."""
    m = build("dien", MIMN_SPEC, **RECBOLE_DIEN).eval()
    assert m.att.proj is None and m.head.net[0].in_features == m.emb.dim + m.p.hidden
    batch = make_batch(lengths=[0, 3, L, 7, 1, 12])
    with torch.no_grad():
        logit = m(batch)[0]
        n, tgt = batch["hist_len"].long(), m.emb.target(batch)
        out, _, _ = run_rnn(m.gru, m.emb.seq(batch), n)
        mask = torch.arange(L)[None, :] >= (L - n)[:, None]
        s = m.att.scores(tgt, out, mask) / m.p.hidden ** 0.5
        a = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
        hn = augru(m.augru, out, a, mask, m.p.augru)
        torch.testing.assert_close(logit, m.head(torch.cat([hn, tgt], -1)))
        unscaled = build("dien", MIMN_SPEC, **{**RECBOLE_DIEN, "att_scale": False}).eval()
        unscaled.load_state_dict(m.state_dict())
        assert not torch.allclose(unscaled(batch)[0], logit)
        unscaled.att.mlp[-1].weight /= m.p.hidden ** 0.5
        torch.testing.assert_close(unscaled(batch)[0], logit)


def test_dien_aux_act_none_is_a_linear_auxiliary_net_and_silu_is_recboles_dice():
    m = build("dien", MIMN_SPEC, **RECBOLE_DIEN)
    u, v = torch.randn(5, m.p.hidden + m.emb.dim), torch.randn(5, m.p.hidden + m.emb.dim)
    with torch.no_grad():
        torch.testing.assert_close(m.aux((u + v) / 2), (m.aux(u) + m.aux(v)) / 2)
        sig = build("dien", MIMN_SPEC, **{**RECBOLE_DIEN, "aux_act": "sigmoid"})
        assert not torch.allclose(sig.aux((u + v) / 2), (sig.aux(u) + sig.aux(v)) / 2)
    # RecBole 1.2.1 Dice: alpha (a fixed zeros tensor) * (1 - sigmoid(s)) * s + sigmoid(s) * s
    s = torch.randn(7, 80)
    acts = [mod for mod in m.head.net if not isinstance(mod, (torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.Dropout))]
    torch.testing.assert_close(acts[0](s), 0 * (1 - torch.sigmoid(s)) * s + torch.sigmoid(s) * s)


def test_dien_recbole_options_train_every_parameter():
    m = build("dien", MIMN_SPEC, **RECBOLE_DIEN).train()
    logit, extra = m(make_batch(lengths=[0, 3, L, 7, 1, 12]))
    (F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit)) + extra).backward()
    dead = [k for k, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


# ------------------------------------------------------------------------------------------------ DIN


def test_din_ignores_the_order_of_the_history_and_att_norm_matters():
    batch = make_batch(lengths=[L, 10, 3, 0, 17, 1])
    perm = dict(batch)
    for k in ("hist_item", "hist_cate", "hist_behavior"):  # reverse each row's real part (still front-padded)
        rows = zip(batch[k], batch["hist_len"].tolist())
        perm[k] = torch.stack([torch.cat([r[: L - n], r[L - n:].flip(0)]) for r, n in rows])
    assert not torch.equal(perm["hist_item"], batch["hist_item"])
    for norm in ("softmax", "none"):
        m = build("din", att_norm=norm).eval()
        with torch.no_grad():
            torch.testing.assert_close(m(perm)[0], m(batch)[0], rtol=1e-5, atol=1e-5)
    soft, raw = build("din").eval(), build("din", att_norm="none").eval()
    with torch.no_grad():
        assert not torch.allclose(soft(batch)[0], raw(batch)[0])


def test_din_head_activation_is_a_parameter():
    assert any(type(mod).__name__ == "Dice" for mod in build("din").modules())
    assert any(isinstance(mod, torch.nn.PReLU) for mod in build("din", head_act="prelu").head.modules())


# ---------------------------------------------------------------------------------------------- Caser


def test_caser_output_follows_items_inside_the_window_and_ignores_older_ones():
    m = build("caser", window=5, heights=(1, 2, 3)).eval()
    batch = make_batch(lengths=[L, 12, 8, 9, L, 6])
    with torch.no_grad():
        base = m(batch)[0]
        inside = dict(batch, hist_item=batch["hist_item"].clone())
        inside["hist_item"][0, L - 3] = inside["hist_item"][0, L - 3] % 60 + 1
        outside = dict(batch, hist_item=batch["hist_item"].clone())
        outside["hist_item"][:, : L - 5] = torch.where(outside["hist_item"][:, : L - 5] > 0, 7, 0)
        changed = m(inside)[0]
        same = m(outside)[0]
    assert not torch.isclose(changed[0], base[0])
    torch.testing.assert_close(changed[1:], base[1:])
    torch.testing.assert_close(same, base)


def test_caser_heights_and_default_window():
    m = build("caser")
    assert m.window == L and [c.kernel_size[0] for c in m.h_convs] == [8]
    m = build("caser", heights=(1, 2, 3, 4), window=4, append_target=True)
    assert [c.kernel_size[0] for c in m.h_convs] == [1, 2, 3, 4] and m.v_weight.shape[1] == 5
    with pytest.raises(ValueError, match="exceeds the window"):
        build("caser", heights=(9,), window=8)


def test_caser_all_padding_windows_do_not_enter_the_max_pool():
    m = build("caser", heights=(2,), window=6).eval()
    with torch.no_grad():
        m.h_convs[0].bias.fill_(100.0)  # an all-padding window would output exactly the bias and win the max
        batch = make_batch(lengths=[1, 3])
        x, _, _ = m._image(batch)
        o = m.h_convs[0](x.unsqueeze(1)).squeeze(-1)  # [B, n_h, 5]
    # row 0 has one real event: only the last window (padding + it) counts
    assert not torch.allclose(o[0, :, :-1].amax(-1), o[0, :, -1])
    feats = []
    m.head.register_forward_hook(lambda mod, inp, out: feats.append(inp[0]))
    with torch.no_grad():
        m(batch)
    d = m.emb.dim
    torch.testing.assert_close(feats[0][0, d : d + m.p.n_h], o[0, :, -1])
    torch.testing.assert_close(feats[0][1, d : d + m.p.n_h], o[1, :, -3:].amax(-1))


# ------------------------------------------------------------------------------ lengths are respected


VARIANTS = [
    ("dnn", {}), ("gru4rec", {}), ("svdpp", {}), ("svdpp", {"norm": "l1_matrix", "append_target": True}),
    ("lstm", {}), ("lstm", {"append_target": True}), ("arnn", {}), ("arnn", {"append_target": True}),
    ("din", {}), ("din", {"att_norm": "none"}), ("dien", {}), ("dien", {"append_target": True}),
    ("dien", {"augru": "official", "att_norm": "sigmoid"}), ("dien", RECBOLE_DIEN), ("caser", {}),
    ("caser", {"append_target": True, "h_act": "relu"}),
]


@pytest.mark.parametrize("name,overrides", VARIANTS)
def test_a_wider_layout_with_more_front_padding_gives_the_same_logits(name, overrides):
    m = build(name, **overrides).eval()
    batch = make_batch(b=6, lengths=[0, 1, 4, 11, L, L - 2])
    with torch.no_grad():
        narrow = m(batch)[0]
        wide = m(widen(batch, 20))[0]
    torch.testing.assert_close(wide, narrow, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(narrow).all()


@pytest.mark.parametrize("name", ["svdpp", "lstm", "arnn", "din", "dien", "caser"])
def test_the_candidate_moves_the_logit(name):
    m = build(name).eval()
    batch = make_batch(lengths=[5, 9, L, 2, 7, 3])
    other = dict(batch, item=batch["item"] % 60 + 1)
    with torch.no_grad():
        assert not torch.allclose(m(batch)[0], m(other)[0])


@pytest.mark.parametrize("name,overrides", [("dien", {}), ("dien", {"augru": "official", "aux_weight": 1.0}),
                                            ("caser", {}), ("arnn", {}), ("din", {})])
def test_models_run_under_bf16_autocast(name, overrides):
    """``lsdata train --amp`` runs the forward under autocast; the AUGRU loop must keep its dtypes consistent."""
    m = build(name, MIMN_SPEC, **overrides).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logit, extra = m(make_batch(lengths=[0, 3, L, 7]))
    (logit.float().sum() + extra.float()).backward()
    assert torch.isfinite(logit.float()).all() and torch.isfinite(extra)


# ------------------------------------------------------------------- pooling, initialisation, head norm


def repeat_history(batch: dict[str, torch.Tensor], half: int) -> dict[str, torch.Tensor]:
    """Each row's last ``half`` events twice in a row (the sequence doubled), in a ``2 * half`` wide layout."""
    out = dict(batch)
    for k in ("hist_item", "hist_cate", "hist_behavior"):
        out[k] = torch.cat([batch[k][:, -half:], batch[k][:, -half:]], dim=1)
    out["hist_len"] = 2 * batch["hist_len"].clamp(max=half)
    return out


@pytest.mark.parametrize("name", ["dnn", "din", "mimn"])
def test_mean_pooling_sees_a_doubled_history_like_the_original_and_sum_does_not(name):
    spec = MIMN_SPEC if name == "mimn" else SPEC
    batch = make_batch(b=4, lengths=[L, L, L, L])
    doubled = repeat_history(batch, L)
    for pooling, same in (("mean", True), ("sum", False)):
        m = build(name, spec, pooling=pooling, dropout=0.0).eval()
        pooled = {}

        def grab(_mod, inp, _out, key):
            pooled[key] = inp[0].detach()

        for key, b in (("once", batch), ("twice", doubled)):
            h = m.head.register_forward_hook(lambda mod, i, o, key=key: grab(mod, i, o, key))
            with torch.no_grad():
                m(b)
            h.remove()
        d = m.emb.dim
        # the head input starts [e_a; pool_t e_t; ...]: compare the pooled block
        close = torch.allclose(pooled["once"][:, d : 2 * d], pooled["twice"][:, d : 2 * d], atol=1e-6)
        assert close == same, f"{name} pooling={pooling}"


def test_glorot_embedding_init_is_bounded_per_table_or_by_the_shared_table_and_pads_with_zeros():
    for init in ("glorot", "glorot_shared"):
        m = build("dnn", emb_init=init)
        tables = [m.emb.item, m.emb.cate, m.emb.behavior]
        total = sum(t.num_embeddings for t in tables)
        for t in tables:
            rows = t.num_embeddings if init == "glorot" else total
            limit = (6.0 / (rows + m.p.emb_dim)) ** 0.5
            w = t.weight.detach()
            assert w[1:].abs().max() <= limit and w[1:].abs().max() > 0.5 * limit, (init, t)
            assert not w[0].any()
    wide = build("dnn", emb_init="normal", emb_std=0.5)
    w = wide.emb.item.weight.detach()
    assert 0.4 < float(w[1:].std()) < 0.6 and not w[0].any()


def test_head_norm_batch_uses_training_mode_batch_norm_and_affine_does_not():
    m = build("din", head_norm="batch")
    bns = [x for x in m.head.net if isinstance(x, torch.nn.BatchNorm1d)]
    assert len(bns) == len(m.p.head)
    batch = make_batch(b=8, lengths=[3, 5, 7, 9, 11, 13, 15, L])
    m.train()
    m(batch)
    assert all(int(b.num_batches_tracked) == 1 for b in bns)
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in build("din").head.net)


def test_attention_scores_on_real_positions_only_equal_the_dense_scores_there():
    from lsdata.models.blocks import DINAttention

    torch.manual_seed(0)
    att = DINAttention(8, 6, (10, 5), "sigmoid", query_proj=True)
    q, keys = torch.randn(5, 8), torch.randn(5, 12, 6)
    mask = torch.arange(12)[None, :] >= torch.tensor([12, 11, 9, 4, 10])[:, None]  # mostly padding: ragged path
    ragged, dense = att.scores(q, keys, mask), att.scores(q, keys)
    torch.testing.assert_close(ragged[mask], dense[mask], rtol=1e-6, atol=1e-6)
    assert not ragged[~mask].any()
    pooled, w = att(q, keys, mask)
    dense_w = torch.softmax(dense.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    torch.testing.assert_close(w, dense_w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("onednn,limit", [(False, 1 << 25), (False, 0), (True, 1 << 25)],
                         ids=["window-matmul", "conv1d-over-limit", "conv1d-onednn"])
@pytest.mark.parametrize("h_act", ["none", "relu"])
def test_caser_grouped_conv1d_equals_one_conv2d_per_height(h_act, onednn, limit, monkeypatch):
    from lsdata.models import blocks
    from lsdata.models.blocks import caser_horizontal

    monkeypatch.setattr(blocks, "WINDOW_MATMUL_LIMIT", limit)  # every way of computing the windows
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn and torch.backends.mkldnn.is_available())

    m = build("caser", window=10, heights=(3, 1, 7, 2, 10), h_act=h_act).eval()
    batch = make_batch(b=6, lengths=[0, 1, 4, 9, L, 10])
    with torch.no_grad():
        x, n, _ = m._image(batch)
        want = []
        for k, conv in zip(m.p.heights, m.h_convs):
            o = conv(x.unsqueeze(1)).squeeze(-1)
            o = torch.relu(o) if h_act == "relu" else o
            real = torch.arange(k - 1, x.shape[1])[None, :] >= (x.shape[1] - n)[:, None]
            o = o.masked_fill(~real[:, None, :], float("-inf")).amax(-1)
            want.append(torch.where((n > 0)[:, None], o, torch.zeros_like(o)))
        for group in (2, 3, 25):  # several groups of uneven sizes, and one group
            got = caser_horizontal(x, n, m.h_convs, relu=h_act == "relu", group=group)
            torch.testing.assert_close(got, torch.cat(want, -1), rtol=1e-5, atol=1e-5)
