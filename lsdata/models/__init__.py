"""The model zoo: every model is a :class:`lsdata.models.base.CTRModel` registered under a unique name.

``lsdata train --help`` lists :func:`names`; :func:`get` looks a name up (one-line error listing the
choices). Registering a second class under an existing name raises at import time, so two models can
never silently shadow each other.
"""

from __future__ import annotations

from lsdata.io import InputError

REGISTRY: dict[str, type] = {}

#: every registered name, spelled out so the CLI can list them without importing torch (a test checks it)
MODEL_NAMES = (
    "dnn", "svdpp", "gru4rec", "lstm", "arnn", "din", "dien", "caser",  # baselines.py
    "hpmn", "mimn",  # memory.py
    "rum", "rum_item", "shan", "sam",  # rum.py, shan.py, sam.py
    "shan_next",  # shan.py (next-item framing)
    "sasrec", "gru4rec_next", "stamp", "caser_next", "sdm",  # nextitem.py (next-item framing, issue #5)
    "dman",  # dman.py (next-item)
    "hpmn_next",  # hpmn_next.py (next-item, HPMN's memory from memory.py)
)


def register(cls: type) -> type:
    """Class decorator: add ``cls`` to the registry under ``cls.name`` (lower case, unique)."""
    name = getattr(cls, "name", None)
    if not name or name != name.lower():
        raise ValueError(f"{cls.__qualname__}: a model needs a lower-case `name`, got {name!r}")
    if name in REGISTRY:
        raise ValueError(f"duplicate model name {name!r}: {REGISTRY[name].__qualname__} and {cls.__qualname__}")
    REGISTRY[name] = cls
    return cls


MODULES = ("baselines", "memory", "rum", "shan", "sam", "nextitem", "dman", "hpmn_next")  #: modules whose import registers the models


def _load_all() -> None:
    import importlib

    for m in MODULES:
        importlib.import_module(f"lsdata.models.{m}")


def names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def get(name: str) -> type:
    _load_all()
    key = name.lower()
    if key not in REGISTRY:
        raise InputError(f"unknown model {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]
