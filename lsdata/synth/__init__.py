"""Seeded generators of raw files in each supported format (outputs are labelled synthetic).

Every generated file gets a ``FILE.synthetic.json`` sidecar (:func:`write_sidecar`); ingest marks a
dataset ``"synthetic": true`` when all its inputs have one.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_sidecar(path: str | Path, generator: str, fmt: str, params: dict, note: str) -> Path:
    """Write ``path.synthetic.json`` describing how ``path`` was generated."""
    side = Path(str(path) + ".synthetic.json")
    doc = {"synthetic": True, "generator": generator, "format": fmt, "params": params, "note": note}
    side.write_text(json.dumps(doc, indent=2) + "\n")
    return side
