"""RUM (feature- and item-level), SHAN and SAM: the properties their equations promise, on small synthetic batches."""

from __future__ import annotations

import pytest
import torch

from lsdata.models.base import DataSpec
from lsdata.models.rum import RUM, RUMItem
from lsdata.models.sam import SAM, DualQueryScorer
from lsdata.models.shan import SHAN

N_ITEMS, N_CATES, N_USERS = 60, 7, 30


def spec(layout="hpmn", **widths):
    return DataSpec("taobao", layout, N_USERS, N_ITEMS, N_CATES, widths or {"hist": 12, "side": 4})


def build(cls, sp, **overrides):
    torch.manual_seed(0)
    return cls(sp, cls.make_params(sp.dataset, overrides))


def seq(gen, b, width, lengths, prefix):
    """Front-padded random ``{prefix}_item/cate/behavior`` of real length ``lengths``."""
    mask = torch.arange(width)[None, :] >= (width - lengths)[:, None]
    item = torch.randint(1, N_ITEMS + 1, (b, width), generator=gen) * mask
    return {f"{prefix}_item": item.int(), f"{prefix}_cate": ((item % N_CATES) + 1).int() * mask,
            f"{prefix}_behavior": torch.randint(1, 5, (b, width), generator=gen).int() * mask, f"{prefix}_len": lengths.int()}


def hist_batch(b=6, width=12, lengths=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = lengths if lengths is not None else torch.randint(0, width + 1, (b,), generator=gen)
    item = torch.randint(1, N_ITEMS + 1, (b,), generator=gen)
    return {**seq(gen, b, width, lengths, "hist"), "item": item.int(), "cate": ((item % N_CATES) + 1).int(),
            "label": (torch.arange(b) % 2).float()}


def shan_batch(b=6, long=8, short=4, side_short=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n_short = torch.randint(1, short + 1, (b,), generator=gen)
    n_long = torch.where(n_short == short, torch.randint(0, long + 1, (b,), generator=gen), 0)
    item = torch.randint(1, N_ITEMS + 1, (b,), generator=gen)
    side_len = torch.randint(0, side_short + 1, (b,), generator=gen)
    side_mask = torch.arange(side_short)[None, :] >= (side_short - side_len)[:, None]
    return {**seq(gen, b, long, n_long, "long"), **seq(gen, b, short, n_short, "short"),
            "side_short_user": (torch.randint(1, N_USERS + 1, (b, side_short), generator=gen) * side_mask).int(),
            "side_short_behavior": (torch.randint(1, 5, (b, side_short), generator=gen) * side_mask).int(),
            "side_short_len": side_len.int(), "item": item.int(), "cate": ((item % N_CATES) + 1).int(),
            "label": (torch.arange(b) % 2).float()}


SHAN_SPEC = spec("shan", long=8, short=4, side_long=2, side_short=3)


def assert_every_parameter_gets_a_gradient(model, batch):
    logit, extra = model(batch)
    (torch.nn.functional.binary_cross_entropy_with_logits(logit, batch["label"]) + extra).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def fold(model, batch):
    state = model.init_state(batch["label"].shape[0])
    for t in range(batch["hist_item"].shape[1]):
        state = model.update(state, {k: batch[f"hist_{k}"][:, t] for k in ("item", "cate", "behavior")})
    return state


def events(batch, t):
    return {k: batch[f"hist_{k}"][:, t] for k in ("item", "cate", "behavior")}


# -- RUM (feature level) ----------------------------------------------------------------------------------

def test_rum_reading_the_memory_with_a_candidate_does_not_change_it():
    model = build(RUM, spec()).eval()
    batch = hist_batch(lengths=torch.tensor([12, 5, 0, 9, 1, 12]))
    with torch.no_grad():
        state = fold(model, batch)
        before = state.clone()
        cand = {"item": batch["item"], "cate": batch["cate"]}
        first = model.score(state, cand)
        model.score(state, {"item": batch["item"] % N_ITEMS + 1, "cate": batch["cate"]})  # another candidate
        again = model.score(state, cand)
    assert torch.equal(state, before)
    assert torch.equal(first, again)
    assert state[2].abs().sum() == 0 and state[0].abs().sum() > 0  # no history -> empty memory


def test_rum_erase_add_with_a_one_hot_address_changes_only_that_slot():
    model = build(RUM, spec())
    b, k, h = 4, model.p.slots, model.p.hidden
    mem = torch.randn(b, k, h)
    px = torch.randn(b, 3 * h)
    z = torch.zeros(b, k, 1)
    z[:, 2] = 1.0
    with torch.no_grad():
        new = model.write(mem, z, px)
        gates = px + mem[:, 2] @ model.w_o.weight.t()  # o = S_2 under a one-hot read
        e, g, a = gates.chunk(3, dim=-1)
        expect = mem[:, 2] * (1 - torch.sigmoid(e)) + torch.sigmoid(g) * torch.tanh(a)
    others = [i for i in range(k) if i != 2]
    assert torch.equal(new[:, others], mem[:, others])
    assert not torch.allclose(new[:, 2], mem[:, 2])
    torch.testing.assert_close(new[:, 2], expect)


def test_rum_padding_is_a_no_op_and_forward_equals_the_fold():
    model = build(RUM, spec()).eval()
    batch = hist_batch(lengths=torch.tensor([12, 5, 0, 9, 1, 3]))
    wide = {**batch}
    for k in ("item", "cate", "behavior"):  # the same histories with 8 more padding columns in front
        wide[f"hist_{k}"] = torch.cat([torch.zeros(6, 8, dtype=torch.int32), batch[f"hist_{k}"]], dim=1)
    with torch.no_grad():
        full, _ = model(batch)
        torch.testing.assert_close(model(wide)[0], full)
        folded = model.score(fold(model, wide), {"item": batch["item"], "cate": batch["cate"]})
    torch.testing.assert_close(folded, full)


def test_rum_slot_weights_are_the_din_mlp_over_the_keys_and_the_key_penalty_is_the_reference_formula():
    model = build(RUM, spec(), slots=4)
    x = torch.randn(3, 7, model.emb.dim)
    z = model.slot_weights(x)
    torch.testing.assert_close(z, model.address.reference(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.sum(-1), torch.ones(3, 7))
    keys = model.address.keys
    off = sum(keys[i] @ keys[j] for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(model.key_penalty(), 3e-6 * off / (0.5 * (keys**2).sum()))


def test_rum_presets_follow_the_reference():
    keys = {"emb_dim", "slots", "hidden"}
    assert RUM.make_params("amazon").model_dump(include=keys) == {"emb_dim": 8, "slots": 3, "hidden": 16}
    assert RUM.make_params("taobao").model_dump(include=keys) == {"emb_dim": 18, "slots": 5, "hidden": 16}
    assert RUM.train_defaults["clip_value"] == 1.0


# -- RUM (item level) -------------------------------------------------------------------------------------

def test_rum_item_fifo_memory_holds_the_last_k_items_after_n_events():
    model = build(RUMItem, spec(), slots=3).eval()
    batch = hist_batch(b=5, lengths=torch.tensor([12, 7, 3, 1, 0]))
    hist = batch["hist_item"]
    with torch.no_grad():
        state = model.init_state(5)
        for t in range(12):
            state = model.update(state, events(batch, t))
            for row in range(5):
                real = hist[row, : t + 1][hist[row, : t + 1] > 0].tolist()
                last = real[-3:]
                assert state[0]["item"][row].tolist() == [0] * (3 - len(last)) + last
                assert int(state[1][row]) == len(last)
        folded = model.score(state, {"item": batch["item"], "cate": batch["cate"]})
        torch.testing.assert_close(folded, model(batch)[0])
    # only the last K events matter
    older = {**batch, "hist_item": batch["hist_item"].clone()}
    older["hist_item"][0, :9] = older["hist_item"][0, :9] % N_ITEMS + 1
    with torch.no_grad():
        assert torch.equal(model(older)[0], model(batch)[0])


@pytest.mark.parametrize("overrides", [{"variant": "din"}, {"variant": "din", "append_target": True}])
def test_rum_item_din_variant_trains_and_folds(overrides):
    model = build(RUMItem, spec(), **overrides)
    batch = hist_batch(lengths=torch.tensor([12, 5, 0, 9, 1, 3]))
    assert_every_parameter_gets_a_gradient(model, batch)
    model.eval()
    with torch.no_grad():
        folded = model.score(fold(model, batch), {"item": batch["item"], "cate": batch["cate"]})
        torch.testing.assert_close(folded, model(batch)[0])


# -- SHAN ------------------------------------------------------------------------------------------------

def _perturb_long(batch):
    out = {**batch, "long_item": batch["long_item"].clone(), "long_behavior": batch["long_behavior"].clone()}
    real = out["long_item"] > 0
    out["long_item"][real] = out["long_item"][real] % N_ITEMS + 1
    out["long_behavior"][real] = out["long_behavior"][real] % 4 + 1
    return out


def test_shan_reference_head_ignores_the_long_part_and_the_default_uses_it():
    batch = shan_batch()
    assert (batch["long_len"] > 0).any()
    other = _perturb_long(batch)
    head = build(SHAN, SHAN_SPEC, long_term=False).eval()
    with torch.no_grad():
        assert torch.equal(head(batch)[0], head(other)[0])
    default = build(SHAN, SHAN_SPEC).eval()
    with torch.no_grad():
        a, b = default(batch)[0], default(other)[0]
    changed = ~torch.isclose(a, b, rtol=0, atol=1e-7)
    assert torch.equal(changed, batch["long_len"] > 0)  # exactly the rows that have a long part


@pytest.mark.parametrize("overrides", [{}, {"long_term": False}, {"user_query": "global"}, {"dual": True},
                                       {"append_target": True, "dual": True, "user_query": "global"}])
def test_shan_every_option_trains_every_parameter_it_creates(overrides):
    assert_every_parameter_gets_a_gradient(build(SHAN, SHAN_SPEC, **overrides), shan_batch())


def test_shan_dropout_is_off_at_evaluation_unless_the_reference_bug_is_asked_for():
    batch = shan_batch()
    with torch.no_grad():
        fixed = build(SHAN, SHAN_SPEC, dropout=0.5).eval()
        assert torch.equal(fixed(batch)[0], fixed(batch)[0])
        buggy = build(SHAN, SHAN_SPEC, dropout=0.5, dropout_at_eval=True).eval()
        assert not torch.equal(buggy(batch)[0], buggy(batch)[0])


def test_shan_dual_branch_reads_the_item_side_and_is_off_by_default():
    batch = shan_batch()
    other = {**batch, "side_short_user": torch.where(batch["side_short_user"] > 0, batch["side_short_user"] % N_USERS + 1, 0)}
    with torch.no_grad():
        plain = build(SHAN, SHAN_SPEC).eval()
        assert torch.equal(plain(batch)[0], plain(other)[0])
        dual = build(SHAN, SHAN_SPEC, dual=True).eval()
        assert not torch.equal(dual(batch)[0], dual(other)[0])


# -- SAM -------------------------------------------------------------------------------------------------

def test_sam_sees_the_far_end_of_a_1000_event_history_in_one_attention_pass_per_memory_pass():
    width = 1000
    model = build(SAM, spec(hist=width, side=4), passes=3).eval()
    batch = hist_batch(b=4, width=width, lengths=torch.tensor([1000, 1000, 600, 0]))
    calls = []
    hooks = [s.register_forward_hook(lambda mod, args, out: calls.append((args[2].shape, out.shape))) for s in model.scorers]
    with torch.no_grad():
        base, _ = model(batch)
    for h in hooks:
        h.remove()
    assert base.shape == (4,) and torch.isfinite(base).all()
    # one scoring pass over all L positions per memory pass, no more
    assert calls == [(torch.Size([4, width, model.emb.dim]), torch.Size([4, width]))] * 3
    far = {**batch, "hist_item": batch["hist_item"].clone()}
    far["hist_item"][:, 0] = torch.where(far["hist_item"][:, 0] > 0, far["hist_item"][:, 0] % N_ITEMS + 1, 0)
    with torch.no_grad():
        changed = ~torch.isclose(model(far)[0], base, rtol=0, atol=1e-9)
    assert changed.tolist() == [True, True, False, False]  # rows whose position 0 is a real event


def test_sam_scorer_equals_the_explicit_concatenation_and_padding_is_ignored():
    scorer = DualQueryScorer(6, 8, "sigmoid")
    v, m, x = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 11, 6)
    torch.testing.assert_close(scorer(v, m, x), scorer.reference(v, m, x))
    model = build(SAM, spec()).eval()
    batch = hist_batch(lengths=torch.tensor([12, 5, 0, 9, 1, 3]))
    wide = {**batch}
    for k in ("item", "cate", "behavior"):
        wide[f"hist_{k}"] = torch.cat([torch.zeros(6, 8, dtype=torch.int32), batch[f"hist_{k}"]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(wide)[0], model(batch)[0])


@pytest.mark.parametrize("overrides", [{"norm": "sigmoid"}, {"iterative_query": False}, {"me_steps": 0, "passes": 1},
                                       {"att_fc": True}, {"append_target": True, "att_fc": True}])
def test_sam_every_option_trains_every_parameter_it_creates(overrides):
    batch = hist_batch(lengths=torch.tensor([12, 5, 0, 9, 1, 12]))
    assert_every_parameter_gets_a_gradient(build(SAM, spec(), **overrides), batch)


def test_sam_iterative_query_moves_the_memory_query():
    batch = hist_batch(lengths=torch.tensor([12, 5, 7, 9, 1, 12]))
    seen = {}
    for iterative in (True, False):
        model = build(SAM, spec(), iterative_query=iterative).eval()
        queries = []
        hook = model.scorers[1].register_forward_hook(lambda mod, args, out, q=queries: q.append((args[0], args[1])))
        with torch.no_grad():
            model(batch)
        hook.remove()
        seen[iterative] = queries[0]
    v, m = seen[False]
    assert torch.equal(v, m)  # code A's 'stk' typo: the memory query stays the target
    v, m = seen[True]
    assert not torch.allclose(v, m)
