"""``python -m bench new-technique NAME``: a working technique file, its contract test, and its registration line."""

from __future__ import annotations

import re
from pathlib import Path

from bench.errors import UserError

TECHNIQUE_TEMPLATE = '''"""{title}.

TODO: what the method does, its paper (authors, venue, year) and the equation it changes; say what a small run
should show. docs/adding-a-technique.md walks through the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.technique import Pipeline, Technique
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler


class {cls}(Technique):
    name = "{name}"
    version = 1  # bump whenever a change can move a result: cells of other versions become stale
    description = "TODO: one line shown by `python -m bench techniques` and in the report."

    @dataclass(frozen=True)
    class Params:
        # Every knob has a default; a sweep lists values per knob: params = {{ sampler = ["ddim", "dpmpp_2m"] }}
        sampler: str = "ddim"  # any step_reduction sampler
        timestep_spacing: str = "trailing"

    def validate(self, params: Params) -> None:
        validate_sampler(params.sampler, 0.0, params.timestep_spacing)  # raise ValueError naming the bad knob

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        denoiser = models["model"]  # the base model: denoiser(x_t, t) -> its prediction_type at timestep t
        denoiser.require_scheduler_output(self.name)
        # TODO: the method. As scaffolded this is plain DDIM over the base model, so the contract checks pass from
        # the start; every network evaluated while sampling must be a module listed in `networks` (NFE and FLOPs).
        sample = make_sampler(denoiser, params.sampler, steps, 0.0, params.timestep_spacing)
        return Pipeline(sample=sample, networks={{"model": denoiser}},
                        info={{"scheduler": SAMPLERS[params.sampler][0].__name__}})
'''

TEST_TEMPLATE = '''"""{title}: the technique contract (bench/conformance.py) plus this technique's own behaviour."""

import pytest

from bench import conformance


@pytest.fixture(scope="module")
def ctx(tiny_base):
    return conformance.context("{name}", tiny_base)


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_{name}_meets_the_contract(ctx, check):
    check(ctx)


# TODO: tests of what the method promises (e.g. fewer network calls at equal steps, an output it must reproduce).
'''

NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def scaffold(name: str, techniques_dir: Path, tests_dir: Path | None) -> list[Path]:
    """Write ``techniques_dir/NAME.py`` and ``tests_dir/test_NAME.py`` and, when ``techniques_dir`` is this
    repository's ``techniques`` package, add the registration line; returns the files written or changed."""
    from bench import registry

    if not NAME.match(name):
        raise UserError(f"technique name {name!r} must be lower_snake_case (letters, digits, underscores)")
    if name in registry.available():
        raise UserError(f"a technique named {name!r} is already registered ({registry.available()[name]})")
    if not techniques_dir.is_dir():
        raise UserError(f"techniques folder {techniques_dir} does not exist")
    targets = [techniques_dir / f"{name}.py"] + ([tests_dir / f"test_{name}.py"] if tests_dir else [])
    for path in targets:
        if path.exists():
            raise UserError(f"{path} already exists; pick another name or delete it")
    title = name.replace("_", " ").capitalize()
    targets[0].write_text(TECHNIQUE_TEMPLATE.format(title=title, cls=class_name(name), name=name))
    if tests_dir:
        targets[1].write_text(TEST_TEMPLATE.format(title=title, name=name))
    init = techniques_dir / "__init__.py"
    if init.exists() and "BUILTIN" in init.read_text():
        text = init.read_text()
        line = f'    "{name}": "techniques.{name}:{class_name(name)}",\n'
        end = text.index("}", text.index("BUILTIN"))
        init.write_text(text[:end] + line + text[end:])
        targets.append(init)
    return targets
