"""The HTTP API (FastAPI; run by uvicorn, one or more worker processes).

``POST /events`` ``{"events": [{"user", "item", "behavior", "ts"}, ...]}``: raw user and item ids (as in the
dataset's vocabulary), behaviour by name (``pv``, ``buy``, ...) or code, ``ts`` in unix seconds, each user's
events in time order and not before its last folded event. The item's category comes from the vocabulary.
All events of a request are folded in one store transaction: every user's record changes, or none.

``POST /score`` ``{"user", "items": [...]}`` -> ``{"scores": [p, ...], "logits": [...]}`` from the user's
stored state (a known user with no stored state scores from the empty state); never changes the state.

``GET /users/{id}`` -> the record's metadata (events folded, last ts, model version, state size).
``GET /health`` -> model, model version, store, warm-up and rollback metadata.

Bad requests change nothing and get a 4xx with a one-line ``detail``: malformed JSON 400, unknown user 404,
a body that is not ``application/json`` 415,
too many events or candidates 413, an event before the user's last one 409, anything else (wrong types,
missing or extra fields, unknown item or behaviour) 422.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from lsdata.serve.engine import Engine, Events, behavior_code
from lsdata.serve.state import Conflict, open_store

SETTINGS_ENV = "LSDATA_SERVE_SETTINGS"  #: JSON of :class:`Settings`, how uvicorn's worker processes get them
RawId = StrictInt | StrictStr


@dataclass
class Settings:
    run: str
    store: str
    data: str | None = None
    namespace: str = "lsdata"
    max_events: int = 10_000
    max_candidates: int = 1_000
    threads: int = 1


class ServeError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: RawId = Field(description="raw user id")
    item: RawId = Field(description="raw item id")
    behavior: RawId = Field(description="behaviour name (pv, cart, fav, buy, review, rating, click) or code")
    ts: StrictInt = Field(description="unix seconds")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(min_length=1)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: RawId
    items: list[RawId] = Field(min_length=1)


def _unknown(kind: str, raws: list, ids: np.ndarray) -> str:
    bad = list(dict.fromkeys(raws[i] for i in np.flatnonzero(ids == 0)))
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    return f"unknown {kind} id(s) {', '.join(map(repr, bad[:5]))}{more}: not in the dataset's {kind} vocabulary"


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        e = next(e for e in errs if e.get("type") == "json_invalid")
        return 400, f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
    parts = []
    for e in errs[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    return 422, "; ".join(parts) + (f" (and {len(errs) - 5} more)" if len(errs) > 5 else "")


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The app for one worker process: loads the run, opens the store and checks it is pinned to this run's
    model version (a mismatch or an interrupted warm-up/rollback raises :class:`lsdata.io.InputError`)."""
    engine = engine or Engine(settings.run, settings.data, settings.threads)
    store = open_store(settings.store, settings.namespace)
    engine.pin(store)  # refuses a store of another model version, or one left mid warm-up / rollback
    app = FastAPI(title="lsdata serve", description=__doc__)
    app.state.engine, app.state.store, app.state.settings = engine, store, settings

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in ctype:
            return JSONResponse({"detail": f"send the body as JSON with Content-Type: application/json (got "
                                           f"{ctype or 'no Content-Type'})"}, status_code=415)
        status, msg = _validation_message(exc)
        return JSONResponse({"detail": msg}, status_code=status)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    def user_id(raw) -> int:
        u = int(engine.users.lookup([raw])[0])
        if not u:
            raise ServeError(404, _unknown("user", [raw], np.zeros(1, np.int64)))
        return u

    @app.post("/events")
    def post_events(req: EventsRequest) -> dict:
        evs = req.events
        if len(evs) > settings.max_events:
            raise ServeError(413, f"too many events: {len(evs)} > {settings.max_events} per request (--max-events)")
        raw_users, raw_items = [e.user for e in evs], [e.item for e in evs]
        users, items = engine.users.lookup(raw_users), engine.items.lookup(raw_items)
        if not users.all():
            raise ServeError(404, _unknown("user", raw_users, users))
        if not items.all():
            raise ServeError(422, _unknown("item", raw_items, items))
        try:
            beh = np.array([behavior_code(e.behavior) for e in evs], np.int64)
        except ValueError as e:
            raise ServeError(422, str(e)) from e
        ts = np.array([e.ts for e in evs], np.int64)
        order = np.argsort(users, kind="stable")  # group by user, request order kept within a user
        su, starts = np.unique(users[order], return_index=True)
        first_seen = np.argsort(order[starts], kind="stable")
        groups = np.split(order, starts[1:])
        groups = [groups[i] for i in first_seen]
        for g in groups:
            if (np.diff(ts[g]) < 0).any():
                raise ServeError(422, f"events of user {raw_users[g[0]]!r} are not in time order within the request")
        ev = Events([int(users[g[0]]) for g in groups], [items[g] for g in groups],
                    [engine.items.extra[items[g]] for g in groups], [beh[g] for g in groups], [ts[g] for g in groups])
        new = store.transact(ev.users, lambda current: engine.fold(ev, current))
        return {"events": len(evs), "users": len(new), "model_version": engine.version}

    @app.post("/score")
    def post_score(req: ScoreRequest) -> dict:
        if len(req.items) > settings.max_candidates:
            raise ServeError(413, f"too many candidates: {len(req.items)} > {settings.max_candidates} per request "
                                  "(--max-candidates)")
        u = user_id(req.user)
        items = engine.items.lookup(req.items)
        if not items.all():
            raise ServeError(422, _unknown("item", req.items, items))
        rec = store.get([u]).get(u)
        logits = engine.score(u, rec, items)
        return {"user": req.user, "items": req.items, "scores": (1 / (1 + np.exp(-logits))).tolist(),
                "logits": logits.tolist(), "events": rec.events if rec else 0, "model_version": engine.version}

    @app.get("/users/{user}")
    def get_user(user: str) -> dict:
        u = user_id(user)
        rec = store.get([u]).get(u)
        return {"user": engine.users.raw(u), "id": u, "stored": rec is not None, "events": rec.events if rec else 0,
                "last_ts": rec.last_ts if rec else None, "model_version": rec.version if rec else engine.version,
                "state_bytes": len(rec.blob) if rec else engine.codec.nbytes}

    @app.get("/health")
    def health() -> dict:
        meta = store.meta()
        return {"model": engine.name, "model_version": engine.version, "run": str(engine.run_dir), "store": store.url,
                "pid": os.getpid(), "status": meta.get("status"), "warmup": meta.get("warmup"),
                "rolled_back_to": meta.get("rolled_back_to")}

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes (``lsdata serve start`` sets :data:`SETTINGS_ENV`)."""
    return create_app(Settings(**json.loads(os.environ[SETTINGS_ENV])))


def run_server(settings: Settings, host: str, port: int, workers: int, log_level: str = "warning",
               engine: Engine | None = None) -> None:
    """Serve until interrupted: one worker runs in this process (reusing ``engine`` when given); more
    workers are uvicorn's child processes, each loading the run through :func:`app_from_env`."""
    import uvicorn

    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
    if workers == 1:
        uvicorn.run(create_app(settings, engine), host=host, port=port, log_level=log_level)
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("lsdata.serve.service:app_from_env", factory=True, host=host, port=port, workers=workers,
                            log_level=log_level)
    sock = config.bind_socket()
    # The shared socket is made with proto 0, so asyncio does not set TCP_NODELAY on the connections it accepts
    # and every response waits ~40 ms for the client's delayed ACK (Nagle); accepted sockets inherit it from here.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(config, sockets=[sock]).run()


def default_store(run: str | Path) -> Path:
    return Path(run) / "serve" / "state.sqlite"


def default_snapshots(run: str | Path) -> Path:
    return Path(run) / "serve" / "snapshots"
