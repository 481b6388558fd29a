"""Train RecBole 1.2.1's DIN, DIEN, GRU4Rec and Caser on lsdata's samples; AUC on lsdata's test samples.

Runs in its own venv (not lsdata's: RecBole 1.2.1 needs numpy < 2 and pandas < 3). The command that works
(Python 3.11, CPU; torch first, from the local CPU build, so that pip does not fetch a CUDA torch)::

    python3 -m venv /tmp/venv-recbole && . /tmp/venv-recbole/bin/activate \\
      && pip install torch==2.13.0 && pip install recbole==1.2.1 "numpy<2" "pandas<3"

Why the pins: ``Config.compatibility_settings`` sets ``np.float = np.float_`` etc., which numpy 2 removed
(AttributeError at ``Config(...)``); ``Dataset._load_feat`` fills empty ``token_seq`` cells with the chained
``df[field].fillna(value="", inplace=True)``, a no-op under pandas 3's copy-on-write (empty histories then
crash on ``nan.split``). With the pins it runs unpatched on torch 2.13 (one FutureWarning for
``torch.cuda.amp.GradScaler``); ``torch.load`` (weights_only) is never reached because this script keeps the
best epoch's weights in memory instead of RecBole's checkpoint file.

    python benchmarks/recbole/run_recbole.py --data OUT --epochs 5 --json results.json [--models DIN DIEN ...]

``OUT`` is written by ``convert.py`` (lsdata venv). For every model this script builds RecBole's own
``Config`` / ``create_dataset`` / ``data_preparation`` / ``get_model`` / ``get_trainer`` (what
``run_recbole`` does, minus its checkpoint round trip) and then, per epoch: ``trainer._train_epoch`` (timed:
this is the training wall time per epoch, data loading of the batches included, evaluation excluded), then the
AUC on the lsdata **valid** samples (``torch.autograd`` anomaly detection, which RecBole 1.2.1 switches on
as a side effect of importing its model zoo - ``sequential_recommender/sine.py`` - is switched off again;
``--anomaly-mode`` keeps it); the weights of the best valid-AUC epoch are kept (RecBole's default
``fit`` keeps the best ``valid_metric`` epoch too) and scored on the lsdata **test** samples: the candidate
item given the history, ``model.predict``. AUC and logloss are computed here with the same code for all four
models (numpy, ties averaged); for DIN and DIEN RecBole's own labelled evaluation (``eval_args.mode:
labeled``, metrics ``AUC``, ``LogLoss``) is run on the same test loader and stored next to it as a cross-check.

Settings (RecBole defaults unless listed): ``learning_rate 0.001``, Adam, ``train_batch_size 2048``
(``--batch-size``), ``eval_batch_size 4096``, no weight decay, seed 2020, CPU, ``torch`` threads = cores.
Set to match lsdata's reference sizes where RecBole has the knob:

* DIN:  ``embedding_size 16``, ``mlp_hidden_size [200, 80]`` (RecBole uses this one list for both the
  attention MLP and the output MLP; the reference DIN has 80-40 for attention), ``dropout_prob 0``,
  ``pooling_mode mean``. Item features: item id + category (from the ``.item`` file), so a history step and
  the candidate are each 2 x 16 = 32 wide.
* DIEN: the same, ``gru_type AUGRU``, ``alpha 1.0`` (aux loss weight); the GRU hidden size is fixed by RecBole
  to the item feature width, 2 x 16 = 32 (= lsdata's hidden 32). RecBole's DIEN also feeds a user-id embedding
  to the output MLP.
* GRU4Rec: ``embedding_size 16``, ``hidden_size 32``, ``num_layers 1``, ``dropout_prob 0.3``, ``loss_type CE``
  (softmax over all items); item ids only (RecBole's GRU4Rec has no category input).
* Caser: ``embedding_size 16``, ``nv 4``, ``nh 8``, ``dropout_prob 0.4``, ``reg_weight 1e-4``, ``loss_type CE``;
  item ids + a user embedding. Its window L is ``MAX_ITEM_LIST_LENGTH``, and RecBole's Caser builds one
  horizontal conv per height 1..L (its docstring asks for a small L): at L = 300 one epoch of ~12 k rows takes
  well over half an hour on 2 cores, so ``--caser-len`` (default 50, RecBole's default ``MAX_ITEM_LIST_LENGTH``)
  cuts Caser's lists to the most recent L items after loading (``--caser-len 0``: the full 300).

``MAX_ITEM_LIST_LENGTH`` is the padded width of the history lists in the files (``meta.json: max_hist_len``,
300): DIN/DIEN build their attention masks from it and require it to equal the list width.

Empty histories (a few train samples whose every event shares the target's timestamp): RecBole's GRU4Rec
gathers the GRU state at ``length - 1`` and DIEN packs sequences with ``pack_padded_sequence``; both fail on
length 0. For those two models the length of an empty history is set to 1 (one step over the padding item,
id 0), the rows are kept. DIN and Caser take length 0 as it is.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

MODELS = ("DIN", "DIEN", "GRU4Rec", "Caser")
CTR = {"DIN", "DIEN"}

MODEL_PARAMS = {
    "DIN": {"embedding_size": 16, "mlp_hidden_size": [200, 80], "dropout_prob": 0.0, "pooling_mode": "mean"},
    "DIEN": {"embedding_size": 16, "mlp_hidden_size": [200, 80], "dropout_prob": 0.0, "pooling_mode": "mean",
             "gru_type": "AUGRU", "alpha": 1.0},
    "GRU4Rec": {"embedding_size": 16, "hidden_size": 32, "num_layers": 1, "dropout_prob": 0.3, "loss_type": "CE"},
    "Caser": {"embedding_size": 16, "nv": 4, "nh": 8, "dropout_prob": 0.4, "reg_weight": 1e-4, "loss_type": "CE"},
}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties averaged)."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average ranks of tied groups
    bounds = np.flatnonzero(np.r_[True, s[1:] != s[:-1], True])
    for a, b in itertools.pairwise(bounds):
        ranks[a:b] = (a + b + 1) / 2.0
    r = np.empty_like(ranks)
    r[order] = ranks
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def machine() -> dict:
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    import pandas
    import recbole

    return {
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "recbole": recbole.__version__, "torch": torch.__version__,
        "numpy": np.__version__, "pandas": pandas.__version__, "platform": platform.platform(),
    }


def cpu_run_config(seed: int, work: Path) -> dict:
    """RecBole settings of a quiet, reproducible CPU run (checkpoints under ``work/saved``)."""
    return {"seed": seed, "reproducibility": True, "device": "cpu", "use_gpu": False, "gpu_id": "", "show_progress": False,
            "state": "WARNING", "checkpoint_dir": str((work / "saved").resolve()), "log_wandb": False}


def build_config(model: str, data: Path, meta: dict, args) -> dict:
    ctr = model in CTR
    ds = "lsdata_ctr" if ctr else "lsdata_seq"
    inter_cols = ["user_id", "item_id", "item_id_list", "label"] + (["neg_item_id_list"] if model == "DIEN" else [])
    max_len = int(meta["max_hist_len"])
    cfg = {
        "data_path": str(data.resolve()),
        "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "LABEL_FIELD": "label",
        "TIME_FIELD": None,
        "load_col": {"inter": inter_cols, "item": ["item_id", "cate"]},
        "alias_of_item_id": ["item_id_list"] + (["neg_item_id_list"] if model == "DIEN" else []),
        "MAX_ITEM_LIST_LENGTH": max_len,
        "train_neg_sample_args": None,
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": None, "mode": "labeled"},
        "metrics": ["AUC", "LogLoss"],
        "valid_metric": "AUC",
        "epochs": args.epochs,
        "train_batch_size": args.batch_size,
        "eval_batch_size": 4096,
        "learning_rate": args.lr,
        **cpu_run_config(args.seed, args.work),
    }
    cfg.update(MODEL_PARAMS[model])
    return {"dataset": ds, "config": cfg}


def recut_last(dataset, field: str, length_field: str, L: int) -> None:
    """Keep the most recent L items of each (post-padded) list: RecBole's ``seq_len`` would keep the first L."""
    import torch

    for d in dataset:
        inter = d.inter_feat
        seq, n = inter[field], inter[length_field]
        idx = (n.clamp(min=L) - L).unsqueeze(1) + torch.arange(L).unsqueeze(0)
        out = seq.gather(1, idx.clamp(max=seq.shape[1] - 1))
        new_n = n.clamp(max=L)
        out[torch.arange(L).unsqueeze(0) >= new_n.unsqueeze(1)] = 0
        inter.interaction[field] = out
        inter.interaction[length_field] = new_n


def score(model, loader, label_field: str, ctr: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of every row of an eval loader, in file order (labelled mode: no sampling)."""
    import torch

    model.eval()
    ys, ss = [], []
    with torch.no_grad():
        for batch in loader:
            inter = batch[0] if isinstance(batch, tuple) else batch
            s = model.predict(inter.to("cpu"))
            ys.append(inter[label_field].numpy())
            ss.append(s.float().numpy())
    y, s = np.concatenate(ys), np.concatenate(ss)
    p = s if ctr else torch.sigmoid(torch.from_numpy(s)).numpy()
    return y, p


def run_model(model_name: str, data: Path, meta: dict, args) -> dict:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    spec = build_config(model_name, data, meta, args)
    cfg = spec["config"]
    config = Config(model=model_name, dataset=spec["dataset"], config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    load_s = time.perf_counter() - t0
    built = [train_data.dataset, valid_data.dataset, test_data.dataset]
    len_field = config["ITEM_LIST_LENGTH_FIELD"]
    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    notes = []
    if model_name == "Caser" and 0 < args.caser_len < int(meta["max_hist_len"]):
        # not RecBole's `seq_len` option: that keeps the *first* L items of a list, these are the last L
        L = args.caser_len
        recut_last(built, seq_field, len_field, L)
        config["MAX_ITEM_LIST_LENGTH"] = L
        notes.append(f"Caser window L={L}: most recent {L} history items")
    if model_name in ("GRU4Rec", "DIEN"):
        fixed = 0
        for d in built:
            n = d.inter_feat[len_field]
            fixed += int((n == 0).sum())
            d.inter_feat.interaction[len_field] = n.clamp(min=1)
        if fixed:
            notes.append(f"{fixed} empty histories given length 1 (one padding step)")
    counts = {k: len(d) for k, d in zip(("train", "valid", "test"), built)}
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # recbole/model/sequential_recommender/sine.py runs torch.autograd.set_detect_anomaly(True) at import, i.e.
    # for every RecBole model (get_model imports all of them): every op then records a traceback and every
    # backward checks for NaN. That is a debugging switch, not part of any model: off unless --anomaly-mode.
    anomaly = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(args.anomaly_mode)
    n_params = sum(p.numel() for p in model.parameters())
    ctr = model_name in CTR
    epochs, best, failed = [], None, None
    for epoch in range(args.epochs):
        t = time.perf_counter()
        try:
            loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        except (RuntimeError, ValueError) as e:  # e.g. RecBole's "Training loss is nan": keep the finished epochs
            if best is None:
                raise
            failed = f"epoch {epoch}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"  {model_name} {failed}; scoring the best finished epoch", flush=True)
            break
        dt = time.perf_counter() - t
        loss = float(sum(loss)) if isinstance(loss, tuple) else float(loss)
        t = time.perf_counter()
        vy, vp = score(model, valid_data, "label", ctr)
        v_auc = auc(vy, vp)
        ev = time.perf_counter() - t
        epochs.append({"epoch": epoch, "train_s": round(dt, 3), "loss": round(loss / max(len(train_data), 1), 5),
                       "valid_auc": round(v_auc, 5), "valid_s": round(ev, 3)})
        print(f"  {model_name} epoch {epoch}: train {dt:.1f}s loss {loss / max(len(train_data), 1):.4f} valid AUC {v_auc:.4f}", flush=True)
        if best is None or v_auc > best[0]:
            best = (v_auc, epoch, copy.deepcopy(model.state_dict()))
    ty, tp = score(model, test_data, "label", ctr)
    last = {"auc": auc(ty, tp), "logloss": logloss(ty, tp)}
    model.load_state_dict(best[2])
    ty, tp = score(model, test_data, "label", ctr)
    res = {
        "model": model_name,
        "recbole_dataset": spec["dataset"],
        "rows": counts,
        "params": n_params,
        "load_s": round(load_s, 2),
        "epoch_seconds": [e["train_s"] for e in epochs],
        "mean_epoch_s": round(float(np.mean([e["train_s"] for e in epochs])), 3),
        "epochs": epochs,
        "best_epoch": best[1],
        "test": {"auc": auc(ty, tp), "logloss": logloss(ty, tp), "samples": int(ty.size), "positives": int(ty.sum())},
        "test_last_epoch": last,
        "settings": {k: v for k, v in config.final_config_dict.items() if k in MODEL_PARAMS[model_name] or k in (
            "MAX_ITEM_LIST_LENGTH", "train_batch_size", "learning_rate", "learner", "weight_decay", "seed", "epochs")},
        "notes": notes,
        "anomaly_mode": {"enabled_by_recbole_import": anomaly, "used": args.anomaly_mode},
    }
    if failed:
        res["failed"] = failed
    if not ctr:
        res["test"]["logloss_note"] = "sigmoid of RecBole's dot-product score (CE-trained next-item logit, not a calibrated CTR)"
    if ctr:
        rb = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        res["recbole_eval_test"] = {k: float(v) for k, v in dict(rb).items()}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="convert.py output dir (meta.json, lsdata_ctr/, lsdata_seq/)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=2048, help="RecBole train_batch_size (RecBole default 2048)")
    ap.add_argument("--lr", type=float, default=0.001, help="RecBole learning_rate (default 0.001)")
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--caser-len", type=int, default=50,
                    help="Caser window L: most recent L items (default 50 = RecBole's MAX_ITEM_LIST_LENGTH; 0 = all 300)")
    ap.add_argument("--anomaly-mode", action="store_true",
                    help="keep torch anomaly detection on, as RecBole 1.2.1 leaves it after importing its models")
    ap.add_argument("--no-mkldnn", action="store_true",
                    help="torch.backends.mkldnn.enabled = False (oneDNN conv backward gave NaN / crashes here, see notes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default, the core count)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recbole-work"), help="cwd for RecBole's log/ saved/ dirs")
    ap.add_argument("--json", type=Path, required=True, help="where to write the results JSON")
    args = ap.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config also parses sys.argv (--key=value) as config overrides
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # pandas chained-assignment / torch.cuda.amp notices
    meta = json.loads((args.data / "meta.json").read_text())
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # RecBole writes log_tensorboard/ and saved/ into the cwd
    out = {"machine": {**machine(), "mkldnn": torch.backends.mkldnn.enabled}, "meta": meta, "epochs": args.epochs, "batch_size": args.batch_size, "models": {}}
    for m in args.models:
        print(f"RecBole {m} ...", flush=True)
        load0 = os.getloadavg()
        try:
            out["models"][m] = run_model(m, args.data, meta, args)
            out["models"][m].update(load_avg_before=load0, load_avg_after=os.getloadavg())
            r = out["models"][m]
            print(f"RecBole {m}: test AUC {r['test']['auc']:.4f} logloss {r['test']['logloss']:.4f}; "
                  f"{r['mean_epoch_s']:.2f} s/epoch (best epoch {r['best_epoch']})", flush=True)
        except Exception as e:  # noqa: BLE001 - keep the other models' results
            import traceback

            traceback.print_exc()
            out["models"][m] = {"model": m, "error": f"{type(e).__name__}: {e}"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if all("error" not in r for r in out["models"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
