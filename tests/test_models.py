"""Every registered model: output shape, gradients reach every parameter, it can overfit one batch, and
(for incremental models) folding events one at a time gives the full forward's scores - on real data."""

from __future__ import annotations

import pytest
import torch

from lsdata import models
from lsdata.loader import LayoutDataset, layout_file
from lsdata.models.base import DataSpec

ALL = models.names()
NAMES = [n for n in ALL if getattr(models.get(n), "task", "ctr") == "ctr"]  # next-item models: tests/test_nextitem.py


def _batch(root, layout, n=16, split="train"):
    ds = LayoutDataset(layout_file(root, layout, split), layout)
    return ds.__getitems__(list(range(min(n, len(ds)))))


def _build(name, root, **overrides):
    cls = models.get(name)
    spec = DataSpec.from_dataset(root, cls.layout)
    torch.manual_seed(0)
    return cls(spec, cls.make_params(spec.dataset, overrides)), cls


def test_registry_matches_the_names_the_cli_lists_without_importing_torch():
    assert sorted(models.MODEL_NAMES) == ALL


def test_registering_a_duplicate_name_is_an_error():
    cls = models.get(NAMES[0])
    with pytest.raises(ValueError, match="duplicate model name"):
        models.register(type("Again", (cls,), {"name": cls.name}))


@pytest.mark.parametrize("name", NAMES)
def test_model_gives_one_finite_logit_per_sample_and_gradients_reach_every_parameter(name, taobao_layouts):
    model, cls = _build(name, taobao_layouts)
    batch = _batch(taobao_layouts, cls.layout)
    logit, extra = model(batch)
    assert logit.shape == (batch["label"].shape[0],)
    assert torch.isfinite(logit).all() and torch.isfinite(extra)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, batch["label"]) + extra
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", NAMES)
def test_model_overfits_one_small_batch(name, taobao_layouts):
    model, cls = _build(name, taobao_layouts, dropout=0.0)
    batch = _batch(taobao_layouts, cls.layout, n=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    first = None
    for _ in range(60):
        logit, extra = model(batch)
        loss = bce(logit, batch["label"])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        (loss + extra).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = bce(model(batch)[0], batch["label"]).item()
    assert final < 0.5 * first, (first, final)


INCREMENTAL = [n for n in NAMES if models.get(n).incremental]


@pytest.mark.parametrize("name", INCREMENTAL)
def test_folding_events_one_at_a_time_equals_the_full_forward(name, taobao_layouts):
    model, cls = _build(name, taobao_layouts)
    model.eval()
    batch = _batch(taobao_layouts, cls.layout, n=12, split="test")
    with torch.no_grad():
        full, _ = model(batch)
        state = model.init_state(batch["label"].shape[0])
        for t in range(batch["hist_item"].shape[1]):
            ev = {k: batch[f"hist_{k}"][:, t] for k in ("item", "cate", "behavior")}
            state = model.update(state, ev)
        folded = model.score(state, {"item": batch["item"], "cate": batch["cate"]})
    assert batch["hist_len"].max() > 50  # real, long histories
    torch.testing.assert_close(folded, full, rtol=1e-4, atol=1e-4)
