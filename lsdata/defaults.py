"""Every default of lsdata, in one place (the RecBole ``overall.yaml`` idea, as pydantic models).

Each option below is documented where it is defined; the CLI and the Python API read their
defaults from here, so ``lsdata <cmd> --help`` and this file never disagree.

Conventions that hold everywhere
--------------------------------
* Dense ids are 1-based ``int32``; **0 is reserved for padding** (the reference code used 0 for a
  real item *and* for padding, quirk Q-H6).
* Within a user, events are ordered by ``(ts, src_file, src_row)``: time, then the order of the
  input files on the command line, then the line number. Ties in time are therefore broken by file
  order, exactly as the reference's stable sort does, but explicitly.
* "Before the target" means **strictly earlier timestamp** (``ts < target_ts``). Events that share
  the target's timestamp are never history, even if they come earlier in file order.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import IntEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Behavior(IntEnum):
    """Behaviour codes stored in the ``behavior`` columns (int8). 0 is padding."""

    pad = 0
    pv = 1  #: Taobao page view / click
    cart = 2  #: Taobao add-to-cart
    fav = 3  #: Taobao favourite
    buy = 4  #: Taobao purchase
    review = 5  #: Amazon review (review files)
    rating = 6  #: ratings-only CSV row
    click = 7  #: XLong behaviour (the files carry no type)


TAOBAO_BEHAVIORS = ("pv", "cart", "fav", "buy")

#: Tianchi UserBehavior collection window: 2017-11-25 00:00 to 2017-12-03 24:00, Asia/Shanghai (UTC+8),
#: as unix seconds, half-open [start, end).
TAOBAO_WINDOW = (1511539200, 1512316800)

#: Unix seconds; used only to sanity-check time columns.
MIN_TS = 0
MAX_TS = int(datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp())

DEFAULT_SEED = 1111  #: the HPMN reference's seed
DEFAULT_CHUNK_BYTES = 64 << 20  #: bytes of raw text parsed per batch
DEFAULT_PARTITION_BYTES = 128 << 20  #: input bytes per user-hash partition when --partitions is auto
#: Most user-hash partitions the single-machine engine takes (and the most --partitions auto picks, on every engine,
#: so that both write the same files by default). Its ingest keeps one spill file open per partition (P files; with
#: a soft ``ulimit -n`` of 1024, 1024 partitions failed with "Too many open files", so it now raises the soft limit
#: up to the hard one and refuses P when the hard one is too low) and spills every user partition's item-side rows
#: into every item partition (up to P x P pieces: a fixed cost growing with P). Measured, 1M Taobao rows, 2 cores
#: shared with another job: 2.6 s at P = 8, 19 s at 256, 45 s at 512, 87 s at 1024, 248 s at 4096 (valid, the same
#: events as at 1024).
MAX_PARTITIONS = 4096
#: Most partitions the Spark engine takes (an explicit --partitions with --engine spark): each partition is one call
#: of the per-partition functions and nothing stays open across partitions; the limit is the scaling plan's upper
#: end (benchmarks/RESULTS.md: ~0.6M rows per partition at 10B rows), well below the 5-digit part names' 100,000.
MAX_SPARK_PARTITIONS = 16384
OPEN_FILES_MARGIN = 256  #: files the single-machine ingest may hold open besides its per-partition spills
UNKNOWN_CATEGORY = "<unknown>"  #: raw value of the explicit unknown category (Amazon items without meta)


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestOptions(_Opts):
    """Options of ``lsdata ingest`` (all sources)."""

    strict: bool = Field(False, description="Stop at the first malformed row (file:line:field) instead of quarantining it.")
    partitions: int | None = Field(
        None, ge=1, le=MAX_SPARK_PARTITIONS,
        description=f"User-hash partitions (output files). None = one per 128 MiB of input, at least 1, at most "
        f"{MAX_PARTITIONS}. The single-machine engine takes at most {MAX_PARTITIONS} (it keeps one spill file per "
        f"partition open and its fixed cost grows with them), the Spark engine at most {MAX_SPARK_PARTITIONS}.",
    )
    chunk_bytes: int = Field(DEFAULT_CHUNK_BYTES, ge=1 << 10, description="Raw bytes parsed per batch.")
    behaviors: tuple[str, ...] | None = Field(None, description="Taobao: keep only these behaviour types (default all).")
    window: tuple[int, int] = Field(TAOBAO_WINDOW, description="Taobao collection window [start, end) in unix seconds.")
    keep_out_of_window: bool = Field(
        False, description="Taobao: keep rows whose timestamp is outside the window (always counted)."
    )
    category_path: Literal["last", "first"] = Field(
        "last", description="Amazon: leaf of the last category path (HPMN) or of the first (MIMN)."
    )
    kinds: dict[str, str] = Field(default_factory=dict, description="Per-file kind override (path -> kind).")
    xlong_valid_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="XLong: share of train lines carved out as validation.")
    seed: int = Field(DEFAULT_SEED, description="Seed for anything random at ingest (XLong validation carve).")


class SplitOptions(_Opts):
    """Options of ``lsdata split``: the split rule lives in :mod:`lsdata.split`."""

    method: Literal["cut", "loo"] = Field(
        "cut",
        description="cut: global cut time on users' last events (HPMN rule). loo: leave-one-out per user "
        "(last = test, second last = valid); leaks global time, for comparability only.",
    )
    cut_time: int | None = Field(None, description="Explicit cut (unix seconds). Users whose last event is > cut go to test.")
    cut_quantile: float = Field(0.7, gt=0.0, lt=1.0, description="Cut = sorted last-event times at position int(q*n).")
    valid_quantile: float | None = Field(
        0.9, gt=0.0, lt=1.0,
        description="Validation carved from train by the same rule on train users' last events; None = no validation set.",
    )
    valid_cut_time: int | None = Field(None, description="Explicit validation cut (unix seconds), overrides valid_quantile.")
    neg_ratio: float = Field(0.5, ge=0.0, le=1.0, description="Probability that a sample's target is replaced by a random negative item.")
    pairs: bool = Field(
        False,
        description="Each target gives two samples, the true item (label 1) and a random negative (label 0), instead of a "
        "coin flip (MIMN's Amazon protocol); every user then has both labels, so GAUC is defined. neg_ratio is ignored.",
    )
    seed: int = Field(DEFAULT_SEED, description="Seed of the label coin flips and negative draws.")


class LayoutLengths(_Opts):
    """Widths of a layout's fixed-size list columns.

    ``hist`` counts history events only: the target is kept in its own columns, so a model that wants
    the reference's "candidate as the last step" appends it (``hist + 1`` steps). For ``shan`` the
    history is ``long + short`` events; for item-side sequences ``side``/``side_long + side_short``.
    """

    hist: int = Field(ge=1)
    side: int = Field(ge=1)
    short: int = Field(0, ge=0, description="shan: recent part width")
    side_short: int = Field(0, ge=0, description="shan: item-side recent part width")


#: Reference widths per dataset and layout (protocol.md §2.3, HPMN/MIMN code).
PRESETS: dict[str, dict[str, LayoutLengths]] = {
    "amazon": {
        "plain": LayoutLengths(hist=100, side=100),
        "hpmn": LayoutLengths(hist=100, side=100),
        "shan": LayoutLengths(hist=100, side=100, short=10, side_short=10),
        "mimn": LayoutLengths(hist=100, side=100),
    },
    "taobao": {
        "plain": LayoutLengths(hist=300, side=35),
        "hpmn": LayoutLengths(hist=300, side=36),
        "shan": LayoutLengths(hist=300, side=36, short=44, side_short=8),
        "mimn": LayoutLengths(hist=200, side=36),
    },
    "xlong": {
        "plain": LayoutLengths(hist=1000, side=184),
        "hpmn": LayoutLengths(hist=1000, side=184),
        # reference: long 768 + short 233 steps including the target; here 768 + 233 history slots
        "shan": LayoutLengths(hist=1001, side=184, short=233, side_short=24),
        "mimn": LayoutLengths(hist=1000, side=184),
    },
}

LAYOUTS = ("plain", "hpmn", "shan", "mimn")
SPLITS = ("train", "valid", "test")


def parse_time(value: str | int) -> int:
    """Unix seconds from an int, a digit string, or an ISO date/datetime (naive = UTC)."""
    if isinstance(value, int):
        return value
    s = str(value).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError as e:
        raise ValueError(f"not a unix timestamp or ISO date/datetime: {value!r}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


class NextItemOptions(_Opts):
    """Next-item training and evaluation (``lsdata train`` with a next-item model; see :mod:`lsdata.nextitem`).

    The split protocol is the dataset's own (``lsdata split``): ``cut`` (default; targets after the global cut
    time are test, between the validation cut and the cut validation) or ``loo`` (last event test, second last
    validation, per user; leaks global time). ``None`` means the model's reference default
    (``train_defaults`` of the model class, see ``lsdata models``).
    """

    warmup: int = Field(1, ge=1, description="a position is a target only with at least this many history events (strictly earlier)")
    stride: int = Field(1, ge=1, description="training targets: every stride-th position of a user, counted back from the most recent (1 = every position)")
    targets: Literal["last", "all"] | None = Field(
        None, description="training samples: last = one target per sample, predicted from the last position of its "
        "history window (every position is its own sample: the sliding window); all = every position of a window of "
        "max_len events predicts its next event (the official SASRec / DMAN training: non-overlapping windows, each "
        "training target once per epoch, a target tied in time with the events before it predicted from the "
        "output before the tie, see tied_targets; needs a model with a per-position encoder and stride 1). "
        "Validation and test are one target per sample either way. None = the model's default (all for sasrec and "
        "dman, else last)")
    horizon: int | None = Field(
        None, ge=1, description="targets last: each training history also predicts the next horizon - 1 training "
        "targets after its own (Caser's T: official 3), one sample per (history, target); None = the model's default "
        "(1 for every model: Caser's 3 was level on validation at 2.4-3x the epoch time, benchmarks/RESULTS.md)")
    tied_targets: Literal["earlier", "skip"] = Field(
        "earlier", description="targets all: a training target tied in time with the event before it is predicted "
        "from the causal output at its last strictly earlier event (earlier; the history --targets last gives it) "
        "or not counted (skip: the behaviour before 2026-12-03, loses a third of Amazon's day-granularity targets)")
    loss: Literal["ce", "sampled_softmax", "bce", "bpr"] | None = Field(
        None, description="ce = full softmax cross-entropy over all items; sampled_softmax = cross-entropy over the "
        "positive and the sampled negatives (logQ-corrected with the popularity sampler); bce = binary CE of the "
        "positive and each negative; bpr = -log sigmoid(pos - neg). None = the model's paper loss")
    negatives: int | None = Field(None, ge=1, description="sampled negatives per training target (sampled_softmax, bce, bpr); None = model default")
    sampler: Literal["uniform", "popularity"] | None = Field(
        None, description="training negatives: uniform over items, or popularity = training-target count^pop_alpha; "
        "a sampled item is never the positive. None = model default (uniform unless the paper samples by popularity)")
    pop_alpha: float | None = Field(None, ge=0.0, description="exponent of the popularity sampler; None = model default (1)")
    eval_negatives: int = Field(100, ge=1, description="sampled evaluation: the target ranked among this many uniform "
                                "negatives (SASRec protocol), fixed per evaluation by --seed")
    select_on: Literal["full", "sampled"] = Field(
        "full", description="candidate set whose NDCG@10 selects the checkpoint on validation: full = all items, "
        "sampled = eval_negatives uniform negatives. Both are always reported")
    item_chunk: int = Field(65536, ge=1, description="items scored per matrix product in full ranking (bounds memory)")


class TrainConfig(_Opts):
    """Options of ``lsdata train`` (loadable from a TOML file; command-line options override it).

    ``None`` means "the model's reference default" (``CTRModel.train_defaults``: e.g. HPMN lr 1e-3 and
    gradient values clipped to [-1, 1]); model parameters go in ``params`` (see ``lsdata models``).
    """

    model: str = Field(description="registered model name (lsdata models)")
    data: str = Field(description="dataset directory with a finished split and the model's layout")
    layout: str | None = Field(None, description="layout to train on; None = the model's default layout")
    out: str | None = Field(None, description="run directory; None = DATA/runs/MODEL")
    params: dict = Field(default_factory=dict, description="model parameter overrides (key -> value)")
    epochs: int = Field(2, ge=1, description="maximum passes over the training set (HPMN: 2)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps in total")
    batch_size: int | None = Field(None, ge=1, description="training batch; None = model default (128)")
    eval_batch_size: int = Field(1024, ge=1, description="batch for validation/test scoring")
    max_eval_rows: int | None = Field(
        None, ge=1, description="score only the first N rows (file order) of valid and test; None = all. For quick "
        "benchmarks: metrics.json records n")
    lr: float | None = Field(None, gt=0, description="Adam learning rate; None = model default")
    l2: float = Field(0.0, ge=0, description="0.5 * l2 * sum(w^2) over non-embedding, non-bias weights (reference reg_lambda)")
    clip_value: float | None = Field(None, gt=0, description="clip every gradient element to [-v, v]; None = model default (off unless the reference clips)")
    eval_every: int | None = Field(None, ge=1, description="validate every N steps; None = once per epoch")
    patience: int = Field(2, ge=1, description="stop after this many validations without a better validation AUC")
    seed: int = Field(DEFAULT_SEED, description="seed of initialisation, shuffling and dropout")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    streaming: bool = Field(False, description="stream row groups (StreamingLayoutDataset) instead of loading the split in memory")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch default")
    checkpoint_every: int = Field(500, ge=1, description="save a resumable checkpoint every N steps (and at every validation)")
    next_item: NextItemOptions = Field(default_factory=NextItemOptions, description="next-item models only: targets, "
                                       "losses, negatives and candidate sets (NextItemOptions)")
