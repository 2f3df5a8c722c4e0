"""DBCache from the cache-dit engine (``cache_dit.enable_cache``): each call runs the first ``fn_compute_blocks``
transformer blocks; where their output residual changed by less than ``residual_diff_threshold`` since the last full
call of the same branch, the middle blocks are skipped and their cached residual added, and the last
``bn_compute_blocks`` blocks run to correct it. No cache during the first ``max_warmup_steps`` calls of a branch.

The caching is cache-dit's own (its ``BlockAdapter`` over the DiT's blocks with its ``DiTPatchFunctor``, the
adapter its DiT pipeline support uses); ``pip install 'bench[accel]'``. What this file settles:

- **the two guidance calls**: cache-dit tells the conditional call of a step from the unconditional one by their
  order (``enable_separate_cfg``: even calls conditional, odd unconditional) and keeps a cache for each. The harness
  evaluates the label then the null class, so the order holds when every step is guided; each sampler call sets
  ``enable_separate_cfg`` to whether it is guided (``bench.conditioning.guiding``), and a call whose branch is not
  the one its order implies (a guider that leaves steps unguided) stops the cell with the reason rather than let a
  branch reuse the other's features.
- **state**: the cache context is refreshed before and after every sampler call (cache-dit's ``refresh_context``),
  so a batch never starts from the last one's cache; cache-dit counts its steps in network calls per branch, so
  with a two-evaluation sampler (Heun) its warm-up is in evaluations, not sampler steps.
- **counting**: pre-hooks on each block's attention and feed-forward count which of them ran (cache-dit's own
  statistics are kept on its modules and lag its context refreshes). A full-work call for FLOPs runs in a context
  with cache-dit's threshold 0, its "disabled".

DBCache decides once per call for the whole batch (the mean residual change), so images depend on their batch.
"""

from __future__ import annotations

import contextlib
import copy
import os
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


class CacheDiT(Technique):
    name = "cache_dit"
    version = 1
    description = ("Training-free DBCache (the cache-dit engine) over a DiT's transformer blocks, with any fast "
                   "sampler; FLOPs are those that ran.")
    contract_variants = ({"residual_diff_threshold": 0.3, "max_warmup_steps": 2, "bn_compute_blocks": 0},)

    @dataclass(frozen=True)
    class Params:
        # cache-dit's defaults but for the block counts (its Fn = 8 needs more than 8 blocks; the zoo's DiT has 6)
        residual_diff_threshold: float = 0.08  # recompute the middle blocks above this relative residual change
        fn_compute_blocks: int = 1  # first blocks always computed (cache-dit's Fn_compute_blocks)
        bn_compute_blocks: int = 1  # last blocks always computed (cache-dit's Bn_compute_blocks)
        max_warmup_steps: int = 8  # calls per branch computed in full first
        warmup_interval: int = 1  # during warm-up, compute every this many calls
        max_cached_steps: int = -1  # at most this many cached calls per branch (-1: no limit)
        max_continuous_cached_steps: int = -1  # at most this many cached calls in a row (-1: no limit)
        sampler: str = "ddim"  # one of step_reduction's SAMPLERS
        timestep_spacing: str = "trailing"

    def validate(self, params: Params) -> None:
        validate_sampler(params.sampler, 0.0, params.timestep_spacing)
        if not 0 < params.residual_diff_threshold < 1:  # cache-dit reads 0 as never caching, ≥ 1 as always
            raise ValueError(f"residual_diff_threshold {params.residual_diff_threshold} is not in (0, 1)")
        if params.fn_compute_blocks < 1 or params.bn_compute_blocks < 0:
            raise ValueError("fn_compute_blocks must be ≥ 1 and bn_compute_blocks ≥ 0")
        if params.max_warmup_steps < 0 or params.warmup_interval < 1:
            raise ValueError("max_warmup_steps must be ≥ 0 and warmup_interval ≥ 1")

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # its per-cell tables and notices would flood a sweep
        try:
            import cache_dit  # noqa: F401
        except ImportError as exc:
            raise Unsupported(f"cache-dit is not installed ({exc}); pip install 'bench[accel]'") from None
        denoiser = copy.deepcopy(models["model"])  # cache-dit patches the network it is given: this cell's own
        denoiser.require_scheduler_output(f"cache_dit ({params.sampler})")
        net = denoiser.net
        if type(net).__name__ != "DiTTransformer2DModel":
            what = ("has no transformer blocks" if not isinstance(getattr(net, "transformer_blocks", None),
                                                                  nn.ModuleList) else "is not one")
            raise Unsupported(f"cache-dit's DBCache is applied here through its DiT adapter "
                              f"(DiTTransformer2DModel); {type(net).__name__} {what}")
        blocks = len(net.transformer_blocks)
        if params.fn_compute_blocks + params.bn_compute_blocks >= blocks:
            raise Unsupported(f"fn_compute_blocks + bn_compute_blocks = "
                              f"{params.fn_compute_blocks + params.bn_compute_blocks} leaves none of this DiT's "
                              f"{blocks} blocks to cache")
        cache = _Cache(net, params)
        sample = make_sampler(denoiser, params.sampler, steps, 0.0, params.timestep_spacing)

        def run(gens: list[torch.Generator], callback: Any = None) -> torch.Tensor:
            cache.refresh(separate_cfg=conditioning.guiding())
            try:
                return sample(gens, callback)
            finally:
                cache.refresh(separate_cfg=False)

        return Pipeline(sample=run, networks={"model": denoiser}, observe=cache.observe, uncached=cache.uncached,
                        batch_dependent="cache-dit's DBCache decides once per network call, on the mean residual "
                                        "change of the whole batch, whether every image's middle blocks run",
                        info={"scheduler": SAMPLERS[params.sampler][0].__name__, "cache": cache.describe(),
                              "timestep_spacing": params.timestep_spacing})


class _Cache:
    """cache-dit's DBCache on ``net``, its context refreshed per sampler call, and counters of what ran."""

    def __init__(self, net: nn.Module, params: Any) -> None:
        import cache_dit
        from cache_dit import BlockAdapter, ForwardPattern
        from cache_dit.caching.patch_functors import DiTPatchFunctor

        self.net, self.params, self.separate_cfg, self.order, self.full_work = net, params, False, 0, False
        self.counts: Counter[str] = Counter()
        self.blocks = len(net.transformer_blocks)
        for block in net.transformer_blocks:  # the first inner layers run only when that part is computed
            block.attn1.to_q.register_forward_pre_hook(lambda *_: self.counts.update(["attention"]))
            block.ff.net[0].register_forward_pre_hook(lambda *_: self.counts.update(["feed_forward"]))
        net.register_forward_pre_hook(self._check_branch)
        cache_dit.enable_cache(BlockAdapter(transformer=net, blocks=net.transformer_blocks,
                                            forward_pattern=ForwardPattern.Pattern_3,
                                            patch_functor=DiTPatchFunctor(), check_forward_pattern=True),
                               cache_config=self._config(False))

    def _config(self, separate_cfg: bool) -> Any:
        from cache_dit import DBCacheConfig

        p = self.params
        # threshold 0 is cache-dit's "disabled": every call computes every block
        return DBCacheConfig(Fn_compute_blocks=p.fn_compute_blocks, Bn_compute_blocks=p.bn_compute_blocks,
                             residual_diff_threshold=0.0 if self.full_work else p.residual_diff_threshold,
                             max_warmup_steps=p.max_warmup_steps,
                             warmup_interval=p.warmup_interval, max_cached_steps=p.max_cached_steps,
                             max_continuous_cached_steps=p.max_continuous_cached_steps,
                             enable_separate_cfg=separate_cfg)

    def _check_branch(self, module: nn.Module, args: tuple) -> None:
        expected = "uncond" if self.separate_cfg and self.order % 2 else "cond"
        self.order += 1
        self.counts["evaluations"] += 1
        if conditioning.branch() != expected:
            raise RuntimeError("cache-dit pairs a guided step's two calls by their order (conditional, then "
                               "unconditional); this call was the other branch (a guider that leaves some steps "
                               "unguided), so it would use that branch's cache")

    def refresh(self, separate_cfg: bool) -> None:
        """A fresh cache context (no state from the last sampler call), its call order starting at 0."""
        import cache_dit

        self.separate_cfg, self.order = separate_cfg, 0  # cache-dit's call order restarts with its context
        cache_dit.refresh_context(self.net, cache_config=self._config(separate_cfg))

    @contextlib.contextmanager
    def uncached(self) -> Iterator[None]:
        """Every call does its full work (contexts with caching disabled), then fresh ones as configured."""
        self.full_work = True
        self.refresh(separate_cfg=False)
        try:
            yield
        finally:
            self.full_work = False
            self.refresh(separate_cfg=False)

    def observe(self) -> dict[str, Any]:
        """What the cache computed since the last call: block parts computed of those the evaluations asked for."""
        c, self.counts = self.counts, Counter()
        asked = c["evaluations"] * self.blocks
        return {"cache_evaluations": c["evaluations"], "cache_block_parts_asked": asked,
                "attention_computed": c["attention"], "feed_forward_computed": c["feed_forward"],
                "attention_computed_fraction": c["attention"] / asked if asked else None,
                "feed_forward_computed_fraction": c["feed_forward"] / asked if asked else None}

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        p = self.params
        return {"library": "cache-dit", "version": version("cache-dit"), "method": "DBCache",
                "blocks": self.blocks, "Fn_compute_blocks": p.fn_compute_blocks,
                "Bn_compute_blocks": p.bn_compute_blocks, "residual_diff_threshold": p.residual_diff_threshold,
                "max_warmup_steps": p.max_warmup_steps, "warmup_interval": p.warmup_interval,
                "max_cached_steps": p.max_cached_steps, "max_continuous_cached_steps": p.max_continuous_cached_steps,
                "enable_separate_cfg": "per sampler call: whether it is guided"}


CacheDiT.model_kinds = ("unconditional", "class", "text")  # (it needs a DiT's blocks, not labels)
CacheDiT.contract_arch = "dit"
CacheDiT.model_kinds_reason = "its DiT adapter needs a DiTTransformer2DModel's blocks"
CacheDiT.accelerates = True
