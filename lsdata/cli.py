"""The ``lsdata`` command line (Typer). Every stage is a thin wrapper over its module.

Exit status: 0 ok, 1 ``validate`` found violations, 2 bad input (one-line message, no traceback).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from lsdata import __version__
from lsdata.defaults import LAYOUTS, TAOBAO_BEHAVIORS, TAOBAO_WINDOW, IngestOptions, SplitOptions, parse_time
from lsdata.io import InputError, check_input_file, file_bytes
from lsdata.models import MODEL_NAMES

app = typer.Typer(
    help="lsdata: raw lifelong-behaviour dumps (Amazon, Taobao, XLong) -> leak-free Parquet layouts.\n\n"
    "Typical run: ingest -> split -> layout -> stats/validate. Every default is documented in lsdata/defaults.py.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)


class Dataset(str, Enum):
    taobao = "taobao"
    amazon = "amazon"
    xlong = "xlong"


class GenFormat(str, Enum):
    taobao = "taobao"
    amazon = "amazon"
    xlong = "xlong"
    longdep = "longdep"
    contextual = "contextual"


class Method(str, Enum):
    cut = "cut"
    loo = "loo"


class CategoryPath(str, Enum):
    last = "last"
    first = "first"


class Engine(str, Enum):
    single = "single"
    spark = "spark"


ENGINE_HELP = ("single: this process, one partition at a time (default). spark: Apache Spark through PySpark "
               "(pip install 'lsdata[spark]'; Java 17+), the same per-partition code and the same output files; "
               "Taobao, Amazon and XLong ingest and layouts; Taobao/Amazon split (lsdata/spark/__init__.py).")
SPARK_MASTER_HELP = ("--engine spark: Spark master URL: local[N] (N cores of this machine), spark://HOST:PORT, yarn, ... "
                     "Default local[2], or spark-submit's --master when run through lsdata/spark/submit.py. Inputs and "
                     "the output directory must be on a file system every executor sees.")


def _spark(master: str | None):
    from lsdata.spark import session

    return session(master)


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except InputError as e:
        _fail(str(e))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        _fail(f"{e.filename}: {e.strerror}")
    except ValueError as e:
        _fail(str(e))


@contextlib.contextmanager
def _bar(description: str, total: int | None, unit: str = "bytes") -> Iterator:
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn()]
    cols += [TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    quiet = not sys.stderr.isatty()
    with Progress(*cols, console=console, transient=True, disable=quiet) as p:
        task = p.add_task(description, total=total)
        yield lambda n: p.advance(task, n)


def _since(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f}s"


@app.command()
def ingest(
    dataset: Annotated[Dataset, typer.Argument(help="Source format family.")],
    paths: Annotated[list[Path], typer.Argument(help="Raw files, any order; plain, .gz, .bz2 or .zip (zip::member).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.")],
    strict: Annotated[bool, typer.Option(help="Stop at the first malformed row (file:line:field) instead of quarantining it.")] = False,
    partitions: Annotated[Optional[int], typer.Option(help=IngestOptions.model_fields["partitions"].description)] = None,
    behaviors: Annotated[Optional[str], typer.Option(help=f"Taobao: comma list of behaviours to keep ({','.join(TAOBAO_BEHAVIORS)}); default all.")] = None,
    keep_out_of_window: Annotated[bool, typer.Option(help="Taobao: keep rows outside the collection window (they are counted either way).")] = False,
    window: Annotated[Optional[str], typer.Option(help="Taobao: collection window START,END (unix seconds or ISO dates), half-open. "
                                                  f"Default {TAOBAO_WINDOW[0]},{TAOBAO_WINDOW[1]} (2017-11-25..12-03 UTC+8).")] = None,
    category_path: Annotated[CategoryPath, typer.Option(help="Amazon: leaf of the last category path (HPMN) or the first (MIMN).")] = CategoryPath.last,
    kind: Annotated[Optional[list[str]], typer.Option(help="Override a file's recognised kind: PATH=KIND (reviews, meta, ratings, behavior, xlong_train, xlong_test, graph_emb). Repeatable.")] = None,
    valid_fraction: Annotated[float, typer.Option(help="XLong: share of train lines carved out as validation.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed for random choices at ingest (XLong validation carve).")] = IngestOptions().seed,
    chunk_mb: Annotated[int, typer.Option(help="MiB of raw text parsed per batch (with --engine spark: also the byte span of a plain file each Spark task parses).")] = 64,
    engine: Annotated[Engine, typer.Option(help=ENGINE_HELP)] = Engine.single,
    spark_master: Annotated[Optional[str], typer.Option(help=SPARK_MASTER_HELP)] = None,
) -> None:
    """Parse raw files into events/, sequences/, item_events/, vocab/ (Parquet), quarantine.parquet and manifest.json."""
    from lsdata import ingest as ingest_mod

    with _errors():
        kinds = {}
        for k in kind or []:
            if "=" not in k:
                raise InputError(f"--kind expects PATH=KIND, got {k!r}")
            p, v = k.rsplit("=", 1)
            kinds[str(p)] = v
        opts = IngestOptions(
            strict=strict,
            partitions=partitions,
            chunk_bytes=chunk_mb << 20,
            behaviors=tuple(b.strip() for b in behaviors.split(",")) if behaviors else None,
            window=tuple(parse_time(x) for x in window.split(",")) if window else TAOBAO_WINDOW,
            keep_out_of_window=keep_out_of_window,
            category_path=category_path.value,
            kinds=kinds,
            xlong_valid_fraction=valid_fraction,
            seed=seed,
        )
        strs = [str(p) for p in paths]
        for p in strs:  # before sizing the progress bar, for the one-line error
            check_input_file(p)
        t0 = time.perf_counter()
        if engine is Engine.spark:
            from lsdata.spark import ingest as spark_ingest

            m = spark_ingest.ingest(_spark(spark_master), dataset.value, strs, out, opts)
        else:
            with _bar(f"ingest {dataset.value}", file_bytes(strs)) as advance:
                m = ingest_mod.ingest(dataset.value, strs, out, opts, progress=advance)
        _register(out)
    read = sum(s.rows_read for s in m.sources)
    kept = sum(s.rows_kept for s in m.sources)
    rej = sum(s.rows_rejected for s in m.sources)
    dropped = sum(s.rows_dropped for s in m.sources)
    console.print(
        f"ingested {dataset.value} -> {out}: {read:,} rows read = {kept:,} kept + {rej:,} quarantined + {dropped:,} dropped; "
        f"{m.users:,} users, {m.items:,} items, {m.cates:,} categories ({_since(t0)})"
    )
    for s in m.sources:
        extra = "; ".join(f"{k}: {v:,}" for k, v in {**s.dropped, **s.notes}.items())
        console.print(f"  {s.path} ({s.kind}): {s.rows_read:,} read, {s.rows_kept:,} kept, {s.rows_rejected:,} quarantined"
                      + (f" ({extra})" if extra else ""), highlight=False, markup=False)
    if rej:
        console.print(f"  quarantined rows: {out / 'quarantine.parquet'}")


@app.command()
def split(
    data: Annotated[Path, typer.Argument(help="Dataset directory (after ingest).")],
    cut_time: Annotated[Optional[str], typer.Option(help="Cut time (unix seconds or ISO date, naive = UTC): users whose last event is later go to test.")] = None,
    cut_quantile: Annotated[float, typer.Option(help="Cut = sorted users' last-event times at position int(q*n) (HPMN rule).")] = SplitOptions().cut_quantile,
    valid_quantile: Annotated[float, typer.Option(help="Validation carved from train by the same rule on train users' last events.")] = SplitOptions().valid_quantile,
    valid_cut_time: Annotated[Optional[str], typer.Option(help="Explicit validation cut (overrides --valid-quantile).")] = None,
    no_valid: Annotated[bool, typer.Option("--no-valid", help="Do not carve a validation set (not recommended: you will be tempted to select on test).")] = False,
    method: Annotated[Method, typer.Option(help="cut: global cut time (default). loo: leave-one-out per user - LEAKS GLOBAL TIME, only for comparison with papers that use it.")] = Method.cut,
    neg_ratio: Annotated[float, typer.Option(help="Probability that a sample's target is replaced by a uniform negative item.")] = SplitOptions().neg_ratio,
    pairs: Annotated[bool, typer.Option(help="Each target gives a positive AND a negative sample (MIMN Amazon protocol; makes GAUC defined) instead of a coin flip.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the label coin flips and negative draws.")] = SplitOptions().seed,
    engine: Annotated[Engine, typer.Option(help=ENGINE_HELP)] = Engine.single,
    spark_master: Annotated[Optional[str], typer.Option(help=SPARK_MASTER_HELP)] = None,
) -> None:
    """Choose each user's target and set (train/valid/test), label and negatives -> split/samples.parquet + report.json."""
    from lsdata import samples
    from lsdata.dataset import open_dataset

    with _errors():
        ds = open_dataset(data)
        opts = SplitOptions(
            method=method.value,
            cut_time=parse_time(cut_time) if cut_time else None,
            cut_quantile=cut_quantile,
            valid_quantile=None if no_valid else valid_quantile,
            valid_cut_time=parse_time(valid_cut_time) if valid_cut_time and not no_valid else None,
            neg_ratio=neg_ratio,
            pairs=pairs,
            seed=seed,
        )
        t0 = time.perf_counter()
        if engine is Engine.spark:
            from lsdata.spark import split as spark_split

            r = spark_split.build(_spark(spark_master), ds, opts)
        else:
            with _bar("split", len(ds.parts("sequences")), unit="parts") as advance:
                r = samples.build(ds, opts, progress=advance)
        _register(data)
    for w in r.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    cut = f"cut {r.cut_time}" if r.cut_time is not None else "leave-one-out"
    vc = f", valid cut {r.valid_cut_time}" if r.valid_cut_time is not None else ""
    sets = ", ".join(f"{k} {v.samples:,} samples/{v.users:,} users" for k, v in r.sets.items())
    console.print(f"split {data} ({cut}{vc}; {r.ties_at_cut} users tied at the cut went to train): {sets} ({_since(t0)})")


@app.command()
def layout(
    data: Annotated[Path, typer.Argument(help="Dataset directory (after split).")],
    names: Annotated[list[str], typer.Argument(help=f"Layouts to materialise: {', '.join(LAYOUTS)}.")],
    hist: Annotated[Optional[int], typer.Option(help="History width (events); default from the dataset preset.")] = None,
    side: Annotated[Optional[int], typer.Option(help="Item-side width; default from the preset.")] = None,
    short: Annotated[Optional[int], typer.Option(help="shan: short (recent) part width of the history.")] = None,
    side_short: Annotated[Optional[int], typer.Option(help="shan: short part width of the item side.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of mimn's negative history (default: the split's seed).")] = None,
    engine: Annotated[Engine, typer.Option(help=ENGINE_HELP)] = Engine.single,
    spark_master: Annotated[Optional[str], typer.Option(help=SPARK_MASTER_HELP)] = None,
) -> None:
    """Materialise fixed-width layouts under layouts/NAME/{train,valid,test}.parquet."""
    from lsdata import layouts
    from lsdata.dataset import open_dataset

    with _errors():
        ds = open_dataset(data)
        bad = [n for n in names if n not in LAYOUTS]
        if bad:
            raise InputError(f"unknown layout(s) {bad}; choose from {', '.join(LAYOUTS)}")
        ov = {k: v for k, v in dict(hist=hist, side=side, short=short, side_short=side_short).items() if v is not None}
        t0 = time.perf_counter()
        total = len(ds.parts("sequences")) if ds.name != "xlong" else None
        if engine is Engine.spark:
            from lsdata.spark import layouts as spark_layouts

            reps = spark_layouts.build(_spark(spark_master), ds, names, {n: ov for n in names}, seed=seed)
        else:
            with _bar("layout " + ",".join(names), total, unit="parts") as advance:
                reps = layouts.build(ds, names, {n: ov for n in names}, seed=seed, progress=advance)
        _register(data)
    for n, r in reps.items():
        rows = ", ".join(f"{k} {v:,}" for k, v in r.rows.items())
        console.print(f"layout {n} {r.widths}: {rows} -> {ds.layout_dir(n)}")
    console.print(f"done ({_since(t0)})")


@app.command()
def stats(
    data: Annotated[Path, typer.Argument(help="Dataset directory.")],
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG histogram of user-side and item-side lengths here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full statistics as JSON on stdout.")] = False,
    as_of_version: Annotated[Optional[int], typer.Option(help="Statistics as of this version (1 = the ingest; default the latest).")] = None,
) -> None:
    """Users, items, events, sequence-length quantiles, behaviour counts (and a plot)."""
    from lsdata import stats as stats_mod
    from lsdata.dataset import open_dataset

    with _errors():
        ds = open_dataset(data, as_of_version)
        s = stats_mod.compute(ds)
        if as_json:
            print(s.model_dump_json(indent=2))
        else:
            print(stats_mod.summary_line(s))
        if plot:
            console.print(f"plot: {stats_mod.plot(ds, plot)}")


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Dataset directory.")],
    max_rows: Annotated[Optional[int], typer.Option(help="Check at most this many rows per layout file (default all).")] = None,
    as_of_version: Annotated[Optional[int], typer.Option(help="Validate as of this version (1 = the ingest; default the latest).")] = None,
) -> None:
    """Re-check sort order, the split rule, leakage (nothing at/after a target's time) and schemas. Exit 1 on any violation."""
    from lsdata import validate as validate_mod
    from lsdata.dataset import open_dataset

    with _errors():
        problems = validate_mod.validate(open_dataset(data, as_of_version), max_rows=max_rows)
    if problems:
        for p in problems:
            print(p)
        console.print(f"[red]{len(problems)} violation(s)[/red]")
        raise typer.Exit(1)
    console.print(f"{data}: valid")


@app.command()
def generate(
    dataset: Annotated[GenFormat, typer.Argument(help="Format to generate: taobao, amazon, xlong, longdep (Taobao format with "
                                                  "planted long-range structure and a known Bayes-optimal rule for CTR, "
                                                  "lsdata/synth/longdep.py) or contextual (Taobao format, a long-range rule "
                                                  "for next-item prediction at ordinary positions, lsdata/synth/contextual.py).")],
    out: Annotated[Path, typer.Argument(help="Output file (taobao, longdep, contextual) or directory (amazon, xlong).")],
    rows: Annotated[int, typer.Option(help="taobao: number of rows.")] = 100_000,
    users: Annotated[int, typer.Option(help="amazon/xlong/longdep/contextual: number of users.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    bad_rate: Annotated[float, typer.Option(help="taobao: share of lines replaced by malformed ones.")] = 0.0,
) -> None:
    """Write synthetic raw files in a source's format (labelled synthetic by a sidecar .synthetic.json)."""
    with _errors():
        t0 = time.perf_counter()
        if dataset is GenFormat.taobao:
            from lsdata.synth import taobao

            paths = [taobao.generate(out, rows=rows, seed=seed, bad_rate=bad_rate)]
        elif dataset is GenFormat.longdep:
            from lsdata.synth import longdep

            paths = [longdep.generate(out, users=users, seed=seed)]
        elif dataset is GenFormat.contextual:
            from lsdata.synth import contextual

            paths = [contextual.generate(out, users=users, seed=seed)]
        elif dataset is GenFormat.amazon:
            from lsdata.synth import amazon

            paths = amazon.generate(out, n_users=users, seed=seed)
        else:
            from lsdata.synth import xlong

            paths = xlong.generate(out, n_users=users, seed=seed)
    for p in paths:
        console.print(f"wrote {p}")
    console.print(f"done ({_since(t0)})")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the demo datasets.")] = Path("out/demo"),
    sample_dir: Annotated[Path, typer.Option(help="Bundled sample data.")] = Path(__file__).resolve().parent.parent / "sample_data",
    train_model: Annotated[str, typer.Option("--train", help="Model trained on the Taobao sample at the end ('' = none).")] = "hpmn",
) -> None:
    """The main job on the bundled sample data: ingest -> split -> layouts -> validate (one summary line per
    dataset), then a short training run of --train on the Taobao sample."""
    from lsdata import ingest as ingest_mod
    from lsdata import layouts, samples
    from lsdata import stats as stats_mod
    from lsdata import validate as validate_mod
    from lsdata.dataset import open_dataset

    jobs = {
        "taobao": sorted(sample_dir.glob("taobao/*.csv")),
        "amazon": sorted(p for p in sample_dir.glob("amazon/*") if not p.name.endswith(".synthetic.json")),
        "xlong": sorted(p for p in sample_dir.glob("xlong/*.txt")),
    }
    with _errors():
        for name, files in jobs.items():
            if not files:
                raise InputError(f"no sample files for {name} under {sample_dir}")
            d = out / name
            ingest_mod.ingest(name, [str(f) for f in files], d)
            ds = open_dataset(d)
            if name != "xlong":
                samples.build(ds, SplitOptions())
            layouts.build(ds, ["plain", "hpmn", "shan", "mimn"])
            problems = validate_mod.validate(ds)
            if problems:
                raise InputError(f"{d}: validation failed: {problems[0]}")
            print(stats_mod.summary_line(stats_mod.compute(ds)) + " | valid")
        if train_model:
            from lsdata import train as train_mod
            from lsdata.defaults import TrainConfig

            cfg = TrainConfig(model=train_model, data=str(out / "taobao"), epochs=2, device="cpu")
            m = train_mod.train(cfg)
            t = m["test"]
            print(f"taobao: {train_model} trained {m['steps']} steps on {m['train_samples']} samples; valid-selected; "
                  f"test auc {_fmt(t['auc'])} logloss {_fmt(t['logloss'])} -> {out / 'taobao' / 'runs' / train_model}")


@app.command()
def schemas(
    check: Annotated[bool, typer.Option(help="Only check that schemas/ matches the code (exit 1 on drift).")] = False,
    directory: Annotated[Path, typer.Option(help="Where the JSON Schemas live.")] = Path("schemas"),
) -> None:
    """Write (or check) the JSON Schemas of every Parquet table and JSON document."""
    from lsdata.schemas import json_schemas, write_json_schemas

    if check:
        drift = [n for n, s in json_schemas().items()
                 if not (directory / f"{n}.schema.json").exists()
                 or json.loads((directory / f"{n}.schema.json").read_text()) != s]
        if drift:
            _fail(f"schemas out of date: {', '.join(drift)} (run `lsdata schemas`)", 1)
        console.print("schemas up to date")
        return
    for p in write_json_schemas(directory):
        console.print(f"wrote {p}")


def _parse_sets(items: list[str] | None) -> dict:
    """``key=value`` pairs; values parsed as JSON when they are valid JSON (numbers, lists, true/false)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise InputError(f"--set {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@app.command()
def train(
    model: Annotated[str, typer.Argument(help=f"Model to train: {', '.join(MODEL_NAMES)} (see `lsdata models`).")],
    data: Annotated[Path, typer.Argument(help="Dataset directory with a finished split and the model's layout.")],
    config: Annotated[Optional[Path], typer.Option(help="TOML file with TrainConfig fields (see lsdata/defaults.py); command-line options override it.")] = None,
    layout: Annotated[Optional[str], typer.Option(help="Layout to train on (default: the model's own, e.g. hpmn).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default DATA/runs/MODEL).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Model parameter override KEY=VALUE (repeatable; see `lsdata models`).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (default 2).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimiser steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size (default: the model's reference, 128).")] = None,
    eval_batch_size: Annotated[Optional[int], typer.Option(help="Scoring batch size (default 1024).")] = None,
    max_eval_rows: Annotated[Optional[int], typer.Option(help="Score only the first N rows of valid and test (quick benchmarks; default all).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default: the model's reference).")] = None,
    l2: Annotated[Optional[float], typer.Option(help="L2 weight on non-embedding, non-bias weights, 0.5*l2*sum(w^2) (default 0).")] = None,
    clip_value: Annotated[Optional[float], typer.Option(help="Clip gradient values to [-v, v] (default: the model's reference; off unless it clips).")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Validate every N steps (default: once per epoch).")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after N validations without a better validation AUC (default 2).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initialisation, shuffling and dropout (default 1111).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda (default auto).")] = None,
    amp: Annotated[Optional[bool], typer.Option(help="bfloat16 autocast on CUDA (default on).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes (default 0).")] = None,
    streaming: Annotated[Optional[bool], typer.Option(help="Stream Parquet row groups instead of loading the training split in memory.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last.pt.")] = False,
    loss: Annotated[Optional[str], typer.Option(help="Next-item models: ce (full softmax) | sampled_softmax | bce | bpr (default: the model paper's).")] = None,
    negatives: Annotated[Optional[int], typer.Option(help="Next-item models: sampled negatives per training target (default: the model's).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="Next-item models: uniform | popularity (training-target count^pop-alpha); never the positive (default: the model's).")] = None,
    pop_alpha: Annotated[Optional[float], typer.Option(help="Next-item models: popularity sampler exponent (default: the model's, else 1).")] = None,
    eval_negatives: Annotated[Optional[int], typer.Option(help="Next-item models: uniform negatives of the sampled evaluation, SASRec protocol (default 100).")] = None,
    select_on: Annotated[Optional[str], typer.Option(help="Next-item models: full | sampled, the ranking whose valid NDCG@10 selects the checkpoint (default full; both reported).")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Next-item models: a position is a target only with at least this many earlier events (default 1).")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Next-item models: every stride-th training position per user, back from the most recent (default 1 = all).")] = None,
    targets: Annotated[Optional[str], typer.Option(help="Next-item models: last (one target per training sample) | all (every position of a max_len window predicts its next event; default: the model's, all for sasrec and dman).")] = None,
    horizon: Annotated[Optional[int], typer.Option(help="Next-item models, --targets last: each training history also predicts the next horizon-1 training targets (Caser's T, 3 in its paper; default 1, one target per history).")] = None,
    tied_targets: Annotated[Optional[str], typer.Option(help="Next-item models, --targets all: earlier (a target tied in time with the event before it is predicted from the output at its last strictly earlier event; default) | skip (not counted).")] = None,
) -> None:
    """Train a model, select it on the validation split, score the test split once; writes config.json,
    log.csv, metrics.json, curve.png and checkpoints to the run directory. Works under `torchrun` (DDP).

    Next-item models (sasrec, gru4rec_next, stamp, caser_next, sdm, dman) read sequences/ directly (no layout):
    every position after the warm-up is a target with the most recent max_len earlier events as history
    (--targets all: trained as windows of max_len events where every position predicts its next event),
    split by the dataset's `lsdata split` protocol: cut (default: targets after the global cut time are test,
    validation carved before it) or loo (last event test, second last validation; LEAKS GLOBAL TIME: a training
    target can be later than another user's test target, use it only to compare with papers). Metrics: HR,
    Recall, NDCG, MRR at 10/20/50/100 over all items and over --eval-negatives sampled ones; the checkpoint is
    selected on validation NDCG@10."""
    import tomllib

    from lsdata.defaults import TrainConfig

    with _errors():
        conf: dict = {}
        if config is not None:
            conf = tomllib.loads(config.read_text())
        given = dict(layout=layout, out=str(out) if out else None, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                     eval_batch_size=eval_batch_size, max_eval_rows=max_eval_rows, lr=lr, l2=l2, clip_value=clip_value, eval_every=eval_every,
                     patience=patience, seed=seed, device=device, amp=amp, workers=workers, streaming=streaming, threads=threads)
        conf |= {k: v for k, v in given.items() if v is not None}
        nxt = dict(loss=loss, negatives=negatives, sampler=sampler, pop_alpha=pop_alpha, eval_negatives=eval_negatives,
                   select_on=select_on, warmup=warmup, stride=stride, targets=targets, tied_targets=tied_targets,
                   horizon=horizon)
        conf["next_item"] = {**conf.get("next_item", {}), **{k: v for k, v in nxt.items() if v is not None}}
        conf["params"] = {**conf.get("params", {}), **_parse_sets(set_)}
        conf |= {"model": model, "data": str(data)}
        try:
            cfg = TrainConfig.model_validate(conf)
        except Exception as e:  # pydantic ValidationError -> one readable line
            raise InputError(f"invalid training config: {e}".replace("\n", "; ")) from e
        from lsdata import train as train_mod

        cols = [TextColumn("[bold]train " + model), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*cols, console=console, transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("train", total=None, info="")

            def progress(ev: dict) -> None:
                info = f"loss {ev['loss']:.4f}  {ev['samples_per_s']:,.0f} samples/s" if "loss" in ev else None
                bar.update(task, completed=ev["step"], total=ev["total"], **({"info": info} if info else {}))

            try:
                m = train_mod.train(cfg, resume=resume, progress=progress)
            except Exception as e:
                if type(e).__name__ == "ValidationError":
                    raise InputError(f"invalid model parameters for {model}: {e}".replace("\n", "; ")) from e
                raise
    if m and "full" in m["test"]:
        t, v = m["test"], m["valid"] or {}
        console.print(f"{model}: valid ndcg@10 {_fmt(v.get(cfg.next_item.select_on, {}).get('ndcg@10'))} | test ndcg@10 "
                      f"{_fmt(t['full']['ndcg@10'])} hr@10 {_fmt(t['full']['hr@10'])} (full ranking, {t['n']} targets), "
                      f"sampled ndcg@10 {_fmt(t['sampled']['ndcg@10'])} hr@10 {_fmt(t['sampled']['hr@10'])} | {m['steps']} steps "
                      f"-> {cfg.out or Path(cfg.data) / 'runs' / model}")
    elif m:
        t, v = m["test"], m["valid"] or {}
        rate = m["train_samples_per_s"]
        console.print(f"{model}: valid auc {_fmt(v.get('auc'))} | test auc {_fmt(t['auc'])} logloss {_fmt(t['logloss'])} "
                      f"gauc {_fmt(t['gauc'])} ({t['gauc_users']} users) | {m['steps']} steps, "
                      f"{(f'{rate:,.0f}' if rate else '-')} samples/s -> {cfg.out or Path(cfg.data) / 'runs' / model}")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory written by `lsdata train`.")],
    split: Annotated[str, typer.Option(help="train | valid | test.")] = "test",
    data: Annotated[Optional[Path], typer.Option(help="Score on another dataset directory (same layout and vocab sizes).")] = None,
) -> None:
    """Score a trained run's best checkpoint on a split; prints the metrics as JSON."""
    from lsdata import train as train_mod

    with _errors():
        if split not in ("train", "valid", "test"):
            raise InputError(f"--split {split!r}: choose train, valid or test")
        print(json.dumps(train_mod.evaluate_run(run, split, str(data) if data else None), indent=2))


@app.command("models")
def models_() -> None:
    """List the registered models with their default layout, reference training defaults and parameters."""
    from lsdata import models

    for name in models.names():
        cls = models.get(name)
        print(f"{name}  (layout {cls.layout}; {', '.join(f'{k}={v}' for k, v in cls.train_defaults.items())}"
              f"{'; incremental' if cls.incremental else ''})")
        for k, f in cls.Params.model_fields.items():
            print(f"    {k} = {f.default!r}: {f.description or ''}")
        for ds, pre in cls.presets.items():
            print(f"    preset {ds}: {pre}")


@app.command()
def retrieve(
    data: Annotated[Path, typer.Argument(help="Dataset directory (after ingest; any version).")],
    requests: Annotated[Path, typer.Argument(help="Parquet (or .csv) table of requests: user, ts (unix seconds or datetime), "
                                                  "optional item (candidate), cate, label.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write (one row per request, in request order).")],
    layout_name: Annotated[str, typer.Option("--layout", help=f"Layout of the rows: {', '.join(LAYOUTS)}.")] = "hpmn",
    as_of_version: Annotated[Optional[int], typer.Option(help="Read the dataset as of this version (1 = the ingest; default the latest).")] = None,
    raw_ids: Annotated[bool, typer.Option(help="user/item are raw ids (mapped through the vocabulary; unknown ones get an empty "
                                               "history/item side) instead of dense 1-based ids.")] = False,
    hist: Annotated[Optional[int], typer.Option(help="History width; default the built layout's (layouts/NAME/report.json), else the preset.")] = None,
    side: Annotated[Optional[int], typer.Option(help="Item-side width; default as --hist.")] = None,
    short: Annotated[Optional[int], typer.Option(help="shan: short (recent) part of the history.")] = None,
    side_short: Annotated[Optional[int], typer.Option(help="shan: short part of the item side.")] = None,
    batch: Annotated[int, typer.Option(help="Requests per chunk (memory ~ batch x 9 x hist bytes).")] = 1 << 16,
    seed: Annotated[Optional[int], typer.Option(help="mimn: seed of the negative history (default: the split's seed).")] = None,
) -> None:
    """Point-in-time retrieval: for each request, the user's history strictly before ts (events in the same second
    excluded, as in the layouts) and the candidate's item side, in a layout's columns. A request equal to a built
    sample returns exactly that sample's layout row."""
    from lsdata import retrieve as retrieve_mod
    from lsdata.dataset import open_dataset

    with _errors():
        if layout_name not in LAYOUTS:
            raise InputError(f"--layout {layout_name!r}: choose from {', '.join(LAYOUTS)}")
        ds = open_dataset(data, as_of_version)
        ov = dict(hist=hist, side=side, short=short, side_short=side_short)
        t0 = time.perf_counter()
        r = retrieve_mod.retrieve_to_file(ds, requests, layout_name, out, ov, raw_ids=raw_ids, batch=batch, seed=seed)
    unknown = f"; unknown users {r.unknown_users:,}, items {r.unknown_items:,}" if raw_ids else ""
    console.print(f"retrieved {r.rows:,} rows ({r.layout} {r.widths}, version {r.version}; {r.empty_history:,} with an empty "
                  f"history{unknown}) -> {out} ({_since(t0)})")


@app.command()
def append(
    data: Annotated[Path, typer.Argument(help="Dataset directory (after ingest) to add a version to.")],
    paths: Annotated[list[Path], typer.Argument(help="New raw files in any format the dataset's source reads (plain, .gz, .bz2, .zip).")],
    strict: Annotated[Optional[bool], typer.Option("--strict/--no-strict", help="Stop at the first malformed row (default: as the ingest did).")] = None,
) -> None:
    """Add events as a new version: only the touched users' sequences are rewritten, vocab ids of earlier versions
    never change (new ids are appended), earlier versions stay readable (--as-of-version), a file already in the
    dataset's lineage (same sha256) is refused. split/ and layouts/ (built from the previous version) are removed.
    Options of the ingest (behaviours, window, category path) apply to the new files too."""
    from lsdata import append as append_mod

    with _errors():
        strs = [str(p) for p in paths]
        for p in strs:
            check_input_file(p)
        t0 = time.perf_counter()
        with _bar(f"append {data}", file_bytes(strs)) as advance:
            v = append_mod.append(data, strs, strict=strict, progress=advance)
        _register(data)
    console.print(f"appended version {v.version} to {data}: {v.events_added:,} events, {v.users_touched:,} users touched "
                  f"({v.users_new:,} new), {v.items_new:,} new items, {v.quarantined:,} quarantined; now {v.events:,} events, "
                  f"{v.users:,} users, {v.items:,} items ({_since(t0)})")


def _register(data: Path) -> None:
    """Record a dataset in the catalog (lsdata/catalog.py); a catalog that cannot be written only warns."""
    from lsdata import catalog

    if catalog.catalog_path() is None:
        return
    try:
        catalog.register(data)
    except Exception as e:  # never fail a finished stage over its catalog entry
        console.print(f"[yellow]warning:[/yellow] catalog {catalog.catalog_path()} not updated: {type(e).__name__}: {e}")


store_app = typer.Typer(
    help="The catalog of built datasets (DuckDB file: --catalog, else $LSDATA_CATALOG, else ~/.lsdata/catalog.duckdb; "
    "LSDATA_CATALOG=off stops ingest/split/layout/append from registering automatically).",
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")
CatalogOpt = Annotated[Optional[Path], typer.Option("--catalog", help="Catalog file (default $LSDATA_CATALOG, else ~/.lsdata/catalog.duckdb).")]


@store_app.command("add")
def store_add(
    data: Annotated[Path, typer.Argument(help="Dataset directory to register (or refresh).")],
    name: Annotated[Optional[str], typer.Option(help="Catalog name (default: the directory name, made unique).")] = None,
    catalog_file: CatalogOpt = None,
) -> None:
    """Register a dataset: its sources (lineage), versions, counts, split and layouts, read from its own records."""
    from lsdata import catalog

    with _errors():
        n = catalog.register(data, name, catalog_file)
    console.print(f"registered {n} -> {data.resolve()} in {catalog.catalog_path(catalog_file)}")


@store_app.command("list")
def store_list(
    catalog_file: CatalogOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every registered dataset: name, source, latest version, events/users/items, layouts built, path."""
    from lsdata import catalog

    with _errors():
        rows = catalog.list_datasets(catalog_file)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    t = Table("name", "source", "version", "events", "users", "items", "layouts", "path")
    for r in rows:
        t.add_row(r["name"], r["source"], str(r["version"]), f"{r['events']:,}", f"{r['users']:,}", f"{r['items']:,}",
                  r["layouts"] or "-", r["path"] + ("" if r["exists"] else " (missing)"))
    Console(soft_wrap=True).print(t)


@store_app.command("show")
def store_show(
    name: Annotated[str, typer.Argument(help="Catalog name or dataset directory.")],
    catalog_file: CatalogOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """One dataset: sources with sha256 (lineage), ingest options, versions with counts, split and layouts built."""
    from lsdata import catalog

    with _errors():
        d = catalog.show(name, catalog_file)
    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return
    out = Console(soft_wrap=True)
    out.print(f"{d['name']} ({d['source']}{', synthetic' if d['synthetic'] else ''}) at {d['path']}; lsdata {d['lsdata_version']}, "
              f"{d['partitions']} partitions, registered {d['registered_at']} UTC", highlight=False)
    out.print(f"options: {json.dumps(d['options'])}", highlight=False, markup=False)
    out.print("versions:")
    for v in d["versions"]:
        out.print(f"  v{v['version']}: {v['events']:,} events, {v['users']:,} users, {v['items']:,} items, {v['cates']:,} cates "
                  f"(+{v['events_added']:,} events, {v['users_touched']:,} users touched, {v['quarantined']:,} quarantined)", highlight=False)
    out.print("sources (lineage):")
    for s in d["sources"]:
        out.print(f"  [{s['src_file']}] v{s['version']} {s['file']} ({s['kind']}, sha256 {s['sha256'][:16]}..., {s['bytes']:,} bytes): "
                  f"{s['rows_read']:,} read, {s['rows_kept']:,} kept, {s['rows_rejected']:,} rejected, {s['rows_dropped']:,} dropped",
                  highlight=False, markup=False)
    for s in d["splits"]:
        out.print(f"split (from v{s['from_version']}): {s['method']}, cut {s['cut_time']}, train/valid/test {s['train']:,}/{s['valid']:,}/{s['test']:,}",
                  highlight=False)
    for lay in d["layouts"]:
        out.print(f"layout {lay['layout']} (from v{lay['from_version']}) {lay['widths']}: train/valid/test "
                  f"{lay['train']:,}/{lay['valid']:,}/{lay['test']:,}", highlight=False, markup=False)


@store_app.command("remove")
def store_remove(
    name: Annotated[str, typer.Argument(help="Catalog name or dataset directory.")],
    catalog_file: CatalogOpt = None,
) -> None:
    """Forget a dataset in the catalog (its directory is left alone)."""
    from lsdata import catalog

    with _errors():
        path = catalog.remove(name, catalog_file)
    console.print(f"removed {name} ({path}) from the catalog")


from lsdata.serve.cli import serve_app  # noqa: E402 (its commands use _errors and console above)

app.add_typer(serve_app, name="serve")


@app.command()
def version() -> None:
    """Print the lsdata version."""
    print(__version__)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
