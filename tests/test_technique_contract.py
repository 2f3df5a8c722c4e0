"""The contract every registered technique must meet (bench/conformance.py), run over the whole registry."""

from __future__ import annotations

import pytest

from bench import conformance, registry

TECHNIQUES = sorted(registry.available())


@pytest.fixture(scope="module")
def contexts(tiny_base):
    """One context per technique, shared by the checks so each trains its tiny models once."""
    return {name: conformance.context(name, tiny_base) for name in TECHNIQUES}


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", TECHNIQUES)
def test_technique_meets_the_contract(name, check, contexts) -> None:
    check(contexts[name])
