"""lsdata dataset -> RecBole 1.2.1 atomic files with the same samples (runs in the lsdata venv).

    python benchmarks/recbole/convert.py DATASET_DIR OUT_DIR [--seq-train targets|positives|prefixes]

``DATASET_DIR`` is made by ``lsdata ingest taobao FILE --out D && lsdata split D && lsdata layout D plain``
(``hpmn`` works too). Two RecBole datasets are written, each as RecBole *benchmark* files
(``benchmark_filename: [train, valid, test]``), so RecBole loads the three sets as given and does **no
re-splitting, no filtering and no prefix augmentation** (``SequentialDataset._change_feat_format`` skips
``data_augmentation`` when ``benchmark_filename`` is set; the history list is read from the file):

``OUT/lsdata_ctr/`` - DIN, DIEN (RecBole's sequential CTR setting: ``LABEL_FIELD: label``, labelled eval)::

    lsdata_ctr.{train,valid,test}.inter   user_id:token  item_id:token  item_id_list:token_seq
                                          neg_item_id_list:token_seq  label:float
    lsdata_ctr.item                       item_id:token  cate:token

  One row per lsdata sample (``layouts/plain/{split}.parquet``, same row order): the user, the candidate
  ``item`` (the true target or the drawn negative), its ``label``, and the history ``hist_item[:hist_len]`` -
  the events strictly before the target time, the most recent 300, oldest first, exactly the list lsdata's
  trainers read. ``cate`` reaches the models through the item file (in lsdata the category is a function of
  the item), which is how RecBole's ``ContextSeqEmbLayer`` embeds history and candidate (item + category).
  ``neg_item_id_list`` (DIEN's auxiliary-loss negatives, one per history position) is what RecBole's
  ``DIENDataset`` would otherwise build during prefix augmentation; with benchmark files RecBole cannot build
  it, so it comes from here: if ``layouts/mimn`` exists with the same history width (``lsdata layout D mimn
  --hist 300``), its ``neg_item`` - the very negatives lsdata's DIEN uses with ``--layout mimn --set
  aux_weight=1`` (uniform items never in the sample's shown history); otherwise drawn here once by RecBole's
  own rule (uniform, != the item at that position, seeded). ``meta.json: dien_negatives`` says which. DIN
  ignores the column.

``OUT/lsdata_seq/`` - GRU4Rec, Caser (next-item models, loss CE over all items)::

    lsdata_seq.{train,valid,test}.inter   user_id:token  item_id:token  item_id_list:token_seq  label:float
    lsdata_seq.item                       item_id:token  cate:token   (loaded but unused by these models)

  valid/test rows are the lsdata samples exactly as above (candidate + label + history); the models score the
  candidate with ``model.predict`` (dot product of the sequence state and the candidate embedding).
  train rows depend on ``--seq-train`` (a next-item loss has no use for a labelled random negative: CE treats
  every other item as a negative, so the label-0 rows cannot be fed as they are):

  * ``targets`` (default): one row per lsdata train sample, history -> the user's *true* target item
    (``sequences.item[target_pos]``), label 1. Same users, same histories, same number of rows per epoch as
    the lsdata trainers; for the ~50 % samples whose candidate was replaced by a negative this shows RecBole
    the true next item, which the labelled sample does not (a small information advantage for RecBole).
  * ``positives``: only the label-1 train samples (history -> candidate): strictly the lsdata information,
    but half the rows per epoch.
  * ``prefixes``: RecBole's usual setting: every event of a train user's sequence up to and including the
    train target becomes a next-item row whose history is the user's events strictly before it (most recent
    300; rows with no earlier event are left out): what RecBole's own ``data_augmentation`` does from a plain
    ``.inter``, but with lsdata's strict-time rule and only train users. Many more rows per epoch (about the
    mean history length times more): not comparable per epoch; for reference only.

Why pre-built lists and not a plain ``.inter`` of events: RecBole's ``data_augmentation`` turns every
prefix of each user's interaction list (sorted by user, time; ties in file order) into a sample, truncated to
``MAX_ITEM_LIST_LENGTH`` from the front, and then re-splits by ``eval_args`` (leave-one-out or ratios per user).
It has no global cut time, counts same-second events as history, and would train on ~100 samples per user
instead of lsdata's one - none of which is the lsdata protocol.

Also written: ``OUT/meta.json`` (counts, the maximum history length - RecBole's ``MAX_ITEM_LIST_LENGTH`` must
equal the padded list width - empty histories, the options). Users appear in exactly one set (one sample per
user under the cut-time split), so per-user embeddings (RecBole DIEN's user field, Caser's user embedding) are
never trained for valid/test users; that is RecBole's model design, kept as is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

SPLITS = ("train", "valid", "test")
MAX_HIST = 300  # lsdata's Taobao hpmn/plain history width


def read_layout(root: Path, split: str) -> pl.DataFrame:
    """user, label, item, cate, ts, hist (list, oldest first, <= width) from the plain or hpmn layout."""
    for name in ("plain", "hpmn"):
        p = root / "layouts" / name / f"{split}.parquet"
        if p.exists():
            df = pl.read_parquet(p, columns=["user", "label", "item", "cate", "ts", "hist_item", "hist_len"])
            width = df.schema["hist_item"].size
            lst = pl.col("hist_item").arr.to_list()
            # plain: real events first (post-padded); hpmn: zeros first (front-padded), most recent last
            hist = lst.list.head(pl.col("hist_len")) if name == "plain" else lst.list.tail(pl.col("hist_len"))
            return df.with_columns(hist.alias("hist")).drop("hist_item").with_columns(pl.lit(width).alias("width"))
    raise SystemExit(f"{root}: no layouts/plain or layouts/hpmn; run `lsdata layout {root} plain`")


def true_targets(root: Path, samples: pl.DataFrame) -> pl.DataFrame:
    """samples (user, split, ts, target_pos) + ``true_item`` = the user's event at target_pos."""
    parts = sorted((root / "sequences").glob("part-*.parquet"))
    seq = pl.concat([pl.read_parquet(p, columns=["user", "item"]) for p in parts])
    seq = seq.rename({"item": "seq_item"})
    return samples.join(seq, on="user", how="left").with_columns(
        pl.col("seq_item").list.get(pl.col("target_pos")).alias("true_item")
    ).drop("seq_item")


def prefix_rows(root: Path, train: pl.DataFrame, width: int) -> pl.DataFrame:
    """RecBole-style augmentation of train users' histories + target, with the strict-time history rule."""
    parts = sorted((root / "sequences").glob("part-*.parquet"))
    seq = pl.concat([pl.read_parquet(p, columns=["user", "item", "ts"]) for p in parts])
    t = train.select("user", "target_pos").join(seq, on="user", how="inner")
    rows_u, rows_i, rows_h = [], [], []
    for user, target_pos, items, ts in t.iter_rows():
        items = np.asarray(items[: target_pos + 1])  # every event up to and including the train target
        ts = np.asarray(ts[: target_pos + 1])
        ends = np.searchsorted(ts, ts, side="left")  # events strictly before each event's time
        for j in range(len(items)):
            if ends[j] == 0:
                continue
            rows_u.append(user)
            rows_i.append(int(items[j]))
            rows_h.append(items[max(0, ends[j] - width) : ends[j]].tolist())
    return pl.DataFrame(
        {"user": rows_u, "item": rows_i, "hist": rows_h, "label": [1] * len(rows_u)},
        schema={"user": pl.Int32, "item": pl.Int32, "hist": pl.List(pl.Int32), "label": pl.Int8},
    )


def mimn_negatives(root: Path, split: str, df: pl.DataFrame) -> pl.Series | None:
    """The mimn layout's per-position negatives for ``df``'s rows (None if absent or of another width)."""
    p = root / "layouts" / "mimn" / f"{split}.parquet"
    if not p.exists():
        return None
    m = pl.read_parquet(p, columns=["user", "ts", "neg_item", "hist_len"])
    if m.schema["neg_item"].size != int(df["width"][0]) if df.height else True:
        return None
    # front-padded like hpmn: the real negatives are the last hist_len positions, aligned with the history
    m = m.select("user", "ts", pl.col("neg_item").arr.to_list().list.tail(pl.col("hist_len")).alias("neg"), "hist_len")
    j = df.select("user", "ts", "hist_len").join(m, on=["user", "ts"], how="left", maintain_order="left")
    if j["neg"].null_count() or (j["hist_len"] != j["hist_len_right"]).any():
        raise SystemExit(f"layouts/mimn/{split}.parquet does not match the plain/hpmn layout's samples")
    return j["neg"]


def draw_negatives(hist: pl.Series, n_items: int, seed: int) -> pl.Series:
    """One uniform item in 1..n_items per history position, != the item at that position (RecBole's SeqSampler rule)."""
    rng = np.random.default_rng(seed)
    arr = hist.to_arrow()
    if hasattr(arr, "combine_chunks"):
        arr = arr.combine_chunks()
    pos = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    neg = rng.integers(1, n_items + 1, size=pos.size)
    clash = neg == pos
    while clash.any():
        neg[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
        clash = neg == pos
    lens = np.diff(offsets)
    return pl.Series("neg", np.split(neg.astype(np.int32), offsets[1:-1]) if lens.size else [], dtype=pl.List(pl.Int32))


def tokens(col: str) -> pl.Expr:
    """A list column as RecBole's token_seq text (space-separated, empty for an empty list)."""
    return pl.col(col).list.eval(pl.element().cast(pl.Utf8)).list.join(" ")


def write_inter(df: pl.DataFrame, path: Path, neg: bool) -> None:
    cols = [
        pl.col("user").cast(pl.Utf8).alias("user_id:token"),
        pl.col("item").cast(pl.Utf8).alias("item_id:token"),
        tokens("hist").alias("item_id_list:token_seq"),
    ]
    if neg:
        cols.append(tokens("neg").alias("neg_item_id_list:token_seq"))
    cols.append(pl.col("label").cast(pl.Float32).alias("label:float"))
    df.select(cols).write_csv(path, separator="\t", quote_style="never")


def write_items(root: Path, path: Path) -> int:
    v = pl.read_parquet(root / "vocab" / "item.parquet", columns=["id", "cate"]).sort("id")
    v.select(pl.col("id").cast(pl.Utf8).alias("item_id:token"), pl.col("cate").cast(pl.Utf8).alias("cate:token")).write_csv(
        path, separator="\t", quote_style="never"
    )
    return int(v["id"].max())


def convert(root: Path, out: Path, seq_train: str = "targets", seed: int = 2020) -> dict:
    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    samples = pl.read_parquet(root / "split" / "samples.parquet")
    if samples.group_by("split", "user").len()["len"].max() != 1:
        raise SystemExit("more than one sample per user in a set (leave-one-out split?): only the cut-time split is supported")
    ctr_dir, seq_dir = out / "lsdata_ctr", out / "lsdata_seq"
    for d in (ctr_dir, seq_dir):
        d.mkdir(parents=True, exist_ok=True)
    n_items = write_items(root, ctr_dir / "lsdata_ctr.item")
    write_items(root, seq_dir / "lsdata_seq.item")
    meta: dict = {"source": str(root.resolve()), "seq_train": seq_train, "seed": seed, "n_items": n_items, "sets": {}}
    max_len = 0
    width = MAX_HIST
    for i, split in enumerate(SPLITS):
        df = read_layout(root, split)
        width = int(df["width"][0]) if df.height else width
        # the layout rows are the samples: check them against samples.parquet (same user/candidate/label/hist_end)
        s = samples.filter(pl.col("split") == split)
        chk = df.select("user", "item", "label", "ts", "hist_len").join(
            s.select("user", "item", "label", "ts", "hist_end", "target_pos"), on=["user", "ts"], how="full", coalesce=True
        )
        bad = chk.filter(
            (pl.col("item") != pl.col("item_right"))
            | (pl.col("label") != pl.col("label_right"))
            | (pl.col("hist_len") != pl.min_horizontal(pl.col("hist_end"), width))
            | pl.col("item").is_null()
            | pl.col("item_right").is_null()
        )
        if bad.height:
            raise SystemExit(f"{split}: layout and samples.parquet disagree on {bad.height} rows:\n{bad.head()}")
        neg = mimn_negatives(root, split, df)
        meta["dien_negatives"] = "layouts/mimn neg_item" if neg is not None else "drawn (RecBole SeqSampler rule)"
        df = df.with_columns((neg if neg is not None else draw_negatives(df["hist"], n_items, seed + i)).alias("neg"))
        write_inter(df, ctr_dir / f"lsdata_ctr.{split}.inter", neg=True)
        if split == "train":
            if seq_train == "targets":
                tt = true_targets(root, s.select("user", "ts", "target_pos"))
                seq_df = df.join(tt.select("user", "ts", "true_item"), on=["user", "ts"], how="left").with_columns(
                    pl.col("true_item").alias("item"), pl.lit(1, pl.Int8).alias("label")
                )
            elif seq_train == "positives":
                seq_df = df.filter(pl.col("label") == 1)
            elif seq_train == "prefixes":
                seq_df = prefix_rows(root, s.select("user", "target_pos"), width)
            else:
                raise SystemExit(f"unknown --seq-train {seq_train!r}")
        else:
            seq_df = df
        write_inter(seq_df, seq_dir / f"lsdata_seq.{split}.inter", neg=False)
        lens = df["hist"].list.len()
        seq_lens = seq_df["hist"].list.len()
        max_len = max(max_len, int(lens.max() or 0), int(seq_lens.max() or 0))
        meta["sets"][split] = {
            "samples": df.height,
            "positives": int(df["label"].sum()),
            "empty_history": int((lens == 0).sum()),
            "mean_history": round(float(lens.mean() or 0), 2),
            "seq_rows": seq_df.height,
            "seq_empty_history": int((seq_lens == 0).sum()),
        }
    meta["max_hist_len"] = max_len
    meta["layout_width"] = width
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="lsdata dataset dir (ingest + split + layout plain/hpmn done)")
    ap.add_argument("out", type=Path, help="output dir for the RecBole atomic files")
    ap.add_argument("--seq-train", choices=["targets", "positives", "prefixes"], default="targets",
                    help="GRU4Rec/Caser training rows (see the module docstring)")
    ap.add_argument("--seed", type=int, default=2020, help="seed of DIEN's auxiliary negatives")
    a = ap.parse_args(argv)
    meta = convert(a.dataset, a.out, a.seq_train, a.seed)
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
