"""Online serving of an incremental model's per-user state (``lsdata serve``, issue #6).

* :mod:`lsdata.serve.state` - the state stores (embedded SQLite, Redis), the per-user record, snapshots.
* :mod:`lsdata.serve.engine` - a trained run loaded for serving: raw-id vocabularies, the model version,
  the state codec, and the vectorised fold / score of many users at once.
* :mod:`lsdata.serve.warmup` - the offline warm-up (the last N days of every user's stored sequence).
* :mod:`lsdata.serve.service` - the HTTP API (FastAPI): ``POST /events``, ``POST /score``, ``GET /users/{id}``.

One store holds the state of **one model version** (sha256 of the run's ``config.json`` and checkpoint);
the version is written in the store's metadata and in every user's record, and a server refuses a store
warmed by another version (``--reset`` discards it), so state and model never silently mismatch.
"""
