"""Per-user state stores: one record per user, every write atomic per request.

A **record** is ``(blob, events, last_ts, version)``: the user's model state serialised by
:class:`lsdata.serve.engine.StateCodec` (raw little-endian tensor bytes, exact), the number of events folded
into it, the time of the last one, and the model version that wrote it. Store metadata (``meta``) holds the
pinned ``model_version``, the ``status`` (``ready``, or ``warming`` / ``restoring`` while a warm-up or a
rollback is under way: a crash in the middle leaves a store that refuses to serve until it is redone) and
what the warm-up or the last rollback did.

Backends (:func:`open_store`):

* :class:`SQLiteStore` (``PATH``, the embedded default: no server). WAL journal; a request is one
  ``BEGIN IMMEDIATE`` transaction (read the users' records, fold, write them back, commit), so a crash at
  any point leaves every user's record as before or as after the request, never half-written; writers
  from several processes queue on the database lock.
* :class:`RedisStore` (``redis://HOST:PORT/DB``, for several server processes). One hash per user
  (``NS:u:ID``); a request WATCHes its users' keys, reads, folds, and writes them in one MULTI/EXEC, retried
  when another process changed one of them in between (optimistic concurrency); a client killed before
  EXEC changes nothing.

Snapshots (:func:`take_snapshot`, :func:`restore_snapshot`) are SQLite files ``DIR/NAME.sqlite`` (NAME
defaults to the UTC date: the daily snapshot) written to a temporary name and renamed when complete; a
snapshot is a point in time for SQLite (one read transaction) and consistent per user for Redis. Rollback
replaces the whole state with a snapshot's, refusing a snapshot of another model version.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

from lsdata.io import InputError

FAULT_ENV = "LSDATA_FAULT"  #: test hook: "serve:write" kills the process after half a request's records are written
READY, WARMING, RESTORING = "ready", "warming", "restoring"
SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == f"serve:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


class Record(NamedTuple):
    """One user's stored state."""

    blob: bytes  #: the serialised state (StateCodec)
    events: int  #: events folded into it
    last_ts: int  #: unix time of the last folded event (0 = none)
    version: str  #: model version that wrote it


class Conflict(Exception):
    """A request that cannot be applied to the current state (HTTP 409); nothing was written."""


#: fn(current records of the requested users) -> records to write; raising aborts with nothing written
UpdateFn = Callable[[dict[int, Record]], dict[int, Record]]


class StateStore(Protocol):
    url: str

    def meta(self) -> dict: ...
    def set_meta(self, **fields) -> None: ...
    def get(self, users: list[int]) -> dict[int, Record]: ...
    def transact(self, users: list[int], fn: UpdateFn) -> dict[int, Record]: ...
    def put_many(self, records: dict[int, Record]) -> None: ...
    def replace_all(self, batches: Iterator[dict[int, Record]], meta: dict) -> int: ...
    def count(self) -> int: ...
    def iter_all(self, batch: int = 4096) -> Iterator[dict[int, Record]]: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------
# SQLite (embedded)
# ---------------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (user INTEGER PRIMARY KEY, blob BLOB NOT NULL, events INTEGER NOT NULL,
                                  last_ts INTEGER NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_UPSERT = ("INSERT INTO state (user, blob, events, last_ts, version) VALUES (?, ?, ?, ?, ?) "
           "ON CONFLICT(user) DO UPDATE SET blob=excluded.blob, events=excluded.events, last_ts=excluded.last_ts, "
           "version=excluded.version")


class SQLiteStore:
    """The embedded store: one SQLite file, one row per user (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.url = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        con = self._con()
        con.executescript(_SCHEMA)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, isolation_level=None, timeout=60.0, check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as e:
                raise InputError(f"{self.path}: not a state store ({e})") from e
            con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process crash loses no committed write
            self._local.con = con
        return con

    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self._con().execute("SELECT key, value FROM meta")}

    def _set_meta(self, con: sqlite3.Connection, fields: dict) -> None:
        con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        [(k, json.dumps(v)) for k, v in fields.items()])

    def set_meta(self, **fields) -> None:
        with self._tx() as con:
            self._set_meta(con, fields)

    def _tx(self):
        store = self

        class _Tx:
            def __enter__(self):
                self.con = store._con()
                self.con.execute("BEGIN IMMEDIATE")
                return self.con

            def __exit__(self, exc_type, exc, tb):
                self.con.execute("COMMIT" if exc_type is None else "ROLLBACK")
                return False

        return _Tx()

    @staticmethod
    def _select(con: sqlite3.Connection, users: list[int]) -> dict[int, Record]:
        out: dict[int, Record] = {}
        for s in range(0, len(users), 900):  # SQLite's bound-parameter limit
            chunk = users[s: s + 900]
            q = f"SELECT user, blob, events, last_ts, version FROM state WHERE user IN ({','.join('?' * len(chunk))})"
            out.update({u: Record(b, n, t, v) for u, b, n, t, v in con.execute(q, chunk)})
        return out

    def get(self, users: list[int]) -> dict[int, Record]:
        return self._select(self._con(), list(users))

    @staticmethod
    def _write(con: sqlite3.Connection, records: dict[int, Record]) -> None:
        rows = [(u, r.blob, r.events, r.last_ts, r.version) for u, r in records.items()]
        half = (len(rows) + 1) // 2
        con.executemany(_UPSERT, rows[:half])
        _fault("write")  # test hook: a kill here, mid-request, must leave every record as it was
        con.executemany(_UPSERT, rows[half:])

    def transact(self, users: list[int], fn: UpdateFn) -> dict[int, Record]:
        with self._tx() as con:
            new = fn(self._select(con, list(users)))
            self._write(con, new)
        return new

    def put_many(self, records: dict[int, Record]) -> None:
        with self._tx() as con:
            self._write(con, records)

    def replace_all(self, batches: Iterator[dict[int, Record]], meta: dict) -> int:
        """Every record replaced by ``batches``' and the metadata updated, in one transaction."""
        n = 0
        with self._tx() as con:
            con.execute("DELETE FROM state")
            for recs in batches:
                self._write(con, recs)
                n += len(recs)
            self._set_meta(con, meta)
        return n

    def count(self) -> int:
        return self._con().execute("SELECT count(*) FROM state").fetchone()[0]

    def iter_all(self, batch: int = 4096) -> Iterator[dict[int, Record]]:
        """All records in user order, read in one transaction (a point in time, even while others write)."""
        con = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
        try:
            con.execute("BEGIN")
            cur = con.execute("SELECT user, blob, events, last_ts, version FROM state ORDER BY user")
            while rows := cur.fetchmany(batch):
                yield {u: Record(b, n, t, v) for u, b, n, t, v in rows}
            con.execute("COMMIT")
        finally:
            con.close()

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


# ---------------------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------------------

_FIELDS = (b"b", b"n", b"t", b"v")


class RedisStore:
    """One hash per user ``NS:u:ID`` (fields b, n, t, v) and ``NS:meta``; see the module docstring."""

    def __init__(self, url: str, namespace: str = "lsdata", retries: int = 50):
        import redis

        self.url, self.ns, self.retries = url, namespace, retries
        try:
            self.r = redis.Redis.from_url(url)
            self.r.ping()
        except (redis.RedisError, ValueError) as e:
            raise InputError(f"{url}: cannot reach Redis ({e})") from e
        self._watch_error = redis.WatchError

    def _key(self, user: int) -> str:
        return f"{self.ns}:u:{user}"

    def meta(self) -> dict:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(f"{self.ns}:meta").items()}

    def set_meta(self, **fields) -> None:
        self.r.hset(f"{self.ns}:meta", mapping={k: json.dumps(v) for k, v in fields.items()})

    @staticmethod
    def _record(vals: list) -> Record | None:
        if vals[0] is None:
            return None
        return Record(vals[0], int(vals[1]), int(vals[2]), vals[3].decode())

    def _read(self, pipe, users: list[int]) -> dict[int, Record]:
        for u in users:
            pipe.hmget(self._key(u), *_FIELDS)
        return {u: r for u, v in zip(users, pipe.execute()) if (r := self._record(v)) is not None}

    def get(self, users: list[int]) -> dict[int, Record]:
        with self.r.pipeline(transaction=False) as p:
            return self._read(p, list(users))

    def _queue(self, pipe, records: dict[int, Record]) -> None:
        items = list(records.items())
        half = (len(items) + 1) // 2
        for i, (u, r) in enumerate(items):
            if i == half:
                _fault("write")  # test hook: killed with half the writes queued, before EXEC
            pipe.hset(self._key(u), mapping={"b": r.blob, "n": r.events, "t": r.last_ts, "v": r.version})

    def transact(self, users: list[int], fn: UpdateFn) -> dict[int, Record]:
        users = list(users)
        keys = [self._key(u) for u in users]
        with self.r.pipeline() as p:
            for _ in range(self.retries):
                try:
                    p.watch(*keys)
                    current = {u: r for u, k in zip(users, keys) if (r := self._record(p.hmget(k, *_FIELDS))) is not None}
                    new = fn(current)
                    p.multi()
                    self._queue(p, new)
                    p.execute()
                    return new
                except self._watch_error:
                    p.reset()
                    continue
        raise Conflict(f"users changed concurrently {self.retries} times in a row; retry the request")

    def put_many(self, records: dict[int, Record]) -> None:
        with self.r.pipeline(transaction=True) as p:
            self._queue(p, records)
            p.execute()

    def _user_keys(self) -> Iterator[bytes]:
        return self.r.scan_iter(match=f"{self.ns}:u:*", count=1000)

    def replace_all(self, batches: Iterator[dict[int, Record]], meta: dict) -> int:
        """Status ``restoring`` first, then delete, load, and the metadata (status ``ready``) last: a crash
        in between leaves a store that refuses to serve (not atomic as a whole, unlike SQLite)."""
        self.set_meta(status=RESTORING)
        self.clear_states()
        n = 0
        for recs in batches:
            self.put_many(recs)
            n += len(recs)
        self.set_meta(**meta)
        return n

    def clear_states(self) -> None:
        batch: list[bytes] = []
        for k in self._user_keys():
            batch.append(k)
            if len(batch) >= 1000:
                self.r.delete(*batch)
                batch = []
        if batch:
            self.r.delete(*batch)

    def count(self) -> int:
        return sum(1 for _ in self._user_keys())

    def iter_all(self, batch: int = 4096) -> Iterator[dict[int, Record]]:
        users = sorted(int(k.rsplit(b":", 1)[1]) for k in self._user_keys())
        for s in range(0, len(users), batch):
            yield self.get(users[s: s + batch])

    def close(self) -> None:
        self.r.close()


def open_store(spec: str | Path, namespace: str = "lsdata") -> SQLiteStore | RedisStore:
    """``redis://...`` (or ``rediss://``, ``unix://``) -> :class:`RedisStore`; anything else is a SQLite file."""
    s = str(spec)
    if s.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(s, namespace)
    if Path(s).is_dir():
        raise InputError(f"{s}: is a directory; the embedded store is a file (e.g. {Path(s) / 'state.sqlite'})")
    return SQLiteStore(s)


def clear(store: SQLiteStore | RedisStore) -> None:
    """Delete every record and the metadata."""
    if isinstance(store, SQLiteStore):
        with store._tx() as con:
            con.execute("DELETE FROM state")
            con.execute("DELETE FROM meta")
    else:
        store.clear_states()
        store.r.delete(f"{store.ns}:meta")


# ---------------------------------------------------------------------------------------------------------
# snapshots
# ---------------------------------------------------------------------------------------------------------


def snapshot_path(directory: str | Path, name: str) -> Path:
    if not SNAPSHOT_NAME.match(name):
        raise InputError(f"snapshot name {name!r}: use letters, digits, '.', '_' and '-' (e.g. 2024-05-01)")
    return Path(directory) / f"{name}.sqlite"


def list_snapshots(directory: str | Path) -> list[dict]:
    """Complete snapshots in ``directory`` (name, model version, users, taken_at), oldest first."""
    out = []
    for p in sorted(Path(directory).glob("*.sqlite")):
        snap = SQLiteStore(p)
        try:
            m = snap.meta()
        finally:
            snap.close()
        out.append({"name": p.stem, "path": str(p), "model_version": m.get("model_version"), "users": m.get("users"),
                    "taken_at": m.get("snapshot_taken_at")})
    return sorted(out, key=lambda s: (s["taken_at"] or "", s["name"]))


def take_snapshot(store: SQLiteStore | RedisStore, directory: str | Path, name: str | None = None,
                  keep: int | None = None) -> dict:
    """Copy every record and the metadata to ``DIR/NAME.sqlite`` (NAME = today's UTC date by default),
    written under a temporary name and renamed when complete. ``keep``: delete the oldest beyond that many."""
    meta = store.meta()
    if meta.get("status", READY) != READY:
        raise InputError(f"{store.url}: store status is {meta.get('status')!r} (an interrupted warm-up or rollback); "
                         "nothing to snapshot")
    name = name or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    dst = snapshot_path(directory, name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    taken = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    snap = SQLiteStore(tmp)
    try:
        n = snap.replace_all(store.iter_all(), {**meta, "users": 0})
        snap.set_meta(users=n, snapshot_name=name, snapshot_taken_at=taken, snapshot_of=store.url)
        snap._con().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        snap.close()
    os.replace(tmp, dst)
    for p in (Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    if keep is not None:
        for old in list_snapshots(directory)[:-keep] if keep > 0 else []:
            Path(old["path"]).unlink(missing_ok=True)
    return {"name": name, "path": str(dst), "users": n, "model_version": meta.get("model_version"), "taken_at": taken}


def restore_snapshot(store: SQLiteStore | RedisStore, directory: str | Path, name: str, model_version: str) -> dict:
    """Roll the whole state back to snapshot ``name``; refused if it was taken with another model version."""
    src = snapshot_path(directory, name)
    if not src.exists():
        have = ", ".join(s["name"] for s in list_snapshots(directory)) or "none"
        raise InputError(f"{src}: no such snapshot (have: {have})")
    snap = SQLiteStore(src)
    try:
        meta = snap.meta()
        if meta.get("model_version") != model_version:
            raise InputError(f"snapshot {name} holds state of model version {meta.get('model_version')}, the run being "
                             f"served is {model_version}: refusing to roll back to it")
        t0 = time.perf_counter()
        keep = {k: v for k, v in meta.items() if not k.startswith("snapshot_") and k != "users"}
        n = store.replace_all(snap.iter_all(), {**keep, "status": READY, "rolled_back_to": name})
    finally:
        snap.close()
    return {"name": name, "users": n, "seconds": round(time.perf_counter() - t0, 3)}
