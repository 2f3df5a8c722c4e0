"""Weight quantization by optimum-quanto (``optimum.quanto.quantize`` then ``freeze``) of the denoiser's linear and
convolution layers, with any of the fast samplers; ``pip install 'bench[accel]'``.

The scheme is quanto's own; nothing is re-implemented. Only weights are quantized: quanto's activation quantization
needs a calibration pass over representative inputs, which is a recipe of its own, not a knob. The record keeps the
weight type, quanto's version and the network's serialized weight bytes before and after. quanto's kernels escape
both FLOP counters (fvcore's trace fails with an internal assert; FlopCounterMode sees 0.6 % of a tiny DiT's FLOPs),
so the FLOPs per call are counted on the unquantized network with the same inputs (``Pipeline.flops_counted_on``):
weight-only schemes run the same multiply-adds on weights expanded from fewer bits. What quantization may change is
the time, measured on the same machine, dtype, threads and batch as the unquantized cell, and the images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from bench.errors import Unsupported
from bench.technique import Pipeline, Technique
from techniques.quantization import weight_bytes
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler

WEIGHTS = ("qint8", "qint4", "qint2", "qfloat8")  # quanto's weight types (``optimum.quanto.q*``)


class Quanto(Technique):
    name = "quanto"
    version = 1
    description = ("Weight quantization of the denoiser's linear and convolution layers by optimum-quanto (int8, "
                   "int4, int2 or float8 weights), with any fast sampler; weight bytes recorded, time measured on "
                   "the cell's own hardware.")
    contract_variants = ({"weights": "qint4"},)

    @dataclass(frozen=True)
    class Params:
        weights: str = "qint8"  # one of WEIGHTS
        sampler: str = "ddim"  # one of step_reduction's SAMPLERS
        timestep_spacing: str = "trailing"

    def validate(self, params: Params) -> None:
        if params.weights not in WEIGHTS:
            raise ValueError(f"weights {params.weights!r} is not one of {', '.join(WEIGHTS)}")
        validate_sampler(params.sampler, 0.0, params.timestep_spacing)

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        try:
            from optimum import quanto
        except ImportError as exc:
            raise Unsupported(f"optimum-quanto is not installed ({exc}); pip install 'bench[accel]'") from None
        from importlib.metadata import version

        full = models["model"]
        denoiser = copy.deepcopy(full)  # quantize replaces layers in place: this pipeline's own copy
        denoiser.require_scheduler_output(f"quanto ({params.sampler})")
        net = denoiser.net
        before = weight_bytes(net)
        try:
            quanto.quantize(net, weights=getattr(quanto, params.weights))
            quanto.freeze(net)
        except (RuntimeError, NotImplementedError, AssertionError, TypeError) as exc:  # this device, dtype or layer
            raise Unsupported(f"optimum-quanto {version('optimum-quanto')} {params.weights} weights: "
                              f"{str(exc).splitlines()[0]}") from None
        sample = make_sampler(denoiser, params.sampler, steps, 0.0, params.timestep_spacing)
        return Pipeline(sample=sample, networks={"model": denoiser}, flops_counted_on={"model": full},
                        info={"scheduler": SAMPLERS[params.sampler][0].__name__,
                              "timestep_spacing": params.timestep_spacing,
                              "quantization": {"library": "optimum-quanto", "version": version("optimum-quanto"),
                                               "scheme": f"{params.weights} weights", "activations": "float",
                                               "weight_bytes": weight_bytes(net), "weight_bytes_before": before,
                                               "flops_counted_on": "the unquantized network (quanto's kernels "
                                                                   "escape the FLOP counters)"}})


Quanto.model_kinds = ("unconditional", "class", "text")  # (it changes weights, not inputs)
Quanto.accelerates = True
