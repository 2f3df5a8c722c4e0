"""DeepCache (Ma et al. 2024): a U-Net's deep features change slowly across steps, so every ``cache_interval``-th
evaluation runs the whole network and the others run only its shallow branch (``cache_branch_id``: which skip
branch stays live), reusing the cached deeper blocks' outputs.

The caching is the ``DeepCache`` package's own (``DeepCacheSDHelper``: its block wrapping and its skip rule). Two
things it takes from a diffusers pipeline are given by the harness instead, which is what this file adds:

- **the step index**: the helper reads it from ``pipe.scheduler.timesteps.index(t.item())``, which fails for a
  batch of timesteps and assumes a pipeline-owned scheduler. Here it is the evaluation's index in its branch within
  the sampler call (one per step for the one-evaluation samplers of the paper, DDIM and PLMS).
- **one cache per guidance branch**: the helper keeps one cache, filled by whichever call ran last. In a pipeline
  that batches both branches in one call that is right; with guidance as two calls (this harness, and any
  ``guider`` loop) the null-prompt call would overwrite the conditional call's features, and every skipped step
  would reuse the other branch's. Each branch (``bench.conditioning.branch``) gets its own.

State is reset before and after every sampler call; pre-hooks on every ResNet's first convolution and every
attention block's input projection count which of them actually ran.
"""

from __future__ import annotations

import contextlib
import copy
import types
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench import conditioning
from bench.errors import Unsupported
from bench.technique import Pipeline, Technique
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler


class DeepCache(Technique):
    name = "deepcache"
    version = 1
    description = ("Training-free reuse of a U-Net's deep features across steps (the DeepCache package), with any "
                   "fast sampler; FLOPs are those that ran.")
    contract_variants = ({"cache_interval": 2, "cache_branch_id": 1},)

    @dataclass(frozen=True)
    class Params:
        cache_interval: int = 3  # a full network evaluation every this many (the paper's N)
        cache_branch_id: int = 0  # the skip branch that stays live on cached evaluations (0: the shallowest)
        sampler: str = "ddim"  # one of step_reduction's SAMPLERS
        timestep_spacing: str = "trailing"

    def validate(self, params: Params) -> None:
        validate_sampler(params.sampler, 0.0, params.timestep_spacing)
        if params.cache_interval < 1:
            raise ValueError(f"cache_interval {params.cache_interval} is below 1")
        if params.cache_branch_id < 0:
            raise ValueError(f"cache_branch_id {params.cache_branch_id} is negative")

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        try:
            import DeepCache  # noqa: F401
        except ImportError:
            raise Unsupported("the DeepCache package is not installed (pip install 'bench[accel]')") from None
        denoiser = copy.deepcopy(models["model"])  # the helper rewires the network it is given: this cell's own
        denoiser.require_scheduler_output(f"deepcache ({params.sampler})")
        net = denoiser.net
        if not all(isinstance(getattr(net, part, None), nn.Module) for part in ("down_blocks", "mid_block",
                                                                               "up_blocks")):
            raise Unsupported(f"DeepCache caches a U-Net's down, mid and up blocks; {type(net).__name__} has none")
        depth = len(net.down_blocks) * 3  # DeepCache's branch id: 3 per block (block = id // 3, layer = id % 3)
        if params.cache_branch_id >= depth:
            raise Unsupported(f"cache_branch_id {params.cache_branch_id} is beyond this U-Net's {depth} branches")
        cache = _Cache(net, params)
        sample = make_sampler(denoiser, params.sampler, steps, 0.0, params.timestep_spacing)

        def run(gens: list[torch.Generator], callback: Any = None) -> torch.Tensor:
            cache.reset()
            try:
                return sample(gens, callback)
            finally:
                cache.reset()

        return Pipeline(sample=run, networks={"model": denoiser}, observe=cache.observe, uncached=cache.uncached,
                        info={"scheduler": SAMPLERS[params.sampler][0].__name__, "cache": cache.describe(),
                              "timestep_spacing": params.timestep_spacing})


def _helper(net: nn.Module) -> Any:
    from DeepCache import DeepCacheSDHelper

    class BranchHelper(DeepCacheSDHelper):
        """``DeepCacheSDHelper`` whose step index and cache come from the harness's evaluation (see the module)."""

        def __init__(self) -> None:
            super().__init__(pipe=types.SimpleNamespace(unet=net))
            self.evaluations: Counter[str] = Counter()
            self.caches: dict[str, dict] = {}

        def wrap_unet_forward(self) -> None:
            self.function_dict["unet_forward"] = self.pipe.unet.forward

            def wrapped_forward(*args: Any, **kwargs: Any) -> Any:
                branch = conditioning.branch()
                self.cur_timestep = self.evaluations[branch]
                self.evaluations[branch] += 1
                self.cached_output = self.caches.setdefault(branch, {})
                return self.function_dict["unet_forward"](*args, **kwargs)

            self.pipe.unet.forward = wrapped_forward

        def reset_step_state(self) -> None:
            self.evaluations.clear()
            self.caches.clear()
            self.cached_output, self.cur_timestep, self.start_timestep = {}, 0, None

    return BranchHelper()


class _Cache:
    def __init__(self, net: nn.Module, params: Any) -> None:
        self.net, self.params = net, params
        self.counts: Counter[str] = Counter()
        self.resnets = [m for m in net.modules() if type(m).__name__ == "ResnetBlock2D"]
        self.attentions = [m for m in net.modules() if type(m).__name__ in ("Transformer2DModel", "Attention")
                           and not _inside_transformer(m, net)]
        for resnet in self.resnets:  # the first convolution runs only when the ResNet is computed
            resnet.conv1.register_forward_pre_hook(lambda *_: self.counts.update(["resnets"]))
        for attention in self.attentions:
            attention.register_forward_pre_hook(lambda *_: self.counts.update(["attentions"]))
        net.register_forward_pre_hook(lambda *_: self.counts.update(["evaluations"]))
        self.helper = _helper(net)
        self.helper.set_params(cache_interval=params.cache_interval, cache_branch_id=params.cache_branch_id)
        self.helper.enable()
        self.helper.reset_step_state()

    def reset(self) -> None:
        self.helper.reset_step_state()

    @contextlib.contextmanager
    def uncached(self) -> Iterator[None]:
        """Every call does its full work: the helper unwraps the blocks, and wraps them again with fresh state."""
        self.helper.disable()
        try:
            yield
        finally:
            self.helper.enable()
            self.helper.reset_step_state()

    def observe(self) -> dict[str, Any]:
        """What ran since the last call: ResNets and attention blocks computed of those the evaluations asked for."""
        c, self.counts = self.counts, Counter()
        asked_r, asked_a = c["evaluations"] * len(self.resnets), c["evaluations"] * len(self.attentions)
        return {"cache_evaluations": c["evaluations"], "resnets_computed": c["resnets"],
                "resnets_computed_fraction": c["resnets"] / asked_r if asked_r else None,
                "attentions_computed": c["attentions"],
                "attentions_computed_fraction": c["attentions"] / asked_a if asked_a else None}

    def describe(self) -> dict[str, Any]:
        import importlib.metadata

        return {"library": "DeepCache", "version": importlib.metadata.version("DeepCache"),
                "cache_interval": self.params.cache_interval, "cache_branch_id": self.params.cache_branch_id,
                "skip_mode": "uniform", "step_index": "the evaluation's index in its guidance branch",
                "resnets": len(self.resnets), "attention_blocks": len(self.attentions)}


def _inside_transformer(module: nn.Module, net: nn.Module) -> bool:
    """An ``Attention`` inside a ``Transformer2DModel`` is counted with its transformer, not again on its own."""
    for outer in net.modules():
        if type(outer).__name__ == "Transformer2DModel" and outer is not module and \
                any(inner is module for inner in outer.modules()):
            return True
    return False


DeepCache.model_kinds = ("unconditional", "class", "text")  # (it caches U-Net blocks, any condition)
DeepCache.model_kinds_reason = "it caches a U-Net's blocks"
DeepCache.accelerates = True
