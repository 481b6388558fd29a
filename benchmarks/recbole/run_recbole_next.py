"""Train RecBole 1.2.1's next-item models on an atomic ``.inter`` with leave-one-out, full ranking (RecBole venv).

Called by ``benchmarks/recbole_nextitem.py`` (which writes the ``.inter`` from lsdata's own event order and
checks everything this script dumps); it runs in the RecBole venv (see ``run_recbole.py`` for the pins)::

    python benchmarks/recbole/run_recbole_next.py --data DIR --dataset NAME --json OUT.json \\
        --models SASRec GRU4Rec Caser STAMP SHAN --seeds 2020 2021 2022 --epochs 50 --patience 5 --threads 1

For every model and seed this builds RecBole's own ``Config`` / ``create_dataset`` / ``data_preparation`` /
``get_model`` / ``get_trainer`` (what ``run_recbole`` does) with ``eval_args`` = split ``{LS: valid_and_test}``,
order ``TO``, group by user, mode ``full`` (every item ranked, RecBole's default), metrics NDCG@10 and Hit@10,
``MAX_ITEM_LIST_LENGTH`` 50, no filtering (RecBole's defaults filter nothing), and the model's own RecBole
defaults (``properties/model/*.yaml``: d 64, CE over all items, batch 2048, Adam 1e-3). Then, per epoch:
``trainer._train_epoch`` (timed: the training wall time of the epoch, batches and their data loading included,
evaluation excluded), ``trainer._valid_epoch`` (RecBole's full-sort evaluation of the validation targets),
early stopping after ``--patience`` epochs without a better validation NDCG@10 (RecBole's ``stopping_step``),
at most ``--epochs``; the best epoch's weights (kept in memory) are scored once on test with
``trainer.evaluate``. Torch anomaly detection, which importing RecBole's model zoo switches on
(``sequential_recommender/sine.py``), is switched off again, as in ``run_recbole.py``.

Dumped for the caller to check (``--dump``):

* ``split-L{L}.json``: per set the RecBole user and target tokens (= lsdata's dense ids, as written) of every
  validation and test row, each row's history tokens (most recent last, at most L = the model's
  ``MAX_ITEM_LIST_LENGTH``) and the number of training rows; written from the first model with that L (the
  split does not depend on the model);
* per run, the 0-based rank of each test target among all items with RecBole's own full-sort scores
  (``trainer._full_sort_batch_eval``: padding scored -inf, nothing else masked), ties counted against the
  target, so that the caller can recompute NDCG@10/HR@10 with lsdata's metric code and compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_recbole import cpu_run_config, machine  # noqa: E402  (same directory, stdlib + numpy only at import)

MODELS = ("SASRec", "GRU4Rec", "Caser", "STAMP", "SHAN")


def build_config(model: str, data: Path, args, seed: int) -> dict:
    return {
        "data_path": str(data.resolve()),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len_for.get(model, args.max_len),
        "train_neg_sample_args": None,  # CE over all items (RecBole's default loss_type for all five)
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["NDCG", "Hit"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 8,
        "epochs": args.epochs,
        "stopping_step": args.patience,
        "eval_batch_size": 4096,
        **cpu_run_config(seed, args.work),
    }


def tokens(ds, field: str, ids) -> list[int]:
    return [int(t) for t in ds.id2token(field, np.asarray(ids))]


def dump_split(built: dict, config) -> dict:
    """Users, targets and histories (lsdata ids, most recent last) of valid and test; training row count."""
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    seq, n = iid + config["LIST_SUFFIX"], config["ITEM_LIST_LENGTH_FIELD"]
    out = {"train_rows": len(built["train"])}
    for name in ("valid", "test"):
        d = built[name]
        inter = d.inter_feat
        hist = inter[seq].numpy()
        lens = inter[n].numpy()
        out[name] = {
            "user": tokens(d, uid, inter[uid].numpy()),
            "target": tokens(d, iid, inter[iid].numpy()),
            "history": [tokens(d, iid, h[:k]) for h, k in zip(hist, lens)],  # post-padded: real items first
        }
    return out


def test_ranks(trainer, loader) -> np.ndarray:
    """0-based rank of each test target among all items, RecBole's full-sort scores, ties against the target."""
    import torch

    trainer.model.eval()
    ranks = []
    with torch.no_grad():
        for batch in loader:
            _, scores, pos_u, pos_i = trainer._full_sort_batch_eval(batch)
            target = scores[pos_u, pos_i]
            ranks.append(((scores >= target[:, None]).sum(1) - 1).numpy())
    return np.concatenate(ranks)


def run_model(model_name: str, seed: int, args, want_split: bool) -> tuple[dict, dict | None]:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = Config(model=model_name, dataset=args.dataset, config_dict=build_config(model_name, args.data, args, seed))
    init_seed(config["seed"], config["reproducibility"])
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    load_s = time.perf_counter() - t0
    built = {"train": train_data.dataset, "valid": valid_data.dataset, "test": test_data.dataset}
    split = dump_split(built, config) if want_split else None
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    anomaly = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(False)  # see the module doc
    epochs, best, bad = [], None, 0
    for epoch in range(args.epochs):
        t = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        dt = time.perf_counter() - t
        loss = float(sum(loss)) if isinstance(loss, tuple) else float(loss)
        t = time.perf_counter()
        v_score, v_res = trainer._valid_epoch(valid_data, show_progress=False)
        ev = time.perf_counter() - t
        epochs.append({"epoch": epoch, "train_s": round(dt, 3), "loss": round(loss / max(len(train_data), 1), 5),
                       "valid_ndcg@10": float(v_score), "valid_hit@10": float(v_res["hit@10"]), "valid_s": round(ev, 3)})
        print(f"  {model_name} seed {seed} epoch {epoch}: train {dt:.1f}s loss {epochs[-1]['loss']:.4f} "
              f"valid NDCG@10 {v_score:.4f}", flush=True)
        if best is None or v_score > best[0]:
            best, bad = (float(v_score), epoch, copy.deepcopy(model.state_dict())), 0
        else:
            bad += 1
            if bad >= args.patience:
                break
    model.load_state_dict(best[2])
    res = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    ranks = test_ranks(trainer, test_data)
    out = {
        "model": model_name, "seed": seed, "rows": {k: len(d) for k, d in built.items()},
        "n_items": int(dataset.item_num - 1), "params": sum(p.numel() for p in model.parameters()),
        "load_s": round(load_s, 2), "epoch_seconds": [e["train_s"] for e in epochs], "epochs": epochs,
        "best_epoch": best[1], "valid": {"ndcg@10": best[0]},
        "test": {"ndcg@10": float(res["ndcg@10"]), "hr@10": float(res["hit@10"]), "n": int(ranks.size)},
        "test_ranks": ranks.tolist(),
        "settings": {k: v for k, v in config.final_config_dict.items() if k in (
            "embedding_size", "hidden_size", "n_layers", "n_heads", "inner_size", "hidden_dropout_prob",
            "attn_dropout_prob", "dropout_prob", "num_layers", "nv", "nh", "reg_weight", "short_item_length",
            "loss_type", "MAX_ITEM_LIST_LENGTH", "train_batch_size", "learning_rate", "learner", "weight_decay",
            "transform")},
        "anomaly_mode": {"enabled_by_recbole_import": anomaly, "used": False},
    }
    return out, split


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="directory holding DATASET/DATASET.inter")
    ap.add_argument("--dataset", required=True, help="RecBole dataset name (the .inter file's stem)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--patience", type=int, default=5, help="epochs without a better valid NDCG@10 (stopping_step)")
    ap.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    ap.add_argument("--max-len-for", nargs="*", default=[], metavar="MODEL=L", help="MAX_ITEM_LIST_LENGTH of one model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn.enabled = False (see run_recbole.py)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recbole-next-work"), help="cwd for RecBole's log/ saved/")
    ap.add_argument("--json", type=Path, required=True, help="results JSON (rewritten after every run)")
    ap.add_argument("--dump", type=Path, help="write split-L{L}.json here (users, targets, histories of valid/test)")
    args = ap.parse_args(argv)
    args.max_len_for = {k: int(v) for k, v in (x.split("=", 1) for x in args.max_len_for)}
    sys.argv = sys.argv[:1]  # RecBole's Config also parses sys.argv
    import torch

    torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    args.data = args.data.resolve()
    args.json = args.json.resolve()
    if args.dump:
        args.dump = args.dump.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)
    out = {"machine": {**machine(), "mkldnn": torch.backends.mkldnn.enabled}, "epochs": args.epochs,
           "patience": args.patience, "runs": []}
    failed = 0
    for m in args.models:
        for seed in args.seeds:
            print(f"RecBole {m} seed {seed} ...", flush=True)
            load0 = os.getloadavg()
            try:
                dump = args.dump / f"split-L{args.max_len_for.get(m, args.max_len)}.json" if args.dump else None
                r, split = run_model(m, seed, args, want_split=bool(dump) and not dump.exists())
                r.update(load_avg_before=load0, load_avg_after=os.getloadavg())
                if split is not None:
                    dump.parent.mkdir(parents=True, exist_ok=True)
                    dump.write_text(json.dumps(split) + "\n")
                print(f"RecBole {m} seed {seed}: test NDCG@10 {r['test']['ndcg@10']:.4f} HR@10 {r['test']['hr@10']:.4f}; "
                      f"{np.median(r['epoch_seconds']):.2f} s/epoch (best epoch {r['best_epoch']})", flush=True)
            except Exception as e:  # noqa: BLE001 - keep the other runs
                import traceback

                traceback.print_exc()
                r, failed = {"model": m, "seed": seed, "error": f"{type(e).__name__}: {e}"}, failed + 1
            out["runs"].append(r)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
