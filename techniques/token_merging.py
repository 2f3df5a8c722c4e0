"""Token Merging for Stable Diffusion (Bolya & Hoffman 2023, the ``tomesd`` package): in each transformer block of a
U-Net, ``ratio`` of the image tokens are merged into their most similar neighbours (bipartite soft matching, one
destination per ``sx``×``sy`` cell) before attention (and, if asked, cross-attention and the MLP) and unmerged
after, so those layers run on fewer tokens.

The merging is ``tomesd``'s own (``apply_patch``, on this cell's copy of the network). What this file settles:
``use_rand`` is off (its random destination choice makes two identical batches give different images);
``max_downsample`` is 8, every block (the library's default 1 matches no block of a DiT), and a model where no block
is at most that downsampled is skipped, not run unmerged as ``tomesd`` silently would; and ``tomesd`` re-implements
``BasicTransformerBlock.forward`` as diffusers had it, so on blocks whose forward that copy does not reproduce
(checked on each model: ``ratio = 0`` must give the block's own output) the cell is skipped with the difference.
A context that removes the patch gives the full-work calls FLOPs are compared with.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.errors import Unsupported
from bench.technique import Pipeline, Technique
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler

DOWNSAMPLES = (1, 2, 4, 8)


class TokenMerging(Technique):
    name = "token_merging"
    version = 1
    description = ("Training-free token merging in a U-Net's transformer blocks (tomesd), with any fast sampler; "
                   "FLOPs are those that ran on the merged tokens.")
    contract_variants = ({"ratio": 0.3, "merge_mlp": True},)

    @dataclass(frozen=True)
    class Params:
        ratio: float = 0.5  # fraction of tokens merged (at most 1 − 1/(sx·sy))
        # merge in blocks at most this many times downsampled (1, 2, 4, 8; 8: every block). tomesd's default 1
        # (full latent resolution only, its choice for Stable Diffusion) merges nothing in a DiT, whose patches put
        # every block at the patch size (4 in the zoo's)
        max_downsample: int = 8
        sx: int = 2  # destination stride, x
        sy: int = 2  # destination stride, y
        merge_attn: bool = True  # before self-attention (the paper's recommendation)
        merge_crossattn: bool = False
        merge_mlp: bool = False
        sampler: str = "ddim"  # one of step_reduction's SAMPLERS
        timestep_spacing: str = "trailing"

    def validate(self, params: Params) -> None:
        validate_sampler(params.sampler, 0.0, params.timestep_spacing)
        if params.sx < 1 or params.sy < 1:
            raise ValueError("sx and sy must be ≥ 1")
        most = 1 - 1 / (params.sx * params.sy)
        if not 0.0 <= params.ratio <= most:
            raise ValueError(f"ratio {params.ratio} is outside [0, {most:g}] (1 − 1/(sx·sy))")
        if params.max_downsample not in DOWNSAMPLES:
            raise ValueError(f"max_downsample {params.max_downsample} is not one of "
                             f"{', '.join(map(str, DOWNSAMPLES))}")
        if not (params.merge_attn or params.merge_crossattn or params.merge_mlp):
            raise ValueError("merge_attn, merge_crossattn and merge_mlp are all off: nothing would be merged")

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        try:
            import tomesd
        except ImportError:
            raise Unsupported("the tomesd package is not installed (pip install 'bench[accel]')") from None
        denoiser = copy.deepcopy(models["model"])  # the patch changes the blocks' classes: this cell's own copy
        denoiser.require_scheduler_output(f"token_merging ({params.sampler})")
        net = denoiser.net
        blocks = [m for m in net.modules() if type(m).__name__ == "BasicTransformerBlock"]
        if not blocks:
            raise Unsupported(f"tomesd merges tokens in diffusers' BasicTransformerBlocks; {type(net).__name__} has "
                              "none")
        patch = _Patch(tomesd, net, params, len(blocks))
        patch.check(denoiser)
        sample = make_sampler(denoiser, params.sampler, steps, 0.0, params.timestep_spacing)
        return Pipeline(sample=sample, networks={"model": denoiser}, uncached=patch.uncached,
                        info={"scheduler": SAMPLERS[params.sampler][0].__name__, "token_merging": patch.describe(),
                              "timestep_spacing": params.timestep_spacing})


class _Patch:
    def __init__(self, tomesd: Any, net: nn.Module, params: Any, blocks: int) -> None:
        self.tomesd, self.net, self.params, self.blocks = tomesd, net, params, blocks
        self.merging: list[int] = []  # per evaluation, the blocks that merged tokens (a hook on compute_merge)
        self.apply()

    def apply(self, ratio: float | None = None) -> None:
        p = self.params
        self.tomesd.apply_patch(self.net, ratio=p.ratio if ratio is None else ratio, max_downsample=p.max_downsample,
                                sx=p.sx, sy=p.sy, use_rand=False, merge_attn=p.merge_attn,
                                merge_crossattn=p.merge_crossattn, merge_mlp=p.merge_mlp)

    @contextlib.contextmanager
    def uncached(self) -> Iterator[None]:
        """Full-work calls: the patch removed, and applied again after."""
        self.tomesd.remove_patch(self.net)
        try:
            yield
        finally:
            self.apply()

    def check(self, denoiser: Any) -> None:
        """Raise ``Unsupported`` where the patch cannot do what it claims on this network: no block at a merging
        resolution, or a block forward that differs from diffusers' own (at ratio 0 it must be the identity)."""
        shape = (1, *denoiser.image_shape)
        x, t = torch.randn(shape, generator=torch.Generator().manual_seed(0)), torch.full((1,), 500)
        condition = _probe_condition(denoiser)
        with torch.no_grad():
            with self.uncached():
                own = denoiser.counted(x, t, condition) if condition is not None else denoiser(x, t)
            self.tomesd.remove_patch(self.net)
            self.apply(ratio=0.0)
            try:
                copied = denoiser.counted(x, t, condition) if condition is not None else denoiser(x, t)
            finally:
                self.tomesd.remove_patch(self.net)
                self.apply()
        if not torch.allclose(own, copied, atol=1e-5, rtol=1e-4):
            raise Unsupported(f"tomesd's copy of BasicTransformerBlock.forward does not reproduce this network's "
                              f"blocks (at ratio 0 the output moved by {float((own - copied).abs().max()):.3g}; "
                              f"{type(self.net).__name__} blocks use norm_type "
                              f"{_norm_types(self.net)})")
        side = math.isqrt(int(torch.tensor(denoiser.image_shape[1:]).prod()))
        merging = [f for f in _token_downsamples(self.net, denoiser, x, t, condition, side)
                   if f <= self.params.max_downsample]
        if not merging:
            raise Unsupported(f"no transformer block at max_downsample ≤ {self.params.max_downsample} (this "
                              "network's attention runs only at lower resolutions): tomesd would merge nothing")

    def describe(self) -> dict[str, Any]:
        import importlib.metadata

        p = self.params
        return {"library": "tomesd", "version": importlib.metadata.version("tomesd"), "ratio": p.ratio,
                "max_downsample": p.max_downsample, "sx": p.sx, "sy": p.sy, "use_rand": False,
                "merge_attn": p.merge_attn, "merge_crossattn": p.merge_crossattn, "merge_mlp": p.merge_mlp,
                "transformer_blocks": self.blocks}


def _probe_condition(denoiser: Any) -> torch.Tensor | None:
    if denoiser.kind == "text":
        encoder = denoiser.text_encoder
        return encoder(encoder.tokens([""]))
    if denoiser.kind == "class":
        return torch.zeros(1, dtype=torch.long)
    return None


def _norm_types(net: nn.Module) -> str:
    return ", ".join(sorted({str(m.norm_type) for m in net.modules() if type(m).__name__.endswith("TransformerBlock")
                             or hasattr(m, "_parent")}))


def _token_downsamples(net: nn.Module, denoiser: Any, x: torch.Tensor, t: torch.Tensor, condition: Any,
                       side: int) -> list[int]:
    """The downsampling factor (tomesd's: ⌈√(image tokens / block tokens)⌉) of every transformer block's input."""
    factors, handles = [], []
    for module in net.modules():
        if hasattr(module, "_tome_info") and module is not net:
            handles.append(module.register_forward_pre_hook(
                lambda m, args, kwargs: factors.append(math.ceil(math.sqrt(side * side / (args[0] if args else
                                                                               kwargs["hidden_states"]).shape[1]))),
                with_kwargs=True))
    try:
        with torch.no_grad():
            denoiser.counted(x, t, condition) if condition is not None else denoiser(x, t)
    finally:
        for handle in handles:
            handle.remove()
    return factors


TokenMerging.model_kinds = ("unconditional", "class", "text")  # (it merges tokens, any condition)
TokenMerging.model_kinds_reason = "it merges a transformer block's tokens"
TokenMerging.contract_arch = "dit"
TokenMerging.accelerates = True
