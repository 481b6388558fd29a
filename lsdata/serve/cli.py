"""``lsdata serve ...``: start the HTTP service, warm up, snapshot, list snapshots, roll back.

Heavy imports (torch, FastAPI) happen inside the commands, so ``lsdata --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

serve_app = typer.Typer(
    help="Online serving of an incremental model's per-user state (HTTP: POST /events, POST /score, GET /users/ID). "
    "The state lives in an embedded SQLite file (default RUN/serve/state.sqlite) or in Redis (--store redis://HOST:PORT/DB); "
    "a store is pinned to one model version (sha256 of the run's config.json and checkpoint).",
    no_args_is_help=True,
)

RunArg = Annotated[Path, typer.Argument(help="Run directory of an incremental model (config.json + best.pt), from `lsdata train`.")]
StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", help="State store: a SQLite file path (embedded, no server; default RUN/serve/state.sqlite) or "
    "redis://HOST:PORT/DB (for several server processes or hosts).")]
NamespaceOpt = Annotated[str, typer.Option(help="Redis key prefix (keys NS:meta and NS:u:USER); ignored for SQLite.")]
SnapDirOpt = Annotated[Optional[Path], typer.Option(
    "--snapshot-dir", help="Directory of the snapshots (NAME.sqlite files); default RUN/serve/snapshots.")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Dataset directory (vocabularies, warm-up sequences); default: the one the run was trained on.")]
ResetOpt = Annotated[bool, typer.Option(
    "--reset", help="Discard a store that holds another model version's state (or an interrupted warm-up/rollback) "
    "instead of refusing it.")]
DaysOpt = Annotated[Optional[float], typer.Option(
    "--warmup-days", min=0.0, help="Replace the state by a warm-up over the last N days of every user's stored "
    "sequence, counted back from --warmup-until or else the dataset's last event (MIMN: 120).")]
AllOpt = Annotated[bool, typer.Option("--warmup-all", help="Warm up over the whole stored history (no day limit).")]
UntilOpt = Annotated[Optional[int], typer.Option(
    "--warmup-until", help="Warm up only on events strictly before this unix time (later events are then posted "
    "to /events); default: all events.")]
BatchOpt = Annotated[int, typer.Option("--warmup-batch", min=1, help="Users folded together per warm-up batch.")]


def _paths(run: Path, store: str | None, snapshot_dir: Path | None) -> tuple[str, Path]:
    from lsdata.serve.service import default_snapshots, default_store

    return store or str(default_store(run)), snapshot_dir or default_snapshots(run)


def _prepare(run: Path, store: str, data: Path | None, namespace: str, reset: bool, days: float | None,
             warm_all: bool, until: int | None, batch: int, rollback: str | None, snapshot_dir: Path, threads: int = 1):
    """Load the run, open and pin the store, then warm up or roll back when asked; returns (engine, lines)."""
    from lsdata.io import InputError
    from lsdata.serve.engine import Engine
    from lsdata.serve.state import open_store, restore_snapshot
    from lsdata.serve.warmup import warmup

    if rollback and (days is not None or warm_all):
        raise InputError("--rollback and --warmup-days/--warmup-all exclude each other")
    if days is not None and warm_all:
        raise InputError("--warmup-days and --warmup-all exclude each other")
    engine = Engine(run, data, threads)
    st = open_store(store, namespace)
    lines = []
    try:
        warming = days is not None or warm_all
        meta = st.meta()
        if rollback and not reset and meta.get("model_version") == engine.version:
            pass  # a rollback may redo an interrupted one (status 'restoring')
        elif warming and not reset and meta.get("model_version") == engine.version:
            pass  # a warm-up replaces the state of the same model version
        else:
            engine.pin(st, reset)
        if rollback:
            r = restore_snapshot(st, snapshot_dir, rollback, engine.version)
            lines.append(f"rolled back to snapshot {r['name']}: {r['users']:,} users ({r['seconds']}s)")
        elif warming:
            w = warmup(engine, st, None if warm_all else days, until, batch)
            span = "all history" if warm_all else f"last {days:g} days"
            lines.append(f"warmed up ({span}, until ts {w['until_ts']}): {w['users']:,} users, {w['events']:,} events "
                         f"({w['seconds']}s)")
        engine.pin(st)
    finally:
        st.close()
    return engine, lines


@serve_app.command("start")
def start(
    run: RunArg,
    store: StoreOpt = None,
    data: DataOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1 = this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes (more than 1: prefer the Redis store).")] = 1,
    warmup_days: DaysOpt = None,
    warmup_all: AllOpt = False,
    warmup_until: UntilOpt = None,
    warmup_batch: BatchOpt = 1024,
    rollback: Annotated[Optional[str], typer.Option(
        "--rollback", help="Before serving, replace the state by snapshot NAME (see `lsdata serve snapshots`).")] = None,
    snapshot_dir: SnapDirOpt = None,
    reset: ResetOpt = False,
    namespace: NamespaceOpt = "lsdata",
    max_events: Annotated[int, typer.Option(min=1, help="Most events in one POST /events (more: HTTP 413).")] = 10_000,
    max_candidates: Annotated[int, typer.Option(min=1, help="Most candidates in one POST /score (more: HTTP 413).")] = 1_000,
    threads: Annotated[int, typer.Option(min=1, help="torch threads per worker process.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level (critical, error, warning, info, debug).")] = "warning",
) -> None:
    """Serve POST /events, POST /score, GET /users/ID and GET /health until interrupted.

    Without --warmup-*/--rollback the store is served as it is (an empty store is claimed for this run's model
    version); a store of another model version is refused unless --reset.
    """
    from lsdata import cli
    from lsdata.serve.service import Settings, run_server

    store_s, snaps = _paths(run, store, snapshot_dir)
    with cli._errors():
        engine, lines = _prepare(run, store_s, data, namespace, reset, warmup_days, warmup_all, warmup_until,
                                 warmup_batch, rollback, snaps, threads)
    for line in lines:
        cli.console.print(line)
    cli.console.print(f"serving {engine.name} (model version {engine.version}) from {store_s} on http://{host}:{port} "
                      f"with {workers} worker(s)")
    settings = Settings(run=str(run), store=store_s, data=str(data) if data else None, namespace=namespace,
                        max_events=max_events, max_candidates=max_candidates, threads=threads)
    with cli._errors():
        run_server(settings, host, port, workers, log_level, engine)


@serve_app.command("warmup")
def warmup_cmd(
    run: RunArg,
    store: StoreOpt = None,
    data: DataOpt = None,
    days: Annotated[Optional[float], typer.Option(
        "--days", min=0.0, help="Last N days of every user's sequence, counted back from --until or else the dataset's "
        "last event (MIMN: 120); default 120 unless --all.")] = None,
    all_history: Annotated[bool, typer.Option("--all", help="The whole stored history (no day limit).")] = False,
    until: Annotated[Optional[int], typer.Option(help="Only events strictly before this unix time.")] = None,
    batch: BatchOpt = 1024,
    reset: ResetOpt = False,
    namespace: NamespaceOpt = "lsdata",
) -> None:
    """Replace the store's state by folding the offline sequences (no server started)."""
    from lsdata import cli

    store_s, snaps = _paths(run, store, None)
    with cli._errors():
        _, lines = _prepare(run, store_s, data, namespace, reset, None if all_history else (120.0 if days is None else days),
                            all_history, until, batch, None, snaps)
    for line in lines:
        cli.console.print(line)


@serve_app.command("snapshot")
def snapshot_cmd(
    run: RunArg,
    store: StoreOpt = None,
    name: Annotated[Optional[str], typer.Option(help="Snapshot name; default today's UTC date (the daily snapshot).")] = None,
    snapshot_dir: SnapDirOpt = None,
    keep: Annotated[Optional[int], typer.Option(min=1, help="Keep only the newest N snapshots (older ones deleted).")] = None,
    namespace: NamespaceOpt = "lsdata",
) -> None:
    """Copy the whole state (live: a point in time for SQLite, consistent per user for Redis) to a snapshot file."""
    from lsdata import cli
    from lsdata.serve.state import open_store, take_snapshot

    store_s, snaps = _paths(run, store, snapshot_dir)
    with cli._errors():
        st = open_store(store_s, namespace)
        try:
            r = take_snapshot(st, snaps, name, keep)
        finally:
            st.close()
    cli.console.print(f"snapshot {r['name']}: {r['users']:,} users, model version {r['model_version']} -> {r['path']}")


@serve_app.command("snapshots")
def snapshots_cmd(run: RunArg, snapshot_dir: SnapDirOpt = None) -> None:
    """List the snapshots: name, time taken, users, model version."""
    from lsdata import cli
    from lsdata.serve.state import list_snapshots

    _, snaps = _paths(run, None, snapshot_dir)
    with cli._errors():
        items = list_snapshots(snaps)
    if not items:
        cli.console.print(f"no snapshots in {snaps}")
    for s in items:
        cli.console.print(f"{s['name']}\t{s['taken_at']}\t{s['users']} users\tmodel version {s['model_version']}")


@serve_app.command("rollback")
def rollback_cmd(
    run: RunArg,
    name: Annotated[str, typer.Argument(help="Snapshot to restore (see `lsdata serve snapshots`).")],
    store: StoreOpt = None,
    snapshot_dir: SnapDirOpt = None,
    namespace: NamespaceOpt = "lsdata",
) -> None:
    """Replace the whole state by a snapshot's (stop the servers first: they would keep writing meanwhile)."""
    from lsdata import cli
    from lsdata.serve.engine import model_version
    from lsdata.serve.state import open_store, restore_snapshot

    store_s, snaps = _paths(run, store, snapshot_dir)
    with cli._errors():
        version = model_version(run)
        st = open_store(store_s, namespace)
        try:
            theirs = st.meta().get("model_version")
            if theirs not in (None, version):
                raise cli.InputError(f"{store_s}: holds model version {theirs}, the run is {version}; "
                                     "use `lsdata serve start --reset --rollback NAME` to replace it")
            r = restore_snapshot(st, snaps, name, version)
        finally:
            st.close()
    cli.console.print(f"rolled back to snapshot {r['name']}: {r['users']:,} users ({r['seconds']}s)")
