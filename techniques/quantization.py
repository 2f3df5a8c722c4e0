"""Weight quantization by torchao (``torchao.quantization.quantize_``) of the denoiser's linear layers, with any of the
fast samplers; ``pip install 'bench[accel]'``.

The scheme is torchao's own; nothing is re-implemented. The record keeps the scheme, the library version and the
network's serialized weight bytes before and after. FLOPs are counted as for any cell (int8 weights do the same
multiply-adds); what quantization may change is the time, measured on the same machine, dtype, threads and batch as
the unquantized cell. Schemes whose kernels the FLOP counter cannot trace are not offered: torchao's int8 dynamic
activation scheme breaks fvcore's trace (``iter->isIntList() INTERNAL ASSERT FAILED``) and FlopCounterMode does not
see its integer matmuls (it counts 0.6 % of the FLOPs), so its cells could not state their cost.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.errors import Unsupported
from bench.technique import Pipeline, Technique
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler

# scheme → torchao config class name (``torchao.quantization``)
SCHEMES = {"int8_weight_only": "Int8WeightOnlyConfig"}


class Quantization(Technique):
    name = "quantization"
    version = 1
    description = ("Weight quantization of the denoiser's linear layers by torchao (int8 weight-only), with any fast "
                   "sampler; weight bytes recorded, time measured on the cell's own hardware.")

    @dataclass(frozen=True)
    class Params:
        scheme: str = "int8_weight_only"  # one of SCHEMES
        sampler: str = "ddim"  # one of step_reduction's SAMPLERS
        timestep_spacing: str = "trailing"

    def validate(self, params: Params) -> None:
        if params.scheme not in SCHEMES:
            raise ValueError(f"scheme {params.scheme!r} is not one of {', '.join(SCHEMES)}")
        validate_sampler(params.sampler, 0.0, params.timestep_spacing)

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        try:
            import torchao
            from torchao import quantization
        except ImportError as exc:
            raise Unsupported(f"torchao is not installed ({exc}); pip install 'bench[accel]'") from None
        denoiser = copy.deepcopy(models["model"])  # quantize_ replaces weights in place: this pipeline's own copy
        denoiser.require_scheduler_output(f"quantization ({params.sampler})")
        net = denoiser.net
        before = weight_bytes(net)
        try:
            quantization.quantize_(net, getattr(quantization, SCHEMES[params.scheme])())
        except (RuntimeError, NotImplementedError, AssertionError) as exc:  # its kernels lack this device or dtype
            raise Unsupported(f"torchao {torchao.__version__} {params.scheme}: {str(exc).splitlines()[0]}") from None
        sample = make_sampler(denoiser, params.sampler, steps, 0.0, params.timestep_spacing)
        return Pipeline(sample=sample, networks={"model": denoiser},
                        info={"scheduler": SAMPLERS[params.sampler][0].__name__,
                              "timestep_spacing": params.timestep_spacing,
                              "quantization": {"library": "torchao", "version": torchao.__version__,
                                               "scheme": params.scheme, "config": SCHEMES[params.scheme],
                                               "weight_bytes": weight_bytes(net), "weight_bytes_before": before}})


def weight_bytes(net: nn.Module) -> int:
    """The network's state dict as ``torch.save`` writes it: what its weights take on disk (quantized tensors
    included, which ``numel × element_size`` would misstate)."""
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.tell()


Quantization.model_kinds = ("unconditional", "class", "text")  # (it changes weights, not inputs)
Quantization.accelerates = True
