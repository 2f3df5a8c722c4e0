"""Technique discovery: the built-in table in ``techniques/__init__.py`` plus the ``bench.techniques`` entry points."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata

from bench.errors import UserError
from bench.technique import Technique

ENTRY_POINT_GROUP = "bench.techniques"


def _load(target: str) -> type[Technique]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Technique)):
        raise TypeError(f"{target} is not a bench.technique.Technique subclass")
    return cls


@functools.lru_cache(maxsize=1)
def available() -> dict[str, str]:
    """Technique name → ``module:Class`` for built-in and installed outside techniques."""
    from techniques import BUILTIN

    table = dict(BUILTIN)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(ep.name, ep.value)
    return table


def get(name: str) -> Technique:
    table = available()
    if name not in table:
        raise UserError(f"unknown technique {name!r} (known: {', '.join(sorted(table))})")
    return _load(table[name])()


def current_versions(name: str) -> frozenset[int | str]:
    """What a record of technique ``name`` may carry as ``technique_version`` and still be current: the installed
    technique's declared version, and the source hashes it superseded (``techniques.LEGACY_SOURCE_HASHES``)."""
    from techniques import LEGACY_SOURCE_HASHES

    version = get(name).version
    return frozenset({version, *(h for h, v in LEGACY_SOURCE_HASHES.get(name, {}).items() if v == version)})


def installed_versions(names: object) -> dict[str, frozenset[int | str]]:
    """Technique name → the version values its current records carry (``current_versions``), for the names
    installed here; ``bench.store.is_stale`` compares a record against them."""
    out = {}
    for name in names:
        try:
            out[str(name)] = current_versions(str(name))
        except UserError:
            pass
    return out
