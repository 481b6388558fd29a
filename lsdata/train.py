"""``lsdata train`` / ``lsdata eval``: the reference trainer.

Protocol (the fixes to protocol.md §4 / Q-H12 / Q-M8 are the point):

* Adam with the model's reference learning rate; gradient values clipped where the reference clips.
* Validation every ``eval_every`` steps (default: each epoch) on the **valid** split; the best validation
  AUC (logloss when AUC is undefined) is checkpointed to ``best.pt``; ``patience`` validations without
  improvement stop training. The **test split is scored once**, at the end, with ``best.pt``.
* ``last.pt`` (model, optimiser, RNG, position in the epoch) is written atomically every
  ``checkpoint_every`` steps and at every validation; ``resume=True`` continues from it after a kill and,
  on CPU, reproduces the uninterrupted run exactly (the shuffling is a function of ``seed + epoch``).
* DDP under ``torchrun`` (gloo on CPU, NCCL on CUDA): each rank trains on its shard of every epoch's
  permutation; validation scores are gathered on rank 0, which alone writes files.

Outputs in the run directory: ``config.json`` (resolved), ``log.csv`` (one row per logged step and per
validation), ``metrics.json``, ``curve.png``, ``best.pt``, ``last.pt``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lsdata import __version__, models
from lsdata.defaults import TrainConfig
from lsdata.io import InputError
from lsdata.loader import EpochSampler, LayoutDataset, StreamingLayoutDataset, collate, layout_file
from lsdata.metrics import evaluate
from lsdata.models.base import CTRModel, DataSpec
from lsdata.models.blocks import bce

RUN_FILES = ("config.json", "log.csv", "metrics.json", "curve.png", "best.pt", "last.pt")
LOG_FIELDS = ("kind", "epoch", "step", "samples", "loss", "extra_loss", "samples_per_s", "valid_auc", "valid_logloss",
              "valid_ndcg@10", "valid_hr@10", "lr")


def make_run(cfg: TrainConfig) -> Run:
    """The run of ``cfg.model``'s task: :class:`Run` (CTR) or, for next-item models,
    :class:`lsdata.nextitem_train.NextItemRun` (same loop, selection and outputs; its own data and metrics)."""
    if getattr(models.get(cfg.model), "task", "ctr") == "next_item":
        from lsdata.nextitem_train import NextItemRun

        return NextItemRun(cfg)
    return Run(cfg)


class Run:
    """Everything resolved for one training run: config, device, model, data, optimiser.

    The task-specific parts are methods (:meth:`make_spec`, :meth:`data`, :meth:`eval_data`, :meth:`loss`,
    :meth:`score`, :meth:`selection_key`, :meth:`valid_log`) so that the next-item run reuses the loop.
    """

    selection = "valid auc (logloss if auc undefined)"
    curve_metric = "valid_auc"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available")
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cls: type[CTRModel] = models.get(cfg.model)
        self.spec = self.make_spec()
        self.params = self.cls.make_params(self.spec.dataset, cfg.params)
        td = self.cls.train_defaults
        self.lr = cfg.lr or td.get("lr", 1e-3)
        self.batch_size = cfg.batch_size or td.get("batch_size", 128)
        self.clip = cfg.clip_value or td.get("clip_value")
        self.out = Path(cfg.out) if cfg.out else Path(cfg.data) / "runs" / cfg.model
        torch.manual_seed(cfg.seed)
        self.model = self.cls(self.spec, self.params).to(self.device)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True) if self.world > 1 else None
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=td.get("betas", (0.9, 0.999)),
                                    weight_decay=td.get("weight_decay", 0.0))
        self.amp = self.device.type == "cuda" and cfg.amp
        self.l2_params = [p for n, p in self.model.named_parameters() if p.ndim > 1 and "emb" not in n]

    def make_spec(self) -> DataSpec:
        self.layout = self.cfg.layout or self.cls.layout
        return DataSpec.from_dataset(self.cfg.data, self.layout)

    def data(self) -> tuple:
        """``(train_data, loader, sampler, n_train, valid_data, n_valid)``; ``sampler`` is None when streaming."""
        cfg = self.cfg
        if cfg.streaming:
            train_data = StreamingLayoutDataset(self.path("train"), self.layout, self.batch_size, shuffle=True,
                                                seed=cfg.seed, rank=self.rank, world_size=self.world)
            loader = torch.utils.data.DataLoader(train_data, batch_size=None, num_workers=cfg.workers)
            n_train, sampler = pq_rows(self.path("train")), None
        else:
            train_data = LayoutDataset(self.path("train"), self.layout)
            n_train = len(train_data)
            sampler = EpochSampler(n_train, self.batch_size, True, cfg.seed, self.rank, self.world)
            loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, collate_fn=collate,
                                                 num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                                                 generator=loader_generator(cfg.seed))
        valid_data = self.eval_data("valid")
        n_valid = len(valid_data) if isinstance(valid_data, LayoutDataset) else pq_rows(valid_data)
        return train_data, loader, sampler, n_train, valid_data, n_valid

    def eval_data(self, split: str) -> LayoutDataset | Path:
        return self.path(split) if self.cfg.streaming else LayoutDataset(self.path(split), self.layout)

    def score(self, data: LayoutDataset | Path) -> dict:
        """Metrics of one split (every rank gets them)."""
        return evaluate(*self.predict(data))

    @staticmethod
    def selection_key(m: dict) -> float:
        return _selection_key(m)

    @staticmethod
    def valid_log(m: dict) -> dict:
        return {"valid_auc": m["auc"], "valid_logloss": m["logloss"]}

    def resolved(self) -> dict:
        return {**self.cfg.model_dump(mode="json"), "layout": self.layout, "lr": self.lr, "batch_size": self.batch_size,
                "clip_value": self.clip, "out": str(self.out), "params": self.params.model_dump(mode="json"),
                "device": str(self.device), "world_size": self.world, "lsdata_version": __version__}

    def path(self, split: str) -> Path:
        p = layout_file(self.cfg.data, self.layout, split)
        if not p.exists():
            raise InputError(f"{p}: missing (run `lsdata layout {self.cfg.data} {self.layout}`)")
        return p

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.ddp or self.model
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            logit, extra = net(batch)
        loss = bce(logit.float(), batch["label"]) + extra.float()
        if self.cfg.l2:
            loss = loss + 0.5 * self.cfg.l2 * sum((p * p).sum() for p in self.l2_params)
        return loss, extra.detach()

    @torch.no_grad()
    def predict(self, data: LayoutDataset | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, label, probability) of a split in file order; under DDP each rank scores every
        ``world``-th row and rank 0 gets the merged result."""
        self.model.eval()
        bs = self.cfg.eval_batch_size
        users, labels, probs, order = [], [], [], []
        if isinstance(data, LayoutDataset):
            rows = np.arange(min(len(data), self.cfg.max_eval_rows or len(data)))[self.rank :: self.world]
            batches = ((rows[s : s + bs], data.__getitems__(rows[s : s + bs])) for s in range(0, rows.size, bs))
        else:
            stream = StreamingLayoutDataset(data, self.layout, bs, shuffle=False, rank=self.rank, world_size=self.world)
            limit = self.cfg.max_eval_rows
            batches = ((None, b) for i, b in enumerate(stream) if limit is None or i * bs * self.world < limit)
        for idx, batch in batches:
            batch = self.to_device(batch)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                logit, _ = self.model(batch)
            probs.append(torch.sigmoid(logit.float()).cpu().numpy())
            users.append(batch["user"].cpu().numpy())
            labels.append(batch["label"].cpu().numpy())
            order.append(idx if idx is not None else np.full(len(probs[-1]), -1))
        self.model.train()
        cat = [np.concatenate(x) if x else np.zeros(0) for x in (users, labels, probs, order)]
        if self.world > 1:
            parts = [None] * self.world
            dist.all_gather_object(parts, cat)
            cat = [np.concatenate([p[i] for p in parts]) for i in range(4)]
            if cat[3].size and (cat[3] >= 0).all():
                srt = np.argsort(cat[3], kind="stable")
                cat = [c[srt] for c in cat]
        if self.cfg.max_eval_rows:
            cat = [c[: self.cfg.max_eval_rows] for c in cat]
        return cat[0], cat[1], cat[2]


@contextlib.contextmanager
def _nothing():
    yield


def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _selection_key(m: dict) -> float:
    """Higher is better: validation AUC, or minus logloss where AUC is undefined (one class)."""
    if m.get("auc") is not None:
        return m["auc"]
    return -m["logloss"] if m.get("logloss") is not None else -math.inf


def loader_generator(seed: int) -> torch.Generator:
    """The DataLoader's own generator: without one, every new epoch iterator draws its worker base seed from the
    global RNG, so a run resumed mid-epoch (one extra iterator) would continue with shifted dropout/negatives."""
    return torch.Generator().manual_seed(seed)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: TrainConfig, resume: bool = False, progress: Callable[[dict], None] | None = None) -> dict:
    """Train, select on validation, test once; returns the metrics dict (also written to metrics.json).

    ``progress`` is called after every step with ``{"step", "total", "loss", "samples_per_s"}``.
    """
    r = make_run(cfg)
    t_start = time.perf_counter()
    lead = r.rank == 0
    last = r.out / "last.pt"
    if resume and not last.exists():
        raise InputError(f"{r.out}: nothing to resume (no last.pt)")
    if lead:
        r.out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for f in RUN_FILES:
                (r.out / f).unlink(missing_ok=True)
        (r.out / "config.json").write_text(json.dumps(r.resolved(), indent=2) + "\n")

    train_data, loader, sampler, n_train, valid_data, n_valid = r.data()
    steps_per_epoch = math.ceil(math.ceil(n_train / r.world) / r.batch_size)
    if n_train == 0:
        raise InputError(f"{cfg.data}: the training split is empty")

    st = {"epoch": 0, "batch": 0, "step": 0, "best": -math.inf, "best_step": None, "bad": 0, "stop": False,
          "epoch_seconds": [], "evals": [], "last_eval": -1,
          "train_seconds": 0.0, "samples_seen": 0}
    if resume:
        ck = torch.load(last, map_location=r.device, weights_only=False)
        r.model.load_state_dict(ck["model"])
        r.opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        st = ck["state"]
        if lead:
            _truncate_log(r.out / "log.csv", st["step"])

    def checkpoint() -> None:
        if lead:
            _save({"model": r.model.state_dict(), "opt": r.opt.state_dict(), "rng": torch.get_rng_state(), "state": st}, last)

    log_every = max(1, min(50, steps_per_epoch // 10))
    log_f = None
    if lead:
        new = not (r.out / "log.csv").exists()
        log_f = open(r.out / "log.csv", "a", newline="")
        writer = csv.DictWriter(log_f, LOG_FIELDS)
        if new:
            writer.writeheader()

    def log(row: dict) -> None:
        if lead:
            writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
            log_f.flush()

    def validate() -> None:
        if not n_valid or st["last_eval"] == st["step"]:
            return
        st["last_eval"] = st["step"]
        m = r.score(valid_data)
        stop = False
        if lead:
            key = r.selection_key(m)
            st["evals"].append({"step": st["step"], "epoch": st["epoch"], **m})
            if key > st["best"]:
                st.update(best=key, best_step=st["step"], bad=0)
                _save(r.model.state_dict(), r.out / "best.pt")
            else:
                st["bad"] += 1
            stop = st["bad"] >= cfg.patience
            log({"kind": "valid", "epoch": st["epoch"], "step": st["step"], **r.valid_log(m), "lr": r.lr})
        if r.world > 1:
            box = [stop]
            dist.broadcast_object_list(box, src=0)
            stop = box[0]
        st["stop"] = stop
        checkpoint()

    total_steps = min(cfg.max_steps or 10**18, steps_per_epoch * cfg.epochs)
    r.model.train()
    while st["epoch"] < cfg.epochs and not st["stop"] and st["step"] < total_steps:
        skip = st["batch"]
        if sampler is not None:
            sampler.set_epoch(st["epoch"], skip)
        else:
            train_data.set_epoch(st["epoch"])
        t0, seen, loss_sum, extra_sum, n_sum = time.perf_counter(), 0, None, None, 0
        train_secs, completed = 0.0, True
        with r.ddp.join() if r.ddp is not None else _nothing():
            for i, batch in enumerate(loader):
                if sampler is None and i < skip:
                    continue
                batch = r.to_device(batch)
                loss, extra = r.loss(batch)
                r.opt.zero_grad(set_to_none=True)
                loss.backward()
                if r.clip:
                    torch.nn.utils.clip_grad_value_(r.model.parameters(), r.clip)
                r.opt.step()
                st["step"] += 1
                st["batch"] += 1
                b = next(iter(batch.values())).shape[0]
                st["samples_seen"] += b
                seen += b
                loss_sum = loss.detach() * b if loss_sum is None else loss_sum + loss.detach() * b
                extra_sum = extra * b if extra_sum is None else extra_sum + extra * b
                n_sum += b
                if st["step"] % log_every == 0:
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    log({"kind": "train", "epoch": st["epoch"], "step": st["step"], "samples": st["step"] * r.batch_size,
                         "loss": float(loss_sum) / n_sum, "extra_loss": float(extra_sum) / n_sum, "samples_per_s": rate, "lr": r.lr})
                    if progress and lead:
                        progress({"step": st["step"], "total": total_steps, "loss": float(loss_sum) / n_sum, "samples_per_s": rate})
                    loss_sum, extra_sum, n_sum = None, None, 0
                elif progress and lead:
                    progress({"step": st["step"], "total": total_steps})
                if cfg.eval_every and st["step"] % cfg.eval_every == 0:
                    train_secs += time.perf_counter() - t0
                    validate()
                    t0, seen = time.perf_counter(), 0
                elif st["step"] % cfg.checkpoint_every == 0:
                    checkpoint()
                if st["stop"] or st["step"] >= total_steps:
                    completed = st["batch"] >= steps_per_epoch
                    break
        train_secs += time.perf_counter() - t0
        st["train_seconds"] += train_secs
        if completed:
            st["epoch_seconds"].append(train_secs)
            st["epoch"] += 1
            st["batch"] = 0
            if not cfg.eval_every:
                validate()
        if st["step"] >= total_steps:
            validate()  # the final weights are always validated once
        checkpoint()

    result: dict = {}
    spread = rank_spread(r.model) if r.world > 1 else None  # before rank 0 loads the selected weights
    if n_valid and (r.out / "best.pt").exists() and lead:
        r.model.load_state_dict(torch.load(r.out / "best.pt", map_location=r.device, weights_only=True))
    if r.world > 1:
        # every rank needs the selected weights to score its test shard
        for t in r.model.state_dict().values():
            dist.broadcast(t, src=0)
    test_metrics = r.score(r.eval_data("test"))
    if lead:
        valid_best = max(st["evals"], key=r.selection_key, default=None) if st["evals"] else None
        secs = st["epoch_seconds"]
        result = {
            "model": cfg.model, "dataset": r.spec.dataset, "layout": r.layout, "data": str(cfg.data),
            "device": str(r.device), "world_size": r.world, "ddp_rank_spread": spread, "amp": r.amp,
            "n_parameters": sum(p.numel() for p in r.model.parameters()),
            "train_samples": n_train, "steps": st["step"], "epochs_run": len(secs), "best_step": st["best_step"],
            "stopped_early": bool(st["stop"]), "selection": r.selection if n_valid else "none: empty valid split, last weights",
            "valid": {k: v for k, v in valid_best.items() if k not in ("step", "epoch")} if valid_best else None,
            "test": test_metrics,
            "epoch_seconds": secs,
            "train_samples_per_s": st["samples_seen"] / st["train_seconds"] if st["train_seconds"] else None,
            "peak_rss_mib": _peak_rss_mib(),
            "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if r.device.type == "cuda" else None,
            "seconds_total": time.perf_counter() - t_start,
            "lsdata_version": __version__,
        }
        (r.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        log_f.close()
        plot_curve(r.out / "log.csv", r.out / "curve.png", title=f"{cfg.model} on {Path(cfg.data).name}",
                   metric=r.curve_metric)
    if r.world > 1:
        dist.barrier()
    return result


def rank_spread(model: torch.nn.Module) -> float:
    """Under DDP: the largest difference between the ranks' per-parameter sums and sums of squares (float64) of the
    trained weights; ``0.0`` when DDP kept every rank's parameters identical, as it must (each rank applies the same
    all-reduced gradient). A rank that stepped on a gradient of its own (no DDP wrapper, a skipped all-reduce, a
    gradient changed after it on one rank) shows up here. Buffers are left out: batch-norm statistics follow each rank's own batch."""
    v = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in model.parameters()])
    every = [torch.empty_like(v) for _ in range(dist.get_world_size())]
    dist.all_gather(every, v)
    return max(float((x - v).abs().max()) for x in every)


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint being resumed (they will be written again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        w.writeheader()
        w.writerows(r for r in rows if int(r["step"]) <= step)


def plot_curve(log_csv: Path, png: Path, title: str, metric: str = "valid_auc") -> None:
    """Training loss and the validation ``metric`` (a log.csv column) against the step, one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    tr = [(int(r["step"]), float(r["loss"])) for r in rows if r["kind"] == "train"]
    va = [(int(r["step"]), float(r[metric])) for r in rows if r["kind"] == "valid" and r[metric]]
    fig = Figure(figsize=(8, 3.2))
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    if tr:
        a1.plot(*zip(*tr))
    a1.set(xlabel="step", ylabel="train loss", title=title)
    if va:
        a2.plot(*zip(*va), marker="o")
    a2.set(xlabel="step", ylabel=metric.replace("_", " "), title="validation")
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, png)


def run_weights(run_dir: str | Path) -> Path:
    """The checkpoint a finished run is served and evaluated with: ``best.pt``, else ``last.pt``."""
    run_dir = Path(run_dir)
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            return run_dir / name
    raise InputError(f"{run_dir}: no best.pt or last.pt")


def load_run(run_dir: str | Path, data: str | None = None, device: str = "auto") -> Run:
    """A finished run rebuilt from ``config.json`` with its :func:`run_weights` loaded (``data`` overrides the
    dataset directory it was trained on)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise InputError(f"{run_dir}: not a run directory (no config.json)")
    conf = json.loads(cfg_path.read_text())
    fields = set(TrainConfig.model_fields)
    conf = {k: v for k, v in conf.items() if k in fields} | {"out": str(run_dir), "device": device}
    cfg = TrainConfig.model_validate(conf | ({"data": data} if data else {}))
    weights = run_weights(run_dir)
    r = make_run(cfg)
    state = torch.load(weights, map_location=r.device, weights_only=weights.name == "best.pt")
    r.model.load_state_dict(state if weights.name == "best.pt" else state["model"])
    return r


def evaluate_run(run_dir: str | Path, split: str = "test", data: str | None = None) -> dict:
    """Score a finished run's ``best.pt`` (or ``last.pt``) on one split of its (or another) dataset."""
    r = load_run(run_dir, data)
    return {"run": str(run_dir), "split": split, "data": r.cfg.data, **r.score(r.eval_data(split))}
