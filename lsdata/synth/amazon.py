"""Synthetic Amazon 2014-style files: a 5-core-like reviews ``.json.gz`` and a Python-literal meta file.

What it writes (both deterministic for a seed, byte for byte):

* ``reviews_Synthetic_5.json.gz``: strict JSON lines with the 2014 keys ``reviewerID, asin,
  reviewerName, helpful, reviewText, overall, summary, unixReviewTime, reviewTime``;
  ``unixReviewTime`` has day resolution (midnight UTC, as in the real files) so same-day ties occur;
  every user has at least ``min_reviews`` reviews of distinct items (items Zipf-popular); lines sorted
  by asin, then time, as the real 5-core files are;
* ``meta_Synthetic.json``: one Python dict literal per line (``repr`` of a dict: single quotes, the
  2014 "loose" format that ``json.loads`` rejects) with ``asin, title, price, salesRank, imUrl,
  categories``; ``categories`` holds 1-3 paths of a small category tree, so the first and the last
  path usually have different leaves (MIMN vs HPMN rule). A fraction ``missing_meta`` of the items gets
  no meta record (their reviews then carry the unknown category).

Every file gets a ``FILE.synthetic.json`` sidecar (generator, params, ``"synthetic": true``); ingest
then marks the dataset ``synthetic``.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lsdata.synth import write_sidecar

GENERATOR = "lsdata.synth.amazon"
REVIEWS_NAME = "reviews_Synthetic_5.json.gz"
META_NAME = "meta_Synthetic.json"
DAY = 86_400
T0 = int(datetime(2004, 1, 1, tzinfo=timezone.utc).timestamp())
T1 = int(datetime(2014, 7, 20, tzinfo=timezone.utc).timestamp())
# a small category tree: top level -> second level -> leaves
TREE = {
    "Books": {
        "Literature & Fiction": ["Classics", "Poetry", "Short Stories"],
        "Children's Books": ["Fairy Tales", "Picture Books"],
        "History": ["Ancient", "Military", "World"],
    },
    "Electronics": {
        "Computers & Accessories": ["Cables & Accessories", "Keyboards", "Monitors"],
        "Camera & Photo": ["Lenses", "Tripods"],
    },
    "Musical Instruments": {
        "Instrument Accessories": ["Guitar Strings", "Picks", "Cables"],
        "Studio Recording Equipment": ["Microphones", "Pop Filters"],
    },
}
PATHS = [[top, mid, leaf] for top, mids in TREE.items() for mid, leaves in mids.items() for leaf in leaves]
WORDS = np.array(
    "great good fine works perfect poor value quality sound book story cable nice solid cheap "
    "recommend love classic would buy again it's okay".split()
)
ALNUM = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


def _ids(rng: np.random.Generator, n: int, prefix: str, width: int) -> list[str]:
    """``n`` distinct random ids shaped like reviewer ids / asins, in draw order (deterministic)."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        for row in rng.choice(ALNUM, size=(n - len(ids), width)):
            s = prefix + "".join(row)
            if s not in seen:
                seen.add(s)
                ids.append(s)
    return ids


def _words(rng: np.random.Generator, k: int) -> str:
    return " ".join(WORDS[rng.integers(0, len(WORDS), size=k)]).capitalize()


def _sidecar(path: Path, fmt: str, params: dict) -> None:
    write_sidecar(path, GENERATOR, fmt, params, "synthetic data in the Amazon 2014 review/meta format; not real Amazon data")


def generate(
    out_dir: str | Path,
    n_users: int = 200,
    n_items: int = 80,
    seed: int = 0,
    min_reviews: int = 5,
    mean_extra_reviews: float = 5.0,
    zipf_a: float = 1.0,
    missing_meta: float = 0.0,
) -> list[Path]:
    """Write the reviews and meta files into ``out_dir``; returns ``[reviews_path, meta_path]``."""
    if n_items < min_reviews:
        raise ValueError(f"n_items ({n_items}) must be >= min_reviews ({min_reviews})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users = _ids(rng, n_users, "A", 13)
    items = _ids(rng, n_items, "B00", 7)
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf_a
    pop = pop[rng.permutation(n_items)]
    pop /= pop.sum()

    lens = np.minimum(min_reviews + rng.poisson(mean_extra_reviews, size=n_users), n_items)
    rows = []
    for u, k in zip(users, lens, strict=True):
        chosen = rng.choice(n_items, size=int(k), replace=False, p=pop)
        start = rng.integers(T0 // DAY, T1 // DAY)
        days = np.minimum(start + np.cumsum(rng.geometric(0.02, size=int(k)) - 1), T1 // DAY)
        ratings = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], size=int(k), p=[0.05, 0.05, 0.1, 0.3, 0.5])
        for i, d, r in zip(chosen, days, ratings, strict=True):
            ts = int(d) * DAY
            up = int(rng.integers(0, 5))
            rows.append(
                {
                    "reviewerID": u,
                    "asin": items[i],
                    "reviewerName": f"Reader {u[-4:]}",
                    "helpful": [up, up + int(rng.integers(0, 3))],
                    "reviewText": _words(rng, int(rng.integers(5, 20))) + ".",
                    "overall": float(r),
                    "summary": _words(rng, int(rng.integers(1, 4))),
                    "unixReviewTime": ts,
                    "reviewTime": datetime.fromtimestamp(ts, timezone.utc).strftime("%m %d, %Y").replace(" 0", " "),
                }
            )
    rows.sort(key=lambda r: (r["asin"], r["unixReviewTime"], r["reviewerID"]))
    reviews = out / REVIEWS_NAME
    text = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    with open(reviews, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(text)

    meta = out / META_NAME
    has_meta = rng.random(n_items) >= missing_meta
    lines = []
    for i, asin in enumerate(items):
        n_paths = int(rng.integers(1, 4))
        picks = rng.choice(len(PATHS), size=n_paths, replace=False)
        cats = [PATHS[p][: int(rng.integers(1, 4))] if j else list(PATHS[p]) for j, p in enumerate(picks)]
        rec = {
            "asin": asin,
            "title": _words(rng, int(rng.integers(2, 6))),
            "price": round(float(rng.uniform(1, 100)), 2),
            "salesRank": {cats[0][0]: int(rng.integers(1, 2_000_000))},
            "imUrl": f"http://ecx.images-amazon.com/images/I/{asin}.jpg",
            "categories": cats,
        }
        if has_meta[i]:
            lines.append(repr(rec) + "\n")
    meta.write_text("".join(lines), encoding="utf-8")

    params = {
        "n_users": n_users, "n_items": n_items, "seed": seed, "min_reviews": min_reviews,
        "mean_extra_reviews": mean_extra_reviews, "zipf_a": zipf_a, "missing_meta": missing_meta,
        "reviews": len(rows), "meta_records": len(lines),
    }
    _sidecar(reviews, "Amazon 2014 reviews (strict JSON lines, gzip)", params)
    _sidecar(meta, "Amazon 2014 meta (Python dict literal per line)", params)
    return [reviews, meta]
