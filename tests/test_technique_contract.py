"""The contract every registered technique must meet, run over the whole registry."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch

from bench import registry
from bench.measure.flops import CallRecorder
from bench.runner import load_source, model_sources
from bench.sampling import generators

TECHNIQUES = sorted(registry.available())


def _all_params(technique):
    """Default params plus one variant per sampler and per mode, where the technique has those knobs."""
    from techniques.step_reduction import SAMPLERS

    fields = technique.param_fields()
    yield technique.Params()
    for sampler in SAMPLERS if "sampler" in fields else ():
        yield technique.Params(sampler=sampler)
    for mode in getattr(inspect.getmodule(type(technique)), "MODES", ()) if "mode" in fields else ():
        yield technique.Params(mode=mode)


def _models(technique, params, tiny_base):
    """The models a sweep would hand the technique, trained from the tiny digits recipe (seconds)."""
    return {name: load_source(source, progress=False)[0]
            for name, source in model_sources(technique, params, tiny_base).items()}


@pytest.mark.parametrize("name", TECHNIQUES)
def test_params_are_frozen_dataclasses_with_defaults(name: str) -> None:
    technique = registry.get(name)
    assert technique.name == name and technique.description
    params = technique.Params()
    assert dataclasses.is_dataclass(params)
    technique.validate(params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(params, next(iter(technique.param_fields())), None)
    assert len(technique.version()) == 12


@pytest.mark.parametrize("name", TECHNIQUES)
def test_pipeline_samples_images_counts_nfe_and_calls_back(name: str, tiny_denoiser, tiny_base) -> None:
    technique = registry.get(name)
    for params in _all_params(technique):
        pipe = technique.pipeline(params, _models(technique, params, tiny_base), 4)
        recorder = CallRecorder(pipe.networks)
        steps_seen = []
        with torch.no_grad():
            x = pipe.sample(generators([0, 1, 2]), lambda info, seen=steps_seen: seen.append(info.index))
        recorder.remove()
        assert x.shape == (3, *tiny_denoiser.image_shape), params
        assert torch.isfinite(x).all(), params
        assert sum(recorder.calls.values()) >= 4, params  # at least one network call per step
        assert steps_seen and steps_seen == list(range(len(steps_seen))), params
        if pipe.observe is not None:
            json.dumps(pipe.observe())  # observations go into the JSON record


@pytest.mark.parametrize("name", TECHNIQUES)
def test_image_depends_only_on_its_seed(name: str, tiny_base) -> None:
    """Image i from seeds [0..3] at batch 4 equals image i from seeds [2, 3] at batch 2 (ancestral noise included)."""
    technique = registry.get(name)
    for params in _all_params(technique):
        pipe = technique.pipeline(params, _models(technique, params, tiny_base), 5)
        with torch.no_grad():
            full = pipe.sample(generators([0, 1, 2, 3]), None)
            part = pipe.sample(generators([2, 3]), None)
            other = pipe.sample(generators([7, 3]), None)
        torch.testing.assert_close(full[2:], part, atol=1e-4, rtol=1e-4, msg=str(params))
        torch.testing.assert_close(other[1], part[1], atol=1e-4, rtol=1e-4, msg=str(params))
        assert not torch.allclose(full[0], full[1]), params
