"""Feature caching: diffusers' own cache hooks over a transformer denoiser, with any of the fast samplers.

- ``first_block`` — First Block Cache (``diffusers.hooks.apply_first_block_cache``, after ParaAttention/TeaCache):
  each call runs the first transformer block; where its residual changed by less than ``threshold`` (relative mean
  absolute difference) since the last full call of the same branch, the other blocks are skipped and their cached
  residual is added instead.
- ``taylorseer`` — TaylorSeer (``apply_taylorseer_cache``): the attention and feed-forward outputs of every block are
  computed every ``cache_interval`` steps after ``warmup_steps`` full ones, and predicted by a Taylor expansion in
  between. Its default module patterns match nothing in a DiT (``re.fullmatch`` of ``transformer_blocks.*attn``
  against ``transformer_blocks.0.attn1``), so the patterns are given.

Nothing here re-implements a cache: the hooks are diffusers'. What this file adds is what the library leaves to a
pipeline, done as a pipeline would: a cache context per branch (the conditional and the null-class call keep separate
state, as ``cache_context("cond"/"uncond")`` does in diffusers' pipelines), state reset before every sampler call (else
the next batch starts from the last one's cache), and counting — forward hooks on each block's attention and
feed-forward say which of them actually ran, because a hook that matches nothing fails silently.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.errors import Unsupported
from bench.technique import Pipeline, Technique
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler

METHODS = ("first_block", "taylorseer")
# what each method registers (diffusers' hook names), removed for a full-work call and registered again after
_HOOK_NAMES = {"first_block": ("fbc_leader_block_hook", "fbc_block_hook"), "taylorseer": ("taylorseer_cache",)}
# TaylorSeer's modules in a diffusers DiT block (its defaults hook none of them)
_TAYLORSEER_MODULES = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]


class FeatureCache(Technique):
    name = "feature_cache"
    version = 1
    description = ("Training-free feature caching by diffusers' hooks (First Block Cache, TaylorSeer) on a "
                   "transformer denoiser, with any fast sampler; FLOPs are those that ran.")
    contract_variants = ({"method": "taylorseer"},)

    @dataclass(frozen=True)
    class Params:
        method: str = "first_block"  # one of METHODS
        threshold: float = 0.2  # first_block: recompute the other blocks above this relative residual change
        cache_interval: int = 5  # taylorseer: a full computation every this many steps
        warmup_steps: int = 3  # taylorseer: full computations first (diffusers' disable_cache_before_step)
        sampler: str = "ddim"  # one of step_reduction's SAMPLERS
        timestep_spacing: str = "trailing"

    def validate(self, params: Params) -> None:
        if params.method not in METHODS:
            raise ValueError(f"method {params.method!r} is not one of {', '.join(METHODS)}")
        validate_sampler(params.sampler, 0.0, params.timestep_spacing)
        if params.threshold < 0:
            raise ValueError(f"threshold {params.threshold} is negative")
        if params.cache_interval < 1 or params.warmup_steps < 0:
            raise ValueError("cache_interval must be ≥ 1 and warmup_steps ≥ 0")

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        # hooks change the network they are put on: put them on this pipeline's own copy
        denoiser = copy.deepcopy(models["model"])
        denoiser.require_scheduler_output(f"feature_cache ({params.sampler})")
        net = denoiser.net
        blocks = getattr(net, "transformer_blocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) < 2:
            raise Unsupported(f"diffusers' {params.method} hooks cache transformer blocks (a `transformer_blocks` "
                              f"list of at least two); {type(net).__name__} has none")
        cache = _Cache(net, params, denoiser.null_class)
        sample = make_sampler(denoiser, params.sampler, steps, 0.0, params.timestep_spacing)

        def run(gens: list[torch.Generator], callback: Any = None) -> torch.Tensor:
            cache.reset()  # the hooks keep state across calls: each batch starts from none
            try:
                return sample(gens, callback)
            finally:
                cache.reset()

        batch_dependent = ("First Block Cache decides once per network call, on the mean residual change of the "
                           "whole batch, whether every image's remaining blocks run" if params.method == "first_block"
                           else "")
        return Pipeline(sample=run, networks={"model": denoiser}, observe=cache.observe, uncached=cache.uncached,
                        batch_dependent=batch_dependent,
                        info={"scheduler": SAMPLERS[params.sampler][0].__name__, "cache": cache.describe(),
                              "timestep_spacing": params.timestep_spacing})


class _Cache:
    """diffusers' hooks on ``net``, a cache context per branch, and counters of what each block computed."""

    def __init__(self, net: nn.Module, params: Any, null_class: int | None) -> None:
        self.net, self.params, self.null_class = net, params, null_class
        self.counts: Counter[str] = Counter()
        self.blocks = len(net.transformer_blocks)
        # the first inner layer of each block's attention and feed-forward runs only when that part is computed
        for block in net.transformer_blocks:
            block.attn1.to_q.register_forward_pre_hook(lambda *_: self.counts.update(["attention"]))
            block.ff.net[0].register_forward_pre_hook(lambda *_: self.counts.update(["feed_forward"]))
        net.register_forward_pre_hook(self._enter_branch, with_kwargs=True)
        self._apply()

    def _apply(self) -> None:
        from diffusers.hooks import (
            FirstBlockCacheConfig,
            TaylorSeerCacheConfig,
            apply_first_block_cache,
            apply_taylorseer_cache,
        )

        p = self.params
        if p.method == "first_block":
            apply_first_block_cache(self.net, FirstBlockCacheConfig(threshold=p.threshold))
        else:
            apply_taylorseer_cache(self.net, TaylorSeerCacheConfig(
                cache_interval=p.cache_interval, disable_cache_before_step=p.warmup_steps,
                cache_identifiers=list(_TAYLORSEER_MODULES),
                # its default bfloat16 factors round the batch's float32 features: an image then moved by ~1e-3 with
                # the other images of its batch (matmul blocking), amplified by guidance
                taylor_factors_dtype=torch.float32))
        self._registry_changed()

    def _registry(self) -> Any:
        from diffusers.hooks import HookRegistry

        return HookRegistry.check_if_exists_or_initialize(self.net)

    def _registry_changed(self) -> None:
        registry = self._registry()
        if hasattr(registry, "invalidate_child_registries_cache"):
            registry.invalidate_child_registries_cache()

    def _enter_branch(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        labels = args[2] if len(args) > 2 else kwargs.get("class_labels")
        uncond = labels is not None and self.null_class is not None and bool((labels == self.null_class).all())
        self.counts["evaluations"] += 1
        _set_cache_context(module, CacheContext("uncond" if uncond else "cond"))

    def reset(self) -> None:
        self._registry().reset_stateful_hooks(recurse=True)

    @contextlib.contextmanager
    def uncached(self) -> Iterator[None]:
        """Every call does its full work: the hooks come off, and go back on with fresh state."""
        registry = self._registry()
        for name in _HOOK_NAMES[self.params.method]:
            registry.remove_hook(name, recurse=True)
        self._registry_changed()
        try:
            yield
        finally:
            self._apply()

    def observe(self) -> dict[str, Any]:
        """What the cache computed since the last call: block parts computed of those the evaluations asked for."""
        c, self.counts = self.counts, Counter()
        asked = c["evaluations"] * self.blocks
        return {"cache_evaluations": c["evaluations"], "cache_block_parts_asked": asked,
                "attention_computed": c["attention"], "feed_forward_computed": c["feed_forward"],
                "attention_computed_fraction": c["attention"] / asked if asked else None,
                "feed_forward_computed_fraction": c["feed_forward"] / asked if asked else None}

    def describe(self) -> dict[str, Any]:
        p = self.params
        knobs = ({"threshold": p.threshold} if p.method == "first_block"
                 else {"cache_interval": p.cache_interval, "disable_cache_before_step": p.warmup_steps,
                       "cache_identifiers": list(_TAYLORSEER_MODULES), "taylor_factors_dtype": "float32"})
        return {"library": "diffusers.hooks", "method": p.method, "blocks": self.blocks, **knobs}


FeatureCache.model_kinds = ("unconditional", "class", "text")  # (hooks need transformer blocks, not labels)
FeatureCache.contract_arch = "dit"
FeatureCache.model_kinds_reason = "its hooks need a transformer's blocks"
FeatureCache.accelerates = True
