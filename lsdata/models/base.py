"""What every model shares: the data spec it is built for, its parameters, and the CTR model interface.

Choices made once for the whole zoo (each model's docstring says where it follows or departs from its
reference code):

* **Ids and fields.** A behaviour is embedded field-wise and concatenated: ``[E_item; E_cate; E_behavior]``
  (``D_e = 3 d``; fields switch off with ``use_cate``/``use_behavior``). Each field has its own table;
  id 0 is padding and embeds to an exact zero vector (``padding_idx``), so the reference's id-0 collision
  (Q-H6) cannot happen. The candidate has behaviour id :data:`CANDIDATE_BEHAVIOR` (the reference's
  "unknown" id, allocated properly, Q-H5). User ids are **not** embedded: under the cut-time split a test
  user never occurs in training, so a user embedding could only carry noise (the MIMN repo does the same).
* **History excludes the candidate** (streaming-correct, models.md §20). ``append_target=True`` reproduces
  the reference's "candidate as the last input step" for the sequence models (§1.1).
* **"BatchNorm" in the heads is the reference's inference-mode BN**, i.e. a learned per-feature affine
  (:class:`lsdata.models.blocks.Affine`), identical in training and evaluation.
* **One logit per sample**, loss = mean BCE with logits + the model's own regularisers (the MIMN/DIEN
  repos' 2-way softmax is the same model; their auxiliary weights are rescaled by 2 where reproduced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lsdata.defaults import Behavior

#: behaviour id of the candidate row (one past the last real behaviour code)
CANDIDATE_BEHAVIOR = max(Behavior) + 1
N_BEHAVIOR_IDS = CANDIDATE_BEHAVIOR + 1


@dataclass(frozen=True)
class DataSpec:
    """Sizes a model is built for: vocabularies (ids 1..n, 0 = padding) and the layout's widths."""

    dataset: str
    layout: str
    n_users: int
    n_items: int
    n_cates: int
    widths: dict[str, int] = field(default_factory=dict)
    item_init: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dataset(cls, root: str | Path, layout: str) -> DataSpec:
        from lsdata.dataset import open_dataset
        from lsdata.io import InputError, read_json

        ds = open_dataset(root)
        rep = ds.layout_dir(layout) / "report.json"
        if not rep.exists():
            raise InputError(f"{ds.root}: no {layout!r} layout (run `lsdata layout {ds.root} {layout}` first)")
        widths = read_json(rep)["widths"]
        init = ds.root / "item_init.npy"
        m = ds.manifest
        return cls(m.dataset, layout, m.users, m.items, m.cates, dict(widths),
                   np.load(init) if init.exists() else None)


class ModelParams(BaseModel):
    """Parameters common to all models (a model's own ``Params`` subclass adds and re-defaults fields)."""

    model_config = ConfigDict(extra="forbid")

    emb_dim: int = Field(16, ge=1, description="embedding size per id field (d)")
    hidden: int = Field(32, ge=1, description="RNN / memory hidden size (h)")
    head: tuple[int, ...] = Field((200, 80), description="hidden sizes of the prediction MLP")
    head_act: str = Field("tanh", description="head activation: tanh | relu | elu | prelu | sigmoid | dice | silu "
                                               "(RecBole 1.2.1's `Dice`, see blocks.activation) | none")
    pooling: Literal["mean", "sum"] = Field(
        "mean", description="pooling of the history's embeddings where a model feeds it to its head (DNN, DIN, DIEN, "
        "MIMN): mean (default, fixed on purpose) or sum (the reference repos). A sum grows with the history length, "
        "and under a cut-time split test histories are longer than training ones (lifelong sequences grow), so "
        "the head meets inputs out of its training range: DIN test AUC 0.56 (sum, N(0, 0.05) embeddings) vs 0.85 "
        "(mean, shared-table Glorot) on the RecBole comparison data (benchmarks/RESULTS.md)")
    head_norm: Literal["affine", "batch"] = Field(
        "affine", description="head normalisation: affine = the reference's inference-mode batch norm on the head "
        "input (a learnable per-feature affine); batch = training-mode BatchNorm1d after each hidden Linear "
        "(running statistics at evaluation), as RecBole's MLPLayers(bn=True)")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout after each head layer (reference keep 0.8)")
    use_cate: bool = Field(True, description="embed the category field")
    use_behavior: bool = Field(True, description="embed the behaviour-type field")
    append_target: bool = Field(False, description="feed the candidate as the last sequence step (reference behaviour)")
    emb_init: Literal["glorot", "glorot_shared", "normal"] = Field(
        "glorot", description="embedding init: glorot = Glorot-uniform per table, U(-a, a) with a = sqrt(6 / (rows + "
        "d)) (small for large item vocabularies, larger for a few categories; Keras/RecBole-style per-table init); "
        "glorot_shared = the reference repos' one shared TF table (every field gets the item-vocabulary scale); "
        "normal = N(0, emb_std)")
    emb_std: float = Field(0.05, gt=0.0, description="standard deviation of emb_init=normal")


class CTRModel(nn.Module):
    """A click-through model: ``forward(batch) -> (logit [B], extra_loss scalar)``.

    Class attributes: ``name`` (registry key), ``layout`` (the layout it trains on by default),
    ``Params`` (its parameter model), ``train_defaults`` (reference lr / gradient clipping / batch size),
    ``presets`` (per-dataset parameter overrides from the reference configs).
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = "hpmn"
    Params: ClassVar[type[ModelParams]] = ModelParams
    train_defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: True when the model implements init_state / update / score (per-event user state)
    incremental: ClassVar[bool] = False

    def __init__(self, spec: DataSpec, params: ModelParams):
        super().__init__()
        self.spec, self.p = spec, params

    @classmethod
    def make_params(cls, dataset: str, overrides: dict[str, Any] | None = None) -> ModelParams:
        """Params = class defaults, then the dataset preset, then ``overrides`` (validated)."""
        merged = {**cls.presets.get(dataset, {}), **(overrides or {})}
        return cls.Params.model_validate(merged)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    # -- per-event user state (models with ``incremental = True``) ------------------------------------
    def init_state(self, batch_size: int) -> Any:  # pragma: no cover - interface
        """The state of ``batch_size`` users who have no history yet."""
        raise NotImplementedError

    def update(self, state: Any, event: dict[str, Tensor]) -> Any:  # pragma: no cover - interface
        """Fold one event per user (``item``, ``cate``, ``behavior`` ``[B]``) into the state."""
        raise NotImplementedError

    def score(self, state: Any, cand: dict[str, Tensor]) -> Tensor:  # pragma: no cover - interface
        """Logits of candidates (``item``, ``cate`` ``[B]``) given the state; never changes the state."""
        raise NotImplementedError


def zero(ref: Tensor) -> Tensor:
    """A scalar 0 on ``ref``'s device (the extra loss of models without regularisers)."""
    return torch.zeros((), device=ref.device, dtype=torch.float32)
